//! Self-registration on real sockets: `POST /backends` (register, repeated
//! as the heartbeat) and `DELETE /backends/{addr}` (withdraw, draining
//! first) against an in-process balancer in front of real backends. A
//! registered backend shows in `/status.json` as `"registered"`, is probed
//! and polled, takes traffic, ramps under slow start, survives a reload,
//! expires after three missed heartbeats, and leaves without failing a
//! request; the refusals answer with the right status and one line.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use support::{backend_status, get, FakeAgent, Host, Lb, Resp, Seq};

const TOKEN: &str = "cmVnaXN0cmF0aW9uLXRlc3RzLW9ubHk";

/// The admin token file ([`support::token_file`]).
fn token_file() -> PathBuf {
    support::token_file(TOKEN)
}

/// `lb.toml` (without `[admin]`): round robin over `listed` (agents
/// nobody answers for), probes every 100 ms, and `extra`.
fn lb_toml(listed: &[&Host], extra: &str) -> String {
    let addrs: Vec<SocketAddr> = listed.iter().map(|h| h.addr).collect();
    format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n{extra}\n\
         [health]\ninterval = \"100ms\"\ntimeout = \"1s\"\n[agent]\ninterval = \"100ms\"\n",
        support::backends_without_agents(&addrs)
    )
}

/// A balancer over `listed`, its admin behind the token, registrations
/// heartbeating every `heartbeat`.
async fn start(listed: &[&Host], heartbeat: &str, extra: &str) -> Lb {
    Lb::start_with_admin(&lb_toml(listed, extra), &admin_toml(heartbeat)).await
}

fn admin_toml(heartbeat: &str) -> String {
    format!(
        "token_file = \"{}\"\nheartbeat = \"{heartbeat}\"\n",
        token_file().display()
    )
}

/// `POST /backends` with the token and `body`.
async fn announce(lb: &Lb, body: &str) -> Resp {
    lb.admin_call(Method::POST, "/backends", Some(TOKEN), body)
        .await
}

/// Registers `host` (its agent `agent`, or one nobody answers for) with
/// `more` JSON fields (`, "weight": 3`); returns the answer.
async fn register(lb: &Lb, host: SocketAddr, agent: Option<SocketAddr>, more: &str) -> Resp {
    let agent = agent.map_or_else(|| "127.0.0.1:1".to_owned(), |a| a.to_string());
    announce(
        lb,
        &format!(r#"{{"addr": "{host}", "agent": "{agent}"{more}}}"#),
    )
    .await
}

/// `DELETE /backends/{addr}` with the token.
async fn withdraw(lb: &Lb, addr: &str) -> Resp {
    lb.admin_call(
        Method::DELETE,
        &format!("/backends/{addr}"),
        Some(TOKEN),
        "",
    )
    .await
}

/// The `/status.json` entry of `addr`, if it is in the table.
async fn entry(lb: &Lb, addr: SocketAddr) -> Option<Value> {
    let s = lb.status().await;
    let addr = addr.to_string();
    s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.as_str())
        .cloned()
}

/// Polls `addr`'s status entry until `done` holds for it, for up to
/// `within`; returns the entry.
async fn wait_for(
    lb: &Lb,
    addr: SocketAddr,
    what: &str,
    within: Duration,
    done: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let e = entry(lb, addr).await;
        if done(e.as_ref()) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} {what}: not within {within:?}; /status.json: {}",
            lb.status().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_healthy(lb: &Lb, addr: SocketAddr) -> Value {
    wait_for(lb, addr, "healthy", Duration::from_secs(10), |e| {
        e.is_some_and(|e| e["healthy"] == true)
    })
    .await
    .unwrap()
}

async fn wait_gone(lb: &Lb, addr: SocketAddr, within: Duration) {
    wait_for(lb, addr, "gone", within, |e| e.is_none()).await;
}

/// The answer has `status` and one line of text.
fn assert_one_line(r: &Resp, status: u16) {
    let text = r.text();
    assert_eq!(r.status, status, "{text:?}");
    assert!(
        text.ends_with('\n') && text.lines().count() == 1 && !text.trim().is_empty(),
        "{text:?}"
    );
}

/// The answer has `status` and one line of JSON, parsed.
fn json(r: &Resp, status: u16) -> Value {
    assert_one_line(r, status);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/json",
        "{r:?}"
    );
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn registering_without_a_configured_token_is_forbidden() {
    let listed = Host::start("listed");
    let lb = Lb::start(&lb_toml(&[&listed], "")).await;
    let new = Host::start("new");
    let body = format!(r#"{{"addr": "{}"}}"#, new.addr);
    for token in [None, Some(TOKEN)] {
        let r = lb.admin_call(Method::POST, "/backends", token, &body).await;
        assert_one_line(&r, 403);
        assert!(r.text().contains("token_file"), "{}", r.text());
        let path = format!("/backends/{}", listed.addr);
        let r = lb.admin_call(Method::DELETE, &path, token, "").await;
        assert_one_line(&r, 403);
    }
    assert!(entry(&lb, new.addr).await.is_none());
    assert_eq!(lb.status().await["backends"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn registering_with_a_missing_or_wrong_token_is_unauthorized() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "2s", "").await;
    let new = Host::start("new");
    let body = format!(r#"{{"addr": "{}"}}"#, new.addr);
    for token in [None, Some("not-the-token"), Some(&TOKEN[1..])] {
        let r = lb.admin_call(Method::POST, "/backends", token, &body).await;
        assert_one_line(&r, 401);
        assert!(r.headers.get("www-authenticate").is_some(), "{r:?}");
    }
    assert!(entry(&lb, new.addr).await.is_none());
    // Registered with the token, it cannot be withdrawn without it.
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    let path = format!("/backends/{}", new.addr);
    let r = lb
        .admin_call(Method::DELETE, &path, Some("wrong"), "")
        .await;
    assert_one_line(&r, 401);
    let e = entry(&lb, new.addr).await.expect("still registered");
    assert_eq!(e["admin_state"], "enabled", "{e}");
}

#[tokio::test]
async fn a_registered_backend_appears_as_registered_is_probed_and_takes_traffic() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "1500ms", "").await;
    let new = Host::start("registered-host");

    let first = json(&register(&lb, new.addr, None, "").await, 201);
    assert_eq!(first["addr"], new.addr.to_string());
    assert_eq!(first["pool"], "default");
    assert_eq!(first["heartbeat_ms"], 1500, "[admin] heartbeat");
    let again = json(&register(&lb, new.addr, None, "").await, 200);
    assert_eq!(again, first, "a heartbeat answers the same, with 200");

    let e = wait_healthy(&lb, new.addr).await;
    assert_eq!(e["origin"], "registered", "{e}");
    assert_eq!(e["pool"], "default", "{e}");
    assert_eq!(e["weight"], 1, "{e}");
    let listed_entry = backend_status(&lb.status().await, listed.addr);
    assert_eq!(listed_entry["origin"], "config", "{listed_entry}");
    let pools = &lb.status().await["pools"];
    assert_eq!(pools[0]["name"], "default", "{pools}");
    assert_eq!(pools[0]["backends"], 2, "{pools}");

    // Round robin over the two: the registered one answers its share.
    let shares = Seq::new().tally(&lb.url("/"), 20).await;
    assert!(shares.count("registered-host") >= 5, "{shares}");
    assert!(shares.count("listed") >= 5, "{shares}");
    // Probes run: it is counted as probed (its health state is live), and
    // a killed registered backend turns down.
    drop(new);
    let addr = first["addr"].as_str().unwrap().parse().unwrap();
    wait_for(
        &lb,
        addr,
        "down after its kill",
        Duration::from_secs(10),
        |e| e.is_some_and(|e| e["healthy"] == false),
    )
    .await;
}

#[tokio::test]
async fn a_registered_backends_agent_is_polled() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "2s", "").await;
    let new = Host::start("new");
    let agent = FakeAgent::start(0.37).await;
    assert_eq!(
        register(&lb, new.addr, Some(agent.addr), "").await.status,
        201
    );
    let e = wait_for(
        &lb,
        new.addr,
        "a load report",
        Duration::from_secs(10),
        |e| e.is_some_and(|e| e["cpu"].as_f64() == Some(0.37)),
    )
    .await
    .unwrap();
    assert_eq!(e["agent"], agent.addr.to_string(), "{e}");
    // Polls go on: a changed report shows.
    agent.set_cpu(0.81);
    wait_for(
        &lb,
        new.addr,
        "the new report",
        Duration::from_secs(10),
        |e| e.is_some_and(|e| e["cpu"].as_f64() == Some(0.81)),
    )
    .await;
}

#[tokio::test]
async fn bad_announcements_get_400_with_one_line() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "2s", "").await;
    let big = format!(
        r#"{{"addr": "127.0.0.1:9", "pool": "{}"}}"#,
        "p".repeat(5000)
    );
    let bad = [
        "",
        "not json",
        "{}",
        "[]",
        r#"{"addr": 80}"#,
        r#"{"addr": "backend.local:80"}"#,
        r#"{"addr": "127.0.0.1"}"#,
        r#"{"addr": "127.0.0.1:99999"}"#,
        r#"{"addr": "127.0.0.1:9", "agent": "nowhere"}"#,
        r#"{"addr": "127.0.0.1:9", "weight": 0}"#,
        r#"{"addr": "127.0.0.1:9", "weight": 1001}"#,
        r#"{"addr": "127.0.0.1:9", "weight": -1}"#,
        r#"{"addr": "127.0.0.1:9", "weight": "2"}"#,
        r#"{"addr": "127.0.0.1:9", "color": "red"}"#,
        r#"{"addr": "127.0.0.1:9", "agent": "0.0.0.0:9100"}"#,
        r#"{"addr": "127.0.0.1:0"}"#,
        "{\"addr\": \"127.0.0.1:9\"\n\n}x",
        &big,
    ];
    for body in bad {
        let r = announce(&lb, body).await;
        assert_one_line(&r, 400);
        assert!(!r.text().contains(&"p".repeat(100)), "echoes the body");
    }
    let backends = lb.status().await["backends"].clone();
    assert_eq!(backends.as_array().unwrap().len(), 1, "{backends}");
    // The wrong method on either path: 405 with Allow.
    let r = lb
        .admin_call(Method::GET, "/backends", Some(TOKEN), "")
        .await;
    assert_one_line(&r, 405);
    assert_eq!(r.headers.get("allow").unwrap(), "POST");
    let r = lb
        .admin_call(Method::PUT, "/backends/127.0.0.1:9", Some(TOKEN), "")
        .await;
    assert_one_line(&r, 405);
    assert_eq!(r.headers.get("allow").unwrap(), "DELETE");
}

#[tokio::test]
async fn registering_the_unspecified_address_is_refused_with_400() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "2s", "").await;
    for addr in ["0.0.0.0:80", "[::]:80"] {
        let r = announce(&lb, &format!(r#"{{"addr": "{addr}"}}"#)).await;
        assert_one_line(&r, 400);
        assert!(r.text().contains(addr), "{}", r.text());
    }
    assert_eq!(lb.status().await["backends"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn registering_into_an_unknown_pool_is_404() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "2s", "").await;
    let new = Host::start("new");
    let r = register(&lb, new.addr, None, r#", "pool": "nowhere""#).await;
    assert_one_line(&r, 404);
    assert!(r.text().contains("nowhere"), "{}", r.text());
    assert!(entry(&lb, new.addr).await.is_none());
    // The default pool by name is the same as none.
    let r = register(&lb, new.addr, None, r#", "pool": "default""#).await;
    assert_eq!(json(&r, 201)["pool"], "default");
}

#[tokio::test]
async fn registering_an_address_listed_in_lb_toml_is_409() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "2s", "").await;
    let r = register(&lb, listed.addr, None, r#", "weight": 7"#).await;
    assert_one_line(&r, 409);
    assert!(r.text().contains("lb.toml"), "{}", r.text());
    let e = backend_status(&lb.status().await, listed.addr);
    assert_eq!(
        (&e["origin"], &e["weight"]),
        (&"config".into(), &1.into()),
        "{e}"
    );
}

#[tokio::test]
async fn a_registration_that_stops_heartbeating_is_dropped_after_three_missed() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "200ms", "").await;
    let new = Host::start("new");
    let sent = Instant::now();
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    assert!(entry(&lb, new.addr).await.is_some(), "registered at once");
    wait_gone(&lb, new.addr, Duration::from_secs(10)).await;
    // Three heartbeats of 200 ms: never before 600 ms of silence.
    let silent = sent.elapsed();
    assert!(
        silent >= Duration::from_millis(600),
        "dropped after {silent:?}"
    );
    // A fresh announcement is a new registration again.
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
}

#[tokio::test]
async fn heartbeats_keep_a_registration() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "200ms", "").await;
    let new = Host::start("new");
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    // Ten heartbeat periods, announcing every 100 ms: present throughout.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(register(&lb, new.addr, None, "").await.status, 200);
        let e = entry(&lb, new.addr).await;
        assert!(e.is_some(), "dropped while heartbeating");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_gone(&lb, new.addr, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_registered_backend_survives_a_reload_with_a_changed_lb_toml() {
    let (a, b) = (Host::start("listed-a"), Host::start("listed-b"));
    let lb = start(&[&a], "1h", "").await;
    let new = Host::start("registered");
    assert_eq!(
        register(&lb, new.addr, None, r#", "weight": 3"#)
            .await
            .status,
        201
    );
    wait_healthy(&lb, new.addr).await;
    let requests_before = entry(&lb, new.addr).await.unwrap()["requests"].clone();

    // Another listed backend, another strategy: the SIGHUP path.
    let mut changed = lb_toml(&[&a, &b], "");
    changed = changed.replace("round-robin", "least-connections");
    lb.reload(&changed);
    let s = lb.status().await;
    assert_eq!(s["strategy"], "least-connections", "{s}");
    assert_eq!(s["backends"].as_array().unwrap().len(), 3, "{s}");
    let e = backend_status(&s, new.addr);
    assert_eq!(e["origin"], "registered", "{e}");
    assert_eq!(e["weight"], 3, "{e}");
    assert_eq!(e["healthy"], true, "its state carried over: {e}");
    assert_eq!(e["requests"], requests_before, "{e}");
    // Still a known registration (a heartbeat, not a new one), and in use.
    assert_eq!(
        register(&lb, new.addr, None, r#", "weight": 3"#)
            .await
            .status,
        200
    );
    let shares = Seq::new().tally(&lb.url("/"), 30).await;
    assert!(shares.count("registered") > 0, "{shares}");
    // Reloading again with the registered address now listed: lb.toml wins.
    lb.reload(&lb_toml(&[&a, &b, &new], ""));
    let e = backend_status(&lb.status().await, new.addr);
    assert_eq!(e["origin"], "config", "{e}");
}

/// Starts `GET /delay?ms={ms}` through `lb` and sees it in flight at
/// `target`: the listed backend `other` is drained through the admin API
/// for that moment, so the request can go nowhere else. Resolves to the
/// answer and when it came.
async fn slow_request(
    lb: &Lb,
    other: SocketAddr,
    target: SocketAddr,
    ms: u64,
) -> tokio::task::JoinHandle<(Resp, Instant)> {
    let path = format!("/backends/{other}/drain");
    let r = lb.admin_call(Method::POST, &path, Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = lb.url(&format!("/delay?ms={ms}"));
    let slow = tokio::spawn(async move {
        let r = get(&url).await;
        (r, Instant::now())
    });
    wait_for(
        lb,
        target,
        "the slow request in flight",
        Duration::from_secs(10),
        |e| e.is_some_and(|e| e["in_flight"] == 1),
    )
    .await;
    let path = format!("/backends/{other}/enable");
    let r = lb.admin_call(Method::POST, &path, Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_drains_the_request_in_flight_before_removing_the_backend() {
    let listed = Host::start("listed");
    let lb = Arc::new(start(&[&listed], "1h", "").await);
    let new = Host::start("leaving");
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    wait_healthy(&lb, new.addr).await;

    let slow = slow_request(&lb, listed.addr, new.addr, 800).await;

    let requests_before = entry(&lb, new.addr).await.unwrap()["requests"].clone();
    let leaving = new.addr.to_string();
    let lb2 = Arc::clone(&lb);
    let delete = tokio::spawn(async move {
        let r = withdraw(&lb2, &leaving).await;
        (r, Instant::now())
    });
    // Out of rotation at once (no request of this test in between).
    let e = wait_for(
        &lb,
        new.addr,
        "draining",
        Duration::from_secs(5),
        |e| !matches!(e, Some(e) if e["admin_state"] == "enabled"),
    )
    .await;
    if let Some(e) = e {
        assert_eq!(e["requests"], requests_before, "{e}");
    }
    // Traffic while it drains goes to the listed backend only.
    let seq = Seq::new();
    let mut during = 0;
    while !delete.is_finished() {
        assert_eq!(seq.get(&lb.url("/")).await, "listed");
        during += 1;
    }
    let (answer, deleted_at) = delete.await.unwrap();
    let (slow, slow_done) = slow.await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert_eq!(slow.text(), "delayed 800 ms\n");
    assert_eq!(slow.backend(), "leaving");
    // The two answers reach two client tasks: allow them a moment's
    // jitter (a DELETE that did not wait would come ~800 ms early).
    assert!(
        slow_done <= deleted_at + Duration::from_millis(50),
        "DELETE answered {:?} before the request it drains",
        slow_done - deleted_at
    );
    let w = json(&answer, 200);
    assert_eq!(w["addr"], new.addr.to_string(), "{w}");
    assert_eq!(w["drained"], true, "{w}");
    assert!(w["waited_ms"].as_u64().unwrap() > 0, "{w}");
    assert!(during > 0, "no traffic during the drain");

    assert!(entry(&lb, new.addr).await.is_none(), "still in the table");
    let shares = seq.tally(&lb.url("/"), 10).await;
    assert_eq!(shares.count("listed"), 10, "{shares}");
    // Gone for good: withdrawing again finds nothing.
    assert_one_line(&withdraw(&lb, &new.addr.to_string()).await, 404);
}

#[tokio::test]
async fn a_withdrawal_whose_drain_runs_out_answers_drained_false() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "1h", "[timeouts]\ndrain = \"300ms\"").await;
    let new = Host::start("leaving");
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    wait_healthy(&lb, new.addr).await;
    let slow = slow_request(&lb, listed.addr, new.addr, 3000).await;
    let w = json(&withdraw(&lb, &new.addr.to_string()).await, 200);
    assert_eq!(w["drained"], false, "{w}");
    assert!(w["waited_ms"].as_u64().unwrap() >= 300, "{w}");
    assert!(!slow.is_finished(), "the slow request ended before: {w}");
    assert!(entry(&lb, new.addr).await.is_none(), "left the table");
    // The request it held still completes: leaving the table drops no
    // connection.
    let (r, _) = slow.await.unwrap();
    assert_eq!((r.status.as_u16(), r.backend()), (200, "leaving".into()));
}

#[tokio::test]
async fn withdrawing_a_listed_backend_is_409_and_an_unknown_one_404() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "2s", "").await;
    let r = withdraw(&lb, &listed.addr.to_string()).await;
    assert_one_line(&r, 409);
    assert!(r.text().contains("drain"), "{}", r.text());
    let e = backend_status(&lb.status().await, listed.addr);
    assert_eq!(e["admin_state"], "enabled", "untouched: {e}");
    for unknown in ["127.0.0.1:9", "not-an-address", "%5B::1%5D:9"] {
        assert_one_line(&withdraw(&lb, unknown).await, 404);
    }
}

#[tokio::test]
async fn the_announced_weight_is_the_backends_weight_and_a_new_one_replaces_it() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "1h", "").await;
    let new = Host::start("new");
    let r = register(&lb, new.addr, None, r#", "weight": 5"#).await;
    assert_eq!(r.status, 201);
    let e = wait_healthy(&lb, new.addr).await;
    assert_eq!(e["weight"], 5, "{e}");
    let r = register(&lb, new.addr, None, r#", "weight": 2"#).await;
    assert_eq!(r.status, 200);
    let e = entry(&lb, new.addr).await.unwrap();
    assert_eq!(e["weight"], 2, "{e}");
    assert_eq!(e["healthy"], true, "the successor inherits its health: {e}");
    // And round robin follows it: 2 of every 3 requests.
    let shares = Seq::new().tally(&lb.url("/"), 30).await;
    assert_eq!(shares.count("new"), 20, "{shares}");
    // Without a weight: back to 1.
    assert_eq!(register(&lb, new.addr, None, "").await.status, 200);
    assert_eq!(entry(&lb, new.addr).await.unwrap()["weight"], 1);
}

#[tokio::test]
async fn slow_start_applies_to_a_registered_backend() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "1h", "slow_start = \"60s\"").await;
    let new = Host::start("new");
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    let e = wait_healthy(&lb, new.addr).await;
    let ramp = e["slow_start"].as_f64().expect("ramping");
    assert!((0.0..1.0).contains(&ramp), "{e}");
    let l = backend_status(&lb.status().await, listed.addr);
    assert!(l["slow_start"].is_null(), "present at start: {l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_joining_and_leaving_under_steady_traffic_fails_no_request() {
    let listed = Host::start("listed");
    let lb = Arc::new(start(&[&listed], "300ms", "").await);
    let new = Host::start("joining");

    // A client sending one request after another the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (url, halt) = (lb.url("/"), Arc::clone(&stop));
    let traffic = tokio::spawn(async move {
        let mut seen: Vec<(u16, String)> = Vec::new();
        while !halt.load(Ordering::Relaxed) {
            let r = get(&url).await;
            seen.push((r.status.as_u16(), r.backend()));
        }
        seen
    });
    // It joins, heartbeating, and takes traffic.
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(register(&lb, new.addr, None, "").await.status, 200);
        let e = entry(&lb, new.addr).await.unwrap();
        if e["requests"].as_u64() >= Some(20) {
            break;
        }
        assert!(Instant::now() < deadline, "no traffic to it: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It leaves as its agent does on SIGTERM.
    let w = json(&withdraw(&lb, &new.addr.to_string()).await, 200);
    assert_eq!(w["drained"], true, "{w}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // And a second time, by missing its heartbeats.
    assert_eq!(register(&lb, new.addr, None, "").await.status, 201);
    wait_for(
        &lb,
        new.addr,
        "traffic again",
        Duration::from_secs(10),
        |e| e.is_some_and(|e| e["requests"].as_u64() > Some(0)),
    )
    .await;
    wait_gone(&lb, new.addr, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let seen = traffic.await.unwrap();
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    let joined = seen.iter().filter(|(_, b)| b == "joining").count();
    assert!(
        joined >= 20,
        "{joined} of {} to the registered backend",
        seen.len()
    );
    assert!(seen.len() > joined + 20, "{} requests", seen.len());
}

#[tokio::test]
async fn a_heartbeat_shortened_by_a_reload_applies_to_the_registrations_held() {
    let listed = Host::start("listed");
    let lb = start(&[&listed], "1h", "").await;
    let new = Host::start("new");
    let r = json(&register(&lb, new.addr, None, "").await, 201);
    assert_eq!(r["heartbeat_ms"], 3_600_000, "{r}");
    // Reloaded with a heartbeat of 200 ms: the silent registration goes
    // after about 600 ms, not an hour.
    lb.reload_with_admin(&lb_toml(&[&listed], ""), &admin_toml("200ms"));
    let r = json(&register(&lb, new.addr, None, "").await, 200);
    assert_eq!(r["heartbeat_ms"], 200, "{r}");
    wait_gone(&lb, new.addr, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_backend_registers_into_a_named_pool_and_takes_only_that_pools_traffic() {
    let (d, a) = (Host::start("default-host"), Host::start("api-host"));
    let api_pool = format!(
        "[[pool]]\nname = \"api\"\nbackends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
         [[route]]\npath_prefix = \"/api/\"\npool = \"api\"\n",
        a.addr
    );
    let lb = start(&[&d], "1h", &api_pool).await;
    let new = Host::start("registered");
    let r = json(
        &register(&lb, new.addr, None, r#", "pool": "api""#).await,
        201,
    );
    assert_eq!(r["pool"], "api", "{r}");
    let e = wait_healthy(&lb, new.addr).await;
    assert_eq!(
        (&e["pool"], &e["origin"]),
        (&"api".into(), &"registered".into()),
        "{e}"
    );
    let pools = lb.status().await["pools"].clone();
    assert_eq!(pools[1]["name"], "api", "{pools}");
    assert_eq!(pools[1]["backends"], 2, "{pools}");

    // The api pool's requests are shared with it; the default pool's not.
    let seq = Seq::new();
    let mut api = support::Shares::default();
    for _ in 0..20 {
        let r = get(&lb.url("/api/x")).await;
        api.add(r.backend());
    }
    assert_eq!(api.count("registered"), 10, "{api}");
    assert_eq!(api.count("api-host"), 10, "{api}");
    let default = seq.tally(&lb.url("/"), 10).await;
    assert_eq!(default.count("default-host"), 10, "{default}");

    // A heartbeat naming another pool moves it there.
    let r = json(&register(&lb, new.addr, None, "").await, 200);
    assert_eq!(r["pool"], "default", "{r}");
    assert_eq!(entry(&lb, new.addr).await.unwrap()["pool"], "default");
    let default = seq.tally(&lb.url("/"), 10).await;
    assert_eq!(default.count("registered"), 5, "{default}");

    // Back in "api", then the pool leaves lb.toml on reload: so does it.
    assert_eq!(
        register(&lb, new.addr, None, r#", "pool": "api""#)
            .await
            .status,
        200
    );
    lb.reload(&lb_toml(&[&d], ""));
    assert!(
        entry(&lb, new.addr).await.is_none(),
        "{}",
        lb.status().await
    );
    let r = register(&lb, new.addr, None, r#", "pool": "api""#).await;
    assert_one_line(&r, 404);
}
