//! The HTTP fallback for clients without WebSocket: Server-Sent Events down, POST up, one STOMP
//! session whichever carries it, and a stream that breaks resumes with `Last-Event-ID`.

use base64::Engine as _;
use stampede_broker::config::Config;
use stampede_client::{Headers, SubscribeOptions};
use stampede_tests::{TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFIX: &str = "/stampede-fallback";

fn base(broker: &TestBroker) -> String {
    format!("http://{}", broker.broker.ws_addr)
}

/// One fallback session seen from the client side: its URLs and the STOMP bytes received.
struct FallbackClient {
    http: reqwest::Client,
    base: String,
    id: String,
    events: Option<reqwest::Response>,
    text: String,
    received: Vec<u8>,
    last_event_id: Option<String>,
    ended: bool,
}

impl FallbackClient {
    async fn open(broker: &TestBroker) -> FallbackClient {
        let http = stampede_tests::http_client();
        let base = base(broker);
        let response = http.post(format!("{base}{PREFIX}/sessions")).send().await.expect("open a session");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let json: serde_json::Value = response.json().await.unwrap();
        let id = json["session"].as_str().expect("session id").to_owned();
        assert_eq!(json["events"], format!("{PREFIX}/sessions/{id}/events"));
        assert_eq!(id.len(), 32, "128 random bits");
        let mut client = FallbackClient {
            http,
            base,
            id,
            events: None,
            text: String::new(),
            received: Vec::new(),
            last_event_id: None,
            ended: false,
        };
        client.attach(None).await;
        client
    }

    async fn attach(&mut self, last_event_id: Option<&str>) -> reqwest::StatusCode {
        let mut request = self.http.get(format!("{}{PREFIX}/sessions/{}/events", self.base, self.id));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("event stream");
        let status = response.status();
        if status == 200 {
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            self.events = Some(response);
            self.text.clear();
        }
        status
    }

    /// Drops the event stream, as a lost network would.
    fn detach(&mut self) {
        self.events = None;
    }

    async fn post(&self, frames: &str) -> reqwest::StatusCode {
        self.http
            .post(format!("{}{PREFIX}/sessions/{}/frames", self.base, self.id))
            .body(frames.to_owned())
            .send()
            .await
            .expect("post frames")
            .status()
    }

    /// Reads events until the received STOMP bytes contain `needle`.
    async fn read_until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let received = String::from_utf8_lossy(&self.received).into_owned();
            if received.contains(needle) || self.ended {
                return received;
            }
            let events = self.events.as_mut().expect("attached");
            let chunk = tokio::time::timeout_at(deadline, events.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in time; got {received:?}"))
                .expect("stream readable")
                .expect("stream open");
            self.text.push_str(std::str::from_utf8(&chunk).expect("SSE is text"));
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                let mut kind = "message";
                for line in event.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        self.last_event_id = Some(id.to_owned());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        if kind == "message" {
                            let bytes = base64::engine::general_purpose::STANDARD.decode(data).expect("base64 data");
                            self.received.extend_from_slice(&bytes);
                        }
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        kind = if name == "end" { "end" } else { "other" };
                    }
                }
                if kind == "end" {
                    self.ended = true;
                }
            }
        }
    }

    async fn connect(&mut self) {
        assert_eq!(self.post("CONNECT\naccept-version:1.2\nhost:/\n\n\0").await, 204);
        let received = self.read_until("CONNECTED").await;
        assert!(received.starts_with("CONNECTED\n"), "{received:?}");
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn a_fallback_session_exchanges_topic_and_queue_messages_with_a_tcp_client() {
    let broker = TestBroker::start().await;
    let mut browser = FallbackClient::open(&broker).await;
    browser.connect().await;
    assert_eq!(
        browser
            .post("SUBSCRIBE\nid:1\ndestination:/topic/news\nreceipt:s1\n\n\0SUBSCRIBE\nid:2\ndestination:/queue/jobs\nack:client-individual\nreceipt:s2\n\n\0")
            .await,
        204
    );
    browser.read_until("receipt-id:s2").await;
    let backend = broker.client().await;
    backend.send_with_receipt("/topic/news", "hello over SSE", Headers::new()).await.unwrap();
    backend.send_with_receipt("/queue/jobs", "a job with a\0NUL byte", Headers::new()).await.unwrap();
    let received = browser.read_until("NUL byte").await;
    assert!(received.contains("hello over SSE"), "{received:?}");
    assert!(received.contains("a job with a\0NUL byte"), "binary-safe bodies: {received:?}");
    // And the other way: the browser publishes, the backend receives.
    let mut sub = backend.subscribe("/queue/answers", SubscribeOptions::new()).await.unwrap();
    assert_eq!(browser.post("SEND\ndestination:/queue/answers\n\nfrom the fallback\0").await, 204);
    let message = sub.recv_timeout(WAIT).await.expect("a message in time");
    assert_eq!(message.body.as_ref(), b"from the fallback");
}

#[tokio::test]
async fn a_dropped_event_stream_resumes_with_last_event_id_without_losing_or_repeating_frames() {
    let broker = TestBroker::start().await;
    let mut browser = FallbackClient::open(&broker).await;
    browser.connect().await;
    assert_eq!(browser.post("SUBSCRIBE\nid:1\ndestination:/topic/ticks\nreceipt:s\n\n\0").await, 204);
    browser.read_until("receipt-id:s").await;
    let backend = broker.client().await;
    backend.send_with_receipt("/topic/ticks", "tick-0", Headers::new()).await.unwrap();
    browser.read_until("tick-0").await;
    let seen = browser.last_event_id.clone().expect("events are numbered");
    browser.detach();
    for i in 1..=20 {
        backend.send_with_receipt("/topic/ticks", format!("tick-{i}"), Headers::new()).await.unwrap();
    }
    assert_eq!(browser.attach(Some(&seen)).await, 200);
    let received = browser.read_until("tick-20").await;
    for i in 0..=20 {
        assert_eq!(count(&received, &format!("tick-{i}\0")), 1, "tick-{i} exactly once: {received:?}");
    }
}

#[tokio::test]
async fn deleting_a_fallback_session_ends_its_stomp_connection_and_its_stream() {
    let broker = TestBroker::start().await;
    let mut browser = FallbackClient::open(&broker).await;
    browser.connect().await;
    let url = format!("{}{PREFIX}/sessions/{}", browser.base, browser.id);
    assert_eq!(browser.http.delete(&url).send().await.unwrap().status(), 204);
    browser.read_until("never sent").await;
    assert!(browser.ended, "the stream ends with an end event");
    // The session is gone: posting to it says so.
    let status = browser.post("SEND\ndestination:/topic/x\n\nlate\0").await;
    assert!(status == 404 || status == 410, "{status}");
}

#[tokio::test]
async fn a_stomp_error_on_the_fallback_reaches_the_client_and_ends_the_stream() {
    let broker = TestBroker::start().await;
    let mut browser = FallbackClient::open(&broker).await;
    browser.connect().await;
    assert_eq!(browser.post("BOGUS\n\n\0").await, 204);
    let received = browser.read_until("ERROR").await;
    assert!(received.contains("ERROR\n"), "{received:?}");
    browser.read_until("never sent").await;
    assert!(browser.ended, "the session ends after its ERROR, as a socket would close");
}

#[tokio::test]
async fn fallback_requests_with_bad_input_get_a_json_error_with_the_right_status() {
    let broker = TestBroker::start().await;
    let http = stampede_tests::http_client();
    let base = base(&broker);
    let unknown = http.post(format!("{base}{PREFIX}/sessions/0123/frames")).body("x").send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let json: serde_json::Value = unknown.json().await.unwrap();
    assert!(json["error"].is_string() && json["reason"].is_string(), "{json}");
    let wrong = http.get(format!("{base}{PREFIX}/nothing-here")).send().await.unwrap();
    assert_eq!(wrong.status(), 404);

    let mut browser = FallbackClient::open(&broker).await;
    let events = format!("{base}{PREFIX}/sessions/{}/events", browser.id);
    let bad_id = http.get(&events).header("Last-Event-ID", "yesterday").send().await.unwrap();
    assert_eq!(bad_id.status(), 400);
    let future = http.get(&events).header("Last-Event-ID", "999999").send().await.unwrap();
    assert_eq!(future.status(), 410, "an event that never existed cannot be resumed from");
    // A head announcing more than the limit is answered 413 before any body is sent.
    let too_large = Config::default().max_body + Config::default().max_header_bytes + 4096;
    let mut socket = tokio::net::TcpStream::connect(broker.broker.ws_addr).await.unwrap();
    let head = format!(
        "POST {PREFIX}/sessions/{}/frames HTTP/1.1\r\nHost: x\r\nContent-Length: {too_large}\r\n\r\n",
        browser.id
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, socket.read_to_string(&mut answer)).await.expect("answered in time").unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("max_body + max_header_bytes"), "the limit is named: {answer}");
    // The session still works after the refused requests.
    browser.connect().await;
}

#[tokio::test]
async fn the_fallback_follows_the_websocket_origin_rules() {
    let config = Config { ws_allowed_origins: vec!["https://app.example".into()], ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let http = stampede_tests::http_client();
    let url = format!("{}{PREFIX}/sessions", base(&broker));
    let refused = http.post(&url).header("Origin", "https://evil.example").send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let allowed = http.post(&url).header("Origin", "https://app.example").send().await.unwrap();
    assert_eq!(allowed.status(), 201);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
}

#[tokio::test]
async fn a_fallback_session_counts_against_max_connections() {
    // Each HTTP request holds a connection while it is open, and so does each session: the
    // first session and the second request fill two.
    let config = Config { max_connections: 2, ..Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let http = stampede_tests::http_client();
    let url = format!("{}{PREFIX}/sessions", base(&broker));
    let first = http.post(&url).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let second = http.post(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    let json: serde_json::Value = second.json().await.unwrap();
    assert!(json["reason"].as_str().unwrap().contains("max_connections"), "{json}");
}

#[tokio::test]
async fn the_fallback_shim_for_stompjs_is_served_on_the_websocket_port() {
    let broker = TestBroker::start().await;
    let response =
        stampede_tests::http_client().get(format!("{}/stampede-fallback.js", base(&broker))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let body = response.text().await.unwrap();
    assert!(body.contains("StampedeFallback") && body.contains("webSocketFactory"), "{body:.200}");
}
