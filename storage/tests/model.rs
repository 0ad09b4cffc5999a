//! Model test in sled's style: random operations, including restarts, must leave `SledStore` and
//! `MemoryStore` recovering exactly what a `BTreeMap` model says.

use std::collections::BTreeMap;
use std::sync::mpsc;

use bytes::Bytes;
use proptest::prelude::*;
use stampede_protocol::Headers;
use stampede_storage::{FsyncMode, MemoryStore, Op, QueueRecord, SledStore, Store, StoreOptions, StoredMessage};

#[derive(Debug, Clone)]
enum Step {
    Define(usize),
    Delete(usize),
    Append(usize, u64, u8),
    Remove(usize, u64),
    SetCount(usize, u64, u32),
    Restart,
}

const QUEUES: [&str; 3] = ["a", "b", "/queue/c"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0..3usize).prop_map(Step::Define),
        1 => (0..3usize).prop_map(Step::Delete),
        6 => (0..3usize, 0..12u64, any::<u8>()).prop_map(|(q, s, b)| Step::Append(q, s, b)),
        3 => (0..3usize, 0..12u64).prop_map(|(q, s)| Step::Remove(q, s)),
        2 => (0..3usize, 0..12u64, 0..5u32).prop_map(|(q, s, c)| Step::SetCount(q, s, c)),
        1 => Just(Step::Restart),
    ]
}

fn message(seq: u64, tag: u8) -> StoredMessage {
    let mut headers = Headers::new();
    headers.push("tag", tag.to_string());
    StoredMessage {
        seq,
        headers,
        body: Bytes::from(vec![tag; usize::from(tag % 7)]),
        delivery_count: 0,
        expires_at_ms: (tag & 1 == 0).then_some(u64::from(tag)),
        enqueued_at_ms: seq,
    }
}

fn to_op(step: &Step) -> Option<Op> {
    Some(match *step {
        Step::Define(q) => Op::DefineQueue(QueueRecord::queue(QUEUES[q])),
        Step::Delete(q) => Op::DeleteQueue { name: QUEUES[q].into() },
        Step::Append(q, seq, tag) => Op::Append { queue: QUEUES[q].into(), message: message(seq, tag) },
        Step::Remove(q, seq) => Op::Remove { queue: QUEUES[q].into(), seq },
        Step::SetCount(q, seq, count) => Op::SetDeliveryCount { queue: QUEUES[q].into(), seq, count },
        Step::Restart => return None,
    })
}

/// The model: queue name -> (defined, seq -> (tag, delivery count)).
/// Recovered contents: (queue name, [(seq, tag, delivery count)]), sorted by name.
type Contents = Vec<(String, Vec<(u64, u8, u32)>)>;

type Model = BTreeMap<&'static str, (bool, BTreeMap<u64, (u8, u32)>)>;

fn apply_to_model(model: &mut Model, step: &Step) {
    match *step {
        Step::Define(q) => model.entry(QUEUES[q]).or_default().0 = true,
        Step::Delete(q) => {
            model.remove(QUEUES[q]);
        }
        Step::Append(q, seq, tag) => {
            model.entry(QUEUES[q]).or_default().1.insert(seq, (tag, 0));
        }
        Step::Remove(q, seq) => {
            if let Some((_, messages)) = model.get_mut(QUEUES[q]) {
                messages.remove(&seq);
            }
        }
        Step::SetCount(q, seq, count) => {
            if let Some(m) = model.get_mut(QUEUES[q]).and_then(|(_, m)| m.get_mut(&seq)) {
                m.1 = count;
            }
        }
        Step::Restart => {}
    }
}

/// What recovery should return: (name, [(seq, tag, count)]), sorted by name.
fn expected(model: &Model) -> Contents {
    model
        .iter()
        .filter(|(_, (defined, messages))| *defined || !messages.is_empty())
        .map(|(name, (_, messages))| {
            (name.to_string(), messages.iter().map(|(&seq, &(tag, count))| (seq, tag, count)).collect())
        })
        .collect()
}

fn observed(store: &dyn Store) -> Contents {
    let recovery = store.recover().unwrap();
    assert!(recovery.problems.iter().all(|p| p.kind == stampede_storage::ProblemKind::MissingDefinition));
    recovery
        .queues
        .iter()
        .map(|q| {
            let messages = q.messages.iter().map(|m| {
                let tag = m.headers.get("tag").unwrap().parse().unwrap();
                assert_eq!(*m, StoredMessage { delivery_count: m.delivery_count, ..message(m.seq, tag) });
                (m.seq, tag, m.delivery_count)
            });
            (q.record.name.clone(), messages.collect())
        })
        .collect()
}

fn write(store: &dyn Store, ops: Vec<Op>) {
    let (tx, rx) = mpsc::channel();
    store.submit(ops, Some(Box::new(move |r| tx.send(r).unwrap())));
    rx.recv().unwrap().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sled_store_recovers_what_the_model_holds(steps in prop::collection::vec(step(), 1..40), chunk in 1..4usize) {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { fsync: FsyncMode::Never, ..StoreOptions::default() };
        let mut store = Some(SledStore::open(dir.path(), options.clone()).unwrap());
        let memory = MemoryStore::new();
        let mut model = Model::new();
        // Several ops per submission too, to exercise the per-tree batching.
        for group in steps.chunks(chunk) {
            let mut ops = Vec::new();
            for step in group {
                apply_to_model(&mut model, step);
                match to_op(step) {
                    Some(op) => ops.push(op),
                    None => {
                        let before_restart = std::mem::take(&mut ops);
                        write(store.as_ref().unwrap(), before_restart.clone());
                        write(&memory, before_restart);
                        drop(store.take());
                        store = Some(SledStore::open(dir.path(), options.clone()).unwrap());
                    }
                }
            }
            write(store.as_ref().unwrap(), ops.clone());
            write(&memory, ops);
        }
        prop_assert_eq!(observed(store.as_ref().unwrap()), expected(&model));
        prop_assert_eq!(observed(&memory), expected(&model));
        drop(store.take());
        let reopened = SledStore::open(dir.path(), options).unwrap();
        prop_assert_eq!(observed(&reopened), expected(&model));
    }
}
