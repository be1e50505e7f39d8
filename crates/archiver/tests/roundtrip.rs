//! Messages come back exactly as they went in, and redeliveries are not stored twice: on both
//! backends.

#[macro_use]
mod common;

use std::cell::{Cell, RefCell};

use archiver::Range;
use common::{Msg, TestDb, assert_same, insert, msg, read_all};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

both_backends!(
    bodies_come_back_byte_identical,
    duplicates_are_ignored_within_a_batch_across_batches_and_across_reopen,
    equal_ids_from_different_nsqd_or_topics_are_different_messages,
    an_empty_batch_is_a_no_op,
    archived_at_is_the_commit_time,
    arbitrary_binary_bodies_round_trip,
);

fn bodies_come_back_byte_identical(db: &TestDb) {
    let mut store = db.open();
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"host:port".to_vec(),
        (0..=255u8).collect(),
        vec![0; 100_000], // spills onto overflow pages (SQLite), is TOASTed (PostgreSQL)
        "h\u{e9}artbeat \u{1f493}".as_bytes().to_vec(),
    ];
    let msgs: Vec<Msg> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Msg {
            attempts: i as u16 + 1,
            ..msg("t", "n1:4150", i as u64, 1_000 + i as i64, b)
        })
        .collect();
    assert_eq!(insert(store.as_mut(), &msgs).inserted, msgs.len());

    let stored = read_all(store.as_ref(), &Range::all(2));
    assert_eq!(stored.len(), msgs.len());
    for (s, m) in stored.iter().zip(&msgs) {
        assert_same(s, m);
    }
}

fn duplicates_are_ignored_within_a_batch_across_batches_and_across_reopen(db: &TestDb) {
    let a = msg("t", "n1:4150", 1, 10, b"a");
    let b = msg("t", "n1:4150", 2, 20, b"b");
    let c = msg("t", "n1:4150", 3, 30, b"c");
    {
        let mut store = db.open();
        let out = insert(store.as_mut(), &[a.clone(), b.clone(), a.clone()]);
        assert_eq!((out.inserted, out.duplicates), (2, 1));
        // A redelivery carries a higher attempt count: still the same message.
        let redelivered = Msg {
            attempts: 2,
            ..b.clone()
        };
        let out = insert(store.as_mut(), &[redelivered, c.clone()]);
        assert_eq!((out.inserted, out.duplicates), (1, 1));
    }
    let mut store = db.open();
    let out = insert(store.as_mut(), &[a.clone(), b.clone(), c.clone()]);
    assert_eq!((out.inserted, out.duplicates), (0, 3));

    let stored = read_all(store.as_ref(), &Range::all(10));
    assert_eq!(stored.len(), 3);
    for (s, m) in stored.iter().zip([&a, &b, &c]) {
        assert_same(s, m);
    }
}

fn equal_ids_from_different_nsqd_or_topics_are_different_messages(db: &TestDb) {
    // Two nsqd on one host derive the same node id and can produce equal message ids.
    let mut store = db.open();
    let msgs = [
        msg("t", "host:4150", 7, 10, b"from the first nsqd"),
        msg("t", "host:4250", 7, 10, b"from the second nsqd"),
        msg("u", "host:4150", 7, 10, b"other topic"),
    ];
    let out = insert(store.as_mut(), &msgs);
    assert_eq!((out.inserted, out.duplicates), (3, 0));
    assert_eq!(read_all(store.as_ref(), &Range::all(10)).len(), 3);
}

fn an_empty_batch_is_a_no_op(db: &TestDb) {
    let mut store = db.open();
    let out = store.insert_batch(&[]).unwrap();
    assert_eq!((out.inserted, out.duplicates), (0, 0));
}

fn archived_at_is_the_commit_time(db: &TestDb) {
    let mut store = db.open();
    let before = now_ms();
    insert(store.as_mut(), &[msg("t", "n:1", 1, 5, b"x")]);
    let after = now_ms();
    let stored = store.query(&Range::all(1)).unwrap();
    assert!((before..=after).contains(&stored[0].archived_at_ms));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn arbitrary_binary_bodies_round_trip(db: &TestDb) {
    // One database for every case (a server per case would be slow): each case its own topic.
    let store = RefCell::new(db.open());
    let case = Cell::new(0u32);
    let strategy = (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5000), 1..20),
        any::<u16>(),
        any::<i64>(),
    );
    let mut runner = TestRunner::new(Config::with_cases(32));
    let result = runner.run(&strategy, |(bodies, attempts, ts)| {
        case.set(case.get() + 1);
        let topic = format!("t{}", case.get());
        let mut store = store.borrow_mut();
        // One timestamp for all: then original order is archive order, i.e. input order.
        let msgs: Vec<Msg> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| Msg {
                attempts,
                ..msg(&topic, "n:1", i as u64, ts, b)
            })
            .collect();
        prop_assert_eq!(insert(store.as_mut(), &msgs).inserted, msgs.len());
        let range = Range {
            topic: Some(topic.clone()),
            ..Range::all(7)
        };
        let stored = read_all(store.as_ref(), &range);
        prop_assert_eq!(stored.len(), msgs.len());
        for (s, m) in stored.iter().zip(&msgs) {
            prop_assert_eq!(&s.body, &m.body);
            prop_assert_eq!(s.msg_id, m.msg_id);
            prop_assert_eq!(s.attempts, attempts);
            prop_assert_eq!(s.nsqd_ts_ns, ts);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
