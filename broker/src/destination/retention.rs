//! Last-value and replay topics: the recent history of a topic, kept so that a subscriber that
//! arrives later can ask for it (`x-replay: last`, `x-replay: N`, `x-replay-since: <ms>`).
//!
//! # What is kept
//! A topic keeps history when a `[topics."<name or pattern>"]` table of the configuration
//! matches it (`retain` messages, `retain_ms` of age, `persistent` copies in the store), or for
//! the messages published to it with `x-retain: true` (then, where no table matches, the last
//! [`DEFAULT_RETAIN`] message: a last-value topic). Every topic's history is bounded by its count
//! and age, and all of them together (in every virtual host) by `retained_max_bytes`: a message
//! that would go over the budget first evicts its own topic's oldest messages, and when even
//! that cannot make room it is delivered but not kept (logged). Nothing else is kept: a topic
//! with no table and no `x-retain` costs its publishers one branch.
//!
//! # The seam
//! A replaying subscriber must see the history and then the live messages with no gap and no
//! duplicate, while publishers keep publishing. Reading the history and attaching the live
//! subscription are therefore one step against the publishers of retained messages: each
//! retained publish holds [`Retention::seam`] for reading while it appends to the history *and*
//! hands the message to the subscribers present, and a replaying SUBSCRIBE holds it for writing
//! while it copies the history into its outbox *and* registers itself. A message is thus either
//! in the history the subscriber copied (it was published before) or delivered to it live (it
//! was published after), never both, never neither. Publishes that keep nothing never take the
//! lock, so plain topics are not slowed, and a replaying SUBSCRIBE pauses only the retained
//! publishes of its own virtual host, for the time of one copy.
//!
//! # In the store
//! A persistent history is stored as a record of kind
//! [`QueueKind::RetainedTopic`](stampede_storage::QueueKind::RetainedTopic) named
//! `retained:<topic>` (prefixed like every name of a virtual host other than `/`), whose messages
//! are the retained ones, in the store's ordinary self-identifying format: they are
//! group-committed like queue messages, salvaged like them, and trimmed by the same count and age
//! after a restart. The RECEIPT of a SEND whose retained copy is stored waits for that write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

use stampede_protocol::MessageTemplate;
use stampede_storage::{Op, QueueRecord, Store, StoredMessage};
use tokio::sync::oneshot;

use crate::destination::outbox::{Delivery, Refused};
use crate::destination::queue::Verdict;
use crate::destination::router::TopicMessage;
use crate::destination::topic::{Sink, TopicPattern, TopicSubscriber, TopicWord};
use crate::error::{ErrorKind, StompError};

/// Messages kept per topic where neither a `[topics]` table nor anything else says: the last
/// one (a last-value topic). The default of a table's `retain`, and what `x-retain: true` keeps
/// on a topic no table matches.
pub const DEFAULT_RETAIN: usize = 1;
/// Default of `retained_max_bytes`: every history of every virtual host together.
pub const DEFAULT_RETAINED_MAX_BYTES: usize = 64 * 1024 * 1024;
/// What store names of retained histories start with (after a virtual host's prefix).
const STORE_PREFIX: &str = "retained:";

/// A `[topics."<name or pattern>"]` table: how much history the topics it matches keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicRetention {
    /// Messages kept per topic (at least 1; [`DEFAULT_RETAIN`] when not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain: Option<usize>,
    /// Oldest a kept message may be, in ms (0 or not given: no age limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_ms: Option<u64>,
    /// Whether the kept messages are stored, and come back after a restart (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// How one topic's history is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Messages kept.
    pub count: usize,
    /// Oldest kept, in ms.
    pub max_age_ms: Option<u64>,
    /// Copies go to the store.
    pub persistent: bool,
}

impl Policy {
    /// What `x-retain: true` keeps on a topic no table matches: the last message, stored when
    /// the SEND was `persistent:true`.
    pub fn last_value(persistent: bool) -> Policy {
        Policy { count: DEFAULT_RETAIN, max_age_ms: None, persistent }
    }
}

#[derive(Debug)]
struct Rule {
    name: String,
    pattern: Option<TopicPattern>,
    literal_words: usize,
    policy: Policy,
}

/// The retention settings of the whole broker, shared by every virtual host (one byte budget).
#[derive(Debug)]
pub struct RetentionConfig {
    /// Most specific first (see [`RetentionConfig::new`]).
    rules: Vec<Rule>,
    max_bytes: usize,
    used: AtomicUsize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig::new(&BTreeMap::new(), DEFAULT_RETAINED_MAX_BYTES)
    }
}

/// Why a `[topics]` table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionConfigError {
    /// `retain = 0`.
    #[error("[topics.{0:?}] retain must be at least 1 (remove the table to keep nothing)")]
    ZeroRetain(String),
    /// An empty name, or one starting with `/topic/`.
    #[error("[topics.{0:?}]: name the topic or pattern without /topic/ (e.g. [topics.\"prices.*\"])")]
    BadName(String),
}

impl RetentionConfig {
    /// Settings from the `[topics]` tables and the byte budget.
    ///
    /// When several tables match a topic, the first in this order wins: an exact name, then the
    /// pattern with the most literal words, then the longer pattern, then the alphabetically
    /// first (the order of a TOML file is not kept, so it cannot decide).
    pub fn new(tables: &BTreeMap<String, TopicRetention>, max_bytes: usize) -> RetentionConfig {
        let mut rules: Vec<Rule> = tables
            .iter()
            .map(|(name, table)| {
                let pattern = TopicPattern::parse(name);
                let literal_words = pattern
                    .as_ref()
                    .map_or(usize::MAX, |p| p.words().iter().filter(|w| matches!(w, TopicWord::Literal(_))).count());
                let policy = Policy {
                    count: table.retain.unwrap_or(DEFAULT_RETAIN).max(1),
                    max_age_ms: table.retain_ms.filter(|&ms| ms > 0),
                    persistent: table.persistent.unwrap_or(false),
                };
                Rule { name: name.clone(), pattern, literal_words, policy }
            })
            .collect();
        rules.sort_by(|a, b| {
            b.literal_words.cmp(&a.literal_words).then(b.name.len().cmp(&a.name.len())).then(a.name.cmp(&b.name))
        });
        RetentionConfig { rules, max_bytes, used: AtomicUsize::new(0) }
    }

    /// Checks the tables.
    ///
    /// # Errors
    /// The first table that cannot be used.
    pub fn validate(tables: &BTreeMap<String, TopicRetention>) -> Result<(), RetentionConfigError> {
        for (name, table) in tables {
            if name.is_empty() || name.starts_with("/topic/") || name.chars().any(char::is_control) {
                return Err(RetentionConfigError::BadName(name.clone()));
            }
            if table.retain == Some(0) {
                return Err(RetentionConfigError::ZeroRetain(name.clone()));
            }
        }
        Ok(())
    }

    /// The table that decides for topic `name`, if one matches.
    pub fn policy_for(&self, name: &str) -> Option<Policy> {
        self.rules
            .iter()
            .find(|rule| match &rule.pattern {
                None => rule.name == name,
                Some(pattern) => pattern.matches(name),
            })
            .map(|rule| rule.policy)
    }

    /// Bytes kept now, in every virtual host.
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, cost: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(cost).filter(|&total| total <= self.max_bytes)
            })
            .is_ok()
    }

    fn release(&self, cost: usize) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(cost)));
    }
}

/// How much history a SUBSCRIBE asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// The last this many messages of each matching topic (`None`: all that is kept).
    pub last: Option<usize>,
    /// Only messages published at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
}

#[derive(Debug)]
struct Kept {
    id: u64,
    template: Arc<MessageTemplate>,
    published_ms: u64,
    expires_at_ms: Option<u64>,
    cost: usize,
    stored: bool,
}

#[derive(Debug)]
struct History {
    kept: VecDeque<Kept>,
    /// Its record is in the store (or was submitted).
    defined: bool,
}

/// One virtual host's retained histories.
pub struct Retention {
    config: Arc<RetentionConfig>,
    seam: RwLock<()>,
    topics: Mutex<HashMap<Arc<str>, History>>,
    store: Option<Arc<dyn Store>>,
    /// Store names of this virtual host start with this.
    store_prefix: String,
    vhost: Option<String>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention").field("store_prefix", &self.store_prefix).finish_non_exhaustive()
    }
}

/// A retained publish in progress: holds the seam until the message is delivered.
pub struct Retaining<'a> {
    _seam: std::sync::RwLockReadGuard<'a, ()>,
    /// Completes when the retained copy is on disk, when one is stored.
    pub stored: Option<Verdict>,
}

impl Retaining<'_> {
    /// Ends the retained publish (releasing the seam) and returns the store's verdict.
    pub fn finish(self) -> Option<Verdict> {
        self.stored
    }
}

impl Retention {
    /// The histories of the virtual host whose store names start with `store_prefix` (`vhost`:
    /// `None` for `/`).
    pub fn new(
        config: Arc<RetentionConfig>,
        store: Option<Arc<dyn Store>>,
        store_prefix: String,
        vhost: Option<String>,
    ) -> Retention {
        Retention { config, seam: RwLock::new(()), topics: Mutex::new(HashMap::new()), store, store_prefix, vhost }
    }

    /// How topic `name` keeps a message published with `x-retain` = `asked` (and
    /// `persistent` = `persistent`), or `None` when it keeps nothing. The only cost a plain
    /// topic pays: with no `[topics]` table and no `x-retain`, one branch.
    pub fn policy(&self, name: &str, asked: bool, persistent: bool) -> Option<Policy> {
        if !asked && self.config.rules.is_empty() {
            return None;
        }
        match self.config.policy_for(name) {
            Some(policy) => Some(Policy { persistent: policy.persistent || (asked && persistent), ..policy }),
            None if asked => Some(Policy::last_value(persistent)),
            None => None,
        }
    }

    /// Appends a message to topic `name`'s history and returns the guard the publish must hold
    /// while it delivers the message to the subscribers present (see the module docs).
    pub fn retain(
        &self,
        name: &str,
        policy: Policy,
        template: &Arc<MessageTemplate>,
        message: &TopicMessage,
    ) -> Retaining<'_> {
        let seam = self.seam.read().unwrap_or_else(|p| p.into_inner());
        let stored = self.append(name, policy, template, message);
        Retaining { _seam: seam, stored }
    }

    fn append(
        &self,
        name: &str,
        policy: Policy,
        template: &Arc<MessageTemplate>,
        message: &TopicMessage,
    ) -> Option<Verdict> {
        let now = message.enqueued_at_ms;
        let cost = template.encoded_len_hint();
        let key = self.store_key(name);
        let mut ops = Vec::new();
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let history = match topics.get_mut(name) {
            Some(history) => history,
            None => topics.entry(Arc::from(name)).or_insert(History { kept: VecDeque::new(), defined: false }),
        };
        self.trim(history, &key, now, policy.count - 1, policy.max_age_ms, &mut ops);
        let own: usize = history.kept.iter().map(|k| k.cost).sum();
        let fits = self.config.max_bytes.saturating_sub(self.config.used_bytes().saturating_sub(own)) >= cost;
        let mut reserved = false;
        while fits && !reserved {
            reserved = self.config.reserve(cost);
            if !reserved && !self.evict_oldest(history, &key, &mut ops) {
                break;
            }
        }
        let store = self.store.as_ref().filter(|_| policy.persistent);
        if reserved {
            let stored = store.is_some();
            if stored && !history.defined {
                let mut record = QueueRecord::retained_topic(key.clone(), name);
                record.vhost = self.vhost.clone();
                ops.push(Op::DefineQueue(record));
                history.defined = true;
            }
            if stored {
                ops.push(Op::Append {
                    queue: key,
                    message: StoredMessage {
                        seq: message.id,
                        headers: template.headers().clone(),
                        body: template.body().clone(),
                        delivery_count: 0,
                        expires_at_ms: message.expires_at_ms,
                        enqueued_at_ms: now,
                    },
                });
            }
            history.kept.push_back(Kept {
                id: message.id,
                template: Arc::clone(template),
                published_ms: now,
                expires_at_ms: message.expires_at_ms,
                cost,
                stored,
            });
        } else {
            tracing::warn!(topic = %name, bytes = cost, budget = self.config.max_bytes,
                "retained_max_bytes reached: the message is delivered but not retained");
        }
        if history.kept.is_empty() && !history.defined {
            topics.remove(name);
        }
        let store = self.store.as_ref()?;
        if ops.is_empty() {
            return None;
        }
        // Submitted under the lock, so the store sees this topic's appends and removals in order.
        let waits = reserved && policy.persistent;
        let (done, verdict) = if waits {
            let (tx, rx) = oneshot::channel();
            let topic = name.to_owned();
            let done: stampede_storage::Completion = Box::new(move |result| {
                let _ = tx.send(result.map_err(|error| {
                    StompError::of_kind(
                        ErrorKind::Internal,
                        "retained message not stored",
                        format!("The retained copy of the message to topic {topic} could not be stored durably: {error}. It was delivered to the current subscribers; retry for it to be kept."),
                    )
                }));
            });
            (Some(done), Some(rx))
        } else {
            (None, None)
        };
        store.submit(ops, done);
        verdict
    }

    /// Drops what is older than `max_age_ms` or expired, then the oldest beyond `keep`.
    fn trim(
        &self,
        history: &mut History,
        key: &str,
        now: u64,
        keep: usize,
        max_age_ms: Option<u64>,
        ops: &mut Vec<Op>,
    ) {
        let too_old = |kept: &Kept| {
            max_age_ms.is_some_and(|age| kept.published_ms.saturating_add(age) < now)
                || kept.expires_at_ms.is_some_and(|at| at <= now)
        };
        let before = history.kept.len();
        let mut dropped = Vec::new();
        history.kept.retain(|kept| {
            let old = too_old(kept);
            if old {
                dropped.push((kept.id, kept.cost, kept.stored));
            }
            !old
        });
        debug_assert!(history.kept.len() + dropped.len() == before);
        for (id, cost, stored) in dropped {
            self.forget(key, id, cost, stored, ops);
        }
        while history.kept.len() > keep {
            self.evict_oldest(history, key, ops);
        }
    }

    fn evict_oldest(&self, history: &mut History, key: &str, ops: &mut Vec<Op>) -> bool {
        match history.kept.pop_front() {
            Some(kept) => {
                self.forget(key, kept.id, kept.cost, kept.stored, ops);
                true
            }
            None => false,
        }
    }

    fn forget(&self, key: &str, id: u64, cost: usize, stored: bool, ops: &mut Vec<Op>) {
        self.config.release(cost);
        if stored {
            ops.push(Op::Remove { queue: key.to_owned(), seq: id });
        }
    }

    fn store_key(&self, topic: &str) -> String {
        format!("{}{STORE_PREFIX}{topic}", self.store_prefix)
    }

    /// Holds off every retained publish of this virtual host: the first half of a replaying
    /// SUBSCRIBE (see the module docs), held until it is registered.
    pub fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.seam.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the history `replay` asks for, of topic `name` (or of every topic pattern `name`
    /// matches), into `subscriber`'s outbox, oldest first; returns how many it copied. Call it
    /// while holding [`Retention::pause`].
    pub fn replay(&self, name: &str, replay: Replay, subscriber: &TopicSubscriber, now: u64) -> usize {
        let Sink::Connection { subscription, outbox, policy } = &subscriber.sink else { return 0 };
        let pattern = TopicPattern::parse(name);
        let mut chosen: Vec<(u64, Arc<MessageTemplate>)> = Vec::new();
        let mut ops = Vec::new();
        {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            for (topic, history) in topics.iter_mut() {
                let matches = match &pattern {
                    Some(pattern) => pattern.matches(topic),
                    None => **topic == *name,
                };
                if !matches {
                    continue;
                }
                let policy = self.config.policy_for(topic);
                let key = self.store_key(topic);
                self.trim(history, &key, now, usize::MAX, policy.and_then(|p| p.max_age_ms), &mut ops);
                let recent: Vec<&Kept> = history
                    .kept
                    .iter()
                    .filter(|kept| replay.since_ms.is_none_or(|since| kept.published_ms >= since))
                    .collect();
                let skip = replay.last.map_or(0, |last| recent.len().saturating_sub(last));
                chosen.extend(recent[skip..].iter().map(|kept| (kept.id, Arc::clone(&kept.template))));
            }
            if let Some(store) = self.store.as_ref().filter(|_| !ops.is_empty()) {
                store.submit(ops, None);
            }
        }
        // Message ids grow across topics, so this is publish order.
        chosen.sort_by_key(|(id, _)| *id);
        let mut copied = 0;
        for (message_id, template) in chosen {
            if subscriber.selector.as_ref().is_some_and(|selector| !selector.matches(template.headers())) {
                continue;
            }
            let delivery =
                Delivery { subscription: *subscription, template, message_id, from_queue: None, redelivered: false };
            match outbox.push_topic(delivery, *policy) {
                Ok(_) => copied += 1,
                Err(Refused::Closed | Refused::SlowConsumer) => break,
            }
        }
        copied
    }

    /// Takes back a stored history at start-up (`messages` in `seq` order), trimmed by what the
    /// configuration says now. The store names it belongs to a topic of this virtual host.
    pub fn restore(&self, topic: &str, messages: Vec<(u64, Arc<MessageTemplate>, u64, Option<u64>)>, now: u64) {
        let key = self.store_key(topic);
        let policy = self.config.policy_for(topic).unwrap_or(Policy::last_value(true));
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let history = topics.entry(Arc::from(topic)).or_insert(History { kept: VecDeque::new(), defined: true });
        history.defined = true;
        let mut ops = Vec::new();
        for (id, template, published_ms, expires_at_ms) in messages {
            let cost = template.encoded_len_hint();
            if !self.config.reserve(cost) {
                ops.push(Op::Remove { queue: key.clone(), seq: id });
                continue;
            }
            history.kept.push_back(Kept { id, template, published_ms, expires_at_ms, cost, stored: true });
        }
        self.trim(history, &key, now, policy.count, policy.max_age_ms, &mut ops);
        if let Some(store) = self.store.as_ref().filter(|_| !ops.is_empty()) {
            store.submit(ops, None);
        }
    }

    /// The store name prefix of retained histories of this virtual host, to recognise them at
    /// start-up.
    pub fn topic_of_store_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.store_prefix)?.strip_prefix(STORE_PREFIX)
    }

    /// Messages kept now in topic `name` (tests, management).
    pub fn kept(&self, name: &str) -> usize {
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).get(name).map_or(0, |h| h.kept.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(entries: &[(&str, TopicRetention)]) -> BTreeMap<String, TopicRetention> {
        entries.iter().map(|(name, table)| ((*name).to_owned(), table.clone())).collect()
    }

    #[test]
    fn an_exact_name_beats_a_pattern_and_more_literal_words_beat_fewer() {
        let keep = |n| TopicRetention { retain: Some(n), ..TopicRetention::default() };
        let config = RetentionConfig::new(
            &tables(&[("#", keep(1)), ("prices.*", keep(2)), ("prices.eur", keep(3)), ("prices.#", keep(4))]),
            1 << 20,
        );
        assert_eq!(config.policy_for("prices.eur").map(|p| p.count), Some(3));
        assert_eq!(config.policy_for("prices.usd").map(|p| p.count), Some(4), "longer of two with one literal word");
        assert_eq!(config.policy_for("news").map(|p| p.count), Some(1));
    }

    fn published(id: u64, at: u64) -> (Arc<MessageTemplate>, TopicMessage) {
        let template =
            Arc::new(MessageTemplate::new(stampede_protocol::Headers::new(), bytes::Bytes::from(format!("m{id}"))));
        (template, TopicMessage { id, persistent: false, expires_at_ms: None, enqueued_at_ms: at })
    }

    #[test]
    fn history_is_bounded_by_count_age_and_the_byte_budget() {
        let table = TopicRetention { retain: Some(3), retain_ms: Some(1000), persistent: None };
        let config = Arc::new(RetentionConfig::new(&tables(&[("t.*", table)]), 1 << 20));
        let retention = Retention::new(Arc::clone(&config), None, String::new(), None);
        let policy = retention.policy("t.a", false, false).unwrap();
        for id in 1..=5 {
            let (template, message) = published(id, 10_000 + id);
            drop(retention.retain("t.a", policy, &template, &message));
        }
        assert_eq!(retention.kept("t.a"), 3, "count");
        let (template, message) = published(6, 20_000);
        drop(retention.retain("t.a", policy, &template, &message));
        assert_eq!(retention.kept("t.a"), 1, "age");

        let one = published(1, 0).0.encoded_len_hint();
        let tight = Arc::new(RetentionConfig::new(&BTreeMap::new(), one * 2));
        let retention = Retention::new(tight, None, String::new(), None);
        let last = Policy { count: 10, max_age_ms: None, persistent: false };
        for id in 1..=4 {
            let (template, message) = published(id, 0);
            drop(retention.retain("u", last, &template, &message));
        }
        assert_eq!(retention.kept("u"), 2, "the byte budget evicts the oldest");
        assert!(config.used_bytes() > 0);
    }

    #[test]
    fn bad_tables_and_tables_in_cluster_mode_are_refused_naming_the_reason() {
        let zero: crate::config::Config = toml::from_str("[topics.\"a.*\"]\nretain = 0\n").unwrap();
        assert!(zero.validate().unwrap_err().to_string().contains("retain must be at least 1"));
        let prefixed: crate::config::Config = toml::from_str("[topics.\"/topic/a\"]\nretain = 2\n").unwrap();
        assert!(prefixed.validate().unwrap_err().to_string().contains("without /topic/"));
        let unknown = toml::from_str::<crate::config::Config>("[topics.a]\nkeep = 2\n").unwrap_err().to_string();
        assert!(unknown.contains("keep"), "{unknown}");
        let clustered: crate::config::Config =
            toml::from_str("[topics.a]\nretain = 2\n[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\n").unwrap();
        assert!(clustered.validate().unwrap_err().to_string().contains("single-node only"));
    }

    #[test]
    fn a_replay_copies_oldest_first_across_topics_and_skips_what_the_selector_rejects() {
        let retention = Retention::new(Arc::default(), None, String::new(), None);
        for (id, topic) in [(1, "p.a"), (2, "p.b"), (3, "p.a"), (4, "q.a")] {
            let (template, message) = published(id, 0);
            drop(retention.retain(topic, Policy::last_value(false), &template, &message));
        }
        let outbox = crate::destination::outbox::Outbox::new(1 << 20);
        let sink = Sink::Connection {
            subscription: 7,
            outbox: Arc::clone(&outbox),
            policy: crate::destination::outbox::SlowConsumerPolicy::Disconnect,
        };
        let subscriber = TopicSubscriber { id: 1, sink, selector: None };
        let now = crate::destination::queue::now_ms();
        assert_eq!(retention.replay("p.*", Replay { last: Some(1), since_ms: None }, &subscriber, now), 2);
        assert_eq!(retention.replay("p.a", Replay { last: None, since_ms: Some(1) }, &subscriber, now), 0);
    }
}
