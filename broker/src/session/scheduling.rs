//! The headers that move a delivery in time: delayed SENDs (`x-delay`, `x-deliver-at`,
//! ActiveMQ's `AMQ_SCHEDULED_DELAY`, Artemis' `_AMQ_SCHEDULED_TIME`) and a SUBSCRIBE's
//! redelivery policy (`x-redelivery-delay`, `x-redelivery-backoff`, `x-redelivery-max-delay`,
//! `x-max-deliveries`, `x-dead-letter-queue`).
//!
//! Read here, in the request stage, into numbers; what depends on the configuration (the
//! maximum delay, cluster mode, the permission to write to a dead-letter queue) is the
//! session's to check ([`Session::deliver_at`], [`Session::redelivery_policy`]). Unlike the
//! expiry headers, whose too-large values mean "never", a delay that does not fit is an ERROR:
//! a message that silently never arrives is worse than a refused SEND.
//!
//! A SEND without any of these headers pays one pass over its headers, comparing names, and
//! nothing else (see BENCHMARKS.md).

use std::sync::Arc;

use stampede_protocol::Frame;

use super::Session;
use crate::destination::delay::{Backoff, RedeliveryPolicy};
use crate::destination::router::Destination;
use crate::error::StompError;
use crate::security::auth::Operation;

/// The header names of a delayed SEND: relative delays, then absolute times.
pub(super) const DELAY_HEADERS: [&str; 4] = ["x-delay", "AMQ_SCHEDULED_DELAY", "x-deliver-at", "_AMQ_SCHEDULED_TIME"];

/// When a SEND asked to be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DelayAsk {
    /// This many ms after the broker takes it (at COMMIT, inside a transaction).
    After { header: &'static str, ms: u64 },
    /// At this time, in ms since the Unix epoch.
    At { header: &'static str, at: u64 },
}

impl DelayAsk {
    fn header(self) -> &'static str {
        match self {
            DelayAsk::After { header, .. } | DelayAsk::At { header, .. } => header,
        }
    }
}

/// A SEND's delay, if it asked for one: one pass over its headers. The first entry of a header
/// counts (as for every header); two different delay headers are an ERROR, since they may
/// disagree.
pub(super) fn send_delay(frame: &Frame) -> Result<Option<DelayAsk>, StompError> {
    let mut found: Option<DelayAsk> = None;
    for (name, value) in frame.headers.iter() {
        let header = match name {
            "x-delay" => "x-delay",
            "AMQ_SCHEDULED_DELAY" => "AMQ_SCHEDULED_DELAY",
            "x-deliver-at" => "x-deliver-at",
            "_AMQ_SCHEDULED_TIME" => "_AMQ_SCHEDULED_TIME",
            _ => continue,
        };
        match found {
            Some(earlier) if earlier.header() == header => continue,
            Some(earlier) => {
                return Err(StompError::new(
                    format!("invalid {header} header: the SEND also has {}", earlier.header()),
                    format!("A SEND may carry one of {} to delay its delivery, not two.", DELAY_HEADERS.join(", ")),
                ));
            }
            None => {}
        }
        let ms = whole_ms(header, value, "a delay in milliseconds or a time in milliseconds since the Unix epoch")?;
        found = Some(if header == "x-delay" || header == "AMQ_SCHEDULED_DELAY" {
            DelayAsk::After { header, ms }
        } else {
            DelayAsk::At { header, at: ms }
        });
    }
    Ok(found)
}

/// A header holding a whole, non-negative number of milliseconds that fits in 64 bits.
fn whole_ms(header: &str, value: &str, meaning: &str) -> Result<u64, StompError> {
    let digits = value.trim();
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return digits.parse::<u64>().map_err(|_| {
            StompError::new(
                format!("invalid {header} header {value:?}: too large"),
                format!("{header} must be {meaning}; {value} does not fit in 64 bits."),
            )
        });
    }
    Err(StompError::new(
        format!("invalid {header} header {value:?}"),
        format!("{header} must be {meaning}: a whole number, 0 or more."),
    ))
}

/// A SUBSCRIBE's redelivery asks, before the session checks them against its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RedeliveryAsk {
    pub delay_ms: Option<u64>,
    pub backoff: Option<Backoff>,
    pub max_delay_ms: Option<u64>,
    pub max_deliveries: Option<u32>,
    /// `x-dead-letter-queue` as sent.
    pub dead_letter_queue: Option<String>,
}

/// The redelivery headers of a SUBSCRIBE, if any.
pub(super) fn redelivery(frame: &Frame) -> Result<Option<RedeliveryAsk>, StompError> {
    let number = |header: &str| -> Result<Option<u64>, StompError> {
        frame.header(header).map(|value| whole_ms(header, value, "a number of milliseconds")).transpose()
    };
    let delay_ms = number("x-redelivery-delay")?;
    let max_delay_ms = number("x-redelivery-max-delay")?;
    let backoff = match frame.header("x-redelivery-backoff") {
        None => None,
        Some(value) if value.eq_ignore_ascii_case("exponential") => Some(Backoff::Exponential),
        Some(value) if value.eq_ignore_ascii_case("fixed") || value.eq_ignore_ascii_case("none") => {
            Some(Backoff::Fixed)
        }
        Some(value) => {
            return Err(StompError::new(
                format!("invalid x-redelivery-backoff header {value:?}"),
                "x-redelivery-backoff must be exponential (the delay doubles at each redelivery) or fixed (the default).",
            ));
        }
    };
    let max_deliveries = match frame.header("x-max-deliveries") {
        None => None,
        Some(value) => Some(value.trim().parse::<u32>().map_err(|_| {
            StompError::new(
                format!("invalid x-max-deliveries header {value:?}"),
                "x-max-deliveries must be a whole number from 0 (never dead-letter) to 4294967295: the deliveries after which a NACKed message goes to the dead-letter queue.",
            )
        })?),
    };
    let dead_letter_queue = frame.header("x-dead-letter-queue").map(str::to_owned);
    let ask = RedeliveryAsk { delay_ms, backoff, max_delay_ms, max_deliveries, dead_letter_queue };
    Ok((ask != RedeliveryAsk::default()).then_some(ask))
}

impl Session {
    /// When a delayed SEND is due, in ms since the epoch; `None` when that is now or past
    /// (delivered at once).
    ///
    /// # Errors
    /// Cluster mode (single-node only for now), or a time beyond `max_delay_ms`.
    pub(super) fn deliver_at(&self, ask: DelayAsk, now: u64) -> Result<Option<u64>, StompError> {
        let header = ask.header();
        let most = self.config.max_delay_ms;
        let too_far = |what: String| {
            StompError::new(
                format!("invalid {header} header: {what} is beyond the maximum delay of {most} ms (max_delay_ms)"),
                format!("Delayed messages may be due at most {most} ms ahead (max_delay_ms)."),
            )
        };
        let at = match ask {
            DelayAsk::After { ms, .. } if ms > most => return Err(too_far(format!("{ms} ms"))),
            DelayAsk::After { ms, .. } => now.saturating_add(ms),
            DelayAsk::At { at, .. } if at > now.saturating_add(most) => {
                return Err(too_far(format!("{} ms from now", at - now)));
            }
            DelayAsk::At { at, .. } => at,
        };
        if at <= now {
            return Ok(None);
        }
        if self.router.cluster().is_some() {
            return Err(single_node_only(header));
        }
        Ok(Some(at))
    }

    /// The redelivery policy a SUBSCRIBE asked for, checked: delays within `max_delay_ms`, a
    /// dead-letter queue that is a queue this principal may send to.
    ///
    /// # Errors
    /// Cluster mode, a delay beyond the maximum, a dead-letter queue that is not a queue or may
    /// not be written.
    pub(super) fn redelivery_policy(&self, ask: RedeliveryAsk) -> Result<Arc<RedeliveryPolicy>, StompError> {
        if self.router.cluster().is_some() {
            return Err(single_node_only("x-redelivery-delay"));
        }
        let most = self.config.max_delay_ms;
        for (header, value) in [("x-redelivery-delay", ask.delay_ms), ("x-redelivery-max-delay", ask.max_delay_ms)] {
            if let Some(ms) = value.filter(|ms| *ms > most) {
                return Err(StompError::new(
                    format!("invalid {header} header: {ms} ms is beyond the maximum delay of {most} ms (max_delay_ms)"),
                    format!("Redelivery delays may be at most {most} ms (max_delay_ms)."),
                ));
            }
        }
        let dead_letter_queue = match ask.dead_letter_queue {
            None => None,
            Some(value) => Some(self.dead_letter_target(&value)?),
        };
        Ok(Arc::new(RedeliveryPolicy {
            delay_ms: ask.delay_ms.unwrap_or(0),
            backoff: ask.backoff.unwrap_or_default(),
            max_delay_ms: ask.max_delay_ms.unwrap_or(most),
            max_deliveries: ask.max_deliveries,
            dead_letter_queue,
        }))
    }

    /// `x-dead-letter-queue`: `/queue/<name>` or a bare `<name>`, which this principal may send
    /// to.
    fn dead_letter_target(&self, value: &str) -> Result<Arc<str>, StompError> {
        let invalid = |why: &str| {
            StompError::new(
                format!("invalid x-dead-letter-queue header {value:?}: {why}"),
                "x-dead-letter-queue names the queue this subscription's dead letters go to: /queue/<name> or <name>.",
            )
        };
        let destination = if value.starts_with('/') { value.to_owned() } else { format!("/queue/{value}") };
        let name = match Destination::parse(&destination) {
            Ok(Destination::Queue(name)) if !name.is_empty() => name.to_owned(),
            Ok(_) => return Err(invalid("not a /queue/ destination")),
            Err(error) => return Err(super::destination_error(error)),
        };
        super::refuse_control_characters("x-dead-letter-queue", &name)?;
        self.authorize(Operation::Write, &destination)?;
        Ok(Arc::from(name))
    }
}

/// The ERROR for a delay header in cluster mode.
fn single_node_only(header: &str) -> StompError {
    StompError::new(
        format!("invalid {header} header: delayed delivery is single-node only for now"),
        "Delayed delivery and redelivery delays are not available in cluster mode yet; send without them, or use a broker without [cluster].",
    )
}
