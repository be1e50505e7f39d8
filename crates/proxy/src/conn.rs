//! One client connection of the proxy, on a worker thread: request heads in, answers out.
//!
//! The proxy speaks HTTP/1.1 itself rather than through a general-purpose HTTP library: a request head is parsed
//! in place (httparse) and rewritten once into the upstream head ([`parse_request`]); the response head is
//! rewritten straight into the bytes sent to the client, with as much of the body as has arrived, so a small
//! exchange costs one write and one read on each side and no allocation. The tries upstream are in `tries`, the
//! bytes on the wire in `relay`, the framing rules in `h1`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use discovery::Backend;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::blame::{self, LOOP_DETECTED, RequestFacts, TryFailure};
use crate::h1::{
    self, ConnectionTokens, Framing, FramingHeaders, Refusal, push_decimal, push_header,
};
use crate::headers::{
    EarlierHops, PeerHeaders, RequestId, is_api_server_via, is_forwarding, push_forwarding,
};
use crate::listener::HttpLimits;
use crate::pool::Pool;
use crate::relay::reframe;
use crate::relay::{BodyError, write_paced};
use crate::state::Inner;
use crate::tries::{Failure, forward};

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
}

/// One client connection.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
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
}

/// A parsed request head, owned, once its bytes have been rewritten into `up_line` and `up_rest`.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) http10: bool,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    pub(crate) id: RequestId,
    /// The path, for the access log.
    pub(crate) path: Option<String>,
    /// The request carried this proxy's own `Via` token: it has been here before.
    pub(crate) looped: bool,
    /// It asks to switch protocols (`Connection: upgrade` and an `Upgrade` other than `h2c`), and is forwarded so.
    pub(crate) upgrade: bool,
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

/// Serves one client connection until it closes, fails or the server drains.
pub(crate) async fn serve(w: &Worker, stream: TcpStream, peer: SocketAddr) {
    let trusted = w.p.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
    let mut c = Conn {
        stream,
        peer_addr: peer,
        peer: PeerHeaders::new(peer, trusted),
        // The write-side buffers grow to what this connection's requests need; an idle connection holds little.
        buf: BytesMut::with_capacity(CLIENT_BUFFER),
        out: Vec::new(),
        up_line: Vec::new(),
        up_rest: Vec::new(),
        up_out: Vec::new(),
        up_body: Vec::new(),
        served: 0,
    };
    loop {
        let req = match read_head(w, &mut c).await {
            Head::Request(req) => req,
            Head::Closed => return,
            Head::Timeout => {
                // An idle keep-alive connection timing out is normal; one that never sent a whole head is not.
                if c.served == 0 || !c.buf.is_empty() {
                    w.p.metrics.connections_closed.count("header_timeout");
                    tracing::debug!(%peer, "connection closed: request head not received in time");
                }
                linger_close(&mut c.stream).await;
                return;
            }
            Head::Refused(refusal) => {
                w.p.metrics.connections_closed.count(match refusal {
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
                if write_out(w, &mut c).await {
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
            // The target keeps the api-server's name: it is how operators filter the access log (its README).
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

/// Waits for the next request head: on a kept-alive connection up to `server.keepalive_timeout` for its first byte,
/// then `server.header_read_timeout` for the whole head (for a connection's first request, from the accept).
async fn read_head(w: &Worker, c: &mut Conn) -> Head {
    let now = Instant::now();
    let header_timeout = w.limits.header_read_timeout;
    let mut deadline = if c.served == 0 || !c.buf.is_empty() {
        now + header_timeout
    } else {
        now + w.limits.keepalive_timeout
    };
    let mut waiting_idle = c.served > 0 && c.buf.is_empty();
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
            Ok(_) if waiting_idle => {
                // The first byte of the next request: its head has `header_read_timeout` from now.
                waiting_idle = false;
                deadline = Instant::now() + header_timeout;
            }
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
    let mut looped = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut upgrades = 0;
    let (mut underscores, mut untrusted) = (0, 0);
    c.up_rest.clear();
    c.up_rest.extend_from_slice(b"\r\n");
    for h in r.headers.iter() {
        let name = h.name;
        // A backend that folds `_` into `-` would read `X_Forwarded_For` or `Transfer_Encoding` as the real thing
        // (nginx's `underscores_in_headers off`).
        if name.contains('_') {
            underscores += 1;
            continue;
        }
        if framing.add(name, h.value) {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            if host.replace(h.value).is_some() {
                return Err(Refusal::BadRequest("more than one Host header"));
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            // Only a trusted proxy's id is kept: anyone else could make requests look like another's in the logs.
            if trusted {
                id = id.or_else(|| RequestId::from_client(h.value));
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrades += 1;
            upgrade = Some(h.value);
        } else if name.eq_ignore_ascii_case("via") {
            looped |= w.p.via.seen_in(h.value);
            push_via(&mut c.up_rest, h.value, trusted, &mut untrusted);
        } else if name.eq_ignore_ascii_case("expect")
            && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        {
            // Answered by the proxy itself when it is ready for the body.
            expect_continue = true;
        } else if is_forwarding(name) {
            if trusted {
                earlier.add(name, h.value);
            } else {
                untrusted += 1;
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
    if host.is_some_and(|h| !h1::valid_authority(h))
        || target_host.is_some_and(|h| !h1::valid_authority(h))
    {
        return Err(Refusal::BadRequest(
            "invalid Host or request-target authority",
        ));
    }
    let host = target_host.or(host);
    if underscores > 0 {
        w.p.metrics
            .headers_dropped
            .with("underscore")
            .inc_by(underscores);
    }
    if untrusted > 0 {
        w.p.metrics
            .headers_dropped
            .with("untrusted")
            .inc_by(untrusted);
    }
    let framing = framing.request(http10)?;
    // A protocol switch is passed on for a request without a body, from an HTTP/1.1 client, naming one `Upgrade`
    // other than h2c (HTTP/2 in clear text is not tunnelled: the data servers speak HTTP/1.1 to the proxy).
    let upgrade = match upgrade {
        Some(protocols)
            if connection.upgrade
                && upgrades == 1
                && !http10
                && framing == Framing::Empty
                && !h1::list(protocols).any(|p| p.eq_ignore_ascii_case(b"h2c")) =>
        {
            c.up_rest.extend_from_slice(b"connection: upgrade\r\n");
            push_header(&mut c.up_rest, b"upgrade", protocols);
            true
        }
        _ => false,
    };
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
    push_header(&mut c.up_rest, b"via", w.p.via.value());
    c.up_rest.extend_from_slice(b"\r\n");
    // What the proxy adds counts against the limits too: the data server must not be the one to refuse the head.
    // Lines of `up_rest`: the host line's end, the headers, the blank line (values hold no LF).
    let headers = c.up_rest.iter().filter(|&&b| b == b'\n').count() - 1;
    // The request line and the host line: method, target, version, and room for the server's address.
    let first_lines = method.as_str().len() + target.len() + 300;
    if headers > MAX_HEADERS || first_lines + c.up_rest.len() > w.limits.max_header_bytes {
        return Err(Refusal::TooLarge);
    }

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
        looped,
        upgrade,
    };
    c.buf.advance(n);
    Ok(Some(req))
}

/// Appends a client's `Via` value: whole from a trusted proxy; from anyone else only the elements naming an
/// api-server (which loop detection needs), the rest counted in `dropped`.
fn push_via(out: &mut Vec<u8>, value: &[u8], trusted: bool, dropped: &mut u64) {
    if trusted {
        push_header(out, b"via", value);
        return;
    }
    let mut first = true;
    for element in value.split(|&b| b == b',') {
        if !is_api_server_via(element) {
            *dropped += u64::from(!element.trim_ascii().is_empty());
            continue;
        }
        out.extend_from_slice(if first { &b"via: "[..] } else { b", " });
        out.extend_from_slice(element.trim_ascii());
        first = false;
    }
    if !first {
        out.extend_from_slice(b"\r\n");
    }
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
            let written = write_out(w, c).await;
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

/// A request that came back to this proxy: 508, and the connection closes (the peer is no client but a server in
/// a loop, or another proxy routing to this one).
async fn looped(w: &Worker, c: &mut Conn, req: &Req) -> Done {
    w.p.metrics.loops.inc();
    let peer = c.peer_addr;
    tracing::warn!(request_id = %req.id.as_str(), %peer, "request came back to this api-server (its own Via token): answered 508");
    let detail = "loop detected: this request has already passed through this api-server";
    c.out.clear();
    write_json_error(
        &mut c.out,
        LOOP_DETECTED,
        "Loop Detected",
        detail,
        Some(&req.id),
        Persist::Close,
        req.method == Method::HEAD,
    );
    write_out(w, c).await;
    Done {
        status: LOOP_DETECTED,
        upstream: None,
        tries: 0,
        failure: Some(detail.to_owned()),
        keep: false,
    }
}

/// What the client did wrong with its request body, and what it is answered.
#[derive(Debug)]
pub(crate) struct ClientFault {
    /// The answer (none is written for 499: the client is gone).
    pub(crate) status: u16,
    /// The reason counted in `api_http_connections_closed_total`.
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

impl ClientFault {
    pub(crate) fn new(failure: TryFailure, detail: String) -> ClientFault {
        let status = blame::judge(
            failure,
            RequestFacts {
                idempotent: false,
                replayable: false,
            },
        )
        .status;
        let reason = match failure {
            TryFailure::ClientMalformed => "malformed",
            TryFailure::ClientStalled => "body_timeout",
            TryFailure::ClientTooLarge => "body_too_large",
            _ => "client_gone",
        };
        ClientFault {
            status,
            reason,
            detail,
        }
    }

    /// The fault behind a request body that did not all go up (`None` for the server's failure).
    pub(crate) fn from_body(err: BodyError) -> ClientFault {
        match err {
            BodyError::ClientGone(e) => ClientFault::new(
                TryFailure::ClientGone,
                format!("the client closed the connection during the request body: {e}"),
            ),
            BodyError::ClientStalled(pause) => ClientFault::new(
                TryFailure::ClientStalled,
                format!("no request body bytes for {pause:?} (server.body_read_timeout)"),
            ),
            BodyError::Malformed(e) => ClientFault::new(TryFailure::ClientMalformed, e.to_string()),
            BodyError::TooLarge(max) => ClientFault::too_large(Some(max)),
            BodyError::Upstream(e) => ClientFault::new(
                TryFailure::ClientGone,
                format!("the server stopped reading the request body: {e}"),
            ),
        }
    }

    fn too_large(max: Option<u64>) -> ClientFault {
        ClientFault::new(
            TryFailure::ClientTooLarge,
            format!(
                "request body larger than {} bytes (proxy.max_body_bytes)",
                max.unwrap_or_default()
            ),
        )
    }
}

/// A request body the client broke, stalled, malformed or made too large: answered (408, 400, 413) unless the
/// client is gone; the connection closes, since the rest of the body cannot be told from a next request.
async fn client_error(w: &Worker, c: &mut Conn, req: &Req, fault: ClientFault) -> Done {
    w.p.metrics.connections_closed.count(fault.reason);
    tracing::debug!(request_id = %req.id.as_str(), peer = %c.peer_addr, status = fault.status, "request ended by the client: {}", fault.detail);
    if fault.status != 499 {
        let reason = match fault.status {
            400 => "Bad Request",
            408 => "Request Timeout",
            413 => "Content Too Large",
            _ => "Error",
        };
        c.out.clear();
        write_json_error(
            &mut c.out,
            fault.status,
            reason,
            &fault.detail,
            Some(&req.id),
            Persist::Close,
            req.method == Method::HEAD,
        );
        write_out(w, c).await;
    }
    Done {
        status: fault.status,
        upstream: None,
        tries: 0,
        failure: Some(fault.detail),
        keep: false,
    }
}

/// What an error response says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persist {
    /// `Connection: close`, and the proxy closes it.
    Close,
    /// The connection stays open (an HTTP/1.0 client is told so).
    Keep { http10: bool },
}

/// A JSON error response from the proxy itself; for a `HEAD` request, its head only.
pub(crate) fn write_json_error(
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
