//! The user-facing handles: [`Client`], [`Subscription`], [`Transaction`], [`UnroutedFrames`].
//!
//! A `Client` is an `Arc` and a channel sender: cloning it is cheap and every clone talks to the
//! same connection task (see [`crate::connection`]). Calls never touch the socket; they queue a
//! frame (waiting for room when the connection is busy, which is the client's backpressure) and,
//! when they need an answer, wait on a one-shot channel for the RECEIPT. Nothing here holds a
//! lock across an `.await`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use stampede_protocol::heartbeat::{HeartBeat, Negotiated, negotiate};
use stampede_protocol::{Command, Decoder, Frame, Headers, Item, Version, encode, names};
use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::{Connection, Effect, Request};
use crate::message::ack_frame;
use crate::options::{AckMode, ConnectOptions, DEFAULT_SUBSCRIPTION_CAPACITY, SubscribeOptions};
use crate::transport;
use crate::{ClientError, CloseReason, Message, ServerError};

/// State shared by every handle of one connection (and read by its task).
pub(crate) struct Shared {
    version: Version,
    connected: Frame,
    heart_beat: Negotiated,
    receipt_timeout: Duration,
    ids: IdGenerator,
    closed: watch::Receiver<Option<CloseReason>>,
    /// The receiving end of unrouted frames, until someone takes it. A `std` mutex: it is only
    /// held to `take()` the option, never across an `.await`.
    unrouted: Mutex<Option<mpsc::Receiver<Frame>>>,
    unrouted_taken: AtomicBool,
    /// Successful reconnections so far.
    reconnects: AtomicU64,
    /// The reply queue of [`Client::request`], set up by the first request.
    replies: tokio::sync::OnceCell<Arc<Replies>>,
}

impl Shared {
    pub(crate) fn unrouted_taken(&self) -> bool {
        self.unrouted_taken.load(Ordering::Acquire)
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Per-connection id counters: `sub-0, sub-1, ...` (what @stomp/stompjs uses, so broker logs
/// read the same), `rcpt-0, ...` and `tx-0, ...`.
#[derive(Debug, Default)]
pub(crate) struct IdGenerator {
    subscription: AtomicU64,
    receipt: AtomicU64,
    transaction: AtomicU64,
}

impl IdGenerator {
    pub(crate) fn subscription(&self) -> ByteString {
        Self::next(&self.subscription, "sub")
    }

    pub(crate) fn receipt(&self) -> ByteString {
        Self::next(&self.receipt, "rcpt")
    }

    pub(crate) fn transaction(&self) -> ByteString {
        Self::next(&self.transaction, "tx")
    }

    fn next(counter: &AtomicU64, prefix: &str) -> ByteString {
        format!("{prefix}-{}", counter.fetch_add(1, Ordering::Relaxed)).into()
    }
}

/// A connection to a STOMP server: a cheap, cloneable handle.
///
/// The connection lives while any handle (a `Client` clone, a [`Subscription`] or a
/// [`Transaction`]) does; when the last one is dropped the connection sends DISCONNECT and
/// closes. Call [`Client::disconnect`] to close gracefully and know the server saw everything.
///
/// # Examples
///
/// Publish, subscribe and acknowledge:
///
/// ```no_run
/// use futures_util::StreamExt;
/// use stampede_client::{AckMode, Client, ConnectOptions, Headers, SubscribeOptions};
///
/// # async fn run() -> Result<(), stampede_client::ClientError> {
/// let options = ConnectOptions::new("tcp://localhost:61613")?.credentials("guest", "guest");
/// let client = Client::connect_with(options).await?;
///
/// // Returns once the broker has confirmed the subscription with a RECEIPT.
/// let mut orders = client
///     .subscribe("/queue/orders", SubscribeOptions::new().ack(AckMode::ClientIndividual))
///     .await?;
///
/// client.send_with_receipt("/queue/orders", "order 1", Headers::new()).await?;
///
/// if let Some(message) = orders.next().await {
///     println!("{}", String::from_utf8_lossy(&message.body));
///     client.ack(&message).await?;
/// }
/// client.disconnect().await?;
/// # Ok(())
/// # }
/// ```
///
/// A transaction:
///
/// ```no_run
/// # use stampede_client::{Client, Headers};
/// # async fn run(client: Client) -> Result<(), stampede_client::ClientError> {
/// let tx = client.begin().await?;
/// tx.send("/queue/a", "one", Headers::new()).await?;
/// tx.send("/queue/a", "two", Headers::new()).await?;
/// tx.commit().await?; // both or neither
/// # Ok(())
/// # }
/// ```
///
/// Seeing why a connection ended:
///
/// ```no_run
/// # use stampede_client::Client;
/// # async fn run(client: Client) {
/// let reason = client.closed().await;
/// if let Some(error) = reason.server_error() {
///     eprintln!("the broker said: {}", error.message);
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("version", &self.shared.version)
            .field("session", &self.session())
            .field("heart_beat", &self.shared.heart_beat)
            .field("closed", &self.close_reason())
            .finish()
    }
}

impl Client {
    /// Connects to `url` (see [`Endpoint::parse`](crate::Endpoint::parse)) with default options.
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(ConnectOptions::new(url)?).await
    }

    /// Connects, sends CONNECT and waits for CONNECTED, all within
    /// [`ConnectOptions::connect_timeout`].
    ///
    /// # Errors
    /// [`ClientError::ServerError`] with the ERROR frame's message if the server refuses (bad
    /// credentials, no common version, ...); [`ClientError::Timeout`]; [`ClientError::Io`] or
    /// [`ClientError::WebSocket`] when the transport fails; [`ClientError::Handshake`] when the
    /// server answers with something other than CONNECTED.
    pub async fn connect_with(options: ConnectOptions) -> Result<Client, ClientError> {
        let limit = options.connect_timeout;
        match tokio::time::timeout(limit, establish(&options)).await {
            Ok(result) => result,
            Err(_) => {
                Err(ClientError::Timeout { waiting_for: format!("CONNECTED from {}", options.endpoint), after: limit })
            }
        }
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Version {
        self.shared.version
    }

    /// The CONNECTED frame, for any header not exposed otherwise (of the first connection, when
    /// the client has reconnected since).
    pub fn connected_frame(&self) -> &Frame {
        &self.shared.connected
    }

    /// The `session` header of the first CONNECTED.
    pub fn session(&self) -> Option<&str> {
        self.shared.connected.header(names::SESSION)
    }

    /// The `server` header of CONNECTED.
    pub fn server(&self) -> Option<&str> {
        self.shared.connected.header(names::SERVER)
    }

    /// The negotiated heart-beat intervals, seen from this client.
    pub fn heart_beat(&self) -> Negotiated {
        self.shared.heart_beat
    }

    /// Publishes `body` to `destination`, without waiting for the server.
    ///
    /// `headers` are added after `destination` (which they cannot override). Returns once the
    /// frame is queued; it waits only while the connection's outgoing queue is full.
    ///
    /// # Errors
    /// [`ClientError::Closed`] (or [`ClientError::ServerError`]) when the connection has ended.
    pub async fn send(&self, destination: &str, body: impl Into<Bytes>, headers: Headers) -> Result<(), ClientError> {
        let frame = send_frame(destination, body.into(), &headers, None);
        self.submit(frame, Effect::None).await
    }

    /// Publishes `body` to `destination` with no extra headers: [`Client::send`] in one call.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn publish(&self, destination: &str, body: impl Into<Bytes>) -> Result<(), ClientError> {
        self.send(destination, body, Headers::new()).await
    }

    /// Sends a request and waits up to `timeout` for its reply.
    ///
    /// The request carries `reply-to: /temp-queue/stampede-replies` and a fresh
    /// `correlation-id`; the broker rewrites `reply-to` to a queue only this connection reads
    /// (RabbitMQ and Stampede do), and the replier answers there with the same
    /// `correlation-id` (see [`Client::reply`]). The first request subscribes to that queue;
    /// later ones share it.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when no reply came in time; as [`Client::send_with_receipt`]
    /// when the reply queue cannot be subscribed; [`ClientError::Closed`] when the connection
    /// ends first.
    pub async fn request(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        headers: Headers,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        let replies = self.shared.replies.get_or_try_init(|| self.open_replies()).await?.clone();
        let correlation_id = format!("req-{}", replies.next.fetch_add(1, Ordering::Relaxed));
        let (waiter, reply) = oneshot::channel();
        replies.waiting().insert(correlation_id.clone(), waiter);
        // Forgets the waiter however this call ends (timeout, error, or the caller giving up).
        let _forget = ForgetWaiter { replies: &replies, correlation_id: &correlation_id };
        let mut all = Headers::with_capacity(headers.len() + 2);
        all.push(names::REPLY_TO, REPLY_QUEUE);
        all.push(CORRELATION_ID, correlation_id.as_str());
        extend(&mut all, &headers);
        self.send(destination, body, all).await?;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                waiting_for: format!("a reply to the request {correlation_id} sent to {destination}"),
                after: timeout,
            }),
        }
    }

    /// Answers a request received from [`Client::request`] (or from any client that sets
    /// `reply-to`): sends `body` to its `reply-to` with its `correlation-id`.
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] when `request` has no `reply-to` header; as
    /// [`Client::send`].
    pub async fn reply(&self, request: &Message, body: impl Into<Bytes>, headers: Headers) -> Result<(), ClientError> {
        let reply_to = request.header(names::REPLY_TO).ok_or_else(|| {
            ClientError::InvalidRequest(format!(
                "the message {} from {} has no reply-to header, so there is nowhere to reply",
                request.message_id, request.destination
            ))
        })?;
        let mut all = Headers::with_capacity(headers.len() + 1);
        if let Some(correlation_id) = request.header(CORRELATION_ID) {
            all.push(CORRELATION_ID, correlation_id);
        }
        extend(&mut all, &headers);
        self.send(reply_to, body, all).await
    }

    /// Subscribes to the reply queue and starts the task that hands each reply to its waiter.
    async fn open_replies(&self) -> Result<Arc<Replies>, ClientError> {
        // The id is the one the broker would give the queue itself (RabbitMQ style), so the
        // broker never attaches a second consumer to it.
        let id = ByteString::from_static(REPLY_QUEUE);
        let frame = Frame::new(Command::Subscribe)
            .with_header(names::DESTINATION, id.clone())
            .with_header(names::ID, id.clone())
            .with_header(names::ACK, AckMode::Auto.as_str());
        let (sender, mut messages) = mpsc::channel(DEFAULT_SUBSCRIPTION_CAPACITY);
        self.request_with_receipt(frame, Effect::Subscribe { id: id.clone(), destination: id, sender }).await?;
        let replies = Arc::new(Replies::default());
        let dispatch = replies.clone();
        // Holds no Client handle, so it does not keep the connection open; it ends with it.
        tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                let waiter = message.header(CORRELATION_ID).and_then(|id| dispatch.waiting().remove(id));
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(message);
                    }
                    None => tracing::debug!("dropping a reply nobody waits for (late, or no correlation-id)"),
                }
            }
            // The connection has ended: fail the waiting requests now rather than at their
            // timeouts.
            dispatch.waiting().clear();
        });
        Ok(replies)
    }

    /// How many times the connection was re-established (see [`ConnectOptions::reconnect`]).
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Publishes and waits for the server's RECEIPT, which tells that the broker accepted the
    /// message (for a persistent message: that it is stored).
    ///
    /// # Errors
    /// As [`Client::send`], plus [`ClientError::Timeout`] after
    /// [`ConnectOptions::receipt_timeout`].
    pub async fn send_with_receipt(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<Frame, ClientError> {
        let frame = send_frame(destination, body.into(), &headers, None);
        self.request_with_receipt(frame, Effect::None).await
    }

    /// Subscribes and waits for the RECEIPT, so that on return the broker has registered the
    /// subscription: a message sent after this returns will be delivered to it.
    ///
    /// # Errors
    /// As [`Client::send_with_receipt`]; a refused subscription is a
    /// [`ClientError::ServerError`].
    pub async fn subscribe(&self, destination: &str, options: SubscribeOptions) -> Result<Subscription, ClientError> {
        self.subscribe_inner(destination, options, true).await
    }

    /// Subscribes without asking for a receipt: returns once SUBSCRIBE is queued.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn subscribe_no_wait(
        &self,
        destination: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_inner(destination, options, false).await
    }

    async fn subscribe_inner(
        &self,
        destination: &str,
        options: SubscribeOptions,
        wait: bool,
    ) -> Result<Subscription, ClientError> {
        let id: ByteString = match options.id {
            Some(id) => id.into(),
            None => self.shared.ids.subscription(),
        };
        let destination = ByteString::from(destination);
        let mut frame = Frame::new(Command::Subscribe)
            .with_header(names::DESTINATION, destination.clone())
            .with_header(names::ID, id.clone())
            .with_header(names::ACK, options.ack.as_str());
        extend(&mut frame.headers, &options.headers);
        let (sender, messages) = mpsc::channel(options.capacity.max(1));
        let effect = Effect::Subscribe { id: id.clone(), destination: destination.clone(), sender };
        // Built before waiting so that its Drop unsubscribes if the wait fails (a timeout).
        let subscription =
            Subscription { id, destination, ack: options.ack, messages, client: self.clone(), active: true };
        if wait {
            self.request_with_receipt(frame, effect).await?;
        } else {
            self.submit(frame, effect).await?;
        }
        Ok(subscription)
    }

    /// Acknowledges `message` in the form the negotiated version requires (1.2: `id` = the
    /// `ack` header; 1.1 and 1.0: `subscription` + `message-id`).
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] when there is nothing to acknowledge (1.2 message without
    /// `ack` header, i.e. an auto-ack subscription); [`ClientError::Closed`].
    pub async fn ack(&self, message: &Message) -> Result<(), ClientError> {
        let frame = ack_frame(Command::Ack, message, self.version(), None)?;
        self.submit(frame, Effect::None).await
    }

    /// [`Client::ack`] and wait for the RECEIPT, so the broker has processed the ACK.
    ///
    /// # Errors
    /// As [`Client::ack`], plus [`ClientError::Timeout`].
    pub async fn ack_with_receipt(&self, message: &Message) -> Result<Frame, ClientError> {
        let frame = ack_frame(Command::Ack, message, self.version(), None)?;
        self.request_with_receipt(frame, Effect::None).await
    }

    /// Tells the server `message` was not consumed (STOMP 1.1+).
    ///
    /// # Errors
    /// As [`Client::ack`]; also [`ClientError::InvalidRequest`] on STOMP 1.0, which has no NACK.
    pub async fn nack(&self, message: &Message) -> Result<(), ClientError> {
        let frame = ack_frame(Command::Nack, message, self.version(), None)?;
        self.submit(frame, Effect::None).await
    }

    /// Sends an ACK with exactly `headers`: for testing how a server handles other forms.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn ack_with_headers(&self, headers: Headers) -> Result<(), ClientError> {
        self.submit(Frame { command: Command::Ack, headers, body: Bytes::new() }, Effect::None).await
    }

    /// Sends a NACK with exactly `headers`.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn nack_with_headers(&self, headers: Headers) -> Result<(), ClientError> {
        self.submit(Frame { command: Command::Nack, headers, body: Bytes::new() }, Effect::None).await
    }

    /// Starts a transaction (BEGIN with a generated `transaction` id, `tx-0`, `tx-1`, ...).
    ///
    /// Dropping the [`Transaction`] without committing aborts it.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn begin(&self) -> Result<Transaction, ClientError> {
        let id = self.shared.ids.transaction();
        let frame = Frame::new(Command::Begin).with_header(names::TRANSACTION, id.clone());
        self.submit(frame, Effect::None).await?;
        Ok(Transaction { id, client: self.clone(), finished: false })
    }

    /// Sends `frame` as it is: the escape hatch for tests of odd behaviour. A RECEIPT it asks
    /// for, and any MESSAGE for a subscription made this way, arrive through
    /// [`Client::take_unrouted`].
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn send_frame(&self, frame: Frame) -> Result<(), ClientError> {
        self.submit(frame, Effect::None).await
    }

    /// Sends `frame` and waits for its RECEIPT. Uses the frame's own `receipt` header when it
    /// has one, or adds a generated one.
    ///
    /// # Errors
    /// As [`Client::send_with_receipt`].
    pub async fn send_frame_with_receipt(&self, frame: Frame) -> Result<Frame, ClientError> {
        self.request_with_receipt(frame, Effect::None).await
    }

    /// Takes the stream of frames that no subscription or waiting call claimed: RECEIPTs for
    /// raw frames, MESSAGEs for subscriptions made with [`Client::send_frame`], a copy of the
    /// ERROR frame, anything unexpected. Only the first call returns it.
    ///
    /// Until it is taken such frames are kept up to
    /// [`ConnectOptions::unrouted_capacity`] and then dropped; once taken, a full channel makes
    /// the connection stop reading until the taker catches up, so none is lost.
    pub fn take_unrouted(&self) -> Option<UnroutedFrames> {
        let mut slot = self.shared.unrouted.lock().unwrap_or_else(|e| e.into_inner());
        let frames = slot.take()?;
        self.shared.unrouted_taken.store(true, Ordering::Release);
        Some(UnroutedFrames { frames })
    }

    /// Sends DISCONNECT with a receipt, waits for it, and waits for the connection to close.
    /// Every frame sent before it has then been processed by the server. Calling it on a
    /// connection that already ended gracefully is fine.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if the receipt does not come; the connection's error if it had
    /// already failed.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        if let Some(reason) = self.close_reason() {
            return if reason.is_graceful() { Ok(()) } else { Err(ClientError::from_close(&reason)) };
        }
        match self.request_with_receipt(Frame::new(Command::Disconnect), Effect::Disconnect).await {
            Ok(_) => {
                let _ = tokio::time::timeout(self.shared.receipt_timeout, self.closed()).await;
                Ok(())
            }
            Err(ClientError::Closed(reason)) if reason.is_graceful() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until the connection has ended and says why. After a server ERROR this is
    /// [`CloseReason::ServerError`].
    pub async fn closed(&self) -> CloseReason {
        let mut closed = self.shared.closed.clone();
        let reason = match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The task ended without recording a reason: it can only have panicked.
            Err(_) => None,
        };
        reason.unwrap_or(CloseReason::Dropped)
    }

    /// Why the connection ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.closed.borrow().clone()
    }

    /// The server's ERROR, if the connection ended with one.
    pub fn last_error(&self) -> Option<ServerError> {
        self.close_reason().and_then(|reason| reason.server_error().cloned())
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    async fn submit(&self, frame: Frame, effect: Effect) -> Result<(), ClientError> {
        let request = Request { frame, receipt: None, effect };
        self.requests.send(request).await.map_err(|_| self.closed_error())
    }

    fn try_submit(&self, frame: Frame, effect: Effect) {
        // Best effort, for Drop: if the queue is full or closed the task cleans up by itself.
        let _ = self.requests.try_send(Request { frame, receipt: None, effect });
    }

    async fn request_with_receipt(&self, mut frame: Frame, effect: Effect) -> Result<Frame, ClientError> {
        let id = match frame.headers.get_shared(names::RECEIPT) {
            Some(id) => id.clone(),
            None => {
                let id = self.shared.ids.receipt();
                frame.headers.push(names::RECEIPT, id.clone());
                id
            }
        };
        let (reply, answer) = oneshot::channel();
        let request = Request { frame, receipt: Some((id.clone(), reply)), effect };
        self.requests.send(request).await.map_err(|_| self.closed_error())?;
        let limit = self.shared.receipt_timeout;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout { waiting_for: format!("RECEIPT {id}"), after: limit }),
        }
    }

    fn closed_error(&self) -> ClientError {
        ClientError::from_close(&self.close_reason().unwrap_or(CloseReason::Dropped))
    }
}

/// Where [`Client::request`] asks for replies.
const REPLY_QUEUE: &str = "/temp-queue/stampede-replies";

/// The header that pairs a reply with its request (the name RabbitMQ, ActiveMQ and JMS use).
const CORRELATION_ID: &str = "correlation-id";

/// Requests waiting for their reply, by `correlation-id`.
#[derive(Default)]
pub(crate) struct Replies {
    waiting: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    next: AtomicU64,
}

impl Replies {
    /// The waiters. A `std` mutex: held only to insert or remove, never across an `.await`.
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ForgetWaiter<'a> {
    replies: &'a Replies,
    correlation_id: &'a str,
}

impl Drop for ForgetWaiter<'_> {
    fn drop(&mut self) {
        self.replies.waiting().remove(self.correlation_id);
    }
}

fn extend(headers: &mut Headers, extra: &Headers) {
    for (name, value) in extra.iter_shared() {
        headers.push(name.clone(), value.clone());
    }
}

fn send_frame(destination: &str, body: Bytes, headers: &Headers, transaction: Option<&str>) -> Frame {
    let mut all = Headers::with_capacity(headers.len() + 2);
    all.push(names::DESTINATION, destination);
    if let Some(transaction) = transaction {
        all.push(names::TRANSACTION, transaction);
    }
    extend(&mut all, headers);
    Frame { command: Command::Send, headers: all, body }
}

/// What a successful CONNECT/CONNECTED exchange leaves: the transport, and what was agreed.
pub(crate) struct Handshake {
    pub reader: transport::Reader,
    pub writer: transport::Writer,
    pub decoder: Decoder,
    /// Bytes read after CONNECTED, not yet decoded.
    pub read_buf: BytesMut,
    pub connected: Frame,
    pub version: Version,
    pub heart_beat: Negotiated,
    /// `heart_beat.expect_every` times the grace factor.
    pub silence_limit: Option<Duration>,
}

/// Connects the transport and performs the CONNECT/CONNECTED exchange (no time limit: the
/// callers apply [`ConnectOptions::connect_timeout`]).
pub(crate) async fn handshake(options: &ConnectOptions) -> Result<Handshake, ClientError> {
    let (mut reader, mut writer, subprotocol) =
        transport::open(&options.endpoint, &options.limits, &options.tls).await?;
    let mut out = BytesMut::new();
    // CONNECT is never escaped, so the version passed here does not matter.
    encode(&options.connect_frame(), Version::V1_2, &mut out);
    writer.write_all(&mut out).await?;

    let mut decoder = Decoder::new(options.limits);
    let mut read_buf = BytesMut::new();
    let connected = loop {
        if read_buf.starts_with(b"HTTP/") {
            let line_end = read_buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(read_buf.len());
            let status_line = String::from_utf8_lossy(&read_buf[..line_end.min(200)]).into_owned();
            return Err(ClientError::HttpNotStomp { address: options.endpoint.authority(), status_line });
        }
        match decoder.decode(&mut read_buf)? {
            Some(Item::Frame(frame)) => break frame,
            Some(Item::HeartBeat) => {}
            None => {
                if reader.read(&mut read_buf).await? == 0 {
                    // A STOMP server refuses with an ERROR frame; hanging up without a word is
                    // what an HTTP server does with a request it cannot parse.
                    if read_buf.is_empty() && !options.endpoint.is_websocket() {
                        return Err(ClientError::NoAnswer { address: options.endpoint.authority() });
                    }
                    return Err(ClientError::Closed(CloseReason::ServerClosed));
                }
            }
        }
    };
    match connected.command {
        Command::Connected => {}
        Command::Error => return Err(ServerError::from_frame(&connected).into()),
        other => {
            return Err(ClientError::Handshake(format!("expected CONNECTED, the server sent {other}")));
        }
    }
    let version = match connected.header(names::VERSION) {
        Some(v) => Version::parse(v)
            .ok_or_else(|| ClientError::Handshake(format!("CONNECTED names an unknown version {v:?}")))?,
        // "If the version header is missing, it means that the server only supports 1.0", but a
        // WebSocket subprotocol, when one was chosen, is the better witness.
        None => subprotocol.unwrap_or(Version::V1_0),
    };
    decoder.set_version(version);
    let server_beat = match connected.header(names::HEART_BEAT) {
        Some(value) => HeartBeat::parse(value)
            .ok_or_else(|| ClientError::Handshake(format!("CONNECTED has a malformed heart-beat {value:?}")))?,
        None => HeartBeat::default(),
    };
    let heart_beat = negotiate(options.heart_beat, server_beat);
    let grace = if options.heart_beat_grace.is_finite() && options.heart_beat_grace >= 1.0 {
        options.heart_beat_grace
    } else {
        1.0
    };
    let silence_limit = heart_beat.expect_every.map(|every| every.mul_f64(grace));
    Ok(Handshake { reader, writer, decoder, read_buf, connected, version, heart_beat, silence_limit })
}

/// Performs the handshake and starts the connection task.
async fn establish(options: &ConnectOptions) -> Result<Client, ClientError> {
    let handshake = handshake(options).await?;
    let (requests_tx, requests_rx) = mpsc::channel(options.outgoing_capacity.max(1));
    let (unrouted_tx, unrouted_rx) = mpsc::channel(options.unrouted_capacity.max(1));
    let (closed_tx, closed_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        version: handshake.version,
        connected: handshake.connected,
        heart_beat: handshake.heart_beat,
        receipt_timeout: options.receipt_timeout,
        ids: IdGenerator::default(),
        closed: closed_rx,
        unrouted: Mutex::new(Some(unrouted_rx)),
        unrouted_taken: AtomicBool::new(false),
        reconnects: AtomicU64::new(0),
        replies: tokio::sync::OnceCell::new(),
    });
    let connection = Connection {
        reader: handshake.reader,
        writer: handshake.writer,
        decoder: handshake.decoder,
        version: handshake.version,
        read_buf: handshake.read_buf,
        requests: requests_rx,
        unrouted: unrouted_tx,
        shared: shared.clone(),
        heart_beat: handshake.heart_beat,
        silence_limit: handshake.silence_limit,
        closed: closed_tx,
        reconnect: options.reconnect.clone().map(|plan| (options.clone(), plan)),
    };
    tokio::spawn(connection.run());
    Ok(Client { requests: requests_tx, shared })
}

/// Messages of one subscription, as a [`Stream`]. Ends when the connection ends (after the
/// messages already received).
///
/// Dropping it unsubscribes (best effort); [`Subscription::unsubscribe`] does so and waits for
/// the broker to confirm.
///
/// Keep consuming it: when its buffer ([`SubscribeOptions::capacity`]) is full the connection
/// stops reading from the socket until there is room, which pauses every subscription and
/// receipt of that connection (heart-beats keep flowing). That is what makes a slow consumer
/// slow the broker down instead of exhausting memory; give a consumer that must not hold up
/// others its own connection.
#[derive(Debug)]
pub struct Subscription {
    id: ByteString,
    destination: ByteString,
    ack: AckMode,
    messages: mpsc::Receiver<Message>,
    client: Client,
    active: bool,
}

impl Subscription {
    /// The subscription id (`sub-N` unless chosen).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The destination subscribed to.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The ack mode.
    pub fn ack_mode(&self) -> AckMode {
        self.ack
    }

    /// The client this subscription belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The next message; `None` once the connection has ended and every buffered message was
    /// taken. Cancel safe.
    pub async fn recv(&mut self) -> Option<Message> {
        self.messages.recv().await
    }

    /// The next message within `timeout`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when none arrived in time (handy to assert that nothing comes);
    /// [`ClientError::Closed`] or [`ClientError::ServerError`] when the connection has ended.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        match tokio::time::timeout(timeout, self.messages.recv()).await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(self.client.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                waiting_for: format!("a MESSAGE on {} ({})", self.destination, self.id),
                after: timeout,
            }),
        }
    }

    /// A message already received, if any.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.messages.try_recv().ok()
    }

    /// Sends UNSUBSCRIBE and waits for the RECEIPT: afterwards no more messages are delivered
    /// (messages already buffered are dropped with the subscription).
    ///
    /// # Errors
    /// As [`Client::send_with_receipt`].
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.active = false;
        let effect = Effect::Unsubscribe { id: self.id.clone() };
        self.client.request_with_receipt(unsubscribe_frame(&self.id), effect).await.map(drop)
    }
}

fn unsubscribe_frame(id: &ByteString) -> Frame {
    Frame::new(Command::Unsubscribe).with_header(names::ID, id.clone())
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.messages.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active && !self.client.is_closed() {
            let effect = Effect::Unsubscribe { id: self.id.clone() };
            self.client.try_submit(unsubscribe_frame(&self.id), effect);
        }
    }
}

/// An open transaction. SEND, ACK and NACK made through it are applied at
/// [`Transaction::commit`], or discarded by [`Transaction::abort`] or by dropping it.
#[derive(Debug)]
pub struct Transaction {
    id: ByteString,
    client: Client,
    finished: bool,
}

impl Transaction {
    /// The `transaction` id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Publishes inside the transaction.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn send(&self, destination: &str, body: impl Into<Bytes>, headers: Headers) -> Result<(), ClientError> {
        let frame = send_frame(destination, body.into(), &headers, Some(&self.id));
        self.client.submit(frame, Effect::None).await
    }

    /// Acknowledges inside the transaction.
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn ack(&self, message: &Message) -> Result<(), ClientError> {
        let frame = ack_frame(Command::Ack, message, self.client.version(), Some(&self.id))?;
        self.client.submit(frame, Effect::None).await
    }

    /// NACKs inside the transaction.
    ///
    /// # Errors
    /// As [`Client::nack`].
    pub async fn nack(&self, message: &Message) -> Result<(), ClientError> {
        let frame = ack_frame(Command::Nack, message, self.client.version(), Some(&self.id))?;
        self.client.submit(frame, Effect::None).await
    }

    /// COMMIT, waiting for the RECEIPT.
    ///
    /// # Errors
    /// As [`Client::send_with_receipt`].
    pub async fn commit(mut self) -> Result<(), ClientError> {
        self.finish(Command::Commit).await
    }

    /// ABORT, waiting for the RECEIPT.
    ///
    /// # Errors
    /// As [`Client::send_with_receipt`].
    pub async fn abort(mut self) -> Result<(), ClientError> {
        self.finish(Command::Abort).await
    }

    async fn finish(&mut self, command: Command) -> Result<(), ClientError> {
        self.finished = true;
        let frame = Frame::new(command).with_header(names::TRANSACTION, self.id.clone());
        self.client.request_with_receipt(frame, Effect::None).await.map(drop)
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.finished && !self.client.is_closed() {
            let frame = Frame::new(Command::Abort).with_header(names::TRANSACTION, self.id.clone());
            self.client.try_submit(frame, Effect::None);
        }
    }
}

/// Frames no subscription or waiting call claimed; see [`Client::take_unrouted`].
#[derive(Debug)]
pub struct UnroutedFrames {
    frames: mpsc::Receiver<Frame>,
}

impl UnroutedFrames {
    /// The next frame; `None` once the connection has ended and every frame was taken.
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.frames.recv().await
    }

    /// The next frame within `timeout`: `Ok(None)` when the connection has ended.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when no frame arrived in time.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Frame>, ClientError> {
        tokio::time::timeout(timeout, self.frames.recv())
            .await
            .map_err(|_| ClientError::Timeout { waiting_for: "an unrouted frame".to_owned(), after: timeout })
    }
}

impl Stream for UnroutedFrames {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.frames.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_per_kind_from_zero() {
        let ids = IdGenerator::default();
        assert_eq!(ids.subscription(), "sub-0");
        assert_eq!(ids.subscription(), "sub-1");
        assert_eq!(ids.receipt(), "rcpt-0");
        assert_eq!(ids.transaction(), "tx-0");
        assert_eq!(ids.subscription(), "sub-2");
    }

    #[test]
    fn send_frame_puts_destination_and_transaction_first() {
        let headers: Headers = [("destination", "/evil"), ("persistent", "true")].into_iter().collect();
        let frame = send_frame("/queue/a", Bytes::from_static(b"x"), &headers, Some("tx-1"));
        assert_eq!(frame.header("destination"), Some("/queue/a"));
        assert_eq!(frame.header("transaction"), Some("tx-1"));
        assert_eq!(frame.header("persistent"), Some("true"));
        assert_eq!(frame.body, Bytes::from_static(b"x"));
    }
}
