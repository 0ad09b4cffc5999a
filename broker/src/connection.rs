//! One task per connection: read, decode, hand frames to the session, write what comes back.
//!
//! The task runs a single `select!` over the socket, the outbox, the heart-beat timers and the
//! shutdown signal. Every arm is cancel safe: reads go into a connection-owned buffer (a read
//! that loses the race has read nothing), the outbox wait stores its notification, and timers
//! are recomputed each turn. Everything one turn produces (replies, deliveries, a heart-beat) is
//! encoded into one buffer and written with one call, so a busy subscriber gets many frames per
//! syscall. Nothing else writes to the socket.
//!
//! WebSocket is only a transport here: each WebSocket message's payload is appended to the same
//! buffer the TCP path uses, so a STOMP frame may span several messages and one message may
//! carry several frames. Outgoing, each STOMP frame is one WebSocket message, text when the
//! frame is valid UTF-8 and binary otherwise, so binary bodies are never mangled.
//!
//! A WebSocket ends with the close handshake whoever starts it: a client's Close frame is echoed
//! (tungstenite queues the echo; it is flushed before the socket is dropped), and the broker's
//! own Close carries a code chosen from the kind of the ERROR it follows ([`close_code`]), so a
//! browser sees 1000 or 1008 rather than 1006. Every deadline the timer serves (read, heart-beat,
//! ping, the token's expiry) is computed with checked arithmetic: a client may ask for intervals
//! of 49 days, and a deadline too far to represent is simply none.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use stampede_protocol::{ByteString, Decoder, Frame, Item, Limits, encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::destination::outbox::{Delivery, Outbox};
use crate::destination::queue::Outcome;
use crate::destination::vhost::VirtualHosts;
use crate::error::{ErrorKind, StompError};
use crate::http::metrics::{DropReason, Metrics, TransportKind};
use crate::registry::{ConnectionEntry, ConnectionRegistry, SessionIdentity};
use crate::session::{AutoAck, Flow, Reply, Session, SessionConfig};

/// Settings every connection task reads.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Frame size limits for the decoder.
    pub frame_limits: Limits,
    /// Time allowed between the socket opening and CONNECT.
    pub connect_timeout: Duration,
    /// Silence tolerated, as a multiple of the agreed client heart-beat interval.
    pub heartbeat_grace: f64,
    /// Bytes of topic messages an outbox may hold before the slow-consumer policy applies.
    pub max_outbox_bytes: usize,
    /// Longest a single socket write may take before the peer is treated as dead.
    pub write_timeout: Duration,
    /// Send a WebSocket ping after this much outbound silence (keeps proxies from cutting idle
    /// sockets even when the client asked for no heart-beats); `None` = never.
    pub ws_ping_interval: Option<Duration>,
    /// The broker's counters. Here rather than in the connection's own state, so counting
    /// adds nothing to an idle connection.
    pub metrics: Arc<Metrics>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            frame_limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            heartbeat_grace: 3.0,
            max_outbox_bytes: 8 * 1024 * 1024,
            write_timeout: Duration::from_secs(30),
            ws_ping_interval: Some(Duration::from_secs(30)),
            metrics: Arc::default(),
        }
    }
}

/// What a connection task needs from the broker.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Connection settings.
    pub settings: Arc<ConnectionSettings>,
    /// Session settings.
    pub session: Arc<SessionConfig>,
    /// The virtual hosts; the session picks its router at CONNECT.
    pub vhosts: Arc<VirtualHosts>,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Credentials from this connection's WebSocket upgrade request (HTTP Basic or Bearer).
    pub upgrade_credentials: Option<crate::security::auth::Credentials>,
    /// Where open connections are listed (management API, drain).
    pub registry: Arc<ConnectionRegistry>,
    /// How this connection reached the broker.
    pub transport: TransportKind,
}

/// Why a connection ended, recorded once, at the task boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client closed the socket.
    PeerClosed,
    /// The broker sent an ERROR and closed: the client broke the protocol or a limit, failed to
    /// log in, was refused, its token expired, or the broker failed.
    Error {
        /// What kind of failure it was.
        kind: ErrorKind,
        /// The ERROR's `message` header.
        message: String,
    },
    /// The client's outbox overflowed.
    SlowConsumer,
    /// No data within the heart-beat grace period.
    HeartbeatTimeout,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// The broker is shutting down.
    ServerShutdown,
    /// The socket failed.
    Io(String),
}

/// The byte pipe under a session: a plain stream (TCP or TLS) or a WebSocket over one.
pub enum Transport<S> {
    /// STOMP directly on the stream.
    Stream(S),
    /// STOMP inside WebSocket messages.
    WebSocket(Box<WebSocketStream<S>>),
}

/// A WebSocket message over `ws_max_message_size` (answered with an ERROR naming the limit).
#[derive(Debug)]
struct MessageTooLarge(String);

impl std::fmt::Display for MessageTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MessageTooLarge {}

enum ReadOutcome {
    /// This many bytes were appended to the buffer (0 for a ping or pong).
    Data(usize),
    Closed,
}

/// How much room to give the next socket read. It starts small, so an idle connection (the
/// common case for browsers) holds half a KiB while it waits, doubles while reads fill it, and
/// halves again when they do not.
struct ReadSize(usize);

impl ReadSize {
    const MIN: usize = 512;
    const MAX: usize = 64 * 1024;

    /// Makes room in `buffer` and returns how much there is.
    fn reserve(&self, buffer: &mut BytesMut) -> usize {
        if buffer.capacity() - buffer.len() < self.0 {
            buffer.reserve(self.0);
        }
        buffer.capacity() - buffer.len()
    }

    fn observe(&mut self, read: usize, room: usize) {
        if read >= room {
            self.0 = (self.0 * 2).min(Self::MAX);
        } else if read < self.0 / 4 {
            self.0 = (self.0 / 2).max(Self::MIN);
        }
    }
}

/// Encoded output of one loop turn, with frame boundaries for WebSocket.
struct Output {
    bytes: BytesMut,
    /// End offset of each frame and whether it is text (a heart-beat is one too: over
    /// WebSocket it is a message of its own).
    frames: Vec<(usize, bool)>,
    /// How many of `frames` are heart-beats, which are not STOMP frames and are left out of the
    /// connection's `frames_out`.
    heart_beats: usize,
}

impl Output {
    fn new() -> Output {
        Output { bytes: BytesMut::new(), frames: Vec::new(), heart_beats: 0 }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn frame(&mut self, frame: &Frame, version: stampede_protocol::Version, metrics: &Metrics) {
        metrics.frame_sent(frame.command);
        encode(frame, version, &mut self.bytes);
        let text = std::str::from_utf8(&frame.body).is_ok();
        self.frames.push((self.bytes.len(), text));
    }

    fn mark(&mut self, text: bool) {
        self.frames.push((self.bytes.len(), text));
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport<S> {
    /// Reads more bytes into `buffer`. Cancel safe.
    async fn read(&mut self, buffer: &mut BytesMut, read_size: &mut ReadSize) -> io::Result<ReadOutcome> {
        match self {
            Transport::Stream(stream) => {
                let room = read_size.reserve(buffer);
                match stream.read_buf(buffer).await? {
                    0 => Ok(ReadOutcome::Closed),
                    n => {
                        read_size.observe(n, room);
                        Ok(ReadOutcome::Data(n))
                    }
                }
            }
            Transport::WebSocket(socket) => match socket.next().await {
                None => Ok(ReadOutcome::Closed),
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(error))) => {
                    Err(io::Error::other(MessageTooLarge(error.to_string())))
                }
                Some(Err(error)) => Err(io::Error::other(error)),
                Some(Ok(Message::Text(text))) => {
                    buffer.extend_from_slice(text.as_bytes());
                    Ok(ReadOutcome::Data(text.len()))
                }
                Some(Ok(Message::Binary(data))) => {
                    buffer.extend_from_slice(&data);
                    Ok(ReadOutcome::Data(data.len()))
                }
                // Pings are answered by tungstenite on the next write or flush; any inbound
                // traffic counts as life.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(ReadOutcome::Data(0)),
                Some(Ok(Message::Close(_))) => Ok(ReadOutcome::Closed),
            },
        }
    }

    async fn write(&mut self, output: &mut Output) -> io::Result<()> {
        match self {
            Transport::Stream(stream) => {
                stream.write_all(&output.bytes).await?;
                stream.flush().await?;
                output.bytes.clear();
            }
            Transport::WebSocket(socket) => {
                let mut all: Bytes = output.bytes.split().freeze();
                let mut start = 0;
                for &(end, text) in &output.frames {
                    let chunk = all.split_to(end - start);
                    start = end;
                    let message = match text.then(|| Utf8Bytes::try_from(chunk.clone())) {
                        Some(Ok(text)) => Message::Text(text),
                        _ => Message::Binary(chunk),
                    };
                    socket.feed(message).await.map_err(io::Error::other)?;
                }
                socket.flush().await.map_err(io::Error::other)?;
            }
        }
        output.frames.clear();
        output.heart_beats = 0;
        Ok(())
    }

    async fn ping(&mut self) -> io::Result<()> {
        if let Transport::WebSocket(socket) = self {
            socket.send(Message::Ping(Bytes::new())).await.map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// Closes the way the specification asks after an ERROR or DISCONNECT: stop sending, then
    /// give the peer a moment to read what was sent before the socket is dropped (closing with
    /// unread input would reset the connection and could discard the ERROR frame).
    async fn close(&mut self, code: CloseCode) {
        let linger = LINGER;
        match self {
            Transport::Stream(stream) => {
                let _ = timeout(linger, stream.shutdown()).await;
                let mut sink = [0u8; 4096];
                let deadline = Instant::now() + linger;
                while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
                    if n == 0 {
                        break;
                    }
                }
            }
            Transport::WebSocket(socket) => {
                let frame = CloseFrame { code, reason: Utf8Bytes::from_static("") };
                let _ = timeout(linger, WebSocketStream::close(socket, Some(frame))).await;
                // The peer's answering Close completes the handshake. Input after an error may
                // not be WebSocket frames any more (an oversized message is refused from its
                // header), so reading stops at the first failure too.
                let deadline = Instant::now() + linger;
                while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
                    if message.is_close() {
                        break;
                    }
                }
                end_stream(socket.get_mut(), deadline).await;
            }
        }
    }

    /// Completes a close handshake the peer started: tungstenite queued the echo of its Close
    /// frame (same code) when it read it, and a flush writes it, behind anything still
    /// buffered. Without this the socket is dropped first and the browser reports 1006.
    async fn answer_close(&mut self, limit: Duration) {
        if let Transport::WebSocket(socket) = self {
            let _ = timeout(limit, socket.flush()).await;
            end_stream(socket.get_mut(), Instant::now() + limit).await;
        }
    }

    fn is_websocket(&self) -> bool {
        matches!(self, Transport::WebSocket(_))
    }
}

/// Ends the stream under a WebSocket once the close handshake is done or given up on: the
/// server closes first (RFC 6455 §7.1.1), with a TLS close_notify on wss, and whatever the peer
/// still sends is read and discarded until it closes too or `deadline` passes, since closing
/// with unread input would reset the connection under the frames just sent.
async fn end_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, deadline: Instant) {
    let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
    let mut sink = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// Runs one connection to the end.
///
/// Every connection carries this future for its whole life, and a future is as large as its
/// largest await point, so the heavy and occasional steps (handling frames, which reaches
/// through session, router and queues; writing; settling `ack:auto` queue deliveries; closing)
/// are boxed: an idle connection then holds only the [`Connection`] and the loop's timer. It is
/// a plain function returning an `async move` block rather than an `async fn` because an
/// `async fn` keeps a second copy of each argument next to the one its body moves out of it.
pub fn serve<S>(
    transport: Transport<S>,
    peer: SocketAddr,
    session_id: Arc<str>,
    context: ConnectionContext,
) -> impl Future<Output = CloseReason> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Built before the future, so the future holds the connection rather than the parts it is
    // made of.
    let connection = Connection::new(transport, peer, session_id, context);
    connection.run()
}

/// What the connection loop waits for, one turn at a time.
enum Event {
    /// The socket read something, closed, or failed.
    Read(io::Result<ReadOutcome>),
    /// The outbox has deliveries, or was marked (slow consumer, failed queue, close request).
    OutboxReady,
    /// The timer fired: a deadline (read, heart-beat, ping, token expiry) may have passed.
    Timer,
    /// The verdict at the head of the pending replies is in.
    Verdict(Result<(), Box<StompError>>, Option<ByteString>),
    /// The broker is shutting down.
    Shutdown,
}

/// One connection: its transport, its session, and the state between loop turns.
///
/// [`Connection::run`] waits for the next [`Event`] and hands it to the method for that event
/// (`on_read`, `on_outbox_ready`, `on_timer`, `on_verdict`, `on_shutdown`), each of which may
/// decide that the connection ends ([`Ending`]); [`Connection::end_turn`] then writes what the
/// turn produced, in one write, and closes if it must.
struct Connection<S> {
    transport: Transport<S>,
    session: Session,
    outbox: Arc<Outbox>,
    settings: Arc<ConnectionSettings>,
    shutdown: CancellationToken,
    registration: crate::registry::Registration,
    peer: SocketAddr,
    session_id: Arc<str>,
    decoder: Decoder,
    input: BytesMut,
    read_size: ReadSize,
    output: Output,
    deliveries: VecDeque<Delivery>,
    replies: Vec<Reply>,
    /// Replies not yet written, in order; a RECEIPT behind an undecided verdict waits for it.
    pending: VecDeque<Reply>,
    auto_acks: Vec<AutoAck>,
    connect_deadline: Instant,
    last_read: Instant,
    last_write: Instant,
    /// When the session's token expires: the session ends then even if it only receives.
    token_expiry: Option<Instant>,
    websocket: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    fn new(transport: Transport<S>, peer: SocketAddr, session_id: Arc<str>, context: ConnectionContext) -> Self {
        let settings = context.settings;
        let outbox = Outbox::new(settings.max_outbox_bytes);
        let mut session = Session::new(Arc::clone(&session_id), context.session, context.vhosts, Arc::clone(&outbox));
        session.set_peer(peer.ip());
        session.set_upgrade_credentials(context.upgrade_credentials);
        let registration =
            context.registry.register(Arc::clone(&session_id), peer, context.transport, Arc::clone(&outbox));
        let now = Instant::now();
        Connection {
            websocket: transport.is_websocket(),
            transport,
            session,
            outbox,
            decoder: Decoder::new(settings.frame_limits),
            connect_deadline: now + settings.connect_timeout,
            settings,
            shutdown: context.shutdown,
            registration,
            peer,
            session_id,
            input: BytesMut::new(),
            read_size: ReadSize(ReadSize::MIN),
            output: Output::new(),
            deliveries: VecDeque::new(),
            replies: Vec::new(),
            pending: VecDeque::new(),
            auto_acks: Vec::new(),
            last_read: now,
            last_write: now,
            token_expiry: None,
        }
    }

    /// The connection's life: one event per turn until one ends it. A function returning an
    /// `async move` block, for the reason given at [`serve`]: as an `async fn` the future held
    /// `self` twice (2,544 bytes instead of 1,504 in a test build).
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl Future<Output = CloseReason> + Send {
        async move {
            // One timer serves the read deadline, the heart-beat, the ping and the token's
            // expiry. It is only ever moved earlier here; when it fires it re-checks the real
            // deadlines (which activity keeps pushing later) and re-arms. A busy connection so
            // touches the timer wheel about once per interval instead of once per loop turn.
            let timer = tokio::time::sleep_until(Instant::now() + FAR);
            tokio::pin!(timer);
            let reason = loop {
                if let Some(wanted) = self.due().earliest(self.token_expiry)
                    && wanted < timer.deadline()
                {
                    timer.as_mut().reset(wanted);
                }
                let event = tokio::select! {
                    read = self.transport.read(&mut self.input, &mut self.read_size), if self.pending.len() < MAX_PENDING_REPLIES => {
                        Event::Read(read)
                    }
                    () = self.outbox.ready() => Event::OutboxReady,
                    () = &mut timer => Event::Timer,
                    (verdict, receipt_id) = first_verdict(&mut self.pending) => Event::Verdict(verdict, receipt_id),
                    () = self.shutdown.cancelled() => Event::Shutdown,
                };
                let ending = match event {
                    Event::Read(read) => self.on_read(read).await,
                    Event::OutboxReady => self.on_outbox_ready(),
                    Event::Timer => {
                        timer.as_mut().reset(Instant::now() + FAR);
                        self.on_timer().await
                    }
                    Event::Verdict(verdict, receipt_id) => self.on_verdict(verdict, receipt_id),
                    Event::Shutdown => Some(self.on_shutdown()),
                };
                if let Some(reason) = self.end_turn(ending).await {
                    break reason;
                }
                self.shrink();
            };
            // A connection that broke (no DISCONNECT, no ERROR of ours), or whose session another
            // connection resumed, parks its session for resumption when it can. A WebSocket
            // Close from the client is a deliberate end (a page closed or navigated away), like
            // DISCONNECT; a TCP close is not known to be one (a killed process closes too).
            let broke = match reason {
                CloseReason::PeerClosed => !self.websocket,
                CloseReason::Io(_) | CloseReason::HeartbeatTimeout => true,
                _ => false,
            };
            let parks = broke || self.outbox.is_taken_over();
            if !(parks && Box::pin(self.session.park()).await) {
                Box::pin(self.session.close()).await;
            }
            self.finish(reason)
        }
    }

    /// When the connection must next act by itself. Recomputed rather than kept: nothing it
    /// depends on changes while the loop waits, and kept it would take room in the future for
    /// the whole wait.
    fn due(&self) -> Due {
        Due::of(&self.session, &self.settings, self.connect_deadline, self.last_read, self.last_write, self.websocket)
    }

    /// The socket read something (handed to the decoder and the session), closed, or failed.
    async fn on_read(&mut self, read: io::Result<ReadOutcome>) -> Option<Ending> {
        let read = match read {
            Ok(ReadOutcome::Closed) => return Some((CloseReason::PeerClosed, None)),
            Err(error) => return Some(read_failed(error)),
            Ok(ReadOutcome::Data(read)) => read,
        };
        self.last_read = Instant::now();
        let entry = &self.registration.entry;
        entry.count_traffic(read, 0, 0);
        let was_connected = self.session.is_connected();
        let ending = Box::pin(process_input(
            &mut self.session,
            &mut self.decoder,
            &mut self.input,
            &mut self.replies,
            entry,
            &self.settings.metrics,
        ))
        .await;
        self.pending.extend(self.replies.drain(..));
        if !Arc::ptr_eq(&self.outbox, self.session.outbox()) {
            // CONNECT resumed a session: it brings its own outbox, with what arrived meanwhile.
            self.adopt_resumed_session();
        }
        let entry = &self.registration.entry;
        if !was_connected && self.session.is_connected() {
            self.token_expiry =
                self.session.principal().and_then(|principal| principal.expires_at).map(deadline_at_unix_secs);
            entry.set_identity(identity_of(&self.session));
        }
        observe(entry, &self.session);
        ending
    }

    /// Takes on the outbox and id of the session CONNECT resumed.
    #[cold]
    fn adopt_resumed_session(&mut self) {
        self.outbox = Arc::clone(self.session.outbox());
        self.session_id = Arc::from(self.session.id());
        self.registration.rebind(Arc::clone(&self.session_id), Arc::clone(&self.outbox));
        // Whatever is waiting there is written in this turn's wake-up.
        self.outbox.wake();
    }

    /// The outbox woke the connection: a close asked for from outside, a slow consumer, a
    /// failed queue, a takeover of the session, or deliveries to render.
    fn on_outbox_ready(&mut self) -> Option<Ending> {
        if self.outbox.is_taken_over() {
            return Some(fail(StompError::of_kind(
                ErrorKind::Request,
                "session resumed by another connection",
                "A CONNECT with this session's resume-token arrived on another connection, which now holds the session; this connection is closed.",
            )));
        }
        let entry = &self.registration.entry;
        if let Some(request) = entry.close_requested() {
            let error = StompError::of_kind(request.kind, request.message.clone(), close_detail(request.kind));
            return Some(if request.kind == ErrorKind::Shutdown {
                (CloseReason::ServerShutdown, Some(Box::new(error)))
            } else {
                fail(error)
            });
        }
        if self.outbox.is_slow_consumer() {
            let error = StompError::limit(
                "outbox bytes of a slow consumer",
                self.settings.max_outbox_bytes,
                "max_outbox_bytes",
            );
            return Some((CloseReason::SlowConsumer, Some(Box::new(error))));
        }
        if self.outbox.has_failed() {
            let error = StompError::of_kind(
                ErrorKind::Internal,
                "internal error: a queue this connection consumes from failed",
                "The queue's actor stopped unexpectedly and was restarted from its stored messages (or removed, if it kept none). Unacknowledged messages will be redelivered; subscribe again.",
            );
            return Some(fail(error));
        }
        self.outbox.take_all(&mut self.deliveries);
        let metrics = &self.settings.metrics;
        for delivery in self.deliveries.drain(..) {
            let text = delivery.template.body_is_utf8();
            let before = self.output.bytes.len();
            if let Some(ack) = self.session.render(delivery, &mut self.output.bytes) {
                self.auto_acks.push(ack);
            }
            if self.output.bytes.len() != before {
                self.output.mark(text);
                metrics.frame_sent(stampede_protocol::Command::Message);
                metrics.message_delivered();
            }
        }
        observe(entry, &self.session);
        None
    }

    /// The timer fired: end the connection if a deadline passed (token expiry, heart-beat
    /// grace, connect timeout), or send a heart-beat or a ping if one is due.
    async fn on_timer(&mut self) -> Option<Ending> {
        let now = Instant::now();
        let due = self.due();
        if self.token_expiry.is_some_and(|deadline| deadline <= now) {
            return Some(fail(crate::security::auth::token_expired()));
        }
        if due.read.is_some_and(|deadline| deadline <= now) {
            return Some(if self.session.is_connected() {
                let error = StompError::of_kind(
                    ErrorKind::Timeout,
                    "heart-beat timeout: no data from the client within the agreed interval",
                    format!(
                        "Nothing was received for {:?} (the negotiated client heart-beat interval times the grace factor {}).",
                        now.saturating_duration_since(self.last_read),
                        self.settings.heartbeat_grace
                    ),
                );
                (CloseReason::HeartbeatTimeout, Some(Box::new(error)))
            } else {
                let error = StompError::limit(
                    "time to send CONNECT",
                    format!("{:?}", self.settings.connect_timeout),
                    "connect_timeout_ms",
                );
                (CloseReason::ConnectTimeout, Some(Box::new(StompError { kind: ErrorKind::Timeout, ..error })))
            });
        }
        if due.beat.is_some_and(|due| due <= now) {
            self.output.bytes.extend_from_slice(b"\n");
            self.output.mark(true);
            self.output.heart_beats += 1;
        } else if due.ping.is_some_and(|due| due <= now) {
            if let Err(error) = self.transport.ping().await {
                return Some((CloseReason::Io(error.to_string()), None));
            }
            self.last_write = Instant::now();
        }
        None
    }

    /// The verdict at the head of the pending replies is in: a refused SEND ends the
    /// connection with an ERROR carrying that SEND's receipt.
    fn on_verdict(&mut self, verdict: Result<(), Box<StompError>>, receipt_id: Option<ByteString>) -> Option<Ending> {
        self.pending.pop_front();
        let error = verdict.err()?;
        // Nothing after a refused SEND is answered, not even its own RECEIPT: the ERROR carries it.
        self.pending.clear();
        Some(refused(*error, receipt_id))
    }

    /// The broker is shutting down: the client gets an ERROR saying so.
    fn on_shutdown(&mut self) -> Ending {
        let error = StompError::of_kind(
            ErrorKind::Shutdown,
            "server shutting down",
            "The broker is shutting down; reconnect later.",
        );
        (CloseReason::ServerShutdown, Some(Box::new(error)))
    }

    /// Writes what the turn produced (decided replies, deliveries, a heart-beat, the ERROR of
    /// an ending) in one write, settles `ack:auto` deliveries, and closes if the turn ended the
    /// connection. Returns why the connection ended, if it did.
    async fn end_turn(&mut self, mut ending: Option<Ending>) -> Option<CloseReason> {
        let settings = &self.settings;
        let version = self.session.version();
        if let Some(refused) = write_decided(&mut self.pending, &mut self.output, version, &settings.metrics) {
            ending.get_or_insert(refused);
        }
        if matches!(ending, Some((CloseReason::ClientDisconnect, _))) {
            // The DISCONNECT's RECEIPT promises that everything before it was processed, so it
            // waits for the verdicts ahead of it.
            let settled =
                settle_all(&mut self.pending, &mut self.output, version, settings.write_timeout, &settings.metrics);
            if let Some(refused) = Box::pin(settled).await {
                ending = Some(refused);
            }
        }
        if let Some((_, Some(error))) = &ending {
            settings.metrics.error_sent(error.kind);
            self.output.frame(&error.to_frame(), version, &settings.metrics);
        }
        let peer_closed = matches!(ending, Some((CloseReason::PeerClosed, _)));
        if peer_closed && self.websocket {
            // After the client's Close nothing but the echo may be sent (RFC 6455 §5.5.1);
            // the client will not read it, and tungstenite refuses it.
            self.output.bytes.clear();
            self.output.frames.clear();
            self.output.heart_beats = 0;
        }
        if !self.output.is_empty() {
            let frames = self.output.frames.len() - self.output.heart_beats;
            self.registration.entry.count_traffic(0, self.output.bytes.len(), frames);
            match timeout(settings.write_timeout, Box::pin(self.transport.write(&mut self.output))).await {
                Ok(Ok(())) => self.last_write = Instant::now(),
                Ok(Err(error)) => return Some(CloseReason::Io(error.to_string())),
                Err(_) => {
                    return Some(CloseReason::Io(format!(
                        "write did not complete within {:?}",
                        settings.write_timeout
                    )));
                }
            }
        }
        settle_auto_acks(&mut self.auto_acks);
        let (reason, error) = ending?;
        if peer_closed {
            Box::pin(self.transport.answer_close(settings.write_timeout.min(LINGER))).await;
        } else if error.is_some() || reason == CloseReason::ClientDisconnect {
            let code = error.map_or(CloseCode::Normal, |error| close_code(error.kind));
            Box::pin(self.transport.close(code)).await;
        }
        Some(reason)
    }

    /// Keeps idle connections small: most browsers sit idle for minutes between messages, so
    /// buffers sized for the last burst are given back once empty (a busy connection pays one
    /// allocation per turn for that, next to a syscall). A TCP read needs room to read into, so
    /// a small input buffer stays; WebSocket messages are copied in, so none does. An empty
    /// buffer is replaced even when it has no spare capacity: after a split it may be the
    /// zero-length tail of an allocation it still keeps alive.
    fn shrink(&mut self) {
        if self.input.is_empty() && (self.websocket || self.input.capacity() > 2 * self.read_size.0) {
            self.input = BytesMut::new();
        }
        if self.output.bytes.is_empty() {
            self.output.bytes = BytesMut::new();
            self.output.frames = Vec::new();
        }
        // Replies are rare (CONNECTED, RECEIPTs), so their queues are not kept either.
        if self.replies.capacity() > 0 {
            self.replies = Vec::new();
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = VecDeque::new();
        }
        if self.deliveries.capacity() > 64 {
            self.deliveries = VecDeque::new();
        }
    }

    /// Records why the connection ended, once its session has given back what it held.
    fn finish(self, reason: CloseReason) -> CloseReason {
        let Connection { peer, session_id, settings, outbox, registration, .. } = self;
        drop(registration);
        // The drop-oldest slow-consumer policy loses messages on purpose; say how many.
        let dropped = outbox.dropped();
        settings.metrics.messages_dropped(DropReason::SlowConsumer, dropped);
        if dropped > 0 {
            warn!(%peer, session = %session_id, dropped, "topic messages dropped for this slow consumer (slow_consumer_policy = drop-oldest)");
        }
        match &reason {
            CloseReason::Error { kind, message } => {
                info!(%peer, session = %session_id, ?kind, error = %message, "connection closed after ERROR")
            }
            CloseReason::Io(message) => {
                debug!(%peer, session = %session_id, cause = %message, "connection failed")
            }
            CloseReason::SlowConsumer => {
                warn!(%peer, session = %session_id, "slow consumer disconnected")
            }
            other => debug!(%peer, session = %session_id, reason = ?other, "connection closed"),
        }
        reason
    }
}

/// A failed read: a WebSocket message over the limit gets an ERROR naming it; anything else
/// is the socket failing.
fn read_failed(error: io::Error) -> Ending {
    match error.get_ref().and_then(|e| e.downcast_ref::<MessageTooLarge>()) {
        Some(MessageTooLarge(text)) => fail(StompError::of_kind(
            ErrorKind::TooLarge,
            format!("limit exceeded - WebSocket message size ({text}, ws_max_message_size)"),
            "A WebSocket message was larger than the configuration key 'ws_max_message_size' allows.",
        )),
        None => (CloseReason::Io(error.to_string()), None),
    }
}

/// Why a connection ends, and the ERROR to send its client first, if any. The ERROR is boxed:
/// an ending is rare but held across the loop's awaits, so inline it would enlarge every
/// connection's future.
type Ending = (CloseReason, Option<Box<StompError>>);

/// Ends the connection with `error` as an ERROR frame.
fn fail(error: StompError) -> Ending {
    (CloseReason::Error { kind: error.kind, message: error.message.clone() }, Some(Box::new(error)))
}

/// The WebSocket close code after an ERROR of `kind` (RFC 6455 §7.4.1). 1002 is kept for input
/// that could not be decoded: browsers and web developers read it as broken framing.
pub fn close_code(kind: ErrorKind) -> CloseCode {
    match kind {
        ErrorKind::Protocol => CloseCode::Protocol,
        ErrorKind::Request
        | ErrorKind::Authentication
        | ErrorKind::Authorization
        | ErrorKind::Limit
        | ErrorKind::Timeout => CloseCode::Policy,
        ErrorKind::TooLarge => CloseCode::Size,
        ErrorKind::Internal => CloseCode::Error,
        ErrorKind::Shutdown => CloseCode::Restart,
    }
}

/// A queue refused (or never decided on) a SEND: the ERROR carries that SEND's receipt-id.
fn refused(error: StompError, receipt_id: Option<ByteString>) -> Ending {
    fail(StompError { receipt_id, ..error })
}

fn queue_stopped() -> StompError {
    StompError::of_kind(ErrorKind::Internal, "message not accepted", "The queue stopped before accepting the message.")
}

/// When a connection must act without being asked: give up waiting for input (the connect
/// timeout before CONNECT, the heart-beat grace after), send a heart-beat, send a ping.
struct Due {
    read: Option<Instant>,
    beat: Option<Instant>,
    ping: Option<Instant>,
}

impl Due {
    /// The earliest of these deadlines and `also`.
    fn earliest(&self, also: Option<Instant>) -> Option<Instant> {
        [self.read, self.beat, self.ping, also].into_iter().flatten().min()
    }

    fn of(
        session: &Session,
        settings: &ConnectionSettings,
        connect_deadline: Instant,
        last_read: Instant,
        last_write: Instant,
        websocket: bool,
    ) -> Due {
        let beat = session.heart_beat();
        let read = if session.is_connected() {
            beat.expect_every.and_then(|every| after(last_read, every, settings.heartbeat_grace))
        } else {
            Some(connect_deadline)
        };
        let beat =
            if session.is_connected() { beat.send_every.and_then(|every| last_write.checked_add(every)) } else { None };
        let ping = settings.ws_ping_interval.filter(|_| websocket).and_then(|every| last_write.checked_add(every));
        Due { read, beat, ping }
    }
}

/// `from` plus `every` times `factor`, or `None` (no deadline) when that is beyond what an
/// `Instant` can hold: the intervals come from the client's `heart-beat` header and the factor
/// from the configuration, so neither may be trusted to keep the product small.
fn after(from: Instant, every: Duration, factor: f64) -> Option<Instant> {
    from.checked_add(Duration::try_from_secs_f64(every.as_secs_f64() * factor).ok()?)
}

/// The instant a token expiring at `expires_at` (seconds since the Unix epoch) stops being
/// valid; already past means now.
fn deadline_at_unix_secs(expires_at: u64) -> Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(expires_at).saturating_sub(now);
    Instant::now().checked_add(left).unwrap_or_else(|| Instant::now() + FAR)
}

/// A deadline far enough away to mean "none".
const FAR: Duration = Duration::from_secs(24 * 3600);

/// Longest the close handshake may take: flushing the last frames and the Close, then waiting
/// for the peer to answer or go.
const LINGER: Duration = Duration::from_millis(500);

/// Most replies waiting for verdicts before the connection stops reading (a producer that
/// pipelines persistent sends faster than the disk syncs is slowed here).
const MAX_PENDING_REPLIES: usize = 8192;

/// Waits for the verdict at the head of `pending`, if the head is one. Cancel safe: the
/// receiver keeps its value until it is awaited to completion. A refusal is boxed for the same
/// reason as in [`Ending`].
async fn first_verdict(pending: &mut VecDeque<Reply>) -> (Result<(), Box<StompError>>, Option<ByteString>) {
    match pending.front_mut() {
        Some(Reply::After { verdict, receipt_id }) => {
            let outcome = verdict.await.unwrap_or_else(|_| Err(queue_stopped())).map_err(Box::new);
            (outcome, receipt_id.clone())
        }
        _ => std::future::pending().await,
    }
}

/// Writes the replies at the head of `pending` that are ready, stopping at the first undecided
/// verdict. Returns the ERROR to end with if a verdict refused a message.
fn write_decided(
    pending: &mut VecDeque<Reply>,
    output: &mut Output,
    version: stampede_protocol::Version,
    metrics: &Metrics,
) -> Option<Ending> {
    while let Some(front) = pending.front_mut() {
        match front {
            Reply::Frame(frame) => {
                output.frame(frame, version, metrics);
                pending.pop_front();
            }
            Reply::After { verdict, receipt_id } => match verdict.try_recv() {
                Ok(Ok(())) => {
                    pending.pop_front();
                }
                Ok(Err(error)) => return Some(refused(error, receipt_id.clone())),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return None,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Some(refused(queue_stopped(), receipt_id.clone()));
                }
            },
        }
    }
    None
}

/// Waits for every pending verdict (up to `limit` each) and writes every reply.
async fn settle_all(
    pending: &mut VecDeque<Reply>,
    output: &mut Output,
    version: stampede_protocol::Version,
    limit: Duration,
    metrics: &Metrics,
) -> Option<Ending> {
    while !pending.is_empty() {
        if let Some(refused) = write_decided(pending, output, version, metrics) {
            return Some(refused);
        }
        if pending.is_empty() {
            break;
        }
        match timeout(limit, first_verdict(pending)).await {
            Ok((Ok(()), _)) => {
                pending.pop_front();
            }
            Ok((Err(error), receipt_id)) => return Some(refused(*error, receipt_id)),
            Err(_) => {
                return Some(fail(StompError::of_kind(
                    ErrorKind::Internal,
                    "timed out waiting for storage",
                    "Earlier messages were not confirmed in time.",
                )));
            }
        }
    }
    None
}

/// Decodes and handles every complete frame in `input`. Returns why the connection must end,
/// if it must.
async fn process_input(
    session: &mut Session,
    decoder: &mut Decoder,
    input: &mut BytesMut,
    replies: &mut Vec<Reply>,
    entry: &ConnectionEntry,
    metrics: &Metrics,
) -> Option<Ending> {
    loop {
        match decoder.decode(input) {
            Ok(None) => return None,
            Ok(Some(Item::HeartBeat)) => {}
            Ok(Some(Item::Frame(frame))) => {
                metrics.frame_received(frame.command);
                entry.frames_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let was_connected = session.is_connected();
                match session.handle(frame, replies).await {
                    Ok(Flow::Continue) => {
                        if !was_connected && session.is_connected() {
                            decoder.set_version(session.version());
                        }
                    }
                    Ok(Flow::Disconnect) => return Some((CloseReason::ClientDisconnect, None)),
                    Err(error) => return Some(fail(error)),
                }
            }
            Err(error) => {
                // A frame over a size limit is "too large" (WebSocket 1009) and names the key
                // that sets the limit; anything else could not be decoded (1002).
                let (kind, message) = match error {
                    stampede_protocol::DecodeError::LimitExceeded { kind, .. } => {
                        (ErrorKind::TooLarge, format!("{error} ({})", crate::config::limit_key(kind)))
                    }
                    _ => (ErrorKind::Protocol, error.to_string()),
                };
                let stomp = StompError::of_kind(
                    kind,
                    format!("malformed frame: {message}"),
                    format!(
                        "The frame could not be decoded: {message}. The connection is closed because the byte stream cannot be resynchronised."
                    ),
                );
                return Some(fail(stomp));
            }
        }
    }
}

/// The session's identity once it has connected, for the registry.
fn identity_of(session: &Session) -> SessionIdentity {
    let beat = session.heart_beat();
    let ms = |every: Option<Duration>| every.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
    SessionIdentity {
        user: session.principal().and_then(|p| p.name.as_deref()).or_else(|| session.login()).map(Box::from),
        vhost: Arc::clone(session.router().vhost_name()),
        version: session.version(),
        heartbeat_send_ms: ms(beat.send_every),
        heartbeat_receive_ms: ms(beat.expect_every),
    }
}

/// Stores the session's counts in its registry entry.
fn observe(entry: &ConnectionEntry, session: &Session) {
    use std::sync::atomic::Ordering::Relaxed;
    entry.subscriptions.store(u32::try_from(session.subscription_count()).unwrap_or(u32::MAX), Relaxed);
    entry.pending_acks.store(u32::try_from(session.pending_ack_count()).unwrap_or(u32::MAX), Relaxed);
}

/// The ERROR's `message` body for a close asked for from outside.
fn close_detail(kind: ErrorKind) -> &'static str {
    if kind == ErrorKind::Shutdown {
        "The broker is shutting down; reconnect later."
    } else {
        "An administrator closed this connection."
    }
}

/// Tells queues that `ack:auto` deliveries were written, one command per queue and consumer.
fn settle_auto_acks(auto_acks: &mut Vec<AutoAck>) {
    while let Some(first) = auto_acks.first() {
        let consumer = first.from.consumer;
        let messages = auto_acks.iter().filter(|ack| ack.from.consumer == consumer).map(|ack| ack.message_id).collect();
        let _ = first.from.queue.settle(consumer, messages, Outcome::Ack);
        auto_acks.retain(|ack| ack.from.consumer != consumer);
    }
}

/// Writes one pre-encoded frame and closes; used to refuse connections over a limit.
pub async fn send_and_close<S>(mut transport: Transport<S>, frame: Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut output = Output::new();
    output.bytes.extend_from_slice(&frame);
    output.mark(true);
    let _ = timeout(Duration::from_secs(5), transport.write(&mut output)).await;
    transport.close(CloseCode::Again).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> ConnectionContext {
        ConnectionContext {
            settings: Arc::new(ConnectionSettings::default()),
            session: Arc::new(SessionConfig::default()),
            vhosts: VirtualHosts::in_memory(crate::destination::queue::QueueSettings::default()),
            shutdown: CancellationToken::new(),
            upgrade_credentials: None,
            registry: ConnectionRegistry::new(),
            transport: TransportKind::Tcp,
        }
    }

    #[tokio::test]
    async fn an_idle_connection_future_stays_small() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (ours, _theirs) = tokio::io::duplex(64);
        let stream = serve(Transport::Stream(ours), peer, "s".into(), context());
        let (ours, _theirs) = tokio::io::duplex(64);
        let socket =
            WebSocketStream::from_raw_socket(ours, tokio_tungstenite::tungstenite::protocol::Role::Server, None).await;
        let websocket = serve(Transport::WebSocket(Box::new(socket)), peer, "w".into(), context());
        eprintln!(
            "connection future: stream {} bytes, websocket {} bytes",
            std::mem::size_of_val(&stream),
            std::mem::size_of_val(&websocket)
        );
    }

    /// A connection over an in-memory pipe; returns its task and the client's end.
    fn connection() -> (tokio::task::JoinHandle<CloseReason>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        (tokio::spawn(serve(Transport::Stream(ours), peer, "s".into(), context())), theirs)
    }

    /// Reads until `wanted` has arrived; returns everything read.
    async fn read_until(client: &mut tokio::io::DuplexStream, wanted: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !seen.windows(wanted.len()).any(|w| w == wanted) {
            let n = client.read(&mut buffer).await.unwrap();
            assert!(
                n > 0,
                "closed before {:?} arrived: {:?}",
                String::from_utf8_lossy(wanted),
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buffer[..n]);
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_past_its_heart_beat_grace_is_closed_with_an_error() {
        let (task, mut client) = connection();
        client.write_all(b"CONNECT\naccept-version:1.2\nheart-beat:1000,0\n\n\0").await.unwrap();
        read_until(&mut client, b"CONNECTED").await;
        let started = Instant::now();
        let error = read_until(&mut client, b"heart-beat timeout").await;
        assert!(error.starts_with(b"ERROR") || error.windows(6).any(|w| w == b"ERROR\n"));
        assert_eq!(task.await.unwrap(), CloseReason::HeartbeatTimeout);
        // 1 s times the default grace of 3.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(4), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_beating_stays_connected_and_the_server_beats_too() {
        let (task, mut client) = connection();
        client.write_all(b"CONNECT\naccept-version:1.2\nheart-beat:1000,1000\n\n\0").await.unwrap();
        read_until(&mut client, b"CONNECTED").await;
        let mut buffer = [0u8; 64];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            client.write_all(b"\n").await.unwrap();
            // The server beats once a second on an otherwise silent connection.
            let n = client.read(&mut buffer).await.unwrap();
            assert!(n > 0 && buffer[..n].iter().all(|b| *b == b'\n'), "{:?}", &buffer[..n]);
        }
        assert!(!task.is_finished(), "20 s of beating every 2 s stays within the 3 s grace");
        client.write_all(b"DISCONNECT\nreceipt:bye\n\n\0").await.unwrap();
        read_until(&mut client, b"receipt-id:bye").await;
        assert_eq!(task.await.unwrap(), CloseReason::ClientDisconnect);
    }

    #[tokio::test(start_paused = true)]
    async fn no_connect_within_the_connect_timeout_is_an_error_naming_the_key() {
        let (task, mut client) = connection();
        let started = Instant::now();
        read_until(&mut client, b"connect_timeout_ms").await;
        assert_eq!(task.await.unwrap(), CloseReason::ConnectTimeout);
        assert!(started.elapsed() >= ConnectionSettings::default().connect_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_sends_an_error_and_ends_with_its_reason() {
        let (ours, mut client) = tokio::io::duplex(64 * 1024);
        let context = context();
        let shutdown = context.shutdown.clone();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let task = tokio::spawn(serve(Transport::Stream(ours), peer, "s".into(), context));
        client.write_all(b"CONNECT\naccept-version:1.2\n\n\0").await.unwrap();
        read_until(&mut client, b"CONNECTED").await;
        shutdown.cancel();
        read_until(&mut client, b"server shutting down").await;
        assert_eq!(task.await.unwrap(), CloseReason::ServerShutdown);
    }

    #[test]
    fn a_deadline_too_far_to_represent_is_no_deadline_rather_than_a_panic() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX, 1.0), None);
        assert_eq!(after(now, Duration::from_secs(1), -1.0), None);
        assert_eq!(after(now, Duration::MAX, 3.0), None);
        assert_eq!(after(now, Duration::from_secs(1), f64::INFINITY), None);
        assert_eq!(after(now, Duration::from_secs(1), f64::NAN), None);
        // The largest interval a heart-beat header can ask for (u32::MAX ms, about 49 days),
        // times the grace factor, is an ordinary deadline.
        let longest = Duration::from_millis(u64::from(u32::MAX));
        assert_eq!(after(now, longest, 3.0), Some(now + longest * 3));
        assert_eq!(after(now, Duration::from_secs(2), 1.5), Some(now + Duration::from_secs(3)));
    }

    #[test]
    fn a_token_deadline_is_now_when_already_past_and_far_when_out_of_range() {
        let before = Instant::now();
        assert!(deadline_at_unix_secs(0) <= Instant::now() && deadline_at_unix_secs(0) >= before);
        assert!(deadline_at_unix_secs(u64::MAX) >= before + FAR);
    }

    #[test]
    fn close_codes_say_what_kind_of_error_ended_the_websocket() {
        assert_eq!(close_code(ErrorKind::Protocol), CloseCode::Protocol);
        assert_eq!(close_code(ErrorKind::Authentication), CloseCode::Policy);
        assert_eq!(close_code(ErrorKind::Authorization), CloseCode::Policy);
        assert_eq!(close_code(ErrorKind::Request), CloseCode::Policy);
        assert_eq!(close_code(ErrorKind::Limit), CloseCode::Policy);
        assert_eq!(close_code(ErrorKind::Timeout), CloseCode::Policy);
        assert_eq!(close_code(ErrorKind::TooLarge), CloseCode::Size);
        assert_eq!(close_code(ErrorKind::Internal), CloseCode::Error);
        assert_eq!(close_code(ErrorKind::Shutdown), CloseCode::Restart);
    }
}
