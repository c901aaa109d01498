//! The loop both monitors (health probes, agent polls) run: one task per
//! backend, first run staggered, every wait jittered, ending by itself once
//! its backend has left the table or the table is gone.
//!
//! A monitor knows the live table only through a [`Watch`]: a function
//! that says, before each run, whether its backend is still a member and
//! what applies to it then. Tasks hold only that and a `Weak` reference
//! to their backend between runs, so a reload or a shutdown needs no
//! bookkeeping to stop them, and this module needs nothing of the table's.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::backend::Backend;
use crate::config::Config;
use crate::deadline;

/// The client used by health probes and agent polls, apart from the
/// proxy's connections so that a busy proxy never delays a probe.
pub type MonitorClient = Client<HttpConnector, Empty<Bytes>>;

/// What one run of a monitor works with, read afresh before each run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The health path of the backend's pool.
    pub health_path: Arc<str>,
    /// The client to probe and poll with.
    pub client: MonitorClient,
}

/// Whether a backend is still a member of the table, and then what its
/// monitors run with; `None` stops them.
pub type Watch = Arc<dyn Fn(&Arc<Backend>) -> Option<Run> + Send + Sync>;

/// Runs `step` for `backend` every `interval(config)` (± 5 %), the first
/// time after `offset`, for as long as `watch` holds it.
pub(crate) fn every<F, Fut>(
    watch: Watch,
    backend: Weak<Backend>,
    offset: Duration,
    interval: fn(&Config) -> Duration,
    step: F,
) where
    F: Fn(Arc<Backend>, Run) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        tokio::time::sleep(offset).await;
        loop {
            let Some(backend) = backend.upgrade() else {
                return;
            };
            let Some(run) = watch(&backend) else {
                return;
            };
            let wait = jitter(interval(&run.config));
            step(backend, run).await;
            tokio::time::sleep(wait).await;
        }
    });
}

/// The offset of the first run for the `slot`-th of `of` backends started
/// together: spread evenly over one interval, so that monitors of many
/// backends (and of many balancers) never fire in lockstep.
pub(crate) fn stagger(interval: Duration, slot: usize, of: usize) -> Duration {
    deadline::scaled(interval, slot as f64 / of.max(1) as f64)
}

/// `interval` ± 5 % (HAProxy's `spread-checks`).
fn jitter(interval: Duration) -> Duration {
    deadline::scaled(interval, 0.95 + fastrand::f64() * 0.1)
}
