//! Several archivers on one channel and one database, and a database server that restarts:
//! every message is stored exactly once, and `stats` says which archiver stored what.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Backend, TestDb, body, run_args_db, spawn_archiver, topic_cluster};
use nsq::{Producer, ProducerConfig};
use testkit::{ManagedProcess, NsqCluster, Signal, eventually};

const TOTAL: usize = 10_000;

both_backends_async!(
    archivers_starting_together_on_a_new_database_all_open_it,
    two_archivers_one_killed_mid_burst_store_each_message_once,
);

async fn archivers_starting_together_on_a_new_database_all_open_it(db: TestDb) {
    // Each creates the schema unless another did: exactly one must, and none may fail.
    let database = db.database();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let database = database.clone();
            std::thread::spawn(move || database.open().map(|_| ()))
        })
        .collect();
    for handle in opened {
        handle
            .join()
            .unwrap()
            .expect("opening a new archive concurrently");
    }
    assert_eq!(db.rows(), 0);
}

/// Publishes [`TOTAL`] numbered bodies in MPUBs of 100, paced so that a burst lasts a few
/// seconds.
fn publish_burst(cluster: &NsqCluster, topic: &'static str) -> tokio::task::JoinHandle<()> {
    let nsqd = cluster.nsqd_tcp(0).to_string();
    tokio::spawn(async move {
        let producer = Producer::new(nsqd, ProducerConfig::default()).unwrap();
        for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(100) {
            let bodies: Vec<Vec<u8>> = chunk.iter().map(|&n| body(n)).collect();
            producer.multi_publish(topic, &bodies).await.unwrap();
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

/// Waits until the archive channel has nothing left, stops `archivers`, and checks that the
/// archive holds each published body exactly once.
async fn assert_each_message_once(
    db: &TestDb,
    cluster: &NsqCluster,
    topic: &str,
    archivers: &mut [&mut ManagedProcess],
) {
    eventually(Duration::from_secs(60), "all 10,000 rows", || async {
        (db.rows() >= TOTAL as u64).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "an empty archive channel",
        || async {
            let stats = cluster.stats(0, topic, Some("archive")).await.ok()?;
            let ch = stats.channel(topic, "archive")?.clone();
            (ch.depth == 0 && ch.in_flight_count == 0 && ch.deferred_count == 0).then_some(())
        },
    )
    .await;
    for archiver in archivers.iter_mut() {
        let status = archiver.terminate(Duration::from_secs(15)).await.unwrap();
        assert!(status.success(), "{status:?}\n{}", archiver.log_tail(20));
    }
    let all = db.read_archive();
    let bodies: HashSet<Vec<u8>> = all.iter().map(|m| m.body.clone()).collect();
    assert_eq!(all.len(), TOTAL, "rows");
    assert_eq!(bodies.len(), TOTAL, "a body was stored twice");
    assert!(bodies == (0..TOTAL).map(body).collect::<HashSet<_>>());
}

fn named(db: &TestDb, cluster: &NsqCluster, topic: &str, name: &str) -> Vec<String> {
    let mut args = run_args_db(db, cluster, &[topic]);
    args.extend(["--set".into(), format!("archive.archiver_name={name}")]);
    args
}

async fn two_archivers_one_killed_mid_burst_store_each_message_once(db: TestDb) {
    let topic = "shared";
    let cluster = topic_cluster(topic).await;
    let dir = |name: &str| {
        let d = db.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let mut first = spawn_archiver(&dir("a1"), named(&db, &cluster, topic, "a1"));
    let mut second = spawn_archiver(&dir("a2"), named(&db, &cluster, topic, "a2"));
    let publisher = publish_burst(&cluster, topic);

    eventually(Duration::from_secs(30), "the burst under way", || async {
        (db.rows() >= 2_000).then_some(())
    })
    .await;
    // Its in-flight messages come back to the other one (or to itself once restarted) after
    // msg_timeout; those it had stored are recognised and not stored again.
    first.signal(Signal::SIGKILL).unwrap();
    first.wait_exit(Duration::from_secs(5)).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the other one going on",
        || async { (db.rows() >= 4_000).then_some(()) },
    )
    .await;
    first.restart().unwrap();
    publisher.await.unwrap();
    assert_each_message_once(&db, &cluster, topic, &mut [&mut first, &mut second]).await;

    // stats: which archiver stored what, adding up to the whole.
    let out = std::process::Command::new(common::ARCHIVER)
        .args(["stats", "--json"])
        .args(db.set_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let per: Vec<(String, u64)> = stats["archivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["archiver"].as_str().unwrap().to_owned(),
                a["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per.len(), 2, "{per:?}");
    assert_eq!((per[0].0.as_str(), per[1].0.as_str()), ("a1", "a2"));
    assert!(per.iter().all(|(_, n)| *n > 0), "{per:?}");
    assert_eq!(per[0].1 + per[1].1, TOTAL as u64);
}

#[tokio::test]
async fn postgres_restarted_mid_burst_loses_and_duplicates_nothing() {
    let mut db = TestDb::start(Backend::Postgres).await;
    let topic = "through_restart";
    let cluster = topic_cluster(topic).await;
    let mut args = run_args_db(&db, &cluster, &[topic]);
    args.extend(["--set".into(), "archive.requeue_delay=500ms".into()]);
    let mut archiver = spawn_archiver(db.dir.path(), args);
    let publisher = publish_burst(&cluster, topic);

    eventually(Duration::from_secs(30), "the burst under way", || async {
        (db.rows() >= 2_000).then_some(())
    })
    .await;
    let server = db.server.as_mut().unwrap();
    server.stop().await.unwrap();
    // Down long enough for batches to fail and be requeued.
    eventually(
        Duration::from_secs(20),
        "the archiver to notice",
        || async {
            archiver
                .log()
                .contains("lost the connection to the archive database")
                .then_some(())
        },
    )
    .await;
    server.start_again().await.unwrap();
    publisher.await.unwrap();
    assert_each_message_once(&db, &cluster, topic, &mut [&mut archiver]).await;

    let log = archiver.log();
    assert!(log.contains("reconnected to the archive database"), "{log}");
    // Logged once per state change, not once per failed batch.
    assert_eq!(log.matches("batch not stored").count(), 1, "{log}");
    assert_eq!(log.matches("lost the connection").count(), 1, "{log}");
    assert!(log.contains("outages=1"), "{log}");
}
