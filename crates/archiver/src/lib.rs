//! The archiver's storage: every message of chosen NSQ topics kept in a SQLite file or a
//! PostgreSQL database, so that history can be queried and replayed after a loss.
//!
//! One trait, [`Archive`], two implementations: [`Store`] (SQLite, the embedded default) and
//! [`PgStore`] (PostgreSQL, shared by several archivers); [`Database::parse`] picks one from the
//! `archive.database` value and [`Database::open`] opens it. The rest of this page describes
//! [`Store`]; [`PgStore`] keeps the same contracts.
//!
//! [`Store`] is synchronous (SQLite is): own it on a dedicated blocking thread. The consumer hands
//! it batches with [`Store::insert_batch`] and FINs a batch's messages only after that returns
//! `Ok`. Redeliveries are recognised by (topic, nsqd, message id) and not stored twice.
//!
//! - **Reading:** [`Store::query`] returns one page of a [`Range`] in original order (nsqd
//!   timestamp, then archive sequence); page on with [`Range::after`]. Readers use their own
//!   `Store` on the same file and never block the writer (WAL).
//! - **Replay:** [`Store::record_replay_progress`] after every acknowledged MPUB and
//!   [`Store::replay_progress`] on start make a replay resumable; at most one in-flight MPUB can
//!   be sent twice (see [`Store::record_replay_progress`]).
//! - **Retention:** [`Store::delete_older_than`] in short transactions, on its own `Store`.
//! - **Errors:** every [`StoreError`] prints as one line naming the file; a binary exits 2 on it.
//!
//! ```
//! use archiver::{NewMessage, Range, Store};
//!
//! # fn main() -> Result<(), archiver::StoreError> {
//! let dir = tempfile::tempdir().unwrap();
//! let mut store = Store::open(dir.path().join("archive.db"))?;
//! let msg = NewMessage {
//!     topic: "orders",
//!     nsqd: "10.0.0.1:4150",
//!     msg_id: *b"0a1b2c3d4e5f6789",
//!     nsqd_ts_ns: 1_700_000_000_000_000_000,
//!     attempts: 1,
//!     body: b"{\"id\":42}",
//! };
//! let first = store.insert_batch(&[msg])?;
//! let again = store.insert_batch(&[msg])?; // a redelivery
//! assert_eq!((first.inserted, again.duplicates), (1, 1));
//!
//! let page = store.query(&Range::all(100))?;
//! assert_eq!(page[0].body, b"{\"id\":42}");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod archive;
mod checkpointer;
mod count;
mod database;
mod error;
mod message;
mod postgres;
mod query;
mod replay;
mod retention;
mod schema;
mod stats;
mod store;
mod wal_sync;

pub use archive::Archive;
pub use database::Database;
pub use error::StoreError;
pub use message::{BatchOutcome, NewMessage, Position, StoredMessage};
pub use postgres::{PgStore, PgTarget, is_postgres_url};
pub use query::Range;
pub use replay::{Progress, ReplayJob};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use stats::{ArchiverStats, Stats, TopicStats};
pub use store::Store;
pub use wal_sync::WalSync;
