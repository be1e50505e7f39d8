//! An upgraded connection (WebSocket and the like): once the data server answered `101 Switching Protocols`, bytes
//! go both ways unchanged until either side closes, the tunnel is silent for `proxy.tunnel_idle_timeout`, a side
//! takes nothing of what is sent to it for its send limit (the client `server.send_timeout`, the server
//! `proxy.try_timeout`), or the drain that follows a SIGTERM ends.
//!
//! Two relays. By default the tunnel goes to the io_uring relay threads (`crates/tunnel-ring`, [`RingRelay`]):
//! this task hands both sockets over and waits only for the end or the drain. Where io_uring is refused, or with
//! `proxy.tunnel_io_uring = false`, this task relays it on the worker's event loop ([`relay_here`]).
//!
//! Why two (`cargo xtask bench websocket`: 64 B echoes on 64 sockets, 2026-11-30). On the event loop, per echo the
//! proxy makes the same system calls as nginx (two `recvfrom`, two `sendto`), about 90 % of its CPU time in the
//! kernel, yet its CPU per message stayed 0.6–1.3 µs above nginx's (12.9–13.2 against 12.0–12.3 µs on a quiet
//! machine; ratio 0.95–0.99). `perf record` of both in the same run put the difference in user space (10 % of the
//! api-server's samples against 6 % of nginx's): tokio's wake of the task and the first touch of its futures, and
//! its I/O driver's readiness bookkeeping, where nginx calls a handler from its epoll loop. The kernel samples per
//! message were equal. On the ring, a message costs no readiness event and no task wake, and one `io_uring_enter`
//! carries many sockets' receives and sends: 8–14 % less CPU per message than nginx, ratio 1.00–1.11 in 11 runs.
//!
//! The relay on the event loop: one poll function moves both directions ([`Tunnel`]); the timer and the drain
//! signal are polled only when their own waker rang ([`Alarm`]); a read sets a flag instead of reading the clock.
//! Against `copy_bidirectional` behind a wrapper that read the clock per read, with the timer and the drain in a
//! `select!` polled on every wake, that cut the CPU per message in each of five runs side by side.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use discovery::InFlightGuard;
use tunnel_ring::{HALF_CLOSE_GRACE, Limits, SendWatch};

use crate::conn::Worker;
use crate::relay::write_paced;

/// Reads one direction makes per poll before it lets the other move: a client uploading without pause must not
/// starve the server's frames to it (tokio's per-task budget would otherwise go to the busy side every time).
const READS_PER_POLL: usize = 8;

/// Why a tunnel ended, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// The client closed or reset its side first.
    ClientClosed,
    /// The data server did.
    ServerClosed,
    /// The client read nothing of what the server sent for `server.send_timeout`: it pays with its tunnel, and the
    /// data server's connection, blocked behind it, is freed.
    ClientStalled,
    /// The data server read nothing of what the client sent for `proxy.try_timeout`.
    ServerStalled,
    Idle,
    Drain,
    /// A failure of the proxy's own, or one it cannot attribute to either side.
    Error,
}

impl TunnelEnd {
    /// Every reason, each counted from the start.
    pub(crate) const ALL: [TunnelEnd; 7] = [
        TunnelEnd::ClientClosed,
        TunnelEnd::ServerClosed,
        TunnelEnd::ClientStalled,
        TunnelEnd::ServerStalled,
        TunnelEnd::Idle,
        TunnelEnd::Drain,
        TunnelEnd::Error,
    ];

    /// The metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::ClientClosed => "client_closed",
            TunnelEnd::ServerClosed => "server_closed",
            TunnelEnd::ClientStalled => "client_stalled",
            TunnelEnd::ServerStalled => "server_stalled",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Drain => "drain",
            TunnelEnd::Error => "error",
        }
    }
}

/// The server's side of a tunnel, handed from the request that was upgraded to its connection.
pub(crate) struct Upgraded {
    pub(crate) server: TcpStream,
    /// The server stays in flight while the tunnel is open.
    pub(crate) in_flight: InFlightGuard,
    pub(crate) upstream: String,
    pub(crate) request_id: String,
}

/// Relays a tunnel to its end, counted in `/metrics` (open, then closed by reason): `head` (the 101 and any bytes
/// that came with it) to the client, `pending` (bytes the client sent after its request) to the server, then both
/// ways, on the io_uring relay when there is one ([`RingRelay`]), else in this task ([`relay_here`]). A side that
/// closes its half is passed on as a half close; the tunnel ends when both have (or [`HALF_CLOSE_GRACE`] after the
/// first, or the idle timeout if shorter), when nothing is read either way for `proxy.tunnel_idle_timeout`, when a
/// side takes nothing of a write for its limit (`server.send_timeout` for the client, `proxy.try_timeout` for the
/// server), or at the drain's end. Its reason is the side that closed first, by a FIN or a reset alike; `Error` only for a
/// failure neither side explains. Returns the client's socket for the connection's lingering close (`None` when
/// it was lost with a failure).
pub(crate) async fn run(
    w: &Worker,
    upgraded: Upgraded,
    mut client: TcpStream,
    mut pending: BytesMut,
    head: Vec<u8>,
) -> Option<TcpStream> {
    let metrics = &w.p.metrics;
    let _open = metrics.tunnels_open.inc_guard();
    let Upgraded {
        mut server,
        in_flight,
        upstream,
        request_id,
    } = upgraded;
    let limits = Limits {
        idle: w.p.tunnel_idle_timeout,
        client_send: w.limits.send_timeout,
        server_send: w.p.try_timeout,
    };
    let started = start(w, &mut client, &mut pending, &mut server, &head).await;
    // Not needed for the tunnel's life, which may be hours.
    drop((pending, head));
    // Each path closes the server's side when the tunnel ends (the ring did already), before the client's
    // lingering close.
    let (end, client) = match started {
        Err(end) => {
            drop(server);
            (end, Some(client))
        }
        Ok(()) => match &w.tunnels.relay {
            Some(ring) => on_ring(w, ring, client, server, limits).await,
            None => {
                let end = relay_here(w, &mut client, &mut server, limits).await;
                drop(server);
                (end, Some(client))
            }
        },
    };
    drop(in_flight);
    metrics.tunnels_closed.with(end.as_str()).inc();
    tracing::debug!(%request_id, %upstream, reason = end.as_str(), "tunnel closed");
    client
}

/// Sends the 101 to the client and what the client already sent to the server.
async fn start(
    w: &Worker,
    client: &mut TcpStream,
    pending: &mut BytesMut,
    server: &mut TcpStream,
    head: &[u8],
) -> Result<(), TunnelEnd> {
    if write_paced(
        client,
        head,
        w.limits.send_timeout,
        "the client read nothing",
    )
    .await
    .is_err()
    {
        return Err(TunnelEnd::ClientClosed);
    }
    if !pending.is_empty() {
        if write_paced(server, pending, w.p.try_timeout, "the server read nothing")
            .await
            .is_err()
        {
            return Err(TunnelEnd::ServerClosed);
        }
        pending.clear();
    }
    Ok(())
}

/// The io_uring relay threads of one proxy listener (as many as its workers), unless `proxy.tunnel_io_uring` is
/// off. Started with the listener, so that whether the kernel allows io_uring is logged at start-up; when it does
/// not, tunnels are relayed on the proxy's workers.
#[derive(Debug)]
pub(crate) struct RingRelay {
    pub(crate) relay: Option<tunnel_ring::Relay>,
}

impl RingRelay {
    pub(crate) fn start(enabled: bool, threads: usize) -> RingRelay {
        if !enabled {
            tracing::info!(
                "tunnels are relayed on the proxy's workers (proxy.tunnel_io_uring = false)"
            );
            return RingRelay { relay: None };
        }
        let relay = match tunnel_ring::Relay::start(threads, "proxy-tunnels") {
            Ok(relay) => {
                tracing::info!(threads, "tunnels are relayed on io_uring threads");
                Some(relay)
            }
            Err(err) => {
                tracing::warn!(error = %err, "io_uring is not available (a container's seccomp profile, kernel.io_uring_disabled or an old kernel): tunnels are relayed on the proxy's workers; set proxy.tunnel_io_uring = false to silence this");
                None
            }
        };
        RingRelay { relay }
    }
}

/// How long a drain waits for the relay thread to close a tunnel it was asked to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Relays on the io_uring threads: this task only waits for the end, or for the drain to close the tunnel. Returns
/// the end and the client's socket for its lingering close. If the relay cannot take the tunnel (its thread is
/// gone), relays it here.
async fn on_ring(
    w: &Worker,
    ring: &tunnel_ring::Relay,
    client: TcpStream,
    server: TcpStream,
    limits: Limits,
) -> (TunnelEnd, Option<TcpStream>) {
    // Created before the flag is read: a drain's notification from then on is not missed.
    let drain = w.close_idle_now.notified();
    if w.close_idle.get() {
        return (TunnelEnd::Drain, Some(client));
    }
    // Out of tokio's reactor, so that the ring alone waits on them.
    let client = match client.into_std() {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!(error = %err, "tunnel: a socket could not leave the event loop");
            return (TunnelEnd::Error, None);
        }
    };
    let server = match server.into_std() {
        Ok(server) => server,
        Err(err) => {
            tracing::warn!(error = %err, "tunnel: a socket could not leave the event loop");
            return (TunnelEnd::Error, back_to_tokio(client));
        }
    };
    let mut ticket = match ring.relay(client, server, limits) {
        Ok(ticket) => ticket,
        Err((err, client, server)) => {
            tracing::debug!(error = %err, "tunnel relayed on the worker: the io_uring relay cannot take it");
            let (Some(mut client), Some(mut server)) =
                (back_to_tokio(client), back_to_tokio(server))
            else {
                return (TunnelEnd::Error, None);
            };
            let end = relay_here(w, &mut client, &mut server, limits).await;
            return (end, Some(client));
        }
    };
    let ended = tokio::select! {
        ended = &mut ticket => ended,
        () = drain => {
            ticket.close();
            // An end that came before the close took effect is kept.
            match tokio::time::timeout(CLOSE_WAIT, ticket).await {
                Ok(ended) => ended,
                Err(_) => tunnel_ring::Ended { end: tunnel_ring::End::Closed, client: None },
            }
        }
    };
    let end = match ended.end {
        tunnel_ring::End::ClientClosed => TunnelEnd::ClientClosed,
        tunnel_ring::End::ServerClosed => TunnelEnd::ServerClosed,
        tunnel_ring::End::ClientStalled => TunnelEnd::ClientStalled,
        tunnel_ring::End::ServerStalled => TunnelEnd::ServerStalled,
        tunnel_ring::End::Idle => TunnelEnd::Idle,
        // Only the drain (or the relay's stop with the proxy) closes a tunnel.
        tunnel_ring::End::Closed => TunnelEnd::Drain,
        tunnel_ring::End::Error => TunnelEnd::Error,
    };
    (end, ended.client.and_then(back_to_tokio))
}

/// A socket given back by the relay, on this worker's event loop again.
fn back_to_tokio(socket: std::net::TcpStream) -> Option<TcpStream> {
    socket.set_nonblocking(true).ok()?;
    TcpStream::from_std(socket).ok()
}

/// Relays in this task, on the worker's event loop: both ways from one poll function (see [`Tunnel`]).
async fn relay_here(
    w: &Worker,
    client: &mut TcpStream,
    server: &mut TcpStream,
    limits: Limits,
) -> TunnelEnd {
    let idle = limits.idle;
    let mut last_active = Instant::now();
    let mut tunnel = Tunnel {
        up: Flow::new(last_active),
        down: Flow::new(last_active),
        first_end: None,
        active: false,
    };
    // One timer for the whole tunnel, firing at least every HALF_CLOSE_GRACE (so that a half close is noticed in
    // time) and twice per send limit: a read only sets `tunnel.active` (and a read or a write `SendWatch::moved`), and
    // the timer, when it fires, counts a tunnel that was active since the last check as active now. So a message
    // costs neither a timer update nor a clock read, and the idle timeout is noticed at most one check late, a
    // stall at most two. (Arming a timer per message cost about a tenth of the relay's CPU; reading the clock per
    // read, about 0.5 %.)
    let check_every = idle
        .min(HALF_CLOSE_GRACE)
        .min(limits.client_send / 2)
        .min(limits.server_send / 2);
    let timer = tokio::time::sleep(check_every);
    tokio::pin!(timer);
    let drain = w.close_idle_now.notified();
    tokio::pin!(drain);
    let mut alarm = Alarm::new();
    std::future::poll_fn(|cx| {
        if w.close_idle.get() {
            return Poll::Ready(TunnelEnd::Drain);
        }
        let had_ended = tunnel.first_end.is_some();
        if let Poll::Ready(end) = tunnel.poll_relay(cx, client, server) {
            return Poll::Ready(end);
        }
        if !had_ended && tunnel.first_end.is_some() {
            // The grace after a half close counts from the close itself.
            last_active = Instant::now();
            tunnel.active = false;
        }
        if !alarm.rung(cx.waker()) {
            return Poll::Pending;
        }
        let mut cx = Context::from_waker(alarm.waker());
        if drain.as_mut().poll(&mut cx).is_ready() {
            return Poll::Ready(TunnelEnd::Drain);
        }
        while timer.as_mut().poll(&mut cx).is_ready() {
            let now = Instant::now();
            if std::mem::take(&mut tunnel.active) {
                last_active = now;
            }
            let due = last_active
                + match tunnel.first_end {
                    Some(_) => check_every,
                    None => idle,
                };
            if now >= due {
                return Poll::Ready(tunnel.first_end.unwrap_or(TunnelEnd::Idle));
            }
            // Both flows are looked at, so that each notes its movement.
            let stalls = [
                tunnel.up.stalled(now, limits.server_send),
                tunnel.down.stalled(now, limits.client_send),
            ];
            if stalls[0] {
                return Poll::Ready(tunnel.ended(TunnelEnd::ServerStalled));
            }
            if stalls[1] {
                return Poll::Ready(tunnel.ended(TunnelEnd::ClientStalled));
            }
            timer.as_mut().reset(due.min(now + check_every));
        }
        Poll::Pending
    })
    .await
}

/// Both directions of a tunnel, moved by one poll function: each wake reads what either side has and writes it to
/// the other at once, without `tokio::io::copy_bidirectional`'s per-direction state machines or a wrapper per read.
struct Tunnel {
    /// Client to server.
    up: Flow,
    /// Server to client.
    down: Flow,
    /// The first side to close or fail, and how.
    first_end: Option<TunnelEnd>,
    /// Whether anything (bytes or an end) was read either way since the timer last looked.
    active: bool,
}

impl Tunnel {
    /// Moves what can be moved both ways; ready once both directions are closed, or at the first failure.
    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut TcpStream,
        server: &mut TcpStream,
    ) -> Poll<TunnelEnd> {
        let up = self.up.poll_move(cx, client, server, &mut self.active);
        if self.up.eof {
            self.ended(TunnelEnd::ClientClosed);
        }
        if let Poll::Ready(Err(fault)) = up {
            return Poll::Ready(
                self.ended(fault.end(TunnelEnd::ClientClosed, TunnelEnd::ServerClosed)),
            );
        }
        let down = self.down.poll_move(cx, server, client, &mut self.active);
        if self.down.eof {
            self.ended(TunnelEnd::ServerClosed);
        }
        match (up, down) {
            (_, Poll::Ready(Err(fault))) => {
                Poll::Ready(self.ended(fault.end(TunnelEnd::ServerClosed, TunnelEnd::ClientClosed)))
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => {
                Poll::Ready(self.ended(TunnelEnd::ClientClosed))
            }
            _ => Poll::Pending,
        }
    }

    /// Notes `end` unless a side ended before; returns the first end.
    fn ended(&mut self, end: TunnelEnd) -> TunnelEnd {
        *self.first_end.get_or_insert(end)
    }
}

/// Which half of a [`Flow`] failed, and whether the failure says that side's peer went away.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Reading from the sending side.
    Read { peer_gone: bool },
    /// Writing (or passing the close on) to the receiving side.
    Write { peer_gone: bool },
}

impl Fault {
    fn read(err: &io::Error) -> Fault {
        Fault::Read {
            peer_gone: tunnel_ring::peer_gone(err),
        }
    }

    fn write(err: &io::Error) -> Fault {
        Fault::Write {
            peer_gone: tunnel_ring::peer_gone(err),
        }
    }

    /// The reason a tunnel ends for this fault in a flow from the side that ends as `sender` to the one that ends
    /// as `receiver`. A side that reset or vanished closed the tunnel as much as one that sent a FIN; `error` is
    /// left for what the proxy cannot blame on either side (its own failure).
    fn end(self, sender: TunnelEnd, receiver: TunnelEnd) -> TunnelEnd {
        match self {
            Fault::Read { peer_gone: true } => sender,
            Fault::Write { peer_gone: true } => receiver,
            Fault::Read { peer_gone: false } | Fault::Write { peer_gone: false } => {
                TunnelEnd::Error
            }
        }
    }
}

/// One direction of a tunnel: bytes read from one side and not yet written to the other.
struct Flow {
    buf: Box<[u8]>,
    /// `buf[start..end]` is still to be written.
    start: usize,
    end: usize,
    /// The sending side closed its half.
    eof: bool,
    /// The close was passed on: nothing more to do.
    done: bool,
    /// Bytes read or written, for the stall check.
    watch: SendWatch,
}

impl Flow {
    fn new(now: Instant) -> Flow {
        Flow {
            buf: vec![0; tunnel_ring::BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
            watch: SendWatch::new(now.into_std()),
        }
    }

    /// Whether bytes have waited for the receiver for `limit` without it taking any.
    fn stalled(&mut self, now: Instant, limit: Duration) -> bool {
        self.watch
            .stalled(now.into_std(), self.start < self.end, limit)
    }

    /// Reads from `from` and writes to `to` until one of them would block (ready only once the close is passed on,
    /// or at a failure). While `to` takes nothing, nothing more is read from `from`.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
        active: &mut bool,
    ) -> Poll<Result<(), Fault>> {
        let mut reads = 0;
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start < self.end {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]) {
                    // The receiver takes no more: it is gone as surely as one that reset.
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Fault::Write { peer_gone: true }));
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(Fault::write(&err))),
                    Poll::Ready(Ok(n)) => {
                        self.watch.moved();
                        self.start += n;
                        if self.start == self.end {
                            self.start = 0;
                            self.end = 0;
                        }
                    }
                    Poll::Pending => return Poll::Pending,
                }
            } else if self.eof {
                if let Err(err) = ready!(Pin::new(&mut *to).poll_shutdown(cx)) {
                    return Poll::Ready(Err(Fault::write(&err)));
                }
                self.done = true;
            } else {
                if reads == READS_PER_POLL {
                    // The other direction takes its turn in this poll, and the task is polled again at once.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                reads += 1;
                let mut read = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *from).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        *active = true;
                        self.watch.moved();
                        match read.filled().len() {
                            0 => self.eof = true,
                            n => self.end = n,
                        }
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(Fault::read(&err))),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
    }
}

/// The waker the tunnel's timer and drain signal are polled with: it wakes the tunnel's task and notes that one of
/// them may be ready, so that the wakes for bytes (nearly all of them) poll neither.
struct Alarm {
    shared: Arc<AlarmShared>,
    waker: Waker,
    /// The task waker last handed to `shared`.
    task: Option<Waker>,
}

struct AlarmShared {
    rung: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for AlarmShared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rung.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Alarm {
    /// Rung from the start, so that the first poll registers the timer and the drain.
    fn new() -> Alarm {
        let shared = Arc::new(AlarmShared {
            rung: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Alarm {
            waker: Waker::from(Arc::clone(&shared)),
            shared,
            task: None,
        }
    }

    /// Whether the timer or the drain signal woke the task since the last call (then they must be polled, with
    /// [`Alarm::waker`]); `task` is the waker to wake.
    fn rung(&mut self, task: &Waker) -> bool {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(task)) {
            *self
                .shared
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            self.task = Some(task.clone());
        }
        // Cleared before the timer and the drain are polled, so a ring that comes after the poll is not lost.
        if !self.shared.rung.load(Ordering::Acquire) {
            return false;
        }
        self.shared.rung.store(false, Ordering::Release);
        true
    }

    fn waker(&self) -> &Waker {
        &self.waker
    }
}
