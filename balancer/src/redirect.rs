//! `[tls] redirect_http = true`: the plain listener answers every request
//! with `308 Permanent Redirect` to the same host and path over
//! `https://` (the TLS listener's port unless it is 443), as nginx's
//! `return 308 https://$host$request_uri` does. `308` rather than `301`:
//! the method and body are kept.
//!
//! One path is let through: ACME HTTP-01 challenges
//! (`/.well-known/acme-challenge/`), so a backend answering them can keep
//! renewing the certificate (Caddy and Traefik exempt it the same way).

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::config::Config;
use crate::error::ProxyError;
use crate::peer::Peer;

/// Where ACME HTTP-01 challenges are fetched (RFC 8555 §8.3).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// The redirect `req` gets, when the config asks for one and it came in
/// on the plain listener; `None`: proxy it.
pub fn to_https<B>(config: &Config, peer: &Peer, req: &Request<B>) -> Option<Response<ProxyBody>> {
    if peer.tls.is_some() {
        return None;
    }
    let tls = config.tls.as_ref().filter(|t| t.redirect_http)?;
    if req.uri().path().starts_with(ACME_CHALLENGE) {
        return None;
    }
    let host = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Some(location) = host.and_then(|h| location(h, target, tls.listen.port())) else {
        return Some(
            ProxyError::Refused(
                StatusCode::BAD_REQUEST,
                "this address redirects to https and needs a valid Host header to do so",
            )
            .into_response(),
        );
    };
    let body = format!("moved to {}\n", location.to_str().unwrap_or_default());
    let mut resp = Response::new(ProxyBody::Full(Some(body.into())));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Some(resp)
}

/// `https://` + `host` without its port (and without userinfo) + `:port`
/// unless 443 + `target` (`/` for a target that is no path, such as `*`).
/// `None`: `host` is not a valid authority.
pub fn location(host: &str, target: &str, port: u16) -> Option<HeaderValue> {
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority.host();
    if name.is_empty() {
        return None;
    }
    let target = if target.starts_with('/') { target } else { "/" };
    let url = if port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{port}{target}")
    };
    HeaderValue::from_str(&url).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_keeps_host_and_target_and_names_the_tls_port() {
        for (host, target, port, want) in [
            (
                "example.com",
                "/a?b=1",
                443,
                Some("https://example.com/a?b=1"),
            ),
            ("example.com:8080", "/", 443, Some("https://example.com/")),
            (
                "example.com:8080",
                "/x",
                8443,
                Some("https://example.com:8443/x"),
            ),
            ("EXAMPLE.com", "/", 443, Some("https://EXAMPLE.com/")),
            ("127.0.0.1:80", "/p", 8443, Some("https://127.0.0.1:8443/p")),
            ("[::1]:8080", "/p", 8443, Some("https://[::1]:8443/p")),
            ("user@example.com", "/", 443, Some("https://example.com/")),
            ("example.com", "*", 443, Some("https://example.com/")),
            ("", "/", 443, None),
            ("bad host", "/", 443, None),
            ("example.com/evil", "/", 443, None),
        ] {
            let got = location(host, target, port);
            let got = got.as_ref().map(|v| v.to_str().unwrap());
            assert_eq!(got, want, "{host} {target} {port}");
        }
    }
}
