//! The interface the broker programs against.

use std::sync::Arc;

use crate::{Completion, DiskWatermark, Op, Recovery, StorageError, StoreMetrics};

/// A durable home for queue definitions, durable subscriptions and persistent messages.
///
/// Implementations: [`SledStore`](crate::SledStore) (on disk) and
/// [`MemoryStore`](crate::MemoryStore) (for tests). Designed to be held as
/// `Arc<dyn Store>` and called from async tasks.
///
/// # Ordering and atomicity
/// The operations of one [`submit`](Store::submit) are applied in order; submissions are applied
/// in the order `submit` was called (calls from different threads are ordered by whichever got
/// to the store first). So an [`Op::Remove`] submitted after the [`Op::Append`] it undoes always
/// finds it, or finds nothing and does nothing. Changes to one queue within one submission are
/// atomic across a crash; a submission touching several queues may be recovered partially only
/// if the process died before its completion reported `Ok`.
pub trait Store: Send + Sync {
    /// Queues `ops` for the writer and returns without waiting for I/O.
    ///
    /// `done`, if given, is called exactly once:
    /// - with `Ok(())` once every op is applied and, unless the fsync mode is
    ///   [`Never`](crate::FsyncMode::Never), durable on disk — only then may the broker send the
    ///   RECEIPT or count a persistent SEND as accepted. An [`Op::Append`] whose
    ///   [`Op::Remove`] was submitted before the append reached the disk may never be written
    ///   (the message was acked, dropped or moved in the meantime): it then counts as applied
    ///   once the group it was cancelled in completes;
    /// - with `Err` if the ops may not be durable (I/O error, disk full, store closed or
    ///   backlogged). Some of the ops may still have been applied and be recovered later:
    ///   storage is at-least-once, never acknowledged-but-lost.
    ///
    /// It runs on the store's writer thread (or, for a submission refused at once, on the calling
    /// thread before `submit` returns), so it must be quick and must not block: send on a
    /// channel, wake a task.
    fn submit(&self, ops: Vec<Op>, done: Option<Completion>);

    /// Reads everything back: definitions and messages in `seq` order, plus a report of damaged
    /// records, which are set aside rather than failing the whole recovery.
    ///
    /// Blocking, and reflects every submission made before it. Call it at start-up before
    /// accepting clients (or from `spawn_blocking`).
    ///
    /// # Errors
    /// Only when the store as a whole cannot be read; single bad records end up in
    /// [`Recovery::problems`].
    fn recover(&self) -> Result<Recovery, StorageError>;

    /// Makes everything submitted so far durable, whatever the fsync mode. Blocking; for
    /// orderly shutdown.
    fn flush(&self) -> Result<(), StorageError>;

    /// Approximate bytes used on disk (0 for memory). Cheap: a value the writer refreshes.
    fn disk_usage_bytes(&self) -> u64;

    /// Counters of the write path.
    fn metrics(&self) -> StoreMetrics;

    /// The free-space watermark of the store's file system, for stores on disk.
    fn disk_watermark(&self) -> Option<Arc<DiskWatermark>> {
        None
    }
}
