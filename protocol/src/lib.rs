//! Sans-IO STOMP 1.0, 1.1 and 1.2 codec.
//!
//! Bytes in, frames out; frames in, bytes out. This crate owns no sockets and no runtime so that
//! the same code serves the broker (over TCP, TLS and WebSocket), the client library, the fuzzers
//! and the benchmarks, and so that every rule of the specification can be tested with plain
//! byte strings.
//!
//! # Layout
//! - [`Command`], [`Headers`], [`Frame`]: the wire model. Header names and values are
//!   [`ByteString`]s that share the decoder's input buffer unless
//!   unescaping forced a copy; bodies are [`Bytes`](bytes::Bytes) slices of the input.
//! - [`Decoder`]: a streaming decoder over a `BytesMut` that may hold a partial frame, one frame
//!   or many; it yields one [`Item`] (a frame or a heart-beat) per call and remembers how far it
//!   has scanned, so bytes are never re-parsed when more data arrives.
//! - [`Limits`]: caller-chosen bounds enforced while the frame is still arriving.
//! - [`encode`] and [`MessageTemplate`]: the encoder, and the fan-out path that encodes a
//!   MESSAGE once and stamps per-subscriber headers onto a shared, reference-counted tail.
//! - [`heartbeat`]: the heart-beat negotiation arithmetic of the specification.
//! - [`Version`]: protocol versions, their escaping rules and version negotiation.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod command;
mod decode;
mod encode;
mod error;
mod escape;
mod frame;
mod headers;
pub mod heartbeat;
mod limits;
mod version;

pub use command::Command;
pub use decode::{Decoder, Item};
pub use encode::{MessageTemplate, encode, encode_to_bytes, unrepresentable_headers_omitted};
pub use error::{DecodeError, LimitKind};
pub use frame::Frame;
pub use headers::{Headers, names};
pub use limits::Limits;
pub use version::Version;

/// Re-exported so that users of the crate name the same string type.
pub use bytestring::ByteString;
