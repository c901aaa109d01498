//! The load agent: reports its host's (or cgroup's) CPU and memory as JSON.
//!
//! - [`report`]: the wire format, shared with the balancer.
//! - [`sample`]: the sampler (host-wide via `sysinfo`, or the cgroup's quota
//!   and limit) and the [`Monitor`] that keeps its latest report.
//! - `cgroup` (private): finding and reading cgroup v1/v2 files.
//! - this file: the HTTP server, [`run`] and [`serve`].

#![forbid(unsafe_code)]

mod cgroup;
pub mod report;
pub mod sample;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use report::{LoadReport, ReportError};
pub use sample::{CgroupPaths, Monitor, SampleError, Sampler};

/// How long open connections get to finish after shutdown is signalled;
/// every answer is immediate, so this only bounds a stuck client.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A client that has not sent its request head by then is dropped, so idle
/// half-open connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Samples this machine (cgroup-aware) and serves `GET /load` on `listener`
/// until `shutdown` completes, then lets open connections finish.
///
/// The first report is taken before serving, so this waits one sampling
/// interval before answering.
pub async fn run(listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let sampler = Sampler::new(&CgroupPaths::system()).map_err(io::Error::other)?;
    let monitor = Monitor::start(sampler, sample::INTERVAL).await;
    serve(listener, monitor, shutdown).await
}

/// Serves `monitor`'s latest report on `listener` until `shutdown`
/// completes: [`run`] with the sampler chosen by the caller (tests give it
/// a fake cgroupfs).
pub async fn serve(
    listener: TcpListener,
    monitor: Monitor,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "agent serving GET /load");
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
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = respond(request.method(), request.uri().path(), &monitor.latest());
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

/// The whole routing table: `GET`/`HEAD /load`, 405 for other methods
/// there, 404 elsewhere.
fn respond(method: &Method, path: &str, report: &LoadReport) -> Response<Full<Bytes>> {
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
    let json = match serde_json::to_vec(report) {
        Ok(json) => json,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode report: {e}\n"),
            )
        }
    };
    let length = json.len();
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
            let response = respond(&method, path, &REPORT);
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
        let get = respond(&Method::GET, "/load", &REPORT);
        let head = respond(&Method::HEAD, "/load", &REPORT);
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
