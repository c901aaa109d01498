//! Real servers for the balancer's integration tests, all on loopback
//! ports chosen by the kernel.
//!
//! - [`Host`]: a real `backend` in its own runtime on its own thread, so
//!   that [`Host::kill`] drops every socket at once, as a crashed process
//!   would, while the test's runtime carries on.
//! - [`FakeAgent`]: answers `GET /load` with whatever the test sets, so
//!   load-aware routing is tested against known loads.
//! - [`Lb`]: the balancer, in-process, from a TOML snippet.
//! - [`get`] and friends: a real HTTP client.
//! - [`dns::FakeDns`]: a DNS server answering from a table, for discovery.

#![allow(dead_code)]

pub mod dns;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A backend server on its own runtime.
pub struct Host {
    pub addr: SocketAddr,
    pub id: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Host {
    /// Starts a backend with `X-Backend: id` on a fresh port.
    pub fn start(id: &str) -> Host {
        Host::start_at(id, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts a backend on `addr` (to restart one where it was).
    pub fn start_at(id: &str, addr: SocketAddr) -> Host {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = bind_retrying(addr);
        let addr = std_listener.local_addr().unwrap();
        let config = backend::Config::new(id);
        runtime.spawn(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            let _ = backend::run(listener, config, std::future::pending()).await;
        });
        Host {
            addr,
            id: id.to_owned(),
            runtime: Some(runtime),
        }
    }

    /// Stops the backend abruptly: the listener and every open connection
    /// close at once. Returns once the port refuses connections, as a
    /// killed process's would (`shutdown_background` returns before the
    /// runtime's sockets are closed, and a connection could still land in
    /// the dying listener's backlog).
    pub fn kill(&mut self) {
        let Some(rt) = self.runtime.take() else {
            return;
        };
        rt.shutdown_background();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        panic!("{} still accepts connections after the kill", self.addr);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bind_retrying(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).unwrap();
                return l;
            }
            Err(e) if Instant::now() > deadline => panic!("cannot bind {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// An agent whose report the test controls.
#[derive(Clone)]
pub struct FakeAgent {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
}

impl FakeAgent {
    /// Starts an agent reporting `cpu` (memory 0.3).
    pub async fn start(cpu: f64) -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let agent = FakeAgent {
            addr,
            body: Arc::new(Mutex::new(String::new())),
        };
        agent.set_cpu(cpu);
        let body = Arc::clone(&agent.body);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let body = Arc::clone(&body);
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let text = body.lock().unwrap().clone();
                        async move {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        agent
    }

    /// Reports `cpu` from now on.
    pub fn set_cpu(&self, cpu: f64) {
        self.set_body(&format!(
            r#"{{"cpu": {cpu}, "memory": 0.3, "cores": 2, "load1": 0.5, "mem_total_bytes": 1000, "mem_used_bytes": 300}}"#
        ));
    }

    /// Answers with `body` verbatim (to test malformed reports).
    pub fn set_body(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_owned();
    }
}

/// A balancer running in the test's runtime.
pub struct Lb {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub balancer: balancer::Balancer,
    /// Lines of `[admin]` besides `listen` (kept for [`Lb::reload`]).
    admin_extra: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lb {
    /// Starts a balancer whose `lb.toml` is `toml` (without `listen`,
    /// which is chosen here). Use [`backends_toml`] to list backends.
    pub async fn start(toml: &str) -> Lb {
        Lb::start_with_admin(toml, "").await
    }

    /// [`Lb::start`] with `admin` (lines such as `token_file = "…"`) in the
    /// `[admin]` table too, for this balancer's reloads as well.
    pub async fn start_with_admin(toml: &str, admin: &str) -> Lb {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let admin_extra = admin.to_owned();
        let config = config(&format!(
            "listen = \"{addr}\"\n{toml}\n[admin]\nlisten = \"{admin_addr}\"\n{admin_extra}\n"
        ));
        let balancer = balancer::Balancer::start(config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let b = balancer.clone();
        let task = tokio::spawn(async move {
            b.serve(listener, admin_listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        Lb {
            addr,
            admin: admin_addr,
            balancer,
            admin_extra,
            stop: Some(stop),
            task,
        }
    }

    /// Reloads with a new configuration body (same form as [`Lb::start`]).
    pub fn reload(&self, toml: &str) {
        self.reload_with_admin(toml, &self.admin_extra);
    }

    /// [`Lb::reload`] with `admin` in the `[admin]` table instead of what
    /// [`Lb::start_with_admin`] was given (for this reload only).
    pub fn reload_with_admin(&self, toml: &str, admin: &str) {
        let config = config(&format!(
            "listen = \"{}\"\n{toml}\n[admin]\nlisten = \"{}\"\n{admin}\n",
            self.addr, self.admin
        ));
        self.balancer.reload(config);
    }

    /// `method` on the admin listener's `path`, with `Authorization:
    /// Bearer {token}` when a token is given, and `body`.
    pub async fn admin_call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let url = format!("http://{}{path}", self.admin);
        request(method, &url, &headers, Bytes::from(body.to_owned())).await
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `/status.json`, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let r = get(&format!("http://{}/status.json", self.admin)).await;
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Waits until every backend has a load report (agents polled once).
    pub async fn wait_for_reports(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status().await;
            if s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| !b["cpu"].is_null())
            {
                return;
            }
            assert!(Instant::now() < deadline, "agents never reported: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting, drains and waits for the balancer to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Parses a complete `lb.toml`.
pub fn config(text: &str) -> balancer::Config {
    balancer::Config::parse(text, std::path::Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `backends = [...]` naming each host with its agent.
pub fn backends_toml(hosts: &[(&Host, Option<&FakeAgent>)]) -> String {
    let items: Vec<String> = hosts
        .iter()
        .map(|(h, a)| match a {
            Some(a) => format!("{{ addr = \"{}\", agent = \"{}\" }}", h.addr, a.addr),
            None => format!("{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}", h.addr),
        })
        .collect();
    format!("backends = [{}]", items.join(", "))
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub version: http::Version,
    pub body: Bytes,
}

impl Resp {
    /// The `X-Backend` header, or "" when absent.
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `GET url`.
pub async fn get(url: &str) -> Resp {
    request(Method::GET, url, &[], Bytes::new()).await
}

/// Any request, with headers and a body, bounded by 30 s.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Full::new(body)).unwrap()).await
}

/// Sends `req` with `client` and reads the whole response, bounded by 30 s.
async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Resp {
    let url = req.uri().to_string();
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer in 30 s"))
}

/// A backend that reads a request head and then closes the connection
/// without answering: a backend that fails *after* receiving the request.
pub async fn hangup_backend() -> SocketAddr {
    fake_backend(|_| None).await
}

/// An address where nothing listens (connections are refused).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Counts `X-Backend` values of `n` sequential GETs of `path`.
pub async fn tally(url: &str, n: usize) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        let r = get(url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        *counts.entry(r.backend()).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 on a TcpStream, for what a well-behaved client cannot send or
// would hide (hop-by-hop headers, upgrades, garbage, slow heads).

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    /// Header names lower-cased, in received order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a response head (status line and headers) from `stream`, within
/// 10 s. Returns the response without a body and the bytes read past the
/// head.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> (RawResp, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = seen.split_off(end + 4);
                return (parse_head(&seen), rest);
            }
            let n = stream.read(&mut buf).await.expect("read a response head");
            assert!(
                n > 0,
                "connection closed before a whole response head: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no response head in 10 s")
}

fn parse_head(head: &[u8]) -> RawResp {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    RawResp {
        status,
        headers,
        body: Vec::new(),
    }
}

/// Reads one whole response (by `Content-Length`, chunked, or to EOF)
/// from `stream`, within 10 s.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> RawResp {
    use tokio::io::AsyncReadExt;
    let (mut resp, mut rest) = read_head(stream).await;
    let read_body = async {
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = resp
            .header("content-length")
            .map(|v| v.parse::<usize>().unwrap());
        let mut buf = [0u8; 8192];
        if let Some(len) = length {
            while rest.len() < len {
                let n = stream.read(&mut buf).await.expect("read a body");
                assert!(n > 0, "body cut short");
                rest.extend_from_slice(&buf[..n]);
            }
            rest.truncate(len);
            return rest;
        }
        if !chunked {
            stream.read_to_end(&mut rest).await.expect("read a body");
            return rest;
        }
        // Chunked: read until the last chunk and its blank line.
        while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read a body");
            assert!(n > 0, "chunked body cut short");
            rest.extend_from_slice(&buf[..n]);
        }
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let eol = at + rest[at..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size_text = String::from_utf8_lossy(&rest[at..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            at = eol + 2 + size + 2;
        }
    };
    resp.body = tokio::time::timeout(Duration::from_secs(10), read_body)
        .await
        .expect("no whole body in 10 s");
    resp
}

/// Writes `request` on a new connection to `addr` and reads one response.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResp {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Waits up to `limit` for the peer to close `stream` (EOF or a reset),
/// discarding whatever it sends first. `Err` if it is still open.
pub async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Result<Duration, String> {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let wait = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(()) => Ok(start.elapsed()),
        Err(_) => Err(format!("connection still open after {limit:?}")),
    }
}

/// A backend speaking raw bytes: for every request head it reads, it writes
/// `response` verbatim (which must be a complete HTTP/1.1 response), keeping
/// the connection open for the next request.
pub async fn raw_backend(response: &'static [u8]) -> SocketAddr {
    fake_backend(move |_| Some(response.to_vec())).await
}

/// A raw TCP backend: after each request head, it writes what `answer`
/// makes of the head, or, given `None`, hangs up.
async fn fake_backend<F>(answer: F) -> SocketAddr
where
    F: Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = Arc::new(answer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        seen.drain(..end + 4);
                        // No answer: dropping the stream closes it unanswered.
                        let Some(bytes) = answer(&head) else { return };
                        if stream.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// `backends = [...]` for plain addresses, with agents nobody answers for.
pub fn backends_without_agents(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr = \"{a}\", agent = \"127.0.0.1:1\" }}"))
        .collect();
    format!("backends = [{}]", items.join(", "))
}

/// The `/status.json` entry of the backend at `addr`.
pub fn backend_status(status: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    let addr = addr.to_string();
    status["backends"]
        .as_array()
        .expect("backends is an array")
        .iter()
        .find(|b| b["addr"] == addr.as_str())
        .unwrap_or_else(|| panic!("{addr} not in {status}"))
        .clone()
}

/// `GET url` with `headers` over HTTP/2 with prior knowledge (h2c), bounded
/// by 30 s.
pub async fn get_h2(url: &str, headers: &[(&str, &str)]) -> Resp {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = send(&client, req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.version, http::Version::HTTP_2, "{url}");
    r
}

// ---------------------------------------------------------------------------
// Hosts whose speed the test sets, and sequential traffic on one keep-alive
// client, for the least-loaded robustness tests.

/// A backend whose speed the test controls, so that a host can be made
/// slow (every request takes `slowdown` times longer) or stall once (one
/// request answered late), independently of what its agent reports.
///
/// It answers every path with `200`, `X-Backend: id` and a one-line body,
/// after waiting the `ms` of the query (as the demo backend's `/delay`)
/// times the slowdown, plus a pending stall if one is armed. `/health`
/// always answers at once, so health probes neither consume a stall nor
/// see the slowness: only the requests the balancer routes do.
pub struct DelayHost {
    pub addr: SocketAddr,
    pub id: String,
    /// Multiplier of the requested delay: 1 is an ordinary host.
    slowdown: Arc<std::sync::atomic::AtomicU32>,
    /// Extra milliseconds the next routed request waits, once (0: none).
    stall: Arc<std::sync::atomic::AtomicU64>,
}

impl DelayHost {
    /// Starts a host named `id` whose requests take `slowdown` times the
    /// `ms` they ask for.
    pub async fn start(id: &str, slowdown: u32) -> DelayHost {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slowdown = Arc::new(AtomicU32::new(slowdown));
        let stall = Arc::new(AtomicU64::new(0));
        let header = http::HeaderValue::from_str(id).unwrap();
        let (slow, once) = (Arc::clone(&slowdown), Arc::clone(&stall));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (slow, once, header) = (Arc::clone(&slow), Arc::clone(&once), header.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let header = header.clone();
                        let wait = if req.uri().path() == "/health" {
                            Duration::ZERO
                        } else {
                            let ms = query_ms(req.uri().query().unwrap_or(""));
                            let extra = once.swap(0, Relaxed);
                            Duration::from_millis(ms * u64::from(slow.load(Relaxed)) + extra)
                        };
                        async move {
                            if !wait.is_zero() {
                                tokio::time::sleep(wait).await;
                            }
                            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                                b"delay host\n",
                            )));
                            resp.headers_mut().insert("x-backend", header);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        DelayHost {
            addr,
            id: id.to_owned(),
            slowdown,
            stall,
        }
    }

    /// From now on, every routed request takes `times` the delay it asks for.
    pub fn set_slowdown(&self, times: u32) {
        self.slowdown
            .store(times, std::sync::atomic::Ordering::Relaxed);
    }

    /// The next routed request (not a health probe) waits `extra` longer.
    pub fn stall_next(&self, extra: Duration) {
        self.stall.store(
            extra.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Disarms a stall that no request has taken yet.
    pub fn cancel_stall(&self) {
        self.stall.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `ms=N` of a query string, 0 when absent or not a number.
fn query_ms(query: &str) -> u64 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `backends = [...]` naming each address with its agent.
pub fn backends_toml_addrs(hosts: &[(SocketAddr, &FakeAgent)]) -> String {
    let items: Vec<String> = hosts
        .iter()
        .map(|(h, a)| format!("{{ addr = \"{h}\", agent = \"{}\" }}", a.addr))
        .collect();
    format!("backends = [{}]", items.join(", "))
}

/// One client connection reused for a run of sequential requests: faster
/// than a connection per request, and what a real client does. The
/// balancer chooses a backend per request, not per connection.
#[derive(Clone)]
pub struct Seq {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Seq {
    pub fn new() -> Seq {
        Seq { client: client() }
    }

    /// `GET url`, which must answer `200`; returns its `X-Backend`.
    pub async fn get(&self, url: &str) -> String {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        let r = send(&self.client, req).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
        r.backend()
    }

    /// Counts `X-Backend` values of `n` sequential GETs of `url`.
    pub async fn tally(&self, url: &str, n: usize) -> Shares {
        let mut shares = Shares::default();
        for _ in 0..n {
            shares.add(self.get(url).await);
        }
        shares
    }

    /// Sequential GETs of `url` until `until`, pausing `pause` between
    /// them (light traffic that leaves the machine to the rest); counts
    /// their `X-Backend` values.
    pub async fn tally_until(&self, url: &str, until: Instant, pause: Duration) -> Shares {
        let mut shares = Shares::default();
        while Instant::now() < until {
            shares.add(self.get(url).await);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        shares
    }
}

impl Default for Seq {
    fn default() -> Seq {
        Seq::new()
    }
}

/// How many of a run of requests each backend answered.
#[derive(Debug, Clone, Default)]
pub struct Shares {
    pub counts: std::collections::BTreeMap<String, usize>,
    pub total: usize,
}

impl Shares {
    pub fn add(&mut self, backend: String) {
        *self.counts.entry(backend).or_default() += 1;
        self.total += 1;
    }

    /// Requests `id` answered.
    pub fn count(&self, id: &str) -> usize {
        self.counts.get(id).copied().unwrap_or(0)
    }

    /// The fraction of the requests `id` answered (0 when there were none).
    pub fn share(&self, id: &str) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.count(id) as f64 / self.total as f64
    }
}

impl std::fmt::Display for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} requests:", self.total)?;
        for (id, n) in &self.counts {
            write!(
                f,
                " {id} {n} ({:.1} %)",
                100.0 * *n as f64 / self.total.max(1) as f64
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Resilience: backends that fail live traffic in particular ways.

/// A backend that reads each request head and then resets the connection
/// (RST, not FIN): a backend that fails *after* receiving the request.
pub async fn reset_backend() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.set_zero_linger();
                drop(stream);
            });
        }
    });
    addr
}

/// A backend whose application fails while its health check passes (the
/// case outlier ejection exists for): `GET /health` answers `200 ok`,
/// everything else `500`, with `X-Backend: id`.
pub async fn failing_backend(id: &'static str) -> SocketAddr {
    fake_backend(move |head| {
        let (status, body) = if head.starts_with("GET /health ") {
            ("200 OK", "ok")
        } else {
            ("500 Internal Server Error", "boom")
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nx-backend: {id}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        Some(answer.into_bytes())
    })
    .await
}

/// Counts the statuses of `n` sequential GETs of `url`.
pub async fn statuses(url: &str, n: usize) -> std::collections::HashMap<u16, usize> {
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        *counts.entry(get(url).await.status.as_u16()).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------
// Bodies that arrive in timed pieces, for the compression tests.

/// One step of a [`scripted_backend`]'s answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long.
    Sleep(Duration),
    /// Close the connection, wherever the answer is.
    Close,
}

/// A raw TCP backend that answers every request head by running `script`:
/// writing bytes, pausing, or hanging up mid-answer. So a test can send a
/// head with `Content-Length`, part of the body, then stall or fail.
pub async fn scripted_backend(script: Vec<Step>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let script = Arc::new(script);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        for step in script.iter() {
                            match step {
                                Step::Send(bytes) => {
                                    if stream.write_all(bytes).await.is_err() {
                                        return;
                                    }
                                }
                                Step::Sleep(d) => tokio::time::sleep(*d).await,
                                Step::Close => return,
                            }
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// A file holding `token` (and a newline), written once per test binary
/// and token, in a directory of this process's own: tests run in
/// parallel, and rewriting the file could let one test's config read it
/// while another's write has just truncated it.
pub fn token_file(token: &str) -> std::path::PathBuf {
    static FILES: Mutex<Vec<(String, std::path::PathBuf)>> = Mutex::new(Vec::new());
    let mut files = FILES.lock().unwrap();
    if let Some((_, path)) = files.iter().find(|(t, _)| t == token) {
        return path.clone();
    }
    let dir = std::env::temp_dir().join(format!("balancer-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("token-{}", files.len()));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    files.push((token.to_owned(), path.clone()));
    path
}
