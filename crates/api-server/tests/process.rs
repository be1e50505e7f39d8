//! The api-server binary as an operator meets it: config errors, version, health, readiness, graceful stop.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::http::get;
use testkit::{NsqCluster, Signal, eventually};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(api_server_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The stderr of a run that must have stopped at a bad config (exit status 2).
#[track_caller]
fn config_error(out: std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_config_exits_2_with_one_line_naming_the_key() {
    let out = run(&[
        "--set",
        "discovery.nsqd_tcp_addresses=127.0.0.1:4150",
        "--set",
        "discovery.ttl=0s",
    ]);
    let stderr = config_error(out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--set discovery.ttl: discovery.ttl"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-server.toml");
    std::fs::write(&file, "[discovery]\nttl = \"10s\"\nlookupd = [\"x\"]\n").unwrap();
    let out = run(&["-c", file.to_str().unwrap()]);
    let stderr = config_error(out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(file.to_str().unwrap()) && stderr.contains("lookupd"),
        "{stderr}"
    );

    let out = run(&[
        "--set",
        "discovery.nsqd_tcp_addresses=127.0.0.1:4150",
        "--set",
        "discovery.hmac_key_file=/nonexistent/key",
        "--set",
        "server.listen=127.0.0.1:0",
        "--set",
        "server.admin_listen=127.0.0.1:0",
    ]);
    let stderr = config_error(out);
    assert!(stderr.contains("discovery.hmac_key_file"), "{stderr}");

    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("api-server ")
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = testkit::workspace_root().join("config/api-server.toml");
    let config: api_server::Config = svc::ConfigLoader::new("")
        .file(example)
        .load()
        .expect("config/api-server.toml loads");
    assert_eq!(
        config.discovery.lookupd_http_addresses[0].to_string(),
        "127.0.0.1:4161"
    );
}

/// `config/api-server.toml` and the README's config table name exactly the keys of
/// `api_server::Config`, and every value the file sets is the default, but for the local stack's
/// nsqlookupd.
#[test]
fn the_example_file_and_the_readme_match_the_defaults() {
    testkit::check_config_docs::<api_server::Config>(
        "api-server",
        &[
            "discovery.lookupd_http_addresses",
            "discovery.hmac_key_files",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_a_graceful_stop_that_finishes_requests_in_flight() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let mut api = api_server(&cluster, "10s", &[]).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin = api.admin();
    let healthz = get(&http, format!("http://{admin}/healthz")).await;
    assert_eq!(healthz.status(), 200);
    let readyz = get(&http, format!("http://{admin}/readyz")).await;
    assert_eq!(readyz.status(), 503, "no live server yet");

    let _server = data_server(&cluster, "ds-g", "1s").await;
    api.wait_registry(SOON, "ds-g", |d| {
        d["servers"].as_array().unwrap().len() == 1
    })
    .await
    .unwrap();
    let readyz = get(&http, format!("http://{admin}/readyz")).await;
    assert_eq!(readyz.status(), 200);
    let body: serde_json::Value = readyz.json().await.unwrap();
    assert_eq!(body["live_servers"], 1);
    assert_eq!(body["nsqd_connections"], 1);

    // A request in flight when SIGTERM arrives is answered, then the process exits 0.
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), format!("http://{}/slow?ms=1500", api.proxy()));
        async move { http.get(url).send().await }
    });
    eventually(SOON, "the slow request to start", || async {
        let sample = "api_proxy_upstream_requests_total{upstream=\"ds-g\"}";
        (api.metric(sample).await.unwrap() >= 1.0).then_some(())
    })
    .await;
    api.process().signal(Signal::SIGTERM).unwrap();
    let response = slow
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    let stopping = std::time::Instant::now();
    let status = api.process().wait_exit(SOON).await.unwrap();
    assert!(status.success(), "{status}\n{}", api.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopped after {:?}:\n{}",
        stopping.elapsed(),
        api.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_the_drain_short() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    // Without the second signal the drain would wait up to a minute for the slow request.
    let mut api = api_server(&cluster, "10s", &["shutdown.timeout=60s"]).await;
    let _server = data_server(&cluster, "ds-f", "1s").await;
    api.wait_registry(SOON, "ds-f", |d| {
        d["servers"].as_array().unwrap().len() == 1
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let slow = tokio::spawn({
        let url = format!("http://{}/slow?ms=60000", api.proxy());
        async move { http.get(url).send().await }
    });
    eventually(SOON, "the slow request to be proxied", || async {
        let sample = "api_proxy_upstream_requests_total{upstream=\"ds-f\"}";
        (api.metric(sample).await.ok()? >= 1.0).then_some(())
    })
    .await;

    api.process().signal(Signal::SIGTERM).unwrap();
    eventually(SOON, "the drain to start", || async {
        api.log()
            .contains("SIGTERM received, shutting down gracefully (send another to force)")
            .then_some(())
    })
    .await;
    assert!(
        api.process().try_wait().unwrap().is_none(),
        "the drain waits for the slow request:\n{}",
        api.log()
    );
    api.process()
        .assert_forced_exit(Signal::SIGINT, svc::FORCED_EXIT_CODE)
        .await;
    assert!(slow.await.unwrap().is_err(), "the cut request fails");
}
