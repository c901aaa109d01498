//! What the TLS tests share: a CA and the certificates it signs (rcgen),
//! files in a directory of their own; rustls client configurations; a
//! hyper client over a TLS stream; a backend that echoes the request head;
//! and the balancer in-process with a plain and a TLS listener.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedProtocolVersion,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(30);

/// A test CA and the directory its files go to.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate's PEM file (for `curl --cacert`).
    pub ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
}

/// A certificate the CA signed, and its key, as files.
pub struct Leaf {
    pub stem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// `cert = ...` and `key = ...` lines for `[tls]`.
    pub fn toml(&self) -> String {
        format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }

    /// `cert = ..., key = ...` for an inline `sni` table.
    pub fn inline(&self) -> String {
        format!(
            "cert = \"{}\", key = \"{}\"",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Pki {
    /// A fresh CA in a fresh directory.
    pub fn new(name: &str) -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-tls-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "balancer test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, issuer.pem()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(issuer.der().clone()).unwrap();
        Pki {
            dir,
            ca,
            issuer,
            roots: Arc::new(roots),
        }
    }

    /// A certificate for `names` (DNS names, wildcards, IP addresses)
    /// written as `<stem>.pem` and `<stem>.key`.
    pub fn leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            stem: stem.to_owned(),
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// A client trusting this CA, offering `alpn`, TLS 1.2 and 1.3 unless
    /// `version` names one; with `any_name` it accepts a certificate for
    /// another name than the one asked for (the chain is still checked).
    pub fn client(
        &self,
        alpn: &[&str],
        any_name: bool,
        version: Option<&'static SupportedProtocolVersion>,
    ) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = match version {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .unwrap();
        let mut config = if any_name {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), provider)
                    .build()
                    .unwrap();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(Arc::clone(&self.roots))
                .with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks the chain as webpki does, but not the name.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS connection to `addr` asking for `sni` (an IP address: no SNI).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(sni.to_owned()).expect("a valid server name");
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(LIMIT, connect)
        .await
        .unwrap_or_else(|_| panic!("no TLS handshake with {addr} in {LIMIT:?}"))
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub body: String,
}

/// A hyper client on one TLS connection, HTTP/2 or HTTP/1.1 as ALPN chose.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    pub async fn over(stream: TlsStream<TcpStream>) -> Client {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(send)
        }
    }

    /// `GET path` from `host`, bounded by 30 s.
    pub async fn get(&mut self, host: &str, path: &str) -> Answer {
        let exchange = async {
            let sent = async {
                match self {
                    Client::H2(send) => {
                        let req = Request::get(format!("https://{host}{path}"))
                            .body(Empty::new())
                            .unwrap();
                        send.ready().await?;
                        send.send_request(req).await
                    }
                    Client::H1(send) => {
                        let req = Request::get(path)
                            .header(http::header::HOST, host)
                            .body(Empty::new())
                            .unwrap();
                        // The previous response may not have freed the
                        // connection yet.
                        send.ready().await?;
                        send.send_request(req).await
                    }
                }
            };
            let resp = sent
                .await
                .unwrap_or_else(|e| panic!("GET {path} from {host}: {e:?}"));
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Answer {
                status: parts.status,
                version: parts.version,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        tokio::time::timeout(LIMIT, exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer in {LIMIT:?}"))
    }
}

/// A backend answering every request `200` with its target and headers,
/// one `name: value` line each (`path: /x?y` first).
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut text = format!("path: {}\n", req.uri());
                    for (name, value) in req.headers() {
                        text.push_str(&format!(
                            "{name}: {}\n",
                            String::from_utf8_lossy(value.as_bytes())
                        ));
                    }
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut()
                        .insert("x-backend", http::HeaderValue::from_static("echo"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `lb.toml` for the plain, TLS and admin addresses, one backend, a
/// `[tls]` body and `extra` tables, parsed.
fn lb_toml(
    [plain, tls, admin]: [SocketAddr; 3],
    backend: SocketAddr,
    tls_body: &str,
    extra: &str,
) -> Result<balancer::Config, balancer::ConfigError> {
    let text = format!(
        "listen = \"{plain}\"\nbackends = [{{ addr = \"{backend}\", agent = \"127.0.0.1:1\" }}]\n{extra}\n[tls]\nlisten = \"{tls}\"\n{tls_body}\n[admin]\nlisten = \"{admin}\"\n"
    );
    balancer::Config::parse(&text, Path::new("lb.toml"))
}

/// The balancer in-process, with a plain and a TLS listener.
pub struct TlsLb {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    backend: SocketAddr,
    pub balancer: balancer::Balancer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsLb {
    /// Starts a balancer in front of `backend` whose `[tls]` table holds
    /// `tls_body` (without `listen`, chosen here), with `extra` tables.
    pub async fn start(backend: SocketAddr, tls_body: &str, extra: &str) -> TlsLb {
        TlsLb::start_workers(backend, tls_body, extra, 1).await
    }

    /// As [`TlsLb::start`], with `workers` worker threads.
    pub async fn start_workers(
        backend: SocketAddr,
        tls_body: &str,
        extra: &str,
        workers: usize,
    ) -> TlsLb {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (plain, tls, admin) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let addrs = [&plain, &tls, &admin].map(|l| l.local_addr().unwrap());
        let config = lb_toml(addrs, backend, tls_body, extra).unwrap_or_else(|e| panic!("{e}"));
        let balancer = balancer::Balancer::start(config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let b = balancer.clone();
        let listeners = balancer::Listeners {
            plain,
            tls: Some(tls),
        };
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            b.serve_workers(workers, listeners, admin, shutdown)
                .await
                .unwrap();
        });
        TlsLb {
            plain: addrs[0],
            tls: addrs[1],
            admin: addrs[2],
            backend,
            balancer,
            stop: Some(stop),
            task,
        }
    }

    /// The whole `lb.toml` for `tls_body` and `extra`, parsed.
    pub fn parse(
        &self,
        tls_body: &str,
        extra: &str,
    ) -> Result<balancer::Config, balancer::ConfigError> {
        lb_toml(
            [self.plain, self.tls, self.admin],
            self.backend,
            tls_body,
            extra,
        )
    }

    /// Reloads with a new `[tls]` body and `extra` tables.
    pub fn reload(&self, tls_body: &str, extra: &str) {
        let config = self
            .parse(tls_body, extra)
            .unwrap_or_else(|e| panic!("{e}"));
        self.balancer.reload(config);
    }

    /// Stops accepting, drains and waits for the balancer to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(LIMIT, &mut self.task).await;
    }
}
