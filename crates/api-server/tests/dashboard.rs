//! The dashboard in a real headless Chromium: it shows a live server with its traffic, and shows it leave while the
//! page is open, through the Server-Sent Events stream: the leave in the timeline, its sparkline stopped while the
//! page's clock runs on. Screenshots are kept in `target/test-artifacts/`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The attribute `name` of the first element of the dumped DOM that starts with `tag` after `after`.
fn attribute<'a>(dom: &'a str, after: &str, tag: &str, name: &str) -> &'a str {
    let from = dom
        .find(after)
        .unwrap_or_else(|| panic!("{after} is not in the page:\n{dom}"));
    let at = from
        + dom[from..]
            .find(tag)
            .unwrap_or_else(|| panic!("no {tag} after {after}:\n{dom}"));
    let element = &dom[at..at + dom[at..].find('>').unwrap()];
    let key = format!(" {name}=\"");
    let start = element
        .find(&key)
        .unwrap_or_else(|| panic!("{element} has no {name}"))
        + key.len();
    &element[start..start + element[start..].find('"').unwrap()]
}

fn number(text: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

/// Requests through the proxy every 20 ms until stopped; counts the successful ones.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            async move {
                let http = client();
                // Pacing, not waiting for a condition: a steady trickle the sparkline can show.
                let mut pace = tokio::time::interval(Duration::from_millis(20));
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    if let Ok(r) = http.get(format!("http://{proxy}/hello")).send().await
                        && r.status().is_success()
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Load { stop, ok, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_traffic_and_then_a_leave_live() {
    let cluster = NsqCluster::start(1).await.unwrap();
    create_topic(&cluster).await;
    let api = api_server(&cluster, "10s", &[]).await;
    let upstream = serve_in_process(
        axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" })),
    )
    .await;
    let announcer = announcer(
        &cluster,
        "data-dash",
        &upstream.to_string(),
        Duration::from_millis(500),
    );
    api.wait_registry(SOON, "data-dash to join", |d| {
        d["servers"][0]["id"] == "data-dash" && d["bus"]["last_canary_ms"].is_u64()
    })
    .await
    .unwrap();
    let load = Load::start(api.proxy());
    // 100 requests 20 ms apart span at least one whole second: the sparkline has a point with traffic.
    testkit::eventually(SOON, "100 requests through the proxy", || {
        let ok = load.ok.load(Ordering::Relaxed);
        async move { (ok >= 100).then_some(()) }
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let base = format!("http://{}/", api.admin());

    let dom = chromium(
        &format!("{base}?live_for=1500"),
        "--dump-dom",
        profile.path(),
        300,
    )
    .await;
    let row = r#"<tr data-id="data-dash">"#;
    assert!(dom.contains(row), "{dom}");
    assert!(dom.contains(&upstream.to_string()), "{dom}");
    assert!(dom.contains("bus: delivering"), "{dom}");
    assert!(dom.contains("live servers: 1"), "{dom}");
    // Not just points (an idle second is a point too): the 50 requests/s of the load.
    let most_rps: f64 = attribute(&dom, row, "<svg", "data-max").parse().unwrap();
    assert!(most_rps >= 1.0, "requests/s drawn: {dom}");
    assert!(
        number(attribute(
            &dom,
            row,
            r#"<svg width="130" height="24" class="spark-p99""#,
            "data-points"
        )) >= 1,
        "p99 drawn: {dom}"
    );
    assert!(
        dom.contains(r#"<li data-kind="join" data-id="data-dash">"#),
        "the join, from before the page opened, is in the timeline: {dom}"
    );
    assert!(
        dom.contains(r#"<div class="nsqd" data-addr=""#) && dom.contains(" ago</span>"),
        "the nsqd's canary state: {dom}"
    );
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

    // One page load across the leave: the page must learn it from the stream, not from a reload. The streams of
    // the pages above must be closed first, so that the one counted below is this page's.
    testkit::eventually(SOON, "the earlier pages' streams to close", || async {
        (api.metric("api_event_streams").await.unwrap_or(1.0) == 0.0).then_some(())
    })
    .await;
    let page = tokio::spawn({
        let url = format!("{base}?live_for=6000");
        let profile = profile.path().to_owned();
        async move { chromium(&url, "--dump-dom", &profile, 2000).await }
    });
    let streaming = wait_metric(&api, "api_event_streams", 1.0).await;
    assert_eq!(streaming, 1.0, "the page opened the event stream");
    load.stop().await;
    announcer.leave().await.unwrap();
    api.wait_registry(SOON, "data-dash to leave", |d| {
        d["servers"].as_array().unwrap().is_empty()
    })
    .await
    .unwrap();
    let dom = page.await.unwrap();
    assert!(dom.contains(r#"<pre id="errors" hidden="">"#), "{dom}");
    let gone = r#"<tr data-id="data-dash" class="gone">"#;
    assert!(!dom.contains(row), "{dom}");
    assert!(dom.contains(gone), "the server stays, greyed out: {dom}");
    assert!(dom.contains("live servers: 0"), "{dom}");
    assert!(
        dom.contains(r#"<li data-kind="leave" data-id="data-dash">"#),
        "the leave is in the timeline: {dom}"
    );
    assert!(
        dom.contains(r#"<div id="empty" style="display: block;">"#),
        "{dom}"
    );
    // Its line stopped: the page kept receiving seconds after the server's last point.
    let page_now = number(attribute(&dom, "<body", "<body", "data-now"));
    let line_end = number(attribute(&dom, gone, "<svg", "data-last"));
    assert!(
        line_end > 0 && line_end < page_now,
        "the sparkline ends at {line_end}, the page is at {page_now}: {dom}"
    );
    // A page opened after the leave shows the same from the history the stream starts with.
    let dom = chromium(
        &format!("{base}?live_for=1500"),
        "--dump-dom",
        profile.path(),
        300,
    )
    .await;
    assert!(dom.contains(gone), "{dom}");
    assert!(
        dom.contains(r#"<li data-kind="leave" data-id="data-dash">"#),
        "{dom}"
    );
    chromium(
        &format!("{base}?live_for=1500"),
        &format!(
            "--screenshot={}",
            artifact("api-server-dashboard-after-leave.png").display()
        ),
        profile.path(),
        300,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_gzips_the_dashboard_but_not_the_stream_and_tags_each_answer_with_a_request_id()
 {
    let cluster = NsqCluster::start(1).await.unwrap();
    let api = api_server(&cluster, "10s", &[]).await;
    let http = client();
    let page = http
        .get(format!("http://{}/", api.admin()))
        .header("accept-encoding", "gzip")
        .header("x-request-id", "dash-1")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-encoding"], "gzip");
    assert_eq!(page.headers()["x-request-id"], "dash-1");
    let compressed = page.bytes().await.unwrap().len();
    let plain = http
        .get(format!("http://{}/", api.admin()))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.headers()["x-request-id"].len(), 36, "a UUID");
    let plain = plain.bytes().await.unwrap().len();
    assert!(
        compressed * 2 < plain,
        "gzip: {compressed} bytes, plain: {plain}"
    );
    // An event stream is sent as it comes, never held back by a compressor.
    let stream = http
        .get(format!("http://{}/registry/events?max_ms=300", api.admin()))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(stream.headers().get("content-encoding").is_none());
    let text = stream.text().await.unwrap();
    assert!(text.starts_with("event: history\n"), "{text}");
    assert!(text.contains("event: snapshot\n"), "{text}");
    // A body over ADMIN_MAX_BODY_BYTES is refused from its Content-Length, before it is sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(api.admin()).await.unwrap();
    let head = format!(
        "GET /registry HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        api_server::ADMIN_MAX_BODY_BYTES + 1
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
}
