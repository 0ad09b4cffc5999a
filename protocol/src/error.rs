//! Decoder errors: each one a distinct variant whose text a user can act on.

use std::fmt;

/// Which limit of [`Limits`](crate::Limits) a frame broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// [`Limits::max_header_line`](crate::Limits::max_header_line).
    HeaderLine,
    /// [`Limits::max_headers`](crate::Limits::max_headers).
    HeaderCount,
    /// [`Limits::max_header_bytes`](crate::Limits::max_header_bytes).
    HeaderBytes,
    /// [`Limits::max_body`](crate::Limits::max_body).
    Body,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitKind::HeaderLine => "header line length",
            LimitKind::HeaderCount => "header count",
            LimitKind::HeaderBytes => "total header bytes",
            LimitKind::Body => "body size",
        })
    }
}

/// Why a byte stream is not valid STOMP. After any of these the stream cannot be resynchronised:
/// the broker answers with an ERROR frame naming the problem and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The command line is not one of the fifteen STOMP commands (they are case sensitive).
    #[error(
        "unknown command {0:?}: expected one of CONNECT, STOMP, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT, DISCONNECT, CONNECTED, MESSAGE, RECEIPT, ERROR"
    )]
    UnknownCommand(String),
    /// A header line has no `:` separating name from value.
    #[error("header line {line} has no ':' between name and value: {text:?}")]
    HeaderWithoutColon {
        /// 1-based header line number (the command is line 0).
        line: usize,
        /// The offending line, lossily decoded and cut to a readable length.
        text: String,
    },
    /// A backslash escape other than those the version defines.
    #[error("invalid escape sequence {sequence:?} in header {header:?}: STOMP {version} allows only {allowed}")]
    InvalidEscape {
        /// The two characters of the bad sequence (or just `\` at the end of a value).
        sequence: String,
        /// The header name (or value's header name) where it was found.
        header: String,
        /// The version whose rules applied.
        version: crate::Version,
        /// The escapes that version allows, for the message.
        allowed: &'static str,
    },
    /// A header name or value contains a NUL octet, which would end the frame for any reader
    /// that looks for the first NUL.
    #[error("header {header:?} contains a NUL octet, which no STOMP header may carry")]
    NulInHeader {
        /// The header's name (its raw text, cut to a readable length).
        header: String,
    },
    /// `content-length` is not a non-negative decimal integer.
    #[error("invalid content-length {0:?}: expected a non-negative decimal number of octets")]
    InvalidContentLength(String),
    /// The octet after a `content-length` body is not NUL.
    #[error("the {content_length} octets announced by content-length are not followed by a NUL octet")]
    MissingNul {
        /// The announced body length.
        content_length: usize,
    },
    /// Command or header bytes are not UTF-8.
    #[error("the {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A frame exceeded one of the caller's limits.
    #[error("frame exceeds the {kind} limit of {limit}")]
    LimitExceeded {
        /// Which limit.
        kind: LimitKind,
        /// Its configured value.
        limit: usize,
    },
    /// A frame that must not have a body has one.
    #[error("{0} frames must not have a body")]
    UnexpectedBody(crate::Command),
}
