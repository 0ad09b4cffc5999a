//! Stampede, a STOMP message broker for browsers and backends.
//!
//! # Layout
//! - [`server`]: listeners and the broker's lifetime ([`server::start`]).
//! - [`connection`]: one task per connection: socket, decoder, heart-beats, outbox.
//! - [`session`]: the STOMP state machine of one client, free of socket code.
//! - [`vhost`]: virtual hosts, each a separate namespace with its own [`router`].
//! - [`router`]: destination names to topics and queues, within one virtual host.
//! - [`topic`] and [`queue`]: the two kinds of destination; a queue is an actor.
//! - [`outbox`]: the bounded buffer between destinations and a connection.
//! - `public_http`: plain HTTP on the WebSocket port (426, 404), before the upgrade.
//! - [`error`]: the one mapping from failures to ERROR frames.
//! - [`config`]: defaults, TOML file, environment and flags; [`values`]: sizes, addresses,
//!   booleans and log levels as people write them.
//! - [`auth`]: users, tokens, permissions; [`tls`]: rustls acceptors; [`security`]: destination
//!   patterns, redaction of secrets in traces, per-address connection counts.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod connection;
pub mod error;
pub mod outbox;
mod public_http;
pub mod queue;
pub mod router;
pub mod security;
pub mod server;
pub mod session;
pub mod tls;
pub mod topic;
pub mod values;
pub mod vhost;

pub use config::{Cli, Config};
pub use server::{RunningBroker, start};
