//! Errors of the client, and why a connection ended.
//!
//! Two types, because they answer two questions. [`ClientError`] is what one call returns: it is
//! not `Clone` (it may own an `io::Error`) and is handed to exactly one caller. [`CloseReason`] is
//! why the connection as a whole ended: it is recorded once by the connection task and shared by
//! every handle, every pending receipt and every subscription, so it is `Clone` (I/O errors are
//! kept behind an `Arc`).

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use stampede_protocol::{DecodeError, Frame, Headers, names};

/// An ERROR frame sent by the server, in a form that is easy to match on and print.
///
/// The server closes the connection right after an ERROR, so once one is seen every pending call
/// on that connection fails with it and [`Client::closed`](crate::Client::closed) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The `message` header: a short description (empty when the server sent none).
    pub message: String,
    /// The body: details, often human-readable text.
    pub body: Bytes,
    /// The `receipt-id` header: set when the offending frame had asked for a receipt.
    pub receipt_id: Option<String>,
    /// Every header of the ERROR frame, for anything not lifted into a field.
    pub headers: Headers,
}

impl ServerError {
    /// Builds the error from an ERROR frame (any frame, in fact: missing headers stay empty).
    pub fn from_frame(frame: &Frame) -> ServerError {
        ServerError {
            message: frame.header(names::MESSAGE).unwrap_or_default().to_owned(),
            body: frame.body.clone(),
            receipt_id: frame.header(names::RECEIPT_ID).map(str::to_owned),
            headers: frame.headers.clone(),
        }
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn body_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server sent ERROR: {}", self.message)?;
        let body = self.body_text();
        let body = body.trim();
        if !body.is_empty() && body != self.message {
            // Enough of the body to act on without flooding a log line.
            let cut: String = body.chars().take(300).collect();
            write!(f, " ({cut})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// Why a connection ended. Recorded once by the connection task; see
/// [`Client::closed`](crate::Client::closed).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client disconnected: DISCONNECT was answered (or the server closed right after it).
    Disconnected,
    /// Every [`Client`](crate::Client), [`Subscription`](crate::Subscription) and
    /// [`Transaction`](crate::Transaction) handle was dropped.
    Dropped,
    /// The server sent an ERROR frame (and then, per the specification, closes).
    ServerError(ServerError),
    /// The server closed the connection without an ERROR frame.
    ServerClosed,
    /// The server sent nothing, not even a heart-beat, for longer than the negotiated interval
    /// times the grace factor.
    HeartBeatTimeout {
        /// How long the server had been silent.
        silent_for: Duration,
    },
    /// Reading or writing the socket failed.
    Io(Arc<io::Error>),
    /// The server sent bytes that are not valid STOMP.
    Protocol(DecodeError),
    /// The WebSocket layer failed.
    WebSocket(Arc<tokio_tungstenite::tungstenite::Error>),
}

impl CloseReason {
    /// The server's ERROR, when that is why the connection ended.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            CloseReason::ServerError(e) => Some(e),
            _ => None,
        }
    }

    /// True when the connection ended because this side asked it to.
    pub fn is_graceful(&self) -> bool {
        matches!(self, CloseReason::Disconnected | CloseReason::Dropped)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Disconnected => f.write_str("disconnected"),
            CloseReason::Dropped => f.write_str("every client handle was dropped"),
            CloseReason::ServerError(e) => e.fmt(f),
            CloseReason::ServerClosed => f.write_str("the server closed the connection"),
            CloseReason::HeartBeatTimeout { silent_for } => {
                write!(f, "no data or heart-beat from the server for {}", human_duration(*silent_for))
            }
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::WebSocket(e) => write!(f, "WebSocket error: {e}"),
        }
    }
}

/// What a client call can fail with.
///
/// Both `Display` and `Debug` print a sentence (`Debug` prefixed with the variant's name), so an
/// error that reaches `main`'s `Result` or an `unwrap` reads as well as one printed with `{}`.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection to the server could not be opened.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// `host:port` as dialled.
        address: String,
        /// Why, e.g. connection refused.
        source: io::Error,
    },
    /// A `ws://` or `wss://` URL names a port whose server does not speak HTTP: most likely the
    /// STOMP TCP port.
    #[error(
        "the server at {address} did not answer the WebSocket handshake in HTTP ({detail}); \
         if that is a STOMP TCP port, use tcp://{address}"
    )]
    NotHttp {
        /// `host:port` as dialled.
        address: String,
        /// What went wrong, as the WebSocket layer saw it.
        detail: String,
    },
    /// A `tcp://` or `tls://` address names a port whose server answered CONNECT in HTTP: most
    /// likely the WebSocket port.
    #[error(
        "the server at {address} answered CONNECT in HTTP ({status_line}); that looks like a \
         WebSocket port: use ws://{address}/ws (with the server's WebSocket path)"
    )]
    HttpNotStomp {
        /// `host:port` as dialled.
        address: String,
        /// The first line of the server's answer, e.g. `HTTP/1.1 400 Bad Request`.
        status_line: String,
    },
    /// The server closed the connection without a byte of answer to CONNECT, which is what a
    /// WebSocket (HTTP) port does with a STOMP frame.
    #[error(
        "the server at {address} closed the connection without answering CONNECT; if that is a \
         WebSocket port, use ws://{address}/ws (with the server's WebSocket path)"
    )]
    NoAnswer {
        /// `host:port` as dialled.
        address: String,
    },
    /// The server answered the WebSocket handshake with an HTTP error (a wrong path gets 404).
    #[error("the server refused the WebSocket handshake at {url} with HTTP {status}{}", body_suffix(body))]
    WebSocketRefused {
        /// The URL asked for.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The response body, which usually says what is wrong.
        body: String,
    },
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// TLS could not be set up: an unreadable CA file, a failed handshake, a certificate that
    /// does not verify.
    #[error("{0}")]
    Tls(String),
    /// The WebSocket handshake or transport failed.
    #[error("WebSocket error: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The server sent bytes that are not valid STOMP.
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    /// The server answered with an ERROR frame (at connect time: it refused the connection).
    #[error("{0}")]
    ServerError(#[from] ServerError),
    /// Something did not happen in time.
    #[error("timed out after {} waiting for {waiting_for}", human_duration(*after))]
    Timeout {
        /// What was awaited, e.g. `RECEIPT rcpt-3` or `CONNECTED`.
        waiting_for: String,
        /// The limit that passed.
        after: Duration,
    },
    /// The connection had ended (or ended while waiting); the reason says why.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The URL could not be understood.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The call cannot be made as asked (for example NACK on a STOMP 1.0 connection, or ACK of a
    /// message that has no `ack` header on STOMP 1.2).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server answered CONNECT with something other than CONNECTED or ERROR, or with a
    /// CONNECTED this client cannot use.
    #[error("handshake failed: {0}")]
    Handshake(String),
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            ClientError::Connect { .. } => "Connect",
            ClientError::NotHttp { .. } => "NotHttp",
            ClientError::HttpNotStomp { .. } => "HttpNotStomp",
            ClientError::NoAnswer { .. } => "NoAnswer",
            ClientError::WebSocketRefused { .. } => "WebSocketRefused",
            ClientError::Io(_) => "Io",
            ClientError::Tls(_) => "Tls",
            ClientError::WebSocket(_) => "WebSocket",
            ClientError::Protocol(_) => "Protocol",
            ClientError::ServerError(_) => "ServerError",
            ClientError::Timeout { .. } => "Timeout",
            ClientError::Closed(_) => "Closed",
            ClientError::InvalidUrl { .. } => "InvalidUrl",
            ClientError::InvalidRequest(_) => "InvalidRequest",
            ClientError::Handshake(_) => "Handshake",
        };
        write!(f, "{kind}: {self}")
    }
}

/// A duration as people write it: `250 ms`, `2.5 s`.
pub(crate) fn human_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else {
        let tenths = duration.as_millis() / 100;
        format!("{}.{} s", tenths / 10, tenths % 10)
    }
}

fn body_suffix(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() { String::new() } else { format!(": {}", body.chars().take(300).collect::<String>()) }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
        ClientError::WebSocket(Box::new(e))
    }
}

impl ClientError {
    /// The error a waiter receives when the connection ended for `reason`: a server ERROR stays
    /// a [`ClientError::ServerError`] so callers can match on it directly.
    pub(crate) fn from_close(reason: &CloseReason) -> ClientError {
        match reason {
            CloseReason::ServerError(e) => ClientError::ServerError(e.clone()),
            other => ClientError::Closed(other.clone()),
        }
    }

    /// The server's ERROR, if that is what this is (directly or as the reason for a close).
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ClientError::ServerError(e) => Some(e),
            ClientError::Closed(reason) => reason.server_error(),
            _ => None,
        }
    }

    /// The close reason for a connection that failed with this error.
    pub(crate) fn into_close_reason(self) -> CloseReason {
        match self {
            ClientError::Io(e) | ClientError::Connect { source: e, .. } => CloseReason::Io(Arc::new(e)),
            ClientError::WebSocket(e) => CloseReason::WebSocket(Arc::from(e)),
            ClientError::Protocol(e) => CloseReason::Protocol(e),
            ClientError::ServerError(e) => CloseReason::ServerError(e),
            ClientError::Closed(reason) => reason,
            other => CloseReason::Io(Arc::new(io::Error::other(other.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_protocol::Command;

    #[test]
    fn server_error_lifts_message_body_and_receipt() {
        let frame = Frame::new(Command::Error)
            .with_header("message", "access refused")
            .with_header("receipt-id", "rcpt-7")
            .with_body("user guest may not write /queue/x");
        let e = ServerError::from_frame(&frame);
        assert_eq!(e.message, "access refused");
        assert_eq!(e.receipt_id.as_deref(), Some("rcpt-7"));
        assert_eq!(e.to_string(), "server sent ERROR: access refused (user guest may not write /queue/x)");
        let client_error = ClientError::from_close(&CloseReason::ServerError(e.clone()));
        assert_eq!(client_error.server_error(), Some(&e));
    }

    #[test]
    fn errors_print_as_sentences_in_display_and_debug() {
        let timeout = ClientError::Timeout { waiting_for: "RECEIPT rcpt-0".into(), after: Duration::from_millis(2500) };
        assert_eq!(timeout.to_string(), "timed out after 2.5 s waiting for RECEIPT rcpt-0");
        assert_eq!(format!("{timeout:?}"), "Timeout: timed out after 2.5 s waiting for RECEIPT rcpt-0");
        let refused = ClientError::Connect {
            address: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(format!("{refused:?}"), "Connect: cannot connect to 127.0.0.1:1: connection refused");
        let silent = CloseReason::HeartBeatTimeout { silent_for: Duration::from_millis(250) };
        assert_eq!(silent.to_string(), "no data or heart-beat from the server for 250 ms");
    }
}
