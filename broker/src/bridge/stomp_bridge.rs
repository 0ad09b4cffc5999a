//! STOMP bridges: a link to another STOMP broker (another Stampede, RabbitMQ, ActiveMQ) through
//! the project's own client, `stampede-client`.
//!
//! Delivery is at least once across the link, in both directions:
//!
//! - `out`: the bridge consumes its local `source` (a queue, or the durable subscription
//!   `bridge:<name>` of a topic pattern) with a prefetch of `max_in_flight`, and sends each
//!   message to `remote_destination` as `persistent:true` with a receipt. The local message is
//!   ACKed only when that RECEIPT arrives (for a persistent message the remote broker sends it
//!   once the message is stored). If the connection is lost first, the bridge's consumer is
//!   detached and the queue gets every unconfirmed message back, to be sent again after the
//!   reconnection; the remote may then see a message twice, never zero times.
//! - `in`: the bridge subscribes to `remote_source` with `ack:client-individual` and a prefetch
//!   of `max_in_flight` (and `durable:true` for a topic, so the remote keeps messages while the
//!   link is down, where the remote supports it), publishes each message into its local
//!   `destination` as persistent, and ACKs it on the remote only once the local queue has
//!   stored it. A message the local queue refuses is NACKed (the remote redelivers it).
//!
//! While the remote is unreachable the bridge retries with a doubling backoff
//! (`reconnect_initial_ms` up to `reconnect_max_ms`), saying in the log once when it goes down
//! and once when it is back; its state is in the management API and in
//! `stampede_bridge_up{bridge}`. An outgoing bridge consumes nothing while it is down, so its
//! messages wait in their queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use stampede_client::{AckMode, Client, ConnectOptions, Headers, Message, SubscribeOptions};
use stampede_protocol::{MessageTemplate, names};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bridge::{BridgeConfig, BridgeDirection, BridgeHandles, Status, backoff};
use crate::destination::outbox::{Delivery, Outbox};
use crate::destination::queue::{Consumer, Outcome, QueuedMessage, Verdict, now_ms};
use crate::destination::router::{Destination, Router, TopicMessage};

/// Headers of a delivered message that describe one delivery, not the message: never copied
/// onto the forwarded one.
const PER_DELIVERY: [&str; 6] =
    [names::SUBSCRIPTION, names::MESSAGE_ID, names::ACK, names::REDELIVERED, names::CONTENT_LENGTH, names::DESTINATION];

/// A configured bridge, ready to run.
pub(crate) struct Bridge {
    config: BridgeConfig,
    status: Arc<Status>,
    metrics: BridgeHandles,
    options: ConnectOptions,
}

/// Why a connected bridge stopped forwarding.
enum Stop {
    Shutdown,
    Lost(String),
}

impl Bridge {
    pub(crate) fn new(config: BridgeConfig, status: Arc<Status>, metrics: BridgeHandles) -> Result<Bridge, String> {
        let mut options = ConnectOptions::new(&config.remote_url)
            .map_err(|e| format!("bridge {:?}: remote_url: {e}", config.name))?
            .vhost(config.vhost.clone())
            .heart_beat(config.heart_beat_ms, config.heart_beat_ms)
            .connect_timeout(Duration::from_secs(10))
            .receipt_timeout(Duration::from_secs(30));
        if let Some(login) = &config.login {
            options = options.login(login.clone());
        }
        if let Some(passcode) = &config.passcode {
            options = options.passcode(passcode.clone());
        }
        metrics.up.set(0);
        Ok(Bridge { config, status, metrics, options })
    }

    /// Connects, forwards, and reconnects with backoff until `shutdown`.
    pub(crate) async fn run(self, router: Arc<Router>, shutdown: CancellationToken) {
        let name = self.config.name.clone();
        let mut failures: u32 = 0;
        let mut down_logged = false;
        loop {
            let connected = tokio::select! {
                connected = Client::connect_with(self.options.clone()) => connected,
                () = shutdown.cancelled() => return,
            };
            let stop = match connected {
                Ok(client) => {
                    failures = 0;
                    self.status.set_up();
                    self.status.connections.fetch_add(1, Ordering::Relaxed);
                    self.metrics.connections.inc();
                    self.metrics.up.set(1);
                    if down_logged {
                        info!(bridge = %name, remote = %self.config.remote_url, "bridge is back up");
                    } else {
                        info!(bridge = %name, remote = %self.config.remote_url, direction = self.config.direction.as_str(), "bridge connected");
                    }
                    down_logged = false;
                    let stop = match self.config.direction {
                        BridgeDirection::Out => self.forward_out(&client, &router, &shutdown).await,
                        BridgeDirection::In => self.forward_in(&client, &router, &shutdown).await,
                    };
                    self.metrics.up.set(0);
                    if matches!(stop, Stop::Shutdown) {
                        let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
                    }
                    stop
                }
                Err(error) => Stop::Lost(format!("cannot connect: {error}")),
            };
            let Stop::Lost(reason) = stop else { return };
            failures = failures.saturating_add(1);
            self.status.failed(reason.clone());
            let wait = backoff(self.config.reconnect_initial_ms, self.config.reconnect_max_ms, failures);
            if !down_logged {
                warn!(bridge = %name, remote = %self.config.remote_url, "bridge is down: {reason}; reconnecting with backoff");
                down_logged = true;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Out: local deliveries to the remote, each ACKed when its RECEIPT arrives.
    async fn forward_out(&self, client: &Client, router: &Router, shutdown: &CancellationToken) -> Stop {
        let source = match crate::bridge::Source::parse(&self.config.source) {
            Ok(source) => source,
            Err(error) => return Stop::Lost(error),
        };
        let queue = match source.queue(router, &format!("bridge:{}", self.config.name)).await {
            Ok(queue) => queue,
            Err(error) => return Stop::Lost(error),
        };
        let outbox = Outbox::new(usize::MAX);
        let consumer_id = router.next_id();
        let consumer = Consumer::new(consumer_id, 0, Arc::clone(&outbox), self.config.max_in_flight, usize::MAX);
        if let Err(error) = queue.add_consumer(consumer).await {
            return Stop::Lost(error.to_string());
        }
        let mut in_flight = FuturesOrdered::new();
        let mut taken = std::collections::VecDeque::new();
        let stop = loop {
            tokio::select! {
                () = outbox.ready() => {
                    outbox.take_all(&mut taken);
                    for delivery in taken.drain(..) {
                        self.status.in_flight.fetch_add(1, Ordering::Relaxed);
                        in_flight.push_back(self.send(client, delivery));
                    }
                }
                Some((message_id, result)) = in_flight.next() => {
                    self.status.in_flight.fetch_sub(1, Ordering::Relaxed);
                    match result {
                        Ok(()) => {
                            let _ = queue.settle(consumer_id, vec![message_id], Outcome::Ack);
                            self.status.delivered.fetch_add(1, Ordering::Relaxed);
                            self.metrics.messages.inc();
                        }
                        Err(error) => break Stop::Lost(error),
                    }
                }
                reason = client.closed() => break Stop::Lost(format!("connection lost: {reason}")),
                () = shutdown.cancelled() => break Stop::Shutdown,
            }
        };
        // Whatever was not confirmed goes back to the queue, for the next connection.
        self.status.in_flight.fetch_sub(in_flight.len() as i64, Ordering::Relaxed);
        drop(in_flight);
        outbox.close();
        let _ = queue.remove_consumer(consumer_id).await;
        stop
    }

    /// Sends one local delivery as a persistent SEND with a receipt.
    fn send<'a>(
        &'a self,
        client: &'a Client,
        delivery: Delivery,
    ) -> impl std::future::Future<Output = (u64, Result<(), String>)> + 'a {
        let mut headers = Headers::with_capacity(delivery.template.headers().len() + 1);
        for (name, value) in delivery.template.headers().iter_shared() {
            if !PER_DELIVERY.contains(&&**name) && &**name != names::PERSISTENT && &**name != names::RECEIPT {
                headers.push(name.clone(), value.clone());
            }
        }
        headers.push(names::PERSISTENT, "true");
        let body = delivery.template.body().clone();
        let id = delivery.message_id;
        async move {
            let result = client
                .send_with_receipt(&self.config.remote_destination, body, headers)
                .await
                .map(drop)
                .map_err(|e| format!("forwarding message {id}: {e}"));
            (id, result)
        }
    }

    /// In: remote messages stored locally, each ACKed on the remote once stored.
    async fn forward_in(&self, client: &Client, router: &Router, shutdown: &CancellationToken) -> Stop {
        let mut options = SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(self.config.max_in_flight);
        if self.config.remote_source.starts_with("/topic/") {
            options = options.id(format!("bridge-{}", self.config.name)).durable();
        }
        let mut subscription = match client.subscribe(&self.config.remote_source, options).await {
            Ok(subscription) => subscription,
            Err(error) => return Stop::Lost(format!("cannot subscribe to {}: {error}", self.config.remote_source)),
        };
        let mut storing = FuturesOrdered::new();
        loop {
            tokio::select! {
                received = subscription.recv() => {
                    let Some(message) = received else {
                        return Stop::Lost(format!("connection lost: {}", client.closed().await));
                    };
                    match self.store(router, &message).await {
                        Ok(verdicts) => {
                            self.status.in_flight.fetch_add(1, Ordering::Relaxed);
                            storing.push_back(async move {
                                let mut stored = Ok(());
                                for verdict in verdicts {
                                    match verdict.await {
                                        Ok(Ok(())) => {}
                                        Ok(Err(error)) => stored = Err(error.to_string()),
                                        Err(_) => stored = Err("the local queue stopped".to_owned()),
                                    }
                                }
                                (message, stored)
                            });
                        }
                        Err(error) => {
                            warn!(bridge = %self.config.name, "message not stored locally: {error}");
                            self.status.failed(error);
                            let _ = client.nack(&message).await;
                        }
                    }
                }
                Some((message, stored)) = storing.next() => {
                    self.status.in_flight.fetch_sub(1, Ordering::Relaxed);
                    match stored {
                        Ok(()) => {
                            if let Err(error) = client.ack(&message).await {
                                return Stop::Lost(format!("acknowledging on the remote: {error}"));
                            }
                            self.status.delivered.fetch_add(1, Ordering::Relaxed);
                            self.metrics.messages.inc();
                        }
                        Err(error) => {
                            warn!(bridge = %self.config.name, "message not stored locally: {error}");
                            self.status.failed(error);
                            let _ = client.nack(&message).await;
                        }
                    }
                }
                () = shutdown.cancelled() => {
                    self.status.in_flight.fetch_sub(storing.len() as i64, Ordering::Relaxed);
                    return Stop::Shutdown;
                }
            }
        }
    }

    /// Publishes `message` into the local destination as persistent; the verdicts resolve
    /// once it is stored.
    async fn store(&self, router: &Router, message: &Message) -> Result<Vec<Verdict>, String> {
        let mut headers = Headers::with_capacity(message.headers.len() + 1);
        headers.push(names::DESTINATION, self.config.destination.clone());
        for (name, value) in message.headers.iter_shared() {
            if !PER_DELIVERY.contains(&&**name) && &**name != names::PERSISTENT {
                headers.push(name.clone(), value.clone());
            }
        }
        headers.push(names::PERSISTENT, "true");
        let template = Arc::new(MessageTemplate::new(headers, message.body.clone()));
        let now = now_ms();
        let id = router.next_message_id();
        match Destination::parse(&self.config.destination) {
            Ok(Destination::Queue(name)) => {
                let queued = QueuedMessage {
                    id,
                    template,
                    delivery_count: 0,
                    persistent: true,
                    expires_at_ms: None,
                    enqueued_at_ms: now,
                };
                let verdict = router.queue_or_create(name).publish(queued).await.map_err(|e| e.to_string())?;
                Ok(vec![verdict])
            }
            Ok(Destination::Topic(name)) => {
                let topic = TopicMessage { id, persistent: true, expires_at_ms: None, enqueued_at_ms: now };
                router.publish_topic(&name, &template, topic).await.map_err(|e| e.to_string())
            }
            _ => Err(format!("destination {:?} cannot be published to", self.config.destination)),
        }
    }
}
