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
use std::sync::{Arc, RwLock, Weak};

use stampede_protocol::MessageTemplate;

use crate::queue::{QueueHandle, QueueSettings};
use crate::topic::{Pattern, Topic, TopicSubscriber};

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
    /// A wildcard where only a plain name is allowed.
    #[error("destination {0:?}: wildcards (*, #, >) are only allowed when subscribing to a topic")]
    WildcardNotAllowed(String),
}

impl<'a> Destination<'a> {
    /// Parses a `destination` header value.
    pub fn parse(value: &'a str) -> Result<Destination<'a>, DestinationError> {
        let table: [(&str, fn(&'a str) -> Destination<'a>); 5] = [
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
        if let Some(topic) = self.topics.get(name) {
            if topic.remove(subscriber) == 0 {
                self.topics.remove(name);
            }
        }
    }
}

/// A registered topic subscription, needed to remove it again.
#[derive(Debug, Clone)]
pub struct TopicRegistration {
    name: Arc<str>,
    subscriber: u64,
    wildcard: bool,
}

/// Names to topics and queues. Shared by every session.
pub struct Router {
    topics: RwLock<TopicTable>,
    queues: RwLock<HashMap<Arc<str>, QueueHandle>>,
    queue_settings: QueueSettings,
    next_message_id: AtomicU64,
    next_id: AtomicU64,
    this: Weak<Router>,
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
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Arc::new_cyclic(|this| Router {
            topics: RwLock::new(TopicTable::default()),
            queues: RwLock::new(HashMap::new()),
            queue_settings,
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

    /// Delivers to every subscriber of topic `name`; returns how many took it.
    pub fn publish_topic(
        &self,
        name: &str,
        template: &Arc<MessageTemplate>,
        message_id: u64,
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
            None => self
                .topics
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_create(name),
        };
        topic.publish(template, message_id)
    }

    /// Subscribes to topic `name`, which may be a wildcard pattern.
    pub fn subscribe_topic(
        &self,
        name: &str,
        subscriber: Arc<TopicSubscriber>,
    ) -> TopicRegistration {
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
                TopicRegistration {
                    name: Arc::from(name),
                    subscriber: id,
                    wildcard: true,
                }
            }
            None => {
                table.get_or_create(name).add(subscriber);
                TopicRegistration {
                    name: Arc::from(name),
                    subscriber: id,
                    wildcard: false,
                }
            }
        }
    }

    /// Removes a topic subscription.
    pub fn unsubscribe_topic(&self, registration: &TopicRegistration) {
        let mut table = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if registration.wildcard {
            table
                .wildcards
                .retain(|(_, s)| s.id != registration.subscriber);
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
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The queue `name`, created (and its actor started) if needed.
    pub fn queue_or_create(&self, name: &str) -> QueueHandle {
        if let Some(queue) = self.queue(name) {
            return queue;
        }
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(Arc::from(name))
            .or_insert_with(|| {
                QueueHandle::spawn(
                    Arc::from(name),
                    self.queue_settings.clone(),
                    self.this.clone(),
                )
            })
            .clone()
    }

    /// Removes queue `name` and stops its actor.
    pub async fn delete_queue(&self, name: &str) {
        let removed = self
            .queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(queue) = removed {
            queue.shutdown().await;
        }
    }

    /// Every queue, for shutdown and management.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_by_prefix() {
        assert_eq!(
            Destination::parse("/topic/a.b"),
            Ok(Destination::Topic("a.b"))
        );
        assert_eq!(Destination::parse("/queue/x"), Ok(Destination::Queue("x")));
        assert_eq!(
            Destination::parse("/amq/queue/x"),
            Ok(Destination::ExistingQueue("x"))
        );
        assert_eq!(
            Destination::parse("/temp-queue/r"),
            Ok(Destination::TempQueue("r"))
        );
        assert!(matches!(
            Destination::parse("/exchange/x"),
            Err(DestinationError::UnknownPrefix(_))
        ));
        assert!(matches!(
            Destination::parse("/queue/"),
            Err(DestinationError::EmptyName(_))
        ));
    }
}
