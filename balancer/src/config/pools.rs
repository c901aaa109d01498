//! `[[pool]]`, `[[route]]` and `[dns]`: named pools of backends (listed,
//! discovered through DNS, or registered at run time), the routes that send
//! requests to them, and the name servers discovery asks.
//!
//! The top-level `backends` form the pool named `"default"`, which gets
//! every request no route matches; it is not listed in [`Config::pools`](super::Config::pools).

use std::net::SocketAddr;
use std::time::Duration;

use super::{BackendConfig, Strategy};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
