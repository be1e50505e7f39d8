//! Retention: deleting messages older than a cutoff without starving the writer.

use rusqlite::params;

use crate::error::{AtPath, StoreError};
use crate::store::Store;

impl Store {
    /// Deletes every message whose nsqd timestamp is older than `cutoff_ns`, at most
    /// `max_rows_per_txn` rows per transaction (at least 1), and returns how many it deleted.
    ///
    /// Each chunk is its own short transaction, so the write lock is free between chunks. That
    /// only helps the archiver's inserts if they come through another connection: run retention
    /// on a second `Store` of the same file, on its own thread, rather than on the inserting one.
    ///
    /// Freed pages are reused by later inserts; the file does not shrink.
    pub fn delete_older_than(
        &mut self,
        cutoff_ns: i64,
        max_rows_per_txn: usize,
    ) -> Result<u64, StoreError> {
        let path = self.path.as_path();
        let chunk = i64::try_from(max_rows_per_txn.max(1)).unwrap_or(i64::MAX);
        let topic_ids = self
            .conn
            .prepare("SELECT id FROM topics")
            .at(path)?
            .query_map([], |row| row.get::<_, i64>(0))
            .at(path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .at(path)?;
        let mut deleted = 0u64;
        for topic_id in topic_ids {
            loop {
                // Per topic, so the subquery walks the (topic_id, nsqd_ts_ns) index from its
                // oldest entry; an autocommit statement is one transaction.
                let n = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM messages WHERE seq IN \
                         (SELECT seq FROM messages WHERE topic_id = ?1 AND nsqd_ts_ns < ?2 \
                          ORDER BY nsqd_ts_ns LIMIT ?3)",
                    )
                    .at(path)?
                    .execute(params![topic_id, cutoff_ns, chunk])
                    .at(path)?;
                deleted += n as u64;
                if (n as i64) < chunk {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}
