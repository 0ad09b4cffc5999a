//! Session resumption end to end, over TCP and WebSocket: a client's socket is dropped without
//! DISCONNECT in the middle of a stream, and a new connection with the `session-resume-token` of
//! the last CONNECTED gets the session back.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use stampede_client::raw::RawConnection;
use stampede_protocol::{Command, Decoder, Frame, Item, Limits, Version, encode};
use stampede_tests::{ADMIN, QUIET, TestBroker, USER, WAIT, admin_and_user_config};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Clone, Copy, Debug)]
enum Over {
    Tcp,
    Ws,
}

/// A client connection that can be killed: dropping it drops the socket, no DISCONNECT.
enum Peer {
    Tcp(RawConnection),
    Ws { socket: Box<Socket>, decoder: Decoder, input: BytesMut },
}

impl Peer {
    async fn open(broker: &TestBroker, over: Over) -> Peer {
        match over {
            Over::Tcp => Peer::Tcp(broker.raw().await),
            Over::Ws => {
                let mut request = broker.ws_url.as_str().into_client_request().unwrap();
                request.headers_mut().insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
                let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("WebSocket handshake");
                Peer::Ws { socket: Box::new(socket), decoder: Decoder::new(Limits::default()), input: BytesMut::new() }
            }
        }
    }

    async fn send(&mut self, frame: &Frame) {
        match self {
            Peer::Tcp(raw) => raw.send_frame(frame).await.expect("sent"),
            Peer::Ws { socket, .. } => {
                let mut out = BytesMut::new();
                encode(frame, Version::V1_2, &mut out);
                socket.send(Message::binary(out.freeze())).await.expect("sent");
            }
        }
    }

    /// The next frame within `timeout` (heart-beats skipped), `None` if none came.
    async fn read(&mut self, timeout: Duration) -> Option<Frame> {
        match self {
            Peer::Tcp(raw) => raw.read_frame(timeout).await.expect("readable"),
            Peer::Ws { socket, decoder, input } => {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    while let Some(item) = decoder.decode(input).expect("valid STOMP") {
                        if let Item::Frame(frame) = item {
                            return Some(frame);
                        }
                    }
                    let message = tokio::time::timeout_at(deadline, socket.next()).await.ok()??.ok()?;
                    match message {
                        Message::Text(text) => input.extend_from_slice(text.as_bytes()),
                        Message::Binary(bytes) => input.extend_from_slice(&bytes),
                        Message::Close(_) => return None,
                        _ => {}
                    }
                }
            }
        }
    }

    /// CONNECT as `user` with `headers`; the answer (CONNECTED or ERROR).
    async fn connect(&mut self, user: (&str, &str), headers: &[(&str, &str)]) -> Frame {
        let mut connect = frame(
            Command::Connect,
            &[("accept-version", "1.2"), ("host", "/"), ("heart-beat", "0,0"), ("login", user.0), ("passcode", user.1)],
        );
        for (name, value) in headers {
            connect.headers.push(name.to_string(), value.to_string());
        }
        self.send(&connect).await;
        let answer = self.read(WAIT).await.expect("an answer to CONNECT");
        if let Peer::Tcp(raw) = self {
            raw.set_version(Version::V1_2);
        }
        answer
    }

    /// Sends `frame` with a receipt and waits for it.
    async fn receipted(&mut self, mut frame: Frame) {
        frame.headers.push("receipt", "r");
        self.send(&frame).await;
        let answer = self.read(WAIT).await.expect("RECEIPT");
        assert_eq!(answer.command, Command::Receipt, "{answer:?}");
    }

    /// MESSAGE frames until none arrives for [`QUIET`].
    async fn messages(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.read(QUIET).await {
            assert_eq!(frame.command, Command::Message, "{frame:?}");
            frames.push(frame);
        }
        frames
    }

    /// Exactly `count` MESSAGE frames, each within [`WAIT`].
    async fn take(&mut self, count: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        while frames.len() < count {
            let frame = self.read(WAIT).await.unwrap_or_else(|| panic!("only {} of {count} arrived", frames.len()));
            assert_eq!(frame.command, Command::Message, "{frame:?}");
            frames.push(frame);
        }
        frames
    }
}

fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    headers
        .iter()
        .fold(Frame::new(command), |frame, (name, value)| frame.with_header(name.to_string(), value.to_string()))
}

fn body(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.body).into_owned()
}

fn token(connected: &Frame) -> String {
    assert_eq!(connected.command, Command::Connected, "{connected:?}");
    connected.header("session-resume-token").expect("CONNECTED carries session-resume-token").to_owned()
}

async fn broker_with(change: impl FnOnce(&mut stampede_broker::Config)) -> TestBroker {
    let mut config = admin_and_user_config();
    change(&mut config);
    TestBroker::start_with(config).await
}

async fn producer(broker: &TestBroker) -> Peer {
    let mut producer = Peer::open(broker, Over::Tcp).await;
    producer.connect(USER, &[]).await;
    producer
}

async fn send_all(producer: &mut Peer, destination: &str, bodies: impl IntoIterator<Item = String>) {
    for text in bodies {
        producer.receipted(frame(Command::Send, &[("destination", destination)]).with_body(text)).await;
    }
}

async fn nothing_lost_on_a_queue(over: Over) {
    let broker = broker_with(|_| {}).await;
    let mut producer = producer(&broker).await;
    let mut first = Peer::open(&broker, over).await;
    let token = token(&first.connect(USER, &[("resume-token", "")]).await);
    first
        .receipted(frame(
            Command::Subscribe,
            &[("destination", "/queue/jobs"), ("id", "jobs"), ("ack", "client-individual")],
        ))
        .await;
    send_all(&mut producer, "/queue/jobs", (1..=20).map(|n| n.to_string())).await;
    // Mid-stream: five read, three acknowledged, then the socket dies.
    let read = first.take(5).await;
    for message in &read[..3] {
        first.send(&frame(Command::Ack, &[("id", message.header("ack").unwrap())])).await;
    }
    // Time for the broker to read the ACKs: the socket is reset with unread MESSAGEs in it.
    tokio::time::sleep(QUIET).await;
    drop(first);
    send_all(&mut producer, "/queue/jobs", (21..=30).map(|n| n.to_string())).await;

    let mut second = Peer::open(&broker, over).await;
    let connected = second.connect(USER, &[("resume-token", &token)]).await;
    assert_eq!(connected.header("session-resumed"), Some("true"), "{connected:?}");
    let again = second.messages().await;
    let bodies: Vec<u32> = again.iter().map(|m| body(m).parse().unwrap()).collect();
    assert_eq!(bodies, (4..=30).collect::<Vec<u32>>(), "every unacknowledged message, in order, none twice");
    for message in again.iter().filter(|m| body(m).parse::<u32>().unwrap() <= 20) {
        assert_eq!(message.header("redelivered"), Some("true"), "{message:?}");
        assert_eq!(message.header("subscription"), Some("jobs"));
    }
    for message in &again {
        second.send(&frame(Command::Ack, &[("id", message.header("ack").unwrap())])).await;
    }
    // And the subscription goes on, without a SUBSCRIBE.
    send_all(&mut producer, "/queue/jobs", (31..=33).map(|n| n.to_string())).await;
    let later = second.take(3).await;
    assert_eq!(later.iter().map(body).collect::<Vec<_>>(), ["31", "32", "33"]);
    assert!(later.iter().all(|m| m.header("redelivered").is_none()));
}

#[tokio::test]
async fn a_killed_tcp_client_resumes_and_gets_every_unacked_queue_message_redelivered_in_order() {
    nothing_lost_on_a_queue(Over::Tcp).await;
}

#[tokio::test]
async fn a_killed_websocket_client_resumes_and_gets_every_unacked_queue_message_redelivered_in_order() {
    nothing_lost_on_a_queue(Over::Ws).await;
}

/// Bodies of 1000 bytes: a MESSAGE costs the outbox its body plus well under 125 bytes of
/// headers, so a budget of 4500 bytes holds exactly four.
async fn gap_reported_exactly_on_a_topic(over: Over) {
    let broker = broker_with(|config| config.session_resume_buffer_bytes = 4500).await;
    let mut producer = producer(&broker).await;
    let mut first = Peer::open(&broker, over).await;
    let token = token(&first.connect(USER, &[("resume-token", "")]).await);
    first.receipted(frame(Command::Subscribe, &[("destination", "/topic/prices"), ("id", "p")])).await;
    let text = |n: u32| format!("{n:04}{}", "x".repeat(996));
    send_all(&mut producer, "/topic/prices", [text(0)]).await;
    assert_eq!(first.take(1).await.iter().map(body).collect::<Vec<_>>(), [text(0)]);
    drop(first);
    // Let the broker see the socket close before the messages come.
    tokio::time::sleep(QUIET).await;
    send_all(&mut producer, "/topic/prices", (1..=10).map(text)).await;

    let mut second = Peer::open(&broker, over).await;
    let connected = second.connect(USER, &[("resume-token", &token)]).await;
    assert_eq!(connected.header("session-resumed"), Some("true"));
    send_all(&mut producer, "/topic/prices", [text(11)]).await;
    let delivered = second.messages().await;
    let bodies: Vec<String> = delivered.iter().map(|m| body(m)[..4].to_owned()).collect();
    assert_eq!(bodies, ["0001", "0002", "0003", "0004", "0011"], "the four oldest kept, then live");
    assert_eq!(delivered[0].header("x-resume-gap"), Some("6"), "six dropped, on the first MESSAGE");
    assert!(delivered[1..].iter().all(|m| m.header("x-resume-gap").is_none()));
}

#[tokio::test]
async fn over_tcp_topic_messages_beyond_the_budget_are_reported_exactly_as_the_resume_gap() {
    gap_reported_exactly_on_a_topic(Over::Tcp).await;
}

#[tokio::test]
async fn over_websocket_topic_messages_beyond_the_budget_are_reported_exactly_as_the_resume_gap() {
    gap_reported_exactly_on_a_topic(Over::Ws).await;
}

#[tokio::test]
async fn a_resume_token_presented_by_another_user_is_refused_and_the_session_stays_resumable() {
    let broker = broker_with(|_| {}).await;
    let mut first = Peer::open(&broker, Over::Tcp).await;
    let token = token(&first.connect(USER, &[("resume-token", "")]).await);
    first.receipted(frame(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")])).await;
    drop(first);
    let mut thief = Peer::open(&broker, Over::Tcp).await;
    let answer = thief.connect(ADMIN, &[("resume-token", &token)]).await;
    assert_eq!(answer.command, Command::Error);
    assert!(answer.header("message").unwrap().contains("belongs to another user"), "{answer:?}");
    let mut owner = Peer::open(&broker, Over::Tcp).await;
    let connected = owner.connect(USER, &[("resume-token", &token)]).await;
    assert_eq!(connected.header("session-resumed"), Some("true"));
}

#[tokio::test]
async fn after_the_grace_a_resume_token_gives_a_fresh_session_and_unacked_messages_go_to_others() {
    let broker = broker_with(|config| config.session_resume_grace_ms = 300).await;
    let mut producer = producer(&broker).await;
    let mut first = Peer::open(&broker, Over::Tcp).await;
    let token = token(&first.connect(USER, &[("resume-token", "")]).await);
    first.receipted(frame(Command::Subscribe, &[("destination", "/queue/work"), ("id", "w"), ("ack", "client")])).await;
    send_all(&mut producer, "/queue/work", ["job".to_owned()]).await;
    first.take(1).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut late = Peer::open(&broker, Over::Tcp).await;
    let connected = late.connect(USER, &[("resume-token", &token)]).await;
    assert_eq!(connected.header("session-resumed"), Some("false"), "{connected:?}");
    assert!(late.messages().await.is_empty(), "no subscription came back");
    late.receipted(frame(Command::Subscribe, &[("destination", "/queue/work"), ("id", "w")])).await;
    let again = late.take(1).await;
    assert_eq!(body(&again[0]), "job");
    assert_eq!(again[0].header("redelivered"), Some("true"));
}

#[tokio::test]
async fn a_second_connection_with_the_token_takes_the_session_over_and_the_first_gets_an_error() {
    let broker = broker_with(|_| {}).await;
    let mut producer = producer(&broker).await;
    let mut first = Peer::open(&broker, Over::Tcp).await;
    let token = token(&first.connect(USER, &[("resume-token", "")]).await);
    first.receipted(frame(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")])).await;
    let mut second = Peer::open(&broker, Over::Ws).await;
    let connected = second.connect(USER, &[("resume-token", &token)]).await;
    assert_eq!(connected.header("session-resumed"), Some("true"), "{connected:?}");
    let error = first.read(WAIT).await.expect("an ERROR for the old connection");
    assert_eq!(error.command, Command::Error);
    assert_eq!(error.header("message"), Some("session resumed by another connection"));
    send_all(&mut producer, "/topic/t", ["hello".to_owned()]).await;
    assert_eq!(second.take(1).await.iter().map(body).collect::<Vec<_>>(), ["hello"]);
}
