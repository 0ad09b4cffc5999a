//! [`MemoryStore`]: the [`Store`] contract without a disk, for tests of the broker.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::{
    Completion, Op, ProblemKind, QueueRecord, RecordPosition, RecoveredQueue, Recovery, RecoveryProblem, StorageError,
    Store, StoreMetrics, StoredMessage,
};

/// A [`Store`] that keeps everything in memory and forgets it when dropped.
///
/// It applies each submission inside [`Store::submit`] and runs the completion there, on the
/// caller's thread, before `submit` returns: code under test must not hold a lock that the
/// completion takes. [`Store::recover`] returns what a [`SledStore`](crate::SledStore) would
/// recover after the same submissions.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    definitions: BTreeMap<String, QueueRecord>,
    queues: BTreeMap<String, BTreeMap<u64, StoredMessage>>,
    metrics: StoreMetrics,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not hide this store's contents.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn submit(&self, ops: Vec<Op>, done: Option<Completion>) {
        {
            let mut state = self.lock();
            state.metrics.submissions += 1;
            state.metrics.batches += 1;
            state.metrics.ops += ops.len() as u64;
            for op in ops {
                match op {
                    Op::DefineQueue(record) => {
                        state.definitions.insert(record.name.clone(), record);
                    }
                    Op::DeleteQueue { name } => {
                        state.definitions.remove(&name);
                        state.queues.remove(&name);
                    }
                    Op::Append { queue, message } => {
                        state.queues.entry(queue).or_default().insert(message.seq, message);
                    }
                    Op::Remove { queue, seq } => {
                        if let Some(messages) = state.queues.get_mut(&queue) {
                            messages.remove(&seq);
                        }
                    }
                    Op::SetDeliveryCount { queue, seq, count } => {
                        if let Some(message) = state.queues.get_mut(&queue).and_then(|m| m.get_mut(&seq)) {
                            message.delivery_count = count;
                        }
                    }
                }
            }
        }
        if let Some(done) = done {
            done(Ok(()));
        }
    }

    fn recover(&self) -> Result<Recovery, StorageError> {
        let state = self.lock();
        let mut queues = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, messages) in &state.queues {
            let record = match state.definitions.get(name) {
                Some(record) => record.clone(),
                None if messages.is_empty() => continue,
                None => {
                    problems.push(RecoveryProblem {
                        queue: name.clone(),
                        position: RecordPosition::Queue,
                        kind: ProblemKind::MissingDefinition,
                        detail: format!("{} messages stored without a definition", messages.len()),
                    });
                    QueueRecord::queue(name)
                }
            };
            let next_seq = messages.keys().next_back().map_or(0, |seq| seq + 1);
            queues.insert(
                name.clone(),
                RecoveredQueue { record, messages: messages.values().cloned().collect(), next_seq },
            );
        }
        for (name, record) in &state.definitions {
            queues.entry(name.clone()).or_insert_with(|| RecoveredQueue {
                record: record.clone(),
                messages: Vec::new(),
                next_seq: 0,
            });
        }
        Ok(Recovery { queues: queues.into_values().collect(), problems })
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn disk_usage_bytes(&self) -> u64 {
        0
    }

    fn metrics(&self) -> StoreMetrics {
        self.lock().metrics
    }
}
