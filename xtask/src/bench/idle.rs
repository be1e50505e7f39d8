//! `idle-connections`: what an idle keep-alive client connection costs in memory, nginx against the api-server.
//!
//! Each side gets `--count` connections (10,000 by default) that each send one request, read the answer and then
//! sit idle; the resident memory the proxy process(es) gained, divided by the count, is the cost of one parked
//! connection (its read and write buffers, its task or its nginx connection structure, timers). A sample of the
//! connections then sends a second request, to show they were kept and still serve.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use testkit::NsqCluster;
use tokio::net::TcpStream;

use super::client::{WHOAMI, get_request, http_request};
use super::stack::{Nginx, NginxTuning, start_api_with, start_data_servers, stop_stack};
use super::{BenchArgs, Report, release_bins};

/// Idle connections per side unless `--count` says otherwise.
const DEFAULT_CONNECTIONS: usize = 10_000;
/// Connections opened at once while setting up.
const OPENING_CONCURRENCY: usize = 200;
/// Time for the proxies to settle (park their connections) before memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Connections that send a second request after the measurement.
const SECOND_REQUEST_SAMPLE: usize = 100;

/// The RSS added per idle connection to nginx and to the api-server in front of the same data server.
pub async fn idle_connections(a: &BenchArgs) -> Result<Report> {
    let count = a.count.unwrap_or(DEFAULT_CONNECTIONS);
    // This process holds every client socket; the proxies (its children, with the same limit) the server sides.
    let nofile = raise_nofile_limit(count as u64 + 1024)?;
    let bins = release_bins(&["api-server", "data-server"])?;
    let cluster = NsqCluster::start(1).await?;
    let data = start_data_servers(&bins, &cluster, &[None]).await?;
    let upstream = data[0].listen_addr();
    let mut api = start_api_with(
        &bins,
        &cluster,
        1,
        &[
            format!("server.max_connections={}", count + 1000),
            "server.keepalive_timeout=10m".into(),
        ],
    )
    .await?;
    let mut nginx = Nginx::start_tuned(
        &[upstream],
        &NginxTuning {
            // Per worker: with two or more workers, any share of the connections fits.
            worker_connections: count + 1000,
            keepalive_timeout: Some("10m"),
            ..NginxTuning::default()
        },
    )
    .await?;

    let nginx_pid = nginx.pid()?;
    let nginx_side = measure(nginx.addr, count, || tree_rss_bytes(nginx_pid)).await?;
    let api_pid = api.process().pid().context("api-server pid")?;
    let api_side = measure(api.proxy(), count, || rss_bytes(api_pid)).await?;

    nginx.stop();
    stop_stack(api, data, cluster).await?;

    let kib = |bytes: f64| (bytes / 1024.0 * 100.0).round() / 100.0;
    let mut r = Report::default();
    r.add("connections", count)
        .add("open_file_limit", nofile)
        .add("nginx_rss_before_mib", mib(nginx_side.before))
        .add("nginx_rss_idle_mib", mib(nginx_side.idle))
        .add("nginx_kib_per_connection", kib(nginx_side.per_connection()))
        .add("nginx_second_requests_ok", nginx_side.second_ok)
        .add("api_server_rss_before_mib", mib(api_side.before))
        .add("api_server_rss_idle_mib", mib(api_side.idle))
        .add(
            "api_server_kib_per_connection",
            kib(api_side.per_connection()),
        )
        .add("api_server_second_requests_ok", api_side.second_ok);
    r.ratio = Some(nginx_side.per_connection().max(1.0) / api_side.per_connection().max(1.0));
    Ok(r)
}

/// Memory of one side.
struct Side {
    connections: usize,
    before: u64,
    idle: u64,
    /// Of the [`SECOND_REQUEST_SAMPLE`] connections that sent another request, those answered 200.
    second_ok: usize,
}

impl Side {
    fn per_connection(&self) -> f64 {
        (self.idle as f64 - self.before as f64) / self.connections as f64
    }
}

/// Opens `count` connections to `addr`, one request each, and reads `rss` before and once they are idle.
async fn measure(addr: SocketAddr, count: usize, rss: impl Fn() -> Result<u64>) -> Result<Side> {
    let request = get_request(addr, WHOAMI);
    // Warm: the first requests allocate what every later one reuses (upstream connections, buffers).
    let mut warm = None;
    let mut buf = Vec::new();
    for _ in 0..10 {
        http_request(addr, &mut warm, &request, &mut buf).await?;
    }
    drop(warm);
    tokio::time::sleep(SETTLE).await;
    let before = rss()?;
    let opened: Vec<Result<TcpStream>> = futures::stream::iter(0..count)
        .map(|_| {
            let request = &request;
            async move {
                let mut conn = None;
                let mut buf = Vec::new();
                let status = http_request(addr, &mut conn, request, &mut buf).await?;
                if status != 200 {
                    bail!("GET {WHOAMI} answered {status}");
                }
                conn.context("the server closed the connection after one request")
            }
        })
        .buffer_unordered(OPENING_CONCURRENCY)
        .collect()
        .await;
    let mut conns: Vec<Option<TcpStream>> = opened
        .into_iter()
        .map(|c| c.map(Some))
        .collect::<Result<_>>()
        .with_context(|| format!("opening {count} keep-alive connections to {addr}"))?;
    tokio::time::sleep(SETTLE).await;
    let idle = rss()?;
    // A connection the server dropped meanwhile fails here rather than opening a new one: it is still `Some`.
    let mut second_ok = 0;
    let step = (count / SECOND_REQUEST_SAMPLE).max(1);
    for conn in conns.iter_mut().step_by(step) {
        let mut buf = Vec::new();
        if let Ok(200) = http_request(addr, conn, &request, &mut buf).await {
            second_ok += 1;
        }
    }
    drop(conns);
    Ok(Side {
        connections: count,
        before,
        idle,
        second_ok,
    })
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS in /proc status")?
        .parse()?;
    Ok(kib * 1024)
}

/// `VmRSS` of a process and its direct children (nginx's master and workers), in bytes.
fn tree_rss_bytes(pid: u32) -> Result<u64> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    let mut total = rss_bytes(pid)?;
    for child in children.split_whitespace() {
        total += rss_bytes(child.parse()?)?;
    }
    Ok(total)
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// Raises this process's open-file limit (inherited by the processes it starts) to at least `wanted`, raising the
/// hard limit too when allowed (root); returns the soft limit in effect, or fails when it stays below `wanted`.
fn raise_nofile_limit(wanted: u64) -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted)).is_ok() {
        return Ok(wanted);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    if hard < wanted {
        bail!(
            "the open-file limit is {hard}, below the {wanted} this run needs (run as root, or lower --count)"
        );
    }
    Ok(hard)
}
