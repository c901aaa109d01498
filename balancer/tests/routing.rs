//! Load-aware routing through the real balancer, real backends and agents
//! whose reports the tests set.

mod support;

use std::time::Duration;

use support::{backends_toml, get, tally, FakeAgent, Host, Lb};

const FAST_POLLS: &str =
    "[agent]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n[health]\ninterval = \"100ms\"\n";

/// Three hosts named `names`, each with a fake agent reporting the matching
/// `cpu`, behind a balancer configured with `extra`, once every agent has
/// reported.
async fn cluster(names: [&str; 3], cpu: [f64; 3], extra: &str) -> ([Host; 3], [FakeAgent; 3], Lb) {
    let hosts = names.map(Host::start);
    let agents = [
        FakeAgent::start(cpu[0]).await,
        FakeAgent::start(cpu[1]).await,
        FakeAgent::start(cpu[2]).await,
    ];
    let lb = Lb::start(&format!(
        "{}\n{extra}",
        backends_toml(&[
            (&hosts[0], Some(&agents[0])),
            (&hosts[1], Some(&agents[1])),
            (&hosts[2], Some(&agents[2])),
        ])
    ))
    .await;
    lb.wait_for_reports().await;
    (hosts, agents, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_traffic_goes_to_the_least_loaded_host_and_follows_changes() {
    let (_hosts, agents, lb) = cluster(["busy", "idle", "half"], [0.9, 0.1, 0.5], FAST_POLLS).await;

    // The host reported idle takes the most and the busy one only the
    // probe floor's. (Not all: at this rate what is sent to the idle host
    // between two polls raises its estimate until it ties with "half".)
    let counts = tally(&lb.url("/"), 100).await;
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert!(n("idle") > n("half") && n("busy") <= 5, "{counts:?}");

    // The reports change: "busy" becomes the idle one. Within two poll
    // intervals (200 ms) traffic must follow.
    agents[0].set_cpu(0.05);
    agents[1].set_cpu(0.95);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = tally(&lb.url("/"), 100).await;
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert!(n("busy") > n("half") && n("idle") <= 5, "{counts:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_slow_requests_do_not_herd_onto_the_host_that_looked_idle() {
    // Slow polls: the whole burst happens between two reports.
    let slow_polls = "[agent]\ninterval = \"10s\"\ntimeout = \"500ms\"";
    let (_hosts, _agents, lb) = cluster(["idle", "b", "c"], [0.0, 0.5, 0.5], slow_polls).await;

    let url = lb.url("/delay?ms=500");
    let requests: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.backend() })
        })
        .collect();
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for r in requests {
        *counts.entry(r.await.unwrap()).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n <= 22),
        "more than 70% on one host: {counts:?}"
    );
    assert!(
        counts["idle"] > counts["b"] && counts["idle"] > counts["c"],
        "{counts:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_agent_is_unreachable_stays_in_rotation_at_the_median() {
    let hosts = [Host::start("low"), Host::start("dark"), Host::start("high")];
    let low = FakeAgent::start(0.05).await;
    let high = FakeAgent::start(0.95).await;
    let lb = Lb::start(&format!(
        "{}\n{FAST_POLLS}",
        backends_toml(&[
            (&hosts[0], Some(&low)),
            (&hosts[1], None),
            (&hosts[2], Some(&high))
        ])
    ))
    .await;
    // Wait until the two real agents have reported.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = lb.status().await;
        let b = s["backends"].as_array().unwrap();
        if !b[0]["cpu"].is_null() && !b[2]["cpu"].is_null() {
            assert!(b[1]["cpu"].is_null(), "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The dark host ranks at the median of the known loads (0.5), never as
    // idle: the host reporting 0.05 wins. (Not every request: what is sent
    // to it between two polls raises its estimate, by up to 0.25 at this
    // rate, until it ties with the median and the two take turns. Most
    // so in the first poll interval after a quiet spell, when the last
    // report measured no traffic at all: so traffic runs for a few polls
    // before it is counted, here and after the swap.)
    let settle = || async {
        tally(&lb.url("/"), 60).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    settle().await;
    let counts = tally(&lb.url("/"), 60).await;
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert!(n("low") >= 36 && n("low") > 2 * n("dark"), "{counts:?}");
    // Reports swap: still a known host wins, whichever it is.
    low.set_cpu(0.95);
    high.set_cpu(0.05);
    tokio::time::sleep(Duration::from_millis(250)).await;
    settle().await;
    let counts = tally(&lb.url("/"), 60).await;
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert!(n("high") >= 36 && n("high") > 2 * n("dark"), "{counts:?}");
    // A malformed report makes the load unknown too, without a crash.
    high.set_body("{\"cpu\": 7}");
    low.set_body("not json");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let s = lb.status().await;
    assert!(
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["cpu"].is_null()),
        "{s}"
    );
    let counts = tally(&lb.url("/"), 90).await;
    assert!(
        counts.values().all(|&n| n >= 15),
        "all unknown: shared: {counts:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_spreads_equal_hosts_and_round_robin_honours_weights() {
    let hosts = [Host::start("a"), Host::start("b"), Host::start("c")];
    let list = format!(
        "backends = [{{ addr = \"{}\", weight = 2, agent = \"127.0.0.1:1\" }}, {{ addr = \"{}\", agent = \"127.0.0.1:1\" }}, {{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]",
        hosts[0].addr, hosts[1].addr, hosts[2].addr
    );
    let lb = Lb::start(&format!("{list}\n[balance]\nstrategy = \"round-robin\"")).await;
    let counts = tally(&lb.url("/"), 80).await;
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (40, 20, 20),
        "{counts:?}"
    );
    for strategy in ["random", "least-connections", "least-loaded"] {
        lb.reload(&format!("{list}\n[balance]\nstrategy = \"{strategy}\""));
        let counts = tally(&lb.url("/"), 120).await;
        assert!(
            counts.len() == 3 && counts.values().all(|&n| n >= 10),
            "{strategy}: {counts:?}"
        );
    }
    lb.stop().await;
}
