//! `/metrics`: one prometheus-client [`Registry`], rendered as OpenMetrics
//! text or Prometheus text 0.0.4 ([`Registry::render`]).
//!
//! The module that owns a number defines its metric (linkerd2-proxy's
//! `FmtMetrics` idea) and registers its collector ([`Registry::register`]),
//! which encodes its families at scrape time. This module knows none of
//! them: [`crate::pool`] builds the registry and registers
//!
//! - [`Requests`] (defined here, filled by the proxy): what clients got,
//!   `lb_responses_total{code}` and `lb_request_duration_seconds`, the
//!   balancer's own errors included;
//! - its own collector: every `lb_backend_*` family
//!   ([`crate::backend::metrics`]), read from the current pool snapshot so
//!   the backends a reload removed are gone from the next scrape,
//!   `lb_panic`, [`crate::budget`] (`lb_retries_total`,
//!   `lb_retries_denied_total`) and [`crate::access_log`]'s dropped lines;
//! - [`crate::limits`] (`lb_connections`, `lb_limited_total{reason}`).
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

use http::HeaderValue;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// The `Content-Type` of OpenMetrics text, served to clients that accept it
/// (Prometheus does).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format, served to everyone
/// else (curl, browsers, older scrapers).
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The balancer's one metrics registry; lives as long as its pool.
#[derive(Default)]
pub struct Registry {
    inner: prometheus_client::registry::Registry,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// An empty registry; owners [`register`](Registry::register) their
    /// collectors.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds an owner's collector; families are rendered in the order their
    /// collectors were registered.
    pub fn register(&mut self, collector: Box<dyn Collector>) {
        self.inner.register_collector(collector);
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
