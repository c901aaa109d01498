//! What clients got: responses by status class and the total time of each
//! request, from its arrival to the end of its response body (or the
//! moment the client went away), the balancer's own error responses
//! included.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;

use super::{counter_value, Codes, Histogram, CLASSES};

/// The pool-wide request numbers (one per balancer, kept across reloads).
#[derive(Debug, Default)]
pub struct Requests {
    /// Responses sent to clients, by status class.
    pub codes: Codes,
    /// Total time per request.
    pub duration: Histogram,
}

impl Requests {
    /// Records a request that `arrived` and was answered with `status`,
    /// ending now; returns its total time.
    pub fn record(&self, status: StatusCode, arrived: Instant) -> Duration {
        let took = Instant::now().saturating_duration_since(arrived);
        self.codes.add(status);
        self.duration.observe(took);
        took
    }

    /// A clock for a response with `status` to a request that `arrived`,
    /// to be stopped when its body ends ([`RequestTimer::finish`]).
    pub fn timer(self: &Arc<Self>, status: StatusCode, arrived: Instant) -> RequestTimer {
        RequestTimer {
            requests: Arc::clone(self),
            status,
            arrived,
        }
    }
}

/// The clock of one request whose response body is still streaming; it
/// rides with the in-flight guard in the body
/// ([`crate::backend::InFlight::time`]).
#[derive(Debug)]
pub struct RequestTimer {
    requests: Arc<Requests>,
    status: StatusCode,
    arrived: Instant,
}

impl RequestTimer {
    /// The body ended (or was dropped): records the request; returns its
    /// total time.
    pub fn finish(self) -> Duration {
        self.requests.record(self.status, self.arrived)
    }
}

impl Collector for Requests {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let mut m = enc.encode_descriptor(
            "lb_responses",
            "responses sent to clients by status class, the balancer's own errors included",
            None,
            MetricType::Counter,
        )?;
        for (class, n) in CLASSES.iter().zip(self.codes.get()) {
            counter_value(&mut m.encode_family(&[("code", *class)])?, n)?;
        }
        let mut m = enc.encode_descriptor(
            "lb_request_duration_seconds",
            "time from a request's arrival to the end of its response body",
            None,
            MetricType::Histogram,
        )?;
        self.duration.encode(&mut m)
    }
}
