//! The admin API on real sockets: `POST /backends/{addr}/drain|enable|
//! disable` and `PUT /backends/{addr}/weight` steer live traffic through
//! an in-process balancer in front of real backends; the answers to bad
//! requests; and the state surviving a reload.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use support::{backend_status, get, request, Host, Resp, Seq};
use tokio::net::TcpListener;

const TOKEN: &str = "YWRtaW4tYXBpLXRlc3RzLW9ubHk";

/// The admin token file ([`support::token_file`]).
fn token_file() -> PathBuf {
    support::token_file(TOKEN)
}

/// A balancer in this runtime, round robin over `hosts` (with `weights`),
/// its admin listener behind the token when `token` is set.
struct Cluster {
    lb: SocketAddr,
    admin: SocketAddr,
    balancer: balancer::Balancer,
    token: bool,
}

impl Cluster {
    async fn start(hosts: &[&Host], token: bool) -> Cluster {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (lb, admin) = (
            listener.local_addr().unwrap(),
            admin_listener.local_addr().unwrap(),
        );
        let weights = vec![1; hosts.len()];
        let config = lb_toml(lb, admin, token, hosts, &weights, "127.0.0.1:1");
        let c = Cluster {
            lb,
            admin,
            balancer: balancer::Balancer::start(config),
            token,
        };
        let b = c.balancer.clone();
        tokio::spawn(async move {
            b.serve(listener, admin_listener, std::future::pending())
                .await;
        });
        c
    }

    /// This cluster's configuration with `hosts`, `weights` and `agent`.
    fn config(&self, hosts: &[&Host], weights: &[u32], agent: &str) -> balancer::Config {
        lb_toml(self.lb, self.admin, self.token, hosts, weights, agent)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.lb)
    }

    /// `method /backends/{addr}/{action}` with the right token and `body`.
    async fn act(&self, method: Method, addr: SocketAddr, action: &str, body: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.call(
            method,
            &format!("/backends/{addr}/{action}"),
            Some(&auth),
            body,
        )
        .await
    }

    async fn call(&self, method: Method, path: &str, auth: Option<&str>, body: &str) -> Resp {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let url = format!("http://{}{path}", self.admin);
        request(method, &url, &headers, Bytes::from(body.to_owned())).await
    }

    /// The `/status.json` entry of `addr`.
    async fn status(&self, addr: SocketAddr) -> serde_json::Value {
        let r = get(&format!("http://{}/status.json", self.admin)).await;
        backend_status(&serde_json::from_slice(&r.body).unwrap(), addr)
    }
}

/// The whole `lb.toml`: round robin over `hosts` with `weights`, every
/// agent at `agent` (nobody answers there: the load is unknown, which round
/// robin does not read), the admin listener behind the token if `token`.
fn lb_toml(
    lb: SocketAddr,
    admin: SocketAddr,
    token: bool,
    hosts: &[&Host],
    weights: &[u32],
    agent: &str,
) -> balancer::Config {
    let items: Vec<String> = hosts
        .iter()
        .zip(weights)
        .map(|(h, w)| {
            format!(
                "{{ addr = \"{}\", agent = \"{agent}\", weight = {w} }}",
                h.addr
            )
        })
        .collect();
    let token = if token {
        format!("token_file = \"{}\"\n", token_file().display())
    } else {
        String::new()
    };
    support::config(&format!(
        "listen = \"{lb}\"\nbackends = [{}]\n[balance]\nstrategy = \"round-robin\"\n\
             [health]\ninterval = \"200ms\"\n[admin]\nlisten = \"{admin}\"\n{token}",
        items.join(", "),
    ))
}

/// The answer is `200` with one line of JSON whose `admin_state` is `state`.
fn assert_state(r: &Resp, state: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["admin_state"], state, "{text}");
}

fn assert_one_line(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    let text = r.text();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
}

#[tokio::test]
async fn a_disabled_backend_gets_no_request_and_enabled_it_gets_its_turn_again() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let c = Cluster::start(&[&a, &b], true).await;
    let seq = Seq::new();
    let before = seq.tally(&c.url("/"), 20).await;
    assert_eq!((before.count("a"), before.count("b")), (10, 10), "{before}");

    assert_state(
        &c.act(Method::POST, a.addr, "disable", "").await,
        "disabled",
    );
    let out = seq.tally(&c.url("/"), 30).await;
    assert_eq!(out.count("b"), 30, "{out}");
    // Still probed: its health shows while it is out.
    let s = c.status(a.addr).await;
    assert_eq!(
        (s["admin_state"].as_str(), s["healthy"].as_bool()),
        (Some("disabled"), Some(true)),
        "{s}"
    );

    assert_state(&c.act(Method::POST, a.addr, "enable", "").await, "enabled");
    let back = seq.tally(&c.url("/"), 20).await;
    assert_eq!((back.count("a"), back.count("b")), (10, 10), "{back}");
    assert_eq!(c.status(a.addr).await["admin_state"], "enabled");
}

#[tokio::test]
async fn a_drained_backend_finishes_its_request_and_gets_no_new_one() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let c = Cluster::start(&[&a, &b], true).await;
    let slow_url = c.url("/delay?ms=3000");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    // Which backend holds it: the one with a request in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (busy, other) = loop {
        if c.status(a.addr).await["in_flight"] == 1 {
            break ((a.addr, "a"), "b");
        }
        if c.status(b.addr).await["in_flight"] == 1 {
            break ((b.addr, "b"), "a");
        }
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    assert_state(&c.act(Method::POST, busy.0, "drain", "").await, "draining");
    let during = Seq::new().tally(&c.url("/"), 20).await;
    assert_eq!(during.count(other), 20, "{during}");
    let s = c.status(busy.0).await;
    assert_eq!(
        (s["admin_state"].as_str(), s["in_flight"].as_u64()),
        (Some("draining"), Some(1)),
        "{s}"
    );

    let done = slow.await.unwrap();
    assert_eq!(
        (done.status.as_u16(), done.backend()),
        (200, busy.1.to_owned())
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status(busy.0).await["admin_state"] != "drained" {
        assert!(Instant::now() < deadline, "{}", c.status(busy.0).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = Seq::new().tally(&c.url("/"), 10).await;
    assert_eq!(after.count(other), 10, "{after}");
}

#[tokio::test]
async fn a_weight_change_shifts_the_share_and_shows_the_file_weight_beside_it() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let c = Cluster::start(&[&a, &b], true).await;
    let r = c.act(Method::PUT, a.addr, "weight", "3\n").await;
    assert_state(&r, "enabled");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["weight"].as_u64(), v["config_weight"].as_u64()),
        (Some(3), Some(1)),
        "{v}"
    );
    let s = c.status(a.addr).await;
    assert_eq!(
        (s["weight"].as_u64(), s["config_weight"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );
    // `/metrics` shows the weight in use too.
    let m = get(&format!("http://{}/metrics", c.admin)).await;
    let text = String::from_utf8_lossy(&m.body);
    let want = format!("lb_backend_weight{{backend=\"{}\"}} 3", a.addr);
    assert!(text.contains(&want), "{want} missing:\n{text}");

    let shares = Seq::new().tally(&c.url("/"), 200).await;
    let share = shares.share("a");
    assert!((0.7..=0.8).contains(&share), "{shares}");

    // Back to the file's weight: no override left.
    let r = c
        .act(Method::PUT, a.addr, "weight", r#"{"weight": 1}"#)
        .await;
    assert_state(&r, "enabled");
    let s = c.status(a.addr).await;
    assert_eq!(
        (s["weight"].as_u64(), s["config_weight"].as_u64()),
        (Some(1), None),
        "{s}"
    );
    let even = Seq::new().tally(&c.url("/"), 20).await;
    assert_eq!((even.count("a"), even.count("b")), (10, 10), "{even}");
}

#[tokio::test]
async fn changes_need_the_token_and_are_forbidden_without_one() {
    let a = Host::start("a");
    let open = Cluster::start(&[&a], false).await;
    let r = open.act(Method::POST, a.addr, "drain", "").await;
    assert_one_line(&r, 403);
    assert_eq!(open.status(a.addr).await["admin_state"], "enabled");

    let c = Cluster::start(&[&a], true).await;
    let path = format!("/backends/{}/disable", a.addr);
    for auth in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let r = c.call(Method::POST, &path, auth, "").await;
        assert_one_line(&r, 401);
    }
    assert_eq!(c.status(a.addr).await["admin_state"], "enabled");
    assert_eq!(get(&c.url("/")).await.status, 200);
}

#[tokio::test]
async fn unknown_backends_bad_weights_and_wrong_methods_get_clear_answers() {
    let a = Host::start("a");
    let c = Cluster::start(&[&a], true).await;
    let unknown: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let r = c.act(Method::POST, unknown, "drain", "").await;
    assert_one_line(&r, 404);
    assert!(r.text().contains("127.0.0.1:9"), "{}", r.text());
    let auth = format!("Bearer {TOKEN}");
    let r = c
        .call(Method::POST, "/backends/not-an-addr/drain", Some(&auth), "")
        .await;
    assert_one_line(&r, 404);
    assert_one_line(&c.act(Method::POST, a.addr, "explode", "").await, 404);

    for body in ["0", "1001", "-1", "2.5", "", "three", "{\"w\": 2}"] {
        let r = c.act(Method::PUT, a.addr, "weight", body).await;
        assert_one_line(&r, 400);
        assert!(r.text().contains("1..1000"), "{body:?}: {}", r.text());
    }
    let big = "1".repeat(2000);
    assert_one_line(&c.act(Method::PUT, a.addr, "weight", &big).await, 400);
    assert_eq!(c.status(a.addr).await["weight"], 1);

    for (method, action, allow) in [
        (Method::GET, "drain", "POST"),
        (Method::PUT, "enable", "POST"),
        (Method::POST, "weight", "PUT"),
        (Method::DELETE, "disable", "POST"),
    ] {
        let r = c.act(method.clone(), a.addr, action, "2").await;
        assert_one_line(&r, 405);
        assert_eq!(r.headers["allow"], allow, "{method} {action}");
    }
    assert_eq!(c.status(a.addr).await["admin_state"], "enabled");
    assert_eq!(c.status(a.addr).await["weight"], 1);
}

#[tokio::test]
async fn with_every_backend_out_of_rotation_requests_get_a_503_saying_why() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let c = Cluster::start(&[&a, &b], true).await;
    assert_state(
        &c.act(Method::POST, a.addr, "disable", "").await,
        "disabled",
    );
    assert_state(&c.act(Method::POST, b.addr, "drain", "").await, "drained");
    let r = get(&c.url("/")).await;
    assert_one_line(&r, 503);
    assert!(r.text().contains("out of rotation"), "{}", r.text());
    assert_state(&c.act(Method::POST, b.addr, "enable", "").await, "enabled");
    let r = get(&c.url("/")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "b".to_owned()));
}

#[tokio::test]
async fn the_state_and_the_override_survive_a_reload_unless_the_file_changes_the_weight() {
    let (a, b, d) = (Host::start("a"), Host::start("b"), Host::start("d"));
    let c = Cluster::start(&[&a, &b, &d], true).await;
    assert_state(&c.act(Method::POST, a.addr, "drain", "").await, "drained");
    assert_state(
        &c.act(Method::POST, d.addr, "disable", "").await,
        "disabled",
    );
    assert_state(&c.act(Method::PUT, b.addr, "weight", "5").await, "enabled");

    // The same backends: everything stays.
    c.balancer
        .reload(c.config(&[&a, &b, &d], &[1, 1, 1], "127.0.0.1:1"));
    let (sa, sb, sd) = (
        c.status(a.addr).await,
        c.status(b.addr).await,
        c.status(d.addr).await,
    );
    assert_eq!(sa["admin_state"], "drained", "{sa}");
    assert_eq!(sd["admin_state"], "disabled", "{sd}");
    assert_eq!(
        (sb["weight"].as_u64(), sb["config_weight"].as_u64()),
        (Some(5), Some(1)),
        "{sb}"
    );
    let only_b = Seq::new().tally(&c.url("/"), 10).await;
    assert_eq!(only_b.count("b"), 10, "{only_b}");

    // A new agent address replaces the backend's record: its state
    // carries over all the same. The file changes b's weight: the file wins.
    c.balancer
        .reload(c.config(&[&a, &b, &d], &[1, 2, 1], "127.0.0.1:3"));
    let (sa, sb, sd) = (
        c.status(a.addr).await,
        c.status(b.addr).await,
        c.status(d.addr).await,
    );
    assert_eq!(sa["admin_state"], "drained", "{sa}");
    assert_eq!(sd["admin_state"], "disabled", "{sd}");
    assert_eq!(
        (sb["weight"].as_u64(), sb["config_weight"].as_u64()),
        (Some(2), None),
        "{sb}"
    );
    assert_eq!(Seq::new().tally(&c.url("/"), 10).await.count("b"), 10);

    // Enabled again after the reload, a takes its share.
    assert_state(&c.act(Method::POST, a.addr, "enable", "").await, "enabled");
    // Weights 1, 2 and d's (disabled) turn passing to the next: a takes
    // one request in four.
    let shares = Seq::new().tally(&c.url("/"), 40).await;
    assert_eq!((shares.count("a"), shares.count("b")), (10, 30), "{shares}");
}
