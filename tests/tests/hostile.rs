//! Hostile clients against the running `stampede` binary (issue #5).
//!
//! Each test starts the binary ($STAMPEDE_BIN when it exists, else target/debug/stampede, built
//! once if missing) with a fresh temporary data directory and a short connect timeout, attacks
//! it, then checks that a fresh client still gets pub/sub and that the broker's resident memory
//! (VmRSS) comes back near where it started. The figures are printed (`--nocapture` shows them).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use stampede_client::raw::RawConnection;
use stampede_client::{Client, Command, SubscribeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
/// How far above its starting RSS the broker may stay after an attack.
const RSS_SLACK_KIB: u64 = 96 * 1024;

/// The broker process; killed on drop.
struct Broker {
    child: Child,
    stomp: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn start(extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("stampede.toml");
        let mut file = std::fs::File::create(&config).unwrap();
        write!(
            file,
            "stomp_addr = \"127.0.0.1:0\"\nws_addr = \"127.0.0.1:0\"\nhttp_addr = \"none\"\ndata_dir = {:?}\nconnect_timeout_ms = 1000\nmax_connections_per_ip = 10000\nlog_level = \"warn,stampede=info\"\n{extra}\n",
            dir.path().join("data")
        )
        .unwrap();
        let mut child = Process::new(stampede_tests::broker_binary())
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Two malloc arenas: freed memory is then reused instead of spread over one arena
            // per thread, so RSS measures what the broker holds rather than how glibc spreads it.
            .env("MALLOC_ARENA_MAX", "2")
            .spawn()
            .expect("the broker starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("STOMP over TCP listening on ") {
                    let addr = line[at + "STOMP over TCP listening on ".len()..].trim().to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the broker reports its address");
        Broker { child, stomp: addr.parse().expect("an address"), _dir: dir }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.stomp)
    }

    async fn raw(&self) -> RawConnection {
        RawConnection::connect(self.stomp).await.expect("connect")
    }

    /// A fresh client gets pub/sub, and the broker process is alive.
    async fn assert_healthy(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the broker exited");
        let subscriber = Client::connect(&self.url()).await.expect("a fresh client connects");
        let mut subscription = subscriber.subscribe("/topic/health", SubscribeOptions::default()).await.unwrap();
        let publisher = Client::connect(&self.url()).await.expect("a second client connects");
        publisher.send_with_receipt("/topic/health", "ok", Default::default()).await.unwrap();
        let message = subscription.recv_timeout(WAIT).await.expect("the message arrives");
        assert_eq!(&message.body[..], b"ok");
        let _ = publisher.disconnect().await;
        let _ = subscriber.disconnect().await;
    }

    /// Waits up to 10 s for RSS to come back within `RSS_SLACK_KIB` of `baseline`.
    async fn assert_memory_settles(&self, what: &str, baseline: u64, peak: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut now = self.rss_kib();
        while now > baseline + RSS_SLACK_KIB && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            now = self.rss_kib();
        }
        println!("RSS {what}: start {baseline} KiB, peak seen {} KiB, after {now} KiB", peak.max(now));
        assert!(now <= baseline + RSS_SLACK_KIB, "{what}: RSS {now} KiB vs start {baseline} KiB");
    }

    /// Starting RSS after one warm-up round of pub/sub.
    async fn baseline(&mut self) -> u64 {
        self.assert_healthy().await;
        self.rss_kib()
    }
}

/// Sends `bytes` on a fresh connection (after CONNECT when `connect`), returns the ERROR
/// message the broker answered with before closing (write errors are expected: the broker
/// may close while a large input is still being sent).
async fn attack(broker: &Broker, connect: bool, bytes: &[u8]) -> Option<String> {
    let mut raw = broker.raw().await;
    if connect {
        raw.handshake(&[], WAIT).await.expect("CONNECTED");
    }
    let _ = raw.send_bytes(bytes).await;
    let frames = raw.expect_closed(WAIT).await.unwrap_or_default();
    frames.iter().find(|f| f.command == Command::Error).and_then(|f| f.header("message").map(str::to_owned))
}

#[tokio::test]
async fn garbage_bytes_get_an_error_and_the_broker_carries_on() {
    let mut broker = Broker::start("");
    let baseline = broker.baseline().await;
    let mut garbage = vec![0u8; 64 * 1024];
    let mut x: u32 = 0x1234_5678;
    for b in garbage.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    for _ in 0..20 {
        let message = attack(&broker, false, &garbage).await;
        assert!(message.is_some_and(|m| m.contains("malformed")));
    }
    let message = attack(&broker, false, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(message.is_some_and(|m| m.contains("unknown command")));
    broker.assert_healthy().await;
    broker.assert_memory_settles("garbage", baseline, broker.rss_kib()).await;
}

#[tokio::test]
async fn header_line_without_colon_and_invalid_utf8_are_errors() {
    let mut broker = Broker::start("");
    let baseline = broker.baseline().await;
    let message = attack(&broker, true, b"SEND\ndestination:/queue/a\nno colon here\n\nx\0").await;
    assert!(message.is_some_and(|m| m.contains("':'")));
    let message = attack(&broker, true, b"SEND\ndestination:/queue/\xff\xfe\n\nx\0").await;
    assert!(message.is_some_and(|m| m.contains("UTF-8")));
    let message = attack(&broker, false, b"CONN\xc3\x28ECT\n\n\0").await;
    assert!(message.is_some());
    broker.assert_healthy().await;
    broker.assert_memory_settles("bad headers", baseline, broker.rss_kib()).await;
}

#[tokio::test]
async fn a_64_mib_body_is_refused_at_max_body_without_buffering_it() {
    let mut broker = Broker::start("");
    let baseline = broker.baseline().await;
    let mut frame = b"SEND\ndestination:/queue/big\n\n".to_vec();
    frame.resize(frame.len() + 64 * 1024 * 1024, b'x');
    frame.push(0);
    let message = attack(&broker, true, &frame).await;
    assert!(message.as_deref().is_some_and(|m| m.contains("max_body")), "{message:?}");
    // Announced with content-length too.
    let announced = b"SEND\ndestination:/queue/big\ncontent-length:67108864\n\nxxxx";
    let message = attack(&broker, true, announced).await;
    assert!(message.as_deref().is_some_and(|m| m.contains("max_body")), "{message:?}");
    let peak = broker.rss_kib();
    broker.assert_healthy().await;
    broker.assert_memory_settles("64 MiB body", baseline, peak).await;
}

#[tokio::test]
async fn a_1_mib_header_and_10000_headers_are_refused_at_their_limits() {
    let mut broker = Broker::start("");
    let baseline = broker.baseline().await;
    let mut frame = b"SEND\ndestination:/queue/a\nhuge:".to_vec();
    frame.resize(frame.len() + 1024 * 1024, b'h');
    frame.extend_from_slice(b"\n\n\0");
    let message = attack(&broker, true, &frame).await;
    assert!(message.as_deref().is_some_and(|m| m.contains("max_header")), "{message:?}");
    let mut frame = b"SEND\ndestination:/queue/a\n".to_vec();
    for i in 0..10_000 {
        frame.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    frame.extend_from_slice(b"\n\0");
    let message = attack(&broker, true, &frame).await;
    assert!(
        message.as_deref().is_some_and(|m| m.contains("max_headers") || m.contains("max_header_bytes")),
        "{message:?}"
    );
    broker.assert_healthy().await;
    broker.assert_memory_settles("huge headers", baseline, broker.rss_kib()).await;
}

#[tokio::test]
async fn a_client_that_says_nothing_is_cut_at_the_connect_timeout() {
    let mut broker = Broker::start("");
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(broker.stomp).await.unwrap());
    }
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, silent[0].read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open after {:?}", started.elapsed());
    assert!(String::from_utf8_lossy(&buf).contains("connect_timeout_ms"));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    broker.assert_healthy().await;
}

#[tokio::test]
async fn a_byte_per_tick_connect_is_cut_at_the_connect_deadline() {
    let mut broker = Broker::start("");
    let mut stream = TcpStream::connect(broker.stomp).await.unwrap();
    let started = Instant::now();
    let connect = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:slow\npasscode:loris\n\n\0";
    let mut cut = false;
    for byte in connect.iter() {
        // One byte every 100 ms: the sped-up form of one byte per second against a 1 s deadline.
        if stream.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.contains("connect_timeout_ms") && !text.contains("CONNECTED"), "{text}");
                cut = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut, "the slow CONNECT was never cut");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    broker.assert_healthy().await;
}

#[tokio::test]
async fn five_thousand_connections_opened_and_dropped_in_a_loop() {
    let mut broker = Broker::start("max_connections = 20000");
    let baseline = broker.baseline().await;
    let mut peak = baseline;
    let mut settled = Vec::new();
    let addr = broker.stomp;
    for round in 0..5 {
        let started = Instant::now();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..5000 {
            let gate = std::sync::Arc::clone(&gate);
            tasks.spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.ok()?.ok()?;
                if i % 2 == 0 {
                    let _ = stream.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0").await;
                }
                Some(stream)
            });
        }
        let mut open = Vec::new();
        while let Some(result) = tasks.join_next().await {
            if let Ok(Some(stream)) = result {
                open.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        peak = peak.max(broker.rss_kib());
        let count = open.len();
        drop(open);
        assert!(count >= 4900, "only {count} connections opened");
        // Silent ones end at the 1 s connect timeout plus the 0.5 s linger.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let after = broker.rss_kib();
        println!(
            "round {round}: {count} connections open at once in {:?}; RSS {peak} KiB peak, {after} KiB after",
            started.elapsed()
        );
        settled.push(after);
    }
    broker.assert_healthy().await;
    // The broker hands memory freed after a burst back to the OS every 10 s (malloc_trim), so
    // once that has run, RSS must be back near where it started; a leak would stay.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = broker.rss_kib();
    while now > baseline + 32 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = broker.rss_kib();
    }
    println!("RSS after rounds: {settled:?} KiB, {now} KiB once freed memory was returned (start {baseline} KiB)");
    assert!(now < baseline + 32 * 1024, "RSS {now} KiB stays far above the start {baseline} KiB: {settled:?}");
}

#[tokio::test]
async fn a_subscriber_that_never_reads_while_100000_messages_are_published() {
    let mut broker = Broker::start("max_outbox_bytes = 1048576");
    let baseline = broker.baseline().await;
    // The subscriber subscribes and then never reads.
    let mut stuck = TcpStream::connect(broker.stomp).await.unwrap();
    stuck
        .write_all(b"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/firehose\n\n\0")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut publisher = broker.raw().await;
    publisher.handshake(&[], WAIT).await.unwrap();
    let started = Instant::now();
    let mut batch = Vec::new();
    let mut peak = baseline;
    for i in 0..100_000u32 {
        batch.extend_from_slice(b"SEND\ndestination:/topic/firehose\n\n");
        batch
            .extend_from_slice(format!("message {i} with some padding to make it ~100 bytes long ........").as_bytes());
        batch.push(0);
        if batch.len() > 256 * 1024 {
            publisher.send_bytes(&batch).await.expect("the publisher is never cut");
            batch.clear();
            if i % 20_000 < 2_600 {
                peak = peak.max(broker.rss_kib());
            }
        }
    }
    batch.extend_from_slice(b"SEND\ndestination:/topic/firehose\nreceipt:done\n\nlast\0");
    publisher.send_bytes(&batch).await.unwrap();
    let receipt = publisher.read_frame(Duration::from_secs(60)).await.unwrap().expect("RECEIPT");
    assert_eq!(receipt.command, Command::Receipt);
    println!("published 100000 messages in {:?}", started.elapsed());
    peak = peak.max(broker.rss_kib());
    // The stuck subscriber was cut with an ERROR naming the limit (at the end of what it got).
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, stuck.read_to_end(&mut all)).await;
    assert!(String::from_utf8_lossy(&all).contains("max_outbox_bytes"), "got {} bytes", all.len());
    broker.assert_healthy().await;
    broker.assert_memory_settles("100000 messages to a stuck subscriber", baseline, peak).await;
}

#[test]
fn stampede_passwd_prints_an_argon2_hash_of_the_password_on_stdin() {
    let mut child = Process::new(stampede_tests::broker_binary())
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));
}

#[test]
fn the_binary_refuses_a_non_loopback_listener_without_users_or_allow_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let output = Process::new(stampede_tests::broker_binary())
        .args(["--stomp-addr", "0.0.0.0:0", "--ws-addr", "127.0.0.1:0", "--http-addr", "none", "--data-dir"])
        .arg(dir.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("allow-anonymous"), "{text}");
}
