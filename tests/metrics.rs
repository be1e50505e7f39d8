//! The `/metrics` of all three binaries, under a bit of traffic on the `cargo xtask up` stack,
//! pass `promtool check metrics` (Prometheus's own parser and linter), carry what an operator's
//! dashboard reads, and come as OpenMetrics when the scraper asks for it. The monitoring
//! profile's scrape config passes `promtool check config`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{Stack, StackOptions, eventually, workspace_root};

const OPENMETRICS: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

/// Runs `promtool` with `args`, `stdin` on its standard input; its output when it exits 0.
fn promtool(args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("promtool (Debian package prometheus; .ci/run installs it) did not start: {e}")
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// `GET url` with `accept`: the content type and body.
async fn scrape(http: &reqwest::Client, url: &str, accept: Option<&str>) -> (String, String) {
    let mut req = http.get(url);
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, resp.text().await.unwrap())
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_passes_promtool_under_traffic() {
    let stack = Stack::start(StackOptions {
        data_servers: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..40 {
        let path = if i % 4 == 0 { "/kv/k" } else { "/whoami" };
        http.get(format!("{}{path}", stack.proxy_url()))
            .send()
            .await
            .unwrap();
    }
    let archiver = stack.archiver_metrics_url();
    // The archiver has stored heartbeats and read its channel's depth from nsqd at least once.
    let archived = eventually(
        Duration::from_secs(30),
        "the archiver's metrics",
        || async {
            let text = http.get(&archiver).send().await.ok()?.text().await.ok()?;
            let depth = text
                .lines()
                .any(|l| l.starts_with("archiver_channel_depth{"));
            (sample(&text, "archiver_messages_archived_total")? > 0.0 && depth).then_some(text)
        },
    )
    .await;
    assert!(
        archived.contains("archiver_batch_commit_duration_seconds_bucket{le=\"+Inf\"}"),
        "{archived}"
    );

    let admin = format!("{}metrics", stack.dashboard_url());
    let data = stack.data[0].url("/metrics");
    for (binary, url, prefix) in [
        ("api-server", admin.as_str(), "api"),
        ("data-server", data.as_str(), "data_server"),
        ("archiver", archiver.as_str(), "archiver"),
    ] {
        let (content_type, text) = scrape(&http, url, None).await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{binary}: {content_type}"
        );
        if let Err(problems) = promtool(&["check", "metrics"], &text) {
            panic!("{binary}: promtool check metrics:\n{problems}\n--- the metrics:\n{text}");
        }
        assert!(
            text.contains(&format!("{prefix}_build_info{{version=\"")),
            "{binary} has no build info:\n{text}"
        );
        for process in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(
                sample(&text, process).is_some(),
                "{binary} has no {process}:\n{text}"
            );
        }
        let (content_type, open) = scrape(&http, url, Some(OPENMETRICS)).await;
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{binary}: {content_type}"
        );
        assert!(open.ends_with("# EOF\n"), "{binary}:\n{open}");
    }

    // Every series the Grafana dashboard plots is one the binaries export.
    let mut exported = String::new();
    for url in [&admin, &data, &archiver] {
        exported.push_str(&scrape(&http, url, None).await.1);
    }
    for name in dashboard_metric_names() {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            exported
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {base} "))),
            "the dashboard plots {name}, which no binary exports"
        );
    }

    let (_, api) = scrape(&http, &admin, None).await;
    assert!(
        sample(&api, "api_proxy_requests_total{code=\"200\"}").unwrap_or(0.0) >= 30.0,
        "{api}"
    );
    assert!(
        sample(&api, "api_heartbeats_total{outcome=\"joined\"}").unwrap_or(0.0) >= 2.0,
        "{api}"
    );
    for id in ["data-1", "data-2"] {
        let count = format!("api_proxy_upstream_duration_seconds_count{{upstream=\"{id}\"}}");
        assert!(
            sample(&api, &count).unwrap_or(0.0) >= 1.0,
            "no {count}:\n{api}"
        );
    }
    assert!(
        sample(&api, "api_proxy_tries_count").unwrap_or(0.0) >= 40.0,
        "{api}"
    );
    let (_, data) = scrape(&http, &data, None).await;
    assert!(
        data.contains("data_server_request_duration_seconds_count{route=\"/whoami\",code=\"200\"}"),
        "{data}"
    );
    stack.shutdown().await.unwrap();
}

#[test]
fn the_monitoring_scrape_config_passes_promtool() {
    let config = workspace_root().join("deploy/monitoring/prometheus.yml");
    let config = config.to_str().unwrap();
    if let Err(problems) = promtool(&["check", "config", config], "") {
        panic!("promtool check config {config}:\n{problems}");
    }
}

/// The metric names in the expressions of the provisioned Grafana dashboard.
fn dashboard_metric_names() -> Vec<String> {
    let path = workspace_root().join("deploy/monitoring/grafana/dashboards/nsq-discovery.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(
                words
                    .filter(|w| {
                        ["api_", "data_server_", "archiver_", "process_"]
                            .iter()
                            .any(|p| w.starts_with(p))
                    })
                    .map(str::to_owned),
            );
        }
    }
    assert!(names.len() > 10, "{names:?}");
    names
}
