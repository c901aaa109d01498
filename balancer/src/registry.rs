//! Backends that announce themselves (`POST /backends`, which an agent's
//! `--register` sends) instead of being listed in `lb.toml`.
//!
//! A registration joins a pool through the table's one reconciliation
//! ([`Pool::update`]): health probes and agent polls start, slow start
//! applies, and it survives SIGHUP (unless its pool goes away). Repeating
//! the announcement is the heartbeat; a registration that misses
//! [`MISSED`] heartbeats in a row is dropped, as Consul drops a service
//! whose TTL check lapsed. Withdrawing it (`DELETE /backends/{addr}`, sent
//! by the agent on SIGTERM) drains it first: no new requests, those in
//! flight finish (up to `[timeouts] drain`), then it leaves the table.
//!
//! Registrations are bounded ([`MAX_REGISTERED`]) and only token holders
//! may make them (the admin API checks the token before this module sees
//! anything).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::DEFAULT_POOL;
use crate::pool::Pool;
use crate::rotation::AdminState;
use crate::sources::{Origin, Registration};

/// How many heartbeats in a row a registration may miss before it is
/// dropped.
pub const MISSED: u32 = 3;

/// The most registrations the balancer holds: a token holder cannot grow
/// the table without bound.
pub const MAX_REGISTERED: usize = 4096;

/// The weights `lb.toml` accepts, for registrations too.
pub const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=1000;

/// The shortest and longest pause between two looks for expired
/// registrations (a look per heartbeat within these bounds).
const EXPIRY_CHECK: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How often a withdrawn backend is looked at while it drains.
const DRAIN_CHECK: Duration = Duration::from_millis(20);

/// One announcement, as `POST /backends` carries it (already parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Where requests go.
    pub addr: SocketAddr,
    /// Where its agent answers; `None`: the backend's IP with `[agent]
    /// port`, as for listed backends.
    pub agent: Option<SocketAddr>,
    /// Its weight (default 1).
    pub weight: Option<u32>,
    /// The pool it joins (default `"default"`).
    pub pool: Option<String>,
}

/// What an accepted announcement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// A new registration: the backend joins the table.
    Created,
    /// A heartbeat of a known registration (changes to its agent, weight
    /// or pool applied).
    Refreshed,
}

/// Why an announcement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The pool it names is not configured.
    #[error("no pool {0:?}; the pools are \"default\" and the [[pool]] names of lb.toml")]
    UnknownPool(String),
    /// Another source holds the address.
    #[error("{addr} is {} in pool {pool:?}; an address belongs to one pool", match origin { Origin::Listed => "listed in lb.toml", Origin::Discovered => "discovered by DNS", Origin::Registered => "registered" })]
    Owned {
        /// The address.
        addr: SocketAddr,
        /// Its pool.
        pool: String,
        /// Who holds it.
        origin: Origin,
    },
    /// [`MAX_REGISTERED`] registrations are held already.
    #[error("too many registered backends (at most {MAX_REGISTERED})")]
    Full,
    /// Not a usable address or weight.
    #[error("{0}")]
    Invalid(String),
}

/// How a withdrawal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Withdrawn {
    /// Whether nothing was in flight any more when it left the table
    /// (false: `[timeouts] drain` ran out first).
    pub drained: bool,
    /// How long the drain took.
    pub waited: Duration,
}

/// Why a withdrawal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotWithdrawn {
    /// No backend registered at that address.
    #[error(
        "no registered backend {0}; registered backends are marked \"registered\" in /status.json"
    )]
    Unknown(SocketAddr),
    /// The address is listed or discovered, not registered.
    #[error("{0} is not registered but {1}; drain it with POST /backends/{0}/drain")]
    NotRegistered(SocketAddr, &'static str),
}

impl Pool {
    /// Registers `a`, or refreshes its registration (a heartbeat).
    pub fn register(self: &Arc<Self>, a: &Announcement) -> Result<Joined, Refused> {
        usable(a.addr, "addr")?;
        if let Some(agent) = a.agent {
            usable(agent, "agent")?;
        }
        let weight = a.weight.unwrap_or(1);
        if !WEIGHTS.contains(&weight) {
            return Err(Refused::Invalid(format!(
                "bad weight {weight}: a whole number in {}..{}",
                WEIGHTS.start(),
                WEIGHTS.end()
            )));
        }
        let pool = a.pool.clone().unwrap_or_else(|| DEFAULT_POOL.to_owned());
        let mut outcome = Err(Refused::Full);
        self.update(|s| {
            if s.pool_index(&pool).is_none() {
                outcome = Err(Refused::UnknownPool(pool));
                return false;
            }
            match s.owner(a.addr) {
                Some((_, Origin::Registered)) | None => {}
                Some((owner, origin)) => {
                    outcome = Err(Refused::Owned {
                        addr: a.addr,
                        pool: owner,
                        origin,
                    });
                    return false;
                }
            }
            let agent = a
                .agent
                .unwrap_or_else(|| SocketAddr::new(a.addr.ip(), s.config.agent.port));
            let now = Instant::now();
            let new = Registration {
                pool,
                agent,
                weight,
                seen: now,
            };
            let full = s.registered.len() >= MAX_REGISTERED;
            match s.registered.get_mut(&a.addr) {
                Some(old) => {
                    let changed = Registration { seen: old.seen, ..new.clone() } != *old;
                    *old = new;
                    outcome = Ok(Joined::Refreshed);
                    changed
                }
                None if full => false,
                None => {
                    tracing::info!(backend = %a.addr, pool = %new.pool, agent = %new.agent, "backend registered");
                    s.registered.insert(a.addr, new);
                    outcome = Ok(Joined::Created);
                    true
                }
            }
        });
        outcome
    }

    /// Drops the registration of `addr` at once (no drain); whether there
    /// was one.
    pub fn unregister(self: &Arc<Self>, addr: SocketAddr) -> bool {
        self.update(|s| s.registered.remove(&addr).is_some())
    }

    /// Withdraws the registered backend at `addr`: it leaves rotation at
    /// once, its requests in flight finish (up to `[timeouts] drain`),
    /// then it leaves the table.
    pub async fn withdraw(self: &Arc<Self>, addr: SocketAddr) -> Result<Withdrawn, NotWithdrawn> {
        match self.with_sources(|s| s.owner(addr)) {
            Some((_, Origin::Registered)) => {}
            Some((_, origin)) => return Err(NotWithdrawn::NotRegistered(addr, origin.name())),
            None => return Err(NotWithdrawn::Unknown(addr)),
        }
        let start = Instant::now();
        let mut drained = true;
        if let Some(backend) = self.find(addr) {
            backend.rotation.set(AdminState::Draining);
            tracing::info!(backend = %addr, "registered backend withdrawn: draining");
            let until = crate::deadline::after(start, self.snapshot().config.timeouts.drain);
            while backend.stats().in_flight > 0 {
                if Instant::now() >= until {
                    drained = false;
                    break;
                }
                tokio::time::sleep(DRAIN_CHECK).await;
            }
        }
        self.unregister(addr);
        let waited = start.elapsed();
        tracing::info!(
            backend = %addr,
            "registered backend left the table after {} ({})",
            humantime::format_duration(Duration::from_millis(waited.as_millis() as u64)),
            if drained { "drained" } else { "drain timeout: requests still in flight" }
        );
        Ok(Withdrawn { drained, waited })
    }

    /// How often registered backends must announce themselves.
    pub fn heartbeat(&self) -> Duration {
        self.snapshot().config.admin.heartbeat
    }
}

/// An address a backend can be reached at: not unspecified, not port 0.
fn usable(addr: SocketAddr, key: &str) -> Result<(), Refused> {
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(Refused::Invalid(format!(
            "bad {key} {addr}: an address the balancer can reach, not {} or port 0",
            if addr.is_ipv4() { "0.0.0.0" } else { "::" }
        )));
    }
    Ok(())
}

/// Starts the task that drops registrations after [`MISSED`] heartbeats;
/// it ends with the pool.
pub(crate) fn spawn_expiry(pool: &Arc<Pool>) {
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        loop {
            let Some(every) = weak.upgrade().map(|p| p.heartbeat()) else {
                return;
            };
            // Looked at again at least every second: a reload that shortens
            // the heartbeat applies within a second, not after the old one.
            tokio::time::sleep(every.clamp(EXPIRY_CHECK.0, EXPIRY_CHECK.1)).await;
            let Some(pool) = weak.upgrade() else {
                return;
            };
            let allowed = crate::deadline::scaled(pool.heartbeat(), f64::from(MISSED));
            let now = Instant::now();
            pool.update(|s| {
                let before = s.registered.len();
                s.registered.retain(|addr, r| {
                    let silent = now.saturating_duration_since(r.seen);
                    let keep = silent <= allowed;
                    if !keep {
                        tracing::warn!(
                            backend = %addr,
                            pool = %r.pool,
                            "registered backend dropped: no heartbeat for {} ({MISSED} missed)",
                            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64))
                        );
                    }
                    keep
                });
                s.registered.len() != before
            });
        }
    });
}
