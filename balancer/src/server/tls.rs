//! TLS client connections, from the first byte to close.
//!
//! - The first byte tells a TLS handshake from plain HTTP sent to the TLS
//!   port by mistake, which gets a one-line `400` (as nginx answers) and
//!   is closed.
//! - The handshake, and the wait for it to start, run under the header
//!   timeout: a client that stalls in its handshake is closed as one that
//!   stalls in a request head is. A failed handshake (TLS 1.1 or older, no
//!   common cipher or protocol, garbage) ends the connection alone.
//! - Then ALPN decides: `h2` is served by the same HTTP/2 path as plain
//!   HTTP/2, anything else as HTTP/1.1, each on hyper for the connection's
//!   whole life. The connection's requests see `X-Forwarded-Proto: https`
//!   through its [`TlsInfo`].
//!
//! Unlike a plain HTTP/1.1 connection (`h1`), an idle keep-alive TLS
//! connection does not hibernate: rustls keeps its state and buffers, and
//! hyper its own, for the connection's life. Measured with the release
//! binary on one worker thread, as the growth of its RSS over 2,000 idle
//! connections that had each served one `GET /` (allocator overhead
//! included): about 28 KiB per idle HTTP/1.1 TLS connection and 36 KiB per
//! HTTP/2 one, against 1.3 KiB for a hibernating plain connection measured
//! the same way. 10,000 idle HTTPS clients thus hold some 300 MiB. A
//! browser multiplexes a site's requests over one HTTP/2 connection, so
//! this is per client, not per request. (Most of the HTTP/1.1 figure is
//! hyper's buffers, which `h1`'s hibernation would free over TLS too.)

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::rt::{Sleep as HyperSleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{service, Activity, ClientIo, Conn, Stopped, MAX_HEAD};
use crate::limits::ConnSlot;
use crate::pool::Pool;
use crate::tls::{Terminator, TlsInfo};

/// The first byte of a TLS record that carries a handshake message (RFC
/// 8446 §5.1): what every ClientHello starts with.
const HANDSHAKE_RECORD: u8 = 22;

/// The answer to plain HTTP on the TLS port.
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 48\r\n\
connection: close\r\n\
\r\n\
this port speaks HTTPS: use an https:// address\n";

/// Serves a connection accepted on the TLS listener, in a task of its own
/// on the current runtime; `stop` tells it to close (see `drain`).
pub(crate) fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
    pool: &Arc<Pool>,
    terminator: &Arc<Terminator>,
    stop: &watch::Sender<()>,
) {
    let conn = Conn::new(peer, slot, pool);
    let acceptor = terminator.acceptor();
    tokio::spawn(connection(stream, conn, acceptor, stop.subscribe()));
}

/// One TLS connection: the handshake, then HTTP/2 or HTTP/1.1 by ALPN.
async fn connection(
    stream: TcpStream,
    mut conn: Conn,
    acceptor: TlsAcceptor,
    mut stop: watch::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let timer = tokio::time::sleep(conn.header);
    tokio::pin!(timer);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let peer = conn.peer;
    let stream = tokio::select! {
        s = handshake(stream, &acceptor, peer) => s,
        () = timer.as_mut() => {
            tracing::debug!(%peer, "no TLS handshake within the header timeout: closing");
            None
        }
        _ = stopped.as_mut() => None,
    };
    let Some(stream) = stream else {
        return;
    };
    let info = TlsInfo::of(stream.get_ref().1);
    let h2 = info.h2;
    conn.tls = Some(Arc::new(info));
    if h2 {
        super::http2(stream, conn, timer, stopped).await;
    } else {
        http1(stream, conn, timer, stopped).await;
    }
}

/// Runs the handshake of a client whose first byte says TLS; answers plain
/// HTTP with `400`. `None`: the connection is over.
async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    if !matches!(stream.peek(&mut first).await, Ok(1)) {
        return None;
    }
    if first[0] != HANDSHAKE_RECORD {
        // A request line starts with a method, in letters.
        if first[0].is_ascii_alphabetic() {
            tracing::debug!(%peer, "plain HTTP on the TLS port: answering 400");
            refuse_plain(stream).await;
        }
        return None;
    }
    match acceptor.accept(stream).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            None
        }
    }
}

/// Answers [`PLAIN_ON_TLS`] and closes, reading what the client sends until
/// it closes too: a socket closed with unread bytes is reset, which can
/// destroy the answer before the client has read it. Bounded by the
/// caller's timer.
async fn refuse_plain(mut stream: TcpStream) {
    if stream.write_all(PLAIN_ON_TLS).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Serves HTTP/1.1 over TLS on one hyper connection until it ends, is idle
/// for `conn.idle`, stalls on a client that does not read for `conn.send`,
/// is told to close by a response, or shutdown drains it.
async fn http1<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    conn: Conn,
    timer: Pin<&mut Sleep>,
    stopped: Pin<&mut impl Stopped>,
) {
    let activity = Arc::new(Activity::new(false));
    let io = TokioIo::new(ClientIo::new(stream, Bytes::new(), Arc::clone(&activity)));
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer {
            activity: Arc::clone(&activity),
            header: conn.header,
            first: AtomicBool::new(true),
        })
        .header_read_timeout(crate::deadline::capped(conn.header))
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD);
    let served = builder
        .serve_connection(io, service(&conn, &activity))
        .with_upgrades();
    tokio::pin!(served);
    super::supervise(
        served.as_mut(),
        |s| s.graceful_shutdown(),
        &conn,
        &activity,
        timer,
        stopped,
    )
    .await;
}

/// hyper's timer for HTTP/1.1 over TLS, whose only use is the header read
/// timeout. hyper starts that timeout whenever it waits for a request
/// head, also between keep-alive requests, which would cut an idle
/// keep-alive connection at the header timeout instead of the idle one.
/// So the clock starts with the head's first byte ([`HeadSleep`]), and
/// until then the connection's idle check governs. The first head is timed
/// from the handshake's end: a client that completes a handshake and sends
/// nothing is closed as soon as one that never sends a byte on a plain
/// connection.
struct HeadTimer {
    activity: Arc<Activity>,
    header: Duration,
    /// No head has been awaited yet.
    first: AtomicBool,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn HyperSleep>> {
        Box::pin(HeadSleep {
            activity: Arc::clone(&self.activity),
            header: duration,
            sleep: Box::pin(tokio::time::sleep(duration)),
            started: true,
        })
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn HyperSleep>> {
        // `quiet`: a head is awaited and no byte of it has come; a read
        // that brings bytes clears it (see `ClientIo`).
        self.activity.quiet.store(true, Relaxed);
        Box::pin(HeadSleep {
            activity: Arc::clone(&self.activity),
            header: self.header,
            sleep: Box::pin(tokio::time::sleep(self.header)),
            started: self.first.swap(false, Relaxed),
        })
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// The header read timeout of one request head: `header` from its first
/// byte. hyper polls it each time its read of the head finds no complete
/// head, which is also right after bytes arrive: the moment to start.
struct HeadSleep {
    activity: Arc<Activity>,
    header: Duration,
    sleep: Pin<Box<Sleep>>,
    started: bool,
}

impl HyperSleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.started {
            if this.activity.quiet.load(Relaxed) {
                return Poll::Pending;
            }
            this.started = true;
            let deadline = crate::deadline::from_now(this.header);
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_declares_its_length() {
        let text = std::str::from_utf8(PLAIN_ON_TLS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body.lines().count(), 1);
    }
}
