//! An HTTP load balancer that routes on real host load.
//!
//! Module map, following one request:
//!
//! - [`config`]: `lb.toml` → a validated, typed [`Config`].
//! - [`listener`]: the plain and TLS listeners, accepting apart from
//!   serving (backing off when out of file descriptors); [`tls`]: certificates (SNI), the rustls configuration, the
//!   swap on reload.
//! - [`server`]: serves the accepted connections (HTTP/1.1 and HTTP/2), idle
//!   timeouts, graceful drain; idle HTTP/1.1 keep-alive connections
//!   hibernate as bare sockets between requests; [`workers`]: the same on
//!   N threads, one single-threaded runtime each.
//! - [`host`]: which host a request is for (one `Host`, the authority
//!   first).
//! - [`router`]: the `[[route]]`s, in match order: host and path to the
//!   upstream (pool) a request goes to.
//! - [`proxy`]: one request: pick, rewrite, forward, retry, respond
//!   ([`redirect`]: plain HTTP sent to `https://` instead); [`peer`]: the
//!   client as the proxy sees it; [`body`]: the bodies it answers with;
//!   [`conns`]: the connections to each backend (reused, capped, driven by
//!   the request itself); [`request_body`]: the body sent upstream.
//! - [`upstream`]: one pool: its backends, its strategy and round-robin
//!   turn; it chooses a backend and takes each attempt's outcome (one
//!   call).
//! - [`pool`]: the live table (router and upstreams) behind an `ArcSwap`,
//!   swapped whole by its one reconciliation; [`sources`]: what the table
//!   is built from (the configuration, DNS answers, registrations) and the
//!   members each pool should have; [`registry`]: self-registered
//!   backends, their heartbeats and withdrawal; [`discovery`]: the DNS
//!   discovery tasks of the pools that have a `discover` name, which
//!   [`discover`] resolves (A/AAAA or SRV; a failed lookup keeps the last
//!   good set);
//!   [`backend`]: one backend's atomics and health counter.
//! - [`select`]: the strategies, pure functions over a snapshot;
//!   [`latency`]: the measured slowness `least-loaded` weighs;
//!   [`decisions`]: the last choices made and why, sampled.
//! - [`outcome`]: what one attempt came to, classified once and reported
//!   once; it feeds passive health and [`outlier`] ejection (failure
//!   streaks, the pool share that may be out, panic mode).
//! - [`rotation`]: an operator's hold on a backend (disabled, draining,
//!   a weight override), set through the admin API.
//! - [`slow_start`]: the ramp of a backend that came up or was added;
//!   [`budget`]: the retry budget.
//! - [`health`]: active probes; [`agent_poll`]: load reports from agents;
//!   [`monitor`]: the staggered, jittered loop both run; [`deadline`]:
//!   time arithmetic on configured durations that saturates, never panics.
//! - [`compress`]: the compression decision and streaming encoders.
//! - [`limits`]: caps and timeouts against hostile clients (connections,
//!   request rate, request bodies, slow readers, idle tunnels);
//!   [`tunnel`]: an upgraded connection (WebSocket), its bytes copied
//!   both ways until it closes or idles out.
//! - [`error`]: proxy errors and their status codes; [`error_chain`]: an
//!   error and its causes on one line.
//! - [`metrics`]: the one metrics registry; each owner defines its families.
//! - [`admin`]: status page, JSON, metrics and health on their own listener;
//!   [`recent`]: each backend's p50/p99 over the last second, for the page.
//! - [`access_log`]: one line per request, written off the request path.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod agent_poll;
pub mod backend;
pub mod body;
pub mod budget;
pub mod compress;
pub mod config;
pub mod conns;
pub mod deadline;
pub mod decisions;
pub mod discover;
pub mod discovery;
pub mod error;
pub mod error_chain;
pub mod health;
pub mod host;
pub mod latency;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod monitor;
pub mod outcome;
pub mod outlier;
pub mod peer;
pub mod pool;
pub mod proxy;
pub mod recent;
pub mod redirect;
pub mod registry;
pub mod request_body;
pub mod rotation;
pub mod router;
pub mod select;
pub mod server;
pub mod slow_start;
pub mod sources;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::{Config, ConfigError};
pub use listener::Listeners;

/// A running balancer: its backend pool and monitors. Cheap to clone; the
/// monitors stop once the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Balancer {
    pool: Arc<pool::Pool>,
    /// With `[tls]`: the certificates and rustls configuration of the TLS
    /// listener, kept across reloads (which swap the certificates).
    tls: Option<Arc<tls::Terminator>>,
}

impl Balancer {
    /// Starts health probes and agent polls for `config`'s backends, the
    /// DNS discovery tasks and the expiry of registrations.
    /// Must be called inside a tokio runtime.
    pub fn start(config: Config) -> Balancer {
        let tls = config
            .tls
            .as_ref()
            .map(|t| Arc::new(tls::Terminator::new(Arc::clone(&t.certs))));
        let pool = pool::Pool::start(config);
        registry::spawn_expiry(&pool);
        Balancer { pool, tls }
    }

    /// Applies a new configuration: backends present in both keep their
    /// health, load and counters, and the state an operator set through
    /// the admin API (disabled, draining; a weight override too, unless
    /// the new file changes that backend's weight: then the file wins and
    /// the log says so); new ones start up; removed ones stop
    /// receiving requests (those in flight finish). The listen addresses
    /// are bound once and a change to them needs a restart: the running
    /// configuration keeps the addresses actually listened on, so
    /// `/status.json` goes on reporting those.
    /// The TLS certificates are those of `config` (re-read when it was
    /// loaded) for new handshakes; established connections keep theirs.
    pub fn reload(&self, mut config: Config) {
        let old = self.pool.snapshot();
        if old.config.listen != config.listen || old.config.admin.listen != config.admin.listen {
            tracing::warn!("listen addresses cannot change on reload; restart to apply them");
            config.listen = old.config.listen;
            config.admin.listen = old.config.admin.listen;
        }
        self.reload_tls(old.config.tls.as_ref(), config.tls.as_ref());
        self.pool.access_log.reopen(&config.log);
        self.pool.reload(config);
        let snap = self.pool.snapshot();
        tracing::info!(
            "configuration reloaded: {} backend(s), strategy {}",
            snap.backends.len(),
            snap.config.balance.strategy.name()
        );
    }

    /// New certificates for new handshakes; what the running listeners
    /// cannot follow (a TLS listener added, removed or moved) is logged.
    fn reload_tls(&self, old: Option<&config::Tls>, new: Option<&config::Tls>) {
        match (&self.tls, new) {
            (Some(terminator), Some(new)) => {
                if old.map(|o| o.listen) != Some(new.listen) {
                    tracing::warn!("[tls] listen cannot change on reload; restart to apply it");
                }
                if terminator.set_certs(Arc::clone(&new.certs)) {
                    tracing::info!(
                        "TLS certificates reloaded: {} (and {} for SNI)",
                        new.certs.default.cert.display(),
                        new.certs.sni.len()
                    );
                } else {
                    tracing::info!("TLS certificates unchanged");
                }
            }
            (Some(_), None) => tracing::warn!(
                "[tls] removed: the TLS listener keeps its certificates until a restart"
            ),
            (None, Some(_)) => tracing::warn!("[tls] added: restart to open the TLS listener"),
            (None, None) => {}
        }
    }

    /// The pool, for the admin view and tests.
    pub fn pool(&self) -> &Arc<pool::Pool> {
        &self.pool
    }

    /// Serves clients on `listeners` (a plain `TcpListener`, or the plain
    /// and the TLS one) and the admin endpoints on `admin`
    /// until `shutdown` resolves; then stops accepting, lets in-flight
    /// requests finish (up to `timeouts.drain`) and returns. Everything
    /// runs on the calling runtime.
    pub async fn serve(
        &self,
        listeners: impl Into<Listeners>,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let listeners = listeners.into().check(self.tls.as_ref());
        let tls = self.tls.clone();
        let serving = server::serve(listeners, Arc::clone(&self.pool), tls, shutdown);
        self.serve_admin_until(admin, serving).await;
    }

    /// As [`Balancer::serve`], with client connections served by `workers`
    /// threads, each running its own single-threaded runtime (see
    /// [`workers`]). The calling runtime keeps the acceptor, the health
    /// probes, the agent polls and the admin listener.
    ///
    /// # Errors
    ///
    /// When a worker thread cannot be started.
    pub async fn serve_workers(
        &self,
        workers: usize,
        listeners: impl Into<Listeners>,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        if workers <= 1 {
            self.serve(listeners, admin, shutdown).await;
            return Ok(());
        }
        let listeners = listeners.into().check(self.tls.as_ref());
        let tls = self.tls.clone();
        let serving = workers::serve(workers, listeners, Arc::clone(&self.pool), tls, shutdown);
        let mut result = Ok(());
        self.serve_admin_until(admin, async { result = serving.await })
            .await;
        result
    }

    /// Serves the admin endpoints until `until` resolves.
    async fn serve_admin_until(&self, admin: TcpListener, until: impl Future<Output = ()>) {
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(());
        let admin_task = tokio::spawn(admin::serve(admin, Arc::clone(&self.pool), async move {
            let mut rx = admin_stopped;
            let _ = rx.changed().await;
        }));
        until.await;
        let _ = stop_admin.send(());
        let _ = admin_task.await;
    }
}

/// Runs a balancer for `config` on the given listeners until `shutdown`
/// resolves (the whole program, minus signal handling and binding).
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    Balancer::start(config)
        .serve(listener, admin, shutdown)
        .await;
}
