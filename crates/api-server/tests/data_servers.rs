//! Discovery of real data-server processes: join, crash (SIGKILL) and graceful leave (SIGTERM).

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::{NsqCluster, Signal};

fn listed(doc: &serde_json::Value, id: &str) -> bool {
    doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_server_joins_within_one_hop_and_leaves_at_once_on_sigterm() {
    let cluster = NsqCluster::start(2).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    wait_subscribed(&api, 2).await;
    // A 5 s interval: showing up well within it proves the first heartbeat did it.
    let mut server = data_server(&cluster, "ds-1", "5s").await;
    let started = Instant::now();
    let doc = api
        .wait_registry(SOON, "ds-1 to join", |d| listed(d, "ds-1"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "joined after {:?}",
        started.elapsed()
    );
    assert_eq!(doc["servers"][0]["addr"], server.addr());

    server.signal(Signal::SIGTERM).unwrap();
    let stopped = Instant::now();
    api.wait_registry(SOON, "ds-1 to leave", |d| !listed(d, "ds-1"))
        .await
        .unwrap();
    let left_after = stopped.elapsed();
    assert!(
        left_after < Duration::from_secs(2),
        "left after {left_after:?} (TTL 10s)"
    );
    let status = server.wait_exit(SOON).await.unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        wait_metric(&api, "api_registry_events_total{kind=\"leave\"}", 1.0).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_data_server_expires_within_ttl_plus_prune_not_before_the_ttl() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let ttl = Duration::from_secs(2);
    let prune = Duration::from_millis(100);
    let interval = Duration::from_millis(300);
    let api = api_server(&cluster, "2s", &[]).await;
    let mut server = data_server(&cluster, "ds-kill", "300ms").await;
    api.wait_registry(SOON, "ds-kill to join", |d| listed(d, "ds-kill"))
        .await
        .unwrap();
    // Let it heartbeat a few times, then crash it.
    api.wait_registry(SOON, "three heartbeats of ds-kill", |d| {
        find_server(d, "ds-kill").is_some_and(|s| s["seq"].as_u64() >= Some(3))
    })
    .await
    .unwrap();
    server.kill();
    let killed = Instant::now();
    api.wait_registry(SOON, "ds-kill to expire", |d| !listed(d, "ds-kill"))
        .await
        .unwrap();
    let gone_after = killed.elapsed();
    // Its last heartbeat left at most one interval before the kill.
    assert!(
        gone_after + interval + Duration::from_millis(50) >= ttl,
        "expired after {gone_after:?}, before the TTL"
    );
    assert!(
        gone_after <= ttl + prune + Duration::from_secs(1),
        "expired after {gone_after:?}"
    );
    assert_eq!(
        wait_metric(&api, "api_registry_events_total{kind=\"expire\"}", 1.0).await,
        1.0
    );
}
