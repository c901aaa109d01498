//! The loop both monitors (health probes, agent polls) run: one task per
//! backend, first run staggered, every wait jittered, ending by itself once
//! its backend has left the pool or the pool is gone.
//!
//! Tasks hold only `Weak` references between runs, so a reload or a
//! shutdown needs no bookkeeping to stop them.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::Backend;
use crate::config::Config;
use crate::deadline;
use crate::pool::Pool;

/// Runs `step` for `backend` every `interval(config)` (± 5 %), the first
/// time after `offset`.
pub(crate) fn every<F, Fut>(
    pool: Weak<Pool>,
    backend: Weak<Backend>,
    offset: Duration,
    interval: fn(&Config) -> Duration,
    step: F,
) where
    F: Fn(Arc<Pool>, Arc<Backend>, Arc<Config>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        tokio::time::sleep(offset).await;
        loop {
            let (Some(pool), Some(backend)) = (pool.upgrade(), backend.upgrade()) else {
                return;
            };
            if !pool.holds(&backend) {
                return;
            }
            let config = Arc::clone(&pool.snapshot().config);
            let wait = jitter(interval(&config));
            step(pool, backend, config).await;
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
