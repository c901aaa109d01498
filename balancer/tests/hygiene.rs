//! HTTP hygiene, over real sockets (raw TCP where a well-behaved client
//! would not send the request): two `Host` headers get `400` and reach no
//! backend; for HTTP/2, `:authority` wins over a differing `Host`; error
//! bodies say what happened without naming backend addresses (those go to
//! the log and `/status.json`); an unsolicited `101` from a backend is a
//! `502`; hyper's own `400` and `431` carry a one-line reason and
//! `Connection: close`; and a reload that changes `listen` leaves
//! `/status.json` reporting the address actually listened on.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::{
    backend_status, backends_without_agents, get, get_h2, hangup_backend, raw_backend,
    raw_exchange, read_response, scripted_backend, Host, Lb, RawResp, Resp, Step,
};
use tokio::io::AsyncWriteExt;

const QUIET_HEALTH: &str = "[health]\ninterval = \"10s\"\n";

/// A one-line plain-text body, saying why, that names no backend.
fn assert_reason(status: u16, content_type: Option<&str>, body: &str, backends: &[SocketAddr]) {
    let ct = content_type.unwrap_or_default();
    assert!(
        ct.starts_with("text/plain"),
        "{status}: content-type {ct:?}"
    );
    let line = body.strip_suffix('\n').unwrap_or(body);
    assert!(
        !line.trim().is_empty() && !line.contains('\n'),
        "{status}: not one line saying why: {body:?}"
    );
    for b in backends {
        for leak in [b.to_string(), b.ip().to_string(), format!(":{}", b.port())] {
            assert!(
                !body.contains(&leak),
                "{status}: the body names {leak}: {body:?}"
            );
        }
    }
}

fn assert_resp_reason(r: &Resp, status: StatusCode, backends: &[SocketAddr]) {
    assert_eq!(r.status, status, "{}", r.text());
    let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
    assert_reason(status.as_u16(), ct, &r.text(), backends);
}

fn assert_raw_reason(r: &RawResp, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert_reason(status, r.header("content-type"), &r.text(), &[]);
}

// ---------------------------------------------------------------------------
// Host

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_get_400_and_never_reach_a_backend() {
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[host.addr])
    ))
    .await;
    for request in [
        &b"GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"[..],
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: a.example\r\nX: 1\r\nHOST: b.example\r\n\r\n",
        b"POST /sha1 HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let r = raw_exchange(lb.addr, request).await;
        assert_raw_reason(&r, 400);
        assert!(r.text().contains("Host"), "{}", r.text());
    }
    let status = lb.status().await;
    assert_eq!(
        backend_status(&status, host.addr)["requests"],
        0,
        "a request with two Hosts reached the backend: {status}"
    );
    // One Host is fine.
    let r = raw_exchange(lb.addr, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    lb.stop().await;
}

/// The `host:` lines the demo backend's `/headers` saw.
fn hosts_seen(body: &str) -> Vec<String> {
    body.lines()
        .skip(1)
        .map(str::to_ascii_lowercase)
        .filter(|l| l.starts_with("host:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_http2_the_authority_wins_over_a_differing_host_header() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;
    // The URL's authority travels as `:authority`; the header says otherwise.
    let r = get_h2(&lb.url("/headers"), &[("host", "evil.example")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let authority = lb.addr.to_string();
    assert_eq!(
        hosts_seen(&r.text()),
        [format!("host: {authority}")],
        "{}",
        r.text()
    );
    assert!(
        r.text()
            .to_ascii_lowercase()
            .contains(&format!("x-forwarded-host: {authority}")),
        "{}",
        r.text()
    );
    // Without a Host header the authority is the Host, as before.
    let r = get_h2(&lb.url("/headers"), &[]).await;
    assert_eq!(hosts_seen(&r.text()), [format!("host: {authority}")]);
    // HTTP/1.1's absolute-form likewise (RFC 9112 section 3.2.2).
    let r = raw_exchange(
        lb.addr,
        b"GET http://auth.example:8080/headers HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        hosts_seen(&r.text()),
        ["host: auth.example:8080"],
        "{}",
        r.text()
    );
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Error bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_say_what_happened_without_backend_addresses() {
    // 503: nothing listens.
    let dead = support::dead_addr();
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[dead])
    ))
    .await;
    let r = get(&lb.url("/")).await;
    assert_resp_reason(&r, StatusCode::SERVICE_UNAVAILABLE, &[dead]);
    assert!(r.text().contains("connect"), "{}", r.text());
    // The detail is in /status.json.
    let status = lb.status().await;
    let last = backend_status(&status, dead)["last_error"].to_string();
    assert!(last.contains("refused"), "{status}");
    lb.stop().await;

    // 502: the backend hangs up after reading the request.
    let hangup = hangup_backend().await;
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[hangup])
    ))
    .await;
    let r = get(&lb.url("/")).await;
    assert_resp_reason(&r, StatusCode::BAD_GATEWAY, &[hangup]);
    assert!(r.text().contains("closed the connection"), "{}", r.text());
    let status = lb.status().await;
    assert!(
        !backend_status(&status, hangup)["last_error"].is_null(),
        "{status}"
    );
    lb.stop().await;

    // 502: not HTTP.
    let garbage = raw_backend(b"this is not HTTP\r\n\r\n").await;
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[garbage])
    ))
    .await;
    let r = get(&lb.url("/")).await;
    assert_resp_reason(&r, StatusCode::BAD_GATEWAY, &[garbage]);
    assert!(r.text().contains("not valid HTTP"), "{}", r.text());
    lb.stop().await;

    // 504: no answer in time.
    let slow = scripted_backend(vec![Step::Sleep(Duration::from_secs(5))]).await;
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}[timeouts]\nrequest = \"300ms\"\n",
        backends_without_agents(&[slow])
    ))
    .await;
    let r = get(&lb.url("/")).await;
    assert_resp_reason(&r, StatusCode::GATEWAY_TIMEOUT, &[slow]);
    assert!(r.text().contains("did not answer"), "{}", r.text());
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Unsolicited 101

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_101_from_a_backend_becomes_502() {
    let switcher = raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    let lb = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[switcher])
    ))
    .await;
    let r = raw_exchange(lb.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_raw_reason(&r, 502);
    assert!(r.text().contains("switched protocols"), "{}", r.text());
    // Over HTTP/2 too (which has no 101 at all).
    let r = get_h2(&lb.url("/"), &[]).await;
    assert_resp_reason(&r, StatusCode::BAD_GATEWAY, &[switcher]);
    let status = lb.status().await;
    let b = backend_status(&status, switcher);
    assert!(
        b["errors"].as_u64().unwrap() >= 2,
        "not counted as a backend error: {status}"
    );
    assert!(
        b["last_error"].to_string().contains("101"),
        "the detail names the 101: {status}"
    );
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// hyper's own 400 and 431

/// Sends `bytes` on a fresh connection; the answer must be `status` with a
/// reason and `Connection: close`, and the connection must then close.
async fn assert_parse_error(lb: &Lb, bytes: &[u8], status: u16) {
    let mut stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let r = read_response(&mut stream).await;
    assert_raw_reason(&r, status);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    support::closed_within(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypers_own_400_and_431_carry_a_reason_and_close() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;
    assert_parse_error(&lb, b"\x01\x02 not http at all \x7f\r\n\r\n", 400).await;
    assert_parse_error(
        &lb,
        b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n",
        400,
    )
    .await;
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..70 {
        big.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert_parse_error(&lb, &big, 431).await;
    // Garbage pipelined after a good request, and garbage on a kept-alive
    // connection after a pause (a later burst, after hibernating).
    let mut pipelined = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    pipelined.extend_from_slice(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    stream.write_all(&pipelined).await.unwrap();
    // Both answers, read whole (they may come in one segment), to the close.
    let mut both = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut both);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the connection closes after the 400")
        .unwrap();
    let both = String::from_utf8_lossy(&both);
    let second = both.rfind("HTTP/1.1 ").unwrap();
    assert!(both.starts_with("HTTP/1.1 200 "), "{both}");
    let (head, body) = both[second..].split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400 "), "{both}");
    assert!(head.contains("text/plain"), "{both}");
    assert_reason(400, Some("text/plain"), body, &[]);
    let mut stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut stream).await;
    assert_raw_reason(&r, 400);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    // A backend's own empty 400 passes through untouched.
    let empty_400 = raw_backend(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
    let lb2 = Lb::start(&format!(
        "{}\n{QUIET_HEALTH}",
        backends_without_agents(&[empty_400])
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(lb2.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut stream).await;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.body.is_empty(),
            "the backend's answer was rewritten: {r:?}"
        );
        assert_eq!(r.header("connection"), None, "{r:?}");
    }
    lb2.stop().await;
    lb.stop().await;
}

// ---------------------------------------------------------------------------
// Reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_listen_keeps_reporting_the_address_listened_on() {
    let host = Host::start("a");
    let backends = backends_without_agents(&[host.addr]);
    let lb = Lb::start(&backends).await;
    let elsewhere = support::dead_addr();
    let config = support::config(&format!(
        "listen = \"{elsewhere}\"\n{backends}\n[admin]\nlisten = \"127.0.0.1:1\"\n"
    ));
    lb.balancer.reload(config);
    let status = lb.status().await;
    assert_eq!(status["listen"], lb.addr.to_string(), "{status}");
    // Still served where it was.
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, StatusCode::OK);
    // The rest of the reload applied: the backend list is the new one.
    assert_eq!(status["backends"].as_array().unwrap().len(), 1);
    lb.stop().await;
}
