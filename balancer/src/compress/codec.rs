//! The three compression libraries behind one slice-in/slice-out interface:
//! `encode` (no flush), `flush` (sync flush: everything fed so far becomes
//! decodable), and `finish` (end of stream, trailer). The body in `body.rs`
//! owns the buffers and decides when to flush.
//!
//! Memory per encoder, measured with a counting allocator while compressing
//! 2.7 MB of HTML/JS in 16 KiB frames:
//! - gzip, any level: about 0.37 MiB (zlib-rs state: 32 KiB window, memLevel 8
//!   hash chains);
//! - br at quality 1–3 with a 512 KiB window (`BR_LGWIN`): at most 1.9 MiB;
//! - zstd at levels 1–3 with a 512 KiB window (`ZSTD_WINDOW_LOG`): at most
//!   2.0 MiB (`ZSTD_sizeof_CCtx`).

use std::cell::RefCell;
use std::io;

use brotli::enc::encode::{
    BrotliEncoderDestroyInstance, BrotliEncoderOperation, BrotliEncoderParameter,
    BrotliEncoderStateStruct,
};
use brotli::enc::StandardAlloc;
use brotli::interface::{PredictionModeContextMap, StaticCommand};
use brotli::{InputPair, InputReferenceMut};
use flate2::{Compress, Compression, FlushCompress, Status};
use zstd::stream::raw::{CParameter, Operation, OutBuffer};

use super::Encoding;

/// Brotli window: 2^19 = 512 KiB. Wider windows gain a few percent on large
/// bodies but grow the encoder's ring buffer and hash table with it.
const BR_LGWIN: u32 = 19;
/// zstd window: 2^19 = 512 KiB, level 1's default (levels 2–3 default to 1–2
/// MiB windows). RFC 9659 lets decoders refuse windows above 8 MiB.
const ZSTD_WINDOW_LOG: u32 = 19;

/// Bytes taken from the input and written to the output by one step.
pub(super) struct Step {
    pub read: usize,
    pub written: usize,
    /// For `flush` and `finish`: the operation is complete. If it is false,
    /// the output slice filled up and the caller must call again with room.
    pub done: bool,
}

/// Finished gzip encoders kept for reuse, at most this many per thread (so
/// at most about 3 MiB per thread).
const GZIP_POOL: usize = 8;

thread_local! {
    /// Idle gzip encoders with their zlib-rs level. A new encoder allocates
    /// and clears about 0.37 MiB; a reset one only clears its hash table:
    /// measured on a 10 KB HTML response, 19.3 → 16.3 µs at level 2 and
    /// 33.2 → 22.1 µs at level 7.
    static IDLE_GZIP: RefCell<Vec<(u32, Box<Compress>)>> = const { RefCell::new(Vec::new()) };
}

/// A gzip encoder that goes back to its thread's pool when dropped, whether
/// its response finished or its client went away.
pub(super) struct Gzip {
    level: u32,
    inner: Option<Box<Compress>>,
}

impl Gzip {
    fn new(level: u32) -> Gzip {
        let idle = IDLE_GZIP
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let i = pool.iter().position(|(l, _)| *l == level)?;
                Some(pool.swap_remove(i).1)
            })
            .ok()
            .flatten();
        let inner = match idle {
            Some(mut c) => {
                c.reset();
                c
            }
            None => Box::new(Compress::new_gzip(Compression::new(level), 15)),
        };
        Gzip {
            level,
            inner: Some(inner),
        }
    }

    fn get(&mut self) -> &mut Compress {
        self.inner.as_mut().expect("present until dropped")
    }
}

impl Drop for Gzip {
    fn drop(&mut self) {
        if let Some(c) = self.inner.take() {
            // During thread teardown the pool may be gone: then just free it.
            let _ = IDLE_GZIP.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < GZIP_POOL {
                    pool.push((self.level, c));
                }
            });
        }
    }
}

/// How many idle gzip encoders this thread holds (for tests).
#[cfg(test)]
pub(super) fn idle_gzip_encoders() -> usize {
    IDLE_GZIP.with(|pool| pool.borrow().len())
}

/// One response's encoder.
pub(super) enum Codec {
    /// Pooled per thread (see [`Gzip`]).
    Gzip(Gzip),
    /// Boxed: the state struct is large, and this keeps `Compressed` small
    /// and cheap to move.
    Br(Box<Brotli>),
    Zstd(zstd::stream::raw::Encoder<'static>),
}

/// The brotli state, freed explicitly on drop (the crate leaves that to its
/// C-style destroy function).
pub(super) struct Brotli(BrotliEncoderStateStruct<StandardAlloc>);

impl Drop for Brotli {
    fn drop(&mut self) {
        BrotliEncoderDestroyInstance(&mut self.0);
    }
}

impl Codec {
    /// An encoder for `encoding` at the config's `level` (1..=9, clamped,
    /// mapped by [`Encoding::native_level`]).
    pub(super) fn new(encoding: Encoding, level: u32) -> io::Result<Codec> {
        let native = encoding.native_level(level);
        Ok(match encoding {
            Encoding::Gzip => Codec::Gzip(Gzip::new(native)),
            Encoding::Br => {
                let mut state = BrotliEncoderStateStruct::new(StandardAlloc::default());
                let quality = BrotliEncoderParameter::BROTLI_PARAM_QUALITY;
                let window = BrotliEncoderParameter::BROTLI_PARAM_LGWIN;
                if !state.set_parameter(quality, native) || !state.set_parameter(window, BR_LGWIN) {
                    return Err(io::Error::other("brotli rejected its parameters"));
                }
                Codec::Br(Box::new(Brotli(state)))
            }
            Encoding::Zstd => {
                // `native` is 1..=3, so the cast is exact.
                let mut encoder = zstd::stream::raw::Encoder::new(native as i32)?;
                encoder.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
                Codec::Zstd(encoder)
            }
        })
    }

    /// Compresses from `input` into `out` without forcing output.
    pub(super) fn encode(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<Step> {
        match self {
            Codec::Gzip(c) => gzip(c.get(), input, out, FlushCompress::None),
            Codec::Br(b) => brotli(
                &mut b.0,
                BrotliEncoderOperation::BROTLI_OPERATION_PROCESS,
                input,
                out,
            ),
            Codec::Zstd(z) => {
                let status = z.run_on_buffers(input, out)?;
                Ok(Step {
                    read: status.bytes_read,
                    written: status.bytes_written,
                    done: false,
                })
            }
        }
    }

    /// Sync flush: after `done`, the output so far decodes to all input so far.
    pub(super) fn flush(&mut self, out: &mut [u8]) -> io::Result<Step> {
        match self {
            Codec::Gzip(c) => gzip(c.get(), &[], out, FlushCompress::Sync),
            Codec::Br(b) => brotli(
                &mut b.0,
                BrotliEncoderOperation::BROTLI_OPERATION_FLUSH,
                &[],
                out,
            ),
            Codec::Zstd(z) => zstd_step(out, |buf| z.flush(buf)),
        }
    }

    /// Ends the stream (gzip trailer, brotli last block, zstd epilogue).
    pub(super) fn finish(&mut self, out: &mut [u8]) -> io::Result<Step> {
        match self {
            Codec::Gzip(c) => gzip(c.get(), &[], out, FlushCompress::Finish),
            Codec::Br(b) => brotli(
                &mut b.0,
                BrotliEncoderOperation::BROTLI_OPERATION_FINISH,
                &[],
                out,
            ),
            Codec::Zstd(z) => zstd_step(out, |buf| z.finish(buf, true)),
        }
    }
}

fn gzip(c: &mut Compress, input: &[u8], out: &mut [u8], flush: FlushCompress) -> io::Result<Step> {
    let (in_before, out_before) = (c.total_in(), c.total_out());
    let status = c.compress(input, out, flush).map_err(io::Error::other)?;
    // Both deltas are bounded by the slice lengths, so they fit in usize.
    let read = (c.total_in() - in_before) as usize;
    let written = (c.total_out() - out_before) as usize;
    let done = match flush {
        // Finished once the trailer is out.
        FlushCompress::Finish => status == Status::StreamEnd,
        // A sync flush is complete when zlib stopped with room to spare. A
        // repeated flush with nothing pending writes nothing (`BufError`).
        _ => written < out.len() || status == Status::BufError,
    };
    Ok(Step {
        read,
        written,
        done,
    })
}

fn brotli(
    state: &mut BrotliEncoderStateStruct<StandardAlloc>,
    op: BrotliEncoderOperation,
    input: &[u8],
    out: &mut [u8],
) -> io::Result<Step> {
    let (mut available_in, mut read) = (input.len(), 0);
    let (mut available_out, mut written) = (out.len(), 0);
    let ok = state.compress_stream(
        op,
        &mut available_in,
        input,
        &mut read,
        &mut available_out,
        out,
        &mut written,
        &mut None,
        &mut |_: &mut PredictionModeContextMap<InputReferenceMut>,
              _: &mut [StaticCommand],
              _: InputPair,
              _: &mut StandardAlloc| (),
    );
    if !ok {
        return Err(io::Error::other("brotli encoder failed"));
    }
    let done = match op {
        BrotliEncoderOperation::BROTLI_OPERATION_FINISH => state.is_finished(),
        _ => !state.has_more_output(),
    };
    Ok(Step {
        read,
        written,
        done,
    })
}

fn zstd_step(
    out: &mut [u8],
    op: impl FnOnce(&mut OutBuffer<'_, [u8]>) -> io::Result<usize>,
) -> io::Result<Step> {
    let mut buf = OutBuffer::around(out);
    let remaining = op(&mut buf)?;
    Ok(Step {
        read: 0,
        written: buf.pos(),
        done: remaining == 0,
    })
}
