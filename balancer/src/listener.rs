//! The client listeners, and accepting on them apart from serving: the
//! plain `listen` and, with `[tls]`, the TLS one. An accepted connection
//! is its socket, its peer and the [`Kind`] of listener it came from; the
//! server (on the accepting runtime or a worker's) then serves it as plain
//! HTTP or runs its TLS handshake first, and its requests learn what they
//! came over from the connection's [`ConnInfo`].
//!
//! Every listener, the admin one too, accepts through [`accept`], which
//! backs off when out of file descriptors (`backoff`).

mod backoff;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::limits::{ConnSlot, Limiter};
use crate::tls::{Terminator, TlsInfo};

/// The client listeners a balancer serves.
#[derive(Debug)]
pub struct Listeners {
    /// `listen`: plain HTTP/1.1 and HTTP/2 with prior knowledge.
    pub plain: TcpListener,
    /// `[tls] listen`, bound when the config has `[tls]`.
    pub tls: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    /// The plain listener alone.
    fn from(plain: TcpListener) -> Listeners {
        Listeners { plain, tls: None }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain HTTP.
    Plain,
    /// TLS: the handshake comes first.
    Tls,
}

/// What the handler of a connection's requests knows about the connection
/// besides its socket.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Set on the TLS listener once the handshake is done: the SNI name,
    /// ALPN's choice and the version (`X-Forwarded-Proto: https`).
    pub tls: Option<Arc<TlsInfo>>,
}

impl Listeners {
    /// The next client connection on any listener, counted against
    /// `[limits]` ([`Limiter`]), with its kind: at `max_connections` it
    /// holds the connection it has just accepted until one closes, and
    /// accepts no other meanwhile (see [`Limiter::reserve`]); a client over
    /// `max_connections_per_ip` is closed at once and the next connection
    /// taken.
    pub(crate) async fn accept(
        &self,
        limiter: &Arc<Limiter>,
    ) -> (TcpStream, SocketAddr, Kind, ConnSlot) {
        loop {
            let (stream, peer, kind) = self.accept_any().await;
            if let Some(slot) = limiter.reserve().await.admit(peer) {
                return (stream, peer, kind, slot);
            }
        }
    }

    /// The next connection on any listener, with its kind. Out of file
    /// descriptors and the like, each listener backs off on its own (see
    /// [`accept`]).
    async fn accept_any(&self) -> (TcpStream, SocketAddr, Kind) {
        let Some(tls) = &self.tls else {
            let (stream, peer) = accept(&self.plain).await;
            return (stream, peer, Kind::Plain);
        };
        tokio::select! {
            (stream, peer) = accept(&self.plain) => (stream, peer, Kind::Plain),
            (stream, peer) = accept(tls) => (stream, peer, Kind::Tls),
        }
    }

    /// Drops a TLS listener that nothing can serve (the config has no
    /// `[tls]`), saying so.
    pub(crate) fn check(mut self, terminator: Option<&Arc<Terminator>>) -> Listeners {
        if terminator.is_none() {
            if let Some(tls) = self.tls.take() {
                let addr = tls.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::warn!("no [tls] in the config: not serving the TLS listener {addr}");
            }
        }
        self
    }
}

/// The next connection on `listener`. Out of file descriptors and the
/// like: it backs off briefly rather than spin (the listener itself stays
/// usable) and tries again, logging at most once a second. Every listener
/// (client and admin) accepts through this.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                backoff::accept_failed(listener, &e);
                tokio::time::sleep(backoff::PAUSE).await;
            }
        }
    }
}
