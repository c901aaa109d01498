//! An agent with a key, in-process on `127.0.0.1:0`, spoken to over real
//! HTTP/1.1: strangers get `401` on every path, a poll signed with the key
//! gets a report whose MAC checks out over its nonce and body.

use std::net::SocketAddr;
use std::time::Duration;

use agent::{auth, Key, LoadReport, Monitor, Nonce, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REPORT: LoadReport = LoadReport {
    cpu: 0.25,
    memory: 0.5,
    cores: 2,
    cpus: 2.0,
    load1: 0.1,
    mem_total_bytes: 1000,
    mem_used_bytes: 500,
};

fn key() -> Key {
    Key::new(b"the agent test key, 32 bytes ok!").unwrap()
}

/// Starts an agent reporting [`REPORT`] with `key`; it runs until the
/// test's runtime ends.
async fn start(key: Option<Key>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let monitor = Monitor::fixed(REPORT);
    tokio::spawn(agent::serve_with(
        listener,
        monitor,
        Options {
            key,
            ..Options::default()
        },
        std::future::pending(),
    ));
    addr
}

/// A response: status, lower-cased headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `method path` with `headers`, on a connection of its own.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[String]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer in 10 s")
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn authorization(key: &Key, nonce: &Nonce) -> String {
    format!("Authorization: {}", key.authorization(nonce))
}

#[tokio::test]
async fn strangers_get_401_with_a_one_line_body_on_every_path() {
    let addr = start(Some(key())).await;
    let other = Key::new(b"not the agent's key, but long").unwrap();
    let nonce = Nonce::random().unwrap();
    let forged = authorization(&other, &nonce);
    let tampered = authorization(&key(), &nonce).replace("mac=", "mac=0");
    for (path, headers) in [
        ("/load", vec![]),
        ("/load", vec![forged.clone()]),
        ("/load", vec![tampered]),
        (
            "/load",
            vec!["Authorization: LB-HMAC nonce=00, mac=00".to_owned()],
        ),
        ("/load", vec!["Authorization: Bearer whatever".to_owned()]),
        ("/nope", vec![]),
        ("/nope", vec![forged]),
    ] {
        let a = request(addr, "GET", path, &headers).await;
        assert_eq!(a.status, 401, "{path} {headers:?}");
        assert_eq!(a.header("www-authenticate"), Some("LB-HMAC"));
        assert_eq!(a.header(auth::RESPONSE_HEADER), None);
        let body = String::from_utf8(a.body).unwrap();
        assert!(
            body.ends_with('\n') && body.lines().count() == 1,
            "{body:?}"
        );
        assert!(!body.contains("cpu"), "{body}");
    }
}

#[tokio::test]
async fn a_signed_poll_gets_a_report_authenticated_over_its_nonce_and_body() {
    let addr = start(Some(key())).await;
    let nonce = Nonce::random().unwrap();
    let a = request(addr, "GET", "/load", &[authorization(&key(), &nonce)]).await;
    assert_eq!(a.status, 200);
    assert_eq!(LoadReport::parse(&a.body), Ok(REPORT));
    let mac = a.header(auth::RESPONSE_HEADER).map(str::as_bytes);
    assert_eq!(key().verify(&nonce, mac, &a.body), Ok(()));
    // The same answer fails for any other poll, and with any other body.
    let next = Nonce::random().unwrap();
    assert_eq!(
        key().verify(&next, mac, &a.body),
        Err(agent::AuthError::StaleNonce)
    );
    assert_eq!(
        key().verify(&nonce, mac, br#"{"cpu":0.0,"memory":0.5}"#),
        Err(agent::AuthError::BadMac)
    );
    // Once authenticated, routing is as without a key.
    let nope = request(addr, "GET", "/nope", &[authorization(&key(), &nonce)]).await;
    assert_eq!(nope.status, 404);
}

#[tokio::test]
async fn without_a_key_anyone_may_read_and_nothing_is_signed() {
    let addr = start(None).await;
    let a = request(addr, "GET", "/load", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(LoadReport::parse(&a.body), Ok(REPORT));
    assert_eq!(a.header(auth::RESPONSE_HEADER), None);
}
