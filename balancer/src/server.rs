//! The client-facing listener: accepts connections, serves HTTP/1.1 and
//! HTTP/2 on each (hyper-util's auto builder, with upgrades), closes idle
//! ones, and drains gracefully on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => connection(stream, peer, &pool, &graceful),
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin; the listener itself stays usable.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let drain = pool.snapshot().config.timeouts.drain;
    tracing::info!("shutting down: draining in-flight requests (up to {drain:?})");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain period over; closing the remaining connections");
    }
}

fn connection(stream: TcpStream, peer: SocketAddr, pool: &Arc<Pool>, graceful: &GracefulShutdown) {
    let _ = stream.set_nodelay(true);
    let timeouts = pool.snapshot().config.timeouts;
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let pool = Arc::clone(pool);
    let service = service_fn(move |req| proxy::serve(Arc::clone(&pool), req, peer));

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

/// Resolves once no byte has moved on the connection for a whole `limit`
/// (checked every `limit`, so an idle connection lives `limit` to
/// `2 × limit`). Counting operations instead of reading the clock on every
/// read and write keeps the data path free of time calls.
async fn idle(activity: Arc<AtomicU64>, limit: Duration) {
    let mut seen = activity.load(Relaxed);
    loop {
        tokio::time::sleep(limit).await;
        let now = activity.load(Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// A stream that counts its reads and writes for the idle timeout.
struct Watched {
    inner: TcpStream,
    activity: Arc<AtomicU64>,
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
            this.activity.fetch_add(1, Relaxed);
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
            this.activity.fetch_add(1, Relaxed);
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
            this.activity.fetch_add(1, Relaxed);
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
