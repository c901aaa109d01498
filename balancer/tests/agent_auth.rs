//! Authenticated agents (`[agent] key_file`, agent `--key-file`), through
//! the real balancer, real backends and the real agent server (in-process,
//! with reports the tests choose): a report signed with the shared key
//! steers traffic; an agent with another key, one without a key, a fake
//! that signs badly and a fake that replays a captured signed answer all
//! leave the load unknown, and the log says so once per agent.
//!
//! The balancer's log is captured by a subscriber of this test binary's
//! own; each test reads the lines that name its agents' addresses (ports
//! are unique, so tests running side by side do not mix).

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use agent::{Key, LoadReport, Monitor, Options};
use support::{tally, Host, Lb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "tGzN1vX0m9q2Y3b8Kc4Rr7sWl5JdHfA6Pe1Uo0Ii2Ts=";
const OTHER_KEY: &str = "another key, long enough to be one";

/// Agents polled often, with a poll timeout generous enough that a slow
/// poll on this busy machine does not count as a state change.
const FAST_POLLS: &str = "[agent]\ninterval = \"100ms\"\ntimeout = \"2s\"\n";

// ---------------------------------------------------------------------------
// The log

static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Where the balancer's log lines go in this test binary.
#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the log from now on (once per test binary).
fn capture_log() {
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(Arc::clone(&buf));
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buf
    });
}

/// The log lines about the agent at `agent` that contain `words`.
fn log_lines(agent: SocketAddr, words: &str) -> Vec<String> {
    let field = format!("agent={agent}");
    let log = LOG.get().expect("capture_log() first").lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == field) && l.contains(words))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// Keys and agents

/// A key file in a directory of its own (left in the temp dir: a few bytes).
fn key_file(name: &str, key: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balancer-agent-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    write_whole(&path, &format!("{key}\n"));
    path
}

fn report(cpu: f64) -> LoadReport {
    LoadReport {
        cpu,
        memory: 0.3,
        cores: 2,
        cpus: 2.0,
        load1: 0.5,
        mem_total_bytes: 1000,
        mem_used_bytes: 300,
    }
}

/// The real agent server, reporting `cpu`, with `key` (as `--key-file`).
async fn agent(cpu: f64, key: Option<&str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = key.map(|k| Key::new(k.as_bytes()).unwrap());
    tokio::spawn(agent::serve_with(
        listener,
        Monitor::fixed(report(cpu)),
        Options {
            key,
            ..Options::default()
        },
        std::future::pending(),
    ));
    addr
}

/// Reads a request head off `stream`; `None` if it closes first.
async fn request_head(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&seen).into_owned())
}

/// A fake agent that passes the first poll on to the real agent at
/// `real`, keeps its signed answer, and sends that same answer to every
/// poll after: a replay of a captured report.
async fn replaying_agent(real: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let captured: Arc<tokio::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let captured = Arc::clone(&captured);
            tokio::spawn(async move {
                let Some(head) = request_head(&mut stream).await else {
                    return;
                };
                let mut captured = captured.lock().await;
                if captured.is_none() {
                    let mut upstream = TcpStream::connect(real).await.unwrap();
                    let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                    upstream.write_all(head.as_bytes()).await.unwrap();
                    let mut answer = Vec::new();
                    upstream.read_to_end(&mut answer).await.unwrap();
                    *captured = Some(answer);
                }
                let answer = captured.clone().unwrap();
                drop(captured);
                let _ = stream.write_all(&answer).await;
            });
        }
    });
    addr
}

/// A fake agent that answers every poll with a report of `cpu` and a
/// well-formed signature naming the poll's nonce, but a MAC it cannot know.
async fn forging_agent(cpu: f64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = request_head(&mut stream).await else {
                    return;
                };
                let nonce = head
                    .split("nonce=")
                    .nth(1)
                    .map(|rest| &rest[..32.min(rest.len())])
                    .unwrap_or("")
                    .to_owned();
                let body = serde_json::to_string(&report(cpu)).unwrap();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     x-lb-hmac: nonce={nonce}, mac={}\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    "0".repeat(64),
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// `backends = [...]`, each host with its agent.
fn backends(pairs: &[(&Host, SocketAddr)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(h, a)| format!("{{ addr = \"{}\", agent = \"{a}\" }}", h.addr))
        .collect();
    format!("backends = [{}]", items.join(", "))
}

/// Each backend's `cpu` in `/status.json` (`None`: unknown), by host order.
async fn cpus(lb: &Lb) -> Vec<Option<f64>> {
    let s = lb.status().await;
    s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cpu"].as_f64())
        .collect()
}

/// Waits until `/status.json` shows `want` (a cpu per backend, `None` for
/// unknown), for up to 10 s.
async fn wait_for_cpus(lb: &Lb, want: &[Option<f64>]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = cpus(lb).await;
        if seen == want {
            return;
        }
        assert!(Instant::now() < deadline, "cpus {seen:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shared_key_reports_are_authenticated_and_steer_traffic() {
    capture_log();
    let hosts = [Host::start("idle"), Host::start("busy")];
    let idle = agent(0.05, Some(KEY)).await;
    let busy = agent(0.95, Some(KEY)).await;
    let key = key_file("good.key", KEY);
    let lb = Lb::start(&format!(
        "{}\n{FAST_POLLS}key_file = \"{}\"\n",
        backends(&[(&hosts[0], idle), (&hosts[1], busy)]),
        key.display()
    ))
    .await;
    wait_for_cpus(&lb, &[Some(0.05), Some(0.95)]).await;

    // As in routing.rs: the host reported idle takes the most, the busy
    // one about the probe floor.
    let counts = tally(&lb.url("/"), 100).await;
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert!(n("idle") >= 80 && n("busy") <= 10, "{counts:?}");

    for a in [idle, busy] {
        assert_eq!(log_lines(a, "agent reporting").len(), 1, "{a}");
        assert!(log_lines(a, "not authenticated").is_empty(), "{a}");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_reports_count_as_unknown_load_and_are_logged_once() {
    capture_log();
    let hosts = [
        Host::start("good"),
        Host::start("other-key"),
        Host::start("no-key"),
        Host::start("forger"),
        Host::start("replayer"),
    ];
    // The liars all report an idle host: believed, they would take nearly
    // all the traffic.
    let good = agent(0.5, Some(KEY)).await;
    let other_key = agent(0.0, Some(OTHER_KEY)).await;
    let no_key = agent(0.0, None).await;
    let forger = forging_agent(0.0).await;
    let replayer = replaying_agent(agent(0.0, Some(KEY)).await).await;
    let key = key_file("good-2.key", KEY);
    let lb = Lb::start(&format!(
        "{}\n{FAST_POLLS}key_file = \"{}\"\n",
        backends(&[
            (&hosts[0], good),
            (&hosts[1], other_key),
            (&hosts[2], no_key),
            (&hosts[3], forger),
            (&hosts[4], replayer),
        ]),
        key.display()
    ))
    .await;

    // The replayer's first answer is genuine (it is the real agent's); it
    // is the replays after it that must not count.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines(replayer, "agent reporting").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first poll never got through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_cpus(&lb, &[Some(0.5), None, None, None, None]).await;
    // Some twenty polls more, all refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cpus(&lb).await, [Some(0.5), None, None, None, None]);

    // Unknown load ranks with the median of the known ones (the good
    // host's 0.5): no liar takes the traffic its report asks for.
    let shares = tally(&lb.url("/"), 200).await;
    assert!(shares.values().all(|&n| n <= 100), "{shares:?}");

    // One line each, saying why; the replayer's after its genuine report.
    for (agent, why) in [
        (other_key, "answered 401: the agent has another key"),
        (no_key, "not signed (is the agent started with --key-file?)"),
        (forger, "not signed with this key (bad MAC)"),
        (replayer, "signed for another poll's nonce"),
    ] {
        let lines = log_lines(agent, "not authenticated");
        assert_eq!(lines.len(), 1, "{agent}: {lines:#?}");
        assert!(lines[0].contains(why), "{agent}: {lines:#?}");
        assert!(log_lines(agent, "not reporting").is_empty(), "{agent}");
    }
    assert_eq!(log_lines(replayer, "agent reporting").len(), 1);
    assert!(log_lines(good, "not authenticated").is_empty());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_without_the_key_gets_no_report_from_an_agent_that_has_one() {
    capture_log();
    let host = Host::start("keyed");
    let keyed = agent(0.2, Some(KEY)).await;
    let lb = Lb::start(&format!("{}\n{FAST_POLLS}", backends(&[(&host, keyed)]))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines(keyed, "not authenticated").is_empty() {
        assert!(Instant::now() < deadline, "no log line about the 401");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cpus(&lb).await, [None]);
    let lines = log_lines(keyed, "not authenticated");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("set [agent] key_file"), "{lines:#?}");
    // Still in rotation on its health alone.
    assert_eq!(tally(&lb.url("/"), 5).await.get("keyed"), Some(&5));
    lb.stop().await;
}

/// Writes `text` to `path` by renaming a complete file over it: tests run
/// in parallel and may write the same file, and a config read between
/// another test's truncate and write would see it empty.
fn write_whole(path: &std::path::Path, text: &str) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{n}"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
