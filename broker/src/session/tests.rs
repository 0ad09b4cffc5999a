//! Sessions driven with frames in and frames out, without sockets.
//!
//! A [`Client`] is a session on in-memory virtual hosts with its outbox read back: requests go
//! in as frames, and what the client would read comes out as frames, the replies (CONNECTED,
//! RECEIPT, once their verdicts are in) and the deliveries rendered from the outbox and decoded
//! again. Queue actors are tasks of the test's runtime; the tests run with the clock paused, so
//! waiting for "everything that is going to arrive" is a sleep that ends as soon as every task
//! is idle, not a guess at how long they need.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use stampede_protocol::{Command, Decoder, Frame, Item, Limits, Version};

use super::{Flow, Reply, Session, SessionConfig};
use crate::destination::outbox::Outbox;
use crate::destination::queue::{Outcome, QueueSettings, now_ms};
use crate::destination::vhost::VirtualHosts;
use crate::error::{ErrorKind, StompError};

/// A frame with `headers`.
fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    headers
        .iter()
        .fold(Frame::new(command), |frame, (name, value)| frame.with_header(name.to_string(), value.to_string()))
}

/// One client: a session, its outbox, and the frames it has not read yet.
struct Client {
    session: Session,
    outbox: Arc<Outbox>,
    decoder: Decoder,
    /// Replies produced but not yet read (a verdict may still be undecided).
    replies: Vec<Reply>,
}

impl Client {
    /// A session on `vhosts` that has not sent CONNECT.
    fn new(vhosts: &Arc<VirtualHosts>, config: &Arc<SessionConfig>) -> Client {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outbox = Outbox::new(8 * 1024 * 1024);
        let session =
            Session::new(format!("session-{id}").into(), Arc::clone(config), Arc::clone(vhosts), Arc::clone(&outbox));
        Client { session, outbox, decoder: Decoder::new(Limits::default()), replies: Vec::new() }
    }

    /// A session that sent CONNECT (STOMP 1.2, plus `headers`) and read its CONNECTED.
    async fn connected(vhosts: &Arc<VirtualHosts>, config: &Arc<SessionConfig>, headers: &[(&str, &str)]) -> Client {
        let mut client = Client::new(vhosts, config);
        let mut connect = frame(Command::Connect, &[("accept-version", "1.2"), ("host", "/")]);
        for (name, value) in headers {
            connect.headers.push(name.to_string(), value.to_string());
        }
        client.request(connect).await.expect("CONNECT accepted");
        let replies = client.replies().await;
        assert_eq!(replies[0].command, Command::Connected);
        client
    }

    /// Hands one frame to the session.
    async fn request(&mut self, frame: Frame) -> Result<Flow, StompError> {
        let was_connected = self.session.is_connected();
        let flow = self.session.handle(frame, &mut self.replies).await;
        if !was_connected && self.session.is_connected() {
            self.decoder.set_version(self.session.version());
        }
        flow
    }

    /// Hands one frame to the session, which must accept it.
    async fn ok(&mut self, command: Command, headers: &[(&str, &str)]) {
        self.request(frame(command, headers)).await.unwrap_or_else(|e| panic!("{command} refused: {e}"));
    }

    /// Hands one frame to the session, which must refuse it; returns the ERROR frame.
    async fn refused(&mut self, command: Command, headers: &[(&str, &str)]) -> StompError {
        match self.request(frame(command, headers)).await {
            Ok(flow) => panic!("{command} accepted ({flow:?})"),
            Err(error) => error,
        }
    }

    /// The replies so far, each once its verdict is in (a refused SEND panics).
    async fn replies(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        for reply in self.replies.drain(..) {
            match reply {
                Reply::Frame(frame) => frames.push(frame),
                Reply::After { verdict, .. } => {
                    verdict.await.expect("verdict").expect("message accepted");
                }
            }
        }
        frames
    }

    /// Every delivery that arrives once all tasks are idle, rendered and decoded as the client
    /// reads it; `ack:auto` queue deliveries are settled as the connection settles them.
    async fn deliveries(&mut self) -> Vec<Frame> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut taken = VecDeque::new();
        self.outbox.take_all(&mut taken);
        let mut bytes = BytesMut::new();
        for delivery in taken {
            if let Some(ack) = self.session.render(delivery, &mut bytes) {
                let _ = ack.from.queue.settle(ack.from.consumer, vec![ack.message_id], Outcome::Ack);
            }
        }
        let mut frames = Vec::new();
        while let Some(item) = self.decoder.decode(&mut bytes).expect("rendered frames decode") {
            if let Item::Frame(frame) = item {
                frames.push(frame);
            }
        }
        frames
    }

    /// The bodies of the deliveries that arrive now.
    async fn bodies(&mut self) -> Vec<String> {
        self.deliveries().await.iter().map(body).collect()
    }
}

fn body(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.body).into_owned()
}

/// In-memory virtual hosts and the default session settings.
fn broker() -> (Arc<VirtualHosts>, Arc<SessionConfig>) {
    (VirtualHosts::in_memory(QueueSettings::default()), Arc::new(SessionConfig::default()))
}

fn with_config(change: impl FnOnce(&mut SessionConfig)) -> (Arc<VirtualHosts>, Arc<SessionConfig>) {
    let mut config = SessionConfig::default();
    change(&mut config);
    (VirtualHosts::in_memory(QueueSettings::default()), Arc::new(config))
}

async fn publish(client: &mut Client, destination: &str, bodies: &[&str]) {
    for text in bodies {
        let send = frame(Command::Send, &[("destination", destination)]).with_body(text.to_string());
        client.request(send).await.expect("SEND accepted");
    }
    client.replies().await;
}

// Negotiation.

#[tokio::test(start_paused = true)]
async fn connect_negotiates_the_highest_common_version_and_the_heart_beat() {
    let (vhosts, config) = broker();
    let mut client = Client::new(&vhosts, &config);
    let connect = frame(Command::Connect, &[("accept-version", "1.0,1.1,1.2"), ("heart-beat", "5000,2000")]);
    assert_eq!(client.request(connect).await, Ok(Flow::Continue));
    let connected = client.replies().await.remove(0);
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.header("version"), Some("1.2"));
    assert_eq!(connected.header("heart-beat"), Some("1000,1000"));
    assert_eq!(client.session.version(), Version::V1_2);
    // The client sends every 5 s and wants to hear every 2 s; the server can do 1 s both ways.
    let beat = client.session.heart_beat();
    assert_eq!(beat.send_every, Some(Duration::from_secs(2)));
    assert_eq!(beat.expect_every, Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn connect_without_accept_version_is_stomp_1_0_and_stomp_is_accepted_like_connect() {
    let (vhosts, config) = broker();
    let mut client = Client::new(&vhosts, &config);
    client.ok(Command::Stomp, &[]).await;
    assert_eq!(client.replies().await[0].header("version"), Some("1.0"));
    assert_eq!(client.session.version(), Version::V1_0);
}

#[tokio::test(start_paused = true)]
async fn no_common_version_is_an_error_naming_the_supported_ones() {
    let (vhosts, config) = broker();
    let mut client = Client::new(&vhosts, &config);
    let error = client.refused(Command::Connect, &[("accept-version", "2.0"), ("receipt", "r1")]).await;
    assert_eq!(error.message, "no common protocol version");
    let frame = error.to_frame();
    assert_eq!(frame.header("version"), Some("1.0,1.1,1.2"));
    assert_eq!(frame.header("receipt-id"), Some("r1"));
    assert!(!client.session.is_connected());
}

#[tokio::test(start_paused = true)]
async fn frames_before_connect_a_second_connect_and_server_commands_are_errors() {
    let (vhosts, config) = broker();
    let mut client = Client::new(&vhosts, &config);
    let error = client.refused(Command::Send, &[("destination", "/queue/a")]).await;
    assert!(error.message.starts_with("not connected"), "{error}");
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    assert_eq!(client.refused(Command::Connect, &[]).await.message, "already connected");
    assert!(client.refused(Command::Message, &[]).await.message.contains("server command"));
    let error = client.refused(Command::Connect, &[("heart-beat", "soon")]).await;
    assert_eq!(error.message, "already connected");
}

#[tokio::test(start_paused = true)]
async fn a_bad_heart_beat_header_is_an_error_naming_it() {
    let (vhosts, config) = broker();
    let mut client = Client::new(&vhosts, &config);
    let error = client.refused(Command::Connect, &[("accept-version", "1.2"), ("heart-beat", "1000")]).await;
    assert!(error.message.contains("heart-beat"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn every_frame_that_asks_gets_a_receipt_and_disconnect_ends_the_session() {
    let (vhosts, config) = broker();
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s"), ("receipt", "1")]).await;
    client.ok(Command::Begin, &[("transaction", "tx"), ("receipt", "2")]).await;
    client.ok(Command::Abort, &[("transaction", "tx"), ("receipt", "3")]).await;
    let flow = client.request(frame(Command::Disconnect, &[("receipt", "4")])).await;
    assert_eq!(flow, Ok(Flow::Disconnect));
    let receipts: Vec<String> =
        client.replies().await.iter().map(|f| f.header("receipt-id").unwrap_or("").to_owned()).collect();
    assert_eq!(receipts, ["1", "2", "3", "4"]);
}

// Acknowledgement modes.

#[tokio::test(start_paused = true)]
async fn ack_auto_deliveries_carry_no_ack_header_and_are_consumed_once_written() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    consumer.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s1")]).await;
    publish(&mut producer, "/queue/jobs", &["a", "b"]).await;
    let delivered = consumer.deliveries().await;
    assert_eq!(delivered.iter().map(body).collect::<Vec<_>>(), ["a", "b"]);
    assert!(delivered.iter().all(|m| m.header("ack").is_none() && m.header("subscription") == Some("s1")));
    assert_eq!(consumer.session.pending_ack_count(), 0);
    // Consumed: a consumer that subscribes after the first leaves finds nothing.
    consumer.session.close().await;
    let mut second = Client::connected(&vhosts, &config, &[]).await;
    second.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s2")]).await;
    assert!(second.deliveries().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn ack_client_is_cumulative() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    consumer.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s"), ("ack", "client")]).await;
    publish(&mut consumer, "/queue/jobs", &["1", "2", "3"]).await;
    let delivered = consumer.deliveries().await;
    assert_eq!(delivered.len(), 3);
    assert_eq!(consumer.session.pending_ack_count(), 3);
    let second = delivered[1].header("ack").expect("ack header").to_owned();
    consumer.ok(Command::Ack, &[("id", &second)]).await;
    assert_eq!(consumer.session.pending_ack_count(), 1, "the ACK covers the first two");
    // An ACK for a message no longer pending is ignored.
    consumer.ok(Command::Ack, &[("id", &second)]).await;
    assert_eq!(consumer.session.pending_ack_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn ack_client_individual_covers_only_the_message_named_in_each_version_form() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    let subscribe = [("destination", "/queue/jobs"), ("id", "s"), ("ack", "client-individual")];
    consumer.ok(Command::Subscribe, &subscribe).await;
    publish(&mut consumer, "/queue/jobs", &["1", "2", "3"]).await;
    let delivered = consumer.deliveries().await;
    assert_eq!(delivered.len(), 3);
    consumer.ok(Command::Ack, &[("id", delivered[1].header("ack").unwrap())]).await;
    assert_eq!(consumer.session.pending_ack_count(), 2);
    // STOMP 1.1: subscription plus message-id.
    let message_id = delivered[0].header("message-id").unwrap();
    consumer.ok(Command::Ack, &[("subscription", "s"), ("message-id", message_id)]).await;
    assert_eq!(consumer.session.pending_ack_count(), 1);
    // STOMP 1.0: message-id alone.
    consumer.ok(Command::Ack, &[("message-id", delivered[2].header("message-id").unwrap())]).await;
    assert_eq!(consumer.session.pending_ack_count(), 0);
    assert!(consumer.refused(Command::Ack, &[("subscription", "s")]).await.message.contains("names no message"));
}

#[tokio::test(start_paused = true)]
async fn nack_requeues_for_redelivery_and_nack_without_requeue_dead_letters() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    let subscribe = [("destination", "/queue/jobs"), ("id", "s"), ("ack", "client-individual")];
    consumer.ok(Command::Subscribe, &subscribe).await;
    publish(&mut consumer, "/queue/jobs", &["retry", "poison"]).await;
    let delivered = consumer.deliveries().await;
    assert_eq!(delivered.len(), 2);
    assert!(delivered.iter().all(|m| m.header("redelivered").is_none()));
    consumer.ok(Command::Nack, &[("id", delivered[0].header("ack").unwrap())]).await;
    consumer.ok(Command::Nack, &[("id", delivered[1].header("ack").unwrap()), ("requeue", "false")]).await;
    let again = consumer.deliveries().await;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["retry"]);
    assert_eq!(again[0].header("redelivered"), Some("true"));
    // The rejected message went to the dead-letter queue.
    consumer.ok(Command::Subscribe, &[("destination", "/queue/DLQ.jobs"), ("id", "dlq")]).await;
    assert_eq!(consumer.bodies().await, ["poison"]);
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_messages_go_to_the_next_consumer_when_a_session_closes() {
    let (vhosts, config) = broker();
    let mut first = Client::connected(&vhosts, &config, &[]).await;
    first.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s"), ("ack", "client")]).await;
    publish(&mut first, "/queue/jobs", &["job"]).await;
    assert_eq!(first.bodies().await, ["job"]);
    first.session.close().await;
    let mut second = Client::connected(&vhosts, &config, &[]).await;
    second.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s")]).await;
    let delivered = second.deliveries().await;
    assert_eq!(delivered.iter().map(body).collect::<Vec<_>>(), ["job"]);
    assert_eq!(delivered[0].header("redelivered"), Some("true"));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_ack_mode_is_refused() {
    let (vhosts, config) = broker();
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    let error =
        client.refused(Command::Subscribe, &[("destination", "/queue/q"), ("id", "s"), ("ack", "sometimes")]).await;
    assert!(error.message.contains("invalid ack mode"), "{error}");
    assert_eq!(client.session.subscription_count(), 0);
}

// Transactions.

#[tokio::test(start_paused = true)]
async fn a_transaction_delivers_its_sends_at_commit_and_nothing_at_abort() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    consumer.ok(Command::Subscribe, &[("destination", "/topic/news"), ("id", "s")]).await;
    producer.ok(Command::Begin, &[("transaction", "t1")]).await;
    producer
        .request(frame(Command::Send, &[("destination", "/topic/news"), ("transaction", "t1")]).with_body("kept"))
        .await
        .unwrap();
    assert!(consumer.deliveries().await.is_empty(), "nothing before COMMIT");
    producer.ok(Command::Commit, &[("transaction", "t1")]).await;
    producer.replies().await;
    let delivered = consumer.deliveries().await;
    assert_eq!(delivered.iter().map(body).collect::<Vec<_>>(), ["kept"]);
    assert_eq!(delivered[0].header("transaction"), None, "the transaction header is not forwarded");
    producer.ok(Command::Begin, &[("transaction", "t2")]).await;
    producer
        .request(frame(Command::Send, &[("destination", "/topic/news"), ("transaction", "t2")]).with_body("dropped"))
        .await
        .unwrap();
    producer.ok(Command::Abort, &[("transaction", "t2")]).await;
    assert!(consumer.deliveries().await.is_empty());
    let error = producer.refused(Command::Commit, &[("transaction", "t2")]).await;
    assert!(error.message.contains("unknown transaction"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn an_ack_in_a_transaction_is_applied_at_commit() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    consumer.ok(Command::Subscribe, &[("destination", "/queue/q"), ("id", "s"), ("ack", "client")]).await;
    publish(&mut consumer, "/queue/q", &["m"]).await;
    let ack = consumer.deliveries().await[0].header("ack").unwrap().to_owned();
    consumer.ok(Command::Begin, &[("transaction", "t")]).await;
    consumer.ok(Command::Ack, &[("id", &ack), ("transaction", "t")]).await;
    assert_eq!(consumer.session.pending_ack_count(), 1);
    consumer.ok(Command::Commit, &[("transaction", "t")]).await;
    assert_eq!(consumer.session.pending_ack_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn transactions_are_bounded_by_count_frames_and_bytes() {
    let (vhosts, config) = with_config(|c| {
        c.max_transactions = 1;
        c.max_transaction_frames = 2;
        c.max_transaction_bytes = 10;
    });
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Begin, &[("transaction", "a")]).await;
    assert!(
        client
            .refused(Command::Begin, &[("transaction", "b")])
            .await
            .message
            .contains("max_transactions_per_connection")
    );
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Begin, &[("transaction", "a")]).await;
    assert!(client.refused(Command::Begin, &[("transaction", "a")]).await.message.contains("already begun"));
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Begin, &[("transaction", "a")]).await;
    let send = || frame(Command::Send, &[("destination", "/queue/q"), ("transaction", "a")]);
    client.request(send().with_body("12345")).await.unwrap();
    let error = client.request(send().with_body("123456")).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Limit);
    assert!(error.message.contains("max_transaction_bytes"), "{error}");
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Begin, &[("transaction", "a")]).await;
    client.request(send()).await.unwrap();
    client.request(send()).await.unwrap();
    assert!(client.request(send()).await.unwrap_err().message.contains("max_transaction_frames"));
    let error = client.refused(Command::Send, &[("destination", "/queue/q"), ("transaction", "nope")]).await;
    assert!(error.message.contains("unknown transaction"), "{error}");
}

// Temporary queues.

#[tokio::test(start_paused = true)]
async fn a_temp_queue_in_reply_to_is_rewritten_and_the_reply_comes_back_to_its_creator() {
    let (vhosts, config) = broker();
    let mut requester = Client::connected(&vhosts, &config, &[]).await;
    let mut worker = Client::connected(&vhosts, &config, &[]).await;
    worker.ok(Command::Subscribe, &[("destination", "/queue/work"), ("id", "w")]).await;
    let send = frame(Command::Send, &[("destination", "/queue/work"), ("reply-to", "/temp-queue/answers")]);
    requester.request(send.with_body("question")).await.unwrap();
    requester.replies().await;
    let job = worker.deliveries().await.remove(0);
    let reply_to = job.header("reply-to").expect("reply-to").to_owned();
    assert!(reply_to.starts_with("/reply-queue/"), "{reply_to}");
    publish(&mut worker, &reply_to, &["answer"]).await;
    let answers = requester.deliveries().await;
    assert_eq!(answers.iter().map(body).collect::<Vec<_>>(), ["answer"]);
    assert_eq!(answers[0].header("subscription"), Some("/temp-queue/answers"));
    // Holding the name lets the worker reply, never read.
    let error = worker.refused(Command::Subscribe, &[("destination", &reply_to), ("id", "steal")]).await;
    assert_eq!(error.kind, ErrorKind::Authorization);
}

#[tokio::test(start_paused = true)]
async fn temp_queues_per_connection_are_bounded_by_max_subscriptions() {
    let (vhosts, config) = with_config(|c| c.max_subscriptions = 2);
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Subscribe, &[("destination", "/temp-queue/a"), ("id", "a")]).await;
    client.ok(Command::Subscribe, &[("destination", "/temp-queue/b"), ("id", "b")]).await;
    let error = client.refused(Command::Subscribe, &[("destination", "/topic/x"), ("id", "c")]).await;
    assert!(error.message.contains("max_subscriptions_per_connection"), "{error}");
    client.ok(Command::Unsubscribe, &[("id", "b")]).await;
    let error = client.refused(Command::Subscribe, &[("destination", "/temp-queue/c"), ("id", "c")]).await;
    assert!(error.message.contains("temporary queues per connection"), "{error}");
}

// Durable subscriptions, in each dialect.

/// Subscribes with `subscribe`, detaches with `unsubscribe`, publishes while away, and returns
/// what a new connection subscribing the same way receives.
async fn missed_while_away(
    connect: &[(&str, &str)],
    subscribe: &[(&str, &str)],
    unsubscribe: &[(&str, &str)],
) -> Vec<String> {
    let (vhosts, config) = broker();
    let mut subscriber = Client::connected(&vhosts, &config, connect).await;
    subscriber.ok(Command::Subscribe, subscribe).await;
    subscriber.ok(Command::Unsubscribe, unsubscribe).await;
    subscriber.session.close().await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    publish(&mut producer, "/topic/prices", &["while away"]).await;
    let mut back = Client::connected(&vhosts, &config, connect).await;
    back.ok(Command::Subscribe, subscribe).await;
    back.bodies().await
}

#[tokio::test(start_paused = true)]
async fn activemq_durable_subscriptions_are_named_by_client_id_and_subscription_name() {
    let subscribe = [("destination", "/topic/prices"), ("id", "1"), ("activemq.subscriptionName", "ticker")];
    let kept = missed_while_away(&[("client-id", "app")], &subscribe, &[("id", "1")]).await;
    assert_eq!(kept, ["while away"]);
    // Naming it on UNSUBSCRIBE deletes it.
    let delete = [("id", "1"), ("activemq.subscriptionName", "ticker")];
    assert!(missed_while_away(&[("client-id", "app")], &subscribe, &delete).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn artemis_durable_subscriptions_use_durable_subscription_name() {
    let subscribe = [("destination", "/topic/prices"), ("id", "1"), ("durable-subscription-name", "ticker")];
    assert_eq!(missed_while_away(&[("client-id", "app")], &subscribe, &[("id", "1")]).await, ["while away"]);
    let old = [("destination", "/topic/prices"), ("id", "1"), ("durable-subscriber-name", "ticker")];
    assert_eq!(missed_while_away(&[("client-id", "app")], &old, &[("id", "1")]).await, ["while away"]);
}

#[tokio::test(start_paused = true)]
async fn rabbitmq_durable_subscriptions_are_flagged_and_deleted_by_repeating_the_flag() {
    let subscribe = [("destination", "/topic/prices"), ("id", "1"), ("durable", "true"), ("x-queue-name", "mine")];
    assert_eq!(missed_while_away(&[], &subscribe, &[("id", "1")]).await, ["while away"]);
    assert!(missed_while_away(&[], &subscribe, &[("id", "1"), ("durable", "true")]).await.is_empty());
    let auto_delete = [("destination", "/topic/prices"), ("id", "1"), ("durable", "true"), ("auto-delete", "true")];
    assert!(missed_while_away(&[], &auto_delete, &[("id", "1")]).await.is_empty(), "auto-delete is not durable");
}

#[tokio::test(start_paused = true)]
async fn a_durable_subscription_refuses_a_selector_and_control_characters() {
    let (vhosts, config) = broker();
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    let with_selector = [("destination", "/topic/t"), ("id", "1"), ("durable", "true"), ("selector", "price > 10")];
    assert!(client.refused(Command::Subscribe, &with_selector).await.message.contains("selector"));
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    let bad_name = [("destination", "/topic/t"), ("id", "1"), ("durable", "true"), ("x-queue-name", "a\u{1}b")];
    assert!(client.refused(Command::Subscribe, &bad_name).await.message.contains("control characters"));
}

// Limits.

#[tokio::test(start_paused = true)]
async fn subscriptions_per_connection_are_bounded_and_ids_are_unique() {
    let (vhosts, config) = with_config(|c| c.max_subscriptions = 1);
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Subscribe, &[("destination", "/topic/a"), ("id", "s")]).await;
    let error = client.refused(Command::Subscribe, &[("destination", "/topic/b"), ("id", "t")]).await;
    assert_eq!(error.kind, ErrorKind::Limit);
    assert!(error.message.contains("max_subscriptions_per_connection"), "{error}");
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Subscribe, &[("destination", "/topic/a"), ("id", "s")]).await;
    assert!(
        client
            .refused(Command::Subscribe, &[("destination", "/topic/a"), ("id", "s")])
            .await
            .message
            .contains("already in use")
    );
}

#[tokio::test(start_paused = true)]
async fn prefetch_count_limits_unacknowledged_deliveries_and_is_capped_by_max_unacked() {
    let (vhosts, config) = with_config(|c| c.max_unacked_per_consumer = 3);
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    let subscribe = [("destination", "/queue/q"), ("id", "s"), ("ack", "client"), ("prefetch-count", "2")];
    consumer.ok(Command::Subscribe, &subscribe).await;
    publish(&mut consumer, "/queue/q", &["1", "2", "3", "4", "5"]).await;
    let first = consumer.deliveries().await;
    assert_eq!(first.len(), 2);
    consumer.ok(Command::Ack, &[("id", first[1].header("ack").unwrap())]).await;
    assert_eq!(consumer.bodies().await, ["3", "4"]);
    // activemq.prefetchSize of 0 asks for as many as allowed: max_unacked_per_consumer.
    let mut greedy = Client::connected(&vhosts, &config, &[]).await;
    let subscribe = [("destination", "/queue/r"), ("id", "s"), ("ack", "client"), ("activemq.prefetchSize", "0")];
    greedy.ok(Command::Subscribe, &subscribe).await;
    publish(&mut greedy, "/queue/r", &["1", "2", "3", "4", "5"]).await;
    assert_eq!(greedy.deliveries().await.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_window_of_zero_delivers_one_message_at_a_time() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    let subscribe = [("destination", "/queue/q"), ("id", "s"), ("ack", "client"), ("consumer-window-size", "0")];
    consumer.ok(Command::Subscribe, &subscribe).await;
    publish(&mut consumer, "/queue/q", &["1", "2"]).await;
    let first = consumer.deliveries().await;
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["1"]);
    consumer.ok(Command::Ack, &[("id", first[0].header("ack").unwrap())]).await;
    assert_eq!(consumer.bodies().await, ["2"]);
}

#[tokio::test(start_paused = true)]
async fn bad_numbers_in_headers_are_errors_naming_the_header() {
    let (vhosts, config) = broker();
    for (header, value) in [("prefetch-count", "many"), ("consumer-window-size", "big"), ("x-message-ttl", "-5")] {
        let mut client = Client::connected(&vhosts, &config, &[]).await;
        let error =
            client.refused(Command::Subscribe, &[("destination", "/queue/q"), ("id", "s"), (header, value)]).await;
        assert!(error.message.contains(header), "{header}: {error}");
    }
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    let error = client.refused(Command::Send, &[("destination", "/queue/q"), ("expiration", "later")]).await;
    assert!(error.message.contains("expiration"), "{error}");
    // A plain topic subscription takes no credit: its prefetch headers are not read.
    client.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s"), ("prefetch-count", "many")]).await;
}

// Expiry.

#[tokio::test(start_paused = true)]
async fn a_message_already_expired_is_never_delivered_and_a_huge_ttl_never_expires() {
    let (vhosts, config) = broker();
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    let subscribe = [("destination", "/queue/q"), ("id", "s"), ("x-message-ttl", "18446744073709551615")];
    consumer.ok(Command::Subscribe, &subscribe).await;
    let past = (now_ms() - 1000).to_string();
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    producer
        .request(frame(Command::Send, &[("destination", "/queue/q"), ("expires", &past)]).with_body("stale"))
        .await
        .unwrap();
    producer
        .request(
            frame(Command::Send, &[("destination", "/queue/q"), ("expiration", "18446744073709551615")])
                .with_body("fresh"),
        )
        .await
        .unwrap();
    producer.replies().await;
    assert_eq!(consumer.bodies().await, ["fresh"]);
}

// Browsers.

#[tokio::test(start_paused = true)]
async fn a_browser_sees_waiting_messages_then_ends_without_consuming_them() {
    let (vhosts, config) = broker();
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    publish(&mut client, "/queue/q", &["1", "2"]).await;
    client.ok(Command::Subscribe, &[("destination", "/queue/q"), ("id", "b"), ("browser", "true")]).await;
    let seen = client.deliveries().await;
    assert_eq!(seen.iter().map(body).collect::<Vec<_>>(), ["1", "2", ""]);
    assert_eq!(seen[2].header("browser"), Some("end"));
    assert_eq!(client.session.subscription_count(), 0, "the browser ended");
    client.ok(Command::Unsubscribe, &[("id", "b")]).await;
    client.ok(Command::Subscribe, &[("destination", "/queue/q"), ("id", "c")]).await;
    assert_eq!(client.bodies().await, ["1", "2"]);
    assert!(
        client
            .refused(Command::Subscribe, &[("destination", "/topic/t"), ("id", "d"), ("browser", "true")])
            .await
            .message
            .contains("browser")
    );
}

// Producer flow control.

/// A producer publishing `count` transient messages as fast as it can to a queue of at most
/// 1,000 messages, and a consumer that takes ten at a time, once a millisecond: returns the
/// largest backlog seen, how many SENDs were refused, and how many messages were delivered.
async fn fast_producer_slow_consumer(flow_backlog: usize, count: usize) -> (usize, usize, usize) {
    let settings = QueueSettings { max_length: 1000, flow_backlog, ..QueueSettings::default() };
    let vhosts = VirtualHosts::in_memory(settings);
    let config = Arc::new(SessionConfig::default());
    let mut consumer = Client::connected(&vhosts, &config, &[]).await;
    consumer.ok(Command::Subscribe, &[("destination", "/queue/work"), ("id", "s"), ("prefetch-count", "10")]).await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    let publishing = tokio::spawn(async move {
        let mut refused = 0;
        for n in 0..count {
            let send = frame(Command::Send, &[("destination", "/queue/work")]).with_body(n.to_string());
            producer.request(send).await.expect("SEND accepted");
            // Verdicts are read as the connection reads them: without waiting for each.
            for reply in producer.replies.drain(..) {
                if let Reply::After { verdict, .. } = reply
                    && !matches!(verdict.await, Ok(Ok(())))
                {
                    refused += 1;
                }
            }
        }
        refused
    });
    let queue = vhosts.default_router().queue("work").expect("the queue exists");
    let (mut delivered, mut deepest) = (0, 0);
    while delivered < count {
        tokio::time::sleep(Duration::from_millis(1)).await;
        deepest = deepest.max(queue.depth());
        let mut taken = VecDeque::new();
        consumer.outbox.take_all(&mut taken);
        let mut bytes = BytesMut::new();
        for delivery in taken {
            if let Some(ack) = consumer.session.render(delivery, &mut bytes) {
                let _ = ack.from.queue.settle(ack.from.consumer, vec![ack.message_id], Outcome::Ack);
                delivered += 1;
            }
        }
        if publishing.is_finished() && queue.depth() == 0 && consumer.outbox.queued_bytes() == 0 {
            break;
        }
    }
    (deepest, publishing.await.unwrap(), delivered)
}

#[tokio::test(start_paused = true)]
async fn a_fast_producer_is_slowed_so_a_slow_consumer_gets_everything_and_nothing_is_refused() {
    let (deepest, refused, delivered) = fast_producer_slow_consumer(8192, 5000).await;
    assert_eq!(refused, 0);
    assert_eq!(delivered, 5000);
    // The gate closes at half of queue_max_length.
    assert!(deepest < 1000, "the backlog reached {deepest}");
}

#[tokio::test(start_paused = true)]
async fn without_flow_control_the_same_producer_fills_the_queue_and_is_refused() {
    let (deepest, refused, _) = fast_producer_slow_consumer(0, 5000).await;
    assert!(refused > 0 && deepest >= 1000, "deepest {deepest}, refused {refused}");
}

// Session resumption: frames in and frames out, in their own file.
#[path = "resume_tests.rs"]
mod resume;
