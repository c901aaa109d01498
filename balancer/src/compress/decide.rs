//! [`decide`]: whether a response is compressed, as one pure function of the
//! request method, what the client accepts, and the response head. Each rule
//! is a row of the table test below.

use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};

use super::headers::elements;
use super::{Accepted, Encoding, Settings};

/// What to do with one response. The proxy passes it to
/// [`rewrite_headers`](super::rewrite_headers) and, for `Compress`, wraps the
/// body in [`Compressed`](super::Compressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Compress the body with this coding.
    Compress(Encoding),
    /// Send the body as it is. `vary` says whether to add
    /// `Vary: Accept-Encoding` anyway: the response could have been
    /// compressed for another client, so a cache must key on the header.
    PassThrough {
        /// Add `Vary: Accept-Encoding`.
        vary: bool,
    },
}

/// Decides compression when the response head arrives. It does not allocate
/// and reads nothing but its arguments.
///
/// A response is eligible when compression is on (`settings.encodings` not
/// empty) and all of these hold:
/// - the request is not `CONNECT` (a tunnel);
/// - the status is 200, 201, 202 or 203. A `304` is checked too, but only for
///   `Vary`, which it must repeat from the `200` (RFC 9110 §15.4.5). This
///   excludes 1xx (so `101` upgrades), 204, 206 and every 3xx, 4xx and 5xx;
/// - there is no `Content-Encoding` other than `identity`, so nothing is
///   compressed twice;
/// - there is no `Content-Range`;
/// - there is no `Cache-Control: no-transform` among the directives;
/// - `Content-Type` matches one of `settings.types`.
///
/// An eligible response is compressed when the client accepted one of our
/// codings, the request is not `HEAD`, the status is not `304`, and its
/// `Content-Length`, when present and valid, is at least `settings.min_size`
/// (unknown length is compressed). Otherwise it passes through with
/// `vary: true`: the contract gives every uncompressed response of a
/// compressible type `Vary`, and a larger body of the same resource would be
/// compressed. An ineligible response passes
/// through with `vary: false`, because no client would get it compressed.
/// `HEAD` gets the `Vary` its `GET` would get.
pub fn decide(
    method: &Method,
    accepted: Accepted,
    status: StatusCode,
    resp_headers: &HeaderMap,
    settings: &Settings,
) -> Decision {
    const NO: Decision = Decision::PassThrough { vary: false };
    let has_body = matches!(status.as_u16(), 200..=203);
    let eligible = !settings.encodings.is_empty()
        && method != Method::CONNECT
        && (has_body || status == StatusCode::NOT_MODIFIED)
        && !already_encoded(resp_headers)
        && !resp_headers.contains_key(CONTENT_RANGE)
        && !no_transform(resp_headers)
        && compressible_type(resp_headers, settings);
    if !eligible {
        return NO;
    }
    match accepted.encoding() {
        Some(encoding)
            if has_body
                && method != Method::HEAD
                && !too_small(resp_headers, settings.min_size)
                && settings.encodings.contains(&encoding) =>
        {
            Decision::Compress(encoding)
        }
        _ => Decision::PassThrough { vary: true },
    }
}

/// A `Content-Encoding` other than `identity` is present.
fn already_encoded(headers: &HeaderMap) -> bool {
    elements(headers, CONTENT_ENCODING).any(|coding| !coding.eq_ignore_ascii_case(b"identity"))
}

/// `Cache-Control` has a `no-transform` directive (RFC 9111 §5.2.2.6).
fn no_transform(headers: &HeaderMap) -> bool {
    elements(headers, CACHE_CONTROL).any(|directive| {
        let name = directive.split(|&b| b == b'=').next().unwrap_or_default();
        name.trim_ascii().eq_ignore_ascii_case(b"no-transform")
    })
}

fn compressible_type(headers: &HeaderMap, settings: &Settings) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    settings
        .types
        .iter()
        .any(|pattern| pattern.matches(content_type.as_bytes()))
}

/// A valid `Content-Length` below `min_size`. A missing or unparsable length
/// counts as unknown, and the body is compressed as it streams.
fn too_small(headers: &HeaderMap, min_size: u64) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len < min_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{accepted, TypePattern};
    use http::header::ACCEPT_ENCODING;
    use Encoding::{Br, Gzip};

    fn settings() -> Settings {
        let types = [
            "text/*",
            "application/json",
            "application/javascript",
            "image/svg+xml",
        ];
        Settings {
            encodings: vec![Gzip, Br],
            level: 6,
            min_size: 1024,
            types: types
                .iter()
                .map(|t| t.parse::<TypePattern>().expect("valid"))
                .collect(),
        }
    }

    const GZ: Decision = Decision::Compress(Gzip);
    const VARY: Decision = Decision::PassThrough { vary: true };
    const NO: Decision = Decision::PassThrough { vary: false };

    /// One row: (rule, method, Accept-Encoding or None, status, response headers, expected).
    #[rustfmt::skip]
    type Row = (&'static str, Method, Option<&'static str>, u16, &'static [(&'static str, &'static str)], Decision);

    #[test]
    fn decision_table() {
        const HTML: (&str, &str) = ("content-type", "text/html");
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("baseline: 200 text/html, unknown length", Method::GET, Some("gzip"), 200, &[HTML], GZ),
            ("br preferred by q", Method::GET, Some("gzip;q=0.5, br"), 200, &[HTML], Decision::Compress(Br)),
            ("no Accept-Encoding", Method::GET, None, 200, &[HTML], VARY),
            ("gzip;q=0", Method::GET, Some("gzip;q=0"), 200, &[HTML], VARY),
            ("identity;q=0 and nothing else", Method::GET, Some("identity;q=0"), 200, &[HTML], VARY),
            ("201", Method::POST, Some("gzip"), 201, &[HTML], GZ),
            ("202", Method::POST, Some("gzip"), 202, &[HTML], GZ),
            ("203", Method::GET, Some("gzip"), 203, &[HTML], GZ),
            ("101 upgrade", Method::GET, Some("gzip"), 101, &[HTML, ("upgrade", "websocket")], NO),
            ("103 early hints", Method::GET, Some("gzip"), 103, &[HTML], NO),
            ("204", Method::GET, Some("gzip"), 204, &[HTML], NO),
            ("206 range", Method::GET, Some("gzip"), 206, &[HTML, ("content-range", "bytes 0-9/100")], NO),
            ("Content-Range on 200", Method::GET, Some("gzip"), 200, &[HTML, ("content-range", "bytes 0-9/100")], NO),
            ("304 eligible: Vary only", Method::GET, Some("gzip"), 304, &[HTML], VARY),
            ("304 without type", Method::GET, Some("gzip"), 304, &[], NO),
            ("301", Method::GET, Some("gzip"), 301, &[HTML], NO),
            ("404", Method::GET, Some("gzip"), 404, &[HTML], NO),
            ("500", Method::GET, Some("gzip"), 500, &[HTML], NO),
            ("HEAD: never compressed, Vary as GET", Method::HEAD, Some("gzip"), 200, &[HTML], VARY),
            ("CONNECT tunnel", Method::CONNECT, Some("gzip"), 200, &[HTML], NO),
            ("already gzip", Method::GET, Some("gzip"), 200, &[HTML, ("content-encoding", "gzip")], NO),
            ("already br", Method::GET, Some("gzip"), 200, &[HTML, ("content-encoding", "br")], NO),
            ("identity counts as none", Method::GET, Some("gzip"), 200, &[HTML, ("content-encoding", "Identity")], GZ),
            ("empty Content-Encoding as none", Method::GET, Some("gzip"), 200, &[HTML, ("content-encoding", "")], GZ),
            ("no-transform", Method::GET, Some("gzip"), 200, &[HTML, ("cache-control", "no-transform")], NO),
            ("no-transform among others", Method::GET, Some("gzip"), 200, &[HTML, ("cache-control", "public, max-age=60, No-Transform")], NO),
            ("no-transform on 2nd line", Method::GET, Some("gzip"), 200, &[HTML, ("cache-control", "public"), ("cache-control", "no-transform")], NO),
            ("other cache-control", Method::GET, Some("gzip"), 200, &[HTML, ("cache-control", "public, max-age=60, no-transformer")], GZ),
            ("type with charset", Method::GET, Some("gzip"), 200, &[("content-type", "text/plain; charset=utf-8")], GZ),
            ("type case-insensitive", Method::GET, Some("gzip"), 200, &[("content-type", "Application/JSON")], GZ),
            ("exact type", Method::GET, Some("gzip"), 200, &[("content-type", "application/javascript")], GZ),
            ("svg", Method::GET, Some("gzip"), 200, &[("content-type", "image/svg+xml")], GZ),
            ("image not listed", Method::GET, Some("gzip"), 200, &[("content-type", "image/png")], NO),
            ("no Content-Type", Method::GET, Some("gzip"), 200, &[], NO),
            ("malformed Content-Type", Method::GET, Some("gzip"), 200, &[("content-type", "text")], NO),
            ("length min-1: Vary only", Method::GET, Some("gzip"), 200, &[HTML, ("content-length", "1023")], VARY),
            ("length min", Method::GET, Some("gzip"), 200, &[HTML, ("content-length", "1024")], GZ),
            ("length 0: Vary only", Method::GET, Some("gzip"), 200, &[HTML, ("content-length", "0")], VARY),
            ("length large", Method::GET, Some("gzip"), 200, &[HTML, ("content-length", "10000000")], GZ),
            ("length small, client refuses", Method::GET, None, 200, &[HTML, ("content-length", "10")], VARY),
            ("length unparsable = unknown", Method::GET, Some("gzip"), 200, &[HTML, ("content-length", "lots")], GZ),
            ("not compressible, no Vary", Method::GET, None, 200, &[("content-type", "image/png")], NO),
        ];
        let settings = settings();
        for (rule, method, accept, status, headers, want) in rows {
            let mut request = HeaderMap::new();
            if let Some(accept) = accept {
                request.insert(ACCEPT_ENCODING, accept.parse().expect("value"));
            }
            let mut response = HeaderMap::new();
            for &(name, value) in headers {
                response.append(
                    http::HeaderName::from_static(name),
                    value.parse().expect("value"),
                );
            }
            let status = StatusCode::from_u16(status).expect("status");
            let got = decide(
                &method,
                accepted(&request, &settings),
                status,
                &response,
                &settings,
            );
            assert_eq!(got, want, "{rule}");
        }
    }

    #[test]
    fn compression_off() {
        let mut off = settings();
        off.encodings.clear();
        let mut response = HeaderMap::new();
        response.insert(CONTENT_TYPE, "text/html".parse().expect("value"));
        let mut request = HeaderMap::new();
        request.insert(ACCEPT_ENCODING, "gzip".parse().expect("value"));
        let accepted_gzip = accepted(&request, &settings());
        let got = decide(&Method::GET, accepted_gzip, StatusCode::OK, &response, &off);
        assert_eq!(got, NO, "off: no compression and no Vary");
    }

    #[test]
    fn accepted_coding_dropped_from_settings_is_not_used() {
        // A reload between request and response head removed gzip.
        let mut request = HeaderMap::new();
        request.insert(ACCEPT_ENCODING, "gzip".parse().expect("value"));
        let accepted_gzip = accepted(&request, &settings());
        let mut now = settings();
        now.encodings = vec![Br];
        let mut response = HeaderMap::new();
        response.insert(CONTENT_TYPE, "text/html".parse().expect("value"));
        let got = decide(&Method::GET, accepted_gzip, StatusCode::OK, &response, &now);
        assert_eq!(got, VARY);
    }
}
