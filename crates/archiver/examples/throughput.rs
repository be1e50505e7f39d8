//! Measures archive writes: inserts per second for batches of 256, 1024 and 4096 messages with
//! 200-byte bodies, and database bytes per message, on SQLite (synchronous=FULL, one fsync per
//! batch) or on a throwaway PostgreSQL server (synchronous_commit on).
//!
//! `cargo run --release -p archiver --example throughput [DIR|postgres] [MESSAGES]`. DIR
//! (default: a temporary directory) should be on the disk the archiver will use: fsync cost
//! dominates. A measurement to run and read, not a test: timings depend on the machine.

use std::time::Instant;

use archiver::{Database, NewMessage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let target = args.next();
    let total: usize = args.next().map_or(Ok(200_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = match target.as_deref() {
        Some("postgres") => Some(runtime.block_on(testkit::Postgres::start())?),
        _ => None,
    };
    let dir = match target.as_deref() {
        Some("postgres") | None => tmp.path().to_path_buf(),
        Some(dir) => dir.into(),
    };

    let body = [0x5Au8; 200];
    let ids: Vec<[u8; 16]> = (0..total)
        .map(|n| {
            let mut id = [0u8; 16];
            id.copy_from_slice(format!("{n:016x}").as_bytes());
            id
        })
        .collect();
    let base_ts = 1_700_000_000_000_000_000i64;

    for batch_size in [256usize, 1024, 4096] {
        let topic = format!("heartbeats-{batch_size}");
        let database = match &server {
            Some(pg) => Database::parse(&pg.url(), Some(&pg.password_file()))?,
            None => {
                let path = dir.join(format!("throughput-{batch_size}.db"));
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Database::Sqlite(path)
            }
        };
        let mut store = database.open()?;
        let before = store.stats()?.db_bytes;
        let msgs: Vec<NewMessage<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| NewMessage {
                topic: &topic,
                nsqd: "10.0.0.1:4150",
                msg_id: *id,
                nsqd_ts_ns: base_ts + i as i64 * 1_000,
                attempts: 1,
                body: &body,
            })
            .collect();

        let start = Instant::now();
        for batch in msgs.chunks(batch_size) {
            store.insert_batch(batch)?;
        }
        let elapsed = start.elapsed();

        let dup_start = Instant::now();
        let redelivered = store.insert_batch(&msgs[..batch_size])?;
        let dup_elapsed = dup_start.elapsed();
        assert_eq!(redelivered.duplicates, batch_size);

        store.checkpoint()?;
        let bytes = store.stats()?.db_bytes - before;
        println!(
            "{}: batch {batch_size:>4}: {total} messages in {:.2} s = {:>9.0} inserts/s, \
             {} bytes/message; a batch of duplicates took {:.2} ms",
            store.name(),
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            bytes / total as u64,
            dup_elapsed.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
