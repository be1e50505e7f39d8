//! Relays upgraded connections (the api-server's WebSocket tunnels) on io_uring threads.
//!
//! A tunnel is two sockets and bytes copied both ways until either side closes. Relayed by an epoll loop (tokio or
//! nginx), every message costs a readiness event, a `recvfrom` and a `sendto`, each a system call with its own file
//! lookup, and in tokio a task wake with its readiness bookkeeping. Here each relay thread owns one io_uring: every
//! tunnel keeps one receive (or the send of what it received) posted per direction, and the thread submits what the
//! last completions called for and reaps the next ones in one `io_uring_enter`. With many busy tunnels, one system
//! call moves many messages. Measured with `cargo xtask bench websocket` (64 sockets echoing 64-byte messages on
//! the 2-core machine): about 10 % less CPU per message than nginx, and about 18 % less than the same relay on
//! tokio (see the bench's figures in the README).
//!
//! Why by hand: the `io-uring` crate is the kernel interface only; `tokio-uring` runs a runtime of its own with a
//! task and a future per operation, which is the overhead this avoids. The unsafe code is the submission of
//! operations whose buffers the kernel writes into: each buffer belongs to its tunnel's slot, and a slot is freed
//! only once none of its operations is in flight. If a relay thread stops abnormally with operations in flight
//! (a panic, a failed `io_uring_enter`), their buffers are leaked rather than freed under the kernel.
//!
//! The kernel may refuse io_uring (Docker's default seccomp profile, `kernel.io_uring_disabled`, kernels before
//! 5.19): [`Relay::start`] then fails and the caller relays on its own event loop.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;
use tokio::sync::oneshot;

/// Bytes received at once in each direction of a tunnel.
pub const BUFFER: usize = 16 * 1024;
/// Once one side has closed its half, how long the other may still send before the tunnel closes. WebSocket peers
/// close right after each other; a peer that keeps a half-open connection must not hold the tunnel for the whole
/// idle timeout.
pub const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often a relay thread with tunnels looks for idle ones: the idle timeout and the half-close grace are noticed
/// at most this late. Each look walks the thread's tunnels (a few nanoseconds each).
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Submission queue entries per ring. Completions beyond the completion queue wait in the kernel (no loss).
const RING_ENTRIES: u32 = 1024;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed or reset its side first (or stopped taking bytes).
    ClientClosed,
    /// The server did.
    ServerClosed,
    /// Nothing was received either way for the idle timeout.
    Idle,
    /// Closed on request ([`Ticket::close`]) or because the relay stopped.
    Closed,
    /// A failure neither side explains (or the relay thread is gone).
    Error,
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
    fn drop(&mut self) {
        for thread in &self.threads {
            thread.send(Command::Stop);
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
    fn send(&self, command: Command) {
        let sent = self.commands.send(command).is_ok();
        if sent && !self.notified.swap(true, Ordering::SeqCst) {
            // One byte; the thread reads them back before it looks at the commands. The pipe holds 64 KiB, and a
            // byte is written only when the last one was read.
            let _ = (&self.wake).write(&[1]);
        }
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
    idle: Duration,
    reply: oneshot::Sender<End>,
}

impl Relay {
    /// Starts `threads` relay threads (at least one), named `{name}-{i}`; fails when the kernel refuses io_uring
    /// or a thread cannot start.
    pub fn start(threads: usize, name: &str) -> io::Result<Relay> {
        let mut mailboxes = Vec::new();
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
            mailboxes.push(mailbox);
        }
        Ok(Relay {
            inner: Arc::new(Threads {
                threads: mailboxes,
                next: AtomicUsize::new(0),
                ids: AtomicU64::new(0),
            }),
        })
    }

    /// Relays between `client` and `server` until either closes, nothing is received either way for `idle`, or
    /// the returned ticket is closed or dropped. The sockets are switched to blocking mode (io_uring waits on them
    /// itself); on failure they are returned.
    pub fn relay(
        &self,
        client: TcpStream,
        server: TcpStream,
        idle: Duration,
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
        // Counted here, so that the gauge includes a tunnel from the moment it is handed over; the thread takes it
        // off when it answers the ticket.
        thread.open.fetch_add(1, Ordering::Relaxed);
        thread.send(Command::Open(Box::new(Open {
            id,
            client,
            server,
            idle,
            reply,
        })));
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
    end: oneshot::Receiver<End>,
    done: bool,
}

impl Ticket {
    /// Asks the relay thread to close the tunnel now; the ticket then ends with [`End::Closed`] (unless it had
    /// ended otherwise first).
    pub fn close(&self) {
        if !self.done {
            self.thread.send(Command::Close(self.id));
        }
    }
}

impl Future for Ticket {
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let end = match Pin::new(&mut self.end).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(end)) => end,
            // The thread is gone without an answer (it panicked).
            Poll::Ready(Err(_)) => End::Error,
        };
        self.done = true;
        Poll::Ready(end)
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

/// A ring with the flags that suit one thread submitting and reaping (kernel 6.1), else a plain one; and whether
/// receives may wait for readability first (the kernel is at least 5.19: it took the 6.1 flags).
fn new_ring() -> io::Result<(IoUring, bool)> {
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(RING_ENTRIES)
    {
        Ok(ring) => Ok((ring, true)),
        Err(_) => Ok((IoUring::new(RING_ENTRIES)?, false)),
    }
}

// What a completion is for: the low bits of its user data.
const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1;
const DIR_BIT: u64 = 2;
const SLOT_SHIFT: u32 = 2;
const WAKE: u64 = u64::MAX;
const TICK: u64 = u64::MAX - 1;

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
    completions: Vec<(u64, i32)>,
}

struct Tunnel {
    id: u64,
    /// `[client, server]`.
    sockets: [TcpStream; 2],
    /// `[client to server, server to client]`.
    flows: [Flow; 2],
    idle: Duration,
    /// Something was received since the last check.
    active: bool,
    last_active: Instant,
    /// The first side to close its half, and when.
    first_end: Option<(End, Instant)>,
    /// Closing (both sockets shut down), for this reason: released once nothing is in flight.
    closing: Option<End>,
    in_flight: u8,
    reply: Option<oneshot::Sender<End>>,
}

struct Flow {
    buf: Box<[u8]>,
    /// `buf[sent..len]` is still to be sent.
    len: usize,
    sent: usize,
    /// The sending side closed its half, and the close was passed on.
    done: bool,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            buf: vec![0; BUFFER].into_boxed_slice(),
            len: 0,
            sent: 0,
            done: false,
        }
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
            completions: Vec::with_capacity(RING_ENTRIES as usize),
        }
    }

    fn run(mut self) {
        let read_wake = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            self.wake_buf.len() as u32,
        )
        .build()
        .user_data(WAKE);
        // Safety: the read's buffer is `wake_buf`, which lives as long as the thread (leaked if it stops abnormally).
        if let Err(err) = unsafe { self.push(&read_wake) } {
            tracing::error!(error = %err, "tunnel relay thread: cannot post its first read");
            return;
        }
        loop {
            if self.stopping && self.tunnels.is_empty() {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // The completion queue is full: reap, then submit again.
                Err(err) if err.raw_os_error() == Some(16) => {}
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
                    WAKE => self.woken(result, &read_wake),
                    TICK => self.check(now),
                    _ => self.completed(data, result, now),
                };
                if let Err(err) = done {
                    tracing::error!(error = %err, "tunnel relay thread stopped: cannot post an operation");
                    return;
                }
            }
        }
    }

    /// Pushes one operation, submitting first when the queue is full.
    ///
    /// # Safety
    /// Every buffer or timespec the operation points to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // Safety: per this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// The wake pipe was read: take the commands, and read it again.
    fn woken(&mut self, result: i32, read_wake: &squeue::Entry) -> io::Result<()> {
        if result <= 0 {
            // The writing end is gone with every sender: nothing more will come.
            self.stop();
            return Ok(());
        }
        self.mailbox.notified.store(false, Ordering::SeqCst);
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Open(open) => self.open(*open)?,
                Command::Close(id) => {
                    if let Some(&slot) = self.ids.get(&id) {
                        self.close(slot, End::Closed);
                    }
                }
                Command::Stop => self.stop(),
            }
        }
        if self.stopping {
            return Ok(());
        }
        // Safety: `wake_buf` outlives the thread's operations.
        unsafe { self.push(read_wake) }
    }

    fn stop(&mut self) {
        self.stopping = true;
        let slots: Vec<usize> = self.tunnels.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.close(slot, End::Closed);
        }
    }

    fn open(&mut self, open: Open) -> io::Result<()> {
        if self.stopping {
            self.mailbox.open.fetch_sub(1, Ordering::Relaxed);
            let _ = open.reply.send(End::Closed);
            return Ok(());
        }
        let slot = self.tunnels.insert(Tunnel {
            id: open.id,
            sockets: [open.client, open.server],
            flows: [Flow::new(), Flow::new()],
            idle: open.idle,
            active: false,
            last_active: Instant::now(),
            first_end: None,
            closing: None,
            in_flight: 0,
            reply: Some(open.reply),
        });
        self.ids.insert(open.id, slot);
        self.recv(slot, 0)?;
        self.recv(slot, 1)?;
        if !self.ticking {
            self.ticking = true;
            let tick = opcode::Timeout::new(&*self.tick).build().user_data(TICK);
            // Safety: `tick` lives as long as the thread.
            unsafe { self.push(&tick) }?;
        }
        Ok(())
    }

    /// Posts direction `dir`'s next receive.
    fn recv(&mut self, slot: usize, dir: usize) -> io::Result<()> {
        let t = &mut self.tunnels[slot];
        let flow = &mut t.flows[dir];
        let entry = opcode::Recv::new(
            types::Fd(t.sockets[dir].as_raw_fd()),
            flow.buf.as_mut_ptr(),
            flow.buf.len() as u32,
        )
        .ioprio(self.recv_ioprio)
        .build()
        .user_data(((slot as u64) << SLOT_SHIFT) | if dir == 1 { DIR_BIT } else { 0 } | OP_RECV);
        t.in_flight += 1;
        // Safety: the buffer is the flow's, freed only with its tunnel once nothing is in flight.
        unsafe { self.push(&entry) }
    }

    /// Posts the send of what direction `dir` has left to send.
    fn send(&mut self, slot: usize, dir: usize) -> io::Result<()> {
        let t = &mut self.tunnels[slot];
        let flow = &t.flows[dir];
        let rest = &flow.buf[flow.sent..flow.len];
        let entry = opcode::Send::new(
            types::Fd(t.sockets[1 - dir].as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .build()
        .user_data(((slot as u64) << SLOT_SHIFT) | if dir == 1 { DIR_BIT } else { 0 } | OP_SEND);
        t.in_flight += 1;
        // Safety: as for `recv`.
        unsafe { self.push(&entry) }
    }

    fn completed(&mut self, data: u64, result: i32, now: Instant) -> io::Result<()> {
        let slot = (data >> SLOT_SHIFT) as usize;
        let dir = usize::from(data & DIR_BIT != 0);
        let Some(t) = self.tunnels.get_mut(slot) else {
            return Ok(());
        };
        t.in_flight -= 1;
        if t.closing.is_some() {
            self.release_if_settled(slot);
            return Ok(());
        }
        if data & OP_SEND == 0 {
            match result {
                n if n > 0 => {
                    t.active = true;
                    let flow = &mut t.flows[dir];
                    flow.len = n as usize;
                    flow.sent = 0;
                    self.send(slot, dir)
                }
                0 => {
                    // The sender closed its half: pass the close on.
                    t.flows[dir].done = true;
                    t.active = true;
                    let end = t.first_end.get_or_insert((sender(dir), now)).0;
                    if let Err(err) = t.sockets[1 - dir].shutdown(Shutdown::Write) {
                        let end = if peer_gone(&err) {
                            receiver(dir)
                        } else {
                            End::Error
                        };
                        self.close(slot, end);
                    } else if t.flows[1 - dir].done {
                        self.close(slot, end);
                    }
                    Ok(())
                }
                err => {
                    let err = io::Error::from_raw_os_error(-err);
                    let end = if peer_gone(&err) {
                        sender(dir)
                    } else {
                        End::Error
                    };
                    self.close(slot, end);
                    Ok(())
                }
            }
        } else {
            match result {
                n if n > 0 => {
                    let flow = &mut t.flows[dir];
                    flow.sent += n as usize;
                    if flow.sent < flow.len {
                        self.send(slot, dir)
                    } else {
                        self.recv(slot, dir)
                    }
                }
                // Nothing taken: the receiver is as gone as one that reset.
                0 => {
                    self.close(slot, receiver(dir));
                    Ok(())
                }
                err => {
                    let err = io::Error::from_raw_os_error(-err);
                    let end = if peer_gone(&err) {
                        receiver(dir)
                    } else {
                        End::Error
                    };
                    self.close(slot, end);
                    Ok(())
                }
            }
        }
    }

    /// Closes tunnels idle for their timeout, and half-closed ones past [`HALF_CLOSE_GRACE`]; posts the next check
    /// while tunnels remain.
    fn check(&mut self, now: Instant) -> io::Result<()> {
        let mut due = Vec::new();
        for (slot, t) in &mut self.tunnels {
            if t.closing.is_some() {
                continue;
            }
            if std::mem::take(&mut t.active) {
                t.last_active = now;
            }
            match t.first_end {
                // Half closed: the other side has the grace (or the idle timeout, if shorter) to follow, and the
                // tunnel's end is the first close whatever happens meanwhile.
                Some((end, at)) if now.duration_since(at) >= t.idle.min(HALF_CLOSE_GRACE) => {
                    due.push((slot, end));
                }
                Some(_) => {}
                None if now.duration_since(t.last_active) >= t.idle => due.push((slot, End::Idle)),
                None => {}
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
        unsafe { self.push(&tick) }
    }

    /// Closes a tunnel for `end` (unless it is closing already): both sockets are shut down, which ends their
    /// posted operations; it is released once none is in flight.
    fn close(&mut self, slot: usize, end: End) {
        let t = &mut self.tunnels[slot];
        if t.closing.is_some() {
            return;
        }
        t.closing = Some(end);
        for socket in &t.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.release_if_settled(slot);
    }

    fn release_if_settled(&mut self, slot: usize) {
        if self.tunnels[slot].in_flight > 0 {
            return;
        }
        let mut t = self.tunnels.remove(slot);
        self.ids.remove(&t.id);
        self.mailbox.open.fetch_sub(1, Ordering::Relaxed);
        if let (Some(reply), Some(end)) = (t.reply.take(), t.closing) {
            let _ = reply.send(end);
        }
        // The sockets close here.
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
                let _ = reply.send(End::Error);
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
                let _ = open.reply.send(if self.stopping {
                    End::Closed
                } else {
                    End::Error
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
