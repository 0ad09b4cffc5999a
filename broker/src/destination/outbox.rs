//! The bounded queue between the router and one connection.
//!
//! Topics and queues push deliveries here from whichever task published; only the connection
//! task takes them out, and it takes *all* of them at once so that many frames go out in one
//! socket write. The outbox is a short-held mutex around a `VecDeque` rather than a channel
//! because the slow-consumer policies need to see and drop what is already queued (drop the
//! oldest), and because swapping the whole deque out costs one lock per write, not one per frame.
//!
//! Memory is bounded by bytes: topic deliveries that would take the outbox past its budget are
//! refused and the subscription's slow-consumer policy decides what happens. Before that point a
//! stall gate slows publishers (after NATS): a publish that leaves an outbox above half its
//! budget waits, for a bounded time, until the connection has taken its deliveries. A subscriber
//! that reads steadily but a little slower than a publisher thus slows the publisher (whose
//! connection stops reading, which pushes back on its TCP socket) instead of being cut off; a
//! subscriber that stopped reading costs publishers at most the stall time before the policy
//! applies. Queue deliveries are
//! bounded upstream by the consumer's credit (prefetch count and window bytes), so they are
//! always admitted; that keeps a queue from stalling on an outbox that topic traffic filled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use stampede_protocol::MessageTemplate;
use tokio::sync::Notify;

use crate::destination::queue::QueueHandle;

/// One MESSAGE waiting to be written to a connection.
#[derive(Debug)]
pub struct Delivery {
    /// The session-local key of the subscription it is for. Deliveries for a subscription that
    /// has gone away by the time they are written are skipped (a queue has already requeued
    /// them).
    pub subscription: u64,
    /// The shared encoding.
    pub template: Arc<MessageTemplate>,
    /// The `message-id` value.
    pub message_id: u64,
    /// Set for deliveries from a queue: who to tell when it is acknowledged.
    pub from_queue: Option<QueueDelivery>,
    /// True when the message was delivered before (adds `redelivered:true`).
    pub redelivered: bool,
}

/// The queue side of a delivery.
#[derive(Debug, Clone)]
pub struct QueueDelivery {
    /// The queue that owns the message until it is acknowledged.
    pub queue: QueueHandle,
    /// The queue's consumer id for this subscription.
    pub consumer: u64,
    /// How many times the message has been handed to a consumer, this delivery included.
    pub delivery_count: u32,
}

impl Delivery {
    /// Bytes this delivery counts against the outbox budget.
    pub fn cost(&self) -> usize {
        self.template.encoded_len_hint()
    }
}

/// What happens when a topic subscriber's outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Send the subscriber an ERROR saying why, and close its connection (the default: loss is
    /// loud, and the client can reconnect).
    #[default]
    Disconnect,
    /// Drop the oldest queued topic messages to make room, and count them.
    DropOldest,
}

impl std::str::FromStr for SlowConsumerPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
            "drop-oldest" => Ok(SlowConsumerPolicy::DropOldest),
            other => Err(format!("unknown slow-consumer policy {other:?}: use disconnect or drop-oldest")),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Delivery>,
    bytes: usize,
    closed: bool,
    dropped: u64,
    /// Set while the session is detached (its connection broke, it waits to be resumed):
    /// boxed, since only a parked session pays for it.
    detached: Option<Box<Detached>>,
}

/// The outbox of a detached session ([`Outbox::detach`]): topic deliveries are kept up to a
/// byte budget, and those beyond it are dropped and counted per subscription, for the
/// `x-resume-gap` header of the first MESSAGE after resumption.
#[derive(Debug, Default)]
struct Detached {
    budget: usize,
    topic_bytes: usize,
    gaps: rustc_hash::FxHashMap<u64, u64>,
}

/// A connection's outbox. Shared by `Arc` between the connection and every topic and queue that
/// delivers to it.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    drained: Notify,
    slow: AtomicBool,
    /// Set when a publisher waited the whole stall time in vain; cleared when the connection
    /// takes its deliveries. While set, publishers do not wait for this outbox again, so a
    /// subscriber that stopped reading costs them one stall, not one per message.
    unresponsive: AtomicBool,
    /// Set when a destination this connection consumes from failed (its actor panicked): the
    /// connection ends with an ERROR saying so.
    failed: AtomicBool,
    /// Set when another connection resumed this session (`resume-token`): the connection ends
    /// with an ERROR saying so and hands the session over.
    taken_over: AtomicBool,
    max_bytes: usize,
}

/// How a topic delivery was admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Queued, with room to spare.
    Queued,
    /// Queued, but the outbox is above half its budget: the publisher should wait for room.
    Congested,
}

/// Why a topic delivery was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The connection has ended.
    Closed,
    /// Over budget; the connection has been told to close as a slow consumer.
    SlowConsumer,
}

impl Outbox {
    /// An outbox holding at most `max_bytes` of topic deliveries.
    pub fn new(max_bytes: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            drained: Notify::new(),
            slow: AtomicBool::new(false),
            unresponsive: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            taken_over: AtomicBool::new(false),
            max_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the deque inconsistent (every critical
        // section is a push, a pop or a swap), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a topic delivery, applying `policy` when the byte budget is exhausted.
    pub fn push_topic(&self, delivery: Delivery, policy: SlowConsumerPolicy) -> Result<Admitted, Refused> {
        let cost = delivery.cost();
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if let Some(detached) = &mut state.detached {
            // Nobody reads a detached outbox: no stall gate, no slow-consumer policy, only the
            // resumption budget. Beyond it the newest messages are dropped, so the gap lies
            // between the last one kept and the first one after resumption.
            if detached.topic_bytes + cost > detached.budget {
                *detached.gaps.entry(delivery.subscription).or_default() += 1;
                return Err(Refused::Closed);
            }
            detached.topic_bytes += cost;
            self.push_locked(state, delivery, cost);
            return Ok(Admitted::Queued);
        }
        if state.bytes + cost > self.max_bytes && !state.items.is_empty() {
            match policy {
                SlowConsumerPolicy::Disconnect => {
                    state.closed = true;
                    drop(state);
                    self.slow.store(true, Ordering::Release);
                    self.ready.notify_one();
                    self.drained.notify_waiters();
                    return Err(Refused::SlowConsumer);
                }
                SlowConsumerPolicy::DropOldest => {
                    // Only topic deliveries may be dropped: queue deliveries are owed to a queue.
                    while state.bytes + cost > self.max_bytes {
                        let Some(position) = state.items.iter().position(|d| d.from_queue.is_none()) else {
                            break;
                        };
                        if let Some(old) = state.items.remove(position) {
                            state.bytes -= old.cost();
                            state.dropped += 1;
                        }
                    }
                }
            }
        }
        let congested = policy == SlowConsumerPolicy::Disconnect
            && state.bytes + cost > self.max_bytes / 2
            && !self.unresponsive.load(Ordering::Relaxed);
        self.push_locked(state, delivery, cost);
        Ok(if congested { Admitted::Congested } else { Admitted::Queued })
    }

    /// Waits until the outbox is at most half full (or closed). Cancel safe.
    pub async fn wait_for_room(&self) {
        let drained = self.drained.notified();
        tokio::pin!(drained);
        loop {
            drained.as_mut().enable();
            {
                let state = self.lock();
                if state.closed || state.bytes <= self.max_bytes / 2 {
                    return;
                }
            }
            drained.as_mut().await;
            drained.set(self.drained.notified());
        }
    }

    /// Queues a queue delivery. Credit already bounds these, so the byte budget does not apply.
    pub fn push_queue(&self, delivery: Delivery) -> Result<(), Refused> {
        let cost = delivery.cost();
        let state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.detached.is_some() && delivery.from_queue.is_some() {
            // Owed to the queue, which sends it again on resumption (see `detach`); a browsing
            // copy (no `from_queue`) is not owed to anyone and is kept.
            return Ok(());
        }
        self.push_locked(state, delivery, cost);
        Ok(())
    }

    fn push_locked(&self, mut state: std::sync::MutexGuard<'_, State>, delivery: Delivery, cost: usize) {
        let was_empty = state.items.is_empty();
        state.items.push_back(delivery);
        state.bytes += cost;
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Waits until there is something to take (or the outbox was closed as a slow consumer).
    ///
    /// Cancel safe: a notification that arrives while nobody waits is stored and returned by
    /// the next call.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves every queued delivery into `into` (which should be empty) and resets the budget.
    pub fn take_all(&self, into: &mut VecDeque<Delivery>) {
        let mut state = self.lock();
        std::mem::swap(&mut state.items, into);
        state.bytes = 0;
        drop(state);
        self.unresponsive.store(false, Ordering::Relaxed);
        self.drained.notify_waiters();
    }

    /// Records that a publisher waited the whole stall time for this outbox.
    pub fn mark_unresponsive(&self) {
        self.unresponsive.store(true, Ordering::Relaxed);
    }

    /// Tells the connection that a queue it consumes from failed: it ends with an ERROR.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// Wakes the connection without a delivery (it then checks whether it was asked to close,
    /// see [`crate::registry`]).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Bytes of deliveries waiting to be written now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Detaches the outbox from its connection, for session resumption: from now on topic
    /// deliveries are kept only up to `budget` bytes (those already waiting count, newest
    /// dropped first), the rest are counted per subscription as the gap. Queue deliveries are
    /// not kept at all, neither those waiting nor those arriving while detached: their queue
    /// still holds each one as unacknowledged and sends them all again, in order, when the
    /// session resumes (or gives them to other consumers when it ends), so one written from
    /// here would come twice and early.
    pub fn detach(&self, budget: usize) {
        let mut state = self.lock();
        let mut detached = Box::new(Detached { budget, ..Detached::default() });
        let mut kept = VecDeque::with_capacity(state.items.len());
        // Oldest first, so the ones beyond the budget are the newest.
        for delivery in std::mem::take(&mut state.items) {
            let cost = delivery.cost();
            if delivery.from_queue.is_some() {
                state.bytes -= cost;
                continue;
            }
            if detached.topic_bytes + cost > budget {
                *detached.gaps.entry(delivery.subscription).or_default() += 1;
                state.bytes -= cost;
                continue;
            }
            detached.topic_bytes += cost;
            kept.push_back(delivery);
        }
        state.items = kept;
        state.detached = Some(detached);
        drop(state);
        self.unresponsive.store(false, Ordering::Relaxed);
        // Publishers waiting for room must not wait for a reader that is gone.
        self.drained.notify_waiters();
    }

    /// Attaches a detached outbox to the connection that resumed its session; returns the gap
    /// of each subscription (topic messages dropped while detached).
    pub fn attach(&self) -> rustc_hash::FxHashMap<u64, u64> {
        let mut state = self.lock();
        let gaps = state.detached.take().map(|detached| detached.gaps).unwrap_or_default();
        drop(state);
        self.taken_over.store(false, Ordering::Release);
        self.ready.notify_one();
        gaps
    }

    /// Drops the deliveries of queue consumer `consumer` that are still waiting here (its queue
    /// is about to send every unacknowledged one again, in order).
    pub fn remove_queue_deliveries(&self, consumer: u64) {
        let mut state = self.lock();
        let mut removed = 0;
        state.items.retain(|delivery| {
            let ours = delivery.from_queue.as_ref().is_some_and(|from| from.consumer == consumer);
            if ours {
                removed += delivery.cost();
            }
            !ours
        });
        state.bytes -= removed;
    }

    /// Tells the connection that another connection resumed its session: it ends with an
    /// ERROR and hands the session over.
    pub fn take_over(&self) {
        self.taken_over.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// True once [`Outbox::take_over`] was called (until the session is attached again).
    pub fn is_taken_over(&self) -> bool {
        self.taken_over.load(Ordering::Acquire)
    }

    /// True once [`Outbox::fail`] was called.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// True once a topic found this outbox full under the disconnect policy.
    pub fn is_slow_consumer(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// Topic messages dropped under the drop-oldest policy so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Refuses all further deliveries and drops what was still queued (queue deliveries among
    /// them are redelivered when the session detaches from their queues).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.bytes = 0;
        let queued = std::mem::take(&mut state.items);
        drop(state);
        drop(queued);
        self.drained.notify_waiters();
    }
}
