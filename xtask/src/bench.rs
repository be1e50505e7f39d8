//! `cargo xtask bench …`: our code against a named peer, side by side in one run.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use nsq::{Consumer, ConsumerConfig, Message, Producer, ProducerConfig};
use testkit::{NsqCluster, nsq_bin};

/// Benchmark scenarios.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scenario {
    /// Our producer (MPUB batches) against NSQ's bench_writer.
    NsqPublish,
    /// Our consumer (no-op handler, auto finish) against NSQ's bench_reader.
    NsqConsume,
    /// The archiver (durable channel -> SQLite, finish after commit) against bench_reader
    /// draining the same topic on the same nsqd.
    Archive,
}

/// Options shared by the scenarios.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Seconds each side runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Messages per MPUB.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Connections per side (the Go tools open one per GOMAXPROCS).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// RDY per connection when consuming.
    #[arg(long, default_value_t = 2500)]
    rdy: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (ours, theirs, peer) = match args.scenario {
            Scenario::NsqPublish => publish(&args).await?,
            Scenario::NsqConsume => consume(&args).await?,
            Scenario::Archive => archive(&args).await?,
        };
        let ratio = ours / theirs;
        let name = args.scenario.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
        if args.json {
            println!(
                "{{\"scenario\":\"{name}\",\"seconds\":{},\"size\":{},\"connections\":{},\"ours_ops_per_s\":{ours:.0},\"peer\":\"{peer}\",\"peer_ops_per_s\":{theirs:.0},\"ratio\":{ratio:.3}}}",
                args.seconds, args.size, args.connections
            );
        } else {
            println!("{name}: {} s each, {} B messages, {} connections", args.seconds, args.size, args.connections);
            println!("  {peer:<14} {theirs:>12.0} msg/s");
            println!("  {:<14} {ours:>12.0} msg/s", "nsq (ours)");
            println!("  ratio ours/{peer}: {ratio:.3}");
        }
        Ok(())
    })
}

/// Runs a Go bench tool and returns the ops/s it printed.
async fn go_tool(tool: &str, args: &[String], gomaxprocs: usize) -> Result<f64> {
    let out = tokio::process::Command::new(nsq_bin(tool)?)
        .args(args)
        .env("GOMAXPROCS", gomaxprocs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running {tool}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{tool} failed: {text}");
    }
    // "[bench_writer] duration: 5.0s - 76.294mb/s - 400000.000ops/s - 2.500us/op"
    text.split(" - ")
        .find_map(|part| {
            part.trim()
                .strip_suffix("ops/s")
                .and_then(|n| n.trim().parse::<f64>().ok())
        })
        .with_context(|| format!("no ops/s in {tool} output: {text}"))
}

async fn publish(a: &BenchArgs) -> Result<(f64, f64, &'static str)> {
    let cluster = NsqCluster::start(1).await?;
    let addr = cluster.nsqd_tcp(0).to_string();
    let theirs = go_tool(
        "bench_writer",
        &[
            format!("--runfor={}s", a.seconds),
            format!("--nsqd-tcp-address={addr}"),
            "--topic=bench_go".into(),
            format!("--size={}", a.size),
            format!("--batch-size={}", a.batch),
        ],
        a.connections,
    )
    .await?;
    // Ours: the same number of connections, each with one MPUB of the same size in flight.
    let body = vec![b'a'; a.size];
    let batch: Vec<&[u8]> = (0..a.batch).map(|_| &body[..]).collect();
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.connections {
        let p = Producer::new(addr.clone(), ProducerConfig::default())?;
        let (batch, sent) = (
            batch.iter().map(|b| b.to_vec()).collect::<Vec<_>>(),
            Arc::clone(&sent),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                p.multi_publish("bench_rs", &batch).await?;
                sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ours = sent.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    Ok((ours, theirs, "bench_writer"))
}

async fn consume(a: &BenchArgs) -> Result<(f64, f64, &'static str)> {
    let cluster = NsqCluster::start_with(testkit::ClusterOptions {
        nsqd: 1,
        // Keep the backlog in memory: both sides then read at nsqd's best speed.
        nsqd_args: vec!["--mem-queue-size=5000000".into()],
        ..Default::default()
    })
    .await?;
    let addr = cluster.nsqd_tcp(0).to_string();
    // Enough backlog that neither side runs dry: generous estimate of 600k msg/s.
    let backlog = (600_000 * a.seconds) as usize;
    for topic in ["bench_go", "bench_rs"] {
        cluster.create_topic(0, topic, Some("ch")).await?;
        prefill(&addr, topic, backlog, a.size).await?;
    }
    let theirs = go_tool(
        "bench_reader",
        &[
            format!("--runfor={}s", a.seconds),
            format!("--nsqd-tcp-address={addr}"),
            "--topic=bench_go".into(),
            "--channel=ch".into(),
            format!("--size={}", a.size),
            format!("--rdy={}", a.rdy),
        ],
        a.connections,
    )
    .await?;
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..a.connections {
        let r = Arc::clone(&received);
        let cfg = ConsumerConfig {
            nsqd_tcp_addresses: vec![addr.clone()],
            max_in_flight: a.rdy,
            concurrency: 1,
            ..Default::default()
        };
        consumers.push(Consumer::start(
            "bench_rs",
            "ch",
            cfg,
            move |_m: Message| {
                r.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok(()))
            },
        )?);
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let ours = received.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    for c in consumers {
        c.stop(Duration::from_secs(5)).await;
    }
    if ours * a.seconds as f64 >= backlog as f64 * 0.99 {
        eprintln!("warning: our consumer drained the whole backlog; the figure is a lower bound");
    }
    Ok((ours, theirs, "bench_reader"))
}

async fn prefill(addr: &str, topic: &str, count: usize, size: usize) -> Result<()> {
    let p = Producer::new(addr, ProducerConfig::default())?;
    let body = vec![b'a'; size];
    let batch: Vec<&[u8]> = (0..1000).map(|_| &body[..]).collect();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let p = p.clone();
        let topic = topic.to_string();
        let batch: Vec<Vec<u8>> = batch.iter().map(|b| b.to_vec()).collect();
        let n = count / 4 / 1000;
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                p.multi_publish(&topic, &batch).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn archive(a: &BenchArgs) -> Result<(f64, f64, &'static str)> {
    let status =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(testkit::workspace_root())
            .args(["build", "--release", "--quiet", "-p", "archiver"])
            .status()?;
    if !status.success() {
        bail!("building the archiver failed");
    }
    let bin = testkit::target_dir().join("release").join("archiver");
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
    eprintln!(
        "archive: {rows} rows, {bytes} bytes, {:.0} bytes/message",
        bytes as f64 / rows as f64
    );
    Ok((ours, theirs, "bench_reader"))
}
