//! `archive.metrics_listen`: `/metrics` and `/healthz` while `run` or `replay` works.
//!
//! What `run` counts: messages archived, duplicates recognised, batch commit latency, batches
//! that failed, and the lag, which is the depth of the archive channel on each nsqd (read from
//! nsqd's `/stats` by [`lag`](super::lag)). What `replay` counts: messages to send and sent.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use svc::{Counter, Gauge, Histogram, Registry, Shutdown};

/// Commit latency buckets in seconds: an fsync of a small SQLite batch takes about a
/// millisecond, a PostgreSQL round trip a few, a lock wait up to seconds.
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The writer's handles.
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    /// Messages newly stored.
    pub archived: Counter,
    /// Redeliveries recognised and not stored again.
    pub duplicates: Counter,
    /// Time of each `insert_batch`, committed or not (on SQLite without its fsync, which `sync` times).
    pub commit: Histogram,
    /// Batches not stored (requeued).
    pub failed_batches: Counter,
    /// Time of each fsync that makes committed SQLite batches durable (one may cover several batches).
    pub sync: Histogram,
}

/// `archiver run`'s metrics.
pub fn for_run(registry: &Registry) -> WriterMetrics {
    WriterMetrics {
        archived: registry.counter(
            "archiver_messages_archived_total",
            "Messages newly stored in the archive, counted once durable (after the commit's fsync).",
        ),
        duplicates: registry.counter(
            "archiver_duplicates_total",
            "Redelivered messages recognised as already archived and not stored again.",
        ),
        commit: registry.histogram(
            "archiver_batch_commit_duration_seconds",
            "Time to store one batch (one transaction), committed or not.",
            COMMIT_BUCKETS,
        ),
        failed_batches: registry.counter(
            "archiver_batches_failed_total",
            "Batches the database did not store; their messages were requeued.",
        ),
        sync: registry.histogram(
            "archiver_wal_sync_duration_seconds",
            "Time of each fsync of the SQLite WAL after commits; it may cover several batches (group commit).",
            COMMIT_BUCKETS,
        ),
    }
}

/// `archiver replay`'s handles.
#[derive(Debug, Clone)]
pub struct ReplayMetrics {
    /// Messages of the range (0 until counted, and unless a progress bar or listener wants it).
    pub total: Gauge,
    /// Messages published so far in this run, resumed ones included.
    pub sent: Counter,
}

/// `archiver replay`'s metrics.
pub fn for_replay(registry: &Registry) -> ReplayMetrics {
    ReplayMetrics {
        total: registry.gauge(
            "archiver_replay_messages",
            "Messages in the range being replayed (those already sent by an interrupted run included).",
        ),
        sent: registry.counter(
            "archiver_replay_messages_sent_total",
            "Messages of the range published (or counted, in a dry run) so far, resumed ones included.",
        ),
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown`. A port that cannot be bound is
/// logged and the archiver works on without it (the archive matters more than its metrics).
pub async fn serve(addr: SocketAddr, registry: Registry, shutdown: Shutdown) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(%addr, "archive.metrics_listen: cannot listen, no metrics: {err}");
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!("metrics listening on http://{bound}");
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| async move {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (content_type, text) = registry.scrape(accept);
                ([(header::CONTENT_TYPE, content_type)], text).into_response()
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let stop = async move { shutdown.wait().await };
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!("metrics listener stopped: {err}");
    }
}
