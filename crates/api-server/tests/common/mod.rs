//! Shared helpers of the api-server integration tests: real NSQ, real api-server and data-server
//! processes, and heartbeats published by the test itself (all three through testkit).

#![allow(dead_code)]

pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
pub use testkit::{Announcer, DataServer};
use testkit::{ApiServer, DataServerOptions, NsqCluster, try_eventually};

/// The heartbeat topic of the tests (the default of ARCHITECTURE.md §4.3).
pub const TOPIC: &str = "data_server_addr";

/// Generous bound for anything that should happen quickly: proves the mechanism, not the speed.
pub const SOON: Duration = Duration::from_secs(15);

/// The api-server binary cargo built for these tests.
pub fn api_server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_api-server"))
}

/// `--set` overrides for an api-server on `cluster` through nsqlookupd, with a short TTL.
pub fn sets(cluster: &NsqCluster, ttl: &str) -> Vec<String> {
    vec![
        format!(
            "discovery.lookupd_http_addresses={}",
            cluster.lookupd_http()
        ),
        "discovery.lookupd_poll_interval=250ms".to_owned(),
        format!("discovery.ttl={ttl}"),
        "discovery.prune_interval=100ms".to_owned(),
    ]
}

/// Starts an api-server with `sets` plus `extra`.
pub async fn api_server(cluster: &NsqCluster, ttl: &str, extra: &[&str]) -> ApiServer {
    let mut all = sets(cluster, ttl);
    all.extend(extra.iter().map(|s| (*s).to_owned()));
    ApiServer::start(&api_server_bin(), &all)
        .await
        .expect("api-server starts")
}

/// Publishes one body to nsqd `i` of `cluster`.
pub async fn publish(cluster: &NsqCluster, i: usize, body: &[u8]) {
    let producer = nsq::Producer::new(cluster.nsqd_tcp(i).to_string(), Default::default()).unwrap();
    producer.publish(TOPIC, body).await.expect("publish");
    producer.close(Duration::from_secs(1)).await;
}

/// Makes sure the heartbeat topic exists on every nsqd, so the api-server's consumer finds them through nsqlookupd.
pub async fn create_topic(cluster: &NsqCluster) {
    for i in 0..cluster.len() {
        cluster
            .create_topic(i, TOPIC, None)
            .await
            .expect("create topic");
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls one `/metrics` sample until it reaches `at_least`; returns its value then (or, after
/// [`SOON`], the value then, for the caller's assertion to show).
pub async fn wait_metric(api: &ApiServer, sample: &str, at_least: f64) -> f64 {
    let what = format!("{sample} >= {at_least}");
    let reached = try_eventually(SOON, &what, || async {
        let value = api.metric(sample).await.unwrap_or(0.0);
        Ok((value >= at_least).then_some(value))
    })
    .await;
    match reached {
        Ok(value) => value,
        Err(_) => api.metric(sample).await.unwrap_or(0.0),
    }
}

/// A real `data-server` process with id `id` announcing through `cluster`'s nsqd every
/// `interval` (without jitter).
pub async fn data_server(cluster: &NsqCluster, id: &str, interval: &str) -> DataServer {
    let mut opts = DataServerOptions::new(cluster.nsqd_tcp_addresses())
        .set(format!("server.id={id}"))
        .set("announce.jitter=0")
        .set("shutdown.timeout=5s");
    opts.interval = interval.to_owned();
    opts.envs.push(("RUST_LOG".to_owned(), "info".to_owned()));
    DataServer::start_with(opts)
        .await
        .unwrap_or_else(|e| panic!("data-server {id} starts: {e:#}"))
}

/// `n` data servers started one after the other like [`data_server`], with ids `ds-0`, `ds-1`, ...
pub async fn data_servers(cluster: &NsqCluster, n: usize, interval: &str) -> Vec<DataServer> {
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(data_server(cluster, &format!("ds-{i}"), interval).await);
    }
    servers
}

/// Heartbeats for `id` at `addr` every `interval`, published by the test itself (no server
/// needs to listen at `addr`).
pub fn announcer(cluster: &NsqCluster, id: &str, addr: &str, interval: Duration) -> Announcer {
    Announcer::start(cluster, id, addr, interval).expect("the announcer starts")
}

/// A plain HTTP client for the proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET /whoami` through the proxy: the answering server's id, or the error.
pub async fn whoami(http: &reqwest::Client, api: &ApiServer) -> Result<String, String> {
    let url = format!("http://{}/whoami", api.proxy());
    let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}

/// Sends `n` `GET /whoami` through the proxy, each of which must succeed, and counts the answers
/// by server id.
pub async fn count_whoami(
    http: &reqwest::Client,
    api: &ApiServer,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(whoami(http, api).await.unwrap()).or_default() += 1;
    }
    counts
}

/// Serves `app` on a fresh loopback port of the test process (an upstream whose answers the test
/// writes itself) and returns its address.
pub async fn serve_in_process(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Waits until the heartbeat consumer holds `n` nsqd connections: the api-server has subscribed,
/// so that what a test measures or sends from then on is not lost to startup.
pub async fn wait_subscribed(api: &ApiServer, n: i64) {
    let what = format!("{n} heartbeat connections");
    api.wait_registry(SOON, &what, |d| {
        d["bus"]["heartbeat_connections"].as_i64() == Some(n)
    })
    .await
    .unwrap();
}

/// Waits until `/registry` lists `n` servers.
pub async fn wait_servers(api: &ApiServer, n: usize) {
    api.wait_registry(SOON, &format!("{n} servers"), |d| {
        d["servers"].as_array().unwrap().len() == n
    })
    .await
    .unwrap();
}

/// `api_heartbeats_total` sample for an outcome, with its reason when it has one.
pub fn heartbeat_sample(outcome: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => {
            format!("api_heartbeats_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}")
        }
        None => format!("api_heartbeats_total{{outcome=\"{outcome}\"}}"),
    }
}

/// One producer for a whole test; nsqd's own refusals come back as errors.
pub struct Publisher {
    producer: nsq::Producer,
}

impl Publisher {
    pub fn new(cluster: &NsqCluster) -> Publisher {
        let producer =
            nsq::Producer::new(cluster.nsqd_tcp(0).to_string(), Default::default()).unwrap();
        Publisher { producer }
    }

    pub async fn publish(&self, topic: &str, body: &[u8]) {
        self.producer
            .publish(topic, body)
            .await
            .expect("nsqd takes the message");
    }
}

/// The server with `id` in a `/registry` document.
pub fn find_server<'a>(doc: &'a Value, id: &str) -> Option<&'a Value> {
    doc["servers"].as_array()?.iter().find(|s| s["id"] == id)
}

/// The process is alive, answers its admin API and its proxy.
pub async fn assert_serving(api: &mut ApiServer) {
    assert!(
        api.process().try_wait().unwrap().is_none(),
        "api-server exited:\n{}",
        api.log()
    );
    let http = client();
    for url in [
        format!("http://{}/healthz", api.admin()),
        format!("http://{}/whoami", api.proxy()),
    ] {
        let response = http.get(&url).send().await.expect(&url);
        // The proxy may answer 502 for the made-up addresses registered here; any HTTP answer proves it serves.
        assert!(
            response.status().as_u16() < 600,
            "{url}: {}",
            response.status()
        );
    }
}

/// Nothing was requeued or left waiting: every hostile message was finished.
pub async fn assert_all_finished(cluster: &NsqCluster, topic: &str) {
    let stats = cluster.stats(0, topic, None).await.unwrap();
    for channel in &stats.topic(topic).unwrap().channels {
        assert_eq!(channel.depth, 0, "{channel:?}");
        assert_eq!(channel.in_flight_count, 0, "{channel:?}");
        assert_eq!(channel.requeue_count, 0, "{channel:?}");
    }
}
