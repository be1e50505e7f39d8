//! Retention deletes only older messages, in chunks; stats describe what is kept.

mod common;

use archiver::{Range, Store};
use common::{insert, msg, read_all};

#[test]
fn retention_deletes_only_older_rows_in_any_chunk_size() {
    for chunk in [1, 3, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("a.db")).unwrap();
        let msgs: Vec<_> = (0..40u64)
            .map(|i| {
                let topic = if i % 2 == 0 { "even" } else { "odd" };
                msg(topic, "n:1", i, i as i64 * 10, b"x")
            })
            .collect();
        insert(&mut store, &msgs);

        // Cutoff 150: timestamps 0..=140 go (15 messages), 150 and later stay.
        let deleted = store.delete_older_than(150, chunk).unwrap();
        assert_eq!(deleted, 15, "chunk {chunk}");
        let kept = read_all(&store, &Range::all(100));
        assert_eq!(kept.len(), 25);
        assert!(kept.iter().all(|m| m.nsqd_ts_ns >= 150));
        assert_eq!(kept.first().unwrap().nsqd_ts_ns, 150);

        assert_eq!(store.delete_older_than(150, chunk).unwrap(), 0);
    }
}

#[test]
fn a_deleted_message_redelivered_is_stored_again() {
    // Retention forgets ids too; NSQ would only redeliver something that old after a long outage.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let m = msg("t", "n:1", 1, 5, b"x");
    insert(&mut store, std::slice::from_ref(&m));
    assert_eq!(store.delete_older_than(10, 100).unwrap(), 1);
    assert_eq!(insert(&mut store, &[m]).inserted, 1);
}

#[test]
fn stats_count_per_topic_with_first_and_last_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let empty = store.stats().unwrap();
    assert_eq!((empty.total, empty.per_topic.len()), (0, 0));
    assert!(empty.db_bytes > 0);

    insert(
        &mut store,
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
