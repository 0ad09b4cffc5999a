//! The management listener: authentication, JSON errors, the overview, Prometheus metrics and
//! the health probes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};
use stampede_broker::Config;
use stampede_broker::config::JwtConfig;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{TestBroker, WAIT, admin_and_user_config, http_client};

const SECRET: &str = "hs256-test-secret-that-is-long-enough-0123456789";

fn public_config() -> Config {
    Config { metrics_public: true, ..Config::ephemeral() }
}

fn url(broker: &TestBroker, path: &str) -> String {
    format!("{}{path}", broker.http_url.as_deref().expect("management listener open"))
}

async fn get(broker: &TestBroker, path: &str, login: Option<(&str, &str)>) -> reqwest::Response {
    let mut request = http_client().get(url(broker, path));
    if let Some((user, password)) = login {
        request = request.basic_auth(user, Some(password));
    }
    request.send().await.expect("request answered")
}

async fn json_of(response: reqwest::Response) -> Value {
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/json"), "every answer is JSON");
    response.json().await.expect("a JSON body")
}

async fn scrape(broker: &TestBroker) -> String {
    let response = get(broker, "/metrics", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("metrics text")
}

/// The value of the series `series` (name with its labels, as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

async fn connected(broker: &TestBroker) -> RawConnection {
    let mut raw = broker.raw().await;
    let connected = raw.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.expect("CONNECTED");
    assert_eq!(connected.command, Command::Connected);
    raw
}

async fn next_frame(raw: &mut RawConnection) -> Frame {
    raw.read_frame(WAIT).await.expect("read").expect("a frame")
}

#[tokio::test]
async fn metrics_counters_move_by_exactly_the_messages_of_a_known_workload() {
    const N: usize = 25;
    let broker = TestBroker::start_with(public_config()).await;
    let before = scrape(&broker).await;
    let mut producer = connected(&broker).await;
    for i in 0..N {
        let send = Frame::new(Command::Send)
            .with_header("destination", "/queue/work")
            .with_header("receipt", format!("r{i}"))
            .with_body(format!("job {i}"));
        producer.send_frame(&send).await.unwrap();
        assert_eq!(next_frame(&mut producer).await.command, Command::Receipt);
    }
    let mut consumer = connected(&broker).await;
    let subscribe = Frame::new(Command::Subscribe)
        .with_header("destination", "/queue/work")
        .with_header("id", "s")
        .with_header("ack", "client-individual");
    consumer.send_frame(&subscribe).await.unwrap();
    for _ in 0..N {
        let message = next_frame(&mut consumer).await;
        assert_eq!(message.command, Command::Message);
        let ack = Frame::new(Command::Ack).with_header("id", message.header("ack").expect("ack header"));
        consumer.send_frame(&ack).await.unwrap();
    }
    // Acks are applied by the queue actor; wait (bounded) until it has seen them all.
    let acked = "stampede_messages_acked_total";
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let text = scrape(&broker).await;
        if value(&text, acked) - value(&before, acked) >= N as f64 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delta = |series: &str| value(&after, series) - value(&before, series);
    let n = N as f64;
    assert_eq!(delta("stampede_messages_published_total{kind=\"queue\"}"), n);
    assert_eq!(delta("stampede_messages_published_total{kind=\"topic\"}"), 0.0);
    assert_eq!(delta("stampede_messages_delivered_total"), n);
    assert_eq!(delta(acked), n);
    assert_eq!(delta("stampede_messages_nacked_total"), 0.0);
    assert_eq!(delta("stampede_messages_redelivered_total"), 0.0);
    assert_eq!(delta("stampede_frames_received_total{command=\"SEND\"}"), n);
    assert_eq!(delta("stampede_frames_received_total{command=\"ACK\"}"), n);
    assert_eq!(delta("stampede_frames_received_total{command=\"CONNECT\"}"), 2.0);
    assert_eq!(delta("stampede_frames_sent_total{command=\"MESSAGE\"}"), n);
    assert_eq!(delta("stampede_frames_sent_total{command=\"RECEIPT\"}"), n);
    assert_eq!(delta("stampede_frames_sent_total{command=\"CONNECTED\"}"), 2.0);
    assert_eq!(delta("stampede_connections_opened_total{transport=\"tcp\"}"), 2.0);
    assert_eq!(value(&after, "stampede_connections{transport=\"tcp\"}"), 2.0);
    assert_eq!(value(&after, "stampede_queue_messages_ready"), 0.0);
    assert_eq!(value(&after, "stampede_queue_messages_unacked"), 0.0);
    assert_eq!(value(&after, "stampede_queues"), 1.0);
    assert_eq!(value(&after, "stampede_subscriptions"), 1.0);

    // Closing counts by reason, and the gauge goes back down.
    consumer.send_frame(&Frame::new(Command::Disconnect).with_header("receipt", "bye")).await.unwrap();
    assert_eq!(next_frame(&mut consumer).await.command, Command::Receipt);
    drop(consumer);
    let deadline = Instant::now() + WAIT;
    let closed = "stampede_connections_closed_total{reason=\"client-disconnect\"}";
    let last = loop {
        let text = scrape(&broker).await;
        if value(&text, closed) - value(&before, closed) >= 1.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(value(&last, closed) - value(&before, closed), 1.0);
    assert_eq!(value(&last, "stampede_connections{transport=\"tcp\"}"), 1.0);
}

#[tokio::test]
async fn metrics_count_errors_by_kind_and_dead_letters_by_reason() {
    let broker = TestBroker::start_with(public_config()).await;
    let before = scrape(&broker).await;
    let mut producer = connected(&broker).await;
    let send =
        Frame::new(Command::Send).with_header("destination", "/queue/jobs").with_header("receipt", "r").with_body("x");
    producer.send_frame(&send).await.unwrap();
    assert_eq!(next_frame(&mut producer).await.command, Command::Receipt);
    let mut consumer = connected(&broker).await;
    let subscribe = Frame::new(Command::Subscribe)
        .with_header("destination", "/queue/jobs")
        .with_header("id", "s")
        .with_header("ack", "client-individual");
    consumer.send_frame(&subscribe).await.unwrap();
    let message = next_frame(&mut consumer).await;
    let nack =
        Frame::new(Command::Nack).with_header("id", message.header("ack").unwrap()).with_header("requeue", "false");
    consumer.send_frame(&nack).await.unwrap();
    // A frame the broker cannot act on: an ERROR of kind `request`.
    consumer.send_frame(&Frame::new(Command::Begin)).await.unwrap();
    assert_eq!(next_frame(&mut consumer).await.command, Command::Error);
    let series = "stampede_messages_dead_lettered_total{reason=\"rejected\"}";
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let text = scrape(&broker).await;
        if value(&text, series) > value(&before, series) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta(series), 1.0);
    assert_eq!(delta("stampede_messages_nacked_total"), 1.0);
    assert_eq!(delta("stampede_errors_sent_total{kind=\"request\"}"), 1.0);
    assert_eq!(delta("stampede_frames_sent_total{command=\"ERROR\"}"), 1.0);
}

#[tokio::test]
async fn metrics_need_an_admin_unless_metrics_public() {
    let broker = TestBroker::start_with(admin_and_user_config()).await;
    let anonymous = get(&broker, "/metrics", None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    assert_eq!(json_of(anonymous).await["error"], "unauthorized");
    let wrong = get(&broker, "/metrics", Some(("alice", "wrong"))).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let bob = get(&broker, "/metrics", Some(("bob", "builder"))).await;
    assert_eq!(bob.status(), StatusCode::FORBIDDEN);
    let body = json_of(bob).await;
    assert_eq!(body["error"], "forbidden");
    assert!(body["reason"].as_str().unwrap().contains("admin"), "{body}");
    let alice = get(&broker, "/metrics", Some(("alice", "wonderland"))).await;
    assert_eq!(alice.status(), StatusCode::OK);
    assert!(alice.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = alice.text().await.unwrap();
    // One failed login so far: the wrong password (bob's was right, the anonymous one sent none).
    assert_eq!(value(&text, "stampede_auth_failures_total"), 1.0);
    for path in ["/healthz", "/readyz", "/api/v1/overview"] {
        assert_eq!(get(&broker, path, None).await.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(get(&broker, path, Some(("bob", "builder"))).await.status(), StatusCode::FORBIDDEN, "{path}");
    }

    let mut public = admin_and_user_config();
    public.metrics_public = true;
    let broker = TestBroker::start_with(public).await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(&broker, path, None).await.status(), StatusCode::OK, "{path}");
    }
    // metrics_public opens the probes and metrics, never the API.
    assert_eq!(get(&broker, "/api/v1/overview", None).await.status(), StatusCode::UNAUTHORIZED);
}

fn hs256(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

#[tokio::test]
async fn a_bearer_token_needs_the_stampede_admin_scope_for_the_api() {
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    config.auth_failure_max_delay_ms = 2;
    config.jwt = Some(JwtConfig { hs256_secret: Some(SECRET.to_owned()), ..JwtConfig::default() });
    let broker = TestBroker::start_with(config).await;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let admin = hs256(json!({"sub": "ops", "exp": exp, "scope": "stampede.admin stampede.read:/queue/**"}));
    let reader = hs256(json!({"sub": "app", "exp": exp, "scope": "stampede.read:/queue/**"}));
    let expired = hs256(json!({"sub": "ops", "exp": exp - 7200, "scope": "stampede.admin"}));
    let overview = url(&broker, "/api/v1/overview");
    let status = |token: String| {
        let overview = overview.clone();
        async move { http_client().get(overview).bearer_auth(token).send().await.unwrap().status() }
    };
    assert_eq!(status(admin).await, StatusCode::OK);
    assert_eq!(status(reader).await, StatusCode::FORBIDDEN);
    assert_eq!(status(expired).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status("not-a-token".to_owned()).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_and_readyz_503_while_draining() {
    let broker = TestBroker::start_with(public_config()).await;
    let live = get(&broker, "/healthz", None).await;
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(json_of(live).await["status"], "ok");
    let ready = get(&broker, "/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body = json_of(ready).await;
    assert_eq!(body["status"], "ok");
    for check in ["listeners", "store", "draining"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }

    broker.broker.start_draining();
    let ready = get(&broker, "/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(ready).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["draining"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["store"]["ok"], true, "{body}");
    // Liveness does not depend on readiness.
    assert_eq!(get(&broker, "/healthz", None).await.status(), StatusCode::OK);

    broker.broker.readiness().set_store_failed(true);
    let body = json_of(get(&broker, "/readyz", None).await).await;
    assert_eq!(body["checks"]["store"]["ok"], false, "{body}");
}

#[tokio::test]
async fn the_overview_names_the_version_listeners_and_totals() {
    let broker = TestBroker::start_with(admin_and_user_config()).await;
    let mut producer = broker.raw().await;
    let connected = producer
        .handshake(&[("accept-version", "1.2"), ("login", "alice"), ("passcode", "wonderland")], WAIT)
        .await
        .unwrap();
    assert_eq!(connected.command, Command::Connected);
    for i in 0..3 {
        let send = Frame::new(Command::Send)
            .with_header("destination", "/queue/backlog")
            .with_header("receipt", format!("r{i}"))
            .with_body("x");
        producer.send_frame(&send).await.unwrap();
        assert_eq!(next_frame(&mut producer).await.command, Command::Receipt);
    }
    let response = get(&broker, "/api/v1/overview", Some(("alice", "wonderland"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let overview = json_of(response).await;
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"));
    assert!(overview["uptime_seconds"].is_u64(), "{overview}");
    let listeners = overview["listeners"].as_array().unwrap();
    let address_of = |protocol: &str| {
        listeners.iter().find(|l| l["protocol"] == protocol).map(|l| l["address"].as_str().unwrap().to_owned())
    };
    assert_eq!(address_of("stomp"), Some(broker.broker.stomp_addr.to_string()));
    assert_eq!(address_of("ws"), Some(broker.broker.ws_addr.to_string()));
    assert_eq!(address_of("http"), broker.broker.http_addr.map(|a| a.to_string()));
    let totals = &overview["totals"];
    assert_eq!(totals["connections"], 1, "{overview}");
    assert_eq!(totals["queues"], 1, "{overview}");
    assert_eq!(totals["messages_ready"], 3, "{overview}");
    assert_eq!(totals["messages_unacked"], 0, "{overview}");
    assert_eq!(totals["subscriptions"], 0, "{overview}");
}

#[tokio::test]
async fn errors_are_json_with_error_and_reason_and_the_right_status() {
    let broker = TestBroker::start_with(public_config()).await;
    let missing = get(&broker, "/api/v1/no-such-thing", None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body = json_of(missing).await;
    assert_eq!(body["error"], "not_found");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "only error and reason: {body}");
    let wrong_method = http_client().delete(url(&broker, "/api/v1/overview")).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json_of(wrong_method).await["error"], "method_not_allowed");
}

#[tokio::test]
async fn http_addr_none_keeps_the_management_listener_closed() {
    let from_file: Config = toml::from_str("http_addr = \"none\"").expect("none is a valid http_addr");
    assert_eq!(from_file.http_addr, None);
    let broker = TestBroker::start_with(Config { http_addr: None, ..Config::ephemeral() }).await;
    assert_eq!(broker.broker.http_addr, None);
    assert_eq!(broker.http_url, None);
    let cli = <stampede_broker::Cli as clap::Parser>::try_parse_from(["stampede", "--http-addr", "none"]).unwrap();
    assert_eq!(cli.resolve().unwrap().http_addr, None);
    let cli =
        <stampede_broker::Cli as clap::Parser>::try_parse_from(["stampede", "--http-addr", "127.0.0.1:9"]).unwrap();
    assert_eq!(cli.resolve().unwrap().http_addr, Some("127.0.0.1:9".parse().unwrap()));
    assert!(<stampede_broker::Cli as clap::Parser>::try_parse_from(["stampede", "--http-addr", "nowhere"]).is_err());
}

#[tokio::test]
async fn a_non_loopback_http_addr_without_users_is_refused_unless_allow_anonymous() {
    let open = Config { http_addr: Some("0.0.0.0:0".parse().unwrap()), ..Config::ephemeral() };
    let refused = stampede_broker::start(&open).await.expect_err("refused");
    assert!(refused.to_string().contains("allow-anonymous"), "{refused}");
    let with_users = Config { http_addr: Some("0.0.0.0:0".parse().unwrap()), ..admin_and_user_config() };
    let broker = stampede_broker::start(&with_users).await.expect("starts with users");
    assert!(broker.http_addr.is_some_and(|addr| addr.ip().is_unspecified()));
    broker.shutdown(WAIT).await;
}

#[tokio::test]
async fn scraping_ten_thousand_queues_with_per_destination_series_is_fast() {
    const QUEUES: usize = 10_000;
    let mut config = public_config();
    config.metrics_per_destination = true;
    config.max_queues = QUEUES + 10;
    let broker = TestBroker::start_with(config).await;
    for i in 0..QUEUES {
        broker.broker.router().queue_or_create(&format!("load.{i}"));
    }
    let warm = scrape(&broker).await;
    assert_eq!(warm.lines().filter(|l| l.starts_with("stampede_queue_ready{")).count(), QUEUES);
    let started = Instant::now();
    let text = scrape(&broker).await;
    let round_trip = started.elapsed();
    let encode = value(&text, "stampede_scrape_duration_seconds");
    let size = value(&text, "stampede_scrape_size_bytes");
    println!(
        "scrape of {QUEUES} queues: encode {:.1} ms, HTTP round trip {:.1} ms, {:.0} KiB",
        encode * 1e3,
        round_trip.as_secs_f64() * 1e3,
        size / 1024.0
    );
    assert_eq!(value(&text, "stampede_queues"), QUEUES as f64);
    assert!(round_trip < Duration::from_secs(2), "scrape took {round_trip:?}");
    // Without the option, no per-destination series at all.
    let aggregated = TestBroker::start_with(public_config()).await;
    aggregated.broker.router().queue_or_create("one");
    let text = scrape(&aggregated).await;
    assert!(!text.contains("queue=\""), "{text}");
    assert_eq!(value(&text, "stampede_queues"), 1.0);
}

#[tokio::test]
async fn metrics_carry_store_process_build_and_protocol_families() {
    let broker = TestBroker::start_durable(public_config()).await;
    let mut producer = connected(&broker).await;
    let send = Frame::new(Command::Send)
        .with_header("destination", "/queue/stored")
        .with_header("persistent", "true")
        .with_header("receipt", "r")
        .with_body("kept");
    producer.send_frame(&send).await.unwrap();
    assert_eq!(next_frame(&mut producer).await.command, Command::Receipt);
    let text = scrape(&broker).await;
    assert!(value(&text, "stampede_store_fsyncs_total") >= 1.0);
    assert!(value(&text, "stampede_store_commit_seconds_count") >= 1.0);
    assert!(sample(&text, "stampede_store_commit_seconds_bucket{le=\"+Inf\"}").is_some(), "{text}");
    assert!(sample(&text, "stampede_store_bytes").is_some());
    assert!(value(&text, "stampede_process_resident_memory_bytes") > 0.0);
    assert!(value(&text, "stampede_process_open_fds") > 0.0);
    assert_eq!(value(&text, &format!("stampede_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    assert!(sample(&text, "stampede_protocol_unrepresentable_headers_omitted_total").is_some());
    assert!(sample(&text, "stampede_messages_dropped_total{reason=\"slow-consumer\"}").is_some());
    assert!(sample(&text, "stampede_messages_expired_total").is_some());
    assert!(sample(&text, "stampede_connections{transport=\"sse\"}").is_some());
}

#[tokio::test]
async fn websocket_connections_are_counted_under_their_transport() {
    let broker = TestBroker::start_with(public_config()).await;
    let client = broker.ws_client().await;
    let text = scrape(&broker).await;
    assert_eq!(value(&text, "stampede_connections{transport=\"ws\"}"), 1.0);
    assert_eq!(value(&text, "stampede_connections{transport=\"tcp\"}"), 0.0);
    drop(client);
}

#[tokio::test]
async fn the_management_listener_serves_https_when_the_broker_has_a_certificate() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let config = Config { tls_cert: Some(cert), tls_key: Some(key), ..public_config() };
    let broker = TestBroker::start_with(config).await;
    let https = broker.broker.https_addr.expect("an HTTPS listener when TLS is on");
    assert!(https.ip().is_loopback());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.unwrap().expect("TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await.unwrap().ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
}

#[tokio::test]
async fn metrics_count_queue_overflow_drops_and_expiries_exactly() {
    let mut config = public_config();
    config.queue_max_length = 2;
    config.queue_overflow = stampede_broker::destination::queue::OverflowPolicy::DropOldest;
    let broker = TestBroker::start_with(config).await;
    let before = scrape(&broker).await;
    let mut producer = connected(&broker).await;
    for i in 0..5 {
        let send = Frame::new(Command::Send)
            .with_header("destination", "/queue/full")
            .with_header("receipt", format!("r{i}"))
            .with_body("x");
        producer.send_frame(&send).await.unwrap();
        assert_eq!(next_frame(&mut producer).await.command, Command::Receipt);
    }
    // One message that expires 1 ms after it is sent, before anyone consumes it.
    let send = Frame::new(Command::Send)
        .with_header("destination", "/queue/short")
        .with_header("expiration", "1")
        .with_header("receipt", "short")
        .with_body("x");
    producer.send_frame(&send).await.unwrap();
    assert_eq!(next_frame(&mut producer).await.command, Command::Receipt);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut consumer = connected(&broker).await;
    let subscribe = Frame::new(Command::Subscribe).with_header("destination", "/queue/short").with_header("id", "s");
    consumer.send_frame(&subscribe.with_header("receipt", "subscribed")).await.unwrap();
    assert_eq!(next_frame(&mut consumer).await.command, Command::Receipt);
    let expired = "stampede_messages_expired_total";
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let text = scrape(&broker).await;
        if value(&text, expired) > value(&before, expired) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta("stampede_messages_dropped_total{reason=\"queue-overflow\"}"), 3.0);
    assert_eq!(delta(expired), 1.0);
    assert_eq!(delta("stampede_messages_delivered_total"), 0.0);
    assert_eq!(value(&after, "stampede_queue_messages_ready"), 2.0);
}
