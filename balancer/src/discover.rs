//! DNS discovery: a pool's `discover` name resolved to backend addresses,
//! through `hickory-resolver`, and re-resolved every `resolve_every`
//! ([`spawn`], in [`watch`]).
//!
//! - `"name:port"` ([`Discover::Host`]): every A and AAAA address of the
//!   name, each with the port. What a Kubernetes headless Service or a
//!   cloud private zone answers.
//! - `"srv:_service._proto.name"` ([`Discover::Srv`]): every SRV target
//!   with its own port, resolved to its addresses (from the answer's
//!   additional section where the resolver hands them on, else by a lookup
//!   per target). What Consul's DNS interface answers. SRV priority and
//!   weight are not used: every target is a backend, and the pool's
//!   strategy and health checks decide between them.
//!
//! A lookup either finds addresses, finds that there are none
//! ([`DiscoverError::NotFound`]: NXDOMAIN or an empty answer), or fails
//! ([`DiscoverError::Failed`]: timeout, SERVFAIL, REFUSED, I/O); the watch
//! loop treats the two apart. Results are sorted, deduplicated and bounded
//! ([`MAX_ADDRESSES`], [`MAX_SRV_TARGETS`]), and one lookup takes at most
//! [`LOOKUP_TIMEOUT`] in all.
//!
//! Nothing is cached between lookups: a change in DNS is seen by the next
//! lookup, never hidden by a TTL longer than `resolve_every` (a pool
//! resolves its name once per period, so a cache would save nothing).

mod watch;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use tokio::task::JoinSet;

use crate::config::{Discover, Dns};

pub use watch::{spawn, Discovery, HOLD_NOT_FOUND, MIN_EVERY};

/// The most one lookup may take, every query, retry and SRV target
/// included; past it the lookup has failed (and the last good set stays).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The most one DNS query waits for its answer (resolv.conf's `timeout`,
/// capped); with [`QUERY_ATTEMPTS`] it fits inside [`LOOKUP_TIMEOUT`].
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Tries of a query that timed out or met an I/O error, after the first
/// (resolv.conf's `attempts`, capped). An answer, even SERVFAIL, is final.
const QUERY_ATTEMPTS: usize = 1;

/// The most addresses one lookup yields (the lowest, once sorted): a name
/// with more is a mistake or an attack, not a pool.
pub const MAX_ADDRESSES: usize = 256;

/// The most SRV targets one lookup follows.
pub const MAX_SRV_TARGETS: usize = 256;

/// SRV targets looked up at once when the answer did not carry their
/// addresses: fast with many targets, without a burst of hundreds of
/// queries at the name server.
const TARGETS_IN_FLIGHT: usize = 8;

/// The name server asked when `/etc/resolv.conf` cannot be read or lists
/// none: glibc's own fallback.
const FALLBACK_NAMESERVER: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 53);

/// Why a lookup found no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoverError {
    /// The name does not exist (NXDOMAIN) or has no addresses (an empty
    /// answer, or SRV targets without any). May be true (the service
    /// scaled to zero) or a hiccup of the name server: see
    /// [`HOLD_NOT_FOUND`].
    #[error("{target}: no such name, or no addresses")]
    NotFound {
        /// What was looked up, as `discover` spells it.
        target: String,
    },
    /// The lookup did not complete (timeout, SERVFAIL, REFUSED, I/O): it
    /// says nothing about the backends, so the last good set stays.
    #[error("{target}: lookup failed: {reason}")]
    Failed {
        /// What was looked up, as `discover` spells it.
        target: String,
        /// The resolver's reason, for the log.
        reason: String,
    },
}

impl DiscoverError {
    /// True for [`DiscoverError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, DiscoverError::NotFound { .. })
    }
}

/// `discover` as the configuration spells it: `"name:port"` or
/// `"srv:name"`, for the log and errors.
pub fn describe(target: &Discover) -> String {
    match target {
        Discover::Host { name, port } => format!("{name}:{port}"),
        Discover::Srv { name } => format!("srv:{name}"),
    }
}

/// Why one step of a lookup found nothing, before it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Miss {
    NotFound,
    Failed(String),
}

/// One lookup's addresses, bounded, and whether the bound cut some off.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    addrs: Vec<SocketAddr>,
    truncated: bool,
}

impl Resolved {
    /// Sorted, deduplicated, at most [`MAX_ADDRESSES`] (the lowest).
    fn bounded(mut addrs: Vec<SocketAddr>, truncated: bool) -> Resolved {
        addrs.sort_unstable();
        addrs.dedup();
        let truncated = truncated || addrs.len() > MAX_ADDRESSES;
        addrs.truncate(MAX_ADDRESSES);
        Resolved { addrs, truncated }
    }
}

/// A DNS resolver for discovery: the `[dns]` name servers, or the
/// system's. Shared by every pool's watch task (cheap to use from many).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("nameservers", &self.nameservers())
            .finish()
    }
}

impl Resolver {
    /// `dns.nameservers`, each over UDP with TCP for truncated answers; or,
    /// with none, the system's (`/etc/resolv.conf`, its search domains and
    /// `ndots` included: a Kubernetes pod's short names work). When that
    /// file cannot be read the log says so, once, and 127.0.0.1:53 is
    /// asked (as glibc does). `/etc/hosts` is not consulted: it would be
    /// read once and never again. Never panics.
    ///
    /// Use it from one runtime (the balancer's main one): hickory keeps
    /// its TCP connections' background tasks on the runtime that opened
    /// them.
    pub fn new(dns: &Dns) -> Resolver {
        let (config, mut opts) = if dns.nameservers.is_empty() {
            system()
        } else {
            (servers(&dns.nameservers), ResolverOpts::default())
        };
        tune(&mut opts);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = opts;
        Resolver {
            inner: builder.build(),
        }
    }

    /// The name servers asked (UDP and TCP listed apart), for the log.
    pub fn nameservers(&self) -> Vec<String> {
        let config = self.inner.config();
        config
            .name_servers()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// `target`'s addresses now, sorted and deduplicated (at most
    /// [`MAX_ADDRESSES`]; more are cut off and logged).
    ///
    /// # Errors
    ///
    /// [`DiscoverError::NotFound`] when DNS says there are none,
    /// [`DiscoverError::Failed`] when it could not say.
    pub async fn lookup(&self, target: &Discover) -> Result<Vec<SocketAddr>, DiscoverError> {
        let resolved = self.resolve(target).await?;
        if resolved.truncated {
            tracing::warn!(
                "DNS discovery of {}: more than {MAX_ADDRESSES} addresses or {MAX_SRV_TARGETS} \
                 SRV targets; the rest are ignored",
                describe(target)
            );
        }
        Ok(resolved.addrs)
    }

    /// As [`Resolver::lookup`], telling whether the bounds cut some off
    /// (the watch loop logs that once, not every period).
    async fn resolve(&self, target: &Discover) -> Result<Resolved, DiscoverError> {
        // Nothing cached may answer for the server (the TTLs are capped at
        // zero; this also drops what a CNAME chain cached past that cap).
        self.inner.clear_cache();
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.resolve_uncapped(target)).await;
        let found = found.unwrap_or_else(|_| {
            Err(Miss::Failed(format!(
                "no answer within {}s",
                LOOKUP_TIMEOUT.as_secs()
            )))
        });
        let target = describe(target);
        match found {
            Ok((addrs, truncated)) if !addrs.is_empty() => Ok(Resolved::bounded(addrs, truncated)),
            Ok(_) | Err(Miss::NotFound) => Err(DiscoverError::NotFound { target }),
            Err(Miss::Failed(reason)) => Err(DiscoverError::Failed { target, reason }),
        }
    }

    async fn resolve_uncapped(&self, target: &Discover) -> Result<(Vec<SocketAddr>, bool), Miss> {
        match target {
            Discover::Host { name, port } => {
                let ips = match name.parse::<IpAddr>() {
                    // An address written as the name: itself, no query.
                    Ok(ip) => vec![ip],
                    Err(_) => ips(&self.inner, parse_name(name)?).await?,
                };
                let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, *port));
                Ok((addrs.collect(), false))
            }
            Discover::Srv { name } => self.srv(parse_name(name)?).await,
        }
    }

    /// Every SRV target of `name` with its port, resolved to addresses.
    /// A target that does not exist is skipped (the others are still the
    /// service); a target whose lookup fails fails the whole lookup (a
    /// partial set would drop live backends).
    async fn srv(&self, name: Name) -> Result<(Vec<SocketAddr>, bool), Miss> {
        let answer = self
            .inner
            .lookup(name, RecordType::SRV)
            .await
            .map_err(|e| classify(&e))?;
        let mut targets: Vec<(Name, u16)> = answer
            .iter()
            .filter_map(RData::as_srv)
            // "." as the target: the service is decidedly not available.
            .filter(|srv| !srv.target().is_root())
            .map(|srv| (srv.target().clone(), srv.port()))
            .collect();
        targets.sort();
        targets.dedup();
        let truncated = targets.len() > MAX_SRV_TARGETS;
        targets.truncate(MAX_SRV_TARGETS);

        // The additional section, where the resolver passed it on.
        let glue = |target: &Name| -> Vec<IpAddr> {
            let records = answer.records().iter().filter(|r| r.name() == target);
            records.filter_map(|r| ip_of(r.data())).collect()
        };
        let mut with_ips = Vec::new();
        let mut missing = Vec::new();
        for (target, port) in targets {
            match glue(&target) {
                ips if ips.is_empty() => missing.push((target, port)),
                ips => with_ips.push((ips, port)),
            }
        }
        with_ips.extend(self.targets(missing).await?);
        let addrs = with_ips
            .into_iter()
            .flat_map(|(ips, port)| ips.into_iter().map(move |ip| SocketAddr::new(ip, port)));
        Ok((addrs.collect(), truncated))
    }

    /// Looks up SRV targets, [`TARGETS_IN_FLIGHT`] at a time.
    async fn targets(&self, targets: Vec<(Name, u16)>) -> Result<Vec<(Vec<IpAddr>, u16)>, Miss> {
        let mut pending = targets.into_iter();
        let mut running = JoinSet::new();
        let mut found = Vec::new();
        loop {
            while running.len() < TARGETS_IN_FLIGHT {
                let Some((target, port)) = pending.next() else {
                    break;
                };
                let resolver = self.inner.clone();
                running.spawn(async move {
                    let ips = ips(&resolver, target.clone()).await;
                    (target, port, ips)
                });
            }
            // Dropping `running` (on error, or the lookup's timeout) aborts
            // the lookups still running.
            match running.join_next().await {
                None => return Ok(found),
                Some(Ok((_, port, Ok(ips)))) => found.push((ips, port)),
                Some(Ok((target, _, Err(Miss::NotFound)))) => {
                    tracing::debug!("SRV target {target} has no addresses; skipped");
                }
                Some(Ok((target, _, Err(Miss::Failed(why))))) => {
                    return Err(Miss::Failed(format!("SRV target {target}: {why}")));
                }
                Some(Err(e)) => return Err(Miss::Failed(format!("SRV target lookup: {e}"))),
            }
        }
    }
}

/// The system's configuration, or the fallback (logged) when it cannot be
/// had.
fn system() -> (ResolverConfig, ResolverOpts) {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok((config, opts)) if !config.name_servers().is_empty() => (config, opts),
        Ok(_) => {
            tracing::warn!(
                "/etc/resolv.conf lists no name server; DNS discovery asks {FALLBACK_NAMESERVER}"
            );
            (servers(&[FALLBACK_NAMESERVER]), ResolverOpts::default())
        }
        Err(e) => {
            tracing::warn!(
                "cannot read /etc/resolv.conf ({e}); DNS discovery asks {FALLBACK_NAMESERVER}"
            );
            (servers(&[FALLBACK_NAMESERVER]), ResolverOpts::default())
        }
    }
}

/// Exactly `addrs`, no search domains: UDP first, TCP when an answer comes
/// back truncated (hickory does that by itself when both are listed).
fn servers(addrs: &[SocketAddr]) -> ResolverConfig {
    let mut config = ResolverConfig::new();
    for &addr in addrs {
        config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
        config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
    }
    config
}

/// What discovery needs whatever the configuration says: bounded queries,
/// no cache, no DNSSEC, no hosts file.
fn tune(opts: &mut ResolverOpts) {
    // resolv.conf may say `timeout:0`; a second is its own floor.
    opts.timeout = opts.timeout.clamp(Duration::from_secs(1), QUERY_TIMEOUT);
    opts.attempts = opts.attempts.min(QUERY_ATTEMPTS);
    opts.positive_min_ttl = None;
    opts.negative_min_ttl = None;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.validate = false;
    opts.use_hosts_file = ResolveHosts::Never;
}

/// `name` as DNS wants it; a name the configuration let through but DNS
/// cannot carry is a failure (logged as such), not an empty pool.
fn parse_name(name: &str) -> Result<Name, Miss> {
    Name::from_utf8(name).map_err(|e| Miss::Failed(format!("invalid name: {e}")))
}

/// Every A and AAAA address of `name`, asked at once.
async fn ips(resolver: &TokioResolver, name: Name) -> Result<Vec<IpAddr>, Miss> {
    let (v4, v6) = tokio::join!(
        addresses(resolver, name.clone(), RecordType::A),
        addresses(resolver, name, RecordType::AAAA),
    );
    merge(v4, v6)
}

/// The addresses of one type (`A` or `AAAA`); an empty answer is
/// [`Miss::NotFound`].
async fn addresses(
    resolver: &TokioResolver,
    name: Name,
    kind: RecordType,
) -> Result<Vec<IpAddr>, Miss> {
    let answer = resolver
        .lookup(name, kind)
        .await
        .map_err(|e| classify(&e))?;
    let ips: Vec<IpAddr> = answer.iter().filter_map(ip_of).collect();
    if ips.is_empty() {
        Err(Miss::NotFound)
    } else {
        Ok(ips)
    }
}

/// The A and AAAA answers together: either failing fails both (the other
/// alone would drop live backends); both empty is not found; else the
/// union.
fn merge(
    v4: Result<Vec<IpAddr>, Miss>,
    v6: Result<Vec<IpAddr>, Miss>,
) -> Result<Vec<IpAddr>, Miss> {
    match (v4, v6) {
        (Err(Miss::Failed(why)), _) | (_, Err(Miss::Failed(why))) => Err(Miss::Failed(why)),
        (Err(Miss::NotFound), Err(Miss::NotFound)) => Err(Miss::NotFound),
        (v4, v6) => Ok(v4
            .unwrap_or_default()
            .into_iter()
            .chain(v6.unwrap_or_default())
            .collect()),
    }
}

fn ip_of(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// NXDOMAIN and an empty NOERROR answer say the name has no addresses;
/// every other error (SERVFAIL, REFUSED, timeouts, I/O) says nothing.
fn classify(error: &ResolveError) -> Miss {
    let answered = error.proto().map(|p| p.kind());
    match answered {
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }) => Miss::NotFound,
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            let code = match response_code {
                ResponseCode::ServFail => "SERVFAIL".to_owned(),
                ResponseCode::Refused => "REFUSED".to_owned(),
                other => other.to_string(),
            };
            Miss::Failed(format!("the name server answered {code}"))
        }
        _ => Miss::Failed(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn merge_is_the_union_unless_either_failed() {
        let nf = || Err(Miss::NotFound);
        let failed = || Err(Miss::Failed("SERVFAIL".into()));
        let v4 = || Ok(vec![ip("10.0.0.1")]);
        let v6 = || Ok(vec![ip("::1")]);
        assert_eq!(merge(v4(), v6()), Ok(vec![ip("10.0.0.1"), ip("::1")]));
        assert_eq!(merge(v4(), nf()), Ok(vec![ip("10.0.0.1")]));
        assert_eq!(merge(nf(), v6()), Ok(vec![ip("::1")]));
        assert_eq!(merge(nf(), nf()), Err(Miss::NotFound));
        assert!(matches!(merge(v4(), failed()), Err(Miss::Failed(_))));
        assert!(matches!(merge(failed(), v6()), Err(Miss::Failed(_))));
        assert!(matches!(merge(failed(), nf()), Err(Miss::Failed(_))));
    }

    #[test]
    fn resolved_is_sorted_deduplicated_and_bounded() {
        let addr = |i: usize| SocketAddr::new(ip("10.0.0.1"), 1000 + i as u16);
        let r = Resolved::bounded(vec![addr(2), addr(1), addr(2)], false);
        assert_eq!(r.addrs, vec![addr(1), addr(2)]);
        assert!(!r.truncated);

        let many: Vec<_> = (0..MAX_ADDRESSES + 10).rev().map(addr).collect();
        let r = Resolved::bounded(many, false);
        assert_eq!(r.addrs.len(), MAX_ADDRESSES);
        assert_eq!(r.addrs[0], addr(0), "the lowest are kept");
        assert!(r.truncated);

        assert!(Resolved::bounded(vec![addr(1)], true).truncated);
    }

    #[test]
    fn describe_spells_discover_as_the_file_does() {
        let host = Discover::Host {
            name: "api.service.consul".into(),
            port: 8000,
        };
        let srv = Discover::Srv {
            name: "_http._tcp.api.service.consul".into(),
        };
        assert_eq!(describe(&host), "api.service.consul:8000");
        assert_eq!(describe(&srv), "srv:_http._tcp.api.service.consul");
    }

    #[tokio::test]
    async fn a_resolver_is_built_from_the_system_or_the_given_servers() {
        let given = Resolver::new(&Dns {
            nameservers: vec!["127.0.0.1:5353".parse().unwrap()],
        });
        assert_eq!(
            given.nameservers(),
            vec!["udp:127.0.0.1:5353", "tcp:127.0.0.1:5353"]
        );
        // Whatever this machine's /etc/resolv.conf says (or lacks), some
        // server is asked and nothing panics.
        assert!(!Resolver::new(&Dns::default()).nameservers().is_empty());
    }
}
