//! The client-facing listener: accepts connections, tells HTTP/2 (prior
//! knowledge) from HTTP/1.1 by the first bytes, serves each on hyper,
//! closes idle connections, and drains gracefully on shutdown.
//!
//! HTTP/1.1 connections hibernate between requests (`h1`): an idle
//! keep-alive connection is a bare socket awaiting readability, not a
//! hyper connection with its buffers. HTTP/2 connections are served by
//! hyper's `http2` builder for their whole life.

mod backoff;
mod h1;
mod io;

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
use tokio::io::ReadBuf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::pool::Pool;
use crate::proxy;

use self::io::ClientIo;

/// Largest request head accepted; beyond it hyper answers `431`.
pub const MAX_HEAD: usize = 64 * 1024;

/// The client preface that opens an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves proxied traffic on `listener` until `shutdown` resolves, then
/// stops accepting, closes idle connections and gives in-flight requests
/// `timeouts.drain` to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
    shutdown: impl Future<Output = ()>,
) {
    // Every connection task holds a receiver: the send tells them to stop,
    // and `closed` resolves once the last of them has ended.
    let (stop, _) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer) = accept(&listener) => spawn_connection(stream, peer, &pool, &stop),
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drain(&pool, stop).await;
}

/// The next connection on `listener`. Out of file descriptors and the
/// like: it backs off briefly rather than spin (the listener itself stays
/// usable) and tries again, logging at most once a second. Every listener
/// (client and admin) accepts through this.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                backoff::accept_failed(listener, &e);
                tokio::time::sleep(backoff::PAUSE).await;
            }
        }
    }
}

/// Serves `stream` in a task of its own on the current runtime; `stop`
/// tells it to close (see [`drain`]).
pub(crate) fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    pool: &Arc<Pool>,
    stop: &watch::Sender<()>,
) {
    let timeouts = pool.snapshot().config.timeouts;
    let conn = Conn {
        peer,
        pool: Arc::clone(pool),
        idle: timeouts.idle,
        header: timeouts.header,
    };
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
    pool: Arc<Pool>,
    /// No request in progress and no byte moving for this long: closed.
    idle: Duration,
    /// A request head must arrive whole within this (slowloris guard).
    header: Duration,
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

/// Serves an HTTP/2 connection on hyper until it ends, is idle for
/// `conn.idle`, or shutdown drains it.
async fn http2(
    stream: TcpStream,
    conn: Conn,
    mut timer: Pin<&mut Sleep>,
    mut stopped: Pin<&mut impl Stopped>,
) {
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(ClientIo::new(stream, Bytes::new(), Arc::clone(&activity)));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32);
    let service = service(&conn, &activity);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let peer = conn.peer;
    let mut idle = IdleCheck::start(&activity, conn.idle, timer.as_mut());
    let mut stopping = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            () = timer.as_mut() => if idle.is_idle(&activity, conn.idle, timer.as_mut()) {
                tracing::debug!(%peer, "closing idle connection");
                return;
            },
            _ = stopped.as_mut(), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
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
    let client = Arc::new(proxy::Peer::new(conn.peer));
    service_fn(move |req| {
        let busy = Busy::new(&activity);
        let pool = Arc::clone(&pool);
        let client = Arc::clone(&client);
        async move {
            let resp = proxy::serve(pool, req, client).await?;
            Ok(resp.map(|body| Tracked { body, _busy: busy }))
        }
    })
}

/// What the client receives: the proxy's response, counted in progress.
type Response = http::Response<Tracked<proxy::ProxyBody>>;

/// What the idle timeout and HTTP/1 hibernation watch on one connection.
#[derive(Default)]
struct Activity {
    /// Reads and writes that moved bytes, ever.
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
}

impl Activity {
    /// Bytes moved: the connection is not idle.
    fn moved(&self) {
        self.io.fetch_add(1, Relaxed);
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

/// The idle timeout of a connection served by hyper: checked every `limit`
/// with the connection's timer, it fires once a whole `limit` has passed
/// with no request in progress and no byte moving (so such a connection
/// lives `limit` to `2 × limit`). Counting operations instead of reading
/// the clock on every read and write keeps the data path free of time
/// calls.
struct IdleCheck {
    /// The count of reads and writes at the last check.
    seen: u64,
}

impl IdleCheck {
    /// Starts watching `activity`, arming `timer` for the first check.
    fn start(activity: &Activity, limit: Duration, timer: Pin<&mut Sleep>) -> IdleCheck {
        timer.reset(Instant::now() + limit);
        IdleCheck {
            seen: activity.io.load(Relaxed),
        }
    }

    /// Called when `timer` fires: whether the connection is idle; if not,
    /// re-arms `timer` for the next check.
    fn is_idle(&mut self, activity: &Activity, limit: Duration, timer: Pin<&mut Sleep>) -> bool {
        let now = activity.io.load(Relaxed);
        if now == self.seen && activity.requests.load(Relaxed) == 0 {
            return true;
        }
        self.seen = now;
        timer.reset(Instant::now() + limit);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hibernating HTTP/1 connection is its task and tokio's registration
    /// of its socket, so the task's future must stay small: a hyper
    /// connection or a second timer inline would add hundreds of bytes to
    /// every idle connection (release builds: 624 bytes, a 768-byte task).
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
        let conn = Conn {
            peer,
            pool: Pool::start(config),
            idle: Duration::from_secs(1),
            header: Duration::from_secs(1),
        };
        let task = connection(stream, conn, stopped);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 704, "the connection future is {size} bytes");
    }
}
