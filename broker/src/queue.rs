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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use stampede_protocol::{Headers, MessageTemplate, names};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::outbox::{Delivery, Outbox, QueueDelivery};
use crate::router::Router;

/// Mailbox size of every queue actor.
const MAILBOX: usize = 1024;
/// Commands a queue handles before it dispatches (amortises dispatch over bursts).
const COMMAND_BATCH: usize = 256;

/// A message held by a queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Broker-wide unique id, also the `message-id` header.
    pub id: u64,
    /// The shared encoding (headers include `destination`).
    pub template: Arc<MessageTemplate>,
    /// How many times it has been handed to a consumer.
    pub delivery_count: u32,
    /// Whether the publisher asked for `persistent:true`.
    pub persistent: bool,
}

impl QueuedMessage {
    fn size(&self) -> usize {
        self.template.encoded_len_hint()
    }
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
}

/// Settings of one queue.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Deliveries after which a requeued message is dead-lettered instead; 0 = never.
    pub max_deliveries: u32,
    /// Prefix of the dead-letter queue's name (`DLQ.` gives `DLQ.<name>`).
    pub dead_letter_prefix: String,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_deliveries: 10,
            dead_letter_prefix: "DLQ.".to_owned(),
        }
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
}

struct ConsumerState {
    consumer: Consumer,
    unacked: u32,
    unacked_bytes: usize,
}

impl ConsumerState {
    fn has_credit_for(&self, size: usize) -> bool {
        self.unacked < self.consumer.prefetch
            && (self.unacked == 0 || self.unacked_bytes + size <= self.consumer.window_bytes)
    }
}

enum Command {
    Publish {
        message: QueuedMessage,
        accepted: Option<oneshot::Sender<()>>,
    },
    AddConsumer(Consumer),
    RemoveConsumer {
        consumer: u64,
    },
    Settle {
        consumer: u64,
        messages: Vec<u64>,
        outcome: Outcome,
    },
    Shutdown,
}

/// Shared between the handle and the actor, for observation without a round trip.
#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    depth: AtomicUsize,
    consumers: AtomicUsize,
}

/// A cheap, cloneable handle to a queue actor.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
    mailbox: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Publish { .. } => "Publish",
            Command::AddConsumer(_) => "AddConsumer",
            Command::RemoveConsumer { .. } => "RemoveConsumer",
            Command::Settle { .. } => "Settle",
            Command::Shutdown => "Shutdown",
        })
    }
}

/// The queue actor has stopped (the queue was deleted or the broker is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("queue {0} is no longer available")]
pub struct QueueGone(pub Arc<str>);

impl QueueHandle {
    /// Starts the actor for queue `name`.
    pub fn spawn(name: Arc<str>, settings: QueueSettings, router: Weak<Router>) -> QueueHandle {
        let (mailbox, inbox) = mpsc::channel(MAILBOX);
        let shared = Arc::new(Shared {
            name: Arc::clone(&name),
            depth: AtomicUsize::new(0),
            consumers: AtomicUsize::new(0),
        });
        let actor = QueueActor {
            shared: Arc::clone(&shared),
            settings,
            router,
            ready: VecDeque::new(),
            unacked: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            handle: None,
        };
        let handle = QueueHandle { shared, mailbox };
        let own = handle.clone();
        tokio::spawn(actor.run(inbox, own));
        handle
    }

    /// The queue name (without `/queue/`).
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// Messages waiting for a consumer (not counting unacknowledged ones).
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }

    /// Consumers attached now.
    pub fn consumer_count(&self) -> usize {
        self.shared.consumers.load(Ordering::Relaxed)
    }

    async fn command(&self, command: Command) -> Result<(), QueueGone> {
        self.mailbox
            .send(command)
            .await
            .map_err(|_| QueueGone(Arc::clone(&self.shared.name)))
    }

    /// Enqueues a message. Returns once the queue has taken it, which is when a publisher
    /// may be told it was accepted.
    pub async fn publish(&self, message: QueuedMessage) -> Result<(), QueueGone> {
        let (accepted, taken) = oneshot::channel();
        self.command(Command::Publish {
            message,
            accepted: Some(accepted),
        })
        .await?;
        taken
            .await
            .map_err(|_| QueueGone(Arc::clone(&self.shared.name)))
    }

    /// Enqueues a message without waiting for the queue to take it.
    pub async fn publish_nowait(&self, message: QueuedMessage) -> Result<(), QueueGone> {
        self.command(Command::Publish {
            message,
            accepted: None,
        })
        .await
    }

    /// Attaches a consumer.
    pub async fn add_consumer(&self, consumer: Consumer) -> Result<(), QueueGone> {
        self.command(Command::AddConsumer(consumer)).await
    }

    /// Detaches a consumer; its unacknowledged messages are redelivered to others.
    pub async fn remove_consumer(&self, consumer: u64) -> Result<(), QueueGone> {
        self.command(Command::RemoveConsumer { consumer }).await
    }

    /// Reports the fate of delivered messages.
    pub async fn settle(
        &self,
        consumer: u64,
        messages: Vec<u64>,
        outcome: Outcome,
    ) -> Result<(), QueueGone> {
        if messages.is_empty() {
            return Ok(());
        }
        self.command(Command::Settle {
            consumer,
            messages,
            outcome,
        })
        .await
    }

    /// Stops the actor; messages still held are dropped.
    pub async fn shutdown(&self) {
        let _ = self.command(Command::Shutdown).await;
    }
}

struct QueueActor {
    shared: Arc<Shared>,
    settings: QueueSettings,
    router: Weak<Router>,
    ready: VecDeque<QueuedMessage>,
    unacked: HashMap<u64, (u64, QueuedMessage)>,
    consumers: Vec<ConsumerState>,
    next_consumer: usize,
    handle: Option<QueueHandle>,
}

impl QueueActor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>, own: QueueHandle) {
        // The actor keeps a handle to itself to stamp on deliveries; it holds only a sender, so
        // the mailbox closes when every *other* handle is gone and Shutdown arrives.
        self.handle = Some(own);
        let mut batch = Vec::with_capacity(COMMAND_BATCH);
        loop {
            if inbox.recv_many(&mut batch, COMMAND_BATCH).await == 0 {
                break;
            }
            let mut stop = false;
            for command in batch.drain(..) {
                if matches!(command, Command::Shutdown) {
                    stop = true;
                    break;
                }
                self.handle(command);
            }
            if stop {
                break;
            }
            self.dispatch();
            self.shared.depth.store(self.ready.len(), Ordering::Relaxed);
        }
        debug!(queue = %self.shared.name, "queue stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Publish { message, accepted } => {
                self.ready.push_back(message);
                if let Some(accepted) = accepted {
                    let _ = accepted.send(());
                }
            }
            Command::AddConsumer(consumer) => {
                self.consumers.push(ConsumerState {
                    consumer,
                    unacked: 0,
                    unacked_bytes: 0,
                });
                self.shared
                    .consumers
                    .store(self.consumers.len(), Ordering::Relaxed);
            }
            Command::RemoveConsumer { consumer } => self.remove_consumer(consumer),
            Command::Settle {
                consumer,
                messages,
                outcome,
            } => {
                for id in messages {
                    self.settle(consumer, id, outcome);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn remove_consumer(&mut self, consumer: u64) {
        self.consumers.retain(|c| c.consumer.id != consumer);
        self.shared
            .consumers
            .store(self.consumers.len(), Ordering::Relaxed);
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
            self.requeue_or_dead_letter(message, Outcome::Requeue);
        }
    }

    fn settle(&mut self, consumer: u64, id: u64, outcome: Outcome) {
        let Some((owner, message)) = self.unacked.remove(&id) else {
            // Already settled, or requeued because its consumer went away first.
            return;
        };
        if owner != consumer {
            // Not this consumer's to settle: put it back untouched.
            self.unacked.insert(id, (owner, message));
            return;
        }
        let size = message.size();
        if let Some(state) = self
            .consumers
            .iter_mut()
            .find(|c| c.consumer.id == consumer)
        {
            state.unacked = state.unacked.saturating_sub(1);
            state.unacked_bytes = state.unacked_bytes.saturating_sub(size);
        }
        match outcome {
            Outcome::Ack => {}
            Outcome::Requeue | Outcome::Reject => self.requeue_or_dead_letter(message, outcome),
        }
    }

    fn requeue_or_dead_letter(&mut self, message: QueuedMessage, outcome: Outcome) {
        let limit_reached = self.settings.max_deliveries > 0
            && message.delivery_count >= self.settings.max_deliveries;
        let is_dead_letter_queue = self
            .shared
            .name
            .starts_with(&self.settings.dead_letter_prefix);
        if (outcome == Outcome::Reject || limit_reached) && !is_dead_letter_queue {
            let reason = if outcome == Outcome::Reject {
                "rejected"
            } else {
                "delivery-limit"
            };
            self.dead_letter(message, reason);
        } else {
            self.ready.push_front(message);
        }
    }

    fn dead_letter(&mut self, message: QueuedMessage, reason: &'static str) {
        let Some(router) = self.router.upgrade() else {
            return;
        };
        let target = format!("{}{}", self.settings.dead_letter_prefix, self.shared.name);
        let mut headers = Headers::with_capacity(message.template.headers().len() + 2);
        for (name, value) in message.template.headers().iter_shared() {
            if name == names::DESTINATION {
                headers.push(names::DESTINATION, format!("/queue/{target}"));
                headers.push("x-original-destination", value.clone());
            } else {
                headers.push(name.clone(), value.clone());
            }
        }
        headers.push("x-dead-letter-reason", reason);
        let moved = QueuedMessage {
            id: message.id,
            template: Arc::new(MessageTemplate::new(
                headers,
                message.template.body().clone(),
            )),
            delivery_count: 0,
            persistent: message.persistent,
        };
        let queue = router.queue_or_create(&target);
        debug!(queue = %self.shared.name, %target, reason, "dead-lettering message {}", message.id);
        // Another queue's mailbox may be full; never block this actor on it.
        tokio::spawn(async move {
            if let Err(gone) = queue.publish_nowait(moved).await {
                warn!("dead-letter queue unavailable: {gone}");
            }
        });
    }

    fn dispatch(&mut self) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        while let Some(front) = self.ready.front() {
            let size = front.size();
            let count = self.consumers.len();
            let Some(chosen) = (0..count)
                .map(|offset| (self.next_consumer + offset) % count)
                .find(|&i| self.consumers[i].has_credit_for(size))
            else {
                return;
            };
            self.next_consumer = (chosen + 1) % count.max(1);
            let Some(mut message) = self.ready.pop_front() else {
                return;
            };
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
                }),
                redelivered,
            };
            if state.consumer.outbox.push_queue(delivery).is_err() {
                // The connection is closing; its RemoveConsumer is on the way. Keep the message.
                message.delivery_count -= 1;
                self.ready.push_front(message);
                let dead = state.consumer.id;
                self.consumers.retain(|c| c.consumer.id != dead);
                self.shared
                    .consumers
                    .store(self.consumers.len(), Ordering::Relaxed);
                continue;
            }
            state.unacked += 1;
            state.unacked_bytes += size;
            self.unacked
                .insert(message.id, (state.consumer.id, message));
        }
    }
}
