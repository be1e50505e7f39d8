//! The parking lot: kept-alive client connections between requests, out of any task.
//!
//! One lot serves all worker threads: one readiness set (epoll, through mio) holding the parked sockets, one heap
//! of their keep-alive deadlines, and one thread that blocks in the readiness set until a socket is readable (a
//! request, a hang-up) or the earliest deadline passes, then hands the connection back to its worker. A parked
//! connection is a slot of 40 bytes and a heap entry of 16; the kernel's entry in the readiness set is not in the
//! process's memory. A thread rather than a task on each worker: tokio watches another readiness set only through
//! `AsyncFd`, whose constructors are now `unsafe`, and this crate forbids unsafe code.
//!
//! The slots and the heap grow with the most connections ever parked at once, and would keep that room forever
//! after a spike (at least 5.6 MB after 100,000 idle clients). So the lot's thread gives it back
//! ([`LotState::shrink`]) once fewer than a quarter of it is used, at most every [`SHRINK_EVERY`]: parked
//! connections move to the lowest slots (their sockets re-registered under their new keys; at most
//! [`MOVES_PER_SHRINK`] per round), and the heap is rebuilt from the slots.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use slab::Slab;
use svc::Gauge;

/// Readiness events taken from the readiness set at a time.
const EVENTS_PER_POLL: usize = 256;
/// Connections woken by their deadline per round at most, so that a burst of connections opened together and
/// expiring together does not hold up the readiness events of the others.
const DEADLINES_PER_ROUND: usize = 256;
/// The token of the lot's [`mio::Waker`] (a slot number never reaches it).
const WAKER: mio::Token = mio::Token(usize::MAX);
/// Stack of the lot's thread: it only polls and moves sockets.
const LOT_STACK: usize = 128 * 1024;
/// Room the lot keeps whatever it holds: slots for this many connections (40 KiB), and as many stale heap entries
/// beyond twice the parked connections.
const ROOM_FLOOR: usize = 1024;
/// The lot gives back unused room at most this often: a shrink moves connections under the lot's lock (about a
/// microsecond each, at most [`MOVES_PER_SHRINK`]), and a lot that empties and fills again every few seconds
/// would only reallocate what it needs again.
const SHRINK_EVERY: Duration = Duration::from_secs(10);
/// Most connections moved (each re-registered with epoll) by one shrink: a few milliseconds under the lock.
const MOVES_PER_SHRINK: usize = 2048;

/// A kept-alive client connection between requests, parked out of any task: its socket and what its next task
/// needs to resume it.
pub(crate) struct Parked<G> {
    /// The socket, out of tokio's reactor while parked.
    pub socket: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Requests served on it so far (saturating at `u16::MAX` while parked).
    pub served: u64,
    /// How long it waited in its task before it was parked (at most 65 s kept).
    pub park_after: Duration,
    /// When `server.keepalive_timeout` closes it.
    pub deadline: Instant,
    /// What the owner keeps with it: the guard that counts it as open, the worker it goes back to.
    pub owner: G,
    /// Woken because its socket became readable (a request or a hang-up came before its deadline), not by the
    /// deadline. Set by the lot; ignored by [`ParkingLot::park`].
    pub readable: bool,
}

/// A parked connection as the lot holds it: the peer's address is asked of the socket again on waking, the
/// deadline is in milliseconds from the lot's start.
struct Slot<G> {
    deadline: u64,
    owner: G,
    socket: std::net::TcpStream,
    served: u16,
    park_after_ms: u16,
}

/// The parked connections of all worker threads (see the module doc).
pub(crate) struct ParkingLot<G> {
    /// Registers sockets in the set the lot's thread polls.
    registry: mio::Registry,
    /// Interrupts the lot's thread: an earlier deadline to wait for, or the end.
    waker: mio::Waker,
    /// Where deadlines count from.
    epoch: Instant,
    /// The shortest time between two shrinks ([`SHRINK_EVERY`], shorter in tests).
    shrink_every: Duration,
    /// Connections parked now (`api_proxy_parked_connections`), set under the lock whenever that number changes.
    gauge: Gauge,
    state: Mutex<LotState<G>>,
}

struct LotState<G> {
    parked: Slab<Slot<G>>,
    /// Deadline and slot of each parked connection. A connection woken before its deadline leaves its entry behind,
    /// dropped when it comes up or by [`LotState::compact`]; an entry whose slot now holds another connection with
    /// the same deadline wakes that one at its deadline, which is right.
    deadlines: BinaryHeap<Reverse<(u64, usize)>>,
    /// False once the drain closed every parked connection, or the lot stopped: a connection that would park then
    /// closes.
    open: bool,
    /// Set when the lot's thread ended on its own (a failed poll, a panic): a connection that would park is given
    /// back, to wait in its task as it did before parking existed.
    dead: bool,
    /// Set to end the lot's thread.
    stopped: bool,
    /// [`ROOM_FLOOR`], smaller in tests.
    room_floor: usize,
}

impl<G> LotState<G> {
    /// Whether slot `key` holds a connection due at `deadline`.
    fn holds(&self, key: usize, deadline: u64) -> bool {
        self.parked.get(key).is_some_and(|s| s.deadline == deadline)
    }

    /// The earliest deadline still meant, stale entries before it dropped.
    fn next_deadline(&mut self) -> Option<u64> {
        while let Some(&Reverse((deadline, key))) = self.deadlines.peek() {
            if self.holds(key, deadline) {
                return Some(deadline);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The slot of a connection due at or before `now`, taken off the heap (the slot may be stale).
    fn pop_due(&mut self, now: u64) -> Option<(usize, u64)> {
        match self.deadlines.peek() {
            Some(&Reverse((deadline, key))) if deadline <= now => {
                self.deadlines.pop();
                Some((key, deadline))
            }
            _ => None,
        }
    }

    /// The most heap entries kept for the connections parked now: stale ones beyond are dropped by
    /// [`LotState::compact`].
    fn heap_bound(&self) -> usize {
        2 * self.parked.len() + self.room_floor
    }

    /// Drops the entries of woken connections once they outnumber the parked ones (a busy connection parks many
    /// times within one keep-alive timeout).
    fn compact(&mut self) {
        if self.deadlines.len() > self.heap_bound() {
            let parked = &self.parked;
            self.deadlines.retain(|&Reverse((deadline, key))| {
                parked.get(key).is_some_and(|s| s.deadline == deadline)
            });
        }
    }

    /// Whether less than a quarter of the room of the slots or of the heap is used (beyond the floor).
    fn is_sparse(&self) -> bool {
        self.parked.capacity() > self.room_floor.max(4 * self.parked.len())
            || self.deadlines.capacity() > 4 * self.heap_bound()
    }

    /// Gives back the room the connections parked now do not need: they move to the lowest slots, each socket
    /// re-registered under its new key (a socket that cannot be stays where it is, and so do those after it), and
    /// the heap is rebuilt with one entry per connection. Only the lot's thread shrinks, between two polls, so no
    /// readiness event with an old key is still to be handled (the kernel reports later ones under the new key).
    /// At most [`MOVES_PER_SHRINK`] connections move per shrink: each move is a system call made under the lock
    /// that every worker parking a connection takes, so a large lot shrinks over several rounds rather than
    /// stalling the workers for tens of milliseconds at once.
    fn shrink(&mut self, registry: &mio::Registry) {
        let mut moves = 0;
        self.parked.compact(|slot, _from, to| {
            if moves == MOVES_PER_SHRINK {
                return false;
            }
            moves += 1;
            registry
                .reregister(
                    &mut SourceFd(&slot.socket.as_raw_fd()),
                    mio::Token(to),
                    mio::Interest::READABLE,
                )
                .is_ok()
        });
        self.deadlines = self
            .parked
            .iter()
            .map(|(key, slot)| Reverse((slot.deadline, key)))
            .collect::<Vec<_>>()
            .into();
    }
}

impl<G: Send + 'static> ParkingLot<G> {
    /// Starts the lot's thread; `wake` gets each connection whose socket became readable or whose deadline passed,
    /// to resume it in a new task (which reads the request, or finds the hang-up or the timeout). `gauge` shows how
    /// many are parked.
    pub(crate) fn start(
        gauge: Gauge,
        wake: impl FnMut(Parked<G>) + Send + 'static,
    ) -> io::Result<Arc<ParkingLot<G>>> {
        Self::start_with(gauge, ROOM_FLOOR, SHRINK_EVERY, wake)
    }

    /// [`ParkingLot::start`] with another floor of the room kept and another shortest time between two shrinks.
    fn start_with(
        gauge: Gauge,
        room_floor: usize,
        shrink_every: Duration,
        wake: impl FnMut(Parked<G>) + Send + 'static,
    ) -> io::Result<Arc<ParkingLot<G>>> {
        let poll = mio::Poll::new()?;
        let lot = Arc::new(ParkingLot {
            registry: poll.registry().try_clone()?,
            waker: mio::Waker::new(poll.registry(), WAKER)?,
            epoch: Instant::now(),
            shrink_every,
            gauge,
            state: Mutex::new(LotState {
                parked: Slab::new(),
                deadlines: BinaryHeap::new(),
                open: true,
                dead: false,
                stopped: false,
                room_floor,
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

    /// Shows how many connections `state` holds.
    fn count(&self, state: &LotState<G>) {
        self.gauge
            .set(i64::try_from(state.parked.len()).unwrap_or(i64::MAX));
    }

    /// Milliseconds from the lot's start to `at`, rounded up (a deadline is never met early).
    fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        let millis =
            since.as_millis() + u128::from(!since.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(millis).unwrap_or(u64::MAX)
    }

    /// Connections parked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state().parked.len()
    }

    /// The room the lot holds: slots, and heap entries.
    #[cfg(test)]
    fn room(&self) -> (usize, usize) {
        let state = self.state();
        (state.parked.capacity(), state.deadlines.capacity())
    }

    /// Whether the lot's thread ended on its own: nothing can park any more.
    pub(crate) fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// Parks a connection until its socket is readable or its deadline passes; closes it instead when the lot is
    /// closed (the drain) or cannot watch the socket. A lot whose thread died gives it back.
    pub(crate) fn park(&self, parked: Parked<G>) -> Result<(), Parked<G>> {
        let deadline = self.millis(parked.deadline);
        let mut state = self.state();
        if state.dead {
            return Err(parked);
        }
        if !state.open {
            return Ok(());
        }
        let entry = state.parked.vacant_entry();
        let key = entry.key();
        let fd = parked.socket.as_raw_fd();
        if let Err(err) =
            self.registry
                .register(&mut SourceFd(&fd), mio::Token(key), mio::Interest::READABLE)
        {
            drop(state);
            tracing::debug!(peer = %parked.peer, "parking an idle connection: {err}");
            return Err(parked);
        }
        entry.insert(Slot {
            deadline,
            owner: parked.owner,
            socket: parked.socket,
            served: u16::try_from(parked.served).unwrap_or(u16::MAX),
            park_after_ms: u16::try_from(parked.park_after.as_millis()).unwrap_or(u16::MAX),
        });
        self.count(&state);
        let earliest = state.next_deadline();
        state.deadlines.push(Reverse((deadline, key)));
        state.compact();
        drop(state);
        if earliest.is_none_or(|earliest| deadline < earliest) {
            // The thread waits for a later deadline (or none): it must wait for this one.
            let _ = self.waker.wake();
        }
        Ok(())
    }

    /// Takes slot `key` out of the lot (if it holds a connection due at `deadline`, given one) and its socket out of
    /// the readiness set. A connection whose peer is gone (its address unknown) is closed instead.
    fn take(&self, key: usize, deadline: Option<u64>) -> Option<Parked<G>> {
        let slot = {
            let mut state = self.state();
            if !deadline.map_or(state.parked.contains(key), |d| state.holds(key, d)) {
                return None;
            }
            let slot = state.parked.remove(key);
            self.count(&state);
            slot
        };
        let _ = self
            .registry
            .deregister(&mut SourceFd(&slot.socket.as_raw_fd()));
        let peer = slot.socket.peer_addr().ok()?;
        Some(Parked {
            peer,
            readable: deadline.is_none(),
            served: u64::from(slot.served),
            park_after: Duration::from_millis(slot.park_after_ms.into()),
            deadline: self.epoch + Duration::from_millis(slot.deadline),
            owner: slot.owner,
            socket: slot.socket,
        })
    }

    /// Closes every parked connection at once (the end of a drain's grace), as an idle connection in its task is
    /// closed then; a connection that would park later closes instead.
    pub(crate) fn close_all(&self) {
        let parked = {
            let mut state = self.state();
            state.open = false;
            state.deadlines.clear();
            let parked = std::mem::take(&mut state.parked);
            self.count(&state);
            parked
        };
        for (_, slot) in parked {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&slot.socket.as_raw_fd()));
        }
    }

    /// Closes every parked connection and ends the lot's thread.
    pub(crate) fn stop(&self) {
        self.close_all();
        self.state().stopped = true;
        let _ = self.waker.wake();
    }

    /// Marks the lot dead and gives every parked connection back to `wake`, as if its deadline had come (each then
    /// waits in its task again).
    fn die(&self, wake: &mut impl FnMut(Parked<G>)) {
        let keys: Vec<usize> = {
            let mut state = self.state();
            state.dead = true;
            state.deadlines.clear();
            state.parked.iter().map(|(key, _)| key).collect()
        };
        for key in keys {
            if let Some(parked) = self.take(key, None) {
                wake(Parked {
                    readable: false,
                    ..parked
                });
            }
        }
    }

    /// The lot's thread: waits in the readiness set until a socket is readable or the earliest deadline passes, and
    /// hands those connections to `wake`, without holding the lot's lock meanwhile.
    fn watch(&self, mut poll: mio::Poll, mut wake: impl FnMut(Parked<G>)) {
        /// Should the thread end by a panic, the lot is marked dead (so nothing parks in a set nobody watches) and
        /// what it holds is closed.
        struct OnPanic<'a, G>(&'a ParkingLot<G>);
        impl<G> Drop for OnPanic<'_, G> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.state().dead = true;
                    self.0.close_all();
                }
            }
        }
        let _on_panic = OnPanic(self);
        let mut events = mio::Events::with_capacity(EVENTS_PER_POLL);
        let mut shrunk_at = Instant::now();
        loop {
            let timeout = {
                let mut state = self.state();
                if state.stopped {
                    return;
                }
                if state.is_sparse() && shrunk_at.elapsed() >= self.shrink_every {
                    state.shrink(&self.registry);
                    shrunk_at = Instant::now();
                }
                let now = Instant::now();
                let deadline = state.next_deadline().map(|deadline| {
                    (self.epoch + Duration::from_millis(deadline)).saturating_duration_since(now)
                });
                // Room still to give back is given back in time even if nothing else happens meanwhile.
                let shrink = state
                    .is_sparse()
                    .then(|| (shrunk_at + self.shrink_every).saturating_duration_since(now));
                deadline.into_iter().chain(shrink).min()
            };
            if let Err(err) = poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(
                    "proxy parking lot: {err}; idle connections wait in their tasks from now on"
                );
                self.die(&mut wake);
                return;
            }
            for event in &events {
                if event.token() != WAKER
                    && let Some(parked) = self.take(event.token().0, None)
                {
                    wake(parked);
                }
            }
            let now = self.millis(Instant::now());
            for _ in 0..DEADLINES_PER_ROUND {
                let Some((key, deadline)) = self.state().pop_due(now) else {
                    break;
                };
                if let Some(parked) = self.take(key, Some(deadline)) {
                    wake(parked);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc::{Receiver, channel};

    use super::*;

    /// Long enough for any step of these tests on a loaded machine.
    const SOON: Duration = Duration::from_secs(10);
    /// A deadline that does not pass during a test.
    const LATER: Duration = Duration::from_secs(3600);

    type Owner = Arc<()>;

    fn lot() -> (Arc<ParkingLot<Owner>>, Receiver<Parked<Owner>>) {
        let (tx, rx) = channel();
        let lot =
            ParkingLot::start(Gauge::default(), move |parked| tx.send(parked).unwrap()).unwrap();
        (lot, rx)
    }

    /// Connections parked at once by the shrink test: few enough for a default open-file limit of 1024.
    const SPIKE: usize = 300;
    /// The room floor of the shrink test's lot.
    const FLOOR: usize = 16;

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
            park_after: Duration::from_millis(10),
            deadline,
            owner: Arc::clone(owner),
            readable: false,
        })
        .unwrap_or_else(|_| panic!("the lot refused a connection"));
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
        assert!(parked.readable, "woken by its request, not its deadline");
        assert_eq!(lot.len(), 1, "the other connection stays parked");
        let mut head = [0; 18];
        parked.socket.set_nonblocking(false).unwrap();
        parked.socket.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"GET / HTTP/1.1\r\n\r\n");
        // Parked again, it wakes again: the socket left the readiness set cleanly.
        assert!(lot.park(parked).is_ok());
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
        assert!(!parked.readable, "woken by its deadline");
        assert_eq!(lot.len(), 1);
        lot.stop();
    }

    #[test]
    fn a_lot_whose_thread_died_gives_its_connections_back_and_takes_no_more() {
        let (lot, _woken) = lot();
        let owner = Arc::new(());
        let _clients: Vec<TcpStream> = (0..2)
            .map(|_| park(&lot, Instant::now() + LATER, &owner))
            .collect();
        let mut given_back = Vec::new();
        lot.die(&mut |parked| given_back.push(parked));
        assert_eq!(given_back.len(), 2, "both back to their owners, still open");
        assert!(given_back.iter().all(|p| !p.readable));
        assert_eq!(Arc::strong_count(&owner), 3);
        let again = given_back.pop().unwrap();
        assert!(lot.park(again).is_err(), "refused: it would never be woken");
        assert!(lot.is_dead());
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
        assert_eq!(
            Arc::strong_count(&owner),
            1,
            "their open counts are released"
        );
        clients.push(park(&lot, Instant::now() + LATER, &owner));
        assert_eq!(Arc::strong_count(&owner), 1, "parked after: closed at once");
        for client in &mut clients {
            client.set_read_timeout(Some(SOON)).unwrap();
            assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "closed");
        }
        assert!(woken.try_recv().is_err(), "none was woken");
        lot.stop();
    }

    #[test]
    fn a_connection_woken_early_keeps_only_the_deadline_it_was_parked_again_with() {
        let (lot, woken) = lot();
        let owner = Arc::new(());
        let mut client = park(&lot, Instant::now() + Duration::from_millis(200), &owner);
        client.write_all(b"x").unwrap();
        let mut parked = woken.recv_timeout(SOON).unwrap();
        parked.socket.set_nonblocking(false).unwrap();
        parked.socket.read_exact(&mut [0; 1]).unwrap();
        parked.deadline = Instant::now() + LATER;
        assert!(lot.park(parked).is_ok());
        // A marker due after the first deadline: it comes back, the connection parked again does not.
        let marker = park(&lot, Instant::now() + Duration::from_millis(400), &owner);
        let back = woken.recv_timeout(SOON).unwrap();
        assert_eq!(back.peer, marker.local_addr().unwrap());
        assert_eq!(lot.len(), 1, "still parked: {:?}", client.local_addr());
        lot.stop();
    }

    #[test]
    fn the_gauge_follows_the_connections_in_the_lot() {
        let gauge = Gauge::default();
        let (tx, woken) = channel();
        let lot = ParkingLot::start(gauge.clone(), move |parked| tx.send(parked).unwrap()).unwrap();
        let owner = Arc::new(());
        let mut clients: Vec<TcpStream> = (0..3)
            .map(|_| park(&lot, Instant::now() + LATER, &owner))
            .collect();
        assert_eq!(gauge.get(), 3);
        clients[0].write_all(b"x").unwrap();
        let _taken = woken.recv_timeout(SOON).unwrap();
        assert_eq!(gauge.get(), 2, "taken out when it woke");
        lot.close_all();
        assert_eq!(gauge.get(), 0);
        lot.stop();
    }

    #[test]
    fn after_a_spike_the_lot_gives_its_room_back_and_the_connections_it_moved_still_wake() {
        let (tx, woken) = channel();
        let lot = ParkingLot::start_with(Gauge::default(), FLOOR, Duration::ZERO, move |parked| {
            tx.send(parked).unwrap();
        })
        .unwrap();
        let owner = Arc::new(());
        let mut spike: Vec<TcpStream> = (0..SPIKE)
            .map(|_| park(&lot, Instant::now() + LATER, &owner))
            .collect();
        // Parked last, in the highest slots: the shrink moves them.
        let mut stays = park(&lot, Instant::now() + LATER, &owner);
        let timed = park(&lot, Instant::now() + Duration::from_secs(2), &owner);
        let (slots, entries) = lot.room();
        assert!(
            slots >= SPIKE + 2 && entries >= SPIKE + 2,
            "{slots} {entries}"
        );
        // The spike leaves: every one of them wakes with a request and goes back to its owner.
        for client in &mut spike {
            client.write_all(b"x").unwrap();
        }
        for _ in 0..SPIKE {
            let parked = woken.recv_timeout(SOON).unwrap();
            assert!(parked.readable);
        }
        assert_eq!(lot.len(), 2);
        let until = Instant::now() + SOON;
        while lot.room().0 > FLOOR || lot.room().1 > FLOOR {
            assert!(
                Instant::now() < until,
                "still {:?} after the spike left",
                lot.room()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Moved to other slots, both still wake: one by its request, the other at its deadline.
        stays.write_all(b"y").unwrap();
        let back = woken.recv_timeout(SOON).unwrap();
        assert_eq!(back.peer, stays.local_addr().unwrap());
        assert!(back.readable);
        let back = woken.recv_timeout(SOON).unwrap();
        assert_eq!(back.peer, timed.local_addr().unwrap());
        assert!(!back.readable, "woken by its deadline");
        assert_eq!(lot.len(), 0);
        lot.stop();
    }

    #[test]
    fn a_lot_in_use_keeps_its_room() {
        let (lot, _woken) = lot();
        let owner = Arc::new(());
        let _clients: Vec<TcpStream> = (0..4)
            .map(|_| park(&lot, Instant::now() + LATER, &owner))
            .collect();
        assert!(!lot.state().is_sparse(), "{:?}", lot.room());
        lot.stop();
    }
}
