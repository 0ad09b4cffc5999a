//! SUBSCRIBE and UNSUBSCRIBE: topic subscriptions, queue consumers, durable subscriptions,
//! queue browsers and the connection's temporary queues.
//!
//! A subscription is found two ways: by the key the broker chose (what deliveries carry, a
//! number) and by the client's id (what UNSUBSCRIBE and `subscription` headers carry). What a
//! subscription is attached to ([`Target`]) decides how it ends: a topic registration is
//! removed, a queue consumer is detached (its unacknowledged messages go back to the queue), a
//! durable subscription stays stored unless the UNSUBSCRIBE asks, in its client's dialect, to
//! delete it.

use std::collections::VecDeque;
use std::sync::Arc;

use stampede_protocol::{ByteString, Headers, MessageTemplate, Version, names};

use super::acks::{AckMode, Pending};
use super::dialect::{self, PrefetchAsk, WindowAsk};
use super::features::SubscribeFeatures;
use super::request::{SubscribeRequest, UnsubscribeRequest};
use super::{Session, durable_error, not_found, refuse_control_characters, reply_queue_denied};
use crate::destination::queue::{Browse, Consumer, QueueHandle};
use crate::destination::router::{Destination, TopicRegistration};
use crate::destination::selector::Selector;
use crate::destination::topic::{Sink, TopicSubscriber};
use crate::error::StompError;
use crate::security::auth::Operation;

/// What a subscription is attached to.
#[derive(Debug)]
pub(super) enum Target {
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
pub(super) struct Subscription {
    pub id: ByteString,
    pub ack: AckMode,
    pub target: Target,
    /// Queue deliveries written but not yet acknowledged, oldest first (client modes only).
    pub pending: VecDeque<Pending>,
    /// The durable subscription this consumes, if it is one.
    pub durable: Option<String>,
    /// Topic messages dropped while the session was detached, reported (`x-resume-gap`) on the
    /// subscription's first MESSAGE after resumption.
    pub resume_gap: u64,
    /// Carried over by a resumption and not yet SUBSCRIBEd again: one SUBSCRIBE with its id is
    /// taken as already done (clients that re-subscribe on reconnect keep working).
    pub resumed: bool,
}

impl Session {
    pub(super) async fn subscribe(&mut self, request: SubscribeRequest<'_>) -> Result<(), StompError> {
        // Copied out: the decoded value is a slice of the read buffer the frame arrived in, and
        // a subscription lives for the whole connection; keeping the slice would keep that
        // whole buffer alive for every idle subscriber.
        let id = ByteString::from(request.id.to_owned());
        self.router.check_clustered(&request.destination)?;
        let features = &request.features;
        let asks = crate::cluster::QueueAsks {
            selector: features.selector.is_some(),
            priority: features.priority != 0,
            exclusive: features.exclusive,
            browser: features.browser,
        };
        self.router.check_clustered_subscription(&request.destination, asks)?;
        if let Some(key) = self.by_id.get(&id)
            && let Some(subscription) = self.subscriptions.get_mut(key)
            && subscription.resumed
        {
            // The subscription is active since the resumption; its headers stand.
            subscription.resumed = false;
            return Ok(());
        }
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
        let destination_value = request.destination_value;
        self.authorize(Operation::Read, destination_value)?;
        if let Some(ask) = &request.features.redelivery {
            // Checked before anything is created; applied when the consumer is attached.
            self.redelivery_policy(ask.clone())?;
        }
        if request.features.replay.is_some() {
            check_replay(&request.destination, request.durable.is_some(), self.router.cluster().is_some())?;
        }
        let ack = request.ack;
        let credit = request.credit.map(|ask| self.credit(ask, ack));
        let queue = match &request.destination {
            Destination::Topic(name) => match request.durable {
                Some(durable) => {
                    let durable = durable.name(self.client_id.as_deref(), &id, destination_value);
                    refuse_control_characters("durable subscription name", &durable)?;
                    let queue = self
                        .router
                        .durable_subscription(&durable, name, self.user())
                        .await
                        .map_err(|e| durable_error(e, &durable))?;
                    let credit = credit.unwrap_or_else(|| self.credit((PrefetchAsk::Default, WindowAsk::Most), ack));
                    return self.attach_queue(id, ack, queue, credit, Some(durable), request.features).await;
                }
                None => {
                    let key = self.next_subscription_key();
                    let sink = Sink::Connection {
                        subscription: key,
                        outbox: Arc::clone(&self.outbox),
                        policy: self.config.slow_consumer_policy,
                    };
                    let selector = request.features.selector;
                    let subscriber = Arc::new(TopicSubscriber { id: self.router.next_id(), sink, selector });
                    let registration = match request.features.replay {
                        Some(replay) => self.router.subscribe_topic_with_replay(name, subscriber, replay).0,
                        None => self.router.subscribe_topic(name, subscriber).await?,
                    };
                    self.insert_subscription(key, id, ack, Target::Topic(registration), None);
                    return Ok(());
                }
            },
            Destination::Queue(name) => self.router.client_queue(name, self.user())?,
            Destination::ExistingQueue(name) => self.router.queue(name).ok_or_else(|| not_found(destination_value))?,
            Destination::ReplyQueue(name) => {
                // Only the connection that created a temporary queue may consume it.
                match self.temp_queues.values().find(|q| &**q.name() == *name) {
                    Some(queue) => queue.clone(),
                    None => return Err(reply_queue_denied(name)),
                }
            }
            Destination::TempQueue(name) => match self.temp_queues.get(*name) {
                Some(queue) => queue.clone(),
                None => self.create_temp_queue(name)?,
            },
        };
        if let Some(ttl) = request.message_ttl {
            queue.set_default_ttl(ttl).await?;
        }
        if let Some(expiry) = request.queue_expiry {
            queue.set_idle_expiry_ms(expiry);
        }
        let selector = request.selector().cloned();
        match credit {
            None => self.browse(id, ack, queue, destination_value, selector).await,
            Some(credit) => self.attach_queue(id, ack, queue, credit, None, request.features).await,
        }
    }

    /// What a subscription's credit asks become: the prefetch clamped to
    /// `max_unacked_per_consumer` (the configured default when none was asked for), the byte
    /// window capped by `consumer_window_bytes`.
    fn credit(&self, (prefetch, window): (PrefetchAsk, WindowAsk), ack: AckMode) -> (u32, usize) {
        let most = self.config.max_unacked_per_consumer;
        let prefetch = match prefetch {
            PrefetchAsk::Default if ack == AckMode::Auto => self.config.default_prefetch_auto,
            PrefetchAsk::Default => self.config.default_prefetch_client,
            PrefetchAsk::Most => most,
            PrefetchAsk::Messages(n) => n,
        };
        let window = match window {
            WindowAsk::Most => self.config.consumer_window_bytes,
            WindowAsk::Bytes(n) => n.min(self.config.consumer_window_bytes),
        };
        (prefetch.clamp(1, most.max(1)), window)
    }

    /// A queue browser: the queue sends copies of its waiting messages, then Apollo's end
    /// marker, an empty MESSAGE with `browser:end`; rendering that ends the subscription.
    async fn browse(
        &mut self,
        id: ByteString,
        ack: AckMode,
        queue: QueueHandle,
        destination: &str,
        selector: Option<Arc<Selector>>,
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
        let SubscribeFeatures { selector, priority, exclusive, redelivery, .. } = features;
        let redelivery = redelivery.map(|ask| self.redelivery_policy(ask)).transpose()?;
        let attached = Consumer {
            priority,
            exclusive,
            selector,
            redelivery,
            ..Consumer::new(consumer, key, outbox, prefetch, window_bytes)
        };
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
        let subscription =
            Subscription { id, ack, target, pending: VecDeque::new(), durable, resume_gap: 0, resumed: false };
        self.subscriptions.insert(key, Box::new(subscription));
    }

    /// UNSUBSCRIBE. For a durable subscription it only detaches, unless the frame asks to
    /// delete it the way its client's broker would: RabbitMQ clients repeat `durable:true`
    /// (or `persistent:true`), ActiveMQ and Artemis clients name it with
    /// `activemq.subscriptionName` / `durable-subscription-name` (which also works without
    /// being subscribed, to remove a subscription left from an earlier connection).
    pub(super) async fn unsubscribe(&mut self, request: UnsubscribeRequest<'_>) -> Result<(), StompError> {
        let key = match request.id {
            Some(id) => self.by_id.get(id).copied(),
            // Without an id: STOMP 1.0 names the subscription by destination; otherwise the
            // request names a durable subscription (the request stage checked it does).
            None if self.version == Version::V1_0 => request.destination.and_then(|d| self.by_id.get(d).copied()),
            None => None,
        };
        let named = request.named_durable.map(|name| dialect::scoped(self.client_id.as_deref(), name));
        let Some(key) = key else {
            if let Some(id) = request.id
                && let Some(position) = self.ended_browsers.iter().position(|ended| ended == id)
            {
                self.ended_browsers.remove(position);
                return Ok(());
            }
            if let Some(name) = named {
                self.delete_durable(&name).await?;
                return Ok(());
            }
            return Err(StompError::new(
                "unknown subscription",
                format!(
                    "UNSUBSCRIBE names subscription {:?}, which does not exist on this connection.",
                    request.id.map(|id| &id[..]).or(request.destination).unwrap_or("")
                ),
            ));
        };
        let durable = self.subscriptions.get(&key).and_then(|s| s.durable.clone());
        self.detach(key).await;
        if let Some(name) = durable
            && (request.delete || named.is_some())
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

    pub(super) async fn detach(&mut self, key: u64) {
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

    /// This session's temporary queue `name`, created and subscribed (id `/temp-queue/<name>`,
    /// auto ack) on first use, RabbitMQ style.
    pub(super) async fn temp_queue(&mut self, name: &str) -> Result<QueueHandle, StompError> {
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
    pub(super) fn user(&self) -> Option<&str> {
        self.principal.as_ref().and_then(|p| p.name.as_deref())
    }

    /// Whether the principal may read `topic` (a topic name without `/topic/`).
    fn may_read_topic(&self, topic: &str) -> bool {
        self.authorize(Operation::Read, &format!("/topic/{topic}")).is_ok()
    }
}

/// Replay (`x-replay`, `x-replay-since`, `activemq.retroactive`) is for plain topic
/// subscriptions of a single node: a queue has no history to replay, a durable subscription
/// keeps its own, and in cluster mode the history of the other nodes is not here.
fn check_replay(destination: &Destination<'_>, durable: bool, cluster: bool) -> Result<(), StompError> {
    if !matches!(destination, Destination::Topic(_)) {
        return Err(StompError::new(
            "invalid x-replay header: only topics replay",
            "x-replay, x-replay-since and activemq.retroactive ask for a topic's retained history; subscribe to a /topic/ destination.",
        ));
    }
    if durable {
        return Err(StompError::new(
            "invalid x-replay header: not on a durable subscription",
            "A durable subscription keeps its own messages while its subscriber is away; x-replay is for plain topic subscriptions.",
        ));
    }
    if cluster {
        return Err(StompError::new(
            "invalid x-replay header: single-node only for now",
            "Retained topic history is kept per node, so in cluster mode ([cluster]) x-replay would miss what other nodes received; it is refused rather than replaying part of it.",
        ));
    }
    Ok(())
}
