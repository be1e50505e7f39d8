//! Unusable databases and bad names end the archiver with one clear line and status 2, before
//! it takes a single message.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::ARCHIVER;

fn run(db: &std::path::Path, sets: &[&str]) -> Output {
    let mut cmd = Command::new(ARCHIVER);
    cmd.args([
        "run",
        "--set",
        &format!("archive.database={}", db.display()),
    ]);
    cmd.args(["--set", "archive.nsqd_tcp_addresses=127.0.0.1:1"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.output().unwrap()
}

/// A new, empty archive at `db`, all in that one file: checkpointed, with no `-wal` or `-shm`
/// file beside it (so that the test can change the file's bytes or mode alone).
fn new_archive_file(db: &std::path::Path) {
    archiver::Store::open(db).unwrap().checkpoint().unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// Exit status 2 and exactly one line on stderr, containing `needle`.
fn assert_one_line_exit_2(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(needle),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_database_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("corrupt.db");
    std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
    let out = run(&db, &["archive.topics=t"]);
    assert_one_line_exit_2(&out, "is not a SQLite database or is corrupt");
}

#[test]
fn another_programs_database_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("theirs.db");
    // An archive whose header then says it belongs to another program (application_id, at
    // offset 68 of the SQLite header).
    new_archive_file(&db);
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[68..72].copy_from_slice(&7i32.to_be_bytes());
    std::fs::write(&db, bytes).unwrap();
    let out = run(&db, &["archive.topics=t"]);
    assert_one_line_exit_2(&out, "is not an archiver database");
}

#[test]
fn a_read_only_database_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("ro");
    std::fs::create_dir(&sub).unwrap();
    let db = sub.join("archive.db");
    new_archive_file(&db);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Whether the mode binds this user (it does not bind root).
    let probe = sub.join("probe");
    let is_root = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    let mut cmd = if is_root {
        // Root writes whatever the mode says: run as nobody, for whom the file is read-only.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", ARCHIVER]);
        c
    } else {
        Command::new(ARCHIVER)
    };
    cmd.args([
        "run",
        "--set",
        &format!("archive.database={}", db.display()),
    ]);
    cmd.args([
        "--set",
        "archive.nsqd_tcp_addresses=127.0.0.1:1",
        "--set",
        "archive.topics=t",
    ]);
    let out = cmd.output().unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_one_line_exit_2(&out, "is read-only");
}

#[test]
fn a_topic_name_nsq_rejects_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let out = run(&db, &["archive.topics=good,bad/topic"]);
    assert_one_line_exit_2(&out, "archive.topics[1]");
    assert!(!db.exists(), "nothing is created for a bad config");
}

#[test]
fn reading_commands_refuse_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.db");
    for cmd in ["stats", "query"] {
        let out = Command::new(ARCHIVER)
            .args([cmd, "--set", &format!("archive.database={}", db.display())])
            .output()
            .unwrap();
        assert_one_line_exit_2(&out, "does not exist");
    }
    assert!(!db.exists());
}

// --- PostgreSQL: problems at start are one line and status 2, before a message is taken ---

/// `archiver run` on database `url` with `password_file`, reading from a port that refuses.
fn run_on(url: &str, password_file: &std::path::Path) -> Output {
    Command::new(ARCHIVER)
        .args(["run", "--set", &format!("archive.database={url}")])
        .args([
            "--set",
            &format!("archive.database_password_file={}", password_file.display()),
        ])
        .args(["--set", "archive.nsqd_tcp_addresses=127.0.0.1:1"])
        .args(["--set", "archive.topics=t"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

#[test]
fn an_unreachable_postgres_exits_2() {
    let refusing = testkit::RefusingPort::new();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    let url = format!("postgres://archiver@{}/archive", refusing.addr());
    let out = run_on(&url, &pw);
    assert_one_line_exit_2(&out, &format!("cannot reach archive database {url}"));
}

#[tokio::test]
async fn a_wrong_postgres_password_or_a_newer_schema_exits_2() {
    let server = testkit::Postgres::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let out = run_on(&server.url(), &wrong);
    assert_one_line_exit_2(&out, "password authentication failed");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not-the-password"),
        "the password is never shown"
    );

    // An archive of a later archiver build is refused, untouched.
    let store = archiver::Database::parse(&server.url(), Some(&server.password_file()))
        .unwrap()
        .open()
        .unwrap();
    drop(store);
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(server.port())
        .user(testkit::POSTGRES_USER)
        .password(testkit::POSTGRES_PASSWORD)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("UPDATE archiver_schema SET version = 99")
        .await
        .unwrap();
    let out = run_on(&server.url(), &server.password_file());
    assert_one_line_exit_2(&out, "schema version 99");
    let version: i32 = client
        .query_one("SELECT version FROM archiver_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 99);
}

/// A CA and a certificate for 127.0.0.1 it signed: (CA PEM, certificate PEM, key PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn tls_to_postgres_checks_the_certificate() {
    let (ca, cert, key) = certificates();
    let server = testkit::Postgres::start_with_tls(Some((&cert, &key)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    // Trusting the CA: connects over TLS and stores.
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url(),
        ca_file.display()
    );
    let database = archiver::Database::parse(&url, Some(&server.password_file())).unwrap();
    let mut store = database.open().unwrap();
    store
        .insert_batch(&[archiver::NewMessage {
            topic: "t",
            nsqd: "n:1",
            msg_id: [b'a'; 16],
            nsqd_ts_ns: 1,
            attempts: 1,
            body: b"over tls",
        }])
        .unwrap();
    assert_eq!(store.stats().unwrap().total, 1);

    // Not trusting it (the public roots only): refused at start, one line, status 2.
    let out = run_on(
        &format!("{}?sslmode=require", server.url()),
        &server.password_file(),
    );
    assert_one_line_exit_2(&out, "refused the archiver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}
