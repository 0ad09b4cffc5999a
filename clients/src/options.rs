//! Connection and subscription options.
//!
//! The defaults are those of the clients people already run against STOMP brokers
//! (@stomp/stompjs, RabbitMQ's examples): heart-beats `10000,10000`, virtual host `/`, every
//! protocol version offered, subscription ids `sub-0, sub-1, ...`. Every option is a public
//! field and also a builder method, so both `ConnectOptions { login: .., ..defaults }` and
//! chained calls read well.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytestring::ByteString;
use stampede_protocol::heartbeat::HeartBeat;
use stampede_protocol::{Command, Frame, Headers, Limits, Version, names};

use crate::{ClientError, Endpoint, TlsOptions};

/// How to connect. Build with [`ConnectOptions::new`] and the builder methods.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The `login` header, if any.
    pub login: Option<String>,
    /// The `passcode` header, if any. Never printed by `Debug`.
    pub passcode: Option<String>,
    /// The `host` header (virtual host). Default `/`, what RabbitMQ expects.
    pub host: String,
    /// What this client offers in `heart-beat`: it can send every `send_ms` and wants to hear
    /// from the server every `receive_ms`. Default `10000,10000`; `0,0` disables heart-beats.
    pub heart_beat: HeartBeat,
    /// How many negotiated server intervals may pass in silence before the server is declared
    /// dead. Default 2.5: one late beat is tolerated, two missed beats are not.
    pub heart_beat_grace: f64,
    /// Versions offered in `accept-version`. Default 1.0, 1.1 and 1.2. Empty: the header is left
    /// out, which a server must read as "1.0 only".
    pub accept_version: Vec<Version>,
    /// Extra CONNECT headers (e.g. `client-id` for ActiveMQ durable subscriptions). They come
    /// after the standard ones, so they cannot override them (first header wins).
    pub headers: Headers,
    /// Limit for the whole connect: TCP, WebSocket handshake, CONNECT and CONNECTED.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// How long calls that wait for a RECEIPT wait. Default 30 s.
    pub receipt_timeout: Duration,
    /// Send `STOMP` instead of `CONNECT` as the first frame (1.1+ servers accept both). Default
    /// false: `CONNECT` works with every version.
    pub use_stomp_command: bool,
    /// Decoder limits for frames from the server. Default: the protocol crate's defaults
    /// (4 MiB bodies).
    pub limits: Limits,
    /// Frames that may wait between the handles and the connection task before `send` waits
    /// for room. Default 1024. This is the client's backpressure: a fast publisher is slowed to
    /// the socket's pace instead of buffering without bound.
    pub outgoing_capacity: usize,
    /// Frames not routed to a subscription or a waiting call (see
    /// [`Client::take_unrouted`](crate::Client::take_unrouted)) kept before the connection stops
    /// reading for the taker to catch up. Default 256.
    pub unrouted_capacity: usize,
    /// How a `tls://` or `wss://` server's certificate is checked. Default: against the public
    /// (Mozilla) roots.
    pub tls: TlsOptions,
    /// Reconnect after a lost connection, and resubscribe. Default `None`: a lost connection
    /// stays lost and [`Client::closed`](crate::Client::closed) says why.
    pub reconnect: Option<Reconnect>,
}

/// Opt-in reconnection: after the connection is lost (the socket failed or closed, the server
/// fell silent or sent an ERROR), the client connects again with the same options, waiting
/// `initial_delay`, then twice as long after each failed attempt up to `max_delay`. Once
/// connected it subscribes again every subscription still open, with the same ids and headers,
/// so [`Subscription`](crate::Subscription) streams go on. Calls waiting for a RECEIPT when the
/// connection was lost fail (the server may or may not have seen their frame); frames sent while
/// reconnecting wait and go out on the new connection.
///
/// Reconnecting stops when the server refuses CONNECT (an ERROR: wrong credentials do not get
/// better) or after `max_attempts` failed attempts in a row; the connection then ends with the
/// last reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnect {
    /// Wait before the first attempt. Default 100 ms.
    pub initial_delay: Duration,
    /// Longest wait between attempts. Default 10 s.
    pub max_delay: Duration,
    /// Failed attempts in a row before giving up; `None` tries forever. Default `None`.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect { initial_delay: Duration::from_millis(100), max_delay: Duration::from_secs(10), max_attempts: None }
    }
}

impl Reconnect {
    /// The wait before attempt `attempt` (0 for the first): doubling from `initial_delay`,
    /// capped at `max_delay`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial_delay.saturating_mul(factor).min(self.max_delay)
    }
}

impl ConnectOptions {
    /// Options for `url` (see [`Endpoint::parse`]) with every default.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when the URL cannot be parsed.
    pub fn new(url: &str) -> Result<ConnectOptions, ClientError> {
        Ok(ConnectOptions::from_endpoint(Endpoint::parse(url)?))
    }

    /// Options for an already parsed endpoint, with every default.
    pub fn from_endpoint(endpoint: Endpoint) -> ConnectOptions {
        ConnectOptions {
            endpoint,
            login: None,
            passcode: None,
            host: "/".to_owned(),
            heart_beat: HeartBeat { send_ms: 10_000, receive_ms: 10_000 },
            heart_beat_grace: 2.5,
            accept_version: Version::ALL.to_vec(),
            headers: Headers::new(),
            connect_timeout: Duration::from_secs(10),
            receipt_timeout: Duration::from_secs(30),
            use_stomp_command: false,
            limits: Limits::default(),
            outgoing_capacity: 1024,
            unrouted_capacity: 256,
            tls: TlsOptions::default(),
            reconnect: None,
        }
    }

    /// Sets `login` and `passcode`.
    pub fn credentials(mut self, login: impl Into<String>, passcode: impl Into<String>) -> Self {
        self.login = Some(login.into());
        self.passcode = Some(passcode.into());
        self
    }

    /// Sets `login`.
    pub fn login(mut self, login: impl Into<String>) -> Self {
        self.login = Some(login.into());
        self
    }

    /// Sets `passcode`.
    pub fn passcode(mut self, passcode: impl Into<String>) -> Self {
        self.passcode = Some(passcode.into());
        self
    }

    /// Sets the virtual host (`host` header).
    pub fn vhost(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Sets the offered heart-beat, in milliseconds; `(0, 0)` disables heart-beats.
    pub fn heart_beat(mut self, send_ms: u32, receive_ms: u32) -> Self {
        self.heart_beat = HeartBeat { send_ms, receive_ms };
        self
    }

    /// Sets the grace factor applied to the server's heart-beat interval.
    pub fn heart_beat_grace(mut self, factor: f64) -> Self {
        self.heart_beat_grace = factor;
        self
    }

    /// Sets the versions offered in `accept-version`.
    pub fn accept_version(mut self, versions: &[Version]) -> Self {
        self.accept_version = versions.to_vec();
        self
    }

    /// Adds an extra CONNECT header.
    pub fn header(mut self, name: impl Into<ByteString>, value: impl Into<ByteString>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long receipts are awaited.
    pub fn receipt_timeout(mut self, timeout: Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    /// Sends `STOMP` instead of `CONNECT`.
    pub fn use_stomp_command(mut self, yes: bool) -> Self {
        self.use_stomp_command = yes;
        self
    }

    /// Sets the decoder limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Trusts the CA certificates in a PEM file, in addition to the public roots, on `tls://` and
    /// `wss://` connections.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Accepts any server certificate on `tls://` and `wss://` connections. Encrypted but not
    /// authenticated: for tests only.
    pub fn insecure_skip_verify(mut self, yes: bool) -> Self {
        self.tls.insecure_skip_verify = yes;
        self
    }

    /// Reconnects (and resubscribes) after a lost connection; see [`Reconnect`].
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = Some(reconnect);
        self
    }

    /// The CONNECT (or STOMP) frame these options describe.
    pub fn connect_frame(&self) -> Frame {
        let command = if self.use_stomp_command { Command::Stomp } else { Command::Connect };
        let mut frame = Frame::new(command);
        if !self.accept_version.is_empty() {
            let offer: Vec<&str> = self.accept_version.iter().map(|v| v.as_str()).collect();
            frame.headers.push(names::ACCEPT_VERSION, offer.join(","));
        }
        frame.headers.push(names::HOST, self.host.as_str());
        if let Some(login) = &self.login {
            frame.headers.push(names::LOGIN, login.as_str());
        }
        if let Some(passcode) = &self.passcode {
            frame.headers.push(names::PASSCODE, passcode.as_str());
        }
        frame.headers.push(names::HEART_BEAT, self.heart_beat.to_header_value());
        for (name, value) in self.headers.iter_shared() {
            frame.headers.push(name.clone(), value.clone());
        }
        frame
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("endpoint", &self.endpoint)
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("heart_beat", &self.heart_beat)
            .field("heart_beat_grace", &self.heart_beat_grace)
            .field("accept_version", &self.accept_version)
            .field("headers", &self.headers)
            .field("connect_timeout", &self.connect_timeout)
            .field("receipt_timeout", &self.receipt_timeout)
            .field("use_stomp_command", &self.use_stomp_command)
            .field("limits", &self.limits)
            .field("outgoing_capacity", &self.outgoing_capacity)
            .field("unrouted_capacity", &self.unrouted_capacity)
            .field("tls", &self.tls)
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

/// A subscription's acknowledgement mode (the SUBSCRIBE `ack` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AckMode {
    /// The server considers a message consumed once sent; no ACK is sent.
    #[default]
    Auto,
    /// ACK is cumulative: it covers the message and every earlier one of the subscription.
    Client,
    /// ACK and NACK cover exactly one message.
    ClientIndividual,
}

impl AckMode {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

impl fmt::Display for AckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AckMode {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<AckMode, ClientError> {
        match s {
            "auto" => Ok(AckMode::Auto),
            "client" => Ok(AckMode::Client),
            "client-individual" => Ok(AckMode::ClientIndividual),
            other => Err(ClientError::InvalidRequest(format!(
                "unknown ack mode {other:?}: expected auto, client or client-individual"
            ))),
        }
    }
}

/// The default number of messages buffered per subscription before the connection stops
/// reading from the socket.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 256;

/// How to subscribe. `SubscribeOptions::default()` is auto-ack with a generated id.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The ack mode. Default [`AckMode::Auto`].
    pub ack: AckMode,
    /// The subscription id; `None` generates `sub-0`, `sub-1`, ... per connection.
    pub id: Option<String>,
    /// Extra SUBSCRIBE headers (`prefetch-count`, `durable`, `selector`, ...). They come after
    /// `destination`, `id` and `ack`, which they therefore cannot override.
    pub headers: Headers,
    /// Messages buffered for this subscription before the connection stops reading from the
    /// socket (which in turn makes the broker hold further messages). Default 256.
    pub capacity: usize,
}

impl Default for SubscribeOptions {
    fn default() -> SubscribeOptions {
        SubscribeOptions {
            ack: AckMode::Auto,
            id: None,
            headers: Headers::new(),
            capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
        }
    }
}

impl SubscribeOptions {
    /// Auto-ack, generated id.
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// Sets the ack mode.
    pub fn ack(mut self, ack: AckMode) -> Self {
        self.ack = ack;
        self
    }

    /// Sets the subscription id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Adds a SUBSCRIBE header.
    pub fn header(mut self, name: impl Into<ByteString>, value: impl Into<ByteString>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Adds `prefetch-count` (RabbitMQ's and Stampede's credit window for unacked messages).
    pub fn prefetch(self, count: u32) -> Self {
        self.header("prefetch-count", count.to_string())
    }

    /// Marks the subscription durable the RabbitMQ way (`durable:true`, `auto-delete:false`);
    /// give it a stable [`id`](Self::id), which names it.
    pub fn durable(self) -> Self {
        self.header("durable", "true").header("auto-delete", "false")
    }

    /// Sets the per-subscription buffer size (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_frame_has_the_defaults_and_extras_cannot_override_them() {
        let frame = ConnectOptions::new("localhost:61613")
            .unwrap()
            .credentials("guest", "pa:ss\\word")
            .header("host", "/other")
            .header("client-id", "c1")
            .connect_frame();
        assert_eq!(frame.command, Command::Connect);
        assert_eq!(frame.header("accept-version"), Some("1.0,1.1,1.2"));
        assert_eq!(frame.header("host"), Some("/"));
        assert_eq!(frame.header("login"), Some("guest"));
        assert_eq!(frame.header("passcode"), Some("pa:ss\\word"));
        assert_eq!(frame.header("heart-beat"), Some("10000,10000"));
        assert_eq!(frame.header("client-id"), Some("c1"));
    }

    #[test]
    fn empty_accept_version_leaves_the_header_out() {
        let frame = ConnectOptions::new("h").unwrap().accept_version(&[]).connect_frame();
        assert!(!frame.headers.contains("accept-version"));
        let frame = ConnectOptions::new("h").unwrap().accept_version(&[Version::V1_1]).connect_frame();
        assert_eq!(frame.header("accept-version"), Some("1.1"));
    }

    #[test]
    fn debug_never_prints_the_passcode() {
        let options = ConnectOptions::new("h").unwrap().credentials("u", "hunter2");
        assert!(!format!("{options:?}").contains("hunter2"));
    }

    #[test]
    fn reconnect_delay_doubles_up_to_the_cap() {
        let reconnect = Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(700),
            max_attempts: None,
        };
        let delays: Vec<u128> = (0..5).map(|attempt| reconnect.delay(attempt).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(reconnect.delay(u32::MAX), Duration::from_millis(700));
    }

    #[test]
    fn ack_mode_round_trips() {
        for mode in [AckMode::Auto, AckMode::Client, AckMode::ClientIndividual] {
            assert_eq!(mode.as_str().parse::<AckMode>().unwrap(), mode);
        }
        assert!("Client".parse::<AckMode>().is_err());
    }
}
