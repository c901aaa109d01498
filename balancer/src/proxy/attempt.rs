//! One attempt at one backend: the backend picked ([`Exchange::pick`]),
//! the request sent, its outcome classified once ([`classify`]) and
//! reported once ([`Exchange::report`], the only place the proxy marks a
//! backend), the response shaped or the failure handed to the retry
//! policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::error::Elapsed;

use crate::access_log::Record;
use crate::backend::Backend;
use crate::body::ProxyBody;
use crate::conns::{self, Lease, SendError};
use crate::decisions::Asked;
use crate::error::ProxyError;
use crate::error_chain::error_chain;
use crate::limits::{self, BodyError};
use crate::outcome::Outcome;
use crate::pool::Tried;
use crate::request_body::{BodySlot, SlotBody, UpstreamBody};

use super::respond::respond;
use super::retry::Failure;
use super::Exchange;

/// A response head, with the connection lease of an HTTP/1.1 exchange.
type Answer = (Response<Incoming>, Option<Lease>);

/// What sending an attempt came to: an answer, a failed exchange, or no
/// answer in time.
type Sent = Result<Result<Answer, SendError>, Elapsed>;

/// A failed attempt: the error the client gets if no other attempt
/// follows, and how it failed, for the retry policy.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) error: ProxyError,
    pub(super) failure: Failure,
}

impl Exchange<'_> {
    /// The backend for attempt `attempt`, not one of those `tried`; `None`
    /// when none is left (the log says so) or, for a retry, the retry
    /// budget is spent.
    pub(super) fn pick(
        &self,
        tried: &mut Tried,
        rng: &mut fastrand::Rng,
        attempt: u32,
        log: &mut Option<Box<Record>>,
    ) -> Option<usize> {
        let asked = Asked {
            method: &self.head.method,
            target: self.head.path(),
            attempt,
        };
        let config = &self.snap.config;
        let record = Some((&self.pool.decisions, asked));
        let Some(i) = self.upstream.choose(config, tried, rng, record) else {
            if let Some(record) = log {
                record.none_left();
            }
            return None;
        };
        if attempt > 1
            && !self
                .pool
                .budget
                .try_retry(self.snap.config.balance.retry_budget)
        {
            tracing::debug!("retry budget spent: answering with the last error");
            return None;
        }
        tried.add(i);
        Some(i)
    }

    /// Attempt `attempt`, at backend `i`: the response, shaped for the
    /// client, or why it failed.
    pub(super) async fn attempt(
        &mut self,
        i: usize,
        attempt: u32,
        log: &mut Option<Box<Record>>,
    ) -> Result<Response<ProxyBody>, Failed> {
        let snap = self.snap;
        let backend = &self.upstream.backends[i];
        let mut guard = backend.start_request(self.class);
        if let Some(record) = log {
            let strategy = self.upstream.strategy.name();
            let panic = self.upstream.panicking();
            guard.report_time_to(record.attempt(backend.addr, attempt, strategy, panic));
        }
        let (sent, body_sent) = self.send(backend, attempt).await;
        let timeout = snap.config.timeouts.request;
        let (outcome, note, result) =
            classify(sent, self.head.upgrade, backend.addr, timeout, body_sent);
        self.report(i, outcome, note);
        let (resp, lease) = result?;
        let timer = self.pool.requests.timer(resp.status(), self.arrived);
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A tunnel's life is not a request's time: counted now.
            backend.metrics.total_time.observe(timer.finish());
        } else {
            guard.time(timer);
        }
        Ok(respond(
            resp,
            lease,
            guard,
            &self.head.method,
            self.accepted,
            &snap.config.compression,
            self.client_upgrade.take(),
        ))
    }

    /// The one call through which an attempt's outcome reaches its
    /// backend: passive health, outlier ejection and the counters read it.
    fn report(&self, i: usize, outcome: Outcome, note: Option<String>) {
        self.upstream.report(&self.snap.config, i, outcome, note);
    }

    /// Sends the request to `backend` within `timeouts.request` (extended
    /// by the time spent waiting on the client's body); takes back what did
    /// not go out: the body, when no backend started to read it, and the
    /// headers, when the request came back whole. With whether the body
    /// was (at least partly) sent.
    async fn send(&mut self, backend: &Backend, attempt: u32) -> (Sent, bool) {
        let config = &self.snap.config;
        let slot = self
            .pending
            .take()
            .map(|b| BodySlot::new(b, self.body_limits, &self.pool.limiter));
        let body = match &slot {
            Some(s) => UpstreamBody::Slot(SlotBody::new(Arc::clone(s))),
            None => UpstreamBody::Empty,
        };
        let keep = self.retry.may_resend(attempt);
        let out = self.head.request(body, &backend.host_header, keep);
        let settings = conns::Settings {
            connect: config.timeouts.connect,
            max: config.limits.max_conns_per_backend,
        };
        let upgrade = self.head.upgrade;
        let wait = slot.as_deref().map(|s| &s.wait);
        let sent = limits::body::within(config.timeouts.request, wait, async {
            if upgrade {
                let sent = backend.conns.send_upgrade(settings, out).await;
                sent.map(|r| (r, None))
            } else {
                let sent = backend.conns.send(settings, out).await;
                sent.map(|(r, l)| (r, Some(l)))
            }
        })
        .await;
        // A body hyper never started to read can go to another backend.
        self.pending = slot.and_then(|s| s.take());
        let body_sent = self.retry.has_body && self.pending.is_none();
        let sent = sent.map(|r| {
            r.map_err(|failed| {
                if let Some(back) = failed.request {
                    self.head.restore(back);
                }
                failed.error
            })
        });
        (sent, body_sent)
    }
}

/// What an attempt at the backend at `addr` came to, classified once: its
/// [`Outcome`] and the note for the backend's `last_error`, and either the
/// response or the failure. `upgrade`: the client asked for one;
/// `body_sent`: a backend started to read the request's body.
fn classify(
    sent: Sent,
    upgrade: bool,
    addr: SocketAddr,
    timeout: Duration,
    body_sent: bool,
) -> (Outcome, Option<String>, Result<Answer, Failed>) {
    let fail = |error: ProxyError, failure| Err(Failed { error, failure });
    let err = match sent {
        Ok(Ok((resp, _))) if !upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            // Dropping the response and its lease closes the connection.
            let e = ProxyError::switched_unasked(addr);
            return (
                Outcome::Protocol,
                Some(e.to_string()),
                fail(e, Failure::Sent),
            );
        }
        Ok(Ok((resp, lease))) => {
            return (Outcome::Response(resp.status()), None, Ok((resp, lease)));
        }
        Ok(Err(failed)) => failed,
        Err(_) => {
            let e = ProxyError::Timeout {
                addr,
                after: timeout,
            };
            return (
                Outcome::Timeout,
                Some(e.to_string()),
                fail(e, Failure::Final),
            );
        }
    };
    let why = error_chain(&err);
    let outcome = Outcome::of_send_error(&err);
    let failed = if let Some(client) = client_fault(&err) {
        fail(client.into(), Failure::Final)
    } else if let Outcome::ConnectFailed { .. } | Outcome::Saturated = outcome {
        let unsent = if body_sent {
            Failure::Sent
        } else {
            Failure::Unsent
        };
        fail(ProxyError::connect(addr, why.clone(), outcome), unsent)
    } else {
        fail(
            ProxyError::upstream(addr, why.clone(), outcome),
            Failure::Sent,
        )
    };
    (outcome, Some(why), failed)
}

/// The client-body error a failed exchange with a backend came from, if
/// it did: then the client is answered for it, and the backend is not
/// blamed.
fn client_fault(err: &SendError) -> Option<&BodyError> {
    match err {
        SendError::Http(h) => BodyError::find(h),
        SendError::Connect(_) => None,
    }
}
