//! Header escaping per version.
//!
//! Escaping exists so that a header value can carry the octets that otherwise delimit it: the
//! colon between name and value and the EOL that ends the line. STOMP 1.0 had no escapes, so a
//! 1.0 peer receives backslashes literally; 1.1 added `\n`, `\c` and `\\`; 1.2 added `\r` because
//! it also allowed CRLF line ends. CONNECT, STOMP and CONNECTED are never escaped
//! ([`Command::uses_escaping`](crate::Command::uses_escaping)), whatever the version.
//!
//! Some text has no encoding at all in some versions (a line feed for a 1.0 reader, a carriage
//! return for a 1.1 reader, NUL for anyone): [`write_escaped`] says so instead of writing it raw,
//! and the encoder leaves that header out.
//!
//! Decoding is split in two so that a bad escape is reported while the head is parsed, before the
//! body has arrived: [`validate`] runs on every header as its line completes and only says
//! whether [`unescape`] will be needed; [`unescape`] runs once the frame is complete and cannot
//! fail. Most headers contain no backslash, so most headers are never copied.

use bytes::{BufMut, BytesMut};

use crate::{DecodeError, Version};

/// Whether headers of a frame are escaped on the wire, given its command and the version.
pub(crate) fn applies(uses_escaping: bool, version: Version) -> bool {
    uses_escaping && version != Version::V1_0
}

/// The escapes `version` allows, as the text of an [`DecodeError::InvalidEscape`].
fn allowed(version: Version) -> &'static str {
    match version {
        Version::V1_0 => "no escape sequences",
        Version::V1_1 => r"\n, \c and \\",
        Version::V1_2 => r"\r, \n, \c and \\",
    }
}

/// Checks every backslash sequence of a raw (still escaped) header name or value.
///
/// Returns `Ok(true)` when `raw` contains escapes, so [`unescape`] must run on it.
///
/// "Undefined escape sequences such as `\t` (octet 92 and 116) MUST be treated as a fatal
/// protocol error."
pub(crate) fn validate(raw: &[u8], version: Version, header: &[u8]) -> Result<bool, DecodeError> {
    let mut from = 0;
    let mut found = false;
    while let Some(offset) = memchr::memchr(b'\\', &raw[from..]) {
        let at = from + offset;
        match raw.get(at + 1) {
            Some(b'n' | b'c' | b'\\') => {}
            Some(b'r') if version >= Version::V1_2 => {}
            next => {
                let mut sequence = String::from("\\");
                if let Some(&byte) = next {
                    // The byte may start a multi-byte character; show it readably either way.
                    sequence.push_str(&String::from_utf8_lossy(&[byte]));
                }
                return Err(DecodeError::InvalidEscape {
                    sequence,
                    header: readable(header),
                    version,
                    allowed: allowed(version),
                });
            }
        }
        found = true;
        from = at + 2;
    }
    Ok(found)
}

/// Replaces the escape sequences of `raw`, which [`validate`] has accepted.
pub(crate) fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            // `\\`, and (never reached after `validate`) anything else kept as it was.
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// What the encoder does with one header octet under an escaping version.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as it is.
    Plain,
    /// Replaced by its escape sequence.
    Escape,
    /// Cannot be written: the header is left out.
    Unrepresentable,
}

/// How 1.1 (`[0]`) and 1.2 (`[1]`) treat each octet, as lookup tables: this test runs on every
/// header octet the encoder writes. NUL is never representable (every parser ends the frame
/// there); CR only from 1.2 on, which added `\r`.
const CLASSES: [[Class; 256]; 2] = {
    let mut tables = [[Class::Plain; 256]; 2];
    let mut version = 0;
    while version < 2 {
        tables[version][b'\n' as usize] = Class::Escape;
        tables[version][b':' as usize] = Class::Escape;
        tables[version][b'\\' as usize] = Class::Escape;
        tables[version][0] = Class::Unrepresentable;
        version += 1;
    }
    tables[0][b'\r' as usize] = Class::Unrepresentable;
    tables[1][b'\r' as usize] = Class::Escape;
    tables
};

fn class_table(version: Version) -> &'static [Class; 256] {
    if version >= Version::V1_2 { &CLASSES[1] } else { &CLASSES[0] }
}

/// Appends `text` (a header name when `is_name`, else a value) to `dst`, escaped under
/// `version` when `escaping` holds. Text with nothing to escape is copied in one piece.
///
/// Returns false when `text` cannot be represented, having possibly written part of it (the
/// caller cuts `dst` back): NUL anywhere; without escaping (STOMP 1.0, CONNECT, CONNECTED) LF,
/// CR, and in a name a colon; in 1.1 CR, which has no escape there and which a reader of CRLF
/// line ends would drop.
///
/// "The CONNECT and CONNECTED frames do not escape the carriage return, line feed or colon
/// octets in order to remain backward compatible with STOMP 1.0."
pub(crate) fn write_escaped(text: &str, version: Version, escaping: bool, is_name: bool, dst: &mut BytesMut) -> bool {
    let bytes = text.as_bytes();
    if !applies(escaping, version) {
        let breaks_line = memchr::memchr3(b'\n', b'\r', 0, bytes).is_some();
        if breaks_line || (is_name && memchr::memchr(b':', bytes).is_some()) {
            return false;
        }
        dst.put_slice(bytes);
        return true;
    }
    let classes = class_table(version);
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        match classes[usize::from(byte)] {
            Class::Plain => continue,
            Class::Unrepresentable => return false,
            Class::Escape => {}
        }
        dst.put_slice(&bytes[start..index]);
        dst.put_slice(match byte {
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b':' => b"\\c",
            _ => b"\\\\",
        });
        start = index + 1;
    }
    dst.put_slice(&bytes[start..]);
    true
}

/// Lossy, length-capped text of raw bytes for error messages.
pub(crate) fn readable(raw: &[u8]) -> String {
    const MAX: usize = 80;
    let cut = &raw[..raw.len().min(MAX)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if raw.len() > MAX {
        text.push('…');
    }
    text
}

/// Like [`readable`], for a header line that is being quoted in an error: a line that looks
/// like a credential (`passcode`, `authorization`, `cookie`, whatever the case) is not quoted,
/// because error texts reach clients and logs.
pub(crate) fn readable_header_line(raw: &[u8]) -> String {
    let lowered = raw.iter().take(16).map(u8::to_ascii_lowercase).collect::<Vec<u8>>();
    let secret = [&b"passcode"[..], b"authorization", b"cookie"].iter().any(|name| lowered.starts_with(name));
    if secret { "<redacted credential line>".to_owned() } else { readable(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_credential_lines_are_not_quoted_in_errors() {
        assert_eq!(readable_header_line(b"passcode s3cret"), "<redacted credential line>");
        assert_eq!(readable_header_line(b"Authorization Bearer x"), "<redacted credential line>");
        assert_eq!(readable_header_line(b"no colon here"), "no colon here");
    }

    fn escaped(text: &str, version: Version) -> String {
        let mut dst = BytesMut::new();
        assert!(write_escaped(text, version, true, false, &mut dst), "{text:?} is representable in {version}");
        String::from_utf8(dst.to_vec()).unwrap()
    }

    fn representable(text: &str, version: Version, escaping: bool, is_name: bool) -> bool {
        write_escaped(text, version, escaping, is_name, &mut BytesMut::new())
    }

    #[test]
    fn version_1_0_escapes_nothing() {
        assert_eq!(escaped("a:b\\c", Version::V1_0), "a:b\\c");
        assert_eq!(
            validate(b"\\t", Version::V1_0, b"h"),
            Err(DecodeError::InvalidEscape {
                sequence: "\\t".into(),
                header: "h".into(),
                version: Version::V1_0,
                allowed: "no escape sequences",
            })
        );
    }

    #[test]
    fn version_1_1_escapes_newline_colon_backslash_but_not_carriage_return() {
        assert_eq!(escaped("a\nb:c\\d", Version::V1_1), "a\\nb\\cc\\\\d");
        assert_eq!(validate(b"\\n\\c\\\\", Version::V1_1, b"h"), Ok(true));
        assert!(validate(b"\\r", Version::V1_1, b"h").is_err());
    }

    #[test]
    fn version_1_2_adds_carriage_return() {
        assert_eq!(escaped("a\rb", Version::V1_2), "a\\rb");
        assert_eq!(validate(b"\\r", Version::V1_2, b"h"), Ok(true));
        assert_eq!(unescape("x\\r\\n\\c\\\\y"), "x\r\n:\\y");
    }

    #[test]
    fn trailing_backslash_is_invalid() {
        let err = validate(b"abc\\", Version::V1_2, b"name").unwrap_err();
        assert!(matches!(err, DecodeError::InvalidEscape { ref sequence, .. } if sequence == "\\"));
    }

    #[test]
    fn text_without_escapes_needs_no_unescape() {
        assert_eq!(validate(b"plain value", Version::V1_2, b"h"), Ok(false));
    }

    #[test]
    fn connect_style_headers_are_written_raw() {
        let mut dst = BytesMut::new();
        assert!(write_escaped("pass:w\\rd", Version::V1_2, false, false, &mut dst));
        assert_eq!(&dst[..], b"pass:w\\rd");
    }

    #[test]
    fn nul_is_representable_in_no_version() {
        for version in Version::ALL {
            for escaping in [true, false] {
                for is_name in [true, false] {
                    assert!(!representable("a\0b", version, escaping, is_name), "{version} {escaping} {is_name}");
                }
            }
        }
    }

    #[test]
    fn without_escaping_line_breaks_and_a_colon_in_a_name_are_unrepresentable() {
        for version in Version::ALL {
            assert!(!representable("a\nb", version, false, false));
            assert!(!representable("a\rb", version, false, false));
            assert!(!representable("a:b", version, false, true));
            assert!(representable("a:b", version, false, false), "a colon in a value is fine");
        }
        assert!(!representable("a\nb", Version::V1_0, true, false), "1.0 never escapes");
        assert!(!representable("a:b", Version::V1_0, true, true));
    }

    #[test]
    fn version_1_1_cannot_represent_a_carriage_return() {
        assert!(!representable("a\rb", Version::V1_1, true, false));
        assert!(!representable("a\rb", Version::V1_1, true, true));
        assert!(representable("a\rb", Version::V1_2, true, false));
    }
}
