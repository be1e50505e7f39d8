//! What the outcome of one try means: whether another try may follow, whose fault it was (the server's is reported
//! to passive health, which may eject it), and the answer when no try follows.
//!
//! One pure table, [`judge`] for a try that failed, [`judge_status`] for a server's answer and [`judge_relay`] for a
//! response that broke off, instead of match arms through the I/O code: `tries` describes what happened and applies
//! the verdict. Limits outside the table (tries left, the overall deadline, live servers, the retry budget) are
//! checked by `tries` before a retry the table allows.
//!
//! The rule behind every row: a server is blamed only for what it did (refused, reset or timed out a connection;
//! sent no response head in time after it had the whole request; sent a malformed response; stopped reading the
//! request body or broke off or stalled its response). What the client did (a body that pauses, trickles, stops,
//! is malformed or too large; a client gone or not reading) never counts against a server: a client must not be
//! able to eject healthy servers. The README's "The proxy" section has this table.

/// Facts of the request that decide what a failure allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestFacts {
    /// Sending the request twice is safe (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
    pub(crate) idempotent: bool,
    /// The body (if any) was all in the buffer when the head was parsed, so it can be sent again; a streamed body
    /// cannot, once any of it has left.
    pub(crate) replayable: bool,
}

/// What went wrong in one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryFailure {
    /// No connection: refused, unreachable, or `proxy.connect_timeout`. The server never saw the request.
    Connect,
    /// Writing failed before the request head was whole, so the server cannot have acted on it. `pooled`: on a
    /// kept-alive connection, which the server may have closed while it sat idle.
    HeadNotSent {
        /// The connection came from the pool.
        pooled: bool,
    },
    /// Writing failed after the head was whole, within a buffered body: the server may have started on it.
    BodyNotSent,
    /// The connection closed before any byte of a response. On a pooled connection this is most likely the server
    /// closing it just as the request went out.
    ClosedBeforeResponse {
        /// The connection came from the pool.
        pooled: bool,
    },
    /// The response head could not be read, or was malformed.
    BadResponse,
    /// The try's own `proxy.try_timeout` ran out waiting for the server: to accept, to read the request body (it
    /// stopped reading for that long), or to answer once it had the whole request. A server that hangs.
    TimedOut,
    /// The overall deadline (`proxy.total_timeout`) cut the try short: it says nothing about the server.
    DeadlineReached,
    /// The client broke off: closed during its request body, or read nothing of a `100 Continue`.
    ClientGone,
    /// The client's chunked request body was malformed (the proxy refuses what a strict server would).
    ClientMalformed,
    /// The client's body paused for longer than `server.body_read_timeout`: a stalled upload, or an
    /// `Expect: 100-continue` request whose body never came.
    ClientStalled,
    /// The client's body went past `proxy.max_body_bytes`.
    ClientTooLarge,
}

/// Whether another try follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// No: the answer is the verdict's status.
    No,
    /// Again on the same server over a new connection, not counted as a try: the pooled connection had gone stale.
    SameServer,
    /// On another server, if tries, time and the retry budget allow.
    OtherServer,
}

/// Whose fault a failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The server's: reported to passive health, which may eject it.
    Server,
    /// The client's: its request ends there, with no further try.
    Client,
    /// Nobody outside the proxy: its own deadline ran out, or one of its pooled connections had gone stale.
    /// Nothing is reported.
    Proxy,
}

/// What a failed try means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Whether another try follows.
    pub(crate) retry: Retry,
    /// Whose fault it was.
    pub(crate) blame: Blame,
    /// The answer to the client if no try follows (or if the last try failed this way).
    pub(crate) status: u16,
}

const fn verdict(retry: Retry, blame: Blame, status: u16) -> Verdict {
    Verdict {
        retry,
        blame,
        status,
    }
}

/// What `failure` of a try of a request with these `facts` means.
pub(crate) fn judge(failure: TryFailure, facts: RequestFacts) -> Verdict {
    use Blame::{Client, Proxy, Server};
    use Retry::{No, OtherServer, SameServer};
    // Once a server may have acted on the request, it goes elsewhere only if sending it twice is safe and its body
    // can be sent again.
    let resendable = if facts.idempotent && facts.replayable {
        OtherServer
    } else {
        No
    };
    match failure {
        TryFailure::Connect => verdict(OtherServer, Server, 502),
        TryFailure::HeadNotSent { pooled: true } => verdict(SameServer, Proxy, 502),
        TryFailure::HeadNotSent { pooled: false } => verdict(OtherServer, Server, 502),
        TryFailure::BodyNotSent => verdict(resendable, Server, 502),
        // Sent again on a new connection only when sending it twice is safe: the server may have read it.
        TryFailure::ClosedBeforeResponse { pooled: true }
            if facts.idempotent && facts.replayable =>
        {
            verdict(SameServer, Proxy, 502)
        }
        TryFailure::ClosedBeforeResponse { .. } | TryFailure::BadResponse => {
            verdict(resendable, Server, 502)
        }
        // A server that hangs (alive TCP, no answer) may have started the work.
        TryFailure::TimedOut => verdict(resendable, Server, 504),
        TryFailure::DeadlineReached => verdict(No, Proxy, 504),
        TryFailure::ClientGone => verdict(No, Client, 499),
        TryFailure::ClientMalformed => verdict(No, Client, 400),
        TryFailure::ClientStalled => verdict(No, Client, 408),
        TryFailure::ClientTooLarge => verdict(No, Client, 413),
    }
}

/// How a response that had begun to flow ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayFailure {
    /// The server reset, closed early or paused longer than `proxy.try_timeout` while it was sending.
    ServerBrokeOff,
    /// The client closed, or paused reading longer than `server.send_timeout`.
    ClientGone,
    /// The client's request body (still going up while the answer came down) paused, broke off or was malformed;
    /// a server that waits for the rest of the body before answering more is not at fault.
    ClientBody,
}

/// Whose fault a response that broke off was. Nothing is retried: part of the answer may have reached the client.
pub(crate) fn judge_relay(failure: RelayFailure) -> Blame {
    match failure {
        RelayFailure::ServerBrokeOff => Blame::Server,
        RelayFailure::ClientGone | RelayFailure::ClientBody => Blame::Client,
    }
}

/// What a server's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusVerdict {
    /// Reported to passive health as a failure (else as a success).
    pub(crate) server_failed: bool,
    /// The answer may be dropped for another server's, if tries, live servers, time and the retry budget allow.
    pub(crate) retry: bool,
}

/// The status a proxy answers when a request comes back to it (RFC 5842's Loop Detected).
pub(crate) const LOOP_DETECTED: u16 = 508;

/// What answering `status` means, for a request with these `facts`; `eject_on_5xx` is `proxy.eject_on_5xx`.
///
/// A 508 means the request went round a loop (this proxy's own answer when its `Via` token comes back, through
/// another api-server or through an address of its own): the server that sent it there is no data server, so it
/// fails whatever `eject_on_5xx` says, and another server may answer.
pub(crate) fn judge_status(status: u16, eject_on_5xx: bool, facts: RequestFacts) -> StatusVerdict {
    let looped = status == LOOP_DETECTED;
    StatusVerdict {
        server_failed: looped || (eject_on_5xx && (500..600).contains(&status)),
        // A 502/503 from one server may be its own trouble: another may answer, if sending twice is safe.
        retry: (status == 502 || status == 503 || looped) && facts.idempotent && facts.replayable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Blame::{Client, Proxy, Server};
    use Retry::{No, OtherServer, SameServer};

    /// Every combination of the request facts.
    const ALL: [RequestFacts; 4] = [
        facts(true, true),
        facts(true, false),
        facts(false, true),
        facts(false, false),
    ];

    const fn facts(idempotent: bool, replayable: bool) -> RequestFacts {
        RequestFacts {
            idempotent,
            replayable,
        }
    }

    /// Checks `failure` against every request: `resendable` for an idempotent request with a replayable body,
    /// `otherwise` for the rest.
    fn check(failure: TryFailure, resendable: Verdict, otherwise: Verdict) {
        for f in ALL {
            let expected = if f.idempotent && f.replayable {
                resendable
            } else {
                otherwise
            };
            assert_eq!(judge(failure, f), expected, "{failure:?} for {f:?}");
        }
    }

    #[test]
    fn a_refused_connection_goes_to_another_server_whatever_the_request() {
        let v = verdict(OtherServer, Server, 502);
        check(TryFailure::Connect, v, v);
    }

    #[test]
    fn a_head_not_sent_on_a_new_connection_goes_to_another_server_whatever_the_request() {
        let v = verdict(OtherServer, Server, 502);
        check(TryFailure::HeadNotSent { pooled: false }, v, v);
    }

    #[test]
    fn a_head_not_sent_on_a_pooled_connection_is_sent_again_on_a_new_one_blaming_nobody() {
        let v = verdict(SameServer, Proxy, 502);
        check(TryFailure::HeadNotSent { pooled: true }, v, v);
    }

    #[test]
    fn a_body_not_sent_goes_elsewhere_only_when_resendable() {
        check(
            TryFailure::BodyNotSent,
            verdict(OtherServer, Server, 502),
            verdict(No, Server, 502),
        );
    }

    #[test]
    fn a_pooled_connection_closed_before_a_response_is_replaced_only_when_resendable() {
        check(
            TryFailure::ClosedBeforeResponse { pooled: true },
            verdict(SameServer, Proxy, 502),
            verdict(No, Server, 502),
        );
    }

    #[test]
    fn a_new_connection_closed_before_a_response_is_the_servers_fault() {
        check(
            TryFailure::ClosedBeforeResponse { pooled: false },
            verdict(OtherServer, Server, 502),
            verdict(No, Server, 502),
        );
    }

    #[test]
    fn a_bad_response_head_is_the_servers_fault() {
        check(
            TryFailure::BadResponse,
            verdict(OtherServer, Server, 502),
            verdict(No, Server, 502),
        );
    }

    #[test]
    fn a_try_timeout_is_the_servers_fault_and_answered_504() {
        check(
            TryFailure::TimedOut,
            verdict(OtherServer, Server, 504),
            verdict(No, Server, 504),
        );
    }

    #[test]
    fn a_stalled_body_is_the_clients_fault_and_answered_408() {
        let v = verdict(No, Client, 408);
        check(TryFailure::ClientStalled, v, v);
    }

    #[test]
    fn a_body_over_the_limit_is_the_clients_fault_and_answered_413() {
        let v = verdict(No, Client, 413);
        check(TryFailure::ClientTooLarge, v, v);
    }

    #[test]
    fn a_response_that_broke_off_is_blamed_on_whoever_stopped() {
        assert_eq!(judge_relay(RelayFailure::ServerBrokeOff), Server);
        assert_eq!(judge_relay(RelayFailure::ClientGone), Client);
        assert_eq!(judge_relay(RelayFailure::ClientBody), Client);
    }

    #[test]
    fn a_loop_fails_the_server_that_sent_it_back_and_may_go_elsewhere() {
        for eject_on_5xx in [false, true] {
            for f in ALL {
                let judged = judge_status(LOOP_DETECTED, eject_on_5xx, f);
                assert!(judged.server_failed, "{f:?}");
                assert_eq!(judged.retry, f.idempotent && f.replayable, "{f:?}");
            }
        }
    }

    #[test]
    fn the_overall_deadline_blames_nobody_and_ends_the_tries() {
        let v = verdict(No, Proxy, 504);
        check(TryFailure::DeadlineReached, v, v);
    }

    #[test]
    fn a_client_that_went_away_is_its_own_fault() {
        let v = verdict(No, Client, 499);
        check(TryFailure::ClientGone, v, v);
    }

    #[test]
    fn a_malformed_body_is_the_clients_fault_and_answered_400() {
        let v = verdict(No, Client, 400);
        check(TryFailure::ClientMalformed, v, v);
    }

    #[test]
    fn a_502_or_503_may_be_replaced_only_for_a_resendable_request() {
        for status in [502, 503] {
            for f in ALL {
                let judged = judge_status(status, false, f);
                assert_eq!(judged.retry, f.idempotent && f.replayable, "{status} {f:?}");
                assert!(!judged.server_failed);
            }
        }
        for status in [200, 204, 304, 404, 500, 504] {
            assert!(
                !judge_status(status, true, facts(true, true)).retry,
                "{status}"
            );
        }
    }

    #[test]
    fn a_5xx_fails_the_server_only_with_eject_on_5xx() {
        for status in [500, 502, 503, 504, 599] {
            assert!(judge_status(status, true, facts(true, true)).server_failed);
            assert!(!judge_status(status, false, facts(true, true)).server_failed);
        }
        for status in [200, 301, 404, 499] {
            assert!(!judge_status(status, true, facts(true, true)).server_failed);
        }
    }
}
