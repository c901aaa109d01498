//! One request, end to end: route it to its pool (the snapshot's
//! [`Router`](crate::router::Router)), pick a backend there, rewrite the
//! request, forward it, retry where the contract allows (and the retry budget grants), and
//! shape the response (hop-by-hop headers, compression, the in-flight guard
//! riding in the body). Each attempt is classified once, as an
//! [`Outcome`](crate::outcome::Outcome), and reported once, through
//! [`Upstream::report`].
//!
//! - `rewrite`: the head sent upstream (origin-form, `Host`, hop-by-hop
//!   headers, `X-Forwarded-*`);
//! - `retry`: whether a failed attempt may be followed by another;
//! - `attempt`: one attempt: the backend picked, the request sent, its
//!   outcome classified and reported;
//! - `respond`: the response shaped for the client.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::{Logged, Record};
pub use crate::body::{Guarded, ProxyBody};
use crate::compress;
use crate::error::ProxyError;
use crate::limits;
use crate::limits::body::BodyLimits;
pub use crate::peer::Peer;
use crate::pool::{Pool, Snapshot, Tried};
use crate::tunnel::ClientUpgrade;
use crate::upstream::Upstream;

mod attempt;
mod respond;
mod retry;
mod rewrite;

use self::retry::Retry;
pub use self::rewrite::strip_hop_by_hop;
use self::rewrite::{is_upgrade, Head};

/// The hyper service function: every outcome is a response.
pub async fn serve(
    pool: Arc<Pool>,
    req: Request<Incoming>,
    peer: Arc<Peer>,
) -> Result<Response<ProxyBody>, Infallible> {
    let arrived = Instant::now();
    let mut log = pool.access_log.begin(&req, peer.addr);
    let (resp, from_backend) = match forward(&pool, req, &peer, &mut log, arrived).await {
        Ok(resp) => (resp, true),
        Err(e) => {
            e.log(peer.addr);
            let resp = e.into_response();
            // The balancer's own answer: its body is whole already.
            pool.requests.record(resp.status(), arrived);
            (resp, false)
        }
    };
    Ok(match log {
        None => resp,
        Some(mut record) => {
            record.respond(resp.status(), from_backend);
            resp.map(|body| ProxyBody::Logged(Box::new(Logged::new(body, record))))
        }
    })
}

/// The request, through every attempt it gets: refused, redirected, or
/// sent upstream.
async fn forward(
    pool: &Pool,
    mut req: Request<Incoming>,
    peer: &Peer,
    log: &mut Option<Box<Record>>,
    arrived: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::Refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: this is a reverse proxy",
        ));
    }
    let snap = pool.snapshot();
    let config = &snap.config;
    if let Some(rate) = &config.limits.rate_per_ip {
        if let Some((retry_after, disconnect)) = pool.limiter.over_rate(rate, peer.addr) {
            return Err(ProxyError::TooManyRequests {
                retry_after,
                disconnect,
            });
        }
    }
    if let Some(redirect) = crate::redirect::to_https(config, peer, &req) {
        return Ok(redirect);
    }
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| ClientUpgrade {
        on: hyper::upgrade::on(&mut req),
        idle: config.timeouts.tunnel,
        limiter: Arc::clone(&pool.limiter),
        peer: peer.addr,
    });
    Exchange::new(pool, &snap, req, peer, client_upgrade, arrived)?
        .run(log)
        .await
}

/// One request on its way upstream: what all its attempts share.
struct Exchange<'a> {
    pool: &'a Pool,
    snap: &'a Snapshot,
    /// The pool the request's host and path route it to.
    upstream: &'a Upstream,
    /// The head every attempt sends.
    head: Head,
    /// The client's body, while no backend has started to read it.
    pending: Option<Incoming>,
    body_limits: BodyLimits,
    /// Whether a failed attempt may be followed by another.
    retry: Retry,
    /// The request's class for the latency signal; `None` for a request
    /// with a body, which is no measure of the host's speed (the client
    /// paces it).
    class: Option<u8>,
    /// The encodings the client accepts.
    accepted: compress::Accepted,
    /// The client's side of an upgrade it asked for, for the tunnel.
    client_upgrade: Option<ClientUpgrade>,
    /// When the request arrived, for its total time.
    arrived: Instant,
}

impl<'a> Exchange<'a> {
    /// Rewrites the head once for every attempt; refuses a body longer
    /// than the limit before any backend is contacted.
    fn new(
        pool: &'a Pool,
        snap: &'a Snapshot,
        req: Request<Incoming>,
        peer: &Peer,
        client_upgrade: Option<ClientUpgrade>,
        arrived: Instant,
    ) -> Result<Exchange<'a>, ProxyError> {
        let config = &snap.config;
        let (parts, body) = req.into_parts();
        let accepted = compress::accepted(&parts.headers, &config.compression);
        let head = Head::new(parts, peer, client_upgrade.is_some())?;
        let has_body = !body.is_end_stream();
        let body_limits = BodyLimits {
            max: config.limits.max_request_body,
            stall: config.timeouts.client_body,
        };
        if has_body {
            limits::body::check_length(&body, body_limits.max, &pool.limiter.rejected)
                .map_err(|e| ProxyError::from(&e))?;
        }
        let class = (!has_body).then(|| pool.class_of(&head.method, head.path()));
        Ok(Exchange {
            pool,
            snap,
            upstream: snap.route(head.host(), head.path_only()),
            retry: Retry::new(&head.method, has_body, config.balance.retries),
            head,
            pending: has_body.then_some(body),
            body_limits,
            class,
            accepted,
            client_upgrade,
            arrived,
        })
    }

    /// Attempts until one gets a response, the retry policy says stop, or
    /// no backend is left to try; then the last attempt's error.
    async fn run(
        mut self,
        log: &mut Option<Box<Record>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut rng = fastrand::Rng::new();
        let mut tried = Tried::default();
        let mut last_error = ProxyError::NoBackend;
        self.pool.budget.deposit();
        for attempt in 1..=self.retry.attempts {
            let Some(i) = self.pick(&mut tried, &mut rng, attempt, log) else {
                break;
            };
            match self.attempt(i, attempt, log).await {
                Ok(resp) => return Ok(resp),
                Err(failed) => {
                    last_error = failed.error;
                    if !self.retry.again(attempt, failed.failure) {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }
}
