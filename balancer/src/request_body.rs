//! What the proxy sends to a backend as the request body: nothing, or the
//! client's body, held so that a body that never left can go to another
//! backend, and paced on its way (`max_request_body`, `client_body`: see
//! [`crate::limits::body`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::limits::body::{BodyError, BodyLimits, ClientWait, Pace};
use crate::limits::Limiter;

/// A request body that hyper may or may not start sending. Until its first
/// poll the client's body stays in the shared slot, so that after a connect
/// failure the proxy can take it back and try another backend: a body is
/// never sent to two backends, but one that never left can be re-routed.
/// The slot's mutex is per request and uncontended.
#[derive(Debug)]
pub struct BodySlot {
    body: Mutex<Option<Incoming>>,
    /// Time spent waiting on the client for this body, which the backend's
    /// `request` timeout leaves out.
    pub wait: ClientWait,
    limits: BodyLimits,
    /// Counts what the body limits refuse.
    limiter: Arc<Limiter>,
}

impl BodySlot {
    /// Holds `body` until the first attempt polls it; it is sent under
    /// `limits`.
    pub fn new(body: Incoming, limits: BodyLimits, limiter: &Arc<Limiter>) -> Arc<BodySlot> {
        Arc::new(BodySlot {
            body: Mutex::new(Some(body)),
            wait: ClientWait::default(),
            limits,
            limiter: Arc::clone(limiter),
        })
    }

    /// The body, if no attempt has started to send it.
    pub fn take(&self) -> Option<Incoming> {
        self.body.lock().ok().and_then(|mut b| b.take())
    }
}

/// The sending side of a [`BodySlot`].
#[derive(Debug)]
pub struct SlotBody {
    slot: Arc<BodySlot>,
    taken: Option<Incoming>,
    hint: SizeHint,
    pace: Pace,
}

impl SlotBody {
    /// Sends the slot's body, taking it out at the first poll.
    pub fn new(slot: Arc<BodySlot>) -> SlotBody {
        let hint = slot
            .body
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(Body::size_hint))
            .unwrap_or_default();
        let pace = Pace::new(slot.limits);
        SlotBody {
            slot,
            taken: None,
            hint,
            pace,
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Slot(s) => {
                if s.taken.is_none() {
                    s.taken = s.slot.take();
                }
                match &mut s.taken {
                    Some(body) => {
                        let polled = Pin::new(body).poll_frame(cx);
                        let rejected = &s.slot.limiter.rejected;
                        s.pace.check(polled, cx, &s.slot.wait, rejected)
                    }
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
