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
/// it, [`RetryableBody::touched`] is true and no other try may use it.
#[derive(Debug, Clone)]
pub struct RetryableBody {
    slot: Arc<Mutex<Option<axum::body::Body>>>,
    touched: Arc<AtomicBool>,
}

impl RetryableBody {
    /// Wraps the client's body.
    pub fn new(body: axum::body::Body) -> Self {
        RetryableBody {
            slot: Arc::new(Mutex::new(Some(body))),
            touched: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether any try has read from the body.
    pub fn touched(&self) -> bool {
        self.touched.load(Ordering::Acquire)
    }

    fn slot(&self) -> MutexGuard<'_, Option<axum::body::Body>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Body for RetryableBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.touched.store(true, Ordering::Release);
        let mut slot = self.slot();
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slot().as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.slot()
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// An upstream response body that keeps the server's in-flight count until the client has read it all (or gone).
#[derive(Debug)]
pub struct GuardedBody {
    inner: Incoming,
    _in_flight: InFlightGuard,
}

impl GuardedBody {
    /// Holds `in_flight` for the life of `inner`.
    pub fn new(inner: Incoming, in_flight: InFlightGuard) -> Self {
        GuardedBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
