//! Each backend's response times over the last whole second, as p50 and
//! p99, for the status page's latency chart (`/status.json`'s
//! `latency_ms`).
//!
//! Two one-second windows of 64 log-spaced buckets (25 % apart, 100 µs to
//! about a minute) of atomic counters: the request path adds one count with
//! two relaxed atomic operations and takes no lock; the window that is
//! written is the current second's, the one read is the previous second's.
//! Approximate by design: a count racing the window's turn to a new
//! second may be lost, and a quantile is reported as its bucket's upper
//! bound (within 25 %). A precise histogram is the metrics' business.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: usize = 64;
/// The upper bound of bucket 0, in microseconds.
const FIRST_US: f64 = 100.0;
/// The ratio of one bucket's bound to the previous one's.
const GROWTH: f64 = 1.25;

/// Response times of the current and the previous second.
#[derive(Debug)]
pub struct Recent {
    windows: [Window; 2],
}

#[derive(Debug)]
struct Window {
    /// The second (since the backend's origin) these counts belong to;
    /// `u64::MAX`: none yet.
    second: AtomicU64,
    counts: [AtomicU32; BUCKETS],
}

/// p50 and p99 of one second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    /// Responses that finished in that second.
    pub count: u64,
    /// Median, in milliseconds (its bucket's upper bound).
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds (its bucket's upper bound).
    pub p99_ms: f64,
}

impl Default for Recent {
    fn default() -> Recent {
        let window = || Window {
            second: AtomicU64::new(u64::MAX),
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        };
        Recent {
            windows: [window(), window()],
        }
    }
}

impl Recent {
    /// Counts one response that took `took`, finished in `second`.
    pub fn record(&self, second: u64, took: Duration) {
        let w = &self.windows[(second % 2) as usize];
        let held = w.second.load(Relaxed);
        if held != second
            && w.second
                .compare_exchange(held, second, Relaxed, Relaxed)
                .is_ok()
        {
            for c in &w.counts {
                c.store(0, Relaxed);
            }
        }
        w.counts[bucket(took)].fetch_add(1, Relaxed);
    }

    /// The quantiles of the second before `second` (the last whole one);
    /// `None` when nothing finished then.
    pub fn last_second(&self, second: u64) -> Option<Quantiles> {
        let prev = second.checked_sub(1)?;
        let w = &self.windows[(prev % 2) as usize];
        if w.second.load(Relaxed) != prev {
            return None;
        }
        let counts: Vec<u64> = w
            .counts
            .iter()
            .map(|c| u64::from(c.load(Relaxed)))
            .collect();
        let count: u64 = counts.iter().sum();
        (count > 0).then(|| Quantiles {
            count,
            p50_ms: quantile(&counts, count, 0.5),
            p99_ms: quantile(&counts, count, 0.99),
        })
    }
}

fn bucket(took: Duration) -> usize {
    let us = took.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    let i = ((us / FIRST_US).ln() / GROWTH.ln()).ceil();
    (i as usize).min(BUCKETS - 1)
}

fn upper_ms(i: usize) -> f64 {
    FIRST_US * GROWTH.powi(i as i32) / 1000.0
}

fn quantile(counts: &[u64], total: u64, q: f64) -> f64 {
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return upper_ms(i);
        }
    }
    upper_ms(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quantiles_of_the_previous_second_within_a_bucket() {
        let r = Recent::default();
        for _ in 0..98 {
            r.record(5, ms(10));
        }
        r.record(5, ms(200));
        r.record(5, ms(200));
        // Still the current second: nothing whole yet.
        assert_eq!(r.last_second(5), None);
        let q = r.last_second(6).unwrap();
        assert_eq!(q.count, 100);
        assert!((10.0..12.5).contains(&q.p50_ms), "{q:?}");
        assert!((200.0..250.0).contains(&q.p99_ms), "{q:?}");
        // Two seconds on, that window is stale.
        assert_eq!(r.last_second(7), None);
    }

    #[test]
    fn a_window_is_reset_when_its_second_comes_round_again() {
        let r = Recent::default();
        r.record(1, ms(1000));
        r.record(3, ms(1));
        let q = r.last_second(4).unwrap();
        assert_eq!(q.count, 1);
        assert!(q.p99_ms < 1.25, "{q:?}");
    }

    #[test]
    fn extremes_land_in_the_end_buckets() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        assert_eq!(bucket(Duration::MAX), BUCKETS - 1);
    }
}
