//! The encoder and the fan-out template. (API fixed; implementation in progress.)

use bytes::{Bytes, BytesMut};

use crate::{Frame, Headers, Version};

/// Writes `frame` to `dst`, escaping headers per `version` (never for CONNECT, STOMP and
/// CONNECTED) and adding `content-length` for every SEND, MESSAGE and ERROR.
pub fn encode(frame: &Frame, version: Version, dst: &mut BytesMut) {
    let _ = (frame, version, dst);
    todo!("codec implementation")
}

/// [`encode`] into a fresh buffer.
pub fn encode_to_bytes(frame: &Frame, version: Version) -> Bytes {
    let mut dst = BytesMut::new();
    encode(frame, version, &mut dst);
    dst.freeze()
}

/// A MESSAGE encoded once and delivered to many subscribers.
#[derive(Debug)]
pub struct MessageTemplate {
    headers: Headers,
    body: Bytes,
}

impl MessageTemplate {
    /// A template from the shared headers (everything but the per-delivery ones) and body.
    pub fn new(headers: Headers, body: Bytes) -> MessageTemplate {
        MessageTemplate { headers, body }
    }

    /// The shared headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// True when the body is valid UTF-8 (computed once).
    pub fn body_is_utf8(&self) -> bool {
        todo!("codec implementation")
    }

    /// Writes one MESSAGE: `per_delivery` headers first, then the shared encoding.
    pub fn write_to(&self, version: Version, per_delivery: &[(&str, &str)], dst: &mut BytesMut) {
        let _ = (version, per_delivery, dst);
        todo!("codec implementation")
    }

    /// Bytes one delivery will take, give or take the per-delivery headers.
    pub fn encoded_len_hint(&self) -> usize {
        self.body.len() + 64
    }
}
