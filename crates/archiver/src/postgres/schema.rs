//! The PostgreSQL schema, created or migrated when an archiver opens the database.
//!
//! Versioned in the one-row table `archiver_schema` (application id and version); migration `n`
//! brings version `n - 1` to `n`. Opening runs the missing migrations in one transaction while
//! holding an advisory lock, so archivers starting together do not race; a database of a newer version is
//! refused, and one whose tables belong to somebody else fails without a change (DDL is
//! transactional).

use tokio_postgres::Client;

use super::target::{classify, wait};
use crate::error::StoreError;
use crate::schema::APPLICATION_ID;

/// Layout of `messages`, per message and beside SQLite's:
/// - the identity `(topic_id, nsqd_id, msg_id)` is the primary key: redeliveries hit it and
///   `ON CONFLICT DO NOTHING` skips them, whichever archiver stored the first copy;
/// - `messages_topic_time (topic_id, nsqd_ts_ns, seq)` serves range pages in original order
///   (`seq` is in the key because PostgreSQL, unlike SQLite, does not append the row id);
/// - fixed-width columns first, widest first, so no alignment padding; the body last;
/// - the ids name rows of `topics`, `nsqds` and `archivers` but are not declared foreign keys
///   (as in SQLite, where they are not enforced): a foreign key costs a locking lookup per row
///   and per key, which more than halved the insert rate, and names are never deleted.
const MIGRATIONS: &[&str] = &["
CREATE TABLE topics (
    id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE nsqds (
    id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE archivers (
    id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE messages (
    seq            bigint  GENERATED ALWAYS AS IDENTITY,
    nsqd_ts_ns     bigint  NOT NULL,
    archived_at_ms bigint  NOT NULL,
    topic_id       integer NOT NULL,
    nsqd_id        integer NOT NULL,
    archiver_id    integer,
    attempts       integer NOT NULL,
    msg_id         bytea   NOT NULL,
    body           bytea   NOT NULL,
    PRIMARY KEY (topic_id, nsqd_id, msg_id)
);
CREATE INDEX messages_topic_time ON messages (topic_id, nsqd_ts_ns, seq);
CREATE TABLE replay_jobs (
    job_key       text   PRIMARY KEY,
    last_ts_ns    bigint NOT NULL,
    last_seq      bigint NOT NULL,
    sent          bigint NOT NULL,
    updated_at_ms bigint NOT NULL
);
"];

/// The schema version this build writes and reads.
pub(crate) const VERSION: i32 = MIGRATIONS.len() as i32;

/// What opening found.
pub(crate) enum Found {
    /// Ours, at [`VERSION`].
    Current,
    /// No archive yet (and the caller did not ask to create one).
    Missing,
}

/// Checks the schema and, when `create`, creates or migrates it to [`VERSION`].
pub(crate) fn prepare(client: &mut Client, name: &str, create: bool) -> Result<Found, StoreError> {
    let at = |e: tokio_postgres::Error| classify(name, &e);
    if let Some(version) = version(client, name)? {
        if version == VERSION {
            return Ok(Found::Current);
        }
        check_not_newer(name, version)?;
    }
    if !create {
        return Ok(Found::Missing);
    }
    let lock_id = i64::from(APPLICATION_ID);
    wait(async {
        // Serialises archivers creating or migrating the same database. A session lock, taken
        // before the transaction: a transaction that started before another one committed the
        // schema can still see the table as missing (cached catalog lookups are refreshed when
        // a transaction starts), and would then try to create it again.
        client
            .execute("SELECT pg_advisory_lock($1)", &[&lock_id])
            .await
            .map_err(at)?;
        let migrated = migrate(client, name).await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&lock_id])
            .await
            .map_err(at);
        migrated.and(unlocked.map(|_| ()))
    })?;
    Ok(Found::Current)
}

/// Runs the missing migrations in one transaction (the caller holds the advisory lock).
async fn migrate(client: &mut Client, name: &str) -> Result<(), StoreError> {
    let at = |e: tokio_postgres::Error| classify(name, &e);
    let tx = client.transaction().await.map_err(at)?;
    let exists = tx
        .query_one("SELECT to_regclass('archiver_schema') IS NOT NULL", &[])
        .await
        .map_err(at)?
        .get::<_, bool>(0);
    let from = if exists {
        tx.query_one("SELECT version FROM archiver_schema", &[])
            .await
            .map_err(at)?
            .get::<_, i32>(0)
    } else {
        tx.batch_execute(
            "CREATE TABLE archiver_schema (application_id integer NOT NULL, \
             version integer NOT NULL)",
        )
        .await
        .map_err(|e| refused_not_ours(name, &e))?;
        tx.execute(
            "INSERT INTO archiver_schema VALUES ($1, 0)",
            &[&APPLICATION_ID],
        )
        .await
        .map_err(at)?;
        0
    };
    check_not_newer(name, from)?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.batch_execute(step)
            .await
            .map_err(|e| refused_not_ours(name, &e))?;
        tx.execute(
            "UPDATE archiver_schema SET version = $1",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(at)?;
    }
    tx.commit().await.map_err(at)
}

/// The archive's schema version, `None` when the database holds no archive.
fn version(client: &Client, name: &str) -> Result<Option<i32>, StoreError> {
    let at = |e: tokio_postgres::Error| classify(name, &e);
    wait(async {
        let row = client
            .query_one("SELECT to_regclass('archiver_schema') IS NOT NULL", &[])
            .await
            .map_err(at)?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        let row = client
            .query_opt("SELECT application_id, version FROM archiver_schema", &[])
            .await
            .map_err(at)?;
        match row {
            Some(r) if r.get::<_, i32>(0) == APPLICATION_ID => Ok(Some(r.get(1))),
            _ => Err(StoreError::Refused {
                database: name.to_owned(),
                reason: "its table archiver_schema is not an archiver's".to_owned(),
            }),
        }
    })
}

fn check_not_newer(name: &str, found: i32) -> Result<(), StoreError> {
    if found > VERSION {
        return Err(StoreError::Refused {
            database: name.to_owned(),
            reason: format!(
                "its archive has schema version {found}, this archiver knows version {VERSION}: \
                 use a matching archiver build"
            ),
        });
    }
    Ok(())
}

/// A table of ours that already exists (without our marker) belongs to another program.
fn refused_not_ours(name: &str, err: &tokio_postgres::Error) -> StoreError {
    match err.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::DUPLICATE_TABLE => StoreError::Refused {
            database: name.to_owned(),
            reason: format!(
                "it holds tables of another program ({}); give the archiver a database or schema \
                 of its own",
                err.as_db_error().map_or("", |d| d.message())
            ),
        },
        _ => classify(name, err),
    }
}
