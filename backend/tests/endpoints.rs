//! Every endpoint over real HTTP/1.1: status, `X-Backend`, exact sizes and
//! the error answers.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::{get, request, send, Server, H1};

#[tokio::test]
async fn root_names_the_backend() {
    let server = Server::start("alpha").await;
    let reply = get(server.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), Some("alpha"));
    assert!(reply.text().contains("alpha"), "{}", reply.text());
    server.stop().await;
}

#[tokio::test]
async fn health_answers_ok_and_toggles() {
    let server = Server::start("h").await;
    let reply = get(server.addr, "/health").await;
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
    assert_eq!(reply.header("x-backend"), Some("h"));

    let down = send(server.addr, request(Method::POST, "/health/down", "")).await;
    assert_eq!(down.status, 200);
    let reply = get(server.addr, "/health").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-backend"), Some("h"));
    // Only the probe is sick: the rest still works.
    assert_eq!(get(server.addr, "/").await.status, 200);

    let up = send(server.addr, request(Method::POST, "/health/up", "")).await;
    assert_eq!(up.status, 200);
    assert_eq!(get(server.addr, "/health").await.text(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn sha1_of_known_bodies() {
    let server = Server::start("s").await;
    let cases: [(&[u8], &str); 2] = [
        (
            b"The quick brown fox jumps over the lazy dog",
            "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
        ),
        (b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ];
    for (body, hex) in cases {
        let reply = send(server.addr, request(Method::POST, "/sha1", body.to_vec())).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), hex);
        assert_eq!(reply.header("x-backend"), Some("s"));
    }
    // A body far larger than any single read.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = sha1_smol::Sha1::from(&big).digest().to_string();
    let reply = send(server.addr, request(Method::POST, "/sha1", big)).await;
    assert_eq!(reply.text(), expected);
    server.stop().await;
}

#[tokio::test]
async fn generated_bodies_have_exact_sizes_and_types() {
    let server = Server::start("g").await;
    let mut conn = H1::connect(server.addr).await;
    let kinds = [
        ("text", "text/plain; charset=utf-8"),
        ("json", "application/json"),
        ("html", "text/html; charset=utf-8"),
        ("bytes", "application/octet-stream"),
        ("words", "application/json"),
    ];
    for (kind, content_type) in kinds {
        for n in [0usize, 1, 2, 100, 65_536, 65_537, 1_000_003] {
            let reply = conn
                .send(request(Method::GET, &format!("/{kind}/{n}"), ""))
                .await;
            assert_eq!(reply.status, 200, "{kind}/{n}");
            assert_eq!(reply.header("content-type"), Some(content_type));
            assert_eq!(reply.header("content-length"), Some(n.to_string().as_str()));
            assert_eq!(reply.body.len(), n, "{kind}/{n}");
            assert_eq!(reply.header("x-backend"), Some("g"));
            if (kind == "json" || kind == "words") && n > 0 {
                serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .unwrap_or_else(|e| panic!("json/{n} is not JSON: {e}"));
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn json_is_valid_at_every_small_size() {
    let server = Server::start("j").await;
    let mut conn = H1::connect(server.addr).await;
    // `/words` records run to a few hundred bytes: sizes past the first
    // two cover every way a body can end inside a record.
    for kind in ["json", "words"] {
        for n in 1..1200 {
            let reply = conn
                .send(request(Method::GET, &format!("/{kind}/{n}"), ""))
                .await;
            assert_eq!(reply.body.len(), n);
            serde_json::from_slice::<serde_json::Value>(&reply.body)
                .unwrap_or_else(|e| panic!("{kind}/{n} is not JSON: {e}"));
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn text_compresses_and_bytes_do_not_repeat() {
    let server = Server::start("c").await;
    let text = get(server.addr, "/text/100000").await;
    let distinct_lines: std::collections::HashSet<&[u8]> =
        text.body.split(|&b| b == b'\n').collect();
    assert!(
        distinct_lines.len() < 100,
        "text should repeat a small pattern"
    );
    let bytes = get(server.addr, "/bytes/100000").await;
    let first = &bytes.body[..1000];
    let again = bytes.body[1000..].windows(1000).any(|w| w == first);
    assert!(!again, "bytes should not repeat within 100 KB");
    server.stop().await;
}

#[tokio::test]
async fn query_parameters_shape_generated_headers() {
    let server = Server::start("q").await;
    let path = "/text/2000?etag=%22v1%22&cache_control=no-transform&content_encoding=br\
                &vary=Accept-Language&content_type=image/svg+xml";
    let reply = get(server.addr, path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("etag"), Some("\"v1\""));
    assert_eq!(reply.header("cache-control"), Some("no-transform"));
    assert_eq!(reply.header("content-encoding"), Some("br"));
    assert_eq!(reply.header("vary"), Some("Accept-Language"));
    assert_eq!(reply.header("content-type"), Some("image/svg+xml"));
    assert_eq!(reply.body.len(), 2000);

    let reply = get(server.addr, "/json/5000?chunked=1").await;
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.body.len(), 5000);

    let reply = get(server.addr, "/html/10?etag=%0Abad").await;
    assert_eq!(reply.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn head_gets_the_headers_only() {
    let server = Server::start("hd").await;
    let reply = send(server.addr, request(Method::HEAD, "/text/1234", "")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("1234"));
    assert!(reply.body.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn delay_waits() {
    let server = Server::start("d").await;
    let start = std::time::Instant::now();
    let reply = get(server.addr, "/delay?ms=150").await;
    assert_eq!(reply.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
    server.stop().await;
}

#[tokio::test]
async fn work_burns_at_least_the_time_asked() {
    let server = Server::start("w").await;
    let start = std::time::Instant::now();
    let reply = get(server.addr, "/work?ms=150").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), Some("w"));
    assert!(
        start.elapsed() >= Duration::from_millis(145),
        "{:?}",
        start.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn stream_sends_chunks_apart() {
    let server = Server::start("st").await;
    let (chunks, ms) = (5u32, 80u64);
    let reply = get(server.addr, &format!("/stream?chunks={chunks}&ms={ms}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(reply.header("x-backend"), Some("st"));
    assert_eq!(reply.text().lines().count(), chunks as usize);
    assert_eq!(reply.frames.len(), chunks as usize, "one frame per chunk");
    let span = reply.frames[reply.frames.len() - 1] - reply.frames[0];
    let least = Duration::from_millis((u64::from(chunks) - 1) * ms * 8 / 10);
    assert!(span >= least, "chunks arrived within {span:?}");

    let sized = get(server.addr, "/stream?chunks=3&ms=0&size=1000").await;
    assert_eq!(sized.body.len(), 3000);
    server.stop().await;
}

#[tokio::test]
async fn status_answers_the_code_asked() {
    let server = Server::start("sc").await;
    for (code, has_body) in [
        (200, true),
        (201, true),
        (204, false),
        (304, false),
        (418, true),
    ] {
        let reply = get(server.addr, &format!("/status/{code}")).await;
        assert_eq!(reply.status.as_u16(), code);
        assert_eq!(reply.header("x-backend"), Some("sc"));
        assert_eq!(!reply.body.is_empty(), has_body, "{code}");
    }
    let reply = get(server.addr, "/status/599").await;
    assert_eq!(reply.status.as_u16(), 599);
    for bad in ["99", "100", "103", "1000", "abc", ""] {
        let reply = get(server.addr, &format!("/status/{bad}")).await;
        assert_eq!(reply.status, 400, "/status/{bad}");
    }
    server.stop().await;
}

#[tokio::test]
async fn headers_are_listed_with_the_request_line() {
    let server = Server::start("hh").await;
    let req = http::Request::builder()
        .uri("/headers?x=1")
        .header("host", "example.test")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-custom", "one")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let reply = send(server.addr, req).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("GET /headers?x=1 HTTP/1.1"));
    let rest: Vec<&str> = lines.collect();
    assert_eq!(
        rest,
        [
            "host: example.test",
            "x-forwarded-for: 10.1.2.3",
            "x-custom: one"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn echo_body_streams_the_request_back() {
    let server = Server::start("eb").await;
    let body: Vec<u8> = (0..500_000u32).map(|i| (i % 97) as u8).collect();
    let req = http::Request::builder()
        .method(Method::POST)
        .uri("/echo-body")
        .header("host", "x")
        .header("content-type", "application/x-test")
        .body(http_body_util::Full::new(Bytes::from(body.clone())))
        .expect("request");
    let reply = send(server.addr, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-test"));
    assert_eq!(reply.body, body);
    server.stop().await;
}

#[tokio::test]
async fn bad_numbers_are_400_with_a_reason() {
    let server = Server::start("b").await;
    for path in [
        "/text/abc",
        "/json/-1",
        "/text/1073741825",
        "/work?ms=x",
        "/work",
        "/work?ms=60001",
        "/delay?ms=1.5",
        "/stream?chunks=2",
        "/stream?chunks=x&ms=1",
    ] {
        let reply = get(server.addr, path).await;
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(reply.header("x-backend"), Some("b"));
        let text = reply.text();
        assert_eq!(text.trim_end().lines().count(), 1, "{path}: {text:?}");
        assert!(!text.trim().is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let server = Server::start("n").await;
    for path in ["/nope", "/text", "/texts/5", "/health/sideways"] {
        let reply = get(server.addr, path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.header("x-backend"), Some("n"));
    }
    let cases = [
        (Method::POST, "/text/5", "GET, HEAD"),
        (Method::DELETE, "/", "GET, HEAD"),
        (Method::GET, "/sha1", "POST"),
        (Method::GET, "/health/down", "POST"),
        (Method::PUT, "/echo-body", "POST"),
    ];
    for (method, path, allow) in cases {
        let reply = send(server.addr, request(method.clone(), path, "")).await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("allow"), Some(allow));
        assert_eq!(reply.header("x-backend"), Some("n"));
    }
    server.stop().await;
}

#[tokio::test]
async fn echo_without_upgrade_headers_is_426() {
    let server = Server::start("e").await;
    let reply = get(server.addr, "/echo").await;
    assert_eq!(reply.status, 426);
    assert_eq!(reply.header("x-backend"), Some("e"));
    assert!(!reply.text().is_empty());
    server.stop().await;
}
