//! Where to connect: parsing `tcp://host:port`, `tls://host:port`, `host:port`,
//! `ws://host:port/path` and `wss://host:port/path`.
//!
//! The same string is accepted by the library, the CLI (`--url`, `STAMPEDE_URL`) and the test
//! helpers, so the rules live in one place: a bare `host:port` means TCP, a missing port is the
//! conventional one for the scheme (61613 STOMP, 61614 STOMP over TLS, 80 `ws`, 443 `wss`), and
//! IPv6 literals are written in brackets as in URLs (`[::1]:61613`).

use std::fmt;
use std::str::FromStr;

use crate::ClientError;

/// The conventional STOMP port, used when a TCP address names none.
pub const DEFAULT_TCP_PORT: u16 = 61613;
/// The conventional STOMP-over-TLS port, used when a `tls://` address names none.
pub const DEFAULT_TLS_PORT: u16 = 61614;
/// The HTTP port, used when a `ws://` URL names none.
pub const DEFAULT_WS_PORT: u16 = 80;
/// The HTTPS port, used when a `wss://` URL names none.
pub const DEFAULT_WSS_PORT: u16 = 443;

/// A parsed server address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// STOMP over TCP, plain or inside TLS.
    Tcp {
        /// Host name or IP literal (IPv6 without brackets); with TLS also the name the server's
        /// certificate must carry.
        host: String,
        /// Port.
        port: u16,
        /// TLS around the TCP connection (`tls://`, `ssl://`, `stomp+ssl://`, `stomps://`).
        tls: bool,
    },
    /// STOMP over WebSocket (the `v12.stomp`, `v11.stomp`, `v10.stomp` subprotocols).
    WebSocket {
        /// Host name or IP literal (IPv6 without brackets), for the TCP connection.
        host: String,
        /// Port, for the TCP connection.
        port: u16,
        /// Path and query, starting with `/`.
        path: String,
        /// `wss://`: the WebSocket runs inside TLS.
        tls: bool,
    },
}

impl Endpoint {
    /// Parses an address.
    ///
    /// Accepted forms: `tcp://host[:port]`, `stomp://host[:port]`, `host[:port]`,
    /// `ws://host[:port][/path]`, and with TLS `tls://host[:port]` (also `ssl://`,
    /// `stomp+ssl://`, `stomps://`) and `wss://host[:port][/path]`.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] for an unknown scheme, credentials in the URL, an empty host,
    /// a bad port, or an unbracketed IPv6 address.
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let trimmed = url.trim();
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("tcp".to_owned(), trimmed),
        };
        let (websocket, tls) = match scheme.as_str() {
            "tcp" | "stomp" => (false, false),
            "tls" | "ssl" | "stomp+ssl" | "stomps" => (false, true),
            "ws" => (true, false),
            "wss" => (true, true),
            _ => return Err(invalid("unknown scheme: expected tcp://, tls://, stomp+ssl://, ws:// or wss://")),
        };
        if websocket {
            let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(split);
            let default_port = if tls { DEFAULT_WSS_PORT } else { DEFAULT_WS_PORT };
            let (host, port) = split_authority(authority, default_port).map_err(invalid)?;
            let path = match path {
                "" => "/".to_owned(),
                p if p.starts_with('/') => p.to_owned(),
                p => format!("/{p}"),
            };
            Ok(Endpoint::WebSocket { host, port, path, tls })
        } else {
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            if authority.contains('/') {
                return Err(invalid("a TCP address has no path"));
            }
            let default_port = if tls { DEFAULT_TLS_PORT } else { DEFAULT_TCP_PORT };
            let (host, port) = split_authority(authority, default_port).map_err(invalid)?;
            Ok(Endpoint::Tcp { host, port, tls })
        }
    }

    /// The host name or IP literal.
    pub fn host(&self) -> &str {
        match self {
            Endpoint::Tcp { host, .. } | Endpoint::WebSocket { host, .. } => host,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Tcp { port, .. } | Endpoint::WebSocket { port, .. } => *port,
        }
    }

    /// True when the connection runs inside TLS.
    pub fn is_tls(&self) -> bool {
        match self {
            Endpoint::Tcp { tls, .. } | Endpoint::WebSocket { tls, .. } => *tls,
        }
    }

    /// True for STOMP over WebSocket.
    pub fn is_websocket(&self) -> bool {
        matches!(self, Endpoint::WebSocket { .. })
    }

    /// `host:port`, with brackets around an IPv6 literal.
    pub fn authority(&self) -> String {
        let host = self.host();
        if host.contains(':') { format!("[{host}]:{}", self.port()) } else { format!("{host}:{}", self.port()) }
    }
}

/// Splits `host[:port]` or `[v6][:port]`. The error is a reason, completed by the caller.
fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), &'static str> {
    if authority.contains('@') {
        return Err("credentials do not belong in the URL: use the login and passcode options");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("expected ':' after ']'")?)),
        }
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("write an IPv6 address in brackets, e.g. [::1]:61613");
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty");
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
            Ok(p) => p,
        },
    };
    Ok((host.to_owned(), port))
}

impl FromStr for Endpoint {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Endpoint, ClientError> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { tls: false, .. } => write!(f, "tcp://{}", self.authority()),
            Endpoint::Tcp { tls: true, .. } => write!(f, "tls://{}", self.authority()),
            Endpoint::WebSocket { path, tls: false, .. } => write!(f, "ws://{}{path}", self.authority()),
            Endpoint::WebSocket { path, tls: true, .. } => write!(f, "wss://{}{path}", self.authority()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.into(), port, tls: false }
    }

    fn ws(host: &str, port: u16, path: &str) -> Endpoint {
        Endpoint::WebSocket { host: host.into(), port, path: path.into(), tls: false }
    }

    #[test]
    fn tcp_forms() {
        assert_eq!(Endpoint::parse("tcp://localhost:61614").unwrap(), tcp("localhost", 61614));
        assert_eq!(Endpoint::parse("stomp://broker:1/").unwrap(), tcp("broker", 1));
        assert_eq!(Endpoint::parse("127.0.0.1:5000").unwrap(), tcp("127.0.0.1", 5000));
        assert_eq!(Endpoint::parse(" localhost ").unwrap(), tcp("localhost", DEFAULT_TCP_PORT));
        assert_eq!(Endpoint::parse("TCP://h:2").unwrap(), tcp("h", 2));
    }

    #[test]
    fn ipv6_needs_brackets() {
        assert_eq!(Endpoint::parse("[::1]:61613").unwrap(), tcp("::1", 61613));
        assert_eq!(Endpoint::parse("tcp://[::1]").unwrap(), tcp("::1", DEFAULT_TCP_PORT));
        assert!(Endpoint::parse("::1:61613").is_err());
        assert!(Endpoint::parse("[::1").is_err());
        assert_eq!(tcp("::1", 7).to_string(), "tcp://[::1]:7");
    }

    #[test]
    fn websocket_forms() {
        assert_eq!(Endpoint::parse("ws://localhost:15674/ws").unwrap(), ws("localhost", 15674, "/ws"));
        assert_eq!(Endpoint::parse("ws://example.org").unwrap(), ws("example.org", 80, "/"));
        assert_eq!(Endpoint::parse("ws://h:1?x=1").unwrap(), ws("h", 1, "/?x=1"));
        assert_eq!(ws("h", 1, "/stomp").to_string(), "ws://h:1/stomp");
    }

    #[test]
    fn tls_schemes_pick_tls_and_their_default_ports() {
        let tls = |host: &str, port| Endpoint::Tcp { host: host.into(), port, tls: true };
        assert_eq!(Endpoint::parse("tls://broker").unwrap(), tls("broker", DEFAULT_TLS_PORT));
        assert_eq!(Endpoint::parse("stomp+ssl://broker:7").unwrap(), tls("broker", 7));
        assert_eq!(Endpoint::parse("ssl://broker:7").unwrap(), tls("broker", 7));
        let wss = Endpoint::parse("wss://example.org/ws").unwrap();
        assert_eq!(wss, Endpoint::WebSocket { host: "example.org".into(), port: 443, path: "/ws".into(), tls: true });
        assert!(wss.is_tls() && wss.is_websocket());
        assert_eq!(wss.to_string(), "wss://example.org:443/ws");
        assert_eq!(tls("h", 9).to_string(), "tls://h:9");
        assert!(!Endpoint::parse("tcp://h").unwrap().is_tls());
    }

    #[test]
    fn rejects_what_cannot_work() {
        for bad in [
            "http://h",
            "tcp://",
            "tcp://h:0",
            "tcp://h:65536",
            "tcp://h:x",
            "tcp://h:1/path",
            "tcp://user:pw@h:1",
            ":61613",
        ] {
            let err = Endpoint::parse(bad).expect_err(bad);
            assert!(matches!(err, ClientError::InvalidUrl { .. }), "{bad}: {err}");
        }
    }
}
