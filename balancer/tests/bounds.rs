//! Config bounds, attacked: the largest value `lb.toml` accepts for every
//! key must serve requests without a panic, and so must a [`Config`] built
//! in code with durations and numbers no file could hold (every deadline
//! and multiple derived from configuration saturates). `--check` refuses a
//! value past a bound with the file, line, key and range.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use balancer::{Balancer, Config};
use bytes::Bytes;
use http::{Method, StatusCode};
use support::{get, get_h2, request, Host};
use tokio::net::TcpListener;

/// Every key at the largest value validation accepts.
fn largest(backend: SocketAddr, strategy: &str) -> String {
    format!(
        r#"backends = [{{ addr = "{backend}", agent = "127.0.0.1:1", weight = 1000 }}, "127.0.0.1:1"]
[balance]
strategy = "{strategy}"
retries = 10
slow_start = "7d"
retry_budget = 1.0
[health]
interval = "7d"
timeout = "7d"
fall = 1000
rise = 1000
[agent]
port = 65535
interval = "7d"
timeout = "7d"
[compression]
level = 9
min_size = {}
[timeouts]
connect = "7d"
request = "7d"
idle = "7d"
header = "7d"
drain = "7d"
client_body = "7d"
send = "7d"
tunnel = "7d"
[outlier]
consecutive_failures = 1000
base_ejection = "5m"
max_ejected_percent = 100
[limits]
max_conns_per_backend = 1000000
max_connections = 10000000
max_connections_per_ip = 10000000
rate_per_ip = 1000000
burst_per_ip = 1000000
max_request_body = "18446744073709551615"
"#,
        i64::MAX
    )
}

/// The requests each balancer must serve: HTTP/1.1 (fresh and kept
/// alive), HTTP/2, a body, and the admin endpoints.
async fn exercise(addr: SocketAddr, admin: SocketAddr) {
    let url = format!("http://{addr}");
    for path in ["/", "/text/5000", "/delay?ms=1"] {
        let r = get(&format!("{url}{path}")).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    let seq = support::Seq::new();
    let shares = seq.tally(&format!("{url}/"), 20).await;
    assert_eq!(shares.total, 20);
    let r = get_h2(&format!("{url}/"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = request(
        Method::POST,
        &format!("{url}/sha1"),
        &[],
        Bytes::from_static(b"hello"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for path in ["/status.json", "/metrics", "/healthz", "/status"] {
        let r = get(&format!("http://{admin}{path}")).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_accepted_value_of_every_key_serves_requests() {
    let host = Host::start("a");
    for strategy in ["least-loaded", "round-robin", "least-connections", "random"] {
        // Not stopped: a week of drain would be waited out by a lingering
        // client connection. The test's end drops it.
        let lb = support::Lb::start(&largest(host.addr, strategy)).await;
        exercise(lb.addr, lb.admin).await;
    }
}

/// Starts a balancer on `config` as given (no validation), in this runtime.
async fn start_unchecked(config: Config) -> (SocketAddr, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let balancer = Balancer::start(config);
    tokio::spawn(async move {
        balancer
            .serve(listener, admin, std::future::pending())
            .await;
    });
    addrs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_built_in_code_with_durations_and_numbers_past_any_bound_serves_requests() {
    let host = Host::start("a");
    let mut c = support::config(&format!(
        "listen = \"127.0.0.1:1\"\n{}",
        largest(host.addr, "least-loaded")
    ));
    let never = Duration::MAX;
    c.health.interval = never;
    c.health.timeout = never;
    c.agent.interval = never;
    c.agent.timeout = never;
    c.timeouts.connect = never;
    c.timeouts.request = never;
    c.timeouts.idle = never;
    c.timeouts.header = never;
    c.timeouts.drain = never;
    c.timeouts.client_body = never;
    c.timeouts.send = never;
    c.timeouts.tunnel = never;
    c.balance.slow_start = never;
    c.outlier.base_ejection = never;
    c.balance.retries = u32::MAX;
    c.health.fall = u32::MAX;
    c.health.rise = u32::MAX;
    c.outlier.consecutive_failures = u32::MAX;
    c.outlier.max_ejected_percent = u32::MAX;
    c.limits.max_conns_per_backend = u32::MAX;
    c.limits.max_connections = u32::MAX;
    c.limits.max_connections_per_ip = u32::MAX;
    c.limits.max_request_body = u64::MAX;
    c.compression.level = u32::MAX;
    c.compression.min_size = u64::MAX;
    for b in &mut c.backends {
        b.weight = u32::MAX;
    }
    for strategy in [
        balancer::config::Strategy::LeastLoaded,
        balancer::config::Strategy::RoundRobin,
        balancer::config::Strategy::LeastConnections,
        balancer::config::Strategy::Random,
    ] {
        c.balance.strategy = strategy;
        let (addr, admin) = start_unchecked(c.clone()).await;
        exercise(addr, admin).await;
    }
}

#[test]
fn check_refuses_a_duration_past_a_week_naming_the_place_and_the_range() {
    let dir = std::env::temp_dir().join(format!("balancer-bounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[agent]\ninterval = \"100000000000y\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_balancer"))
        .args(["--check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for want in [
        "lb.toml:4:12",
        "[agent] interval",
        "\"100000000000y\"",
        "at most \"7d\"",
    ] {
        assert!(stderr.contains(want), "{stderr}\nlacks {want:?}");
    }
}
