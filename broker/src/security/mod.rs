//! Small security building blocks shared by the listeners and the sessions: destination
//! patterns for permissions, redaction of secrets in traces, per-address connection
//! counting, and unguessable ids.
//!
//! Authentication and permission rules live in [`auth`], TLS in [`crate::listener::tls`].

pub mod auth;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use stampede_protocol::Frame;

use crate::destination::topic::{TopicPattern, TopicWord, WORD_SEPARATORS};

/// 128 bits from the operating system's random source, for names whose holder gains something:
/// session ids (temporary and reply queue names contain them), fallback session ids, ids of
/// HTTP publish sessions. With no random source, a hasher seeded by the OS at start and a
/// counter, so an id is still not derivable from the others or from the start time.
pub fn random_128() -> u128 {
    let mut random = [0u8; 16];
    if getrandom::fill(&mut random).is_err() {
        use std::hash::BuildHasher;
        static NEXT_FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let state = std::collections::hash_map::RandomState::new();
        let n = NEXT_FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        random[..8].copy_from_slice(&state.hash_one(n).to_le_bytes());
        random[8..].copy_from_slice(&state.hash_one(!n).to_le_bytes());
    }
    u128::from_le_bytes(random)
}

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

/// A destination pattern in a permission rule (a `read` or `write` entry).
///
/// * `**` and `#` match any run of characters, including none, across `/` and `.`;
/// * `*` matches any run of characters within one path element or topic word: it stops at the
///   word separators `/` and `.`, the same ones the topic wildcards use
///   ([`WORD_SEPARATORS`]);
/// * every other character matches itself.
///
/// A rule matches only the whole destination: `/queue/a` does not match `/queue/ab`.
///
/// A wildcard subscription ([`TopicPattern`]) is allowed only by a rule that matches every topic
/// it can ever receive ([`PermissionPattern::covers_topic`]): the subscription's `*` word can be
/// covered by the rule's `*` or `**`, its `#` or `>` words only by `**` or `#`. So
/// `/topic/news.*` allows subscribing to `/topic/news.*` but not to `/topic/news.#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionPattern {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`
    WithinWord,
    /// `**` or `#`
    Anything,
}

/// What a rule is matched against: the characters of a destination, where the wildcard words
/// of a subscription stand for every word (or run of words) they can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Char(char),
    /// A topic pattern's `*`: any one word, so any run of characters without a separator.
    OneWord,
    /// A topic pattern's `#` or `>`: any run of words and separators.
    OneOrMoreWords,
}

impl PermissionPattern {
    /// Parses a pattern (every string is a valid pattern).
    pub fn new(text: &str) -> PermissionPattern {
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                    tokens.push(Token::Anything);
                }
                '*' => tokens.push(Token::WithinWord),
                '#' => tokens.push(Token::Anything),
                other => tokens.push(Token::Literal(other)),
            }
        }
        PermissionPattern { text: text.to_owned(), tokens }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `destination`, taken literally, matches the whole pattern.
    pub fn matches(&self, destination: &str) -> bool {
        let subject: Vec<Subject> = destination.chars().map(Subject::Char).collect();
        self.covers(&subject)
    }

    /// True when every topic that the subscription `/topic/<pattern>` can match is matched by
    /// this rule.
    pub fn covers_topic(&self, pattern: &TopicPattern) -> bool {
        let mut subject: Vec<Subject> = "/topic/".chars().map(Subject::Char).collect();
        for (i, word) in pattern.words().iter().enumerate() {
            if i > 0 {
                subject.push(Subject::Char(pattern.separators()[i - 1]));
            }
            match word {
                TopicWord::Literal(text) => subject.extend(text.chars().map(Subject::Char)),
                TopicWord::One => subject.push(Subject::OneWord),
                TopicWord::OneOrMore => subject.push(Subject::OneOrMoreWords),
            }
        }
        self.covers(&subject)
    }

    /// True when the tokens can consume the whole subject such that each wildcard of the
    /// subject lies inside a rule wildcard that matches everything it stands for. Sound: any
    /// destination the subject stands for is then matched by the same alignment. Runs in
    /// O(pattern × subject).
    fn covers(&self, subject: &[Subject]) -> bool {
        // reachable[j]: the tokens so far can consume exactly subject[..j].
        let mut reachable = vec![false; subject.len() + 1];
        reachable[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; subject.len() + 1];
            match *token {
                Token::Literal(c) => {
                    for j in 0..subject.len() {
                        next[j + 1] = reachable[j] && subject[j] == Subject::Char(c);
                    }
                }
                Token::Anything => {
                    let mut on = false;
                    for j in 0..=subject.len() {
                        on |= reachable[j];
                        next[j] = on;
                    }
                }
                Token::WithinWord => {
                    let mut on = false;
                    for j in 0..=subject.len() {
                        on |= reachable[j];
                        next[j] = on;
                        let ends_the_word = match subject.get(j) {
                            Some(Subject::Char(c)) => WORD_SEPARATORS.contains(c),
                            Some(Subject::OneWord) => false,
                            Some(Subject::OneOrMoreWords) | None => true,
                        };
                        if ends_the_word {
                            on = false;
                        }
                    }
                }
            }
            reachable = next;
            if !reachable.contains(&true) {
                return false;
            }
        }
        reachable[subject.len()]
    }
}

impl fmt::Display for PermissionPattern {
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

    fn covers(rule: &str, subscription: &str) -> bool {
        let topics = subscription.strip_prefix("/topic/").and_then(TopicPattern::parse).expect("a wildcard");
        PermissionPattern::new(rule).covers_topic(&topics)
    }

    #[test]
    fn word_wildcard_stays_within_one_element() {
        let g = PermissionPattern::new("/topic/news.*");
        assert!(g.matches("/topic/news.sport"));
        assert!(!g.matches("/topic/news.sport.uk"));
        assert!(!g.matches("/topic/news.sport/uk"));
        assert!(!g.matches("/topic/newsx"));
        assert!(g.matches("/topic/news.a#b"), "a # inside a word is an ordinary character");
        let q = PermissionPattern::new("/queue/orders-*");
        assert!(q.matches("/queue/orders-eu"));
        assert!(!q.matches("/queue/orders-eu/x"));
        assert!(!q.matches("/queue/other"));
    }

    #[test]
    fn any_wildcard_crosses_elements() {
        for pattern in ["/topic/**", "/topic/#"] {
            let g = PermissionPattern::new(pattern);
            assert!(g.matches("/topic/a.b.c"), "{pattern}");
            assert!(g.matches("/topic/a/b.c"), "{pattern}");
            assert!(!g.matches("/queue/a"), "{pattern}");
        }
        assert!(PermissionPattern::new("**").matches("/anything/at.all"));
        assert!(PermissionPattern::new("/queue/a").matches("/queue/a"));
        assert!(!PermissionPattern::new("/queue/a").matches("/queue/ab"));
    }

    #[test]
    fn a_word_wildcard_rule_covers_a_one_word_subscription_but_not_a_deeper_one() {
        assert!(covers("/topic/news.*", "/topic/news.*"));
        assert!(!covers("/topic/news.*", "/topic/news.#"));
        assert!(!covers("/topic/news.*", "/topic/news.>"));
        assert!(!covers("/topic/news.*", "/topic/news.*.*"));
        assert!(!covers("/topic/news.*", "/topic/news.*/secret"));
        assert!(!covers("/topic/news.*", "/topic/news/*"), "separators must agree");
        assert!(!covers("/topic/news.*", "/topic/*.sport"), "a literal never covers a wildcard");
        assert!(covers("/topic/*.*", "/topic/news.*"));
    }

    #[test]
    fn an_anything_rule_covers_multi_word_subscriptions() {
        for rule in ["/topic/news.**", "/topic/news.#", "/topic/**", "**"] {
            assert!(covers(rule, "/topic/news.#"), "{rule}");
            assert!(covers(rule, "/topic/news.>"), "{rule}");
            assert!(covers(rule, "/topic/news.*.uk"), "{rule}");
        }
        assert!(covers("/topic/**.uk", "/topic/#.uk"));
        assert!(!covers("/topic/**.uk", "/topic/#"));
        assert!(!covers("/topic/news.**", "/topic/#"));
        assert!(!covers("/queue/**", "/topic/#"));
    }

    #[test]
    fn every_topic_a_covered_subscription_matches_is_allowed_by_the_rule() {
        let rules = ["/topic/a.*", "/topic/a.**", "/topic/*.b", "/topic/a.*.c", "/topic/**.c", "/topic/a/*"];
        let subscriptions = ["a.*", "a.#", "*.b", "a.*.c", "#.c", "a/*", "a.>", "*.*", "a/#"];
        let topics = ["a.b", "a.x", "a/b", "a.b.c", "x.b", "a.b/c", "q.r.c", "a/x", "a.b.c.d", "a.", "a.#x"];
        for rule in rules {
            let permission = PermissionPattern::new(rule);
            for subscription in subscriptions {
                let pattern = TopicPattern::parse(subscription).unwrap();
                if !permission.covers_topic(&pattern) {
                    continue;
                }
                for topic in topics.iter().filter(|topic| pattern.matches(topic)) {
                    let destination = format!("/topic/{topic}");
                    assert!(permission.matches(&destination), "{rule} covers {subscription} but not {destination}");
                }
            }
        }
    }

    #[test]
    fn long_inputs_stay_fast() {
        let pattern = PermissionPattern::new(&"*a".repeat(200));
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
