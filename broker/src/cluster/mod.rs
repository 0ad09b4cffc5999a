//! Cluster mode: several Stampede nodes act as one broker through NATS.
//!
//! # Topics
//! A topic publish is delivered to the publishing node's own subscribers as on a single node,
//! then published once on core NATS ([`subject`] names the subject, [`wire`] the payload). A
//! node subscribes on NATS only for the patterns its clients (and durable subscriptions) hold
//! now: one NATS subscription per distinct pattern of a virtual host, reference-counted, dropped
//! with the last local subscriber. So NATS forwards a message only to nodes that want it.
//!
//! Exactly once, in per-publisher order, on every node:
//! - The connection uses NATS `no_echo`, and every message names the instance that published
//!   it (`Stampede-Origin`), which skips its own: local delivery stays local.
//! - NATS delivers a message once per matching subscription, so a node whose clients hold `a.b`
//!   and `a.*` gets `a.b` twice. Each NATS subscription therefore delivers only to the local
//!   subscribers of its own pattern (an [`Interest`] keeps them in a [`Topic`] of its own), so
//!   each local subscriber gets each message once, and all of its messages come through one
//!   NATS subscription, in the order the publishing node sent them.
//!
//! # Readiness and outages
//! The broker is ready when it is connected and the server has confirmed every subscription
//! made since the last (re)connect: a request the server itself answers ("no responders"),
//! sent after the SUBs on the same connection, so its answer means the SUBs were processed (a
//! client flush only means they left the socket, which loses messages published meanwhile). async-nats re-sends every subscription on reconnect; the link confirms them
//! again before `/readyz` turns 200, the failure Redis- and NATS-backed brokers are known for
//! (a node that reconnected and delivers nothing while it reports healthy). While the engine
//! is away, a SEND to a topic or a SUBSCRIBE gets an ERROR `cluster engine unavailable`: core
//! NATS would otherwise buffer or drop it without a word. Existing subscriptions stay, and
//! deliver again once the engine is back, without the clients doing anything.
//!
//! # Queues
//! `/queue/` destinations live in JetStream ([`queue`]), shared by every node; what a queue
//! cannot keep across nodes (selectors, priority, exclusive consumers, browsing, transactional
//! SENDs) is refused with an ERROR saying it is single-node only. A temporary queue lives on its
//! connection's node, named with the node's instance id; a reply sent to it on another node
//! travels as a topic message on a name no client can use ([`reply_topic`]), at most once like
//! the temporary queue itself. Durable subscriptions stay node-local (see [`QueueMode`]).
//!
//! # Lock order
//! The interest table ([`Cluster::interest`]) is taken after the router's tables are released,
//! and holds at most one interest's [`Topic`] lock inside it.

pub mod config;
pub mod queue;
pub mod subject;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use futures_util::StreamExt;
use stampede_protocol::MessageTemplate;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use config::{ClusterConfig, QueueMode};

use crate::destination::router::{Destination, TopicMessage};
use crate::destination::topic::{Topic, TopicPattern, TopicSubscriber};
use crate::error::{ErrorKind, StompError};
use subject::Subjects;

/// The NATS header naming the instance that published a message.
pub const ORIGIN_HEADER: &str = "Stampede-Origin";

/// How often the link looks at the connection even when nothing woke it (a reconnect whose
/// event was lost is still seen within this).
const LINK_TICK: Duration = Duration::from_millis(100);

/// Longest the link waits for the server to answer its round trip before trying again.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Not connected to NATS, or the server did not confirm in time.
    #[error("cluster engine unavailable: {0}")]
    Unavailable(String),
    /// Larger than the NATS server's `max_payload`.
    #[error("message too large for the cluster engine: {size} bytes, NATS max_payload is {max}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// A destination kind that is not clustered yet.
    #[error("{0} destinations are not clustered yet")]
    NotClustered(&'static str),
    /// A queue feature that needs the whole queue on one node.
    #[error("{feature} is single-node only for now")]
    SingleNodeOnly {
        /// What was asked for.
        feature: &'static str,
        /// Why a clustered queue cannot do it.
        why: &'static str,
    },
    /// The client could not be set up (credentials file, certificates).
    #[error("cluster: {0}")]
    Setup(String),
}

impl From<ClusterError> for StompError {
    fn from(error: ClusterError) -> Self {
        match error {
            ClusterError::Unavailable(why) => StompError::of_kind(
                ErrorKind::Internal,
                "cluster engine unavailable",
                format!(
                    "This node cannot reach the cluster engine (NATS) now ({why}), so it cannot route to or from the other nodes. Nothing was sent or subscribed; reconnect and retry, to this node once it is ready again (/readyz) or to another."
                ),
            ),
            ClusterError::TooLarge { size, max } => StompError::of_kind(
                ErrorKind::TooLarge,
                format!("message too large for the cluster engine (limit {max} bytes, NATS max_payload)"),
                format!(
                    "The message with its headers takes {size} bytes; the NATS servers accept at most {max} (their max_payload setting). Nothing was delivered."
                ),
            ),
            ClusterError::NotClustered(kind) => StompError::new(
                format!("{kind} destinations are not clustered yet"),
                format!(
                    "This broker runs in cluster mode, where only /topic/ destinations are shared between nodes so far; a {kind} destination would live on one node only, so producers and consumers on different nodes would never meet. Use a topic, or set [cluster] queues = \"node-local\" to use node-local queues knowingly."
                ),
            ),
            ClusterError::SingleNodeOnly { feature, why } => StompError::new(
                format!("{feature} is single-node only for now"),
                format!(
                    "This broker runs in cluster mode, where queues live in JetStream and are shared by every node. {why} Nothing was done; use a single-node broker (or [cluster] queues = \"node-local\") for this."
                ),
            ),
            ClusterError::Setup(why) => StompError::of_kind(ErrorKind::Internal, "cluster engine unavailable", why),
        }
    }
}

/// The local subscribers of one pattern (or plain topic name) of one virtual host, which one
/// NATS subscription feeds.
#[derive(Debug)]
pub struct Interest {
    /// The pattern as the clients wrote it (the name after `/topic/`).
    pattern: Arc<str>,
    /// Its matcher; `None` for a plain name.
    matcher: Option<TopicPattern>,
    /// The NATS subject subscribed for it.
    subject: String,
    /// The local subscribers that registered this pattern.
    subscribers: Topic,
}

type InterestKey = (Arc<str>, Arc<str>);

/// The (interest generation, connection epoch) the NATS server has confirmed.
type Confirmed = (u64, u64);

/// This node's link to the cluster engine. One per broker, shared by every router.
pub struct Cluster {
    client: async_nats::Client,
    subjects: Subjects,
    /// `<node_name>-<random>`: unique per start, carried by every message this node publishes.
    instance: Arc<str>,
    node_name: String,
    urls: String,
    queues: QueueMode,
    confirm_timeout: Duration,
    /// JetStream, for queues.
    jetstream: async_nats::jetstream::Context,
    /// Replicas of the streams this node creates.
    replicas: usize,
    /// `ack_wait_ms`.
    ack_wait: Duration,
    /// `redelivery_delay_ms`.
    redelivery_delay: Duration,
    /// The queue streams this node knows exist.
    streams: tokio::sync::Mutex<std::collections::HashSet<String>>,
    /// Every pattern local subscribers hold now.
    interest: Mutex<HashMap<InterestKey, Arc<Interest>>>,
    /// Moves with every change of `interest`.
    wanted: AtomicU64,
    /// Wakes the link: the interest changed, or the connection did.
    wake: Arc<Notify>,
    confirmed: watch::Sender<Confirmed>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("instance", &self.instance).field("urls", &self.urls).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the NATS client (it connects in the background and keeps reconnecting) and the
    /// link task that keeps this node's subscriptions in place, both ending with `shutdown`.
    ///
    /// # Errors
    /// The credentials file or a certificate cannot be read.
    pub async fn start(
        config: &ClusterConfig,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let node_name = config.effective_node_name();
        let instance: Arc<str> = Arc::from(format!("{node_name}-{:016x}", crate::security::random_128() as u64));
        let wake = Arc::new(Notify::new());
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("stampede {instance}"))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(2000)))
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(10))
            .event_callback({
                let wake = Arc::clone(&wake);
                move |event| {
                    let wake = Arc::clone(&wake);
                    async move {
                        match &event {
                            async_nats::Event::Connected => info!("cluster: connected to NATS"),
                            async_nats::Event::Disconnected => warn!(
                                "cluster: lost the NATS connection; topic SENDs and SUBSCRIBEs get an ERROR until it is back"
                            ),
                            other => debug!("cluster: NATS event: {other}"),
                        }
                        wake.notify_one();
                    }
                }
            });
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &config.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| ClusterError::Setup(format!("cannot use creds_file {}: {e}", path.display())))?;
        }
        if config.tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let addrs: Vec<async_nats::ServerAddr> = config
            .nats_urls
            .iter()
            .map(|url| url.parse().map_err(|e| ClusterError::Setup(format!("nats_urls {url:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        let client = options.connect(addrs).await.map_err(|e| ClusterError::Setup(format!("NATS client: {e}")))?;
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(Duration::from_millis(config.confirm_timeout_ms));
        let cluster = Arc::new(Cluster {
            jetstream,
            replicas: usize::from(config.stream_replicas),
            ack_wait: Duration::from_millis(config.ack_wait_ms),
            redelivery_delay: Duration::from_millis(config.redelivery_delay_ms),
            streams: tokio::sync::Mutex::new(std::collections::HashSet::new()),
            client,
            subjects: Subjects::new(&config.subject_prefix),
            instance,
            node_name,
            urls: config.nats_urls.join(","),
            queues: config.queues,
            confirm_timeout: Duration::from_millis(config.confirm_timeout_ms),
            interest: Mutex::new(HashMap::new()),
            wanted: AtomicU64::new(0),
            wake,
            confirmed: watch::Sender::new((0, u64::MAX)),
        });
        info!(node = %cluster.node_name, instance = %cluster.instance, nats = %cluster.urls, "cluster mode: topics are shared through NATS");
        tasks.spawn(link(Arc::clone(&cluster), tasks.clone(), shutdown));
        Ok(cluster)
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The id this start of the node publishes under.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Connections made so far (the first one included): a new value means a reconnect.
    fn epoch(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Acquire)
    }

    /// True when connected and every subscription since the last connect is confirmed.
    pub fn is_ready(&self) -> bool {
        let epoch = self.epoch();
        self.client.connection_state() == State::Connected && self.confirmed.borrow().1 == epoch
    }

    /// `/readyz`'s `cluster` check: (passes, what it found).
    pub fn check(&self) -> (bool, String) {
        let patterns = self.interest.lock().unwrap_or_else(|p| p.into_inner()).len();
        match self.client.connection_state() {
            State::Connected if self.is_ready() => {
                (true, format!("connected to NATS ({}), {patterns} topic patterns subscribed", self.urls))
            }
            State::Connected => (false, "connected to NATS, re-subscribing".to_owned()),
            State::Pending => (false, format!("connecting to NATS ({})", self.urls)),
            State::Disconnected => (false, format!("not connected to NATS ({}), reconnecting", self.urls)),
        }
    }

    /// Refuses cluster operations while not connected.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`].
    pub fn check_available(&self) -> Result<(), ClusterError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            State::Pending => Err(ClusterError::Unavailable("not yet connected to NATS".to_owned())),
            State::Disconnected => Err(ClusterError::Unavailable("the NATS connection is lost".to_owned())),
        }
    }

    /// Refuses destinations that are not clustered, as `[cluster] queues` says, and queue
    /// operations while the engine is away.
    ///
    /// # Errors
    /// [`ClusterError::NotClustered`] for queue destinations that are not shared;
    /// [`ClusterError::Unavailable`] for a JetStream queue while not connected.
    pub fn check_destination(&self, destination: &Destination<'_>) -> Result<(), ClusterError> {
        match (self.queues, destination) {
            (_, Destination::Topic(_)) | (QueueMode::NodeLocal, _) => Ok(()),
            (QueueMode::Jetstream, Destination::Queue(_) | Destination::TempQueue(_) | Destination::ReplyQueue(_)) => {
                self.check_available()
            }
            (QueueMode::Jetstream, Destination::ExistingQueue(_)) => Err(ClusterError::SingleNodeOnly {
                feature: "/amq/queue/ (a queue that must already exist)",
                why: "A node cannot tell whether a queue exists on another node without asking the engine; use /queue/, which every node shares.",
            }),
            (_, Destination::Queue(_)) => Err(ClusterError::NotClustered("/queue/")),
            (_, Destination::ExistingQueue(_)) => Err(ClusterError::NotClustered("/amq/queue/")),
            (_, Destination::TempQueue(_)) => Err(ClusterError::NotClustered("/temp-queue/")),
            (_, Destination::ReplyQueue(_)) => Err(ClusterError::NotClustered("/reply-queue/")),
        }
    }

    /// True when `/queue/` destinations live in JetStream.
    pub fn queues_on_jetstream(&self) -> bool {
        self.queues == QueueMode::Jetstream
    }

    /// Refuses what a SUBSCRIBE to a JetStream queue asks for that a shared queue cannot do.
    ///
    /// # Errors
    /// [`ClusterError::SingleNodeOnly`] naming the feature.
    pub fn check_subscription(&self, destination: &Destination<'_>, asks: QueueAsks) -> Result<(), ClusterError> {
        if !self.queues_on_jetstream() || !matches!(destination, Destination::Queue(_)) {
            return Ok(());
        }
        let why = "JetStream hands each node the next messages in order; choosing among the waiting messages or among consumers on every node would need the whole queue in one place.";
        if asks.selector {
            return Err(ClusterError::SingleNodeOnly { feature: "a selector on a queue", why });
        }
        if asks.priority {
            return Err(ClusterError::SingleNodeOnly { feature: "consumer priority on a queue", why });
        }
        if asks.exclusive {
            return Err(ClusterError::SingleNodeOnly { feature: "an exclusive queue consumer", why });
        }
        if asks.browser {
            return Err(ClusterError::SingleNodeOnly {
                feature: "browsing a queue",
                why: "A node sees only the messages JetStream handed it, not the queue's waiting messages.",
            });
        }
        Ok(())
    }

    /// Refuses a SEND to a JetStream queue inside a transaction.
    ///
    /// # Errors
    /// [`ClusterError::SingleNodeOnly`].
    pub fn check_transaction(&self, destination: &Destination<'_>) -> Result<(), ClusterError> {
        if self.queues_on_jetstream() && matches!(destination, Destination::Queue(_)) {
            return Err(ClusterError::SingleNodeOnly {
                feature: "a SEND to a queue inside a transaction",
                why: "The engine has no atomic publish of several messages that this broker uses, so a COMMIT could store some of them and not the others.",
            });
        }
        Ok(())
    }

    /// Starts this node's actor of JetStream queue `name` of `vhost`.
    pub(crate) fn spawn_queue(
        self: &Arc<Self>,
        vhost: &Arc<str>,
        name: &str,
        settings: crate::destination::queue::QueueSettings,
        environment: &crate::destination::queue::QueueEnvironment,
    ) -> crate::destination::queue::QueueHandle {
        queue::spawn(Arc::clone(self), Arc::clone(vhost), Arc::from(name), settings, environment)
    }

    /// Creates the queue stream of `vhost` unless this node knows it exists.
    async fn ensure_stream(&self, vhost: &str) -> Result<String, ClusterError> {
        let name = self.subjects.queue_stream(vhost);
        let mut known = self.streams.lock().await;
        if known.contains(&name) {
            return Ok(name);
        }
        let config = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![self.subjects.queues(vhost)],
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            description: Some(format!("Stampede queues of virtual host {vhost}")),
            ..Default::default()
        };
        self.jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| ClusterError::Unavailable(format!("cannot create the JetStream stream {name}: {e}")))?;
        known.insert(name.clone());
        Ok(name)
    }

    /// The durable consumer of a queue, created if needed (with its stream).
    async fn queue_consumer(
        &self,
        vhost: &str,
        stream: &str,
        name: &str,
        subject: &str,
    ) -> Result<async_nats::jetstream::consumer::PullConsumer, ClusterError> {
        self.ensure_stream(vhost).await?;
        let stream = self
            .jetstream
            .get_stream(stream)
            .await
            .map_err(|e| ClusterError::Unavailable(format!("stream {stream}: {e}")))?;
        let config = async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: subject.to_owned(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: queue::MAX_ACK_PENDING,
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| ClusterError::Unavailable(format!("consumer {name}: {e}")))
    }

    /// Publishes a queue message to JetStream; the returned future resolves once JetStream has
    /// acknowledged it (stored on a quorum of servers).
    async fn store_queue_message(
        &self,
        vhost: &str,
        subject: &str,
        template: &MessageTemplate,
        fields: &TopicMessage,
    ) -> Result<impl std::future::Future<Output = Result<(), ClusterError>> + Send + 'static, ClusterError> {
        self.check_available()?;
        self.ensure_stream(vhost).await?;
        let payload = wire::encode(template, fields);
        let size = payload.len() + ORIGIN_HEADER.len() + self.instance.len() + 16;
        let max = self.client.max_payload();
        if max > 0 && size > max {
            return Err(ClusterError::TooLarge { size, max });
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ORIGIN_HEADER, &*self.instance);
        let ack = self
            .jetstream
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(queue::not_stored)?;
        Ok(async move { ack.await.map(drop).map_err(queue::not_stored) })
    }

    /// Checks that the engine is there and takes the message (as NATS will see it), before
    /// this node delivers it: a message NATS would refuse is refused everywhere, not delivered
    /// on one node only.
    ///
    /// # Errors
    /// Not connected, or the message is larger than NATS accepts (`max_payload`).
    pub fn prepare(&self, template: &MessageTemplate, message: &TopicMessage) -> Result<Outgoing, ClusterError> {
        self.check_available()?;
        let payload = wire::encode(template, message);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ORIGIN_HEADER, &*self.instance);
        // NATS counts the header block too; this bound is what its client checks.
        let size = payload.len() + ORIGIN_HEADER.len() + self.instance.len() + 16;
        let max = self.client.max_payload();
        if max > 0 && size > max {
            return Err(ClusterError::TooLarge { size, max });
        }
        Ok(Outgoing { headers, payload, size })
    }

    /// Publishes a [`Cluster::prepare`]d message as topic `name` of `vhost` to the other nodes
    /// (this node delivered it already).
    ///
    /// # Errors
    /// The connection was lost, or NATS refused the size after all.
    pub async fn publish(&self, vhost: &str, name: &str, outgoing: Outgoing) -> Result<(), ClusterError> {
        let Outgoing { headers, payload, size } = outgoing;
        self.client.publish_with_headers(self.subjects.topic(vhost, name), headers, payload).await.map_err(|e| match e
            .kind()
        {
            async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                ClusterError::TooLarge { size, max: self.client.max_payload() }
            }
            _ => ClusterError::Unavailable(e.to_string()),
        })
    }

    /// Adds `subscriber`, which registered `pattern` in `vhost`, to this node's interest, and
    /// returns the interest generation to [`Cluster::confirm`].
    pub fn add_interest(&self, vhost: &Arc<str>, pattern: &str, subscriber: Arc<TopicSubscriber>) -> u64 {
        {
            let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
            let key: InterestKey = (Arc::clone(vhost), Arc::from(pattern));
            let entry = interest.entry(key).or_insert_with(|| {
                Arc::new(Interest {
                    pattern: Arc::from(pattern),
                    matcher: TopicPattern::parse(pattern),
                    subject: self.subjects.pattern(vhost, pattern),
                    subscribers: Topic::new(Arc::from(pattern)),
                })
            });
            entry.subscribers.add(subscriber);
        }
        let generation = self.wanted.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        generation
    }

    /// Removes subscriber `id` of `pattern` in `vhost`; the NATS subscription goes with the
    /// last one.
    pub fn drop_interest(&self, vhost: &str, pattern: &str, id: u64) {
        let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        let key: InterestKey = (Arc::from(vhost), Arc::from(pattern));
        if let Some(entry) = interest.get(&key)
            && entry.subscribers.remove(id) == 0
        {
            interest.remove(&key);
            drop(interest);
            self.wanted.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// Waits until the NATS server has confirmed the interest up to `generation`.
    ///
    /// # Errors
    /// Not confirmed within `confirm_timeout_ms` (the engine is away).
    pub async fn confirm(&self, generation: u64) -> Result<(), ClusterError> {
        let mut confirmed = self.confirmed.subscribe();
        let wait = confirmed.wait_for(|&(done, epoch)| done >= generation && epoch == self.epoch());
        match tokio::time::timeout(self.confirm_timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClusterError::Unavailable(format!(
                "the NATS server did not confirm the subscription within {} ms",
                self.confirm_timeout.as_millis()
            ))),
        }
    }

    /// Topic patterns this node holds on NATS now (for tests and the API).
    pub fn interest_count(&self) -> usize {
        self.interest.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The topic name under which temporary queue `name` (already unique across nodes) gets the
/// replies other nodes send it: one word, its dots and wildcards escaped, after a control
/// character no client destination can hold (so no client can subscribe or publish it).
pub fn reply_topic(name: &str) -> String {
    let mut topic = String::from("\u{1}reply.");
    subject::encode_token(name, &mut topic);
    topic
}

/// What a SUBSCRIBE to a queue asks for beyond plain consumption.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueAsks {
    /// A `selector` header.
    pub selector: bool,
    /// A priority other than 0.
    pub priority: bool,
    /// `exclusive`.
    pub exclusive: bool,
    /// `browser:true`.
    pub browser: bool,
}

/// A topic message ready for NATS ([`Cluster::prepare`]).
#[derive(Debug)]
pub struct Outgoing {
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
    size: usize,
}

/// One NATS subscription in place: the interest it feeds and how to stop its reader.
struct Subscribed {
    interest: Arc<Interest>,
    stop: CancellationToken,
}

/// The link task: whenever the interest or the connection changes, brings the NATS
/// subscriptions in line with the interest table and has the server confirm them.
async fn link(cluster: Arc<Cluster>, tasks: TaskTracker, shutdown: CancellationToken) {
    let mut subscribed: HashMap<InterestKey, Subscribed> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = cluster.wake.notified() => {}
            () = tokio::time::sleep(LINK_TICK) => {}
        }
        // The epoch is read before the state: a reconnect in between shows as a newer epoch,
        // which is only confirmed by a later round.
        let epoch = cluster.epoch();
        if cluster.client.connection_state() != State::Connected {
            continue;
        }
        let generation = cluster.wanted.load(Ordering::Acquire);
        if *cluster.confirmed.borrow() == (generation, epoch) {
            continue;
        }
        let wanted: Vec<(InterestKey, Arc<Interest>)> = {
            let interest = cluster.interest.lock().unwrap_or_else(|p| p.into_inner());
            interest.iter().map(|(key, entry)| (key.clone(), Arc::clone(entry))).collect()
        };
        if let Err(error) = reconcile(&cluster, &mut subscribed, wanted, &tasks, &shutdown).await {
            warn!("cluster: cannot subscribe on NATS: {error}");
            continue;
        }
        match round_trip(&cluster).await {
            Ok(()) => {
                let changed = cluster.confirmed.borrow().1 != epoch;
                cluster.confirmed.send_replace((generation, epoch));
                if changed {
                    info!(patterns = subscribed.len(), "cluster: every topic subscription is confirmed by NATS; ready");
                }
            }
            Err(error) => warn!("cluster: NATS did not confirm this node's subscriptions: {error}"),
        }
    }
    for (_, entry) in subscribed {
        entry.stop.cancel();
    }
}

/// A request the server itself answers, after everything this connection sent before it: a
/// flush only waits for the socket, the answer waits for the server. Nobody subscribes the
/// subject (`<prefix>._ping.<instance>`), so the server answers "no responders" at once.
async fn round_trip(cluster: &Cluster) -> Result<(), async_nats::RequestError> {
    let request = async_nats::Request::new().timeout(Some(FLUSH_TIMEOUT));
    match cluster.client.send_request(cluster.subjects.ping(&cluster.instance), request).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(error) => Err(error),
    }
}

/// Subscribes what is wanted and not yet subscribed, unsubscribes what is no longer wanted.
async fn reconcile(
    cluster: &Arc<Cluster>,
    subscribed: &mut HashMap<InterestKey, Subscribed>,
    wanted: Vec<(InterestKey, Arc<Interest>)>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let keep: std::collections::HashSet<InterestKey> = wanted.iter().map(|(key, _)| key.clone()).collect();
    subscribed.retain(|key, entry| {
        let wanted = keep.contains(key);
        if !wanted {
            entry.stop.cancel();
        }
        wanted
    });
    for (key, interest) in wanted {
        if subscribed.get(&key).is_some_and(|have| Arc::ptr_eq(&have.interest, &interest)) {
            continue;
        }
        let subscriber = cluster.client.subscribe(interest.subject.clone()).await?;
        let stop = shutdown.child_token();
        if let Some(old) = subscribed.insert(key, Subscribed { interest: Arc::clone(&interest), stop: stop.clone() }) {
            old.stop.cancel();
        }
        tasks.spawn(read(Arc::clone(cluster), interest, subscriber, stop));
    }
    Ok(())
}

/// Reads one NATS subscription and delivers each message from another node to the local
/// subscribers of its pattern. Dropping the subscriber at the end unsubscribes it.
async fn read(
    cluster: Arc<Cluster>,
    interest: Arc<Interest>,
    mut subscriber: async_nats::Subscriber,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let own = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(ORIGIN_HEADER))
            .is_some_and(|origin| origin.as_str() == &*cluster.instance);
        if own {
            continue;
        }
        let Some((_, name)) = cluster.subjects.parse_topic(&message.subject) else {
            debug!(subject = %message.subject, "cluster: a subject this node cannot read skipped");
            continue;
        };
        let matches = match &interest.matcher {
            Some(matcher) => matcher.matches(&name),
            None => *name == *interest.pattern,
        };
        if !matches {
            continue;
        }
        let (template, topic_message) = match wire::decode(&message.payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                warn!(subject = %message.subject, "cluster: unreadable message skipped: {error}");
                continue;
            }
        };
        if topic_message.expires_at_ms.is_some_and(|at| at <= crate::destination::queue::now_ms()) {
            continue;
        }
        crate::destination::router::deliver_to(&interest.subscribers, &Arc::new(template), topic_message).await;
    }
}
