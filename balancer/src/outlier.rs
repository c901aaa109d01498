//! Outlier ejection (passive health from live traffic, after Envoy's
//! `consecutive_5xx` detector): one backend's failure streak and ejection
//! state as atomics ([`Detector`]), and the pool-wide rules as pure
//! functions ([`may_eject`], [`panic`]).
//!
//! - `consecutive_failures` failed attempts in a row (5xx responses,
//!   resets, protocol errors, timeouts, connect failures) eject a backend;
//!   any success resets the streak.
//! - The n-th ejection in a row lasts `base_ejection × n`, at most
//!   [`MAX_EJECTION`]; the multiplier drops by one for every
//!   `base_ejection` the backend then spends back in rotation, so a
//!   backend that behaves is soon forgiven and one that keeps failing stays
//!   out longer each time.
//! - An ejection happens only if it leaves at most `max_ejected_percent` of
//!   the pool out (down by active probes, or ejected). Unlike Envoy, which
//!   ejects at least one host regardless, a pool of one backend is never
//!   ejected from: panic mode would send the traffic straight back.
//! - Panic mode: when more than `max_ejected_percent` of the pool is out,
//!   ejection is suspended and ejected backends take traffic again; backends
//!   down by active probes stay out (routing to a host whose probes fail or
//!   that refuses connections only turns into failed requests, and with no
//!   healthy backend the contract wants an immediate `503`).
//!
//! Time is nanoseconds on the owning backend's clock (its `born` instant),
//! passed in, so the state machine is tested with plain numbers.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use crate::config::{Outlier as Settings, MAX_EJECTION};

/// One backend's failure streak and ejection state, lock-free.
#[derive(Debug, Default)]
pub struct Detector {
    /// Failed attempts in a row.
    consecutive: AtomicU32,
    /// End of the latest ejection, in nanoseconds on the backend's clock
    /// (0: never ejected). Ejected while `now < until`; kept after the
    /// ejection ends, as the origin of the multiplier's decay.
    until: AtomicU64,
    /// The multiplier of the latest ejection.
    level: AtomicU32,
    /// Ejections, ever (for the status page and metrics).
    ejections: AtomicU64,
    /// An ejection whose end has not been announced yet, so the return is
    /// logged once, by whoever sees it first.
    announced: AtomicBool,
}

/// What an ejection decided, for the log and the return timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// How long the backend is out.
    pub duration: Duration,
    /// Its multiplier (1 for a first ejection, or one after a long quiet).
    pub level: u32,
    /// Ejections of this backend, ever, this one included.
    pub count: u64,
}

impl Detector {
    /// A copy of `old`'s state, for a backend rebuilt on reload.
    pub fn carried(old: &Detector) -> Detector {
        Detector {
            consecutive: AtomicU32::new(old.consecutive.load(Relaxed)),
            until: AtomicU64::new(old.until.load(Relaxed)),
            level: AtomicU32::new(old.level.load(Relaxed)),
            ejections: AtomicU64::new(old.ejections.load(Relaxed)),
            announced: AtomicBool::new(old.announced.load(Relaxed)),
        }
    }

    /// Counts one attempt. True when this failure completes a streak of
    /// `threshold` (0: never) and the backend is not ejected already: the
    /// pool should eject it if it has room. A backend refused for lack of
    /// room trips again on its next failure.
    pub fn record(&self, failed: bool, threshold: u32, now: u64) -> bool {
        if !failed {
            // Most attempts succeed: leave the cache line alone unless a
            // streak is running.
            if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            return false;
        }
        let streak = self
            .consecutive
            .fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_add(1)))
            .map_or(u32::MAX, |c| c.saturating_add(1));
        threshold > 0 && streak >= threshold && !self.is_ejected(now)
    }

    /// Whether the backend is ejected at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.until.load(Relaxed)
    }

    /// How much longer the ejection lasts, or `None` when not ejected.
    pub fn remaining(&self, now: u64) -> Option<Duration> {
        let until = self.until.load(Relaxed);
        (now < until).then(|| Duration::from_nanos(until - now))
    }

    /// Ejections, ever.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// Ejects the backend at `now` for `base × multiplier` (see
    /// [`next_level`] and [`ejection_time`]) and restarts its streak.
    pub fn eject(&self, now: u64, base: Duration) -> Ejection {
        let since_end = Duration::from_nanos(now.saturating_sub(self.until.load(Relaxed)));
        let level = next_level(self.level.load(Relaxed), since_end, base);
        let duration = ejection_time(base, level);
        self.level.store(level, Relaxed);
        self.until
            .store(now.saturating_add(nanos(duration)), Relaxed);
        self.consecutive.store(0, Relaxed);
        self.announced.store(true, Relaxed);
        let count = self.ejections.fetch_add(1, Relaxed) + 1;
        Ejection {
            duration,
            level,
            count,
        }
    }

    /// True once per ejection, when called at or after its end: the caller
    /// logs the return.
    pub fn take_return(&self, now: u64) -> bool {
        !self.is_ejected(now) && self.announced.swap(false, Relaxed)
    }
}

/// The multiplier of the next ejection: the previous one, less one for each
/// whole `base` spent back in rotation since it ended, plus one. It stops
/// growing once `base × level` reaches [`MAX_EJECTION`], so forgiveness
/// never takes longer than the longest ejection's worth of good behaviour.
pub fn next_level(previous: u32, since_end: Duration, base: Duration) -> u32 {
    let decay = if base.is_zero() {
        previous
    } else {
        u32::try_from(since_end.as_nanos() / base.as_nanos()).unwrap_or(u32::MAX)
    };
    let cap = if base.is_zero() {
        1
    } else {
        u32::try_from(MAX_EJECTION.as_nanos().div_ceil(base.as_nanos()))
            .unwrap_or(u32::MAX)
            .max(1)
    };
    previous.saturating_sub(decay).saturating_add(1).min(cap)
}

/// `base × level`, at most [`MAX_EJECTION`], without overflow.
pub fn ejection_time(base: Duration, level: u32) -> Duration {
    base.checked_mul(level)
        .map_or(MAX_EJECTION, |d| d.min(MAX_EJECTION))
}

/// Whether a pool of `n` may have `out_after` backends out (down or
/// ejected) once one more is ejected: at most `percent` of it.
pub fn may_eject(out_after: usize, n: usize, percent: u32) -> bool {
    out_after.saturating_mul(100) <= n.saturating_mul(percent as usize)
}

/// Whether a pool of `n` with `out` backends down or ejected is in panic
/// mode: more than `percent` of it out.
pub fn panic(out: usize, n: usize, percent: u32) -> bool {
    out.saturating_mul(100) > n.saturating_mul(percent as usize)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Feeds outcomes ("x" failed, "." succeeded) at time 0 and returns,
    /// after each, whether it tripped ("T") or not ("-").
    fn run(d: &Detector, threshold: u32, seq: &str) -> String {
        seq.chars()
            .map(|c| {
                if d.record(c == 'x', threshold, 0) {
                    'T'
                } else {
                    '-'
                }
            })
            .collect()
    }

    #[test]
    fn a_streak_of_failures_trips_and_any_success_resets_it() {
        // (threshold, outcomes, trips)
        let table = [
            (5, "xxxx", "----"),
            (5, "xxxxx", "----T"),
            (5, "xxxx.xxxx", "---------"), // one success in the middle
            (5, "xxxxxxx", "----TTT"),     // refused for room: trips again
            (1, "x.x", "T-T"),
            (0, "xxxxxxxxxx", "----------"), // 0: off
        ];
        for (threshold, seq, want) in table {
            let d = Detector::default();
            assert_eq!(run(&d, threshold, seq), want, "{threshold} {seq}");
        }
    }

    #[test]
    fn an_ejected_backend_does_not_trip_again_until_it_returns() {
        let d = Detector::default();
        assert_eq!(run(&d, 2, "xx"), "-T");
        let e = d.eject(0, secs(10));
        assert_eq!(e.duration, secs(10));
        // Requests in flight when it was ejected fail too: no new trip.
        assert!(!d.record(true, 2, S));
        assert!(!d.record(true, 2, 9 * S));
        // The streak kept counting; back in rotation, the next failure trips.
        assert!(d.record(true, 2, 10 * S));
    }

    #[test]
    fn ejection_lasts_base_times_level_and_the_level_decays() {
        // (previous level, time since the last ejection ended, base, level)
        let table = [
            (0, secs(0), secs(10), 1),    // first ejection
            (1, secs(0), secs(10), 2),    // again at once: twice as long
            (2, secs(9), secs(10), 3),    // less than one base back: no decay
            (3, secs(10), secs(10), 3),   // one base of good behaviour: -1
            (3, secs(25), secs(10), 2),   // two: -2
            (3, secs(3600), secs(10), 1), // long forgiven: as if the first
            (30, secs(0), secs(10), 30),  // 30 × 10 s is the 5 min cap: stays
            (1, secs(0), secs(300), 1),   // base at the cap: never grows
            (7, secs(0), Duration::from_nanos(1), 8),
            (u32::MAX, secs(0), Duration::from_nanos(1), u32::MAX), // saturates
        ];
        for (previous, since, base, want) in table {
            assert_eq!(
                next_level(previous, since, base),
                want,
                "{previous} {since:?} {base:?}"
            );
        }
    }

    #[test]
    fn ejection_time_is_capped_and_never_overflows() {
        let table = [
            (secs(10), 1, secs(10)),
            (secs(10), 3, secs(30)),
            (secs(10), 31, secs(300)),
            (secs(300), 2, secs(300)),
            (Duration::MAX, u32::MAX, secs(300)),
            (Duration::from_millis(1), 0, Duration::ZERO),
        ];
        for (base, level, want) in table {
            assert_eq!(ejection_time(base, level), want, "{base:?} × {level}");
        }
    }

    #[test]
    fn repeated_ejections_grow_and_a_quiet_spell_forgives() {
        let d = Detector::default();
        let base = secs(10);
        let e1 = d.eject(0, base);
        assert_eq!((e1.duration, e1.level, e1.count), (secs(10), 1, 1));
        assert_eq!(d.remaining(4 * S), Some(secs(6)));
        // Tripped again right after returning: 20 s.
        let e2 = d.eject(10 * S, base);
        assert_eq!((e2.duration, e2.level, e2.count), (secs(20), 2, 2));
        assert!(d.is_ejected(29 * S) && !d.is_ejected(30 * S));
        assert_eq!(d.remaining(30 * S), None);
        // Back at 30 s, fine for 20 s: two levels forgiven.
        let e3 = d.eject(50 * S, base);
        assert_eq!((e3.duration, e3.level), (secs(10), 1));
        assert_eq!(d.ejections(), 3);
    }

    #[test]
    fn a_huge_clock_or_base_saturates_instead_of_panicking() {
        let d = Detector::default();
        let e = d.eject(u64::MAX - 5, secs(300));
        assert_eq!(e.duration, secs(300));
        assert!(d.is_ejected(u64::MAX - 1));
        assert_eq!(d.remaining(u64::MAX), None);
    }

    #[test]
    fn the_return_is_announced_once() {
        let d = Detector::default();
        assert!(!d.take_return(0), "never ejected");
        d.eject(0, secs(1));
        assert!(!d.take_return(S / 2), "still ejected");
        assert!(d.take_return(S));
        assert!(!d.take_return(2 * S));
    }

    #[test]
    fn carried_state_survives_a_reload() {
        let d = Detector::default();
        run(&d, 5, "xxx");
        d.eject(0, secs(10));
        let c = Detector::carried(&d);
        assert!(c.is_ejected(S));
        assert_eq!(c.ejections(), 1);
        assert_eq!(c.eject(10 * S, secs(10)).level, 2);
    }

    #[test]
    fn the_pool_keeps_at_most_the_share_out_and_panics_beyond() {
        // (out after the ejection, pool size, percent, allowed)
        let eject = [
            (1, 4, 50, true),
            (2, 4, 50, true),
            (3, 4, 50, false), // the third of four is over 50 %
            (1, 3, 50, true),
            (2, 3, 50, false), // 2/3 > 50 %
            (1, 2, 50, true),
            (1, 1, 50, false), // never the whole of a one-backend pool
            (1, 10, 10, true),
            (2, 10, 10, false),
            (1, 4, 0, false), // 0 %: never
            (4, 4, 100, true),
        ];
        for (out, n, percent, want) in eject {
            assert_eq!(may_eject(out, n, percent), want, "{out}/{n} at {percent}%");
        }
        // (out, pool size, percent, panic)
        let panics = [
            (0, 4, 50, false),
            (2, 4, 50, false), // at the limit: not beyond it
            (3, 4, 50, true),
            (1, 1, 50, true),
            (1, 2, 50, false),
            (2, 2, 50, true),
            (4, 4, 100, false), // 100 %: never (all out means 503)
        ];
        for (out, n, percent, want) in panics {
            assert_eq!(panic(out, n, percent), want, "{out}/{n} at {percent}%");
        }
    }
}
