//! Reading archived messages back, a page at a time, in original order.

use std::fmt::Write as _;

use rusqlite::ToSql;

use crate::error::{AtPath, StoreError};
use crate::message::{Position, StoredMessage};
use crate::store::Store;

/// Which archived messages to read: a page of at most `limit` messages in original order.
///
/// **Original order** is nsqd timestamp order, ties broken by `seq` (archive order). For the
/// messages of one nsqd that is the order in which that nsqd accepted the publishes (to its clock's
/// resolution). Across several nsqd it interleaves by their clocks, so it is only as faithful as
/// their clocks agree: NSQ itself promises no order across nsqd (nor within one, to consumers).
///
/// To read a whole range, call [`Store::query`] repeatedly with `after` set to the
/// [`StoredMessage::position`] of the last message of the previous page, until a page comes back
/// shorter than `limit`. Memory is bounded by `limit`, whatever the size of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Only this topic; `None` for every topic, merged into one order.
    pub topic: Option<String>,
    /// Only messages with `nsqd_ts_ns >= from_ns`.
    pub from_ns: Option<i64>,
    /// Only messages with `nsqd_ts_ns < to_ns` (exclusive, so consecutive ranges do not overlap).
    pub to_ns: Option<i64>,
    /// Only messages strictly after this position (the resume cursor).
    pub after: Option<Position>,
    /// At most this many messages.
    pub limit: usize,
}

impl Range {
    /// Every message of every topic, `limit` at a time.
    pub fn all(limit: usize) -> Self {
        Self {
            topic: None,
            from_ns: None,
            to_ns: None,
            after: None,
            limit,
        }
    }
}

/// More topics than this in one statement are split into several statements whose pages are
/// merged in memory: SQLite caps the arms of a compound SELECT (500 by default).
const TOPICS_PER_STATEMENT: usize = 200;

impl Store {
    /// Reads one page of archived messages of `range`, in original order (see [`Range`]).
    pub fn query(&self, range: &Range) -> Result<Vec<StoredMessage>, StoreError> {
        if range.limit == 0 {
            return Ok(Vec::new());
        }
        // One read transaction, so that every statement of a page sees the same snapshot.
        let tx = self.conn.unchecked_transaction().at(&self.path)?;
        let topic_ids = self.topic_ids(range.topic.as_deref())?;
        let mut page = Vec::new();
        for chunk in topic_ids.chunks(TOPICS_PER_STATEMENT) {
            page.extend(self.query_topics(chunk, range)?);
        }
        if topic_ids.len() > TOPICS_PER_STATEMENT {
            page.sort_unstable_by_key(StoredMessage::position);
            page.truncate(range.limit);
        }
        tx.commit().at(&self.path)?;
        Ok(page)
    }

    /// Ids of the topics a range covers: the one named (none if never archived), or all.
    fn topic_ids(&self, topic: Option<&str>) -> Result<Vec<i64>, StoreError> {
        let (sql, name): (&str, &[&dyn ToSql]) = match &topic {
            Some(name) => ("SELECT id FROM topics WHERE name = ?1", &[name]),
            None => ("SELECT id FROM topics ORDER BY id", &[]),
        };
        let mut stmt = self.conn.prepare_cached(sql).at(&self.path)?;
        let ids = stmt
            .query_map(name, |row| row.get(0))
            .at(&self.path)?
            .collect::<rusqlite::Result<Vec<i64>>>()
            .at(&self.path)?;
        Ok(ids)
    }

    /// One statement for a few topics; see [`page_sql`].
    fn query_topics(
        &self,
        topic_ids: &[i64],
        range: &Range,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = i64::try_from(range.limit).unwrap_or(i64::MAX);
        let (sql, args) = page_sql(topic_ids, range, &limit);
        let mut stmt = self.conn.prepare_cached(&sql).at(&self.path)?;
        let rows = stmt
            .query_map(args.as_slice(), |row| {
                Ok(StoredMessage {
                    seq: row.get(0)?,
                    topic: row.get(1)?,
                    nsqd: row.get(2)?,
                    msg_id: row.get(3)?,
                    nsqd_ts_ns: row.get(4)?,
                    attempts: row.get(5)?,
                    archived_at_ms: row.get(6)?,
                    body: row.get(7)?,
                })
            })
            .at(&self.path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .at(&self.path)?;
        Ok(rows)
    }
}

/// The `AND …` clauses (and their named arguments) that bound a query to `range`'s time span
/// and resume point; shared by the page query and [`Store::count`].
pub(crate) fn range_filters(range: &Range) -> (String, Vec<(&'static str, &dyn ToSql)>) {
    let mut filters = String::new();
    let mut args: Vec<(&'static str, &dyn ToSql)> = Vec::new();
    if let Some(from) = &range.from_ns {
        filters.push_str(" AND nsqd_ts_ns >= :from");
        args.push((":from", from));
    }
    if let Some(to) = &range.to_ns {
        filters.push_str(" AND nsqd_ts_ns < :to");
        args.push((":to", to));
    }
    if let Some(after) = &range.after {
        // The first term bounds the index range; the second only filters the rows that share
        // the cursor's timestamp.
        filters.push_str(
            " AND nsqd_ts_ns >= :after_ts AND (nsqd_ts_ns > :after_ts OR seq > :after_seq)",
        );
        args.push((":after_ts", &after.nsqd_ts_ns));
        args.push((":after_seq", &after.seq));
    }
    (filters, args)
}

/// The SQL and named arguments of one page for a few topics.
///
/// Each topic's first `limit` positions come from the `(topic_id, nsqd_ts_ns, ..)` index alone
/// (its entries end with the rowid, `seq`), sorted by timestamp, ties by `seq`; SQLite merges those short lists and only then fetches the rows picked. A
/// single scan ordered by timestamp across topics would need a second timestamp index (bytes on
/// every message) or a sort of the whole range.
fn page_sql<'a>(
    topic_ids: &[i64],
    range: &'a Range,
    limit: &'a i64,
) -> (String, Vec<(&'static str, &'a dyn ToSql)>) {
    let (filters, mut args) = range_filters(range);
    args.push((":limit", limit));

    let mut picks = String::new();
    for (i, id) in topic_ids.iter().enumerate() {
        if i > 0 {
            picks.push_str(" UNION ALL ");
        }
        // The ids are integers read from our own table: inlining them is safe, and keeps the
        // statement text stable for the statement cache as long as the topic set is.
        let _ = write!(
            picks,
            "SELECT * FROM (SELECT seq, nsqd_ts_ns FROM messages \
                 WHERE topic_id = {id}{filters} ORDER BY nsqd_ts_ns, seq LIMIT :limit)"
        );
    }
    let sql = format!(
        "SELECT m.seq, t.name, n.name, m.msg_id, m.nsqd_ts_ns, m.attempts, m.archived_at_ms, m.body \
             FROM ({picks} ORDER BY nsqd_ts_ns, seq LIMIT :limit) AS pick \
             JOIN messages AS m ON m.seq = pick.seq \
             JOIN topics AS t ON t.id = m.topic_id \
             JOIN nsqds AS n ON n.id = m.nsqd_id \
             ORDER BY pick.nsqd_ts_ns, pick.seq"
    );
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of a page, one line per step.
    fn plan(store: &Store, topic_ids: &[i64], range: &Range) -> Vec<String> {
        let limit = 10;
        let (sql, args) = page_sql(topic_ids, range, &limit);
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        stmt.query_map(args.as_slice(), |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn pages_read_the_time_index_and_never_scan_or_sort_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.db")).unwrap();
        let range = Range {
            topic: None,
            from_ns: Some(1),
            to_ns: Some(2),
            after: Some(Position {
                nsqd_ts_ns: 1,
                seq: 5,
            }),
            limit: 10,
        };
        for (ids, r) in [
            (&[1, 2, 3][..], range.clone()),
            (&[1, 2, 3], Range::all(10)),
            (&[7], range),
        ] {
            let steps = plan(&store, ids, &r);
            let text = steps.join("\n");
            let index_reads = steps
                .iter()
                .filter(|s| s.contains("USING COVERING INDEX messages_time_identity (topic_id=?"))
                .count();
            assert_eq!(index_reads, ids.len(), "{text}");
            // Each arm is sorted again ("USE TEMP B-TREE" under its subquery) for the merge, but
            // that is at most `limit` rows; the messages table itself is never scanned.
            assert!(!steps.iter().any(|s| s.starts_with("SCAN m")), "{text}");
        }
    }
}
