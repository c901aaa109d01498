//! Tests of [`Compressed`] with in-memory and channel-fed bodies: round trips
//! for each coding, flush on `Pending`, ratio against one-shot gzip,
//! trailers, errors, output bounds and drop.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use brotli::enc::StandardAlloc;
use brotli::{BrotliResult, BrotliState};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::body::{MAX_OUT, POLL_INPUT_BUDGET};
use super::{Compressed, Encoding};

/// A bound for waits on a flush: far above the flush delay, so that a busy
/// machine (a debug build compressing 100 KB) never fails a test that is
/// about order, not speed.
const GENEROUS: std::time::Duration = std::time::Duration::from_secs(5);

const ALL: [Encoding; 3] = [Encoding::Gzip, Encoding::Br, Encoding::Zstd];

/// Text-like bytes that compress the way web content does: words from a
/// small vocabulary with numbers mixed in, deterministic per seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ",
        "load ",
        "balancer ",
        "<div class=\"row\">",
        "</div>\n",
        "{\"id\": ",
        "}, ",
        "backend ",
        "request ",
        "response ",
        "stream ",
        "gzip ",
        "header ",
        "value ",
    ];
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        if rng.u8(..) < 40 {
            out.extend_from_slice(rng.u32(..100_000).to_string().as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn decompress(encoding: Encoding, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Encoding::Gzip => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
        Encoding::Br => brotli::Decompressor::new(data, 4096).read_to_end(&mut out),
        Encoding::Zstd => {
            zstd::stream::read::Decoder::new(data).and_then(|mut d| d.read_to_end(&mut out))
        }
    }
    .expect("valid compressed stream");
    out
}

/// A streaming decoder, fed piece by piece like a client would.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    // The raw API: `DecompressorWriter::flush` can leave output inside.
    Br(
        Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
        Vec<u8>,
    ),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    fn new(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Gzip => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            Encoding::Br => {
                let alloc = StandardAlloc::default;
                Decoder::Br(
                    Box::new(BrotliState::new(alloc(), alloc(), alloc())),
                    Vec::new(),
                )
            }
            Encoding::Zstd => {
                Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).expect("zstd"))
            }
        }
    }

    /// Feeds compressed bytes; returns everything decoded so far.
    fn push(&mut self, data: &[u8]) -> &[u8] {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data).and_then(|()| d.flush()).expect("gzip");
                d.get_ref()
            }
            Decoder::Br(state, out) => {
                let (mut available_in, mut read) = (data.len(), 0);
                let mut buf = [0u8; 4096];
                loop {
                    let (mut available_out, mut written, mut total) = (buf.len(), 0, 0);
                    let result = brotli::BrotliDecompressStream(
                        &mut available_in,
                        &mut read,
                        data,
                        &mut available_out,
                        &mut written,
                        &mut buf,
                        &mut total,
                        state,
                    );
                    out.extend_from_slice(&buf[..written]);
                    match result {
                        BrotliResult::ResultFailure => panic!("invalid brotli stream"),
                        // It may stop for input with output still inside.
                        _ if written > 0 => continue,
                        BrotliResult::NeedsMoreOutput => continue,
                        BrotliResult::NeedsMoreInput | BrotliResult::ResultSuccess => break out,
                    }
                }
            }
            Decoder::Zstd(d) => {
                d.write_all(data).and_then(|()| d.flush()).expect("zstd");
                d.get_ref()
            }
        }
    }
}

/// An in-memory body that yields its frames in order, optionally `Pending`
/// (and waking itself) before each one, and optionally an error at the end.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    pending_between: bool,
    pending_now: bool,
    error_at_end: bool,
}

impl Frames {
    fn data(data: &[u8], frame_size: usize) -> Self {
        Frames {
            frames: data
                .chunks(frame_size.max(1))
                .map(|c| Frame::data(Bytes::copy_from_slice(c)))
                .collect(),
            pending_between: false,
            pending_now: false,
            error_at_end: false,
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.pending_between && !self.pending_now {
            self.pending_now = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending_now = false;
        match self.frames.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None if self.error_at_end => {
                self.error_at_end = false;
                Poll::Ready(Some(Err(io::Error::other("backend reset"))))
            }
            None => Poll::Ready(None),
        }
    }
}

/// A body fed by the test through a channel: `Pending` until the test sends.
struct Channel(mpsc::Receiver<Result<Frame<Bytes>, io::Error>>);

impl Body for Channel {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// Collects every data frame, checking the 64 KiB bound; returns the bytes
/// and the trailers (for the whole-body tests too).
pub(super) async fn collect<B>(body: B) -> (Vec<u8>, Option<HeaderMap>)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("no error");
        assert!(trailers.is_none(), "trailers must come last");
        match frame.into_data() {
            Ok(chunk) => {
                assert!(!chunk.is_empty(), "no empty data frames");
                assert!(chunk.len() <= MAX_OUT, "frame of {} bytes", chunk.len());
                data.extend_from_slice(&chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    assert!(body.is_end_stream());
    (data, trailers)
}

#[tokio::test]
async fn round_trip_every_encoding_and_size() {
    for encoding in ALL {
        for size in [0, 1, 1023, 1024, 10_000, 1_000_000] {
            let original = text(size, size as u64);
            for (frame_size, pending) in [(16 * 1024, false), (1000, true), (size.max(1), false)] {
                let mut inner = Frames::data(&original, frame_size);
                inner.pending_between = pending;
                let (compressed, _) = collect(Compressed::new(inner, encoding, 6)).await;
                let decoded = decompress(encoding, &compressed);
                assert!(
                    decoded == original,
                    "{encoding} size {size} frames {frame_size}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_level_round_trips() {
    let original = text(50_000, 7);
    for encoding in ALL {
        for level in [0, 1, 5, 9, 42] {
            let (compressed, _) = collect(Compressed::new(
                Frames::data(&original, 4096),
                encoding,
                level,
            ))
            .await;
            assert!(
                decompress(encoding, &compressed) == original,
                "{encoding} level {level}"
            );
        }
    }
}

/// Polls once: `Some(frame)` if ready, `None` if pending.
pub(super) async fn poll_once<B: Body + Unpin>(
    body: &mut B,
) -> Option<Option<Result<Frame<B::Data>, B::Error>>> {
    poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn flushes_when_the_backend_stalls() {
    for encoding in ALL {
        let (tx, rx) = mpsc::channel(4);
        let mut body = Compressed::new(Channel(rx), encoding, 6);
        let mut decoder = Decoder::new(encoding);
        let mut sent = Vec::new();
        for (i, chunk) in [
            &b"data: first event\n\n"[..],
            b"data: second\n\n",
            &text(100_000, 3),
        ]
        .into_iter()
        .enumerate()
        {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                .await
                .expect("open");
            sent.extend_from_slice(chunk);
            // Everything sent so far must come out once the backend has
            // stalled for FLUSH_DELAY, before the next chunk is sent.
            let deadline = tokio::time::Instant::now() + GENEROUS;
            while decoder.push(&[]) != sent {
                let frame = tokio::time::timeout_at(deadline, body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{encoding}: chunk {i} not flushed on a stall"));
                let data = frame
                    .expect("not ended")
                    .expect("no error")
                    .into_data()
                    .expect("data");
                decoder.push(&data);
            }
        }
        drop(tx);
        let (rest, _) = collect(body).await;
        assert!(decoder.push(&rest) == sent);
    }
}

#[tokio::test]
async fn fast_body_compresses_like_one_shot_gzip() {
    let original = text(1_000_000, 11);
    let mut one_shot = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    one_shot.write_all(&original).expect("in memory");
    let one_shot = one_shot.finish().expect("in memory").len();
    // 1 KiB frames, never `Pending`: a flush per frame would cost ~15% here.
    let (streamed, _) = collect(Compressed::new(
        Frames::data(&original, 1024),
        Encoding::Gzip,
        6,
    ))
    .await;
    let ratio = streamed.len() as f64 / one_shot as f64;
    assert!(
        ratio < 1.02,
        "streamed {} vs one-shot {one_shot}",
        streamed.len()
    );
}

#[tokio::test]
async fn trailers_follow_the_data() {
    let original = text(20_000, 5);
    for encoding in ALL {
        let mut inner = Frames::data(&original, 3000);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        inner.frames.push_back(Frame::trailers(trailers.clone()));
        let (compressed, got) = collect(Compressed::new(inner, encoding, 6)).await;
        assert_eq!(got, Some(trailers), "{encoding}");
        assert!(decompress(encoding, &compressed) == original, "{encoding}");
    }
}

#[tokio::test]
async fn inner_error_propagates_and_ends_the_stream() {
    for encoding in ALL {
        let mut inner = Frames::data(&text(200_000, 9), 10_000);
        inner.error_at_end = true;
        let mut body = std::pin::pin!(Compressed::new(inner, encoding, 6));
        let mut error = None;
        while let Some(frame) = body.frame().await {
            if let Err(e) = frame {
                error = Some(e.to_string());
                break;
            }
        }
        assert_eq!(error.as_deref(), Some("backend reset"), "{encoding}");
        assert!(
            body.frame().await.is_none(),
            "{encoding}: nothing after the error"
        );
        assert!(body.is_end_stream());
    }
}

#[tokio::test]
async fn output_frames_are_bounded() {
    let mut rng = fastrand::Rng::with_seed(1);
    let noise: Vec<u8> = (0..1_000_000).map(|_| rng.u8(..)).collect();
    for encoding in ALL {
        // One 1 MB frame of incompressible bytes: the output must still come
        // out in pieces of at most 64 KiB (checked by `collect`).
        let mut frames = 0;
        let mut body = std::pin::pin!(Compressed::new(
            Frames::data(&noise, noise.len()),
            encoding,
            6
        ));
        let mut compressed = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("no error").into_data().expect("data");
            assert!(data.len() <= MAX_OUT);
            compressed.extend_from_slice(&data);
            frames += 1;
        }
        assert!(frames >= 15, "{encoding}: {frames} frames");
        assert!(decompress(encoding, &compressed) == noise, "{encoding}");
    }
}

#[tokio::test]
async fn end_of_stream_and_size_hint() {
    let mut body = Compressed::new(Frames::data(b"", 1), Encoding::Gzip, 6);
    assert!(
        !body.is_end_stream(),
        "an empty body still has a gzip header and trailer"
    );
    assert_eq!(body.size_hint().exact(), None);
    let (compressed, _) = collect(&mut body).await;
    assert!(body.is_end_stream());
    assert!(decompress(Encoding::Gzip, &compressed).is_empty());
}

// Paused clock: time moves only when the runtime idles, so the immediate
// polls below cannot see the flush timer fire however slow the machine is.
#[tokio::test(start_paused = true)]
async fn a_stall_shorter_than_the_flush_delay_does_not_flush() {
    // Flushing at every stall between the frames of a fast body would end a
    // deflate block each time and cost up to 17 % in size.
    for encoding in ALL {
        let (tx, rx) = mpsc::channel(4);
        let mut body = Compressed::new(Channel(rx), encoding, 6);
        let mut decoder = Decoder::new(encoding);
        let chunk = text(2000, 5);
        tx.send(Ok(Frame::data(Bytes::from(chunk.clone()))))
            .await
            .expect("open");
        // Polled at once: the backend is stalled, but not for FLUSH_DELAY.
        while let Some(Some(Ok(frame))) = poll_once(&mut body).await {
            decoder.push(&frame.into_data().expect("data"));
        }
        assert!(decoder.push(&[]) != chunk, "{encoding}: flushed at once");
        // After the delay the flush comes.
        let frame = tokio::time::timeout(GENEROUS, body.frame()).await;
        decoder.push(
            &frame
                .expect("flushed")
                .expect("frame")
                .expect("ok")
                .into_data()
                .expect("data"),
        );
        assert!(
            decoder.push(&[]) == chunk,
            "{encoding}: not flushed after the delay"
        );
    }
}

#[tokio::test]
async fn dropping_mid_stream_drops_the_inner_body() {
    for encoding in ALL {
        let (tx, rx) = mpsc::channel(1);
        let mut body = Compressed::new(Channel(rx), encoding, 6);
        tx.send(Ok(Frame::data(Bytes::from(text(5000, 1)))))
            .await
            .expect("open");
        let frame = tokio::time::timeout(GENEROUS, body.frame()).await;
        assert!(frame.is_ok(), "{encoding}: nothing came out");
        drop(body);
        assert!(tx.is_closed(), "{encoding}: the inner body was not dropped");
    }
}

#[test]
fn compressed_is_send_when_its_inner_body_is() {
    fn send<T: Send + 'static>() {}
    send::<Compressed<http_body_util::Full<Bytes>>>();
    send::<Compressed<hyper::body::Incoming>>();
}

#[tokio::test]
async fn one_poll_compresses_a_bounded_amount() {
    const FRAME: usize = 64 * 1024;
    for encoding in ALL {
        // 4 MiB of zeros, all ready at once: output never fills a buffer.
        let (tx, rx) = mpsc::channel(64);
        for _ in 0..64 {
            let zeros = Bytes::from(vec![0u8; FRAME]);
            tx.send(Ok(Frame::data(zeros))).await.expect("open");
        }
        let mut body = Compressed::new(Channel(rx), encoding, 6);
        let mut compressed = Vec::new();
        if let Some(Some(frame)) = poll_once(&mut body).await {
            compressed.extend_from_slice(&frame.expect("no error").into_data().expect("data"));
        }
        let taken = tx.capacity();
        assert!(
            (1..=POLL_INPUT_BUDGET / FRAME + 1).contains(&taken),
            "{encoding}: one poll took {taken} frames"
        );
        drop(tx);
        compressed.extend_from_slice(&collect(body).await.0);
        assert_eq!(decompress(encoding, &compressed), vec![0u8; 64 * FRAME]);
    }
}

#[tokio::test]
async fn gzip_encoders_are_reused_even_after_an_abandoned_response() {
    // A response abandoned mid-stream (the client went away) leaves its
    // encoder full of half a stream; the pool must reset it, so the next
    // response on this thread, built from it, is still exact.
    let (tx, rx) = mpsc::channel(1);
    let mut abandoned = Compressed::new(Channel(rx), Encoding::Gzip, 6);
    tx.send(Ok(Frame::data(Bytes::from(text(50_000, 9)))))
        .await
        .expect("open");
    let _ = poll_once(&mut abandoned).await;
    let before = super::codec::idle_gzip_encoders();
    drop(abandoned);
    assert_eq!(super::codec::idle_gzip_encoders(), before + 1, "not pooled");

    for seed in 0..3 {
        let original = text(20_000, seed);
        let body = Compressed::new(Frames::data(&original, 4096), Encoding::Gzip, 6);
        // Taken from the pool while it runs...
        assert_eq!(super::codec::idle_gzip_encoders(), before);
        let (compressed, _) = collect(body).await;
        // ...and back once it is done.
        assert_eq!(super::codec::idle_gzip_encoders(), before + 1);
        assert!(
            decompress(Encoding::Gzip, &compressed) == original,
            "reuse {seed}"
        );
    }
}
