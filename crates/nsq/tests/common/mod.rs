//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use nsq::{Config, Consumer, ConsumerConfig, Message, Producer, ProducerConfig};
use testkit::NsqCluster;
use tokio::sync::mpsc;

pub use testkit::eventually;

/// A producer with the default settings for nsqd `i` of `cluster`.
pub fn producer_to(cluster: &NsqCluster, i: usize) -> Producer {
    Producer::new(cluster.nsqd_tcp(i).to_string(), ProducerConfig::default()).unwrap()
}

/// Every nsqd of `cluster`, as the clients take addresses.
pub fn nsqd_addresses(cluster: &NsqCluster) -> Vec<String> {
    cluster
        .nsqd_tcp_addresses()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The next item `rx` gets; fails the test when none comes `within`, or the senders are gone.
pub async fn recv_within<T>(rx: &mut mpsc::UnboundedReceiver<T>, within: Duration) -> T {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing received within {within:?}"))
        .expect("a sender is still there")
}

/// A consumer configuration for tests: fast reconnects and lookups.
pub fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        conn: Config {
            heartbeat_interval: Some(Duration::from_secs(2)),
            ..Default::default()
        },
        lookupd_poll_interval: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Initialises test logging once (RUST_LOG controls it).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A consumer on channel `test` that forwards every message to a channel and finishes it.
pub fn collect(topic: &str, cfg: ConsumerConfig) -> (Consumer, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let consumer = Consumer::start(topic, "test", cfg, move |m: Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(m);
            Ok(())
        }
    })
    .unwrap();
    (consumer, rx)
}
