//! The README's walkthrough, end to end, on the stack `cargo xtask up` runs: requests spread
//! over the data servers, one leaves without a failed request, a new one joins, the archive
//! holds the heartbeats, and shutdown leaves no process.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testkit::{Stack, StackOptions, eventually, project_bin, retry, workspace_root};

async fn whoami(http: &reqwest::Client, proxy: &str) -> anyhow::Result<String> {
    let resp = http.get(format!("{proxy}/whoami")).send().await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let v: serde_json::Value = resp.json().await?;
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let proxy = stack.proxy_url();

    // 1. Requests through the proxy reach all three data servers.
    let mut seen = HashSet::new();
    for _ in 0..90 {
        seen.insert(whoami(&http, &proxy).await.unwrap());
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(
        seen,
        HashSet::from(["data-1".into(), "data-2".into(), "data-3".into()])
    );

    // 2. Stopping one during a stream of requests fails none, and it leaves the registry.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stream = {
        let (stop, ok, failed, http, proxy) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            http.clone(),
            proxy.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match whoami(&http, &proxy).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let status = stack.data[0]
        .terminate(Duration::from_secs(15))
        .await
        .unwrap();
    assert!(status.success(), "data-1 exits 0 on SIGTERM: {status}");
    stack
        .api
        .wait_registry(Duration::from_secs(10), "data-1 to leave", |doc| {
            let ids: Vec<&str> = doc["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["id"].as_str())
                .collect();
            ids.len() == 2 && !ids.contains(&"data-1")
        })
        .await
        .unwrap();
    let after_leave = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < after_leave + 50 {
        tokio::task::yield_now().await;
        assert!(
            failed.load(Ordering::Relaxed) == 0,
            "a request failed while data-1 left"
        );
    }
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed ({} succeeded)",
        ok.load(Ordering::Relaxed)
    );
    for _ in 0..30 {
        assert_ne!(
            whoami(&http, &proxy).await.unwrap(),
            "data-1",
            "no traffic after leaving"
        );
    }

    // 3. A new data server joins and gets traffic.
    stack.add_data_server().await.unwrap();
    stack
        .api
        .wait_registry(Duration::from_secs(10), "data-4 to join", |doc| {
            doc["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["id"] == "data-4")
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "a request to data-4", || async {
        (whoami(&http, &proxy).await.unwrap() == "data-4").then_some(())
    })
    .await;

    // 4. The archive holds the heartbeats, including data-1's leaving one.
    let db = stack.archive_db().display().to_string();
    let archiver = project_bin("archiver").unwrap();
    let config = workspace_root().join("config/archiver.toml");
    // Each check runs `archiver query`: a quarter of a second apart.
    let archived = retry(
        Duration::from_secs(20),
        Duration::from_millis(250),
        || async {
            let out = tokio::process::Command::new(&archiver)
                .args(["query", "-c"])
                .arg(&config)
                .args([
                    "--set",
                    &format!("archive.database={db}"),
                    "--topic",
                    "data_server_addr",
                ])
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("data-4") && text.contains("leaving") {
                Ok(text)
            } else {
                Err(format!("{text}\n{}", String::from_utf8_lossy(&out.stderr)))
            }
        },
    )
    .await;
    let text = archived.unwrap_or_else(|e| panic!("archive lacks heartbeats: {e}"));
    assert!(text.lines().count() >= 4, "several heartbeats archived");

    // 5. Shutdown leaves no process behind.
    let pids = stack.pids();
    assert!(pids.len() >= 9, "{pids:?}");
    stack.shutdown().await.unwrap();
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}
