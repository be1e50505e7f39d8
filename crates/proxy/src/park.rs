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
