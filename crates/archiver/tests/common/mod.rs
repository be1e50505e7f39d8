//! Helpers shared by the archiver's integration tests: a database of either backend
//! ([`TestDb`], and [`both_backends!`] to run a test on each), owned messages and whole-range
//! reads, and the real `archiver` binary run against real nsqd.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use archiver::{Archive, BatchOutcome, Database, NewMessage, Range, Store, StoredMessage};
use testkit::{ManagedProcess, NsqCluster, Postgres};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty archive database of one backend: a SQLite file in a temporary directory, or
/// a throwaway PostgreSQL server (removed when this drops).
pub struct TestDb {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    /// The `archive.database` value.
    pub value: String,
    pub server: Option<Postgres>,
}

impl TestDb {
    /// For async tests; start it from the test's own thread (the server dies with its spawner).
    pub async fn start(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let (value, server) = match backend {
            Backend::Sqlite => (dir.path().join("archive.db").display().to_string(), None),
            Backend::Postgres => {
                let server = Postgres::start().await.expect("starting PostgreSQL");
                (server.url(), Some(server))
            }
        };
        TestDb {
            backend,
            dir,
            value,
            server,
        }
    }

    /// For synchronous tests.
    pub fn new(backend: Backend) -> TestDb {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(Self::start(backend))
    }

    pub fn database(&self) -> Database {
        let password = self.server.as_ref().map(Postgres::password_file);
        Database::parse(&self.value, password.as_deref()).expect("a valid database")
    }

    /// Opens (creating) the archive.
    pub fn open(&self) -> Box<dyn Archive> {
        self.database().open().expect("opening the archive")
    }

    /// `--set` values that point the `archiver` binary at this database.
    pub fn sets(&self) -> Vec<String> {
        let mut sets = vec![format!("archive.database={}", self.value)];
        if let Some(server) = &self.server {
            sets.push(format!(
                "archive.database_password_file={}",
                server.password_file().display()
            ));
        }
        sets
    }

    /// [`TestDb::sets`] as `--set` arguments.
    pub fn set_args(&self) -> Vec<String> {
        self.sets()
            .into_iter()
            .flat_map(|s| ["--set".to_owned(), s])
            .collect()
    }

    /// Rows in the archive (0 while it does not exist yet).
    pub fn rows(&self) -> u64 {
        self.database()
            .open_existing()
            .and_then(|s| s.stats())
            .map_or(0, |s| s.total)
    }

    /// Every message, in original order.
    pub fn read_archive(&self) -> Vec<StoredMessage> {
        let store = self
            .database()
            .open_existing()
            .expect("opening the archive");
        read_all(store.as_ref(), &Range::all(1000))
    }
}

/// Runs each listed test function (taking `&TestDb`) once per backend, as `sqlite::NAME` and
/// `postgres::NAME` (`#[macro_use] mod common;`).
#[allow(unused_macros)] // each test binary uses one or the other
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&$crate::common::TestDb::new($crate::common::Backend::Sqlite)) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&$crate::common::TestDb::new($crate::common::Backend::Postgres)) } )*
        }
    };
}

/// [`both_backends!`] for async tests (taking `TestDb` by value).
#[allow(unused_macros)] // each test binary uses one or the other
macro_rules! both_backends_async {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() {
                super::$name($crate::common::TestDb::start($crate::common::Backend::Sqlite).await).await
            } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() {
                super::$name($crate::common::TestDb::start($crate::common::Backend::Postgres).await).await
            } )*
        }
    };
}

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

pub fn insert(store: &mut dyn Archive, msgs: &[Msg]) -> BatchOutcome {
    let batch: Vec<NewMessage<'_>> = msgs.iter().map(Msg::as_new).collect();
    store.insert_batch(&batch).expect("insert_batch")
}

/// Reads a whole range page by page, the way the replayer and `archiver query` will.
pub fn read_all(store: &dyn Archive, range: &Range) -> Vec<StoredMessage> {
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
    run_args_for(
        &[format!("archive.database={}", db.display())],
        cluster,
        topics,
    )
}

/// [`run_args`] for a [`TestDb`].
pub fn run_args_db(db: &TestDb, cluster: &NsqCluster, topics: &[&str]) -> Vec<String> {
    run_args_for(&db.sets(), cluster, topics)
}

fn run_args_for(db_sets: &[String], cluster: &NsqCluster, topics: &[&str]) -> Vec<String> {
    let mut args = vec!["run".to_owned()];
    for set in db_sets.iter().cloned().chain([
        format!("archive.topics={}", topics.join(",")),
        format!("archive.nsqd_tcp_addresses={}", cluster.nsqd_tcp(0)),
        "archive.batch_size=200".to_owned(),
        "archive.batch_latency=20ms".to_owned(),
        "archive.max_in_flight=400".to_owned(),
        // Messages in flight to a killed archiver come back after this, not after nsqd's 60s.
        "archive.msg_timeout=2s".to_owned(),
        "shutdown.timeout=10s".to_owned(),
    ]) {
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

/// One nsqd with `topic` and its `archive` channel (see [`archived_topic`]).
pub async fn topic_cluster(topic: &str) -> NsqCluster {
    let cluster = NsqCluster::start(1).await.unwrap();
    cluster
        .create_topic(0, topic, Some("archive"))
        .await
        .unwrap();
    cluster
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
