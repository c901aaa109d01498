//! One pool of backends as the request path sees it: its members, its
//! strategy and its own round-robin turn, and the one call through which
//! an attempt's outcome lands ([`Upstream::report`]).
//!
//! An `Upstream` is immutable and lives in the [`crate::pool::Snapshot`];
//! what must outlive a rebuild of the table (the round-robin counter, the
//! panic flag) sits in a [`Carried`] shared by the upstreams of the same
//! name across snapshots.
//!
//! Choosing: the strategy ([`crate::select`]) proposes among the backends a
//! request may go to — in rotation (not disabled or draining by an
//! operator, even in panic mode), up, not yet tried by this request, and
//! not ejected unless the upstream is in panic mode (more than
//! `max_ejected_percent` of it down or ejected). Backends in slow start are
//! offered with their ramp.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::backend::Backend;
use crate::config::{Config, Strategy};
use crate::decisions::{Asked, Decisions, Seen};
use crate::outcome::Outcome;
use crate::outlier;
use crate::select::{self, Pick, View};

/// One pool of backends, as built by the last reconciliation.
#[derive(Debug)]
pub struct Upstream {
    /// The pool's name (`"default"` for the top-level `backends`).
    pub name: Arc<str>,
    /// Its selection policy.
    pub strategy: Strategy,
    /// The path its health probes ask for.
    pub health_path: Arc<str>,
    /// Its members: listed first, then discovered, then registered.
    pub backends: Vec<Arc<Backend>>,
    /// Weighted round-robin order over `backends`.
    pub schedule: Vec<u32>,
    /// What outlives a rebuild of the table.
    carried: Arc<Carried>,
}

/// The state of an upstream that a rebuild of the table keeps (by name).
#[derive(Debug, Default)]
pub struct Carried {
    /// Round robin's turn: only round robin touches it.
    rr: AtomicUsize,
    /// Whether the upstream was in panic mode at the last look, so that
    /// entering and leaving it are logged once each.
    panic: AtomicBool,
    /// Taken only by a backend that has just completed a failure streak,
    /// so that two backends tripping together cannot both take the last
    /// room under `max_ejected_percent`. Never taken by a request that
    /// went well.
    ejecting: Mutex<()>,
}

impl Upstream {
    /// An upstream named `name` over `backends`, keeping `carried` from
    /// its predecessor (a fresh one for a new pool).
    pub fn new(
        name: Arc<str>,
        strategy: Strategy,
        health_path: Arc<str>,
        backends: Vec<Arc<Backend>>,
        carried: Arc<Carried>,
    ) -> Upstream {
        let weights: Vec<u32> = backends.iter().map(|b| b.effective_weight()).collect();
        Upstream {
            name,
            strategy,
            health_path,
            schedule: select::wrr_schedule(&weights),
            backends,
            carried,
        }
    }

    /// What a successor of this upstream keeps.
    pub fn carried(&self) -> &Arc<Carried> {
        &self.carried
    }

    /// The member at `addr`.
    pub fn find(&self, addr: SocketAddr) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// Chooses a member by the strategy among those this request may go to
    /// (see the module documentation); `record`: the request and the
    /// ring a sampled choice is recorded in, for `GET /decisions`.
    pub fn choose(
        &self,
        config: &Config,
        tried: &Tried,
        rng: &mut fastrand::Rng,
        record: Option<(&Decisions, Asked<'_>)>,
    ) -> Option<usize> {
        let now = Instant::now();
        let how = Pick {
            strategy: self.strategy,
            params: select::Params {
                interval: config.agent.interval,
            },
            // Only round robin needs the shared counter: other strategies
            // leave its cache line alone.
            ticket: match self.strategy {
                Strategy::RoundRobin => self.carried.rr.fetch_add(1, Relaxed),
                _ => 0,
            },
            schedule: &self.schedule,
        };
        // Read each backend's state once per pick: on the stack for the
        // usual small pools, in a Vec beyond.
        let slow_start = config.balance.slow_start;
        let read = |b: &Arc<Backend>| {
            let view = View {
                ramp: b.ramp(now, slow_start).unwrap_or(1.0),
                ..b.view(now)
            };
            (view, b.is_ejected(now), b.rotation.in_rotation())
        };
        let n = self.backends.len();
        let mut stack = [(View::UNKNOWN, false, false); 16];
        let heap: Vec<(View, bool, bool)>;
        let states: &[(View, bool, bool)] = if n <= stack.len() {
            for (slot, b) in stack.iter_mut().zip(&self.backends) {
                *slot = read(b);
            }
            &stack[..n]
        } else {
            heap = self.backends.iter().map(read).collect();
            &heap
        };
        let out = states
            .iter()
            .filter(|(v, ejected, rotating)| *rotating && (!v.up || *ejected))
            .count();
        let rotating = states.iter().filter(|s| s.2).count();
        let panic = self.note_panic(config, out, rotating);
        let allowed = |i: usize| states[i].2 && !tried.contains(i) && (panic || !states[i].1);
        let choice = select::pick(&how, n, |i| states[i].0, allowed, rng);
        if let Some((decisions, asked)) = record.filter(|(d, _)| d.sample(now)) {
            let seen = Seen {
                how: &how,
                pool: &self.name,
                backends: &self.backends,
                states,
                tried: &|i| tried.contains(i),
                panic,
            };
            decisions.record(&asked, &seen, choice);
        }
        let choice = choice?;
        if let Some(pass) = choice.pass {
            self.backends[choice.index].set_pass(pass);
        }
        Some(choice.index)
    }

    /// Whether the upstream was in panic mode at the last choice (no new
    /// look: the access log's `why`).
    pub fn panicking(&self) -> bool {
        self.carried.panic.load(Relaxed)
    }

    /// Whether the upstream is in panic mode now: more than
    /// `max_ejected_percent` of it down or ejected. Then ejected backends
    /// take traffic again (down ones do not) and nothing more is ejected.
    /// Backends an operator took out of rotation are no part of this
    /// arithmetic (neither out nor in): maintenance is not a failure, and
    /// they are never used in panic mode either.
    pub fn in_panic(&self, config: &Config) -> bool {
        let (out, n) = self.out_of(Instant::now());
        self.note_panic(config, out, n)
    }

    /// Panic mode for `out` of `n` backends in rotation down or ejected;
    /// logs entering and leaving it, once each.
    fn note_panic(&self, config: &Config, out: usize, n: usize) -> bool {
        let o = &config.outlier;
        let panic = o.ejects() && outlier::panic(out, n, o.max_ejected_percent);
        let flag = &self.carried.panic;
        if flag.load(Relaxed) != panic && flag.swap(panic, Relaxed) != panic {
            let pool = &self.name;
            if panic {
                tracing::warn!(
                    pool = %pool,
                    "panic mode: {out} of {n} backends are down or ejected, more than max_ejected_percent = {}%; \
                     ejection suspended, ejected backends take traffic again",
                    o.max_ejected_percent
                );
            } else {
                tracing::info!(pool = %pool, "panic mode over: {out} of {n} backends down or ejected");
            }
        }
        panic
    }

    /// The one place an attempt's outcome lands; the proxy calls it once
    /// per attempt on member `i`. The backend takes it first
    /// ([`Backend::report`]: errors, passive marking, its failure streak,
    /// the latency signal, its metrics); when the streak is complete, the
    /// backend is ejected here, if that leaves at most
    /// `max_ejected_percent` of the upstream down or ejected. `note` is
    /// the error's text, for the status page. Must be called inside a
    /// tokio runtime (an ejection schedules the log line of its return).
    pub fn report(&self, config: &Config, i: usize, outcome: Outcome, note: Option<String>) {
        let Some(backend) = self.backends.get(i) else {
            return;
        };
        let o = &config.outlier;
        let now = Instant::now();
        if backend.report(outcome, note, o.consecutive_failures, now) && o.ejects() {
            self.eject(config, backend, outcome, now);
        }
    }

    fn eject(&self, config: &Config, backend: &Arc<Backend>, last: Outcome, now: Instant) {
        let o = &config.outlier;
        let _one_at_a_time = self
            .carried
            .ejecting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A down backend is out already; health probes bring it back. One
        // an operator took out of rotation is out too.
        if !backend.is_up() || backend.is_ejected(now) || !backend.rotation.in_rotation() {
            return;
        }
        let (out, n) = self.out_of(now);
        if !outlier::may_eject(out + 1, n, o.max_ejected_percent) {
            tracing::debug!(
                backend = %backend.addr,
                "not ejected: {out} of {n} backends of pool {} already down or ejected (max_ejected_percent = {}%)",
                self.name,
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
                if b.take_return(Instant::now()) {
                    tracing::info!(backend = %b.addr, "backend back in rotation after its ejection");
                }
            }
        });
    }

    /// How many members in rotation are down or ejected at `now`, and how
    /// many are in rotation.
    fn out_of(&self, now: Instant) -> (usize, usize) {
        let rotating = self.backends.iter().filter(|b| b.rotation.in_rotation());
        let out = rotating
            .clone()
            .filter(|b| !b.is_up() || b.is_ejected(now))
            .count();
        (out, rotating.count())
    }
}

/// The members of one upstream a request has been sent to, so that a
/// retry goes elsewhere, whatever the upstream's size. A request makes at
/// most `1 + [balance] retries` (at most 11) attempts, all in one upstream.
#[derive(Debug, Default)]
pub struct Tried {
    list: [usize; 11],
    len: usize,
}

impl Tried {
    /// Records an attempt on member `i` (beyond 11, the oldest is kept).
    pub fn add(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    /// Whether member `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }
}
