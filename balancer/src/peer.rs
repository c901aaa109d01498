//! The client at the other end of a connection, as the proxy sees it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;

use crate::tls::TlsInfo;

/// The client at the other end of a connection, with what every request
/// on it sends upstream about it, formatted once per connection.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its IP as an `X-Forwarded-For` value.
    forwarded_for: HeaderValue,
    /// The connection's TLS facts; `None` on the plain listener.
    pub tls: Option<Arc<TlsInfo>>,
}

impl Peer {
    /// The client at `addr`, on the plain listener.
    pub fn new(addr: SocketAddr) -> Peer {
        Peer::of(addr, None)
    }

    /// Its IP as an `X-Forwarded-For` value.
    pub fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }

    /// The client at `addr`, with the connection's TLS facts (from its
    /// [`ConnInfo`](crate::listener::ConnInfo)).
    pub fn of(addr: SocketAddr, tls: Option<Arc<TlsInfo>>) -> Peer {
        let ip = addr.ip().to_canonical().to_string();
        Peer {
            addr,
            forwarded_for: HeaderValue::from_str(&ip)
                .expect("an IP address is a valid header value"),
            tls,
        }
    }
}
