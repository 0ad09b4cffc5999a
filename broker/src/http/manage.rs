//! The management endpoints of `/api/v1/`: connections, queues, topics and durable
//! subscriptions, listed, inspected and acted on.
//!
//! Listings are paginated the way RabbitMQ's are (`page`, `page_size` up to
//! [`MAX_PAGE_SIZE`], a `name` substring filter, `sort` and `sort_reverse`), and answer with the
//! page and the counts a client needs to page on. They are built from what the broker keeps
//! anyway: the connection registry's entries, and each queue handle's counters, which the
//! queue's actor publishes after every batch. Handles are copied under each table's lock and
//! everything after (filtering, sorting, serialising) runs with no lock held, so a listing
//! never stalls a publisher. Actions that change a queue (purge, peek, moving dead letters)
//! are messages to the queue's actor, which does them between two batches of its own work,
//! exactly like a client's command: nothing is done to a queue behind its actor's back.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use stampede_protocol::{Headers, MessageTemplate, names};

use crate::destination::queue::{DeleteRefused, PurgeError, QueueCounts, QueueHandle, QueueRates, QueuedMessage};
use crate::destination::router::{Ownership, Router as DestinationRouter};
use crate::error::ErrorKind;
use crate::http::{Admin, ApiError, ApiJson, SharedState};
use crate::registry::{CloseRequest, ConnectionEntry};

/// Largest `page_size` a listing accepts (RabbitMQ's limit).
pub const MAX_PAGE_SIZE: usize = 500;
/// `page_size` when none is given.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most messages one peek returns.
pub const MAX_PEEK: usize = 500;
/// Most body bytes one peeked message shows.
pub const MAX_EXCERPT: usize = 64 * 1024;
/// Most dead letters one move request handles.
pub const MAX_MOVE: usize = 100_000;
/// Longest `X-Reason` kept for a connection's ERROR.
const MAX_REASON: usize = 256;

/// The routes this module adds to `/api/v1/`.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/connections", get(list_connections))
        .route("/connections/{id}", get(show_connection).delete(close_connection))
        .route("/queues", get(list_queues))
        .route("/queues/{vhost}/{name}", get(show_queue).delete(delete_queue))
        .route("/queues/{vhost}/{name}/contents", delete(purge_queue))
        .route("/queues/{vhost}/{name}/peek", post(peek_queue))
        .route("/queues/{vhost}/{name}/move", post(move_dead_letters))
        .route("/topics", get(list_topics))
        .route("/subscriptions/durable", get(list_durables))
        .route("/subscriptions/durable/{vhost}/{name}", delete(delete_durable))
}

/// Query parameters as a struct, with a malformed query a 400 [`ApiError`].
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// The query of every listing. Values are taken as text and checked here, so that each bad
/// one gets an error naming it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    /// 1-based page number.
    pub page: Option<String>,
    /// Items per page, 1..=500.
    pub page_size: Option<String>,
    /// Keep only items whose name contains this (case-insensitive).
    pub name: Option<String>,
    /// Field to sort by.
    pub sort: Option<String>,
    /// `true` to sort descending.
    pub sort_reverse: Option<String>,
    /// Keep only this virtual host (queues, topics, durable subscriptions).
    pub vhost: Option<String>,
}

/// Checked paging and sorting.
#[derive(Debug)]
struct Paging {
    page: usize,
    page_size: usize,
    name: Option<String>,
    sort: Option<String>,
    reverse: bool,
}

impl ListQuery {
    fn paging(&self, sort_keys: &[&str]) -> Result<Paging, ApiError> {
        let number = |field: &str, value: &Option<String>, default: usize| -> Result<usize, ApiError> {
            match value.as_deref() {
                None => Ok(default),
                Some(text) => text.trim().parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!("{field} must be a positive whole number, not {text:?}"))
                }),
            }
        };
        let page = number("page", &self.page, 1)?;
        if page == 0 {
            return Err(ApiError::bad_request("page starts at 1"));
        }
        let page_size = number("page_size", &self.page_size, DEFAULT_PAGE_SIZE)?;
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(ApiError::bad_request(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}"
            )));
        }
        if let Some(sort) = &self.sort
            && !sort_keys.contains(&sort.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "cannot sort by {sort:?}: sort by one of {}",
                sort_keys.join(", ")
            )));
        }
        let reverse = match self.sort_reverse.as_deref() {
            None => false,
            Some(text) => crate::config::values::parse_bool(text)
                .map_err(|_| ApiError::bad_request(format!("sort_reverse must be true or false, not {text:?}")))?,
        };
        Ok(Paging {
            page,
            page_size,
            name: self.name.as_ref().filter(|n| !n.is_empty()).map(|n| n.to_lowercase()),
            sort: self.sort.clone(),
            reverse,
        })
    }
}

/// One page of a listing.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// This page's number (from 1).
    pub page: usize,
    /// Items per page asked for.
    pub page_size: usize,
    /// Pages the filtered items fill.
    pub page_count: usize,
    /// Items on this page.
    pub item_count: usize,
    /// Items that passed the filter.
    pub filtered_count: usize,
    /// Items before filtering.
    pub total_count: usize,
}

impl Paging {
    fn matches(&self, name: &str) -> bool {
        self.name.as_ref().is_none_or(|wanted| name.to_lowercase().contains(wanted.as_str()))
    }

    /// Sorts `items` by `key` (reversed if asked), then cuts this page out and renders it.
    fn page<I, K: Ord, T>(
        &self,
        mut items: Vec<I>,
        total: usize,
        key: impl Fn(&I) -> K,
        render: impl Fn(&I) -> T,
    ) -> Page<T> {
        items.sort_by_cached_key(|item| key(item));
        if self.reverse {
            items.reverse();
        }
        let filtered = items.len();
        let start = (self.page - 1).saturating_mul(self.page_size);
        let rendered: Vec<T> = items.iter().skip(start).take(self.page_size).map(render).collect();
        Page {
            item_count: rendered.len(),
            items: rendered,
            page: self.page,
            page_size: self.page_size,
            page_count: filtered.div_ceil(self.page_size),
            filtered_count: filtered,
            total_count: total,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// A connection, as listed and shown.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    /// The session id (the `session` header of its CONNECTED).
    pub id: String,
    /// The client's address.
    pub peer: String,
    /// `tcp`, `tls`, `ws`, `wss` or `sse`.
    pub transport: &'static str,
    /// The user (`null`: anonymous, or not yet connected).
    pub user: Option<String>,
    /// The virtual host (`null` before CONNECT).
    pub vhost: Option<String>,
    /// The negotiated STOMP version (`null` before CONNECT).
    pub stomp_version: Option<&'static str>,
    /// Heart-beat the broker sends, in ms (0 = none).
    pub heartbeat_send_ms: u64,
    /// Heart-beat the broker expects, in ms (0 = none).
    pub heartbeat_receive_ms: u64,
    /// Subscriptions held.
    pub subscriptions: u32,
    /// Deliveries not yet acknowledged.
    pub pending_acks: u32,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames (and heart-beats) sent.
    pub frames_out: u64,
    /// Bytes waiting in its outbox.
    pub outbox_bytes: usize,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: u64,
}

impl ConnectionView {
    fn of(entry: &ConnectionEntry) -> ConnectionView {
        use std::sync::atomic::Ordering::Relaxed;
        let identity = entry.identity();
        ConnectionView {
            id: entry.id.to_string(),
            peer: entry.peer.to_string(),
            transport: entry.transport.as_str(),
            user: identity.and_then(|i| i.user.as_deref().map(str::to_owned)),
            vhost: identity.map(|i| i.vhost.to_string()),
            stomp_version: identity.map(|i| i.version.as_str()),
            heartbeat_send_ms: identity.map_or(0, |i| u64::from(i.heartbeat_send_ms)),
            heartbeat_receive_ms: identity.map_or(0, |i| u64::from(i.heartbeat_receive_ms)),
            subscriptions: entry.subscriptions.load(Relaxed),
            pending_acks: entry.pending_acks.load(Relaxed),
            bytes_in: entry.bytes_in.load(Relaxed),
            bytes_out: entry.bytes_out.load(Relaxed),
            frames_in: entry.frames_in.load(Relaxed),
            frames_out: entry.frames_out.load(Relaxed),
            outbox_bytes: entry.outbox_bytes(),
            connected_at_ms: entry.connected_at_ms,
        }
    }
}

const CONNECTION_SORTS: [&str; 8] =
    ["id", "user", "peer", "connected_at", "bytes_in", "bytes_out", "pending_acks", "outbox_bytes"];

/// A sort key of mixed type.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Number(u64, String),
    Text(String, String),
}

async fn list_connections(
    _: Admin,
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Page<ConnectionView>>, ApiError> {
    let paging = query.paging(&CONNECTION_SORTS)?;
    let all = state.registry.snapshot();
    let total = all.len();
    let matching: Vec<Arc<ConnectionEntry>> = all
        .into_iter()
        .filter(|entry| {
            paging.name.is_none()
                || paging.matches(&entry.id)
                || paging.matches(&entry.peer.to_string())
                || entry.identity().and_then(|i| i.user.as_deref()).is_some_and(|user| paging.matches(user))
        })
        .collect();
    let sort = paging.sort.clone().unwrap_or_else(|| "id".to_owned());
    let key = |entry: &Arc<ConnectionEntry>| {
        use std::sync::atomic::Ordering::Relaxed;
        let id = entry.id.to_string();
        match sort.as_str() {
            "user" => Key::Text(entry.identity().and_then(|i| i.user.as_deref()).unwrap_or_default().to_owned(), id),
            "peer" => Key::Text(entry.peer.to_string(), id),
            "connected_at" => Key::Number(entry.connected_at_ms, id),
            "bytes_in" => Key::Number(entry.bytes_in.load(Relaxed), id),
            "bytes_out" => Key::Number(entry.bytes_out.load(Relaxed), id),
            "pending_acks" => Key::Number(u64::from(entry.pending_acks.load(Relaxed)), id),
            "outbox_bytes" => Key::Number(entry.outbox_bytes() as u64, id),
            _ => Key::Text(id.clone(), id),
        }
    };
    Ok(ApiJson(paging.page(matching, total, key, |entry| ConnectionView::of(entry))))
}

async fn show_connection(
    _: Admin,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<ApiJson<ConnectionView>, ApiError> {
    let entry = state.registry.get(&id).ok_or_else(|| no_connection(&id))?;
    Ok(ApiJson(ConnectionView::of(&entry)))
}

fn no_connection(id: &str) -> ApiError {
    ApiError::not_found(format!("no open connection {id:?} (GET /api/v1/connections lists them)"))
}

async fn close_connection(
    Admin(admin): Admin,
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let entry = state.registry.get(&id).ok_or_else(|| no_connection(&id))?;
    let reason = match headers.get("x-reason") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Reason must be visible ASCII text"))?
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON)
                .collect::<String>(),
        ),
    };
    let message = match reason.as_deref().filter(|r| !r.is_empty()) {
        Some(reason) => format!("connection closed by an administrator: {reason}"),
        None => "connection closed by an administrator".to_owned(),
    };
    tracing::info!(
        connection = %id,
        admin = admin.name.as_deref().unwrap_or("(anonymous)"),
        reason = %message,
        "closing a connection on request"
    );
    entry.request_close(CloseRequest { kind: ErrorKind::Request, message });
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Queues

/// A queue, as listed and shown.
#[derive(Debug, Serialize)]
pub struct QueueView {
    /// Its name without `/queue/`.
    pub name: String,
    /// Its virtual host.
    pub vhost: String,
    /// Whether its persistent messages are stored.
    pub durable: bool,
    /// Messages waiting.
    pub messages_ready: usize,
    /// Messages held for a later time (delayed sends, delayed redeliveries).
    pub messages_delayed: usize,
    /// Messages delivered and not yet acknowledged.
    pub messages_unacked: usize,
    /// Consumers attached.
    pub consumers: usize,
    /// Messages dropped (overflow, expiry) since it started.
    pub messages_dropped: u64,
    /// Its dead-letter queue's name (`null` when it is one).
    pub dlq: Option<String>,
    /// True when it is a dead-letter queue.
    pub is_dlq: bool,
    /// No messages and no consumers.
    pub idle: bool,
    /// Since when it has been idle, in ms since the epoch (`null` while it is not).
    pub idle_since: Option<u64>,
    /// How long it may stay idle before it is deleted, in ms (`queue_idle_expiry_ms`,
    /// `[queues.<name>] idle_expiry_ms` or `x-expires`); `null`: it is never deleted for it.
    pub idle_expiry_ms: Option<u64>,
    /// Messages accepted, delivered and acknowledged since the queue started.
    pub counts: QueueCounts,
    /// The same, per second over about the last five seconds.
    pub rates: QueueRates,
}

fn queue_view(router: &DestinationRouter, queue: &QueueHandle) -> QueueView {
    let (ready, unacked, consumers) = (queue.depth(), queue.unacked(), queue.consumer_count());
    let delayed = queue.delayed();
    QueueView {
        name: queue.name().to_string(),
        vhost: router.vhost().to_owned(),
        durable: queue.is_durable(),
        messages_ready: ready,
        messages_delayed: delayed,
        messages_unacked: unacked,
        consumers,
        messages_dropped: queue.dropped(),
        dlq: router.dead_letter_queue_name(queue.name()),
        is_dlq: router.is_dead_letter_queue(queue.name()),
        idle: ready == 0 && delayed == 0 && unacked == 0 && consumers == 0,
        idle_since: queue.idle_since_ms(),
        idle_expiry_ms: queue.idle_expiry_ms(),
        counts: queue.counts(),
        rates: queue.rates(),
    }
}

const QUEUE_SORTS: [&str; 5] = ["name", "vhost", "messages_ready", "messages_unacked", "consumers"];

async fn list_queues(
    _: Admin,
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Page<QueueView>>, ApiError> {
    let paging = query.paging(&QUEUE_SORTS)?;
    let mut all: Vec<(Arc<DestinationRouter>, QueueHandle)> = Vec::new();
    for router in state.vhosts.routers() {
        if query.vhost.as_deref().is_some_and(|wanted| wanted != router.vhost()) {
            continue;
        }
        for queue in router.queues() {
            all.push((Arc::clone(&router), queue));
        }
    }
    let total = all.len();
    all.retain(|(_, queue)| paging.matches(queue.name()));
    let sort = paging.sort.clone().unwrap_or_else(|| "name".to_owned());
    let key = |(router, queue): &(Arc<DestinationRouter>, QueueHandle)| {
        let tie = format!("{}\u{0}{}", queue.name(), router.vhost());
        match sort.as_str() {
            "vhost" => Key::Text(format!("{}\u{0}{}", router.vhost(), queue.name()), tie),
            "messages_ready" => Key::Number(queue.depth() as u64, tie),
            "messages_unacked" => Key::Number(queue.unacked() as u64, tie),
            "consumers" => Key::Number(queue.consumer_count() as u64, tie),
            _ => Key::Text(tie.clone(), tie),
        }
    };
    Ok(ApiJson(paging.page(all, total, key, |(router, queue)| queue_view(router, queue))))
}

/// The router and queue a `{vhost}/{name}` path names, or a 404 saying which is missing.
fn find_queue(state: &SharedState, vhost: &str, name: &str) -> Result<(Arc<DestinationRouter>, QueueHandle), ApiError> {
    let name = name.strip_prefix("/queue/").unwrap_or(name);
    let router = state.vhosts.existing_router(vhost).ok_or_else(|| {
        ApiError::not_found(format!("no virtual host {vhost:?} (the default one is \"/\", written %2F in a path)"))
    })?;
    let queue = router
        .queue(name)
        .ok_or_else(|| ApiError::not_found(format!("no queue {name:?} in virtual host {vhost:?}")))?;
    Ok((router, queue))
}

async fn show_queue(
    _: Admin,
    State(state): State<SharedState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<ApiJson<QueueView>, ApiError> {
    let (router, queue) = find_queue(&state, &vhost, &name)?;
    Ok(ApiJson(queue_view(&router, &queue)))
}

/// `if-empty` and `if-unused` of `DELETE queues/{vhost}/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeleteQuery {
    /// Refuse (409) unless no message waits or is unacknowledged.
    #[serde(rename = "if-empty")]
    pub if_empty: Option<String>,
    /// Refuse (409) unless no consumer is attached.
    #[serde(rename = "if-unused")]
    pub if_unused: Option<String>,
}

fn flag(name: &str, value: &Option<String>) -> Result<bool, ApiError> {
    match value.as_deref() {
        None => Ok(false),
        Some(text) => crate::config::values::parse_bool(text)
            .map_err(|_| ApiError::bad_request(format!("{name} must be true or false, not {text:?}"))),
    }
}

async fn delete_queue(
    _: Admin,
    State(state): State<SharedState>,
    Path((vhost, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let if_empty = flag("if-empty", &query.if_empty)?;
    let if_unused = flag("if-unused", &query.if_unused)?;
    let (router, queue) = find_queue(&state, &vhost, &name)?;
    if if_empty || if_unused {
        // Decided by the queue's actor, in order with publishes: see Router::delete_queue_if.
        router.delete_queue_if(&queue, if_empty, if_unused).await.map_err(|refused| match refused {
            DeleteRefused::Gone(gone) => ApiError::not_found(gone.to_string()),
            refused => ApiError::conflict(refused.to_string()),
        })?;
    } else {
        router.delete_queue(queue.name(), true).await;
    }
    tracing::info!(queue = %queue.name(), %vhost, "queue deleted on request");
    Ok(StatusCode::NO_CONTENT)
}

/// What a purge removed.
#[derive(Debug, Serialize)]
pub struct Purged {
    /// Waiting messages removed.
    pub purged: usize,
}

async fn purge_queue(
    _: Admin,
    State(state): State<SharedState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<ApiJson<Purged>, ApiError> {
    let (_, queue) = find_queue(&state, &vhost, &name)?;
    let purged = queue.purge().await.map_err(|error| match error {
        PurgeError::Gone(gone) => ApiError::not_found(gone.to_string()),
        PurgeError::NotStored(reason) => ApiError::internal(reason),
    })?;
    tracing::info!(queue = %queue.name(), %vhost, purged, "queue purged on request");
    Ok(ApiJson(Purged { purged }))
}

/// The body of `POST .../peek` (every field optional; the body may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeekRequest {
    /// How many messages, from the head (default 10, at most 500).
    pub count: Option<usize>,
    /// Body bytes shown per message (default 1024, at most 64 KiB).
    pub excerpt_bytes: Option<usize>,
}

/// A peeked message.
#[derive(Debug, Serialize)]
pub struct PeekedMessage {
    /// Its `message-id`.
    pub message_id: String,
    /// Its headers (the first value of each).
    pub headers: BTreeMap<String, String>,
    /// The start of its body: text if it is UTF-8, else base64.
    pub body_excerpt: String,
    /// `utf8` or `base64`.
    pub body_encoding: &'static str,
    /// The whole body's size.
    pub body_bytes: usize,
    /// True when the excerpt is shorter than the body.
    pub truncated: bool,
    /// Times it was delivered before.
    pub delivery_count: u32,
    /// Whether it was sent persistent.
    pub persistent: bool,
    /// When it was accepted, ms since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// When it expires, ms since the Unix epoch (`null`: never).
    pub expires_at_ms: Option<u64>,
}

/// What a peek found.
#[derive(Debug, Serialize)]
pub struct Peeked {
    /// The messages, head first.
    pub messages: Vec<PeekedMessage>,
    /// How many.
    pub count: usize,
    /// Messages waiting in all.
    pub messages_ready: usize,
}

fn peeked(message: &QueuedMessage, excerpt: usize) -> PeekedMessage {
    let mut headers = BTreeMap::new();
    for (name, value) in message.template.headers().iter() {
        headers.entry(name.to_string()).or_insert_with(|| value.to_string());
    }
    let body = message.template.body();
    let mut end = body.len().min(excerpt);
    let (body_excerpt, body_encoding) = match std::str::from_utf8(body) {
        Ok(text) => {
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (text[..end].to_owned(), "utf8")
        }
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&body[..end]), "base64"),
    };
    PeekedMessage {
        message_id: message.id.to_string(),
        headers,
        body_excerpt,
        body_encoding,
        body_bytes: body.len(),
        truncated: end < body.len(),
        delivery_count: message.delivery_count,
        persistent: message.persistent,
        enqueued_at_ms: message.enqueued_at_ms,
        expires_at_ms: message.expires_at_ms.filter(|&at| at != 0),
    }
}

async fn peek_queue(
    _: Admin,
    State(state): State<SharedState>,
    Path((vhost, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<ApiJson<Peeked>, ApiError> {
    let request: PeekRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PeekRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid peek request: {e}")))?
    };
    let count = request.count.unwrap_or(10);
    if count == 0 || count > MAX_PEEK {
        return Err(ApiError::bad_request(format!("count must be between 1 and {MAX_PEEK}, not {count}")));
    }
    let excerpt = request.excerpt_bytes.unwrap_or(1024);
    if excerpt > MAX_EXCERPT {
        return Err(ApiError::bad_request(format!("excerpt_bytes must be at most {MAX_EXCERPT}, not {excerpt}")));
    }
    let (_, queue) = find_queue(&state, &vhost, &name)?;
    let copies = queue.peek(count).await.map_err(|gone| ApiError::not_found(gone.to_string()))?;
    let messages: Vec<PeekedMessage> = copies.iter().map(|m| peeked(m, excerpt)).collect();
    Ok(ApiJson(Peeked { count: messages.len(), messages, messages_ready: queue.depth() }))
}

/// What moving dead letters did.
#[derive(Debug, Serialize)]
pub struct Moved {
    /// Messages now back in their original queues.
    pub moved: usize,
    /// Messages left in the dead-letter queue because they name no original queue.
    pub skipped: usize,
    /// Messages left because their original queue refused them (full), with its reason.
    pub refused: usize,
    /// Why the first refused message was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// The headers a dead letter goes back with: `destination` restored, the dead-letter headers gone.
fn original_headers(template: &MessageTemplate, original: &str) -> Headers {
    let mut headers = Headers::with_capacity(template.headers().len());
    for (name, value) in template.headers().iter_shared() {
        match &**name {
            names::DESTINATION => headers.push(names::DESTINATION, original.to_owned()),
            "x-original-destination" | "x-dead-letter-reason" => {}
            _ => headers.push(name.clone(), value.clone()),
        }
    }
    headers
}

async fn move_dead_letters(
    _: Admin,
    State(state): State<SharedState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<ApiJson<Moved>, ApiError> {
    let (router, dlq) = find_queue(&state, &vhost, &name)?;
    if !router.is_dead_letter_queue(dlq.name()) {
        return Err(ApiError::conflict(format!(
            "queue {} is not a dead-letter queue (its name does not start with the dead_letter_prefix)",
            dlq.name()
        )));
    }
    let letters = dlq.peek(MAX_MOVE).await.map_err(|gone| ApiError::not_found(gone.to_string()))?;
    let mut result = Moved { moved: 0, skipped: 0, refused: 0, refusal: None };
    // Each message is accepted (and stored, if persistent) by its original queue before the
    // dead-letter queue forgets it: a failure in between leaves a copy in both, never none.
    let mut verdicts = Vec::new();
    for letter in letters {
        let original = letter.template.headers().get("x-original-destination").map(str::to_owned);
        let Some(target) = original.as_deref().and_then(|d| d.strip_prefix("/queue/")) else {
            result.skipped += 1;
            continue;
        };
        let queue = router.queue_or_create(target);
        let headers = original_headers(&letter.template, original.as_deref().unwrap_or_default());
        let message = QueuedMessage {
            id: letter.id,
            template: Arc::new(MessageTemplate::new(headers, letter.template.body().clone())),
            delivery_count: 0,
            persistent: letter.persistent,
            expires_at_ms: None,
            enqueued_at_ms: crate::destination::queue::now_ms(),
        };
        match queue.publish(message).await {
            Ok(verdict) => verdicts.push((letter.id, verdict)),
            Err(gone) => {
                result.refused += 1;
                result.refusal.get_or_insert_with(|| gone.to_string());
            }
        }
    }
    let mut moved_ids = Vec::with_capacity(verdicts.len());
    for (id, verdict) in verdicts {
        match verdict.await {
            Ok(Ok(())) => moved_ids.push(id),
            Ok(Err(error)) => {
                result.refused += 1;
                result.refusal.get_or_insert(error.message);
            }
            Err(_) => {
                result.refused += 1;
                result.refusal.get_or_insert_with(|| "the original queue stopped".to_owned());
            }
        }
    }
    result.moved = dlq.remove_waiting(moved_ids).await.map_err(|gone| ApiError::not_found(gone.to_string()))?;
    tracing::info!(queue = %dlq.name(), %vhost, moved = result.moved, skipped = result.skipped, refused = result.refused, "dead letters moved back on request");
    Ok(ApiJson(result))
}

// ---------------------------------------------------------------------------------------------
// Topics and durable subscriptions

/// A topic with subscribers.
#[derive(Debug, Serialize)]
pub struct TopicView {
    /// Its name without `/topic/`.
    pub name: String,
    /// Its virtual host.
    pub vhost: String,
    /// Subscribers now (wildcard subscribers that match it included).
    pub subscribers: usize,
}

const TOPIC_SORTS: [&str; 3] = ["name", "vhost", "subscribers"];

async fn list_topics(
    _: Admin,
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Page<TopicView>>, ApiError> {
    let paging = query.paging(&TOPIC_SORTS)?;
    let mut all: Vec<TopicView> = Vec::new();
    for router in state.vhosts.routers() {
        if query.vhost.as_deref().is_some_and(|wanted| wanted != router.vhost()) {
            continue;
        }
        for (name, subscribers) in router.topic_subscriber_counts() {
            all.push(TopicView { name: name.to_string(), vhost: router.vhost().to_owned(), subscribers });
        }
    }
    let total = all.len();
    all.retain(|topic| paging.matches(&topic.name));
    let sort = paging.sort.clone().unwrap_or_else(|| "name".to_owned());
    let key = |topic: &TopicView| {
        let tie = format!("{}\u{0}{}", topic.name, topic.vhost);
        match sort.as_str() {
            "vhost" => Key::Text(format!("{}\u{0}{}", topic.vhost, topic.name), tie),
            "subscribers" => Key::Number(topic.subscribers as u64, tie),
            _ => Key::Text(tie.clone(), tie),
        }
    };
    Ok(ApiJson(paging.page(all, total, key, |topic| TopicView {
        name: topic.name.clone(),
        vhost: topic.vhost.clone(),
        subscribers: topic.subscribers,
    })))
}

/// A durable subscription.
#[derive(Debug, Serialize)]
pub struct DurableView {
    /// Its name (the subscriber's `activemq.subscriptionName` / `durable-subscription-name`).
    pub name: String,
    /// Its virtual host.
    pub vhost: String,
    /// The topic (or pattern) it follows, without `/topic/`.
    pub topic: String,
    /// The user that owns it (`null`: anonymous, or stored before owners were kept).
    pub owner: Option<String>,
    /// True when a subscriber is attached now.
    pub active: bool,
    /// Messages waiting for it.
    pub messages_ready: usize,
    /// Messages delivered and not yet acknowledged.
    pub messages_unacked: usize,
}

async fn list_durables(
    _: Admin,
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Page<DurableView>>, ApiError> {
    let paging = query.paging(&["name", "vhost", "topic", "messages_ready"])?;
    let mut all: Vec<DurableView> = Vec::new();
    for router in state.vhosts.routers() {
        if query.vhost.as_deref().is_some_and(|wanted| wanted != router.vhost()) {
            continue;
        }
        for (name, topic, owner, queue) in router.durable_subscriptions() {
            all.push(DurableView {
                name,
                vhost: router.vhost().to_owned(),
                topic: topic.to_string(),
                owner: match owner {
                    Ownership::User(user) => user,
                    Ownership::Unclaimed => None,
                },
                active: queue.consumer_count() > 0,
                messages_ready: queue.depth(),
                messages_unacked: queue.unacked(),
            });
        }
    }
    let total = all.len();
    all.retain(|durable| paging.matches(&durable.name));
    let sort = paging.sort.clone().unwrap_or_else(|| "name".to_owned());
    let key = |d: &DurableView| {
        let tie = format!("{}\u{0}{}", d.name, d.vhost);
        match sort.as_str() {
            "vhost" => Key::Text(format!("{}\u{0}{}", d.vhost, d.name), tie),
            "topic" => Key::Text(d.topic.clone(), tie),
            "messages_ready" => Key::Number(d.messages_ready as u64, tie),
            _ => Key::Text(tie.clone(), tie),
        }
    };
    Ok(ApiJson(paging.page(all, total, key, |d| DurableView {
        name: d.name.clone(),
        vhost: d.vhost.clone(),
        topic: d.topic.clone(),
        owner: d.owner.clone(),
        active: d.active,
        messages_ready: d.messages_ready,
        messages_unacked: d.messages_unacked,
    })))
}

async fn delete_durable(
    _: Admin,
    State(state): State<SharedState>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let router = state
        .vhosts
        .existing_router(&vhost)
        .ok_or_else(|| ApiError::not_found(format!("no virtual host {vhost:?}")))?;
    if !router.remove_durable_subscription(&name).await {
        return Err(ApiError::not_found(format!("no durable subscription {name:?} in virtual host {vhost:?}")));
    }
    tracing::info!(subscription = %name, %vhost, "durable subscription deleted on request");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(page: Option<&str>, page_size: Option<&str>) -> ListQuery {
        ListQuery { page: page.map(str::to_owned), page_size: page_size.map(str::to_owned), ..ListQuery::default() }
    }

    #[test]
    fn page_sizes_outside_one_to_five_hundred_are_refused_naming_the_field() {
        for bad in ["0", "501", "-1", "ten"] {
            let error = query(None, Some(bad)).paging(&QUEUE_SORTS).expect_err(bad);
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(error.reason.contains("page_size"), "{}", error.reason);
        }
        assert!(query(Some("0"), None).paging(&QUEUE_SORTS).is_err());
        assert_eq!(query(Some("2"), Some("500")).paging(&QUEUE_SORTS).unwrap().page_size, 500);
    }

    #[test]
    fn a_page_past_the_end_is_empty_and_says_how_many_pages_there_are() {
        let paging = query(Some("3"), Some("2")).paging(&QUEUE_SORTS).unwrap();
        let page = paging.page(vec![5, 3, 1, 4, 2], 9, |n| *n, |n| *n);
        assert_eq!(page.items, vec![5]);
        assert_eq!((page.page_count, page.filtered_count, page.total_count), (3, 5, 9));
        let past = query(Some("4"), Some("2")).paging(&QUEUE_SORTS).unwrap().page(vec![1, 2], 2, |n| *n, |n| *n);
        assert!(past.items.is_empty());
    }
}
