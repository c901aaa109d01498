//! The watch task of one pool's `discover` name: resolve now, then every
//! `resolve_every`; hand a changed set to the pool; ride out failures.
//!
//! The rules, in [`Tracker::observe`] (pure, table-tested):
//!
//! - The first set found is always applied; after that only a set that
//!   differs from the last one applied.
//! - A failed lookup (timeout, SERVFAIL, REFUSED, I/O) keeps the last
//!   good set: DNS being down says nothing about the backends, and a pool
//!   emptied by a name server's hiccup would turn every request into a
//!   `503`. Logged once when failures start (warn) and once when lookups
//!   work again (info), not every period.
//! - "No such name" or an empty answer is applied (as an empty set) only
//!   when [`HOLD_NOT_FOUND`] lookups in a row say so, as HAProxy's
//!   `hold nx`: a service really scaled to zero stays empty from the third
//!   period on, while a one-off NXDOMAIN (a name server restarting with an
//!   empty zone, a Consul agent between leaders, a Kubernetes endpoint
//!   update caught half-way) does not empty a pool. A failure in between
//!   starts the count again.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{describe, DiscoverError, Resolved, Resolver, MAX_ADDRESSES, MAX_SRV_TARGETS};
use crate::config::Discover;

/// Lookups in a row that must find nothing before a pool's discovered set
/// is emptied.
pub const HOLD_NOT_FOUND: u32 = 3;

/// The shortest period between lookups, whatever `resolve_every` says
/// (a zero period would be a busy loop).
pub const MIN_EVERY: Duration = Duration::from_millis(100);

/// A running watch task; dropping it stops the task (at once, a lookup in
/// flight included).
///
/// Whoever owns the pool owns this handle: when the pool goes away, so
/// does the task, even if its name never changes again (`apply` is only
/// called on a change, so its `false` alone could leave a task resolving
/// for a pool long gone).
#[derive(Debug)]
#[must_use = "dropping the handle stops the discovery task"]
pub struct Discovery {
    task: JoinHandle<()>,
}

impl Discovery {
    /// True once the task ended (`apply` returned `false`).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the watch task of `pool`'s `target`: a lookup at once, then one
/// every `every` (at least [`MIN_EVERY`]; a slow lookup delays the next
/// rather than queueing them). `apply` gets each new set of addresses
/// (sorted, deduplicated; see the module doc for when) and returns `false`
/// when the pool is gone, which ends the task; so does dropping the
/// returned [`Discovery`]. Must be called inside a tokio runtime.
pub fn spawn(
    resolver: Arc<Resolver>,
    pool: String,
    target: Discover,
    every: Duration,
    apply: impl FnMut(Vec<SocketAddr>) -> bool + Send + 'static,
) -> Discovery {
    let label = Label {
        pool,
        target: describe(&target),
    };
    let target = Arc::new(target);
    let lookup = move || {
        let resolver = Arc::clone(&resolver);
        let target = Arc::clone(&target);
        async move { resolver.resolve(&target).await }
    };
    Discovery {
        task: tokio::spawn(watch(lookup, every, apply, label)),
    }
}

/// Which pool and name the log lines are about.
struct Label {
    pool: String,
    target: String,
}

/// The loop, over any lookup (the tests script one).
async fn watch<L, F>(
    mut lookup: L,
    every: Duration,
    mut apply: impl FnMut(Vec<SocketAddr>) -> bool,
    label: Label,
) where
    L: FnMut() -> F,
    F: Future<Output = Result<Resolved, DiscoverError>>,
{
    let mut ticks = tokio::time::interval(every.max(MIN_EVERY));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracker = Tracker::default();
    let mut truncated = false;
    loop {
        ticks.tick().await;
        let result = lookup().await;
        if let Ok(resolved) = &result {
            if resolved.truncated && !truncated {
                tracing::warn!(
                    pool = %label.pool,
                    "DNS discovery of {}: more than {MAX_ADDRESSES} addresses or \
                     {MAX_SRV_TARGETS} SRV targets; the rest are ignored",
                    label.target
                );
            }
            truncated = resolved.truncated;
        }
        let step = tracker.observe(result.map(|r| r.addrs));
        if let Some(event) = &step.log {
            log(&label, event, tracker.kept());
        }
        if let Some(addrs) = step.apply {
            if !apply(addrs) {
                tracing::debug!(pool = %label.pool, "pool gone; DNS discovery of {} stops", label.target);
                return;
            }
        }
    }
}

fn log(label: &Label, event: &Event, kept: usize) {
    let (pool, target) = (&label.pool, &label.target);
    match event {
        Event::Failing(e) => tracing::warn!(
            %pool,
            "DNS discovery failing ({e}); keeping the {kept} address(es) found last until it works again"
        ),
        Event::Missing => tracing::warn!(
            %pool,
            "DNS discovery: {target}: no such name, or no addresses; keeping the {kept} address(es) found last unless \
             {HOLD_NOT_FOUND} lookups in a row agree"
        ),
        Event::Emptied => tracing::warn!(
            %pool,
            "DNS discovery: {target} had no addresses {HOLD_NOT_FOUND} times in a row; \
             its addresses are removed from the pool"
        ),
        Event::Recovered => tracing::info!(
            %pool,
            "DNS discovery of {target} works again: {kept} address(es)"
        ),
    }
}

/// What the loop does after one lookup.
#[derive(Debug, Default, PartialEq, Eq)]
struct Step {
    /// A set to hand to the pool.
    apply: Option<Vec<SocketAddr>>,
    /// A change worth a log line.
    log: Option<Event>,
}

/// The changes the log reports, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// Lookups started failing (or failed from the start).
    Failing(DiscoverError),
    /// A lookup found nothing (no such name, or no addresses); not
    /// applied yet.
    Missing,
    /// [`HOLD_NOT_FOUND`] lookups in a row found nothing: the empty set was
    /// applied.
    Emptied,
    /// A lookup found addresses again after failing or finding nothing.
    Recovered,
}

/// What kind of trouble the last lookup was in, to log changes only.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    #[default]
    None,
    Failing,
    NotFound,
}

/// The state between lookups: the rules of the module doc.
#[derive(Debug, Default)]
struct Tracker {
    /// The set applied last (`None`: nothing yet).
    applied: Option<Vec<SocketAddr>>,
    /// Lookups in a row that found nothing.
    not_found: u32,
    trouble: Trouble,
}

impl Tracker {
    /// How many addresses the pool holds from discovery, for the log.
    fn kept(&self) -> usize {
        self.applied.as_ref().map_or(0, Vec::len)
    }

    fn observe(&mut self, result: Result<Vec<SocketAddr>, DiscoverError>) -> Step {
        match result {
            Ok(addrs) if !addrs.is_empty() => self.found(addrs),
            Ok(_) => self.not_found(),
            Err(e) if e.is_not_found() => self.not_found(),
            Err(e) => self.failed(e),
        }
    }

    fn found(&mut self, addrs: Vec<SocketAddr>) -> Step {
        self.not_found = 0;
        let log = (self.trouble != Trouble::None).then_some(Event::Recovered);
        self.trouble = Trouble::None;
        Step {
            apply: self.change_to(addrs),
            log,
        }
    }

    fn not_found(&mut self) -> Step {
        self.not_found = self.not_found.saturating_add(1);
        let first = self.trouble != Trouble::NotFound;
        self.trouble = Trouble::NotFound;
        if self.not_found >= HOLD_NOT_FOUND {
            let apply = self.change_to(Vec::new());
            let log = apply.is_some().then_some(Event::Emptied);
            return Step { apply, log };
        }
        Step {
            apply: None,
            log: first.then_some(Event::Missing),
        }
    }

    fn failed(&mut self, error: DiscoverError) -> Step {
        self.not_found = 0;
        let first = self.trouble != Trouble::Failing;
        self.trouble = Trouble::Failing;
        Step {
            apply: None,
            log: first.then_some(Event::Failing(error)),
        }
    }

    /// `Some(addrs)` when they differ from the set applied last.
    fn change_to(&mut self, addrs: Vec<SocketAddr>) -> Option<Vec<SocketAddr>> {
        if self.applied.as_ref() == Some(&addrs) {
            return None;
        }
        self.applied = Some(addrs.clone());
        Some(addrs)
    }
}

#[cfg(test)]
mod tests;
