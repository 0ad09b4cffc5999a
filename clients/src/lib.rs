//! Stampede's STOMP 1.0/1.1/1.2 client, over TCP and WebSocket.
//!
//! Written for three users at once: applications, the broker's integration tests and the load
//! generator. So it is asynchronous (tokio), keeps every buffer bounded, coalesces frames into
//! few writes, and reports failures as typed errors; and it has escape hatches
//! ([`Client::send_frame`], [`Client::take_unrouted`], [`raw::RawConnection`]) for tests that
//! need to do what a well-behaved client would not.
//!
//! # Layout
//! - [`Client`]: a cheap cloneable handle. [`Client::connect`] opens the transport, exchanges
//!   CONNECT/CONNECTED and spawns the connection task.
//! - `connection` (private): the one task per connection that owns the socket. A single
//!   `select!` loop reads and decodes, routes MESSAGEs to subscriptions and RECEIPTs to waiters,
//!   encodes and writes queued frames, and sends and checks heart-beats. Nothing else touches
//!   the socket, so there is no lock around it and frames leave in submission order.
//! - [`Subscription`]: a `Stream` of [`Message`]s with a bounded buffer; a full buffer makes the
//!   connection stop reading, which the broker sees as a slow consumer, instead of growing memory.
//! - [`Transaction`]: BEGIN ... COMMIT/ABORT; dropping it aborts.
//! - [`ConnectOptions`], [`SubscribeOptions`], [`AckMode`], [`Endpoint`]: configuration.
//! - [`ClientError`] for a failed call, [`CloseReason`] for why a connection ended,
//!   [`ServerError`] for an ERROR frame.
//! - [`raw`]: a bare socket plus the decoder, for protocol-level tests with hostile input.
//!
//! The codec is `stampede-protocol`, the same one the broker uses; its frame types are
//! re-exported here so users need only this crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod connection;
mod endpoint;
mod error;
mod message;
mod options;
pub mod raw;
mod tls;
mod transport;

pub use client::{Client, Subscription, Transaction, UnroutedFrames};
pub use endpoint::{DEFAULT_TCP_PORT, DEFAULT_TLS_PORT, DEFAULT_WS_PORT, DEFAULT_WSS_PORT, Endpoint};
pub use error::{ClientError, CloseReason, ServerError};
pub use message::{Message, ack_frame};
pub use options::{AckMode, ConnectOptions, DEFAULT_SUBSCRIPTION_CAPACITY, Reconnect, SubscribeOptions};
pub use tls::TlsOptions;

pub use stampede_protocol::heartbeat::{HeartBeat, Negotiated};
pub use stampede_protocol::{ByteString, Command, Frame, Headers, Limits, Version};
