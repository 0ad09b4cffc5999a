//! The STOMP state machine for one client.
//!
//! A session takes decoded frames and produces replies (CONNECTED, RECEIPT) or a
//! [`StompError`]; it owns the client's subscriptions, the acknowledgements it still owes,
//! its open transactions and its temporary queues. It never touches a socket: the connection
//! task feeds it frames, writes what it returns, and asks it to render deliveries from the
//! outbox. That keeps every rule of the specification testable with frames in and frames out
//! (the unit tests in `tests` do exactly that).
//!
//! A frame goes through two stages. [`request`] reads it into a typed request, the one place
//! that looks at headers (and, through [`dialect`] and [`features`], at the spellings other
//! brokers' clients use); then the state machine ([`machine`]) acts on the request. Its parts
//! live beside it, one concern each:
//! - [`machine`]: the states (awaiting CONNECT, connected), negotiation and login, permission
//!   checks, the end of the session;
//! - [`send`]: SEND, routed to topics and queues, with the MESSAGE's headers;
//! - [`subscriptions`]: SUBSCRIBE and UNSUBSCRIBE, durable subscriptions, browsers and
//!   temporary queues;
//! - [`acks`]: rendering deliveries and what the client owes for them, ACK and NACK;
//! - [`transactions`]: BEGIN, COMMIT and ABORT, with their bounded buffers;
//! - [`resume`]: session resumption, parking a session whose connection broke until its client
//!   comes back with its token.

mod acks;
mod dialect;
mod features;
mod machine;
mod request;
mod resume;
mod scheduling;
mod send;
mod subscriptions;
#[cfg(test)]
mod tests;
mod transactions;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use stampede_protocol::heartbeat::{HeartBeat, Negotiated};
use stampede_protocol::{ByteString, Frame, Version, names};

use crate::destination::outbox::{Outbox, QueueDelivery, SlowConsumerPolicy};
use crate::destination::queue::{QueueHandle, Verdict};
use crate::destination::router::{DurableError, Router};
use crate::destination::vhost::VirtualHosts;
use crate::error::{ErrorKind, StompError};
use crate::http::metrics::Metrics;
use crate::security::auth::{Authenticator, Credentials, Principal};

pub use acks::AckMode;
pub use resume::{ResumeRegistry, ResumeSettings};
use subscriptions::Subscription;
use transactions::Transaction;

/// Headers of a MESSAGE that [`Session::render`] writes for each delivery. A SEND's own
/// entries with these names are never forwarded, so each appears exactly once, as the broker set
/// it.
const PER_DELIVERY_HEADERS: [&str; 6] =
    [names::SUBSCRIPTION, names::MESSAGE_ID, names::ACK, names::REDELIVERED, names::CONTENT_LENGTH, resume::RESUME_GAP];

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
    /// `max_delay_ms`: the furthest ahead a delayed SEND or a redelivery delay may be.
    pub max_delay_ms: u64,
    /// `max_delayed_topic_messages`: delayed topic messages a virtual host holds at most.
    pub max_delayed_topic_messages: usize,
    /// Detached sessions waiting to be resumed, and the tokens of connected ones.
    pub resume: Arc<ResumeRegistry>,
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
            max_delay_ms: crate::destination::delay::DEFAULT_MAX_DELAY_MS,
            max_delayed_topic_messages: crate::destination::delay::DEFAULT_MAX_DELAYED_TOPIC_MESSAGES,
            resume: ResumeRegistry::new(crate::Config::default().resume_settings()),
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
    /// The `session-resume-token` of this session, while it can be resumed.
    resume_token: Option<Box<str>>,
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
            resume_token: None,
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

    /// The outbox deliveries for this session go to (after a resumption, the resumed
    /// session's: the connection adopts it).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Deliveries the client has not yet acknowledged.
    pub fn pending_ack_count(&self) -> usize {
        self.ack_owner.len()
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
