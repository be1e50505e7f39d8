//! Range queries: bounds, topics, paging with the resume cursor, and original order.

mod common;

use archiver::{Position, Range, Store, StoredMessage};
use common::{insert, msg, read_all};

fn range(topic: Option<&str>, from_ns: Option<i64>, to_ns: Option<i64>) -> Range {
    Range {
        topic: topic.map(str::to_owned),
        from_ns,
        to_ns,
        after: None,
        limit: 3,
    }
}

fn bodies(msgs: &[StoredMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8(m.body.clone()).unwrap())
        .collect()
}

/// Two topics, two nsqd, messages archived out of timestamp order (as NSQ delivers them).
fn fixture() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    insert(
        &mut store,
        &[
            msg("orders", "a:4150", 1, 300, b"o300a"),
            msg("orders", "b:4150", 1, 100, b"o100b"),
            msg("audit", "a:4150", 2, 200, b"x200a"),
        ],
    );
    insert(
        &mut store,
        &[
            msg("orders", "a:4150", 3, 200, b"o200a"),
            // Same timestamp as o300a but archived later: seq breaks the tie.
            msg("orders", "b:4150", 4, 300, b"o300b"),
            msg("audit", "b:4150", 5, 50, b"x050b"),
            msg("orders", "a:4150", 6, 400, b"o400a"),
        ],
    );
    (dir, store)
}

#[test]
fn one_topic_comes_back_in_timestamp_then_seq_order() {
    let (_dir, store) = fixture();
    let got = read_all(&store, &range(Some("orders"), None, None));
    assert_eq!(bodies(&got), ["o100b", "o200a", "o300a", "o300b", "o400a"]);
    let positions: Vec<Position> = got.iter().map(StoredMessage::position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn all_topics_are_merged_into_one_order() {
    let (_dir, store) = fixture();
    let got = read_all(&store, &range(None, None, None));
    assert_eq!(
        bodies(&got),
        [
            "x050b", "o100b", "x200a", "o200a", "o300a", "o300b", "o400a"
        ]
    );
}

#[test]
fn bounds_are_from_inclusive_to_exclusive() {
    let (_dir, store) = fixture();
    let got = read_all(&store, &range(Some("orders"), Some(200), Some(400)));
    assert_eq!(bodies(&got), ["o200a", "o300a", "o300b"]);
    let got = read_all(&store, &range(None, Some(100), Some(201)));
    assert_eq!(bodies(&got), ["o100b", "x200a", "o200a"]);
    let got = read_all(&store, &range(None, Some(500), None));
    assert!(got.is_empty());
}

#[test]
fn paging_resumes_strictly_after_the_cursor_even_inside_a_timestamp() {
    let (_dir, store) = fixture();
    let mut r = range(Some("orders"), None, None);
    r.limit = 3;
    let first = store.query(&r).unwrap();
    assert_eq!(bodies(&first), ["o100b", "o200a", "o300a"]);
    // The cursor sits between the two messages stamped 300.
    r.after = Some(first[2].position());
    let second = store.query(&r).unwrap();
    assert_eq!(bodies(&second), ["o300b", "o400a"]);
}

#[test]
fn unknown_topic_and_zero_limit_give_nothing() {
    let (_dir, store) = fixture();
    assert!(read_all(&store, &range(Some("nope"), None, None)).is_empty());
    let mut r = range(None, None, None);
    r.limit = 0;
    assert!(store.query(&r).unwrap().is_empty());
}

#[test]
fn an_empty_archive_gives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a.db")).unwrap();
    assert!(store.query(&Range::all(10)).unwrap().is_empty());
}

#[test]
fn many_topics_still_merge_in_order() {
    // More topics than fit one statement: pages of several statements are merged in memory.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let msgs: Vec<_> = (0..450u64)
        .map(|i| {
            let ts = ((i * 7919) % 450) as i64; // a permutation of 0..450
            msg(
                &format!("topic{i}"),
                "n:1",
                i,
                ts,
                ts.to_string().as_bytes(),
            )
        })
        .collect();
    insert(&mut store, &msgs);
    let mut r = Range::all(64);
    r.from_ns = Some(10);
    let got = read_all(&store, &r);
    let ts: Vec<i64> = got.iter().map(|m| m.nsqd_ts_ns).collect();
    assert_eq!(ts, (10..450).collect::<Vec<_>>());
}

#[test]
fn a_reader_sees_what_another_connection_commits() {
    // The archiver writes while `archiver query` or a replay reads, through their own connections.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let mut writer = Store::open(&path).unwrap();
    let reader = Store::open(&path).unwrap();
    insert(&mut writer, &[msg("t", "n:1", 1, 1, b"one")]);
    assert_eq!(reader.query(&Range::all(10)).unwrap().len(), 1);
    insert(&mut writer, &[msg("new-topic", "n:2", 1, 2, b"two")]);
    assert_eq!(reader.query(&Range::all(10)).unwrap().len(), 2);
}
