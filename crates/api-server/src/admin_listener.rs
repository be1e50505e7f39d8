//! The HTTP/1.1 accept loop of both listeners.
//!
//! Written against hyper directly rather than `axum::serve`, for what a listener facing untrusted clients needs:
//! a bound on the time to send request headers (a slowloris client holds a connection open by trickling a header
//! a byte at a time), a bound on their size (answered with 431), `TCP_NODELAY`, accept errors (such as running
//! out of file descriptors) that pause accepting instead of ending the server, and a drain on shutdown that does
//! not race clients.
//!
//! The drain: closing an idle keep-alive connection races a client that is sending its next request on it at that
//! moment, which then fails without an answer (hyper calls it `IncompleteMessage`). So on shutdown the listener
//! closes (new connections are refused, and a client can try another instance), but open connections are served
//! for a grace period with `Connection: close` on every response, so active clients finish their request and open
//! a new connection elsewhere. Only connections still open after the grace are closed.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use svc::{CounterVec, Shutdown};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::config::MIN_MAX_HEADER_BYTES;

/// Pause after a failed accept (EMFILE and the like), so a full table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Bounds on what one client may make a listener hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time allowed to send a request's headers, from its first byte.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted; bigger ones get 431.
    pub max_header_bytes: usize,
    /// How long open connections are still served, with `Connection: close`, after shutdown starts.
    pub drain_grace: Duration,
}

/// Why connections were closed by the server rather than the client, for `/metrics`.
#[derive(Debug, Clone)]
pub struct ConnectionErrors {
    counters: CounterVec,
}

impl ConnectionErrors {
    /// Counts into `counters`, labelled by reason.
    pub fn new(counters: CounterVec) -> ConnectionErrors {
        for reason in [
            "header_timeout",
            "header_too_large",
            "malformed",
            "unsupported",
        ] {
            counters.with(reason);
        }
        ConnectionErrors { counters }
    }

    /// Counts one connection closed for `reason`.
    pub fn count(&self, reason: &'static str) {
        self.counters.with(reason).inc();
    }

    fn record(&self, listener: &'static str, peer: SocketAddr, err: &hyper::Error) {
        let reason = if err.is_timeout() {
            "header_timeout"
        } else if err.is_parse_too_large() {
            "header_too_large"
        } else if err.is_parse() {
            "malformed"
        } else {
            // The client went away or reset: its business, not a rejection.
            tracing::debug!(listener, %peer, "connection ended: {err}");
            return;
        };
        self.counters.with(reason).inc();
        tracing::debug!(listener, %peer, reason, "connection closed: {err}");
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` fires, then waits for open connections to finish their requests
/// (the caller bounds that wait). `make_service` builds each connection's service from the peer address.
pub async fn serve_http1<S, B, F>(
    name: &'static str,
    listener: TcpListener,
    limits: HttpLimits,
    errors: ConnectionErrors,
    shutdown: Shutdown,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_MAX_HEADER_BYTES))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let draining = Arc::new(AtomicBool::new(false));
    let open = Arc::new(OpenConnections::default());
    let stop = shutdown.wait();
    tokio::pin!(stop);
    while let Some((stream, peer)) = accept(name, &listener, stop.as_mut()).await {
        let service = CloseWhenDraining {
            inner: make_service(peer),
            draining: Arc::clone(&draining),
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let errors = errors.clone();
        let open = OpenGuard::new(&open);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                errors.record(name, peer, &err);
            }
            drop(open);
        });
    }
    drop(listener);
    draining.store(true, Ordering::Release);
    let grace = tokio::time::sleep(limits.drain_grace);
    tokio::pin!(grace);
    open.all_closed(Some(grace)).await;
    graceful.shutdown().await;
}

/// The next connection on `listener`, with `TCP_NODELAY` set, or `None` once `stop` fires. A failed accept (EMFILE
/// and the like) is logged and pauses the loop, so a full table neither ends the server nor spins it.
pub(crate) async fn accept(
    name: &'static str,
    listener: &TcpListener,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.as_mut() => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Responses are written whole; waiting to coalesce them only adds latency.
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(err) => {
                tracing::warn!(listener = name, "accept failed: {err}; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Connections being served, and a signal when one closes.
#[derive(Debug, Default)]
pub(crate) struct OpenConnections {
    count: AtomicUsize,
    closed: Notify,
}

impl OpenConnections {
    /// Returns once no connection is open, or when `limit` fires (without one, only the former).
    pub(crate) async fn all_closed(&self, mut limit: Option<Pin<&mut Sleep>>) {
        loop {
            // Registered before looking, so that the last close between the two is not missed.
            let closed = self.closed.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            match limit.as_mut() {
                Some(limit) => tokio::select! {
                    () = closed => {}
                    () = limit.as_mut() => return,
                },
                None => closed.await,
            }
        }
    }
}

/// Counts a connection as open while it lives.
pub(crate) struct OpenGuard(Arc<OpenConnections>);

impl OpenGuard {
    /// Counts one more open connection until the guard is dropped.
    pub(crate) fn new(open: &Arc<OpenConnections>) -> OpenGuard {
        open.count.fetch_add(1, Ordering::AcqRel);
        OpenGuard(Arc::clone(open))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_waiters();
    }
}

/// A connection's service that, once the server drains, asks the client to close after each response.
#[derive(Debug, Clone)]
struct CloseWhenDraining<S> {
    inner: S,
    draining: Arc<AtomicBool>,
}

impl<S, B> Service<Request<Incoming>> for CloseWhenDraining<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let response = self.inner.call(request);
        let draining = Arc::clone(&self.draining);
        Box::pin(async move {
            let mut response = response.await?;
            if draining.load(Ordering::Acquire) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}
