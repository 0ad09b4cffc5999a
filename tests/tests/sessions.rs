//! Sessions: CONNECT negotiation, receipts, errors, DISCONNECT (STOMP 1.2 "Connecting",
//! "Receipt", "ERROR", "DISCONNECT").

use std::time::Duration;

use stampede_client::raw::RawConnection;
use stampede_client::{Client, Command, ConnectOptions, Version};
use stampede_tests::{TestBroker, WAIT};

async fn handshake(raw: &mut RawConnection, headers: &[(&str, &str)]) -> stampede_client::Frame {
    raw.handshake(headers, WAIT).await.expect("an answer to CONNECT")
}

#[tokio::test]
async fn connected_carries_version_session_server_and_heart_beat() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    let connected = handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.header("version"), Some("1.2"));
    assert!(connected.header("session").is_some_and(|s| !s.is_empty()));
    assert!(connected.header("server").is_some_and(|s| s.starts_with("stampede/")));
    assert!(connected.header("heart-beat").is_some());
}

#[tokio::test]
async fn stomp_command_is_accepted_like_connect() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send_bytes(b"STOMP\naccept-version:1.2\nhost:/\n\n\0").await.unwrap();
    let connected = raw.read_frame(WAIT).await.unwrap().expect("CONNECTED");
    assert_eq!(connected.command, Command::Connected);
}

#[tokio::test]
async fn highest_common_version_is_chosen() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    let connected = handshake(&mut raw, &[("accept-version", "1.0,1.1"), ("host", "/")]).await;
    assert_eq!(connected.header("version"), Some("1.1"));
}

#[tokio::test]
async fn missing_accept_version_means_stomp_1_0() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send_bytes(b"CONNECT\n\n\0").await.unwrap();
    let connected = raw.read_frame(WAIT).await.unwrap().expect("CONNECTED");
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.header("version"), Some("1.0"));
}

#[tokio::test]
async fn no_common_version_is_an_error_with_a_version_header_then_close() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send_bytes(b"CONNECT\naccept-version:2.0,3.1\nhost:/\n\n\0").await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the server closes");
    let error = frames.iter().find(|f| f.command == Command::Error).expect("an ERROR");
    assert_eq!(error.header("version"), Some("1.0,1.1,1.2"));
    assert!(error.header("message").is_some());
}

#[tokio::test]
async fn any_frame_before_connect_is_an_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send_bytes(b"SEND\ndestination:/queue/a\n\nhi\0").await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the server closes");
    let error = frames.iter().find(|f| f.command == Command::Error).expect("an ERROR");
    assert!(error.header("message").unwrap().contains("CONNECT"), "{error:?}");
}

#[tokio::test]
async fn login_and_passcode_are_accepted() {
    let broker = TestBroker::start().await;
    let client = broker.client_with(|o| o.credentials("guest", "gu:est\\pass")).await;
    assert_eq!(client.version(), Version::V1_2);
}

#[tokio::test]
async fn every_frame_that_asks_gets_a_receipt() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
    let frames: &[&[u8]] = &[
        b"SUBSCRIBE\nid:s1\ndestination:/topic/r\nreceipt:r-sub\n\n\0",
        b"SEND\ndestination:/topic/r\nreceipt:r-send\n\nx\0",
        b"BEGIN\ntransaction:t\nreceipt:r-begin\n\n\0",
        b"ABORT\ntransaction:t\nreceipt:r-abort\n\n\0",
        b"UNSUBSCRIBE\nid:s1\nreceipt:r-unsub\n\n\0",
    ];
    for frame in frames {
        raw.send_bytes(frame).await.unwrap();
    }
    let mut receipts = Vec::new();
    while receipts.len() < 5 {
        let frame = raw.read_frame(WAIT).await.unwrap().expect("a frame");
        if frame.command == Command::Receipt {
            receipts.push(frame.header("receipt-id").unwrap().to_owned());
        }
    }
    assert_eq!(receipts, ["r-sub", "r-send", "r-begin", "r-abort", "r-unsub"]);
}

#[tokio::test]
async fn disconnect_with_receipt_is_answered_then_closed() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
    raw.send_bytes(b"DISCONNECT\nreceipt:bye\n\n\0").await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the server closes");
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].command, Command::Receipt);
    assert_eq!(frames[0].header("receipt-id"), Some("bye"));
}

#[tokio::test]
async fn error_carries_message_detail_and_receipt_id_then_closes() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
    raw.send_bytes(b"SEND\nreceipt:oops\n\nno destination\0").await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the server closes");
    let error = frames.last().expect("an ERROR");
    assert_eq!(error.command, Command::Error);
    assert_eq!(error.header("receipt-id"), Some("oops"));
    assert!(error.header("message").unwrap().contains("destination"));
    assert!(!error.body.is_empty(), "details in the body");
}

#[tokio::test]
async fn second_connect_is_an_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
    raw.send_bytes(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0").await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the server closes");
    assert_eq!(frames.last().unwrap().command, Command::Error);
}

#[tokio::test]
async fn server_commands_from_a_client_are_errors() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
    raw.send_bytes(b"MESSAGE\ndestination:/topic/x\n\n\0").await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the server closes");
    assert_eq!(frames.last().unwrap().command, Command::Error);
}

#[tokio::test]
async fn malformed_frames_get_an_error_naming_the_problem() {
    let broker = TestBroker::start().await;
    let cases: &[(&[u8], &str)] = &[
        (b"SEND\ndestination:/queue/a\nno colon here\n\nx\0", "colon"),
        (b"SEND\ndestination:/queue/a\ncontent-length:abc\n\nx\0", "content-length"),
        (b"SEND\ndestination:/queue/a\nbad:esc\\tape\n\nx\0", "escape"),
        (b"FROB\n\n\0", "unknown command"),
    ];
    for (bytes, expected) in cases {
        let mut raw = broker.raw().await;
        handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
        raw.send_bytes(bytes).await.unwrap();
        let frames = raw.expect_closed(WAIT).await.expect("the server closes");
        let error = frames.last().expect("an ERROR");
        assert_eq!(error.command, Command::Error);
        let text =
            format!("{} {}", error.header("message").unwrap(), String::from_utf8_lossy(&error.body)).to_lowercase();
        assert!(text.contains(expected), "{expected:?} not in {text:?}");
    }
    // The broker keeps serving everyone else.
    let client = broker.client().await;
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_body_over_the_limit_gets_an_error_naming_the_limit() {
    let config = stampede_broker::Config { max_body: 1024, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let mut raw = broker.raw().await;
    handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/")]).await;
    raw.send_bytes(b"SEND\ndestination:/queue/a\ncontent-length:5000000\n\n").await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the server closes before the body arrives");
    let error = frames.last().expect("an ERROR");
    let message = error.header("message").unwrap();
    assert!(message.contains("max_body") && message.contains("1024"), "{message}");
}

#[tokio::test]
async fn connect_must_arrive_within_the_connect_timeout() {
    let config = stampede_broker::Config { connect_timeout_ms: 200, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let mut raw = broker.raw().await;
    let frames = raw.expect_closed(WAIT).await.expect("the server closes an idle socket");
    let error = frames.last().expect("an ERROR");
    assert!(error.header("message").unwrap().contains("connect_timeout_ms"));
}

#[tokio::test]
async fn heart_beats_are_negotiated_and_sent_by_the_server() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    let connected = handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/"), ("heart-beat", "0,200")]).await;
    // Server offers 1000,1000: it sends every max(1000, 200) ms.
    assert_eq!(connected.header("heart-beat"), Some("1000,1000"));
    let started = tokio::time::Instant::now();
    let item = raw.read_item(Duration::from_secs(3)).await.unwrap().expect("a heart-beat");
    assert_eq!(item, stampede_protocol::Item::HeartBeat);
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the interval: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_grace_period() {
    let config = stampede_broker::Config { heartbeat_receive_ms: 100, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let mut raw = broker.raw().await;
    // The client promises beats every 100 ms and then says nothing.
    handshake(&mut raw, &[("accept-version", "1.2"), ("host", "/"), ("heart-beat", "100,0")]).await;
    let started = tokio::time::Instant::now();
    let frames = raw.expect_closed(WAIT).await.expect("the server gives up");
    assert!(started.elapsed() >= Duration::from_millis(200), "grace is at least 2x: {:?}", started.elapsed());
    let error = frames.last().expect("an ERROR");
    assert!(error.header("message").unwrap().contains("heart-beat"));
}

#[tokio::test]
async fn a_client_that_sends_beats_stays_connected() {
    let config = stampede_broker::Config { heartbeat_receive_ms: 100, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let options = ConnectOptions::new(&broker.tcp_url).unwrap().heart_beat(100, 0);
    let client = Client::connect_with(options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!client.is_closed());
    client.send_with_receipt("/topic/alive", "x", Default::default()).await.unwrap();
}
