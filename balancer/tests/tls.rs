//! TLS termination end to end (contract: `[tls]`): certificates made in the
//! test with rcgen (a CA and leaves it signs), the in-process balancer with
//! a plain and a TLS listener, a backend that echoes what it received, and
//! real clients: hyper over tokio-rustls and `curl --http2 --cacert`.
//!
//! - HTTP/1.1 and HTTP/2 chosen by ALPN reach the backend with
//!   `X-Forwarded-Proto: https`; TLS 1.2 works; `curl` gets HTTP/2.
//! - SNI picks the certificate (exact, wildcard, default), checked by the
//!   certificate the client is served.
//! - A TLS 1.1 ClientHello, plain HTTP and garbage on the TLS port are
//!   refused and the listener carries on.
//! - A handshake that never completes is closed after the header timeout;
//!   a keep-alive connection is not closed at the header timeout between
//!   requests, but a head that stalls is.
//! - A reload serves the new certificate to new connections while an
//!   established one keeps working.
//! - `redirect_http`: `308` to the right `https://` location.
//! - Worker threads serve TLS connections; a WebSocket over TLS is
//!   tunnelled both ways.
//!
//! The binary's side (`--check`, SIGHUP, config errors naming the file and
//! key, a TLS address in use) is in `tls/cli.rs`; the shared helpers in
//! `tls/pki.rs`.

#[path = "tls/cli.rs"]
mod cli;
#[path = "tls/pki.rs"]
mod pki;
mod support;

use std::time::{Duration, Instant};

use http::{StatusCode, Version};
use rustls::pki_types::CertificateDer;
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pki::{echo_backend, tls_connect, Client, Leaf, Pki, TlsLb};

/// Every client-side wait is bounded by this.
const LIMIT: Duration = Duration::from_secs(30);

/// A CA, a default certificate and a balancer in front of an echo backend.
async fn setup(name: &str, tls_extra: &str, extra: &str) -> (Pki, Leaf, TlsLb) {
    let pki = Pki::new(name);
    let site = pki.leaf("site", &["site.test", "127.0.0.1"]);
    let backend = echo_backend().await;
    let body = format!("{}{tls_extra}", site.toml());
    let lb = TlsLb::start(backend, &body, extra).await;
    (pki, site, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_http2_or_http1_and_the_backend_sees_https() {
    let (pki, site, lb) = setup("alpn", "", "").await;
    for (alpn, want) in [
        (&["h2", "http/1.1"][..], Version::HTTP_2),
        (&["http/1.1"][..], Version::HTTP_11),
        (&[][..], Version::HTTP_11),
    ] {
        let config = pki.client(alpn, false, None);
        let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
        assert_eq!(stream.get_ref().1.peer_certificates().unwrap()[0], site.der);
        let mut client = Client::over(stream).await;
        let r = client.get("site.test", "/echo?x=1").await;
        assert_eq!(r.status, StatusCode::OK, "{alpn:?}: {}", r.body);
        assert_eq!(r.version, want, "{alpn:?}");
        assert!(
            r.body.contains("x-forwarded-proto: https\n"),
            "{alpn:?}: {}",
            r.body
        );
        assert!(
            r.body.contains("x-forwarded-host: site.test\n"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains("x-forwarded-for: 127.0.0.1\n"),
            "{}",
            r.body
        );
        assert!(r.body.contains("path: /echo?x=1\n"), "{}", r.body);
        // The connection serves more than one request.
        let again = client.get("site.test", "/echo").await;
        assert_eq!(again.status, StatusCode::OK);
    }
    // TLS 1.2 as well as 1.3 (the default).
    let config = pki.client(&["h2"], false, Some(&rustls::version::TLS12));
    let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let r = Client::over(stream).await.get("site.test", "/echo").await;
    assert_eq!(r.version, Version::HTTP_2);
    assert!(r.body.contains("x-forwarded-proto: https\n"), "{}", r.body);
    // The plain listener still says http.
    let plain = support::get(&format!("http://{}/echo", lb.plain)).await;
    assert!(
        plain.text().contains("x-forwarded-proto: http\n"),
        "{}",
        plain.text()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_the_default_certificate() {
    let pki = Pki::new("sni");
    let site = pki.leaf("site", &["site.test", "127.0.0.1"]);
    let api = pki.leaf("api", &["api.test"]);
    let wild = pki.leaf("wild", &["*.apps.test"]);
    let backend = echo_backend().await;
    let body = format!(
        "{}sni = [{{ names = [\"api.test\"], {} }}, {{ names = [\"*.apps.test\"], {} }}]\n",
        site.toml(),
        api.inline(),
        wild.inline()
    );
    let lb = TlsLb::start(backend, &body, "").await;
    // The client accepts any name (the chain is still checked against the
    // CA), so that the certificate served to each name can be compared.
    let config = pki.client(&["h2", "http/1.1"], true, None);
    for (sni, want) in [
        ("api.test", &api),
        ("API.Test", &api),
        ("one.apps.test", &wild),
        ("two.apps.test", &wild),
        ("a.b.apps.test", &site),
        ("apps.test", &site),
        ("unknown.test", &site),
        ("site.test", &site),
        // An IP address: rustls sends no SNI at all.
        ("127.0.0.1", &site),
    ] {
        let stream = tls_connect(lb.tls, sni, &config)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let served = &stream.get_ref().1.peer_certificates().unwrap()[0];
        assert!(
            *served == want.der,
            "{sni}: served another certificate than {}",
            want.stem
        );
        let r = Client::over(stream).await.get(sni, "/echo").await;
        assert_eq!(r.status, StatusCode::OK, "{sni}");
    }
    // And a strict client (names checked too) is happy with each.
    let strict = pki.client(&["h2"], false, None);
    for sni in ["api.test", "x.apps.test", "site.test"] {
        tls_connect(lb.tls, sni, &strict)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
    }
    lb.stop().await;
}

/// A ClientHello claiming `version` (`0x0302`: TLS 1.1, `0x0303`: TLS 1.2)
/// without a `supported_versions` extension, offering ECDHE-ECDSA and
/// ECDHE-RSA with AES-GCM and what TLS 1.2 needs with them (groups,
/// signature algorithms, point formats).
fn client_hello(version: u16) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend([0x01, 0x00]);
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // groups
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, // sig algs
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // point formats
    ];
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01, 0];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

fn tls11_client_hello() -> Vec<u8> {
    client_hello(0x0302)
}

/// Reads until the peer closes (EOF or reset), within `limit`; everything
/// read, and how long it took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {limit:?}"));
    (seen, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_plain_http_and_garbage_are_refused_and_the_listener_carries_on() {
    let (pki, _site, lb) = setup("refuse", "", "").await;

    // The same hello claiming TLS 1.2 gets a ServerHello (a handshake
    // record), so what refuses the TLS 1.1 one is its version alone.
    let mut modern = TcpStream::connect(lb.tls).await.unwrap();
    modern.write_all(&client_hello(0x0303)).await.unwrap();
    let mut first = [0u8; 1];
    tokio::time::timeout(LIMIT, modern.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first[0], 0x16, "a TLS 1.2 hello got no ServerHello");
    let mut old = TcpStream::connect(lb.tls).await.unwrap();
    old.write_all(&tls11_client_hello()).await.unwrap();
    let (answer, _) = read_until_closed(&mut old, LIMIT).await;
    // One alert record, fatal (2), protocol_version (70; RFC 8446 §6.2),
    // and the end of the connection.
    assert_eq!(answer.len(), 7, "{answer:?}");
    assert_eq!(answer[0], 0x15, "no alert: {answer:?}");
    assert_eq!(&answer[5..], &[2, 70], "{answer:?}");

    let mut plain = TcpStream::connect(lb.tls).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut plain, LIMIT).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.ends_with("use an https:// address\n"), "{text}");

    let mut garbage = TcpStream::connect(lb.tls).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .unwrap();
    read_until_closed(&mut garbage, LIMIT).await;
    let mut binary = TcpStream::connect(lb.tls).await.unwrap();
    binary.write_all(&[0u8; 64]).await.unwrap();
    read_until_closed(&mut binary, LIMIT).await;

    // Still serving.
    let config = pki.client(&["h2"], false, None);
    let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    let r = Client::over(stream).await.get("site.test", "/echo").await;
    assert_eq!(r.status, StatusCode::OK);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_or_head_is_closed_after_the_header_timeout() {
    let (pki, _site, lb) =
        setup("stall", "", "[timeouts]\nheader = \"1s\"\nidle = \"60s\"\n").await;
    // Nothing at all, and a ClientHello's record header alone.
    for sent in [&b""[..], &tls11_client_hello()[..5]] {
        let mut s = TcpStream::connect(lb.tls).await.unwrap();
        s.write_all(sent).await.unwrap();
        let (_, took) = read_until_closed(&mut s, Duration::from_secs(15)).await;
        assert!(
            took >= Duration::from_millis(900),
            "closed after {took:?}: not the timeout"
        );
    }
    // A handshake, then no request: closed as a silent plain client is.
    let config = pki.client(&["http/1.1"], false, None);
    let mut tls = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf))
        .await
        .expect("a silent TLS client is closed within the header timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(start.elapsed() >= Duration::from_millis(900));

    // Between keep-alive requests the idle timeout applies, not the
    // header one: a pause of twice the header timeout is fine.
    let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    let mut client = Client::over(stream).await;
    assert_eq!(
        client.get("site.test", "/echo").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        client.get("site.test", "/echo").await.status,
        StatusCode::OK
    );

    // But a head begun and not finished is cut at the header timeout.
    let mut tls = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("x-forwarded-proto") {
        let n = tokio::time::timeout(LIMIT, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tls.write_all(b"GET /echo HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    let closed = async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .expect("a stalled head is cut at the header timeout");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_while_old_connections_keep_going() {
    let pki = Pki::new("reload");
    let old_cert = pki.leaf("old", &["site.test"]);
    let new_cert = pki.leaf("new", &["site.test"]);
    assert!(old_cert.der != new_cert.der);
    let backend = echo_backend().await;
    let lb = TlsLb::start(backend, &old_cert.toml(), "").await;

    // One client configuration throughout: it keeps session tickets, and
    // resumes where it can.
    let config = pki.client(&["h2", "http/1.1"], false, None);
    let h1 = pki.client(&["http/1.1"], false, None);
    let mut kept = Vec::new();
    for config in [&config, &h1] {
        let stream = tls_connect(lb.tls, "site.test", config).await.unwrap();
        assert!(stream.get_ref().1.peer_certificates().unwrap()[0] == old_cert.der);
        let mut client = Client::over(stream).await;
        assert_eq!(
            client.get("site.test", "/echo").await.status,
            StatusCode::OK
        );
        kept.push(client);
    }

    // Unchanged certificates: a reload keeps the sessions.
    lb.reload(&old_cert.toml(), "");
    let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    assert!(stream.get_ref().1.peer_certificates().unwrap()[0] == old_cert.der);

    // New ones: a new connection gets them, even from a client holding a
    // ticket from before (no resumption into the old certificate).
    lb.reload(&new_cert.toml(), "");
    let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    let served: &CertificateDer = &stream.get_ref().1.peer_certificates().unwrap()[0];
    assert!(
        *served == new_cert.der,
        "a new connection still gets the old certificate"
    );
    for client in &mut kept {
        let r = client.get("site.test", "/echo").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "an established connection broke on reload"
        );
        assert!(r.body.contains("x-forwarded-proto: https\n"));
    }

    // An invalid certificate never becomes a Config, so the running one
    // stays (main.rs logs the error): the new certificate is still served.
    std::fs::write(&new_cert.cert, "not a certificate\n").unwrap();
    assert!(lb.parse(&new_cert.toml(), "").is_err());
    let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    assert!(stream.get_ref().1.peer_certificates().unwrap()[0] == new_cert.der);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_http_answers_308_to_the_https_address() {
    let (pki, _site, lb) = setup("redirect", "redirect_http = true\n", "").await;
    let tls_port = lb.tls.port();
    for (request, location) in [
        (
            "GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n".to_owned(),
            format!("https://example.com:{tls_port}/a/b?c=1"),
        ),
        (
            "POST /form HTTP/1.1\r\nHost: shop.test\r\ncontent-length: 3\r\n\r\nabc".to_owned(),
            format!("https://shop.test:{tls_port}/form"),
        ),
        (
            "GET http://site.test:99/x HTTP/1.1\r\nHost: site.test:99\r\n\r\n".to_owned(),
            format!("https://site.test:{tls_port}/x"),
        ),
    ] {
        let r = support::raw_exchange(lb.plain, request.as_bytes()).await;
        assert_eq!(r.status, 308, "{request}: {}", r.text());
        assert_eq!(r.header("location"), Some(location.as_str()), "{request}");
        assert_eq!(r.text().lines().count(), 1, "{}", r.text());
    }
    // HTTP/2 with prior knowledge: the host comes from the authority.
    let r = support::get_h2(&format!("http://{}/h2?y", lb.plain), &[]).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers["location"],
        format!("https://127.0.0.1:{tls_port}/h2?y").as_str()
    );
    // No Host to redirect to: 400, one line.
    let r = support::raw_exchange(lb.plain, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.text());
    // ACME HTTP-01 challenges still reach the backend.
    let r = support::get(&format!(
        "http://{}/.well-known/acme-challenge/tok",
        lb.plain
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().contains("x-forwarded-proto: http\n"),
        "{}",
        r.text()
    );
    // The TLS listener serves as usual.
    let config = pki.client(&["h2"], false, None);
    let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    let r = Client::over(stream).await.get("site.test", "/echo").await;
    assert_eq!(r.status, StatusCode::OK);
    lb.stop().await;
}

/// Runs `curl` with `args`; `None` when there is no curl (a failure under
/// `CI=true`, where `.ci/run` installs it).
async fn curl(args: Vec<String>) -> Option<std::process::Output> {
    let out = tokio::task::spawn_blocking(move || {
        match std::process::Command::new("curl").args(&args).output() {
            Ok(out) => Some(out),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot run curl: {e}"),
        }
    })
    .await
    .unwrap();
    if out.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "curl is not on PATH, and CI=true: .ci/run must install it"
        );
        println!("note: curl is not on PATH; skipping the curl test");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_and_http1_over_tls_with_the_ca() {
    let (pki, _site, lb) = setup("curl", "", "").await;
    let port = lb.tls.port();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let args = vec![
            "-sS".to_owned(),
            "--max-time".to_owned(),
            "20".to_owned(),
            flag.to_owned(),
            "--cacert".to_owned(),
            pki.ca.display().to_string(),
            "--resolve".to_owned(),
            format!("site.test:{port}:127.0.0.1"),
            "-w".to_owned(),
            "\nhttp_version=%{http_version}".to_owned(),
            format!("https://site.test:{port}/echo"),
        ];
        let Some(out) = curl(args).await else {
            lb.stop().await;
            return;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.ends_with(&format!("http_version={version}")),
            "{stdout}"
        );
        assert!(stdout.contains("x-forwarded-proto: https\n"), "{stdout}");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_served_by_the_worker_threads() {
    let pki = Pki::new("workers");
    let site = pki.leaf("site", &["site.test"]);
    let backend = echo_backend().await;
    let lb = TlsLb::start_workers(backend, &site.toml(), "", 2).await;
    let config = pki.client(&["h2", "http/1.1"], false, None);
    for i in 0..6 {
        let alpn_h1 = i % 2 == 1;
        let config = if alpn_h1 {
            pki.client(&["http/1.1"], false, None)
        } else {
            config.clone()
        };
        let stream = tls_connect(lb.tls, "site.test", &config).await.unwrap();
        let r = Client::over(stream).await.get("site.test", "/echo").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.contains("x-forwarded-proto: https\n"));
    }
    let plain = support::get(&format!("http://{}/echo", lb.plain)).await;
    assert_eq!(plain.status, StatusCode::OK);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_tls_is_tunnelled_both_ways() {
    let pki = Pki::new("wss");
    let site = pki.leaf("site", &["site.test"]);
    let host = support::Host::start("a");
    let lb = TlsLb::start(host.addr, &site.toml(), "").await;
    let config = pki.client(&["http/1.1"], false, None);
    let mut ws = tls_connect(lb.tls, "site.test", &config).await.unwrap();
    ws.write_all(
        b"GET /echo HTTP/1.1\r\n\
          Host: site.test\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          \r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(LIMIT, ws.read_exact(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for len in [1usize, 1000, 100_000] {
        let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (mut rd, mut wr) = tokio::io::split(&mut ws);
        let write = async { wr.write_all(&msg).await.unwrap() };
        let read = async {
            let mut back = vec![0u8; len];
            rd.read_exact(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::time::timeout(LIMIT, async { tokio::join!(write, read) })
            .await
            .unwrap_or_else(|_| panic!("{len} bytes did not come back"));
        assert!(back == msg, "{len} bytes: echoed bytes differ");
    }
    lb.stop().await;
}
