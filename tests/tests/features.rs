//! Features beyond the other brokers, each opt-in by a SUBSCRIBE header: selectors, consumer
//! priority, exclusive consumers, queue browsing (README, "Beyond other brokers").

use stampede_broker::Config;
use stampede_client::{AckMode, Client, Command, Frame, Headers, Message, SubscribeOptions, Subscription};
use stampede_tests::{QUIET, TestBroker, WAIT};

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn body(message: &Message) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

/// Sends `(body, region)` pairs with a `region` header, then waits for a receipt, so every
/// message is in its destination on return.
async fn send_regions(client: &Client, destination: &str, messages: &[(&str, &str)]) {
    for (text, region) in messages {
        client.send(destination, text.to_string(), headers(&[("region", region)])).await.unwrap();
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

/// The ERROR a SUBSCRIBE with `extra` headers gets.
async fn refused(broker: &TestBroker, destination: &str, extra: &[(&str, &str)]) -> Frame {
    let mut raw = broker.raw().await;
    raw.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.unwrap();
    let mut frame = Frame::new(Command::Subscribe).with_header("id", "0").with_header("destination", destination);
    for (name, value) in extra {
        frame = frame.with_header(*name, *value);
    }
    raw.send_frame(&frame).await.unwrap();
    let reply = raw.read_frame(WAIT).await.unwrap().expect("a reply");
    assert_eq!(reply.command, Command::Error, "{extra:?} must be refused");
    reply
}

fn client_ack(prefetch: u32) -> SubscribeOptions {
    SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(prefetch)
}

// ---------------------------------------------------------------------------------- selectors

#[tokio::test]
async fn a_queue_consumer_with_a_selector_gets_only_matching_messages_and_the_others_stay_for_other_consumers() {
    let broker = TestBroker::start().await;
    let (consumer, producer) = (broker.client().await, broker.client().await);
    let mut europe =
        consumer.subscribe("/queue/orders", SubscribeOptions::new().header("selector", "region = 'eu'")).await.unwrap();
    send_regions(&producer, "/queue/orders", &[("u1", "us"), ("e1", "eu"), ("u2", "us"), ("e2", "eu")]).await;
    assert_eq!(receive(&mut europe, 2).await, ["e1", "e2"], "unmatched messages at the head do not block");
    assert_nothing_more(&mut europe).await;
    let mut everyone = broker.client().await.subscribe("/queue/orders", SubscribeOptions::new()).await.unwrap();
    assert_eq!(receive(&mut everyone, 2).await, ["u1", "u2"], "the unmatched messages waited, in order");
}

#[tokio::test]
async fn a_topic_subscriber_with_a_selector_over_websocket_skips_non_matching_messages() {
    let broker = TestBroker::start().await;
    let subscriber = broker.ws_client().await;
    let selector = "region IN ('eu', 'apac') AND \"x-size\" BETWEEN 1 AND 10 AND NOT (tag LIKE 'test%')";
    let mut selected =
        subscriber.subscribe("/topic/prices", SubscribeOptions::new().header("selector", selector)).await.unwrap();
    let mut all = subscriber.subscribe("/topic/prices", SubscribeOptions::new()).await.unwrap();
    let producer = broker.client().await;
    let sent = [
        ("a", &[("region", "eu"), ("x-size", "5"), ("tag", "live")][..]),
        ("b", &[("region", "us"), ("x-size", "5"), ("tag", "live")][..]),
        ("c", &[("region", "apac"), ("x-size", "11"), ("tag", "live")][..]),
        ("d", &[("region", "apac"), ("x-size", "10"), ("tag", "testing")][..]),
        ("e", &[("region", "apac"), ("x-size", "1")][..]),
    ];
    for (text, pairs) in sent {
        producer.send("/topic/prices", text, headers(pairs)).await.unwrap();
    }
    assert_eq!(receive(&mut all, 5).await, ["a", "b", "c", "d", "e"]);
    // `e` has no tag: `tag LIKE 'test%'` is unknown, and so is its NOT.
    assert_eq!(receive(&mut selected, 1).await, ["a"]);
    assert_nothing_more(&mut selected).await;
}

#[tokio::test]
async fn a_bad_selector_is_refused_at_subscribe_with_an_error_naming_the_header_position_and_reason() {
    let broker = TestBroker::start().await;
    let error = refused(&broker, "/queue/q", &[("selector", "price >> 3")]).await;
    let message = error.header("message").unwrap();
    assert!(message.contains("selector"), "{message}");
    assert!(message.contains("at position 8"), "{message}");
    assert!(message.contains("expected a header name, a string or a number"), "{message}");
    let error = refused(&broker, "/topic/t", &[("selector", "region = 'eu")]).await;
    assert!(error.header("message").unwrap().contains("at position 10: string is not closed"));
}

// ---------------------------------------------------------------------------- consumer priority

#[tokio::test]
async fn higher_priority_consumers_with_credit_get_messages_first_in_either_dialect() {
    for header in ["x-priority", "activemq.priority"] {
        let broker = TestBroker::start().await;
        let (low_client, high_client) = (broker.client().await, broker.client().await);
        // The low-priority consumer attaches first: round-robin alone would start with it.
        let mut low = low_client.subscribe("/queue/work", client_ack(10).header(header, "-1")).await.unwrap();
        let mut high = high_client.subscribe("/queue/work", client_ack(2).header(header, "10")).await.unwrap();
        send_regions(&broker.client().await, "/queue/work", &[("m1", ""), ("m2", ""), ("m3", ""), ("m4", "")]).await;
        assert_eq!(receive(&mut high, 2).await, ["m1", "m2"], "{header}");
        assert_eq!(receive(&mut low, 2).await, ["m3", "m4"], "{header}: once high has no credit left");
        assert_nothing_more(&mut high).await;
    }
}

// --------------------------------------------------------------------------- exclusive consumers

#[tokio::test]
async fn one_exclusive_consumer_gets_every_message_and_the_standbys_take_over_in_order() {
    let broker = TestBroker::start().await;
    let (first_client, second_client, third_client) =
        (broker.client().await, broker.ws_client().await, broker.client().await);
    let mut first = first_client.subscribe("/queue/x", client_ack(100).header("x-exclusive", "true")).await.unwrap();
    let mut second =
        second_client.subscribe("/queue/x", client_ack(100).header("activemq.exclusive", "true")).await.unwrap();
    let mut third = third_client.subscribe("/queue/x", client_ack(100).header("x-exclusive", "true")).await.unwrap();
    let producer = broker.client().await;
    send_regions(&producer, "/queue/x", &[("m1", ""), ("m2", ""), ("m3", "")]).await;
    let got = first.recv_timeout(WAIT).await.unwrap();
    assert_eq!(body(&got), "m1");
    first_client.ack(&got).await.unwrap();
    assert_eq!(receive(&mut first, 2).await, ["m2", "m3"]);
    assert_nothing_more(&mut second).await;
    assert_nothing_more(&mut third).await;
    // The active consumer leaves holding m2 and m3 unacknowledged: the next in order gets them.
    first_client.disconnect().await.unwrap();
    let taken_over = receive(&mut second, 2).await;
    assert_eq!(taken_over, ["m2", "m3"]);
    send_regions(&producer, "/queue/x", &[("m4", "")]).await;
    assert_eq!(receive(&mut second, 1).await, ["m4"]);
    assert_nothing_more(&mut third).await;
    second_client.disconnect().await.unwrap();
    assert_eq!(receive(&mut third, 3).await, ["m2", "m3", "m4"]);
}

// -------------------------------------------------------------------------------- browsing

#[tokio::test]
async fn a_queue_browser_sees_the_waiting_messages_without_consuming_them_then_an_empty_browser_end_message() {
    let broker = TestBroker::start().await;
    let producer = broker.client().await;
    send_regions(&producer, "/queue/b", &[("m1", "eu"), ("m2", "us"), ("m3", "eu")]).await;
    let browser_client = broker.ws_client().await;
    let mut browser = browser_client
        .subscribe("/queue/b", SubscribeOptions::new().id("look").header("browser", "true"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(browser.recv_timeout(WAIT).await.expect("a browse message"));
    }
    assert_eq!(seen[..3].iter().map(body).collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    let end = &seen[3];
    assert_eq!(end.header("browser"), Some("end"));
    assert!(end.body.is_empty());
    assert_eq!(end.subscription, "look");
    assert_nothing_more(&mut browser).await;
    // The browse ended the subscription: its id is free again (and the UNSUBSCRIBE the client
    // sends when `browser` is dropped is accepted), and a selector narrows a browse.
    drop(browser);
    let mut narrowed = browser_client
        .subscribe(
            "/queue/b",
            SubscribeOptions::new().id("look").header("browser", "true").header("selector", "region = 'eu'"),
        )
        .await
        .unwrap();
    let narrowed_bodies = receive(&mut narrowed, 3).await;
    assert_eq!(narrowed_bodies, ["m1", "m3", ""]);
    let mut consumer = broker.client().await.subscribe("/queue/b", SubscribeOptions::new()).await.unwrap();
    assert_eq!(receive(&mut consumer, 3).await, ["m1", "m2", "m3"], "browsing consumed nothing");
}

#[tokio::test]
async fn browsing_a_queue_after_a_restart_shows_its_persistent_messages() {
    let broker = TestBroker::start_durable(Config::ephemeral()).await;
    let producer = broker.client().await;
    for text in ["p1", "p2"] {
        producer.send_with_receipt("/queue/kept", text, headers(&[("persistent", "true")])).await.unwrap();
    }
    drop(producer);
    let broker = broker.restart(Config::ephemeral()).await;
    let client = broker.client().await;
    let mut browser = client.subscribe("/queue/kept", SubscribeOptions::new().header("browser", "true")).await.unwrap();
    assert_eq!(receive(&mut browser, 3).await, ["p1", "p2", ""]);
    let mut consumer = client.subscribe("/queue/kept", SubscribeOptions::new()).await.unwrap();
    assert_eq!(receive(&mut consumer, 2).await, ["p1", "p2"]);
}

// ------------------------------------------------------------------------------- bad values

/// A destination, the SUBSCRIBE's extra headers, and the header the ERROR must name.
type BadValue = (&'static str, &'static [(&'static str, &'static str)], &'static str);

#[tokio::test]
async fn a_feature_header_with_a_bad_value_gets_an_error_naming_the_header() {
    let broker = TestBroker::start().await;
    let cases: [BadValue; 9] = [
        ("/queue/q", &[("x-priority", "high")], "x-priority"),
        ("/queue/q", &[("activemq.priority", "1.5")], "activemq.priority"),
        ("/queue/q", &[("x-exclusive", "yes")], "x-exclusive"),
        ("/queue/q", &[("activemq.exclusive", "1")], "activemq.exclusive"),
        ("/queue/q", &[("browser", "maybe")], "browser"),
        ("/topic/t", &[("browser", "true")], "browser"),
        ("/queue/q", &[("browser", "true"), ("browser-end", "false")], "browser-end"),
        ("/queue/q", &[("selector", "a = 1 OR")], "selector"),
        ("/topic/t", &[("durable", "true"), ("auto-delete", "false"), ("selector", "a = 1")], "selector"),
    ];
    for (destination, extra, header) in cases {
        let error = refused(&broker, destination, extra).await;
        let message = error.header("message").unwrap();
        assert!(message.contains(&format!("invalid {header}")), "{extra:?}: {message}");
    }
}
