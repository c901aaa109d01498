//! Whole-buffer gzip with libdeflate, for bodies whose length is known and
//! small: [`plan`] says which (a pure function), [`Gather`] collects such a
//! body, and [`gzip`] compresses it in one call.
//!
//! Why a second gzip encoder. libdeflate compresses only whole buffers, and
//! that is why it is fast: it parses the whole input into matches and then
//! picks each block's Huffman codes from exact counts, with no streaming
//! state between calls. On the 100 KB low-redundancy JSON of `bench gzip`
//! (`/words/102400`) it produces nginx's (C zlib's) size in half to a third
//! of the time of zlib-rs at the level that matches nginx (measured one after
//! another in one process: level 1, 308 µs against zlib-rs 2's 1028 µs and
//! C zlib 1's 1359 µs; level 6, 2223 µs against zlib-rs 7's 4536 µs and C
//! zlib 6's 4139 µs). On very repetitive bodies (the bench's 10 KB HTML and
//! 100 KB JSON, 25:1 and 90:1) both take about the same time.
//!
//! Why only some bodies. Gathering a body before compressing it delays its
//! first byte and holds it in memory, and one call holds the worker thread
//! for as long as it runs. So a body is gathered only when:
//! - its length is known (`Content-Length`, seen as an exact size hint),
//!   so the buffer is allocated once and a body that never ends is never
//!   gathered;
//! - that length is at most [`WHOLE_MAX`] (256 KiB). At that bound a whole
//!   response costs what a streaming one does: 256 KiB of input is what one
//!   streaming poll compresses at most (`POLL_INPUT_BUDGET`), and libdeflate
//!   does it in less time than zlib-rs does (8 ms at level 6 on this
//!   project's test machine, against 11 ms), so the thread is held no longer;
//!   memory is the input (at most 256 KiB, freed once compressed) plus the
//!   compressed output, against the streaming encoder's 0.37 MiB plus a 64
//!   KiB buffer. A 1 MiB bound would hold a thread for 35 ms at level 6 and
//!   take 1.3 MiB per response, to speed up bodies that are rarely that
//!   large and compressible at once;
//! - the level is 1 to 7. At 8 and 9 libdeflate's match search (its level
//!   8, the first no larger than zlib's 8 and 9) costs more than zlib-rs's
//!   level 9 for the same size (on 256 KiB of the low-redundancy JSON, 15
//!   ms against 9 ms, 71,347 against 71,800 bytes), so those stream;
//! - the backend keeps up. When the body stalls, the client must not wait for
//!   the rest of it: [`Gather`] arms a timer at the first stall, and if it
//!   fires ([`FLUSH_DELAY`], the streaming path's flush delay) before the
//!   body is complete, the body switches to streaming: what has arrived is
//!   fed to the streaming encoder and flushed at once, and the rest streams
//!   as it comes. So once the backend makes the client wait, the client
//!   waits at most `FLUSH_DELAY` more (plus one compression call, at most
//!   8 ms for 256 KiB), the delay the streaming path already allows itself
//!   before a flush. A body on loopback or a fast network (100 KB in well
//!   under a millisecond) is never held back that long.
//!
//! Only gzip: br and zstd stream as before (their encoders have no
//! whole-buffer mode that is faster at equal size).
//!
//! With the `isal` cargo feature, level 1 uses Intel's ISA-L (its igzip at
//! level one) instead of libdeflate: its output is no larger than zlib's 1 on
//! every body of 10 KB or more (1–2 % smaller on the low-redundancy JSON,
//! 8–48 % on the repetitive ones) and it is 2× faster than
//! libdeflate's level 1 on the low-redundancy JSON (159 against 330 µs per
//! 100 KB) and 6× on the 90:1 JSON (17 against 108 µs). Its level 3 is
//! larger than zlib's 6, so other levels stay with libdeflate. It is a
//! feature because building ISA-L takes nasm and autotools besides the C
//! compiler.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;
use libdeflater::{CompressionLvl, Compressor};

use super::body::FLUSH_DELAY;
use super::Encoding;

/// Largest `Content-Length` compressed whole; see the module docs for why
/// 256 KiB.
pub(super) const WHOLE_MAX: u64 = 256 * 1024;

/// How many libdeflate compressors a thread keeps, one per level: the
/// config has one level, and a reload can bring a second.
const COMPRESSORS: usize = 2;

/// The whole-buffer compressor for a body, chosen by [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Engine {
    /// libdeflate at this level of its own.
    Libdeflate(i32),
    /// ISA-L's igzip at its level 1 (feature `isal`; config level 1).
    #[cfg(feature = "isal")]
    Isal,
}

/// Whether to gather a body and compress it whole: `Some((length,
/// engine))`, or `None` to stream it. Gzip bodies whose exact length is
/// known and at most [`WHOLE_MAX`], at a `level` that [`libdeflate_level`]
/// maps (level 1 goes to ISA-L with the `isal` feature).
pub(super) fn plan(
    encoding: Encoding,
    level: u32,
    exact_len: Option<u64>,
) -> Option<(usize, Engine)> {
    match (encoding, exact_len) {
        (Encoding::Gzip, Some(len)) if len <= WHOLE_MAX => {
            let engine = Engine::Libdeflate(libdeflate_level(level)?);
            #[cfg(feature = "isal")]
            let engine = if level.clamp(1, 9) == 1 {
                Engine::Isal
            } else {
                engine
            };
            Some((usize::try_from(len).ok()?, engine))
        }
        _ => None,
    }
}

/// The libdeflate level for the config's `level` (1..=9, clamped): the
/// fastest level whose output is no larger than C zlib's (nginx's) at
/// `level`; `None` for 8 and 9, which stream (see the module docs).
///
/// Measured on the backend's bodies (`/words`, `/html`, `/json` and `/text`
/// from 2 KB to 256 KiB) against zlib 1.2.13: libdeflate's levels 2–6 are
/// greedy or shallow lazy parsers, which on very repetitive input (the 90:1
/// JSON) come out 40–75 % larger than zlib's lazy matching at 4–6, while
/// its level 7 is at least as small as zlib's 1–7 everywhere but one body
/// (`/text/102400`, 110:1, 1.3 % larger). Level 1 is smaller than zlib's 1–3
/// on every body of 10 KB or more (2–12 %). So 1–3 → 1 and 4–7 → 7. Levels
/// 10–12 (near-optimal parsing) gain 1–5 % for 5–50 times the time.
pub(super) fn libdeflate_level(level: u32) -> Option<i32> {
    match level.clamp(1, 9) {
        1..=3 => Some(1),
        4..=7 => Some(7),
        _ => None,
    }
}

/// A thread's libdeflate state, reused across responses.
#[derive(Default)]
struct Deflate {
    /// Compressors by libdeflate level. Each holds hash tables of 0.2 MiB
    /// at level 1 and 0.45 MiB at levels 2–9, which every call resets
    /// itself, so they are kept rather than allocated per response.
    compressors: Vec<(i32, Compressor)>,
    /// Output buffer of `gzip_compress_bound` bytes for the largest input so
    /// far (at most [`WHOLE_MAX`] plus a little). The result is copied out
    /// at its exact size, so a response holds only its compressed bytes
    /// while it is sent, and no buffer is zeroed per response.
    scratch: Vec<u8>,
}

impl Deflate {
    fn compress(&mut self, input: &[u8], level: i32) -> io::Result<Bytes> {
        let i = match self.compressors.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                let lvl = CompressionLvl::new(level)
                    .map_err(|_| io::Error::other("libdeflate rejected its level"))?;
                if self.compressors.len() == COMPRESSORS {
                    self.compressors.remove(0);
                }
                self.compressors.push((level, Compressor::new(lvl)));
                self.compressors.len() - 1
            }
        };
        let compressor = &mut self.compressors[i].1;
        let bound = compressor.gzip_compress_bound(input.len());
        if self.scratch.len() < bound {
            self.scratch.resize(bound, 0);
        }
        let n = compressor
            .gzip_compress(input, &mut self.scratch[..bound])
            .map_err(io::Error::other)?;
        Ok(Bytes::copy_from_slice(&self.scratch[..n]))
    }

    /// igzip level 1. Should the output not fit (it cannot: stored blocks
    /// cost 5 bytes per 64 KiB), libdeflate's level 1 does it instead.
    #[cfg(feature = "isal")]
    fn compress_isal(&mut self, input: &[u8]) -> io::Result<Bytes> {
        let bound = input.len() + input.len() / 1024 + 64;
        if self.scratch.len() < bound {
            self.scratch.resize(bound, 0);
        }
        let (level, codec) = (isal::CompressionLevel::One, isal::Codec::Gzip);
        match isal::compress_into(input, &mut self.scratch[..bound], level, codec) {
            Ok(n) => Ok(Bytes::copy_from_slice(&self.scratch[..n])),
            Err(_) => self.compress(input, 1),
        }
    }

    fn run(&mut self, input: &[u8], engine: Engine) -> io::Result<Bytes> {
        match engine {
            Engine::Libdeflate(level) => self.compress(input, level),
            #[cfg(feature = "isal")]
            Engine::Isal => self.compress_isal(input),
        }
    }
}

thread_local! {
    static DEFLATE: RefCell<Deflate> = RefCell::new(Deflate::default());
}

/// `input` as one gzip member, by `engine` (from [`plan`]). It fails only
/// if libdeflate cannot allocate.
pub(super) fn gzip(input: &[u8], engine: Engine) -> io::Result<Bytes> {
    DEFLATE
        .try_with(|deflate| deflate.borrow_mut().run(input, engine))
        // During thread teardown the thread's state may be gone.
        .unwrap_or_else(|_| Deflate::default().run(input, engine))
}

/// How gathering ended.
pub(super) enum Gathered<E> {
    /// The whole body is in; trailers, if any, were stored.
    Complete,
    /// The backend stalled for [`FLUSH_DELAY`] (counted from the first
    /// stall): stream what came so far and flush it.
    Stalled,
    /// The body went past its announced length: stream it.
    Overlong,
    /// The backend's body failed.
    Failed(E),
}

/// A body of known length being collected for [`gzip`].
pub(super) struct Gather {
    /// The announced length: the buffer's capacity.
    len: usize,
    /// What compresses it.
    pub(super) engine: Engine,
    /// The first data frame, kept as it is: a body that comes in one frame
    /// (most small ones) is compressed without a copy.
    first: Bytes,
    /// All data so far, once a second frame came.
    buf: BytesMut,
    /// Armed when the backend first has nothing ready. Boxed: a body that
    /// arrives with its head never needs it.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Gather {
    pub(super) fn new(len: usize, engine: Engine) -> Gather {
        Gather {
            len,
            engine,
            first: Bytes::new(),
            buf: BytesMut::new(),
            stall: None,
        }
    }

    /// Everything gathered so far, as one buffer.
    pub(super) fn data(&self) -> &[u8] {
        if self.buf.is_empty() {
            &self.first
        } else {
            &self.buf
        }
    }

    /// Everything gathered so far, handed over (to the streaming encoder).
    pub(super) fn into_bytes(self) -> Bytes {
        if self.buf.is_empty() {
            self.first
        } else {
            self.buf.freeze()
        }
    }

    fn push(&mut self, data: Bytes) {
        if self.buf.is_empty() && self.first.is_empty() {
            self.first = data;
            return;
        }
        if self.buf.is_empty() {
            self.buf
                .reserve(self.len.max(self.first.len() + data.len()));
            self.buf.extend_from_slice(&std::mem::take(&mut self.first));
        }
        self.buf.extend_from_slice(&data);
    }

    /// Takes frames from `inner` until the body ends, fails, overruns its
    /// length, or stalls for [`FLUSH_DELAY`]. Trailers go to `trailers`.
    pub(super) fn poll<B: Body<Data = Bytes>>(
        &mut self,
        mut inner: Pin<&mut B>,
        cx: &mut Context<'_>,
        trailers: &mut Option<Box<HeaderMap>>,
    ) -> Poll<Gathered<B::Error>> {
        loop {
            match inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.push(data);
                        if self.data().len() > self.len {
                            return Poll::Ready(Gathered::Overlong);
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            *trailers = Some(Box::new(t));
                            return Poll::Ready(Gathered::Complete);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Gathered::Failed(e)),
                Poll::Ready(None) => return Poll::Ready(Gathered::Complete),
                Poll::Pending => {
                    let stall = self
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_DELAY)));
                    if stall.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Gathered::Stalled);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_bodies_are_compressed_whole() {
        let max = WHOLE_MAX as usize;
        // Level 1's engine: ISA-L with the feature, else libdeflate's 1.
        #[cfg(feature = "isal")]
        let one = Engine::Isal;
        #[cfg(not(feature = "isal"))]
        let one = Engine::Libdeflate(1);
        let seven = Engine::Libdeflate(7);
        // (coding, config level, exact length) -> (length, engine)
        type Row = (Encoding, u32, Option<u64>, Option<(usize, Engine)>);
        let rows: &[Row] = &[
            // gzip of a known, bounded length at levels 1–7: whole.
            (Encoding::Gzip, 1, Some(0), Some((0, one))),
            (Encoding::Gzip, 1, Some(10_240), Some((10_240, one))),
            (
                Encoding::Gzip,
                2,
                Some(10_240),
                Some((10_240, Engine::Libdeflate(1))),
            ),
            (Encoding::Gzip, 6, Some(10_240), Some((10_240, seven))),
            (Encoding::Gzip, 7, Some(WHOLE_MAX), Some((max, seven))),
            // Over the bound, or of unknown length (chunked, SSE): streamed.
            (Encoding::Gzip, 6, Some(WHOLE_MAX + 1), None),
            (Encoding::Gzip, 6, Some(u64::MAX), None),
            (Encoding::Gzip, 6, None, None),
            // Levels 8 and 9: zlib-rs is faster there.
            (Encoding::Gzip, 8, Some(10_240), None),
            (Encoding::Gzip, 9, Some(10_240), None),
            // br and zstd always stream.
            (Encoding::Br, 6, Some(10_240), None),
            (Encoding::Zstd, 1, Some(10_240), None),
        ];
        for &(encoding, level, len, want) in rows {
            assert_eq!(
                plan(encoding, level, len),
                want,
                "{encoding} level {level} {len:?}"
            );
        }
    }

    #[test]
    fn levels_map_monotonically_into_libdeflates_range() {
        let mapped: Vec<Option<i32>> = (0..=10).map(libdeflate_level).collect();
        let (one, seven) = (Some(1), Some(7));
        assert_eq!(
            mapped,
            [one, one, one, one, seven, seven, seven, seven, None, None, None]
        );
    }

    #[test]
    fn compressors_are_kept_per_level_and_bounded() {
        let mut deflate = Deflate::default();
        for level in [1, 7, 1, 8, 8] {
            let out = deflate.compress(b"hello hello hello", level).expect("gzip");
            let mut decoded = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&out[..]), &mut decoded)
                .expect("valid gzip");
            assert_eq!(decoded, b"hello hello hello");
        }
        let levels: Vec<i32> = deflate.compressors.iter().map(|(l, _)| *l).collect();
        // The oldest goes when a third level comes.
        assert_eq!(levels, [7, 8]);
    }
}
