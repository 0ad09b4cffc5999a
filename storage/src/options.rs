//! How the store trades latency, throughput and durability.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{FreeSpaceLimit, StorageError};

/// When the writer thread makes a group of writes durable (fsync) before completing it.
///
/// In every mode, completions run in submission order and only after the group's writes have
/// been applied to the engine; the modes differ in whether, and when, an fsync precedes them.
/// "fsync" here is sled's flush followed by an `fdatasync` of the store's files (its log, new
/// large-value files and their directory) through the store's own descriptors: sled's flush
/// alone is only `sync_file_range`, which does not survive power loss or an OS crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FsyncMode {
    /// The writer fsyncs every group it picks up, immediately. Submissions that arrive while an
    /// fsync is running queue up and form the next group, so this is natural group commit: no
    /// added latency when idle, few fsyncs under load. A completion with `Ok` means durable.
    #[default]
    Always,
    /// After the first submission of a group arrives, the writer waits up to
    /// [`StoreOptions::commit_interval`] (or until [`StoreOptions::max_batch`] operations are
    /// gathered) for more, then applies them and issues one fsync. Adds up to `commit_interval`
    /// of latency to buy fewer, larger fsyncs. A completion with `Ok` means durable.
    Batch,
    /// No explicit fsync: a completion runs as soon as the group has reached the engine's
    /// memory. Data becomes durable only when the engine's background flusher
    /// (every [`StoreOptions::background_flush`]) or the OS writes it out, so **a crash or power
    /// loss may lose recent messages for which a RECEIPT was already sent**. For testing and for
    /// deployments that accept that risk.
    Never,
}

impl FsyncMode {
    /// The configuration spelling: `always`, `batch` or `never`.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Batch => "batch",
            FsyncMode::Never => "never",
        }
    }
}

impl fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsyncMode {
    type Err = StorageError;

    /// Parses `always`, `batch` or `never` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<FsyncMode, StorageError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(FsyncMode::Always),
            "batch" => Ok(FsyncMode::Batch),
            "never" => Ok(FsyncMode::Never),
            other => Err(StorageError::InvalidOption(format!(
                "fsync mode `{other}` is not one of `always`, `batch`, `never`"
            ))),
        }
    }
}

/// Settings of a [`SledStore`](crate::SledStore). `Default` gives the values documented on each
/// field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// When to fsync; default [`FsyncMode::Always`].
    pub fsync: FsyncMode,
    /// In [`FsyncMode::Batch`], how long the writer waits for more submissions after the first
    /// one of a group; default 2 ms. Ignored by the other modes.
    pub commit_interval: Duration,
    /// Upper bound on the operations in one group commit; default 4096. Bounds the latency of a
    /// single fsync and the memory held by one group. A single submission larger than this is
    /// still applied whole.
    pub max_batch: usize,
    /// Bound on submissions waiting for the writer thread; default 65 536. When it is reached,
    /// [`Store::submit`](crate::Store::submit) completes at once with
    /// [`StorageError::Backlogged`] instead of growing memory.
    pub max_pending: usize,
    /// In [`FsyncMode::Never`], how often the engine writes and syncs in the background; default
    /// 500 ms. In the other modes the writer syncs itself and the background flusher is off.
    pub background_flush: Duration,
    /// Memory the engine may use to cache pages; default 128 MiB.
    pub cache_capacity_bytes: u64,
    /// After a write failure, the minimum time between two attempts to reopen the files;
    /// default 1 s. Writes submitted in between fail at once with
    /// [`StorageError::Unavailable`].
    pub reopen_backoff: Duration,
    /// Free space the file system must keep for writes that add messages to be accepted
    /// (the disk alarm); default [`FreeSpaceLimit::Auto`].
    pub disk_free_limit: FreeSpaceLimit,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            fsync: FsyncMode::Always,
            commit_interval: Duration::from_millis(2),
            max_batch: 4096,
            max_pending: 65_536,
            background_flush: Duration::from_millis(500),
            cache_capacity_bytes: 128 * 1024 * 1024,
            reopen_backoff: Duration::from_secs(1),
            disk_free_limit: FreeSpaceLimit::Auto,
        }
    }
}
