//! One client connection of the proxy: request heads in, tries upstream, responses out, on a worker thread.
//!
//! The proxy speaks HTTP/1.1 itself rather than through a general-purpose HTTP library: a request head is parsed
//! in place (httparse) and rewritten once into the upstream head; the response head is rewritten straight into the
//! bytes sent to the client, with as much of the body as has arrived, so a small exchange costs one write and one
//! read on each side and no allocation. Bodies stream both ways through fixed buffers, framed as [`h1`] decides.
//!
//! Retries follow the rules in the crate docs. A request whose body is entirely in the buffer when its head is
//! parsed (no body, or a small one) can be sent again; a streamed body cannot, once any of it has left the buffer,
//! so such a request is only retried when its try failed before that (a refused connection, or a pooled connection
//! the server had closed).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::http::Method;
use bytes::{Buf, BytesMut};
use discovery::{Backend, InFlightGuard};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::h1::{
    self, ChunkError, ConnectionTokens, Framing, FramingHeaders, Refusal, push_decimal, push_header,
};
use super::headers::{EarlierHops, PeerHeaders, RequestId, is_forwarding, push_forwarding};
use super::pool::{Pool, UPSTREAM_BUFFER, Upstream};
use super::{Inner, ProxyError, is_idempotent, jittered, report_failure, wait_for_a_server};
use crate::serve::{ConnectionErrors, HttpLimits};

/// Initial read buffer of a client connection (it grows to `server.max_header_bytes` for a large head).
const CLIENT_BUFFER: usize = 4 * 1024;
/// Most headers in a request or response head.
const MAX_HEADERS: usize = 100;
/// Largest response head accepted from a data server.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What one proxy worker thread shares between its connections.
pub(crate) struct Worker {
    pub p: Arc<Inner>,
    pub pool: RefCell<Pool>,
    pub limits: HttpLimits,
    pub errors: ConnectionErrors,
    /// Set once shutdown starts: every response then says `Connection: close`.
    pub draining: Arc<AtomicBool>,
    /// Set when idle connections are to close (the end of the drain grace).
    pub close_idle: Cell<bool>,
    pub close_idle_now: Notify,
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    peer: PeerHeaders,
    /// Bytes from the client not yet handled.
    buf: BytesMut,
    /// Bytes for the client: a response head and what fits of its body.
    out: Vec<u8>,
    /// The upstream request line, ending in `host: ` (each try adds its server's address).
    up_line: Vec<u8>,
    /// The rest of the upstream head after the host, blank line included.
    up_rest: Vec<u8>,
    /// One try's head (and a buffered body).
    up_out: Vec<u8>,
    /// Requests served on this connection.
    served: u64,
}

/// A parsed request head, owned, once its bytes have been rewritten into `up_line` and `up_rest`.
struct Req {
    method: Method,
    http10: bool,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    id: RequestId,
    /// The path, for the access log.
    path: Option<String>,
}

/// How a request's body relates to the buffer when its head is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No body.
    None,
    /// Entirely in the buffer: this many bytes, sent with the head and replayable.
    Buffered(usize),
    /// Still arriving: streamed after the head.
    Streaming,
}

/// What happened to a request, for the access log and the connection.
struct Done {
    status: u16,
    upstream: Option<Arc<Backend>>,
    tries: u32,
    failure: Option<String>,
    /// Whether the client connection can carry another request.
    keep: bool,
}

/// Serves one client connection until it closes, fails or the server drains.
pub(crate) async fn serve(w: &Worker, stream: TcpStream, peer: SocketAddr) {
    let trusted = w.p.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
    let mut c = Conn {
        stream,
        peer: PeerHeaders::new(peer, trusted),
        // The write-side buffers grow to what this connection's requests need; an idle connection holds little.
        buf: BytesMut::with_capacity(CLIENT_BUFFER),
        out: Vec::new(),
        up_line: Vec::new(),
        up_rest: Vec::new(),
        up_out: Vec::new(),
        served: 0,
    };
    loop {
        let req = match read_head(w, &mut c).await {
            Head::Request(req) => req,
            Head::Closed => return,
            Head::Timeout => {
                // An idle keep-alive connection timing out is normal; one that never sent a whole head is not.
                if c.served == 0 || !c.buf.is_empty() {
                    w.errors.count("header_timeout");
                    tracing::debug!(%peer, "connection closed: request head not received in time");
                }
                linger_close(&mut c.stream).await;
                return;
            }
            Head::Refused(refusal) => {
                w.errors.count(match refusal {
                    Refusal::TooLarge => "header_too_large",
                    Refusal::BadRequest(_) => "malformed",
                    Refusal::NotImplemented(_) => "unsupported",
                });
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
                if let Ok(Ok(())) = bounded(w.p.try_timeout, c.stream.write_all(&c.out)).await {
                    linger_close(&mut c.stream).await;
                }
                return;
            }
        };
        c.served += 1;
        let started = Instant::now();
        let done = handle(w, &mut c, &req, started).await;
        let p = &w.p;
        p.statuses.get(done.status).inc();
        if let Some(path) = &req.path {
            let elapsed = started.elapsed();
            let upstream = done.upstream.as_ref().map_or("-", |b| b.id());
            let (method, status, tries) = (&req.method, done.status, done.tries);
            match &done.failure {
                None => {
                    tracing::info!(target: "api_server::access", %method, path, status, upstream, tries, ?elapsed)
                }
                Some(text) => {
                    tracing::info!(target: "api_server::access", %method, path, status, upstream, tries, ?elapsed, "{text}")
                }
            }
        }
        if !done.keep {
            linger_close(&mut c.stream).await;
            return;
        }
    }
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
    let mut sink = [0u8; 4096];
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
    Closed,
    Timeout,
    Refused(Refusal),
}

/// Waits for the next request head, within `server.header_read_timeout`.
async fn read_head(w: &Worker, c: &mut Conn) -> Head {
    let deadline = Instant::now() + w.limits.header_read_timeout;
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
            Ok(_) => {}
        }
    }
}

/// Parses the request head at the start of the buffer; on success its bytes are consumed and the upstream head is
/// in `up_line` and `up_rest`.
fn parse_request(w: &Worker, c: &mut Conn) -> Result<Option<Req>, Refusal> {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let n = match r.parse_with_uninit_headers(&c.buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::BadRequest("malformed request head")),
    };
    if n > w.limits.max_header_bytes {
        return Err(Refusal::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (r.method, r.path, r.version) else {
        return Err(Refusal::BadRequest("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::BadRequest("malformed method"))?;
    if method == Method::CONNECT {
        return Err(Refusal::NotImplemented("CONNECT is not proxied"));
    }
    let http10 = version == 0;
    let (target, target_host) = origin_form(&method, target)?;

    let mut connection = ConnectionTokens::default();
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
    }
    let trusted = c.peer.trusted;
    let mut framing = FramingHeaders::default();
    let mut earlier = EarlierHops::default();
    let mut host = None;
    let mut id = None;
    let mut expect_continue = false;
    c.up_rest.clear();
    c.up_rest.extend_from_slice(b"\r\n");
    for h in r.headers.iter() {
        let name = h.name;
        if framing.add(name, h.value) {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            if host.replace(h.value).is_some() {
                return Err(Refusal::BadRequest("more than one Host header"));
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            id = id.or_else(|| RequestId::from_client(h.value));
        } else if name.eq_ignore_ascii_case("expect")
            && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        {
            // Answered by the proxy itself when it is ready for the body.
            expect_continue = true;
        } else if is_forwarding(name) {
            if trusted {
                earlier.add(name, h.value);
            }
        } else if !(h1::is_hop_by_hop(name)
            || (connection.names_others && h1::named_by_connection(r.headers, name)))
        {
            push_header(&mut c.up_rest, name.as_bytes(), h.value);
        }
    }
    if host.is_none() && !http10 && target_host.is_none() {
        return Err(Refusal::BadRequest("no Host header"));
    }
    let host = target_host.or(host);
    let framing = framing.request(http10)?;
    match framing {
        Framing::Length(len) => {
            c.up_rest.extend_from_slice(b"content-length: ");
            push_decimal(&mut c.up_rest, len);
            c.up_rest.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => c
            .up_rest
            .extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty if matches!(method, Method::POST | Method::PUT | Method::PATCH) => {
            c.up_rest.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty | Framing::UntilClose => {}
    }
    let id = id.unwrap_or_else(RequestId::generate);
    push_forwarding(&mut c.up_rest, &c.peer, &earlier, host, &id);
    c.up_rest.extend_from_slice(b"\r\n");

    c.up_line.clear();
    c.up_line.extend_from_slice(method.as_str().as_bytes());
    c.up_line.push(b' ');
    if !target.starts_with(['/', '*']) {
        c.up_line.push(b'/');
    }
    c.up_line.extend_from_slice(target.as_bytes());
    c.up_line.extend_from_slice(b" HTTP/1.1\r\nhost: ");

    let path = w.p.access_log.then(|| match target.split('?').next() {
        Some(path) if !path.is_empty() => path.to_owned(),
        _ => "/".to_owned(),
    });
    let keep_alive = if http10 {
        connection.keep_alive && !connection.close
    } else {
        !connection.close
    };
    let req = Req {
        method,
        http10,
        framing,
        keep_alive,
        expect_continue: expect_continue && framing != Framing::Empty,
        id,
        path,
    };
    c.buf.advance(n);
    Ok(Some(req))
}

/// The request target as the upstream gets it (origin form), and the authority of an absolute-form target.
fn origin_form<'a>(
    method: &Method,
    target: &'a str,
) -> Result<(&'a str, Option<&'a [u8]>), Refusal> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" && method == Method::OPTIONS {
        return Ok((target, None));
    }
    let starts = |scheme: &str| {
        target
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()))
    };
    let scheme_len = if starts("http://") {
        7
    } else if starts("https://") {
        8
    } else {
        return Err(Refusal::BadRequest("malformed request target"));
    };
    let rest = &target[scheme_len..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(Refusal::BadRequest("malformed request target"));
    }
    // `http://host` and `http://host?q` have an empty path: the caller puts "/" before what is left.
    Ok((path, Some(authority.as_bytes())))
}

/// Why a try got no usable response head.
#[derive(Debug)]
enum TryError {
    /// No connection (refused, unreachable, connect timeout): the server never saw the request.
    Connect(io::Error),
    /// Sending the request failed on a new connection: the server cannot have acted on it.
    NotSent(String),
    /// The connection failed after the request was sent, before a whole response head.
    Failed(String),
    /// The try ran out of time.
    Timeout,
    /// The client broke off or sent a malformed body: nothing to answer, or a 400.
    Client(Option<ChunkError>),
}

/// Proxies one request: tries servers, writes the response (or an error) to the client.
async fn handle(w: &Worker, c: &mut Conn, req: &Req, started: Instant) -> Done {
    let p = &*w.p;
    let body = match req.framing {
        Framing::Empty | Framing::UntilClose => Body::None,
        Framing::Length(n) if c.buf.len() as u64 >= n => Body::Buffered(n as usize),
        Framing::Length(_) => Body::Streaming,
        Framing::Chunked => {
            let mut parser = h1::ChunkedParser::default();
            match parser.advance(&c.buf, |_| {}) {
                Ok(k) if parser.done() => Body::Buffered(k),
                Ok(_) => Body::Streaming,
                Err(err) => return client_error(w, c, req, Some(err)).await,
            }
        }
    };
    let result = forward(w, c, req, body, started).await;
    match result {
        Ok(done) => done,
        Err(Failure::Client(malformed)) => client_error(w, c, req, malformed).await,
        Err(Failure::Proxy(err)) => {
            p.app.metrics().latency.observe_duration(started.elapsed());
            let (status, reason) = err.status();
            // The client's body must have been read whole for the connection to carry another request.
            let keep = match body {
                Body::None => true,
                Body::Buffered(k) => {
                    c.buf.advance(k);
                    true
                }
                Body::Streaming => false,
            } && req.keep_alive
                && !w.draining.load(Ordering::Acquire);
            c.out.clear();
            write_json_error(
                &mut c.out,
                status,
                reason,
                &err.to_string(),
                Some(&req.id),
                if keep {
                    Persist::Keep { http10: req.http10 }
                } else {
                    Persist::Close
                },
                req.method == Method::HEAD,
            );
            let written = matches!(
                bounded(p.try_timeout, c.stream.write_all(&c.out)).await,
                Ok(Ok(()))
            );
            Done {
                status,
                upstream: None,
                tries: err.tries(),
                failure: Some(err.to_string()),
                keep: keep && written,
            }
        }
    }
}

/// A broken or malformed request body: 400 if it was malformed and nothing was answered yet; the connection closes.
async fn client_error(w: &Worker, c: &mut Conn, req: &Req, malformed: Option<ChunkError>) -> Done {
    if let Some(err) = malformed {
        w.errors.count("malformed");
        c.out.clear();
        write_json_error(
            &mut c.out,
            400,
            "Bad Request",
            &err.to_string(),
            Some(&req.id),
            Persist::Close,
            req.method == Method::HEAD,
        );
        let _ = bounded(w.p.try_timeout, c.stream.write_all(&c.out)).await;
    }
    Done {
        status: if malformed.is_some() { 400 } else { 499 },
        upstream: None,
        tries: 0,
        failure: Some(malformed.map_or_else(
            || "the client closed the connection during the request".to_owned(),
            |e| e.to_string(),
        )),
        keep: false,
    }
}

enum Failure {
    Proxy(ProxyError),
    Client(Option<ChunkError>),
}

/// Tries live servers until one answers, a failure may not be retried, or tries, time or the retry budget run out.
async fn forward(
    w: &Worker,
    c: &mut Conn,
    req: &Req,
    body: Body,
    started: Instant,
) -> Result<Done, Failure> {
    let p = &*w.p;
    let deadline = started + p.total_timeout;
    let balancer = p.app.balancer();
    let metrics = p.app.metrics();
    p.budget.deposit(started);
    if started < p.warm_until {
        wait_for_a_server(p, deadline.min(p.warm_until)).await;
    }
    let idempotent = is_idempotent(&req.method);
    let replayable = body != Body::Streaming;
    let rid = || req.id.as_str().to_owned();
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last_failure = String::new();
    // Whether the last try failed by timing out (then the answer is 504, not 502).
    let mut timed_out = false;
    // Decides whether the failed try may be followed by another, taking a token from the budget if so.
    let may_retry = |tries: u32, retryable: bool| {
        retryable
            && tries < p.max_tries
            && Instant::now() < deadline
            && p.budget.withdraw(Instant::now())
    };
    for attempt in 0..p.max_tries {
        if attempt > 0 {
            let pause = jittered(p.backoff).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            if Instant::now() >= deadline {
                // The backoff used up the overall deadline: no try that could only time out.
                timed_out = true;
                break;
            }
        }
        let picked = if tried.is_empty() {
            balancer.pick(&[])
        } else {
            let exclude: Vec<&str> = tried.iter().map(|b| b.id()).collect();
            balancer.pick(&exclude)
        };
        let Some((backend, in_flight)) = picked else {
            break;
        };
        if attempt > 0 {
            metrics.retries.inc();
        }
        metrics.upstream_requests.with(backend.id()).inc();
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        // A try cut short by the overall deadline rather than `proxy.try_timeout` says nothing about the server.
        let cut_by_deadline = left < p.try_timeout;
        let try_deadline = now + p.try_timeout.min(left);
        // A 502/503 is replaced by another server's answer only if there may be another server to ask.
        let tried_now = tried.len() + 1;
        let can_retry = || {
            replayable
                && attempt + 1 < p.max_tries
                && Instant::now() < deadline
                && p.app.registry().live_count(Instant::now()) > tried_now
        };
        let outcome = try_once(
            w,
            c,
            req,
            body,
            &backend,
            in_flight,
            try_deadline,
            started,
            &can_retry,
        )
        .await;
        let id = backend.id();
        let (err, retryable) = match outcome {
            Ok(TryOk::Done(mut done)) => {
                done.tries = attempt + 1;
                done.upstream = Some(backend);
                return Ok(done);
            }
            Ok(TryOk::Gateway(status)) => {
                // A 502/503 from one server may be its own trouble: another may answer, if sending twice is safe.
                last_failure = format!("{id} answered {status}");
                timed_out = false;
                tried.push(backend);
                continue;
            }
            Err(TryError::Client(malformed)) => return Err(Failure::Client(malformed)),
            Err(err @ TryError::Connect(_)) => (err, true),
            Err(err @ TryError::NotSent(_)) => (err, true),
            Err(err @ TryError::Failed(_)) => (err, idempotent && replayable),
            Err(TryError::Timeout) if cut_by_deadline => {
                tracing::warn!(request_id = %req.id.as_str(), upstream = %id, "overall deadline reached during a try");
                return Err(Failure::Proxy(ProxyError::Timeout {
                    request_id: rid(),
                    tries: attempt + 1,
                }));
            }
            Err(TryError::Timeout) => {
                report_failure(p, id);
                tracing::warn!(request_id = %req.id.as_str(), upstream = %id, "upstream try timed out");
                // A server that hangs (alive TCP, no answer) may have started the work: only an idempotent
                // request that can be sent again goes to another server, within the overall deadline.
                if !may_retry(attempt + 1, idempotent && replayable) {
                    return Err(Failure::Proxy(ProxyError::Timeout {
                        request_id: rid(),
                        tries: attempt + 1,
                    }));
                }
                last_failure = format!("{id} ({}): timed out", backend.addr());
                timed_out = true;
                tried.push(backend);
                continue;
            }
        };
        timed_out = false;
        let text = match &err {
            TryError::Connect(e) => format!("connect: {e}"),
            TryError::NotSent(e) | TryError::Failed(e) => e.clone(),
            TryError::Timeout | TryError::Client(_) => unreachable!("handled above"),
        };
        last_failure = format!("{id} ({}): {text}", backend.addr());
        let connect = matches!(err, TryError::Connect(_));
        tracing::warn!(request_id = %req.id.as_str(), upstream = %id, connect, "upstream try failed: {text}");
        report_failure(p, id);
        tried.push(backend);
        if !may_retry(attempt + 1, retryable) {
            break;
        }
    }
    if tried.is_empty() {
        return Err(Failure::Proxy(ProxyError::NoServers { request_id: rid() }));
    }
    if timed_out {
        return Err(Failure::Proxy(ProxyError::Timeout {
            request_id: rid(),
            tries: tried.len() as u32,
        }));
    }
    Err(Failure::Proxy(ProxyError::Upstream {
        request_id: rid(),
        tries: tried.len() as u32,
        detail: last_failure,
    }))
}

enum TryOk {
    /// The response went to the client.
    Done(Done),
    /// The server answered 502 or 503 and the request may go elsewhere.
    Gateway(u16),
}

/// One try on `backend`: a pooled or new connection, the request, the response head, then (when the response
/// is kept) its body to the client.
#[allow(clippy::too_many_arguments)]
async fn try_once(
    w: &Worker,
    c: &mut Conn,
    req: &Req,
    body: Body,
    backend: &Backend,
    in_flight: InFlightGuard,
    try_deadline: Instant,
    started: Instant,
    can_retry: &dyn Fn() -> bool,
) -> Result<TryOk, TryError> {
    let p = &*w.p;
    // A pooled connection the server closed meanwhile is replaced by a new one, once, without counting a try.
    let mut fresh = false;
    let (mut up, resp) = loop {
        let pooled = if fresh {
            None
        } else {
            w.pool.borrow_mut().take(backend.addr(), Instant::now())
        };
        let mut up = match pooled {
            Some(up) => up,
            None => connect(backend, p.connect_timeout, try_deadline).await?,
        };
        c.up_out.clear();
        c.up_out.extend_from_slice(&c.up_line);
        c.up_out.extend_from_slice(backend.addr().as_bytes());
        c.up_out.extend_from_slice(&c.up_rest);
        let head_len = c.up_out.len();
        if let Body::Buffered(k) = body {
            c.up_out.extend_from_slice(&c.buf[..k]);
        }
        if body == Body::Streaming {
            match tokio::time::timeout_at(try_deadline, up.stream.write_all(&c.up_out)).await {
                Err(_) => return Err(TryError::Timeout),
                Ok(Ok(())) => {}
                Ok(Err(e)) if up.reused => {
                    tracing::debug!(upstream = %backend.id(), "pooled connection closed by the server: {e}");
                    fresh = true;
                    continue;
                }
                Ok(Err(e)) => return Err(TryError::NotSent(format!("sending the request: {e}"))),
            }
            return stream_exchange(w, c, req, backend, up, in_flight, try_deadline, started).await;
        }
        let draining = w.draining.load(Ordering::Acquire);
        // One timer for the whole try: the request out, the response head back.
        let exchanged = tokio::time::timeout_at(try_deadline, async {
            let mut sent = 0;
            while sent < c.up_out.len() {
                match up.stream.write(&c.up_out[sent..]).await {
                    Ok(0) => return Err(Step::Send(sent, io::ErrorKind::WriteZero.into())),
                    Ok(n) => sent += n,
                    Err(e) => return Err(Step::Send(sent, e)),
                }
            }
            read_response_head(&mut up.stream, &mut up.buf, &mut c.out, req, draining)
                .await
                .map_err(Step::Head)
        })
        .await;
        match exchanged {
            Err(_) => return Err(TryError::Timeout),
            // Until its head is whole, the server cannot have acted on the request.
            Ok(Err(Step::Send(sent, e))) if sent < head_len && up.reused => {
                tracing::debug!(upstream = %backend.id(), "pooled connection closed by the server: {e}");
                fresh = true;
            }
            Ok(Err(Step::Send(sent, e))) if sent < head_len => {
                return Err(TryError::NotSent(format!("sending the request: {e}")));
            }
            Ok(Err(Step::Send(_, e))) => {
                return Err(TryError::Failed(format!("sending the request body: {e}")));
            }
            // Most likely the server closed the pooled connection as the request went out; sending it again is
            // safe only for an idempotent request.
            Ok(Err(Step::Head(HeadError::Closed))) if up.reused && is_idempotent(&req.method) => {
                tracing::debug!(upstream = %backend.id(), "pooled connection closed before a response");
                fresh = true;
            }
            Ok(Err(Step::Head(e))) => return Err(TryError::Failed(e.to_string())),
            Ok(Ok(resp)) => break (up, resp),
        }
    };
    if server_status(w, backend, resp.status)
        && is_idempotent(&req.method)
        && can_retry()
        && p.budget.withdraw(Instant::now())
    {
        return Ok(TryOk::Gateway(resp.status));
    }
    p.app.metrics().latency.observe_duration(started.elapsed());
    if let Body::Buffered(k) = body {
        c.buf.advance(k);
    }
    let relayed = relay_body(
        &mut up.stream,
        &mut up.buf,
        &mut c.stream,
        &mut c.out,
        resp.framing,
        req.http10 && resp.framing == Framing::Chunked,
        p.try_timeout,
    )
    .await;
    drop(in_flight);
    let relayed = relay_outcome(w, backend, &req.id, relayed);
    if relayed.ok && resp.reusable && up.buf.is_empty() {
        w.pool.borrow_mut().put(backend.addr(), up, Instant::now());
    }
    Ok(TryOk::Done(
        finish(w, c, req, resp.status, resp.close_client, relayed).await,
    ))
}

/// Reports the server's health from its status; true when the answer is a 502/503, which another server may
/// replace if the request can be sent again (the connection is then dropped with its body unread).
fn server_status(w: &Worker, backend: &Backend, status: u16) -> bool {
    let p = &*w.p;
    let id = backend.id();
    if (500..600).contains(&status) && p.eject_on_5xx {
        report_failure(p, id);
    } else {
        p.app.balancer().report_success(id);
    }
    status == 502 || status == 503
}

/// How a relayed response ended.
struct Relayed {
    /// The whole response reached the client.
    ok: bool,
    /// The client got nothing at all: the upstream failed before the response head could go out.
    unanswered: bool,
    failure: Option<String>,
}

/// Logs and reports a relay that broke off.
fn relay_outcome(
    w: &Worker,
    backend: &Backend,
    id: &RequestId,
    relayed: Result<(), RelayError>,
) -> Relayed {
    match relayed {
        Ok(()) => Relayed {
            ok: true,
            unanswered: false,
            failure: None,
        },
        Err(RelayError::Upstream { detail, head_sent }) => {
            tracing::warn!(request_id = %id.as_str(), upstream = %backend.id(), "response broke off: {detail}");
            report_failure(&w.p, backend.id());
            Relayed {
                ok: false,
                unanswered: !head_sent,
                failure: Some(format!(
                    "{} ({}): response broke off: {detail}",
                    backend.id(),
                    backend.addr()
                )),
            }
        }
        Err(RelayError::Client(e)) => {
            tracing::debug!(request_id = %id.as_str(), "client went away during the response: {e}");
            Relayed {
                ok: false,
                unanswered: false,
                failure: Some(format!("client went away during the response: {e}")),
            }
        }
    }
}

/// The end of a try whose response was (or should have been) relayed: a 502 for a client that got nothing.
async fn finish(
    w: &Worker,
    c: &mut Conn,
    req: &Req,
    status: u16,
    close_client: bool,
    relayed: Relayed,
) -> Done {
    if relayed.unanswered {
        c.out.clear();
        write_json_error(
            &mut c.out,
            502,
            "Bad Gateway",
            relayed
                .failure
                .as_deref()
                .unwrap_or("bad upstream response"),
            Some(&req.id),
            Persist::Close,
            req.method == Method::HEAD,
        );
        let _ = bounded(w.p.try_timeout, c.stream.write_all(&c.out)).await;
    }
    Done {
        status: if relayed.unanswered { 502 } else { status },
        upstream: None,
        tries: 0,
        keep: relayed.ok && !close_client,
        failure: relayed.failure,
    }
}

/// Rewrites a response head in `out` to end the connection after it (for a response that came before the whole
/// request body went up: the rest of that body cannot be told from a next request).
fn force_close(out: &mut Vec<u8>, req: &Req) {
    const KEEP_ALIVE: &[u8] = b"connection: keep-alive\r\n";
    let end = out.len().saturating_sub(2);
    let cut = if req.http10 && out[..end].ends_with(KEEP_ALIVE) {
        end - KEEP_ALIVE.len()
    } else {
        end
    };
    out.truncate(cut);
    out.extend_from_slice(b"connection: close\r\n\r\n");
}

/// A try whose request body is still arriving: the body streams to the server while its response is awaited, and
/// keeps streaming while the response goes back (a server may answer before it has read the whole body).
#[allow(clippy::too_many_arguments)]
async fn stream_exchange(
    w: &Worker,
    c: &mut Conn,
    req: &Req,
    backend: &Backend,
    mut up: Upstream,
    in_flight: InFlightGuard,
    try_deadline: Instant,
    started: Instant,
) -> Result<TryOk, TryError> {
    let idle = w.p.try_timeout;
    if req.expect_continue
        && !req.http10
        && !matches!(
            bounded(idle, c.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")).await,
            Ok(Ok(()))
        )
    {
        return Err(TryError::Client(None));
    }
    let draining = w.draining.load(Ordering::Acquire);
    let (resp, relayed, body_done) = {
        let Conn {
            stream, buf, out, ..
        } = &mut *c;
        let (mut client_r, mut client_w) = stream.split();
        let Upstream {
            stream: up_stream,
            buf: up_buf,
            ..
        } = &mut up;
        let (mut up_r, mut up_w) = up_stream.split();
        let send = send_body(&mut client_r, buf, &mut up_w, req.framing, idle);
        tokio::pin!(send);
        let mut sent: Option<Result<(), BodyError>> = None;
        let head = {
            let head = tokio::time::timeout_at(
                try_deadline,
                read_response_head(&mut up_r, up_buf, out, req, draining),
            );
            tokio::pin!(head);
            loop {
                tokio::select! {
                    biased;
                    head = &mut head => break head,
                    result = &mut send, if sent.is_none() => {
                        match result {
                            Err(BodyError::Client(e)) => {
                                tracing::debug!(request_id = %req.id.as_str(), "client broke off the request body: {e}");
                                return Err(TryError::Client(None));
                            }
                            Err(BodyError::Malformed(e)) => return Err(TryError::Client(Some(e))),
                            // The server stopped reading: it may still answer (say, 413); the try deadline bounds
                            // that.
                            Err(BodyError::Upstream(e)) => {
                                tracing::debug!(request_id = %req.id.as_str(), upstream = %backend.id(), "server stopped reading the request body: {e}");
                                sent = Some(Err(BodyError::Upstream(e)));
                            }
                            Ok(()) => sent = Some(Ok(())),
                        }
                    }
                }
            }
        };
        let mut resp = match head {
            Err(_) => return Err(TryError::Timeout),
            Ok(Err(e)) => return Err(TryError::Failed(e.to_string())),
            Ok(Ok(resp)) => resp,
        };
        if !resp.close_client && !matches!(sent, Some(Ok(()))) {
            force_close(out, req);
            resp.close_client = true;
        }
        server_status(w, backend, resp.status);
        w.p.app
            .metrics()
            .latency
            .observe_duration(started.elapsed());
        let relay = relay_body(
            &mut up_r,
            up_buf,
            &mut client_w,
            out,
            resp.framing,
            req.http10 && resp.framing == Framing::Chunked,
            idle,
        );
        tokio::pin!(relay);
        let relayed = loop {
            tokio::select! {
                biased;
                relayed = &mut relay => break relayed,
                result = &mut send, if sent.is_none() => sent = Some(result),
            }
        };
        // The whole request body must have gone up for either connection to be reused.
        (resp, relayed, matches!(sent, Some(Ok(()))))
    };
    drop(in_flight);
    let relayed = relay_outcome(w, backend, &req.id, relayed);
    if relayed.ok && body_done && resp.reusable && up.buf.is_empty() {
        w.pool.borrow_mut().put(backend.addr(), up, Instant::now());
    }
    // A response that came before the whole body was sent was marked close above.
    Ok(TryOk::Done(
        finish(
            w,
            c,
            req,
            resp.status,
            resp.close_client || !body_done,
            relayed,
        )
        .await,
    ))
}

/// A new connection to `backend`, within the connect timeout and the try's deadline.
async fn connect(
    backend: &Backend,
    connect_timeout: Duration,
    try_deadline: Instant,
) -> Result<Upstream, TryError> {
    let own_limit = Instant::now() + connect_timeout;
    let limit = own_limit.min(try_deadline);
    let connecting = async {
        match backend.socket_addr() {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(backend.addr()).await,
        }
    };
    let stream = match tokio::time::timeout_at(limit, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(TryError::Connect(e)),
        // The try's time ran out first: a timeout of the try, not the server's failure to accept.
        Err(_) if try_deadline < own_limit => return Err(TryError::Timeout),
        Err(_) => {
            return Err(TryError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {connect_timeout:?}"),
            )));
        }
    };
    // Requests are written whole; waiting to coalesce them only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(Upstream::new(stream))
}

/// Where a try without a streamed body failed.
enum Step {
    /// Sending failed after this many bytes.
    Send(usize, io::Error),
    Head(HeadError),
}

/// What a response head said, once rewritten for the client into `out`.
#[derive(Debug)]
struct Resp {
    status: u16,
    framing: Framing,
    /// The upstream connection may carry another request once the body is read.
    reusable: bool,
    /// The client connection closes after this response.
    close_client: bool,
}

#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("connection closed before a response")]
    Closed,
    #[error("reading the response: {0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Reads a response head (skipping interim 1xx responses) and writes the client's version of it into `out`.
async fn read_response_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    req: &Req,
    draining: bool,
) -> Result<Resp, HeadError> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or_default();
                    if (100..200).contains(&status) {
                        if status == 101 {
                            return Err(HeadError::Malformed("101 to a request without Upgrade"));
                        }
                        // 100 Continue was answered by the proxy; other interim responses are dropped.
                        buf.advance(n);
                        continue;
                    }
                    let result = rewrite_response(&resp, out, req, draining);
                    buf.advance(n);
                    return result;
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(HeadError::Malformed("response head too large"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(HeadError::Malformed("unparsable response head")),
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(UPSTREAM_BUFFER);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("connection closed inside the response head")
            });
        }
    }
}

/// Writes the client's response head: hop-by-hop headers out, the proxy's own framing, `X-Request-Id` in.
fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    out: &mut Vec<u8>,
    req: &Req,
    draining: bool,
) -> Result<Resp, HeadError> {
    let status = resp.code.unwrap_or_default();
    if !(200..1000).contains(&status) {
        return Err(HeadError::Malformed("status code out of range"));
    }
    let mut connection = ConnectionTokens::default();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
    }
    let mut framing_headers = FramingHeaders::default();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    // A HEAD or 304 response's Content-Length describes the body it does not have: it passes unchanged.
    let keep_length = req.method == Method::HEAD || status == 304;
    for h in resp.headers.iter() {
        let name = h.name;
        if framing_headers.add(name, h.value) {
            if keep_length && name.eq_ignore_ascii_case("content-length") {
                push_header(out, name.as_bytes(), h.value);
            }
            continue;
        }
        if h1::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-request-id")
            || (connection.names_others && h1::named_by_connection(resp.headers, name))
        {
            continue;
        }
        push_header(out, name.as_bytes(), h.value);
    }
    let framing = framing_headers
        .response(status, req.method == Method::HEAD)
        .ok_or(HeadError::Malformed("ambiguous response framing"))?;
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked if !req.http10 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty if !keep_length && status != 204 => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    push_header(out, b"x-request-id", req.id.as_bytes());
    // HTTP/1.0 has no chunked coding, and a close-delimited body ends with the connection.
    let close_client = !req.keep_alive
        || draining
        || framing == Framing::UntilClose
        || (req.http10 && framing == Framing::Chunked);
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let http11 = resp.version == Some(1);
    Ok(Resp {
        status,
        framing,
        reusable: http11 && !connection.close && framing != Framing::UntilClose,
        close_client,
    })
}

#[derive(Debug)]
enum RelayError {
    /// The data server failed; `head_sent` says whether the client got the response head.
    Upstream {
        detail: String,
        head_sent: bool,
    },
    Client(io::Error),
}

/// `f` within `limit`, arming a timer only when it does not complete at once (a write usually does).
async fn bounded<F: Future>(
    limit: Duration,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut f = std::pin::pin!(f);
    if let Poll::Ready(v) = futures::poll!(f.as_mut()) {
        return Ok(v);
    }
    tokio::time::timeout(limit, f).await
}

/// Sends the response head in `out` and the body after it, as `framing` delimits it; `dechunk` strips the chunked
/// coding (for an HTTP/1.0 client). Each read and write must make progress within `idle`: a data server that stops
/// sending in the middle of a body, or a client that stops reading, is cut off.
async fn relay_body<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    out: &mut Vec<u8>,
    framing: Framing,
    dechunk: bool,
    idle: Duration,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let upstream = |detail: String, head_sent: bool| RelayError::Upstream { detail, head_sent };
    let read_more = async |r: &mut R, buf: &mut BytesMut| -> Result<usize, String> {
        buf.reserve(UPSTREAM_BUFFER);
        match bounded(idle, r.read_buf(buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("nothing more within {idle:?}")),
        }
    };
    let send = async |w: &mut W, bytes: &[u8]| -> Result<(), RelayError> {
        match bounded(idle, w.write_all(bytes)).await {
            Ok(result) => result.map_err(RelayError::Client),
            Err(_) => Err(RelayError::Client(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {idle:?}"),
            ))),
        }
    };
    match framing {
        Framing::Empty => send(w, out).await,
        Framing::Length(n) => {
            let mut left = n;
            let k = take(left, buf);
            out.extend_from_slice(&buf[..k]);
            buf.advance(k);
            left -= k as u64;
            send(w, out).await?;
            while left > 0 {
                let read = read_more(r, buf).await.map_err(|d| upstream(d, true))?;
                if read == 0 {
                    return Err(upstream(
                        format!("closed with {left} bytes of the body unsent"),
                        true,
                    ));
                }
                let k = take(left, buf);
                send(w, &buf[..k]).await?;
                buf.advance(k);
                left -= k as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut parser = h1::ChunkedParser::default();
            let mut head_sent = false;
            loop {
                let k = parser
                    .advance(buf, |data| {
                        if dechunk {
                            out.extend_from_slice(data)
                        }
                    })
                    .map_err(|e| upstream(e.to_string(), head_sent))?;
                if !dechunk {
                    out.extend_from_slice(&buf[..k]);
                }
                buf.advance(k);
                send(w, out).await?;
                head_sent = true;
                out.clear();
                if parser.done() {
                    return Ok(());
                }
                let read = read_more(r, buf).await.map_err(|d| upstream(d, true))?;
                if read == 0 {
                    return Err(upstream("closed inside a chunked body".to_owned(), true));
                }
            }
        }
        Framing::UntilClose => {
            out.extend_from_slice(buf);
            buf.clear();
            send(w, out).await?;
            while read_more(r, buf).await.map_err(|d| upstream(d, true))? > 0 {
                send(w, buf).await?;
                buf.clear();
            }
            Ok(())
        }
    }
}

/// How many of the buffered bytes belong to a body with `left` bytes to go.
fn take(left: u64, buf: &BytesMut) -> usize {
    usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()))
}

#[derive(Debug)]
enum BodyError {
    Client(io::Error),
    Malformed(ChunkError),
    Upstream(io::Error),
}

/// Streams the rest of a request body from the client (its buffer first) to the server.
async fn send_body<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    framing: Framing,
    idle: Duration,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let fill = async |r: &mut R, buf: &mut BytesMut| -> Result<(), BodyError> {
        if buf.is_empty() {
            buf.reserve(UPSTREAM_BUFFER);
            let read = bounded(idle, r.read_buf(buf)).await.map_err(|_| {
                BodyError::Client(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no body bytes for {idle:?}"),
                ))
            })?;
            if read.map_err(BodyError::Client)? == 0 {
                return Err(BodyError::Client(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside the request body",
                )));
            }
        }
        Ok(())
    };
    let upload = async |w: &mut W, bytes: &[u8]| -> Result<(), BodyError> {
        match bounded(idle, w.write_all(bytes)).await {
            Ok(result) => result.map_err(BodyError::Upstream),
            Err(_) => Err(BodyError::Upstream(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the server read nothing for {idle:?}"),
            ))),
        }
    };
    match framing {
        Framing::Length(mut left) => {
            while left > 0 {
                fill(r, buf).await?;
                let k = take(left, buf);
                upload(w, &buf[..k]).await?;
                buf.advance(k);
                left -= k as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut parser = h1::ChunkedParser::default();
            while !parser.done() {
                fill(r, buf).await?;
                let k = parser.advance(buf, |_| {}).map_err(BodyError::Malformed)?;
                upload(w, &buf[..k]).await?;
                buf.advance(k);
            }
            Ok(())
        }
        Framing::Empty | Framing::UntilClose => Ok(()),
    }
}

/// What an error response says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persist {
    /// `Connection: close`, and the proxy closes it.
    Close,
    /// The connection stays open (an HTTP/1.0 client is told so).
    Keep { http10: bool },
}

/// A JSON error response from the proxy itself; for a `HEAD` request, its head only.
fn write_json_error(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    error: &str,
    id: Option<&RequestId>,
    persist: Persist,
    head: bool,
) {
    let mut body = serde_json::json!({ "error": error, "status": status });
    if let Some(id) = id {
        body["request_id"] = id.as_str().into();
    }
    let body = body.to_string();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    push_header(
        out,
        b"date",
        httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
    );
    if let Some(id) = id {
        push_header(out, b"x-request-id", id.as_bytes());
    }
    match persist {
        Persist::Close => out.extend_from_slice(b"connection: close\r\n"),
        Persist::Keep { http10: true } => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persist::Keep { http10: false } => {}
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
}
