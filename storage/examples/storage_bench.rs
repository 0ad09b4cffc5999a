//! Hand-run measurements of the sled store (not part of the test suite).
//!
//! ```text
//! cargo run --release -p stampede-storage --example storage_bench -- write [seconds]
//! cargo run --release -p stampede-storage --example storage_bench -- recovery [messages] [body_bytes]
//! ```
//! `write` reports accepted (completed) 1 KiB appends per second for each fsync mode, with 1 and
//! 4 publisher threads, each either waiting for every completion before the next submit
//! (`window 1`, a client sending with receipts one at a time) or keeping 64 in flight.
//! `recovery` stores the given number of messages (default 1,000,000 of 1 KiB), reopens the store
//! and times `recover()`.
//!
//! Figures from the first run (2 shared cores, virtual disk whose fsync takes ~0.1 ms, release
//! build, default options): 1 KiB appends, msgs/s completed —
//!
//! | fsync  | 1 thread, window 1 | 1 thread, window 64 | 4 threads, window 1 | 4 threads, window 64 |
//! |--------|-------------------:|--------------------:|--------------------:|---------------------:|
//! | always |              7 900 |              13 300 |               3 600 |               12 700 |
//! | batch  |                350 |               8 800 |               1 400 |                9 800 |
//! | never  |             26 600 |              37 200 |              20 600 |               49 100 |
//!
//! (`batch` with window 1 pays the 2 ms `commit_interval` on every message, as designed.)
//! Recovery of 1,000,000 messages: 9.3 s with 1 KiB bodies (2.0 GiB on disk), 2.8 s with
//! 128 B bodies (0.4 GiB on disk).

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stampede_protocol::Headers;
use stampede_storage::{FsyncMode, Op, QueueRecord, SledStore, Store, StoreOptions, StoredMessage};

fn message(seq: u64, body: &Bytes) -> StoredMessage {
    let mut headers = Headers::new();
    headers.push("destination", "/queue/bench");
    headers.push("persistent", "true");
    headers.push("content-type", "application/octet-stream");
    StoredMessage { seq, headers, body: body.clone(), delivery_count: 0, expires_at_ms: None, enqueued_at_ms: seq }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    match args.first().map(String::as_str) {
        Some("recovery") => {
            let count = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
            let body = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1024);
            recovery(dir.path(), count, body);
        }
        _ => {
            let seconds = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
            for fsync in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Never] {
                for threads in [1, 4] {
                    for window in [1, 64] {
                        let path = dir.path().join(format!("{fsync}-{threads}-{window}"));
                        write(&path, fsync, threads, window, Duration::from_secs(seconds));
                    }
                }
            }
        }
    }
}

fn write(path: &Path, fsync: FsyncMode, threads: usize, window: usize, run_for: Duration) {
    let store = Arc::new(SledStore::open(path, StoreOptions { fsync, ..StoreOptions::default() }).unwrap());
    let body = Bytes::from(vec![b'x'; 1024]);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(&store);
            let body = body.clone();
            std::thread::spawn(move || {
                let queue = format!("q{t}");
                let (tx, rx) = mpsc::channel();
                let (mut sent, mut done) = (0u64, 0u64);
                while started.elapsed() < run_for {
                    while sent - done < window as u64 {
                        let tx = tx.clone();
                        let op = Op::Append { queue: queue.clone(), message: message(sent, &body) };
                        store.submit(vec![op], Some(Box::new(move |r| tx.send(r).unwrap())));
                        sent += 1;
                    }
                    rx.recv().unwrap().unwrap();
                    done += 1;
                }
                while done < sent {
                    rx.recv().unwrap().unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let m = store.metrics();
    println!(
        "fsync={fsync:<6} threads={threads} window={window:<3} {:>9.0} msgs/s  ({total} msgs, {} fsyncs, {:.1} msgs/fsync, {:.1} MiB on disk)",
        total as f64 / elapsed,
        m.fsyncs,
        total as f64 / m.fsyncs.max(1) as f64,
        store.disk_usage_bytes() as f64 / 1048576.0,
    );
}

fn recovery(path: &Path, count: u64, body_len: usize) {
    let body = Bytes::from(vec![b'x'; body_len]);
    {
        let options = StoreOptions { fsync: FsyncMode::Never, ..StoreOptions::default() };
        let store = SledStore::open(path, options).unwrap();
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        store.submit(vec![Op::DefineQueue(QueueRecord::queue("bench"))], None);
        let mut seq = 0;
        let mut pending = 0;
        while seq < count {
            let ops: Vec<Op> = (seq..count.min(seq + 1000))
                .map(|s| Op::Append { queue: "bench".into(), message: message(s, &body) })
                .collect();
            seq += ops.len() as u64;
            let tx = tx.clone();
            store.submit(ops, Some(Box::new(move |r| tx.send(r).unwrap())));
            pending += 1;
            if pending > 32 {
                rx.recv().unwrap().unwrap();
                pending -= 1;
            }
        }
        for _ in 0..pending {
            rx.recv().unwrap().unwrap();
        }
        store.flush().unwrap();
        println!(
            "stored {count} messages of {body_len} B in {:.1} s, {:.0} MiB on disk",
            started.elapsed().as_secs_f64(),
            store.disk_usage_bytes() as f64 / 1048576.0
        );
    }
    let started = Instant::now();
    let store = SledStore::open(path, StoreOptions::default()).unwrap();
    let opened = started.elapsed();
    let recovery = store.recover().unwrap();
    let total = started.elapsed();
    assert_eq!(recovery.message_count() as u64, count);
    assert!(recovery.problems.is_empty());
    println!(
        "recovery of {count} messages: open {:.2} s + recover {:.2} s = {:.2} s ({:.0} msgs/s)",
        opened.as_secs_f64(),
        (total - opened).as_secs_f64(),
        total.as_secs_f64(),
        count as f64 / total.as_secs_f64()
    );
}
