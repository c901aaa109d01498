//! `GET /decisions` (contract: "the last choices made: for each, the
//! candidates with their score terms and the winner") and what the status
//! page reads beside it in `/status.json`: the reason a backend is down,
//! the host name its agent reports, and its p50/p99 over the last second.
//! Real backends, agents and balancer on loopback ports.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{backend_status, get, FakeAgent, Host, Lb};

async fn decisions(lb: &Lb) -> Vec<Value> {
    let r = get(&format!("http://{}/decisions", lb.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["decisions"].as_array().expect("a decisions list").clone()
}

/// Waits until `check` holds for the backend at `addr` in `/status.json`.
async fn wait_status(
    lb: &Lb,
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let b = backend_status(&lb.status().await, addr);
        if check(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "{what}: {b:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real agent reporting a fixed load, with this machine's host name.
async fn real_agent() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let report = agent::LoadReport::parse(br#"{"cpu": 0.3, "memory": 0.4, "cores": 2}"#).unwrap();
    let monitor = agent::Monitor::fixed(report);
    tokio::spawn(agent::serve(listener, monitor, std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_shows_every_candidate_with_its_terms_and_the_winner() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let (agent_a, agent_b) = (FakeAgent::start(0.1).await, FakeAgent::start(0.9).await);
    let dead = support::dead_addr();
    let lb = Lb::start(&format!(
        "backends = [{{ addr = \"{}\", agent = \"{}\" }}, {{ addr = \"{}\", agent = \"{}\" }}, \
         {{ addr = \"{dead}\", agent = \"127.0.0.1:1\", weight = 3 }}]\n\
         [balance]\nstrategy = \"least-loaded\"\n[health]\ninterval = \"100ms\"\nfall = 1\n\
         [agent]\ninterval = \"200ms\"\n",
        a.addr, agent_a.addr, b.addr, agent_b.addr
    ))
    .await;
    wait_status(&lb, dead, "the dead backend goes down", |s| {
        s["healthy"] == false
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while lb.status().await["backends"][0]["cpu"].is_null()
        || lb.status().await["backends"][1]["cpu"].is_null()
    {
        assert!(Instant::now() < deadline, "no load reports");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = get(&lb.url("/?decide=1")).await;
    assert_eq!(r.status, 200);
    let winner = if r.backend() == "a" { a.addr } else { b.addr };
    let list = decisions(&lb).await;
    let d = list
        .iter()
        .find(|d| d["request"] == "GET /?decide=1")
        .unwrap_or_else(|| panic!("the request is not among the decisions: {list:#?}"));
    assert_eq!(d["strategy"], "least-loaded");
    assert_eq!(d["winner"], winner.to_string(), "{d:#}");
    assert_eq!(d["attempt"], 1);
    assert!(d["at_ms"].as_u64().unwrap() > 1_600_000_000_000, "{d:#}");
    assert!(!d["reason"].as_str().unwrap().is_empty(), "{d:#}");
    let c = d["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 3, "{d:#}");
    for (cand, addr) in c.iter().zip([a.addr, b.addr, dead]) {
        assert_eq!(cand["addr"], addr.to_string());
        for key in [
            "score",
            "cpu",
            "load_age_ms",
            "util",
            "queue",
            "pressure",
            "in_flight",
            "busy",
            "slowness",
            "slow_start",
            "weight",
            "untried",
            "state",
            "eligible",
        ] {
            assert!(cand.get(key).is_some(), "{key} missing: {cand:#}");
        }
    }
    assert_eq!(c[0]["cpu"], 0.1);
    assert_eq!(c[1]["cpu"], 0.9);
    assert!(c[0]["score"].as_f64().unwrap() > 0.0, "{d:#}");
    assert!(c[0]["load_age_ms"].as_u64().is_some(), "{d:#}");
    assert_eq!(
        (c[0]["state"].as_str(), c[0]["eligible"].as_bool()),
        (Some("up"), Some(true))
    );
    assert_eq!(
        (c[2]["state"].as_str(), c[2]["eligible"].as_bool()),
        (Some("down"), Some(false))
    );
    assert_eq!(c[2]["weight"], 3);
    assert!(c[2]["cpu"].is_null(), "no agent, no cpu: {d:#}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_decisions_give_the_turn_and_no_scores() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n",
        support::backends_without_agents(&[a.addr, b.addr])
    ))
    .await;
    assert_eq!(get(&lb.url("/?rr")).await.status, 200);
    let list = decisions(&lb).await;
    let d = list
        .iter()
        .find(|d| d["request"] == "GET /?rr")
        .expect("recorded");
    assert_eq!(d["strategy"], "round-robin");
    assert_eq!(d["reason"], "round-robin turn", "{d:#}");
    assert!(d["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["score"].is_null()));
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_is_sampled_and_bounded() {
    let a = Host::start("a");
    let lb = Lb::start(&support::backends_without_agents(&[a.addr])).await;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1500) || sent < 100 {
        assert_eq!(get(&lb.url("/?many")).await.status, 200);
        sent += 1;
    }
    let list = decisions(&lb).await;
    assert!(!list.is_empty() && list.len() <= 64, "{}", list.len());
    // Newest first, and at least 50 ms apart (less a little for the
    // wall clock against the monotonic one).
    for pair in list.windows(2) {
        let (newer, older) = (
            pair[0]["at_ms"].as_u64().unwrap(),
            pair[1]["at_ms"].as_u64().unwrap(),
        );
        assert!(newer >= older + 45, "{newer} then {older}: not sampled");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_the_probes_take_down_shows_why_and_its_agents_host_name() {
    let mut host = Host::start("a");
    let other = Host::start("b");
    let (agent, agent_b) = (real_agent().await, real_agent().await);
    let addr = host.addr;
    let lb = Lb::start(&format!(
        "backends = [{{ addr = \"{addr}\", agent = \"{agent}\" }}, {{ addr = \"{}\", agent = \"{agent_b}\" }}]\n\
         [health]\ninterval = \"100ms\"\nfall = 2\nrise = 1\n[agent]\ninterval = \"100ms\"\n",
        other.addr
    ))
    .await;
    let expected = agent::sample::hostname();
    let s = wait_status(&lb, addr, "the agent reports", |s| !s["cpu"].is_null()).await;
    assert_eq!(s["hostname"].as_str(), expected.as_deref(), "{s:#}");
    assert!(s["down_reason"].is_null(), "{s:#}");

    // No traffic: only the probes can take it down.
    host.kill();
    let s = wait_status(&lb, addr, "down by the probes", |s| s["healthy"] == false).await;
    let why = s["down_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no down_reason: {s:#}"));
    assert!(
        why.contains("health probe failed 2 times in a row"),
        "{why}"
    );
    assert!(why.to_lowercase().contains("refused"), "{why}");
    assert!(s["down_since"].as_u64().is_some(), "{s:#}");

    // Back up: the reason goes.
    let _back = Host::start_at("a", addr);
    let s = wait_status(&lb, addr, "up again", |s| s["healthy"] == true).await;
    assert!(s["down_reason"].is_null(), "{s:#}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_has_each_backends_p50_and_p99_of_the_last_second() {
    let a = Host::start("a");
    let lb = Lb::start(&support::backends_without_agents(&[a.addr])).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for _ in 0..5 {
            assert_eq!(get(&lb.url("/delay?ms=20")).await.status, 200);
        }
        let s = backend_status(&lb.status().await, a.addr);
        if let Some(q) = s["latency_ms"].as_object() {
            let (p50, p99) = (q["p50"].as_f64().unwrap(), q["p99"].as_f64().unwrap());
            // Within a 25 % bucket of 20 ms at least; generous above.
            assert!(p50 >= 16.0 && p99 >= p50, "{s:#}");
            assert!(q["count"].as_u64().unwrap() >= 1, "{s:#}");
            break;
        }
        assert!(Instant::now() < deadline, "no latency_ms: {s:#}");
    }
    lb.stop().await;
}
