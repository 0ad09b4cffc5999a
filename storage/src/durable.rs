//! A real `fdatasync` behind sled's flush.
//!
//! sled 0.34 "flushes" its log with `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`: that
//! starts and waits for writeback of the written range, but it syncs no metadata (the file's
//! size grows as segments are added), issues no disk cache flush, and so gives no integrity on
//! power loss or an OS crash. It also writes values too large for a log segment to files of their
//! own under `blobs/` without syncing them or the directory, and writes its `conf` file unsynced.
//! A RECEIPT promises more than that, so after every sled flush the writer calls
//! [`DurableFiles::sync`], which `fdatasync`s those files through descriptors of our own:
//! `fdatasync` on any descriptor of a file writes back and waits for all its dirty pages and the
//! metadata needed to read them, and reports a writeback error that happened since the
//! descriptor was opened.
//!
//! One call covers a whole group commit, so its cost is one `fdatasync` of `db` per group, plus
//! one per large value written meanwhile and one of `blobs/` when such files appeared.
//!
//! What sled writes (0.34), and what covers it:
//! - `db`, the log: `fdatasync` on every [`sync`](DurableFiles::sync);
//! - `blobs/<lsn>`, one file per large value, created before the log record that points to it:
//!   found by listing `blobs/` on every sync, `fdatasync`ed once, then `blobs/` is `fsync`ed so
//!   its name survives too;
//! - `conf` and `snap.*` (snapshots are written, renamed and old ones removed only while sled
//!   opens), and the `blobs/` directory itself: synced, with the data directory, right after
//!   opening ([`DurableFiles::open`]).
//!
//! A failed sync is never retried as success: after a failed writeback Linux may mark the pages
//! clean while the disk does not hold them, so the next `fdatasync` can return 0 without them.
//! The writer turns a failure from here into a refusal of all further writes
//! (see the `sled_store` module).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
#[cfg(any(test, feature = "failpoints"))]
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The directory sled keeps large values in, one file each.
const BLOBS: &str = "blobs";
/// sled's log file.
const LOG: &str = "db";
/// sled's configuration file, written unsynced when the store is created.
const CONF: &str = "conf";

/// A sync that failed: which file and why.
#[derive(Debug)]
pub(crate) struct SyncFailure {
    /// The file or directory whose sync failed.
    pub(crate) file: PathBuf,
    /// What the kernel reported.
    pub(crate) source: io::Error,
}

/// Our own descriptors of the files sled writes, so that we can `fdatasync` them.
#[derive(Debug)]
pub(crate) struct DurableFiles {
    dir: PathBuf,
    log: File,
    blobs_dir: File,
    /// Names under `blobs/` already synced (and the directory synced after them).
    synced_blobs: HashSet<OsString>,
}

impl DurableFiles {
    /// Opens the descriptors and makes everything sled wrote while opening durable: `conf`,
    /// `db`, the blob files, `blobs/` and the data directory (new files, renamed snapshots).
    /// Call it right after sled has opened `dir`.
    pub(crate) fn open(dir: &Path) -> Result<DurableFiles, SyncFailure> {
        let log = open_for_sync(&dir.join(LOG))?;
        let blobs_dir = open_for_sync(&dir.join(BLOBS))?;
        let mut files = DurableFiles { dir: dir.to_path_buf(), log, blobs_dir, synced_blobs: HashSet::new() };
        let conf = dir.join(CONF);
        if conf.exists() {
            sync_path(&conf)?;
        }
        files.sync_new_blobs()?;
        sync(&files.blobs_dir, &dir.join(BLOBS), File::sync_all)?;
        sync(&files.log, &dir.join(LOG), File::sync_all)?;
        sync_path(dir)?;
        Ok(files)
    }

    /// Makes everything sled has written so far durable: new blob files and their directory,
    /// then the log. Call it after sled's `flush` returned.
    pub(crate) fn sync(&mut self, faults: &SyncFaults) -> Result<(), SyncFailure> {
        faults.check(&self.dir.join(LOG))?;
        self.sync_new_blobs()?;
        sync(&self.log, &self.dir.join(LOG), File::sync_data)
    }

    /// `fdatasync`s blob files not synced before, then `blobs/` if there were any.
    fn sync_new_blobs(&mut self) -> Result<(), SyncFailure> {
        let blobs = self.dir.join(BLOBS);
        let listing = std::fs::read_dir(&blobs).map_err(|source| SyncFailure { file: blobs.clone(), source })?;
        let mut present = HashSet::with_capacity(self.synced_blobs.len());
        let mut created = false;
        for entry in listing {
            let entry = entry.map_err(|source| SyncFailure { file: blobs.clone(), source })?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(file) => sync(&file, &entry.path(), File::sync_data)?,
                    // sled removed it meanwhile (its value was replaced or deleted).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(SyncFailure { file: entry.path(), source }),
                }
                created = true;
            }
            present.insert(name);
        }
        // Names sled removed are forgotten, so the set stays the size of the directory.
        self.synced_blobs = present;
        if created {
            sync(&self.blobs_dir, &blobs, File::sync_all)?;
        }
        Ok(())
    }
}

fn open_for_sync(path: &Path) -> Result<File, SyncFailure> {
    File::open(path).map_err(|source| SyncFailure { file: path.to_path_buf(), source })
}

fn sync(file: &File, path: &Path, how: fn(&File) -> io::Result<()>) -> Result<(), SyncFailure> {
    how(file).map_err(|source| SyncFailure { file: path.to_path_buf(), source })
}

/// `fsync`s a file or directory by path (for ones synced once, at open).
pub(crate) fn sync_path(path: &Path) -> Result<(), SyncFailure> {
    sync(&open_for_sync(path)?, path, File::sync_all)
}

/// Fault injection for tests of the failed-sync path: the next `count` syncs fail as if
/// `fdatasync` had returned EIO. Compiled out of release builds without the `failpoints` feature.
#[derive(Debug, Default)]
pub(crate) struct SyncFaults {
    #[cfg(any(test, feature = "failpoints"))]
    pending: AtomicU64,
}

impl SyncFaults {
    /// Makes the next `count` syncs fail.
    #[cfg(any(test, feature = "failpoints"))]
    pub(crate) fn inject(&self, count: u64) {
        self.pending.store(count, Relaxed);
    }

    #[cfg(any(test, feature = "failpoints"))]
    fn check(&self, file: &Path) -> Result<(), SyncFailure> {
        match self.pending.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)) {
            Ok(_) => Err(SyncFailure {
                file: file.to_path_buf(),
                source: io::Error::other("injected fdatasync failure (Input/output error)"),
            }),
            Err(_) => Ok(()),
        }
    }

    #[cfg(not(any(test, feature = "failpoints")))]
    fn check(&self, _file: &Path) -> Result<(), SyncFailure> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_covers_blob_files_created_since_the_last_one_and_forgets_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG), b"log").unwrap();
        std::fs::create_dir(dir.path().join(BLOBS)).unwrap();
        std::fs::write(dir.path().join(BLOBS).join("1"), b"old").unwrap();
        let mut files = DurableFiles::open(dir.path()).unwrap();
        assert_eq!(files.synced_blobs, HashSet::from([OsString::from("1")]), "open did not sync the blob");

        std::fs::write(dir.path().join(BLOBS).join("2"), b"new").unwrap();
        std::fs::remove_file(dir.path().join(BLOBS).join("1")).unwrap();
        files.sync(&SyncFaults::default()).unwrap();
        assert_eq!(files.synced_blobs, HashSet::from([OsString::from("2")]));
    }

    #[test]
    fn an_injected_fault_fails_exactly_that_many_syncs_naming_the_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG), b"log").unwrap();
        std::fs::create_dir(dir.path().join(BLOBS)).unwrap();
        let mut files = DurableFiles::open(dir.path()).unwrap();
        let faults = SyncFaults::default();
        faults.inject(1);
        let failure = files.sync(&faults).unwrap_err();
        assert_eq!(failure.file, dir.path().join(LOG));
        files.sync(&faults).unwrap();
    }
}
