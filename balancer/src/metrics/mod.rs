//! `/metrics`: one prometheus-client [`Registry`], rendered as OpenMetrics
//! text or Prometheus text 0.0.4 ([`Registry::render`]).
//!
//! The module that owns a number defines its metric (linkerd2-proxy's
//! `FmtMetrics` idea): the registry holds one collector per owner, each
//! encoding its own families at scrape time:
//!
//! - [`Requests`] (here): what clients got, `lb_responses_total{code}` and
//!   `lb_request_duration_seconds`, the balancer's own errors included;
//! - [`crate::backend::metrics`]: every `lb_backend_*` family, read from
//!   the current pool snapshot, so the backends a reload removed are gone
//!   from the next scrape;
//! - [`crate::pool`] (`lb_panic`), [`crate::budget`] (`lb_retries_total`,
//!   `lb_retries_denied_total`) and [`crate::limits`] (`lb_connections`,
//!   `lb_limited_total{reason}`).
//!
//! The admin listener only renders. The request path never touches the
//! registry: it adds to atomics its owners keep ([`Histogram`], [`Codes`]).

mod histogram;
mod requests;
#[cfg(test)]
mod tests;

pub use histogram::{Codes, Histogram, BOUNDS, CLASSES};
pub use requests::{RequestTimer, Requests};

use std::fmt;
use std::sync::{Arc, Weak};

use http::HeaderValue;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::limits::Limiter;
use crate::pool::Pool;

/// The `Content-Type` of OpenMetrics text, served to clients that accept it
/// (Prometheus does).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format, served to everyone
/// else (curl, browsers, older scrapers).
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The balancer's one metrics registry; lives as long as its pool.
pub struct Registry {
    inner: prometheus_client::registry::Registry,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// The registry of the pool behind `pool` (a weak reference: the pool
    /// owns the registry), with `requests` and `limiter` its pool's.
    pub fn new(pool: Weak<Pool>, requests: &Arc<Requests>, limiter: &Arc<Limiter>) -> Registry {
        let mut inner = prometheus_client::registry::Registry::default();
        inner.register_collector(Box::new(Arc::clone(requests)));
        inner.register_collector(Box::new(PoolCollector(pool)));
        inner.register_collector(Box::new(Arc::clone(limiter)));
        Registry { inner }
    }

    /// The exposition for a client that sent `accept`: OpenMetrics when it
    /// accepts `application/openmetrics-text`, else Prometheus text 0.0.4.
    /// Returns the content type and the text.
    pub fn render(&self, accept: Option<&HeaderValue>) -> (&'static str, String) {
        let mut out = String::with_capacity(16 * 1024);
        let open = accept.is_some_and(accepts_openmetrics);
        // Writing to a String fails only if an encoder does, which ours
        // do not; a partial text is still better than none.
        let _ = if open {
            prometheus_client::encoding::text::encode(&mut out, &self.inner)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner)
        };
        (if open { OPENMETRICS } else { PROMETHEUS_TEXT }, out)
    }
}

/// Whether an `Accept` header lists `application/openmetrics-text` with a
/// non-zero quality.
pub fn accepts_openmetrics(accept: &HeaderValue) -> bool {
    let Ok(accept) = accept.to_str() else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        media.eq_ignore_ascii_case("application/openmetrics-text")
            && !parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q") && v.trim().parse() == Ok(0.0)
                })
            })
    })
}

/// The pool-wide families: every backend's, panic mode, the retry budget,
/// the access log's dropped lines.
#[derive(Debug)]
struct PoolCollector(Weak<Pool>);

impl Collector for PoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(pool) = self.0.upgrade() else {
            return Ok(());
        };
        let snap = pool.snapshot();
        crate::backend::metrics::encode(&snap, &mut enc)?;
        snap.encode_metrics(&mut enc)?;
        pool.budget.encode_metrics(&mut enc)?;
        crate::access_log::encode_metrics(&mut enc)
    }
}

/// Writes one unlabelled gauge family.
pub fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// Writes one unlabelled counter family; `name` without `_total`, which
/// the encoders add.
pub fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    counter_value(&mut m, v)
}

/// Writes a counter's value.
pub fn counter_value(m: &mut MetricEncoder<'_>, v: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}
