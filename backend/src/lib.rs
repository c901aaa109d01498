//! The demo/test HTTP backend: what integration tests and benchmarks put
//! behind the balancer.
//!
//! It serves HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one listener,
//! answers every request with an `X-Backend: <id>` header, and offers
//! endpoints whose cost, size, timing and headers the caller chooses, so that
//! a test can make a backend slow, busy, big, streaming, sick or upgraded on
//! demand.
//!
//! # Module map
//!
//! - [`lib.rs`](crate): [`Config`] and [`run`], the accept loop with graceful
//!   shutdown.
//! - `routes`: the endpoint table: method checks, dispatch, the small
//!   handlers and the error answers (400/404/405).
//! - `query`: query-string and path-number parsing, and the
//!   header-setting query parameters shared by the generated bodies.
//! - `gen`: the periodic patterns behind `/text`, `/json`, `/html`,
//!   `/bytes` and `/words` (`gen/words.rs`), built once per process.
//! - `body`: the one response body type: fixed bytes, generated, ticking
//!   (`/stream`) or the echoed request body.
//! - `cpu`: burning thread CPU time for `/work`.
//! - `upgrade`: the `/echo` upgrade handshake and the byte echo after it.
//!
//! # Endpoints
//!
//! Every response carries `X-Backend: <id>`. `GET` endpoints also answer
//! `HEAD`. A wrong method gets `405` with `Allow`, an unknown path `404`, a
//! bad number `400`; each error has a one-line `text/plain` body saying why.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | `200`, a short text naming the backend |
//! | `GET /health` | `200 ok`, or `503 down` after `POST /health/down` |
//! | `POST /health/down` | `200`; `/health` answers `503` from now on (sick but alive) |
//! | `POST /health/up` | `200`; `/health` answers `200` again |
//! | `POST /sha1` | `200`, the 40 hex digits of the SHA-1 of the request body (streamed) |
//! | `GET /text/N` | `200`, N bytes of compressible `text/plain; charset=utf-8` |
//! | `GET /json/N` | `200`, exactly N bytes of valid `application/json` (N ≥ 2) |
//! | `GET /html/N` | `200`, N bytes of `text/html; charset=utf-8` |
//! | `GET /bytes/N` | `200`, N bytes of incompressible `application/octet-stream` |
//! | `GET /words/N` | `200`, exactly N bytes of valid `application/json`: records of seeded random words, low redundancy (gzip -6 about 3.5:1 at 100 KB) |
//! | `GET /work?ms=N` | burns N ms of thread CPU time (≤ 60000), then `200` |
//! | `GET /delay?ms=N` | waits N ms (≤ 600000), then `200` |
//! | `GET /stream?chunks=N&ms=M[&size=B]` | `200` `text/plain`, N chunks M ms apart, no `Content-Length`; each chunk is a `chunk I` line, or B bytes of text when `size` is given |
//! | `GET /status/N` | status N (100..=999; 1xx other than 101 → `400`); a one-line body unless the status forbids one |
//! | `GET /headers` | `200` `text/plain`: `METHOD URI VERSION`, then one `name: value` line per request header, in received order (repeats of a name follow its first line) |
//! | `GET /echo` + `Connection: upgrade` + `Upgrade: P` | `101` with `Upgrade: P` (and `Sec-WebSocket-Accept` when `Sec-WebSocket-Key` is sent), then echoes every byte until EOF; without the headers `426` |
//! | `POST /echo-body` | `200`, the request body streamed back with the request's `Content-Type` |
//!
//! N in `/text`, `/json`, `/html`, `/bytes` and `/words` is at most 1 GiB;
//! bodies of any size stream in 64 KiB chunks and carry `Content-Length`.
//! These five take optional query parameters that shape the response
//! headers (values are percent-decoded; `+` stays `+`), for testing the
//! balancer's compression rules:
//!
//! | parameter | effect |
//! |---|---|
//! | `etag=X` | `ETag: X`, verbatim |
//! | `cache_control=V` | `Cache-Control: V` |
//! | `content_encoding=V` | `Content-Encoding: V` (the body is unchanged) |
//! | `content_type=V` | `Content-Type: V` instead of the endpoint's own |
//! | `vary=V` | `Vary: V` |
//! | `chunked=1` | no `Content-Length`: the body's size is unknown to the client |

#![forbid(unsafe_code)]

mod body;
mod cpu;
mod gen;
mod query;
mod routes;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How one backend instance presents itself and shuts down.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sent as `X-Backend` on every response, so that tests and benchmarks
    /// can tell which backend behind the balancer answered.
    pub id: String,
    /// How long shutdown waits for in-flight requests before dropping the
    /// connections that are still open.
    pub grace: Duration,
}

impl Config {
    /// A config with the given id and a 10 s shutdown grace period.
    pub fn new(id: impl Into<String>) -> Self {
        Config {
            id: id.into(),
            grace: Duration::from_secs(10),
        }
    }
}

/// What every request handler shares: built once per [`run`].
struct State {
    /// The `X-Backend` value, validated once so each response only clones it.
    id: HeaderValue,
    /// The body of `GET /`, built once.
    root: bytes::Bytes,
    /// `false` after `POST /health/down`: `/health` then answers `503`.
    healthy: AtomicBool,
    /// Connections still open after the grace period, and upgraded `/echo`
    /// tunnels, end when its sender is dropped as [`run`] returns.
    closing: watch::Receiver<()>,
}

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` completes, then
/// stops accepting, lets in-flight requests finish for up to
/// [`Config::grace`], and returns.
///
/// The caller binds the listener, so tests can bind `127.0.0.1:0` and learn
/// the address before the server starts. Errors: an `id` that cannot be an
/// HTTP header value (`InvalidInput`). Accept errors (such as running out of
/// file descriptors) are logged and retried, not returned.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let id = HeaderValue::from_str(&config.id).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("backend id {:?} is not a valid header value", config.id),
        )
    })?;
    let (close_tx, close_rx) = watch::channel(());
    let state = Arc::new(State {
        id,
        root: format!("backend {}\n", config.id).into(),
        healthy: AtomicBool::new(true),
        closing: close_rx,
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let mut closing = state.closing.clone();
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(routes::handle(req, &state).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                result = conn => if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                },
                // The grace period is over: drop the connection.
                _ = closing.changed() => {}
            }
        });
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down; waiting for in-flight requests"
    );
    if tokio::time::timeout(config.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.grace, "grace period over; dropping open connections");
    }
    drop(close_tx);
    Ok(())
}
