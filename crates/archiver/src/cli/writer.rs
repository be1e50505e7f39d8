//! The writer thread: owns the `Store`, gathers received messages into batches bounded in size
//! and latency, commits each batch in one transaction, then answers every message of it.
//!
//! Handlers wait for that answer before returning, and only a successful commit lets them
//! return `Ok` (which FINs the message): nothing is finished that is not stored.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use archiver::{NewMessage, Store, StoreError};
use bytes::Bytes;
use tokio::sync::oneshot;

/// Why a message could not be stored (the batch's error, shared by all its messages).
pub type StoreFailure = Arc<StoreError>;

/// One received message on its way to the database.
#[derive(Debug)]
pub struct Record {
    /// The topic it was consumed from.
    pub topic: Arc<str>,
    /// The nsqd that delivered it.
    pub nsqd: String,
    /// NSQ message id.
    pub msg_id: [u8; 16],
    /// nsqd's timestamp.
    pub nsqd_ts_ns: i64,
    /// Delivery attempts.
    pub attempts: u16,
    /// The body, untouched.
    pub body: Bytes,
    /// Answered once the batch holding it is committed (or failed).
    pub reply: oneshot::Sender<Result<(), StoreFailure>>,
}

/// What the writer thread is sent.
#[derive(Debug)]
pub enum Command {
    /// Store this message.
    Store(Record),
    /// Commit what is gathered, then stop.
    Stop,
}

/// Batch bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most messages per transaction.
    pub batch_size: usize,
    /// Longest the first message of a batch waits for the commit to start.
    pub batch_latency: Duration,
}

/// What the writer did, reported when it stops.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages newly stored.
    pub inserted: u64,
    /// Redeliveries recognised and not stored again.
    pub duplicates: u64,
    /// Batches committed.
    pub batches: u64,
    /// The error that made the writer refuse everything after it, if any.
    pub fatal: Option<StoreFailure>,
}

/// Whether a store error means the archive cannot go on (an operator must act) rather than a
/// passing condition (another process holding the lock).
pub fn is_fatal(err: &StoreError) -> bool {
    !matches!(err, StoreError::Busy { .. })
}

/// Starts the writer thread. `on_fatal` is called once, from the writer thread, when a fatal
/// store error happens; every message after it is refused (so it is requeued, never finished).
pub fn spawn(
    store: Store,
    limits: Limits,
    on_fatal: impl FnOnce(StoreFailure) + Send + 'static,
) -> (Sender<Command>, JoinHandle<Outcome>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("archive-writer".into())
        .spawn(move || run(store, &rx, limits, on_fatal))
        .expect("spawning the writer thread");
    (tx, handle)
}

fn run(
    mut store: Store,
    rx: &Receiver<Command>,
    limits: Limits,
    on_fatal: impl FnOnce(StoreFailure),
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut on_fatal = Some(on_fatal);
    let mut batch: Vec<Record> = Vec::with_capacity(limits.batch_size);
    let mut stopping = false;
    while !stopping {
        match rx.recv() {
            Ok(Command::Store(r)) => batch.push(r),
            Ok(Command::Stop) | Err(_) => break,
        }
        let deadline = Instant::now() + limits.batch_latency;
        while batch.len() < limits.batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Command::Store(r)) => batch.push(r),
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        commit(&mut store, &mut batch, &mut outcome, &mut on_fatal);
    }
    // Anything still queued behind a Stop is refused: its handler requeues it.
    while let Ok(Command::Store(r)) = rx.try_recv() {
        batch.push(r);
    }
    commit(&mut store, &mut batch, &mut outcome, &mut on_fatal);
    if outcome.fatal.is_none() {
        if let Err(err) = store.checkpoint() {
            tracing::warn!("checkpoint at shutdown failed: {err}");
        }
    }
    outcome
}

fn commit(
    store: &mut Store,
    batch: &mut Vec<Record>,
    outcome: &mut Outcome,
    on_fatal: &mut Option<impl FnOnce(StoreFailure)>,
) {
    if batch.is_empty() {
        return;
    }
    let result = match &outcome.fatal {
        Some(fatal) => Err(Arc::clone(fatal)),
        None => {
            let msgs: Vec<NewMessage<'_>> = batch
                .iter()
                .map(|r| NewMessage {
                    topic: &r.topic,
                    nsqd: &r.nsqd,
                    msg_id: r.msg_id,
                    nsqd_ts_ns: r.nsqd_ts_ns,
                    attempts: r.attempts,
                    body: &r.body,
                })
                .collect();
            store.insert_batch(&msgs).map_err(Arc::new)
        }
    };
    match result {
        Ok(done) => {
            outcome.inserted += done.inserted as u64;
            outcome.duplicates += done.duplicates as u64;
            outcome.batches += 1;
            tracing::debug!(
                inserted = done.inserted,
                duplicates = done.duplicates,
                "batch committed"
            );
            for r in batch.drain(..) {
                let _ = r.reply.send(Ok(()));
            }
        }
        Err(err) => {
            if outcome.fatal.is_none() {
                tracing::error!(
                    messages = batch.len(),
                    "batch not stored, its messages are requeued: {err}"
                );
                if is_fatal(&err) {
                    outcome.fatal = Some(Arc::clone(&err));
                    if let Some(f) = on_fatal.take() {
                        f(Arc::clone(&err));
                    }
                }
            }
            for r in batch.drain(..) {
                let _ = r.reply.send(Err(Arc::clone(&err)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> (Record, oneshot::Receiver<Result<(), StoreFailure>>) {
        let (reply, rx) = oneshot::channel();
        let r = Record {
            topic: Arc::from("t"),
            nsqd: "n:4150".into(),
            msg_id: [n; 16],
            nsqd_ts_ns: i64::from(n),
            attempts: 1,
            body: Bytes::from(vec![n; 3]),
            reply,
        };
        (r, rx)
    }

    #[test]
    fn answers_after_commit_within_the_latency_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let limits = Limits {
            batch_size: 100,
            batch_latency: Duration::from_millis(20),
        };
        let (tx, handle) = spawn(Store::open(&path).unwrap(), limits, |_| {});
        let mut waits = Vec::new();
        for n in 0..5 {
            let (r, rx) = record(n);
            tx.send(Command::Store(r)).unwrap();
            waits.push(rx);
        }
        for rx in waits {
            rx.blocking_recv().unwrap().unwrap();
        }
        let (dup, rx) = record(0);
        tx.send(Command::Store(dup)).unwrap();
        rx.blocking_recv().unwrap().unwrap();
        tx.send(Command::Stop).unwrap();
        let out = handle.join().unwrap();
        assert_eq!((out.inserted, out.duplicates), (5, 1));
        assert_eq!(Store::open(&path).unwrap().stats().unwrap().total, 5);
    }
}
