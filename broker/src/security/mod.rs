//! Small security building blocks shared by the listeners and the sessions: destination
//! patterns for permissions, redaction of secrets in traces, and per-address connection
//! counting.
//!
//! Authentication itself lives in [`crate::auth`], TLS in [`crate::tls`].

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use stampede_protocol::Frame;

/// Header names whose values are secrets: never printed, whatever the log level.
pub const SECRET_HEADERS: &[&str] = &["passcode", "authorization", "proxy-authorization", "cookie"];

/// True when a header of this name carries a secret.
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|secret| name.eq_ignore_ascii_case(secret))
}

/// A frame as it may appear in logs: the command, the headers with secrets replaced by
/// `<redacted>`, and the body's length (never its content). Use it for every trace of a frame:
/// `trace!(frame = %Redacted(&frame))`.
pub struct Redacted<'a>(pub &'a Frame);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.command)?;
        for (name, value) in self.0.headers.iter() {
            if is_secret_header(name) {
                write!(f, " {name}:<redacted>")?;
            } else {
                write!(f, " {name}:{value:?}")?;
            }
        }
        write!(f, " body:{}B", self.0.body.len())
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A destination pattern in a permission rule.
///
/// * `**` and `#` match any run of characters, including none, across `/` and `.`;
/// * `*` matches any run of characters within one path element or topic word: it stops at
///   `/` and `.`, and never covers the multi-word subscription wildcards `#` and `>` (so a
///   rule `/topic/news.*` allows subscribing to `/topic/news.*` but not to `/topic/news.#`);
/// * every other character matches itself.
///
/// A rule matches only the whole destination: `/queue/a` does not match `/queue/ab`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`
    Word,
    /// `**` or `#`
    Any,
}

impl Glob {
    /// Parses a pattern (every string is a valid pattern).
    pub fn new(text: &str) -> Glob {
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                    tokens.push(Token::Any);
                }
                '*' => tokens.push(Token::Word),
                '#' => tokens.push(Token::Any),
                other => tokens.push(Token::Literal(other)),
            }
        }
        Glob { text: text.to_owned(), tokens }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `destination` matches the whole pattern. Runs in O(pattern × destination).
    pub fn matches(&self, destination: &str) -> bool {
        let text: Vec<char> = destination.chars().collect();
        // reachable[j]: the tokens so far can consume exactly text[..j].
        let mut reachable = vec![false; text.len() + 1];
        reachable[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; text.len() + 1];
            match *token {
                Token::Literal(c) => {
                    for j in 0..text.len() {
                        next[j + 1] = reachable[j] && text[j] == c;
                    }
                }
                Token::Any => {
                    let mut on = false;
                    for j in 0..=text.len() {
                        on |= reachable[j];
                        next[j] = on;
                    }
                }
                Token::Word => {
                    let mut on = false;
                    for j in 0..=text.len() {
                        on |= reachable[j];
                        next[j] = on;
                        if j < text.len() && matches!(text[j], '/' | '.' | '#' | '>') {
                            on = false;
                        }
                    }
                }
            }
            reachable = next;
            if !reachable.iter().any(|r| *r) {
                return false;
            }
        }
        reachable[text.len()]
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The address a per-address limit counts: the IP for IPv4, the /64 network for IPv6 (one
/// host usually owns a whole /64, so counting single IPv6 addresses would not limit anything).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Open connections per source address (`max_connections_per_ip`). The table holds only
/// addresses with an open connection, so its size is bounded by `max_connections`. Loopback
/// clients are not counted unless asked for: behind a reverse proxy on the same host every
/// browser arrives from 127.0.0.1.
#[derive(Debug)]
pub struct PerAddress {
    limit: usize,
    count_loopback: bool,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it releases the count.
#[derive(Debug)]
pub struct AddressPermit {
    table: Arc<PerAddress>,
    /// `None` for an address that is not counted.
    key: Option<IpAddr>,
}

impl PerAddress {
    /// A table allowing `limit` connections per address (0 = no limit); loopback addresses
    /// count only when `count_loopback`.
    pub fn new(limit: usize, count_loopback: bool) -> Arc<PerAddress> {
        Arc::new(PerAddress { limit, count_loopback, open: Mutex::new(HashMap::new()) })
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts one more connection from `ip`, or `None` when the address is at its limit.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPermit> {
        let key = address_key(ip);
        if self.limit == 0 || (key.is_loopback() && !self.count_loopback) {
            return Some(AddressPermit { table: Arc::clone(self), key: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if self.limit > 0 && *count >= self.limit {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(AddressPermit { table: Arc::clone(self), key: Some(key) })
    }

    /// Open connections from `ip` (for tests and diagnostics).
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).get(&address_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_protocol::Command;

    #[test]
    fn word_wildcard_stays_within_one_element() {
        let g = Glob::new("/topic/news.*");
        assert!(g.matches("/topic/news.sport"));
        assert!(g.matches("/topic/news.*"));
        assert!(!g.matches("/topic/news.sport.uk"));
        assert!(!g.matches("/topic/news.#"));
        assert!(!g.matches("/topic/news.>"));
        assert!(!g.matches("/topic/newsx"));
        let q = Glob::new("/queue/orders-*");
        assert!(q.matches("/queue/orders-eu"));
        assert!(!q.matches("/queue/orders-eu/x"));
        assert!(!q.matches("/queue/other"));
    }

    #[test]
    fn any_wildcard_crosses_elements() {
        for pattern in ["/topic/**", "/topic/#"] {
            let g = Glob::new(pattern);
            assert!(g.matches("/topic/a.b.c"), "{pattern}");
            assert!(g.matches("/topic/a.#"), "{pattern}");
            assert!(!g.matches("/queue/a"), "{pattern}");
        }
        assert!(Glob::new("**").matches("/anything/at.all"));
        assert!(Glob::new("/queue/a").matches("/queue/a"));
        assert!(!Glob::new("/queue/a").matches("/queue/ab"));
    }

    #[test]
    fn long_inputs_stay_fast() {
        let pattern = Glob::new(&"*a".repeat(200));
        let text = "a".repeat(5000) + "b";
        assert!(!pattern.matches(&text));
    }

    #[test]
    fn redaction_hides_secrets() {
        let frame = Frame::new(Command::Connect)
            .with_header("login", "alice")
            .with_header("passcode", "hunter2")
            .with_header("Authorization", "Bearer abc");
        let shown = format!("{} {:?}", Redacted(&frame), Redacted(&frame));
        assert!(!shown.contains("hunter2") && !shown.contains("abc"), "{shown}");
        assert!(shown.contains("alice"));
    }

    #[test]
    fn per_address_counts_and_releases() {
        let table = PerAddress::new(2, false);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let locals: Vec<_> = (0..5).map(|_| table.acquire(local).unwrap()).collect();
        assert_eq!(table.count(local), 0, "loopback is not counted by default");
        drop(locals);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = table.acquire(ip).unwrap();
        let _b = table.acquire(ip).unwrap();
        assert!(table.acquire(ip).is_none());
        drop(a);
        assert!(table.acquire(ip).is_some());
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(address_key(v6a), address_key(v6b));
    }
}
