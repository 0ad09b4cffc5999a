//! The client against a real broker, when one is named.
//!
//! Set `STAMPEDE_TEST_URL` (e.g. `tcp://127.0.0.1:61613`) and optionally `STAMPEDE_TEST_WS_URL`
//! (e.g. `ws://127.0.0.1:15674/ws`), `STAMPEDE_TEST_LOGIN`, `STAMPEDE_TEST_PASSCODE`. Without
//! them each test returns at once, so `cargo test` stays self-contained; with them the same tests
//! check the client against Stampede, RabbitMQ or ActiveMQ alike (only portable behaviour is
//! asserted). Destinations are unique per test run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use stampede_client::{AckMode, Client, ClientError, Command, ConnectOptions, Frame, Headers, SubscribeOptions};

const WAIT: Duration = Duration::from_secs(5);

fn url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("skipped: set {var} to run this test against a broker");
    }
    url
}

async fn connect(url: &str) -> Client {
    let mut options = ConnectOptions::new(url).unwrap().receipt_timeout(WAIT).connect_timeout(WAIT);
    options.login = std::env::var("STAMPEDE_TEST_LOGIN").ok();
    options.passcode = std::env::var("STAMPEDE_TEST_PASSCODE").ok();
    Client::connect_with(options).await.unwrap()
}

fn unique(kind: &str, name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("/{kind}/client-test-{name}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn queue_round_trip_with_individual_acks_and_nack_redelivery() {
    let Some(url) = url("STAMPEDE_TEST_URL") else { return };
    let client = connect(&url).await;
    let queue = unique("queue", "acks");
    let options = SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(10);
    let mut subscription = client.subscribe(&queue, options).await.unwrap();
    for i in 0..3 {
        let headers: Headers = [("n", i.to_string())].into_iter().collect();
        client.send_with_receipt(&queue, format!("body {i}"), headers).await.unwrap();
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(subscription.recv_timeout(WAIT).await.unwrap());
    }
    let bodies: Vec<_> = received.iter().map(|m| m.body_str().unwrap().to_owned()).collect();
    assert_eq!(bodies, ["body 0", "body 1", "body 2"]);
    assert_eq!(received[1].header("n"), Some("1"));
    client.ack(&received[0]).await.unwrap();
    client.ack(&received[2]).await.unwrap();
    client.nack(&received[1]).await.unwrap();
    let again = subscription.recv_timeout(WAIT).await.unwrap();
    assert_eq!(again.body_str(), Some("body 1"), "the NACKed message comes back");
    client.ack_with_receipt(&again).await.unwrap();
    subscription.unsubscribe().await.unwrap();
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn transactions_commit_and_abort() {
    let Some(url) = url("STAMPEDE_TEST_URL") else { return };
    let client = connect(&url).await;
    let queue = unique("queue", "tx");
    let mut subscription = client.subscribe(&queue, SubscribeOptions::new()).await.unwrap();
    let aborted = client.begin().await.unwrap();
    aborted.send(&queue, "never", Headers::new()).await.unwrap();
    aborted.abort().await.unwrap();
    let committed = client.begin().await.unwrap();
    committed.send(&queue, "one", Headers::new()).await.unwrap();
    committed.send(&queue, "two", Headers::new()).await.unwrap();
    assert!(
        matches!(subscription.recv_timeout(Duration::from_millis(200)).await, Err(ClientError::Timeout { .. })),
        "nothing is delivered before COMMIT"
    );
    committed.commit().await.unwrap();
    assert_eq!(subscription.recv_timeout(WAIT).await.unwrap().body_str(), Some("one"));
    assert_eq!(subscription.recv_timeout(WAIT).await.unwrap().body_str(), Some("two"));
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn topic_fans_out_to_every_subscriber() {
    let Some(url) = url("STAMPEDE_TEST_URL") else { return };
    let publisher = connect(&url).await;
    let listener = connect(&url).await;
    let topic = unique("topic", "fanout");
    let mut a = listener.subscribe(&topic, SubscribeOptions::new()).await.unwrap();
    let mut b = publisher.subscribe(&topic, SubscribeOptions::new()).await.unwrap();
    publisher.send_with_receipt(&topic, "news", Headers::new()).await.unwrap();
    for subscription in [&mut a, &mut b] {
        let message = tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap();
        assert_eq!(message.body_str(), Some("news"));
        assert_eq!(message.destination, topic.as_str());
    }
    publisher.disconnect().await.unwrap();
    listener.disconnect().await.unwrap();
}

#[tokio::test]
async fn an_invalid_frame_ends_the_connection_with_a_server_error() {
    let Some(url) = url("STAMPEDE_TEST_URL") else { return };
    let client = connect(&url).await;
    // SEND without a destination is refused by every broker.
    let bad = Frame::new(Command::Send).with_header("receipt", "bad-1").with_body("x");
    let err = client.send_frame_with_receipt(bad).await.unwrap_err();
    assert!(err.server_error().is_some(), "{err}");
    let reason = tokio::time::timeout(WAIT, client.closed()).await.unwrap();
    assert!(reason.server_error().is_some(), "{reason}");
    assert!(client.last_error().is_some());
}

#[tokio::test]
async fn websocket_round_trip() {
    let Some(url) = url("STAMPEDE_TEST_WS_URL") else { return };
    let client = connect(&url).await;
    let queue = unique("queue", "ws");
    let mut subscription = client.subscribe(&queue, SubscribeOptions::new()).await.unwrap();
    let big = "x".repeat(200_000);
    client.send(&queue, "small", Headers::new()).await.unwrap();
    client.send_with_receipt(&queue, big.clone(), Headers::new()).await.unwrap();
    assert_eq!(subscription.recv_timeout(WAIT).await.unwrap().body_str(), Some("small"));
    assert_eq!(subscription.recv_timeout(WAIT).await.unwrap().body.len(), big.len());
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn heart_beats_keep_an_idle_connection_alive() {
    let Some(url) = url("STAMPEDE_TEST_URL") else { return };
    let options = ConnectOptions::new(&url).unwrap().heart_beat(100, 100).receipt_timeout(WAIT);
    let mut options = options;
    options.login = std::env::var("STAMPEDE_TEST_LOGIN").ok();
    options.passcode = std::env::var("STAMPEDE_TEST_PASSCODE").ok();
    let client = Client::connect_with(options).await.unwrap();
    eprintln!("negotiated {:?}", client.heart_beat());
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(!client.is_closed(), "closed: {:?}", client.close_reason());
    client.send_with_receipt(&unique("queue", "idle"), "still here", Headers::new()).await.unwrap();
    client.disconnect().await.unwrap();
}
