//! Replay cursors survive a restart, and a resumed replay continues exactly after the last
//! recorded message.

#[macro_use]
mod common;

use archiver::{Position, Range, ReplayJob};
use common::{TestDb, insert, msg};

both_backends!(
    progress_persists_across_reopen,
    an_interrupted_replay_resumes_without_resending,
);

fn progress_persists_across_reopen(db: &TestDb) {
    let job = ReplayJob {
        source_topic: Some("orders"),
        from_ns: Some(0),
        to_ns: None,
        destination_topic: "orders_replay",
    };
    let key = job.key();
    {
        let store = db.open();
        assert_eq!(store.replay_progress(&key).unwrap(), None);
        let p = Position {
            nsqd_ts_ns: 10,
            seq: 1,
        };
        store.record_replay_progress(&key, p, 100).unwrap();
        let later = Position {
            nsqd_ts_ns: 20,
            seq: 5,
        };
        store.record_replay_progress(&key, later, 200).unwrap();
    }
    let store = db.open();
    let progress = store.replay_progress(&key).unwrap().unwrap();
    assert_eq!(
        progress.last,
        Position {
            nsqd_ts_ns: 20,
            seq: 5
        }
    );
    assert_eq!(progress.sent, 200);
    assert!(progress.updated_at_ms > 0);
}

#[test]
fn job_keys_differ_by_every_parameter() {
    let base = ReplayJob {
        source_topic: Some("a"),
        from_ns: Some(1),
        to_ns: Some(2),
        destination_topic: "b",
    };
    let variants = [
        ReplayJob {
            source_topic: None,
            ..base
        },
        ReplayJob {
            from_ns: None,
            ..base
        },
        ReplayJob {
            to_ns: Some(3),
            ..base
        },
        ReplayJob {
            destination_topic: "c",
            ..base
        },
        // Names that would collide under naive concatenation.
        ReplayJob {
            source_topic: Some("a\",\"b"),
            destination_topic: "",
            ..base
        },
    ];
    let mut keys: Vec<String> = variants.iter().map(ReplayJob::key).collect();
    keys.push(base.key());
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
    assert_eq!(base.key(), base.key());
}

fn an_interrupted_replay_resumes_without_resending(db: &TestDb) {
    let mut store = db.open();
    let msgs: Vec<_> = (0..25u64)
        .map(|i| {
            msg(
                "t",
                "n:1",
                i,
                (i as i64 * 37) % 11,
                format!("m{i}").as_bytes(),
            )
        })
        .collect();
    insert(store.as_mut(), &msgs);
    let job = ReplayJob {
        source_topic: Some("t"),
        from_ns: None,
        to_ns: None,
        destination_topic: "t2",
    };
    let key = job.key();
    let mut published: Vec<i64> = Vec::new();

    // First run: two "MPUB"s of 4 acknowledged and recorded, then the process dies.
    let mut range = Range {
        topic: Some("t".into()),
        from_ns: None,
        to_ns: None,
        after: None,
        limit: 4,
    };
    for _ in 0..2 {
        let page = store.query(&range).unwrap();
        published.extend(page.iter().map(|m| m.seq));
        let last = page.last().unwrap().position();
        store
            .record_replay_progress(&key, last, published.len() as u64)
            .unwrap();
        range.after = Some(last);
    }
    drop(store);

    // Second run resumes from the recorded cursor.
    let store = db.open();
    let progress = store.replay_progress(&key).unwrap().unwrap();
    let mut range = Range {
        after: Some(progress.last),
        ..range
    };
    let mut sent = progress.sent;
    loop {
        let page = store.query(&range).unwrap();
        let Some(last) = page.last() else { break };
        published.extend(page.iter().map(|m| m.seq));
        sent += page.len() as u64;
        store
            .record_replay_progress(&key, last.position(), sent)
            .unwrap();
        range.after = Some(last.position());
    }

    let mut unique = published.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), published.len(), "a message was sent twice");
    assert_eq!(published.len(), 25);
    assert_eq!(store.replay_progress(&key).unwrap().unwrap().sent, 25);
}
