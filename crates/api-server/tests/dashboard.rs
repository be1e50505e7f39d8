//! The dashboard in a real headless Chromium: it shows a live server, and shows it leave while the page is open,
//! through the Server-Sent Events stream.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use testkit::NsqCluster;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=FILE`); returns stdout. Virtual
/// time (which the page's clock follows) runs on by `budget_ms` once the page has no open request.
///
/// Chromium itself sometimes hangs at start-up, before it opens any connection (seen about one run in three on
/// this machine, with nothing on stderr): such a run is killed with all its helper processes and started again,
/// up to three times.
async fn chromium(url: &str, mode: &str, profiles: &Path, budget_ms: u32) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
    );
    let mut logs = Vec::new();
    for attempt in 1..=3 {
        // A fresh profile each run, so no run can hand over to what is left of another.
        let profile = tempfile::tempdir_in(profiles).unwrap();
        let (log, stdout) = (
            profile.path().join("chromium.log"),
            profile.path().join("stdout"),
        );
        let mut process = testkit::ManagedProcess::spawn_with_stdout(
            "chromium",
            CHROMIUM,
            [
                "--headless",
                "--enable-logging=stderr",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.path().display()),
                "--window-size=1200,800",
                &format!("--virtual-time-budget={budget_ms}"),
                mode,
                url,
            ]
            .map(str::to_owned)
            .to_vec(),
            &log,
            &stdout,
        )
        .expect("chromium starts");
        match process.wait_exit(Duration::from_secs(45)).await {
            Ok(status) => {
                process.kill_group();
                assert!(
                    status.success(),
                    "chromium failed: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                return std::fs::read_to_string(&stdout).unwrap();
            }
            Err(_) => {
                process.kill_group();
                logs.push(format!(
                    "attempt {attempt}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
        }
    }
    panic!(
        "chromium did not finish {url} in 3 attempts of 45 s; its logs:\n{}",
        logs.join("\n")
    );
}

fn artifact(name: &str) -> PathBuf {
    let dir = testkit::target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_server_and_then_its_leave_live() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    let announcer = announcer(
        &cluster,
        "data-dash",
        "127.0.0.1:19301",
        Duration::from_millis(500),
    );
    api.wait_registry(SOON, "data-dash to join", |d| {
        d["servers"][0]["id"] == "data-dash" && d["bus"]["last_canary_ms"].is_u64()
    })
    .await
    .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let base = format!("http://{}/", api.admin());

    let dom = chromium(
        &format!("{base}?live_for=1500"),
        "--dump-dom",
        profile.path(),
        300,
    )
    .await;
    assert!(dom.contains(r#"<tr data-id="data-dash">"#), "{dom}");
    assert!(dom.contains("127.0.0.1:19301"), "{dom}");
    assert!(dom.contains("bus: delivering"), "{dom}");
    assert!(dom.contains("live servers: 1"), "{dom}");
    let shot = artifact("api-server-dashboard.png");
    chromium(
        &format!("{base}?live_for=1500"),
        &format!("--screenshot={}", shot.display()),
        profile.path(),
        300,
    )
    .await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "screenshot written"
    );

    // One page load across the leave: the page must learn it from the stream, not from a reload.
    let page = tokio::spawn({
        let url = format!("{base}?live_for=6000");
        let profile = profile.path().to_owned();
        async move { chromium(&url, "--dump-dom", &profile, 2000).await }
    });
    let streaming = wait_metric(&api, "api_event_streams", 1.0).await;
    assert_eq!(streaming, 1.0, "the page opened the event stream");
    announcer.leave().await.unwrap();
    api.wait_registry(SOON, "data-dash to leave", |d| {
        d["servers"].as_array().unwrap().is_empty()
    })
    .await
    .unwrap();
    let dom = page.await.unwrap();
    assert!(!dom.contains(r#"<tr data-id="data-dash">"#), "{dom}");
    assert!(dom.contains("live servers: 0"), "{dom}");
    assert!(dom.contains("leave  data-dash  127.0.0.1:19301"), "{dom}");
    assert!(
        dom.contains(r#"<div id="empty" style="display: block;">"#),
        "{dom}"
    );
    chromium(
        &format!("{base}?live_for=500"),
        &format!(
            "--screenshot={}",
            artifact("api-server-dashboard-empty.png").display()
        ),
        profile.path(),
        300,
    )
    .await;
}
