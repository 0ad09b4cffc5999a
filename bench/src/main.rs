//! `stampede-bench`: a STOMP load generator for any broker (Stampede, RabbitMQ, ActiveMQ), over
//! TCP or WebSocket (subprotocol v12.stomp).
//!
//! Scenarios: `fanout` (1 publisher -> N topic subscribers), `queue` (P producers -> C consumers,
//! optionally persistent with pipelined receipts and client-individual acks), `latency` (paced
//! 1 -> 1) and `connections` (K idle subscribed connections with heart-beats).
//!
//! Each run prints one human line (starting with `# `) and one JSON object on stdout, and can
//! append the JSON to a file (`--json-out`). Bodies carry an 8-byte send timestamp (ns since
//! this process's start), an 8-byte sequence number and a 4-byte producer id, padded to
//! `--size`; they are sent with content-length. Received frames are scanned in place (no
//! allocation per message), reads take up to 64 KiB, sends are pre-encoded and written in
//! batches, and the process's own CPU per message is reported so a reader can tell whether
//! the generator or the broker was the limit.

mod connections;
mod fanout;
mod net;
mod queue;
mod stats;
mod stomp;
mod webhook_sink;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "stampede-bench", version, about = "STOMP load generator (TCP and WebSocket)")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
pub struct Common {
    /// tcp://HOST:PORT or ws://HOST:PORT/PATH
    #[arg(long, global = true, default_value = "tcp://127.0.0.1:61613")]
    pub url: String,
    #[arg(long, global = true)]
    pub login: Option<String>,
    #[arg(long, global = true)]
    pub passcode: Option<String>,
    /// CONNECT `host` header (RabbitMQ takes it as the virtual host).
    #[arg(long, global = true, default_value = "/")]
    pub vhost: String,
    /// Prefix of topic destinations.
    #[arg(long, global = true, default_value = "/topic/")]
    pub topic_prefix: String,
    /// Prefix of queue destinations.
    #[arg(long, global = true, default_value = "/queue/")]
    pub queue_prefix: String,
    /// Destination name; a per-run suffix is added so runs never see each other's messages.
    #[arg(long, global = true, default_value = "bench")]
    pub name: String,
    /// Use --name as it is, without the per-run suffix (for a destination the broker's
    /// configuration names, such as a webhook's or a bridge's source).
    #[arg(long, global = true)]
    pub exact_name: bool,
    /// Seconds measured (after the warm-up).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, global = true, default_value_t = 2.0)]
    pub warmup: f64,
    /// Upper bound on messages sent (in total for fanout/latency, per producer for queue).
    #[arg(long, global = true, default_value_t = 50_000_000)]
    pub messages: u64,
    /// Seconds to wait after sending stops for in-flight messages.
    #[arg(long, global = true, default_value_t = 5.0)]
    pub drain: f64,
    /// Messages per write (pre-encoded batch).
    #[arg(long, global = true, default_value_t = 64)]
    pub batch: usize,
    /// Name of the broker under test, copied into the JSON (`broker`).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Append each JSON result line to this file.
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,
    /// Broker process id: its VmRSS is read before and after (connections scenario; recorded in
    /// others).
    #[arg(long, global = true)]
    pub broker_pid: Option<u32>,
    /// Runtime worker threads of the generator.
    #[arg(long, global = true, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Subcommand)]
enum Scenario {
    /// 1 publisher, N subscribers on one topic.
    Fanout {
        #[arg(long, short = 'n', default_value_t = 10)]
        subscribers: usize,
        /// Body size in bytes (at least 20).
        #[arg(long, short = 's', default_value_t = 128)]
        size: usize,
        /// Publish rate in messages/s (default: as fast as the subscribers keep up, see
        /// --in-flight-bytes).
        #[arg(long)]
        rate: Option<f64>,
        /// Closed loop: at most this many bytes of messages sent but not yet received, per
        /// subscriber (0: open loop, publish as fast as the broker reads).
        #[arg(long, default_value_t = 256 << 10)]
        in_flight_bytes: u64,
        /// Spread the subscribers round-robin over these brokers (comma-separated URLs, e.g.
        /// the nodes of a cluster); the publisher stays on --url [default: all on --url].
        #[arg(long, value_delimiter = ',')]
        subscriber_urls: Vec<String>,
    },
    /// P producers, C consumers on one queue.
    Queue {
        #[arg(long, short = 'p', default_value_t = 1)]
        producers: usize,
        #[arg(long, short = 'c', default_value_t = 1)]
        consumers: usize,
        /// `persistent:true` on every SEND, each with a receipt (pipelined, see --window).
        #[arg(long)]
        persistent: bool,
        /// Ask a receipt for every SEND even when not persistent.
        #[arg(long)]
        receipts: bool,
        /// Outstanding receipts per producer.
        #[arg(long, default_value_t = 1000)]
        window: usize,
        /// auto, client-individual or client
        #[arg(long, default_value = "auto")]
        ack: String,
        /// Prefetch sent as `prefetch-count` (RabbitMQ, Stampede) and
        /// `activemq.prefetchSize` (ActiveMQ). 0: send none.
        #[arg(long, default_value_t = 1000)]
        prefetch: u32,
        #[arg(long, short = 's', default_value_t = 128)]
        size: usize,
        /// Rate per producer in messages/s (default: unpaced).
        #[arg(long)]
        rate: Option<f64>,
        /// Spread the consumers round-robin over these brokers (comma-separated URLs, e.g.
        /// the nodes of a cluster); the producers stay on --url [default: all on --url].
        #[arg(long, value_delimiter = ',')]
        consumer_urls: Vec<String>,
        /// Also consume as a webhook backend: an HTTP server on this address (e.g.
        /// 127.0.0.1:18089) counts what the broker POSTs to it; configure the broker's
        /// `[[webhooks]]` with this URL and the queue's name (see --exact-name).
        #[arg(long)]
        webhook_sink: Option<String>,
    },
    /// Paced 1 -> 1 topic publish for latency.
    Latency {
        /// Messages per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, short = 's', default_value_t = 128)]
        size: usize,
    },
    /// K idle subscribed connections with heart-beats, then one publish to all.
    Connections {
        #[arg(long, short = 'k', default_value_t = 1000)]
        count: usize,
        /// heart-beat header of CONNECT, `cx,cy` in ms.
        #[arg(long, default_value = "10000,10000")]
        heart_beat: String,
        /// Set-ups in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Connections per loopback source address (127.0.0.2, .3, ...).
        #[arg(long, default_value_t = 20000)]
        per_source: usize,
    },
}

impl Common {
    pub fn unique(&self, scenario: &str) -> String {
        if self.exact_name {
            return self.name.clone();
        }
        format!(
            "{}-{}-{}-{}",
            self.name,
            scenario,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or(0)
        )
    }

    pub fn settings(&self, heart_beat: (u32, u32), chunk: usize) -> Result<net::ConnSettings, String> {
        Ok(net::ConnSettings {
            target: net::Target::parse(&self.url)?,
            login: self.login.clone(),
            passcode: self.passcode.clone(),
            vhost: self.vhost.clone(),
            heart_beat,
            chunk,
            bind: None,
        })
    }

    /// Prints the human line and the JSON object; appends the JSON to --json-out.
    pub fn emit(&self, human: String, mut v: Value) {
        let target = net::Target::parse(&self.url).ok();
        if let Value::Object(m) = &mut v {
            m.insert("broker".into(), json!(self.label));
            m.insert("url".into(), json!(self.url));
            m.insert("transport".into(), json!(target.as_ref().map(|t| t.transport()).unwrap_or("?")));
        }
        let line = v.to_string();
        println!("# [{}] {human}", self.label);
        println!("{line}");
        if let Some(path) = &self.json_out {
            match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{line}");
                }
                Err(e) => eprintln!("cannot append to {}: {e}", path.display()),
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    stats::init_clock();
    let (soft, hard) = stats::raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.common.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let c = cli.common.clone();
    let scenario_name = match &cli.scenario {
        Scenario::Fanout { .. } => "fanout",
        Scenario::Queue { .. } => "queue",
        Scenario::Latency { .. } => "latency",
        Scenario::Connections { .. } => "connections",
    };
    let result = runtime.block_on(async move {
        match cli.scenario {
            Scenario::Fanout { subscribers, size, rate, in_flight_bytes, subscriber_urls } => {
                fanout::run(&c, "fanout", subscribers, size, rate, in_flight_bytes, &subscriber_urls).await
            }
            Scenario::Latency { rate, size } => fanout::run(&c, "latency", 1, size, Some(rate), 256 << 10, &[]).await,
            Scenario::Queue {
                producers,
                consumers,
                persistent,
                receipts,
                window,
                ack,
                prefetch,
                size,
                rate,
                consumer_urls,
                webhook_sink,
            } => {
                queue::run(
                    &c,
                    queue::Params {
                        producers,
                        consumers,
                        persistent,
                        receipts: receipts || persistent,
                        window,
                        ack,
                        prefetch,
                        size,
                        rate,
                        consumer_urls,
                        webhook_sink,
                    },
                )
                .await
            }
            Scenario::Connections { count, heart_beat, concurrency, per_source } => {
                connections::run(
                    &c,
                    connections::Params { count, heart_beat, concurrency, per_source, nofile: (soft, hard) },
                )
                .await
            }
        }
    });
    // Do not wait for straggling tasks (e.g. sockets a slow broker keeps open).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    if let Err(e) = result {
        eprintln!("stampede-bench: {e}");
        let failed = json!({"scenario": scenario_name, "error": e});
        cli.common.emit(format!("FAILED: {e}"), failed);
        std::process::exit(1);
    }
}
