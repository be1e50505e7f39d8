//! The fsync of SQLite commits, moved off the writer's thread: group commit for the archive.
//!
//! With `synchronous=FULL` every commit writes its pages to the `-wal` file and then waits for an fsync of it
//! before returning; profiled under `bench archive`, the writer thread sat in that wait about a fifth of its time,
//! time it could have spent inserting the next batch. [`Store::defer_sync`](crate::Store::defer_sync) switches the
//! writing connection to `synchronous=NORMAL`, where a commit returns once its pages are written (in the page
//! cache, not yet on disk), and hands back a [`WalSync`]: a second handle on the same `-wal` file whose
//! [`WalSync::sync`] makes everything written to it so far durable. A commit is then as durable as under `FULL`
//! once a `sync` that *started after the commit returned* has returned; one `sync` covers every commit before it,
//! so a thread that runs them back to back syncs several batches at once while the writer goes on.
//!
//! Why this is sound (SQLite 3.x, WAL mode):
//! - Recovery after a crash replays the WAL frame by frame up to the last valid commit frame. A commit's frames,
//!   and the frames and WAL header before them, are written before the commit returns, and an fsync of the file
//!   (by any descriptor: Linux syncs the inode) makes them all durable.
//! - `NORMAL` changes only the commit: a checkpoint still syncs the WAL before copying pages into the database
//!   file and syncs the file after, so the WAL is only ever restarted over frames that are safe in the file.
//! - SQLite never unlinks the `-wal` file while a connection has it open (ours does), and truncation keeps the
//!   inode. [`WalSync::sync`] still checks that the name points at the file it holds and re-opens it if not.
//! - SQLite syncs the directory once after creating a `-wal` (so its name survives a power cut);
//!   [`WalSync::open`] does the same.
//!
//! A failed fsync is not retried: on Linux the failed pages can be marked clean and the error reported once, so a
//! second fsync can succeed with the data gone. The caller must treat it as fatal (the archiver stops finishing
//! messages, so nsqd keeps them).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// A handle that makes the archive's committed WAL pages durable; see the [module docs](self).
#[derive(Debug)]
pub struct WalSync {
    /// The database file, for errors.
    db: PathBuf,
    /// Its `-wal` file.
    path: PathBuf,
    wal: File,
    /// Device and inode of `wal`, to notice a `-wal` file that is not the one held.
    id: (u64, u64),
}

impl WalSync {
    /// Opens the `-wal` file of the database at `db` (which must be open in WAL mode, so the file exists) and
    /// syncs its directory once.
    pub(crate) fn open(db: &Path) -> Result<WalSync, StoreError> {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        let path = PathBuf::from(path);
        let (wal, id) = open_synced(db, &path)?;
        Ok(WalSync {
            db: db.to_path_buf(),
            path,
            wal,
            id,
        })
    }

    /// The database file whose WAL this syncs (its real path: symlinks resolved).
    pub fn database(&self) -> &Path {
        &self.db
    }

    /// Makes every page written to the WAL before this call durable (an `fdatasync`). An error means some
    /// committed pages may never reach the disk: see the [module docs](self).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {}
            // Not the file held any more (or gone): sync the one held, which may hold our frames, then take the
            // one SQLite now writes.
            _ => {
                self.wal.sync_data().map_err(|e| self.failed(e))?;
                let (wal, id) = open_synced(&self.db, &self.path)?;
                (self.wal, self.id) = (wal, id);
            }
        }
        self.wal.sync_data().map_err(|e| self.failed(e))
    }

    fn failed(&self, cause: std::io::Error) -> StoreError {
        StoreError::SyncFailed {
            path: self.db.clone(),
            cause,
        }
    }
}

/// Opens `wal` read-only (enough for fsync on Linux) and syncs the directory holding it.
fn open_synced(db: &Path, wal: &Path) -> Result<(File, (u64, u64)), StoreError> {
    let failed = |cause| StoreError::SyncFailed {
        path: db.to_path_buf(),
        cause,
    };
    let file = File::open(wal).map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    let dir = match wal.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
    Ok((file, (meta.dev(), meta.ino())))
}

#[cfg(test)]
mod tests {
    use crate::{NewMessage, Store};

    fn msg(n: u8) -> NewMessage<'static> {
        NewMessage {
            topic: "t",
            nsqd: "n:4150",
            msg_id: [n; 16],
            nsqd_ts_ns: i64::from(n),
            attempts: 1,
            body: b"b",
        }
    }

    #[test]
    fn a_deferred_store_commits_without_fsync_and_the_sync_handle_holds_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut store = Store::open(&path).unwrap();
        let mut sync = store.defer_sync().unwrap();
        let synchronous: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 1, "NORMAL");
        store.insert_batch(&[msg(1)]).unwrap();
        sync.sync().unwrap();
        let wal = std::fs::metadata(dir.path().join("a.db-wal")).unwrap();
        assert!(wal.len() > 0, "the commit is in the WAL the handle syncs");
        // A checkpoint that truncates the WAL keeps its inode: the handle goes on syncing it.
        store.checkpoint().unwrap();
        store.insert_batch(&[msg(2)]).unwrap();
        sync.sync().unwrap();
        assert_eq!(store.stats().unwrap().total, 2);
    }

    #[test]
    fn a_database_reached_through_a_symlink_has_its_wal_synced_where_sqlite_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let mut store = Store::open(dir.path().join("link/a.db")).unwrap();
        let mut sync = store.defer_sync().unwrap();
        store.insert_batch(&[msg(1)]).unwrap();
        sync.sync().unwrap();
        assert_eq!(
            sync.database(),
            dir.path().join("real/a.db").canonicalize().unwrap()
        );
    }

    #[test]
    fn a_wal_replaced_under_the_handle_is_synced_and_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = Store::open(&path).unwrap();
        let mut sync = crate::wal_sync::WalSync::open(&path).unwrap();
        drop(store);
        // The last connection closed: SQLite deleted the WAL. A new one creates another file.
        assert!(!dir.path().join("a.db-wal").exists());
        let mut store = Store::open(&path).unwrap();
        store.insert_batch(&[msg(1)]).unwrap();
        let before = sync.id;
        sync.sync().unwrap();
        assert_ne!(sync.id, before, "the handle follows the new -wal file");
    }
}
