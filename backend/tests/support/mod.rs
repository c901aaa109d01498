//! Test support: a backend running in-process on `127.0.0.1:0`, and small
//! HTTP/1.1 and HTTP/2 clients over real TCP. Every wait is bounded.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bound on any single wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if it takes longer than [`LIMIT`].
pub async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("timed out")
}

/// A backend running in this process.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Starts a backend named `id` on a fresh loopback port.
    pub async fn start(id: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = backend::Config::new(id);
        config.grace = Duration::from_secs(5);
        let task = tokio::spawn(backend::run(listener, config, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        bounded(&mut self.task)
            .await
            .expect("server task")
            .expect("server result");
    }

    /// Waits for `run` to return after [`Server::begin_shutdown`].
    pub async fn join(mut self) {
        bounded(&mut self.task)
            .await
            .expect("server task")
            .expect("server result");
    }
}

/// A whole response, with when its head and each data frame arrived.
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Arrival time of each data frame, from when the request was sent.
    pub frames: Vec<Duration>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("utf-8 body")
    }

    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

/// Builds a request with a body.
pub fn request(method: Method, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "backend.test")
        .body(Full::new(body.into()))
        .expect("request")
}

/// Reads a whole response body, timing each frame from `start`.
async fn collect(response: http::Response<hyper::body::Incoming>, start: Instant) -> Reply {
    let (parts, mut body) = response.into_parts();
    let mut frames = Vec::new();
    let mut bytes = Vec::new();
    while let Some(frame) = bounded(body.frame()).await {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            frames.push(start.elapsed());
            bytes.extend_from_slice(data);
        }
    }
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: bytes.into(),
        frames,
    }
}

/// An HTTP/1.1 connection that can carry several requests in turn.
pub struct H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
        let (send, conn) = bounded(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        H1(send)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        bounded(self.0.ready()).await.expect("connection ready");
        let start = Instant::now();
        let response = bounded(self.0.send_request(req)).await.expect("response");
        collect(response, start).await
    }
}

/// Sends one request on a new HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    H1::connect(addr).await.send(req).await
}

/// `GET path` on a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, request(Method::GET, path, Bytes::new())).await
}

/// Sends one request over HTTP/2 with prior knowledge (h2c).
pub async fn send_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let (mut send, conn) = bounded(hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(stream),
    ))
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().expect("uri");
    parts.headers.remove("host");
    let start = Instant::now();
    let response = bounded(send.send_request(Request::from_parts(parts, body)))
        .await
        .expect("h2 response");
    collect(response, start).await
}
