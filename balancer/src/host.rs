//! Which host a request is for, settled once before it is forwarded.
//!
//! - A request with more than one `Host` header line is refused with `400`
//!   (RFC 9112 §3.2: a server MUST respond with 400 to a request with more
//!   than one `Host` field line): two hosts are an ambiguity a backend and
//!   this proxy could resolve differently, the stuff of cache poisoning and
//!   routing bypasses.
//! - A request whose target carries an authority (HTTP/2's `:authority`,
//!   HTTP/1.1's absolute-form) is for that authority, whatever its `Host`
//!   says: RFC 9113 §8.3.1 has an intermediary use `:authority` and
//!   replace `Host`, RFC 9112 §3.2.2 has a server ignore `Host` for an
//!   absolute-form target. The backend sees `Host` = the authority.

use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Uri};

use crate::error::ProxyError;

/// Settles the request's host: refuses a second `Host`, makes the target's
/// authority (if any) its `Host`, and returns the host to forward (`None`:
/// the request names none, as an HTTP/1.0 request may not).
pub fn settle(uri: &Uri, headers: &mut HeaderMap) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::Refused(
            StatusCode::BAD_REQUEST,
            "two Host headers: a request names its host once (RFC 9112 section 3.2)",
        ));
    }
    match authority(uri) {
        Some(host) => {
            headers.insert(header::HOST, host.clone());
            Ok(Some(host))
        }
        None => Ok(headers.get(header::HOST).cloned()),
    }
}

/// The target's authority as a `Host` value: `host[:port]`, without any
/// userinfo.
pub fn authority(uri: &Uri) -> Option<HeaderValue> {
    let a = uri.authority()?;
    let host = match a.port() {
        Some(port) => format!("{}:{port}", a.host()),
        None => a.host().to_owned(),
    };
    HeaderValue::from_str(&host).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// The host forwarded: `None` when refused, `Some(None)` when none.
    type Forwarded = Option<Option<&'static str>>;

    #[test]
    fn the_host_a_request_is_for() {
        // (target, Host lines, the host forwarded)
        let table: &[(&str, &[&str], Forwarded)] = &[
            ("/a", &["shop.example"], Some(Some("shop.example"))),
            ("/a", &[], Some(None)),
            ("/a", &["a.example", "b.example"], None),
            ("/a", &["a.example", "a.example"], None),
            (
                "http://auth.example:8080/a",
                &["evil.example"],
                Some(Some("auth.example:8080")),
            ),
            ("http://auth.example/a", &[], Some(Some("auth.example"))),
            (
                "http://user:pw@auth.example/a",
                &[],
                Some(Some("auth.example")),
            ),
            ("http://[::1]:81/", &["x"], Some(Some("[::1]:81"))),
            ("http://auth.example/a", &["a", "b"], None),
        ];
        for (target, hosts, want) in table {
            let uri: Uri = target.parse().unwrap();
            let mut h = headers(hosts);
            match (settle(&uri, &mut h), want) {
                (Err(e), None) => assert_eq!(e.status(), StatusCode::BAD_REQUEST),
                (Ok(got), Some(want)) => {
                    assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), *want, "{target}");
                    let sent: Vec<_> = h.get_all(header::HOST).iter().collect();
                    match want {
                        Some(w) => assert_eq!(sent, [w], "{target}"),
                        None => assert!(sent.is_empty()),
                    }
                }
                (got, want) => panic!("{target} {hosts:?}: {got:?}, want {want:?}"),
            }
        }
    }
}
