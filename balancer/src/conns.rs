//! The connections to one backend: opened, reused most-recently-used first,
//! capped, and closed when idle — owned by the proxy instead of a generic
//! pooled client.
//!
//! Why not hyper-util's pooled `Client`: every request there is handed to
//! the connection's own task through a channel and its answer handed back
//! (two cross-task wake-ups per request, often across threads), the pool is
//! one lock for every backend, it has no cap (a burst of 500 requests left
//! 508 idle connections behind), and it cannot say how many connections
//! are open. Here, as in nginx's upstream keepalive and HAProxy's idle
//! connection lists:
//!
//! - **The request's task drives its connection.** A [`Lease`] holds the
//!   HTTP/1 connection future itself; [`Conns::send`] polls it beside the
//!   response, and the response body ([`ResponseBody`]) polls it while the
//!   body streams. When the body ends the connection goes back idle. No
//!   task is spawned per connection and nothing crosses tasks per request
//!   (an `Upgrade` request is the exception: its connection outlives the
//!   exchange, so it runs in a task of its own and is never reused).
//! - **Idle connections are a stack per worker thread** (LIFO: the most
//!   recently used is the warmest and the least likely to have been closed
//!   by the backend), so two threads do not take turns on one lock, and a
//!   connection stays with the worker runtime whose I/O driver it is
//!   registered with. A thread takes from another's stack only when the
//!   cap forbids opening one.
//! - **Open connections are capped** (`[limits] max_conns_per_backend`).
//!   At the cap a request waits for one to come back or close, up to the
//!   connect timeout, then fails over to another backend (the backend is
//!   not blamed: it is our limit, not its failure).
//! - **Idle connections are closed** after `[timeouts] idle` by a sweeper
//!   (one per backend, every second), and all of them when the backend
//!   leaves the configuration.
//! - **A reused connection the backend closed while idle is replaced**
//!   without the request noticing: hyper hands back a request it never
//!   started to write ([`http1::SendRequest::try_send_request`]), and the
//!   request goes out on the next connection.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::request_body::UpstreamBody;

type Conn = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// Whether hyper sends a request's head and body parts with one `writev`
/// rather than copying them into one buffer for a `write`.
const WRITEV: bool = false;

/// Idle stacks per backend: one per thread that serves requests (threads
/// beyond this many share).
const SHARDS: usize = 64;

/// How often idle connections past their time are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most idle connections a request looks through (each found closed by the
/// backend) before it opens a new one.
const MAX_STALE_TRIES: usize = 16;

/// What a lease needs from the configuration, read at each use so that a
/// reload applies at once.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connecting, and waiting at the cap for a connection, takes at most
    /// this long.
    pub connect: Duration,
    /// Open connections at most; 0: no cap.
    pub max: u32,
}

/// The connections to one backend.
#[derive(Debug)]
pub struct Conns {
    addr: SocketAddr,
    /// Idle connections, one most-recently-used-last stack per worker
    /// thread.
    shards: Box<[Mutex<Vec<Idle>>]>,
    /// Connections open: leased, idle, or carrying an upgrade.
    open: AtomicUsize,
    /// Of those, idle.
    idle: AtomicUsize,
    /// Requests waiting at the cap.
    waiting: AtomicUsize,
    /// A connection came back or closed: the next waiter may go on.
    freed: Notify,
}

/// What [`Conns::get`] found.
enum Got {
    /// An idle connection.
    Idle(Live),
    /// Room for a new one.
    New(Slot),
}

/// An idle connection.
struct Idle {
    live: Live,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

/// An open connection: the handle requests are sent through, the
/// connection future that does the work when polled, and its place in the
/// count of open connections.
struct Live {
    send: http1::SendRequest<UpstreamBody>,
    /// `None` once it has ended (dropping it is what hands a request it
    /// never wrote back to its sender).
    conn: Option<Box<Conn>>,
    slot: Slot,
}

/// One open connection in [`Conns::open`]; dropping it closes the count.
/// Weak, so that idle connections (which hold one) do not keep their
/// backend's [`Conns`] alive.
#[derive(Debug)]
struct Slot(Weak<Conns>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(conns) = self.0.upgrade() {
            conns.open.fetch_sub(1, Relaxed);
            if conns.waiting.load(Relaxed) > 0 {
                conns.freed.notify_one();
            }
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Connecting failed (refused, unreachable, ...).
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    /// Connecting took longer than the connect timeout.
    #[error("connect timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Every allowed connection stayed busy for the whole connect timeout.
    #[error("all {max} connections stayed busy for {}", humantime::format_duration(*.after))]
    Saturated {
        /// `[limits] max_conns_per_backend`.
        max: u32,
        /// How long the request waited.
        after: Duration,
    },
    /// The HTTP/1 handshake failed (it does no I/O; kept for completeness).
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

impl ConnectError {
    /// Whether nothing listens at the backend's address.
    pub fn is_refused(&self) -> bool {
        matches!(self, ConnectError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused)
    }
}

/// An exchange that failed, with the request if it never went out.
#[derive(Debug)]
pub struct Failed {
    /// What went wrong.
    pub error: SendError,
    /// The request, back whole: nothing of it was written.
    pub request: Option<Request<UpstreamBody>>,
}

impl Failed {
    fn before_sending(e: ConnectError, req: Request<UpstreamBody>) -> Failed {
        Failed {
            error: SendError::Connect(e),
            request: Some(req),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed after the request may have gone out.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

thread_local! {
    /// This thread's idle stack, as an index into every backend's shards.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed);
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl Conns {
    /// No connections yet to `addr`.
    pub fn new(addr: SocketAddr) -> Conns {
        Conns {
            addr,
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            open: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Connections open now (leased, idle, or tunnelling an upgrade).
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Of those, idle.
    pub fn idle(&self) -> usize {
        self.idle.load(Relaxed)
    }

    /// Sends `req` on a connection to this backend, reusing the most
    /// recently used idle one, and returns the response head with the
    /// connection, which rides in the response body until its end.
    ///
    /// A reused connection the backend closed while it sat idle (found so
    /// before the request was written) is dropped and the request goes out
    /// on the next one; only a failure on a fresh connection, or after the
    /// request went out, is an error.
    pub async fn send(
        self: &Arc<Self>,
        settings: Settings,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), Failed> {
        let deadline = crate::deadline::from_now(settings.connect);
        let mut stale = 0;
        let live = loop {
            let got = match self.get(settings, deadline, true).await {
                Ok(got) => got,
                Err(e) => return Err(Failed::before_sending(e, req)),
            };
            match got {
                Got::Idle(live) => {
                    let mut lease = Lease::new(live);
                    match lease.send_once(req).await {
                        Ok(resp) => return Ok((resp, lease)),
                        Err(mut e) => match e.take_message() {
                            Some(back) if stale < MAX_STALE_TRIES => {
                                stale += 1;
                                req = back;
                            }
                            back => {
                                return Err(Failed {
                                    request: back,
                                    error: e.into_error().into(),
                                })
                            }
                        },
                    }
                }
                Got::New(slot) => {
                    let (send, conn) = match Box::pin(self.open_conn(settings, deadline)).await {
                        Ok(c) => c,
                        Err(e) => return Err(Failed::before_sending(e, req)),
                    };
                    break Live {
                        send,
                        conn: Some(Box::new(conn)),
                        slot,
                    };
                }
            }
        };
        let mut lease = Lease::new(live);
        match lease.send_once(req).await {
            Ok(resp) => Ok((resp, lease)),
            Err(mut e) => Err(Failed {
                request: e.take_message(),
                error: e.into_error().into(),
            }),
        }
    }

    /// Sends an `Upgrade` request on a fresh connection that runs in its
    /// own task, so that it can carry the upgraded protocol after a `101`
    /// (and is never reused).
    pub async fn send_upgrade(
        self: &Arc<Self>,
        settings: Settings,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let deadline = crate::deadline::from_now(settings.connect);
        let slot = match self.get(settings, deadline, false).await {
            Ok(Got::New(slot)) => slot,
            Ok(Got::Idle(_)) => unreachable!("asked for a new connection only"),
            Err(e) => return Err(Failed::before_sending(e, req)),
        };
        let (mut send, conn) = match Box::pin(self.open_conn(settings, deadline)).await {
            Ok(c) => c,
            Err(e) => return Err(Failed::before_sending(e, req)),
        };
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upgraded connection ended: {e}");
            }
        });
        send.send_request(req).await.map_err(|e| Failed {
            error: e.into(),
            request: None,
        })
    }

    /// An idle connection (if `reuse`), or room for a new one; at the cap,
    /// waits until `deadline` for either. The wait, rare, is boxed so that
    /// every request's future does not carry its state.
    async fn get(
        self: &Arc<Self>,
        settings: Settings,
        deadline: Instant,
        reuse: bool,
    ) -> Result<Got, ConnectError> {
        match self.try_get(settings, reuse) {
            Some(got) => Ok(got),
            None => Box::pin(self.wait_for_room(settings, deadline, reuse)).await,
        }
    }

    /// An idle connection of this thread's (if `reuse`), or room for a new
    /// one, or (at the cap) another thread's idle connection.
    fn try_get(self: &Arc<Self>, settings: Settings, reuse: bool) -> Option<Got> {
        if reuse {
            if let Some(live) = self.pop(false) {
                return Some(Got::Idle(live));
            }
        }
        if let Some(slot) = self.reserve(settings.max) {
            return Some(Got::New(slot));
        }
        if reuse {
            if let Some(live) = self.pop(true) {
                return Some(Got::Idle(live));
            }
        }
        None
    }

    /// At the cap: waits until `deadline` for a connection to come back or
    /// close.
    async fn wait_for_room(
        self: &Arc<Self>,
        settings: Settings,
        deadline: Instant,
        reuse: bool,
    ) -> Result<Got, ConnectError> {
        loop {
            // Register before looking again, so that a connection freed in
            // between is not missed.
            self.waiting.fetch_add(1, Relaxed);
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let found = self.try_get(settings, reuse);
            let woken = found.is_some() || tokio::time::timeout_at(deadline, freed).await.is_ok();
            self.waiting.fetch_sub(1, Relaxed);
            if let Some(got) = found {
                return Ok(got);
            }
            if !woken {
                return Err(ConnectError::Saturated {
                    max: settings.max,
                    after: settings.connect,
                });
            }
        }
    }

    /// Connects (within `deadline`) and sets the connection up for HTTP/1.
    async fn open_conn(
        &self,
        settings: Settings,
        deadline: Instant,
    ) -> Result<(http1::SendRequest<UpstreamBody>, Conn), ConnectError> {
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(self.addr)).await {
            Ok(stream) => stream?,
            Err(_) => return Err(ConnectError::Timeout(settings.connect)),
        };
        let _ = stream.set_nodelay(true);
        http1::Builder::new()
            .writev(WRITEV)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)
    }

    /// Counts one more open connection, unless that would pass `max`.
    fn reserve(self: &Arc<Self>, max: u32) -> Option<Slot> {
        let max = if max == 0 { usize::MAX } else { max as usize };
        self.open
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(Arc::downgrade(self)))
    }

    /// The most recently used idle connection of this thread's stack or,
    /// with `steal`, of any thread's.
    ///
    /// A connection belongs to the runtime that opened it (its socket is
    /// registered with that runtime's I/O driver), so one taken from
    /// another worker's stack would wake that worker's thread on every read
    /// for the rest of its life: stealing is for when the cap forbids
    /// opening one of our own.
    fn pop(&self, steal: bool) -> Option<Live> {
        if self.idle.load(Relaxed) == 0 {
            return None;
        }
        let n = self.shards.len();
        let me = SHARD.with(|s| *s) % n;
        let tries = if steal { n } else { 1 };
        for k in 0..tries {
            let found = self.shards[(me + k) % n]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            if let Some(idle) = found {
                self.idle.fetch_sub(1, Relaxed);
                return Some(idle.live);
            }
        }
        None
    }

    /// Puts a connection whose exchange ended back on this thread's stack.
    fn put(&self, live: Live) {
        let me = SHARD.with(|s| *s) % self.shards.len();
        self.shards[me]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Idle {
                live,
                since: Instant::now(),
            });
        self.idle.fetch_add(1, Relaxed);
        if self.waiting.load(Relaxed) > 0 {
            self.freed.notify_one();
        }
    }

    /// Closes the connections idle for longer than `limit`. The oldest
    /// lie at the bottom of each stack.
    pub fn sweep(&self, limit: Duration) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let expired: Vec<Idle> = {
                let mut stack = shard.lock().unwrap_or_else(PoisonError::into_inner);
                let keep_from = stack
                    .iter()
                    .position(|i| now.saturating_duration_since(i.since) < limit)
                    .unwrap_or(stack.len());
                stack.drain(..keep_from).collect()
            };
            self.idle.fetch_sub(expired.len(), Relaxed);
            // Closed here, outside the lock.
            drop(expired);
        }
    }
}

/// Closes `conns`' idle connections past `[timeouts] idle` every second,
/// for as long as `conns` exists and `idle()` answers.
pub fn spawn_sweeper(conns: Weak<Conns>, idle: impl Fn() -> Option<Duration> + Send + 'static) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(conns), Some(limit)) = (conns.upgrade(), idle()) else {
                return;
            };
            conns.sweep(limit);
        }
    });
}

/// A connection taken for one exchange. It goes back idle when the
/// response body has been read to its end; dropped before that (an error,
/// a client gone), it closes.
pub struct Lease {
    live: Option<Live>,
    /// When the request was handed to the connection (after any connect
    /// or wait at the cap).
    pub sent_at: Instant,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("sent_at", &self.sent_at)
            .finish_non_exhaustive()
    }
}

impl Lease {
    fn new(live: Live) -> Lease {
        Lease {
            live: Some(live),
            sent_at: Instant::now(),
        }
    }

    /// Sends `req` and waits for the response head, driving the connection
    /// meanwhile (it writes the request, streams its body, reads the head).
    async fn send_once(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
        let live = self.live.as_mut().expect("a lease is live until it ends");
        let response = live.send.try_send_request(req);
        tokio::pin!(response);
        let conn = &mut live.conn;
        std::future::poll_fn(|cx| {
            if let Some(c) = conn {
                if Pin::new(&mut **c).poll(cx).is_ready() {
                    // Ended: closed by the backend, or failed. Dropping it
                    // answers the request (with the request itself, if it
                    // was never written).
                    *conn = None;
                }
            }
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Polls the connection: it moves the response body's bytes.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(Live { conn: Some(c), .. }) = &mut self.live {
            if Pin::new(&mut **c).poll(cx).is_ready() {
                self.live = None;
            }
        }
    }

    /// The response ended: the connection goes back idle if it is ready for
    /// another request (it is not if, say, the request body was still
    /// going out); otherwise it closes. Without a task to poll it from
    /// (`cx` is `None`), a connection not ready at once closes.
    fn finish(&mut self, cx: Option<&mut Context<'_>>) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        if !live.send.is_ready() {
            let (Some(cx), Some(c)) = (cx, &mut live.conn) else {
                return;
            };
            if Pin::new(&mut **c).poll(cx).is_ready() {
                return;
            }
        }
        if live.send.is_ready() && live.conn.is_some() {
            if let Some(home) = live.slot.0.upgrade() {
                home.put(live);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The backend's response body, carrying the lease of the connection it
    /// arrives on: polling the body drives the connection, and its end
    /// returns the connection to the idle stack.
    #[derive(Debug)]
    pub struct ResponseBody {
        body: Incoming,
        lease: Option<Lease>,
    }
}

impl ResponseBody {
    /// `body`, arriving on `lease`'s connection (`None` for a connection
    /// that runs on its own).
    pub fn new(body: Incoming, lease: Option<Lease>) -> ResponseBody {
        let mut b = ResponseBody { body, lease };
        if b.body.is_end_stream() {
            // Nothing more will arrive (and the server may never poll an
            // empty body): the connection is free already.
            if let Some(mut lease) = b.lease.take() {
                lease.finish(None);
            }
        }
        b
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let mut frame = Pin::new(&mut *this.body).poll_frame(cx);
        if frame.is_pending() {
            if let Some(lease) = this.lease.as_mut() {
                lease.drive(cx);
                frame = Pin::new(&mut *this.body).poll_frame(cx);
            }
        }
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            // The exchange broke: the connection closes with the lease.
            Poll::Ready(Some(Err(_))) => {
                *this.lease = None;
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some(mut lease) = this.lease.take() {
                lease.finish(Some(cx));
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
