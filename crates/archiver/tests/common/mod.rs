//! Helpers shared by the archiver's integration tests: owned messages and whole-range reads of a
//! [`Store`], and the real `archiver` binary run against real nsqd.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use archiver::{BatchOutcome, NewMessage, Range, Store, StoredMessage};
use testkit::{ManagedProcess, NsqCluster};

/// An owned message, so tests can build batches without juggling lifetimes.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub nsqd: String,
    pub msg_id: [u8; 16],
    pub nsqd_ts_ns: i64,
    pub attempts: u16,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn as_new(&self) -> NewMessage<'_> {
        NewMessage {
            topic: &self.topic,
            nsqd: &self.nsqd,
            msg_id: self.msg_id,
            nsqd_ts_ns: self.nsqd_ts_ns,
            attempts: self.attempts,
            body: &self.body,
        }
    }
}

/// NSQ message ids are 16 hex characters; derive one from a number.
pub fn msg_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(format!("{n:016x}").as_bytes());
    id
}

pub fn msg(topic: &str, nsqd: &str, n: u64, nsqd_ts_ns: i64, body: &[u8]) -> Msg {
    Msg {
        topic: topic.to_owned(),
        nsqd: nsqd.to_owned(),
        msg_id: msg_id(n),
        nsqd_ts_ns,
        attempts: 1,
        body: body.to_vec(),
    }
}

pub fn insert(store: &mut Store, msgs: &[Msg]) -> BatchOutcome {
    let batch: Vec<NewMessage<'_>> = msgs.iter().map(Msg::as_new).collect();
    store.insert_batch(&batch).expect("insert_batch")
}

/// Reads a whole range page by page, the way the replayer and `archiver query` will.
pub fn read_all(store: &Store, range: &Range) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut range = range.clone();
    loop {
        let page = store.query(&range).expect("query");
        let done = page.len() < range.limit;
        if let Some(last) = page.last() {
            range.after = Some(last.position());
        }
        out.extend(page);
        if done {
            return out;
        }
    }
}

/// Asserts that a stored message is exactly the message that was inserted.
pub fn assert_same(stored: &StoredMessage, sent: &Msg) {
    assert_eq!(stored.topic, sent.topic);
    assert_eq!(stored.nsqd, sent.nsqd);
    assert_eq!(stored.msg_id, sent.msg_id);
    assert_eq!(stored.nsqd_ts_ns, sent.nsqd_ts_ns);
    assert_eq!(stored.attempts, sent.attempts);
    assert_eq!(stored.body, sent.body, "body of seq {}", stored.seq);
}

// --- The `archiver` binary against real nsqd ---

/// The binary cargo built for these tests.
pub const ARCHIVER: &str = env!("CARGO_BIN_EXE_archiver");

/// `--set` flags for a small, fast archiver reading `topics` from nsqd 0 of `cluster`.
pub fn run_args(db: &Path, cluster: &NsqCluster, topics: &[&str]) -> Vec<String> {
    let mut args = vec!["run".to_owned()];
    for set in [
        format!("archive.database={}", db.display()),
        format!("archive.topics={}", topics.join(",")),
        format!("archive.nsqd_tcp_addresses={}", cluster.nsqd_tcp(0)),
        "archive.batch_size=200".to_owned(),
        "archive.batch_latency=20ms".to_owned(),
        "archive.max_in_flight=400".to_owned(),
        // Messages in flight to a killed archiver come back after this, not after nsqd's 60s.
        "archive.msg_timeout=2s".to_owned(),
        "shutdown.timeout=10s".to_owned(),
    ] {
        args.push("--set".to_owned());
        args.push(set);
    }
    args
}

/// Starts `archiver run` with its log in `dir`.
pub fn spawn_archiver(dir: &Path, args: Vec<String>) -> ManagedProcess {
    ManagedProcess::spawn(
        "archiver",
        ARCHIVER,
        args,
        vec![("RUST_LOG".into(), "info".into())],
        dir.join("archiver.log"),
    )
    .expect("starting the archiver")
}

/// Every message of the database at `db`, in original order.
pub fn read_archive(db: &Path) -> Vec<StoredMessage> {
    let store = Store::open(db).expect("opening the archive");
    read_all(&store, &Range::all(1000))
}

/// Rows in the archive (0 while it does not exist yet).
pub fn rows(db: &Path) -> u64 {
    if !db.exists() {
        return 0;
    }
    Store::open(db)
        .and_then(|s| s.stats())
        .map_or(0, |s| s.total)
}

/// A unique, partly non-UTF-8 body for message `n`.
pub fn body(n: usize) -> Vec<u8> {
    let mut b = format!("msg-{n:06}-").into_bytes();
    b.extend((0..(n % 40) as u8).map(|i| i.wrapping_mul(37).wrapping_add(200)));
    b
}

/// One nsqd where `topic` and its `archive` channel already exist, so that nsqd keeps every
/// message published from now on for the archiver; and a [`workdir`].
pub async fn archived_topic(topic: &str) -> (NsqCluster, tempfile::TempDir, PathBuf) {
    let cluster = NsqCluster::start(1).await.unwrap();
    let (dir, db) = workdir();
    cluster
        .create_topic(0, topic, Some("archive"))
        .await
        .unwrap();
    (cluster, dir, db)
}

/// A temporary directory that also holds the archive.
pub fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("archive.db");
    (dir, db)
}
