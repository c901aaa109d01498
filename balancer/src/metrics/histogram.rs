//! The two lock-free instruments the request path records into: a
//! [`Histogram`] of durations and [`Codes`], responses by status class.
//!
//! prometheus-client's own `Histogram` takes a mutex on every `observe`,
//! and its `Family` a read lock and a hash lookup per access; neither
//! belongs on the request path. These are fixed arrays of atomics: an
//! observation is a bucket search over 15 constants (4 comparisons) and two
//! relaxed `fetch_add`s, a response count one `fetch_add`; nothing
//! allocates. The encoders of prometheus-client render them at scrape time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

/// Upper bounds of the buckets, in seconds (`le`), from 1 ms to a minute;
/// an implicit `+Inf` bucket follows.
pub const BOUNDS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// [`BOUNDS`] in nanoseconds, so an observation compares integers.
const BOUNDS_NS: [u64; 15] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// A duration histogram with the fixed [`BOUNDS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last is `+Inf`. The
    /// count is their sum (read at scrape time, so it always matches the
    /// buckets).
    buckets: [AtomicU64; 16],
    /// The sum of all observations, in nanoseconds (wraps after 584 years
    /// of accumulated time).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration: two relaxed atomic adds.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least `ns` (`le` is inclusive).
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` series.
    pub fn encode(&self, m: &mut MetricEncoder<'_>) -> fmt::Result {
        let mut buckets = [(f64::INFINITY, 0u64); 16];
        let mut count = 0;
        for (i, (slot, n)) in buckets.iter_mut().zip(&self.buckets).enumerate() {
            let n = n.load(Relaxed);
            *slot = (BOUNDS.get(i).copied().unwrap_or(f64::INFINITY), n);
            count += n;
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Responses by status class, `1xx` to `5xx`.
#[derive(Debug, Default)]
pub struct Codes([AtomicU64; 5]);

/// The `code` label of each class.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Codes {
    /// Counts one response: one relaxed atomic add.
    pub fn add(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.0[class].fetch_add(1, Relaxed);
    }

    /// The responses of each class, in [`CLASSES`] order.
    pub fn get(&self) -> [u64; 5] {
        let mut out = [0; 5];
        for (o, n) in out.iter_mut().zip(&self.0) {
            *o = n.load(Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nanosecond_bounds_are_the_bounds() {
        for (ns, s) in BOUNDS_NS.iter().zip(BOUNDS) {
            assert_eq!(*ns, Duration::from_secs_f64(s).as_nanos() as u64);
        }
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        // (duration, bucket): a bound itself belongs to its bucket (le).
        let table = [
            (Duration::ZERO, 0),
            (Duration::from_millis(1), 0),
            (Duration::from_micros(1001), 1),
            (Duration::from_millis(100), 6),
            (Duration::from_millis(101), 7),
            (Duration::from_secs(60), 14),
            (Duration::from_secs(61), 15),
            (Duration::MAX, 15),
        ];
        for (d, bucket) in table {
            let before = h.buckets[bucket].load(Relaxed);
            h.observe(d);
            assert_eq!(h.buckets[bucket].load(Relaxed), before + 1, "{d:?}");
        }
        assert_eq!(h.count(), table.len() as u64);
    }

    #[test]
    fn codes_count_by_class_and_odd_statuses_clamp() {
        let c = Codes::default();
        for s in [200, 204, 301, 404, 429, 502, 503, 101, 599] {
            c.add(StatusCode::from_u16(s).unwrap());
        }
        assert_eq!(c.get(), [1, 2, 1, 2, 3]);
    }
}
