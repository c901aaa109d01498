//! The client-facing server: takes each connection [`crate::listener`]
//! accepts, serves it by the [`Kind`] of its listener ([`spawn`]), tells
//! HTTP/2 (prior knowledge) from HTTP/1.1 by the first bytes, serves each
//! on hyper, closes idle connections, and drains gracefully on shutdown.
//!
//! Each client connection counts against `[limits]` from accept to close
//! (see [`crate::limits`]); its one timer also runs the send timeout.
//!
//! HTTP/1.1 connections hibernate between requests (`h1`): an idle
//! keep-alive connection is a bare socket awaiting readability, not a
//! hyper connection with its buffers. HTTP/2 connections are served by
//! hyper's `http2` builder for their whole life. hyper's own answers to
//! HTTP/1 heads it cannot parse get a one-line reason (`parse_errors`).
//!
//! TLS connections (`tls`) run their handshake first, then are served as
//! HTTP/2 or HTTP/1.1 as ALPN chose, on hyper for their whole life.

mod h1;
mod io;
mod parse_errors;
mod tls;

pub(crate) use self::tls::spawn_connection as spawn_tls_connection;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::deadline;
use crate::limits::send::SendWatch;
use crate::limits::{CloseConnection, ConnSlot};
use crate::listener::{ConnInfo, Kind, Listeners};
use crate::pool::Pool;
use crate::proxy;
use crate::tls::{Terminator, TlsInfo};

use self::io::ClientIo;

/// Largest request head accepted; beyond it hyper answers `431`.
pub const MAX_HEAD: usize = 64 * 1024;

/// The client preface that opens an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves proxied traffic on `listeners` until `shutdown` resolves, then
/// stops accepting, closes idle connections and gives in-flight requests
/// `timeouts.drain` to finish. `terminator` runs the TLS listener's
/// handshakes.
pub(crate) async fn serve(
    listeners: Listeners,
    pool: Arc<Pool>,
    terminator: Option<Arc<Terminator>>,
    shutdown: impl Future<Output = ()>,
) {
    // Every connection task holds a receiver: the send tells them to stop,
    // and `closed` resolves once the last of them has ended.
    let (stop, _) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer, kind, slot) = listeners.accept(&pool.limiter) => {
                spawn(stream, peer, kind, slot, &pool, terminator.as_ref(), &stop);
            }
            () = &mut shutdown => break,
        }
    }
    drop(listeners);
    drain(&pool, stop).await;
}

/// Serves a connection accepted on a listener of `kind`, in a task on the
/// current runtime; `stop` tells it to close (see [`drain`]).
pub(crate) fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    slot: ConnSlot,
    pool: &Arc<Pool>,
    terminator: Option<&Arc<Terminator>>,
    stop: &watch::Sender<()>,
) {
    match (kind, terminator) {
        (Kind::Plain, _) => spawn_connection(stream, peer, slot, pool, stop),
        (Kind::Tls, Some(t)) => spawn_tls_connection(stream, peer, slot, pool, t, stop),
        (Kind::Tls, None) => {}
    }
}

/// Serves `stream` in a task of its own on the current runtime; `stop`
/// tells it to close (see [`drain`]).
pub(crate) fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
    pool: &Arc<Pool>,
    stop: &watch::Sender<()>,
) {
    let conn = Conn::new(peer, slot, pool);
    tokio::spawn(connection(stream, conn, stop.subscribe()));
}

/// Tells every connection `stop` reaches to close once its requests are
/// done (idle ones at once), and gives them `timeouts.drain` to.
pub(crate) async fn drain(pool: &Pool, stop: watch::Sender<()>) {
    let drain = pool.snapshot().config.timeouts.drain;
    tracing::info!("shutting down: draining in-flight requests (up to {drain:?})");
    let _ = stop.send(());
    if tokio::time::timeout(drain, stop.closed()).await.is_err() {
        tracing::warn!("drain period over; closing the remaining connections");
    }
}

/// What a connection task needs besides its socket; moved into the task.
struct Conn {
    peer: SocketAddr,
    /// TLS connections: set once the handshake is done.
    tls: Option<Arc<TlsInfo>>,
    pool: Arc<Pool>,
    /// No request in progress and no byte moving for this long: closed.
    idle: Duration,
    /// A request head must arrive whole within this (slowloris guard).
    header: Duration,
    /// A response that gets nowhere for this long, the client not reading,
    /// closes the connection (`[timeouts] send`).
    send: Duration,
    /// Counts the connection against `[limits]` until it closes.
    _slot: ConnSlot,
}

impl Conn {
    /// A new connection from `peer`, with the current `[timeouts]`.
    fn new(peer: SocketAddr, slot: ConnSlot, pool: &Arc<Pool>) -> Conn {
        let timeouts = pool.snapshot().config.timeouts;
        Conn {
            peer,
            tls: None,
            pool: Arc::clone(pool),
            idle: timeouts.idle,
            header: timeouts.header,
            send: timeouts.send,
            _slot: slot,
        }
    }
}

/// One client connection, from accept to close. `stop` changes once, on
/// shutdown; dropping it tells the drain this connection is done.
///
/// Written as a function returning an `async` block, as are the other
/// futures of a connection: an `async fn` keeps a second copy of its
/// arguments (rust-lang/rust#62958), and every byte of this future is held
/// by every idle connection.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn connection(
    stream: TcpStream,
    conn: Conn,
    mut stop: watch::Receiver<()>,
) -> impl Future<Output = ()> {
    async move {
        let _ = stream.set_nodelay(true);
        // The one timer and the one shutdown future of this connection, lent
        // from phase to phase (each is some hundred bytes).
        let timer = tokio::time::sleep(conn.header);
        tokio::pin!(timer);
        let stopped = stop.changed();
        tokio::pin!(stopped);
        let detected = tokio::select! {
            d = detect(&stream, timer.as_mut()) => d,
            _ = stopped.as_mut() => return,
        };
        match detected {
            Some(Protocol::Http1) => h1::serve(stream, &conn, timer, stopped).await,
            // Boxed: a hyper HTTP/2 connection is large, and inline it would
            // size every connection's task, hibernating HTTP/1 ones too.
            Some(Protocol::Http2) => Box::pin(http2(stream, conn, timer, stopped)).await,
            None => {}
        }
    }
}

/// The shutdown signal, as lent to each phase of a connection: it must not
/// be polled again once it has resolved.
trait Stopped: Future<Output = Result<(), watch::error::RecvError>> {}

impl<F: Future<Output = Result<(), watch::error::RecvError>>> Stopped for F {}

enum Protocol {
    Http1,
    Http2,
}

/// Waits for the client's first bytes (until `deadline` fires) and tells
/// HTTP/2 prior knowledge by its preface. Peeks, so that the bytes stay in
/// the socket for whichever protocol reads them. `None`: the client closed
/// or sent nothing in time.
async fn detect(stream: &TcpStream, mut deadline: Pin<&mut Sleep>) -> Option<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let peeked = std::future::poll_fn(|cx| {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
            stream.poll_peek(cx, &mut ReadBuf::new(&mut buf))
        });
        let n = peeked.await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // The start of the preface and no more yet (clients send it in one
        // piece; this is rare). The bytes stay readable, so waiting for
        // readiness would return at once: peek again shortly.
        let end = deadline.deadline();
        deadline.as_mut().reset(Instant::now() + pause);
        deadline.as_mut().await;
        if Instant::now() >= end {
            return None;
        }
        deadline.as_mut().reset(end);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

impl Conn {
    /// What the connection's requests are told about it.
    fn info(&self) -> ConnInfo {
        ConnInfo {
            peer: self.peer,
            tls: self.tls.clone(),
        }
    }
}

/// Concurrent streams one HTTP/2 client connection may have open (hyper's
/// default is 200). Each stream can hold a backend connection while its
/// response waits on the client, so this bounds what one client
/// connection can hold (with `[limits] max_conns_per_backend` bounding the
/// total); 100 is what nginx (`http2_max_concurrent_streams`) and the
/// RFC 9113 §6.5.2 recommendation's floor use.
pub const MAX_H2_STREAMS: u32 = 100;

/// Serves an HTTP/2 connection (plain, or TLS after its handshake) on
/// hyper until it ends, is idle for
/// `conn.idle`, stalls on a client that does not read for `conn.send`, is
/// told to close by a response ([`CloseConnection`]), or shutdown drains
/// it.
async fn http2<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    conn: Conn,
    timer: Pin<&mut Sleep>,
    stopped: Pin<&mut impl Stopped>,
) {
    let activity = Arc::new(Activity::new(true));
    let io = TokioIo::new(ClientIo::new(stream, Bytes::new(), Arc::clone(&activity)));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(MAX_H2_STREAMS);
    let service = service(&conn, &activity);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    supervise(
        served.as_mut(),
        |s| s.graceful_shutdown(),
        &conn,
        &activity,
        timer,
        stopped,
    )
    .await;
}

/// Drives a connection hyper serves for its whole life (HTTP/2, and
/// HTTP/1.1 over TLS) until it ends, is idle for `conn.idle`, stalls on a
/// client that does not read for `conn.send`, or is told to close, by a
/// response ([`CloseConnection`]) or by shutdown; then `shutdown` asks
/// hyper to finish what it has and close.
async fn supervise<F, E>(
    mut served: Pin<&mut F>,
    shutdown: impl Fn(Pin<&mut F>),
    conn: &Conn,
    activity: &Activity,
    mut timer: Pin<&mut Sleep>,
    mut stopped: Pin<&mut impl Stopped>,
) where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let peer = conn.peer;
    let close = activity.close.notified();
    tokio::pin!(close);
    let mut idle = IdleCheck::start(activity, conn, timer.as_mut());
    let mut stopping = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            () = timer.as_mut() => match idle.check(activity, conn, timer.as_mut()) {
                Check::Busy => {}
                Check::Idle => {
                    tracing::debug!(%peer, "closing idle connection");
                    return;
                }
                Check::SendStalled => return,
            },
            () = close.as_mut(), if !stopping => {
                stopping = true;
                shutdown(served.as_mut());
            }
            _ = stopped.as_mut(), if !stopping => {
                stopping = true;
                shutdown(served.as_mut());
            }
        }
    }
}

/// The hyper service for one connection (or, for HTTP/1, one burst of
/// requests): proxies each request and counts it in progress until its
/// response body is done.
fn service(
    conn: &Conn,
    activity: &Arc<Activity>,
) -> impl Service<
    http::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send + 'static,
> + Send
       + 'static {
    let (pool, activity) = (Arc::clone(&conn.pool), Arc::clone(activity));
    // Formatted once per burst of requests, not per request, and not kept
    // while the connection hibernates.
    let info = conn.info();
    let client = Arc::new(proxy::Peer::of(info.peer, info.tls));
    service_fn(move |req| {
        let busy = Busy::new(&activity);
        let pool = Arc::clone(&pool);
        let client = Arc::clone(&client);
        async move {
            let resp = proxy::serve(pool, req, client).await?;
            if resp.extensions().get::<CloseConnection>().is_some() {
                // HTTP/1 closes after this response by its `Connection:
                // close`; HTTP/2 is shut down gracefully.
                busy.0.close.notify_one();
            }
            Ok(resp.map(|body| Tracked {
                body,
                _busy: busy,
                handed: None,
            }))
        }
    })
}

/// What the client receives: the proxy's response, counted in progress.
type Response = http::Response<Tracked<proxy::ProxyBody>>;

/// What the idle timeout, the send timeout and HTTP/1 hibernation watch on
/// one connection.
#[derive(Default)]
struct Activity {
    /// Reads that moved bytes, ever (writes are counted by `send`).
    io: AtomicU64,
    /// Requests whose response has not been sent to its last byte: a
    /// connection waiting for a slow backend, or streaming a response with
    /// long pauses, is not idle.
    requests: AtomicUsize,
    /// HTTP/1: hyper waits for the next request head and no byte of it has
    /// come (set by [`h1`]'s head timer, cleared by any byte read and by a
    /// request starting; writes leave it).
    quiet: AtomicBool,
    /// HTTP/1: where the connection is on its way to hibernating
    /// ([`h1::BUSY`], [`h1::RESTING`], [`h1::HIBERNATE`]).
    rest: AtomicU8,
    /// Writes, and what waits on the client (`[timeouts] send`).
    send: SendWatch,
    /// HTTP/2: a response asked for the connection to close
    /// ([`CloseConnection`]).
    close: tokio::sync::Notify,
}

impl Activity {
    /// For an HTTP/2 connection (`h2`) or an HTTP/1 burst.
    fn new(h2: bool) -> Activity {
        Activity {
            send: SendWatch::new(h2),
            ..Activity::default()
        }
    }

    /// Bytes read: the connection is not idle.
    fn moved(&self) {
        self.io.fetch_add(1, Relaxed);
    }

    /// Reads and writes that moved bytes, ever.
    fn moves(&self) -> u64 {
        self.io.load(Relaxed).wrapping_add(self.send.writes())
    }
}

/// Counts a request as in progress on its connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.requests.fetch_add(1, Relaxed);
        activity.quiet.store(false, Relaxed);
        activity.rest.store(h1::BUSY, Relaxed);
        Busy(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request counted as in progress on the
/// connection until the body is done, and (HTTP/2) tells the send timeout
/// when a frame it handed hyper has not gone yet.
struct Tracked<B> {
    body: B,
    _busy: Busy,
    /// The [`SendWatch`] slot of the frame last handed, until hyper polls
    /// again.
    handed: Option<u8>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let send = &this._busy.0.send;
        if let Some(slot) = this.handed.take() {
            send.take_back(slot);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.handed = send.hand();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some(slot) = self.handed.take() {
            self._busy.0.send.take_back(slot);
        }
    }
}

/// The idle and send timeouts of a connection served by hyper, checked
/// with the connection's timer every period, the shorter of `idle` and
/// `send`. Idle: whole periods adding up to `idle` have passed with no
/// request in progress and no byte moving (so such a connection lives
/// `idle` to `idle` plus a period). Send: see [`SendWatch`]. Counting
/// operations instead of reading the clock on every read and write keeps
/// the data path free of time calls.
struct IdleCheck {
    /// The count of reads and writes at the last check.
    seen: u64,
    /// Quiet periods in a row.
    quiet: u32,
}

/// What a check found.
enum Check {
    /// Nothing to do: the timer is armed for the next check.
    Busy,
    /// Idle for `idle`: close.
    Idle,
    /// A response has waited on the client for `send`: close (counted and
    /// logged).
    SendStalled,
}

impl IdleCheck {
    /// Starts watching `activity`, arming `timer` for the first check.
    fn start(activity: &Activity, conn: &Conn, timer: Pin<&mut Sleep>) -> IdleCheck {
        timer.reset(deadline::from_now(conn.idle.min(conn.send)));
        IdleCheck {
            seen: activity.moves(),
            quiet: 0,
        }
    }

    /// Called when `timer` fires: what to do; re-arms `timer` unless the
    /// connection is to close.
    fn check(&mut self, activity: &Activity, conn: &Conn, timer: Pin<&mut Sleep>) -> Check {
        if activity.send.tick() {
            conn.pool
                .limiter
                .rejected
                .send_timeout
                .fetch_add(1, Relaxed);
            tracing::debug!(peer = %conn.peer, "closing a connection whose client stopped reading");
            return Check::SendStalled;
        }
        let period = conn.idle.min(conn.send);
        let now = activity.moves();
        if now == self.seen && activity.requests.load(Relaxed) == 0 {
            self.quiet += 1;
            if period.saturating_mul(self.quiet) >= conn.idle {
                return Check::Idle;
            }
        } else {
            self.quiet = 0;
        }
        self.seen = now;
        timer.reset(deadline::from_now(period));
        Check::Busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    /// A hibernating HTTP/1 connection is its task and tokio's registration
    /// of its socket, so the task's future must stay small: a hyper
    /// connection or a second timer inline would add hundreds of bytes to
    /// every idle connection (release builds: 632 bytes, a 768-byte task).
    #[tokio::test]
    async fn a_connection_task_is_a_few_hundred_bytes() {
        let config = crate::Config::parse(
            "listen = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:1\"]\n",
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let (_stop, stopped) = watch::channel(());
        let pool = Pool::start(config);
        let conn = Conn {
            peer,
            tls: None,
            _slot: pool.limiter.reserve().await,
            pool,
            idle: Duration::from_secs(1),
            header: Duration::from_secs(1),
            send: Duration::from_secs(1),
        };
        let task = connection(stream, conn, stopped);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 704, "the connection future is {size} bytes");
    }
}
