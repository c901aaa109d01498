//! Why a request could not be proxied, and the status code and one-line
//! plain-text body each reason maps to — in one place.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::limits::{BodyError, CloseConnection};
use crate::proxy::ProxyBody;

/// A request the proxy answers itself, with an error status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every backend is down (or all were tried).
    #[error("no healthy backend is available")]
    NoBackend,
    /// The backend could not be reached and no other could be tried.
    #[error("could not connect to backend {addr}: {why}")]
    Connect {
        /// The backend.
        addr: SocketAddr,
        /// The connect error.
        why: String,
    },
    /// The backend failed after receiving the request and the request could
    /// not be retried (not idempotent, or it had a body).
    #[error("backend {addr} failed: {why}")]
    Upstream {
        /// The backend.
        addr: SocketAddr,
        /// What went wrong.
        why: String,
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

    /// The response: the status and this error as one line of text.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(format!("{self}\n")))));
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
