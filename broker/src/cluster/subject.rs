//! Topic names and patterns as NATS subjects, and back.
//!
//! A topic `news.uk` of virtual host `/` is the subject `<prefix>./.t.news.uk`: the prefix
//! (`subject_prefix`, default `stampede`), the virtual host as one token, `t` for topics (room
//! for queues and durable subscriptions later), then the topic name split at `.`, one token per
//! word.
//!
//! NATS splits subjects only at `.` and gives `*`, `>` and white space a meaning, and refuses
//! empty tokens. Stampede names may hold any of those, so each token is escaped reversibly: a
//! byte outside a small safe set becomes `%XX` (upper-case hex, `%` itself included), and an
//! empty token (`a..b`) becomes a lone `%`, which no escape produces otherwise. Decoding a
//! subject gives back exactly the name it was made from, so a remote node delivers to the
//! right topic and two names never share a subject.
//!
//! A pattern becomes the narrowest subject that still covers everything its local matcher
//! ([`TopicPattern`](crate::destination::topic::TopicPattern)) matches: `*` is NATS `*`, a `#`
//! or `>` word is NATS `>` and ends the subject (words after a mid-pattern `#` are matched
//! locally). Stampede words also split at `/`, NATS tokens do not, so a token whose `/`-words
//! hold a `*` becomes `*`, and one holding a `#` becomes `>`. A node checks every remote
//! message against the local matcher before delivering, so a broader subject costs only
//! traffic, never a wrong delivery.
//!
//! Stampede's `#` matches one or more words (`a.#` does not match `a`), so `a.#` maps to the
//! one subject `a.>`; RabbitMQ's reading, where `a.#` also matches the bare `a`, would need the
//! second subscription `a` (NATS's MQTT server does that for `a/#`). One pattern is one
//! subscription, which keeps each subscriber's messages on one ordered NATS stream.

use std::fmt::Write as _;

/// The token that marks topic subjects, after the prefix and the virtual host.
const TOPIC_KIND: &str = "t";

/// The token that marks queue subjects (JetStream), after the prefix and the virtual host.
const QUEUE_KIND: &str = "q";

/// True for the bytes a token keeps as they are.
fn is_safe(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_/:~+=@!,;&".contains(&byte)
}

/// `token` (one `.`-separated word of a name, or a virtual host) as a NATS subject token.
pub fn encode_token(token: &str, out: &mut String) {
    if token.is_empty() {
        out.push('%');
        return;
    }
    for &byte in token.as_bytes() {
        if is_safe(byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// The word a subject token stands for; `None` if it is not one [`encode_token`] makes.
pub fn decode_token(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = token.get(i + 1..i + 3)?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            byte if is_safe(byte) => {
                decoded.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(decoded).ok()
}

/// The subjects of one subject prefix: what a topic of a virtual host is called on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (already validated: dot-separated non-empty tokens without
    /// wildcards or white space).
    pub fn new(prefix: &str) -> Subjects {
        Subjects { prefix: prefix.to_owned() }
    }

    /// `<prefix>.<vhost>.t.`: what every topic subject of `vhost` starts with.
    fn topic_base(&self, vhost: &str) -> String {
        let mut base = String::with_capacity(self.prefix.len() + vhost.len() + 4);
        base.push_str(&self.prefix);
        base.push('.');
        encode_token(vhost, &mut base);
        base.push('.');
        base.push_str(TOPIC_KIND);
        base.push('.');
        base
    }

    /// The subject topic `name` of virtual host `vhost` is published on.
    pub fn topic(&self, vhost: &str, name: &str) -> String {
        let mut subject = self.topic_base(vhost);
        for (i, word) in name.split('.').enumerate() {
            if i > 0 {
                subject.push('.');
            }
            encode_token(word, &mut subject);
        }
        subject
    }

    /// The subject to subscribe for topic pattern (or plain name) `pattern` of `vhost`.
    pub fn pattern(&self, vhost: &str, pattern: &str) -> String {
        let mut subject = self.topic_base(vhost);
        for (i, token) in pattern.split('.').enumerate() {
            if i > 0 {
                subject.push('.');
            }
            match token {
                "*" => subject.push('*'),
                "#" | ">" => {
                    subject.push('>');
                    return subject;
                }
                _ => {
                    let mut words = token.split('/');
                    if words.clone().any(|word| word == "#" || word == ">") {
                        subject.push('>');
                        return subject;
                    }
                    if words.any(|word| word == "*") {
                        subject.push('*');
                    } else {
                        encode_token(token, &mut subject);
                    }
                }
            }
        }
        subject
    }

    /// The subject queue `name` of `vhost` is stored under in JetStream:
    /// `<prefix>.<vhost>.q.<name>`, the whole name one token (its dots escaped), so no queue's
    /// subject is a prefix of another's.
    pub fn queue(&self, vhost: &str, name: &str) -> String {
        let mut subject = self.kind_base(vhost, QUEUE_KIND);
        encode_token(name, &mut subject);
        subject
    }

    /// The subjects of every queue of `vhost` (the stream's subject filter).
    pub fn queues(&self, vhost: &str) -> String {
        let mut subject = self.kind_base(vhost, QUEUE_KIND);
        subject.push('*');
        subject
    }

    /// The JetStream stream holding the queues of `vhost`: the prefix and the virtual host with
    /// every byte but ASCII letters and digits written `_XX`, joined by `-Q-` (stream names
    /// cannot hold dots, wildcards, white space or path separators).
    pub fn queue_stream(&self, vhost: &str) -> String {
        format!("{}-Q-{}", name_safe(&self.prefix), name_safe(vhost))
    }

    /// The durable consumer of queue `name`: the name written as [`Subjects::queue_stream`]
    /// writes names, cut at 64 bytes and completed by a hash of the whole when longer (every
    /// node computes the same).
    pub fn queue_consumer(name: &str) -> String {
        let safe = name_safe(name);
        if safe.len() <= 80 {
            return safe;
        }
        // FNV-1a: stable across builds, unlike the standard library's hasher.
        let hash =
            name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{}_{hash:016x}", &safe[..64])
    }

    fn kind_base(&self, vhost: &str, kind: &str) -> String {
        let mut base = String::with_capacity(self.prefix.len() + vhost.len() + 4);
        base.push_str(&self.prefix);
        base.push('.');
        encode_token(vhost, &mut base);
        base.push('.');
        base.push_str(kind);
        base.push('.');
        base
    }

    /// The subject of a node's round trips to the server (`<prefix>._ping.<instance>`), which
    /// nobody subscribes.
    pub fn ping(&self, instance: &str) -> String {
        let mut subject = format!("{}._ping.", self.prefix);
        encode_token(instance, &mut subject);
        subject
    }

    /// The virtual host and topic name of a topic subject; `None` for a subject this prefix
    /// and encoding did not make.
    pub fn parse_topic(&self, subject: &str) -> Option<(String, String)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let (vhost, rest) = rest.split_once('.')?;
        let name = rest.strip_prefix(TOPIC_KIND)?.strip_prefix('.')?;
        let vhost = decode_token(vhost)?;
        let mut decoded = String::with_capacity(name.len());
        for (i, token) in name.split('.').enumerate() {
            if i > 0 {
                decoded.push('.');
            }
            decoded.push_str(&decode_token(token)?);
        }
        Some((vhost, decoded))
    }
}

/// `text` with every byte but ASCII letters and digits written `_XX`.
fn name_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() {
            out.push(byte as char);
        } else {
            let _ = write!(out, "_{byte:02X}");
        }
    }
    out
}

/// Why a subject prefix cannot be used.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("it is empty".to_owned());
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Err(format!("{prefix:?} has an empty token (two dots, or a dot at an end)"));
        }
        if token == "*" || token == ">" || token.starts_with('$') {
            return Err(format!("{prefix:?}: the token {token:?} is reserved by NATS"));
        }
        if let Some(bad) = token.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>')) {
            return Err(format!("{prefix:?} contains {bad:?}, which NATS subjects cannot hold"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::topic::TopicPattern;

    fn subjects() -> Subjects {
        Subjects::new("stampede")
    }

    /// NATS's own subject matching (`*` one token, `>` one or more at the end).
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let pattern: Vec<&str> = pattern.split('.').collect();
        let subject: Vec<&str> = subject.split('.').collect();
        for (i, token) in pattern.iter().enumerate() {
            match *token {
                ">" => return subject.len() > i,
                "*" if i < subject.len() => {}
                literal if subject.get(i) == Some(&literal) => {}
                _ => return false,
            }
        }
        pattern.len() == subject.len()
    }

    #[test]
    fn names_nats_cannot_carry_are_encoded_reversibly() {
        let names = [
            "news.uk",
            "a..b",
            ".lead",
            "trail.",
            "with space.and\ttab",
            "star*.gt>.hash#",
            "100%.%",
            "ünïcode.名前",
            "news.uk/london",
            "exchange:amq.fanout",
            "$SYS.x",
        ];
        for name in names {
            let subject = subjects().topic("/", name);
            assert!(
                subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace)),
                "{name:?} -> {subject:?}"
            );
            assert_eq!(subjects().parse_topic(&subject), Some(("/".to_owned(), name.to_owned())), "{subject}");
        }
        let other_vhost = subjects().topic("tenant.a b", "x");
        assert_eq!(other_vhost, "stampede.tenant%2Ea%20b.t.x");
        assert_eq!(subjects().parse_topic(&other_vhost), Some(("tenant.a b".to_owned(), "x".to_owned())));
        assert_ne!(subjects().topic("/", "a.b"), subjects().topic("/", "a%2Eb"), "a '%' is escaped too");
    }

    #[test]
    fn foreign_subjects_are_not_parsed() {
        assert_eq!(subjects().parse_topic("other./.t.x"), None);
        assert_eq!(subjects().parse_topic("stampede./.q.x"), None);
        assert_eq!(subjects().parse_topic("stampede./.t.bad%zz"), None);
        assert_eq!(subjects().parse_topic("stampede./.t.sp ace"), None);
    }

    #[test]
    fn wildcards_map_to_nats_wildcards() {
        let s = subjects();
        assert_eq!(s.pattern("/", "a.*"), "stampede./.t.a.*");
        assert_eq!(s.pattern("/", "a.#"), "stampede./.t.a.>");
        assert_eq!(s.pattern("/", "a.>"), "stampede./.t.a.>");
        assert_eq!(s.pattern("/", "a.#.z"), "stampede./.t.a.>", "words after a mid-pattern # are matched locally");
        assert_eq!(s.pattern("/", "*.b"), "stampede./.t.*.b");
        assert_eq!(s.pattern("/", "news/*"), "stampede./.t.*");
        assert_eq!(s.pattern("/", "a/#"), "stampede./.t.>");
        assert_eq!(s.pattern("/", "plain.name"), s.topic("/", "plain.name"));
    }

    #[test]
    fn every_name_a_pattern_matches_is_covered_by_its_subject() {
        let patterns = ["a.*", "a.#", "a.>", "a.#.z", "*.b", "news/*", "a/#", "#", "*", "a.*.c", "a..*", "b/*.x"];
        let names = [
            "a", "a.b", "a.b.c", "a.b.z", "a.z", "x.b", "news/x", "news/x/y", "a/b", "a/b.c", "a..b", "b/q.x", "a.b/c",
            "a.",
        ];
        for pattern in patterns {
            let matcher = TopicPattern::parse(pattern).expect("a pattern");
            let subject = subjects().pattern("/", pattern);
            for name in names {
                if matcher.matches(name) {
                    assert!(
                        nats_matches(&subject, &subjects().topic("/", name)),
                        "{pattern:?} matches {name:?} but {subject:?} would not bring it"
                    );
                }
            }
        }
    }

    #[test]
    fn queues_are_one_token_and_stream_and_consumer_names_are_safe() {
        let s = subjects();
        assert_eq!(s.queue("/", "jobs.eu"), "stampede./.q.jobs%2Eeu");
        assert_eq!(s.queues("/"), "stampede./.q.*");
        assert_eq!(s.queue_stream("/"), "stampede-Q-_2F");
        assert_ne!(s.queue_stream("a-b"), Subjects::new("stampede-Q-a").queue_stream("b"));
        assert_eq!(Subjects::queue_consumer("jobs.eu"), "jobs_2Eeu");
        let long = "x".repeat(200);
        let name = Subjects::queue_consumer(&long);
        assert_eq!(name.len(), 81);
        assert_ne!(name, Subjects::queue_consumer(&format!("{long}y")));
    }

    #[test]
    fn bad_prefixes_are_refused_with_the_reason() {
        assert!(check_prefix("stampede").is_ok());
        assert!(check_prefix("acme.stampede").is_ok());
        assert!(check_prefix("").unwrap_err().contains("empty"));
        assert!(check_prefix("a..b").unwrap_err().contains("empty token"));
        assert!(check_prefix("a.>").unwrap_err().contains("reserved"));
        assert!(check_prefix("$JS").unwrap_err().contains("reserved"));
        assert!(check_prefix("a b").unwrap_err().contains("' '"));
    }
}
