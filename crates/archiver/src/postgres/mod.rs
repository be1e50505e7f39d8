//! The archive in a PostgreSQL database that several archivers share.
//!
//! [`PgStore`] holds one connection, driven by a background runtime; its methods block the
//! calling thread like [`crate::Store`]'s, so the archiver's writer, retention and commands use
//! either through [`crate::Archive`].
//!
//! - **Batches** are one `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`: one statement,
//!   one transaction, one round trip. It returns after the commit, with the server's
//!   `synchronous_commit` (raised to `on` when a session default says `off`).
//! - **Several archivers** on one channel and database: the primary key (topic, nsqd, message id)
//!   makes each message stored once whichever archiver gets it (a redelivery after one of them
//!   dies included). Rows are inserted in key order, so two batches that overlap wait for each
//!   other instead of deadlocking.
//! - **A lost connection** fails the batch ([`StoreError::Unreachable`]: the writer requeues
//!   it); later batches reconnect, no more often than a backoff allows (0.1 s doubling to 5 s).
//!   The loss and the recovery are logged once each.

mod connection;
mod schema;
mod target;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use connection::{Outage, session_setup};
use target::wait;
pub use target::{PgTarget, is_postgres_url};

use crate::archive::Archive;
use crate::error::StoreError;
use crate::message::{BatchOutcome, NewMessage, Position, StoredMessage};
use crate::query::Range;
use crate::replay::Progress;
use crate::stats::{ArchiverStats, Stats, TopicStats};

const INSERT_BATCH: &str = "
    INSERT INTO messages
        (topic_id, nsqd_id, archiver_id, msg_id, nsqd_ts_ns, attempts, archived_at_ms, body)
    SELECT t, n, $3, i, ts, a, $7, b
    FROM unnest($1::integer[], $2::integer[], $4::bytea[], $5::bigint[], $6::integer[],
                $8::bytea[]) AS batch (t, n, i, ts, a, b)
    ON CONFLICT (topic_id, nsqd_id, msg_id) DO NOTHING";

/// An open PostgreSQL archive: one connection (re-established when lost).
#[derive(Debug)]
pub struct PgStore {
    target: PgTarget,
    client: Option<Client>,
    /// The batch insert, prepared on the current connection.
    insert: Option<tokio_postgres::Statement>,
    outage: Option<Outage>,
    topics: HashMap<String, i32>,
    nsqds: HashMap<String, i32>,
    archiver: Option<String>,
    archiver_id: Option<i32>,
}

impl PgStore {
    /// Connects and creates or migrates the archive schema (refusing a newer one).
    pub fn open(target: &PgTarget) -> Result<PgStore, StoreError> {
        Self::connect(target, true)
    }

    /// Connects to an existing archive; a database without one is [`StoreError::Refused`]
    /// (reading commands must not create it).
    pub fn open_existing(target: &PgTarget) -> Result<PgStore, StoreError> {
        Self::connect(target, false)
    }

    fn connect(target: &PgTarget, create: bool) -> Result<PgStore, StoreError> {
        let mut client = target.connect()?;
        if let schema::Found::Missing = schema::prepare(&mut client, target.name(), create)? {
            return Err(StoreError::Refused {
                database: target.name().to_owned(),
                reason: "it holds no archive yet; `archiver run` creates it".to_owned(),
            });
        }
        session_setup(&client, target.name())?;
        Ok(PgStore {
            target: target.clone(),
            client: Some(client),
            insert: None,
            outage: None,
            topics: HashMap::new(),
            nsqds: HashMap::new(),
            archiver: None,
            archiver_id: None,
        })
    }

    /// Ids of `names` (sorted, distinct) in the lookup table `table`, inserting the missing
    /// ones (autocommit, before the batch: names are never deleted, so an id stays valid).
    fn lookup(&mut self, table: &str, names: &[&str]) -> Result<Vec<(String, i32)>, StoreError> {
        let insert = format!(
            "INSERT INTO {table} (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING"
        );
        let select = format!("SELECT name, id FROM {table} WHERE name = ANY($1)");
        let client = self.client()?;
        let rows = wait(async {
            client.execute(&insert, &[&names]).await?;
            client.query(&select, &[&names]).await
        })
        .map_err(|e| self.failed(&e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn name_str(&self) -> &str {
        self.target.name()
    }
}

/// The names among `names` that `cache` lacks, sorted and distinct (sorted: two archivers adding
/// the same names lock them in the same order).
fn missing<'a>(cache: &HashMap<String, i32>, names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut missing: Vec<&str> = names.filter(|n| !cache.contains_key(*n)).collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Archive for PgStore {
    fn name(&self) -> String {
        self.target.name().to_owned()
    }

    fn set_archiver(&mut self, archiver: Option<&str>) {
        self.archiver = archiver.map(str::to_owned);
        self.archiver_id = None;
    }

    fn insert_batch(&mut self, msgs: &[NewMessage<'_>]) -> Result<BatchOutcome, StoreError> {
        if msgs.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let new_topics = missing(&self.topics, msgs.iter().map(|m| m.topic));
        if !new_topics.is_empty() {
            let found = self.lookup("topics", &new_topics)?;
            self.topics.extend(found);
        }
        let new_nsqds = missing(&self.nsqds, msgs.iter().map(|m| m.nsqd));
        if !new_nsqds.is_empty() {
            let found = self.lookup("nsqds", &new_nsqds)?;
            self.nsqds.extend(found);
        }
        if let (Some(name), None) = (self.archiver.clone(), self.archiver_id) {
            self.archiver_id = self.lookup("archivers", &[&name])?.first().map(|r| r.1);
        }
        let mut rows: Vec<(i32, i32, &NewMessage<'_>)> = msgs
            .iter()
            .map(|m| (self.topics[m.topic], self.nsqds[m.nsqd], m))
            .collect();
        // Key order: overlapping batches of two archivers lock rows in the same order.
        rows.sort_by(|a, b| (a.0, a.1, &a.2.msg_id).cmp(&(b.0, b.1, &b.2.msg_id)));
        let topic_ids: Vec<i32> = rows.iter().map(|r| r.0).collect();
        let nsqd_ids: Vec<i32> = rows.iter().map(|r| r.1).collect();
        let msg_ids: Vec<&[u8]> = rows.iter().map(|r| &r.2.msg_id[..]).collect();
        let ts: Vec<i64> = rows.iter().map(|r| r.2.nsqd_ts_ns).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| i32::from(r.2.attempts)).collect();
        let bodies: Vec<&[u8]> = rows.iter().map(|r| r.2.body).collect();
        let archived_at_ms = now_ms();
        let archiver_id = self.archiver_id;
        // Connected first: a reconnection drops the statement prepared on the old connection.
        self.client()?;
        if self.insert.is_none() {
            let client = self.client.as_ref().expect("connected");
            let prepared = wait(client.prepare(INSERT_BATCH)).map_err(|e| self.failed(&e))?;
            self.insert = Some(prepared);
        }
        let (Some(client), Some(stmt)) = (&self.client, &self.insert) else {
            unreachable!("connected and prepared above");
        };
        let params: [&(dyn ToSql + Sync); 8] = [
            &topic_ids,
            &nsqd_ids,
            &archiver_id,
            &msg_ids,
            &ts,
            &attempts,
            &archived_at_ms,
            &bodies,
        ];
        let inserted = wait(client.execute(stmt, &params)).map_err(|e| self.failed(&e))?;
        let inserted = inserted as usize;
        Ok(BatchOutcome {
            inserted,
            duplicates: msgs.len() - inserted,
        })
    }

    fn query(&self, range: &Range) -> Result<Vec<StoredMessage>, StoreError> {
        if range.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(range.limit).unwrap_or(i64::MAX);
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&limit];
        let filters = range_filters(range, &mut args);
        let topic = if range.topic.is_some() {
            args.push(&range.topic);
            format!("WHERE t.name = ${}", args.len())
        } else {
            String::new()
        };
        // Each topic's first `limit` positions from its time index, already sorted, then merged:
        // one statement for any number of topics.
        let sql = format!(
            "SELECT m.seq, t.name, n.name, m.msg_id, m.nsqd_ts_ns, m.attempts, m.archived_at_ms, \
                    m.body \
             FROM topics AS t \
             CROSS JOIN LATERAL (SELECT * FROM messages WHERE topic_id = t.id{filters} \
                                 ORDER BY nsqd_ts_ns, seq LIMIT $1) AS m \
             JOIN nsqds AS n ON n.id = m.nsqd_id \
             {topic} ORDER BY m.nsqd_ts_ns, m.seq LIMIT $1"
        );
        let rows = self.read(async |c| c.query(&sql, &args).await)?;
        rows.iter()
            .map(|r| {
                let id: &[u8] = r.get(3);
                Ok(StoredMessage {
                    seq: r.get(0),
                    topic: r.get(1),
                    nsqd: r.get(2),
                    msg_id: id.try_into().map_err(|_| StoreError::Server {
                        database: self.name_str().to_owned(),
                        reason: format!("a message id of {} bytes, expected 16", id.len()),
                    })?,
                    nsqd_ts_ns: r.get(4),
                    attempts: u16::try_from(r.get::<_, i32>(5)).unwrap_or(u16::MAX),
                    archived_at_ms: r.get(6),
                    body: r.get(7),
                })
            })
            .collect()
    }

    fn count(&self, range: &Range) -> Result<u64, StoreError> {
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let filters = range_filters(range, &mut args);
        let topic = if range.topic.is_some() {
            args.push(&range.topic);
            format!(
                "topic_id = (SELECT id FROM topics WHERE name = ${})",
                args.len()
            )
        } else {
            "true".to_owned()
        };
        let sql = format!("SELECT count(*) FROM messages WHERE {topic}{filters}");
        let n: i64 = self.read(async |c| c.query_one(&sql, &args).await.map(|r| r.get(0)))?;
        Ok(n.unsigned_abs())
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        self.read(async |c| {
            // One snapshot for all three statements.
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let topics = c
                .query(
                    "SELECT t.name, count(m.topic_id), min(m.nsqd_ts_ns), max(m.nsqd_ts_ns) \
                     FROM topics AS t LEFT JOIN messages AS m ON m.topic_id = t.id \
                     GROUP BY t.name ORDER BY t.name",
                    &[],
                )
                .await?;
            let archivers = c
                .query(
                    "SELECT a.name, count(*) FROM messages AS m \
                     LEFT JOIN archivers AS a ON a.id = m.archiver_id \
                     GROUP BY a.name ORDER BY a.name NULLS LAST",
                    &[],
                )
                .await?;
            let bytes = c
                .query_one(
                    "SELECT sum(pg_total_relation_size(r))::bigint FROM unnest(ARRAY[\
                     'messages', 'topics', 'nsqds', 'archivers', 'replay_jobs', \
                     'archiver_schema']::regclass[]) AS r",
                    &[],
                )
                .await?;
            c.batch_execute("COMMIT").await?;
            let per_topic: Vec<TopicStats> = topics
                .iter()
                .map(|r| TopicStats {
                    topic: r.get(0),
                    count: r.get::<_, i64>(1).unsigned_abs(),
                    first_ns: r.get(2),
                    last_ns: r.get(3),
                })
                .collect();
            Ok(Stats {
                total: per_topic.iter().map(|t| t.count).sum(),
                per_topic,
                per_archiver: archivers
                    .iter()
                    .map(|r| ArchiverStats {
                        archiver: r.get(0),
                        count: r.get::<_, i64>(1).unsigned_abs(),
                    })
                    .collect(),
                db_bytes: bytes.get::<_, i64>(0).unsigned_abs(),
            })
        })
    }

    fn replay_progress(&self, job_key: &str) -> Result<Option<Progress>, StoreError> {
        let row = self.read(async |c| {
            c.query_opt(
                "SELECT last_ts_ns, last_seq, sent, updated_at_ms FROM replay_jobs \
                 WHERE job_key = $1",
                &[&job_key],
            )
            .await
        })?;
        Ok(row.map(|r| Progress {
            last: Position {
                nsqd_ts_ns: r.get(0),
                seq: r.get(1),
            },
            sent: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            updated_at_ms: r.get(3),
        }))
    }

    fn record_replay_progress(
        &self,
        job_key: &str,
        last: Position,
        sent: u64,
    ) -> Result<(), StoreError> {
        let sent = i64::try_from(sent).unwrap_or(i64::MAX);
        let now = now_ms();
        self.read(async |c| {
            c.execute(
                "INSERT INTO replay_jobs (job_key, last_ts_ns, last_seq, sent, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (job_key) DO UPDATE SET last_ts_ns = excluded.last_ts_ns, \
                 last_seq = excluded.last_seq, sent = excluded.sent, \
                 updated_at_ms = excluded.updated_at_ms",
                &[&job_key, &last.nsqd_ts_ns, &last.seq, &sent, &now],
            )
            .await
        })?;
        Ok(())
    }

    fn delete_older_than(
        &mut self,
        cutoff_ns: i64,
        max_rows_per_txn: usize,
    ) -> Result<u64, StoreError> {
        let chunk = i64::try_from(max_rows_per_txn.max(1)).unwrap_or(i64::MAX);
        let client = self.client()?;
        let deleted = wait(async {
            let topics: Vec<i32> = client
                .query("SELECT id FROM topics", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut deleted = 0u64;
            for topic in topics {
                loop {
                    // Each chunk is its own (autocommit) transaction, read off the time index.
                    let n = client
                        .execute(
                            "DELETE FROM messages WHERE ctid = ANY (ARRAY(\
                             SELECT ctid FROM messages WHERE topic_id = $1 AND nsqd_ts_ns < $2 \
                             ORDER BY nsqd_ts_ns LIMIT $3))",
                            &[&topic, &cutoff_ns, &chunk],
                        )
                        .await?;
                    deleted += n;
                    if (n as i64) < chunk {
                        break;
                    }
                }
            }
            Ok(deleted)
        });
        deleted.map_err(|e| self.failed(&e))
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The `AND …` clauses bounding a range, their arguments appended to `args` ($n numbering
/// continues from what `args` holds).
fn range_filters<'a>(range: &'a Range, args: &mut Vec<&'a (dyn ToSql + Sync)>) -> String {
    let mut filters = String::new();
    if let Some(from) = &range.from_ns {
        args.push(from);
        filters.push_str(&format!(" AND nsqd_ts_ns >= ${}", args.len()));
    }
    if let Some(to) = &range.to_ns {
        args.push(to);
        filters.push_str(&format!(" AND nsqd_ts_ns < ${}", args.len()));
    }
    if let Some(after) = &range.after {
        args.push(&after.nsqd_ts_ns);
        let ts = args.len();
        args.push(&after.seq);
        filters.push_str(&format!(
            " AND (nsqd_ts_ns, seq) > (${ts}, ${})",
            args.len()
        ));
    }
    filters
}
