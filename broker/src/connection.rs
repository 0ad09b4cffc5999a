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
    /// End offset of each frame and whether it is text.
    frames: Vec<(usize, bool)>,
}

impl Output {
    fn new() -> Output {
        Output { bytes: BytesMut::new(), frames: Vec::new() }
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
/// are boxed: an idle connection then holds only the loop's own state. It is an `async move`
/// block rather than an `async fn` because an `async fn` keeps a second copy of each argument
/// next to the one its body moves out of it.
pub fn serve<S>(
    mut transport: Transport<S>,
    peer: SocketAddr,
    session_id: Arc<str>,
    context: ConnectionContext,
) -> impl Future<Output = CloseReason> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Built before the future, so the future holds the session rather than the parts it is made of.
    let settings = context.settings;
    let shutdown = context.shutdown;
    let outbox = Outbox::new(settings.max_outbox_bytes);
    let mut session = Session::new(Arc::clone(&session_id), context.session, context.vhosts, Arc::clone(&outbox));
    session.set_peer(peer.ip());
    session.set_upgrade_credentials(context.upgrade_credentials);
    let registration = context.registry.register(Arc::clone(&session_id), peer, context.transport, Arc::clone(&outbox));
    async move {
        let entry = &registration.entry;
        let mut decoder = Decoder::new(settings.frame_limits);
        let mut input = BytesMut::new();
        let mut read_size = ReadSize(ReadSize::MIN);
        let mut output = Output::new();
        let mut deliveries: VecDeque<Delivery> = VecDeque::new();
        let mut replies: Vec<Reply> = Vec::new();
        // Replies not yet written, in order; a RECEIPT behind an undecided verdict waits for it.
        let mut pending: VecDeque<Reply> = VecDeque::new();
        let mut auto_acks: Vec<AutoAck> = Vec::new();
        let connect_deadline = Instant::now() + settings.connect_timeout;
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        // When the session's token expires: the session ends then even if it only receives.
        let mut token_expiry: Option<Instant> = None;
        let websocket = transport.is_websocket();

        // One timer serves the read deadline, the heart-beat, the ping and the token's expiry. It
        // is only ever moved earlier here; when it fires it re-checks the real deadlines (which
        // activity keeps pushing later) and re-arms. A busy connection so touches the timer wheel
        // about once per interval instead of once per loop turn.
        let timer = tokio::time::sleep_until(Instant::now() + FAR);
        tokio::pin!(timer);

        let reason = loop {
            let mut ending: Option<Ending> = None;
            let due = Due::of(&session, &settings, connect_deadline, last_read, last_write, websocket);
            if let Some(wanted) = [due.read, due.beat, due.ping, token_expiry].into_iter().flatten().min()
                && wanted < timer.deadline()
            {
                timer.as_mut().reset(wanted);
            }

            tokio::select! {
                read = transport.read(&mut input, &mut read_size), if pending.len() < MAX_PENDING_REPLIES => match read {
                    Ok(ReadOutcome::Closed) => ending = Some((CloseReason::PeerClosed, None)),
                    Err(error) => ending = Some(match error.get_ref().and_then(|e| e.downcast_ref::<MessageTooLarge>()) {
                        Some(MessageTooLarge(text)) => {
                            let error = StompError::of_kind(
                                ErrorKind::TooLarge,
                                format!("limit exceeded - WebSocket message size ({text}, ws_max_message_size)"),
                                "A WebSocket message was larger than the configuration key 'ws_max_message_size' allows.",
                            );
                            fail(error)
                        }
                        None => (CloseReason::Io(error.to_string()), None),
                    }),
                    Ok(ReadOutcome::Data(read)) => {
                        last_read = Instant::now();
                        entry.count_traffic(read, 0, 0);
                        let was_connected = session.is_connected();
                        ending = Box::pin(process_input(&mut session, &mut decoder, &mut input, &mut replies, entry, &settings.metrics)).await;
                        pending.extend(replies.drain(..));
                        if !was_connected && session.is_connected() {
                            token_expiry = session.principal().and_then(|principal| principal.expires_at).map(deadline_at_unix_secs);
                            entry.set_identity(identity_of(&session));
                        }
                        observe(entry, &session);
                    }
                },
                () = outbox.ready() => {
                    if let Some(request) = entry.close_requested() {
                        let error = StompError::of_kind(request.kind, request.message.clone(), close_detail(request.kind));
                        ending = Some(if request.kind == ErrorKind::Shutdown {
                            (CloseReason::ServerShutdown, Some(Box::new(error)))
                        } else {
                            fail(error)
                        });
                    } else if outbox.is_slow_consumer() {
                        let error = StompError::limit("outbox bytes of a slow consumer", settings.max_outbox_bytes, "max_outbox_bytes");
                        ending = Some((CloseReason::SlowConsumer, Some(Box::new(error))));
                    } else if outbox.has_failed() {
                        let error = StompError::of_kind(
                            ErrorKind::Internal,
                            "internal error: a queue this connection consumes from failed",
                            "The queue's actor stopped unexpectedly and was restarted from its stored messages (or removed, if it kept none). Unacknowledged messages will be redelivered; subscribe again.",
                        );
                        ending = Some(fail(error));
                    } else {
                        outbox.take_all(&mut deliveries);
                        let text_ok = |d: &Delivery| d.template.body_is_utf8();
                        for delivery in deliveries.drain(..) {
                            let text = text_ok(&delivery);
                            let before = output.bytes.len();
                            if let Some(ack) = session.render(delivery, &mut output.bytes) {
                                auto_acks.push(ack);
                            }
                            if output.bytes.len() != before {
                                output.mark(text);
                                settings.metrics.frame_sent(stampede_protocol::Command::Message);
                                settings.metrics.message_delivered();
                            }
                        }
                        observe(entry, &session);
                    }
                },
                () = &mut timer => {
                    let now = Instant::now();
                    timer.as_mut().reset(now + FAR);
                    // Recomputed rather than kept across the select: nothing they depend on has
                    // changed, and kept they would take room in the future for the whole wait.
                    let due = Due::of(&session, &settings, connect_deadline, last_read, last_write, websocket);
                    if token_expiry.is_some_and(|deadline| deadline <= now) {
                        ending = Some(fail(crate::security::auth::token_expired()));
                    } else if due.read.is_some_and(|deadline| deadline <= now) {
                        ending = Some(if session.is_connected() {
                            (CloseReason::HeartbeatTimeout, Some(Box::new(StompError::of_kind(
                                ErrorKind::Timeout,
                                "heart-beat timeout: no data from the client within the agreed interval",
                                format!("Nothing was received for {:?} (the negotiated client heart-beat interval times the grace factor {}).",
                                    now.saturating_duration_since(last_read), settings.heartbeat_grace),
                            ))))
                        } else {
                            let error = StompError::limit("time to send CONNECT", format!("{:?}", settings.connect_timeout), "connect_timeout_ms");
                            (CloseReason::ConnectTimeout, Some(Box::new(StompError { kind: ErrorKind::Timeout, ..error })))
                        });
                    } else if due.beat.is_some_and(|due| due <= now) {
                        output.bytes.extend_from_slice(b"\n");
                        output.mark(true);
                    } else if due.ping.is_some_and(|due| due <= now) {
                        if let Err(error) = transport.ping().await {
                            ending = Some((CloseReason::Io(error.to_string()), None));
                        }
                        last_write = Instant::now();
                    }
                },
                (verdict, receipt_id) = first_verdict(&mut pending) => {
                    pending.pop_front();
                    if let Err(error) = verdict {
                        // Nothing after a refused SEND is answered, not even its own RECEIPT: the ERROR carries it.
                        pending.clear();
                        ending = Some(refused(*error, receipt_id));
                    }
                },
                () = shutdown.cancelled() => {
                    let error = StompError::of_kind(ErrorKind::Shutdown, "server shutting down", "The broker is shutting down; reconnect later.");
                    ending = Some((CloseReason::ServerShutdown, Some(Box::new(error))));
                },
            }

            if let Some(refused) = write_decided(&mut pending, &mut output, session.version(), &settings.metrics) {
                ending.get_or_insert(refused);
            }
            if matches!(ending, Some((CloseReason::ClientDisconnect, _))) {
                // The DISCONNECT's RECEIPT promises that everything before it was processed, so it
                // waits for the verdicts ahead of it.
                if let Some(refused) = Box::pin(settle_all(
                    &mut pending,
                    &mut output,
                    session.version(),
                    settings.write_timeout,
                    &settings.metrics,
                ))
                .await
                {
                    ending = Some(refused);
                }
            }
            if let Some((_, Some(error))) = &ending {
                settings.metrics.error_sent(error.kind);
                output.frame(&error.to_frame(), session.version(), &settings.metrics);
            }
            let peer_closed = matches!(ending, Some((CloseReason::PeerClosed, _)));
            if peer_closed && websocket {
                // After the client's Close nothing but the echo may be sent (RFC 6455 §5.5.1);
                // the client will not read it, and tungstenite refuses it.
                output.bytes.clear();
                output.frames.clear();
            }
            if !output.is_empty() {
                entry.count_traffic(0, output.bytes.len(), output.frames.len());
                match timeout(settings.write_timeout, Box::pin(transport.write(&mut output))).await {
                    Ok(Ok(())) => last_write = Instant::now(),
                    Ok(Err(error)) => break CloseReason::Io(error.to_string()),
                    Err(_) => {
                        break CloseReason::Io(format!("write did not complete within {:?}", settings.write_timeout));
                    }
                }
            }
            settle_auto_acks(&mut auto_acks);
            if let Some((reason, error)) = ending {
                if peer_closed {
                    Box::pin(transport.answer_close(settings.write_timeout.min(LINGER))).await;
                } else if error.is_some() || reason == CloseReason::ClientDisconnect {
                    Box::pin(transport.close(error.map_or(CloseCode::Normal, |error| close_code(error.kind)))).await;
                }
                break reason;
            }
            // Keep idle connections small: most browsers sit idle for minutes between messages, so
            // buffers sized for the last burst are given back once empty (a busy connection pays
            // one allocation per turn for that, next to a syscall). A TCP read needs room to read
            // into, so a small input buffer stays; WebSocket messages are copied in, so none does.
            // An empty buffer is replaced even when it has no spare capacity: after a split it
            // may be the zero-length tail of an allocation it still keeps alive.
            if input.is_empty() && (websocket || input.capacity() > 2 * read_size.0) {
                input = BytesMut::new();
            }
            if output.bytes.is_empty() {
                output.bytes = BytesMut::new();
                output.frames = Vec::new();
            }
            // Replies are rare (CONNECTED, RECEIPTs), so their queues are not kept either.
            if replies.capacity() > 0 {
                replies = Vec::new();
            }
            if pending.is_empty() && pending.capacity() > 0 {
                pending = VecDeque::new();
            }
            if deliveries.capacity() > 64 {
                deliveries = VecDeque::new();
            }
        };

        Box::pin(session.close()).await;
        drop(registration);
        // The drop-oldest slow-consumer policy loses messages on purpose; say how many.
        let dropped = outbox.dropped();
        settings.metrics.messages_dropped(DropReason::SlowConsumer, dropped);
        if dropped > 0 {
            warn!(%peer, session = %session_id, dropped, "topic messages dropped for this slow consumer (slow_consumer_policy = drop-oldest)");
        }
        match &reason {
            CloseReason::Error { kind, message } => {
                info!(%peer, session = %session_id, ?kind, %message, "connection closed after ERROR")
            }
            CloseReason::Io(message) => {
                debug!(%peer, session = %session_id, %message, "connection failed")
            }
            CloseReason::SlowConsumer => {
                warn!(%peer, session = %session_id, "slow consumer disconnected")
            }
            other => debug!(%peer, session = %session_id, reason = ?other, "connection closed"),
        }
        reason
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
