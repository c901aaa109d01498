//! Slow start (HAProxy's `slowstart`, Envoy's slow start mode): a backend
//! that comes up (down → up) or is added on reload takes a growing share of
//! its weight, from [`START`] to all of it, linearly over `[balance]
//! slow_start`, so that a cold cache, JIT or connection pool is not handed a
//! full share at once. Backends present when the balancer starts do not
//! ramp, as in HAProxy: nothing says they are cold.
//!
//! The ramp reaches the strategies as `View::ramp` (see [`crate::select`]),
//! where every strategy scales the backend's weight by it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The share of its weight a backend gets the moment it comes up.
pub const START: f64 = 0.1;

/// The ramp `elapsed` into a slow start of length `over`: from [`START`]
/// to 1, linearly; `None` once it is over or when slow start is off (a
/// zero `over`). Divides, never multiplies, so no duration can overflow.
pub fn ramp(elapsed: Duration, over: Duration) -> Option<f64> {
    if over.is_zero() || elapsed >= over {
        return None;
    }
    let done = elapsed.as_secs_f64() / over.as_secs_f64();
    Some(START + (1.0 - START) * done)
}

/// When one backend's latest slow start began, lock-free.
#[derive(Debug, Default)]
pub struct SlowStart {
    /// Start of the ramp in nanoseconds on the backend's clock, plus one
    /// (0: no ramp since the balancer started).
    since: AtomicU64,
}

impl SlowStart {
    /// A copy of `old`, for a backend rebuilt on reload.
    pub fn carried(old: &SlowStart) -> SlowStart {
        SlowStart {
            since: AtomicU64::new(old.since.load(Relaxed)),
        }
    }

    /// Starts a ramp at `now` (nanoseconds on the backend's clock).
    pub fn begin(&self, now: u64) {
        self.since.store(now.saturating_add(1), Relaxed);
    }

    /// The ramp at `now` for a slow start of length `over`, or `None` when
    /// the backend takes its full share.
    pub fn ramp(&self, now: u64, over: Duration) -> Option<f64> {
        let since = self.since.load(Relaxed);
        if since == 0 {
            return None;
        }
        ramp(Duration::from_nanos(now.saturating_sub(since - 1)), over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_grows_linearly_from_a_tenth_to_full() {
        let ms = Duration::from_millis;
        // (elapsed, slow start, ramp)
        let table = [
            (ms(0), ms(1000), Some(0.1)),
            (ms(500), ms(1000), Some(0.55)),
            (ms(900), ms(1000), Some(0.91)),
            (ms(1000), ms(1000), None), // over: full share
            (ms(5000), ms(1000), None),
            (ms(0), ms(0), None), // off
            (ms(10), Duration::MAX, Some(0.1)),
        ];
        for (elapsed, over, want) in table {
            let got = ramp(elapsed, over);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-6, "{elapsed:?}/{over:?}: {g}"),
                _ => assert_eq!(got, want, "{elapsed:?}/{over:?}"),
            }
        }
    }

    #[test]
    fn no_ramp_until_one_begins() {
        let s = SlowStart::default();
        assert_eq!(s.ramp(5, Duration::from_secs(1)), None);
        s.begin(0);
        assert_eq!(s.ramp(0, Duration::from_secs(1)), Some(START));
        assert_eq!(s.ramp(2_000_000_000, Duration::from_secs(1)), None);
        // A later ramp restarts from the small share; carried over on reload.
        s.begin(3_000_000_000);
        let c = SlowStart::carried(&s);
        assert_eq!(c.ramp(3_000_000_000, Duration::from_secs(1)), Some(START));
        assert_eq!(c.ramp(u64::MAX, Duration::from_secs(1)), None);
    }
}
