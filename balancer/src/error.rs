//! Why a request could not be proxied, and the status code and one-line
//! plain-text body each reason maps to — in one place.
//!
//! A client is told what happened, never where: the body of a `502`, `503`
//! or `504` names no backend address and no error chain. Those details are
//! the operator's: they go to the log ([`ProxyError::log`]) and to the
//! backend's `last_error` in `/status.json`. The `Display` form of an error
//! is that detailed, operator-facing text; [`ProxyError::reason`] is the
//! client's.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::limits::{BodyError, CloseConnection};
use crate::outcome::Outcome;

/// A request the proxy answers itself, with an error status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every backend is down (or all were tried).
    #[error("no healthy backend is available (each is down, ejected or out of rotation)")]
    NoBackend,
    /// The backend could not be reached and no other could be tried.
    #[error("could not connect to backend {addr}: {why}")]
    Connect {
        /// The backend.
        addr: SocketAddr,
        /// The connect error.
        why: String,
        /// What the client is told ([`ProxyError::connect`]).
        reason: &'static str,
    },
    /// The backend failed after receiving the request and the request could
    /// not be retried (not idempotent, or it had a body).
    #[error("backend {addr} failed: {why}")]
    Upstream {
        /// The backend.
        addr: SocketAddr,
        /// What went wrong.
        why: String,
        /// What the client is told ([`ProxyError::upstream`]).
        reason: &'static str,
    },
    /// The backend's response head did not arrive in time.
    #[error("backend {addr} did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The backend.
        addr: SocketAddr,
        /// `timeouts.request`.
        after: Duration,
    },
    /// The request is refused before any backend is chosen.
    #[error("{1}")]
    Refused(StatusCode, &'static str),
    /// The client is over `[limits] rate_per_ip`.
    #[error("too many requests; retry in {retry_after} s")]
    TooManyRequests {
        /// Seconds until a request would be allowed (`Retry-After`).
        retry_after: u64,
        /// The client kept going after repeated refusals: close its
        /// connection.
        disconnect: bool,
    },
    /// The client's request body broke a limit or the protocol: `413`,
    /// `408` or `400` (see [`crate::limits::BodyError`]); the connection is
    /// closed, as its request stream is no longer in a known state.
    #[error("{why}")]
    ClientBody {
        /// The status for the body's error.
        status: StatusCode,
        /// What happened, in one line.
        why: String,
    },
}

impl From<&BodyError> for ProxyError {
    fn from(e: &BodyError) -> ProxyError {
        ProxyError::ClientBody {
            status: e.status(),
            why: e.to_string(),
        }
    }
}

impl ProxyError {
    /// The status code a client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            // Nothing reached any backend: the service is unavailable (as
            // HAProxy answers), not a bad gateway.
            ProxyError::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Refused(status, _) => *status,
            ProxyError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ClientBody { status, .. } => *status,
        }
    }

    /// No connection to `addr` could be had for the attempt (`outcome`: a
    /// connect failure, or our own cap on connections); `why` is the error
    /// chain.
    pub fn connect(addr: SocketAddr, why: String, outcome: Outcome) -> ProxyError {
        let reason = match outcome {
            Outcome::Saturated => {
                "no backend could take the request: every connection to it is busy"
            }
            Outcome::ConnectFailed { refused: true } => {
                "could not connect to a backend: connection refused"
            }
            _ => "could not connect to a backend: it did not accept the connection in time",
        };
        ProxyError::Connect { addr, why, reason }
    }

    /// The backend at `addr` failed the exchange (`outcome`) after the
    /// request went out; `why` is the error chain.
    pub fn upstream(addr: SocketAddr, why: String, outcome: Outcome) -> ProxyError {
        let reason = match outcome {
            Outcome::Reset => "the backend closed the connection before answering",
            Outcome::Protocol => "the backend's answer was not valid HTTP/1.1",
            Outcome::Client => "the request broke off before the backend answered",
            _ => "the backend failed before answering",
        };
        ProxyError::Upstream { addr, why, reason }
    }

    /// The backend at `addr` answered `101 Switching Protocols` to a request
    /// that asked for no upgrade: a protocol error (RFC 9110 §15.2.2).
    pub fn switched_unasked(addr: SocketAddr) -> ProxyError {
        ProxyError::Upstream {
            addr,
            why: "answered 101 Switching Protocols to a request that asked for no upgrade".into(),
            reason: "the backend switched protocols though the request asked for no upgrade",
        }
    }

    /// What the client is told, in one line: what happened, without the
    /// backend's address or the error chain.
    pub fn reason(&self) -> String {
        match self {
            ProxyError::NoBackend
            | ProxyError::Refused(..)
            | ProxyError::TooManyRequests { .. }
            | ProxyError::ClientBody { .. } => self.to_string(),
            ProxyError::Connect { reason, .. } | ProxyError::Upstream { reason, .. } => {
                (*reason).to_owned()
            }
            ProxyError::Timeout { after, .. } => format!(
                "the backend did not answer within {}",
                humantime::format_duration(*after)
            ),
        }
    }

    /// Logs the details the client is not told (the backend's address and
    /// the error chain): a failed backend at `warn`, what is not a
    /// backend's doing at `debug`.
    pub fn log(&self, peer: SocketAddr) {
        match self {
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Timeout { .. } => {
                tracing::warn!(client = %peer, "{}: {self}", self.status());
            }
            ProxyError::NoBackend
            | ProxyError::Refused(..)
            | ProxyError::TooManyRequests { .. }
            | ProxyError::ClientBody { .. } => {
                tracing::debug!(client = %peer, "{}: {self}", self.status());
            }
        }
    }

    /// The response: the status and [`ProxyError::reason`] as one line of
    /// text.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = format!("{}\n", self.reason());
        let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(body))));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let close = match self {
            ProxyError::NoBackend => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                false
            }
            ProxyError::TooManyRequests {
                retry_after,
                disconnect,
            } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                disconnect
            }
            ProxyError::ClientBody { .. } => true,
            _ => false,
        };
        if close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp.extensions_mut().insert(CloseConnection);
        }
        resp
    }
}
