//! `cold-start`: how soon a (re)started api-server routes. 3 real data servers heartbeat every 5 s. Each time a
//! client sends `GET /whoami` to the new process's proxy port every millisecond from the moment it is spawned
//! (refused connections are retried) and the time to the first answer from a data server is taken.
//!
//! Two cases, 20 starts each: without a registry file (a first start: only the solicitation helps, ARCHITECTURE.md
//! §4.2 "Solicitation"), each start at least `MIN_ANSWER_GAP` after the previous answer, since a data server answers
//! at most one solicitation per gap (an api-server does not restart several times a second); then with
//! `discovery.registry_file`, restarted 20 times (the saved servers route before any heartbeat). Before either, a
//! first start without a file waited for the next heartbeat: up to the 5 s interval.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testkit::{ApiServer, DataServer, DataServerOptions, NsqCluster, free_port};
use tokio::time::Instant;

use super::{BenchArgs, Report, release_bins};

const TOPIC: &str = "data_server_addr";
const RESTARTS: usize = 20;
const SERVERS: usize = 3;
/// A request that gets no answer within this is counted as failed.
const GIVE_UP: Duration = Duration::from_secs(15);

/// What the client saw until the first routed answer.
struct FirstAnswer {
    after: Duration,
    /// Answers that were not a data server's 200 (the proxy's own 503/502, say).
    failed: usize,
    server: String,
}

/// Sends `GET /whoami` to `port` every millisecond until a data server answers.
async fn first_answer(http: &reqwest::Client, port: u16, since: Instant) -> Result<FirstAnswer> {
    let url = format!("http://127.0.0.1:{port}/whoami");
    let mut failed = 0;
    loop {
        if since.elapsed() > GIVE_UP {
            bail!("no routed answer within {GIVE_UP:?} ({failed} failed)");
        }
        match http.get(&url).send().await {
            // Not listening yet.
            Err(err) if err.is_connect() => {}
            Err(_) => failed += 1,
            Ok(resp) if resp.status().is_success() => {
                let after = since.elapsed();
                let body: serde_json::Value = resp.json().await?;
                let server = body["id"].as_str().unwrap_or_default().to_owned();
                return Ok(FirstAnswer {
                    after,
                    failed,
                    server,
                });
            }
            Ok(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One start of the api-server on fresh ports, timed until its first routed request.
async fn start_and_route(
    bin: &std::path::Path,
    sets: &[String],
    http: &reqwest::Client,
) -> Result<(ApiServer, FirstAnswer)> {
    let port = free_port();
    let mut sets = sets.to_vec();
    sets.push(format!("server.listen=127.0.0.1:{port}"));
    let since = Instant::now();
    let (api, answer) = tokio::join!(
        ApiServer::start(bin, &sets),
        first_answer(http, port, since)
    );
    Ok((api?, answer?))
}

/// The first routed times (ms), failed requests and answers from no known server over `starts` starts with `sets`.
struct Starts {
    times: Vec<f64>,
    failed: usize,
    strangers: usize,
}

async fn starts(
    bin: &std::path::Path,
    sets: &[String],
    http: &reqwest::Client,
    ids: &BTreeSet<String>,
    count: usize,
    gap: Duration,
) -> Result<Starts> {
    let mut out = Starts {
        times: Vec::new(),
        failed: 0,
        strangers: 0,
    };
    for _ in 0..count {
        let (mut api, answer) = start_and_route(bin, sets, http).await?;
        out.times.push(answer.after.as_secs_f64() * 1000.0);
        out.failed += answer.failed;
        if !ids.contains(&answer.server) {
            out.strangers += 1;
        }
        api.process().terminate(Duration::from_secs(15)).await?;
        tokio::time::sleep(gap).await;
    }
    out.times.sort_by(f64::total_cmp);
    Ok(out)
}

pub async fn cold_start(_a: &BenchArgs) -> Result<Report> {
    let rel = release_bins(&["api-server", "data-server"])?;
    let cluster = NsqCluster::start(1).await?;
    // The archiver's durable channel, as in a deployment: without any channel nsqd would keep the heartbeats in
    // the topic and hand them to the first api-server that subscribes, which a real fleet does not see.
    cluster.create_topic(0, TOPIC, Some("archive")).await?;
    let dir = tempfile::tempdir()?;
    let no_file_sets = vec![
        format!(
            "discovery.lookupd_http_addresses={}",
            cluster.lookupd_http()
        ),
        "proxy.access_log=false".to_owned(),
    ];
    let mut sets = no_file_sets.clone();
    sets.push(format!(
        "discovery.registry_file={}",
        dir.path().join("registry.json").display()
    ));
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let mut opts = DataServerOptions::new(cluster.nsqd_tcp_addresses());
        opts.bin = Some(rel.join("data-server"));
        opts.interval = "5s".into();
        opts.set.push(format!("server.id=cold-{i}"));
        servers.push(DataServer::start_with(opts).await?);
    }
    let ids: BTreeSet<String> = servers.iter().map(|s| s.id().to_owned()).collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()?;
    let bin = rel.join("api-server");
    // Every data server subscribed to solicitations (nsqlookupd lists a channel each) before the first start.
    let solicit_topic = discovery::solicit_topic(TOPIC);
    let lookupd = nsq::Lookupd::new(Duration::from_secs(2))?;
    let deadline = Instant::now() + GIVE_UP;
    while lookupd
        .lookup_topic(&cluster.lookupd_http().to_string(), &solicit_topic)
        .await
        .map_or(0, |t| t.channels.len())
        < SERVERS
    {
        if Instant::now() > deadline {
            bail!("the data servers did not subscribe to {solicit_topic} within {GIVE_UP:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gap = discovery::MIN_ANSWER_GAP + Duration::from_millis(100);
    let no_file = starts(&bin, &no_file_sets, &http, &ids, RESTARTS, gap).await?;
    // The first start with a file has none yet: like the starts above, it routes once the data servers answer.
    let (mut api, first) = start_and_route(&bin, &sets, &http).await?;
    let first_start_ms = first.after.as_secs_f64() * 1000.0;
    api.wait_registry(Duration::from_secs(15), "every data server", |d| {
        d["servers"].as_array().map_or(0, Vec::len) == SERVERS
    })
    .await?;
    let (mut times, mut failed, mut strangers) =
        (Vec::new(), first.failed + no_file.failed, no_file.strangers);
    for _ in 0..RESTARTS {
        api.process().terminate(Duration::from_secs(15)).await?;
        let (next, answer) = start_and_route(&bin, &sets, &http).await?;
        api = next;
        times.push(answer.after.as_secs_f64() * 1000.0);
        failed += answer.failed;
        if !ids.contains(&answer.server) {
            strangers += 1;
        }
    }
    api.process()
        .terminate(Duration::from_secs(15))
        .await
        .context("stopping the last api-server")?;
    times.sort_by(f64::total_cmp);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let mut r = Report::default();
    r.add("restarts", RESTARTS)
        .add("data_servers", SERVERS)
        .add("heartbeat_interval_ms", 5000)
        .add("first_start_no_file_ms", round2(first_start_ms))
        .add("no_file_starts", RESTARTS)
        .add(
            "no_file_first_routed_p50_ms",
            round2(no_file.times[no_file.times.len() / 2]),
        )
        .add(
            "no_file_first_routed_max_ms",
            round2(no_file.times[no_file.times.len() - 1]),
        )
        .add("first_routed_p50_ms", round2(times[times.len() / 2]))
        .add("first_routed_max_ms", round2(times[times.len() - 1]))
        .add("failed_requests", failed)
        .add("answers_not_from_a_live_server", strangers);
    Ok(r)
}
