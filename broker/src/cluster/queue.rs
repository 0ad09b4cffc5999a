//! Queues on JetStream: consumers on every node compete for one queue.
//!
//! # Layout
//! One stream per virtual host (`<prefix>-Q-<vhost>`, subjects `<prefix>.<vhost>.q.*`, file
//! storage, `stream_replicas` replicas, work-queue retention: a message is deleted once
//! acknowledged) and one durable pull consumer per queue, filtered on the queue's subject and
//! shared by every node. Per virtual host rather than per queue: every stream is a RAFT group
//! of its own on a replicated NATS cluster, so a stream per queue would grow the engine's work
//! with every queue name a client invents; a consumer is much cheaper. Work-queue retention
//! allows one consumer per subject, which is exactly one per queue.
//!
//! # One node's part
//! Each node runs, per queue its clients use, an actor serving the same mailbox a local queue
//! has ([`QueueHandle::elsewhere`]), so sessions do not know the difference. A SEND is
//! published to JetStream, and its verdict (hence its RECEIPT) waits for JetStream's publish
//! acknowledgement: the message is on disk (`sync_interval: always`) on a quorum of servers.
//! The node pulls only as many messages as its local consumers have credit for, so a fetched
//! message never waits in this node's buffer while a consumer elsewhere could take it; while
//! a local client holds a message, the node tells JetStream it is in progress every third of
//! `ack_wait_ms`, so only a node that is gone lets its messages go to other nodes.
//!
//! # STOMP semantics
//! - ACK is a JetStream ack; NACK a `nak` delayed by `redelivery_delay_ms`. A consumer that
//!   leaves with unacknowledged messages naks them at once, so another node gets them.
//! - `redelivered:true` and the delivery count come from JetStream's delivery count, which
//!   survives the node that delivered before.
//! - At `max_deliveries` (and on NACK `requeue:false`) the message is published to the queue
//!   `DLQ.<name>` in the same stream, and acknowledged once that publish is acknowledged (at
//!   worst a crash in between leaves it in both: at least once, never lost). A message that
//!   comes back past the limit (its node died while holding it) is moved the same way.
//! - `expires`/`expiration`/default TTL travel with the message; an expired one is dropped (or
//!   dead-lettered, per `expired_messages`) when fetched, never delivered.
//! - Not kept (refused with an ERROR by [`super::Cluster::check_subscription`] and
//!   [`super::Cluster::check_transaction`]): selectors, priority, exclusive consumers and
//!   browsing, which need the whole queue in one place, and SENDs in transactions (no atomic
//!   batch across the engine). Queue length limits are not applied; purge and peek from the
//!   management API see only this node's fetched messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use rustc_hash::FxHashMap;
use stampede_protocol::MessageTemplate;
use tracing::{debug, warn};

use super::{Cluster, ClusterError, wire};
use crate::destination::outbox::{Delivery, QueueDelivery};
use crate::destination::queue::{
    ActorEnds, Command, Consumer, DeleteRefused, ExpiredPolicy, Outcome, QueueEnvironment, QueueHandle, QueueSettings,
    Settlement, now_ms,
};
use crate::destination::router::TopicMessage;
use crate::error::StompError;
use crate::http::metrics::DeadLetterReason;

/// Longest one pull request waits on the server for messages before the node asks again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often an outstanding pull checks that its connection is still the one it was made on.
const RECONNECT_CHECK: Duration = Duration::from_millis(250);
/// How long a node waits before retrying after the engine refused or did not answer.
const RETRY: Duration = Duration::from_millis(250);
/// Most acknowledgements outstanding on one queue's consumer, over every node (a bound for
/// the engine; each node is bounded by its clients' credit first).
pub(super) const MAX_ACK_PENDING: i64 = 65_536;

/// A message fetched from JetStream and held by this node.
struct Held {
    message: jetstream::Message,
    template: Arc<MessageTemplate>,
    /// The stream sequence: the `message-id` clients see, the same on every redelivery.
    seq: u64,
    /// JetStream's delivery count, this delivery included.
    delivered: u32,
    persistent: bool,
    size: usize,
}

struct Local {
    consumer: Consumer,
    unacked: u32,
    unacked_bytes: usize,
}

impl Local {
    fn has_credit_for(&self, size: usize) -> bool {
        self.unacked < self.consumer.prefetch
            && (self.unacked == 0 || self.unacked_bytes + size <= self.consumer.window_bytes)
    }

    fn credit(&self) -> usize {
        self.consumer.prefetch.saturating_sub(self.unacked) as usize
    }
}

/// Starts the actor of queue `name` of `vhost` on this node and returns its handle.
pub(crate) fn spawn(
    cluster: Arc<Cluster>,
    vhost: Arc<str>,
    name: Arc<str>,
    settings: QueueSettings,
    environment: &QueueEnvironment,
) -> QueueHandle {
    let (handle, ends) = QueueHandle::elsewhere(Arc::clone(&name), true);
    let subject = cluster.subjects.queue(&vhost, &name);
    let actor = JetStreamQueue {
        stream: cluster.subjects.queue_stream(&vhost),
        consumer_name: super::subject::Subjects::queue_consumer(&name),
        subject,
        cluster,
        vhost,
        name,
        settings,
        environment: environment.clone(),
        ends,
        consumer: None,
        locals: Vec::new(),
        next_local: 0,
        ready: VecDeque::new(),
        unacked: FxHashMap::default(),
        batch: None,
        requested: 0,
        retry_at: None,
        pull_epoch: 0,
        pull_deadline: tokio::time::Instant::now(),
    };
    environment.tasks.spawn(actor.run());
    handle
}

struct JetStreamQueue {
    cluster: Arc<Cluster>,
    vhost: Arc<str>,
    name: Arc<str>,
    subject: String,
    stream: String,
    consumer_name: String,
    settings: QueueSettings,
    environment: QueueEnvironment,
    ends: ActorEnds,
    /// The queue's durable consumer, bound when the first local consumer arrives.
    consumer: Option<PullConsumer>,
    locals: Vec<Local>,
    next_local: usize,
    /// Fetched, not yet handed to a local consumer.
    ready: VecDeque<Held>,
    /// Handed out, not yet settled: stream sequence to (consumer, message).
    unacked: FxHashMap<u64, (u64, Held)>,
    /// The pull request outstanding, if any.
    batch: Option<jetstream::consumer::pull::Batch>,
    /// Messages the outstanding pull may still bring.
    requested: usize,
    /// After a failure, no new pull before this.
    retry_at: Option<tokio::time::Instant>,
    /// The connection the outstanding pull was made on: a pull request does not survive a
    /// reconnect (or an engine restart), so a newer connection ends it.
    pull_epoch: u64,
    /// When the outstanding pull is over for sure: the server ends it at [`PULL_EXPIRES`]; a
    /// pull the server never got (sent while JetStream was still starting) ends here.
    pull_deadline: tokio::time::Instant,
}

impl JetStreamQueue {
    async fn run(mut self) {
        let mut progress = tokio::time::interval(self.cluster.ack_wait / 3);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnects = tokio::time::interval(RECONNECT_CHECK);
        reconnects.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut settlements = Vec::new();
        loop {
            self.pull().await;
            tokio::select! {
                command = self.ends.inbox.recv() => {
                    let Some(command) = command else { break };
                    // Settlements sent before this command are applied first (a session sends
                    // its ACK before its UNSUBSCRIBE), so an acked message is never handed back
                    // for want of ordering.
                    while let Ok(settlement) = self.ends.settlements.try_recv() {
                        settlements.push(settlement);
                    }
                    self.settle_all(&mut settlements).await;
                    if let Command::Shutdown { forget: _, done } = command {
                        self.release_all().await;
                        let _ = done.send(());
                        break;
                    }
                    // Management's delete stops this node's part of the queue (its messages
                    // stay in JetStream for the other nodes); if-empty and if-unused look at
                    // what this node holds.
                    if let Command::DeleteIf { if_empty, if_unused, done } = command {
                        let name = Arc::clone(&self.name);
                        if if_empty && (!self.ready.is_empty() || !self.unacked.is_empty()) {
                            let (ready, unacked) = (self.ready.len(), self.unacked.len());
                            let _ = done.send(Err(DeleteRefused::NotEmpty { name, ready, unacked }));
                            continue;
                        }
                        if if_unused && !self.locals.is_empty() {
                            let _ = done.send(Err(DeleteRefused::InUse { name, consumers: self.locals.len() }));
                            continue;
                        }
                        self.release_all().await;
                        let _ = done.send(Ok(()));
                        break;
                    }
                    self.handle(command).await;
                }
                _ = self.ends.settlements.recv_many(&mut settlements, 256) => {
                    self.settle_all(&mut settlements).await;
                }
                next = next_of(&mut self.batch) => match next {
                    Some(Ok(message)) => {
                        self.requested = self.requested.saturating_sub(1);
                        self.receive(message).await;
                    }
                    Some(Err(error)) => {
                        debug!(queue = %self.name, "cluster: pull ended: {error}");
                        self.end_pull(true);
                    }
                    None => self.end_pull(false),
                },
                _ = progress.tick() => self.keep_alive().await,
                _ = reconnects.tick() => {
                    let stale = self.cluster.epoch() != self.pull_epoch
                        || tokio::time::Instant::now() > self.pull_deadline;
                    if self.batch.is_some() && stale {
                        self.end_pull(false);
                    }
                }
                () = retry_after(self.retry_at) => {}
            }
            self.dispatch().await;
            self.ends.set_counts(self.ready.len(), self.unacked.len(), self.locals.len());
        }
        self.release_all().await;
        debug!(queue = %self.name, "cluster queue stopped");
    }

    fn end_pull(&mut self, failed: bool) {
        self.batch = None;
        self.requested = 0;
        if failed {
            self.retry_at = Some(tokio::time::Instant::now() + RETRY);
        }
    }

    /// Room this node's consumers have for more messages than it holds or asked for.
    fn wanted(&self) -> usize {
        let credit: usize = self.locals.iter().map(Local::credit).sum();
        credit.saturating_sub(self.ready.len())
    }

    /// Asks JetStream for as many messages as local consumers have credit for, when no pull is
    /// outstanding.
    async fn pull(&mut self) {
        if self.batch.is_some() || self.locals.is_empty() || self.wanted() == 0 {
            return;
        }
        if let Some(at) = self.retry_at {
            if tokio::time::Instant::now() < at {
                return;
            }
            self.retry_at = None;
        }
        if self.cluster.check_available().is_err() {
            self.retry_at = Some(tokio::time::Instant::now() + RETRY);
            return;
        }
        if self.consumer.is_none() {
            match self.cluster.queue_consumer(&self.vhost, &self.stream, &self.consumer_name, &self.subject).await {
                Ok(consumer) => self.consumer = Some(consumer),
                Err(error) => {
                    warn!(queue = %self.name, "cluster: cannot bind the queue's JetStream consumer: {error}");
                    self.retry_at = Some(tokio::time::Instant::now() + RETRY * 4);
                    return;
                }
            }
        }
        let Some(consumer) = &self.consumer else { return };
        let wanted = self.wanted();
        self.pull_epoch = self.cluster.epoch();
        self.pull_deadline = tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_secs(1);
        match consumer.batch().max_messages(wanted).expires(PULL_EXPIRES).messages().await {
            Ok(batch) => {
                self.batch = Some(batch);
                self.requested = wanted;
            }
            Err(error) => {
                debug!(queue = %self.name, "cluster: pull request failed: {error}");
                // The consumer may be gone (deleted by hand): bind it again next time.
                self.consumer = None;
                self.retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            // A delayed SEND is refused in cluster mode before it gets here (single-node only).
            Command::Publish { message, verdict, deliver_at: _ } => {
                let mut fields = TopicMessage {
                    id: message.id,
                    persistent: message.persistent,
                    expires_at_ms: message.expires_at_ms,
                    enqueued_at_ms: message.enqueued_at_ms,
                };
                if fields.expires_at_ms.is_none() && self.settings.default_ttl_ms > 0 {
                    fields.expires_at_ms = Some(fields.enqueued_at_ms.saturating_add(self.settings.default_ttl_ms));
                }
                let published =
                    self.cluster.store_queue_message(&self.vhost, &self.subject, &message.template, &fields).await;
                let name = Arc::clone(&self.name);
                let stored = async move {
                    let outcome = match published {
                        Ok(ack) => ack.await,
                        Err(error) => Err(error),
                    };
                    if let Some(verdict) = verdict {
                        let _ = verdict.send(outcome.map_err(|error| {
                            debug!(queue = %name, "cluster: message not stored: {error}");
                            StompError::from(error)
                        }));
                    }
                };
                self.environment.tasks.spawn(stored);
            }
            Command::AddConsumer(consumer) => {
                self.locals.push(Local { consumer, unacked: 0, unacked_bytes: 0 });
            }
            Command::RemoveConsumer { consumer } => self.remove_consumer(consumer).await,
            Command::SetDefaultTtl(ttl) => self.settings.default_ttl_ms = ttl,
            Command::Browse(browse) => {
                // Refused before it gets here (check_subscription); end it empty if it does.
                let end = Delivery {
                    subscription: browse.subscription,
                    template: browse.end,
                    message_id: browse.end_id,
                    from_queue: None,
                    redelivered: false,
                };
                let _ = browse.outbox.push_queue(end);
            }
            Command::Purge { done, stored } => {
                let purged = self.ready.len();
                for held in std::mem::take(&mut self.ready) {
                    let _ = held.message.ack().await;
                }
                let _ = done.send(purged);
                let _ = stored.send(Ok(()));
            }
            Command::Peek { reply, .. } => {
                let _ = reply.send(Vec::new());
            }
            Command::RemoveWaiting { done, .. } => {
                let _ = done.send(0);
            }
            Command::Shutdown { .. } | Command::DeleteIf { .. } => {}
            // Session resumption is node-local; a clustered queue goes on handing a detached
            // session's consumer what its credit allows, and the outbox keeps it until the
            // session is back (or gives it back to JetStream when the grace ends).
            Command::Pause { .. } | Command::Resume { .. } => {}
            #[cfg(test)]
            Command::Panic => panic!("a cluster queue actor panicked on purpose"),
        }
    }

    /// Takes in a message JetStream delivered to this node.
    async fn receive(&mut self, message: jetstream::Message) {
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX)),
            Err(error) => {
                warn!(queue = %self.name, "cluster: a JetStream message without its metadata skipped: {error}");
                return;
            }
        };
        let (template, fields) = match wire::decode(&message.payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                warn!(queue = %self.name, seq, "cluster: unreadable queue message terminated: {error}");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let size = template.encoded_len_hint();
        let held = Held { message, template: Arc::new(template), seq, delivered, persistent: fields.persistent, size };
        if fields.expires_at_ms.is_some_and(|at| at != 0 && at <= now_ms()) {
            self.ends.count_dropped();
            self.settings.metrics.message_expired();
            if self.settings.expired == ExpiredPolicy::DeadLetter && !self.is_dead_letter_queue() {
                self.dead_letter(held, DeadLetterReason::Expired);
            } else {
                let _ = held.message.ack().await;
            }
            return;
        }
        // Delivered past the limit without a NACK: the node that held it died.
        if self.limit_passed(delivered.saturating_sub(1)) {
            self.dead_letter(held, DeadLetterReason::DeliveryLimit);
            return;
        }
        self.ready.push_back(held);
    }

    fn is_dead_letter_queue(&self) -> bool {
        self.name.starts_with(&self.settings.dead_letter_prefix)
    }

    /// True when a message delivered `delivered` times may not be delivered again.
    fn limit_passed(&self, delivered: u32) -> bool {
        self.settings.max_deliveries > 0 && delivered >= self.settings.max_deliveries && !self.is_dead_letter_queue()
    }

    /// Hands fetched messages to local consumers with credit, round-robin.
    async fn dispatch(&mut self) {
        if self.locals.is_empty() {
            // Nobody here takes them: back to the engine at once, for another node.
            for held in std::mem::take(&mut self.ready) {
                let _ = held.message.ack_with(AckKind::Nak(None)).await;
            }
            return;
        }
        let Some(handle) = self.ends.handle() else { return };
        while let Some(front) = self.ready.front() {
            let count = self.locals.len();
            let Some(chosen) = (0..count)
                .map(|offset| (self.next_local + offset) % count)
                .find(|&position| self.locals[position].has_credit_for(front.size))
            else {
                return;
            };
            self.next_local = (chosen + 1) % count;
            let Some(held) = self.ready.pop_front() else { return };
            let local = &mut self.locals[chosen];
            let delivery = Delivery {
                subscription: local.consumer.subscription,
                template: Arc::clone(&held.template),
                message_id: held.seq,
                from_queue: Some(QueueDelivery {
                    queue: handle.clone(),
                    consumer: local.consumer.id,
                    delivery_count: held.delivered,
                }),
                redelivered: held.delivered > 1,
            };
            if local.consumer.outbox.push_queue(delivery).is_err() {
                // The connection is closing; its RemoveConsumer is on the way.
                let dead = local.consumer.id;
                self.locals.retain(|l| l.consumer.id != dead);
                self.ready.push_front(held);
                if self.locals.is_empty() {
                    return Box::pin(self.dispatch()).await;
                }
                continue;
            }
            local.unacked += 1;
            local.unacked_bytes += held.size;
            if held.delivered > 1 {
                self.settings.metrics.message_redelivered();
            }
            let consumer = local.consumer.id;
            self.unacked.insert(held.seq, (consumer, held));
        }
    }

    async fn settle_all(&mut self, settlements: &mut Vec<Settlement>) {
        for (consumer, ids, outcome) in std::mem::take(settlements) {
            for id in ids {
                self.settle(consumer, id, outcome).await;
            }
        }
    }

    async fn settle(&mut self, consumer: u64, seq: u64, outcome: Outcome) {
        let Some((owner, held)) = self.unacked.remove(&seq) else { return };
        if owner != consumer {
            self.unacked.insert(seq, (owner, held));
            return;
        }
        if let Some(local) = self.locals.iter_mut().find(|l| l.consumer.id == consumer) {
            local.unacked = local.unacked.saturating_sub(1);
            local.unacked_bytes = local.unacked_bytes.saturating_sub(held.size);
        }
        match outcome {
            Outcome::Ack => {
                self.settings.metrics.message_acked();
                if let Err(error) = held.message.ack().await {
                    debug!(queue = %self.name, seq, "cluster: ack not sent: {error}");
                }
            }
            Outcome::Requeue | Outcome::Reject | Outcome::GiveUp => {
                self.settings.metrics.message_nacked();
                self.requeue_or_dead_letter(held, outcome, self.cluster.redelivery_delay).await;
            }
        }
    }

    async fn requeue_or_dead_letter(&mut self, held: Held, outcome: Outcome, delay: Duration) {
        let limit = self.limit_passed(held.delivered);
        if (outcome != Outcome::Requeue && !self.is_dead_letter_queue()) || limit {
            let reason =
                if outcome == Outcome::Reject { DeadLetterReason::Rejected } else { DeadLetterReason::DeliveryLimit };
            self.dead_letter(held, reason);
            return;
        }
        let delay = (!delay.is_zero()).then_some(delay);
        if let Err(error) = held.message.ack_with(AckKind::Nak(delay)).await {
            debug!(queue = %self.name, seq = held.seq, "cluster: nak not sent: {error}");
        }
    }

    /// Detaches a local consumer; what it held unacknowledged goes back to the engine at
    /// once (or to the dead-letter queue past `max_deliveries`), for any node.
    async fn remove_consumer(&mut self, consumer: u64) {
        self.locals.retain(|l| l.consumer.id != consumer);
        let seqs: Vec<u64> =
            self.unacked.iter().filter(|(_, (owner, _))| *owner == consumer).map(|(&seq, _)| seq).collect();
        let mut returned: Vec<Held> =
            seqs.into_iter().filter_map(|seq| self.unacked.remove(&seq).map(|(_, held)| held)).collect();
        returned.sort_by_key(|held| held.seq);
        for held in returned {
            self.requeue_or_dead_letter(held, Outcome::Requeue, Duration::ZERO).await;
        }
    }

    /// Tells JetStream the messages this node holds are still being worked on.
    async fn keep_alive(&mut self) {
        for held in self.ready.iter().chain(self.unacked.values().map(|(_, held)| held)) {
            let _ = held.message.ack_with(AckKind::Progress).await;
        }
    }

    /// Gives every held message back to the engine at once (shutdown).
    async fn release_all(&mut self) {
        self.batch = None;
        let unacked: Vec<Held> = self.unacked.drain().map(|(_, (_, held))| held).collect();
        for held in unacked.into_iter().chain(std::mem::take(&mut self.ready)) {
            let _ = held.message.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Publishes `held` to the dead-letter queue, then acknowledges it here once JetStream has
    /// the copy; if the copy fails, naks it (it comes back and the move is tried again).
    fn dead_letter(&mut self, held: Held, reason: DeadLetterReason) {
        let target = format!("{}{}", self.settings.dead_letter_prefix, self.name);
        let headers = crate::destination::queue::dead_letter_headers(&held.template, &target, reason);
        self.settings.metrics.message_dead_lettered(reason);
        // The dead-letter queue exists on this node too, as on a single node (management lists it).
        if let Some(owner) = self.environment.owner.upgrade() {
            let _ = owner.dead_letter_queue(&target);
        }
        let template = MessageTemplate::new(headers, held.template.body().clone());
        // 0 = never expires: a dead letter is kept until someone deals with it.
        let fields = TopicMessage {
            id: held.seq,
            persistent: held.persistent,
            expires_at_ms: Some(0),
            enqueued_at_ms: now_ms(),
        };
        let cluster = Arc::clone(&self.cluster);
        let subject = cluster.subjects.queue(&self.vhost, &target);
        let name = Arc::clone(&self.name);
        let vhost = Arc::clone(&self.vhost);
        debug!(queue = %name, %target, reason = reason.as_str(), "cluster: dead-lettering message {}", held.seq);
        self.environment.tasks.spawn(async move {
            let stored = match cluster.store_queue_message(&vhost, &subject, &template, &fields).await {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            let kind = match stored {
                Ok(()) => AckKind::Ack,
                Err(error) => {
                    warn!(queue = %name, "cluster: dead-letter copy not stored ({error}); the message stays");
                    AckKind::Nak(Some(RETRY))
                }
            };
            let _ = held.message.ack_with(kind).await;
        });
    }
}

/// The next message of the outstanding pull; never resolves without one.
async fn next_of(
    batch: &mut Option<jetstream::consumer::pull::Batch>,
) -> Option<Result<jetstream::Message, async_nats::Error>> {
    match batch {
        Some(batch) => batch.next().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at` (the next pull may be tried); never without one.
async fn retry_after(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The error a publish gets when JetStream did not acknowledge it.
pub(crate) fn not_stored(error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(format!("JetStream did not acknowledge the message: {error}"))
}
