//! The live set of backends: one immutable [`Snapshot`] behind an
//! `ArcSwap`, read without a lock by every request and replaced whole on
//! reload.
//!
//! A reload keeps the `Arc<Backend>` of every backend present in both
//! configurations, so health, load and counters carry over, and starts
//! monitors (health probe, agent poll) only for the new ones. Monitors hold
//! `Weak` references and stop by themselves once their backend has left the
//! snapshot or the pool is gone.
//!
//! The pool also owns what is decided pool-wide: which backends a request
//! may go to (in rotation, up, not yet tried, not ejected unless in panic
//! mode), the
//! outlier ejections that must respect `max_ejected_percent` ([`Pool::report`]),
//! and the retry budget.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::access_log::AccessLog;
use crate::backend::Backend;
use crate::budget::RetryBudget;
use crate::config::{Config, Strategy};
use crate::conns;
use crate::decisions::{Asked, Decisions, Seen};
use crate::latency::Baselines;
use crate::limits::Limiter;
use crate::metrics::{self, Requests};
use crate::outcome::Outcome;
use crate::select::{self, Pick, View};
use crate::{agent_poll, health, outlier};

/// The client used by health probes and agent polls.
pub type MonitorClient = Client<HttpConnector, Empty<Bytes>>;

/// One consistent view of the configuration and its backends.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// The backends, in configuration order.
    pub backends: Vec<Arc<Backend>>,
    /// Weighted round-robin order over `backends`.
    pub schedule: Vec<u32>,
}

/// The live backend table and what its monitors share.
#[derive(Debug)]
pub struct Pool {
    current: ArcSwap<Snapshot>,
    rr: AtomicUsize,
    /// The per-class latency baselines every backend is compared against;
    /// they outlive reloads, as the request classes do.
    baselines: Arc<Baselines>,
    /// Client for probes and polls, apart from the proxy's so that a busy
    /// proxy pool never delays a probe.
    pub monitor_client: MonitorClient,
    /// Retries granted and refused over the last seconds (one budget for
    /// the pool, kept across reloads).
    pub budget: RetryBudget,
    /// Whether the pool was in panic mode at the last look, so entering and
    /// leaving it are logged once each.
    panic: AtomicBool,
    /// Taken only by a backend that has just completed a failure streak, so
    /// that two backends tripping together cannot both take the last room
    /// under `max_ejected_percent`. Never taken by a request that went well.
    ejecting: Mutex<()>,
    /// The client limits' counts and tables (`[limits]`), kept across
    /// reloads.
    pub limiter: Arc<Limiter>,
    /// The last choices made, sampled, for `GET /decisions`.
    pub decisions: Decisions,
    /// Taken by whatever replaces the snapshot (a reload, an admin weight
    /// change), so that two replacements never overwrite each other's
    /// work. Never taken by a request.
    replacing: Mutex<()>,
    /// The access log (`[log]`), reopened on SIGHUP.
    pub access_log: AccessLog,
    /// What clients got: responses by class, total times (kept across
    /// reloads).
    pub requests: Arc<Requests>,
    /// The one metrics registry, which `/metrics` renders.
    pub metrics: metrics::Registry,
}

impl Pool {
    /// Builds the pool and starts one health probe and one agent poller per
    /// backend. Must be called inside a tokio runtime.
    pub fn start(config: Config) -> Arc<Pool> {
        let config = Arc::new(config);
        let baselines = Arc::new(Baselines::new());
        let backends: Vec<_> = config
            .backends
            .iter()
            .map(|b| {
                let (rise, fall) = (config.health.rise, config.health.fall);
                Arc::new(Backend::new(b, rise, fall, &baselines))
            })
            .collect();
        let limiter = Arc::new(Limiter::new(&config.limits));
        let access_log = AccessLog::start(&config.log);
        let requests = Arc::new(Requests::default());
        let pool = Arc::new_cyclic(|me| Pool {
            metrics: metrics::Registry::new(me.clone(), &requests, &limiter),
            requests,
            current: ArcSwap::from_pointee(Snapshot {
                schedule: schedule(&backends),
                backends: backends.clone(),
                config,
            }),
            rr: AtomicUsize::new(0),
            baselines,
            monitor_client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(HttpConnector::new()),
            budget: RetryBudget::new(),
            panic: AtomicBool::new(false),
            ejecting: Mutex::new(()),
            limiter,
            decisions: Decisions::default(),
            replacing: Mutex::new(()),
            access_log,
        });
        for (i, b) in backends.iter().enumerate() {
            start_monitors(&pool, b, i, backends.len());
        }
        pool
    }

    /// The current snapshot (one lock-free load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether `backend` is still part of the current configuration.
    pub fn holds(&self, backend: &Arc<Backend>) -> bool {
        self.current
            .load()
            .backends
            .iter()
            .any(|b| Arc::ptr_eq(b, backend))
    }

    /// Swaps in a new configuration, carrying over the state of backends
    /// present in both.
    pub fn reload(self: &Arc<Self>, config: Config) {
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.snapshot();
        let config = Arc::new(config);
        self.limiter.configure(&config.limits);
        let mut fresh = Vec::new();
        let backends: Vec<_> = config
            .backends
            .iter()
            .map(
                |cfg| match old.backends.iter().find(|b| b.addr == cfg.addr) {
                    Some(b) if b.agent == cfg.agent && b.weight == cfg.weight => Arc::clone(b),
                    Some(b) => {
                        let b = Arc::new(Backend::succeed(b, cfg));
                        fresh.push(Arc::clone(&b));
                        b
                    }
                    None => {
                        let (rise, fall) = (config.health.rise, config.health.fall);
                        let b = Arc::new(Backend::new(cfg, rise, fall, &self.baselines));
                        // Added while running: it ramps up (backends present
                        // at start do not, as in HAProxy).
                        b.begin_slow_start(tokio::time::Instant::now());
                        fresh.push(Arc::clone(&b));
                        b
                    }
                },
            )
            .collect();
        self.current.store(Arc::new(Snapshot {
            schedule: schedule(&backends),
            backends,
            config,
        }));
        for (i, b) in fresh.iter().enumerate() {
            start_monitors(self, b, i, fresh.len());
        }
    }

    /// The backend at `addr` in the current snapshot.
    pub fn find(&self, addr: std::net::SocketAddr) -> Option<Arc<Backend>> {
        let snap = self.current.load();
        snap.backends.iter().find(|b| b.addr == addr).cloned()
    }

    /// Rebuilds the round-robin schedule from the backends' effective
    /// weights, after the admin API changed one.
    pub fn reschedule(&self) {
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.snapshot();
        self.current.store(Arc::new(Snapshot {
            schedule: schedule(&old.backends),
            backends: old.backends.clone(),
            config: Arc::clone(&old.config),
        }));
    }

    /// The latency class of a request ([`Baselines::class_of`]).
    pub fn class_of(&self, method: &http::Method, path_and_query: &str) -> u8 {
        self.baselines.class_of(method, path_and_query)
    }

    /// Chooses a backend of `snap` by its strategy, among those in rotation
    /// (not disabled or draining by an operator, even in panic mode), up,
    /// not ejected (unless the pool is in panic mode) and not yet `tried`
    /// by this request. Backends in slow start are offered with their ramp.
    pub fn choose(&self, snap: &Snapshot, tried: &Tried, rng: &mut fastrand::Rng) -> Option<usize> {
        self.choose_for(snap, tried, rng, None)
    }

    /// [`Pool::choose`] for the request `asked`, which a sampled choice
    /// records for `GET /decisions` ([`crate::decisions`]).
    pub fn choose_for(
        &self,
        snap: &Snapshot,
        tried: &Tried,
        rng: &mut fastrand::Rng,
        asked: Option<Asked<'_>>,
    ) -> Option<usize> {
        let now = tokio::time::Instant::now();
        let how = Pick {
            strategy: snap.config.balance.strategy,
            params: select::Params {
                interval: snap.config.agent.interval,
            },
            // Only round robin needs the shared counter: other strategies
            // leave its cache line alone.
            ticket: match snap.config.balance.strategy {
                Strategy::RoundRobin => self.rr.fetch_add(1, Relaxed),
                _ => 0,
            },
            schedule: &snap.schedule,
        };
        // Read each backend's state once per pick: on the stack for the
        // usual small pools, in a Vec beyond.
        let slow_start = snap.config.balance.slow_start;
        let read = |b: &Arc<Backend>| {
            let view = View {
                ramp: b.ramp(now, slow_start).unwrap_or(1.0),
                ..b.view(now)
            };
            (view, b.is_ejected(now), b.rotation.in_rotation())
        };
        let n = snap.backends.len();
        let mut stack = [(View::UNKNOWN, false, false); 16];
        let heap: Vec<(View, bool, bool)>;
        let states: &[(View, bool, bool)] = if n <= stack.len() {
            for (slot, b) in stack.iter_mut().zip(&snap.backends) {
                *slot = read(b);
            }
            &stack[..n]
        } else {
            heap = snap.backends.iter().map(read).collect();
            &heap
        };
        let out = states
            .iter()
            .filter(|(v, ejected, rotating)| *rotating && (!v.up || *ejected))
            .count();
        let rotating = states.iter().filter(|s| s.2).count();
        let panic = self.note_panic(snap, out, rotating);
        let allowed = |i: usize| states[i].2 && !tried.contains(i) && (panic || !states[i].1);
        let choice = select::pick(&how, n, |i| states[i].0, allowed, rng);
        if let Some(asked) = asked.filter(|_| self.decisions.sample(now)) {
            let seen = Seen {
                how: &how,
                backends: &snap.backends,
                states,
                tried: &|i| tried.contains(i),
                panic,
            };
            self.decisions.record(&asked, &seen, choice);
        }
        let choice = choice?;
        if let Some(pass) = choice.pass {
            snap.backends[choice.index].set_pass(pass);
        }
        Some(choice.index)
    }

    /// Whether the pool was in panic mode at the last choice (no new look:
    /// the access log's `why`).
    pub fn panicking(&self) -> bool {
        self.panic.load(Relaxed)
    }

    /// Whether `snap`'s pool is in panic mode now: more than
    /// `max_ejected_percent` of it down or ejected. Then ejected backends
    /// take traffic again (down ones do not) and nothing more is ejected.
    /// Backends an operator took out of rotation are no part of this
    /// arithmetic (neither out nor in): maintenance is not a failure, and
    /// they are never used in panic mode either.
    pub fn in_panic(&self, snap: &Snapshot) -> bool {
        let now = tokio::time::Instant::now();
        let (out, n) = out_of(snap, now);
        self.note_panic(snap, out, n)
    }

    /// `lb_panic`, for the metrics registry.
    pub fn encode_metrics(
        &self,
        snap: &Snapshot,
        enc: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        crate::metrics::gauge(
            enc,
            "lb_panic",
            "1 while too many backends are down or ejected and ejection is suspended",
            u64::from(self.in_panic(snap)),
        )
    }

    /// Panic mode for `out` of `n` backends in rotation down or ejected;
    /// logs entering and leaving it, once each.
    fn note_panic(&self, snap: &Snapshot, out: usize, n: usize) -> bool {
        let o = &snap.config.outlier;
        let panic = o.ejects() && outlier::panic(out, n, o.max_ejected_percent);
        if self.panic.load(Relaxed) != panic && self.panic.swap(panic, Relaxed) != panic {
            if panic {
                tracing::warn!(
                    "panic mode: {out} of {n} backends are down or ejected, more than max_ejected_percent = {}%; \
                     ejection suspended, ejected backends take traffic again",
                    o.max_ejected_percent
                );
            } else {
                tracing::info!("panic mode over: {out} of {n} backends down or ejected");
            }
        }
        panic
    }

    /// The one place an attempt's outcome lands; the proxy calls it once
    /// per attempt. The backend takes it first ([`Backend::report`]: errors,
    /// passive marking, its failure streak); when the streak is complete,
    /// the backend is ejected here, if that leaves at most
    /// `max_ejected_percent` of the pool down or ejected. `note` is the
    /// error's text, for the status page. Must be called inside a tokio
    /// runtime (an ejection schedules the log line of its return).
    pub fn report(&self, snap: &Snapshot, i: usize, outcome: Outcome, note: Option<String>) {
        let Some(backend) = snap.backends.get(i) else {
            return;
        };
        let o = &snap.config.outlier;
        let now = tokio::time::Instant::now();
        if backend.report(outcome, note, o.consecutive_failures, now) && o.ejects() {
            self.eject(snap, backend, outcome, now);
        }
    }

    fn eject(
        &self,
        snap: &Snapshot,
        backend: &Arc<Backend>,
        last: Outcome,
        now: tokio::time::Instant,
    ) {
        let o = &snap.config.outlier;
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        // A down backend is out already; health probes bring it back. One
        // an operator took out of rotation is out too.
        if !backend.is_up() || backend.is_ejected(now) || !backend.rotation.in_rotation() {
            return;
        }
        let (out, n) = out_of(snap, now);
        if !outlier::may_eject(out + 1, n, o.max_ejected_percent) {
            tracing::debug!(
                backend = %backend.addr,
                "not ejected: {out} of {n} backends already down or ejected (max_ejected_percent = {}%)",
                o.max_ejected_percent
            );
            return;
        }
        let e = backend.eject(now, o.base_ejection);
        tracing::warn!(
            backend = %backend.addr,
            "backend ejected for {}: {} failures in a row, the last one {last} (ejection {}, multiplier {})",
            humantime::format_duration(e.duration),
            o.consecutive_failures,
            e.count,
            e.level
        );
        // Announce the return on time; tokio's sleep saturates huge
        // durations, and the task holds only a weak reference.
        let weak = Arc::downgrade(backend);
        tokio::spawn(async move {
            tokio::time::sleep(e.duration).await;
            if let Some(b) = weak.upgrade() {
                if b.take_return(tokio::time::Instant::now()) {
                    tracing::info!(backend = %b.addr, "backend back in rotation after its ejection");
                }
            }
        });
    }
}

/// The backends one request has been sent to, so that a retry goes
/// elsewhere, whatever the pool's size. A request makes at most
/// `1 + [balance] retries` (at most 11) attempts.
#[derive(Debug, Default)]
pub struct Tried {
    list: [usize; 11],
    len: usize,
}

impl Tried {
    /// Records an attempt on backend `i` (beyond 11, the oldest is kept).
    pub fn add(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    /// Whether backend `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }
}

/// How many of `snap`'s backends in rotation are down or ejected at `now`,
/// and how many are in rotation.
fn out_of(snap: &Snapshot, now: tokio::time::Instant) -> (usize, usize) {
    let rotating = snap.backends.iter().filter(|b| b.rotation.in_rotation());
    let out = rotating
        .clone()
        .filter(|b| !b.is_up() || b.is_ejected(now))
        .count();
    (out, rotating.count())
}

fn schedule(backends: &[Arc<Backend>]) -> Vec<u32> {
    let weights: Vec<u32> = backends.iter().map(|b| b.effective_weight()).collect();
    select::wrr_schedule(&weights)
}

fn start_monitors(pool: &Arc<Pool>, backend: &Arc<Backend>, slot: usize, of: usize) {
    health::spawn(Arc::downgrade(pool), Arc::downgrade(backend), slot, of);
    agent_poll::spawn(Arc::downgrade(pool), Arc::downgrade(backend), slot, of);
    let conns = Arc::downgrade(&backend.conns);
    let (pool, backend) = (Arc::downgrade(pool), Arc::downgrade(backend));
    conns::spawn_sweeper(conns, move || {
        let (pool, backend) = (pool.upgrade()?, backend.upgrade()?);
        let snap = pool.snapshot();
        let held = snap.backends.iter().any(|b| Arc::ptr_eq(b, &backend));
        held.then_some(snap.config.timeouts.idle)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use http::StatusCode;

    /// A pool of `n` backends nobody listens on, with probes and polls too
    /// rare to interfere, and `extra` lines of configuration.
    fn pool(n: usize, extra: &str) -> Arc<Pool> {
        let backends: Vec<String> = (0..n)
            .map(|i| format!("\"127.0.0.1:{}\"", 21_000 + i))
            .collect();
        let text = format!(
            "listen = \"127.0.0.1:1\"\nbackends = [{}]\n[health]\ninterval = \"1h\"\nfall = 1000\n\
             [agent]\ninterval = \"1h\"\n{extra}",
            backends.join(", ")
        );
        Pool::start(Config::parse(&text, std::path::Path::new("t.toml")).unwrap())
    }

    /// Which backends 2000 picks reach.
    fn reached(pool: &Pool, snap: &Snapshot) -> Vec<bool> {
        let mut seen = vec![false; snap.backends.len()];
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..2000 {
            if let Some(i) = pool.choose(snap, &Tried::default(), &mut rng) {
                seen[i] = true;
            }
        }
        seen
    }

    fn fail(pool: &Pool, snap: &Snapshot, i: usize, times: usize) {
        for _ in 0..times {
            let outcome = Outcome::Response(StatusCode::INTERNAL_SERVER_ERROR);
            pool.report(snap, i, outcome, None);
        }
    }

    #[tokio::test]
    async fn ejection_keeps_within_the_pool_share_and_panic_mode_lifts_it() {
        let pool = pool(4, "[balance]\nstrategy = \"random\"\n");
        let snap = pool.snapshot();
        let now = tokio::time::Instant::now;
        fail(&pool, &snap, 0, 4);
        assert!(!snap.backends[0].is_ejected(now()), "4 of 5 failures");
        fail(&pool, &snap, 0, 1);
        assert!(snap.backends[0].is_ejected(now()));
        assert_eq!(reached(&pool, &snap), [false, true, true, true]);

        // A second: 2 of 4 out is the 50 % limit. A third would pass it.
        fail(&pool, &snap, 1, 5);
        fail(&pool, &snap, 2, 50);
        let ejected: Vec<bool> = snap.backends.iter().map(|b| b.is_ejected(now())).collect();
        assert_eq!(ejected, [true, true, false, false]);
        assert_eq!(reached(&pool, &snap), [false, false, true, true]);
        assert!(!pool.in_panic(&snap));

        // One more out by health: 3 of 4, over the limit. Panic: the
        // ejected take traffic again, the down one stays out.
        snap.backends[3].mark_down();
        assert!(pool.in_panic(&snap));
        assert_eq!(reached(&pool, &snap), [true, true, true, false]);
        // And nothing more is ejected meanwhile.
        fail(&pool, &snap, 2, 10);
        assert!(!snap.backends[2].is_ejected(now()));
    }

    #[tokio::test]
    async fn backends_out_of_rotation_stay_out_in_panic_mode_and_do_not_count_towards_it() {
        use crate::rotation::AdminState;
        let pool = pool(4, "[balance]\nstrategy = \"random\"\n");
        let snap = pool.snapshot();
        snap.backends[0].rotation.set(AdminState::Disabled);
        snap.backends[1].rotation.set(AdminState::Draining);
        assert_eq!(reached(&pool, &snap), [false, false, true, true]);
        // Failures of its last requests do not eject a backend out of
        // rotation (it is out already, and would take the room of another).
        fail(&pool, &snap, 0, 20);
        assert!(!snap.backends[0].is_ejected(tokio::time::Instant::now()));
        // One of the two in rotation ejected: 50 %, within the limit, no
        // panic (the two in maintenance are not failures).
        fail(&pool, &snap, 2, 5);
        assert!(snap.backends[2].is_ejected(tokio::time::Instant::now()));
        assert!(!pool.in_panic(&snap));
        assert_eq!(reached(&pool, &snap), [false, false, false, true]);
        // The other down: panic. The ejected one takes traffic again; the
        // operator's two stay out.
        snap.backends[3].mark_down();
        assert!(pool.in_panic(&snap));
        assert_eq!(reached(&pool, &snap), [false, false, true, false]);
    }

    #[tokio::test]
    async fn a_one_backend_pool_is_never_ejected_from_and_zero_turns_it_off() {
        let one = pool(1, "");
        let snap = one.snapshot();
        fail(&one, &snap, 0, 20);
        assert!(!snap.backends[0].is_ejected(tokio::time::Instant::now()));
        assert_eq!(reached(&one, &snap), [true]);

        let off = pool(2, "[outlier]\nconsecutive_failures = 0\n");
        let snap = off.snapshot();
        fail(&off, &snap, 0, 100);
        assert_eq!(
            snap.backends[0].ejection(tokio::time::Instant::now()),
            (None, 0)
        );
        snap.backends[0].mark_down();
        snap.backends[1].mark_down();
        assert!(!off.in_panic(&snap), "no ejection, no panic mode");
    }

    #[tokio::test]
    async fn backends_added_on_reload_ramp_and_those_present_at_start_do_not() {
        let extra = "[balance]\nslow_start = \"10s\"\n";
        let pool = pool(1, extra);
        let now = tokio::time::Instant::now;
        let slow = Duration::from_secs(10);
        assert_eq!(pool.snapshot().backends[0].ramp(now(), slow), None);
        let text = format!(
            "listen = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:21000\", \"127.0.0.1:21001\"]\n\
             [health]\ninterval = \"1h\"\n[agent]\ninterval = \"1h\"\n{extra}"
        );
        pool.reload(Config::parse(&text, std::path::Path::new("t.toml")).unwrap());
        let snap = pool.snapshot();
        assert_eq!(snap.backends[0].ramp(now(), slow), None);
        let ramp = snap.backends[1]
            .ramp(now(), slow)
            .expect("the new one ramps");
        assert!((0.1..0.2).contains(&ramp), "{ramp}");
    }

    #[tokio::test]
    async fn a_retry_never_picks_a_tried_backend_even_in_a_large_pool() {
        let backends: Vec<String> = (0..70)
            .map(|i| format!("\"127.0.0.1:{}\"", 20_000 + i))
            .collect();
        let text = format!(
            "listen = \"127.0.0.1:1\"\nbackends = [{}]\n[balance]\nstrategy = \"random\"\n\
             [health]\ninterval = \"1h\"\n[agent]\ninterval = \"1h\"\n",
            backends.join(", ")
        );
        let pool = Pool::start(Config::parse(&text, std::path::Path::new("t.toml")).unwrap());
        let snap = pool.snapshot();
        // Tried: six backends past index 63 (a 64-bit mask cannot hold
        // them) and five below.
        let mut tried = Tried::default();
        for i in (64..70).chain(0..5) {
            tried.add(i);
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let i = pool.choose(&snap, &tried, &mut rng).expect("59 left");
            assert!(!(64..70).contains(&i) && i >= 5, "picked tried backend {i}");
        }
    }
}
