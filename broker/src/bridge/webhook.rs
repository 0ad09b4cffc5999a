//! Webhooks: a queue's messages POSTed to an HTTP backend, one request per message.
//!
//! A webhook is a consumer of its source queue (or of the durable subscription that holds a
//! topic pattern's messages), with a prefetch of `concurrency`: the queue's credit is what
//! bounds the requests in flight, so the webhook never holds more messages than it can send.
//! A 2xx answer ACKs the message. Anything else (another status, a timeout, no connection) is
//! a failed attempt: the message stays with the webhook for the backoff (`retry_initial_ms`,
//! doubling up to `retry_max_ms`) and is then NACKed, so the queue redelivers it, marked
//! redelivered, with its delivery count raised; at `max_deliveries` attempts it is NACKed as
//! given up and the queue moves it to its dead-letter queue with `x-dead-letter-reason:
//! delivery-limit`, exactly as for a STOMP consumer. A message is therefore delivered at least
//! once; `X-Stampede-Message-Id` stays the same on every attempt so receivers can deduplicate.
//!
//! The request: `POST <url>`, the message body as the request body, and these headers:
//!
//! | header | value |
//! | --- | --- |
//! | `Content-Type` | the message's `content-type`, else `application/octet-stream` |
//! | `X-Stampede-Message-Id` | the broker's message id (the same on every attempt) |
//! | `X-Stampede-Destination` | the destination the message was sent to |
//! | `X-Stampede-Webhook` | the webhook's name |
//! | `X-Stampede-Delivery` | the attempt, from 1 |
//! | `X-Stampede-Timestamp` | seconds since the Unix epoch when this attempt was signed |
//! | `X-Stampede-Signature` | with a `secret`: `sha256=` and the lower-case hex HMAC-SHA256, keyed by the secret, of the timestamp's decimal digits, a `.`, and the raw body bytes |
//! | `X-Stampede-Header-<name>` | each header the publisher set (valid HTTP names and values only) |
//!
//! Receivers verify by recomputing the HMAC over `"<X-Stampede-Timestamp>.<body>"`, comparing
//! in constant time, and refusing timestamps too far from their clock (replays).
//!
//! Each webhook has its own HTTP client (its own connection pool, reused across requests) and
//! its own credit, so a slow or dead backend holds only its own webhook's messages.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stampede_protocol::names;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bridge::{RequestOutcome, Status, WebhookConfig, WebhookHandles, backoff};
use crate::destination::outbox::{Delivery, Outbox};
use crate::destination::queue::{Consumer, Outcome, QueueHandle};
use crate::destination::router::Router;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-stampede-signature";
/// Header carrying the signed timestamp.
pub const TIMESTAMP_HEADER: &str = "x-stampede-timestamp";

/// `sha256=<hex>`: the HMAC-SHA256 of `"<timestamp>.<body>"` keyed by `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256=");
    for byte in tag.as_ref() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// A configured webhook, ready to run.
pub(crate) struct Webhook {
    config: WebhookConfig,
    status: Arc<Status>,
    metrics: WebhookHandles,
    client: reqwest::Client,
}

/// The rustls configuration of outbound HTTPS: the ring provider (the broker's own), the
/// Mozilla roots, HTTP/1.1 by ALPN.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Webhook {
    pub(crate) fn new(config: WebhookConfig, status: Arc<Status>, metrics: WebhookHandles) -> Result<Webhook, String> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(config.concurrency as usize)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .user_agent(concat!("stampede/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook {:?}: cannot build its HTTP client: {e}", config.name))?;
        Ok(Webhook { config, status, metrics, client })
    }

    /// Attaches to the source and delivers until `shutdown`. Every request runs on `tasks`.
    pub(crate) async fn run(self, router: Arc<Router>, tasks: TaskTracker, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let source = match crate::bridge::Source::parse(&this.config.source) {
            Ok(source) => source,
            Err(error) => {
                warn!(webhook = %this.config.name, "webhook not started: {error}");
                this.status.failed(error);
                return;
            }
        };
        let durable_name = format!("webhook:{}", this.config.name);
        let queue = match source.queue(&router, &durable_name).await {
            Ok(queue) => queue,
            Err(error) => {
                warn!(webhook = %this.config.name, "webhook not started: {error}");
                this.status.failed(error);
                return;
            }
        };
        // Queue deliveries are bounded by credit, not by the outbox's byte budget.
        let outbox = Outbox::new(usize::MAX);
        let consumer_id = router.next_id();
        let consumer = Consumer::new(consumer_id, 0, Arc::clone(&outbox), this.config.concurrency.max(1), usize::MAX);
        if let Err(error) = queue.add_consumer(consumer).await {
            this.status.failed(error.to_string());
            return;
        }
        info!(webhook = %this.config.name, source = %this.config.source, url = %this.config.url, "webhook started");
        let mut taken = std::collections::VecDeque::new();
        loop {
            tokio::select! {
                () = outbox.ready() => {}
                () = shutdown.cancelled() => break,
            }
            if outbox.has_failed() {
                warn!(webhook = %this.config.name, "the webhook's queue failed; attaching again");
                break;
            }
            outbox.take_all(&mut taken);
            for delivery in taken.drain(..) {
                let this = Arc::clone(&this);
                let shutdown = shutdown.clone();
                tasks.spawn(async move { this.deliver(delivery, shutdown).await });
            }
        }
        // Unsettled messages go back to the queue for the next start (or another consumer).
        outbox.close();
        let _ = queue.remove_consumer(consumer_id).await;
    }

    /// Sends one delivery, retrying after the backoff by NACKing it back to the queue.
    async fn deliver(self: Arc<Self>, delivery: Delivery, shutdown: CancellationToken) {
        let Some(from) = delivery.from_queue.clone() else { return };
        let attempt = from.delivery_count.max(1);
        self.status.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        let started = Instant::now();
        let result = tokio::select! {
            result = self.post(&delivery, attempt) => Some(result),
            () = shutdown.cancelled() => None,
        };
        self.metrics.seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
        self.status.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Cancelled by shutdown: the consumer's removal returns the message to the queue.
        let Some(result) = result else { return };
        let outcome = match &result {
            Ok(()) => RequestOutcome::Success,
            Err((outcome, _)) => *outcome,
        };
        self.metrics.requests[outcome as usize].inc();
        match result {
            Ok(()) => {
                self.status.delivered.fetch_add(1, Ordering::Relaxed);
                if self.status.set_up() && self.status.failures.load(Ordering::Relaxed) > 0 {
                    info!(webhook = %self.config.name, "webhook backend answers again");
                }
                settle(&from.queue, from.consumer, delivery.message_id, Outcome::Ack);
            }
            Err((_, error)) => {
                let message = format!("message {} attempt {attempt}: {error}", delivery.message_id);
                if self.status.failed(message.clone()) {
                    warn!(webhook = %self.config.name, url = %self.config.url, "webhook backend failing: {message}");
                }
                if attempt >= self.config.max_deliveries {
                    warn!(webhook = %self.config.name, "message {} dead-lettered after {attempt} attempts", delivery.message_id);
                    self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    settle(&from.queue, from.consumer, delivery.message_id, Outcome::GiveUp);
                    return;
                }
                let wait = backoff(self.config.retry_initial_ms, self.config.retry_max_ms, attempt);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return,
                }
                settle(&from.queue, from.consumer, delivery.message_id, Outcome::Requeue);
            }
        }
    }

    async fn post(&self, delivery: &Delivery, attempt: u32) -> Result<(), (RequestOutcome, String)> {
        let headers = delivery.template.headers();
        let body = delivery.template.body().clone();
        let timestamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let content_type = headers.get(names::CONTENT_TYPE).unwrap_or("application/octet-stream");
        let mut request = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header("x-stampede-message-id", delivery.message_id.to_string())
            .header("x-stampede-webhook", &self.config.name)
            .header("x-stampede-delivery", attempt.to_string())
            .header(TIMESTAMP_HEADER, timestamp.to_string());
        if let Some(destination) = headers.get(names::DESTINATION) {
            request = request.header("x-stampede-destination", destination);
        }
        for (name, value) in headers.iter_shared() {
            if matches!(&**name, names::DESTINATION | names::CONTENT_TYPE | names::CONTENT_LENGTH) {
                continue;
            }
            let name = format!("x-stampede-header-{}", name.to_ascii_lowercase());
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                request = request.header(name, value);
            }
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        if let Some(secret) = &self.config.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret.as_bytes(), timestamp, &body));
        }
        let response = request.body(body).send().await.map_err(|error| {
            let outcome = if error.is_timeout() { RequestOutcome::Timeout } else { RequestOutcome::ConnectionError };
            (outcome, describe(&error))
        })?;
        let status = response.status();
        if status.is_success() {
            // Read the (small) answer so the connection goes back to the pool.
            let _ = response.bytes().await;
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            let snippet: String = text.chars().take(200).collect();
            Err((RequestOutcome::HttpError, format!("HTTP {status}: {}", snippet.trim())))
        }
    }
}

fn settle(queue: &QueueHandle, consumer: u64, message: u64, outcome: Outcome) {
    let _ = queue.settle(consumer, vec![message], outcome);
}

/// A reqwest error with its causes, on one line ("error sending request: connection refused").
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() { "timed out".to_owned() } else { error.to_string() };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 key and message, split as "<timestamp>.<body>" would be.
        let sig = signature(b"Jefe", 1_700_000_000, b"what do ya want for nothing?");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let expected = ring::hmac::sign(&key, b"1700000000.what do ya want for nothing?");
        let hex: String = expected.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sig, format!("sha256={hex}"));
    }
}
