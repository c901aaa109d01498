//! The stream one hyper connection reads and writes: the client socket,
//! counting its reads and writes for the idle timeout, replaying the bytes
//! of a request head an earlier hyper connection had read but not parsed,
//! and, for HTTP/1, reporting end-of-file where a keep-alive connection
//! would otherwise wait idle (see [`super::h1`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::h1::{BUSY, HIBERNATE, RESTING};
use super::Activity;

/// A client socket (or, for TLS, the decrypted stream over it) as one
/// hyper connection sees it.
pub(super) struct ClientIo<S = TcpStream> {
    stream: S,
    /// Bytes to hand out before reading the socket again: the start of a
    /// request head that the previous hyper connection had read.
    prefix: Bytes,
    /// Shared with the connection's service and head timer.
    activity: Arc<Activity>,
    /// Bytes were written since the last completed flush.
    unflushed: bool,
    /// End-of-file was reported to hyper because the connection had come
    /// to rest (see [`ClientIo::poll_read`]); the socket itself is open.
    rested: bool,
}

impl<S> ClientIo<S> {
    pub(super) fn new(stream: S, prefix: Bytes, activity: Arc<Activity>) -> ClientIo<S> {
        ClientIo {
            stream,
            prefix,
            activity,
            unflushed: false,
            rested: false,
        }
    }

    /// Whether this stream ended its hyper connection by reporting
    /// end-of-file at rest; the socket is then still open and usable.
    pub(super) fn rested(&self) -> bool {
        self.rested
    }

    /// The socket and any prefix bytes hyper has not read.
    pub(super) fn into_parts(self) -> (S, Bytes) {
        (self.stream, self.prefix)
    }

    /// Whether the connection is at rest: its hyper connection waits for a
    /// request head of which no byte has come, has no request in progress
    /// and has flushed everything it wrote.
    fn at_rest(&self) -> bool {
        self.prefix.is_empty()
            && !self.unflushed
            && self.activity.quiet.load(Relaxed)
            && self.activity.requests.load(Relaxed) == 0
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    /// Reads the prefix, then the socket. At rest, a read that would block
    /// marks the connection resting; once its burst has let it rest a
    /// while, such a read reports end-of-file instead, so that hyper ends
    /// the connection cleanly between two requests (and
    /// [`ClientIo::poll_shutdown`] keeps the socket open).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rested {
            return Poll::Ready(Ok(()));
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.read_some();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending if this.at_rest() => {
                if this.activity.rest.load(Relaxed) == HIBERNATE {
                    this.rested = true;
                    return Poll::Ready(Ok(()));
                }
                this.activity.rest.store(RESTING, Relaxed);
                Poll::Pending
            }
            r => {
                if buf.filled().len() > before {
                    this.read_some();
                }
                r
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.written(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        if this.unflushed && matches!(r, Poll::Ready(Ok(()))) {
            this.unflushed = false;
            // hyper may have begun waiting for the next head before this
            // flush (its request body ended last) and found the socket
            // empty while bytes were still unflushed: poll it again, so
            // that its next read finds the connection at rest.
            if this.at_rest() {
                cx.waker().wake_by_ref();
            }
        }
        r
    }

    /// At rest, a no-op: hyper shuts down the streams it is done with, and
    /// this socket goes on to the connection's next request.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rested {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl<S> ClientIo<S> {
    /// Bytes were read: the connection is not idle, and a head has begun.
    fn read_some(&mut self) {
        self.activity.moved();
        self.activity.quiet.store(false, Relaxed);
        self.activity.rest.store(BUSY, Relaxed);
    }

    /// Counts a write that moved bytes (the connection is not idle, the
    /// client is reading), or one that would block (the client may not be
    /// reading: `[timeouts] send`).
    fn written(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.send.wrote(),
            Poll::Pending => self.activity.send.write_blocked(),
            Poll::Ready(_) => {}
        }
    }

    /// A write after reporting end-of-file (which hyper does not do at a
    /// message boundary) means the connection is not at rest after all: it
    /// is shut down and closed rather than reused.
    fn wrote(&mut self) {
        self.unflushed = true;
        self.rested = false;
    }
}
