//! The bodies the proxy answers with: its own ([`ProxyBody::Full`]), the
//! backend's passed through or compressed, each riding the request's
//! in-flight guard ([`Guarded`]) until its last byte, and the access log
//! line written when it is done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::Logged;
use crate::backend::InFlight;
use crate::compress::Compressed;
use crate::conns::ResponseBody;

/// A response body that keeps its request counted in flight until its last
/// byte has been read (not when the head arrives), as linkerd's
/// `PendingUntilEos` does, and tells the guard whose turn it is: a poll
/// that finds nothing waits on the backend, a poll that yields bytes hands
/// the turn to the client (whose reading paces the next poll).
#[derive(Debug)]
pub struct Guarded<B> {
    inner: B,
    guard: Option<InFlight>,
}

impl<B> Guarded<B> {
    /// `inner`, keeping `guard` until its end.
    pub fn new(inner: B, guard: InFlight) -> Guarded<B> {
        Guarded {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(guard) = &mut this.guard {
            match &frame {
                Poll::Pending => guard.waiting_on_backend(),
                Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => {
                    guard.backend_delivered()
                }
                Poll::Ready(Some(Ok(_)) | None) => {
                    guard.finish();
                    this.guard = None;
                }
                Poll::Ready(Some(Err(_))) => this.guard = None,
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy answers with.
pub enum ProxyBody {
    /// A body the proxy made itself (errors, the upgrade handshake).
    Full(Option<Bytes>),
    /// The backend's body, passed through.
    Upstream(Guarded<ResponseBody>),
    /// The backend's body, compressed on the fly.
    Compressed(Compressed<Guarded<ResponseBody>>),
    /// Any of these, with the request's access log line written when it
    /// is done (only while the access log is on).
    Logged(Box<Logged<ProxyBody>>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Compressed(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Logged(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Compressed(b) => b.is_end_stream(),
            ProxyBody::Logged(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Compressed(b) => b.size_hint(),
            ProxyBody::Logged(b) => b.size_hint(),
        }
    }
}
