//! Parking an idle connection: a kept-alive client connection waiting for its next request holds no buffers, and
//! soon no task.
//!
//! Two steps. First, a connection that has answered a request gives its buffers to its worker thread's
//! [`SpareBuffers`] and waits for readability with none; the first byte of its next request takes a set back (the
//! request's own state is boxed for the request's lifetime, and the drain buffer of a closing connection is
//! allocated when it closes). The spare sets make this free on a busy connection: the set it gives up is the one it
//! takes back microseconds later, with no allocation, and at most [`MAX_SPARE`] sets wait per worker thread.
//!
//! Then, idle for `conn::PARK_AFTER` (10 ms), the connection leaves its task: its socket leaves tokio's reactor and
//! goes to the [`ParkingLot`] with its keep-alive deadline, its open-connection guard and the little its next task
//! needs (`lot`). The lot hands it back to its worker thread when the socket becomes readable (a request, a
//! hang-up) or the deadline passes, and a new task takes it up, as if it had waited there all along: it reads the
//! request, or finds the hang-up or the timeout. Waking costs a few system calls, a new task and a hand-off between
//! threads, measured at about 40 µs more on the median of `bench proxy`'s open-loop phase (a request every 32 ms
//! per connection) when every request woke a parked connection. So the wait adapts per connection: one that came
//! back within 1 s waits twice its pause next time (up to 1 s), so a client polling every 100 ms parks once, not ten
//! times a second; a longer pause halves the wait, down to 10 ms. The wait is short because what a task held stays in the
//! allocator: the process keeps the memory of as many tasks as ever waited at once (with a 1 s wait, the bench
//! measured 2.43 KiB per idle connection, all 10,000 having waited in their tasks together).
//!
//! Measured with `cargo xtask bench idle-connections` (10,000 connections, loaded machine): an idle connection
//! cost about 11 KiB before the first step, 2.4 KiB after it, and 0.50-0.58 KiB with the lot, against nginx's
//! 0.68-0.83 KiB in the same runs. A parked connection itself is a 40-byte slot and a 16-byte deadline entry (the
//! kernel's entry in the readiness set is not in the process's memory); the rest is what the opening of 10,000
//! connections, 200 at a time, leaves in the allocator.

use bytes::BytesMut;

use crate::conn::Conn;

mod lot;

pub(crate) use lot::{Parked, ParkingLot};

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
}
