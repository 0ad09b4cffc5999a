//! Queues: each message goes to exactly one consumer.
//!
//! A queue is an actor: one task owns its messages, its consumers and their credit, and the
//! deliveries not yet acknowledged. Everything else talks to it through a bounded mailbox, so a
//! publisher that outruns the queue waits on `send().await`, which stops that publisher's
//! connection from reading and pushes back on its TCP socket.
//!
//! Credit: a consumer may hold at most `prefetch` unacknowledged messages and, beyond the first,
//! at most `window_bytes` of them. Acknowledgement returns credit. For `ack:auto` subscriptions
//! the connection acknowledges a delivery as soon as it has written it to the socket, so even
//! auto-ack messages are never lost while they sit in an outbox: if the connection dies first,
//! they are redelivered.
//!
//! NACK semantics (brokers disagree, so ours are explicit): by default a NACKed message goes
//! back to the head of the queue and is redelivered with `redelivered:true`; `requeue:false`
//! sends it to the dead-letter queue `DLQ.<name>`, and so does reaching `max_deliveries`. A
//! message whose consumer goes away unacknowledged is redelivered to another consumer.
//!
//! Choosing a consumer: among the consumers with credit whose selector (if any) matches, the
//! highest priority wins, round-robin among equals. While an exclusive consumer is attached,
//! only one exclusive consumer (the active one) receives: the earliest attached of the highest
//! priority; the others stand by, and when the active one leaves, its unacknowledged messages
//! and the rest of the queue go to the next one chosen the same way. A newcomer never preempts
//! the active consumer.
//!
//! Selectors: a message no consumer's selector matches stays in the queue without holding up
//! later messages that do match. Dispatch looks at most [`SELECTOR_LOOKAHEAD`] messages past
//! the head for one, so its cost stays bounded however many unmatched messages wait: matching
//! messages behind more than that many unmatched ones wait until the head moves (it is consumed,
//! expires, or is dropped by the queue's limits). A consumer that wants a message but lacks the
//! credit for it takes nothing further in that pass, so each consumer still sees the queue's
//! order.
//!
//! Browsing: a browser gets a copy of the waiting messages (matching its selector, if any) as they
//! stand when its request reaches the actor, without taking them, then the end marker the
//! session chose (Apollo's empty MESSAGE with `browser:end`).
//!
//! Durability: persistent messages of a durable queue are appended to the [`Store`] before the
//! publisher is told they were accepted. The actor gathers everything one batch of commands
//! produced (appends, removals after acks, delivery counts) into a single submission, and the
//! store group-commits submissions from every queue, so an fsync covers many messages.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use stampede_protocol::{Headers, MessageTemplate, names};
use stampede_storage::{Op, QueueRecord, Store, StoredMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::destination::delay::{self, DelayHeap, RedeliveryPolicy};
use crate::destination::outbox::{Delivery, Outbox, QueueDelivery};
use crate::destination::selector::Selector;
use crate::error::{ErrorKind, StompError};
use crate::http::metrics::{DeadLetterReason, DropReason, Metrics};

/// Mailbox size of every queue actor.
const MAILBOX: usize = 1024;
/// Commands a queue handles before it dispatches (amortises dispatch and storage over bursts).
const COMMAND_BATCH: usize = 256;
/// How many messages past the head dispatch looks at for one that a consumer's selector
/// matches (see the module documentation). Only queues with a selective consumer look past the
/// head at all.
pub const SELECTOR_LOOKAHEAD: usize = 1000;

/// Readings kept per queue for its rates: one a second, so the rates span about five seconds.
pub const RATE_READINGS: usize = 6;
/// Indexes of the actor's counts.
const ACCEPTED: usize = 0;
const DELIVERED: usize = 1;
const ACKED: usize = 2;

/// Messages a queue accepted, delivered and had acknowledged since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Accepted (enqueued) messages.
    pub published: u64,
    /// Deliveries to consumers (redeliveries included).
    pub delivered: u64,
    /// Deliveries acknowledged.
    pub acked: u64,
}

/// A queue's message rates over the last few seconds, in messages per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct QueueRates {
    /// Accepted.
    pub publish: f64,
    /// Delivered.
    pub deliver: f64,
    /// Acknowledged.
    pub ack: f64,
}

/// The headers of `template` as a dead letter moved to `/queue/<target>`: its `destination`
/// becomes the dead-letter queue, the original goes to `x-original-destination`, and
/// `x-dead-letter-reason` says why (earlier dead-letter headers are replaced, not repeated).
/// Shared by local queues and the cluster engine's queues, so a DLQ looks the same on both.
pub(crate) fn dead_letter_headers(template: &MessageTemplate, target: &str, reason: DeadLetterReason) -> Headers {
    let mut headers = Headers::with_capacity(template.headers().len() + 2);
    for (name, value) in template.headers().iter_shared() {
        if name == names::DESTINATION {
            headers.push(names::DESTINATION, format!("/queue/{target}"));
            headers.push("x-original-destination", value.clone());
        } else if name != "x-dead-letter-reason" && name != "x-original-destination" {
            headers.push(name.clone(), value.clone());
        }
    }
    headers.push("x-dead-letter-reason", reason.as_str());
    headers
}

/// A message held by a queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Broker-wide unique id: the `message-id` header and the storage sequence number.
    pub id: u64,
    /// The shared encoding (headers include `destination`).
    pub template: Arc<MessageTemplate>,
    /// How many times it has been handed to a consumer.
    pub delivery_count: u32,
    /// Whether the publisher asked for `persistent:true`.
    pub persistent: bool,
    /// Expiry, in ms since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    /// When it was accepted, in ms since the Unix epoch.
    pub enqueued_at_ms: u64,
}

impl QueuedMessage {
    fn size(&self) -> usize {
        self.template.encoded_len_hint()
    }

    fn to_stored(&self) -> StoredMessage {
        StoredMessage {
            seq: self.id,
            headers: self.template.headers().clone(),
            body: self.template.body().clone(),
            delivery_count: self.delivery_count,
            expires_at_ms: self.expires_at_ms,
            enqueued_at_ms: self.enqueued_at_ms,
        }
    }

    /// Rebuilds a message read back from storage.
    pub fn from_stored(stored: StoredMessage) -> QueuedMessage {
        QueuedMessage {
            id: stored.seq,
            template: Arc::new(MessageTemplate::new(stored.headers, stored.body)),
            delivery_count: stored.delivery_count,
            persistent: true,
            expires_at_ms: stored.expires_at_ms,
            enqueued_at_ms: stored.enqueued_at_ms,
        }
    }
}

/// The due time a stored message of a delayed SEND carries (its `x-deliver-at` header), if it
/// is still ahead of `now`.
fn stored_due(message: &QueuedMessage, now: u64) -> Option<u64> {
    let at = message.template.headers().get(delay::DELIVER_AT)?.parse::<u64>().ok()?;
    (at > now).then_some(at)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What a consumer decided about delivered messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Consumed: forget it.
    Ack,
    /// Not consumed: redeliver (dead-letter once `max_deliveries` is reached).
    Requeue,
    /// Not consumed and not to be retried: dead-letter it.
    Reject,
    /// Not consumed, and the consumer's own delivery limit is reached (a webhook's
    /// `max_deliveries`): dead-letter it as `delivery-limit`, as the queue's own limit would.
    GiveUp,
}

/// What a full queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Refuse it: the publisher gets an ERROR (carrying its receipt-id if it asked for one).
    #[default]
    Reject,
    /// Make room by dropping the oldest waiting messages.
    DropOldest,
}

/// What happens to a message whose time to live has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpiredPolicy {
    /// Forget it.
    #[default]
    Drop,
    /// Move it to the dead-letter queue.
    DeadLetter,
}

/// Settings of one queue.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Deliveries after which a requeued message is dead-lettered instead; 0 = never.
    pub max_deliveries: u32,
    /// Prefix of the dead-letter queue's name (`DLQ.` gives `DLQ.<name>`).
    pub dead_letter_prefix: String,
    /// Most messages waiting (not counting unacknowledged ones).
    pub max_length: usize,
    /// Most bytes waiting.
    pub max_bytes: usize,
    /// The configuration key that set `max_length` (`queue_max_length`, or the queue's
    /// `[queues.<name>]` override), named in the ERROR of a full queue.
    pub max_length_key: String,
    /// The configuration key that set `max_bytes`.
    pub max_bytes_key: String,
    /// What a full queue does.
    pub overflow: OverflowPolicy,
    /// Time to live of messages that do not set one, in ms; 0 = forever.
    pub default_ttl_ms: u64,
    /// What happens to expired messages.
    pub expired: ExpiredPolicy,
    /// Waiting messages at which transient publishes wait for the consumers
    /// (`queue_flow_backlog`, see [`crate::destination::flow`]); 0 = never.
    pub flow_backlog: usize,
    /// Whether persistent messages go to storage (false for temporary queues).
    pub durable: bool,
    /// How long the queue may stay empty with no consumers before it is deleted, in ms
    /// (`queue_idle_expiry_ms`, RabbitMQ's `x-expires`); 0 = never.
    pub idle_expiry_ms: u64,
    /// The broker's counters (acks, redeliveries, dead letters, expiries, drops).
    pub metrics: Arc<Metrics>,
}

impl Default for QueueSettings {
    /// The settings of the default configuration (one source of defaults: [`Config::default`]).
    ///
    /// [`Config::default`]: crate::Config
    fn default() -> Self {
        crate::Config::default().queue_settings()
    }
}

/// A consumer as the queue sees it.
#[derive(Debug)]
pub struct Consumer {
    /// Broker-wide unique consumer id.
    pub id: u64,
    /// Session-local subscription key stamped on deliveries.
    pub subscription: u64,
    /// Where deliveries go.
    pub outbox: Arc<Outbox>,
    /// Most unacknowledged messages at once (at least 1).
    pub prefetch: u32,
    /// Most unacknowledged bytes at once (a single larger message is still delivered).
    pub window_bytes: usize,
    /// Higher goes first while it has credit (`x-priority`, `activemq.priority`); 0 by default.
    pub priority: i32,
    /// One active exclusive consumer per queue; the others stand by (`x-exclusive`,
    /// `activemq.exclusive`).
    pub exclusive: bool,
    /// Only messages this selects are delivered to this consumer (`selector`).
    pub selector: Option<Arc<Selector>>,
    /// What happens to its NACKed and abandoned messages, if it asked (`x-redelivery-delay`,
    /// `x-max-deliveries`, `x-dead-letter-queue`, …); the queue's settings otherwise.
    pub redelivery: Option<Arc<RedeliveryPolicy>>,
}

impl Consumer {
    /// A consumer without priority, exclusivity or selector.
    pub fn new(id: u64, subscription: u64, outbox: Arc<Outbox>, prefetch: u32, window_bytes: usize) -> Consumer {
        Consumer {
            id,
            subscription,
            outbox,
            prefetch,
            window_bytes,
            priority: 0,
            exclusive: false,
            selector: None,
            redelivery: None,
        }
    }
}

struct ConsumerState {
    consumer: Consumer,
    unacked: u32,
    unacked_bytes: usize,
    /// Its session is detached, waiting to be resumed: it keeps its place and its
    /// unacknowledged messages, and gets nothing new.
    paused: bool,
}

impl ConsumerState {
    fn has_credit_for(&self, size: usize) -> bool {
        !self.paused
            && self.unacked < self.consumer.prefetch
            && (self.unacked == 0 || self.unacked_bytes + size <= self.consumer.window_bytes)
    }

    fn wants(&self, message: &QueuedMessage) -> bool {
        self.consumer.selector.as_ref().is_none_or(|selector| selector.matches(message.template.headers()))
    }
}

/// A request to browse a queue: copies of its waiting messages, then `end`.
#[derive(Debug)]
pub struct Browse {
    /// Session-local subscription key stamped on the copies.
    pub subscription: u64,
    /// Where the copies go.
    pub outbox: Arc<Outbox>,
    /// Only messages this selects are copied.
    pub selector: Option<Arc<Selector>>,
    /// The frame that ends the browse, pushed after the copies.
    pub end: Arc<MessageTemplate>,
    /// The `message-id` of the end frame.
    pub end_id: u64,
}

/// The queue's verdict on a published message, sent once it is accepted (and, if persistent,
/// durable) or refused.
pub type Verdict = oneshot::Receiver<Result<(), StompError>>;
pub(crate) type VerdictSender = oneshot::Sender<Result<(), StompError>>;

/// What a queue's mailbox carries (crate-visible for the cluster's queue actor, which serves
/// the same mailbox from JetStream).
pub(crate) enum Command {
    Publish {
        message: QueuedMessage,
        verdict: Option<VerdictSender>,
        /// Held until this time (ms since the epoch) before it joins the queue.
        deliver_at: Option<u64>,
    },
    AddConsumer(Consumer),
    Browse(Browse),
    RemoveConsumer {
        consumer: u64,
    },
    SetDefaultTtl(u64),
    /// Session resumption: a detached session's consumer gets nothing new.
    Pause {
        consumer: u64,
    },
    /// Session resumption: the consumer's session is back; every message it holds
    /// unacknowledged is delivered again (`redelivered:true`), in order, before anything new.
    Resume {
        consumer: u64,
    },
    /// Management: drop every waiting message (unacknowledged ones stay). `done` gets how many
    /// at once, `stored` resolves once their removal is on disk.
    Purge {
        done: oneshot::Sender<usize>,
        stored: VerdictSender,
    },
    /// Management: copies of the first `count` waiting messages, taking nothing.
    Peek {
        count: usize,
        reply: oneshot::Sender<Vec<QueuedMessage>>,
    },
    /// Management: drop the waiting messages with these ids (moved elsewhere), answer how many.
    RemoveWaiting {
        ids: Vec<u64>,
        done: oneshot::Sender<usize>,
    },
    Shutdown {
        forget: bool,
        done: oneshot::Sender<()>,
    },
    /// Management: delete the queue (stop, forget its stored messages) unless, as the actor sees
    /// it when the command comes up, it holds messages (`if_empty`) or has consumers
    /// (`if_unused`). Checked by the actor, in order with publishes, so a message it accepted
    /// (and receipted) is never deleted by an `if-empty` that looked a moment too early.
    DeleteIf {
        if_empty: bool,
        if_unused: bool,
        done: oneshot::Sender<Result<(), DeleteRefused>>,
    },
    /// Makes the actor panic, to test its supervision.
    #[cfg(test)]
    Panic,
}

/// Why a conditional delete ([`QueueHandle::delete_if`]) left the queue alone.
#[derive(Debug, thiserror::Error)]
pub enum DeleteRefused {
    /// `if-empty`, and the queue holds messages.
    #[error("queue {name} is not empty ({ready} ready, {unacked} unacknowledged) and if-empty was given")]
    NotEmpty {
        /// The queue.
        name: Arc<str>,
        /// Messages waiting.
        ready: usize,
        /// Messages delivered, not yet acknowledged.
        unacked: usize,
    },
    /// `if-unused`, and the queue has consumers.
    #[error("queue {name} has {consumers} consumers and if-unused was given")]
    InUse {
        /// The queue.
        name: Arc<str>,
        /// Consumers attached.
        consumers: usize,
    },
    /// The queue was already gone.
    #[error("{0}")]
    Gone(#[from] QueueGone),
}

/// What the actor answers once it has stopped.
enum Stopped {
    Shutdown(oneshot::Sender<()>),
    Deleted(oneshot::Sender<Result<(), DeleteRefused>>),
}

impl Stopped {
    fn answer(self) {
        match self {
            Stopped::Shutdown(done) => drop(done.send(())),
            Stopped::Deleted(done) => drop(done.send(Ok(()))),
        }
    }
}

/// Acks and nacks of delivered messages: (consumer, message ids, outcome).
pub(crate) type Settlement = (u64, Vec<u64>, Outcome);

/// Shared between the handle and the actor, for observation without a round trip.
#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    depth: AtomicUsize,
    /// Messages held for a later time (delayed sends and delayed redeliveries).
    delayed: AtomicUsize,
    unacked: AtomicUsize,
    consumers: AtomicUsize,
    dropped: AtomicU64,
    /// Producer flow control: transient publishes wait for consumers that fall behind.
    flow: crate::destination::flow::FlowGate,
    /// Whether persistent messages go to the store.
    durable: bool,
    /// The outboxes of the consumers attached now, so that if the actor panics (and its state
    /// is lost) their connections can still be told.
    consumer_outboxes: Mutex<Vec<(u64, Weak<Outbox>)>>,
    /// Commands sent to the mailbox whose effect is not yet visible in the counters above. At
    /// zero, no message or consumer can be hiding in the mailbox or in the batch the actor is
    /// handling: what [`QueueHandle::idle_for_expiry`] relies on.
    in_flight: AtomicUsize,
    /// How long this queue may stay idle (empty, no consumers) before it is deleted, in ms
    /// (`queue_idle_expiry_ms`, `[queues.<name>] idle_expiry_ms`, or `x-expires` on SUBSCRIBE);
    /// 0 = never.
    idle_expiry_ms: AtomicU64,
    /// Since when (ms since the epoch) the queue has been idle; 0 while it is not.
    idle_since_ms: AtomicU64,
    /// Messages accepted, delivered and acknowledged since the queue started, as of the last
    /// batch (the actor counts in plain integers and stores them once per batch).
    counts: [AtomicU64; 3],
    /// The last few readings of `counts`, one per [`crate::http::rates::SAMPLE_INTERVAL`],
    /// for the API's per-queue rates; taken by the rates sampler, never by the actor.
    readings: Mutex<VecDeque<(std::time::Instant, [u64; 3])>>,
    /// Settlements travel apart from the mailbox and are applied before it. A settlement gives
    /// a consumer its credit back; in the mailbox it would wait behind publishes whenever
    /// producers outpace consumers, and the consumer's connection, blocked on that send, would
    /// stop taking deliveries: the queue would settle into a backlog at a fraction of its rate.
    /// Unbounded, yet bounded by credit: a session settles only deliveries it holds as pending,
    /// and each consumer holds at most its prefetch of those.
    settlements: mpsc::UnboundedSender<Settlement>,
}

impl Shared {
    fn fail_consumers(&self) {
        let outboxes = std::mem::take(&mut *self.consumer_outboxes.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, outbox) in outboxes {
            if let Some(outbox) = outbox.upgrade() {
                outbox.fail();
            }
        }
    }
}

/// The text of a panic's payload, for the log.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic without a message".to_owned(),
    }
}

/// A cheap, cloneable handle to a queue actor.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
    mailbox: mpsc::Sender<Command>,
}

/// The queue actor has stopped (the queue was deleted or the broker is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("queue {0} is no longer available")]
pub struct QueueGone(pub Arc<str>);

impl From<QueueGone> for StompError {
    fn from(gone: QueueGone) -> StompError {
        StompError::of_kind(
            ErrorKind::Internal,
            gone.to_string(),
            "The queue was deleted or the broker is shutting down.",
        )
    }
}

/// Why a purge did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The queue stopped first.
    #[error(transparent)]
    Gone(#[from] QueueGone),
    /// The messages are gone from the queue but their removal could not be stored, so a
    /// restart may bring them back.
    #[error("{0}")]
    NotStored(String),
}

/// Where a queue keeps persistent messages.
#[derive(Clone)]
pub struct Persistence {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The queue's name in the store.
    pub key: String,
    /// The queue's stored definition (owner, virtual host, kind), rewritten with the queue's
    /// settings when they change.
    pub record: QueueRecord,
    /// The store's disk alarm: while it is raised, persistent messages are refused.
    pub disk: Option<Arc<stampede_storage::DiskWatermark>>,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence").field("key", &self.key).finish_non_exhaustive()
    }
}

/// What a queue needs from whoever owns it (the router of its virtual host). An interface, so
/// that a queue actor can be built and tested without a router.
pub trait QueueOwner: Send + Sync {
    /// The queue that dead-lettered messages of this virtual host named `name` go to, created
    /// if needed (`None` when the owner is shutting down).
    fn dead_letter_queue(&self, name: &str) -> Option<QueueHandle>;

    /// The actor of the queue identified by `queue` ([`QueueHandle::id`]), stored as
    /// `stored_as` if it is durable, panicked: restart it from its stored state, or remove it.
    fn queue_failed(&self, queue: usize, stored_as: Option<String>);
}

/// What a queue actor is started with besides its settings: who owns it, and the tracker its
/// tasks (the actor itself and its dead-letter moves) run on, so shutdown can wait for them.
#[derive(Clone)]
pub struct QueueEnvironment {
    /// The owner.
    pub owner: Weak<dyn QueueOwner>,
    /// Where the actor's tasks are started.
    pub tasks: TaskTracker,
}

impl std::fmt::Debug for QueueEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueEnvironment").finish_non_exhaustive()
    }
}

impl QueueHandle {
    /// Starts the actor for queue `name`, holding `recovered` messages (in order) to begin with.
    ///
    /// The actor is supervised: if it panics, the panic is logged with the queue's name, every
    /// consumer's connection is ended with an ERROR, and the owner is told so that it restarts
    /// the queue from its stored messages (durable queues) or removes it (transient ones).
    pub fn spawn(
        name: Arc<str>,
        settings: QueueSettings,
        environment: &QueueEnvironment,
        persistence: Option<Persistence>,
        recovered: Vec<QueuedMessage>,
    ) -> QueueHandle {
        let (mailbox, inbox) = mpsc::channel(MAILBOX);
        let (settlements, settlement_inbox) = mpsc::unbounded_channel();
        let persistence = persistence.filter(|_| settings.durable);
        let durable = persistence.is_some();
        // Recovered messages stored with a due time still ahead wait for it again, even those a
        // salvage counted as delivered: never before their time.
        let now = now_ms();
        let (recovered, held): (Vec<QueuedMessage>, Vec<QueuedMessage>) =
            recovered.into_iter().partition(|message| stored_due(message, now).is_none());
        let mut delayed = DelayHeap::default();
        let mut delayed_bytes = 0;
        for message in held {
            delayed_bytes += message.size();
            delayed.push(stored_due(&message, now).unwrap_or(now), message.id, message);
        }
        let shared = Arc::new(Shared {
            name: Arc::clone(&name),
            depth: AtomicUsize::new(recovered.len()),
            delayed: AtomicUsize::new(delayed.len()),
            unacked: AtomicUsize::new(0),
            consumers: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            flow: crate::destination::flow::FlowGate::new(settings.flow_backlog, settings.max_length),
            durable,
            consumer_outboxes: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            idle_expiry_ms: AtomicU64::new(settings.idle_expiry_ms),
            idle_since_ms: AtomicU64::new(if recovered.is_empty() { now_ms().max(1) } else { 0 }),
            counts: Default::default(),
            // Counting starts at zero now, so a queue younger than the span has rates since then.
            readings: Mutex::new(VecDeque::from([(std::time::Instant::now(), [0; 3])])),
            settlements,
        });
        let ready_bytes = recovered.iter().map(QueuedMessage::size).sum();
        let stored_as = persistence.as_ref().map(|p| p.key.clone());
        let actor = QueueActor {
            shared: Arc::clone(&shared),
            persistence,
            settings,
            environment: environment.clone(),
            ready: recovered.into(),
            ready_bytes,
            delayed,
            delayed_bytes,
            unacked: FxHashMap::default(),
            consumers: Vec::new(),
            next_consumer: 0,
            active_exclusive: None,
            own_mailbox: mailbox.downgrade(),
            writes: Vec::new(),
            waiting_for_disk: Vec::new(),
            counts: [0; 3],
        };
        let supervised = {
            let shared = Arc::clone(&shared);
            let owner = environment.owner.clone();
            async move {
                let run = std::panic::AssertUnwindSafe(actor.run(inbox, settlement_inbox));
                if let Err(panic) = run.catch_unwind().await {
                    let reason = panic_text(&panic);
                    error!(queue = %shared.name, "queue actor panicked: {reason}; its consumers' connections are ended with an ERROR and the queue is restarted from its stored messages (or removed, if it kept none)");
                    shared.fail_consumers();
                    if let Some(owner) = owner.upgrade() {
                        owner.queue_failed(Arc::as_ptr(&shared) as usize, stored_as);
                    }
                }
            }
        };
        environment.tasks.spawn(supervised);
        QueueHandle { shared, mailbox }
    }

    /// Makes the actor panic (supervision tests).
    #[cfg(test)]
    pub(crate) async fn panic_for_test(&self) {
        let _ = self.command(Command::Panic).await;
    }

    /// Identifies this queue's actor: equal for every handle to the same actor.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// The queue name (without `/queue/`).
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// Messages waiting for a consumer (not counting unacknowledged ones).
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }

    /// Messages held for a later time: delayed sends and delayed redeliveries (as of the
    /// actor's last batch).
    pub fn delayed(&self) -> usize {
        self.shared.delayed.load(Ordering::Relaxed)
    }

    /// Consumers attached now.
    pub fn consumer_count(&self) -> usize {
        self.shared.consumers.load(Ordering::Relaxed)
    }

    /// Messages delivered and not yet settled (as of the actor's last batch).
    pub fn unacked(&self) -> usize {
        self.shared.unacked.load(Ordering::Relaxed)
    }

    /// Messages dropped so far (overflow or expiry).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// True when its persistent messages are stored.
    pub fn is_durable(&self) -> bool {
        self.shared.durable
    }

    /// Drops every waiting message (unacknowledged ones are not touched); returns how many,
    /// once their removal is on disk, so a purge that answered is not undone by a crash.
    pub async fn purge(&self) -> Result<usize, PurgeError> {
        let gone = || PurgeError::Gone(QueueGone(Arc::clone(&self.shared.name)));
        let (done, purged) = oneshot::channel();
        let (stored, on_disk) = oneshot::channel();
        self.command(Command::Purge { done, stored }).await?;
        let purged = purged.await.map_err(|_| gone())?;
        on_disk.await.map_err(|_| gone())?.map_err(|error| PurgeError::NotStored(error.detail))?;
        Ok(purged)
    }

    /// Copies of the first `count` waiting messages (expired ones skipped), in order. Nothing is
    /// taken, delivered or counted as a delivery.
    pub async fn peek(&self, count: usize) -> Result<Vec<QueuedMessage>, QueueGone> {
        let (reply, peeked) = oneshot::channel();
        self.command(Command::Peek { count, reply }).await?;
        peeked.await.map_err(|_| QueueGone(Arc::clone(&self.shared.name)))
    }

    /// Drops the waiting messages with ids `ids` (they were moved to another queue); returns
    /// how many it found.
    pub async fn remove_waiting(&self, ids: Vec<u64>) -> Result<usize, QueueGone> {
        let (done, removed) = oneshot::channel();
        self.command(Command::RemoveWaiting { ids, done }).await?;
        removed.await.map_err(|_| QueueGone(Arc::clone(&self.shared.name)))
    }

    async fn command(&self, command: Command) -> Result<(), QueueGone> {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let sent = self.mailbox.send(command).await;
        if sent.is_err() {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        sent.map_err(|_| QueueGone(Arc::clone(&self.shared.name)))
    }

    /// Messages accepted, delivered and acknowledged since the queue started.
    pub fn counts(&self) -> QueueCounts {
        let [published, delivered, acked] = self.shared.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        QueueCounts { published, delivered, acked }
    }

    /// Records the counts now, for [`QueueHandle::rates`] (the rates sampler calls it every
    /// second; the oldest reading beyond [`RATE_READINGS`] is dropped).
    pub fn take_rate_reading(&self, at: std::time::Instant) {
        let counts = self.shared.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        let mut readings = self.shared.readings.lock().unwrap_or_else(|p| p.into_inner());
        if readings.len() == RATE_READINGS {
            readings.pop_front();
        }
        readings.push_back((at, counts));
    }

    /// Messages per second accepted, delivered and acknowledged, between the oldest reading
    /// kept (about five seconds ago, or the queue's start) and the newest.
    pub fn rates(&self) -> QueueRates {
        let readings = self.shared.readings.lock().unwrap_or_else(|p| p.into_inner());
        let (Some((start, first)), Some((end, last))) = (readings.front(), readings.back()) else {
            return QueueRates::default();
        };
        let seconds = end.duration_since(*start).as_secs_f64();
        if seconds <= 0.0 {
            return QueueRates::default();
        }
        let rate = |i: usize| last[i].saturating_sub(first[i]) as f64 / seconds;
        QueueRates { publish: rate(0), deliver: rate(1), ack: rate(2) }
    }

    /// Since when (ms since the epoch) the queue has been empty with no consumers.
    pub fn idle_since_ms(&self) -> Option<u64> {
        Some(self.shared.idle_since_ms.load(Ordering::Relaxed)).filter(|&since| since != 0)
    }

    /// How long the queue may stay idle before it is deleted, in ms (`None`: forever).
    pub fn idle_expiry_ms(&self) -> Option<u64> {
        Some(self.shared.idle_expiry_ms.load(Ordering::Relaxed)).filter(|&ms| ms != 0)
    }

    /// Sets how long the queue may stay idle before it is deleted (`x-expires`); 0 = forever.
    pub fn set_idle_expiry_ms(&self, ms: u64) {
        self.shared.idle_expiry_ms.store(ms, Ordering::Relaxed);
    }

    /// True when the queue has been idle for its whole idle expiry at `now_ms` and nothing can
    /// change that unseen: no message waiting or unacknowledged, no consumer, no command in the
    /// mailbox or in the actor's hands, and no handle but this one (the owner's). The owner
    /// asks while holding the lock its handles are cloned under, so no new handle can appear
    /// between this answer and the queue's removal: a message can never be published to a
    /// queue that is being deleted.
    pub fn idle_for_expiry(&self, now_ms: u64) -> bool {
        let shared = &self.shared;
        let expiry = shared.idle_expiry_ms.load(Ordering::Relaxed);
        let since = shared.idle_since_ms.load(Ordering::Relaxed);
        expiry != 0
            && since != 0
            && now_ms.saturating_sub(since) >= expiry
            && self.mailbox.strong_count() == 1
            && shared.in_flight.load(Ordering::Acquire) == 0
            && shared.depth.load(Ordering::Acquire) == 0
            && shared.delayed.load(Ordering::Acquire) == 0
            && shared.unacked.load(Ordering::Acquire) == 0
            && shared.consumers.load(Ordering::Acquire) == 0
            && shared.idle_since_ms.load(Ordering::Acquire) == since
    }

    /// Enqueues a message. Returns once the queue's mailbox has taken it (so publishers are
    /// slowed by a busy queue), with a [`Verdict`] that resolves when the message is accepted,
    /// durable if persistent, or refused.
    pub async fn publish(&self, message: QueuedMessage) -> Result<Verdict, QueueGone> {
        if !message.persistent {
            let consumers = self.shared.consumers.load(Ordering::Relaxed);
            self.shared.flow.admit(&self.shared.depth, consumers).await;
        }
        let (verdict, receiver) = oneshot::channel();
        self.command(Command::Publish { message, verdict: Some(verdict), deliver_at: None }).await?;
        Ok(receiver)
    }

    /// Enqueues a message that joins the queue at `deliver_at` (ms since the epoch), not before.
    /// Its verdict comes as for [`QueueHandle::publish`]: a persistent message is stored (with
    /// its due time, in the `x-deliver-at` header it carries) before it is accepted.
    pub async fn publish_at(&self, message: QueuedMessage, deliver_at: u64) -> Result<Verdict, QueueGone> {
        let (verdict, receiver) = oneshot::channel();
        self.command(Command::Publish { message, verdict: Some(verdict), deliver_at: Some(deliver_at) }).await?;
        Ok(receiver)
    }

    /// Attaches a consumer.
    pub async fn add_consumer(&self, consumer: Consumer) -> Result<(), QueueGone> {
        self.command(Command::AddConsumer(consumer)).await
    }

    /// Sends copies of the waiting messages, then the end frame (see [`Browse`]).
    pub async fn browse(&self, browse: Browse) -> Result<(), QueueGone> {
        self.command(Command::Browse(browse)).await
    }

    /// Detaches a consumer; its unacknowledged messages are redelivered to others.
    pub async fn remove_consumer(&self, consumer: u64) -> Result<(), QueueGone> {
        self.command(Command::RemoveConsumer { consumer }).await
    }

    /// Stops new deliveries to `consumer`, whose session is detached (session resumption).
    pub async fn pause_consumer(&self, consumer: u64) -> Result<(), QueueGone> {
        self.command(Command::Pause { consumer }).await
    }

    /// Resumes `consumer`: its unacknowledged messages come again, in order, then new ones.
    pub async fn resume_consumer(&self, consumer: u64) -> Result<(), QueueGone> {
        self.command(Command::Resume { consumer }).await
    }

    /// Reports the fate of delivered messages. Never waits: see [`Shared::settlements`].
    pub fn settle(&self, consumer: u64, messages: Vec<u64>, outcome: Outcome) -> Result<(), QueueGone> {
        if messages.is_empty() {
            return Ok(());
        }
        self.shared
            .settlements
            .send((consumer, messages, outcome))
            .map_err(|_| QueueGone(Arc::clone(&self.shared.name)))
    }

    /// Sets the time to live of messages published without one (RabbitMQ's `x-message-ttl`).
    pub async fn set_default_ttl(&self, ttl_ms: u64) -> Result<(), QueueGone> {
        self.command(Command::SetDefaultTtl(ttl_ms)).await
    }

    /// Sets the default time to live recorded with a stored queue, at start-up (the mailbox of
    /// a queue that was just created always has room).
    pub fn restore_default_ttl(&self, ttl_ms: u64) {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.mailbox.try_send(Command::SetDefaultTtl(ttl_ms)).is_err() {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Stops the actor. With `forget`, its stored messages are deleted too (the queue is gone
    /// for good); without, they stay for the next start.
    pub async fn shutdown(&self, forget: bool) {
        let (done, stopped) = oneshot::channel();
        if self.command(Command::Shutdown { forget, done }).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Stops the actor and forgets its stored messages, unless it holds messages (`if_empty`)
    /// or has consumers (`if_unused`) when the actor comes to it. Publishes that reach the
    /// mailbox after it are refused (their senders get an ERROR, never a RECEIPT).
    ///
    /// # Errors
    /// Why the queue was left alone.
    pub async fn delete_if(&self, if_empty: bool, if_unused: bool) -> Result<(), DeleteRefused> {
        let (done, answer) = oneshot::channel();
        self.command(Command::DeleteIf { if_empty, if_unused, done }).await?;
        answer.await.unwrap_or_else(|_| Err(QueueGone(Arc::clone(&self.shared.name)).into()))
    }

    /// True when `other` is a handle to the same queue actor.
    pub fn same_queue(&self, other: &QueueHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// The actor's ends of a queue whose messages live outside this module (cluster mode, on
/// JetStream): the same mailbox and settlements a [`QueueHandle`] sends to, so sessions and
/// webhooks use such a queue exactly as a local one.
pub(crate) struct ActorEnds {
    /// Commands, as the local actor gets them.
    pub inbox: mpsc::Receiver<Command>,
    /// Acks and nacks, as the local actor gets them.
    pub settlements: mpsc::UnboundedReceiver<Settlement>,
    shared: Arc<Shared>,
    mailbox: mpsc::WeakSender<Command>,
}

impl ActorEnds {
    /// A handle to stamp on deliveries; `None` once every other handle is gone.
    pub fn handle(&self) -> Option<QueueHandle> {
        self.mailbox.upgrade().map(|mailbox| QueueHandle { shared: Arc::clone(&self.shared), mailbox })
    }

    /// Publishes the actor's counts for [`QueueHandle::depth`], `unacked` and `consumer_count`.
    pub fn set_counts(&self, depth: usize, unacked: usize, consumers: usize) {
        self.shared.depth.store(depth, Ordering::Relaxed);
        self.shared.unacked.store(unacked, Ordering::Relaxed);
        self.shared.consumers.store(consumers, Ordering::Relaxed);
    }

    /// Counts a message the actor dropped (expired).
    pub fn count_dropped(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl QueueHandle {
    /// A handle whose actor is not this module's: the caller starts one on `ActorEnds`.
    pub(crate) fn elsewhere(name: Arc<str>, durable: bool) -> (QueueHandle, ActorEnds) {
        let (mailbox, inbox) = mpsc::channel(MAILBOX);
        let (settlements, settlement_inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name,
            depth: AtomicUsize::new(0),
            unacked: AtomicUsize::new(0),
            consumers: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            flow: crate::destination::flow::FlowGate::new(0, usize::MAX),
            durable,
            consumer_outboxes: Mutex::new(Vec::new()),
            // Never counted down by an actor elsewhere, and never idle: queues of the cluster
            // engine are not deleted for idleness (their state lives in JetStream).
            in_flight: AtomicUsize::new(0),
            idle_expiry_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            delayed: AtomicUsize::new(0),
            counts: Default::default(),
            readings: Mutex::new(VecDeque::from([(std::time::Instant::now(), [0; 3])])),
            settlements,
        });
        let ends = ActorEnds {
            inbox,
            settlements: settlement_inbox,
            shared: Arc::clone(&shared),
            mailbox: mailbox.downgrade(),
        };
        (QueueHandle { shared, mailbox }, ends)
    }
}

struct QueueActor {
    shared: Arc<Shared>,
    settings: QueueSettings,
    environment: QueueEnvironment,
    persistence: Option<Persistence>,
    ready: VecDeque<QueuedMessage>,
    ready_bytes: usize,
    /// Held until their time: delayed sends and delayed redeliveries. They count toward the
    /// queue's limits but are not deliverable, browsable or peekable until due.
    delayed: DelayHeap<QueuedMessage>,
    delayed_bytes: usize,
    /// Delivered, not yet settled: message id to (consumer, message). Touched on every
    /// delivery and ack, keyed by broker-chosen ids, hence FxHash.
    unacked: FxHashMap<u64, (u64, QueuedMessage)>,
    /// In the order they were attached (exclusive take-over goes by it).
    consumers: Vec<ConsumerState>,
    next_consumer: usize,
    /// The id of the exclusive consumer that receives, while exclusive consumers are attached.
    active_exclusive: Option<u64>,
    /// The actor's own mailbox, to stamp on deliveries so acknowledgements find their way back.
    /// Weak, so the actor ends when every handle to it is gone instead of keeping itself (and
    /// the store) alive.
    own_mailbox: mpsc::WeakSender<Command>,
    /// Storage operations gathered during one batch of commands.
    writes: Vec<Op>,
    /// Verdicts released when `writes` are durable.
    waiting_for_disk: Vec<VerdictSender>,
    /// Messages accepted, delivered, acknowledged: stored in [`Shared::counts`] per batch.
    counts: [u64; 3],
}

impl QueueActor {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut settlement_inbox: mpsc::UnboundedReceiver<Settlement>,
    ) {
        let mut batch = Vec::with_capacity(COMMAND_BATCH);
        let mut settlements = Vec::with_capacity(COMMAND_BATCH);
        let mut expiry_tick = tokio::time::interval(Duration::from_secs(1));
        expiry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for every held message: armed for the earliest (see `destination::delay`).
        let wake = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(wake);
        let mut armed_for = None;
        loop {
            let next_due = self.delayed.next_due();
            if next_due != armed_for
                && let Some(at) = next_due
            {
                wake.as_mut().reset(delay::deadline(at));
            }
            armed_for = next_due;
            // The actor's own `Shared` holds a settlement sender, so that channel never closes;
            // the mailbox closing (every handle gone) is what ends the actor. Not biased: a
            // steady stream of settlements must not keep a consumer's removal waiting.
            tokio::select! {
                _ = settlement_inbox.recv_many(&mut settlements, COMMAND_BATCH) => {}
                received = inbox.recv_many(&mut batch, COMMAND_BATCH) => {
                    if received == 0 {
                        break;
                    }
                }
                _ = expiry_tick.tick() => {
                    self.expire_waiting();
                }
                () = &mut wake, if armed_for.is_some() => {
                    // Re-armed next turn, from the wall clock.
                    armed_for = None;
                }
            }
            self.release_due();
            // Every settlement sent before a command in `batch` is in the channel by now (one
            // session sends its ACK before its UNSUBSCRIBE's RemoveConsumer): apply them all
            // first, so an acked message is never redelivered for want of ordering.
            while let Ok(settlement) = settlement_inbox.try_recv() {
                settlements.push(settlement);
            }
            for (consumer, messages, outcome) in settlements.drain(..) {
                self.shared.flow.settled(messages.len());
                for id in messages {
                    self.settle(consumer, id, outcome);
                }
            }
            let mut stop = None;
            let handled = batch.len();
            for command in batch.drain(..) {
                match command {
                    Command::Shutdown { forget, done } => {
                        stop = Some((forget, Stopped::Shutdown(done)));
                        break;
                    }
                    Command::DeleteIf { if_empty, if_unused, done } => match self.deletion_refused(if_empty, if_unused)
                    {
                        Some(refused) => drop(done.send(Err(refused))),
                        None => {
                            stop = Some((true, Stopped::Deleted(done)));
                            break;
                        }
                    },
                    command => self.handle(command),
                }
            }
            self.dispatch();
            if let Some((forget, done)) = stop {
                if forget && let Some(persistence) = &self.persistence {
                    self.writes.push(Op::DeleteQueue { name: persistence.key.clone() });
                }
                self.commit_writes();
                // Let go of the store before saying so: whoever waits may close it next.
                self.persistence = None;
                done.answer();
                break;
            }
            self.commit_writes();
            self.publish_stats();
            // After the counters: whoever sees no command in flight sees their effects.
            self.shared.in_flight.fetch_sub(handled, Ordering::AcqRel);
        }
        debug!(queue = %self.shared.name, "queue stopped");
    }

    /// Why a conditional delete must leave the queue alone now, if it must.
    fn deletion_refused(&self, if_empty: bool, if_unused: bool) -> Option<DeleteRefused> {
        let name = Arc::clone(&self.shared.name);
        if if_empty && (!self.ready.is_empty() || !self.delayed.is_empty() || !self.unacked.is_empty()) {
            // Held (delayed) messages count as ready here: they are the queue's to deliver.
            let ready = self.ready.len() + self.delayed.len();
            return Some(DeleteRefused::NotEmpty { name, ready, unacked: self.unacked.len() });
        }
        if if_unused && !self.consumers.is_empty() {
            return Some(DeleteRefused::InUse { name, consumers: self.consumers.len() });
        }
        None
    }

    fn publish_stats(&self) {
        self.shared.depth.store(self.ready.len(), Ordering::Relaxed);
        self.shared.delayed.store(self.delayed.len(), Ordering::Relaxed);
        self.shared.unacked.store(self.unacked.len(), Ordering::Relaxed);
        self.shared.flow.observe(self.ready.len());
        for (shared, local) in self.shared.counts.iter().zip(self.counts) {
            shared.store(local, Ordering::Relaxed);
        }
        let idle =
            self.ready.is_empty() && self.delayed.is_empty() && self.unacked.is_empty() && self.consumers.is_empty();
        let since = self.shared.idle_since_ms.load(Ordering::Relaxed);
        if idle && since == 0 {
            self.shared.idle_since_ms.store(now_ms().max(1), Ordering::Relaxed);
        } else if !idle && since != 0 {
            self.shared.idle_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Submits the storage work of this batch as one submission; verdicts of persistent
    /// messages are released by its completion.
    fn commit_writes(&mut self) {
        let verdicts = std::mem::take(&mut self.waiting_for_disk);
        if self.writes.is_empty() {
            for verdict in verdicts {
                let _ = verdict.send(Ok(()));
            }
            return;
        }
        let ops = std::mem::take(&mut self.writes);
        let Some(persistence) = &self.persistence else { return };
        let name = Arc::clone(&self.shared.name);
        let done: Option<stampede_storage::Completion> = if verdicts.is_empty() {
            None
        } else {
            Some(Box::new(move |result: Result<(), stampede_storage::StorageError>| {
                for verdict in verdicts {
                    let outcome = result.as_ref().map(|_| ()).map_err(|error| {
                        StompError::of_kind(
                            ErrorKind::Internal,
                            "persistent message not stored",
                            format!("Queue {name} could not store the message durably: {error}. It was not accepted; retry later."),
                        )
                    });
                    let _ = verdict.send(outcome);
                }
            }))
        };
        persistence.store.submit(ops, done);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Publish { message, verdict, deliver_at } => self.enqueue(message, verdict, deliver_at),
            Command::AddConsumer(consumer) => {
                self.shared
                    .consumer_outboxes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((consumer.id, Arc::downgrade(&consumer.outbox)));
                self.consumers.push(ConsumerState { consumer, unacked: 0, unacked_bytes: 0, paused: false });
                self.shared.consumers.store(self.consumers.len(), Ordering::Relaxed);
            }
            Command::Browse(browse) => self.browse(browse),
            Command::RemoveConsumer { consumer } => self.remove_consumer(consumer),
            Command::Pause { consumer } => {
                if let Some(state) = self.consumers.iter_mut().find(|c| c.consumer.id == consumer) {
                    state.paused = true;
                }
            }
            Command::Resume { consumer } => self.resume_consumer(consumer),
            Command::SetDefaultTtl(ttl) => {
                if ttl != self.settings.default_ttl_ms
                    && let Some(persistence) = &self.persistence
                {
                    // Kept with the queue's definition, as RabbitMQ keeps x-message-ttl.
                    let record = QueueRecord { ttl_ms: Some(ttl), ..persistence.record.clone() };
                    self.writes.push(Op::DefineQueue(record));
                }
                self.settings.default_ttl_ms = ttl;
            }
            Command::Purge { done, stored } => {
                // Answered when this batch's removals are committed (at once if none are).
                self.waiting_for_disk.push(stored);
                let mut purged: Vec<QueuedMessage> = std::mem::take(&mut self.ready).into();
                purged.extend(self.delayed.drain());
                self.ready_bytes = 0;
                self.delayed_bytes = 0;
                for message in &purged {
                    self.forget(message);
                }
                self.publish_stats();
                let _ = done.send(purged.len());
            }
            Command::Peek { count, reply } => {
                let now = now_ms();
                let copies =
                    self.ready.iter().filter(|m| !Self::is_expired(m, now)).take(count).cloned().collect::<Vec<_>>();
                let _ = reply.send(copies);
            }
            Command::RemoveWaiting { ids, done } => {
                let ids: rustc_hash::FxHashSet<u64> = ids.into_iter().collect();
                let waiting = std::mem::take(&mut self.ready);
                let mut removed = 0;
                for message in waiting {
                    if ids.contains(&message.id) {
                        self.ready_bytes -= message.size();
                        self.forget(&message);
                        removed += 1;
                    } else {
                        self.ready.push_back(message);
                    }
                }
                self.publish_stats();
                let _ = done.send(removed);
            }
            Command::Shutdown { .. } | Command::DeleteIf { .. } => {}
            #[cfg(test)]
            Command::Panic => panic!("a queue actor panicked on purpose"),
        }
    }

    fn enqueue(&mut self, mut message: QueuedMessage, verdict: Option<VerdictSender>, deliver_at: Option<u64>) {
        if message.expires_at_ms.is_none() && self.settings.default_ttl_ms > 0 {
            message.expires_at_ms = Some(message.enqueued_at_ms.saturating_add(self.settings.default_ttl_ms));
        }
        let size = message.size();
        let full = |actor: &QueueActor| {
            let waiting = actor.ready.len() + actor.delayed.len();
            waiting > 0
                && (waiting >= actor.settings.max_length
                    || actor.ready_bytes + actor.delayed_bytes + size > actor.settings.max_bytes)
        };
        if full(self) {
            match self.settings.overflow {
                OverflowPolicy::Reject => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(verdict) = verdict {
                        let settings = &self.settings;
                        let limit = if self.ready.len() + self.delayed.len() >= settings.max_length {
                            let plural = if settings.max_length == 1 { "" } else { "s" };
                            format!(
                                "its maximum of {} message{plural} ({})",
                                settings.max_length, settings.max_length_key
                            )
                        } else {
                            format!(
                                "its maximum of {} waiting; this message is {} ({})",
                                crate::config::values::human_size(settings.max_bytes),
                                crate::config::values::human_size(size),
                                settings.max_bytes_key
                            )
                        };
                        let _ = verdict.send(Err(StompError::of_kind(
                            ErrorKind::Limit,
                            format!("queue {} is full", self.shared.name),
                            format!(
                                "Queue {} holds {limit}, and its overflow policy is reject. The message was not accepted.",
                                self.shared.name
                            ),
                        )));
                    }
                    return;
                }
                OverflowPolicy::DropOldest => {
                    while full(self) {
                        let Some(old) = self.ready.pop_front() else { break };
                        self.ready_bytes -= old.size();
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        self.settings.metrics.messages_dropped(DropReason::QueueOverflow, 1);
                        self.forget(&old);
                    }
                }
            }
        }
        if message.persistent
            && let Some(disk) = self.persistence.as_ref().and_then(|p| p.disk.as_ref())
            && disk.is_raised()
        {
            disk.note_refusal();
            if let Some(verdict) = verdict {
                let _ = verdict.send(Err(crate::disk::refusal(&self.shared.name, disk.status())));
            }
            return;
        }
        if message.persistent && self.persistence.is_some() {
            let key = self.persistence.as_ref().map(|p| p.key.clone()).unwrap_or_default();
            self.writes.push(Op::Append { queue: key, message: message.to_stored() });
            if let Some(verdict) = verdict {
                self.waiting_for_disk.push(verdict);
            }
        } else if let Some(verdict) = verdict {
            let _ = verdict.send(Ok(()));
        }
        match deliver_at {
            Some(at) if at > now_ms() => self.hold(at, message),
            _ => {
                self.ready_bytes += size;
                self.ready.push_back(message);
            }
        }
        self.counts[ACCEPTED] += 1;
    }

    /// `message`, now due at `at` for its redelivery: its `x-deliver-at` says so (as a delayed
    /// send's does), and a persistent message is stored again with it, so a restart before `at`
    /// holds it until then instead of redelivering it at once. Written without a verdict: like a
    /// delivery count, it is bookkeeping for a message whose SEND was receipted long ago.
    fn due_again_at(&mut self, mut message: QueuedMessage, at: u64) -> QueuedMessage {
        let mut headers = message.template.headers().clone();
        headers.retain(|name, _| name != delay::DELIVER_AT);
        headers.push(delay::DELIVER_AT, at.to_string());
        message.template = Arc::new(MessageTemplate::new(headers, message.template.body().clone()));
        if message.persistent
            && let Some(persistence) = self.persistence.as_ref()
        {
            self.writes.push(Op::Append { queue: persistence.key.clone(), message: message.to_stored() });
        }
        message
    }

    /// Holds `message` until `at`.
    fn hold(&mut self, at: u64, message: QueuedMessage) {
        self.delayed_bytes += message.size();
        self.delayed.push(at, message.id, message);
    }

    /// Moves the held messages that are due to the back of the queue.
    fn release_due(&mut self) {
        let Some(first) = self.delayed.next_due() else { return };
        let now = now_ms();
        if first > now {
            return;
        }
        while let Some(message) = self.delayed.pop_due(now) {
            let size = message.size();
            self.delayed_bytes -= size;
            if Self::is_expired(&message, now) {
                self.expire(message);
                continue;
            }
            self.ready_bytes += size;
            self.ready.push_back(message);
        }
    }

    /// Removes a message from storage (after an ack, a drop or a move to another queue).
    fn forget(&mut self, message: &QueuedMessage) {
        if message.persistent
            && let Some(persistence) = &self.persistence
        {
            self.writes.push(Op::Remove { queue: persistence.key.clone(), seq: message.id });
        }
    }

    fn remove_consumer(&mut self, consumer: u64) {
        let policy = self.policy_of(consumer);
        self.shared.consumer_outboxes.lock().unwrap_or_else(|p| p.into_inner()).retain(|(id, _)| *id != consumer);
        self.consumers.retain(|c| c.consumer.id != consumer);
        self.shared.consumers.store(self.consumers.len(), Ordering::Relaxed);
        let mut returned: Vec<QueuedMessage> = Vec::new();
        self.unacked.retain(|_, (owner, message)| {
            if *owner == consumer {
                returned.push(message.clone());
                false
            } else {
                true
            }
        });
        // Back to the head, in their original order.
        returned.sort_by_key(|m| m.id);
        for message in returned.into_iter().rev() {
            self.requeue_or_dead_letter(message, Outcome::Requeue, policy.as_deref());
        }
    }

    /// The redelivery policy consumer `consumer` asked for, if it is attached and asked.
    fn policy_of(&self, consumer: u64) -> Option<Arc<RedeliveryPolicy>> {
        self.consumers.iter().find(|c| c.consumer.id == consumer).and_then(|c| c.consumer.redelivery.clone())
    }

    /// Sends a resumed consumer its unacknowledged messages again, oldest first. What was still
    /// waiting in its outbox is dropped first, so nothing arrives twice or out of order.
    fn resume_consumer(&mut self, consumer: u64) {
        let Some(mailbox) = self.own_mailbox.upgrade() else { return };
        let handle = QueueHandle { shared: Arc::clone(&self.shared), mailbox };
        let Some(state) = self.consumers.iter_mut().find(|c| c.consumer.id == consumer) else { return };
        state.paused = false;
        let outbox = Arc::clone(&state.consumer.outbox);
        let subscription = state.consumer.subscription;
        outbox.remove_queue_deliveries(consumer);
        let mut held: Vec<&QueuedMessage> =
            self.unacked.values().filter(|(owner, _)| *owner == consumer).map(|(_, message)| message).collect();
        held.sort_by_key(|message| message.id);
        for message in held {
            let delivery = Delivery {
                subscription,
                template: Arc::clone(&message.template),
                message_id: message.id,
                from_queue: Some(QueueDelivery {
                    queue: handle.clone(),
                    consumer,
                    delivery_count: message.delivery_count,
                }),
                redelivered: true,
            };
            let _ = outbox.push_queue(delivery);
        }
    }

    fn settle(&mut self, consumer: u64, id: u64, outcome: Outcome) {
        let Some((owner, message)) = self.unacked.remove(&id) else {
            // Already settled, or requeued because its consumer went away first.
            return;
        };
        if owner != consumer {
            self.unacked.insert(id, (owner, message));
            return;
        }
        let size = message.size();
        if let Some(state) = self.consumers.iter_mut().find(|c| c.consumer.id == consumer) {
            state.unacked = state.unacked.saturating_sub(1);
            state.unacked_bytes = state.unacked_bytes.saturating_sub(size);
        }
        match outcome {
            Outcome::Ack => {
                self.counts[ACKED] += 1;
                self.settings.metrics.message_acked();
                self.forget(&message);
            }
            Outcome::Requeue | Outcome::Reject | Outcome::GiveUp => {
                self.settings.metrics.message_nacked();
                let policy = self.policy_of(consumer);
                self.requeue_or_dead_letter(message, outcome, policy.as_deref());
            }
        }
    }

    /// A message that came back unconsumed: dead-lettered (rejected, or its delivery limit
    /// reached), held for the consumer's redelivery delay, or put back at the head of the
    /// queue. `policy` is the consumer's own, whose fields override the queue's settings.
    fn requeue_or_dead_letter(&mut self, message: QueuedMessage, outcome: Outcome, policy: Option<&RedeliveryPolicy>) {
        let max_deliveries = policy.and_then(|p| p.max_deliveries).unwrap_or(self.settings.max_deliveries);
        let limit_reached = max_deliveries > 0 && message.delivery_count >= max_deliveries;
        if outcome != Outcome::Requeue || limit_reached {
            let reason =
                if outcome == Outcome::Reject { DeadLetterReason::Rejected } else { DeadLetterReason::DeliveryLimit };
            let target = policy.and_then(|p| p.dead_letter_queue.as_deref());
            if self.dead_letter_to(&message, reason, target) {
                return;
            }
        }
        let wait = policy.map_or(0, |p| p.delay_for(message.delivery_count.max(1)));
        if wait > 0 {
            // Held apart, so the messages behind it are delivered meanwhile.
            let at = now_ms().saturating_add(wait);
            let message = self.due_again_at(message, at);
            self.hold(at, message);
            return;
        }
        self.ready_bytes += message.size();
        self.ready.push_front(message);
    }

    fn is_dead_letter_queue(&self) -> bool {
        self.shared.name.starts_with(&self.settings.dead_letter_prefix)
    }

    /// Moves a message to `DLQ.<name>`. A dead-letter queue does not dead-letter its own
    /// messages (they are redelivered instead), so nothing loops. Returns false when the message
    /// stays here.
    fn dead_letter(&mut self, message: &QueuedMessage, reason: DeadLetterReason) -> bool {
        self.dead_letter_to(message, reason, None)
    }

    /// Moves a message to `target` (a subscription's `x-dead-letter-queue`), or else to
    /// `DLQ.<name>`. A queue never dead-letters to itself.
    fn dead_letter_to(&mut self, message: &QueuedMessage, reason: DeadLetterReason, target: Option<&str>) -> bool {
        let target = match target {
            Some(target) if target == &*self.shared.name => return false,
            Some(target) => target.to_owned(),
            None if self.is_dead_letter_queue() => return false,
            None => format!("{}{}", self.settings.dead_letter_prefix, self.shared.name),
        };
        let Some(owner) = self.environment.owner.upgrade() else { return false };
        let headers = dead_letter_headers(&message.template, &target, reason);
        self.settings.metrics.message_dead_lettered(reason);
        let moved = QueuedMessage {
            id: message.id,
            template: Arc::new(MessageTemplate::new(headers, message.template.body().clone())),
            delivery_count: 0,
            persistent: message.persistent,
            // 0 = never: a dead-lettered message is kept until someone deals with it, even
            // where a default time to live applies.
            expires_at_ms: Some(0),
            enqueued_at_ms: now_ms(),
        };
        let Some(queue) = owner.dead_letter_queue(&target) else { return false };
        debug!(queue = %self.shared.name, %target, reason = reason.as_str(), "dead-lettering message {}", message.id);
        // The move is stored by the dead-letter queue before this queue forgets the message:
        // at worst a crash in between leaves it in both (at least once, never lost).
        let writes_removal = self.persistence.as_ref().filter(|_| message.persistent).map(|persistence| {
            (Arc::clone(&persistence.store), Op::Remove { queue: persistence.key.clone(), seq: message.id })
        });
        self.environment.tasks.spawn(async move {
            match queue.publish(moved).await {
                Ok(verdict) => {
                    if let (Ok(Ok(())), Some((store, removal))) = (verdict.await, writes_removal) {
                        store.submit(vec![removal], None);
                    }
                }
                Err(gone) => warn!("dead-letter queue unavailable: {gone}"),
            }
        });
        true
    }

    fn is_expired(message: &QueuedMessage, now: u64) -> bool {
        message.expires_at_ms.is_some_and(|at| at != 0 && at <= now)
    }

    /// Takes expired messages out of the waiting list.
    fn expire_waiting(&mut self) {
        let now = now_ms();
        if !self.ready.iter().any(|m| Self::is_expired(m, now)) {
            return;
        }
        let waiting = std::mem::take(&mut self.ready);
        for message in waiting {
            if Self::is_expired(&message, now) {
                self.ready_bytes -= message.size();
                self.expire(message);
            } else {
                self.ready.push_back(message);
            }
        }
        self.commit_writes();
        self.publish_stats();
    }

    fn expire(&mut self, message: QueuedMessage) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        self.settings.metrics.message_expired();
        if self.settings.expired == ExpiredPolicy::DeadLetter && self.dead_letter(&message, DeadLetterReason::Expired) {
            return;
        }
        self.forget(&message);
    }

    fn browse(&mut self, browse: Browse) {
        let now = now_ms();
        for message in &self.ready {
            if Self::is_expired(message, now)
                || browse.selector.as_ref().is_some_and(|selector| !selector.matches(message.template.headers()))
            {
                continue;
            }
            let copy = Delivery {
                subscription: browse.subscription,
                template: Arc::clone(&message.template),
                message_id: message.id,
                from_queue: None,
                redelivered: false,
            };
            if browse.outbox.push_queue(copy).is_err() {
                return;
            }
        }
        let end = Delivery {
            subscription: browse.subscription,
            template: browse.end,
            message_id: browse.end_id,
            from_queue: None,
            redelivered: false,
        };
        let _ = browse.outbox.push_queue(end);
    }

    /// The position of the exclusive consumer that receives, choosing one if the last has left:
    /// the highest priority, the earliest attached among equals. `None` without exclusive
    /// consumers.
    fn exclusive_consumer(&mut self) -> Option<usize> {
        if let Some(active) = self.active_exclusive
            && let Some(position) = self.consumers.iter().position(|c| c.consumer.id == active)
        {
            return Some(position);
        }
        let mut chosen: Option<usize> = None;
        for (position, state) in self.consumers.iter().enumerate() {
            if state.consumer.exclusive
                && chosen.is_none_or(|c| state.consumer.priority > self.consumers[c].consumer.priority)
            {
                chosen = Some(position);
            }
        }
        let next = chosen.map(|position| self.consumers[position].consumer.id);
        if next != self.active_exclusive {
            debug!(queue = %self.shared.name, consumer = ?next, "active exclusive consumer");
        }
        self.active_exclusive = next;
        chosen
    }

    /// The consumer `message` goes to: of those with credit that want it, the highest priority,
    /// the next in round-robin order among equals; only `exclusive` when it is given. A consumer
    /// that wants it but lacks credit is marked in `blocked` (when the pass tracks that) and
    /// passed over for the rest of the pass. The search stops at the first consumer of the `top`
    /// priority present, so without priorities it costs what plain round-robin does.
    fn choose(
        &self,
        message: &QueuedMessage,
        exclusive: Option<usize>,
        top: i32,
        blocked: &mut [bool],
    ) -> Option<usize> {
        let size = message.size();
        let count = self.consumers.len();
        let mut chosen: Option<(i32, usize)> = None;
        let candidates: &mut dyn Iterator<Item = usize> = match exclusive {
            Some(position) => &mut std::iter::once(position),
            None => &mut (0..count).map(|offset| (self.next_consumer + offset) % count),
        };
        for position in candidates {
            let state = &self.consumers[position];
            if chosen.is_some_and(|(priority, _)| state.consumer.priority <= priority)
                || blocked.get(position) == Some(&true)
                || !state.wants(message)
            {
                continue;
            }
            if !state.has_credit_for(size) {
                if let Some(mark) = blocked.get_mut(position) {
                    *mark = true;
                }
                continue;
            }
            chosen = Some((state.consumer.priority, position));
            if state.consumer.priority == top {
                break;
            }
        }
        chosen.map(|(_, position)| position)
    }

    fn dispatch(&mut self) {
        let Some(mailbox) = self.own_mailbox.upgrade() else { return };
        let handle = QueueHandle { shared: Arc::clone(&self.shared), mailbox };
        let now = now_ms();
        'pass: loop {
            let selective = self.consumers.iter().any(|c| c.consumer.selector.is_some());
            let window = if selective { SELECTOR_LOOKAHEAD } else { 1 };
            let mut blocked = if selective { vec![false; self.consumers.len()] } else { Vec::new() };
            let exclusive = self.exclusive_consumer();
            let top = self.consumers.iter().map(|c| c.consumer.priority).max().unwrap_or(0);
            // Messages skipped so far: those before `index`, which no consumer takes this pass.
            let mut index = 0;
            while index < window {
                if index == 0
                    && self.ready.front().is_some_and(|front| Self::is_expired(front, now))
                    && let Some(expired) = self.ready.pop_front()
                {
                    self.ready_bytes -= expired.size();
                    self.expire(expired);
                    continue;
                }
                let Some(candidate) = self.ready.get(index) else { return };
                // Expired messages past the head are left to the expiry tick.
                let chosen = if Self::is_expired(candidate, now) {
                    None
                } else {
                    self.choose(candidate, exclusive, top, &mut blocked)
                };
                let Some(chosen) = chosen else {
                    index += 1;
                    continue;
                };
                let count = self.consumers.len();
                self.next_consumer = (chosen + 1) % count.max(1);
                let Some(mut message) = self.ready.remove(index) else { return };
                let size = message.size();
                self.ready_bytes -= size;
                let state = &mut self.consumers[chosen];
                let redelivered = message.delivery_count > 0;
                message.delivery_count += 1;
                let delivery = Delivery {
                    subscription: state.consumer.subscription,
                    template: Arc::clone(&message.template),
                    message_id: message.id,
                    from_queue: Some(QueueDelivery {
                        queue: handle.clone(),
                        consumer: state.consumer.id,
                        delivery_count: message.delivery_count,
                    }),
                    redelivered,
                };
                if state.consumer.outbox.push_queue(delivery).is_err() {
                    // The connection is closing; its RemoveConsumer is on the way. Keep the message.
                    message.delivery_count -= 1;
                    self.ready_bytes += size;
                    self.ready.insert(index, message);
                    let dead = state.consumer.id;
                    self.consumers.retain(|c| c.consumer.id != dead);
                    self.shared.consumers.store(self.consumers.len(), Ordering::Relaxed);
                    continue 'pass;
                }
                state.unacked += 1;
                state.unacked_bytes += size;
                self.counts[DELIVERED] += 1;
                if redelivered {
                    self.settings.metrics.message_redelivered();
                }
                if message.persistent
                    && let Some(persistence) = &self.persistence
                {
                    // So a restart knows it was delivered: redelivered:true, and the dead-letter
                    // count goes on.
                    let key = persistence.key.clone();
                    self.writes.push(Op::SetDeliveryCount {
                        queue: key,
                        seq: message.id,
                        count: message.delivery_count,
                    });
                }
                self.unacked.insert(message.id, (state.consumer.id, message));
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner that records what its queues tell it.
    #[derive(Default)]
    struct RecordingOwner {
        failed: Mutex<Vec<(usize, Option<String>)>>,
    }

    impl QueueOwner for RecordingOwner {
        fn dead_letter_queue(&self, _name: &str) -> Option<QueueHandle> {
            None
        }

        fn queue_failed(&self, queue: usize, stored_as: Option<String>) {
            self.failed.lock().unwrap().push((queue, stored_as));
        }
    }

    fn message(id: u64, region: &str) -> QueuedMessage {
        let headers: Headers = [("destination", "/queue/jobs"), ("region", region)].into_iter().collect();
        QueuedMessage {
            id,
            template: Arc::new(MessageTemplate::new(headers, bytes::Bytes::new())),
            delivery_count: 0,
            persistent: false,
            expires_at_ms: None,
            enqueued_at_ms: now_ms(),
        }
    }

    /// Two round trips through the mailbox: every earlier command was handled, and the
    /// dispatch that followed it has run.
    async fn settle_down(queue: &QueueHandle, next_id: &mut u64) {
        for _ in 0..2 {
            *next_id += 1;
            queue.publish(message(*next_id, "none")).await.unwrap().await.unwrap().unwrap();
        }
    }

    fn taken(outbox: &Outbox) -> Vec<u64> {
        let mut deliveries = VecDeque::new();
        outbox.take_all(&mut deliveries);
        deliveries.into_iter().map(|d| d.message_id).collect()
    }

    #[tokio::test]
    async fn a_matching_message_behind_more_unmatched_ones_than_the_look_ahead_waits_until_the_head_moves() {
        let owner = Arc::new(RecordingOwner::default());
        let weak: Weak<dyn QueueOwner> = Arc::downgrade(&owner) as Weak<dyn QueueOwner>;
        let environment = QueueEnvironment { owner: weak, tasks: TaskTracker::new() };
        let queue = QueueHandle::spawn(Arc::from("jobs"), QueueSettings::default(), &environment, None, Vec::new());
        let matching = SELECTOR_LOOKAHEAD as u64;
        for id in 0..matching {
            queue.publish(message(id, "us")).await.unwrap();
        }
        queue.publish(message(matching, "eu")).await.unwrap();
        let mut next_id = matching;
        let selective = Outbox::new(1 << 20);
        let selector = Arc::new(Selector::parse("region = 'eu'").unwrap());
        let consumer =
            Consumer { selector: Some(selector), ..Consumer::new(1, 1, Arc::clone(&selective), 10, 1 << 20) };
        queue.add_consumer(consumer).await.unwrap();
        settle_down(&queue, &mut next_id).await;
        assert_eq!(taken(&selective), Vec::<u64>::new(), "the matching message is past the look-ahead");
        // Another consumer takes the head: the matching message comes within reach.
        let other = Outbox::new(1 << 20);
        queue.add_consumer(Consumer::new(2, 2, Arc::clone(&other), 1, 1 << 20)).await.unwrap();
        settle_down(&queue, &mut next_id).await;
        assert_eq!(taken(&other), [0]);
        assert_eq!(taken(&selective), [matching]);
    }

    #[tokio::test]
    async fn a_recovered_message_with_a_due_time_ahead_waits_for_it_and_the_others_do_not() {
        let owner = Arc::new(RecordingOwner::default());
        let weak: Weak<dyn QueueOwner> = Arc::downgrade(&owner) as Weak<dyn QueueOwner>;
        let environment = QueueEnvironment { owner: weak, tasks: TaskTracker::new() };
        let due = now_ms() + 300;
        let mut held = message(1, "eu");
        let mut headers = held.template.headers().clone();
        headers.push(delay::DELIVER_AT, due.to_string());
        held.template = Arc::new(MessageTemplate::new(headers, bytes::Bytes::new()));
        // Counted as delivered (as a salvage counts every message), yet still not before its time.
        held.delivery_count = 1;
        let recovered = vec![held, message(2, "us")];
        let queue = QueueHandle::spawn(Arc::from("jobs"), QueueSettings::default(), &environment, None, recovered);
        let outbox = Outbox::new(1 << 20);
        queue.add_consumer(Consumer::new(1, 1, Arc::clone(&outbox), 10, 1 << 20)).await.unwrap();
        let mut next_id = 10;
        settle_down(&queue, &mut next_id).await;
        assert_eq!(taken(&outbox), [2, 11, 12], "the held message waits");
        assert_eq!(queue.delayed(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(now_ms() >= due);
        assert_eq!(taken(&outbox), [1]);
        assert_eq!(queue.delayed(), 0);
    }

    #[tokio::test]
    async fn a_panicking_queue_actor_ends_its_consumers_connections_and_tells_its_owner() {
        let owner = Arc::new(RecordingOwner::default());
        let weak: Weak<dyn QueueOwner> = Arc::downgrade(&owner) as Weak<dyn QueueOwner>;
        let environment = QueueEnvironment { owner: weak, tasks: TaskTracker::new() };
        let queue = QueueHandle::spawn(Arc::from("jobs"), QueueSettings::default(), &environment, None, Vec::new());
        let outbox = Outbox::new(1 << 20);
        let consumer = Consumer::new(7, 1, Arc::clone(&outbox), 10, 1 << 20);
        queue.add_consumer(consumer).await.unwrap();
        queue.panic_for_test().await;
        environment.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), environment.tasks.wait()).await.expect("the supervisor ends");
        assert!(outbox.has_failed(), "the consumer's connection must be told");
        assert_eq!(*owner.failed.lock().unwrap(), [(queue.id(), None)]);
        assert!(queue.add_consumer(Consumer::new(8, 2, outbox, 1, 1)).await.is_err());
    }

    /// A store that applies submissions at once but holds their completions until released, as
    /// a slow disk does.
    #[derive(Default)]
    struct HeldCompletions {
        applied: stampede_storage::MemoryStore,
        held: Mutex<Vec<stampede_storage::Completion>>,
    }

    impl Store for HeldCompletions {
        fn submit(&self, ops: Vec<Op>, done: Option<stampede_storage::Completion>) {
            self.applied.submit(ops, None);
            if let Some(done) = done {
                self.held.lock().unwrap().push(done);
            }
        }
        fn recover(&self) -> Result<stampede_storage::Recovery, stampede_storage::StorageError> {
            self.applied.recover()
        }
        fn flush(&self) -> Result<(), stampede_storage::StorageError> {
            Ok(())
        }
        fn disk_usage_bytes(&self) -> u64 {
            0
        }
        fn metrics(&self) -> stampede_storage::StoreMetrics {
            self.applied.metrics()
        }
    }

    impl HeldCompletions {
        fn release(&self) {
            for done in std::mem::take(&mut *self.held.lock().unwrap()) {
                done(Ok(()));
            }
        }
    }

    #[tokio::test]
    async fn a_purge_answers_only_once_its_removals_are_on_disk() {
        let owner = Arc::new(RecordingOwner::default());
        let weak: Weak<dyn QueueOwner> = Arc::downgrade(&owner) as Weak<dyn QueueOwner>;
        let environment = QueueEnvironment { owner: weak, tasks: TaskTracker::new() };
        let store = Arc::new(HeldCompletions::default());
        let persistence = Persistence {
            store: Arc::clone(&store) as Arc<dyn Store>,
            key: "/queue/jobs".into(),
            record: QueueRecord::queue("/queue/jobs"),
            disk: None,
        };
        let settings = QueueSettings { durable: true, ..QueueSettings::default() };
        let queue = QueueHandle::spawn(Arc::from("jobs"), settings, &environment, Some(persistence), Vec::new());
        let mut stored = Vec::new();
        for id in 1..=3 {
            stored.push(queue.publish(QueuedMessage { persistent: true, ..message(id, "eu") }).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.release();
        for verdict in stored {
            verdict.await.unwrap().unwrap();
        }
        let purge = tokio::spawn({
            let queue = queue.clone();
            async move { queue.purge().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!purge.is_finished(), "the purge answered before its removals were stored");
        store.release();
        assert_eq!(purge.await.unwrap().unwrap(), 3);
        assert_eq!(store.recover().unwrap().message_count(), 0);
    }
}
