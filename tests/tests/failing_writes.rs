//! A failing `fsync`/`fdatasync` under the real `stampede` binary: no RECEIPT follows it, the
//! broker refuses persistent work from then on (a retried sync could report success for data the
//! kernel dropped), says so in its log and in `/readyz`, and nothing receipted before it is lost.
//!
//! The failure comes from an `LD_PRELOAD` shim compiled here with `gcc`: while a flag file exists,
//! its `fsync` and `fdatasync` return EIO without syncing, as a failing disk does. The test skips,
//! saying why, when `gcc` is missing.
//!
//! It found that sled syncs its log when its handle is dropped and unwraps the result, so closing
//! the store after the failed sync panicked the storage thread and the queue reported "stopped"
//! instead of the refusal below; the store now closes sled under a panic guard.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use stampede_client::{AckMode, Command, Frame, SubscribeOptions};
use stampede_tests::process::{BrokerProcess, connect};

/// Persistent messages receipted before the failure.
const BEFORE: u64 = 200;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("FAILSYNC_FLAG_FILE");
    return flag && access(flag, F_OK) == 0;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (failing()) { errno = EIO; return -1; }
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (failing()) { errno = EIO; return -1; }
    return real(fd);
}
"#;

/// Compiles the shim into `dir`, or says why not.
fn build_shim(dir: &Path) -> Option<std::path::PathBuf> {
    let source = dir.join("failsync.c");
    let library = dir.join("failsync.so");
    std::fs::write(&source, SHIM).expect("shim source");
    let built = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status();
    match built {
        Ok(status) if status.success() => Some(library),
        other => {
            println!("SKIPPED: could not compile the fsync-failing LD_PRELOAD shim with gcc ({other:?})");
            None
        }
    }
}

fn persistent(seq: u64) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", "/queue/failing")
        .with_header("persistent", "true")
        .with_body(format!("message {seq}"))
}

/// The broker on `data_dir`, under the fsync-failing shim when `preload` names it and its flag.
async fn start(data_dir: &Path, preload: Option<(&Path, &Path)>) -> BrokerProcess {
    let mut command = BrokerProcess::command(data_dir);
    command
        .env("STAMPEDE_METRICS_PUBLIC", "true")
        // The host's free space plays no part here.
        .env("STAMPEDE_DISK_FREE_LIMIT", "0");
    if let Some((library, flag)) = preload {
        command.env("LD_PRELOAD", library).env("FAILSYNC_FLAG_FILE", flag);
    }
    BrokerProcess::spawn(command).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_receipt_follows_a_failed_fsync_and_nothing_receipted_before_it_is_lost() {
    // In memory where possible: the test is about a failing sync, not the disk's sync rate.
    let dir = stampede_tests::scratch_dir();
    let Some(shim) = build_shim(dir.path()) else { return };
    let flag = dir.path().join("fail-now");
    let data = dir.path().join("data");

    let broker = start(&data, Some((&shim, &flag))).await;
    let client = connect(&broker.url()).await;
    for seq in 0..BEFORE {
        client.send_frame_with_receipt(persistent(seq)).await.expect("receipt before the failure");
    }

    // The disk starts failing its syncs: the next persistent SEND gets an ERROR, not a RECEIPT.
    std::fs::write(&flag, b"").expect("flag");
    let refused = client.send_frame_with_receipt(persistent(BEFORE)).await.expect_err("a RECEIPT after a failed fsync");
    let refused = refused.to_string();
    println!("the SEND whose fsync failed got: {refused}");
    assert!(
        broker.logged("fsync of the message store failed"),
        "no log line says the sync failed:\n{}",
        broker.log_text()
    );

    // The disk "recovers", but a retried sync proves nothing: persistent work stays refused.
    std::fs::remove_file(&flag).expect("unflag");
    let client = connect(&broker.url()).await;
    let again =
        client.send_frame_with_receipt(persistent(BEFORE + 1)).await.expect_err("a RECEIPT after a failed fsync");
    // Which ERROR it is varies (the store's refusal, or the queue reporting it stopped); what
    // matters is that no RECEIPT came.
    println!("after the failed fsync a persistent SEND gets: {again}");
    let (status, body) = broker.get("/readyz").await;
    assert_eq!(status, 503, "readiness after a failed fsync: {body}");
    // Transient traffic still flows.
    let transient = Frame::new(Command::Send).with_header("destination", "/queue/transient").with_body("hi");
    connect(&broker.url()).await.send_frame_with_receipt(transient).await.expect("transient SEND");

    // A restart (on a healthy disk) brings back everything receipted.
    broker.kill9().await;
    let broker = start(&data, None).await;
    let client = connect(&broker.url()).await;
    let mut sub = client
        .subscribe("/queue/failing", SubscribeOptions::new().ack(AckMode::Auto).prefetch(1000))
        .await
        .expect("subscribe");
    let mut seen = HashSet::new();
    let mut unreceipted = 0;
    while let Ok(message) = sub.recv_timeout(Duration::from_millis(1500)).await {
        let text = String::from_utf8(message.body.to_vec()).expect("UTF-8");
        let seq: u64 = text.strip_prefix("message ").and_then(|n| n.parse().ok()).expect("message N");
        if seq >= BEFORE {
            unreceipted += 1;
        }
        seen.insert(seq);
    }
    let missing: Vec<u64> = (0..BEFORE).filter(|seq| !seen.contains(seq)).collect();
    assert!(missing.is_empty(), "receipted messages lost after the failed fsync: {missing:?}");
    println!(
        "all {BEFORE} receipted messages came back; {unreceipted} refused one(s) came back too (at least once, never \
         receipted-but-lost)"
    );
}
