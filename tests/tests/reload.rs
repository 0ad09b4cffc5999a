//! A reload (SIGHUP) replaces more than the users: the token keys, the allowed browser origins
//! and the TLS certificate, without dropping a connection; and a reload that cannot read one of
//! them changes none of them. (Permissions reloaded live through the real binary and SIGHUP are
//! in `management_api`.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use stampede_broker::Config;
use stampede_broker::config::JwtConfig;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OLD_SECRET: &str = "the-first-hs256-secret-long-enough-0123456789";
const NEW_SECRET: &str = "the-rotated-hs256-secret-long-enough-9876543210";

fn jwt_config(secret: &str) -> Config {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 1;
    config.jwt = Some(JwtConfig { hs256_secret: Some(secret.to_owned()), ..JwtConfig::default() });
    config
}

fn token(secret: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": "svc", "exp": exp, "stampede": {"read": ["/queue/**"], "write": ["/queue/**"]}});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

/// CONNECTs with `token` as the passcode: the connection, or the ERROR's text.
async fn connect_with(broker: &TestBroker, token: &str) -> Result<RawConnection, String> {
    let mut raw = broker.raw().await;
    let answer = raw
        .handshake(&[("accept-version", "1.2"), ("host", "/"), ("passcode", token)], WAIT)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(answer.command, Command::Connected, "{answer:?}");
    Ok(raw)
}

async fn receipted_send(raw: &mut RawConnection, body: &str) {
    let send = Frame::new(Command::Send)
        .with_header("destination", "/queue/reload")
        .with_header("receipt", "r")
        .with_body(body.to_owned());
    raw.send_frame(&send).await.unwrap();
    let answer = raw.read_frame(WAIT).await.expect("a frame").expect("open");
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");
}

#[tokio::test]
async fn a_reload_rotates_the_jwt_key_for_new_logins_and_keeps_connected_sessions() {
    let broker = TestBroker::start_with(jwt_config(OLD_SECRET)).await;
    let mut connected = connect_with(&broker, &token(OLD_SECRET)).await.expect("accepted");

    broker.broker.reload(&jwt_config(NEW_SECRET)).expect("the rotated key is accepted");

    let old = connect_with(&broker, &token(OLD_SECRET)).await.expect_err("a token signed with the old key is refused");
    assert!(old.contains("login failed"), "{old}");
    connect_with(&broker, &token(NEW_SECRET)).await.expect("a token signed with the new key is accepted");
    receipted_send(&mut connected, "the session from before the reload goes on").await;
}

#[tokio::test]
async fn a_reload_that_would_turn_authentication_off_is_refused() {
    let broker = TestBroker::start_with(jwt_config(OLD_SECRET)).await;
    let error = broker.broker.reload(&Config::ephemeral()).expect_err("refused");
    assert!(error.to_string().contains("turn authentication on or off"), "{error}");
    connect_with(&broker, &token(OLD_SECRET)).await.expect("the old key stays");
}

async fn ws_origin_allowed(url: &str, origin: &str) -> bool {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("origin", origin.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.is_ok()
}

#[tokio::test]
async fn a_reload_replaces_the_allowed_websocket_origins() {
    let config = |origin: &str| Config { ws_allowed_origins: vec![origin.to_owned()], ..Config::ephemeral() };
    let broker = TestBroker::start_with(config("https://old.example")).await;
    assert!(ws_origin_allowed(&broker.ws_url, "https://old.example").await);
    assert!(!ws_origin_allowed(&broker.ws_url, "https://new.example").await);

    broker.broker.reload(&config("https://new.example")).expect("reloaded");

    assert!(ws_origin_allowed(&broker.ws_url, "https://new.example").await, "the new origin is allowed");
    assert!(!ws_origin_allowed(&broker.ws_url, "https://old.example").await, "the old one no longer");
}

/// Two self-signed certificates for `localhost`, written where the broker reads its pair.
struct Certificates {
    dir: tempfile::TempDir,
    first: rcgen::CertifiedKey<rcgen::KeyPair>,
    second: rcgen::CertifiedKey<rcgen::KeyPair>,
}

impl Certificates {
    fn new() -> Certificates {
        let make = || rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let certificates = Certificates { dir: tempfile::tempdir().unwrap(), first: make(), second: make() };
        certificates.install(&certificates.first);
        certificates
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Writes `pair` over the files, as a certificate renewal does.
    fn install(&self, pair: &rcgen::CertifiedKey<rcgen::KeyPair>) {
        std::fs::write(self.cert(), pair.cert.pem()).unwrap();
        std::fs::write(self.key(), pair.signing_key.serialize_pem()).unwrap();
    }

    /// A client that trusts both certificates.
    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.first.cert.der().clone()).unwrap();
        roots.add(self.second.cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    fn config(&self) -> Config {
        Config { tls_cert: Some(self.cert()), tls_key: Some(self.key()), ..Config::ephemeral() }
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(certificates: &Certificates, addr: std::net::SocketAddr) -> TlsStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, certificates.connector().connect(name, tcp)).await.expect("in time").expect("TLS")
}

fn presented(stream: &TlsStream) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Sends a CONNECT over `stream` and reads until the CONNECTED frame's NUL.
async fn stomp_connect(stream: &mut TlsStream) -> String {
    stream.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0").await.unwrap();
    let mut read = Vec::new();
    let mut buffer = [0u8; 1024];
    while !read.contains(&0) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buffer)).await.expect("in time").unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&read).into_owned()
}

#[tokio::test]
async fn a_reload_presents_a_renewed_tls_certificate_to_new_handshakes_and_keeps_open_connections() {
    let certificates = Certificates::new();
    let broker = TestBroker::start_with(certificates.config()).await;
    let stomp_tls = broker.broker.stomp_tls_addr.expect("a TLS listener");
    let mut before = tls_connect(&certificates, stomp_tls).await;
    assert_eq!(presented(&before), certificates.first.cert.der().to_vec());

    certificates.install(&certificates.second);
    broker.broker.reload(&certificates.config()).expect("the renewed pair is accepted");

    let mut after = tls_connect(&certificates, stomp_tls).await;
    assert_eq!(presented(&after), certificates.second.cert.der().to_vec(), "STOMP over TLS");
    let wss = tls_connect(&certificates, broker.broker.wss_addr.expect("a wss listener")).await;
    assert_eq!(presented(&wss), certificates.second.cert.der().to_vec(), "wss");
    assert!(stomp_connect(&mut after).await.starts_with("CONNECTED"));
    assert!(stomp_connect(&mut before).await.starts_with("CONNECTED"), "the connection from before goes on");
}

#[tokio::test]
async fn a_reload_with_an_unreadable_certificate_changes_nothing() {
    let certificates = Certificates::new();
    let broker = TestBroker::start_with(certificates.config()).await;
    let stomp_tls = broker.broker.stomp_tls_addr.expect("a TLS listener");

    std::fs::write(certificates.cert(), "not a certificate").unwrap();
    let mut changed = certificates.config();
    changed.ws_allowed_origins = vec!["https://only.example".to_owned()];
    let error = broker.broker.reload(&changed).expect_err("refused");
    assert!(error.to_string().contains("tls_cert"), "the error names the file's key: {error}");

    let stream = tls_connect(&certificates, stomp_tls).await;
    assert_eq!(presented(&stream), certificates.first.cert.der().to_vec(), "the old pair stays");
    assert!(ws_origin_allowed(&broker.ws_url, "https://elsewhere.example").await, "the origins did not change");
}

#[tokio::test]
async fn a_reload_that_would_turn_tls_off_is_refused() {
    let certificates = Certificates::new();
    let broker = TestBroker::start_with(certificates.config()).await;
    let error = broker.broker.reload(&Config::ephemeral()).expect_err("refused");
    assert!(error.to_string().contains("turn TLS on or off"), "{error}");
}
