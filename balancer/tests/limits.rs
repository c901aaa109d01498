//! Limits and timeouts against hostile clients, end to end on real
//! sockets: a corpus of the attacks found by probing the release binaries
//! (a client that stops reading, a body trickled a byte a second, an idle
//! WebSocket, HTTP/2 streams on a shut flow-control window) and of every
//! `[limits]` key (connection caps, the per-IP rate, the body size), each
//! with what the client sees and what the backend is spared.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::{
    backend_status, backends_without_agents, closed_within, get, read_head, read_response, Host,
    Lb, RawResp,
};

/// Probes slow enough never to interfere with what a test counts, and an
/// outlier threshold of one, so that a single failure blamed on the
/// backend would show (as an ejection).
const STRICT: &str = "[health]\ninterval = \"10s\"\n[outlier]\nconsecutive_failures = 1\n";

/// A balancer in front of `host` with `extra` config.
async fn lb(host: &Host, extra: &str) -> Lb {
    Lb::start(&format!(
        "{}\n{STRICT}{extra}",
        backends_without_agents(&[host.addr])
    ))
    .await
}

/// `lb_limited_total{reason="..."}` from `/metrics`.
async fn limited(lb: &Lb, reason: &str) -> u64 {
    metric(lb, &format!("lb_limited_total{{reason=\"{reason}\"}}")).await
}

async fn metric(lb: &Lb, series: &str) -> u64 {
    let text = get(&format!("http://{}/metrics", lb.admin)).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}")) as u64
}

/// Polls `/status.json` until `pred` holds for the backend at `addr`, up
/// to `limit`; returns how long it took, or the last status seen.
async fn until_backend(
    lb: &Lb,
    addr: SocketAddr,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<Duration, serde_json::Value> {
    let start = Instant::now();
    loop {
        let b = backend_status(&lb.status().await, addr);
        if pred(&b) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(b);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backend was never blamed: no error, not ejected, still up.
async fn assert_not_blamed(lb: &Lb, addr: SocketAddr) {
    let b = backend_status(&lb.status().await, addr);
    assert_eq!(b["errors"], 0, "{b}");
    assert_eq!(b["ejected"], false, "{b}");
    assert_eq!(b["healthy"], true, "{b}");
    assert!(b["last_error"].is_null(), "{b}");
}

/// Asserts a limit's answer: `status`, a one-line plain-text body, and the
/// connection closed after it.
async fn assert_refused_and_closed(stream: &mut TcpStream, r: &RawResp, status: u16) {
    assert_eq!(r.status, status, "{r:?} {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{r:?}"
    );
    let text = r.text();
    let line = text.strip_suffix('\n').unwrap_or(&text);
    assert!(!line.trim().is_empty() && !line.contains('\n'), "{text:?}");
    assert!(
        !text.contains("127.0.0.1"),
        "error bodies never name addresses: {text:?}"
    );
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    closed_within(stream, Duration::from_secs(10))
        .await
        .expect("the connection is closed after the answer");
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

/// One `GET /` on `stream`, answered whole.
async fn get_on(stream: &mut TcpStream) -> RawResp {
    stream.write_all(GET).await.unwrap();
    read_response(stream).await
}

/// A connection to `to` from the loopback address `from` (127.x.y.z).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

// ---------------------------------------------------------------------------
// [timeouts] send: a client that stops reading a large response

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_its_backend_released() {
    let host = Host::start("a");
    let lb = lb(&host, "[timeouts]\nsend = \"1s\"\n").await;

    // 1 GiB, never read: the socket buffers fill and the writes block.
    let mut client = TcpStream::connect(lb.addr).await.unwrap();
    client
        .write_all(b"GET /text/1073741824 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    until_backend(&lb, host.addr, Duration::from_secs(10), |b| {
        b["in_flight"] == 1
    })
    .await
    .expect("the request is in flight");

    // Closed within a few periods of 1 s (generous: a shared machine), the
    // in-flight count and the backend connection released with it.
    let took = until_backend(&lb, host.addr, Duration::from_secs(30), |b| {
        b["in_flight"] == 0 && b["conns_open"] == 0
    })
    .await
    .expect("the stalled response is let go");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(limited(&lb, "send_timeout").await, 1);
    // The client, reading at last, finds what was buffered, then the end.
    closed_within(&mut client, Duration::from_secs(30))
        .await
        .expect("the client's connection is closed");
    assert_not_blamed(&lb, host.addr).await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    let host = Host::start("a");
    let lb = lb(&host, "[timeouts]\nsend = \"2s\"\n").await;

    let mut client = TcpStream::connect(lb.addr).await.unwrap();
    client
        .write_all(b"GET /text/1073741824 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // 1 MiB every 250 ms, for 6 s: far slower than the balancer could
    // send, but enough to drain a third of the kernel's send buffer (4 MiB
    // at most) in each `send` period, which is what makes the balancer's
    // next write go through (its progress is measured at its writes).
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut total = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let mut got = 0;
        while got < buf.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf[got..]))
                .await
                .expect("data keeps coming")
                .unwrap();
            assert!(n > 0, "closed after {total} bytes, {:?}", start.elapsed());
            got += n;
        }
        total += got;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(limited(&lb, "send_timeout").await, 0);
    drop(client);
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// [timeouts] client_body: stalled, trickled and malformed request bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_and_the_backend_is_not_blamed() {
    let host = Host::start("a");
    let lb = lb(&host, "[timeouts]\nclient_body = \"1s\"\n").await;

    let mut client = TcpStream::connect(lb.addr).await.unwrap();
    client
        .write_all(b"POST /sha1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let start = Instant::now();
    let r = read_response(&mut client).await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_refused_and_closed(&mut client, &r, 408).await;
    assert_eq!(limited(&lb, "body_timeout").await, 1);
    assert_not_blamed(&lb, host.addr).await;
    // Still in rotation.
    assert_eq!(get(&lb.url("/")).await.status, 200);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_at_a_time_gets_408() {
    let host = Host::start("a");
    let lb = lb(&host, "[timeouts]\nclient_body = \"1s\"\n").await;

    let client = TcpStream::connect(lb.addr).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    // A byte every 100 ms: never a second without a byte, but far below
    // the 1 KiB a `client_body` the body must bring.
    let trickle = tokio::spawn(async move {
        wr.write_all(b"POST /sha1 HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..600 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the trickle lived a minute");
    });
    let start = Instant::now();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
            .await
            .expect("answered within 30 s")
            .unwrap();
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(start.elapsed() < Duration::from_secs(30));
    trickle.abort();
    assert_not_blamed(&lb, host.addr).await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_gets_400_and_the_backend_is_not_blamed() {
    let host = Host::start("a");
    let lb = lb(&host, "").await;

    let mut client = TcpStream::connect(lb.addr).await.unwrap();
    client
        .write_all(
            b"POST /sha1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\nzz\r\nnot a chunk\r\n",
        )
        .await
        .unwrap();
    let r = read_response(&mut client).await;
    assert_refused_and_closed(&mut client, &r, 400).await;
    assert_eq!(limited(&lb, "body_malformed").await, 1);
    assert_not_blamed(&lb, host.addr).await;
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// [limits] max_request_body

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_over_max_request_body_gets_413_before_any_backend() {
    let host = Host::start("a");
    let lb = lb(&host, "[limits]\nmax_request_body = \"1KiB\"\n").await;

    let mut client = TcpStream::connect(lb.addr).await.unwrap();
    client
        .write_all(b"POST /sha1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut client).await;
    assert_refused_and_closed(&mut client, &r, 413).await;
    let b = backend_status(&lb.status().await, host.addr);
    assert_eq!(b["requests"], 0, "no backend was contacted: {b}");
    assert_eq!(limited(&lb, "body").await, 1);

    // At the limit exactly: forwarded whole.
    let body = vec![b'x'; 1024];
    let r = support::request(
        http::Method::POST,
        &lb.url("/sha1"),
        &[],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), sha1_smol::Sha1::from(&body).digest().to_string());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_growing_past_max_request_body_gets_413() {
    let host = Host::start("a");
    let lb = lb(&host, "[limits]\nmax_request_body = \"1000\"\n").await;

    let mut client = TcpStream::connect(lb.addr).await.unwrap();
    client
        .write_all(b"POST /sha1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "y".repeat(512));
    for _ in 0..2 {
        client.write_all(chunk.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = read_response(&mut client).await;
    assert_refused_and_closed(&mut client, &r, 413).await;
    assert_eq!(limited(&lb, "body").await, 1);
    // The backend got the start of the request, and is not blamed for the
    // attempt breaking off.
    assert_not_blamed(&lb, host.addr).await;
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// [limits] rate_per_ip / burst_per_ip

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rate_per_ip_a_client_gets_429_then_is_disconnected() {
    let host = Host::start("a");
    // One request per 100 s, three at once: no token comes back during the
    // test, however slow the machine.
    let lb = lb(&host, "[limits]\nrate_per_ip = 0.01\nburst_per_ip = 3\n").await;

    let mut client = TcpStream::connect(lb.addr).await.unwrap();
    for _ in 0..3 {
        assert_eq!(get_on(&mut client).await.status, 200);
    }
    // Refused nine times on the same connection...
    for i in 1..rate_disconnect() {
        let r = get_on(&mut client).await;
        assert_eq!(r.status, 429, "refusal {i}: {r:?}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=100).contains(&retry), "Retry-After {retry}");
        assert_eq!(r.text().lines().count(), 1, "{:?}", r.text());
        assert_ne!(r.header("connection"), Some("close"));
    }
    // ... and the tenth in a row closes it.
    let r = get_on(&mut client).await;
    assert_refused_and_closed(&mut client, &r, 429).await;
    assert_eq!(limited(&lb, "rate").await, u64::from(rate_disconnect()));
    assert_eq!(limited(&lb, "rate_disconnect").await, 1);

    // The refusals never reached the backend, nor count against it.
    let b = backend_status(&lb.status().await, host.addr);
    assert_eq!(b["requests"], 3, "{b}");
    assert_not_blamed(&lb, host.addr).await;

    // Another client address has its own bucket.
    let mut other = connect_from("127.0.0.2", lb.addr).await;
    assert_eq!(get_on(&mut other).await.status, 200);
    lb.stop().await;
}

fn rate_disconnect() -> u32 {
    balancer::limits::rate::DISCONNECT_AFTER
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rate_per_ip_an_http2_client_gets_429_then_a_goaway() {
    let host = Host::start("a");
    let lb = lb(&host, "[limits]\nrate_per_ip = 0.01\nburst_per_ip = 1\n").await;

    let stream = TcpStream::connect(lb.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = || {
        http::Request::get(format!("http://{}/", host.addr))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(req()).await.unwrap().status(), 200);
    let mut statuses = Vec::new();
    for _ in 0..rate_disconnect() {
        match send.send_request(req()).await {
            Ok(r) => statuses.push(r.status().as_u16()),
            Err(e) => panic!("after {statuses:?}: {e}"),
        }
    }
    assert!(statuses.iter().all(|s| *s == 429), "{statuses:?}");
    // The connection is shut down: it ends, and takes no new request.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection ends")
        .unwrap()
        .ok();
    assert!(send.send_request(req()).await.is_err());
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// [limits] max_connections / max_connections_per_ip

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_connections_wait_until_one_closes() {
    let host = Host::start("a");
    let lb = lb(&host, "[limits]\nmax_connections = 2\n").await;

    let mut a = TcpStream::connect(lb.addr).await.unwrap();
    let mut b = TcpStream::connect(lb.addr).await.unwrap();
    assert_eq!(get_on(&mut a).await.status, 200);
    assert_eq!(get_on(&mut b).await.status, 200);
    assert_eq!(metric(&lb, "lb_connections").await, 2);

    // The third is not accepted: it waits in the listen backlog.
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(GET).await.unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), c.peek(&mut buf)).await;
    assert!(early.is_err(), "answered over the cap: {early:?}");
    assert_eq!(limited(&lb, "conns").await, 1);

    // One closes: the third is served, nothing lost.
    drop(a);
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 200);
    assert_eq!(get_on(&mut b).await.status, 200);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_per_ip_the_new_connection_is_closed_at_once() {
    let host = Host::start("a");
    let lb = lb(&host, "[limits]\nmax_connections_per_ip = 2\n").await;

    let mut a = connect_from("127.0.0.1", lb.addr).await;
    let mut b = connect_from("127.0.0.1", lb.addr).await;
    assert_eq!(get_on(&mut a).await.status, 200);
    assert_eq!(get_on(&mut b).await.status, 200);

    let mut c = connect_from("127.0.0.1", lb.addr).await;
    let _ = c.write_all(GET).await;
    let took = closed_within(&mut c, Duration::from_secs(5))
        .await
        .expect("the third from one address is closed");
    assert!(took < Duration::from_secs(5));
    assert_eq!(limited(&lb, "conns_per_ip").await, 1);

    // Another address is not affected; a closed one makes room.
    let mut d = connect_from("127.0.0.2", lb.addr).await;
    assert_eq!(get_on(&mut d).await.status, 200);
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut e = connect_from("127.0.0.1", lb.addr).await;
        if e.write_all(GET).await.is_ok() {
            let mut buf = [0u8; 12];
            if let Ok(Ok(12)) =
                tokio::time::timeout(Duration::from_secs(5), e.read_exact(&mut buf)).await
            {
                assert_eq!(&buf, b"HTTP/1.1 200");
                break;
            }
        }
        // The close of `a` may not have been seen yet.
        assert!(Instant::now() < deadline, "no room after a close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_on(&mut b).await.status, 200);
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// [timeouts] tunnel: an idle WebSocket

/// Opens a WebSocket through `lb` to the backend's `/echo`.
async fn websocket(lb: &Lb) -> TcpStream {
    let mut ws = TcpStream::connect(lb.addr).await.unwrap();
    ws.write_all(
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, rest) = read_head(&mut ws).await;
    assert_eq!(head.status, 101, "{head:?}");
    assert!(rest.is_empty());
    ws
}

async fn echo(ws: &mut TcpStream, msg: &[u8]) {
    ws.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), ws.read_exact(&mut back))
        .await
        .expect("echoed")
        .unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_after_the_tunnel_timeout() {
    let host = Host::start("a");
    let lb = lb(&host, "[timeouts]\ntunnel = \"1s\"\n").await;

    // Busy: traffic every 300 ms for 3 s keeps it open.
    let mut ws = websocket(&lb).await;
    for _ in 0..10 {
        echo(&mut ws, b"ping").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Idle: closed within two periods (give a shared machine room).
    let took = closed_within(&mut ws, Duration::from_secs(15))
        .await
        .expect("the idle tunnel is closed");
    assert!(took < Duration::from_secs(15));
    assert_eq!(limited(&lb, "tunnel_timeout").await, 1);
    // Its request is over and its backend connection closed.
    until_backend(&lb, host.addr, Duration::from_secs(10), |b| {
        b["in_flight"] == 0 && b["conns_open"] == 0
    })
    .await
    .expect("the tunnel's backend side is released");
    until_metric(&lb, "lb_connections", 0).await;
    lb.stop().await;
}

/// Waits until `series` reads `value` (connections close asynchronously).
async fn until_metric(lb: &Lb, series: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(lb, series).await;
        if v == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} = {v}, not {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// HTTP/2: streams stuck on a shut flow-control window

/// Opens an HTTP/2 connection that never lets the server send a byte of
/// any response body (`SETTINGS_INITIAL_WINDOW_SIZE = 0`, no
/// `WINDOW_UPDATE`) and starts `streams` requests for 100 MiB on it.
async fn shut_window_streams(lb: &Lb, streams: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let stream = TcpStream::connect(lb.addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .adaptive_window(false)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let mut tasks = vec![tokio::spawn(async move {
        let _ = conn.await;
    })];
    for _ in 0..streams {
        let mut send = send.clone();
        let url = lb.url("/text/104857600");
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(url).body(Empty::<Bytes>::new()).unwrap();
            // The head comes; the body never can. Hold the response.
            if let Ok(resp) = send.send_request(req).await {
                tokio::time::sleep(Duration::from_secs(120)).await;
                drop(resp);
            }
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_on_a_shut_window_are_capped_and_closed_by_the_send_timeout() {
    let host = Host::start("a");
    let lb = lb(&host, "[timeouts]\nsend = \"3s\"\n").await;

    // Two connections of 200 streams each (the probe that held 400 backend
    // connections).
    let mut tasks = shut_window_streams(&lb, 200).await;
    tasks.extend(shut_window_streams(&lb, 200).await);
    let cap = 2 * balancer::server::MAX_H2_STREAMS as u64;
    let start = Instant::now();
    let mut peak = 0;
    // Sampled until the send timeout lets them go: never more backend
    // connections than streams allowed.
    let released = loop {
        let b = backend_status(&lb.status().await, host.addr);
        let open = b["conns_open"].as_u64().unwrap();
        peak = peak.max(open);
        assert!(open <= cap, "{open} backend connections, cap {cap}");
        if peak > 0 && open == 0 && b["in_flight"] == 0 {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still held after 60 s: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(peak > 0, "no stream ever reached the backend");
    assert!(limited(&lb, "send_timeout").await >= 2, "{released:?}");
    for t in tasks {
        t.abort();
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_shut_window_streams_stay_within_max_conns_per_backend() {
    let host = Host::start("a");
    let lb = lb(
        &host,
        "[limits]\nmax_conns_per_backend = 20\n[timeouts]\nsend = \"3s\"\n",
    )
    .await;
    let tasks = shut_window_streams(&lb, 100).await;
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let b = backend_status(&lb.status().await, host.addr);
        let open = b["conns_open"].as_u64().unwrap();
        peak = peak.max(open);
        assert!(open <= 20, "{open} backend connections over a cap of 20");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(peak > 0, "no stream ever reached the backend");
    for t in tasks {
        t.abort();
    }
    lb.stop().await;
}
