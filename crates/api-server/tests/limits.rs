//! What no client or announced address can do to the api-server: make a request loop through it until it runs out
//! of file descriptors, or hold more connections than `server.max_connections` (the admin listener keeps answering).
//! Real api-server processes, heartbeats through a real nsqd.

mod common;

use std::time::Duration;

use common::wire::*;
use common::*;
use testkit::{ApiServer, NsqCluster, eventually};

/// Open file descriptors of a process, from /proc.
fn open_fds(api: &mut ApiServer) -> usize {
    let pid = api.process().pid().expect("running");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_naming_the_proxy_through_a_host_alias_is_refused() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    // A wildcard listener is reached through every address of the machine, so any name of the machine is an alias.
    let api = api_server(&cluster, "10s", &["server.listen=0.0.0.0:0"]).await;
    let port = api.proxy().port();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let resolved: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .unwrap_or_else(|e| panic!("this machine's name {host:?} must resolve for this test: {e}"))
        .collect();
    assert!(!resolved.is_empty(), "{host} resolves to nothing");
    let _alias = announcer(
        &cluster,
        "alias",
        &format!("{host}:{port}"),
        Duration::from_millis(200),
    );
    let refused = heartbeat_sample("rejected", Some("self_address"));
    assert!(
        wait_metric(&api, &refused, 2.0).await >= 2.0,
        "refused every time"
    );
    assert!(
        !api.server_ids()
            .await
            .unwrap()
            .contains(&"alias".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_a_second_api_server_ends_in_508_with_the_descriptor_count_flat() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let mut a = api_server(&cluster, "10s", &[]).await;
    let mut b = api_server(&cluster, "10s", &[]).await;
    // Each announced as a data server: each api-server refuses its own address and admits the other's, so a
    // request to A goes to B and back to A.
    let _a = announcer(
        &cluster,
        "api-a",
        &a.proxy().to_string(),
        Duration::from_millis(200),
    );
    let _b = announcer(
        &cluster,
        "api-b",
        &b.proxy().to_string(),
        Duration::from_millis(200),
    );
    wait_servers(&a, 1).await;
    wait_servers(&b, 1).await;
    assert_eq!(a.server_ids().await.unwrap(), ["api-b"]);
    assert_eq!(b.server_ids().await.unwrap(), ["api-a"]);

    let http = client();
    // Warm up the pools, then count descriptors.
    let first = http
        .get(format!("http://{}/whoami", a.proxy()))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 508, "{:?}", first.text().await);
    let before = (open_fds(&mut a), open_fds(&mut b));
    for _ in 0..50 {
        let response = http
            .get(format!("http://{}/whoami", a.proxy()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 508);
    }
    // Flat: once the connections the last requests closed are gone, no more descriptors than before the burst.
    let mut after = (0, 0);
    let flat = testkit::try_eventually(SOON, "descriptor counts back to flat", || {
        after = (open_fds(&mut a), open_fds(&mut b));
        let flat = after.0 <= before.0 + 4 && after.1 <= before.1 + 4;
        async move { Ok(flat.then_some(())) }
    })
    .await;
    assert!(
        flat.is_ok(),
        "descriptors before {before:?}, after 50 looped requests {after:?}"
    );
    assert!(a.metric("api_proxy_loops_total").await.unwrap() >= 51.0);
    assert!(a.log().contains("came back to this api-server"), "logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_get_503_while_the_admin_api_answers() {
    let (Setup { api, .. }, id) =
        &with_data_server_and("ds-limit", &["server.max_connections=4"]).await;
    // Four connections held open (each has sent half a request head).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut wire = Wire::connect(api.proxy()).await;
        wire.send(b"GET /whoami HTTP/1.1\r\n").await;
        held.push(wire);
    }
    for _ in 0..3 {
        let mut extra = Wire::connect(api.proxy()).await;
        let response = extra.response(false).await;
        assert_eq!(response.status, 503, "{response:?}");
        assert_eq!(response.header("connection"), Some("close"));
        extra.assert_closed("over the limit").await;
        let health = testkit::http::get(&client(), format!("http://{}/healthz", api.admin())).await;
        assert_eq!(health.status(), 200);
    }
    assert!(closed(api, "over_capacity", 3.0).await >= 3.0);
    // A held connection finishes its request; once one closes, a new client is served again.
    let mut first = held.remove(0);
    first.send(b"Host: t\r\nConnection: close\r\n\r\n").await;
    assert_eq!(first.response(false).await.json()["id"], id.as_str());
    drop(first);
    eventually(SOON, "a new client served once a slot is free", || async {
        let mut wire = Wire::connect(api.proxy()).await;
        wire.send(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n").await;
        (wire.response(false).await.status == 200).then_some(())
    })
    .await;
}
