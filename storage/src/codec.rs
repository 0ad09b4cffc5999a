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
//! Every value is `version: u8`, `crc32: u32 LE` of what follows, then the payload. The
//! checksum is what turns a flipped bit or a torn write into a reported, skipped record instead
//! of a wrong message.
//!
//! Version 2 (written today) makes messages and definitions *self-identifying*: their payload
//! starts with a 4-byte magic ([`MESSAGE_MAGIC`], [`DEFINITION_MAGIC`]), and a message carries
//! its queue name and `seq`. sled keeps values as contiguous bytes in its log, so when sled's
//! own structure is damaged (it then panics, or silently drops everything after the damage)
//! the `salvage` module can still find every intact record by scanning the raw files for the
//! magic and checking each candidate's checksum. Version 1 records (no magic, identity only in
//! the key) are still read; salvage cannot see them.
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
/// Records written before salvage existed: payload without identity.
const FORMAT_V1: u8 = 1;
/// Self-identifying records (see the module docs).
const FORMAT_V2: u8 = 2;
/// Starts the payload of a version 2 message.
pub(crate) const MESSAGE_MAGIC: &[u8; 4] = b"STMQ";
/// Starts the payload of a version 2 queue definition.
pub(crate) const DEFINITION_MAGIC: &[u8; 4] = b"STMD";
const DELIVERY_COUNT_SUFFIX: u8 = 1;
/// Version byte and checksum before every payload.
pub(crate) const HEADER_LEN: usize = 5;

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

fn frame(version: u8, payload_len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload_len);
    out.push(version);
    out.extend_from_slice(&[0; 4]);
    write(&mut out);
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks version and checksum; returns the version and the payload.
fn unframe(value: &[u8]) -> Result<(u8, &[u8]), String> {
    if value.len() < HEADER_LEN {
        return Err(format!("record truncated to {} bytes", value.len()));
    }
    if value[0] != FORMAT_V1 && value[0] != FORMAT_V2 {
        return Err(format!("unknown record format version {}", value[0]));
    }
    check_crc(&value[1..HEADER_LEN], &value[HEADER_LEN..])?;
    Ok((value[0], &value[HEADER_LEN..]))
}

fn check_crc(stored: &[u8], payload: &[u8]) -> Result<(), String> {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&stored[..4]);
    let stored = u32::from_le_bytes(bytes);
    let actual = crc32fast::hash(payload);
    if stored != actual {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    // Lengths come from frames the broker accepted under its limits, far below 4 GiB.
    let value = u32::try_from(value).unwrap_or(u32::MAX);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Encodes `message` of `queue` with `delivery_count` in place of its own (a count recorded in
/// the same group commit as the message is folded into it).
pub(crate) fn encode_message(queue: &str, message: &StoredMessage, delivery_count: u32) -> Vec<u8> {
    let headers_len: usize = message.headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    frame(FORMAT_V2, 45 + queue.len() + headers_len + message.body.len(), |out| {
        out.extend_from_slice(MESSAGE_MAGIC);
        put_u32(out, queue.len());
        out.extend_from_slice(queue.as_bytes());
        out.extend_from_slice(&message.seq.to_le_bytes());
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

/// Decodes the message stored under `seq`.
pub(crate) fn decode_message(seq: u64, value: &[u8]) -> Result<StoredMessage, String> {
    let (version, payload) = unframe(value)?;
    // One copy out of the engine's buffer; headers and body are slices of it.
    let mut r = Reader { buf: Bytes::copy_from_slice(payload), pos: 0 };
    let message = match version {
        FORMAT_V1 => read_message_fields(&mut r, seq)?,
        _ => {
            let (_queue, message) = read_identified_message(&mut r)?;
            if message.seq != seq {
                return Err(format!("record of message {} stored under {seq}", message.seq));
            }
            message
        }
    };
    if r.pos != r.buf.len() {
        return Err(format!("{} unexpected bytes after the body", r.buf.len() - r.pos));
    }
    Ok(message)
}

/// A version 2 message: magic, queue name, seq, then the fields.
fn read_identified_message(r: &mut Reader) -> Result<(String, StoredMessage), String> {
    if r.array::<4>()? != *MESSAGE_MAGIC {
        return Err("not a message record".into());
    }
    let name_len = r.len()?;
    let queue = String::from_utf8(r.take(name_len)?.to_vec()).map_err(|e| format!("queue name is not UTF-8: {e}"))?;
    let seq = u64::from_le_bytes(r.array()?);
    Ok((queue, read_message_fields(r, seq)?))
}

fn read_message_fields(r: &mut Reader, seq: u64) -> Result<StoredMessage, String> {
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
    Ok(StoredMessage {
        seq,
        headers,
        body,
        delivery_count,
        expires_at_ms: (has_expiry != 0).then_some(expires),
        enqueued_at_ms,
    })
}

/// A record found by scanning raw bytes.
pub(crate) enum Found {
    Message { queue: String, message: StoredMessage },
    Definition(QueueRecord),
}

/// Reads the version 2 record whose payload's magic starts at `buf[at]`, if it is intact.
/// Returns it and the offset just past it. `buf` is a window of a raw file: a candidate that
/// runs past its end is reported as `Err` like a damaged one.
pub(crate) fn read_record_at(buf: &Bytes, at: usize) -> Result<(Found, usize), String> {
    let start = at.checked_sub(HEADER_LEN).ok_or("no room for a record header")?;
    if buf[start] != FORMAT_V2 {
        return Err(format!("format version {} before the magic", buf[start]));
    }
    let mut r = Reader { buf: buf.slice(at..), pos: 0 };
    let found = match buf.get(at..at + 4) {
        Some(magic) if magic == MESSAGE_MAGIC => {
            let (queue, message) = read_identified_message(&mut r)?;
            Found::Message { queue, message }
        }
        Some(magic) if magic == DEFINITION_MAGIC => {
            r.pos = 4;
            let len = r.len()?;
            let json = r.take(len)?;
            Found::Definition(serde_json::from_slice(&json).map_err(|e| format!("definition is not valid: {e}"))?)
        }
        _ => return Err("no record magic".into()),
    };
    check_crc(&buf[start + 1..at], &buf[at..at + r.pos])?;
    Ok((found, at + r.pos))
}

pub(crate) fn encode_delivery_count(count: u32) -> Vec<u8> {
    frame(FORMAT_V1, 4, |out| out.extend_from_slice(&count.to_le_bytes()))
}

pub(crate) fn decode_delivery_count(value: &[u8]) -> Result<u32, String> {
    let (_, payload) = unframe(value)?;
    let bytes: [u8; 4] = payload.try_into().map_err(|_| format!("delivery count of {} bytes", payload.len()))?;
    Ok(u32::from_le_bytes(bytes))
}

pub(crate) fn encode_record(record: &QueueRecord) -> Vec<u8> {
    // Serializing a struct of strings, numbers and unit enums to JSON cannot fail.
    let json = serde_json::to_vec(record).unwrap_or_default();
    frame(FORMAT_V2, 8 + json.len(), |out| {
        out.extend_from_slice(DEFINITION_MAGIC);
        put_u32(out, json.len());
        out.extend_from_slice(&json);
    })
}

pub(crate) fn decode_record(value: &[u8]) -> Result<QueueRecord, String> {
    let (version, mut json) = unframe(value)?;
    if version == FORMAT_V2 {
        let rest = json.strip_prefix(DEFINITION_MAGIC.as_slice()).ok_or("not a definition record")?;
        let len = rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        json = rest.get(4..).filter(|j| Some(j.len()) == len).ok_or("definition length does not match")?;
    }
    serde_json::from_slice(json).map_err(|e| format!("definition is not valid: {e}"))
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
        assert_eq!(decode_message(7, &encode_message("/queue/a", &m, m.delivery_count)).unwrap(), m);
    }

    #[test]
    fn version_1_messages_are_still_read() {
        let m = sample();
        let v2 = encode_message("q", &m, m.delivery_count);
        // A version 1 payload is the version 2 one without magic, name and seq.
        let fields = &v2[HEADER_LEN + 4 + 4 + 1 + 8..];
        let v1 = frame(FORMAT_V1, fields.len(), |out| out.extend_from_slice(fields));
        assert_eq!(decode_message(7, &v1).unwrap(), m);
    }

    #[test]
    fn a_message_stored_under_another_seq_is_refused() {
        let m = sample();
        let err = decode_message(8, &encode_message("q", &m, 0)).unwrap_err();
        assert!(err.contains("stored under 8"), "{err}");
    }

    #[test]
    fn records_are_found_inside_raw_bytes_and_damage_is_refused() {
        let m = sample();
        let mut raw = b"sled header bytes".to_vec();
        let at = raw.len() + HEADER_LEN;
        raw.extend_from_slice(&encode_message("/queue/a", &m, 2));
        let def_at = raw.len() + HEADER_LEN;
        raw.extend_from_slice(&encode_record(&QueueRecord::queue("/queue/a")));
        raw.extend_from_slice(b"trailing");
        let buf = Bytes::from(raw.clone());
        let (found, end) = read_record_at(&buf, at).unwrap();
        assert_eq!(end, def_at - HEADER_LEN);
        let Found::Message { queue, message } = found else { panic!("not a message") };
        assert_eq!((queue.as_str(), message.seq, message.delivery_count), ("/queue/a", 7, 2));
        assert!(matches!(read_record_at(&buf, def_at).unwrap().0, Found::Definition(r) if r.name == "/queue/a"));
        raw[at + 20] ^= 4;
        assert!(read_record_at(&Bytes::from(raw), at).is_err());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let encoded = encode_message("q", &sample(), 0);
        for i in 0..encoded.len() * 8 {
            let mut damaged = encoded.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            assert!(decode_message(7, &damaged).is_err(), "flip of bit {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let encoded = encode_message("q", &sample(), 0);
        for len in 0..encoded.len() {
            assert!(decode_message(7, &encoded[..len]).is_err(), "truncation to {len} went unnoticed");
        }
    }

    #[test]
    fn definitions_load_with_missing_and_unknown_fields() {
        let json = br#"{"name":"q1","some_future_field":42}"#;
        let value = frame(FORMAT_V1, json.len(), |out| out.extend_from_slice(json));
        assert_eq!(decode_record(&value).unwrap(), QueueRecord::queue("q1"));
    }

    #[test]
    fn delivery_count_key_sorts_between_its_message_and_the_next() {
        assert!(message_key(5).as_slice() < delivery_count_key(5).as_slice());
        assert!(delivery_count_key(5).as_slice() < message_key(6).as_slice());
    }
}
