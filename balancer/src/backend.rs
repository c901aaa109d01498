//! One backend: its address, health state machine, latest load report and
//! the per-request counters, all readable without a lock.
//!
//! Everything the request path touches is an atomic or an `ArcSwap`: the
//! health word, the in-flight and dispatch counters, and the load sample
//! (replaced whole by the agent poller, read with one lock-free load).
//! Its metric families are in [`metrics`].

pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent::LoadReport;
use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::config::BackendConfig;
use crate::conns::Conns;
use crate::latency::{Baselines, Signal};
use crate::metrics::RequestTimer;
use crate::outcome::Outcome;
use crate::outlier::{Detector, Ejection};
use crate::recent::{Quantiles, Recent};
use crate::rotation::Rotation;
use crate::select::{LoadView, View};
use crate::slow_start::SlowStart;
use crate::sources::Origin;

/// One backend server and everything the balancer knows about it.
#[derive(Debug)]
pub struct Backend {
    /// Where requests go.
    pub addr: SocketAddr,
    /// Where its host's agent answers `GET /load`.
    pub agent: SocketAddr,
    /// Relative capacity, as `lb.toml` sets it (the admin API may
    /// override it: see [`Backend::effective_weight`]).
    pub weight: u32,
    /// The operator's state (in rotation, disabled, draining) and weight
    /// override, set through the admin API.
    pub rotation: Rotation,
    /// `addr` as a URI authority, built once so probes need not format it.
    pub authority: http::uri::Authority,
    /// `addr` as a `Host` header, for requests that came without one
    /// (built once, so requests need not format it).
    pub host_header: http::HeaderValue,
    /// The connections to it (shared with a successor that only changed
    /// weight or agent, so they stay warm).
    pub conns: Arc<Conns>,
    /// The pool it belongs to (`"default"`: the top-level `backends`).
    pub pool: Arc<str>,
    /// Whether it is listed, discovered or registered.
    pub origin: Origin,
    /// Health: bit 31 is "up", the low bits HAProxy's check counter.
    health: AtomicU32,
    /// Requests currently open (until the response body ends).
    in_flight: AtomicU32,
    /// Of those, the ones waiting on the backend right now (see
    /// [`View::busy`]).
    busy: AtomicU32,
    /// Requests sent since the last load report: what the report cannot
    /// know about yet.
    dispatched: AtomicU64,
    /// Its turn counter among equals, as `f64` bits ([`View::pass`]).
    pass: AtomicU64,
    /// Requests sent, ever (for the admin view and rates).
    requests: AtomicU64,
    /// Failed attempts (connect errors, timeouts, protocol errors), ever.
    errors: AtomicU64,
    /// How fast this host serves compared with its peers, and its mean
    /// service time: measured on the backend's own time only.
    signal: Signal,
    /// The pool's per-class baselines the signal is measured against.
    baselines: Arc<Baselines>,
    /// The latest good load report, or `None` while the load is unknown.
    load: ArcSwapOption<LoadSample>,
    /// The latest error, for the status page.
    last_error: ArcSwapOption<ErrorNote>,
    /// Whether the agent answered its last poll: 0 not polled yet, 1 yes,
    /// 2 no, 3 with an answer that was not authenticated. Only changes are
    /// logged.
    agent_state: AtomicU8,
    /// When this backend entered the pool: the origin of the outlier and
    /// slow-start clocks.
    born: Instant,
    /// Failure streak and ejection state (outlier ejection).
    outlier: Detector,
    /// When its latest slow start began, so it is not handed a full share
    /// the moment it comes up.
    slow_start: SlowStart,
    /// Responses and durations for `/metrics` (shared with a successor).
    pub metrics: Arc<metrics::BackendMetrics>,
    /// Why it is down (the failing probe's error, or a refused
    /// connection), for the status page; cleared when it comes back up.
    down_reason: ArcSwapOption<ErrorNote>,
    /// The host name its agent reports, if any.
    hostname: ArcSwapOption<String>,
    /// Its response times over the last second (status page).
    recent: Recent,
}

/// A load report and what the balancer derived from it when it arrived.
#[derive(Debug, Clone)]
pub struct LoadSample {
    /// The agent's report, as received.
    pub report: LoadReport,
    /// When it arrived.
    pub at: Instant,
    /// Requests per second this balancer sent to the backend during the
    /// period the report covers.
    pub rate: f64,
}

/// The last error seen on a backend, for operators.
#[derive(Debug, Clone)]
pub struct ErrorNote {
    /// What happened, one line.
    pub message: String,
    /// When.
    pub at: SystemTime,
}

const UP: u32 = 1 << 31;

/// What a health result changed, so callers log transitions and only those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The backend went from up to down.
    WentDown,
    /// The backend went from down to up.
    WentUp,
}

impl Backend {
    /// A backend that counts as fully up, as the contract demands at start:
    /// `fall` failed probes in a row are needed to take it down.
    pub fn new(cfg: &BackendConfig, rise: u32, fall: u32, baselines: &Arc<Baselines>) -> Backend {
        Backend {
            addr: cfg.addr,
            agent: cfg.agent,
            weight: cfg.weight,
            rotation: Rotation::default(),
            authority: cfg
                .addr
                .to_string()
                .parse()
                .expect("a socket address is a valid authority"),
            host_header: http::HeaderValue::from_str(&cfg.addr.to_string())
                .expect("a socket address is a valid header value"),
            conns: Arc::new(Conns::new(cfg.addr)),
            pool: crate::config::DEFAULT_POOL.into(),
            origin: Origin::Listed,
            health: AtomicU32::new(UP | streaks(rise, fall).2),
            in_flight: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            dispatched: AtomicU64::new(0),
            // A random phase, so that balancers started together do not
            // take their turns in lockstep (as gRPC's EDF scheduler does).
            pass: AtomicU64::new(fastrand::f64().to_bits()),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            signal: Signal::new(),
            baselines: Arc::clone(baselines),
            load: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
            agent_state: AtomicU8::new(0),
            born: Instant::now(),
            outlier: Detector::default(),
            slow_start: SlowStart::default(),
            metrics: Arc::default(),
            down_reason: ArcSwapOption::empty(),
            hostname: ArcSwapOption::empty(),
            recent: Recent::default(),
        }
    }

    /// A replacement for `old` with a new agent address or weight, carrying
    /// over its health, load and counters so that a reload is invisible.
    pub fn succeed(old: &Backend, cfg: &BackendConfig) -> Backend {
        let b = Backend {
            health: AtomicU32::new(old.health.load(Relaxed)),
            requests: AtomicU64::new(old.requests.load(Relaxed)),
            errors: AtomicU64::new(old.errors.load(Relaxed)),
            signal: Signal::copy_of(&old.signal),
            born: old.born,
            outlier: Detector::carried(&old.outlier),
            slow_start: SlowStart::carried(&old.slow_start),
            conns: Arc::clone(&old.conns),
            rotation: old.rotation.carried(&cfg.addr, old.weight, cfg.weight),
            metrics: Arc::clone(&old.metrics),
            ..Backend::new(cfg, 1, 1, &old.baselines)
        };
        if cfg.agent == old.agent {
            b.load.store(old.load.load_full());
        }
        b.last_error.store(old.last_error.load_full());
        b.down_reason.store(old.down_reason.load_full());
        b.hostname.store(old.hostname.load_full());
        b
    }

    /// This backend as a member of `pool`, from `origin`.
    pub fn in_pool(self, pool: Arc<str>, origin: Origin) -> Backend {
        Backend {
            pool,
            origin,
            ..self
        }
    }

    /// Whether new requests may be sent here.
    pub fn is_up(&self) -> bool {
        self.health.load(Relaxed) & UP != 0
    }

    /// The weight selection uses: the admin API's override, else
    /// `lb.toml`'s.
    pub fn effective_weight(&self) -> u32 {
        self.rotation.weight_override().unwrap_or(self.weight)
    }

    /// Applies one active probe result with HAProxy's counter semantics
    /// (`check.c`): the counter lives in `0..rise+fall`, the backend is up
    /// while it is at least `rise`, a success from down climbs towards
    /// `rise` and snaps to fully up on reaching it, a failure from up
    /// descends towards `rise` and snaps to 0 below it. So exactly `fall`
    /// failures in a row take a fully-up backend down, exactly `rise`
    /// successes in a row bring it back, and any interruption resets.
    pub fn record_probe(&self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        let step = |word| Some(health_step(word, ok, rise, fall));
        let prev = self
            .health
            .fetch_update(Relaxed, Relaxed, step)
            .expect("the step always returns Some");
        let change = transition(prev & UP != 0, health_step(prev, ok, rise, fall) & UP != 0);
        if change == Some(Transition::WentUp) {
            self.begin_slow_start(Instant::now());
            self.down_reason.store(None);
        }
        change
    }

    /// Records why the backend went down, for the status page.
    pub fn set_down_reason(&self, message: String) {
        self.down_reason.store(Some(Arc::new(ErrorNote {
            message,
            at: SystemTime::now(),
        })));
    }

    /// Why it went down, while it is down.
    pub fn down_reason(&self) -> Option<Arc<ErrorNote>> {
        self.down_reason.load_full().filter(|_| !self.is_up())
    }

    /// Stores the host name the agent reports (kept when it is the same).
    pub fn set_hostname(&self, name: Option<String>) {
        if self.hostname.load().as_deref() != name.as_ref() {
            self.hostname.store(name.map(Arc::new));
        }
    }

    /// The host name its agent reports.
    pub fn hostname(&self) -> Option<Arc<String>> {
        self.hostname.load_full()
    }

    /// p50/p99 of its responses over the last whole second.
    pub fn recent_latency(&self, now: Instant) -> Option<Quantiles> {
        self.recent.last_second(self.clock(now) / 1_000_000_000)
    }

    /// Passive marking: a refused connection takes the backend down at once
    /// (the counter drops to 0, so `rise` good probes are needed again).
    pub fn mark_down(&self) -> Option<Transition> {
        let prev = self.health.swap(0, Relaxed);
        transition(prev & UP != 0, false)
    }

    /// Counts a request of `class` ([`crate::latency::Baselines::class_of`])
    /// as sent here; the returned guard keeps it in flight until dropped
    /// (the proxy drops it when the response body ends) and keeps the clock
    /// of the backend's own time. `class` is `None` for a request whose
    /// time is not the host's alone to measure: one with a body, which the
    /// client paces (a client uploading at a byte a second would otherwise
    /// make any host look slow).
    pub fn start_request(self: &Arc<Self>, class: Option<u8>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        let sharing = self.busy.fetch_add(1, Relaxed).saturating_add(1);
        self.dispatched.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        let now = Instant::now();
        InFlight {
            backend: Arc::clone(self),
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

    /// Records a failed attempt.
    pub fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        self.last_error.store(Some(Arc::new(ErrorNote {
            message,
            at: SystemTime::now(),
        })));
    }

    /// Stores a fresh load report; the count of requests dispatched since
    /// the previous one becomes its rate and restarts at 0.
    pub fn store_load(&self, report: LoadReport, at: Instant) {
        let sent = self.dispatched.swap(0, Relaxed);
        let rate = match self.load.load().as_deref() {
            Some(p) => sent as f64 / at.saturating_duration_since(p.at).as_secs_f64().max(1e-3),
            None => 0.0,
        };
        self.load
            .store(Some(Arc::new(LoadSample { report, at, rate })));
    }

    /// Records whether the agent answered; true when that is a change.
    pub fn set_agent_reporting(&self, reporting: bool) -> bool {
        let state = if reporting { 1 } else { 2 };
        self.agent_state.swap(state, Relaxed) != state
    }

    /// Records that the agent's answer was not authenticated; true when
    /// that is a change.
    pub fn set_agent_unauthenticated(&self) -> bool {
        self.agent_state.swap(3, Relaxed) != 3
    }

    /// Whether the agent answered its last poll with a good report;
    /// `None` before the first poll.
    pub fn agent_reporting(&self) -> Option<bool> {
        match self.agent_state.load(Relaxed) {
            0 => None,
            state => Some(state == 1),
        }
    }

    /// Forgets the load report: the load is unknown until the next good poll.
    pub fn clear_load(&self) {
        self.load.store(None);
        self.dispatched.store(0, Relaxed);
    }

    /// The latest load sample, if any.
    pub fn load(&self) -> Option<Arc<LoadSample>> {
        self.load.load_full()
    }

    /// What the selection strategies see of this backend at `now`.
    pub fn view(&self, now: Instant) -> View {
        let guard = self.load.load();
        let service = self.signal.service(now);
        View {
            // Set by the pool, which knows `[balance] slow_start`.
            ramp: 1.0,
            up: self.is_up(),
            weight: self.effective_weight(),
            in_flight: self.in_flight.load(Relaxed),
            busy: self.busy.load(Relaxed),
            slowness: self.signal.slowness(now),
            service,
            untried: self.signal.untried() && self.in_flight.load(Relaxed) == 0,
            pass: f64::from_bits(self.pass.load(Relaxed)),
            load: guard.as_deref().map(|s| {
                let cpus = s.report.capacity();
                LoadView {
                    util: utilization(&s.report),
                    cpus,
                    age: now.saturating_duration_since(s.at),
                    rate: s.rate,
                    // A request keeps at most one CPU busy while the
                    // backend works on it.
                    cost: service / cpus.max(0.01),
                    dispatched: self.dispatched.load(Relaxed),
                }
            }),
        }
    }

    /// Stores its turn counter after a pick among equals.
    pub fn set_pass(&self, pass: f64) {
        self.pass.store(pass.to_bits(), Relaxed);
    }

    /// Counters for the admin endpoints.
    pub fn stats(&self) -> Stats {
        let now = Instant::now();
        Stats {
            in_flight: self.in_flight.load(Relaxed),
            busy: self.busy.load(Relaxed),
            slowness: self.signal.slowness(now),
            service: self.signal.service(now),
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
            last_error: self.last_error.load_full(),
        }
    }
}

/// Passive health: attempt outcomes, outlier ejection and slow start.
impl Backend {
    /// Takes one attempt's outcome (the proxy reports each attempt once):
    /// counts errors, marks the backend down at once when a connection is
    /// refused, and feeds the outlier detector. Returns true when this
    /// failure completes a streak of `threshold`: the pool then ejects the
    /// backend if it has room (a pool-wide decision, see
    /// [`crate::pool::Pool::report`]).
    pub fn report(
        &self,
        outcome: Outcome,
        note: Option<String>,
        threshold: u32,
        now: Instant,
    ) -> bool {
        if let Outcome::Response(status) = outcome {
            self.metrics.responses.add(status);
        }
        if outcome.is_error() {
            self.record_error(note.unwrap_or_else(|| outcome.to_string()));
        }
        if outcome == (Outcome::ConnectFailed { refused: true })
            && self.mark_down() == Some(Transition::WentDown)
        {
            tracing::warn!(backend = %self.addr, "backend down: connection refused");
            self.set_down_reason("connection refused (a request's connect)".to_owned());
        }
        // Neither the client's fault nor our own connection limit says
        // anything about the backend: the streak is left as it was.
        if matches!(outcome, Outcome::Client | Outcome::Saturated) {
            return false;
        }
        self.outlier
            .record(outcome.is_failure(), threshold, self.clock(now))
    }

    /// Whether outlier ejection keeps this backend out of rotation at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier.is_ejected(self.clock(now))
    }

    /// Ejects the backend at `now` for `base` × its multiplier.
    pub fn eject(&self, now: Instant, base: Duration) -> Ejection {
        self.outlier.eject(self.clock(now), base)
    }

    /// True once per ejection, at or after its end: the caller logs the
    /// return.
    pub fn take_return(&self, now: Instant) -> bool {
        self.outlier.take_return(self.clock(now))
    }

    /// How long the current ejection still lasts (`None`: not ejected), and
    /// the ejections so far.
    pub fn ejection(&self, now: Instant) -> (Option<Duration>, u64) {
        (
            self.outlier.remaining(self.clock(now)),
            self.outlier.ejections(),
        )
    }

    /// Starts a slow start at `now` (on coming up, or on being added by a
    /// reload).
    pub fn begin_slow_start(&self, now: Instant) {
        self.slow_start.begin(self.clock(now));
    }

    /// The share of its weight the backend gets at `now` during a slow start
    /// of length `over`; `None` when it takes its full share.
    pub fn ramp(&self, now: Instant, over: Duration) -> Option<f64> {
        self.slow_start.ramp(self.clock(now), over)
    }

    /// `now` in nanoseconds since the backend entered the pool: the clock of
    /// its outlier and slow-start state.
    fn clock(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A snapshot of a backend's counters.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Requests in flight now.
    pub in_flight: u32,
    /// Of those, waiting on the backend.
    pub busy: u32,
    /// Slowness against its peers (1: in line).
    pub slowness: f64,
    /// Mean service time, seconds (0: none yet).
    pub service: f64,
    /// Requests sent, ever.
    pub requests: u64,
    /// Failed attempts, ever.
    pub errors: u64,
    /// The latest error.
    pub last_error: Option<Arc<ErrorNote>>,
}

/// One step of the health counter (see [`Backend::record_probe`]).
/// `rise` and `fall` within `1..=2^16` (the config allows 1..1000; a
/// [`crate::Config`] built in code may hold anything), and the counter's
/// top, `rise + fall - 1`, which then fits below the [`UP`] bit.
fn streaks(rise: u32, fall: u32) -> (u32, u32, u32) {
    const MAX: u32 = 1 << 16;
    let (rise, fall) = (rise.clamp(1, MAX), fall.clamp(1, MAX));
    (rise, fall, rise + fall - 1)
}

fn health_step(word: u32, ok: bool, rise: u32, fall: u32) -> u32 {
    let (rise, _, top) = streaks(rise, fall);
    let mut h = (word & !UP).min(top);
    if ok {
        if h < top {
            h += 1;
            if h >= rise {
                h = top;
            }
        }
    } else if h > 0 {
        h -= 1;
        if h < rise {
            h = 0;
        }
    }
    if h >= rise {
        UP | h
    } else {
        h
    }
}

fn transition(was_up: bool, is_up: bool) -> Option<Transition> {
    match (was_up, is_up) {
        (true, false) => Some(Transition::WentDown),
        (false, true) => Some(Transition::WentUp),
        _ => None,
    }
}

/// One number for a report: CPU, unless memory is nearly exhausted.
///
/// Memory in use says little about load until it runs out (caches fill
/// memory on healthy hosts), but near the limit a host swaps or gets
/// OOM-killed, so from 90 % up memory pressure ramps to count as a fully
/// busy host at 100 %.
pub fn utilization(r: &LoadReport) -> f64 {
    let memory_pressure = ((r.memory - 0.9) / 0.1).clamp(0.0, 1.0);
    r.cpu.max(memory_pressure).clamp(0.0, 1.0)
}

/// Keeps a request counted as in flight on its backend until dropped, and
/// keeps the clock of the backend's own time: from sending the request to
/// the response head, plus every wait of the body for the backend's next
/// bytes. Time the body spends waiting for the client to read is not the
/// backend's and is not counted, in the sample nor in [`View::busy`].
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(rise: u32, fall: u32) -> Backend {
        Backend::new(
            &BackendConfig {
                addr: "127.0.0.1:1".parse().unwrap(),
                agent: "127.0.0.1:2".parse().unwrap(),
                weight: 1,
            },
            rise,
            fall,
            &Arc::new(Baselines::new()),
        )
    }

    /// Feeds probe results ("+" ok, "-" failed) and returns the up/down
    /// state after each, as a string of "U"/"D".
    fn run(b: &Backend, rise: u32, fall: u32, seq: &str) -> String {
        seq.chars()
            .map(|c| {
                b.record_probe(c == '+', rise, fall);
                if b.is_up() {
                    'U'
                } else {
                    'D'
                }
            })
            .collect()
    }

    #[test]
    fn rise_and_fall_count_strictly_consecutive_results() {
        // (rise, fall, probes, expected states)
        let table = [
            (2, 2, "-", "U"),           // starts fully up: one failure is not enough
            (2, 2, "--", "UD"),         // fall = 2
            (2, 3, "---", "UUD"),       // fall = 3
            (2, 2, "-+-+-+", "UUUUUU"), // interrupted failures never take it down
            (2, 2, "--+", "UDD"),       // one success is not rise
            (2, 2, "--++", "UDDU"),     // rise = 2
            (3, 2, "--+++", "UDDDU"),   // rise = 3
            (2, 2, "--+-+", "UDDDD"),   // interrupted successes reset
            (2, 2, "--++-", "UDDUU"),   // back up means fully up: fall again needed
            (1, 1, "-+-+", "DUDU"),     // the most eager settings
        ];
        for (rise, fall, seq, want) in table {
            let b = backend(rise, fall);
            assert_eq!(
                run(&b, rise, fall, seq),
                want,
                "rise {rise} fall {fall} {seq}"
            );
        }
    }

    #[test]
    fn transitions_are_reported_once() {
        let b = backend(2, 2);
        assert_eq!(b.record_probe(false, 2, 2), None);
        assert_eq!(b.record_probe(false, 2, 2), Some(Transition::WentDown));
        assert_eq!(b.record_probe(false, 2, 2), None);
        assert_eq!(b.record_probe(true, 2, 2), None);
        assert_eq!(b.record_probe(true, 2, 2), Some(Transition::WentUp));
        assert_eq!(b.record_probe(true, 2, 2), None);
    }

    #[test]
    fn a_refused_connection_takes_it_down_at_once_and_rise_brings_it_back() {
        let b = backend(2, 3);
        assert_eq!(b.mark_down(), Some(Transition::WentDown));
        assert_eq!(b.mark_down(), None);
        assert_eq!(run(&b, 2, 3, "++"), "DU");
    }

    #[test]
    fn report_marks_down_on_refusal_counts_errors_and_trips_on_a_streak() {
        use http::StatusCode;
        let b = backend(2, 2);
        let now = Instant::now();
        let report = |o| b.report(o, None, 3, now);
        // (outcome, tripped, up after, errors after)
        let table = [
            (
                Outcome::Response(StatusCode::INTERNAL_SERVER_ERROR),
                false,
                true,
                0,
            ),
            (Outcome::Timeout, false, true, 1),
            (Outcome::Client, false, true, 1), // not the backend's doing
            (Outcome::Saturated, false, true, 1), // nor is our own limit
            (Outcome::Reset, true, true, 2),   // third failure in a row
            (Outcome::Response(StatusCode::OK), false, true, 2),
            (Outcome::Protocol, false, true, 3),
            (Outcome::ConnectFailed { refused: false }, false, true, 4),
            (Outcome::ConnectFailed { refused: true }, true, false, 5),
        ];
        for (i, (outcome, tripped, up, errors)) in table.into_iter().enumerate() {
            assert_eq!(report(outcome), tripped, "row {i}: {outcome}");
            assert_eq!(b.is_up(), up, "row {i}: {outcome}");
            assert_eq!(b.stats().errors, errors, "row {i}: {outcome}");
        }
        assert_eq!(b.stats().last_error.unwrap().message, "connection refused");
    }

    #[test]
    fn coming_back_up_starts_a_slow_start_and_the_start_does_not() {
        let b = backend(1, 1);
        let slow = Duration::from_secs(60);
        assert_eq!(b.ramp(Instant::now(), slow), None);
        b.record_probe(false, 1, 1);
        assert_eq!(b.ramp(Instant::now(), slow), None, "down: no ramp yet");
        b.record_probe(true, 1, 1);
        let ramp = b.ramp(Instant::now(), slow).expect("ramping");
        assert!((0.1..0.11).contains(&ramp), "{ramp}");
        assert_eq!(b.ramp(Instant::now(), Duration::ZERO), None, "off");
    }

    #[test]
    fn the_in_flight_guard_counts_until_dropped() {
        let b = Arc::new(backend(2, 2));
        let g1 = b.start_request(Some(0));
        let g2 = b.start_request(None);
        assert_eq!(b.stats().in_flight, 2);
        drop(g1);
        assert_eq!(b.stats().in_flight, 1);
        drop(g2);
        assert_eq!((b.stats().in_flight, b.stats().requests), (0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_backend_time_leaves_out_the_client_and_bodies_are_no_measure() {
        use tokio::time::advance;
        let b = Arc::new(backend(2, 2));
        let mut g = b.start_request(Some(0));
        assert_eq!(b.stats().busy, 1);
        advance(Duration::from_millis(10)).await; // the backend works
        g.head_arrived(Instant::now());
        assert_eq!(b.stats().busy, 0);
        advance(Duration::from_secs(5)).await; // the client does not read
        g.waiting_on_backend();
        assert_eq!(b.stats().busy, 1);
        advance(Duration::from_millis(5)).await; // the backend's next bytes
        g.finish();
        assert_eq!(b.stats().busy, 0);
        drop(g);
        // 15 ms of the backend's own time; the five seconds are the client's.
        let service = b.stats().service;
        assert!((service - 0.015).abs() < 1e-6, "{service}");
        assert!(!b.signal.untried());

        // A request with a body (paced by the client) is no measure of the
        // host: it ends the untried state and leaves the signal alone.
        let c = Arc::new(backend(2, 2));
        let mut g = c.start_request(None);
        advance(Duration::from_secs(9)).await;
        g.head_arrived(Instant::now());
        g.finish();
        drop(g);
        assert!(!c.signal.untried());
        assert_eq!(c.stats().service, 0.0);
        assert_eq!(c.stats().slowness, 1.0);

        // A failed attempt (dropped before its head) is tried as well, so a
        // backend that only ever fails does not stay first in line.
        let d = Arc::new(backend(2, 2));
        drop(d.start_request(Some(0)));
        assert!(!d.signal.untried());
        assert_eq!(d.stats().service, 0.0);
    }

    #[test]
    fn memory_counts_only_near_exhaustion() {
        let r = |cpu, memory| LoadReport {
            cpu,
            memory,
            cores: 2,
            cpus: 2.0,
            load1: 0.0,
            mem_total_bytes: 0,
            mem_used_bytes: 0,
        };
        assert_eq!(utilization(&r(0.3, 0.8)), 0.3);
        assert!((utilization(&r(0.3, 0.95)) - 0.5).abs() < 1e-9);
        assert!((utilization(&r(0.3, 1.0)) - 1.0).abs() < 1e-9);
    }
}
