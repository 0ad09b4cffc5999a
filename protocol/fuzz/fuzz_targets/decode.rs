//! Feeds arbitrary bytes, cut into arbitrary chunks, to the decoder under small limits.
//!
//! Input layout: byte 0 picks the version (low 2 bits) and the largest chunk (the rest); byte 1
//! seeds the chunk sizes; the remaining bytes are the stream. Checks: no panic; while a frame is
//! incomplete the caller never has to buffer more than the limits allow; every frame obeys the
//! limits and never shows `content-length`; and a decoded frame that 1.2 escaping can represent
//! survives encode then decode unchanged.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stampede_protocol::{Decoder, Item, Limits, Version, encode_to_bytes};

const LIMITS: Limits = Limits { max_header_line: 64, max_headers: 8, max_header_bytes: 256, max_body: 512 };
/// Most bytes a partial frame may occupy: the head, a CRLF blank line, and a body short of its NUL.
const MAX_BUFFERED: usize = LIMITS.max_header_bytes + 2 + LIMITS.max_body + 1;

fuzz_target!(|data: &[u8]| {
    let [config, seed, stream @ ..] = data else { return };
    let version = Version::ALL[usize::from(config & 3) % 3];
    let max_chunk = usize::from(config >> 2) + 1;
    let mut state = u32::from(*seed) | 0x100;

    let mut decoder = Decoder::new(LIMITS);
    decoder.set_version(version);
    let mut buf = BytesMut::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let take = (state as usize % max_chunk + 1).min(rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(None) => {
                    assert!(buf.len() <= MAX_BUFFERED, "waiting with {} bytes buffered", buf.len());
                    break;
                }
                Ok(Some(Item::HeartBeat)) => assert!(before - buf.len() <= 2),
                Ok(Some(Item::Frame(frame))) => {
                    assert!(before - buf.len() <= MAX_BUFFERED + 1, "frame of {} bytes", before - buf.len());
                    assert!(frame.body.len() <= LIMITS.max_body);
                    assert!(frame.headers.len() <= LIMITS.max_headers);
                    assert!(!frame.headers.contains("content-length"));
                    if version == Version::V1_2 && frame.command.uses_escaping() {
                        let wire = encode_to_bytes(&frame, version);
                        let mut again = Decoder::new(Limits::default());
                        let mut wire_buf = BytesMut::from(&wire[..]);
                        assert_eq!(again.decode(&mut wire_buf), Ok(Some(Item::Frame(frame))));
                        assert!(wire_buf.is_empty());
                    }
                }
                Err(err) => {
                    // Every error has text to show the peer.
                    assert!(!err.to_string().is_empty());
                    return;
                }
            }
        }
    }
});
