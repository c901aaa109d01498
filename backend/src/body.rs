//! The response body: one concrete type for every endpoint, so a response
//! costs no boxing and the common small answers no allocation beyond their
//! bytes.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::gen::{Layout, Pattern, CHUNK};

/// Errors a body can end with: only the echoed request body can fail.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response this backend sends: an enum rather than a
/// boxed trait object, so building a response allocates nothing for it.
pub struct Body {
    kind: Kind,
}

enum Kind {
    /// Whole bytes, taken on the first poll (`None` once sent).
    Full(Option<Bytes>),
    /// `/text`, `/json`, `/html`, `/bytes`.
    Generated(Generated),
    /// `/stream`.
    Ticks(Ticks),
    /// `/echo-body`: the request body, frame for frame.
    Echo(Incoming),
}

impl Body {
    /// A body with no bytes.
    pub(crate) fn empty() -> Body {
        Body::full(Bytes::new())
    }

    /// A body of the given bytes, sent as one frame.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes: Bytes = bytes.into();
        let bytes = (!bytes.is_empty()).then_some(bytes);
        Body {
            kind: Kind::Full(bytes),
        }
    }

    /// A generated body; `sized` says whether its length is announced
    /// (`Content-Length`) or left unknown (chunked in HTTP/1.1).
    pub(crate) fn generated(layout: Layout, sized: bool) -> Body {
        Body {
            kind: Kind::Generated(Generated {
                head: layout.head,
                pattern: layout.pattern,
                at: 0,
                middle: layout.middle,
                tail: layout.tail,
                sized,
            }),
        }
    }

    /// `chunks` frames, the first at once and each next one `interval`
    /// later; each is a `chunk I` line, or `size` bytes of text if given.
    pub(crate) fn ticks(chunks: u64, interval: Duration, size: Option<usize>) -> Body {
        Body {
            kind: Kind::Ticks(Ticks {
                sent: 0,
                chunks,
                interval,
                size: size.map(|s| s.min(CHUNK)),
                sleep: None,
            }),
        }
    }

    /// The request body, streamed back as it arrives.
    pub(crate) fn echo(incoming: Incoming) -> Body {
        Body {
            kind: Kind::Echo(incoming),
        }
    }
}

/// State of a generated body: what is left of each part.
struct Generated {
    head: Bytes,
    pattern: &'static Pattern,
    /// The phase in `pattern` where the next middle frame starts.
    at: usize,
    /// Middle bytes still to send.
    middle: u64,
    tail: Bytes,
    /// Whether `size_hint` is exact (so hyper sends `Content-Length`).
    sized: bool,
}

impl Generated {
    fn next(&mut self) -> Option<Bytes> {
        if !self.head.is_empty() {
            return Some(std::mem::take(&mut self.head));
        }
        if self.middle > 0 {
            let take = self.middle.min(CHUNK as u64) as usize;
            let frame = self.pattern.slice(self.at, take);
            self.at = self.pattern.advance(self.at, take);
            self.middle -= take as u64;
            return Some(frame);
        }
        if !self.tail.is_empty() {
            return Some(std::mem::take(&mut self.tail));
        }
        None
    }

    fn remaining(&self) -> u64 {
        self.head.len() as u64 + self.middle + self.tail.len() as u64
    }
}

/// State of a `/stream` body.
struct Ticks {
    sent: u64,
    chunks: u64,
    interval: Duration,
    size: Option<usize>,
    /// Created before the second chunk; reset by `interval` after each one,
    /// from its previous deadline so that the gaps do not drift.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Ticks {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.sent >= self.chunks {
            return Poll::Ready(None);
        }
        if self.sent > 0 && !self.interval.is_zero() {
            let interval = self.interval;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            ready!(sleep.as_mut().poll(cx));
            let next = sleep.deadline() + interval;
            sleep.as_mut().reset(next.max(Instant::now()));
        }
        let chunk = match self.size {
            Some(size) => crate::gen::text(size),
            None => Bytes::from(format!("chunk {}\n", self.sent + 1)),
        };
        self.sent += 1;
        Poll::Ready(Some(chunk))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let data = |bytes: Option<Bytes>| Poll::Ready(bytes.map(|b| Ok(Frame::data(b))));
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => data(bytes.take()),
            Kind::Generated(generated) => data(generated.next()),
            Kind::Ticks(ticks) => ticks.poll_next(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
            Kind::Echo(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Generated(generated) => generated.remaining() == 0,
            Kind::Ticks(ticks) => ticks.sent >= ticks.chunks,
            Kind::Echo(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Generated(generated) if generated.sized => {
                SizeHint::with_exact(generated.remaining())
            }
            Kind::Generated(_) | Kind::Ticks(_) => SizeHint::new(),
            Kind::Echo(incoming) => incoming.size_hint(),
        }
    }
}
