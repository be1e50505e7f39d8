//! Retention in the background: on its own thread and its own connection, so that deleting
//! (in short transactions) never holds up the writer for long.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use archiver::Archive;

/// Rows deleted per transaction: short enough for the writer to get the lock in between.
const ROWS_PER_TXN: usize = 5_000;

/// A running retention thread.
pub struct Retention {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Retention {
    /// Stops it (after the chunk in progress).
    pub async fn stop(self) {
        drop(self.stop);
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Deletes messages older than `keep` now and every `interval`.
pub fn spawn(mut store: Box<dyn Archive>, keep: Duration, interval: Duration) -> Retention {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("archive-retention".into())
        .spawn(move || {
            loop {
                let cutoff =
                    now_ns().saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
                match store.delete_older_than(cutoff, ROWS_PER_TXN) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention deleted old messages"),
                    Err(err) => tracing::error!("retention failed: {err}"),
                }
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .expect("spawning the retention thread");
    Retention { stop, thread }
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
