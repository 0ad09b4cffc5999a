//! The streaming decoder.
//!
//! Frames arrive in arbitrary pieces (a TCP read, a WebSocket message that holds half a frame or
//! three of them), so the decoder works on whatever prefix of the stream the caller has buffered
//! and remembers how far it got. A slow peer trickling a large frame byte by byte therefore costs
//! linear time, not quadratic: each call resumes the search for the next LF in the head, or for
//! the NUL ending the body, where the previous call stopped (the trap `httparse` documents for
//! callers that re-parse from byte 0).
//!
//! The head is handled line by line as each LF is found: `memchr` locates the line, `nom` parses
//! it (command, or header name and value split on the first colon), limits are checked, and the
//! header is remembered as byte ranges of the buffer. Nothing is copied and nothing is taken out
//! of the caller's buffer until the whole frame, NUL included, is there; then the frame is split
//! off and frozen once, and header strings and the body become reference-counted slices of that
//! one allocation. Only headers containing escapes are copied.
//!
//! Every limit is checked against the bytes seen so far, not against the finished frame, so the
//! decoder never asks the caller to buffer more than the limits allow before it says no.

use std::ops::Range;

use bytes::{Buf, BytesMut};
use bytestring::ByteString;

use crate::escape;
use crate::{Command, DecodeError, Frame, Headers, LimitKind, Limits, Version};

/// What one call to [`Decoder::decode`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One EOL seen between frames: a heart-beat.
    HeartBeat,
}

/// Where the decoder is within the frame at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between frames: heart-beat EOLs or the first byte of a command come next.
    Idle,
    /// Reading the command line and header lines, up to the blank line.
    Head,
    /// The head is parsed; waiting for the body and its NUL.
    Body,
}

/// One header line of the frame being decoded, as ranges of the buffer (frame start = 0).
#[derive(Debug, Clone)]
struct RawHeader {
    name: Range<usize>,
    value: Range<usize>,
    /// The name contains escape sequences that must be replaced.
    name_escaped: bool,
    /// The value contains escape sequences that must be replaced.
    value_escaped: bool,
}

/// A streaming STOMP decoder. See the crate documentation.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    version: Version,
    phase: Phase,
    /// Offset of the first byte of the buffer not examined yet (in the head: the next byte to
    /// search for LF; in a NUL-terminated body: the next byte to search for NUL).
    scanned: usize,
    /// Offset where the current head line starts.
    line_start: usize,
    /// The command, once its line is complete.
    command: Option<Command>,
    /// Header lines seen so far in this frame (duplicates and `content-length` included).
    header_count: usize,
    /// Headers of this frame other than `content-length`; reused from frame to frame.
    headers: Vec<RawHeader>,
    /// Whether a `content-length` header has been seen (only the first one counts).
    content_length_seen: bool,
    /// The body length the first `content-length` header announced.
    content_length: Option<usize>,
    /// Offset of the body (just after the blank line).
    body_start: usize,
    /// Whether the head was already checked for UTF-8 while waiting for the body.
    head_validated: bool,
}

impl Decoder {
    /// A decoder that unescapes with STOMP 1.2 rules until told the negotiated version.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            version: Version::V1_2,
            phase: Phase::Idle,
            scanned: 0,
            line_start: 0,
            command: None,
            header_count: 0,
            headers: Vec::new(),
            content_length_seen: false,
            content_length: None,
            body_start: 0,
            head_validated: false,
        }
    }

    /// Sets the escaping rules for frames after CONNECT/CONNECTED.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The version whose escaping rules apply.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Forgets any partly decoded frame, for a caller that discards its buffer. Not needed after
    /// an error, which resets the decoder by itself.
    pub fn reset(&mut self) {
        self.phase = Phase::Idle;
        self.scanned = 0;
        self.line_start = 0;
        self.command = None;
        self.header_count = 0;
        self.headers.clear();
        self.content_length_seen = false;
        self.content_length = None;
        self.body_start = 0;
        self.head_validated = false;
    }

    /// Decodes at most one item from the front of `buf`, removing its bytes.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame; call again with more bytes
    /// appended. Bytes already scanned are not scanned again.
    ///
    /// # Errors
    /// Any [`DecodeError`]; the stream cannot continue after one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        let result = self.step(buf);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        if buf.len() < self.scanned {
            // The caller dropped bytes we had examined: start over rather than index past them.
            self.reset();
        }
        if self.phase == Phase::Idle {
            // "The frame MAY be followed by any number of EOLs": between frames, each EOL is a
            // heart-beat ("an end of line (EOL) ... MUST be regarded as a heart-beat").
            match buf.first() {
                None => return Ok(None),
                Some(b'\n') => {
                    buf.advance(1);
                    return Ok(Some(Item::HeartBeat));
                }
                Some(b'\r') => match buf.get(1) {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(2);
                        return Ok(Some(Item::HeartBeat));
                    }
                    // A CR that does not start a CRLF cannot start a command either.
                    Some(_) => {
                        let end = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
                        return Err(DecodeError::UnknownCommand(escape::readable(&buf[..end])));
                    }
                },
                Some(_) => self.phase = Phase::Head,
            }
        }
        if self.phase == Phase::Head && !self.scan_head(buf)? {
            return Ok(None);
        }
        self.scan_body(buf)
    }

    /// Advances through complete head lines. Returns `Ok(true)` once the blank line ending the
    /// head has been read.
    fn scan_head(&mut self, buf: &BytesMut) -> Result<bool, DecodeError> {
        let limits = self.limits;
        loop {
            let Some(offset) = memchr::memchr(b'\n', &buf[self.scanned..]) else {
                self.scanned = buf.len();
                return self.check_partial_line(buf).map(|()| false);
            };
            let eol = self.scanned + offset;
            self.scanned = eol + 1;
            // "the frame ... lines MAY be terminated by ... a carriage return plus a line feed"
            let end = if eol > self.line_start && buf[eol - 1] == b'\r' { eol - 1 } else { eol };
            let line = self.line_start..end;
            if line.len() > limits.max_header_line {
                return Err(limit(LimitKind::HeaderLine, limits.max_header_line));
            }
            if line.is_empty() {
                if limits.max_header_bytes < self.line_start {
                    return Err(limit(LimitKind::HeaderBytes, limits.max_header_bytes));
                }
                // The command line is never empty (an empty line between frames is a
                // heart-beat), so `command` is set here.
                self.body_start = self.scanned;
                self.phase = Phase::Body;
                return Ok(true);
            }
            if limits.max_header_bytes < self.scanned {
                return Err(limit(LimitKind::HeaderBytes, limits.max_header_bytes));
            }
            match self.command {
                None => self.command = Some(parse_command(&buf[line])?),
                Some(command) => self.header_line(buf, line, command)?,
            }
            self.line_start = self.scanned;
        }
    }

    /// Limits on a head line whose EOL has not arrived: refuse it now rather than buffer more.
    fn check_partial_line(&self, buf: &BytesMut) -> Result<(), DecodeError> {
        let mut end = buf.len();
        if end > self.line_start && buf[end - 1] == b'\r' {
            // Possibly the first half of a CRLF; do not count it yet.
            end -= 1;
        }
        if end - self.line_start > self.limits.max_header_line {
            return Err(limit(LimitKind::HeaderLine, self.limits.max_header_line));
        }
        if end > self.limits.max_header_bytes {
            return Err(limit(LimitKind::HeaderBytes, self.limits.max_header_bytes));
        }
        Ok(())
    }

    fn header_line(&mut self, buf: &BytesMut, line: Range<usize>, command: Command) -> Result<(), DecodeError> {
        self.header_count += 1;
        if self.header_count > self.limits.max_headers {
            return Err(limit(LimitKind::HeaderCount, self.limits.max_headers));
        }
        let bytes = &buf[line.clone()];
        let Some((name, value)) = grammar::header(bytes) else {
            return Err(DecodeError::HeaderWithoutColon {
                line: self.header_count,
                text: escape::readable_header_line(bytes),
            });
        };
        // "The frame is terminated by a NUL octet", and so is it for every reader that looks for
        // the first one: a NUL inside a header would let a forwarded header end the frame early
        // and start a forged one. No escape produces it, so the raw line decides.
        if memchr::memchr(0, bytes).is_some() {
            return Err(DecodeError::NulInHeader { header: escape::readable(name) });
        }
        let name_range = line.start..line.start + name.len();
        let value_range = name_range.end + 1..line.end;

        if name == crate::names::CONTENT_LENGTH.as_bytes() {
            // No escape can produce the letters of `content-length`, so the raw name decides.
            // Repeated headers: "only the first header entry SHOULD be used".
            if !self.content_length_seen {
                self.content_length_seen = true;
                let length = grammar::content_length(value)
                    .ok_or_else(|| DecodeError::InvalidContentLength(escape::readable(value)))?;
                if length > self.limits.max_body {
                    return Err(limit(LimitKind::Body, self.limits.max_body));
                }
                if length > 0 && !command.allows_body() {
                    return Err(DecodeError::UnexpectedBody(command));
                }
                self.content_length = Some(length);
            }
            return Ok(());
        }

        // One search of the whole line for a backslash spares most headers the per-field check.
        let escaped = escape::applies(command.uses_escaping(), self.version) && memchr::memchr(b'\\', bytes).is_some();
        let (name_escaped, value_escaped) = if escaped {
            (escape::validate(name, self.version, name)?, escape::validate(value, self.version, name)?)
        } else {
            (false, false)
        };
        self.headers.push(RawHeader { name: name_range, value: value_range, name_escaped, value_escaped });
        Ok(())
    }

    fn scan_body(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        let command = self.command.ok_or_else(|| DecodeError::UnknownCommand(String::new()))?;
        let body_len = match self.content_length {
            // "If a content-length header is included, this number of octets MUST be read,
            // regardless of whether or not there are NUL octets in the body. The frame still
            // needs to be terminated with a NUL octet."
            Some(length) => {
                let nul_at = self.body_start + length;
                match buf.get(nul_at) {
                    None => return self.wait_for_body(buf),
                    Some(0) => length,
                    Some(_) => {
                        return Err(DecodeError::MissingNul { content_length: length });
                    }
                }
            }
            // "Only the SEND, MESSAGE, and ERROR frames MAY have a body. All other frames MUST
            // NOT have a body." Refuse at the first body octet rather than buffer a body.
            None if !command.allows_body() => match buf.get(self.body_start) {
                None => return self.wait_for_body(buf),
                Some(0) => 0,
                Some(_) => return Err(DecodeError::UnexpectedBody(command)),
            },
            // "The body is then followed by the NULL octet."
            None => {
                let from = self.scanned.max(self.body_start);
                match memchr::memchr(0, &buf[from..]) {
                    Some(offset) => {
                        let length = from + offset - self.body_start;
                        if length > self.limits.max_body {
                            return Err(limit(LimitKind::Body, self.limits.max_body));
                        }
                        length
                    }
                    None => {
                        self.scanned = buf.len();
                        if buf.len() - self.body_start > self.limits.max_body {
                            return Err(limit(LimitKind::Body, self.limits.max_body));
                        }
                        return self.wait_for_body(buf);
                    }
                }
            }
        };
        self.finish(buf, command, body_len).map(Some)
    }

    /// The body is incomplete. Report a non-UTF-8 head now rather than after a large body.
    fn wait_for_body(&mut self, buf: &BytesMut) -> Result<Option<Item>, DecodeError> {
        if !self.head_validated {
            std::str::from_utf8(&buf[..self.body_start]).map_err(|_| DecodeError::InvalidUtf8("headers"))?;
            self.head_validated = true;
        }
        Ok(None)
    }

    /// Splits the complete frame off `buf` and builds it from shared slices.
    fn finish(&mut self, buf: &mut BytesMut, command: Command, body_len: usize) -> Result<Item, DecodeError> {
        let body_start = self.body_start;
        let wire = buf.split_to(body_start + body_len + 1).freeze();
        let head = ByteString::try_from(wire.slice(..body_start)).map_err(|_| DecodeError::InvalidUtf8("headers"))?;
        let mut headers = Headers::with_capacity(self.headers.len());
        for raw in &self.headers {
            headers.push(field(&head, &raw.name, raw.name_escaped), field(&head, &raw.value, raw.value_escaped));
        }
        let body = wire.slice(body_start..body_start + body_len);
        self.reset();
        Ok(Item::Frame(Frame { command, headers, body }))
    }
}

/// A header name or value as a slice of the frame's head, or a copy when it had escapes.
fn field(head: &ByteString, range: &Range<usize>, escaped: bool) -> ByteString {
    // Ranges are cut at ASCII octets (EOL, ':'), hence at character boundaries.
    let text = &head[range.clone()];
    if escaped { ByteString::from(escape::unescape(text)) } else { head.slice_ref(text) }
}

fn limit(kind: LimitKind, limit: usize) -> DecodeError {
    DecodeError::LimitExceeded { kind, limit }
}

fn parse_command(line: &[u8]) -> Result<Command, DecodeError> {
    grammar::command(line).ok_or_else(|| match std::str::from_utf8(line) {
        Ok(text) => DecodeError::UnknownCommand(escape::readable(text.as_bytes())),
        Err(_) => DecodeError::InvalidUtf8("command"),
    })
}

/// The nom grammar of one head line. Lines arrive without their EOL, so every parser works on
/// complete input; `()` errors keep failure cheap, and the caller turns a failure into the
/// [`DecodeError`] that names the problem.
mod grammar {
    use nom::branch::alt;
    use nom::bytes::complete::{tag, take_until};
    use nom::character::complete::digit1;
    use nom::combinator::{all_consuming, rest, value};
    use nom::sequence::separated_pair;
    use nom::{IResult, Parser};

    use crate::Command;

    /// `command = client-command | server-command`, matched case sensitively against the
    /// whole line. CONNECTED is tried before its prefix CONNECT.
    pub(super) fn command(line: &[u8]) -> Option<Command> {
        let parsed: IResult<&[u8], Command, ()> = all_consuming(alt((
            value(Command::Send, tag("SEND")),
            value(Command::Message, tag("MESSAGE")),
            value(Command::Ack, tag("ACK")),
            value(Command::Nack, tag("NACK")),
            value(Command::Subscribe, tag("SUBSCRIBE")),
            value(Command::Unsubscribe, tag("UNSUBSCRIBE")),
            value(Command::Receipt, tag("RECEIPT")),
            value(Command::Begin, tag("BEGIN")),
            value(Command::Commit, tag("COMMIT")),
            value(Command::Abort, tag("ABORT")),
            value(Command::Connected, tag("CONNECTED")),
            value(Command::Connect, tag("CONNECT")),
            value(Command::Stomp, tag("STOMP")),
            value(Command::Disconnect, tag("DISCONNECT")),
            value(Command::Error, tag("ERROR")),
        )))
        .parse(line);
        parsed.ok().map(|(_, command)| command)
    }

    /// `header = header-name ":" header-value`. The name ends at the FIRST colon; the value is
    /// the rest of the line, colons included, untrimmed ("Since header values are not
    /// trimmed, ...").
    pub(super) fn header(line: &[u8]) -> Option<(&[u8], &[u8])> {
        let parsed: IResult<&[u8], (&[u8], &[u8]), ()> = separated_pair(take_until(":"), tag(":"), rest).parse(line);
        parsed.ok().map(|(_, pair)| pair)
    }

    /// A `content-length` value: one or more decimal digits, nothing else (no sign, no
    /// spaces), that fits in `usize`.
    pub(super) fn content_length(value: &[u8]) -> Option<usize> {
        let parsed: IResult<&[u8], &[u8], ()> = all_consuming(digit1).parse(value);
        let (_, digits) = parsed.ok()?;
        digits.iter().try_fold(0usize, |total, digit| total.checked_mul(10)?.checked_add(usize::from(digit - b'0')))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Decodes every item of `input`, fed whole.
    fn decode_all_with(input: &[u8], version: Version, limits: Limits) -> Result<Vec<Item>, DecodeError> {
        let mut decoder = Decoder::new(limits);
        decoder.set_version(version);
        let mut buf = BytesMut::from(input);
        let mut items = Vec::new();
        while let Some(item) = decoder.decode(&mut buf)? {
            items.push(item);
        }
        assert!(buf.len() < input.len() + 1);
        Ok(items)
    }

    fn decode_all(input: &[u8]) -> Result<Vec<Item>, DecodeError> {
        decode_all_with(input, Version::V1_2, Limits::default())
    }

    /// Decodes exactly one frame from `input`, also split at every byte boundary and fed one
    /// byte at a time, and checks all three ways agree.
    fn one_frame_v(input: &[u8], version: Version) -> Frame {
        let whole = decode_all_with(input, version, Limits::default()).expect("valid frame");
        let [Item::Frame(frame)] = &whole[..] else { panic!("expected one frame, got {whole:?}") };
        for split in 0..=input.len() {
            let mut decoder = Decoder::new(Limits::default());
            decoder.set_version(version);
            let mut buf = BytesMut::from(&input[..split]);
            let mut items = Vec::new();
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                items.push(item);
            }
            buf.extend_from_slice(&input[split..]);
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                items.push(item);
            }
            assert_eq!(items, whole, "split at {split}");
        }
        let mut decoder = Decoder::new(Limits::default());
        decoder.set_version(version);
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for &byte in input {
            buf.extend_from_slice(&[byte]);
            while let Some(item) = decoder.decode(&mut buf).unwrap() {
                items.push(item);
            }
        }
        assert_eq!(items, whole, "byte at a time");
        frame.clone()
    }

    fn one_frame(input: &[u8]) -> Frame {
        one_frame_v(input, Version::V1_2)
    }

    fn error(input: &[u8]) -> DecodeError {
        decode_all(input).expect_err("invalid input")
    }

    fn headers(frame: &Frame) -> Vec<(&str, &str)> {
        frame.headers.iter().collect()
    }

    #[test]
    fn all_fifteen_commands_decode() {
        for command in Command::ALL {
            let input = format!("{command}\n\n\0");
            assert_eq!(one_frame(input.as_bytes()).command, command);
        }
    }

    #[test]
    fn commands_are_case_sensitive() {
        assert_eq!(error(b"send\n\n\0"), DecodeError::UnknownCommand("send".into()));
        assert_eq!(error(b"SEND \n\n\0"), DecodeError::UnknownCommand("SEND ".into()));
        assert_eq!(error(b"CONNECTEDX\n\n\0"), DecodeError::UnknownCommand("CONNECTEDX".into()));
    }

    #[test]
    fn unknown_command_is_an_error() {
        let err = error(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(err, DecodeError::UnknownCommand("GET / HTTP/1.1".into()));
        assert!(err.to_string().contains("expected one of CONNECT"));
    }

    #[test]
    fn lf_line_endings() {
        let frame = one_frame(b"SEND\ndestination:/queue/a\n\nbody\0");
        assert_eq!(frame.command, Command::Send);
        assert_eq!(headers(&frame), vec![("destination", "/queue/a")]);
        assert_eq!(&frame.body[..], b"body");
    }

    #[test]
    fn crlf_line_endings() {
        let frame = one_frame(b"SEND\r\ndestination:/queue/a\r\nx:y\r\n\r\nbody\0");
        assert_eq!(headers(&frame), vec![("destination", "/queue/a"), ("x", "y")]);
        assert_eq!(&frame.body[..], b"body");
    }

    #[test]
    fn content_length_body_may_contain_nul() {
        let frame = one_frame(b"SEND\ncontent-length:5\n\na\0b\0c\0");
        assert_eq!(&frame.body[..], b"a\0b\0c");
    }

    #[test]
    fn content_length_body_must_be_followed_by_nul() {
        assert_eq!(error(b"SEND\ncontent-length:2\n\nabc\0"), DecodeError::MissingNul { content_length: 2 });
    }

    #[test]
    fn content_length_is_not_kept_in_headers() {
        let frame = one_frame(b"MESSAGE\na:1\ncontent-length:3\nb:2\ncontent-length:99\n\nxyz\0");
        assert_eq!(headers(&frame), vec![("a", "1"), ("b", "2")]);
        assert_eq!(&frame.body[..], b"xyz");
    }

    #[test]
    fn body_without_content_length_ends_at_first_nul() {
        let items = decode_all(b"SEND\n\nhello\0SEND\n\nworld\0").unwrap();
        let bodies: Vec<_> = items
            .iter()
            .map(|item| match item {
                Item::Frame(frame) => frame.body.clone(),
                Item::HeartBeat => panic!("no heart-beat here"),
            })
            .collect();
        assert_eq!(bodies, vec![Bytes::from_static(b"hello"), Bytes::from_static(b"world")]);
    }

    #[test]
    fn eols_between_frames_are_heart_beats() {
        let items = decode_all(b"\n\r\n\nSEND\n\n\0\n\r\n").unwrap();
        assert_eq!(items.len(), 6);
        assert_eq!(items.iter().filter(|i| **i == Item::HeartBeat).count(), 5);
        assert!(matches!(items[3], Item::Frame(_)));
        // A CR alone waits for its LF.
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"\r"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Item::HeartBeat)));
        assert!(buf.is_empty());
    }

    #[test]
    fn lone_carriage_return_at_frame_start_is_an_error() {
        assert_eq!(error(b"\rSEND\n\n\0"), DecodeError::UnknownCommand("\rSEND".into()));
    }

    #[test]
    fn header_without_colon_is_an_error() {
        assert_eq!(
            error(b"SEND\na:1\nno colon here\n\n\0"),
            DecodeError::HeaderWithoutColon { line: 2, text: "no colon here".into() }
        );
    }

    #[test]
    fn header_splits_on_first_colon_only() {
        let frame = one_frame_v(b"SEND\nurl:http://x:80/a\n\n\0", Version::V1_0);
        assert_eq!(headers(&frame), vec![("url", "http://x:80/a")]);
        let frame = one_frame(b"CONNECT\npasscode:a:b\\c\n\n\0");
        assert_eq!(headers(&frame), vec![("passcode", "a:b\\c")]);
        let frame = one_frame(b"SEND\n:empty name\nempty value:\n\n\0");
        assert_eq!(headers(&frame), vec![("", "empty name"), ("empty value", "")]);
    }

    #[test]
    fn repeated_headers_first_wins() {
        let frame = one_frame(b"SEND\nfoo:1\nfoo:2\n\n\0");
        assert_eq!(frame.header("foo"), Some("1"));
        assert_eq!(frame.headers.len(), 2);
    }

    #[test]
    fn nul_in_a_header_is_an_error_naming_the_header() {
        let err = error(b"SEND\ndestination:/topic/a\nx-evil:a\0MESSAGE\n\n\0");
        assert_eq!(err, DecodeError::NulInHeader { header: "x-evil".into() });
        assert!(err.to_string().contains("\"x-evil\""), "{err}");
        // In a name, in any version, and before the frame is complete.
        let err = decode_all_with(b"SEND\nx\0y:1\n\n\0", Version::V1_0, Limits::default()).unwrap_err();
        assert_eq!(err, DecodeError::NulInHeader { header: "x\0y".into() });
        assert!(!err.to_string().contains('\0'), "the message quotes the NUL as an escape: {err}");
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"SEND\nx:\0\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(DecodeError::NulInHeader { header: "x".into() }));
    }

    #[test]
    fn names_and_values_are_not_trimmed() {
        let frame = one_frame(b"SEND\n name : value \n\n\0");
        assert_eq!(headers(&frame), vec![(" name ", " value ")]);
    }

    #[test]
    fn version_1_0_does_not_unescape() {
        let frame = one_frame_v(b"SEND\na\\nb:c\\t\\\n\n\0", Version::V1_0);
        assert_eq!(headers(&frame), vec![("a\\nb", "c\\t\\")]);
    }

    #[test]
    fn version_1_1_unescapes_newline_colon_backslash() {
        let frame = one_frame_v(b"SEND\na\\cb:x\\ny\\\\z\\c\n\n\0", Version::V1_1);
        assert_eq!(headers(&frame), vec![("a:b", "x\ny\\z:")]);
        let err = decode_all_with(b"SEND\na:\\r\n\n\0", Version::V1_1, Limits::default()).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidEscape { ref sequence, version: Version::V1_1, .. } if sequence == "\\r")
        );
    }

    #[test]
    fn version_1_2_also_unescapes_carriage_return() {
        let frame = one_frame(b"SEND\na:x\\ry\n\n\0");
        assert_eq!(headers(&frame), vec![("a", "x\ry")]);
    }

    #[test]
    fn undefined_escape_is_an_error() {
        let err = error(b"SEND\nname:a\\tb\n\n\0");
        assert_eq!(
            err,
            DecodeError::InvalidEscape {
                sequence: "\\t".into(),
                header: "name".into(),
                version: Version::V1_2,
                allowed: r"\r, \n, \c and \\",
            }
        );
        assert!(err.to_string().contains("allows only"));
    }

    #[test]
    fn trailing_backslash_is_an_error() {
        let err = error(b"SEND\nname:ab\\\n\n\0");
        assert!(matches!(err, DecodeError::InvalidEscape { ref sequence, .. } if sequence == "\\"));
    }

    #[test]
    fn connect_stomp_and_connected_are_never_unescaped() {
        for command in ["CONNECT", "STOMP", "CONNECTED"] {
            let input = format!("{command}\nlogin:a\\tb\\c\n\n\0");
            let frame = one_frame(input.as_bytes());
            assert_eq!(headers(&frame), vec![("login", "a\\tb\\c")], "{command}");
        }
    }

    #[test]
    fn invalid_content_length_is_an_error() {
        for bad in ["abc", "-1", "+1", " 1", "1 ", "", "1.0", "99999999999999999999999999"] {
            let input = format!("SEND\ncontent-length:{bad}\n\n\0");
            assert_eq!(error(input.as_bytes()), DecodeError::InvalidContentLength(bad.into()), "{bad:?}");
        }
    }

    #[test]
    fn body_on_a_frame_that_must_not_have_one_is_an_error() {
        assert_eq!(error(b"SUBSCRIBE\nid:1\n\nbody\0"), DecodeError::UnexpectedBody(Command::Subscribe));
        assert_eq!(error(b"ACK\ncontent-length:1\n\nx\0"), DecodeError::UnexpectedBody(Command::Ack));
        // Reported at the first body octet, before any NUL arrives.
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"BEGIN\n\nx"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(DecodeError::UnexpectedBody(Command::Begin)));
        // An explicit zero length is fine.
        assert_eq!(one_frame(b"ACK\ncontent-length:0\nid:1\n\n\0").header("id"), Some("1"));
    }

    #[test]
    fn non_utf8_command_or_headers_is_an_error() {
        assert_eq!(error(b"SEN\xff\n\n\0"), DecodeError::InvalidUtf8("command"));
        assert_eq!(error(b"SEND\na:\xff\n\n\0"), DecodeError::InvalidUtf8("headers"));
        // Reported before the body arrives.
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"SEND\na:\xc3\n\nbody without end"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(DecodeError::InvalidUtf8("headers")));
        // Binary bodies are fine.
        assert_eq!(&one_frame(b"SEND\n\n\xff\xfe\0").body[..], b"\xff\xfe");
    }

    fn small() -> Limits {
        Limits { max_header_line: 16, max_headers: 2, max_header_bytes: 40, max_body: 8 }
    }

    /// Feeds `input` one byte at a time; returns the error and how many bytes had been fed.
    fn trickle_error(input: &[u8], limits: Limits) -> (DecodeError, usize) {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::new();
        for (index, &byte) in input.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(err) => return (err, index + 1),
                }
            }
        }
        panic!("no error for {input:?}");
    }

    #[test]
    fn header_line_limit_is_enforced_before_the_eol() {
        let limits = small();
        let (err, fed) = trickle_error(b"SEND\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", limits);
        assert_eq!(err, DecodeError::LimitExceeded { kind: LimitKind::HeaderLine, limit: 16 });
        assert_eq!(fed, 5 + 17);
        // Exactly at the limit, with CRLF, is fine.
        let ok = b"SEND\r\naaaaaaaaaaaaaaa:\r\n\r\n\0";
        assert_eq!(decode_all_with(ok, Version::V1_2, limits).unwrap().len(), 1);
        // The command line counts as a header line.
        let (err, _) = trickle_error(b"SENDSENDSENDSENDSEND\n", limits);
        assert_eq!(err, DecodeError::LimitExceeded { kind: LimitKind::HeaderLine, limit: 16 });
        assert!(err.to_string().contains("header line length limit of 16"), "{err}");
    }

    #[test]
    fn header_count_limit_is_enforced() {
        let (err, _) = trickle_error(b"SEND\na:1\nb:2\nc:3\n\n\0", small());
        assert_eq!(err, DecodeError::LimitExceeded { kind: LimitKind::HeaderCount, limit: 2 });
    }

    #[test]
    fn header_bytes_limit_is_enforced_before_the_blank_line() {
        let limits = Limits { max_headers: 100, ..small() };
        let (err, fed) = trickle_error(b"SEND\naaaaa:1\nbbbbb:2\nccccc:3\nddddd:4\neeeee:5\n\n\0", limits);
        assert_eq!(err, DecodeError::LimitExceeded { kind: LimitKind::HeaderBytes, limit: 40 });
        assert_eq!(fed, 41);
    }

    #[test]
    fn content_length_above_max_body_is_refused_with_the_head() {
        let (err, fed) = trickle_error(b"SEND\ncontent-length:9\n\n", small());
        assert_eq!(err, DecodeError::LimitExceeded { kind: LimitKind::Body, limit: 8 });
        assert_eq!(fed, 22, "at the EOL of the content-length line");
    }

    #[test]
    fn nul_terminated_body_over_max_body_is_refused_while_arriving() {
        let (err, fed) = trickle_error(b"SEND\n\n0123456789abcdef\0", small());
        assert_eq!(err, DecodeError::LimitExceeded { kind: LimitKind::Body, limit: 8 });
        assert_eq!(fed, 6 + 9);
        // Exactly max_body is fine.
        assert_eq!(decode_all_with(b"SEND\n\n01234567\0", Version::V1_2, small()).unwrap().len(), 1);
    }

    #[test]
    fn resumes_scanning_where_it_stopped() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"SEND\ndestination:/q"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!((decoder.line_start, decoder.scanned), (5, buf.len()));
        buf.extend_from_slice(b"\n\n");
        buf.extend_from_slice(&[b'x'; 1000]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(decoder.phase, Phase::Body);
        assert_eq!(decoder.scanned, buf.len(), "the body was searched once");
        buf.extend_from_slice(b"\0");
        let Ok(Some(Item::Frame(frame))) = decoder.decode(&mut buf) else { panic!() };
        assert_eq!(frame.body.len(), 1000);
        assert!(buf.is_empty());
    }

    #[test]
    fn body_and_headers_share_the_input_buffer() {
        let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\ncontent-length:4\n\nbody\0SEND"[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let Ok(Some(Item::Frame(frame))) = Decoder::new(Limits::default()).decode(&mut buf) else { panic!() };
        assert!(range.contains(&(frame.body.as_ptr() as usize)));
        let value = frame.headers.get("destination").unwrap();
        assert!(range.contains(&(value.as_ptr() as usize)));
        assert_eq!(&buf[..], b"SEND", "exactly one frame consumed");
    }

    #[test]
    fn decoder_starts_afresh_after_an_error() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"SEND\nbad\n\n\0"[..]);
        assert!(decoder.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"SEND\n\n\0"[..]);
        assert!(matches!(decoder.decode(&mut buf), Ok(Some(Item::Frame(_)))));
    }
}
