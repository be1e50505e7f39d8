//! Consumer behaviour under busy handlers, failing handlers, and hostile peers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{consumer_config, eventually, producer_to};
use nsq::{Consumer, ConsumerConfig, Error, Message, Producer, ProducerConfig};
use testkit::NsqCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn heartbeats_are_answered_while_every_handler_is_busy() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let mut cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        ..consumer_config()
    };
    cfg.conn.heartbeat_interval = Some(Duration::from_secs(1));
    cfg.conn.msg_timeout = Some(Duration::from_secs(30));
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    // One handler task, blocked for 3.5 heartbeat intervals: nsqd drops clients that miss two.
    let consumer = Consumer::start("busy", "test", cfg, move |_m: Message| {
        let d = Arc::clone(&d);
        async move {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            d.store(true, Ordering::SeqCst);
            Ok(())
        }
    })
    .unwrap();
    producer.publish("busy", b"long job").await.unwrap();
    eventually(
        Duration::from_secs(15),
        "the long job to finish",
        || async { done.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    let s = consumer.stats();
    assert_eq!(
        (s.connections, s.reconnects),
        (1, 0),
        "the connection survived: {s:?}"
    );
    consumer.stop(Duration::from_secs(5)).await;
    let stats = cluster.stats(0, "busy", Some("test")).await.unwrap();
    let ch = stats.channel("busy", "test").unwrap();
    assert_eq!(
        (ch.message_count, ch.requeue_count, ch.timeout_count),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn failing_handlers_pause_deliveries_then_probe_and_recover() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let producer = producer_to(&cluster, 0);
    let failing = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&failing);
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        max_in_flight: 10,
        backoff_base: Duration::from_millis(400),
        backoff_max: Duration::from_secs(2),
        requeue_delay: Duration::from_millis(50),
        max_attempts: 0,
        ..consumer_config()
    };
    let consumer = Consumer::start("flaky", "test", cfg, move |_m: Message| {
        let f = Arc::clone(&f);
        async move {
            if f.load(Ordering::SeqCst) {
                Err("downstream is down".into())
            } else {
                Ok(())
            }
        }
    })
    .unwrap();
    let rdy = || async {
        let s = cluster.stats(0, "flaky", Some("test")).await.ok()?;
        Some(s.channel("flaky", "test")?.clients.first()?.ready_count)
    };
    eventually(Duration::from_secs(10), "RDY 10", || async {
        (rdy().await? == 10).then_some(())
    })
    .await;
    producer.publish("flaky", b"m").await.unwrap();
    eventually(
        Duration::from_secs(10),
        "RDY 0 while backing off",
        || async { (rdy().await? == 0).then_some(()) },
    )
    .await;
    assert!(consumer.stats().backoff_level >= 1);
    // While failing, only a single-message probe is ever allowed.
    let mut every = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..10 {
        every.tick().await;
        assert!(rdy().await.unwrap() <= 1, "backoff allows at most RDY 1");
    }
    failing.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(20),
        "full RDY after recovery",
        || async { (rdy().await? == 10 && consumer.stats().backoff_level == 0).then_some(()) },
    )
    .await;
    let report = consumer.stop(Duration::from_secs(5)).await;
    assert!(report.clean);
    let stats = cluster.stats(0, "flaky", Some("test")).await.unwrap();
    let ch = stats.channel("flaky", "test").unwrap();
    assert_eq!(
        (ch.depth, ch.in_flight_count, ch.deferred_count),
        (0, 0, 0),
        "the message was finally handled"
    );
    assert!(ch.requeue_count >= 1);
}

/// A peer that speaks garbage: huge frame sizes, unknown frame types, early close.
async fn hostile(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
            let _ = s.shutdown().await;
        }
    });
    addr
}

#[tokio::test]
async fn hostile_peers_give_errors_not_panics() {
    type Expect = fn(&Error) -> bool;
    let cases: [(&'static [u8], Expect); 4] = [
        (b"\xff\xff\xff\xf0\x00\x00\x00\x00", |e| {
            matches!(e, Error::FrameTooLarge { .. })
        }),
        (b"\x00\x00\x00\x06\x00\x00\x00\x09OK", |e| {
            matches!(e, Error::Malformed(_))
        }),
        (b"\x00\x00\x00\x02\x00\x00", |e| {
            matches!(e, Error::Malformed(_))
        }),
        (b"\x00\x00\x00\x10\x00\x00\x00\x00{\"max_rdy_", |e| {
            matches!(e, Error::Closed | Error::Malformed(_))
        }),
    ];
    for (reply, expected) in cases {
        let addr = hostile(reply).await;
        let p = Producer::new(addr.to_string(), ProducerConfig::default()).unwrap();
        let err = p.publish("t", b"x").await.unwrap_err();
        assert!(expected(&err), "{reply:?} gave {err:?}");
    }
    // A consumer keeps retrying a hostile peer without crashing.
    let addr = hostile(b"\x00\x00\x00\x06\x00\x00\x00\x01E_BAD").await;
    let c = Consumer::start(
        "t",
        "c",
        ConsumerConfig {
            nsqd_tcp_addresses: vec![addr.to_string()],
            ..consumer_config()
        },
        |_m: Message| async { Ok(()) },
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "several refused attempts",
        || async { (c.stats().connect_failures >= 3).then_some(()) },
    )
    .await;
    assert_eq!(c.stats().connections, 0);
    assert!(c.stop(Duration::from_secs(1)).await.clean);
}
