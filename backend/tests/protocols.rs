//! Protocol-level behaviour: HTTP/2 prior knowledge, the `/echo` upgrade
//! over a raw socket, keep-alive, and graceful shutdown.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Version};
use support::{bounded, get, request, send_h2, Server, H1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let server = Server::start("two").await;
    let reply = send_h2(server.addr, request(Method::GET, "/text/70000", "")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.header("x-backend"), Some("two"));
    assert_eq!(reply.header("content-length"), Some("70000"));
    assert_eq!(reply.body.len(), 70_000);

    let body = b"The quick brown fox jumps over the lazy dog".to_vec();
    let reply = send_h2(server.addr, request(Method::POST, "/sha1", body)).await;
    assert_eq!(reply.text(), "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12");

    let reply = send_h2(
        server.addr,
        request(Method::GET, "/stream?chunks=3&ms=20", ""),
    )
    .await;
    assert_eq!(reply.text().lines().count(), 3);
    server.stop().await;
}

/// Reads from `stream` until the end of an HTTP head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = bounded(stream.read(&mut byte)).await.expect("read head");
        assert_eq!(n, 1, "connection closed inside the head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ascii head")
}

#[tokio::test]
async fn upgrade_echoes_bytes_over_a_raw_socket() {
    let server = Server::start("up").await;
    let mut stream = bounded(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let handshake = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n";
    bounded(stream.write_all(handshake.as_bytes()))
        .await
        .expect("write");
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("x-backend: up\r\n"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );

    for message in [&b"hello"[..], &[0u8, 1, 2, 255], &[b'x'; 100_000]] {
        bounded(stream.write_all(message)).await.expect("write");
        let mut back = vec![0u8; message.len()];
        bounded(stream.read_exact(&mut back)).await.expect("echo");
        assert_eq!(back, message);
    }
    bounded(stream.shutdown()).await.expect("shutdown");
    let mut rest = Vec::new();
    bounded(stream.read_to_end(&mut rest)).await.expect("eof");
    assert!(rest.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn upgrade_without_websocket_key_echoes_the_token() {
    let server = Server::start("up2").await;
    let mut stream = bounded(TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let handshake = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, upgrade\r\n\
                     Upgrade: foo/1\r\n\r\n";
    bounded(stream.write_all(handshake.as_bytes()))
        .await
        .expect("write");
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: foo/1\r\n"), "{head}");
    assert!(!head.contains("sec-websocket-accept"), "{head}");
    bounded(stream.write_all(b"ping")).await.expect("write");
    let mut back = [0u8; 4];
    bounded(stream.read_exact(&mut back)).await.expect("echo");
    assert_eq!(&back, b"ping");
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let server = Server::start("ka").await;
    let mut conn = H1::connect(server.addr).await;
    for i in 0..300 {
        let reply = conn.send(request(Method::GET, "/text/64", "")).await;
        assert_eq!(reply.status, 200, "request {i}");
        assert_eq!(reply.body.len(), 64);
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut server = Server::start("gs").await;
    let addr = server.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/delay?ms=300").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    let reply = bounded(in_flight).await.expect("request task");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "delayed 300 ms\n");
    server.join().await;
    // The listener is gone.
    let refused = bounded(TcpStream::connect(addr)).await;
    assert!(refused.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let server = Server::start("idle").await;
    let mut conn = H1::connect(server.addr).await;
    assert_eq!(
        conn.send(request(Method::GET, "/", Bytes::new()))
            .await
            .status,
        200
    );
    // An idle client connection must not hold shutdown for the grace period.
    let start = std::time::Instant::now();
    server.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}
