//! The handshake driver against an in-process rustls server on
//! `127.0.0.1:0`: what it counts, what it reports as negotiated, and that
//! a wrong certificate or a bad answer counts as an error. No timing
//! assertions: every worker makes at least one connection, whatever the
//! duration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{check_answer, openssl_conf, run, Handshakes, GROUP, SUITE};

/// A fresh self-signed certificate for `localhost` and its key.
fn cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(c.signing_key.serialize_der());
    (c.cert.der().clone(), key.into())
}

/// A TLS server (the ring provider's defaults, ALPN h2 and http/1.1, as
/// our balancer offers) answering every request with `status` and closing.
async fn server(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    status: &'static str,
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read_buf(&mut req).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn load(addr: SocketAddr, cert: CertificateDer<'static>) -> Handshakes {
    Handshakes {
        label: "test".into(),
        addr,
        conns: 3,
        duration: Duration::from_millis(100),
        cert,
    }
}

#[tokio::test]
async fn counts_full_handshakes_and_reports_what_was_negotiated() {
    let (c, k) = cert();
    let addr = server(c.clone(), k, "200 OK").await;
    let r = run(&load(addr, c)).await.unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    assert!(
        r.ok >= 3,
        "each worker makes at least one connection: {r:?}"
    );
    assert!(r.rps > 0.0);
    assert_eq!(
        r.negotiated.as_deref(),
        Some("TLS 1.3, TLS13_AES_128_GCM_SHA256, X25519, http/1.1")
    );
}

#[tokio::test]
async fn another_certificate_fails_the_handshake() {
    let (c, k) = cert();
    let (other, _) = cert();
    let addr = server(c, k, "200 OK").await;
    let r = run(&load(addr, other)).await.unwrap();
    assert_eq!(r.ok, 0);
    assert!(r.errors >= 3);
    let e = r.first_error.unwrap();
    assert!(e.starts_with("handshake:"), "{e}");
}

#[tokio::test]
async fn a_status_other_than_200_is_an_error() {
    let (c, k) = cert();
    let addr = server(c.clone(), k, "503 Service Unavailable").await;
    let r = run(&load(addr, c)).await.unwrap();
    assert_eq!(r.ok, 0);
    assert_eq!(
        r.first_error.as_deref(),
        Some("answer: HTTP/1.1 503 Service Unavailable")
    );
}

#[tokio::test]
async fn a_refused_connection_is_an_error() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = run(&load(addr, cert().0)).await.unwrap();
    assert_eq!(r.ok, 0);
    assert!(r.first_error.unwrap().starts_with("connect:"));
}

#[test]
fn answers_need_a_whole_head_and_a_200() {
    assert_eq!(check_answer(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(()));
    assert_eq!(
        check_answer(b"HTTP/1.1 200 OK\r\nContent-"),
        Err("incomplete answer (25 bytes)".into())
    );
    assert_eq!(check_answer(b""), Err("incomplete answer (0 bytes)".into()));
    assert_eq!(
        check_answer(b"HTTP/1.1 502 Bad Gateway\r\n\r\nno"),
        Err("answer: HTTP/1.1 502 Bad Gateway".into())
    );
}

#[test]
fn openssl_clients_are_pinned_to_the_same_settings() {
    let conf = openssl_conf();
    assert!(conf.starts_with("# Written by bench"));
    assert!(conf.contains("openssl_conf = bench_conf\n"));
    assert!(conf.contains("system_default = bench_tls\n"));
    for line in [
        "MinProtocol = TLSv1.3",
        "MaxProtocol = TLSv1.3",
        &format!("Ciphersuites = {SUITE}"),
        &format!("Groups = {GROUP}"),
    ] {
        assert!(conf.contains(&format!("\n{line}\n")), "{line} in\n{conf}");
    }
}
