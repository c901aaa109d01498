//! Limits against hostile or runaway clients, and what they reject.
//!
//! - Connections: `[limits] max_connections` (all listeners together) and
//!   `max_connections_per_ip`, counted by a [`ConnSlot`] that each client
//!   connection holds from accept to close ([`Limiter::reserve`],
//!   [`ConnSlot::admit`]).
//! - Requests: `rate_per_ip` / `burst_per_ip`, a token bucket per client
//!   address ([`rate`]); `429` with `Retry-After`, and a client that keeps
//!   going after [`rate::DISCONNECT_AFTER`] refusals in a row is
//!   disconnected.
//! - Request bodies: `max_request_body` (`413`) and `[timeouts]
//!   client_body` (`408` for a stalled body), enforced on the body as it
//!   streams upstream ([`body`]).
//! - Responses: `[timeouts] send`, a client that stops reading ([`send`]).
//! - Tunnels: `[timeouts] tunnel`, an upgraded connection idle both ways
//!   ([`crate::tunnel`], which counts into [`Rejected`] here).
//!
//! Every rejection is counted in [`Rejected`], which `/metrics` shows as
//! `lb_limited_total{reason=...}`.
//!
//! With the defaults (only `max_connections` set) a connection costs one
//! compare-and-swap at accept and one subtraction at close; a request costs
//! a branch.

pub mod body;
mod metrics;
mod per_ip;
pub mod rate;
pub mod send;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{Limits, RatePerIp};

pub use body::BodyError;

/// A response carrying this extension ends its client connection once it
/// is sent: HTTP/1 through its `Connection: close` header, HTTP/2 by a
/// graceful shutdown of the connection (see `server`).
#[derive(Debug, Clone, Copy)]
pub struct CloseConnection;

/// The runtime side of `[limits]`: the connection counts, the per-IP
/// tables and the rejection counters. One per balancer, kept across
/// reloads; [`Limiter::configure`] applies a reloaded `[limits]`.
#[derive(Debug)]
pub struct Limiter {
    /// Client connections open, on every listener.
    open: AtomicUsize,
    /// `max_connections`; `usize::MAX` when 0 (no limit).
    max_open: AtomicUsize,
    /// `max_connections_per_ip`; 0: off.
    max_per_ip: AtomicU32,
    /// Listeners waiting at `max_connections`.
    waiting: AtomicUsize,
    /// A connection closed while a listener waited.
    freed: Notify,
    /// Whether the wait at `max_connections` has been logged since the
    /// count last fell below it (logged once per episode).
    at_cap: AtomicBool,
    /// Open connections per client address.
    per_ip: per_ip::ConnTable,
    /// Token buckets per client address.
    pub(crate) rate: rate::RateTable,
    /// What the limits refused.
    pub rejected: Rejected,
}

impl Limiter {
    /// A limiter for `limits`.
    pub fn new(limits: &Limits) -> Limiter {
        let l = Limiter {
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(usize::MAX),
            max_per_ip: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            at_cap: AtomicBool::new(false),
            per_ip: per_ip::ConnTable::new(),
            rate: rate::RateTable::new(),
            rejected: Rejected::default(),
        };
        l.configure(limits);
        l
    }

    /// Applies `limits` (at start and on reload). Connections already
    /// open stay; a lower cap applies to the next ones.
    pub fn configure(&self, limits: &Limits) {
        let max = match limits.max_connections {
            0 => usize::MAX,
            n => n as usize,
        };
        self.max_open.store(max, Relaxed);
        self.max_per_ip
            .store(limits.max_connections_per_ip, Relaxed);
        // A raised cap may let a waiting listener go on.
        self.freed.notify_waiters();
    }

    /// Client connections open now, on every listener.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Room for the connection a listener has just accepted, waited for
    /// while `max_connections` are open: meanwhile the listener accepts no
    /// other, as HAProxy's `maxconn` pauses its listeners, and new
    /// connections wait in the kernel's listen backlog until one closes.
    /// Rather than accepting and closing them: a connection in the backlog
    /// is served as soon as there is room, which turns a burst into a
    /// short delay instead of errors, and the balancer spends nothing on
    /// the excess. (The one connection in hand is accepted first so that
    /// the count is exact and only counts connections.)
    pub async fn reserve(self: &Arc<Self>) -> ConnSlot {
        if let Some(slot) = self.try_reserve() {
            return slot;
        }
        Box::pin(self.wait_for_room()).await
    }

    fn try_reserve(self: &Arc<Self>) -> Option<ConnSlot> {
        let max = self.max_open.load(Relaxed);
        self.open
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ConnSlot {
                limiter: Arc::clone(self),
                ip: 0,
            })
    }

    async fn wait_for_room(self: &Arc<Self>) -> ConnSlot {
        self.rejected.conns.fetch_add(1, Relaxed);
        if !self.at_cap.swap(true, Relaxed) {
            tracing::warn!(
                "max_connections ({}) reached: new connections wait in the listen backlog",
                self.max_open.load(Relaxed)
            );
        }
        loop {
            // Registered before looking again, so that a close in between
            // is not missed.
            self.waiting.fetch_add(1, Relaxed);
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let found = self.try_reserve();
            if found.is_none() {
                freed.await;
            }
            self.waiting.fetch_sub(1, Relaxed);
            if let Some(slot) = found {
                self.at_cap.store(false, Relaxed);
                return slot;
            }
        }
    }

    /// Counts a connection that is already open (an upgraded connection
    /// that outlives its HTTP connection), whatever the caps say.
    pub fn hold(self: &Arc<Self>, peer: SocketAddr) -> ConnSlot {
        self.open.fetch_add(1, Relaxed);
        let mut slot = ConnSlot {
            limiter: Arc::clone(self),
            ip: 0,
        };
        if self.max_per_ip.load(Relaxed) > 0 {
            let key = ip_key(peer.ip());
            if self.per_ip.add(key, u32::MAX) {
                slot.ip = key;
            }
        }
        slot
    }

    /// Takes one request from `peer` against `[limits] rate_per_ip`:
    /// `None` when allowed, else the seconds to put in `Retry-After` and
    /// whether to close the connection (refused
    /// [`rate::DISCONNECT_AFTER`] times in a row).
    pub fn over_rate(&self, limit: &RatePerIp, peer: SocketAddr) -> Option<(u64, bool)> {
        let now = tokio::time::Instant::now();
        match self.rate.check(ip_key(peer.ip()), now, limit) {
            rate::Verdict::Allowed => None,
            rate::Verdict::Refused {
                retry_after,
                disconnect,
            } => {
                self.rejected.rate.fetch_add(1, Relaxed);
                if disconnect {
                    self.rejected.rate_disconnect.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "disconnecting a client that keeps going over its rate");
                }
                Some((retry_after, disconnect))
            }
        }
    }

    fn release(&self, ip: u64) {
        if ip != 0 {
            self.per_ip.remove(ip);
        }
        self.open.fetch_sub(1, Relaxed);
        if self.waiting.load(Relaxed) > 0 {
            self.freed.notify_one();
        }
    }
}

/// One client connection counted against the limits, from accept to
/// close; dropping it releases the count.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<Limiter>,
    /// The client's key in the per-IP table, or 0 when not counted there.
    ip: u64,
}

impl ConnSlot {
    /// Takes the accepted connection from `peer` under
    /// `max_connections_per_ip`. `None`: that client has its share open
    /// already (or the table is full); the caller closes the connection at
    /// once.
    pub fn admit(mut self, peer: SocketAddr) -> Option<ConnSlot> {
        let max = self.limiter.max_per_ip.load(Relaxed);
        if max == 0 {
            return Some(self);
        }
        let key = ip_key(peer.ip());
        if self.limiter.per_ip.add(key, max) {
            self.ip = key;
            Some(self)
        } else {
            self.limiter.rejected.conns_per_ip.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "max_connections_per_ip ({max}) reached: connection closed");
            None
        }
    }

    /// The limiter this connection is counted by.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limiter.release(self.ip);
    }
}

/// The key a client address is counted under: an IPv4 address, or the
/// /64 prefix of an IPv6 one (a single host or subscriber is routinely
/// given a whole /64, so counting each of its addresses apart would let
/// one client open 2^64 "clients"). Never 0, which means "not counted".
pub fn ip_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        // In 0:ffff::/32, a reserved IPv6 range no client has.
        IpAddr::V4(v4) => 0x0000_ffff_0000_0000 | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match (u128::from(v6) >> 64) as u64 {
            // ::/64 (loopback ::1): apart from "not counted".
            0 => 1,
            prefix => prefix,
        },
    }
}

/// What the limits refused, by reason; `/metrics` shows them as
/// `lb_limited_total{reason=...}`.
#[derive(Debug, Default)]
pub struct Rejected {
    /// Requests answered `429` by the per-IP rate limit.
    pub rate: AtomicU64,
    /// Connections closed after repeated `429`s in a row.
    pub rate_disconnect: AtomicU64,
    /// Times the listeners stopped accepting at `max_connections`.
    pub conns: AtomicU64,
    /// Connections closed at accept by `max_connections_per_ip`.
    pub conns_per_ip: AtomicU64,
    /// Requests answered `413`: body over `max_request_body`.
    pub body: AtomicU64,
    /// Requests answered `408`: body stalled past `[timeouts] client_body`.
    pub body_timeout: AtomicU64,
    /// Requests answered `400`: malformed or cut-short request body.
    pub body_malformed: AtomicU64,
    /// Connections closed by `[timeouts] send`: the client stopped reading.
    pub send_timeout: AtomicU64,
    /// Tunnels closed by `[timeouts] tunnel`: idle both ways.
    pub tunnel_timeout: AtomicU64,
}

impl Rejected {
    /// Every counter with its `reason` label, for `/metrics`.
    pub fn by_reason(&self) -> [(&'static str, u64); 9] {
        [
            ("rate", self.rate.load(Relaxed)),
            ("rate_disconnect", self.rate_disconnect.load(Relaxed)),
            ("conns", self.conns.load(Relaxed)),
            ("conns_per_ip", self.conns_per_ip.load(Relaxed)),
            ("body", self.body.load(Relaxed)),
            ("body_timeout", self.body_timeout.load(Relaxed)),
            ("body_malformed", self.body_malformed.load(Relaxed)),
            ("send_timeout", self.send_timeout.load(Relaxed)),
            ("tunnel_timeout", self.tunnel_timeout.load(Relaxed)),
        ]
    }
}

#[cfg(test)]
mod tests;
