//! One STOMP frame as it appears on the wire.

use bytes::Bytes;
use bytestring::ByteString;

use crate::{Command, Headers};

/// A decoded (or to-be-encoded) frame: command, headers in wire order, and body.
///
/// `content-length` is not kept in [`Frame::headers`] after decoding (the body length says it);
/// the encoder always writes it for frames that carry a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// Headers, unescaped, in wire order, duplicates kept.
    pub headers: Headers,
    /// The body; empty for commands that cannot carry one.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Frame {
        Frame { command, headers: Headers::new(), body: Bytes::new() }
    }

    /// Builder-style: appends a header.
    pub fn with_header(mut self, name: impl Into<ByteString>, value: impl Into<ByteString>) -> Frame {
        self.headers.push(name, value);
        self
    }

    /// Builder-style: sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}
