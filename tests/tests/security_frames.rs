//! Forged frames (security issue, items 3 and 4): no subscriber, whatever its version, receives
//! bytes that a reader of that version takes for a different header, another frame or a
//! different body; and the headers the broker owns on a MESSAGE appear once, as it set them.
//!
//! The wire matters here, not what a forgiving decoder makes of it, so subscribers read the
//! exact bytes off the socket up to the first NUL, where every reader ends a frame.

use stampede_broker::Config;
use stampede_broker::config::UserConfig;
use stampede_broker::security::auth::hash_password_with;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_protocol::unrepresentable_headers_omitted;
use stampede_tests::{QUIET, TestBroker, WAIT};
use tokio::io::AsyncReadExt;

/// A connection that negotiated `version` (and logged in with `login`, if given).
async fn connect(broker: &TestBroker, version: &str, login: Option<(&str, &str)>) -> RawConnection {
    let mut raw = broker.raw().await;
    let mut headers = vec![("accept-version", version)];
    if let Some((login, passcode)) = login {
        headers.extend([("login", login), ("passcode", passcode)]);
    }
    let connected = raw.handshake(&headers, WAIT).await.expect("CONNECTED");
    assert_eq!(connected.header("version"), Some(version));
    raw
}

/// Subscribes and waits for the receipt, so a publish after it is delivered.
async fn subscribe(raw: &mut RawConnection, destination: &str, id: &str, ack: &str) {
    let frame = format!("SUBSCRIBE\ndestination:{destination}\nid:{id}\nack:{ack}\nreceipt:sub-{id}\n\n\0");
    raw.send_bytes(frame.as_bytes()).await.unwrap();
    let receipt = raw.read_frame(WAIT).await.unwrap().expect("RECEIPT for SUBSCRIBE");
    assert_eq!(receipt.command, Command::Receipt, "{receipt:?}");
}

/// Sends a frame that asks for a receipt and waits for it.
async fn publish(raw: &mut RawConnection, frame: &[u8]) {
    raw.send_bytes(frame).await.unwrap();
    let receipt = raw.read_frame(WAIT).await.unwrap().expect("RECEIPT for SEND");
    assert_eq!(receipt.command, Command::Receipt, "{receipt:?}");
}

/// Sends `frame` and expects an ERROR whose `message` contains every one of `words`, then the
/// connection closed.
async fn refused(raw: &mut RawConnection, frame: &[u8], words: &[&str]) {
    raw.send_bytes(frame).await.unwrap();
    let frames = raw.expect_closed(WAIT).await.expect("the broker closes the connection");
    let error = frames.last().expect("an ERROR before closing");
    assert_eq!(error.command, Command::Error, "{frames:?}");
    let message = error.header("message").unwrap_or("");
    for word in words {
        assert!(message.contains(word), "ERROR message {message:?} should name {word:?}");
    }
}

/// One frame as a subscriber's socket delivered it: the head lines split at their first colon,
/// and the body.
#[derive(Debug)]
struct WireFrame {
    command: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Every byte before the NUL, for searches.
    wire: Vec<u8>,
}

impl WireFrame {
    fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    fn first(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn contains(&self, text: &str) -> bool {
        self.wire.windows(text.len()).any(|window| window == text.as_bytes())
    }
}

/// Reads the next frame's exact bytes off the socket, up to the first NUL, and checks that
/// nothing follows it (heart-beats are off): bytes after the NUL would be a second frame.
async fn next_wire_frame(raw: &mut RawConnection) -> WireFrame {
    assert!(raw.buffered().is_empty(), "the decoder holds no bytes of this frame");
    let mut wire = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wire.contains(&0) {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, raw.stream_mut().read(&mut chunk))
            .await
            .expect("a frame in time")
            .expect("read");
        assert!(read > 0, "the connection closed before a frame arrived");
        wire.extend_from_slice(&chunk[..read]);
    }
    let nul = wire.iter().position(|&b| b == 0).unwrap_or(wire.len());
    assert_eq!(&wire[nul + 1..], b"", "bytes after the NUL would read as another frame");
    wire.truncate(nul);
    parse_wire(wire)
}

fn parse_wire(wire: Vec<u8>) -> WireFrame {
    let blank = wire.windows(2).position(|w| w == b"\n\n").expect("a blank line ends the head");
    let head = String::from_utf8(wire[..blank].to_vec()).expect("UTF-8 head");
    let mut lines = head.split('\n');
    let command = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            (name.to_owned(), value.to_owned())
        })
        .collect();
    WireFrame { command, headers, body: wire[blank + 2..].to_vec(), wire }
}

/// Nothing arrives on the socket within [`QUIET`].
async fn expect_silence(raw: &mut RawConnection, who: &str) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(QUIET, raw.stream_mut().read(&mut byte)).await;
    assert!(read.is_err(), "{who} was sent something: {read:?} {byte:?}");
}

fn user(password: &str, read: &[&str], write: &[&str]) -> UserConfig {
    UserConfig {
        password_hash: hash_password_with(password, 64, 1).expect("hash"),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        vhosts: Default::default(),
        admin: false,
    }
}

/// alice may read everything; mallory may publish to `/topic/public` and `/topic/a.*` only.
fn users_config() -> Config {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 1;
    config.users.insert("alice".into(), user("wonderland", &["**"], &[]));
    config.users.insert("mallory".into(), user("forger", &[], &["/topic/public", "/topic/a.*"]));
    config
}

const ALICE: Option<(&str, &str)> = Some(("alice", "wonderland"));
const MALLORY: Option<(&str, &str)> = Some(("mallory", "forger"));

#[tokio::test]
async fn an_escaped_newline_never_reaches_a_1_0_subscriber_as_a_raw_line_feed() {
    let broker = TestBroker::start().await;
    let mut old = connect(&broker, "1.0", None).await;
    subscribe(&mut old, "/topic/feed", "old", "auto").await;
    let mut new = connect(&broker, "1.2", None).await;
    subscribe(&mut new, "/topic/feed", "new", "auto").await;
    let mut publisher = connect(&broker, "1.2", None).await;
    let omitted = unrepresentable_headers_omitted();

    publish(
        &mut publisher,
        b"SEND\ndestination:/topic/feed\nx-evil:a\\nforged:yes\\n\\nforged body\\n\nreceipt:p\n\nreal\0",
    )
    .await;

    let message = next_wire_frame(&mut old).await;
    assert_eq!(message.command, "MESSAGE");
    assert_eq!(message.names(), ["subscription", "message-id", "destination", "content-length"], "{message:?}");
    assert_eq!(message.first("destination"), Some("/topic/feed"));
    assert_eq!(message.body, b"real");
    assert!(!message.contains("forged"), "{message:?}");
    expect_silence(&mut old, "the 1.0 subscriber").await;
    assert!(unrepresentable_headers_omitted() > omitted, "the omission is counted");

    // A 1.2 subscriber can represent the header, and gets it whole.
    let message = new.read_frame(WAIT).await.unwrap().expect("MESSAGE for the 1.2 subscriber");
    assert_eq!(message.header("x-evil"), Some("a\nforged:yes\n\nforged body\n"));
    assert_eq!(&message.body[..], b"real");
}

#[tokio::test]
async fn a_header_a_stomp_1_0_subscriber_cannot_represent_is_left_out() {
    let broker = TestBroker::start().await;
    let mut old = connect(&broker, "1.0", None).await;
    subscribe(&mut old, "/topic/feed", "old", "auto").await;
    let mut new = connect(&broker, "1.2", None).await;
    subscribe(&mut new, "/topic/feed", "new", "auto").await;
    let mut publisher = connect(&broker, "1.2", None).await;
    let omitted = unrepresentable_headers_omitted();

    publish(
        &mut publisher,
        b"SEND\ndestination:/topic/feed\nx-newline:a\\nb\nx-cr:a\\rb\nx\\cy:colon in the name\nx-plain:kept\nreceipt:p\n\nbody\0",
    )
    .await;

    let message = next_wire_frame(&mut old).await;
    assert_eq!(
        message.names(),
        ["subscription", "message-id", "destination", "x-plain", "content-length"],
        "LF, CR and a colon in a name have no 1.0 form: {message:?}"
    );
    assert_eq!(message.first("x-plain"), Some("kept"));
    assert!(!message.wire.contains(&b'\r'), "no raw CR");
    assert_eq!(message.body, b"body");
    assert!(unrepresentable_headers_omitted() >= omitted + 3, "each omission is counted");

    let message = new.read_frame(WAIT).await.unwrap().expect("MESSAGE for the 1.2 subscriber");
    for (name, value) in [("x-newline", "a\nb"), ("x-cr", "a\rb"), ("x:y", "colon in the name"), ("x-plain", "kept")] {
        assert_eq!(message.header(name), Some(value), "{name}");
    }
}

#[tokio::test]
async fn a_carriage_return_never_reaches_a_stomp_1_1_subscriber() {
    let broker = TestBroker::start().await;
    let mut subscriber = connect(&broker, "1.1", None).await;
    subscribe(&mut subscriber, "/topic/feed", "s", "auto").await;
    let mut publisher = connect(&broker, "1.2", None).await;

    publish(&mut publisher, b"SEND\ndestination:/topic/feed\nx-cr:value\\r\nx-newline:a\\nb\nreceipt:p\n\nbody\0")
        .await;

    let message = next_wire_frame(&mut subscriber).await;
    assert_eq!(message.names(), ["subscription", "message-id", "destination", "x-newline", "content-length"]);
    assert_eq!(message.first("x-newline"), Some("a\\nb"), "1.1 escapes the newline");
    assert!(!message.wire.contains(&b'\r'), "no raw CR: {message:?}");
}

#[tokio::test]
async fn nul_in_a_header_is_refused_with_an_error_naming_the_header() {
    let broker = TestBroker::start().await;
    let mut subscribers = Vec::new();
    for (version, destination) in [("1.0", "/topic/t"), ("1.2", "/topic/t"), ("1.2", "/topic/secret")] {
        let mut raw = connect(&broker, version, None).await;
        subscribe(&mut raw, destination, "s", "auto").await;
        subscribers.push(raw);
    }
    let mut publisher = connect(&broker, "1.2", None).await;

    // The value hides a complete MESSAGE for /topic/secret behind a NUL.
    refused(
        &mut publisher,
        b"SEND\ndestination:/topic/t\nx-evil:a\0MESSAGE\nsubscription:s\nmessage-id:1\ndestination:/topic/secret\n\nforged\0\nreceipt:p\n\nreal\0",
        &["x-evil", "NUL"],
    )
    .await;

    for subscriber in &mut subscribers {
        expect_silence(subscriber, "a subscriber").await;
    }
}

#[tokio::test]
async fn destinations_with_control_characters_are_refused() {
    let broker = TestBroker::start().await;
    let frames: [&[u8]; 5] = [
        b"SEND\ndestination:/topic/a.\\nb\n\nbody\0",
        b"SEND\ndestination:/queue/a\\rb\n\nbody\0",
        b"SEND\ndestination:/queue/a\tb\n\nbody\0",
        b"SUBSCRIBE\ndestination:/topic/x\\ndestination:/topic/y\nid:s\n\n\0",
        b"SEND\ndestination:/queue/q\nreply-to:/temp-queue/a\\nb\n\nbody\0",
    ];
    for frame in frames {
        let mut raw = connect(&broker, "1.2", None).await;
        refused(&mut raw, frame, &["control character"]).await;
    }
    assert!(broker.broker.router().queue("a\rb").is_none() && broker.broker.router().queue("a\tb").is_none());
}

#[tokio::test]
async fn a_wildcard_permission_does_not_admit_a_destination_with_a_newline() {
    let broker = TestBroker::start_with(users_config()).await;
    let mut subscriber = connect(&broker, "1.0", ALICE).await;
    subscribe(&mut subscriber, "/topic/a.*", "wild", "auto").await;
    let mut mallory = connect(&broker, "1.2", MALLORY).await;

    // `/topic/a.*` matches one segment, and a newline does not end a segment.
    refused(
        &mut mallory,
        b"SEND\ndestination:/topic/a.x\\ndestination:/topic/secret\n\nforged\0",
        &["control character"],
    )
    .await;

    expect_silence(&mut subscriber, "the wildcard subscriber").await;
}

#[tokio::test]
async fn a_repeated_destination_header_is_not_forwarded() {
    let broker = TestBroker::start_with(users_config()).await;
    let mut subscriber = connect(&broker, "1.2", ALICE).await;
    subscribe(&mut subscriber, "/topic/public", "s", "auto").await;
    let mut mallory = connect(&broker, "1.2", MALLORY).await;

    // Mallory may write /topic/public, not /topic/secret; a reader that takes the last
    // occurrence must not see the second.
    publish(
        &mut mallory,
        b"SEND\ndestination:/topic/public\ndestination:/topic/secret\nx-dup:first\nx-dup:second\nreceipt:p\n\nhi\0",
    )
    .await;

    let message = next_wire_frame(&mut subscriber).await;
    assert_eq!(message.count("destination"), 1, "{message:?}");
    assert_eq!(message.first("destination"), Some("/topic/public"));
    assert!(!message.contains("/topic/secret"), "{message:?}");
    assert_eq!(message.count("x-dup"), 1, "any repeated header is reduced to its first entry");
    assert_eq!(message.first("x-dup"), Some("first"));

    // The same with many headers (deduplicated through a set rather than a scan).
    let filler: String = (0..40).map(|i| format!("x-fill-{i}:{i}\n")).collect();
    let frame = format!(
        "SEND\ndestination:/topic/public\n{filler}destination:/topic/secret\nx-fill-7:again\nreceipt:p2\n\nhi\0"
    );
    publish(&mut mallory, frame.as_bytes()).await;
    let message = next_wire_frame(&mut subscriber).await;
    assert_eq!(message.count("destination"), 1, "{message:?}");
    assert!(!message.contains("/topic/secret"), "{message:?}");
    assert_eq!(message.count("x-fill-7"), 1);
    assert_eq!(message.first("x-fill-7"), Some("7"));
    assert_eq!(message.headers.len(), 3 + 40 + 1, "subscription, message-id, destination, fillers, content-length");
}

#[tokio::test]
async fn broker_owned_headers_appear_once_on_a_message() {
    let broker = TestBroker::start().await;
    let mut subscriber = connect(&broker, "1.2", None).await;
    subscribe(&mut subscriber, "/queue/owned", "sub", "client-individual").await;
    let mut publisher = connect(&broker, "1.2", None).await;

    publish(
        &mut publisher,
        b"SEND\ndestination:/queue/owned\ndestination:/queue/other\nsubscription:forged\nmessage-id:forged\nack:forged\nredelivered:true\ncontent-length:2\ncontent-length:99\nreceipt:p\n\nhi\0",
    )
    .await;

    let owned = ["destination", "message-id", "subscription", "ack", "content-length"];
    let first = next_wire_frame(&mut subscriber).await;
    for name in owned {
        assert_eq!(first.count(name), 1, "{name} once: {first:?}");
    }
    assert_eq!(first.count("redelivered"), 0, "a first delivery is not redelivered: {first:?}");
    assert!(!first.contains("forged"), "{first:?}");
    assert_eq!(first.first("subscription"), Some("sub"));
    assert_eq!(first.first("destination"), Some("/queue/owned"));
    assert_eq!(first.first("content-length"), Some("2"));
    assert_eq!(first.body, b"hi");

    // The redelivery the broker marks carries `redelivered` once too.
    let ack = first.first("ack").expect("ack header");
    subscriber.send_bytes(format!("NACK\nid:{ack}\n\n\0").as_bytes()).await.unwrap();
    let again = next_wire_frame(&mut subscriber).await;
    for name in owned.into_iter().chain(["redelivered"]) {
        assert_eq!(again.count(name), 1, "{name} once: {again:?}");
    }
    assert_eq!(again.first("redelivered"), Some("true"));
    assert_eq!(again.first("message-id"), first.first("message-id"));
}

#[tokio::test]
async fn subscription_ids_and_durable_names_with_control_characters_are_refused() {
    let broker = TestBroker::start().await;
    for (id, extra) in [("a\rb", None), ("plain", Some(("x-queue-name", "q\r1")))] {
        let mut raw = broker.raw().await;
        raw.handshake(&[], WAIT).await.unwrap();
        let mut frame = Frame::new(Command::Subscribe).with_header("destination", "/topic/t").with_header("id", id);
        if let Some((name, value)) = extra {
            frame = frame.with_header("durable", "true").with_header(name, value);
        }
        raw.send_frame(&frame.with_header("receipt", "r")).await.unwrap();
        let answer = raw.read_frame(WAIT).await.unwrap().expect("an answer");
        assert_eq!(answer.command, Command::Error, "{id:?} {extra:?}");
        assert!(answer.header("message").unwrap().contains("control characters"), "{answer:?}");
    }
}
