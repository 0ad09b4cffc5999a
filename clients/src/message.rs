//! Received messages and the ACK/NACK frames that answer them.
//!
//! How ACK names a message changed between versions, and getting it wrong is the most common
//! interop bug: STOMP 1.2 uses `id` = the MESSAGE's `ack` header; 1.1 uses `subscription` plus
//! `message-id`; 1.0 has only ACK (no NACK) with `message-id`. [`ack_frame`] is the one place
//! that knows this.

use bytes::Bytes;
use bytestring::ByteString;
use stampede_protocol::{Command, Frame, Headers, Version, names};

use crate::ClientError;

/// A MESSAGE delivered to a [`Subscription`](crate::Subscription).
///
/// The commonly used headers are lifted into fields (cheap: they share the frame's buffer);
/// [`Message::headers`] keeps every header, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The `destination` header.
    pub destination: ByteString,
    /// The `message-id` header.
    pub message_id: ByteString,
    /// The `subscription` header: the id of the subscription it was delivered to.
    pub subscription: ByteString,
    /// The `ack` header (STOMP 1.2, non-auto subscriptions): what ACK and NACK must name.
    pub ack_id: Option<ByteString>,
    /// True when the server marked it `redelivered:true`.
    pub redelivered: bool,
    /// Every header, in wire order.
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// Reads a MESSAGE frame. Missing headers become empty strings rather than errors: the
    /// frame came from the server, and a test looking at an odd server wants to see it.
    pub fn from_frame(frame: Frame) -> Message {
        let get = |name: &str| frame.headers.get_shared(name).cloned();
        Message {
            destination: get(names::DESTINATION).unwrap_or_default(),
            message_id: get(names::MESSAGE_ID).unwrap_or_default(),
            subscription: get(names::SUBSCRIPTION).unwrap_or_default(),
            ack_id: get(names::ACK),
            redelivered: frame.header(names::REDELIVERED) == Some("true"),
            headers: frame.headers,
            body: frame.body,
        }
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body as UTF-8, if it is.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// Builds the ACK or NACK for `message` in the form `version` requires, optionally inside
/// `transaction`.
///
/// # Errors
/// [`ClientError::InvalidRequest`] for NACK on STOMP 1.0 (it has none) and for a STOMP 1.2
/// message without an `ack` header (an auto-ack subscription: there is nothing to acknowledge).
pub fn ack_frame(
    command: Command,
    message: &Message,
    version: Version,
    transaction: Option<&str>,
) -> Result<Frame, ClientError> {
    debug_assert!(matches!(command, Command::Ack | Command::Nack));
    let mut frame = Frame::new(command);
    match version {
        Version::V1_2 => {
            let Some(ack_id) = &message.ack_id else {
                return Err(ClientError::InvalidRequest(format!(
                    "message {} has no `ack` header: its subscription is in auto mode, so there \
                     is nothing to {command}",
                    message.message_id
                )));
            };
            frame.headers.push(names::ID, ack_id.clone());
        }
        Version::V1_1 | Version::V1_0 => {
            if version == Version::V1_0 && command == Command::Nack {
                return Err(ClientError::InvalidRequest("NACK does not exist in STOMP 1.0".to_owned()));
            }
            frame.headers.push(names::SUBSCRIPTION, message.subscription.clone());
            frame.headers.push(names::MESSAGE_ID, message.message_id.clone());
        }
    }
    if let Some(transaction) = transaction {
        frame.headers.push(names::TRANSACTION, transaction);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ack: Option<&str>) -> Message {
        let mut frame = Frame::new(Command::Message)
            .with_header("destination", "/queue/a")
            .with_header("message-id", "m-1")
            .with_header("subscription", "sub-0")
            .with_header("redelivered", "true")
            .with_body("hi");
        if let Some(ack) = ack {
            frame.headers.push("ack", ack);
        }
        Message::from_frame(frame)
    }

    fn pairs(frame: &Frame) -> Vec<(&str, &str)> {
        frame.headers.iter().collect()
    }

    #[test]
    fn message_fields_come_from_headers() {
        let m = message(Some("a-9"));
        assert_eq!(m.destination, "/queue/a");
        assert_eq!(m.message_id, "m-1");
        assert_eq!(m.subscription, "sub-0");
        assert_eq!(m.ack_id.as_deref(), Some("a-9"));
        assert!(m.redelivered);
        assert_eq!(m.body_str(), Some("hi"));
    }

    #[test]
    fn stomp_1_2_acks_by_ack_header() {
        let f = ack_frame(Command::Ack, &message(Some("a-9")), Version::V1_2, None).unwrap();
        assert_eq!(f.command, Command::Ack);
        assert_eq!(pairs(&f), vec![("id", "a-9")]);
        let f = ack_frame(Command::Nack, &message(Some("a-9")), Version::V1_2, Some("tx-0")).unwrap();
        assert_eq!(pairs(&f), vec![("id", "a-9"), ("transaction", "tx-0")]);
    }

    #[test]
    fn stomp_1_2_without_ack_header_is_a_caller_error() {
        let err = ack_frame(Command::Ack, &message(None), Version::V1_2, None).unwrap_err();
        assert!(matches!(err, ClientError::InvalidRequest(_)));
    }

    #[test]
    fn stomp_1_1_and_1_0_ack_by_subscription_and_message_id() {
        for version in [Version::V1_1, Version::V1_0] {
            let f = ack_frame(Command::Ack, &message(None), version, None).unwrap();
            assert_eq!(pairs(&f), vec![("subscription", "sub-0"), ("message-id", "m-1")]);
        }
        let f = ack_frame(Command::Nack, &message(Some("ignored")), Version::V1_1, None).unwrap();
        assert_eq!(pairs(&f), vec![("subscription", "sub-0"), ("message-id", "m-1")]);
    }

    #[test]
    fn stomp_1_0_has_no_nack() {
        let err = ack_frame(Command::Nack, &message(None), Version::V1_0, None).unwrap_err();
        assert!(matches!(err, ClientError::InvalidRequest(_)));
    }
}
