//! The writer thread: owns the `Store`, gathers received messages into batches bounded in size
//! and latency, commits each batch in one transaction, then answers every message of it.
//!
//! Handlers wait for that answer before returning, and only a successful commit lets them
//! return `Ok` (which FINs the message): nothing is finished that is not stored.
//!
//! With a [`WalSync`] (SQLite), a committed batch is not durable yet: it goes to a second thread, the flusher,
//! which fsyncs the WAL and only then answers it, while the writer inserts the next batch. The flusher takes every
//! batch waiting when it starts an fsync, so one fsync covers several batches when the disk is slow (group commit).

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use archiver::{Archive, BatchOutcome, NewMessage, StoreError, WalSync};
use bytes::Bytes;
#[cfg(test)]
use tokio::sync::oneshot;

use super::metrics::WriterMetrics;

/// How often the writer logs its progress (when it stored anything).
const REPORT_EVERY: Duration = Duration::from_secs(10);

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
    pub reply: Reply,
}

/// Who learns the fate of a record's batch.
#[derive(Debug)]
pub enum Reply {
    /// The NSQ message itself: FIN after commit, REQ (consumer's delay policy) on failure.
    /// Its consumer runs with `auto_response: false`, so it stays in flight until then.
    Message(nsq::Message),
    /// A waiting task (the writer's own tests, which run without nsqd).
    #[cfg(test)]
    Waiter(oneshot::Sender<Result<(), StoreFailure>>),
}

impl Reply {
    fn send(self, result: Result<(), &StoreFailure>) {
        match (self, result) {
            (Reply::Message(m), Ok(())) => {
                m.finish();
            }
            (Reply::Message(m), Err(_)) => {
                m.requeue(None);
            }
            #[cfg(test)]
            (Reply::Waiter(tx), r) => {
                let _ = tx.send(r.map_err(Arc::clone));
            }
        }
    }
}

/// What the writer thread is sent.
#[derive(Debug)]
pub enum Command {
    /// Store this message.
    Store(Record),
    /// Commit what is gathered, then stop.
    Stop,
}

/// Batch bounds, and the metrics the writer counts into.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most messages per transaction.
    pub batch_size: usize,
    /// Longest the first message of a batch waits for the commit to start.
    pub batch_latency: Duration,
    /// Where archived messages, duplicates and commit times are counted (none in unit tests).
    pub metrics: Option<WriterMetrics>,
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
    /// Spells of passing store failures (a locked file, a lost connection), each logged when
    /// it starts and when it ends.
    pub outages: u64,
    /// Whether the last batch failed with a passing error (an outage is going on).
    pub failing: bool,
    /// The error that made the writer refuse everything after it, if any.
    pub fatal: Option<StoreFailure>,
}

/// Whether a store error means the archive cannot go on (an operator must act) rather than a
/// passing condition (another process holding the lock, a lost connection).
pub fn is_fatal(err: &StoreError) -> bool {
    !err.is_passing()
}

/// Where batches go: the database, or a stand-in in tests that need a failing disk.
pub trait Sink: Send + 'static {
    /// Stores a batch in one transaction ([`Archive::insert_batch`]).
    fn insert_batch(&mut self, msgs: &[NewMessage<'_>]) -> Result<BatchOutcome, StoreError>;
    /// Leaves the database tidy at a stop ([`Archive::checkpoint`]).
    fn checkpoint(&self) -> Result<(), StoreError>;
}

impl Sink for Box<dyn Archive> {
    fn insert_batch(&mut self, msgs: &[NewMessage<'_>]) -> Result<BatchOutcome, StoreError> {
        Archive::insert_batch(self.as_mut(), msgs)
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        Archive::checkpoint(self.as_ref())
    }
}

/// Starts the writer thread, and with `sync` (from [`Archive::defer_sync`]) its flusher thread. `on_fatal` is
/// called once, from either thread, when a fatal store error happens; every message after it is refused (so it
/// is requeued, never finished).
pub fn spawn(
    store: impl Sink,
    sync: Option<WalSync>,
    limits: Limits,
    on_fatal: impl FnOnce(StoreFailure) + Send + 'static,
) -> (Sender<Command>, JoinHandle<Outcome>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let fatal = Arc::new(Fatal {
        error: OnceLock::new(),
        tell: Mutex::new(Some(Box::new(on_fatal))),
    });
    let flusher = sync.map(|sync| Flusher::start(sync, Arc::clone(&fatal), limits.metrics.clone()));
    let handle = std::thread::Builder::new()
        .name("archive-writer".into())
        .spawn(move || run(store, &rx, limits, &fatal, flusher))
        .expect("spawning the writer thread");
    (tx, handle)
}

/// The first fatal error of the writer or the flusher, and whom to tell.
struct Fatal {
    error: OnceLock<StoreFailure>,
    #[allow(clippy::type_complexity)]
    tell: Mutex<Option<Box<dyn FnOnce(StoreFailure) + Send>>>,
}

impl Fatal {
    fn get(&self) -> Option<&StoreFailure> {
        self.error.get()
    }

    /// Records `err` unless an error came first, and tells the archiver once.
    fn raise(&self, err: &StoreFailure) {
        if self.error.set(Arc::clone(err)).is_ok() {
            let tell = self.tell.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(tell) = tell {
                tell(Arc::clone(err));
            }
        }
    }
}

/// The flusher thread: fsyncs committed batches, then answers them.
struct Flusher {
    /// The database, for errors.
    database: std::path::PathBuf,
    /// Committed batches, each with its (inserted, duplicates) counts, counted in the metrics once durable.
    tx: Sender<(Vec<Record>, (usize, usize))>,
    thread: JoinHandle<()>,
}

impl Flusher {
    fn start(mut sync: WalSync, fatal: Arc<Fatal>, metrics: Option<WriterMetrics>) -> Flusher {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<Record>, (usize, usize))>();
        let database = sync.database().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("archive-fsync".into())
            .spawn(move || {
                // Once an fsync failed nothing after it is acknowledged: see WalSync's docs.
                let mut failed: Option<StoreFailure> = None;
                while let Ok(first) = rx.recv() {
                    // Every batch here was committed before this fsync starts, so it covers them all.
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    if failed.is_none() {
                        let started = Instant::now();
                        if let Err(err) = sync.sync() {
                            let err = Arc::new(err);
                            tracing::error!(
                                messages = waiting.iter().map(|(b, _)| b.len()).sum::<usize>(),
                                "committed batches not acknowledged, their messages are requeued: {err}"
                            );
                            fatal.raise(&err);
                            failed = Some(err);
                        }
                        if let Some(m) = &metrics {
                            m.sync.observe_duration(started.elapsed());
                        }
                    }
                    let result = failed.as_ref().map_or(Ok(()), Err);
                    for (batch, (inserted, duplicates)) in waiting {
                        // Archived means durable: counted here, not at the commit.
                        if let Some(m) = &metrics {
                            if result.is_ok() {
                                m.archived.inc_by(inserted as u64);
                                m.duplicates.inc_by(duplicates as u64);
                            } else {
                                m.failed_batches.inc();
                            }
                        }
                        for r in batch {
                            r.reply.send(result);
                        }
                    }
                }
            })
            .expect("spawning the fsync thread");
        Flusher {
            database,
            tx,
            thread,
        }
    }

    /// Answers everything handed over, then stops.
    fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn run<S: Sink>(
    mut store: S,
    rx: &Receiver<Command>,
    limits: Limits,
    fatal: &Fatal,
    flusher: Option<Flusher>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut batch: Vec<Record> = Vec::with_capacity(limits.batch_size);
    let mut stopping = false;
    let mut report = (Instant::now(), 0u64);
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
        commit(
            &mut store,
            &mut batch,
            &mut outcome,
            fatal,
            flusher.as_ref(),
            limits.metrics.as_ref(),
        );
        if report.0.elapsed() >= REPORT_EVERY && outcome.inserted > report.1 {
            let rate = (outcome.inserted - report.1) as f64 / report.0.elapsed().as_secs_f64();
            tracing::info!(
                total = outcome.inserted,
                duplicates = outcome.duplicates,
                per_second = rate.round(),
                outages = outcome.outages,
                "archive progress"
            );
            report = (Instant::now(), outcome.inserted);
        }
    }
    // Anything still queued behind a Stop goes into the last batch (refused, so requeued, only after a fatal error).
    while let Ok(Command::Store(r)) = rx.try_recv() {
        batch.push(r);
    }
    commit(
        &mut store,
        &mut batch,
        &mut outcome,
        fatal,
        flusher.as_ref(),
        limits.metrics.as_ref(),
    );
    if let Some(flusher) = flusher {
        flusher.finish();
    }
    outcome.fatal = fatal.get().cloned();
    if outcome.fatal.is_none()
        && let Err(err) = store.checkpoint()
    {
        tracing::warn!("checkpoint at shutdown failed: {err}");
    }
    outcome
}

fn commit<S: Sink>(
    store: &mut S,
    batch: &mut Vec<Record>,
    outcome: &mut Outcome,
    fatal: &Fatal,
    flusher: Option<&Flusher>,
    metrics: Option<&WriterMetrics>,
) {
    if batch.is_empty() {
        return;
    }
    let refused = fatal.get().is_some();
    let result = match fatal.get() {
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
            let started = Instant::now();
            let result = store.insert_batch(&msgs).map_err(Arc::new);
            if let Some(m) = metrics {
                m.commit.observe_duration(started.elapsed());
                match &result {
                    // With a flusher, a batch is counted once its fsync is done.
                    Ok(_) if flusher.is_some() => {}
                    Ok(done) => {
                        m.archived.inc_by(done.inserted as u64);
                        m.duplicates.inc_by(done.duplicates as u64);
                    }
                    Err(_) => m.failed_batches.inc(),
                }
            }
            result
        }
    };
    match result {
        Ok(done) => {
            if std::mem::take(&mut outcome.failing) {
                tracing::info!("the archive database stores batches again");
            }
            outcome.inserted += done.inserted as u64;
            outcome.duplicates += done.duplicates as u64;
            outcome.batches += 1;
            tracing::debug!(
                inserted = done.inserted,
                duplicates = done.duplicates,
                "batch committed"
            );
            match flusher {
                // The flusher stops only when the writer hands it over, so a send fails only if its thread died
                // (a panic): then nothing more can be made durable, and the batch is requeued, not left in flight.
                Some(flusher) => {
                    let counts = (done.inserted, done.duplicates);
                    if let Err(lost) = flusher.tx.send((std::mem::take(batch), counts)) {
                        let err = Arc::new(StoreError::SyncFailed {
                            path: flusher.database.clone(),
                            cause: std::io::Error::other("the fsync thread is gone"),
                        });
                        tracing::error!(
                            "committed batch not acknowledged, its messages are requeued: {err}"
                        );
                        fatal.raise(&err);
                        if let Some(m) = metrics {
                            m.failed_batches.inc();
                        }
                        for r in (lost.0).0 {
                            r.reply.send(Err(&err));
                        }
                    }
                }
                None => {
                    for r in batch.drain(..) {
                        r.reply.send(Ok(()));
                    }
                }
            }
        }
        Err(err) => {
            if !refused {
                if is_fatal(&err) {
                    tracing::error!(
                        messages = batch.len(),
                        "batch not stored, its messages are requeued: {err}"
                    );
                    fatal.raise(&err);
                } else if !outcome.failing {
                    // Logged once per outage: a lost connection fails every batch until it is
                    // back, and the store logs its reconnection.
                    tracing::error!(
                        messages = batch.len(),
                        "batch not stored, its messages are requeued: {err}"
                    );
                    outcome.failing = true;
                    outcome.outages += 1;
                } else {
                    tracing::debug!(messages = batch.len(), "batch not stored: {err}");
                }
            }
            for r in batch.drain(..) {
                r.reply.send(Err(&err));
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
            reply: Reply::Waiter(reply),
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
            metrics: None,
        };
        let store: Box<dyn Archive> = Box::new(archiver::Store::open(&path).unwrap());
        let (tx, handle) = spawn(store, None, limits, |_| {});
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
        assert_eq!(
            archiver::Store::open(&path).unwrap().stats().unwrap().total,
            5
        );
    }

    #[test]
    fn with_deferred_fsync_every_message_is_answered_once_its_batch_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut store: Box<dyn Archive> = Box::new(archiver::Store::open(&path).unwrap());
        let sync = store.defer_sync().unwrap();
        assert!(sync.is_some(), "SQLite defers its fsync");
        let metrics = super::super::metrics::for_run(&svc::Registry::new());
        let limits = Limits {
            batch_size: 3,
            batch_latency: Duration::from_millis(20),
            metrics: Some(metrics.clone()),
        };
        let (tx, handle) = spawn(store, sync, limits, |_| {});
        // Seven messages: two full batches, and one left for the latency bound.
        let waits: Vec<_> = (0..7)
            .map(|n| {
                let (r, rx) = record(n);
                tx.send(Command::Store(r)).unwrap();
                rx
            })
            .collect();
        for rx in waits {
            rx.blocking_recv().unwrap().unwrap();
        }
        // A batch committed just before the stop is still synced and answered.
        let (last, rx) = record(7);
        tx.send(Command::Store(last)).unwrap();
        tx.send(Command::Stop).unwrap();
        rx.blocking_recv().unwrap().unwrap();
        let out = handle.join().unwrap();
        assert_eq!((out.inserted, out.fatal.is_none()), (8, true));
        // Counted as archived once durable, each batch once.
        assert_eq!(metrics.archived.get(), 8);
        assert_eq!(metrics.failed_batches.get(), 0);
        assert_eq!(
            archiver::Store::open(&path).unwrap().stats().unwrap().total,
            8
        );
    }

    /// A disk that is full after `room` batches.
    struct FullDisk {
        room: usize,
    }

    impl Sink for FullDisk {
        fn insert_batch(&mut self, msgs: &[NewMessage<'_>]) -> Result<BatchOutcome, StoreError> {
            if self.room == 0 {
                return Err(StoreError::DiskFull {
                    path: "/full/archive.db".into(),
                });
            }
            self.room -= 1;
            Ok(BatchOutcome {
                inserted: msgs.len(),
                duplicates: 0,
            })
        }

        fn checkpoint(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn after_a_fatal_error_nothing_is_acknowledged_and_the_archiver_is_told_once() {
        let limits = Limits {
            batch_size: 2,
            batch_latency: Duration::from_millis(500),
            metrics: None,
        };
        let (told_tx, told) = std::sync::mpsc::channel();
        let (tx, handle) = spawn(FullDisk { room: 1 }, None, limits, move |err| {
            told_tx.send(err.to_string()).unwrap();
        });
        let send = |n| {
            let (r, rx) = record(n);
            tx.send(Command::Store(r)).unwrap();
            rx
        };
        // First batch fits, second hits the full disk, third is refused without trying.
        let first = [send(0), send(1)];
        let second = [send(2), send(3)];
        for rx in first {
            rx.blocking_recv().unwrap().unwrap();
        }
        for rx in second {
            let err = rx.blocking_recv().unwrap().unwrap_err();
            assert!(matches!(*err, StoreError::DiskFull { .. }));
        }
        let third = send(4);
        assert!(third.blocking_recv().unwrap().is_err());
        tx.send(Command::Stop).unwrap();
        let out = handle.join().unwrap();
        assert_eq!(out.inserted, 2);
        assert!(out.fatal.is_some());
        let message = told.recv().unwrap();
        assert!(message.starts_with("disk full while writing archive database"));
        assert!(told.try_recv().is_err(), "told once");
    }

    #[test]
    fn a_busy_database_is_not_fatal() {
        let busy = StoreError::Busy {
            path: "a.db".into(),
            waited_ms: 5000,
            cause: rusqlite_busy(),
        };
        assert!(!is_fatal(&busy));
        assert!(is_fatal(&StoreError::DiskFull {
            path: "a.db".into()
        }));
    }

    fn rusqlite_busy() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None)
    }
}
