//! What happens between accepting a socket and handing it to a connection task: TLS, and plain
//! HTTP on the WebSocket port before the upgrade; the accept loops and handshakes live in
//! [`crate::server`] for the time being.

pub(crate) mod fallback;
pub(crate) mod public_http;
pub mod tls;
