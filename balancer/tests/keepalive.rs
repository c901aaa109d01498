//! Client keep-alive connections between requests. An idle HTTP/1.1
//! connection hibernates (it is a bare socket until its next bytes): these
//! tests check that nothing a client can see changes across that boundary
//! (reuse, pipelining, upgrades, the header, idle and drain timeouts) and
//! that HTTP/2 still gets to hyper's HTTP/2 server.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{
    backends_without_agents, closed_within, dead_addr, read_head, read_response, Host, Lb,
};

/// `GET path` on a keep-alive connection.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
}

/// A balancer in front of one backend with `[timeouts]` set by `timeouts`.
async fn lb(host: &Host, timeouts: &str) -> Lb {
    Lb::start(&format!(
        "{}\n[timeouts]\n{timeouts}\n",
        backends_without_agents(&[host.addr])
    ))
    .await
}

/// Sends `GET /delay?ms=i` on `stream` and checks the answer.
async fn delay_round_trip(stream: &mut TcpStream, i: usize) {
    stream
        .write_all(&get(&format!("/delay?ms={i}")))
        .await
        .unwrap();
    let r = read_response(stream).await;
    assert_eq!(r.status, 200, "request {i}: {r:?}");
    assert_eq!(r.text(), format!("delayed {i} ms\n"), "request {i}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_after_idle_gaps_share_one_connection() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"5s\"").await;

    // Gaps from none to longer than any burst: every request after a gap
    // wakes a hibernating connection, and each answer is its own.
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    for (i, gap) in [0u64, 0, 5, 50, 0, 200, 1, 300, 0, 20]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(gap)).await;
        delay_round_trip(&mut stream, i).await;
    }
    let status = lb.status().await;
    assert_eq!(
        support::backend_status(&status, host.addr)["requests"].as_u64(),
        Some(10),
        "{status}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_cross_a_hibernation_boundary() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"5s\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();

    // Three requests in one write after a quiet spell: answered in order.
    delay_round_trip(&mut stream, 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let three = [get("/delay?ms=1"), get("/delay?ms=2"), get("/delay?ms=3")].concat();
    stream.write_all(&three).await.unwrap();
    for i in 1..=3 {
        let r = read_response(&mut stream).await;
        assert_eq!(r.text(), format!("delayed {i} ms\n"));
    }

    // A request and the first half of the next in one write; the rest of
    // the second, and a third, after a pause in which the connection has
    // nothing to do but wait for the rest of that head.
    let second = get("/delay?ms=5");
    let (start, end) = second.split_at(second.len() / 2);
    stream
        .write_all(&[&get("/delay?ms=4")[..], start].concat())
        .await
        .unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.text(), "delayed 4 ms\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(&[end, &get("/delay?ms=6")[..]].concat())
        .await
        .unwrap();
    for i in 5..=6 {
        let r = read_response(&mut stream).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), format!("delayed {i} ms\n"));
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_waits_for_the_idle_timeout_not_the_header_timeout() {
    let host = Host::start("a");
    let lb = lb(&host, "header = \"300ms\"\nidle = \"5s\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    delay_round_trip(&mut stream, 0).await;
    // Three header timeouts without a byte: between requests the client
    // owes nothing, so the connection stays open.
    tokio::time::sleep(Duration::from_millis(900)).await;
    delay_round_trip(&mut stream, 1).await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_after_hibernating_is_cut_off_by_the_header_timeout() {
    let host = Host::start("a");
    let lb = lb(&host, "header = \"500ms\"\nidle = \"10s\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    delay_round_trip(&mut stream, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // One byte every 100 ms: the head is never whole.
    let started = Instant::now();
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ".iter().cycle() {
            if stream.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let took = closed_within(&mut stream, Duration::from_millis(100))
        .await
        .map(|_| started.elapsed())
        .expect("a trickled head kept its connection open");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "closed {took:?} after the head began; the header timeout is 500 ms"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_head_left_after_a_request_is_still_cut_off() {
    let host = Host::start("a");
    let lb = lb(&host, "header = \"500ms\"\nidle = \"10s\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    // A whole request and the start of another, which never completes.
    stream
        .write_all(&[&get("/")[..], b"GET / HTTP/1.1\r\nHost:"].concat())
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(read_response(&mut stream).await.status, 200);
    let took = closed_within(&mut stream, Duration::from_secs(3))
        .await
        .expect("a partial head kept its connection open");
    assert!(
        took < Duration::from_millis(1500),
        "closed {:?} after the partial head; the header timeout is 500 ms",
        started.elapsed()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_a_hibernating_connection() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"300ms\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    delay_round_trip(&mut stream, 0).await;
    let answered = Instant::now();
    closed_within(&mut stream, Duration::from_secs(2))
        .await
        .expect("idle connection not closed");
    let took = answered.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(600),
        "closed {took:?} after its last answer, with idle = 300ms"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_hibernating_connections_at_once_and_lets_requests_finish() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"60s\"\ndrain = \"10s\"").await;
    let mut idle = TcpStream::connect(lb.addr).await.unwrap();
    delay_round_trip(&mut idle, 0).await;
    let mut busy = TcpStream::connect(lb.addr).await.unwrap();
    busy.write_all(&get("/delay?ms=800")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopped = tokio::spawn(lb.stop());
    let took = closed_within(&mut idle, Duration::from_millis(500))
        .await
        .expect("a hibernating connection outlived the shutdown signal");
    assert!(took < Duration::from_millis(300), "closed after {took:?}");
    let r = read_response(&mut busy).await;
    assert_eq!(r.text(), "delayed 800 ms\n");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("drain did not end once the last request was answered")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_after_hibernating_is_tunnelled() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"5s\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    delay_round_trip(&mut stream, 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    stream
        .write_all(
            b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, rest) = read_head(&mut stream).await;
    assert_eq!(head.status, 101, "{head:?}");
    assert!(rest.is_empty(), "{rest:?}");
    // Quiet for a while, then both ways: the tunnel is not a keep-alive
    // connection, and nothing may end it at rest.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for msg in [&b"ping"[..], &[7u8; 100_000][..]] {
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
            .await
            .expect("no echo")
            .unwrap();
        assert!(back == msg, "echo differs");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_read_slowly_arrives_whole_before_the_next() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"5s\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    // More than the socket buffers hold: the balancer waits to flush it.
    stream
        .write_all(b"GET /bytes/3000000 HTTP/1.1\r\nHost: a\r\nAccept-Encoding: identity\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    delay_round_trip(&mut stream, 1).await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_request_body_is_never_taken_for_the_next_request() {
    // No backend: the balancer answers 503 before reading the body. The
    // body's bytes, which look like a request, must not be served as one.
    let lb = Lb::start(&backends_without_agents(&[dead_addr()])).await;
    let smuggled = get("/smuggled");
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                smuggled.len() + 100_000
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 503, "{r:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stream.write_all(&smuggled).await;
    let mut after = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut after)).await;
    assert!(
        !String::from_utf8_lossy(&after).contains("HTTP/1.1"),
        "a response to bytes of the body: {:?}",
        String::from_utf8_lossy(&after)
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served_on_one_connection_across_pauses() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"5s\"").await;
    let url = lb.url("/delay?ms=1");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for gap in [0, 100, 300] {
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let r = client
            .request(http::Request::get(&url).body(Default::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.status(), 200);
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_sent_in_pieces_is_recognised() {
    let host = Host::start("a");
    let lb = lb(&host, "idle = \"5s\"").await;
    let mut stream = TcpStream::connect(lb.addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    // The server's first frame is its SETTINGS.
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut frame))
        .await
        .expect("no HTTP/2 frame")
        .unwrap();
    assert_eq!(frame[3], 4, "first frame {frame:?} is not SETTINGS");
    lb.stop().await;
}
