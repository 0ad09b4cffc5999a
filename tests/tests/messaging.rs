//! Destinations and delivery: topics, wildcards, queues, ack modes, NACK, dead-lettering,
//! transactions, temporary queues (STOMP 1.2 "SEND", "SUBSCRIBE", "ACK", "NACK", "BEGIN").

use std::time::Duration;

use stampede_client::{AckMode, Client, Command, Frame, Headers, Message, SubscribeOptions};
use stampede_tests::{QUIET, TestBroker, WAIT};

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn body(message: &Message) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

async fn send_all(client: &Client, destination: &str, bodies: &[&str]) {
    for b in bodies {
        client.send(destination, b.to_string(), Headers::new()).await.unwrap();
    }
    client.send_with_receipt("/topic/__sync", "", Headers::new()).await.unwrap();
}

#[tokio::test]
async fn topic_delivers_every_message_to_every_subscriber_in_publish_order() {
    let broker = TestBroker::start().await;
    let (a, b, publisher) = (broker.client().await, broker.ws_client().await, broker.client().await);
    let mut sub_a = a.subscribe("/topic/news", SubscribeOptions::new()).await.unwrap();
    let mut sub_b = b.subscribe("/topic/news", SubscribeOptions::new()).await.unwrap();
    let bodies: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    for b in &bodies {
        publisher.send("/topic/news", b.clone(), Headers::new()).await.unwrap();
    }
    for sub in [&mut sub_a, &mut sub_b] {
        for expected in &bodies {
            let message = sub.recv_timeout(WAIT).await.unwrap();
            assert_eq!(&body(&message), expected);
            assert_eq!(message.destination, "/topic/news");
        }
    }
}

#[tokio::test]
async fn message_carries_destination_message_id_subscription_and_user_headers() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = client.subscribe("/topic/h", SubscribeOptions::new().id("my-sub")).await.unwrap();
    let sent = headers(&[
        ("x-custom", "a:b"),
        ("x-newline", "line1\nline2"),
        ("x-backslash", "c:\\d"),
        ("content-type", "text/plain"),
    ]);
    client.send("/topic/h", "hello", sent).await.unwrap();
    let message = sub.recv_timeout(WAIT).await.unwrap();
    assert_eq!(message.subscription, "my-sub");
    assert!(!message.message_id.is_empty());
    assert_eq!(message.header("x-custom"), Some("a:b"));
    assert_eq!(message.header("x-newline"), Some("line1\nline2"));
    assert_eq!(message.header("x-backslash"), Some("c:\\d"));
    assert_eq!(message.header("content-type"), Some("text/plain"));
    assert_eq!(message.header("content-length"), None, "the decoder consumes content-length; the body says it");
    assert!(message.ack_id.is_none(), "no ack header for ack:auto");
}

#[tokio::test]
async fn message_always_carries_content_length() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.unwrap();
    raw.send_bytes(b"SUBSCRIBE\nid:0\ndestination:/topic/cl\nreceipt:r\n\n\0").await.unwrap();
    assert_eq!(raw.read_frame(WAIT).await.unwrap().unwrap().command, Command::Receipt);
    assert!(raw.buffered().is_empty());
    // The SEND has no content-length; the MESSAGE on the wire must have one anyway.
    raw.send_bytes(b"SEND\ndestination:/topic/cl\n\nno length given\0").await.unwrap();
    let mut wire = Vec::new();
    let mut chunk = [0u8; 1024];
    while !wire.contains(&0) {
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(raw.stream_mut(), &mut chunk))
            .await
            .expect("the MESSAGE arrives")
            .unwrap();
        assert!(n > 0, "connection closed early");
        wire.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("MESSAGE\n"), "{text:?}");
    assert!(text.contains("\ncontent-length:15\n"), "{text:?}");
}

#[tokio::test]
async fn binary_bodies_with_nul_octets_arrive_intact() {
    let broker = TestBroker::start().await;
    let (subscriber, publisher) = (broker.ws_client().await, broker.client().await);
    let mut sub = subscriber.subscribe("/queue/bin", SubscribeOptions::new()).await.unwrap();
    let payload: Vec<u8> = (0..=255u8).chain([0, 0, 255, 0]).collect();
    publisher.send("/queue/bin", payload.clone(), Headers::new()).await.unwrap();
    assert_eq!(sub.recv_timeout(WAIT).await.unwrap().body.as_ref(), payload.as_slice());
}

#[tokio::test]
async fn topic_wildcards_star_matches_one_segment_hash_and_gt_match_one_or_more() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut star = client.subscribe("/topic/a.*", SubscribeOptions::new()).await.unwrap();
    let mut hash = client.subscribe("/topic/a.#", SubscribeOptions::new()).await.unwrap();
    let mut gt = client.subscribe("/topic/a.>", SubscribeOptions::new()).await.unwrap();
    send_all(&client, "/topic/a.b", &["one"]).await;
    send_all(&client, "/topic/a.b.c", &["two"]).await;
    send_all(&client, "/topic/a", &["none"]).await;
    assert_eq!(body(&star.recv_timeout(WAIT).await.unwrap()), "one");
    for sub in [&mut hash, &mut gt] {
        assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), "one");
        assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), "two");
    }
    for sub in [&mut star, &mut hash, &mut gt] {
        assert!(sub.recv_timeout(QUIET).await.is_err(), "nothing else matches");
    }
}

#[tokio::test]
async fn wildcard_subscription_sees_topics_created_after_it() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut all = client.subscribe("/topic/prices.>", SubscribeOptions::new()).await.unwrap();
    let late = broker.client().await;
    let mut exact = late.subscribe("/topic/prices.eur", SubscribeOptions::new()).await.unwrap();
    client.send("/topic/prices.eur", "1.1", Headers::new()).await.unwrap();
    client.send("/topic/prices.usd", "1.0", Headers::new()).await.unwrap();
    assert_eq!(body(&all.recv_timeout(WAIT).await.unwrap()), "1.1");
    assert_eq!(body(&all.recv_timeout(WAIT).await.unwrap()), "1.0");
    assert_eq!(body(&exact.recv_timeout(WAIT).await.unwrap()), "1.1");
}

#[tokio::test]
async fn sending_to_a_wildcard_or_unknown_prefix_is_an_error_naming_the_prefixes() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let error = client.send_with_receipt("/topic/a.*", "x", Headers::new()).await.unwrap_err();
    assert!(error.to_string().contains("wildcard"), "{error}");
    let client = broker.client().await;
    let error = client.send_with_receipt("/exchanges/amq.direct/x", "x", Headers::new()).await.unwrap_err();
    assert!(error.to_string().contains("/topic/") && error.to_string().contains("/exchange/"), "{error}");
}

#[tokio::test]
async fn queue_gives_each_message_to_exactly_one_consumer_round_robin() {
    let broker = TestBroker::start().await;
    let (c1, c2, publisher) = (broker.client().await, broker.client().await, broker.client().await);
    let mut s1 = c1.subscribe("/queue/work", SubscribeOptions::new()).await.unwrap();
    let mut s2 = c2.subscribe("/queue/work", SubscribeOptions::new()).await.unwrap();
    let bodies: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    for b in &bodies {
        publisher.send("/queue/work", b.clone(), Headers::new()).await.unwrap();
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    while got1.len() + got2.len() < 10 {
        tokio::select! {
            m = s1.recv_timeout(WAIT) => got1.push(body(&m.unwrap())),
            m = s2.recv_timeout(WAIT) => got2.push(body(&m.unwrap())),
        }
    }
    assert_eq!(got1.len(), 5, "round robin: {got1:?} {got2:?}");
    assert_eq!(got2.len(), 5);
    let mut all: Vec<String> = got1.into_iter().chain(got2).collect();
    all.sort_by_key(|b| b.parse::<u32>().unwrap());
    assert_eq!(all, bodies);
    assert!(s1.recv_timeout(QUIET).await.is_err() && s2.recv_timeout(QUIET).await.is_err());
}

#[tokio::test]
async fn queue_messages_wait_for_a_consumer() {
    let broker = TestBroker::start().await;
    let publisher = broker.client().await;
    send_all(&publisher, "/queue/later", &["a", "b", "c"]).await;
    let consumer = broker.client().await;
    let mut sub = consumer.subscribe("/queue/later", SubscribeOptions::new()).await.unwrap();
    for expected in ["a", "b", "c"] {
        assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), expected);
    }
}

#[tokio::test]
async fn amq_queue_addresses_the_same_queue_and_must_exist() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let error = client.subscribe("/amq/queue/missing", SubscribeOptions::new()).await.unwrap_err();
    assert!(error.to_string().contains("not_found"), "{error}");
    let client = broker.client().await;
    send_all(&client, "/queue/shared", &["via /queue/"]).await;
    let mut sub = client.subscribe("/amq/queue/shared", SubscribeOptions::new()).await.unwrap();
    assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), "via /queue/");
}

#[tokio::test]
async fn prefetch_count_limits_unacknowledged_deliveries() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/pf", &["1", "2", "3"]).await;
    let options = SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(1);
    let mut sub = client.subscribe("/queue/pf", options).await.unwrap();
    let first = sub.recv_timeout(WAIT).await.unwrap();
    assert!(sub.recv_timeout(QUIET).await.is_err(), "only one unacknowledged message at a time");
    client.ack(&first).await.unwrap();
    assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), "2");
}

#[tokio::test]
async fn activemq_prefetch_size_is_honoured() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/amqpf", &["1", "2"]).await;
    let options = SubscribeOptions::new().ack(AckMode::Client).header("activemq.prefetchSize", "1");
    let mut sub = client.subscribe("/queue/amqpf", options).await.unwrap();
    sub.recv_timeout(WAIT).await.unwrap();
    assert!(sub.recv_timeout(QUIET).await.is_err());
}

#[tokio::test]
async fn client_ack_is_cumulative() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/cum", &["1", "2", "3", "4"]).await;
    let mut sub = client.subscribe("/queue/cum", SubscribeOptions::new().ack(AckMode::Client)).await.unwrap();
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(sub.recv_timeout(WAIT).await.unwrap());
    }
    assert!(received.iter().all(|m| m.ack_id.is_some()), "1.2 MESSAGEs carry ack in client mode");
    client.ack(&received[2]).await.unwrap(); // covers 1, 2 and 3
    client.disconnect().await.unwrap();
    let again = broker.client().await;
    let mut sub = again.subscribe("/queue/cum", SubscribeOptions::new()).await.unwrap();
    let redelivered = sub.recv_timeout(WAIT).await.unwrap();
    assert_eq!(body(&redelivered), "4");
    assert!(redelivered.redelivered);
    assert!(sub.recv_timeout(QUIET).await.is_err());
}

#[tokio::test]
async fn client_individual_ack_covers_one_message() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/ind", &["1", "2", "3"]).await;
    let mut sub = client.subscribe("/queue/ind", SubscribeOptions::new().ack(AckMode::ClientIndividual)).await.unwrap();
    let m1 = sub.recv_timeout(WAIT).await.unwrap();
    let m2 = sub.recv_timeout(WAIT).await.unwrap();
    let m3 = sub.recv_timeout(WAIT).await.unwrap();
    client.ack(&m3).await.unwrap();
    client.ack(&m1).await.unwrap();
    drop(m2);
    client.disconnect().await.unwrap();
    let again = broker.client().await;
    let mut sub = again.subscribe("/queue/ind", SubscribeOptions::new()).await.unwrap();
    assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), "2");
    assert!(sub.recv_timeout(QUIET).await.is_err());
}

#[tokio::test]
async fn ack_forms_of_stomp_1_1_and_1_0_are_accepted() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/forms", &["1", "2"]).await;
    let options = SubscribeOptions::new().ack(AckMode::ClientIndividual).id("s");
    let mut sub = client.subscribe("/queue/forms", options).await.unwrap();
    let m1 = sub.recv_timeout(WAIT).await.unwrap();
    let m2 = sub.recv_timeout(WAIT).await.unwrap();
    // STOMP 1.1: subscription + message-id.
    client.ack_with_headers(headers(&[("subscription", "s"), ("message-id", &m1.message_id)])).await.unwrap();
    // STOMP 1.0: message-id alone.
    client.ack_with_headers(headers(&[("message-id", &m2.message_id)])).await.unwrap();
    client.disconnect().await.unwrap();
    let again = broker.client().await;
    let mut sub = again.subscribe("/queue/forms", SubscribeOptions::new()).await.unwrap();
    assert!(sub.recv_timeout(QUIET).await.is_err(), "both were acknowledged");
}

#[tokio::test]
async fn nack_redelivers_with_redelivered_true() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/nack", &["once"]).await;
    let mut sub =
        client.subscribe("/queue/nack", SubscribeOptions::new().ack(AckMode::ClientIndividual)).await.unwrap();
    let first = sub.recv_timeout(WAIT).await.unwrap();
    assert!(!first.redelivered);
    client.nack(&first).await.unwrap();
    let second = sub.recv_timeout(WAIT).await.unwrap();
    assert_eq!(body(&second), "once");
    assert!(second.redelivered);
    assert_eq!(second.message_id, first.message_id, "the same message");
}

#[tokio::test]
async fn nack_with_requeue_false_dead_letters() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/orders", &["poison"]).await;
    let mut sub =
        client.subscribe("/queue/orders", SubscribeOptions::new().ack(AckMode::ClientIndividual)).await.unwrap();
    let message = sub.recv_timeout(WAIT).await.unwrap();
    let ack_id = message.ack_id.clone().unwrap();
    client.nack_with_headers(headers(&[("id", &ack_id), ("requeue", "false")])).await.unwrap();
    assert!(sub.recv_timeout(QUIET).await.is_err(), "not redelivered");
    let mut dlq = client.subscribe("/queue/DLQ.orders", SubscribeOptions::new()).await.unwrap();
    let dead = dlq.recv_timeout(WAIT).await.unwrap();
    assert_eq!(body(&dead), "poison");
    assert_eq!(dead.header("x-original-destination"), Some("/queue/orders"));
    assert_eq!(dead.header("x-dead-letter-reason"), Some("rejected"));
}

#[tokio::test]
async fn exceeding_max_deliveries_dead_letters() {
    let config = stampede_broker::Config { max_deliveries: 2, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let client = broker.client().await;
    send_all(&client, "/queue/retry", &["flaky"]).await;
    let mut sub =
        client.subscribe("/queue/retry", SubscribeOptions::new().ack(AckMode::ClientIndividual)).await.unwrap();
    for _ in 0..2 {
        let message = sub.recv_timeout(WAIT).await.unwrap();
        client.nack(&message).await.unwrap();
    }
    assert!(sub.recv_timeout(QUIET).await.is_err());
    let mut dlq = client.subscribe("/queue/DLQ.retry", SubscribeOptions::new()).await.unwrap();
    let dead = dlq.recv_timeout(WAIT).await.unwrap();
    assert_eq!(dead.header("x-dead-letter-reason"), Some("delivery-limit"));
}

#[tokio::test]
async fn unacked_messages_go_to_another_consumer_when_their_consumer_leaves() {
    let broker = TestBroker::start().await;
    let (leaving, staying) = (broker.client().await, broker.client().await);
    let mut stay =
        staying.subscribe("/queue/handoff", SubscribeOptions::new().ack(AckMode::Client).prefetch(10)).await.unwrap();
    let mut leave =
        leaving.subscribe("/queue/handoff", SubscribeOptions::new().ack(AckMode::Client).prefetch(10)).await.unwrap();
    let publisher = broker.client().await;
    send_all(&publisher, "/queue/handoff", &["a", "b", "c", "d"]).await;
    let mut kept = Vec::new();
    let mut taken = 0;
    while kept.len() + taken < 4 {
        tokio::select! {
            m = stay.recv_timeout(WAIT) => kept.push(m.unwrap()),
            m = leave.recv_timeout(WAIT) => { m.unwrap(); taken += 1; }
        }
    }
    assert!(taken > 0);
    drop(leave);
    leaving.disconnect().await.unwrap();
    for _ in 0..taken {
        assert!(stay.recv_timeout(WAIT).await.unwrap().redelivered);
    }
}

#[tokio::test]
async fn transaction_commit_delivers_and_abort_discards() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sub = client.subscribe("/queue/tx", SubscribeOptions::new()).await.unwrap();
    let tx = client.begin().await.unwrap();
    tx.send("/queue/tx", "dropped", Headers::new()).await.unwrap();
    tx.abort().await.unwrap();
    let tx = client.begin().await.unwrap();
    tx.send("/queue/tx", "kept-1", Headers::new()).await.unwrap();
    tx.send("/queue/tx", "kept-2", Headers::new()).await.unwrap();
    assert!(sub.recv_timeout(QUIET).await.is_err(), "nothing before COMMIT");
    tx.commit().await.unwrap();
    assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), "kept-1");
    assert_eq!(body(&sub.recv_timeout(WAIT).await.unwrap()), "kept-2");
    assert!(sub.recv_timeout(QUIET).await.is_err());
}

#[tokio::test]
async fn ack_in_a_transaction_applies_at_commit() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    send_all(&client, "/queue/txack", &["m"]).await;
    let mut sub =
        client.subscribe("/queue/txack", SubscribeOptions::new().ack(AckMode::ClientIndividual)).await.unwrap();
    let message = sub.recv_timeout(WAIT).await.unwrap();
    let tx = client.begin().await.unwrap();
    tx.ack(&message).await.unwrap();
    tx.abort().await.unwrap();
    client.disconnect().await.unwrap();
    let again = broker.client().await;
    let mut sub =
        again.subscribe("/queue/txack", SubscribeOptions::new().ack(AckMode::ClientIndividual)).await.unwrap();
    let message = sub.recv_timeout(WAIT).await.unwrap();
    assert!(message.redelivered, "the aborted ACK did not count");
    let tx = again.begin().await.unwrap();
    tx.ack(&message).await.unwrap();
    tx.commit().await.unwrap();
    again.disconnect().await.unwrap();
    let last = broker.client().await;
    let mut sub = last.subscribe("/queue/txack", SubscribeOptions::new()).await.unwrap();
    assert!(sub.recv_timeout(QUIET).await.is_err());
}

#[tokio::test]
async fn unknown_or_duplicate_transactions_are_errors() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let error = client
        .send_frame_with_receipt(Frame::new(Command::Commit).with_header("transaction", "nope"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nope"), "{error}");
    let client = broker.client().await;
    client.send_frame_with_receipt(Frame::new(Command::Begin).with_header("transaction", "t1")).await.unwrap();
    let error =
        client.send_frame_with_receipt(Frame::new(Command::Begin).with_header("transaction", "t1")).await.unwrap_err();
    assert!(error.to_string().contains("already"), "{error}");
    let client = broker.client().await;
    let send = Frame::new(Command::Send).with_header("destination", "/queue/x").with_header("transaction", "ghost");
    assert!(client.send_frame_with_receipt(send).await.is_err());
}

#[tokio::test]
async fn open_transactions_abort_when_the_connection_ends() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let tx = client.begin().await.unwrap();
    tx.send("/queue/txgone", "never", Headers::new()).await.unwrap();
    std::mem::forget(tx);
    client.disconnect().await.unwrap();
    let again = broker.client().await;
    let mut sub = again.subscribe("/queue/txgone", SubscribeOptions::new()).await.unwrap();
    assert!(sub.recv_timeout(QUIET).await.is_err());
}

#[tokio::test]
async fn duplicate_subscription_id_and_unknown_unsubscribe_are_errors() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let _first = client.subscribe("/topic/x", SubscribeOptions::new().id("dup")).await.unwrap();
    let error = client.subscribe("/topic/y", SubscribeOptions::new().id("dup")).await.unwrap_err();
    assert!(error.to_string().contains("dup"), "{error}");
    let client = broker.client().await;
    let unsubscribe = Frame::new(Command::Unsubscribe).with_header("id", "never-subscribed");
    assert!(client.send_frame_with_receipt(unsubscribe).await.is_err());
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let sub = client.subscribe("/topic/u", SubscribeOptions::new().id("u1")).await.unwrap();
    sub.unsubscribe().await.unwrap();
    let mut other = client.subscribe("/topic/u", SubscribeOptions::new().id("u2")).await.unwrap();
    send_all(&client, "/topic/u", &["after"]).await;
    let message = other.recv_timeout(WAIT).await.unwrap();
    assert_eq!(message.subscription, "u2");
    assert!(other.recv_timeout(QUIET).await.is_err(), "u1 got nothing, u2 got one");
}

#[tokio::test]
async fn temp_queue_reply_to_is_rewritten_and_routes_back_to_the_requester() {
    let broker = TestBroker::start().await;
    let (requester, responder) = (broker.client().await, broker.client().await);
    let mut requests = responder.subscribe("/queue/rpc", SubscribeOptions::new()).await.unwrap();
    let mut unrouted = requester.take_unrouted().expect("unrouted frames");
    requester.send("/queue/rpc", "ping", headers(&[("reply-to", "/temp-queue/replies")])).await.unwrap();
    let request = requests.recv_timeout(WAIT).await.unwrap();
    let reply_to = request.header("reply-to").unwrap().to_owned();
    assert!(reply_to.starts_with("/reply-queue/"), "rewritten: {reply_to}");
    responder.send(&reply_to, "pong", Headers::new()).await.unwrap();
    // The requester never subscribed: the broker did, with id /temp-queue/replies.
    let frame = unrouted.recv_timeout(WAIT).await.unwrap().expect("the reply");
    assert_eq!(frame.command, Command::Message);
    assert_eq!(frame.header("subscription"), Some("/temp-queue/replies"));
    assert_eq!(frame.body.as_ref(), b"pong");
    // Gone with its connection.
    requester.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(broker.broker.router().queue(reply_to.trim_start_matches("/reply-queue/")).is_none());
}
