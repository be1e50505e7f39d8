//! The HTTP endpoints, served by `app()` on a real socket (no NSQ involved).

use std::net::SocketAddr;

use data_server::{AppState, StoreLimits, app, pattern_byte};
use sha2::{Digest, Sha256};
use testkit::http::{get, get_json, get_text, send, send_json};

async fn serve() -> (SocketAddr, reqwest::Client) {
    serve_with(StoreLimits::default(), std::time::Duration::ZERO).await
}

/// A server with these store limits and `server.added_latency = added`.
async fn serve_with(
    limits: StoreLimits,
    added: std::time::Duration,
) -> (SocketAddr, reqwest::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::with_limits("data-1", addr.to_string(), None, limits);
    state.set_added_latency(added);
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    (addr, reqwest::Client::new())
}

async fn put(client: &reqwest::Client, url: String, body: &'static str) -> (u16, String) {
    let response = client.put(url).body(body).send().await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn the_store_answers_507_beyond_its_limits_until_room_is_made() {
    let limits = StoreLimits {
        max_keys: 2,
        max_bytes: 20,
    };
    let (addr, client) = serve_with(limits, std::time::Duration::ZERO).await;
    let kv = |key: &str| format!("http://{addr}/kv/{key}");
    assert_eq!(put(&client, kv("a"), "1234").await.0, 201);
    assert_eq!(put(&client, kv("b"), "1234").await.0, 201);
    let (status, body) = put(&client, kv("c"), "1").await;
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("data.max_keys"), "{body}");
    assert_eq!(get(&client, kv("c")).await.status(), 404, "nothing stored");
    // Replacing a value needs no new key, but a larger one needs bytes: 1+4 + 1+14 = 20 fits, one more does not.
    assert_eq!(put(&client, kv("b"), "12345678901234").await.0, 204);
    let (status, body) = put(&client, kv("b"), "123456789012345").await;
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("data.max_bytes"), "{body}");
    assert_eq!(get_text(&client, kv("b")).await, "12345678901234");
    assert_eq!(client.delete(kv("b")).send().await.unwrap().status(), 204);
    assert_eq!(put(&client, kv("c"), "1").await.0, 201, "room again");
}

#[tokio::test]
async fn each_answer_carries_the_request_id_it_was_given_or_a_new_one() {
    let (addr, client) = serve().await;
    let url = format!("http://{addr}/whoami");
    let given = client
        .get(&url)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "req-42");
    let made = get(&client, &url).await;
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let again = get(&client, &url).await;
    assert_ne!(
        again.headers()["x-request-id"],
        id.as_str(),
        "one per request"
    );
}

#[tokio::test]
async fn whoami_and_healthz() {
    let (addr, client) = serve().await;
    let who: serde_json::Value = get_json(&client, format!("http://{addr}/whoami")).await;
    assert_eq!(who["id"], "data-1");
    assert_eq!(who["addr"], addr.to_string());
    let health = get(&client, format!("http://{addr}/healthz")).await;
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_kv_value_over_32_mib_gets_413_before_its_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, client) = serve().await;
    // Only the head: the answer must not wait for a body it will not take.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /kv/big HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        data_server::MAX_KV_VALUE_BYTES + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert_eq!(
        get(&client, &format!("http://{addr}/kv/big"))
            .await
            .status(),
        404,
        "nothing stored"
    );
}

#[tokio::test]
async fn kv_put_get_delete() {
    let (addr, client) = serve().await;
    let url = format!("http://{addr}/kv/greeting");
    assert_eq!(get(&client, &url).await.status(), 404);
    assert_eq!(
        client
            .put(&url)
            .body("hello")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        client.put(&url).body("hi").send().await.unwrap().status(),
        204
    );
    assert_eq!(get_text(&client, &url).await, "hi");
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 204);
    let missing = get(&client, &url).await;
    assert_eq!(missing.status(), 404);
    let error: serde_json::Value = missing.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("greeting"));
}

#[tokio::test]
async fn twenty_megabytes_stream_both_ways() {
    let (addr, client) = serve().await;
    let size = 20 * 1024 * 1024;
    let body: Vec<u8> = (0..size as u64).map(|i| (i * 7 % 256) as u8).collect();
    let digest = hex::encode(Sha256::digest(&body));

    let echo = client
        .post(format!("http://{addr}/echo"))
        .body(body.clone());
    let echoed = send(echo).await.bytes().await.unwrap();
    assert_eq!(echoed.len(), size);
    assert!(echoed[..] == body[..], "echo returns the body unchanged");

    let uploaded: serde_json::Value =
        send_json(client.put(format!("http://{addr}/upload")).body(body)).await;
    assert_eq!(uploaded["bytes"], size);
    assert_eq!(uploaded["sha256"], digest);

    let response = get(&client, format!("http://{addr}/bytes/{size}")).await;
    assert_eq!(response.content_length(), Some(size as u64));
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len(), size);
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64))
    );
}

#[tokio::test]
async fn slow_waits_and_bounds_are_enforced() {
    let (addr, client) = serve().await;
    let started = std::time::Instant::now();
    let slow: serde_json::Value = get_json(&client, format!("http://{addr}/slow?ms=200")).await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(slow["slept_ms"], 200);
    let too_slow = get(&client, format!("http://{addr}/slow?ms=600000")).await;
    assert_eq!(too_slow.status(), 400);
    let too_big = get(&client, format!("http://{addr}/bytes/99999999999")).await;
    assert_eq!(too_big.status(), 400);
}

#[tokio::test]
async fn added_latency_slows_the_data_endpoints_only() {
    use std::time::{Duration, Instant};
    let added = Duration::from_millis(400);
    let (addr, client) = serve_with(StoreLimits::default(), added).await;
    let started = Instant::now();
    let who: serde_json::Value = get_json(&client, format!("http://{addr}/whoami")).await;
    assert_eq!(who["id"], "data-1");
    assert!(started.elapsed() >= added, "{:?}", started.elapsed());
    // /slow adds its own wait on top.
    let started = Instant::now();
    let slow: serde_json::Value = get_json(&client, format!("http://{addr}/slow?ms=100")).await;
    assert_eq!(slow["slept_ms"], 100);
    assert!(started.elapsed() >= added + Duration::from_millis(100));
    // Health and metrics answer at once, so a slow server is still seen healthy.
    let started = Instant::now();
    assert_eq!(
        get(&client, format!("http://{addr}/healthz"))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&client, format!("http://{addr}/metrics"))
            .await
            .status(),
        200
    );
    assert!(started.elapsed() < added, "{:?}", started.elapsed());
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let (addr, client) = serve().await;
    for key in ["a", "b", "c"] {
        get(&client, format!("http://{addr}/kv/{key}")).await;
    }
    get(&client, format!("http://{addr}/nowhere")).await;
    let text = get_text(&client, format!("http://{addr}/metrics")).await;
    assert!(
        text.contains("data_server_requests_total{route=\"/kv/{key}\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("data_server_requests_total{route=\"unmatched\"} 1"),
        "{text}"
    );
}
