//! `[limits] rate_per_ip` / `burst_per_ip`: a token bucket per client
//! address, kept as GCRA (the generic cell rate algorithm, which the
//! `governor` crate also uses): one "theoretical arrival time" per client
//! instead of a token count and a refill timestamp.
//!
//! Hand-written rather than `governor` keyed by IP: governor's keyed store
//! grows with every address ever seen until something calls
//! `retain_recent`, and it reads its own clock (quanta), where this
//! codebase takes time only from `tokio::time` so tests can pause it. The
//! table here is sharded and bounded, and an entry is dropped as soon as
//! its bucket is full again (it then says nothing a fresh one would not).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::per_ip::shard_of;
use crate::config::RatePerIp;

/// Refusals in a row after which a client is disconnected (with its last
/// `429`): it is not backing off.
pub const DISCONNECT_AFTER: u32 = 10;

const SHARDS: usize = 64;

/// Clients one shard tracks at most (262,144 in all, some 12 MB at most).
/// A full shard first drops the entries whose bucket has refilled; if every
/// one is still in use, a new client is refused (`429`) until room frees:
/// under such a flood the limit fails closed, as protecting the backends
/// is its point.
const SHARD_CAP: usize = 4096;

/// A full shard is swept at most this often, so that a flood of new
/// clients does not pay a sweep each.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What the rate limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the client's rate.
    Allowed,
    /// Over it: answer `429`.
    Refused {
        /// Whole seconds until a request would be allowed (at least 1).
        retry_after: u64,
        /// The client has been refused [`DISCONNECT_AFTER`] times in a
        /// row: close its connection.
        disconnect: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// When the bucket will be full again ("theoretical arrival time").
    tat: Instant,
    /// Requests refused in a row.
    refused: u32,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<u64, Bucket>,
    /// When the shard, full, was last swept.
    swept: Option<Instant>,
}

/// The buckets of every client seen lately.
#[derive(Debug)]
pub struct RateTable {
    shards: Box<[Mutex<Shard>]>,
    /// A full table has been logged (once).
    full_logged: AtomicBool,
}

impl RateTable {
    pub(super) fn new() -> RateTable {
        RateTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            full_logged: AtomicBool::new(false),
        }
    }

    /// Takes one request of client `key` at `now` against `limit`.
    pub fn check(&self, key: u64, now: Instant, limit: &RatePerIp) -> Verdict {
        let mut shard = self.shards[shard_of(key, SHARDS)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let shard = &mut *shard;
        if shard.buckets.len() >= SHARD_CAP && !shard.buckets.contains_key(&key) {
            if shard.swept.map_or(true, |at| now >= at + SWEEP_EVERY) {
                shard.buckets.retain(|_, b| b.tat > now);
                shard.swept = Some(now);
            }
            if shard.buckets.len() >= SHARD_CAP {
                if !self.full_logged.swap(true, Relaxed) {
                    tracing::warn!("rate limit table full: refusing new clients until room frees");
                }
                return Verdict::Refused {
                    retry_after: 1,
                    disconnect: false,
                };
            }
        }
        let bucket = shard.buckets.entry(key).or_insert(Bucket {
            tat: now,
            refused: 0,
        });
        decide(bucket, now, limit)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum()
    }
}

/// GCRA: a request is allowed when the bucket's arrival time is at most
/// `tolerance` (the burst, less one request) ahead of now, and then moves
/// it one `interval` on.
fn decide(bucket: &mut Bucket, now: Instant, limit: &RatePerIp) -> Verdict {
    let tat = bucket.tat.max(now);
    let ahead = tat - now;
    if ahead <= limit.tolerance {
        bucket.tat = tat + limit.interval;
        bucket.refused = 0;
        return Verdict::Allowed;
    }
    bucket.refused = bucket.refused.saturating_add(1);
    Verdict::Refused {
        retry_after: whole_seconds(ahead - limit.tolerance),
        disconnect: bucket.refused >= DISCONNECT_AFTER,
    }
}

/// `d` in whole seconds, rounded up, at least 1 (`Retry-After` takes
/// whole seconds, and 0 would invite an immediate retry).
fn whole_seconds(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RatePerIp {
        RatePerIp::new(per_second, burst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let t = RateTable::new();
        let l = limit(2.0, 4);
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(t.check(7, now, &l), Verdict::Allowed);
        }
        // The fifth at once is refused; one token comes back every 500 ms.
        assert_eq!(
            t.check(7, now, &l),
            Verdict::Refused {
                retry_after: 1,
                disconnect: false
            }
        );
        assert_eq!(t.check(7, now + Duration::from_millis(499), &l), {
            Verdict::Refused {
                retry_after: 1,
                disconnect: false,
            }
        });
        let later = now + Duration::from_millis(500);
        assert_eq!(t.check(7, later, &l), Verdict::Allowed);
        assert!(matches!(t.check(7, later, &l), Verdict::Refused { .. }));
        // Another client has its own bucket.
        assert_eq!(t.check(8, now, &l), Verdict::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_rounds_up_to_whole_seconds() {
        let t = RateTable::new();
        // One request every 10 s, burst 1.
        let l = limit(0.1, 1);
        let now = Instant::now();
        assert_eq!(t.check(1, now, &l), Verdict::Allowed);
        let r = t.check(1, now + Duration::from_millis(100), &l);
        assert_eq!(
            r,
            Verdict::Refused {
                retry_after: 10,
                disconnect: false
            }
        );
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn ten_refusals_in_a_row_disconnect_and_an_allowed_request_resets_them() {
        let t = RateTable::new();
        let l = limit(1.0, 1);
        let now = Instant::now();
        assert_eq!(t.check(1, now, &l), Verdict::Allowed);
        for i in 1..=DISCONNECT_AFTER {
            let Verdict::Refused { disconnect, .. } = t.check(1, now, &l) else {
                panic!("allowed")
            };
            assert_eq!(disconnect, i == DISCONNECT_AFTER, "refusal {i}");
        }
        let later = now + Duration::from_secs(1);
        assert_eq!(t.check(1, later, &l), Verdict::Allowed);
        assert!(matches!(
            t.check(1, later, &l),
            Verdict::Refused {
                disconnect: false,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_forgets_refilled_buckets() {
        let t = RateTable::new();
        let l = limit(1.0, 1);
        let now = Instant::now();
        // Far more clients than the table holds, one request each, spread
        // over time: buckets refill after 1 s and make room.
        let clients = (SHARDS * SHARD_CAP * 3 / 2) as u64;
        for k in 0..clients {
            let at = now + Duration::from_millis(k / 1000 * 1500);
            let v = t.check(k + 1, at, &l);
            assert_eq!(v, Verdict::Allowed, "client {k}");
        }
        assert!(t.len() <= SHARDS * SHARD_CAP);
        // All in use at one instant: newcomers are refused, not tracked.
        let t = RateTable::new();
        let mut refused = 0;
        for k in 0..clients {
            if t.check(k + 1, now, &l) != Verdict::Allowed {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(t.len() <= SHARDS * SHARD_CAP);
    }
}
