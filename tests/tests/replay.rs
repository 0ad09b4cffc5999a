//! Last-value and replay topics (README, "Beyond other brokers"): `x-replay` and
//! `x-replay-since` on SUBSCRIBE, `x-retain` on SEND, `[topics."<pattern>"]` retention, the seam
//! between history and live messages, limits, virtual hosts, permissions and kill -9.

use std::collections::BTreeMap;
use std::time::Duration;

use stampede_broker::Config;
use stampede_broker::destination::retention::TopicRetention;
use stampede_client::{Client, Command, Frame, Headers, Message, SubscribeOptions, Subscription};
use stampede_tests::process::{BrokerProcess, connect};
use stampede_tests::{QUIET, TestBroker, WAIT};

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn body(message: &Message) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

fn replay(value: &str) -> SubscribeOptions {
    SubscribeOptions::new().header("x-replay", value)
}

fn keep(retain: usize, retain_ms: Option<u64>, persistent: bool) -> TopicRetention {
    TopicRetention { retain: Some(retain), retain_ms, persistent: Some(persistent) }
}

fn config_with(topics: &[(&str, TopicRetention)]) -> Config {
    let mut config = Config::ephemeral();
    config.topics = topics.iter().map(|(name, table)| ((*name).to_owned(), table.clone())).collect::<BTreeMap<_, _>>();
    config
}

/// Sends each body to `destination` with `extra` headers, the last one with a receipt.
async fn publish(client: &Client, destination: &str, bodies: &[&str], extra: &[(&str, &str)]) {
    for text in bodies {
        client.send(destination, text.to_string(), headers(extra)).await.unwrap();
    }
    client.send_with_receipt("/topic/__sync", "", Headers::new()).await.unwrap();
}

async fn receive(subscription: &mut Subscription, count: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        got.push(body(&subscription.recv_timeout(WAIT).await.expect("a message")));
    }
    got
}

async fn assert_nothing_more(subscription: &mut Subscription) {
    if let Ok(message) = subscription.recv_timeout(QUIET).await {
        panic!("unexpected message {:?}", body(&message));
    }
}

/// The ERROR a frame with `extra` headers gets.
async fn refused(broker: &TestBroker, command: Command, destination: &str, extra: &[(&str, &str)]) -> String {
    let mut raw = broker.raw().await;
    raw.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.unwrap();
    let mut frame = Frame::new(command).with_header("id", "0").with_header("destination", destination);
    for (name, value) in extra {
        frame = frame.with_header(*name, *value);
    }
    raw.send_frame(&frame).await.unwrap();
    let reply = raw.read_frame(WAIT).await.unwrap().expect("a reply");
    assert_eq!(reply.command, Command::Error, "{extra:?} must be refused");
    reply.header("message").unwrap_or_default().to_owned()
}

#[tokio::test]
async fn x_replay_last_gets_the_last_retained_message_before_the_live_ones() {
    let broker = TestBroker::start().await;
    let producer = broker.client().await;
    publish(&producer, "/topic/ticker.eur", &["1.01", "1.02", "1.03"], &[("x-retain", "true")]).await;
    let mut late = broker.client().await.subscribe("/topic/ticker.eur", replay("last")).await.unwrap();
    publish(&producer, "/topic/ticker.eur", &["1.04"], &[]).await;
    assert_eq!(receive(&mut late, 2).await, ["1.03", "1.04"], "the last value, then live");
    assert_nothing_more(&mut late).await;
    let mut plain = broker.client().await.subscribe("/topic/ticker.eur", SubscribeOptions::new()).await.unwrap();
    assert_nothing_more(&mut plain).await;
}

#[tokio::test]
async fn x_replay_n_gets_the_last_n_of_a_topic_capped_by_its_retention() {
    let broker = TestBroker::start_with(config_with(&[("prices.*", keep(5, None, false))])).await;
    let producer = broker.client().await;
    let sent: Vec<String> = (1..=8).map(|n| format!("p{n}")).collect();
    publish(&producer, "/topic/prices.eur", &sent.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let client = broker.client().await;
    let mut three = client.subscribe("/topic/prices.eur", replay("3")).await.unwrap();
    assert_eq!(receive(&mut three, 3).await, ["p6", "p7", "p8"]);
    assert_nothing_more(&mut three).await;
    let mut many = client.subscribe("/topic/prices.eur", replay("100")).await.unwrap();
    assert_eq!(receive(&mut many, 5).await, ["p4", "p5", "p6", "p7", "p8"], "capped by retain = 5");
    assert_nothing_more(&mut many).await;
    let mut other = client.subscribe("/topic/news", replay("all")).await.unwrap();
    publish(&producer, "/topic/news", &["n1"], &[]).await;
    let mut late = client.subscribe("/topic/news", replay("all")).await.unwrap();
    assert_eq!(receive(&mut other, 1).await, ["n1"]);
    assert_nothing_more(&mut late).await;
}

#[tokio::test]
async fn x_replay_since_gets_the_retained_messages_published_at_or_after_that_time() {
    let broker = TestBroker::start_with(config_with(&[("log", keep(100, None, false))])).await;
    let producer = broker.client().await;
    publish(&producer, "/topic/log", &["old1", "old2"], &[]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis().to_string();
    tokio::time::sleep(Duration::from_millis(5)).await;
    publish(&producer, "/topic/log", &["new1", "new2", "new3"], &[]).await;
    let client = broker.client().await;
    let mut recent =
        client.subscribe("/topic/log", SubscribeOptions::new().header("x-replay-since", since.as_str())).await.unwrap();
    assert_eq!(receive(&mut recent, 3).await, ["new1", "new2", "new3"]);
    assert_nothing_more(&mut recent).await;
    let both = SubscribeOptions::new().header("x-replay-since", since.as_str()).header("x-replay", "2");
    let mut last_two = client.subscribe("/topic/log", both).await.unwrap();
    assert_eq!(receive(&mut last_two, 2).await, ["new2", "new3"], "x-replay and x-replay-since combine");
}

#[tokio::test]
async fn a_wildcard_subscription_with_x_replay_last_gets_the_last_of_each_matching_topic_over_websocket() {
    let broker = TestBroker::start_with(config_with(&[("prices.#", keep(10, None, false))])).await;
    let producer = broker.ws_client().await;
    publish(&producer, "/topic/prices.eur", &["eur1", "eur2"], &[]).await;
    publish(&producer, "/topic/prices.usd", &["usd1"], &[]).await;
    publish(&producer, "/topic/prices.gbp.spot", &["gbp1", "gbp2", "gbp3"], &[]).await;
    publish(&producer, "/topic/news.eur", &["not a price"], &[("x-retain", "true")]).await;
    publish(&producer, "/topic/prices.eur", &["eur3"], &[]).await;
    let subscriber = broker.ws_client().await;
    let mut dashboard = subscriber.subscribe("/topic/prices.#", replay("last")).await.unwrap();
    assert_eq!(receive(&mut dashboard, 3).await, ["usd1", "gbp3", "eur3"], "the last of each, in publish order");
    assert_nothing_more(&mut dashboard).await;
    let selected = replay("last").header("selector", "region = 'eu'");
    publish(&producer, "/topic/prices.chf", &["chf1"], &[("region", "eu")]).await;
    let mut europe = subscriber.subscribe("/topic/prices.*", selected).await.unwrap();
    assert_eq!(receive(&mut europe, 1).await, ["chf1"], "the selector applies to the history");
    assert_nothing_more(&mut europe).await;
}

#[tokio::test]
async fn activemq_retroactive_true_replays_everything_the_topic_keeps() {
    let broker = TestBroker::start_with(config_with(&[("orders.>", keep(3, None, false))])).await;
    let producer = broker.client().await;
    publish(&producer, "/topic/orders.new", &["o1", "o2", "o3", "o4"], &[]).await;
    let options = SubscribeOptions::new().header("activemq.retroactive", "true");
    let mut retroactive = broker.client().await.subscribe("/topic/orders.new", options).await.unwrap();
    assert_eq!(receive(&mut retroactive, 3).await, ["o2", "o3", "o4"]);
    assert_nothing_more(&mut retroactive).await;
}

/// Subscribers join while a publisher sends as fast as it can: each sees a contiguous run of
/// sequence numbers, from some point of the history to the last message sent, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_between_replay_and_live_messages_has_no_gap_and_no_duplicate() {
    const TOTAL: u64 = 20_000;
    const REPLAY: u64 = 50;
    let broker = TestBroker::start_with(config_with(&[("seam", keep(1000, None, false))])).await;
    let producer = broker.client().await;
    let publisher = tokio::spawn(async move {
        for seq in 0..TOTAL {
            producer.send("/topic/seam", seq.to_string(), Headers::new()).await.unwrap();
        }
        producer.send_with_receipt("/topic/seam", "end", Headers::new()).await.unwrap();
    });
    let mut joined = Vec::new();
    for round in 0..6u64 {
        tokio::time::sleep(Duration::from_millis(5 + round * 7)).await;
        let client = broker.client().await;
        let subscription = client.subscribe("/topic/seam", replay(&REPLAY.to_string())).await.unwrap();
        joined.push(tokio::spawn(async move {
            let _client = client;
            let mut subscription = subscription;
            let mut seen = Vec::new();
            loop {
                let message = subscription.recv_timeout(Duration::from_secs(20)).await.expect("a message");
                match body(&message).as_str() {
                    "end" => break seen,
                    seq => seen.push(seq.parse::<u64>().unwrap()),
                }
            }
        }));
    }
    publisher.await.unwrap();
    let mut mid_stream = 0;
    for subscriber in joined {
        let seen = subscriber.await.unwrap();
        let first = *seen.first().expect("at least the history");
        let expected: Vec<u64> = (first..TOTAL).collect();
        assert!(seen == expected, "not contiguous from {first}: {} messages, expected {}", seen.len(), expected.len());
        assert!(first == 0 || seen.len() as u64 >= REPLAY, "a replay of {REPLAY} then live from {first}");
        mid_stream += u32::from(first > 0 && first + REPLAY < TOTAL);
    }
    assert!(mid_stream >= 1, "no subscriber joined in the middle of the stream: the test proved nothing");
}

#[tokio::test]
async fn retention_keeps_at_most_retain_messages_and_none_older_than_retain_ms() {
    let broker = TestBroker::start_with(config_with(&[("limited", keep(3, Some(400), false))])).await;
    let producer = broker.client().await;
    publish(&producer, "/topic/limited", &["a", "b", "c", "d", "e"], &[]).await;
    let client = broker.client().await;
    let mut all = client.subscribe("/topic/limited", replay("all")).await.unwrap();
    assert_eq!(receive(&mut all, 3).await, ["c", "d", "e"], "count");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut aged = client.subscribe("/topic/limited", replay("all")).await.unwrap();
    assert_nothing_more(&mut aged).await;
    publish(&producer, "/topic/limited", &["f"], &[("expires", "1")]).await;
    let mut expired = client.subscribe("/topic/limited", replay("all")).await.unwrap();
    assert_nothing_more(&mut expired).await;
}

#[tokio::test]
async fn the_global_byte_budget_evicts_a_topics_oldest_messages() {
    let mut config = config_with(&[("big", keep(1000, None, false))]);
    config.retained_max_bytes = 4096;
    let broker = TestBroker::start_with(config).await;
    let producer = broker.client().await;
    let kilobyte = "x".repeat(1000);
    for n in 0..10 {
        producer.send("/topic/big", format!("{n}{kilobyte}"), Headers::new()).await.unwrap();
    }
    publish(&producer, "/topic/big", &[], &[]).await;
    let mut all = broker.client().await.subscribe("/topic/big", replay("all")).await.unwrap();
    let mut kept = Vec::new();
    while let Ok(message) = all.recv_timeout(QUIET).await {
        kept.push(body(&message)[..1].to_owned());
    }
    assert!(!kept.is_empty() && kept.len() < 4, "4096 bytes keep at most 3 of 1 KiB: {kept:?}");
    assert_eq!(kept.last().map(String::as_str), Some("9"), "the newest is kept");
}

#[tokio::test]
async fn virtual_hosts_do_not_share_retained_messages_in_memory_or_in_the_store() {
    let mut config = config_with(&[("shared.*", keep(10, None, true))]);
    config.vhosts = vec!["a".into(), "b".into()];
    let broker = TestBroker::start_durable(config.clone()).await;
    let in_a = broker.client_with(|o| o.vhost("a")).await;
    publish(&in_a, "/topic/shared.secret", &["only for a"], &[("persistent", "true")]).await;
    publish(&in_a, "/topic/lone", &["also a"], &[("x-retain", "true"), ("persistent", "true")]).await;
    for vhost in ["b", "/"] {
        let other = broker.client_with(|o| o.vhost(vhost)).await;
        let mut peek = other.subscribe("/topic/#", replay("all")).await.unwrap();
        assert_nothing_more(&mut peek).await;
    }
    let broker = broker.restart(config).await;
    let other = broker.client_with(|o| o.vhost("b")).await;
    let mut peek = other.subscribe("/topic/#", replay("all")).await.unwrap();
    assert_nothing_more(&mut peek).await;
    let in_a = broker.client_with(|o| o.vhost("a")).await;
    let mut mine = in_a.subscribe("/topic/#", replay("all")).await.unwrap();
    assert_eq!(receive(&mut mine, 2).await, ["only for a", "also a"], "vhost a's history after a restart");
}

#[tokio::test]
async fn a_subscriber_without_read_permission_gets_an_error_and_no_history() {
    let mut config = config_with(&[("#", keep(10, None, false))]);
    config.users.insert("alice".into(), stampede_tests::user_with_every_permission("wonderland", false));
    let mut bob = stampede_tests::user_with_every_permission("builder", false);
    bob.read = vec!["/topic/public.*".into()];
    config.users.insert("bob".into(), bob);
    let broker = TestBroker::start_with(config).await;
    let alice = broker.client_with(|o| o.credentials("alice", "wonderland")).await;
    publish(&alice, "/topic/secret.plans", &["s1"], &[]).await;
    publish(&alice, "/topic/public.news", &["p1"], &[]).await;
    let bob = broker.client_with(|o| o.credentials("bob", "builder")).await;
    let error = bob.subscribe("/topic/secret.plans", replay("all")).await.unwrap_err().to_string();
    assert!(error.contains("secret.plans"), "{error}");
    let bob = broker.client_with(|o| o.credentials("bob", "builder")).await;
    let mut public = bob.subscribe("/topic/public.*", replay("all")).await.unwrap();
    assert_eq!(receive(&mut public, 1).await, ["p1"]);
    assert_nothing_more(&mut public).await;
}

#[tokio::test]
async fn bad_replay_and_retain_headers_are_errors_naming_the_header() {
    let broker = TestBroker::start().await;
    for (value, header) in
        [("0", "x-replay"), ("-1", "x-replay"), ("first", "x-replay"), ("yesterday", "x-replay-since")]
    {
        let message = refused(&broker, Command::Subscribe, "/topic/t", &[(header, value)]).await;
        assert!(message.contains(header) && message.contains(value), "{header}:{value} -> {message}");
    }
    let message = refused(&broker, Command::Subscribe, "/topic/t", &[("activemq.retroactive", "yes please")]).await;
    assert!(message.contains("activemq.retroactive"), "{message}");
    let message = refused(&broker, Command::Subscribe, "/queue/q", &[("x-replay", "last")]).await;
    assert!(message.contains("x-replay") && message.contains("only topics"), "{message}");
    let message = refused(&broker, Command::Send, "/topic/t", &[("x-retain", "maybe")]).await;
    assert!(message.contains("x-retain"), "{message}");
    let message = refused(&broker, Command::Send, "/queue/q", &[("x-retain", "true")]).await;
    assert!(message.contains("x-retain") && message.contains("only topics"), "{message}");
}

/// The real binary, its config file naming a persistent retained pattern.
async fn broker_process(dir: &std::path::Path) -> BrokerProcess {
    let config = dir.join("stampede.toml");
    std::fs::write(&config, "[topics.\"prices.*\"]\nretain = 3\npersistent = true\n").unwrap();
    let mut command = BrokerProcess::command(&dir.join("data"));
    command.arg("--config").arg(&config);
    BrokerProcess::spawn(command).await
}

#[tokio::test]
async fn retained_messages_of_a_persistent_topic_survive_kill_9_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_process(dir.path()).await;
    let client = connect(&broker.url()).await;
    for n in 1..=5 {
        client.send_with_receipt("/topic/prices.eur", format!("eur{n}"), Headers::new()).await.unwrap();
    }
    let last_value = headers(&[("x-retain", "true"), ("persistent", "true")]);
    client.send_with_receipt("/topic/status", "up", last_value.clone()).await.unwrap();
    client.send_with_receipt("/topic/status", "degraded", last_value).await.unwrap();
    client.send_with_receipt("/topic/volatile", "gone", headers(&[("x-retain", "true")])).await.unwrap();
    // Receipted, so on disk: no shutdown, no flush.
    broker.kill9().await;

    let broker = broker_process(dir.path()).await;
    let client = connect(&broker.url()).await;
    let mut last = client.subscribe("/topic/prices.eur", replay("last")).await.unwrap();
    assert_eq!(receive(&mut last, 1).await, ["eur5"]);
    let mut all = client.subscribe("/topic/prices.eur", replay("all")).await.unwrap();
    assert_eq!(receive(&mut all, 3).await, ["eur3", "eur4", "eur5"], "trimmed to retain = 3 on disk too");
    let mut status = client.subscribe("/topic/status", replay("all")).await.unwrap();
    assert_eq!(receive(&mut status, 1).await, ["degraded"], "x-retain keeps the last value");
    let mut volatile = client.subscribe("/topic/volatile", replay("all")).await.unwrap();
    assert_nothing_more(&mut volatile).await;
    assert_nothing_more(&mut all).await;
}
