//! Stampede, a STOMP message broker for browsers and backends.
//!
//! # Layout
//! The folders follow the path of a message, from the socket inwards:
//! - [`server`]: the composition root: opens storage, recovers, binds the listeners, and owns
//!   the broker's lifetime ([`server::start`], [`RunningBroker`]).
//! - `listener`: what happens between `accept` and a STOMP session: TLS (`listener::tls`),
//!   plain HTTP on the WebSocket port before the upgrade (426, 404; later the fallback and demo).
//! - `connection`: one task per connection: socket, decoder, heart-beats, outbox, close codes.
//! - [`session`]: the STOMP state machine of one client, free of socket code.
//! - [`destination`]: where messages go: virtual hosts ([`destination::vhost`]), each with a
//!   router ([`destination::router`]) of topics ([`destination::topic`]) and queues
//!   ([`destination::queue`], an actor each), and the bounded outbox between destinations and
//!   a connection ([`destination::outbox`]).
//! - [`security`]: users, tokens and permission rules ([`security::auth`]), permission patterns,
//!   redaction of secrets in traces, per-address connection counts.
//! - `error`: the one mapping from failures to ERROR frames.
//! - `disk`: the disk alarm (the free-space watermark) and what a persistent SEND does under it.
//! - [`config`]: defaults, TOML file, environment and flags; [`config::values`]: sizes,
//!   addresses, booleans and log levels as people write them.
//!
//! - [`http`]: the management listener: JSON API, Prometheus metrics, health probes.
//! - [`bridge`]: webhooks (queues delivered to HTTP backends) and STOMP bridges to other
//!   brokers, both consumers inside the broker.
//! - `registry`: the open connections, for the API and the drain.
//! - [`ctl`]: `stampede ctl`, the admin command line over the management API.
//!
//! - [`cluster`]: cluster mode, topics shared between nodes through NATS (`[cluster]`).
//!
//! # Lock order
//! No lock is held across an `.await`. Where locks nest, they are always taken in this order,
//! outermost first, and never the other way round:
//! 1. a router's durable subscriptions (`Router::durables`),
//! 2. a router's name quotas (`Router::creators`), its queue table (`Router::queues`) and its topic
//!    table (`Router::topics`), never two of these at once except `queues` then `creators`,
//! 3. in cluster mode, the cluster's interest table (`Cluster::interest`), taken after the
//!    router's tables are released,
//! 4. one topic's subscribers (`Topic::subscribers`),
//! 5. one connection's outbox (`Outbox::state`).
//!
//! The connection registry (`ConnectionRegistry::entries`) and the authenticator's user table
//! (`Authenticator::table`) are leaves: nothing else is taken while either is held.
//!
//! Modules named without a link (`listener`, `connection`, `error`, `registry`, `disk`) are
//! private: only the crate itself uses them, so the compiler reports what in them has no caller.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod cluster;
pub mod config;
mod connection;
pub mod ctl;
pub mod demo;
pub mod destination;
mod disk;
mod error;
pub mod http;
mod listener;
mod registry;
pub mod security;
pub mod server;
pub mod session;

pub use config::{Cli, Config};
pub use server::{RunningBroker, start};
