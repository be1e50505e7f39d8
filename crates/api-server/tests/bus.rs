//! Self-preservation: when NSQ stops delivering, the registry keeps its servers and says so, and returns to
//! normal on its own when the bus is back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::NsqCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nsqd_down_for_three_ttls_keeps_the_servers_and_says_so() {
    let mut cluster = NsqCluster::start(2).await.unwrap();
    create_topic(&cluster).await;
    // The bus must be found down (canary timeout + one interval) before a server's TTL runs out.
    let ttl = Duration::from_secs(3);
    let api = api_server(
        &cluster,
        "3s",
        &[
            "discovery.canary_interval=200ms",
            "discovery.canary_timeout=1s",
        ],
    )
    .await;
    let announcers: Vec<Announcer> = (0..2)
        .map(|n| {
            let addr = format!("127.0.0.1:{}", 19201 + n);
            announcer(
                &cluster,
                &format!("data-{n}"),
                &addr,
                Duration::from_millis(300),
            )
        })
        .collect();
    let both = |d: &serde_json::Value| d["servers"].as_array().is_some_and(|s| s.len() == 2);
    api.wait_registry(SOON, "both servers and a live bus", |d| {
        both(d)
            && d["bus"]["alive"] == true
            && d["bus"]["nsqd"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["delivering"] == true)
                .count()
                == 2
    })
    .await
    .unwrap();
    assert_eq!(api.metric("api_bus_alive").await.unwrap(), 1.0);
    // Each nsqd's clock, measured by the canary: the same host's, so within the trip to nsqd and back.
    let doc = api
        .wait_registry(SOON, "both clocks measured", |d| {
            d["bus"]["nsqd"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["clock_offset_ms"].is_i64())
        })
        .await
        .unwrap();
    for n in doc["bus"]["nsqd"].as_array().unwrap() {
        let offset = n["clock_offset_ms"].as_i64().unwrap();
        assert!((-1000..1000).contains(&offset), "{n}");
    }

    cluster.kill(0);
    cluster.kill(1);
    let killed = Instant::now();
    let doc = api
        .wait_registry(SOON, "self-preservation", |d| {
            d["self_preservation"] == true
        })
        .await
        .unwrap();
    assert!(both(&doc), "servers kept when the bus went down: {doc}");
    assert_eq!(doc["bus"]["alive"], false);
    assert!(
        killed.elapsed() < ttl,
        "bus loss noticed after {:?}",
        killed.elapsed()
    );

    // Three TTLs without a single heartbeat: nobody expires, and the registry says why.
    let mut held_seen = false;
    while killed.elapsed() < 3 * ttl {
        let doc = api.registry().await.unwrap();
        assert!(both(&doc), "a server expired while the bus was down: {doc}");
        assert_eq!(doc["self_preservation"], true, "{doc}");
        held_seen |= doc["servers"][0]["state"] == "held";
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held_seen, "servers past their TTL show as held");
    assert_eq!(api.metric("api_self_preservation").await.unwrap(), 1.0);
    assert_eq!(
        api.metric("api_registry_events_total{kind=\"expire\"}")
            .await
            .unwrap(),
        0.0
    );

    cluster.restart(0).await.unwrap();
    cluster.restart(1).await.unwrap();
    let doc = api
        .wait_registry(SOON, "the bus back and fresh heartbeats", |d| {
            d["self_preservation"] == false
                && both(d)
                && d["servers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["state"] == "up" && s["last_seen_ms"].as_u64().unwrap() < 1000)
        })
        .await
        .unwrap();
    assert_eq!(doc["bus"]["alive"], true);
    // Back to normal means expiry works again: a crash now expires within the TTL.
    let mut announcers = announcers.into_iter();
    announcers.next().unwrap().crash().await;
    api.wait_registry(SOON, "data-0 to expire after the recovery", |d| {
        d["servers"].as_array().unwrap().len() == 1
    })
    .await
    .unwrap();
    assert_eq!(api.metric("api_bus_down_total").await.unwrap(), 1.0);
}
