//! Starts and stops the DNS discovery of the pools that have a `discover`
//! name ([`crate::discover`] resolves and watches), and hands what it
//! finds to an [`Apply`] step the table gives it: [`crate::pool`]'s, which
//! goes through the table's one reconciliation, as SIGHUP and
//! registrations do.
//!
//! One task per discovering pool, keyed by the pool's name, its target and
//! its period: a reload that keeps all three keeps the task (and its last
//! good answer); one that changes any of them replaces it; one that
//! removes the pool (or its `discover`) drops it, and with it the task.
//! The resolver is built from `[dns]` and rebuilt when that changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Discover, Dns};
use crate::discover::{self, Discovery, Resolver};
use crate::sources::Sources;

/// What a discovery task does with a new set of addresses for the pool
/// named by the first argument; `false` (the task stops) once the table or
/// that pool is gone.
pub type Apply = Arc<dyn Fn(&str, Vec<SocketAddr>) -> bool + Send + Sync>;

/// The running discovery tasks of a table.
#[derive(Debug, Default)]
pub struct Tasks {
    /// The resolver and the `[dns]` it was built from.
    resolver: Option<(Dns, Arc<Resolver>)>,
    /// By pool name: what the task resolves, how often, and its handle
    /// (dropping it stops the task).
    running: HashMap<String, (Discover, Duration, Discovery)>,
}

impl Tasks {
    /// Makes the running tasks match `sources`' configuration: starts the
    /// missing ones, replaces the changed ones, drops the others. Called
    /// by the reconciliation, with the table's lock held; new tasks hand
    /// their answers to `apply`.
    pub(crate) fn sync(&mut self, apply: &Apply, sources: &Sources) {
        let config = &sources.config;
        let wanted: Vec<_> = config
            .pools
            .iter()
            .filter_map(|p| Some((&p.name, p.discover.as_ref()?, p.resolve_every)))
            .collect();
        self.running.retain(|name, (target, every, task)| {
            !task.is_finished()
                && wanted
                    .iter()
                    .any(|(n, t, e)| *n == name && *t == target && e == every)
        });
        if wanted.is_empty() {
            return;
        }
        let resolver = match &self.resolver {
            Some((dns, r)) if *dns == config.dns => Arc::clone(r),
            _ => {
                let r = Arc::new(Resolver::new(&config.dns));
                self.resolver = Some((config.dns.clone(), Arc::clone(&r)));
                // A new resolver: every task starts again with it.
                self.running.clear();
                r
            }
        };
        for (name, target, every) in wanted {
            if self.running.contains_key(name) {
                continue;
            }
            let (apply, pool) = (Arc::clone(apply), name.clone());
            let apply = move |addrs| apply(&pool, addrs);
            let task = discover::spawn(
                Arc::clone(&resolver),
                name.clone(),
                target.clone(),
                every,
                apply,
            );
            self.running
                .insert(name.clone(), (target.clone(), every, task));
        }
    }
}

/// `addrs`, comma-separated, cut after 8 (for the log).
pub fn list(addrs: &[SocketAddr]) -> String {
    let mut s: Vec<String> = addrs.iter().take(8).map(ToString::to_string).collect();
    if addrs.len() > 8 {
        s.push(format!("and {} more", addrs.len() - 8));
    }
    s.join(", ")
}
