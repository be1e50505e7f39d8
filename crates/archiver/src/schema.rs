//! The on-disk format: identity of the file, schema, and the connection settings.

use std::path::Path;

use rusqlite::{Connection, MAIN_DB, OpenFlags, TransactionBehavior};

use crate::error::{AtPath, StoreError};
use crate::store::BUSY_TIMEOUT;

/// The SQLite `application_id` that marks a file as an archiver database: ASCII "NSQA".
///
/// Checked on every open so that pointing the archiver at some other program's SQLite file is
/// refused before anything is written to it.
pub const APPLICATION_ID: i32 = 0x4E53_5141;

/// The schema version stored in SQLite's `user_version`: the number of [`MIGRATIONS`]. Add a
/// migration whenever the schema changes; opening an older file applies the missing ones.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Migration `n` brings a file of version `n - 1` to version `n`; a new file runs them all.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/// Schema version 3: one index on messages instead of two. `messages_time_identity` is unique on
/// `(topic_id, nsqd_ts_ns, nsqd_id, msg_id)`: it serves time ranges per topic (its prefix) and recognises
/// redeliveries (the whole key), which took `messages_topic_time` and `messages_identity` before.
///
/// The key holds the timestamp because nsqd sets a message's timestamp once, when it is published, and keeps it
/// with the message through every redelivery, requeue and restart (it is in nsqd's disk queue): a redelivery has
/// the same `(topic, nsqd, msg_id, nsqd_ts_ns)`, so the wider key recognises exactly the duplicates the old one
/// did. One B-tree less per message is about a fifth of the insert's CPU (`bench archive`), and ~10 bytes.
///
/// Rebuilding the index reads the whole table once, when a version 2 file is first opened by this build. Rows
/// that were unique on the old key are unique on the new one, so it cannot fail on existing data. A time-range
/// page now sorts rows that share one timestamp by `seq` itself (`USE TEMP B-TREE FOR RIGHT PART OF ORDER BY`):
/// a handful of rows at most.
const SCHEMA_V3: &str = "
DROP INDEX messages_identity;
DROP INDEX messages_topic_time;
CREATE UNIQUE INDEX messages_time_identity ON messages (topic_id, nsqd_ts_ns, nsqd_id, msg_id);
";

/// Schema version 2: which archiver stored each message (`archiver stats` counts per archiver),
/// for several archivers sharing one file. Older rows have none. A small integer per row.
const SCHEMA_V2: &str = "
CREATE TABLE archivers (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
) STRICT;

ALTER TABLE messages ADD COLUMN archiver_id INTEGER REFERENCES archivers (id);
";

/// Schema version 1.
///
/// Topic names and nsqd addresses live in small lookup tables and messages refer to them by
/// integer id: a topic name or an address repeated in every row, and again in both indexes, would
/// cost tens of bytes per message for nothing.
///
/// In `messages` the body is the last column because SQLite decodes a record from the front:
/// reading the small columns then never touches a body's overflow pages.
///
/// `(topic_id, nsqd_id, msg_id)` is unique because an NSQ message id is unique only within one
/// nsqd: two nsqd on one host derive the same node id from the hostname and can hand out equal
/// ids. It is what makes a redelivery after a crash a no-op.
///
/// `messages_topic_time` serves time-range queries per topic in original order: its entries are
/// `(topic_id, nsqd_ts_ns, seq)` (SQLite appends the rowid), so a page of a range is read from
/// the index alone and sorted already.
const SCHEMA_V1: &str = "
CREATE TABLE topics (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
) STRICT;

CREATE TABLE nsqds (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
) STRICT;

CREATE TABLE messages (
    seq            INTEGER PRIMARY KEY,
    topic_id       INTEGER NOT NULL REFERENCES topics (id),
    nsqd_id        INTEGER NOT NULL REFERENCES nsqds (id),
    msg_id         BLOB    NOT NULL,
    nsqd_ts_ns     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    archived_at_ms INTEGER NOT NULL,
    body           BLOB    NOT NULL
) STRICT;

CREATE UNIQUE INDEX messages_identity ON messages (topic_id, nsqd_id, msg_id);
CREATE INDEX messages_topic_time ON messages (topic_id, nsqd_ts_ns);

CREATE TABLE replay_jobs (
    job_key       TEXT    PRIMARY KEY,
    last_ts_ns    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL,
    sent          INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
";

/// What the header and catalogue of a freshly opened file say about it.
enum Identity {
    /// Ours, at the current schema version.
    Current,
    /// A new or empty SQLite file: ours to initialise.
    Empty,
    /// Ours, at this older schema version: to migrate.
    Older(i32),
}

/// Opens `path` with `flags`, refuses files that are not ours, and brings an empty file to the
/// current schema.
/// The oldest schema a reading command works on as it is: version 2 differs from 3 only in its indexes.
const READABLE_SINCE: i32 = 2;

/// Whether opening may migrate a file whose schema a reader can use as it is ([`READABLE_SINCE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Migrate {
    /// Bring the file to [`SCHEMA_VERSION`] (writers: `archiver run`, retention, tests).
    Always,
    /// Only when it is older than [`READABLE_SINCE`]: `archiver query`, `stats`, `replay` must not drop the
    /// indexes that archivers of the previous build still writing to the same file rely on.
    OnlyIfUnreadable,
}

pub(crate) fn prepare(
    path: &Path,
    flags: OpenFlags,
    migrate: Migrate,
) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| diagnose_open(path, e))?;

    // SQLite silently falls back to read-only when the file is not writable; say so now rather
    // than at the first batch, which would be after the consumer has started taking messages.
    if conn.is_readonly(MAIN_DB).at(path)? {
        return Err(StoreError::ReadOnly {
            path: path.to_path_buf(),
            reason: "the file is not writable".to_owned(),
        });
    }
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;

    // Identify the file before changing anything in it: switching to WAL rewrites the header, and
    // a file that is not ours must be left exactly as it was.
    identify(&conn, path).map_err(|e| refine_read_only(path, e))?;

    // WAL: readers (query, stats, replay) never block the writer and the writer never blocks
    // them; one append per commit instead of a rollback journal's copy-and-sync.
    let mode: String = when_not_busy(|| {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
    })
    .at(path)
    .map_err(|e| refine_read_only(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::CannotOpen {
            path: path.to_path_buf(),
            reason: format!("SQLite refused WAL journal mode (kept {mode:?})"),
        });
    }

    // synchronous=FULL, not NORMAL. In WAL mode NORMAL syncs only at checkpoints: a commit then
    // survives a crash of this process (the WAL is in the OS page cache) but not a power cut or
    // kernel panic soon after. A caller that FINs messages as soon as the commit returns would lose
    // history that way (a FIN'd message is gone from nsqd for good), so every connection starts at
    // FULL: one fsync of the WAL per commit. The archiving writer alone switches to NORMAL, with
    // the fsync moved to a thread of its own and FINs after it (`Store::defer_sync`, `WalSync`).
    conn.pragma_update(None, "synchronous", "FULL").at(path)?;

    // A long retention run can grow the WAL; cap what stays on disk after each checkpoint.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .at(path)?;

    // Initialise (or re-check) under the write lock so that two processes opening a new file at
    // the same time cannot both create the schema.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .at(path)
        .map_err(|e| refine_read_only(path, e))?;
    let from = match identify(&tx, path)? {
        Identity::Current => SCHEMA_VERSION,
        Identity::Empty => 0,
        Identity::Older(version) => version,
    };
    let wanted = match migrate {
        Migrate::Always => SCHEMA_VERSION,
        Migrate::OnlyIfUnreadable if from >= READABLE_SINCE => from,
        Migrate::OnlyIfUnreadable => SCHEMA_VERSION,
    };
    if from < wanted {
        if from > 0 {
            // Version 3 rebuilds the messages index: a pass over the whole table, minutes on a large archive.
            tracing::info!(
                path = %path.display(),
                from,
                to = SCHEMA_VERSION,
                "migrating the archive's schema (a large archive takes a while; writers wait meanwhile)"
            );
        }
        let started = std::time::Instant::now();
        for step in &MIGRATIONS[from as usize..] {
            tx.execute_batch(step).at(path)?;
        }
        if from > 0 {
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "archive schema migrated"
            );
        }
        // Both header fields are written by this transaction, so a crash leaves either the file
        // as it was or the complete new schema, never our application_id over a partial one.
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .at(path)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .at(path)?;
    }
    tx.commit().at(path)?;
    Ok(conn)
}

/// Runs `op` again while SQLite answers `SQLITE_BUSY` at once, for up to [`BUSY_TIMEOUT`].
///
/// Switching a new file to WAL needs an exclusive lock, taken from the shared lock the pragma
/// already holds; when two processes do it at once, SQLite does not wait (waiting would deadlock)
/// and fails one of them immediately, whatever the busy timeout. The other one finishes quickly.
fn when_not_busy<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match op() {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Reads the header fields and the catalogue size, without writing.
///
/// One statement, so one read transaction: another process creating the schema between separate
/// reads would show its tables without its `application_id`, and a healthy new archive would be
/// refused as somebody else's file (seen when `archiver run` and a reader opened a new file at
/// once).
fn identify(conn: &Connection, path: &Path) -> Result<Identity, StoreError> {
    // The first read of a file that is not SQLite fails here with SQLITE_NOTADB -> Corrupt.
    let (app_id, version, objects): (i32, i32, i64) = conn
        .query_row(
            "SELECT (SELECT application_id FROM pragma_application_id), \
                    (SELECT user_version FROM pragma_user_version), \
                    (SELECT count(*) FROM sqlite_schema)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .at(path)?;
    match app_id {
        APPLICATION_ID if version == SCHEMA_VERSION => Ok(Identity::Current),
        APPLICATION_ID if (1..SCHEMA_VERSION).contains(&version) => Ok(Identity::Older(version)),
        APPLICATION_ID => Err(StoreError::UnsupportedSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        }),
        0 if objects == 0 => Ok(Identity::Empty),
        found => Err(StoreError::NotOurs {
            path: path.to_path_buf(),
            found,
            expected: APPLICATION_ID,
        }),
    }
}

/// SQLite reports "unable to open database file" for many causes; look at the file system to
/// name the actual one.
fn diagnose_open(path: &Path, cause: rusqlite::Error) -> StoreError {
    let classified = StoreError::classify(path, cause);
    if !matches!(classified, StoreError::CannotOpen { .. }) {
        return classified;
    }
    let owned = path.to_path_buf();
    if path.is_dir() {
        return StoreError::CannotOpen {
            path: owned,
            reason: "it is a directory".to_owned(),
        };
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return StoreError::CannotOpen {
            path: owned,
            reason: format!("directory {} does not exist", parent.display()),
        };
    }
    refine_read_only(path, classified)
}

/// Turns a can't-open or I/O failure into [`StoreError::ReadOnly`] when permissions explain it:
/// WAL needs to create `-wal` and `-shm` files next to the database, so a read-only directory
/// fails even when the file itself is writable.
fn refine_read_only(path: &Path, err: StoreError) -> StoreError {
    if !matches!(
        err,
        StoreError::CannotOpen { .. } | StoreError::Other { .. } | StoreError::ReadOnly { .. }
    ) {
        return err;
    }
    let read_only = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().readonly())
            .unwrap_or(false)
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let reason = if read_only(path) {
        "the file is not writable"
    } else if read_only(parent) {
        "its directory is not writable, and WAL mode needs to create the -wal and -shm files there"
    } else {
        return err;
    };
    StoreError::ReadOnly {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}
