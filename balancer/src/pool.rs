//! The live set of backends: one immutable [`Snapshot`] behind an
//! `ArcSwap`, read without a lock by every request and replaced whole on
//! reload.
//!
//! A reload keeps the `Arc<Backend>` of every backend present in both
//! configurations, so health, load and counters carry over, and starts
//! monitors (health probe, agent poll) only for the new ones. Monitors hold
//! `Weak` references and stop by themselves once their backend has left the
//! snapshot or the pool is gone.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::backend::Backend;
use crate::config::{Config, Strategy};
use crate::latency::Baselines;
use crate::proxy::UpstreamBody;
use crate::select::{self, Pick, View};
use crate::{agent_poll, health};

/// The client that carries proxied requests: pooled keep-alive HTTP/1.1.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;
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
    /// The pooled client to the backends (rebuilt only when the connect
    /// timeout changes, so a reload keeps warm connections).
    pub client: UpstreamClient,
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
        let pool = Arc::new(Pool {
            current: ArcSwap::from_pointee(Snapshot {
                schedule: schedule(&backends),
                client: upstream_client(&config),
                backends: backends.clone(),
                config,
            }),
            rr: AtomicUsize::new(0),
            baselines,
            monitor_client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(HttpConnector::new()),
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
        let old = self.snapshot();
        let config = Arc::new(config);
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
                        fresh.push(Arc::clone(&b));
                        b
                    }
                },
            )
            .collect();
        let client = if config.timeouts.connect == old.config.timeouts.connect {
            old.client.clone()
        } else {
            upstream_client(&config)
        };
        self.current.store(Arc::new(Snapshot {
            schedule: schedule(&backends),
            backends,
            client,
            config,
        }));
        for (i, b) in fresh.iter().enumerate() {
            start_monitors(self, b, i, fresh.len());
        }
    }

    /// Chooses a backend of `snap` by its strategy, among those up and not
    /// yet `tried` by this request.
    pub fn choose(&self, snap: &Snapshot, tried: &Tried, rng: &mut fastrand::Rng) -> Option<usize> {
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
        let allowed = |i: usize| !tried.contains(i);
        // Read each backend's state once per pick: on the stack for the
        // usual small pools, in a Vec beyond.
        let n = snap.backends.len();
        let mut stack = [View::UNKNOWN; 16];
        let heap: Vec<View>;
        let views: &[View] = if n <= stack.len() {
            for (slot, b) in stack.iter_mut().zip(&snap.backends) {
                *slot = b.view(now);
            }
            &stack[..n]
        } else {
            heap = snap.backends.iter().map(|b| b.view(now)).collect();
            &heap
        };
        select::pick(&how, n, |i| views[i], allowed, rng)
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

fn schedule(backends: &[Arc<Backend>]) -> Vec<u32> {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    select::wrr_schedule(&weights)
}

fn upstream_client(config: &Config) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeouts.connect));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

fn start_monitors(pool: &Arc<Pool>, backend: &Arc<Backend>, slot: usize, of: usize) {
    health::spawn(Arc::downgrade(pool), Arc::downgrade(backend), slot, of);
    agent_poll::spawn(Arc::downgrade(pool), Arc::downgrade(backend), slot, of);
}

#[cfg(test)]
mod tests {
    use super::*;

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
