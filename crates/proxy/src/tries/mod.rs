//! The tries of one request: a server from the balancer, a pooled or new connection, the request, the response.
//!
//! What a failed try means (another try or not, whose fault, which answer) is decided in [`blame`](crate::blame);
//! this module describes each failure to it and applies the verdict. A request whose body is entirely in the buffer
//! when its head is parsed (no body, or a small one) can be sent again; a streamed body cannot, once any of it has
//! left the buffer, so such a request is only retried when its try failed before that (a refused connection, or a
//! pooled connection the server had closed).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Buf;
use discovery::{Backend, InFlightGuard};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::answer::{ClientFault, answer};
use crate::blame::{self, Blame, RelayFailure, RequestFacts, Retry, TryFailure};
use crate::budget::jittered;
use crate::conn::{Body, Conn, Done, Worker};
use crate::error::ProxyError;
use crate::h1::Framing;
use crate::headers::RequestId;
use crate::pool::Upstream;
use crate::relay::{
    BodyError, BodySent, HeadError, Hold, Pauses, RelayError, read_response_head, relay_body,
    send_body, write_paced,
};
use crate::request::Req;
use crate::state::{is_idempotent, report_failure, wait_for_a_server};
use crate::tunnel;

mod upload;
use upload::stream_exchange;

/// Why a try got no usable response head.
#[derive(Debug)]
struct TryError {
    /// What happened, for [`blame::judge`].
    failure: TryFailure,
    /// What went wrong, for the log and the answer's detail (empty when the failure says it all).
    detail: String,
}

impl TryError {
    fn new(failure: TryFailure, detail: String) -> TryError {
        TryError { failure, detail }
    }

    fn of(failure: TryFailure) -> TryError {
        TryError::new(failure, String::new())
    }

    /// The client's part in a request body that did not all go up.
    fn from_body(err: BodyError) -> TryError {
        let fault = ClientFault::from_body(err);
        TryError::new(fault.failure, fault.detail)
    }
}

/// The facts of `req` that decide what a failure of its try allows.
fn facts(req: &Req, body: Body) -> RequestFacts {
    RequestFacts {
        // An upgrade is never sent twice: the server may have switched protocols.
        idempotent: is_idempotent(&req.method) && !req.upgrade,
        replayable: body != Body::Streaming,
    }
}

pub(crate) enum Failure {
    Proxy(ProxyError),
    Client(ClientFault),
}

/// Tries live servers until one answers, a failure may not be retried, or tries, time or the retry budget run out.
pub(crate) async fn forward(
    w: &Worker,
    c: &mut Conn,
    req: &Req,
    body: Body,
    started: Instant,
) -> Result<Done, Failure> {
    let p = &*w.p;
    let deadline = started + p.total_timeout;
    let balancer = &p.balancer;
    let metrics = &p.metrics;
    p.budget.deposit(started);
    if started < p.warm_until {
        wait_for_a_server(p, deadline.min(p.warm_until)).await;
    }
    let rid = || req.id.as_str().to_owned();
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last_failure = String::new();
    // The answer when the tries end without a response: that of the last failure.
    let mut last_status = 502;
    // Whether a try that failed may be followed by another, taking a token from the budget if so.
    let may_retry = |tries: u32| {
        tries < p.max_tries && Instant::now() < deadline && p.budget.withdraw(Instant::now())
    };
    for attempt in 0..p.max_tries {
        if attempt > 0 {
            let pause = jittered(p.backoff).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            if Instant::now() >= deadline {
                // The backoff used up the overall deadline: no try that could only time out.
                last_status = 504;
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
            attempt + 1 < p.max_tries
                && Instant::now() < deadline
                && p.registry().live_count(Instant::now()) > tried_now
        };
        let outcome = try_once(
            w,
            c,
            req,
            body,
            &backend,
            in_flight,
            Times {
                try_deadline,
                head_wait: p.try_timeout.min(left),
                started,
                try_started: now,
            },
            &can_retry,
        )
        .await;
        let id = backend.id();
        let err = match outcome {
            Ok(TryOk::Done(mut done)) => {
                done.tries = attempt + 1;
                metrics.tries.observe(f64::from(done.tries));
                done.upstream = Some(backend);
                return Ok(done);
            }
            Ok(TryOk::Gateway(status)) => {
                metrics.traffic.record(id, None);
                last_failure = format!("{id} answered {status}");
                last_status = 502;
                tried.push(backend);
                continue;
            }
            Err(err) => err,
        };
        let failure = match err.failure {
            TryFailure::TimedOut if cut_by_deadline => TryFailure::DeadlineReached,
            failure => failure,
        };
        let verdict = blame::judge(failure, facts(req, body));
        match verdict.blame {
            Blame::Client => return Err(Failure::Client(ClientFault::new(failure, err.detail))),
            Blame::Server => {
                report_failure(p, id);
                metrics.traffic.record(id, None);
            }
            Blame::Proxy => {}
        }
        let request_id = req.id.as_str();
        match failure {
            TryFailure::DeadlineReached => {
                tracing::warn!(request_id, upstream = %id, "overall deadline reached during a try");
                last_failure = format!("{id} ({}): overall deadline reached", backend.addr());
            }
            TryFailure::TimedOut => {
                tracing::warn!(request_id, upstream = %id, "upstream try timed out");
                last_failure = format!("{id} ({}): timed out", backend.addr());
            }
            _ => {
                let text = &err.detail;
                let connect = failure == TryFailure::Connect;
                tracing::warn!(request_id, upstream = %id, connect, "upstream try failed: {text}");
                last_failure = format!("{id} ({}): {text}", backend.addr());
            }
        }
        last_status = verdict.status;
        tried.push(backend);
        if !(verdict.retry == Retry::OtherServer && may_retry(attempt + 1)) {
            break;
        }
    }
    if tried.is_empty() {
        return Err(Failure::Proxy(ProxyError::NoServers { request_id: rid() }));
    }
    metrics.tries.observe(tried.len() as f64);
    if last_status == 504 {
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

/// A timer not armed yet (a year: far enough never to fire).
const UNARMED: Duration = Duration::from_secs(365 * 24 * 3600);

/// The clocks of one try.
#[derive(Debug, Clone, Copy)]
struct Times {
    /// Until the request (head and buffered body) is sent and the response head is back; a streamed body's
    /// upload is not bounded by it.
    try_deadline: Instant,
    /// How long the response head may take once a streamed body is all sent: `proxy.try_timeout`, or less when
    /// `proxy.total_timeout` leaves less.
    head_wait: Duration,
    /// When the request arrived.
    started: Instant,
    /// When this try started: a server's own latency is timed from here, not charged with an earlier server's
    /// timeout or the backoff.
    try_started: Instant,
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
    times: Times,
    can_retry: &dyn Fn() -> bool,
) -> Result<TryOk, TryError> {
    let p = &*w.p;
    let Times {
        try_deadline,
        started,
        try_started,
        ..
    } = times;
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
        match body {
            Body::Buffered(_) if req.framing == Framing::Chunked => {
                c.up_out.extend_from_slice(&c.up_body);
            }
            Body::Buffered(k) => c.up_out.extend_from_slice(&c.buf[..k]),
            Body::None | Body::Streaming => {}
        }
        let draining = w.draining.load(Ordering::Acquire);
        // One timer for the whole try: the request head (and a buffered body) out, the response head back. A
        // streamed body goes after the head, in `stream_exchange`.
        let exchanged = tokio::time::timeout_at(try_deadline, async {
            let mut sent = 0;
            while sent < c.up_out.len() {
                match up.stream.write(&c.up_out[sent..]).await {
                    Ok(0) => return Err(Step::Send(sent, io::ErrorKind::WriteZero.into())),
                    Ok(n) => sent += n,
                    Err(e) => return Err(Step::Send(sent, e)),
                }
            }
            if body == Body::Streaming {
                return Ok(None);
            }
            read_response_head(&mut up.stream, &mut up.buf, &mut c.out, req, draining)
                .await
                .map(Some)
                .map_err(Step::Head)
        })
        .await;
        let (failure, detail) = match exchanged {
            Err(_) => return Err(TryError::of(TryFailure::TimedOut)),
            Ok(Ok(None)) => {
                return stream_exchange(w, c, req, backend, up, in_flight, times).await;
            }
            Ok(Ok(Some(resp))) => break (up, resp),
            // Until its head is whole, the server cannot have acted on the request.
            Ok(Err(Step::Send(sent, e))) if sent < head_len => (
                TryFailure::HeadNotSent { pooled: up.reused },
                format!("sending the request: {e}"),
            ),
            Ok(Err(Step::Send(_, e))) => (
                TryFailure::BodyNotSent,
                format!("sending the request body: {e}"),
            ),
            Ok(Err(Step::Head(HeadError::Closed))) => (
                TryFailure::ClosedBeforeResponse { pooled: up.reused },
                HeadError::Closed.to_string(),
            ),
            Ok(Err(Step::Head(e))) => (TryFailure::BadResponse, e.to_string()),
        };
        if blame::judge(failure, facts(req, body)).retry == Retry::SameServer {
            tracing::debug!(upstream = %backend.id(), "pooled connection closed by the server: {detail}");
            fresh = true;
            continue;
        }
        return Err(TryError::new(failure, detail));
    };
    // The try's latency, connect included, is what `p2c_ewma` weighs.
    let answered = Instant::now();
    p.balancer
        .observe_latency(backend, answered - try_started, answered);
    if server_status(w, backend, resp.status, facts(req, body))
        && can_retry()
        && p.budget.withdraw(Instant::now())
    {
        return Ok(TryOk::Gateway(resp.status));
    }
    p.metrics.latency.observe_duration(started.elapsed());
    observe_upstream(p, backend, answered - try_started);
    if let Body::Buffered(k) = body {
        c.buf.advance(k);
    }
    if resp.upgraded {
        return Ok(TryOk::Done(upgraded(c, req, backend, up, in_flight)));
    }
    let relayed = relay_body(
        &mut up.stream,
        &mut up.buf,
        &mut c.stream,
        &mut c.out,
        resp.framing,
        req.http10 && resp.framing == Framing::Chunked,
        pauses(w),
        &Hold::default(),
    )
    .await;
    drop(in_flight);
    let relayed = relay_outcome(w, backend, &req.id, relayed.map_err(RelayEnd::Relay));
    if relayed.ok && resp.reusable && up.buf.is_empty() {
        w.pool.borrow_mut().put(backend.addr(), up, Instant::now());
    }
    Ok(TryOk::Done(
        finish(w, c, req, resp.status, resp.close_client, relayed).await,
    ))
}

/// A connection the server switched to another protocol: the 101 (and what the server sent after it) is left in
/// `c.out`, and the server's socket with `c.upgraded`, for the connection to relay as a tunnel once this request's
/// futures are gone (`conn::serve`): a tunnel's every message then wakes only its own small future, or none at all
/// on the io_uring relay. The server stays in flight meanwhile, so that the balancer spreads long-lived tunnels
/// like requests.
fn upgraded(
    c: &mut Conn,
    req: &Req,
    backend: &Backend,
    mut up: Upstream,
    in_flight: InFlightGuard,
) -> Done {
    // Whatever the server sent after its 101 goes right after it.
    c.out.extend_from_slice(&up.buf);
    up.buf.clear();
    c.upgraded = Some(Box::new(tunnel::Upgraded {
        server: up.stream,
        in_flight,
        upstream: backend.id().to_owned(),
        request_id: req.id.as_str().to_owned(),
    }));
    Done {
        status: 101,
        upstream: None,
        tries: 0,
        failure: None,
        keep: false,
    }
}

/// Reports the server's health from its status; true when another server may replace the answer (a 502/503 for a
/// request that can be sent again; the connection is then dropped with its body unread).
fn server_status(w: &Worker, backend: &Backend, status: u16, facts: RequestFacts) -> bool {
    let p = &*w.p;
    let id = backend.id();
    let judged = blame::judge_status(status, p.eject_on_5xx, facts);
    if judged.server_failed {
        report_failure(p, id);
    } else {
        p.balancer.report_success(backend);
    }
    judged.retry
}

/// How a relayed response ended.
struct Relayed {
    /// The whole response reached the client.
    ok: bool,
    /// The client got nothing at all: the upstream failed before the response head could go out.
    unanswered: bool,
    failure: Option<String>,
}

/// How a relay that did not complete ended.
enum RelayEnd {
    Relay(RelayError),
    /// The client's request body failed while the response was coming down.
    ClientBody(ClientFault),
}

/// Logs a relay that broke off, and reports the server only if it was at fault ([`blame::judge_relay`]).
fn relay_outcome(
    w: &Worker,
    backend: &Backend,
    id: &RequestId,
    relayed: Result<(), RelayEnd>,
) -> Relayed {
    let (failure, detail, head_sent) = match relayed {
        Ok(()) => {
            return Relayed {
                ok: true,
                unanswered: false,
                failure: None,
            };
        }
        Err(RelayEnd::Relay(RelayError::Upstream { detail, head_sent })) => {
            (RelayFailure::ServerBrokeOff, detail, head_sent)
        }
        Err(RelayEnd::Relay(RelayError::Client(e))) => {
            let reason = if e.kind() == io::ErrorKind::TimedOut {
                "send_timeout"
            } else {
                "client_gone"
            };
            w.p.metrics.connections_closed.count(reason);
            (
                RelayFailure::ClientGone,
                format!("client went away during the response: {e}"),
                true,
            )
        }
        Err(RelayEnd::ClientBody(fault)) => {
            w.p.metrics.connections_closed.count(fault.reason);
            (RelayFailure::ClientBody, fault.detail, true)
        }
    };
    let request_id = id.as_str();
    let upstream = backend.id();
    match blame::judge_relay(failure) {
        Blame::Server => {
            tracing::warn!(request_id, %upstream, "response broke off: {detail}");
            report_failure(&w.p, upstream);
            Relayed {
                ok: false,
                unanswered: !head_sent,
                failure: Some(format!(
                    "{upstream} ({}): response broke off: {detail}",
                    backend.addr()
                )),
            }
        }
        Blame::Client | Blame::Proxy => {
            tracing::debug!(request_id, %upstream, "exchange ended by the client: {detail}");
            Relayed {
                ok: false,
                unanswered: false,
                failure: Some(detail),
            }
        }
    }
}

/// The pauses each side of a relay is allowed.
fn pauses(w: &Worker) -> Pauses {
    Pauses {
        server: w.p.try_timeout,
        client_read: w.limits.body_read_timeout,
        client_write: w.limits.send_timeout,
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
        let detail = relayed
            .failure
            .as_deref()
            .unwrap_or("bad upstream response");
        answer(w, c, req, 502, "Bad Gateway", detail, false).await;
    }
    Done {
        status: if relayed.unanswered { 502 } else { status },
        upstream: None,
        tries: 0,
        keep: relayed.ok && !close_client,
        failure: relayed.failure,
    }
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
        Ok(Err(e)) => return Err(TryError::new(TryFailure::Connect, format!("connect: {e}"))),
        // The try's time ran out first: a timeout of the try, not the server's failure to accept.
        Err(_) if try_deadline < own_limit => return Err(TryError::of(TryFailure::TimedOut)),
        Err(_) => {
            return Err(TryError::new(
                TryFailure::Connect,
                format!("connect: connect timed out after {connect_timeout:?}"),
            ));
        }
    };
    // Requests are written whole; waiting to coalesce them only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(Upstream::new(stream))
}

/// Where a try failed: sending the request head (and a buffered body), or reading the response head.
enum Step {
    /// Sending failed after this many bytes.
    Send(usize, io::Error),
    Head(HeadError),
}

/// A server's time to its response head in this try, for `api_proxy_upstream_duration_seconds{upstream}` and the
/// dashboard's per-server series.
fn observe_upstream(p: &crate::state::Inner, backend: &Backend, elapsed: std::time::Duration) {
    p.metrics
        .upstream_latency
        .with(backend.id())
        .observe_duration(elapsed);
    p.metrics.traffic.record(backend.id(), Some(elapsed));
}
