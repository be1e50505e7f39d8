//! One client connection of the proxy, on a worker thread: request heads in, answers out.
//!
//! The proxy speaks HTTP/1.1 itself rather than through a general-purpose HTTP library: a request head is parsed
//! in place (httparse) and rewritten once into the upstream head (`request`); the response head is rewritten
//! straight into the bytes sent to the client, with as much of the body as has arrived, so a small exchange costs
//! one write and one read on each side and no allocation. The tries upstream are in `tries`, the bytes on the
//! wire in `relay`, the framing rules in `h1`, the proxy's own answers in `answer`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use discovery::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client_stream::ClientStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::answer::{ClientFault, Persist, answer, client_error, looped, write_json_error};
use crate::h1::{self, Framing, Refusal};
use crate::headers::PeerHeaders;
use crate::listener::HttpLimits;
use crate::park::SpareBuffers;
use crate::pool::Pool;
use crate::relay::reframe;
use crate::relay::write_paced;
use crate::request::{Req, parse_request};
use crate::state::Inner;
use crate::tries::{Failure, forward};
use crate::tunnel;

/// Initial read buffer of a client connection (it grows to `server.max_header_bytes` for a large head).
const CLIENT_BUFFER: usize = 4 * 1024;
/// Most headers in a request or response head.
pub(crate) const MAX_HEADERS: usize = 100;

/// What one proxy worker thread shares between its connections.
pub(crate) struct Worker {
    pub p: Arc<Inner>,
    pub pool: RefCell<Pool>,
    pub limits: HttpLimits,
    /// Set once shutdown starts: every response then says `Connection: close`.
    pub draining: Arc<AtomicBool>,
    /// Set when idle connections are to close (the end of the drain grace).
    pub close_idle: Cell<bool>,
    pub close_idle_now: Notify,
    /// Buffers of parked connections, for the next one that wakes (`park`).
    pub spare: RefCell<SpareBuffers>,
    /// False once the parking lot refused a connection (its thread died): idle connections then wait in their tasks.
    pub parking: Cell<bool>,
    /// The io_uring relay for tunnels, shared by the listener's workers (`None` inside when off or refused).
    pub tunnels: Arc<tunnel::RingRelay>,
}

/// One client connection.
pub(crate) struct Conn {
    pub(crate) stream: ClientStream,
    /// The client's address.
    pub(crate) peer_addr: SocketAddr,
    pub(crate) peer: PeerHeaders,
    /// Bytes from the client not yet handled.
    pub(crate) buf: BytesMut,
    /// Bytes for the client: a response head and what fits of its body.
    pub(crate) out: Vec<u8>,
    /// The upstream request line, ending in `host: ` (each try adds its server's address).
    pub(crate) up_line: Vec<u8>,
    /// The rest of the upstream head after the host, blank line included.
    pub(crate) up_rest: Vec<u8>,
    /// One try's head (and a buffered body).
    pub(crate) up_out: Vec<u8>,
    /// A buffered chunked body, re-framed (extensions and trailers dropped).
    pub(crate) up_body: Vec<u8>,
    /// Requests served on this connection.
    pub(crate) served: u64,
    /// The server's side of a tunnel, once it answered 101: relayed when the request's handling returns.
    pub(crate) upgraded: Option<Box<tunnel::Upgraded>>,
}

/// How a request's body relates to the buffer when its head is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// No body.
    None,
    /// Entirely in the buffer: this many bytes, sent with the head and replayable.
    Buffered(usize),
    /// Still arriving: streamed after the head.
    Streaming,
}

/// What happened to a request, for the access log and the connection.
pub(crate) struct Done {
    pub(crate) status: u16,
    pub(crate) upstream: Option<Arc<Backend>>,
    pub(crate) tries: u32,
    pub(crate) failure: Option<String>,
    /// Whether the client connection can carry another request.
    pub(crate) keep: bool,
}

/// How long a kept-alive connection first waits for its next request in its task, before it is parked out of it
/// (`park::ParkingLot`). A busy client's next request comes sooner and costs no move. Short, because what a task
/// held stays in the allocator: the process keeps the memory of as many tasks as were waiting at once.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(10);
/// The longest a connection waits in its task before parking, however often it came back soon after.
pub(crate) const MAX_PARK_AFTER: Duration = Duration::from_secs(1);

/// A kept-alive connection that waited its `park_after` for its next request: to be parked out of its task.
pub(crate) struct GoneIdle {
    pub(crate) socket: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) served: u64,
    /// When `server.keepalive_timeout` closes it.
    pub(crate) deadline: Instant,
    pub(crate) park_after: Duration,
}

/// A parked connection taken up again: requests served so far, its keep-alive deadline, how long it waited in its
/// task before it was parked.
pub(crate) struct Resumed {
    pub(crate) served: u64,
    pub(crate) deadline: Instant,
    pub(crate) park_after: Duration,
    /// Woken because its socket became readable before its deadline: what came is read even if the deadline
    /// passed while the connection waited for its worker (tokio may not have seen the readiness yet).
    pub(crate) readable: bool,
}

impl Resumed {
    /// How long the connection waits in its task before parking next time. Parking and waking cost a few system
    /// calls, a new task and a hand-off between threads (tens of microseconds on the request that wakes it), so a
    /// client that came back within [`MAX_PARK_AFTER`] waits twice its pause (and at least twice its last wait) next
    /// time: a client polling every 100 ms parks once, not ten times a second. One that came back later halves its
    /// wait, down to [`PARK_AFTER`].
    fn next_park_after(&self, keepalive_timeout: Duration, now: Instant) -> Duration {
        let idle_from = self.deadline.checked_sub(keepalive_timeout);
        let idle_for = idle_from.map_or(Duration::MAX, |from| now.saturating_duration_since(from));
        if idle_for < MAX_PARK_AFTER {
            (idle_for * 2).max(self.park_after * 2).min(MAX_PARK_AFTER)
        } else {
            (self.park_after / 2).max(PARK_AFTER)
        }
    }
}

/// Serves one client connection until it closes, fails or the server drains, or until it waits long enough for its
/// next request to be parked (then it is returned). `resumed` is a parked connection taken up again.
pub(crate) async fn serve(
    w: &Worker,
    stream: TcpStream,
    peer: SocketAddr,
    resumed: Option<Resumed>,
) -> Option<GoneIdle> {
    let trusted = w.p.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
    let mut c = Conn {
        stream: ClientStream::new(stream),
        peer_addr: peer,
        peer: PeerHeaders::new(peer, trusted),
        // No buffers until the first byte (`park`): a connection that never sends holds none.
        buf: BytesMut::new(),
        out: Vec::new(),
        up_line: Vec::new(),
        up_rest: Vec::new(),
        up_out: Vec::new(),
        up_body: Vec::new(),
        served: resumed.as_ref().map_or(0, |r| r.served),
        upgraded: None,
    };
    let park_after = resumed.as_ref().map_or(PARK_AFTER, |r| {
        r.next_park_after(w.limits.keepalive_timeout, Instant::now())
    });
    let mut idle_deadline = resumed.map(|r| {
        if r.readable {
            r.deadline
                .max(Instant::now() + w.limits.header_read_timeout)
        } else {
            r.deadline
        }
    });
    // The byte counts at the end of the previous request: each request's own are the difference.
    let mut counted = (0, 0);
    loop {
        let req = match read_head(w, &mut c, idle_deadline.take(), park_after).await {
            Head::Request(req) => req,
            Head::Park(deadline) => {
                return Some(GoneIdle {
                    socket: c.stream.into_socket(),
                    peer,
                    served: c.served,
                    deadline,
                    park_after,
                });
            }
            Head::Closed => return None,
            Head::Timeout => {
                // An idle keep-alive connection timing out is normal; one that never sent a whole head is not.
                if c.served == 0 || !c.buf.is_empty() {
                    w.p.metrics.connections_closed.count("header_timeout");
                    tracing::debug!(%peer, "connection closed: request head not received in time");
                }
                linger_close(c.stream.socket()).await;
                return None;
            }
            Head::Refused(refusal) => {
                // Boxed like a request: its state need not sit in every connection's future.
                Box::pin(refuse(w, &mut c, refusal)).await;
                return None;
            }
        };
        c.served += 1;
        let started = Instant::now();
        // Boxed: a request's state is most of a connection's future, and an idle connection has no request.
        let done = Box::pin(handle(w, &mut c, &req, started)).await;
        let now_counted = c.stream.counts();
        let bytes = (now_counted.0 - counted.0, now_counted.1 - counted.1);
        counted = now_counted;
        if let Some(upgraded) = c.upgraded.take() {
            // The request's futures are gone; the tunnel owns both sockets (its bytes are not in the access log,
            // which logs the 101 when the tunnel ends).
            let (client, pending, head) = c.into_tunnel();
            // Boxed: a tunnel's state need not sit in every connection's future.
            let client = Box::pin(tunnel::run(w, *upgraded, client, pending, head)).await;
            account(w, &req, &done, started, peer, bytes);
            if let Some(mut client) = client {
                linger_close(&mut client).await;
            }
            return None;
        }
        account(w, &req, &done, started, peer, bytes);
        if !done.keep {
            linger_close(c.stream.socket()).await;
            return None;
        }
    }
}

impl Conn {
    /// What a tunnel needs of the connection (the socket, the bytes the client sent after its request, the 101 to
    /// send); the rest (the upstream head's buffers) is dropped now, not held for the tunnel's life.
    fn into_tunnel(self) -> (TcpStream, BytesMut, Vec<u8>) {
        (self.stream.into_socket(), self.buf, self.out)
    }
}

/// Counts a request's status and writes its access log line; `bytes` is what it read from and wrote to the client.
fn account(
    w: &Worker,
    req: &Req,
    done: &Done,
    started: Instant,
    client: SocketAddr,
    bytes: (u64, u64),
) {
    w.p.statuses.get(done.status).inc();
    let Some(path) = &req.path else {
        return;
    };
    let (bytes_in, bytes_out) = bytes;
    // A number, so that a log collector can sum and compare it (LOG_FORMAT=json).
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let upstream = done.upstream.as_ref().map_or("-", |b| b.id());
    let (method, status, tries) = (&req.method, done.status, done.tries);
    let request_id = req.id.as_str();
    // The target keeps the api-server's name: it is how operators filter the access log (its README).
    match &done.failure {
        None => {
            tracing::info!(target: "api_server::access", %method, path, status, upstream, tries, elapsed_ms, %client, request_id, bytes_in, bytes_out)
        }
        Some(text) => {
            tracing::info!(target: "api_server::access", %method, path, status, upstream, tries, elapsed_ms, %client, request_id, bytes_in, bytes_out, "{text}")
        }
    }
}

/// Answers a request head that cannot be served (too large, malformed, unsupported) and closes.
async fn refuse(w: &Worker, c: &mut Conn, refusal: Refusal) {
    w.p.metrics.connections_closed.count(match refusal {
        Refusal::TooLarge => "header_too_large",
        Refusal::BadRequest(_) => "malformed",
        Refusal::NotImplemented(_) => "unsupported",
    });
    let peer = c.peer_addr;
    tracing::debug!(%peer, "request refused: {}", refusal.detail());
    let (status, reason) = refusal.status();
    w.p.statuses.get(status).inc();
    c.out.clear();
    write_json_error(
        &mut c.out,
        status,
        reason,
        refusal.detail(),
        None,
        Persist::Close,
        false,
    );
    if write_out(w, c).await {
        linger_close(c.stream.socket()).await;
    }
}

/// Writes `out` to the client, each write within `server.send_timeout`; false when the client is gone or reads
/// nothing.
pub(crate) async fn write_out(w: &Worker, c: &mut Conn) -> bool {
    write_paced(
        &mut c.stream,
        &c.out,
        w.limits.send_timeout,
        "the client read nothing",
    )
    .await
    .is_ok()
}

/// How long a closing connection's unread input is still read and dropped.
const LINGER: Duration = Duration::from_secs(1);
/// How much of it at most.
const LINGER_BYTES: usize = 256 * 1024;

/// Closes a connection from the server's side: the end of the response first (FIN), then what the client still
/// sends (the rest of a refused request body, a pipelined request) is read and dropped for a moment. Closing a
/// socket with unread input makes the kernel send a reset, which can destroy the response before the client reads
/// it.
async fn linger_close(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    // On the heap: inline, it would make every connection's future 4 KiB bigger for its whole life.
    let mut sink = vec![0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

enum Head {
    Request(Req),
    /// Idle for its `park_after`: to be parked until this keep-alive deadline.
    Park(Instant),
    Closed,
    Timeout,
    Refused(Refusal),
}

/// Waits for the next request head: on a kept-alive connection up to `server.keepalive_timeout` for its first byte,
/// then `server.header_read_timeout` for the whole head (for a connection's first request, from the accept).
/// `idle_deadline` is the keep-alive deadline of a parked connection taken up again. Idle for `park_after` before
/// its deadline, the connection is to be parked.
async fn read_head(
    w: &Worker,
    c: &mut Conn,
    idle_deadline: Option<Instant>,
    park_after: Duration,
) -> Head {
    let now = Instant::now();
    let header_timeout = w.limits.header_read_timeout;
    let mut deadline = if c.served == 0 || !c.buf.is_empty() {
        now + header_timeout
    } else {
        idle_deadline.unwrap_or(now + w.limits.keepalive_timeout)
    };
    let mut waiting_idle = c.served > 0 && c.buf.is_empty();
    let park_at = now + park_after;
    if c.buf.is_empty() && !c.is_parked() {
        c.park(&mut w.spare.borrow_mut());
    }
    loop {
        if !c.buf.is_empty() {
            match parse_request(w, c) {
                Ok(Some(req)) => return Head::Request(req),
                Ok(None) if c.buf.len() >= w.limits.max_header_bytes => {
                    return Head::Refused(Refusal::TooLarge);
                }
                Ok(None) => {}
                Err(refusal) => return Head::Refused(refusal),
            }
        }
        let idle = c.buf.is_empty();
        if idle && w.close_idle.get() {
            return Head::Closed;
        }
        if c.is_parked() {
            // Buffers only once there is something to read.
            let park = waiting_idle && park_at < deadline && w.parking.get();
            let wait_until = if park { park_at } else { deadline };
            let ready = tokio::select! {
                biased;
                ready = c.stream.socket().readable() => ready,
                () = tokio::time::sleep_until(wait_until) => {
                    return if park { Head::Park(deadline) } else { Head::Timeout };
                }
                () = w.close_idle_now.notified(), if idle => return Head::Closed,
            };
            if ready.is_err() {
                return Head::Closed;
            }
            c.unpark(&mut w.spare.borrow_mut(), CLIENT_BUFFER);
        }
        if c.buf.capacity() - c.buf.len() < 1024 {
            c.buf.reserve(CLIENT_BUFFER);
        }
        let read = tokio::select! {
            biased;
            read = c.stream.read_buf(&mut c.buf) => read,
            () = tokio::time::sleep_until(deadline) => return Head::Timeout,
            () = w.close_idle_now.notified(), if idle => return Head::Closed,
        };
        match read {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) if waiting_idle => {
                // The first byte of the next request: its head has `header_read_timeout` from now.
                waiting_idle = false;
                deadline = Instant::now() + header_timeout;
            }
            Ok(_) => {}
        }
    }
}

/// Proxies one request: tries servers, writes the response (or an error) to the client.
async fn handle(w: &Worker, c: &mut Conn, req: &Req, started: Instant) -> Done {
    let p = &*w.p;
    if req.looped {
        return looped(w, c, req).await;
    }
    let body = match req.framing {
        Framing::Empty | Framing::UntilClose => Body::None,
        Framing::Length(n) if p.max_body_bytes.is_some_and(|max| n > max) => {
            return client_error(w, c, req, ClientFault::too_large(p.max_body_bytes)).await;
        }
        Framing::Length(n) if c.buf.len() as u64 >= n => Body::Buffered(n as usize),
        Framing::Length(_) => Body::Streaming,
        Framing::Chunked => {
            let mut parser = h1::ChunkedParser::default();
            let mut seen = 0;
            c.up_body.clear();
            match reframe(
                &mut parser,
                &c.buf,
                &mut c.up_body,
                &mut seen,
                p.max_body_bytes,
            ) {
                Ok(k) if parser.done() => {
                    if parser.had_trailers() {
                        p.metrics.trailers_dropped.inc();
                    }
                    Body::Buffered(k)
                }
                Ok(_) => Body::Streaming,
                Err(err) => return client_error(w, c, req, ClientFault::from_body(err)).await,
            }
        }
    };
    let result = forward(w, c, req, body, started).await;
    match result {
        Ok(done) => done,
        Err(Failure::Client(fault)) => client_error(w, c, req, fault).await,
        Err(Failure::Proxy(err)) => {
            p.metrics.latency.observe_duration(started.elapsed());
            let (status, reason) = err.status();
            // The client's body must have been read whole for the connection to carry another request.
            let read_whole = match body {
                Body::None => true,
                Body::Buffered(k) => {
                    c.buf.advance(k);
                    true
                }
                Body::Streaming => false,
            };
            let detail = err.to_string();
            let keep = answer(w, c, req, status, reason, &detail, read_whole).await;
            Done {
                status,
                upstream: None,
                tries: err.tries(),
                failure: Some(detail),
                keep,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEPALIVE: Duration = Duration::from_secs(75);

    /// A connection parked after waiting `park_after`, taken up again `idle_for` after its last response.
    fn next(park_after: Duration, idle_for: Duration) -> Duration {
        let idle_from = Instant::now();
        let resumed = Resumed {
            served: 1,
            deadline: idle_from + KEEPALIVE,
            park_after,
            readable: false,
        };
        resumed.next_park_after(KEEPALIVE, idle_from + idle_for)
    }

    #[test]
    fn a_client_that_comes_back_within_a_second_soon_stays_in_its_task_and_long_pauses_shorten_the_wait()
     {
        let ms = Duration::from_millis;
        // Every 32 ms (the open-loop bench): parked once, then the wait outlasts the pause.
        assert_eq!(next(PARK_AFTER, ms(32)), ms(64));
        // Every 100 ms: the same.
        assert_eq!(next(PARK_AFTER, ms(100)), ms(200));
        assert_eq!(next(ms(500), ms(600)), MAX_PARK_AFTER, "capped");
        // Idle for long: the wait halves, down to the shortest.
        assert_eq!(next(MAX_PARK_AFTER, ms(1500)), ms(500));
        assert_eq!(next(ms(40), Duration::from_secs(30)), ms(20));
        assert_eq!(next(ms(15), KEEPALIVE), PARK_AFTER);
    }
}
