//! STOMP protocol versions.
//!
//! The version decides two things on the wire: which header escapes exist (none in 1.0; `\n`,
//! `\c`, `\\` in 1.1; those plus `\r` in 1.2) and whether CRLF may end a line (1.2 only, though
//! the decoder accepts CRLF everywhere because real 1.1 clients send it).

use std::fmt;

/// A STOMP protocol version. Ordered, so the highest common version is a `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no escaping, no heart-beats, no `id` on SUBSCRIBE required.
    V1_0,
    /// STOMP 1.1: escaping of `\n`, `:`, `\`; heart-beats; NACK.
    V1_1,
    /// STOMP 1.2: adds `\r` escaping, CRLF line ends and the `ack`/`id` acknowledgement form.
    V1_2,
}

impl Version {
    /// Every version this crate speaks, lowest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as it appears in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses one version token such as `1.2`.
    pub fn parse(token: &str) -> Option<Version> {
        match token.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// Picks the highest version offered by an `accept-version` header that is also in
    /// `supported`.
    ///
    /// "If the accept-version header is missing, it means that the clients only supports
    /// version 1.0 of the protocol." A header that names no version this crate knows yields
    /// `None`, as does an offer with nothing in common with `supported`.
    pub fn negotiate(accept_version: Option<&str>, supported: &[Version]) -> Option<Version> {
        match accept_version {
            None => supported.contains(&Version::V1_0).then_some(Version::V1_0),
            Some(offer) => offer.split(',').filter_map(Version::parse).filter(|v| supported.contains(v)).max(),
        }
    }

    /// The WebSocket subprotocol name for this version (`v12.stomp` and so on).
    pub fn websocket_subprotocol(self) -> &'static str {
        match self {
            Version::V1_0 => "v10.stomp",
            Version::V1_1 => "v11.stomp",
            Version::V1_2 => "v12.stomp",
        }
    }

    /// Parses a WebSocket subprotocol name such as `v12.stomp`.
    pub fn from_websocket_subprotocol(name: &str) -> Option<Version> {
        match name.trim() {
            "v10.stomp" => Some(Version::V1_0),
            "v11.stomp" => Some(Version::V1_1),
            "v12.stomp" => Some(Version::V1_2),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_accept_version_means_1_0() {
        assert_eq!(Version::negotiate(None, &Version::ALL), Some(Version::V1_0));
    }

    #[test]
    fn highest_common_version_wins() {
        assert_eq!(Version::negotiate(Some("1.0,1.1,1.2"), &Version::ALL), Some(Version::V1_2));
        assert_eq!(Version::negotiate(Some("1.1,1.0"), &Version::ALL), Some(Version::V1_1));
        assert_eq!(Version::negotiate(Some("1.2"), &[Version::V1_0, Version::V1_1]), None, "no common version");
    }

    #[test]
    fn unknown_versions_are_ignored_in_the_offer() {
        assert_eq!(Version::negotiate(Some("2.0,1.1"), &Version::ALL), Some(Version::V1_1));
        assert_eq!(Version::negotiate(Some("9.9"), &Version::ALL), None);
    }
}
