//! What both of the api-server's listeners share: the limits on what a client may make them hold, the count of
//! connections they closed and why, the accept step, and the count of open connections a drain waits for.
//!
//! The proxy listener ([`serve`](crate::serve)) is served by this crate's engine; the admin listener by hyper in
//! the api-server, which takes these from here so both accept, bound and drain alike.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use svc::CounterVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Sleep;

/// Pause after a failed accept (EMFILE and the like), so a full table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Bounds on what one client may make a listener hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time allowed to send a request's headers, from its first byte (from the accept for a connection's first
    /// request).
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    pub keepalive_timeout: Duration,
    /// Longest pause allowed in a request body; then 408, the client's fault.
    pub body_read_timeout: Duration,
    /// Longest pause allowed in the client's reading of a response; then the connection is closed.
    pub send_timeout: Duration,
    /// Most client connections open at once; beyond it a new one gets a fast 503 and is closed.
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted; bigger ones get 431.
    pub max_header_bytes: usize,
    /// How long open connections are still served, with `Connection: close`, after shutdown starts.
    pub drain_grace: Duration,
}

/// Why client connections ended because of the client (or the limit on connections), for `/metrics`.
#[derive(Debug, Clone)]
pub struct ConnectionErrors {
    counters: CounterVec,
}

impl ConnectionErrors {
    /// The reasons counted, each present (at zero) from the start.
    pub const REASONS: [&'static str; 9] = [
        "header_timeout",
        "header_too_large",
        "malformed",
        "unsupported",
        "body_timeout",
        "body_too_large",
        "client_gone",
        "send_timeout",
        "over_capacity",
    ];

    /// Counts into `counters`, labelled by reason.
    pub fn new(counters: CounterVec) -> ConnectionErrors {
        for reason in Self::REASONS {
            counters.with(reason);
        }
        ConnectionErrors { counters }
    }

    /// Counts one connection closed for `reason`.
    pub fn count(&self, reason: &'static str) {
        self.counters.with(reason).inc();
    }
}

/// The next connection on `listener`, with `TCP_NODELAY` set, or `None` once `stop` fires. A failed accept (EMFILE
/// and the like) is logged and pauses the loop, so a full table neither ends the server nor spins it.
pub async fn accept(
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
pub struct OpenConnections {
    count: AtomicUsize,
    closed: Notify,
}

impl OpenConnections {
    /// Connections open now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once no connection is open, or when `limit` fires (without one, only the former).
    pub async fn all_closed(&self, mut limit: Option<Pin<&mut Sleep>>) {
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
#[derive(Debug)]
pub struct OpenGuard(Arc<OpenConnections>);

impl OpenGuard {
    /// Counts one more open connection until the guard is dropped.
    pub fn new(open: &Arc<OpenConnections>) -> OpenGuard {
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
