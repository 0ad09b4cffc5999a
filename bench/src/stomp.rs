//! The few STOMP frames the load generator sends, pre-encoded, and a scanner for the frames it
//! receives that allocates nothing: it finds the command, the header block and the body (by
//! `content-length`, else by the NUL) and hands out slices of the read buffer.

use bytes::BytesMut;

/// Offsets inside a message body (little-endian integers).
pub const BODY_TS: usize = 0;
pub const BODY_SEQ: usize = 8;
pub const BODY_PRODUCER: usize = 16;
/// The smallest body that holds the timestamp, the sequence number and the producer id.
pub const BODY_MIN: usize = 20;

/// One received frame, borrowed from the read buffer.
pub struct FrameRef<'a> {
    pub command: &'a [u8],
    /// Raw header lines (still escaped), each ending in `\n` (or `\r\n`).
    pub headers: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// The first value of header `name` (raw, still escaped: send it back as it came).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        header(self.headers, name)
    }

    pub fn is(&self, command: &[u8]) -> bool {
        self.command == command
    }

    /// `message` header and body of an ERROR frame, for a report.
    pub fn error_text(&self) -> String {
        let msg = self.header(b"message").unwrap_or(b"");
        let body = &self.body[..self.body.len().min(300)];
        format!("{} {}", String::from_utf8_lossy(msg), String::from_utf8_lossy(body).trim())
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    }
}

pub fn header<'a>(headers: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = headers;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = trim_cr(&rest[..end]);
        if line.len() > name.len() && line[name.len()] == b':' && &line[..name.len()] == name {
            return Some(&line[name.len() + 1..]);
        }
        rest = &rest[(end + 1).min(rest.len())..];
    }
    None
}

fn parse_usize(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let mut n = 0usize;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (d - b'0') as usize;
    }
    Some(n)
}

/// Scans one frame at the start of `buf`. `Ok(None)`: incomplete, read more. `Ok(Some((frame,
/// used)))`: `used` bytes (leading heart-beat EOLs included) form the frame.
pub fn scan(buf: &[u8]) -> Result<Option<(FrameRef<'_>, usize)>, String> {
    let mut i = 0;
    while i < buf.len() && (buf[i] == b'\n' || buf[i] == b'\r') {
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    let Some(cmd_len) = memchr::memchr(b'\n', &buf[i..]) else {
        return Ok(None);
    };
    let command = trim_cr(&buf[i..i + cmd_len]);
    let headers_start = i + cmd_len + 1;
    let mut p = headers_start;
    let mut content_length = None;
    let (headers_end, body_start) = loop {
        let Some(len) = memchr::memchr(b'\n', &buf[p..]) else {
            return Ok(None);
        };
        let line = trim_cr(&buf[p..p + len]);
        if line.is_empty() {
            break (p, p + len + 1);
        }
        // The first content-length header wins.
        if let (None, Some(v)) = (content_length, line.strip_prefix(b"content-length:")) {
            content_length = Some(parse_usize(v).ok_or_else(|| "bad content-length".to_string())?);
        }
        p += len + 1;
    };
    let nul = match content_length {
        Some(len) => {
            let nul = body_start + len;
            if nul >= buf.len() {
                return Ok(None);
            }
            if buf[nul] != 0 {
                return Err(format!("frame {} body is not followed by NUL", String::from_utf8_lossy(command)));
            }
            nul
        }
        None => match memchr::memchr(0, &buf[body_start..]) {
            Some(n) => body_start + n,
            None => return Ok(None),
        },
    };
    Ok(Some((FrameRef { command, headers: &buf[headers_start..headers_end], body: &buf[body_start..nul] }, nul + 1)))
}

pub fn read_u64(body: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(body[at..at + 8].try_into().unwrap())
}

pub fn read_u32(body: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(body[at..at + 4].try_into().unwrap())
}

pub fn connect_frame(login: Option<&str>, passcode: Option<&str>, vhost: &str, heart_beat: (u32, u32)) -> Vec<u8> {
    let mut f =
        format!("CONNECT\naccept-version:1.0,1.1,1.2\nhost:{vhost}\nheart-beat:{},{}\n", heart_beat.0, heart_beat.1);
    if let Some(l) = login {
        f.push_str(&format!("login:{l}\n"));
    }
    if let Some(p) = passcode {
        f.push_str(&format!("passcode:{p}\n"));
    }
    f.push_str("\n\0");
    f.into_bytes()
}

pub fn subscribe_frame(id: &str, destination: &str, ack: &str, extra: &[(String, String)]) -> Vec<u8> {
    let mut f = format!("SUBSCRIBE\nid:{id}\ndestination:{destination}\nack:{ack}\nreceipt:sub-{id}\n");
    for (k, v) in extra {
        f.push_str(&format!("{k}:{v}\n"));
    }
    f.push_str("\n\0");
    f.into_bytes()
}

/// Appends an ACK for a received MESSAGE: `id:<ack>` in 1.2, `message-id` + `subscription`
/// before.
pub fn push_ack(out: &mut BytesMut, version12: bool, frame: &FrameRef<'_>) -> Result<(), String> {
    if version12 {
        let id = frame.header(b"ack").ok_or("MESSAGE without an ack header")?;
        out.extend_from_slice(b"ACK\nid:");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\n\n\0");
    } else {
        let id = frame.header(b"message-id").ok_or("MESSAGE without message-id")?;
        let sub = frame.header(b"subscription").unwrap_or(b"0");
        out.extend_from_slice(b"ACK\nsubscription:");
        out.extend_from_slice(sub);
        out.extend_from_slice(b"\nmessage-id:");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\n\n\0");
    }
    Ok(())
}

/// A SEND frame encoded once; each message copies it and patches the timestamp, the sequence
/// number and (with receipts) a fixed-width receipt id in place.
pub struct SendTemplate {
    bytes: Vec<u8>,
    body_at: usize,
    receipt_at: Option<usize>,
}

pub const RECEIPT_DIGITS: usize = 16;

impl SendTemplate {
    pub fn new(destination: &str, body_size: usize, producer: u32, persistent: bool, receipts: bool) -> SendTemplate {
        let body_size = body_size.max(BODY_MIN);
        let mut head = format!("SEND\ndestination:{destination}\n");
        if persistent {
            head.push_str("persistent:true\n");
        }
        let mut receipt_at = None;
        if receipts {
            head.push_str("receipt:");
            receipt_at = Some(head.len());
            head.push_str(&"0".repeat(RECEIPT_DIGITS));
            head.push('\n');
        }
        head.push_str(&format!("content-type:application/octet-stream\ncontent-length:{body_size}\n\n"));
        let mut bytes = head.into_bytes();
        let body_at = bytes.len();
        bytes.resize(body_at + body_size, b'.');
        bytes[body_at + BODY_PRODUCER..body_at + BODY_PRODUCER + 4].copy_from_slice(&producer.to_le_bytes());
        bytes.push(0);
        SendTemplate { bytes, body_at, receipt_at }
    }

    pub fn frame_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn push(&self, out: &mut BytesMut, ts: u64, seq: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let b = start + self.body_at;
        out[b + BODY_TS..b + BODY_TS + 8].copy_from_slice(&ts.to_le_bytes());
        out[b + BODY_SEQ..b + BODY_SEQ + 8].copy_from_slice(&seq.to_le_bytes());
        if let Some(r) = self.receipt_at {
            let mut n = seq;
            let field = &mut out[start + r..start + r + RECEIPT_DIGITS];
            for d in field.iter_mut().rev() {
                *d = b"0123456789abcdef"[(n & 15) as usize];
                n >>= 4;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips_through_scan() {
        let t = SendTemplate::new("/queue/x", 64, 7, true, true);
        let mut out = BytesMut::new();
        out.extend_from_slice(b"\n\r\n");
        t.push(&mut out, 11, 0x1234);
        t.push(&mut out, 12, 5);
        let (f, used) = scan(&out).unwrap().unwrap();
        assert_eq!(f.command, b"SEND");
        assert_eq!(f.header(b"receipt"), Some(&b"0000000000001234"[..]));
        assert_eq!(f.header(b"persistent"), Some(&b"true"[..]));
        assert_eq!(f.body.len(), 64);
        assert_eq!(read_u64(f.body, BODY_TS), 11);
        assert_eq!(read_u64(f.body, BODY_SEQ), 0x1234);
        assert_eq!(read_u32(f.body, BODY_PRODUCER), 7);
        let (g, used2) = scan(&out[used..]).unwrap().unwrap();
        assert_eq!(read_u64(g.body, BODY_SEQ), 5);
        assert_eq!(used + used2, out.len());
        assert!(scan(&out[..used - 1]).unwrap().is_none());
    }

    #[test]
    fn scans_frames_without_content_length() {
        let buf = b"RECEIPT\r\nreceipt-id:sub-0\r\n\r\n\0\nCONN";
        let (f, used) = scan(buf).unwrap().unwrap();
        assert_eq!(f.command, b"RECEIPT");
        assert_eq!(f.header(b"receipt-id"), Some(&b"sub-0"[..]));
        assert!(scan(&buf[used..]).unwrap().is_none());
    }
}
