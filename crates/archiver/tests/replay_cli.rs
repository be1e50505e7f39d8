//! `archiver replay` and `archiver query` against a real nsqd: a range goes to a new topic in
//! original order; a replay killed mid-way and run again sends every message exactly once.

#[macro_use]
mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use archiver::{NewMessage, ReplayJob};
use common::{ARCHIVER, TestDb};
use nsq::{Consumer, ConsumerConfig, Message};
use testkit::{ManagedProcess, NsqCluster, Signal, eventually};

const BASE_NS: i64 = 1_700_000_000_000_000_000;

/// Archives `n` messages of topic `src` one millisecond apart (in reverse insertion order, so
/// that original order is not archive order), bodies `m-<i>`.
fn seed(db: &TestDb, src: &str, n: usize) {
    let mut store = db.open();
    let bodies: Vec<String> = (0..n).map(|i| format!("m-{i:04}")).collect();
    let msgs: Vec<NewMessage<'_>> = (0..n)
        .rev()
        .map(|i| NewMessage {
            topic: src,
            nsqd: "127.0.0.1:4150",
            msg_id: *format!("{i:016x}").as_bytes().first_chunk().unwrap(),
            nsqd_ts_ns: BASE_NS + i as i64 * 1_000_000,
            attempts: 1,
            body: bodies[i].as_bytes(),
        })
        .collect();
    store.insert_batch(&msgs).unwrap();
}

/// Collects the bodies a topic delivers, in delivery order (one at a time, so in nsqd's order).
fn collect(cluster: &NsqCluster, topic: &str) -> (Consumer, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        max_in_flight: 1,
        concurrency: 1,
        ..Default::default()
    };
    let consumer = Consumer::start(topic, "check", cfg, move |msg: Message| {
        let sink = Arc::clone(&sink);
        async move {
            let text = String::from_utf8_lossy(msg.body()).into_owned();
            sink.lock().unwrap().push(text);
            Ok(())
        }
    })
    .unwrap();
    (consumer, got)
}

fn replay(db: &TestDb, cluster: &NsqCluster, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["replay".into()];
    args.extend(db.set_args());
    args.extend(["--nsqd".into(), cluster.nsqd_tcp(0).to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `archiver replay` with `extra` to its end and returns its stdout; fails the test, showing
/// stdout and stderr, unless it exits successfully.
fn replay_to_success(db: &TestDb, cluster: &NsqCluster, extra: &[&str]) -> String {
    let out = Command::new(ARCHIVER)
        .args(replay(db, cluster, extra))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn ts(i: i64) -> String {
    (BASE_NS + i * 1_000_000).to_string()
}

both_backends_async!(
    a_range_is_replayed_in_order_into_a_new_topic,
    an_interrupted_replay_resumes_without_sending_anything_twice,
);

async fn a_range_is_replayed_in_order_into_a_new_topic(db: TestDb) {
    let cluster = NsqCluster::start(1).await.unwrap();
    seed(&db, "orders", 300);
    cluster
        .create_topic(0, "orders_again", Some("check"))
        .await
        .unwrap();
    let (consumer, got) = collect(&cluster, "orders_again");

    let (from, until) = (ts(50), ts(250));
    let extra = [
        "--topic",
        "orders",
        "--destination",
        "orders_again",
        "--from",
        &from,
        "--until",
        &until,
    ];
    let stdout = replay_to_success(&db, &cluster, &extra);
    assert!(
        stdout.starts_with("done: replayed 200 messages"),
        "{stdout}"
    );

    let expected: Vec<String> = (50..250).map(|i| format!("m-{i:04}")).collect();
    eventually(Duration::from_secs(20), "200 replayed messages", || async {
        (got.lock().unwrap().len() >= 200).then_some(())
    })
    .await;
    consumer.stop(Duration::from_secs(5)).await;
    assert_eq!(*got.lock().unwrap(), expected);

    // A dry run counts and publishes nothing.
    cluster.create_topic(0, "orders_dry", None).await.unwrap();
    let extra = [
        "--topic",
        "orders",
        "--destination",
        "orders_dry",
        "--dry-run",
    ];
    let out = Command::new(ARCHIVER)
        .args(replay(&db, &cluster, &extra))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("dry run: would replay 300 messages"),
        "{stdout}"
    );
    let stats = cluster.stats(0, "orders_dry", None).await.unwrap();
    assert!(
        stats
            .topic("orders_dry")
            .is_none_or(|t| t.message_count == 0)
    );

    // query prints the same range as JSON lines, in original order.
    let out = Command::new(ARCHIVER)
        .arg("query")
        .args(db.set_args())
        .args([
            "--topic", "orders", "--from", &from, "--until", &until, "--limit", "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bodies: Vec<&str> = lines.iter().map(|v| v["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["m-0050", "m-0051", "m-0052"]);

    // stats: counts per topic, first and last time, size.
    let out = Command::new(ARCHIVER)
        .args(["stats", "--json"])
        .args(db.set_args())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["total"], 300);
    assert_eq!(stats["topics"][0]["topic"], "orders");
    assert_eq!(stats["topics"][0]["first_ns"], BASE_NS);
    assert_eq!(stats["topics"][0]["last"], "2023-11-14T22:13:20.299000000Z");
    assert!(stats["db_bytes"].as_u64().unwrap() > 0);
}

async fn an_interrupted_replay_resumes_without_sending_anything_twice(db: TestDb) {
    const N: usize = 200;
    let cluster = NsqCluster::start(1).await.unwrap();
    seed(&db, "events", N);
    cluster
        .create_topic(0, "events_again", Some("check"))
        .await
        .unwrap();
    let (consumer, got) = collect(&cluster, "events_again");

    let (from, until) = (ts(0), ts(N as i64));
    let job = [
        "--topic",
        "events",
        "--destination",
        "events_again",
        "--from",
        &from,
        "--until",
        &until,
    ];
    // 100 messages a second: MPUBs of 10 every 100 ms, so the kill lands between two of them.
    let mut slow_args = replay(&db, &cluster, &job);
    slow_args.extend(["--rate".into(), "100".into()]);
    let mut slow = ManagedProcess::spawn(
        "replay",
        ARCHIVER,
        slow_args,
        vec![],
        db.dir.path().join("replay.log"),
    )
    .unwrap();
    let key = ReplayJob {
        source_topic: Some("events"),
        from_ns: Some(BASE_NS),
        to_ns: Some(BASE_NS + N as i64 * 1_000_000),
        destination_topic: "events_again",
    }
    .key();
    let store = db.database().open_existing().unwrap();
    let sent_before_kill = eventually(Duration::from_secs(20), "replay progress", || async {
        let p = store.replay_progress(&key).unwrap()?;
        (p.sent >= 50).then_some(p.sent)
    })
    .await;
    slow.signal(Signal::SIGKILL).unwrap();
    slow.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert!(
        sent_before_kill < N as u64,
        "the replay finished before it was interrupted"
    );

    let stdout = replay_to_success(&db, &cluster, &job);
    assert!(stdout.starts_with("done: replayed"), "{stdout}");

    eventually(
        Duration::from_secs(20),
        "every replayed message",
        || async { (got.lock().unwrap().len() >= N).then_some(()) },
    )
    .await;
    // nsqd counts every message published to the topic: exactly N, so none was sent twice.
    let stats = cluster.stats(0, "events_again", None).await.unwrap();
    assert_eq!(stats.topic("events_again").unwrap().message_count, N as u64);
    consumer.stop(Duration::from_secs(5)).await;
    let expected: Vec<String> = (0..N).map(|i| format!("m-{i:04}")).collect();
    assert_eq!(*got.lock().unwrap(), expected);
    assert_eq!(store.replay_progress(&key).unwrap().unwrap().sent, N as u64);
}
