//! On-disk layout and record encoding.
//!
//! # Layout
//! - tree `meta`: key = queue name, value = a framed JSON [`QueueRecord`].
//! - tree `q/<name>` per queue: key = `seq` as 8 big-endian bytes (so the tree's order is the
//!   queue's order) holding the framed message; key = `seq` ++ `0x01` holding its framed delivery
//!   count, which sorts right after its message, so one scan sees both.
//! - tree `quarantine`: records recovery could not decode, key = tree name ++ `0x00` ++ original
//!   key, kept for inspection.
//!
//! # Framing
//! Every value is `version: u8 = 1`, `crc32: u32 LE` of what follows, then the payload. The
//! checksum is what turns a flipped bit or a torn write into a reported, skipped record instead
//! of a wrong message.
//!
//! The message payload is hand-rolled rather than serde-encoded because recovery decodes every
//! stored message and this keeps it to a few length-prefixed slices of one buffer, with the
//! headers and body sharing it. The definition payload is JSON so that fields can be added.

use bytes::Bytes;
use stampede_protocol::{ByteString, Headers};

use crate::{QueueRecord, StoredMessage};

pub(crate) const META_TREE: &[u8] = b"meta";
pub(crate) const QUARANTINE_TREE: &[u8] = b"quarantine";
pub(crate) const QUEUE_TREE_PREFIX: &str = "q/";
const FORMAT_VERSION: u8 = 1;
const DELIVERY_COUNT_SUFFIX: u8 = 1;
const HEADER_LEN: usize = 5;

pub(crate) fn queue_tree_name(queue: &str) -> String {
    format!("{QUEUE_TREE_PREFIX}{queue}")
}

pub(crate) fn message_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn delivery_count_key(seq: u64) -> [u8; 9] {
    let mut key = [DELIVERY_COUNT_SUFFIX; 9];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key
}

/// What a key of a queue tree refers to.
pub(crate) enum QueueKey {
    Message(u64),
    DeliveryCount(u64),
    Unknown,
}

pub(crate) fn parse_queue_key(key: &[u8]) -> QueueKey {
    match key.len() {
        8 => QueueKey::Message(be_u64(key)),
        9 if key[8] == DELIVERY_COUNT_SUFFIX => QueueKey::DeliveryCount(be_u64(&key[..8])),
        _ => QueueKey::Unknown,
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

fn frame(payload_len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload_len);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&[0; 4]);
    write(&mut out);
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks version and checksum and returns the payload's range.
fn unframe(value: &[u8]) -> Result<std::ops::Range<usize>, String> {
    if value.len() < HEADER_LEN {
        return Err(format!("record truncated to {} bytes", value.len()));
    }
    if value[0] != FORMAT_VERSION {
        return Err(format!("unknown record format version {}", value[0]));
    }
    let mut stored = [0; 4];
    stored.copy_from_slice(&value[1..HEADER_LEN]);
    let stored = u32::from_le_bytes(stored);
    let actual = crc32fast::hash(&value[HEADER_LEN..]);
    if stored != actual {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    Ok(HEADER_LEN..value.len())
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    // Lengths come from frames the broker accepted under its limits, far below 4 GiB.
    let value = u32::try_from(value).unwrap_or(u32::MAX);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Encodes `message` with `delivery_count` in place of its own (a count recorded in the same
/// group commit as the message is folded into it).
pub(crate) fn encode_message(message: &StoredMessage, delivery_count: u32) -> Vec<u8> {
    let headers_len: usize = message.headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    frame(29 + headers_len + message.body.len(), |out| {
        out.extend_from_slice(&message.enqueued_at_ms.to_le_bytes());
        out.push(u8::from(message.expires_at_ms.is_some()));
        out.extend_from_slice(&message.expires_at_ms.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&delivery_count.to_le_bytes());
        put_u32(out, message.headers.len());
        for (name, value) in message.headers.iter() {
            put_u32(out, name.len());
            out.extend_from_slice(name.as_bytes());
            put_u32(out, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        put_u32(out, message.body.len());
        out.extend_from_slice(&message.body);
    })
}

/// A bounds-checked reader over the payload of one record.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, String> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len()).ok_or_else(|| {
            format!("record truncated: wanted {n} bytes at offset {}, {} left", self.pos, self.buf.len() - self.pos)
        })?;
        let slice = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.u32()?).map_err(|e| e.to_string())
    }

    fn string(&mut self) -> Result<ByteString, String> {
        let len = self.len()?;
        ByteString::try_from(self.take(len)?).map_err(|e| format!("header is not UTF-8: {e}"))
    }
}

pub(crate) fn decode_message(seq: u64, value: &[u8]) -> Result<StoredMessage, String> {
    let range = unframe(value)?;
    // One copy out of the engine's buffer; headers and body are slices of it.
    let mut r = Reader { buf: Bytes::copy_from_slice(&value[range]), pos: 0 };
    let enqueued_at_ms = u64::from_le_bytes(r.array()?);
    let has_expiry = r.array::<1>()?[0];
    let expires = u64::from_le_bytes(r.array()?);
    let delivery_count = r.u32()?;
    let header_count = r.len()?;
    let mut headers = Headers::with_capacity(header_count.min(64));
    for _ in 0..header_count {
        let name = r.string()?;
        let value = r.string()?;
        headers.push(name, value);
    }
    let body_len = r.len()?;
    let body = r.take(body_len)?;
    if r.pos != r.buf.len() {
        return Err(format!("{} unexpected bytes after the body", r.buf.len() - r.pos));
    }
    Ok(StoredMessage {
        seq,
        headers,
        body,
        delivery_count,
        expires_at_ms: (has_expiry != 0).then_some(expires),
        enqueued_at_ms,
    })
}

pub(crate) fn encode_delivery_count(count: u32) -> Vec<u8> {
    frame(4, |out| out.extend_from_slice(&count.to_le_bytes()))
}

pub(crate) fn decode_delivery_count(value: &[u8]) -> Result<u32, String> {
    let range = unframe(value)?;
    let payload = &value[range];
    let bytes: [u8; 4] = payload.try_into().map_err(|_| format!("delivery count of {} bytes", payload.len()))?;
    Ok(u32::from_le_bytes(bytes))
}

pub(crate) fn encode_record(record: &QueueRecord) -> Vec<u8> {
    // Serializing a struct of strings, numbers and unit enums to JSON cannot fail.
    let json = serde_json::to_vec(record).unwrap_or_default();
    frame(json.len(), |out| out.extend_from_slice(&json))
}

pub(crate) fn decode_record(value: &[u8]) -> Result<QueueRecord, String> {
    let range = unframe(value)?;
    serde_json::from_slice(&value[range]).map_err(|e| format!("definition is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredMessage {
        let mut headers = Headers::new();
        headers.push("destination", "/queue/a");
        headers.push("content-type", "text/plain");
        StoredMessage {
            seq: 7,
            headers,
            body: Bytes::from_static(b"hello\0world"),
            delivery_count: 3,
            expires_at_ms: Some(99),
            enqueued_at_ms: 12,
        }
    }

    #[test]
    fn message_round_trips() {
        let m = sample();
        assert_eq!(decode_message(7, &encode_message(&m, m.delivery_count)).unwrap(), m);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let encoded = encode_message(&sample(), 0);
        for i in 0..encoded.len() * 8 {
            let mut damaged = encoded.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            assert!(decode_message(7, &damaged).is_err(), "flip of bit {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let encoded = encode_message(&sample(), 0);
        for len in 0..encoded.len() {
            assert!(decode_message(7, &encoded[..len]).is_err(), "truncation to {len} went unnoticed");
        }
    }

    #[test]
    fn definitions_load_with_missing_and_unknown_fields() {
        let json = br#"{"name":"q1","some_future_field":42}"#;
        let value = frame(json.len(), |out| out.extend_from_slice(json));
        assert_eq!(decode_record(&value).unwrap(), QueueRecord::queue("q1"));
    }

    #[test]
    fn delivery_count_key_sorts_between_its_message_and_the_next() {
        assert!(message_key(5).as_slice() < delivery_count_key(5).as_slice());
        assert!(delivery_count_key(5).as_slice() < message_key(6).as_slice());
    }
}
