//! Replayed signed heartbeats through the real bus: a captured heartbeat published again can neither roll a
//! server's seq back nor bring back a server that left or crashed, and each replay is counted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use discovery::{Heartbeat, HmacKey, State};
use testkit::{NsqCluster, eventually};

const KEY: &[u8] = b"hostile-test-key";
const SIGNED_TOPIC: &str = "replay_signed";

fn signed(key: &HmacKey, id: &str, epoch: u64, seq: u64, state: State) -> Vec<u8> {
    let mut hb = Heartbeat::new(id, "127.0.0.1:19990", epoch, seq);
    hb.sent_at_ms = now_ms();
    hb.state = state;
    hb.sign(key);
    hb.encode()
}

/// A captured signed heartbeat published again can neither roll a server's seq back, nor bring back a server that
/// left or crashed: ordering and the tombstone refuse it within one TTL, the signed `sent_at_ms` after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_signed_heartbeats_revive_nothing() {
    const TTL: Duration = Duration::from_secs(2);
    let cluster = NsqCluster::start(1).await.unwrap();
    cluster.create_topic(0, SIGNED_TOPIC, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("heartbeat.key");
    std::fs::write(&key_file, KEY).unwrap();
    let mut api = api_server(
        &cluster,
        "2s",
        &[
            "server.instance=replay",
            &format!("discovery.topic={SIGNED_TOPIC}"),
            &format!("discovery.hmac_key_file={}", key_file.display()),
        ],
    )
    .await;
    wait_subscribed(&api, 1).await;
    let key = HmacKey::from_bytes(KEY).unwrap();
    let out = Publisher::new(&cluster);
    let epoch = now_ms();
    let count = |outcome: &'static str, reason: Option<&'static str>| {
        let api = &api;
        async move {
            api.metric(&heartbeat_sample(outcome, reason))
                .await
                .unwrap_or(0.0)
        }
    };
    let seq_of = |id: &'static str| {
        let api = &api;
        async move {
            let doc = api.registry().await.ok()?;
            find_server(&doc, id).map(|s| s["seq"].as_u64().unwrap_or(0))
        }
    };

    // "leaver" leaves gracefully; "crasher" goes silent. Both captures are taken at the start.
    let leaver_captured = signed(&key, "leaver", epoch, 1, State::Up);
    let crasher_captured = signed(&key, "crasher", epoch, 1, State::Up);
    out.publish(SIGNED_TOPIC, &leaver_captured).await;
    out.publish(SIGNED_TOPIC, &crasher_captured).await;
    out.publish(SIGNED_TOPIC, &signed(&key, "leaver", epoch, 2, State::Up))
        .await;
    eventually(SOON, "leaver at seq 2", || async {
        (seq_of("leaver").await == Some(2)).then_some(())
    })
    .await;

    // No seq rollback: the replay is out of order.
    out.publish(SIGNED_TOPIC, &leaver_captured).await;
    eventually(SOON, "the replay counted as out of order", || async {
        (count("ignored", Some("out_of_order")).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(seq_of("leaver").await, Some(2));

    // A forged seq (re-signed without the key) is refused by the signature.
    let forged = String::from_utf8(signed(&key, "leaver", epoch, 3, State::Up))
        .unwrap()
        .replace("\"seq\":3", "\"seq\":99");
    out.publish(SIGNED_TOPIC, forged.as_bytes()).await;

    out.publish(
        SIGNED_TOPIC,
        &signed(&key, "leaver", epoch, 3, State::Leaving),
    )
    .await;
    let left_at = Instant::now();
    eventually(SOON, "leaver gone", || async {
        (seq_of("leaver").await.is_none()).then_some(())
    })
    .await;

    // Replay the capture again and again until well after the tombstone (one TTL after the leave) is gone. It never
    // brings the server back. Then replay the crasher's, once it expired (one TTL after its only heartbeat).
    let mut replays = 0.0;
    while left_at.elapsed() < TTL + Duration::from_millis(500) {
        out.publish(SIGNED_TOPIC, &leaver_captured).await;
        replays += 1.0;
        let ids = api.server_ids().await.unwrap();
        assert!(
            !ids.contains(&"leaver".to_owned()),
            "the replay revived leaver: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(SOON, "crasher expired", || async {
        (seq_of("crasher").await.is_none()).then_some(())
    })
    .await;
    out.publish(SIGNED_TOPIC, &crasher_captured).await;
    eventually(SOON, "every replay counted", || async {
        let refused =
            count("ignored", Some("tombstoned")).await + count("rejected", Some("replayed")).await;
        (refused == replays + 1.0).then_some(())
    })
    .await;
    assert!(
        count("rejected", Some("replayed")).await >= 2.0,
        "the late replays are counted as replayed"
    );
    assert_eq!(count("rejected", Some("bad_signature")).await, 1.0);
    assert_eq!(
        count("joined", None).await,
        2.0,
        "only the two original joins"
    );
    assert!(api.server_ids().await.unwrap().is_empty());

    assert_serving(&mut api).await;
    assert_all_finished(&cluster, SIGNED_TOPIC).await;
}
