//! Choosing the backend from `archive.database`: a SQLite path, or a PostgreSQL URL.

use std::path::{Path, PathBuf};

use crate::archive::Archive;
use crate::error::StoreError;
use crate::message::{BatchOutcome, NewMessage, Position, StoredMessage};
use crate::postgres::{PgStore, PgTarget, is_postgres_url};
use crate::query::Range;
use crate::replay::Progress;
use crate::stats::Stats;
use crate::store::Store;
use crate::wal_sync::WalSync;

/// The database an archiver works on.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file (created with its schema by [`Database::open`]).
    Sqlite(PathBuf),
    /// A PostgreSQL database (its schema created or migrated by [`Database::open`]).
    Postgres(Box<PgTarget>),
}

impl Database {
    /// `value` is a `postgres://` / `postgresql://` URL (see [`PgTarget::parse`] for the
    /// password and TLS) or else a SQLite path. `password_file` only applies to a URL. The error
    /// is one line saying what was expected.
    pub fn parse(value: &str, password_file: Option<&Path>) -> Result<Database, String> {
        if is_postgres_url(value) {
            PgTarget::parse(value, password_file).map(|t| Database::Postgres(Box::new(t)))
        } else if password_file.is_some() {
            Err(
                "a postgres:// URL in archive.database when archive.database_password_file \
                 is set (a SQLite file has no password)"
                    .to_owned(),
            )
        } else {
            Ok(Database::Sqlite(PathBuf::from(value)))
        }
    }

    /// Opens the archive for writing, creating or migrating its schema.
    pub fn open(&self) -> Result<Box<dyn Archive>, StoreError> {
        Ok(match self {
            Database::Sqlite(path) => Box::new(Store::open(path)?),
            Database::Postgres(target) => Box::new(PgStore::open(target)?),
        })
    }

    /// [`open`](Self::open) for the connection that archives: on SQLite its checkpoints run on a thread of
    /// their own ([`Store::checkpoint_in_background`]), so its writer thread only inserts and commits.
    pub fn open_archiving(&self) -> Result<Box<dyn Archive>, StoreError> {
        Ok(match self {
            Database::Sqlite(path) => {
                let mut store = Store::open(path)?;
                store.checkpoint_in_background()?;
                Box::new(store)
            }
            Database::Postgres(_) => self.open()?,
        })
    }

    /// Opens an existing archive for reading commands: a missing SQLite file, or a PostgreSQL
    /// database without an archive, is refused rather than created, and a SQLite file of the previous
    /// schema version is read as it is ([`Store::open_for_reading`]).
    pub fn open_existing(&self) -> Result<Box<dyn Archive>, StoreError> {
        Ok(match self {
            Database::Sqlite(path) if !path.exists() => {
                return Err(StoreError::CannotOpen {
                    path: path.clone(),
                    reason: "it does not exist (archive.database); `archiver run` creates it"
                        .to_owned(),
                });
            }
            Database::Sqlite(path) => Box::new(Store::open_for_reading(path)?),
            Database::Postgres(target) => Box::new(PgStore::open_existing(target)?),
        })
    }

    /// The database as an operator names it (a PostgreSQL URL without password).
    pub fn name(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(target) => target.name().to_owned(),
        }
    }
}

impl Archive for Store {
    fn name(&self) -> String {
        self.path().display().to_string()
    }

    fn set_archiver(&mut self, archiver: Option<&str>) {
        Store::set_archiver(self, archiver);
    }

    fn insert_batch(&mut self, msgs: &[NewMessage<'_>]) -> Result<BatchOutcome, StoreError> {
        Store::insert_batch(self, msgs)
    }

    fn defer_sync(&mut self) -> Result<Option<WalSync>, StoreError> {
        Store::defer_sync(self).map(Some)
    }

    fn query(&self, range: &Range) -> Result<Vec<StoredMessage>, StoreError> {
        Store::query(self, range)
    }

    fn count(&self, range: &Range) -> Result<u64, StoreError> {
        Store::count(self, range)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        Store::stats(self)
    }

    fn replay_progress(&self, job_key: &str) -> Result<Option<Progress>, StoreError> {
        Store::replay_progress(self, job_key)
    }

    fn record_replay_progress(
        &self,
        job_key: &str,
        last: Position,
        sent: u64,
    ) -> Result<(), StoreError> {
        Store::record_replay_progress(self, job_key, last, sent)
    }

    fn delete_older_than(
        &mut self,
        cutoff_ns: i64,
        max_rows_per_txn: usize,
    ) -> Result<u64, StoreError> {
        Store::delete_older_than(self, cutoff_ns, max_rows_per_txn)
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        Store::checkpoint(self)
    }
}
