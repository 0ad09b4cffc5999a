//! The SUBSCRIBE headers of features other brokers lack or spell differently: selectors,
//! consumer priority, exclusive consumers, queue browsing and topic replay (plus `x-retain`,
//! the SEND header that goes with replay; the redelivery policy is read in [`super::scheduling`]).
//!
//! Each feature is read by one small function that accepts every spelling a client written for
//! another broker sends (RabbitMQ's `x-` headers, ActiveMQ's `activemq.` ones, Apollo's
//! `browser`), and refuses a value it cannot read with an ERROR naming the header: a typo must
//! never quietly subscribe without the feature.

use std::sync::Arc;

use stampede_protocol::Frame;

use crate::destination::retention::Replay;
use crate::destination::selector::Selector;
use crate::error::StompError;

/// What a SUBSCRIBE asked for beyond the plain subscription.
#[derive(Debug, Default)]
pub(super) struct SubscribeFeatures {
    /// Only matching messages are delivered.
    pub selector: Option<Arc<Selector>>,
    /// Consumer priority (queues): higher goes first.
    pub priority: i32,
    /// One active consumer per queue, the others stand by.
    pub exclusive: bool,
    /// See the queue's waiting messages without consuming them, then end.
    pub browser: bool,
    /// What happens to NACKed and abandoned messages (queues), checked by the session.
    pub redelivery: Option<super::scheduling::RedeliveryAsk>,
    /// Topic history to deliver before the live messages.
    pub replay: Option<Replay>,
}

impl SubscribeFeatures {
    /// Reads every feature header of `frame`.
    pub(super) fn read(frame: &Frame) -> Result<SubscribeFeatures, StompError> {
        Ok(SubscribeFeatures {
            selector: selector(frame)?,
            priority: priority(frame)?,
            exclusive: exclusive(frame)?,
            browser: browser(frame)?,
            redelivery: super::scheduling::redelivery(frame)?,
            replay: replay(frame)?,
        })
    }
}

/// The first of `names` the frame carries, with its value.
fn first_of<'a>(frame: &'a Frame, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
    names.iter().find_map(|name| frame.header(name).map(|value| (*name, value)))
}

/// `selector` (ActiveMQ, Artemis): parsed now, so a bad one is refused before any message
/// arrives. An empty selector selects everything, as in JMS.
fn selector(frame: &Frame) -> Result<Option<Arc<Selector>>, StompError> {
    let Some(text) = frame.header("selector").filter(|text| !text.trim().is_empty()) else { return Ok(None) };
    Selector::parse(text).map(|selector| Some(Arc::new(selector))).map_err(|error| {
        StompError::new(
            format!("invalid selector header: {error}"),
            format!(
                "The selector {text:?} is not a valid selector {error}. Selectors use the JMS SQL-92 subset: comparisons, AND/OR/NOT, IN, LIKE, BETWEEN, IS NULL, string and number literals."
            ),
        )
    })
}

/// `x-priority` (RabbitMQ) or `activemq.priority` (ActiveMQ): a whole number, 0 by default.
fn priority(frame: &Frame) -> Result<i32, StompError> {
    let Some((name, value)) = first_of(frame, &["x-priority", "activemq.priority"]) else { return Ok(0) };
    value.trim().parse::<i32>().map_err(|_| {
        StompError::new(
            format!("invalid {name} header {value:?}"),
            format!("{name} must be a whole number (higher-priority consumers get messages first; the default is 0)."),
        )
    })
}

/// `x-exclusive` or `activemq.exclusive` (ActiveMQ): `true` or `false`.
fn exclusive(frame: &Frame) -> Result<bool, StompError> {
    flag(frame, &["x-exclusive", "activemq.exclusive"])
}

/// `browser` (Apollo): `true` or `false`. Apollo's `browser-end:false` (stay subscribed for
/// messages that arrive later) is not supported, and is refused rather than ignored.
fn browser(frame: &Frame) -> Result<bool, StompError> {
    let browser = flag(frame, &["browser"])?;
    if browser && !flag_or(frame, "browser-end", true)? {
        return Err(StompError::new(
            "invalid browser-end header \"false\": not supported",
            "A browser ends after the messages waiting when it subscribed (browser-end:true, the default); to see later messages, subscribe again.",
        ));
    }
    Ok(browser)
}

fn flag_or(frame: &Frame, name: &'static str, default: bool) -> Result<bool, StompError> {
    if frame.header(name).is_none() {
        return Ok(default);
    }
    flag(frame, &[name])
}

fn flag(frame: &Frame, names: &[&'static str]) -> Result<bool, StompError> {
    match first_of(frame, names) {
        None => Ok(false),
        Some((_, value)) if value.eq_ignore_ascii_case("true") => Ok(true),
        Some((_, value)) if value.eq_ignore_ascii_case("false") => Ok(false),
        Some((name, value)) => {
            Err(StompError::new(format!("invalid {name} header {value:?}"), format!("{name} must be true or false.")))
        }
    }
}

/// `x-replay` (`last`, `all` or a whole number N ≥ 1: the last N of each matching topic) and
/// `x-replay-since` (ms since the epoch), which may be combined; ActiveMQ's
/// `activemq.retroactive: true` is `x-replay: all` (its broker, too, replays what its
/// subscription recovery policy kept).
fn replay(frame: &Frame) -> Result<Option<Replay>, StompError> {
    let last = match frame.header("x-replay").map(str::trim) {
        None => None,
        Some(value) if value.eq_ignore_ascii_case("last") => Some(Some(1)),
        Some(value) if value.eq_ignore_ascii_case("all") => Some(None),
        Some(value) => match value.parse::<usize>() {
            Ok(n) if n >= 1 => Some(Some(n)),
            _ => {
                return Err(StompError::new(
                    format!("invalid x-replay header {value:?}"),
                    "x-replay must be last, all, or a whole number of messages of at least 1 (the last N of each matching topic).",
                ));
            }
        },
    };
    let since = match frame.header("x-replay-since") {
        None => None,
        Some(value) => Some(value.trim().parse::<u64>().map_err(|_| {
            StompError::new(
                format!("invalid x-replay-since header {value:?}"),
                "x-replay-since must be a time in milliseconds since the Unix epoch (whole number).",
            )
        })?),
    };
    let retroactive = flag(frame, &["activemq.retroactive"])?;
    if last.is_none() && since.is_none() && !retroactive {
        return Ok(None);
    }
    Ok(Some(Replay { last: last.flatten(), since_ms: since }))
}

/// `x-retain` on SEND: `true` keeps the message in its topic's history (see the `retention`
/// module), `false` (the default) keeps it only where a `[topics]` table says so.
pub(super) fn retain(frame: &Frame) -> Result<bool, StompError> {
    flag(frame, &["x-retain"])
}
