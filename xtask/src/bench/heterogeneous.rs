//! `heterogeneous`: 3 data servers, one of them slower (`server.added_latency`), behind the api-server with `p2c`
//! and with `p2c_ewma`, and behind nginx with `least_conn` and with round robin; the same open-loop load through
//! each, in alternating one-second rounds.
//!
//! This is where a balancer earns its keep: with identical fast servers every strategy is the same, but a slow
//! server drags the tail of whoever keeps sending it a share of the requests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::NsqCluster;

use super::client::{OpenLoop, WHOAMI, get_request, open_loop};
use super::proxy::wrk;
use super::stack::{
    Nginx, NginxTuning, start_api_with, start_data_server_with, stop_stack, whoami_count,
};
use super::{BenchArgs, Report, release_bins, round3};

/// What the slow server adds to every answer.
const ADDED_LATENCY: &str = "20ms";
/// Connections of the open-loop generator, as in `bench proxy`.
const OPEN_LOOP_CONNECTIONS: usize = 64;
/// wrk connections of the measurement that sets the rate, as in `bench proxy`.
const WRK_CONNECTIONS: usize = 64;
/// Length of one open-loop round.
const ROUND: Duration = Duration::from_secs(1);
/// The share of the measured maximum sent open loop: about half, below saturation, so the tail shows the
/// balancing rather than queueing in the proxy.
const LOAD_SHARE: f64 = 0.5;

/// The four sides, in the order of the report.
const SIDES: [&str; 4] = [
    "api_server_p2c",
    "api_server_p2c_ewma",
    "nginx_least_conn",
    "nginx_round_robin",
];

/// One slow data server of three, behind each balancer; `ratio` = nginx least_conn p99 / the api-server's best.
pub async fn heterogeneous(a: &BenchArgs) -> Result<Report> {
    let bins = release_bins(&["api-server", "data-server"])?;
    let cluster = NsqCluster::start(1).await?;
    let mut data = Vec::new();
    for i in 0..3 {
        // The last one is the slow one.
        let extra = if i == 2 {
            vec![format!("server.added_latency={ADDED_LATENCY}")]
        } else {
            Vec::new()
        };
        data.push(start_data_server_with(&bins, &cluster, i, None, &extra).await?);
    }
    let upstreams: Vec<_> = data.iter().map(|d| d.listen_addr()).collect();
    let strategy = |name: &str| vec![format!("balancer.strategy={name}")];
    let api_p2c = start_api_with(&bins, &cluster, 3, &strategy("p2c")).await?;
    let api_ewma = start_api_with(&bins, &cluster, 3, &strategy("p2c_ewma")).await?;
    let nginx_least_conn = Nginx::start_tuned(
        &upstreams,
        &NginxTuning {
            balancing: Some("least_conn"),
            ..NginxTuning::default()
        },
    )
    .await?;
    let nginx_rr = Nginx::start_tuned(&upstreams, &NginxTuning::default()).await?;
    let targets = [
        api_p2c.proxy(),
        api_ewma.proxy(),
        nginx_least_conn.addr,
        nginx_rr.addr,
    ];

    // The rate: `--rate`, or half of what the api-server (p2c_ewma) serves closed-loop on this stack.
    let (rate, measured) = match a.rate {
        Some(rate) => (rate, None),
        None => {
            let max = wrk(api_ewma.proxy(), WRK_CONNECTIONS, 2)
                .await
                .context("measuring the api-server's maximum rate")?;
            (
                (LOAD_SHARE * max.requests_per_s).max(100.0),
                Some(max.requests_per_s),
            )
        }
    };
    let requests: Vec<Arc<[Vec<u8>]>> = targets
        .iter()
        .map(|addr| vec![get_request(*addr, WHOAMI)].into())
        .collect();
    let mut rounds: Vec<Vec<_>> = SIDES.iter().map(|_| Vec::new()).collect();
    // Requests the slow server answered during each side's rounds: how much of the load each balancer sent it.
    let slow = upstreams[2];
    let mut slow_requests = [0.0; SIDES.len()];
    for _ in 0..a.seconds.max(1) {
        for (i, addr) in targets.iter().enumerate() {
            let before = whoami_count(slow).await?;
            let round = open_loop(*addr, rate, ROUND, OPEN_LOOP_CONNECTIONS, &requests[i]).await?;
            slow_requests[i] += whoami_count(slow).await? - before;
            rounds[i].push(round);
        }
    }
    let results = rounds
        .into_iter()
        .map(OpenLoop::merge)
        .collect::<Result<Vec<_>>>()?;

    drop((nginx_least_conn, nginx_rr));
    let mut api_ewma = api_ewma;
    api_ewma
        .process()
        .terminate(Duration::from_secs(10))
        .await?;
    stop_stack(api_p2c, data, cluster).await?;

    let mut r = Report::default();
    r.add("seconds", a.seconds.max(1))
        .add("added_latency", ADDED_LATENCY)
        .add("rate_req_per_s", rate.round())
        .add(
            "measured_max_req_per_s",
            measured.map_or(serde_json::Value::Null, |m| m.round().into()),
        )
        .add("open_loop_connections", OPEN_LOOP_CONNECTIONS);
    for (i, (side, result)) in SIDES.iter().zip(&results).enumerate() {
        r.add(&format!("{side}_p50_ms"), round3(result.p50_ms))
            .add(&format!("{side}_p99_ms"), round3(result.p99_ms))
            .add(&format!("{side}_p99_9_ms"), round3(result.p999_ms))
            .add(&format!("{side}_samples"), result.samples)
            .add(
                &format!("{side}_slow_server_share_pct"),
                round3(
                    100.0 * slow_requests[i]
                        / (result.samples as f64 + result.errors as f64).max(1.0),
                ),
            )
            .add(&format!("{side}_errors"), result.errors);
    }
    let best_api_p99 = results[0].p99_ms.min(results[1].p99_ms);
    r.ratio = Some(results[2].p99_ms / best_api_p99.max(1e-3));
    Ok(r)
}
