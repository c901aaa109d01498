//! The client-facing listener: accepts connections, serves HTTP/1.1 and
//! HTTP/2 on each (hyper-util's auto builder, with upgrades), closes idle
//! ones, and drains gracefully on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::pool::Pool;
use crate::proxy;

/// Largest request head accepted; beyond it hyper answers `431`.
pub const MAX_HEAD: usize = 64 * 1024;

/// Serves proxied traffic on `listener` until `shutdown` resolves, then
/// stops accepting and gives in-flight requests `timeouts.drain` to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer) = accept(&listener) => connection(stream, peer, &pool, &graceful),
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drain(&pool, graceful).await;
}

/// The next connection on `listener`. Out of file descriptors and the
/// like: it backs off briefly rather than spin (the listener itself stays
/// usable) and tries again.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Gives the connections `graceful` watches `timeouts.drain` to finish
/// their requests, then lets the rest be dropped.
pub(crate) async fn drain(pool: &Pool, graceful: GracefulShutdown) {
    let drain = pool.snapshot().config.timeouts.drain;
    tracing::info!("shutting down: draining in-flight requests (up to {drain:?})");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain period over; closing the remaining connections");
    }
}

pub(crate) fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    pool: &Arc<Pool>,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let timeouts = pool.snapshot().config.timeouts;
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let pool = Arc::clone(pool);
    let requests = Arc::clone(&activity);
    let client = Arc::new(proxy::Peer::new(peer));
    let service = service_fn(move |req| {
        let busy = Busy::new(&requests);
        let pool = Arc::clone(&pool);
        let client = Arc::clone(&client);
        async move {
            let resp = proxy::serve(pool, req, client).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32);
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        tokio::select! {
            result = conn => if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            },
            () = idle(activity, timeouts.idle) => {
                tracing::debug!(%peer, "closing idle connection");
            }
        }
    });
}

/// What the idle timeout watches on one connection.
#[derive(Default)]
struct Activity {
    /// Reads and writes that moved bytes, ever.
    io: AtomicU64,
    /// Requests whose response has not been sent to its last byte: a
    /// connection waiting for a slow backend, or streaming a response with
    /// long pauses, is not idle.
    requests: AtomicUsize,
}

/// Counts a request as in progress on its connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.requests.fetch_add(1, Relaxed);
        Busy(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request counted as in progress on the
/// connection until the body is done.
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolves once the connection has had no request in progress and no byte
/// moving for a whole `limit` (checked every `limit`, so an idle connection
/// lives `limit` to `2 × limit`). Counting operations instead of reading
/// the clock on every read and write keeps the data path free of time
/// calls.
async fn idle(activity: Arc<Activity>, limit: Duration) {
    let mut seen = activity.io.load(Relaxed);
    loop {
        tokio::time::sleep(limit).await;
        let now = activity.io.load(Relaxed);
        if now == seen && activity.requests.load(Relaxed) == 0 {
            return;
        }
        seen = now;
    }
}

/// A stream that counts its reads and writes for the idle timeout.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.io.fetch_add(1, Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.io.fetch_add(1, Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.io.fetch_add(1, Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
