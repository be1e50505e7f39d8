//! Discovery through real nsqd and nsqlookupd into a real api-server process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use discovery::{Heartbeat, State};
use serde_json::Value;
use testkit::http::get;
use testkit::{NsqCluster, eventually};

fn ids(doc: &Value) -> Vec<String> {
    let mut ids: Vec<String> = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_appears_long_before_an_interval_and_leaves_at_once() {
    let cluster = NsqCluster::start(2).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    // Wait for the subscription, so the clock below measures discovery, not startup.
    wait_subscribed(&api, 2).await;

    // An interval of 5 s: appearing well within it proves the first heartbeat is what registered it.
    let announcer = announcer(
        &cluster,
        "data-1",
        "127.0.0.1:19001",
        Duration::from_secs(5),
    );
    let started = Instant::now();
    let doc = api
        .wait_registry(SOON, "data-1 to join", |d| ids(d) == ["data-1"])
        .await
        .unwrap();
    let joined_after = started.elapsed();
    assert!(
        joined_after < Duration::from_secs(2),
        "joined after {joined_after:?}"
    );
    let server = &doc["servers"][0];
    assert_eq!(server["addr"], "127.0.0.1:19001");
    assert_eq!(server["state"], "up");
    assert!(server["expires_in_ms"].as_u64().unwrap() > 8000, "{server}");
    assert_eq!(doc["self_preservation"], false);

    let started = Instant::now();
    announcer.leave().await.unwrap();
    api.wait_registry(SOON, "data-1 to leave", |d| ids(d).is_empty())
        .await
        .unwrap();
    let left_after = started.elapsed();
    assert!(
        left_after < Duration::from_secs(2),
        "left after {left_after:?}, TTL is 10s"
    );
    let leaves = wait_metric(&api, "api_registry_events_total{kind=\"leave\"}", 1.0).await;
    assert_eq!(leaves, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_expires_within_ttl_plus_prune_and_not_before_the_ttl() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let ttl = Duration::from_secs(2);
    let api = api_server(&cluster, "2s", &[]).await;
    let announcer = announcer(
        &cluster,
        "data-1",
        "127.0.0.1:19002",
        Duration::from_millis(300),
    );
    api.wait_registry(SOON, "data-1 to join", |d| ids(d) == ["data-1"])
        .await
        .unwrap();
    announcer.crash().await;
    let crashed = Instant::now();
    // The last heartbeat may have been sent up to one interval before the crash.
    api.wait_registry(SOON, "data-1 to expire", |d| ids(d).is_empty())
        .await
        .unwrap();
    let gone_after = crashed.elapsed();
    assert!(
        gone_after >= ttl - Duration::from_millis(300) - Duration::from_millis(50),
        "expired after {gone_after:?}"
    );
    assert!(
        gone_after < ttl + Duration::from_millis(100) + Duration::from_secs(1),
        "expired after {gone_after:?}"
    );
    // The sweep reports the expiry (reads already hid the server).
    let expired = wait_metric(&api, "api_registry_events_total{kind=\"expire\"}", 1.0).await;
    assert_eq!(expired, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reordered_and_replayed_heartbeats_never_resurrect() {
    let cluster = NsqCluster::start(2).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    let addr = "127.0.0.1:19003";
    let hb = |seq: u64, state: State| {
        let mut hb = Heartbeat::new("data-r", addr, 7, seq);
        hb.state = state;
        hb.encode()
    };
    publish(&cluster, 0, &hb(5, State::Up)).await;
    api.wait_registry(SOON, "data-r to join", |d| ids(d) == ["data-r"])
        .await
        .unwrap();
    publish(&cluster, 1, &hb(6, State::Leaving)).await;
    api.wait_registry(SOON, "data-r to leave", |d| ids(d).is_empty())
        .await
        .unwrap();
    // Duplicates, older seqs and a replay of the whole run, through both nsqd.
    for i in 0..2 {
        for seq in [5, 4, 1, 6, 5, 3, 2] {
            publish(&cluster, i, &hb(seq, State::Up)).await;
        }
    }
    // Every one of them must have been processed before judging (14 ignored: tombstoned).
    api.wait_registry(SOON, "all replays processed", |_| true)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "14 tombstoned heartbeats",
        || async {
            let tombstoned = api
                .metric("api_heartbeats_total{outcome=\"ignored\",reason=\"tombstoned\"}")
                .await
                .unwrap();
            assert!(api.server_ids().await.unwrap().is_empty(), "resurrected");
            (tombstoned >= 14.0).then_some(())
        },
    )
    .await;
    let tombstoned = api
        .metric("api_heartbeats_total{outcome=\"ignored\",reason=\"tombstoned\"}")
        .await
        .unwrap();
    assert_eq!(tombstoned, 14.0, "{}", api.metrics().await.unwrap());
    assert!(api.server_ids().await.unwrap().is_empty());

    // Out of order while live: an older seq is ignored, and one at another address never moves the server (only a
    // newer epoch may: one run never changes its address).
    let mut a = Heartbeat::new("data-o", "127.0.0.1:19004", 1, 10);
    publish(&cluster, 0, &a.encode()).await;
    api.wait_registry(SOON, "data-o to join", |d| ids(d) == ["data-o"])
        .await
        .unwrap();
    a.seq = 9;
    publish(&cluster, 1, &a.encode()).await;
    publish(&cluster, 0, &a.encode()).await;
    a.addr = "127.0.0.1:19999".to_owned();
    publish(&cluster, 1, &a.encode()).await;
    let out_of_order = "api_heartbeats_total{outcome=\"ignored\",reason=\"out_of_order\"}";
    let conflict = "api_heartbeats_total{outcome=\"rejected\",reason=\"id_conflict\"}";
    assert_eq!(wait_metric(&api, out_of_order, 2.0).await, 2.0);
    assert_eq!(wait_metric(&api, conflict, 1.0).await, 1.0);
    let doc = api.registry().await.unwrap();
    assert_eq!(doc["servers"][0]["addr"], "127.0.0.1:19004");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_host_port_from_to_nsq_registers() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    testkit::to_nsq(cluster.nsqd_tcp(0), TOPIC, &["127.0.0.1:19005"])
        .await
        .unwrap();
    let doc = api
        .wait_registry(SOON, "the plain server", |d| ids(d) == ["127.0.0.1:19005"])
        .await
        .unwrap();
    assert_eq!(doc["servers"][0]["plain"], true);
}

/// Without a key (with or without allowed_networks, which limits addresses, not senders) the api-server says so at
/// start, in /registry and in a gauge; with a key it does not, and a plain host:port (which cannot be signed) is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_api_server_says_so_and_one_with_a_key_does_not() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let open = api_server(&cluster, "10s", &[]).await;
    assert!(
        open.log().contains("unauthenticated heartbeats accepted"),
        "{}",
        open.log()
    );
    assert_eq!(open.registry().await.unwrap()["unauthenticated"], true);
    assert_eq!(
        open.metric("api_unauthenticated_heartbeats").await.unwrap(),
        1.0
    );
    let networks_only =
        api_server(&cluster, "10s", &["discovery.allowed_networks=127.0.0.0/8"]).await;
    assert!(
        networks_only
            .log()
            .contains("unauthenticated heartbeats accepted"),
        "{}",
        networks_only.log()
    );
    assert_eq!(
        networks_only.registry().await.unwrap()["unauthenticated"],
        true
    );
    assert_eq!(
        networks_only
            .metric("api_unauthenticated_heartbeats")
            .await
            .unwrap(),
        1.0
    );
    drop(networks_only);

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("heartbeat.key");
    std::fs::write(&key, "a shared secret\n").unwrap();
    let keyed = api_server(
        &cluster,
        "10s",
        &[&format!("discovery.hmac_key_files={}", key.display())],
    )
    .await;
    testkit::to_nsq(cluster.nsqd_tcp(0), TOPIC, &["127.0.0.1:19006"])
        .await
        .unwrap();
    open.wait_registry(SOON, "the plain server, unauthenticated", |d| {
        ids(d) == ["127.0.0.1:19006"]
    })
    .await
    .unwrap();
    eventually(SOON, "the plain server refused with a key", || async {
        let n = keyed
            .metric(r#"api_heartbeats_total{outcome="rejected",reason="unsigned"}"#)
            .await
            .ok()?;
        (n >= 1.0).then_some(())
    })
    .await;
    assert_eq!(keyed.registry().await.unwrap()["unauthenticated"], false);
    assert!(ids(&keyed.registry().await.unwrap()).is_empty());
    assert_eq!(
        keyed
            .metric("api_unauthenticated_heartbeats")
            .await
            .unwrap(),
        0.0
    );
    assert!(!keyed.log().contains("unauthenticated heartbeats accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_servers_both_list_every_server() {
    let cluster = NsqCluster::start(2).await.unwrap();
    create_topic(&cluster).await;
    let a = api_server(&cluster, "10s", &["server.instance=a"]).await;
    let b = api_server(&cluster, "10s", &["server.instance=b"]).await;
    for api in [&a, &b] {
        wait_subscribed(api, 2).await;
    }
    let mut announcers = Vec::new();
    for n in 0..4 {
        let addr = format!("127.0.0.1:{}", 19010 + n);
        announcers.push(announcer(
            &cluster,
            &format!("data-{n}"),
            &addr,
            Duration::from_millis(500),
        ));
    }
    let all = ["data-0", "data-1", "data-2", "data-3"];
    for api in [&a, &b] {
        api.wait_registry(SOON, "all four servers", |d| ids(d) == all)
            .await
            .unwrap();
    }
    // And they stay listed over several intervals: no api-server steals the other's heartbeats.
    for _ in 0..10 {
        for api in [&a, &b] {
            assert_eq!(api.server_ids().await.unwrap(), all);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for announcer in announcers {
        announcer.crash().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_history_and_a_snapshot_then_each_change() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut response = get(&http, format!("http://{}/registry/events", api.admin())).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut read_until = async |needle: &str, text: &mut String| {
        let started = Instant::now();
        while !text.contains(needle) {
            assert!(started.elapsed() < SOON, "no {needle:?} in {text}");
            let chunk = tokio::time::timeout(SOON, response.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until("event: snapshot", &mut text).await;
    let mut hb = Heartbeat::new("data-sse", "127.0.0.1:19401", 3, 1);
    publish(&cluster, 0, &hb.encode()).await;
    read_until("event: join", &mut text).await;
    hb.seq = 2;
    hb.state = State::Leaving;
    publish(&cluster, 0, &hb.encode()).await;
    read_until("event: leave", &mut text).await;
    let leave = text
        .split("event: leave\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap();
    let mut data: Value = serde_json::from_str(leave.strip_prefix("data: ").unwrap()).unwrap();
    // When it happened, by the api-server's wall clock.
    let at_ms = data["at_ms"].take().as_u64().unwrap();
    assert!(at_ms.abs_diff(now_ms()) < 60_000, "at_ms {at_ms}");
    // The second change since the api-server started (the join was the first).
    assert_eq!(
        data,
        serde_json::json!({"kind":"leave","id":"data-sse","addr":"127.0.0.1:19401","at_ms":null,"seq":2})
    );
    assert!(
        text.starts_with("event: history\n"),
        "the timeline so far comes first: {text}"
    );
    assert_eq!(api.metric("api_event_streams").await.unwrap(), 1.0);
}

/// An ephemeral heartbeat topic (`hb#ephemeral`): the api-server starts (its canary topic is
/// `hb.canary#ephemeral`), finds the nsqd through nsqlookupd and registers the data server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_heartbeat_topic_is_discovered_through_lookupd() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let api = api_server(&cluster, "10s", &["discovery.topic=hb#ephemeral"]).await;
    let mut opts = testkit::DataServerOptions::new(cluster.nsqd_tcp_addresses())
        .set("server.id=data-eph")
        .set("announce.topic=hb#ephemeral");
    opts.interval = "300ms".to_owned();
    let _server = testkit::DataServer::start_with(opts)
        .await
        .expect("data-server starts");
    api.wait_registry(SOON, "data-eph to join", |d| ids(d) == ["data-eph"])
        .await
        .unwrap();
    // The canary comes back on its own topic: the bus is measured as alive.
    api.wait_registry(SOON, "the bus to be alive", |d| d["bus"]["alive"] == true)
        .await
        .unwrap();
}
