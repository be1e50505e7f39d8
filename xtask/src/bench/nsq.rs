//! `nsq-publish` and `nsq-consume`: our client against NSQ's bench_writer / bench_reader, or with `--tls` our
//! client over TLS against itself in plain TCP on the same nsqd (the Go bench tools have no TLS option).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use nsq::{Consumer, ConsumerConfig, Message, Producer, ProducerConfig};
use testkit::{ClusterOptions, NsqCluster};

use super::{BenchArgs, Report, go_tool};

fn report(ours: f64, theirs: f64, peer: &str, a: &BenchArgs) -> Report {
    let mut r = Report::default();
    r.add("seconds", a.seconds)
        .add("size", a.size)
        .add("connections", a.connections)
        .add(&format!("{peer}_msg_per_s"), theirs.round())
        .add("ours_msg_per_s", ours.round());
    r.ratio = Some(ours / theirs);
    r
}

/// With `--tls`: the ratio is ours over TLS against ours in plain TCP.
fn tls_report(tls: f64, plain: f64, a: &BenchArgs) -> Report {
    let mut r = Report::default();
    r.add("seconds", a.seconds)
        .add("size", a.size)
        .add("connections", a.connections)
        .add("ours_plain_msg_per_s", plain.round())
        .add("ours_tls_msg_per_s", tls.round());
    r.ratio = Some(tls / plain);
    r
}

/// A CA and a certificate for 127.0.0.1 in `dir` (`ca.pem`, `server.pem`, `server.key`).
fn make_certs(dir: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

/// One nsqd; with `tls`, serving TLS to clients that ask for it (plain ones still connect). Returns the connection
/// settings of a TLS client of it, when asked for.
async fn cluster(
    tls: Option<&Path>,
    mut nsqd_args: Vec<String>,
) -> Result<(NsqCluster, Option<nsq::Config>)> {
    let Some(dir) = tls else {
        let cluster = NsqCluster::start_with(ClusterOptions {
            nsqd: 1,
            nsqd_args,
            ..Default::default()
        })
        .await?;
        return Ok((cluster, None));
    };
    make_certs(dir)?;
    nsqd_args.push(format!("--tls-cert={}", dir.join("server.pem").display()));
    nsqd_args.push(format!("--tls-key={}", dir.join("server.key").display()));
    let cluster = NsqCluster::start_with(ClusterOptions {
        nsqd: 1,
        https: true,
        nsqd_args,
        ..Default::default()
    })
    .await?;
    let conn = nsq::Config {
        tls: Some(nsq::TlsConfig {
            ca_file: Some(dir.join("ca.pem")),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok((cluster, Some(conn)))
}

pub async fn publish(a: &BenchArgs) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let (cluster, tls) = cluster(a.tls.then_some(dir.path()), Vec::new()).await?;
    let addr = cluster.nsqd_tcp(0).to_string();
    if let Some(tls) = tls {
        let plain = our_publish(&addr, nsq::Config::default(), "bench_plain", a).await?;
        let over_tls = our_publish(&addr, tls, "bench_tls", a).await?;
        return Ok(tls_report(over_tls, plain, a));
    }
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
    let ours = our_publish(&addr, nsq::Config::default(), "bench_rs", a).await?;
    Ok(report(ours, theirs, "bench_writer", a))
}

/// Our producers: the same number of connections as the Go tool, each with one MPUB of the same size in flight.
async fn our_publish(addr: &str, conn: nsq::Config, topic: &str, a: &BenchArgs) -> Result<f64> {
    let body = vec![b'a'; a.size];
    let batch: Vec<&[u8]> = (0..a.batch).map(|_| &body[..]).collect();
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.connections {
        let cfg = ProducerConfig {
            conn: conn.clone(),
            ..ProducerConfig::default()
        };
        let p = Producer::new(addr.to_owned(), cfg)?;
        let (batch, sent, topic) = (
            batch.iter().map(|b| b.to_vec()).collect::<Vec<_>>(),
            Arc::clone(&sent),
            topic.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                p.multi_publish(&topic, &batch).await?;
                sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(sent.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Messages per second no consumer reaches here: the backlog each side gets is this times the run's seconds.
const CONSUME_CEILING_PER_S: u64 = 1_500_000;

pub async fn consume(a: &BenchArgs) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    // Enough backlog that neither side runs dry. 600k msg/s was not generous: on a quiet machine both sides emptied
    // it before the end, and both reported backlog / seconds (a ratio of 1.0 that measured nothing).
    let backlog = (CONSUME_CEILING_PER_S * a.seconds) as usize;
    // Keep the backlog in memory: both sides then read at nsqd's best speed.
    let args = vec![format!("--mem-queue-size={}", backlog + 1)];
    let (cluster, tls) = cluster(a.tls.then_some(dir.path()), args).await?;
    let addr = cluster.nsqd_tcp(0).to_string();
    let topics: &[&str] = if a.tls {
        &["bench_plain", "bench_tls"]
    } else {
        &["bench_go", "bench_rs"]
    };
    for topic in topics {
        cluster.create_topic(0, topic, Some("ch")).await?;
        prefill(&addr, topic, backlog, a.size).await?;
    }
    if let Some(tls) = tls {
        let plain = our_consume(&addr, nsq::Config::default(), "bench_plain", backlog, a).await?;
        let over_tls = our_consume(&addr, tls, "bench_tls", backlog, a).await?;
        return Ok(tls_report(over_tls, plain, a));
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
    let ours = our_consume(&addr, nsq::Config::default(), "bench_rs", backlog, a).await?;
    Ok(report(ours, theirs, "bench_reader", a))
}

/// Our consumers: one connection each, a no-op handler, finished automatically.
async fn our_consume(
    addr: &str,
    conn: nsq::Config,
    topic: &str,
    backlog: usize,
    a: &BenchArgs,
) -> Result<f64> {
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..a.connections {
        let r = Arc::clone(&received);
        let cfg = ConsumerConfig {
            conn: conn.clone(),
            nsqd_tcp_addresses: vec![addr.to_owned()],
            max_in_flight: a.rdy,
            concurrency: 1,
            ..Default::default()
        };
        consumers.push(Consumer::start(topic, "ch", cfg, move |_m: Message| {
            r.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(()))
        })?);
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let ours = received.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    for c in consumers {
        c.stop(Duration::from_secs(5)).await;
    }
    if ours * a.seconds as f64 >= backlog as f64 * 0.99 {
        eprintln!("warning: our consumer drained the whole backlog; the figure is a lower bound");
    }
    Ok(ours)
}

pub async fn prefill(addr: &str, topic: &str, count: usize, size: usize) -> Result<()> {
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
