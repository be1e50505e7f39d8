//! An upgraded connection (WebSocket and the like): once the data server answered `101 Switching Protocols`, bytes
//! go both ways unchanged until either side closes, the tunnel is silent for `proxy.tunnel_idle_timeout`, or the
//! drain that follows a SIGTERM ends.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// One side's reading state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Open,
    /// It sent its FIN (passed on to the other side as ours).
    Done,
}

/// Relays a tunnel: `head` (the 101 and any bytes that came with it) to the client, `pending` (bytes the client sent
/// after its request) to the server, then both ways. A side that closes its half is passed on as a half close; the
/// tunnel ends when both have (or [`HALF_CLOSE_GRACE`] after the first), when it is silent for `idle`, or at the
/// drain's end. Its reason is the side that closed first.
pub(crate) async fn relay(
    w: &Worker,
    client: &mut TcpStream,
    pending: &mut BytesMut,
    server: &mut TcpStream,
    head: &[u8],
    idle: Duration,
) -> TunnelEnd {
    let client_pause = w.limits.send_timeout;
    let server_pause = w.p.try_timeout;
    if write_paced(client, head, client_pause, "the client read nothing")
        .await
        .is_err()
    {
        return TunnelEnd::ClientClosed;
    }
    if !pending.is_empty() {
        if write_paced(server, pending, server_pause, "the server read nothing")
            .await
            .is_err()
        {
            return TunnelEnd::ServerClosed;
        }
        pending.clear();
    }
    let (mut client_r, mut client_w) = client.split();
    let (mut server_r, mut server_w) = server.split();
    let mut up = vec![0u8; TUNNEL_BUFFER];
    let mut down = vec![0u8; TUNNEL_BUFFER];
    let (mut client_side, mut server_side) = (Side::Open, Side::Open);
    // One timer and one drain signal for the whole tunnel: each message only notes the time, and the timer is
    // pushed back when it fires early. (Arming a new timer per message cost about a tenth of the relay's CPU.)
    let mut last_activity = Instant::now();
    let mut limit = idle;
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let drain = w.close_idle_now.notified();
    tokio::pin!(drain);
    let mut first_closed: Option<TunnelEnd> = None;
    loop {
        if let Some(first) = first_closed {
            if client_side == Side::Done && server_side == Side::Done {
                return first;
            }
        }
        if w.close_idle.get() {
            return TunnelEnd::Drain;
        }
        tokio::select! {
            read = client_r.read(&mut up), if client_side == Side::Open => match read {
                Ok(0) => {
                    client_side = Side::Done;
                    let _ = server_w.shutdown().await;
                    first_closed.get_or_insert(TunnelEnd::ClientClosed);
                    (last_activity, limit) = (Instant::now(), limit.min(HALF_CLOSE_GRACE));
                    timer.as_mut().reset(last_activity + limit);
                }
                Ok(n) => {
                    last_activity = Instant::now();
                    if write_paced(&mut server_w, &up[..n], server_pause, "the server read nothing").await.is_err() {
                        return TunnelEnd::ServerClosed;
                    }
                }
                Err(_) => return TunnelEnd::ClientClosed,
            },
            read = server_r.read(&mut down), if server_side == Side::Open => match read {
                Ok(0) => {
                    server_side = Side::Done;
                    let _ = client_w.shutdown().await;
                    first_closed.get_or_insert(TunnelEnd::ServerClosed);
                    (last_activity, limit) = (Instant::now(), limit.min(HALF_CLOSE_GRACE));
                    timer.as_mut().reset(last_activity + limit);
                }
                Ok(n) => {
                    last_activity = Instant::now();
                    if write_paced(&mut client_w, &down[..n], client_pause, "the client read nothing").await.is_err() {
                        return TunnelEnd::ClientClosed;
                    }
                }
                Err(_) => return TunnelEnd::Error,
            },
            () = &mut timer => {
                let due = last_activity + limit;
                if Instant::now() >= due {
                    return first_closed.unwrap_or(TunnelEnd::Idle);
                }
                timer.as_mut().reset(due);
            }
            () = &mut drain => return TunnelEnd::Drain,
        }
    }
}
