//! Tallying answers: per-request outcomes into counts, an HDR histogram
//! and a timeline, merged across workers and drivers, then summarised.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{Bucket, Latency, LoadResult, Shared};

/// One answered (or failed) request, as a worker or a dispatched task saw it.
pub(super) struct Outcome {
    /// Its timeline bucket (from its due time).
    pub(super) idx: usize,
    /// From its due time to the end of its body.
    pub(super) latency: Duration,
    pub(super) throttled: bool,
    pub(super) answer: Result<Answer, String>,
}

/// What came back: status, `X-Backend`, body bytes, gzipped.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) backend: Option<http::HeaderValue>,
    pub(super) bytes: u64,
    pub(super) gzipped: bool,
}

/// The tallies of one driver (or several, merged).
#[derive(Clone)]
pub(super) struct Tally {
    /// Width of a timeline bucket.
    pub(super) width: Duration,
    pub(super) hist: Histogram<u64>,
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) by_backend: BTreeMap<String, u64>,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) body_bytes: u64,
    pub(super) gzipped: u64,
    pub(super) throttled: u64,
    pub(super) timeline: Vec<Bucket>,
    pub(super) error_samples: Vec<String>,
}

impl Tally {
    pub(super) fn new(width: Duration) -> Tally {
        Tally {
            width,
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: 0,
            by_backend: BTreeMap::new(),
            statuses: BTreeMap::new(),
            body_bytes: 0,
            gzipped: 0,
            throttled: 0,
            timeline: Vec::new(),
            error_samples: Vec::new(),
        }
    }

    fn bucket(&mut self, idx: usize) -> &mut Bucket {
        while self.timeline.len() <= idx {
            let t_ms = (self.timeline.len() as u128 * self.width.as_millis()) as u64;
            self.timeline.push(Bucket {
                t_ms,
                ..Bucket::default()
            });
        }
        &mut self.timeline[idx]
    }

    pub(super) fn record(&mut self, o: Outcome) {
        self.throttled += u64::from(o.throttled);
        let a = match o.answer {
            Ok(a) => a,
            Err(msg) => return self.error(o.idx, msg),
        };
        *self.statuses.entry(a.status).or_default() += 1;
        if !(200..300).contains(&a.status) {
            return self.error(o.idx, format!("HTTP {}", a.status));
        }
        let us = o.latency.as_micros() as u64;
        self.hist.saturating_record(us.max(1));
        self.ok += 1;
        self.body_bytes += a.bytes;
        self.gzipped += u64::from(a.gzipped);
        let name = a
            .backend
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let b = self.bucket(o.idx);
        b.ok += 1;
        count(&mut b.by_backend, name);
        count(&mut self.by_backend, name);
    }

    fn error(&mut self, idx: usize, msg: String) {
        self.errors += 1;
        self.bucket(idx).errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(msg);
        }
    }

    pub(super) fn merge(&mut self, o: Tally) {
        let _ = self.hist.add(&o.hist);
        self.ok += o.ok;
        self.errors += o.errors;
        self.throttled += o.throttled;
        for (k, v) in o.by_backend {
            *self.by_backend.entry(k).or_default() += v;
        }
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.body_bytes += o.body_bytes;
        self.gzipped += o.gzipped;
        for (i, b) in o.timeline.into_iter().enumerate() {
            let mine = self.bucket(i);
            mine.ok += b.ok;
            mine.errors += b.errors;
            for (k, v) in b.by_backend {
                *mine.by_backend.entry(k).or_default() += v;
            }
        }
        for e in o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
    }
}

/// The result of a run (or of several merged) from its tallies; the
/// in-flight and connection counts come from the drivers' shared state.
pub(super) fn summarize(
    label: String,
    mode: String,
    total: Tally,
    elapsed: f64,
    shared: &[&Shared],
) -> LoadResult {
    let h = &total.hist;
    let ms = |us: u64| us as f64 / 1000.0;
    let latency_ms = if h.is_empty() {
        Latency::default()
    } else {
        Latency {
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    };
    let sum = |f: fn(&Shared) -> &AtomicU64| {
        shared
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    LoadResult {
        label,
        mode,
        ok: total.ok,
        errors: total.errors,
        elapsed_s: elapsed,
        rps: total.ok as f64 / elapsed.max(1e-9),
        latency_ms,
        by_backend: total.by_backend,
        statuses: total.statuses,
        body_bytes: total.body_bytes,
        gzipped: total.gzipped,
        throttled: total.throttled,
        max_in_flight: sum(|s| &s.max_in_flight),
        connections: sum(|s| &s.connections),
        timeline: total.timeline,
        error_samples: total.error_samples,
    }
}

/// Adds one to `name`'s count, allocating its key only the first time.
fn count(map: &mut BTreeMap<String, u64>, name: &str) {
    match map.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            map.insert(name.to_string(), 1);
        }
    }
}
