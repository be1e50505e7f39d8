//! The HTTP/1.1 accept loop of both listeners.
//!
//! Written against hyper directly rather than `axum::serve`, for what a listener facing untrusted clients needs:
//! a bound on the time to send request headers (a slowloris client holds a connection open by trickling a header
//! a byte at a time), a bound on their size (answered with 431), `TCP_NODELAY`, accept errors (such as running
//! out of file descriptors) that pause accepting instead of ending the server, and a drain on shutdown.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use svc::{CounterVec, Shutdown};
use tokio::net::TcpListener;

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
}

/// Why connections were closed by the server rather than the client, for `/metrics`.
#[derive(Debug, Clone)]
pub struct ConnectionErrors {
    counters: CounterVec,
}

impl ConnectionErrors {
    /// Counts into `counters`, labelled by reason.
    pub fn new(counters: CounterVec) -> ConnectionErrors {
        for reason in ["header_timeout", "header_too_large", "malformed"] {
            counters.with(reason);
        }
        ConnectionErrors { counters }
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
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
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
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(listener = name, "accept failed: {err}; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Responses are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), make_service(peer)));
        let errors = errors.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                errors.record(name, peer, &err);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
