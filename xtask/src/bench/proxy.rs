//! `proxy` and `failover`: the api-server's reverse proxy under wrk, against nginx.
//!
//! Everything listens on 127.0.0.1 and every child (nsqd, nsqlookupd, data servers, the
//! api-server, nginx, wrk) is stopped before the scenario returns.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::NsqCluster;

use super::client::{OpenLoop, WHOAMI as PATH, get_request, open_loop};
use super::stack::{
    Nginx, start_api, start_data_server, start_data_servers, stop_stack, whoami_count,
};
use super::{BenchArgs, Report, TICKS_PER_S, cpu_ticks, release_bins, round3, tree_cpu_ticks};

/// wrk threads (the same for every target).
const WRK_THREADS: usize = 2;
/// wrk connections unless `--count` says otherwise (the same for every target).
const WRK_CONNECTIONS: usize = 64;
/// Request rate of the open-loop comparison, unless half the measured maximum is lower.
const FIXED_RATE: f64 = 2000.0;
/// Connections of the open-loop generator (requests queue behind them when all are busy,
/// and the wait counts: latency runs from the scheduled send time).
const OPEN_LOOP_CONNECTIONS: usize = 64;
/// Length of one open-loop round.
const ROUND: Duration = Duration::from_secs(1);

/// wrk against one data server directly, nginx, and the api-server in front of the same 3.
pub async fn proxy(a: &BenchArgs) -> Result<Report> {
    let bins = release_bins(&["api-server", "data-server"])?;
    let connections = a.count.unwrap_or(WRK_CONNECTIONS);
    let cluster = NsqCluster::start(1).await?;
    let mut data = start_data_servers(&bins, &cluster, &[None, None, None]).await?;
    let upstreams: Vec<SocketAddr> = data.iter().map(|d| d.listen_addr()).collect();
    let mut api = start_api(&bins, &cluster).await?;
    let mut nginx = Nginx::start(&upstreams, "").await?;

    let direct_addr = upstreams[0];
    let direct = wrk(direct_addr, connections, a.seconds).await?;
    // nginx and the api-server in alternating one-second rounds (ABBA order), so that load which comes and goes on
    // the machine falls on both alike: back-to-back runs of 5 s each gave ratios from 0.88 to 1.10 for the same
    // two builds. CPU per proxied request of each proxy (nginx: master and workers) is counted over its rounds
    // only: a figure that does not depend on how the two cores were shared with wrk and the data servers.
    let nginx_pid = nginx.pid()?;
    let api_pid = api.process().pid().context("api-server pid")?;
    let (mut nginx_rounds, mut api_rounds) = (Vec::new(), Vec::new());
    let (mut nginx_ticks, mut api_ticks) = (0, 0);
    // The data servers' CPU behind each proxy: what the headers a proxy adds cost the backends.
    let data_pids: Vec<u32> = data.iter_mut().filter_map(|d| d.process().pid()).collect();
    let data_ticks = || -> Result<u64> { data_pids.iter().map(|&p| cpu_ticks(p)).sum() };
    let (mut data_nginx_ticks, mut data_api_ticks) = (0, 0);
    for round in 0..a.seconds.max(1) {
        for api_side in [round % 2 == 1, round % 2 == 0] {
            let data0 = data_ticks()?;
            if api_side {
                let cpu0 = cpu_ticks(api_pid)?;
                api_rounds.push(wrk(api.proxy(), connections, 1).await?);
                api_ticks += cpu_ticks(api_pid)? - cpu0;
                data_api_ticks += data_ticks()? - data0;
            } else {
                let cpu0 = tree_cpu_ticks(nginx_pid)?;
                nginx_rounds.push(wrk(nginx.addr, connections, 1).await?);
                nginx_ticks += tree_cpu_ticks(nginx_pid)? - cpu0;
                data_nginx_ticks += data_ticks()? - data0;
            }
        }
    }
    let via_nginx = Wrk::merge(&nginx_rounds);
    let via_api = Wrk::merge(&api_rounds);
    let nginx_cpu_us = cpu_us_per_request(nginx_ticks, via_nginx.requests);
    let api_cpu_us = cpu_us_per_request(api_ticks, via_api.requests);
    let round_ratios: Vec<f64> = api_rounds
        .iter()
        .zip(&nginx_rounds)
        .map(|(a, n)| round3(a.requests_per_s / n.requests_per_s))
        .collect();

    // Below saturation: half of the slowest measured maximum, at most FIXED_RATE.
    let rate = FIXED_RATE
        .min(0.5 * direct.requests_per_s.min(via_api.requests_per_s))
        .max(100.0);
    // One-second rounds, alternating, so load that comes and goes on the machine falls on
    // both sides alike.
    // nginx too, as the reference for what one more hop costs on this machine.
    let (mut direct_rounds, mut nginx_rounds, mut api_rounds) =
        (Vec::new(), Vec::new(), Vec::new());
    let get = |addr| -> Arc<[Vec<u8>]> { vec![get_request(addr, PATH)].into() };
    let (direct_req, nginx_req, api_req) = (get(direct_addr), get(nginx.addr), get(api.proxy()));
    for round in 0..a.seconds.max(1) {
        let c = OPEN_LOOP_CONNECTIONS;
        direct_rounds.push(open_loop(direct_addr, rate, ROUND, c, &direct_req).await?);
        // nginx and the api-server alternately first (ABBA).
        for api_side in [round % 2 == 1, round % 2 == 0] {
            if api_side {
                api_rounds.push(open_loop(api.proxy(), rate, ROUND, c, &api_req).await?);
            } else {
                nginx_rounds.push(open_loop(nginx.addr, rate, ROUND, c, &nginx_req).await?);
            }
        }
    }
    let open_direct = OpenLoop::merge(direct_rounds)?;
    let open_nginx = OpenLoop::merge(nginx_rounds)?;
    let open_api = OpenLoop::merge(api_rounds)?;

    nginx.stop();
    stop_stack(api, data, cluster).await?;

    let mut r = Report::default();
    r.add("seconds", a.seconds)
        .add("wrk_threads", WRK_THREADS)
        .add("wrk_connections", connections)
        .add("path", PATH);
    for (name, w) in [
        ("direct", &direct),
        ("nginx", &via_nginx),
        ("api_server", &via_api),
    ] {
        r.add(&format!("{name}_req_per_s"), w.requests_per_s.round())
            .add(&format!("{name}_p50_ms"), round3(w.p50_ms))
            .add(&format!("{name}_p99_ms"), round3(w.p99_ms))
            .add(&format!("{name}_errors"), w.non_2xx + w.socket_errors);
    }
    r.add("round_ratios", round_ratios)
        .add(
            "data_servers_cpu_us_per_request_behind_nginx",
            cpu_us_per_request(data_nginx_ticks, via_nginx.requests),
        )
        .add(
            "data_servers_cpu_us_per_request_behind_api_server",
            cpu_us_per_request(data_api_ticks, via_api.requests),
        )
        .add("nginx_cpu_us_per_request", nginx_cpu_us)
        .add("api_server_cpu_us_per_request", api_cpu_us)
        .add("fixed_rate_req_per_s", rate.round())
        .add("fixed_rate_direct_p50_ms", round3(open_direct.p50_ms))
        .add("fixed_rate_direct_p99_ms", round3(open_direct.p99_ms))
        .add("fixed_rate_nginx_p50_ms", round3(open_nginx.p50_ms))
        .add("fixed_rate_nginx_p99_ms", round3(open_nginx.p99_ms))
        .add("fixed_rate_api_server_p50_ms", round3(open_api.p50_ms))
        .add("fixed_rate_api_server_p99_ms", round3(open_api.p99_ms))
        .add(
            "fixed_rate_samples",
            format!(
                "{}/{}/{}",
                open_direct.samples, open_nginx.samples, open_api.samples
            ),
        )
        .add(
            "fixed_rate_errors",
            format!(
                "{}/{}/{}",
                open_direct.errors, open_nginx.errors, open_api.errors
            ),
        )
        .add(
            "nginx_added_p99_ms",
            round3(open_nginx.p99_ms - open_direct.p99_ms),
        )
        .add("added_p99_ms", round3(open_api.p99_ms - open_direct.p99_ms));
    r.ratio = Some(via_api.requests_per_s / via_nginx.requests_per_s);
    Ok(r)
}
/// SIGKILL one of 3 data servers during a wrk run against the api-server, then restart it.
pub async fn failover(a: &BenchArgs) -> Result<Report> {
    let bins = release_bins(&["api-server", "data-server"])?;
    let connections = a.count.unwrap_or(WRK_CONNECTIONS);
    let seconds = a.seconds.max(3);
    let cluster = NsqCluster::start(1).await?;
    // Fixed ports, so the restarted server comes back where it was, with the same id.
    let ports: Vec<Option<u16>> = (0..3).map(|_| Some(testkit::free_port())).collect();
    let mut data = start_data_servers(&bins, &cluster, &ports).await?;
    let api = start_api(&bins, &cluster).await?;
    let victim_id = data[0].id().to_string();
    let victim_addr = data[0].listen_addr();

    let started = Instant::now();
    let run = tokio::spawn(wrk(api.proxy(), connections, seconds));
    let total = Duration::from_secs(seconds);

    tokio::time::sleep_until((started + total / 3).into()).await;
    data[0].kill();
    let killed = Instant::now();
    // Until the restart: when (if at all) the registry drops the killed server.
    let mut removed_after: Option<Duration> = None;
    while Instant::now() < started + total * 2 / 3 {
        if removed_after.is_none()
            && let Ok(doc) = api.registry().await
            && !testkit::listed(&doc).contains(&victim_id)
        {
            removed_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if removed_after.is_none()
        && let Ok(doc) = api.registry().await
        && !testkit::listed(&doc).contains(&victim_id)
    {
        removed_after = Some(killed.elapsed());
    }
    let restart = Instant::now();
    let restarted = start_data_server(&bins, &cluster, 0, ports[0]).await?;
    let listening_after = restart.elapsed();
    let old = std::mem::replace(&mut data[0], restarted);
    drop(old);
    let baseline = whoami_count(victim_addr).await.unwrap_or(0.0);
    // The restarted server counts as back when it answers proxied requests (its own
    // /whoami counter grows past the one request the start-up check made).
    let mut traffic_after: Option<Duration> = None;
    // A SIGKILLed server stays listed until its TTL runs out; only a server that had left
    // can come back to the registry.
    // (Checked before the restart, whose first heartbeat lists it again at once.)
    let listed_at_restart = removed_after.is_none();
    let mut in_registry_after: Option<Duration> = None;
    while Instant::now() < started + total && traffic_after.is_none() {
        if !listed_at_restart
            && in_registry_after.is_none()
            && let Ok(doc) = api.registry().await
            && testkit::listed(&doc).contains(&victim_id)
        {
            in_registry_after = Some(restart.elapsed());
        }
        if let Ok(n) = whoami_count(victim_addr).await
            && n > baseline
        {
            traffic_after = Some(restart.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let w = run.await.context("the wrk task")??;

    stop_stack(api, data, cluster).await?;

    let ms = |d: Option<Duration>| match d {
        Some(d) => serde_json::Value::from(round3(d.as_secs_f64() * 1000.0)),
        None => serde_json::Value::Null,
    };
    let mut r = Report::default();
    r.add("seconds", seconds)
        .add("wrk_threads", WRK_THREADS)
        .add("wrk_connections", connections)
        .add("requests", w.requests)
        .add("req_per_s", w.requests_per_s.round())
        .add("p50_ms", round3(w.p50_ms))
        .add("p99_ms", round3(w.p99_ms))
        .add("non_2xx", w.non_2xx)
        .add("socket_errors", w.socket_errors)
        .add("killed_at_s", round3((killed - started).as_secs_f64()))
        .add("restarted_at_s", round3((restart - started).as_secs_f64()))
        .add("killed_left_registry_ms", ms(removed_after))
        .add("restart_to_listening_ms", ms(Some(listening_after)))
        .add("killed_listed_at_restart", listed_at_restart)
        .add("restart_to_registry_ms", ms(in_registry_after))
        .add("restart_to_traffic_ms", ms(traffic_after));
    Ok(r)
}

/// CPU microseconds per request, to one decimal.
fn cpu_us_per_request(ticks: u64, requests: u64) -> f64 {
    let us = ticks as f64 / TICKS_PER_S * 1e6 / requests.max(1) as f64;
    (us * 10.0).round() / 10.0
}

/// What wrk printed.
#[derive(Debug, Default)]
pub(super) struct Wrk {
    requests: u64,
    pub(super) requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

impl Wrk {
    /// Rounds of equal length as one run: requests and errors summed, rates averaged, the p50 that of the median
    /// round (by requests per second) and the p99 the worst round's, so a round that stalled still shows.
    fn merge(rounds: &[Wrk]) -> Wrk {
        let n = rounds.len().max(1) as f64;
        let mut by_rate: Vec<&Wrk> = rounds.iter().collect();
        by_rate.sort_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s));
        let median = by_rate.get(by_rate.len() / 2);
        Wrk {
            requests: rounds.iter().map(|w| w.requests).sum(),
            requests_per_s: rounds.iter().map(|w| w.requests_per_s).sum::<f64>() / n,
            p50_ms: median.map_or(0.0, |w| w.p50_ms),
            p99_ms: rounds.iter().map(|w| w.p99_ms).fold(0.0, f64::max),
            non_2xx: rounds.iter().map(|w| w.non_2xx).sum(),
            socket_errors: rounds.iter().map(|w| w.socket_errors).sum(),
        }
    }
}

/// `wrk --latency` against `http://addr/whoami`.
pub(super) async fn wrk(addr: SocketAddr, connections: usize, seconds: u64) -> Result<Wrk> {
    let run = tokio::process::Command::new("wrk")
        .args([
            "-t".to_string(),
            WRK_THREADS.to_string(),
            "-c".into(),
            connections.max(WRK_THREADS).to_string(),
            "-d".into(),
            format!("{seconds}s"),
            "--timeout".into(),
            "2s".into(),
            "--latency".into(),
            format!("http://{addr}{PATH}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(seconds + 30), run)
        .await
        .context("wrk did not finish in time")?
        .context("running wrk (apt-get install -y wrk)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("wrk failed: {text}");
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut w = Wrk::default();
    let (mut p50, mut p99, mut rps) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(wrk_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(wrk_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>()?);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = v.trim().parse()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    w.socket_errors += n.parse::<u64>()?;
                }
            }
        } else if let Some((n, rest)) = line.split_once(" requests in ")
            && rest.contains(" read")
        {
            w.requests = n.trim().parse()?;
        }
    }
    w.p50_ms = p50.context("no 50% line")?;
    w.p99_ms = p99.context("no 99% line")?;
    w.requests_per_s = rps.context("no Requests/sec line")?;
    Ok(w)
}

/// wrk's durations ("812.00us", "1.23ms", "2.00s", "1.50m") in milliseconds.
fn wrk_ms(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {v:?}"))?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => bail!("unknown unit in {v:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/whoami
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.00ms   90.00%
    Req/Sec    20.00k     1.00k   22.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    1.40ms
     99%    2.50ms
  200000 requests in 5.00s, 30.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  40000.50
Transfer/sec:      6.00MB
";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests, 200000);
        assert!((w.p50_ms - 0.812).abs() < 1e-9);
        assert!((w.p99_ms - 2.5).abs() < 1e-9);
        assert!((w.requests_per_s - 40000.5).abs() < 1e-9);
        assert_eq!((w.non_2xx, w.socket_errors), (4, 6));
    }
}
