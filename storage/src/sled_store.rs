//! The sled engine behind [`Store`]: one writer thread, group commit, checksummed records.
//!
//! # Why a writer thread
//! sled's API is synchronous and its `flush` is an fsync that can take milliseconds. The broker
//! runs on tokio, so nothing here may block a caller on I/O. [`SledStore::submit`] only puts the
//! submission on a bounded channel; a named OS thread (`stampede-storage`) owns the database,
//! applies submissions in arrival order, syncs, and then runs their completions. While it syncs,
//! new submissions queue up and are committed together by the next sync: that is the group
//! commit, and it is why durability does not cost one fsync per message.
//!
//! # Durable means fdatasync
//! sled's own flush only calls `sync_file_range`, which survives a process crash but not power
//! loss or an OS crash. So in [`FsyncMode::Always`] and [`FsyncMode::Batch`] every group commit
//! is sled's flush followed by an `fdatasync` of sled's files through descriptors of our own
//! (the `durable` module); only then do the group's completions run with `Ok`.
//!
//! # Failure
//! sled stops accepting writes after an I/O error. The writer then completes the failed group
//! with the error, drops its handles, and on a later submission (at most once per
//! [`StoreOptions::reopen_backoff`]) reopens the files, which replays sled's log to the last
//! durable point. So a full disk fails the SENDs that hit it, and writes succeed again once space
//! is freed. Nothing that was completed with `Ok` is lost by this, because `Ok` is only given after
//! a successful sync (except in [`FsyncMode::Never`], which promises nothing).
//!
//! A failed *sync* (our `fdatasync`, or sled's writeback reporting EIO) is different: the kernel
//! may have marked the unwritten pages clean, so a reopened sled would read data that is not on
//! disk and a later sync would succeed without it (PostgreSQL's "fsyncgate"). The group fails,
//! the engine is dropped and every later write fails with [`StorageError::SyncFailed`] until the
//! process restarts; an error line in the log says so.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use sled::{Batch, Db, IVec, Tree};
use tracing::{debug, error, info, warn};

use crate::codec::{self, QueueKey};
use crate::durable::{self, DurableFiles, SyncFailure, SyncFaults};
use crate::model::{COMMIT_SECONDS_BUCKETS, CommitTimes};
use crate::salvage::{self, COMMIT_KEY, STAMP_FILE, STAMP_SYNC_INTERVAL};
use crate::watermark::{self, DiskWatermark, FreeSpaceLimit};
use crate::{
    Completion, FsyncMode, Op, ProblemKind, QueueRecord, RecordPosition, RecoveredQueue, Recovery, RecoveryProblem,
    StorageError, Store, StoreMetrics, StoreOptions,
};

/// How often the writer refreshes the figure behind [`Store::disk_usage_bytes`].
const DISK_USAGE_REFRESH: Duration = Duration::from_millis(100);

/// A [`Store`] on disk, in one directory, using sled.
///
/// Dropping it stops the writer thread after it has committed and synced everything already
/// submitted.
#[derive(Debug)]
pub struct SledStore {
    /// `None` only during `drop`, to disconnect the writer.
    commands: Option<SyncSender<Command>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    path: PathBuf,
    max_pending: usize,
}

/// State visible to both the store handle and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    submissions: AtomicU64,
    ops: AtomicU64,
    cancelled_ops: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
    failed_submissions: AtomicU64,
    rejected_submissions: AtomicU64,
    reopens: AtomicU64,
    recovery_problems: AtomicU64,
    salvaged_messages: AtomicU64,
    disk_usage: AtomicU64,
    commit_times: CommitClock,
    last_commit_failed: AtomicBool,
    /// Fault injection: the next this-many group commits fail as if the disk had failed.
    #[cfg(any(test, feature = "failpoints"))]
    inject_failures: AtomicU64,
    /// Fault injection for the syncs that follow sled's flush.
    sync_faults: SyncFaults,
    /// The disk alarm, measured again after every group commit.
    watermark: Option<Arc<DiskWatermark>>,
}

/// [`CommitTimes`] as atomics, moved by the writer and read by `metrics`.
#[derive(Debug, Default)]
struct CommitClock {
    count: AtomicU64,
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; COMMIT_SECONDS_BUCKETS.len() + 1],
}

impl CommitClock {
    fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket =
            COMMIT_SECONDS_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(COMMIT_SECONDS_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn read(&self) -> CommitTimes {
        CommitTimes {
            count: self.count.load(Relaxed),
            sum_nanos: self.sum_nanos.load(Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
        }
    }
}

enum Command {
    Submit(Submission),
    Recover(SyncSender<Result<Recovery, StorageError>>),
    Flush(SyncSender<Result<(), StorageError>>),
}

struct Submission {
    ops: Vec<Op>,
    done: Option<Completion>,
}

impl Submission {
    fn complete(self, result: Result<(), StorageError>) {
        if let Some(done) = self.done {
            done(result);
        }
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir` and starts its writer thread.
    ///
    /// Blocking: sled replays its log here. Call [`Store::recover`] next to read the contents.
    ///
    /// # Errors
    /// [`StorageError::Locked`] when another process holds the directory's lock,
    /// [`StorageError::Open`] if it cannot be created or opened (not writable, say); other
    /// variants for engine failures.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<SledStore, StorageError> {
        let path = dir.to_path_buf();
        prepare_directory(&path)?;
        // The reserve exists for this moment: a store restarted on a full disk needs room to
        // replay its log and to record ACKs. The broker's timer writes it back later.
        match watermark::release_reserve(&path) {
            Ok(0) => {}
            Ok(bytes) => debug!(path = %path.display(), bytes, "reserve file released for opening the store"),
            Err(e) => warn!(path = %path.display(), error = %e, "could not release the reserve file"),
        }
        let stamp = salvage::read_stamp(&path);
        // Scanned before sled opens, which destroys what it cannot read (see `salvage`).
        let scan_started = Instant::now();
        let before = match salvage::scan(&salvage::value_files(&path)) {
            Ok(found) => {
                debug!(path = %path.display(), bytes = found.bytes, elapsed_ms = scan_started.elapsed().as_millis() as u64,
                    "scanned the store's files before opening them");
                Some(found)
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not scan the store's files before opening them");
                None
            }
        };
        let (engine, salvage) = match Engine::open_guarded(&path, &options) {
            Ok(engine) => {
                let sled_commits = engine.commits();
                let salvage = stamp.filter(|&stamped| sled_commits < stamped).map(|stamped| Salvage::Merge {
                    sled_commits,
                    stamped,
                    before,
                });
                (engine, salvage)
            }
            Err(StorageError::Corruption { detail, .. }) => {
                let aside = set_aside(&path, &detail)?;
                let engine = Engine::open(&path, &options).map_err(|e| disk_full(&path, e, options.disk_free_limit))?;
                (engine, Some(Salvage::Rebuild { aside, cause: detail, before }))
            }
            Err(e) => return Err(disk_full(&path, e, options.disk_free_limit)),
        };
        let commits = engine.commits().max(stamp.unwrap_or(0));
        let stamp = Stamp::open(&path);
        let watermark = DiskWatermark::new(&path, options.disk_free_limit)
            .map_err(|e| StorageError::Open { path: path.clone(), source: Arc::new(e) })?;
        let shared = Arc::new(Shared { watermark: Some(Arc::new(watermark)), ..Shared::default() });
        shared.disk_usage.store(engine.db.size_on_disk().unwrap_or(0), Relaxed);
        let (commands, rx) = mpsc::sync_channel(options.max_pending.max(1));
        let max_pending = options.max_pending;
        let writer = Writer {
            path: path.clone(),
            options,
            rx,
            engine: Some(engine),
            failure: None,
            refused: None,
            shared: Arc::clone(&shared),
            usage_refreshed: Instant::now(),
            retry_removals: Vec::new(),
            commits,
            stamp,
            salvage,
        };
        let writer = std::thread::Builder::new()
            .name("stampede-storage".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::Open { path: path.clone(), source: Arc::new(e) })?;
        debug!(path = %path.display(), "message store opened");
        Ok(SledStore { commands: Some(commands), writer: Some(writer), shared, path, max_pending })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the next `count` group commits fail as if the disk had returned an I/O error, and
    /// the store reopen its files afterwards. For tests of the error path.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn inject_failures(&self, count: u64) {
        self.shared.inject_failures.store(count, Relaxed);
    }

    /// Makes the next `count` syncs after sled's flush fail as if `fdatasync` had returned EIO.
    /// For tests of the failed-sync path.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn inject_sync_failures(&self, count: u64) {
        self.shared.sync_faults.inject(count);
    }

    fn request<T>(&self, make: impl FnOnce(SyncSender<Result<T, StorageError>>) -> Command) -> Result<T, StorageError> {
        let commands = self.commands.as_ref().ok_or(StorageError::Closed)?;
        let (reply, answer) = mpsc::sync_channel(1);
        commands.send(make(reply)).map_err(|_| StorageError::Closed)?;
        answer.recv().map_err(|_| StorageError::Closed)?
    }
}

impl Store for SledStore {
    fn submit(&self, ops: Vec<Op>, done: Option<Completion>) {
        let Some(commands) = &self.commands else {
            return Submission { ops, done }.complete(Err(StorageError::Closed));
        };
        match commands.try_send(Command::Submit(Submission { ops, done })) {
            Ok(()) => {}
            Err(TrySendError::Full(Command::Submit(refused))) => {
                self.shared.rejected_submissions.fetch_add(1, Relaxed);
                refused.complete(Err(StorageError::Backlogged { limit: self.max_pending }));
            }
            Err(TrySendError::Disconnected(Command::Submit(refused))) => {
                refused.complete(Err(StorageError::Closed));
            }
            Err(_) => {} // only a Submit was sent
        }
    }

    fn recover(&self) -> Result<Recovery, StorageError> {
        self.request(Command::Recover)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.request(Command::Flush)
    }

    fn disk_usage_bytes(&self) -> u64 {
        self.shared.disk_usage.load(Relaxed)
    }

    fn disk_watermark(&self) -> Option<Arc<DiskWatermark>> {
        self.shared.watermark.clone()
    }

    fn metrics(&self) -> StoreMetrics {
        let s = &self.shared;
        StoreMetrics {
            submissions: s.submissions.load(Relaxed),
            ops: s.ops.load(Relaxed),
            cancelled_ops: s.cancelled_ops.load(Relaxed),
            batches: s.batches.load(Relaxed),
            fsyncs: s.fsyncs.load(Relaxed),
            failed_submissions: s.failed_submissions.load(Relaxed),
            rejected_submissions: s.rejected_submissions.load(Relaxed),
            reopens: s.reopens.load(Relaxed),
            commit_seconds: s.commit_times.read(),
            last_commit_failed: s.last_commit_failed.load(Relaxed),
            recovery_problems: s.recovery_problems.load(Relaxed),
            salvaged_messages: s.salvaged_messages.load(Relaxed),
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Disconnecting makes the writer finish what is queued, sync, and exit.
        drop(self.commands.take());
        if self.writer.take().is_some_and(|writer| writer.join().is_err()) {
            warn!(path = %self.path.display(), "storage writer thread panicked");
        }
    }
}

/// The open database and the trees the writer uses.
struct Engine {
    db: Db,
    /// Our descriptors of sled's files, for the `fdatasync` after each flush.
    files: DurableFiles,
    meta: Tree,
    quarantine: Tree,
    /// Open queue trees by queue name, so each write does not look the tree up by name.
    queues: HashMap<String, Tree>,
}

impl Engine {
    fn open(path: &Path, options: &StoreOptions) -> Result<Engine, StorageError> {
        let background = match options.fsync {
            FsyncMode::Never => Some(u64::try_from(options.background_flush.as_millis()).unwrap_or(u64::MAX).max(1)),
            // The writer syncs itself; a background flusher would only add fsyncs.
            FsyncMode::Always | FsyncMode::Batch => None,
        };
        let config =
            sled::Config::new().path(path).cache_capacity(options.cache_capacity_bytes).flush_every_ms(background);
        // sled releases its directory lock when the last handle inside it goes, which can be a
        // moment after the `Db` is dropped (its flusher thread lets go last). A restart in the
        // same process, or a supervisor restarting the broker at once, would otherwise fail;
        // a store that is really held by someone else still fails after the grace period.
        let grace = std::time::Instant::now() + LOCK_GRACE;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(source)) if is_lock_contention(&source) && std::time::Instant::now() < grace => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(sled::Error::Io(source)) if is_lock_contention(&source) => {
                    let holder = crate::lock_holder::lock_holder(&path.join("db"));
                    return Err(StorageError::Locked { path: path.to_path_buf(), holder });
                }
                Err(sled::Error::Io(source)) => {
                    return Err(StorageError::Open { path: path.to_path_buf(), source: Arc::new(source) });
                }
                Err(other) => return Err(StorageError::from_engine(path, "opening", other)),
            }
        };
        let meta = db.open_tree(codec::META_TREE).map_err(|e| StorageError::from_engine(path, "opening", e))?;
        let quarantine =
            db.open_tree(codec::QUARANTINE_TREE).map_err(|e| StorageError::from_engine(path, "opening", e))?;
        // Opening may have created the trees: make that, and the files sled created, durable.
        db.flush().map_err(|e| StorageError::from_engine(path, "opening", e))?;
        let files = DurableFiles::open(path).map_err(|failure| StorageError::Io {
            path: path.to_path_buf(),
            action: "syncing the store's files after opening",
            source: Arc::new(failure.source),
        })?;
        Ok(Engine { db, files, meta, quarantine, queues: HashMap::new() })
    }

    /// [`Engine::open`], with a panic inside sled (it panics on some damaged files) reported as
    /// [`StorageError::Corruption`].
    fn open_guarded(path: &Path, options: &StoreOptions) -> Result<Engine, StorageError> {
        guarded(path, "opening", || Engine::open(path, options))?
    }

    /// The number of the last group commit sled holds (0 for a store from before numbering).
    fn commits(&self) -> u64 {
        self.meta
            .get(COMMIT_KEY)
            .ok()
            .flatten()
            .and_then(|value| value.as_ref().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0)
    }

    /// sled's flush, then an `fdatasync` of its files: what makes a group durable.
    fn sync(&mut self, path: &Path, faults: &SyncFaults) -> Result<(), StorageError> {
        self.db.flush().map_err(|e| match e {
            sled::Error::Io(source) if source.raw_os_error() == Some(EIO) => {
                StorageError::SyncFailed { path: path.to_path_buf(), file: path.join("db"), source: Arc::new(source) }
            }
            other => StorageError::from_engine(path, "syncing to disk", other),
        })?;
        self.files.sync(faults).map_err(|SyncFailure { file, source }| StorageError::SyncFailed {
            path: path.to_path_buf(),
            file,
            source: Arc::new(source),
        })
    }

    fn queue(&mut self, name: &str) -> sled::Result<&Tree> {
        if !self.queues.contains_key(name) {
            let tree = self.db.open_tree(codec::queue_tree_name(name))?;
            self.queues.insert(name.to_owned(), tree);
        }
        Ok(&self.queues[name])
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    options: StoreOptions,
    rx: Receiver<Command>,
    /// `None` after a failure, until reopened.
    engine: Option<Engine>,
    /// When and why the engine was last lost (or last failed to reopen).
    failure: Option<(Instant, StorageError)>,
    /// Set by a failed sync: every later write fails with it, and the engine stays closed.
    refused: Option<StorageError>,
    shared: Arc<Shared>,
    usage_refreshed: Instant,
    /// Removals (ACKs, drops) of groups that failed, applied again ahead of the next group.
    retry_removals: Vec<Op>,
    /// The number of the last durable group commit, also kept in sled and in the stamp.
    commits: u64,
    /// Our own record of `commits`, to notice a sled that lost confirmed writes.
    stamp: Option<Stamp>,
    /// Set at opening when sled's files were found damaged; done by the first recovery.
    salvage: Option<Salvage>,
}

/// What the first recovery must salvage.
enum Salvage {
    /// sled opened but holds fewer commits than were confirmed: add back what it lost.
    Merge { sled_commits: u64, stamped: u64, before: Option<salvage::Salvaged> },
    /// sled could not open its files; they were moved to `aside` and a fresh store created.
    Rebuild { aside: PathBuf, cause: String, before: Option<salvage::Salvaged> },
}

/// The stamp file: written after every durable commit, synced at most every
/// [`STAMP_SYNC_INTERVAL`] and on every flush (see the `salvage` module).
struct Stamp {
    file: std::fs::File,
    synced_at: Instant,
}

impl Stamp {
    fn open(dir: &Path) -> Option<Stamp> {
        let path = dir.join(STAMP_FILE);
        let created = !path.exists();
        let opened = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
        match opened {
            Ok(file) => {
                if created && let Err(failure) = durable::sync_path(dir) {
                    warn!(path = %dir.display(), error = %failure.source, "could not sync the new commit stamp's directory");
                }
                Some(Stamp { file, synced_at: Instant::now() })
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e,
                    "cannot open the commit stamp: a store that loses confirmed writes will not be noticed");
                None
            }
        }
    }

    fn record(&mut self, commit: u64, sync_now: bool) {
        use std::os::unix::fs::FileExt;
        let result = self.file.write_all_at(&salvage::encode_stamp(commit), 0).and_then(|()| {
            if sync_now || self.synced_at.elapsed() >= STAMP_SYNC_INTERVAL {
                self.synced_at = Instant::now();
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            debug!(error = %e, "could not write the commit stamp");
        }
    }
}

/// Most removals kept for retrying; beyond it the oldest are given up (their messages come
/// back after a restart, as storage is at-least-once).
const MAX_RETRIED_REMOVALS: usize = 1 << 20;

impl Writer {
    fn run(mut self) {
        loop {
            let command = if self.retry_removals.is_empty() {
                match self.rx.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                }
            } else {
                // Failed removals wait for the next group, or for the backoff to pass when
                // nothing else comes (the disk may have room again).
                match self.rx.recv_timeout(self.options.reopen_backoff) {
                    Ok(command) => command,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.commit(Vec::new());
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            match command {
                Command::Submit(first) => {
                    let (group, interrupted_by) = self.gather(first);
                    self.commit(group);
                    if let Some(command) = interrupted_by {
                        self.serve(command);
                    }
                }
                other => self.serve(other),
            }
        }
        // Every handle is gone: make what was applied durable before exiting.
        if let Err(e) = self.sync_all() {
            warn!(path = %self.path.display(), error = %e, "final sync of the message store failed");
        }
        debug!(path = %self.path.display(), "storage writer stopped");
    }

    /// Collects the submissions that form one group commit, starting with `first`. Returns a
    /// non-submit command met on the way, to be served right after the group.
    fn gather(&mut self, first: Submission) -> (Vec<Submission>, Option<Command>) {
        let mut ops = first.ops.len();
        let mut group = vec![first];
        let deadline = match self.options.fsync {
            FsyncMode::Batch => Some(Instant::now() + self.options.commit_interval),
            FsyncMode::Always | FsyncMode::Never => None,
        };
        while ops < self.options.max_batch {
            let next = match deadline {
                None => self.rx.try_recv().ok(),
                Some(deadline) => {
                    // Timeout or disconnection both end the group.
                    self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
                }
            };
            match next {
                Some(Command::Submit(submission)) => {
                    ops += submission.ops.len();
                    group.push(submission);
                }
                Some(other) => return (group, Some(other)),
                None => break,
            }
        }
        (group, None)
    }

    fn serve(&mut self, command: Command) {
        match command {
            Command::Submit(submission) => self.commit(vec![submission]),
            Command::Recover(reply) => {
                let _ = reply.send(self.recover());
            }
            Command::Flush(reply) => {
                let _ = reply.send(self.sync_all());
            }
        }
    }

    /// Applies one group and completes its submissions. Removals that an earlier failed group
    /// carried go first: an ACK the broker has applied in memory must reach the disk once the
    /// disk takes writes again (after a full disk), or the message would come back after a
    /// restart. Replaying a removal is harmless: sequence numbers are never reused, and removing
    /// an absent message does nothing.
    fn commit(&mut self, mut group: Vec<Submission>) {
        if !self.retry_removals.is_empty() {
            group.insert(0, Submission { ops: std::mem::take(&mut self.retry_removals), done: None });
        }
        let s = Arc::clone(&self.shared);
        s.batches.fetch_add(1, Relaxed);
        s.submissions.fetch_add(group.len() as u64, Relaxed);
        let started = Instant::now();
        let outcome = self.apply_and_sync(&group);
        s.commit_times.record(started.elapsed());
        s.last_commit_failed.store(outcome.is_err(), Relaxed);
        if let Err(e) = &outcome {
            s.failed_submissions.fetch_add(group.len() as u64, Relaxed);
            warn!(path = %self.path.display(), error = %e, submissions = group.len(), "group commit failed");
            self.retry_removals
                .extend(group.iter().flat_map(|s| &s.ops).filter(|op| matches!(op, Op::Remove { .. })).cloned());
            if self.retry_removals.len() > MAX_RETRIED_REMOVALS {
                let excess = self.retry_removals.len() - MAX_RETRIED_REMOVALS;
                self.retry_removals.drain(..excess);
            }
        }
        self.refresh_disk_usage(false);
        if let Some(watermark) = &s.watermark
            && let Err(e) = watermark.check()
        {
            debug!(path = %self.path.display(), error = %e, "could not measure free space");
        }
        for submission in group {
            submission.complete(outcome.clone());
        }
    }

    /// Applies every submission of the group in order, then syncs per the fsync mode. Any error
    /// fails the whole group: it is not known to be durable.
    fn apply_and_sync(&mut self, group: &[Submission]) -> Result<(), StorageError> {
        self.ensure_open()?;
        #[cfg(any(test, feature = "failpoints"))]
        if self.shared.inject_failures.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
            let error = StorageError::Io {
                path: self.path.clone(),
                action: "writing a batch",
                source: Arc::new(std::io::Error::other("injected failure")),
            };
            return Err(self.lose_engine(error));
        }
        let result = self.try_apply_and_sync(group);
        result.map_err(|e| self.lose_engine(e))
    }

    fn try_apply_and_sync(&mut self, group: &[Submission]) -> Result<(), StorageError> {
        let path = self.path.clone();
        let engine = self.engine.as_mut().ok_or(StorageError::Closed)?;
        let plan = GroupPlan::of(group);
        self.shared.ops.fetch_add(plan.submitted as u64, Relaxed);
        self.shared.cancelled_ops.fetch_add(plan.cancelled as u64, Relaxed);
        plan.apply(engine).map_err(|e| StorageError::from_engine(&path, "writing a batch", e))?;
        match self.options.fsync {
            FsyncMode::Always | FsyncMode::Batch => {
                let commit = self.commits + 1;
                // Last in the log, so sled holding it means sled holds the whole group.
                engine
                    .meta
                    .insert(COMMIT_KEY, &commit.to_le_bytes())
                    .map_err(|e| StorageError::from_engine(&path, "writing a batch", e))?;
                self.shared.fsyncs.fetch_add(1, Relaxed);
                engine.sync(&path, &self.shared.sync_faults)?;
                self.commits = commit;
                if let Some(stamp) = &mut self.stamp {
                    stamp.record(commit, false);
                }
            }
            FsyncMode::Never => {}
        }
        Ok(())
    }

    /// Drops the engine after a failure; returns `error`. After a failed sync the store refuses
    /// every later write; after any other failure a later write reopens it.
    fn lose_engine(&mut self, error: StorageError) -> StorageError {
        if let Some(engine) = self.engine.take() {
            // sled syncs its log when dropped and unwraps the result: after a failed fsync that
            // panics, which would end this thread and every write with it.
            if guarded(&self.path, "closing after a failure", move || drop(engine)).is_err() {
                debug!(path = %self.path.display(), "the engine panicked while closing after a failure");
            }
        }
        if matches!(error, StorageError::SyncFailed { .. }) {
            if self.refused.is_none() {
                error!(path = %self.path.display(), error = %error,
                    "fsync of the message store failed: its data may not be on disk whatever a retry reports, \
                     so the store is closed and refuses every persistent write (publishers get an ERROR) \
                     until the broker is restarted; check the disk and the kernel log first");
            }
            self.refused = Some(error.clone());
        } else {
            self.failure = Some((Instant::now(), error.clone()));
        }
        error
    }

    /// Reopens the engine after a failure, at most once per `reopen_backoff`; never after a
    /// failed sync.
    fn ensure_open(&mut self) -> Result<(), StorageError> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        if self.engine.is_some() {
            return Ok(());
        }
        if let Some((_, cause)) = self.failure.as_ref().filter(|(at, _)| at.elapsed() < self.options.reopen_backoff) {
            return Err(StorageError::Unavailable { path: self.path.clone(), cause: cause.to_string() });
        }
        match Engine::open(&self.path, &self.options) {
            Ok(engine) => {
                info!(path = %self.path.display(), "message store reopened after a failure");
                self.shared.reopens.fetch_add(1, Relaxed);
                self.engine = Some(engine);
                self.failure = None;
                Ok(())
            }
            Err(e) => {
                self.failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    fn sync_all(&mut self) -> Result<(), StorageError> {
        self.ensure_open()?;
        let engine = self.engine.as_mut().ok_or(StorageError::Closed)?;
        self.shared.fsyncs.fetch_add(1, Relaxed);
        let result = engine.sync(&self.path, &self.shared.sync_faults);
        if result.is_ok()
            && let Some(stamp) = &mut self.stamp
        {
            stamp.record(self.commits, true);
        }
        self.refresh_disk_usage(true);
        result.map_err(|e| self.lose_engine(e))
    }

    fn refresh_disk_usage(&mut self, now: bool) {
        if !now && self.usage_refreshed.elapsed() < DISK_USAGE_REFRESH {
            return;
        }
        if let Some(Ok(bytes)) = self.engine.as_ref().map(|engine| engine.db.size_on_disk()) {
            self.shared.disk_usage.store(bytes, Relaxed);
        }
        self.usage_refreshed = Instant::now();
    }

    /// Merges the intact records found before opening (`before`) or, when that scan is missing
    /// or incomplete, in `files`, into the store holding `recovery`: every message and
    /// definition it lacks. Every message then counts as delivered once. Returns the recovery
    /// read afresh, with one [`ProblemKind::EngineDamaged`] problem saying what happened.
    fn rewrite(
        &mut self,
        mut recovery: Recovery,
        before: Option<salvage::Salvaged>,
        files: &[PathBuf],
        detail: &str,
    ) -> Result<Recovery, StorageError> {
        let path = self.path.clone();
        let io = |e| StorageError::Io { path: path.clone(), action: "salvaging damaged files", source: Arc::new(e) };
        let found = match before {
            Some(found) if found.complete => found,
            Some(mut found) => {
                let after = salvage::scan(files).map_err(io)?;
                found.damaged = found.damaged.max(after.damaged);
                for (key, message) in after.messages {
                    found.messages.entry(key).or_insert(message);
                }
                for (name, record) in after.definitions {
                    found.definitions.entry(name).or_insert(record);
                }
                found
            }
            None => salvage::scan(files).map_err(io)?,
        };
        let engine = self.engine.as_mut().ok_or(StorageError::Closed)?;
        let engine_error = |e| StorageError::from_engine(&path, "salvaging damaged files", e);
        let held: std::collections::HashSet<(&str, u64)> = recovery
            .queues
            .iter()
            .flat_map(|q| q.messages.iter().map(move |m| (q.record.name.as_str(), m.seq)))
            .collect();
        let defined: std::collections::HashSet<&str> = recovery.queues.iter().map(|q| q.record.name.as_str()).collect();
        let mut added = 0u64;
        for (name, record) in &found.definitions {
            if !defined.contains(name.as_str()) {
                engine.meta.insert(name.as_bytes(), codec::encode_record(record)).map_err(engine_error)?;
            }
        }
        for ((queue, seq), message) in &found.messages {
            if held.contains(&(queue.as_str(), *seq)) {
                continue;
            }
            let tree = engine.queue(queue).map_err(engine_error)?;
            tree.insert(codec::message_key(*seq), codec::encode_message(queue, message, message.delivery_count.max(1)))
                .map_err(engine_error)?;
            added += 1;
        }
        for queue in &mut recovery.queues {
            let tree = engine.queue(&queue.record.name).map_err(engine_error)?;
            for message in queue.messages.iter().filter(|m| m.delivery_count == 0) {
                tree.insert(codec::delivery_count_key(message.seq), codec::encode_delivery_count(1))
                    .map_err(engine_error)?;
            }
        }
        // Record that sled now holds every confirmed commit, or the next start would merge again
        // (and bring back what was acked meanwhile).
        engine.meta.insert(COMMIT_KEY, &self.commits.to_le_bytes()).map_err(engine_error)?;
        self.sync_all()?;
        let engine = self.engine.as_mut().ok_or(StorageError::Closed)?;
        let mut recovery = read_all(engine).map_err(|e| StorageError::from_engine(&path, "recovering", e))?;
        error!(path = %path.display(), detail, salvaged_messages = added, damaged_records = found.damaged,
            scanned_bytes = found.bytes, messages = recovery.message_count(),
            "salvaged the message store: every message it holds will be delivered as redelivered");
        self.shared.salvaged_messages.store(added, Relaxed);
        recovery.problems.push(RecoveryProblem {
            queue: String::new(),
            position: RecordPosition::Queue,
            kind: ProblemKind::EngineDamaged,
            detail: format!(
                "{detail}; {added} messages salvaged from the raw files, {} damaged records skipped",
                found.damaged
            ),
        });
        Ok(recovery)
    }

    fn recover(&mut self) -> Result<Recovery, StorageError> {
        self.ensure_open()?;
        let path = self.path.clone();
        let engine = self.engine.as_mut().ok_or(StorageError::Closed)?;
        let started = Instant::now();
        let read = guarded(&path, "recovering", || {
            read_all(engine).map_err(|e| StorageError::from_engine(&path, "recovering", e))
        })
        .and_then(|read| read);
        let recovery = match (read, self.salvage.take()) {
            (Ok(recovery), None) => recovery,
            (Ok(recovery), Some(Salvage::Merge { sled_commits, stamped, before })) => {
                let detail =
                    format!("sled holds commit {sled_commits} but commit {stamped} was confirmed: its log lost writes");
                self.rewrite(recovery, before, &salvage::value_files(&path), &detail)?
            }
            (Ok(recovery), Some(Salvage::Rebuild { aside, cause, before })) => {
                let detail = format!("{cause}; the damaged files are kept in {}", aside.display());
                self.rewrite(recovery, before, &salvage::value_files(&aside), &detail)?
            }
            (Err(StorageError::Corruption { detail: cause, .. }), pending) => {
                // sled opened but cannot read its own trees: start over from what is intact.
                if let Some(engine) = self.engine.take() {
                    let _ = guarded(&path, "closing", move || drop(engine));
                }
                let aside = set_aside(&path, &cause)?;
                self.engine = Some(Engine::open(&path, &self.options)?);
                let empty = read_all(self.engine.as_mut().ok_or(StorageError::Closed)?)
                    .map_err(|e| StorageError::from_engine(&path, "recovering", e))?;
                // The scan made before sled opened saw the files before sled touched them.
                let before = pending.and_then(|pending| match pending {
                    Salvage::Merge { before, .. } | Salvage::Rebuild { before, .. } => before,
                });
                let detail = format!("{cause}; the damaged files are kept in {}", aside.display());
                self.rewrite(empty, before, &salvage::value_files(&aside), &detail)?
            }
            (Err(e), _) => return Err(e),
        };
        self.shared.recovery_problems.store(recovery.problems.len() as u64, Relaxed);
        for problem in &recovery.problems {
            warn!(path = %path.display(), queue = %problem.queue, position = %problem.position,
                kind = ?problem.kind, detail = %problem.detail, "recovery skipped a stored record");
        }
        debug!(path = %path.display(), queues = recovery.queues.len(), messages = recovery.message_count(),
            problems = recovery.problems.len(), elapsed_ms = started.elapsed().as_millis() as u64, "message store recovered");
        self.sync_all()?;
        Ok(recovery)
    }
}

/// One group commit's operations, after folding out the work that cancels.
///
/// A persistent message is usually appended, delivered (its delivery count stored) and acked
/// (removed) within a few hundred microseconds, while one fsync takes about as long. So the
/// append and the removal of the same message often arrive in the same group, and writing
/// both would cost sled two node copies and a log record each for a net change of nothing.
/// The plan drops such pairs, folds a delivery count into a message appended in the same group,
/// and drops a delivery count whose message is removed later in the group. What remains is
/// applied as one sled batch per tree (atomic per tree), in op order, with a `DeleteQueue`
/// first applying everything before it.
///
/// Dropping an append is safe because its removal means the message was acked (or dropped,
/// or moved to a dead-letter queue whose own append is already durable): the submitter's
/// completion reports that the message is taken care of, which is what a receipt promises.
struct GroupPlan<'a> {
    steps: Vec<Step<'a>>,
    /// Ops received.
    submitted: usize,
    /// Ops that cancelled out and were not written.
    cancelled: usize,
}

enum Step<'a> {
    Define(&'a QueueRecord),
    Delete(&'a str),
    /// A message, with the delivery count recorded for it later in the group, if any.
    Put(&'a str, &'a crate::StoredMessage, Option<u32>),
    Remove(&'a str, u64),
    Count(&'a str, u64, u32),
    /// Cancelled by a later op of the group.
    Skip,
}

impl<'a> GroupPlan<'a> {
    fn of(group: &'a [Submission]) -> GroupPlan<'a> {
        let submitted: usize = group.iter().map(|s| s.ops.len()).sum();
        let mut steps = Vec::with_capacity(submitted);
        let mut cancelled = 0;
        // Index in `steps` of this group's pending Put and Count of each message (FxHash: the
        // keys are the broker's own names and ids, and this runs for every op).
        let mut puts: FxHashMap<(&str, u64), usize> = FxHashMap::default();
        let mut counts: FxHashMap<(&str, u64), usize> = FxHashMap::default();
        for op in group.iter().flat_map(|s| &s.ops) {
            match op {
                Op::DefineQueue(record) => steps.push(Step::Define(record)),
                Op::DeleteQueue { name } => {
                    puts.retain(|(queue, _), _| *queue != name.as_str());
                    counts.retain(|(queue, _), _| *queue != name.as_str());
                    steps.push(Step::Delete(name));
                }
                Op::Append { queue, message } => {
                    puts.insert((queue.as_str(), message.seq), steps.len());
                    steps.push(Step::Put(queue, message, None));
                }
                Op::SetDeliveryCount { queue, seq, count } => {
                    let key = (queue.as_str(), *seq);
                    if let Some(&index) = puts.get(&key)
                        && let Step::Put(_, _, recorded) = &mut steps[index]
                    {
                        *recorded = Some(*count);
                        cancelled += 1;
                    } else {
                        if let Some(earlier) = counts.insert(key, steps.len()) {
                            steps[earlier] = Step::Skip;
                            cancelled += 1;
                        }
                        steps.push(Step::Count(queue, *seq, *count));
                    }
                }
                Op::Remove { queue, seq } => {
                    let key = (queue.as_str(), *seq);
                    if let Some(index) = counts.remove(&key) {
                        steps[index] = Step::Skip;
                        cancelled += 1;
                    }
                    if let Some(index) = puts.remove(&key) {
                        steps[index] = Step::Skip;
                        cancelled += 1;
                    }
                    // Still applied: the append may have replaced a message stored before the
                    // group (a delayed redelivery's rewrite). When nothing is stored under the
                    // key (a message appended in this group), sled finds nothing to delete.
                    steps.push(Step::Remove(queue, *seq));
                }
            }
        }
        GroupPlan { steps, submitted, cancelled }
    }

    fn apply(&self, engine: &mut Engine) -> sled::Result<()> {
        let mut meta: Option<Batch> = None;
        let mut queues: Vec<(&str, Batch)> = Vec::new();
        fn batch_for<'a, 'q>(queues: &'q mut Vec<(&'a str, Batch)>, queue: &'a str) -> &'q mut Batch {
            let index = match queues.iter().position(|(name, _)| *name == queue) {
                Some(index) => index,
                None => {
                    queues.push((queue, Batch::default()));
                    queues.len() - 1
                }
            };
            &mut queues[index].1
        }
        for step in &self.steps {
            match *step {
                Step::Skip => {}
                Step::Define(record) => {
                    meta.get_or_insert_with(Batch::default)
                        .insert(record.name.as_bytes(), codec::encode_record(record));
                }
                Step::Delete(name) => {
                    apply_pending(engine, &mut meta, &mut queues)?;
                    engine.meta.remove(name.as_bytes())?;
                    engine.queues.remove(name);
                    engine.db.drop_tree(codec::queue_tree_name(name))?;
                }
                Step::Put(queue, message, count) => {
                    let value = codec::encode_message(queue, message, count.unwrap_or(message.delivery_count));
                    let batch = batch_for(&mut queues, queue);
                    batch.insert(&codec::message_key(message.seq)[..], value);
                    // A replaced message starts from its own delivery count.
                    batch.remove(&codec::delivery_count_key(message.seq)[..]);
                }
                Step::Remove(queue, seq) => {
                    let batch = batch_for(&mut queues, queue);
                    batch.remove(&codec::message_key(seq)[..]);
                    batch.remove(&codec::delivery_count_key(seq)[..]);
                }
                Step::Count(queue, seq, count) => {
                    batch_for(&mut queues, queue)
                        .insert(&codec::delivery_count_key(seq)[..], codec::encode_delivery_count(count));
                }
            }
        }
        apply_pending(engine, &mut meta, &mut queues)
    }
}

fn apply_pending(engine: &mut Engine, meta: &mut Option<Batch>, queues: &mut Vec<(&str, Batch)>) -> sled::Result<()> {
    if let Some(batch) = meta.take() {
        engine.meta.apply_batch(batch)?;
    }
    for (name, batch) in queues.drain(..) {
        engine.queue(name)?.apply_batch(batch)?;
    }
    Ok(())
}

/// The errno of a failed writeback (`EIO`, 5 on Linux and the other Unixes).
const EIO: i32 = 5;
/// `ENOSPC` on Linux: no space left on the device.
const ENOSPC: i32 = 28;

/// Creates the data directory if needed (syncing its parent so the new name is durable) and
/// checks that it accepts new files, so that a read-only directory is one clear error rather
/// than whichever of sled's files fails first.
/// An opening failure from a full file system becomes [`StorageError::DiskFull`], which says how
/// much to free; anything else is returned as it is.
fn disk_full(path: &Path, error: StorageError, limit: FreeSpaceLimit) -> StorageError {
    let io = match &error {
        StorageError::Open { source, .. } | StorageError::Io { source, .. } => source,
        _ => return error,
    };
    if io.raw_os_error() != Some(ENOSPC) {
        return error;
    }
    let Ok(stats) = fs2::statvfs(path) else { return error };
    let (free, total) = (stats.available_space(), stats.total_space());
    let limit = limit.resolve(total);
    let resume_at = limit.saturating_add(watermark::margin(limit));
    let needed = watermark::reserve_size(total).max(resume_at.saturating_sub(free));
    StorageError::DiskFull { path: path.to_path_buf(), free, needed }
}

fn prepare_directory(path: &Path) -> Result<(), StorageError> {
    let not_writable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            StorageError::ReadOnly { path: path.to_path_buf(), source: Arc::new(e) }
        }
        _ => StorageError::Open { path: path.to_path_buf(), source: Arc::new(e) },
    };
    if !path.is_dir() {
        std::fs::create_dir_all(path).map_err(not_writable)?;
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            durable::sync_path(parent).map_err(|failure| not_writable(failure.source))?;
        }
    }
    let probe = path.join(".stampede-write-probe");
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe).map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)
}

/// Moves sled's damaged files in `path` aside (see [`salvage::move_aside`]) and says so.
fn set_aside(path: &Path, cause: &str) -> Result<PathBuf, StorageError> {
    let aside = salvage::move_aside(path).map_err(|e| StorageError::Io {
        path: path.to_path_buf(),
        action: "moving damaged files aside",
        source: Arc::new(e),
    })?;
    error!(path = %path.display(), damaged = %aside.display(), cause,
        "the message store's files are damaged: moved them aside and salvaging every intact record from them");
    Ok(aside)
}

/// Runs `work`, turning a panic inside sled (it panics on some damaged files instead of
/// returning an error) into [`StorageError::Corruption`].
fn guarded<T>(path: &Path, action: &str, work: impl FnOnce() -> T) -> Result<T, StorageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        StorageError::Corruption {
            path: path.to_path_buf(),
            detail: format!("the engine panicked while {action}: {message}"),
        }
    })
}

/// How long opening waits for a directory lock that is being released.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn is_lock_contention(error: &std::io::Error) -> bool {
    error.to_string().contains("could not acquire lock")
}

/// A record recovery set aside: where it was and its bytes.
struct Quarantined {
    tree: Tree,
    tree_name: IVec,
    key: IVec,
    value: IVec,
}

/// Reads every definition and message, moving undecodable records to the quarantine tree.
fn read_all(engine: &mut Engine) -> sled::Result<Recovery> {
    let mut problems = Vec::new();
    let mut set_aside = Vec::new();
    let mut definitions = BTreeMap::new();
    for item in engine.meta.iter() {
        let (key, value) = item?;
        if key.as_ref() == COMMIT_KEY {
            continue;
        }
        let name = String::from_utf8_lossy(&key).into_owned();
        match codec::decode_record(&value) {
            Ok(mut record) => {
                record.name.clone_from(&name);
                definitions.insert(name, record);
            }
            Err(detail) => {
                problems.push(RecoveryProblem {
                    queue: name,
                    position: RecordPosition::Definition,
                    kind: ProblemKind::Corrupt,
                    detail,
                });
                set_aside.push(Quarantined {
                    tree: engine.meta.clone(),
                    tree_name: codec::META_TREE.into(),
                    key,
                    value,
                });
            }
        }
    }

    let mut queues = BTreeMap::new();
    let mut orphans = Vec::new();
    for tree_name in engine.db.tree_names() {
        let Some(name) = tree_name.strip_prefix(codec::QUEUE_TREE_PREFIX.as_bytes()) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let tree = engine.db.open_tree(&tree_name)?;
        let mut messages: Vec<crate::StoredMessage> = Vec::new();
        let mut next_seq = 0;
        for item in tree.iter() {
            let (key, value) = item?;
            let mut problem = |position, kind, detail| {
                problems.push(RecoveryProblem { queue: name.clone(), position, kind, detail });
                set_aside.push(Quarantined {
                    tree: tree.clone(),
                    tree_name: tree_name.clone(),
                    key: key.clone(),
                    value: value.clone(),
                });
            };
            match codec::parse_queue_key(&key) {
                QueueKey::Message(seq) => {
                    next_seq = next_seq.max(seq.saturating_add(1));
                    match codec::decode_message(seq, &value) {
                        Ok(message) => messages.push(message),
                        Err(detail) => problem(RecordPosition::Message { seq }, ProblemKind::Corrupt, detail),
                    }
                }
                QueueKey::DeliveryCount(seq) => match messages.last_mut() {
                    Some(message) if message.seq == seq => match codec::decode_delivery_count(&value) {
                        Ok(count) => message.delivery_count = count,
                        Err(detail) => problem(RecordPosition::DeliveryCount { seq }, ProblemKind::Corrupt, detail),
                    },
                    // The message was removed or never written: the count means nothing.
                    _ => orphans.push((tree.clone(), key.clone())),
                },
                QueueKey::Unknown => problem(
                    RecordPosition::UnknownKey(key.to_vec()),
                    ProblemKind::UnknownKey,
                    "key does not belong to the queue layout".into(),
                ),
            }
        }
        let record = match definitions.remove(&name) {
            Some(record) => record,
            None if messages.is_empty() && next_seq == 0 => continue,
            None => {
                problems.push(RecoveryProblem {
                    queue: name.clone(),
                    position: RecordPosition::Queue,
                    kind: ProblemKind::MissingDefinition,
                    detail: format!(
                        "{} messages stored without a definition; recovered as a plain queue",
                        messages.len()
                    ),
                });
                QueueRecord::queue(&name)
            }
        };
        queues.insert(name, RecoveredQueue { record, messages, next_seq });
    }
    for (name, record) in definitions {
        queues.insert(name, RecoveredQueue { record, messages: Vec::new(), next_seq: 0 });
    }

    for q in set_aside {
        let mut key = q.tree_name.to_vec();
        key.push(0);
        key.extend_from_slice(&q.key);
        engine.quarantine.insert(key, q.value)?;
        q.tree.remove(&q.key)?;
    }
    for (tree, key) in orphans {
        tree.remove(key)?;
    }
    Ok(Recovery { queues: queues.into_values().collect(), problems })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoredMessage;
    use bytes::Bytes;

    fn append(seq: u64) -> Op {
        Op::Append {
            queue: "a".into(),
            message: StoredMessage {
                seq,
                headers: Default::default(),
                body: Bytes::from_static(b"m"),
                delivery_count: 0,
                expires_at_ms: None,
                enqueued_at_ms: 0,
            },
        }
    }

    fn write(store: &SledStore, ops: Vec<Op>) -> Result<(), StorageError> {
        let (tx, rx) = mpsc::channel();
        store.submit(ops, Some(Box::new(move |r| tx.send(r).unwrap_or(()))));
        rx.recv_timeout(Duration::from_secs(30)).expect("completion never ran")
    }

    fn count(seq: u64, count: u32) -> Op {
        Op::SetDeliveryCount { queue: "a".into(), seq, count }
    }

    fn remove(seq: u64) -> Op {
        Op::Remove { queue: "a".into(), seq }
    }

    #[test]
    fn append_and_removal_in_one_group_write_no_message_and_complete_ok() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a"))]).unwrap();
        let before = store.metrics();
        write(&store, vec![append(1), count(1, 1), remove(1)]).unwrap();
        let after = store.metrics();
        assert_eq!(after.cancelled_ops - before.cancelled_ops, 2, "the append and the count were not written");
        assert_eq!(store.recover().unwrap().message_count(), 0);
    }

    #[test]
    fn delivery_count_in_the_appending_group_is_stored_with_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append(1), count(1, 2), append(2)]).unwrap();
        drop(store);
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        let recovery = store.recover().unwrap();
        let counts: Vec<_> = recovery.queues[0].messages.iter().map(|m| (m.seq, m.delivery_count)).collect();
        assert_eq!(counts, [(1, 2), (2, 0)]);
    }

    #[test]
    fn removal_in_a_later_group_removes_the_message_and_its_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append(1), append(2)]).unwrap();
        write(&store, vec![count(1, 1), count(2, 1)]).unwrap();
        // The second count of 1 replaces the first within the group; its removal drops both.
        write(&store, vec![count(1, 2), count(1, 3), remove(1)]).unwrap();
        drop(store);
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        let recovery = store.recover().unwrap();
        assert!(recovery.problems.is_empty(), "{:?}", recovery.problems);
        let counts: Vec<_> = recovery.queues[0].messages.iter().map(|m| (m.seq, m.delivery_count)).collect();
        assert_eq!(counts, [(2, 1)]);
    }

    #[test]
    fn replacing_and_removing_a_stored_message_in_one_group_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append(1)]).unwrap();
        write(&store, vec![append(1), remove(1)]).unwrap();
        assert_eq!(store.recover().unwrap().message_count(), 0);
    }

    #[test]
    fn delete_queue_in_a_group_is_applied_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        write(
            &store,
            vec![
                Op::DefineQueue(QueueRecord::queue("a")),
                append(1),
                Op::DeleteQueue { name: "a".into() },
                Op::DefineQueue(QueueRecord::queue("a")),
                append(2),
                remove(1),
            ],
        )
        .unwrap();
        let recovery = store.recover().unwrap();
        let seqs: Vec<_> = recovery.queues[0].messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [2]);
    }

    #[test]
    fn a_removal_in_a_failed_group_is_applied_again_when_the_disk_takes_writes() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { reopen_backoff: Duration::from_millis(50), ..StoreOptions::default() };
        let store = SledStore::open(dir.path(), options).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append(1), append(2)]).unwrap();

        store.inject_failures(1);
        write(&store, vec![remove(1)]).unwrap_err();
        // No other write comes: the writer retries by itself after the backoff.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.metrics().reopens == 0 {
            assert!(Instant::now() < deadline, "the failed removal was never retried");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(store);
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        let seqs: Vec<_> = store.recover().unwrap().queues[0].messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [2], "the ACK of message 1 was lost with its failed group");
    }

    #[test]
    fn write_failure_fails_the_batch_and_later_writes_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { reopen_backoff: Duration::ZERO, ..StoreOptions::default() };
        let store = SledStore::open(dir.path(), options).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append(1)]).unwrap();

        store.inject_failures(1);
        let err = write(&store, vec![append(2)]).unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&*dir.path().to_string_lossy()), "{err}");

        write(&store, vec![append(3)]).unwrap();
        let metrics = store.metrics();
        assert_eq!((metrics.failed_submissions, metrics.reopens), (1, 1));
        let seqs: Vec<_> = store.recover().unwrap().queues[0].messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 3], "acknowledged writes kept, the failed one not claimed");
    }

    #[test]
    fn store_is_unavailable_during_reopen_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { reopen_backoff: Duration::from_secs(3600), ..StoreOptions::default() };
        let store = SledStore::open(dir.path(), options).unwrap();
        store.inject_failures(1);
        assert!(write(&store, vec![append(1)]).is_err());
        let err = write(&store, vec![append(2)]).unwrap_err();
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("injected failure"), "{err}");
    }

    /// Parks the writer thread inside a completion; returns the sender that releases it.
    fn park_writer(store: &SledStore) -> mpsc::Sender<()> {
        let (parked_tx, parked_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        store.submit(
            vec![Op::DefineQueue(QueueRecord::queue("a"))],
            Some(Box::new(move |_| {
                parked_tx.send(()).unwrap_or(());
                release_rx.recv().unwrap_or(());
            })),
        );
        parked_rx.recv().unwrap();
        release_tx
    }

    #[test]
    fn a_failed_sync_fails_its_whole_group_and_is_not_retried_as_success() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { reopen_backoff: Duration::ZERO, ..StoreOptions::default() };
        let store = SledStore::open(dir.path(), options).unwrap();
        let release = park_writer(&store);
        // Three submissions queue up behind the parked writer and form one group.
        let (tx, rx) = mpsc::channel();
        for seq in 1..=3 {
            let tx = tx.clone();
            store.submit(vec![append(seq)], Some(Box::new(move |r| tx.send((seq, r)).unwrap_or(()))));
        }
        store.inject_sync_failures(1);
        let batches = store.metrics().batches;
        release.send(()).unwrap();
        for _ in 1..=3 {
            let (seq, result) = rx.recv_timeout(Duration::from_secs(30)).expect("completion never ran");
            let err = result.expect_err("a submission of the failed group reported success");
            assert!(matches!(err, StorageError::SyncFailed { .. }), "{seq}: {err:?}");
            assert!(err.to_string().contains("injected fdatasync failure"), "{err}");
            assert!(err.to_string().contains(&*dir.path().join("db").to_string_lossy()), "{err}");
        }
        assert_eq!(store.metrics().batches - batches, 1, "the three submissions were not one group");

        // The injected fault is spent: a retried sync would now succeed, and must not be tried.
        let later = write(&store, vec![append(4)]).unwrap_err();
        assert!(matches!(later, StorageError::SyncFailed { .. }), "{later:?}");
        assert!(later.to_string().contains("refuses all writes until the broker is restarted"), "{later}");
        assert!(store.flush().is_err(), "a flush after a failed sync reported success");
        let metrics = store.metrics();
        assert_eq!((metrics.reopens, metrics.failed_submissions), (0, 4), "{metrics:?}");
    }

    #[test]
    fn after_a_failed_sync_a_restart_recovers_what_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append(1)]).unwrap();
        store.inject_sync_failures(1);
        write(&store, vec![append(2)]).unwrap_err();
        drop(store);
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        let seqs: Vec<_> = store.recover().unwrap().queues[0].messages.iter().map(|m| m.seq).collect();
        assert!(seqs.starts_with(&[1]), "the acknowledged message is gone: {seqs:?}");
        write(&store, vec![append(3)]).unwrap();
    }

    #[test]
    fn a_retained_topic_record_and_its_messages_survive_a_restart_and_are_found_by_salvage() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        let define = Op::DefineQueue(QueueRecord::retained_topic("a", "prices.eur"));
        write(&store, vec![define, append(7), append(8), remove(7)]).unwrap();
        drop(store);
        let found = crate::salvage::scan(&crate::salvage::value_files(dir.path())).unwrap();
        assert_eq!(found.definitions["a"].kind, crate::QueueKind::RetainedTopic, "salvage reads the definition");
        assert!(found.messages.contains_key(&("a".to_owned(), 8)), "salvage finds the retained message");
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        let recovery = store.recover().unwrap();
        let retained = recovery.queue("a").unwrap();
        assert_eq!(retained.record.kind, crate::QueueKind::RetainedTopic);
        assert_eq!(retained.record.topic.as_deref(), Some("prices.eur"));
        assert_eq!(retained.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn a_large_value_in_a_blob_file_is_acknowledged_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        let mut large = append(1);
        if let Op::Append { message, .. } = &mut large {
            message.body = Bytes::from(vec![b'x'; 1 << 20]);
        }
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), large]).unwrap();
        let blobs: Vec<_> =
            std::fs::read_dir(dir.path().join("blobs")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!blobs.is_empty(), "sled kept a 1 MiB value inline; this test no longer covers blob files");
        drop(store);
        let store = SledStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.recover().unwrap().queues[0].messages[0].body.len(), 1 << 20);
    }

    #[test]
    fn a_read_only_data_directory_is_a_one_line_error() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let Some(_guard) = ReadOnly::make(&dir) else { return };
        let err = SledStore::open(&dir, StoreOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StorageError::ReadOnly { .. }), "{err:?}");
        assert!(!text.contains('\n'), "not one line: {text}");
        assert!(text.contains(&*dir.to_string_lossy()) && text.contains("not writable"), "{text}");
    }

    /// Makes a directory refuse new files for the life of the guard: `chmod 0555` for a normal
    /// user; for root, who ignores permission bits, `chattr +i`.
    struct ReadOnly(PathBuf, bool);

    impl ReadOnly {
        fn make(dir: &Path) -> Option<ReadOnly> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            if std::fs::File::create(dir.join("probe")).is_err() {
                return Some(ReadOnly(dir.to_path_buf(), false));
            }
            std::fs::remove_file(dir.join("probe")).unwrap();
            let chattr = std::process::Command::new("chattr").arg("+i").arg(dir).status();
            if chattr.is_ok_and(|status| status.success()) {
                return Some(ReadOnly(dir.to_path_buf(), true));
            }
            println!("SKIPPED: running as root and `chattr +i` is not available, so no read-only directory");
            None
        }
    }

    impl Drop for ReadOnly {
        fn drop(&mut self) {
            use std::os::unix::fs::PermissionsExt;
            if self.1 {
                let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
            }
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
    }

    #[test]
    fn full_backlog_refuses_on_the_calling_thread() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { max_pending: 1, ..StoreOptions::default() };
        let store = SledStore::open(dir.path(), options).unwrap();
        // Park the writer inside a completion so the channel fills.
        let (parked_tx, parked_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        store.submit(
            vec![append(1)],
            Some(Box::new(move |_| {
                parked_tx.send(()).unwrap_or(());
                release_rx.recv().unwrap_or(());
            })),
        );
        parked_rx.recv().unwrap();
        store.submit(vec![append(2)], None); // fills the one slot
        let (tx, rx) = mpsc::channel();
        store.submit(vec![append(3)], Some(Box::new(move |r| tx.send(r).unwrap_or(()))));
        let refused = rx.try_recv().expect("completed before submit returned");
        assert!(matches!(refused, Err(StorageError::Backlogged { limit: 1 })), "{refused:?}");
        release_tx.send(()).unwrap();
        assert_eq!(store.recover().unwrap().message_count(), 2);
        assert_eq!(store.metrics().rejected_submissions, 1);
    }
}
