//! `cargo xtask bench …`: our code against a named peer, side by side in one run. Each
//! scenario returns a [`Report`]: a few named figures and the ratio against the peer.

mod archive;
mod client;
mod cold_start;

pub use archive::ArchiveBackend;
mod discovery;
mod heterogeneous;
mod hostile;
mod idle;
mod nsq;
mod proxy;
mod stack;
mod websocket;

use std::process::Stdio;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use testkit::nsq_bin;

/// Benchmark scenarios.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scenario {
    /// Our producer (MPUB batches) against NSQ's bench_writer.
    NsqPublish,
    /// Our consumer (no-op handler, auto finish) against NSQ's bench_reader.
    NsqConsume,
    /// The archiver (durable channel -> SQLite or PostgreSQL, finish after commit), one and then
    /// two sharing the channel and database, against bench_reader draining the same topic on
    /// the same nsqd.
    Archive,
    /// Time from a data server's first heartbeat to /registry, and from SIGTERM to removal.
    DiscoveryLatency,
    /// 10,000 simulated data servers heartbeating once a second through real nsqd (`--count`, `--interval`).
    RegistryScale,
    /// 3 data servers on a 5 s interval; the api-server (with `discovery.registry_file`) restarted 20 times: the
    /// time from starting it to its first routed request (p50, max), and requests that failed.
    ColdStart,
    /// wrk against one data server, nginx and the api-server in front of the same 3.
    Proxy,
    /// 3 data servers, one 20 ms slower (`server.added_latency`): an open-loop load (half the api-server's
    /// measured maximum, or --rate) through the api-server with p2c and with p2c_ewma, and through nginx with
    /// least_conn and with round robin, in alternating one-second rounds (--seconds). p50/p99/p99.9 of each;
    /// `ratio` = nginx least_conn p99 / the api-server's best p99.
    Heterogeneous,
    /// 10,000 idle keep-alive connections (--count), each after one request, to nginx and to the api-server in
    /// front of the same data server: memory (RSS) added per connection. `ratio` = nginx's / the api-server's.
    IdleConnections,
    /// SIGKILL one of 3 data servers during a wrk run against the api-server, then restart it.
    Failover,
    /// Hostile clients (stalled, trickling, Expect without body, bad trailer, long chunk
    /// extensions; 5 requests/s each) against the api-server and against nginx (max_fails=1)
    /// in front of the same 3 data servers, while ordinary clients send GETs and small PUTs at
    /// a fixed rate (--seconds: default 30). Reports, per side, the ordinary clients' failures,
    /// ejections of the (healthy) data servers, p99 with hostiles / p99 without, and what the
    /// hostile clients got back. `ratio` = nginx's p99 ratio / the api-server's (above 1: our
    /// latency suffers less from the hostiles than nginx's).
    Hostile,
    /// 64 closed-loop WebSocket clients (64-byte messages to the data server's `/ws` echo) through
    /// the api-server and through nginx (upgrade headers set) in front of the same data server,
    /// and straight to it for reference; one-second rounds, the sides taking turns, --seconds
    /// each. `ratio` = the api-server's messages/s / nginx's. `--count` sets the sockets per side.
    Websocket,
}

impl Scenario {
    /// Seconds each side runs when `--seconds` is not given.
    fn default_seconds(self) -> u64 {
        match self {
            Scenario::Hostile => hostile::DEFAULT_SECONDS,
            _ => 5,
        }
    }
}

/// Options shared by the scenarios.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Seconds each side runs (default 5; hostile: 30).
    #[arg(long = "seconds", value_name = "SECONDS")]
    seconds_arg: Option<u64>,
    /// `--seconds`, or the scenario's default.
    #[arg(skip)]
    pub seconds: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Messages per MPUB.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// Connections per side (the Go tools open one per GOMAXPROCS).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// RDY per connection when consuming.
    #[arg(long, default_value_t = 2500)]
    pub rdy: u64,
    /// Iterations (discovery-latency), simulated servers (registry-scale), wrk connections (proxy,
    /// failover), WebSocket clients per side (websocket) or idle connections (idle-connections).
    #[arg(long)]
    pub count: Option<usize>,
    /// registry-scale: each simulated server's heartbeat interval (`1s`, `5s`, `500ms`).
    #[arg(long, value_parser = parse_interval, default_value = "1s")]
    pub interval: std::time::Duration,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// nsq-publish / nsq-consume: our client over TLS against our client in plain TCP on the same nsqd (NSQ's Go
    /// bench tools cannot speak TLS).
    #[arg(long)]
    pub tls: bool,
    /// heterogeneous: the open-loop rate in requests/s (default: half the api-server's measured maximum).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Where the archive scenario stores.
    #[arg(long, value_enum, default_value_t = archive::ArchiveBackend::Sqlite)]
    pub backend: archive::ArchiveBackend,
}

/// What a scenario measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Named figures, in print order.
    pub figures: Vec<(String, Value)>,
    /// Ours against the peer (higher is better), when the scenario has a peer.
    pub ratio: Option<f64>,
}

impl Report {
    /// Adds a figure.
    pub fn add(&mut self, name: &str, value: impl Into<Value>) -> &mut Self {
        self.figures.push((name.to_string(), value.into()));
        self
    }
}

pub fn run(mut args: BenchArgs) -> Result<()> {
    args.seconds = args
        .seconds_arg
        .unwrap_or_else(|| args.scenario.default_seconds());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let report = match args.scenario {
            Scenario::NsqPublish => nsq::publish(&args).await?,
            Scenario::NsqConsume => nsq::consume(&args).await?,
            Scenario::Archive => archive::archive(&args).await?,
            Scenario::DiscoveryLatency => discovery::latency(&args).await?,
            Scenario::RegistryScale => discovery::scale(&args).await?,
            Scenario::ColdStart => cold_start::cold_start(&args).await?,
            Scenario::Proxy => proxy::proxy(&args).await?,
            Scenario::Failover => proxy::failover(&args).await?,
            Scenario::Heterogeneous => heterogeneous::heterogeneous(&args).await?,
            Scenario::IdleConnections => idle::idle_connections(&args).await?,
            Scenario::Hostile => hostile::hostile(&args).await?,
            Scenario::Websocket => websocket::websocket(&args).await?,
        };
        let name = args
            .scenario
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        if args.json {
            let mut m = Map::new();
            m.insert("scenario".into(), name.into());
            for (k, v) in report.figures {
                m.insert(k, v);
            }
            if let Some(r) = report.ratio {
                m.insert("ratio".into(), (((r * 1000.0).round()) / 1000.0).into());
            }
            println!("{}", Value::Object(m));
        } else {
            println!("{name}:");
            for (k, v) in &report.figures {
                println!("  {k:<28} {v}");
            }
            if let Some(r) = report.ratio {
                println!("  {:<28} {r:.3}", "ratio");
            }
        }
        Ok(())
    })
}

/// `--interval`: a whole number of `ms` or `s`, at least 100 ms.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit_ms) = match text.strip_suffix("ms") {
        Some(n) => (n, 1),
        None => (text.strip_suffix('s').unwrap_or(text), 1000),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 5s or 500ms, found {text:?}"))?;
    let d = std::time::Duration::from_millis(n * unit_ms);
    if d < std::time::Duration::from_millis(100) {
        return Err(format!("expected at least 100ms, found {text:?}"));
    }
    Ok(d)
}

/// `x` to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs a Go bench tool and returns the ops/s it printed.
pub async fn go_tool(tool: &str, args: &[String], gomaxprocs: usize) -> Result<f64> {
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

/// Builds release binaries of the given packages and returns target/release.
pub fn release_bins(packages: &[&str]) -> Result<std::path::PathBuf> {
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(testkit::workspace_root())
        .args(["build", "--release", "--quiet"]);
    // What `cargo run` set for xtask itself: ring's build script reruns when CARGO_MANIFEST_DIR
    // changes, so inheriting it rebuilt ring and everything above it on every bench, and again
    // on the next `cargo xtask`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                &*key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !cmd.status()?.success() {
        bail!("building {packages:?} in release failed");
    }
    Ok(testkit::target_dir().join("release"))
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
pub const TICKS_PER_S: f64 = 100.0;

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of the whole line; utime and stime are 14 and 15.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// CPU time of a process and its direct children (nginx's master and workers), in clock ticks.
pub fn tree_cpu_ticks(pid: u32) -> Result<u64> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    let mut total = cpu_ticks(pid)?;
    for child in children.split_whitespace() {
        total += cpu_ticks(child.parse()?).unwrap_or(0);
    }
    Ok(total)
}
