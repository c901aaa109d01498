//! The agent's server in-process on `127.0.0.1:0`, spoken to over real
//! HTTP/1.1: the report, the routing, graceful shutdown, and that burning
//! CPU shows up in the report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent::{CgroupPaths, LoadReport, Monitor, Sampler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running agent: its address, and the trigger that stops it.
struct Agent {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start_agent() -> Agent {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::run(listener, async {
        let _ = stopped.await;
    }));
    Agent { addr, stop, task }
}

impl Agent {
    /// Signals shutdown and waits (boundedly) for `run` to return.
    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        result
            .expect("stops in time")
            .expect("task")
            .expect("run returns Ok");
    }
}

/// A parsed HTTP/1.1 response.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answer in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(raw[..split].to_vec()).expect("utf-8 head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

#[tokio::test]
async fn get_load_answers_a_valid_report() {
    let agent = start_agent().await;
    let answer = request(agent.addr, "GET", "/load").await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let report = LoadReport::parse(&answer.body).expect("a valid report");
    assert!(report.cores >= 1, "{report:?}");
    assert!((0.0..=1.0).contains(&report.cpu) && (0.0..=1.0).contains(&report.memory));
    assert!(report.mem_total_bytes > 0 && report.mem_used_bytes <= report.mem_total_bytes);
    assert!(report.load1 >= 0.0);

    let head = request(agent.addr, "HEAD", "/load").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| l > 0));
    agent.stop().await;
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let agent = start_agent().await;
    let missing = request(agent.addr, "GET", "/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(String::from_utf8_lossy(&missing.body).lines().count(), 1);
    let post = request(agent.addr, "POST", "/load").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    agent.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_keep_alive_connections() {
    let agent = start_agent().await;
    let mut idle = TcpStream::connect(agent.addr).await.expect("connect");
    idle.write_all(b"GET /load HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .expect("send");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    agent.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

/// Spinning threads that stop when this is dropped (even if the test fails).
struct Burners(Arc<AtomicBool>);

impl Burners {
    fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..n {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            });
        }
        Self(stop)
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn burning_cpu_raises_the_reported_host_cpu() {
    // An empty fake root: no cgroup, so the report is host-wide.
    let root = std::env::temp_dir().join(format!("agent-burn-{}", std::process::id()));
    let sampler = Sampler::new(&CgroupPaths::under(&root)).expect("sampler");
    let monitor = Monitor::start(sampler, agent::sample::INTERVAL).await;
    let cores = monitor.latest().cores;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Our threads alone should keep this share of the host's CPUs busy; ask
    // for half of it, as other work on a shared machine only adds to it.
    let bound = 0.5 * threads as f64 / f64::from(cores.max(1));
    let _burners = Burners::start(threads);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let cpu = monitor.latest().cpu;
        seen.push(cpu);
        if cpu >= bound {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cpu never reached {bound}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_report_names_the_host_the_machines_or_the_one_given() {
    let agent = start_agent().await;
    let answer = request(agent.addr, "GET", "/load").await;
    assert_eq!(
        agent::report::hostname(&answer.body),
        agent::sample::hostname(),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    agent.stop().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let report = LoadReport::parse(br#"{"cpu": 0.5, "memory": 0.5}"#).unwrap();
    let options = agent::Options {
        hostname: Some("web-1".to_owned()),
        ..agent::Options::default()
    };
    tokio::spawn(agent::serve_with(
        listener,
        Monitor::fixed(report),
        options,
        std::future::pending(),
    ));
    let answer = request(addr, "GET", "/load").await;
    assert_eq!(
        agent::report::hostname(&answer.body).as_deref(),
        Some("web-1")
    );
    assert_eq!(LoadReport::parse(&answer.body).unwrap(), report);
}
