//! Bridges to backends that do not hold a STOMP connection of their own: webhooks (a queue or
//! topic pattern delivered by HTTP POST, [`webhook`]) and STOMP bridges to other brokers
//! ([`stomp_bridge`]).
//!
//! Both are consumers inside the broker, not loopback STOMP clients: a webhook or an outgoing
//! bridge attaches to a queue (a named queue, or the queue of a durable subscription for a
//! topic pattern) with a [`Consumer`](crate::destination::queue::Consumer) and an outbox of
//! its own, exactly as a STOMP session does, and settles each delivery with the same ACK/NACK
//! outcomes. Redelivery, dead-lettering and durability therefore behave as they do for STOMP
//! consumers, with no second implementation of them. An incoming bridge publishes into the
//! router the way a SEND does and acknowledges the remote message only once the local queue
//! has stored it.
//!
//! Each webhook and bridge is one task on the broker's tracker, stopped by its shutdown token;
//! nothing it does holds a router lock across an await, and each has its own bounded credit,
//! so a dead backend or remote broker holds only its own messages.
//!
//! [`Registry`] keeps what each one is doing (up or down, counts, the last error) for the
//! management API and logs.

pub mod stomp_bridge;
pub mod webhook;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry as PromRegistry, Unit};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::destination::router::{Destination, Router};
use crate::destination::topic::TopicPattern;

/// One `[[webhooks]]` entry: messages of `source` POSTed to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name (metrics label, durable subscription name, API).
    pub name: String,
    /// `/queue/<name>`, or `/topic/<pattern>` (consumed through a durable subscription named
    /// `webhook:<name>`, so messages published while the backend is down wait for it).
    pub source: String,
    /// `http://` or `https://` URL the messages are POSTed to.
    pub url: String,
    /// Extra request headers (for example an `Authorization` the backend expects).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Key of the HMAC-SHA256 signature in `X-Stampede-Signature`; no signature without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Most requests in flight at once (also the consumer's prefetch).
    pub concurrency: u32,
    /// Longest a request may take, in ms, before it counts as failed.
    pub timeout_ms: u64,
    /// Attempts after which a message the backend keeps refusing is dead-lettered (the queue's
    /// own `max_deliveries` applies too; the smaller wins).
    pub max_deliveries: u32,
    /// Wait before the second attempt, in ms; it doubles with each further attempt.
    pub retry_initial_ms: u64,
    /// Longest wait between attempts, in ms.
    pub retry_max_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            name: String::new(),
            source: String::new(),
            url: String::new(),
            headers: BTreeMap::new(),
            secret: None,
            concurrency: 4,
            timeout_ms: 10_000,
            max_deliveries: 10,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
        }
    }
}

/// Which way a STOMP bridge forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BridgeDirection {
    /// Local `source` to `remote_destination` on the remote broker.
    #[default]
    Out,
    /// `remote_source` on the remote broker to local `destination`.
    In,
}

impl BridgeDirection {
    /// `out` or `in`.
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeDirection::Out => "out",
            BridgeDirection::In => "in",
        }
    }
}

/// One `[[bridges]]` entry: a STOMP link to another broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Unique name (metrics label, durable subscription name, API).
    pub name: String,
    /// `out` or `in`.
    pub direction: BridgeDirection,
    /// Out: the local `/queue/<name>` or `/topic/<pattern>` forwarded.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Out: where messages are sent on the remote broker.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_destination: String,
    /// In: what is subscribed to on the remote broker.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_source: String,
    /// In: the local `/queue/<name>` or `/topic/<name>` messages are stored in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// `tcp://`, `tls://`, `ws://` or `wss://` URL of the remote broker.
    pub remote_url: String,
    /// Login on the remote broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// Passcode on the remote broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passcode: Option<String>,
    /// Virtual host on the remote broker (the CONNECT `host` header).
    pub vhost: String,
    /// Heart-beat interval both ways, in ms; 0 = none.
    pub heart_beat_ms: u32,
    /// Most messages forwarded and not yet confirmed at once.
    pub max_in_flight: u32,
    /// Wait before the first reconnection attempt, in ms; it doubles with each failure.
    pub reconnect_initial_ms: u64,
    /// Longest wait between reconnection attempts, in ms.
    pub reconnect_max_ms: u64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: String::new(),
            direction: BridgeDirection::Out,
            source: String::new(),
            remote_destination: String::new(),
            remote_source: String::new(),
            destination: String::new(),
            remote_url: String::new(),
            login: None,
            passcode: None,
            vhost: "/".to_owned(),
            heart_beat_ms: 10_000,
            max_in_flight: 64,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 30_000,
        }
    }
}

/// A `[[webhooks]]` or `[[bridges]]` entry is unusable. The message names the entry and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {field} {reason}")]
pub struct BridgeConfigError {
    /// `webhook "orders"` or `bridge #2` (when it has no name).
    pub entry: String,
    /// The key.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn entry_label(kind: &str, index: usize, name: &str) -> String {
    if name.is_empty() { format!("[[{kind}]] #{}", index + 1) } else { format!("{} {name:?}", &kind[..kind.len() - 1]) }
}

/// Checks every webhook and bridge: names unique and present, sources and destinations the
/// router understands, URLs of a known scheme, numbers in range.
///
/// # Errors
/// The first problem found, naming the entry and field.
pub fn validate(webhooks: &[WebhookConfig], bridges: &[BridgeConfig]) -> Result<(), BridgeConfigError> {
    let mut names = HashSet::new();
    for (index, w) in webhooks.iter().enumerate() {
        let err = |field, reason: &str| BridgeConfigError {
            entry: entry_label("webhooks", index, &w.name),
            field,
            reason: reason.to_owned(),
        };
        check_name(&w.name).map_err(|r| err("name", &r))?;
        if !names.insert(("webhook", w.name.clone())) {
            return Err(err("name", "is used by another webhook"));
        }
        check_source(&w.source).map_err(|r| err("source", &r))?;
        let url = reqwest::Url::parse(&w.url).map_err(|e| err("url", &format!("{:?} is not a URL: {e}", w.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err("url", &format!("{:?} must start with http:// or https://", w.url)));
        }
        for (name, value) in &w.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(err("headers", &format!("{name:?} is not a valid HTTP header name")));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(err("headers", &format!("the value of {name:?} is not a valid HTTP header value")));
            }
        }
        if w.secret.as_deref() == Some("") {
            return Err(err("secret", "is empty; remove it to send unsigned requests"));
        }
        positive(w.concurrency as u64).map_err(|r| err("concurrency", &r))?;
        positive(w.timeout_ms).map_err(|r| err("timeout_ms", &r))?;
        positive(w.max_deliveries as u64).map_err(|r| err("max_deliveries", &r))?;
        positive(w.retry_initial_ms).map_err(|r| err("retry_initial_ms", &r))?;
        if w.retry_max_ms < w.retry_initial_ms {
            return Err(err("retry_max_ms", "must be at least retry_initial_ms"));
        }
    }
    for (index, b) in bridges.iter().enumerate() {
        let err = |field, reason: &str| BridgeConfigError {
            entry: entry_label("bridges", index, &b.name),
            field,
            reason: reason.to_owned(),
        };
        check_name(&b.name).map_err(|r| err("name", &r))?;
        if !names.insert(("bridge", b.name.clone())) {
            return Err(err("name", "is used by another bridge"));
        }
        stampede_client::Endpoint::parse(&b.remote_url).map_err(|e| err("remote_url", &e.to_string()))?;
        let required = |field, value: &str| {
            if value.is_empty() {
                Err(err(field, &format!("is required for direction = \"{}\"", b.direction.as_str())))
            } else {
                Ok(())
            }
        };
        let unused = |field, value: &str| {
            if value.is_empty() {
                Ok(())
            } else {
                Err(err(field, &format!("is not used with direction = \"{}\"", b.direction.as_str())))
            }
        };
        match b.direction {
            BridgeDirection::Out => {
                required("source", &b.source)?;
                required("remote_destination", &b.remote_destination)?;
                unused("remote_source", &b.remote_source)?;
                unused("destination", &b.destination)?;
                check_source(&b.source).map_err(|r| err("source", &r))?;
                check_remote(&b.remote_destination).map_err(|r| err("remote_destination", &r))?;
            }
            BridgeDirection::In => {
                required("remote_source", &b.remote_source)?;
                required("destination", &b.destination)?;
                unused("source", &b.source)?;
                unused("remote_destination", &b.remote_destination)?;
                check_remote(&b.remote_source).map_err(|r| err("remote_source", &r))?;
                check_local_destination(&b.destination).map_err(|r| err("destination", &r))?;
            }
        }
        positive(b.max_in_flight as u64).map_err(|r| err("max_in_flight", &r))?;
        positive(b.reconnect_initial_ms).map_err(|r| err("reconnect_initial_ms", &r))?;
        if b.reconnect_max_ms < b.reconnect_initial_ms {
            return Err(err("reconnect_max_ms", "must be at least reconnect_initial_ms"));
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".to_owned());
    }
    if name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("{name:?} may hold only letters, digits, '-', '_' and '.' (at most 128)"));
    }
    Ok(())
}

fn positive(value: u64) -> Result<(), String> {
    if value == 0 { Err("must be at least 1".to_owned()) } else { Ok(()) }
}

fn check_remote(destination: &str) -> Result<(), String> {
    if destination.is_empty() || !destination.starts_with('/') || destination.chars().any(char::is_control) {
        return Err(format!("{destination:?} must be a destination such as /queue/orders"));
    }
    Ok(())
}

/// What a local consumer (webhook, outgoing bridge) reads: a queue or a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `/queue/<name>`.
    Queue(String),
    /// `/topic/<name or pattern>`, consumed through a durable subscription.
    Topic(String),
}

impl Source {
    /// Parses a `source` value.
    ///
    /// # Errors
    /// Anything but `/queue/<name>` and `/topic/<name or pattern>`.
    pub fn parse(source: &str) -> Result<Source, String> {
        match Destination::parse(source) {
            Ok(Destination::Queue(name)) if TopicPattern::parse(name).is_none() => Ok(Source::Queue(name.to_owned())),
            Ok(Destination::Topic(name)) if source.starts_with("/topic/") => Ok(Source::Topic(name.into_owned())),
            Ok(_) => Err(format!("{source:?} must be /queue/<name> or /topic/<name or pattern>")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Attaches to the queue this source is read from: the named queue, or the durable
    /// subscription `durable_name` of the topic pattern, owned by `owner` (a name no STOMP
    /// user can log in as, so no client can take the subscription over).
    pub(crate) async fn queue(
        &self,
        router: &Router,
        durable_name: &str,
    ) -> Result<crate::destination::queue::QueueHandle, String> {
        match self {
            Source::Queue(name) => Ok(router.queue_or_create(name)),
            Source::Topic(pattern) => router
                .durable_subscription(durable_name, pattern, Some(durable_name))
                .await
                .map_err(|e| format!("durable subscription {durable_name}: {e}")),
        }
    }
}

fn check_source(source: &str) -> Result<(), String> {
    Source::parse(source).map(drop)
}

/// Where an incoming bridge stores: `/queue/<name>` or `/topic/<name>` (no wildcard).
fn check_local_destination(destination: &str) -> Result<(), String> {
    match Destination::parse(destination) {
        Ok(Destination::Queue(name)) if TopicPattern::parse(name).is_none() => Ok(()),
        Ok(Destination::Topic(name)) if destination.starts_with("/topic/") && TopicPattern::parse(&name).is_none() => {
            Ok(())
        }
        Ok(_) => Err(format!("{destination:?} must be /queue/<name> or /topic/<name> (no wildcards)")),
        Err(error) => Err(error.to_string()),
    }
}

/// What one webhook or bridge is doing, for the API and the logs.
#[derive(Debug)]
pub struct Status {
    /// Its name.
    pub name: String,
    /// For a webhook: the backend's last answer was a success (or nothing was sent yet). For a
    /// bridge: connected to the remote broker.
    up: AtomicBool,
    /// Messages handed on (webhook: acknowledged by a 2xx; bridge: confirmed).
    delivered: AtomicU64,
    /// Failed attempts (webhook: non-2xx or no answer; bridge: lost connections and refused
    /// connection attempts).
    failures: AtomicU64,
    /// Messages dead-lettered by the webhook's own limit.
    dead_lettered: AtomicU64,
    /// Requests or forwards in flight.
    in_flight: AtomicI64,
    /// Connections made (bridges).
    connections: AtomicU64,
    last_error: Mutex<Option<(u64, String)>>,
}

/// A copy of a [`Status`], as the API returns it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusView {
    /// Its name.
    pub name: String,
    /// `up` or `down` (a webhook is down while its backend's last answer was a failure).
    pub state: &'static str,
    /// Messages handed on.
    pub delivered: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Messages dead-lettered by a webhook's `max_deliveries`.
    pub dead_lettered: u64,
    /// Requests or forwards in flight now.
    pub in_flight: i64,
    /// Connections made to the remote broker (bridges).
    pub connections: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When it happened, ms since the Unix epoch.
    pub last_error_at_ms: Option<u64>,
}

impl Status {
    fn new(name: &str, up: bool) -> Arc<Status> {
        Arc::new(Status {
            name: name.to_owned(),
            up: AtomicBool::new(up),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            connections: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// Records a failure; returns whether this took it from up to down.
    fn failed(&self, error: String) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((crate::destination::queue::now_ms(), error));
        self.up.swap(false, Ordering::Relaxed)
    }

    /// Marks it up; returns whether it was down.
    fn set_up(&self) -> bool {
        !self.up.swap(true, Ordering::Relaxed)
    }

    /// True while up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A copy for the API.
    pub fn view(&self) -> StatusView {
        let last = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        StatusView {
            name: self.name.clone(),
            state: if self.is_up() { "up" } else { "down" },
            delivered: self.delivered.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            last_error_at_ms: last.as_ref().map(|(at, _)| *at),
            last_error: last.map(|(_, error)| error),
        }
    }
}

/// Every webhook and bridge of a broker with its configuration and status.
#[derive(Debug, Default)]
pub struct Registry {
    webhooks: Vec<(WebhookConfig, Arc<Status>)>,
    bridges: Vec<(BridgeConfig, Arc<Status>)>,
}

impl Registry {
    /// The webhooks, in configuration order.
    pub fn webhooks(&self) -> impl Iterator<Item = (&WebhookConfig, StatusView)> {
        self.webhooks.iter().map(|(config, status)| (config, status.view()))
    }

    /// The bridges, in configuration order.
    pub fn bridges(&self) -> impl Iterator<Item = (&BridgeConfig, StatusView)> {
        self.bridges.iter().map(|(config, status)| (config, status.view()))
    }

    /// The status of webhook `name`.
    pub fn webhook(&self, name: &str) -> Option<StatusView> {
        self.webhooks.iter().find(|(c, _)| c.name == name).map(|(_, s)| s.view())
    }

    /// The status of bridge `name`.
    pub fn bridge(&self, name: &str) -> Option<StatusView> {
        self.bridges.iter().find(|(c, _)| c.name == name).map(|(_, s)| s.view())
    }
}

/// Label set `{webhook}` or `{bridge}`.
type NameLabel = [(&'static str, String); 1];
/// Label set `{webhook, outcome}`.
type OutcomeLabel = [(&'static str, String); 2];

/// Upper bounds of the webhook latency histogram, in seconds.
pub const WEBHOOK_SECONDS_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Webhook and bridge metrics: families registered once with the broker's exporter; each
/// webhook and bridge resolves its handles when it starts (its name is from the configuration,
/// never from client input, so the number of series is fixed).
#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    webhook_requests: Family<OutcomeLabel, Counter>,
    webhook_seconds: Family<NameLabel, Histogram>,
    webhook_in_flight: Family<NameLabel, Gauge>,
    bridge_messages: Family<NameLabel, Counter>,
    bridge_up: Family<NameLabel, Gauge>,
    bridge_connections: Family<NameLabel, Counter>,
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        BridgeMetrics {
            webhook_requests: Family::default(),
            webhook_seconds: Family::new_with_constructor(|| Histogram::new(WEBHOOK_SECONDS_BUCKETS)),
            webhook_in_flight: Family::default(),
            bridge_messages: Family::default(),
            bridge_up: Family::default(),
            bridge_connections: Family::default(),
        }
    }
}

/// How one webhook request ended (label `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// 2xx.
    Success,
    /// Any other status.
    HttpError,
    /// No answer within `timeout_ms`.
    Timeout,
    /// No connection, or it broke.
    ConnectionError,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 4] =
        [RequestOutcome::Success, RequestOutcome::HttpError, RequestOutcome::Timeout, RequestOutcome::ConnectionError];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Success => "success",
            RequestOutcome::HttpError => "http-error",
            RequestOutcome::Timeout => "timeout",
            RequestOutcome::ConnectionError => "connection-error",
        }
    }
}

/// One webhook's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct WebhookHandles {
    requests: [Counter; RequestOutcome::ALL.len()],
    seconds: Histogram,
    in_flight: Gauge,
}

/// One bridge's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct BridgeHandles {
    messages: Counter,
    up: Gauge,
    connections: Counter,
}

impl BridgeMetrics {
    pub(crate) fn webhook(&self, name: &str) -> WebhookHandles {
        let label = [("webhook", name.to_owned())];
        WebhookHandles {
            requests: RequestOutcome::ALL.map(|outcome| {
                self.webhook_requests
                    .get_or_create(&[("webhook", name.to_owned()), ("outcome", outcome.as_str().to_owned())])
                    .clone()
            }),
            seconds: self.webhook_seconds.get_or_create(&label).clone(),
            in_flight: self.webhook_in_flight.get_or_create(&label).clone(),
        }
    }

    pub(crate) fn bridge(&self, name: &str) -> BridgeHandles {
        let label = [("bridge", name.to_owned())];
        BridgeHandles {
            messages: self.bridge_messages.get_or_create(&label).clone(),
            up: self.bridge_up.get_or_create(&label).clone(),
            connections: self.bridge_connections.get_or_create(&label).clone(),
        }
    }

    /// Registers the families (the handles are shared, not copied).
    pub(crate) fn register(&self, registry: &mut PromRegistry) {
        registry.register(
            "stampede_webhook_requests",
            "Webhook requests, by webhook and outcome",
            self.webhook_requests.clone(),
        );
        registry.register_with_unit(
            "stampede_webhook_request_duration",
            "Time from sending a webhook request to its answer (or failure)",
            Unit::Seconds,
            self.webhook_seconds.clone(),
        );
        registry.register("stampede_webhook_in_flight", "Webhook requests in flight", self.webhook_in_flight.clone());
        registry.register(
            "stampede_bridge_messages",
            "Messages a STOMP bridge forwarded and had confirmed",
            self.bridge_messages.clone(),
        );
        registry.register("stampede_bridge_up", "1 while a STOMP bridge is connected", self.bridge_up.clone());
        registry.register(
            "stampede_bridge_connections",
            "Connections a STOMP bridge made to its remote broker",
            self.bridge_connections.clone(),
        );
    }
}

/// Starts every configured webhook and bridge on `tasks`; they stop when `shutdown` is
/// cancelled. Returns their registry.
///
/// # Errors
/// When a webhook's HTTP client cannot be built (its TLS configuration).
pub fn start(
    webhooks: &[WebhookConfig],
    bridges: &[BridgeConfig],
    router: &Arc<Router>,
    metrics: &BridgeMetrics,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Arc<Registry>, String> {
    let mut registry = Registry::default();
    for config in webhooks {
        let status = Status::new(&config.name, true);
        let hook = webhook::Webhook::new(config.clone(), Arc::clone(&status), metrics.webhook(&config.name))?;
        tasks.spawn(hook.run(Arc::clone(router), tasks.clone(), shutdown.clone()));
        registry.webhooks.push((config.clone(), status));
    }
    for config in bridges {
        let status = Status::new(&config.name, false);
        let bridge = stomp_bridge::Bridge::new(config.clone(), Arc::clone(&status), metrics.bridge(&config.name))?;
        tasks.spawn(bridge.run(Arc::clone(router), shutdown.clone()));
        registry.bridges.push((config.clone(), status));
    }
    Ok(Arc::new(registry))
}

/// The wait before attempt `attempt + 1` after `attempt` failures (at least 1): `initial`
/// doubling each time, capped at `max`.
pub(crate) fn backoff(initial_ms: u64, max_ms: u64, attempt: u32) -> std::time::Duration {
    let factor = 1u64.checked_shl(attempt.saturating_sub(1).min(40)).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(initial_ms.saturating_mul(factor).min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let waits: Vec<u64> = (1..=6).map(|a| backoff(100, 1000, a).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(100, 1000, 200).as_millis(), 1000);
    }

    #[test]
    fn validation_names_the_entry_and_the_field() {
        let ok = WebhookConfig {
            name: "orders".into(),
            source: "/queue/orders".into(),
            url: "http://127.0.0.1:9/hook".into(),
            ..WebhookConfig::default()
        };
        assert_eq!(validate(std::slice::from_ref(&ok), &[]), Ok(()));
        let cases: Vec<(WebhookConfig, &str)> = vec![
            (WebhookConfig { name: String::new(), ..ok.clone() }, "[[webhooks]] #1: name is required"),
            (WebhookConfig { source: "/queue/a.*".into(), ..ok.clone() }, "webhook \"orders\": source"),
            (WebhookConfig { source: "/temp-queue/x".into(), ..ok.clone() }, "webhook \"orders\": source"),
            (WebhookConfig { url: "ftp://x/".into(), ..ok.clone() }, "webhook \"orders\": url"),
            (WebhookConfig { concurrency: 0, ..ok.clone() }, "webhook \"orders\": concurrency must be at least 1"),
            (WebhookConfig { retry_max_ms: 1, ..ok.clone() }, "webhook \"orders\": retry_max_ms"),
        ];
        for (config, expected) in cases {
            let error = validate(&[config], &[]).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
        }
        let twice = validate(&[ok.clone(), ok.clone()], &[]).unwrap_err().to_string();
        assert!(twice.contains("used by another webhook"), "{twice}");
        let topic = WebhookConfig { source: "/topic/orders.*".into(), ..ok };
        assert_eq!(validate(&[topic], &[]), Ok(()));
    }

    #[test]
    fn a_bridge_needs_the_fields_of_its_direction() {
        let out = BridgeConfig {
            name: "up".into(),
            source: "/queue/a".into(),
            remote_destination: "/queue/b".into(),
            remote_url: "tcp://127.0.0.1:61613".into(),
            ..BridgeConfig::default()
        };
        assert_eq!(validate(&[], std::slice::from_ref(&out)), Ok(()));
        let error =
            validate(&[], &[BridgeConfig { direction: BridgeDirection::In, ..out.clone() }]).unwrap_err().to_string();
        assert_eq!(error, "bridge \"up\": remote_source is required for direction = \"in\"");
        let error = validate(&[], &[BridgeConfig { remote_url: "http://x".into(), ..out }]).unwrap_err().to_string();
        assert!(error.starts_with("bridge \"up\": remote_url"), "{error}");
    }
}
