//! How connections end, and numbers from clients that must not break them: a session whose
//! token expires ends at `exp` even when it only listens; WebSocket closes complete the close
//! handshake with a code that says what kind of error it was; huge `x-message-ttl`,
//! `expiration`, `expires`, `heart-beat`, prefetch and window values saturate instead of
//! overflowing (or are refused with an ERROR naming the header when they are not numbers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use stampede_broker::Config;
use stampede_broker::config::{JwtConfig, UserConfig};
use stampede_broker::security::auth::hash_password_with;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{TestBroker, WAIT};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const SECRET: &str = "hs256-test-secret-that-is-long-enough-0123456789";
const CONNECT: &str = "CONNECT\naccept-version:1.2\nhost:/\n\n\0";

fn hs256(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Sends `frame` with a receipt and waits for the RECEIPT, or returns the ERROR's message. The
/// bodies of MESSAGE frames that arrive first are added to `bodies`.
async fn receipted(raw: &mut RawConnection, frame: Frame, bodies: &mut Vec<String>) -> Result<(), String> {
    raw.send_frame(&frame.with_header("receipt", "r")).await.unwrap();
    loop {
        let Some(answer) = raw.read_frame(WAIT).await.map_err(|e| e.to_string())? else {
            return Err("no answer".into());
        };
        match answer.command {
            Command::Receipt => return Ok(()),
            Command::Error => return Err(answer.header("message").unwrap_or("").to_owned()),
            Command::Message => bodies.push(String::from_utf8_lossy(&answer.body).into_owned()),
            _ => continue,
        }
    }
}

/// As [`receipted`], for frames that deliver nothing.
async fn with_receipt(raw: &mut RawConnection, frame: Frame) -> Result<(), String> {
    let mut bodies = Vec::new();
    let result = receipted(raw, frame, &mut bodies).await;
    assert!(bodies.is_empty(), "unexpected deliveries: {bodies:?}");
    result
}

/// `bodies` completed with the next MESSAGE frames, up to `count`.
async fn messages(raw: &mut RawConnection, count: usize, mut bodies: Vec<String>) -> Vec<String> {
    while bodies.len() < count {
        let frame = raw.read_frame(WAIT).await.unwrap().expect("a MESSAGE in time");
        assert_eq!(frame.command, Command::Message, "{frame:?}");
        bodies.push(String::from_utf8_lossy(&frame.body).into_owned());
    }
    bodies
}

fn send(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send).with_header("destination", destination).with_body(body.to_owned())
}

fn subscribe(destination: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", id)
}

// ------------------------------------------------------------------------------------------
// Token expiry

#[tokio::test]
async fn a_session_ends_when_its_token_expires_even_if_it_sends_nothing() {
    let mut config = Config::ephemeral();
    config.jwt = Some(JwtConfig { hs256_secret: Some(SECRET.to_owned()), ..JwtConfig::default() });
    let broker = TestBroker::start_with(config).await;
    let token = hs256(json!({
        "sub": "brief", "exp": unix_now() + 2,
        "stampede": {"read": ["**"], "write": ["**"]},
    }));
    let mut raw = broker.raw().await;
    raw.handshake(&[("passcode", &token)], WAIT).await.expect("the token is valid at CONNECT");
    with_receipt(&mut raw, subscribe("/topic/news", "s")).await.expect("subscribed before expiry");
    let started = std::time::Instant::now();
    // From now on the client only listens: no SEND or SUBSCRIBE checks the token again.
    let frames = raw.expect_closed(WAIT).await.expect("the broker ends the session at exp");
    assert!(started.elapsed() < Duration::from_secs(3), "ended {:?} after subscribing", started.elapsed());
    let error = frames.iter().find(|f| f.command == Command::Error).expect("an ERROR before the close");
    assert_eq!(error.header("message"), Some("access token expired"));
}

// ------------------------------------------------------------------------------------------
// WebSocket close handshake and close codes

type Socket<S> = WebSocketStream<S>;

async fn open(broker: &TestBroker) -> Socket<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let request = broker.ws_url.as_str().into_client_request().unwrap();
    tokio_tungstenite::connect_async(request).await.expect("WebSocket handshake").0
}

/// Reads until a STOMP frame arrives (skipping heart-beats and pings) and returns its text.
async fn next_frame<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut Socket<S>) -> String {
    loop {
        let message =
            tokio::time::timeout(WAIT, socket.next()).await.expect("a message in time").expect("open").unwrap();
        match message {
            Message::Text(text) if text.as_str() == "\n" => continue,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Binary(data) => return String::from_utf8_lossy(&data).into_owned(),
            other => panic!("expected a STOMP frame, got {other:?}"),
        }
    }
}

/// Reads until the server's Close frame (skipping anything else), then checks the stream ends
/// cleanly: the close handshake completed, rather than the TCP connection dropping under it.
async fn close_frame<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut Socket<S>) -> CloseFrame {
    let frame = loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("a Close frame in time") {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(Message::Close(None))) => panic!("a Close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("the connection failed before a Close frame arrived: {error}"),
            None => panic!("the stream ended before a Close frame arrived"),
        }
    };
    match tokio::time::timeout(WAIT, socket.next()).await.expect("the stream ends after the Close") {
        None => {}
        Some(other) => panic!("expected the end of the stream after the Close, got {other:?}"),
    }
    frame
}

async fn echo_is_received<S: AsyncRead + AsyncWrite + Unpin>(mut socket: Socket<S>) {
    socket.send(Message::text(CONNECT)).await.unwrap();
    assert!(next_frame(&mut socket).await.starts_with("CONNECTED"));
    let close = CloseFrame { code: CloseCode::Normal, reason: Utf8Bytes::from_static("bye") };
    socket.send(Message::Close(Some(close))).await.unwrap();
    let echo = close_frame(&mut socket).await;
    assert_eq!(echo.code, CloseCode::Normal);
}

#[tokio::test]
async fn a_client_close_frame_is_echoed_with_its_code() {
    let broker = TestBroker::start().await;
    echo_is_received(open(&broker).await).await;
}

#[tokio::test]
async fn a_client_close_frame_is_echoed_over_wss_too() {
    let tls = throwaway_certificate();
    let config = Config { tls_cert: Some(tls.cert.clone()), tls_key: Some(tls.key.clone()), ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let addr = broker.broker.wss_addr.expect("wss listener");
    let stream = tls_connect(&tls, addr).await;
    let request = format!("wss://localhost:{}/ws", addr.port()).into_client_request().unwrap();
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await.expect("wss handshake");
    echo_is_received(socket).await;
}

#[tokio::test]
async fn a_disconnect_ends_with_a_normal_close_frame() {
    let broker = TestBroker::start().await;
    let mut socket = open(&broker).await;
    socket.send(Message::text(CONNECT)).await.unwrap();
    assert!(next_frame(&mut socket).await.starts_with("CONNECTED"));
    socket.send(Message::text("DISCONNECT\nreceipt:bye\n\n\0")).await.unwrap();
    assert!(next_frame(&mut socket).await.starts_with("RECEIPT"));
    assert_eq!(close_frame(&mut socket).await.code, CloseCode::Normal);
}

#[tokio::test]
async fn a_failed_login_closes_the_websocket_with_1008() {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 1;
    let user = UserConfig {
        password_hash: hash_password_with("right", 64, 1).expect("hash"),
        read: vec!["**".into()],
        write: vec!["**".into()],
        vhosts: Default::default(),
        admin: false,
    };
    config.users.insert("alice".into(), user);
    let broker = TestBroker::start_with(config).await;
    let mut socket = open(&broker).await;
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\nlogin:alice\npasscode:wrong\n\n\0")).await.unwrap();
    let error = next_frame(&mut socket).await;
    assert!(error.starts_with("ERROR") && error.contains("message:login failed"), "{error}");
    assert_eq!(close_frame(&mut socket).await.code, CloseCode::Policy);
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_with_1009() {
    let config = Config { ws_max_message_size: Some(1024), ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let mut socket = open(&broker).await;
    socket.send(Message::text(CONNECT)).await.unwrap();
    assert!(next_frame(&mut socket).await.starts_with("CONNECTED"));
    let body = "x".repeat(2048);
    socket.send(Message::text(format!("SEND\ndestination:/topic/big\n\n{body}\0"))).await.unwrap();
    let error = next_frame(&mut socket).await;
    assert!(error.starts_with("ERROR") && error.contains("ws_max_message_size"), "{error}");
    assert_eq!(close_frame(&mut socket).await.code, CloseCode::Size);
}

#[tokio::test]
async fn a_malformed_frame_closes_the_websocket_with_1002() {
    let broker = TestBroker::start().await;
    let mut socket = open(&broker).await;
    socket.send(Message::text(CONNECT)).await.unwrap();
    assert!(next_frame(&mut socket).await.starts_with("CONNECTED"));
    socket.send(Message::text("SEND\ndestination:/topic/a\nbad\\qescape:1\n\nx\0")).await.unwrap();
    let error = next_frame(&mut socket).await;
    assert!(error.starts_with("ERROR") && error.contains("malformed frame"), "{error}");
    assert_eq!(close_frame(&mut socket).await.code, CloseCode::Protocol);
}

#[tokio::test]
async fn server_shutdown_closes_websockets_with_1012() {
    let broker = TestBroker::start().await;
    let mut socket = open(&broker).await;
    socket.send(Message::text(CONNECT)).await.unwrap();
    assert!(next_frame(&mut socket).await.starts_with("CONNECTED"));
    let shutdown = tokio::spawn(broker.broker.shutdown(WAIT));
    let error = next_frame(&mut socket).await;
    assert!(error.starts_with("ERROR") && error.contains("server shutting down"), "{error}");
    assert_eq!(close_frame(&mut socket).await.code, CloseCode::Restart);
    shutdown.await.unwrap();
}

struct Tls {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    connector: tokio_rustls::TlsConnector,
}

fn throwaway_certificate() -> Tls {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls { _dir: dir, cert, key, connector: tokio_rustls::TlsConnector::from(Arc::new(config)) }
}

async fn tls_connect(tls: &Tls, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, tls.connector.connect(name, tcp)).await.expect("handshake in time").expect("TLS")
}

// ------------------------------------------------------------------------------------------
// Numbers from headers

#[tokio::test]
async fn a_huge_x_message_ttl_saturates_instead_of_expiring_messages_at_once() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake(&[], WAIT).await.unwrap();
    let subscription = subscribe("/queue/long-lived", "s").with_header("x-message-ttl", "18446744073709551615");
    with_receipt(&mut raw, subscription).await.expect("the ttl is accepted");
    let mut bodies = Vec::new();
    receipted(&mut raw, send("/queue/long-lived", "kept"), &mut bodies).await.expect("the message is accepted");
    assert_eq!(messages(&mut raw, 1, bodies).await, ["kept"]);
}

#[tokio::test]
async fn a_huge_expiration_does_not_expire_a_message_at_once() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake(&[], WAIT).await.unwrap();
    let sends = [
        ("expiration", "18446744073709551615"),
        ("expiration", "99999999999999999999999999"),
        ("expires", "99999999999999999999999999"),
    ];
    for (header, value) in sends {
        let frame = send("/queue/expiry", &format!("{header}={value}")).with_header(header, value);
        with_receipt(&mut raw, frame).await.unwrap_or_else(|error| panic!("{header}:{value} refused: {error}"));
    }
    let mut bodies = Vec::new();
    receipted(&mut raw, subscribe("/queue/expiry", "s"), &mut bodies).await.unwrap();
    assert_eq!(messages(&mut raw, 3, bodies).await.len(), 3, "no message expired at once");
}

#[tokio::test]
async fn an_expiration_that_is_not_a_number_is_refused_naming_the_header() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake(&[], WAIT).await.unwrap();
    let error = with_receipt(&mut raw, send("/queue/expiry", "x").with_header("expiration", "soon")).await.unwrap_err();
    assert!(error.contains("expiration"), "{error}");
}

#[tokio::test]
async fn a_huge_heart_beat_does_not_break_the_connection() {
    let broker = TestBroker::start().await;
    for heart_beat in
        ["18446744073709551615,1", "1,18446744073709551615", "99999999999999999999999,99999999999999999999999"]
    {
        let mut raw = broker.raw().await;
        raw.handshake(&[("heart-beat", heart_beat)], WAIT)
            .await
            .unwrap_or_else(|error| panic!("heart-beat:{heart_beat} refused: {error}"));
        with_receipt(&mut raw, subscribe("/topic/beat", "s")).await.unwrap();
        let mut bodies = Vec::new();
        receipted(&mut raw, send("/topic/beat", heart_beat), &mut bodies).await.unwrap();
        assert_eq!(messages(&mut raw, 1, bodies).await, [heart_beat]);
    }
}

#[tokio::test]
async fn absurd_prefetch_and_window_sizes_saturate_to_the_configured_maximum() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake(&[], WAIT).await.unwrap();
    for (index, body) in ["a", "b", "c"].into_iter().enumerate() {
        with_receipt(&mut raw, send(&format!("/queue/credit-{index}"), body)).await.unwrap();
    }
    let asks = [
        ("prefetch-count", "99999999999999999999999"),
        ("activemq.prefetchSize", "-99999999999999999999999"),
        ("consumer-window-size", "99999999999999999999999"),
    ];
    let mut bodies = Vec::new();
    for (index, (header, value)) in asks.into_iter().enumerate() {
        let frame = subscribe(&format!("/queue/credit-{index}"), &format!("s{index}"))
            .with_header("ack", "client-individual")
            .with_header(header, value);
        receipted(&mut raw, frame, &mut bodies)
            .await
            .unwrap_or_else(|error| panic!("{header}:{value} refused: {error}"));
    }
    let mut bodies = messages(&mut raw, 3, bodies).await;
    bodies.sort();
    assert_eq!(bodies, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_consumer_window_size_that_is_not_a_number_is_refused_naming_the_header() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake(&[], WAIT).await.unwrap();
    let frame = subscribe("/queue/window", "s").with_header("consumer-window-size", "lots");
    let error = with_receipt(&mut raw, frame).await.unwrap_err();
    assert!(error.contains("consumer-window-size"), "{error}");
}
