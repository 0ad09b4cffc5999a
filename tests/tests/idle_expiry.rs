//! Idle queues expire (issue 13; RabbitMQ's `x-expires`): a queue empty with no consumers for
//! its idle expiry is deleted and stops counting toward `max_queues`; a queue with messages or
//! consumers never is; `x-expires` on SUBSCRIBE sets it per queue; and a SEND that races the
//! deletion is never lost.

use std::time::Duration;

use stampede_broker::Config;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{TestBroker, WAIT};

/// Long enough for the sweep (every 250 ms) to have run after a 200 ms expiry.
const PAST_EXPIRY: Duration = Duration::from_millis(900);

fn expiring(ms: u64) -> Config {
    Config { queue_idle_expiry_ms: ms, ..Config::ephemeral() }
}

async fn connected(broker: &TestBroker) -> RawConnection {
    let mut raw = broker.raw().await;
    raw.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.expect("CONNECTED");
    raw
}

/// Sends `frame` with a receipt: Ok, or the ERROR's message.
async fn with_receipt(raw: &mut RawConnection, frame: Frame) -> Result<(), String> {
    raw.send_frame(&frame.with_header("receipt", "r")).await.unwrap();
    loop {
        let answer = raw.read_frame(WAIT).await.expect("an answer").expect("open");
        match answer.command {
            Command::Receipt => return Ok(()),
            Command::Error => return Err(answer.header("message").unwrap_or_default().to_owned()),
            _ => {}
        }
    }
}

fn send(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send).with_header("destination", destination).with_body(body.to_owned())
}

fn subscribe(destination: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", id)
}

fn unsubscribe(id: &str) -> Frame {
    Frame::new(Command::Unsubscribe).with_header("id", id)
}

async fn next_message(raw: &mut RawConnection) -> Frame {
    loop {
        let frame = raw.read_frame(WAIT).await.expect("a frame").expect("open");
        if frame.command == Command::Message {
            return frame;
        }
    }
}

fn exists(broker: &TestBroker, name: &str) -> bool {
    broker.broker.router().queue(name).is_some()
}

#[tokio::test]
async fn an_idle_queue_is_deleted_after_its_expiry_and_stops_counting_toward_max_queues() {
    let broker = TestBroker::start_with(Config { max_queues: 1, ..expiring(200) }).await;
    let mut raw = connected(&broker).await;
    with_receipt(&mut raw, send("/queue/typo", "x")).await.expect("the first queue");
    with_receipt(&mut raw, subscribe("/queue/typo", "s")).await.unwrap();
    assert_eq!(next_message(&mut raw).await.body, b"x"[..]);
    with_receipt(&mut raw, unsubscribe("s")).await.unwrap();
    let mut refused_client = connected(&broker).await;
    let refused =
        with_receipt(&mut refused_client, send("/queue/other", "y")).await.expect_err("max_queues is reached");
    assert!(refused.contains("max_queues"), "{refused}");

    tokio::time::sleep(PAST_EXPIRY).await;
    assert!(!exists(&broker, "typo"), "the idle queue is gone");
    with_receipt(&mut raw, send("/queue/other", "y")).await.expect("its place in max_queues is free again");
}

#[tokio::test]
async fn a_queue_with_waiting_messages_or_a_consumer_is_never_expired() {
    let broker = TestBroker::start_with(expiring(200)).await;
    let mut raw = connected(&broker).await;
    with_receipt(&mut raw, send("/queue/waiting", "kept")).await.unwrap();
    with_receipt(&mut raw, subscribe("/queue/watched", "s")).await.unwrap();
    tokio::time::sleep(PAST_EXPIRY).await;
    assert!(exists(&broker, "waiting"), "a queue holding a message stays");
    assert!(exists(&broker, "watched"), "a queue with a consumer stays");
    let mut consumer = connected(&broker).await;
    with_receipt(&mut consumer, subscribe("/queue/waiting", "s")).await.unwrap();
    assert_eq!(next_message(&mut consumer).await.body, b"kept"[..]);
}

#[tokio::test]
async fn x_expires_on_subscribe_sets_the_expiry_of_that_queue_only() {
    let broker = TestBroker::start().await;
    let mut raw = connected(&broker).await;
    with_receipt(&mut raw, subscribe("/queue/short-lived", "a").with_header("x-expires", "200")).await.unwrap();
    with_receipt(&mut raw, subscribe("/queue/long-lived", "b")).await.unwrap();
    let listed = broker.broker.router().queue("short-lived").unwrap();
    assert_eq!(listed.idle_expiry_ms(), Some(200));
    drop(listed);
    with_receipt(&mut raw, unsubscribe("a")).await.unwrap();
    with_receipt(&mut raw, unsubscribe("b")).await.unwrap();
    tokio::time::sleep(PAST_EXPIRY).await;
    assert!(!exists(&broker, "short-lived"), "x-expires deleted it");
    assert!(exists(&broker, "long-lived"), "queues without one are kept (queue_idle_expiry_ms is 0)");
}

#[tokio::test]
async fn a_bad_x_expires_is_refused_naming_the_header() {
    let broker = TestBroker::start().await;
    for value in ["0", "soon", "-5"] {
        let mut raw = connected(&broker).await;
        let refused = with_receipt(&mut raw, subscribe("/queue/q", "s").with_header("x-expires", value))
            .await
            .expect_err("refused");
        assert!(refused.contains("x-expires"), "{value}: {refused}");
    }
}

#[tokio::test]
async fn a_send_racing_the_deletion_of_an_idle_queue_is_never_lost() {
    // Expiry 1 ms: the queue is a candidate for deletion whenever it is empty and unwatched,
    // which, in this loop, is most of the time between one message and the next.
    let broker = TestBroker::start_with(expiring(1)).await;
    let mut producer = connected(&broker).await;
    let mut consumer = connected(&broker).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut rounds = 0;
    while tokio::time::Instant::now() < deadline {
        let body = format!("message {rounds}");
        with_receipt(&mut producer, send("/queue/race", &body)).await.expect("accepted");
        let id = format!("s{rounds}");
        with_receipt(&mut consumer, subscribe("/queue/race", &id)).await.unwrap();
        assert_eq!(next_message(&mut consumer).await.body, body.as_bytes(), "round {rounds}");
        with_receipt(&mut consumer, unsubscribe(&id)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rounds % 7)).await;
        rounds += 1;
    }
    assert!(rounds > 50, "only {rounds} rounds");
    tokio::time::sleep(PAST_EXPIRY).await;
    assert!(!exists(&broker, "race"), "and the queue did expire in the end");
}
