//! Behaviour of `SledStore` on a real directory: recovery, durability, group commit, corruption
//! and error reporting.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;
use stampede_protocol::Headers;
use stampede_storage::{
    AckMode, FsyncMode, Op, ProblemKind, QueueKind, QueueRecord, RecordPosition, SledStore, StorageError, Store,
    StoreOptions, StoredMessage,
};

fn message(seq: u64, body: &str) -> StoredMessage {
    let mut headers = Headers::new();
    headers.push("destination", "/queue/a");
    headers.push("persistent", "true");
    StoredMessage {
        seq,
        headers,
        body: Bytes::copy_from_slice(body.as_bytes()),
        delivery_count: 0,
        expires_at_ms: None,
        enqueued_at_ms: 1_700_000_000_000 + seq,
    }
}

fn append(queue: &str, seq: u64) -> Op {
    Op::Append { queue: queue.into(), message: message(seq, &format!("body {seq}")) }
}

fn options(fsync: FsyncMode) -> StoreOptions {
    StoreOptions { fsync, ..StoreOptions::default() }
}

/// Submits and waits for the completion.
fn write(store: &dyn Store, ops: Vec<Op>) -> Result<(), StorageError> {
    let (tx, rx) = mpsc::channel();
    store.submit(ops, Some(Box::new(move |result| tx.send(result).unwrap())));
    rx.recv_timeout(Duration::from_secs(30)).expect("completion never ran")
}

fn open(dir: &Path) -> SledStore {
    SledStore::open(dir, options(FsyncMode::Always)).unwrap()
}

fn seqs(store: &dyn Store, queue: &str) -> Vec<u64> {
    let recovery = store.recover().unwrap();
    recovery.queue(queue).map(|q| q.messages.iter().map(|m| m.seq).collect()).unwrap_or_default()
}

#[test]
fn appended_messages_are_recovered_in_seq_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a"))]).unwrap();
        for seq in [300, 2, 1, 256, 70_000] {
            write(&store, vec![append("a", seq)]).unwrap();
        }
    }
    let store = open(dir.path());
    let recovery = store.recover().unwrap();
    assert!(recovery.problems.is_empty(), "{:?}", recovery.problems);
    let queue = recovery.queue("a").unwrap();
    assert_eq!(queue.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 256, 300, 70_000]);
    assert_eq!(queue.messages[0], message(1, "body 1"));
    assert_eq!(queue.next_seq, 70_001);
}

#[test]
fn removed_message_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append("a", 1), append("a", 2), append("a", 3)])
            .unwrap();
        write(&store, vec![Op::Remove { queue: "a".into(), seq: 2 }]).unwrap();
        // Removing what was never written is a no-op, not an error.
        write(&store, vec![Op::Remove { queue: "a".into(), seq: 99 }]).unwrap();
    }
    assert_eq!(seqs(&open(dir.path()), "a"), [1, 3]);
}

#[test]
fn append_and_remove_in_one_submission_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(
        &store,
        vec![Op::DefineQueue(QueueRecord::queue("a")), append("a", 1), Op::Remove { queue: "a".into(), seq: 1 }],
    )
    .unwrap();
    assert!(seqs(&store, "a").is_empty());
}

#[test]
fn delivery_count_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append("a", 1), append("a", 2)]).unwrap();
        write(&store, vec![Op::SetDeliveryCount { queue: "a".into(), seq: 1, count: 1 }]).unwrap();
        write(&store, vec![Op::SetDeliveryCount { queue: "a".into(), seq: 1, count: 4 }]).unwrap();
        // A count for a message that is not stored is ignored at recovery.
        write(&store, vec![Op::SetDeliveryCount { queue: "a".into(), seq: 9, count: 2 }]).unwrap();
    }
    let store = open(dir.path());
    let recovery = store.recover().unwrap();
    assert!(recovery.problems.is_empty(), "{:?}", recovery.problems);
    let counts: Vec<_> = recovery.queue("a").unwrap().messages.iter().map(|m| (m.seq, m.delivery_count)).collect();
    assert_eq!(counts, [(1, 4), (2, 0)]);
}

#[test]
fn durable_subscription_definitions_persist_and_deleting_drops_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut sub = QueueRecord::durable_subscription("c1/s1", "/topic/prices.*", "c1", "s1", AckMode::ClientIndividual);
    sub.max_length = Some(10_000);
    sub.ttl_ms = Some(60_000);
    {
        let store = open(dir.path());
        write(
            &store,
            vec![
                Op::DefineQueue(sub.clone()),
                Op::DefineQueue(QueueRecord::queue("gone")),
                append("c1/s1", 1),
                append("gone", 1),
            ],
        )
        .unwrap();
        write(&store, vec![Op::DeleteQueue { name: "gone".into() }]).unwrap();
    }
    let store = open(dir.path());
    let recovery = store.recover().unwrap();
    assert!(recovery.problems.is_empty(), "{:?}", recovery.problems);
    assert_eq!(recovery.queues.len(), 1);
    let recovered = &recovery.queues[0];
    assert_eq!(recovered.record, sub);
    assert_eq!(recovered.record.kind, QueueKind::DurableSubscription);
    assert_eq!(recovered.messages.len(), 1);
}

#[test]
fn messages_without_a_definition_are_recovered_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(&store, vec![append("undeclared", 5)]).unwrap();
    let recovery = store.recover().unwrap();
    assert_eq!(recovery.queue("undeclared").unwrap().messages.len(), 1);
    assert_eq!(recovery.problems.len(), 1);
    assert_eq!(recovery.problems[0].kind, ProblemKind::MissingDefinition);
}

/// Damages a stored value through a raw sled handle while the store is closed.
fn damage(dir: &Path, tree: &str, key: &[u8], edit: impl FnOnce(&mut Vec<u8>)) {
    let db = open_raw(dir);
    let tree = db.open_tree(tree).unwrap();
    let mut value = tree.get(key).unwrap().expect("record to damage").to_vec();
    edit(&mut value);
    tree.insert(key, value).unwrap();
    db.flush().unwrap();
}

#[test]
fn corrupt_message_is_reported_with_queue_and_seq_then_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append("a", 1), append("a", 2), append("a", 3)])
            .unwrap();
    }
    damage(dir.path(), "q/a", &2u64.to_be_bytes(), |v| {
        let last = v.len() - 1;
        v[last] ^= 0x40;
    });
    damage(dir.path(), "q/a", &3u64.to_be_bytes(), |v| v.truncate(v.len() / 2));
    {
        let store = open(dir.path());
        let recovery = store.recover().unwrap();
        let queue = recovery.queue("a").unwrap();
        assert_eq!(queue.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(queue.next_seq, 4, "skipped sequence numbers must not be reused");
        let found: Vec<_> = recovery.problems.iter().map(|p| (p.queue.as_str(), &p.position, p.kind)).collect();
        assert_eq!(
            found,
            [
                ("a", &RecordPosition::Message { seq: 2 }, ProblemKind::Corrupt),
                ("a", &RecordPosition::Message { seq: 3 }, ProblemKind::Corrupt),
            ]
        );
        assert!(recovery.problems[0].detail.contains("checksum"), "{}", recovery.problems[0]);
        // Set aside, so the next start-up is clean.
        assert!(store.recover().unwrap().problems.is_empty());
    }
    let db = open_raw(dir.path());
    assert_eq!(db.open_tree("quarantine").unwrap().len(), 2);
}

#[test]
fn garbage_definition_and_delivery_count_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("a")), append("a", 1)]).unwrap();
        write(&store, vec![Op::SetDeliveryCount { queue: "a".into(), seq: 1, count: 3 }]).unwrap();
        write(&store, vec![Op::DefineQueue(QueueRecord::queue("b"))]).unwrap();
    }
    damage(dir.path(), "meta", b"b", |v| *v = b"not a record at all".to_vec());
    let mut dc_key = 1u64.to_be_bytes().to_vec();
    dc_key.push(1);
    damage(dir.path(), "q/a", &dc_key, |v| v[6] ^= 1);
    let store = open(dir.path());
    let recovery = store.recover().unwrap();
    let found: Vec<_> = recovery.problems.iter().map(|p| (p.queue.as_str(), &p.position)).collect();
    assert_eq!(found, [("b", &RecordPosition::Definition), ("a", &RecordPosition::DeliveryCount { seq: 1 })]);
    let a = recovery.queue("a").unwrap();
    assert_eq!(a.messages.len(), 1, "the message survives its damaged count");
    assert!(recovery.queue("b").is_none());
}

/// Runs in a child process: writes, waits for the completion, reports it, then dies without
/// running any destructor (no final sync).
fn crash_child(dir: &Path, fsync: FsyncMode) -> ! {
    let store = SledStore::open(dir, options(fsync)).unwrap();
    write(&store, vec![Op::DefineQueue(QueueRecord::queue("a"))]).unwrap();
    for seq in 0..50 {
        write(&store, vec![append("a", seq)]).unwrap();
    }
    std::process::abort();
}

fn completed_writes_survive_abort(fsync: FsyncMode, test_name: &str) {
    if let Ok(dir) = std::env::var("STAMPEDE_CRASH_CHILD_DIR") {
        crash_child(Path::new(&dir), fsync);
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env("STAMPEDE_CRASH_CHILD_DIR", dir.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");
    let store = open(dir.path());
    assert_eq!(seqs(&store, "a"), (0..50).collect::<Vec<_>>());
}

#[test]
fn completed_writes_survive_abort_in_always_mode() {
    completed_writes_survive_abort(FsyncMode::Always, "completed_writes_survive_abort_in_always_mode");
}

#[test]
fn completed_writes_survive_abort_in_batch_mode() {
    completed_writes_survive_abort(FsyncMode::Batch, "completed_writes_survive_abort_in_batch_mode");
}

fn concurrent_writes(store: Arc<SledStore>, threads: usize, per_thread: u64) {
    write(&*store, vec![Op::DefineQueue(QueueRecord::queue("a"))]).unwrap();
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                // Keep many submissions in flight, as many queue actors would.
                let (tx, rx) = mpsc::channel();
                for i in 0..per_thread {
                    let tx = tx.clone();
                    store.submit(
                        vec![append("a", t as u64 * 1_000_000 + i)],
                        Some(Box::new(move |r| tx.send(r).unwrap())),
                    );
                }
                for _ in 0..per_thread {
                    rx.recv().unwrap().unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn group_commit_needs_far_fewer_fsyncs_than_submissions() {
    for fsync in [FsyncMode::Always, FsyncMode::Batch] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), options(fsync)).unwrap());
        concurrent_writes(Arc::clone(&store), 4, 250);
        let metrics = store.metrics();
        assert_eq!(metrics.submissions, 1001);
        assert!(metrics.fsyncs * 5 < metrics.submissions, "{fsync}: {metrics:?}");
        assert_eq!(seqs(&*store, "a").len(), 1000);
    }
}

#[test]
fn batch_mode_respects_max_batch() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        fsync: FsyncMode::Batch,
        commit_interval: Duration::from_secs(5),
        max_batch: 10,
        ..StoreOptions::default()
    };
    let store = Arc::new(SledStore::open(dir.path(), options).unwrap());
    // With a 5 s interval, finishing quickly proves groups closed on size.
    let started = std::time::Instant::now();
    let (tx, rx) = mpsc::channel();
    for seq in 0..100 {
        let tx = tx.clone();
        store.submit(vec![append("a", seq)], Some(Box::new(move |r| tx.send(r).unwrap())));
    }
    for _ in 0..100 {
        rx.recv().unwrap().unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(store.metrics().batches >= 10);
}

#[test]
fn never_mode_completes_without_fsync_and_flush_makes_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), options(FsyncMode::Never)).unwrap();
    for seq in 0..20 {
        write(&store, vec![append("a", seq)]).unwrap();
    }
    assert_eq!(store.metrics().fsyncs, 0);
    store.flush().unwrap();
    assert_eq!(store.metrics().fsyncs, 1);
}

#[test]
fn opening_under_a_regular_file_names_the_directory() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let dir = file.path().join("data");
    let err = SledStore::open(&dir, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
}

#[test]
fn opening_a_directory_in_use_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = SledStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("is using the data directory"), "{err}");
}

#[test]
fn disk_space_is_reused_after_acks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), options(FsyncMode::Never)).unwrap();
    let body = "x".repeat(1024);
    let mut sizes = Vec::new();
    for round in 0..24u64 {
        let ops = (0..1000).map(|i| Op::Append { queue: "a".into(), message: message(round * 1000 + i, &body) });
        write(&store, ops.collect()).unwrap();
        let acks = (0..1000).map(|i| Op::Remove { queue: "a".into(), seq: round * 1000 + i });
        write(&store, acks.collect()).unwrap();
        store.flush().unwrap();
        sizes.push(dir_size(dir.path()));
    }
    // 24 MiB went through; the directory must level off well below that.
    let (early, late) = (sizes[7], sizes[23]);
    assert!(late < 2 * early + 4 * 1024 * 1024, "directory keeps growing: {sizes:?}");
    assert!(late < 16 * 1024 * 1024, "{sizes:?}");
    assert!(store.disk_usage_bytes() > 0);
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_size(&entry.path()) } else { meta.len() };
    }
    total
}

#[test]
fn fsync_mode_parses_and_prints_its_config_spelling() {
    for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Never] {
        assert_eq!(mode.to_string().parse::<FsyncMode>().unwrap(), mode);
    }
    assert_eq!(" BATCH ".parse::<FsyncMode>().unwrap(), FsyncMode::Batch);
    let err = "sometimes".parse::<FsyncMode>().unwrap_err();
    assert!(err.to_string().contains("always"), "{err}");
}

#[test]
fn submit_after_writer_is_busy_keeps_order_with_recover() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for seq in 0..100 {
        store.submit(vec![append("a", seq)], None);
    }
    // recover() is queued behind the submissions, so it sees all of them.
    assert_eq!(seqs(&store, "a").len(), 100);
}

/// Opens the store's sled database directly. sled lets go of its directory lock a moment after
/// the store is dropped, so this retries briefly, as `SledStore::open` does.
fn open_raw(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(error) if std::time::Instant::now() < deadline => {
                let _ = error;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => panic!("cannot open {}: {error}", dir.display()),
        }
    }
}
