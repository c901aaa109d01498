//! Generated bodies for `/text`, `/json`, `/html`, `/bytes` and `/words`.
//!
//! Each body is `head ++ middle ++ tail`, where the middle repeats a
//! pattern built once per process. A pattern's buffer holds one period plus
//! one [`CHUNK`] more, so any chunk of the middle is a single slice of it,
//! starting at the current phase: producing a frame is a pointer and a
//! length, never a copy or an allocation, whatever N is.

mod words;

use std::sync::LazyLock;

use bytes::Bytes;
use http::HeaderValue;

/// Largest frame a generated body yields; also the largest `/stream` chunk.
pub const CHUNK: usize = 64 * 1024;

/// A periodic byte sequence, padded with one extra chunk past its period.
pub struct Pattern {
    /// `period + CHUNK` bytes; `buf[i] == buf[i % period]`.
    buf: Vec<u8>,
    /// Length of one repetition.
    period: usize,
}

impl Pattern {
    /// Repeats `unit` until the buffer covers one period plus a chunk.
    fn repeat(unit: Vec<u8>) -> Pattern {
        let period = unit.len();
        let mut buf = Vec::with_capacity(period + CHUNK);
        while buf.len() < period + CHUNK {
            let take = (period + CHUNK - buf.len()).min(period);
            buf.extend_from_slice(&unit[..take]);
        }
        Pattern { buf, period }
    }

    /// `len` bytes (at most [`CHUNK`]) starting at phase `at` (< period).
    pub fn slice(&'static self, at: usize, len: usize) -> Bytes {
        Bytes::from_static(&self.buf[at..at + len])
    }

    /// The phase after `len` more bytes.
    pub fn advance(&self, at: usize, len: usize) -> usize {
        (at + len) % self.period
    }
}

/// Compressible English-like lines, numbered so the text is not one
/// repeated line.
static TEXT: LazyLock<Pattern> = LazyLock::new(|| {
    let mut unit = Vec::new();
    for i in 0..64 {
        let line = format!(
            "line {i:02}: the quick brown fox jumps over the lazy dog; \
             pack my box with five dozen liquor jugs.\n"
        );
        unit.extend_from_slice(line.as_bytes());
    }
    Pattern::repeat(unit)
});

/// The first `len` bytes (at most [`CHUNK`]) of the text pattern.
pub fn text(len: usize) -> Bytes {
    TEXT.slice(0, len.min(CHUNK))
}

/// Paragraphs for the middle of `/html`.
static HTML: LazyLock<Pattern> = LazyLock::new(|| {
    let mut unit = Vec::new();
    for i in 0..64 {
        let p = format!(
            "<p class=\"item\">paragraph {i:02}: lorem ipsum dolor sit amet, \
             consectetur adipiscing elit.</p>\n"
        );
        unit.extend_from_slice(p.as_bytes());
    }
    Pattern::repeat(unit)
});

const HTML_HEAD: &[u8] = b"<!DOCTYPE html>\n<html><head><title>backend</title></head><body>\n";
const HTML_TAIL: &[u8] = b"</body></html>\n";

/// One JSON record; every id has four digits, so every record has the same
/// length and N maps to a whole number of records plus padding.
fn json_record(id: u32) -> String {
    format!(
        "{{\"id\":{id},\"name\":\"item-{id}\",\"tags\":[\"alpha\",\"beta\"],\
         \"active\":true,\"score\":12.5}}"
    )
}

/// The opening `[` and the first record.
static JSON_HEAD: LazyLock<String> = LazyLock::new(|| format!("[{}", json_record(1000)));

/// `,{record}` repeated with ids 1001..=1064.
static JSON: LazyLock<Pattern> = LazyLock::new(|| {
    let mut unit = Vec::new();
    for id in 1001..=1064 {
        unit.push(b',');
        unit.extend_from_slice(json_record(id).as_bytes());
    }
    Pattern::repeat(unit)
});

/// Spaces then `]`: the end of a JSON body, sliced to pad it to exactly N.
static JSON_END: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut end = vec![b' '; 255];
    end.push(b']');
    end
});

/// Pseudo-random bytes with a 1 MiB period: longer than any gzip, brotli
/// or zstd window a balancer would use, so the body does not compress.
static RANDOM: LazyLock<Pattern> = LazyLock::new(|| {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut unit = vec![0u8; 1 << 20];
    rng.fill(&mut unit);
    Pattern::repeat(unit)
});

/// The kinds of generated body, one per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/text/N`
    Text,
    /// `/json/N`
    Json,
    /// `/html/N`
    Html,
    /// `/bytes/N`
    Bytes,
    /// `/words/N`: low-redundancy JSON (see `words.rs`).
    Words,
}

impl Kind {
    /// The endpoint's `Content-Type`.
    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Kind::Text => "text/plain; charset=utf-8",
            Kind::Json | Kind::Words => "application/json",
            Kind::Html => "text/html; charset=utf-8",
            Kind::Bytes => "application/octet-stream",
        })
    }
}

/// The three parts of a generated body of a given size.
pub struct Layout {
    /// Emitted first, whole.
    pub head: Bytes,
    /// The repeating part: its pattern and length in bytes.
    pub pattern: &'static Pattern,
    /// How many bytes of `pattern` follow `head`.
    pub middle: u64,
    /// Emitted last, whole.
    pub tail: Bytes,
}

/// Splits a body of exactly `n` bytes of `kind` into head, middle and tail.
pub fn layout(kind: Kind, n: u64) -> Layout {
    let periodic = |pattern: &'static Pattern| Layout {
        head: Bytes::new(),
        pattern,
        middle: n,
        tail: Bytes::new(),
    };
    match kind {
        Kind::Text => periodic(&TEXT),
        Kind::Bytes => periodic(&RANDOM),
        Kind::Html => {
            let frame = (HTML_HEAD.len() + HTML_TAIL.len()) as u64;
            if n < frame {
                return periodic(&HTML);
            }
            Layout {
                head: Bytes::from_static(HTML_HEAD),
                pattern: &HTML,
                middle: n - frame,
                tail: Bytes::from_static(HTML_TAIL),
            }
        }
        Kind::Json => json_layout(n),
        Kind::Words => words::layout(n),
    }
}

/// `[` first-record (`,` record)* spaces `]`, exactly `n` bytes; `0` when
/// `n` is 1, `[ .. ]` when no record fits, nothing when `n` is 0.
fn json_layout(n: u64) -> Layout {
    let head: &'static str = JSON_HEAD.as_str();
    let end: &'static [u8] = JSON_END.as_slice();
    let record = head.len() as u64 - 1;
    let empty = |head: &'static [u8], tail: &'static [u8]| Layout {
        head: Bytes::from_static(head),
        pattern: &JSON,
        middle: 0,
        tail: Bytes::from_static(tail),
    };
    match n {
        0 => empty(b"", b""),
        1 => empty(b"0", b""),
        // `end` is 256 bytes, longer than a record plus the brackets.
        _ if n < 2 + record => empty(b"[", &end[end.len() - (n as usize - 1)..]),
        _ => {
            let rest = n - 2 - record;
            let unit = record + 1;
            let pad = (rest % unit) as usize;
            Layout {
                head: Bytes::from_static(head.as_bytes()),
                pattern: &JSON,
                middle: rest - rest % unit,
                tail: Bytes::from_static(&end[end.len() - 1 - pad..]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects a layout into one buffer, walking the pattern the way the
    /// body does.
    fn render(kind: Kind, n: u64) -> Vec<u8> {
        let l = layout(kind, n);
        let mut out = l.head.to_vec();
        let (mut left, mut at) = (l.middle, 0);
        while left > 0 {
            let take = left.min(CHUNK as u64) as usize;
            out.extend_from_slice(&l.pattern.slice(at, take));
            at = l.pattern.advance(at, take);
            left -= take as u64;
        }
        out.extend_from_slice(&l.tail);
        out
    }

    #[test]
    fn every_kind_has_the_exact_size() {
        for kind in [Kind::Text, Kind::Json, Kind::Html, Kind::Bytes, Kind::Words] {
            for n in [
                0, 1, 2, 3, 50, 81, 82, 83, 84, 200, 5000, 70_000, 300_000, 3_000_000,
            ] {
                assert_eq!(render(kind, n).len() as u64, n, "{kind:?} {n}");
            }
        }
    }

    #[test]
    fn json_is_well_formed_for_every_small_size() {
        for n in 1..2000u64 {
            let body = render(Kind::Json, n);
            let text = String::from_utf8(body).expect("utf-8");
            if n == 1 {
                assert_eq!(text, "0");
                continue;
            }
            assert!(text.starts_with('[') && text.ends_with(']'), "{n}: {text}");
            let inner = text[1..text.len() - 1].trim_end();
            for (i, rec) in inner.split(",{").enumerate() {
                let rec = if i == 0 {
                    rec.to_string()
                } else {
                    format!("{{{rec}")
                };
                assert!(
                    rec.is_empty() || (rec.starts_with("{\"id\":") && rec.ends_with('}')),
                    "{n}: {rec}"
                );
            }
        }
    }

    #[test]
    fn words_are_json_across_a_period_and_do_not_repeat() {
        // 3 MB spans two wraps of the 1 MiB+ pattern; each wrap must fall
        // between two records.
        let body = render(Kind::Words, 3_000_000);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let records = value.as_array().expect("an array");
        assert!(records.len() > 5000, "{} records", records.len());
        // No 1 KiB of the first 1 MiB shows up again within it (the body
        // is not one short pattern repeated, as `/json` is).
        let first = &render(Kind::Words, 1 << 20)[..];
        let probe = &first[500_000..501_024];
        assert_eq!(
            first.windows(probe.len()).filter(|w| w == &probe).count(),
            1
        );
    }

    #[test]
    fn pattern_wraps_seamlessly() {
        let p = &*TEXT;
        let at = p.period - 10;
        let s = p.slice(at, 20);
        assert_eq!(&s[..10], &p.buf[at..p.period]);
        assert_eq!(&s[10..], &p.buf[..10]);
        assert_eq!(p.advance(at, 20), 10);
    }
}
