//! What one attempt at a backend came to. The proxy classifies each attempt
//! exactly once, into an [`Outcome`], and reports it through
//! [`crate::upstream::Upstream::report`] to [`crate::backend::Backend::report`]:
//! passive health (a refused connection marks a backend down), outlier
//! ejection and the error counters all read that one value, and nothing
//! else marks a backend.

use std::fmt;

use http::StatusCode;

use crate::conns::{ConnectError, SendError};

/// The result of one attempt, as far as the backend is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived (a 5xx status counts as a failure).
    Response(StatusCode),
    /// No connection was made: `refused` when nothing listens (the backend
    /// is down at once), otherwise a connect timeout or unreachable host.
    ConnectFailed {
        /// The connection was actively refused.
        refused: bool,
    },
    /// The connection broke after the request went out: reset, or closed
    /// before a whole response head.
    Reset,
    /// The backend answered with something that is not HTTP/1.1.
    Protocol,
    /// No response head within `timeouts.request`.
    Timeout,
    /// Every connection this balancer may open to the backend
    /// (`[limits] max_conns_per_backend`) stayed busy while the request
    /// waited: our limit, not the backend's failure.
    Saturated,
    /// The attempt failed through the client's fault (its request body
    /// broke off): it says nothing about the backend.
    Client,
}

impl Outcome {
    /// Classifies a failed exchange.
    pub fn of_send_error(err: &SendError) -> Outcome {
        let h = match err {
            SendError::Connect(ConnectError::Saturated { .. }) => return Outcome::Saturated,
            SendError::Connect(e) => {
                return Outcome::ConnectFailed {
                    refused: e.is_refused(),
                }
            }
            SendError::Http(h) => h,
        };
        if h.is_user() {
            Outcome::Client
        } else if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
            Outcome::Protocol
        } else {
            Outcome::Reset
        }
    }

    /// Whether this attempt counts against the backend for outlier
    /// ejection: 5xx responses, resets, protocol errors, timeouts and
    /// connect failures.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Response(status) => status.is_server_error(),
            Outcome::Client | Outcome::Saturated => false,
            _ => true,
        }
    }

    /// Whether this is a failed exchange (no usable response at all), as
    /// the backend's `errors` counter counts them; a 5xx is a response.
    pub fn is_error(self) -> bool {
        !matches!(
            self,
            Outcome::Response(_) | Outcome::Client | Outcome::Saturated
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Response(status) => write!(f, "answered {status}"),
            Outcome::ConnectFailed { refused: true } => f.write_str("connection refused"),
            Outcome::ConnectFailed { refused: false } => f.write_str("connect failed"),
            Outcome::Reset => f.write_str("connection reset or closed"),
            Outcome::Protocol => f.write_str("protocol error"),
            Outcome::Timeout => f.write_str("timed out"),
            Outcome::Client => f.write_str("client went away"),
            Outcome::Saturated => f.write_str("at its connection limit"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_counts_against_a_backend() {
        // (outcome, a failure for ejection, an error for the counter)
        let table = [
            (Outcome::Response(StatusCode::OK), false, false),
            (Outcome::Response(StatusCode::NOT_FOUND), false, false),
            (
                Outcome::Response(StatusCode::SWITCHING_PROTOCOLS),
                false,
                false,
            ),
            (
                Outcome::Response(StatusCode::INTERNAL_SERVER_ERROR),
                true,
                false,
            ),
            (
                Outcome::Response(StatusCode::SERVICE_UNAVAILABLE),
                true,
                false,
            ),
            (Outcome::ConnectFailed { refused: true }, true, true),
            (Outcome::ConnectFailed { refused: false }, true, true),
            (Outcome::Reset, true, true),
            (Outcome::Protocol, true, true),
            (Outcome::Timeout, true, true),
            (Outcome::Client, false, false),
            (Outcome::Saturated, false, false),
        ];
        for (outcome, failure, error) in table {
            assert_eq!(outcome.is_failure(), failure, "{outcome}");
            assert_eq!(outcome.is_error(), error, "{outcome}");
        }
    }
}
