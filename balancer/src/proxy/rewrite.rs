//! The request head as it goes upstream: the target in origin-form,
//! hop-by-hop headers stripped (RFC 9110 §7.6.1), `Host` kept and the
//! `X-Forwarded-*` headers set.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};

use crate::error::ProxyError;
use crate::host;
use crate::request_body::UpstreamBody;

use super::Peer;

/// The head every attempt at one request sends, rewritten once.
#[derive(Debug)]
pub(super) struct Head {
    /// The client's method.
    pub(super) method: Method,
    /// The target in origin-form.
    target: Uri,
    /// The rewritten headers; lent to an attempt that will not be resent
    /// (and back when that attempt comes back whole).
    headers: HeaderMap,
    /// Whether the client named the host (without one, HTTP/1.0, each
    /// attempt names its own backend).
    client_host: bool,
    /// An upgrade the client asked for, tunnelled.
    pub(super) upgrade: bool,
}

impl Head {
    /// The client's head, rewritten for the backends: one `Host` (from the
    /// authority for HTTP/2), hop-by-hop headers stripped, `X-Forwarded-*`
    /// set, the target in origin-form.
    pub(super) fn new(mut parts: Parts, peer: &Peer, upgrade: bool) -> Result<Head, ProxyError> {
        let host = host::settle(&parts.uri, &mut parts.headers)?;
        strip_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarded(&mut parts.headers, peer, host);
        Ok(Head {
            client_host: parts.headers.contains_key(header::HOST),
            target: origin_form(&parts.uri),
            method: parts.method,
            headers: parts.headers,
            upgrade,
        })
    }

    /// The host the request names, as sent (`None`: it names none).
    pub(super) fn host(&self) -> Option<&str> {
        self.headers.get(header::HOST).and_then(|h| h.to_str().ok())
    }

    /// The path without the query, as routes match it.
    pub(super) fn path_only(&self) -> &str {
        self.target.path()
    }

    /// The path and query, as the latency classes see it.
    pub(super) fn path(&self) -> &str {
        self.target
            .path_and_query()
            .map_or("/", PathAndQuery::as_str)
    }

    /// The request for one attempt at the backend whose `Host` is `host`,
    /// with `body`; `keep`: the attempt may be resent after it went out,
    /// so it gets a copy of the headers rather than the headers.
    pub(super) fn request(
        &mut self,
        body: UpstreamBody,
        host: &HeaderValue,
        keep: bool,
    ) -> Request<UpstreamBody> {
        let mut out = Request::new(body);
        *out.method_mut() = self.method.clone();
        *out.version_mut() = Version::HTTP_11;
        *out.uri_mut() = self.target.clone();
        *out.headers_mut() = if keep {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        if !self.client_host {
            out.headers_mut().insert(header::HOST, host.clone());
        }
        out
    }

    /// Takes the headers back from a request that came back whole (it
    /// failed before it was written).
    pub(super) fn restore(&mut self, back: Request<UpstreamBody>) {
        self.headers = back.into_parts().0.headers;
        if !self.client_host {
            self.headers.remove(header::HOST);
        }
    }
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

pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
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
    let ip = peer.forwarded_for().to_str().unwrap_or_default();
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
            headers.insert(XFF, peer.forwarded_for().clone());
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
    use std::net::SocketAddr;

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
