//! One request, end to end: pick a backend, rewrite the request, forward
//! it, retry where the contract allows (and the retry budget grants), and
//! shape the response (hop-by-hop headers, compression, the in-flight guard
//! riding in the body). Each attempt is classified once, as an
//! [`Outcome`], and reported once, through [`Pool::report`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;

use crate::access_log::{Logged, Record};
use crate::backend::InFlight;
pub use crate::body::{Guarded, ProxyBody};
use crate::compress::{self, Compressed, Decision};
use crate::conns::{self, Lease, ResponseBody};
use crate::decisions::Asked;
use crate::error::ProxyError;
use crate::error_chain::error_chain;
use crate::host;
use crate::limits::body::BodyLimits;
use crate::limits::tunnel::ClientUpgrade;
use crate::limits::{self, tunnel};
use crate::listener::ConnInfo;
use crate::outcome::Outcome;
use crate::pool::{Pool, Tried};
use crate::request_body::{BodySlot, SlotBody, UpstreamBody};
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

/// The request target as sent to a backend: origin-form (`/path?query`),
/// whatever form the client used (HTTP/2 and absolute-form requests carry
/// a scheme and authority, which `Host` conveys instead).
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() {
        return uri.clone();
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// Shapes the backend's response for the client.
fn respond(
    mut resp: Response<Incoming>,
    lease: Option<Lease>,
    mut guard: InFlight,
    method: &Method,
    accepted: compress::Accepted,
    settings: &compress::Settings,
    client_upgrade: Option<ClientUpgrade>,
) -> Response<ProxyBody> {
    if let Some(lease) = &lease {
        guard.sent(lease.sent_at);
    }
    guard.head_arrived(tokio::time::Instant::now());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let backend = hyper::upgrade::on(&mut resp);
            // Counted from now: the client's HTTP connection ends as soon
            // as the `101` is out.
            let slot = client.limiter.hold(client.peer);
            tokio::spawn(tunnel::run(client, slot, backend, guard));
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, ProxyBody::Full(None));
        }
    }
    let (mut parts, body) = resp.into_parts();
    let body = ResponseBody::new(body, lease);
    strip_hop_by_hop(&mut parts.headers, false);
    let decision = compress::decide(method, accepted, parts.status, &parts.headers, settings);
    compress::rewrite_headers(&decision, &mut parts.headers);
    if body.is_end_stream() {
        guard.finish();
    }
    let body = Guarded::new(body, guard);
    let body = match decision {
        Decision::Compress(encoding) => {
            ProxyBody::Compressed(Compressed::new(body, encoding, settings.level))
        }
        Decision::PassThrough { .. } => ProxyBody::Upstream(body),
    };
    Response::from_parts(parts, body)
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every
/// header it names, plus `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Proxy-Connection` and — unless this is an upgrade
/// being tunnelled — `Upgrade`. For an upgrade, `Connection: upgrade` is
/// put back so the next hop sees the handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of these: one pass over the names (standard
    // ones compare as integers) saves a hash lookup per name.
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(upgrade && n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether `name` may be a hop-by-hop header: one of the fixed list, or
/// `Connection` (which can name others).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Appends the client's address to `X-Forwarded-For` and sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host`; keeps (or, for HTTP/2,
/// creates from the authority) the client's `Host`.
fn add_forwarded(headers: &mut HeaderMap, peer: &Peer, host: Option<HeaderValue>) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    let ip = peer.forwarded_for.to_str().unwrap_or_default();
    let mut prior = headers.get_all(&XFF).iter().filter_map(|v| v.to_str().ok());
    let appended = match (prior.next(), prior.next()) {
        // The usual case, the client is the first hop: no formatting.
        (None, _) => None,
        (Some(one), None) => Some(format!("{one}, {ip}")),
        (Some(first), Some(second)) => {
            let mut all = format!("{first}, {second}");
            for more in prior {
                all.push_str(", ");
                all.push_str(more);
            }
            all.push_str(", ");
            all.push_str(ip);
            Some(all)
        }
    };
    match appended {
        None => {
            headers.insert(XFF, peer.forwarded_for.clone());
        }
        Some(value) => {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(XFF, v);
            }
        }
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if peer.tls.is_some() { "https" } else { "http" }),
    );
    if let Some(host) = host {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_are_removed_rfc9110_7_6_1() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["host", "x-end-to-end"]);
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_header_and_connection_token() {
        let mut h = headers(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_headers_append_the_client_and_keep_host() {
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut h = headers(&[("host", "shop.example"), ("x-forwarded-for", "203.0.113.1")]);
        let host = h.get("host").cloned();
        add_forwarded(&mut h, &Peer::new(peer), host);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["host"], "shop.example");

        let mut h = headers(&[("x-forwarded-for", "a"), ("x-forwarded-for", "b")]);
        add_forwarded(
            &mut h,
            &Peer::new("[::ffff:10.1.2.3]:1".parse().unwrap()),
            None,
        );
        assert_eq!(h["x-forwarded-for"], "a, b, 10.1.2.3");
        let mut h = headers(&[]);
        add_forwarded(&mut h, &Peer::new("[::1]:1".parse().unwrap()), None);
        assert_eq!(h["x-forwarded-for"], "::1");
        let mut h = headers(&[("x-forwarded-for", "a"), ("x-forwarded-for", "b")]);
        add_forwarded(&mut h, &Peer::new("10.1.2.3:1".parse().unwrap()), None);
        assert_eq!(h["x-forwarded-for"], "a, b, 10.1.2.3");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn requests_go_upstream_in_origin_form() {
        for (target, sent) in [
            ("/a?b=1", "/a?b=1"),
            ("http://api.example:8080/x?y", "/x?y"),
            ("http://api.example", "/"),
            ("*", "*"),
        ] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(origin_form(&uri).to_string(), sent, "{target}");
        }
    }

    #[test]
    fn http2_requests_get_a_host_from_their_authority() {
        let uri: Uri = "http://api.example:8080/x".parse().unwrap();
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &Peer::new("127.0.0.1:1".parse().unwrap()),
            crate::host::authority(&uri),
        );
        assert_eq!(h["host"], "api.example:8080");
        assert_eq!(h["x-forwarded-host"], "api.example:8080");
    }
}
