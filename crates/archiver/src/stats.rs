//! What the archive holds: counts and time spans per topic, and the database size.

use crate::error::{AtPath, StoreError};
use crate::store::Store;

/// Summary of the archive, as of one consistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// One entry per topic ever archived, sorted by topic name.
    pub per_topic: Vec<TopicStats>,
    /// Messages in the archive, all topics.
    pub total: u64,
    /// Messages kept per archiver that stored them, sorted by name, the unattributed (stored
    /// before archivers were recorded, or by a library user that set none) last.
    pub per_archiver: Vec<ArchiverStats>,
    /// Size of the database in bytes (pages in use and free pages, WAL content included).
    pub db_bytes: u64,
}

/// How many of the kept messages one archiver stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverStats {
    /// The archiver's name (`archive.archiver_name`), `None` for unattributed messages.
    pub archiver: Option<String>,
    /// Messages it stored that are still kept.
    pub count: u64,
}

/// Summary of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Messages archived and still kept (0 once retention has deleted them all).
    pub count: u64,
    /// Oldest nsqd timestamp kept, nanoseconds; `None` when `count` is 0.
    pub first_ns: Option<i64>,
    /// Newest nsqd timestamp kept, nanoseconds; `None` when `count` is 0.
    pub last_ns: Option<i64>,
}

impl Store {
    /// Counts per topic, their first and last nsqd timestamps, and the database size.
    ///
    /// Counting reads each topic's time index in full (SQLite keeps no row counts), so this
    /// takes time proportional to the archive: for an operator's command, not a hot path.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let path = self.path.as_path();
        let tx = self.conn.unchecked_transaction().at(path)?;
        let per_topic = {
            // Separate scalar subqueries: count walks the topic's index range, while min and max
            // are each a single seek at one end of it.
            let mut stmt = tx
                .prepare_cached(
                    "SELECT t.name, \
                     (SELECT count(*) FROM messages WHERE topic_id = t.id), \
                     (SELECT min(nsqd_ts_ns) FROM messages WHERE topic_id = t.id), \
                     (SELECT max(nsqd_ts_ns) FROM messages WHERE topic_id = t.id) \
                     FROM topics AS t ORDER BY t.name",
                )
                .at(path)?;
            stmt.query_map([], |row| {
                Ok(TopicStats {
                    topic: row.get(0)?,
                    count: row.get::<_, i64>(1)?.unsigned_abs(),
                    first_ns: row.get(2)?,
                    last_ns: row.get(3)?,
                })
            })
            .at(path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .at(path)?
        };
        let total: u64 = per_topic.iter().map(|t| t.count).sum();
        let named: i64 = tx
            .query_row("SELECT count(*) FROM archivers", [], |row| row.get(0))
            .at(path)?;
        let per_archiver = if named == 0 {
            // Nothing was ever attributed: no need to read the whole table to say so.
            let all = ArchiverStats {
                archiver: None,
                count: total,
            };
            if total > 0 { vec![all] } else { Vec::new() }
        } else {
            // No index on archiver_id (bytes on every row for an operator's command): a scan.
            let mut stmt = tx
                .prepare_cached(
                    "SELECT a.name, count(*) FROM messages AS m \
                     LEFT JOIN archivers AS a ON a.id = m.archiver_id \
                     GROUP BY m.archiver_id ORDER BY a.name IS NULL, a.name",
                )
                .at(path)?;
            stmt.query_map([], |row| {
                Ok(ArchiverStats {
                    archiver: row.get(0)?,
                    count: row.get::<_, i64>(1)?.unsigned_abs(),
                })
            })
            .at(path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .at(path)?
        };
        let pages: i64 = tx
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .at(path)?;
        let page_size: i64 = tx
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .at(path)?;
        tx.commit().at(path)?;
        Ok(Stats {
            total,
            per_topic,
            per_archiver,
            db_bytes: (pages * page_size).unsigned_abs(),
        })
    }
}
