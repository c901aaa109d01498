//! The client's request body as it streams upstream: `[limits]
//! max_request_body` (`413`) and `[timeouts] client_body` (`408`), and
//! the classification of a body that fails through the client's fault.
//!
//! "Stalled" means the client is not keeping the body moving: within any
//! `client_body` of waiting on the client, fewer than [`MIN_PROGRESS`]
//! bytes arrived. A body that stops dead is stalled after `client_body`; so
//! is one trickled at a byte a second (which a timeout between two reads,
//! nginx's `client_body_timeout`, would let live for hours; Apache's
//! `mod_reqtimeout` has a minimum rate for the same reason).
//!
//! Only time spent waiting on the client counts: the clock runs while the
//! body has been asked for a frame and has none. While the backend is not
//! reading (hyper then does not ask), it stands still, so a slow backend
//! never makes its client look stalled. The proxy reads the same count
//! ([`ClientWait`]) to leave that time out of the backend's
//! `[timeouts] request`.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

/// Bytes a body must bring per `client_body` of waiting on the client
/// (about 34 bytes a second at the default 30 s).
pub const MIN_PROGRESS: u64 = 1024;

/// What a request body may do, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `max_request_body` in bytes; 0: no limit.
    pub max: u64,
    /// `[timeouts] client_body`.
    pub stall: Duration,
}

/// Why a client's request body could not be forwarded: the client's fault,
/// never the backend's.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than `max_request_body`.
    #[error("request body larger than the limit of {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The client stopped sending it (or trickled it).
    #[error("request body stalled: the client sent less than {MIN_PROGRESS} bytes in {}", humantime::format_duration(*.after))]
    Stalled {
        /// `[timeouts] client_body`.
        after: Duration,
    },
    /// Malformed (bad chunked encoding, ...) or cut short.
    #[error("malformed or incomplete request body")]
    Client(#[source] hyper::Error),
}

impl BodyError {
    /// The status the client is answered with, if the response has not
    /// started.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Stalled { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Client(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Finds the body error a failed exchange with a backend came from, if
    /// it came from the client's body.
    pub fn find(err: &hyper::Error) -> Option<&BodyError> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = source {
            if let Some(b) = e.downcast_ref::<BodyError>() {
                return Some(b);
            }
            source = e.source();
        }
        None
    }

    fn count(&self, rejected: &super::Rejected) {
        let counter = match self {
            BodyError::TooLarge { .. } => &rejected.body,
            BodyError::Stalled { .. } => &rejected.body_timeout,
            BodyError::Client(_) => &rejected.body_malformed,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// `413` before any backend is contacted: the body says (its
/// `Content-Length`) that it is longer than `max` (0: no limit).
pub fn check_length(
    body: &impl http_body::Body,
    max: u64,
    rejected: &super::Rejected,
) -> Result<(), BodyError> {
    if max > 0 && body.size_hint().lower() > max {
        let e = BodyError::TooLarge { max };
        e.count(rejected);
        return Err(e);
    }
    Ok(())
}

/// How long a request has waited on its client's body, shared between the
/// body (which counts) and the proxy (which extends the backend's
/// `request` timeout by it).
#[derive(Debug)]
pub struct ClientWait {
    born: Instant,
    /// Nanoseconds of finished waits.
    waited: AtomicU64,
    /// When the current wait began, in nanoseconds after `born`, plus one;
    /// 0: not waiting.
    since: AtomicU64,
}

impl Default for ClientWait {
    fn default() -> Self {
        ClientWait {
            born: Instant::now(),
            waited: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }
}

impl ClientWait {
    /// All the time spent waiting on the client up to `now`.
    pub fn total(&self, now: Instant) -> Duration {
        let waited = self.waited.load(Relaxed);
        let current = match self.since.load(Relaxed) {
            0 => 0,
            since => self.nanos(now).saturating_sub(since - 1),
        };
        Duration::from_nanos(waited.saturating_add(current))
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }

    fn begin(&self, at: Instant) {
        self.since.store(self.nanos(at).saturating_add(1), Relaxed);
    }

    fn end(&self, waited: Duration) {
        self.since.store(0, Relaxed);
        let n = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.waited.fetch_add(n, Relaxed);
    }
}

/// Runs the backend exchange `fut` under `[timeouts] request`, leaving out
/// the time spent waiting on the client's body (`wait`, if the request has
/// one): that time is the client's, and `client_body` bounds it.
pub async fn within<F: std::future::Future>(
    limit: Duration,
    wait: Option<&ClientWait>,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let Some(wait) = wait else {
        return tokio::time::timeout(limit, fut).await;
    };
    let start = Instant::now();
    tokio::pin!(fut);
    let mut deadline = crate::deadline::after(start, limit);
    loop {
        match tokio::time::timeout_at(deadline, fut.as_mut()).await {
            Ok(out) => return Ok(out),
            Err(elapsed) => {
                let now = Instant::now();
                let extended = crate::deadline::after(start, limit.saturating_add(wait.total(now)));
                if extended <= now {
                    return Err(elapsed);
                }
                deadline = extended;
            }
        }
    }
}

/// The pacing and size accounting of one request body, kept by the body
/// hyper polls to send it upstream.
#[derive(Debug)]
pub struct Pace {
    limits: BodyLimits,
    /// Bytes so far.
    received: u64,
    /// Bytes in the current window.
    window_bytes: u64,
    /// Time waited on the client in the current window, not counting a
    /// wait in progress.
    window_waited: Duration,
    /// When the wait in progress began.
    waiting_since: Option<Instant>,
    /// Fires when the current window's waiting time is up; made at the
    /// first wait (most bodies arrive whole and never need one).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Pace {
    /// Nothing received yet.
    pub fn new(limits: BodyLimits) -> Pace {
        Pace {
            limits,
            received: 0,
            window_bytes: 0,
            window_waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// Takes the result of polling the client's body, and passes it on
    /// unless it breaks a limit; counts what it refuses in `rejected`.
    pub fn check(
        &mut self,
        polled: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
        cx: &mut Context<'_>,
        wait: &ClientWait,
        rejected: &super::Rejected,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let checked = match polled {
            Poll::Pending => self.waiting(cx, wait).map(|e| Some(Err(e))),
            Poll::Ready(None) => {
                self.stop_waiting(wait);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.stop_waiting(wait);
                Poll::Ready(Some(Err(BodyError::Client(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                Poll::Ready(Some(self.arrived(n, wait).map(|()| frame)))
            }
        };
        if let Poll::Ready(Some(Err(e))) = &checked {
            e.count(rejected);
        }
        checked
    }

    /// `n` bytes arrived.
    fn arrived(&mut self, n: u64, wait: &ClientWait) -> Result<(), BodyError> {
        self.received = self.received.saturating_add(n);
        if self.limits.max > 0 && self.received > self.limits.max {
            return Err(BodyError::TooLarge {
                max: self.limits.max,
            });
        }
        self.window_bytes = self.window_bytes.saturating_add(n);
        if self.stop_waiting(wait) && self.window_waited >= self.limits.stall {
            self.next_window()?;
        }
        Ok(())
    }

    /// Ends a wait in progress; whether there was one.
    fn stop_waiting(&mut self, wait: &ClientWait) -> bool {
        let Some(since) = self.waiting_since.take() else {
            return false;
        };
        let waited = Instant::now().saturating_duration_since(since);
        self.window_waited += waited;
        wait.end(waited);
        true
    }

    /// The window's waiting time is up: enough bytes came, or the body is
    /// stalled.
    fn next_window(&mut self) -> Result<(), BodyError> {
        if self.window_bytes < MIN_PROGRESS {
            return Err(BodyError::Stalled {
                after: self.limits.stall,
            });
        }
        self.window_bytes = 0;
        self.window_waited = Duration::ZERO;
        Ok(())
    }

    /// The client has no frame ready: the clock runs.
    fn waiting(&mut self, cx: &mut Context<'_>, wait: &ClientWait) -> Poll<BodyError> {
        loop {
            let since = match self.waiting_since {
                Some(since) => since,
                None => {
                    let now = Instant::now();
                    self.waiting_since = Some(now);
                    wait.begin(now);
                    let left = self.limits.stall.saturating_sub(self.window_waited);
                    let at = crate::deadline::after(now, left);
                    match &mut self.timer {
                        Some(t) => t.as_mut().reset(at),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                    now
                }
            };
            let timer = self.timer.as_mut().expect("armed above");
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The window's waiting time is up while waiting.
            let now = Instant::now();
            let waited = now.saturating_duration_since(since);
            self.waiting_since = None;
            self.window_waited += waited;
            wait.end(waited);
            if let Err(e) = self.next_window() {
                return Poll::Ready(e);
            }
            // Enough came in that window: a new one, still waiting.
        }
    }
}

#[cfg(test)]
mod tests;
