//! The vendor header dialects: how clients written for RabbitMQ, ActiveMQ and Artemis name a
//! durable subscription, ask for a prefetch or a byte window, and set a message's time to live.
//!
//! Each dialect is read here and only here, into a typed value that says what the client asked
//! for in the broker's own terms ([`DurableAsk`], [`PrefetchAsk`], [`WindowAsk`], [`Expiry`]).
//! What those asks become depends on the configuration and on the connection (the defaults, the
//! caps, the `client-id`), and is decided by the session: a dialect never needs to know a
//! limit, and a limit never needs to know which broker's spelling asked for it.
//!
//! Numbers are read the way those brokers read them, and never trusted to stay small: a value
//! too large for its counter means "as much as allowed" (or "never", for times), anything that
//! is not a number is an ERROR naming the header.

use stampede_protocol::{Frame, names};

use crate::error::StompError;

/// The headers ActiveMQ and Artemis clients name a durable subscription with (on SUBSCRIBE and
/// UNSUBSCRIBE), in the order they are looked for.
const DURABLE_NAME_HEADERS: [&str; 3] =
    ["durable-subscription-name", "durable-subscriber-name", "activemq.subscriptionName"];

/// The durable subscription a SUBSCRIBE to a topic asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DurableAsk<'f> {
    /// ActiveMQ and Artemis: `activemq.subscriptionName` (or Artemis's
    /// `durable-subscription-name` / `durable-subscriber-name`), scoped by the connection's
    /// `client-id`.
    Named(&'f str),
    /// RabbitMQ: `durable:true` (or `persistent:true`) without `auto-delete:true`, named by
    /// `x-queue-name`, or else by the subscription id and destination.
    Flagged {
        /// `x-queue-name`, if given.
        queue_name: Option<&'f str>,
    },
}

impl DurableAsk<'_> {
    /// The durable subscription's name, given the connection's `client-id`, the subscription id
    /// and its destination.
    pub(super) fn name(&self, client_id: Option<&str>, id: &str, destination: &str) -> String {
        match self {
            DurableAsk::Named(name) => scoped(client_id, name),
            DurableAsk::Flagged { queue_name: Some(queue_name) } => (*queue_name).to_owned(),
            DurableAsk::Flagged { queue_name: None } => format!("{id}@{destination}"),
        }
    }
}

/// A durable subscription name of the ActiveMQ/Artemis dialect, scoped by `client-id`.
pub(super) fn scoped(client_id: Option<&str>, name: &str) -> String {
    format!("{}/{}", client_id.unwrap_or(""), name)
}

/// Reads which durable subscription a SUBSCRIBE asks for, if any.
pub(super) fn durable(frame: &Frame) -> Option<DurableAsk<'_>> {
    if let Some(name) = named_durable(frame) {
        return Some(DurableAsk::Named(name));
    }
    let auto_delete = frame.header("auto-delete") == Some("true");
    (delete_flag(frame) && !auto_delete).then(|| DurableAsk::Flagged { queue_name: frame.header("x-queue-name") })
}

/// The ActiveMQ/Artemis durable subscription name a frame carries (unscoped).
pub(super) fn named_durable(frame: &Frame) -> Option<&str> {
    DURABLE_NAME_HEADERS.iter().find_map(|h| frame.header(h))
}

/// RabbitMQ's durable flag: `durable:true` or `persistent:true`. On SUBSCRIBE it asks for a
/// durable subscription, on UNSUBSCRIBE for deleting it.
pub(super) fn delete_flag(frame: &Frame) -> bool {
    frame.header("durable") == Some("true") || frame.header(names::PERSISTENT) == Some("true")
}

/// How many unacknowledged messages a subscription asked to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrefetchAsk {
    /// No prefetch header: the configured default for the ack mode.
    Default,
    /// As many as allowed (0, a negative number, or one too large to count).
    Most,
    /// This many (at least 1).
    Messages(u32),
}

/// The prefetch a subscription asked for, in any of the dialects clients send: RabbitMQ's
/// `prefetch-count` or ActiveMQ's `activemq.prefetchSize` (messages). Artemis counts bytes
/// instead, see [`window`].
pub(super) fn prefetch(frame: &Frame) -> Result<PrefetchAsk, StompError> {
    let asked =
        ["prefetch-count", "activemq.prefetchSize"].iter().find_map(|name| frame.header(name).map(|v| (*name, v)));
    let Some((name, value)) = asked else { return Ok(PrefetchAsk::Default) };
    match value.trim().parse::<i64>() {
        Ok(n) if n <= 0 => Ok(PrefetchAsk::Most),
        Ok(n) => Ok(PrefetchAsk::Messages(u32::try_from(n).unwrap_or(u32::MAX))),
        // A number too large for any counter asks for as many as allowed, like 0 does.
        Err(error) if is_overflow(&error) => Ok(PrefetchAsk::Most),
        Err(_) => Err(StompError::new(
            format!("invalid {name} {value:?}"),
            format!("{name} must be a whole number of messages."),
        )),
    }
}

/// How many unacknowledged bytes a subscription asked to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WindowAsk {
    /// As many as allowed (no header, a negative number, or one too large to count).
    Most,
    /// At most this many (the first message is always allowed, so 1 means one at a time).
    Bytes(usize),
}

/// Artemis's `consumer-window-size`: bytes; 0 means one message at a time, -1 (or any negative
/// number, or one too large to count) as many as allowed.
pub(super) fn window(frame: &Frame) -> Result<WindowAsk, StompError> {
    const NAME: &str = "consumer-window-size";
    let Some(value) = frame.header(NAME) else { return Ok(WindowAsk::Most) };
    match value.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(WindowAsk::Bytes(usize::try_from(n).unwrap_or(usize::MAX))),
        Ok(0) => Ok(WindowAsk::Bytes(1)),
        Ok(_) => Ok(WindowAsk::Most),
        Err(error) if is_overflow(&error) => Ok(WindowAsk::Most),
        Err(_) => Err(StompError::new(
            format!("invalid {NAME} {value:?}"),
            format!("{NAME} must be a whole number of bytes."),
        )),
    }
}

/// RabbitMQ's `x-message-ttl` on SUBSCRIBE: the queue's default time to live, in ms.
pub(super) fn message_ttl(frame: &Frame) -> Result<Option<u64>, StompError> {
    frame.header("x-message-ttl").map(|ttl| milliseconds("x-message-ttl", ttl)).transpose()
}

/// RabbitMQ's `x-expires` on SUBSCRIBE: the queue is deleted after this long, in ms, empty
/// with no consumers. RabbitMQ refuses 0; so do we, since it would delete the queue at once.
pub(super) fn queue_expiry(frame: &Frame) -> Result<Option<u64>, StompError> {
    match frame.header("x-expires").map(|ms| milliseconds("x-expires", ms)).transpose()? {
        Some(0) => Err(StompError::new(
            "invalid x-expires header \"0\"",
            "x-expires is how long, in ms, the queue may stay empty with no consumers before it is deleted; it must be at least 1.",
        )),
        expiry => Ok(expiry),
    }
}

/// When a SEND's message expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// Never (no header, or ActiveMQ's `expires:0`).
    Never,
    /// ActiveMQ's `expires`: at this time, in ms since the epoch.
    At(u64),
    /// RabbitMQ's `expiration`: this many ms after the broker received it.
    After(u64),
}

impl Expiry {
    /// The expiry time in ms since the epoch, for a message received at `now`.
    pub(super) fn at(self, now: u64) -> Option<u64> {
        match self {
            Expiry::Never => None,
            Expiry::At(at) => Some(at),
            Expiry::After(ttl) => Some(now.saturating_add(ttl)),
        }
    }
}

/// A SEND's expiry: ActiveMQ's `expires` (absolute, ms since the epoch, 0 = never) or else
/// RabbitMQ's `expiration` (a time to live in ms from now).
pub(super) fn expiry(frame: &Frame) -> Result<Expiry, StompError> {
    if let Some(value) = frame.header(names::EXPIRES) {
        let at = milliseconds(names::EXPIRES, value)?;
        return Ok(if at == 0 { Expiry::Never } else { Expiry::At(at) });
    }
    if let Some(value) = frame.header(names::EXPIRATION) {
        return Ok(Expiry::After(milliseconds(names::EXPIRATION, value)?));
    }
    Ok(Expiry::Never)
}

/// A header counting milliseconds. A number too large for a u64 saturates (it means "in
/// practice never"); anything but digits is an ERROR naming the header.
fn milliseconds(name: &str, value: &str) -> Result<u64, StompError> {
    match value.trim().parse::<u64>() {
        Ok(ms) => Ok(ms),
        Err(error) if is_overflow(&error) => Ok(u64::MAX),
        Err(_) => Err(StompError::new(
            format!("invalid {name} header {value:?}"),
            format!("{name} must be a whole number of milliseconds."),
        )),
    }
}

/// Whether a number failed to parse only for being too large (or too negative) for its type.
fn is_overflow(error: &std::num::ParseIntError) -> bool {
    matches!(error.kind(), std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow)
}

#[cfg(test)]
mod tests {
    use stampede_protocol::Command;

    use super::*;

    fn subscribe(headers: &[(&'static str, &'static str)]) -> Frame {
        headers.iter().fold(Frame::new(Command::Subscribe), |frame, (name, value)| frame.with_header(*name, *value))
    }

    #[test]
    fn each_durable_dialect_names_its_subscription() {
        let activemq = subscribe(&[("activemq.subscriptionName", "sub")]);
        assert_eq!(durable(&activemq).map(|d| d.name(Some("app"), "1", "/topic/t")), Some("app/sub".into()));
        let artemis = subscribe(&[("durable-subscription-name", "sub")]);
        assert_eq!(durable(&artemis).map(|d| d.name(None, "1", "/topic/t")), Some("/sub".into()));
        let artemis_old = subscribe(&[("durable-subscriber-name", "old")]);
        assert_eq!(durable(&artemis_old), Some(DurableAsk::Named("old")));
        let rabbit = subscribe(&[("durable", "true"), ("x-queue-name", "q1")]);
        assert_eq!(durable(&rabbit).map(|d| d.name(None, "1", "/topic/t")), Some("q1".into()));
        let rabbit_by_id = subscribe(&[("persistent", "true")]);
        assert_eq!(durable(&rabbit_by_id).map(|d| d.name(None, "7", "/topic/t")), Some("7@/topic/t".into()));
        assert_eq!(durable(&subscribe(&[("durable", "true"), ("auto-delete", "true")])), None);
        assert_eq!(durable(&subscribe(&[])), None);
    }

    #[test]
    fn prefetch_and_window_read_every_dialect_and_saturate() {
        assert_eq!(prefetch(&subscribe(&[])).unwrap(), PrefetchAsk::Default);
        assert_eq!(prefetch(&subscribe(&[("prefetch-count", "5")])).unwrap(), PrefetchAsk::Messages(5));
        assert_eq!(prefetch(&subscribe(&[("activemq.prefetchSize", "0")])).unwrap(), PrefetchAsk::Most);
        assert_eq!(prefetch(&subscribe(&[("prefetch-count", "-3")])).unwrap(), PrefetchAsk::Most);
        assert_eq!(
            prefetch(&subscribe(&[("prefetch-count", "99999999999")])).unwrap(),
            PrefetchAsk::Messages(u32::MAX)
        );
        assert_eq!(prefetch(&subscribe(&[("prefetch-count", "9".repeat(30).leak())])).unwrap(), PrefetchAsk::Most);
        assert!(prefetch(&subscribe(&[("prefetch-count", "lots")])).unwrap_err().message.contains("prefetch-count"));
        assert_eq!(window(&subscribe(&[])).unwrap(), WindowAsk::Most);
        assert_eq!(window(&subscribe(&[("consumer-window-size", "0")])).unwrap(), WindowAsk::Bytes(1));
        assert_eq!(window(&subscribe(&[("consumer-window-size", "-1")])).unwrap(), WindowAsk::Most);
        assert_eq!(window(&subscribe(&[("consumer-window-size", "4096")])).unwrap(), WindowAsk::Bytes(4096));
        assert!(window(&subscribe(&[("consumer-window-size", "x")])).is_err());
    }

    #[test]
    fn expiry_and_ttl_saturate_instead_of_overflowing() {
        let send = |headers: &[(&'static str, &'static str)]| {
            headers.iter().fold(Frame::new(Command::Send), |frame, (name, value)| frame.with_header(*name, *value))
        };
        assert_eq!(expiry(&send(&[])).unwrap(), Expiry::Never);
        assert_eq!(expiry(&send(&[("expires", "0")])).unwrap(), Expiry::Never);
        assert_eq!(expiry(&send(&[("expires", "1234")])).unwrap().at(99), Some(1234));
        assert_eq!(expiry(&send(&[("expiration", "18446744073709551615")])).unwrap().at(10), Some(u64::MAX));
        assert_eq!(expiry(&send(&[("expiration", "100000000000000000000000")])).unwrap().at(10), Some(u64::MAX));
        assert!(expiry(&send(&[("expiration", "soon")])).unwrap_err().message.contains("expiration"));
        assert_eq!(message_ttl(&subscribe(&[("x-message-ttl", "18446744073709551615")])).unwrap(), Some(u64::MAX));
        assert!(message_ttl(&subscribe(&[("x-message-ttl", "-1")])).is_err());
    }
}
