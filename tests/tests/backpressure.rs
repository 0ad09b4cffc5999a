//! Bounded memory under any client behaviour: a subscriber that does not read fills only its
//! own outbox, then the slow-consumer policy applies; everyone else keeps working.

use std::time::Duration;

use stampede_client::{Command, Headers, SubscribeOptions};
use stampede_tests::{TestBroker, WAIT};

#[tokio::test]
async fn a_subscriber_that_never_reads_is_disconnected_and_others_keep_receiving() {
    let config = stampede_broker::Config { max_outbox_bytes: 256 * 1024, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    // The slow one subscribes over a raw socket and then never reads.
    let mut slow = broker.raw().await;
    slow.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.unwrap();
    slow.send_bytes(b"SUBSCRIBE\nid:0\ndestination:/topic/flood\nreceipt:r\n\n\0").await.unwrap();
    assert_eq!(slow.read_frame(WAIT).await.unwrap().unwrap().command, Command::Receipt);

    let healthy = broker.client().await;
    let mut healthy_sub = healthy.subscribe("/topic/flood", SubscribeOptions::new().capacity(100_000)).await.unwrap();
    let publisher = broker.client().await;
    let body = vec![b'x'; 4096];
    let total = 5_000; // 20 MiB: far beyond the slow subscriber's socket buffers and outbox.
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while received < total {
            healthy_sub.recv_timeout(WAIT).await.expect("the healthy subscriber keeps receiving");
            received += 1;
        }
        received
    });
    for _ in 0..total {
        publisher.send("/topic/flood", body.clone(), Headers::new()).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), total);
    // The broker dropped the slow subscriber: its topic now has one subscriber left.
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.broker.router().topic_subscribers("flood") != 1 {
        assert!(tokio::time::Instant::now() < deadline, "slow consumer removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reading now, the slow client finds the ERROR that says why, after what fit.
    let frames = slow.expect_closed(Duration::from_secs(10)).await.expect("closed");
    let error = frames.iter().rev().find(|f| f.command == Command::Error).expect("an ERROR at the end");
    assert!(error.header("message").unwrap().contains("max_outbox_bytes"), "{error:?}");
}

#[tokio::test]
async fn drop_oldest_policy_keeps_the_slow_subscriber_connected() {
    let config = stampede_broker::Config {
        max_outbox_bytes: 64 * 1024,
        slow_consumer_policy: stampede_broker::destination::outbox::SlowConsumerPolicy::DropOldest,
        ..stampede_broker::Config::ephemeral()
    };
    let broker = TestBroker::start_with(config).await;
    let mut slow = broker.raw().await;
    slow.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.unwrap();
    slow.send_bytes(b"SUBSCRIBE\nid:0\ndestination:/topic/lossy\nreceipt:r\n\n\0").await.unwrap();
    slow.read_frame(WAIT).await.unwrap().unwrap();
    let publisher = broker.client().await;
    for i in 0..3_000 {
        publisher.send("/topic/lossy", format!("{i:05}{}", "y".repeat(4000)), Headers::new()).await.unwrap();
    }
    publisher.send_with_receipt("/topic/lossy", "last", Headers::new()).await.unwrap();
    assert_eq!(broker.broker.router().topic_subscribers("lossy"), 1, "still subscribed");
    // It can still read, and eventually sees the newest message.
    let mut last_seen = String::new();
    while let Ok(Some(frame)) = slow.read_frame(Duration::from_secs(2)).await {
        last_seen = String::from_utf8_lossy(&frame.body).into_owned();
        if last_seen == "last" {
            break;
        }
    }
    assert_eq!(last_seen, "last");
}

#[tokio::test]
async fn a_fast_publisher_to_a_queue_without_consumers_is_bounded_by_the_queue_limit() {
    let config = stampede_broker::Config { queue_max_length: 100, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let publisher = broker.client().await;
    for i in 0..100 {
        publisher.send("/queue/bounded", format!("{i}"), Headers::new()).await.unwrap();
    }
    let error = publisher.send_with_receipt("/queue/bounded", "one too many", Headers::new()).await.unwrap_err();
    assert!(error.to_string().contains("full"), "{error}");
    assert_eq!(broker.broker.router().queue("bounded").unwrap().depth(), 100);
}

#[tokio::test]
async fn creating_queues_beyond_max_queues_is_an_error_naming_the_limit() {
    let config = stampede_broker::Config { max_queues: 3, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let client = broker.client().await;
    for name in ["a", "b", "c"] {
        client.send_with_receipt(&format!("/queue/{name}"), "x", Headers::new()).await.unwrap();
    }
    // Existing queues stay usable; a fourth name is refused.
    client.send_with_receipt("/queue/a", "again", Headers::new()).await.unwrap();
    let error = client.send_with_receipt("/queue/d", "x", Headers::new()).await.unwrap_err();
    assert!(error.to_string().contains("max_queues"), "{error}");
}

#[tokio::test]
async fn a_transaction_holding_more_body_bytes_than_allowed_is_an_error_naming_the_limit() {
    let config = stampede_broker::Config { max_transaction_bytes: 10_000, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let client = broker.client().await;
    let tx = client.begin().await.unwrap();
    tx.send("/queue/txbytes", vec![b'x'; 6_000], Headers::new()).await.unwrap();
    tx.send("/queue/txbytes", vec![b'x'; 6_000], Headers::new()).await.unwrap();
    let reason = tokio::time::timeout(WAIT, client.closed()).await.expect("the broker closes the connection");
    assert!(format!("{reason:?}").contains("max_transaction_bytes"), "{reason:?}");
}
