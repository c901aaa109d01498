//! The proxy path end to end: the in-process balancer in front of real
//! backends (and raw-socket fakes where a real backend would be too
//! polite): forwarding and hop-by-hop headers, upgrades, HTTP/2 in,
//! streamed bodies, the error statuses and retry rules, malformed and slow
//! clients, idle connections and the admin endpoints.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{
    backend_status, backends_without_agents, closed_within, get, get_h2, hangup_backend,
    raw_backend, raw_exchange, read_head, read_response, request, FakeAgent, Host, Lb, Resp,
};

/// Probes slow enough never to interfere with what a test does.
const QUIET_HEALTH: &str = "[health]\ninterval = \"10s\"\n";

/// Round robin, so that the first request goes to the first backend.
const ROUND_ROBIN: &str = "[balance]\nstrategy = \"round-robin\"\n";

/// Asserts the contract's error shape: `status`, a `text/plain` body of one
/// non-empty line.
fn assert_error(r: &Resp, status: StatusCode) {
    assert_eq!(r.status, status, "{}", r.text());
    let ct = r.headers[http::header::CONTENT_TYPE].to_str().unwrap();
    assert!(ct.starts_with("text/plain"), "content-type {ct}");
    let text = r.text();
    let line = text.strip_suffix('\n').unwrap_or(&text);
    assert!(
        !line.trim().is_empty() && !line.contains('\n'),
        "not one line saying why: {text:?}"
    );
}

fn sha1_hex(data: &[u8]) -> String {
    sha1_smol::Sha1::from(data).digest().to_string()
}

/// Deterministic, non-repeating-looking test data.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// The lines of a backend `/headers` answer after the request line.
fn header_lines(body: &str) -> Vec<String> {
    body.lines().skip(1).map(str::to_ascii_lowercase).collect()
}

// ---------------------------------------------------------------------------
// Headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_the_client_host_is_kept() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    let r = request(
        Method::GET,
        &lb.url("/headers"),
        &[("host", "shop.example"), ("x-forwarded-for", "203.0.113.9")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let lines = header_lines(&r.text());
    for expected in [
        "x-forwarded-for: 203.0.113.9, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example",
        "host: shop.example",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "missing {expected:?} in:\n{}",
            r.text()
        );
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("host:")).count(),
        1,
        "{}",
        r.text()
    );

    // Without an incoming X-Forwarded-For, the client's IP alone.
    let r = get(&lb.url("/headers")).await;
    let lines = header_lines(&r.text());
    assert!(
        lines.iter().any(|l| l == "x-forwarded-for: 127.0.0.1"),
        "{}",
        r.text()
    );
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("x-forwarded-host: {}", lb.addr)),
        "{}",
        r.text()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_names_the_backend_it_reaches_even_after_a_retry() {
    // Round robin starts with the first backend, which refuses: the request
    // is retried on the second, and must name that one, not the first.
    let dead = support::dead_addr();
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n{QUIET_HEALTH}",
        backends_without_agents(&[dead, host.addr])
    ))
    .await;
    let r = raw_exchange(lb.addr, b"GET /headers HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = header_lines(&r.text());
    let hosts: Vec<&String> = lines.iter().filter(|l| l.starts_with("host:")).collect();
    assert_eq!(hosts, [&format!("host: {}", host.addr)], "{}", r.text());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_do_not_reach_the_backend() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    let r = raw_exchange(
        lb.addr,
        b"GET /headers HTTP/1.1\r\n\
          Host: shop.example\r\n\
          Connection: close, x-drop\r\n\
          x-drop: 1\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Trailer: x-sum\r\n\
          Proxy-Connection: keep-alive\r\n\
          Upgrade: h2c\r\n\
          x-end-to-end: kept\r\n\
          \r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = header_lines(&r.text());
    assert!(
        lines.iter().any(|l| l == "x-end-to-end: kept"),
        "{}",
        r.text()
    );
    for dropped in [
        "x-drop:",
        "keep-alive:",
        "te:",
        "trailer:",
        "proxy-connection:",
        "upgrade:",
    ] {
        assert!(
            !lines.iter().any(|l| l.starts_with(dropped)),
            "{dropped} reached the backend:\n{}",
            r.text()
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("connection:") && (l.contains("x-drop") || l.contains("close"))),
        "the client's Connection header reached the backend:\n{}",
        r.text()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let fake = raw_backend(
        b"HTTP/1.1 200 OK\r\n\
          Content-Type: text/plain\r\n\
          Content-Length: 3\r\n\
          Connection: x-secret\r\n\
          x-secret: 1\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          Trailer: x-sum\r\n\
          Upgrade: h2c\r\n\
          x-end-to-end: kept\r\n\
          \r\n\
          ok\n",
    )
    .await;
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[fake])
    ))
    .await;

    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "ok\n");
    assert_eq!(r.headers["x-end-to-end"], "kept");
    for dropped in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !r.headers.contains_key(dropped),
            "{dropped} reached the client: {:?}",
            r.headers
        );
    }
    assert!(
        r.headers
            .get_all(http::header::CONNECTION)
            .iter()
            .all(|v| !v.to_str().unwrap().contains("x-secret")),
        "{:?}",
        r.headers
    );
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Protocols and bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    let mut ws = TcpStream::connect(lb.addr).await.unwrap();
    ws.write_all(
        b"GET /echo HTTP/1.1\r\n\
          Host: chat.example\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          \r\n",
    )
    .await
    .unwrap();
    let (head, rest) = read_head(&mut ws).await;
    assert_eq!(head.status, 101, "{head:?}");
    // RFC 6455 §1.3's worked example.
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head:?}"
    );
    assert!(
        head.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head:?}"
    );
    assert!(
        head.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{head:?}"
    );
    assert_eq!(head.header("x-backend"), Some("a"));
    assert!(rest.is_empty(), "bytes before any were sent: {rest:?}");

    // Several round trips, small and large: every byte written comes back.
    for (i, len) in [1usize, 5, 1000, 200_000, 17].into_iter().enumerate() {
        let msg: Vec<u8> = pattern(len).iter().map(|b| b ^ i as u8).collect();
        let (mut rd, mut wr) = ws.split();
        let write = async { wr.write_all(&msg).await.unwrap() };
        let read = async {
            let mut back = vec![0u8; len];
            rd.read_exact(&mut back).await.unwrap();
            back
        };
        let ((), back) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
                .await
                .unwrap_or_else(|_| panic!("round trip {i} ({len} bytes) did not come back"));
        assert!(back == msg, "round trip {i}: echoed bytes differ");
    }

    // Closing our side ends the tunnel: the backend's EOF comes back.
    ws.shutdown().await.unwrap();
    closed_within(&mut ws, Duration::from_secs(5))
        .await
        .expect("tunnel not closed after the client's EOF");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_the_backend_as_http11_with_host_from_authority() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    let r = get_h2(&lb.url("/headers"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.backend(), "a");
    let text = r.text();
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("GET ") && first.ends_with(" HTTP/1.1"),
        "request line at the backend: {first:?}"
    );
    let lines = header_lines(&text);
    assert!(
        lines.iter().any(|l| *l == format!("host: {}", lb.addr)),
        "Host not taken from the :authority:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("x-forwarded-host: {}", lb.addr)),
        "{text}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_post_streams_through_and_its_sha1_matches() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    let body = pattern(1 << 20);
    let r = request(
        Method::POST,
        &lb.url("/sha1"),
        &[("content-type", "application/octet-stream")],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text().trim(), sha1_hex(&body));
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Error statuses and retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_dead_gives_503_at_once() {
    let dead = [support::dead_addr(), support::dead_addr()];
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&dead)
    ))
    .await;

    for _ in 0..3 {
        let start = Instant::now();
        let r = get(&lb.url("/")).await;
        let took = start.elapsed();
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE);
        assert!(took < Duration::from_secs(1), "503 took {took:?}");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_request_timeout_gives_504() {
    let host = Host::start("slow");
    let lb = Lb::start(&format!(
        "{}\n[timeouts]\nrequest = \"300ms\"\n",
        backends_without_agents(&[host.addr])
    ))
    .await;

    let start = Instant::now();
    let r = get(&lb.url("/delay?ms=2000")).await;
    let took = start.elapsed();
    assert_error(&r, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "504 after {took:?}"
    );
    // A backend within the limit still answers.
    let r = get(&lb.url("/delay?ms=10")).await;
    assert_eq!(r.status, StatusCode::OK);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_backend_hangs_up_is_retried_on_another() {
    let hangup = hangup_backend().await;
    let host = Host::start("good");
    let lb = Lb::start(&format!(
        "{}\n{ROUND_ROBIN}{QUIET_HEALTH}",
        backends_without_agents(&[hangup, host.addr])
    ))
    .await;

    for _ in 0..4 {
        let r = request(
            Method::GET,
            &lb.url("/headers"),
            &[("x-custom", "kept"), ("host", "shop.example")],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.backend(), "good");
        // A retried request carries the same headers as a first attempt.
        let seen = r.text();
        for line in [
            "x-custom: kept",
            "host: shop.example",
            "x-forwarded-for: 127.0.0.1",
        ] {
            assert!(
                seen.lines().any(|l| l == line),
                "{line:?} missing from\n{seen}"
            );
        }
    }
    // Round robin sent some of them to the hang-up backend first.
    let status = lb.status().await;
    let errors = backend_status(&status, hangup)["errors"].as_u64().unwrap();
    assert!(errors >= 1, "the hang-up backend was never tried: {status}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_backend_hangs_up_gets_502_and_its_body_reaches_no_other_backend() {
    let hangup = hangup_backend().await;
    let host = Host::start("good");
    let lb = Lb::start(&format!(
        "{}\n{ROUND_ROBIN}{QUIET_HEALTH}",
        backends_without_agents(&[hangup, host.addr])
    ))
    .await;

    let body = pattern(64 * 1024);
    let mut bad_gateways = 0;
    for _ in 0..4 {
        let before = backend_status(&lb.status().await, host.addr)["requests"]
            .as_u64()
            .unwrap();
        let r = request(
            Method::POST,
            &lb.url("/sha1"),
            &[],
            Bytes::from(body.clone()),
        )
        .await;
        let after = backend_status(&lb.status().await, host.addr)["requests"]
            .as_u64()
            .unwrap();
        if r.status == StatusCode::OK {
            assert_eq!(r.backend(), "good");
            assert_eq!(r.text().trim(), sha1_hex(&body));
            assert_eq!(after, before + 1);
        } else {
            assert_error(&r, StatusCode::BAD_GATEWAY);
            assert_eq!(
                after, before,
                "a POST body the hang-up backend received was sent again to the good one"
            );
            bad_gateways += 1;
        }
    }
    assert!(
        bad_gateways >= 1,
        "round robin never chose the hang-up backend"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_refused_backend_is_retried_with_its_body() {
    let dead = support::dead_addr();
    let host = Host::start("good");
    let lb = Lb::start(&format!(
        "{}\n{ROUND_ROBIN}{QUIET_HEALTH}",
        backends_without_agents(&[dead, host.addr])
    ))
    .await;

    // The first request of a round robin goes to the first backend: dead.
    let body = pattern(1 << 20);
    let r = request(
        Method::POST,
        &lb.url("/sha1"),
        &[],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.backend(), "good");
    assert_eq!(r.text().trim(), sha1_hex(&body));
    let status = lb.status().await;
    assert!(
        backend_status(&status, dead)["errors"].as_u64().unwrap() >= 1,
        "the refused backend was never tried: {status}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_protocol_error_gives_502() {
    let garbage = raw_backend(b"this is not HTTP\r\n\r\n").await;
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[garbage])
    ))
    .await;

    let r = get(&lb.url("/")).await;
    assert_error(&r, StatusCode::BAD_GATEWAY);
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Malformed and slow clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    let r = raw_exchange(lb.addr, b"\x01\x02 not http at all \x7f\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = raw_exchange(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_over_64_kib_get_431_and_smaller_ones_pass() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    let head = |total: usize| {
        let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        let value = "v".repeat(1000);
        for i in 0..total / 1000 {
            req.push_str(&format!("x-filler-{i}: {value}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    };
    let r = raw_exchange(lb.addr, &head(32 * 1024)).await;
    assert_eq!(r.status, 200, "a 32 KiB head was refused: {r:?}");
    let r = raw_exchange(lb.addr, &head(70 * 1024)).await;
    assert_eq!(r.status, 431, "{r:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_attempt_forwards_the_same_headers() {
    // With no retries every request is its own last attempt, which hands
    // the headers over instead of copying them.
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n[balance]\nretries = 0\n",
        backends_without_agents(&[host.addr])
    ))
    .await;
    let r = request(
        Method::GET,
        &lb.url("/headers"),
        &[("x-custom", "kept"), ("host", "shop.example")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = r.text();
    for line in [
        "x-custom: kept",
        "host: shop.example",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-host: shop.example",
    ] {
        assert!(
            seen.lines().any(|l| l == line),
            "{line:?} missing from\n{seen}"
        );
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_beside_chunked_cannot_smuggle_a_request() {
    // RFC 9112 §6.3: with both, chunked framing wins and a proxy must not
    // forward the stale Content-Length, or the backend would read 4 bytes
    // of body and take the rest as a second, smuggled request.
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;
    let r = raw_exchange(
        lb.addr,
        b"POST /echo-body HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    // Had the stale `Content-Length: 4` been forwarded with the 5 decoded
    // bytes, the backend exchange would break (502) or echo "hell".
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"hello", "{r:?}");
    // And the bytes after the chunked body (on a `Connection: close`
    // request) were not served as a request of their own.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = lb.status().await;
    assert_eq!(
        backend_status(&status, host.addr)["requests"].as_u64(),
        Some(1),
        "{status}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_head_too_slowly_is_disconnected() {
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n[timeouts]\nheader = \"500ms\"\n",
        backends_without_agents(&[host.addr])
    ))
    .await;

    let mut slow = TcpStream::connect(lb.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("a stalled request head kept its connection open");
    assert!(
        took >= Duration::from_millis(400),
        "closed after {took:?}, before the header timeout"
    );
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Idle connections

const ONE_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_and_an_active_one_is_not() {
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n[timeouts]\nidle = \"300ms\"\n",
        backends_without_agents(&[host.addr])
    ))
    .await;

    let mut idle = TcpStream::connect(lb.addr).await.unwrap();
    idle.write_all(ONE_GET).await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);

    // A second connection sends a request every 100 ms for 1.2 s: it is
    // never idle for 300 ms and must stay open throughout.
    let mut active = TcpStream::connect(lb.addr).await.unwrap();
    for i in 0..12 {
        active.write_all(ONE_GET).await.unwrap();
        let r = read_response(&mut active).await;
        assert_eq!(r.status, 200, "request {i} on the active connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Meanwhile (1.2 s) the idle one has been closed.
    closed_within(&mut idle, Duration::from_millis(100))
        .await
        .expect("idle connection not closed after 1.2 s with idle = 300ms");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waiting_for_a_slow_response_is_not_idle() {
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n[timeouts]\nidle = \"300ms\"\n",
        backends_without_agents(&[host.addr])
    ))
    .await;

    // No byte moves for a whole second, but a request is in progress: the
    // client is waiting on the backend, not idling on a keep-alive.
    let mut waiting = TcpStream::connect(lb.addr).await.unwrap();
    waiting
        .write_all(b"GET /delay?ms=1000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), waiting.read_to_end(&mut answer))
        .await
        .expect("no answer in 5 s")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.is_empty(),
        "the balancer closed a connection whose request was still in progress \
         (the idle timeout counted waiting for the backend as idle)"
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("delayed 1000 ms\n"),
        "{answer}"
    );
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Admin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_state_and_metrics() {
    let host = Host::start("a");
    let agent = FakeAgent::start(0.25).await;
    let lb = Lb::start(&format!(
        "backends = [{{ addr = \"{}\", agent = \"{}\" }}]\n[agent]\ninterval = \"100ms\"\n",
        host.addr, agent.addr
    ))
    .await;
    lb.wait_for_reports().await;
    for _ in 0..3 {
        assert_eq!(get(&lb.url("/")).await.status, StatusCode::OK);
    }
    let admin = |path: &str| format!("http://{}{path}", lb.admin);

    let r = get(&admin("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK);

    let r = get(&admin("/status.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let status: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let b = backend_status(&status, host.addr);
    assert_eq!(b["addr"], host.addr.to_string());
    assert_eq!(b["healthy"], true, "{b}");
    assert_eq!(b["cpu"].as_f64(), Some(0.25), "{b}");
    assert_eq!(b["memory"].as_f64(), Some(0.3), "{b}");
    assert_eq!(b["in_flight"].as_u64(), Some(0), "{b}");
    assert_eq!(b["requests"].as_u64(), Some(3), "{b}");
    assert_eq!(b["errors"].as_u64(), Some(0), "{b}");

    let r = get(&admin("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = r.text();
    assert!(metrics.contains("# TYPE lb_backend_up gauge"), "{metrics}");
    let up_line = metrics
        .lines()
        .find(|l| l.starts_with("lb_backend_up{") && l.contains(&host.addr.to_string()))
        .unwrap_or_else(|| panic!("no lb_backend_up series for {}:\n{metrics}", host.addr));
    assert!(up_line.ends_with(" 1"), "{up_line}");
    // Every sample line is `name{labels} value` with a numeric value.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }

    let r = get(&admin("/status")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().to_ascii_lowercase().contains("<html"), "not HTML");
    lb.stop().await;
}
