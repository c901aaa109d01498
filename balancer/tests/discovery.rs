//! DNS discovery end to end: a pool whose `discover` name a local fake DNS
//! server answers, real backends behind it, and the balancer following the
//! answers (added and removed addresses, failures riding on the last good
//! set) through the same reconciliation as SIGHUP.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use support::dns::FakeDns;
use support::{backend_status, request, Host, Lb};

const FAST: &str = "[health]\ninterval = \"100ms\"\n[agent]\ninterval = \"1h\"\n";

/// The `/status.json` entries of pool `pool`: (addr, origin).
async fn members(lb: &Lb, pool: &str) -> Vec<(SocketAddr, String)> {
    let s = lb.status().await;
    let mut out: Vec<(SocketAddr, String)> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["pool"] == pool)
        .map(|b| {
            let addr = b["addr"].as_str().unwrap().parse().unwrap();
            (addr, b["origin"].as_str().unwrap().to_owned())
        })
        .collect();
    out.sort();
    out
}

/// Waits until pool `pool` has exactly `want` (all discovered).
async fn until_members(lb: &Lb, pool: &str, want: &[SocketAddr]) {
    let mut want: Vec<(SocketAddr, String)> = want.iter().map(|a| (*a, "dns".into())).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = members(lb, pool).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool {pool}: wanted {want:?}, has {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Who answered each of `n` requests to `path` (every one must succeed).
async fn spread(lb: &Lb, path: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = request(Method::GET, &lb.url(path), &[], Bytes::new()).await;
        assert!(
            r.headers.contains_key("x-backend"),
            "{path}: {} {}",
            r.status,
            r.text()
        );
        *seen.entry(r.backend()).or_insert(0) += 1;
    }
    seen
}

fn config(default: &Host, dns: &FakeDns, discover: &str) -> String {
    format!(
        "backends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n{FAST}\
         [dns]\nnameservers = [\"{}\"]\n\
         [[pool]]\nname = \"api\"\ndiscover = \"{discover}\"\nresolve_every = \"100ms\"\n\
         strategy = \"round-robin\"\n\
         [[route]]\npath_prefix = \"/api/\"\npool = \"api\"\n",
        default.addr, dns.addr
    )
}

#[tokio::test]
async fn a_pool_discovered_by_srv_follows_added_and_removed_targets_and_rides_out_servfail() {
    let default = Host::start("default");
    let hosts = ["a", "b", "c"].map(Host::start);
    let [a, b, c] = &hosts;
    let dns = FakeDns::start();
    for h in &hosts {
        dns.set_host(&format!("{}.test", h.id), &["127.0.0.1"]);
    }
    let srv = "_http._tcp.api.test";
    dns.set_srv(
        srv,
        &[("a.test", a.addr.port()), ("b.test", b.addr.port())],
        true,
    );
    let lb = Lb::start(&config(&default, &dns, &format!("srv:{srv}"))).await;

    until_members(&lb, "api", &[a.addr, b.addr]).await;
    let seen = spread(&lb, "/api/x", 10).await;
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&5), Some(&5)),
        "{seen:?}"
    );
    // The default pool keeps its own backend.
    assert_eq!(spread(&lb, "/", 3).await.get("default"), Some(&3));

    // A target added: it joins, through slow start and probes.
    dns.set_srv(
        srv,
        &[
            ("a.test", a.addr.port()),
            ("b.test", b.addr.port()),
            ("c.test", c.addr.port()),
        ],
        true,
    );
    until_members(&lb, "api", &[a.addr, b.addr, c.addr]).await;
    assert_eq!(spread(&lb, "/api/x", 9).await.get("c"), Some(&3));
    let before = backend_status(&lb.status().await, b.addr)["requests"]
        .as_u64()
        .unwrap();

    // The name server fails: the last good set stays, however long.
    dns.set_servfail(true);
    let asked = dns.queries();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.queries() < asked + 5 {
        assert!(Instant::now() < deadline, "no lookups while failing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = members(&lb, "api").await;
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(spread(&lb, "/api/x", 9).await.len(), 3);
    dns.set_servfail(false);

    // A target removed: it leaves, and requests keep succeeding meanwhile.
    dns.set_srv(
        srv,
        &[("b.test", b.addr.port()), ("c.test", c.addr.port())],
        true,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while members(&lb, "api").await.len() != 2 {
        spread(&lb, "/api/x", 3).await;
        assert!(Instant::now() < deadline, "a never left");
    }
    until_members(&lb, "api", &[b.addr, c.addr]).await;
    let seen = spread(&lb, "/api/x", 10).await;
    assert_eq!(seen.get("a"), None, "{seen:?}");

    // A backend present all along kept its state (counters), and a
    // reload that keeps the pool keeps its discovered members.
    let after = backend_status(&lb.status().await, b.addr)["requests"]
        .as_u64()
        .unwrap();
    assert!(after > before, "{before} -> {after}");
    lb.reload(&config(&default, &dns, &format!("srv:{srv}")));
    until_members(&lb, "api", &[b.addr, c.addr]).await;
    let kept = backend_status(&lb.status().await, b.addr)["requests"]
        .as_u64()
        .unwrap();
    assert!(kept >= after, "{after} -> {kept}");
    lb.stop().await;
}

#[tokio::test]
async fn a_name_and_port_gives_every_address_and_empties_only_after_three_not_found() {
    let default = Host::start("default");
    // Two simulated hosts on 127.0.0.2 and 127.0.0.3, on the same port.
    let first = Host::start_at("two", "127.0.0.2:0".parse().unwrap());
    let port = first.addr.port();
    let second = Host::start_at("three", SocketAddr::from(([127, 0, 0, 3], port)));
    let dns = FakeDns::start();
    dns.set_host("web.test", &["127.0.0.3", "127.0.0.2"]);
    let lb = Lb::start(&config(&default, &dns, &format!("web.test:{port}"))).await;
    until_members(&lb, "api", &[first.addr, second.addr]).await;
    let seen = spread(&lb, "/api/", 10).await;
    assert_eq!(
        (seen.get("two"), seen.get("three")),
        (Some(&5), Some(&5)),
        "{seen:?}"
    );

    // NXDOMAIN: held for two lookups, applied at the third.
    let asked = dns.queries();
    dns.remove("web.test");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !members(&lb, "api").await.is_empty() {
        assert!(Instant::now() < deadline, "never emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each lookup asks for A and AAAA: three lookups, at least 6 queries.
    assert!(
        dns.queries() >= asked + 6,
        "emptied after {} queries",
        dns.queries() - asked
    );
    let r = request(Method::GET, &lb.url("/api/"), &[], Bytes::new()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(!r.text().contains("127.0.0."), "{}", r.text());

    // Back in DNS, back in the table.
    dns.set_host("web.test", &["127.0.0.2"]);
    until_members(&lb, "api", &[first.addr]).await;
    assert_eq!(spread(&lb, "/api/", 3).await.get("two"), Some(&3));
    lb.stop().await;
}
