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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use stampede_protocol::MessageTemplate;
use stampede_storage::{Op, QueueKind, QueueRecord, Recovery, Store};
use tracing::{info, warn};

use crate::queue::{Persistence, QueueHandle, QueueSettings, QueuedMessage, Verdict, now_ms};
use crate::topic::{Pattern, Sink, Topic, TopicSubscriber};

/// A parsed destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// `/topic/<name>`: publish-subscribe.
    Topic(&'a str),
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
pub const KNOWN_PREFIXES: &str = "/topic/, /queue/, /amq/queue/, /temp-queue/, /reply-queue/";

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
            ("/topic/", Destination::Topic),
            ("/queue/", Destination::Queue),
            ("/amq/queue/", Destination::ExistingQueue),
            ("/temp-queue/", Destination::TempQueue),
            ("/reply-queue/", Destination::ReplyQueue),
        ];
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
    wildcards: Vec<(Pattern, Arc<TopicSubscriber>)>,
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

/// A durable topic subscription: a queue bound to a topic (or pattern).
#[derive(Debug)]
struct Durable {
    queue: QueueHandle,
    registration: TopicRegistration,
}

/// Names to topics and queues. Shared by every session.
pub struct Router {
    topics: RwLock<TopicTable>,
    queues: RwLock<HashMap<Arc<str>, QueueHandle>>,
    durables: Mutex<HashMap<String, Durable>>,
    queue_settings: QueueSettings,
    queue_overrides: HashMap<String, QueueOverride>,
    store: Option<Arc<dyn Store>>,
    max_queues: std::sync::atomic::AtomicUsize,
    next_message_id: AtomicU64,
    next_id: AtomicU64,
    this: Weak<Router>,
}

/// Per-queue settings that differ from the defaults (config `[queues.<name>]`).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueOverride {
    /// Most messages waiting.
    pub max_length: Option<usize>,
    /// Most bytes waiting.
    pub max_bytes: Option<usize>,
    /// `reject` or `drop-oldest`.
    pub overflow: Option<crate::queue::OverflowPolicy>,
    /// Time to live of messages that set none, in ms.
    pub default_ttl_ms: Option<u64>,
    /// Deliveries before dead-lettering.
    pub max_deliveries: Option<u32>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// A router whose queues use `queue_settings`. Message ids start from the current time in
    /// microseconds so they stay unique across restarts.
    pub fn new(queue_settings: QueueSettings) -> Arc<Router> {
        Router::with_store(queue_settings, HashMap::new(), None)
    }

    /// A router whose durable queues keep persistent messages in `store`.
    pub fn with_store(
        queue_settings: QueueSettings,
        queue_overrides: HashMap<String, QueueOverride>,
        store: Option<Arc<dyn Store>>,
    ) -> Arc<Router> {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Arc::new_cyclic(|this| Router {
            topics: RwLock::new(TopicTable::default()),
            queues: RwLock::new(HashMap::new()),
            durables: Mutex::new(HashMap::new()),
            queue_settings,
            queue_overrides,
            store,
            max_queues: std::sync::atomic::AtomicUsize::new(10_000),
            next_message_id: AtomicU64::new(start),
            next_id: AtomicU64::new(1),
            this: this.clone(),
        })
    }

    /// A fresh broker-wide message id.
    pub fn next_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh broker-wide id for subscribers and consumers.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Delivers to every subscriber of topic `name`: connected subscribers get it at once,
    /// durable subscriptions' queues get a copy (waiting for room in their mailboxes). Returns
    /// the verdicts of those queues (persistent messages are stored by them).
    pub async fn publish_topic(
        &self,
        name: &str,
        template: &Arc<MessageTemplate>,
        message: TopicMessage,
    ) -> Vec<Verdict> {
        let mut durable = Vec::new();
        let mut congested = Vec::new();
        self.publish_topic_now(name, template, message.id, &mut durable, &mut congested);
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

    fn publish_topic_now(
        &self,
        name: &str,
        template: &Arc<MessageTemplate>,
        message_id: u64,
        durable: &mut Vec<QueueHandle>,
        congested: &mut Vec<Arc<crate::outbox::Outbox>>,
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
    pub fn subscribe_topic(&self, name: &str, subscriber: Arc<TopicSubscriber>) -> TopicRegistration {
        let id = subscriber.id;
        let mut table = self.topics.write().unwrap_or_else(|p| p.into_inner());
        match Pattern::parse(name) {
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
        let mut table = self.topics.write().unwrap_or_else(|p| p.into_inner());
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

    /// Subscribers of topic `name` right now (0 when it does not exist).
    pub fn topic_subscribers(&self, name: &str) -> usize {
        let table = self.topics.read().unwrap_or_else(|p| p.into_inner());
        table.topics.get(name).map_or(0, |t| t.subscriber_count())
    }

    /// The queue `name`, if it exists.
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.queues.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// The queue `name` (a `/queue/` queue), created (and its actor started) if needed. For
    /// the broker's own use (dead-letter queues, recovery); clients go through
    /// [`Router::client_queue`], which is bounded.
    pub fn queue_or_create(&self, name: &str) -> QueueHandle {
        self.queue_or_create_with(name, true, Vec::new())
    }

    /// The queue `name` for a client's SEND or SUBSCRIBE, created if needed unless the broker
    /// already holds `max_queues` queues (otherwise sending to ever new names would grow memory
    /// without bound).
    pub fn client_queue(&self, name: &str) -> Result<QueueHandle, TooManyQueues> {
        match self.queue(name) {
            Some(queue) => Ok(queue),
            None => {
                self.check_queue_room()?;
                Ok(self.queue_or_create_with(name, true, Vec::new()))
            }
        }
    }

    /// A temporary queue: never stored, deleted with its connection. Bounded like
    /// [`Router::client_queue`].
    pub fn temporary_queue(&self, name: &str) -> Result<QueueHandle, TooManyQueues> {
        if self.queue(name).is_none() {
            self.check_queue_room()?;
        }
        Ok(self.queue_or_create_with(name, false, Vec::new()))
    }

    fn check_queue_room(&self) -> Result<(), TooManyQueues> {
        let limit = self.max_queues.load(Ordering::Relaxed);
        let count = self.queues.read().unwrap_or_else(|p| p.into_inner()).len();
        if count >= limit { Err(TooManyQueues(limit)) } else { Ok(()) }
    }

    /// Sets the most queues clients may cause to exist (`max_queues`).
    pub fn set_max_queues(&self, limit: usize) {
        self.max_queues.store(limit, Ordering::Relaxed);
    }

    fn settings_for(&self, name: &str, durable: bool) -> QueueSettings {
        let mut settings = self.queue_settings.clone();
        settings.durable = durable;
        if let Some(o) = self.queue_overrides.get(name) {
            settings.max_length = o.max_length.unwrap_or(settings.max_length);
            settings.max_bytes = o.max_bytes.unwrap_or(settings.max_bytes);
            settings.overflow = o.overflow.unwrap_or(settings.overflow);
            settings.default_ttl_ms = o.default_ttl_ms.unwrap_or(settings.default_ttl_ms);
            settings.max_deliveries = o.max_deliveries.unwrap_or(settings.max_deliveries);
        }
        settings
    }

    fn persistence(&self, key: String) -> Option<Persistence> {
        self.store.as_ref().map(|store| Persistence { store: Arc::clone(store), key })
    }

    fn queue_or_create_with(&self, name: &str, durable: bool, recovered: Vec<QueuedMessage>) -> QueueHandle {
        if let Some(queue) = self.queue(name) {
            return queue;
        }
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(name) {
            return queue.clone();
        }
        let key = format!("/queue/{name}");
        let persistence = if durable { self.persistence(key.clone()) } else { None };
        if let (Some(p), true) = (&persistence, recovered.is_empty()) {
            // Define it so that it is recreated at start-up, even while empty.
            p.store.submit(vec![Op::DefineQueue(QueueRecord::queue(key))], None);
        }
        let queue = QueueHandle::spawn(
            Arc::from(name),
            self.settings_for(name, durable),
            self.this.clone(),
            persistence,
            recovered,
        );
        queues.insert(Arc::from(name), queue.clone());
        queue
    }

    /// Removes queue `name` and stops its actor; with `forget`, its stored messages go too.
    pub async fn delete_queue(&self, name: &str, forget: bool) {
        let removed = self.queues.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        if let Some(queue) = removed {
            queue.shutdown(forget).await;
        }
    }

    /// The queue of durable subscription `name` following `topic`, created and bound to the
    /// topic if needed. An existing subscription re-subscribed to another topic is rebound.
    pub fn durable_subscription(&self, name: &str, topic: &str) -> QueueHandle {
        let mut durables = self.durables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = durables.get(name) {
            if &*existing.registration.name == topic {
                return existing.queue.clone();
            }
            self.unsubscribe_topic(&existing.registration);
            let queue = existing.queue.clone();
            let registration = self.bind(topic, queue.clone());
            durables.insert(name.to_owned(), Durable { queue: queue.clone(), registration });
            self.define_durable(name, topic);
            return queue;
        }
        self.define_durable(name, topic);
        let queue = self.spawn_durable(name, Vec::new());
        let registration = self.bind(topic, queue.clone());
        durables.insert(name.to_owned(), Durable { queue: queue.clone(), registration });
        queue
    }

    fn define_durable(&self, name: &str, topic: &str) {
        if let Some(store) = &self.store {
            let mut record = QueueRecord::queue(durable_key(name));
            record.kind = QueueKind::DurableSubscription;
            record.topic = Some(topic.to_owned());
            record.subscription_name = Some(name.to_owned());
            store.submit(vec![Op::DefineQueue(record)], None);
        }
    }

    fn spawn_durable(&self, name: &str, recovered: Vec<QueuedMessage>) -> QueueHandle {
        let display: Arc<str> = Arc::from(format!("durable:{name}"));
        QueueHandle::spawn(
            display,
            self.settings_for(name, true),
            self.this.clone(),
            self.persistence(durable_key(name)),
            recovered,
        )
    }

    fn bind(&self, topic: &str, queue: QueueHandle) -> TopicRegistration {
        let subscriber = Arc::new(TopicSubscriber { id: self.next_id(), sink: Sink::Queue(queue) });
        self.subscribe_topic(topic, subscriber)
    }

    /// Deletes durable subscription `name` and its stored messages. Returns false when there
    /// was none.
    pub async fn delete_durable_subscription(&self, name: &str) -> bool {
        let removed = self.durables.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        match removed {
            Some(durable) => {
                self.unsubscribe_topic(&durable.registration);
                durable.queue.shutdown(true).await;
                true
            }
            None => false,
        }
    }

    /// Number of durable subscriptions.
    pub fn durable_subscription_count(&self) -> usize {
        self.durables.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Recreates stored queues and durable subscriptions, with their messages in order. Call
    /// before accepting clients. Message ids continue above the highest stored one.
    pub fn restore(&self, recovery: Recovery) {
        for problem in &recovery.problems {
            warn!(queue = %problem.queue, position = ?problem.position, kind = ?problem.kind,
                "damaged record set aside at start-up: {}", problem.detail);
        }
        let mut highest = 0;
        let mut restored_messages = 0;
        for recovered in recovery.queues {
            let messages: Vec<QueuedMessage> = recovered.messages.into_iter().map(QueuedMessage::from_stored).collect();
            highest = messages.iter().map(|m| m.id).max().unwrap_or(0).max(highest);
            restored_messages += messages.len();
            let record = recovered.record;
            match record.kind {
                QueueKind::Queue => match record.name.strip_prefix("/queue/") {
                    Some(name) => {
                        let queue = self.queue_or_create_with(name, true, messages);
                        if let Some(ttl) = record.ttl_ms {
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
                    let queue = self.spawn_durable(&name, messages);
                    let registration = self.bind(&topic, queue.clone());
                    self.durables
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name, Durable { queue, registration });
                }
            }
        }
        self.next_message_id.fetch_max(highest + 1, Ordering::Relaxed);
        info!(
            messages = restored_messages,
            queues = self.queues().len(),
            durable_subscriptions = self.durable_subscription_count(),
            "recovered stored state"
        );
    }

    /// The store, if the broker has one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// Stops every queue actor, durable subscriptions' included, so their last writes reach
    /// the store before it is flushed. Messages stay stored for the next start.
    pub async fn stop_queues(&self) {
        let durable: Vec<QueueHandle> =
            self.durables.lock().unwrap_or_else(|p| p.into_inner()).values().map(|d| d.queue.clone()).collect();
        for queue in self.queues().into_iter().chain(durable) {
            queue.shutdown(false).await;
        }
    }

    /// Every queue, for shutdown and management.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// The store key of durable subscription `name`.
fn durable_key(name: &str) -> String {
    format!("durable:{name}")
}

/// Longest a publish waits for subscribers whose outboxes are over half full (the stall gate,
/// see the `outbox` module). Long enough for a reading subscriber's connection to take its
/// deliveries, short enough that a stuck one costs its publishers little.
const SLOW_CONSUMER_STALL: std::time::Duration = std::time::Duration::from_millis(20);

/// A client would create a queue beyond `max_queues`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the broker holds its maximum of {0} queues")]
pub struct TooManyQueues(pub usize);

impl From<TooManyQueues> for crate::error::StompError {
    fn from(error: TooManyQueues) -> Self {
        crate::error::StompError::limit("queues", error.0, "max_queues")
    }
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

    #[test]
    fn destinations_parse_by_prefix() {
        assert_eq!(Destination::parse("/topic/a.b"), Ok(Destination::Topic("a.b")));
        assert_eq!(Destination::parse("/queue/x"), Ok(Destination::Queue("x")));
        assert_eq!(Destination::parse("/amq/queue/x"), Ok(Destination::ExistingQueue("x")));
        assert_eq!(Destination::parse("/temp-queue/r"), Ok(Destination::TempQueue("r")));
        assert!(matches!(Destination::parse("/exchange/x"), Err(DestinationError::UnknownPrefix(_))));
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
