//! Parsing what a request says in its path and query string: numbers with
//! their limits, and the header-shaping parameters of the generated
//! bodies. Every failure is a one-line message for a `400`.

use std::borrow::Cow;

use http::header::{HeaderName, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, VARY};
use http::{HeaderMap, HeaderValue};

/// A raw query string, looked up by parameter name without allocating.
#[derive(Clone, Copy)]
pub struct Query<'a>(&'a str);

impl<'a> Query<'a> {
    /// Wraps the query part of a URI (`None` when there is none).
    pub fn new(raw: Option<&'a str>) -> Self {
        Query(raw.unwrap_or(""))
    }

    /// All `name=value` pairs in order, values still percent-encoded.
    fn pairs(self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    }

    /// The first value of `name`, still percent-encoded.
    pub fn get(self, name: &str) -> Option<&'a str> {
        self.pairs().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The required number `name`, at most `max`.
    pub fn number(self, name: &str, max: u64, usage: &str) -> Result<u64, String> {
        match self.get(name) {
            Some(raw) => number(name, raw, max),
            None => Err(format!("missing {name}: expected {usage}")),
        }
    }

    /// The optional number `name`, at most `max`.
    pub fn optional_number(self, name: &str, max: u64) -> Result<Option<u64>, String> {
        self.get(name).map(|raw| number(name, raw, max)).transpose()
    }
}

/// Parses a whole decimal number from 0 to `max`; `what` names it in the
/// error.
pub fn number(what: &str, raw: &str, max: u64) -> Result<u64, String> {
    let too_big = || format!("{what} must be at most {max}, got {raw:?}");
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{what} must be a whole number from 0 to {max}, got {raw:?}"
        ));
    }
    match raw.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(too_big()),
    }
}

/// Percent-decodes `%XX` escapes; anything else, `+` included, stays as is
/// (so `content_type=image/svg+xml` works unescaped).
pub fn decode(raw: &str) -> Cow<'_, [u8]> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw.as_bytes());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// Query parameters that set a response header verbatim.
const HEADER_PARAMS: [(&str, HeaderName); 5] = [
    ("etag", ETAG),
    ("cache_control", CACHE_CONTROL),
    ("content_encoding", CONTENT_ENCODING),
    ("content_type", CONTENT_TYPE),
    ("vary", VARY),
];

/// How the query asks a generated response's headers to look.
#[derive(Default)]
pub struct Shape {
    /// Headers to set, overriding the endpoint's own.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `chunked=1`: leave `Content-Length` out.
    pub chunked: bool,
}

impl Shape {
    /// Reads the header-shaping parameters; other parameters are ignored.
    pub fn parse(query: Query<'_>) -> Result<Shape, String> {
        let mut shape = Shape::default();
        for (name, raw) in query.pairs() {
            if name == "chunked" {
                shape.chunked = match raw {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("chunked must be 1 or 0, got {raw:?}")),
                };
            } else if let Some((_, header)) = HEADER_PARAMS.iter().find(|(p, _)| *p == name) {
                let value = HeaderValue::from_bytes(&decode(raw))
                    .map_err(|_| format!("{name}={raw:?} is not a valid header value"))?;
                shape.headers.push((header.clone(), value));
            }
        }
        Ok(shape)
    }

    /// Sets the requested headers on a response.
    pub fn apply(self, headers: &mut HeaderMap) {
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number("N", "0", 10), Ok(0));
        assert_eq!(number("N", "10", 10), Ok(10));
        assert!(number("N", "11", 10).is_err());
        assert!(number("N", "", 10).is_err());
        assert!(number("N", "abc", 10).is_err());
        assert!(number("N", "-1", 10).is_err());
        assert!(number("N", "+1", 10).is_err());
        assert!(number("N", "99999999999999999999999", 10).is_err());
    }

    #[test]
    fn query_lookup() {
        let q = Query::new(Some("a=1&b=&c&a=2"));
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), Some(""));
        assert_eq!(q.get("c"), Some(""));
        assert_eq!(q.get("d"), None);
        assert_eq!(q.number("a", 5, "?a=N"), Ok(1));
        assert!(q.number("d", 5, "?d=N").is_err());
        assert_eq!(q.optional_number("d", 5), Ok(None));
        assert_eq!(Query::new(None).get("a"), None);
    }

    #[test]
    fn decoding() {
        assert_eq!(&*decode("plain"), b"plain");
        assert_eq!(&*decode("%22abc%22"), b"\"abc\"");
        assert_eq!(&*decode("image/svg+xml"), b"image/svg+xml");
        assert_eq!(&*decode("100%"), b"100%");
        assert_eq!(&*decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn shape() {
        let shape = Shape::parse(Query::new(Some(
            "etag=%22x%22&vary=Accept&chunked=1&other=5",
        )))
        .expect("valid");
        assert!(shape.chunked);
        let mut headers = HeaderMap::new();
        shape.apply(&mut headers);
        assert_eq!(headers[ETAG], "\"x\"");
        assert_eq!(headers[VARY], "Accept");
        assert!(Shape::parse(Query::new(Some("chunked=yes"))).is_err());
        assert!(Shape::parse(Query::new(Some("etag=%0A"))).is_err());
    }
}
