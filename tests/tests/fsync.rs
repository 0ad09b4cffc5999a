//! A RECEIPT for a persistent message follows a real `fdatasync`/`fsync` of the store's log, not
//! only sled's `sync_file_range` (which does not survive power loss or an OS crash). Checked on
//! the real `stampede` binary run under `strace`, with the syscalls' own timestamps; the test
//! skips, saying so, when `strace` is not installed (`tests/run` installs it).
//!
//! Also here: a read-only data directory stops the binary with one clear line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use stampede_client::{Client, ConnectOptions, Headers};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Persistent SENDs, each waiting for its RECEIPT before the next.
const SENDS: usize = 100;
/// How long the broker may take to start (strace slows it down).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

fn strace_available() -> bool {
    std::process::Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// The broker under `strace`. Killing strace would leave the broker running (strace detaches),
/// so the broker's own pid is kept to stop it.
struct Traced {
    strace: tokio::process::Child,
    broker_pid: String,
    stopped: bool,
}

impl Traced {
    /// SIGKILLs the broker; strace then exits, having written the whole trace.
    async fn stop(mut self) {
        let killed = std::process::Command::new("kill").args(["-KILL", &self.broker_pid]).status();
        assert!(killed.is_ok_and(|status| status.success()), "cannot kill broker {}", self.broker_pid);
        self.stopped = true;
        tokio::time::timeout(WAIT, self.strace.wait()).await.expect("strace exits").expect("wait for strace");
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = std::process::Command::new("kill").args(["-KILL", &self.broker_pid]).status();
        }
    }
}

/// Starts the binary under `strace` writing to `trace`; returns it and its STOMP address.
async fn start_traced(data_dir: &Path, trace: &Path) -> (Traced, SocketAddr) {
    // `exec` keeps the shell's pid, printed first, for the broker.
    let mut child = tokio::process::Command::new("strace")
        .args(["-f", "-y", "-ttt", "-T", "-e", "trace=fdatasync,fsync,sync_file_range", "-o"])
        .arg(trace)
        .args(["--", "sh", "-c", "echo $$; exec \"$0\" \"$@\""])
        .arg(stampede_tests::broker_binary())
        .args([
            "--stomp-addr",
            "127.0.0.1:0",
            "--ws-addr",
            "127.0.0.1:0",
            "--http-addr",
            "none",
            "--log-level",
            "info",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run strace");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let broker_pid = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .expect("the shell prints its pid")
        .expect("broker output")
        .expect("a pid line");
    let traced = Traced { strace: child, broker_pid: broker_pid.trim().to_owned(), stopped: false };
    let addr = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("broker output") {
            if let Some(addr) = line.split("STOMP over TCP listening on ").nth(1).and_then(|a| a.trim().parse().ok()) {
                return addr;
            }
        }
        panic!("the broker exited without listening");
    })
    .await
    .expect("the broker reports its STOMP address");
    // Keep reading so that the broker never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (traced, addr)
}

/// The end times (seconds since the epoch) of every successful `fdatasync`/`fsync` of `log`.
fn log_sync_ends(trace: &str, log: &Path) -> Vec<f64> {
    let log = format!("{}>", log.display());
    let mut ends = Vec::new();
    // Calls split by a context switch: "<unfinished ...>", then "<... fdatasync resumed>".
    let mut unfinished: HashMap<&str, ()> = HashMap::new();
    for line in trace.lines() {
        // "<pid> <seconds>.<micros> <call>", the pid padded with spaces to a common width.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else { continue };
        let Some((time, call)) = rest.trim_start().split_once(' ') else { continue };
        let Ok(time) = time.parse::<f64>() else { continue };
        let is_sync = call.starts_with("fdatasync(") || call.starts_with("fsync(");
        if is_sync && call.contains(&log) {
            if call.ends_with("<unfinished ...>") {
                unfinished.insert(pid, ());
            } else if let Some(duration) = succeeded(call) {
                ends.push(time + duration);
            }
        } else if (call.starts_with("<... fdatasync resumed>") || call.starts_with("<... fsync resumed>"))
            && unfinished.remove(pid).is_some()
            && succeeded(call).is_some()
        {
            ends.push(time);
        }
    }
    ends
}

/// The duration of a call that returned 0 (`... = 0 <0.000123>`).
fn succeeded(call: &str) -> Option<f64> {
    let (_, result) = call.rsplit_once(") = ")?;
    let (value, duration) = result.split_once(' ')?;
    (value == "0").then_some(())?;
    duration.trim().trim_start_matches('<').trim_end_matches('>').parse().ok()
}

#[tokio::test]
async fn every_persistent_receipt_follows_a_real_fsync() {
    if !strace_available() {
        println!(
            "SKIPPED every_persistent_receipt_follows_a_real_fsync: strace is not installed (tests/run installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let trace_file = dir.path().join("strace.log");
    let (broker, addr) = start_traced(&data_dir, &trace_file).await;
    let options =
        ConnectOptions::new(&format!("tcp://{addr}")).expect("url").connect_timeout(WAIT).receipt_timeout(WAIT);
    let client = Client::connect_with(options).await.expect("connect");
    let mut persistent = Headers::new();
    persistent.push("persistent", "true");
    let mut windows = Vec::with_capacity(SENDS);
    for i in 0..SENDS {
        let sent = now_seconds();
        client.send_with_receipt("/queue/fsync", format!("message {i}"), persistent.clone()).await.expect("RECEIPT");
        windows.push((sent, now_seconds()));
    }
    drop(client);
    broker.stop().await;

    let trace = std::fs::read_to_string(&trace_file).expect("strace output");
    let ends = log_sync_ends(&trace, &data_dir.canonicalize().expect("data dir").join("db"));
    println!(
        "{} fdatasync/fsync calls on db, {} sync_file_range calls, for {SENDS} receipted persistent SENDs",
        ends.len(),
        trace.lines().filter(|line| line.contains("sync_file_range(")).count()
    );
    assert!(
        ends.len() >= SENDS,
        "{} successful fdatasync/fsync calls on the store's db file for {SENDS} receipted persistent SENDs; trace:\n{}",
        ends.len(),
        trace.lines().filter(|line| line.contains("sync")).take(40).collect::<Vec<_>>().join("\n")
    );
    for (i, (sent, receipted)) in windows.iter().enumerate() {
        assert!(
            ends.iter().any(|end| end >= sent && end <= receipted),
            "RECEIPT {i} (SEND at {sent:.6}, RECEIPT at {receipted:.6}) followed no fdatasync of the db file"
        );
    }
}

/// Makes a directory refuse new files while alive: `chmod 0555`, and for root (who ignores
/// permission bits) `chattr +i`.
struct ReadOnly {
    dir: std::path::PathBuf,
    immutable: bool,
}

impl ReadOnly {
    fn make(dir: &Path) -> Option<ReadOnly> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        let probe = dir.join("probe");
        if std::fs::File::create(&probe).is_err() {
            return Some(ReadOnly { dir: dir.to_path_buf(), immutable: false });
        }
        std::fs::remove_file(&probe).expect("remove probe");
        let chattr = std::process::Command::new("chattr").arg("+i").arg(dir).status();
        if chattr.is_ok_and(|status| status.success()) {
            return Some(ReadOnly { dir: dir.to_path_buf(), immutable: true });
        }
        println!("SKIPPED: running as root and `chattr +i` is not available here, so no read-only directory");
        None
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&self.dir).status();
        }
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755));
    }
}

#[tokio::test]
async fn a_read_only_data_directory_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).expect("data dir");
    let Some(_read_only) = ReadOnly::make(&data_dir) else { return };
    let run = tokio::process::Command::new(stampede_tests::broker_binary())
        .args([
            "--stomp-addr",
            "127.0.0.1:0",
            "--ws-addr",
            "127.0.0.1:0",
            "--http-addr",
            "none",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(&data_dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(START_TIMEOUT, run).await.expect("the broker exits").expect("run the broker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the broker started on a read-only data directory");
    let lines: Vec<_> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(lines[0].contains(&*data_dir.to_string_lossy()) && lines[0].contains("not writable"), "{}", lines[0]);
}
