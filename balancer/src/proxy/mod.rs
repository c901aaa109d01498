//! One request, end to end: pick a backend, rewrite the request, forward
//! it, retry where the contract allows (and the retry budget grants), and
//! shape the response (hop-by-hop headers, compression, the in-flight guard
//! riding in the body). Each attempt is classified once, as an
//! [`Outcome`], and reported once, through [`Pool::report`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;

use crate::access_log::{Logged, Record};
pub use crate::body::{Guarded, ProxyBody};
use crate::compress;
use crate::conns;
use crate::decisions::Asked;
use crate::error::ProxyError;
use crate::error_chain::error_chain;
use crate::host;
use crate::limits;
use crate::limits::body::BodyLimits;
use crate::limits::tunnel::ClientUpgrade;
use crate::listener::ConnInfo;
use crate::outcome::Outcome;
use crate::pool::{Pool, Tried};
use crate::request_body::{BodySlot, SlotBody, UpstreamBody};
use crate::tls::TlsInfo;

mod respond;
mod rewrite;

use self::respond::respond;
pub use self::rewrite::strip_hop_by_hop;
use self::rewrite::{add_forwarded, is_upgrade, origin_form};

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

/// The hyper service function: every outcome is a response.
pub async fn serve(
    pool: Arc<Pool>,
    req: Request<Incoming>,
    peer: Arc<Peer>,
) -> Result<Response<ProxyBody>, Infallible> {
    let arrived = tokio::time::Instant::now();
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

async fn forward(
    pool: &Pool,
    mut req: Request<Incoming>,
    peer: &Peer,
    log: &mut Option<Box<Record>>,
    arrived: tokio::time::Instant,
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
    let (mut parts, body) = req.into_parts();

    let accepted = compress::accepted(&parts.headers, &config.compression);
    let host = host::settle(&parts.uri, &mut parts.headers)?;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    add_forwarded(&mut parts.headers, peer, host);
    // Without one from the client (HTTP/1.0), each attempt names its own
    // backend.
    let client_host = parts.headers.contains_key(header::HOST);
    let target = origin_form(&parts.uri);
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    let has_body = !body.is_end_stream();
    let body_limits = BodyLimits {
        max: config.limits.max_request_body,
        stall: config.timeouts.client_body,
    };
    if has_body {
        limits::body::check_length(&body, body_limits.max, &pool.limiter.rejected)
            .map_err(|e| ProxyError::from(&e))?;
    }
    // A body is paced by the client: such a request is no measure of the
    // host's speed.
    let path = target.path_and_query().map_or("/", PathAndQuery::as_str);
    let class = (!has_body).then(|| pool.class_of(&parts.method, path));
    let mut pending = has_body.then_some(body);
    let settings = conns::Settings {
        connect: config.timeouts.connect,
        max: config.limits.max_conns_per_backend,
    };

    let mut rng = fastrand::Rng::new();
    let mut tried = Tried::default();
    let mut last_error = ProxyError::NoBackend;
    let attempts = config.balance.retries.saturating_add(1);
    pool.budget.deposit();
    for attempt in 1..=attempts {
        let asked = Asked {
            method: &parts.method,
            target: path,
            attempt,
        };
        let Some(i) = pool.choose_for(&snap, &tried, &mut rng, Some(asked)) else {
            if let Some(record) = log {
                record.none_left();
            }
            break;
        };
        if attempt > 1 && !pool.budget.try_retry(config.balance.retry_budget) {
            tracing::debug!("retry budget spent: answering with the last error");
            break;
        }
        tried.add(i);
        let backend = &snap.backends[i];
        let mut guard = backend.start_request(class);
        if let Some(record) = log {
            let strategy = config.balance.strategy.name();
            let panic = pool.panicking();
            guard.report_time_to(record.attempt(backend.addr, attempt, strategy, panic));
        }

        let slot = pending
            .take()
            .map(|b| BodySlot::new(b, body_limits, &pool.limiter));
        let mut out = Request::new(match &slot {
            Some(s) => UpstreamBody::Slot(SlotBody::new(Arc::clone(s))),
            None => UpstreamBody::Empty,
        });
        *out.method_mut() = parts.method.clone();
        *out.version_mut() = Version::HTTP_11;
        *out.uri_mut() = target.clone();
        // A request that fails before it is written comes back whole; the
        // headers are copied only for a retry after one that went out.
        let may_resend = idempotent && !has_body && attempt < attempts;
        *out.headers_mut() = if may_resend {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        if !client_host {
            out.headers_mut()
                .insert(header::HOST, backend.host_header.clone());
        }

        let timeout = config.timeouts.request;
        let wait = slot.as_deref().map(|s| &s.wait);
        let sent = limits::body::within(timeout, wait, async {
            if upgrade {
                backend
                    .conns
                    .send_upgrade(settings, out)
                    .await
                    .map(|r| (r, None))
            } else {
                backend
                    .conns
                    .send(settings, out)
                    .await
                    .map(|(r, l)| (r, Some(l)))
            }
        })
        .await;
        // A body hyper never started to read can go to another backend.
        pending = slot.and_then(|s| s.take());
        let body_sent = has_body && pending.is_none();

        let err = match sent {
            Ok(Ok((resp, _))) if !upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // Dropping the response and its lease closes the connection.
                let e = ProxyError::switched_unasked(backend.addr);
                pool.report(&snap, i, Outcome::Protocol, Some(e.to_string()));
                last_error = e;
                if idempotent && !has_body {
                    continue;
                }
                break;
            }
            Ok(Ok((resp, lease))) => {
                pool.report(&snap, i, Outcome::Response(resp.status()), None);
                let timer = pool.requests.timer(resp.status(), arrived);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // A tunnel's life is not a request's time: counted now.
                    backend.metrics.total_time.observe(timer.finish());
                } else {
                    guard.time(timer);
                }
                return Ok(respond(
                    resp,
                    lease,
                    guard,
                    &parts.method,
                    accepted,
                    &config.compression,
                    client_upgrade,
                ));
            }
            Ok(Err(failed)) => failed,
            Err(_) => {
                let e = ProxyError::Timeout {
                    addr: backend.addr,
                    after: timeout,
                };
                pool.report(&snap, i, Outcome::Timeout, Some(e.to_string()));
                return Err(e);
            }
        };
        if let Some(back) = err.request {
            parts.headers = back.into_parts().0.headers;
            if !client_host {
                parts.headers.remove(header::HOST);
            }
        }
        let why = error_chain(&err.error);
        let outcome = Outcome::of_send_error(&err.error);
        pool.report(&snap, i, outcome, Some(why.clone()));
        if let Some(client) = limits::body::client_fault(&err.error) {
            return Err(client.into());
        }
        if let Outcome::ConnectFailed { .. } | Outcome::Saturated = outcome {
            last_error = ProxyError::connect(backend.addr, why, outcome);
            if !body_sent {
                continue;
            }
        } else {
            last_error = ProxyError::upstream(backend.addr, why, outcome);
        }
        if !idempotent || has_body {
            break;
        }
    }
    Err(last_error)
}
