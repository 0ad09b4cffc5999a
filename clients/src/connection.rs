//! The connection task: the only code that touches the socket.
//!
//! One task per connection runs one `select!` loop over four things: bytes from the socket,
//! requests from the [`Client`](crate::Client) handles, the write of pending bytes, and a single
//! heart-beat timer. Keeping everything in one task means no lock guards the socket, frames go
//! out in the order they were submitted, and routing state (subscriptions, receipt waiters) is
//! plain data owned by the loop.
//!
//! Backpressure runs both ways without unbounded buffers:
//! - Outgoing: requests arrive through a bounded channel; the loop stops taking requests while
//!   more than [`WRITE_HIGH_WATER`] bytes wait to be written, so `send` slows to the socket's pace.
//!   Requests taken at once are encoded into one buffer and written together (coalescing).
//! - Incoming: each subscription has a bounded channel. When one is full the loop parks that
//!   delivery and stops reading the socket until the subscriber makes room, while it keeps
//!   writing and heart-beating. The broker then sees TCP backpressure (and its prefetch window
//!   fills), which is exactly what a slow consumer should cause.
//!
//! Reconnection (opt-in, [`ConnectOptions::reconnect`]) happens here too: the routes outlive
//! the socket, so after a new handshake the loop sends SUBSCRIBE again for each of them and the
//! [`Subscription`](crate::Subscription) streams never notice more than a pause.
//!
//! Heart-beats: a single `\n` is written whenever nothing else was written for the negotiated
//! send interval; the server is declared dead after the negotiated receive interval times the
//! grace factor without a single byte (reading being parked does not count as silence).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use stampede_protocol::heartbeat::Negotiated;
use stampede_protocol::{Command, Decoder, Frame, Item, Version, encode, names};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::client::{Handshake, Shared, handshake};
use crate::transport::{Reader, Writer};
use crate::{ClientError, CloseReason, ConnectOptions, Message, Reconnect, ServerError};

/// Bytes waiting to be written above which no more requests are taken.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// How many unsubscribed ids are remembered, so late MESSAGEs for them are dropped quietly
/// instead of being reported as unrouted.
const RETIRED_IDS: usize = 1024;

/// Time allowed to flush the last bytes (a DISCONNECT, say) when the loop ends.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Where the answer to a frame's `receipt` goes.
pub(crate) type ReceiptReply = oneshot::Sender<Result<Frame, ClientError>>;

/// A frame to send, and what sending it means for routing.
pub(crate) struct Request {
    pub frame: Frame,
    /// The receipt id put in the frame and who waits for the RECEIPT.
    pub receipt: Option<(ByteString, ReceiptReply)>,
    pub effect: Effect,
}

/// Routing changes that must happen exactly when the frame is written, in order with it.
pub(crate) enum Effect {
    None,
    /// Start routing MESSAGEs with this `subscription` to `sender` (before SUBSCRIBE goes out,
    /// so the first MESSAGE cannot arrive before its route).
    Subscribe {
        id: ByteString,
        destination: ByteString,
        sender: mpsc::Sender<Message>,
    },
    /// Stop routing this subscription.
    Unsubscribe {
        id: ByteString,
    },
    /// This is the DISCONNECT: its RECEIPT ends the connection.
    Disconnect,
}

struct Route {
    destination: ByteString,
    sender: mpsc::Sender<Message>,
    /// The SUBSCRIBE as sent (without its `receipt`), to send again after a reconnect.
    subscribe: Frame,
}

/// A delivery waiting for room in a full channel; reading is parked while one exists.
enum Parked {
    Message { subscription: ByteString, sender: mpsc::Sender<Message>, message: Message },
    Unrouted(Frame),
}

/// Room obtained for a parked delivery.
enum Room {
    Message(mpsc::OwnedPermit<Message>),
    Unrouted(mpsc::OwnedPermit<Frame>),
    /// The receiver is gone.
    Closed,
}

/// Everything the task needs; built by the connect path after CONNECTED.
pub(crate) struct Connection {
    pub reader: Reader,
    pub writer: Writer,
    pub decoder: Decoder,
    pub version: Version,
    /// Bytes read but not yet decoded (may start with what followed CONNECTED).
    pub read_buf: BytesMut,
    pub requests: mpsc::Receiver<Request>,
    pub unrouted: mpsc::Sender<Frame>,
    pub shared: Arc<Shared>,
    pub heart_beat: Negotiated,
    /// `heart_beat.expect_every` times the grace factor.
    pub silence_limit: Option<Duration>,
    pub closed: watch::Sender<Option<CloseReason>>,
    /// How to connect again when the connection is lost; `None` when not asked to.
    pub reconnect: Option<(ConnectOptions, Reconnect)>,
}

/// The loop's mutable state.
struct State {
    write_buf: BytesMut,
    routes: HashMap<ByteString, Route>,
    retired: VecDeque<ByteString>,
    receipts: HashMap<ByteString, ReceiptReply>,
    disconnect_receipt: Option<ByteString>,
    disconnect_sent: bool,
    parked: Option<Parked>,
    last_read: Instant,
    last_write: Instant,
}

impl Connection {
    /// Runs until the connection ends, then records why and fails whatever still waits.
    pub(crate) async fn run(mut self) {
        let now = Instant::now();
        let mut state = State {
            write_buf: BytesMut::with_capacity(8 * 1024),
            routes: HashMap::new(),
            retired: VecDeque::new(),
            receipts: HashMap::new(),
            disconnect_receipt: None,
            disconnect_sent: false,
            parked: None,
            last_read: now,
            last_write: now,
        };
        let reason = loop {
            let reason = self.run_loop(&mut state).await;
            // A DISCONNECT that the server answered by closing, without a RECEIPT, is still a
            // graceful end.
            let reason = match reason {
                CloseReason::ServerClosed if state.disconnect_sent => CloseReason::Disconnected,
                other => other,
            };
            if reason.is_graceful() || state.disconnect_sent || self.reconnect.is_none() {
                break reason;
            }
            tracing::info!(%reason, "STOMP connection lost; reconnecting");
            // The server may or may not have seen those frames: their callers must decide.
            for (_, reply) in state.receipts.drain() {
                let _ = reply.send(Err(ClientError::from_close(&reason)));
            }
            match self.reconnect(&mut state, reason).await {
                Ok(()) => self.shared.count_reconnect(),
                Err(reason) => break reason,
            }
        };
        match &reason {
            CloseReason::Disconnected | CloseReason::Dropped => {
                tracing::debug!(%reason, "STOMP connection closed");
            }
            _ => tracing::info!(%reason, "STOMP connection closed"),
        }
        // Record the reason before anything observable ends, so whoever sees a closed channel
        // or a dropped waiter can read why.
        self.closed.send_replace(Some(reason.clone()));
        self.requests.close();
        for (_, reply) in state.receipts.drain() {
            let _ = reply.send(Err(ClientError::from_close(&reason)));
        }
        while let Ok(request) = self.requests.try_recv() {
            if let Some((_, reply)) = request.receipt {
                let _ = reply.send(Err(ClientError::from_close(&reason)));
            }
        }
        // Dropping the routes ends every subscription stream after its buffered messages.
        state.routes.clear();
        state.parked = None;
        // After a socket error there is nothing left to flush to.
        if !matches!(reason, CloseReason::Io(_) | CloseReason::WebSocket(_)) {
            let writer = &mut self.writer;
            let buf = &mut state.write_buf;
            let flushed = tokio::time::timeout(FINAL_FLUSH, async {
                writer.write_all(buf).await?;
                writer.shutdown().await
            })
            .await;
            if let Ok(Err(e)) = flushed {
                tracing::debug!(error = %e, "closing the socket failed");
            }
        }
    }

    /// Connects again, with backoff, and resubscribes; `Err` with the reason to end with when it
    /// gives up (or every handle is dropped meanwhile).
    async fn reconnect(&mut self, state: &mut State, mut reason: CloseReason) -> Result<(), CloseReason> {
        let Some((options, plan)) = self.reconnect.clone() else { return Err(reason) };
        // One request taken while waiting, to notice when every handle is gone; the rest wait
        // in the channel, which is the callers' backpressure.
        let mut held: Option<Request> = None;
        let mut attempt = 0;
        loop {
            if plan.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(reason);
            }
            let pause = tokio::time::sleep(plan.delay(attempt));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    request = self.requests.recv(), if held.is_none() => match request {
                        Some(request) => held = Some(request),
                        None => return Err(CloseReason::Dropped),
                    },
                }
            }
            attempt += 1;
            let outcome = tokio::time::timeout(options.connect_timeout, handshake(&options)).await;
            let handshake = match outcome {
                Ok(Ok(handshake)) => handshake,
                // The server refuses this client: trying again will not change its mind.
                Ok(Err(ClientError::ServerError(error))) => return Err(CloseReason::ServerError(error)),
                Ok(Err(error)) => {
                    tracing::debug!(%error, attempt, "reconnect attempt failed");
                    reason = error.into_close_reason();
                    continue;
                }
                Err(_) => {
                    tracing::debug!(attempt, "reconnect attempt timed out");
                    continue;
                }
            };
            if handshake.version != self.version {
                let changed = format!(
                    "the server now speaks STOMP {} instead of {}: reconnecting cannot go on",
                    handshake.version, self.version
                );
                return Err(CloseReason::Io(Arc::new(std::io::Error::other(changed))));
            }
            self.resume(state, handshake);
            if let Some(request) = held {
                self.on_request(state, request);
            }
            return Ok(());
        }
    }

    /// Takes over a new transport and queues SUBSCRIBE again for every open route.
    fn resume(&mut self, state: &mut State, handshake: Handshake) {
        let Handshake { reader, writer, decoder, read_buf, heart_beat, silence_limit, .. } = handshake;
        (self.reader, self.writer, self.decoder, self.read_buf) = (reader, writer, decoder, read_buf);
        (self.heart_beat, self.silence_limit) = (heart_beat, silence_limit);
        // Bytes meant for the old socket (a half-written frame among them) are dropped; the
        // broker redelivers whatever was not acknowledged, so a parked delivery is dropped too.
        state.write_buf.clear();
        state.parked = None;
        let now = Instant::now();
        (state.last_read, state.last_write) = (now, now);
        for route in state.routes.values() {
            encode(&route.subscribe, self.version, &mut state.write_buf);
        }
    }

    async fn run_loop(&mut self, state: &mut State) -> CloseReason {
        let sleep = tokio::time::sleep_until(Instant::now() + Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            // Dispatch what is already buffered before reading more.
            while state.parked.is_none() {
                match self.decoder.decode(&mut self.read_buf) {
                    Ok(Some(Item::Frame(frame))) => {
                        if let Some(reason) = self.on_frame(state, frame) {
                            return reason;
                        }
                    }
                    Ok(Some(Item::HeartBeat)) => {}
                    Ok(None) => break,
                    Err(e) => return CloseReason::Protocol(e),
                }
            }

            // Without heart-beats the timer stays disarmed (and is never reset).
            let deadline = self.next_deadline(state);
            if let Some(deadline) = deadline
                && sleep.deadline() != deadline
            {
                sleep.as_mut().reset(deadline);
            }
            let take_requests = state.write_buf.len() < WRITE_HIGH_WATER;
            let wants_write = self.writer.wants_write(&state.write_buf);
            let parked = state.parked.is_some();

            tokio::select! {
                read = self.reader.read(&mut self.read_buf), if !parked => match read {
                    Ok(0) => return CloseReason::ServerClosed,
                    Ok(_) => state.last_read = Instant::now(),
                    Err(e) => return e.into_close_reason(),
                },
                room = room_for(&state.parked, &self.unrouted), if parked => {
                    self.unpark(state, room);
                }
                written = self.writer.write(&mut state.write_buf), if wants_write => match written {
                    Ok(()) => state.last_write = Instant::now(),
                    Err(e) => return e.into_close_reason(),
                },
                request = self.requests.recv(), if take_requests => match request {
                    Some(request) => {
                        self.on_request(state, request);
                        // Coalesce whatever else is already queued into the same write.
                        while state.write_buf.len() < WRITE_HIGH_WATER {
                            match self.requests.try_recv() {
                                Ok(request) => self.on_request(state, request),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Every handle is gone: say goodbye without waiting for an answer.
                        if !state.disconnect_sent {
                            encode(&Frame::new(Command::Disconnect), self.version, &mut state.write_buf);
                        }
                        return CloseReason::Dropped;
                    }
                },
                () = &mut sleep, if deadline.is_some() => {
                    let now = Instant::now();
                    if let Some(limit) = self.silence_limit
                        && !parked
                        && now.duration_since(state.last_read) >= limit
                    {
                        return CloseReason::HeartBeatTimeout { silent_for: now - state.last_read };
                    }
                    if let Some(every) = self.heart_beat.send_every
                        && state.write_buf.is_empty()
                        && now.duration_since(state.last_write) >= every
                    {
                        state.write_buf.extend_from_slice(b"\n");
                    }
                }
            }
        }
    }

    /// The next moment a heart-beat must be sent or the server's silence checked; `None` when
    /// neither applies right now.
    fn next_deadline(&self, state: &State) -> Option<Instant> {
        let silence = self.silence_limit.filter(|_| state.parked.is_none()).map(|limit| state.last_read + limit);
        // While bytes are waiting to be written the write itself is the heart-beat.
        let beat =
            self.heart_beat.send_every.filter(|_| state.write_buf.is_empty()).map(|every| state.last_write + every);
        match (silence, beat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_request(&mut self, state: &mut State, request: Request) {
        let Request { frame, receipt, effect } = request;
        match effect {
            Effect::None => {}
            Effect::Subscribe { id, destination, sender } => {
                state.retired.retain(|retired| retired != &id);
                let mut subscribe = frame.clone();
                subscribe.headers.remove(names::RECEIPT);
                state.routes.insert(id, Route { destination, sender, subscribe });
            }
            Effect::Unsubscribe { id } => retire(state, &id),
            Effect::Disconnect => {
                state.disconnect_sent = true;
                state.disconnect_receipt = receipt.as_ref().map(|(id, _)| id.clone());
            }
        }
        if let Some((id, reply)) = receipt {
            state.receipts.insert(id, reply);
        }
        encode(&frame, self.version, &mut state.write_buf);
    }

    /// Handles one frame from the server; `Some` ends the connection.
    fn on_frame(&mut self, state: &mut State, frame: Frame) -> Option<CloseReason> {
        match frame.command {
            Command::Message => {
                self.on_message(state, frame);
                None
            }
            Command::Receipt => {
                let id = frame.headers.get_shared(names::RECEIPT_ID).cloned();
                if let Some(id) = id {
                    let is_disconnect = state.disconnect_receipt.as_ref() == Some(&id);
                    if let Some(reply) = state.receipts.remove(&id) {
                        // The waiter may have timed out; then the receipt is simply late.
                        let _ = reply.send(Ok(frame));
                        if is_disconnect {
                            return Some(CloseReason::Disconnected);
                        }
                        return None;
                    }
                }
                self.unrouted(state, frame);
                None
            }
            Command::Error => {
                let error = ServerError::from_frame(&frame);
                if let Some(id) = &error.receipt_id
                    && let Some(reply) = state.receipts.remove(id.as_str())
                {
                    let _ = reply.send(Err(ClientError::ServerError(error.clone())));
                }
                // Best effort only: the connection is ending, so parking would wait forever.
                let _ = self.unrouted.try_send(frame);
                Some(CloseReason::ServerError(error))
            }
            _ => {
                self.unrouted(state, frame);
                None
            }
        }
    }

    fn on_message(&mut self, state: &mut State, frame: Frame) {
        let subscription = frame.headers.get_shared(names::SUBSCRIPTION).cloned();
        let route = match &subscription {
            Some(id) => state.routes.get(id).map(|route| (id.clone(), route)),
            // STOMP 1.0 servers may leave `subscription` out: route by destination.
            None => frame.header(names::DESTINATION).and_then(|destination| {
                state
                    .routes
                    .iter()
                    .find(|(_, route)| route.destination == destination)
                    .map(|(id, route)| (id.clone(), route))
            }),
        };
        let Some((id, route)) = route else {
            if subscription.is_some_and(|id| state.retired.contains(&id)) {
                tracing::debug!("dropping a MESSAGE that arrived after its UNSUBSCRIBE");
            } else {
                self.unrouted(state, frame);
            }
            return;
        };
        let message = Message::from_frame(frame);
        match route.sender.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let sender = route.sender.clone();
                state.parked = Some(Parked::Message { subscription: id, sender, message });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.abandoned(state, &id),
        }
    }

    /// A frame nobody waits for goes to the unrouted channel. If the user took that channel,
    /// a full channel parks reading (they asked for every frame); if nobody took it yet, a full
    /// channel drops the frame so an application that never looks cannot stall.
    fn unrouted(&mut self, state: &mut State, frame: Frame) {
        match self.unrouted.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => {
                if self.shared.unrouted_taken() {
                    state.parked = Some(Parked::Unrouted(frame));
                } else {
                    tracing::debug!(command = %frame.command, "dropping an unrouted frame: nobody took the unrouted channel");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn unpark(&mut self, state: &mut State, room: Room) {
        let parked = state.parked.take();
        // Reading resumes now; the time spent parked was not the server's silence.
        state.last_read = Instant::now();
        match (parked, room) {
            (Some(Parked::Message { message, .. }), Room::Message(permit)) => {
                permit.send(message);
            }
            (Some(Parked::Unrouted(frame)), Room::Unrouted(permit)) => {
                permit.send(frame);
            }
            (Some(Parked::Message { subscription, .. }), Room::Closed) => {
                self.abandoned(state, &subscription);
            }
            _ => {}
        }
    }

    /// The subscription's stream was dropped without UNSUBSCRIBE reaching us (its `Drop` could
    /// not queue one): stop routing and tell the server.
    fn abandoned(&mut self, state: &mut State, id: &ByteString) {
        retire(state, id);
        if !state.disconnect_sent {
            let frame = Frame::new(Command::Unsubscribe).with_header(names::ID, id.clone());
            encode(&frame, self.version, &mut state.write_buf);
        }
    }
}

fn retire(state: &mut State, id: &ByteString) {
    if state.routes.remove(id).is_some() {
        if state.retired.len() == RETIRED_IDS {
            state.retired.pop_front();
        }
        state.retired.push_back(id.clone());
    }
}

/// Waits for room for the parked delivery. Cancel safe (losing the place in the channel's
/// queue of waiting senders is harmless: we are its only sender that waits).
async fn room_for(parked: &Option<Parked>, unrouted: &mpsc::Sender<Frame>) -> Room {
    match parked {
        Some(Parked::Message { sender, .. }) => match sender.clone().reserve_owned().await {
            Ok(permit) => Room::Message(permit),
            Err(_) => Room::Closed,
        },
        Some(Parked::Unrouted(_)) => match unrouted.clone().reserve_owned().await {
            Ok(permit) => Room::Unrouted(permit),
            Err(_) => Room::Closed,
        },
        None => std::future::pending().await,
    }
}
