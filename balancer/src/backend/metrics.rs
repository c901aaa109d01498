//! Every backend's metric families, `lb_backend_*{backend="IP:port"}`,
//! and the per-backend instruments the request path records into
//! ([`BackendMetrics`]).
//!
//! The families are written from the backends of the current pool
//! snapshot at scrape time ([`crate::pool`] registers the collector): a
//! backend a reload removed is absent from the next scrape.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, MetricEncoder};
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;

use super::Backend;
use crate::metrics::{counter_value, Codes, Histogram, CLASSES};

/// What the request path records per backend; shared with a successor
/// that only changed weight or agent, so the counts carry over.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Response heads received, by status class (one per attempt that got
    /// one, reported through [`Backend::report`]).
    pub responses: Codes,
    /// The backend's time: from the request going out on a connection to
    /// the response head.
    pub backend_time: Histogram,
    /// The total time of the requests it answered: from the request's
    /// arrival at the balancer to the end of the response body.
    pub total_time: Histogram,
}

/// The value of one family for one backend, given `[balance] slow_start`
/// (`None`: no series).
type Read<T> = fn(&Backend, Duration, Instant) -> Option<T>;

/// Writes every `lb_backend_*` family for `backends`, under
/// `[balance] slow_start` = `slow_start`.
pub fn encode(
    backends: &[Arc<Backend>],
    slow_start: Duration,
    enc: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let now = Instant::now();
    let w = &mut Writer {
        enc,
        backends,
        slow_start,
        now,
    };
    w.family::<u64>(
        "lb_backend_up",
        "1 if the backend is healthy",
        Gauge,
        |b, _, _| Some(u64::from(b.is_up())),
    )?;
    w.family::<u64>(
        "lb_backend_in_flight",
        "requests in flight (until their response body ends)",
        Gauge,
        |b, _, _| Some(u64::from(b.stats().in_flight)),
    )?;
    w.family::<u64>(
        "lb_backend_requests",
        "requests sent",
        Counter,
        |b, _, _| Some(b.stats().requests),
    )?;
    w.family::<u64>(
        "lb_backend_errors",
        "failed attempts (connect errors, resets, timeouts, protocol errors)",
        Counter,
        |b, _, _| Some(b.stats().errors),
    )?;
    w.family::<f64>(
        "lb_backend_cpu",
        "agent-reported CPU fraction",
        Gauge,
        |b, _, _| b.load().map(|l| l.report.cpu),
    )?;
    w.family::<f64>(
        "lb_backend_memory",
        "agent-reported memory fraction",
        Gauge,
        |b, _, _| b.load().map(|l| l.report.memory),
    )?;
    w.family::<f64>(
        "lb_backend_agent_report_age_seconds",
        "age of the latest good agent report (absent while the load is unknown)",
        Gauge,
        |b, _, now| {
            b.load()
                .map(|l| now.saturating_duration_since(l.at).as_secs_f64())
        },
    )?;
    w.family::<u64>(
        "lb_backend_agent_up",
        "1 if the agent answered its last poll with a good report (absent before the first poll)",
        Gauge,
        |b, _, _| b.agent_reporting().map(u64::from),
    )?;
    w.family::<u64>(
        "lb_backend_weight",
        "weight in use: lb.toml's, or the admin API's override",
        Gauge,
        |b, _, _| Some(u64::from(b.effective_weight())),
    )?;
    w.family::<u64>(
        "lb_backend_ejected",
        "1 while outlier ejection keeps the backend out",
        Gauge,
        |b, _, now| Some(u64::from(b.is_ejected(now))),
    )?;
    w.family::<u64>(
        "lb_backend_ejections",
        "outlier ejections",
        Counter,
        |b, _, now| Some(b.ejection(now).1),
    )?;
    w.family::<f64>(
        "lb_backend_slow_start",
        "share of its weight a backend in slow start takes (absent when full)",
        Gauge,
        |b, slow_start, now| b.ramp(now, slow_start),
    )?;
    w.family::<u64>(
        "lb_backend_connections",
        "connections open to the backend (in use or idle)",
        Gauge,
        |b, _, _| Some(b.conns.open() as u64),
    )?;
    w.family::<u64>(
        "lb_backend_connections_idle",
        "idle connections kept open to the backend",
        Gauge,
        |b, _, _| Some(b.conns.idle() as u64),
    )?;
    w.responses()?;
    w.histogram(
        "lb_backend_response_duration_seconds",
        "backend time: from the request going out to the response head",
        |m| &m.backend_time,
    )?;
    w.histogram(
        "lb_backend_request_duration_seconds",
        "total time of the requests the backend answered: arrival to the end of the response body",
        |m| &m.total_time,
    )
}

struct Writer<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
    backends: &'a [Arc<Backend>],
    slow_start: Duration,
    now: Instant,
}

/// A value a family can hold: gauges of either kind, counters of `u64`.
trait Value: EncodeGaugeValue {
    fn put(self, m: &mut MetricEncoder<'_>, kind: MetricType) -> fmt::Result;
}

impl Value for u64 {
    fn put(self, m: &mut MetricEncoder<'_>, kind: MetricType) -> fmt::Result {
        match kind {
            MetricType::Counter => counter_value(m, self),
            _ => m.encode_gauge(&self),
        }
    }
}

impl Value for f64 {
    fn put(self, m: &mut MetricEncoder<'_>, _: MetricType) -> fmt::Result {
        m.encode_gauge(&self)
    }
}

/// The `backend` label: the address as configured (`IP:port`), formatted
/// once when the backend was built.
fn label(b: &Backend) -> &str {
    b.host_header.to_str().unwrap_or_default()
}

impl Writer<'_, '_> {
    fn family<T: Value>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        read: Read<T>,
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, kind)?;
        for b in self.backends {
            if let Some(v) = read(b, self.slow_start, self.now) {
                v.put(&mut m.encode_family(&[("backend", label(b))])?, kind)?;
            }
        }
        Ok(())
    }

    fn responses(&mut self) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(
            "lb_backend_responses",
            "response heads received from the backend, by status class",
            None,
            MetricType::Counter,
        )?;
        for b in self.backends {
            for (class, n) in CLASSES.iter().zip(b.metrics.responses.get()) {
                let labels = [("backend", label(b)), ("code", class)];
                counter_value(&mut m.encode_family(&labels)?, n)?;
            }
        }
        Ok(())
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        which: fn(&BackendMetrics) -> &Histogram,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for b in self.backends {
            which(&b.metrics).encode(&mut m.encode_family(&[("backend", label(b))])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::StatusCode;

    use crate::backend::Backend;
    use crate::config::BackendConfig;
    use crate::latency::Baselines;
    use crate::outcome::Outcome;

    #[test]
    fn responses_count_once_per_reported_head_and_carry_over_a_weight_change() {
        let mut cfg = BackendConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            agent: "127.0.0.1:2".parse().unwrap(),
            weight: 1,
        };
        let b = Backend::new(&cfg, 1, 1, &Arc::new(Baselines::new()));
        let now = tokio::time::Instant::now();
        for outcome in [
            Outcome::Response(StatusCode::OK),
            Outcome::Response(StatusCode::BAD_GATEWAY),
            Outcome::Timeout,
            Outcome::Reset,
        ] {
            b.report(outcome, None, 5, now);
        }
        assert_eq!(b.metrics.responses.get(), [0, 1, 0, 0, 1]);
        cfg.weight = 3;
        let next = Backend::succeed(&b, &cfg);
        assert_eq!(next.metrics.responses.get(), [0, 1, 0, 0, 1]);
    }
}
