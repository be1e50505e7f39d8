//! Relays upgraded connections (the api-server's WebSocket tunnels) on io_uring threads.
//!
//! A tunnel is two sockets and bytes copied both ways until either side closes. Relayed by an epoll loop (tokio or
//! nginx), every message costs a readiness event, a `recvfrom` and a `sendto`, each a system call with its own file
//! lookup, and in tokio a task wake with its readiness bookkeeping. Here each relay thread owns one io_uring: every
//! tunnel keeps one receive (or the send of what it received) posted per direction, and the thread submits what the
//! last completions called for and reaps the next ones in one `io_uring_enter`. With many busy tunnels, one system
//! call moves many messages. Measured with `cargo xtask bench websocket` (64 sockets echoing 64-byte messages on
//! the 2-core machine): 10–14 % less CPU per message than nginx, where the same relay on the proxy's tokio workers
//! cost 5–8 % more (the figures are in the README).
//!
//! Why by hand: the `io-uring` crate is the kernel interface only; `tokio-uring` runs a runtime of its own with a
//! task and a future per operation, which is the overhead this avoids. The unsafe code is the submission of
//! operations whose buffers the kernel writes into: each buffer belongs to its tunnel's slot, and a slot is freed
//! only once none of its operations is in flight. If a relay thread stops abnormally with operations in flight
//! (a panic, a failed `io_uring_enter`), their buffers are leaked rather than freed under the kernel.
//!
//! The kernel may refuse io_uring (Docker's default seccomp profile, `kernel.io_uring_disabled`), or lack what this
//! needs (kernels before 5.7: no fast poll, no receive and send operations): [`Relay::start`] then fails, and the
//! caller relays on its own event loop. So does it when [`Relay::relay`] finds its thread gone.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, opcode, squeue, types};
use slab::Slab;
use tokio::sync::oneshot;

/// Bytes received at once in each direction of a tunnel.
pub const BUFFER: usize = 16 * 1024;
/// Once one side has closed its half, how long the other may stay silent before the tunnel closes. WebSocket peers
/// close right after each other; a peer that keeps a half-open connection must not hold the tunnel for the whole
/// idle timeout.
pub const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often a relay thread with tunnels looks for silent ones: the idle timeout and the half-close grace are
/// noticed at most this late. Each look walks the thread's tunnels (a few nanoseconds each).
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a closing tunnel's operations may take to answer their cancellation before its sockets are shut down.
const CANCEL_WAIT: Duration = Duration::from_secs(1);
/// Submission queue entries per ring. Completions beyond the completion queue wait in the kernel (no loss:
/// `IORING_FEAT_NODROP` is required).
const RING_ENTRIES: u32 = 1024;

/// A tunnel's time limits. Each bounds a pause, never a transfer that keeps moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nothing received either way for this long closes the tunnel ([`End::Idle`]).
    pub idle: Duration,
    /// A send to the client that takes no byte for this long closes the tunnel ([`End::ClientStalled`]): a client
    /// that stops reading must not hold the server's side (and its connection) until the idle timeout, since the
    /// server, blocked behind it, is silent as well.
    pub client_send: Duration,
    /// The same for sends to the server ([`End::ServerStalled`]).
    pub server_send: Duration,
}

/// Whether one direction's sends are stalled, judged at periodic checks, without a clock read per message (both
/// relays use it: this crate's threads and the proxy's workers).
#[derive(Debug)]
pub struct SendWatch {
    /// Bytes came to be sent, or a send took some, since the last check.
    moved: bool,
    /// When a check last saw the direction move, or nothing waiting to be sent.
    moved_at: Instant,
}

impl SendWatch {
    /// A direction opened at `now`.
    pub fn new(now: Instant) -> SendWatch {
        SendWatch {
            moved: false,
            moved_at: now,
        }
    }

    /// Notes that bytes came to be sent or that a send took some (a flag, no clock read).
    pub fn moved(&mut self) {
        self.moved = true;
    }

    /// At a check at `now`: whether bytes have been `waiting` to be sent without a byte taken for `limit`, counted
    /// from the check that first saw them waiting (so up to one check interval late).
    pub fn stalled(&mut self, now: Instant, waiting: bool, limit: Duration) -> bool {
        if std::mem::take(&mut self.moved) || !waiting {
            self.moved_at = now;
            return false;
        }
        now.duration_since(self.moved_at) >= limit
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed or reset its side first (or took nothing at all: a send returned 0).
    ClientClosed,
    /// The server did.
    ServerClosed,
    /// The client took no byte of a send for [`Limits::client_send`].
    ClientStalled,
    /// The server took no byte of a send for [`Limits::server_send`].
    ServerStalled,
    /// Nothing was received either way for the idle timeout.
    Idle,
    /// Closed on request ([`Ticket::close`]) or because the relay stopped.
    Closed,
    /// A failure neither side explains (or the relay thread is gone).
    Error,
}

/// A tunnel's end, and the client's socket given back for a lingering close (its unread input drained for a
/// moment, so that the kernel does not answer it with a reset that destroys what was sent last). `None` after an
/// abnormal stop of the relay thread.
#[derive(Debug)]
pub struct Ended {
    /// How the tunnel ended.
    pub end: End,
    /// The client's socket, in blocking mode, its write side still open.
    pub client: Option<TcpStream>,
}

/// Whether `err` on a socket means its peer reset, aborted or stopped answering the connection (rather than a
/// failure of this process, such as running out of memory).
pub fn peer_gone(err: &io::Error) -> bool {
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

/// The relay threads; cheap to clone. Dropping the last clone stops them, closing their tunnels ([`End::Closed`]).
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Threads>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("threads", &self.inner.threads.len())
            .field("open", &self.open())
            .finish()
    }
}

struct Threads {
    threads: Vec<Arc<Mailbox>>,
    /// Round robin over `threads`.
    next: AtomicUsize,
    ids: AtomicU64,
}

impl Drop for Threads {
    /// Also when a later thread failed to start: the ones started stop.
    fn drop(&mut self) {
        for thread in &self.threads {
            let _ = thread.send(Command::Stop);
        }
    }
}

/// What a relay thread is told, and how it is woken to look.
struct Mailbox {
    commands: mpsc::Sender<Command>,
    /// Set when a wake byte is on its way, so that a burst of commands writes one.
    notified: AtomicBool,
    wake: io::PipeWriter,
    /// Tunnels handed to this thread and not yet ended (read by [`Relay::open`]).
    open: AtomicUsize,
}

impl Mailbox {
    /// Sends a command; gives it back when the thread is gone.
    fn send(&self, command: Command) -> Result<(), Command> {
        self.commands.send(command).map_err(|e| e.0)?;
        if !self.notified.swap(true, Ordering::SeqCst) {
            // One byte; the thread reads it before it looks at the commands, and clears `notified` first: at most
            // one byte is ever unread, so this write never blocks.
            let _ = (&self.wake).write(&[1]);
        }
        Ok(())
    }
}

enum Command {
    Open(Box<Open>),
    Close(u64),
    Stop,
}

struct Open {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    limits: Limits,
    reply: oneshot::Sender<Ended>,
}

impl Relay {
    /// Starts `threads` relay threads (at least one), named `{name}-{i}`; fails when the kernel refuses io_uring,
    /// lacks what the relay needs, or a thread cannot start (those already started then stop).
    pub fn start(threads: usize, name: &str) -> io::Result<Relay> {
        let mut started = Threads {
            threads: Vec::new(),
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        };
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel();
            let (wake_rx, wake_tx) = io::pipe()?;
            let mailbox = Arc::new(Mailbox {
                commands: tx,
                notified: AtomicBool::new(false),
                wake: wake_tx,
                open: AtomicUsize::new(0),
            });
            let (ready_tx, ready_rx) = mpsc::channel();
            let theirs = Arc::clone(&mailbox);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // The ring is made on its thread: with `SINGLE_ISSUER` only the thread that made it submits.
                    match new_ring() {
                        Ok((ring, poll_first)) => {
                            let _ = ready_tx.send(Ok(()));
                            Thread::new(ring, poll_first, rx, wake_rx, theirs).run();
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                        }
                    }
                })?;
            ready_rx
                .recv()
                .map_err(|_| io::Error::other("a relay thread stopped while starting"))??;
            started.threads.push(mailbox);
        }
        Ok(Relay {
            inner: Arc::new(started),
        })
    }

    /// Relays between `client` and `server` until either closes, both are silent for `limits.idle`, a side takes
    /// nothing of a send for its limit, or the returned ticket is closed or dropped. The sockets are switched to
    /// blocking mode (io_uring waits on them itself). When that fails or the relay thread is gone, they are given
    /// back (in blocking mode) for the caller to relay.
    pub fn relay(
        &self,
        client: TcpStream,
        server: TcpStream,
        limits: Limits,
    ) -> Result<Ticket, (io::Error, TcpStream, TcpStream)> {
        if let Err(err) = client
            .set_nonblocking(false)
            .and_then(|()| server.set_nonblocking(false))
        {
            return Err((err, client, server));
        }
        let threads = &self.inner.threads;
        let thread = &threads[self.inner.next.fetch_add(1, Ordering::Relaxed) % threads.len()];
        let id = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        let (reply, end) = oneshot::channel();
        // Counted here, so that the count includes a tunnel from the moment it is handed over; the thread takes it
        // off when it answers the ticket.
        thread.open.fetch_add(1, Ordering::Relaxed);
        let open = Box::new(Open {
            id,
            client,
            server,
            limits,
            reply,
        });
        if let Err(Command::Open(open)) = thread.send(Command::Open(open)) {
            thread.open.fetch_sub(1, Ordering::Relaxed);
            let err = io::Error::other("the tunnel relay thread is gone");
            return Err((err, open.client, open.server));
        }
        Ok(Ticket {
            id,
            thread: Arc::clone(thread),
            end,
            done: false,
        })
    }

    /// Tunnels open on every thread.
    pub fn open(&self) -> usize {
        self.inner
            .threads
            .iter()
            .map(|t| t.open.load(Ordering::Relaxed))
            .sum()
    }
}

/// A tunnel being relayed: a future of how it ended. Dropping it before the end closes the tunnel.
pub struct Ticket {
    id: u64,
    thread: Arc<Mailbox>,
    end: oneshot::Receiver<Ended>,
    done: bool,
}

impl Ticket {
    /// Asks the relay thread to close the tunnel now; the ticket then ends with [`End::Closed`] (unless it had
    /// ended otherwise first).
    pub fn close(&self) {
        if !self.done {
            let _ = self.thread.send(Command::Close(self.id));
        }
    }
}

impl Future for Ticket {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let ended = match Pin::new(&mut self.end).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(ended)) => ended,
            // The thread is gone without an answer.
            Poll::Ready(Err(_)) => Ended {
                end: End::Error,
                client: None,
            },
        };
        self.done = true;
        Poll::Ready(ended)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.close();
    }
}

/// `IORING_RECVSEND_POLL_FIRST` (kernel 5.19): a receive waits for readability before it tries, instead of trying
/// first and failing with `EAGAIN`. A direction's next receive is posted right after its send, when the answer to
/// what was sent has not come yet: a try would fail nearly every time.
const RECV_POLL_FIRST: u16 = 1;

/// A ring with the flags that suit one thread submitting and reaping (kernel 6.1), else a plain one, provided the
/// kernel has what the relay needs; and whether receives may wait for readability first (the kernel is at least
/// 5.19: it took the 6.1 flags).
fn new_ring() -> io::Result<(IoUring, bool)> {
    let (ring, recent) = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(RING_ENTRIES)
    {
        Ok(ring) => (ring, true),
        Err(_) => (IoUring::new(RING_ENTRIES)?, false),
    };
    // Without fast poll a blocked receive holds a kernel worker thread; without no-drop a completion could be lost
    // (and its tunnel never released).
    let params = ring.params();
    if !params.is_feature_fast_poll() || !params.is_feature_nodrop() {
        return Err(io::Error::other(
            "this kernel's io_uring lacks fast poll or no-drop completions (5.7 or newer is needed)",
        ));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Recv::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::Read::CODE, "read"),
        (opcode::Timeout::CODE, "timeout"),
        (opcode::AsyncCancel::CODE, "async cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::other(format!(
                "this kernel's io_uring has no {name} operation"
            )));
        }
    }
    Ok((ring, recent))
}

// What a completion is for: the low bits of its user data.
const OP_SEND: u64 = 1;
const DIR_BIT: u64 = 2;
const SLOT_SHIFT: u32 = 2;
const WAKE: u64 = u64::MAX;
const TICK: u64 = u64::MAX - 1;
const CANCEL: u64 = u64::MAX - 2;

fn user_data(slot: usize, dir: usize, op: u64) -> u64 {
    ((slot as u64) << SLOT_SHIFT) | if dir == 1 { DIR_BIT } else { 0 } | op
}

/// One relay thread's state.
struct Thread {
    ring: IoUring,
    /// The `ioprio` of receives: [`RECV_POLL_FIRST`] where the kernel knows it.
    recv_ioprio: u16,
    commands: mpsc::Receiver<Command>,
    wake: io::PipeReader,
    /// Where the wake pipe's bytes are read into (the kernel writes here while the read is posted).
    wake_buf: Box<[u8; 64]>,
    mailbox: Arc<Mailbox>,
    tunnels: Slab<Tunnel>,
    /// Tunnel ids to slots, for [`Command::Close`].
    ids: HashMap<u64, usize>,
    /// The idle check's timeout (the kernel reads it while the timeout is posted) and whether it is posted.
    tick: Box<types::Timespec>,
    ticking: bool,
    stopping: bool,
    /// Operations that did not fit in the submission queue: pushed first on the next round.
    backlog: VecDeque<squeue::Entry>,
    completions: Vec<(u64, i32)>,
}

struct Tunnel {
    id: u64,
    /// `[client, server]`.
    sockets: [TcpStream; 2],
    /// `[client to server, server to client]`.
    flows: [Flow; 2],
    limits: Limits,
    /// Something was received since the last check.
    active: bool,
    last_active: Instant,
    /// The first side to close its half or fail: the tunnel's end, whatever happens after it.
    first_end: Option<End>,
    /// Closing, for this reason, since then: its operations are cancelled, and it is released once none is in
    /// flight.
    closing: Option<(End, Instant)>,
    reply: Option<oneshot::Sender<Ended>>,
}

struct Flow {
    buf: Box<[u8]>,
    /// `buf[sent..len]` is still to be sent.
    len: usize,
    sent: usize,
    /// The user data of this direction's operation in flight (a receive or a send), if any.
    in_flight: Option<u64>,
    /// The sending side closed its half, and the close was passed on.
    done: bool,
    /// A send in flight longer than its side's limit, taking nothing, is a stall.
    watch: SendWatch,
}

impl Flow {
    fn new(now: Instant) -> Flow {
        Flow {
            buf: vec![0; BUFFER].into_boxed_slice(),
            len: 0,
            sent: 0,
            in_flight: None,
            done: false,
            watch: SendWatch::new(now),
        }
    }

    /// Whether this direction's send has taken no byte for `limit` (noticed up to one [`CHECK_EVERY`] late).
    fn stalled(&mut self, now: Instant, limit: Duration) -> bool {
        let sending = self.in_flight.is_some_and(|data| data & OP_SEND != 0);
        self.watch.stalled(now, sending, limit)
    }
}

impl Tunnel {
    /// The end to report for `end`: the first close or failure of a side, if one came before.
    fn end(&mut self, end: End) -> End {
        *self.first_end.get_or_insert(end)
    }
}

/// The side a direction reads from, as an end: direction 0 reads the client.
fn sender(dir: usize) -> End {
    if dir == 0 {
        End::ClientClosed
    } else {
        End::ServerClosed
    }
}

fn receiver(dir: usize) -> End {
    sender(1 - dir)
}

/// The end when direction `dir`'s receiver takes nothing of a send for its limit.
fn stall(dir: usize) -> End {
    if dir == 0 {
        End::ServerStalled
    } else {
        End::ClientStalled
    }
}

/// The end for a failure on `side`'s socket: that side's close when its peer went away, else [`End::Error`].
fn blame(err: &io::Error, side: End) -> End {
    if peer_gone(err) { side } else { End::Error }
}

/// Whether an operation's failure is worth posting it again (nothing is wrong with either side).
fn transient(errno: i32) -> bool {
    const EINTR: i32 = 4;
    const EAGAIN: i32 = 11;
    errno == EINTR || errno == EAGAIN
}

impl Thread {
    fn new(
        ring: IoUring,
        poll_first: bool,
        commands: mpsc::Receiver<Command>,
        wake: io::PipeReader,
        mailbox: Arc<Mailbox>,
    ) -> Thread {
        Thread {
            ring,
            recv_ioprio: if poll_first { RECV_POLL_FIRST } else { 0 },
            commands,
            wake,
            wake_buf: Box::new([0; 64]),
            mailbox,
            tunnels: Slab::new(),
            ids: HashMap::new(),
            tick: Box::new(
                types::Timespec::new()
                    .sec(CHECK_EVERY.as_secs())
                    .nsec(CHECK_EVERY.subsec_nanos()),
            ),
            ticking: false,
            stopping: false,
            backlog: VecDeque::new(),
            completions: Vec::with_capacity(2 * RING_ENTRIES as usize),
        }
    }

    fn run(mut self) {
        self.read_wake();
        loop {
            if self.stopping && self.tunnels.is_empty() {
                return;
            }
            if let Err(err) = self.push_backlog() {
                tracing::error!(error = %err, "tunnel relay thread stopped: io_uring_enter failed");
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // The completion queue is full (older kernels), or the kernel is short of memory for requests: reap,
                // then submit again.
                Err(err) if matches!(err.raw_os_error(), Some(11 | 12 | 16)) => {}
                Err(err) => {
                    tracing::error!(error = %err, "tunnel relay thread stopped: io_uring_enter failed");
                    return;
                }
            }
            let now = Instant::now();
            self.completions.clear();
            self.completions
                .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for i in 0..self.completions.len() {
                let (data, result) = self.completions[i];
                let done = match data {
                    WAKE => self.woken(result),
                    TICK => self.check(now),
                    CANCEL => Ok(()),
                    _ => self.completed(data, result, now),
                };
                if let Err(err) = done {
                    tracing::error!(error = %err, "tunnel relay thread stopped");
                    return;
                }
            }
        }
    }

    /// Queues one operation: into the submission queue when it has room, else into the backlog.
    ///
    /// # Safety
    /// Every buffer or timespec the operation points to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // Safety: per this function's contract.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    /// Moves the backlog into the submission queue, submitting whenever it is full.
    fn push_backlog(&mut self) -> io::Result<()> {
        while let Some(entry) = self.backlog.front() {
            // Safety: the backlog's operations were queued under `push`'s contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.backlog.pop_front();
                continue;
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The kernel holds completions we have not reaped, or is short of memory: reap first.
                Err(err) if matches!(err.raw_os_error(), Some(11 | 12 | 16)) => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn read_wake(&mut self) {
        let read = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            self.wake_buf.len() as u32,
        )
        .build()
        .user_data(WAKE);
        // Safety: the read's buffer is `wake_buf`, which lives as long as the thread (leaked if it stops abnormally).
        unsafe { self.push(read) };
    }

    /// The wake pipe was read: take the commands, and read it again.
    fn woken(&mut self, result: i32) -> io::Result<()> {
        if result < 0 && !transient(-result) {
            return Err(io::Error::from_raw_os_error(-result));
        }
        // Cleared before the commands are taken: a command sent after this writes a new byte.
        self.mailbox.notified.swap(false, Ordering::SeqCst);
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Open(open) => self.open(*open),
                Command::Close(id) => {
                    if let Some(&slot) = self.ids.get(&id) {
                        self.close(slot, End::Closed);
                    }
                }
                Command::Stop => self.stop(),
            }
        }
        if !self.stopping {
            self.read_wake();
        }
        Ok(())
    }

    fn stop(&mut self) {
        self.stopping = true;
        let slots: Vec<usize> = self.tunnels.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.close(slot, End::Closed);
        }
    }

    fn open(&mut self, open: Open) {
        if self.stopping {
            self.mailbox.open.fetch_sub(1, Ordering::Relaxed);
            let _ = open.reply.send(Ended {
                end: End::Closed,
                client: Some(open.client),
            });
            return;
        }
        let now = Instant::now();
        let slot = self.tunnels.insert(Tunnel {
            id: open.id,
            sockets: [open.client, open.server],
            flows: [Flow::new(now), Flow::new(now)],
            limits: open.limits,
            active: false,
            last_active: now,
            first_end: None,
            closing: None,
            reply: Some(open.reply),
        });
        self.ids.insert(open.id, slot);
        self.recv(slot, 0);
        self.recv(slot, 1);
        if !self.ticking {
            self.ticking = true;
            let tick = opcode::Timeout::new(&*self.tick).build().user_data(TICK);
            // Safety: `tick` lives as long as the thread (and the kernel copies it when the timeout is submitted).
            unsafe { self.push(tick) };
        }
    }

    /// Posts direction `dir`'s next receive.
    fn recv(&mut self, slot: usize, dir: usize) {
        let t = &mut self.tunnels[slot];
        let flow = &mut t.flows[dir];
        let data = user_data(slot, dir, 0);
        let entry = opcode::Recv::new(
            types::Fd(t.sockets[dir].as_raw_fd()),
            flow.buf.as_mut_ptr(),
            flow.buf.len() as u32,
        )
        .ioprio(self.recv_ioprio)
        .build()
        .user_data(data);
        flow.in_flight = Some(data);
        // Safety: the buffer is the flow's, freed only with its tunnel once nothing is in flight.
        unsafe { self.push(entry) };
    }

    /// Posts the send of what direction `dir` has left to send.
    fn send(&mut self, slot: usize, dir: usize) {
        let t = &mut self.tunnels[slot];
        let flow = &mut t.flows[dir];
        let rest = &flow.buf[flow.sent..flow.len];
        let data = user_data(slot, dir, OP_SEND);
        // MSG_NOSIGNAL: a peer gone is an error to count, never a SIGPIPE.
        let entry = opcode::Send::new(
            types::Fd(t.sockets[1 - dir].as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(data);
        flow.in_flight = Some(data);
        // Safety: as for `recv`.
        unsafe { self.push(entry) };
    }

    fn completed(&mut self, data: u64, result: i32, now: Instant) -> io::Result<()> {
        let slot = (data >> SLOT_SHIFT) as usize;
        let dir = usize::from(data & DIR_BIT != 0);
        let Some(t) = self.tunnels.get_mut(slot) else {
            return Ok(());
        };
        t.flows[dir].in_flight = None;
        if t.closing.is_some() {
            self.release_if_settled(slot);
            return Ok(());
        }
        let sending = data & OP_SEND != 0;
        if result < 0 && transient(-result) {
            if sending {
                self.send(slot, dir);
            } else {
                self.recv(slot, dir);
            }
            return Ok(());
        }
        if !sending {
            match result {
                n if n > 0 => {
                    t.active = true;
                    let flow = &mut t.flows[dir];
                    flow.len = n as usize;
                    flow.sent = 0;
                    flow.watch.moved();
                    self.send(slot, dir);
                }
                0 => {
                    // The sender closed its half: pass the close on. The other side may still send, while it is
                    // not silent for the grace.
                    t.flows[dir].done = true;
                    t.active = true;
                    t.last_active = now;
                    let end = t.end(sender(dir));
                    if let Err(err) = t.sockets[1 - dir].shutdown(Shutdown::Write) {
                        let end = t.end(blame(&err, receiver(dir)));
                        self.close(slot, end);
                    } else if t.flows[1 - dir].done {
                        self.close(slot, end);
                    }
                }
                err => {
                    let end = t.end(blame(&io::Error::from_raw_os_error(-err), sender(dir)));
                    self.close(slot, end);
                }
            }
        } else {
            match result {
                n if n > 0 => {
                    let flow = &mut t.flows[dir];
                    flow.sent += n as usize;
                    flow.watch.moved();
                    if flow.sent < flow.len {
                        self.send(slot, dir);
                    } else {
                        self.recv(slot, dir);
                    }
                }
                // Nothing taken: the receiver is as gone as one that reset.
                0 => {
                    let end = t.end(receiver(dir));
                    self.close(slot, end);
                }
                err => {
                    let end = t.end(blame(&io::Error::from_raw_os_error(-err), receiver(dir)));
                    self.close(slot, end);
                }
            }
        }
        Ok(())
    }

    /// Closes tunnels silent for their idle timeout (or, once a side closed its half, for the grace if shorter),
    /// and those with a send stalled for its side's limit; posts the next check while tunnels remain.
    fn check(&mut self, now: Instant) -> io::Result<()> {
        let mut due = Vec::new();
        for (_, t) in &mut self.tunnels {
            // A cancellation that did not take (a poll that had fired as it came, on kernels before 5.18, is armed
            // again): shutting the sockets down ends the operations for sure. The client's side only stops
            // reading, so that its lingering close still sends what is left and a FIN.
            if let Some((_, since)) = t.closing
                && now.duration_since(since) >= CANCEL_WAIT
            {
                let _ = t.sockets[0].shutdown(Shutdown::Read);
                let _ = t.sockets[1].shutdown(Shutdown::Both);
            }
        }
        for (slot, t) in &mut self.tunnels {
            if t.closing.is_some() {
                continue;
            }
            if std::mem::take(&mut t.active) {
                t.last_active = now;
            }
            let silent = now.duration_since(t.last_active);
            let idle = t.limits.idle;
            let limits = [t.limits.server_send, t.limits.client_send];
            match t.first_end {
                Some(end) if silent >= idle.min(HALF_CLOSE_GRACE) => due.push((slot, end)),
                None if silent >= idle => due.push((slot, End::Idle)),
                _ => {
                    // Both flows are looked at, so that each notes its movement.
                    let stalled = [0, 1].map(|dir| t.flows[dir].stalled(now, limits[dir]));
                    if let Some(dir) = (0..2).find(|&dir| stalled[dir]) {
                        due.push((slot, t.end(stall(dir))));
                    }
                }
            }
        }
        for (slot, end) in due {
            self.close(slot, end);
        }
        if self.tunnels.is_empty() {
            self.ticking = false;
            return Ok(());
        }
        let tick = opcode::Timeout::new(&*self.tick).build().user_data(TICK);
        // Safety: `tick` lives as long as the thread.
        unsafe { self.push(tick) };
        Ok(())
    }

    /// Closes a tunnel for `end` (unless it is closing already): its operations in flight are cancelled, and it is
    /// released once none is left.
    fn close(&mut self, slot: usize, end: End) {
        let t = &mut self.tunnels[slot];
        if t.closing.is_some() {
            return;
        }
        t.closing = Some((end, Instant::now()));
        let pending: Vec<u64> = t.flows.iter().filter_map(|f| f.in_flight).collect();
        for data in pending {
            let cancel = opcode::AsyncCancel::new(data).build().user_data(CANCEL);
            // Safety: a cancellation points to no memory.
            unsafe { self.push(cancel) };
        }
        self.release_if_settled(slot);
    }

    /// Releases a closing tunnel once nothing of it is in flight: the server's socket closes, and the client's goes
    /// back with the end, for a lingering close.
    fn release_if_settled(&mut self, slot: usize) {
        if self.tunnels[slot]
            .flows
            .iter()
            .any(|f| f.in_flight.is_some())
        {
            return;
        }
        let mut t = self.tunnels.remove(slot);
        self.ids.remove(&t.id);
        self.mailbox.open.fetch_sub(1, Ordering::Relaxed);
        let [client, _server] = t.sockets;
        if let (Some(reply), Some((end, _))) = (t.reply.take(), t.closing) {
            let _ = reply.send(Ended {
                end,
                client: Some(client),
            });
        }
    }
}

impl Drop for Thread {
    /// On a normal stop nothing is in flight and nothing is left. Otherwise (a failure or a panic) every open
    /// tunnel is answered with [`End::Error`] and its sockets closed, and every buffer the kernel may still write
    /// into is leaked.
    fn drop(&mut self) {
        let abnormal = !self.tunnels.is_empty() || !self.stopping;
        for (_, t) in self.tunnels.iter_mut() {
            if let Some(reply) = t.reply.take() {
                let _ = reply.send(Ended {
                    end: End::Error,
                    client: None,
                });
            }
            for socket in &t.sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
            for flow in &mut t.flows {
                std::mem::forget(std::mem::take(&mut flow.buf));
            }
        }
        self.mailbox
            .open
            .fetch_sub(self.tunnels.len(), Ordering::Relaxed);
        // Tunnels handed over but not taken up yet.
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Open(open) = command {
                self.mailbox.open.fetch_sub(1, Ordering::Relaxed);
                let end = if abnormal { End::Error } else { End::Closed };
                let _ = open.reply.send(Ended {
                    end,
                    client: Some(open.client),
                });
            }
        }
        if abnormal {
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 64])));
            std::mem::forget(std::mem::replace(
                &mut self.tick,
                Box::new(types::Timespec::new()),
            ));
        }
    }
}
