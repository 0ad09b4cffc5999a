//! Message rates over the last 5 and 60 seconds, for the overview and the dashboard.
//!
//! Prometheus computes rates from counters itself; people looking at the API or the dashboard
//! want them ready-made, as RabbitMQ's overview gives them. A rate needs two readings of a
//! counter some time apart, so one task takes a reading of the broker's message counters every
//! second and keeps the last minute of them (61 readings, a few kilobytes); a rate is the
//! difference between the counters now and the reading closest to the window's start, divided
//! by the time between them. Reading the counters is a handful of relaxed atomic loads; nothing
//! here touches the data path.
//!
//! The same tick takes a reading of every queue's own counts (accepted, delivered, acked),
//! which each queue actor stores once per batch; a queue keeps its last few readings, so its
//! rates span about five seconds (a minute per queue would cost a kilobyte and a half each).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::destination::vhost::VirtualHosts;
use crate::http::metrics::{MessageTotals, Metrics};

/// How often the counters are read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest window a rate is given for.
const LONGEST_WINDOW: Duration = Duration::from_secs(60);
/// Readings kept: one per interval over the longest window, and the one at its start.
const KEPT: usize = 61;

/// The last minute of readings of one broker's message counters.
#[derive(Debug)]
pub struct MessageRates {
    metrics: Arc<Metrics>,
    readings: Mutex<VecDeque<(Instant, MessageTotals)>>,
}

/// Rates in messages per second over the last 5 and 60 seconds (or since the broker started,
/// when it is younger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rate {
    /// Over the last 5 seconds.
    pub last_5s: f64,
    /// Over the last 60 seconds.
    pub last_60s: f64,
}

/// The overview's `rates`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    /// SENDs accepted (topics and queues).
    pub publish: Rate,
    /// MESSAGE frames written.
    pub deliver: Rate,
    /// Queue deliveries acknowledged.
    pub ack: Rate,
    /// Queue messages delivered again.
    pub redeliver: Rate,
}

impl MessageRates {
    /// Rates of `metrics`' counters, with a first reading taken now.
    pub fn new(metrics: Arc<Metrics>) -> Arc<MessageRates> {
        let first = (Instant::now(), metrics.message_totals());
        Arc::new(MessageRates { metrics, readings: Mutex::new(VecDeque::from([first])) })
    }

    /// Takes a reading of the broker's counters and of every queue of `vhosts` every
    /// [`SAMPLE_INTERVAL`] on `tasks` until `shutdown`.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        vhosts: Arc<VirtualHosts>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let rates = Arc::clone(self);
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let now = Instant::now();
                rates.sample(now);
                for router in vhosts.routers() {
                    for queue in router.queues() {
                        queue.take_rate_reading(now);
                    }
                }
            }
        });
    }

    fn sample(&self, at: Instant) {
        let totals = self.metrics.message_totals();
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        readings.push_back((at, totals));
        while readings.len() > KEPT {
            readings.pop_front();
        }
    }

    /// The rates now.
    pub fn rates(&self) -> Rates {
        self.rates_at(Instant::now(), self.metrics.message_totals())
    }

    fn rates_at(&self, now: Instant, totals: MessageTotals) -> Rates {
        let readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        let since = |window: Duration| {
            // The newest reading at least `window` old, else the oldest kept.
            let start = now.checked_sub(window.min(LONGEST_WINDOW));
            readings
                .iter()
                .rev()
                .find(|(at, _)| start.is_some_and(|start| *at <= start))
                .or_else(|| readings.front())
                .copied()
        };
        let rate = |pick: fn(&MessageTotals) -> u64| {
            let over = |window: Duration| match since(window) {
                Some((at, then)) => {
                    let seconds = now.saturating_duration_since(at).as_secs_f64();
                    if seconds < 0.001 { 0.0 } else { pick(&totals).saturating_sub(pick(&then)) as f64 / seconds }
                }
                None => 0.0,
            };
            Rate { last_5s: over(Duration::from_secs(5)), last_60s: over(LONGEST_WINDOW) }
        };
        Rates {
            publish: rate(|t| t.published),
            deliver: rate(|t| t.delivered),
            ack: rate(|t| t.acked),
            redeliver: rate(|t| t.redelivered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(published: u64) -> MessageTotals {
        MessageTotals { published, ..MessageTotals::default() }
    }

    #[test]
    fn a_rate_is_the_counter_difference_over_the_window_divided_by_its_length() {
        let rates = MessageRates::new(Arc::new(Metrics::new()));
        let start = Instant::now();
        {
            let mut readings = rates.readings.lock().unwrap();
            readings.clear();
            // 100 messages a second for 70 seconds.
            for second in 0..=70u64 {
                readings.push_back((start + Duration::from_secs(second), totals(second * 100)));
            }
            while readings.len() > KEPT {
                readings.pop_front();
            }
        }
        let now = start + Duration::from_secs(70);
        let rate = rates.rates_at(now, totals(7000)).publish;
        assert!((rate.last_5s - 100.0).abs() < 1e-9, "{rate:?}");
        assert!((rate.last_60s - 100.0).abs() < 1e-9, "{rate:?}");
        // A burst of 500 in the last second shows in the 5 s rate far more than in the 60 s one.
        let burst = rates.rates_at(now, totals(7500)).publish;
        assert!((burst.last_5s - 200.0).abs() < 1e-9, "{burst:?}");
        assert!((burst.last_60s - 6500.0 / 60.0).abs() < 1e-9, "{burst:?}");
    }

    #[test]
    fn a_young_broker_gives_rates_since_its_first_reading() {
        let rates = MessageRates::new(Arc::new(Metrics::new()));
        let first = rates.readings.lock().unwrap()[0].0;
        let rate = rates.rates_at(first + Duration::from_secs(2), totals(10)).publish;
        assert!((rate.last_5s - 5.0).abs() < 1e-9, "{rate:?}");
        assert!((rate.last_60s - 5.0).abs() < 1e-9, "{rate:?}");
        assert_eq!(rates.rates_at(first, totals(10)).publish, Rate::default());
    }
}
