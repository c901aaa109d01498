//! Robustness of `least-loaded` (issue 7): no single request, client or
//! agent can exile, starve or flood a host.
//!
//! Every test builds its own cluster of four hosts (real sockets on
//! 127.0.0.1, port 0) with fake agents whose reports it sets, so tests
//! that measure shares of traffic run in parallel without disturbing each
//! other. Traffic is sequential on one keep-alive client: with nothing in
//! flight when a request is routed, the in-flight count cannot tell hosts
//! apart, so what decides is the agents' reports and what the balancer
//! measured of each host, which is what these tests are about.
//!
//! Shares are measured over hundreds of requests and compared with bounds
//! several standard deviations away from the expected share (four equal
//! hosts: 25 %, about ±2 points over 400 requests), because the machine is
//! small and shared and the tests run side by side.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{backends_toml_addrs, read_head, DelayHost, FakeAgent, Host, Lb, Seq, Shares};

/// `least-loaded`, with agents polled every `interval`; the poll timeout
/// stays at its default (500 ms) so that a poll slowed by the other tests
/// does not make a report unknown (which would rank it at the median and
/// blur what the lying agents say).
fn least_loaded(interval: &str) -> String {
    format!("[balance]\nstrategy = \"least-loaded\"\n[agent]\ninterval = \"{interval}\"\n")
}

/// The agent poll interval of the tests where reports change or lie: short,
/// so that reports are followed quickly.
const FAST: &str = "100ms";

/// The default agent poll interval, where the test is about how long the
/// balancer remembers: the figures are for the default
/// configuration, and a memory that scales with the poll interval must be
/// short enough there too.
const DEFAULT: &str = "1s";

/// What every agent reports unless a test makes one lie: a host doing
/// some work, neither idle nor busy.
const CPU: f64 = 0.3;

/// Four hosts, one share each.
const FAIR: f64 = 0.25;

/// A balancer in front of `hosts` polling their agents every `interval`,
/// once every agent has reported.
async fn balancer(hosts: &[(SocketAddr, &FakeAgent)], interval: &str) -> Lb {
    let lb = Lb::start(&format!(
        "{}\n{}",
        backends_toml_addrs(hosts),
        least_loaded(interval)
    ))
    .await;
    lb.wait_for_reports().await;
    lb
}

/// Four demo backends named `h1`..`h4`, each with an agent reporting
/// [`CPU`], behind a balancer polling them every `interval`.
async fn demo_cluster(interval: &str) -> ([Host; 4], [FakeAgent; 4], Lb) {
    let hosts = ["h1", "h2", "h3", "h4"].map(Host::start);
    let agents = [
        FakeAgent::start(CPU).await,
        FakeAgent::start(CPU).await,
        FakeAgent::start(CPU).await,
        FakeAgent::start(CPU).await,
    ];
    let lb = balancer(
        &[
            (hosts[0].addr, &agents[0]),
            (hosts[1].addr, &agents[1]),
            (hosts[2].addr, &agents[2]),
            (hosts[3].addr, &agents[3]),
        ],
        interval,
    )
    .await;
    (hosts, agents, lb)
}

/// Four [`DelayHost`]s named `ids`, with the matching slowdowns and agents
/// reporting the matching `cpu`, behind a balancer polling them every
/// `interval`.
async fn delay_cluster(
    ids: [&str; 4],
    slowdown: [u32; 4],
    cpu: [f64; 4],
    interval: &str,
) -> (Vec<DelayHost>, Vec<FakeAgent>, Lb) {
    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for i in 0..4 {
        hosts.push(DelayHost::start(ids[i], slowdown[i]).await);
        agents.push(FakeAgent::start(cpu[i]).await);
    }
    let list: Vec<_> = hosts.iter().map(|h| h.addr).zip(agents.iter()).collect();
    let lb = balancer(&list, interval).await;
    (hosts, agents, lb)
}

/// The shares of `n` sequential requests to `url` on four equal hosts,
/// after a few requests to warm the connections; fails if the hosts are
/// not sharing at all (a broken precondition, not the behaviour tested).
async fn normal_shares(seq: &Seq, url: &str, n: usize) -> Shares {
    seq.tally(url, 40).await;
    let normal = seq.tally(url, n).await;
    assert!(
        normal.counts.len() == 4 && normal.counts.values().all(|&c| c * 8 >= n),
        "before anything happens, four equal hosts should each get at least half of a fair \
         share of sequential requests (a host avoided already was exiled by noise, such as a \
         scheduler hiccup on this shared machine: the same fault as a slow request): {normal}"
    );
    normal
}

/// Whether `share` is within the normal range of a host whose normal share
/// is `normal`: at least half of it, and at most twice it or twice the fair
/// share (a host favoured for a while after being avoided is not what
/// these tests look for, but a host that takes over is).
fn in_normal_range(share: f64, normal: f64) -> bool {
    share >= normal / 2.0 && share <= (2.0 * normal).max(2.0 * FAIR)
}

/// The hosts whose share in `now` is out of their normal range, for
/// failure messages: when the others are too, the balancer herds
/// sequential traffic whatever the test did.
fn out_of_range(normal: &Shares, now: &Shares) -> String {
    let out: Vec<String> = normal
        .counts
        .keys()
        .filter(|id| !in_normal_range(now.share(id), normal.share(id)))
        .map(|id| format!("{id} {:.1} %", 100.0 * now.share(id)))
        .collect();
    format!("hosts out of their normal range: {}", out.join(", "))
}

/// How long after one slow request a host must be back to its normal share.
const RECOVERY: Duration = Duration::from_secs(20);

/// What the balancer sees between the slow request and the check.
#[derive(Debug, Clone, Copy)]
enum Meantime {
    /// Light sequential traffic (one request every 20 ms, about 700 in
    /// all), as in the report: the host may get a few requests (the
    /// probe floor, or as its penalty fades) and each must not re-apply the
    /// old verdict.
    Traffic,
    /// No request at all: the first requests after a long silence must
    /// measure the host as it is now, not as it was 20 s ago.
    Silence,
}

/// Waits out [`RECOVERY`] from `since` as `meantime` says, then checks
/// that `target`'s share of 400 sequential requests to `url` is in its
/// normal range.
async fn assert_back_to_normal(
    seq: &Seq,
    url: &str,
    target: &str,
    normal: &Shares,
    since: Instant,
    meantime: Meantime,
) {
    let seen = match meantime {
        Meantime::Traffic => {
            seq.tally_until(url, since + RECOVERY, Duration::from_millis(20))
                .await
        }
        Meantime::Silence => {
            tokio::time::sleep_until((since + RECOVERY).into()).await;
            Shares::default()
        }
    };
    let after = seq.tally(url, 400).await;
    eprintln!("target {target}\n  before: {normal}\n  meantime: {seen}\n  after: {after}");
    assert!(
        in_normal_range(after.share(target), normal.share(target)),
        "{target} took one slow request; {RECOVERY:?} later ({meantime:?} meanwhile) its \
         share should be back in its normal range ({:.1} % .. {:.1} %), but is {:.1} %\n  \
         before: {normal}\n  meantime: {seen}\n  after: {after}\n  {}",
        100.0 * normal.share(target) / 2.0,
        100.0 * (2.0 * normal.share(target)).max(2.0 * FAIR),
        100.0 * after.share(target),
        out_of_range(normal, &after),
    );
}

/// One `/delay?ms=100` request, 50 times the usual `/delay?ms=2`, does not
/// exile the host that served it: 20 s later, with light traffic going on
/// meanwhile, its share of 400 sequential `/delay?ms=2` requests is back in
/// its normal range (at least half its share before, at most twice that or
/// twice the fair share). This is the report (one `/work?ms=50` in
/// `bench demo`, then 0 of 150 sequential requests for a minute), with
/// `/delay` so that the test burns no CPU.
///
/// The slow request is of the same path as the usual ones with another
/// query: a request mix that differed between hosts for a moment (one
/// host happened to get the slow endpoint) must not read as a slow host
/// for long, whether or not the balancer tells requests apart. It goes to
/// whichever host the balancer picks; its `X-Backend` names the target.
///
/// Half the normal share is a bound far outside the noise (at 25 % over
/// 400 requests one standard deviation is about 2 points) and far above
/// what exile looks like (the probe floor, under 1 %). 20 s is the issue's
/// figure: generous against any reasonable memory of a latency signal,
/// short against the minutes the first version took. Agents are polled at
/// the default interval (1 s), for which the issue gives its figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_request_of_another_kind_does_not_exile_its_host() {
    let (_hosts, _agents, lb) = demo_cluster(DEFAULT).await;
    let seq = Seq::new();
    let usual = lb.url("/delay?ms=2");
    let normal = normal_shares(&seq, &usual, 400).await;

    let start = Instant::now();
    let target = seq.get(&lb.url("/delay?ms=100")).await;
    assert!(start.elapsed() >= Duration::from_millis(100));

    assert_back_to_normal(&seq, &usual, &target, &normal, start, Meantime::Traffic).await;
    lb.stop().await;
}

/// One answer to the usual `/delay?ms=2` that took 50 times as long (the
/// backend stalled once for 98 ms: a GC pause, a page-fault storm) does not
/// exile the host: after 20 s without traffic, its share of the next 400
/// sequential requests is in its normal range, with the bounds of
/// [`one_slow_request_of_another_kind_does_not_exile_its_host`].
///
/// Here the request is the same as every other, so a balancer that tells
/// kinds of requests apart cannot dismiss the sample: the host really was
/// slow once, and it is the signal's memory that must let go. With no
/// traffic in between, only the time elapsed can tell the balancer that
/// the sample is old (the first version kept 70 % of it however old, and
/// the first request after the silence renewed the penalty). Every host is
/// armed to stall its next request and disarmed after the first answer, so
/// exactly one host stalls, the one the balancer picked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_answer_does_not_exile_its_host() {
    let (hosts, _agents, lb) =
        delay_cluster(["d1", "d2", "d3", "d4"], [1; 4], [CPU; 4], DEFAULT).await;
    let seq = Seq::new();
    let usual = lb.url("/delay?ms=2");
    let normal = normal_shares(&seq, &usual, 400).await;

    for h in &hosts {
        h.stall_next(Duration::from_millis(98));
    }
    let start = Instant::now();
    let target = seq.get(&usual).await;
    for h in &hosts {
        h.cancel_stall();
    }
    assert!(start.elapsed() >= Duration::from_millis(100));

    assert_back_to_normal(&seq, &usual, &target, &normal, start, Meantime::Silence).await;
    lb.stop().await;
}

/// How long the slow reader holds its response unread.
const HOLD: Duration = Duration::from_secs(10);

/// The slow-reader attack cannot steer traffic: a client with a 4 KiB
/// receive buffer GETs 100 MB through the balancer, reads the response head
/// (to learn which host serves it) and nothing more for 10 s, then closes.
/// The host is not busy (its backend just waits for the socket to drain),
/// so its share of sequential requests must stay in its normal range both
/// while the response is held and right after the close.
///
/// The first version counted the request in flight for the whole 10 s
/// (every sequential request then avoided the host) and then folded 10 s
/// into the host's latency (exile for minutes). Ten seconds is half the
/// issue's 20 s: the stall is complete within milliseconds (100 MB cannot
/// fit in loopback socket buffers), and 10 s is already a thousand times the
/// usual request, so a longer hold would prove nothing more. The bounds are
/// those of the other share tests: half the normal share, about 6 standard
/// deviations from it and 12 points above the 0–2 % of the attack today.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_steer_traffic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_hosts, _agents, lb) = demo_cluster(FAST).await;
    let seq = Seq::new();
    let url = lb.url("/");
    let normal = normal_shares(&seq, &url, 400).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut attacker = socket.connect(lb.addr).await.unwrap();
    attacker
        .write_all(b"GET /text/100000000 HTTP/1.1\r\nHost: victim\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut attacker).await;
    assert_eq!(head.status, 200);
    let target = head
        .header("x-backend")
        .expect("the response names its backend")
        .to_owned();

    // While the response is held, light sequential traffic.
    let during = seq
        .tally_until(&url, Instant::now() + HOLD, Duration::from_millis(10))
        .await;
    // The response was held the whole time: the connection is still open
    // with body bytes waiting (not closed by a send timeout, not finished).
    let mut peek = [0u8; 1024];
    let waiting = tokio::time::timeout(Duration::from_secs(5), attacker.read(&mut peek)).await;
    assert!(
        matches!(waiting, Ok(Ok(n)) if n > 0),
        "the slow reader's response should still be open after {HOLD:?}: {waiting:?}"
    );
    // Closing with unread data resets the connection.
    drop(attacker);
    let after = seq.tally(&url, 400).await;

    eprintln!("target {target}\n  before: {normal}\n  during: {during}\n  after: {after}");
    let range = |s: &Shares| in_normal_range(s.share(&target), normal.share(&target));
    assert!(
        range(&during) && range(&after),
        "a client held a response from {target} unread for {HOLD:?}: {target}'s share should \
         stay in its normal range ({:.1} % .. {:.1} %), but is {:.1} % during and {:.1} % \
         after\n  before: {normal}\n  during: {during}\n  after: {after}\n  during, {}\n  \
         after, {}",
        100.0 * normal.share(&target) / 2.0,
        100.0 * (2.0 * normal.share(&target)).max(2.0 * FAIR),
        100.0 * during.share(&target),
        100.0 * after.share(&target),
        out_of_range(&normal, &during),
        out_of_range(&normal, &after),
    );
    lb.stop().await;
}

/// An agent reporting 0.0 for a host that is in fact slow (its backend
/// takes 10 times longer for the same `/delay?ms=5`: 50 ms against 5 ms,
/// while the other agents report 0.3) cannot flood it: after 5 s of
/// sequential traffic, its share of the next 200 requests is below 60 % of
/// the fair share, i.e. under 15 % of four hosts.
///
/// Sequential, because that is where only the balancer's own measure of
/// the host's time can correct the agent: with concurrent traffic, requests
/// piling up on the slow host would push the in-flight term and hide a
/// missing latency signal. Believing the agent sends the host nearly
/// everything (99.5 % in the issue); an even spread ignoring both signals
/// gives 25 % ± 3 points, so 15 % fails both while a balancer that measures
/// the host (a few probes, about 1 %) passes with a wide margin. 5 s is the
/// issue's figure: 100 requests even if every one went to the slow host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reporting_idle_cannot_flood_a_slow_host() {
    let (_hosts, _agents, lb) = delay_cluster(
        ["slow", "f1", "f2", "f3"],
        [10, 1, 1, 1],
        [0.0, CPU, CPU, CPU],
        FAST,
    )
    .await;
    let seq = Seq::new();
    let url = lb.url("/delay?ms=5");

    let first = seq
        .tally_until(
            &url,
            Instant::now() + Duration::from_secs(5),
            Duration::ZERO,
        )
        .await;
    let next = seq.tally(&url, 200).await;
    eprintln!("first 5 s: {first}\n  next: {next}");
    assert!(
        next.share("slow") < 0.6 * FAIR,
        "the slow host's agent says idle; after 5 s its share should be under {:.0} %, \
         but is {:.1} %\n  first 5 s: {first}\n  next: {next}",
        100.0 * 0.6 * FAIR,
        100.0 * next.share("slow"),
    );
    lb.stop().await;
}

/// An agent reporting 1.0 for a host that is idle and as fast as the others
/// cannot starve it: over 4,000 sequential requests it gets at least 3 (the
/// 1 % probe floor, spread over four hosts, is 1 in 400: 10 expected, and
/// 3 or more with probability 99.7 %; starving is 0). Once its agent reports
/// the same 0.3 as the others, within 1 s (ten poll intervals) it is back
/// to a fair share: 12.5–50 % of 400 requests, bounds at least 5 standard
/// deviations away from 25 % and far from both starving (the floor) and
/// taking over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reporting_busy_cannot_starve_an_idle_host() {
    let (_hosts, agents, lb) = demo_cluster(FAST).await;
    let liar = &agents[0];
    liar.set_cpu(1.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seq = Seq::new();
    let url = lb.url("/");

    let busy = seq.tally(&url, 4000).await;
    eprintln!("reported busy: {busy}");
    assert!(
        busy.count("h1") >= 3,
        "h1's agent says busy, but h1 is idle: it should keep at least the probe floor \
         (1 in 400; at least 3 of 4000), got {busy}"
    );

    liar.set_cpu(CPU);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = seq.tally(&url, 400).await;
    eprintln!("reported like the others: {after}");
    assert!(
        (FAIR / 2.0..=2.0 * FAIR).contains(&after.share("h1")),
        "h1's agent reports like the others again: its share should be back to 12.5–50 %, \
         got {after}\n  while reported busy: {busy}"
    );
    lb.stop().await;
}
