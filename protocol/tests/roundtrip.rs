//! Property tests: whatever the encoder writes, the decoder reads back unchanged, however the
//! bytes are cut into reads and whatever heart-beats sit between frames; and whatever headers a
//! frame holds, a reader never decodes more of them, changed ones, or another body.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use stampede_protocol::{
    Command, Decoder, Frame, Headers, Item, Limits, MessageTemplate, Version, encode, encode_to_bytes,
};

/// Characters that stress the codec: delimiters, escapes, NUL, multi-byte UTF-8.
fn header_text() -> impl Strategy<Value = String> {
    let chars = prop::sample::select(vec![
        'a', 'b', 'z', 'A', '0', '9', '-', '_', '/', ' ', '.', ':', '\n', '\r', '\\', '\0', 'é', '€', '😀', 'c', 'n',
        'r', 't',
    ]);
    prop::collection::vec(chars, 0..12).prop_map(|chars| chars.into_iter().collect())
}

/// Whether `version` can represent `c` in a header of `command`: NUL never; without escaping
/// (STOMP 1.0, or CONNECT/STOMP/CONNECTED) no EOL octet and no colon in a name; in 1.1 no CR (it
/// has no escape, and a raw CR before the LF would read as CRLF).
fn representable_char(c: char, command: Command, version: Version, is_name: bool) -> bool {
    let escaped = command.uses_escaping() && version != Version::V1_0;
    match c {
        '\0' => false,
        '\n' => escaped,
        '\r' => escaped && version == Version::V1_2,
        ':' => escaped || !is_name,
        _ => true,
    }
}

/// `text` without what `version` cannot represent in `command`'s headers.
fn representable(text: &str, command: Command, version: Version, is_name: bool) -> String {
    text.chars().filter(|&c| representable_char(c, command, version, is_name)).collect()
}

/// Whether the encoder keeps this header for `version` (it leaves out the others whole).
fn keeps(name: &str, value: &str, command: Command, version: Version) -> bool {
    name.chars().all(|c| representable_char(c, command, version, true))
        && value.chars().all(|c| representable_char(c, command, version, false))
}

/// Any frame, headers unfiltered: delimiters, NUL and CR included.
fn any_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(Command::ALL.to_vec()),
        prop::collection::vec((header_text(), header_text()), 0..6),
        prop::collection::vec(prop::sample::select(vec![0u8, b'\n', b'\r', b':', b'a']), 0..24),
    )
        .prop_map(|(command, headers, body)| {
            let headers: Headers = headers.into_iter().collect();
            let body = if command.allows_body() { Bytes::from(body) } else { Bytes::new() };
            Frame { command, headers, body }
        })
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

fn frame_for(version: Version) -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(Command::ALL.to_vec()),
        prop::collection::vec((header_text(), header_text()), 0..6),
        prop::collection::vec(prop::sample::select(vec![0u8, b'\n', b'\r', b'a', 0xff, 0x80]), 0..48),
    )
        .prop_map(move |(command, headers, body)| {
            let headers: Headers = headers
                .iter()
                .map(|(name, value)| {
                    (representable(name, command, version, true), representable(value, command, version, false))
                })
                .filter(|(name, _)| name != "content-length")
                .collect();
            let body = if command.allows_body() { Bytes::from(body) } else { Bytes::new() };
            Frame { command, headers, body }
        })
}

fn versioned_frame() -> impl Strategy<Value = (Version, Frame)> {
    version().prop_flat_map(|version| (Just(version), frame_for(version)))
}

fn decoder(version: Version) -> Decoder {
    let mut decoder = Decoder::new(Limits::default());
    decoder.set_version(version);
    decoder
}

/// Feeds `wire` in pieces ending at `cuts`, draining every item after each piece.
fn decode_in_pieces(wire: &[u8], cuts: &[usize], version: Version) -> Vec<Item> {
    let mut decoder = decoder(version);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut fed = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        let cut = cut.clamp(fed, wire.len());
        buf.extend_from_slice(&wire[fed..cut]);
        fed = cut;
        while let Some(item) = decoder.decode(&mut buf).expect("encoder output must decode") {
            items.push(item);
        }
    }
    assert!(buf.is_empty(), "every byte consumed, {} left", buf.len());
    items
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encoded_frame_decodes_to_itself((version, frame) in versioned_frame()) {
        let wire = encode_to_bytes(&frame, version);
        let items = decode_in_pieces(&wire, &[], version);
        prop_assert_eq!(items, vec![Item::Frame(frame)]);
    }

    #[test]
    fn encoded_frame_decodes_when_split_at_every_byte((version, frame) in versioned_frame()) {
        let wire = encode_to_bytes(&frame, version);
        let expected = vec![Item::Frame(frame)];
        for split in 0..=wire.len() {
            prop_assert_eq!(&decode_in_pieces(&wire, &[split], version), &expected, "split at {}", split);
        }
        let every_byte: Vec<usize> = (0..wire.len()).collect();
        prop_assert_eq!(&decode_in_pieces(&wire, &every_byte, version), &expected);
    }

    #[test]
    fn many_frames_with_heart_beats_decode_in_any_chunks(
        version in version(),
        frames in prop::collection::vec((0usize..3, any::<bool>()), 1..8),
        seed_frames in prop::collection::vec(frame_for(Version::V1_2), 8),
        mut cuts in prop::collection::vec(0usize..2000, 0..20),
    ) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for ((beats, crlf), frame) in frames.iter().zip(seed_frames) {
            // 1.2 frames are re-filtered for the chosen version.
            let frame = Frame {
                headers: frame
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            representable(n, frame.command, version, true),
                            representable(v, frame.command, version, false),
                        )
                    })
                    .collect(),
                ..frame
            };
            for _ in 0..*beats {
                wire.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                expected.push(Item::HeartBeat);
            }
            encode(&frame, version, &mut wire);
            expected.push(Item::Frame(frame));
        }
        wire.extend_from_slice(b"\r\n\n");
        expected.extend([Item::HeartBeat, Item::HeartBeat]);
        cuts.sort_unstable();
        prop_assert_eq!(decode_in_pieces(&wire, &cuts, version), expected);
    }

    /// The rule against forged frames: whatever headers a frame holds, what a reader of the
    /// version decodes is one frame with the same command and body, and the same headers or
    /// fewer (those the version can represent, in order), never another or a changed one.
    #[test]
    fn any_header_set_decodes_to_the_same_or_fewer_headers_and_the_same_body(
        version in version(),
        frame in any_frame(),
    ) {
        let wire = encode_to_bytes(&frame, version);
        let items = decode_in_pieces(&wire, &[], version);
        let [Item::Frame(decoded)] = &items[..] else {
            return Err(TestCaseError::fail(format!("expected one frame, got {items:?}")));
        };
        prop_assert_eq!(decoded.command, frame.command);
        prop_assert_eq!(&decoded.body, &frame.body);
        let kept: Headers = frame
            .headers
            .iter()
            .filter(|(name, value)| *name != "content-length" && keeps(name, value, frame.command, version))
            .collect();
        prop_assert_eq!(&decoded.headers, &kept);
    }

    #[test]
    fn any_template_decodes_to_the_same_or_fewer_headers_and_the_same_body(
        version in version(),
        frame in any_frame(),
        subscription in header_text(),
    ) {
        let template = MessageTemplate::new(frame.headers.clone(), Bytes::from_static(b"body \0 with NUL"));
        let mut wire = BytesMut::new();
        template.write_to(version, &[("subscription", subscription.as_str())], &mut wire);
        let items = decode_in_pieces(&wire, &[], version);
        let [Item::Frame(decoded)] = &items[..] else {
            return Err(TestCaseError::fail(format!("expected one frame, got {items:?}")));
        };
        prop_assert_eq!(&decoded.body[..], &b"body \0 with NUL"[..]);
        let kept: Headers = std::iter::once(("subscription", subscription.as_str()))
            .chain(frame.headers.iter())
            .filter(|(name, value)| *name != "content-length" && keeps(name, value, Command::Message, version))
            .collect();
        prop_assert_eq!(&decoded.headers, &kept);
    }

    #[test]
    fn message_template_output_decodes_to_the_expected_message(
        (version, frame) in versioned_frame(),
        subscription in header_text(),
        message_id in header_text(),
    ) {
        let subscription = representable(&subscription, Command::Message, version, false);
        let message_id = representable(&message_id, Command::Message, version, false);
        let shared: Headers = frame
            .headers
            .iter()
            .map(|(n, v)| {
                (representable(n, Command::Message, version, true), representable(v, Command::Message, version, false))
            })
            .collect();
        let body = Bytes::from(b"shared body \0 with NUL".to_vec());
        let template = MessageTemplate::new(shared.clone(), body.clone());
        let per_delivery = [("subscription", subscription.as_str()), ("message-id", message_id.as_str())];
        let mut wire = BytesMut::new();
        template.write_to(version, &per_delivery, &mut wire);
        template.write_to(version, &per_delivery, &mut wire);

        let mut headers = Headers::new();
        for (name, value) in per_delivery {
            headers.push(name.to_owned(), value.to_owned());
        }
        for (name, value) in shared.iter() {
            headers.push(name.to_owned(), value.to_owned());
        }
        let expected = Item::Frame(Frame { command: Command::Message, headers, body });
        prop_assert_eq!(decode_in_pieces(&wire, &[wire.len() / 3], version), vec![expected.clone(), expected]);
        prop_assert_eq!(template.headers(), &shared);
    }
}

#[test]
fn template_head_plus_shared_part_equals_write_to() {
    let template =
        MessageTemplate::new([("destination", "/topic/a")].into_iter().collect(), Bytes::from_static(b"payload"));
    for version in Version::ALL {
        let mut whole = BytesMut::new();
        template.write_to(version, &[("subscription", "s:1")], &mut whole);
        let mut vectored = BytesMut::new();
        template.write_head(version, &[("subscription", "s:1")], &mut vectored);
        vectored.extend_from_slice(template.shared_part(version));
        assert_eq!(whole, vectored, "{version}");
    }
}
