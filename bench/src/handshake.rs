//! The TLS handshake driver, and the TLS settings every client of the
//! `tls` scenario uses.
//!
//! Each of `conns` workers, for the run's duration, opens a TCP connection,
//! makes a full TLS 1.3 handshake, sends one `GET /` with
//! `Connection: close` and reads the answer until the server closes. It
//! counts the exchanges that got a `200`: handshakes per second, each with
//! one request, which is what a client without keep-alive costs a proxy.
//!
//! Why not `wrk -H "Connection: close"`: wrk reuses its `SSL` object across
//! reconnections (`SSL_clear`), so OpenSSL offers the previous session's
//! ticket and the handshakes become resumptions wherever the server issues
//! tickets: the figures would depend on each proxy's ticket defaults, not
//! on its handshake cost. This driver never resumes (rustls
//! `Resumption::disabled`), so every handshake is a full one.
//!
//! The same settings for every target, and for wrk through
//! [`openssl_conf`]: TLS 1.3 only, one cipher suite ([`SUITE`]), one key
//! exchange group ([`GROUP`]), ALPN `http/1.1`. The server's certificate is
//! pinned (byte-equal to the generated one) and its handshake signature
//! checked, as wrk's OpenSSL does, without the cost of a path search. The
//! protocol, suite, group and ALPN each connection negotiated are recorded,
//! so the report shows what was measured, not what was configured.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The one cipher suite offered, by its IANA name: mandatory in every TLS
/// 1.3 implementation (RFC 8446 §9.1), AES-NI accelerated in all three.
pub const SUITE: &str = "TLS_AES_128_GCM_SHA256";
/// The one key exchange group offered.
pub const GROUP: &str = "X25519";

/// The longest one connection (connect, handshake, request, answer) may
/// take before it counts as an error: bounds a run's tail.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes read from one answer (the backend's `/` is a few dozen).
const MAX_ANSWER: usize = 1 << 20;

/// An `OPENSSL_CONF` file that makes an OpenSSL client (wrk) offer what
/// this driver offers: TLS 1.3 only, [`SUITE`], [`GROUP`].
pub fn openssl_conf() -> String {
    format!(
        "# Written by bench: the TLS settings of the tls scenario's clients.\n\
         openssl_conf = bench_conf\n\n[bench_conf]\nssl_conf = bench_ssl\n\n\
         [bench_ssl]\nsystem_default = bench_tls\n\n[bench_tls]\n\
         MinProtocol = TLSv1.3\nMaxProtocol = TLSv1.3\nCiphersuites = {SUITE}\nGroups = {GROUP}\n"
    )
}

/// One handshake run.
#[derive(Debug, Clone)]
pub struct Handshakes {
    /// Shown in the progress line.
    pub label: String,
    pub addr: SocketAddr,
    /// Concurrent workers, one connection at a time each.
    pub conns: usize,
    /// Workers start no new connection after this; each makes at least one.
    pub duration: Duration,
    /// The certificate the server must present.
    pub cert: CertificateDer<'static>,
}

/// What a handshake run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandshakeResult {
    /// Full handshakes whose request got a `200`.
    pub ok: u64,
    /// Failed connections: refused, handshake failed, bad or no answer,
    /// timed out.
    pub errors: u64,
    /// `ok` per second of the run.
    pub rps: f64,
    pub elapsed_s: f64,
    /// "TLS 1.3, TLS13_AES_128_GCM_SHA256, X25519, http/1.1", from the
    /// first connection that got that far.
    pub negotiated: Option<String>,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

/// What the workers share.
#[derive(Debug, Default)]
struct Shared {
    ok: u64,
    errors: u64,
    negotiated: Option<String>,
    first_error: Option<String>,
}

/// Runs the workers and sums what they saw.
pub async fn run(h: &Handshakes) -> Result<HandshakeResult> {
    eprintln!(
        "  [{}] full TLS handshakes, {} connections, {:.1} s",
        h.label,
        h.conns,
        h.duration.as_secs_f64()
    );
    let connector = TlsConnector::from(client_config(h.cert.clone())?);
    let name = ServerName::try_from(crate::certs::NAMES[0])?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let start = Instant::now();
    let deadline = start + h.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..h.conns.max(1) {
        let (connector, name, shared) = (connector.clone(), name.clone(), shared.clone());
        let addr = h.addr;
        tasks.spawn(async move {
            loop {
                let r = tokio::time::timeout(CONN_TIMEOUT, one(&connector, addr, name.clone()))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {CONN_TIMEOUT:?}")));
                record(&shared, r);
                if Instant::now() >= deadline {
                    break;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let s = std::mem::take(&mut *shared.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(HandshakeResult {
        ok: s.ok,
        errors: s.errors,
        rps: s.ok as f64 / elapsed.max(1e-9),
        elapsed_s: elapsed,
        negotiated: s.negotiated,
        first_error: s.first_error,
    })
}

/// Adds one connection's outcome to the totals (a short lock, once per
/// connection, far from the cost of a handshake).
fn record(shared: &Mutex<Shared>, r: Result<String, String>) {
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    match r {
        Ok(negotiated) => {
            s.ok += 1;
            s.negotiated.get_or_insert(negotiated);
        }
        Err(e) => {
            s.errors += 1;
            s.first_error.get_or_insert(e);
        }
    }
}

/// One connection: connect, full handshake, `GET /`, read to the server's
/// close. Returns what was negotiated, or why it failed.
async fn one(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: ServerName<'static>,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let negotiated = describe(tls.get_ref().1);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(512);
    // Until the server closes, so that TIME_WAIT stays on its side and a
    // long run does not use up the client's ephemeral ports.
    loop {
        match tls.read_buf(&mut answer).await {
            Ok(0) => break,
            Ok(_) if answer.len() > MAX_ANSWER => return Err("answer too long".into()),
            Ok(_) => {}
            // A close without close_notify, after the answer: still done.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    check_answer(&answer)?;
    Ok(negotiated)
}

/// A `200` with the end of its head.
fn check_answer(answer: &[u8]) -> Result<(), String> {
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n");
    let status = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    match (head_end, answer.starts_with(b"HTTP/1.1 200 ")) {
        (Some(_), true) => Ok(()),
        (None, _) => Err(format!("incomplete answer ({} bytes)", answer.len())),
        (Some(_), false) => Err(format!(
            "answer: {}",
            String::from_utf8_lossy(status)
                .chars()
                .take(80)
                .collect::<String>()
        )),
    }
}

/// "TLS 1.3, TLS13_AES_128_GCM_SHA256, X25519, http/1.1".
fn describe(c: &rustls::ClientConnection) -> String {
    let version = match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        v => format!("{v:?}"),
    };
    let suite = c
        .negotiated_cipher_suite()
        .map_or("?".into(), |s| format!("{:?}", s.suite()));
    let group = c
        .negotiated_key_exchange_group()
        .map_or("?".into(), |g| format!("{:?}", g.name()));
    let alpn = c.alpn_protocol().map_or("no ALPN".into(), |a| {
        String::from_utf8_lossy(a).into_owned()
    });
    format!("{version}, {suite}, {group}, {alpn}")
}

/// TLS 1.3, [`SUITE`] and [`GROUP`] only, ring; no resumption; ALPN
/// `http/1.1`; `cert` pinned.
fn client_config(cert: CertificateDer<'static>) -> Result<Arc<ClientConfig>> {
    let base = ring::default_provider();
    let provider = CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![ring::kx_group::X25519],
        ..base
    };
    let algs = provider.signature_verification_algorithms;
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, algs }))
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts exactly one certificate, and checks the server's handshake
/// signature with it.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
