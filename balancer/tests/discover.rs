//! DNS discovery against a real (fake) name server on loopback: what a
//! lookup returns for A/AAAA and SRV names, that nothing is cached between
//! lookups, and what the watch task hands to its pool through changes,
//! failures and removals.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use balancer::config::Discover;
use balancer::discover::{self, DiscoverError, Discovery, Resolver};
use support::dns::FakeDns;
use tokio::sync::mpsc;

/// The watch period of these tests: short, so they run fast; the waits
/// below are many periods long, for a loaded machine.
const EVERY: Duration = Duration::from_millis(100);

/// The longest any test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(20);

fn host(name: &str, port: u16) -> Discover {
    Discover::Host {
        name: name.into(),
        port,
    }
}

fn srv(name: &str) -> Discover {
    Discover::Srv { name: name.into() }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn resolver(dns: &FakeDns) -> Arc<Resolver> {
    Arc::new(Resolver::new(&dns.dns()))
}

#[tokio::test]
async fn a_host_name_yields_every_a_and_aaaa_address_sorted_with_the_port() {
    let dns = FakeDns::start();
    dns.set_host("api.test", &["10.0.0.2", "::1", "10.0.0.1", "fd00::2"]);
    let found = resolver(&dns).lookup(&host("api.test", 8080)).await;
    assert_eq!(
        found.unwrap(),
        addrs(&[
            "10.0.0.1:8080",
            "10.0.0.2:8080",
            "[::1]:8080",
            "[fd00::2]:8080"
        ])
    );
    assert_eq!(dns.queries(), 2, "one A and one AAAA query");

    let literal = resolver(&dns).lookup(&host("10.1.2.3", 80)).await;
    assert_eq!(
        literal.unwrap(),
        addrs(&["10.1.2.3:80"]),
        "an address is itself"
    );
    assert_eq!(dns.queries(), 2, "and needs no query");

    dns.set_host("v6.test", &["fd00::1"]);
    let found = resolver(&dns).lookup(&host("v6.test", 80)).await;
    assert_eq!(
        found.unwrap(),
        addrs(&["[fd00::1]:80"]),
        "AAAA alone is enough"
    );
}

#[tokio::test]
async fn srv_names_yield_each_target_with_its_own_port() {
    let dns = FakeDns::start();
    dns.set_host("a.test", &["10.0.1.1"]);
    dns.set_host("b.test", &["10.0.1.2", "fd00::12"]);
    let targets = [("b.test", 9002), ("a.test", 9001), ("gone.test", 9003)];
    // The addresses in the additional section, and not.
    dns.set_srv("_http._tcp.glued.test", &targets, true);
    dns.set_srv("_http._tcp.bare.test", &targets, false);
    let expected = addrs(&["10.0.1.1:9001", "10.0.1.2:9002", "[fd00::12]:9002"]);

    let resolver = resolver(&dns);
    for name in ["_http._tcp.glued.test", "_http._tcp.bare.test"] {
        let found = resolver.lookup(&srv(name)).await;
        assert_eq!(
            found.unwrap(),
            expected,
            "{name}: a target without addresses is skipped"
        );
    }
}

#[tokio::test]
async fn an_answer_too_large_for_udp_is_asked_again_over_tcp() {
    // Forty SRV records with glue: far past 512 bytes, as a headless
    // Service with many pods answers.
    let dns = FakeDns::start();
    let names: Vec<String> = (0..40).map(|i| format!("t{i}.test")).collect();
    let mut targets = Vec::new();
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        dns.set_host(name, &[&format!("10.0.2.{i}")]);
        targets.push((name.as_str(), 9000 + i as u16));
        expected.push(SocketAddr::from(([10, 0, 2, i as u8], 9000 + i as u16)));
    }
    dns.set_srv("_http._tcp.big.test", &targets, true);
    let found = resolver(&dns).lookup(&srv("_http._tcp.big.test")).await;
    expected.sort();
    assert_eq!(found.unwrap(), expected);
    assert!(dns.tcp_queries() >= 1, "the answer came over TCP");
}

#[tokio::test]
async fn not_found_and_failed_are_told_apart() {
    let dns = FakeDns::start();
    let resolver = resolver(&dns);
    let nx = resolver.lookup(&host("nowhere.test", 80)).await;
    assert!(
        matches!(nx, Err(DiscoverError::NotFound { .. })),
        "NXDOMAIN: {nx:?}"
    );

    dns.set_host("empty.test", &[]);
    let empty = resolver.lookup(&host("empty.test", 80)).await;
    assert!(
        matches!(empty, Err(DiscoverError::NotFound { .. })),
        "no records: {empty:?}"
    );
    dns.set_srv("_http._tcp.none.test", &[("nowhere.test", 80)], false);
    let no_targets = resolver.lookup(&srv("_http._tcp.none.test")).await;
    assert!(
        matches!(no_targets, Err(DiscoverError::NotFound { .. })),
        "SRV targets without addresses: {no_targets:?}"
    );

    dns.set_host("api.test", &["10.0.0.1"]);
    dns.set_servfail(true);
    let failed = resolver.lookup(&host("api.test", 80)).await;
    match failed {
        Err(DiscoverError::Failed { target, reason }) => {
            assert_eq!(target, "api.test:80");
            assert_eq!(reason, "the name server answered SERVFAIL");
        }
        other => panic!("SERVFAIL is a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_nameserver_that_does_not_answer_fails_within_the_lookup_timeout() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = Resolver::new(&balancer::config::Dns {
        nameservers: vec![silent.local_addr().unwrap()],
    });
    let started = tokio::time::Instant::now();
    let found = resolver.lookup(&host("api.test", 80)).await;
    assert!(
        matches!(found, Err(DiscoverError::Failed { .. })),
        "{found:?}"
    );
    assert!(
        started.elapsed() < discover::LOOKUP_TIMEOUT + Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_changed_table_is_seen_by_the_next_lookup() {
    // Every record of the fake has a TTL of an hour: a cache would show.
    let dns = FakeDns::start();
    let resolver = resolver(&dns);
    let api = host("api.test", 80);
    dns.set_host("api.test", &["10.0.0.1"]);
    assert_eq!(
        resolver.lookup(&api).await.unwrap(),
        addrs(&["10.0.0.1:80"])
    );

    dns.set_host("api.test", &["10.0.0.1", "10.0.0.2"]);
    let found = resolver.lookup(&api).await.unwrap();
    assert_eq!(found, addrs(&["10.0.0.1:80", "10.0.0.2:80"]));

    dns.remove("api.test");
    let gone = resolver.lookup(&api).await;
    assert!(
        gone.as_ref().is_err_and(DiscoverError::is_not_found),
        "{gone:?}"
    );

    dns.set_host("api.test", &["10.0.0.3"]);
    let back = resolver.lookup(&api).await;
    assert_eq!(
        back.unwrap(),
        addrs(&["10.0.0.3:80"]),
        "NXDOMAIN not cached"
    );

    dns.set_host("a.test", &["10.0.1.1"]);
    dns.set_srv("_http._tcp.api.test", &[("a.test", 9001)], true);
    let srv_api = srv("_http._tcp.api.test");
    assert_eq!(
        resolver.lookup(&srv_api).await.unwrap(),
        addrs(&["10.0.1.1:9001"])
    );
    dns.set_host("a.test", &["10.0.1.9"]);
    dns.set_srv("_http._tcp.api.test", &[("a.test", 9009)], false);
    let moved = resolver.lookup(&srv_api).await;
    assert_eq!(
        moved.unwrap(),
        addrs(&["10.0.1.9:9009"]),
        "SRV and target not cached"
    );
}

/// A watch task whose applied sets arrive on a channel; `apply` returns
/// what `keep` says for the n-th set (1-based).
fn watch(
    dns: &FakeDns,
    target: Discover,
    keep: impl Fn(usize) -> bool + Send + 'static,
) -> (Discovery, mpsc::UnboundedReceiver<Vec<SocketAddr>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let applied = AtomicUsize::new(0);
    let apply = move |set| {
        let n = applied.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = tx.send(set);
        keep(n)
    };
    let task = discover::spawn(resolver(dns), "api".into(), target, EVERY, apply);
    (task, rx)
}

async fn next_set(rx: &mut mpsc::UnboundedReceiver<Vec<SocketAddr>>) -> Vec<SocketAddr> {
    let set = tokio::time::timeout(PATIENCE, rx.recv()).await;
    set.expect("a set applied in time")
        .expect("the task is running")
}

/// Waits until the fake has had `n` more queries than `from`.
async fn queries_past(dns: &FakeDns, from: usize, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while dns.queries() < from + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} queries in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_watch_task_applies_added_and_removed_addresses() {
    let dns = FakeDns::start();
    dns.set_host("api.test", &["10.0.0.1"]);
    let (_task, mut rx) = watch(&dns, host("api.test", 80), |_| true);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.1:80"]));

    dns.set_host("api.test", &["10.0.0.2", "10.0.0.1"]);
    assert_eq!(
        next_set(&mut rx).await,
        addrs(&["10.0.0.1:80", "10.0.0.2:80"])
    );

    dns.set_host("api.test", &["10.0.0.2"]);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.2:80"]));

    // An unchanged answer applies nothing, period after period.
    let from = dns.queries();
    queries_past(&dns, from, 8).await;
    assert!(rx.try_recv().is_err(), "nothing applied without a change");
}

#[tokio::test]
async fn the_watch_task_keeps_the_last_good_set_through_servfail() {
    let dns = FakeDns::start();
    dns.set_host("api.test", &["10.0.0.1", "10.0.0.2"]);
    let (_task, mut rx) = watch(&dns, host("api.test", 80), |_| true);
    assert_eq!(
        next_set(&mut rx).await,
        addrs(&["10.0.0.1:80", "10.0.0.2:80"])
    );

    dns.set_servfail(true);
    let from = dns.queries();
    // Five lookups' worth of SERVFAIL (A and AAAA each).
    queries_past(&dns, from, 10).await;
    assert!(rx.try_recv().is_err(), "apply is not called on failures");

    dns.set_host("api.test", &["10.0.0.2"]);
    dns.set_servfail(false);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.2:80"]));
}

#[tokio::test]
async fn the_watch_task_empties_a_name_only_after_three_nxdomains_in_a_row() {
    let dns = FakeDns::start();
    dns.set_host("api.test", &["10.0.0.1"]);
    let (_task, mut rx) = watch(&dns, host("api.test", 80), |_| true);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.1:80"]));

    // A one-off NXDOMAIN: nothing applied.
    dns.remove("api.test");
    let from = dns.queries();
    queries_past(&dns, from, 2).await;
    dns.set_host("api.test", &["10.0.0.1"]);
    let from = dns.queries();
    queries_past(&dns, from, 8).await;
    assert!(rx.try_recv().is_err(), "a lone NXDOMAIN empties nothing");

    // For good: emptied, after three lookups (A and AAAA each) at least.
    dns.remove("api.test");
    let from = dns.queries();
    assert_eq!(next_set(&mut rx).await, Vec::<SocketAddr>::new());
    let asked = dns.queries() - from;
    assert!(
        asked >= 6,
        "emptied after {asked} queries, fewer than three lookups"
    );

    dns.set_host("api.test", &["10.0.0.5"]);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.5:80"]));
}

#[tokio::test]
async fn the_watch_task_follows_srv_records() {
    let dns = FakeDns::start();
    dns.set_host("a.test", &["10.0.1.1"]);
    dns.set_host("b.test", &["10.0.1.2"]);
    dns.set_srv("_http._tcp.api.test", &[("a.test", 9001)], true);
    let (_task, mut rx) = watch(&dns, srv("_http._tcp.api.test"), |_| true);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.1.1:9001"]));

    dns.set_srv(
        "_http._tcp.api.test",
        &[("a.test", 9001), ("b.test", 9002)],
        false,
    );
    assert_eq!(
        next_set(&mut rx).await,
        addrs(&["10.0.1.1:9001", "10.0.1.2:9002"])
    );
}

/// Waits until no query arrived for several periods, and returns the
/// count.
async fn settled(dns: &FakeDns) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let before = dns.queries();
        tokio::time::sleep(EVERY * 10).await;
        if dns.queries() == before {
            return before;
        }
        assert!(tokio::time::Instant::now() < deadline, "queries go on");
    }
}

#[tokio::test]
async fn a_task_whose_pool_is_gone_makes_no_more_queries() {
    let dns = FakeDns::start();
    dns.set_host("api.test", &["10.0.0.1"]);
    // The second set applied finds the pool gone.
    let (task, mut rx) = watch(&dns, host("api.test", 80), |n| n < 2);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.1:80"]));
    dns.set_host("api.test", &["10.0.0.2"]);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.2:80"]));

    let count = settled(&dns).await;
    tokio::time::sleep(EVERY * 10).await;
    assert_eq!(dns.queries(), count, "no query after apply said false");
    assert!(task.is_finished());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_task() {
    let dns = FakeDns::start();
    dns.set_host("api.test", &["10.0.0.1"]);
    let (task, mut rx) = watch(&dns, host("api.test", 80), |_| true);
    assert_eq!(next_set(&mut rx).await, addrs(&["10.0.0.1:80"]));
    let from = dns.queries();
    queries_past(&dns, from, 4).await;

    drop(task);
    let count = settled(&dns).await;
    tokio::time::sleep(EVERY * 10).await;
    assert_eq!(
        dns.queries(),
        count,
        "no query after the handle was dropped"
    );
    let closed = tokio::time::timeout(PATIENCE, rx.recv()).await;
    assert_eq!(closed, Ok(None), "the task, and its apply, are gone");
}
