//! What the proxy sends to a backend as the request body: nothing, or the
//! client's body, held so that a body that never left can go to another
//! backend.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request body that hyper may or may not start sending. Until its first
/// poll the client's body stays in the shared slot, so that after a connect
/// failure the proxy can take it back and try another backend: a body is
/// never sent to two backends, but one that never left can be re-routed.
/// The slot's mutex is per request and uncontended.
#[derive(Debug)]
pub struct BodySlot(Mutex<Option<Incoming>>);

impl BodySlot {
    /// Holds `body` until the first attempt polls it.
    pub fn new(body: Incoming) -> Arc<BodySlot> {
        Arc::new(BodySlot(Mutex::new(Some(body))))
    }

    /// The body, if no attempt has started to send it.
    pub fn take(&self) -> Option<Incoming> {
        self.0.lock().ok().and_then(|mut b| b.take())
    }
}

/// The sending side of a [`BodySlot`].
#[derive(Debug)]
pub struct SlotBody {
    slot: Arc<BodySlot>,
    taken: Option<Incoming>,
    hint: SizeHint,
}

impl SlotBody {
    /// Sends the slot's body, taking it out at the first poll.
    pub fn new(slot: Arc<BodySlot>) -> SlotBody {
        let hint = slot
            .0
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(Body::size_hint))
            .unwrap_or_default();
        SlotBody {
            slot,
            taken: None,
            hint,
        }
    }
}

/// What the proxy sends to a backend.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (most requests).
    Empty,
    /// The client's body, streamed.
    Slot(SlotBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Slot(s) => {
                if s.taken.is_none() {
                    s.taken = s.slot.0.lock().ok().and_then(|mut b| b.take());
                }
                match &mut s.taken {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Slot(s) => s.taken.as_ref().is_some_and(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Slot(s) => s.taken.as_ref().map_or(s.hint, Body::size_hint),
        }
    }
}
