//! `archive`: the archiver draining a backlog against bench_reader on the same nsqd, with one
//! archiver and then two sharing the channel and the database (`--backend sqlite|postgres`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use testkit::{ManagedProcess, NsqCluster, Postgres};

use super::nsq::prefill;
use super::{BenchArgs, Report, go_tool, release_bins};

/// Where the archiver stores (`--backend`).
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum ArchiveBackend {
    /// A SQLite file in a temporary directory.
    #[default]
    Sqlite,
    /// A throwaway PostgreSQL server (testkit's, from Debian's `postgresql` package).
    Postgres,
}

/// The benchmark's PostgreSQL is sized as a server given to an archive would be (testkit's defaults are for many
/// small test servers): room in memory for the run's tables and indexes, and no checkpoint in the middle of a
/// run (a checkpoint makes the next change of every page write the whole page to the WAL). Durability is
/// untouched: `fsync`, `full_page_writes` and `synchronous_commit` keep their defaults.
const PRODUCTION_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "2GB"),
    ("max_wal_size", "16GB"),
    ("checkpoint_timeout", "30min"),
];

/// The database the archivers of one run share.
struct Db {
    sets: Vec<String>,
    server: Option<Postgres>,
}

impl Db {
    async fn start(backend: ArchiveBackend, dir: &Path) -> Result<Db> {
        Ok(match backend {
            ArchiveBackend::Sqlite => Db {
                sets: vec![format!(
                    "archive.database={}",
                    dir.join("archive.db").display()
                )],
                server: None,
            },
            ArchiveBackend::Postgres => {
                let server = Postgres::start_with_settings(PRODUCTION_SETTINGS).await?;
                Db {
                    sets: vec![
                        format!("archive.database={}", server.url()),
                        format!(
                            "archive.database_password_file={}",
                            server.password_file().display()
                        ),
                    ],
                    server: Some(server),
                }
            }
        })
    }

    fn args(&self) -> impl Iterator<Item = String> + '_ {
        self.sets
            .iter()
            .flat_map(|s| ["--set".to_owned(), s.clone()])
    }
}

pub async fn archive(a: &BenchArgs) -> Result<Report> {
    let bin = release_bins(&["archiver"])?.join("archiver");
    let cluster = NsqCluster::start_with(testkit::ClusterOptions {
        nsqd: 1,
        nsqd_args: vec!["--mem-queue-size=10000000".into()],
        ..Default::default()
    })
    .await?;
    let addr = cluster.nsqd_tcp(0).to_string();
    // Both channels get the same backlog; bench_reader must not run dry within its time.
    let backlog = (600_000 * a.seconds) as usize;
    cluster.create_topic(0, "bench", Some("archive")).await?;
    cluster.create_topic(0, "bench", Some("ch")).await?;
    prefill(&addr, "bench", backlog, a.size).await?;
    let theirs = go_tool(
        "bench_reader",
        &[
            format!("--runfor={}s", a.seconds),
            format!("--nsqd-tcp-address={addr}"),
            "--topic=bench".into(),
            "--channel=ch".into(),
            format!("--size={}", a.size),
            format!("--rdy={}", a.rdy),
        ],
        a.connections,
    )
    .await?;
    // bench_reader is done: its channel would only hold the second backlog in memory.
    reqwest::Client::new()
        .post(format!(
            "http://{}/channel/delete?topic=bench&channel=ch",
            cluster.nsqd_http(0)
        ))
        .send()
        .await?
        .error_for_status()?;

    let dir = tempfile::tempdir()?;
    let db = Db::start(a.backend, dir.path()).await?;
    let one = drain(&bin, &cluster, &db, dir.path(), 1, backlog).await?;
    let (rows, bytes) = stats(&bin, &db).await?;
    if rows != backlog as u64 {
        bail!("archived {rows} rows, expected {backlog}");
    }
    // The same backlog again, for two archivers sharing the channel and the database.
    prefill(&addr, "bench", backlog, a.size).await?;
    let two = drain(&bin, &cluster, &db, dir.path(), 2, backlog).await?;
    let (rows_after, _) = stats(&bin, &db).await?;
    if rows_after != 2 * backlog as u64 {
        bail!(
            "two archivers left {} rows, expected {backlog} more",
            rows_after - rows
        );
    }

    let ceiling = match &db.server {
        Some(server) => Some(insert_ceiling(server, backlog, a.size).await?),
        None => None,
    };

    let mut r = Report::default();
    r.add("backend", format!("{:?}", a.backend).to_lowercase())
        .add("seconds", a.seconds)
        .add("size", a.size)
        .add("bench_reader_msg_per_s", theirs.round())
        .add("one_archiver_msg_per_s", one.round())
        .add("two_archivers_msg_per_s", two.round())
        .add(
            "ratio_one_archiver",
            ((one / theirs) * 1000.0).round() / 1000.0,
        )
        .add("archived_rows", rows)
        .add("db_bytes_per_message", (bytes as f64 / rows as f64).round());
    if let Some(ceiling) = ceiling {
        // What the server alone can insert: no client, no NSQ. No number of archivers gets past it.
        r.add("db_insert_ceiling_rows_per_s", ceiling.round()).add(
            "two_archivers_of_db_ceiling",
            ((two / ceiling) * 1000.0).round() / 1000.0,
        );
    }
    // What a deployment that needs the rate would run: two archivers share PostgreSQL well,
    // while two writers of one SQLite file take turns at its lock.
    r.ratio = Some(one.max(two) / theirs);
    Ok(r)
}

/// Runs `n` archivers until the archive channel holds nothing (all committed and finished)
/// and returns messages per second; stops them with SIGTERM (exit 0).
async fn drain(
    bin: &Path,
    cluster: &NsqCluster,
    db: &Db,
    dir: &Path,
    n: usize,
    backlog: usize,
) -> Result<f64> {
    let addr = cluster.nsqd_tcp(0);
    let start = Instant::now();
    let mut archivers = Vec::new();
    for i in 0..n {
        let mut args = vec!["run".to_owned()];
        args.extend(db.args());
        for set in [
            "archive.topics=[\"bench\"]".to_owned(),
            format!("archive.nsqd_tcp_addresses=[\"{addr}\"]"),
            "archive.lookupd_http_addresses=[]".to_owned(),
            format!("archive.archiver_name=bench-{n}-{i}"),
        ] {
            args.extend(["--set".to_owned(), set]);
        }
        archivers.push(ManagedProcess::spawn(
            format!("archiver {i} of {n}"),
            bin,
            args,
            vec![("RUST_LOG".into(), "warn".into())],
            dir.join(format!("archiver-{n}-{i}.log")),
        )?);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = cluster.stats(0, "bench", Some("archive")).await?;
        let ch = stats
            .channel("bench", "archive")
            .context("archive channel")?;
        if ch.depth == 0 && ch.in_flight_count == 0 {
            break;
        }
        for archiver in &mut archivers {
            if let Some(status) = archiver.try_wait()? {
                bail!("archiver exited with {status}: {}", archiver.log_tail(20));
            }
        }
        if Instant::now() > deadline {
            bail!("{n} archiver(s) did not drain {backlog} messages in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = backlog as f64 / start.elapsed().as_secs_f64();
    for archiver in &mut archivers {
        let status = archiver.terminate(Duration::from_secs(30)).await?;
        if !status.success() {
            bail!("archiver exited with {status} on SIGTERM");
        }
    }
    Ok(rate)
}

/// Rows and database bytes, from `archiver stats --json`.
async fn stats(bin: &Path, db: &Db) -> Result<(u64, u64)> {
    let out = tokio::process::Command::new(bin)
        .args(["stats", "--json"])
        .args(db.args())
        .output()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("archiver stats: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((
        v["total"].as_u64().unwrap_or(0),
        v["db_bytes"].as_u64().unwrap_or(0),
    ))
}

/// Rows per second PostgreSQL inserts by itself, in one statement generating `rows` rows shaped like the archive's
/// (`size`-byte bodies, 16-byte ids) into an empty copy of `messages` with the same keys and indexes, with the
/// archive's `ON CONFLICT DO NOTHING`: the ceiling of any number of archivers on this server and machine.
async fn insert_ceiling(server: &Postgres, rows: usize, size: usize) -> Result<f64> {
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{}/postgres",
        testkit::POSTGRES_USER,
        testkit::POSTGRES_PASSWORD,
        server.port()
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .context("connecting to the benchmark's PostgreSQL")?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE ceiling (LIKE messages INCLUDING ALL)")
        .await?;
    let start = Instant::now();
    client
        .execute(
            "INSERT INTO ceiling (topic_id, nsqd_id, archiver_id, msg_id, nsqd_ts_ns, attempts, archived_at_ms, body)
             SELECT 1, 1, 1, decode(lpad(to_hex(g), 32, '0'), 'hex'), g, 1, 0, convert_to(repeat('x', $2::integer), 'UTF8')
             FROM generate_series(1, $1::bigint) AS g
             ON CONFLICT DO NOTHING",
            &[&(rows as i64), &(size as i32)],
        )
        .await?;
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    client.batch_execute("DROP TABLE ceiling").await?;
    drop(client);
    connection.await??;
    Ok(rate)
}
