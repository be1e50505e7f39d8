//! `discovery-latency` and `registry-scale`: the api-server's registry against real nsqd.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use discovery::Heartbeat;
use nsq::{Producer, ProducerConfig};
use testkit::{ApiServer, DataServer, DataServerOptions, NsqCluster, Signal};
use tokio::sync::mpsc;

use super::{BenchArgs, Report, TICKS_PER_S, cpu_ticks, release_bins};

const TOPIC: &str = "data_server_addr";

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// One registry change seen on `/registry/events`, stamped with the wall clock on arrival.
struct Change {
    kind: String,
    id: String,
    at_ns: i64,
}

/// Follows the SSE stream of `admin` and forwards every change.
async fn follow_events(admin: std::net::SocketAddr) -> Result<mpsc::UnboundedReceiver<Change>> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut resp = http
        .get(format!("http://{admin}/registry/events"))
        .send()
        .await?
        .error_for_status()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let at_ns = now_ns();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(str::trim);
                let Some(v) = data.and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                else {
                    continue;
                };
                if let (Some(kind), Some(id)) = (v["kind"].as_str(), v["id"].as_str()) {
                    let _ = tx.send(Change {
                        kind: kind.into(),
                        id: id.into(),
                        at_ns,
                    });
                }
            }
        }
    });
    Ok(rx)
}

async fn wait_change(
    rx: &mut mpsc::UnboundedReceiver<Change>,
    kind: &str,
    id: &str,
) -> Result<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("no {kind} event for {id} within 30 s"))?
            .context("event stream ended")?;
        if c.kind == kind && c.id == id {
            return Ok(c.at_ns);
        }
    }
}

fn percentile_ms(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * p).round() as usize;
    (samples[i] * 100.0).round() / 100.0
}

async fn start_api(
    bin: &std::path::Path,
    cluster: &NsqCluster,
    extra: &[&str],
) -> Result<ApiServer> {
    for i in 0..cluster.len() {
        cluster.create_topic(i, TOPIC, None).await?;
    }
    let mut sets = vec![
        format!(
            "discovery.lookupd_http_addresses={}",
            cluster.lookupd_http()
        ),
        "discovery.lookupd_poll_interval=1s".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let api = ApiServer::start(bin, &sets).await?;
    let n = cluster.len();
    api.wait_registry(
        Duration::from_secs(30),
        "subscriptions to every nsqd",
        |d| d["bus"]["heartbeat_connections"].as_u64() == Some(n as u64),
    )
    .await?;
    Ok(api)
}

/// Joins: from the first heartbeat (nsqd's timestamp of it) to the `join` event; leaves: from
/// SIGTERM to the `leave` event. Real data-server processes, one after another.
pub async fn latency(a: &BenchArgs) -> Result<Report> {
    let rel = release_bins(&["api-server", "data-server"])?;
    let cluster = NsqCluster::start(2).await?;
    let api = start_api(
        &rel.join("api-server"),
        &cluster,
        &["proxy.access_log=false"],
    )
    .await?;
    let mut events = follow_events(api.admin()).await?;
    // Our own subscriber records when nsqd took each server's first heartbeat.
    let (first_tx, mut first_rx) = mpsc::unbounded_channel::<(String, i64)>();
    let observer = nsq::Consumer::start(
        TOPIC,
        "bench-observer#ephemeral",
        nsq::ConsumerConfig {
            nsqd_tcp_addresses: cluster
                .nsqd_tcp_addresses()
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_in_flight: 100,
            conn: nsq::Config {
                output_buffer: nsq::OutputBuffer::Unbuffered,
                ..Default::default()
            },
            ..Default::default()
        },
        move |m: nsq::Message| {
            let tx = first_tx.clone();
            async move {
                if let Ok(discovery::Message::Json(hb)) = discovery::decode(m.body(), None) {
                    let _ = tx.send((hb.id, m.timestamp_ns()));
                }
                Ok(())
            }
        },
    )?;
    let count = a.count.unwrap_or(30);
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    let mut first_seen: HashMap<String, i64> = HashMap::new();
    for n in 0..count {
        let id = format!("lat-{n}");
        let mut opts = DataServerOptions::new(cluster.nsqd_tcp_addresses());
        opts.bin = Some(rel.join("data-server"));
        opts.interval = "5s".into();
        opts.set.push(format!("server.id={id}"));
        let mut ds = DataServer::start_with(opts).await?;
        let joined = wait_change(&mut events, "join", &id).await?;
        while !first_seen.contains_key(&id) {
            let (hid, ts) = tokio::time::timeout(Duration::from_secs(10), first_rx.recv())
                .await
                .context("the observer saw no heartbeat")?
                .context("observer stopped")?;
            first_seen.entry(hid).or_insert(ts);
        }
        joins.push((joined - first_seen[&id]) as f64 / 1e6);
        let killed = now_ns();
        ds.signal(Signal::SIGTERM)?;
        let left = wait_change(&mut events, "leave", &id).await?;
        leaves.push((left - killed) as f64 / 1e6);
        let status = ds.wait_exit(Duration::from_secs(15)).await?;
        if !status.success() {
            bail!("{id} exited with {status}");
        }
    }
    observer.stop(Duration::from_secs(5)).await;
    let mut r = Report::default();
    r.add("iterations", count)
        .add("join_p50_ms", percentile_ms(&mut joins, 0.50))
        .add("join_p99_ms", percentile_ms(&mut joins, 0.99))
        .add("join_max_ms", percentile_ms(&mut joins, 1.0))
        .add("leave_p50_ms", percentile_ms(&mut leaves, 0.50))
        .add("leave_p99_ms", percentile_ms(&mut leaves, 0.99))
        .add("leave_max_ms", percentile_ms(&mut leaves, 1.0));
    Ok(r)
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")
}

/// Messages nsqd delivered on the api-server's channels, summed over every nsqd.
async fn delivered(cluster: &NsqCluster) -> Result<u64> {
    let mut total = 0;
    for i in 0..cluster.len() {
        let s = cluster.stats(i, TOPIC, None).await?;
        if let Some(t) = s.topic(TOPIC) {
            total += t
                .channels
                .iter()
                .filter(|c| c.channel_name.starts_with("api-server"))
                .map(|c| c.message_count)
                .sum::<u64>();
        }
    }
    Ok(total)
}

/// Live servers the api-server counts (`/readyz`, which is cheap at any size, unlike `/registry`).
async fn live_servers(http: &reqwest::Client, api: &ApiServer) -> Result<u64> {
    let doc: serde_json::Value = http
        .get(format!("http://{}/readyz", api.admin()))
        .send()
        .await?
        .json()
        .await?;
    doc["live_servers"]
        .as_u64()
        .context("no live_servers in /readyz")
}

/// `count` simulated data servers, each heartbeating every `--interval` through real nsqd (2 nsqd): the time until
/// all of them joined, then for `--seconds` (at least two intervals) false expiries, the api-server's CPU and peak
/// RSS, and the rate nsqd delivered. Expiries are read from `/metrics`, not from an SSE stream, whose snapshot
/// of every server each second would be measured along.
pub async fn scale(a: &BenchArgs) -> Result<Report> {
    let rel = release_bins(&["api-server"])?;
    let cluster = NsqCluster::start(2).await?;
    let mut api = start_api(
        &rel.join("api-server"),
        &cluster,
        &["proxy.access_log=false"],
    )
    .await?;
    let pid = api.process().pid().context("api-server pid")?;
    let count = a.count.unwrap_or(10_000);
    let interval = a.interval;
    let interval_ms = u64::try_from(interval.as_millis())?;
    let producers: Vec<Producer> = cluster
        .nsqd_tcp_addresses()
        .iter()
        .map(|addr| Producer::new(addr.to_string(), ProducerConfig::default()))
        .collect::<nsq::Result<_>>()?;
    let epoch = (now_ns() / 1_000_000) as u64;
    let body = |i: usize, seq: u64| {
        let addr = format!(
            "127.{}.{}.{}:8000",
            (i >> 16) & 255,
            (i >> 8) & 255,
            (i & 255).max(1)
        );
        let mut hb = Heartbeat::new(format!("sim-{i}"), addr, epoch, seq);
        hb.interval_ms = interval_ms;
        hb.encode()
    };
    // Every interval, every server once, spread over 100 ms slices, alternating nsqd.
    let slices = usize::try_from(interval_ms / 100)?.max(1);
    let publish_round = |seq: u64| {
        let producers = producers.clone();
        async move {
            let mut tick = tokio::time::interval(interval / u32::try_from(slices)?);
            for s in 0..slices {
                tick.tick().await;
                let bodies: Vec<Vec<u8>> =
                    (s..count).step_by(slices).map(|i| body(i, seq)).collect();
                for chunk in bodies.chunks(500) {
                    producers[s % producers.len()]
                        .multi_publish(TOPIC, chunk)
                        .await?;
                }
            }
            anyhow::Ok(())
        }
    };
    let http = reqwest::Client::builder().no_proxy().build()?;
    // Rounds until every server joined, timed from the first publish.
    let mut seq = 1;
    let joining = Instant::now();
    let join_deadline = joining + Duration::from_secs(120);
    let join_s = loop {
        let round = publish_round(seq);
        tokio::pin!(round);
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let joined = loop {
            tokio::select! {
                done = &mut round => { done?; break None; }
                _ = poll.tick() => {
                    if live_servers(&http, &api).await? == count as u64 {
                        break Some(joining.elapsed());
                    }
                }
            }
        };
        if let Some(joined) = joined {
            // Finish the round so every server holds the same seq.
            round.await?;
            break joined.as_secs_f64();
        }
        seq += 1;
        let n = live_servers(&http, &api).await?;
        if n == count as u64 {
            break joining.elapsed().as_secs_f64();
        }
        if Instant::now() > join_deadline {
            bail!("only {n} of {count} servers registered after 120 s");
        }
    };
    seq += 1;
    let expired = "api_registry_events_total{kind=\"expire\"}";
    let expired0 = api.metric(expired).await.unwrap_or(0.0);
    let (cpu0, delivered0, t0) = (cpu_ticks(pid)?, delivered(&cluster).await?, Instant::now());
    let measure = Duration::from_secs(a.seconds).max(interval * 2);
    while t0.elapsed() < measure {
        publish_round(seq).await?;
        seq += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, delivered1) = (cpu_ticks(pid)?, delivered(&cluster).await?);
    let false_expiries = api.metric(expired).await.unwrap_or(0.0) - expired0;
    let live = live_servers(&http, &api).await?;
    let cpu_pct = (cpu1 - cpu0) as f64 / TICKS_PER_S / elapsed * 100.0;
    let mut r = Report::default();
    r.add("simulated_servers", count)
        .add("interval_ms", interval_ms)
        .add("join_all_s", (join_s * 10.0).round() / 10.0)
        .add("seconds", (elapsed * 10.0).round() / 10.0)
        .add("false_expiries", false_expiries as u64)
        .add("live_at_end", live)
        .add(
            "api_server_cpu_pct_of_one_core",
            (cpu_pct * 10.0).round() / 10.0,
        )
        .add(
            "api_server_peak_rss_mib",
            (peak_rss_kib(pid)? as f64 / 1024.0 * 10.0).round() / 10.0,
        )
        .add(
            "delivered_heartbeats_per_s",
            ((delivered1 - delivered0) as f64 / elapsed).round(),
        );
    Ok(r)
}
