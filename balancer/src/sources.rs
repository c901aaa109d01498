//! What the backend table is made of: the configuration (listed backends,
//! pools, routes), the addresses DNS discovery found, and the backends
//! that registered themselves. [`Sources::desired`] turns them into the
//! members each pool should have — a pure function, so the one place that
//! builds the table ([`crate::pool::Pool`]'s reconciliation) only has to
//! carry live state over to it.
//!
//! An address belongs to at most one pool, because the admin API names
//! backends by address alone: the configuration refuses a listed address
//! twice, and a discovered or registered address that another source
//! holds already is left out (listed first, then discovered, then
//! registered; registration refuses it up front).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{BackendConfig, Config, Strategy, DEFAULT_POOL};

/// Where a member of the table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Listed in `lb.toml`.
    Listed,
    /// Found by a pool's `discover` name.
    Discovered,
    /// Announced through `POST /backends` (an agent's `--register`).
    Registered,
}

impl Origin {
    /// Its name in `/status.json` and on the status page.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Listed => "config",
            Origin::Discovered => "dns",
            Origin::Registered => "registered",
        }
    }
}

/// A backend that registered itself, as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The pool it joined.
    pub pool: String,
    /// Where its agent answers.
    pub agent: SocketAddr,
    /// Its weight.
    pub weight: u32,
    /// When the last heartbeat arrived.
    pub seen: Instant,
}

/// Everything the table is built from. Changed only under the pool's lock,
/// and only through its one reconciliation.
#[derive(Debug)]
pub struct Sources {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Each discovering pool's last good answer, by pool name.
    pub discovered: HashMap<String, Vec<SocketAddr>>,
    /// The registered backends, by address.
    pub registered: BTreeMap<SocketAddr, Registration>,
}

/// One pool as it should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Its name.
    pub name: Arc<str>,
    /// Its strategy.
    pub strategy: Strategy,
    /// Its health path.
    pub health_path: Arc<str>,
    /// Its members, each with where it comes from.
    pub members: Vec<(BackendConfig, Origin)>,
}

impl Sources {
    /// Sources with only the configuration.
    pub fn new(config: Arc<Config>) -> Sources {
        Sources {
            config,
            discovered: HashMap::new(),
            registered: BTreeMap::new(),
        }
    }

    /// The index of the pool named `name` in [`Sources::desired`]'s order:
    /// `"default"` first, then the `[[pool]]`s in file order.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        if name == DEFAULT_POOL {
            return Some(0);
        }
        let at = self.config.pools.iter().position(|p| p.name == name)?;
        Some(at + 1)
    }

    /// Which source holds `addr` now, and in which pool; `None`: nobody.
    pub fn owner(&self, addr: SocketAddr) -> Option<(String, Origin)> {
        let c = &self.config;
        if c.backends.iter().any(|b| b.addr == addr) {
            return Some((DEFAULT_POOL.to_owned(), Origin::Listed));
        }
        for p in &c.pools {
            if p.backends.iter().any(|b| b.addr == addr) {
                return Some((p.name.clone(), Origin::Listed));
            }
        }
        for p in c.pools.iter().filter(|p| p.discover.is_some()) {
            if self
                .discovered
                .get(&p.name)
                .is_some_and(|a| a.contains(&addr))
            {
                return Some((p.name.clone(), Origin::Discovered));
            }
        }
        let r = self.registered.get(&addr)?;
        Some((r.pool.clone(), Origin::Registered))
    }

    /// Every pool with the members it should have now: `"default"` first,
    /// then the `[[pool]]`s in file order; in each, the listed backends in
    /// file order, then the discovered ones, then the registered ones (both
    /// by address).
    pub fn desired(&self) -> Vec<Desired> {
        let c = &self.config;
        let mut claimed: HashSet<SocketAddr> = c
            .backends
            .iter()
            .chain(c.pools.iter().flat_map(|p| &p.backends))
            .map(|b| b.addr)
            .collect();
        let listed = |list: &[BackendConfig]| -> Vec<(BackendConfig, Origin)> {
            list.iter().map(|b| (b.clone(), Origin::Listed)).collect()
        };
        let mut out = vec![Desired {
            name: DEFAULT_POOL.into(),
            strategy: c.balance.strategy,
            health_path: c.health.path.as_str().into(),
            members: listed(&c.backends),
        }];
        for p in &c.pools {
            let mut members = listed(&p.backends);
            // A pool whose `discover` a reload removed keeps no address of
            // it (its task is stopped by then).
            let found = self
                .discovered
                .get(&p.name)
                .filter(|_| p.discover.is_some());
            for &addr in found.into_iter().flatten() {
                if claimed.insert(addr) {
                    let agent = SocketAddr::new(addr.ip(), c.agent.port);
                    let cfg = BackendConfig {
                        addr,
                        agent,
                        weight: 1,
                    };
                    members.push((cfg, Origin::Discovered));
                }
            }
            out.push(Desired {
                name: p.name.as_str().into(),
                strategy: p.strategy,
                health_path: p.health_path.as_str().into(),
                members,
            });
        }
        for (&addr, r) in &self.registered {
            let Some(i) = self.pool_index(&r.pool) else {
                continue;
            };
            if claimed.insert(addr) {
                let cfg = BackendConfig {
                    addr,
                    agent: r.agent,
                    weight: r.weight,
                };
                out[i].members.push((cfg, Origin::Registered));
            }
        }
        out
    }

    /// Drops the registrations whose pool the configuration no longer has,
    /// logging each; returns whether any was dropped.
    pub fn drop_orphans(&mut self) -> bool {
        let before = self.registered.len();
        let config = Arc::clone(&self.config);
        self.registered.retain(|addr, r| {
            let kept = r.pool == DEFAULT_POOL || config.pools.iter().any(|p| p.name == r.pool);
            if !kept {
                tracing::warn!(backend = %addr, "registered backend dropped: its pool {:?} is no longer configured", r.pool);
            }
            kept
        });
        self.discovered.retain(|name, _| {
            config
                .pools
                .iter()
                .any(|p| &p.name == name && p.discover.is_some())
        });
        self.registered.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Discover, PoolConfig};
    use std::time::Duration;

    fn config() -> Config {
        let text = "listen = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2000\"]\n";
        let mut c = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        c.pools.push(PoolConfig {
            name: "api".into(),
            backends: vec![BackendConfig {
                addr: "127.0.0.1:3000".parse().unwrap(),
                agent: "127.0.0.1:9100".parse().unwrap(),
                weight: 2,
            }],
            discover: Some(Discover::Host {
                name: "api.test".into(),
                port: 3000,
            }),
            resolve_every: Duration::from_secs(5),
            strategy: Strategy::RoundRobin,
            health_path: "/ready".into(),
        });
        c
    }

    fn addrs(d: &Desired) -> Vec<(String, Origin)> {
        d.members
            .iter()
            .map(|(b, o)| (b.addr.to_string(), *o))
            .collect()
    }

    fn registration(pool: &str) -> Registration {
        Registration {
            pool: pool.into(),
            agent: "127.0.0.9:9100".parse().unwrap(),
            weight: 3,
            seen: Instant::now(),
        }
    }

    #[tokio::test]
    async fn every_source_lands_in_its_pool_in_order_and_an_address_in_one_place() {
        let mut s = Sources::new(Arc::new(config()));
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        s.discovered.insert(
            "api".into(),
            vec![
                a("127.0.0.1:3001"),
                a("127.0.0.1:2000"),
                a("127.0.0.1:3002"),
            ],
        );
        s.registered
            .insert(a("127.0.0.1:3002"), registration("default"));
        s.registered
            .insert(a("127.0.0.1:4000"), registration("api"));
        s.registered
            .insert(a("127.0.0.1:4001"), registration("gone"));
        let d = s.desired();
        assert_eq!(d.len(), 2);
        assert_eq!(&*d[0].name, "default");
        assert_eq!(addrs(&d[0]), [("127.0.0.1:2000".into(), Origin::Listed)]);
        assert_eq!(&*d[1].name, "api");
        assert_eq!(
            (d[1].strategy, &*d[1].health_path),
            (Strategy::RoundRobin, "/ready")
        );
        assert_eq!(
            addrs(&d[1]),
            [
                ("127.0.0.1:3000".into(), Origin::Listed),
                ("127.0.0.1:3001".into(), Origin::Discovered),
                // 127.0.0.1:2000 is listed in the default pool: left out.
                ("127.0.0.1:3002".into(), Origin::Discovered),
                ("127.0.0.1:4000".into(), Origin::Registered),
            ]
        );
        // The registration of a discovered address is shadowed, not moved.
        assert_eq!(
            s.owner(a("127.0.0.1:3002")),
            Some(("api".into(), Origin::Discovered))
        );
        assert_eq!(
            s.owner(a("127.0.0.1:2000")),
            Some(("default".into(), Origin::Listed))
        );
        assert_eq!(s.owner(a("127.0.0.1:9999")), None);
        // Discovered members get the configured agent port and weight 1;
        // registered ones what they announced.
        let (disc, _) = &d[1].members[1];
        assert_eq!((disc.agent, disc.weight), (a("127.0.0.1:9100"), 1));
        let (reg, _) = &d[1].members[3];
        assert_eq!((reg.agent, reg.weight), (a("127.0.0.9:9100"), 3));

        assert!(s.drop_orphans(), "the registration in pool \"gone\"");
        assert_eq!(s.registered.len(), 2);
        assert!(!s.drop_orphans());

        // A reload that takes `discover` away from the pool takes its
        // addresses away too; the registration of one of them now joins.
        let mut config = (*s.config).clone();
        config.pools[0].discover = None;
        s.config = Arc::new(config);
        s.drop_orphans();
        assert!(s.discovered.is_empty());
        assert_eq!(
            addrs(&s.desired()[1]),
            [
                ("127.0.0.1:3000".into(), Origin::Listed),
                ("127.0.0.1:4000".into(), Origin::Registered),
            ]
        );
        assert_eq!(
            addrs(&s.desired()[0]),
            [
                ("127.0.0.1:2000".into(), Origin::Listed),
                ("127.0.0.1:3002".into(), Origin::Registered),
            ]
        );
    }
}
