//! Security of names (issue #10, items 1, 2, 6, 8 and 9): durable subscriptions belong to the
//! user and virtual host that created them, virtual hosts are separate namespaces, temporary
//! and reply queues are consumed only by the connection that made them and carry unguessable
//! names, open transactions are bounded per connection, and no user can use up the names of
//! all others.
//!
//! Every test speaks raw frames, so what is checked is exactly what a client sees.

use std::time::Duration;

use serde_json::json;
use stampede_broker::Config;
use stampede_broker::config::{JwtConfig, RuleConfig, UserConfig};
use stampede_broker::security::auth::hash_password_with;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_storage::{Op, QueueKind, QueueRecord, SledStore, Store, StoreOptions, StoredMessage};
use stampede_tests::{QUIET, TestBroker, WAIT};

const SECRET: &str = "hs256-test-secret-that-is-long-enough-0123456789";

fn user(password: &str, read: &[&str], write: &[&str]) -> UserConfig {
    UserConfig {
        password_hash: hash_password_with(password, 64, 1).expect("hash"),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        vhosts: Default::default(),
        admin: false,
    }
}

/// alice may do everything; mallory may read and write `/topic/public.*` and `/queue/m-*` only;
/// worker may read `/queue/jobs` and write nothing.
fn config() -> Config {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 1;
    config.users.insert("alice".into(), user("a", &["**"], &["**"]));
    config
        .users
        .insert("mallory".into(), user("m", &["/topic/public.*", "/queue/m-*"], &["/topic/public.*", "/queue/m-*"]));
    config.users.insert("worker".into(), user("w", &["/queue/jobs"], &[]));
    config
}

fn password(login: &str) -> &'static str {
    match login {
        "alice" => "a",
        "mallory" => "m",
        "worker" => "w",
        _ => "?",
    }
}

/// A raw connection that keeps the bodies of MESSAGEs that arrive while it waits for a RECEIPT.
struct Peer {
    raw: RawConnection,
    early: Vec<String>,
}

impl From<RawConnection> for Peer {
    fn from(raw: RawConnection) -> Peer {
        Peer { raw, early: Vec::new() }
    }
}

async fn login(broker: &TestBroker, login: &str, extra: &[(&str, &str)]) -> Peer {
    let mut raw = broker.raw().await;
    let mut headers = vec![("login", login), ("passcode", password(login))];
    headers.extend_from_slice(extra);
    raw.handshake(&headers, WAIT).await.unwrap_or_else(|e| panic!("{login} connects: {e}"));
    raw.into()
}

/// A connection that sent CONNECT with `headers` and was answered with CONNECTED.
async fn connected(broker: &TestBroker, headers: &[(&str, &str)]) -> (Peer, Frame) {
    let mut raw = broker.raw().await;
    let frame = raw.handshake(headers, WAIT).await.expect("connects");
    (raw.into(), frame)
}

/// Sends `frame` with a receipt; the RECEIPT, or the ERROR's message.
async fn with_receipt(peer: &mut Peer, frame: Frame) -> Result<(), String> {
    peer.raw.send_frame(&frame.with_header("receipt", "r")).await.unwrap();
    loop {
        let Some(answer) = peer.raw.read_frame(WAIT).await.map_err(|e| e.to_string())? else {
            return Err("no answer".into());
        };
        match answer.command {
            Command::Receipt => return Ok(()),
            Command::Error => return Err(answer.header("message").unwrap_or("").to_owned()),
            Command::Message => peer.early.push(String::from_utf8_lossy(&answer.body).into_owned()),
            _ => continue,
        }
    }
}

fn send(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send).with_header("destination", destination).with_body(body.to_owned())
}

fn subscribe(destination: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", id)
}

/// The bodies of the MESSAGEs that arrived so far or arrive within [`QUIET`].
async fn bodies(peer: &mut Peer) -> Vec<String> {
    let mut bodies = std::mem::take(&mut peer.early);
    while let Ok(Some(frame)) = peer.raw.read_frame(QUIET).await {
        if frame.command == Command::Message {
            bodies.push(String::from_utf8_lossy(&frame.body).into_owned());
        }
    }
    bodies
}

/// The three ways clients name a durable subscription: the SUBSCRIBE headers, and the CONNECT
/// headers they need.
#[derive(Debug, Clone, Copy)]
enum Dialect {
    RabbitMq,
    ActiveMq,
    Artemis,
}

const DIALECTS: [Dialect; 3] = [Dialect::RabbitMq, Dialect::ActiveMq, Dialect::Artemis];

impl Dialect {
    fn connect_headers(self, client_id: &str) -> Vec<(&'static str, String)> {
        match self {
            Dialect::RabbitMq => Vec::new(),
            Dialect::ActiveMq | Dialect::Artemis => vec![("client-id", client_id.to_owned())],
        }
    }

    fn subscribe(self, destination: &str, name: &str) -> Frame {
        self.subscribe_as(destination, name, "durable-1")
    }

    fn subscribe_as(self, destination: &str, name: &str, id: &str) -> Frame {
        let frame = subscribe(destination, id).with_header("ack", "client-individual");
        match self {
            Dialect::RabbitMq => frame.with_header("durable", "true").with_header("x-queue-name", name),
            Dialect::ActiveMq => frame.with_header("activemq.subscriptionName", name),
            Dialect::Artemis => frame.with_header("durable-subscription-name", name),
        }
    }

    fn delete(self, name: &str) -> Frame {
        let frame = Frame::new(Command::Unsubscribe).with_header("id", "durable-1");
        match self {
            Dialect::RabbitMq => frame.with_header("durable", "true"),
            Dialect::ActiveMq => frame.with_header("activemq.subscriptionName", name),
            Dialect::Artemis => frame.with_header("durable-subscription-name", name),
        }
    }
}

async fn login_as(broker: &TestBroker, who: &str, dialect: Dialect, client_id: &str) -> Peer {
    let headers = dialect.connect_headers(client_id);
    let extra: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    login(broker, who, &extra).await
}

/// alice creates durable subscription `name` on `/topic/secret.prices`, leaves, and two
/// messages are published to it while she is away.
async fn alice_leaves_a_backlog(broker: &TestBroker, dialect: Dialect, name: &str) {
    let mut alice = login_as(broker, "alice", dialect, "shared-id").await;
    with_receipt(&mut alice, dialect.subscribe("/topic/secret.prices", name)).await.expect("alice subscribes");
    alice.raw.send_frame(&Frame::new(Command::Disconnect)).await.unwrap();
    drop(alice);
    let mut publisher = login(broker, "alice", &[]).await;
    for body in ["one", "two"] {
        with_receipt(&mut publisher, send("/topic/secret.prices", body).with_header("persistent", "true"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn durable_subscription_of_another_user_is_access_denied_and_keeps_its_backlog() {
    for dialect in DIALECTS {
        let broker = TestBroker::start_with(config()).await;
        let name = "prices";
        alice_leaves_a_backlog(&broker, dialect, name).await;

        // mallory may read /topic/public.news, and reuses alice's subscription name (and, for
        // ActiveMQ and Artemis, her client id).
        let mut mallory = login_as(&broker, "mallory", dialect, "shared-id").await;
        let refused = with_receipt(&mut mallory, dialect.subscribe("/topic/public.news", name)).await;
        let error = refused.expect_err("mallory must not attach to alice's subscription");
        assert!(error.contains("access denied"), "{dialect:?}: {error}");
        drop(mallory);

        let mut alice = login_as(&broker, "alice", dialect, "shared-id").await;
        with_receipt(&mut alice, dialect.subscribe("/topic/secret.prices", name)).await.unwrap();
        assert_eq!(bodies(&mut alice).await, ["one", "two"], "{dialect:?}: alice's backlog must be intact");
    }
}

#[tokio::test]
async fn only_the_owner_may_delete_a_durable_subscription() {
    for dialect in DIALECTS {
        let broker = TestBroker::start_with(config()).await;
        let name = "prices";
        alice_leaves_a_backlog(&broker, dialect, name).await;

        let mut mallory = login_as(&broker, "mallory", dialect, "shared-id").await;
        // Subscribed to something she may read under the same name, then asking to delete: the
        // ActiveMQ/Artemis dialects delete by name without being subscribed.
        let refused = with_receipt(&mut mallory, dialect.delete(name)).await;
        if !matches!(dialect, Dialect::RabbitMq) {
            let error = refused.expect_err("mallory must not delete alice's subscription");
            assert!(error.contains("access denied"), "{dialect:?}: {error}");
        }
        drop(mallory);
        assert_eq!(broker.broker.router().durable_subscription_count(), 1, "{dialect:?}: deleted by another user");

        let mut alice = login_as(&broker, "alice", dialect, "shared-id").await;
        with_receipt(&mut alice, dialect.subscribe("/topic/secret.prices", name)).await.unwrap();
        assert_eq!(bodies(&mut alice).await, ["one", "two"], "{dialect:?}");
        with_receipt(&mut alice, dialect.delete(name)).await.expect("the owner deletes it");
        assert_eq!(broker.broker.router().durable_subscription_count(), 0, "{dialect:?}");
    }
}

#[tokio::test]
async fn durable_subscription_attach_needs_read_permission_on_its_bound_topic() {
    // An ownerless subscription (stored before owners were kept) bound to /topic/secret.prices:
    // a user who may not read that topic cannot take it over by naming it on a SUBSCRIBE to a
    // topic she may read.
    let dir = tempfile::tempdir().unwrap();
    store_legacy_durable_subscription(dir.path(), "prices", "secret.prices", &["one"]);
    let broker = TestBroker::restart_on(dir, config()).await;
    let mut mallory = login(&broker, "mallory", &[]).await;
    let refused = with_receipt(&mut mallory, Dialect::RabbitMq.subscribe("/topic/public.news", "prices")).await;
    assert!(refused.expect_err("refused").contains("access denied"));
    let mut mallory = login(&broker, "mallory", &[]).await;
    let refused = with_receipt(&mut mallory, Dialect::RabbitMq.subscribe("/topic/secret.prices", "prices")).await;
    assert!(refused.expect_err("refused").contains("access denied"), "mallory may not read the bound topic");
    drop(mallory);
    let mut alice = login(&broker, "alice", &[]).await;
    with_receipt(&mut alice, Dialect::RabbitMq.subscribe("/topic/secret.prices", "prices")).await.unwrap();
    assert_eq!(bodies(&mut alice).await, ["one"], "the backlog is still there for a reader of its topic");
}

#[tokio::test]
async fn a_durable_subscription_stored_before_owners_were_kept_is_claimed_only_by_a_reader_of_its_topic() {
    let dir = tempfile::tempdir().unwrap();
    store_legacy_durable_subscription(dir.path(), "prices", "secret.prices", &["one"]);
    let broker = TestBroker::restart_on(dir, config()).await;
    let mut alice = login(&broker, "alice", &[]).await;
    with_receipt(&mut alice, Dialect::RabbitMq.subscribe("/topic/secret.prices", "prices")).await.unwrap();
    assert_eq!(bodies(&mut alice).await, ["one"]);
    alice.raw.send_frame(&Frame::new(Command::Disconnect)).await.unwrap();
    drop(alice);
    // Claimed: from now on it is alice's, also across a restart.
    let broker = broker.restart(config()).await;
    let mut mallory = login(&broker, "mallory", &[]).await;
    let refused = with_receipt(&mut mallory, Dialect::RabbitMq.subscribe("/topic/public.news", "prices")).await;
    assert!(refused.expect_err("refused").contains("access denied"));
}

#[tokio::test]
async fn rebinding_a_durable_subscription_to_another_topic_discards_its_backlog() {
    for dialect in DIALECTS {
        let broker = TestBroker::start_with(config()).await;
        alice_leaves_a_backlog(&broker, dialect, "prices").await;
        let mut alice = login_as(&broker, "alice", dialect, "shared-id").await;
        with_receipt(&mut alice, dialect.subscribe("/topic/other", "prices")).await.unwrap();
        assert!(bodies(&mut alice).await.is_empty(), "{dialect:?}: the old topic's backlog must be gone");
        let mut publisher = login(&broker, "alice", &[]).await;
        with_receipt(&mut publisher, send("/topic/secret.prices", "old topic")).await.unwrap();
        with_receipt(&mut publisher, send("/topic/other", "new topic")).await.unwrap();
        assert_eq!(bodies(&mut alice).await, ["new topic"], "{dialect:?}: bound to the new topic only");
    }
}

#[tokio::test]
async fn a_second_connection_with_a_client_id_in_use_is_refused() {
    let broker = TestBroker::start_with(config()).await;
    let first = login(&broker, "alice", &[("client-id", "app-1")]).await;
    let mut second = broker.raw().await;
    let refused = second.handshake(&[("login", "mallory"), ("passcode", "m"), ("client-id", "app-1")], WAIT).await;
    let error = refused.expect_err("refused").to_string();
    assert!(error.contains("client-id") && error.contains("in use"), "{error}");
    second.expect_closed(WAIT).await.expect("closed after the ERROR");
    // Once the first connection is gone, the id is free again.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut again = broker.raw().await;
        if again.handshake(&[("login", "alice"), ("passcode", "a"), ("client-id", "app-1")], WAIT).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "client-id never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another virtual host has its own client ids.
    let mut config = config();
    config.vhosts = vec!["dev".into()];
    let broker = TestBroker::start_with(config).await;
    let _prod = login(&broker, "alice", &[("client-id", "app-1")]).await;
    let _dev = login(&broker, "alice", &[("client-id", "app-1"), ("host", "dev")]).await;
}

#[tokio::test]
async fn a_client_id_is_free_again_as_soon_as_its_disconnect_is_receipted() {
    let broker = TestBroker::start_with(config()).await;
    for round in 0..20 {
        let mut peer = login(&broker, "alice", &[("client-id", "app-1")]).await;
        with_receipt(&mut peer, Frame::new(Command::Disconnect))
            .await
            .unwrap_or_else(|e| panic!("round {round}: DISCONNECT receipted: {e}"));
        // No wait: the next CONNECT follows the RECEIPT at once, as a reconnecting client does.
    }
}

#[tokio::test]
async fn durable_subscriptions_and_queues_keep_owner_and_vhost_across_restart() {
    let mut config = config();
    config.vhosts = vec!["dev".into()];
    let broker = TestBroker::start_durable(config.clone()).await;
    let mut alice = login(&broker, "alice", &[("host", "dev")]).await;
    with_receipt(&mut alice, Dialect::RabbitMq.subscribe("/topic/secret.prices", "prices")).await.unwrap();
    alice.raw.send_frame(&Frame::new(Command::Disconnect)).await.unwrap();
    drop(alice);
    let mut publisher = login(&broker, "alice", &[("host", "dev")]).await;
    with_receipt(&mut publisher, send("/topic/secret.prices", "kept").with_header("persistent", "true")).await.unwrap();
    with_receipt(&mut publisher, send("/queue/orders", "dev order").with_header("persistent", "true")).await.unwrap();
    drop(publisher);
    let broker = broker.restart(config).await;
    // The default virtual host has neither.
    let mut prod = login(&broker, "alice", &[]).await;
    with_receipt(&mut prod, subscribe("/queue/orders", "q")).await.unwrap();
    assert!(bodies(&mut prod).await.is_empty(), "dev's queue leaked into / after the restart");
    drop(prod);
    // mallory cannot take alice's subscription on dev.
    let mut mallory = login(&broker, "mallory", &[("host", "dev")]).await;
    let refused = with_receipt(&mut mallory, Dialect::RabbitMq.subscribe("/topic/public.news", "prices")).await;
    assert!(refused.expect_err("refused").contains("access denied"));
    drop(mallory);
    let mut alice = login(&broker, "alice", &[("host", "dev")]).await;
    with_receipt(&mut alice, Dialect::RabbitMq.subscribe("/topic/secret.prices", "prices")).await.unwrap();
    with_receipt(&mut alice, subscribe("/queue/orders", "q")).await.unwrap();
    let mut got = bodies(&mut alice).await;
    got.sort();
    assert_eq!(got, ["dev order", "kept"]);
}

// ------------------------------------------------------------------------------------------
// Virtual hosts

#[tokio::test]
async fn virtual_hosts_are_separate_namespaces_for_queues_and_topics() {
    let mut config = config();
    config.vhosts = vec!["prod".into(), "dev".into()];
    let broker = TestBroker::start_with(config).await;
    let mut prod = login(&broker, "alice", &[("host", "prod")]).await;
    with_receipt(&mut prod, subscribe("/queue/payments", "q")).await.unwrap();
    with_receipt(&mut prod, subscribe("/topic/events", "t")).await.unwrap();
    with_receipt(&mut prod, subscribe("/queue/DLQ.payments", "dlq")).await.unwrap();

    let mut dev = login(&broker, "alice", &[("host", "dev")]).await;
    with_receipt(&mut dev, send("/queue/payments", "dev payment")).await.unwrap();
    with_receipt(&mut dev, send("/topic/events", "dev event")).await.unwrap();
    let mut default = login(&broker, "alice", &[]).await;
    with_receipt(&mut default, send("/queue/payments", "default payment")).await.unwrap();
    // A host that is not declared means the default virtual host, as clients send host names.
    let mut by_hostname = login(&broker, "alice", &[("host", "localhost")]).await;
    with_receipt(&mut by_hostname, send("/topic/events", "default event")).await.unwrap();
    assert!(bodies(&mut prod).await.is_empty(), "prod received another virtual host's messages");

    with_receipt(&mut default, subscribe("/queue/payments", "q")).await.unwrap();
    assert_eq!(bodies(&mut default).await, ["default payment"]);
    with_receipt(&mut dev, subscribe("/queue/payments", "q")).await.unwrap();
    assert_eq!(bodies(&mut dev).await, ["dev payment"]);
}

#[tokio::test]
async fn a_user_refused_a_queue_on_one_vhost_cannot_reach_it_through_another() {
    let mut config = config();
    let mut bob = user("b", &[], &[]);
    bob.vhosts.insert("prod".into(), RuleConfig { read: vec![], write: vec!["/queue/public".into()] });
    bob.vhosts.insert("dev".into(), RuleConfig { read: vec!["**".into()], write: vec!["**".into()] });
    config.users.insert("bob".into(), bob);
    let broker = TestBroker::start_with(config).await;
    let mut consumer = login(&broker, "alice", &[("host", "prod")]).await;
    with_receipt(&mut consumer, subscribe("/queue/payments", "q")).await.unwrap();

    let (mut bob_prod, _) = connected(&broker, &[("login", "bob"), ("passcode", "b"), ("host", "prod")]).await;
    let refused = with_receipt(&mut bob_prod, send("/queue/payments", "forged")).await;
    assert!(refused.expect_err("refused on prod").contains("access denied"));
    let (mut bob_dev, _) = connected(&broker, &[("login", "bob"), ("passcode", "b"), ("host", "dev")]).await;
    with_receipt(&mut bob_dev, send("/queue/payments", "forged")).await.expect("allowed on dev");
    assert!(bodies(&mut consumer).await.is_empty(), "a dev SEND reached a prod consumer");
}

#[tokio::test]
async fn a_token_limited_to_one_vhost_cannot_write_into_another() {
    let mut config = config();
    config.jwt = Some(JwtConfig { hs256_secret: Some(SECRET.to_owned()), ..JwtConfig::default() });
    config.vhosts = vec!["prod".into()];
    let broker = TestBroker::start_with(config).await;
    let mut consumer = login(&broker, "alice", &[("host", "prod")]).await;
    with_receipt(&mut consumer, subscribe("/queue/payments", "q")).await.unwrap();

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims =
        json!({"sub": "svc", "exp": now + 600, "stampede": {"read": ["**"], "write": ["**"], "vhosts": ["dev"]}});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let mut on_prod = broker.raw().await;
    let refused = on_prod.handshake(&[("passcode", &token), ("host", "prod")], WAIT).await;
    assert!(refused.expect_err("refused").to_string().contains("virtual host"));
    let (mut on_dev, _) = connected(&broker, &[("passcode", &token), ("host", "dev")]).await;
    with_receipt(&mut on_dev, send("/queue/payments", "from dev")).await.unwrap();
    assert!(bodies(&mut consumer).await.is_empty(), "the dev token's SEND reached prod");
}

// ------------------------------------------------------------------------------------------
// Temporary and reply queues

/// A requester's SEND with `reply-to: /temp-queue/answers`, as the worker receives it.
async fn request_reply_to(requester: &mut Peer, worker: &mut Peer) -> String {
    with_receipt(worker, subscribe("/queue/jobs", "jobs")).await.unwrap();
    with_receipt(requester, send("/queue/jobs", "job").with_header("reply-to", "/temp-queue/answers")).await.unwrap();
    let job = loop {
        let frame = worker.raw.read_frame(WAIT).await.unwrap().expect("the job");
        if frame.command == Command::Message {
            break frame;
        }
    };
    job.header("reply-to").expect("reply-to").to_owned()
}

#[tokio::test]
async fn reply_queues_can_only_be_consumed_by_the_connection_that_created_them() {
    let broker = TestBroker::start_with(config()).await;
    let mut requester = login(&broker, "alice", &[]).await;
    let mut worker = login(&broker, "worker", &[]).await;
    let reply_to = request_reply_to(&mut requester, &mut worker).await;
    assert!(reply_to.starts_with("/reply-queue/"), "{reply_to}");

    // alice may read everything, and still may not consume another connection's reply queue.
    let mut thief = login(&broker, "alice", &[]).await;
    let refused = with_receipt(&mut thief, subscribe(&reply_to, "steal")).await;
    assert!(refused.expect_err("refused").contains("access denied"));
    let as_amq = reply_to.replacen("/reply-queue/", "/amq/queue/", 1);
    let mut thief = login(&broker, "alice", &[]).await;
    assert!(with_receipt(&mut thief, subscribe(&as_amq, "steal")).await.is_err(), "reachable through /amq/queue/");
    let mut thief = login(&broker, "alice", &[]).await;
    let as_queue = reply_to.replacen("/reply-queue/", "/queue/", 1);
    with_receipt(&mut thief, subscribe(&as_queue, "steal")).await.unwrap();

    with_receipt(&mut worker, send(&reply_to, "the answer")).await.unwrap();
    assert!(bodies(&mut thief).await.is_empty(), "a /queue/ of the same name took the reply");
    assert_eq!(bodies(&mut requester).await, ["the answer"]);
}

#[tokio::test]
async fn a_worker_without_write_rules_may_reply_to_a_reply_queue_it_was_given() {
    let broker = TestBroker::start_with(config()).await;
    let mut requester = login(&broker, "alice", &[]).await;
    let mut worker = login(&broker, "worker", &[]).await;
    let reply_to = request_reply_to(&mut requester, &mut worker).await;
    with_receipt(&mut worker, send(&reply_to, "done")).await.expect("a reply needs no write rule");
    assert_eq!(bodies(&mut requester).await, ["done"]);
    // The capability is the reply queue, nothing else.
    let refused = with_receipt(&mut worker, send("/queue/jobs", "more")).await;
    assert!(refused.expect_err("refused").contains("access denied"));
}

#[tokio::test]
async fn session_ids_and_reply_queue_names_carry_128_random_bits() {
    let broker = TestBroker::start().await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut raw = broker.raw().await;
        let connected = raw.handshake(&[], WAIT).await.unwrap();
        sessions.push(connected.header("session").unwrap().to_owned());
    }
    for session in &sessions {
        let hex = session.strip_prefix("session-").expect("session- prefix");
        assert_eq!(hex.len(), 32, "{session}");
        assert!(u128::from_str_radix(hex, 16).is_ok(), "{session}");
    }
    // Nothing in common beyond chance: no shared prefix, no counter.
    let common = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    assert!(common(&sessions[0], &sessions[1]) < "session-".len() + 8, "{sessions:?}");
    assert!(common(&sessions[1], &sessions[2]) < "session-".len() + 8, "{sessions:?}");

    let (mut requester, connected_frame) = connected(&broker, &[]).await;
    let (mut worker, _) = connected(&broker, &[]).await;
    let reply_to = request_reply_to(&mut requester, &mut worker).await;
    assert!(reply_to.contains(connected_frame.header("session").unwrap()), "{reply_to}");
}

#[tokio::test]
async fn temporary_queues_do_not_count_toward_max_queues() {
    let mut config = Config::ephemeral();
    config.max_queues = 2;
    let broker = TestBroker::start_with(config).await;
    let (mut raw, _) = connected(&broker, &[]).await;
    with_receipt(&mut raw, subscribe("/queue/a", "a")).await.unwrap();
    with_receipt(&mut raw, subscribe("/queue/b", "b")).await.unwrap();
    for i in 0..5 {
        with_receipt(&mut raw, subscribe(&format!("/temp-queue/t{i}"), &format!("t{i}"))).await.unwrap();
    }
    let refused = with_receipt(&mut raw, subscribe("/queue/c", "c")).await;
    assert!(refused.expect_err("refused").contains("max_queues"));
}

#[tokio::test]
async fn temporary_queues_per_connection_are_bounded_by_max_subscriptions_per_connection() {
    let mut config = Config::ephemeral();
    config.max_subscriptions_per_connection = 3;
    let broker = TestBroker::start_with(config).await;
    let (mut raw, _) = connected(&broker, &[]).await;
    for i in 0..3 {
        with_receipt(&mut raw, send("/queue/jobs", "x").with_header("reply-to", format!("/temp-queue/r{i}")))
            .await
            .unwrap();
    }
    let refused = with_receipt(&mut raw, send("/queue/jobs", "x").with_header("reply-to", "/temp-queue/r3")).await;
    assert!(refused.expect_err("refused").contains("max_subscriptions_per_connection"));
}

// ------------------------------------------------------------------------------------------
// Transactions and quotas

#[tokio::test]
async fn open_transactions_per_connection_are_bounded_by_max_transactions_per_connection() {
    let mut config = Config::ephemeral();
    config.max_transactions_per_connection = 4;
    let broker = TestBroker::start_with(config).await;
    let (mut raw, _) = connected(&broker, &[]).await;
    for i in 0..4 {
        with_receipt(&mut raw, Frame::new(Command::Begin).with_header("transaction", format!("tx{i}"))).await.unwrap();
    }
    let refused = with_receipt(&mut raw, Frame::new(Command::Begin).with_header("transaction", "tx4")).await;
    assert!(refused.expect_err("refused").contains("max_transactions_per_connection"));
}

#[tokio::test]
async fn bytes_of_all_open_transactions_are_bounded_by_max_transaction_bytes_per_connection() {
    let mut config = Config::ephemeral();
    config.max_transaction_bytes_per_connection = 10_000;
    let broker = TestBroker::start_with(config).await;
    let (mut raw, _) = connected(&broker, &[]).await;
    let body = "x".repeat(3_000);
    for i in 0..3 {
        let tx = format!("tx{i}");
        with_receipt(&mut raw, Frame::new(Command::Begin).with_header("transaction", tx.clone())).await.unwrap();
        with_receipt(&mut raw, send("/queue/q", &body).with_header("transaction", tx.clone())).await.unwrap();
    }
    // Committing one frees its share.
    with_receipt(&mut raw, Frame::new(Command::Commit).with_header("transaction", "tx0")).await.unwrap();
    with_receipt(&mut raw, Frame::new(Command::Begin).with_header("transaction", "tx3")).await.unwrap();
    with_receipt(&mut raw, send("/queue/q", &body).with_header("transaction", "tx3")).await.unwrap();
    let refused = with_receipt(&mut raw, send("/queue/q", &body).with_header("transaction", "tx1")).await;
    assert!(refused.expect_err("refused").contains("max_transaction_bytes_per_connection"));
}

#[tokio::test]
async fn per_user_queue_quota_is_an_error_naming_it_and_does_not_affect_other_users() {
    let mut config = config();
    config.max_queues_per_user = 3;
    let broker = TestBroker::start_durable(config.clone()).await;
    let mut mallory = login(&broker, "mallory", &[]).await;
    for i in 0..3 {
        with_receipt(&mut mallory, subscribe(&format!("/queue/m-{i}"), &format!("s{i}"))).await.unwrap();
        with_receipt(&mut mallory, Frame::new(Command::Unsubscribe).with_header("id", format!("s{i}"))).await.unwrap();
    }
    let refused = with_receipt(&mut mallory, send("/queue/m-new", "x")).await;
    assert!(refused.expect_err("refused").contains("max_queues_per_user"));
    // Existing queues still work for her, and others create theirs.
    let mut mallory = login(&broker, "mallory", &[]).await;
    with_receipt(&mut mallory, send("/queue/m-0", "x")).await.unwrap();
    let mut alice = login(&broker, "alice", &[]).await;
    with_receipt(&mut alice, send("/queue/alices", "x")).await.unwrap();
    drop((mallory, alice));
    // The count survives a restart: the creator is stored with the queue.
    let broker = broker.restart(config).await;
    let mut mallory = login(&broker, "mallory", &[]).await;
    let refused = with_receipt(&mut mallory, send("/queue/m-newer", "x")).await;
    assert!(refused.expect_err("refused after restart").contains("max_queues_per_user"));
}

#[tokio::test]
async fn per_user_durable_subscription_quota_is_an_error_naming_it_and_max_durable_subscriptions_bounds_all() {
    let mut config = config();
    config.max_durable_subscriptions_per_user = 2;
    config.max_durable_subscriptions = 3;
    let broker = TestBroker::start_with(config).await;
    let mut mallory = login(&broker, "mallory", &[]).await;
    for i in 0..2 {
        with_receipt(
            &mut mallory,
            Dialect::RabbitMq.subscribe_as("/topic/public.x", &format!("m{i}"), &format!("d{i}")),
        )
        .await
        .unwrap();
    }
    let refused = with_receipt(&mut mallory, Dialect::RabbitMq.subscribe_as("/topic/public.x", "m2", "d2")).await;
    assert!(refused.expect_err("refused").contains("max_durable_subscriptions_per_user"));
    let mut alice = login(&broker, "alice", &[]).await;
    with_receipt(&mut alice, Dialect::RabbitMq.subscribe_as("/topic/x", "a0", "a0")).await.unwrap();
    let refused = with_receipt(&mut alice, Dialect::RabbitMq.subscribe_as("/topic/x", "a1", "a1")).await;
    let error = refused.expect_err("refused");
    assert!(error.contains("max_durable_subscriptions") && !error.contains("per_user"), "{error}");
}

// ------------------------------------------------------------------------------------------
// Support

/// Writes, straight into a store at `dir`, a durable subscription as a version without owners
/// stored it: no owner, no virtual host, with `messages` waiting.
fn store_legacy_durable_subscription(dir: &std::path::Path, name: &str, topic: &str, messages: &[&str]) {
    let store = SledStore::open(dir, StoreOptions::default()).expect("store opens");
    let key = format!("durable:{name}");
    let mut record = QueueRecord::queue(key.clone());
    record.kind = QueueKind::DurableSubscription;
    record.topic = Some(topic.to_owned());
    record.subscription_name = Some(name.to_owned());
    let mut ops = vec![Op::DefineQueue(record)];
    for (seq, body) in messages.iter().enumerate() {
        let mut headers = stampede_protocol::Headers::new();
        headers.push("destination", format!("/topic/{topic}"));
        ops.push(Op::Append {
            queue: key.clone(),
            message: StoredMessage {
                seq: seq as u64 + 1,
                headers,
                body: bytes::Bytes::from(body.to_string()),
                delivery_count: 0,
                expires_at_ms: None,
                enqueued_at_ms: 0,
            },
        });
    }
    let (done, wait) = std::sync::mpsc::channel();
    store.submit(ops, Some(Box::new(move |result| done.send(result.is_ok()).unwrap())));
    assert!(wait.recv().unwrap(), "stored");
    store.flush().unwrap();
}

#[tokio::test]
async fn amq_topic_exchange_destinations_are_checked_as_the_topics_they_route_to() {
    let broker = TestBroker::start_with(config()).await;
    let mut mallory = login(&broker, "mallory", &[]).await;
    with_receipt(&mut mallory, subscribe("/exchange/amq.topic/public.news", "ok")).await.expect("a readable topic");
    let refused = with_receipt(&mut mallory, subscribe("/exchange/amq.topic/secret.prices", "no")).await;
    assert!(refused.expect_err("refused").contains("access denied"));
}
