//! Replay cursors: how far an interrupted replay got, so it can resume without resending.

use rusqlite::{OptionalExtension, params};

use crate::error::{AtPath, StoreError};
use crate::message::Position;
use crate::store::{Store, now_ms};

/// The parameters that identify a replay job; two runs with equal parameters are the same job,
/// so the second resumes the first.
///
/// An open end (`to_ns: None`) keeps growing while the archiver runs. When the destination topic
/// is also archived (e.g. replaying a topic into itself), the replayed messages are archived
/// again with new ids and timestamps and would be replayed in turn: give such a job an explicit
/// `to_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayJob<'a> {
    /// The archived topic read, or `None` for all topics.
    pub source_topic: Option<&'a str>,
    /// Start of the range (inclusive), nsqd timestamp in nanoseconds.
    pub from_ns: Option<i64>,
    /// End of the range (exclusive), nsqd timestamp in nanoseconds.
    pub to_ns: Option<i64>,
    /// The topic published to.
    pub destination_topic: &'a str,
}

impl ReplayJob<'_> {
    /// The job key for [`Store::replay_progress`]: a JSON array of the parameters, readable in
    /// the database and unambiguous whatever the topic names contain. The destination nsqd are
    /// deliberately not part of it: resuming against other nsqd of the same cluster continues the
    /// same job.
    pub fn key(&self) -> String {
        serde_json::json!([
            "replay/v1",
            self.source_topic,
            self.from_ns,
            self.to_ns,
            self.destination_topic
        ])
        .to_string()
    }
}

/// How far a replay job got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The last message whose publish nsqd acknowledged: resume with `Range::after = Some(last)`.
    pub last: Position,
    /// How many messages the job has sent so far, over all its runs.
    pub sent: u64,
    /// When this progress was recorded, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

impl Store {
    /// The recorded progress of a replay job, or `None` if it never recorded any.
    pub fn replay_progress(&self, job_key: &str) -> Result<Option<Progress>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT last_ts_ns, last_seq, sent, updated_at_ms FROM replay_jobs \
                 WHERE job_key = ?1",
            )
            .at(&self.path)?;
        stmt.query_row([job_key], |row| {
            Ok(Progress {
                last: Position {
                    nsqd_ts_ns: row.get(0)?,
                    seq: row.get(1)?,
                },
                sent: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                updated_at_ms: row.get(3)?,
            })
        })
        .optional()
        .at(&self.path)
    }

    /// Records that every message up to and including `last` was published and acknowledged,
    /// `sent` messages in all. It is durable when it returns.
    ///
    /// # The at-least-once boundary
    ///
    /// The replayer publishes a page of messages as one MPUB, waits for nsqd's `OK`, and only then
    /// calls this with the position of the last message of that MPUB. A crash before the `OK`
    /// resends that MPUB on resume, which is right: nsqd may not have it. A crash after the `OK`
    /// but before the record commits resends it too, although nsqd had it: so at most the
    /// messages of **one in-flight MPUB** can be delivered twice, never more, and none is ever
    /// skipped. Closing that last gap would need nsqd and this database to commit together,
    /// which NSQ does not offer; consumers that must not see a duplicate deduplicate by content.
    ///
    /// Keep MPUBs small enough that resending one is harmless, and record after every one of them.
    pub fn record_replay_progress(
        &self,
        job_key: &str,
        last: Position,
        sent: u64,
    ) -> Result<(), StoreError> {
        let sent = i64::try_from(sent).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(
                "INSERT INTO replay_jobs (job_key, last_ts_ns, last_seq, sent, updated_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (job_key) DO UPDATE SET last_ts_ns = excluded.last_ts_ns, \
                 last_seq = excluded.last_seq, sent = excluded.sent, \
                 updated_at_ms = excluded.updated_at_ms",
            )
            .at(&self.path)?
            .execute(params![job_key, last.nsqd_ts_ns, last.seq, sent, now_ms()])
            .at(&self.path)?;
        Ok(())
    }
}
