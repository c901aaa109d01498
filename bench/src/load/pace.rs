//! Pacing: the open loop's Poisson schedule and dispatcher, the closed
//! loop's workers, and which path each request number gets.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::tally::{Outcome, Tally};
use super::Shared;

/// The due times of an open-loop run, counted from its start: Poisson
/// arrivals at `rate` per second (independent exponential gaps of mean
/// `1/rate`) from an RNG seeded with `seed`, until `duration` or `max`
/// arrivals.
pub fn arrivals(rate: f64, duration: Duration, max: u64, seed: u64) -> Vec<Duration> {
    let mut out = Vec::new();
    if !(rate.is_finite() && rate > 0.0) {
        return out;
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = duration.as_secs_f64();
    let mut t = 0.0;
    while (out.len() as u64) < max {
        // 1 - U lies in (0, 1]: the logarithm never sees 0.
        t += -(1.0 - rng.f64()).ln() / rate;
        if t >= end {
            break;
        }
        out.push(Duration::from_secs_f64(t));
    }
    out
}

/// Which of `n` paths request number `i` uses: in turn, or (with
/// `shuffle`) uniformly at random, from `seed` and `i` alone.
pub fn path_index(seed: u64, i: u64, n: usize, shuffle: bool) -> usize {
    let n = n.max(1);
    if !shuffle {
        return (i % n as u64) as usize;
    }
    // A stream of its own (not the arrivals'), one draw per request number.
    let key = seed.rotate_left(29) ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    fastrand::Rng::with_seed(key).usize(..n)
}

/// The open loop: starts each request at its due time, whatever is still
/// in flight; idle connections are reused, new ones opened on demand.
pub(super) async fn open_loop(s: Arc<Shared>, rate: f64, cap: usize) -> Tally {
    let l = &s.load;
    let schedule = arrivals(rate, l.duration, l.max_requests.unwrap_or(u64::MAX), l.seed);
    let idle: Arc<Mutex<Vec<SendRequest<Empty<Bytes>>>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(cap));
    let mut tasks = JoinSet::new();
    let mut t = Tally::new(l.bucket);
    for (i, at) in schedule.into_iter().enumerate() {
        let due = s.start + at;
        tokio::time::sleep_until(due).await;
        while let Some(done) = tasks.try_join_next() {
            if let Ok(o) = done {
                t.record(o);
            }
        }
        let (s, idle, slots) = (s.clone(), idle.clone(), slots.clone());
        tasks.spawn(async move {
            let (_slot, throttled) = match slots.clone().try_acquire_owned() {
                Ok(p) => (Some(p), false),
                Err(_) => (slots.acquire_owned().await.ok(), true),
            };
            let mut sender = idle.lock().ok().and_then(|mut v| v.pop());
            let answer = s.send(&mut sender, s.path(i as u64)).await;
            let latency = due.elapsed();
            if let Some(tx) = sender.filter(|tx| !tx.is_closed()) {
                if let Ok(mut v) = idle.lock() {
                    v.push(tx);
                }
            }
            Outcome {
                idx: s.bucket_of(due),
                latency,
                throttled,
                answer,
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(o) = done {
            t.record(o);
        }
    }
    t
}

/// One closed-loop connection: take the next request number, send it, read
/// the whole answer, tally it, until the deadline or the request budget.
pub(super) async fn worker(s: Arc<Shared>) -> Tally {
    let mut t = Tally::new(s.load.bucket);
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let max = s.load.max_requests.unwrap_or(u64::MAX);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        let due = Instant::now();
        if i >= max || due >= s.deadline {
            break;
        }
        let answer = s.send(&mut sender, s.path(i)).await;
        let failed = answer.is_err();
        t.record(Outcome {
            idx: s.bucket_of(due),
            latency: due.elapsed(),
            throttled: false,
            answer,
        });
        if failed {
            // Do not spin on a refused connection.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    t
}
