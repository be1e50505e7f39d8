//! The storage trait: what the archiver needs from a database, whichever it is.
//!
//! Two implementations: [`crate::Store`] (a SQLite file, the embedded default) and
//! [`crate::PgStore`] (a PostgreSQL server that several archivers share). Both are synchronous
//! handles owning one connection: own one on one thread (the writer, the retention thread, a
//! reading command) and give every role its own handle, as the archiver does.

use crate::error::StoreError;
use crate::message::{BatchOutcome, NewMessage, Position, StoredMessage};
use crate::query::Range;
use crate::replay::Progress;
use crate::stats::Stats;
use crate::wal_sync::WalSync;

/// An open archive database. Every method blocks on I/O; see the module docs of each
/// implementation for what its `Ok` guarantees.
pub trait Archive: Send + std::fmt::Debug {
    /// The database as an operator names it: the SQLite path, or the PostgreSQL URL without
    /// its password.
    fn name(&self) -> String;

    /// Records `archiver` as the one storing the following batches (shown by
    /// [`Archive::stats`]); `None` (the default) leaves them unattributed.
    fn set_archiver(&mut self, archiver: Option<&str>);

    /// Stores a batch in one transaction; messages already archived (same topic, nsqd and
    /// message id) are skipped and counted as duplicates.
    ///
    /// **Contract with the consumer:** FIN the NSQ messages of a batch only after this returns
    /// `Ok`: the batch is then committed durably. On `Err` nothing of it is stored (or, when the
    /// connection was lost during the commit, possibly all of it: a redelivery is then counted as
    /// a duplicate), so do not FIN: let nsqd redeliver.
    fn insert_batch(&mut self, msgs: &[NewMessage<'_>]) -> Result<BatchOutcome, StoreError>;

    /// Moves the fsync of each commit to the returned [`WalSync`] (see [`crate::Store::defer_sync`]): from then
    /// on `insert_batch`'s `Ok` means committed, and durable only after a `sync` started after it. `None` (the
    /// default, and PostgreSQL's): commits stay durable when `insert_batch` returns.
    fn defer_sync(&mut self) -> Result<Option<WalSync>, StoreError> {
        Ok(None)
    }

    /// One page of `range`, in original order (see [`Range`]).
    fn query(&self, range: &Range) -> Result<Vec<StoredMessage>, StoreError>;

    /// How many messages [`Archive::query`] would return for `range` paged to its end.
    fn count(&self, range: &Range) -> Result<u64, StoreError>;

    /// Counts per topic and per archiver, time spans, and the database size.
    fn stats(&self) -> Result<Stats, StoreError>;

    /// The recorded progress of a replay job (see [`crate::ReplayJob::key`]).
    fn replay_progress(&self, job_key: &str) -> Result<Option<Progress>, StoreError>;

    /// Records, durably, that a replay job published everything up to `last`, `sent` in all.
    fn record_replay_progress(
        &self,
        job_key: &str,
        last: Position,
        sent: u64,
    ) -> Result<(), StoreError>;

    /// Deletes messages older than `cutoff_ns` (nsqd timestamp), at most `max_rows_per_txn`
    /// per transaction, and returns how many.
    fn delete_older_than(
        &mut self,
        cutoff_ns: i64,
        max_rows_per_txn: usize,
    ) -> Result<u64, StoreError>;

    /// Leaves the database tidy for a copy or a stop (SQLite: moves the WAL into the file;
    /// PostgreSQL: nothing to do).
    fn checkpoint(&self) -> Result<(), StoreError>;
}
