//! The dashboard in a real headless Chromium: it shows a live server with its traffic, and shows it leave while the
//! page is open, through the Server-Sent Events stream: the leave in the timeline, its sparkline stopped while the
//! page's clock runs on. The test reads the page's live DOM over the DevTools protocol (`testkit::Browser`) until
//! what a person would see is there. Screenshots are kept in `target/test-artifacts/`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use testkit::{Browser, NsqCluster};

fn artifact(name: &str) -> PathBuf {
    let dir = testkit::target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The attribute `name` of the first element of the DOM that starts with `tag` after `after`, if there is one.
fn attribute<'a>(dom: &'a str, after: &str, tag: &str, name: &str) -> Option<&'a str> {
    let from = dom.find(after)?;
    let at = from + dom[from..].find(tag)?;
    let element = &dom[at..at + dom[at..].find('>')?];
    let key = format!(" {name}=\"");
    let start = element.find(&key)? + key.len();
    Some(&element[start..start + element[start..].find('"')?])
}

fn number(dom: &str, after: &str, tag: &str, name: &str) -> Option<f64> {
    attribute(dom, after, tag, name)?.parse().ok()
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
    let base = format!("http://{}/", api.admin());

    let mut page = Browser::open(&base).await.unwrap();
    let row = r#"<tr data-id="data-dash">"#;
    let upstream_addr = upstream.to_string();
    page.wait_dom(SOON, "the live server with its traffic", |dom| {
        (dom.contains(row)
            && dom.contains(&upstream_addr)
            && dom.contains("bus: delivering")
            && dom.contains("live servers: 1")
            // Not just points (an idle second is a point too): the 50 requests/s of the load.
            && number(dom, row, "<svg", "data-max")? >= 1.0
            && number(
                dom,
                row,
                r#"<svg width="130" height="24" class="spark-p99""#,
                "data-points",
            )? >= 1.0
            // The join, from before the page opened, is in the timeline.
            && dom.contains(r#"<li data-kind="join" data-id="data-dash">"#)
            // The nsqd's canary state.
            && dom.contains(r#"<div class="nsqd" data-addr=""#)
            && dom.contains(" ago</span>"))
        .then_some(())
    })
    .await
    .unwrap();
    let shot = artifact("api-server-dashboard.png");
    page.screenshot(&shot).await.unwrap();
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "screenshot written"
    );

    // The same page across the leave: it must learn it from the stream, not from a reload (a reload would lose
    // the mark set here).
    page.eval("window.testMark = 1").await.unwrap();
    assert_eq!(
        wait_metric(&api, "api_event_streams", 1.0).await,
        1.0,
        "the page opened the event stream"
    );
    load.stop().await;
    announcer.leave().await.unwrap();
    api.wait_registry(SOON, "data-dash to leave", |d| {
        d["servers"].as_array().unwrap().is_empty()
    })
    .await
    .unwrap();
    let gone = r#"<tr data-id="data-dash" class="gone">"#;
    page.wait_dom(SOON, "the leave, with the sparkline stopped", |dom| {
        // Its line stopped: the page kept receiving seconds after the server's last point.
        let page_now = number(dom, "<body", "<body", "data-now")?;
        let line_end = number(dom, gone, "<svg", "data-last")?;
        (!dom.contains(row)
            // The server stays, greyed out.
            && dom.contains("live servers: 0")
            && dom.contains(r#"<li data-kind="leave" data-id="data-dash">"#)
            && dom.contains(r#"<div id="empty" style="display: block;">"#)
            && line_end > 0.0
            && line_end < page_now)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        page.eval("window.testMark").await.unwrap(),
        1,
        "not reloaded"
    );
    let dom = page.dom().await.unwrap();
    assert!(dom.contains(r#"<pre id="errors" hidden="">"#), "{dom}");

    // A page opened after the leave shows the same from the history the stream starts with.
    drop(page);
    let mut page = Browser::open(&base).await.unwrap();
    page.wait_dom(SOON, "the leave, from the history", |dom| {
        (dom.contains(gone) && dom.contains(r#"<li data-kind="leave" data-id="data-dash">"#))
            .then_some(())
    })
    .await
    .unwrap();
    page.screenshot(&artifact("api-server-dashboard-after-leave.png"))
        .await
        .unwrap();
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
