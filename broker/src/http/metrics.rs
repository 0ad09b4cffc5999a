//! Prometheus metrics: counters the data path moves, gauges read when `/metrics` is scraped.
//!
//! A counter the broker moves while serving traffic is resolved once, when its broker starts,
//! into a handle (an `Arc` of one atomic): moving it is a relaxed atomic add, with no label
//! lookup, map or lock on the way. Labelled counters are arrays of such handles indexed by the
//! typed value (a command, a transport, an error kind), so a label can never come from client
//! input and the number of series is fixed. Nothing is labelled by connection or session.
//!
//! Everything else is a gauge read at scrape time from state the broker keeps anyway (queue
//! depths, consumer counts, the store's counters), so keeping metrics costs the broker nothing
//! between scrapes. Per-destination series are opt-in (`metrics_per_destination`): with
//! thousands of queues they are thousands of series, the cost RabbitMQ users complain about.
//!
//! Metrics belong to one broker ([`Metrics`] is made in `server::start` and handed down), so
//! brokers in one process (as in the tests) never share counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use stampede_protocol::Command;
use stampede_storage::{COMMIT_SECONDS_BUCKETS, Store};

use crate::connection::CloseReason;
use crate::destination::vhost::VirtualHosts;
use crate::error::ErrorKind;
use crate::security::auth::Authenticator;

/// The `Content-Type` of `/metrics` (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How a client reached the broker (label `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// STOMP over TCP.
    Tcp,
    /// STOMP over TLS.
    Tls,
    /// STOMP over WebSocket.
    Ws,
    /// STOMP over secure WebSocket.
    Wss,
    /// STOMP over the server-sent events fallback.
    Sse,
}

impl TransportKind {
    /// Every transport, in label-index order.
    pub const ALL: [TransportKind; 5] =
        [TransportKind::Tcp, TransportKind::Tls, TransportKind::Ws, TransportKind::Wss, TransportKind::Sse];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
            TransportKind::Sse => "sse",
        }
    }
}

/// Where a SEND went (label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// A topic.
    Topic,
    /// A queue (named, temporary or reply queue).
    Queue,
}

/// Why a message was moved to a dead-letter queue (label `reason`, and the
/// `x-dead-letter-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// NACKed with `requeue:false`.
    Rejected,
    /// Delivered `max_deliveries` times without an ACK.
    DeliveryLimit,
    /// Its time to live passed (with `expired_messages = dead-letter`).
    Expired,
}

impl DeadLetterReason {
    const ALL: [DeadLetterReason; 3] =
        [DeadLetterReason::Rejected, DeadLetterReason::DeliveryLimit, DeadLetterReason::Expired];

    /// The label value and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::DeliveryLimit => "delivery-limit",
            DeadLetterReason::Expired => "expired",
        }
    }
}

/// Why the broker threw a message away (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A topic message dropped for a slow subscriber (`slow_consumer_policy = drop-oldest`),
    /// counted when the subscriber's connection ends: the outbox keeps the count, and
    /// reporting it sooner would cost every connection a field.
    SlowConsumer,
    /// A queue's oldest message dropped to make room (`queue_overflow = drop-oldest`).
    QueueOverflow,
}

impl DropReason {
    const ALL: [DropReason; 2] = [DropReason::SlowConsumer, DropReason::QueueOverflow];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow-consumer",
            DropReason::QueueOverflow => "queue-overflow",
        }
    }
}

/// The label value of a connection's close reason.
fn close_reason_index(reason: &CloseReason) -> usize {
    match reason {
        CloseReason::ClientDisconnect => 0,
        CloseReason::PeerClosed => 1,
        CloseReason::SlowConsumer => 2,
        CloseReason::HeartbeatTimeout => 3,
        CloseReason::ConnectTimeout => 4,
        CloseReason::ServerShutdown => 5,
        CloseReason::Io(_) => 6,
        CloseReason::Error { kind, .. } => 7 + *kind as usize,
    }
}

/// Label values of `stampede_connections_closed_total`, indexed by [`close_reason_index`].
const CLOSE_REASONS: [&str; 7 + ErrorKind::ALL.len()] = [
    "client-disconnect",
    "peer-closed",
    "slow-consumer",
    "heartbeat-timeout",
    "connect-timeout",
    "server-shutdown",
    "io-error",
    "error-protocol",
    "error-request",
    "error-authentication",
    "error-authorization",
    "error-limit",
    "error-too-large",
    "error-timeout",
    "error-internal",
    "error-shutdown",
];

type Label = [(&'static str, &'static str); 1];
type OpenGauge = Gauge<i64, AtomicI64>;

/// The counters of one broker, each resolved to its handle in advance.
pub struct Metrics {
    connections: [OpenGauge; TransportKind::ALL.len()],
    connections_opened: [Counter; TransportKind::ALL.len()],
    connections_closed: [Counter; CLOSE_REASONS.len()],
    frames_received: [Counter; Command::ALL.len()],
    frames_sent: [Counter; Command::ALL.len()],
    published: [Counter; 2],
    delivered: Counter,
    acked: Counter,
    nacked: Counter,
    redelivered: Counter,
    dead_lettered: [Counter; DeadLetterReason::ALL.len()],
    expired: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    errors_sent: [Counter; ErrorKind::ALL.len()],
    families: Families,
    /// Webhook and STOMP bridge series.
    pub bridges: crate::bridge::BridgeMetrics,
}

/// The labelled families behind the handles, for registration.
struct Families {
    connections: Family<Label, OpenGauge>,
    connections_opened: Family<Label, Counter>,
    connections_closed: Family<Label, Counter>,
    frames_received: Family<Label, Counter>,
    frames_sent: Family<Label, Counter>,
    published: Family<Label, Counter>,
    dead_lettered: Family<Label, Counter>,
    dropped: Family<Label, Counter>,
    errors_sent: Family<Label, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Resolves one handle per label value of `family`, in the order of `values`.
fn resolve<M: Clone + Default, const N: usize>(
    family: &Family<Label, M>,
    key: &'static str,
    values: [&'static str; N],
) -> [M; N] {
    values.map(|value| family.get_or_create(&[(key, value)]).clone())
}

/// One handle per command, indexed by command; only the commands that travel in the direction
/// of `family` (client commands for received frames, server commands for sent ones) are series,
/// the others get handles of their own that are never exposed (a client sending MESSAGE is
/// answered with an ERROR, counted there).
fn resolve_commands(family: &Family<Label, Counter>, from_client: bool) -> [Counter; Command::ALL.len()] {
    let mut handles: [Counter; Command::ALL.len()] = Default::default();
    for command in Command::ALL {
        if command.is_client_command() == from_client {
            handles[command as usize] = family.get_or_create(&[("command", command.as_str())]).clone();
        }
    }
    handles
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh counters, all zero, with every label value present.
    pub fn new() -> Metrics {
        let families = Families {
            connections: Family::default(),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            frames_received: Family::default(),
            frames_sent: Family::default(),
            published: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            errors_sent: Family::default(),
        };
        let transports = TransportKind::ALL.map(TransportKind::as_str);
        let kinds = ErrorKind::ALL.map(ErrorKind::as_str);
        Metrics {
            connections: resolve(&families.connections, "transport", transports),
            connections_opened: resolve(&families.connections_opened, "transport", transports),
            connections_closed: resolve(&families.connections_closed, "reason", CLOSE_REASONS),
            frames_received: resolve_commands(&families.frames_received, true),
            frames_sent: resolve_commands(&families.frames_sent, false),
            published: resolve(&families.published, "kind", ["topic", "queue"]),
            delivered: Counter::default(),
            acked: Counter::default(),
            nacked: Counter::default(),
            redelivered: Counter::default(),
            dead_lettered: resolve(
                &families.dead_lettered,
                "reason",
                DeadLetterReason::ALL.map(DeadLetterReason::as_str),
            ),
            expired: Counter::default(),
            dropped: resolve(&families.dropped, "reason", DropReason::ALL.map(DropReason::as_str)),
            errors_sent: resolve(&families.errors_sent, "kind", kinds),
            families,
            bridges: crate::bridge::BridgeMetrics::default(),
        }
    }

    /// A connection was accepted (after its TLS and WebSocket handshakes).
    pub fn connection_opened(&self, transport: TransportKind) {
        self.connections_opened[transport as usize].inc();
        self.connections[transport as usize].inc();
    }

    /// A connection counted by [`Metrics::connection_opened`] ended.
    pub fn connection_closed(&self, transport: TransportKind, reason: &CloseReason) {
        self.connections[transport as usize].dec();
        self.connections_closed[close_reason_index(reason)].inc();
    }

    /// A frame arrived from a client.
    pub fn frame_received(&self, command: Command) {
        self.frames_received[command as usize].inc();
    }

    /// A frame was written to a client.
    pub fn frame_sent(&self, command: Command) {
        self.frames_sent[command as usize].inc();
    }

    /// A SEND was accepted for routing.
    pub fn message_published(&self, kind: PublishKind) {
        self.published[kind as usize].inc();
    }

    /// A MESSAGE was written to a subscriber.
    pub fn message_delivered(&self) {
        self.delivered.inc();
    }

    /// A queue delivery was acknowledged (ACK, or written to an `ack:auto` subscriber).
    pub fn message_acked(&self) {
        self.acked.inc();
    }

    /// A queue delivery was NACKed.
    pub fn message_nacked(&self) {
        self.nacked.inc();
    }

    /// A queue message was delivered again.
    pub fn message_redelivered(&self) {
        self.redelivered.inc();
    }

    /// A message went to its dead-letter queue.
    pub fn message_dead_lettered(&self, reason: DeadLetterReason) {
        self.dead_lettered[reason as usize].inc();
    }

    /// A queue message's time to live passed.
    pub fn message_expired(&self) {
        self.expired.inc();
    }

    /// `count` messages were thrown away.
    pub fn messages_dropped(&self, reason: DropReason, count: u64) {
        self.dropped[reason as usize].inc_by(count);
    }

    /// An ERROR frame was sent.
    pub fn error_sent(&self, kind: ErrorKind) {
        self.errors_sent[kind as usize].inc();
    }

    /// The message counters now (for the overview's totals and rates).
    pub fn message_totals(&self) -> MessageTotals {
        MessageTotals {
            published: self.published.iter().map(Counter::get).sum(),
            delivered: self.delivered.get(),
            acked: self.acked.get(),
            nacked: self.nacked.get(),
            redelivered: self.redelivered.get(),
        }
    }

    /// Open client connections, every transport together.
    pub fn open_connections(&self) -> u64 {
        let open: i64 = self.connections.iter().map(Gauge::get).sum();
        u64::try_from(open).unwrap_or(0)
    }

    /// Registers every counter of this broker (the handles are shared, not copied).
    fn register(&self, registry: &mut Registry) {
        let f = &self.families;
        registry.register("stampede_connections", "Open connections", f.connections.clone());
        registry.register("stampede_connections_opened", "Connections accepted", f.connections_opened.clone());
        registry.register("stampede_connections_closed", "Connections ended, by reason", f.connections_closed.clone());
        registry.register("stampede_frames_received", "STOMP frames received", f.frames_received.clone());
        registry.register("stampede_frames_sent", "STOMP frames sent", f.frames_sent.clone());
        registry.register("stampede_messages_published", "Messages sent by clients", f.published.clone());
        registry.register("stampede_messages_delivered", "MESSAGE frames written", self.delivered.clone());
        registry.register("stampede_messages_acked", "Queue deliveries acknowledged", self.acked.clone());
        registry.register("stampede_messages_nacked", "Queue deliveries NACKed", self.nacked.clone());
        registry.register("stampede_messages_redelivered", "Queue messages delivered again", self.redelivered.clone());
        registry.register(
            "stampede_messages_dead_lettered",
            "Messages moved to a dead-letter queue",
            f.dead_lettered.clone(),
        );
        registry.register(
            "stampede_messages_expired",
            "Queue messages whose time to live passed",
            self.expired.clone(),
        );
        registry.register(
            "stampede_messages_dropped",
            "Messages thrown away (a slow consumer's drops are added when its connection ends)",
            f.dropped.clone(),
        );
        registry.register("stampede_errors_sent", "ERROR frames sent, by kind", f.errors_sent.clone());
        self.bridges.register(registry);
    }
}

/// The message counters since the broker started, as the overview shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MessageTotals {
    /// Messages sent by clients (topics and queues).
    pub published: u64,
    /// MESSAGE frames written.
    pub delivered: u64,
    /// Queue deliveries acknowledged.
    pub acked: u64,
    /// Queue deliveries NACKed.
    pub nacked: u64,
    /// Queue messages delivered again.
    pub redelivered: u64,
}

/// What `/metrics` reads at scrape time.
pub struct Sources {
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Queues and topics.
    pub vhosts: Arc<VirtualHosts>,
    /// The message store.
    pub store: Arc<dyn Store>,
    /// Login failures.
    pub auth: Arc<Authenticator>,
    /// One series per queue and topic too.
    pub per_destination: bool,
}

/// The `/metrics` endpoint's registry and its own cost.
pub struct Exporter {
    registry: Registry,
    telemetry: Registry,
    scrape_seconds: Gauge<f64, AtomicU64>,
    scrape_bytes: Gauge<i64, AtomicI64>,
    /// Size of the last scrape, to allocate the next one at once.
    last_size: AtomicUsize,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// The exporter of the broker whose state `sources` are.
    pub fn new(sources: Sources) -> Exporter {
        let mut registry = Registry::default();
        sources.metrics.register(&mut registry);
        registry.register_collector(Box::new(BrokerState(sources)));
        let mut telemetry = Registry::default();
        let scrape_seconds = Gauge::<f64, AtomicU64>::default();
        let scrape_bytes = Gauge::<i64, AtomicI64>::default();
        telemetry.register_with_unit(
            "stampede_scrape_duration",
            "Time the previous families of this scrape took to encode",
            Unit::Seconds,
            scrape_seconds.clone(),
        );
        telemetry.register_with_unit(
            "stampede_scrape_size",
            "Size of the previous families of this scrape",
            Unit::Bytes,
            scrape_bytes.clone(),
        );
        Exporter { registry, telemetry, scrape_seconds, scrape_bytes, last_size: AtomicUsize::new(16 * 1024) }
    }

    /// The exposition text of every metric, now.
    pub fn scrape(&self) -> String {
        let started = Instant::now();
        let mut text = String::with_capacity(self.last_size.load(Ordering::Relaxed) + 1024);
        // Writing to a String cannot fail, and no encoder here returns an error of its own.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        self.scrape_seconds.set(started.elapsed().as_secs_f64());
        self.scrape_bytes.set(i64::try_from(text.len()).unwrap_or(i64::MAX));
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.telemetry);
        self.last_size.store(text.len(), Ordering::Relaxed);
        text
    }
}

/// Gauges and counters read from the broker's own state at scrape time.
struct BrokerState(Sources);

impl std::fmt::Debug for BrokerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerState").finish_non_exhaustive()
    }
}

/// Totals over every queue and topic of every virtual host.
#[derive(Debug, Default, Clone, Copy)]
pub struct DestinationTotals {
    /// Queues (named, durable-subscription and temporary ones).
    pub queues: usize,
    /// Messages waiting in queues.
    pub ready: usize,
    /// Queue messages delivered and not yet settled.
    pub unacked: usize,
    /// Queue consumers plus topic subscribers.
    pub subscriptions: usize,
}

impl DestinationTotals {
    /// Reads the totals now.
    pub fn of(vhosts: &VirtualHosts) -> DestinationTotals {
        let mut totals = DestinationTotals::default();
        for router in vhosts.routers() {
            for queue in router.every_queue() {
                totals.queues += 1;
                totals.ready += queue.depth();
                totals.unacked += queue.unacked();
                totals.subscriptions += queue.consumer_count();
            }
            totals.subscriptions += router.topic_subscriber_total();
        }
        totals
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn signed(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

impl Collector for BrokerState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = &self.0;
        let totals = DestinationTotals::of(&sources.vhosts);
        let e = &mut encoder;
        gauge(e, "stampede_queues", "Queues", signed(totals.queues))?;
        gauge(e, "stampede_queue_messages_ready", "Messages waiting in queues", signed(totals.ready))?;
        gauge(
            e,
            "stampede_queue_messages_unacked",
            "Queue messages delivered, not yet settled",
            signed(totals.unacked),
        )?;
        gauge(e, "stampede_subscriptions", "Queue consumers and topic subscribers", signed(totals.subscriptions))?;
        counter(e, "stampede_auth_failures", "Failed logins (STOMP and HTTP)", sources.auth.failure_count())?;
        let store = sources.store.metrics();
        counter(e, "stampede_store_fsyncs", "fsyncs issued by the store", store.fsyncs)?;
        gauge(e, "stampede_store_bytes", "Size of the store on disk", signed(sources.store.disk_usage_bytes()))?;
        gauge(
            e,
            "stampede_store_recovery_problems",
            "Damaged records set aside (quarantined) by the last start-up's recovery",
            signed(store.recovery_problems),
        )?;
        gauge(
            e,
            "stampede_store_salvaged_messages",
            "Messages the last start-up salvaged from damaged store files (delivered as redelivered)",
            signed(store.salvaged_messages),
        )?;
        if let Some(disk) = sources.store.disk_watermark() {
            let status = disk.status();
            gauge(
                e,
                "stampede_disk_alarm",
                "1 while free disk space is below disk_free_limit and persistent messages are refused",
                i64::from(status.alarm),
            )?;
            gauge(
                e,
                "stampede_disk_free_bytes",
                "Free space on the data directory's file system",
                signed(status.free),
            )?;
            gauge(e, "stampede_disk_free_limit_bytes", "disk_free_limit in bytes", signed(status.limit))?;
            counter(
                e,
                "stampede_disk_alarm_refusals",
                "Persistent messages refused under the disk alarm",
                disk.refusals(),
            )?;
        }
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = COMMIT_SECONDS_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(store.commit_seconds.buckets)
            .map(|(bound, count)| {
                cumulative += count;
                (bound, cumulative)
            })
            .collect();
        e.encode_descriptor(
            "stampede_store_commit",
            "Time of one group commit (write and fsync)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            store.commit_seconds.sum_nanos as f64 / 1e9,
            store.commit_seconds.count,
            &buckets,
            None,
        )?;
        if let Some(process) = ProcessStats::read() {
            gauge(e, "stampede_process_resident_memory_bytes", "Resident memory", signed(process.resident_bytes))?;
            gauge(e, "stampede_process_open_fds", "Open file descriptors", signed(process.open_fds))?;
        }
        counter(
            e,
            "stampede_protocol_unrepresentable_headers_omitted",
            "Headers left out of frames because the client's STOMP version cannot carry them",
            stampede_protocol::unrepresentable_headers_omitted(),
        )?;
        let mut info = e.encode_descriptor("stampede_build_info", "The running build", None, MetricType::Gauge)?;
        ConstGauge::new(1i64).encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        if sources.per_destination {
            encode_destinations(e, &sources.vhosts)?;
        }
        Ok(())
    }
}

/// One series per queue and per topic of every virtual host.
fn encode_destinations(encoder: &mut DescriptorEncoder, vhosts: &VirtualHosts) -> Result<(), std::fmt::Error> {
    let routers = vhosts.routers();
    let queues: Vec<_> = routers.iter().map(|router| (router.vhost().to_owned(), router.queues())).collect();
    type Read = fn(&crate::destination::queue::QueueHandle) -> usize;
    let families: [(&str, &str, Read); 3] = [
        ("stampede_queue_ready", "Messages waiting in this queue", |q| q.depth()),
        ("stampede_queue_unacked", "Messages of this queue delivered, not yet settled", |q| q.unacked()),
        ("stampede_queue_consumers", "Consumers of this queue", |q| q.consumer_count()),
    ];
    for (name, help, read) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (vhost, handles) in &queues {
            for queue in handles {
                let labels = [("vhost", vhost.as_str()), ("queue", &**queue.name())];
                ConstGauge::new(signed(read(queue))).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "stampede_topic_subscribers",
        "Subscribers of this topic",
        None,
        MetricType::Gauge,
    )?;
    for router in &routers {
        for (topic, subscribers) in router.topic_subscriber_counts() {
            let labels = [("vhost", router.vhost()), ("topic", &*topic)];
            ConstGauge::new(signed(subscribers)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// The process's resident memory in bytes, from `/proc` (Linux only; `None` elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The process's own resource use, from `/proc` (Linux only).
struct ProcessStats {
    resident_bytes: u64,
    open_fds: usize,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let resident_bytes = resident_memory_bytes()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Some(ProcessStats { resident_bytes, open_fds })
    }
}

/// The kernel's page size, from the auxiliary vector (`AT_PAGESZ`): `sysconf` would need
/// `unsafe`, which this crate forbids.
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| {
            auxv.chunks_exact(16).find_map(|entry| {
                let key = u64::from_ne_bytes(entry[..8].try_into().ok()?);
                (key == AT_PAGESZ).then(|| u64::from_ne_bytes(entry[8..].try_into().unwrap_or_default()))
            })
        })
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_tables_are_indexed_by_the_enums_they_name() {
        for (index, command) in Command::ALL.iter().enumerate() {
            assert_eq!(*command as usize, index, "{command:?}");
        }
        for (index, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{kind:?}");
            let reason = CloseReason::Error { kind: *kind, message: String::new() };
            assert_eq!(CLOSE_REASONS[close_reason_index(&reason)], format!("error-{}", kind.as_str()));
        }
        for (index, transport) in TransportKind::ALL.iter().enumerate() {
            assert_eq!(*transport as usize, index);
        }
    }
}
