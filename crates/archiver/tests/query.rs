//! Range queries: bounds, topics, paging with the resume cursor, and original order: on both
//! backends.

#[macro_use]
mod common;

use archiver::{Archive, Position, Range, StoredMessage};
use common::{TestDb, insert, msg, read_all};

both_backends!(
    one_topic_comes_back_in_timestamp_then_seq_order,
    all_topics_are_merged_into_one_order,
    bounds_are_from_inclusive_to_exclusive,
    paging_resumes_strictly_after_the_cursor_even_inside_a_timestamp,
    unknown_topic_and_zero_limit_give_nothing,
    an_empty_archive_gives_nothing,
    many_topics_still_merge_in_order,
    a_reader_sees_what_another_connection_commits,
    messages_sharing_a_timestamp_come_in_archive_order_whatever_their_ids,
);

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
fn fixture(db: &TestDb) -> Box<dyn Archive> {
    let mut store = db.open();
    insert(
        store.as_mut(),
        &[
            msg("orders", "a:4150", 1, 300, b"o300a"),
            msg("orders", "b:4150", 1, 100, b"o100b"),
            msg("audit", "a:4150", 2, 200, b"x200a"),
        ],
    );
    insert(
        store.as_mut(),
        &[
            msg("orders", "a:4150", 3, 200, b"o200a"),
            // Same timestamp as o300a but archived later: seq breaks the tie.
            msg("orders", "b:4150", 4, 300, b"o300b"),
            msg("audit", "b:4150", 5, 50, b"x050b"),
            msg("orders", "a:4150", 6, 400, b"o400a"),
        ],
    );
    store
}

fn one_topic_comes_back_in_timestamp_then_seq_order(db: &TestDb) {
    let store = fixture(db);
    let got = read_all(store.as_ref(), &range(Some("orders"), None, None));
    assert_eq!(bodies(&got), ["o100b", "o200a", "o300a", "o300b", "o400a"]);
    let positions: Vec<Position> = got.iter().map(StoredMessage::position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
}

fn all_topics_are_merged_into_one_order(db: &TestDb) {
    let store = fixture(db);
    let got = read_all(store.as_ref(), &range(None, None, None));
    assert_eq!(
        bodies(&got),
        [
            "x050b", "o100b", "x200a", "o200a", "o300a", "o300b", "o400a"
        ]
    );
}

fn bounds_are_from_inclusive_to_exclusive(db: &TestDb) {
    let store = fixture(db);
    let got = read_all(store.as_ref(), &range(Some("orders"), Some(200), Some(400)));
    assert_eq!(bodies(&got), ["o200a", "o300a", "o300b"]);
    let got = read_all(store.as_ref(), &range(None, Some(100), Some(201)));
    assert_eq!(bodies(&got), ["o100b", "x200a", "o200a"]);
    let got = read_all(store.as_ref(), &range(None, Some(500), None));
    assert!(got.is_empty());
}

fn paging_resumes_strictly_after_the_cursor_even_inside_a_timestamp(db: &TestDb) {
    let store = fixture(db);
    let mut r = range(Some("orders"), None, None);
    r.limit = 3;
    let first = store.query(&r).unwrap();
    assert_eq!(bodies(&first), ["o100b", "o200a", "o300a"]);
    // The cursor sits between the two messages stamped 300.
    r.after = Some(first[2].position());
    let second = store.query(&r).unwrap();
    assert_eq!(bodies(&second), ["o300b", "o400a"]);
}

fn unknown_topic_and_zero_limit_give_nothing(db: &TestDb) {
    let store = fixture(db);
    assert!(read_all(store.as_ref(), &range(Some("nope"), None, None)).is_empty());
    let mut r = range(None, None, None);
    r.limit = 0;
    assert!(store.query(&r).unwrap().is_empty());
}

fn an_empty_archive_gives_nothing(db: &TestDb) {
    let store = db.open();
    assert!(store.query(&Range::all(10)).unwrap().is_empty());
}

fn many_topics_still_merge_in_order(db: &TestDb) {
    // More topics than fit one statement: pages of several statements are merged in memory.
    let mut store = db.open();
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
    insert(store.as_mut(), &msgs);
    let mut r = Range::all(64);
    r.from_ns = Some(10);
    let got = read_all(store.as_ref(), &r);
    let ts: Vec<i64> = got.iter().map(|m| m.nsqd_ts_ns).collect();
    assert_eq!(ts, (10..450).collect::<Vec<_>>());
}

fn a_reader_sees_what_another_connection_commits(db: &TestDb) {
    // The archiver writes while `archiver query` or a replay reads, through their own connections.
    let mut writer = db.open();
    let reader = db.open();
    insert(writer.as_mut(), &[msg("t", "n:1", 1, 1, b"one")]);
    assert_eq!(reader.query(&Range::all(10)).unwrap().len(), 1);
    insert(writer.as_mut(), &[msg("new-topic", "n:2", 1, 2, b"two")]);
    assert_eq!(reader.query(&Range::all(10)).unwrap().len(), 2);
}

fn messages_sharing_a_timestamp_come_in_archive_order_whatever_their_ids(db: &TestDb) {
    // SQLite's index is (topic, timestamp, nsqd, id): its order inside one timestamp is by nsqd and id, not by
    // archive sequence. Three messages stamped alike, archived against that order, one per batch, must still come
    // back in the order they were archived, also across pages.
    let mut store = db.open();
    insert(store.as_mut(), &[msg("t", "b:4150", 9, 500, b"first")]);
    insert(store.as_mut(), &[msg("t", "a:4150", 5, 500, b"second")]);
    insert(store.as_mut(), &[msg("t", "a:4150", 1, 500, b"third")]);
    let mut r = range(Some("t"), None, None);
    r.limit = 1;
    let got = read_all(store.as_ref(), &r);
    assert_eq!(bodies(&got), ["first", "second", "third"]);
}
