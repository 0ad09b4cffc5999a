//! Configuration: built-in defaults, then a TOML file, then environment variables and flags.
//!
//! Every key of the TOML file has the same name as its flag (with `_` for `-`), and every key
//! (but the `[queues]`, `[users]` and `[jwt]` tables) can also come from a `STAMPEDE_<KEY>`
//! environment variable, so the same settings work in a systemd unit, a container and a shell;
//! a `STAMPEDE_*` variable that names no key is warned about rather than silently ignored. Every limit has a default here and is named in the
//! ERROR a client gets when it hits it.

pub mod values;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;
use stampede_protocol::Limits;
use stampede_protocol::heartbeat::HeartBeat;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::connection::ConnectionSettings;
use crate::destination::outbox::SlowConsumerPolicy;
use crate::destination::queue::{ExpiredPolicy, OverflowPolicy, QueueSettings};
use crate::destination::router::{NameLimits, QueueOverride};
use crate::session::SessionConfig;
use stampede_storage::{FsyncMode, StoreOptions};

/// What `print-config` shows instead of a secret.
const REDACTED: &str = "<redacted>";

/// The configuration key that sets a decoder limit, for ERROR messages, so the reader knows
/// what to raise.
pub fn limit_key(kind: stampede_protocol::LimitKind) -> &'static str {
    use stampede_protocol::LimitKind;
    match kind {
        LimitKind::HeaderLine => "max_header_line",
        LimitKind::HeaderCount => "max_headers",
        LimitKind::HeaderBytes => "max_header_bytes",
        LimitKind::Body => "max_body",
    }
}

/// The broker's settings. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address for STOMP over TCP.
    #[serde(with = "crate::config::values::serde_with::address")]
    pub stomp_addr: SocketAddr,
    /// Address for STOMP over WebSocket.
    #[serde(with = "crate::config::values::serde_with::address")]
    pub ws_addr: SocketAddr,
    /// HTTP path of the WebSocket endpoint; a plain request on it gets 426 naming the STOMP
    /// URL, other paths get 404.
    pub ws_path: String,
    /// Where durable data lives.
    pub data_dir: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter).
    pub log_level: String,
    /// `human` (one line of text per event) or `json` (one JSON object per line).
    pub log_format: LogFormat,

    /// Heart-beat interval the server offers to send, in ms (CONNECTED's first number).
    pub heartbeat_send_ms: u32,
    /// Heart-beat interval the server asks clients for, in ms (CONNECTED's second number).
    pub heartbeat_receive_ms: u32,
    /// Silence tolerated before a connection is closed, as a multiple of the agreed client
    /// interval. Background browser tabs send late, so keep this at 2 or more.
    pub heartbeat_grace: f64,
    /// WebSocket ping after this much outbound silence, in ms; 0 disables.
    pub ws_ping_interval_ms: u64,
    /// Time allowed from socket open (and WebSocket handshake) to CONNECT, in ms.
    pub connect_timeout_ms: u64,
    /// Longest one socket write may take, in ms.
    pub write_timeout_ms: u64,
    /// On SIGTERM, the connections are closed (ERROR `server shutting down`, WebSocket close
    /// 1012) spread over this many ms, so a rolling restart does not make every client
    /// reconnect at the same instant; 0 closes them all at once.
    pub shutdown_drain_ms: u64,
    /// Longest a shutdown takes in all, in ms: the drain, then waiting for connections and
    /// queues, then the store flush.
    pub shutdown_timeout_ms: u64,

    /// Longest header line, in bytes.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub max_header_line: usize,
    /// Most headers per frame.
    pub max_headers: usize,
    /// Most bytes of command plus headers per frame.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub max_header_bytes: usize,
    /// Largest body, in bytes.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub max_body: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Bytes of topic messages queued for one connection before the slow-consumer policy
    /// applies.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub max_outbox_bytes: usize,
    /// `disconnect` (ERROR and close) or `drop-oldest` (drop and count).
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// How long a session whose connection broke waits to be resumed with its
    /// `session-resume-token`; 0 disables resumption.
    pub session_resume_grace_ms: u64,
    /// Bytes of topic messages a detached session keeps for its client; beyond them messages
    /// are dropped and counted (`x-resume-gap`).
    #[serde(with = "crate::config::values::serde_with::size")]
    pub session_resume_buffer_bytes: usize,
    /// Most sessions detached (waiting to be resumed) at once; beyond it a broken connection's
    /// session ends at once.
    pub session_resume_max_detached: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    /// Most unacknowledged messages per consumer (caps any prefetch asked for).
    pub max_unacked_per_consumer: u32,
    /// Unacknowledged bytes per consumer.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub consumer_window_bytes: usize,
    /// Prefetch of `ack:auto` subscriptions that ask for none.
    pub default_prefetch_auto: u32,
    /// Prefetch of `client`/`client-individual` subscriptions that ask for none.
    pub default_prefetch_client: u32,
    /// Most frames buffered in one transaction.
    pub max_transaction_frames: usize,
    /// Most body bytes buffered in one transaction.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub max_transaction_bytes: usize,
    /// Most open transactions of one connection; one more BEGIN gets an ERROR.
    pub max_transactions_per_connection: usize,
    /// Most body bytes buffered by all of one connection's open transactions together.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub max_transaction_bytes_per_connection: usize,
    /// Most queues per virtual host (dead-letter queues included; temporary queues are bounded
    /// per connection instead); a SEND or SUBSCRIBE that would create one more gets an ERROR.
    pub max_queues: usize,
    /// Most queues one user may create per virtual host, so one user cannot use up
    /// `max_queues` for everyone.
    pub max_queues_per_user: usize,
    /// Most durable topic subscriptions per virtual host.
    pub max_durable_subscriptions: usize,
    /// Most durable topic subscriptions one user may create per virtual host.
    pub max_durable_subscriptions_per_user: usize,
    /// Virtual hosts, each a separate namespace of queues, topics and durable subscriptions.
    /// A CONNECT `host` that names one of these (or a `[users.<name>.vhosts.<vhost>]` table)
    /// selects it; any other `host` (clients often send the server's host name) means `/`.
    pub vhosts: Vec<String>,
    /// Deliveries after which a message goes to the dead-letter queue; 0 = never.
    pub max_deliveries: u32,
    /// The furthest ahead, in ms, a delayed SEND (`x-delay`, `x-deliver-at`, …) may be due, and
    /// the longest redelivery delay a SUBSCRIBE may ask for; beyond it, an ERROR.
    pub max_delay_ms: u64,
    /// Most delayed topic messages one virtual host holds (in memory) until they are due.
    pub max_delayed_topic_messages: usize,
    /// Dead-letter queue name prefix: messages of `/queue/x` go to `/queue/<prefix>x`.
    pub dead_letter_prefix: String,
    /// Largest WebSocket message, in bytes (bounds reassembly inside tungstenite) [default:
    /// the largest frame accepted, `max_body` + `max_header_bytes` + 64, from their effective
    /// values].
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::config::values::serde_with::optional_size")]
    pub ws_max_message_size: Option<usize>,

    /// When a persistent message counts as stored: `always` (fsync before the RECEIPT; each
    /// fsync covers everything that queued meanwhile), `batch` (wait up to
    /// `commit_interval_ms` to gather more per fsync), `never` (no fsync: fastest, but a crash
    /// may lose receipted messages).
    #[serde(with = "fsync_mode")]
    pub fsync: FsyncMode,
    /// Longest wait for more writes before an fsync in `batch` mode, in ms.
    pub commit_interval_ms: u64,
    /// Most operations per group commit.
    pub commit_max_batch: usize,
    /// Most messages waiting in one queue.
    pub queue_max_length: usize,
    /// Most bytes waiting in one queue.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub queue_max_bytes: usize,
    /// Waiting messages in a queue with consumers at which each transient publish waits (20 ms
    /// at most) for the consumers to catch up; at most half of `queue_max_length` applies; 0 =
    /// never.
    pub queue_flow_backlog: usize,
    /// `reject` (publisher gets an ERROR) or `drop-oldest`.
    pub queue_overflow: OverflowPolicy,
    /// Time to live of messages that set none, in ms; 0 = forever.
    pub queue_default_ttl_ms: u64,
    /// A queue empty with no consumers for this long, in ms, is deleted (RabbitMQ's
    /// `x-expires`); 0 = never. Per queue: `[queues.<name>] idle_expiry_ms`, or `x-expires` on
    /// SUBSCRIBE.
    pub queue_idle_expiry_ms: u64,
    /// `drop` or `dead-letter` expired messages.
    pub expired_messages: ExpiredPolicy,
    /// Per-queue settings, `[queues.<name>]` tables (name without `/queue/`).
    pub queues: HashMap<String, QueueOverride>,
    /// Retained history of topics, `[topics."<name or pattern>"]` tables (name without
    /// `/topic/`); see the `retention` module.
    pub topics: BTreeMap<String, crate::destination::retention::TopicRetention>,
    /// Bytes of retained topic history kept in memory, every topic of every virtual host together.
    #[serde(with = "crate::config::values::serde_with::size")]
    pub retained_max_bytes: usize,
    /// `sled` (on disk under `data_dir`) or `memory` (nothing survives a restart; for tests
    /// and throwaway brokers).
    pub storage: StorageKind,
    /// Free space the data directory's file system must keep for persistent messages to be
    /// accepted: `auto` (the larger of 256 MiB and 2% of the file system), a size, or a
    /// percentage of the file system (`5%`); 0 turns the disk alarm off.
    #[serde(with = "crate::disk::free_limit_serde")]
    pub disk_free_limit: stampede_storage::FreeSpaceLimit,
    /// Under the disk alarm, `refuse` persistent messages at once or `block` them up to
    /// `disk_full_block_ms` first.
    pub disk_full_policy: crate::disk::DiskFullPolicy,
    /// With `disk_full_policy = "block"`, how long a persistent SEND is held, in ms.
    pub disk_full_block_ms: u64,

    /// Most simultaneous connections from one source address (IPv6: one /64); 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Apply `max_connections_per_ip` to loopback clients too. Off by default: behind a reverse
    /// proxy on the same host every client arrives from 127.0.0.1.
    #[serde(with = "crate::config::values::serde_with::boolean")]
    pub max_connections_per_ip_loopback: bool,
    /// With no `users` and no `[jwt]`, every client is accepted; that is only allowed on
    /// loopback listeners unless this is true.
    #[serde(with = "crate::config::values::serde_with::boolean")]
    pub allow_anonymous: bool,
    /// Users, `[users.<name>]` tables with `password_hash` (from `stampede passwd`) and
    /// optional `read`/`write` destination patterns and `[users.<name>.vhosts.<vhost>]` tables.
    pub users: BTreeMap<String, UserConfig>,
    /// JSON Web Tokens accepted as the passcode, `[jwt]` table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Delay before answering the first failed login from an address, in ms; it doubles with
    /// each further failure (forgotten 10 minutes after the last one).
    pub auth_failure_delay_ms: u64,
    /// Longest delay before answering a failed login, in ms.
    pub auth_failure_max_delay_ms: u64,
    /// Most addresses whose failed logins are remembered (bounds the table's memory).
    pub auth_failure_tracked_addresses: usize,
    /// PEM certificate chain for TLS; with `tls_key`, enables STOMP over TLS and wss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Address for STOMP over TLS [default when TLS is on: the STOMP address's IP, port 61614].
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::config::values::serde_with::optional_address")]
    pub stomp_tls_addr: Option<SocketAddr>,
    /// Address for STOMP over secure WebSocket [default when TLS is on: the WebSocket
    /// address's IP, port 15673].
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::config::values::serde_with::optional_address")]
    pub wss_addr: Option<SocketAddr>,
    /// Serve only over TLS: the plain STOMP and WebSocket listeners are not opened.
    #[serde(with = "crate::config::values::serde_with::boolean")]
    pub require_tls: bool,
    /// Browser origins allowed to open a WebSocket (`Origin` header, e.g.
    /// `https://app.example`); empty = every origin. Requests without an `Origin` header
    /// (non-browser clients) are always allowed.
    pub ws_allowed_origins: Vec<String>,

    /// Address of the management HTTP listener (API, `/metrics`, `/healthz`, `/readyz`), or
    /// `none` to keep it closed.
    #[serde(with = "optional_addr")]
    pub http_addr: Option<SocketAddr>,
    /// Address of the management HTTPS listener, opened when TLS is on [default: the HTTP
    /// address's IP, port 15671; none when `http_addr` is `none`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_addr: Option<SocketAddr>,
    /// `/metrics`, `/healthz` and `/readyz` answer without credentials (the API still needs an
    /// admin).
    pub metrics_public: bool,
    /// `/metrics` also carries one series per queue and per topic (labels `vhost`, `queue` or
    /// `topic`); off by default because thousands of destinations make thousands of series.
    pub metrics_per_destination: bool,

    /// Webhooks, `[[webhooks]]` tables: a queue or topic pattern POSTed to an HTTP backend.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::bridge::WebhookConfig>,
    /// STOMP bridges to other brokers, `[[bridges]]` tables.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<crate::bridge::BridgeConfig>,
    /// Cluster mode, `[cluster]` table: several nodes share topics through NATS. Without it
    /// the broker is a single node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,

    /// Serve the browser demo at `/demo/` on the WebSocket listener and run its backend
    /// (ticker, job worker, chat history); needs a broker without users.
    #[serde(with = "crate::config::values::serde_with::boolean")]
    pub demo: bool,
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// A line of text per event, coloured on a terminal.
    #[default]
    Human,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, the other fields,
    /// and the spans the event happened in), for log collectors.
    Json,
}

/// One user of the `users` table.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// argon2 hash in PHC format (`$argon2id$v=19$...`), as printed by `stampede passwd`.
    pub password_hash: String,
    /// Destination patterns the user may subscribe to [default: everything, `**`].
    #[serde(default = "everything")]
    pub read: Vec<String>,
    /// Destination patterns the user may send to [default: everything, `**`].
    #[serde(default = "everything")]
    pub write: Vec<String>,
    /// Per-virtual-host rules; when present, the user may use only these virtual hosts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vhosts: BTreeMap<String, RuleConfig>,
    /// May use the management API and dashboard.
    #[serde(default)]
    pub admin: bool,
}

/// Read and write patterns for one virtual host of a user.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Destination patterns the user may subscribe to [default: everything].
    #[serde(default = "everything")]
    pub read: Vec<String>,
    /// Destination patterns the user may send to [default: everything].
    #[serde(default = "everything")]
    pub write: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["**".to_owned()]
}

/// The `[jwt]` table: keys for tokens given as the CONNECT passcode.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<String>,
    /// PEM file with the RSA public key for RS256 tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rs256_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew tolerated when checking `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Where durable data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageKind {
    /// On disk, in sled.
    #[default]
    Sled,
    /// In memory.
    Memory,
}

/// An address that may be `none` (a listener kept closed).
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => serializer.collect_str(addr),
            None => serializer.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::OptionalAddr::parse(&text).map(|addr| addr.0).map_err(serde::de::Error::custom)
    }
}

/// A listener address given as `IP:PORT`, or `none` for a listener kept closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl OptionalAddr {
    /// Parses `none` or `IP:PORT`.
    ///
    /// # Errors
    /// When the text is neither.
    pub fn parse(text: &str) -> Result<OptionalAddr, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(OptionalAddr(None));
        }
        text.trim()
            .parse()
            .map(|addr| OptionalAddr(Some(addr)))
            .map_err(|e| format!("{text:?} is not an address (IP:PORT) or `none`: {e}"))
    }
}

mod fsync_mode {
    use serde::{Deserialize, Deserializer, Serializer};
    use stampede_storage::FsyncMode;

    pub fn serialize<S: Serializer>(mode: &FsyncMode, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(mode.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<FsyncMode, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Config {
            stomp_addr: SocketAddr::from(([127, 0, 0, 1], 61613)),
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 15674)),
            ws_path: "/ws".to_owned(),
            data_dir: PathBuf::from("./data"),
            log_level: "info".to_owned(),
            log_format: LogFormat::Human,
            heartbeat_send_ms: 1000,
            heartbeat_receive_ms: 1000,
            heartbeat_grace: 3.0,
            ws_ping_interval_ms: 30_000,
            connect_timeout_ms: 10_000,
            shutdown_drain_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            max_header_line: limits.max_header_line,
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes,
            max_body: limits.max_body,
            max_connections: 100_000,
            max_outbox_bytes: 8 * 1024 * 1024,
            slow_consumer_policy: SlowConsumerPolicy::Disconnect,
            session_resume_grace_ms: 30_000,
            session_resume_buffer_bytes: 256 * 1024,
            session_resume_max_detached: 1000,
            max_subscriptions_per_connection: 1000,
            max_unacked_per_consumer: 10_000,
            consumer_window_bytes: 8 * 1024 * 1024,
            default_prefetch_auto: 1000,
            default_prefetch_client: 100,
            max_transaction_frames: 10_000,
            max_transaction_bytes: 64 * 1024 * 1024,
            max_transactions_per_connection: 64,
            max_transaction_bytes_per_connection: 64 * 1024 * 1024,
            max_queues: 10_000,
            max_queues_per_user: 1000,
            max_durable_subscriptions: 10_000,
            max_durable_subscriptions_per_user: 100,
            vhosts: Vec::new(),
            max_deliveries: 10,
            max_delay_ms: crate::destination::delay::DEFAULT_MAX_DELAY_MS,
            max_delayed_topic_messages: crate::destination::delay::DEFAULT_MAX_DELAYED_TOPIC_MESSAGES,
            dead_letter_prefix: "DLQ.".to_owned(),
            ws_max_message_size: None,
            fsync: FsyncMode::Always,
            commit_interval_ms: 2,
            commit_max_batch: 4096,
            queue_max_length: 1_000_000,
            queue_max_bytes: 1024 * 1024 * 1024,
            queue_flow_backlog: 8192,
            queue_overflow: OverflowPolicy::Reject,
            queue_default_ttl_ms: 0,
            queue_idle_expiry_ms: 0,
            expired_messages: ExpiredPolicy::Drop,
            queues: HashMap::new(),
            topics: BTreeMap::new(),
            retained_max_bytes: crate::destination::retention::DEFAULT_RETAINED_MAX_BYTES,
            storage: StorageKind::Sled,
            disk_free_limit: stampede_storage::FreeSpaceLimit::Auto,
            disk_full_policy: crate::disk::DiskFullPolicy::Refuse,
            disk_full_block_ms: 5000,
            max_connections_per_ip: 1000,
            max_connections_per_ip_loopback: false,
            allow_anonymous: false,
            users: BTreeMap::new(),
            jwt: None,
            auth_failure_delay_ms: 250,
            auth_failure_max_delay_ms: 5000,
            auth_failure_tracked_addresses: 10_000,
            tls_cert: None,
            tls_key: None,
            stomp_tls_addr: None,
            wss_addr: None,
            require_tls: false,
            ws_allowed_origins: Vec::new(),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 15672))),
            https_addr: None,
            metrics_public: false,
            metrics_per_destination: false,
            webhooks: Vec::new(),
            bridges: Vec::new(),
            cluster: None,
            demo: false,
        }
    }
}

/// Reading the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// A `STAMPEDE_*` environment variable has a value its key does not accept.
    #[error("invalid environment variable {variable}={value:?}: {reason}")]
    Environment {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The file is not valid TOML for these keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
}

impl Config {
    /// Reads a TOML file over the defaults.
    ///
    /// # Errors
    /// When the file cannot be read or has unknown keys or wrong types.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// A configuration for tests: every listener on loopback port 0, storage in memory.
    pub fn ephemeral() -> Config {
        Config {
            stomp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            storage: StorageKind::Memory,
            ..Config::default()
        }
    }

    /// True when a certificate and key are configured.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// Where STOMP over TLS and wss listen when TLS is on: the configured addresses, or the
    /// plain listeners' IPs with ports 61614 and 15673 (port 0 stays 0, for tests).
    pub fn tls_addrs(&self) -> (SocketAddr, SocketAddr) {
        let derive =
            |plain: SocketAddr, port: u16| SocketAddr::new(plain.ip(), if plain.port() == 0 { 0 } else { port });
        (
            self.stomp_tls_addr.unwrap_or_else(|| derive(self.stomp_addr, 61614)),
            self.wss_addr.unwrap_or_else(|| derive(self.ws_addr, 15673)),
        )
    }

    /// Where the management HTTPS listener listens when TLS is on: `https_addr`, or the HTTP
    /// listener's IP with port 15671 (port 0 stays 0). `None` when TLS is off or neither
    /// address is set.
    pub fn effective_https_addr(&self) -> Option<SocketAddr> {
        if !self.tls_enabled() {
            return None;
        }
        self.https_addr
            .or_else(|| self.http_addr.map(|http| SocketAddr::new(http.ip(), if http.port() == 0 { 0 } else { 15671 })))
    }

    /// The addresses the broker will listen on, the management listeners included.
    pub fn listen_ips(&self) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        if !(self.require_tls && self.tls_enabled()) {
            ips.push(self.stomp_addr.ip());
            ips.push(self.ws_addr.ip());
        }
        if self.tls_enabled() {
            let (stomp, wss) = self.tls_addrs();
            ips.push(stomp.ip());
            ips.push(wss.ip());
        }
        ips.extend(self.http_addr.iter().chain(self.effective_https_addr().iter()).map(SocketAddr::ip));
        ips
    }

    /// Checks settings that depend on each other.
    ///
    /// # Errors
    /// An explanation of the first inconsistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log_filter()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid("tls_cert and tls_key must be given together".to_owned()));
        }
        if self.shutdown_drain_ms >= self.shutdown_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "shutdown_drain_ms ({}) must be below shutdown_timeout_ms ({}): the drain is part of the shutdown, which also waits for connections and flushes the store",
                self.shutdown_drain_ms, self.shutdown_timeout_ms
            )));
        }
        if self.require_tls && !self.tls_enabled() {
            return Err(ConfigError::Invalid("require_tls needs tls_cert and tls_key".to_owned()));
        }
        crate::bridge::validate(&self.webhooks, &self.bridges).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(ConfigError::Invalid)?;
        }
        crate::destination::retention::RetentionConfig::validate(&self.topics)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.cluster.is_some() && !self.topics.is_empty() {
            return Err(ConfigError::Invalid(
                "[topics] retention is single-node only for now: remove the [topics] tables or [cluster]".to_owned(),
            ));
        }
        if self.users.is_empty()
            && self.jwt.is_none()
            && !self.allow_anonymous
            && self.listen_ips().iter().any(|ip| !ip.is_loopback())
        {
            return Err(ConfigError::Invalid(
                "no users are configured, so every client would be accepted without credentials, and a listener is not on loopback. Add users (see `stampede passwd`) or a [jwt] key, listen on 127.0.0.1, or pass --allow-anonymous (allow_anonymous = true) to accept anonymous clients from the network".to_owned(),
            ));
        }
        Ok(())
    }

    /// `log_level` as a tracing filter (`warning` read as `warn`, and so on).
    ///
    /// # Errors
    /// When it is neither a level nor `target=level` filters.
    pub fn log_filter(&self) -> Result<String, ConfigError> {
        values::parse_log_filter(&self.log_level).map_err(|reason| ConfigError::Invalid(format!("log_level: {reason}")))
    }

    /// Decoder limits.
    pub fn frame_limits(&self) -> Limits {
        Limits {
            max_header_line: self.max_header_line,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            max_body: self.max_body,
        }
    }

    pub(crate) fn connection_settings(&self) -> ConnectionSettings {
        ConnectionSettings {
            frame_limits: self.frame_limits(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            heartbeat_grace: self.heartbeat_grace.max(1.0),
            max_outbox_bytes: self.max_outbox_bytes,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            ws_ping_interval: (self.ws_ping_interval_ms > 0).then(|| Duration::from_millis(self.ws_ping_interval_ms)),
            ..ConnectionSettings::default()
        }
    }

    /// Session settings (the authenticator is the open one; [`crate::start`] installs the real one).
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            heart_beat: HeartBeat { send_ms: self.heartbeat_send_ms, receive_ms: self.heartbeat_receive_ms },
            default_prefetch_auto: self.default_prefetch_auto,
            default_prefetch_client: self.default_prefetch_client,
            max_unacked_per_consumer: self.max_unacked_per_consumer,
            consumer_window_bytes: self.consumer_window_bytes,
            max_subscriptions: self.max_subscriptions_per_connection,
            max_transaction_frames: self.max_transaction_frames,
            max_transaction_bytes: self.max_transaction_bytes,
            max_transactions: self.max_transactions_per_connection,
            max_transaction_bytes_per_connection: self.max_transaction_bytes_per_connection,
            slow_consumer_policy: self.slow_consumer_policy,
            disk_full_policy: self.disk_full_policy,
            disk_full_block: Duration::from_millis(self.disk_full_block_ms),
            max_delay_ms: self.max_delay_ms,
            max_delayed_topic_messages: self.max_delayed_topic_messages,
            resume: crate::session::ResumeRegistry::new(self.resume_settings()),
            ..SessionConfig::default()
        }
    }

    /// The limits of session resumption.
    pub fn resume_settings(&self) -> crate::session::ResumeSettings {
        crate::session::ResumeSettings {
            grace: Duration::from_millis(self.session_resume_grace_ms),
            buffer_bytes: self.session_resume_buffer_bytes,
            max_detached: self.session_resume_max_detached,
        }
    }

    /// The limits on names clients can create, per virtual host.
    pub fn name_limits(&self) -> NameLimits {
        NameLimits {
            max_queues: self.max_queues,
            max_queues_per_user: self.max_queues_per_user,
            max_durable_subscriptions: self.max_durable_subscriptions,
            max_durable_subscriptions_per_user: self.max_durable_subscriptions_per_user,
        }
    }

    /// Every virtual host that is its own namespace: `/`, the `vhosts` list, and every virtual
    /// host a user's rules name.
    pub fn declared_vhosts(&self) -> std::collections::BTreeSet<String> {
        let mut declared: std::collections::BTreeSet<String> = self.vhosts.iter().cloned().collect();
        declared.insert(crate::destination::vhost::DEFAULT_VHOST.to_owned());
        for user in self.users.values() {
            declared.extend(user.vhosts.keys().cloned());
        }
        declared
    }

    /// Default queue settings.
    pub fn queue_settings(&self) -> QueueSettings {
        QueueSettings {
            max_deliveries: self.max_deliveries,
            dead_letter_prefix: self.dead_letter_prefix.clone(),
            max_length: self.queue_max_length,
            max_bytes: self.queue_max_bytes,
            max_length_key: "queue_max_length".to_owned(),
            max_bytes_key: "queue_max_bytes".to_owned(),
            flow_backlog: self.queue_flow_backlog,
            overflow: self.queue_overflow,
            default_ttl_ms: self.queue_default_ttl_ms,
            expired: self.expired_messages,
            durable: true,
            idle_expiry_ms: self.queue_idle_expiry_ms,
            metrics: Arc::default(),
        }
    }

    /// The `[topics]` retention settings and the byte budget all virtual hosts share.
    pub fn retention_config(&self) -> crate::destination::retention::RetentionConfig {
        crate::destination::retention::RetentionConfig::new(&self.topics, self.retained_max_bytes)
    }

    /// Storage options.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            fsync: self.fsync,
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            max_batch: self.commit_max_batch,
            disk_free_limit: self.disk_free_limit,
            ..StoreOptions::default()
        }
    }

    /// tungstenite's buffers, sized deliberately: its defaults (128 KiB read and write buffers,
    /// an unbounded write buffer, 64 MiB messages) would cost far more per idle browser than
    /// the rest of a connection. Reads allocate 4 KiB at a time; writes gather up to 64 KiB of
    /// frames (everything a loop turn produced is fed, then flushed once: one syscall), the
    /// write buffer is bounded by the outbox budget, and a message may be as large as the
    /// largest frame we accept.
    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(64 * 1024)
            .max_write_buffer_size(self.max_outbox_bytes.max(1024 * 1024) * 2)
            .max_message_size(Some(self.effective_ws_max_message_size()))
            .max_frame_size(Some(self.effective_ws_max_message_size()))
    }

    /// `ws_max_message_size` if set, else the largest frame the decoder accepts with the
    /// configured `max_body` and `max_header_bytes` (plus room for the command line and the NUL),
    /// so lowering `max_body` also lowers what one WebSocket message may buffer.
    pub fn effective_ws_max_message_size(&self) -> usize {
        self.ws_max_message_size
            .unwrap_or_else(|| self.max_body.saturating_add(self.max_header_bytes).saturating_add(64))
    }

    /// The configuration as `print-config` shows it: every `password_hash` and the
    /// `hs256_secret` replaced by `<redacted>` (a hash lets anyone who reads it guess passwords
    /// offline; the secret lets them mint tokens), and derived values filled in.
    pub fn for_display(&self) -> Config {
        let mut shown = self.clone();
        for user in shown.users.values_mut() {
            user.password_hash = REDACTED.to_owned();
        }
        if let Some(secret) = shown.jwt.as_mut().and_then(|jwt| jwt.hs256_secret.as_mut()) {
            *secret = REDACTED.to_owned();
        }
        for webhook in &mut shown.webhooks {
            if let Some(secret) = webhook.secret.as_mut() {
                *secret = REDACTED.to_owned();
            }
        }
        for bridge in &mut shown.bridges {
            if let Some(passcode) = bridge.passcode.as_mut() {
                *passcode = REDACTED.to_owned();
            }
        }
        if let Some(cluster) = shown.cluster.as_mut() {
            for secret in [&mut cluster.password, &mut cluster.token].into_iter().flatten() {
                *secret = REDACTED.to_owned();
            }
        }
        shown.ws_max_message_size = Some(self.effective_ws_max_message_size());
        shown
    }
}

/// The prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "STAMPEDE_";
/// The one `STAMPEDE_*` variable that is not a configuration key: the file to read.
const CONFIG_VARIABLE: &str = "STAMPEDE_CONFIG";
/// Keys holding tables of named entries; they can only be set in the file.
const TABLE_KEYS: [&str; 7] = ["queues", "topics", "users", "jwt", "webhooks", "bridges", "cluster"];
/// Tables whose keys each have a variable of their own, `STAMPEDE_<TABLE>__<KEY>`.
const NESTED_TABLES: [&str; 1] = ["cluster"];

const ENV_HELP: &str = "Every configuration key can also be set with an environment variable named STAMPEDE_ and the key in capitals (STAMPEDE_QUEUE_MAX_LENGTH=5); `stampede print-config --env` lists them with their effective values. Only the [queues.<name>], [topics.<name>], [users.<name>], [jwt], [[webhooks]] and [[bridges]] tables need the file; the keys of [cluster] have variables with two underscores (STAMPEDE_CLUSTER__NATS_URLS=nats://127.0.0.1:4222). Sizes may have units (max_body = \"4 MiB\"), booleans may be true/false, yes/no, on/off or 1/0, and addresses may be IP:PORT, [IPv6]:PORT or localhost:PORT.";

/// Command line of the `stampede` binary. The flags are global: they may come before or after
/// a subcommand (`stampede print-config --config FILE`).
#[derive(Debug, Parser)]
#[command(
    name = "stampede",
    version,
    about = "A STOMP 1.0/1.1/1.2 message broker for browsers (WebSocket) and backends (TCP).",
    long_about = "A STOMP 1.0/1.1/1.2 message broker for browsers (WebSocket) and backends (TCP).\n\nWith no arguments it serves STOMP on 127.0.0.1:61613 and STOMP over WebSocket on ws://127.0.0.1:15674/ws, and keeps durable data in ./data. Settings come from built-in defaults, then --config FILE (TOML, keys named like the flags with '_' for '-'), then STAMPEDE_* environment variables, then flags.",
    after_help = ENV_HELP
)]
pub struct Cli {
    /// Address for STOMP over TCP [default: 127.0.0.1:61613].
    #[arg(long, global = true, value_name = "ADDR", value_parser = values::parse_address)]
    pub stomp_addr: Option<SocketAddr>,
    /// Address for STOMP over WebSocket [default: 127.0.0.1:15674].
    #[arg(long, global = true, value_name = "ADDR", value_parser = values::parse_address)]
    pub ws_addr: Option<SocketAddr>,
    /// HTTP path of the WebSocket endpoint [default: /ws].
    #[arg(long, global = true, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// Log format: human (text lines) or json (one JSON object per line) [default: human].
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["human", "json"])]
    pub log_format: Option<String>,
    /// Directory for durable data [default: ./data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file with the same keys as these flags (and every limit).
    #[arg(long, global = true, env = CONFIG_VARIABLE, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace, off) or target=level filters, e.g.
    /// info,stampede_broker=debug [default: info].
    #[arg(long, global = true, value_name = "LEVEL", value_parser = values::parse_log_filter)]
    pub log_level: Option<String>,
    /// Maximum simultaneous connections [default: 100000, lowered to fit the open-file limit].
    #[arg(long, global = true, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest accepted message body, e.g. 4MiB [default: 4 MiB].
    #[arg(long, global = true, value_name = "SIZE", value_parser = values::parse_size)]
    pub max_body: Option<usize>,
    /// When a persistent message counts as stored. always: fsync before the RECEIPT (each fsync
    /// covers every message that queued meanwhile). batch: also wait up to commit_interval_ms to
    /// gather more per fsync (more throughput, a little more latency). never: no fsync; fastest,
    /// but a crash can lose messages that were receipted [default: always].
    #[arg(long, global = true, value_name = "MODE", value_parser = ["always", "batch", "never"])]
    pub fsync: Option<String>,
    /// Accept clients without credentials on non-loopback addresses when no users are
    /// configured.
    #[arg(long, global = true)]
    pub allow_anonymous: bool,
    /// PEM certificate chain; with --tls-key, enables STOMP over TLS and wss.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Address for STOMP over TLS [default: STOMP address's IP, port 61614].
    #[arg(long, global = true, value_name = "ADDR", value_parser = values::parse_address)]
    pub stomp_tls_addr: Option<SocketAddr>,
    /// Address for STOMP over secure WebSocket [default: WebSocket address's IP, port 15673].
    #[arg(long, global = true, value_name = "ADDR", value_parser = values::parse_address)]
    pub wss_addr: Option<SocketAddr>,
    /// Serve only over TLS (no plain STOMP or WebSocket listener).
    #[arg(long, global = true)]
    pub require_tls: bool,
    /// Time allowed from socket open to CONNECT, in ms [default: 10000].
    #[arg(long, global = true, value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Most simultaneous connections from one address [default: 1000].
    #[arg(long, global = true, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Management HTTP address (API, metrics, health), or `none` [default: 127.0.0.1:15672].
    #[arg(long, env = "STAMPEDE_HTTP_ADDR", value_name = "ADDR|none", value_parser = OptionalAddr::parse)]
    pub http_addr: Option<OptionalAddr>,
    /// Management HTTPS address when TLS is on [default: the HTTP IP, port 15671].
    #[arg(long, env = "STAMPEDE_HTTPS_ADDR", value_name = "ADDR")]
    pub https_addr: Option<SocketAddr>,
    /// `/metrics`, `/healthz` and `/readyz` answer without credentials.
    #[arg(long, env = "STAMPEDE_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Cluster mode: NATS servers to join, comma-separated (nats://HOST:PORT or tls://HOST:PORT);
    /// sets `[cluster] nats_urls`.
    #[arg(long, global = true, value_name = "URLS", value_delimiter = ',')]
    pub cluster_nats_urls: Option<Vec<String>>,
    /// Cluster mode: this node's name [default: the host name].
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster_node_name: Option<String>,
    /// Cluster mode: first tokens of every NATS subject [default: stampede].
    #[arg(long, global = true, value_name = "PREFIX")]
    pub cluster_subject_prefix: Option<String>,
    /// Cluster mode: JetStream stream replicas, 1 or 3 [default: 1].
    #[arg(long, global = true, value_name = "N")]
    pub cluster_stream_replicas: Option<u8>,
    /// Cluster mode: NATS credentials file.
    #[arg(long, global = true, value_name = "FILE")]
    pub cluster_creds_file: Option<PathBuf>,
    /// Serve the browser demo at /demo/ on the WebSocket listener (a broker without users).
    #[arg(long, global = true)]
    pub demo: bool,
    /// Subcommand; none runs the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands other than running the broker.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration as a start would, print it as TOML (secrets redacted) and exit.
    PrintConfig {
        /// Print it as STAMPEDE_* environment variables instead, one per key.
        #[arg(long)]
        env: bool,
    },
    /// Manage a running broker over its management API (`stampede ctl --help`).
    Ctl(Box<crate::ctl::CtlArgs>),
    /// Print an argon2 hash of a password for the `users` table. The password is read from
    /// standard input (prompted for without echo on a terminal).
    Passwd {
        /// The password (visible in shell history and process lists: prefer standard input).
        #[arg(long)]
        password: Option<String>,
    },
}

impl Cli {
    /// The effective configuration: defaults, then the file, then `STAMPEDE_*` variables of
    /// this process's environment, then flags.
    ///
    /// # Errors
    /// When the config file cannot be read or parsed, or a variable's value is invalid.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        self.resolve_with(&environment())
    }

    /// [`Cli::resolve`] with the given environment variables.
    ///
    /// # Errors
    /// As [`Cli::resolve`].
    pub fn resolve_with(&self, environment: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut table = match &self.config {
            Some(path) => {
                // Parsed on its own first, so that an error names the file.
                Config::from_file(path)?;
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })?
            }
            None => toml::Table::new(),
        };
        for (variable, value) in environment {
            if let Some((nested, key)) = nested_variable_key(variable) {
                let value = nested_environment_value(variable, &nested, &key, value)?;
                let entry = table.entry(nested).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(entry) = entry {
                    entry.insert(key, value);
                }
                continue;
            }
            let Some(key) = variable_key(variable) else { continue };
            table.insert(key.clone(), environment_value(variable, &key, value)?);
        }
        let mut config: Config = table
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Invalid(error.message().trim().to_owned()))?;
        self.apply_flags(&mut config)?;
        Ok(config)
    }

    fn apply_flags(&self, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(v) = self.stomp_addr {
            config.stomp_addr = v;
        }
        if let Some(v) = self.ws_addr {
            config.ws_addr = v;
        }
        if let Some(v) = &self.ws_path {
            config.ws_path = v.clone();
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.log_level {
            config.log_level = v.clone();
        }
        if let Some(v) = &self.log_format {
            config.log_format = if v == "json" { LogFormat::Json } else { LogFormat::Human };
        }
        if let Some(v) = self.max_connections {
            config.max_connections = v;
        }
        if let Some(v) = self.max_body {
            config.max_body = v;
        }
        if self.allow_anonymous {
            config.allow_anonymous = true;
        }
        if let Some(v) = &self.tls_cert {
            config.tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            config.tls_key = Some(v.clone());
        }
        if let Some(v) = self.stomp_tls_addr {
            config.stomp_tls_addr = Some(v);
        }
        if let Some(v) = self.wss_addr {
            config.wss_addr = Some(v);
        }
        if self.require_tls {
            config.require_tls = true;
        }
        if let Some(v) = self.connect_timeout_ms {
            config.connect_timeout_ms = v;
        }
        if let Some(v) = self.max_connections_per_ip {
            config.max_connections_per_ip = v;
        }
        if let Some(OptionalAddr(v)) = self.http_addr {
            config.http_addr = v;
        }
        if let Some(v) = self.https_addr {
            config.https_addr = Some(v);
        }
        if self.metrics_public {
            config.metrics_public = true;
        }
        if self.demo {
            config.demo = true;
        }
        if let Some(v) = &self.fsync {
            config.fsync =
                v.parse().map_err(|e: stampede_storage::StorageError| ConfigError::Invalid(e.to_string()))?;
        }
        self.apply_cluster_flags(config);
        Ok(())
    }

    /// The `--cluster-*` flags; any of them turns cluster mode on (`nats_urls` is then
    /// required, as in the file).
    fn apply_cluster_flags(&self, config: &mut Config) {
        let given = self.cluster_nats_urls.is_some()
            || self.cluster_node_name.is_some()
            || self.cluster_subject_prefix.is_some()
            || self.cluster_stream_replicas.is_some()
            || self.cluster_creds_file.is_some();
        if !given {
            return;
        }
        let cluster = config.cluster.get_or_insert_with(Default::default);
        if let Some(v) = &self.cluster_nats_urls {
            cluster.nats_urls = v.iter().map(|url| url.trim().to_owned()).filter(|url| !url.is_empty()).collect();
        }
        if let Some(v) = &self.cluster_node_name {
            cluster.node_name = Some(v.clone());
        }
        if let Some(v) = &self.cluster_subject_prefix {
            cluster.subject_prefix = v.clone();
        }
        if let Some(v) = self.cluster_stream_replicas {
            cluster.stream_replicas = v;
        }
        if let Some(v) = &self.cluster_creds_file {
            cluster.creds_file = Some(v.clone());
        }
    }
}

/// This process's environment variables that are valid Unicode.
pub fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// The `STAMPEDE_*` variables of `environment` that name no configuration key (a typo, or a
/// key that does not exist), which the broker warns about instead of ignoring silently.
pub fn unknown_variables(environment: &[(String, String)]) -> Vec<String> {
    let keys = config_keys();
    environment
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name != CONFIG_VARIABLE)
        // `stampede ctl`'s own variables (URL and credentials), not configuration keys.
        .filter(|(name, _)| !name.starts_with(crate::ctl::ENV_PREFIX))
        .filter(|(name, _)| !keys.contains(&name[ENV_PREFIX.len()..].to_ascii_lowercase().as_str()))
        .filter(|(name, _)| nested_variable_key(name).is_none())
        .map(|(name, _)| name.clone())
        .collect()
}

/// The configuration key a `STAMPEDE_*` variable sets, if it names one.
fn variable_key(variable: &str) -> Option<String> {
    let key = variable.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
    (variable != CONFIG_VARIABLE && config_keys().contains(&key.as_str())).then_some(key)
}

/// The table and key a `STAMPEDE_<TABLE>__<KEY>` variable sets, if it names one.
fn nested_variable_key(variable: &str) -> Option<(String, String)> {
    let rest = variable.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
    let (table, key) = rest.split_once("__")?;
    let keys: &[&str] = match table {
        "cluster" => crate::cluster::ClusterConfig::keys(),
        _ => return None,
    };
    (NESTED_TABLES.contains(&table) && keys.contains(&key)).then(|| (table.to_owned(), key.to_owned()))
}

/// [`environment_value`] for key `key` of table `table`.
fn nested_environment_value(variable: &str, table: &str, key: &str, text: &str) -> Result<toml::Value, ConfigError> {
    let invalid =
        |reason: String| ConfigError::Environment { variable: variable.to_owned(), value: text.to_owned(), reason };
    let fits = |value: &toml::Value| {
        let mut inner = toml::Table::new();
        inner.insert(key.to_owned(), value.clone());
        let mut outer = toml::Table::new();
        outer.insert(table.to_owned(), toml::Value::Table(inner));
        toml::Value::Table(outer).try_into::<Config>().map(drop).map_err(|error| error.message().trim().to_owned())
    };
    candidates(text).find_map(|candidate| fits(&candidate).ok().map(|()| candidate)).ok_or_else(|| {
        invalid(fits(&toml::Value::String(text.to_owned())).err().unwrap_or_else(|| "not accepted".to_owned()))
    })
}

/// What a variable's text may stand for, most specific first: a TOML literal, the text as a
/// string, the comma-separated items as a list.
fn candidates(text: &str) -> impl Iterator<Item = toml::Value> {
    let list = toml::Value::Array(
        text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(|item| item.into()).collect(),
    );
    let literal = format!("value = {text}").parse::<toml::Table>().ok().and_then(|mut table| table.remove("value"));
    literal.into_iter().chain([toml::Value::String(text.to_owned()), list])
}

/// The TOML value of variable `variable`, set to `text`, for `key`: a TOML literal where one
/// fits (numbers, booleans), else the text as a string, and for list keys the comma-separated
/// items. Each is tried on its own, so a wrong value is reported with the variable's name.
fn environment_value(variable: &str, key: &str, text: &str) -> Result<toml::Value, ConfigError> {
    let invalid =
        |reason: String| ConfigError::Environment { variable: variable.to_owned(), value: text.to_owned(), reason };
    if NESTED_TABLES.contains(&key) {
        let upper = key.to_ascii_uppercase();
        return Err(invalid(format!("[{key}] is a table; set its keys with {ENV_PREFIX}{upper}__<KEY> variables")));
    }
    if TABLE_KEYS.contains(&key) {
        return Err(invalid(format!("[{key}] is a table; set it in the config file")));
    }
    let fits = |value: &toml::Value| {
        let mut single = toml::Table::new();
        single.insert(key.to_owned(), value.clone());
        toml::Value::Table(single).try_into::<Config>().map(drop).map_err(|error| error.message().trim().to_owned())
    };
    let mut last_error = String::new();
    for candidate in candidates(text) {
        match fits(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(error) => {
                if last_error.is_empty() || matches!(candidate, toml::Value::String(_)) {
                    last_error = error;
                }
            }
        }
    }
    Err(invalid(last_error))
}

/// Every top-level key of [`Config`], as serde knows them (so a new field needs no list here).
pub fn config_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    KEYS.get_or_init(field_names::<Config>)
}

/// The field names of struct `T`, as its `Deserialize` implementation knows them.
pub fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Visitor, value::Error};

    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            Err(serde::de::Error::custom("only field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only field names are read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

impl Config {
    /// The configuration as `STAMPEDE_*=value` lines, one per key that has a variable (unset
    /// optional keys as comments), for `print-config --env`. Secrets are redacted.
    pub fn as_environment(&self) -> String {
        let shown = toml::Table::try_from(self.for_display()).unwrap_or_default();
        let mut lines = String::new();
        for key in config_keys().iter().filter(|key| !TABLE_KEYS.contains(key)) {
            let variable = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
            let value = match shown.get(*key) {
                None => {
                    lines.push_str(&format!("# {variable}= (not set)\n"));
                    continue;
                }
                Some(value) => env_text(value),
            };
            lines.push_str(&format!("{variable}={}\n", shell_quote(&value)));
        }
        if let Some(toml::Value::Table(cluster)) = shown.get("cluster") {
            for key in crate::cluster::ClusterConfig::keys() {
                let variable = format!("{ENV_PREFIX}CLUSTER__{}", key.to_ascii_uppercase());
                match cluster.get(*key) {
                    None => lines.push_str(&format!("# {variable}= (not set)\n")),
                    Some(value) => lines.push_str(&format!("{variable}={}\n", shell_quote(&env_text(value)))),
                }
            }
        }
        lines
    }
}

/// A TOML value as a variable's text: strings as they are, lists comma-separated.
fn env_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:,@=+[]".contains(c)) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of every README table whose second column is headed `default`:
    /// (the keys the first column names in backticks, the defaults the second gives in backticks).
    fn readme_rows() -> Vec<(Vec<String>, Vec<String>)> {
        let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
        let cells = |line: &str| -> Vec<String> {
            line.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect()
        };
        let mut rows = Vec::new();
        let mut in_defaults_table = false;
        let lines: Vec<&str> = include_str!("../../../README.md").lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with('|') {
                in_defaults_table = false;
                continue;
            }
            if lines.get(i + 1).is_some_and(|next| next.starts_with("| ---")) {
                in_defaults_table = cells(line).get(1).is_some_and(|header| header == "default");
                continue;
            }
            if in_defaults_table && line.starts_with("| `") {
                let row = cells(line);
                let keys = ticked(&row[0]).into_iter().filter(|k| !k.starts_with("--")).collect();
                rows.push((keys, row.get(1).map(|c| ticked(c)).unwrap_or_default()));
            }
        }
        rows
    }

    #[test]
    fn every_key_is_documented_in_the_readme_and_every_documented_default_is_the_real_one() {
        let readme = include_str!("../../../README.md");
        let undocumented: Vec<&str> =
            config_keys().iter().copied().filter(|key| !readme.contains(&format!("`{key}`"))).collect();
        assert!(undocumented.is_empty(), "keys the README never names: {undocumented:?}");

        let defaults = toml::Table::try_from(Config::default()).expect("the defaults render as TOML");
        let mut checked = 0;
        for (keys, written) in readme_rows() {
            // A row documents defaults only when it gives one per key.
            if keys.len() != written.len() || !keys.iter().all(|k| config_keys().contains(&k.as_str())) {
                continue;
            }
            for (key, written) in keys.iter().zip(&written) {
                let Some(actual) = defaults.get(key) else { continue };
                let agrees = match actual {
                    toml::Value::Integer(n) => values::parse_size(written).is_ok_and(|w| w as i64 == *n),
                    toml::Value::Float(f) => written.parse::<f64>().is_ok_and(|w| w == *f),
                    toml::Value::Boolean(b) => written.parse::<bool>().is_ok_and(|w| w == *b),
                    toml::Value::String(text) => text == written,
                    _ => true,
                };
                assert!(agrees, "README says {key} defaults to {written:?}, the code says {actual}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} documented defaults were found in the README's tables");
    }

    #[test]
    fn ws_max_message_size_follows_the_configured_max_body() {
        let from_file: Config = toml::from_str("max_body = 1048576").unwrap();
        assert_eq!(from_file.effective_ws_max_message_size(), (1 << 20) + from_file.max_header_bytes + 64);
        assert_eq!(from_file.websocket_config().max_message_size, Some(from_file.effective_ws_max_message_size()));
        let raised = Config { max_body: 16 << 20, max_header_bytes: 1024, ..Config::default() };
        assert_eq!(raised.effective_ws_max_message_size(), (16 << 20) + 1024 + 64);
        let explicit: Config = toml::from_str("max_body = 1048576\nws_max_message_size = 4096").unwrap();
        assert_eq!(explicit.effective_ws_max_message_size(), 4096);
    }

    #[test]
    fn every_byte_size_key_accepts_human_sizes() {
        let config: Config = toml::from_str(
            "max_body = \"4 MiB\"\nqueue_max_bytes = \"1 GB\"\nmax_outbox_bytes = \"512KiB\"\nws_max_message_size = \"8 MiB\"\nmax_header_line = 4096\n[queues.orders]\nmax_bytes = \"64 MiB\"\n",
        )
        .unwrap();
        assert_eq!(config.max_body, 4 << 20);
        assert_eq!(config.queue_max_bytes, 1 << 30);
        assert_eq!(config.max_outbox_bytes, 512 << 10);
        assert_eq!(config.ws_max_message_size, Some(8 << 20));
        assert_eq!(config.max_header_line, 4096);
        assert_eq!(config.queues["orders"].max_bytes, Some(64 << 20));
        let error = toml::from_str::<Config>("max_body = \"4 parsecs\"").unwrap_err().to_string();
        assert!(error.contains("max_body") && error.contains("unknown unit"), "{error}");
    }

    #[test]
    fn an_unknown_log_level_in_the_file_is_refused_naming_the_levels() {
        let config: Config = toml::from_str("log_level = \"verbose\"").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("log_level") && error.contains("warn (or warning)"), "{error}");
        let config: Config = toml::from_str("log_level = \"Warning\"").unwrap();
        assert_eq!(config.log_filter().unwrap(), "warn");
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("stampede").chain(args.iter().copied())).unwrap()
    }

    fn variables(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn every_key_has_an_environment_variable_below_the_flags() {
        let environment = variables(&[
            ("STAMPEDE_QUEUE_MAX_LENGTH", "5"),
            ("STAMPEDE_MAX_BODY", "1 MiB"),
            ("STAMPEDE_ALLOW_ANONYMOUS", "yes"),
            ("STAMPEDE_REQUIRE_TLS", "0"),
            ("STAMPEDE_VHOSTS", "a, b"),
            ("STAMPEDE_STOMP_ADDR", "localhost:7000"),
            ("STAMPEDE_HEARTBEAT_GRACE", "2"),
            ("STAMPEDE_LOG_LEVEL", "debug"),
        ]);
        let config = cli(&["--max-body", "2MiB"]).resolve_with(&environment).unwrap();
        assert_eq!(config.queue_max_length, 5);
        assert_eq!(config.max_body, 2 << 20, "the flag wins over the variable");
        assert!(config.allow_anonymous && !config.require_tls);
        assert_eq!(config.vhosts, ["a", "b"]);
        assert_eq!(config.stomp_addr, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert!((config.heartbeat_grace - 2.0).abs() < f64::EPSILON);
        assert_eq!(config.log_level, "debug");
        assert!(unknown_variables(&environment).is_empty());
    }

    #[test]
    fn cluster_keys_come_from_the_file_cluster_variables_and_flags() {
        assert!(cli(&[]).resolve_with(&[]).unwrap().cluster.is_none(), "no [cluster], no cluster mode");
        let environment = variables(&[
            ("STAMPEDE_CLUSTER__NATS_URLS", "nats://127.0.0.1:4222, nats://127.0.0.1:4223"),
            ("STAMPEDE_CLUSTER__STREAM_REPLICAS", "3"),
            ("STAMPEDE_CLUSTER__TLS", "yes"),
            ("STAMPEDE_CLUSTER__QUEUES", "node-local"),
        ]);
        let config = cli(&["--cluster-node-name", "n1"]).resolve_with(&environment).unwrap();
        let cluster = config.cluster.clone().expect("cluster mode");
        assert_eq!(cluster.nats_urls, ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]);
        assert_eq!((cluster.stream_replicas, cluster.tls), (3, true));
        assert_eq!(cluster.queues, crate::cluster::QueueMode::NodeLocal);
        assert_eq!(cluster.node_name.as_deref(), Some("n1"));
        assert_eq!(cluster.subject_prefix, "stampede", "the default");
        assert!(unknown_variables(&environment).is_empty());
        assert_eq!(
            unknown_variables(&variables(&[("STAMPEDE_CLUSTER__NATS_URL", "x")])),
            ["STAMPEDE_CLUSTER__NATS_URL"]
        );
        config.validate().unwrap();
        let shown = config.as_environment();
        assert!(shown.contains("STAMPEDE_CLUSTER__STREAM_REPLICAS=3\n"), "{shown}");

        let flags = cli(&["--cluster-nats-urls", "nats://a:1,tls://b:2", "--cluster-stream-replicas", "2"]);
        let error = flags.resolve_with(&[]).unwrap().validate().unwrap_err().to_string();
        assert!(error.contains("cluster.stream_replicas must be 1 or 3, not 2"), "{error}");
        let error = cli(&[])
            .resolve_with(&variables(&[("STAMPEDE_CLUSTER__STREAM_REPLICAS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("STAMPEDE_CLUSTER__STREAM_REPLICAS"), "{error}");
        let error = cli(&[]).resolve_with(&variables(&[("STAMPEDE_CLUSTER", "x")])).unwrap_err().to_string();
        assert!(error.contains("STAMPEDE_CLUSTER__<KEY>"), "{error}");
        let file: Config =
            toml::from_str("[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\npassword = \"p\"\nuser = \"u\"\n")
                .unwrap();
        let shown = toml::to_string(&file.for_display()).unwrap();
        assert!(!shown.contains("\"p\""), "{shown}");
    }

    #[test]
    fn an_invalid_environment_value_names_the_variable() {
        let error =
            cli(&[]).resolve_with(&variables(&[("STAMPEDE_QUEUE_MAX_LENGTH", "lots")])).unwrap_err().to_string();
        assert!(error.contains("STAMPEDE_QUEUE_MAX_LENGTH") && error.contains("lots"), "{error}");
        let error =
            cli(&[]).resolve_with(&variables(&[("STAMPEDE_ALLOW_ANONYMOUS", "maybe")])).unwrap_err().to_string();
        assert!(error.contains("STAMPEDE_ALLOW_ANONYMOUS") && error.contains("yes/no"), "{error}");
    }

    #[test]
    fn unknown_stampede_variables_are_reported_and_others_are_not() {
        let environment =
            variables(&[("STAMPEDE_QUEUE_MAX_LENGHT", "5"), ("STAMPEDE_CONFIG", "x.toml"), ("HOME", "/root")]);
        assert_eq!(unknown_variables(&environment), ["STAMPEDE_QUEUE_MAX_LENGHT"]);
        assert!(config_keys().contains(&"queue_max_length") && config_keys().contains(&"tls_cert"));
    }

    #[test]
    fn flags_are_accepted_after_the_subcommand() {
        let parsed = cli(&["print-config", "--max-body", "1KiB", "--stomp-addr", "[::1]:61613"]);
        assert!(matches!(parsed.command, Some(Command::PrintConfig { env: false })));
        assert_eq!(parsed.max_body, Some(1024));
        assert_eq!(parsed.stomp_addr.unwrap().to_string(), "[::1]:61613");
        assert!(Cli::try_parse_from(["stampede", "--log-level", "json"]).is_err());
    }

    #[test]
    fn print_config_env_lists_every_key_that_has_a_variable() {
        let shown = Config::default().as_environment();
        assert!(shown.contains("STAMPEDE_QUEUE_MAX_LENGTH=1000000\n"), "{shown}");
        assert!(shown.contains("# STAMPEDE_TLS_CERT= (not set)\n"), "{shown}");
        assert!(!shown.contains("STAMPEDE_QUEUES"), "{shown}");
    }

    #[test]
    fn print_config_redacts_password_hashes_and_the_token_secret() {
        let mut config = Config::default();
        let user = UserConfig {
            password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA".to_owned(),
            read: everything(),
            write: everything(),
            vhosts: BTreeMap::new(),
            admin: false,
        };
        config.users.insert("alice".to_owned(), user.clone());
        config.users.insert("bob".to_owned(), user);
        config.jwt = Some(JwtConfig { hs256_secret: Some("s3cret".to_owned()), ..JwtConfig::default() });
        let shown = toml::to_string(&config.for_display()).unwrap();
        assert!(!shown.contains("argon2") && !shown.contains("s3cret"), "{shown}");
        assert_eq!(shown.matches("password_hash = \"<redacted>\"").count(), 2, "{shown}");
        assert!(shown.contains("hs256_secret = \"<redacted>\""), "{shown}");
    }
}
