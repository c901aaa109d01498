//! Burning CPU time for `/work`: spin until the *thread* has been on a CPU
//! for the asked time, so that on a busy host the request takes longer in
//! wall time, as real work would.
//!
//! Thread CPU time comes from `/proc/thread-self/schedstat` (its first field
//! is nanoseconds on CPU), falling back to the clock ticks in
//! `/proc/thread-self/stat`, and to wall time where neither is readable.
//! It is read about once per millisecond of spinning.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Spins on the calling thread until it has used `target` of CPU time.
/// Blocking: call it from `spawn_blocking`.
pub fn burn(target: Duration) {
    let Some(clock) = Clock::detect() else {
        spin_wall(target);
        return;
    };
    let start = clock.read().unwrap_or_default();
    let (mut last, mut last_change) = (start, Instant::now());
    let mut acc = 0u64;
    loop {
        acc = spin_for(Duration::from_millis(1), acc);
        let Some(now) = clock.read() else {
            // The clock went away mid-way: finish on wall time.
            spin_wall(target.saturating_sub(last.saturating_sub(start)));
            break;
        };
        let used = now.saturating_sub(start);
        if used >= target {
            break;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > STUCK {
            // A clock that does not move is not counting: use wall time.
            spin_wall(target.saturating_sub(used));
            break;
        }
    }
    black_box(acc);
}

/// How long a CPU clock may stand still under a spinning thread before it
/// is taken as broken (tick-based clocks move every 10 ms).
const STUCK: Duration = Duration::from_millis(200);

/// Where this thread's CPU time is read from.
#[derive(Clone, Copy)]
enum Clock {
    /// Nanoseconds, from `/proc/thread-self/schedstat`.
    Schedstat,
    /// `utime + stime` clock ticks (assumed 100 Hz), from
    /// `/proc/thread-self/stat`.
    Stat,
}

impl Clock {
    fn detect() -> Option<Clock> {
        [Clock::Schedstat, Clock::Stat]
            .into_iter()
            .find(|clock| clock.read().is_some())
    }

    /// This thread's CPU time so far.
    fn read(self) -> Option<Duration> {
        match self {
            Clock::Schedstat => {
                let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
                parse_schedstat(&text)
            }
            Clock::Stat => {
                let text = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
                parse_stat(&text)
            }
        }
    }
}

/// The first field of `schedstat`: nanoseconds spent on a CPU.
fn parse_schedstat(text: &str) -> Option<Duration> {
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// `utime + stime` from `stat` (fields 14 and 15), at 100 ticks a second.
/// The command name (field 2) may hold spaces, so fields are counted from
/// its closing parenthesis.
fn parse_stat(text: &str) -> Option<Duration> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Does arithmetic for `span` of wall time; returns the folded result so
/// the work cannot be optimised away.
fn spin_for(span: Duration, mut acc: u64) -> u64 {
    let until = Instant::now() + span;
    while Instant::now() < until {
        for i in 0..1000u64 {
            acc = black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    acc
}

fn spin_wall(target: Duration) {
    black_box(spin_for(target, 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedstat() {
        assert_eq!(
            parse_schedstat("123456789 42 7\n"),
            Some(Duration::from_nanos(123456789))
        );
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (tokio runtime) R 1 2 3 4 5 6 7 8 9 10 25 5 0 0 20 0";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(300)));
    }

    #[test]
    fn burns_at_least_the_target() {
        let start = Instant::now();
        burn(Duration::from_millis(30));
        assert!(start.elapsed() >= Duration::from_millis(29));
    }
}
