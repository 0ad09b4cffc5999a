//! Webhooks against a test HTTP server on port 0 that checks signatures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stampede_broker::Config;
use stampede_broker::bridge::WebhookConfig;
use stampede_client::Headers;
use stampede_tests::{TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The requests a test backend received: (headers lower-cased, body).
type Seen = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

/// Each request's (headers lower-cased, body); answers `statuses` in turn, then 200.
async fn backend(statuses: Vec<u16>) -> (String, Seen) {
    backend_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), statuses)
}

/// [`backend`] on a listener of the caller's.
fn backend_on(listener: tokio::net::TcpListener, statuses: Vec<u16>) -> (String, Seen) {
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let statuses = Arc::new(Mutex::new(statuses.into_iter()));
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            let statuses = Arc::clone(&statuses);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at;
                        }
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                    let headers: Vec<(String, String)> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let length: usize =
                        headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
                    while buffer.len() < end + 4 + length {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let body = buffer[end + 4..end + 4 + length].to_vec();
                    buffer.drain(..end + 4 + length);
                    log.lock().unwrap().push((headers, body));
                    let status = statuses.lock().unwrap().next().unwrap_or(200);
                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let _ = socket.write_all(reply.as_bytes()).await;
                }
            });
        }
    });
    (url, seen)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

async fn wait_for(seen: &Seen, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.lock().unwrap().len() < count {
        assert!(tokio::time::Instant::now() < deadline, "only {} requests arrived", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_webhook_answered_500_then_200_delivers_twice_signed_then_acks() {
    let (url, seen) = backend(vec![500]).await;
    let mut config = Config::ephemeral();
    config.webhooks.push(WebhookConfig {
        name: "orders".into(),
        source: "/queue/orders".into(),
        url,
        secret: Some("s3cret".into()),
        retry_initial_ms: 50,
        retry_max_ms: 100,
        ..WebhookConfig::default()
    });
    let broker = TestBroker::start_with(config).await;
    let client = broker.client().await;
    client.send_with_receipt("/queue/orders", "order 1", Headers::new()).await.unwrap();
    wait_for(&seen, 2).await;
    let requests = seen.lock().unwrap().clone();
    for (attempt, (headers, body)) in requests.iter().enumerate() {
        assert_eq!(body, b"order 1");
        let timestamp: u64 = header(headers, "x-stampede-timestamp").parse().unwrap();
        let expected = stampede_broker::bridge::webhook::signature(b"s3cret", timestamp, body);
        assert_eq!(header(headers, "x-stampede-signature"), expected);
        assert_eq!(header(headers, "x-stampede-delivery"), (attempt + 1).to_string());
        assert_eq!(header(headers, "x-stampede-message-id"), header(&requests[0].0, "x-stampede-message-id"));
    }
    let queue = broker.broker.router().queue("orders").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while queue.unacked() + queue.depth() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the message was not acked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().unwrap().len(), 2, "acked after the 200: no third request");
}

#[tokio::test]
async fn a_webhook_whose_backend_always_fails_dead_letters_at_max_deliveries() {
    let (url, seen) = backend(vec![500; 100]).await;
    let mut config = Config::ephemeral();
    config.webhooks.push(WebhookConfig {
        name: "dead".into(),
        source: "/queue/jobs".into(),
        url,
        max_deliveries: 3,
        retry_initial_ms: 20,
        retry_max_ms: 40,
        ..WebhookConfig::default()
    });
    let broker = TestBroker::start_with(config).await;
    let client = broker.client().await;
    client.send_with_receipt("/queue/jobs", "job", Headers::new()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if broker.broker.router().queue("DLQ.jobs").is_some_and(|q| q.depth() == 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_topic_webhook_keeps_what_is_published_while_its_backend_is_down() {
    // A port with nothing listening: the backend is down until it binds there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = Config::ephemeral();
    config.webhooks.push(WebhookConfig {
        name: "prices".into(),
        source: "/topic/prices.*".into(),
        url: format!("http://127.0.0.1:{port}/hook"),
        retry_initial_ms: 20,
        retry_max_ms: 100,
        max_deliveries: 1000,
        ..WebhookConfig::default()
    });
    let broker = TestBroker::start_with(config).await;
    let client = broker.client().await;
    let sent: Vec<String> = (0..10).map(|i| format!("price {i}")).collect();
    for (i, body) in sent.iter().enumerate() {
        let topic = if i % 2 == 0 { "/topic/prices.eur" } else { "/topic/prices.usd" };
        client.send_with_receipt(topic, body.clone(), Headers::new()).await.unwrap();
    }
    // Several refused attempts while it is down.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the backend's port is free again");
    let (_, seen) = backend_on(listener, Vec::new());
    wait_for(&seen, sent.len()).await;
    let mut got: Vec<String> =
        seen.lock().unwrap().iter().map(|(_, body)| String::from_utf8(body.clone()).unwrap()).collect();
    got.sort();
    got.dedup();
    let mut wanted = sent.clone();
    wanted.sort();
    assert_eq!(got, wanted, "every message published while the backend was down reaches it");
}

#[test]
fn a_bad_webhook_config_names_the_webhook_and_the_field() {
    let config: Config =
        toml::from_str("[[webhooks]]\nname = \"w\"\nsource = \"/queue/a\"\nurl = \"ftp://x/\"\n").unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("webhook \"w\": url"), "{error}");
}

fn bridge(
    direction: stampede_broker::bridge::BridgeDirection,
    remote: &TestBroker,
) -> stampede_broker::bridge::BridgeConfig {
    stampede_broker::bridge::BridgeConfig {
        name: "upstream".into(),
        direction,
        remote_url: remote.tcp_url.clone(),
        reconnect_initial_ms: 50,
        reconnect_max_ms: 200,
        ..stampede_broker::bridge::BridgeConfig::default()
    }
}

/// Receives from `destination` on `broker` until every body in `wanted` was seen (duplicates
/// allowed: the bridge is at-least-once), in a bounded time.
async fn receive_all(broker: &TestBroker, destination: &str, wanted: &[String]) -> Vec<String> {
    let client = broker.client().await;
    let mut sub = client.subscribe(destination, stampede_client::SubscribeOptions::new()).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while !wanted.iter().all(|w| seen.contains(w)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.recv_timeout(left).await {
            Ok(message) => seen.push(String::from_utf8_lossy(&message.body).into_owned()),
            Err(error) => {
                panic!("missing {:?}: {error}", wanted.iter().filter(|w| !seen.contains(w)).collect::<Vec<_>>())
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_bridge_out_forwards_a_local_queue_to_the_remote_broker_in_order() {
    let remote = TestBroker::start_durable(Config::ephemeral()).await;
    let mut config = Config::ephemeral();
    config.bridges.push(stampede_broker::bridge::BridgeConfig {
        source: "/queue/outbound".into(),
        remote_destination: "/queue/inbound".into(),
        max_in_flight: 1,
        ..bridge(stampede_broker::bridge::BridgeDirection::Out, &remote)
    });
    let local = TestBroker::start_with(config).await;
    let client = local.client().await;
    let bodies: Vec<String> = (0..50).map(|i| format!("out-{i}")).collect();
    for body in &bodies {
        client.send_with_receipt("/queue/outbound", body.clone(), Headers::new()).await.unwrap();
    }
    let seen = receive_all(&remote, "/queue/inbound", &bodies).await;
    assert_eq!(seen, bodies, "one in flight at a time: in order, once each");
}

#[tokio::test]
async fn a_bridge_in_brings_a_remote_queue_into_a_local_one() {
    let remote = TestBroker::start_durable(Config::ephemeral()).await;
    let mut config = Config::ephemeral();
    config.bridges.push(stampede_broker::bridge::BridgeConfig {
        remote_source: "/queue/upstream".into(),
        destination: "/queue/local".into(),
        ..bridge(stampede_broker::bridge::BridgeDirection::In, &remote)
    });
    let local = TestBroker::start_with(config).await;
    let client = remote.client().await;
    let bodies: Vec<String> = (0..30).map(|i| format!("in-{i}")).collect();
    for body in &bodies {
        client.send_with_receipt("/queue/upstream", body.clone(), Headers::new()).await.unwrap();
    }
    receive_all(&local, "/queue/local", &bodies).await;
}

#[tokio::test]
async fn a_bridge_out_loses_nothing_when_the_remote_broker_restarts_mid_stream() {
    let remote = TestBroker::start_durable(Config::ephemeral()).await;
    let remote_addr = remote.broker.stomp_addr;
    let mut config = Config::ephemeral();
    config.bridges.push(stampede_broker::bridge::BridgeConfig {
        source: "/queue/outbound".into(),
        remote_destination: "/queue/inbound".into(),
        ..bridge(stampede_broker::bridge::BridgeDirection::Out, &remote)
    });
    let local = TestBroker::start_with(config).await;
    let client = local.client().await;
    let bodies: Vec<String> = (0..40).map(|i| format!("m-{i}")).collect();
    for body in &bodies[..20] {
        client.send_with_receipt("/queue/outbound", body.clone(), Headers::new()).await.unwrap();
    }
    let remote = remote.restart(Config { stomp_addr: remote_addr, ..Config::ephemeral() }).await;
    for body in &bodies[20..] {
        client.send_with_receipt("/queue/outbound", body.clone(), Headers::new()).await.unwrap();
    }
    receive_all(&remote, "/queue/inbound", &bodies).await;
}

/// GET `path` on `broker`'s management listener as its administrator.
async fn admin_get(broker: &TestBroker, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let url = format!("{}{path}", broker.http_url.as_deref().expect("management listener open"));
    let (user, password) = stampede_tests::ADMIN;
    let response = stampede_tests::http_client().get(url).basic_auth(user, Some(password)).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_api_and_ctl_list_webhooks_and_bridges_with_state_counts_and_last_error_and_hide_secrets() {
    let (url, seen) = backend(vec![500]).await;
    let mut config = stampede_tests::admin_and_user_config();
    config.webhooks.push(WebhookConfig {
        name: "orders".into(),
        source: "/queue/orders".into(),
        url,
        secret: Some("s3cret".into()),
        headers: [("Authorization".to_owned(), "Bearer hidden-token".to_owned())].into_iter().collect(),
        retry_initial_ms: 50,
        retry_max_ms: 100,
        ..WebhookConfig::default()
    });
    // A bridge to a port where nothing listens: down, with the connection error.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    config.bridges.push(stampede_broker::bridge::BridgeConfig {
        name: "upstream".into(),
        source: "/queue/outbound".into(),
        remote_destination: "/queue/inbound".into(),
        remote_url: format!("tcp://{dead}"),
        login: Some("bridger".into()),
        passcode: Some("hidden-passcode".into()),
        reconnect_initial_ms: 50,
        reconnect_max_ms: 100,
        ..stampede_broker::bridge::BridgeConfig::default()
    });
    let broker = TestBroker::start_with(config).await;
    let client = broker.client_with(|o| o.login(stampede_tests::ADMIN.0).passcode(stampede_tests::ADMIN.1)).await;
    client.send_with_receipt("/queue/orders", "order 1", Headers::new()).await.unwrap();
    wait_for(&seen, 2).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let webhook = loop {
        let (status, body) = admin_get(&broker, "/api/v1/webhooks").await;
        assert_eq!(status, 200, "{body}");
        let item = body["items"][0].clone();
        if item["delivered"] == 1 || tokio::time::Instant::now() > deadline {
            assert_eq!(body["total_count"], 1, "{body}");
            break item;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(webhook["name"], "orders", "{webhook}");
    assert_eq!(webhook["source"], "/queue/orders");
    assert_eq!(webhook["state"], "up", "the last answer was a 200: {webhook}");
    assert_eq!(webhook["delivered"], 1, "{webhook}");
    assert_eq!(webhook["failures"], 1, "the 500: {webhook}");
    assert!(webhook["last_error"].as_str().is_some_and(|e| e.contains("500")), "{webhook}");
    assert!(webhook["last_error_at_ms"].as_u64().is_some(), "{webhook}");
    assert_eq!(webhook["signed"], true);
    assert_eq!(webhook["headers"], serde_json::json!(["Authorization"]));

    let (status, bridge) = admin_get(&broker, "/api/v1/bridges/upstream").await;
    assert_eq!(status, 200, "{bridge}");
    assert_eq!(bridge["direction"], "out");
    assert_eq!(bridge["from"], "/queue/outbound");
    assert_eq!(bridge["to"], "/queue/inbound");
    assert_eq!(bridge["state"], "down", "{bridge}");
    assert_eq!(bridge["login"], "bridger");
    let deadline = tokio::time::Instant::now() + WAIT;
    let bridge = loop {
        let (_, bridge) = admin_get(&broker, "/api/v1/bridges/upstream").await;
        if bridge["failures"].as_u64().is_some_and(|n| n >= 1) || tokio::time::Instant::now() > deadline {
            break bridge;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(bridge["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{bridge}");
    let (_, listing) = admin_get(&broker, "/api/v1/bridges").await;
    assert_eq!(listing["total_count"], 1, "{listing}");

    let everything = format!("{webhook}{bridge}{listing}");
    for secret in ["s3cret", "hidden-token", "hidden-passcode"] {
        assert!(!everything.contains(secret), "{secret} leaked: {everything}");
    }
    let (status, missing) = admin_get(&broker, "/api/v1/webhooks/nope").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"], "not_found");
    let (status, _) = admin_get(&broker, "/api/v1/bridges/nope").await;
    assert_eq!(status, 404);
    let url = format!("{}/api/v1/webhooks", broker.http_url.as_deref().unwrap());
    let anonymous = stampede_tests::http_client().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let (user, password) = stampede_tests::USER;
    let plain = stampede_tests::http_client().get(&url).basic_auth(user, Some(password)).send().await.unwrap();
    assert_eq!(plain.status(), 403);

    let admin = Some(stampede_tests::ADMIN);
    let (code, out, err) = stampede_tests::ctl(&broker, admin, &["webhooks"]).await;
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|line| line.starts_with("orders")).unwrap_or_else(|| panic!("orders listed: {out}"));
    for cell in ["/queue/orders", "up", "500"] {
        assert!(row.contains(cell), "{cell} in {row:?}");
    }
    assert!(out.ends_with("1 webhooks\n"), "{out}");
    let (code, out, err) = stampede_tests::ctl(&broker, admin, &["bridges"]).await;
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|line| line.starts_with("upstream")).unwrap_or_else(|| panic!("listed: {out}"));
    for cell in ["out", "/queue/outbound", "/queue/inbound", "down"] {
        assert!(row.contains(cell), "{cell} in {row:?}");
    }
    let (code, out, _) = stampede_tests::ctl(&broker, admin, &["--json", "bridges"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["items"][0]["name"], "upstream");
    assert!(!out.contains("hidden-passcode"), "{out}");
}
