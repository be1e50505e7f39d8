//! The archive database handle: opening it and writing batches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{OpenFlags, Transaction, TransactionBehavior, params};

use crate::checkpointer::{Checkpointer, WRITER_BACKSTOP_PAGES};
use crate::error::{AtPath, StoreError};
use crate::message::{BatchOutcome, NewMessage};
use crate::schema::{self, Migrate};
use crate::wal_sync::WalSync;

/// How long a statement waits for another connection's write lock before failing with
/// [`StoreError::Busy`]. Long enough to ride out a retention chunk or a checkpoint.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const INSERT_MESSAGE: &str = "
    INSERT INTO messages
        (topic_id, nsqd_id, msg_id, nsqd_ts_ns, attempts, archived_at_ms, body, archiver_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT (topic_id, nsqd_ts_ns, nsqd_id, msg_id) DO NOTHING";

/// An open archive database: one SQLite connection.
///
/// `Store` is `Send` but not `Sync`, and every method blocks on disk I/O: own it on one dedicated
/// thread (e.g. `tokio::task::spawn_blocking` or `std::thread::spawn`) and feed it batches over a
/// channel. Several `Store`s, in one process or several, may open the same file: WAL lets
/// readers run beside the writer, and writers take turns (waiting up to a busy timeout).
#[derive(Debug)]
pub struct Store {
    /// Declared first so it stops before `conn` closes: the writer's connection, closing last, leaves the file
    /// checkpointed and without a WAL.
    checkpointer: Option<Checkpointer>,
    pub(crate) conn: rusqlite::Connection,
    pub(crate) path: PathBuf,
    topics: Names,
    nsqds: Names,
    archivers: Names,
    archiver: Option<String>,
}

impl Store {
    /// Opens the archive database at `path`, creating it (and its schema) if the file is missing
    /// or empty.
    ///
    /// Refuses, without modifying it, a SQLite file of another program ([`StoreError::NotOurs`])
    /// or of an unknown schema version ([`StoreError::UnsupportedSchema`]); refuses a file that
    /// is not SQLite or is damaged ([`StoreError::Corrupt`]) and a file or directory it cannot
    /// write ([`StoreError::ReadOnly`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        // No SQLITE_OPEN_URI: the configured value is a path, even if it starts with "file:".
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_with(path.as_ref(), flags, Migrate::Always)
    }

    /// [`open`](Self::open) for a reading command (`query`, `stats`, `replay`): a file of the previous schema
    /// version, which differs only in its indexes, is used as it is rather than migrated, so that a reading
    /// command run with a new build never changes the file under archivers of the previous build still writing to
    /// it (the migration drops the index their inserts name). The first new `archiver run` migrates it.
    pub fn open_for_reading(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_with(path.as_ref(), flags, Migrate::OnlyIfUnreadable)
    }

    #[cfg(test)]
    pub(crate) fn open_with_flags(path: &Path, flags: OpenFlags) -> Result<Store, StoreError> {
        Self::open_with(path, flags, Migrate::Always)
    }

    fn open_with(path: &Path, flags: OpenFlags, migrate: Migrate) -> Result<Store, StoreError> {
        let conn = schema::prepare(path, flags, migrate)?;
        // Room for the insert statements plus the handful of query shapes (one per combination
        // of range bounds) without re-preparing.
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Store {
            checkpointer: None,
            conn,
            path: path.to_path_buf(),
            topics: Names::new("topics"),
            nsqds: Names::new("nsqds"),
            archivers: Names::new("archivers"),
            archiver: None,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves checkpoints off this connection onto a thread of their own ([`Checkpointer`]): for the connection
    /// that archives, so its thread only inserts and commits.
    pub fn checkpoint_in_background(&mut self) -> Result<(), StoreError> {
        if self.checkpointer.is_none() {
            self.conn
                .pragma_update(None, "wal_autocheckpoint", WRITER_BACKSTOP_PAGES)
                .at(&self.path)?;
            self.checkpointer = Some(Checkpointer::start(&self.path)?);
        }
        Ok(())
    }

    /// Moves the fsync of each commit off the caller's thread ([`WalSync`], group commit): from now on
    /// [`insert_batch`](Self::insert_batch) returns once the batch is committed and written, and it is durable once
    /// a [`WalSync::sync`] started after that return has returned. Until then, FIN nothing of it.
    pub fn defer_sync(&mut self) -> Result<WalSync, StoreError> {
        // Opened first: if it fails, commits stay synchronous. SQLite keeps the -wal next to the file a symlinked
        // path points at, so the WAL is looked for there.
        let db = std::fs::canonicalize(&self.path).map_err(|e| StoreError::CannotOpen {
            path: self.path.clone(),
            reason: format!("cannot resolve its path: {e}"),
        })?;
        let sync = WalSync::open(&db)?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .at(&self.path)?;
        Ok(sync)
    }

    /// Records `archiver` as the one storing the following batches (`None`: unattributed).
    pub fn set_archiver(&mut self, archiver: Option<&str>) {
        self.archiver = archiver.map(str::to_owned);
    }

    /// Stores a batch of messages in one transaction; messages already archived (same topic,
    /// nsqd, message id and nsqd timestamp, which nsqd keeps through redeliveries) are skipped and
    /// counted as duplicates.
    ///
    /// **Contract with the consumer:** FIN the NSQ messages of a batch only after this returns
    /// `Ok`. `Ok` means the batch is committed and the WAL fsynced (`synchronous=FULL`), so it
    /// survives a crash of this process, and a power cut, from then on; after
    /// [`defer_sync`](Self::defer_sync), only once a [`WalSync::sync`] started after it returned. On `Err` nothing of the
    /// batch is stored: do not FIN; let nsqd redeliver (REQ or let them time out). Redelivered
    /// messages that did make it in earlier are then counted as duplicates, not stored twice.
    ///
    /// Every message of the batch gets the same `archived_at_ms`, the time of this call.
    pub fn insert_batch(&mut self, msgs: &[NewMessage<'_>]) -> Result<BatchOutcome, StoreError> {
        if msgs.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let archived_at_ms = now_ms();
        let path = self.path.as_path();
        // IMMEDIATE takes the write lock up front: a deferred transaction that starts reading
        // and then needs to write can fail with SQLITE_BUSY at once, without the busy timeout.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let mut topics = self.topics.pending();
        let mut nsqds = self.nsqds.pending();
        let mut archivers = self.archivers.pending();
        let mut inserted = 0;
        {
            let archiver_id = match &self.archiver {
                Some(name) => Some(archivers.id(&tx, name).at(path)?),
                None => None,
            };
            let mut insert = tx.prepare_cached(INSERT_MESSAGE).at(path)?;
            for m in msgs {
                let topic_id = topics.id(&tx, m.topic).at(path)?;
                let nsqd_id = nsqds.id(&tx, m.nsqd).at(path)?;
                // ON CONFLICT ... DO NOTHING rather than INSERT OR IGNORE: OR IGNORE would also
                // swallow a NOT NULL or type violation and count it as a duplicate.
                inserted += insert
                    .execute(params![
                        topic_id,
                        nsqd_id,
                        &m.msg_id[..],
                        m.nsqd_ts_ns,
                        m.attempts,
                        archived_at_ms,
                        m.body,
                        archiver_id,
                    ])
                    .at(path)?;
            }
        }
        tx.commit().at(path)?;
        // Only now are new ids real: after a rollback they would point at nothing.
        let (new_topics, new_nsqds) = (topics.into_new(), nsqds.into_new());
        let new_archivers = archivers.into_new();
        self.topics.extend(new_topics);
        self.nsqds.extend(new_nsqds);
        self.archivers.extend(new_archivers);
        Ok(BatchOutcome {
            inserted,
            duplicates: msgs.len() - inserted,
        })
    }

    /// Moves everything in the WAL into the database file and truncates the WAL, so the file
    /// alone holds the archive (for a copy, a size measurement, or a clean shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .at(&self.path)
    }
}

/// Cache of the ids of a lookup table (`topics` or `nsqds`): a batch resolves each name once
/// from memory instead of querying per message.
#[derive(Debug)]
struct Names {
    table: &'static str,
    ids: HashMap<String, i64>,
}

impl Names {
    fn new(table: &'static str) -> Self {
        Self {
            table,
            ids: HashMap::new(),
        }
    }

    /// A view for one transaction: ids created in it stay apart until the commit succeeds.
    fn pending(&self) -> PendingNames<'_> {
        PendingNames {
            names: self,
            new: HashMap::new(),
        }
    }

    fn extend(&mut self, new: HashMap<String, i64>) {
        self.ids.extend(new);
    }
}

struct PendingNames<'a> {
    names: &'a Names,
    new: HashMap<String, i64>,
}

impl PendingNames<'_> {
    fn id(&mut self, tx: &Transaction<'_>, name: &str) -> rusqlite::Result<i64> {
        if let Some(&id) = self.names.ids.get(name).or_else(|| self.new.get(name)) {
            return Ok(id);
        }
        // Another process may have added the name since we cached: insert if absent, then read.
        let table = self.names.table;
        tx.prepare_cached(&format!(
            "INSERT INTO {table} (name) VALUES (?1) ON CONFLICT (name) DO NOTHING"
        ))?
        .execute([name])?;
        let id = tx
            .prepare_cached(&format!("SELECT id FROM {table} WHERE name = ?1"))?
            .query_row([name], |row| row.get(0))?;
        self.new.insert(name.to_owned(), id);
        Ok(id)
    }

    fn into_new(self) -> HashMap<String, i64> {
        self.new
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 for a clock set before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Range;

    fn msg<'a>(topic: &'a str, n: u8, body: &'a [u8]) -> NewMessage<'a> {
        NewMessage {
            topic,
            nsqd: "n:4150",
            msg_id: [n; 16],
            nsqd_ts_ns: i64::from(n),
            attempts: 1,
            body,
        }
    }

    #[test]
    fn store_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Store>();
    }

    #[test]
    fn a_full_disk_is_reported_as_such_and_stores_nothing_of_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("a.db")).unwrap();
        store.insert_batch(&[msg("old", 0, b"x")]).unwrap();

        // SQLite answers SQLITE_FULL when the file would outgrow max_page_count, exactly as when
        // the disk is full: a real full disk without a real small file system.
        let pages: i64 = store
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        store
            .conn
            .pragma_update(None, "max_page_count", pages + 2)
            .unwrap();
        let body = vec![1u8; 3000];
        let batch: Vec<_> = (1..=20).map(|n| msg("new-topic", n, &body)).collect();
        let err = store.insert_batch(&batch).unwrap_err();
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("disk full while writing archive database")
        );

        // Nothing of the batch, not even its new topic, was kept, and the cache did not keep a
        // topic id from the rolled-back transaction.
        let all = store.query(&Range::all(100)).unwrap();
        assert_eq!(all.len(), 1);
        assert!(!store.topics.ids.contains_key("new-topic"));

        store
            .conn
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        let out = store.insert_batch(&batch).unwrap();
        assert_eq!(out.inserted, 20);
        let all = store.query(&Range::all(100)).unwrap();
        assert!(all[1..].iter().all(|m| m.topic == "new-topic"));
    }

    #[test]
    fn openers_racing_on_a_new_file_all_see_one_archive() {
        // `archiver run` and `archiver stats` (or two archivers) may open a new file at once: one
        // creates the schema while the others look at the file. Each must find either an empty
        // file or a complete archive, never "tables but no application_id".
        for round in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        Store::open(&path).map(drop)
                    })
                })
                .collect();
            for opener in openers {
                let opened = opener.join().unwrap();
                assert!(opened.is_ok(), "round {round}: {opened:?}");
            }
        }
    }

    #[test]
    fn a_read_only_connection_is_refused_as_read_only() {
        // Permission bits do not stop root, so the tests in tests/open_errors.rs may not be able
        // to make a file read-only; opening it with SQLITE_OPEN_READ_ONLY shows what SQLite does
        // with a file it cannot write, whoever runs the test.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        Store::open(&path).unwrap();
        let err = Store::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
        assert!(err.to_string().contains("is read-only"), "{err}");
    }

    #[test]
    fn a_write_refused_by_sqlite_as_read_only_is_classified_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        Store::open(&path).unwrap();
        let conn =
            rusqlite::Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let cause = conn
            .execute("INSERT INTO topics (name) VALUES ('t')", [])
            .unwrap_err();
        let err = StoreError::classify(&path, cause);
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    }
}
