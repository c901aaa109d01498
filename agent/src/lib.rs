//! The load agent: reports its host's (or cgroup's) CPU and memory as JSON.
//!
//! - [`report`]: the wire format, shared with the balancer.
//! - [`auth`]: the key shared with the balancer, and the `LB-HMAC` scheme
//!   that authenticates polls and reports with it (wire format there).
//! - [`sample`]: the sampler (host-wide via `sysinfo`, or the cgroup's quota
//!   and limit) and the [`Monitor`] that keeps its latest report.
//! - `cgroup` (private): finding and reading cgroup v1/v2 files.
//! - [`register`]: self-registration with a balancer's admin API
//!   (`--register`): announce, heartbeat, withdraw on shutdown.
//! - this file: the HTTP server, [`run`] and [`serve`].

#![forbid(unsafe_code)]

pub mod auth;
mod cgroup;
pub mod register;
pub mod report;
pub mod sample;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
    WWW_AUTHENTICATE,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use auth::{AuthError, Key, KeyError, Nonce};
pub use report::{LoadReport, ReportError};
pub use sample::{CgroupPaths, Monitor, SampleError, Sampler};

/// How long open connections get to finish after shutdown is signalled;
/// every answer is immediate, so this only bounds a stuck client.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A client that has not sent its request head by then is dropped, so idle
/// half-open connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How the agent serves, beyond where.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The key shared with the balancer (`--key-file`): with it, requests
    /// without valid credentials get `401` and every report is
    /// authenticated (see [`auth`]); without it, anyone may read reports.
    pub key: Option<Key>,
    /// The host name reported beside the load (`--hostname`); `None`: the
    /// machine's own.
    pub hostname: Option<String>,
}

/// Samples this machine (cgroup-aware) and serves `GET /load` on `listener`
/// until `shutdown` completes, then lets open connections finish.
///
/// The first report is taken before serving, so this waits one sampling
/// interval before answering.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    run_with(listener, Options::default(), shutdown).await
}

/// [`run`] with `options`.
pub async fn run_with(
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let sampler = Sampler::new(&CgroupPaths::system()).map_err(io::Error::other)?;
    let monitor = Monitor::start(sampler, sample::INTERVAL).await;
    serve_with(listener, monitor, options, shutdown).await
}

/// Serves `monitor`'s latest report on `listener` until `shutdown`
/// completes: [`run`] with the sampler chosen by the caller (tests give it
/// a fake cgroupfs).
pub async fn serve(
    listener: TcpListener,
    monitor: Monitor,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, monitor, Options::default(), shutdown).await
}

/// [`serve`] with `options`.
pub async fn serve_with(
    listener: TcpListener,
    monitor: Monitor,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    // Reported beside the load, so operators see host names, not only
    // addresses; read once (it does not change under a running agent).
    let hostname: Option<std::sync::Arc<str>> = options
        .hostname
        .clone()
        .or_else(sample::hostname)
        .map(Into::into);
    if let Ok(addr) = listener.local_addr() {
        let auth = if options.key.is_some() {
            "LB-HMAC, key required"
        } else {
            "none: anyone who reaches this port may read reports"
        };
        tracing::info!(%addr, "agent serving GET /load (authentication: {auth})");
    }

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually out of file descriptors: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let monitor = monitor.clone();
        let key = options.key.clone();
        let hostname = hostname.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = answer(&request, key.as_ref(), &monitor, hostname.as_deref(), peer);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended with an error: {e}");
            }
        });
    }

    drop(listener);
    tracing::info!("shutting down");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
    Ok(())
}

/// Checks `request`'s credentials when there is a `key` (a stranger gets
/// `401`, whatever the path), then routes it.
fn answer<B>(
    request: &Request<B>,
    key: Option<&Key>,
    monitor: &Monitor,
    hostname: Option<&str>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let sign = match key {
        None => None,
        Some(key) => {
            let credentials = request
                .headers()
                .get(AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            match key.check_authorization(credentials) {
                Ok(nonce) => Some((key, nonce)),
                Err(why) => {
                    // Debug: a port scan must not fill the log.
                    tracing::debug!(%peer, "refused: {why}");
                    return unauthorized();
                }
            }
        }
    };
    let path = request.uri().path();
    respond(request.method(), path, &monitor.latest(), hostname, sign)
}

/// `401`, with the challenge naming the scheme.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "unauthorized: this agent answers only LB-HMAC-signed polls (the balancer's [agent] key_file)\n",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(auth::SCHEME));
    response
}

/// The whole routing table: `GET`/`HEAD /load`, 405 for other methods
/// there, 404 elsewhere. With `sign`, a report is authenticated over the
/// poll's nonce and the body (for `HEAD`, the body a `GET` gets).
fn respond(
    method: &Method,
    path: &str,
    report: &LoadReport,
    hostname: Option<&str>,
    sign: Option<(&Key, Nonce)>,
) -> Response<Full<Bytes>> {
    if path != "/load" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the agent serves GET /load\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET or HEAD\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let json = match serde_json::to_vec(&report::Wire { report, hostname }) {
        Ok(json) => json,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode report: {e}\n"),
            )
        }
    };
    let length = json.len();
    let signature = sign.map(|(key, nonce)| key.sign(&nonce, &json));
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(json)
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    // A load report is stale within a second; no cache should keep it.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(value) = signature.and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.insert(auth::RESPONSE_HEADER, value);
    }
    response
}

/// A one-line plain-text answer.
fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    let plain = HeaderValue::from_static("text/plain; charset=utf-8");
    response.headers_mut().insert(CONTENT_TYPE, plain);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const REPORT: LoadReport = LoadReport {
        cpu: 0.25,
        memory: 0.5,
        cores: 2,
        cpus: 2.0,
        load1: 0.1,
        mem_total_bytes: 1000,
        mem_used_bytes: 500,
    };

    #[tokio::test]
    async fn routes() {
        for (method, path, status, allow, body_is_report) in [
            (Method::GET, "/load", 200, None, true),
            (Method::HEAD, "/load", 200, None, false),
            (Method::POST, "/load", 405, Some("GET, HEAD"), false),
            (Method::DELETE, "/load", 405, Some("GET, HEAD"), false),
            (Method::GET, "/", 404, None, false),
            (Method::GET, "/load/", 404, None, false),
            (Method::POST, "/other", 404, None, false),
        ] {
            let response = respond(&method, path, &REPORT, None, None);
            assert_eq!(response.status(), status, "{method} {path}");
            assert_eq!(
                response.headers().get(ALLOW).map(|v| v.to_str().ok()),
                allow.map(Some)
            );
            let body = response
                .into_body()
                .collect()
                .await
                .expect("full body")
                .to_bytes();
            if body_is_report {
                assert_eq!(LoadReport::parse(&body), Ok(REPORT));
            } else if status != 200 {
                let text = std::str::from_utf8(&body).expect("utf-8");
                assert!(
                    text.ends_with('\n') && text.lines().count() == 1,
                    "{text:?}"
                );
            } else {
                assert!(body.is_empty());
            }
        }
    }

    #[test]
    fn head_announces_the_get_length() {
        let key = Key::new(b"a key of 16 bytes or more").unwrap();
        let nonce = Nonce::from_bytes([1; 16]);
        let get = respond(&Method::GET, "/load", &REPORT, None, Some((&key, nonce)));
        let head = respond(&Method::HEAD, "/load", &REPORT, None, Some((&key, nonce)));
        assert_eq!(
            get.headers().get(auth::RESPONSE_HEADER),
            head.headers().get(auth::RESPONSE_HEADER)
        );
        assert_eq!(
            get.headers().get(CONTENT_LENGTH),
            head.headers().get(CONTENT_LENGTH)
        );
        assert_eq!(
            head.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}
