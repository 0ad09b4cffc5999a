//! The one place where a failed frame becomes an ERROR frame.
//!
//! The specification asks for a short `message` header, details in the body, a `receipt-id`
//! when the offending frame asked for a receipt, and the connection closed right after. Every
//! protocol error in the broker is a [`StompError`]; the connection task turns it into bytes with
//! [`StompError::to_frame`] and closes once they are flushed.
//!
//! Each error also says what kind of failure it was ([`ErrorKind`]), apart from its text: the
//! connection chooses the WebSocket close code from it (a browser sees 1008 for a refused login,
//! not 1002, which reads as broken framing), and counting closes by kind needs no text matching.

use stampede_protocol::{ByteString, Command, Frame, names};

/// What kind of failure ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input could not be decoded (malformed frame, bad escape, invalid UTF-8).
    Protocol,
    /// A well-formed frame the broker cannot act on: a missing or invalid header, a command out
    /// of order, an unknown subscription or transaction.
    Request,
    /// The client could not be authenticated, or its token expired.
    Authentication,
    /// The principal may not do what it asked (a destination or a virtual host).
    Authorization,
    /// A configured limit was reached (connections, subscriptions, queues, outbox bytes).
    Limit,
    /// A frame or WebSocket message was larger than allowed.
    TooLarge,
    /// The client was silent past its heart-beat or connect deadline.
    Timeout,
    /// The broker failed (storage, a stopped queue).
    Internal,
    /// The broker is shutting down.
    Shutdown,
}

impl ErrorKind {
    /// Every kind, in declaration order (metrics index their label tables by it).
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Protocol,
        ErrorKind::Request,
        ErrorKind::Authentication,
        ErrorKind::Authorization,
        ErrorKind::Limit,
        ErrorKind::TooLarge,
        ErrorKind::Timeout,
        ErrorKind::Internal,
        ErrorKind::Shutdown,
    ];

    /// The kind's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::Request => "request",
            ErrorKind::Authentication => "authentication",
            ErrorKind::Authorization => "authorization",
            ErrorKind::Limit => "limit",
            ErrorKind::TooLarge => "too-large",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
            ErrorKind::Shutdown => "shutdown",
        }
    }
}

/// A protocol-level failure that ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompError {
    /// What kind of failure it was.
    pub kind: ErrorKind,
    /// Short summary for the `message` header.
    pub message: String,
    /// Longer explanation for the body.
    pub detail: String,
    /// The `receipt` of the frame that failed, echoed as `receipt-id`.
    pub receipt_id: Option<ByteString>,
    /// Extra headers (for example `version` when negotiation failed).
    pub extra_headers: Vec<(&'static str, String)>,
}

impl StompError {
    /// A refused request ([`ErrorKind::Request`]) with a summary and a detail text.
    pub fn new(message: impl Into<String>, detail: impl Into<String>) -> StompError {
        StompError::of_kind(ErrorKind::Request, message, detail)
    }

    /// An error of `kind` with a summary and a detail text.
    pub fn of_kind(kind: ErrorKind, message: impl Into<String>, detail: impl Into<String>) -> StompError {
        StompError { kind, message: message.into(), detail: detail.into(), receipt_id: None, extra_headers: Vec::new() }
    }

    /// Attaches the failing frame's `receipt` header, if it had one.
    pub fn for_frame(mut self, frame: &Frame) -> StompError {
        if self.receipt_id.is_none() {
            self.receipt_id = frame.headers.get_shared(names::RECEIPT).cloned();
        }
        self
    }

    /// A required header is missing.
    pub fn missing_header(command: Command, header: &str) -> StompError {
        StompError::new(
            format!("{command} frame is missing the required '{header}' header"),
            format!(
                "Every {command} frame must carry a '{header}' header. See the STOMP 1.2 specification, section {command}."
            ),
        )
    }

    /// A broker limit was hit. Names the limit, its value and the configuration key.
    pub fn limit(what: &str, limit: impl std::fmt::Display, key: &str) -> StompError {
        StompError::of_kind(
            ErrorKind::Limit,
            format!("limit exceeded - {what} (limit {limit}, {key})"),
            format!("The broker allows at most {limit} for {what}. The limit is set by the configuration key '{key}'."),
        )
    }

    /// The ERROR frame.
    pub fn to_frame(&self) -> Frame {
        // Header values must not contain line breaks; the body carries the long text.
        let message: String = self.message.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
        let mut frame = Frame::new(Command::Error)
            .with_header(names::MESSAGE, message)
            .with_header(names::CONTENT_TYPE, "text/plain");
        if let Some(receipt) = &self.receipt_id {
            frame.headers.push(names::RECEIPT_ID, receipt.clone());
        }
        for (name, value) in &self.extra_headers {
            frame.headers.push(*name, value.clone());
        }
        let mut body = self.detail.clone();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        frame.with_body(body)
    }
}

impl std::fmt::Display for StompError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
