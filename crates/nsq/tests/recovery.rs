//! The consumer gets going again after trouble: a backoff probe on an empty nsqd, a failure
//! followed by manual FINs, a stop while connecting, a connection lost with messages queued.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{consumer_config, eventually, logs, nsqd_addresses, producer_to};
use nsq::{Consumer, ConsumerConfig, Message};
use testkit::NsqCluster;

/// nsqd `i`'s RDY for the one client of `topic`/`test`, if it has one.
async fn rdy(cluster: &NsqCluster, i: usize, topic: &str) -> Option<i64> {
    let s = cluster.stats(i, topic, Some("test")).await.ok()?;
    Some(s.channel(topic, "test")?.clients.first()?.ready_count)
}

/// (depth, in flight, deferred) of `topic`/`test` on nsqd `i`.
async fn backlog(cluster: &NsqCluster, i: usize, topic: &str) -> Option<(i64, i64, i64)> {
    let s = cluster.stats(i, topic, Some("test")).await.ok()?;
    let ch = s.channel(topic, "test")?;
    Some((ch.depth, ch.in_flight_count, ch.deferred_count))
}

/// Fails while `failing` is set.
fn flaky(failing: &Arc<AtomicBool>) -> impl nsq::Handler {
    let failing = Arc::clone(failing);
    move |_m: Message| {
        let fail = failing.load(Ordering::SeqCst);
        async move {
            if fail {
                Err("downstream is down".into())
            } else {
                Ok(())
            }
        }
    }
}

/// Backoff's RDY 1 may land on an nsqd with nothing to send while the other holds the backlog:
/// it must move on, or the consumer waits for ever.
#[tokio::test]
async fn a_backoff_probe_on_an_empty_nsqd_moves_to_the_backlog() {
    logs();
    let cluster = NsqCluster::start(2).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let bodies: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    producer.multi_publish("probe", &bodies).await.unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![
            cluster.nsqd_tcp(0).to_string(),
            cluster.nsqd_tcp(1).to_string(),
        ],
        max_in_flight: 10,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        requeue_delay: Duration::from_millis(10),
        max_attempts: 0,
        rdy_redistribute_interval: Duration::from_millis(100),
        low_rdy_idle_timeout: Duration::from_millis(500),
        ..consumer_config()
    };
    let consumer = Consumer::start("probe", "test", cfg, flaky(&failing)).unwrap();
    // Failures until a probe lands on the empty nsqd 1; from then on the handler succeeds.
    eventually(
        Duration::from_secs(30),
        "a probe on the empty nsqd",
        || async { (rdy(&cluster, 1, "probe").await? == 1).then_some(()) },
    )
    .await;
    failing.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(20),
        "the backlog on nsqd 0 drained",
        || async { (backlog(&cluster, 0, "probe").await? == (0, 0, 0)).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(10), "backoff over", || async {
        (consumer.stats().backoff_level == 0).then_some(())
    })
    .await;
    assert_eq!(consumer.stats().finished, 20);
    assert!(consumer.stop(Duration::from_secs(5)).await.clean);
}

/// With `auto_response` off the handler's `Ok` sends nothing; the FIN that comes later (here
/// from another task, as the archiver does after a commit) must end the backoff.
#[tokio::test]
async fn manual_fins_bring_full_rdy_back_after_a_failure() {
    logs();
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let (commits, mut committed) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let failed_once = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&failed_once);
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        max_in_flight: 10,
        auto_response: false,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        requeue_delay: Duration::from_millis(10),
        ..consumer_config()
    };
    let consumer = Consumer::start("manual", "test", cfg, move |m: Message| {
        let first = !f.swap(true, Ordering::SeqCst);
        let commits = commits.clone();
        async move {
            if first {
                return Err("the batch could not be committed".into());
            }
            let _ = commits.send(m);
            Ok(())
        }
    })
    .unwrap();
    let committer = tokio::spawn(async move {
        while let Some(m) = committed.recv().await {
            m.finish();
        }
    });
    eventually(Duration::from_secs(10), "RDY 10", || async {
        (rdy(&cluster, 0, "manual").await? == 10).then_some(())
    })
    .await;
    producer.publish("manual", b"one").await.unwrap();
    eventually(Duration::from_secs(10), "the failure", || async {
        (consumer.stats().handler_errors == 1).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "full RDY after the manual FIN",
        || async {
            let s = consumer.stats();
            (s.finished == 1 && s.backoff_level == 0 && rdy(&cluster, 0, "manual").await? == 10)
                .then_some(())
        },
    )
    .await;
    assert!(consumer.stop(Duration::from_secs(5)).await.clean);
    committer.abort();
}

/// A connection whose handshake finishes after stop began used to keep the handlers' queue
/// open until stop's whole timeout.
#[tokio::test]
async fn stop_right_after_start_is_prompt_and_clean() {
    logs();
    let cluster = NsqCluster::start(2).await.unwrap();
    for _ in 0..3 {
        let cfg = ConsumerConfig {
            nsqd_tcp_addresses: nsqd_addresses(&cluster),
            ..consumer_config()
        };
        let consumer =
            Consumer::start("early", "test", cfg, |_m: Message| async { Ok(()) }).unwrap();
        let began = Instant::now();
        let report = consumer.stop(Duration::from_secs(30)).await;
        assert!(report.clean, "{report:?}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "stop took {:?}",
            began.elapsed()
        );
    }
    // Nothing stays subscribed.
    for i in 0..2 {
        eventually(Duration::from_secs(10), "no client left", || async {
            let s = cluster.stats(i, "early", Some("test")).await.ok()?;
            let clients = s.channel("early", "test").map_or(0, |c| c.client_count);
            (clients == 0).then_some(())
        })
        .await;
    }
}

/// Messages queued behind a slow handler when their connection ends are nsqd's again (it
/// redelivers them); handling the queued copies as well would handle them twice.
#[tokio::test]
async fn messages_of_a_lost_connection_are_not_handled_twice() {
    logs();
    let mut cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let bodies: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    producer.multi_publish("stale", &bodies).await.unwrap();
    drop(producer);
    let calls: Arc<Mutex<HashMap<Vec<u8>, u32>>> = Arc::default();
    let c = Arc::clone(&calls);
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        max_in_flight: 20,
        concurrency: 1,
        ..consumer_config()
    };
    let consumer = Consumer::start("stale", "test", cfg, move |m: Message| {
        *c.lock().unwrap().entry(m.id().to_vec()).or_default() += 1;
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        }
    })
    .unwrap();
    eventually(Duration::from_secs(10), "all 20 queued", || async {
        (consumer.stats().received == 20).then_some(())
    })
    .await;
    // nsqd keeps the in-flight messages on disk over a restart and redelivers them.
    cluster.stop(0).await.unwrap();
    cluster.restart(0).await.unwrap();
    eventually(Duration::from_secs(30), "every message handled", || async {
        (calls.lock().unwrap().len() == 20).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "nothing left on nsqd", || async {
        (backlog(&cluster, 0, "stale").await? == (0, 0, 0)).then_some(())
    })
    .await;
    let twice = calls.lock().unwrap().values().filter(|n| **n > 1).count();
    // Only the message in the handler when the connection ended may be handled again.
    assert!(twice <= 1, "{twice} messages handled twice");
    assert!(consumer.stop(Duration::from_secs(5)).await.clean);
}
