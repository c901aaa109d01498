//! hyper's own answers to a request head it cannot parse (`400`, `414`,
//! `431`), given the one-line plain-text reason every other error of the
//! balancer has.
//!
//! hyper 1.x answers these itself, inside its HTTP/1 dispatcher
//! (`Conn::on_parse_error` writes `Server::on_error`'s head, with
//! `connection: close`, `content-length: 0` and `date`, and nothing else),
//! before `serve_connection` returns the error: by the time the error
//! reaches us the empty answer may already be on the wire, and hyper has
//! no hook to give it a body. Pre-parsing every head with `httparse`
//! before hyper would parse each head twice on the hot path and copy
//! hyper's limits. So the answer is rewritten on its way out instead, by
//! [`ParseErrors`], the stream hyper writes to, when both hold:
//!
//! - a request head is being awaited and has not been parsed: hyper's
//!   header read timer for it is alive ([`HeadWatch`]; hyper drops that
//!   timer as soon as a head parses, and keeps it after a parse error);
//! - the bytes hyper writes are exactly such an answer: `HTTP/1.1 400 Bad
//!   Request`, `414 URI Too Long` or `431 Request Header Fields Too Large`
//!   with only `connection: close`, `content-length: 0` and `date`.
//!
//! A response of the service never meets both: a `connection: close`
//! response ends keep-alive, so hyper reads no further head before or
//! after it. The rewritten answer keeps hyper's status and `date` and
//! adds `content-type` and a body; the stream then reports end-of-file,
//! as hyper closes the connection after such an answer anyway.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether hyper is waiting for a request head it has not parsed: the
/// count of its header read timers alive (one at a time, two for a moment
/// while one replaces the other).
#[derive(Debug, Default)]
pub(super) struct HeadWatch {
    timers: AtomicUsize,
}

impl HeadWatch {
    fn awaiting_head(&self) -> bool {
        self.timers.load(Relaxed) > 0
    }

    /// Counts a header read timer alive until the returned guard drops.
    pub(super) fn timer(self: &Arc<Self>) -> TimerAlive {
        self.timers.fetch_add(1, Relaxed);
        TimerAlive(Arc::clone(self))
    }
}

/// A header read timer of hyper's, alive: see [`HeadWatch`].
pub(super) struct TimerAlive(Arc<HeadWatch>);

impl Drop for TimerAlive {
    fn drop(&mut self) {
        self.0.timers.fetch_sub(1, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// hyper's header read timer, counted alive in a [`HeadWatch`].
    pub(super) struct HeadSleep {
        #[pin]
        sleep: tokio::time::Sleep,
        alive: TimerAlive,
    }
}

impl HeadSleep {
    pub(super) fn new(deadline: std::time::Instant, watch: &Arc<HeadWatch>) -> HeadSleep {
        HeadSleep {
            sleep: tokio::time::sleep_until(deadline.into()),
            alive: watch.timer(),
        }
    }

    pub(super) fn reset(self: Pin<&mut Self>, deadline: std::time::Instant) {
        self.project().sleep.reset(deadline.into());
    }
}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// The stream of one HTTP/1 hyper connection, rewriting hyper's own
/// parse-error answers (see the module documentation).
pub(super) struct ParseErrors<T> {
    inner: T,
    watch: Arc<HeadWatch>,
    /// The answer being written in place of hyper's, from its first unsent
    /// byte, and the length of hyper's to report once it is all out.
    replacing: Option<(Bytes, usize)>,
    /// An answer was rewritten: hyper closes the connection after it, so
    /// reads report end-of-file.
    answered: bool,
}

impl<T> ParseErrors<T> {
    pub(super) fn new(inner: T, watch: Arc<HeadWatch>) -> ParseErrors<T> {
        ParseErrors {
            inner,
            watch,
            replacing: None,
            answered: false,
        }
    }

    pub(super) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ParseErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.answered {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> ParseErrors<T> {
    /// Writes the rest of the replacement; `Ready(Ok(n))` with the length
    /// of hyper's answer once it is all out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((rest, hyper_len)) = &mut self.replacing {
            if rest.is_empty() {
                let n = *hyper_len;
                self.replacing = None;
                self.answered = true;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => rest.advance(n),
                other => return other,
            }
        }
        Poll::Ready(Ok(0))
    }

    /// Starts replacing `buf` if it is hyper's own parse-error answer.
    fn intercept(&mut self, buf: &[u8]) -> bool {
        if self.replacing.is_some() || !self.watch.awaiting_head() {
            return self.replacing.is_some();
        }
        match rewrite(buf) {
            Some(answer) => {
                tracing::debug!(
                    "malformed request head: answering {:?}",
                    first_line(&answer)
                );
                self.replacing = Some((answer, buf.len()));
                true
            }
            None => false,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ParseErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.intercept(buf) {
            return this.poll_replacement(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper's answer is a head alone: one buffer.
        let first = bufs.iter().find(|b| !b.is_empty());
        let others = bufs.iter().filter(|b| !b.is_empty()).count() > 1;
        if let Some(first) = first.filter(|_| !others) {
            if this.intercept(first) {
                return this.poll_replacement(cx);
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Our answer in place of `written`, if `written` is exactly one of
/// hyper's parse-error answers.
fn rewrite(written: &[u8]) -> Option<Bytes> {
    let head = std::str::from_utf8(written)
        .ok()?
        .strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    let reason = match status {
        "HTTP/1.1 400 Bad Request" => "malformed request: the request head is not valid HTTP/1.1",
        "HTTP/1.1 414 URI Too Long" => "request target too long",
        "HTTP/1.1 431 Request Header Fields Too Large" => {
            "request head too large: its header fields exceed 64 KiB"
        }
        _ => return None,
    };
    let (mut close, mut empty, mut date) = (false, false, None);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match (name.to_ascii_lowercase().as_str(), value.trim()) {
            ("connection", "close") if !close => close = true,
            ("content-length", "0") if !empty => empty = true,
            ("date", v) if date.is_none() => date = Some(v),
            _ => return None,
        }
    }
    if !(close && empty) {
        return None;
    }
    let date = date.map_or(String::new(), |d| format!("date: {d}\r\n"));
    Some(Bytes::from(format!(
        "{status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n{date}\r\n{reason}\n",
        reason.len() + 1
    )))
}

fn first_line(answer: &[u8]) -> String {
    let end = answer
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(answer.len());
    String::from_utf8_lossy(&answer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Wed, 02 Dec 2026 06:18:30 GMT\r\n";

    #[test]
    fn only_hypers_own_parse_error_answers_are_rewritten() {
        for (written, rewritten) in [
            (
                format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n"),
                Some("400 Bad Request"),
            ),
            (
                format!("HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n"),
                Some("431"),
            ),
            (
                "HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_owned(),
                Some("414"),
            ),
            // A backend's empty 400 kept alive, or with any other header.
            (
                format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\n"),
                None,
            ),
            (
                format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\nx-backend: a\r\n{DATE}\r\n"),
                None,
            ),
            // A body, another status, a partial head.
            (
                format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 3\r\n{DATE}\r\nbad"),
                None,
            ),
            (
                "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_owned(),
                None,
            ),
            ("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n".to_owned(), None),
        ] {
            let got = rewrite(written.as_bytes());
            match rewritten {
                None => assert!(got.is_none(), "{written:?} rewritten: {got:?}"),
                Some(status) => {
                    let got = String::from_utf8(got.expect(&written).to_vec()).unwrap();
                    let (head, body) = got.split_once("\r\n\r\n").unwrap();
                    assert!(head.contains(status), "{got}");
                    assert!(head.contains("\r\nconnection: close"), "{got}");
                    assert!(head.contains(&format!("content-length: {}", body.len())), "{got}");
                    assert_eq!(body.lines().count(), 1, "{got}");
                    assert!(body.ends_with('\n'), "{got}");
                    if written.contains("date:") {
                        assert!(head.contains(DATE.trim_end()), "{got}");
                    }
                }
            }
        }
    }
}
