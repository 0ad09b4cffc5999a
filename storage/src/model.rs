//! The values that cross the [`Store`](crate::Store) interface: what is stored, the operations
//! that change it, and what recovery hands back.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stampede_protocol::Headers;

use crate::StorageError;

/// One persistent message of one queue (or durable subscription).
///
/// The queue it belongs to is not part of the value: it is given by [`Op::Append`] and by
/// [`RecoveredQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in its queue, assigned by the broker; recovery returns messages in ascending
    /// `seq` order. Unique within a queue.
    pub seq: u64,
    /// The headers to deliver with the message (as received, minus whatever the broker strips).
    pub headers: Headers,
    /// The body, shared with the frame it came from.
    pub body: Bytes,
    /// How many times the message has been delivered without being acked. Later changes are
    /// recorded with [`Op::SetDeliveryCount`], which is cheaper than rewriting the message.
    pub delivery_count: u32,
    /// When the message expires, in milliseconds since the Unix epoch, if it does.
    pub expires_at_ms: Option<u64>,
    /// When the broker accepted the message, in milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
}

/// Whether a [`QueueRecord`] describes a plain queue or a durable topic subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueKind {
    /// A named queue: each message goes to one consumer.
    #[default]
    Queue,
    /// A durable subscription to a topic: it keeps collecting the topic's messages while its
    /// subscriber is away.
    DurableSubscription,
    /// The retained history of one topic (last-value and replay topics): its messages are the
    /// topic's most recent ones, kept so that a subscriber asking for history gets them after a
    /// restart. Stored exactly like a queue's (self-identifying format-v2 messages under the
    /// record's name), so salvage finds them too; the broker trims them by count and age.
    RetainedTopic,
}

/// The STOMP acknowledgement mode of a durable subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// `ack:auto`.
    #[default]
    Auto,
    /// `ack:client` (cumulative).
    Client,
    /// `ack:client-individual`.
    ClientIndividual,
}

/// The definition of a queue or a durable subscription, stored so it survives a restart.
///
/// The name is the identity: a durable subscription's messages are stored under its `name`
/// exactly as a queue's are, so names must be unique across both kinds (the broker may for
/// example name subscriptions `"<client-id>/<subscription-name>"`).
///
/// Stored as JSON with `#[serde(default)]`, so fields can be added in later versions and old
/// records still load (a missing field takes its default).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueRecord {
    /// Unique name; the key of the record and of the queue's messages.
    pub name: String,
    /// Queue or durable subscription.
    pub kind: QueueKind,
    /// For a durable subscription, the topic destination (or wildcard pattern) it follows.
    pub topic: Option<String>,
    /// For a durable subscription, the owning client's id.
    pub client_id: Option<String>,
    /// For a durable subscription, its name within the client.
    pub subscription_name: Option<String>,
    /// For a durable subscription, the ack mode it was created with.
    pub ack_mode: AckMode,
    /// Maximum number of messages kept, if limited.
    pub max_length: Option<u64>,
    /// Default time to live of messages, in milliseconds, if any.
    pub ttl_ms: Option<u64>,
    /// Where messages go after too many deliveries, if anywhere.
    pub dead_letter_queue: Option<String>,
    /// Deliveries after which a message is dead-lettered, if limited.
    pub max_deliveries: Option<u32>,
    /// Who created it; `None` in records stored before owners were kept.
    pub owner: Option<OwnerRecord>,
    /// The virtual host it belongs to; `None` (records stored before virtual hosts were kept)
    /// means the default virtual host `/`.
    pub vhost: Option<String>,
}

/// The principal that created a queue or durable subscription.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OwnerRecord {
    /// The user name; `None` for an anonymous client.
    pub user: Option<String>,
}

impl QueueRecord {
    /// A plain queue with default settings.
    pub fn queue(name: impl Into<String>) -> QueueRecord {
        QueueRecord { name: name.into(), ..QueueRecord::default() }
    }

    /// The retained history of topic `topic`, stored under `name`.
    pub fn retained_topic(name: impl Into<String>, topic: impl Into<String>) -> QueueRecord {
        QueueRecord {
            name: name.into(),
            kind: QueueKind::RetainedTopic,
            topic: Some(topic.into()),
            ..QueueRecord::default()
        }
    }

    /// A durable subscription with default settings.
    pub fn durable_subscription(
        name: impl Into<String>,
        topic: impl Into<String>,
        client_id: impl Into<String>,
        subscription_name: impl Into<String>,
        ack_mode: AckMode,
    ) -> QueueRecord {
        QueueRecord {
            name: name.into(),
            kind: QueueKind::DurableSubscription,
            topic: Some(topic.into()),
            client_id: Some(client_id.into()),
            subscription_name: Some(subscription_name.into()),
            ack_mode,
            ..QueueRecord::default()
        }
    }
}

/// One change to the store. A [`Store::submit`](crate::Store::submit) call carries a list of
/// them, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates or replaces a queue or durable-subscription definition.
    DefineQueue(QueueRecord),
    /// Deletes a definition and every message stored under that name.
    DeleteQueue {
        /// The queue or subscription name.
        name: String,
    },
    /// Stores a message (replacing any message with the same `seq` in that queue, delivery count
    /// included). The broker appends new `seq`s (its message ids only grow) and rewrites a
    /// stored one only to record a new due time (a delayed redelivery). A group commit that
    /// drops an append and the removal of the same message together still applies the removal,
    /// so a rewritten message removed in the same group leaves no older copy behind.
    Append {
        /// The queue or subscription name.
        queue: String,
        /// The message.
        message: StoredMessage,
    },
    /// Removes a message, typically after its ack. Removing a message that is not stored is not
    /// an error.
    Remove {
        /// The queue or subscription name.
        queue: String,
        /// The message's sequence number.
        seq: u64,
    },
    /// Records a message's delivery count, so a redelivery after a restart is flagged
    /// `redelivered:true` and dead-letter limits keep counting. Ignored at recovery if the
    /// message itself is not stored.
    SetDeliveryCount {
        /// The queue or subscription name.
        queue: String,
        /// The message's sequence number.
        seq: u64,
        /// The new delivery count.
        count: u32,
    },
}

/// Called exactly once per submission with its outcome; see
/// [`Store::submit`](crate::Store::submit) for the thread it runs on.
pub type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send + 'static>;

/// What the store holds, as read back at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Every queue and durable subscription, sorted by name.
    pub queues: Vec<RecoveredQueue>,
    /// Records that could not be recovered, and other anomalies. Each was also logged with
    /// `tracing::warn!`. Never silently empty when something was skipped.
    pub problems: Vec<RecoveryProblem>,
}

impl Recovery {
    /// The recovered queue named `name`, if any.
    pub fn queue(&self, name: &str) -> Option<&RecoveredQueue> {
        self.queues.iter().find(|q| q.record.name == name)
    }

    /// Total number of recovered messages.
    pub fn message_count(&self) -> usize {
        self.queues.iter().map(|q| q.messages.len()).sum()
    }
}

/// One queue or durable subscription and its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredQueue {
    /// The definition. If messages were found without one, this is
    /// [`QueueRecord::queue`]`(name)` and a [`ProblemKind::MissingDefinition`] is reported.
    pub record: QueueRecord,
    /// The messages in ascending `seq` order, with their latest delivery counts.
    pub messages: Vec<StoredMessage>,
    /// One more than the highest `seq` seen for this queue, including skipped records; 0 for an
    /// empty queue. Continue numbering from here so a skipped record's `seq` is not reused.
    pub next_seq: u64,
}

/// Where, in a queue's stored data, a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordPosition {
    /// The queue's definition record.
    Definition,
    /// The message with this sequence number.
    Message {
        /// Sequence number.
        seq: u64,
    },
    /// The delivery-count record of the message with this sequence number.
    DeliveryCount {
        /// Sequence number.
        seq: u64,
    },
    /// A key that is not part of the layout, as raw bytes.
    UnknownKey(Vec<u8>),
    /// The queue as a whole.
    Queue,
}

impl fmt::Display for RecordPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordPosition::Definition => f.write_str("definition"),
            RecordPosition::Message { seq } => write!(f, "message seq {seq}"),
            RecordPosition::DeliveryCount { seq } => write!(f, "delivery count of seq {seq}"),
            RecordPosition::UnknownKey(key) => write!(f, "unknown key {key:02x?}"),
            RecordPosition::Queue => f.write_str("queue"),
        }
    }
}

/// What kind of problem recovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The record failed its checksum or could not be decoded; it was moved to the quarantine
    /// tree and skipped.
    Corrupt,
    /// Messages were stored under a name with no definition; they were recovered under a default
    /// queue definition.
    MissingDefinition,
    /// A key that does not belong to the layout; it was moved to quarantine and skipped.
    UnknownKey,
    /// sled's own files were damaged (it could not open them, or it had lost writes it had
    /// confirmed); the intact records were salvaged from the raw files and every message
    /// counts as delivered once.
    EngineDamaged,
}

/// One record recovery could not use as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryProblem {
    /// The queue or subscription name (lossily decoded if it is not UTF-8).
    pub queue: String,
    /// Which record.
    pub position: RecordPosition,
    /// What was wrong.
    pub kind: ProblemKind,
    /// A human-readable explanation.
    pub detail: String,
}

impl fmt::Display for RecoveryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue `{}`, {}: {:?}: {}", self.queue, self.position, self.kind, self.detail)
    }
}

/// Counters of the write path, for metrics and tests. All are totals since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Submissions accepted.
    pub submissions: u64,
    /// Operations received (applied or cancelled).
    pub ops: u64,
    /// Operations that cancelled out within a group commit and were never written: an append
    /// and the removal of the same message, a delivery count folded into its message or
    /// overtaken by the removal.
    pub cancelled_ops: u64,
    /// Group commits (groups of submissions applied together).
    pub batches: u64,
    /// fsyncs issued by the writer.
    pub fsyncs: u64,
    /// Submissions completed with an error.
    pub failed_submissions: u64,
    /// Submissions refused because the queue to the writer was full.
    pub rejected_submissions: u64,
    /// Times the engine files were reopened after a failure.
    pub reopens: u64,
    /// How long group commits took.
    pub commit_seconds: CommitTimes,
    /// The latest group commit failed (it is not durable; the store may be unwritable).
    pub last_commit_failed: bool,
    /// Damaged records the last recovery set aside (quarantined), including one for a salvage
    /// of damaged engine files.
    pub recovery_problems: u64,
    /// Messages the last recovery salvaged from damaged engine files.
    pub salvaged_messages: u64,
}

/// Upper bounds, in seconds, of the buckets of [`CommitTimes`] (a last bucket holds the rest).
pub const COMMIT_SECONDS_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// A histogram of group commit durations (applying a group and its fsync), since the store
/// opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitTimes {
    /// Commits measured.
    pub count: u64,
    /// Their total duration, in nanoseconds.
    pub sum_nanos: u64,
    /// Commits per bucket (not cumulative): index `i` counts those of at most
    /// `COMMIT_SECONDS_BUCKETS[i]` seconds and more than the bound before; the last, longer ones.
    pub buckets: [u64; COMMIT_SECONDS_BUCKETS.len() + 1],
}
