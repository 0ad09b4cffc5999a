//! Cluster mode: Stampede nodes sharing topics through one nats-server (tests/src/nats.rs
//! starts it; it must be installed, see `./tests/run --only setup`).

use std::collections::{BTreeSet, HashMap};

use stampede_broker::destination::topic::TopicPattern;
use stampede_client::{Client, Headers, Message, SubscribeOptions, Subscription};
use stampede_tests::nats::{NatsServer, cluster_config, cluster_nodes, readiness, wait_until_ready};
use stampede_tests::{QUIET, TestBroker, WAIT};

fn body(message: &Message) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

/// The next `count` messages of `subscription`, then nothing more for [`QUIET`].
async fn exactly(subscription: &mut Subscription, count: usize) -> Vec<Message> {
    let mut messages = Vec::with_capacity(count);
    for i in 0..count {
        match subscription.recv_timeout(WAIT).await {
            Ok(message) => messages.push(message),
            Err(error) => panic!(
                "{}: got {i} of {count} messages, then {error}; bodies so far: {:?}",
                subscription.destination(),
                messages.iter().map(body).collect::<Vec<_>>()
            ),
        }
    }
    if let Ok(extra) = subscription.recv_timeout(QUIET).await {
        panic!("{}: one message too many: {:?}", subscription.destination(), body(&extra));
    }
    messages
}

#[tokio::test]
async fn topic_fan_out_reaches_tcp_and_ws_subscribers_on_every_node_exactly_once() {
    let nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 3).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        for client in [node.client().await, node.ws_client().await] {
            let subscription = client.subscribe("/topic/fan", SubscribeOptions::new()).await.unwrap();
            subscribers.push((client, subscription));
        }
    }
    let tcp_publisher = nodes[0].client().await;
    let ws_publisher = nodes[2].ws_client().await;
    for i in 0..50 {
        let headers: Headers = [("content-type", "application/json"), ("x-seq", &i.to_string()), ("x-colon", "a:b\nc")]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        tcp_publisher.send("/topic/fan", format!("{{\"tcp\":{i}}}"), headers.clone()).await.unwrap();
        ws_publisher.send("/topic/fan", format!("{{\"ws\":{i}}}"), headers).await.unwrap();
    }
    let mut ids_by_body: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (_, subscription) in &mut subscribers {
        let messages = exactly(subscription, 100).await;
        let bodies: BTreeSet<String> = messages.iter().map(body).collect();
        assert_eq!(bodies.len(), 100, "every message once");
        for message in &messages {
            assert_eq!(message.destination, "/topic/fan");
            assert_eq!(message.header("content-type"), Some("application/json"));
            assert_eq!(message.header("x-colon"), Some("a:b\nc"));
            ids_by_body.entry(body(message)).or_default().insert(message.message_id.to_string());
        }
    }
    for (body, ids) in ids_by_body {
        assert_eq!(ids.len(), 1, "{body} had one message-id on every node: {ids:?}");
    }
}

/// The topic subjects node `node` has subscribed on `nats` now.
async fn node_subjects(nats: &NatsServer, node: &TestBroker) -> Vec<String> {
    let name = format!("stampede {}", node.broker.router().cluster().expect("cluster mode").instance());
    // The client's own reply inbox (`_INBOX.…`, for its round trips) is not topic interest.
    let subjects = nats.subscriptions().await.remove(&name).unwrap_or_default();
    subjects.into_iter().filter(|subject| subject.starts_with("stampede.")).collect()
}

/// Waits until node `node` holds exactly `subjects` on `nats`.
async fn wait_for_subjects(nats: &NatsServer, node: &TestBroker, subjects: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = node_subjects(nats, node).await;
        if now == subjects {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "subscribed {now:?}, expected {subjects:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_subscribes_on_nats_only_the_patterns_its_clients_hold_until_the_last_one_leaves() {
    let nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 2).await;
    assert_eq!(node_subjects(&nats, &nodes[0]).await, Vec::<String>::new(), "no subscriber, no interest");
    let (a, b) = (nodes[0].client().await, nodes[0].ws_client().await);
    let first = a.subscribe("/topic/ir.x", SubscribeOptions::new()).await.unwrap();
    let second = b.subscribe("/topic/ir.x", SubscribeOptions::new()).await.unwrap();
    let wildcard = b.subscribe("/topic/ir.#", SubscribeOptions::new()).await.unwrap();
    // Subscribed before the RECEIPTs came back, once per distinct pattern.
    assert_eq!(node_subjects(&nats, &nodes[0]).await, ["stampede./.t.ir.>", "stampede./.t.ir.x"]);
    assert_eq!(node_subjects(&nats, &nodes[1]).await, Vec::<String>::new(), "the other node holds none");
    first.unsubscribe().await.unwrap();
    wildcard.unsubscribe().await.unwrap();
    wait_for_subjects(&nats, &nodes[0], &["stampede./.t.ir.x"]).await;
    second.unsubscribe().await.unwrap();
    wait_for_subjects(&nats, &nodes[0], &[]).await;
}

#[tokio::test]
async fn wildcard_subscriptions_across_nodes_match_as_on_one_node() {
    let nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 3).await;
    let patterns = ["a.*", "a.#", "a.#.z", "*.b", "news/*", "a.b"];
    let names = [
        "a",
        "a.b",
        "a.b.c",
        "a.b.z",
        "x.b",
        "news/uk",
        "news/uk/london",
        "news.uk",
        "a.with space",
        "a.star*x",
        "a..",
    ];
    let mut subscriptions = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        // Spread over the nodes other than the publisher's, so every match crosses NATS.
        let node = &nodes[1 + i % 2];
        let client = node.client().await;
        let subscription = client.subscribe(&format!("/topic/{pattern}"), SubscribeOptions::new()).await.unwrap();
        subscriptions.push((pattern, client, subscription));
    }
    let publisher = nodes[0].client().await;
    for name in names {
        publisher.send(&format!("/topic/{name}"), name, Headers::new()).await.unwrap();
    }
    for (pattern, _, subscription) in &mut subscriptions {
        let expected: Vec<&str> = match TopicPattern::parse(pattern) {
            Some(matcher) => names.iter().copied().filter(|name| matcher.matches(name)).collect(),
            None => names.iter().copied().filter(|name| name == *pattern).collect(),
        };
        let got: Vec<String> = exactly(subscription, expected.len()).await.iter().map(body).collect();
        assert_eq!(got, expected, "pattern {pattern:?}");
    }
}

#[tokio::test]
async fn each_publishers_order_is_kept_on_every_node() {
    let nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 3).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        let client = node.client().await;
        let subscription = client.subscribe("/topic/order.>", SubscribeOptions::new()).await.unwrap();
        subscribers.push((client, subscription));
    }
    const EACH: usize = 300;
    let publishers: Vec<Client> = futures_join(nodes.iter().map(|node| node.client())).await;
    let sends = publishers.iter().enumerate().map(|(p, client)| async move {
        for i in 0..EACH {
            client.send(&format!("/topic/order.p{p}"), format!("{p}:{i}"), Headers::new()).await.unwrap();
        }
    });
    futures_join(sends).await;
    for (_, subscription) in &mut subscribers {
        let mut next = [0usize; 3];
        for message in exactly(subscription, EACH * 3).await {
            let text = body(&message);
            let (p, i) = text.split_once(':').unwrap();
            let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[p], "publisher {p}'s messages out of order");
            next[p] += 1;
        }
    }
}

#[tokio::test]
async fn a_node_does_not_deliver_its_own_publication_twice() {
    let nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 2).await;
    // Two patterns on node 0 matching the same topic: two NATS subscriptions there.
    let local = nodes[0].client().await;
    let mut exact = local.subscribe("/topic/own.x", SubscribeOptions::new()).await.unwrap();
    let mut wildcard = local.subscribe("/topic/own.*", SubscribeOptions::new()).await.unwrap();
    let remote = nodes[1].client().await;
    let mut remote_subscription = remote.subscribe("/topic/own.x", SubscribeOptions::new()).await.unwrap();
    local.send_with_receipt("/topic/own.x", "from node 0", Headers::new()).await.unwrap();
    remote.send_with_receipt("/topic/own.x", "from node 1", Headers::new()).await.unwrap();
    for subscription in [&mut exact, &mut wildcard, &mut remote_subscription] {
        let mut bodies: Vec<String> = exactly(subscription, 2).await.iter().map(body).collect();
        bodies.sort();
        assert_eq!(bodies, ["from node 0", "from node 1"]);
    }
}

#[tokio::test]
async fn readiness_is_503_until_nats_is_back_and_every_node_delivers_again_without_reconnecting() {
    let mut nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 3).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        let client = node.ws_client().await;
        let subscription = client.subscribe("/topic/resume.*", SubscribeOptions::new()).await.unwrap();
        subscribers.push((client, subscription));
    }
    let publisher = nodes[0].client().await;
    publisher.send("/topic/resume.a", "before", Headers::new()).await.unwrap();
    for (_, subscription) in &mut subscribers {
        assert_eq!(body(&exactly(subscription, 1).await[0]), "before");
    }

    nats.stop();
    for node in &nodes {
        wait_until_ready(node, false).await;
    }
    // A node started while the engine is away is not ready either.
    let late = TestBroker::start_with(cluster_config(&nats, "late")).await;
    assert_eq!(readiness(&late).await, 503);
    let late_client = late.client().await;
    let late_subscription = late_client.subscribe_no_wait("/topic/resume.*", SubscribeOptions::new()).await.unwrap();

    nats.restart();
    for node in nodes.iter().chain([&late]) {
        wait_until_ready(node, true).await;
    }
    let publisher = nodes[1].client().await;
    publisher.send("/topic/resume.b", "after", Headers::new()).await.unwrap();
    for (client, subscription) in &mut subscribers {
        assert_eq!(body(&exactly(subscription, 1).await[0]), "after");
        assert!(!client.is_closed(), "the subscriber kept its connection");
    }
    // The SUBSCRIBE sent while NATS was away was refused, not silently kept.
    drop(late_subscription);
    let closed = tokio::time::timeout(WAIT, late_client.closed()).await.expect("the late client was told");
    let error = closed.server_error().expect("an ERROR").clone();
    assert_eq!(error.message, "cluster engine unavailable");
}

#[tokio::test]
async fn a_topic_send_or_subscribe_while_nats_is_down_gets_an_error_and_the_node_recovers_by_itself() {
    let mut nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 2).await;
    let remote = nodes[1].client().await;
    let mut remote_subscription = remote.subscribe("/topic/outage", SubscribeOptions::new()).await.unwrap();
    nats.stop();
    wait_until_ready(&nodes[0], false).await;

    let sender = nodes[0].client().await;
    let error = sender.send_with_receipt("/topic/outage", "lost?", Headers::new()).await.unwrap_err();
    let error = error.server_error().expect("an ERROR frame").clone();
    assert_eq!(error.message, "cluster engine unavailable");
    assert!(error.body_text().contains("NATS"), "{}", error.body_text());
    let subscriber = nodes[0].client().await;
    let error = subscriber.subscribe("/topic/outage", SubscribeOptions::new()).await.unwrap_err();
    assert_eq!(error.server_error().expect("an ERROR frame").message, "cluster engine unavailable");

    nats.restart();
    for node in &nodes {
        wait_until_ready(node, true).await;
    }
    let sender = nodes[0].client().await;
    sender.send_with_receipt("/topic/outage", "after", Headers::new()).await.unwrap();
    let got: Vec<String> = exactly(&mut remote_subscription, 1).await.iter().map(body).collect();
    assert_eq!(got, ["after"], "nothing sent during the outage arrives later");
}

#[tokio::test]
async fn a_durable_subscription_keeps_what_other_nodes_publish_while_its_client_is_away() {
    let nats = NatsServer::start();
    let nodes = cluster_nodes(&nats, 2).await;
    let options = || SubscribeOptions::new().id("d").durable();
    let subscriber = nodes[1].client().await;
    let subscription = subscriber.subscribe("/topic/kept.*", options()).await.unwrap();
    drop(subscription);
    subscriber.disconnect().await.unwrap();
    let publisher = nodes[0].client().await;
    for i in 0..3 {
        publisher.send_with_receipt("/topic/kept.a", format!("away-{i}"), Headers::new()).await.unwrap();
    }
    let subscriber = nodes[1].client().await;
    let mut subscription = subscriber.subscribe("/topic/kept.*", options()).await.unwrap();
    let got: Vec<String> = exactly(&mut subscription, 3).await.iter().map(body).collect();
    assert_eq!(got, ["away-0", "away-1", "away-2"]);
}

#[tokio::test]
async fn a_message_larger_than_nats_takes_is_refused_on_every_node_naming_max_payload() {
    let nats = NatsServer::start_with("max_payload: 4096\n");
    let nodes = cluster_nodes(&nats, 2).await;
    let local = nodes[0].client().await;
    let mut local_subscription = local.subscribe("/topic/big", SubscribeOptions::new()).await.unwrap();
    let sender = nodes[0].client().await;
    let error = sender.send_with_receipt("/topic/big", vec![b'x'; 8192], Headers::new()).await.unwrap_err();
    let error = error.server_error().expect("an ERROR frame").clone();
    assert!(error.message.contains("too large for the cluster engine"), "{}", error.message);
    assert!(error.message.contains("max_payload"), "{}", error.message);
    assert!(local_subscription.recv_timeout(QUIET).await.is_err(), "not delivered on its own node either");
    let sender = nodes[0].client().await;
    sender.send_with_receipt("/topic/big", vec![b'x'; 1024], Headers::new()).await.unwrap();
    assert_eq!(local_subscription.recv_timeout(WAIT).await.unwrap().body.len(), 1024);
}

#[tokio::test]
async fn queue_destinations_are_refused_in_cluster_mode_when_configured_so_or_node_local() {
    let nats = NatsServer::start();
    let mut config = cluster_config(&nats, "q");
    config.cluster.as_mut().unwrap().queues = stampede_broker::cluster::QueueMode::Refuse;
    let node = TestBroker::start_with(config).await;
    wait_until_ready(&node, true).await;
    for destination in ["/queue/jobs", "/temp-queue/replies"] {
        let client = node.client().await;
        let error = client.send_with_receipt(destination, "x", Headers::new()).await.unwrap_err();
        let error = error.server_error().expect("an ERROR frame").clone();
        assert!(error.message.ends_with("destinations are not clustered yet"), "{}", error.message);
        assert!(error.body_text().contains("node-local"), "{}", error.body_text());
    }
    let client = node.client().await;
    assert!(client.subscribe("/queue/jobs", SubscribeOptions::new()).await.is_err());

    let mut config = cluster_config(&nats, "local");
    config.cluster.as_mut().unwrap().queues = stampede_broker::cluster::QueueMode::NodeLocal;
    let local = TestBroker::start_with(config).await;
    let client = local.client().await;
    let mut jobs = client.subscribe("/queue/jobs", SubscribeOptions::new()).await.unwrap();
    client.send_with_receipt("/queue/jobs", "work", Headers::new()).await.unwrap();
    assert_eq!(body(&jobs.recv_timeout(WAIT).await.unwrap()), "work");
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    futures_util::future::join_all(futures).await
}
