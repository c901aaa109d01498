//! Pools and routes through the real balancer and real backends: each
//! request goes to the pool its host and path name, most specific route
//! first; each pool chooses with its own strategy and probes with its own
//! health path; reloads add pools and routes and keep backends' state.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use support::{request, Host, Lb};

const FAST: &str = "[health]\ninterval = \"100ms\"\n[agent]\ninterval = \"1h\"\n";

/// A backend entry without an agent.
fn entry(h: &Host) -> String {
    format!("{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}", h.addr)
}

/// Which backend answers `GET path` sent with `Host: host` (the demo
/// backend answers most of these paths 404, with its `X-Backend` all the
/// same).
async fn who(lb: &Lb, host: &str, path: &str) -> String {
    let r = request(Method::GET, &lb.url(path), &[("host", host)], Bytes::new()).await;
    assert!(
        r.headers.contains_key("x-backend"),
        "{host}{path}: {} {}",
        r.status,
        r.text()
    );
    r.backend()
}

/// Waits until every backend in `/status.json` is healthy.
async fn all_healthy(lb: &Lb) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = lb.status().await;
        let backends = s["backends"].as_array().unwrap();
        if backends.iter().all(|b| b["healthy"] == true) {
            return;
        }
        assert!(Instant::now() < deadline, "never all healthy: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_go_to_the_pool_of_the_most_specific_route() {
    let hosts = ["default", "api", "api-static", "wild", "v1"].map(Host::start);
    let [d, api, stat, wild, v1] = &hosts;
    let toml = format!(
        "backends = [{}]\n{FAST}\
         [[pool]]\nname = \"api\"\nbackends = [{}]\n\
         [[pool]]\nname = \"static\"\nbackends = [{}]\n\
         [[pool]]\nname = \"wild\"\nbackends = [{}]\n\
         [[pool]]\nname = \"v1\"\nbackends = [{}]\n\
         [[route]]\nhost = \"*.example.com\"\npool = \"wild\"\n\
         [[route]]\nhost = \"api.example.com\"\npool = \"api\"\n\
         [[route]]\nhost = \"api.example.com\"\npath_prefix = \"/static/\"\npool = \"static\"\n\
         [[route]]\npath_prefix = \"/v1/\"\npool = \"v1\"\n",
        entry(d),
        entry(api),
        entry(stat),
        entry(wild),
        entry(v1),
    );
    let lb = Lb::start(&toml).await;
    all_healthy(&lb).await;
    let table = [
        // Exact host over wildcard, whatever the case and port.
        ("api.example.com", "/", "api"),
        ("API.Example.COM:8080", "/x", "api"),
        // The longer path prefix within the same host.
        ("api.example.com", "/static/app.css", "api-static"),
        ("api.example.com", "/static", "api"),
        // Wildcard: any depth, never the bare domain.
        ("www.example.com", "/", "wild"),
        ("a.b.example.com", "/static/x", "wild"),
        ("example.com", "/", "default"),
        // A host route beats a path-only route.
        ("www.example.com", "/v1/users", "wild"),
        // A path-only route, for any other host.
        ("other.org", "/v1/users?page=2", "v1"),
        ("other.org", "/v2/users", "default"),
        ("127.0.0.1", "/", "default"),
    ];
    for (host, path, want) in table {
        assert_eq!(who(&lb, host, path).await, want, "{host}{path}");
    }
    let s = lb.status().await;
    let pools: Vec<&str> = s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pools, ["default", "api", "static", "wild", "v1"]);
    let b = support::backend_status(&s, api.addr);
    assert_eq!(
        (b["pool"].as_str(), b["origin"].as_str()),
        (Some("api"), Some("config"))
    );
    lb.stop().await;
}

#[tokio::test]
async fn each_pool_chooses_with_its_own_strategy_and_probes_its_own_health_path() {
    let hosts = ["d", "rr1", "rr2", "sick"].map(Host::start);
    let [d, rr1, rr2, sick] = &hosts;
    let toml = format!(
        "backends = [{}]\n[balance]\nstrategy = \"random\"\n{FAST}\
         [[pool]]\nname = \"rr\"\nbackends = [{}, {}]\nstrategy = \"round-robin\"\n\
         [[pool]]\nname = \"sick\"\nbackends = [{}]\nhealth_path = \"/no-such-path\"\n\
         [[route]]\npath_prefix = \"/rr/\"\npool = \"rr\"\n\
         [[route]]\npath_prefix = \"/sick/\"\npool = \"sick\"\n",
        entry(d),
        entry(rr1),
        entry(rr2),
        entry(sick),
    );
    let lb = Lb::start(&toml).await;
    // The sick pool's probe asks for a path its backend answers 404 to.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = lb.status().await;
        let down = support::backend_status(&s, sick.addr)["healthy"] == false;
        let up = [d, rr1, rr2]
            .iter()
            .all(|h| support::backend_status(&s, h.addr)["healthy"] == true);
        if down && up {
            break;
        }
        assert!(Instant::now() < deadline, "health never settled: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Round robin, strictly alternating, in its pool only.
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(who(&lb, "x", "/rr/").await);
    }
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]) && seen.iter().all(|s| s.starts_with("rr")),
        "{seen:?}"
    );
    // Nothing healthy in the sick pool: 503, while the others serve; the
    // default pool never lends it a backend.
    let r = request(Method::GET, &lb.url("/sick/x"), &[], Bytes::new()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(who(&lb, "x", "/").await, "d");
    let s = lb.status().await;
    let strategies: Vec<(&str, &str)> = s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["strategy"].as_str().unwrap()))
        .collect();
    assert_eq!(
        strategies,
        [
            ("default", "random"),
            ("rr", "round-robin"),
            ("sick", "random")
        ]
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_reload_adds_pools_and_routes_and_keeps_the_state_of_backends_in_both() {
    let hosts = ["a", "b"].map(Host::start);
    let [a, b] = &hosts;
    let before = format!("backends = [{}]\n{FAST}", entry(a));
    let lb = Lb::start(&before).await;
    all_healthy(&lb).await;
    for _ in 0..5 {
        assert_eq!(who(&lb, "x", "/").await, "a");
    }
    let after = format!(
        "{before}[[pool]]\nname = \"b\"\nbackends = [{}]\n\
         [[route]]\nhost = \"b.test\"\npool = \"b\"\n",
        entry(b)
    );
    lb.reload(&after);
    all_healthy(&lb).await;
    assert_eq!(who(&lb, "b.test", "/").await, "b");
    assert_eq!(who(&lb, "a.test", "/").await, "a");
    // The backend present before and after kept its counters.
    let s = lb.status().await;
    let requests = support::backend_status(&s, a.addr)["requests"]
        .as_u64()
        .unwrap();
    assert!(requests >= 6, "{s}");
    // And back: the pool and its route go, its backend leaves the table.
    lb.reload(&before);
    assert_eq!(who(&lb, "b.test", "/").await, "a");
    let s = lb.status().await;
    assert_eq!(s["backends"].as_array().unwrap().len(), 1, "{s}");
    lb.stop().await;
}
