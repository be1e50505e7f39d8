//! `archiver run` when the database misbehaves while it runs: a store error finishes nothing
//! (the messages are requeued and archived later, once), and retention runs in the background.

#[macro_use]
mod common;

use std::time::Duration;

use archiver::{NewMessage, Store};
use common::{
    TestDb, archived_topic, body, read_archive, rows, run_args, run_args_db, spawn_archiver,
};
use nsq::{Producer, ProducerConfig};
use testkit::{NsqCluster, eventually};

#[tokio::test]
async fn a_locked_database_requeues_instead_of_finishing_then_archives_once() {
    const N: usize = 50;
    let topic = "locked";
    let (cluster, dir, db) = archived_topic(topic).await;
    Store::open(&db).unwrap();
    let mut args = run_args(&db, &cluster, &[topic]);
    args.extend(["--set".into(), "archive.requeue_delay=1s".into()]);
    let mut archiver = spawn_archiver(dir.path(), args);
    eventually(
        Duration::from_secs(20),
        "the archiver to open its database",
        || async { archiver.log().contains("archiving").then_some(()) },
    )
    .await;

    // Another process holds the write lock longer than the archiver's busy timeout (5 s).
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let producer =
        Producer::new(cluster.nsqd_tcp(0).to_string(), ProducerConfig::default()).unwrap();
    let bodies: Vec<Vec<u8>> = (0..N).map(body).collect();
    producer.multi_publish(topic, &bodies).await.unwrap();

    let requeued = eventually(Duration::from_secs(20), "a requeue", || async {
        let stats = cluster.stats(0, topic, Some("archive")).await.ok()?;
        let ch = stats.channel(topic, "archive")?.clone();
        (ch.requeue_count > 0).then_some(ch)
    })
    .await;
    // Nothing was finished while nothing could be stored.
    assert_eq!(
        requeued.depth + requeued.in_flight_count + requeued.deferred_count,
        N as i64
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);

    eventually(
        Duration::from_secs(30),
        "every message archived",
        || async { (rows(&db) >= N as u64).then_some(()) },
    )
    .await;
    let status = archiver.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(read_archive(&db).len(), N);
    let log = archiver.log();
    assert!(
        log.contains("batch not stored") && log.contains("locked"),
        "{log}"
    );
}

both_backends_async!(retention_deletes_old_messages_in_the_background);

async fn retention_deletes_old_messages_in_the_background(db: TestDb) {
    let cluster = NsqCluster::start(1).await.unwrap();
    let topic = "kept";
    {
        // Two messages from 2023 and one from now.
        let mut store = db.open();
        let now_ns = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        )
        .unwrap();
        let msg = |n: u8, ts: i64| NewMessage {
            topic,
            nsqd: "n:4150",
            msg_id: [b'a' + n; 16],
            nsqd_ts_ns: ts,
            attempts: 1,
            body: b"x",
        };
        let old = 1_700_000_000_000_000_000;
        store
            .insert_batch(&[msg(0, old), msg(1, old + 1), msg(2, now_ns)])
            .unwrap();
    }
    let mut args = run_args_db(&db, &cluster, &[topic]);
    args.extend(["--set".into(), "archive.retention=1d".into()]);
    let mut archiver = spawn_archiver(db.dir.path(), args);
    eventually(Duration::from_secs(20), "retention", || async {
        (db.rows() == 1).then_some(())
    })
    .await;
    archiver.terminate(Duration::from_secs(15)).await.unwrap();
    assert_eq!(db.read_archive()[0].msg_id, [b'c'; 16]);
}
