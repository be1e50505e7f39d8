//! Hostile and broken heartbeats: rejected, counted by reason, finished, and the registry stays right.

mod common;

use std::time::Duration;

use common::*;
use discovery::{Heartbeat, HmacKey};
use testkit::NsqCluster;

const KEY: &[u8] = b"test-shared-secret";

fn rejected(reason: &str) -> String {
    format!("api_heartbeats_total{{outcome=\"rejected\",reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unsigned_and_self_heartbeats_are_rejected_and_counted() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("heartbeat.key");
    std::fs::write(&key_file, [KEY, b"\n"].concat()).unwrap();
    let open = api_server(&cluster, "10s", &["server.instance=open"]).await;
    let keyed = api_server(
        &cluster,
        "10s",
        &[
            "server.instance=keyed",
            &format!("discovery.hmac_key_file={}", key_file.display()),
        ],
    )
    .await;
    for api in [&open, &keyed] {
        wait_subscribed(api, 1).await;
    }

    let mut signed = Heartbeat::new("data-signed", "127.0.0.1:19101", 1, 1);
    // With a key, the signed sent_at_ms must be recent (replay protection).
    signed.sent_at_ms = now_ms();
    signed.sign(&HmacKey::from_bytes(KEY).unwrap());
    let unsigned = Heartbeat::new("data-unsigned", "127.0.0.1:19102", 1, 1);
    let own_open = Heartbeat::new("self-open", open.proxy().to_string(), 1, 1);
    let own_keyed_admin = {
        let mut hb = Heartbeat::new("self-keyed", keyed.admin().to_string(), 1, 1);
        hb.sent_at_ms = now_ms();
        hb.sign(&HmacKey::from_bytes(KEY).unwrap());
        hb
    };
    let huge = vec![b'x'; 1024 * 1024];
    let bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        huge,
        br#"{"v":1,"id":5,"addr":"127.0.0.1:1","epoch":1,"seq":1,"sent_at_ms":1,"interval_ms":1,"state":"up"}"#
            .to_vec(),
        br#"{"v":1,"id":"x","addr":["127.0.0.1:1"],"epoch":1,"seq":1,"sent_at_ms":1,"interval_ms":1,"state":"up"}"#.to_vec(),
        br#"[1,2,3]"#.to_vec(),
        own_open.encode(),
        own_keyed_admin.encode(),
        unsigned.encode(),
        b"127.0.0.1:19103".to_vec(),
        signed.encode(),
    ];
    for body in &bodies {
        publish(&cluster, 0, body).await;
    }

    // The open api-server takes everything well-formed except its own address.
    open.wait_registry(SOON, "the three valid servers", |d| {
        d["servers"].as_array().unwrap().len() == 4
    })
    .await
    .unwrap();
    let ids = open.server_ids().await.unwrap();
    assert_eq!(
        ids,
        [
            "127.0.0.1:19103",
            "data-signed",
            "data-unsigned",
            "self-keyed"
        ],
        "the keyed api-server's address is just a server to the open one"
    );
    assert_eq!(
        wait_metric(&open, &rejected("self_address"), 1.0).await,
        1.0
    );
    assert_eq!(wait_metric(&open, &rejected("too_large"), 1.0).await, 1.0);
    assert_eq!(wait_metric(&open, &rejected("bad_json"), 1.0).await, 1.0);
    assert_eq!(wait_metric(&open, &rejected("not_utf8"), 1.0).await, 1.0);
    let m = open.metrics().await.unwrap();
    assert_eq!(
        wait_metric(&open, &rejected("wrong_type"), 3.0).await,
        3.0,
        "{m}"
    );

    // The keyed one: only the signed server; unsigned JSON and plain bodies are refused, and so is its own address.
    keyed
        .wait_registry(SOON, "only the signed server", |d| {
            d["servers"].as_array().unwrap().len() == 1
        })
        .await
        .unwrap();
    assert_eq!(keyed.server_ids().await.unwrap(), ["data-signed"]);
    assert_eq!(wait_metric(&keyed, &rejected("unsigned"), 3.0).await, 3.0);
    assert_eq!(
        wait_metric(&keyed, &rejected("self_address"), 1.0).await,
        1.0
    );

    // Every message was finished: nothing waits for redelivery on either channel.
    let stats = cluster.stats(0, TOPIC, None).await.unwrap();
    let topic = stats.topic(TOPIC).unwrap();
    for channel in &topic.channels {
        assert_eq!(channel.depth, 0, "{channel:?}");
        assert_eq!(channel.in_flight_count, 0, "{channel:?}");
        assert_eq!(channel.requeue_count, 0, "{channel:?}");
    }
    // Rejections are logged, rate-limited: far fewer lines than messages.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = open.log().matches("heartbeat rejected").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} rejection lines:\n{}",
        open.log()
    );
}
