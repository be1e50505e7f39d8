//! The consumer and producer against several nsqd, nsqlookupd, and nsqd failures.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{
    collect, consumer_config, eventually, logs, nsqd_addresses, producer_to, recv_within,
};
use nsq::{ConsumerConfig, Message, Producer, ProducerConfig, Publisher};
use testkit::{NsqCluster, NsqTail, to_nsq};
use tokio::sync::mpsc;

async fn recv(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    recv_within(rx, Duration::from_secs(15)).await
}

#[tokio::test]
async fn a_consumer_through_lookupd_gets_messages_from_two_nsqd() {
    logs();
    let cluster = NsqCluster::start(2).await.unwrap();
    // The topic must exist on both nsqd for lookupd to list them.
    for i in 0..2 {
        cluster.create_topic(i, "both", None).await.unwrap();
    }
    let cfg = ConsumerConfig {
        lookupd_http_addresses: vec![cluster.lookupd_http().to_string()],
        max_in_flight: 10,
        ..consumer_config()
    };
    let (consumer, mut rx) = collect("both", cfg);
    eventually(Duration::from_secs(10), "two connections", || async {
        (consumer.stats().connections == 2).then_some(())
    })
    .await;
    for i in 0..2 {
        let p = producer_to(&cluster, i);
        p.publish("both", format!("from nsqd{i}")).await.unwrap();
    }
    let mut sources = HashSet::new();
    let mut bodies = HashSet::new();
    for _ in 0..2 {
        let m = recv(&mut rx).await;
        sources.insert(m.nsqd_address().to_string());
        bodies.insert(String::from_utf8(m.body().to_vec()).unwrap());
    }
    assert_eq!(sources.len(), 2, "one message from each nsqd: {sources:?}");
    assert_eq!(
        bodies,
        HashSet::from(["from nsqd0".to_string(), "from nsqd1".to_string()])
    );
    consumer.stop(Duration::from_secs(5)).await;
}

/// `#` would start a URL fragment: unencoded, `eph#ephemeral` reached nsqlookupd as `eph`.
#[tokio::test]
async fn lookupd_is_asked_about_an_ephemeral_topic_by_its_whole_name() {
    let cluster = NsqCluster::start(2).await.unwrap();
    // nsqd 0 has only `eph`, nsqd 1 only `eph#ephemeral` (a PUB creates it).
    cluster.create_topic(0, "eph", None).await.unwrap();
    let producer = producer_to(&cluster, 1);
    producer.publish("eph#ephemeral", "x").await.unwrap();
    let lookupd = nsq::Lookupd::new(Duration::from_secs(5)).unwrap();
    let addr = cluster.lookupd_http().to_string();
    let (ephemeral, plain) = eventually(Duration::from_secs(10), "both topics listed", || async {
        let ephemeral = lookupd.lookup(&addr, "eph#ephemeral").await.unwrap();
        let plain = lookupd.lookup(&addr, "eph").await.unwrap();
        (!ephemeral.is_empty() && !plain.is_empty()).then_some((ephemeral, plain))
    })
    .await;
    assert_eq!(ephemeral, vec![cluster.nsqd_tcp(1).to_string()]);
    assert_eq!(plain, vec![cluster.nsqd_tcp(0).to_string()]);
    producer.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn ready_counts_never_sum_above_max_in_flight() {
    let cluster = NsqCluster::start(4).await.unwrap();
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: nsqd_addresses(&cluster),
        max_in_flight: 2,
        rdy_redistribute_interval: Duration::from_millis(200),
        low_rdy_idle_timeout: Duration::from_millis(300),
        ..consumer_config()
    };
    let (consumer, mut rx) = collect("rdy", cfg);
    eventually(Duration::from_secs(10), "four connections", || async {
        (consumer.stats().connections == 4).then_some(())
    })
    .await;
    // Publish to all four while sampling RDY: messages from every nsqd still arrive.
    let publisher = Publisher::new(&nsqd_addresses(&cluster), ProducerConfig::default()).unwrap();
    for i in 0..4 {
        let p = producer_to(&cluster, i);
        p.publish("rdy", format!("n{i}")).await.unwrap();
    }
    let mut max_sum = 0;
    let mut samples = 0;
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (samples < 30 || got < 4) && tokio::time::Instant::now() < deadline {
        // Each nsqd answers at its own moment, and a redistribution (RDY 0 to one connection, RDY 1 to another)
        // reaches the two nsqd in any order: one sample can count a moving RDY twice. A consumer that grants
        // too much keeps doing so, so an excess must show in three samples in a row to count.
        let mut sum = rdy_sum(&cluster).await;
        for _ in 0..2 {
            if sum <= 2 {
                break;
            }
            sum = sum.min(rdy_sum(&cluster).await);
        }
        max_sum = max_sum.max(sum);
        samples += 1;
        publisher.publish("rdy", b"more").await.unwrap();
        while let Ok(m) = rx.try_recv() {
            if !m.body().starts_with(b"more") {
                got += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got >= 4, "messages from every nsqd arrived ({got})");
    assert!(
        max_sum <= 2,
        "sum of RDY over 4 nsqd reached {max_sum} > max_in_flight 2"
    );
    assert!(max_sum >= 1, "some RDY was granted");
    consumer.stop(Duration::from_secs(5)).await;
}

/// The RDY counts of channel `test` of topic `rdy` over the four nsqd, asked at once.
async fn rdy_sum(cluster: &NsqCluster) -> i64 {
    let stats =
        futures::future::join_all((0..4).map(|i| cluster.stats(i, "rdy", Some("test")))).await;
    stats
        .into_iter()
        .map(|s| {
            s.unwrap()
                .channel("rdy", "test")
                .map_or(0, |c| c.clients.iter().map(|c| c.ready_count).sum::<i64>())
        })
        .sum()
}

#[tokio::test]
async fn producer_and_consumer_recover_when_nsqd_is_killed_and_restarted() {
    logs();
    let mut cluster = NsqCluster::start(1).await.unwrap();
    let producer = Producer::new(
        cluster.nsqd_tcp(0).to_string(),
        ProducerConfig {
            publish_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        ..consumer_config()
    };
    let (consumer, mut rx) = collect("crash", cfg);
    producer.publish("crash", b"before").await.unwrap();
    assert_eq!(&recv(&mut rx).await.body()[..], b"before");

    cluster.kill(0);
    assert!(
        producer.publish("crash", b"while down").await.is_err(),
        "publishing to a dead nsqd fails"
    );
    eventually(
        Duration::from_secs(10),
        "the consumer to notice",
        || async { (consumer.stats().connections == 0).then_some(()) },
    )
    .await;
    cluster.restart(0).await.unwrap();

    // The next publish reconnects by itself; the consumer reconnects with backoff.
    eventually(
        Duration::from_secs(15),
        "a publish to succeed again",
        || async { producer.publish("crash", b"after").await.ok() },
    )
    .await;
    assert_eq!(&recv(&mut rx).await.body()[..], b"after");
    let s = consumer.stats();
    assert_eq!(s.connections, 1);
    assert!(s.reconnects >= 1, "{s:?}");
    consumer.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_frozen_nsqd_times_publishes_out_and_the_publisher_fails_over() {
    let cluster = NsqCluster::start(2).await.unwrap();
    let addrs: Vec<String> = nsqd_addresses(&cluster);
    let publisher = Publisher::new(
        &addrs,
        ProducerConfig {
            publish_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..4 {
        publisher.publish("frozen", b"warm").await.unwrap();
    }
    cluster.freeze(0).unwrap();
    for n in 0..10 {
        let took = publisher.publish("frozen", format!("m{n}")).await.unwrap();
        assert_eq!(took, addrs[1], "only the live nsqd can take messages");
    }
    cluster.thaw(0).unwrap();
    let s = cluster.stats(1, "frozen", None).await.unwrap();
    assert!(s.topic("frozen").unwrap().message_count >= 10);
}

#[tokio::test]
async fn interop_with_to_nsq_and_nsq_tail() {
    let cluster = NsqCluster::start(1).await.unwrap();
    cluster.create_topic(0, "interop", None).await.unwrap();
    // Theirs -> ours.
    let cfg = ConsumerConfig {
        nsqd_tcp_addresses: vec![cluster.nsqd_tcp(0).to_string()],
        ..consumer_config()
    };
    let (consumer, mut rx) = collect("interop", cfg);
    eventually(
        Duration::from_secs(10),
        "our consumer to subscribe",
        || async { (consumer.stats().connections == 1).then_some(()) },
    )
    .await;
    to_nsq(
        cluster.nsqd_tcp(0),
        "interop",
        &["from to_nsq 1", "from to_nsq 2"],
    )
    .await
    .unwrap();
    let mut got = vec![
        String::from_utf8(recv(&mut rx).await.body().to_vec()).unwrap(),
        String::from_utf8(recv(&mut rx).await.body().to_vec()).unwrap(),
    ];
    got.sort();
    assert_eq!(got, ["from to_nsq 1", "from to_nsq 2"]);
    consumer.stop(Duration::from_secs(5)).await;

    // Ours -> theirs.
    cluster.create_topic(0, "interop2", None).await.unwrap();
    let tail = NsqTail::start(cluster.nsqd_tcp(0), "interop2", 3).unwrap();
    eventually(Duration::from_secs(10), "nsq_tail to subscribe", || async {
        let s = cluster.stats(0, "interop2", None).await.ok()?;
        s.topic("interop2")?
            .channels
            .iter()
            .any(|c| c.client_count > 0)
            .then_some(())
    })
    .await;
    let producer = producer_to(&cluster, 0);
    producer.publish("interop2", b"one").await.unwrap();
    producer
        .multi_publish("interop2", &[&b"two"[..], b"three"])
        .await
        .unwrap();
    assert_eq!(
        tail.finish(Duration::from_secs(15)).await.unwrap(),
        ["one", "two", "three"]
    );
}
