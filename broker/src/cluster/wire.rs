//! One topic message as a NATS payload, and back.
//!
//! The STOMP headers travel inside the payload, not as NATS headers: a STOMP header value may
//! hold a colon, a line break or bytes that NATS's HTTP-like header block cannot carry, and
//! duplicate names must keep their order. The layout is fixed-width and versioned:
//!
//! ```text
//! u8  version (1)        u8  flags (bit 0: persistent, bit 1: has an expiry)
//! u64 message id         u64 enqueued at (ms)        u64 expires at (ms, 0 = none)
//! u32 header count, then per header: u32 name length, name, u32 value length, value
//! the body, to the end
//! ```
//!
//! All integers are big-endian. Decoding slices the received buffer (no copy of the body or of
//! the header text) and checks every length against what is left, so a damaged or foreign
//! payload is refused, never read past.

use bytes::{BufMut, Bytes, BytesMut};
use stampede_protocol::{ByteString, Headers, MessageTemplate};

use crate::destination::router::TopicMessage;

const VERSION: u8 = 1;
const PERSISTENT: u8 = 1;
const HAS_EXPIRY: u8 = 2;
const FIXED: usize = 1 + 1 + 8 + 8 + 8 + 4;

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its lengths say.
    #[error("the payload ends early")]
    Truncated,
    /// Written by another version of this format.
    #[error("unknown payload version {0}")]
    Version(u8),
    /// A header name or value is not UTF-8.
    #[error("a header is not UTF-8")]
    NotUtf8,
}

/// `template` and `message` as one payload.
pub fn encode(template: &MessageTemplate, message: &TopicMessage) -> Bytes {
    let headers = template.headers();
    let header_bytes: usize = headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut out = BytesMut::with_capacity(FIXED + header_bytes + template.body().len());
    out.put_u8(VERSION);
    let mut flags = 0;
    if message.persistent {
        flags |= PERSISTENT;
    }
    if message.expires_at_ms.is_some() {
        flags |= HAS_EXPIRY;
    }
    out.put_u8(flags);
    out.put_u64(message.id);
    out.put_u64(message.enqueued_at_ms);
    out.put_u64(message.expires_at_ms.unwrap_or(0));
    out.put_u32(headers.len() as u32);
    for (name, value) in headers.iter() {
        out.put_u32(name.len() as u32);
        out.put_slice(name.as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(template.body());
    out.freeze()
}

/// The message a payload made by [`encode`] carries.
pub fn decode(payload: &Bytes) -> Result<(MessageTemplate, TopicMessage), WireError> {
    let mut at = 0;
    let take = |at: &mut usize, n: usize| -> Result<Bytes, WireError> {
        let end = at.checked_add(n).filter(|&end| end <= payload.len()).ok_or(WireError::Truncated)?;
        let slice = payload.slice(*at..end);
        *at = end;
        Ok(slice)
    };
    let u64_at = |bytes: &Bytes| u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"));
    let u32_at = |bytes: &Bytes| u32::from_be_bytes(bytes[..4].try_into().expect("four bytes")) as usize;
    let fixed = take(&mut at, FIXED)?;
    if fixed[0] != VERSION {
        return Err(WireError::Version(fixed[0]));
    }
    let flags = fixed[1];
    let id = u64_at(&fixed.slice(2..10));
    let enqueued_at_ms = u64_at(&fixed.slice(10..18));
    let expires = u64_at(&fixed.slice(18..26));
    let count = u32_at(&fixed.slice(26..30));
    // Every header takes at least eight bytes: a count beyond what is left is a lie.
    if count > (payload.len() - at) / 8 {
        return Err(WireError::Truncated);
    }
    let mut headers = Headers::with_capacity(count);
    let text = |bytes: Bytes| ByteString::try_from(bytes).map_err(|_| WireError::NotUtf8);
    for _ in 0..count {
        let length = u32_at(&take(&mut at, 4)?);
        let name = text(take(&mut at, length)?)?;
        let length = u32_at(&take(&mut at, 4)?);
        let value = text(take(&mut at, length)?)?;
        headers.push(name, value);
    }
    let body = payload.slice(at..);
    let message = TopicMessage {
        id,
        persistent: flags & PERSISTENT != 0,
        expires_at_ms: (flags & HAS_EXPIRY != 0).then_some(expires),
        enqueued_at_ms,
    };
    Ok((MessageTemplate::new(headers, body), message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_body_and_message_fields_survive_the_round_trip() {
        let mut headers = Headers::new();
        headers.push("destination", "/topic/a.b");
        headers.push("content-type", "application/json;charset=utf-8");
        headers.push("x-colon", "a:b\nc");
        headers.push("x-dup", "first");
        headers.push("x-dup", "second");
        headers.push("x-empty", "");
        let template = MessageTemplate::new(headers.clone(), Bytes::from_static(b"{\"k\":\0 1}"));
        let message = TopicMessage { id: 42, persistent: true, expires_at_ms: Some(99), enqueued_at_ms: 7 };
        let payload = encode(&template, &message);
        let (back, fields) = decode(&payload).unwrap();
        assert_eq!(back.headers(), &headers);
        assert_eq!(back.body(), template.body());
        assert_eq!(
            (fields.id, fields.persistent, fields.expires_at_ms, fields.enqueued_at_ms),
            (42, true, Some(99), 7)
        );
        let plain = TopicMessage { id: 1, persistent: false, expires_at_ms: None, enqueued_at_ms: 0 };
        let (_, fields) = decode(&encode(&template, &plain)).unwrap();
        assert_eq!((fields.persistent, fields.expires_at_ms), (false, None));
    }

    #[test]
    fn damaged_payloads_are_refused() {
        let template = MessageTemplate::new([("a", "b")].into_iter().collect(), Bytes::from_static(b"body"));
        let payload = encode(&template, &TopicMessage::transient(1));
        for cut in 0..FIXED + 8 {
            assert!(decode(&payload.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut other = payload.to_vec();
        other[0] = 9;
        assert_eq!(decode(&Bytes::from(other)).unwrap_err(), WireError::Version(9));
        let mut lying = payload.to_vec();
        lying[26..30].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&Bytes::from(lying)).unwrap_err(), WireError::Truncated);
    }
}
