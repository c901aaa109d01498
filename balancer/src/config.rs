//! `lb.toml`: the raw file structs, their validation into a typed [`Config`],
//! and [`ConfigError`], which names the file, line, column and key.
//!
//! Parsing happens in two stages, after sozu: serde reads the file into
//! `Raw*` structs that refuse unknown keys and keep every value's position
//! ([`Spanned`]); [`validate`] then turns them into typed values
//! (`SocketAddr`, `Duration`, enums), so nothing downstream ever looks at a
//! string again, and every error can point at the exact place in the file.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

use crate::compress;

mod limits;
mod log;
mod pools;
mod raw;
mod resilience;
mod routes;
mod secrets;
mod tls;
pub use limits::RatePerIp;
pub use log::{Access, Format, Log};
pub use pools::{Discover, Dns, HostMatch, PoolConfig, RouteConfig, DEFAULT_POOL};
use raw::{RawCompression, RawConfig};
pub use resilience::{Outlier, MAX_EJECTION};
pub use secrets::AdminToken;
pub use tls::Tls;

/// The whole validated configuration. Cheap to clone: reloads build a new
/// one and swap it in whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The backends, in file order (never empty, no duplicates).
    pub backends: Vec<BackendConfig>,
    /// How a backend is chosen.
    pub balance: Balance,
    /// Active health probes.
    pub health: Health,
    /// Polling of the load agents.
    pub agent: AgentPoll,
    /// Response compression.
    pub compression: compress::Settings,
    /// Client- and backend-side time limits.
    pub timeouts: Timeouts,
    /// The admin listener.
    pub admin: Admin,
    /// Passive ejection of backends failing live traffic.
    pub outlier: Outlier,
    /// `[limits]`.
    pub limits: Limits,
    /// `[tls]`: the TLS listener and its certificates (`None`: no TLS).
    pub tls: Option<Tls>,
    /// `[log]`: the access log.
    pub log: Log,
    /// `[[pool]]`s, in file order; the top-level `backends` are the pool
    /// named `"default"`, not listed here.
    pub pools: Vec<PoolConfig>,
    /// `[[route]]`s, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[dns]`: the name servers `discover` asks.
    pub dns: Dns,
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where requests are sent.
    pub addr: SocketAddr,
    /// Where its host's agent answers `GET /load`.
    pub agent: SocketAddr,
    /// Relative capacity: a weight-2 backend is meant to take twice the
    /// traffic of a weight-1 one under every strategy.
    pub weight: u32,
}

/// `[balance]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// The selection policy.
    pub strategy: Strategy,
    /// How many more backends a failed request may be tried on (extension;
    /// default 2, so at most three attempts, like HAProxy's `retries 3`).
    pub retries: u32,
    /// A backend that comes up or is added on reload ramps from a small
    /// share to its full share over this long, so a cold cache or JIT is
    /// not handed a full share at once (zero: off).
    pub slow_start: Duration,
    /// Retries stay under this share of requests (plus a small floor), so
    /// a failing backend cannot multiply the load on the others.
    pub retry_budget: f64,
}

/// The selection policies users can name in `[balance] strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Lowest combined agent-load and in-flight score (see `select`).
    LeastLoaded,
    /// Weighted round robin.
    RoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConnections,
    /// Uniformly random, weighted.
    Random,
}

impl Strategy {
    /// Every strategy with its name in `lb.toml` and the admin endpoints,
    /// in the order of the enum: the one place the names are spelled.
    pub const ALL: [(Strategy, &'static str); 4] = [
        (Strategy::LeastLoaded, "least-loaded"),
        (Strategy::RoundRobin, "round-robin"),
        (Strategy::LeastConnections, "least-connections"),
        (Strategy::Random, "random"),
    ];

    /// The valid names, for an error message: "least-loaded, round-robin,
    /// ...".
    const NAMES: Names = Names;

    /// The name used in `lb.toml` and in the admin endpoints.
    pub const fn name(self) -> &'static str {
        Strategy::ALL[self as usize].1
    }
}

/// [`Strategy::ALL`]'s names, comma-separated, when formatted.
#[derive(Debug, Clone, Copy)]
struct Names;

impl std::fmt::Display for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (_, name)) in Strategy::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl FromStr for Strategy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let found = Strategy::ALL.iter().find(|(_, name)| *name == s);
        found.map(|&(strategy, _)| strategy).ok_or(())
    }
}

/// `[health]`: the active HTTP probe of each backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Path probed with `GET`; any 2xx or 3xx answer is a success.
    pub path: String,
    /// Time between the end of one probe and the start of the next.
    pub interval: Duration,
    /// A probe slower than this failed.
    pub timeout: Duration,
    /// Consecutive failures before a backend is down.
    pub fall: u32,
    /// Consecutive successes before a down backend is up again.
    pub rise: u32,
}

/// `[agent]`: polling of the load agent on each backend host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPoll {
    /// Agent port used when a backend does not name its agent.
    pub port: u16,
    /// Time between polls (jittered by a few percent).
    pub interval: Duration,
    /// A poll slower than this failed.
    pub timeout: Duration,
    /// The key shared with the agents (`key_file`, read at load): with it,
    /// a report not authenticated over this poll's nonce counts as unknown
    /// load. `None`: reports are taken as they come.
    pub key: Option<agent::Key>,
}

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a backend.
    pub connect: Duration,
    /// From sending a request to receiving the whole backend response head.
    pub request: Duration,
    /// A client connection with no bytes moving either way is closed.
    pub idle: Duration,
    /// A client must send a whole request head within this (slowloris
    /// guard; extension, default 10 s).
    pub header: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish
    /// (extension, default 10 s).
    pub drain: Duration,
    /// A request body that stalls this long (less than
    /// `limits::body::MIN_PROGRESS` bytes in it) gets `408` and its
    /// connection is closed.
    pub client_body: Duration,
    /// A client that takes no byte of its response for this long is
    /// disconnected, releasing the backend connection it held.
    pub send: Duration,
    /// An upgraded connection (WebSocket) idle both ways this long is
    /// closed.
    pub tunnel: Duration,
}

/// `[limits]` (0 means no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections open to one backend at most; at the cap a request waits
    /// up to `timeouts.connect` for one to free up.
    pub max_conns_per_backend: u32,
    /// Client connections open at most, all listeners together; at the cap
    /// the listeners stop accepting until one closes.
    pub max_connections: u32,
    /// Client connections one address (an IPv6 /64) may have open; more
    /// are closed at once.
    pub max_connections_per_ip: u32,
    /// Requests per second per client address (a token bucket); over it:
    /// `429` with `Retry-After`. `None`: no limit.
    pub rate_per_ip: Option<RatePerIp>,
    /// Largest request body in bytes; larger: `413`. 0: no limit.
    pub max_request_body: u64,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where the status page, JSON and metrics are served.
    pub listen: SocketAddr,
    /// The bearer token of the mutating endpoints (`token_file`, read at
    /// load). `None`: they answer `403`; only allowed on a loopback
    /// `listen`.
    pub token: Option<AdminToken>,
    /// How often a registered backend must announce itself (`POST
    /// /backends`); three missed heartbeats drop it.
    pub heartbeat: Duration,
}

/// A configuration that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", render_invalid(.path, *.at, .message, .line_text.as_deref()))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line and column, when known.
        at: Option<(usize, usize)>,
        /// What is wrong, naming the key and the valid values.
        message: String,
        /// The offending line of the file, shown under the message.
        line_text: Option<String>,
    },
}

fn render_invalid(
    path: &Path,
    at: Option<(usize, usize)>,
    message: &str,
    line_text: Option<&str>,
) -> String {
    match (at, line_text) {
        (Some((line, col)), Some(text)) => format!(
            "{}:{line}:{col}: {message}\n{line:>5} | {text}",
            path.display()
        ),
        (Some((line, col)), None) => format!("{}:{line}:{col}: {message}", path.display()),
        _ => format!("{}: {message}", path.display()),
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let at = span.map(|s| line_col(text, s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                at,
                message,
                line_text: at
                    .and_then(|(l, _)| text.lines().nth(l - 1))
                    .map(str::to_owned),
            }
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| invalid(e.span(), e.message().trim_end().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        validate(raw, base, text).map_err(|e| invalid(Some(e.span), e.message))
    }

    /// A short human summary, printed by `balancer --check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "listen {}, admin {}", self.listen, self.admin.listen);
        let _ = writeln!(
            s,
            "strategy {}, retries {}, {} backend(s):",
            self.balance.strategy.name(),
            self.balance.retries,
            self.backends.len()
        );
        for b in &self.backends {
            let _ = writeln!(s, "  {} (agent {}, weight {})", b.addr, b.agent, b.weight);
        }
        s.push_str(&self.pools_summary());
        let h = &self.health;
        let _ = writeln!(
            s,
            "health GET {} every {}, timeout {}, fall {}, rise {}",
            h.path,
            humantime::format_duration(h.interval),
            humantime::format_duration(h.timeout),
            h.fall,
            h.rise
        );
        let a = &self.agent;
        let _ = writeln!(
            s,
            "agent polls every {}, timeout {} (default agent port {})",
            humantime::format_duration(a.interval),
            humantime::format_duration(a.timeout),
            a.port
        );
        let t = &self.timeouts;
        let _ = writeln!(
            s,
            "timeouts: connect {}, request {}, idle {}, header {}, drain {}",
            humantime::format_duration(t.connect),
            humantime::format_duration(t.request),
            humantime::format_duration(t.idle),
            humantime::format_duration(t.header),
            humantime::format_duration(t.drain)
        );
        let _ = writeln!(s, "{}", self.resilience_summary());
        let _ = writeln!(s, "{}", self.secrets_summary());
        let _ = writeln!(s, "{}", self.limits_summary());
        let _ = writeln!(s, "{}", self.tls_summary());
        let _ = writeln!(s, "{}", self.log_summary());
        let _ = write!(s, "{}", self.compression_summary());
        s
    }

    /// The `--check` line for `[compression]`: "off" when no encoding is
    /// left (`gzip = false` and no other), else every setting.
    fn compression_summary(&self) -> String {
        let c = &self.compression;
        if c.encodings.is_empty() {
            return "compression off".into();
        }
        let encodings: Vec<String> = c.encodings.iter().map(ToString::to_string).collect();
        let types: Vec<String> = c.types.iter().map(ToString::to_string).collect();
        format!(
            "compression {} level {}, min_size {}, types {}",
            encodings.join(", "),
            c.level,
            c.min_size,
            types.join(", ")
        )
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut col) = (1, 1);
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            (line, col) = (line + 1, 1);
        } else {
            col += 1;
        }
    }
    (line, col)
}

// ---------------------------------------------------------------------------
// Stage 2: typed values.

/// A validation error before it is given a file and a line.
struct SpanError {
    span: Range<usize>,
    message: String,
}

type Check<T> = Result<T, SpanError>;

fn err<T>(span: Range<usize>, message: String) -> Check<T> {
    Err(SpanError { span, message })
}

/// The contract's default compressible types.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
];

/// `base`: the config file's directory, against which relative
/// certificate paths are resolved; `text`: the file, for the line numbers
/// errors and routes quote.
fn validate(raw: RawConfig, base: &Path, text: &str) -> Check<Config> {
    let listen = addr("listen", &raw.listen)?;

    let agent = AgentPoll {
        port: int_in(&raw.agent.port, "[agent] port", 9100, 1..=65535)? as u16,
        interval: duration(&raw.agent.interval, "[agent] interval", "1s")?,
        timeout: duration(&raw.agent.timeout, "[agent] timeout", "500ms")?,
        key: secrets::agent_key(&raw.agent)?,
    };

    let strategy = match &raw.balance.strategy {
        None => Strategy::LeastLoaded,
        Some(s) => strategy(s, "[balance] strategy")?,
    };
    let (slow_start, retry_budget) = resilience::balance(&raw.balance)?;
    let balance = Balance {
        strategy,
        retries: int_in(&raw.balance.retries, "[balance] retries", 2, 0..=10)? as u32,
        slow_start,
        retry_budget,
    };
    let outlier = resilience::outlier(&raw.outlier)?;

    let health = Health {
        path: match &raw.health.path {
            None => "/health".into(),
            Some(p) => health_path(p, "[health] path")?,
        },
        interval: duration(&raw.health.interval, "[health] interval", "1s")?,
        timeout: duration(&raw.health.timeout, "[health] timeout", "500ms")?,
        fall: int_in(&raw.health.fall, "[health] fall", 2, 1..=1000)? as u32,
        rise: int_in(&raw.health.rise, "[health] rise", 2, 1..=1000)? as u32,
    };

    let pools::Pools {
        backends,
        pools,
        routes,
        dns,
    } = pools::pools(
        pools::Raw {
            backends: raw.backends,
            pools: raw.pool,
            routes: raw.route,
            dns: raw.dns,
        },
        &pools::Defaults {
            agent_port: agent.port,
            strategy,
            health_path: &health.path,
        },
        text,
    )?;

    let compression = compression(raw.compression)?;

    let (client_body, send, tunnel) = limits::client_timeouts(&raw.timeouts)?;
    let timeouts = Timeouts {
        connect: duration(&raw.timeouts.connect, "[timeouts] connect", "1s")?,
        request: duration(&raw.timeouts.request, "[timeouts] request", "30s")?,
        idle: duration(&raw.timeouts.idle, "[timeouts] idle", "60s")?,
        header: duration(&raw.timeouts.header, "[timeouts] header", "10s")?,
        drain: duration(&raw.timeouts.drain, "[timeouts] drain", "10s")?,
        client_body,
        send,
        tunnel,
    };

    let admin_listen = match &raw.admin.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9000)),
        Some(s) => addr("[admin] listen", s)?,
    };
    let admin = Admin {
        listen: admin_listen,
        token: secrets::admin_token(&raw.admin, admin_listen)?,
        heartbeat: duration(&raw.admin.heartbeat, "[admin] heartbeat", "2s")?,
    };

    let limits = limits::limits(&raw.limits)?;
    let log = log::log(&raw.log)?;

    // Where a clash of listen addresses points: `[tls] listen`, or the
    // table when it takes the default.
    let tls_span = raw.tls.as_ref().map(|t| {
        t.get_ref()
            .listen
            .as_ref()
            .map_or_else(|| t.span(), Spanned::span)
    });
    let tls = tls::tls(raw.tls, base)?;
    if let (Some(t), Some(span)) = (&tls, tls_span) {
        if t.listen == listen || t.listen == admin.listen {
            return err(
                span,
                format!(
                    "[tls] listen: {} is already the plain or the admin listen address",
                    t.listen
                ),
            );
        }
    }

    Ok(Config {
        listen,
        backends,
        balance,
        health,
        agent,
        compression,
        timeouts,
        admin,
        outlier,
        limits,
        tls,
        log,
        pools,
        routes,
        dns,
    })
}

/// A strategy's name (`[balance] strategy`, a pool's `strategy`).
fn strategy(s: &Spanned<String>, key: &str) -> Check<Strategy> {
    s.get_ref().parse().or_else(|()| {
        err(
            s.span(),
            format!(
                "{key}: unknown strategy {:?}; valid: {}",
                s.get_ref(),
                Strategy::NAMES
            ),
        )
    })
}

/// A probe path (`[health] path`, a pool's `health_path`): absolute, no
/// whitespace.
fn health_path(p: &Spanned<String>, key: &str) -> Check<String> {
    let path = p.get_ref();
    if path.starts_with('/') && !path.contains(char::is_whitespace) {
        return Ok(path.clone());
    }
    err(
        p.span(),
        format!("{key}: {path:?} must be an absolute path such as \"/health\""),
    )
}

fn compression(raw: RawCompression) -> Check<compress::Settings> {
    let level = int_in(&raw.level, "[compression] level", 6, 1..=9)? as u32;
    let min_size = int_in(&raw.min_size, "[compression] min_size", 1024, 0..=i64::MAX)? as u64;
    let types = match raw.types {
        None => DEFAULT_TYPES
            .iter()
            .map(|t| t.parse().expect("default types are valid"))
            .collect(),
        Some(list) => list
            .iter()
            .map(|t| {
                t.get_ref().parse::<compress::TypePattern>().or_else(|e| {
                    err(
                        t.span(),
                        format!("[compression] types: {:?}: {e}", t.get_ref()),
                    )
                })
            })
            .collect::<Check<Vec<_>>>()?,
    };
    let mut encodings = Vec::new();
    match raw.encodings {
        None => encodings.push(compress::Encoding::Gzip),
        Some(list) => {
            for e in &list {
                let enc = match e.get_ref().as_str() {
                    "gzip" => compress::Encoding::Gzip,
                    "br" => compress::Encoding::Br,
                    "zstd" => compress::Encoding::Zstd,
                    other => {
                        return err(
                            e.span(),
                            format!(
                                "[compression] encodings: unknown encoding {other:?}; valid: gzip, br, zstd"
                            ),
                        )
                    }
                };
                if encodings.contains(&enc) {
                    return err(
                        e.span(),
                        format!(
                            "[compression] encodings: {other:?} is listed twice",
                            other = e.get_ref()
                        ),
                    );
                }
                encodings.push(enc);
            }
        }
    }
    // `gzip = false` is the contract's switch; it removes gzip whatever the
    // encodings list says.
    if raw.gzip == Some(false) {
        encodings.retain(|e| *e != compress::Encoding::Gzip);
    }
    Ok(compress::Settings {
        encodings,
        level,
        min_size,
        types,
    })
}

fn addr(key: &str, s: &Spanned<String>) -> Check<SocketAddr> {
    s.get_ref().parse().or_else(|_| {
        err(
            s.span(),
            format!(
                "{key}: {:?} is not an IP:port address (such as \"10.0.0.11:8000\" or \"[::1]:8000\")",
                s.get_ref()
            ),
        )
    })
}

/// The longest any duration in `lb.toml` may be: a week. A longer
/// interval or timeout is no use to a balancer (a timeout of a week is
/// "never" already), and with this bound no deadline or multiple derived
/// from a configured duration comes anywhere near overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// [`MAX_DURATION`] as written in error messages.
const MAX_DURATION_TEXT: &str = "7d";

/// A duration longer than zero and at most [`MAX_DURATION`].
fn duration(s: &Option<Spanned<String>>, key: &str, default: &str) -> Check<Duration> {
    let Some(s) = s else {
        return Ok(humantime::parse_duration(default).expect("defaults are valid"));
    };
    match humantime::parse_duration(s.get_ref()) {
        Ok(d) if !d.is_zero() && d <= MAX_DURATION => Ok(d),
        Ok(_) => err(
            s.span(),
            format!(
                "{key}: {:?} is out of range; valid: longer than zero, at most \"{MAX_DURATION_TEXT}\"",
                s.get_ref()
            ),
        ),
        Err(_) => err(
            s.span(),
            format!(
                "{key}: {:?} is not a duration; write a number with a unit, such as \"250ms\", \"1s\" or \"2m\"",
                s.get_ref()
            ),
        ),
    }
}

fn int_in(
    v: &Option<Spanned<i64>>,
    key: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Check<i64> {
    match v {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => {
            let bound = if *range.end() == i64::MAX {
                format!("at least {}", range.start())
            } else {
                format!("{}..{}", range.start(), range.end())
            };
            err(
                v.span(),
                format!("{key}: {} is out of range; valid: {bound}", v.get_ref()),
            )
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bounds_tests;
