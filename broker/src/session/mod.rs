//! The STOMP state machine for one client.
//!
//! A session takes decoded frames and produces replies (CONNECTED, RECEIPT) or a
//! [`StompError`]; it owns the client's subscriptions, the acknowledgements it still owes,
//! its open transactions and its temporary queues. It never touches a socket: the connection
//! task feeds it frames, writes what it returns, and asks it to render deliveries from the
//! outbox. That keeps every rule of the specification testable with frames in and frames out.
//!
//! Acknowledgement ids: every MESSAGE from a subscription that is not `ack:auto` carries an
//! `ack` header with a session-unique number. ACK and NACK are accepted in all three forms
//! whatever version was negotiated, because clients mix them up: `id` (1.2), `subscription` plus
//! `message-id` (1.1) and `message-id` alone (1.0). In `client` mode an ACK or NACK covers every
//! earlier unacknowledged message of the subscription too; in `client-individual` mode only the
//! one named. An ACK for a message that is no longer pending (acknowledged twice, or already
//! redelivered elsewhere) is ignored, as nothing is lost by doing so.

mod features;

use std::collections::{HashMap, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use stampede_protocol::heartbeat::{self, HeartBeat, Negotiated};
use stampede_protocol::{ByteString, Command, Frame, Headers, MessageTemplate, Version, names};
use tracing::{debug, trace};

use crate::destination::outbox::{Delivery, Outbox, QueueDelivery, SlowConsumerPolicy};
use crate::destination::queue::{Browse, Consumer, Outcome, QueueHandle, QueuedMessage, Verdict, now_ms};
use crate::destination::router::{Destination, DurableError, Router, TopicMessage, TopicRegistration};
use crate::destination::topic::{Sink, TopicSubscriber};
use crate::destination::vhost::VirtualHosts;
use crate::error::{ErrorKind, StompError};
use crate::http::metrics::{Metrics, PublishKind};
use crate::security::Redacted;
use crate::security::auth::{Authenticator, Credentials, Operation, Principal};
use features::SubscribeFeatures;

/// Headers of a MESSAGE that [`Session::render`] writes for each delivery. A SEND's own
/// entries with these names are never forwarded, so each appears exactly once, as the broker set
/// it.
const PER_DELIVERY_HEADERS: [&str; 5] =
    [names::SUBSCRIPTION, names::MESSAGE_ID, names::ACK, names::REDELIVERED, names::CONTENT_LENGTH];

/// What every session of a broker shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The `server` header of CONNECTED.
    pub server_name: String,
    /// Versions offered, lowest first.
    pub versions: Vec<Version>,
    /// The heart-beat this server offers: how often it can send, how often it wants to hear.
    pub heart_beat: HeartBeat,
    /// Prefetch for `ack:auto` subscriptions without a prefetch header.
    pub default_prefetch_auto: u32,
    /// Prefetch for `client` and `client-individual` subscriptions without a prefetch header.
    pub default_prefetch_client: u32,
    /// Upper bound for any prefetch a client asks for (`max_unacked_per_consumer`).
    pub max_unacked_per_consumer: u32,
    /// Unacknowledged bytes a consumer may hold (beyond its first message).
    pub consumer_window_bytes: usize,
    /// Most subscriptions one connection may hold (`max_subscriptions_per_connection`).
    pub max_subscriptions: usize,
    /// Most frames one transaction may buffer (`max_transaction_frames`).
    pub max_transaction_frames: usize,
    /// Most body bytes one transaction may buffer (`max_transaction_bytes`).
    pub max_transaction_bytes: usize,
    /// Most open transactions of one connection (`max_transactions_per_connection`).
    pub max_transactions: usize,
    /// Most body bytes all open transactions of one connection may buffer together
    /// (`max_transaction_bytes_per_connection`).
    pub max_transaction_bytes_per_connection: usize,
    /// What to do when a topic subscriber's outbox is full.
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// Who may connect and what they may do (open = everyone, everything).
    pub auth: Arc<Authenticator>,
    /// The broker's counters.
    pub metrics: Arc<Metrics>,
    /// The disk alarm (stores on disk only), and what a persistent SEND does under it.
    pub disk: Option<Arc<stampede_storage::DiskWatermark>>,
    /// `disk_full_policy`.
    pub disk_full_policy: crate::disk::DiskFullPolicy,
    /// `disk_full_block_ms`, as a duration.
    pub disk_full_block: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            server_name: format!("stampede/{}", env!("CARGO_PKG_VERSION")),
            versions: Version::ALL.to_vec(),
            heart_beat: HeartBeat { send_ms: 1000, receive_ms: 1000 },
            default_prefetch_auto: 1000,
            default_prefetch_client: 100,
            max_unacked_per_consumer: 10_000,
            consumer_window_bytes: 8 * 1024 * 1024,
            max_subscriptions: 1000,
            max_transaction_frames: 10_000,
            max_transaction_bytes: 64 * 1024 * 1024,
            max_transactions: 64,
            max_transaction_bytes_per_connection: 64 * 1024 * 1024,
            slow_consumer_policy: SlowConsumerPolicy::Disconnect,
            auth: Arc::new(Authenticator::open()),
            metrics: Arc::default(),
            disk: None,
            disk_full_policy: crate::disk::DiskFullPolicy::Refuse,
            disk_full_block: Duration::from_millis(5000),
        }
    }
}

/// Something the connection must write, in order.
///
/// Replies are written strictly in the order they were produced, so a RECEIPT that follows a
/// [`Reply::After`] waits for it: a receipt means every earlier frame was processed, and for a
/// persistent SEND that includes being on disk. Meanwhile the connection keeps reading, so a
/// producer that pipelines persistent sends gets its messages group-committed.
#[derive(Debug)]
pub enum Reply {
    /// A frame ready now (CONNECTED, RECEIPT).
    Frame(Frame),
    /// A queue's verdict on a SEND; a refusal ends the session with an ERROR carrying
    /// `receipt_id`.
    After {
        /// The verdict.
        verdict: Verdict,
        /// The SEND's receipt, for the ERROR.
        receipt_id: Option<ByteString>,
    },
}

/// What the connection does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// The client sent DISCONNECT: flush the replies, then close.
    Disconnect,
}

/// The acknowledgement mode of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// No ACK expected.
    Auto,
    /// Cumulative ACK.
    Client,
    /// One ACK per message.
    ClientIndividual,
}

impl AckMode {
    fn parse(value: Option<&str>) -> Result<AckMode, StompError> {
        match value {
            None | Some("auto") => Ok(AckMode::Auto),
            Some("client") => Ok(AckMode::Client),
            Some("client-individual") => Ok(AckMode::ClientIndividual),
            Some(other) => Err(StompError::new(
                format!("invalid ack mode {other:?}"),
                "The SUBSCRIBE 'ack' header must be auto, client or client-individual.",
            )),
        }
    }
}

#[derive(Debug)]
enum Target {
    Topic(TopicRegistration),
    Queue {
        queue: QueueHandle,
        consumer: u64,
    },
    /// A queue browser (`browser:true`): copies of the waiting messages, then `end`, after
    /// which the subscription is gone.
    Browse {
        end: Arc<MessageTemplate>,
    },
}

#[derive(Debug)]
struct Pending {
    ack_id: u64,
    message_id: u64,
}

#[derive(Debug)]
struct Subscription {
    id: ByteString,
    ack: AckMode,
    target: Target,
    /// Queue deliveries written but not yet acknowledged, oldest first (client modes only).
    pending: VecDeque<Pending>,
    /// The durable subscription this consumes, if it is one.
    durable: Option<String>,
}

/// Frames buffered by an open transaction, replayed at COMMIT.
#[derive(Debug, Default)]
struct Transaction {
    frames: Vec<Frame>,
    bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingConnect,
    Connected,
}

/// Per-delivery work the connection must finish after writing, for `ack:auto` queue
/// subscriptions: tell the queue the message was consumed.
#[derive(Debug)]
pub struct AutoAck {
    /// The queue and consumer.
    pub from: QueueDelivery,
    /// The message.
    pub message_id: u64,
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    id: Arc<str>,
    config: Arc<SessionConfig>,
    vhosts: Arc<VirtualHosts>,
    /// The router of the session's virtual host (that of `/` until CONNECT picks one).
    router: Arc<Router>,
    outbox: Arc<Outbox>,
    state: State,
    version: Version,
    virtual_host: String,
    login: Option<String>,
    client_id: Option<String>,
    heart_beat: Negotiated,
    // Looked up on every delivery and acknowledgement: FxHash (keys are broker-chosen numbers
    // and client subscription ids, so hash flooding is not a concern worth SipHash's cost).
    //
    // Subscriptions are boxed: most connections hold one, and a map's smallest table has four
    // slots, so unboxed it would cost four whole `Subscription`s per connection.
    subscriptions: FxHashMap<u64, Box<Subscription>>,
    by_id: FxHashMap<ByteString, u64>,
    ack_owner: FxHashMap<u64, u64>,
    next_subscription: u64,
    next_ack: u64,
    transactions: HashMap<ByteString, Transaction>,
    /// Body bytes buffered by all open transactions.
    transaction_bytes: usize,
    /// The ActiveMQ `client-id` this connection holds in its virtual host.
    claimed_client_id: Option<String>,
    temp_queues: HashMap<String, QueueHandle>,
    peer: Option<IpAddr>,
    upgrade_credentials: Option<Credentials>,
    principal: Option<Principal>,
    /// Ids of the latest browsers that ended by themselves, so that a client that still sends
    /// UNSUBSCRIBE for one is not refused.
    ended_browsers: VecDeque<ByteString>,
}

/// How many ended browsers' ids a session remembers.
const ENDED_BROWSERS_REMEMBERED: usize = 64;

impl Session {
    /// A session that waits for CONNECT.
    pub fn new(id: Arc<str>, config: Arc<SessionConfig>, vhosts: Arc<VirtualHosts>, outbox: Arc<Outbox>) -> Session {
        Session {
            id,
            config,
            router: Arc::clone(vhosts.default_router()),
            vhosts,
            outbox,
            state: State::AwaitingConnect,
            // Until CONNECT says otherwise, frames we send (an ERROR) are not escaped: the
            // client's version is unknown and 1.0 has no escaping.
            version: Version::V1_0,
            virtual_host: "/".to_owned(),
            login: None,
            client_id: None,
            heart_beat: Negotiated::default(),
            subscriptions: FxHashMap::default(),
            by_id: FxHashMap::default(),
            ack_owner: FxHashMap::default(),
            next_subscription: 1,
            next_ack: 1,
            transactions: HashMap::new(),
            transaction_bytes: 0,
            claimed_client_id: None,
            temp_queues: HashMap::new(),
            peer: None,
            upgrade_credentials: None,
            principal: None,
            ended_browsers: VecDeque::new(),
        }
    }

    /// The client's address, for the failed-login delay.
    pub fn set_peer(&mut self, peer: IpAddr) {
        self.peer = Some(peer);
    }

    /// Credentials from the WebSocket upgrade request (HTTP Basic or Bearer), used when
    /// CONNECT carries neither login nor passcode.
    pub fn set_upgrade_credentials(&mut self, credentials: Option<Credentials>) {
        self.upgrade_credentials = credentials;
    }

    /// The authenticated principal, once connected.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The session id sent in CONNECTED.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The negotiated version (1.0 until CONNECT is handled).
    pub fn version(&self) -> Version {
        self.version
    }

    /// True once CONNECTED was produced.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// The negotiated heart-beat intervals, seen from the server.
    pub fn heart_beat(&self) -> Negotiated {
        self.heart_beat
    }

    /// The virtual host from CONNECT's `host` header (`/` by default).
    pub fn virtual_host(&self) -> &str {
        &self.virtual_host
    }

    /// The login from CONNECT, if any.
    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// The router of the session's virtual host.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Deliveries the client has not yet acknowledged.
    pub fn pending_ack_count(&self) -> usize {
        self.ack_owner.len()
    }

    /// Handles one client frame.
    ///
    /// # Errors
    /// A [`StompError`] ends the session: the connection writes it as an ERROR frame and closes.
    pub async fn handle(&mut self, frame: Frame, replies: &mut Vec<Reply>) -> Result<Flow, StompError> {
        trace!(session = %self.id, frame = %Redacted(&frame), "frame received");
        let result = self.dispatch(&frame, replies).await;
        result.map_err(|e| e.for_frame(&frame))
    }

    async fn dispatch(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<Flow, StompError> {
        if self.state == State::AwaitingConnect {
            return match frame.command {
                Command::Connect | Command::Stomp => self.connect(frame, replies).await,
                other => Err(StompError::new(
                    format!("not connected: {other} received before CONNECT"),
                    "The first frame of a STOMP session must be CONNECT or STOMP.",
                )),
            };
        }
        match frame.command {
            Command::Connect | Command::Stomp => {
                return Err(StompError::new("already connected", "CONNECT may only be sent once per connection."));
            }
            Command::Send => self.send_or_buffer(frame, replies).await?,
            Command::Subscribe => self.subscribe(frame).await?,
            Command::Unsubscribe => self.unsubscribe(frame).await?,
            Command::Ack | Command::Nack => self.ack_or_buffer(frame).await?,
            Command::Begin => self.begin(frame)?,
            Command::Commit => self.commit(frame, replies).await?,
            Command::Abort => self.abort(frame)?,
            Command::Disconnect => {
                // The client-id is free before the RECEIPT leaves: a client that reconnects as
                // soon as its DISCONNECT is receipted must not find its own id still held.
                self.release_client_id();
                self.receipt(frame, replies);
                return Ok(Flow::Disconnect);
            }
            server_command => {
                return Err(StompError::new(
                    format!("{server_command} is a server command"),
                    "Clients may send CONNECT, STOMP, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT and DISCONNECT.",
                ));
            }
        }
        self.receipt(frame, replies);
        Ok(Flow::Continue)
    }

    fn receipt(&self, frame: &Frame, replies: &mut Vec<Reply>) {
        if let Some(receipt) = frame.headers.get_shared(names::RECEIPT) {
            replies.push(Reply::Frame(Frame::new(Command::Receipt).with_header(names::RECEIPT_ID, receipt.clone())));
        }
    }

    async fn connect(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<Flow, StompError> {
        let offered = frame.header(names::ACCEPT_VERSION);
        let Some(version) = Version::negotiate(offered, &self.config.versions) else {
            let supported: Vec<&str> = self.config.versions.iter().map(|v| v.as_str()).collect();
            let mut error = StompError::new(
                "no common protocol version",
                format!(
                    "The client offered accept-version {:?}; this server supports {}.",
                    offered.unwrap_or("1.0"),
                    supported.join(",")
                ),
            );
            error.extra_headers.push((names::VERSION, supported.join(",")));
            return Err(error);
        };
        let client_beat = match frame.header(names::HEART_BEAT) {
            None => HeartBeat::default(),
            Some(value) => HeartBeat::parse(value).ok_or_else(|| {
                StompError::new(
                    format!("invalid heart-beat header {value:?}"),
                    "The heart-beat header must be two non-negative integers separated by a comma, e.g. 10000,10000.",
                )
            })?,
        };
        // The ERROR for a failed login is written in the client's version.
        self.version = version;
        let virtual_host = frame.header(names::HOST).filter(|h| !h.is_empty()).unwrap_or("/").to_owned();
        let mut credentials = Credentials {
            login: frame.header(names::LOGIN).map(str::to_owned),
            passcode: frame.header(names::PASSCODE).map(str::to_owned),
        };
        let no_credentials = credentials.login.is_none() && credentials.passcode.is_none();
        if let Some(upgrade) = self.upgrade_credentials.as_ref().filter(|_| no_credentials) {
            credentials = upgrade.clone();
        }
        let auth = Arc::clone(&self.config.auth);
        let principal = auth.authenticate(&credentials, self.peer).await?;
        let virtual_host = self.vhosts.resolve(&virtual_host, principal.access.current()).to_owned();
        principal.may_use_vhost(&virtual_host)?;
        let router = self.vhosts.router(&virtual_host);
        let client_id = frame.header("client-id").map(str::to_owned);
        if let Some(client_id) = &client_id {
            // ActiveMQ refuses a second live connection with the same client id: durable
            // subscriptions are named by it, so two holders would take each other's messages.
            if !router.claim_client_id(client_id) {
                return Err(StompError::of_kind(
                    ErrorKind::Authorization,
                    format!("client-id {client_id:?} is already in use"),
                    format!(
                        "Another connection on virtual host {virtual_host:?} holds client-id {client_id:?}; close it first or use another client-id."
                    ),
                ));
            }
            self.claimed_client_id = Some(client_id.clone());
        }
        self.router = router;
        self.heart_beat = heartbeat::negotiate(self.config.heart_beat, client_beat);
        self.virtual_host = virtual_host;
        self.login = principal.name.clone();
        self.principal = Some(principal);
        self.client_id = client_id;
        self.state = State::Connected;
        let mut connected = Frame::new(Command::Connected)
            .with_header(names::VERSION, version.as_str())
            .with_header(names::SESSION, self.id.to_string())
            .with_header(names::SERVER, self.config.server_name.clone())
            .with_header(names::HEART_BEAT, self.config.heart_beat.to_header_value());
        if let Some(login) = &self.login {
            connected.headers.push("user-name", login.clone());
        }
        replies.push(Reply::Frame(connected));
        Ok(Flow::Continue)
    }

    /// Checks the principal's rules for `destination`. A connection's own temporary queues are
    /// always allowed; `/amq/queue/x` is checked as `/queue/x`, the queue it names. A
    /// `/reply-queue/` name is a capability: whoever holds it may send a reply to it (that is
    /// how request/reply works, as in RabbitMQ), unless the user's rules name `/reply-queue/`
    /// destinations, in which case they decide; only the connection that created it may
    /// subscribe (checked where it is resolved).
    fn authorize(&self, operation: Operation, destination: &str) -> Result<(), StompError> {
        let Some(principal) = &self.principal else { return Ok(()) };
        if destination.starts_with("/temp-queue/") {
            return Ok(());
        }
        if operation == Operation::Write
            && destination.starts_with("/reply-queue/")
            && !principal.rules_mention(&self.virtual_host, Operation::Write, "/reply-queue/")
        {
            return principal.check_token();
        }
        if let Some(name) = destination.strip_prefix("/amq/queue/") {
            return principal.check(&self.virtual_host, operation, &format!("/queue/{name}"));
        }
        // amq.topic is the exchange /topic/ uses, so /topic/ rules decide for it.
        if let Some(key) = destination.strip_prefix("/exchange/amq.topic/") {
            return principal.check(&self.virtual_host, operation, &format!("/topic/{key}"));
        }
        principal.check(&self.virtual_host, operation, destination)
    }

    /// Buffers `frame` in its transaction if it names one; returns whether it did. Both the
    /// number of frames and the bytes of their bodies are bounded, so a transaction that is never
    /// committed cannot hold unbounded memory.
    fn buffer_in_transaction(&mut self, frame: &Frame) -> Result<bool, StompError> {
        let Some(tx) = frame.headers.get_shared(names::TRANSACTION) else {
            return Ok(false);
        };
        let (max_frames, max_bytes) = (self.config.max_transaction_frames, self.config.max_transaction_bytes);
        let Some(buffered) = self.transactions.get_mut(tx) else {
            return Err(StompError::new(
                format!("unknown transaction {tx:?}"),
                format!(
                    "{} names transaction {tx:?}, which was not begun on this connection (or was already committed or aborted).",
                    frame.command
                ),
            ));
        };
        if buffered.frames.len() >= max_frames {
            return Err(StompError::limit("frames in one transaction", max_frames, "max_transaction_frames"));
        }
        if buffered.bytes + frame.body.len() > max_bytes {
            return Err(StompError::limit("body bytes in one transaction", max_bytes, "max_transaction_bytes"));
        }
        let all_bytes = self.config.max_transaction_bytes_per_connection;
        if self.transaction_bytes + frame.body.len() > all_bytes {
            return Err(StompError::limit(
                "body bytes in all open transactions of a connection",
                all_bytes,
                "max_transaction_bytes_per_connection",
            ));
        }
        self.transaction_bytes += frame.body.len();
        buffered.bytes += frame.body.len();
        buffered.frames.push(frame.clone());
        Ok(true)
    }

    async fn send_or_buffer(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<(), StompError> {
        // Validate now so a bad SEND fails when sent, not when committed.
        let destination = frame
            .header(names::DESTINATION)
            .ok_or_else(|| StompError::missing_header(Command::Send, names::DESTINATION))?;
        Destination::parse(destination).map_err(destination_error)?;
        self.authorize(Operation::Write, destination)?;
        if self.buffer_in_transaction(frame)? {
            return Ok(());
        }
        self.send(frame, replies).await.map(drop)
    }

    /// Connects this session as `principal`, already authenticated by someone else (the HTTP
    /// publish endpoint), to virtual host `host`, with the checks CONNECT makes after the login.
    ///
    /// # Errors
    /// The principal may not use that virtual host.
    pub fn connect_as(&mut self, principal: Principal, host: &str) -> Result<(), StompError> {
        let virtual_host = self.vhosts.resolve(host, principal.access.current()).to_owned();
        principal.may_use_vhost(&virtual_host)?;
        self.router = self.vhosts.router(&virtual_host);
        self.virtual_host = virtual_host;
        self.login = principal.name.clone();
        self.principal = Some(principal);
        self.version = Version::V1_2;
        self.state = State::Connected;
        Ok(())
    }

    /// Handles `frame` (a SEND without a transaction) exactly as a client's SEND: the same
    /// destination checks, permissions, limits and routing. Returns the message's id; the
    /// queues' verdicts are pushed on `replies` as for a client.
    ///
    /// # Errors
    /// The SEND was refused (an ERROR for a client).
    pub async fn publish(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<u64, StompError> {
        let destination = frame
            .header(names::DESTINATION)
            .ok_or_else(|| StompError::missing_header(Command::Send, names::DESTINATION))?;
        Destination::parse(destination).map_err(destination_error)?;
        self.authorize(Operation::Write, destination)?;
        self.send(frame, replies).await
    }

    async fn send(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<u64, StompError> {
        let destination_value = frame
            .headers
            .get_shared(names::DESTINATION)
            .cloned()
            .ok_or_else(|| StompError::missing_header(Command::Send, names::DESTINATION))?;
        let destination = Destination::parse(&destination_value).map_err(destination_error)?;
        self.router.check_clustered(&destination)?;
        let now = now_ms();
        let id = self.router.next_message_id();
        let message = TopicMessage {
            id,
            persistent: frame.header(names::PERSISTENT) == Some("true"),
            expires_at_ms: expiry(frame, now)?,
            enqueued_at_ms: now,
        };
        if message.expires_at_ms.is_some_and(|at| at <= now) {
            // Already expired: never delivered (and never stored).
            return Ok(id);
        }
        if message.persistent
            && self.config.disk_full_policy == crate::disk::DiskFullPolicy::Block
            && let Some(disk) = self.config.disk.as_ref().filter(|disk| disk.is_raised())
        {
            crate::disk::hold_while_raised(disk, self.config.disk_full_block).await;
        }
        let headers = self.message_headers(frame).await?;
        let template = Arc::new(MessageTemplate::new(headers, frame.body.clone()));
        let receipt_id = frame.headers.get_shared(names::RECEIPT).cloned();
        let queue = match destination {
            Destination::Topic(name) => {
                if crate::destination::topic::TopicPattern::parse(&name).is_some() {
                    return Err(StompError::new(
                        format!("cannot send to wildcard destination {destination_value:?}"),
                        "Wildcards (*, #, >) select topics when subscribing; a SEND names one topic.",
                    ));
                }
                self.config.metrics.message_published(PublishKind::Topic);
                for verdict in self.router.publish_topic(&name, &template, message).await? {
                    replies.push(Reply::After { verdict, receipt_id: receipt_id.clone() });
                }
                return Ok(id);
            }
            Destination::Queue(name) => self.router.client_queue(name, self.user())?,
            Destination::ExistingQueue(name) => self.router.queue(name).ok_or_else(|| not_found(&destination_value))?,
            Destination::TempQueue(name) => self.temp_queue(name).await?,
            Destination::ReplyQueue(name) => match self.router.reply_queue(name) {
                Some(queue) => queue,
                None => {
                    debug!(destination = %destination_value, "reply queue gone; message dropped");
                    return Ok(id);
                }
            },
        };
        let verdict = queue
            .publish(QueuedMessage {
                id: message.id,
                template,
                delivery_count: 0,
                persistent: message.persistent,
                expires_at_ms: message.expires_at_ms,
                enqueued_at_ms: message.enqueued_at_ms,
            })
            .await?;
        self.config.metrics.message_published(PublishKind::Queue);
        replies.push(Reply::After { verdict, receipt_id });
        Ok(id)
    }

    /// The headers a MESSAGE carries: the SEND's user headers, each name once with its first
    /// value, minus those that describe the SEND itself or that the broker sets per delivery
    /// ([`PER_DELIVERY_HEADERS`]), with `reply-to` rewritten for temporary queues.
    ///
    /// "Only the first header entry SHOULD be used": forwarding the later ones would hand a
    /// client that reads the last one a value the broker never acted on, such as a
    /// `destination` the publisher had no permission for.
    async fn message_headers(&mut self, frame: &Frame) -> Result<Headers, StompError> {
        let mut headers = Headers::with_capacity(frame.headers.len());
        // A handful of headers is searched in place; the many a hostile SEND may carry (up to
        // `max_headers`) go through a set, so deduplication stays linear.
        let hashed = frame.headers.len() > 16;
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        for (name, value) in frame.headers.iter_shared() {
            let repeated = if hashed { !seen.insert(&**name) } else { headers.contains(name) };
            match &**name {
                _ if repeated => {}
                names::RECEIPT | names::TRANSACTION => {}
                owned if PER_DELIVERY_HEADERS.contains(&owned) => {}
                names::REPLY_TO if value.starts_with("/temp-queue/") => {
                    Destination::parse(value).map_err(destination_error)?;
                    let name = &value["/temp-queue/".len()..];
                    let queue = self.temp_queue(name).await?;
                    headers.push(ByteString::from_static(names::REPLY_TO), format!("/reply-queue/{}", queue.name()));
                }
                _ => headers.push(name.clone(), value.clone()),
            }
        }
        Ok(headers)
    }

    /// This session's temporary queue `name`, created and subscribed (id `/temp-queue/<name>`,
    /// auto ack) on first use, RabbitMQ style.
    async fn temp_queue(&mut self, name: &str) -> Result<QueueHandle, StompError> {
        if let Some(queue) = self.temp_queues.get(name) {
            return Ok(queue.clone());
        }
        let queue = self.create_temp_queue(name)?;
        let id = ByteString::from(format!("/temp-queue/{name}"));
        if !self.by_id.contains_key(&id) {
            let credit = (self.config.default_prefetch_auto, self.config.consumer_window_bytes);
            self.attach_queue(id, AckMode::Auto, queue.clone(), credit, None, SubscribeFeatures::default()).await?;
        }
        Ok(queue)
    }

    /// Creates this session's temporary queue `name`: at most `max_subscriptions_per_connection`
    /// of them, since they do not count toward `max_queues`.
    fn create_temp_queue(&mut self, name: &str) -> Result<QueueHandle, StompError> {
        if self.temp_queues.len() >= self.config.max_subscriptions {
            return Err(StompError::limit(
                "temporary queues per connection",
                self.config.max_subscriptions,
                "max_subscriptions_per_connection",
            ));
        }
        let queue = self
            .router
            .temporary_queue_for(&format!("reply-{}-{}", self.id, name), &self.id)
            .map_err(|_| reply_queue_denied(name))?;
        self.temp_queues.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }

    /// The user name quotas and ownership go by (`None` for an anonymous client).
    fn user(&self) -> Option<&str> {
        self.principal.as_ref().and_then(|p| p.name.as_deref())
    }

    /// Whether the principal may read `topic` (a topic name without `/topic/`).
    fn may_read_topic(&self, topic: &str) -> bool {
        self.authorize(Operation::Read, &format!("/topic/{topic}")).is_ok()
    }

    async fn subscribe(&mut self, frame: &Frame) -> Result<(), StompError> {
        let destination_value = frame
            .header(names::DESTINATION)
            .ok_or_else(|| StompError::missing_header(Command::Subscribe, names::DESTINATION))?;
        let id = match frame.headers.get_shared(names::ID) {
            // Copied out: the decoded value is a slice of the read buffer the frame arrived in,
            // and a subscription lives for the whole connection; keeping the slice would keep
            // that whole buffer alive for every idle subscriber.
            Some(id) => ByteString::from(id.to_string()),
            // STOMP 1.0 made the id optional; the destination then names the subscription.
            None if self.version == Version::V1_0 => ByteString::from(destination_value.to_owned()),
            None => return Err(StompError::missing_header(Command::Subscribe, names::ID)),
        };
        // The id is echoed in every MESSAGE's `subscription` header: one that a subscriber's
        // version could not carry would silently go missing there.
        refuse_control_characters(names::ID, &id)?;
        if self.by_id.contains_key(&id) {
            return Err(StompError::new(
                format!("subscription id {id:?} is already in use"),
                "Subscription ids must be unique within a connection; UNSUBSCRIBE the old one first.",
            ));
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return Err(StompError::limit(
                "subscriptions per connection",
                self.config.max_subscriptions,
                "max_subscriptions_per_connection",
            ));
        }
        let ack = AckMode::parse(frame.header(names::ACK))?;
        let destination = Destination::parse(destination_value).map_err(destination_error)?;
        self.router.check_clustered(&destination)?;
        self.authorize(Operation::Read, destination_value)?;
        let features = SubscribeFeatures::read(frame)?;
        if features.browser && matches!(destination, Destination::Topic(_)) {
            return Err(StompError::new(
                "invalid browser header: topics cannot be browsed",
                format!(
                    "browser:true browses a queue's waiting messages; {destination_value} is a topic, which keeps none."
                ),
            ));
        }
        let queue = match destination {
            Destination::Topic(name) => match self.durable_name(frame, &id) {
                Some(durable) => {
                    refuse_control_characters("durable subscription name", &durable)?;
                    if features.selector.is_some() {
                        // Its queue would keep every unmatched message until it filled up: the
                        // selector belongs with the stored subscription, which does not keep one.
                        return Err(StompError::new(
                            "invalid selector header: not supported on a durable subscription",
                            "A durable topic subscription cannot have a selector yet; subscribe without one, or use a non-durable subscription or a queue.",
                        ));
                    }
                    let queue = self
                        .router
                        .durable_subscription(&durable, &name, self.user())
                        .await
                        .map_err(|e| durable_error(e, &durable))?;
                    let credit = (self.prefetch(frame, ack)?, self.window_bytes(frame)?);
                    return self.attach_queue(id, ack, queue, credit, Some(durable), features).await;
                }
                None => {
                    let key = self.next_subscription_key();
                    let sink = Sink::Connection {
                        subscription: key,
                        outbox: Arc::clone(&self.outbox),
                        policy: self.config.slow_consumer_policy,
                    };
                    let selector = features.selector;
                    let subscriber = Arc::new(TopicSubscriber { id: self.router.next_id(), sink, selector });
                    let registration = self.router.subscribe_topic(&name, subscriber).await?;
                    self.insert_subscription(key, id, ack, Target::Topic(registration), None);
                    return Ok(());
                }
            },
            Destination::Queue(name) => self.router.client_queue(name, self.user())?,
            Destination::ExistingQueue(name) => self.router.queue(name).ok_or_else(|| not_found(destination_value))?,
            Destination::ReplyQueue(name) => {
                // Only the connection that created a temporary queue may consume it.
                match self.temp_queues.values().find(|q| &**q.name() == name) {
                    Some(queue) => queue.clone(),
                    None => return Err(reply_queue_denied(name)),
                }
            }
            Destination::TempQueue(name) => match self.temp_queues.get(name) {
                Some(queue) => queue.clone(),
                None => self.create_temp_queue(name)?,
            },
        };
        if let Some(ttl) = frame.header("x-message-ttl") {
            queue.set_default_ttl(milliseconds("x-message-ttl", ttl)?).await?;
        }
        if features.browser {
            return self.browse(id, ack, queue, destination_value, features.selector).await;
        }
        let credit = (self.prefetch(frame, ack)?, self.window_bytes(frame)?);
        self.attach_queue(id, ack, queue, credit, None, features).await
    }

    /// A queue browser: the queue sends copies of its waiting messages, then Apollo's end
    /// marker, an empty MESSAGE with `browser:end`; rendering that ends the subscription.
    async fn browse(
        &mut self,
        id: ByteString,
        ack: AckMode,
        queue: QueueHandle,
        destination: &str,
        selector: Option<Arc<crate::destination::selector::Selector>>,
    ) -> Result<(), StompError> {
        let key = self.next_subscription_key();
        let headers: Headers = [(names::DESTINATION, destination), ("browser", "end")].into_iter().collect();
        let end = Arc::new(MessageTemplate::new(headers, bytes::Bytes::new()));
        self.insert_subscription(key, id, ack, Target::Browse { end: Arc::clone(&end) }, None);
        let outbox = Arc::clone(&self.outbox);
        let end_id = self.router.next_message_id();
        queue.browse(Browse { subscription: key, outbox, selector, end, end_id }).await?;
        Ok(())
    }

    /// The name of the durable subscription a SUBSCRIBE to a topic asks for, if it asks for one.
    ///
    /// ActiveMQ and Artemis clients name it with `client-id` on CONNECT plus
    /// `activemq.subscriptionName` (or Artemis's `durable-subscription-name` /
    /// `durable-subscriber-name`); RabbitMQ clients mark the SUBSCRIBE `durable:true` (or
    /// `persistent:true`) and the subscription is named by `x-queue-name` or its `id`.
    fn durable_name(&self, frame: &Frame, id: &str) -> Option<String> {
        let named = ["durable-subscription-name", "durable-subscriber-name", "activemq.subscriptionName"]
            .iter()
            .find_map(|h| frame.header(h));
        if let Some(name) = named {
            return Some(format!("{}/{}", self.client_id.as_deref().unwrap_or(""), name));
        }
        let flagged = frame.header("durable") == Some("true") || frame.header(names::PERSISTENT) == Some("true");
        let auto_delete = frame.header("auto-delete") == Some("true");
        if flagged && !auto_delete {
            return Some(match frame.header("x-queue-name") {
                Some(queue_name) => queue_name.to_owned(),
                None => format!("{id}@{}", frame.header(names::DESTINATION).unwrap_or("")),
            });
        }
        None
    }

    /// The prefetch a subscription asked for, in any of the dialects clients send: RabbitMQ's
    /// `prefetch-count`, ActiveMQ's `activemq.prefetchSize` (messages), Artemis's
    /// `consumer-window-size` (bytes, handled by [`Session::window_bytes`]).
    fn prefetch(&self, frame: &Frame, ack: AckMode) -> Result<u32, StompError> {
        let asked =
            ["prefetch-count", "activemq.prefetchSize"].iter().find_map(|name| frame.header(name).map(|v| (*name, v)));
        let default =
            if ack == AckMode::Auto { self.config.default_prefetch_auto } else { self.config.default_prefetch_client };
        let prefetch = match asked {
            None => default,
            Some((name, value)) => match value.trim().parse::<i64>() {
                Ok(n) if n <= 0 => self.config.max_unacked_per_consumer,
                Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
                // A number too large for any counter asks for as many as allowed, like 0 does.
                Err(error) if is_overflow(&error) => self.config.max_unacked_per_consumer,
                Err(_) => {
                    return Err(StompError::new(
                        format!("invalid {name} {value:?}"),
                        format!("{name} must be a whole number of messages."),
                    ));
                }
            },
        };
        Ok(prefetch.clamp(1, self.config.max_unacked_per_consumer.max(1)))
    }

    /// Artemis's `consumer-window-size`: bytes, capped by `consumer_window_bytes`; -1 (or any
    /// negative number, or one too large to count) means as many as allowed.
    fn window_bytes(&self, frame: &Frame) -> Result<usize, StompError> {
        const NAME: &str = "consumer-window-size";
        let Some(value) = frame.header(NAME) else { return Ok(self.config.consumer_window_bytes) };
        Ok(match value.trim().parse::<i64>() {
            Ok(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX).min(self.config.consumer_window_bytes),
            // 0 means one message at a time: the first message is always allowed.
            Ok(0) => 1,
            Ok(_) => self.config.consumer_window_bytes,
            Err(error) if is_overflow(&error) => self.config.consumer_window_bytes,
            Err(_) => {
                return Err(StompError::new(
                    format!("invalid {NAME} {value:?}"),
                    format!("{NAME} must be a whole number of bytes."),
                ));
            }
        })
    }

    async fn attach_queue(
        &mut self,
        id: ByteString,
        ack: AckMode,
        queue: QueueHandle,
        credit: (u32, usize),
        durable: Option<String>,
        features: SubscribeFeatures,
    ) -> Result<(), StompError> {
        let key = self.next_subscription_key();
        let consumer = self.router.next_id();
        let (prefetch, window_bytes) = credit;
        let outbox = Arc::clone(&self.outbox);
        let SubscribeFeatures { selector, priority, exclusive, .. } = features;
        let attached =
            Consumer { priority, exclusive, selector, ..Consumer::new(consumer, key, outbox, prefetch, window_bytes) };
        queue.add_consumer(attached).await?;
        self.insert_subscription(key, id, ack, Target::Queue { queue, consumer }, durable);
        Ok(())
    }

    fn next_subscription_key(&mut self) -> u64 {
        let key = self.next_subscription;
        self.next_subscription += 1;
        key
    }

    fn insert_subscription(&mut self, key: u64, id: ByteString, ack: AckMode, target: Target, durable: Option<String>) {
        self.by_id.insert(id.clone(), key);
        let subscription = Subscription { id, ack, target, pending: VecDeque::new(), durable };
        self.subscriptions.insert(key, Box::new(subscription));
    }

    /// UNSUBSCRIBE. For a durable subscription it only detaches, unless the frame asks to
    /// delete it the way its client's broker would: RabbitMQ clients repeat `durable:true`
    /// (or `persistent:true`), ActiveMQ and Artemis clients name it with
    /// `activemq.subscriptionName` / `durable-subscription-name` (which also works without
    /// being subscribed, to remove a subscription left from an earlier connection).
    async fn unsubscribe(&mut self, frame: &Frame) -> Result<(), StompError> {
        let key = match frame.headers.get_shared(names::ID) {
            Some(id) => self.by_id.get(id).copied(),
            None if self.version == Version::V1_0 => {
                frame.header(names::DESTINATION).and_then(|d| self.by_id.get(d).copied())
            }
            None if self.named_durable(frame).is_some() => None,
            None => return Err(StompError::missing_header(Command::Unsubscribe, names::ID)),
        };
        let delete = frame.header("durable") == Some("true") || frame.header(names::PERSISTENT) == Some("true");
        let Some(key) = key else {
            if let Some(id) = frame.headers.get_shared(names::ID)
                && let Some(position) = self.ended_browsers.iter().position(|ended| ended == id)
            {
                self.ended_browsers.remove(position);
                return Ok(());
            }
            if let Some(name) = self.named_durable(frame) {
                self.delete_durable(&name).await?;
                return Ok(());
            }
            return Err(StompError::new(
                "unknown subscription",
                format!(
                    "UNSUBSCRIBE names subscription {:?}, which does not exist on this connection.",
                    frame.header(names::ID).or(frame.header(names::DESTINATION)).unwrap_or("")
                ),
            ));
        };
        let durable = self.subscriptions.get(&key).and_then(|s| s.durable.clone());
        self.detach(key).await;
        if let Some(name) = durable
            && (delete || self.named_durable(frame).is_some())
        {
            self.delete_durable(&name).await?;
        }
        Ok(())
    }

    /// Deletes durable subscription `name` if this principal owns it.
    async fn delete_durable(&self, name: &str) -> Result<(), StompError> {
        self.router
            .delete_durable_subscription(name, self.user(), |topic| self.may_read_topic(topic))
            .await
            .map(drop)
            .map_err(|e| durable_error(e, name))
    }

    /// The durable subscription an UNSUBSCRIBE names in the ActiveMQ/Artemis dialect.
    fn named_durable(&self, frame: &Frame) -> Option<String> {
        ["durable-subscription-name", "durable-subscriber-name", "activemq.subscriptionName"]
            .iter()
            .find_map(|h| frame.header(h))
            .map(|name| format!("{}/{}", self.client_id.as_deref().unwrap_or(""), name))
    }

    async fn detach(&mut self, key: u64) {
        let Some(subscription) = self.subscriptions.remove(&key) else { return };
        self.by_id.remove(&subscription.id);
        for pending in &subscription.pending {
            self.ack_owner.remove(&pending.ack_id);
        }
        match subscription.target {
            Target::Topic(registration) => self.router.unsubscribe_topic(&registration),
            Target::Queue { queue, consumer } => {
                // Unacknowledged messages go back to the queue for other consumers.
                let _ = queue.remove_consumer(consumer).await;
            }
            Target::Browse { .. } => {}
        }
    }

    async fn ack_or_buffer(&mut self, frame: &Frame) -> Result<(), StompError> {
        if !frame.headers.contains(names::ID) && !frame.headers.contains(names::MESSAGE_ID) {
            return Err(StompError::new(
                format!("{} frame names no message", frame.command),
                format!(
                    "{} must carry 'id' (the MESSAGE's ack header, STOMP 1.2) or 'message-id' (with 'subscription' in STOMP 1.1).",
                    frame.command
                ),
            ));
        }
        if self.buffer_in_transaction(frame)? {
            return Ok(());
        }
        self.ack(frame).await;
        Ok(())
    }

    /// Finds which pending deliveries an ACK/NACK covers and settles them with their queue.
    async fn ack(&mut self, frame: &Frame) {
        let outcome = match frame.command {
            Command::Ack => Outcome::Ack,
            _ if frame.header("requeue") == Some("false") => Outcome::Reject,
            _ => Outcome::Requeue,
        };
        let Some((key, position)) = self.find_pending(frame) else {
            debug!(session = %self.id, "{} for a message that is not pending; ignored", frame.command);
            return;
        };
        let Some(subscription) = self.subscriptions.get_mut(&key) else {
            return;
        };
        let covered: Vec<Pending> = match subscription.ack {
            AckMode::Client => subscription.pending.drain(..=position).collect(),
            _ => subscription.pending.remove(position).into_iter().collect(),
        };
        for pending in &covered {
            self.ack_owner.remove(&pending.ack_id);
        }
        if let Target::Queue { queue, consumer } = &subscription.target {
            let messages = covered.iter().map(|p| p.message_id).collect();
            let _ = queue.settle(*consumer, messages, outcome);
        }
    }

    fn find_pending(&self, frame: &Frame) -> Option<(u64, usize)> {
        let position_of = |key: u64, matches: &dyn Fn(&Pending) -> bool| {
            self.subscriptions.get(&key).and_then(|s| s.pending.iter().position(matches)).map(|p| (key, p))
        };
        if let Some(ack_id) = frame.header(names::ID).and_then(|v| v.parse::<u64>().ok())
            && let Some(&key) = self.ack_owner.get(&ack_id)
            && let Some(found) = position_of(key, &|p| p.ack_id == ack_id)
        {
            return Some(found);
        }
        // 1.1 and 1.0 forms (and 1.2 clients that put the message-id in `id`).
        let message_id = frame.header(names::MESSAGE_ID).or(frame.header(names::ID))?.parse::<u64>().ok()?;
        let candidates: Vec<u64> = match frame.header(names::SUBSCRIPTION).and_then(|s| self.by_id.get(s)) {
            Some(&key) => vec![key],
            None => self.subscriptions.keys().copied().collect(),
        };
        candidates.into_iter().find_map(|key| position_of(key, &|p| p.message_id == message_id))
    }

    fn begin(&mut self, frame: &Frame) -> Result<(), StompError> {
        let tx = frame
            .headers
            .get_shared(names::TRANSACTION)
            .ok_or_else(|| StompError::missing_header(Command::Begin, names::TRANSACTION))?;
        if self.transactions.contains_key(tx) {
            return Err(StompError::new(
                format!("transaction {tx:?} already begun"),
                "Transaction ids must be unique among the open transactions of a connection.",
            ));
        }
        if self.transactions.len() >= self.config.max_transactions {
            return Err(StompError::limit(
                "open transactions per connection",
                self.config.max_transactions,
                "max_transactions_per_connection",
            ));
        }
        self.transactions.insert(tx.clone(), Transaction::default());
        Ok(())
    }

    fn take_transaction(&mut self, frame: &Frame) -> Result<Vec<Frame>, StompError> {
        let tx = frame
            .headers
            .get_shared(names::TRANSACTION)
            .ok_or_else(|| StompError::missing_header(frame.command, names::TRANSACTION))?;
        let taken = self.transactions.remove(tx);
        if let Some(transaction) = &taken {
            self.transaction_bytes -= transaction.bytes;
        }
        taken.map(|t| t.frames).ok_or_else(|| {
            StompError::new(
                format!("unknown transaction {tx:?}"),
                format!("{} names transaction {tx:?}, which is not open on this connection.", frame.command),
            )
        })
    }

    async fn commit(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<(), StompError> {
        for buffered in self.take_transaction(frame)? {
            match buffered.command {
                Command::Send => self.send(&buffered, replies).await.map(drop).map_err(|e| e.for_frame(frame))?,
                _ => self.ack(&buffered).await,
            }
        }
        Ok(())
    }

    fn abort(&mut self, frame: &Frame) -> Result<(), StompError> {
        self.take_transaction(frame).map(drop)
    }

    /// Writes one delivery into `dst`, recording what the client must acknowledge. Returns the
    /// acknowledgement the connection must send once the bytes are written, for `ack:auto`
    /// queue subscriptions. Deliveries for subscriptions that no longer exist are skipped.
    pub fn render(&mut self, delivery: Delivery, dst: &mut BytesMut) -> Option<AutoAck> {
        let subscription = self.subscriptions.get_mut(&delivery.subscription)?;
        let ends_browse =
            matches!(&subscription.target, Target::Browse { end } if Arc::ptr_eq(end, &delivery.template));
        let mut message_id = itoa::Buffer::new();
        let message_id_text = message_id.format(delivery.message_id);
        let mut ack_text = itoa::Buffer::new();
        let mut per_delivery: [(&str, &str); 4] = [("", ""); 4];
        per_delivery[0] = (names::SUBSCRIPTION, &subscription.id);
        per_delivery[1] = (names::MESSAGE_ID, message_id_text);
        let mut count = 2;
        let mut auto_ack = None;
        if subscription.ack == AckMode::Auto {
            auto_ack = delivery.from_queue.map(|from| AutoAck { from, message_id: delivery.message_id });
        } else {
            let ack_id = self.next_ack;
            self.next_ack += 1;
            per_delivery[count] = (names::ACK, ack_text.format(ack_id));
            count += 1;
            if delivery.from_queue.is_some() {
                subscription.pending.push_back(Pending { ack_id, message_id: delivery.message_id });
                self.ack_owner.insert(ack_id, delivery.subscription);
            }
        }
        if delivery.redelivered {
            per_delivery[count] = (names::REDELIVERED, "true");
            count += 1;
        }
        delivery.template.write_to(self.version, &per_delivery[..count], dst);
        if ends_browse && let Some(ended) = self.subscriptions.remove(&delivery.subscription) {
            self.by_id.remove(&ended.id);
            if self.ended_browsers.len() >= ENDED_BROWSERS_REMEMBERED {
                self.ended_browsers.pop_front();
            }
            self.ended_browsers.push_back(ended.id);
        }
        auto_ack
    }

    /// Releases everything the session holds: subscriptions (unacknowledged queue messages are
    /// redelivered to other consumers), open transactions (aborted), temporary queues (deleted).
    pub async fn close(&mut self) {
        self.outbox.close();
        self.transactions.clear();
        let keys: Vec<u64> = self.subscriptions.keys().copied().collect();
        for key in keys {
            self.detach(key).await;
        }
        for (_, queue) in self.temp_queues.drain() {
            self.router.delete_temporary_queue(queue.name(), &self.id).await;
        }
        self.release_client_id();
    }

    fn release_client_id(&mut self) {
        if let Some(client_id) = self.claimed_client_id.take() {
            self.router.release_client_id(&client_id);
        }
    }
}

fn not_found(destination: &str) -> StompError {
    StompError::new(
        format!("not_found: no queue {destination:?}"),
        format!(
            "{destination} names a queue that does not exist. /amq/queue/ only addresses existing queues; use /queue/ to create it on first use."
        ),
    )
}

/// Refuses a client-chosen name that contains control characters (LF, CR, NUL, ...): such a
/// name cannot be echoed safely in headers of every version, nor shown in logs as it is.
fn refuse_control_characters(what: &str, value: &str) -> Result<(), StompError> {
    if value.chars().any(char::is_control) {
        return Err(StompError::new(
            format!("invalid {what}: it contains control characters"),
            format!("The {what} may not contain control characters (line feed, carriage return, NUL, ...)."),
        ));
    }
    Ok(())
}

fn reply_queue_denied(name: &str) -> StompError {
    StompError::of_kind(
        ErrorKind::Authorization,
        format!("access denied - read (subscribe) on /reply-queue/{name}"),
        "A temporary or reply queue can only be consumed by the connection that created it; holding its name lets you send a reply to it, never read it.",
    )
}

fn durable_error(error: DurableError, name: &str) -> StompError {
    match error {
        DurableError::AccessDenied => StompError::of_kind(
            ErrorKind::Authorization,
            format!("access denied - durable subscription {name:?}"),
            format!(
                "The durable subscription {name:?} belongs to another user (or, stored before owners were kept, is bound to a topic this SUBSCRIBE does not name); it was not changed."
            ),
        ),
        DurableError::Limit(limit) => limit.into(),
    }
}

fn destination_error(error: crate::destination::router::DestinationError) -> StompError {
    let text = error.to_string();
    StompError::new(text.clone(), text)
}

/// When a SEND's message expires: ActiveMQ's `expires` (absolute, ms since the epoch, 0 =
/// never) or RabbitMQ's `expiration` (a time to live in ms from now).
fn expiry(frame: &Frame, now: u64) -> Result<Option<u64>, StompError> {
    if let Some(value) = frame.header(names::EXPIRES) {
        let at = milliseconds(names::EXPIRES, value)?;
        return Ok((at != 0).then_some(at));
    }
    if let Some(value) = frame.header(names::EXPIRATION) {
        return Ok(Some(now.saturating_add(milliseconds(names::EXPIRATION, value)?)));
    }
    Ok(None)
}

/// A header counting milliseconds. A number too large for a u64 saturates (it means "in
/// practice never"); anything but digits is an ERROR naming the header.
fn milliseconds(name: &str, value: &str) -> Result<u64, StompError> {
    match value.trim().parse::<u64>() {
        Ok(ms) => Ok(ms),
        Err(error) if is_overflow(&error) => Ok(u64::MAX),
        Err(_) => Err(StompError::new(
            format!("invalid {name} header {value:?}"),
            format!("{name} must be a whole number of milliseconds."),
        )),
    }
}

/// Whether a number failed to parse only for being too large (or too negative) for its type.
fn is_overflow(error: &std::num::ParseIntError) -> bool {
    matches!(error.kind(), std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow)
}
