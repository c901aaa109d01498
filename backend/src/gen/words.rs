//! The low-redundancy JSON behind `/words/N`: records of seeded random words
//! that gzip about 3.5:1, like real API responses and text, where the other
//! generated bodies, which repeat a short pattern, compress 10–100:1.
//!
//! A compressor's speed depends on how often it finds long matches: on the
//! periodic bodies nearly every byte is part of one, so they measure little
//! but the proxy's per-response cost. This body measures the deflate itself.
//!
//! The pattern is a run of records, each `,{...}`, built once per process from
//! a fixed seed, more than 1 MiB long: longer than any window a gzip, brotli or
//! zstd encoder in a proxy uses, so no body of up to 1 MiB repeats itself.
//! The offsets where records start are kept, so that a body of any length
//! can end on a whole record and be valid JSON.

use std::sync::LazyLock;

use bytes::Bytes;

use super::{Layout, Pattern};

/// The records' seed: the body is the same in every process and every run.
const SEED: u64 = 0x3a7d_5eed;
/// The pattern is at least this long (then ends at a record boundary).
const PERIOD: usize = (1 << 20) + (1 << 16);
/// Distinct words. With the skewed choice in [`pick`], this size makes
/// gzip -6 shrink the body about 3.5:1 (zlib 1.2.13 at 100 KB: 3.06:1 at
/// level 1, 3.51:1 at 6; 2.8:1 at 10 KB).
const VOCABULARY: usize = 350;
/// A record is never longer than this; the padding before `]` is shorter.
const MAX_RECORD: usize = 1024;

/// The pattern and where its records start.
struct Words {
    /// `,{record}` repeated, first byte a `,`.
    pattern: Pattern,
    /// The offsets of each record's `,` in one period, ascending, from 0.
    starts: Vec<usize>,
    /// `[` and a first record, so the middle's leading commas separate.
    head: String,
}

static WORDS: LazyLock<Words> = LazyLock::new(build);

/// Spaces then `]`, sliced to pad a body to its exact length.
static END: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut end = vec![b' '; MAX_RECORD + 1];
    end.push(b']');
    end
});

/// A word from the vocabulary: low indices far more often (a skew like
/// word frequencies in text, which is what gives gzip something to find).
fn pick<'a>(rng: &mut fastrand::Rng, vocabulary: &'a [String]) -> &'a str {
    let u = rng.f64();
    &vocabulary[(u * u * u * vocabulary.len() as f64) as usize]
}

/// One record: an id, a user, a title, a text of 8–40 words, a score and
/// tags.
fn record(rng: &mut fastrand::Rng, id: u64, vocabulary: &[String]) -> String {
    use std::fmt::Write as _;
    let mut r = String::with_capacity(400);
    let words = |rng: &mut fastrand::Rng, n: std::ops::Range<usize>, sep: &str| {
        let n = rng.usize(n);
        (0..n)
            .map(|_| pick(rng, vocabulary))
            .collect::<Vec<_>>()
            .join(sep)
    };
    let user = words(rng, 2..3, "_");
    let title = words(rng, 2..6, " ");
    let text = words(rng, 8..40, " ");
    let tags = words(rng, 1..4, "\",\"");
    // Writing to a String cannot fail.
    let _ = write!(
        r,
        "{{\"id\":{id},\"user\":\"{user}\",\"title\":\"{title}\",\"text\":\"{text}\",\
         \"score\":{}.{:03},\"tags\":[\"{tags}\"]}}",
        rng.u32(..100),
        rng.u32(..1000),
    );
    r
}

fn build() -> Words {
    let mut rng = fastrand::Rng::with_seed(SEED);
    const LETTERS: &[u8] = b"etaoinshrdlucmfwypvbgkjqxz";
    let vocabulary: Vec<String> = (0..VOCABULARY)
        .map(|_| {
            let len = rng.usize(2..10);
            // The lower of two draws: common letters come up more often.
            (0..len)
                .map(|_| LETTERS[rng.usize(..26).min(rng.usize(..26))] as char)
                .collect()
        })
        .collect();
    let mut id = 100_000;
    let head = format!("[{}", record(&mut rng, id, &vocabulary));
    let (mut unit, mut starts) = (Vec::with_capacity(PERIOD + MAX_RECORD), Vec::new());
    while unit.len() < PERIOD {
        id += rng.u64(1..50);
        let r = record(&mut rng, id, &vocabulary);
        debug_assert!(r.len() < MAX_RECORD);
        starts.push(unit.len());
        unit.push(b',');
        unit.extend_from_slice(r.as_bytes());
    }
    Words {
        pattern: Pattern::repeat(unit),
        starts,
        head,
    }
}

/// `[` first-record (`,` record)* spaces `]`, exactly `n` bytes; short
/// bodies as `/json/N` shapes them (`0`, or `[`, spaces, `]`).
pub(super) fn layout(n: u64) -> Layout {
    let words = &*WORDS;
    let end: &'static [u8] = END.as_slice();
    let head: &'static str = words.head.as_str();
    let empty = |head: &'static [u8], tail: &'static [u8]| Layout {
        head: Bytes::from_static(head),
        pattern: &words.pattern,
        middle: 0,
        tail: Bytes::from_static(tail),
    };
    match n {
        0 => empty(b"", b""),
        1 => empty(b"0", b""),
        // Too short for the first record: `[`, spaces, `]` (the head is
        // one record, so `END` is long enough).
        _ if n < head.len() as u64 + 1 => empty(b"[", &end[end.len() - (n as usize - 1)..]),
        _ => {
            // Room for the middle: everything but the head and the `]`.
            let room = n - head.len() as u64 - 1;
            let period = words.pattern.period as u64;
            let (whole, rest) = (room / period, (room % period) as usize);
            // The last record start at or before `rest` ends the middle;
            // `rest` itself may be a start (0 is).
            let i = words.starts.partition_point(|&s| s <= rest);
            let cut = words.starts[i - 1];
            let middle = whole * period + cut as u64;
            let pad = (room - middle) as usize;
            Layout {
                head: Bytes::from_static(head.as_bytes()),
                pattern: &words.pattern,
                middle,
                tail: Bytes::from_static(&end[end.len() - 1 - pad..]),
            }
        }
    }
}
