//! `[[pool]]`, `[[route]]` and `[dns]`: named pools of backends (listed,
//! discovered through DNS, or registered at run time), the routes that send
//! requests to them, and the name servers discovery asks.
//!
//! The top-level `backends` form the pool named `"default"`, which gets
//! every request no route matches; it is not listed in [`Config::pools`](super::Config::pools).
//!
//! An address may be in one pool only, the default one included: the admin
//! API and the status page name a backend by its address.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawBackend, RawDns, RawPool, RawRoute};
use super::{addr, duration, err, health_path, int_in, strategy, BackendConfig, Check, Strategy};

/// The name of the pool the top-level `backends` form.
pub const DEFAULT_POOL: &str = "default";

/// One `[[pool]]`, validated: its own backends and, where given, its own
/// strategy and health path (the `[balance]` and `[health]` ones
/// otherwise, already filled in here).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Unique, never `"default"`; what routes, registrations and the admin
    /// API name it by.
    pub name: String,
    /// Listed backends, in file order (may be empty when `discover` is set).
    pub backends: Vec<BackendConfig>,
    /// A DNS name re-resolved every `resolve_every`; the addresses it yields
    /// join the listed ones.
    pub discover: Option<Discover>,
    /// How often `discover` is resolved again (default 5 s).
    pub resolve_every: Duration,
    /// The pool's selection policy.
    pub strategy: Strategy,
    /// The path its health probes ask for.
    pub health_path: String,
}

/// What a pool's `discover` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discover {
    /// `"name:port"`: every A and AAAA address of `name`, on `port`.
    Host {
        /// The DNS name, without a trailing dot.
        name: String,
        /// The port every address gets.
        port: u16,
    },
    /// `"srv:_service._proto.name"`: every SRV target of `name`, with its
    /// port, resolved to its addresses.
    Srv {
        /// The SRV owner name, e.g. `_http._tcp.api.service.consul`.
        name: String,
    },
}

/// One `[[route]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Which hosts it matches (`None`: any).
    pub host: Option<HostMatch>,
    /// Which paths it matches, by prefix (`None`: any).
    pub path_prefix: Option<String>,
    /// The pool it sends to: `"default"` or a `[[pool]]`'s name.
    pub pool: String,
    /// Its line in the file, for the log and `--check`.
    pub line: usize,
}

/// A route's `host`, lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// `"api.example.com"`: that host only.
    Exact(String),
    /// `"*.example.com"`: any host ending in `.example.com` (any depth, as
    /// nginx's and Envoy's wildcards), never `example.com` itself. Holds
    /// the suffix with its dot: `".example.com"`.
    Suffix(String),
}

/// `[dns]`: where discovery asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Name servers (`IP:port`, UDP then TCP); empty: the system's
    /// (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

impl fmt::Display for Discover {
    /// As written in `lb.toml` (lowercased, no trailing dot).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discover::Host { name, port } => write!(f, "{name}:{port}"),
            Discover::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

impl fmt::Display for HostMatch {
    /// As written in `lb.toml` (lowercased; `*.example.com` for a suffix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Validation.

/// The raw sections validated here.
pub(super) struct Raw {
    /// The top-level `backends`: the default pool.
    pub(super) backends: Spanned<Vec<Spanned<RawBackend>>>,
    pub(super) pools: Vec<Spanned<RawPool>>,
    pub(super) routes: Vec<Spanned<RawRoute>>,
    pub(super) dns: RawDns,
}

/// What a pool takes from the rest of the file when it does not say.
pub(super) struct Defaults<'a> {
    /// `[agent] port`, for backends that do not name their agent.
    pub(super) agent_port: u16,
    /// `[balance] strategy`.
    pub(super) strategy: Strategy,
    /// `[health] path`.
    pub(super) health_path: &'a str,
}

/// The validated sections.
pub(super) struct Pools {
    pub(super) backends: Vec<BackendConfig>,
    pub(super) pools: Vec<PoolConfig>,
    pub(super) routes: Vec<RouteConfig>,
    pub(super) dns: Dns,
}

/// The top-level `backends`, `[[pool]]`, `[[route]]` and `[dns]`; `text`
/// is the file, for the lines errors and routes quote.
pub(super) fn pools(raw: Raw, defaults: &Defaults<'_>, text: &str) -> Check<Pools> {
    let lines = Lines::new(text);
    let mut seen = Seen::default();
    let list_span = raw.backends.span();
    let entries = raw.backends.into_inner();
    if entries.is_empty() {
        return err(
            list_span,
            "backends: the list is empty; name at least one backend as \"IP:port\"".into(),
        );
    }
    let backends = backend_list(entries, "backends", defaults.agent_port, &mut seen, &lines)?;
    let mut pools: Vec<PoolConfig> = Vec::with_capacity(raw.pools.len());
    let mut names = HashMap::new();
    for p in raw.pools {
        pools.push(pool(p, defaults, &mut seen, &mut names, &lines)?);
    }
    let routes = super::routes::routes(raw.routes, &pools, &lines)?;
    let dns = dns(&raw.dns)?;
    Ok(Pools {
        backends,
        pools,
        routes,
        dns,
    })
}

/// Line numbers of byte offsets, found by binary search: routes and
/// duplicate errors quote lines, and a long file may have many of them.
pub(super) struct Lines {
    /// The byte offset at which each line starts.
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { starts }
    }

    /// The 1-based line of byte `offset`.
    pub(super) fn of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

/// Where each address was listed first, so a second listing anywhere in
/// the file can name both places.
#[derive(Default)]
struct Seen {
    /// Address → (the key that listed it, the byte offset there).
    first: HashMap<SocketAddr, (String, usize)>,
}

impl Seen {
    fn claim(&mut self, a: SocketAddr, key: &str, span: Range<usize>, lines: &Lines) -> Check<()> {
        match self.first.entry(a) {
            Entry::Vacant(v) => {
                v.insert((key.to_owned(), span.start));
                Ok(())
            }
            Entry::Occupied(o) => {
                let (first, at) = o.get();
                err(
                    span,
                    format!(
                        "{key}: {a} is listed twice, also as {first} at line {}; \
                         an address may be in one pool only (the admin API names backends by address)",
                        lines.of(*at)
                    ),
                )
            }
        }
    }
}

/// A list of backends, the top-level one or a pool's (`key` names it):
/// each `"IP:port"` or `{ addr, agent, weight }`.
fn backend_list(
    entries: Vec<Spanned<RawBackend>>,
    key: &str,
    agent_port: u16,
    seen: &mut Seen,
    lines: &Lines,
) -> Check<Vec<BackendConfig>> {
    let mut backends = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let entry_span = entry.span();
        let b = entry.into_inner();
        let key = format!("{key}[{i}]");
        // A plain-string entry has an empty span: point at the entry itself.
        let addr_spanned = if b.addr.span().is_empty() {
            Spanned::new(entry_span.clone(), b.addr.into_inner())
        } else {
            b.addr
        };
        let a = addr(&key, &addr_spanned)?;
        seen.claim(a, &key, entry_span, lines)?;
        let agent_addr = match &b.agent {
            Some(s) => addr(&format!("{key} agent"), s)?,
            None => SocketAddr::new(a.ip(), agent_port),
        };
        let weight = int_in(&b.weight, &format!("{key} weight"), 1, 1..=1000)? as u32;
        backends.push(BackendConfig {
            addr: a,
            agent: agent_addr,
            weight,
        });
    }
    Ok(backends)
}

/// One `[[pool]]`; `names` maps the names taken so far to their offsets.
fn pool(
    raw: Spanned<RawPool>,
    defaults: &Defaults<'_>,
    seen: &mut Seen,
    names: &mut HashMap<String, usize>,
    lines: &Lines,
) -> Check<PoolConfig> {
    let span = raw.span();
    let p = raw.into_inner();
    let name = pool_name(p.name.as_ref(), span.clone(), names, lines)?;
    let key = format!("[[pool]] {name:?}");
    let (backends, list_span) = match p.backends {
        None => (Vec::new(), span),
        Some(list) => {
            let list_span = list.span();
            let key = format!("{key} backends");
            let list = backend_list(list.into_inner(), &key, defaults.agent_port, seen, lines)?;
            (list, list_span)
        }
    };
    let discover = match &p.discover {
        None => None,
        Some(d) => Some(discover(d, &key)?),
    };
    if backends.is_empty() && discover.is_none() {
        return err(
            list_span,
            format!(
                "{key}: empty pool; give it backends = [\"IP:port\", ...] and/or \
                 discover = \"name:port\" (or \"srv:_service._proto.name\")"
            ),
        );
    }
    if let (Some(every), None) = (&p.resolve_every, &discover) {
        return err(
            every.span(),
            format!(
                "{key} resolve_every: set without discover; it says how often \
                 discover's name is resolved again"
            ),
        );
    }
    let strategy = match &p.strategy {
        None => defaults.strategy,
        Some(s) => strategy(s, &format!("{key} strategy"))?,
    };
    let health_path = match &p.health_path {
        None => defaults.health_path.to_owned(),
        Some(h) => health_path(h, &format!("{key} health_path"))?,
    };
    Ok(PoolConfig {
        name,
        backends,
        discover,
        resolve_every: duration(&p.resolve_every, &format!("{key} resolve_every"), "5s")?,
        strategy,
        health_path,
    })
}

/// A pool's `name`: present, of `[A-Za-z0-9._-]`, not `"default"`, not
/// taken.
fn pool_name(
    raw: Option<&Spanned<String>>,
    pool_span: Range<usize>,
    names: &mut HashMap<String, usize>,
    lines: &Lines,
) -> Check<String> {
    const VALID: &str = "valid: letters, digits, '.', '_' and '-', unique, not \"default\"";
    let Some(s) = raw else {
        return err(
            pool_span,
            format!("[[pool]] name: missing; every pool needs a name ({VALID})"),
        );
    };
    let name = s.get_ref();
    if name == DEFAULT_POOL {
        return err(
            s.span(),
            "[[pool]] name: \"default\" is reserved: it is the name of the pool the \
             top-level backends form; pick another name"
                .into(),
        );
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || !name.chars().all(valid) {
        return err(
            s.span(),
            format!("[[pool]] name: {name:?} is not a valid name; {VALID}"),
        );
    }
    match names.entry(name.clone()) {
        Entry::Occupied(o) => err(
            s.span(),
            format!(
                "[[pool]] name: {name:?} is already the name of the [[pool]] at line {}; names are unique",
                lines.of(*o.get())
            ),
        ),
        Entry::Vacant(v) => {
            v.insert(s.span().start);
            Ok(name.clone())
        }
    }
}

/// A pool's `discover`: `"name:port"` or `"srv:_service._proto.name"`,
/// lowercased, without a trailing dot.
fn discover(s: &Spanned<String>, key: &str) -> Check<Discover> {
    let written = s.get_ref();
    let bad = |why: &str| {
        err(
            s.span(),
            format!(
                "{key} discover: {written:?} {why}; valid: \"name:port\" (its A/AAAA records, \
                 such as \"api.service.consul:8000\") or \"srv:_service._proto.name\" \
                 (such as \"srv:_http._tcp.api.service.consul\")"
            ),
        )
    };
    let lower = written.to_ascii_lowercase();
    if let Some(name) = lower.strip_prefix("srv:") {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut labels = name.split('.');
        let service = labels.next().is_some_and(|l| l.starts_with('_'));
        let proto = labels.next().is_some_and(|l| l.starts_with('_'));
        if !(service && proto && labels.next().is_some() && dns_name(name)) {
            return bad("is not an SRV name");
        }
        return Ok(Discover::Srv {
            name: name.to_owned(),
        });
    }
    let Some((name, port)) = lower.rsplit_once(':') else {
        return bad("has no port");
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return bad("has no valid port (1..65535)"),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.parse::<IpAddr>().is_ok() {
        return bad("is an address, not a DNS name (list addresses in backends)");
    }
    if !dns_name(name) {
        return bad("is not a DNS name");
    }
    Ok(Discover::Host {
        name: name.to_owned(),
        port,
    })
}

/// A DNS name, lowercased: dot-separated labels of 1..63 characters
/// `[a-z0-9_-]`, 253 at most in all.
pub(super) fn dns_name(name: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// `[dns] nameservers`: `"IP:port"`, or a bare IP for port 53.
fn dns(raw: &RawDns) -> Check<Dns> {
    let mut nameservers = Vec::with_capacity(raw.nameservers.len());
    for s in &raw.nameservers {
        let a = match s.get_ref().parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 53),
            Err(_) => addr("[dns] nameservers", s)?,
        };
        if a.port() == 0 {
            return err(
                s.span(),
                format!(
                    "[dns] nameservers: {a} has port 0; valid: an IP:port such as \"10.0.0.2:53\""
                ),
            );
        }
        nameservers.push(a);
    }
    Ok(Dns { nameservers })
}

impl super::Config {
    /// The `--check` lines of `[[pool]]`, `[[route]]` and `[dns]`, each
    /// ending in a newline.
    pub(super) fn pools_summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for p in &self.pools {
            let _ = writeln!(
                s,
                "pool {}: strategy {}, health GET {}, {} backend(s):",
                p.name,
                p.strategy.name(),
                p.health_path,
                p.backends.len()
            );
            for b in &p.backends {
                let _ = writeln!(s, "  {} (agent {}, weight {})", b.addr, b.agent, b.weight);
            }
            if let Some(d) = &p.discover {
                let _ = writeln!(
                    s,
                    "  and those of discover {d}, resolved every {}",
                    humantime::format_duration(p.resolve_every)
                );
            }
        }
        if self.routes.is_empty() {
            s.push_str("no routes: every request goes to the default pool\n");
        }
        for r in &self.routes {
            let host = r
                .host
                .as_ref()
                .map_or("any host".to_owned(), |h| format!("host {h}"));
            let path = r
                .path_prefix
                .as_deref()
                .map_or("any path".to_owned(), |p| format!("path {p}*"));
            let _ = writeln!(
                s,
                "route (line {}): {host}, {path} -> pool {}",
                r.line, r.pool
            );
        }
        if self.pools.iter().any(|p| p.discover.is_some()) {
            let servers: Vec<String> = self
                .dns
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect();
            match servers.is_empty() {
                true => s.push_str("dns: the system's name servers (/etc/resolv.conf)\n"),
                false => {
                    let _ = writeln!(s, "dns: name servers {}", servers.join(", "));
                }
            }
        }
        s
    }
}

#[cfg(test)]
#[path = "pools_tests.rs"]
mod tests;
