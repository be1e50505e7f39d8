//! Retention deletes only older messages, in chunks; stats describe what is kept: on both
//! backends.

#[macro_use]
mod common;

use archiver::{ArchiverStats, Range, Store};
use common::{TestDb, insert, msg, read_all};

both_backends!(
    retention_deletes_only_older_rows_in_any_chunk_size,
    a_deleted_message_redelivered_is_stored_again,
    stats_count_per_topic_with_first_and_last_times,
    stats_count_what_each_archiver_stored,
);

fn retention_deletes_only_older_rows_in_any_chunk_size(db: &TestDb) {
    let mut store = db.open();
    for chunk in [1, 3, 1000] {
        // Each round on an empty archive (and topics of its own: the database is shared).
        store.delete_older_than(i64::MAX, 1000).unwrap();
        let msgs: Vec<_> = (0..40u64)
            .map(|i| {
                let topic = if i % 2 == 0 { "even" } else { "odd" };
                let topic = format!("{topic}{chunk}");
                let topic = topic.as_str();
                msg(topic, "n:1", i, i as i64 * 10, b"x")
            })
            .collect();
        insert(store.as_mut(), &msgs);

        // Cutoff 150: timestamps 0..=140 go (15 messages), 150 and later stay.
        let deleted = store.delete_older_than(150, chunk).unwrap();
        assert_eq!(deleted, 15, "chunk {chunk}");
        let kept = read_all(store.as_ref(), &Range::all(100));
        assert_eq!(kept.len(), 25);
        assert!(kept.iter().all(|m| m.nsqd_ts_ns >= 150));
        assert_eq!(kept.first().unwrap().nsqd_ts_ns, 150);

        assert_eq!(store.delete_older_than(150, chunk).unwrap(), 0);
    }
}

fn a_deleted_message_redelivered_is_stored_again(db: &TestDb) {
    // Retention forgets ids too; NSQ would only redeliver something that old after a long outage.
    let mut store = db.open();
    let m = msg("t", "n:1", 1, 5, b"x");
    insert(store.as_mut(), std::slice::from_ref(&m));
    assert_eq!(store.delete_older_than(10, 100).unwrap(), 1);
    assert_eq!(insert(store.as_mut(), &[m]).inserted, 1);
}

fn stats_count_per_topic_with_first_and_last_times(db: &TestDb) {
    let mut store = db.open();
    let empty = store.stats().unwrap();
    assert_eq!((empty.total, empty.per_topic.len()), (0, 0));
    assert!(empty.db_bytes > 0);

    insert(
        store.as_mut(),
        &[
            msg("b-topic", "n:1", 1, 500, b"x"),
            msg("a-topic", "n:1", 2, 300, b"x"),
            msg("b-topic", "n:2", 3, 100, b"x"),
            msg("b-topic", "n:1", 4, 900, b"x"),
        ],
    );
    let stats = store.stats().unwrap();
    assert_eq!(stats.total, 4);
    let summary: Vec<_> = stats
        .per_topic
        .iter()
        .map(|t| (t.topic.as_str(), t.count, t.first_ns, t.last_ns))
        .collect();
    assert_eq!(
        summary,
        [
            ("a-topic", 1, Some(300), Some(300)),
            ("b-topic", 3, Some(100), Some(900))
        ]
    );

    store.delete_older_than(1000, 10).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.total, 0);
    assert_eq!(stats.per_topic[0].count, 0);
    assert_eq!(stats.per_topic[0].first_ns, None);
}

fn stats_count_what_each_archiver_stored(db: &TestDb) {
    let mut first = db.open();
    first.set_archiver(Some("archiver-b"));
    let mut second = db.open();
    second.set_archiver(Some("archiver-a"));
    let mut anonymous = db.open();
    insert(
        first.as_mut(),
        &[msg("t", "n:1", 1, 1, b"x"), msg("t", "n:1", 2, 2, b"x")],
    );
    // The second archiver gets a redelivery of one of those: stored once, by the first.
    insert(
        second.as_mut(),
        &[msg("t", "n:1", 2, 2, b"x"), msg("t", "n:1", 3, 3, b"x")],
    );
    insert(anonymous.as_mut(), &[msg("t", "n:1", 4, 4, b"x")]);
    let stats = first.stats().unwrap();
    let named = |name: &str, count| ArchiverStats {
        archiver: Some(name.to_owned()),
        count,
    };
    assert_eq!(
        stats.per_archiver,
        [
            named("archiver-a", 1),
            named("archiver-b", 2),
            ArchiverStats {
                archiver: None,
                count: 1
            }
        ]
    );
    assert_eq!(stats.total, 4);
}

#[test]
fn bytes_per_message_stay_low() {
    // The benchmark reports this figure; guard it against a schema change that bloats rows.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let mut store = Store::open(&path).unwrap();
    let msgs: Vec<_> = (0..10_000u64)
        .map(|i| {
            msg(
                "heartbeats",
                "10.0.0.1:4150",
                i,
                1_700_000_000_000_000_000 + i as i64 * 1_000,
                &[0x5A; 200],
            )
        })
        .collect();
    for batch in msgs.chunks(1024) {
        insert(&mut store, batch);
    }
    store.checkpoint().unwrap();
    let per_message = std::fs::metadata(&path).unwrap().len() / 10_000;
    let stats = store.stats().unwrap();
    assert_eq!(stats.total, 10_000);
    eprintln!("bytes per message: {per_message}");
    assert!(
        per_message < 320,
        "{per_message} bytes per 200-byte message"
    );
}
