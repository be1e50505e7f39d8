//! The reverse proxy in front of real data-server processes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use testkit::NsqCluster;
use testkit::http::{get, send_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_server_gives_503_json_naming_the_request() {
    let cluster = NsqCluster::start(1).await.unwrap();
    // A fresh api-server holds requests for a first server during one TTL (warm-up), then answers 503.
    let api = api_server(&cluster, "500ms", &[]).await;
    let response = client()
        .get(format!("http://{}/anything", api.proxy()))
        .header("x-request-id", "req-503")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    // The client is no trusted proxy: its id is replaced by the proxy's own, named in the header and the body.
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["error"], "no live data server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_api_server_holds_requests_until_the_first_heartbeat() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    // Built first: the api-server's warm-up (its TTL) is not for waiting on cargo.
    testkit::project_bin("data-server").unwrap();
    let api = api_server(&cluster, "10s", &[]).await;
    // Sent before any data server exists: a restarted api-server must not answer it 503.
    let early = tokio::spawn(
        client()
            .get(format!("http://{}/whoami", api.proxy()))
            .send(),
    );
    let server = data_server(&cluster, "ds-first", "1s").await;
    let response = early.await.unwrap().unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], server.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_spreads_requests_over_three_servers() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let servers = data_servers(&cluster, 3, "1s").await;
    let http = client();
    for strategy in ["p2c", "round_robin", "random"] {
        let api = api_server(&cluster, "10s", &[&format!("balancer.strategy={strategy}")]).await;
        wait_servers(&api, 3).await;
        let counts = count_whoami(&http, &api, 300).await;
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
async fn twenty_megabytes_pass_both_ways_intact() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let _server = data_server(&cluster, "ds-big", "1s").await;
    let mut api = api_server(&cluster, "10s", &[]).await;
    wait_servers(&api, 1).await;
    let pid = api.process().pid().unwrap();
    let http = client();
    const SIZE: usize = 20 * 1024 * 1024;
    // Warm up the paths, so the measurement below sees the transfers, not first-use allocations.
    let _ = get(&http, format!("http://{}/bytes/100000", api.proxy()))
        .await
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

    let response = get(&http, format!("http://{}/bytes/{SIZE}", api.proxy())).await;
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
async fn forwarding_headers_arrive_and_hop_by_hop_headers_do_not() {
    use axum::http::HeaderMap;
    // An upstream that answers with the headers it received.
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let map: BTreeMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        axum::Json(map)
    });
    let upstream = serve_in_process(app).await;

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
    let _announcer = announcer(
        &cluster,
        "echo",
        &upstream.to_string(),
        Duration::from_secs(1),
    );
    wait_servers(&api, 1).await;
    wait_servers(&untrusting, 1).await;
    let forging = client()
        .get(format!("http://{}/h", untrusting.proxy()))
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9");
    let forged: BTreeMap<String, String> = send_json(forging).await;
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
async fn weights_from_heartbeat_meta_shift_the_share() {
    // Two upstreams in the test process, one announcing weight 3.
    let mut addrs = Vec::new();
    for name in ["light", "heavy"] {
        let app = axum::Router::new()
            .fallback(move || async move { axum::Json(serde_json::json!({ "id": name })) });
        addrs.push(serve_in_process(app).await);
    }
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(
        &cluster,
        "10s",
        &["balancer.strategy=random", "proxy.access_log=false"],
    )
    .await;
    let weighted = |id: &str, addr: &str, weight: u64| {
        let mut cfg = Announcer::config(&cluster, id, addr, Duration::from_secs(1));
        cfg.meta
            .insert("weight".to_owned(), serde_json::json!(weight));
        Announcer::start_with(cfg).expect("the announcer starts")
    };
    let _light = weighted("light", &addrs[0].to_string(), 1);
    let _heavy = weighted("heavy", &addrs[1].to_string(), 3);
    wait_servers(&api, 2).await;
    let http = client();
    let counts = count_whoami(&http, &api, 400).await;
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    assert!(
        (240..=360).contains(&heavy),
        "weight 3 of 4 should get about 300 of 400: {counts:?}"
    );
    let doc = api.registry().await.unwrap();
    let weights: Vec<u64> = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [3, 1], "sorted by id: heavy, light");
}
