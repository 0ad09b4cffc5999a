//! Cluster mode, queues: `/queue/` destinations on JetStream, shared by Stampede nodes joined to
//! one nats-server (tests/src/nats.rs starts it; `./tests/run --only setup` installs it).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use stampede_broker::Config;
use stampede_client::{AckMode, Client, Headers, Message, SubscribeOptions, Subscription};
use stampede_tests::nats::{NatsServer, cluster_config, wait_until_ready};
use stampede_tests::{QUIET, TestBroker, WAIT};

fn body(message: &Message) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

/// `count` ready nodes joined to `nats`, each configuration changed by `change` first.
async fn nodes_with(nats: &NatsServer, count: usize, change: impl Fn(&mut Config)) -> Vec<TestBroker> {
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let mut config = cluster_config(nats, &format!("node-{i}"));
        change(&mut config);
        let node = TestBroker::start_with(config).await;
        wait_until_ready(&node, true).await;
        nodes.push(node);
    }
    nodes
}

async fn nodes(nats: &NatsServer, count: usize) -> Vec<TestBroker> {
    nodes_with(nats, count, |_| {}).await
}

fn client_ack(prefetch: u32) -> SubscribeOptions {
    SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(prefetch)
}

fn persistent() -> Headers {
    [("persistent", "true")].into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect()
}

/// Asserts `subscription` gets nothing for [`QUIET`].
async fn nothing_more(subscription: &mut Subscription) {
    if let Ok(extra) = subscription.recv_timeout(QUIET).await {
        panic!("{}: unexpected {:?}", subscription.destination(), body(&extra));
    }
}

#[tokio::test]
async fn competing_consumers_on_three_nodes_share_one_queue_and_each_message_is_handed_out_once() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 3).await;
    let mut consumers: Vec<(Client, Subscription)> = Vec::new();
    for node in &nodes {
        let client = node.client().await;
        let subscription = client.subscribe("/queue/work", client_ack(5)).await.unwrap();
        consumers.push((client, subscription));
    }
    let producer = nodes[0].client().await;
    let total = 300;
    for i in 0..total {
        producer.send_with_receipt("/queue/work", format!("job-{i}"), persistent()).await.unwrap();
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_node = [0usize; 3];
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    while seen.len() < total {
        assert!(tokio::time::Instant::now() < deadline, "got {} of {total}", seen.len());
        for (node, (client, subscription)) in consumers.iter_mut().enumerate() {
            while let Ok(message) = subscription.recv_timeout(Duration::from_millis(20)).await {
                assert!(!message.redelivered, "steady state: nothing is redelivered ({})", body(&message));
                *seen.entry(body(&message)).or_default() += 1;
                per_node[node] += 1;
                client.ack(&message).await.unwrap();
            }
        }
    }
    for (_, subscription) in &mut consumers {
        nothing_more(subscription).await;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handed out more than once: {twice:?}");
    assert_eq!(seen.len(), total);
    assert!(per_node.iter().all(|&n| n > 0), "every node's consumer took a share: {per_node:?}");
}

#[tokio::test]
async fn a_message_sent_on_node_a_is_consumed_on_node_c_with_its_headers() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 3).await;
    let consumer = nodes[2].ws_client().await;
    let mut subscription = consumer.subscribe("/queue/a.to.c", client_ack(1)).await.unwrap();
    let producer = nodes[0].client().await;
    let mut headers = persistent();
    headers.push("content-type".to_owned(), "application/json".to_owned());
    headers.push("x-colon".to_owned(), "a:b\nc".to_owned());
    producer.send_with_receipt("/queue/a.to.c", "{\"from\":\"a\"}", headers).await.unwrap();
    let message = subscription.recv_timeout(WAIT).await.unwrap();
    assert_eq!(body(&message), "{\"from\":\"a\"}");
    assert_eq!(message.destination, "/queue/a.to.c");
    assert_eq!(message.header("content-type"), Some("application/json"));
    assert_eq!(message.header("x-colon"), Some("a:b\nc"));
    assert!(!message.redelivered);
    consumer.ack(&message).await.unwrap();
    nothing_more(&mut subscription).await;
    // Sent before anyone subscribed: kept by JetStream until a consumer on any node comes.
    producer.send_with_receipt("/queue/later", "kept", persistent()).await.unwrap();
    let late = nodes[1].client().await;
    let mut later = late.subscribe("/queue/later", SubscribeOptions::new()).await.unwrap();
    assert_eq!(body(&later.recv_timeout(WAIT).await.unwrap()), "kept");
}

#[tokio::test]
async fn unacked_messages_of_a_closed_connection_are_redelivered_to_a_consumer_on_another_node() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 3).await;
    let holder = nodes[0].client().await;
    let mut held = holder.subscribe("/queue/held", client_ack(5)).await.unwrap();
    let producer = nodes[1].client().await;
    for i in 0..5 {
        producer.send_with_receipt("/queue/held", format!("m{i}"), persistent()).await.unwrap();
    }
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(held.recv_timeout(WAIT).await.unwrap());
    }
    let other = nodes[2].client().await;
    let mut waiting = other.subscribe("/queue/held", client_ack(10)).await.unwrap();
    nothing_more(&mut waiting).await;
    // Closed without acking (no DISCONNECT: the socket just goes).
    drop(held);
    drop(holder);
    let mut again = BTreeSet::new();
    for _ in 0..5 {
        let message = waiting.recv_timeout(WAIT).await.expect("redelivered on the other node");
        assert!(message.redelivered, "{} is marked redelivered", body(&message));
        let id = first.iter().find(|m| body(m) == body(&message)).expect("one of the held ones").message_id.clone();
        assert_eq!(message.message_id, id, "the same message-id as before");
        again.insert(body(&message));
        other.ack(&message).await.unwrap();
    }
    assert_eq!(again.len(), 5);
    nothing_more(&mut waiting).await;
}

#[tokio::test]
async fn nack_redelivers_across_nodes_then_dead_letters_at_max_deliveries() {
    let nats = NatsServer::start();
    let nodes = nodes_with(&nats, 3, |config| config.max_deliveries = 3).await;
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let mut on_a = a.subscribe("/queue/poison", client_ack(1)).await.unwrap();
    let mut on_b = b.subscribe("/queue/poison", client_ack(1)).await.unwrap();
    let producer = nodes[2].client().await;
    producer.send_with_receipt("/queue/poison", "bad", persistent()).await.unwrap();
    let mut deliveries = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while deliveries.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "deliveries so far: {deliveries:?}");
        for (client, subscription) in [(&a, &mut on_a), (&b, &mut on_b)] {
            if let Ok(message) = subscription.recv_timeout(Duration::from_millis(50)).await {
                deliveries.push(message.redelivered);
                client.nack(&message).await.unwrap();
            }
        }
    }
    assert_eq!(deliveries, [false, true, true], "first delivery, then two redeliveries");
    nothing_more(&mut on_a).await;
    nothing_more(&mut on_b).await;
    let dlq = nodes[2].client().await;
    let mut dead = dlq.subscribe("/queue/DLQ.poison", SubscribeOptions::new()).await.unwrap();
    let message = dead.recv_timeout(WAIT).await.expect("in the dead-letter queue");
    assert_eq!(body(&message), "bad");
    assert_eq!(message.destination, "/queue/DLQ.poison");
    assert_eq!(message.header("x-original-destination"), Some("/queue/poison"));
    assert_eq!(message.header("x-dead-letter-reason"), Some("delivery-limit"));
    nothing_more(&mut dead).await;
}

#[tokio::test]
async fn a_queue_send_while_nats_is_down_gets_an_error_never_a_receipt() {
    let mut nats = NatsServer::start();
    let nodes = nodes(&nats, 2).await;
    let consumer = nodes[1].client().await;
    let mut subscription = consumer.subscribe("/queue/outage", SubscribeOptions::new()).await.unwrap();
    nats.stop();
    wait_until_ready(&nodes[0], false).await;
    let sender = nodes[0].client().await;
    let error = sender.send_with_receipt("/queue/outage", "lost?", persistent()).await.unwrap_err();
    let error = error.server_error().expect("an ERROR frame, not a RECEIPT").clone();
    assert_eq!(error.message, "cluster engine unavailable");

    nats.restart();
    for node in &nodes {
        wait_until_ready(node, true).await;
    }
    let sender = nodes[0].client().await;
    sender.send_with_receipt("/queue/outage", "after", persistent()).await.unwrap();
    // The consumer kept its subscription through the outage.
    assert_eq!(body(&subscription.recv_timeout(WAIT * 2).await.unwrap()), "after");
    nothing_more(&mut subscription).await;
}

#[tokio::test]
async fn a_receipt_for_a_queue_send_means_jetstream_has_the_message() {
    let mut nats = NatsServer::start();
    let nodes = nodes(&nats, 2).await;
    let producer = nodes[0].client().await;
    for i in 0..20 {
        producer.send_with_receipt("/queue/stored", format!("s{i}"), persistent()).await.unwrap();
    }
    // No consumer took them; kill -9 the engine and start it again on the same store.
    nats.stop();
    nats.restart();
    for node in &nodes {
        wait_until_ready(node, true).await;
    }
    let consumer = nodes[1].client().await;
    let mut subscription = consumer.subscribe("/queue/stored", client_ack(50)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let message = subscription.recv_timeout(WAIT).await.expect("every receipted message is there");
        got.push(body(&message));
        consumer.ack(&message).await.unwrap();
    }
    assert_eq!(got, (0..20).map(|i| format!("s{i}")).collect::<Vec<_>>(), "in order");
}

#[tokio::test]
async fn an_expired_queue_message_is_never_delivered_on_any_node() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 2).await;
    let producer = nodes[0].client().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut headers = persistent();
    headers.push("expires".to_owned(), (now + 300).to_string());
    producer.send_with_receipt("/queue/ttl", "stale", headers).await.unwrap();
    producer.send_with_receipt("/queue/ttl", "fresh", persistent()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let consumer = nodes[1].client().await;
    let mut subscription = consumer.subscribe("/queue/ttl", SubscribeOptions::new()).await.unwrap();
    assert_eq!(body(&subscription.recv_timeout(WAIT).await.unwrap()), "fresh");
    nothing_more(&mut subscription).await;
}

#[tokio::test]
async fn queue_features_that_need_one_node_get_an_error_saying_they_are_single_node_only() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 1).await;
    let node = &nodes[0];
    let asks = [
        SubscribeOptions::new().header("selector", "region = 'eu'"),
        SubscribeOptions::new().header("x-priority", "5"),
        SubscribeOptions::new().header("x-exclusive", "true"),
        SubscribeOptions::new().header("browser", "true"),
    ];
    for options in asks {
        let client = node.client().await;
        let error = client.subscribe("/queue/features", options).await.unwrap_err();
        let error = error.server_error().expect("an ERROR frame").clone();
        assert!(error.message.ends_with("is single-node only for now"), "{}", error.message);
        assert!(error.body_text().contains("JetStream"), "{}", error.body_text());
    }
    let client = node.client().await;
    let transaction = client.begin().await.unwrap();
    let error = transaction.send("/queue/features", "x", Headers::new()).await;
    let closed = match error {
        Err(error) => error.server_error().cloned(),
        Ok(()) => tokio::time::timeout(WAIT, client.closed()).await.expect("told").server_error().cloned(),
    };
    let message = closed.expect("an ERROR frame").message;
    assert_eq!(message, "a SEND to a queue inside a transaction is single-node only for now");
    let client = node.client().await;
    let error = client.send_with_receipt("/amq/queue/features", "x", Headers::new()).await.unwrap_err();
    let message = error.server_error().expect("an ERROR frame").message.clone();
    assert!(message.contains("single-node only"), "{message}");
}

/// A node as the real binary joined to `nats`, ready (connected to the engine).
async fn node_binary(nats: &NatsServer, name: &str, dir: &std::path::Path) -> stampede_tests::process::BrokerProcess {
    let mut command = stampede_tests::process::BrokerProcess::command(&dir.join(name));
    command
        .env("STAMPEDE_METRICS_PUBLIC", "true")
        .env("STAMPEDE_CLUSTER__NATS_URLS", nats.url())
        .env("STAMPEDE_CLUSTER__NODE_NAME", name)
        .env("STAMPEDE_CLUSTER__ACK_WAIT_MS", "2000");
    let node = stampede_tests::process::BrokerProcess::spawn(command).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "{name} not ready:\n{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

#[tokio::test]
async fn kill_9_of_a_node_under_persistent_load_loses_no_receipted_message() {
    use std::sync::{Arc, Mutex};
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let survivors = [node_binary(&nats, "a", dir.path()).await, node_binary(&nats, "b", dir.path()).await];
    let victim = node_binary(&nats, "c", dir.path()).await;
    // A consumer on the victim that acks every other message and holds the rest when it dies.
    let victim_consumer = stampede_tests::process::connect(&victim.url()).await;
    let mut held = victim_consumer.subscribe("/queue/crash", client_ack(20)).await.unwrap();
    let acked_by_victim: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let acking = {
        let acked = Arc::clone(&acked_by_victim);
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(message) = held.recv_timeout(WAIT).await {
                n += 1;
                if n.is_multiple_of(2) && victim_consumer.ack_with_receipt(&message).await.is_ok() {
                    acked.lock().unwrap().insert(body(&message));
                }
            }
        })
    };
    let receipted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls = [survivors[0].url(), survivors[1].url(), victim.url(), survivors[0].url()];
    let mut producers = Vec::new();
    for (p, url) in urls.into_iter().enumerate() {
        let (receipted, stop) = (Arc::clone(&receipted), Arc::clone(&stop));
        producers.push(tokio::spawn(async move {
            let client = stampede_tests::process::connect(&url).await;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = format!("p{p}-{i}");
                match client.send_with_receipt("/queue/crash", text.clone(), persistent()).await {
                    Ok(_) => receipted.lock().unwrap().insert(text),
                    Err(_) => break, // its node died
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    victim.kill9().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let _ = acking.await;
    let receipted = receipted.lock().unwrap().clone();
    let acked_by_victim = acked_by_victim.lock().unwrap().clone();
    assert!(receipted.len() > 100, "the producers sent little: {}", receipted.len());

    // Drain through the survivors.
    let mut drains = Vec::new();
    for node in &survivors {
        let client = stampede_tests::process::connect(&node.url()).await;
        let subscription = client.subscribe("/queue/crash", client_ack(100)).await.unwrap();
        drains.push((client, subscription));
    }
    let mut seen: HashMap<String, Vec<bool>> = HashMap::new();
    let missing = |seen: &HashMap<String, Vec<bool>>| {
        receipted.iter().filter(|m| !seen.contains_key(*m) && !acked_by_victim.contains(*m)).count()
    };
    // The victim's held messages come back once their ack wait (2 s) runs out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while missing(&seen) > 0 && tokio::time::Instant::now() < deadline {
        for (client, subscription) in &mut drains {
            while let Ok(message) = subscription.recv_timeout(Duration::from_millis(50)).await {
                seen.entry(body(&message)).or_default().push(message.redelivered);
                client.ack(&message).await.unwrap();
            }
        }
    }
    let lost: Vec<&String> =
        receipted.iter().filter(|m| !seen.contains_key(*m) && !acked_by_victim.contains(*m)).take(10).collect();
    assert!(lost.is_empty(), "{} of {} receipted messages lost, e.g. {lost:?}", missing(&seen), receipted.len());
    let plain_duplicates: Vec<_> = seen
        .iter()
        .filter(|(_, deliveries)| deliveries.iter().filter(|redelivered| !**redelivered).count() > 1)
        .collect();
    assert!(plain_duplicates.is_empty(), "duplicates not marked redelivered: {plain_duplicates:?}");
    eprintln!(
        "kill -9 under load: {} receipted, {} acked on the victim before it died, {} drained through the survivors, {} of them redelivered, 0 lost",
        receipted.len(),
        acked_by_victim.len(),
        seen.len(),
        seen.values().filter(|d| d.iter().any(|r| *r)).count()
    );
}

#[tokio::test]
async fn a_node_shut_down_gracefully_hands_its_clients_unacked_messages_to_another_node_at_once() {
    let nats = NatsServer::start();
    let mut nodes = nodes(&nats, 2).await;
    let holder = nodes[0].client().await;
    let mut held = holder.subscribe("/queue/handover", client_ack(3)).await.unwrap();
    let producer = nodes[1].client().await;
    for i in 0..3 {
        producer.send_with_receipt("/queue/handover", format!("h{i}"), persistent()).await.unwrap();
    }
    for _ in 0..3 {
        held.recv_timeout(WAIT).await.unwrap();
    }
    let other = nodes[1].client().await;
    let mut waiting = other.subscribe("/queue/handover", client_ack(10)).await.unwrap();
    nothing_more(&mut waiting).await;
    // ack_wait_ms is 30 s: only the node giving them back makes them arrive within WAIT.
    nodes.remove(0).broker.shutdown(WAIT).await;
    let mut again = BTreeSet::new();
    for _ in 0..3 {
        let message = waiting.recv_timeout(WAIT).await.expect("handed over at once");
        assert!(message.redelivered);
        again.insert(body(&message));
    }
    assert_eq!(again.len(), 3);
}

#[tokio::test]
async fn temp_queue_request_reply_works_when_requester_and_replier_are_on_different_nodes() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 3).await;
    let (requester, responder) = (nodes[0].client().await, nodes[2].client().await);
    let mut requests = responder.subscribe("/queue/rpc", SubscribeOptions::new()).await.unwrap();
    let mut unrouted = requester.take_unrouted().expect("unrouted frames");
    let reply_to: Headers =
        [("reply-to", "/temp-queue/replies")].into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
    for i in 0..3 {
        requester.send_with_receipt("/queue/rpc", format!("ping-{i}"), reply_to.clone()).await.unwrap();
        let request = requests.recv_timeout(WAIT).await.unwrap();
        let to = request.header("reply-to").unwrap().to_owned();
        assert!(to.starts_with("/reply-queue/node-0-"), "names the requester's node instance: {to}");
        responder.send_with_receipt(&to, format!("pong-{i}"), Headers::new()).await.unwrap();
        let frame = unrouted.recv_timeout(WAIT).await.unwrap().expect("the reply, from node 2");
        assert_eq!(frame.header("subscription"), Some("/temp-queue/replies"));
        assert_eq!(frame.body.as_ref(), format!("pong-{i}").as_bytes());
    }
    // A reply queue nobody holds any more: the reply is dropped, as on one node.
    responder.send_with_receipt("/reply-queue/node-9-gone.reply-1-x", "late", Headers::new()).await.unwrap();
}
