//! The proxy when servers fail: crashes, leaves, refused connections, slow answers, and the retry budget.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use testkit::http::get;
use testkit::{NsqCluster, eventually};

/// Bound for the load of a test to reach a number of answers (generous: proves the failover, not the speed).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_request_stream_costs_clients_nothing_and_ejects_the_server() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let mut servers = data_servers(&cluster, 3, "500ms").await;
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
    let answered = |n: usize| {
        let ok = &ok;
        move || std::future::ready((ok.load(Ordering::Relaxed) >= n).then_some(()))
    };
    eventually(LOAD_TIMEOUT, "100 answers", answered(100)).await;
    servers[0].kill();
    let before = ok.load(Ordering::Relaxed);
    eventually(LOAD_TIMEOUT, "300 more answers", answered(before + 300)).await;
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
    // Still within its TTL, so listed, but ejected by passive health.
    let killed = find_server(&doc, "ds-0").expect("ds-0 still within its TTL");
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
async fn an_upstream_slower_than_the_try_timeout_gives_504_json() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let _server = data_server(&cluster, "ds-slow", "1s").await;
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
async fn a_get_to_a_hung_server_is_answered_by_another_after_the_try_timeout() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let hung = data_server(&cluster, "ds-hung", "1s").await;
    let _live = data_server(&cluster, "ds-live", "1s").await;
    let api = api_server(
        &cluster,
        "10s",
        &["proxy.try_timeout=300ms", "balancer.strategy=round_robin"],
    )
    .await;
    wait_servers(&api, 2).await;
    // Alive TCP, no answers: the kernel still accepts its connections.
    hung.freeze().unwrap();
    let http = client();
    for _ in 0..4 {
        assert_eq!(whoami(&http, &api).await.unwrap(), "ds-live");
    }
    assert!(api.metric("api_proxy_retries_total").await.unwrap() >= 1.0);
    // The dashboard charges ds-live with its own answer time, not with the hung server's 300 ms before it.
    let p99s = dashboard_p99s_ms(&http, &api, "ds-live").await;
    assert!(!p99s.is_empty(), "ds-live's tries are on the dashboard");
    assert!(
        p99s.iter().all(|ms| *ms < 250.0),
        "ds-live's p99 per second: {p99s:?}"
    );
    // Not so a request that may have changed something: a POST is answered 504 rather than sent twice.
    let upload = http
        .post(format!("http://{}/echo", api.proxy()))
        .body("once")
        .build()
        .unwrap();
    // Round robin with the hung server ejected for a while: once it is back in rotation, the first POST to it
    // times out.
    let statuses = std::sync::Mutex::new(Vec::new());
    testkit::eventually(
        Duration::from_secs(10),
        "a POST to reach the hung server",
        || async {
            let status = http
                .execute(upload.try_clone()?)
                .await
                .ok()?
                .status()
                .as_u16();
            statuses.lock().unwrap().push(status);
            (status == 504).then_some(())
        },
    )
    .await;
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 504),
        "{statuses:?}"
    );
    hung.thaw().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_server_and_ejects_the_dead_one() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let _server = data_server(&cluster, "ds-live", "1s").await;
    // Announced but not listening: every connection to it is refused.
    let refusing = testkit::RefusingPort::new();
    let dead = refusing.addr().to_string();
    let _ghost = announcer(&cluster, "ghost", &dead, Duration::from_secs(1));
    let api = api_server(&cluster, "10s", &["balancer.strategy=round_robin"]).await;
    wait_servers(&api, 2).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(whoami(&http, &api).await.unwrap(), "ds-live");
    }
    let doc = api.registry().await.unwrap();
    let ghost = find_server(&doc, "ghost").unwrap();
    assert!(ghost["ejections"].as_u64().unwrap() >= 1, "{doc}");
    assert!(api.metric("api_proxy_retries_total").await.unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_retries_when_every_server_fails() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    // Three servers that refuse every connection.
    let refusing: Vec<testkit::RefusingPort> =
        (0..3).map(|_| testkit::RefusingPort::new()).collect();
    let _ghosts: Vec<Announcer> = (0..3)
        .map(|n| {
            let dead = refusing[n].addr().to_string();
            announcer(
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
        let response = get(&http, format!("http://{}/x", api.proxy())).await;
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
    let mut staying = data_server(&cluster, "ds-stay", "1s").await;
    let mut leaving = data_server(&cluster, "ds-leave", "1s").await;
    let api = api_server(&cluster, "10s", &["balancer.strategy=round_robin"]).await;
    wait_servers(&api, 2).await;
    let http = client();
    let seen = count_whoami(&http, &api, 20).await;
    assert_eq!(seen.len(), 2, "{seen:?}");

    leaving.signal(testkit::Signal::SIGTERM).unwrap();
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
    assert!(leaving.wait_exit(SOON).await.unwrap().success());
    staying.kill();
}

/// The p99 (ms) of each second with an answered try of server `id`, as the dashboard's event stream carries them
/// (the history, then the seconds of two snapshots, so the seconds just past are in).
async fn dashboard_p99s_ms(http: &reqwest::Client, api: &testkit::ApiServer, id: &str) -> Vec<f64> {
    let text = http
        .get(format!(
            "http://{}/registry/events?max_ms=2500",
            api.admin()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut p99s = Vec::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        let seconds: Vec<&serde_json::Value> = match v["kind"].as_str() {
            Some("history") => v["traffic"]["servers"][id]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
            Some("snapshot") => vec![&v["traffic"]["servers"][id]],
            _ => Vec::new(),
        };
        p99s.extend(seconds.iter().filter_map(|s| s[2].as_f64()));
    }
    p99s
}
