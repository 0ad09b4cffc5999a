//! Deliveries rendered as MESSAGE frames, and what the client owes for them: ACK and NACK.
//!
//! Every MESSAGE from a subscription that is not `ack:auto` carries an `ack` header with a
//! session-unique number. ACK and NACK are accepted in all three forms whatever version was
//! negotiated, because clients mix them up: `id` (1.2), `subscription` plus `message-id` (1.1)
//! and `message-id` alone (1.0). In `client` mode an ACK or NACK covers every earlier
//! unacknowledged message of the subscription too; in `client-individual` mode only the one
//! named. An ACK for a message that is no longer pending (acknowledged twice, or already
//! redelivered elsewhere) is ignored, as nothing is lost by doing so. For `ack:auto` queue
//! subscriptions the connection tells the queue once the bytes are written ([`AutoAck`]).

use std::sync::Arc;

use bytes::BytesMut;
use stampede_protocol::{Frame, names};
use tracing::debug;

use super::request::AckRequest;
use super::subscriptions::Target;
use super::{AutoAck, ENDED_BROWSERS_REMEMBERED, Session};
use crate::destination::outbox::Delivery;
use crate::error::StompError;

/// The acknowledgement mode of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// No ACK expected.
    Auto,
    /// Cumulative ACK.
    Client,
    /// One ACK per message.
    ClientIndividual,
}

impl AckMode {
    /// Reads SUBSCRIBE's `ack` header (absent means `auto`).
    pub(super) fn parse(value: Option<&str>) -> Result<AckMode, StompError> {
        match value {
            None | Some("auto") => Ok(AckMode::Auto),
            Some("client") => Ok(AckMode::Client),
            Some("client-individual") => Ok(AckMode::ClientIndividual),
            Some(other) => Err(StompError::new(
                format!("invalid ack mode {other:?}"),
                "The SUBSCRIBE 'ack' header must be auto, client or client-individual.",
            )),
        }
    }
}

/// A queue delivery written to the client and not yet acknowledged.
#[derive(Debug)]
pub(super) struct Pending {
    pub ack_id: u64,
    pub message_id: u64,
}

impl Session {
    /// ACK or NACK: buffered if it names a transaction, settled now otherwise.
    pub(super) async fn ack_or_buffer(&mut self, frame: &Frame, request: AckRequest<'_>) -> Result<(), StompError> {
        if self.buffer_in_transaction(frame, request.transaction)? {
            return Ok(());
        }
        self.ack(request);
        Ok(())
    }

    /// Finds which pending deliveries an ACK/NACK covers and settles them with their queue.
    pub(super) fn ack(&mut self, request: AckRequest<'_>) {
        let Some((key, position)) = self.find_pending(&request) else {
            debug!(session = %self.id, outcome = ?request.outcome, "acknowledgement for a message that is not pending; ignored");
            return;
        };
        let Some(subscription) = self.subscriptions.get_mut(&key) else {
            return;
        };
        let covered: Vec<Pending> = match subscription.ack {
            AckMode::Client => subscription.pending.drain(..=position).collect(),
            _ => subscription.pending.remove(position).into_iter().collect(),
        };
        for pending in &covered {
            self.ack_owner.remove(&pending.ack_id);
        }
        if let Target::Queue { queue, consumer } = &subscription.target {
            let messages = covered.iter().map(|p| p.message_id).collect();
            let _ = queue.settle(*consumer, messages, request.outcome);
        }
    }

    fn find_pending(&self, request: &AckRequest<'_>) -> Option<(u64, usize)> {
        let position_of = |key: u64, matches: &dyn Fn(&Pending) -> bool| {
            self.subscriptions.get(&key).and_then(|s| s.pending.iter().position(matches)).map(|p| (key, p))
        };
        if let Some(ack_id) = request.ack_id
            && let Some(&key) = self.ack_owner.get(&ack_id)
            && let Some(found) = position_of(key, &|p| p.ack_id == ack_id)
        {
            return Some(found);
        }
        // 1.1 and 1.0 forms (and 1.2 clients that put the message-id in `id`).
        let message_id = request.message_id?;
        let candidates: Vec<u64> = match request.subscription.and_then(|s| self.by_id.get(s)) {
            Some(&key) => vec![key],
            None => self.subscriptions.keys().copied().collect(),
        };
        candidates.into_iter().find_map(|key| position_of(key, &|p| p.message_id == message_id))
    }

    /// Writes one delivery into `dst`, recording what the client must acknowledge. Returns the
    /// acknowledgement the connection must send once the bytes are written, for `ack:auto`
    /// queue subscriptions. Deliveries for subscriptions that no longer exist are skipped.
    pub fn render(&mut self, delivery: Delivery, dst: &mut BytesMut) -> Option<AutoAck> {
        let subscription = self.subscriptions.get_mut(&delivery.subscription)?;
        let ends_browse =
            matches!(&subscription.target, Target::Browse { end } if Arc::ptr_eq(end, &delivery.template));
        let mut message_id = itoa::Buffer::new();
        let message_id_text = message_id.format(delivery.message_id);
        let mut ack_text = itoa::Buffer::new();
        let mut gap_text = itoa::Buffer::new();
        let mut per_delivery: [(&str, &str); 5] = [("", ""); 5];
        per_delivery[0] = (names::SUBSCRIPTION, &subscription.id);
        per_delivery[1] = (names::MESSAGE_ID, message_id_text);
        let mut count = 2;
        let mut auto_ack = None;
        if subscription.ack == AckMode::Auto {
            auto_ack = delivery.from_queue.map(|from| AutoAck { from, message_id: delivery.message_id });
        } else {
            let ack_id = self.next_ack;
            self.next_ack += 1;
            per_delivery[count] = (names::ACK, ack_text.format(ack_id));
            count += 1;
            if delivery.from_queue.is_some() {
                subscription.pending.push_back(Pending { ack_id, message_id: delivery.message_id });
                self.ack_owner.insert(ack_id, delivery.subscription);
            }
        }
        if delivery.redelivered {
            per_delivery[count] = (names::REDELIVERED, "true");
            count += 1;
        }
        if subscription.resume_gap > 0 {
            per_delivery[count] = (super::resume::RESUME_GAP, gap_text.format(subscription.resume_gap));
            count += 1;
            subscription.resume_gap = 0;
        }
        delivery.template.write_to(self.version, &per_delivery[..count], dst);
        if ends_browse && let Some(ended) = self.subscriptions.remove(&delivery.subscription) {
            self.by_id.remove(&ended.id);
            if self.ended_browsers.len() >= ENDED_BROWSERS_REMEMBERED {
                self.ended_browsers.pop_front();
            }
            self.ended_browsers.push_back(ended.id);
        }
        auto_ack
    }
}
