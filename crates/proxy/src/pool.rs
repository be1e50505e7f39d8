//! Idle keep-alive connections to data servers, one pool per proxy worker thread.
//!
//! Each worker owns its pool outright (no lock, no atomics): a connection is taken for one request and put back
//! when its response has been read whole. A connection that the data server closed while it sat idle is noticed
//! on the way out, from the readiness the reactor already recorded, without a system call in the usual case.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per data server and worker; more are closed when they come back.
pub const MAX_IDLE_PER_UPSTREAM: usize = 512;
/// An idle connection older than this is closed rather than used.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer of an upstream connection.
pub const UPSTREAM_BUFFER: usize = 16 * 1024;

/// One connection to a data server and what was read from it.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not yet forwarded.
    pub buf: BytesMut,
    /// Whether it served a request before (a reused connection may have been closed by the server meanwhile).
    pub reused: bool,
    idle_since: Instant,
}

impl Upstream {
    /// A new connection.
    pub fn new(stream: TcpStream) -> Upstream {
        Upstream {
            stream,
            buf: BytesMut::with_capacity(UPSTREAM_BUFFER),
            reused: false,
            idle_since: Instant::now(),
        }
    }

    /// Whether the idle connection can carry a request: the server has neither closed it nor sent anything.
    fn usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            // No event since the last read drained the socket: open and quiet.
            Poll::Pending => true,
            // An event (or a read that filled the buffer): look without blocking. Quiet means usable.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => false,
        }
    }
}

/// FNV-1a: the pool's keys are a few short addresses of our own servers, looked up twice per request, so a
/// DoS-resistant hash buys nothing here and costs more than the rest of the lookup.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Idle connections by data server address.
#[derive(Debug, Default)]
pub struct Pool {
    idle: HashMap<Box<str>, Vec<Upstream>, BuildHasherDefault<Fnv>>,
}

impl Pool {
    /// The most recently used idle connection to `addr` that is still usable.
    pub fn take(&mut self, addr: &str, now: Instant) -> Option<Upstream> {
        let conns = self.idle.get_mut(addr)?;
        while let Some(mut conn) = conns.pop() {
            if now.saturating_duration_since(conn.idle_since) < IDLE_TIMEOUT && conn.usable() {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `addr`.
    pub fn put(&mut self, addr: &str, mut conn: Upstream, now: Instant) {
        conn.idle_since = now;
        match self.idle.get_mut(addr) {
            Some(conns) if conns.len() < MAX_IDLE_PER_UPSTREAM => conns.push(conn),
            Some(_) => {}
            None => {
                self.idle.insert(addr.into(), vec![conn]);
            }
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] (including every connection to a server that left).
    pub fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, conns| {
            conns.retain(|c| now.saturating_duration_since(c.idle_since) < IDLE_TIMEOUT);
            !conns.is_empty()
        });
    }

    /// Idle connections held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn closed_and_chatty_idle_connections_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pool = Pool::default();
        let key = addr.to_string();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.unwrap();
            accepted.push(listener.accept().await.unwrap().0);
            pool.put(&key, Upstream::new(c), Instant::now());
        }
        // Newest first: the third connection is closed by the server, the second gets unsolicited bytes.
        drop(accepted.pop());
        accepted[1]
            .write_all(b"HTTP/1.1 408\r\n\r\n")
            .await
            .unwrap();
        // Loopback delivers at once; a yield lets the reactor record both events before the pool looks.
        tokio::task::yield_now().await;
        let got = pool
            .take(&key, Instant::now())
            .expect("the quiet connection");
        assert_eq!(got.stream.peer_addr().unwrap(), addr);
        assert_eq!(pool.len(), 0, "the closed and the chatty one were dropped");
        assert!(got.reused);
        pool.put(&key, got, Instant::now() - IDLE_TIMEOUT);
        pool.sweep(Instant::now());
        assert_eq!(pool.len(), 0, "expired connections are swept");
    }
}
