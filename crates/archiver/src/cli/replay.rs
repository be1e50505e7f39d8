//! `archiver replay`: re-publishes the archived messages of a time range of one topic, in
//! original order, as MPUBs acknowledged one after the other, optionally rate-limited.
//!
//! Resumable: after every MPUB nsqd acknowledged, the position of its last message is recorded
//! in the database under the job's key (source topic, range, destination); running the same
//! command again continues after it. A graceful interrupt (SIGINT / SIGTERM) stops between two
//! MPUBs, so nothing is sent twice; after a crash (SIGKILL) at most the one MPUB that was
//! awaiting nsqd's answer can be sent again (see `Store::record_replay_progress`).
//!
//! With `--rate`, N messages take N / rate seconds, the last MPUB's share included, so a scrape of
//! `archive.metrics_listen` during that last share reads the final count.

use std::time::{Duration, Instant};

use archiver::{Range, ReplayJob, StoredMessage};
use nsq::{Producer, ProducerConfig};
use svc::Shutdown;

use super::config::Config;
use super::progress::Bar;
use super::{Setup, metrics, open_existing, retention::now_ns, time};

/// Messages read from the database at a time.
const PAGE: usize = 1000;
/// Bytes of bodies per MPUB at most: well under nsqd's default `--max-body-size` (5 MiB).
const MPUB_BYTES: usize = 4 * 1024 * 1024;
/// Attempts at one MPUB (over all destination nsqd) before giving up.
const PUBLISH_ROUNDS: u32 = 5;

/// Arguments of `archiver replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Archived topic to replay
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Start of the range, inclusive (RFC 3339 with Z or an offset, nanoseconds since the epoch,
    /// "now", "-1h"); default: the oldest message
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of the range, exclusive; default: the time this run starts. Give absolute times to
    /// resume a job later
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Topic to publish to (default: the archived topic)
    #[arg(long, value_name = "TOPIC")]
    pub destination: Option<String>,
    /// nsqd TCP address to publish to (repeatable: the next is tried when one fails);
    /// default: archive.nsqd_tcp_addresses
    #[arg(long = "nsqd", value_name = "HOST:PORT")]
    pub nsqd: Vec<String>,
    /// Messages per second at most (default: as fast as nsqd acknowledges)
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Messages per MPUB at most
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub batch: usize,
    /// Read and count the range, publish nothing, record nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Forget the progress of an earlier run of the same job and start from the beginning
    #[arg(long)]
    pub restart: bool,
}

/// Totals of a replay run.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    bytes: u64,
}

/// Runs a replay; `Ok(false)` when it was interrupted before the end.
pub async fn replay(config: Config, args: ReplayArgs) -> anyhow::Result<bool> {
    let destination = args
        .destination
        .clone()
        .unwrap_or_else(|| args.topic.clone());
    for (what, name) in [("--topic", &args.topic), ("--destination", &destination)] {
        if let Err(err) = nsq::validate_topic(name) {
            return Err(Setup(format!("{what}: {err}")).into());
        }
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(Setup(format!("--rate: expected a positive number, found {rate}")).into());
    }
    if !(1..=10_000).contains(&args.batch) {
        return Err(Setup(format!("--batch: expected 1..=10000, found {}", args.batch)).into());
    }
    let now = now_ns();
    let parse = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|t| time::parse(t, now).map_err(|e| Setup(format!("{flag}: {e}"))))
            .transpose()
    };
    let (from_ns, to_ns) = (parse("--from", &args.from)?, parse("--until", &args.until)?);
    let addrs: Vec<String> = if args.nsqd.is_empty() {
        config
            .archive
            .nsqd_tcp_addresses
            .iter()
            .map(ToString::to_string)
            .collect()
    } else {
        args.nsqd.clone()
    };
    if addrs.is_empty() && !args.dry_run {
        return Err(Setup(
            "replay: expected a destination nsqd (--nsqd HOST:PORT or archive.nsqd_tcp_addresses), found none"
                .into(),
        )
        .into());
    }
    let store = open_existing(&config)?;
    let job = ReplayJob {
        source_topic: Some(&args.topic),
        from_ns,
        to_ns,
        destination_topic: &destination,
    };
    let key = job.key();
    let earlier = if args.restart || args.dry_run {
        None
    } else {
        store.replay_progress(&key)?
    };
    let mut range = Range {
        topic: Some(args.topic.clone()),
        from_ns,
        // An open end means "up to now" for this run (a resumed run goes up to its own now),
        // so a replay into a topic that is itself archived cannot chase its own output.
        to_ns: to_ns.or(Some(now)),
        after: earlier.map(|p| p.last),
        limit: PAGE,
    };
    let before = earlier.map_or(0, |p| p.sent);
    if before > 0 {
        tracing::info!(already_sent = before, "resuming an interrupted replay");
    }
    let conn = config.nsq.conn().map_err(|e| Setup(format!("nsq: {e}")))?;
    let producers = addrs
        .iter()
        .map(|a| {
            let conn = conn.clone();
            Producer::new(
                a.as_str(),
                ProducerConfig {
                    conn,
                    ..ProducerConfig::default()
                },
            )
        })
        .collect::<nsq::Result<Vec<_>>>()
        .map_err(|e| Setup(format!("--nsqd: {e}")))?;
    let mpub = match args.rate {
        // About a tenth of a second of messages per MPUB, so the pace stays even.
        Some(rate) => ((rate / 10.0).ceil() as usize).clamp(1, args.batch),
        None => args.batch,
    };

    let shutdown = Shutdown::new();
    // A first SIGTERM/SIGINT stops after the current batch, a second exits at once.
    shutdown.trigger_on_signal();
    let registry = svc::Registry::for_binary("archiver");
    let progress = metrics::for_replay(&registry);
    progress.sent.inc_by(before);
    let listen = config.archive.metrics_listen;
    // Counting reads the whole range's index: only for a bar or a listener someone will read.
    let total = if Bar::wanted() || listen.is_some() {
        store.count(&range)? + before
    } else {
        0
    };
    progress.total.set(i64::try_from(total).unwrap_or(i64::MAX));
    if let Some(addr) = listen {
        tokio::spawn(metrics::serve(addr, registry, shutdown.clone()));
    }
    let mut bar = Bar::new(total.saturating_sub(before));
    let start = Instant::now();
    let mut totals = Totals::default();
    let mut finished = true;
    'pages: loop {
        let page = store.query(&range)?;
        let full = page.len() == PAGE;
        for chunk in chunks(&page, mpub) {
            if shutdown.is_triggered() {
                finished = false;
                break 'pages;
            }
            if let Some(rate) = args.rate {
                let due = start + Duration::from_secs_f64(totals.sent as f64 / rate);
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    () = shutdown.wait() => { finished = false; break 'pages; }
                }
            }
            let last = chunk.last().expect("chunks are not empty").position();
            if !args.dry_run {
                let bodies: Vec<&[u8]> = chunk.iter().map(|m| m.body.as_slice()).collect();
                if let Err(err) = publish(&producers, &destination, &bodies).await {
                    bar.finish();
                    summary(&args, &destination, &totals, before, start, "failed");
                    return Err(err);
                }
                store.record_replay_progress(
                    &key,
                    last,
                    before + totals.sent + chunk.len() as u64,
                )?;
            }
            totals.sent += chunk.len() as u64;
            progress.sent.inc_by(chunk.len() as u64);
            totals.bytes += chunk.iter().map(|m| m.body.len() as u64).sum::<u64>();
            bar.update(totals.sent);
        }
        match page.last() {
            Some(m) if full => range.after = Some(m.position()),
            _ => break,
        }
    }
    // A rate-limited run lasts as long as its rate says: it waits out its last MPUB's share of
    // time too. Otherwise it would exit one MPUB early, report a rate above --rate, and take its
    // metrics listener away the instant the last messages are counted.
    if let Some(rate) = args.rate
        && finished
    {
        let end = start + Duration::from_secs_f64(totals.sent as f64 / rate);
        tokio::select! {
            () = tokio::time::sleep_until(end.into()) => {}
            () = shutdown.wait() => {}
        }
    }
    bar.finish();
    let state = match (finished, args.dry_run) {
        (true, true) => "dry run",
        (true, false) => "done",
        (false, _) => "interrupted (run the same command again to resume)",
    };
    summary(&args, &destination, &totals, before, start, state);
    for p in &producers {
        p.close(Duration::from_secs(1)).await;
    }
    Ok(finished)
}

/// Splits a page into MPUBs of at most `n` messages and [`MPUB_BYTES`] of bodies.
fn chunks(page: &[StoredMessage], n: usize) -> Vec<&[StoredMessage]> {
    let mut out = Vec::new();
    let (mut begin, mut bytes) = (0, 0);
    for (i, m) in page.iter().enumerate() {
        let len = m.body.len() + 4;
        if i > begin && (i - begin == n || bytes + len > MPUB_BYTES) {
            out.push(&page[begin..i]);
            (begin, bytes) = (i, 0);
        }
        bytes += len;
    }
    if begin < page.len() {
        out.push(&page[begin..]);
    }
    out
}

/// One MPUB, on the first nsqd that takes it, in a few rounds over all of them.
async fn publish(producers: &[Producer], topic: &str, bodies: &[&[u8]]) -> anyhow::Result<()> {
    let mut last_err = None;
    for round in 0..PUBLISH_ROUNDS {
        for p in producers {
            match p.multi_publish(topic, bodies).await {
                Ok(()) => return Ok(()),
                // The same bytes fail the same way on every nsqd: no point in retrying.
                Err(err @ (nsq::Error::InvalidBody(_) | nsq::Error::InvalidName { .. })) => {
                    return Err(anyhow::anyhow!("MPUB refused: {err}"));
                }
                Err(err) => {
                    tracing::warn!(nsqd = p.addr(), "MPUB failed: {err}");
                    last_err = Some(anyhow::anyhow!("MPUB to {} failed: {err}", p.addr()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200 << round)).await;
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no nsqd to publish to")))
}

fn summary(
    args: &ReplayArgs,
    destination: &str,
    totals: &Totals,
    before: u64,
    start: Instant,
    state: &str,
) {
    let secs = start.elapsed().as_secs_f64();
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{state}: {verb} {} messages ({} bytes) of topic {} to topic {destination} in {secs:.2}s \
         ({:.0}/s); {} sent by earlier runs of this job",
        totals.sent,
        totals.bytes,
        args.topic,
        totals.sent as f64 / secs.max(1e-3),
        before,
    );
}
