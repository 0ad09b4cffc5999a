//! SEND: from a checked request to a topic's subscribers or a queue.
//!
//! A SEND is checked when it arrives (destination, permission), whether it is sent now or
//! buffered in a transaction, so a bad SEND fails when sent, not when committed. Routing builds
//! the MESSAGE once ([`MessageTemplate`]): the SEND's user headers, each name once, minus what
//! the broker sets per delivery, and a `reply-to` naming a temporary queue rewritten to the
//! name other connections reply to.

use std::sync::Arc;

use rustc_hash::FxHashSet;
use stampede_protocol::{ByteString, Frame, Headers, MessageTemplate, names};
use tracing::debug;

use super::request::SendRequest;
use super::scheduling::{DELAY_HEADERS, DelayAsk};
use super::{PER_DELIVERY_HEADERS, Reply, Session, destination_error, not_found};
use crate::destination::delay::{DELIVER_AT, TopicDelayError};
use crate::destination::queue::{QueuedMessage, now_ms};
use crate::destination::router::{Destination, TopicMessage};
use crate::error::ErrorKind;
use crate::error::StompError;
use crate::http::metrics::PublishKind;
use crate::security::auth::Operation;

impl Session {
    pub(super) async fn send_or_buffer(
        &mut self,
        request: SendRequest<'_>,
        replies: &mut Vec<Reply>,
    ) -> Result<(), StompError> {
        self.authorize(Operation::Write, &request.destination_value[..])?;
        if let Some(ask) = request.delay {
            // Refused when sent, not at COMMIT (where the delay is counted from).
            self.check_delayed(&request, ask)?;
        }
        if request.transaction.is_some() {
            self.router.check_clustered_transaction(&request.destination)?;
        }
        self.check_retain(request.frame, &request.destination)?;
        if self.buffer_in_transaction(request.frame, request.transaction)? {
            return Ok(());
        }
        self.send(request, replies).await.map(drop)
    }

    /// Routes a checked SEND. Returns the message's id.
    pub(super) async fn send(&mut self, request: SendRequest<'_>, replies: &mut Vec<Reply>) -> Result<u64, StompError> {
        let frame = request.frame;
        self.router.check_clustered(&request.destination)?;
        let now = now_ms();
        let id = self.router.next_message_id();
        let message = TopicMessage {
            id,
            persistent: request.persistent,
            expires_at_ms: request.expiry.at(now),
            enqueued_at_ms: now,
        };
        if message.expires_at_ms.is_some_and(|at| at <= now) {
            // Already expired: never delivered (and never stored).
            return Ok(id);
        }
        if message.persistent
            && self.config.disk_full_policy == crate::disk::DiskFullPolicy::Block
            && let Some(disk) = self.config.disk.as_ref().filter(|disk| disk.is_raised())
        {
            crate::disk::hold_while_raised(disk, self.config.disk_full_block).await;
        }
        let deliver_at = match request.delay {
            None => None,
            Some(ask) => self.check_delayed(&request, ask)?,
        };
        let mut headers = self.message_headers(frame).await?;
        if let Some(at) = deliver_at {
            // The MESSAGE says when it was due; stored with it, this is what a restart reads.
            headers.retain(|name, _| !DELAY_HEADERS.contains(&name));
            headers.push(DELIVER_AT, at.to_string());
        }
        let template = Arc::new(MessageTemplate::new(headers, frame.body.clone()));
        let receipt_id = request.receipt.cloned();
        let destination_value = request.destination_value;
        let queue = match request.destination {
            Destination::Topic(name) => {
                if crate::destination::topic::TopicPattern::parse(&name).is_some() {
                    return Err(StompError::new(
                        format!("cannot send to wildcard destination {destination_value:?}"),
                        "Wildcards (*, #, >) select topics when subscribing; a SEND names one topic.",
                    ));
                }
                self.config.metrics.message_published(PublishKind::Topic);
                if let Some(at) = deliver_at {
                    let limit = self.config.max_delayed_topic_messages;
                    self.router.publish_topic_at(&name, template, message, at, limit).map_err(|error| match error {
                        TopicDelayError::Full(_) => {
                            StompError::limit("delayed topic messages", limit, "max_delayed_topic_messages")
                        }
                        TopicDelayError::Stopped => {
                            StompError::of_kind(ErrorKind::Internal, "broker shutting down", error.to_string())
                        }
                    })?;
                    return Ok(id);
                }
                let retain = super::features::retain(frame)?;
                for verdict in self.router.publish_topic_retained(&name, &template, message, retain).await? {
                    replies.push(Reply::After { verdict, receipt_id: receipt_id.clone() });
                }
                return Ok(id);
            }
            Destination::Queue(name) => self.router.client_queue(name, self.user())?,
            Destination::ExistingQueue(name) => self.router.queue(name).ok_or_else(|| not_found(destination_value))?,
            Destination::TempQueue(name) => self.temp_queue(name).await?,
            Destination::ReplyQueue(name) => match self.router.reply_queue(name) {
                Some(queue) => queue,
                None => {
                    debug!(destination = %destination_value, "reply queue not on this node");
                    self.router.publish_remote_reply(name, &template, message).await?;
                    return Ok(id);
                }
            },
        };
        let queued = QueuedMessage {
            id: message.id,
            template,
            delivery_count: 0,
            persistent: message.persistent,
            expires_at_ms: message.expires_at_ms,
            enqueued_at_ms: message.enqueued_at_ms,
        };
        let verdict = match deliver_at {
            None => queue.publish(queued).await?,
            Some(at) => queue.publish_at(queued, at).await?,
        };
        self.config.metrics.message_published(PublishKind::Queue);
        replies.push(Reply::After { verdict, receipt_id });
        Ok(id)
    }

    /// When a delayed SEND is due (`None`: now), refusing what cannot be delayed: beyond
    /// `max_delay_ms`, in cluster mode, or persistent to a topic (held topic messages live in
    /// memory only, and a receipt for a persistent message promises it survives).
    fn check_delayed(&self, request: &SendRequest<'_>, ask: DelayAsk) -> Result<Option<u64>, StompError> {
        let at = self.deliver_at(ask, now_ms())?;
        if at.is_some() && request.persistent && matches!(request.destination, Destination::Topic(_)) {
            return Err(StompError::new(
                "invalid persistent header: a delayed topic message cannot be persistent",
                "Delayed topic messages are held in memory until due, so they would not survive a restart; send it without persistent:true, or to a queue.",
            ));
        }
        Ok(at)
    }

    /// `x-retain` must read `true` or `false`, and asks for a topic's history, which cluster
    /// mode does not keep (yet).
    fn check_retain(&self, frame: &Frame, destination: &Destination<'_>) -> Result<(), StompError> {
        if !super::features::retain(frame)? {
            return Ok(());
        }
        if !matches!(destination, Destination::Topic(_)) {
            return Err(StompError::new(
                "invalid x-retain header: only topics retain",
                "x-retain:true keeps a message in its topic's history for x-replay subscribers; send it to a /topic/ destination.",
            ));
        }
        if self.router.cluster().is_some() {
            return Err(StompError::new(
                "invalid x-retain header: single-node only for now",
                "Retained topic history is kept per node, so in cluster mode ([cluster]) x-retain is refused rather than kept on one node only.",
            ));
        }
        Ok(())
    }

    /// The headers a MESSAGE carries: the SEND's user headers, each name once with its first
    /// value, minus those that describe the SEND itself or that the broker sets per delivery
    /// ([`PER_DELIVERY_HEADERS`]), with `reply-to` rewritten for temporary queues.
    ///
    /// "Only the first header entry SHOULD be used": forwarding the later ones would hand a
    /// client that reads the last one a value the broker never acted on, such as a
    /// `destination` the publisher had no permission for.
    async fn message_headers(&mut self, frame: &Frame) -> Result<Headers, StompError> {
        let mut headers = Headers::with_capacity(frame.headers.len());
        // A handful of headers is searched in place; the many a hostile SEND may carry (up to
        // `max_headers`) go through a set, so deduplication stays linear.
        let hashed = frame.headers.len() > 16;
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        for (name, value) in frame.headers.iter_shared() {
            let repeated = if hashed { !seen.insert(&**name) } else { headers.contains(name) };
            match &**name {
                _ if repeated => {}
                names::RECEIPT | names::TRANSACTION => {}
                owned if PER_DELIVERY_HEADERS.contains(&owned) => {}
                names::REPLY_TO if value.starts_with("/temp-queue/") => {
                    Destination::parse(value).map_err(destination_error)?;
                    let name = &value["/temp-queue/".len()..];
                    let queue = self.temp_queue(name).await?;
                    self.router.confirm_reply_interest().await?;
                    headers.push(ByteString::from_static(names::REPLY_TO), format!("/reply-queue/{}", queue.name()));
                }
                _ => headers.push(name.clone(), value.clone()),
            }
        }
        Ok(headers)
    }
}
