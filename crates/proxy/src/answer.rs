//! The answers the proxy writes itself: JSON errors, the 508 of a loop, and the end of a request whose client did
//! something wrong with its body.

use std::sync::atomic::Ordering;

use http::Method;

use crate::blame::{self, LOOP_DETECTED, RequestFacts, TryFailure};
use crate::conn::{Conn, Done, Worker, write_out};
use crate::h1::{Framing, push_decimal, push_header};
use crate::headers::RequestId;
use crate::relay::BodyError;
use crate::request::Req;

/// A request that came back to this proxy: 508. A request without a body leaves the connection usable, so that the
/// proxy that sent it (another api-server, or this one through an alias) reuses it rather than opening one per
/// looped request; one with a body closes it, the body unread.
pub(crate) async fn looped(w: &Worker, c: &mut Conn, req: &Req) -> Done {
    w.p.metrics.loops.inc();
    let peer = c.peer_addr;
    tracing::warn!(request_id = %req.id.as_str(), %peer, "request came back to this api-server (its own Via token): answered 508");
    let detail = "loop detected: this request has already passed through this api-server";
    let read_whole = req.framing == Framing::Empty;
    let keep = answer(
        w,
        c,
        req,
        LOOP_DETECTED,
        "Loop Detected",
        detail,
        read_whole,
    )
    .await;
    Done {
        status: LOOP_DETECTED,
        upstream: None,
        tries: 0,
        failure: Some(detail.to_owned()),
        keep,
    }
}

/// Answers `req` with the proxy's own JSON error (its head only for a `HEAD`). `read_whole`: the request, body
/// included, has been read, so the connection may carry another; it does when the client keeps it alive and the
/// server is not draining, and the answer says so. Returns whether the connection stays open.
pub(crate) async fn answer(
    w: &Worker,
    c: &mut Conn,
    req: &Req,
    status: u16,
    reason: &str,
    detail: &str,
    read_whole: bool,
) -> bool {
    let keep = read_whole && req.keep_alive && !w.draining.load(Ordering::Acquire);
    c.out.clear();
    write_json_error(
        &mut c.out,
        status,
        reason,
        detail,
        Some(&req.id),
        if keep {
            Persist::Keep { http10: req.http10 }
        } else {
            Persist::Close
        },
        req.method == Method::HEAD,
    );
    write_out(w, c).await && keep
}

/// What the client did wrong with its request body, and what it is answered.
#[derive(Debug)]
pub(crate) struct ClientFault {
    /// What happened, as [`blame::judge`] knows it.
    pub(crate) failure: TryFailure,
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
            failure,
            status,
            reason,
            detail,
        }
    }

    /// The fault behind a request body that did not all go up. (The server's failure to read it is told apart by
    /// the callers before they get here; it is named for what it is if one does not.)
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

    pub(crate) fn too_large(max: Option<u64>) -> ClientFault {
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
pub(crate) async fn client_error(w: &Worker, c: &mut Conn, req: &Req, fault: ClientFault) -> Done {
    w.p.metrics.connections_closed.count(fault.reason);
    tracing::debug!(request_id = %req.id.as_str(), peer = %c.peer_addr, status = fault.status, "request ended by the client: {}", fault.detail);
    if fault.status != 499 {
        let reason = match fault.status {
            400 => "Bad Request",
            408 => "Request Timeout",
            413 => "Content Too Large",
            _ => "Error",
        };
        answer(w, c, req, fault.status, reason, &fault.detail, false).await;
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
