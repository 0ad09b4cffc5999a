//! The router: destination names to topics and queues.
//!
//! It is read on every SEND, so a publish takes only a read lock to find its topic or queue and
//! releases it before delivering. Every change to the topic table (subscribe, unsubscribe,
//! creating a topic for a wildcard match) happens under the write lock, which keeps "the last
//! subscriber left, remove the topic" and "a subscriber arrives" from racing.
//!
//! Destination names follow the conventions real clients are written against (RabbitMQ and
//! ActiveMQ): `/topic/<name>` fans out, `/queue/<name>` and `/amq/queue/<name>` name the same
//! queue (the latter must already exist), `/temp-queue/<name>` is a private reply queue, and
//! `/reply-queue/<generated>` is what a `reply-to: /temp-queue/..` is rewritten to.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use stampede_protocol::MessageTemplate;
use stampede_storage::{Op, OwnerRecord, QueueKind, QueueRecord, Store};
use tracing::{error, info, warn};

use crate::cluster::{Cluster, ClusterError};
use crate::destination::queue::{
    DeleteRefused, Persistence, QueueEnvironment, QueueHandle, QueueOwner, QueueSettings, QueuedMessage, Verdict,
    now_ms,
};
use crate::destination::retention::{Replay, Retention};
use crate::destination::topic::{Sink, Topic, TopicPattern, TopicSubscriber};
use crate::destination::vhost::{DEFAULT_VHOST, RouterSettings};

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    /// `/topic/<name>`: publish-subscribe. RabbitMQ's `/exchange/<exchange>/<key>` destinations
    /// are topics too (see [`exchange_topic`]), hence the name may be owned.
    Topic(std::borrow::Cow<'a, str>),
    /// `/queue/<name>`: created on first use.
    Queue(&'a str),
    /// `/amq/queue/<name>`: the same queue, which must already exist.
    ExistingQueue(&'a str),
    /// `/temp-queue/<name>`: a private reply queue of the current connection.
    TempQueue(&'a str),
    /// `/reply-queue/<name>`: a temporary queue as named to other connections.
    ReplyQueue(&'a str),
}

/// Prefixes the router understands, for error messages.
pub const KNOWN_PREFIXES: &str = "/topic/, /queue/, /amq/queue/, /temp-queue/, /reply-queue/, /exchange/";

/// The topic that RabbitMQ exchange destination `/exchange/<exchange>/<key>` stands for, as
/// RabbitMQ's STOMP adapter routes it: each SUBSCRIBE gets its own copy of what is routed (an
/// exclusive queue bound to the exchange, in RabbitMQ's terms).
///
/// - `amq.topic` is the exchange `/topic/` uses: `/exchange/amq.topic/a.b` is `/topic/a.b`, with
///   the same wildcards, permissions and subscribers.
/// - `amq.direct` routes on the exact key: wildcards are refused, not matched.
/// - `amq.fanout` ignores the key: every subscriber gets every message.
/// - any other exchange is a topic exchange of its own (its names never meet `/topic/`'s).
///
/// # Errors
/// An empty key where the exchange routes on it, or a wildcard in an `amq.direct` key.
pub fn exchange_topic<'a>(exchange: &str, key: &'a str) -> Result<std::borrow::Cow<'a, str>, DestinationError> {
    let whole = || format!("/exchange/{exchange}/{key}");
    match exchange {
        "" => Err(DestinationError::EmptyName(whole())),
        "amq.fanout" => Ok("exchange:amq.fanout".into()),
        _ if key.is_empty() => Err(DestinationError::EmptyName(whole())),
        "amq.topic" => Ok(key.into()),
        "amq.direct" if TopicPattern::parse(key).is_some() => Err(DestinationError::WildcardNotAllowed(whole())),
        _ => Ok(format!("exchange:{exchange}:{key}").into()),
    }
}

/// Why a destination header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The prefix is not one of [`KNOWN_PREFIXES`].
    #[error("unknown destination {0:?}: destinations start with one of {KNOWN_PREFIXES}")]
    UnknownPrefix(String),
    /// Nothing after the prefix.
    #[error("destination {0:?} has an empty name")]
    EmptyName(String),
    /// A control character (LF, CR, NUL, tab, ...) in the name: it would let a destination
    /// read differently to a subscriber than to the permission rules that allowed it.
    #[error("destination {0:?} contains a control character; destination names cannot")]
    ControlCharacter(String),
    /// A wildcard where only a plain name is allowed.
    #[error("destination {0:?}: wildcards (*, #, >) are only allowed when subscribing to a topic")]
    WildcardNotAllowed(String),
}

impl<'a> Destination<'a> {
    /// Parses a `destination` header value.
    pub fn parse(value: &'a str) -> Result<Destination<'a>, DestinationError> {
        if value.chars().any(char::is_control) {
            return Err(DestinationError::ControlCharacter(value.to_owned()));
        }
        type Make<'a> = fn(&'a str) -> Destination<'a>;
        let table: [(&str, Make<'a>); 5] = [
            ("/topic/", |name| Destination::Topic(name.into())),
            ("/queue/", Destination::Queue),
            ("/amq/queue/", Destination::ExistingQueue),
            ("/temp-queue/", Destination::TempQueue),
            ("/reply-queue/", Destination::ReplyQueue),
        ];
        if let Some(rest) = value.strip_prefix("/exchange/") {
            let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
            return exchange_topic(exchange, key).map(Destination::Topic);
        }
        for (prefix, make) in table {
            if let Some(name) = value.strip_prefix(prefix) {
                if name.is_empty() {
                    return Err(DestinationError::EmptyName(value.to_owned()));
                }
                return Ok(make(name));
            }
        }
        Err(DestinationError::UnknownPrefix(value.to_owned()))
    }
}

#[derive(Default)]
struct TopicTable {
    topics: HashMap<Arc<str>, Arc<Topic>>,
    wildcards: Vec<(TopicPattern, Arc<TopicSubscriber>)>,
}

impl TopicTable {
    fn get_or_create(&mut self, name: &str) -> Arc<Topic> {
        if let Some(topic) = self.topics.get(name) {
            return Arc::clone(topic);
        }
        let name: Arc<str> = Arc::from(name);
        let topic = Arc::new(Topic::new(Arc::clone(&name)));
        for (pattern, subscriber) in &self.wildcards {
            if pattern.matches(&name) {
                topic.add(Arc::clone(subscriber));
            }
        }
        self.topics.insert(name, Arc::clone(&topic));
        topic
    }

    fn remove_from(&mut self, name: &str, subscriber: u64) {
        if let Some(topic) = self.topics.get(name)
            && topic.remove(subscriber) == 0
        {
            self.topics.remove(name);
        }
    }
}

/// A registered topic subscription, needed to remove it again.
#[derive(Debug, Clone)]
pub struct TopicRegistration {
    /// The topic name or pattern.
    pub name: Arc<str>,
    subscriber: u64,
    wildcard: bool,
}

/// A durable topic subscription: a queue bound to a topic (or pattern), owned by the principal
/// that created it.
#[derive(Debug)]
struct Durable {
    queue: QueueHandle,
    registration: TopicRegistration,
    owner: Ownership,
}

/// Who a durable subscription belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Created by this user (`None`: an anonymous client of an open broker).
    User(Option<String>),
    /// Stored before owners were kept: the first principal that may read its topic and
    /// subscribes to that same topic claims it.
    Unclaimed,
}

/// A temporary queue: never stored, consumed only by the connection that created it.
#[derive(Debug, Clone)]
struct TemporaryQueue {
    queue: QueueHandle,
    session: Arc<str>,
    /// Cluster mode: the interest that brings replies sent on other nodes.
    remote: Option<TopicRegistration>,
}

/// Limits on the names clients can create in one virtual host, so that no user can deny
/// service to others by creating names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    /// Queues in the virtual host (`max_queues`); dead-letter queues count, temporary ones not.
    pub max_queues: usize,
    /// Queues one user may create (`max_queues_per_user`).
    pub max_queues_per_user: usize,
    /// Durable subscriptions in the virtual host (`max_durable_subscriptions`).
    pub max_durable_subscriptions: usize,
    /// Durable subscriptions one user may create (`max_durable_subscriptions_per_user`).
    pub max_durable_subscriptions_per_user: usize,
}

impl Default for NameLimits {
    fn default() -> Self {
        crate::config::Config::default().name_limits()
    }
}

/// Who created which names, for the per-user quotas. Anonymous principals (no user name) are
/// bounded only by the virtual host's totals.
#[derive(Debug, Default)]
struct Creators {
    queue_creator: HashMap<Arc<str>, String>,
    queues_per_user: HashMap<String, usize>,
    durables_per_user: HashMap<String, usize>,
}

impl Creators {
    fn count(map: &mut HashMap<String, usize>, user: &str, delta: isize) {
        let entry = map.entry(user.to_owned()).or_default();
        *entry = entry.saturating_add_signed(delta);
        if *entry == 0 {
            map.remove(user);
        }
    }
}

/// Message and subscriber ids, shared by every virtual host so they never repeat.
#[derive(Debug)]
pub struct IdCounters {
    next_message_id: AtomicU64,
    next_id: AtomicU64,
}

impl IdCounters {
    /// Message ids start from the current time in microseconds so they stay unique across
    /// restarts (and recovery moves them above the highest stored one).
    pub fn new() -> IdCounters {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        IdCounters { next_message_id: AtomicU64::new(start), next_id: AtomicU64::new(1) }
    }
}

impl Default for IdCounters {
    fn default() -> Self {
        IdCounters::new()
    }
}

/// Names to topics and queues of one virtual host. Shared by every session of that host.
pub struct Router {
    vhost: Arc<str>,
    topics: RwLock<TopicTable>,
    queues: RwLock<HashMap<Arc<str>, QueueHandle>>,
    temporary: RwLock<HashMap<Arc<str>, TemporaryQueue>>,
    durables: Mutex<HashMap<String, Durable>>,
    creators: Mutex<Creators>,
    client_ids: Mutex<HashSet<String>>,
    queue_settings: QueueSettings,
    queue_overrides: HashMap<String, QueueOverride>,
    limits: NameLimits,
    store: Option<Arc<dyn Store>>,
    ids: Arc<IdCounters>,
    /// Handed to every queue actor this router starts.
    environment: QueueEnvironment,
    /// Topic subscriptions (exact and wildcard) registered now, for metrics.
    topic_subscriptions: AtomicUsize,
    /// The cluster link, in cluster mode.
    cluster: Option<Arc<Cluster>>,
    /// The highest cluster interest generation this router's subscriptions reached.
    interest_generation: AtomicU64,
    /// The scheduler of delayed topic messages, started by the first one.
    topic_delays: std::sync::OnceLock<crate::destination::delay::TopicDelays>,
    /// Retained topic histories (last-value and replay topics).
    retention: Retention,
    this: Weak<Router>,
}

/// Per-queue settings that differ from the defaults (config `[queues.<name>]`).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueOverride {
    /// Most messages waiting.
    pub max_length: Option<usize>,
    /// Most bytes waiting.
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::config::values::serde_with::optional_size")]
    pub max_bytes: Option<usize>,
    /// `reject` or `drop-oldest`.
    pub overflow: Option<crate::destination::queue::OverflowPolicy>,
    /// Time to live of messages that set none, in ms.
    pub default_ttl_ms: Option<u64>,
    /// Deliveries before dead-lettering.
    pub max_deliveries: Option<u32>,
    /// Deleted after this long empty with no consumers, in ms; 0 = never.
    pub idle_expiry_ms: Option<u64>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("vhost", &self.vhost).finish_non_exhaustive()
    }
}

impl Router {
    /// An in-memory router of virtual host `/` whose queues use `queue_settings` (benchmarks
    /// and unit tests).
    pub fn new(queue_settings: QueueSettings) -> Arc<Router> {
        let settings = RouterSettings {
            queue_settings,
            queue_overrides: HashMap::new(),
            limits: NameLimits::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            metrics: Arc::default(),
            cluster: None,
            retention: Arc::default(),
        };
        Router::for_vhost(DEFAULT_VHOST, settings, None, Arc::new(IdCounters::new()))
    }

    /// The router of virtual host `vhost`, whose durable queues keep persistent messages in
    /// `store`.
    pub fn for_vhost(
        vhost: &str,
        settings: RouterSettings,
        store: Option<Arc<dyn Store>>,
        ids: Arc<IdCounters>,
    ) -> Arc<Router> {
        let retention = Retention::new(
            Arc::clone(&settings.retention),
            store.clone(),
            if vhost == DEFAULT_VHOST { String::new() } else { vhost_prefix(vhost) },
            (vhost != DEFAULT_VHOST).then(|| vhost.to_owned()),
        );
        Arc::new_cyclic(|this: &Weak<Router>| Router {
            vhost: Arc::from(vhost),
            retention,
            topics: RwLock::new(TopicTable::default()),
            queues: RwLock::new(HashMap::new()),
            temporary: RwLock::new(HashMap::new()),
            durables: Mutex::new(HashMap::new()),
            creators: Mutex::new(Creators::default()),
            client_ids: Mutex::new(HashSet::new()),
            queue_settings: QueueSettings { metrics: settings.metrics, ..settings.queue_settings },
            queue_overrides: settings.queue_overrides,
            limits: settings.limits,
            store,
            ids,
            environment: QueueEnvironment { owner: this.clone(), tasks: settings.tasks },
            topic_subscriptions: AtomicUsize::new(0),
            cluster: settings.cluster,
            interest_generation: AtomicU64::new(0),
            topic_delays: std::sync::OnceLock::new(),
            this: this.clone(),
        })
    }

    /// The virtual host this router serves.
    pub fn vhost_name(&self) -> &Arc<str> {
        &self.vhost
    }

    /// The name of this router's virtual host.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// A fresh broker-wide message id.
    pub fn next_message_id(&self) -> u64 {
        self.ids.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh broker-wide id for subscribers and consumers.
    pub fn next_id(&self) -> u64 {
        self.ids.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Delivers to every subscriber of topic `name`: connected subscribers get it at once,
    /// durable subscriptions' queues get a copy (waiting for room in their mailboxes). Returns
    /// the verdicts of those queues (persistent messages are stored by them).
    ///
    /// In cluster mode the message also goes to the other nodes, after this node's own
    /// subscribers have it.
    ///
    /// # Errors
    /// Cluster mode only: the engine is unavailable, or the message is too large for it.
    pub async fn publish_topic(
        &self,
        name: &str,
        template: &Arc<MessageTemplate>,
        message: TopicMessage,
    ) -> Result<Vec<Verdict>, ClusterError> {
        self.publish_topic_retained(name, template, message, false).await
    }

    /// [`Router::publish_topic`] for a SEND that may carry `x-retain: true` (`retain`): the
    /// message is also kept in the topic's history when that or a `[topics]` table says so
    /// (the `retention` module), and when its retained copy is stored, one more verdict says
    /// when it is on disk.
    ///
    /// # Errors
    /// As [`Router::publish_topic`].
    pub async fn publish_topic_retained(
        &self,
        name: &str,
        template: &Arc<MessageTemplate>,
        message: TopicMessage,
        retain: bool,
    ) -> Result<Vec<Verdict>, ClusterError> {
        let mut durable = Vec::new();
        let mut congested = Vec::new();
        let Some(cluster) = &self.cluster else {
            let stored = match self.retention.policy(name, retain, message.persistent) {
                None => {
                    self.publish_topic_now(name, template, message.id, &mut durable, &mut congested);
                    None
                }
                Some(policy) => {
                    // History and delivery in one step against replaying subscribers.
                    let retaining = self.retention.retain(name, policy, template, &message);
                    self.publish_topic_now(name, template, message.id, &mut durable, &mut congested);
                    retaining.finish()
                }
            };
            let mut verdicts = finish_delivery(template, message, durable, congested).await;
            verdicts.extend(stored);
            return Ok(verdicts);
        };
        let outgoing = cluster.prepare(template, &message)?;
        self.publish_topic_now(name, template, message.id, &mut durable, &mut congested);
        let remote = cluster.publish(&self.vhost, name, outgoing).await;
        let verdicts = finish_delivery(template, message, durable, congested).await;
        remote.map(|()| verdicts)
    }

    fn publish_topic_now(
        &self,
        name: &str,
        template: &Arc<MessageTemplate>,
        message_id: u64,
        durable: &mut Vec<QueueHandle>,
        congested: &mut Vec<Arc<crate::destination::outbox::Outbox>>,
    ) -> usize {
        let topic = {
            let table = self.topics.read().unwrap_or_else(|p| p.into_inner());
            match table.topics.get(name) {
                Some(topic) => Some(Arc::clone(topic)),
                None if table.wildcards.iter().any(|(p, _)| p.matches(name)) => None,
                None => return 0,
            }
        };
        let topic = match topic {
            Some(topic) => topic,
            None => self.topics.write().unwrap_or_else(|p| p.into_inner()).get_or_create(name),
        };
        topic.publish(template, message_id, durable, congested)
    }

    /// Subscribes to topic `name`, which may be a wildcard pattern.
    ///
    /// In cluster mode it returns once the NATS server has this node's interest in `name`, so
    /// a message published on any node after the SUBSCRIBE's RECEIPT reaches it.
    ///
    /// # Errors
    /// Cluster mode only: the engine is unavailable (nothing stays registered).
    pub async fn subscribe_topic(
        &self,
        name: &str,
        subscriber: Arc<TopicSubscriber>,
    ) -> Result<TopicRegistration, ClusterError> {
        let Some(cluster) = &self.cluster else { return Ok(self.register_topic(name, subscriber)) };
        cluster.check_available()?;
        let registration = self.register_topic(name, subscriber);
        if let Err(error) = cluster.confirm(self.interest_generation.load(Ordering::Acquire)).await {
            self.unsubscribe_topic(&registration);
            return Err(error);
        }
        Ok(registration)
    }

    /// Holds a message for topic `name` until `at` (ms since the epoch), then publishes it to
    /// the topic's subscribers of that moment. At most `limit` are held per virtual host.
    ///
    /// # Errors
    /// The limit is reached, or the broker is shutting down.
    pub fn publish_topic_at(
        &self,
        name: &str,
        template: Arc<MessageTemplate>,
        message: TopicMessage,
        at: u64,
        limit: usize,
    ) -> Result<(), crate::destination::delay::TopicDelayError> {
        let delays = self
            .topic_delays
            .get_or_init(|| crate::destination::delay::TopicDelays::start(self.this.clone(), &self.environment.tasks));
        delays.hold(name, template, message, at, limit)
    }

    /// Delayed topic messages held now.
    pub fn delayed_topic_messages(&self) -> usize {
        self.topic_delays.get().map_or(0, |delays| delays.held())
    }

    /// Subscribes to topic `name` (or pattern) after copying the history `replay` asks for
    /// into the subscriber's outbox, both while retained publishes are held off, so the
    /// subscriber gets the history and then every later message, none twice (see the
    /// `retention` module). Returns the registration and how many messages were replayed.
    ///
    /// Single-node only: the caller refuses replay in cluster mode.
    pub fn subscribe_topic_with_replay(
        &self,
        name: &str,
        subscriber: Arc<TopicSubscriber>,
        replay: Replay,
    ) -> (TopicRegistration, usize) {
        let _paused = self.retention.pause();
        let replayed = self.retention.replay(name, replay, &subscriber, now_ms());
        (self.register_topic(name, subscriber), replayed)
    }

    /// Messages kept now in topic `name`'s history.
    pub fn retained(&self, name: &str) -> usize {
        self.retention.kept(name)
    }

    /// Refuses, in cluster mode, destinations that are not clustered (`[cluster] queues`).
    ///
    /// # Errors
    /// A queue destination while `[cluster] queues = "refuse"`.
    pub fn check_clustered(&self, destination: &Destination<'_>) -> Result<(), ClusterError> {
        match &self.cluster {
            None => Ok(()),
            Some(cluster) => cluster.check_destination(destination),
        }
    }

    /// Refuses, in cluster mode, what a SUBSCRIBE asks of a queue that a queue shared through
    /// JetStream cannot do.
    ///
    /// # Errors
    /// A selector, priority, exclusive consumer or browser on a JetStream queue.
    pub fn check_clustered_subscription(
        &self,
        destination: &Destination<'_>,
        asks: crate::cluster::QueueAsks,
    ) -> Result<(), ClusterError> {
        self.cluster.as_ref().map_or(Ok(()), |cluster| cluster.check_subscription(destination, asks))
    }

    /// Refuses, in cluster mode, a SEND inside a transaction to a queue shared through JetStream.
    ///
    /// # Errors
    /// See [`Cluster::check_transaction`].
    pub fn check_clustered_transaction(&self, destination: &Destination<'_>) -> Result<(), ClusterError> {
        self.cluster.as_ref().map_or(Ok(()), |cluster| cluster.check_transaction(destination))
    }

    /// This broker's cluster link, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Registers a topic subscription at once (and, in cluster mode, this node's interest in
    /// it, which the link subscribes on NATS in the background).
    fn register_topic(&self, name: &str, subscriber: Arc<TopicSubscriber>) -> TopicRegistration {
        if let Some(cluster) = &self.cluster {
            let generation = cluster.add_interest(&self.vhost, name, Arc::clone(&subscriber));
            self.interest_generation.fetch_max(generation, Ordering::AcqRel);
        }
        let id = subscriber.id;
        let mut table = self.topics.write().unwrap_or_else(|p| p.into_inner());
        self.topic_subscriptions.fetch_add(1, Ordering::Relaxed);
        match TopicPattern::parse(name) {
            Some(pattern) => {
                for topic in table.topics.values() {
                    if pattern.matches(topic.name()) {
                        topic.add(Arc::clone(&subscriber));
                    }
                }
                table.wildcards.push((pattern, subscriber));
                TopicRegistration { name: Arc::from(name), subscriber: id, wildcard: true }
            }
            None => {
                table.get_or_create(name).add(subscriber);
                TopicRegistration { name: Arc::from(name), subscriber: id, wildcard: false }
            }
        }
    }

    /// Removes a topic subscription.
    pub fn unsubscribe_topic(&self, registration: &TopicRegistration) {
        if let Some(cluster) = &self.cluster {
            cluster.drop_interest(&self.vhost, &registration.name, registration.subscriber);
        }
        let mut table = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let _ = self.topic_subscriptions.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if registration.wildcard {
            table.wildcards.retain(|(_, s)| s.id != registration.subscriber);
            let names: Vec<Arc<str>> = table.topics.keys().cloned().collect();
            for name in names {
                table.remove_from(&name, registration.subscriber);
            }
        } else {
            table.remove_from(&registration.name, registration.subscriber);
        }
    }

    /// Topic subscriptions registered now (a wildcard subscription counts once).
    pub fn topic_subscriber_total(&self) -> usize {
        self.topic_subscriptions.load(Ordering::Relaxed)
    }

    /// Every topic that exists now with its subscriber count (wildcard subscribers included
    /// in each topic they match). The table's lock is held only to copy the names.
    pub fn topic_subscriber_counts(&self) -> Vec<(Arc<str>, usize)> {
        let topics: Vec<(Arc<str>, Arc<Topic>)> = {
            let table = self.topics.read().unwrap_or_else(|p| p.into_inner());
            table.topics.iter().map(|(name, topic)| (Arc::clone(name), Arc::clone(topic))).collect()
        };
        topics.into_iter().map(|(name, topic)| (name, topic.subscriber_count())).collect()
    }

    /// Subscribers of topic `name` right now (0 when it does not exist).
    pub fn topic_subscribers(&self, name: &str) -> usize {
        let table = self.topics.read().unwrap_or_else(|p| p.into_inner());
        table.topics.get(name).map_or(0, |t| t.subscriber_count())
    }

    /// The queue `name` (a `/queue/` queue), if it exists. Temporary queues are not found
    /// here: they are reached only through [`Router::temporary_queue_for`] and
    /// [`Router::reply_queue`].
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.queues.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// The queue `name` (a `/queue/` queue), created (and its actor started) if needed. For
    /// the broker's own use (dead-letter queues, recovery); clients go through
    /// [`Router::client_queue`], which is bounded.
    pub fn queue_or_create(&self, name: &str) -> QueueHandle {
        self.queue_or_create_with(name, None, Vec::new())
    }

    /// The queue `name` for a client's SEND or SUBSCRIBE, created if needed unless the virtual
    /// host already holds `max_queues` queues or `creator` already created
    /// `max_queues_per_user` (otherwise sending to ever new names would grow memory without
    /// bound, and one user could use up the names of all).
    pub fn client_queue(&self, name: &str, creator: Option<&str>) -> Result<QueueHandle, NameLimitExceeded> {
        if let Some(queue) = self.queue(name) {
            return Ok(queue);
        }
        let count = self.queues.read().unwrap_or_else(|p| p.into_inner()).len();
        if count >= self.limits.max_queues {
            return Err(NameLimitExceeded::Queues(self.limits.max_queues));
        }
        if let Some(user) = creator {
            let creators = self.creators.lock().unwrap_or_else(|p| p.into_inner());
            if creators.queues_per_user.get(user).copied().unwrap_or(0) >= self.limits.max_queues_per_user {
                return Err(NameLimitExceeded::QueuesPerUser(self.limits.max_queues_per_user));
            }
        }
        Ok(self.queue_or_create_with(name, creator, Vec::new()))
    }

    /// The temporary queue `name` of connection `session`: never stored, consumed only by that
    /// connection, deleted with it. Temporary queues do not count toward `max_queues` (the
    /// session bounds how many it holds). Another connection's queue of that name is refused.
    pub fn temporary_queue_for(&self, name: &str, session: &Arc<str>) -> Result<QueueHandle, ReplyQueueError> {
        // Cluster mode: session ids repeat across nodes, so the name carries this node's instance.
        let cluster = self.cluster.as_ref().filter(|c| c.queues_on_jetstream());
        let clustered;
        let name = match cluster {
            Some(cluster) => {
                clustered = format!("{}.{name}", cluster.instance());
                clustered.as_str()
            }
            None => name,
        };
        if let Some(existing) = self.temporary.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return if existing.session == *session {
                Ok(existing.queue.clone())
            } else {
                Err(ReplyQueueError::NotOwner)
            };
        }
        let mut temporary = self.temporary.write().unwrap_or_else(|p| p.into_inner());
        let entry = temporary.entry(Arc::from(name)).or_insert_with(|| {
            let queue = QueueHandle::spawn(
                Arc::from(name),
                self.settings_for(name, false),
                &self.environment,
                None,
                Vec::new(),
            );
            let remote = cluster.map(|_| self.bind(&crate::cluster::reply_topic(name), queue.clone()));
            TemporaryQueue { queue, session: Arc::clone(session), remote }
        });
        if entry.session == *session { Ok(entry.queue.clone()) } else { Err(ReplyQueueError::NotOwner) }
    }

    /// Cluster mode: waits until NATS has this node's interest in its temporary queues, so a
    /// reply sent on another node after the request reaches them.
    ///
    /// # Errors
    /// The engine did not confirm in time.
    pub async fn confirm_reply_interest(&self) -> Result<(), ClusterError> {
        match &self.cluster {
            Some(cluster) if cluster.queues_on_jetstream() => {
                cluster.confirm(self.interest_generation.load(Ordering::Acquire)).await
            }
            _ => Ok(()),
        }
    }

    /// A reply to `/reply-queue/<name>`, which is not this node's: in cluster mode it goes to
    /// the node that holds it (at most once, like a topic message); otherwise it is dropped.
    ///
    /// # Errors
    /// The engine is unavailable, or the message is too large for it.
    pub async fn publish_remote_reply(
        &self,
        name: &str,
        template: &Arc<MessageTemplate>,
        message: TopicMessage,
    ) -> Result<(), ClusterError> {
        let Some(cluster) = self.cluster.as_ref().filter(|c| c.queues_on_jetstream()) else {
            tracing::debug!(name, "reply queue gone; message dropped");
            return Ok(());
        };
        let outgoing = cluster.prepare(template, &message)?;
        cluster.publish(&self.vhost, &crate::cluster::reply_topic(name), outgoing).await
    }

    /// The temporary queue a `/reply-queue/<name>` names, for sending a reply to it.
    pub fn reply_queue(&self, name: &str) -> Option<QueueHandle> {
        self.temporary.read().unwrap_or_else(|p| p.into_inner()).get(name).map(|t| t.queue.clone())
    }

    /// Deletes temporary queue `name` of `session`.
    pub async fn delete_temporary_queue(&self, name: &str, session: &Arc<str>) {
        let removed = {
            let mut temporary = self.temporary.write().unwrap_or_else(|p| p.into_inner());
            match temporary.get(name) {
                Some(t) if t.session == *session => temporary.remove(name),
                _ => None,
            }
        };
        if let Some(temporary) = removed {
            if let Some(remote) = &temporary.remote {
                self.unsubscribe_topic(remote);
            }
            temporary.queue.shutdown(true).await;
        }
    }

    /// Records that a connection of this virtual host uses ActiveMQ `client-id` `id`. Returns
    /// false when another live connection holds it already.
    pub fn claim_client_id(&self, id: &str) -> bool {
        self.client_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned())
    }

    /// Releases a `client-id` claimed with [`Router::claim_client_id`].
    pub fn release_client_id(&self, id: &str) {
        self.client_ids.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn settings_for(&self, name: &str, durable: bool) -> QueueSettings {
        let mut settings = self.queue_settings.clone();
        settings.durable = durable;
        if let Some(o) = self.queue_overrides.get(name) {
            let key = |field: &str| format!("[queues.{}] {field}", crate::config::values::toml_key(name));
            if let Some(max_length) = o.max_length {
                settings.max_length = max_length;
                settings.max_length_key = key("max_length");
            }
            if let Some(max_bytes) = o.max_bytes {
                settings.max_bytes = max_bytes;
                settings.max_bytes_key = key("max_bytes");
            }
            settings.overflow = o.overflow.unwrap_or(settings.overflow);
            settings.default_ttl_ms = o.default_ttl_ms.unwrap_or(settings.default_ttl_ms);
            settings.max_deliveries = o.max_deliveries.unwrap_or(settings.max_deliveries);
            settings.idle_expiry_ms = o.idle_expiry_ms.unwrap_or(settings.idle_expiry_ms);
        }
        settings
    }

    /// The name under which this virtual host stores `key`: unchanged for `/` (so data
    /// directories made before virtual hosts were kept still load), prefixed otherwise.
    fn store_key(&self, key: &str) -> String {
        if &*self.vhost == DEFAULT_VHOST { key.to_owned() } else { format!("{}{key}", vhost_prefix(&self.vhost)) }
    }

    fn record(&self, key: &str, owner: Option<OwnerRecord>) -> QueueRecord {
        let mut record = QueueRecord::queue(self.store_key(key));
        record.owner = owner;
        record.vhost = (&*self.vhost != DEFAULT_VHOST).then(|| self.vhost.to_string());
        record
    }

    fn persistence(&self, record: QueueRecord) -> Option<Persistence> {
        self.store.as_ref().map(|store| Persistence {
            store: Arc::clone(store),
            key: record.name.clone(),
            record,
            disk: store.disk_watermark(),
        })
    }

    fn queue_or_create_with(&self, name: &str, creator: Option<&str>, recovered: Vec<QueuedMessage>) -> QueueHandle {
        self.queue_or_create_from(
            name,
            creator.map(|user| OwnerRecord { user: Some(user.to_owned()) }),
            recovered,
            None,
        )
    }

    fn queue_or_create_from(
        &self,
        name: &str,
        owner: Option<OwnerRecord>,
        recovered: Vec<QueuedMessage>,
        stored: Option<QueueRecord>,
    ) -> QueueHandle {
        if let Some(queue) = self.queue(name) {
            return queue;
        }
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(name) {
            return queue.clone();
        }
        let creator = owner.as_ref().and_then(|o| o.user.clone());
        if let Some(cluster) = self.cluster.as_ref().filter(|c| c.queues_on_jetstream()) {
            // Shared by every node through JetStream: nothing of it is kept in this node's store.
            let queue = cluster.spawn_queue(&self.vhost, name, self.settings_for(name, true), &self.environment);
            queues.insert(Arc::from(name), queue.clone());
            return queue;
        }
        let is_new = stored.is_none();
        let record = stored.unwrap_or_else(|| self.record(&format!("/queue/{name}"), owner));
        let persistence = self.persistence(record.clone());
        if let (Some(p), true) = (&persistence, is_new) {
            // Define it so that it is recreated at start-up, even while empty.
            p.store.submit(vec![Op::DefineQueue(record)], None);
        }
        let queue = QueueHandle::spawn(
            Arc::from(name),
            self.settings_for(name, true),
            &self.environment,
            persistence,
            recovered,
        );
        let name: Arc<str> = Arc::from(name);
        queues.insert(Arc::clone(&name), queue.clone());
        if let Some(user) = creator {
            let mut creators = self.creators.lock().unwrap_or_else(|p| p.into_inner());
            Creators::count(&mut creators.queues_per_user, &user, 1);
            creators.queue_creator.insert(name, user);
        }
        queue
    }

    /// Moves `user`'s count of durable subscriptions by `delta`.
    fn count_durable(&self, user: &str, delta: isize) {
        let mut creators = self.creators.lock().unwrap_or_else(|p| p.into_inner());
        Creators::count(&mut creators.durables_per_user, user, delta);
    }

    /// Takes queue `name` off its creator's quota.
    fn forget_creator(&self, name: &str) {
        let mut creators = self.creators.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user) = creators.queue_creator.remove(name) {
            Creators::count(&mut creators.queues_per_user, &user, -1);
        }
    }

    /// Deletes every queue that has been idle (empty, no consumers) for its idle expiry, as
    /// RabbitMQ does with `x-expires`: queues a typo or a departed client created go away and
    /// stop counting toward `max_queues`. Durable queues are forgotten by the store too.
    /// Returns how many were deleted.
    ///
    /// Each candidate is checked again, and removed, under the write lock of the queue table,
    /// the lock every handle is cloned under: see [`QueueHandle::idle_for_expiry`].
    pub async fn expire_idle_queues(&self) -> usize {
        let now = now_ms();
        let candidates: Vec<Arc<str>> = {
            let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
            queues.iter().filter(|(_, queue)| queue.idle_for_expiry(now)).map(|(name, _)| Arc::clone(name)).collect()
        };
        let mut expired = 0;
        for name in candidates {
            let removed = {
                let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
                match queues.get(&name) {
                    Some(queue) if queue.idle_for_expiry(now) => queues.remove(&name),
                    _ => None,
                }
            };
            if let Some(queue) = removed {
                self.forget_creator(&name);
                info!(vhost = %self.vhost, queue = %name, idle_ms = queue.idle_expiry_ms().unwrap_or(0), "queue deleted after its idle expiry (empty, no consumers)");
                queue.shutdown(true).await;
                expired += 1;
            }
        }
        expired
    }

    /// Deletes `queue` (stopped, its stored messages forgotten) unless, when its actor comes to
    /// the request, it holds messages (`if_empty`) or has consumers (`if_unused`): RabbitMQ's
    /// `if-empty` / `if-unused`, decided by the actor in order with publishes rather than from
    /// counters a moment old, so no accepted message is deleted by a check that came too early.
    ///
    /// # Errors
    /// Why the queue was left alone.
    pub async fn delete_queue_if(
        &self,
        queue: &QueueHandle,
        if_empty: bool,
        if_unused: bool,
    ) -> Result<(), DeleteRefused> {
        queue.delete_if(if_empty, if_unused).await?;
        let name = queue.name();
        let removed = {
            let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
            match queues.get(name) {
                Some(listed) if listed.same_queue(queue) => queues.remove(name),
                _ => None,
            }
        };
        if removed.is_some() {
            self.forget_creator(name);
        }
        Ok(())
    }

    /// Removes queue `name` and stops its actor; with `forget`, its stored messages go too.
    pub async fn delete_queue(&self, name: &str, forget: bool) {
        let removed = self.queues.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        if let Some(queue) = removed {
            self.forget_creator(name);
            queue.shutdown(forget).await;
        }
    }

    /// The queue of durable subscription `name` following `topic`, for principal `user`
    /// (`None`: anonymous), created and bound to the topic if needed.
    ///
    /// A subscription belongs to the principal that created it: anyone else gets
    /// [`DurableError::AccessDenied`] and nothing changes. Attaching with the topic it is bound
    /// to returns its backlog (the caller has checked that `user` may read `topic`); attaching
    /// with another topic is a replacement (JMS semantics): the old subscription and its backlog
    /// are discarded and a new one is bound. A subscription stored before owners were kept is
    /// claimed by the first principal that attaches with its own topic.
    pub async fn durable_subscription(
        &self,
        name: &str,
        topic: &str,
        user: Option<&str>,
    ) -> Result<QueueHandle, DurableError> {
        let owner = Ownership::User(user.map(str::to_owned));
        let replaced = {
            let mut durables = self.durables.lock().unwrap_or_else(|p| p.into_inner());
            match durables.get_mut(name) {
                Some(existing) => {
                    let same_topic = &*existing.registration.name == topic;
                    match &existing.owner {
                        Ownership::User(_) if existing.owner != owner => return Err(DurableError::AccessDenied),
                        Ownership::Unclaimed if !same_topic => return Err(DurableError::AccessDenied),
                        Ownership::Unclaimed => {
                            existing.owner = owner.clone();
                            self.define_durable(name, topic, &owner);
                            if let Some(user) = user {
                                self.count_durable(user, 1);
                            }
                            return Ok(existing.queue.clone());
                        }
                        Ownership::User(_) if same_topic => return Ok(existing.queue.clone()),
                        Ownership::User(_) => durables.remove(name),
                    }
                }
                None => {
                    self.check_durable_room(durables.len(), user)?;
                    None
                }
            }
        };
        if let Some(old) = replaced {
            // A rebind keeps the count of its owner: the old one is gone, the new one counts.
            self.unsubscribe_topic(&old.registration);
            old.queue.shutdown(true).await;
            if let Some(user) = user {
                self.count_durable(user, -1);
            }
        }
        let queue = {
            let mut durables = self.durables.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = durables.get(name) {
                // Another connection of the same owner created it meanwhile.
                return if existing.owner == owner {
                    Ok(existing.queue.clone())
                } else {
                    Err(DurableError::AccessDenied)
                };
            }
            self.check_durable_room(durables.len(), user)?;
            self.define_durable(name, topic, &owner);
            let record = self.durable_record(name, topic, &owner);
            let queue = self.spawn_durable(name, record, Vec::new());
            let registration = self.bind(topic, queue.clone());
            durables.insert(name.to_owned(), Durable { queue: queue.clone(), registration, owner });
            if let Some(user) = user {
                self.count_durable(user, 1);
            }
            queue
        };
        if let Some(cluster) = &self.cluster {
            // Like a plain SUBSCRIBE, return once NATS has the interest. The subscription is
            // this node's either way: if NATS is away it keeps what is published here, and the
            // link subscribes it when NATS is back.
            if let Err(error) = cluster.confirm(self.interest_generation.load(Ordering::Acquire)).await {
                warn!(name, "durable subscription created while {error}");
            }
        }
        Ok(queue)
    }

    fn check_durable_room(&self, count: usize, user: Option<&str>) -> Result<(), DurableError> {
        if count >= self.limits.max_durable_subscriptions {
            return Err(DurableError::Limit(NameLimitExceeded::DurableSubscriptions(
                self.limits.max_durable_subscriptions,
            )));
        }
        if let Some(user) = user {
            let creators = self.creators.lock().unwrap_or_else(|p| p.into_inner());
            if creators.durables_per_user.get(user).copied().unwrap_or(0)
                >= self.limits.max_durable_subscriptions_per_user
            {
                return Err(DurableError::Limit(NameLimitExceeded::DurableSubscriptionsPerUser(
                    self.limits.max_durable_subscriptions_per_user,
                )));
            }
        }
        Ok(())
    }

    fn durable_record(&self, name: &str, topic: &str, owner: &Ownership) -> QueueRecord {
        let owner = match owner {
            Ownership::User(user) => Some(OwnerRecord { user: user.clone() }),
            Ownership::Unclaimed => None,
        };
        let mut record = self.record(&durable_key(name), owner);
        record.kind = QueueKind::DurableSubscription;
        record.topic = Some(topic.to_owned());
        record.subscription_name = Some(name.to_owned());
        record
    }

    fn define_durable(&self, name: &str, topic: &str, owner: &Ownership) {
        if let Some(store) = &self.store {
            store.submit(vec![Op::DefineQueue(self.durable_record(name, topic, owner))], None);
        }
    }

    fn spawn_durable(&self, name: &str, record: QueueRecord, recovered: Vec<QueuedMessage>) -> QueueHandle {
        let display: Arc<str> = Arc::from(format!("durable:{name}"));
        QueueHandle::spawn(
            display,
            self.settings_for(name, true),
            &self.environment,
            self.persistence(record),
            recovered,
        )
    }

    fn bind(&self, topic: &str, queue: QueueHandle) -> TopicRegistration {
        let subscriber = Arc::new(TopicSubscriber { id: self.next_id(), sink: Sink::Queue(queue), selector: None });
        self.register_topic(topic, subscriber)
    }

    /// Deletes durable subscription `name` and its stored messages, if `user` owns it (a
    /// subscription stored before owners were kept may be deleted by anyone who may read its
    /// topic: `may_read` says whether `user` may).
    pub async fn delete_durable_subscription(
        &self,
        name: &str,
        user: Option<&str>,
        may_read: impl Fn(&str) -> bool,
    ) -> Result<bool, DurableError> {
        let removed = {
            let mut durables = self.durables.lock().unwrap_or_else(|p| p.into_inner());
            match durables.get(name) {
                None => return Ok(false),
                Some(existing) => {
                    let allowed = match &existing.owner {
                        Ownership::User(owner) => owner.as_deref() == user,
                        Ownership::Unclaimed => may_read(&existing.registration.name),
                    };
                    if !allowed {
                        return Err(DurableError::AccessDenied);
                    }
                }
            }
            durables.remove(name)
        };
        let Some(durable) = removed else { return Ok(false) };
        if let Ownership::User(Some(owner)) = &durable.owner {
            self.count_durable(owner, -1);
        }
        self.unsubscribe_topic(&durable.registration);
        durable.queue.shutdown(true).await;
        Ok(true)
    }

    /// Every durable subscription now: (name, topic, owner, queue). The table's lock is held
    /// only to copy them.
    pub fn durable_subscriptions(&self) -> Vec<(String, Arc<str>, Ownership, QueueHandle)> {
        let durables = self.durables.lock().unwrap_or_else(|p| p.into_inner());
        durables
            .iter()
            .map(|(name, d)| (name.clone(), Arc::clone(&d.registration.name), d.owner.clone(), d.queue.clone()))
            .collect()
    }

    /// Deletes durable subscription `name` and its stored messages whoever owns it (an
    /// administrator's request). Returns false when there is none.
    pub async fn remove_durable_subscription(&self, name: &str) -> bool {
        let removed = self.durables.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let Some(durable) = removed else { return false };
        if let Ownership::User(Some(owner)) = &durable.owner {
            self.count_durable(owner, -1);
        }
        self.unsubscribe_topic(&durable.registration);
        durable.queue.shutdown(true).await;
        true
    }

    /// The name of the dead-letter queue of queue `name`, or `None` when `name` is itself one.
    pub fn dead_letter_queue_name(&self, name: &str) -> Option<String> {
        let prefix = &self.queue_settings.dead_letter_prefix;
        (!name.starts_with(prefix.as_str())).then(|| format!("{prefix}{name}"))
    }

    /// True when `name` is a dead-letter queue's name.
    pub fn is_dead_letter_queue(&self, name: &str) -> bool {
        name.starts_with(self.queue_settings.dead_letter_prefix.as_str())
    }

    /// Number of durable subscriptions.
    pub fn durable_subscription_count(&self) -> usize {
        self.durables.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Recreates this virtual host's stored queues and durable subscriptions, with their
    /// messages in order, and returns how many messages it recovered. Call before accepting
    /// clients. Message ids continue above the highest stored one.
    pub fn restore(&self, recovered_queues: Vec<stampede_storage::RecoveredQueue>) -> usize {
        let mut highest = 0;
        let mut restored_messages = 0;
        let prefix = if &*self.vhost == DEFAULT_VHOST { String::new() } else { vhost_prefix(&self.vhost) };
        for recovered in recovered_queues {
            let messages: Vec<QueuedMessage> = recovered.messages.into_iter().map(QueuedMessage::from_stored).collect();
            highest = messages.iter().map(|m| m.id).max().unwrap_or(0).max(highest);
            restored_messages += messages.len();
            let record = recovered.record;
            let Some(key) = record.name.strip_prefix(&prefix) else {
                warn!(name = %record.name, vhost = %self.vhost, "stored queue outside its virtual host's names skipped");
                continue;
            };
            match record.kind {
                QueueKind::RetainedTopic => {
                    let topic = record
                        .topic
                        .clone()
                        .or_else(|| self.retention.topic_of_store_key(&record.name).map(str::to_owned));
                    match topic {
                        Some(topic) => {
                            let kept =
                                messages.into_iter().map(|m| (m.id, m.template, m.enqueued_at_ms, m.expires_at_ms));
                            self.retention.restore(&topic, kept.collect(), now_ms());
                        }
                        None => warn!(name = %record.name, "stored retained topic without a topic name skipped"),
                    }
                }
                QueueKind::Queue => match key.strip_prefix("/queue/") {
                    Some(name) => {
                        let owner = record.owner.clone();
                        let ttl = record.ttl_ms;
                        let queue = self.queue_or_create_from(name, owner, messages, Some(record.clone()));
                        if let Some(ttl) = ttl {
                            queue.restore_default_ttl(ttl);
                        }
                    }
                    None => warn!(name = %record.name, "stored queue with an unknown name skipped"),
                },
                QueueKind::DurableSubscription => {
                    let (Some(name), Some(topic)) = (record.subscription_name.clone(), record.topic.clone()) else {
                        warn!(name = %record.name, "stored durable subscription without name or topic skipped");
                        continue;
                    };
                    let owner = match &record.owner {
                        Some(owner) => Ownership::User(owner.user.clone()),
                        None => Ownership::Unclaimed,
                    };
                    if let Ownership::User(Some(user)) = &owner {
                        self.count_durable(user, 1);
                    }
                    let queue = self.spawn_durable(&name, record, messages);
                    let registration = self.bind(&topic, queue.clone());
                    self.durables
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name, Durable { queue, registration, owner });
                }
            }
        }
        self.ids.next_message_id.fetch_max(highest + 1, Ordering::Relaxed);
        restored_messages
    }

    /// The store, if the broker has one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// Stops every queue actor, durable subscriptions' and temporary ones included, so their
    /// last writes reach the store before it is flushed. Messages stay stored for the next
    /// start.
    pub async fn stop_queues(&self) {
        if let Some(delays) = self.topic_delays.get() {
            delays.stop();
        }
        for queue in self.every_queue() {
            queue.shutdown(false).await;
        }
    }

    /// Every queue: named ones, durable subscriptions' and temporary ones (metrics, shutdown).
    /// Each table's lock is held only to copy its handles, one table at a time.
    pub fn every_queue(&self) -> Vec<QueueHandle> {
        let durable: Vec<QueueHandle> =
            self.durables.lock().unwrap_or_else(|p| p.into_inner()).values().map(|d| d.queue.clone()).collect();
        let temporary: Vec<QueueHandle> =
            self.temporary.read().unwrap_or_else(|p| p.into_inner()).values().map(|t| t.queue.clone()).collect();
        let mut all = self.queues();
        all.extend(durable);
        all.extend(temporary);
        all
    }

    /// Every queue, for shutdown and management.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

impl QueueOwner for Router {
    fn dead_letter_queue(&self, name: &str) -> Option<QueueHandle> {
        Some(self.queue_or_create(name))
    }

    /// Forgets the failed actor wherever it is registered, then, for a durable queue or
    /// subscription, reads its messages back from the store and starts it anew, bound as before.
    /// A transient queue's messages were only in the actor, so it is gone.
    fn queue_failed(&self, queue: usize, stored_as: Option<String>) {
        let failed_queue = {
            let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
            let name = queues.iter().find(|(_, q)| q.id() == queue).map(|(name, _)| Arc::clone(name));
            name.inspect(|name| {
                queues.remove(name);
            })
        };
        if let Some(name) = failed_queue {
            self.forget_creator(&name);
        }
        let failed_durable = {
            let mut durables = self.durables.lock().unwrap_or_else(|p| p.into_inner());
            let name = durables.iter().find(|(_, d)| d.queue.id() == queue).map(|(name, _)| name.clone());
            name.and_then(|name| durables.remove(&name))
        };
        if let Some(durable) = failed_durable {
            self.unsubscribe_topic(&durable.registration);
            if let Ownership::User(Some(user)) = &durable.owner {
                self.count_durable(user, -1);
            }
        }
        let failed_temporary: Vec<TemporaryQueue> = {
            let mut temporary = self.temporary.write().unwrap_or_else(|p| p.into_inner());
            let names: Vec<Arc<str>> =
                temporary.iter().filter(|(_, t)| t.queue.id() == queue).map(|(n, _)| Arc::clone(n)).collect();
            names.iter().filter_map(|name| temporary.remove(name)).collect()
        };
        for remote in failed_temporary.iter().filter_map(|t| t.remote.as_ref()) {
            self.unsubscribe_topic(remote);
        }
        let (Some(key), Some(store), Some(router)) = (stored_as, self.store.clone(), self.this.upgrade()) else {
            return;
        };
        self.environment.tasks.spawn(async move {
            match tokio::task::spawn_blocking(move || store.recover()).await {
                Ok(Ok(recovery)) => {
                    let mine: Vec<_> = recovery.queues.into_iter().filter(|q| q.record.name == key).collect();
                    let messages = router.restore(mine);
                    warn!(queue = %key, messages, "queue restarted from its stored messages after a panic");
                }
                Ok(Err(error)) => error!(queue = %key, "cannot restart the queue after a panic: {error}"),
                Err(error) => error!(queue = %key, "cannot restart the queue after a panic: {error}"),
            }
        });
    }
}

/// The store key of durable subscription `name`.
fn durable_key(name: &str) -> String {
    format!("durable:{name}")
}

/// What store keys of virtual host `vhost` start with (every host but `/`).
fn vhost_prefix(vhost: &str) -> String {
    format!("vhost:{}:{vhost}|", vhost.len())
}

/// Longest a publish waits for subscribers whose outboxes are over half full (the stall gate,
/// see the `outbox` module). Long enough for a reading subscriber's connection to take its
/// deliveries, short enough that a stuck one costs its publishers little.
const SLOW_CONSUMER_STALL: std::time::Duration = std::time::Duration::from_millis(20);

/// Delivers `template` to the subscribers of `topic` (a cluster node's remote messages take
/// this path, for the local subscribers of one pattern); returns the durable queues' verdicts.
pub(crate) async fn deliver_to(topic: &Topic, template: &Arc<MessageTemplate>, message: TopicMessage) -> Vec<Verdict> {
    let mut durable = Vec::new();
    let mut congested = Vec::new();
    topic.publish(template, message.id, &mut durable, &mut congested);
    finish_delivery(template, message, durable, congested).await
}

/// The part of a topic delivery that may wait: the stall gate for subscribers that fell
/// behind, then a copy into each durable subscription's queue.
async fn finish_delivery(
    template: &Arc<MessageTemplate>,
    message: TopicMessage,
    durable: Vec<QueueHandle>,
    congested: Vec<Arc<crate::destination::outbox::Outbox>>,
) -> Vec<Verdict> {
    if !congested.is_empty() {
        // The stall gate: give subscribers that fell behind a moment to catch up.
        let deadline = tokio::time::Instant::now() + SLOW_CONSUMER_STALL;
        for outbox in congested {
            if tokio::time::timeout_at(deadline, outbox.wait_for_room()).await.is_err() {
                outbox.mark_unresponsive();
            }
        }
    }
    let mut verdicts = Vec::with_capacity(durable.len());
    for queue in durable {
        let copy = QueuedMessage {
            id: message.id,
            template: Arc::clone(template),
            delivery_count: 0,
            persistent: message.persistent,
            expires_at_ms: message.expires_at_ms,
            enqueued_at_ms: message.enqueued_at_ms,
        };
        if let Ok(verdict) = queue.publish(copy).await {
            verdicts.push(verdict);
        }
    }
    verdicts
}

/// A client would create a name beyond one of the [`NameLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameLimitExceeded {
    /// `max_queues`.
    #[error("the virtual host holds its maximum of {0} queues")]
    Queues(usize),
    /// `max_queues_per_user`.
    #[error("the user created its maximum of {0} queues")]
    QueuesPerUser(usize),
    /// `max_durable_subscriptions`.
    #[error("the virtual host holds its maximum of {0} durable subscriptions")]
    DurableSubscriptions(usize),
    /// `max_durable_subscriptions_per_user`.
    #[error("the user created its maximum of {0} durable subscriptions")]
    DurableSubscriptionsPerUser(usize),
}

impl From<NameLimitExceeded> for crate::error::StompError {
    fn from(error: NameLimitExceeded) -> Self {
        use crate::error::StompError;
        match error {
            NameLimitExceeded::Queues(n) => StompError::limit("queues", n, "max_queues"),
            NameLimitExceeded::QueuesPerUser(n) => {
                StompError::limit("queues created by one user", n, "max_queues_per_user")
            }
            NameLimitExceeded::DurableSubscriptions(n) => {
                StompError::limit("durable subscriptions", n, "max_durable_subscriptions")
            }
            NameLimitExceeded::DurableSubscriptionsPerUser(n) => {
                StompError::limit("durable subscriptions created by one user", n, "max_durable_subscriptions_per_user")
            }
        }
    }
}

/// Why a durable subscription cannot be attached or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// It belongs to another principal.
    #[error("the durable subscription belongs to another user")]
    AccessDenied,
    /// Creating it would exceed a limit.
    #[error(transparent)]
    Limit(#[from] NameLimitExceeded),
}

/// Why a temporary queue cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyQueueError {
    /// It belongs to another connection.
    #[error("the temporary queue belongs to another connection")]
    NotOwner,
}

/// What a topic publish needs to copy a message into durable subscriptions.
#[derive(Debug, Clone, Copy)]
pub struct TopicMessage {
    /// The message id.
    pub id: u64,
    /// `persistent:true` on the SEND.
    pub persistent: bool,
    /// Expiry in ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// When it was published.
    pub enqueued_at_ms: u64,
}

impl TopicMessage {
    /// A non-persistent message published now.
    pub fn transient(id: u64) -> TopicMessage {
        TopicMessage { id, persistent: false, expires_at_ms: None, enqueued_at_ms: now_ms() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_durable_queue_whose_actor_panics_is_restarted_from_its_stored_messages() {
        let store: Arc<dyn Store> = Arc::new(stampede_storage::MemoryStore::new());
        let settings = RouterSettings {
            queue_settings: QueueSettings::default(),
            queue_overrides: HashMap::new(),
            limits: NameLimits::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            metrics: Arc::default(),
            cluster: None,
            retention: Arc::default(),
        };
        let router = Router::for_vhost(DEFAULT_VHOST, settings, Some(store), Arc::new(IdCounters::new()));
        let queue = router.client_queue("orders", None).unwrap();
        let template =
            Arc::new(MessageTemplate::new(stampede_protocol::Headers::new(), bytes::Bytes::from_static(b"kept")));
        let message = QueuedMessage {
            id: router.next_message_id(),
            template,
            delivery_count: 0,
            persistent: true,
            expires_at_ms: None,
            enqueued_at_ms: now_ms(),
        };
        queue.publish(message).await.unwrap().await.unwrap().unwrap();
        queue.panic_for_test().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(restarted) = router.queue("orders").filter(|q| q.id() != queue.id()) {
                assert_eq!(restarted.depth(), 1, "the stored message is back");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the queue was not restarted");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_transient_queue_whose_actor_panics_is_removed() {
        let router = Router::new(QueueSettings::default());
        let queue = router.temporary_queue_for("reply-x", &Arc::from("session-x")).unwrap();
        queue.panic_for_test().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while router.reply_queue("reply-x").is_some() {
            assert!(tokio::time::Instant::now() < deadline, "the queue was not removed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn exchange_destinations_map_onto_topics_as_rabbitmq_routes_them() {
        assert_eq!(exchange_topic("amq.topic", "a.*").as_deref(), Ok("a.*"));
        assert_eq!(exchange_topic("amq.direct", "k").as_deref(), Ok("exchange:amq.direct:k"));
        assert!(matches!(exchange_topic("amq.direct", "k.*"), Err(DestinationError::WildcardNotAllowed(_))));
        assert_eq!(exchange_topic("amq.fanout", "ignored"), exchange_topic("amq.fanout", ""));
        assert_eq!(exchange_topic("orders", "eu.#").as_deref(), Ok("exchange:orders:eu.#"));
        assert!(matches!(exchange_topic("amq.topic", ""), Err(DestinationError::EmptyName(_))));
    }

    #[test]
    fn destinations_parse_by_prefix() {
        assert_eq!(Destination::parse("/topic/a.b"), Ok(Destination::Topic("a.b".into())));
        assert_eq!(Destination::parse("/queue/x"), Ok(Destination::Queue("x")));
        assert_eq!(Destination::parse("/amq/queue/x"), Ok(Destination::ExistingQueue("x")));
        assert_eq!(Destination::parse("/temp-queue/r"), Ok(Destination::TempQueue("r")));
        assert_eq!(Destination::parse("/exchange/amq.topic/a.b"), Ok(Destination::Topic("a.b".into())));
        assert_eq!(Destination::parse("/exchange/amq.fanout"), Ok(Destination::Topic("exchange:amq.fanout".into())));
        assert!(matches!(Destination::parse("/exchange/"), Err(DestinationError::EmptyName(_))));
        assert!(matches!(Destination::parse("/exchanges/x"), Err(DestinationError::UnknownPrefix(_))));
        assert!(matches!(Destination::parse("/queue/"), Err(DestinationError::EmptyName(_))));
    }

    #[test]
    fn destinations_with_control_characters_are_refused() {
        for bad in ["/topic/a.\nb", "/topic/a\r", "/queue/\0x", "/queue/a\tb", "/topic/a\u{7f}", "/queue/\u{85}"] {
            assert_eq!(Destination::parse(bad), Err(DestinationError::ControlCharacter(bad.to_owned())), "{bad:?}");
        }
        let message = DestinationError::ControlCharacter("/topic/a.\nb".into()).to_string();
        assert!(message.contains(r#""/topic/a.\nb""#), "the name is quoted with its escapes: {message}");
    }
}
