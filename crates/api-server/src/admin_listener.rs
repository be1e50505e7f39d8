//! The admin listener: the admin router served over HTTP/1.1 by hyper, with the accept step, limits and drain it
//! shares with the proxy listener (`proxy::listener`).
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
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use proxy::listener::{OpenConnections, OpenGuard, accept};
use proxy::{ConnectionErrors, HttpLimits};
use svc::Shutdown;
use tokio::net::TcpListener;

use crate::config::MIN_MAX_HEADER_BYTES;

/// Counts a connection that hyper ended with an error, when the error was the server refusing the client.
/// `served`: the connection answered a request before. hyper times the wait for the next head with
/// `header_read_timeout` too, so on such a connection a timeout is an idle kept-alive connection closed, which
/// is normal and not counted.
fn record(
    errors: &ConnectionErrors,
    listener: &'static str,
    peer: SocketAddr,
    err: &hyper::Error,
    served: bool,
) {
    let reason = if err.is_timeout() && served {
        tracing::debug!(listener, %peer, "idle connection closed");
        return;
    } else if err.is_timeout() {
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
    errors.count(reason);
    tracing::debug!(listener, %peer, reason, "connection closed: {err}");
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
        if open.count() >= limits.max_connections {
            // This listener's own reserve is full: closed at once, so that it never takes what the others need.
            errors.count("over_capacity");
            tracing::debug!(listener = name, %peer, "connection refused: listener at its connection limit");
            drop(stream);
            continue;
        }
        let served = Arc::new(AtomicBool::new(false));
        let service = CloseWhenDraining {
            inner: make_service(peer),
            draining: Arc::clone(&draining),
            served: Arc::clone(&served),
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let errors = errors.clone();
        let open = OpenGuard::new(&open);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                record(&errors, name, peer, &err, served.load(Ordering::Acquire));
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

/// A connection's service that, once the server drains, asks the client to close after each response.
#[derive(Debug, Clone)]
struct CloseWhenDraining<S> {
    inner: S,
    draining: Arc<AtomicBool>,
    /// Set once the connection has had a request.
    served: Arc<AtomicBool>,
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
        self.served.store(true, Ordering::Release);
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
