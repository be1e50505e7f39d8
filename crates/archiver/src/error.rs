//! Errors of the archive store, classified so that a binary can print one line and exit 2.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// What went wrong with the archive database.
///
/// The `Display` of every variant is one complete line that names the database (SQLite file, or
/// PostgreSQL URL without its password), says what was expected and what was found. The
/// underlying database error is part of that line rather than a `source()`, so printing the error alone (e.g. `eprintln!("archiver: {err}")`) loses nothing
/// and printing a whole error chain does not repeat it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened or created at all (missing directory, a directory in the
    /// way, too many open files, ...).
    #[error("cannot open archive database {}: {reason}", path.display())]
    CannotOpen {
        /// The database file.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },

    /// The file is a SQLite database, but belongs to some other program. It was not modified.
    #[error(
        "{} is not an archiver database: application_id is {found:#010x}, expected {expected:#010x}{}",
        path.display(),
        if *found == 0 { " (and it already holds tables)" } else { "" }
    )]
    NotOurs {
        /// The database file.
        path: PathBuf,
        /// The `application_id` found in the file header.
        found: i32,
        /// [`crate::APPLICATION_ID`].
        expected: i32,
    },

    /// The file is an archiver database of a schema version this build does not know.
    #[error(
        "archive database {} has schema version {found}, this archiver knows version {supported}: \
         use a matching archiver build",
        path.display()
    )]
    UnsupportedSchema {
        /// The database file.
        path: PathBuf,
        /// The `user_version` found in the file header.
        found: i32,
        /// [`crate::SCHEMA_VERSION`].
        supported: i32,
    },

    /// The file is not a SQLite database at all, or its content is damaged.
    #[error("archive database {} is not a SQLite database or is corrupt: {cause}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        cause: rusqlite::Error,
    },

    /// The file, or the directory that must hold its `-wal` and `-shm` companions, is not
    /// writable.
    #[error(
        "archive database {} is read-only ({reason}); the archiver needs write access to the \
         file and to its directory",
        path.display()
    )]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// Which part is read-only, in words.
        reason: String,
    },

    /// The disk (or a quota) is full: the transaction was rolled back, nothing of it is stored.
    #[error("disk full while writing archive database {}: nothing of the batch was stored", path.display())]
    DiskFull {
        /// The database file.
        path: PathBuf,
    },

    /// Another process held the database locked for longer than the busy timeout.
    #[error(
        "archive database {} is locked by another process (waited {waited_ms} ms): {cause}",
        path.display()
    )]
    Busy {
        /// The database file.
        path: PathBuf,
        /// How long we waited, in milliseconds.
        waited_ms: u64,
        /// What SQLite reported.
        cause: rusqlite::Error,
    },

    /// Any other SQLite failure (I/O error, a bug of ours, ...).
    #[error("archive database {}: {cause}", path.display())]
    Other {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        cause: rusqlite::Error,
    },

    /// The fsync that makes committed batches durable failed ([`crate::WalSync`]): batches committed since the
    /// last successful one may not be on disk. Not retried (a second fsync can succeed with the pages lost), and
    /// fatal to the archiver: it stops finishing messages, so nsqd keeps them.
    #[error(
        "archive database {}: fsync of its WAL failed, so recently committed batches may not be on disk: {cause}",
        path.display()
    )]
    SyncFailed {
        /// The database file.
        path: PathBuf,
        /// What the system reported.
        cause: std::io::Error,
    },

    /// The PostgreSQL server cannot be reached, or the connection broke. Passing while the
    /// archiver runs (the batch is requeued and it reconnects); at start it is a setup problem.
    #[error("cannot reach archive database {database}: {reason}")]
    Unreachable {
        /// The database URL, without password.
        database: String,
        /// What the client reported.
        reason: String,
    },

    /// The PostgreSQL server refused the archiver for a reason that will not pass by itself:
    /// authentication, a missing database or privilege, a TLS failure, a schema that is not
    /// ours or newer than this build knows.
    #[error("archive database {database} refused the archiver: {reason}")]
    Refused {
        /// The database URL, without password.
        database: String,
        /// What the server reported.
        reason: String,
    },

    /// A conflict the server resolves by aborting one transaction (deadlock, serialization
    /// failure, a server shutting down or starting): retrying later succeeds.
    #[error("archive database {database}: {reason} (passing; retried)")]
    Conflict {
        /// The database URL, without password.
        database: String,
        /// What the server reported.
        reason: String,
    },

    /// Any other PostgreSQL failure (full disk, a bug of ours, ...).
    #[error("archive database {database}: {reason}")]
    Server {
        /// The database URL, without password.
        database: String,
        /// What the server reported.
        reason: String,
    },
}

impl StoreError {
    /// The database this error is about: the SQLite file, or the PostgreSQL URL (as a path).
    pub fn path(&self) -> &Path {
        match self {
            Self::Unreachable { database, .. }
            | Self::Refused { database, .. }
            | Self::Conflict { database, .. }
            | Self::Server { database, .. } => Path::new(database),
            Self::CannotOpen { path, .. }
            | Self::NotOurs { path, .. }
            | Self::UnsupportedSchema { path, .. }
            | Self::Corrupt { path, .. }
            | Self::ReadOnly { path, .. }
            | Self::DiskFull { path }
            | Self::SyncFailed { path, .. }
            | Self::Busy { path, .. }
            | Self::Other { path, .. } => path,
        }
    }

    /// Whether the condition passes by itself (another process holding the lock, a lost or
    /// refused connection, a conflict), so that retrying the batch later can succeed; every
    /// other error needs an operator.
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            Self::Busy { .. } | Self::Unreachable { .. } | Self::Conflict { .. }
        )
    }

    /// Sorts a SQLite error into the variant an operator can act on.
    pub(crate) fn classify(path: &Path, cause: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match cause.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Self::DiskFull { path },
            Some(ErrorCode::ReadOnly) => Self::ReadOnly {
                path,
                reason: cause.to_string(),
            },
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                Self::Corrupt { path, cause }
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Busy {
                path,
                waited_ms: crate::store::BUSY_TIMEOUT.as_millis() as u64,
                cause,
            },
            Some(ErrorCode::CannotOpen) => Self::CannotOpen {
                path,
                reason: cause.to_string(),
            },
            _ => Self::Other { path, cause },
        }
    }
}

/// Attaches the database path to a rusqlite result, classifying the error.
pub(crate) trait AtPath<T> {
    /// `map_err` with [`StoreError::classify`].
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> AtPath<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|cause| StoreError::classify(path, cause))
    }
}
