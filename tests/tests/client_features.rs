//! The client library's promises to its users, against a real broker in-process: TLS with a
//! private CA (and insecure mode only when asked), reconnect that resubscribes, request/reply
//! with a timeout, and connect errors that name the address and the likely mistake.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stampede_broker::Config;
use stampede_client::{Client, ClientError, ConnectOptions, Headers, Reconnect, SubscribeOptions};
use stampede_tests::{QUIET, TestBroker, WAIT};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A certificate for `localhost`, written where the broker and the client can read it.
struct Certificate {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn throwaway_certificate() -> Certificate {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    Certificate { _dir: dir, cert, key }
}

async fn tls_broker(certificate: &Certificate) -> TestBroker {
    let config = Config {
        tls_cert: Some(certificate.cert.clone()),
        tls_key: Some(certificate.key.clone()),
        ..Config::ephemeral()
    };
    TestBroker::start_with(config).await
}

fn options(url: &str) -> ConnectOptions {
    ConnectOptions::new(url).unwrap().connect_timeout(WAIT).receipt_timeout(WAIT)
}

/// Subscribes, publishes one message and checks it arrives: the connection works end to end.
async fn round_trip(client: &Client, destination: &str) {
    let mut subscription = client.subscribe(destination, SubscribeOptions::new()).await.unwrap();
    client.publish(destination, "over the wire").await.unwrap();
    let message = subscription.recv_timeout(WAIT).await.unwrap();
    assert_eq!(message.body.as_ref(), b"over the wire");
}

// ------------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn tls_url_works_when_the_private_ca_is_trusted_through_ca_file() {
    let certificate = throwaway_certificate();
    let broker = tls_broker(&certificate).await;
    let port = broker.broker.stomp_tls_addr.unwrap().port();
    for url in [format!("tls://localhost:{port}"), format!("stomp+ssl://localhost:{port}")] {
        let client = Client::connect_with(options(&url).ca_file(&certificate.cert)).await.unwrap();
        round_trip(&client, "/queue/tls").await;
        client.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn wss_url_works_when_the_private_ca_is_trusted_through_ca_file() {
    let certificate = throwaway_certificate();
    let broker = tls_broker(&certificate).await;
    let port = broker.broker.wss_addr.unwrap().port();
    let url = format!("wss://localhost:{port}/ws");
    let client = Client::connect_with(options(&url).ca_file(&certificate.cert)).await.unwrap();
    round_trip(&client, "/topic/wss").await;
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_unless_verification_is_skipped_by_name() {
    let certificate = throwaway_certificate();
    let broker = tls_broker(&certificate).await;
    let url = format!("tls://localhost:{}", broker.broker.stomp_tls_addr.unwrap().port());
    let error = Client::connect_with(options(&url)).await.unwrap_err();
    assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("TLS handshake with localhost:") && text.contains("certificate"), "{text}");

    let client = Client::connect_with(options(&url).insecure_skip_verify(true)).await.unwrap();
    round_trip(&client, "/queue/insecure").await;
}

#[tokio::test]
async fn a_ca_file_without_certificates_is_an_error_naming_the_file() {
    let certificate = throwaway_certificate();
    let broker = tls_broker(&certificate).await;
    let url = format!("tls://localhost:{}", broker.broker.stomp_tls_addr.unwrap().port());
    let error = Client::connect_with(options(&url).ca_file(&certificate.key)).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("cannot read the CA file") && text.contains("key.pem"), "{text}");
}

#[tokio::test]
async fn tls_url_at_a_plain_port_gets_a_hint_naming_tcp() {
    let broker = TestBroker::start().await;
    let address = broker.broker.stomp_addr;
    let error = Client::connect_with(options(&format!("tls://{address}")).insecure_skip_verify(true))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&format!("use tcp://{address}")), "{error}");
}

// ------------------------------------------------------------------------------------------
// Connect errors

#[tokio::test]
async fn connection_refused_names_the_address() {
    // A port that was just free: bind, read it, close.
    let address = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let error = Client::connect_with(options(&format!("tcp://{address}"))).await.unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    assert!(error.to_string().starts_with(&format!("cannot connect to {address}: ")), "{error}");
}

#[tokio::test]
async fn ws_url_at_the_stomp_tcp_port_gets_a_hint_naming_tcp() {
    let broker = TestBroker::start().await;
    let address = broker.broker.stomp_addr;
    let error = Client::connect_with(options(&format!("ws://{address}/ws"))).await.unwrap_err();
    assert!(matches!(error, ClientError::NotHttp { .. }), "{error:?}");
    assert!(error.to_string().contains(&format!("use tcp://{address}")), "{error}");
}

#[tokio::test]
async fn tcp_url_at_the_websocket_port_gets_a_hint_naming_ws() {
    let broker = TestBroker::start().await;
    let address = broker.broker.ws_addr;
    let error = Client::connect_with(options(&format!("tcp://{address}"))).await.unwrap_err();
    // Stampede's WebSocket listener answers a request it cannot parse with HTTP 400.
    assert!(matches!(error, ClientError::HttpNotStomp { .. } | ClientError::NoAnswer { .. }), "{error:?}");
    assert!(error.to_string().contains(&format!("use ws://{address}/ws")), "{error}");
}

#[tokio::test]
async fn tcp_url_at_a_server_that_answers_in_http_gets_a_hint_naming_ws() {
    // What other WebSocket servers (RabbitMQ's Web-STOMP among them) answer to a STOMP frame.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 256];
        let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
        let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut socket, answer).await.unwrap();
    });
    let error = Client::connect_with(options(&format!("tcp://{address}"))).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ClientError::HttpNotStomp { .. }), "{error:?}");
    assert!(text.contains("(HTTP/1.1 400 Bad Request)") && text.contains(&format!("use ws://{address}/ws")), "{text}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_wrong_websocket_path_prints_the_servers_404_body() {
    let broker = TestBroker::start().await;
    let url = format!("ws://{}/wrong", broker.broker.ws_addr);
    let error = Client::connect_with(options(&url)).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ClientError::WebSocketRefused { status: 404, .. }), "{error:?}");
    assert!(text.contains("HTTP 404") && text.contains(&format!("{}/ws", broker.broker.ws_addr)), "{text}");
}

// ------------------------------------------------------------------------------------------
// Request/reply

#[tokio::test]
async fn request_returns_the_reply_that_carries_its_correlation_id() {
    let broker = TestBroker::start().await;
    let (requester, responder) = (broker.client().await, broker.client().await);
    let mut requests = responder.subscribe("/queue/rpc", SubscribeOptions::new()).await.unwrap();
    let serve = tokio::spawn(async move {
        for _ in 0..2 {
            let request = requests.recv_timeout(WAIT).await.unwrap();
            let answer = format!("echo {}", request.body_str().unwrap());
            responder.reply(&request, answer, Headers::new()).await.unwrap();
        }
    });
    // Two requests in flight at once: each gets its own answer.
    let (first, second) = tokio::join!(
        requester.request("/queue/rpc", "one", Headers::new(), WAIT),
        requester.request("/queue/rpc", "two", Headers::new(), WAIT),
    );
    assert_eq!(first.unwrap().body.as_ref(), b"echo one");
    assert_eq!(second.unwrap().body.as_ref(), b"echo two");
    serve.await.unwrap();
}

#[tokio::test]
async fn request_times_out_with_an_error_naming_the_destination_when_nobody_replies() {
    let broker = TestBroker::start().await;
    let requester = broker.client().await;
    let error = requester.request("/queue/nobody-home", "hello?", Headers::new(), QUIET).await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { after, .. } if after == QUIET), "{error:?}");
    assert!(error.to_string().contains("/queue/nobody-home"), "{error}");
}

#[tokio::test]
async fn a_waiting_request_fails_as_soon_as_the_connection_is_lost_not_at_its_timeout() {
    let broker = TestBroker::start().await;
    let relay = Relay::start(broker.broker.stomp_addr).await;
    let requester = Client::connect_with(options(&format!("tcp://{}", relay.address))).await.unwrap();
    let pending = {
        let requester = requester.clone();
        tokio::spawn(async move {
            requester.request("/queue/slow-service", "hello?", Headers::new(), Duration::from_secs(600)).await
        })
    };
    // Cut once the request is out (its reply queue subscribed and the SEND written).
    tokio::time::timeout(WAIT, async {
        while broker.broker.router().queue("slow-service").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the request reached the broker");
    relay.cut();
    let error = tokio::time::timeout(WAIT, pending).await.expect("failed before its timeout").unwrap().unwrap_err();
    assert!(matches!(error, ClientError::Closed(_)), "{error:?}");
}

#[tokio::test]
async fn reply_to_a_message_without_reply_to_is_a_caller_error() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut subscription = client.subscribe("/queue/plain", SubscribeOptions::new()).await.unwrap();
    client.publish("/queue/plain", "no reply wanted").await.unwrap();
    let message = subscription.recv_timeout(WAIT).await.unwrap();
    let error = client.reply(&message, "x", Headers::new()).await.unwrap_err();
    assert!(matches!(error, ClientError::InvalidRequest(_)) && error.to_string().contains("reply-to"), "{error}");
}

// ------------------------------------------------------------------------------------------
// Reconnect

/// A TCP relay in front of the broker whose live connections can be cut, while it keeps
/// accepting new ones: a lost connection as the client sees it.
struct Relay {
    address: std::net::SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().unwrap().push(link);
            }
        });
        Relay { address, links, accept }
    }

    /// Drops every live connection (both sockets close).
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

fn quick_reconnect() -> Reconnect {
    Reconnect { initial_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200), max_attempts: None }
}

#[tokio::test]
async fn reconnect_resubscribes_so_the_subscription_stream_goes_on_after_a_lost_connection() {
    let broker = TestBroker::start().await;
    let relay = Relay::start(broker.broker.stomp_addr).await;
    let url = format!("tcp://{}", relay.address);
    let client = Client::connect_with(options(&url).reconnect(quick_reconnect())).await.unwrap();
    let mut news = client.subscribe("/topic/news", SubscribeOptions::new().id("news")).await.unwrap();
    let publisher = broker.client().await;
    publisher.publish("/topic/news", "before").await.unwrap();
    assert_eq!(news.recv_timeout(WAIT).await.unwrap().body.as_ref(), b"before");

    relay.cut();
    // Until the new SUBSCRIBE is in, publications are missed (a topic keeps nothing), so
    // publish until one arrives: bounded by WAIT.
    let deadline = tokio::time::Instant::now() + WAIT;
    let message = loop {
        assert!(tokio::time::Instant::now() < deadline, "no message after the reconnect");
        publisher.publish("/topic/news", "after").await.unwrap();
        if let Ok(message) = news.recv_timeout(Duration::from_millis(50)).await {
            break message;
        }
    };
    assert_eq!(message.body.as_ref(), b"after");
    assert_eq!(message.subscription, "news", "same subscription id as before");
    assert!(client.reconnects() >= 1);
    assert!(!client.is_closed());
    // And the client can still send and get receipts on the new connection.
    client.send_with_receipt("/queue/after-reconnect", "x", Headers::new()).await.unwrap();
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_stays_closed() {
    let broker = TestBroker::start().await;
    let relay = Relay::start(broker.broker.stomp_addr).await;
    let client = Client::connect_with(options(&format!("tcp://{}", relay.address))).await.unwrap();
    relay.cut();
    let reason = tokio::time::timeout(WAIT, client.closed()).await.expect("closed in time");
    assert!(!reason.is_graceful(), "{reason}");
    assert_eq!(client.reconnects(), 0);
}

#[tokio::test]
async fn reconnect_gives_up_after_max_attempts_when_the_server_stays_away() {
    let broker = TestBroker::start().await;
    let relay = Relay::start(broker.broker.stomp_addr).await;
    let url = format!("tcp://{}", relay.address);
    let plan = Reconnect { max_attempts: Some(2), ..quick_reconnect() };
    let client = Client::connect_with(options(&url).reconnect(plan)).await.unwrap();
    // The relay goes away entirely: every attempt is refused.
    drop(relay);
    let reason = tokio::time::timeout(WAIT, client.closed()).await.expect("gave up in time");
    assert!(!reason.is_graceful(), "{reason}");
    assert_eq!(client.reconnects(), 0);
}
