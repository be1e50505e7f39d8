//! Checkpoints of the SQLite archive on a thread of their own, so the writer thread only inserts and commits.
//!
//! In WAL mode a commit appends to the `-wal` file, and a checkpoint copies those pages back into the database
//! file. By default SQLite runs that checkpoint inside the commit that takes the WAL past 1,000 pages, on the
//! connection that committed: the archiver's writer thread, which is what limits `bench archive` (profiled: 62 % of
//! its time inserting, 13 % appending to the WAL, 11 % checkpointing, 6 % in fsync). A checkpoint needs no write
//! lock (a `PASSIVE` one copies what no reader still needs, beside a running writer), so here a second connection
//! runs one every [`INTERVAL`] and the writer keeps only a backstop: it checkpoints by itself past
//! [`WRITER_BACKSTOP_PAGES`], should this thread fall behind or fail.
//!
//! Durability is unchanged: a page is in the WAL until a checkpoint has copied it into the database file and synced
//! that file, and a checkpoint syncs the WAL before copying, whatever the writer's `synchronous` setting (the
//! archiving writer commits at `NORMAL` and has its WAL synced by [`WalSync`](crate::WalSync) before it FINs).

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{AtPath, StoreError};
use crate::store::BUSY_TIMEOUT;

/// How often the background checkpoint runs. At 100,000 messages/s the WAL grows by about 7,000 pages a second,
/// so each checkpoint copies about as much as SQLite's own every-1,000-pages checkpoint did.
const INTERVAL: Duration = Duration::from_millis(100);

/// WAL pages past which the writer checkpoints by itself (SQLite's `wal_autocheckpoint`; its default is 1,000):
/// about 40 MB, reached only when the background thread falls behind or fails.
pub(crate) const WRITER_BACKSTOP_PAGES: u32 = 10_000;

/// The checkpoint thread of one writing [`Store`](crate::Store); stopped and joined on drop.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the archive at `path` and starts checkpointing it.
    pub(crate) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .at(path)?;
        conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
        let (stop, stopped) = mpsc::channel();
        let file = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("archive-checkpoint".into())
            .spawn(move || run(&conn, &file, &stopped))
            .map_err(|e| StoreError::CannotOpen {
                path: path.to_path_buf(),
                reason: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn run(conn: &Connection, path: &Path, stopped: &mpsc::Receiver<()>) {
    // Logged once when checkpoints start failing (a full disk) and once when they work again.
    let mut failing = false;
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        let result = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .at(path);
        match (result, failing) {
            (Err(err), false) => {
                tracing::warn!(
                    "background checkpoint failed (the writer checkpoints by itself past {WRITER_BACKSTOP_PAGES} \
                     WAL pages): {err}"
                );
                failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("background checkpoints work again");
                failing = false;
            }
            _ => {}
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::{NewMessage, Store};

    #[test]
    fn the_archive_reaches_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut store = Store::open(&path).unwrap();
        store.checkpoint_in_background().unwrap();
        // About 8 MB: 2,000 pages of WAL, far below the writer's own backstop, so only the background thread
        // can move them into the database file.
        let body = vec![7u8; 4000];
        for batch in 0..20u8 {
            let msgs: Vec<_> = (0..100u8)
                .map(|n| NewMessage {
                    topic: "t",
                    nsqd: "n:4150",
                    msg_id: [batch, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    nsqd_ts_ns: 1,
                    attempts: 1,
                    body: &body,
                })
                .collect();
            store.insert_batch(&msgs).unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size >= 8_000_000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the database file stayed at {size} bytes: nothing checkpointed it"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Closing leaves the archive in the file alone.
        drop(store);
        assert!(!dir.path().join("a.db-wal").exists());
        assert_eq!(Store::open(&path).unwrap().stats().unwrap().total, 2000);
    }
}
