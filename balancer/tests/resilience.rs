//! Resilience through the real balancer: outlier ejection (and its limit,
//! and panic mode), slow start, and the retry budget, against backends
//! that fail live traffic.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{
    backend_status, backends_without_agents, get, raw_backend, statuses, tally, Host, Lb,
};

const ANSWER_500: &[u8] =
    b"HTTP/1.1 500 Internal Server Error\r\nx-backend: bad\r\ncontent-length: 4\r\n\r\nboom";

/// Probes too rare to matter: the first runs at start (one failure is not
/// `fall`), the next an hour later.
const QUIET_HEALTH: &str = "[health]\ninterval = \"1h\"\n";
const FAST_HEALTH: &str =
    "[health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2\n";

/// `/status.json`'s view of the backend at `addr`.
async fn backend(lb: &Lb, addr: SocketAddr) -> serde_json::Value {
    backend_status(&lb.status().await, addr)
}

/// Waits up to `limit` for `check` to hold of `/status.json`.
async fn wait_status(
    lb: &Lb,
    limit: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let start = Instant::now();
    loop {
        let s = lb.status().await;
        if check(&s) {
            return;
        }
        assert!(start.elapsed() < limit, "{what} not within {limit:?}: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ejected_count(status: &serde_json::Value) -> usize {
    status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["ejected"] == true)
        .count()
}

/// The value of the unlabelled series `name` in `/metrics`.
async fn metric(lb: &Lb, name: &str) -> f64 {
    let text = get(&format!("http://{}/metrics", lb.admin)).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_500_is_ejected_after_five_and_returns_after_its_ejection() {
    let bad = raw_backend(ANSWER_500).await;
    let (a, b) = (Host::start("a"), Host::start("b"));
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n{QUIET_HEALTH}[outlier]\nbase_ejection = \"1s\"\n",
        backends_without_agents(&[bad, a.addr, b.addr])
    ))
    .await;

    // Round robin sends it every third request: five 500s in fifteen.
    let counts = statuses(&lb.url("/"), 15).await;
    assert_eq!(counts.get(&500), Some(&5), "{counts:?}");
    let ejected_at = Instant::now();
    let s = backend(&lb, bad).await;
    assert_eq!(s["ejected"], true, "{s}");
    assert_eq!(s["ejections"], 1, "{s}");
    assert_eq!(s["healthy"], true, "ejection is not health: {s}");
    let left = s["ejected_for_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 1000, "{s}");

    // Traffic moves to the others (round robin gives its turn to the next
    // in line, as for a down backend).
    let counts = tally(&lb.url("/"), 30).await;
    assert!(!counts.contains_key("bad"), "{counts:?}");
    assert_eq!(counts.get("a").unwrap() + counts.get("b").unwrap(), 30);

    // Back after the ejection time, and failing again: ejected for twice
    // as long, since it has not behaved in between.
    wait_status(&lb, Duration::from_secs(3), "return", |s| {
        backend_status(s, bad)["ejected"] == false
    })
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(900));
    assert!(backend(&lb, bad).await["ejected_for_ms"].is_null());
    let counts = statuses(&lb.url("/"), 15).await;
    assert_eq!(counts.get(&500), Some(&5), "{counts:?}");
    let s = backend(&lb, bad).await;
    assert_eq!(
        (&s["ejected"], &s["ejections"]),
        (&true.into(), &2.into()),
        "{s}"
    );
    let left = s["ejected_for_ms"].as_u64().unwrap();
    assert!(left > 1000 && left <= 2000, "second ejection, 2 × 1 s: {s}");
    assert_eq!(lb.status().await["panic"], false);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_max_ejected_percent_of_the_pool_is_ejected() {
    // Three of four fail; at 50 % only two may be ejected.
    let bad = [
        raw_backend(ANSWER_500).await,
        raw_backend(ANSWER_500).await,
        raw_backend(ANSWER_500).await,
    ];
    let good = Host::start("good");
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n{QUIET_HEALTH}\
         [outlier]\nbase_ejection = \"30s\"\nmax_ejected_percent = 50\n",
        backends_without_agents(&[bad[0], bad[1], bad[2], good.addr])
    ))
    .await;

    statuses(&lb.url("/"), 60).await;
    let s = lb.status().await;
    assert_eq!(ejected_count(&s), 2, "{s}");
    assert_eq!(s["panic"], false, "{s}");
    let kept = *bad
        .iter()
        .find(|&&a| backend_status(&s, a)["ejected"] == false)
        .expect("one failing backend left in rotation");
    assert_eq!(backend_status(&s, good.addr)["ejected"], false, "{s}");

    // The one left in keeps taking (and failing) its share, and stays in.
    let before = backend_status(&s, kept)["requests"].as_u64().unwrap();
    let counts = statuses(&lb.url("/"), 20).await;
    assert!(counts.get(&500).copied().unwrap_or(0) >= 5, "{counts:?}");
    let s = lb.status().await;
    assert!(
        backend_status(&s, kept)["requests"].as_u64().unwrap() >= before + 5,
        "{s}"
    );
    assert_eq!(ejected_count(&s), 2, "{s}");
    assert_eq!(metric(&lb, "lb_panic").await, 0.0);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_sends_traffic_to_ejected_backends_but_never_to_down_ones() {
    // Two backends whose application fails but whose health check passes,
    // two good ones.
    let bad = [
        support::failing_backend("bad1").await,
        support::failing_backend("bad2").await,
    ];
    let a = Host::start("a");
    let mut b = Host::start("b");
    let b_addr = b.addr;
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n{FAST_HEALTH}\
         [outlier]\nbase_ejection = \"1m\"\nmax_ejected_percent = 50\n",
        backends_without_agents(&[bad[0], bad[1], a.addr, b_addr])
    ))
    .await;

    // Both failing ones are ejected (2 of 4: the limit).
    let counts = statuses(&lb.url("/"), 40).await;
    assert_eq!(counts.get(&500), Some(&10), "{counts:?}");
    let s = lb.status().await;
    assert_eq!(ejected_count(&s), 2, "{s}");
    assert_eq!(s["panic"], false, "{s}");
    assert_eq!(tally(&lb.url("/"), 20).await.len(), 2, "only a and b");

    // One good backend dies: 3 of 4 out, over 50 %. Panic mode: the
    // ejected ones take traffic again; the dead one does not.
    b.kill();
    wait_status(&lb, Duration::from_secs(3), "b down", |s| {
        backend_status(s, b_addr)["healthy"] == false
    })
    .await;
    let s = lb.status().await;
    assert_eq!(s["panic"], true, "{s}");
    assert_eq!(ejected_count(&s), 2, "ejections stand, only suspended: {s}");
    let before = backend_status(&s, b_addr)["requests"].as_u64().unwrap();
    // Round robin over bad1, bad2, a (b's turn passes to bad1): three in
    // four reach a failing backend, and nothing gets 503.
    let counts = statuses(&lb.url("/"), 40).await;
    assert_eq!(counts.get(&500), Some(&30), "{counts:?}");
    assert_eq!(counts.get(&200), Some(&10), "{counts:?}");
    let s = lb.status().await;
    assert_eq!(
        backend_status(&s, b_addr)["requests"].as_u64().unwrap(),
        before,
        "{s}"
    );
    assert_eq!(metric(&lb, "lb_panic").await, 1.0);

    // It comes back: panic mode ends and the ejected are out again.
    b = Host::start_at("b", b_addr);
    wait_status(&lb, Duration::from_secs(3), "b up", |s| {
        backend_status(s, b_addr)["healthy"] == true
    })
    .await;
    assert_eq!(lb.status().await["panic"], false);
    let counts = tally(&lb.url("/"), 20).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    drop(b);
    lb.stop().await;
}

/// Sends sequential GETs for `period` and returns the share `id` took.
async fn share_for(lb: &Lb, id: &str, period: Duration) -> (f64, usize) {
    let start = Instant::now();
    let (mut hits, mut total) = (0, 0);
    while start.elapsed() < period {
        let r = get(&lb.url("/")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        hits += usize::from(r.backend() == id);
        total += 1;
    }
    (hits as f64 / total as f64, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backend_ramps_up_over_slow_start() {
    let a = Host::start("a");
    let mut b = Host::start("b");
    let b_addr = b.addr;
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\nslow_start = \"2s\"\n{FAST_HEALTH}",
        backends_without_agents(&[a.addr, b_addr])
    ))
    .await;
    // Present at start: no ramp, a full share at once.
    assert!(backend(&lb, b_addr).await["slow_start"].is_null());
    let (share, _) = share_for(&lb, "b", Duration::from_millis(200)).await;
    assert!((0.45..=0.55).contains(&share), "{share}");

    b.kill();
    wait_status(&lb, Duration::from_secs(3), "b down", |s| {
        backend_status(s, b_addr)["healthy"] == false
    })
    .await;
    b = Host::start_at("b", b_addr);
    wait_status(&lb, Duration::from_secs(3), "b up", |s| {
        backend_status(s, b_addr)["healthy"] == true
    })
    .await;
    let up_at = Instant::now();
    let ramp = backend(&lb, b_addr).await["slow_start"]
        .as_f64()
        .expect("ramping");
    assert!((0.1..0.3).contains(&ramp), "{ramp}");

    // The first 400 ms: ramp 0.1 to 0.28, so at most about 14 % of the
    // requests (round robin skips it with probability 1 − ramp).
    let (share, n) = share_for(&lb, "b", Duration::from_millis(400)).await;
    assert!(
        share < 0.25,
        "b took {share} of {n} requests right after coming up"
    );

    // After the slow start: its full share again.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(up_at.elapsed())).await;
    assert!(backend(&lb, b_addr).await["slow_start"].is_null());
    let (share, n) = share_for(&lb, "b", Duration::from_millis(300)).await;
    assert!(
        (0.45..=0.55).contains(&share),
        "b took {share} of {n} after its slow start"
    );
    drop(b);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_added_on_reload_ramps_up() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let config = |addrs: &[SocketAddr]| {
        format!(
            "{}\n[balance]\nstrategy = \"random\"\nslow_start = \"2s\"\n{QUIET_HEALTH}",
            backends_without_agents(addrs)
        )
    };
    let lb = Lb::start(&config(&[a.addr])).await;
    lb.reload(&config(&[a.addr, b.addr]));
    let s = lb.status().await;
    assert!(backend_status(&s, a.addr)["slow_start"].is_null(), "{s}");
    let ramp = backend_status(&s, b.addr)["slow_start"]
        .as_f64()
        .expect("ramping");
    assert!((0.1..0.2).contains(&ramp), "{s}");
    // Random by weight × ramp: at ramp ≤ 0.28, b takes at most ~22 %.
    let (share, n) = share_for(&lb, "b", Duration::from_millis(400)).await;
    assert!(
        share < 0.3,
        "b took {share} of {n} requests right after being added"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_stay_within_the_budget_when_a_backend_resets_every_connection() {
    let reset = support::reset_backend().await;
    let good = Host::start("good");
    // Ejection off, so the resetting backend keeps failing half the
    // requests and only the budget holds retries back.
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\nretry_budget = 0.2\n{QUIET_HEALTH}\
         [outlier]\nconsecutive_failures = 0\n",
        backends_without_agents(&[reset, good.addr])
    ))
    .await;

    const REQUESTS: usize = 3000;
    let started = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let bad_gateway = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (url, sent, ok, bad_gateway) = (
                lb.url("/"),
                Arc::clone(&sent),
                Arc::clone(&ok),
                Arc::clone(&bad_gateway),
            );
            tokio::spawn(async move {
                while sent.fetch_add(1, Relaxed) < REQUESTS {
                    let r = get(&url).await;
                    match r.status {
                        StatusCode::OK => ok.fetch_add(1, Relaxed),
                        StatusCode::BAD_GATEWAY => bad_gateway.fetch_add(1, Relaxed),
                        other => panic!("unexpected {other}: {}", r.text()),
                    };
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (ok, bad_gateway) = (ok.load(Relaxed), bad_gateway.load(Relaxed));
    assert_eq!(ok + bad_gateway, REQUESTS);

    // Retries counted where they land: attempts at the backends beyond one
    // per request.
    let s = lb.status().await;
    let attempts: u64 = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    let retries = attempts - REQUESTS as u64;
    assert_eq!(s["retries"].as_u64(), Some(retries), "{s}");
    let denied = s["retries_denied"].as_u64().unwrap();
    eprintln!(
        "{REQUESTS} requests in {elapsed:.2} s: {ok} ok, {bad_gateway} 502, {retries} retries, {denied} denied"
    );
    // Under 20 % of requests plus the floor of 10/s over each window
    // (about 10 s) the run touched.
    let windows = 2.0 + (elapsed / 9.0).floor();
    let allowed = 0.2 * REQUESTS as f64 + 100.0 * windows;
    assert!(
        (retries as f64) <= allowed,
        "{retries} retries for {REQUESTS} requests in {elapsed:.1} s (allowed {allowed})"
    );
    // The budget was used, not refused wholesale.
    assert!(retries as f64 >= 0.2 * REQUESTS as f64, "{retries} retries");
    // Each refused retry is a request answered with its own error.
    assert!(denied > 0, "{s}");
    assert_eq!(bad_gateway as u64, denied, "{s}");
    assert_eq!(metric(&lb, "lb_retries_denied_total").await, denied as f64);
    lb.stop().await;
}
