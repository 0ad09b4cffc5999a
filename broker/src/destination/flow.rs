//! Producer flow control for queues: publishers wait, briefly, for consumers that fall behind.
//!
//! A queue's mailbox is bounded, but its backlog is not, short of `queue_max_length`: producers
//! that publish transient messages faster than the consumers' connections write them take the
//! CPU those connections need, and the backlog grows until the queue is full (throughput then
//! swings between two modes, depending on who wins the cores). So when a queue that has
//! consumers holds `queue_flow_backlog` waiting messages (or half of `queue_max_length`, if
//! that is less), each transient publish first waits until the consumers have brought the
//! backlog down to half that, for at most [`FLOW_STALL`]: the backlog stays bounded below the
//! queue's limit and nothing is refused.
//!
//! The wait is bounded, as the topic stall gate's is (see [`super::outbox`]): consumers that make
//! no progress at all during a whole stall (all their credit is held by messages they have not
//! acknowledged) are not slow but stopped, and a queue is also a buffer for them: publishers then
//! go on at full speed, paying one stall, until a consumer settles something again. Persistent
//! messages are not gated: their publishers already wait for the disk.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Longest one publish waits for the consumers of a queue to catch up.
pub const FLOW_STALL: Duration = Duration::from_millis(20);

/// One queue's gate, shared by its handles (publishers) and its actor.
#[derive(Debug)]
pub struct FlowGate {
    /// Waiting messages at which publishers start waiting; 0 = never.
    high: usize,
    /// Waiting messages at which waiting publishers are released.
    low: usize,
    /// Some publisher is waiting for [`FlowGate::drained`].
    waiting: AtomicBool,
    /// A whole stall passed without progress: publishers pass until a consumer settles again.
    stopped: AtomicBool,
    /// Messages settled (acknowledged, rejected, requeued) so far: the consumers' progress.
    settled: AtomicU64,
    drained: Notify,
}

impl FlowGate {
    /// A gate that closes at `backlog` waiting messages, or at half of `max_length` if that is
    /// less, so that it always closes before the queue is full; `backlog` 0 turns it off.
    pub fn new(backlog: usize, max_length: usize) -> FlowGate {
        let high = if backlog == 0 { 0 } else { backlog.min(max_length / 2).max(1) };
        FlowGate {
            high,
            low: high / 2,
            waiting: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            settled: AtomicU64::new(0),
            drained: Notify::new(),
        }
    }

    /// Waits, at most [`FLOW_STALL`], while the queue's backlog (`depth`) is at the gate's
    /// limit and it has consumers to bring it down. Returns whether it waited.
    pub async fn admit(&self, depth: &AtomicUsize, consumers: usize) -> bool {
        if self.high == 0 || consumers == 0 || self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        if depth.load(Ordering::Relaxed) < self.high {
            return false;
        }
        let progress = self.settled.load(Ordering::SeqCst);
        let drained = self.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        self.waiting.store(true, Ordering::SeqCst);
        // The actor may have drained the queue between the first look and the registration.
        if depth.load(Ordering::SeqCst) <= self.low {
            return false;
        }
        if tokio::time::timeout(FLOW_STALL, drained).await.is_err() && self.settled.load(Ordering::SeqCst) == progress {
            self.stopped.store(true, Ordering::Relaxed);
        }
        true
    }

    /// Called by the actor when consumers settled `count` messages.
    pub fn settled(&self, count: usize) {
        self.settled.fetch_add(count as u64, Ordering::SeqCst);
        if self.stopped.load(Ordering::Relaxed) {
            self.stopped.store(false, Ordering::Relaxed);
        }
    }

    /// Called by the actor after each batch with the queue's backlog: releases waiting
    /// publishers once it is down to the gate's low mark.
    pub fn observe(&self, depth: usize) {
        if depth <= self.low && self.waiting.load(Ordering::Relaxed) && self.waiting.swap(false, Ordering::SeqCst) {
            self.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_gate_closes_before_the_queue_is_full_and_can_be_turned_off() {
        assert_eq!(FlowGate::new(8192, 1_000_000).high, 8192);
        assert_eq!(FlowGate::new(8192, 1000).high, 500);
        assert_eq!(FlowGate::new(8192, 1).high, 1);
        assert_eq!(FlowGate::new(0, 1000).high, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_waits_until_drained_or_one_stall_and_not_without_consumers() {
        let gate = Arc::new(FlowGate::new(10, 1000));
        let depth = Arc::new(AtomicUsize::new(10));
        assert!(!gate.admit(&depth, 0).await, "no consumers: no wait");
        // Released as soon as the actor reports the backlog at the low mark.
        let waiter = tokio::spawn({
            let (gate, depth) = (Arc::clone(&gate), Arc::clone(&depth));
            async move {
                let started = tokio::time::Instant::now();
                assert!(gate.admit(&depth, 1).await);
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        gate.settled(5);
        depth.store(5, Ordering::SeqCst);
        gate.observe(5);
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(5));
        // No progress for a whole stall: the next publishers pass until something is settled.
        depth.store(10, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        assert!(gate.admit(&depth, 1).await);
        assert_eq!(started.elapsed(), FLOW_STALL);
        assert!(!gate.admit(&depth, 1).await, "stopped consumers: publishers pass");
        gate.settled(1);
        assert!(gate.admit(&depth, 1).await, "progress again: the gate is back");
    }
}
