//! Security follow-up: wildcard subscriptions and read rules agree on what a word is, token
//! validation is as strict as configured, the WebSocket message limit follows `max_body`, and
//! `print-config` shows no password hash.
//!
//! Each test is named for the rule it proves. Users get cheap argon2 parameters so debug builds
//! stay fast.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use stampede_broker::Config;
use stampede_broker::config::{JwtConfig, UserConfig};
use stampede_broker::security::auth::hash_password_with;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{TestBroker, WAIT};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WebSocketFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const SECRET: &str = "hs256-test-secret-that-is-long-enough-0123456789";
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "stampede";

fn user(password: &str, read: &[&str], write: &[&str]) -> UserConfig {
    UserConfig {
        password_hash: hash_password_with(password, 64, 1).expect("hash"),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        vhosts: Default::default(),
        admin: false,
    }
}

/// Users: `reader` may read only `/topic/b.*`; `writer` may write every topic.
fn wildcard_config() -> Config {
    let mut config = Config::ephemeral();
    config.users.insert("reader".into(), user("r", &["/topic/b.*"], &[]));
    config.users.insert("writer".into(), user("w", &[], &["/topic/**"]));
    config
}

/// HS256 tokens with a required issuer and audience, and `leeway_secs` of tolerance.
fn jwt_config(leeway_secs: u64) -> Config {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 1;
    config.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        leeway_secs,
        ..JwtConfig::default()
    });
    config
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn signed(header: jsonwebtoken::Header, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn hs256(claims: serde_json::Value) -> String {
    signed(jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims)
}

/// Claims that pass every configured check; tests remove or change one.
fn good_claims() -> serde_json::Value {
    json!({"sub": "svc", "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

fn without(mut claims: serde_json::Value, name: &str) -> serde_json::Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn with(mut claims: serde_json::Value, name: &str, value: serde_json::Value) -> serde_json::Value {
    claims.as_object_mut().unwrap().insert(name.to_owned(), value);
    claims
}

async fn connect(broker: &TestBroker, headers: &[(&str, &str)]) -> (RawConnection, Result<Frame, String>) {
    let mut raw = broker.raw().await;
    let answer = raw.handshake(headers, WAIT).await.map_err(|e| e.to_string());
    (raw, answer)
}

async fn token_accepted(broker: &TestBroker, token: &str) -> bool {
    let (_raw, answer) = connect(broker, &[("passcode", token)]).await;
    match answer {
        Ok(frame) => frame.command == Command::Connected,
        Err(error) if error.contains("login failed") => false,
        Err(error) => panic!("unexpected answer: {error}"),
    }
}

/// Sends `frame` with a receipt and returns the RECEIPT, or the ERROR's message.
async fn with_receipt(raw: &mut RawConnection, frame: Frame) -> Result<(), String> {
    raw.send_frame(&frame.with_header("receipt", "r")).await.unwrap();
    loop {
        let Some(answer) = raw.read_frame(WAIT).await.map_err(|e| e.to_string())? else {
            return Err("no answer".into());
        };
        match answer.command {
            Command::Receipt => return Ok(()),
            Command::Error => return Err(answer.header("message").unwrap_or("").to_owned()),
            _ => continue,
        }
    }
}

fn send(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send).with_header("destination", destination).with_body(body.to_owned())
}

fn subscribe(destination: &str) -> Frame {
    Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", "s")
}

/// Whether `reader` may subscribe to `destination` (a fresh connection each time, since a
/// refusal closes it).
async fn reader_may_subscribe(broker: &TestBroker, destination: &str) -> bool {
    let (mut raw, answer) = connect(broker, &[("login", "reader"), ("passcode", "r")]).await;
    answer.expect("reader connects");
    match with_receipt(&mut raw, subscribe(destination)).await {
        Ok(()) => true,
        Err(error) if error.contains("access denied") => {
            assert!(error.contains(destination) && error.contains("read"), "{error}");
            false
        }
        Err(error) => panic!("{destination}: {error}"),
    }
}

// ------------------------------------------------------------------------------------------
// Wildcard subscriptions and read rules

#[tokio::test]
async fn a_read_rule_with_star_does_not_grant_a_wildcard_that_reaches_deeper_topics() {
    let broker = TestBroker::start_with(wildcard_config()).await;
    for (destination, allowed) in [
        ("/topic/b.x", true),
        ("/topic/b.*", true),
        ("/topic/b.x/secret", false),
        ("/topic/b.#", false),
        ("/topic/b.>", false),
        ("/topic/b.*/secret", false),
        ("/topic/b.*.*", false),
        ("/topic/b/*", false),
    ] {
        assert_eq!(reader_may_subscribe(&broker, destination).await, allowed, "{destination}");
    }

    // The subscription the rule allows stops at `/` as the rule does: it never receives
    // `/topic/b.x/secret`, which the reader may not subscribe to by name.
    let (mut reader, answer) = connect(&broker, &[("login", "reader"), ("passcode", "r")]).await;
    answer.unwrap();
    with_receipt(&mut reader, subscribe("/topic/b.*")).await.expect("allowed by /topic/b.*");
    let (mut writer, answer) = connect(&broker, &[("login", "writer"), ("passcode", "w")]).await;
    answer.unwrap();
    with_receipt(&mut writer, send("/topic/b.x/secret", "secret")).await.unwrap();
    with_receipt(&mut writer, send("/topic/b.x", "public")).await.unwrap();
    // One publisher's messages arrive in order, so a delivered secret would come first.
    let message = reader.read_frame(WAIT).await.unwrap().expect("a MESSAGE");
    assert_eq!(message.command, Command::Message);
    assert_eq!(message.header("destination"), Some("/topic/b.x"));
    assert_eq!(&message.body[..], b"public");
}

#[tokio::test]
async fn a_read_rule_with_star_allows_every_plain_topic_its_wildcard_subscription_receives() {
    // `/topic/b.*` delivers `/topic/b.x#y` (a `#` inside a word is an ordinary character), so the
    // rule that allows that subscription allows subscribing to the topic by name too.
    let broker = TestBroker::start_with(wildcard_config()).await;
    assert!(reader_may_subscribe(&broker, "/topic/b.x#y").await);
    assert!(reader_may_subscribe(&broker, "/topic/b.x>y").await);
}

#[tokio::test]
async fn a_multi_word_wildcard_needs_a_double_star_or_hash_rule() {
    let mut config = Config::ephemeral();
    config.users.insert("reader".into(), user("r", &["/topic/b.**", "/topic/c/#"], &[]));
    let broker = TestBroker::start_with(config).await;
    for (destination, allowed) in [
        ("/topic/b.#", true),
        ("/topic/b.>", true),
        ("/topic/b.*.x/*", true),
        ("/topic/c/#", true),
        ("/topic/c.#", false),
        ("/topic/#", false),
        ("/topic/*.x", false),
    ] {
        assert_eq!(reader_may_subscribe(&broker, destination).await, allowed, "{destination}");
    }
}

// ------------------------------------------------------------------------------------------
// Tokens

#[tokio::test]
async fn jwt_without_the_configured_issuer_or_audience_is_refused() {
    let broker = TestBroker::start_with(jwt_config(0)).await;
    assert!(token_accepted(&broker, &hs256(good_claims())).await, "control: every claim right");
    assert!(!token_accepted(&broker, &hs256(without(good_claims(), "iss"))).await, "no iss");
    assert!(!token_accepted(&broker, &hs256(without(good_claims(), "aud"))).await, "no aud");
    assert!(!token_accepted(&broker, &hs256(with(good_claims(), "iss", json!("https://other")))).await);
    assert!(!token_accepted(&broker, &hs256(with(good_claims(), "aud", json!("other")))).await);
}

#[tokio::test]
async fn jwt_with_not_before_in_the_future_is_refused() {
    let broker = TestBroker::start_with(jwt_config(0)).await;
    assert!(!token_accepted(&broker, &hs256(with(good_claims(), "nbf", json!(now() + 600)))).await);
    assert!(token_accepted(&broker, &hs256(with(good_claims(), "nbf", json!(now() - 5)))).await);
}

#[tokio::test]
async fn jwt_not_before_is_honoured_within_the_configured_leeway() {
    let broker = TestBroker::start_with(jwt_config(60)).await;
    assert!(token_accepted(&broker, &hs256(with(good_claims(), "nbf", json!(now() + 30)))).await);
    assert!(!token_accepted(&broker, &hs256(with(good_claims(), "nbf", json!(now() + 600)))).await);
}

#[tokio::test]
async fn jwt_with_a_critical_header_extension_is_refused() {
    let broker = TestBroker::start_with(jwt_config(0)).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["x-unknown-extension".to_owned()]);
    assert!(!token_accepted(&broker, &signed(header, &good_claims())).await);
}

// ------------------------------------------------------------------------------------------
// WebSocket message size

type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_next_frame(socket: &mut WebSocket) -> String {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("an answer in time") {
            Some(Ok(Message::Text(t))) if t.as_str() != "\n" => return t.as_str().to_owned(),
            Some(Ok(Message::Binary(b))) => return String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Close(frame))) => return format!("CLOSE {frame:?}"),
            Some(Ok(_)) => continue,
            other => return format!("END {other:?}"),
        }
    }
}

/// Sends `text` as one WebSocket message in fragments of `fragment` bytes; the last one ends
/// the message only when `finish`.
async fn send_fragments(socket: &mut WebSocket, text: &[u8], fragment: usize, finish: bool) {
    let pieces: Vec<&[u8]> = text.chunks(fragment).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let last = finish && i + 1 == pieces.len();
        let frame = WebSocketFrame::message(piece.to_vec(), opcode, last);
        socket.feed(Message::Frame(frame)).await.unwrap();
    }
    socket.flush().await.unwrap();
}

#[tokio::test]
async fn ws_max_message_size_follows_the_configured_max_body() {
    let max_body = 1 << 20;
    let config = Config { max_body, ..Config::ephemeral() };
    assert_eq!(config.effective_ws_max_message_size(), max_body + config.max_header_bytes + 64);
    let broker = TestBroker::start_with(config).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(&broker.ws_url).await.unwrap();
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    assert!(ws_next_frame(&mut socket).await.starts_with("CONNECTED"));

    // A frame with the largest body allowed still fits in one message.
    let mut largest = b"SEND\ndestination:/topic/t\nreceipt:big\n\n".to_vec();
    largest.extend(std::iter::repeat_n(b'x', max_body));
    largest.push(0);
    send_fragments(&mut socket, &largest, 256 << 10, true).await;
    let answer = ws_next_frame(&mut socket).await;
    assert!(answer.starts_with("RECEIPT"), "{}", &answer[..answer.len().min(200)]);

    // Unfinished fragments beyond one largest frame are refused, not buffered (the old limit,
    // derived from the default 4 MiB body, kept buffering).
    let unfinished = vec![b'x'; 5 * (256 << 10)];
    send_fragments(&mut socket, &unfinished, 256 << 10, false).await;
    let answer = ws_next_frame(&mut socket).await;
    assert!(answer.starts_with("ERROR") && answer.contains("ws_max_message_size"), "{answer}");
}

// ------------------------------------------------------------------------------------------
// print-config

#[test]
fn print_config_redacts_password_hashes() {
    let hash = hash_password_with("hunter2", 64, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stampede.toml");
    let file = format!(
        "max_body = 1048576\n\n[users.alice]\npassword_hash = {hash:?}\nread = [\"/topic/**\"]\n\n[jwt]\nhs256_secret = {SECRET:?}\n"
    );
    std::fs::write(&path, file).unwrap();
    let output = std::process::Command::new(stampede_tests::broker_binary())
        .arg("--config")
        .arg(&path)
        .arg("print-config")
        .output()
        .expect("the broker runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown = String::from_utf8(output.stdout).unwrap();
    assert!(!shown.contains(&hash) && !shown.contains("$argon2"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("password_hash = \"<redacted>\""), "{shown}");
    assert!(shown.contains("hs256_secret = \"<redacted>\""), "{shown}");
    assert!(shown.contains("[users.alice]") && shown.contains("/topic/**"), "the rest is shown: {shown}");
    let derived = (1 << 20) + Config::default().max_header_bytes + 64;
    assert!(shown.contains(&format!("ws_max_message_size = {derived}")), "{shown}");
}
