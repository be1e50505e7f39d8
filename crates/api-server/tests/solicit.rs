//! A first start without a registry file routes at once: the api-server publishes a solicitation and every data
//! server answers with a heartbeat (ARCHITECTURE.md §4.2 "Solicitation"). Data servers here heartbeat every 60 s
//! and their first heartbeat is gone before the api-server subscribes, so only a solicitation explains routing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::{NsqCluster, try_eventually};

const SLOW_INTERVAL: &str = "60s";
const SOLICIT_TOPIC: &str = "data_server_addr.solicit#ephemeral";

/// A cluster whose heartbeat topic has a durable channel, as in a deployment with an archiver: without one, nsqd
/// would keep the data servers' first heartbeats for the first api-server that subscribes.
async fn cluster() -> NsqCluster {
    let cluster = NsqCluster::start(1).await.unwrap();
    cluster
        .create_topic(0, TOPIC, Some("archive"))
        .await
        .unwrap();
    cluster
}

/// One sample of a data server's `/metrics`, 0 when absent.
async fn ds_metric(ds: &DataServer, sample: &str) -> f64 {
    let Ok(response) = client().get(ds.url("/metrics")).send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `sample` of `ds` reaches `at_least`.
async fn wait_ds_metric(ds: &DataServer, sample: &str, at_least: f64) {
    try_eventually(SOON, sample, || async {
        Ok((ds_metric(ds, sample).await >= at_least).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", ds.log()));
}

/// A data server on the slow interval that has sent its first heartbeat and subscribed to solicitations.
async fn ready_data_server(cluster: &NsqCluster, id: &str, extra: &[String]) -> DataServer {
    let mut opts = testkit::DataServerOptions::new(cluster.nsqd_tcp_addresses())
        .set(format!("server.id={id}"))
        .set("announce.jitter=0");
    opts.interval = SLOW_INTERVAL.to_owned();
    opts.set.extend(extra.iter().cloned());
    opts.envs.push(("RUST_LOG".to_owned(), "info".to_owned()));
    let ds = DataServer::start_with(opts).await.unwrap();
    wait_ds_metric(&ds, "data_server_heartbeats_sent_total", 1.0).await;
    wait_ds_metric(&ds, "data_server_solicitations_subscribed", 1.0).await;
    ds
}

fn solicited(outcome: &str) -> String {
    format!("data_server_solicitations_total{{outcome=\"{outcome}\"}}")
}

async fn publish_solicitations(cluster: &NsqCluster, bodies: &[Vec<u8>]) {
    let producer = nsq::Producer::new(cluster.nsqd_tcp(0).to_string(), Default::default()).unwrap();
    for chunk in bodies.chunks(200) {
        producer.multi_publish(SOLICIT_TOPIC, chunk).await.unwrap();
    }
    producer.close(Duration::from_secs(1)).await;
}

fn key_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("heartbeat.key");
    let text = "5d2c7a1f0e9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c";
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_without_a_file_routes_long_before_the_next_heartbeat() {
    let cluster = cluster().await;
    let servers = [
        ready_data_server(&cluster, "ds-0", &[]).await,
        ready_data_server(&cluster, "ds-1", &[]).await,
    ];
    let started = Instant::now();
    let api = api_server(&cluster, "2m", &[]).await;
    let http = client();
    let first = try_eventually(SOON, "a routed request", || async {
        Ok(whoami(&http, &api).await.ok())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", api.log()));
    assert!(
        servers.iter().any(|s| s.id() == first),
        "answered by {first}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "first answer {:?} after the start (heartbeats every {SLOW_INTERVAL})",
        started.elapsed()
    );
    wait_servers(&api, 2).await;
    for s in &servers {
        // Counted once nsqd took the heartbeat: an instant after the api-server may have heard it.
        wait_ds_metric(s, &solicited("answered"), 1.0).await;
        assert_eq!(
            ds_metric(s, &solicited("answered")).await,
            1.0,
            "{}",
            s.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_solicitations_costs_at_most_a_couple_of_heartbeats() {
    let cluster = cluster().await;
    let ds = ready_data_server(&cluster, "ds-0", &[]).await;
    let before = ds_metric(&ds, "data_server_heartbeats_sent_total").await;
    let bodies: Vec<Vec<u8>> = (0..1000)
        .map(|_| discovery::Solicitation::new("flood", Duration::ZERO).encode(&[]))
        .collect();
    publish_solicitations(&cluster, &bodies).await;
    // An admitted answer counts (answered or unanswered) only once its publish is over, and each of the others is
    // folded into one (rate_limited) or a duplicate: when all 1,000 have their outcome, no answer is pending and
    // the heartbeat count is final.
    try_eventually(SOON, "1,000 solicitations with their outcome", || async {
        let mut n = 0.0;
        for outcome in ["answered", "unanswered", "duplicate", "rate_limited"] {
            n += ds_metric(&ds, &solicited(outcome)).await;
        }
        Ok((n >= 1000.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", ds.log()));
    assert_eq!(ds_metric(&ds, &solicited("unanswered")).await, 0.0);
    let extra = ds_metric(&ds, "data_server_heartbeats_sent_total").await - before;
    assert!(
        (1.0..=3.0).contains(&extra),
        "{extra} extra heartbeats for 1,000 solicitations"
    );
    assert!(ds_metric(&ds, &solicited("rate_limited")).await >= 990.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_only_signed_solicitations_are_answered() {
    let cluster = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(&dir);
    let ds = ready_data_server(
        &cluster,
        "ds-signed",
        &[format!("announce.hmac_key_file={}", path.display())],
    )
    .await;
    let unsigned = discovery::Solicitation::new("intruder", Duration::ZERO).encode(&[]);
    let other = discovery::HmacKey::from_bytes(b"not the key").unwrap();
    let wrong = discovery::Solicitation::new("intruder", Duration::ZERO).encode(&[other]);
    publish_solicitations(&cluster, &[unsigned, wrong]).await;
    wait_ds_metric(&ds, &solicited("rejected"), 2.0).await;
    assert_eq!(ds_metric(&ds, &solicited("answered")).await, 0.0);

    // An api-server holding the key solicits, and routes at once.
    let api = api_server(
        &cluster,
        "2m",
        &[&format!(
            "discovery.hmac_key_files=[\"{}\"]",
            path.display()
        )],
    )
    .await;
    wait_servers(&api, 1).await;
    wait_ds_metric(&ds, &solicited("answered"), 1.0).await;
    assert_eq!(ds_metric(&ds, &solicited("answered")).await, 1.0);
    assert_eq!(ds_metric(&ds, &solicited("rejected")).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_publisher_that_never_answers_is_admitted_from_its_regular_heartbeat() {
    let cluster = cluster().await;
    let ds = ready_data_server(&cluster, "ds-0", &[]).await;
    let api = api_server(&cluster, "2m", &[]).await;
    wait_servers(&api, 1).await;
    // What a Go service publishes (a bare host:port, like to_nsq): it does not read solicitations.
    publish(&cluster, 0, b"127.0.0.1:1999").await;
    api.wait_registry(SOON, "the Go publisher", |d| {
        find_server(d, "127.0.0.1:1999").is_some()
    })
    .await
    .unwrap();
    assert!(find_server(&api.registry().await.unwrap(), ds.id()).is_some());
}

/// A field of the api-server's "solicitation published" log line (`nsqd`, `after_ms`), once it is written.
fn solicitation_field(api: &testkit::ApiServer, field: &str) -> Option<u64> {
    let log = api.log();
    let line = log.lines().find(|l| l.contains("solicitation published"))?;
    let (_, rest) = line.split_once(&format!(" {field}="))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nsqd_named_by_host_and_by_ip_is_solicited_once_without_waiting() {
    let cluster = cluster().await;
    let ds = ready_data_server(&cluster, "ds-0", &[]).await;
    // nsqlookupd lists the nsqd as 127.0.0.1:<port> (its broadcast address); the configuration names it localhost.
    let by_name = format!(
        "discovery.nsqd_tcp_addresses=localhost:{}",
        cluster.nsqd_tcp(0).port()
    );
    let api = api_server(&cluster, "2m", &[&by_name]).await;
    wait_servers(&api, 1).await;
    let after_ms = try_eventually(SOON, "the solicitation's log line", || async {
        Ok(solicitation_field(&api, "after_ms"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", api.log()));
    // Taking the two names for two nsqd could hold it up to SUBSCRIBE_WAIT (2 s), and publish it through both: every
    // data server there would get it twice.
    assert!(
        after_ms < 1_000,
        "solicited {after_ms} ms after the start\n{}",
        api.log()
    );
    // localhost is the nsqd's 127.0.0.1 only where it resolves to nothing else; where it also resolves to ::1, the
    // name may reach another socket and is kept (a duplicate costs less than an unsolicited nsqd).
    let localhost: Vec<_> = tokio::net::lookup_host(("localhost", cluster.nsqd_tcp(0).port()))
        .await
        .unwrap()
        .collect();
    let expected = if localhost.iter().all(|a| *a == cluster.nsqd_tcp(0)) {
        1
    } else {
        2
    };
    assert_eq!(
        solicitation_field(&api, "nsqd"),
        Some(expected),
        "localhost is {localhost:?}\n{}",
        api.log()
    );
    wait_ds_metric(&ds, &solicited("answered"), 1.0).await;
}
