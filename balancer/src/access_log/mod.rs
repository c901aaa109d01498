//! The access log: one line per request (`[log] access`, `format`),
//! written off the request path.
//!
//! A request with the log on carries a [`Record`] (what it asked for, the
//! backend chosen, the retries and why); the response body it rides in
//! ([`Logged`]) counts the bytes sent and, when the body is done or the
//! client has gone, hands the finished [`Entry`] to a bounded channel. A
//! writer thread ([`writer`]) formats ([`format`]) and writes it. A full
//! channel never makes a request wait: the line is dropped and counted
//! in [`DROPPED`]. With the log off a request pays one branch
//! ([`AccessLog::begin`]).
//!
//! SIGHUP ([`AccessLog::reopen`]) opens a new writer and swaps it in; the
//! old one writes out what it was given to the file it had open and ends,
//! so logrotate's `postrotate kill -HUP` works.

pub mod format;
pub mod writer;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Buf;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::config::Log;
pub use writer::Sink;

/// Lines dropped because the writer was behind (its channel full), ever.
/// `/metrics`: `lb_access_log_dropped_total`.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines the writer's channel holds; beyond, lines are dropped.
pub const CAPACITY: usize = 8192;

/// The access log as configured: off, or a writer to send lines to.
#[derive(Debug, Default)]
pub struct AccessLog {
    /// Whether a writer is set: the one thing a request reads when the
    /// log is off.
    on: AtomicBool,
    /// The writer.
    sink: ArcSwapOption<Sink>,
}

impl AccessLog {
    /// The access log `log` asks for. A file that cannot be opened (the
    /// configuration opened it a moment ago) is logged, and the log is off.
    pub fn start(log: &Log) -> AccessLog {
        let this = AccessLog::default();
        this.reopen(log);
        this
    }

    /// Applies `log` (SIGHUP): opens a new writer (a file is reopened, so a
    /// rotated file is let go) and swaps it in. When the new one cannot be
    /// opened, the error is logged and the running writer is kept.
    pub fn reopen(&self, log: &Log) {
        match Sink::open(log, CAPACITY) {
            Ok(sink) => {
                self.on.store(sink.is_some(), Relaxed);
                self.sink.store(sink.map(Arc::new));
            }
            Err(e) => tracing::error!("access log: keeping the running log: {e}"),
        }
    }

    /// Turns the log off and waits (a few seconds at most) for the lines
    /// already logged to be written: at exit, after the requests drained.
    pub fn close(&self) {
        self.on.store(false, Relaxed);
        if let Some(sink) = self.sink.swap(None) {
            sink.close(Duration::from_secs(5));
        }
    }

    /// Starts the record of a request, or `None` (one branch) when the log
    /// is off.
    #[inline]
    pub fn begin<B>(&self, req: &Request<B>, client: SocketAddr) -> Option<Box<Record>> {
        if !self.on.load(Relaxed) {
            return None;
        }
        self.begin_on(req, client)
    }

    fn begin_on<B>(&self, req: &Request<B>, client: SocketAddr) -> Option<Box<Record>> {
        let sink = self.sink.load_full()?;
        let header = |name| req.headers().get(name).cloned();
        Some(Box::new(Record {
            entry: Entry {
                time: SystemTime::now(),
                client,
                method: req.method().clone(),
                target: req.uri().clone(),
                version: req.version(),
                status: StatusCode::OK,
                bytes: 0,
                total: Duration::ZERO,
                backend_time: None,
                backend: None,
                attempts: 0,
                why: Why::default(),
                user_agent: header(header::USER_AGENT),
                referer: header(header::REFERER),
            },
            start: Instant::now(),
            answered: false,
            backend_time: Arc::new(AtomicU64::new(0)),
            sink,
        }))
    }
}

/// One request's line, as sent to the writer (formatted there).
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the request arrived (wall clock).
    pub time: SystemTime,
    /// The client's address.
    pub client: SocketAddr,
    /// The request method.
    pub method: Method,
    /// The request target as the client sent it (path and query are
    /// logged).
    pub target: Uri,
    /// The client's protocol.
    pub version: Version,
    /// The status sent to the client.
    pub status: StatusCode,
    /// Response body bytes sent to the client (after compression).
    pub bytes: u64,
    /// From the request's arrival to its response's end.
    pub total: Duration,
    /// The backend's own time for the last attempt (from sending the
    /// request to the response head, plus the body's waits for the
    /// backend); `None` when no backend answered.
    pub backend_time: Option<Duration>,
    /// The backend last tried; `None` when none was.
    pub backend: Option<SocketAddr>,
    /// Backends tried.
    pub attempts: u32,
    /// Why that backend.
    pub why: Why,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// `Referer`.
    pub referer: Option<HeaderValue>,
}

impl Entry {
    /// Attempts after the first.
    pub fn retries(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }
}

/// Why a request went where it went, in a short tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Why {
    /// The strategy that chose the backend (`None`: no backend chosen).
    pub strategy: Option<&'static str>,
    /// The choice was a retry, excluding the backends already tried.
    pub retry: bool,
    /// The pool was in panic mode: ejected backends were eligible.
    pub panic: bool,
    /// No backend was eligible when one was asked for.
    pub none_left: bool,
}

impl Why {
    /// `least-loaded`, `round-robin,retry`, `least-loaded,panic`,
    /// `no-backend`, or `-` (refused before a backend was asked for).
    pub fn tag(&self) -> String {
        let mut s = match (self.strategy, self.none_left) {
            (Some(name), _) => name.to_owned(),
            (None, true) => return "no-backend".into(),
            (None, false) => return "-".into(),
        };
        if self.retry {
            s.push_str(",retry");
        }
        if self.panic {
            s.push_str(",panic");
        }
        if self.none_left {
            s.push_str(",none-left");
        }
        s
    }
}

/// A request's line in the making, carried from its arrival to the end of
/// its response.
#[derive(Debug)]
pub struct Record {
    entry: Entry,
    start: Instant,
    /// A backend's response (else the balancer answered itself, and there
    /// is no backend time to log).
    answered: bool,
    /// Written by the last attempt's in-flight guard when dropped.
    backend_time: Arc<AtomicU64>,
    sink: Arc<Sink>,
}

impl Record {
    /// Attempt `attempt` (1-based) goes to `backend`, chosen by `strategy`;
    /// returns the cell its in-flight guard reports the backend time to.
    pub fn attempt(
        &mut self,
        backend: SocketAddr,
        attempt: u32,
        strategy: &'static str,
        panic: bool,
    ) -> Arc<AtomicU64> {
        self.entry.backend = Some(backend);
        self.entry.attempts = attempt;
        self.entry.why = Why {
            strategy: Some(strategy),
            retry: attempt > 1,
            panic,
            none_left: false,
        };
        Arc::clone(&self.backend_time)
    }

    /// No backend was left to choose.
    pub fn none_left(&mut self) {
        self.entry.why.none_left = true;
    }

    /// The response's status; `from_backend`: a backend's response (else
    /// the balancer's own answer, and there is no backend time).
    pub fn respond(&mut self, status: StatusCode, from_backend: bool) {
        self.entry.status = status;
        self.answered = from_backend;
    }

    /// The response is over: sends the line.
    fn finish(mut self, bytes: u64) {
        let e = &mut self.entry;
        e.bytes = bytes;
        e.total = Instant::now().saturating_duration_since(self.start);
        e.backend_time = self
            .answered
            .then(|| Duration::from_nanos(self.backend_time.load(Relaxed)));
        self.sink.send(self.entry);
    }
}

/// A response body that logs its request when it is done (its last frame
/// read, or dropped when the client went away), counting the bytes it
/// gave.
#[derive(Debug)]
pub struct Logged<B> {
    inner: Option<B>,
    record: Option<Box<Record>>,
    bytes: u64,
}

impl<B> Logged<B> {
    /// `inner`, logged as `record` when done.
    pub fn new(inner: B, record: Box<Record>) -> Logged<B> {
        Logged {
            inner: Some(inner),
            record: Some(record),
            bytes: 0,
        }
    }
}

impl<B: Body + Unpin> Body for Logged<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(data) = f.data_ref() {
                this.bytes += data.remaining() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().map_or(true, B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        // The body first: its in-flight guard reports the backend time.
        drop(self.inner.take());
        if let Some(record) = self.record.take() {
            record.finish(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests;
