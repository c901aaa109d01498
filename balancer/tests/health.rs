//! Health through the real balancer and real backends: active probes with
//! fall/rise, passive marking on a refused connection, and no start-up
//! blackout.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};

use support::{backend_status, get, request, tally, Host, Lb};

/// `backends = [...]` for plain addresses, with agents nobody answers for.
fn backends(hosts: &[&Host]) -> String {
    let items: Vec<String> = hosts
        .iter()
        .map(|h| format!("{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}", h.addr))
        .collect();
    format!("backends = [{}]", items.join(", "))
}

/// Whether `/status.json` calls the backend at `addr` healthy.
async fn healthy(lb: &Lb, addr: SocketAddr) -> bool {
    let status = lb.status().await;
    backend_status(&status, addr)["healthy"]
        .as_bool()
        .unwrap_or_else(|| panic!("healthy is not a bool: {status}"))
}

/// Waits up to `limit` for the backend at `addr` to be `up`; returns how long
/// it took.
async fn wait_health(lb: &Lb, addr: SocketAddr, up: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    while healthy(lb, addr).await != up {
        assert!(
            start.elapsed() < limit,
            "{addr} not {} after {limit:?}: {}",
            if up { "up" } else { "down" },
            lb.status().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Turns the backend's own `/health` answer off or on, directly.
async fn set_health(host: &Host, up: bool) {
    let path = if up { "/health/up" } else { "/health/down" };
    let r = request(
        Method::POST,
        &format!("http://{}{path}", host.addr),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_probe_takes_a_backend_out_after_fall_and_back_after_rise() {
    let sick = Host::start("sick");
    let well = Host::start("well");
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n\
         [health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2\n",
        backends(&[&sick, &well])
    ))
    .await;
    let counts = tally(&lb.url("/"), 10).await;
    assert_eq!(counts.get("sick"), Some(&5), "{counts:?}");

    set_health(&sick, false).await;
    let took = wait_health(&lb, sick.addr, false, Duration::from_secs(3)).await;
    // Two failed probes in a row, one interval (± 5 % jitter) apart: not
    // the first failure alone.
    assert!(
        took >= Duration::from_millis(80),
        "down after {took:?}: fewer than fall = 2 probes"
    );
    let counts = tally(&lb.url("/"), 20).await;
    assert_eq!(counts.get("well"), Some(&20), "{counts:?}");

    set_health(&sick, true).await;
    let took = wait_health(&lb, sick.addr, true, Duration::from_secs(3)).await;
    assert!(
        took >= Duration::from_millis(80),
        "up after {took:?}: fewer than rise = 2 probes"
    );
    let counts = tally(&lb.url("/"), 20).await;
    assert_eq!(counts.get("sick"), Some(&10), "{counts:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_marks_a_backend_down_at_once() {
    let mut gone = Host::start("gone");
    let alive = Host::start("alive");
    // Probes every 10 s: none can run between the kill and the check.
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n[health]\ninterval = \"10s\"\n",
        backends(&[&gone, &alive])
    ))
    .await;
    assert!(healthy(&lb, gone.addr).await);

    gone.kill();
    // Round robin's first pick is "gone": refused, retried on "alive".
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.backend(), "alive");
    let status = lb.status().await;
    let b = backend_status(&status, gone.addr);
    assert_eq!(b["healthy"], false, "{status}");
    assert!(b["errors"].as_u64().unwrap() >= 1, "{status}");

    // And it stays out: every request goes to the live backend directly.
    let counts = tally(&lb.url("/"), 10).await;
    assert_eq!(counts.get("alive"), Some(&10), "{counts:?}");
    let status = lb.status().await;
    assert_eq!(
        backend_status(&status, gone.addr)["requests"].as_u64(),
        Some(1),
        "a down backend was still tried: {status}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_counts_as_up_at_start() {
    let hosts = [Host::start("a"), Host::start("b"), Host::start("c")];
    // The last backends' first probes are seconds away.
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n[health]\ninterval = \"10s\"\n",
        backends(&[&hosts[0], &hosts[1], &hosts[2]])
    ))
    .await;
    let status = lb.status().await;
    for h in &hosts {
        assert_eq!(backend_status(&status, h.addr)["healthy"], true, "{status}");
    }
    // The very first requests succeed and reach every backend.
    let counts = tally(&lb.url("/"), 3).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    lb.stop().await;
}
