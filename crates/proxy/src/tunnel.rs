//! An upgraded connection (WebSocket and the like): once the data server answered `101 Switching Protocols`, bytes
//! go both ways unchanged until either side closes, the tunnel is silent for `proxy.tunnel_idle_timeout`, or the
//! drain that follows a SIGTERM ends.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::Worker;
use crate::relay::write_paced;

/// Bytes read at once from either side.
const TUNNEL_BUFFER: usize = 16 * 1024;
/// Once one side has closed its half, how long the other may still send before the tunnel closes. WebSocket peers
/// close right after each other; a peer that keeps a half-open connection must not hold the tunnel for the whole
/// idle timeout.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why a tunnel ended, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    ClientClosed,
    ServerClosed,
    Idle,
    Drain,
    Error,
}

impl TunnelEnd {
    /// Every reason, each counted from the start.
    pub(crate) const ALL: [TunnelEnd; 5] = [
        TunnelEnd::ClientClosed,
        TunnelEnd::ServerClosed,
        TunnelEnd::Idle,
        TunnelEnd::Drain,
        TunnelEnd::Error,
    ];

    /// The metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::ClientClosed => "client_closed",
            TunnelEnd::ServerClosed => "server_closed",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Drain => "drain",
            TunnelEnd::Error => "error",
        }
    }
}

/// Relays a tunnel: `head` (the 101 and any bytes that came with it) to the client, `pending` (bytes the client sent
/// after its request) to the server, then both ways with tokio's `copy_bidirectional` (a poll loop per direction,
/// no timer or future per message). A side that closes its half is passed on as a half close; the tunnel ends when
/// both have (or [`HALF_CLOSE_GRACE`] after the first), when nothing is read either way for `idle`, or at the
/// drain's end. Its reason is the side that closed (or failed) first.
pub(crate) async fn relay(
    w: &Worker,
    client: &mut TcpStream,
    pending: &mut BytesMut,
    server: &mut TcpStream,
    head: &[u8],
    idle: Duration,
) -> TunnelEnd {
    if write_paced(
        client,
        head,
        w.limits.send_timeout,
        "the client read nothing",
    )
    .await
    .is_err()
    {
        return TunnelEnd::ClientClosed;
    }
    if !pending.is_empty() {
        if write_paced(server, pending, w.p.try_timeout, "the server read nothing")
            .await
            .is_err()
        {
            return TunnelEnd::ServerClosed;
        }
        pending.clear();
    }
    let seen = Seen {
        activity: Cell::new(Instant::now()),
        first_end: Cell::new(None),
    };
    let mut client = Watched {
        stream: client,
        seen: &seen,
        closed: TunnelEnd::ClientClosed,
        failed: TunnelEnd::ClientClosed,
    };
    let mut server = Watched {
        stream: server,
        seen: &seen,
        closed: TunnelEnd::ServerClosed,
        failed: TunnelEnd::Error,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut server,
        TUNNEL_BUFFER,
        TUNNEL_BUFFER,
    );
    tokio::pin!(copy);
    // One timer for the whole tunnel: each read only notes the time, and the timer, firing at least every
    // HALF_CLOSE_GRACE (so that a half close is noticed in time), is pushed back while there is activity. (Arming a
    // timer per message cost about a tenth of the relay's CPU.)
    let timer = tokio::time::sleep(idle.min(HALF_CLOSE_GRACE));
    tokio::pin!(timer);
    let drain = w.close_idle_now.notified();
    tokio::pin!(drain);
    loop {
        if w.close_idle.get() {
            return TunnelEnd::Drain;
        }
        tokio::select! {
            copied = &mut copy => {
                return seen.first_end.get().unwrap_or(match copied {
                    Ok(_) => TunnelEnd::ClientClosed,
                    Err(_) => TunnelEnd::Error,
                });
            }
            () = &mut timer => {
                let limit = if seen.first_end.get().is_some() {
                    idle.min(HALF_CLOSE_GRACE)
                } else {
                    idle
                };
                let due = seen.activity.get() + limit;
                let now = Instant::now();
                if now >= due {
                    return seen.first_end.get().unwrap_or(TunnelEnd::Idle);
                }
                timer.as_mut().reset(due.min(now + HALF_CLOSE_GRACE));
            }
            () = &mut drain => return TunnelEnd::Drain,
        }
    }
}

/// What the two sides of a tunnel have done, noted by their [`Watched`] streams.
struct Seen {
    /// The last read of any bytes (or of an end), either way.
    activity: Cell<Instant>,
    /// The first side to close or fail, and how.
    first_end: Cell<Option<TunnelEnd>>,
}

/// One side of a tunnel: its stream, noting each read and the first end in [`Seen`].
struct Watched<'a> {
    stream: &'a mut TcpStream,
    seen: &'a Seen,
    /// What it means when this side closes its half.
    closed: TunnelEnd,
    /// What it means when this side fails.
    failed: TunnelEnd,
}

impl Watched<'_> {
    fn ended(&self, end: TunnelEnd) {
        if self.seen.first_end.get().is_none() {
            self.seen.first_end.set(Some(end));
        }
    }
}

impl AsyncRead for Watched<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.stream).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                self.seen.activity.set(Instant::now());
                if buf.filled().len() == before {
                    self.ended(self.closed);
                }
            }
            Poll::Ready(Err(_)) => self.ended(self.failed),
            Poll::Pending => {}
        }
        polled
    }
}

impl AsyncWrite for Watched<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.stream).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = &polled {
            self.ended(self.failed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}
