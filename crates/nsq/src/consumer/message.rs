//! A delivered message and the ways to answer it (FIN, REQ, TOUCH): the first answer wins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::message::{MessageId, RawMessage};

use super::Shared;

/// What a connection's writer sends.
#[derive(Debug)]
pub(crate) enum Cmd {
    Fin(MessageId),
    Req(MessageId, Duration),
    Touch(MessageId),
    Rdy(u64),
    Nop,
    Cls,
    /// Flush what is queued, then close our side.
    Close,
}

/// Marks a connection's in-flight counter once the connection is gone.
const CLOSED: i64 = i64::MIN / 2;

/// State of one consumer connection that its messages refer to.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) addr: Arc<str>,
    pub(crate) cmd: mpsc::UnboundedSender<Cmd>,
    /// Messages received on this connection and not answered; `CLOSED` after it ended.
    in_flight: AtomicI64,
    /// Milliseconds since the consumer started when the last message arrived.
    pub(crate) last_message_ms: AtomicI64,
    /// nsqd answered CLS with CLOSE_WAIT: every message it sent before is already read,
    /// because nsqd writes that reply after whatever its output buffer held.
    pub(crate) close_acked: AtomicBool,
}

impl ConnShared {
    pub(crate) fn new(addr: Arc<str>, cmd: mpsc::UnboundedSender<Cmd>) -> Self {
        Self {
            addr,
            cmd,
            in_flight: AtomicI64::new(0),
            last_message_ms: AtomicI64::new(-1),
            close_acked: AtomicBool::new(false),
        }
    }

    /// Counts one message received; false when the connection was already closed (its writer
    /// failed), in which case nothing is counted.
    pub(crate) fn received(&self, shared: &Shared) -> bool {
        // The consumer's count first: a `closed` racing with this subtracts what it finds here.
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.in_flight.fetch_add(1, Ordering::AcqRel) < 0 {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Counts one answer; false when the connection already ended (nsqd will redeliver).
    fn answered(&self, shared: &Shared) -> bool {
        let mut v = self.in_flight.load(Ordering::Acquire);
        loop {
            if v <= 0 {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                v,
                v - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return true;
                }
                Err(now) => v = now,
            }
        }
    }

    /// Whether the connection ended (its messages are nsqd's again).
    pub(crate) fn is_closed(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < 0
    }

    /// The connection ended: its unanswered messages are nsqd's again. Idempotent.
    pub(crate) fn closed(&self, shared: &Shared) -> i64 {
        let v = self.in_flight.swap(CLOSED, Ordering::AcqRel);
        if v > 0 {
            shared.in_flight.fetch_sub(v, Ordering::AcqRel);
            v
        } else {
            0
        }
    }
}

struct Inner {
    raw: RawMessage,
    conn: Arc<ConnShared>,
    shared: Arc<Shared>,
    responded: AtomicBool,
}

/// A message delivered to a [`super::Handler`]. Cheap to clone; all clones answer the same
/// delivery. Unanswered when the handler returns, it is finished (`Ok`) or requeued (`Err`).
#[derive(Clone)]
pub struct Message {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &String::from_utf8_lossy(&self.inner.raw.id))
            .field("attempts", &self.inner.raw.attempts)
            .field("nsqd", &self.inner.conn.addr)
            .field("body_len", &self.inner.raw.body.len())
            .finish()
    }
}

impl Message {
    pub(crate) fn new(raw: RawMessage, conn: Arc<ConnShared>, shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(Inner {
                raw,
                conn,
                shared,
                responded: AtomicBool::new(false),
            }),
        }
    }

    /// The message id (unique per nsqd).
    pub fn id(&self) -> &MessageId {
        &self.inner.raw.id
    }

    /// The body, untouched.
    pub fn body(&self) -> &Bytes {
        &self.inner.raw.body
    }

    /// Delivery attempts, this one included (1 on first delivery).
    pub fn attempts(&self) -> u16 {
        self.inner.raw.attempts
    }

    /// nsqd's timestamp of the publish, nanoseconds since the Unix epoch.
    pub fn timestamp_ns(&self) -> i64 {
        self.inner.raw.timestamp_ns
    }

    /// The nsqd (TCP address) this message came from.
    pub fn nsqd_address(&self) -> &str {
        &self.inner.conn.addr
    }

    /// Whether FIN or REQ was already sent for this delivery.
    pub fn has_responded(&self) -> bool {
        self.inner.responded.load(Ordering::Acquire)
    }

    /// Finishes the message (FIN). Returns false when it was already answered.
    ///
    /// Every FIN, whether the handler's `Ok` sent it or this call, counts as a success for the
    /// consumer's backoff.
    pub fn finish(&self) -> bool {
        let first = self.answer(
            Cmd::Fin(self.inner.raw.id),
            &self.inner.shared.stats.finished,
        );
        if first {
            self.inner.shared.report_finished();
        }
        first
    }

    /// Requeues the message (REQ) after `delay`, or after the consumer's delay policy
    /// (`requeue_delay` x attempts, capped) when `None`. Returns false when already answered.
    pub fn requeue(&self, delay: Option<Duration>) -> bool {
        let delay = delay.unwrap_or_else(|| self.inner.shared.requeue_delay(self.attempts()));
        self.answer(
            Cmd::Req(self.inner.raw.id, delay),
            &self.inner.shared.stats.requeued,
        )
    }

    /// Whether the connection this message came on has ended (nsqd redelivers it).
    pub(crate) fn connection_ended(&self) -> bool {
        self.inner.conn.is_closed()
    }

    /// Resets the message's server-side timeout (TOUCH), for long work.
    pub fn touch(&self) {
        if !self.has_responded() {
            let _ = self.inner.conn.cmd.send(Cmd::Touch(self.inner.raw.id));
        }
    }

    /// Sends the first answer. The command is queued before the in-flight count drops, so a
    /// stop that waits for zero in flight never closes the connection ahead of it.
    fn answer(&self, cmd: Cmd, counter: &AtomicU64) -> bool {
        if self.inner.responded.swap(true, Ordering::AcqRel) {
            return false;
        }
        let _ = self.inner.conn.cmd.send(cmd);
        // On a connection that already ended nsqd redelivers the message: not counted.
        if self.inner.conn.answered(&self.inner.shared) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}
