//! Request side: which of our codings the client accepts, read from every
//! `Accept-Encoding` field line (RFC 9110 §12.5.3) once, before the request is
//! forwarded. The parse does not allocate and never panics on client bytes.

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

use super::headers::elements;
use super::{Encoding, Settings};

/// The coding this client should get, chosen among `Settings::encodings` when
/// the request arrived. It is `Copy`, so the proxy can keep it across the
/// backend call without holding on to the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepted(Option<Encoding>);

impl Accepted {
    /// The client accepts none of our codings, or sent no `Accept-Encoding`.
    pub const NONE: Accepted = Accepted(None);

    /// The coding to use if the response turns out to be compressible.
    pub fn encoding(self) -> Option<Encoding> {
        self.0
    }
}

/// Weights in thousandths (`q=0.5` is 500), as given explicitly or by `*`.
#[derive(Default)]
struct Weights {
    gzip: Option<u16>,
    br: Option<u16>,
    zstd: Option<u16>,
    star: Option<u16>,
}

impl Weights {
    fn slot(&mut self, coding: &[u8]) -> Option<&mut Option<u16>> {
        let eq = |name: &[u8]| coding.eq_ignore_ascii_case(name);
        if eq(b"gzip") || eq(b"x-gzip") {
            Some(&mut self.gzip)
        } else if eq(b"br") {
            Some(&mut self.br)
        } else if eq(b"zstd") {
            Some(&mut self.zstd)
        } else if coding == b"*" {
            Some(&mut self.star)
        } else {
            None
        }
    }

    fn effective(&self, encoding: Encoding) -> u16 {
        let explicit = match encoding {
            Encoding::Gzip => self.gzip,
            Encoding::Br => self.br,
            Encoding::Zstd => self.zstd,
        };
        explicit.or(self.star).unwrap_or(0)
    }
}

/// Reads every `Accept-Encoding` line of a request and picks the coding the
/// response would get.
///
/// - Each element is `coding[;q=v]`. Codings are case-insensitive and spaces
///   are tolerated. Unknown codings and unknown parameters are ignored.
/// - `q` is 0..=1 with up to three decimals. A malformed `q` (`q=2`,
///   `q=0.5000`, `q=abc`, a bare `q`) counts as `q=0` for that element, so it
///   refuses that coding and never panics.
/// - `*` weights every coding that is not named explicitly, so `gzip;q=0, *`
///   refuses gzip. When a coding is named twice, the higher weight counts.
/// - `x-gzip` counts as `gzip` (RFC 9110 §8.4.1.3).
/// - The highest weight above 0 wins. Ties go to the earlier entry of
///   `settings.encodings`.
/// - With no `Accept-Encoding` line at all, nothing is compressed. The same
///   holds when nothing is acceptable, even with `identity;q=0`: the response
///   is then sent as it is, never as `406`.
pub fn accepted(req_headers: &HeaderMap, settings: &Settings) -> Accepted {
    if settings.encodings.is_empty() || !req_headers.contains_key(ACCEPT_ENCODING) {
        return Accepted::NONE;
    }
    let mut weights = Weights::default();
    for element in elements(req_headers, ACCEPT_ENCODING) {
        let mut parts = element.split(|&b| b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        let Some(slot) = weights.slot(coding) else {
            continue;
        };
        let mut q = 1000;
        for param in parts {
            let param = param.trim_ascii();
            let name = param.split(|&b| b == b'=').next().unwrap_or_default();
            if name.trim_ascii().eq_ignore_ascii_case(b"q") {
                q = param
                    .iter()
                    .position(|&b| b == b'=')
                    .and_then(|eq| parse_q(param[eq + 1..].trim_ascii()))
                    .unwrap_or(0);
                break;
            }
        }
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }
    let mut best: Option<(Encoding, u16)> = None;
    for &encoding in &settings.encodings {
        let q = weights.effective(encoding);
        if q > 0 && !matches!(best, Some((_, best_q)) if best_q >= q) {
            best = Some((encoding, q));
        }
    }
    Accepted(best.map(|(encoding, _)| encoding))
}

/// RFC 9110 §12.4.2 `qvalue`, in thousandths; `None` when malformed.
fn parse_q(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match int {
        b"1" if frac.iter().all(|&d| d == b'0') => Some(1000),
        b"0" => {
            let mut q = 0u16;
            for i in 0..3 {
                q = q * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
            }
            Some(q)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::{Br, Gzip, Zstd};

    fn settings(encodings: &[Encoding]) -> Settings {
        Settings {
            encodings: encodings.to_vec(),
            level: 6,
            min_size: 1024,
            types: vec![],
        }
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(ACCEPT_ENCODING, line.parse().expect("valid header value"));
        }
        map
    }

    #[test]
    fn accept_encoding_table() {
        const ALL: &[Encoding] = &[Gzip, Br, Zstd];
        const GZIP: &[Encoding] = &[Gzip];
        // (what it shows, Accept-Encoding lines or None for no header, server order, chosen)
        #[allow(clippy::type_complexity)]
        #[rustfmt::skip]
        let rows: &[(&str, Option<&[&str]>, &[Encoding], Option<Encoding>)] = &[
            ("no header: no compression", None, ALL, None),
            ("empty header: identity only", Some(&[""]), ALL, None),
            ("compression off", Some(&["gzip"]), &[], None),
            ("plain gzip", Some(&["gzip"]), GZIP, Some(Gzip)),
            ("case-insensitive token", Some(&["GZip"]), GZIP, Some(Gzip)),
            ("spaces tolerated", Some(&["  deflate ,  gzip  ; q = 0.5 "]), GZIP, Some(Gzip)),
            ("tab tolerated", Some(&["br,\tgzip"]), GZIP, Some(Gzip)),
            ("x-gzip is gzip", Some(&["x-gzip"]), GZIP, Some(Gzip)),
            ("unknown coding only", Some(&["deflate, compress"]), ALL, None),
            ("q=0 refuses", Some(&["gzip;q=0"]), GZIP, None),
            ("q=0.000 refuses", Some(&["gzip;q=0.000"]), GZIP, None),
            ("q=0.001 accepts", Some(&["gzip;q=0.001"]), GZIP, Some(Gzip)),
            ("q=1.000 accepts", Some(&["gzip;q=1.000"]), GZIP, Some(Gzip)),
            ("q=1. accepts", Some(&["gzip;q=1."]), GZIP, Some(Gzip)),
            ("Q upper-case name", Some(&["gzip;Q=0.5"]), GZIP, Some(Gzip)),
            ("q above 1 is malformed", Some(&["gzip;q=1.001"]), GZIP, None),
            ("q=2 is malformed", Some(&["gzip;q=2"]), GZIP, None),
            ("four decimals malformed", Some(&["gzip;q=0.5000"]), GZIP, None),
            ("letters malformed", Some(&["gzip;q=abc"]), GZIP, None),
            ("negative malformed", Some(&["gzip;q=-1"]), GZIP, None),
            ("leading dot malformed", Some(&["gzip;q=.5"]), GZIP, None),
            ("empty q malformed", Some(&["gzip;q="]), GZIP, None),
            ("bare q malformed", Some(&["gzip;q"]), GZIP, None),
            ("malformed q refuses over *", Some(&["gzip;q=x, *"]), GZIP, None),
            ("malformed element leaves others", Some(&["br;q=9, gzip"]), ALL, Some(Gzip)),
            ("other params ignored", Some(&["gzip;level=3"]), GZIP, Some(Gzip)),
            ("empty elements ignored", Some(&[",,gzip,,"]), GZIP, Some(Gzip)),
            ("* accepts anything", Some(&["*"]), ALL, Some(Gzip)),
            ("*;q=0 refuses all", Some(&["*;q=0"]), ALL, None),
            ("explicit q=0 beats *", Some(&["gzip;q=0, *;q=1"]), GZIP, None),
            ("explicit q=0 beats * (order)", Some(&["*;q=1, gzip;q=0"]), GZIP, None),
            ("explicit beats *;q=0", Some(&["*;q=0, gzip;q=1"]), GZIP, Some(Gzip)),
            ("* covers the unlisted", Some(&["gzip;q=0, *"]), ALL, Some(Br)),
            ("highest q wins", Some(&["gzip;q=0.5, br;q=0.8"]), ALL, Some(Br)),
            ("highest q wins over order", Some(&["br;q=0.9, zstd"]), ALL, Some(Zstd)),
            ("tie: server order", Some(&["zstd, br, gzip"]), ALL, Some(Gzip)),
            ("tie: server order br first", Some(&["gzip, br"]), &[Br, Gzip], Some(Br)),
            ("tie at q<1", Some(&["gzip;q=0.5, br;q=0.5"]), &[Br, Gzip], Some(Br)),
            ("only what we offer", Some(&["br, zstd"]), GZIP, None),
            ("all lines read", Some(&["br;q=0.1", "gzip"]), &[Br, Gzip], Some(Gzip)),
            ("q=0 on a later line", Some(&["gzip", "gzip;q=0"]), GZIP, Some(Gzip)),
            ("identity;q=0, nothing else", Some(&["identity;q=0"]), ALL, None),
            ("identity;q=0 with gzip", Some(&["identity;q=0, gzip"]), ALL, Some(Gzip)),
            ("garbage does not panic", Some(&[";;=;q=;,=,;q=0.;*;"]), ALL, None),
        ];
        for &(name, lines, encodings, want) in rows {
            let map = lines.map(headers).unwrap_or_default();
            let got = accepted(&map, &settings(encodings));
            assert_eq!(got.encoding(), want, "{name}: {lines:?}");
        }
    }

    #[test]
    fn non_utf8_bytes_do_not_panic() {
        let mut map = HeaderMap::new();
        let value = http::HeaderValue::from_bytes(b"gzip;q=0.\xff, br").expect("obs-text");
        map.insert(ACCEPT_ENCODING, value);
        assert_eq!(accepted(&map, &settings(&[Gzip, Br])).encoding(), Some(Br));
    }

    #[test]
    fn qvalues() {
        let rows: &[(&str, Option<u16>)] = &[
            ("0", Some(0)),
            ("0.", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.125", Some(125)),
            ("1", Some(1000)),
            ("1.0", Some(1000)),
            ("1.000", Some(1000)),
            ("1.0000", None),
            ("1.5", None),
            ("01", None),
            ("", None),
            ("0.1a", None),
        ];
        for &(v, want) in rows {
            assert_eq!(parse_q(v.as_bytes()), want, "{v:?}");
        }
    }
}
