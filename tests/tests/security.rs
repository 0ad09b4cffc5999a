//! Security (issue #5): who may connect (default posture, users, tokens, upgrade credentials),
//! what they may do (permissions per destination and virtual host), TLS, WebSocket origins,
//! secrets kept out of traces, and every limit answered with an ERROR that names it.
//!
//! Each test is named for the rule it proves. Users get cheap argon2 parameters so debug builds
//! stay fast; the broker reads the parameters from the hash, as it would for real ones.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use stampede_broker::Config;
use stampede_broker::config::{JwtConfig, RuleConfig, UserConfig};
use stampede_broker::security::auth::hash_password_with;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "hs256-test-secret-that-is-long-enough-0123456789";

fn cheap_hash(password: &str) -> String {
    hash_password_with(password, 64, 1).expect("hash")
}

fn user(password: &str, read: &[&str], write: &[&str]) -> UserConfig {
    UserConfig {
        password_hash: cheap_hash(password),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        vhosts: Default::default(),
        admin: false,
    }
}

/// A config with users alice (everything), bob (restricted) and fast failure delays.
fn users_config() -> Config {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 10;
    config.auth_failure_max_delay_ms = 40;
    config.users.insert("alice".into(), user("wonderland", &["**"], &["**"]));
    config.users.insert(
        "bob".into(),
        user("builder", &["/topic/news.*", "/queue/jobs", "/topic/all.#"], &["/queue/jobs", "/queue/out-*"]),
    );
    config
}

fn jwt_config() -> Config {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 1;
    config.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        rs256_public_key_file: Some(fixture("jwt-test-rs256.pub")),
        ..JwtConfig::default()
    });
    config
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

async fn connect(broker: &TestBroker, headers: &[(&str, &str)]) -> (RawConnection, Result<Frame, String>) {
    let mut raw = broker.raw().await;
    let answer = raw.handshake(headers, WAIT).await.map_err(|e| e.to_string());
    (raw, answer)
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

fn send(destination: &str) -> Frame {
    Frame::new(Command::Send).with_header("destination", destination).with_body("x")
}

fn subscribe(destination: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", id)
}

// ------------------------------------------------------------------------------------------
// Default posture

#[tokio::test]
async fn no_users_accepts_every_client_with_any_or_no_credentials_on_loopback() {
    let broker = TestBroker::start().await;
    assert!(broker.broker.authenticator().is_open());
    for headers in [&[][..], &[("login", "x"), ("passcode", "whatever")][..], &[("passcode", "eyJ.e30.x")][..]] {
        let (_raw, answer) = connect(&broker, headers).await;
        assert_eq!(answer.unwrap().command, Command::Connected);
    }
}

#[tokio::test]
async fn no_users_on_a_non_loopback_listener_refuses_to_start_without_allow_anonymous() {
    let config = Config { stomp_addr: "0.0.0.0:0".parse().unwrap(), ..Config::ephemeral() };
    let error = stampede_broker::start(&config).await.expect_err("must refuse to start");
    assert!(error.to_string().contains("allow-anonymous"), "{error}");

    let config = Config { allow_anonymous: true, ..config };
    let broker = stampede_broker::start(&config).await.expect("starts with allow_anonymous");
    broker.shutdown(WAIT).await;

    let config = Config { stomp_addr: "0.0.0.0:0".parse().unwrap(), ..users_config() };
    let broker = stampede_broker::start(&config).await.expect("starts with users configured");
    broker.shutdown(WAIT).await;
}

// ------------------------------------------------------------------------------------------
// Users and passwords

#[tokio::test]
async fn users_log_in_with_login_and_passcode_checked_against_argon2_hashes() {
    let broker = TestBroker::start_with(users_config()).await;
    let (_raw, answer) = connect(&broker, &[("login", "alice"), ("passcode", "wonderland")]).await;
    let connected = answer.expect("alice connects");
    assert_eq!(connected.header("user-name"), Some("alice"));
}

#[tokio::test]
async fn failed_login_is_one_error_that_does_not_say_which_part_was_wrong_and_closes() {
    let broker = TestBroker::start_with(users_config()).await;
    let mut messages = Vec::new();
    for headers in [
        &[("login", "alice"), ("passcode", "wrong")][..],
        &[("login", "mallory"), ("passcode", "wonderland")][..],
        &[][..],
        &[("login", "alice")][..],
    ] {
        let mut raw = broker.raw().await;
        let answer = raw.handshake(headers, WAIT).await;
        let error = answer.expect_err("refused").to_string();
        messages.push(error);
        raw.expect_closed(WAIT).await.expect("closed after the ERROR");
    }
    assert!(messages.iter().all(|m| m.contains("login failed")), "{messages:?}");
    // The same text whatever was wrong.
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
}

#[tokio::test]
async fn failed_logins_from_one_address_are_delayed_more_and_more() {
    let mut config = users_config();
    config.auth_failure_delay_ms = 100;
    config.auth_failure_max_delay_ms = 400;
    let broker = TestBroker::start_with(config).await;
    let mut times = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let (_raw, answer) = connect(&broker, &[("login", "alice"), ("passcode", "nope")]).await;
        assert!(answer.is_err());
        times.push(started.elapsed());
    }
    println!("failed login answer times: {times:?}");
    assert!(times[0] >= Duration::from_millis(100), "{times:?}");
    assert!(times[1] >= Duration::from_millis(200), "{times:?}");
    assert!(times[3] >= Duration::from_millis(400) && times[3] < Duration::from_millis(3000), "{times:?}");
    let ip = "127.0.0.1".parse().unwrap();
    assert_eq!(broker.broker.authenticator().failures_from(ip), 4);
    // A correct login is still accepted (after no delay of its own).
    let (_raw, answer) = connect(&broker, &[("login", "alice"), ("passcode", "wonderland")]).await;
    assert!(answer.is_ok());
}

// ------------------------------------------------------------------------------------------
// Tokens

#[tokio::test]
async fn jwt_hs256_as_passcode_grants_the_permissions_of_its_stampede_claim() {
    let broker = TestBroker::start_with(jwt_config()).await;
    let token = hs256(json!({
        "sub": "svc-1",
        "exp": now() + 600,
        "stampede": {"read": ["/topic/a.*"], "write": ["/queue/in"]},
    }));
    let (mut raw, answer) = connect(&broker, &[("login", ""), ("passcode", &token)]).await;
    assert_eq!(answer.expect("token accepted").header("user-name"), Some("svc-1"));
    with_receipt(&mut raw, subscribe("/topic/a.b", "1")).await.expect("read allowed");
    with_receipt(&mut raw, send("/queue/in")).await.expect("write allowed");
    let denied = with_receipt(&mut raw, send("/queue/other")).await.expect_err("write denied");
    assert!(denied.contains("/queue/other") && denied.contains("write"), "{denied}");
}

#[tokio::test]
async fn jwt_scope_strings_grant_permissions_rabbitmq_style() {
    let broker = TestBroker::start_with(jwt_config()).await;
    let token = hs256(json!({
        "exp": now() + 600,
        "scope": "openid stampede.read:/queue/x stampede.write:/topic/**",
    }));
    let (mut raw, answer) = connect(&broker, &[("passcode", &token)]).await;
    answer.expect("token accepted");
    with_receipt(&mut raw, subscribe("/queue/x", "1")).await.expect("read allowed");
    with_receipt(&mut raw, send("/topic/any.thing")).await.expect("write allowed");
    let denied = with_receipt(&mut raw, subscribe("/queue/y", "2")).await.expect_err("read denied");
    assert!(denied.contains("/queue/y") && denied.contains("read"), "{denied}");
}

#[tokio::test]
async fn jwt_rs256_is_checked_with_the_configured_public_key() {
    let broker = TestBroker::start_with(jwt_config()).await;
    let pem = std::fs::read(fixture("jwt-test-rs256.key")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let claims = json!({"sub": "rsa-user", "exp": now() + 600});
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap();
    let (_raw, answer) = connect(&broker, &[("passcode", &token)]).await;
    assert_eq!(answer.expect("RS256 accepted").header("user-name"), Some("rsa-user"));
}

#[tokio::test]
async fn expired_or_forged_jwt_is_login_failed() {
    let broker = TestBroker::start_with(jwt_config()).await;
    let expired = hs256(json!({"sub": "late", "exp": now() - 3600}));
    let forged = {
        let key = jsonwebtoken::EncodingKey::from_secret(b"some other secret entirely, not the broker's");
        let claims = json!({"sub": "forger", "exp": now() + 600});
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let no_exp = hs256(json!({"sub": "forever"}));
    for token in [expired, forged, no_exp] {
        let (_raw, answer) = connect(&broker, &[("passcode", &token)]).await;
        assert!(answer.expect_err("refused").contains("login failed"));
    }
}

// ------------------------------------------------------------------------------------------
// Permissions

#[tokio::test]
async fn denied_send_is_an_error_naming_the_destination_and_the_operation() {
    let broker = TestBroker::start_with(users_config()).await;
    let (mut raw, answer) = connect(&broker, &[("login", "bob"), ("passcode", "builder")]).await;
    answer.unwrap();
    with_receipt(&mut raw, send("/queue/jobs")).await.expect("allowed");
    with_receipt(&mut raw, send("/queue/out-eu")).await.expect("allowed by /queue/out-*");
    let error = with_receipt(&mut raw, send("/queue/payroll")).await.expect_err("denied");
    assert!(error.contains("access denied") && error.contains("write") && error.contains("/queue/payroll"), "{error}");
    raw.expect_closed(WAIT).await.expect("closed after the ERROR");
}

#[tokio::test]
async fn denied_subscribe_is_an_error_naming_the_destination_and_the_operation() {
    let broker = TestBroker::start_with(users_config()).await;
    let (mut raw, answer) = connect(&broker, &[("login", "bob"), ("passcode", "builder")]).await;
    answer.unwrap();
    let error = with_receipt(&mut raw, subscribe("/queue/payroll", "1")).await.expect_err("denied");
    assert!(error.contains("read") && error.contains("/queue/payroll"), "{error}");
}

#[tokio::test]
async fn permission_patterns_star_is_one_element_and_double_star_or_hash_is_anything() {
    let broker = TestBroker::start_with(users_config()).await;
    let bob = [("login", "bob"), ("passcode", "builder")];
    let cases = [
        ("/topic/news.uk", true),
        ("/topic/news.*", true),
        ("/topic/news.uk.london", false),
        ("/topic/news.#", false),
        ("/topic/all.a.b.c", true),
        ("/topic/all.#", true),
        ("/amq/queue/jobs", true),
        ("/queue/jobs2", false),
    ];
    for (destination, allowed) in cases {
        let (mut raw, answer) = connect(&broker, &bob).await;
        answer.unwrap();
        let result = with_receipt(&mut raw, subscribe(destination, "s")).await;
        // /amq/queue/jobs needs the queue to exist; an ERROR other than access denied is fine.
        let denied = matches!(&result, Err(e) if e.contains("access denied"));
        assert_eq!(!denied, allowed, "{destination}: {result:?}");
    }
}

#[tokio::test]
async fn transactional_sends_are_checked_when_sent_not_when_committed() {
    let broker = TestBroker::start_with(users_config()).await;
    let (mut raw, answer) = connect(&broker, &[("login", "bob"), ("passcode", "builder")]).await;
    answer.unwrap();
    with_receipt(&mut raw, Frame::new(Command::Begin).with_header("transaction", "t")).await.unwrap();
    let error = with_receipt(&mut raw, send("/queue/payroll").with_header("transaction", "t")).await.unwrap_err();
    assert!(error.contains("/queue/payroll"), "{error}");
}

#[tokio::test]
async fn permissions_apply_per_virtual_host_from_the_connect_host_header() {
    let mut config = users_config();
    let mut carol = user("c", &[], &[]);
    carol.vhosts.insert("prod".into(), RuleConfig { read: vec!["**".into()], write: vec!["/queue/prod".into()] });
    carol.vhosts.insert("dev".into(), RuleConfig { read: vec!["**".into()], write: vec!["**".into()] });
    config.users.insert("carol".into(), carol);
    let broker = TestBroker::start_with(config).await;

    let (mut raw, answer) = connect(&broker, &[("login", "carol"), ("passcode", "c"), ("host", "prod")]).await;
    answer.expect("prod allowed");
    with_receipt(&mut raw, send("/queue/prod")).await.expect("allowed in prod");
    let error = with_receipt(&mut raw, send("/queue/x")).await.expect_err("denied in prod");
    assert!(error.contains("/queue/x"), "{error}");

    let (mut raw, answer) = connect(&broker, &[("login", "carol"), ("passcode", "c"), ("host", "dev")]).await;
    answer.expect("dev allowed");
    with_receipt(&mut raw, send("/queue/x")).await.expect("allowed in dev");

    let (_raw, answer) = connect(&broker, &[("login", "carol"), ("passcode", "c"), ("host", "/")]).await;
    let error = answer.expect_err("vhost / not listed for carol");
    assert!(error.contains("virtual host"), "{error}");
}

// ------------------------------------------------------------------------------------------
// TLS

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

fn tls_config(tls: &Tls) -> Config {
    Config { tls_cert: Some(tls.cert.clone()), tls_key: Some(tls.key.clone()), ..Config::ephemeral() }
}

async fn tls_connect(tls: &Tls, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, tls.connector.connect(name, tcp)).await.expect("handshake in time").expect("TLS")
}

/// Writes `bytes` and reads up to the first NUL (one frame).
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> String {
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while tokio::time::timeout(WAIT, stream.read_exact(&mut byte)).await.expect("answer in time").is_ok() {
        if byte[0] == 0 {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn stomp_over_tls_works_with_a_certificate_from_files() {
    let tls = throwaway_certificate();
    let broker = TestBroker::start_with(tls_config(&tls)).await;
    let addr = broker.broker.stomp_tls_addr.expect("TLS listener");
    let mut stream = tls_connect(&tls, addr).await;
    let answer = exchange(&mut stream, b"CONNECT\naccept-version:1.2\nhost:/\n\n\0").await;
    assert!(answer.starts_with("CONNECTED"), "{answer}");
    // The plain listener is still open without require_tls.
    assert!(broker.broker.plain_listeners);
}

#[tokio::test]
async fn secure_websocket_works_with_a_certificate_from_files() {
    let tls = throwaway_certificate();
    let broker = TestBroker::start_with(tls_config(&tls)).await;
    let addr = broker.broker.wss_addr.expect("wss listener");
    let stream = tls_connect(&tls, addr).await;
    let request = format!("wss://localhost:{}/ws", addr.port()).into_client_request().unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(request, stream).await.expect("wss handshake");
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    let reply = tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap();
    assert!(reply.to_text().unwrap().starts_with("CONNECTED"), "{reply:?}");
}

#[tokio::test]
async fn require_tls_closes_the_plain_listeners() {
    let tls = throwaway_certificate();
    let config = Config { require_tls: true, ..tls_config(&tls) };
    let broker = TestBroker::start_with(config).await;
    assert!(!broker.broker.plain_listeners);
    assert_eq!(Some(broker.broker.stomp_addr), broker.broker.stomp_tls_addr);
    // Plain STOMP on the only STOMP port gets no CONNECTED.
    let mut plain = TcpStream::connect(broker.broker.stomp_addr).await.unwrap();
    plain.write_all(b"CONNECT\naccept-version:1.2\n\n\0").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, plain.read(&mut buf)).await.expect("closed in time");
    assert!(!String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).contains("CONNECTED"));
    // require_tls without a certificate does not start.
    let error = stampede_broker::start(&Config { require_tls: true, ..Config::ephemeral() }).await.unwrap_err();
    assert!(error.to_string().contains("require_tls"), "{error}");
}

#[tokio::test]
async fn a_stalled_tls_handshake_does_not_block_the_accept_loop_and_is_cut_at_the_connect_timeout() {
    let tls = throwaway_certificate();
    let config = Config { connect_timeout_ms: 1000, ..tls_config(&tls) };
    let broker = TestBroker::start_with(config).await;
    let addr = broker.broker.stomp_tls_addr.unwrap();
    let mut stalled: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x16\x03\x01").await.unwrap(); // the start of a ClientHello, then silence
        stalled.push(s);
    }
    let started = Instant::now();
    let mut stream = tls_connect(&tls, addr).await;
    let answer = exchange(&mut stream, b"CONNECT\naccept-version:1.2\nhost:/\n\n\0").await;
    assert!(answer.starts_with("CONNECTED"));
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(4), stalled[0].read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "stalled handshake cut: {closed:?}");
}

// ------------------------------------------------------------------------------------------
// WebSocket: origins, upgrade credentials, message size

async fn ws_open(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>, String> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.map(|(s, _)| s).map_err(|e| e.to_string())
}

async fn ws_first_frame(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> String {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("in time") {
            Some(Ok(Message::Text(t))) if t.as_str() != "\n" => return t.as_str().to_owned(),
            Some(Ok(Message::Binary(b))) => return String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Close(frame))) => return format!("CLOSE {frame:?}"),
            Some(Ok(_)) => continue,
            other => return format!("END {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_origin_not_in_the_allow_list_is_refused_with_403() {
    let config = Config { ws_allowed_origins: vec!["https://app.example".into()], ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let refused = ws_open(&broker.ws_url, &[("origin", "https://evil.example")]).await.expect_err("refused");
    assert!(refused.contains("403"), "{refused}");
    ws_open(&broker.ws_url, &[("origin", "https://app.example")]).await.expect("allowed origin");
    ws_open(&broker.ws_url, &[("origin", "HTTPS://APP.EXAMPLE/")]).await.expect("case and slash ignored");
    ws_open(&broker.ws_url, &[]).await.expect("no Origin (not a browser) is allowed");
}

#[tokio::test]
async fn websocket_empty_origin_list_allows_every_origin() {
    let broker = TestBroker::start().await;
    ws_open(&broker.ws_url, &[("origin", "https://anything.example")]).await.expect("allowed");
}

#[tokio::test]
async fn websocket_upgrade_credentials_basic_and_bearer_replace_connect_login() {
    let mut config = users_config();
    config.jwt = jwt_config().jwt;
    let broker = TestBroker::start_with(config).await;
    use base64::Engine;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:wonderland"));
    let mut socket = ws_open(&broker.ws_url, &[("authorization", &basic)]).await.unwrap();
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    let answer = ws_first_frame(&mut socket).await;
    assert!(answer.starts_with("CONNECTED") && answer.contains("user-name:alice"), "{answer}");

    let token = hs256(json!({"sub": "bearer-user", "exp": now() + 60}));
    let bearer = format!("Bearer {token}");
    let mut socket = ws_open(&broker.ws_url, &[("authorization", &bearer)]).await.unwrap();
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    let answer = ws_first_frame(&mut socket).await;
    assert!(answer.contains("user-name:bearer-user"), "{answer}");

    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:nope"));
    let mut socket = ws_open(&broker.ws_url, &[("authorization", &wrong)]).await.unwrap();
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    assert!(ws_first_frame(&mut socket).await.contains("login failed"));
}

#[tokio::test]
async fn websocket_message_over_ws_max_message_size_is_an_error_naming_it_then_close() {
    let config = Config { ws_max_message_size: Some(4096), ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let mut socket = ws_open(&broker.ws_url, &[]).await.unwrap();
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    assert!(ws_first_frame(&mut socket).await.starts_with("CONNECTED"));
    let big = format!("SEND\ndestination:/queue/a\n\n{}\0", "x".repeat(10_000));
    socket.send(Message::text(big)).await.unwrap();
    let answer = ws_first_frame(&mut socket).await;
    assert!(answer.starts_with("ERROR") && answer.contains("ws_max_message_size"), "{answer}");
    // Then the socket closes.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok());
}

// ------------------------------------------------------------------------------------------
// Secrets in traces

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn passcodes_and_authorization_never_reach_trace_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Every task of this current-thread runtime runs on this thread, so a thread default
    // captures the broker's traces.
    let _guard = tracing::subscriber::set_default(subscriber);

    let broker = TestBroker::start_with(users_config()).await;
    let secret = "pa55-SECRET-7f3a9";
    let (_raw, answer) = connect(&broker, &[("login", "alice"), ("passcode", secret)]).await;
    assert!(answer.is_err());
    let (_raw, answer) = connect(&broker, &[("login", "alice"), ("passcode", "wonderland")]).await;
    answer.unwrap();
    use base64::Engine;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}")));
    if let Ok(mut socket) = ws_open(&broker.ws_url, &[("authorization", &basic)]).await {
        socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
        let _ = ws_first_frame(&mut socket).await;
    }
    broker.broker.shutdown(WAIT).await;

    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(text.contains("frame received") && text.contains("CONNECT"), "TRACE output was captured:\n{text}");
    assert!(text.contains("passcode:<redacted>"), "{text}");
    assert!(!text.contains(secret), "the passcode leaked into the trace:\n{text}");
    assert!(!text.contains("wonderland"), "the passcode leaked into the trace:\n{text}");
}

// ------------------------------------------------------------------------------------------
// Limits

async fn error_of(raw: &mut RawConnection) -> String {
    let frames = raw.expect_closed(WAIT).await.expect("closed");
    let error = frames.iter().find(|f| f.command == Command::Error).expect("an ERROR");
    error.header("message").unwrap_or("").to_owned()
}

#[tokio::test]
async fn frame_limits_are_errors_naming_their_config_keys() {
    let config =
        Config { max_header_line: 256, max_headers: 8, max_header_bytes: 1024, max_body: 1024, ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let long_line = format!("SEND\ndestination:/queue/a\nx:{}\n\n\0", "y".repeat(300));
    let many: String = (0..20).map(|i| format!("h{i}:v\n")).collect();
    let many = format!("SEND\ndestination:/queue/a\n{many}\n\0");
    let head: String = (0..7).map(|i| format!("h{i}:{}\n", "v".repeat(200))).collect();
    let head = format!("SEND\ndestination:/queue/a\n{head}\n\0");
    let body = format!("SEND\ndestination:/queue/a\n\n{}\0", "b".repeat(2000));
    for (input, key) in
        [(long_line, "max_header_line"), (many, "max_headers"), (head, "max_header_bytes"), (body, "max_body")]
    {
        let mut raw = broker.raw().await;
        raw.handshake(&[], WAIT).await.unwrap();
        raw.send_bytes(input.as_bytes()).await.unwrap();
        let message = error_of(&mut raw).await;
        assert!(message.contains(key), "{key}: {message}");
    }
    // Everyone else is unaffected.
    let client = broker.client().await;
    client.send_with_receipt("/queue/a", "fine", Default::default()).await.unwrap();
}

#[tokio::test]
async fn max_connections_is_an_error_naming_it_and_others_are_unaffected() {
    let broker = TestBroker::start_with(Config { max_connections: 3, ..Config::ephemeral() }).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let (raw, answer) = connect(&broker, &[]).await;
        answer.unwrap();
        open.push(raw);
    }
    let mut refused = broker.raw().await;
    assert!(error_of(&mut refused).await.contains("max_connections"));
    let mut first = open.remove(0);
    with_receipt(&mut first, send("/queue/a")).await.expect("existing connections still work");
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_raw, answer) = connect(&broker, &[]).await;
    answer.expect("a slot was freed");
}

#[tokio::test]
async fn max_connections_per_ip_is_an_error_naming_it_and_releases_on_close() {
    let config = Config { max_connections_per_ip: 2, max_connections_per_ip_loopback: true, ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let (a, answer) = connect(&broker, &[]).await;
    answer.unwrap();
    let (_b, answer) = connect(&broker, &[]).await;
    answer.unwrap();
    let mut refused = broker.raw().await;
    let message = error_of(&mut refused).await;
    assert!(message.contains("max_connections_per_ip"), "{message}");
    // WebSocket connections count against the same address.
    let mut socket = ws_open(&broker.ws_url, &[]).await.unwrap();
    assert!(ws_first_frame(&mut socket).await.contains("max_connections_per_ip"));
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(broker.broker.connections_from("127.0.0.1".parse().unwrap()), 1);
    let (_c, answer) = connect(&broker, &[]).await;
    answer.expect("the count was released");
}

#[tokio::test]
async fn max_subscriptions_per_connection_is_an_error_naming_it() {
    let broker = TestBroker::start_with(Config { max_subscriptions_per_connection: 2, ..Config::ephemeral() }).await;
    let (mut raw, answer) = connect(&broker, &[]).await;
    answer.unwrap();
    with_receipt(&mut raw, subscribe("/topic/a", "1")).await.unwrap();
    with_receipt(&mut raw, subscribe("/topic/b", "2")).await.unwrap();
    let error = with_receipt(&mut raw, subscribe("/topic/c", "3")).await.unwrap_err();
    assert!(error.contains("max_subscriptions_per_connection"), "{error}");
}

#[tokio::test]
async fn slowloris_connect_one_byte_at_a_time_is_cut_at_connect_timeout() {
    let broker = TestBroker::start_with(Config { connect_timeout_ms: 800, ..Config::ephemeral() }).await;
    let mut raw = broker.raw().await;
    let started = Instant::now();
    let connect = b"CONNECT\naccept-version:1.2\nhost:/\nx-padding:aaaaaaaaaaaaaaaaaaaaaaaa\n\n\0";
    let mut message = None;
    for byte in connect.iter() {
        if raw.send_bytes(&[*byte]).await.is_err() {
            break;
        }
        match raw.read_frame(Duration::from_millis(100)).await {
            Ok(Some(frame)) if frame.command == Command::Error => {
                message = frame.header("message").map(str::to_owned);
                break;
            }
            Ok(Some(frame)) => panic!("unexpected {frame:?}"),
            Ok(None) => {}
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "cut after {elapsed:?}");
    assert!(message.as_deref().is_some_and(|m| m.contains("connect_timeout_ms")), "{message:?}");
}

#[tokio::test]
async fn max_unacked_per_consumer_caps_any_prefetch_asked_for() {
    let broker = TestBroker::start_with(Config { max_unacked_per_consumer: 3, ..Config::ephemeral() }).await;
    let producer = broker.client().await;
    for i in 0..10 {
        producer.send_with_receipt("/queue/capped", format!("m{i}"), Default::default()).await.unwrap();
    }
    let (mut raw, answer) = connect(&broker, &[]).await;
    answer.unwrap();
    let frame =
        subscribe("/queue/capped", "1").with_header("ack", "client-individual").with_header("prefetch-count", "100");
    raw.send_frame(&frame).await.unwrap();
    let mut received = 0;
    while let Ok(Some(frame)) = raw.read_frame(Duration::from_millis(500)).await {
        if frame.command == Command::Message {
            received += 1;
        }
    }
    assert_eq!(received, 3);
}

#[tokio::test]
async fn max_outbox_bytes_disconnects_only_the_slow_consumer_with_an_error_naming_it() {
    let config = Config { max_outbox_bytes: 64 * 1024, ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let mut slow = TcpStream::connect(broker.broker.stomp_addr).await.unwrap();
    slow.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/flood\n\n\0")
        .await
        .unwrap();
    let fast = broker.client().await;
    let mut fast_sub = fast.subscribe("/topic/flood", Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let publisher = broker.client().await;
    let body = vec![b'x'; 16 * 1024];
    for _ in 0..400 {
        publisher.send("/topic/flood", body.clone(), Default::default()).await.unwrap();
        let _ = fast_sub.try_recv();
    }
    publisher.send_with_receipt("/topic/flood", "end", Default::default()).await.unwrap();
    // The slow one gets the ERROR at the end of what it was sent, then EOF.
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("max_outbox_bytes"), "slow consumer got {} bytes", all.len());
    publisher.send_with_receipt("/queue/after", "still fine", Default::default()).await.unwrap();
}
