//! The typed request stage between a decoded [`Frame`] and the state machine.
//!
//! A frame mirrors the wire: a command and a list of headers, any of which may be missing,
//! repeated or spelled in another broker's dialect. [`Request::read`] turns it into a value
//! the session can act on without looking at a header again: required headers are present,
//! numbers are numbers, the ack mode is an [`AckMode`], and every vendor spelling has become
//! one of [`super::dialect`]'s typed asks. Everything a frame can get wrong on its own is
//! refused here, before the session changes any state (so a refused SUBSCRIBE never creates a
//! queue it then cannot subscribe); what depends on the session (an id already in use, a limit,
//! a permission) is the state machine's to check.
//!
//! Requests borrow from their frame: reading one allocates nothing, which matters for SEND.

use std::sync::Arc;

use stampede_protocol::{ByteString, Command, Frame, Version, heartbeat::HeartBeat, names};

use super::acks::AckMode;
use super::dialect::{self, DurableAsk, Expiry, PrefetchAsk, WindowAsk};
use super::features::SubscribeFeatures;
use super::{destination_error, refuse_control_characters};
use crate::destination::queue::Outcome;
use crate::destination::router::Destination;
use crate::destination::selector::Selector;
use crate::error::StompError;

/// A client frame, read and checked.
#[derive(Debug)]
pub(super) enum Request<'f> {
    Connect(ConnectRequest<'f>),
    Send(SendRequest<'f>),
    Subscribe(SubscribeRequest<'f>),
    Unsubscribe(UnsubscribeRequest<'f>),
    /// ACK or NACK.
    Ack(AckRequest<'f>),
    Begin(&'f ByteString),
    Commit(&'f ByteString),
    Abort(&'f ByteString),
    Disconnect,
}

impl<'f> Request<'f> {
    /// Reads `frame` as a client command of a session that negotiated `version`.
    ///
    /// # Errors
    /// A server command, a missing required header, or a header the frame's command cannot
    /// use as it is.
    pub(super) fn read(frame: &'f Frame, version: Version) -> Result<Request<'f>, StompError> {
        Ok(match frame.command {
            Command::Connect | Command::Stomp => Request::Connect(ConnectRequest::read(frame)?),
            Command::Send => Request::Send(SendRequest::read(frame)?),
            Command::Subscribe => Request::Subscribe(SubscribeRequest::read(frame, version)?),
            Command::Unsubscribe => Request::Unsubscribe(UnsubscribeRequest::read(frame, version)?),
            Command::Ack | Command::Nack => Request::Ack(AckRequest::read(frame)?),
            Command::Begin => Request::Begin(transaction(frame)?),
            Command::Commit => Request::Commit(transaction(frame)?),
            Command::Abort => Request::Abort(transaction(frame)?),
            Command::Disconnect => Request::Disconnect,
            server_command => {
                return Err(StompError::new(
                    format!("{server_command} is a server command"),
                    "Clients may send CONNECT, STOMP, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT and DISCONNECT.",
                ));
            }
        })
    }
}

/// The transaction a BEGIN, COMMIT or ABORT names.
fn transaction(frame: &Frame) -> Result<&ByteString, StompError> {
    frame
        .headers
        .get_shared(names::TRANSACTION)
        .ok_or_else(|| StompError::missing_header(frame.command, names::TRANSACTION))
}

/// CONNECT or STOMP.
#[derive(Debug)]
pub(super) struct ConnectRequest<'f> {
    /// `accept-version` (absent means 1.0 only).
    pub accept_version: Option<&'f str>,
    /// The client's `heart-beat` (absent means none).
    pub heart_beat: HeartBeat,
    /// `host`: the virtual host (`/` when absent or empty).
    pub host: &'f str,
    pub login: Option<&'f str>,
    pub passcode: Option<&'f str>,
    /// ActiveMQ's `client-id`, which scopes durable subscription names.
    pub client_id: Option<&'f str>,
    /// `resume-token`: the `session-resume-token` of an earlier CONNECTED (an empty value is
    /// taken as absent, for clients that always set the header).
    pub resume_token: Option<&'f str>,
    /// The CONNECT carried a `resume-token` header, even an empty one: the client wants a
    /// resumable session. Without it nothing is kept when the connection breaks (today's
    /// behaviour for every client that does not know about resumption).
    pub resume_asked: bool,
}

impl<'f> ConnectRequest<'f> {
    fn read(frame: &'f Frame) -> Result<ConnectRequest<'f>, StompError> {
        let heart_beat = match frame.header(names::HEART_BEAT) {
            None => HeartBeat::default(),
            Some(value) => HeartBeat::parse(value).ok_or_else(|| {
                StompError::new(
                    format!("invalid heart-beat header {value:?}"),
                    "The heart-beat header must be two non-negative integers separated by a comma, e.g. 10000,10000.",
                )
            })?,
        };
        Ok(ConnectRequest {
            accept_version: frame.header(names::ACCEPT_VERSION),
            heart_beat,
            host: frame.header(names::HOST).filter(|h| !h.is_empty()).unwrap_or("/"),
            login: frame.header(names::LOGIN),
            passcode: frame.header(names::PASSCODE),
            client_id: frame.header("client-id"),
            resume_asked: frame.header(super::resume::RESUME_TOKEN).is_some(),
            resume_token: match frame.header(super::resume::RESUME_TOKEN).filter(|t| !t.is_empty()) {
                Some(token) if !super::resume::is_well_formed(token) => {
                    return Err(StompError::new(
                        format!("invalid resume-token header {token:?}"),
                        "The resume-token header must be the session-resume-token of an earlier CONNECTED (32 hexadecimal digits), or absent.",
                    ));
                }
                token => token,
            },
        })
    }
}

/// SEND.
#[derive(Debug)]
pub(super) struct SendRequest<'f> {
    /// The whole frame: its headers and body become the MESSAGE, and a transaction keeps it.
    pub frame: &'f Frame,
    /// The `destination` header as sent.
    pub destination_value: &'f ByteString,
    pub destination: Destination<'f>,
    /// `persistent:true`.
    pub persistent: bool,
    pub expiry: Expiry,
    /// `x-delay`, `x-deliver-at` and their ActiveMQ/Artemis spellings.
    pub delay: Option<super::scheduling::DelayAsk>,
    pub receipt: Option<&'f ByteString>,
    pub transaction: Option<&'f ByteString>,
}

impl<'f> SendRequest<'f> {
    /// Reads a SEND; also used for a SEND replayed at COMMIT and for HTTP publishing.
    pub(super) fn read(frame: &'f Frame) -> Result<SendRequest<'f>, StompError> {
        let destination_value = frame
            .headers
            .get_shared(names::DESTINATION)
            .ok_or_else(|| StompError::missing_header(Command::Send, names::DESTINATION))?;
        let destination = Destination::parse(destination_value).map_err(destination_error)?;
        Ok(SendRequest {
            frame,
            destination_value,
            destination,
            persistent: frame.header(names::PERSISTENT) == Some("true"),
            expiry: dialect::expiry(frame)?,
            delay: super::scheduling::send_delay(frame)?,
            receipt: frame.headers.get_shared(names::RECEIPT),
            transaction: frame.headers.get_shared(names::TRANSACTION),
        })
    }
}

/// SUBSCRIBE.
#[derive(Debug)]
pub(super) struct SubscribeRequest<'f> {
    /// The subscription id (in STOMP 1.0, the destination when `id` is absent).
    pub id: &'f str,
    /// The `destination` header as sent.
    pub destination_value: &'f str,
    pub destination: Destination<'f>,
    pub ack: AckMode,
    /// Selector, priority, exclusive, browser.
    pub features: SubscribeFeatures,
    /// For a topic: the durable subscription asked for, if any.
    pub durable: Option<DurableAsk<'f>>,
    /// The credit asked for, where it is used: queues and durable topic subscriptions (plain
    /// topic subscriptions and browsers take no credit, and their prefetch headers are not read).
    pub credit: Option<(PrefetchAsk, WindowAsk)>,
    /// RabbitMQ's `x-message-ttl`, for queues (not read for topics).
    pub message_ttl: Option<u64>,
    /// RabbitMQ's `x-expires`, for queues (not read for topics).
    pub queue_expiry: Option<u64>,
}

impl<'f> SubscribeRequest<'f> {
    fn read(frame: &'f Frame, version: Version) -> Result<SubscribeRequest<'f>, StompError> {
        let destination_value = frame
            .header(names::DESTINATION)
            .ok_or_else(|| StompError::missing_header(Command::Subscribe, names::DESTINATION))?;
        let id = match frame.header(names::ID) {
            Some(id) => id,
            // STOMP 1.0 made the id optional; the destination then names the subscription.
            None if version == Version::V1_0 => destination_value,
            None => return Err(StompError::missing_header(Command::Subscribe, names::ID)),
        };
        // The id is echoed in every MESSAGE's `subscription` header: one that a subscriber's
        // version could not carry would silently go missing there.
        refuse_control_characters(names::ID, id)?;
        let ack = AckMode::parse(frame.header(names::ACK))?;
        let destination = Destination::parse(destination_value).map_err(destination_error)?;
        let features = SubscribeFeatures::read(frame)?;
        let topic = matches!(destination, Destination::Topic(_));
        if features.browser && topic {
            return Err(StompError::new(
                "invalid browser header: topics cannot be browsed",
                format!(
                    "browser:true browses a queue's waiting messages; {destination_value} is a topic, which keeps none."
                ),
            ));
        }
        let durable = if topic { dialect::durable(frame) } else { None };
        if features.redelivery.is_some() && ((topic && durable.is_none()) || features.browser) {
            return Err(StompError::new(
                "invalid x-redelivery-delay header: redelivery policies apply to queue consumers",
                format!(
                    "x-redelivery-delay, x-redelivery-backoff, x-redelivery-max-delay, x-max-deliveries and x-dead-letter-queue apply to a SUBSCRIBE that consumes a queue (or a durable subscription); {destination_value} is not one."
                ),
            ));
        }
        if durable.is_some() && features.selector.is_some() {
            // Its queue would keep every unmatched message until it filled up: the selector
            // belongs with the stored subscription, which does not keep one.
            return Err(StompError::new(
                "invalid selector header: not supported on a durable subscription",
                "A durable topic subscription cannot have a selector yet; subscribe without one, or use a non-durable subscription or a queue.",
            ));
        }
        let message_ttl = if topic { None } else { dialect::message_ttl(frame)? };
        let queue_expiry = if topic { None } else { dialect::queue_expiry(frame)? };
        let takes_credit = if topic { durable.is_some() } else { !features.browser };
        let credit = if takes_credit { Some((dialect::prefetch(frame)?, dialect::window(frame)?)) } else { None };
        Ok(SubscribeRequest {
            id,
            destination_value,
            destination,
            ack,
            features,
            durable,
            credit,
            message_ttl,
            queue_expiry,
        })
    }

    /// The selector, if the subscription has one.
    pub(super) fn selector(&self) -> Option<&Arc<Selector>> {
        self.features.selector.as_ref()
    }
}

/// UNSUBSCRIBE.
#[derive(Debug)]
pub(super) struct UnsubscribeRequest<'f> {
    /// `id` (in STOMP 1.0, possibly absent: then `destination` names the subscription).
    pub id: Option<&'f ByteString>,
    pub destination: Option<&'f str>,
    /// RabbitMQ's `durable:true` / `persistent:true`: delete the durable subscription too.
    pub delete: bool,
    /// ActiveMQ/Artemis: the durable subscription to delete, by name (unscoped).
    pub named_durable: Option<&'f str>,
}

impl<'f> UnsubscribeRequest<'f> {
    fn read(frame: &'f Frame, version: Version) -> Result<UnsubscribeRequest<'f>, StompError> {
        let request = UnsubscribeRequest {
            id: frame.headers.get_shared(names::ID),
            destination: frame.header(names::DESTINATION),
            delete: dialect::delete_flag(frame),
            named_durable: dialect::named_durable(frame),
        };
        if request.id.is_none() && version != Version::V1_0 && request.named_durable.is_none() {
            return Err(StompError::missing_header(Command::Unsubscribe, names::ID));
        }
        Ok(request)
    }
}

/// ACK or NACK: which message, and what became of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct AckRequest<'f> {
    /// `Ack` for ACK; `Requeue` for NACK, `Reject` for NACK with `requeue:false`.
    pub outcome: Outcome,
    /// `id` as a number: the MESSAGE's `ack` header (STOMP 1.2).
    pub ack_id: Option<u64>,
    /// `message-id` (or, for 1.2 clients that put the message-id in `id`, `id`) as a number.
    pub message_id: Option<u64>,
    /// `subscription` (STOMP 1.1).
    pub subscription: Option<&'f ByteString>,
    pub transaction: Option<&'f ByteString>,
}

impl<'f> AckRequest<'f> {
    /// Reads an ACK or NACK; also used for one replayed at COMMIT.
    pub(super) fn read(frame: &'f Frame) -> Result<AckRequest<'f>, StompError> {
        if !frame.headers.contains(names::ID) && !frame.headers.contains(names::MESSAGE_ID) {
            return Err(StompError::new(
                format!("{} frame names no message", frame.command),
                format!(
                    "{} must carry 'id' (the MESSAGE's ack header, STOMP 1.2) or 'message-id' (with 'subscription' in STOMP 1.1).",
                    frame.command
                ),
            ));
        }
        let outcome = match frame.command {
            Command::Ack => Outcome::Ack,
            _ if frame.header("requeue") == Some("false") => Outcome::Reject,
            _ => Outcome::Requeue,
        };
        Ok(AckRequest {
            outcome,
            ack_id: frame.header(names::ID).and_then(|v| v.parse::<u64>().ok()),
            message_id: frame.header(names::MESSAGE_ID).or(frame.header(names::ID)).and_then(|v| v.parse::<u64>().ok()),
            subscription: frame.headers.get_shared(names::SUBSCRIPTION),
            transaction: frame.headers.get_shared(names::TRANSACTION),
        })
    }
}
