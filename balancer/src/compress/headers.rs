//! Response head rewriting for a [`Decision`], and the list-header scanning
//! (`a, b;x=y`) that `accept.rs` and `decide.rs` share.

use http::header::{Entry, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::Decision;

/// The non-empty, trimmed elements of a comma-separated list header, over all
/// of its field lines (RFC 9110 §5.6.1). It does not allocate. A comma inside
/// a quoted string also splits. For the headers scanned here that can only
/// turn a compression into a pass-through, never the reverse.
pub(super) fn elements(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// Applies `decision` to the response head before it is sent.
///
/// - `Compress`: sets `Content-Encoding` and removes `Content-Length`, since
///   hyper then chunks (HTTP/1.1) or frames (h2) the body. It removes
///   `Accept-Ranges`, because byte ranges of the identity body mean nothing for
///   the compressed one. It merges `Accept-Encoding` into `Vary`. It turns a
///   strong `ETag` `"x"` into `W/"x"`: the compressed and identity bodies
///   differ byte for byte, so they share only a weak validator (RFC 9110
///   §8.8.1; nginx, HAProxy and Pingora do the same). A weak `ETag` stays as
///   it is. A malformed one is dropped, since it cannot be weakened and must
///   not validate the compressed bytes.
/// - `PassThrough { vary: true }`: merges `Accept-Encoding` into `Vary` only,
///   because another client would get a compressed body at this URL.
/// - `PassThrough { vary: false }`: nothing changes.
pub fn rewrite_headers(decision: &Decision, resp_headers: &mut HeaderMap) {
    match *decision {
        Decision::PassThrough { vary: false } => {}
        Decision::PassThrough { vary: true } => merge_vary(resp_headers),
        Decision::Compress(encoding) => {
            resp_headers.insert(
                CONTENT_ENCODING,
                HeaderValue::from_static(encoding.as_str()),
            );
            resp_headers.remove(CONTENT_LENGTH);
            resp_headers.remove(ACCEPT_RANGES);
            merge_vary(resp_headers);
            weaken_etags(resp_headers);
        }
    }
}

/// Adds `Accept-Encoding` to `Vary`, once. `Vary: *` already covers it.
fn merge_vary(headers: &mut HeaderMap) {
    let covered =
        elements(headers, VARY).any(|e| e == b"*" || e.eq_ignore_ascii_case(b"accept-encoding"));
    if covered {
        return;
    }
    const ADDED: HeaderValue = HeaderValue::from_static("Accept-Encoding");
    match headers.entry(VARY) {
        Entry::Vacant(entry) => {
            entry.insert(ADDED);
        }
        Entry::Occupied(mut entry) => {
            // Append to the last line, so a single `Vary` stays single.
            let Some(last) = entry.iter_mut().last() else {
                return;
            };
            let existing = last.as_bytes().trim_ascii();
            if existing.is_empty() {
                *last = ADDED;
                return;
            }
            let mut merged = Vec::with_capacity(existing.len() + 17);
            merged.extend_from_slice(existing);
            merged.extend_from_slice(b", Accept-Encoding");
            match HeaderValue::from_bytes(&merged) {
                Ok(value) => *last = value,
                Err(_) => entry.append(ADDED),
            }
        }
    }
}

/// Rewrites every `ETag` line for a compressed body: strong becomes weak, weak
/// stays, malformed goes.
fn weaken_etags(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = match headers.entry(ETAG) {
        Entry::Vacant(_) => return,
        Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
    };
    for value in values {
        let bytes = value.as_bytes();
        if let Some(tag) = bytes.strip_prefix(b"W/") {
            if is_opaque_tag(tag) {
                headers.append(ETAG, value);
            }
        } else if is_opaque_tag(bytes) {
            let mut weak = Vec::with_capacity(bytes.len() + 2);
            weak.extend_from_slice(b"W/");
            weak.extend_from_slice(bytes);
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.append(ETAG, weak);
            }
        }
    }
}

/// RFC 9110 §8.8.3 `opaque-tag`: `"` *etagc `"`.
fn is_opaque_tag(tag: &[u8]) -> bool {
    tag.len() >= 2
        && tag[0] == b'"'
        && tag[tag.len() - 1] == b'"'
        && tag[1..tag.len() - 1]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Encoding;

    fn map(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
            map.append(name, value.parse().expect("value"));
        }
        map
    }

    fn values(map: &HeaderMap, name: HeaderName) -> Vec<&str> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<bytes>"))
            .collect()
    }

    const GZIP: Decision = Decision::Compress(Encoding::Gzip);
    const VARY_ONLY: Decision = Decision::PassThrough { vary: true };
    const NOTHING: Decision = Decision::PassThrough { vary: false };

    #[test]
    fn vary_table() {
        // (decision, Vary lines before, Vary lines after)
        #[allow(clippy::type_complexity)]
        let rows: &[(Decision, &[&str], &[&str])] = &[
            (GZIP, &[], &["Accept-Encoding"]),
            (VARY_ONLY, &[], &["Accept-Encoding"]),
            (NOTHING, &[], &[]),
            (NOTHING, &["Origin"], &["Origin"]),
            (GZIP, &["Origin"], &["Origin, Accept-Encoding"]),
            (
                VARY_ONLY,
                &["Origin, Cookie"],
                &["Origin, Cookie, Accept-Encoding"],
            ),
            (GZIP, &["accept-encoding"], &["accept-encoding"]),
            (
                GZIP,
                &["Origin,ACCEPT-ENCODING"],
                &["Origin,ACCEPT-ENCODING"],
            ),
            (
                GZIP,
                &["Origin", "Accept-Encoding"],
                &["Origin", "Accept-Encoding"],
            ),
            (
                GZIP,
                &["Origin", "Cookie"],
                &["Origin", "Cookie, Accept-Encoding"],
            ),
            (GZIP, &["*"], &["*"]),
            (VARY_ONLY, &["Origin, *"], &["Origin, *"]),
            (GZIP, &[""], &["Accept-Encoding"]),
            (
                GZIP,
                &["Accept-Encoding-X"],
                &["Accept-Encoding-X, Accept-Encoding"],
            ),
        ];
        for (decision, before, after) in rows {
            let mut headers = map(&before.iter().map(|v| ("vary", *v)).collect::<Vec<_>>());
            rewrite_headers(decision, &mut headers);
            assert_eq!(values(&headers, VARY), *after, "{decision:?} {before:?}");
        }
    }

    #[test]
    fn etag_table() {
        // (ETag lines before, ETag lines after compression)
        let rows: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&[r#""abc""#], &[r#"W/"abc""#]),
            (&[r#"W/"abc""#], &[r#"W/"abc""#]),
            (&[r#""""#], &[r#"W/"""#]),
            (&["abc"], &[]),
            (&[r#""ab"c""#], &[]),
            (&[r#"W/abc"#], &[]),
            (&[r#"w/"abc""#], &[]),
            (&[r#""a""#, r#"W/"b""#], &[r#"W/"a""#, r#"W/"b""#]),
        ];
        for (before, after) in rows {
            let mut headers = map(&before.iter().map(|v| ("etag", *v)).collect::<Vec<_>>());
            rewrite_headers(&GZIP, &mut headers);
            assert_eq!(values(&headers, ETAG), *after, "{before:?}");
        }
    }

    #[test]
    fn etag_untouched_on_pass_through() {
        for decision in [VARY_ONLY, NOTHING] {
            let mut headers = map(&[("etag", r#""abc""#), ("content-length", "5000")]);
            rewrite_headers(&decision, &mut headers);
            assert_eq!(values(&headers, ETAG), [r#""abc""#]);
            assert_eq!(values(&headers, CONTENT_LENGTH), ["5000"]);
        }
    }

    #[test]
    fn compress_sets_encoding_and_drops_length_and_ranges() {
        for encoding in [Encoding::Gzip, Encoding::Br, Encoding::Zstd] {
            let mut headers = map(&[
                ("content-type", "text/html"),
                ("content-length", "5000"),
                ("accept-ranges", "bytes"),
                ("content-encoding", "identity"),
            ]);
            rewrite_headers(&Decision::Compress(encoding), &mut headers);
            assert_eq!(values(&headers, CONTENT_ENCODING), [encoding.as_str()]);
            assert!(!headers.contains_key(CONTENT_LENGTH));
            assert!(!headers.contains_key(ACCEPT_RANGES));
            assert_eq!(values(&headers, http::header::CONTENT_TYPE), ["text/html"]);
        }
    }
}
