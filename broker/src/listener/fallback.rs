//! STOMP for browsers that cannot open a WebSocket: Server-Sent Events carry the broker's bytes
//! to the client, HTTP POSTs carry the client's frames to the broker (Centrifugo's
//! "bidirectional emulation"), on the public WebSocket port.
//!
//! A fallback session is an ordinary STOMP connection: the connection task runs on one end of
//! an in-memory byte pipe exactly as it runs on a TCP socket, so authentication, permissions,
//! limits, heart-beats, receipts and errors are the ones every other transport gets, and a
//! frame here is parsed by the same codec. This module only moves bytes between HTTP requests
//! and that pipe:
//!
//! - `POST {prefix}/sessions` opens a session and answers its URLs (the id is 128 random bits:
//!   holding it is what lets a request post frames into an authenticated session).
//! - `GET {prefix}/sessions/{id}/events` is the event stream. Each event is a chunk of the
//!   broker's STOMP bytes, base64 in `data:` (bodies may hold any byte; SSE carries text lines),
//!   numbered in `id:`. A client whose stream broke reconnects with `Last-Event-ID` (or
//!   `?last_event_id=`) and gets every chunk after it that is still held.
//! - `POST {prefix}/sessions/{id}/frames` writes its body (STOMP bytes) to the session, in order.
//! - `DELETE {prefix}/sessions/{id}` ends the session, as closing a socket would.
//!
//! What is held for resumption is bounded by a byte budget per session: chunks already written
//! to a stream are kept while they fit, the oldest dropped first; chunks not yet written are
//! never dropped; when they alone fill the budget the pipe is not read, so the connection's
//! outbox fills and the slow-consumer rules apply as on any transport. A session with no stream
//! attached for the grace time ends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::public_http::{AllowedOrigins, write_response};

/// Where the fallback's endpoints live on the WebSocket port.
pub const PREFIX: &str = "/stampede-fallback";
/// Where the JavaScript shim is served.
pub const SHIM_PATH: &str = "/stampede-fallback.js";
/// The shim itself: an `IStompSocket` for `@stomp/stompjs` over this transport.
const SHIM: &str = include_str!("stampede-fallback.js");

/// Bytes held per session for resumption (written and not yet written), each chunk counted with
/// [`CHUNK_OVERHEAD_BYTES`], so a stream of one-byte heart-beats is bounded too.
pub const SESSION_BUDGET_BYTES: usize = 256 * 1024;
/// What one held chunk costs besides its bytes (its entry, its allocation).
const CHUNK_OVERHEAD_BYTES: usize = 64;
/// How long a session lives with no event stream attached.
pub const GRACE: Duration = Duration::from_secs(30);
/// A comment line on an idle stream this often keeps proxies from closing it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most bytes in one SSE event.
const CHUNK_BYTES: usize = 16 * 1024;
/// Capacity of the pipe between the HTTP side and the connection task, each way.
const PIPE_BYTES: usize = 64 * 1024;
/// How long a POST body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a request the fallback needs; the head was parsed in [`super::public_http`].
#[derive(Debug)]
pub(crate) struct FallbackRequest {
    pub method: String,
    /// The path without the query, below [`PREFIX`] (e.g. `/sessions/abc/events`).
    pub path: String,
    pub query: String,
    pub origin: Option<String>,
    pub last_event_id: Option<String>,
    pub content_length: Option<usize>,
}

/// Opens the connection task of a new session on one end of a pipe and returns the other end,
/// or refuses (a connection limit) with a status and a sentence.
pub(crate) type Opener<'a> = dyn Fn(SocketAddr) -> Result<DuplexStream, (u16, String)> + Send + Sync + 'a;

/// Every open fallback session of one broker.
pub(crate) struct FallbackSessions {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Largest POST body: the largest frame the broker accepts, plus its head room.
    max_post_bytes: usize,
    /// `ws_allowed_origins`, as for WebSocket.
    allowed_origins: AllowedOrigins,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

struct Session {
    id: String,
    /// Where POSTed frames go; `None` once the session is closed.
    input: tokio::sync::Mutex<Option<WriteHalf<DuplexStream>>>,
    held: Mutex<Held>,
    changed: Notify,
    /// Cancelled by DELETE: the pump stops reading, which ends the connection.
    closed: CancellationToken,
}

/// The chunks held for the event stream.
#[derive(Default)]
struct Held {
    chunks: VecDeque<(u64, Bytes)>,
    /// Cost of every held chunk (bytes plus overhead).
    bytes: usize,
    /// Cost of the held chunks after `written`: those no stream has had yet.
    unwritten: usize,
    /// Id of the next chunk read from the pipe (ids start at 1).
    next_id: u64,
    /// Highest id written to a stream so far.
    written: u64,
    /// Streams attached so far; a new one displaces the one before.
    attachments: u64,
    /// Streams attached now.
    attached: usize,
    detached_since: Option<Instant>,
    /// The connection ended: nothing more will be read.
    ended: bool,
}

impl Held {
    fn first_id(&self) -> u64 {
        self.chunks.front().map_or(self.next_id.max(1), |(id, _)| *id)
    }

    fn push(&mut self, chunk: Bytes) {
        let id = self.next_id;
        self.next_id += 1;
        let cost = cost(&chunk);
        self.bytes += cost;
        self.unwritten += cost;
        self.chunks.push_back((id, chunk));
        self.trim();
    }

    /// Every chunk up to `id` reached a stream.
    fn mark_written(&mut self, id: u64) {
        if id <= self.written {
            return;
        }
        let written = self.written;
        let newly: usize =
            self.chunks.iter().filter(|(chunk, _)| *chunk > written && *chunk <= id).map(|(_, c)| cost(c)).sum();
        self.unwritten -= newly;
        self.written = id;
        self.trim();
    }

    /// Drops written chunks, oldest first, while over the budget.
    fn trim(&mut self) {
        while self.bytes > SESSION_BUDGET_BYTES {
            match self.chunks.front() {
                Some((id, chunk)) if *id <= self.written => {
                    self.bytes -= cost(chunk);
                    self.chunks.pop_front();
                }
                _ => break,
            }
        }
    }
}

fn cost(chunk: &Bytes) -> usize {
    chunk.len() + CHUNK_OVERHEAD_BYTES
}

impl FallbackSessions {
    pub(crate) fn new(
        max_post_bytes: usize,
        allowed_origins: AllowedOrigins,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> FallbackSessions {
        FallbackSessions { sessions: Mutex::default(), max_post_bytes, allowed_origins, tasks, shutdown }
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().expect("fallback sessions").get(id).cloned()
    }

    /// Answers one request below [`PREFIX`] (or the shim) on `stream`.
    pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        self: &Arc<Self>,
        request: FallbackRequest,
        mut stream: S,
        peer: SocketAddr,
        open: &Opener<'_>,
    ) -> std::io::Result<()> {
        let cors = cors_headers(request.origin.as_deref());
        if !self.allowed_origins.allow(request.origin.as_deref()) {
            let body =
                error_json("origin not allowed", "This origin may not open STOMP sessions here (ws_allowed_origins).");
            return respond(&mut stream, 403, "Forbidden", "application/json", "", body.as_bytes()).await;
        }
        if request.method == "OPTIONS" {
            let headers = format!(
                "{cors}Access-Control-Allow-Methods: GET, POST, DELETE, OPTIONS\r\nAccess-Control-Allow-Headers: Content-Type, Last-Event-ID\r\nAccess-Control-Max-Age: 600\r\n"
            );
            return respond(&mut stream, 204, "No Content", "text/plain", &headers, b"").await;
        }
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["sessions"]) => self.open(&mut stream, peer, open, &cors).await,
            ("GET", ["sessions", id, "events"]) => match self.get(id) {
                Some(session) => self.stream_events(session, &request, stream, &cors).await,
                None => not_found(&mut stream, &cors).await,
            },
            ("POST", ["sessions", id, "frames"]) => match self.get(id) {
                Some(session) => self.post_frames(&session, &request, &mut stream, &cors).await,
                None => not_found(&mut stream, &cors).await,
            },
            ("DELETE", ["sessions", id]) => match self.get(id) {
                Some(session) => {
                    self.close(&session).await;
                    respond(&mut stream, 204, "No Content", "text/plain", &cors, b"").await
                }
                None => not_found(&mut stream, &cors).await,
            },
            _ => {
                let body = error_json(
                    "not found",
                    &format!(
                        "The fallback answers POST {PREFIX}/sessions, GET {PREFIX}/sessions/ID/events, POST {PREFIX}/sessions/ID/frames and DELETE {PREFIX}/sessions/ID."
                    ),
                );
                respond(&mut stream, 404, "Not Found", "application/json", &cors, body.as_bytes()).await
            }
        }
    }

    async fn open<S: AsyncWrite + Unpin>(
        self: &Arc<Self>,
        stream: &mut S,
        peer: SocketAddr,
        open: &Opener<'_>,
        cors: &str,
    ) -> std::io::Result<()> {
        let pipe = match open(peer) {
            Ok(pipe) => pipe,
            Err((status, reason)) => {
                let body = error_json("session refused", &reason);
                let headers = format!("{cors}Retry-After: 5\r\n");
                return respond(stream, status, "Service Unavailable", "application/json", &headers, body.as_bytes())
                    .await;
            }
        };
        let id = format!("{:032x}", crate::security::random_128());
        let (output, input) = tokio::io::split(pipe);
        let session = Arc::new(Session {
            id: id.clone(),
            input: tokio::sync::Mutex::new(Some(input)),
            held: Mutex::new(Held { next_id: 1, detached_since: Some(Instant::now()), ..Held::default() }),
            changed: Notify::new(),
            closed: CancellationToken::new(),
        });
        self.sessions.lock().expect("fallback sessions").insert(id.clone(), Arc::clone(&session));
        self.tasks.spawn(Arc::clone(self).pump(session, output));
        debug!(%peer, session = %id, "fallback session opened");
        let body = serde_json::json!({
            "session": id,
            "events": format!("{PREFIX}/sessions/{id}/events"),
            "frames": format!("{PREFIX}/sessions/{id}/frames"),
            "budget_bytes": SESSION_BUDGET_BYTES,
            "grace_ms": GRACE.as_millis() as u64,
        })
        .to_string();
        respond(stream, 201, "Created", "application/json", cors, body.as_bytes()).await
    }

    /// Reads the connection's bytes into held chunks until it ends or the session is closed.
    async fn pump(self: Arc<Self>, session: Arc<Session>, mut output: ReadHalf<DuplexStream>) {
        // An idle session waits on a one-byte read; the chunk's buffer exists only once bytes
        // are there (a buffer kept for the session's life was most of what an idle one cost).
        let mut first = [0u8; 1];
        loop {
            let room = session.held.lock().expect("held").unwritten < SESSION_BUDGET_BYTES;
            let written = session.changed.notified();
            let read = tokio::select! {
                read = output.read(&mut first), if room => Some(read),
                // A stream wrote chunks: there may be room again.
                () = written, if !room => continue,
                () = tokio::time::sleep(Duration::from_secs(1)) => None,
                () = self.shutdown.cancelled() => Some(Ok(0)),
                () = session.closed.cancelled() => Some(Ok(0)),
            };
            match read {
                Some(Ok(0) | Err(_)) => break,
                Some(Ok(_)) => {
                    let mut chunk = BytesMut::with_capacity(CHUNK_BYTES);
                    chunk.put_u8(first[0]);
                    // What else is already in the pipe joins this chunk, without waiting.
                    while chunk.len() < CHUNK_BYTES {
                        match output.read_buf(&mut chunk).now_or_never() {
                            Some(Ok(read)) if read > 0 => {}
                            _ => break,
                        }
                    }
                    // Held chunks keep their allocation: an exact copy, not the 16 KiB buffer.
                    let chunk = Bytes::copy_from_slice(&chunk);
                    session.held.lock().expect("held").push(chunk);
                    session.changed.notify_waiters();
                }
                None => {
                    let abandoned = {
                        let held = session.held.lock().expect("held");
                        held.attached == 0 && held.detached_since.is_some_and(|since| since.elapsed() >= GRACE)
                    };
                    if abandoned || session.input.lock().await.is_none() {
                        break;
                    }
                }
            }
        }
        session.input.lock().await.take();
        {
            let mut held = session.held.lock().expect("held");
            held.ended = true;
        }
        session.changed.notify_waiters();
        // Reading ends here; the held chunks stay reachable for a stream that is still writing
        // them, then the session leaves the table.
        drop(output);
        let deadline = Instant::now() + GRACE;
        loop {
            let done = {
                let held = session.held.lock().expect("held");
                held.written + 1 >= held.next_id || held.attached == 0
            };
            if done || Instant::now() >= deadline || self.shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.sessions.lock().expect("fallback sessions").remove(&session.id);
        session.changed.notify_waiters();
        debug!(session = %session.id, "fallback session ended");
    }

    async fn stream_events<S: AsyncWrite + Unpin>(
        &self,
        session: Arc<Session>,
        request: &FallbackRequest,
        mut stream: S,
        cors: &str,
    ) -> std::io::Result<()> {
        let resume = request.last_event_id.clone().or_else(|| query_value(&request.query, "last_event_id"));
        let after = match resume.as_deref().map(str::parse::<u64>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                let body =
                    error_json("bad Last-Event-ID", "Last-Event-ID must be the number of an event of this session.");
                return respond(&mut stream, 400, "Bad Request", "application/json", cors, body.as_bytes()).await;
            }
        };
        let attached = {
            let mut held = session.held.lock().expect("held");
            let first = held.first_id();
            let cursor = match after {
                Some(id) if id + 1 < first || id >= held.next_id => None,
                Some(id) => Some(id + 1),
                None => Some(first),
            };
            cursor.map(|cursor| {
                held.attachments += 1;
                held.attached += 1;
                held.detached_since = None;
                (cursor, held.attachments)
            })
        };
        let Some((mut cursor, generation)) = attached else {
            let body = error_json(
                "cannot resume",
                "Events after that Last-Event-ID are no longer held (the session's byte budget) or never existed; open a new session.",
            );
            return respond(&mut stream, 410, "Gone", "application/json", cors, body.as_bytes()).await;
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n{cors}\r\nretry: 1000\n\n"
        );
        let result = async {
            stream.write_all(head.as_bytes()).await?;
            stream.flush().await?;
            let mut event = String::new();
            loop {
                let changed = session.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let (batch, ended, displaced) = {
                    let held = session.held.lock().expect("held");
                    let batch: Vec<(u64, Bytes)> =
                        held.chunks.iter().filter(|(id, _)| *id >= cursor).cloned().collect();
                    (batch, held.ended, held.attachments != generation)
                };
                if displaced {
                    return Ok(());
                }
                if batch.is_empty() {
                    if ended {
                        stream.write_all(b"event: end\ndata:\n\n").await?;
                        return stream.flush().await;
                    }
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep(KEEP_ALIVE) => {
                            stream.write_all(b": keep-alive\n\n").await?;
                            stream.flush().await?;
                        }
                        () = self.shutdown.cancelled() => return Ok(()),
                    }
                    continue;
                }
                for (id, chunk) in batch {
                    event.clear();
                    event.push_str("id: ");
                    event.push_str(itoa::Buffer::new().format(id));
                    event.push_str("\ndata: ");
                    base64::engine::general_purpose::STANDARD.encode_string(&chunk, &mut event);
                    event.push_str("\n\n");
                    stream.write_all(event.as_bytes()).await?;
                    cursor = id + 1;
                }
                stream.flush().await?;
                session.held.lock().expect("held").mark_written(cursor - 1);
                session.changed.notify_waiters();
            }
        }
        .await;
        let mut held = session.held.lock().expect("held");
        held.attached -= 1;
        if held.attached == 0 {
            held.detached_since = Some(Instant::now());
        }
        result
    }

    async fn post_frames<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        session: &Session,
        request: &FallbackRequest,
        stream: &mut S,
        cors: &str,
    ) -> std::io::Result<()> {
        let Some(length) = request.content_length else {
            let body = error_json("length required", "POST the frames with a Content-Length.");
            return respond(stream, 411, "Length Required", "application/json", cors, body.as_bytes()).await;
        };
        if length > self.max_post_bytes {
            let body = error_json(
                "body too large",
                &format!(
                    "{length} bytes is over the {} bytes one POST may carry (max_body + max_header_bytes).",
                    self.max_post_bytes
                ),
            );
            return respond(stream, 413, "Content Too Large", "application/json", cors, body.as_bytes()).await;
        }
        let mut body = vec![0u8; length];
        match tokio::time::timeout(BODY_TIMEOUT, stream.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                let body = error_json("body timed out", "The request body did not arrive in time.");
                return respond(stream, 408, "Request Timeout", "application/json", cors, body.as_bytes()).await;
            }
        }
        let mut input = session.input.lock().await;
        let written = match input.as_mut() {
            Some(pipe) => pipe.write_all(&body).await.is_ok(),
            None => false,
        };
        drop(input);
        if written {
            respond(stream, 204, "No Content", "text/plain", cors, b"").await
        } else {
            let body = error_json("session ended", "This STOMP session has ended; open a new one.");
            respond(stream, 410, "Gone", "application/json", cors, body.as_bytes()).await
        }
    }

    /// Ends a session as a closed socket would: the connection task sees end of input.
    async fn close(&self, session: &Session) {
        session.closed.cancel();
        session.input.lock().await.take();
        session.changed.notify_waiters();
    }
}

/// Serves the shim.
pub(crate) async fn serve_shim<S: AsyncWrite + Unpin>(stream: &mut S, head_only: bool) -> std::io::Result<()> {
    let content_type = "text/javascript; charset=utf-8";
    write_response(stream, (200, "OK"), content_type, "Cache-Control: no-cache\r\n", SHIM.as_bytes(), head_only).await
}

/// One pipe for a new session: the connection task gets one end, the session the other.
pub(crate) fn pipe() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(PIPE_BYTES)
}

fn cors_headers(origin: Option<&str>) -> String {
    match origin {
        Some(origin) if origin.chars().all(|c| c.is_ascii_graphic()) => {
            format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n")
        }
        _ => String::new(),
    }
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

fn error_json(error: &str, reason: &str) -> String {
    serde_json::json!({ "error": error, "reason": reason }).to_string()
}

async fn not_found<S: AsyncWrite + Unpin>(stream: &mut S, cors: &str) -> std::io::Result<()> {
    let body = error_json("no such session", "The session does not exist or has ended; open a new one.");
    respond(stream, 404, "Not Found", "application/json", cors, body.as_bytes()).await
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write_response(stream, (status, reason), content_type, extra_headers, body, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_chunks_are_dropped_oldest_first_and_unwritten_ones_never() {
        let mut held = Held { next_id: 1, ..Held::default() };
        for _ in 0..40 {
            held.push(Bytes::from(vec![0u8; CHUNK_BYTES]));
        }
        assert_eq!(held.chunks.len(), 40, "nothing written yet: nothing may be dropped");
        assert_eq!(held.unwritten, held.bytes);
        held.mark_written(30);
        assert!(held.bytes <= SESSION_BUDGET_BYTES);
        assert_eq!(held.unwritten, 10 * (CHUNK_BYTES + CHUNK_OVERHEAD_BYTES));
        let kept = (SESSION_BUDGET_BYTES / (CHUNK_BYTES + CHUNK_OVERHEAD_BYTES)) as u64;
        assert_eq!(held.first_id(), 41 - kept);
    }

    #[test]
    fn one_byte_chunks_count_their_overhead_against_the_budget() {
        let mut held = Held { next_id: 1, ..Held::default() };
        for _ in 0..100_000 {
            held.push(Bytes::from_static(b"\n"));
            let last = held.next_id - 1;
            held.mark_written(last);
        }
        assert!(held.chunks.len() <= SESSION_BUDGET_BYTES / (1 + CHUNK_OVERHEAD_BYTES), "{}", held.chunks.len());
        assert_eq!(held.unwritten, 0);
    }

    #[test]
    fn the_last_event_id_is_also_read_from_the_query() {
        assert_eq!(query_value("a=1&last_event_id=7", "last_event_id").as_deref(), Some("7"));
        assert_eq!(query_value("", "last_event_id"), None);
    }
}
