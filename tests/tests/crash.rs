//! Crash tests against the real `stampede` binary: publish persistent messages with receipts at
//! full speed from several producers, `kill -9` the broker at random moments, restart it on the
//! same data directory, and finally consume everything. Every receipted message must come back
//! at least once and uncorrupted (issue #4: nothing acknowledged is ever lost).
//!
//! The binary is `$STAMPEDE_BIN` when that file exists, else `<target>/debug/stampede`, built
//! here with `cargo build -p stampede-broker --bin stampede` when missing or older than the
//! broker's sources. The random schedule is printed with its seed; set `STAMPEDE_CRASH_SEED`
//! to replay one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use stampede_client::{AckMode, Client, ClientError, Command, ConnectOptions, Frame, SubscribeOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// Producers publishing concurrently, each on its own connection.
const PRODUCERS: u32 = 4;
/// Sends in flight per producer (pipelined: the next SEND does not wait for the last RECEIPT).
const WINDOW: usize = 64;
/// Most messages one producer sends in one round (bounds the test's size).
const MAX_PER_ROUND: u64 = 20_000;
/// How long a broker may take to start (including recovery).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Every other wait.
const WAIT: Duration = Duration::from_secs(10);

/// The crash tests share two cores; running them one at a time keeps their timing meaningful.
/// The crash tests run one at a time: each saturates both cores and kills processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------- the binary

// ---------------------------------------------------------------------- a broker process

/// A broker child process; killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// From spawn to the listener accepting (includes recovery).
    startup: Duration,
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl BrokerProcess {
    async fn start(data_dir: &Path) -> BrokerProcess {
        let began = Instant::now();
        let mut child = tokio::process::Command::new(stampede_tests::broker_binary())
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
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", stampede_tests::broker_binary().display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, mut address) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (reader, stream) in
            [(Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, "out"), (Box::new(stderr), "err")]
        {
            let log = Arc::clone(&log);
            let found = found.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = strip_ansi(&line);
                    if let Some(rest) = line.split("STOMP over TCP listening on ").nth(1)
                        && let Ok(addr) = rest.trim().parse()
                    {
                        let _ = found.send(addr);
                    }
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(format!("[{stream}] {line}"));
                }
            });
        }
        drop(found);
        let addr = match tokio::time::timeout(START_TIMEOUT, address.recv()).await {
            Ok(Some(addr)) => addr,
            outcome => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(WAIT, child.wait()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let log = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                panic!(
                    "broker did not report its STOMP address within {START_TIMEOUT:?} ({}):\n{log}",
                    if outcome.is_err() { "timed out" } else { "it exited" }
                );
            }
        };
        BrokerProcess { child, addr, log, startup: began.elapsed() }
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The broker's "recovered N stored messages in T" line, if it logged one.
    fn recovery_line(&self) -> Option<String> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().find(|l| l.contains("recovered") && l.contains("stored messages in")).map(|l| {
            let at = l.find("recovered").unwrap_or(0);
            l[at..].to_owned()
        })
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log[log.len().saturating_sub(30)..].join("\n")
    }

    /// `kill -9`, and wait for the process to be gone.
    async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        tokio::time::timeout(WAIT, self.child.wait()).await.expect("killed broker exits").expect("wait");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn connect(url: &str, adjust: impl FnOnce(ConnectOptions) -> ConnectOptions) -> Client {
    let options = adjust(ConnectOptions::new(url).expect("url").connect_timeout(WAIT).receipt_timeout(WAIT));
    Client::connect_with(options).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

// -------------------------------------------------------------------------- messages

/// FNV-1a, 64 bits.
fn checksum(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// `producer:seq:payload:checksum`, with a payload whose length and content vary with seq.
fn message_body(producer: u32, seq: u64) -> String {
    let fill = char::from(b'a' + (seq % 26) as u8);
    let payload: String = std::iter::repeat_n(fill, 16 + (seq % 97) as usize).collect();
    let text = format!("{producer}:{seq}:{payload}");
    format!("{text}:{:016x}", checksum(&text))
}

/// Parses and verifies a body; `None` when corrupt.
fn parse_body(body: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (content, sum) = text.rsplit_once(':')?;
    if u64::from_str_radix(sum, 16).ok()? != checksum(content) {
        return None;
    }
    let mut parts = content.splitn(3, ':');
    let producer = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    (message_body(producer, seq) == text).then_some((producer, seq))
}

/// A small deterministic generator for the kill schedule.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let seed = std::env::var("STAMPEDE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
        });
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low + 1))
    }
}

/// Publishes persistent messages `first..` to `destination`, in seq order on the wire, with up
/// to [`WINDOW`] receipts outstanding, until the connection dies (the broker is killed) or
/// [`MAX_PER_ROUND`] are sent. Records every receipted seq; returns the next unused seq.
/// Runs one pipelined persistent producer per entry of `next_seq` against `destination` for a
/// random 0.4-1.2 s, then kills the broker with SIGKILL in the middle of that load. Leaves in
/// `next_seq` where each producer stopped; returns the load time, the broker's recovery log line
/// and its start-up time.
async fn load_then_kill9(
    broker: BrokerProcess,
    destination: &str,
    next_seq: &mut [u64],
    receipted: &Arc<Mutex<HashSet<(u32, u64)>>>,
    rng: &mut XorShift,
) -> (Duration, String, Duration) {
    let mut producers = Vec::new();
    for (p, &first) in (0u32..).zip(next_seq.iter()) {
        let client = connect(&broker.url(), |o| o).await;
        producers.push(tokio::spawn(produce(client, destination.to_owned(), p, first, Arc::clone(receipted))));
    }
    let load = rng.millis(400, 1200);
    tokio::time::sleep(load).await;
    let recovery = broker.recovery_line().unwrap_or_else(|| "nothing to recover".to_owned());
    let startup = broker.startup;
    broker.kill9().await;
    for (seq, producer) in next_seq.iter_mut().zip(producers) {
        *seq =
            tokio::time::timeout(WAIT, producer).await.expect("producer stops after the kill").expect("producer task");
    }
    (load, recovery, startup)
}

async fn produce(
    client: Client,
    destination: String,
    producer: u32,
    first: u64,
    receipted: Arc<Mutex<HashSet<(u32, u64)>>>,
) -> u64 {
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let mut unrouted = client.take_unrouted().expect("RECEIPTs of raw frames");
    let receipts = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            while let Some(frame) = unrouted.recv().await {
                if frame.command != Command::Receipt {
                    continue;
                }
                let seq = frame.header("receipt-id").and_then(|id| id.parse::<u64>().ok()).expect("our receipt id");
                receipted.lock().unwrap().insert((producer, seq));
                window.add_permits(1);
            }
        })
    };
    let mut next = first;
    while next < first + MAX_PER_ROUND {
        tokio::select! {
            permit = window.acquire() => permit.expect("semaphore open").forget(),
            _ = client.closed() => break,
        }
        let frame = Frame::new(Command::Send)
            .with_header("destination", destination.clone())
            .with_header("persistent", "true")
            .with_header("receipt", next.to_string())
            .with_body(message_body(producer, next));
        if client.send_frame(frame).await.is_err() {
            break;
        }
        next += 1;
    }
    // Remaining receipts arrive, or the connection ends (the broker was killed).
    let _ = tokio::time::timeout(WAIT, client.closed()).await;
    tokio::time::timeout(WAIT, receipts).await.expect("receipt reader ends with the connection").expect("reader");
    next
}

/// Deliveries seen, by (producer, seq), plus the corrupt ones.
#[derive(Default)]
struct Seen {
    count: HashMap<(u32, u64), u32>,
    corrupt: Vec<String>,
    out_of_order: u64,
    last: HashMap<u32, u64>,
    /// Second and later deliveries that did not say `redelivered:true`.
    unflagged_redeliveries: u64,
}

impl Seen {
    fn record(&mut self, body: &[u8], redelivered: bool) {
        match parse_body(body) {
            Some((producer, seq)) => {
                let count = self.count.entry((producer, seq)).or_default();
                *count += 1;
                if *count > 1 && !redelivered {
                    self.unflagged_redeliveries += 1;
                }
                if *count == 1 && !redelivered {
                    if let Some(&last) = self.last.get(&producer)
                        && seq < last
                    {
                        self.out_of_order += 1;
                    }
                    self.last.insert(producer, seq);
                }
            }
            None => self.corrupt.push(String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned()),
        }
    }

    fn deliveries(&self) -> u64 {
        self.count.values().map(|&c| u64::from(c)).sum()
    }

    fn duplicates(&self) -> u64 {
        self.count.values().map(|&c| u64::from(c.saturating_sub(1))).sum()
    }
}

/// Starts the broker one last time after the kills, notes its start-up in `rounds`, and returns
/// it with every receipted message (at least one, or the test proved nothing).
async fn final_start(
    dir: &Path,
    rounds: &mut Vec<String>,
    receipted: &Mutex<HashSet<(u32, u64)>>,
) -> (BrokerProcess, HashSet<(u32, u64)>) {
    let broker = BrokerProcess::start(dir).await;
    rounds.push(format!(
        "final start in {:?} ({})",
        broker.startup,
        broker.recovery_line().unwrap_or_else(|| "nothing recovered".to_owned())
    ));
    let receipted = receipted.lock().unwrap().clone();
    assert!(!receipted.is_empty(), "no message was receipted at all:\n{}", broker.log_tail());
    (broker, receipted)
}

/// Receives until nothing arrives for a while (longer while receipted messages are missing),
/// within an overall deadline.
async fn drain(sub: &mut stampede_client::Subscription, seen: &mut Seen, receipted: &HashSet<(u32, u64)>, ack: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = receipted.iter().any(|key| !seen.count.contains_key(key));
        let idle = if missing { Duration::from_secs(3) } else { Duration::from_millis(500) };
        match sub.recv_timeout(idle).await {
            Ok(message) => {
                seen.record(&message.body, message.redelivered);
                if ack {
                    sub.client().ack(&message).await.expect("ACK");
                }
            }
            Err(ClientError::Timeout { .. }) => break,
            Err(e) => panic!("final consumer failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "final consumption did not finish within 30 s ({} deliveries)",
            seen.deliveries()
        );
    }
}

fn report(name: &str, receipted: &HashSet<(u32, u64)>, sent: u64, seen: &Seen, rounds: &[String]) {
    let lost: Vec<_> = receipted.iter().filter(|key| !seen.count.contains_key(key)).copied().collect();
    let unreceipted_kept = seen.count.keys().filter(|key| !receipted.contains(key)).count();
    println!("== {name}");
    for round in rounds {
        println!("   {round}");
    }
    println!(
        "   sent {sent}, receipted {}, delivered {} ({} distinct), duplicates {} ({} without redelivered:true), \
         kept without receipt {unreceipted_kept}, corrupt {}, out of order {}, LOST {}",
        receipted.len(),
        seen.deliveries(),
        seen.count.len(),
        seen.duplicates(),
        seen.unflagged_redeliveries,
        seen.corrupt.len(),
        seen.out_of_order,
        lost.len()
    );
    assert!(seen.corrupt.is_empty(), "{name}: corrupt messages: {:?}", &seen.corrupt[..seen.corrupt.len().min(5)]);
    let mut sample = lost.clone();
    sample.sort_unstable();
    sample.truncate(10);
    assert!(lost.is_empty(), "{name}: {} receipted messages lost, e.g. {sample:?}", lost.len());
}

// ------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_persistent_queue_load_loses_no_receipted_message() {
    let _serial = SERIAL.lock().await;
    const ROUNDS: usize = 3;
    let destination = "/queue/crash";
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = XorShift::seeded();
    println!("seed {} (STAMPEDE_CRASH_SEED to replay)", rng.0);
    let receipted = Arc::new(Mutex::new(HashSet::new()));
    let mut next_seq = vec![0u64; PRODUCERS as usize];
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let (sent_before, receipted_before) = (next_seq.iter().sum::<u64>(), receipted.lock().unwrap().len());
        let broker = BrokerProcess::start(dir.path()).await;
        let (load, recovery, startup) = load_then_kill9(broker, destination, &mut next_seq, &receipted, &mut rng).await;
        let sent = next_seq.iter().sum::<u64>() - sent_before;
        let acked = (receipted.lock().unwrap().len() - receipted_before) as u64;
        rounds.push(format!(
            "round {round}: started in {startup:?} ({recovery}); kill -9 after {load:?} of load: \
             {sent} sent, {acked} receipted, {} unanswered at the kill",
            sent - acked
        ));
    }
    let (broker, receipted) = final_start(dir.path(), &mut rounds, &receipted).await;
    let consumer = connect(&broker.url(), |o| o).await;
    let mut sub = consumer.subscribe(destination, SubscribeOptions::new().prefetch(1000)).await.expect("subscribe");
    let mut seen = Seen::default();
    drain(&mut sub, &mut seen, &receipted, false).await;
    report("persistent queue under kill -9", &receipted, next_seq.iter().sum(), &seen, &rounds);
    assert_eq!(seen.out_of_order, 0, "recovered messages of one producer came back out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_durable_subscription_loses_no_receipted_message() {
    let _serial = SERIAL.lock().await;
    // Rounds alternate: subscriber connected (consuming and acking), then away.
    const ROUNDS: usize = 4;
    const TOPIC: &str = "/topic/crash";
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = XorShift::seeded();
    println!("seed {} (STAMPEDE_CRASH_SEED to replay)", rng.0);
    let options = || {
        SubscribeOptions::new()
            .id("crash-sub")
            .ack(AckMode::ClientIndividual)
            .durable()
            .header("x-queue-name", "crash-durable")
            .prefetch(500)
    };
    let receipted = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut next_seq = [0u64; 2];
    let mut rounds = Vec::new();

    // Create the durable subscription, then leave.
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let subscriber = connect(&broker.url(), |o| o).await;
        let sub = subscriber.subscribe(TOPIC, options()).await.expect("durable SUBSCRIBE");
        drop(sub);
        subscriber.disconnect().await.expect("disconnect");
        broker.kill9().await;
    }
    for round in 0..ROUNDS {
        let (sent_before, receipted_before) = (next_seq.iter().sum::<u64>(), receipted.lock().unwrap().len());
        let connected = round % 2 == 0;
        let broker = BrokerProcess::start(dir.path()).await;
        let consumer = if connected {
            let subscriber = connect(&broker.url(), |o| o).await;
            let mut sub = subscriber.subscribe(TOPIC, options()).await.expect("durable SUBSCRIBE");
            let seen = Arc::clone(&seen);
            Some(tokio::spawn(async move {
                while let Some(message) = sub.recv().await {
                    seen.lock().unwrap().record(&message.body, message.redelivered);
                    if sub.client().ack(&message).await.is_err() {
                        break;
                    }
                }
            }))
        } else {
            None
        };
        // Two producers only: every topic publish also waits for the subscription's queue.
        let (load, recovery, startup) = load_then_kill9(broker, TOPIC, &mut next_seq, &receipted, &mut rng).await;
        if let Some(consumer) = consumer {
            tokio::time::timeout(WAIT, consumer).await.expect("consumer stops after the kill").expect("consumer task");
        }
        let sent = next_seq.iter().sum::<u64>() - sent_before;
        let acked = (receipted.lock().unwrap().len() - receipted_before) as u64;
        rounds.push(format!(
            "round {round} (subscriber {}): started in {startup:?} ({recovery}); kill -9 after {load:?}: \
             {sent} sent, {acked} receipted, {} unanswered at the kill; {} delivered so far",
            if connected { "connected" } else { "away" },
            sent - acked,
            seen.lock().unwrap().deliveries()
        ));
    }
    let (broker, receipted) = final_start(dir.path(), &mut rounds, &receipted).await;
    let subscriber = connect(&broker.url(), |o| o).await;
    let mut sub = subscriber.subscribe(TOPIC, options()).await.expect("durable SUBSCRIBE after the crashes");
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    drain(&mut sub, &mut seen, &receipted, true).await;
    report("durable subscription under kill -9", &receipted, next_seq.iter().sum(), &seen, &rounds);
}
