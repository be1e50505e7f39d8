//! Bodies that stream through the proxy without being buffered.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use discovery::InFlightGuard;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The client's request body, handed to one try after another until a try starts reading it.
///
/// A connect failure happens before hyper polls the body, so the untouched body can go to the next server: that is
/// what makes "a connect failure is always retried" possible without buffering uploads. Once a try has read from
/// it, [`UpstreamBody::touched`] is true and no other try may use it. A request without a body (most of them)
/// shares nothing and costs no allocation.
#[derive(Debug, Clone)]
pub struct UpstreamBody(Option<Arc<Shared>>);

#[derive(Debug)]
struct Shared {
    touched: AtomicBool,
    body: Mutex<Option<Incoming>>,
}

impl UpstreamBody {
    /// Wraps the client's body.
    pub fn new(body: Incoming) -> Self {
        if body.is_end_stream() {
            return UpstreamBody(None);
        }
        UpstreamBody(Some(Arc::new(Shared {
            touched: AtomicBool::new(false),
            body: Mutex::new(Some(body)),
        })))
    }

    /// Whether any try has read from the body (never, for an empty one).
    pub fn touched(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.touched.load(Ordering::Acquire))
    }

    fn slot(shared: &Shared) -> MutexGuard<'_, Option<Incoming>> {
        shared.body.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(shared) = &self.0 else {
            return Poll::Ready(None);
        };
        shared.touched.store(true, Ordering::Release);
        match UpstreamBody::slot(shared).as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|s| {
            UpstreamBody::slot(s)
                .as_ref()
                .is_none_or(Body::is_end_stream)
        })
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            None => SizeHint::with_exact(0),
            Some(s) => UpstreamBody::slot(s)
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
        }
    }
}

/// What the proxy answers with: the upstream's body, streamed, or a small body of its own (an error document).
#[derive(Debug)]
pub enum ProxyBody {
    /// An upstream response body; it keeps the server's in-flight count until the client has read it all (or gone).
    Upstream {
        /// The body.
        inner: Incoming,
        /// Held for the life of the body.
        in_flight: InFlightGuard,
    },
    /// A complete body, sent as one frame.
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { inner, .. } => Pin::new(inner).poll_frame(cx),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
