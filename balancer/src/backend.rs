//! One backend: its address, health state machine, latest load report and
//! the per-request counters, all readable without a lock.
//!
//! Everything the request path touches is an atomic or an `ArcSwap`: the
//! health word, the in-flight and dispatch counters, and the load sample
//! (replaced whole by the agent poller, read with one lock-free load).
//! Its metric families are in [`metrics`]; passive health (outcomes,
//! outlier ejection, slow start) is in `passive`, the guard of a request
//! in flight ([`InFlight`]) in `in_flight`.

mod in_flight;
pub mod metrics;
mod passive;

pub use self::in_flight::InFlight;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use agent::LoadReport;
use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::config::BackendConfig;
use crate::conns::Conns;
use crate::latency::{Baselines, Signal};
use crate::outlier::Detector;
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
        InFlight::new(Arc::clone(self), class, sharing, Instant::now())
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

#[cfg(test)]
mod tests;
