//! The guard of one request in flight on a backend: its count, and the
//! clock of the backend's own time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::RequestTimer;

use super::Backend;

/// Keeps a request counted as in flight on its backend until dropped, and
/// keeps the clock of the backend's own time: from sending the request to
/// the response head, plus every wait of the body for the backend's next
/// bytes. Time the body spends waiting for the client to read is not the
/// backend's and is not counted, in the sample nor in
/// [`View::busy`](crate::select::View::busy).
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    /// The request's class, for the latency baseline (`None`: not a
    /// measure of the host).
    class: Option<u8>,
    /// Requests waiting on the backend when this one was sent, itself
    /// included: how many shared the host's CPUs with it.
    sharing: u32,
    /// When the request was sent.
    start: Instant,
    /// When the current wait on the backend began; `None` while the
    /// client's side has the turn (or the head has not been asked for).
    waiting_since: Option<Instant>,
    /// The backend's own time so far.
    backend_time: Duration,
    /// The latest moment the clock was read.
    last: Instant,
    /// The response ended normally: the sample is whole and is recorded.
    complete: bool,
    /// Where the backend time goes when the guard is dropped, in
    /// nanoseconds: the access log's line for this request (set only while
    /// the access log is on).
    time_to: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The request's clock since it arrived, stopped when this guard drops
    /// (when the response body ends).
    timer: Option<RequestTimer>,
}

impl InFlight {
    /// A request sent to `backend` at `now`, `sharing` its CPUs with the
    /// others waiting on it (itself included); counted by the caller.
    pub(super) fn new(
        backend: Arc<Backend>,
        class: Option<u8>,
        sharing: u32,
        now: Instant,
    ) -> InFlight {
        InFlight {
            backend,
            class,
            sharing,
            start: now,
            waiting_since: Some(now),
            backend_time: Duration::ZERO,
            last: now,
            complete: false,
            time_to: None,
            timer: None,
        }
    }

    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The request went out on a connection at `at`: the backend's time
    /// starts there, not while a connection was opened or waited for
    /// (connecting is the network's and our own time, and a fresh
    /// connection would read as a slow host).
    pub fn sent(&mut self, at: Instant) {
        self.start = at;
    }

    /// The response head arrived: the wait on the backend ends; what
    /// follows is paced by the client until the body waits again.
    pub fn head_arrived(&mut self, now: Instant) {
        self.backend_time = now.saturating_duration_since(self.start);
        self.backend.metrics.backend_time.observe(self.backend_time);
        self.last = now;
        if self.waiting_since.take().is_some() {
            self.backend.busy.fetch_sub(1, Relaxed);
        }
    }

    /// Keeps the request's clock until the response body ends: its total
    /// time is recorded then, for the pool and for this backend.
    pub fn time(&mut self, timer: RequestTimer) {
        self.timer = Some(timer);
    }

    /// The body has nothing to give yet: the backend has the turn.
    pub fn waiting_on_backend(&mut self) {
        if self.waiting_since.is_none() {
            let now = Instant::now();
            self.waiting_since = Some(now);
            self.last = now;
            self.backend.busy.fetch_add(1, Relaxed);
        }
    }

    /// The body delivered bytes: the client has the turn.
    pub fn backend_delivered(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            let now = Instant::now();
            self.backend_time += now.saturating_duration_since(since);
            self.last = now;
            self.backend.busy.fetch_sub(1, Relaxed);
        }
    }

    /// Hands the backend time, in nanoseconds, to `cell` when the guard is
    /// dropped (the access log's `bt`).
    pub fn report_time_to(&mut self, cell: Arc<std::sync::atomic::AtomicU64>) {
        self.time_to = Some(cell);
    }

    /// The response ended normally: its backend time is a whole sample.
    pub fn finish(&mut self) {
        self.backend_delivered();
        self.complete = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let b = &self.backend;
        b.in_flight.fetch_sub(1, Relaxed);
        if self.complete {
            let second = b.clock(self.last) / 1_000_000_000;
            b.recent
                .record(second, self.last.saturating_duration_since(self.start));
        }
        if let Some(cell) = &self.time_to {
            let nanos = u64::try_from(self.backend_time.as_nanos()).unwrap_or(u64::MAX);
            cell.store(nanos, Relaxed);
        }
        if let Some(timer) = self.timer.take() {
            b.metrics.total_time.observe(timer.finish());
        }
        if self.waiting_since.is_some() {
            b.busy.fetch_sub(1, Relaxed);
        }
        // Failures, abandoned and upgraded requests and requests with a body
        // are no measure of the host's speed (failures are outlier
        // detection's business), but the host has been tried: a backend
        // that only ever fails must not stay first in line as untried.
        let Some(class) = self.class.filter(|_| self.complete) else {
            b.signal.touch();
            return;
        };
        // The host's speed, not its queue: a request that shared the CPUs
        // with others took longer for that alone, and the queue is already
        // in the score (`busy`). Divided by how many shared each CPU, so a
        // host is compared with its peers as if each request had had a CPU
        // to itself.
        let cpus = b
            .load
            .load()
            .as_deref()
            .map_or(1.0, |s| s.report.capacity());
        let shared = (f64::from(self.sharing) / cpus.max(1.0)).max(1.0);
        let secs = self.backend_time.as_secs_f64() / shared;
        b.signal.record(&b.baselines, class, secs, self.last);
    }
}
