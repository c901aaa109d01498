//! The retry budget (Finagle's `RetryBudget`, Envoy's retry budget): over
//! a sliding window of about [`WINDOW_SECS`] seconds, retries stay under
//! `[balance] retry_budget` × the requests received, plus a floor of
//! [`MIN_RETRIES_PER_SEC`] per second so that a quiet pool still fails over.
//!
//! Without it, a backend that fails every request it gets makes the pool
//! send up to `1 + retries` attempts per request: the other backends take
//! the failing one's share *again*, exactly when capacity is short. With it,
//! once the budget is spent a failed attempt is answered with its own error
//! (`502`/`503`) instead of being retried.
//!
//! Lock-free: one-second buckets, each an `AtomicU64` holding its second
//! and its count, updated with compare-and-swap; time comes only from
//! `tokio::time`, so tests pause and advance it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;

/// The window's length in seconds (whole one-second buckets: the window
/// spans the current, partial second and the nine before it).
pub const WINDOW_SECS: u32 = 10;
/// Retries always allowed per second of the window, whatever the traffic
/// (Finagle's `minRetriesPerSec`), so a pool with few requests still
/// retries a connect failure.
pub const MIN_RETRIES_PER_SEC: u32 = 10;

const BUCKETS: usize = WINDOW_SECS as usize;

/// Requests and retries of one pool over the last [`WINDOW_SECS`] seconds.
#[derive(Debug)]
pub struct RetryBudget {
    /// Second 0 of the buckets.
    epoch: Instant,
    /// Client requests per second: `second << 32 | count`.
    requests: [AtomicU64; BUCKETS],
    /// Retries granted per second, in the same form.
    retries: [AtomicU64; BUCKETS],
    /// Retries granted, ever.
    granted: AtomicU64,
    /// Retries refused because the budget was spent, ever.
    denied: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new()
    }
}

impl RetryBudget {
    /// An empty budget, its window starting now.
    pub fn new() -> RetryBudget {
        RetryBudget {
            epoch: Instant::now(),
            requests: Default::default(),
            retries: Default::default(),
            granted: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    /// Counts one client request: what the budget is a share of.
    pub fn deposit(&self) {
        let sec = self.second();
        add(&self.requests[sec as usize % BUCKETS], sec);
    }

    /// Asks for one retry under a budget of `ratio` × requests (plus the
    /// floor). A granted retry is counted at once, so concurrent askers
    /// cannot overdraw it together.
    pub fn try_retry(&self, ratio: f64) -> bool {
        let sec = self.second();
        let slot = &self.retries[sec as usize % BUCKETS];
        add(slot, sec);
        let retries = sum(&self.retries, sec) as f64;
        if retries <= allowance(ratio, sum(&self.requests, sec)) {
            self.granted.fetch_add(1, Relaxed);
            true
        } else {
            undo(slot, sec);
            self.denied.fetch_add(1, Relaxed);
            false
        }
    }

    /// Retries granted, ever.
    pub fn granted(&self) -> u64 {
        self.granted.load(Relaxed)
    }

    /// Retries refused for lack of budget, ever.
    pub fn denied(&self) -> u64 {
        self.denied.load(Relaxed)
    }

    /// `lb_retries_total` and `lb_retries_denied_total`.
    pub fn encode_metrics(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use crate::metrics::counter;
        counter(
            enc,
            "lb_retries",
            "retries granted by the retry budget",
            self.granted(),
        )?;
        counter(
            enc,
            "lb_retries_denied",
            "retries refused because the retry budget was spent",
            self.denied(),
        )
    }

    fn second(&self) -> u32 {
        let secs = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_secs();
        // Wraps after 136 years; buckets compare seconds with wrapping
        // arithmetic, so even that is harmless.
        secs as u32
    }
}

/// Retries allowed in a window that saw `requests`.
pub fn allowance(ratio: f64, requests: u64) -> f64 {
    ratio * requests as f64 + f64::from(MIN_RETRIES_PER_SEC * WINDOW_SECS)
}

fn split(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

fn join(sec: u32, count: u32) -> u64 {
    (u64::from(sec) << 32) | u64::from(count)
}

/// How many seconds `bucket` is older than `now` (negative: newer, when a
/// thread that read the clock later got there first).
fn age(now: u32, bucket: u32) -> i32 {
    now.wrapping_sub(bucket) as i32
}

/// Adds one event at second `sec`: into the bucket if it holds `sec` (or a
/// later second), else restarting it for `sec`.
fn add(slot: &AtomicU64, sec: u32) {
    // The common case, once per request: the bucket is this second's, and a
    // plain add (no compare-and-swap loop) will do. A count cannot reach
    // the second's bits: that would take four billion events in a second.
    let (s, c) = split(slot.load(Relaxed));
    if s == sec && c < u32::MAX / 2 {
        slot.fetch_add(1, Relaxed);
        return;
    }
    let _ = slot.fetch_update(Relaxed, Relaxed, |w| {
        let (s, c) = split(w);
        Some(if age(sec, s) <= 0 {
            join(s, c.saturating_add(1))
        } else {
            join(sec, 1)
        })
    });
}

/// Takes back one event added at second `sec`, if its bucket still holds it.
fn undo(slot: &AtomicU64, sec: u32) {
    let _ = slot.fetch_update(Relaxed, Relaxed, |w| {
        let (s, c) = split(w);
        (s == sec && c > 0).then(|| join(s, c - 1))
    });
}

/// The events of the window ending at second `now`.
fn sum(slots: &[AtomicU64; BUCKETS], now: u32) -> u64 {
    slots
        .iter()
        .map(|slot| split(slot.load(Relaxed)))
        .filter(|&(s, _)| age(now, s) < WINDOW_SECS as i32)
        .map(|(_, c)| u64::from(c))
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const FLOOR: u64 = (MIN_RETRIES_PER_SEC * WINDOW_SECS) as u64;

    /// Asks for `n` retries; returns how many were granted.
    fn ask(b: &RetryBudget, ratio: f64, n: u64) -> u64 {
        (0..n).filter(|_| b.try_retry(ratio)).count() as u64
    }

    fn deposit(b: &RetryBudget, n: u64) {
        for _ in 0..n {
            b.deposit();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_under_the_share_of_requests_plus_the_floor() {
        // (ratio, requests, retries asked, retries granted)
        let table = [
            (0.2, 1000, 1000, 200 + FLOOR),
            (0.2, 1000, 100, 100),
            (0.2, 0, 1000, FLOOR), // the floor alone: a quiet pool still fails over
            (0.0, 5000, 1000, FLOOR),
            (1.0, 500, 1000, 500 + FLOOR),
        ];
        for (ratio, requests, asked, want) in table {
            let b = RetryBudget::new();
            deposit(&b, requests);
            assert_eq!(ask(&b, ratio, asked), want, "{ratio} {requests} {asked}");
            assert_eq!((b.granted(), b.denied()), (want, asked - want));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_and_forgets_old_seconds() {
        let b = RetryBudget::new();
        deposit(&b, 1000);
        assert_eq!(ask(&b, 0.2, 1000), 200 + FLOOR);
        // Five seconds on, the same requests and retries still count.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(ask(&b, 0.2, 10), 0);
        deposit(&b, 50);
        assert_eq!(ask(&b, 0.2, 100), 10);
        // Ten seconds after the first second, it has left the window: the
        // 50 requests of second 5 remain, and the 10 retries granted then.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(ask(&b, 0.2, 1000), 10 + FLOOR - 10);
        // Long after, everything is forgotten.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(ask(&b, 0.2, 1000), FLOOR);
    }

    #[test]
    fn concurrent_askers_never_overdraw() {
        let b = std::sync::Arc::new(RetryBudget::new());
        deposit(&b, 1000);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || ask(&b, 0.2, 100))
            })
            .collect();
        let granted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(granted <= 200 + FLOOR, "{granted}");
        assert!(granted >= 200, "{granted}");
    }

    #[test]
    fn buckets_keep_their_second_and_a_late_writer_adds_to_a_newer_one() {
        let slot = AtomicU64::new(0);
        add(&slot, 3);
        add(&slot, 3);
        assert_eq!(split(slot.load(Relaxed)), (3, 2));
        add(&slot, 2); // a thread that read the clock a moment earlier
        assert_eq!(split(slot.load(Relaxed)), (3, 3));
        add(&slot, 13); // ten seconds on: restarted
        assert_eq!(split(slot.load(Relaxed)), (13, 1));
        undo(&slot, 3); // too late to undo: nothing
        assert_eq!(split(slot.load(Relaxed)), (13, 1));
        undo(&slot, 13);
        assert_eq!(split(slot.load(Relaxed)), (13, 0));
        // Across the wrap of the second counter, 136 years on.
        let slots: [AtomicU64; BUCKETS] = Default::default();
        slots[0].store(join(u32::MAX - 1, 5), Relaxed);
        add(&slots[1], 0);
        assert_eq!(sum(&slots, 0), 6);
        add(&slots[0], 0);
        assert_eq!(split(slots[0].load(Relaxed)), (0, 1));
    }
}
