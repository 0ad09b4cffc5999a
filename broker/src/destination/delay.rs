//! Delayed delivery and per-subscription redelivery delays: messages held until a time.
//!
//! Why a heap and not timers: a tokio timer per held message would cost a timer entry, a task
//! or a future each, and wake the runtime once per message; a million pending delayed messages
//! would be a million timers. Instead each holder (a queue actor, or the one topic scheduler of
//! a virtual host) keeps its held messages in a [`DelayHeap`], ordered by due time, and arms a
//! single timer for the earliest. A held message costs its own size plus one heap slot.
//!
//! Times are wall-clock milliseconds since the Unix epoch, the unit of `x-deliver-at` and of the
//! stored `x-deliver-at` header a persistent delayed message keeps, so a message recovered after
//! a restart is due at the same moment (or at once, if that moment passed while the broker was
//! down). A holder converts the earliest due time to a tokio deadline each time it arms its
//! timer and re-checks the wall clock when it fires, so a clock step at worst shifts a wake-up,
//! never releases a message early.
//!
//! Delayed messages to a topic are held by [`TopicDelays`] and published when due, to whoever
//! subscribes at that moment (a subscriber that came and went meanwhile never sees them). They
//! are held in memory only; a persistent delayed topic SEND is refused by the session.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use stampede_protocol::MessageTemplate;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::destination::queue::now_ms;
use crate::destination::router::{Router, TopicMessage};

/// Default of `max_delay_ms`: the longest `x-delay` (or latest `x-deliver-at`) accepted, 30 days.
pub const DEFAULT_MAX_DELAY_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Default of `max_delayed_topic_messages`: delayed topic messages one virtual host holds.
pub const DEFAULT_MAX_DELAYED_TOPIC_MESSAGES: usize = 1_000_000;

/// The header a delayed message carries once accepted: when it is (or was) due, in ms since the
/// epoch. Stored with a persistent message, it is what recovery reads to hold it again.
pub const DELIVER_AT: &str = "x-deliver-at";

/// How far ahead a timer is armed at most: a due time further out is re-armed when this passes,
/// which keeps tokio's timer in its comfortable range and re-reads the wall clock now and then.
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

struct Held<T> {
    at: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Items held until a due time, earliest first; among equal times, lowest `seq` first (the
/// order they were published in, for message ids).
pub struct DelayHeap<T> {
    heap: BinaryHeap<Reverse<Held<T>>>,
}

impl<T> Default for DelayHeap<T> {
    fn default() -> Self {
        DelayHeap { heap: BinaryHeap::new() }
    }
}

impl<T> std::fmt::Debug for DelayHeap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayHeap").field("len", &self.heap.len()).field("next_due", &self.next_due()).finish()
    }
}

impl<T> DelayHeap<T> {
    /// Holds `item` until `at` (ms since the epoch).
    pub fn push(&mut self, at: u64, seq: u64, item: T) {
        self.heap.push(Reverse(Held { at, seq, item }));
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(held)| held.at)
    }

    /// The earliest item if it is due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<T> {
        if self.next_due()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(held)| held.item)
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Takes every held item, in no particular order.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.heap.drain().map(|Reverse(held)| held.item)
    }

    /// The items held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.heap.iter().map(|Reverse(held)| &held.item)
    }
}

/// The tokio deadline for wall-clock time `at`, at most [`LONGEST_SLEEP`] away.
pub fn deadline(at: u64) -> tokio::time::Instant {
    let wait = Duration::from_millis(at.saturating_sub(now_ms())).min(LONGEST_SLEEP);
    tokio::time::Instant::now() + wait
}

/// How a backoff grows between redeliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    /// The same delay every time.
    #[default]
    Fixed,
    /// Doubling from the delay: delay, 2×delay, 4×delay, … up to the maximum.
    Exponential,
}

/// What a subscription asked for its NACKed or abandoned messages (`x-redelivery-delay`,
/// `x-redelivery-backoff`, `x-redelivery-max-delay`, `x-max-deliveries`,
/// `x-dead-letter-queue`). A field left `None` takes the queue's setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedeliveryPolicy {
    /// Wait before the first redelivery, in ms (0 = at once).
    pub delay_ms: u64,
    /// How the wait grows.
    pub backoff: Backoff,
    /// Longest wait, in ms.
    pub max_delay_ms: u64,
    /// Deliveries after which a requeued message is dead-lettered (0 = never); `None`: the
    /// queue's `max_deliveries`.
    pub max_deliveries: Option<u32>,
    /// Queue (name without `/queue/`) this subscription's dead letters go to; `None`: the
    /// queue's `DLQ.<name>`.
    pub dead_letter_queue: Option<Arc<str>>,
}

impl RedeliveryPolicy {
    /// The wait before redelivering a message delivered `deliveries` times so far (at least 1).
    pub fn delay_for(&self, deliveries: u32) -> u64 {
        let delay = match self.backoff {
            Backoff::Fixed => self.delay_ms,
            Backoff::Exponential => {
                let doublings = deliveries.saturating_sub(1).min(63);
                self.delay_ms.saturating_mul(1u64 << doublings)
            }
        };
        delay.min(self.max_delay_ms)
    }
}

/// A topic message waiting for its time.
struct HeldTopicMessage {
    topic: Arc<str>,
    template: Arc<MessageTemplate>,
    message: TopicMessage,
}

/// The delayed topic messages of one virtual host: one task, one heap, one timer.
pub struct TopicDelays {
    schedule: mpsc::UnboundedSender<(u64, HeldTopicMessage)>,
    held: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl std::fmt::Debug for TopicDelays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicDelays").field("held", &self.held()).finish_non_exhaustive()
    }
}

/// A delayed topic message was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopicDelayError {
    /// The virtual host already holds `max_delayed_topic_messages`.
    #[error("the virtual host already holds {0} delayed topic messages")]
    Full(usize),
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    Stopped,
}

impl TopicDelays {
    /// Starts the scheduler of `router`'s delayed topic messages on `tasks`.
    pub fn start(router: Weak<Router>, tasks: &TaskTracker) -> TopicDelays {
        // Unbounded, yet bounded: `hold` refuses past the limit before sending.
        let (schedule, inbox) = mpsc::unbounded_channel();
        let held = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        tasks.spawn(run_topic_delays(router, inbox, Arc::clone(&held), stop.clone()));
        TopicDelays { schedule, held, stop }
    }

    /// Holds a message for topic `topic` until `at`, unless `limit` messages are held already.
    ///
    /// # Errors
    /// The limit is reached, or the scheduler stopped.
    pub fn hold(
        &self,
        topic: &str,
        template: Arc<MessageTemplate>,
        message: TopicMessage,
        at: u64,
        limit: usize,
    ) -> Result<(), TopicDelayError> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= limit {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(TopicDelayError::Full(limit));
        }
        let held = HeldTopicMessage { topic: Arc::from(topic), template, message };
        self.schedule.send((at, held)).map_err(|_| {
            self.held.fetch_sub(1, Ordering::AcqRel);
            TopicDelayError::Stopped
        })
    }

    /// Delayed topic messages held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Ends the scheduler (shutdown); what it holds is dropped.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

async fn run_topic_delays(
    router: Weak<Router>,
    mut inbox: mpsc::UnboundedReceiver<(u64, HeldTopicMessage)>,
    held: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut heap: DelayHeap<HeldTopicMessage> = DelayHeap::default();
    let mut arrivals = Vec::with_capacity(256);
    let wake = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(wake);
    loop {
        if let Some(at) = heap.next_due() {
            wake.as_mut().reset(deadline(at));
        }
        tokio::select! {
            () = stop.cancelled() => break,
            received = inbox.recv_many(&mut arrivals, 256) => {
                if received == 0 {
                    break;
                }
                for (at, message) in arrivals.drain(..) {
                    let seq = message.message.id;
                    heap.push(at, seq, message);
                }
            }
            () = &mut wake, if !heap.is_empty() => {}
        }
        let now = now_ms();
        while let Some(due) = heap.pop_due(now) {
            held.fetch_sub(1, Ordering::AcqRel);
            let Some(router) = router.upgrade() else { return };
            if let Err(error) = router.publish_topic(&due.topic, &due.template, due.message).await {
                warn!(topic = %due.topic, "delayed topic message not published: {error}");
            }
        }
    }
    debug!(dropped = heap.len(), "delayed topic messages scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_heap_releases_items_in_due_order_and_not_before() {
        let mut heap = DelayHeap::default();
        heap.push(30, 1, "c");
        heap.push(10, 3, "b");
        heap.push(10, 2, "a");
        assert_eq!(heap.pop_due(9), None);
        assert_eq!(heap.pop_due(10), Some("a"));
        assert_eq!(heap.pop_due(10), Some("b"));
        assert_eq!(heap.pop_due(29), None);
        assert_eq!(heap.next_due(), Some(30));
        assert_eq!(heap.pop_due(100), Some("c"));
        assert!(heap.is_empty());
    }

    #[test]
    fn an_exponential_backoff_doubles_from_the_delay_up_to_the_maximum() {
        let policy =
            RedeliveryPolicy { delay_ms: 100, backoff: Backoff::Exponential, max_delay_ms: 500, ..Default::default() };
        assert_eq!([1, 2, 3, 4, 70].map(|n| policy.delay_for(n)), [100, 200, 400, 500, 500]);
        let fixed = RedeliveryPolicy { delay_ms: 100, max_delay_ms: u64::MAX, ..Default::default() };
        assert_eq!([1, 5].map(|n| fixed.delay_for(n)), [100, 100]);
    }
}
