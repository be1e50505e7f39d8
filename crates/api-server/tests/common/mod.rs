//! Shared helpers of the api-server integration tests: real NSQ, real api-server processes, and heartbeats
//! published by the test itself.

#![allow(dead_code)]

pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use discovery::{Heartbeat, State};
use serde_json::Value;
use testkit::{ApiServer, NsqCluster};

/// The heartbeat topic of the tests (the contract default).
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

/// A fake data server's heartbeat loop (what `data-server` does), publishing every `interval` to nsqd chosen
/// round robin, until stopped; `leave` sends a `leaving` heartbeat first.
pub struct Announcer {
    stop: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    pub fn start(cluster: &NsqCluster, id: &str, addr: &str, interval: Duration) -> Announcer {
        Announcer::start_with_meta(cluster, id, addr, interval, Default::default())
    }

    /// Like [`Announcer::start`], announcing `meta` (e.g. a `weight`).
    pub fn start_with_meta(
        cluster: &NsqCluster,
        id: &str,
        addr: &str,
        interval: Duration,
        meta: std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Announcer {
        let addrs: Vec<String> = cluster
            .nsqd_tcp_addresses()
            .iter()
            .map(ToString::to_string)
            .collect();
        let (stop, leave) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, l) = (Arc::clone(&stop), Arc::clone(&leave));
        let wake = Arc::new(tokio::sync::Notify::new());
        let w = Arc::clone(&wake);
        let (id, addr) = (id.to_owned(), addr.to_owned());
        let task = tokio::spawn(async move {
            let producers: Vec<nsq::Producer> = addrs
                .iter()
                .map(|a| nsq::Producer::new(a.clone(), Default::default()).unwrap())
                .collect();
            let epoch = now_ms();
            let mut seq = 0u64;
            loop {
                seq += 1;
                let mut hb = Heartbeat::new(id.clone(), addr.clone(), epoch, seq);
                hb.interval_ms = interval.as_millis() as u64;
                hb.sent_at_ms = now_ms();
                hb.meta = meta.clone();
                let leaving = l.load(Ordering::Acquire);
                if leaving {
                    hb.state = State::Leaving;
                }
                // Failover as a data server does: the next nsqd when one refuses.
                for k in 0..producers.len() {
                    let p = &producers[(seq as usize + k) % producers.len()];
                    if p.publish(TOPIC, hb.encode()).await.is_ok() {
                        break;
                    }
                }
                if leaving || s.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = w.notified() => {}
                }
            }
        });
        Announcer {
            stop,
            leave,
            wake,
            task,
        }
    }

    /// Stops without a word, like SIGKILL.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Announces `leaving` once, then stops, like SIGTERM.
    pub async fn leave(self) {
        self.leave.store(true, Ordering::Release);
        self.wake.notify_one();
        let _ = self.task.await;
    }
}

/// Polls one `/metrics` sample until it reaches `at_least`; returns its value then (or the last one seen).
pub async fn wait_metric(api: &ApiServer, sample: &str, at_least: f64) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let value = api.metric(sample).await.unwrap_or(0.0);
        if value >= at_least || started.elapsed() > SOON {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real `data-server` process announcing itself through `cluster`'s nsqd.
pub struct DataServer {
    pub process: testkit::ManagedProcess,
    pub id: String,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl DataServer {
    pub async fn start(cluster: &NsqCluster, id: &str, interval: &str) -> DataServer {
        let bin = testkit::project_bin("data-server").expect("the data-server binary");
        let dir = tempfile::tempdir().unwrap();
        let nsqd: Vec<String> = cluster
            .nsqd_tcp_addresses()
            .iter()
            .map(ToString::to_string)
            .collect();
        let args = [
            "server.listen=127.0.0.1:0".to_owned(),
            format!("server.id={id}"),
            format!("announce.nsqd_tcp_addresses={}", nsqd.join(",")),
            format!("announce.interval={interval}"),
            "announce.jitter=0".to_owned(),
            "shutdown.timeout=5s".to_owned(),
        ]
        .into_iter()
        .flat_map(|set| ["--set".to_owned(), set])
        .collect();
        let mut process = testkit::ManagedProcess::spawn(
            format!("data-server {id}"),
            bin,
            args,
            vec![("RUST_LOG".to_owned(), "info".to_owned())],
            dir.path().join("data-server.log"),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let addr = loop {
            let log = process.log();
            if let Some(addr) = log
                .lines()
                .find_map(|l| l.trim().strip_prefix("listening on ")?.parse().ok())
            {
                break addr;
            }
            if let Some(status) = process.try_wait().unwrap() {
                panic!("data-server {id} exited with {status}:\n{log}");
            }
            assert!(
                started.elapsed() < SOON,
                "data-server {id} did not start:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        DataServer {
            process,
            id: id.to_owned(),
            addr,
            _dir: dir,
        }
    }
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
