//! `archive`: the archiver draining a backlog against bench_reader on the same nsqd.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::NsqCluster;

use super::nsq::prefill;
use super::{BenchArgs, Report, go_tool, release_bins};

pub async fn archive(a: &BenchArgs) -> Result<Report> {
    let bin = release_bins(&["archiver"])?.join("archiver");
    let cluster = NsqCluster::start_with(testkit::ClusterOptions {
        nsqd: 1,
        nsqd_args: vec!["--mem-queue-size=10000000".into()],
        ..Default::default()
    })
    .await?;
    let addr = cluster.nsqd_tcp(0).to_string();
    // Both channels get the same backlog; bench_reader must not run dry within its time.
    let backlog = (600_000 * a.seconds) as usize;
    cluster.create_topic(0, "bench", Some("archive")).await?;
    cluster.create_topic(0, "bench", Some("ch")).await?;
    prefill(&addr, "bench", backlog, a.size).await?;
    let theirs = go_tool(
        "bench_reader",
        &[
            format!("--runfor={}s", a.seconds),
            format!("--nsqd-tcp-address={addr}"),
            "--topic=bench".into(),
            "--channel=ch".into(),
            format!("--size={}", a.size),
            format!("--rdy={}", a.rdy),
        ],
        a.connections,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("archive.db");
    let start = Instant::now();
    let mut archiver = testkit::ManagedProcess::spawn(
        "archiver",
        &bin,
        vec![
            "run".into(),
            "--set".into(),
            format!("archive.database={}", db.display()),
            "--set".into(),
            "archive.topics=[\"bench\"]".into(),
            "--set".into(),
            format!("archive.nsqd_tcp_addresses=[\"{addr}\"]"),
            "--set".into(),
            "archive.lookupd_http_addresses=[]".into(),
        ],
        vec![("RUST_LOG".into(), "warn".into())],
        dir.path().join("archiver.log"),
    )?;
    // Ours: the time until the archive channel is empty (all committed and finished).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = cluster.stats(0, "bench", Some("archive")).await?;
        let ch = stats
            .channel("bench", "archive")
            .context("archive channel")?;
        if ch.depth == 0 && ch.in_flight_count == 0 {
            break;
        }
        if let Some(status) = archiver.try_wait()? {
            bail!("archiver exited with {status}: {}", archiver.log_tail(20));
        }
        if Instant::now() > deadline {
            bail!("the archiver did not drain {backlog} messages in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ours = backlog as f64 / start.elapsed().as_secs_f64();
    let status = archiver.terminate(Duration::from_secs(30)).await?;
    if !status.success() {
        bail!("archiver exited with {status} on SIGTERM");
    }
    let out = tokio::process::Command::new(&bin)
        .args(["stats", "--json", "--set"])
        .arg(format!("archive.database={}", db.display()))
        .output()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("archiver stats: {}", String::from_utf8_lossy(&out.stderr)))?;
    let (rows, bytes) = (
        v["total"].as_u64().unwrap_or(0),
        v["db_bytes"].as_u64().unwrap_or(0),
    );
    if rows != backlog as u64 {
        bail!("archived {rows} rows, expected {backlog}");
    }
    let mut r = Report::default();
    r.add("seconds", a.seconds)
        .add("size", a.size)
        .add("bench_reader_msg_per_s", theirs.round())
        .add("archiver_msg_per_s", ours.round())
        .add("archived_rows", rows)
        .add("db_bytes_per_message", (bytes as f64 / rows as f64).round());
    r.ratio = Some(ours / theirs);
    Ok(r)
}
