//! Durable queues and subscription records for the Stampede broker.
//!
//! A persistent message counts as accepted, and its RECEIPT may be sent, only once it is on disk.
//! Doing one fsync per message would cap the broker at the disk's sync rate, so this crate
//! **group-commits**: every queue submits to one writer thread, which applies whatever has
//! gathered and makes it durable with a single fsync, then reports back to each submitter.
//!
//! # Layout
//! - [`Store`]: the trait the broker holds (as `Arc<dyn Store>`): [`Store::submit`] a list of
//!   [`Op`]s with a [`Completion`] callback, [`Store::recover`] at start-up,
//!   [`Store::flush`] at shutdown. Small on purpose, so that a shared store (for a cluster) can
//!   implement it later.
//! - [`SledStore`]: the implementation on disk, sled underneath, with its writer thread.
//! - [`MemoryStore`]: the same contract in memory, for tests of the broker.
//! - [`StoreOptions`] and [`FsyncMode`]: the durability/latency trade-off (`always`, `batch`,
//!   `never`), each mode defined precisely on [`FsyncMode`].
//! - [`DiskWatermark`] and [`FreeSpaceLimit`]: the disk alarm that stops persistent writes
//!   before the file system is full, and the reserve file that lets the store open on a full
//!   disk (the `watermark` module says why).
//! - [`Recovery`]: what comes back at start-up — definitions, messages in sequence order with
//!   their delivery counts, and [`RecoveryProblem`]s for records that failed their checksum and
//!   were set aside rather than crash the broker or vanish unreported. When sled's own files
//!   are damaged (it cannot open them, or it lost writes it had confirmed), recovery salvages
//!   every intact record from the raw files (the `salvage` module says how and why).
//!
//! The on-disk format is described in the `codec` module's source.
//!
//! # Using it from the broker
//! 1. At start-up, before listeners accept clients: `SledStore::open(dir, options)` then
//!    `store.recover()` (both blocking: call them before entering the runtime or in
//!    `spawn_blocking`). Hand each [`RecoveredQueue`] to its queue actor; log or expose
//!    [`Recovery::problems`]. A message with `delivery_count > 0` is delivered with
//!    `redelivered:true`; continue numbering at [`RecoveredQueue::next_seq`].
//! 2. Persistent SEND: submit `Op::Append` with a completion that sends the result on a
//!    `tokio::sync::oneshot`; on `Ok` count the message as accepted and release the RECEIPT, on
//!    `Err` answer with an ERROR frame. ACK: submit `Op::Remove` (no need to wait). NACK or a lost
//!    consumer: `Op::SetDeliveryCount`. New queue or durable subscription: `Op::DefineQueue`.
//! 3. Shutdown: [`Store::flush`], then drop the last `Arc`, which joins the writer thread.
//!
//! Storage is at-least-once: an operation whose completion reported an error may still be found
//! after a restart (it was applied but not known to be durable), so a message may come back; an
//! operation reported `Ok` is never lost (in fsync modes `always` and `batch`).
//!
//! # Example
//! ```
//! use std::sync::mpsc;
//! use stampede_storage::{MemoryStore, Op, QueueRecord, Store};
//!
//! let store = MemoryStore::new();
//! let (tx, rx) = mpsc::channel();
//! store.submit(
//!     vec![Op::DefineQueue(QueueRecord::queue("/queue/orders"))],
//!     Some(Box::new(move |result| { let _ = tx.send(result); })),
//! );
//! rx.recv().unwrap().unwrap(); // durable: the RECEIPT may go out
//! assert_eq!(store.recover().unwrap().queues.len(), 1);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
mod durable;
mod error;
mod lock_holder;
mod memory;
mod model;
mod options;
mod salvage;
mod sled_store;
mod store;
mod watermark;

pub use error::StorageError;
pub use memory::MemoryStore;
pub use model::{
    AckMode, COMMIT_SECONDS_BUCKETS, CommitTimes, Completion, Op, OwnerRecord, ProblemKind, QueueKind, QueueRecord,
    RecordPosition, RecoveredQueue, Recovery, RecoveryProblem, StoreMetrics, StoredMessage,
};
pub use options::{FsyncMode, StoreOptions};
pub use sled_store::SledStore;
pub use store::Store;
pub use watermark::{
    DEFAULT_FREE_BYTES, DEFAULT_FREE_HUNDREDTHS_OF_PERCENT, DiskStatus, DiskWatermark, FreeSpaceLimit, RESERVE_FILE,
    margin, release_reserve, reserve_size,
};
