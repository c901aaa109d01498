//! Whether a failed attempt may be followed by another: a pure function of
//! the request (its method, whether it has a body, how many attempts it
//! gets) and of how the attempt failed. The retry budget is the other
//! gate: it is asked, once a backend is found for the next attempt, in
//! [`super::Exchange::pick`].

use http::Method;

/// How a failed attempt failed, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Nothing of the request was sent (no connection, or every one busy),
    /// and no backend started to read its body: any request may go to
    /// another backend.
    Unsent,
    /// The request may have reached the backend: only an idempotent
    /// request without a body may be sent again (RFC 9110 §9.2.2).
    Sent,
    /// No other attempt: the backend's answer did not come in time (a
    /// second backend would keep the client waiting as long again), or the
    /// client's body broke off (the client is answered for it).
    Final,
}

/// A request, as far as retrying it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retry {
    /// `GET`, `HEAD`, `OPTIONS`, `PUT` or `DELETE`.
    idempotent: bool,
    /// The client sent a body, which can be read only once.
    pub(super) has_body: bool,
    /// Attempts at most: `[balance] retries` + 1.
    pub(super) attempts: u32,
}

impl Retry {
    /// The policy for a `method` request, with a body or not, that may be
    /// tried `retries` more times.
    pub(super) fn new(method: &Method, has_body: bool, retries: u32) -> Retry {
        Retry {
            idempotent: matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            ),
            has_body,
            attempts: retries.saturating_add(1),
        }
    }

    /// Whether another attempt may follow attempt `attempt` (from 1),
    /// which failed as `failure`.
    pub(super) fn again(self, attempt: u32, failure: Failure) -> bool {
        attempt < self.attempts
            && match failure {
                Failure::Unsent => true,
                Failure::Sent => self.idempotent && !self.has_body,
                Failure::Final => false,
            }
    }

    /// Whether attempt `attempt` may be sent again even once it went out:
    /// then it gets a copy of the headers, kept for the next one (a
    /// request that fails before it is written comes back whole).
    pub(super) fn may_resend(self, attempt: u32) -> bool {
        self.again(attempt, Failure::Sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failed_attempts_are_retried() {
        use Failure::{Final, Sent, Unsent};
        // (method, has a body, retries, attempt that failed, how, again)
        let table = [
            // Nothing went out: any request, while attempts are left.
            (Method::GET, false, 2, 1, Unsent, true),
            (Method::POST, false, 2, 1, Unsent, true),
            (Method::POST, true, 2, 2, Unsent, true),
            (Method::POST, true, 2, 3, Unsent, false),
            (Method::GET, false, 0, 1, Unsent, false),
            // It may have gone out: idempotent and bodiless only.
            (Method::GET, false, 2, 1, Sent, true),
            (Method::HEAD, false, 2, 2, Sent, true),
            (Method::OPTIONS, false, 2, 1, Sent, true),
            (Method::PUT, false, 2, 1, Sent, true),
            (Method::DELETE, false, 2, 1, Sent, true),
            (Method::GET, false, 2, 3, Sent, false),
            (Method::PUT, true, 2, 1, Sent, false),
            (Method::POST, false, 2, 1, Sent, false),
            (Method::PATCH, false, 2, 1, Sent, false),
            (
                Method::from_bytes(b"PURGE").unwrap(),
                false,
                2,
                1,
                Sent,
                false,
            ),
            // A timeout or the client's fault: never.
            (Method::GET, false, 2, 1, Final, false),
            (Method::POST, true, 2, 1, Final, false),
            // `retries` at its largest does not overflow.
            (Method::GET, false, u32::MAX, 7, Sent, true),
        ];
        for (method, body, retries, attempt, failure, again) in table {
            let retry = Retry::new(&method, body, retries);
            assert_eq!(
                retry.again(attempt, failure),
                again,
                "{method} body={body} retries={retries} attempt={attempt} {failure:?}"
            );
        }
    }

    #[test]
    fn headers_are_kept_only_for_a_request_that_may_be_resent() {
        let get = Retry::new(&Method::GET, false, 2);
        assert_eq!(get.attempts, 3);
        assert!(get.may_resend(1) && get.may_resend(2));
        assert!(!get.may_resend(3), "the last attempt takes them");
        assert!(!Retry::new(&Method::POST, false, 2).may_resend(1));
        assert!(!Retry::new(&Method::PUT, true, 2).may_resend(1));
        assert!(!Retry::new(&Method::GET, false, 0).may_resend(1));
    }
}
