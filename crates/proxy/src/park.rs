//! Parking an idle connection: a kept-alive client connection waiting for its next request holds no buffers.
//!
//! Measured with `cargo xtask bench idle-connections`, an idle connection used to cost about 11 KiB: a 4 KiB read
//! buffer, the write-side buffers its last request grew, and a 5 KiB task, most of it the state of a request being
//! proxied (`handle`) and the 4 KiB drain buffer of a closing connection, both laid out inline in the connection's
//! future though an idle connection is in neither. Now the request is boxed for its lifetime (`conn::serve`), the
//! drain buffer is allocated when a connection closes, and a connection waiting for a request gives its buffers to
//! its worker thread's [`SpareBuffers`] and waits for readability with none; the first byte of its next request
//! takes a set back. What stays is the task (a 1.3 KB future in a debug build, most of it the `Conn` fields and the
//! wait for the next head with its timer and notification), tokio's I/O registration and the peer's header
//! strings: 2.4 KiB per idle connection measured, against nginx's 0.7 KiB. Going lower would take parking the
//! connection out of its task altogether (a per-worker set of sockets and one timer), not done yet.
//!
//! The spare sets make parking free on a busy connection: the set it gives up is the one it takes back
//! microseconds later, with no allocation, and at most [`MAX_SPARE`] sets wait per worker thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::BytesMut;
use mio::unix::SourceFd;
use slab::Slab;

use crate::conn::Conn;

/// Spare buffer sets kept per worker thread; more are freed.
const MAX_SPARE: usize = 128;
/// A set that grew beyond this many bytes in all (a large request head, a big response chunk) is freed rather than
/// kept, so the spares stay small.
const MAX_KEPT_BYTES: usize = 32 * 1024;

/// The buffers a connection needs only while it handles a request.
#[derive(Default)]
pub(crate) struct Buffers {
    buf: BytesMut,
    out: Vec<u8>,
    up_line: Vec<u8>,
    up_rest: Vec<u8>,
    up_out: Vec<u8>,
    up_body: Vec<u8>,
}

impl Buffers {
    fn capacity(&self) -> usize {
        self.buf.capacity()
            + self.out.capacity()
            + self.up_line.capacity()
            + self.up_rest.capacity()
            + self.up_out.capacity()
            + self.up_body.capacity()
    }
}

/// The buffer sets parked connections gave back, for the next connection that wakes up, on one worker thread.
#[derive(Default)]
pub(crate) struct SpareBuffers {
    sets: Vec<Buffers>,
}

impl SpareBuffers {
    /// Keeps `set` for the next taker, emptied, unless enough sets wait already or it grew too big (then it is
    /// freed).
    fn give(&mut self, mut set: Buffers) {
        if self.sets.len() < MAX_SPARE && set.capacity() <= MAX_KEPT_BYTES {
            set.buf.clear();
            set.out.clear();
            self.sets.push(set);
        }
    }

    /// The set given last, or empty buffers (which grow as they are used) when none waits.
    fn take(&mut self) -> Buffers {
        self.sets.pop().unwrap_or_default()
    }
}

impl Conn {
    /// Whether the connection holds no buffers (parked, or new and not read from yet).
    pub(crate) fn is_parked(&self) -> bool {
        self.buf.capacity() == 0
    }

    /// Gives the buffers to `spare` (or frees them); only between requests, with nothing unread in `buf`.
    pub(crate) fn park(&mut self, spare: &mut SpareBuffers) {
        debug_assert!(self.buf.is_empty(), "parking with unread input");
        spare.give(Buffers {
            buf: std::mem::take(&mut self.buf),
            out: std::mem::take(&mut self.out),
            up_line: std::mem::take(&mut self.up_line),
            up_rest: std::mem::take(&mut self.up_rest),
            up_out: std::mem::take(&mut self.up_out),
            up_body: std::mem::take(&mut self.up_body),
        });
    }

    /// Takes a spare set (or empty buffers) for the next request; `buf` gets at least `read_capacity` bytes.
    pub(crate) fn unpark(&mut self, spare: &mut SpareBuffers, read_capacity: usize) {
        let set = spare.take();
        self.buf = set.buf;
        self.out = set.out;
        self.up_line = set.up_line;
        self.up_rest = set.up_rest;
        self.up_out = set.up_out;
        self.up_body = set.up_body;
        if self.buf.capacity() < read_capacity {
            self.buf.reserve(read_capacity);
        }
    }
}

/// Readiness events taken from the parking lot at a time.
const EVENTS_PER_POLL: usize = 256;
/// The token of the lot's [`mio::Waker`] (a slot number never reaches it).
const WAKER: mio::Token = mio::Token(usize::MAX);
/// Stack of the lot's thread: it only polls and moves sockets.
const LOT_STACK: usize = 128 * 1024;

/// A kept-alive client connection between requests, parked out of any task: its socket and what its next task
/// needs to resume it.
pub(crate) struct Parked<G> {
    /// The socket, out of tokio's reactor: in the lot's readiness set while parked.
    pub socket: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Requests served on it so far.
    pub served: u64,
    /// When `server.keepalive_timeout` closes it.
    pub deadline: Instant,
    /// What the owner keeps with it: the guard that counts it as open, the worker it goes back to.
    pub owner: G,
}

/// The parked connections of all worker threads: one readiness set of their sockets and one heap of their
/// deadlines, watched by one thread that blocks in the readiness set until a socket is readable or the earliest
/// deadline passes, then hands the connection back ([`ParkingLot::start`]'s `wake`).
pub(crate) struct ParkingLot<G> {
    /// Registers sockets in the set the lot's thread polls.
    registry: mio::Registry,
    /// Interrupts the lot's thread: an earlier deadline to wait for, or the end.
    waker: mio::Waker,
    state: Mutex<LotState<G>>,
}

struct LotState<G> {
    /// Each parked connection with its park number.
    parked: Slab<(Parked<G>, u64)>,
    /// Deadline, park number and slot of each parked connection; a connection woken before its deadline leaves its
    /// entry behind (its slot no longer holds its park number), dropped when met or by [`LotState::compact`].
    deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    parks: u64,
    /// False once the drain closed every parked connection, or the lot stopped: a connection that would park then
    /// closes.
    open: bool,
    /// Set to end the lot's thread.
    stopped: bool,
}

impl<G> LotState<G> {
    /// Takes slot `key` out, if it still holds park number `number` (or any, without one).
    fn take(&mut self, key: usize, number: Option<u64>) -> Option<Parked<G>> {
        match self.parked.get(key) {
            Some((_, n)) if number.is_none_or(|number| number == *n) => {
                Some(self.parked.remove(key).0)
            }
            _ => None,
        }
    }

    /// The earliest deadline still meant, stale entries before it dropped.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, number, key))) = self.deadlines.peek() {
            if self.parked.get(*key).is_some_and(|(_, n)| n == number) {
                return Some(*deadline);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The slot and park number of a connection whose deadline is at or before `now`, taken off the heap.
    fn pop_due(&mut self, now: Instant) -> Option<(usize, u64)> {
        match self.deadlines.peek() {
            Some(Reverse((deadline, number, key))) if *deadline <= now => {
                let due = (*key, *number);
                self.deadlines.pop();
                Some(due)
            }
            _ => None,
        }
    }

    /// Drops the entries of woken connections once they outnumber the parked ones (a busy connection parks many
    /// times within one keep-alive timeout).
    fn compact(&mut self) {
        if self.deadlines.len() > 2 * self.parked.len() + 1024 {
            let parked = &self.parked;
            self.deadlines.retain(|Reverse((_, number, key))| {
                parked.get(*key).is_some_and(|(_, n)| n == number)
            });
        }
    }
}

impl<G: Send + 'static> ParkingLot<G> {
    /// Starts the lot's thread; `wake` gets each connection whose socket became readable (a request, a hang-up) or
    /// whose deadline passed, to resume it in a new task (which reads the request, or finds the hang-up or the
    /// timeout).
    pub(crate) fn start(
        wake: impl FnMut(Parked<G>) + Send + 'static,
    ) -> io::Result<Arc<ParkingLot<G>>> {
        let poll = mio::Poll::new()?;
        let lot = Arc::new(ParkingLot {
            registry: poll.registry().try_clone()?,
            waker: mio::Waker::new(poll.registry(), WAKER)?,
            state: Mutex::new(LotState {
                parked: Slab::new(),
                deadlines: BinaryHeap::new(),
                parks: 0,
                open: true,
                stopped: false,
            }),
        });
        let watcher = Arc::clone(&lot);
        std::thread::Builder::new()
            .name("proxy-park".into())
            .stack_size(LOT_STACK)
            .spawn(move || watcher.watch(poll, wake))?;
        Ok(lot)
    }
}

impl<G> ParkingLot<G> {
    fn state(&self) -> MutexGuard<'_, LotState<G>> {
        // Nothing panics while holding it; a poisoned lot is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections parked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().parked.len()
    }

    /// Parks a connection until its socket is readable or its deadline passes; closes it instead when the lot is
    /// closed or cannot watch the socket.
    pub(crate) fn park(&self, parked: Parked<G>) {
        let mut state = self.state();
        if !state.open {
            drop(state);
            return;
        }
        let deadline = parked.deadline;
        let number = state.parks;
        state.parks += 1;
        let entry = state.parked.vacant_entry();
        let key = entry.key();
        let fd = parked.socket.as_raw_fd();
        if let Err(err) =
            self.registry
                .register(&mut SourceFd(&fd), mio::Token(key), mio::Interest::READABLE)
        {
            drop(state);
            tracing::warn!(peer = %parked.peer, "parking an idle connection: {err}; closed");
            return;
        }
        entry.insert((parked, number));
        let earliest = state.next_deadline();
        state.deadlines.push(Reverse((deadline, number, key)));
        state.compact();
        drop(state);
        if earliest.is_none_or(|earliest| deadline < earliest) {
            // The thread waits for a later deadline (or none): it must wait for this one.
            let _ = self.waker.wake();
        }
    }

    /// Takes slot `key` out of the lot and its socket out of the readiness set.
    fn take(&self, key: usize, number: Option<u64>) -> Option<Parked<G>> {
        let parked = self.state().take(key, number)?;
        let _ = self
            .registry
            .deregister(&mut SourceFd(&parked.socket.as_raw_fd()));
        Some(parked)
    }

    /// Closes every parked connection at once (the end of a drain's grace), as an idle connection in its task is
    /// closed then; a connection that would park later closes instead.
    pub(crate) fn close_all(&self) {
        let parked = {
            let mut state = self.state();
            state.open = false;
            state.deadlines.clear();
            std::mem::take(&mut state.parked)
        };
        for (_, (parked, _)) in parked {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&parked.socket.as_raw_fd()));
        }
    }

    /// Closes every parked connection and ends the lot's thread.
    pub(crate) fn stop(&self) {
        self.close_all();
        self.state().stopped = true;
        let _ = self.waker.wake();
    }

    /// The lot's thread: waits in the readiness set until a socket is readable or the earliest deadline passes, and
    /// hands those connections to `wake`, without holding the lot's lock meanwhile.
    fn watch(&self, mut poll: mio::Poll, mut wake: impl FnMut(Parked<G>)) {
        let mut events = mio::Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = {
                let mut state = self.state();
                if state.stopped {
                    return;
                }
                state
                    .next_deadline()
                    .map(|deadline| deadline.saturating_duration_since(Instant::now()))
            };
            if let Err(err) = poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("proxy parking lot: {err}; idle connections are closed");
                self.close_all();
                return;
            }
            for event in &events {
                if event.token() != WAKER
                    && let Some(parked) = self.take(event.token().0, None)
                {
                    wake(parked);
                }
            }
            let now = Instant::now();
            while let Some((key, number)) = {
                let due = self.state().pop_due(now);
                due
            } {
                if let Some(parked) = self.take(key, Some(number)) {
                    wake(parked);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(read: usize, out: usize) -> Buffers {
        let mut set = Buffers {
            buf: BytesMut::with_capacity(read),
            out: Vec::with_capacity(out),
            ..Buffers::default()
        };
        set.buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        set.out.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        set
    }

    #[test]
    fn a_given_set_is_taken_back_emptied_without_allocating() {
        let mut spare = SpareBuffers::default();
        let given = set(4096, 512);
        let (buf, out) = (given.buf.as_ptr(), given.out.as_ptr());
        spare.give(given);
        let taken = spare.take();
        assert_eq!((taken.buf.as_ptr(), taken.out.as_ptr()), (buf, out));
        assert!(taken.buf.is_empty() && taken.out.is_empty());
        assert!(taken.buf.capacity() >= 4096);
        // None left: the next taker gets empty buffers, holding nothing.
        assert_eq!(spare.take().capacity(), 0);
    }

    #[test]
    fn spare_sets_are_bounded_in_number_and_size() {
        let mut spare = SpareBuffers::default();
        for _ in 0..MAX_SPARE + 10 {
            spare.give(set(4096, 512));
        }
        assert_eq!(spare.sets.len(), MAX_SPARE);
        let mut spare = SpareBuffers::default();
        spare.give(set(MAX_KEPT_BYTES, 1024));
        assert!(spare.sets.is_empty(), "a set that grew big is freed");
    }

    mod lot {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::mpsc::{Receiver, channel};
        use std::time::Duration;

        use super::super::*;

        /// Long enough for any step of these tests on a loaded machine.
        const SOON: Duration = Duration::from_secs(10);
        /// A deadline that does not pass during a test.
        const LATER: Duration = Duration::from_secs(3600);

        type Owner = Arc<()>;

        fn lot() -> (Arc<ParkingLot<Owner>>, Receiver<Parked<Owner>>) {
            let (tx, rx) = channel();
            let lot = ParkingLot::start(move |parked| tx.send(parked).unwrap()).unwrap();
            (lot, rx)
        }

        /// A connected pair: the client side, and the server side parked with `deadline` and `owner`.
        fn park(lot: &ParkingLot<Owner>, deadline: Instant, owner: &Owner) -> TcpStream {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (socket, peer) = listener.accept().unwrap();
            socket.set_nonblocking(true).unwrap();
            lot.park(Parked {
                socket,
                peer,
                served: 1,
                deadline,
                owner: Arc::clone(owner),
            });
            client
        }

        #[test]
        fn a_request_wakes_its_connection_with_what_it_needs_to_resume() {
            let (lot, woken) = lot();
            let owner = Arc::new(());
            let mut client = park(&lot, Instant::now() + LATER, &owner);
            let _other = park(&lot, Instant::now() + LATER, &owner);
            assert_eq!(lot.len(), 2);
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut parked = woken.recv_timeout(SOON).unwrap();
            assert_eq!(parked.peer, client.local_addr().unwrap());
            assert_eq!(parked.served, 1);
            assert_eq!(lot.len(), 1, "the other connection stays parked");
            let mut head = [0; 18];
            parked.socket.set_nonblocking(false).unwrap();
            parked.socket.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"GET / HTTP/1.1\r\n\r\n");
            // Parked again, it wakes again: the socket left the readiness set cleanly.
            lot.park(parked);
            client.write_all(b"x").unwrap();
            assert!(woken.recv_timeout(SOON).is_ok());
            lot.stop();
        }

        #[test]
        fn a_connection_comes_back_at_its_deadline_not_before() {
            let (lot, woken) = lot();
            let owner = Arc::new(());
            let _late = park(&lot, Instant::now() + LATER, &owner);
            // An earlier deadline than the one the lot waits for.
            let parked_at = Instant::now();
            let _soon = park(&lot, parked_at + Duration::from_millis(200), &owner);
            let parked = woken.recv_timeout(SOON).unwrap();
            assert!(parked_at.elapsed() >= Duration::from_millis(200));
            assert!(parked.deadline <= Instant::now());
            assert_eq!(lot.len(), 1);
            lot.stop();
        }

        #[test]
        fn closing_the_lot_closes_every_parked_connection_and_those_parked_after() {
            let (lot, woken) = lot();
            let owner = Arc::new(());
            let mut clients: Vec<TcpStream> = (0..3)
                .map(|_| park(&lot, Instant::now() + LATER, &owner))
                .collect();
            assert_eq!(Arc::strong_count(&owner), 4);
            lot.close_all();
            assert_eq!(Arc::strong_count(&owner), 1, "their open counts are released");
            clients.push(park(&lot, Instant::now() + LATER, &owner));
            assert_eq!(Arc::strong_count(&owner), 1, "parked after: closed at once");
            for client in &mut clients {
                client.set_read_timeout(Some(SOON)).unwrap();
                assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "closed");
            }
            assert!(woken.try_recv().is_err(), "none was woken");
            lot.stop();
        }
    }
}
