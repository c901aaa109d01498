//! One admin connection: hyper's HTTP/1.1 with the head timeout of
//! `[timeouts] header` and the idle timeout of `[timeouts] idle`, so that
//! idle or slow clients cannot hold admin connections (and file
//! descriptors) open for ever.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::pool::Pool;

/// Serves `stream` in a task of its own until the client closes it, sends
/// its head too slowly, or moves no byte for `[timeouts] idle`.
pub(super) fn spawn(stream: TcpStream, pool: Arc<Pool>) {
    let timeouts = pool.snapshot().config.timeouts;
    tokio::spawn(serve(stream, pool, timeouts.header, timeouts.idle));
}

async fn serve(stream: TcpStream, pool: Arc<Pool>, header: Duration, idle: Duration) {
    let moved = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted {
        inner: stream,
        moved: Arc::clone(&moved),
    });
    let service = service_fn(move |req| {
        let pool = Arc::clone(&pool);
        async move { Ok::<_, Infallible>(super::respond(&pool, req).await) }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(crate::deadline::capped(header));
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    // Checked every `idle`: closed once a whole `idle` passed with no byte
    // read or written (so after `idle` to `2 × idle` of silence).
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep(idle) => {
                let now = moved.load(Relaxed);
                if now == seen {
                    tracing::debug!("closing an idle admin connection");
                    return;
                }
                seen = now;
            }
        }
    }
}

/// A stream that counts the reads and writes that moved bytes.
struct Counted {
    inner: TcpStream,
    moved: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved.fetch_add(1, Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.moved.fetch_add(1, Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.moved.fetch_add(1, Relaxed);
        }
        polled
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
