//! Shared by the tests that run the real `archiver` binary against real nsqd.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};

use archiver::{Range, Store, StoredMessage};
use testkit::{ManagedProcess, NsqCluster};

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

/// Every message of the database, in original order.
pub fn read_all(db: &Path) -> Vec<StoredMessage> {
    let store = Store::open(db).expect("opening the archive");
    let mut range = Range::all(1000);
    let mut all = Vec::new();
    loop {
        let page = store.query(&range).expect("query");
        let full = page.len() == range.limit;
        range.after = page.last().map(StoredMessage::position);
        all.extend(page);
        if !full {
            return all;
        }
    }
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

/// Polls until `check` gives a value (testkit's, re-exported for the tests here).
#[allow(unused_imports)] // not every test binary polls
pub use testkit::eventually;

/// A unique, partly non-UTF-8 body for message `n`.
pub fn body(n: usize) -> Vec<u8> {
    let mut b = format!("msg-{n:06}-").into_bytes();
    b.extend((0..(n % 40) as u8).map(|i| i.wrapping_mul(37).wrapping_add(200)));
    b
}

/// A temporary directory that also holds the archive.
pub fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("archive.db");
    (dir, db)
}
