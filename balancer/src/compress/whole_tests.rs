//! Tests of [`Compressed`] on bodies of known length (an exact size hint, as
//! `Content-Length` gives): compressed whole with libdeflate up to
//! `WHOLE_MAX`, streamed above it, and streamed from the first stall on.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::body::{FLUSH_DELAY, MAX_OUT};
use super::body_tests::{collect, poll_once};
use super::whole::{self, WHOLE_MAX};
use super::{Compressed, Encoding};

/// Far above the flush delay: a bound for waits that are about order.
const GENEROUS: std::time::Duration = std::time::Duration::from_secs(5);

/// Words and numbers, deterministic per seed: compresses about 3:1.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let word = ["load ", "balancer ", "{\"id\": ", "}, ", "gzip ", "stream "];
        out.extend_from_slice(word[rng.usize(..word.len())].as_bytes());
        out.extend_from_slice(rng.u32(..100_000).to_string().as_bytes());
    }
    out.truncate(len);
    out
}

/// What one whole-buffer call makes of `data` at the config's `level`.
fn one_call(data: &[u8], level: u32) -> Bytes {
    let (_, engine) = whole::plan(Encoding::Gzip, level, Some(data.len() as u64))
        .expect("a level and size compressed whole");
    whole::gzip(data, engine).expect("gzip")
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// A body of `len` announced bytes fed by the test through a channel:
/// `Pending` until the test sends.
struct Channel {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>,
    len: u64,
}

fn channel(
    len: u64,
) -> (
    mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>,
    Channel,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Channel { rx, len })
}

impl Body for Channel {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// A channel body holding `data` in frames of `frame` bytes (and whatever
/// else is sent before the sender is dropped).
fn ready(data: &[u8], frame: usize) -> Channel {
    let (tx, body) = channel(data.len() as u64);
    for chunk in data.chunks(frame.max(1)) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .expect("open");
    }
    body
}

#[tokio::test]
async fn known_length_round_trips_and_is_compressed_whole() {
    for len in [0, 1, 1024, 10_240, 100_000, WHOLE_MAX as usize] {
        let original = text(len, len as u64);
        for level in [1, 6, 7] {
            // The exact bytes of one libdeflate call: the body was gathered
            // whole, however it was framed.
            let want = one_call(&original, level);
            for frame in [len.max(1), 16 * 1024, 1000] {
                let body = Compressed::new(ready(&original, frame), Encoding::Gzip, level);
                let (compressed, trailers) = collect(body).await;
                assert_eq!(trailers, None);
                assert!(compressed == want[..], "{len} level {level} frames {frame}");
                assert!(gunzip(&compressed) == original, "{len} level {level}");
            }
        }
    }
}

#[tokio::test]
async fn a_large_compressed_result_comes_in_bounded_frames() {
    // 256 KiB of noise compresses to more than 256 KiB: at least 4 frames.
    let mut rng = fastrand::Rng::with_seed(3);
    let noise: Vec<u8> = (0..WHOLE_MAX).map(|_| rng.u8(..)).collect();
    let mut body = std::pin::pin!(Compressed::new(ready(&noise, 64 * 1024), Encoding::Gzip, 6));
    let (mut compressed, mut frames) = (Vec::new(), 0);
    while let Some(frame) = body.frame().await {
        let data = frame.expect("no error").into_data().expect("data");
        assert!(data.len() <= MAX_OUT);
        compressed.extend_from_slice(&data);
        frames += 1;
    }
    assert!(frames >= 4, "{frames} frames");
    assert!(gunzip(&compressed) == noise);
}

// Paused clock: the stall timer cannot fire during the immediate polls.
#[tokio::test(start_paused = true)]
async fn nothing_is_sent_before_a_known_length_body_ends() {
    let original = text(100_000, 1);
    let (tx, body) = channel(original.len() as u64);
    let mut body = Compressed::new(body, Encoding::Gzip, 6);
    for chunk in original.chunks(10_000) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .expect("open");
        assert!(
            poll_once(&mut body).await.is_none(),
            "output before the end"
        );
    }
    drop(tx);
    let (compressed, _) = collect(body).await;
    assert!(compressed == one_call(&original, 6)[..]);
}

#[tokio::test(start_paused = true)]
async fn over_the_bound_streams() {
    streams(WHOLE_MAX as usize + 1, 6).await;
}

#[tokio::test(start_paused = true)]
async fn levels_8_and_9_stream() {
    streams(100_001, 8).await;
    streams(100_001, 9).await;
}

/// Asserts that a body of `len` announced bytes of noise streams at
/// `level`. Noise fills output buffers at once: a streaming body yields
/// while the backend is still sending; a gathering one would not.
async fn streams(len: usize, level: u32) {
    let mut rng = fastrand::Rng::with_seed(5);
    let noise: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    let (tx, body) = channel(noise.len() as u64);
    let mut body = Compressed::new(body, Encoding::Gzip, level);
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&noise[..100_000]))))
        .expect("open");
    let mut compressed = Vec::new();
    match poll_once(&mut body).await {
        Some(Some(Ok(frame))) => compressed.extend_from_slice(&frame.into_data().expect("data")),
        other => panic!(
            "level {level}, {len} bytes: streaming yields at once, got {:?}",
            other.is_some()
        ),
    }
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&noise[100_000..]))))
        .expect("open");
    drop(tx);
    compressed.extend_from_slice(&collect(body).await.0);
    assert!(gunzip(&compressed) == noise);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_is_flushed_after_the_delay_then_streams() {
    let original = text(100_000, 2);
    let (tx, body) = channel(original.len() as u64);
    let mut body = Compressed::new(body, Encoding::Gzip, 6);
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&original[..30_000]))))
        .expect("open");
    let start = tokio::time::Instant::now();
    assert!(
        poll_once(&mut body).await.is_none(),
        "sent before the stall"
    );
    // The backend stalls: everything so far must come out after the flush
    // delay (the clock only advances when the runtime idles, so "after"
    // is exact), and not be held until the body ends.
    while decoder.get_ref().len() < 30_000 {
        let frame = tokio::time::timeout(GENEROUS, body.frame())
            .await
            .expect("flushed on the stall")
            .expect("not ended")
            .expect("no error");
        decoder
            .write_all(&frame.into_data().expect("data"))
            .and_then(|()| decoder.flush())
            .expect("valid gzip");
    }
    assert_eq!(decoder.get_ref()[..], original[..30_000]);
    assert_eq!(start.elapsed(), FLUSH_DELAY, "flushed exactly at the delay");
    // The rest streams, and the whole decodes to the original.
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&original[30_000..]))))
        .expect("open");
    drop(tx);
    let (rest, _) = collect(body).await;
    decoder.write_all(&rest).expect("valid gzip");
    assert!(decoder.finish().expect("complete gzip") == original);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_before_any_data_streams_without_an_empty_flush() {
    let original = text(5000, 4);
    let (tx, body) = channel(original.len() as u64);
    let mut body = std::pin::pin!(Compressed::new(body, Encoding::Gzip, 6));
    // No data: after the delay the body streams, with nothing to send yet.
    let waited = tokio::time::timeout(FLUSH_DELAY * 4, body.frame()).await;
    assert!(waited.is_err(), "yielded with no data");
    tx.send(Ok(Frame::data(Bytes::from(original.clone()))))
        .expect("open");
    drop(tx);
    let (compressed, _) = collect(body).await;
    assert!(gunzip(&compressed) == original);
}

#[tokio::test]
async fn trailers_follow_the_whole_body() {
    let original = text(20_000, 6);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let (tx, inner) = channel(original.len() as u64);
    for chunk in original.chunks(3000) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .expect("open");
    }
    tx.send(Ok(Frame::trailers(trailers.clone())))
        .expect("open");
    drop(tx);
    let (compressed, got) = collect(Compressed::new(inner, Encoding::Gzip, 6)).await;
    assert_eq!(got, Some(trailers));
    assert!(compressed == one_call(&original, 6)[..]);
}

#[tokio::test]
async fn an_error_while_gathering_ends_the_stream() {
    let original = text(50_000, 7);
    let (tx, body) = channel(original.len() as u64);
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&original[..20_000]))))
        .expect("open");
    tx.send(Err(io::Error::other("backend reset")))
        .expect("open");
    let mut body = std::pin::pin!(Compressed::new(body, Encoding::Gzip, 6));
    match body.frame().await {
        Some(Err(e)) => assert_eq!(e.to_string(), "backend reset"),
        _ => panic!("the error comes first, with no data before it"),
    }
    assert!(body.frame().await.is_none(), "nothing after the error");
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn a_body_longer_than_announced_streams_all_of_it() {
    // A body whose size hint lies (hyper's would not) is still sent whole.
    let original = text(30_000, 8);
    let (tx, body) = channel(10_000);
    for chunk in original.chunks(4096) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .expect("open");
    }
    drop(tx);
    let (compressed, _) = collect(Compressed::new(body, Encoding::Gzip, 6)).await;
    assert!(gunzip(&compressed) == original);
}

#[tokio::test]
async fn dropping_while_gathering_drops_the_inner_body() {
    let (tx, body) = channel(100_000);
    let mut body = Compressed::new(body, Encoding::Gzip, 6);
    tx.send(Ok(Frame::data(Bytes::from(text(5000, 9)))))
        .expect("open");
    assert!(poll_once(&mut body).await.is_none());
    drop(body);
    assert!(tx.is_closed(), "the inner body was not dropped");
}
