//! A restarted api-server routes at once to the servers it saved (`discovery.registry_file`), as unconfirmed
//! servers, long before their next heartbeat; a saved server that died meanwhile costs no client an error.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::NsqCluster;

/// Heartbeats this far apart never arrive during a test: whatever routes after a restart came from the file.
const SLOW_INTERVAL: &str = "60s";

/// An api-server that saves its registry to a file in `_dir` (a TTL of 2 min), and two data servers it has heard
/// from once. It does not solicit (`tests/solicit.rs` covers that): what routes after a restart came from the file.
struct Saving {
    cluster: NsqCluster,
    _dir: tempfile::TempDir,
    api: testkit::ApiServer,
    servers: Vec<testkit::DataServer>,
}

async fn saving() -> Saving {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let file = format!(
        "discovery.registry_file={}",
        dir.path().join("registry.json").display()
    );
    let api = api_server(&cluster, "2m", &[&file, "discovery.solicit=false"]).await;
    let servers = data_servers(&cluster, 2, SLOW_INTERVAL).await;
    wait_servers(&api, 2).await;
    Saving {
        cluster,
        _dir: dir,
        api,
        servers,
    }
}

fn state_of(doc: &serde_json::Value, id: &str) -> Option<String> {
    find_server(doc, id).map(|s| s["state"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_routes_to_the_saved_servers_before_any_heartbeat() {
    let Saving {
        cluster: _cluster,
        _dir,
        mut api,
        servers,
    } = saving().await;

    api.restart(SOON).await.unwrap();
    let restarted = Instant::now();
    let http = client();
    let first = whoami(&http, &api)
        .await
        .expect("the first request after the restart is served");
    assert!(
        servers.iter().any(|s| s.id() == first),
        "answered by {first}"
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "first answer after {:?}",
        restarted.elapsed()
    );
    let doc = api.registry().await.unwrap();
    for s in &servers {
        assert_eq!(
            state_of(&doc, s.id()).as_deref(),
            Some("unconfirmed"),
            "{doc}"
        );
    }
    let counts = count_whoami(&http, &api, 20).await;
    assert_eq!(
        counts.len(),
        2,
        "both saved servers take traffic: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_server_that_died_is_ejected_on_its_first_refused_connect() {
    let Saving {
        cluster: _cluster,
        _dir,
        mut api,
        mut servers,
    } = saving().await;

    // It dies while the api-server still counts it live (TTL 2 min), so the file saved at the restart holds it.
    servers[1].kill();
    api.restart(SOON).await.unwrap();
    let http = client();
    let counts = count_whoami(&http, &api, 20).await;
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        [servers[0].id()],
        "every request served by the live server"
    );
    let doc = api.registry().await.unwrap();
    assert_eq!(
        state_of(&doc, servers[1].id()).as_deref(),
        Some("ejected"),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heard_from_server_takes_the_traffic_from_the_unconfirmed_ones() {
    let Saving {
        cluster,
        _dir,
        mut api,
        servers: saved,
    } = saving().await;

    api.restart(SOON).await.unwrap();
    wait_subscribed(&api, 1).await;
    // A server that heartbeats after the restart is confirmed, and from then on the only one routed to.
    let fresh = data_server(&cluster, "fresh", "1s").await;
    api.wait_registry(SOON, "fresh to be confirmed", |d| {
        state_of(d, "fresh").as_deref() == Some("up")
    })
    .await
    .unwrap();
    let counts = count_whoami(&client(), &api, 20).await;
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        [fresh.id()],
        "{counts:?}"
    );
    drop(saved);
}
