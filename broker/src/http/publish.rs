//! `POST /api/v1/publish` and `POST /api/v1/publish/{destination}`: publishing over HTTP, for
//! backends that do not keep a STOMP connection (and for the dashboard's test message).
//!
//! Every user may use it, not only administrators, and each message is handled by a session of
//! its own connected as the request's user, through the very code a STOMP SEND goes through:
//! the same destination rules, `write` permissions, name quotas, queue limits and routing. The
//! answer follows a RECEIPT's rule: it is sent once every queue has taken its messages, and
//! for persistent ones once the store has committed them (201); otherwise 202. A refusal maps
//! the ERROR a client would have got to a status: 403 denied, 400 bad destination or header,
//! 413 over `max_body`, 429 (queue full, a name quota) or 503 (storage failed, shutting down)
//! with `Retry-After`.
//!
//! The body is raw (the message body; `Content-Type` becomes the message's `content-type`),
//! or with `Content-Type: application/json` one message `{destination, body | body_base64,
//! headers, persistent}` or an array of them, published in order; the first refusal stops the
//! batch and says how many went before it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stampede_protocol::{Command, Frame, names};

use crate::destination::outbox::Outbox;
use crate::error::{ErrorKind, StompError};
use crate::http::manage::ApiQuery;
use crate::http::{ApiError, Authenticated, SharedState};
use crate::session::{Reply, Session};

/// The routes this module adds to `/api/v1/`.
pub fn routes() -> axum::Router<SharedState> {
    axum::Router::new()
        .route("/publish", axum::routing::post(publish_json))
        .route("/publish/{*destination}", axum::routing::post(publish_to))
}

/// Query parameters of both endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishQuery {
    /// The virtual host (default `/`).
    pub vhost: Option<String>,
    /// `true` for a persistent message (raw bodies only; JSON says it per message).
    pub persistent: Option<String>,
}

/// One message of a JSON request.
#[derive(Debug)]
pub struct PublishMessage {
    /// Where to (`/queue/...`, `/topic/...`); may be left out when the path names it.
    pub destination: Option<String>,
    /// The body as text.
    pub body: Option<String>,
    /// The body as base64 (for binary bodies).
    pub body_base64: Option<String>,
    /// Headers of the message.
    pub headers: BTreeMap<String, String>,
    /// Stored before it is accepted (as `persistent:true`).
    pub persistent: bool,
}

/// A message as accepted.
#[derive(Debug, Serialize)]
pub struct Published {
    /// Its `message-id`.
    pub message_id: String,
    /// Where it went.
    pub destination: String,
    /// Whether it was stored before this answer.
    pub persistent: bool,
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct PublishAnswer {
    /// Every message, in order.
    pub messages: Vec<Published>,
}

/// Headers a JSON message may not set: the broker sets them, or they would change how the
/// request itself is handled.
const RESERVED: [&str; 5] =
    [names::DESTINATION, names::RECEIPT, names::TRANSACTION, names::CONTENT_LENGTH, "persistent"];

async fn publish_json(
    Authenticated(principal): Authenticated,
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<PublishQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    publish(principal, &state, None, query, headers, body).await
}

async fn publish_to(
    Authenticated(principal): Authenticated,
    State(state): State<SharedState>,
    Path(destination): Path<String>,
    ApiQuery(query): ApiQuery<PublishQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let destination = if destination.starts_with('/') { destination } else { format!("/{destination}") };
    publish(principal, &state, Some(destination), query, headers, body).await
}

/// A message ready for the session.
struct Outgoing {
    frame: Frame,
    destination: String,
    persistent: bool,
}

async fn publish(
    principal: crate::security::auth::Principal,
    state: &SharedState,
    path_destination: Option<String>,
    query: PublishQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let max_body = state.max_body;
    // Room for a batch, base64's growth and the JSON around the bodies.
    let limit = max_body.saturating_mul(2).saturating_add(64 * 1024);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {limit} bytes (twice max_body, plus 64 KiB)"),
        )
    })?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let is_json =
        content_type.as_deref().is_some_and(|t| t.split(';').next().is_some_and(|t| t.trim() == "application/json"));
    let outgoing = if is_json {
        parse_json(&bytes, path_destination.as_deref(), max_body)?
    } else {
        let Some(destination) = path_destination else {
            return Err(ApiError::bad_request(
                "destination: POST /api/v1/publish takes a JSON body (Content-Type: application/json); for a raw body name the destination in the path, e.g. /api/v1/publish/queue/orders",
            ));
        };
        let persistent = match query.persistent.as_deref() {
            None => false,
            Some(text) => crate::config::values::parse_bool(text)
                .map_err(|_| ApiError::bad_request(format!("persistent must be true or false, not {text:?}")))?,
        };
        check_size(bytes.len(), max_body, None)?;
        let mut frame = Frame::new(Command::Send).with_header(names::DESTINATION, destination.clone()).with_body(bytes);
        if let Some(content_type) = content_type {
            frame = frame.with_header(names::CONTENT_TYPE, content_type);
        }
        if persistent {
            frame = frame.with_header(names::PERSISTENT, "true");
        }
        vec![Outgoing { frame, destination, persistent }]
    };
    if outgoing.is_empty() {
        return Err(ApiError::bad_request("the JSON array holds no message"));
    }
    let vhost = query.vhost.unwrap_or_else(|| "/".to_owned());
    let outbox = Outbox::new(0);
    let id: Arc<str> = Arc::from(format!("http-{:032x}", crate::security::random_128()));
    let mut session = Session::new(id, Arc::clone(&state.session), Arc::clone(&state.vhosts), outbox);
    session.connect_as(principal, &vhost).map_err(|error| refusal(&error, 0))?;
    let result = publish_all(&mut session, outgoing).await;
    session.close().await;
    let (published, any_persistent) = result?;
    let status = if any_persistent { StatusCode::CREATED } else { StatusCode::ACCEPTED };
    Ok((status, axum::Json(PublishAnswer { messages: published })).into_response())
}

async fn publish_all(session: &mut Session, outgoing: Vec<Outgoing>) -> Result<(Vec<Published>, bool), ApiError> {
    let mut published = Vec::with_capacity(outgoing.len());
    let mut any_persistent = false;
    let mut replies = Vec::new();
    for (index, message) in outgoing.into_iter().enumerate() {
        let id = session.publish(&message.frame, &mut replies).await.map_err(|error| refusal(&error, index))?;
        // In order: each message's queues decide (and store) before the next is sent, so a
        // refusal stops the batch with everything before it accepted.
        for reply in replies.drain(..) {
            if let Reply::After { verdict, .. } = reply {
                match verdict.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(refusal(&error, index)),
                    Err(_) => {
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("message {index}: the queue stopped before accepting it"),
                        ));
                    }
                }
            }
        }
        any_persistent |= message.persistent;
        published.push(Published {
            message_id: id.to_string(),
            destination: message.destination,
            persistent: message.persistent,
        });
    }
    Ok((published, any_persistent))
}

fn check_size(len: usize, max_body: usize, index: Option<usize>) -> Result<(), ApiError> {
    if len > max_body {
        let which = index.map_or_else(String::new, |i| format!("message {i}: "));
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{which}the body is {len} bytes, over max_body ({max_body} bytes)"),
        ));
    }
    Ok(())
}

fn parse_json(bytes: &Bytes, path_destination: Option<&str>, max_body: usize) -> Result<Vec<Outgoing>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("the body is not JSON: {error}")))?;
    let messages = match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| message_of(item).map_err(|e| ApiError::bad_request(format!("message {index}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?,
        value => vec![message_of(value).map_err(ApiError::bad_request)?],
    };
    let mut outgoing = Vec::with_capacity(messages.len());
    for (index, message) in messages.into_iter().enumerate() {
        let at = |text: String| ApiError::bad_request(format!("message {index}: {text}"));
        let destination = match (message.destination, path_destination) {
            (Some(destination), _) => destination,
            (None, Some(destination)) => destination.to_owned(),
            (None, None) => return Err(at("destination is missing".to_owned())),
        };
        let body = match (message.body, message.body_base64) {
            (Some(_), Some(_)) => return Err(at("give body or body_base64, not both".to_owned())),
            (Some(text), None) => Bytes::from(text),
            (None, Some(encoded)) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|error| at(format!("body_base64 is not base64: {error}")))?,
            ),
            (None, None) => Bytes::new(),
        };
        check_size(body.len(), max_body, Some(index))?;
        let mut frame = Frame::new(Command::Send).with_header(names::DESTINATION, destination.clone()).with_body(body);
        for (name, value) in message.headers {
            if RESERVED.contains(&name.as_str()) {
                return Err(at(format!(
                    "headers.{name} is set by the broker or by this request's own fields (destination, persistent)"
                )));
            }
            if name.is_empty() || name.contains([':', '\n', '\r']) || value.contains(['\n', '\r']) {
                return Err(at(format!(
                    "headers.{name:?}: names cannot be empty or hold ':' or line breaks, values cannot hold line breaks"
                )));
            }
            frame = frame.with_header(name, value);
        }
        if message.persistent {
            frame = frame.with_header(names::PERSISTENT, "true");
        }
        outgoing.push(Outgoing { frame, destination, persistent: message.persistent });
    }
    Ok(outgoing)
}

/// Reads one message object, naming the field that is wrong (serde's own errors do not say
/// which field a wrong type is in).
fn message_of(value: serde_json::Value) -> Result<PublishMessage, String> {
    use serde_json::Value;
    let Value::Object(fields) = value else {
        return Err("a message is a JSON object {destination, body | body_base64, headers, persistent}".to_owned());
    };
    let mut message = PublishMessage {
        destination: None,
        body: None,
        body_base64: None,
        headers: BTreeMap::new(),
        persistent: false,
    };
    let text = |name: &str, value: Value| match value {
        Value::String(text) => Ok(text),
        other => Err(format!("{name} must be a string, not {other}")),
    };
    for (name, value) in fields {
        match name.as_str() {
            "destination" => message.destination = Some(text("destination", value)?),
            "body" => message.body = Some(text("body", value)?),
            "body_base64" => message.body_base64 = Some(text("body_base64", value)?),
            "persistent" => {
                message.persistent =
                    value.as_bool().ok_or_else(|| format!("persistent must be true or false, not {value}"))?
            }
            "headers" => {
                let Value::Object(headers) = value else {
                    return Err(format!("headers must be an object of strings, not {value}"));
                };
                for (header, value) in headers {
                    let value = text(&format!("headers.{header}"), value)?;
                    message.headers.insert(header, value);
                }
            }
            other => {
                return Err(format!(
                    "unknown field {other:?} (a message has destination, body, body_base64, headers, persistent)"
                ));
            }
        }
    }
    Ok(message)
}

/// The status a client's ERROR becomes for message `index`.
fn refusal(error: &StompError, index: usize) -> ApiError {
    let status = match error.kind {
        ErrorKind::Authorization => StatusCode::FORBIDDEN,
        ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
        ErrorKind::Request | ErrorKind::Protocol => StatusCode::BAD_REQUEST,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Limit => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal | ErrorKind::Timeout | ErrorKind::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
    };
    let before = if index == 0 { String::new() } else { format!(" ({index} earlier messages were accepted)") };
    ApiError::new(status, format!("message {index}: {}{before}", error.message))
}
