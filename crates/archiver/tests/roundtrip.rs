//! Messages come back exactly as they went in, and redeliveries are not stored twice.

mod common;

use archiver::{Range, Store};
use common::{Msg, assert_same, insert, msg, read_all};
use proptest::prelude::*;

#[test]
fn bodies_come_back_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"host:port".to_vec(),
        (0..=255u8).collect(),
        vec![0; 100_000], // spills onto overflow pages
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
    assert_eq!(insert(&mut store, &msgs).inserted, msgs.len());

    let stored = read_all(&store, &Range::all(2));
    assert_eq!(stored.len(), msgs.len());
    for (s, m) in stored.iter().zip(&msgs) {
        assert_same(s, m);
    }
}

#[test]
fn duplicates_are_ignored_within_a_batch_across_batches_and_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a = msg("t", "n1:4150", 1, 10, b"a");
    let b = msg("t", "n1:4150", 2, 20, b"b");
    let c = msg("t", "n1:4150", 3, 30, b"c");
    {
        let mut store = Store::open(&path).unwrap();
        let out = insert(&mut store, &[a.clone(), b.clone(), a.clone()]);
        assert_eq!((out.inserted, out.duplicates), (2, 1));
        // A redelivery carries a higher attempt count: still the same message.
        let redelivered = Msg {
            attempts: 2,
            ..b.clone()
        };
        let out = insert(&mut store, &[redelivered, c.clone()]);
        assert_eq!((out.inserted, out.duplicates), (1, 1));
    }
    let mut store = Store::open(&path).unwrap();
    let out = insert(&mut store, &[a.clone(), b.clone(), c.clone()]);
    assert_eq!((out.inserted, out.duplicates), (0, 3));

    let stored = read_all(&store, &Range::all(10));
    assert_eq!(stored.len(), 3);
    for (s, m) in stored.iter().zip([&a, &b, &c]) {
        assert_same(s, m);
    }
}

#[test]
fn equal_ids_from_different_nsqd_or_topics_are_different_messages() {
    // Two nsqd on one host derive the same node id and can produce equal message ids.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let msgs = [
        msg("t", "host:4150", 7, 10, b"from the first nsqd"),
        msg("t", "host:4250", 7, 10, b"from the second nsqd"),
        msg("u", "host:4150", 7, 10, b"other topic"),
    ];
    let out = insert(&mut store, &msgs);
    assert_eq!((out.inserted, out.duplicates), (3, 0));
    assert_eq!(read_all(&store, &Range::all(10)).len(), 3);
}

#[test]
fn an_empty_batch_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let out = store.insert_batch(&[]).unwrap();
    assert_eq!((out.inserted, out.duplicates), (0, 0));
}

#[test]
fn archived_at_is_the_commit_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("a.db")).unwrap();
    let before = now_ms();
    insert(&mut store, &[msg("t", "n:1", 1, 5, b"x")]);
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn arbitrary_binary_bodies_round_trip(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5000), 1..20),
        attempts in any::<u16>(),
        ts in any::<i64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("a.db")).unwrap();
        // One timestamp for all: then original order is archive order, i.e. input order.
        let msgs: Vec<Msg> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| Msg { attempts, ..msg("t", "n:1", i as u64, ts, b) })
            .collect();
        prop_assert_eq!(insert(&mut store, &msgs).inserted, msgs.len());
        let stored = read_all(&store, &Range::all(7));
        prop_assert_eq!(stored.len(), msgs.len());
        for (s, m) in stored.iter().zip(&msgs) {
            prop_assert_eq!(&s.body, &m.body);
            prop_assert_eq!(s.msg_id, m.msg_id);
            prop_assert_eq!(s.attempts, attempts);
            prop_assert_eq!(s.nsqd_ts_ns, ts);
        }
    }
}
