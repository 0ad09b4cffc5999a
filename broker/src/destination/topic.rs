//! Topics: every current subscriber gets every message.
//!
//! A publish takes this topic's read lock (never a broker-wide one; publishers to the same topic
//! share it), builds nothing per subscriber but a small [`Delivery`] that points at the one
//! shared [`MessageTemplate`], and pushes it into each subscriber's outbox. Publishing happens on
//! the publisher's own task, so messages from one publisher reach every subscriber in publish
//! order. Subscribing appends and unsubscribing swap-removes through an id-to-position map, both
//! O(1), so a topic with 100,000 browser subscribers is built and torn down in linear time (a
//! copy-on-write list would copy the whole list on every subscribe).
//!
//! A subscriber with a selector is skipped, at publish time, for messages its selector does not
//! match: they cost it one evaluation and never reach its outbox.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use stampede_protocol::MessageTemplate;

use crate::destination::outbox::{Admitted, Delivery, Outbox, SlowConsumerPolicy};
use crate::destination::queue::QueueHandle;
use crate::destination::selector::Selector;

/// One subscription to a topic (exact, or a wildcard pattern shared by many topics).
#[derive(Debug)]
pub struct TopicSubscriber {
    /// Broker-wide unique id, used to remove it again.
    pub id: u64,
    /// Where its messages go.
    pub sink: Sink,
    /// Only messages this selects are delivered (`selector` on SUBSCRIBE).
    pub selector: Option<Arc<Selector>>,
}

/// Where a topic subscriber's messages go.
#[derive(Debug)]
pub enum Sink {
    /// Straight to a connected client.
    Connection {
        /// The session-local subscription key written into deliveries.
        subscription: u64,
        /// The client's outbox.
        outbox: Arc<Outbox>,
        /// What to do when the outbox is full.
        policy: SlowConsumerPolicy,
    },
    /// Into a durable subscription's queue, which keeps them while its client is away.
    Queue(QueueHandle),
}

/// A topic and its current subscribers.
#[derive(Debug)]
pub struct Topic {
    name: Arc<str>,
    subscribers: RwLock<Subscribers>,
}

#[derive(Debug, Default)]
struct Subscribers {
    list: Vec<Arc<TopicSubscriber>>,
    position: HashMap<u64, usize>,
}

impl Topic {
    /// An empty topic.
    pub fn new(name: Arc<str>) -> Topic {
        Topic { name, subscribers: RwLock::new(Subscribers::default()) }
    }

    /// The topic name (without `/topic/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delivers to every connected subscriber and adds the queues of durable subscribers to
    /// `durable` (the caller enqueues there, which may wait). Returns how many connected
    /// subscribers took it.
    ///
    /// Outboxes left above half their budget are added to `congested`, for the stall gate.
    pub fn publish(
        &self,
        template: &Arc<MessageTemplate>,
        message_id: u64,
        durable: &mut Vec<QueueHandle>,
        congested: &mut Vec<Arc<Outbox>>,
    ) -> usize {
        let subscribers = self.subscribers.read().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for subscriber in &subscribers.list {
            if subscriber.selector.as_ref().is_some_and(|selector| !selector.matches(template.headers())) {
                continue;
            }
            match &subscriber.sink {
                Sink::Connection { subscription, outbox, policy } => {
                    let delivery = Delivery {
                        subscription: *subscription,
                        template: Arc::clone(template),
                        message_id,
                        from_queue: None,
                        redelivered: false,
                    };
                    match outbox.push_topic(delivery, *policy) {
                        Ok(Admitted::Queued) => delivered += 1,
                        Ok(Admitted::Congested) => {
                            delivered += 1;
                            congested.push(Arc::clone(outbox));
                        }
                        Err(_) => {}
                    }
                }
                Sink::Queue(queue) => durable.push(queue.clone()),
            }
        }
        delivered
    }

    /// Adds a subscriber.
    pub fn add(&self, subscriber: Arc<TopicSubscriber>) {
        let mut subscribers = self.subscribers.write().unwrap_or_else(|p| p.into_inner());
        let position = subscribers.list.len();
        subscribers.position.insert(subscriber.id, position);
        subscribers.list.push(subscriber);
    }

    /// Removes the subscriber with broker-wide id `id`; returns how many remain.
    pub fn remove(&self, id: u64) -> usize {
        let mut subscribers = self.subscribers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(position) = subscribers.position.remove(&id) {
            subscribers.list.swap_remove(position);
            if let Some(moved) = subscribers.list.get(position).map(|s| s.id) {
                subscribers.position.insert(moved, position);
            }
        }
        if subscribers.list.is_empty() {
            // Give the memory back: a topic that had a crowd may stay around empty.
            *subscribers = Subscribers::default();
        }
        subscribers.list.len()
    }

    /// Number of subscribers now.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.read().unwrap_or_else(|p| p.into_inner()).list.len()
    }
}

/// The characters that separate the words of a topic name: `news.uk/london` has the three
/// words `news`, `uk` and `london`. Permission patterns ([`crate::security::PermissionPattern`])
/// stop their `*` at the same characters, so a read rule and a wildcard subscription agree on
/// what one word is.
pub const WORD_SEPARATORS: [char; 2] = ['.', '/'];

/// A topic wildcard subscription (the name after `/topic/`), split into words at
/// [`WORD_SEPARATORS`]: a word `*` matches exactly one word, a word `#` or `>` matches one or
/// more (so both RabbitMQ-style `a.#` and ActiveMQ-style `a.>` work). Separators match
/// themselves, except between the words a `#` covers: `a/#` matches `a/b.c` but not `a.b`.
///
/// Matching is a table over (pattern word, topic word), O(pattern × name) whatever the number
/// of `#`: a subscription chosen by a client must not make every publish exponential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    words: Vec<TopicWord>,
    /// `separators[i]` stands between `words[i]` and `words[i + 1]`.
    separators: Vec<char>,
}

/// One word of a [`TopicPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicWord {
    /// This exact word.
    Literal(String),
    /// `*`: any one word.
    One,
    /// `#` or `>`: one or more words, with any separators between them.
    OneOrMore,
}

impl TopicPattern {
    /// Parses `name` if one of its words is a wildcard; `None` for a plain topic name.
    pub fn parse(name: &str) -> Option<TopicPattern> {
        // Checked without allocating first: every SEND to a topic asks.
        if !name.split(WORD_SEPARATORS).any(|word| matches!(word, "*" | "#" | ">")) {
            return None;
        }
        let (words, separators) = split_words(name);
        let words: Vec<TopicWord> = words
            .into_iter()
            .map(|word| match word {
                "*" => TopicWord::One,
                "#" | ">" => TopicWord::OneOrMore,
                literal => TopicWord::Literal(literal.to_owned()),
            })
            .collect();
        Some(TopicPattern { words, separators })
    }

    /// The words, in order.
    pub fn words(&self) -> &[TopicWord] {
        &self.words
    }

    /// The separator after each word but the last.
    pub fn separators(&self) -> &[char] {
        &self.separators
    }

    /// True when the topic `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let (words, separators) = split_words(name);
        // reachable[j]: the pattern words so far match exactly the first j words of the name.
        let mut reachable = vec![false; words.len() + 1];
        reachable[0] = true;
        for (i, pattern_word) in self.words.iter().enumerate() {
            let mut next = vec![false; words.len() + 1];
            // A word after the first starts only where the separators before it agree (past the
            // first pattern word, reachable[j] implies j >= 1: every pattern word takes a word).
            let starts_at = |j: usize| reachable[j] && (i == 0 || separators[j - 1] == self.separators[i - 1]);
            let mut covering = false;
            for (j, word) in words.iter().enumerate() {
                count_match_step();
                match pattern_word {
                    TopicWord::Literal(literal) => next[j + 1] = starts_at(j) && literal == word,
                    TopicWord::One => next[j + 1] = starts_at(j),
                    TopicWord::OneOrMore => {
                        covering |= starts_at(j);
                        next[j + 1] = covering;
                    }
                }
            }
            reachable = next;
            if !reachable.contains(&true) {
                return false;
            }
        }
        reachable[words.len()]
    }
}

/// The words of `name` and the separators between them (one fewer).
fn split_words(name: &str) -> (Vec<&str>, Vec<char>) {
    let words = name.split(WORD_SEPARATORS).collect();
    let separators = name.chars().filter(|c| WORD_SEPARATORS.contains(c)).collect();
    (words, separators)
}

#[cfg(test)]
thread_local! {
    static MATCH_STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one cell of the matching table, so a test can bound the work (not the time).
#[inline]
fn count_match_step() {
    #[cfg(test)]
    MATCH_STEPS.with(|steps| steps.set(steps.get() + 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        TopicPattern::parse(pattern).expect("a wildcard pattern").matches(name)
    }

    #[test]
    fn plain_names_are_not_patterns() {
        assert!(TopicPattern::parse("a.b.c").is_none());
        assert!(TopicPattern::parse("a/b.c").is_none());
        assert!(TopicPattern::parse("a*.b#").is_none(), "wildcards are whole words only");
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("*.b", "x.b"));
    }

    #[test]
    fn hash_and_greater_than_match_one_or_more_segments() {
        for wildcard in ["#", ">"] {
            let pattern = format!("a.{wildcard}");
            assert!(matches(&pattern, "a.b"));
            assert!(matches(&pattern, "a.b.c.d"));
            assert!(!matches(&pattern, "a"));
            assert!(!matches(&pattern, "b.c"));
        }
        assert!(matches("a.#.z", "a.b.c.z"));
        assert!(!matches("a.#.z", "a.z"));
    }

    #[test]
    fn star_stops_at_slash_as_well_as_dot() {
        assert!(matches("b.*", "b.x"));
        assert!(!matches("b.*", "b.x/secret"));
        assert!(!matches("b.*", "b.x.secret"));
        assert!(matches("b/*", "b/x"));
        assert!(!matches("b/*", "b/x/y"));
        assert!(matches("*/*", "a/b"));
    }

    #[test]
    fn separators_match_themselves_outside_a_multi_word_wildcard() {
        assert!(!matches("b.*", "b/x"), "a dot in the pattern is not a slash in the name");
        assert!(!matches("b/*", "b.x"));
        assert!(matches("b.#", "b.x/y.z"), "# covers words with any separators between them");
        assert!(!matches("b.#", "b/x"));
        assert!(matches("a.#/z", "a.b.c/z"));
        assert!(!matches("a.#/z", "a.b.c.z"));
    }

    #[test]
    fn many_multi_word_wildcards_against_a_long_name_take_polynomial_steps() {
        // Backtracking would try every way of splitting 400 words among 40 `#`s (more than
        // 10^40 of them) before failing on the last word; the table has 40 × 401 cells.
        let pattern = TopicPattern::parse(&format!("{}.end", vec!["#"; 40].join("."))).unwrap();
        let name = format!("{}.last", vec!["w"; 400].join("."));
        MATCH_STEPS.with(|steps| steps.set(0));
        assert!(!pattern.matches(&name));
        let steps = MATCH_STEPS.with(|steps| steps.get());
        assert!(steps <= 41 * 401, "{steps} steps");
        assert!(pattern.matches(&format!("{}.end", vec!["w"; 400].join("."))));
    }
}
