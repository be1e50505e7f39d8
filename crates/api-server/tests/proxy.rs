//! The reverse proxy in front of real data-server processes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use testkit::{ApiServer, NsqCluster};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn whoami(http: &reqwest::Client, api: &ApiServer) -> Result<String, String> {
    let url = format!("http://{}/whoami", api.proxy());
    let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}

async fn wait_servers(api: &ApiServer, n: usize) {
    api.wait_registry(SOON, &format!("{n} servers"), |d| {
        d["servers"].as_array().unwrap().len() == n
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_server_gives_503_json_naming_the_request() {
    let cluster = NsqCluster::start(1).await.unwrap();
    let api = api_server(&cluster, "10s", &[]).await;
    let response = client()
        .get(format!("http://{}/anything", api.proxy()))
        .header("x-request-id", "req-503")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-request-id"], "req-503");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "req-503");
    assert_eq!(body["error"], "no live data server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_spreads_requests_over_three_servers() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let mut servers = Vec::new();
    for n in 0..3 {
        servers.push(DataServer::start(&cluster, &format!("ds-{n}"), "1s").await);
    }
    let http = client();
    for strategy in ["p2c", "round_robin", "random"] {
        let api = api_server(&cluster, "10s", &[&format!("balancer.strategy={strategy}")]).await;
        wait_servers(&api, 3).await;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..300 {
            *counts
                .entry(whoami(&http, &api).await.unwrap())
                .or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{strategy}: {counts:?}");
        for (id, n) in &counts {
            let (low, high) = if strategy == "round_robin" {
                (95, 105)
            } else {
                (50, 150)
            };
            assert!(
                (low..=high).contains(n),
                "{strategy}: {id} got {n} of 300: {counts:?}"
            );
        }
        let doc = api.registry().await.unwrap();
        assert_eq!(doc["strategy"], strategy);
    }
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_request_stream_costs_clients_nothing_and_ejects_the_server() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let mut servers = Vec::new();
    for n in 0..3 {
        servers.push(DataServer::start(&cluster, &format!("ds-{n}"), "500ms").await);
    }
    let api = api_server(&cluster, "10s", &[]).await;
    wait_servers(&api, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, errors) =
                (stop.clone(), ok.clone(), failed.clone(), errors.clone());
            let url = format!("http://{}/slow?ms=5", api.proxy());
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{other:?}"));
                        }
                    }
                }
            })
        })
        .collect();
    while ok.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers[0].process.kill();
    let before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before + 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "client errors: {:?}",
        errors.lock().unwrap()
    );
    let doc = api.registry().await.unwrap();
    let killed = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "ds-0")
        .cloned();
    // Still within its TTL, so listed, but ejected by passive health.
    let killed = killed.expect("ds-0 still within its TTL");
    assert!(killed["ejections"].as_u64().unwrap() >= 1, "{doc}");
    assert!(api.metric("api_proxy_ejections_total").await.unwrap() >= 1.0);
    assert!(
        api.metric("api_registry_events_total{kind=\"eject\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_pass_both_ways_intact() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let _server = DataServer::start(&cluster, "ds-big", "1s").await;
    let mut api = api_server(&cluster, "10s", &[]).await;
    wait_servers(&api, 1).await;
    let pid = api.process().pid().unwrap();
    let http = client();
    const SIZE: usize = 20 * 1024 * 1024;
    // Warm up the paths, so the measurement below sees the transfers, not first-use allocations.
    let _ = http
        .get(format!("http://{}/bytes/100000", api.proxy()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    let peak_before = peak_rss_kib(pid);

    let upload: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    let expected = hex::encode(Sha256::digest(&upload));
    let response = http
        .put(format!("http://{}/upload", api.proxy()))
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["bytes"], SIZE as u64);
    assert_eq!(body["sha256"], expected);

    let response = http
        .get(format!("http://{}/bytes/{SIZE}", api.proxy()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len(), SIZE);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    // Streamed, not buffered: 40 MB went through, the proxy's peak memory grew by far less than one body.
    let grown = peak_rss_kib(pid).saturating_sub(peak_before);
    eprintln!("api-server peak RSS {peak_before} KiB before, grew by {grown} KiB over 2 x 20 MiB");
    assert!(grown < 10 * 1024, "peak RSS grew by {grown} KiB");
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_try_timeout_gives_504_json() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let _server = DataServer::start(&cluster, "ds-slow", "1s").await;
    let api = api_server(&cluster, "10s", &["proxy.try_timeout=300ms"]).await;
    wait_servers(&api, 1).await;
    let response = client()
        .get(format!("http://{}/slow?ms=3000", api.proxy()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], id);
    assert_eq!(id.len(), 32, "a generated request id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_arrive_and_hop_by_hop_headers_do_not() {
    use axum::http::HeaderMap;
    // An upstream that answers with the headers it received.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let map: BTreeMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        axum::Json(map)
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    // Loopback peers are trusted proxies here, so their forwarding headers are appended to.
    let api = api_server(
        &cluster,
        "10s",
        &["proxy.trusted_proxies=[\"127.0.0.0/8\"]"],
    )
    .await;
    let untrusting = api_server(&cluster, "10s", &[]).await;
    let _announcer = Announcer::start(
        &cluster,
        "echo",
        &upstream.to_string(),
        Duration::from_secs(1),
    );
    wait_servers(&api, 1).await;
    wait_servers(&untrusting, 1).await;
    let forged: BTreeMap<String, String> = client()
        .get(format!("http://{}/h", untrusting.proxy()))
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        forged["x-forwarded-for"], "127.0.0.1",
        "untrusted hops are dropped"
    );
    assert!(
        forged["forwarded"].starts_with("for=127.0.0.1;"),
        "{forged:?}"
    );
    let response = client()
        .get(format!("http://{}/h?x=1", api.proxy()))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "req-fwd")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-fwd");
    let seen: BTreeMap<String, String> = response.json().await.unwrap();
    let proxy_host = api.proxy().to_string();
    assert_eq!(
        seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1",
        "{seen:?}"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], proxy_host);
    assert_eq!(
        seen["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{proxy_host}\"")
    );
    assert_eq!(seen["x-request-id"], "req-fwd");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(
        seen["host"],
        upstream.to_string(),
        "the upstream sees its own host"
    );
    for hop in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(!seen.contains_key(hop), "{hop} was forwarded: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_server_and_ejects_the_dead_one() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let _server = DataServer::start(&cluster, "ds-live", "1s").await;
    // Announced but not listening: every connection to it is refused.
    let dead = format!("127.0.0.1:{}", testkit::free_port());
    let _ghost = Announcer::start(&cluster, "ghost", &dead, Duration::from_secs(1));
    let api = api_server(&cluster, "10s", &["balancer.strategy=round_robin"]).await;
    wait_servers(&api, 2).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(whoami(&http, &api).await.unwrap(), "ds-live");
    }
    let doc = api.registry().await.unwrap();
    let ghost = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "ghost")
        .unwrap()
        .clone();
    assert!(ghost["ejections"].as_u64().unwrap() >= 1, "{doc}");
    assert!(api.metric("api_proxy_retries_total").await.unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_retries_when_every_server_fails() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    // Three servers that refuse every connection.
    let _ghosts: Vec<Announcer> = (0..3)
        .map(|n| {
            let dead = format!("127.0.0.1:{}", testkit::free_port());
            Announcer::start(
                &cluster,
                &format!("ghost-{n}"),
                &dead,
                Duration::from_secs(1),
            )
        })
        .collect();
    let api = api_server(
        &cluster,
        "10s",
        &[
            "proxy.retry_budget_ratio=0.2",
            "proxy.retry_budget_min_per_sec=1",
            "proxy.access_log=false",
        ],
    )
    .await;
    wait_servers(&api, 3).await;
    let http = client();
    let requests = 200;
    for _ in 0..requests {
        let response = http
            .get(format!("http://{}/x", api.proxy()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["request_id"].is_string(), "{body}");
    }
    let retries = api.metric("api_proxy_retries_total").await.unwrap();
    // Without a budget, 200 requests x 3 tries would be 400 retries.
    let allowed = 0.2 * requests as f64 + 10.0 + 5.0;
    assert!(
        retries <= allowed,
        "{retries} retries for {requests} requests"
    );
    assert!(
        retries >= 0.2 * requests as f64 - 5.0,
        "the budget allows some: {retries}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_server_gets_no_new_requests_once_its_leave_is_processed() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let mut staying = DataServer::start(&cluster, "ds-stay", "1s").await;
    let mut leaving = DataServer::start(&cluster, "ds-leave", "1s").await;
    let api = api_server(&cluster, "10s", &["balancer.strategy=round_robin"]).await;
    wait_servers(&api, 2).await;
    let http = client();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        *seen.entry(whoami(&http, &api).await.unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    leaving.process.signal(testkit::Signal::SIGTERM).unwrap();
    // Requests keep flowing while it leaves: none may fail.
    let mut after_leave = 0;
    let started = std::time::Instant::now();
    loop {
        let gone = !api
            .server_ids()
            .await
            .unwrap()
            .contains(&"ds-leave".to_owned());
        let id = whoami(&http, &api)
            .await
            .expect("no client error during a leave");
        if gone {
            assert_eq!(
                id, "ds-stay",
                "a request sent after the leave was processed reached ds-leave"
            );
            after_leave += 1;
            if after_leave == 100 {
                break;
            }
        }
        assert!(started.elapsed() < SOON, "ds-leave never left");
    }
    assert!(leaving.process.wait_exit(SOON).await.unwrap().success());
    staying.process.kill();
}
