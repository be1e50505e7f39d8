//! Counting the messages of a range, for progress bars and summaries.

use crate::error::{AtPath, StoreError};
use crate::query::{Range, range_filters};
use crate::store::Store;

impl Store {
    /// How many messages [`Store::query`] would return for `range` if paged to its end
    /// (`range.limit` is ignored). Reads the time index only, but all of the range: meant for
    /// a progress bar before a replay, not for a hot path.
    pub fn count(&self, range: &Range) -> Result<u64, StoreError> {
        let path = self.path.as_path();
        let tx = self.conn.unchecked_transaction().at(path)?;
        let (filters, mut args) = range_filters(range);
        let topic_filter = if range.topic.is_some() {
            args.push((":topic", &range.topic));
            "topic_id = (SELECT id FROM topics WHERE name = :topic)"
        } else {
            "topic_id IN (SELECT id FROM topics)"
        };
        let sql = format!("SELECT count(*) FROM messages WHERE {topic_filter}{filters}");
        let n: i64 = tx
            .prepare_cached(&sql)
            .at(path)?
            .query_row(args.as_slice(), |row| row.get(0))
            .at(path)?;
        tx.commit().at(path)?;
        Ok(n.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use crate::{NewMessage, Range, Store};

    #[test]
    fn counts_what_query_returns() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("a.db")).unwrap();
        let msgs: Vec<_> = (0..10u8)
            .map(|n| NewMessage {
                topic: if n % 2 == 0 { "even" } else { "odd" },
                nsqd: "n:4150",
                msg_id: [n; 16],
                nsqd_ts_ns: i64::from(n),
                attempts: 1,
                body: b"x",
            })
            .collect();
        store.insert_batch(&msgs).unwrap();
        assert_eq!(store.count(&Range::all(1)).unwrap(), 10);
        let mut range = Range::all(100);
        range.topic = Some("even".into());
        range.from_ns = Some(2);
        range.to_ns = Some(8);
        assert_eq!(store.count(&range).unwrap(), 3);
        let page = store.query(&range).unwrap();
        range.after = Some(page[0].position());
        assert_eq!(store.count(&range).unwrap(), 2);
        range.topic = Some("never".into());
        assert_eq!(store.count(&range).unwrap(), 0);
    }
}
