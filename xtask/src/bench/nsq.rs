//! `nsq-publish` and `nsq-consume`: our client against NSQ's bench_writer / bench_reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use nsq::{Consumer, ConsumerConfig, Message, Producer, ProducerConfig};
use testkit::NsqCluster;

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

pub async fn publish(a: &BenchArgs) -> Result<Report> {
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
    Ok(report(ours, theirs, "bench_writer", a))
}

pub async fn consume(a: &BenchArgs) -> Result<Report> {
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
    Ok(report(ours, theirs, "bench_reader", a))
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
