//! Backends dying and coming back under load: clients must not notice a
//! failure that a retry can hide.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{backends_toml, get, Host, Lb};

const FAST_HEALTH: &str =
    "[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2\n";

/// Runs `clients` loops of GETs to `url` until `stop`; returns (ok, failed)
/// counters and the per-backend tallies are ignored.
fn load(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks = (0..clients)
        .map(|_| {
            let (url, stop, ok, failed) = (
                url.clone(),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
            );
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let r = get(&url).await;
                    if r.status == StatusCode::OK {
                        ok.fetch_add(1, Relaxed);
                    } else {
                        eprintln!("failed: {} {}", r.status, r.text());
                        failed.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    (ok, failed, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_costs_no_request_and_returns_after_rise() {
    let mut hosts = [Host::start("a"), Host::start("b"), Host::start("c")];
    let lb = Lb::start(&format!(
        "{}\n{FAST_HEALTH}",
        backends_toml(&[(&hosts[0], None), (&hosts[1], None), (&hosts[2], None)])
    ))
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    // Slow-ish requests, so some are in flight on the victim when it dies.
    let (ok, failed, tasks) = load(lb.url("/delay?ms=5"), 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = hosts[1].addr;
    hosts[1].kill();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The dead backend is down and receives nothing more.
    let s = lb.status().await;
    let b = &s["backends"][1];
    assert_eq!(b["healthy"], false, "{s}");
    let requests_when_down = b["requests"].as_u64().unwrap();

    // Bring it back where it was: after `rise` good probes it takes traffic.
    hosts[1] = Host::start_at("b", victim);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = lb.status().await;
        if s["backends"][1]["requests"].as_u64().unwrap() > requests_when_down + 10 {
            assert_eq!(s["backends"][1]["healthy"], true, "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted backend never got traffic: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Relaxed), 0, "{} ok", ok.load(Relaxed));
    assert!(
        ok.load(Relaxed) > 200,
        "too little load to mean anything: {}",
        ok.load(Relaxed)
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_answers_503_at_once() {
    let mut hosts = [Host::start("a"), Host::start("b")];
    let lb = Lb::start(&format!(
        "{}\n[health]\ninterval = \"10s\"\n",
        backends_toml(&[(&hosts[0], None), (&hosts[1], None)])
    ))
    .await;
    assert_eq!(get(&lb.url("/")).await.status, StatusCode::OK);
    for h in &mut hosts {
        h.kill();
    }
    // The first request finds both refusing (and marks them down); every
    // later one is answered without trying.
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(&lb.url("/")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(r.text().lines().count(), 1, "{:?}", r.text());
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
    }
    let r = get(&lb.url("/")).await;
    assert!(r.text().contains("no healthy backend"), "{}", r.text());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_traffic_and_keeps_state_of_backends_in_both() {
    let hosts = [Host::start("a"), Host::start("b"), Host::start("c")];
    let lb = Lb::start(&backends_toml(&[(&hosts[0], None), (&hosts[1], None)])).await;
    support::tally(&lb.url("/"), 20).await;
    let before = lb.status().await["backends"][1]["requests"]
        .as_u64()
        .unwrap();

    lb.reload(&backends_toml(&[(&hosts[1], None), (&hosts[2], None)]));
    let counts = support::tally(&lb.url("/"), 40).await;
    assert!(
        !counts.contains_key("a"),
        "removed backend still used: {counts:?}"
    );
    assert!(
        counts.contains_key("b") && counts.contains_key("c"),
        "{counts:?}"
    );
    // "b" is present in both: its counters carried over.
    let s = lb.status().await;
    assert_eq!(s["backends"][0]["addr"], hosts[1].addr.to_string());
    assert!(
        s["backends"][0]["requests"].as_u64().unwrap() >= before + counts["b"] as u64,
        "{s}"
    );
    lb.stop().await;
}
