//! The one error type of this crate.
//!
//! Every variant says what failed and, where a directory is involved, which one, so that the
//! broker can log it or put it into an ERROR frame without adding context of its own. The type is
//! `Clone` because one failed group commit completes many submissions with the same error.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The data directory could not be created, locked or opened.
    #[error(
        "cannot open the message store in {path}: {source} \
         (check that the directory is writable and that no other stampede process uses it)"
    )]
    Open {
        /// The data directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The file system holding the data directory is too full for the store to open (sled
    /// needs room to replay its log).
    #[error(
        "cannot open the message store in {path}: its file system is full ({free} bytes free); \
         free at least {needed} bytes on it (delete or move other files there, or grow it) and start \
         again: the stored messages are intact and come back once it opens"
    )]
    DiskFull {
        /// The data directory.
        path: PathBuf,
        /// Bytes free when opening failed.
        free: u64,
        /// Bytes to free.
        needed: u64,
    },

    /// Another process holds the data directory's lock (another broker uses it).
    #[error("{}", locked_message(path, *holder))]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The pid of the process holding the lock, when it could be found.
        holder: Option<u32>,
    },

    /// The data directory (or, when it does not exist yet, its parent) does not accept writes:
    /// read-only file system, permissions, or an immutable directory.
    #[error(
        "the data directory {path} is not writable ({source}): the message store creates and \
         writes its files there; make it writable or choose another data directory"
    )]
    ReadOnly {
        /// The data directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// An `fsync`/`fdatasync` of the store's files failed. After a failed sync the kernel may
    /// have dropped the unwritten data while a later sync reports success, so the failure is
    /// never retried as if the data were safe: the store refuses every write from then on,
    /// until the broker is restarted.
    #[error(
        "fsync of {file} failed: {source}; the message store in {path} refuses all writes until \
         the broker is restarted (a retried fsync could report success for data the kernel dropped)"
    )]
    SyncFailed {
        /// The data directory.
        path: PathBuf,
        /// The file or directory whose sync failed.
        file: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// Reading from or writing to the data directory failed (disk full, I/O error).
    #[error("storage I/O error while {action} in {path}: {source}")]
    Io {
        /// The data directory.
        path: PathBuf,
        /// What the store was doing, e.g. "writing a batch" or "syncing to disk".
        action: &'static str,
        /// The underlying I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The storage engine found its own files damaged (beyond a single record, which recovery
    /// reports and skips instead).
    #[error("the message store in {path} is corrupt ({detail}); restore it from a backup or move it aside")]
    Corruption {
        /// The data directory.
        path: PathBuf,
        /// What the engine reported.
        detail: String,
    },

    /// Any other failure reported by the storage engine.
    #[error("storage engine error while {action} in {path}: {detail}")]
    Engine {
        /// The data directory.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// What the engine reported.
        detail: String,
    },

    /// An earlier write failed and the store has not yet been able to reopen its files; the
    /// write was not attempted. The store retries on later writes.
    #[error("the message store in {path} is unavailable after an earlier failure: {cause}")]
    Unavailable {
        /// The data directory.
        path: PathBuf,
        /// The failure that made it unavailable.
        cause: String,
    },

    /// Too many submissions are waiting for the writer thread; the submission was refused.
    #[error(
        "the storage write queue is full ({limit} pending submissions): \
         the disk is slower than the publishers (raise storage max_pending or slow producers)"
    )]
    Backlogged {
        /// The configured bound (`StoreOptions::max_pending`).
        limit: usize,
    },

    /// The store has shut down (its writer thread has exited).
    #[error("the message store is closed")]
    Closed,

    /// A configuration value could not be understood.
    #[error("invalid storage option: {0}")]
    InvalidOption(String),
}

fn locked_message(path: &std::path::Path, holder: Option<u32>) -> String {
    let process = holder
        .map_or_else(|| "another stampede process".to_owned(), |pid| format!("another stampede process (pid {pid})"));
    format!("{process} is using the data directory {}", path.display())
}

impl StorageError {
    /// Converts an engine error, naming the directory and what the store was doing.
    pub(crate) fn from_engine(path: &std::path::Path, action: &'static str, err: sled::Error) -> StorageError {
        let path = path.to_path_buf();
        match err {
            sled::Error::Io(source) => StorageError::Io { path, action, source: Arc::new(source) },
            sled::Error::Corruption { at, .. } => {
                StorageError::Corruption { path, detail: format!("engine corruption at {at:?}") }
            }
            other => StorageError::Engine { path, action, detail: other.to_string() },
        }
    }
}
