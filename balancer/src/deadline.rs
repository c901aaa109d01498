//! Time arithmetic on configured durations that cannot panic.
//!
//! `Instant + Duration` and `Duration::mul_f64` panic on overflow, and a
//! duration from `lb.toml` (or from a [`crate::Config`] built in code) is
//! only as small as its validation makes it. Every deadline and every
//! scaled interval derived from configuration goes through here, so that no
//! value can turn request handling into a panic: results saturate instead.

use std::time::Duration;

use tokio::time::Instant;

/// Far enough ahead to mean "never" (about 30 years), near enough that
/// adding it to the monotonic clock cannot overflow.
pub const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + d`, or [`NEVER`] from now when that would overflow.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(NEVER))
        .or_else(|| now.checked_add(NEVER))
        .unwrap_or(now)
}

/// `Instant::now() + d`, saturating (see [`after`]).
pub fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

/// `d × factor`, saturating at [`Duration::MAX`]; a negative or NaN factor
/// gives zero.
pub fn scaled(d: Duration, factor: f64) -> Duration {
    if factor.is_nan() || factor <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// `d`, at most [`NEVER`]: for durations handed to code that adds them to
/// a clock itself (hyper's header read timeout).
pub fn capped(d: Duration) -> Duration {
    d.min(NEVER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(after(now, Duration::MAX), now + NEVER);
        assert_eq!(after(now, NEVER + Duration::from_secs(1)), now + NEVER);
        assert!(from_now(Duration::MAX) > now);
    }

    #[test]
    fn scaling_saturates_and_never_goes_negative() {
        let s = Duration::from_secs;
        for (d, f, want) in [
            (s(10), 0.5, s(5)),
            (s(10), 1.05, Duration::from_millis(10_500)),
            (Duration::MAX, 1.05, Duration::MAX),
            (Duration::MAX, 0.5, Duration::MAX / 2),
            (s(10), f64::INFINITY, Duration::MAX),
            (s(10), f64::NAN, Duration::ZERO),
            (s(10), -1.0, Duration::ZERO),
            (Duration::ZERO, 1e300, Duration::ZERO),
        ] {
            let got = scaled(d, f);
            // f64 has 53 bits: allow its rounding on the largest durations.
            let diff = if got > want { got - want } else { want - got };
            assert!(
                diff <= Duration::from_secs(4096),
                "{d:?} × {f} = {got:?}, want {want:?}"
            );
        }
    }
}
