//! A rough measurement, not a check (`cargo test -p api-server --test latency -- --ignored --nocapture`): time from
//! publishing a heartbeat to its server showing in `/registry`, and from a `leaving` heartbeat to its removal. The
//! real benchmark is `cargo xtask bench discovery-latency`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use discovery::{Heartbeat, State};
use testkit::NsqCluster;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it on purpose"]
async fn measure_join_and_leave_latency() {
    let cluster = NsqCluster::start(2).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &["proxy.access_log=false"]).await;
    api.wait_registry(SOON, "subscribed", |d| {
        d["bus"]["heartbeat_connections"] == 2
    })
    .await
    .unwrap();
    let producers: Vec<nsq::Producer> = (0..2)
        .map(|i| nsq::Producer::new(cluster.nsqd_tcp(i).to_string(), Default::default()).unwrap())
        .collect();
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for n in 0..50u64 {
        let id = format!("lat-{n}");
        let producer = &producers[n as usize % 2];
        let mut hb = Heartbeat::new(id.clone(), format!("127.0.0.1:{}", 20000 + n), 1, 1);
        let started = Instant::now();
        producer.publish(TOPIC, hb.encode()).await.unwrap();
        while !api.server_ids().await.unwrap().contains(&id) {}
        joins.push(started.elapsed());
        hb.seq = 2;
        hb.state = State::Leaving;
        let started = Instant::now();
        producer.publish(TOPIC, hb.encode()).await.unwrap();
        while api.server_ids().await.unwrap().contains(&id) {}
        leaves.push(started.elapsed());
    }
    joins.sort();
    leaves.sort();
    eprintln!(
        "join: p50 {:?} p99 {:?}; leave: p50 {:?} p99 {:?} (n=50, includes one /registry poll)",
        percentile(&joins, 0.5),
        percentile(&joins, 0.99),
        percentile(&leaves, 0.5),
        percentile(&leaves, 0.99)
    );
}
