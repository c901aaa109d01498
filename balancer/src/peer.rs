//! The client at the other end of a connection, as the proxy sees it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;

use crate::listener::ConnInfo;
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
        Peer::of(ConnInfo {
            peer: addr,
            tls: None,
        })
    }

    /// Its IP as an `X-Forwarded-For` value.
    pub fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }

    /// The client of the connection `info` describes.
    pub fn of(info: ConnInfo) -> Peer {
        let ip = info.peer.ip().to_canonical().to_string();
        Peer {
            addr: info.peer,
            forwarded_for: HeaderValue::from_str(&ip)
                .expect("an IP address is a valid header value"),
            tls: info.tls,
        }
    }
}
