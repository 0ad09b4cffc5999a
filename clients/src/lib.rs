//! A STOMP 1.0/1.1/1.2 client for tokio: TCP, WebSocket and TLS, for Stampede, RabbitMQ,
//! ActiveMQ or any STOMP broker.
//!
//! ```toml
//! [dependencies]
//! # Without default features the `stampede-cli` tool (and clap) is left out.
//! stampede-client = { version = "0.1", default-features = false }
//! tokio = { version = "1", features = ["full"] }
//! ```
//!
//! # Connect
//!
//! One URL names the broker: `tcp://host:61613` (or just `host:61613`), `ws://host:15674/ws`,
//! and inside TLS `tls://host:61614` (also `stomp+ssl://`) or `wss://host/ws`.
//!
//! ```no_run
//! use stampede_client::{Client, ConnectOptions};
//!
//! # async fn run() -> Result<(), stampede_client::ClientError> {
//! // Defaults: virtual host "/", heart-beats every 10 s, every protocol version offered.
//! let client = Client::connect("tcp://localhost:61613").await?;
//!
//! // Or with options: credentials, a private CA for TLS, reconnecting.
//! let options = ConnectOptions::new("tls://broker.internal:61614")?
//!     .credentials("guest", "guest")
//!     .ca_file("/etc/ssl/private-ca.pem")
//!     .reconnect(Default::default());
//! let secure = Client::connect_with(options).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Publish
//!
//! ```no_run
//! # use stampede_client::{Client, Headers};
//! # async fn run(client: Client) -> Result<(), stampede_client::ClientError> {
//! client.publish("/topic/news", "hello").await?; // queued; returns at once
//!
//! // With headers, and waiting until the broker has it (stored, for a persistent message):
//! let headers: Headers = [("persistent", "true"), ("content-type", "text/plain")].into_iter().collect();
//! client.send_with_receipt("/queue/orders", "order 1", headers).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Subscribe and acknowledge
//!
//! A [`Subscription`] is a stream of [`Message`]s; [`Client::subscribe`] returns once the
//! broker confirmed it, so nothing published afterwards is missed.
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use stampede_client::{AckMode, Client, SubscribeOptions};
//!
//! # async fn run(client: Client) -> Result<(), stampede_client::ClientError> {
//! let options = SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(10);
//! let mut jobs = client.subscribe("/queue/jobs", options).await?;
//! while let Some(job) = jobs.next().await {
//!     println!("{}", job.body_str().unwrap_or("<binary>"));
//!     client.ack(&job).await?; // or client.nack(&job) to hand it back
//! }
//!
//! // Or wait a bounded time for one message:
//! let mut news = client.subscribe("/topic/news", SubscribeOptions::new()).await?;
//! let message = news.recv_timeout(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Request/reply
//!
//! ```no_run
//! use std::time::Duration;
//! use stampede_client::{Client, Headers, SubscribeOptions};
//!
//! # async fn run(client: Client, service: Client) -> Result<(), stampede_client::ClientError> {
//! // The service answers where each request asks (reply-to, correlation-id):
//! let mut requests = service.subscribe("/queue/uppercase", SubscribeOptions::new()).await?;
//! tokio::spawn(async move {
//!     while let Some(request) = requests.recv().await {
//!         let answer = request.body_str().unwrap_or_default().to_uppercase();
//!         let _ = service.reply(&request, answer, Headers::new()).await;
//!     }
//! });
//!
//! // The caller waits for its answer, at most 5 s:
//! let reply = client.request("/queue/uppercase", "hello", Headers::new(), Duration::from_secs(5)).await?;
//! assert_eq!(reply.body_str(), Some("HELLO"));
//! # Ok(())
//! # }
//! ```
//!
//! # When things go wrong
//!
//! Every call returns a [`ClientError`], which prints as a sentence saying what failed and,
//! for the usual mistakes (a `ws://` URL at the STOMP port, a `tcp://` URL at the WebSocket
//! port, a wrong WebSocket path, an untrusted certificate), what to change.
//! [`Client::closed`] says why a connection ended; a broker's ERROR frame is a
//! [`ServerError`]. With [`ConnectOptions::reconnect`] a lost connection is re-established with
//! backoff and every open subscription is made again.
//!
//! Runnable programs are in `clients/examples/`: `pubsub`, `worker` (a queue worker with
//! acknowledgements) and `request_reply`, each taking a broker URL
//! (`cargo run -p stampede-client --example worker -- tcp://127.0.0.1:61613`).
//!
//! # How it works
//!
//! Written for three users at once: applications, the broker's integration tests and load
//! tests. So it is asynchronous (tokio), keeps every buffer bounded, coalesces frames into few
//! writes, and reports failures as typed errors; and it has escape hatches
//! ([`Client::send_frame`], [`Client::take_unrouted`], [`raw::RawConnection`]) for tests that
//! need to do what a well-behaved client would not.
//!
//! - [`Client`] is a cheap cloneable handle; one task per connection owns the socket, reads and
//!   routes MESSAGEs to subscriptions and RECEIPTs to waiters, writes queued frames and keeps
//!   heart-beats, so there is no lock around the socket and frames leave in submission order.
//! - A [`Subscription`]'s buffer is bounded: when it is full the connection stops reading,
//!   which the broker sees as a slow consumer, instead of memory growing.
//! - [`Transaction`]: BEGIN ... COMMIT/ABORT; dropping it aborts.
//! - The codec is `stampede-protocol`, the same one the broker uses; its frame types are
//!   re-exported here so users need only this crate.
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
