//! Measures archive writes: inserts per second for batches of 256 and 1024 messages with 200-byte
//! bodies (synchronous=FULL, one fsync per batch), and database bytes per message.
//!
//! `cargo run --release -p archiver --example throughput [DIR] [MESSAGES]`. DIR (default: a
//! temporary directory) should be on the disk the archiver will use: fsync cost dominates.
//! A measurement to run and read, not a test: timings depend on the machine.

use std::time::Instant;

use archiver::{NewMessage, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let total: usize = args.next().map_or(Ok(200_000), |n| n.parse())?;

    let body = [0x5Au8; 200];
    let ids: Vec<[u8; 16]> = (0..total)
        .map(|n| {
            let mut id = [0u8; 16];
            id.copy_from_slice(format!("{n:016x}").as_bytes());
            id
        })
        .collect();
    let base_ts = 1_700_000_000_000_000_000i64;

    for batch_size in [256usize, 1024] {
        let path = dir.join(format!("throughput-{batch_size}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let mut store = Store::open(&path)?;
        let msgs: Vec<NewMessage<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| NewMessage {
                topic: "heartbeats",
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
        let bytes = std::fs::metadata(&path)?.len();
        println!(
            "batch {batch_size:>4}: {total} messages in {:.2} s = {:>9.0} inserts/s, \
             {} bytes/message after checkpoint; a batch of duplicates took {:.2} ms",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            bytes / total as u64,
            dup_elapsed.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
