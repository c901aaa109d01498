//! HTTP/1.1 connections that hibernate between requests.
//!
//! A hyper HTTP/1 connection keeps its buffers for its whole life. Live
//! heap per idle keep-alive connection under the former design (hyper-util's
//! auto builder, one hyper connection per client connection), measured with
//! a heap profiler over 2,000 idle connections that had each served one
//! `GET /`:
//!
//! | bytes | what |
//! | ---: | --- |
//! | 16,384 | hyper's read buffer (8 KiB, regrown to 16 KiB after the first head was split off it) |
//! | 8,192 | hyper's write buffer (`WriteBuf` headers `Vec`) |
//! | 3,840 | the task: the connection future inline (hyper's dispatcher and `Conn` state, the auto builder's copy of its settings, `Rewind`, the graceful-shutdown watcher, the idle timer) |
//! | 2,432 | hyper's `in_flight` box, room for one service future (`proxy::serve`) |
//! | 832 | the last response's `HeaderMap`, which hyper keeps to parse the next head into |
//! | 320 | hyper's write queue (`BufList`'s `VecDeque`) |
//! | 264 | hyper's `body_rx` box, room for one response body |
//! | 256 | tokio's I/O registration (`ScheduledIo`) |
//! | 112 | the header read timer (hyper restarts it while idle) |
//! | 40 | the read buffer's shared header (`BytesMut` after `split_to`) |
//! | 32 | `Arc<Activity>` |
//! | 16 | `Arc<TokioTimer>` |
//! | 32,720 | in all, in 13 allocations (21.9 KB of RSS: untouched buffer pages are not resident) |
//!
//! Now an idle connection is only its socket: each burst of requests is
//! served by a fresh `hyper::server::conn::http1` connection, which is
//! ended at a message boundary where it would wait for the next request
//! (at once after a connection's first burst, after [`GRACE`] after later
//! ones); the task then awaits the socket's readability (up to the idle
//! timeout) and starts the next one. Measured the same way:
//!
//! | bytes | what |
//! | ---: | --- |
//! | 768 | the task: tokio's header and a 632-byte future holding the socket, the peer address, the pool handle, the TLS facts' pointer (`None` here), the timeouts, the shutdown receiver and the connection's one timer and one shutdown future |
//! | 256 | tokio's I/O registration (`ScheduledIo`) |
//! | 1,024 | in all, in 2 allocations |
//!
//! The future's size is guarded by a unit test: a hyper connection, a
//! second timer or an `async fn`'s copy of its arguments inline would add
//! hundreds of bytes to every idle connection.
//!
//! How a hyper connection is ended between two requests without losing a
//! byte:
//!
//! - hyper starts its header read timer each time it begins to wait for a
//!   request head (hyper 1.12: also between keep-alive requests). Its
//!   timer here is [`HeadTimer`], which marks the connection *quiet*: a
//!   head is awaited and no byte of it has come. A byte read, or a request
//!   starting, clears the mark.
//! - A read that finds the socket empty while the connection is quiet,
//!   has no request in progress and has flushed all it wrote marks it
//!   *resting*; still resting after the grace, the burst lets
//!   [`ClientIo`] report end-of-file, instead of `Pending`, to the next
//!   such read. hyper takes that as the client closing an idle keep-alive
//!   connection: it flushes, ends cleanly, and calls `poll_shutdown`,
//!   which `ClientIo` makes a no-op at rest. `into_parts` gives the socket
//!   back.
//! - A request head that had begun to arrive never meets end-of-file in
//!   the connection that read its first byte, so hyper's header read
//!   timeout applies to it from the burst's start. The one exception is a
//!   pipelined head whose start came with the previous request: hyper
//!   then ends with an "incomplete message" error and nothing written, the
//!   bytes it had read come back in `Parts::read_buf`, and the next hyper
//!   connection reads them first, after a hibernation bounded by the
//!   header timeout rather than the idle one.
//! - An upgraded connection (`101`) leaves with hyper's `Upgraded` to the
//!   tunnel; a connection hyper closes itself (`Connection: close`, an
//!   error, shutdown) is closed.
//!
//! The cost is building a hyper connection per burst of requests rather
//! than per client connection: some microseconds, paid once more by a
//! client that comes back, and then only when it pauses longer than
//! [`GRACE`] (which a connection spends with its hyper buffers).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::rt::{Sleep as HyperSleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::parse_errors::{HeadSleep, HeadWatch, ParseErrors};
use super::{service, Activity, Check, ClientIo, Conn, IdleCheck, Stopped, MAX_HEAD};

/// Serves an HTTP/1.1 connection whose first bytes are readable, burst by
/// burst, until it closes, times out or shutdown stops it. `timer` is the
/// connection's one timer.
#[allow(clippy::manual_async_fn)] // see `connection`
pub(super) fn serve<'a>(
    mut stream: TcpStream,
    conn: &'a Conn,
    mut timer: Pin<&'a mut Sleep>,
    mut stopped: Pin<&'a mut impl Stopped>,
) -> impl Future<Output = ()> + 'a {
    async move {
        let mut prefix = Bytes::new();
        // The first burst hibernates at once: see `GRACE`.
        let mut returning = false;
        loop {
            let (lent, stop) = (timer.as_mut(), stopped.as_mut());
            let burst = burst(stream, &mut prefix, returning, conn, lent, stop);
            returning = true;
            stream = match burst.await {
                Some(stream) => stream,
                None => return,
            };
            // Hibernate: a client that has begun a head owes the rest of it
            // within the header timeout; otherwise the idle timeout applies.
            let wait = if prefix.is_empty() {
                conn.idle
            } else {
                conn.header
            };
            timer.as_mut().reset(crate::deadline::from_now(wait));
            // `poll_read_ready` keeps its waker in the socket's registration:
            // a future of one reference where `readable()` holds a waiter.
            let ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
            tokio::select! {
                ready = ready => if ready.is_err() {
                    return;
                },
                () = timer.as_mut() => {
                    tracing::debug!(peer = %conn.peer, "closing idle connection");
                    return;
                }
                _ = stopped.as_mut() => return,
            }
        }
    }
}

/// Serves requests on one hyper connection, reading `prefix` first, until
/// it comes to rest (then returns the socket, with any bytes of a head read
/// but not parsed in `prefix`) or ends (`None`: the socket is closed, or
/// upgraded and handed on).
#[allow(clippy::manual_async_fn)] // see `connection`
fn burst<'a>(
    stream: TcpStream,
    prefix: &'a mut Bytes,
    returning: bool,
    conn: &'a Conn,
    mut timer: Pin<&'a mut Sleep>,
    mut stopped: Pin<&'a mut impl Stopped>,
) -> impl Future<Output = Option<TcpStream>> + 'a {
    async move {
        let activity = Arc::new(Activity::new(false));
        let io = ClientIo::new(stream, std::mem::take(prefix), Arc::clone(&activity));
        let watch = Arc::new(HeadWatch::default());
        let io = TokioIo::new(ParseErrors::new(io, Arc::clone(&watch)));
        // Boxed, so that its memory is freed while the connection hibernates;
        // built in a block, so that the builder is not kept across awaits.
        let served = {
            let mut builder = http1::Builder::new();
            builder
                .timer(HeadTimer(Arc::clone(&activity), watch))
                .header_read_timeout(crate::deadline::capped(conn.header))
                // Both: `max_buf_size` alone bounds the head only when a read
                // ends short of it (a read that completes a longer head passes).
                .max_header_size(MAX_HEAD)
                .max_buf_size(MAX_HEAD);
            Box::new(
                builder
                    .serve_connection(io, service(conn, &activity))
                    .with_upgrades(),
            )
        };
        let mut idle = IdleCheck::start(&activity, conn, timer.as_mut());
        // While resting: the count of reads and writes when the grace began.
        let mut resting: Option<u64> = None;
        let mut stopping = false;
        // A `move` closure that hands `served` back: the state it keeps
        // across polls is then kept once, not also as references to it.
        let mut served = Some(served);
        let ended = std::future::poll_fn(move |cx| loop {
            let Some(hyper) = served.as_deref_mut() else {
                return Poll::Pending;
            };
            if let Poll::Ready(result) = Pin::new(&mut *hyper).poll(cx) {
                return Poll::Ready(served.take().map(|s| (s, result, stopping)));
            }
            if !stopping && stopped.as_mut().poll(cx).is_ready() {
                stopping = true;
                Pin::new(hyper).graceful_shutdown();
                continue;
            }
            if resting.is_none() && activity.rest.load(Relaxed) == RESTING {
                resting = Some(activity.moves());
                let grace = if returning {
                    GRACE.min(conn.header / 2)
                } else {
                    Duration::ZERO
                };
                timer.as_mut().reset(Instant::now() + grace);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match resting.take() {
                // A whole grace at rest: hyper's next read ends the burst.
                Some(seen)
                    if activity.rest.load(Relaxed) == RESTING && activity.moves() == seen =>
                {
                    activity.rest.store(HIBERNATE, Relaxed);
                    idle = IdleCheck::start(&activity, conn, timer.as_mut());
                }
                // A request came: back to the idle check.
                Some(_) => idle = IdleCheck::start(&activity, conn, timer.as_mut()),
                None => match idle.check(&activity, conn, timer.as_mut()) {
                    Check::Busy => {}
                    Check::Idle | Check::SendStalled => return Poll::Ready(None),
                },
            }
        })
        .await;
        let Some((served, result, stopping)) = ended else {
            tracing::debug!(peer = %conn.peer, "closing idle connection");
            return None;
        };
        // `None`: upgraded, and the tunnel has the socket.
        let parts = served.into_parts()?;
        let io = parts.io.into_inner().into_inner();
        if !io.rested() || stopping {
            if let Err(e) = result {
                tracing::debug!(peer = %conn.peer, "connection ended: {e}");
            }
            return None;
        }
        let (stream, unread) = io.into_parts();
        *prefix = if parts.read_buf.is_empty() {
            unread
        } else {
            // Copied: `read_buf` shares hyper's whole read buffer.
            Bytes::from([&parts.read_buf[..], &unread[..]].concat())
        };
        Some(stream)
    }
}

/// How long a keep-alive connection at rest stays on hyper, buffers and
/// all, before it hibernates: a client that sends its next request sooner
/// (a browser loading a page, a load generator, a pipeline of API calls)
/// is served by the same hyper connection, so building one costs a burst
/// of requests rather than each request. Capped at half the header
/// timeout, which hyper runs while it waits.
///
/// Only for a connection that has come back from hibernation once: one
/// that has sent a single burst (often a single request) mostly stays
/// idle, and a grace for every new connection would keep the buffers of
/// all those opened in the last 100 ms (under 4,000 new connections a
/// second, 400 × 25 KB of buffers that the allocator keeps resident).
const GRACE: Duration = Duration::from_millis(100);

/// [`Activity::rest`]: a request or bytes in progress.
pub(super) const BUSY: u8 = 0;
/// [`Activity::rest`]: at rest, the socket found empty; the grace runs.
pub(super) const RESTING: u8 = 1;
/// [`Activity::rest`]: the grace is over: the next read that would block
/// ends the burst.
pub(super) const HIBERNATE: u8 = 2;

/// hyper's timer for one burst. Only the header read timeout uses it on an
/// HTTP/1 server connection, and hyper starts that timer whenever it begins
/// to wait for a request head: the moment the connection may come to rest.
/// It is dropped once the head is parsed, which the [`HeadWatch`] tells
/// (see [`super::parse_errors`]).
struct HeadTimer(Arc<Activity>, Arc<HeadWatch>);

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn HyperSleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn HyperSleep>> {
        self.0.quiet.store(true, Relaxed);
        Box::pin(HeadSleep::new(deadline, &self.1))
    }

    fn now(&self) -> std::time::Instant {
        TokioTimer::new().now()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn HyperSleep>>, new_deadline: std::time::Instant) {
        self.0.quiet.store(true, Relaxed);
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(head) => head.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}
