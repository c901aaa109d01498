//! The tunnel of an upgraded connection (WebSocket and other `Upgrade`
//! protocols), and `[timeouts] tunnel`: one idle both ways this long is
//! closed.
//!
//! Bytes are copied both ways as `tokio::io::copy_bidirectional` does; both
//! sides count what moves, and the tunnel's one timer checks the count
//! every `idle`: a whole period with nothing moved closes both sides (so
//! an idle tunnel lives `idle` to `2 × idle`). No clock is read per read or
//! write.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::backend::InFlight;
use crate::limits::{ConnSlot, Limiter};

/// The client's side of an `Upgrade` request, for the tunnel that follows
/// a `101`.
#[derive(Debug)]
pub struct ClientUpgrade {
    /// The client's connection, once hyper hands it over.
    pub on: hyper::upgrade::OnUpgrade,
    /// `[timeouts] tunnel`.
    pub idle: Duration,
    /// The connection outlives its HTTP connection and keeps counting
    /// against the connection limits ([`Limiter::hold`]).
    pub limiter: Arc<Limiter>,
    /// The client.
    pub peer: SocketAddr,
}

/// Copies bytes both ways between an upgraded client and backend
/// connection (WebSocket and other `Upgrade` protocols) until either side
/// closes or neither has sent anything for `[timeouts] tunnel`; the request
/// stays in flight meanwhile, and the client's connection counts against
/// the connection limits.
pub async fn run(
    client: ClientUpgrade,
    _slot: ConnSlot,
    backend: hyper::upgrade::OnUpgrade,
    guard: InFlight,
) {
    match tokio::try_join!(client.on, backend) {
        Ok((c, backend)) => {
            let (mut c, mut backend) = (TokioIo::new(c), TokioIo::new(backend));
            let addr = guard.backend().addr;
            match copy_until_idle(&mut c, &mut backend, client.idle).await {
                Ended::Closed => {}
                Ended::Idle => {
                    client.limiter.rejected.tunnel_timeout.fetch_add(1, Relaxed);
                    tracing::debug!(backend = %addr, "tunnel closed: idle both ways");
                }
                Ended::Failed(e) => tracing::debug!(backend = %addr, "tunnel closed: {e}"),
            }
        }
        Err(e) => tracing::debug!(backend = %guard.backend().addr, "upgrade failed: {e}"),
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Either side closed (the other was shut down after it).
    Closed,
    /// Nothing moved either way for a whole `idle` period.
    Idle,
    /// An I/O error on either side.
    Failed(io::Error),
}

/// Copies bytes both ways between `a` and `b` until both sides have
/// closed, an error, or `idle` passes with nothing moving.
pub async fn copy_until_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = AtomicU64::new(0);
    let (mut a, mut b) = (Counted::new(a, &moved), Counted::new(b, &moved));
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut seen = 0;
    loop {
        tokio::select! {
            r = copy.as_mut() => return match r {
                Ok(_) => Ended::Closed,
                Err(e) => Ended::Failed(e),
            },
            () = tokio::time::sleep(idle) => {
                let now = moved.load(Relaxed);
                if now == seen {
                    return Ended::Idle;
                }
                seen = now;
            }
        }
    }
}

/// One side of a tunnel, counting the reads and writes that move bytes.
struct Counted<'a, T> {
    io: &'a mut T,
    moved: &'a AtomicU64,
}

impl<'a, T> Counted<'a, T> {
    fn new(io: &'a mut T, moved: &'a AtomicU64) -> Self {
        Counted { io, moved }
    }

    fn count<R>(&self, r: &Poll<io::Result<R>>, n: impl Fn(&R) -> bool) {
        if matches!(r, Poll::Ready(Ok(v)) if n(v)) {
            self.moved.fetch_add(1, Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.io).poll_read(cx, buf);
        let after = buf.filled().len();
        this.count(&r, |()| after > before);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.io).poll_write(cx, buf);
        this.count(&r, |n| *n > 0);
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes_and_a_busy_one_does_not() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let tunnel =
            tokio::spawn(
                async move { copy_until_idle(&mut a, &mut b, Duration::from_secs(10)).await },
            );
        // Traffic every 6 s for a minute keeps it open.
        for _ in 0..10 {
            a_peer.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            b_peer.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(!tunnel.is_finished());
        }
        // Then silence: closed within two periods.
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert!(matches!(tunnel.await.unwrap(), Ended::Idle));
    }
}
