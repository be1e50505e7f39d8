//! Publishing and consuming against a real nsqd.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{collect, consumer_config, eventually, logs, producer_to, recv_within};
use nsq::{Consumer, ConsumerConfig, Error, Handler, Message, Producer, ProducerConfig};
use testkit::{ClusterOptions, NsqCluster};
use tokio::sync::mpsc;

fn direct(cluster: &NsqCluster, i: usize) -> ConsumerConfig {
    ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(i).to_string()],
        ..consumer_config()
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    recv_within(rx, Duration::from_secs(10)).await
}

#[tokio::test]
async fn pub_mpub_dpub_round_trip() {
    logs();
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let (consumer, mut rx) = collect(
        "rt",
        ConsumerConfig {
            max_in_flight: 10,
            ..direct(&cluster, 0)
        },
    );

    producer.publish("rt", b"single").await.unwrap();
    assert_eq!(&recv(&mut rx).await.body()[..], b"single");

    let bodies: Vec<Vec<u8>> = (0..5).map(|i| format!("batch-{i}").into_bytes()).collect();
    producer.multi_publish("rt", &bodies).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(recv(&mut rx).await.body().to_vec());
    }
    got.sort();
    assert_eq!(got, bodies);

    let sent = Instant::now();
    producer
        .deferred_publish("rt", Duration::from_millis(1500), b"later")
        .await
        .unwrap();
    let m = recv(&mut rx).await;
    assert_eq!(&m.body()[..], b"later");
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "DPUB delivered after {:?}",
        sent.elapsed()
    );
    assert_eq!(m.attempts(), 1);

    let report = consumer.stop(Duration::from_secs(5)).await;
    assert!(report.clean);
}

#[tokio::test]
async fn bad_input_is_refused_before_the_wire_and_the_connection_survives() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    producer.publish("ok", b"x").await.unwrap();
    assert!(matches!(
        producer.publish("bad topic", b"x").await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        producer.publish("ok", b"").await,
        Err(Error::InvalidBody(_))
    ));
    assert!(matches!(
        producer.publish("ok", vec![0u8; 1024 * 1024 + 1]).await,
        Err(Error::InvalidBody(_))
    ));
    let none: [&[u8]; 0] = [];
    assert!(producer.multi_publish("ok", &none).await.is_err());
    producer.publish("ok", b"still fine").await.unwrap();
    let stats = cluster.stats(0, "ok", None).await.unwrap();
    assert_eq!(stats.topic("ok").unwrap().message_count, 2);
}

#[tokio::test]
async fn pointing_at_the_http_port_says_so() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer =
        Producer::new(cluster.nsqd_http(0).to_string(), ProducerConfig::default()).unwrap();
    let err = producer.publish("t", b"x").await.unwrap_err();
    assert!(matches!(err, Error::HttpPort(_)), "{err}");
    assert!(err.to_string().contains("HTTP port"), "{err}");
}

#[tokio::test]
async fn pipelined_publishes_each_get_their_own_result() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let p = producer.clone();
        tasks.push(tokio::spawn(async move {
            p.publish("pipe", format!("m{i}")).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = cluster.stats(0, "pipe", None).await.unwrap();
    assert_eq!(stats.topic("pipe").unwrap().message_count, 200);
}

/// A publish whose own deadline passes while it waits behind others on a healthy connection
/// fails alone: the connection and the publishes ahead of it carry on.
#[tokio::test]
async fn a_publish_timing_out_in_the_queue_does_not_fail_the_others() {
    // Every PUB waits for nsqd's fsync: a slow but healthy nsqd.
    let cluster = NsqCluster::start_with(ClusterOptions {
        nsqd: 1,
        nsqd_args: vec!["--mem-queue-size=0".into(), "--sync-every=1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let timeout = Duration::from_secs(2);
    let producer = Producer::new(
        cluster.nsqd_tcp(0).to_string(),
        ProducerConfig {
            publish_timeout: timeout,
            ..Default::default()
        },
    )
    .unwrap();
    // Enough publishes at once that the last ones wait longer than their timeout, however fast
    // this machine's fsync is.
    let began = Instant::now();
    for _ in 0..20 {
        producer.publish("queued", b"warm-up").await.unwrap();
    }
    let one = began.elapsed() / 20;
    let n = (timeout.as_micros() * 5 / one.as_micros().max(1)).clamp(500, 50_000) as usize;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let p = producer.clone();
            tokio::spawn(async move { p.publish("queued", b"m").await })
        })
        .collect();
    let (mut ok, mut timed_out) = (0u64, 0u64);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::Timeout(_)) => timed_out += 1,
            Err(e) => panic!("only timeouts may fail, got {e:?} ({ok} ok, {timed_out} timed out)"),
        }
    }
    assert!(
        timed_out > 0,
        "{n} publishes at {one:?} each all made it in time"
    );
    assert!(ok > 0);
    assert!(
        producer.is_connected().await,
        "the healthy connection stays"
    );
    let stats = cluster.stats(0, "queued", None).await.unwrap();
    let published = stats.topic("queued").unwrap().message_count - 20;
    assert!(published >= ok, "{published} published, {ok} acknowledged");
}

/// A connection to an nsqd that answers nothing (frozen) is dropped once a publish times out after a whole
/// publish timeout of silence, and the producer connects again once nsqd is back.
#[tokio::test]
async fn a_silent_nsqd_loses_its_connection_and_a_thawed_one_is_used_again() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = Producer::new(
        cluster.nsqd_tcp(0).to_string(),
        ProducerConfig {
            publish_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    producer.publish("silent", b"warm").await.unwrap();
    cluster.freeze(0).unwrap();
    // The first timeout can come just before a whole timeout of silence since its write; the second comes after
    // (a few more allowed, should the writer itself be late on a loaded machine).
    let mut dropped = false;
    for _ in 0..5 {
        let err = producer.publish("silent", b"m").await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        if !producer.is_connected().await {
            dropped = true;
            break;
        }
    }
    cluster.thaw(0).unwrap();
    assert!(dropped, "the silent connection was dropped");
    producer.publish("silent", b"after").await.unwrap();
}

#[tokio::test]
async fn requeue_redelivers_with_attempts_plus_one() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = Consumer::start("req", "test", direct(&cluster, 0), move |m: Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(m.attempts());
            if m.attempts() == 1 {
                m.requeue(Some(Duration::ZERO));
            }
            Ok(())
        }
    })
    .unwrap();
    producer.publish("req", b"again").await.unwrap();
    let first = recv(&mut rx).await;
    let second = recv(&mut rx).await;
    assert_eq!((first, second), (1, 2));
    consumer.stop(Duration::from_secs(5)).await;
    let stats = cluster.stats(0, "req", Some("test")).await.unwrap();
    assert_eq!(stats.channel("req", "test").unwrap().requeue_count, 1);
}

struct GivesUp {
    handled: Arc<AtomicUsize>,
    given_up: mpsc::UnboundedSender<u16>,
}

impl Handler for GivesUp {
    async fn handle(&self, _m: Message) -> Result<(), nsq::HandlerError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Err("always fails".into())
    }
    async fn give_up(&self, m: &Message) {
        let _ = self.given_up.send(m.attempts());
    }
}

#[tokio::test]
async fn max_attempts_gives_up_and_calls_the_hook() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let handled = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cfg = ConsumerConfig {
        max_attempts: 3,
        requeue_delay: Duration::from_millis(10),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..direct(&cluster, 0)
    };
    let consumer = Consumer::start(
        "giveup",
        "test",
        cfg,
        GivesUp {
            handled: Arc::clone(&handled),
            given_up: tx,
        },
    )
    .unwrap();
    producer.publish("giveup", b"poison").await.unwrap();
    let attempts = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        attempts, 4,
        "given up on the delivery after the 3rd attempt"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 3);
    eventually(
        Duration::from_secs(5),
        "the given-up message to be finished",
        || async { (consumer.stats().given_up == 1).then_some(()) },
    )
    .await;
    consumer.stop(Duration::from_secs(5)).await;
    let stats = cluster.stats(0, "giveup", Some("test")).await.unwrap();
    let ch = stats.channel("giveup", "test").unwrap();
    assert_eq!((ch.depth, ch.in_flight_count, ch.deferred_count), (0, 0, 0));
}

#[tokio::test]
async fn touch_keeps_a_message_past_a_short_msg_timeout() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let mut cfg = direct(&cluster, 0);
    cfg.conn.msg_timeout = Some(Duration::from_secs(1));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = Consumer::start("touch", "test", cfg, move |m: Message| {
        let tx = tx.clone();
        async move {
            // Work for 2.5 message timeouts, touching every 400 ms.
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                m.touch();
            }
            let _ = tx.send(m.attempts());
            Ok(())
        }
    })
    .unwrap();
    producer.publish("touch", b"slow work").await.unwrap();
    let attempts = recv(&mut rx).await;
    assert_eq!(attempts, 1);
    let report = consumer.stop(Duration::from_secs(5)).await;
    assert!(report.clean);
    let stats = cluster.stats(0, "touch", Some("test")).await.unwrap();
    let ch = stats.channel("touch", "test").unwrap();
    assert_eq!(ch.timeout_count, 0, "touch prevented the timeout");
    assert_eq!(ch.message_count, 1);
}

#[tokio::test]
async fn an_idle_consumer_survives_several_heartbeats() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = Producer::new(
        cluster.nsqd_tcp(0).to_string(),
        ProducerConfig {
            conn: nsq::Config {
                heartbeat_interval: Some(Duration::from_secs(1)),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let mut cfg = direct(&cluster, 0);
    cfg.conn.heartbeat_interval = Some(Duration::from_secs(1));
    let (consumer, mut rx) = collect("idle", cfg);
    producer.publish("idle", b"before").await.unwrap();
    recv(&mut rx).await;
    // nsqd closes a client that misses two heartbeats; stay idle for 4 intervals.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    producer.publish("idle", b"after").await.unwrap();
    assert_eq!(&recv(&mut rx).await.body()[..], b"after");
    let s = consumer.stats();
    assert_eq!(
        (s.connections, s.reconnects),
        (1, 0),
        "the connection never dropped"
    );
    consumer.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn graceful_stop_with_a_slow_handler_finishes_everything_exactly_once() {
    logs();
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let bodies: Vec<String> = (0..40).map(|i| format!("job-{i}")).collect();
    producer.multi_publish("drain", &bodies).await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let cfg = ConsumerConfig {
        max_in_flight: 8,
        concurrency: 4,
        ..direct(&cluster, 0)
    };
    let s = Arc::clone(&seen);
    let consumer = Consumer::start("drain", "test", cfg, move |m: Message| {
        let s = Arc::clone(&s);
        async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            s.lock()
                .unwrap()
                .push(String::from_utf8(m.body().to_vec()).unwrap());
            Ok(())
        }
    })
    .unwrap();
    eventually(Duration::from_secs(10), "handlers to be busy", || async {
        (consumer.stats().in_flight >= 4).then_some(())
    })
    .await;
    let report = consumer.stop(Duration::from_secs(10)).await;
    assert!(report.clean, "{report:?}");
    assert!(report.drained >= 4, "{report:?}");
    let stats = cluster.stats(0, "drain", Some("test")).await.unwrap();
    let ch = stats.channel("drain", "test").unwrap();
    assert_eq!(
        (ch.in_flight_count, ch.timeout_count, ch.requeue_count),
        (0, 0, 0),
        "{ch:?}"
    );
    let handled = seen.lock().unwrap().clone();
    assert_eq!(
        ch.depth as usize + handled.len(),
        40,
        "every message is handled or still queued"
    );
    let mut unique = handled.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), handled.len(), "no message handled twice");

    // A second consumer takes the rest; nothing finished before is redelivered.
    let (rest, mut rx) = collect(
        "drain",
        ConsumerConfig {
            max_in_flight: 50,
            ..direct(&cluster, 0)
        },
    );
    let mut all = handled;
    for _ in 0..ch.depth {
        all.push(String::from_utf8(recv(&mut rx).await.body().to_vec()).unwrap());
    }
    rest.stop(Duration::from_secs(5)).await;
    all.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(all, want, "exactly once each");
}

#[tokio::test]
async fn max_in_flight_can_change_at_runtime() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let (consumer, _rx) = collect(
        "mif",
        ConsumerConfig {
            max_in_flight: 1,
            ..direct(&cluster, 0)
        },
    );
    let ready = |want: i64| {
        let cluster = &cluster;
        async move {
            let s = cluster.stats(0, "mif", Some("test")).await.ok()?;
            let c = s.channel("mif", "test")?.clients.first()?.ready_count;
            (c == want).then_some(())
        }
    };
    eventually(Duration::from_secs(10), "RDY 1", || ready(1)).await;
    consumer.set_max_in_flight(25);
    eventually(Duration::from_secs(10), "RDY 25", || ready(25)).await;
    assert_eq!(consumer.stats().max_in_flight, 25);
    consumer.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn without_auto_response_messages_stay_in_flight_until_answered_from_another_thread() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let (tx, rx) = std::sync::mpsc::channel::<Message>();
    let cfg = ConsumerConfig {
        max_in_flight: 10,
        auto_response: false,
        ..direct(&cluster, 0)
    };
    let consumer = Consumer::start("manual", "test", cfg, move |m: Message| {
        let tx = tx.clone();
        async move {
            tx.send(m).unwrap();
            Ok(())
        }
    })
    .unwrap();
    producer
        .multi_publish("manual", &[&b"a"[..], b"b", b"c"])
        .await
        .unwrap();
    let in_flight = || async {
        let s = cluster.stats(0, "manual", Some("test")).await.ok()?;
        Some(s.channel("manual", "test")?.in_flight_count)
    };
    eventually(
        Duration::from_secs(10),
        "three messages held in flight",
        || async { (in_flight().await? == 3).then_some(()) },
    )
    .await;
    // A plain thread (like a database writer) answers them after its "commit".
    let answered = tokio::task::spawn_blocking(move || (0..3).all(|_| rx.recv().unwrap().finish()));
    assert!(answered.await.unwrap());
    eventually(Duration::from_secs(10), "nothing in flight", || async {
        (in_flight().await? == 0).then_some(())
    })
    .await;
    assert!(consumer.stop(Duration::from_secs(5)).await.clean);
    let stats = cluster.stats(0, "manual", Some("test")).await.unwrap();
    let ch = stats.channel("manual", "test").unwrap();
    assert_eq!((ch.depth, ch.requeue_count, ch.timeout_count), (0, 0, 0));
}
