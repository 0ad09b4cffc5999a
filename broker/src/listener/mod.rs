//! What happens between accepting a socket and handing it to a connection task: TLS now; the
//! accept loops and handshakes live in [`crate::server`] for the time being.

pub mod tls;
