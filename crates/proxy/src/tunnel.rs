//! An upgraded connection (WebSocket and the like): once the data server answered `101 Switching Protocols`, bytes
//! go both ways unchanged until either side closes, the tunnel is silent for `proxy.tunnel_idle_timeout`, or the
//! drain that follows a SIGTERM ends.
//!
//! What a message costs (`cargo xtask bench websocket`: 64 B echoes on 64 sockets, 2026-11-30, on a machine loaded
//! by other builds). Per echo the proxy makes the same system calls as nginx (two `recvfrom`, two `sendto`), and
//! about 90 % of its CPU time is in the kernel. In user space, one poll function moves both directions
//! ([`Tunnel`]); the timer and the drain signal are polled only when their own waker rang ([`Alarm`]); a read sets
//! a flag instead of reading the clock. Against `copy_bidirectional` behind a wrapper that read the clock per
//! read, with the timer and the drain in a `select!` polled on every wake, the api-server's CPU per message fell in
//! each of five runs where both ran side by side (12.8 against 13.1, 13.1 against 16.0, 15.8 against 17.0 µs);
//! under `perf`, its user-space samples per message went from 2.0 to 1.4 times nginx's.
//!
//! What remains above nginx, from `perf record` of both in the same run: about a third of the api-server's
//! user-space samples are the wake itself (tokio's `run_task` and task state, and the first touch of the
//! connection's nested futures, a cache miss), a quarter tokio's I/O driver and readiness bookkeeping (each socket
//! going back to waiting locks its waiter list), where nginx calls a handler from its epoll loop; in the kernel,
//! `fdget`/`fput` (a multi-threaded process takes a file reference per system call, a single-threaded nginx
//! worker does not) and more `epoll_wait` rounds with their context switches (0.08 against 0.05 per `sendto` in
//! one run).

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

use crate::conn::Worker;
use crate::relay::write_paced;

/// Bytes read at once from either side.
const TUNNEL_BUFFER: usize = 16 * 1024;
/// Reads one direction makes per poll before it lets the other move: a client uploading without pause must not
/// starve the server's frames to it (tokio's per-task budget would otherwise go to the busy side every time).
const READS_PER_POLL: usize = 8;
/// Once one side has closed its half, how long the other may still send before the tunnel closes. WebSocket peers
/// close right after each other; a peer that keeps a half-open connection must not hold the tunnel for the whole
/// idle timeout.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why a tunnel ended, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// The client closed or reset its side (or stopped taking bytes) first.
    ClientClosed,
    /// The data server did.
    ServerClosed,
    Idle,
    Drain,
    /// A failure of the proxy's own, or one it cannot attribute to either side.
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
/// after its request) to the server, then both ways from one poll function (see [`Tunnel`]). A side that closes
/// its half is passed on as a half close; the tunnel ends when both have (or [`HALF_CLOSE_GRACE`] after the first),
/// when nothing is read either way for `idle`, or at the drain's end. Its reason is the side that closed first, by
/// a FIN or a reset alike; `Error` only for a failure neither side explains.
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
    let mut tunnel = Tunnel {
        up: Flow::new(),
        down: Flow::new(),
        first_end: None,
        active: false,
    };
    // One timer for the whole tunnel, firing at least every HALF_CLOSE_GRACE (so that a half close is noticed in
    // time): a read only sets `tunnel.active`, and the timer, when it fires, counts a tunnel that was active since
    // the last check as active now. So a message costs neither a timer update nor a clock read, and the idle
    // timeout is noticed at most one check late. (Arming a timer per message cost about a tenth of the relay's CPU;
    // reading the clock per read, about 0.5 %.)
    let check_every = idle.min(HALF_CLOSE_GRACE);
    let mut last_active = Instant::now();
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
            peer_gone: peer_gone(err),
        }
    }

    fn write(err: &io::Error) -> Fault {
        Fault::Write {
            peer_gone: peer_gone(err),
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

/// Whether `err` on a socket means its peer reset, aborted or stopped answering the connection (rather than a
/// failure of this process, such as running out of memory or descriptors).
fn peer_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WriteZero
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
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
}

impl Flow {
    fn new() -> Flow {
        Flow {
            buf: vec![0; TUNNEL_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
        }
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
