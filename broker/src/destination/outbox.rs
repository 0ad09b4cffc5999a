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
