//! The first hour (issue "first hour"): what someone trying the broker for the first time meets.
//! A browser or `curl` pointed at the WebSocket port gets a real HTTP answer saying where STOMP
//! is served, and a full queue says which configuration key set its limit, in human sizes.

use stampede_broker::Config;
use stampede_broker::destination::router::QueueOverride;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` to the WebSocket port and reads the whole answer (the broker closes after it).
async fn http(broker: &TestBroker, request: &str) -> String {
    let mut stream = TcpStream::connect(broker.broker.ws_addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("answer in time").expect("read");
    String::from_utf8(answer).expect("text answer")
}

#[tokio::test]
async fn a_plain_get_on_the_websocket_path_gets_426_naming_the_stomp_url() {
    let broker = TestBroker::start().await;
    let host = broker.broker.ws_addr.to_string();
    let answer = http(&broker, &format!("GET /ws HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\n\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{answer}");
    assert!(answer.contains("\r\nUpgrade: websocket\r\n"), "{answer}");
    assert!(answer.contains(&format!("ws://{host}/ws")), "the body names the STOMP URL: {answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(answer.contains(&format!("Content-Length: {}\r\n", body.len())), "{answer}");
}

#[tokio::test]
async fn a_plain_get_elsewhere_gets_404_with_a_hint() {
    let broker = TestBroker::start().await;
    let host = broker.broker.ws_addr.to_string();
    for path in ["/", "/index.html", "/wss"] {
        let answer = http(&broker, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{path}: {answer}");
        assert!(answer.contains(&format!("STOMP over WebSocket at ws://{host}/ws")), "{path}: {answer}");
    }
    // The WebSocket upgrade itself still works after the head was read by the HTTP side.
    let client = broker.ws_client().await;
    client.disconnect().await.expect("disconnect");
}

#[tokio::test]
async fn the_queue_full_error_names_the_override_key_in_effect_with_a_human_size() {
    let mut config = Config::ephemeral();
    config.queues.insert(
        "orders".to_owned(),
        QueueOverride { max_length: Some(1), max_bytes: Some(1 << 20), ..QueueOverride::default() },
    );
    config.queues.insert("big".to_owned(), QueueOverride { max_bytes: Some(1024), ..QueueOverride::default() });
    let broker = TestBroker::start_with(config).await;
    let mut raw: RawConnection = broker.raw().await;
    raw.handshake(&[], WAIT).await.expect("connected");

    send(&mut raw, "/queue/orders", "first").await.expect("the first message fits");
    let error = send(&mut raw, "/queue/orders", "second").await.expect_err("the queue is full");
    assert!(error.contains("its maximum of 1 message ([queues.orders] max_length)"), "{error}");
    assert!(!error.contains("queue_max_length"), "{error}");

    let mut raw = broker.raw().await;
    raw.handshake(&[], WAIT).await.expect("connected");
    send(&mut raw, "/queue/big", "x").await.expect("the first message fits");
    let error = send(&mut raw, "/queue/big", &"y".repeat(2000)).await.expect_err("too many bytes");
    assert!(error.contains("1 KiB") && error.contains("([queues.big] max_bytes)"), "{error}");
}

/// Sends `body` to `destination` with a receipt: Ok on the RECEIPT, the ERROR's body otherwise.
async fn send(raw: &mut RawConnection, destination: &str, body: &str) -> Result<(), String> {
    let frame = Frame::new(Command::Send)
        .with_header("destination", destination)
        .with_header("receipt", "r")
        .with_body(body.to_owned());
    raw.send_frame(&frame).await.expect("send");
    loop {
        let Some(answer) = raw.read_frame(WAIT).await.map_err(|e| e.to_string())? else {
            return Err("no answer".into());
        };
        match answer.command {
            Command::Receipt => return Ok(()),
            Command::Error => return Err(String::from_utf8_lossy(&answer.body).into_owned()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn an_ack_pipelined_before_a_refused_send_is_still_applied() {
    use stampede_broker::config::UserConfig;
    let mut config = Config::ephemeral();
    config.auth_failure_delay_ms = 1;
    let worker = UserConfig {
        password_hash: stampede_broker::security::auth::hash_password_with("w", 64, 1).unwrap(),
        read: vec!["/queue/jobs".into()],
        write: vec!["/queue/jobs".into()],
        vhosts: Default::default(),
        admin: false,
    };
    config.users.insert("worker".into(), worker);
    let broker = TestBroker::start_with(config).await;
    let mut raw = broker.raw().await;
    raw.handshake(&[("login", "worker"), ("passcode", "w")], WAIT).await.unwrap();
    let subscribe = Frame::new(Command::Subscribe)
        .with_header("destination", "/queue/jobs")
        .with_header("id", "jobs")
        .with_header("ack", "client-individual");
    raw.send_frame(&subscribe).await.unwrap();
    raw.send_frame(&Frame::new(Command::Send).with_header("destination", "/queue/jobs").with_body("job"))
        .await
        .unwrap();
    let job = loop {
        let frame = raw.read_frame(WAIT).await.unwrap().expect("the job");
        if frame.command == Command::Message {
            break frame;
        }
    };
    // The ACK and a SEND the worker may not do, in one write: the SEND ends the session.
    let mut bytes = stampede_protocol::encode_to_bytes(
        &Frame::new(Command::Ack).with_header("id", job.header("ack").unwrap().to_owned()),
        stampede_protocol::Version::V1_2,
    )
    .to_vec();
    let forbidden = Frame::new(Command::Send).with_header("destination", "/queue/elsewhere").with_body("x");
    bytes.extend_from_slice(&stampede_protocol::encode_to_bytes(&forbidden, stampede_protocol::Version::V1_2));
    raw.send_bytes(&bytes).await.unwrap();
    let closing = raw.expect_closed(WAIT).await.unwrap();
    assert!(closing.iter().any(|f| f.command == Command::Error), "{closing:?}");
    // Acknowledged, so never redelivered to the next consumer.
    let mut next = broker.raw().await;
    next.handshake(&[("login", "worker"), ("passcode", "w")], WAIT).await.unwrap();
    next.send_frame(&subscribe.with_header("receipt", "r")).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(frame)) = next.read_frame(stampede_tests::QUIET).await {
        seen.push(frame.command);
    }
    assert_eq!(seen, [Command::Receipt], "the acknowledged job came back");
}
