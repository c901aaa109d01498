//! The live backend table: one immutable [`Snapshot`] (the router, every
//! pool's [`Upstream`] and their members) behind an `ArcSwap`, read
//! without a lock by every request and replaced whole when it changes.
//!
//! There is one way to change it, [`Pool::update`]: SIGHUP, the admin API,
//! registrations and DNS discovery each change the [`Sources`] the table
//! is built from, and the one reconciliation turns them into a new
//! snapshot. It keeps the `Arc<Backend>` of every backend present before
//! and after (same pool, origin, agent and weight), so health, load,
//! counters and connections carry over (as pingora's `Backends::update`
//! does); a backend whose agent, weight or pool changed gets a successor
//! that inherits its state; new ones start their monitors (health probe,
//! agent poll, connection sweeper) and ramp up under slow start. Monitors
//! hold `Weak` references and stop by themselves once their backend has
//! left the table or the pool is gone.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::access_log::AccessLog;
use crate::backend::Backend;
use crate::budget::RetryBudget;
use crate::config::Config;
use crate::conns;
use crate::decisions::Decisions;
use crate::latency::Baselines;
use crate::limits::Limiter;
use crate::metrics::{Registry, Requests};
use crate::monitor::{MonitorClient, Run, Watch};
use crate::router::Router;
use crate::sources::{Desired, Sources};
use crate::upstream::Upstream;
use crate::{agent_poll, discovery, health};

pub use crate::upstream::Tried;

/// One consistent view of the configuration and the backend table.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// Which upstream a request goes to.
    pub router: Router,
    /// Every pool: `"default"` first, then the `[[pool]]`s in file order.
    pub upstreams: Vec<Upstream>,
    /// Every backend of every upstream, in that order (for the admin view
    /// and the metrics).
    pub backends: Vec<Arc<Backend>>,
}

impl Snapshot {
    /// The upstream for a request to `host` (as sent) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> &Upstream {
        let i = if self.router.is_trivial() {
            0
        } else {
            self.router.route(host, path)
        };
        &self.upstreams[i.min(self.upstreams.len() - 1)]
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// Whether any upstream is in panic mode now.
    pub fn in_panic(&self) -> bool {
        self.upstreams.iter().any(|u| u.in_panic(&self.config))
    }

    /// `lb_panic`, for the metrics registry.
    pub fn encode_metrics(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        crate::metrics::gauge(
            enc,
            "lb_panic",
            "1 while too many backends of a pool are down or ejected and ejection is suspended there",
            u64::from(self.in_panic()),
        )
    }
}

/// The live backend table and what its monitors share.
#[derive(Debug)]
pub struct Pool {
    current: ArcSwap<Snapshot>,
    /// What the table is built from. Taken by whatever changes the table
    /// (a reload, an admin change, a registration, a DNS answer), so that
    /// two changes never overwrite each other's work; never by a request.
    sources: Mutex<Sources>,
    /// The DNS discovery tasks feeding `sources`; taken only inside the
    /// reconciliation, after `sources`.
    discovery: Mutex<discovery::Tasks>,
    /// The per-class latency baselines every backend is compared against;
    /// they outlive reloads, as the request classes do.
    baselines: Arc<Baselines>,
    /// Client for probes and polls, apart from the proxy's so that a busy
    /// proxy pool never delays a probe.
    pub monitor_client: MonitorClient,
    /// Retries granted and refused over the last seconds (one budget for
    /// the balancer, kept across reloads).
    pub budget: RetryBudget,
    /// The client limits' counts and tables (`[limits]`), kept across
    /// reloads.
    pub limiter: Arc<Limiter>,
    /// The last choices made, sampled, for `GET /decisions`.
    pub decisions: Decisions,
    /// The access log (`[log]`), reopened on SIGHUP.
    pub access_log: AccessLog,
    /// What clients got: responses by class, total times (kept across
    /// reloads).
    pub requests: Arc<Requests>,
    /// The one metrics registry, which `/metrics` renders.
    pub metrics: Registry,
}

impl Pool {
    /// Builds the table and starts one health probe and one agent poller
    /// per backend (and the DNS discovery tasks). Registrations expire
    /// only once `registry::spawn_expiry` runs, which
    /// [`crate::Balancer::start`] does. Must be called inside a tokio
    /// runtime.
    pub fn start(config: Config) -> Arc<Pool> {
        let config = Arc::new(config);
        let sources = Sources::new(Arc::clone(&config));
        let baselines = Arc::new(Baselines::new());
        let (snapshot, fresh) = build(&sources, None, &baselines);
        let limiter = Arc::new(Limiter::new(&config.limits));
        let access_log = AccessLog::start(&config.log);
        let requests = Arc::new(Requests::default());
        let pool = Arc::new_cyclic(|me| Pool {
            metrics: registry(me, &requests, &limiter),
            requests,
            current: ArcSwap::from_pointee(snapshot),
            sources: Mutex::new(sources),
            discovery: Mutex::default(),
            baselines,
            monitor_client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(HttpConnector::new()),
            budget: RetryBudget::new(),
            limiter,
            decisions: Decisions::default(),
            access_log,
        });
        pool.start_monitors(&fresh);
        pool.sync_discovery(&pool.lock_sources());
        pool
    }

    /// The current snapshot (one lock-free load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether `backend` is still part of the table.
    pub fn holds(&self, backend: &Arc<Backend>) -> bool {
        self.current
            .load()
            .backends
            .iter()
            .any(|b| Arc::ptr_eq(b, backend))
    }

    /// The backend at `addr` in the current snapshot.
    pub fn find(&self, addr: SocketAddr) -> Option<Arc<Backend>> {
        let snap = self.current.load();
        snap.backends.iter().find(|b| b.addr == addr).cloned()
    }

    /// The latency class of a request ([`Baselines::class_of`]).
    pub fn class_of(&self, method: &http::Method, path_and_query: &str) -> u8 {
        self.baselines.class_of(method, path_and_query)
    }

    /// Swaps in a new configuration, carrying over the state of backends
    /// present in both; registrations whose pool is gone are dropped.
    pub fn reload(self: &Arc<Self>, config: Config) {
        self.limiter.configure(&config.limits);
        self.update(|s| {
            s.config = Arc::new(config);
            s.drop_orphans();
            true
        });
    }

    /// Rebuilds the table from unchanged sources: the round-robin
    /// schedules follow the backends' effective weights again, after the
    /// admin API changed one.
    pub fn reschedule(self: &Arc<Self>) {
        self.update(|_| true);
    }

    /// The one reconciliation: `change` edits the sources (under the lock
    /// every change takes) and says whether the table may differ; if so, a
    /// new snapshot is built from them, keeping the state of every backend
    /// present before and after, and swapped in. Returns what `change`
    /// said.
    pub fn update(self: &Arc<Self>, change: impl FnOnce(&mut Sources) -> bool) -> bool {
        let mut sources = self.lock_sources();
        if !change(&mut sources) {
            return false;
        }
        let old = self.snapshot();
        let (snapshot, fresh) = build(&sources, Some(&old), &self.baselines);
        self.current.store(Arc::new(snapshot));
        self.start_monitors(&fresh);
        self.sync_discovery(&sources);
        true
    }

    /// Starts and stops discovery tasks as `sources`' configuration says.
    fn sync_discovery(self: &Arc<Self>, sources: &Sources) {
        let mut tasks = self
            .discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.sync(&self.discovered(), sources);
    }

    /// What the discovery tasks do with a new set of addresses: hand it to
    /// the reconciliation as that pool's discovered members. `false` (the
    /// task stops) once the table or the pool is gone.
    fn discovered(self: &Arc<Self>) -> discovery::Apply {
        let pool = Arc::downgrade(self);
        Arc::new(move |name: &str, addrs: Vec<SocketAddr>| {
            let Some(pool) = pool.upgrade() else {
                return false;
            };
            let mut known = true;
            pool.update(|s| {
                if s.pool_index(name).is_none() {
                    known = false;
                    return false;
                }
                let list = discovery::list(&addrs);
                tracing::info!(pool = %name, "DNS discovery: {} backend(s): {list}", addrs.len());
                // A registration of an address DNS now names gives way
                // (discovered beats registered): say so, once per answer.
                for addr in addrs.iter().filter(|a| s.registered.contains_key(a)) {
                    tracing::warn!(backend = %addr, pool = %name, "registered backend is now found by DNS discovery: the DNS entry wins, its registration is ignored while DNS names it");
                }
                let old = s.discovered.insert(name.to_owned(), addrs.clone());
                old.as_ref() != Some(&addrs)
            });
            known
        })
    }

    /// Reads the sources (under the table's lock, so briefly).
    pub fn with_sources<R>(&self, read: impl FnOnce(&Sources) -> R) -> R {
        read(&self.lock_sources())
    }

    fn lock_sources(&self) -> MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `backend`'s monitors run with, while it is in the table.
    fn watch(&self, backend: &Arc<Backend>) -> Option<Run> {
        let snap = self.current.load();
        let up = snap
            .upstreams
            .iter()
            .find(|u| u.backends.iter().any(|b| Arc::ptr_eq(b, backend)))?;
        Some(Run {
            config: Arc::clone(&snap.config),
            health_path: Arc::clone(&up.health_path),
            client: self.monitor_client.clone(),
        })
    }

    fn start_monitors(self: &Arc<Self>, fresh: &[Arc<Backend>]) {
        let weak = Arc::downgrade(self);
        let watch: Watch = Arc::new(move |b| weak.upgrade()?.watch(b));
        let config = Arc::clone(&self.snapshot().config);
        let (probe, poll) = (config.health.interval, config.agent.interval);
        for (i, b) in fresh.iter().enumerate() {
            let n = fresh.len();
            health::spawn(Arc::clone(&watch), Arc::downgrade(b), probe, i, n);
            agent_poll::spawn(Arc::clone(&watch), Arc::downgrade(b), poll, i, n);
            let conns = Arc::downgrade(&b.conns);
            let (watch, backend) = (Arc::clone(&watch), Arc::downgrade(b));
            conns::spawn_sweeper(conns, move || {
                let run = watch(&backend.upgrade()?)?;
                Some(run.config.timeouts.idle)
            });
        }
    }
}

/// The metrics registry of the pool behind `pool` (a weak reference: the
/// pool owns the registry): what clients got, the pool-wide families, the
/// client limits', in that order.
fn registry(pool: &Weak<Pool>, requests: &Arc<Requests>, limiter: &Arc<Limiter>) -> Registry {
    let mut registry = Registry::new();
    registry.register(Box::new(Arc::clone(requests)));
    registry.register(Box::new(PoolCollector(pool.clone())));
    registry.register(Box::new(Arc::clone(limiter)));
    registry
}

/// The pool-wide families: every backend's, panic mode, the retry budget,
/// the access log's dropped lines.
#[derive(Debug)]
struct PoolCollector(Weak<Pool>);

impl Collector for PoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(pool) = self.0.upgrade() else {
            return Ok(());
        };
        let snap = pool.snapshot();
        let slow_start = snap.config.balance.slow_start;
        crate::backend::metrics::encode(&snap.backends, slow_start, &mut enc)?;
        snap.encode_metrics(&mut enc)?;
        pool.budget.encode_metrics(&mut enc)?;
        crate::access_log::encode_metrics(&mut enc)
    }
}

/// Builds the snapshot `sources` describe, carrying over what `old` holds;
/// returns it with the backends that are new (they need monitors).
fn build(
    sources: &Sources,
    old: Option<&Snapshot>,
    baselines: &Arc<Baselines>,
) -> (Snapshot, Vec<Arc<Backend>>) {
    let config = &sources.config;
    let mut fresh = Vec::new();
    let desired = sources.desired();
    let before: HashMap<SocketAddr, &Arc<Backend>> = old
        .map(|o| o.backends.iter().map(|b| (b.addr, b)).collect())
        .unwrap_or_default();
    let upstreams: Vec<Upstream> = desired
        .into_iter()
        .map(|d| {
            let carried = old
                .and_then(|o| o.upstream(&d.name))
                .map_or_else(Arc::default, |u| Arc::clone(u.carried()));
            let running = old.is_some();
            let backends = members(&d, config, &before, running, baselines, &mut fresh);
            Upstream::new(d.name, d.strategy, d.health_path, backends, carried)
        })
        .collect();
    let router = Router::new(&config.routes, |name| sources.pool_index(name).unwrap_or(0));
    let backends = upstreams
        .iter()
        .flat_map(|u| u.backends.iter().cloned())
        .collect();
    let snapshot = Snapshot {
        config: Arc::clone(config),
        router,
        upstreams,
        backends,
    };
    (snapshot, fresh)
}

/// The members `d` describes, each carried over from `before` where it
/// was there already with the same pool, origin, agent and weight, or
/// succeeding it (its state inherited) where one of those changed; new
/// ones (also pushed to `fresh`: they need monitors) ramp up under slow
/// start when the table is `running` (backends present at start do not,
/// as in HAProxy).
fn members(
    d: &Desired,
    config: &Config,
    before: &HashMap<SocketAddr, &Arc<Backend>>,
    running: bool,
    baselines: &Arc<Baselines>,
    fresh: &mut Vec<Arc<Backend>>,
) -> Vec<Arc<Backend>> {
    let (rise, fall) = (config.health.rise, config.health.fall);
    let mut joined = |b: Backend| {
        let b = Arc::new(b);
        fresh.push(Arc::clone(&b));
        b
    };
    d.members
        .iter()
        .map(|(cfg, origin)| match before.get(&cfg.addr) {
            Some(b)
                if b.agent == cfg.agent
                    && b.weight == cfg.weight
                    && b.pool == d.name
                    && b.origin == *origin =>
            {
                Arc::clone(b)
            }
            Some(b) => joined(Backend::succeed(b, cfg).in_pool(Arc::clone(&d.name), *origin)),
            None => {
                let b = Backend::new(cfg, rise, fall, baselines);
                if running {
                    b.begin_slow_start(tokio::time::Instant::now());
                }
                joined(b.in_pool(Arc::clone(&d.name), *origin))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use http::StatusCode;

    use crate::outcome::Outcome;

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

    /// Which backends of the default pool 2000 picks reach.
    fn reached(snap: &Snapshot) -> Vec<bool> {
        let mut seen = vec![false; snap.backends.len()];
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..2000 {
            let up = &snap.upstreams[0];
            if let Some(i) = up.choose(&snap.config, &Tried::default(), &mut rng, None) {
                seen[i] = true;
            }
        }
        seen
    }

    fn fail(snap: &Snapshot, i: usize, times: usize) {
        for _ in 0..times {
            let outcome = Outcome::Response(StatusCode::INTERNAL_SERVER_ERROR);
            snap.upstreams[0].report(&snap.config, i, outcome, None);
        }
    }

    #[tokio::test]
    async fn ejection_keeps_within_the_pool_share_and_panic_mode_lifts_it() {
        let pool = pool(4, "[balance]\nstrategy = \"random\"\n");
        let snap = pool.snapshot();
        let now = tokio::time::Instant::now;
        fail(&snap, 0, 4);
        assert!(!snap.backends[0].is_ejected(now()), "4 of 5 failures");
        fail(&snap, 0, 1);
        assert!(snap.backends[0].is_ejected(now()));
        assert_eq!(reached(&snap), [false, true, true, true]);

        // A second: 2 of 4 out is the 50 % limit. A third would pass it.
        fail(&snap, 1, 5);
        fail(&snap, 2, 50);
        let ejected: Vec<bool> = snap.backends.iter().map(|b| b.is_ejected(now())).collect();
        assert_eq!(ejected, [true, true, false, false]);
        assert_eq!(reached(&snap), [false, false, true, true]);
        assert!(!snap.in_panic());

        // One more out by health: 3 of 4, over the limit. Panic: the
        // ejected take traffic again, the down one stays out.
        snap.backends[3].mark_down();
        assert!(snap.in_panic());
        assert_eq!(reached(&snap), [true, true, true, false]);
        // And nothing more is ejected meanwhile.
        fail(&snap, 2, 10);
        assert!(!snap.backends[2].is_ejected(now()));
    }

    #[tokio::test]
    async fn backends_out_of_rotation_stay_out_in_panic_mode_and_do_not_count_towards_it() {
        use crate::rotation::AdminState;
        let pool = pool(4, "[balance]\nstrategy = \"random\"\n");
        let snap = pool.snapshot();
        snap.backends[0].rotation.set(AdminState::Disabled);
        snap.backends[1].rotation.set(AdminState::Draining);
        assert_eq!(reached(&snap), [false, false, true, true]);
        // Failures of its last requests do not eject a backend out of
        // rotation (it is out already, and would take the room of another).
        fail(&snap, 0, 20);
        assert!(!snap.backends[0].is_ejected(tokio::time::Instant::now()));
        // One of the two in rotation ejected: 50 %, within the limit, no
        // panic (the two in maintenance are not failures).
        fail(&snap, 2, 5);
        assert!(snap.backends[2].is_ejected(tokio::time::Instant::now()));
        assert!(!snap.in_panic());
        assert_eq!(reached(&snap), [false, false, false, true]);
        // The other down: panic. The ejected one takes traffic again; the
        // operator's two stay out.
        snap.backends[3].mark_down();
        assert!(snap.in_panic());
        assert_eq!(reached(&snap), [false, false, true, false]);
    }

    #[tokio::test]
    async fn a_one_backend_pool_is_never_ejected_from_and_zero_turns_it_off() {
        let one = pool(1, "");
        let snap = one.snapshot();
        fail(&snap, 0, 20);
        assert!(!snap.backends[0].is_ejected(tokio::time::Instant::now()));
        assert_eq!(reached(&snap), [true]);

        let off = pool(2, "[outlier]\nconsecutive_failures = 0\n");
        let snap = off.snapshot();
        fail(&snap, 0, 100);
        assert_eq!(
            snap.backends[0].ejection(tokio::time::Instant::now()),
            (None, 0)
        );
        snap.backends[0].mark_down();
        snap.backends[1].mark_down();
        assert!(!snap.in_panic(), "no ejection, no panic mode");
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
            let up = &snap.upstreams[0];
            let i = up
                .choose(&snap.config, &tried, &mut rng, None)
                .expect("59 left");
            assert!(!(64..70).contains(&i) && i >= 5, "picked tried backend {i}");
        }
    }
}
