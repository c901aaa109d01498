//! [`Compressed`]: a response body that compresses another body as its frames
//! arrive, never holding more than one input frame and one output buffer;
//! or, for a gzip body of known length up to 256 KiB, gathers it and
//! compresses it whole with libdeflate (`whole.rs` says when and why).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::codec::{Codec, Step};
use super::whole::{self, Gather, Gathered};
use super::Encoding;

/// First output buffer. Small responses never need more.
const FIRST_OUT: usize = 8 * 1024;
/// Largest output buffer, and so the largest data frame this body yields.
pub(super) const MAX_OUT: usize = 64 * 1024;
/// Input compressed per `poll_frame` before yielding to the executor. Without
/// it, very compressible input (megabytes of zeros fill no buffer) would keep
/// one task on the CPU for as long as the backend keeps up.
pub(super) const POLL_INPUT_BUDGET: usize = 256 * 1024;

/// How long the backend must stall, with compressed input not yet flushed,
/// before the encoder is sync-flushed. Between the frames of a fast body the
/// backend stalls for microseconds; flushing at each of those costs up to
/// 17 % in size (a flush ends a deflate block), while a stream that really
/// pauses (SSE, long poll) reaches the client at most this much later.
pub(super) const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

type BoxError = Box<dyn StdError + Send + Sync>;

pin_project! {
    /// The backend's body, compressed as it streams, or whole.
    ///
    /// A gzip body whose exact length is known and at most 256 KiB, at
    /// levels 1–7, is
    /// gathered, compressed in one libdeflate call and yielded in frames of
    /// at most 64 KiB, then its trailers. If the backend stalls for
    /// [`FLUSH_DELAY`] before the body is complete, what has arrived goes to
    /// the streaming encoder, is flushed at once, and the rest streams as
    /// below. An error from the backend while gathering is yielded at once.
    /// See `whole.rs` for why.
    ///
    /// Every other body streams:
    /// - Each data frame goes to the encoder when it arrives. Output is
    ///   yielded whenever the output buffer fills, in frames of at most 64
    ///   KiB, so a large body never sits in memory.
    /// - When the backend has had nothing ready (`Poll::Pending`) for
    ///   [`FLUSH_DELAY`] and input went in since the last flush, the encoder
    ///   is sync-flushed and everything so far is yielded. The client then
    ///   sees a slow stream (SSE, long poll) as it happens, while a fast
    ///   body, whose stalls between frames are far shorter, compresses as
    ///   well as one-shot.
    /// - At the end the encoder finishes (gzip trailer), then the backend's
    ///   trailers, if any, follow the data.
    /// - An error from the backend body, or from the encoder, is yielded once
    ///   and ends the stream.
    /// - One poll compresses at most 256 KiB of input, then yields, so a
    ///   highly compressible body cannot hold a worker thread.
    ///
    /// Memory per streaming response is bounded by the encoder state (about
    /// 0.37 MiB for gzip, at most about 2 MiB for br and zstd at the mapped
    /// levels; see `codec.rs`), plus the output buffer (8 KiB, growing to 64
    /// KiB when output fills it), plus the one input frame being compressed.
    /// A whole one holds the body (at most 256 KiB) until it is compressed,
    /// then only the compressed bytes; the libdeflate compressor is the
    /// thread's, used only during the call. Dropping it drops the inner body
    /// and frees the encoder or the gathered bytes.
    pub struct Compressed<B> {
        #[pin]
        inner: B,
        encoding: Encoding,
        // The config's level, kept for a gathered body that falls back to
        // streaming.
        level: u32,
        codec: Option<Codec>,
        // Unconsumed rest of the current input frame.
        input: Bytes,
        // Output buffer; `out[..filled]` is compressed data not yet yielded.
        out: Vec<u8>,
        filled: usize,
        // Input went into the encoder since the last flush.
        dirty: bool,
        // A sync flush is under way (it may take several output buffers).
        flushing: bool,
        // Armed when the backend stalls with unflushed input: the flush is
        // due when it fires. Boxed: most responses never stall.
        flush_timer: Option<Pin<Box<tokio::time::Sleep>>>,
        phase: Phase,
        // The inner body's trailers, sent after the compressed data. Boxed:
        // they are rare, and a `HeaderMap` would triple this struct's size.
        trailers: Option<Box<HeaderMap>>,
    }
}

enum Phase {
    /// Collecting a body of known length to compress it whole. Boxed, so
    /// that streaming bodies stay as small as they were.
    Gathering(Box<Gather>),
    /// The whole body, compressed: yielded in frames of at most `MAX_OUT`,
    /// then the trailers.
    Whole(Bytes),
    /// Reading the inner body, streaming.
    Reading,
    /// The inner body ended: finishing the encoder.
    Finishing,
    /// The encoder finished: yield what is left, then the trailers.
    Trailers,
    /// The encoder could not be created; yield this error first.
    Failed(Option<io::Error>),
    Done,
}

impl<B: Body> Compressed<B> {
    /// Wraps `inner`, to be sent with `Content-Encoding: encoding`. `level` is
    /// the config's 1..=9 (clamped; each library maps it, see
    /// [`Encoding::native_level`] and `whole.rs`). A gzip body of known
    /// length (its exact size hint, from `Content-Length`) up to 256 KiB, at
    /// levels 1–7, is compressed whole. An encoder that cannot be created (it cannot, short
    /// of running out of memory) shows up as the body's first error.
    pub fn new(inner: B, encoding: Encoding, level: u32) -> Self {
        let whole = whole::plan(encoding, level, inner.size_hint().exact());
        let (codec, phase) = match whole {
            Some((len, engine)) => (None, Phase::Gathering(Box::new(Gather::new(len, engine)))),
            None => match Codec::new(encoding, level) {
                Ok(codec) => (Some(codec), Phase::Reading),
                Err(e) => (None, Phase::Failed(Some(e))),
            },
        };
        Compressed {
            inner,
            encoding,
            level,
            codec,
            input: Bytes::new(),
            out: Vec::new(),
            filled: 0,
            dirty: false,
            flushing: false,
            flush_timer: None,
            phase,
            trailers: None,
        }
    }
}

impl<B> fmt::Debug for Compressed<B> {
    /// The coding and progress, not the inner body (which need not be `Debug`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Gathering(_) => "gathering",
            Phase::Whole(_) => "whole",
            Phase::Reading => "reading",
            Phase::Finishing => "finishing",
            Phase::Trailers => "trailers",
            Phase::Failed(_) => "failed",
            Phase::Done => "done",
        };
        f.debug_struct("Compressed")
            .field("encoding", &self.encoding)
            .field("phase", &phase)
            .field("pending_input", &self.input.len())
            .field("pending_output", &self.filled)
            .finish_non_exhaustive()
    }
}

/// Yields `out[..filled]`. A buffer that went out full doubles, up to
/// `MAX_OUT`.
fn take_chunk(out: &mut Vec<u8>, filled: &mut usize) -> Frame<Bytes> {
    let chunk = Bytes::copy_from_slice(&out[..*filled]);
    if *filled == out.len() && out.len() < MAX_OUT {
        out.resize(out.len() * 2, 0);
    }
    *filled = 0;
    Frame::data(chunk)
}

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Phase::Gathering(gather) = this.phase {
            let gathered = match gather.poll(this.inner.as_mut(), cx, this.trailers) {
                Poll::Ready(gathered) => gathered,
                Poll::Pending => return Poll::Pending,
            };
            let Phase::Gathering(gather) = std::mem::replace(this.phase, Phase::Done) else {
                unreachable!("matched above");
            };
            match gathered {
                Gathered::Complete => match whole::gzip(gather.data(), gather.engine) {
                    Ok(compressed) => *this.phase = Phase::Whole(compressed),
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                Gathered::Failed(e) => return Poll::Ready(Some(Err(e.into()))),
                // Stream from here: feed what came, and flush it at once if
                // the backend stalled (it has been waiting `FLUSH_DELAY`).
                stalled @ (Gathered::Stalled | Gathered::Overlong) => {
                    match Codec::new(*this.encoding, *this.level) {
                        Ok(codec) => {
                            *this.codec = Some(codec);
                            *this.input = gather.into_bytes();
                            *this.flushing =
                                matches!(stalled, Gathered::Stalled) && !this.input.is_empty();
                            *this.phase = Phase::Reading;
                        }
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
            }
        }
        if let Phase::Whole(rest) = this.phase {
            if !rest.is_empty() {
                let frame = rest.split_to(rest.len().min(MAX_OUT));
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            *this.phase = Phase::Done;
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(*t))));
        }
        let mut budget = POLL_INPUT_BUDGET;
        loop {
            if *this.filled > 0 && *this.filled == this.out.len() {
                return Poll::Ready(Some(Ok(take_chunk(this.out, this.filled))));
            }
            if budget == 0 {
                if *this.filled > 0 {
                    return Poll::Ready(Some(Ok(take_chunk(this.out, this.filled))));
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.out.is_empty()
                && matches!(
                    this.phase,
                    Phase::Reading | Phase::Finishing | Phase::Trailers
                )
            {
                this.out.resize(FIRST_OUT, 0);
            }
            let Some(codec) = this.codec.as_mut() else {
                // No encoder: only `Failed` or `Done` can be here.
                *this.input = Bytes::new();
                return match std::mem::replace(this.phase, Phase::Done) {
                    Phase::Failed(Some(e)) => Poll::Ready(Some(Err(e.into()))),
                    _ => Poll::Ready(None),
                };
            };
            let room = &mut this.out[*this.filled..];
            let step = match this.phase {
                // `Failed` comes with no encoder, handled above; `Gathering`
                // and `Whole` returned or moved on before the loop.
                Phase::Done | Phase::Failed(_) | Phase::Gathering(_) | Phase::Whole(_) => {
                    close(this.phase, this.codec, this.out, this.filled);
                    return Poll::Ready(None);
                }
                Phase::Reading if !this.input.is_empty() => {
                    let step = codec.encode(this.input, room);
                    if let Ok(Step { read, .. }) = step {
                        budget = budget.saturating_sub(read);
                        this.input.advance(read);
                        if this.input.is_empty() {
                            // Release the frame's buffer now, not at the next frame.
                            *this.input = Bytes::new();
                        }
                        *this.dirty = true;
                    }
                    step
                }
                Phase::Reading if *this.flushing => {
                    let step = codec.flush(room);
                    if let Ok(Step { done: true, .. }) = step {
                        *this.flushing = false;
                        *this.dirty = false;
                        *this.flush_timer = None;
                    }
                    step
                }
                Phase::Reading => match this.inner.as_mut().poll_frame(cx) {
                    Poll::Pending if *this.dirty => {
                        let timer = this
                            .flush_timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_DELAY)));
                        if timer.as_mut().poll(cx).is_ready() {
                            *this.flush_timer = None;
                            *this.flushing = true;
                            continue;
                        }
                        if *this.filled > 0 {
                            return Poll::Ready(Some(Ok(take_chunk(this.out, this.filled))));
                        }
                        return Poll::Pending;
                    }
                    Poll::Pending if *this.filled > 0 => {
                        return Poll::Ready(Some(Ok(take_chunk(this.out, this.filled))));
                    }
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) => *this.input = data,
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    *this.trailers = Some(Box::new(trailers));
                                    *this.phase = Phase::Finishing;
                                }
                            }
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        close(this.phase, this.codec, this.out, this.filled);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Poll::Ready(None) => {
                        *this.phase = Phase::Finishing;
                        continue;
                    }
                },
                Phase::Finishing => {
                    let step = codec.finish(room);
                    if let Ok(Step { done: true, .. }) = step {
                        *this.phase = Phase::Trailers;
                    }
                    step
                }
                Phase::Trailers => {
                    if *this.filled > 0 {
                        return Poll::Ready(Some(Ok(take_chunk(this.out, this.filled))));
                    }
                    let trailers = this.trailers.take();
                    close(this.phase, this.codec, this.out, this.filled);
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(*t))));
                }
            };
            match step {
                Ok(Step {
                    read,
                    written,
                    done,
                }) => {
                    *this.filled += written;
                    if read == 0 && written == 0 && !done {
                        close(this.phase, this.codec, this.out, this.filled);
                        let e = io::Error::other("compression encoder made no progress");
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    if done && *this.filled > 0 && matches!(this.phase, Phase::Reading) {
                        // A flush completed: send it now, that is its point.
                        return Poll::Ready(Some(Ok(take_chunk(this.out, this.filled))));
                    }
                }
                Err(e) => {
                    close(this.phase, this.codec, this.out, this.filled);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Ends the stream and frees the encoder and buffer at once, rather than when
/// the response is dropped.
fn close(phase: &mut Phase, codec: &mut Option<Codec>, out: &mut Vec<u8>, filled: &mut usize) {
    *phase = Phase::Done;
    *codec = None;
    *out = Vec::new();
    *filled = 0;
}
