//! Heart-beat negotiation.
//!
//! The CONNECT frame carries `heart-beat:cx,cy` (the client can send every cx ms, wants to
//! receive every cy ms) and CONNECTED answers `heart-beat:sx,sy`. From the specification:
//! "if x==0 (the sender cannot send heart-beats) or sy==0 (the server does not want to receive
//! heart-beats) then there will be no heart-beating; otherwise, there will be heart-beating every
//! MAX(cx,sy) milliseconds", and symmetrically for the other direction.

use std::time::Duration;

/// A `heart-beat` header value: `(can send every, wants to receive every)` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// Smallest interval, in ms, at which this side can send beats; 0 = cannot send.
    pub send_ms: u32,
    /// Desired interval, in ms, between beats it receives; 0 = does not want any.
    pub receive_ms: u32,
}

impl HeartBeat {
    /// Parses `cx,cy`. A missing header means `0,0`; a malformed one is `None`. A value too
    /// large for a u32 (about 49 days) saturates: it can only mean "as rarely as possible", and
    /// refusing it would break clients that send `u64::MAX` for "never".
    pub fn parse(value: &str) -> Option<HeartBeat> {
        let (send, receive) = value.split_once(',')?;
        Some(HeartBeat { send_ms: milliseconds(send)?, receive_ms: milliseconds(receive)? })
    }

    /// The header value, `x,y`.
    pub fn to_header_value(self) -> String {
        format!("{},{}", self.send_ms, self.receive_ms)
    }
}

/// One value of the header: digits only, saturating at `u32::MAX`.
fn milliseconds(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u32::MAX))
}

/// The agreed intervals, seen from one side of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// How often this side must send a beat (or any data); `None` = never.
    pub send_every: Option<Duration>,
    /// How often this side should hear from its peer; `None` = no expectation.
    pub expect_every: Option<Duration>,
}

/// Negotiates from the point of view of `local`, the side that sent `local` and received
/// `remote`. The formula is symmetric, so the broker calls `negotiate(server, client)` and a
/// client calls `negotiate(client, server)`.
pub fn negotiate(local: HeartBeat, remote: HeartBeat) -> Negotiated {
    let interval = |sender_can: u32, receiver_wants: u32| {
        (sender_can != 0 && receiver_wants != 0)
            .then(|| Duration::from_millis(u64::from(sender_can.max(receiver_wants))))
    };
    Negotiated {
        send_every: interval(local.send_ms, remote.receive_ms),
        expect_every: interval(remote.send_ms, local.receive_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(send_ms: u32, receive_ms: u32) -> HeartBeat {
        HeartBeat { send_ms, receive_ms }
    }

    #[test]
    fn heart_beat_interval_is_max_of_sender_ability_and_receiver_wish() {
        // Client 4000,10000 ; server 5000,3000.
        let server_view = negotiate(hb(5000, 3000), hb(4000, 10000));
        assert_eq!(server_view.send_every, Some(Duration::from_millis(10000)));
        assert_eq!(server_view.expect_every, Some(Duration::from_millis(4000)));
        let client_view = negotiate(hb(4000, 10000), hb(5000, 3000));
        assert_eq!(client_view.send_every, server_view.expect_every);
        assert_eq!(client_view.expect_every, server_view.send_every);
    }

    #[test]
    fn heart_beat_zero_on_either_side_disables_that_direction() {
        // Local cannot send, remote wants nothing: no local-to-remote beats. The other
        // direction is unaffected: remote can send every 1000 ms and local wants 1000 ms.
        let v = negotiate(hb(0, 1000), hb(1000, 0));
        assert_eq!(v, Negotiated { send_every: None, expect_every: Some(Duration::from_millis(1000)) });
        let v = negotiate(hb(0, 1000), hb(0, 0));
        assert_eq!(v, Negotiated { send_every: None, expect_every: None });
        let v = negotiate(hb(1000, 0), hb(0, 1000));
        assert_eq!(v.send_every, Some(Duration::from_millis(1000)));
        assert_eq!(v.expect_every, None);
    }

    #[test]
    fn heart_beat_header_parses_and_rejects_garbage() {
        assert_eq!(HeartBeat::parse("10000,10000"), Some(hb(10000, 10000)));
        assert_eq!(HeartBeat::parse("0,0"), Some(hb(0, 0)));
        assert_eq!(HeartBeat::parse("10"), None);
        assert_eq!(HeartBeat::parse("a,b"), None);
        assert_eq!(HeartBeat::parse("-1,5"), None);
        assert_eq!(HeartBeat::parse("+1,5"), None);
        assert_eq!(HeartBeat::parse(",5"), None);
    }

    #[test]
    fn heart_beat_values_too_large_for_u32_saturate_instead_of_being_refused() {
        let huge = HeartBeat::parse("18446744073709551615,1").unwrap();
        assert_eq!(huge, hb(u32::MAX, 1));
        assert_eq!(HeartBeat::parse("1,99999999999999999999999999").unwrap(), hb(1, u32::MAX));
        // Negotiating with the saturated value stays within a Duration.
        let v = negotiate(hb(1000, 1000), huge);
        assert_eq!(v.expect_every, Some(Duration::from_millis(u64::from(u32::MAX))));
        assert_eq!(v.send_every, Some(Duration::from_millis(1000)));
    }
}
