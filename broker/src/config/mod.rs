//! Configuration: built-in defaults, then a TOML file, then environment variables and flags.
//!
//! Every key of the TOML file has the same name as its flag (with `_` for `-`), and every flag
//! can also come from a `STAMPEDE_*` environment variable, so the same settings work in a
//! systemd unit, a container and a shell. Every limit has a default here and is named in the
//! ERROR a client gets when it hits it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
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

/// The broker's settings. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address for STOMP over TCP.
    pub stomp_addr: SocketAddr,
    /// Address for STOMP over WebSocket.
    pub ws_addr: SocketAddr,
    /// HTTP path of the WebSocket endpoint; other paths get 404.
    pub ws_path: String,
    /// Where durable data lives.
    pub data_dir: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter).
    pub log_level: String,

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

    /// Longest header line, in bytes.
    pub max_header_line: usize,
    /// Most headers per frame.
    pub max_headers: usize,
    /// Most bytes of command plus headers per frame.
    pub max_header_bytes: usize,
    /// Largest body, in bytes.
    pub max_body: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Bytes of topic messages queued for one connection before the slow-consumer policy
    /// applies.
    pub max_outbox_bytes: usize,
    /// `disconnect` (ERROR and close) or `drop-oldest` (drop and count).
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// Most subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    /// Most unacknowledged messages per consumer (caps any prefetch asked for).
    pub max_unacked_per_consumer: u32,
    /// Unacknowledged bytes per consumer.
    pub consumer_window_bytes: usize,
    /// Prefetch of `ack:auto` subscriptions that ask for none.
    pub default_prefetch_auto: u32,
    /// Prefetch of `client`/`client-individual` subscriptions that ask for none.
    pub default_prefetch_client: u32,
    /// Most frames buffered in one transaction.
    pub max_transaction_frames: usize,
    /// Most body bytes buffered in one transaction.
    pub max_transaction_bytes: usize,
    /// Most open transactions of one connection; one more BEGIN gets an ERROR.
    pub max_transactions_per_connection: usize,
    /// Most body bytes buffered by all of one connection's open transactions together.
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
    /// Dead-letter queue name prefix: messages of `/queue/x` go to `/queue/<prefix>x`.
    pub dead_letter_prefix: String,
    /// Largest WebSocket message, in bytes (bounds reassembly inside tungstenite) [default:
    /// the largest frame accepted, `max_body` + `max_header_bytes` + 64, from their effective
    /// values].
    #[serde(skip_serializing_if = "Option::is_none")]
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
    pub queue_max_bytes: usize,
    /// `reject` (publisher gets an ERROR) or `drop-oldest`.
    pub queue_overflow: OverflowPolicy,
    /// Time to live of messages that set none, in ms; 0 = forever.
    pub queue_default_ttl_ms: u64,
    /// `drop` or `dead-letter` expired messages.
    pub expired_messages: ExpiredPolicy,
    /// Per-queue settings, `[queues.<name>]` tables (name without `/queue/`).
    pub queues: HashMap<String, QueueOverride>,
    /// `sled` (on disk under `data_dir`) or `memory` (nothing survives a restart; for tests
    /// and throwaway brokers).
    pub storage: StorageKind,

    /// Most simultaneous connections from one source address (IPv6: one /64); 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Apply `max_connections_per_ip` to loopback clients too. Off by default: behind a reverse
    /// proxy on the same host every client arrives from 127.0.0.1.
    pub max_connections_per_ip_loopback: bool,
    /// With no `users` and no `[jwt]`, every client is accepted; that is only allowed on
    /// loopback listeners unless this is true.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stomp_tls_addr: Option<SocketAddr>,
    /// Address for STOMP over secure WebSocket [default when TLS is on: the WebSocket
    /// address's IP, port 15673].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wss_addr: Option<SocketAddr>,
    /// Serve only over TLS: the plain STOMP and WebSocket listeners are not opened.
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
            heartbeat_send_ms: 1000,
            heartbeat_receive_ms: 1000,
            heartbeat_grace: 3.0,
            ws_ping_interval_ms: 30_000,
            connect_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            max_header_line: limits.max_header_line,
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes,
            max_body: limits.max_body,
            max_connections: 100_000,
            max_outbox_bytes: 8 * 1024 * 1024,
            slow_consumer_policy: SlowConsumerPolicy::Disconnect,
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
            dead_letter_prefix: "DLQ.".to_owned(),
            ws_max_message_size: None,
            fsync: FsyncMode::Always,
            commit_interval_ms: 2,
            commit_max_batch: 4096,
            queue_max_length: 1_000_000,
            queue_max_bytes: 1024 * 1024 * 1024,
            queue_overflow: OverflowPolicy::Reject,
            queue_default_ttl_ms: 0,
            expired_messages: ExpiredPolicy::Drop,
            queues: HashMap::new(),
            storage: StorageKind::Sled,
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
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid("tls_cert and tls_key must be given together".to_owned()));
        }
        if self.require_tls && !self.tls_enabled() {
            return Err(ConfigError::Invalid("require_tls needs tls_cert and tls_key".to_owned()));
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
            ..SessionConfig::default()
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
            overflow: self.queue_overflow,
            default_ttl_ms: self.queue_default_ttl_ms,
            expired: self.expired_messages,
            ..QueueSettings::default()
        }
    }

    /// Storage options.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            fsync: self.fsync,
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            max_batch: self.commit_max_batch,
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
        shown.ws_max_message_size = Some(self.effective_ws_max_message_size());
        shown
    }
}

/// Command line of the `stampede` binary.
#[derive(Debug, Parser)]
#[command(
    name = "stampede",
    version,
    about = "A STOMP 1.0/1.1/1.2 message broker for browsers (WebSocket) and backends (TCP).",
    long_about = "A STOMP 1.0/1.1/1.2 message broker for browsers (WebSocket) and backends (TCP).\n\nWith no arguments it serves STOMP on 127.0.0.1:61613 and STOMP over WebSocket on ws://127.0.0.1:15674/ws, and keeps durable data in ./data. Settings come from built-in defaults, then --config FILE (TOML, keys named like the flags with '_' for '-'), then environment variables, then flags."
)]
pub struct Cli {
    /// Address for STOMP over TCP [default: 127.0.0.1:61613].
    #[arg(long, env = "STAMPEDE_STOMP_ADDR", value_name = "ADDR")]
    pub stomp_addr: Option<SocketAddr>,
    /// Address for STOMP over WebSocket [default: 127.0.0.1:15674].
    #[arg(long, env = "STAMPEDE_WS_ADDR", value_name = "ADDR")]
    pub ws_addr: Option<SocketAddr>,
    /// HTTP path of the WebSocket endpoint [default: /ws].
    #[arg(long, env = "STAMPEDE_WS_PATH", value_name = "PATH")]
    pub ws_path: Option<String>,
    /// Directory for durable data [default: ./data].
    #[arg(long, env = "STAMPEDE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file with the same keys as these flags (and every limit).
    #[arg(long, env = "STAMPEDE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level or tracing filter, e.g. info, debug, stampede_broker=trace [default: info].
    #[arg(long, env = "STAMPEDE_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Maximum simultaneous connections [default: 100000].
    #[arg(long, env = "STAMPEDE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest accepted message body in bytes [default: 4194304].
    #[arg(long, env = "STAMPEDE_MAX_BODY", value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// When a persistent message counts as stored. always: fsync before the RECEIPT (each fsync
    /// covers every message that queued meanwhile). batch: also wait up to commit_interval_ms to
    /// gather more per fsync (more throughput, a little more latency). never: no fsync; fastest,
    /// but a crash can lose messages that were receipted [default: always].
    #[arg(long, env = "STAMPEDE_FSYNC", value_name = "MODE", value_parser = ["always", "batch", "never"])]
    pub fsync: Option<String>,
    /// Accept clients without credentials on non-loopback addresses when no users are
    /// configured.
    #[arg(long, env = "STAMPEDE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// PEM certificate chain; with --tls-key, enables STOMP over TLS and wss.
    #[arg(long, env = "STAMPEDE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "STAMPEDE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Address for STOMP over TLS [default: STOMP address's IP, port 61614].
    #[arg(long, env = "STAMPEDE_STOMP_TLS_ADDR", value_name = "ADDR")]
    pub stomp_tls_addr: Option<SocketAddr>,
    /// Address for STOMP over secure WebSocket [default: WebSocket address's IP, port 15673].
    #[arg(long, env = "STAMPEDE_WSS_ADDR", value_name = "ADDR")]
    pub wss_addr: Option<SocketAddr>,
    /// Serve only over TLS (no plain STOMP or WebSocket listener).
    #[arg(long, env = "STAMPEDE_REQUIRE_TLS")]
    pub require_tls: bool,
    /// Time allowed from socket open to CONNECT, in ms [default: 10000].
    #[arg(long, env = "STAMPEDE_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Most simultaneous connections from one address [default: 1000].
    #[arg(long, env = "STAMPEDE_MAX_CONNECTIONS_PER_IP", value_name = "N")]
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
    /// Subcommand; none runs the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands other than running the broker.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective configuration as TOML (secrets redacted) and exit.
    PrintConfig,
    /// Print an argon2 hash of a password for the `users` table. The password is read from
    /// standard input (prompted for without echo on a terminal).
    Passwd {
        /// The password (visible in shell history and process lists: prefer standard input).
        #[arg(long)]
        password: Option<String>,
    },
}

impl Cli {
    /// The effective configuration: defaults, then the file, then flags and environment.
    ///
    /// # Errors
    /// When the config file cannot be read or parsed.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
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
        if let Some(v) = &self.fsync {
            config.fsync =
                v.parse().map_err(|e: stampede_storage::StorageError| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
