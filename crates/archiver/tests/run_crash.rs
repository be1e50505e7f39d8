//! `archiver run` against a real nsqd: crashes lose and duplicate nothing; SIGTERM drains, a
//! second signal cuts the drain short.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{
    TestDb, archived_topic, body, rows, run_args, run_args_db, spawn_archiver, topic_cluster,
};
use nsq::{Producer, ProducerConfig};
use testkit::{Signal, eventually};

const TOPIC: &str = "crashy";
const TOTAL: usize = 10_000;

both_backends_async!(
    two_sigkills_lose_and_duplicate_nothing,
    sigterm_during_a_burst_leaves_nothing_in_flight_or_requeued,
);

async fn two_sigkills_lose_and_duplicate_nothing(db: TestDb) {
    let cluster = topic_cluster(TOPIC).await;
    let mut archiver = spawn_archiver(db.dir.path(), run_args_db(&db, &cluster, &[TOPIC]));

    let nsqd = cluster.nsqd_tcp(0).to_string();
    let publisher = tokio::spawn(async move {
        let producer = Producer::new(nsqd, ProducerConfig::default()).unwrap();
        for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(100) {
            let bodies: Vec<Vec<u8>> = chunk.iter().map(|&n| body(n)).collect();
            producer.multi_publish(TOPIC, &bodies).await.unwrap();
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });

    for threshold in [1_500, 5_000] {
        eventually(Duration::from_secs(30), "archived rows", || async {
            (db.rows() >= threshold).then_some(())
        })
        .await;
        archiver.signal(Signal::SIGKILL).unwrap();
        archiver.wait_exit(Duration::from_secs(5)).await.unwrap();
        archiver.restart().unwrap();
    }
    publisher.await.unwrap();

    eventually(Duration::from_secs(40), "all 10,000 rows", || async {
        (db.rows() >= TOTAL as u64).then_some(())
    })
    .await;
    // Every message is finished (nothing left for the channel), and no redelivery added a row.
    eventually(
        Duration::from_secs(20),
        "an empty archive channel",
        || async {
            let stats = cluster.stats(0, TOPIC, Some("archive")).await.ok()?;
            let ch = stats.channel(TOPIC, "archive")?.clone();
            (ch.depth == 0 && ch.in_flight_count == 0 && ch.deferred_count == 0).then_some(())
        },
    )
    .await;
    let status = archiver.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}");

    let all = db.read_archive();
    assert_eq!(all.len(), TOTAL);
    let bodies: HashSet<Vec<u8>> = all.iter().map(|m| m.body.clone()).collect();
    let expected: HashSet<Vec<u8>> = (0..TOTAL).map(body).collect();
    assert_eq!(bodies.len(), TOTAL, "a body was stored twice");
    assert!(
        bodies == expected,
        "stored bodies differ from the published ones"
    );
    assert!(all.iter().all(|m| m.topic == TOPIC));
}

async fn sigterm_during_a_burst_leaves_nothing_in_flight_or_requeued(db: TestDb) {
    // Large enough that the archiver (even a fast one on a quiet machine) is still at it when SIGTERM lands.
    const BURST: usize = 100_000;
    let topic = "bursty";
    let cluster = topic_cluster(topic).await;
    let producer =
        Producer::new(cluster.nsqd_tcp(0).to_string(), ProducerConfig::default()).unwrap();
    for chunk in (0..BURST).collect::<Vec<_>>().chunks(500) {
        let bodies: Vec<Vec<u8>> = chunk.iter().map(|&n| body(n)).collect();
        producer.multi_publish(topic, &bodies).await.unwrap();
    }
    // This one finds nsqd through nsqlookupd instead of being told its address.
    let mut args = run_args_db(&db, &cluster, &[topic]);
    let direct = args
        .iter()
        .position(|a| a.starts_with("archive.nsqd_tcp_addresses="))
        .unwrap();
    args[direct] = format!("archive.lookupd_http_addresses={}", cluster.lookupd_http());
    let mut archiver = spawn_archiver(db.dir.path(), args);
    eventually(
        Duration::from_secs(30),
        "the burst to be under way",
        || async { (db.rows() >= 400).then_some(()) },
    )
    .await;
    archiver.signal(Signal::SIGTERM).unwrap();
    let status = archiver.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", archiver.log_tail(20));

    // nsqd may still be copying the end of the burst from the topic to the channel.
    let ch = eventually(
        Duration::from_secs(30),
        "nsqd to hand the whole burst to the archive channel",
        || async {
            let stats = cluster.stats(0, topic, Some("archive")).await.ok()?;
            let ch = stats.channel(topic, "archive")?.clone();
            (ch.message_count == BURST as u64).then_some(ch)
        },
    )
    .await;
    assert_eq!(ch.in_flight_count, 0, "{ch:?}");
    assert_eq!(ch.requeue_count, 0, "{ch:?}");
    assert_eq!(ch.timeout_count, 0, "{ch:?}");
    assert_eq!(ch.deferred_count, 0, "{ch:?}");
    let stored = db.rows();
    assert!(
        stored < BURST as u64,
        "the burst was over before SIGTERM; nothing was tested"
    );
    // Whatever was not archived is still waiting in nsqd, and nothing is in both places.
    assert_eq!(stored + ch.depth as u64, BURST as u64, "{ch:?}");
}

#[tokio::test]
async fn a_second_signal_cuts_the_drain_short() {
    let topic = "stuck";
    let (cluster, dir, db) = archived_topic(topic).await;
    // Without the second signal the drain would wait a minute for the frozen nsqd.
    let mut args = run_args(&db, &cluster, &[topic]);
    let timeout = args
        .iter()
        .position(|a| a == "shutdown.timeout=10s")
        .unwrap();
    args[timeout] = "shutdown.timeout=60s".to_owned();
    let mut archiver = spawn_archiver(dir.path(), args);
    let producer =
        Producer::new(cluster.nsqd_tcp(0).to_string(), ProducerConfig::default()).unwrap();
    producer.publish(topic, &body(0)).await.unwrap();
    eventually(Duration::from_secs(30), "the first row", || async {
        (rows(&db) >= 1).then_some(())
    })
    .await;

    // A stopped nsqd never acknowledges the CLS the drain waits for.
    cluster.freeze(0).unwrap();
    archiver.signal(Signal::SIGTERM).unwrap();
    eventually(Duration::from_secs(15), "the drain to start", || async {
        archiver
            .log()
            .contains("SIGTERM received, shutting down gracefully (send another to force)")
            .then_some(())
    })
    .await;
    assert!(
        archiver.try_wait().unwrap().is_none(),
        "the drain waits for nsqd:\n{}",
        archiver.log_tail(20)
    );
    archiver
        .assert_forced_exit(Signal::SIGTERM, svc::FORCED_EXIT_CODE)
        .await;
    cluster.thaw(0).unwrap();
}
