//! The open loop's schedule and path picks (pure), and coordinated omission
//! end to end against an in-process `backend`.

use std::net::SocketAddr;
use std::time::Duration;

use super::pace::{arrivals, path_index};
use super::{run, run_merged, Load, Mode};

#[test]
fn arrivals_are_reproducible_from_the_seed() {
    let a = arrivals(200.0, Duration::from_secs(5), u64::MAX, 7);
    assert_eq!(a, arrivals(200.0, Duration::from_secs(5), u64::MAX, 7));
    assert_ne!(a, arrivals(200.0, Duration::from_secs(5), u64::MAX, 8));
}

#[test]
fn arrivals_are_poisson_at_the_rate() {
    let rate = 1000.0;
    let a = arrivals(rate, Duration::from_secs(20), u64::MAX, 42);
    let n = a.len() as f64;
    assert!((n / 20_000.0 - 1.0).abs() < 0.03, "{n} arrivals in 20 s");
    assert!(a.windows(2).all(|w| w[0] <= w[1]), "in order");
    assert!(a.last().is_some_and(|t| *t < Duration::from_secs(20)));
    let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    assert!((mean * rate - 1.0).abs() < 0.03, "mean gap {mean}");
    // Exponential gaps: standard deviation equal to the mean (even spacing
    // would have none), and 1 - 1/e of them shorter than the mean.
    let cv = var.sqrt() / mean;
    assert!((cv - 1.0).abs() < 0.05, "coefficient of variation {cv}");
    let short = gaps.iter().filter(|g| **g < mean).count() as f64 / gaps.len() as f64;
    assert!(
        (short - 0.632).abs() < 0.02,
        "{short} of the gaps below the mean"
    );
}

#[test]
fn arrivals_stop_at_the_count_or_the_duration() {
    assert_eq!(arrivals(1000.0, Duration::from_secs(10), 50, 1).len(), 50);
    assert!(arrivals(10.0, Duration::from_millis(1), u64::MAX, 1).len() <= 1);
    assert!(arrivals(0.0, Duration::from_secs(1), 10, 1).is_empty());
    assert!(arrivals(f64::NAN, Duration::from_secs(1), 10, 1).is_empty());
}

#[test]
fn paths_in_turn_or_shuffled_by_weight() {
    let turn: Vec<usize> = (0..6).map(|i| path_index(1, i, 3, false)).collect();
    assert_eq!(turn, [0, 1, 2, 0, 1, 2]);
    // Nine entries of one path and one of another: a 90/10 mix.
    let picks: Vec<usize> = (0..20_000).map(|i| path_index(9, i, 10, true)).collect();
    let rare = picks.iter().filter(|p| **p == 9).count() as f64 / 20_000.0;
    assert!(
        (rare - 0.1).abs() < 0.01,
        "{rare} of the picks on the rare path"
    );
    let again: Vec<usize> = (0..20_000).map(|i| path_index(9, i, 10, true)).collect();
    assert_eq!(picks, again, "reproducible");
    let other: Vec<usize> = (0..20_000).map(|i| path_index(10, i, 10, true)).collect();
    assert_ne!(picks, other, "another seed, another order");
}

/// A `backend` on a free loopback port, for as long as the test runs.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(backend::run(
        listener,
        backend::Config::new("t"),
        std::future::pending(),
    ));
    addr
}

fn open(target: SocketAddr, rate: f64, conns: usize) -> Load {
    let mut l = Load::closed(
        "test",
        target,
        "/delay?ms=40",
        1,
        Duration::from_millis(800),
    );
    l.mode = Mode::Open { rate, conns };
    l
}

/// 50 req/s of 40 ms requests need two in flight on average: with room
/// they are answered in about 40 ms; through one connection (20 req/s at
/// most) they queue, and the queueing counts, from each due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_the_wait_from_the_due_time() {
    let target = backend().await;
    let free = run(open(target, 50.0, 64)).await.expect("run");
    assert_eq!(free.errors, 0, "{:?}", free.error_samples);
    assert!(free.ok >= 20, "{} answers", free.ok);
    assert_eq!(free.throttled, 0);
    assert!(free.max_in_flight >= 2, "{} in flight", free.max_in_flight);
    assert!(free.latency_ms.p50 < 250.0, "{:?}", free.latency_ms);

    let capped = run(open(target, 50.0, 1)).await.expect("run");
    assert_eq!(capped.ok, free.ok, "the same seeded schedule");
    assert_eq!(capped.max_in_flight, 1);
    assert!(capped.throttled > capped.ok / 2, "{}", capped.throttled);
    // About 40 arrivals in 0.8 s take 1.6 s to serve one at a time: the
    // last ones wait most of a second, the median one about 0.4 s.
    assert!(
        capped.latency_ms.max > 500.0 && capped.latency_ms.p50 > 3.0 * free.latency_ms.p50,
        "capped {:?}, free {:?}",
        capped.latency_ms,
        free.latency_ms
    );
}

/// Two drivers at once: each keeps its own result, and the merged one
/// counts every answer of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_runs_add_up() {
    let target = backend().await;
    let mut a = open(target, 40.0, 64);
    a.paths = vec!["/delay?ms=5".into()];
    a.duration = Duration::from_millis(500);
    let mut b = a.clone();
    b.seed = 2;
    let (parts, all) = run_merged("both", vec![a, b]).await.expect("run");
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.ok > 0 && p.errors == 0));
    assert_eq!(all.ok, parts[0].ok + parts[1].ok);
    assert_eq!(all.by_backend.get("t").copied(), Some(all.ok));
    assert_eq!(all.label, "both");
    let lo = parts
        .iter()
        .map(|p| p.latency_ms.max)
        .fold(f64::MAX, f64::min);
    assert!(all.latency_ms.max >= lo);
}
