//! The connections to backends: reused most-recently-used first, capped by
//! `[limits] max_conns_per_backend` (requests queue briefly at the cap),
//! closed after `[timeouts] idle`, replaced unnoticed when the backend closed
//! them while idle, and counted in `/status.json`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use support::{backend_status, backends_without_agents, get, Lb};

/// A raw HTTP/1.1 backend that counts the connections the balancer's
/// requests arrive on (health probes, on their own connections, are left
/// out). `GET /slow` answers after 100 ms, `GET /hold` after 2 s, anything
/// else at once. With `close_idle`, it closes a connection that has been
/// idle that long after a response, without a word (as servers with a
/// keep-alive timeout do).
struct CountingBackend {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Connections that carried a proxied request, ever.
    accepted: AtomicUsize,
    /// Of those, open now.
    open: AtomicUsize,
    /// The most open at once.
    max_open: AtomicUsize,
    /// Proxied requests answered.
    requests: AtomicUsize,
}

impl CountingBackend {
    async fn start(close_idle: Option<Duration>) -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&c), close_idle));
            }
        });
        CountingBackend { addr, counts }
    }

    fn accepted(&self) -> usize {
        self.counts.accepted.load(SeqCst)
    }

    fn open(&self) -> usize {
        self.counts.open.load(SeqCst)
    }

    fn max_open(&self) -> usize {
        self.counts.max_open.load(SeqCst)
    }
}

async fn serve(mut stream: tokio::net::TcpStream, c: Arc<Counts>, close_idle: Option<Duration>) {
    let mut proxied = false;
    let mut buf = vec![0u8; 16384];
    let mut seen = Vec::new();
    loop {
        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
            seen.drain(..end + 4);
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            if path != "/health" && !proxied {
                proxied = true;
                c.accepted.fetch_add(1, SeqCst);
                let now = c.open.fetch_add(1, SeqCst) + 1;
                c.max_open.fetch_max(now, SeqCst);
            }
            match path.as_str() {
                "/slow" => tokio::time::sleep(Duration::from_millis(100)).await,
                "/hold" => tokio::time::sleep(Duration::from_secs(2)).await,
                _ => {}
            }
            if path != "/health" {
                c.requests.fetch_add(1, SeqCst);
            }
            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(reply).await.is_err() {
                break;
            }
        }
        let read = match close_idle {
            Some(limit) => match tokio::time::timeout(limit, stream.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break, // idle too long: close, unannounced
            },
            None => stream.read(&mut buf).await,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    if proxied {
        c.open.fetch_sub(1, SeqCst);
    }
}

/// `lb.toml` body for `addrs` with `extra` lines.
fn toml(addrs: &[SocketAddr], extra: &str) -> String {
    format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n{extra}",
        backends_without_agents(addrs)
    )
}

/// `n` concurrent `GET url`, every one answered 200.
async fn burst(url: &str, n: usize) {
    let all: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    for r in all {
        assert_eq!(r.await.unwrap(), 200);
    }
}

async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection_and_status_counts_it() {
    let b = CountingBackend::start(None).await;
    let lb = Lb::start(&toml(&[b.addr], "")).await;
    for _ in 0..20 {
        assert_eq!(get(&lb.url("/")).await.status, 200);
    }
    assert_eq!(
        b.accepted(),
        1,
        "20 requests one after another: one connection"
    );
    let s = backend_status(&lb.status().await, b.addr);
    assert_eq!(
        (s["conns_open"].as_u64(), s["conns_idle"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_burst_stays_within_max_conns_per_backend_and_every_request_is_answered() {
    let b = CountingBackend::start(None).await;
    let lb = Lb::start(&toml(
        &[b.addr],
        "[limits]\nmax_conns_per_backend = 4\n[timeouts]\nconnect = \"10s\"",
    ))
    .await;
    burst(&lb.url("/slow"), 40).await;
    assert!(
        b.max_open() <= 4,
        "{} connections open at once",
        b.max_open()
    );
    assert!(b.max_open() >= 2, "the cap is a cap, not a queue of one");
    let s = backend_status(&lb.status().await, b.addr);
    assert!(s["conns_open"].as_u64().unwrap() <= 4, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    lb.stop().await;
}

#[tokio::test]
async fn without_a_cap_connections_follow_concurrency_and_are_kept_for_reuse() {
    let b = CountingBackend::start(None).await;
    let lb = Lb::start(&toml(&[b.addr], "")).await;
    for _round in 0..3 {
        burst(&lb.url("/slow"), 10).await;
    }
    // Three bursts of ten: the second and third reuse the first's
    // connections instead of opening more.
    assert!(
        b.accepted() <= 12,
        "{} connections for 3 bursts of 10",
        b.accepted()
    );
    lb.stop().await;
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let b = CountingBackend::start(None).await;
    let lb = Lb::start(&toml(&[b.addr], "[timeouts]\nidle = \"1s\"")).await;
    assert_eq!(get(&lb.url("/")).await.status, 200);
    assert_eq!(b.open(), 1);
    wait_until(
        "the idle connection is closed",
        Duration::from_secs(5),
        || b.open() == 0,
    )
    .await;
    let s = backend_status(&lb.status().await, b.addr);
    assert_eq!(
        (s["conns_open"].as_u64(), s["conns_idle"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    // And the next request simply opens a new one.
    assert_eq!(get(&lb.url("/")).await.status, 200);
    assert_eq!(b.accepted(), 2);
    lb.stop().await;
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_replaced_unnoticed() {
    let b = CountingBackend::start(Some(Duration::from_millis(50))).await;
    // No retries: only a transparent replacement can hide a closed one.
    let lb = Lb::start(&format!(
        "{}\n[balance]\nretries = 0",
        backends_without_agents(&[b.addr])
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(get(&lb.url("/")).await.status, 200);
        // Long enough for the backend to close the connection it idles on.
        wait_until(
            "the backend closes its idle connection",
            Duration::from_secs(2),
            || b.open() == 0,
        )
        .await;
    }
    assert_eq!(b.accepted(), 5);
    let s = backend_status(&lb.status().await, b.addr);
    assert_eq!(
        s["errors"], 0,
        "a closed idle connection is not a backend failure: {s}"
    );
    assert_eq!(s["healthy"], true, "{s}");
    lb.stop().await;
}

#[tokio::test]
async fn at_the_cap_a_request_waits_tries_the_others_then_answers_503_blaming_no_backend() {
    let busy = CountingBackend::start(None).await;
    let spare = CountingBackend::start(None).await;
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"least-connections\"\n[limits]\nmax_conns_per_backend = 1\n\
         [timeouts]\nconnect = \"300ms\"",
        backends_without_agents(&[busy.addr, spare.addr])
    ))
    .await;
    // Occupy each backend's only connection, then ask for more.
    let holds: Vec<_> = (0..2)
        .map(|_| {
            let url = lb.url("/hold");
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    wait_until("both connections are taken", Duration::from_secs(2), || {
        busy.open() == 1 && spare.open() == 1
    })
    .await;
    let start = Instant::now();
    let r = get(&lb.url("/")).await;
    let waited = start.elapsed();
    assert_eq!(
        r.status,
        503,
        "every connection busy past the wait: {}",
        r.text()
    );
    assert!(
        r.text().contains("connection"),
        "the reason names the limit: {}",
        r.text()
    );
    assert!(
        waited >= Duration::from_millis(250),
        "it queued first ({waited:?})"
    );
    for h in holds {
        assert_eq!(h.await.unwrap(), 200);
    }
    let s = lb.status().await;
    for addr in [busy.addr, spare.addr] {
        let b = backend_status(&s, addr);
        assert_eq!(b["healthy"], true, "our limit is not its failure: {b}");
        assert_eq!(b["errors"], 0, "{b}");
        assert_eq!(b["ejected"], false, "{b}");
    }
    assert!(busy.max_open() <= 1 && spare.max_open() <= 1);

    // With one backend's connection taken, the next request still gets
    // through: on the other backend, at once or after its wait.
    let hold = {
        let url = lb.url("/hold");
        tokio::spawn(async move { get(&url).await.status })
    };
    wait_until("one connection is taken", Duration::from_secs(2), || {
        busy.open() + spare.open() >= 1
    })
    .await;
    assert_eq!(get(&lb.url("/")).await.status, 200);
    assert_eq!(hold.await.unwrap(), 200);
    lb.stop().await;
}
