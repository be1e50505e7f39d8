//! `archiver run`: one consumer per topic on the durable archive channel, all feeding the
//! writer thread; FIN only after commit; graceful stop on SIGTERM / SIGINT, forced on a second.
//!
//! **Finish after commit.** The consumer runs with `auto_response: false`: the handler hands
//! the message itself to the writer thread and returns at once, and the message stays in flight
//! until the writer has committed the batch holding it; then the writer FINs it (a store error
//! REQueues it with the consumer's delay). Batches fill from the whole `max_in_flight` window
//! without a task or a reply channel per message.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::Context as _;
use nsq::{Consumer, ConsumerConfig, HandlerError, Message};
use svc::Shutdown;

use super::config::Config;
use super::writer::{self, Command, Limits, Record, Reply};
use super::{Setup, lag, metrics, retention};

/// Handler of one topic: hands each message to the writer and waits for its commit.
struct ArchiveHandler {
    topic: Arc<str>,
    writer: Sender<Command>,
}

impl nsq::Handler for ArchiveHandler {
    async fn handle(&self, msg: Message) -> Result<(), HandlerError> {
        let record = Record {
            topic: Arc::clone(&self.topic),
            nsqd: msg.nsqd_address().to_owned(),
            msg_id: *msg.id(),
            nsqd_ts_ns: msg.timestamp_ns(),
            attempts: msg.attempts(),
            body: msg.body().clone(),
            reply: Reply::Message(msg),
        };
        // Err requeues the message; Ok leaves it in flight for the writer to answer.
        self.writer
            .send(Command::Store(record))
            .map_err(|_| "the archive writer has stopped".into())
    }

    async fn give_up(&self, _msg: &Message) {
        // Unreachable with max_attempts = 0; never finish a message we did not store.
    }
}

/// Runs the archiver until a signal (exit 0) or a fatal store error (exit 2, via `Err`).
pub async fn run(config: Config, config_name: &str) -> anyhow::Result<()> {
    let a = &config.archive;
    let database = a.database();
    let archiver_name = a.archiver_name();
    if a.topics.is_empty() {
        return Err(Setup(format!(
            "{config_name}: archive.topics: expected at least one topic to archive, found none"
        ))
        .into());
    }
    if a.lookupd_http_addresses.is_empty() && a.nsqd_tcp_addresses.is_empty() {
        return Err(Setup(format!(
            "{config_name}: archive.lookupd_http_addresses / archive.nsqd_tcp_addresses: \
             expected at least one address, found none"
        ))
        .into());
    }
    // Opened before subscribing: a bad database must not take a single message.
    let mut store = database.open_archiving()?;
    store.set_archiver(Some(&archiver_name));
    // SQLite: commits return before their fsync, which the writer's flusher thread runs (group commit).
    let sync = store.defer_sync()?;
    let shutdown = Shutdown::new();
    // A first SIGTERM/SIGINT drains, a second exits at once with svc::FORCED_EXIT_CODE; the
    // task keeps listening through the drain for that second one.
    shutdown.trigger_on_signal();
    let registry = svc::Registry::for_binary("archiver");
    let limits = Limits {
        batch_size: a.batch_size,
        batch_latency: a.batch_latency.get(),
        metrics: Some(metrics::for_run(&registry)),
    };
    if let Some(addr) = a.metrics_listen {
        let sources = lag::Sources {
            topics: a.topics.clone(),
            channel: a.channel.clone(),
            lookupd: a.lookupd_http_addresses.clone(),
            nsqd_tcp: a.nsqd_tcp_addresses.clone(),
        };
        tokio::spawn(lag::watch(sources, registry.clone(), shutdown.clone()));
        tokio::spawn(metrics::serve(addr, registry, shutdown.clone()));
    }
    let on_fatal = {
        let shutdown = shutdown.clone();
        move |_| shutdown.trigger()
    };
    let (writer_tx, writer) = writer::spawn(store, sync, limits, on_fatal);
    let retention = match a.retention() {
        Some(keep) => Some(retention::spawn(
            database.open()?,
            keep,
            a.retention_interval.get(),
        )),
        None => None,
    };

    // TLS and AUTH of [nsq], already checked when the config was loaded.
    let conn = config.nsq.conn().map_err(anyhow::Error::msg)?;
    let mut consumers = Vec::new();
    for topic in &a.topics {
        let cfg = ConsumerConfig {
            lookupd_http_addresses: a
                .lookupd_http_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            nsqd_tcp_addresses: a
                .nsqd_tcp_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_in_flight: a.max_in_flight,
            // The handler only queues the message; the writer answers it after commit.
            concurrency: 1,
            auto_response: false,
            lookupd_poll_interval: a.lookupd_poll_interval.get(),
            // Never give up on a message: giving up finishes it without storing it.
            max_attempts: 0,
            requeue_delay: a.requeue_delay.get(),
            max_requeue_delay: a.requeue_delay.get().max(Duration::from_secs(60)),
            conn: nsq::Config {
                msg_timeout: a.msg_timeout.map(svc::HumanDuration::get),
                ..conn.clone()
            },
            ..Default::default()
        };
        let handler = ArchiveHandler {
            topic: Arc::from(topic.as_str()),
            writer: writer_tx.clone(),
        };
        let consumer = Consumer::start(topic, &a.channel, cfg, handler)
            .with_context(|| format!("subscribing to topic {topic:?}"))?;
        consumers.push(consumer);
    }
    tracing::info!(
        database = %database.name(),
        archiver = %archiver_name,
        topics = ?a.topics,
        channel = %a.channel,
        "archiving"
    );

    shutdown.wait().await;
    let timeout = config.shutdown.timeout.get();
    let stops = consumers.into_iter().map(|c| c.stop(timeout));
    let reports = futures_join_all(stops).await;
    for report in &reports {
        if !report.clean {
            tracing::warn!(
                abandoned = report.abandoned,
                "some messages were still in flight at the shutdown timeout; nsqd redelivers them"
            );
        }
    }
    let _ = writer_tx.send(Command::Stop);
    drop(writer_tx);
    let outcome = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the archive writer thread panicked"))?;
    if let Some(stop) = retention {
        stop.stop().await;
    }
    if let Some(fatal) = outcome.fatal {
        return Err(Setup(fatal.to_string()).into());
    }
    tracing::info!(
        inserted = outcome.inserted,
        duplicates = outcome.duplicates,
        batches = outcome.batches,
        outages = outcome.outages,
        "archiver stopped"
    );
    Ok(())
}

/// Awaits every future concurrently (a tiny `join_all`, to keep `futures` out of the binary).
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
