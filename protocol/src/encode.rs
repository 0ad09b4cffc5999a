//! The encoder and the fan-out template.
//!
//! Encoding is a sequence of `put_slice` calls into a buffer reserved once: headers with nothing
//! to escape (nearly all of them) are copied whole, and `content-length` is always written from
//! the body itself so a stale or forged value in [`Frame::headers`] can never desynchronise the
//! peer.
//!
//! A topic with a thousand subscribers delivers the same MESSAGE a thousand times, differing only
//! in `subscription`, `message-id` and `ack`. [`MessageTemplate`] therefore encodes the shared
//! part (headers, `content-length`, blank line, body, NUL) once per version, keeps it as
//! [`Bytes`], and per delivery writes only the command and the per-delivery headers in front of
//! it. Per-delivery headers come first so that, with first-wins lookup, they override any
//! same-named header the publisher sent.
//!
//! A header is written only if the reader's version can carry it (see [`encode`]); one that it
//! cannot is left out rather than written raw, because raw it would read as other headers,
//! another frame or another body. For the template that decision is taken once per version,
//! when the shared part is built, so fan-out pays nothing for it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

use crate::escape;
use crate::headers::names::CONTENT_LENGTH;
use crate::{Command, Frame, Headers, Version};

/// Room for `content-length:<20 digits>\n`, the blank line and the NUL.
const TRAILER_ROOM: usize = CONTENT_LENGTH.len() + 1 + 20 + 1 + 1 + 1;

/// Writes `frame` to `dst`, escaping headers per `version` (never for CONNECT, STOMP and
/// CONNECTED) and adding `content-length` for every SEND, MESSAGE and ERROR.
///
/// Any `content-length` entry in `frame.headers` is ignored: the written one is the body's true
/// length. Lines end with LF, which every version accepts. The body of a command that may not
/// carry one (anything but SEND, MESSAGE and ERROR) is not written; building such a frame is a
/// bug, caught by a debug assertion.
///
/// A header is left out, never written raw, when `version` cannot represent it, because a
/// conforming reader would take the raw octets for a different header, another frame or a
/// different body:
/// - NUL in the name or value, in every version (readers end the frame at the first NUL);
/// - without escaping (STOMP 1.0, and CONNECT, STOMP and CONNECTED in every version): LF or CR
///   in the name or value, or a colon in the name;
/// - STOMP 1.1: CR in the name or value (1.1 has no `\r` escape, and a CR before the LF would
///   read as a CRLF line end).
///
/// Each header left out adds one to [`unrepresentable_headers_omitted`].
pub fn encode(frame: &Frame, version: Version, dst: &mut BytesMut) {
    let command = frame.command;
    let escaping = command.uses_escaping();
    let with_body = command.allows_body();
    debug_assert!(with_body || frame.body.is_empty(), "{command} frames must not have a body");

    // Sized for headers with nothing to escape; the rare escape makes `put_slice` grow the buffer.
    let mut len = command.as_str().len() + 1 + TRAILER_ROOM + lines_len(frame.headers.iter());
    if with_body {
        len += frame.body.len();
    }
    dst.reserve(len);

    dst.put_slice(command.as_str().as_bytes());
    dst.put_u8(b'\n');
    write_headers(&frame.headers, version, escaping, dst);
    if with_body {
        write_content_length(frame.body.len(), dst);
        dst.put_u8(b'\n');
        dst.put_slice(&frame.body);
    } else {
        dst.put_u8(b'\n');
    }
    dst.put_u8(0);
}

/// [`encode`] into a fresh buffer.
pub fn encode_to_bytes(frame: &Frame, version: Version) -> Bytes {
    let mut dst = BytesMut::new();
    encode(frame, version, &mut dst);
    dst.freeze()
}

/// Headers left out of encoded frames since the process started because the reader's version
/// cannot represent them (see [`encode`]). A [`MessageTemplate`] counts each of its shared
/// headers once per version it is encoded for, not once per delivery.
static UNREPRESENTABLE_HEADERS_OMITTED: AtomicU64 = AtomicU64::new(0);

/// How many headers the encoder has left out, process-wide, because the version they were
/// encoded for cannot represent them (see [`encode`]).
pub fn unrepresentable_headers_omitted() -> u64 {
    UNREPRESENTABLE_HEADERS_OMITTED.load(Ordering::Relaxed)
}

/// Bytes the header lines take when nothing needs escaping.
fn lines_len<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> usize {
    headers.map(|(name, value)| name.len() + value.len() + 2).sum()
}

/// Writes every header except `content-length`, one LF-terminated line each.
fn write_headers(headers: &Headers, version: Version, escaping: bool, dst: &mut BytesMut) {
    for (name, value) in headers.iter() {
        if name == CONTENT_LENGTH {
            continue;
        }
        write_header(name, value, version, escaping, dst);
    }
}

/// Writes one header line, or nothing (counted) when `version` cannot represent it.
fn write_header(name: &str, value: &str, version: Version, escaping: bool, dst: &mut BytesMut) {
    let start = dst.len();
    let written = escape::write_escaped(name, version, escaping, true, dst) && {
        dst.put_u8(b':');
        escape::write_escaped(value, version, escaping, false, dst)
    };
    if written {
        dst.put_u8(b'\n');
    } else {
        dst.truncate(start);
        UNREPRESENTABLE_HEADERS_OMITTED.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_content_length(length: usize, dst: &mut BytesMut) {
    dst.put_slice(CONTENT_LENGTH.as_bytes());
    dst.put_u8(b':');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = length;
    loop {
        at -= 1;
        // `rest % 10` is below 10, so the cast cannot truncate.
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    dst.put_slice(&digits[at..]);
    dst.put_u8(b'\n');
}

/// A MESSAGE encoded once and delivered to many subscribers.
///
/// Share it in an `Arc`: the encoded shared part is built on first use for each version, by
/// whichever thread gets there first, and reused by all.
#[derive(Debug)]
pub struct MessageTemplate {
    headers: Headers,
    body: Bytes,
    /// Shared headers, `content-length`, blank line, body and NUL, per [`Version`] in
    /// [`Version::ALL`] order.
    shared: [OnceLock<Bytes>; 3],
    body_is_utf8: OnceLock<bool>,
}

impl MessageTemplate {
    /// A template from the shared headers (everything but the per-delivery ones) and body.
    pub fn new(headers: Headers, body: Bytes) -> MessageTemplate {
        MessageTemplate {
            headers,
            body,
            shared: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
            body_is_utf8: OnceLock::new(),
        }
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
        *self.body_is_utf8.get_or_init(|| std::str::from_utf8(&self.body).is_ok())
    }

    /// Writes one MESSAGE: `per_delivery` headers first, then the shared encoding. Headers
    /// `version` cannot represent are left out, as by [`encode`].
    pub fn write_to(&self, version: Version, per_delivery: &[(&str, &str)], dst: &mut BytesMut) {
        let shared = self.shared_part(version);
        dst.reserve(Self::head_len(per_delivery) + shared.len());
        self.write_head(version, per_delivery, dst);
        dst.put_slice(shared);
    }

    /// Writes only `MESSAGE` and the per-delivery headers, for a caller that sends
    /// [`MessageTemplate::shared_part`] right after it with a vectored write instead of copying.
    pub fn write_head(&self, version: Version, per_delivery: &[(&str, &str)], dst: &mut BytesMut) {
        dst.reserve(Self::head_len(per_delivery));
        dst.put_slice(b"MESSAGE\n");
        for (name, value) in per_delivery {
            if *name != CONTENT_LENGTH {
                write_header(name, value, version, true, dst);
            }
        }
    }

    /// The encoding that follows the per-delivery headers: shared headers, `content-length`,
    /// blank line, body and NUL. Built once per version, leaving out the shared headers that
    /// version cannot represent; clone it (a reference count) to keep it.
    pub fn shared_part(&self, version: Version) -> &Bytes {
        let slot = match version {
            Version::V1_0 => &self.shared[0],
            Version::V1_1 => &self.shared[1],
            Version::V1_2 => &self.shared[2],
        };
        slot.get_or_init(|| {
            let mut dst = BytesMut::with_capacity(lines_len(self.headers.iter()) + TRAILER_ROOM + self.body.len());
            write_headers(&self.headers, version, true, &mut dst);
            write_content_length(self.body.len(), &mut dst);
            dst.put_u8(b'\n');
            dst.put_slice(&self.body);
            dst.put_u8(0);
            dst.freeze()
        })
    }

    /// Bytes one delivery will take, give or take the per-delivery headers.
    pub fn encoded_len_hint(&self) -> usize {
        self.body.len() + 64
    }

    fn head_len(per_delivery: &[(&str, &str)]) -> usize {
        Command::Message.as_str().len() + 1 + lines_len(per_delivery.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn send_always_carries_the_true_content_length() {
        let frame =
            Frame::new(Command::Send).with_header("destination", "/queue/a").with_header("content-length", "999");
        assert_eq!(text(&encode_to_bytes(&frame, Version::V1_2)), "SEND\ndestination:/queue/a\ncontent-length:0\n\n\0");
        let frame = frame.with_body("hello");
        assert_eq!(
            text(&encode_to_bytes(&frame, Version::V1_2)),
            "SEND\ndestination:/queue/a\ncontent-length:5\n\nhello\0"
        );
    }

    #[test]
    fn frames_without_body_have_no_content_length() {
        let frame = Frame::new(Command::Receipt).with_header("receipt-id", "r:1");
        assert_eq!(text(&encode_to_bytes(&frame, Version::V1_2)), "RECEIPT\nreceipt-id:r\\c1\n\n\0");
    }

    #[test]
    fn connect_headers_are_not_escaped() {
        let frame = Frame::new(Command::Connect).with_header("passcode", "a:b\\c");
        assert_eq!(text(&encode_to_bytes(&frame, Version::V1_2)), "CONNECT\npasscode:a:b\\c\n\n\0");
    }

    #[test]
    fn headers_are_escaped_per_version() {
        let frame = Frame::new(Command::Message).with_header("k", "a\r\n:\\");
        let body = "content-length:0\n\n\0";
        assert_eq!(text(&encode_to_bytes(&frame, Version::V1_2)), format!("MESSAGE\nk:a\\r\\n\\c\\\\\n{body}"));
        let frame = Frame::new(Command::Message).with_header("k", "a\n:\\");
        assert_eq!(text(&encode_to_bytes(&frame, Version::V1_1)), format!("MESSAGE\nk:a\\n\\c\\\\\n{body}"));
        let frame = Frame::new(Command::Message).with_header("k", "a:\\");
        assert_eq!(text(&encode_to_bytes(&frame, Version::V1_0)), format!("MESSAGE\nk:a:\\\n{body}"));
    }

    #[test]
    fn a_header_the_version_cannot_represent_is_left_out_and_counted() {
        let frame = Frame::new(Command::Message)
            .with_header("before", "1")
            .with_header("k", "a\nforged:header")
            .with_header("cr", "a\rb")
            .with_header("a:b", "name with a colon")
            .with_header("nul", "a\0b")
            .with_header("after", "2");
        let body = "content-length:0\n\n\0";
        let cases = [
            (Version::V1_0, "MESSAGE\nbefore:1\nafter:2\n", 4),
            (Version::V1_1, "MESSAGE\nbefore:1\nk:a\\nforged\\cheader\na\\cb:name with a colon\nafter:2\n", 2),
            (
                Version::V1_2,
                "MESSAGE\nbefore:1\nk:a\\nforged\\cheader\ncr:a\\rb\na\\cb:name with a colon\nafter:2\n",
                1,
            ),
        ];
        for (version, head, omitted) in cases {
            let before = unrepresentable_headers_omitted();
            assert_eq!(text(&encode_to_bytes(&frame, version)), format!("{head}{body}"), "{version}");
            // Other tests encode in parallel, so the counter may have moved further.
            assert!(unrepresentable_headers_omitted() >= before + omitted, "{version}");
        }
    }

    #[test]
    fn connected_headers_with_line_breaks_are_left_out() {
        let frame = Frame::new(Command::Connected).with_header("version", "1.2").with_header("server", "x\ny:z");
        assert_eq!(text(&encode_to_bytes(&frame, Version::V1_2)), "CONNECTED\nversion:1.2\n\n\0");
    }

    #[test]
    fn template_leaves_unrepresentable_headers_out_of_the_shared_part_once_per_version() {
        let headers: Headers = [("destination", "/topic/t"), ("x", "a\nb")].into_iter().collect();
        let template = MessageTemplate::new(headers, Bytes::from_static(b"hi"));
        let mut dst = BytesMut::new();
        template.write_to(Version::V1_0, &[("subscription", "s\r1"), ("message-id", "7")], &mut dst);
        assert_eq!(text(&dst), "MESSAGE\nmessage-id:7\ndestination:/topic/t\ncontent-length:2\n\nhi\0");
        let first = template.shared_part(Version::V1_0).clone();
        assert_eq!(first.as_ptr(), template.shared_part(Version::V1_0).as_ptr(), "decided once, not per delivery");
        dst.clear();
        template.write_to(Version::V1_2, &[("subscription", "s\r1")], &mut dst);
        assert_eq!(text(&dst), "MESSAGE\nsubscription:s\\r1\ndestination:/topic/t\nx:a\\nb\ncontent-length:2\n\nhi\0");
    }

    #[test]
    fn content_length_digits() {
        for length in [0usize, 7, 10, 12345, usize::MAX] {
            let mut dst = BytesMut::new();
            write_content_length(length, &mut dst);
            assert_eq!(text(&dst), format!("content-length:{length}\n"));
        }
    }

    #[test]
    fn template_puts_per_delivery_headers_first_and_reuses_the_shared_part() {
        let headers: Headers = [("destination", "/topic/t"), ("subscription", "forged")].into_iter().collect();
        let template = MessageTemplate::new(headers, Bytes::from_static(b"hi"));
        let mut dst = BytesMut::new();
        template.write_to(Version::V1_2, &[("subscription", "sub-0"), ("message-id", "m:1")], &mut dst);
        assert_eq!(
            text(&dst),
            "MESSAGE\nsubscription:sub-0\nmessage-id:m\\c1\ndestination:/topic/t\nsubscription:forged\ncontent-length:2\n\nhi\0"
        );
        let first = template.shared_part(Version::V1_2).clone();
        assert_eq!(first.as_ptr(), template.shared_part(Version::V1_2).as_ptr(), "encoded once");
        assert!(template.body_is_utf8());
        assert!(!MessageTemplate::new(Headers::new(), Bytes::from_static(b"\xff")).body_is_utf8());
    }
}
