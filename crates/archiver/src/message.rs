//! The values that go into the archive and come out of it.

/// One NSQ message as received, ready to be archived. Borrows from the consumer's buffers so that
/// building a batch copies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMessage<'a> {
    /// The topic the message was consumed from.
    pub topic: &'a str,
    /// The address of the nsqd that delivered it, as the consumer knows it (e.g. the
    /// `broadcast_address:tcp_port` nsqlookupd announces). Part of the duplicate key, so it must
    /// be the same string every time the same nsqd is reached.
    pub nsqd: &'a str,
    /// The NSQ message id, exactly as in the frame.
    pub msg_id: [u8; 16],
    /// nsqd's timestamp of the message (nanoseconds since the Unix epoch, nsqd's clock): when
    /// nsqd accepted the publish. It does not change on requeue.
    pub nsqd_ts_ns: i64,
    /// NSQ's delivery attempt counter at the time it was archived.
    pub attempts: u16,
    /// The body, stored byte for byte.
    pub body: &'a [u8],
}

/// An archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The archive's own sequence number: increases in the order messages were stored, never
    /// reused while a later message exists.
    pub seq: i64,
    /// The topic it was consumed from.
    pub topic: String,
    /// The nsqd that delivered it.
    pub nsqd: String,
    /// The NSQ message id.
    pub msg_id: [u8; 16],
    /// nsqd's timestamp of the message, in nanoseconds since the Unix epoch.
    pub nsqd_ts_ns: i64,
    /// NSQ's delivery attempt counter when it was archived.
    pub attempts: u16,
    /// When the batch holding it was committed, in milliseconds since the Unix epoch.
    pub archived_at_ms: i64,
    /// The body, byte for byte as received.
    pub body: Vec<u8>,
}

impl StoredMessage {
    /// Where this message stands in original order: the cursor to resume after it.
    pub fn position(&self) -> Position {
        Position {
            nsqd_ts_ns: self.nsqd_ts_ns,
            seq: self.seq,
        }
    }
}

/// A place in original order: messages sort by nsqd timestamp, then by `seq`.
///
/// It carries the timestamp as well as `seq` because `seq` alone does not say where a message
/// sorts, and looking it up again would fail once retention has deleted that row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// nsqd timestamp in nanoseconds (compared first).
    pub nsqd_ts_ns: i64,
    /// Archive sequence number (breaks ties).
    pub seq: i64,
}

/// What [`crate::Store::insert_batch`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Messages newly stored.
    pub inserted: usize,
    /// Messages already in the archive (a redelivery), or repeated within the batch: not stored
    /// again.
    pub duplicates: usize,
}
