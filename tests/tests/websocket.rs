//! STOMP over WebSocket: subprotocol negotiation, framing across and within WebSocket
//! messages, text versus binary, pings, paths.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use stampede_client::{Headers, SubscribeOptions};
use stampede_tests::{TestBroker, WAIT};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, protocols: Option<&str>) -> (Socket, Option<String>) {
    let mut request = url.into_client_request().unwrap();
    if let Some(protocols) = protocols {
        request.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await.expect("handshake");
    let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
    (socket, chosen)
}

/// Reads WebSocket messages until one carries a STOMP frame (skipping heart-beats and pings).
async fn next_frame(socket: &mut Socket) -> Message {
    loop {
        let message =
            tokio::time::timeout(WAIT, socket.next()).await.expect("a message in time").expect("open").unwrap();
        match &message {
            Message::Text(t) if t.as_str() == "\n" => continue,
            Message::Ping(_) | Message::Pong(_) => continue,
            _ => return message,
        }
    }
}

fn payload(message: &Message) -> Vec<u8> {
    match message {
        Message::Text(t) => t.as_bytes().to_vec(),
        Message::Binary(b) => b.to_vec(),
        other => panic!("not a data message: {other:?}"),
    }
}

#[tokio::test]
async fn highest_offered_stomp_subprotocol_is_echoed() {
    let broker = TestBroker::start().await;
    let (_, chosen) = open(&broker.ws_url, Some("v10.stomp, v11.stomp, v12.stomp")).await;
    assert_eq!(chosen.as_deref(), Some("v12.stomp"));
    let (_, chosen) = open(&broker.ws_url, Some("v11.stomp")).await;
    assert_eq!(chosen.as_deref(), Some("v11.stomp"));
}

#[tokio::test]
async fn a_client_offering_no_subprotocol_still_speaks_stomp_1_2() {
    let broker = TestBroker::start().await;
    let (mut socket, chosen) = open(&broker.ws_url, None).await;
    assert_eq!(chosen, None);
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    let connected = String::from_utf8(payload(&next_frame(&mut socket).await)).unwrap();
    assert!(connected.starts_with("CONNECTED\n") && connected.contains("version:1.2"), "{connected}");
}

#[tokio::test]
async fn other_paths_are_refused_with_an_http_error() {
    let broker = TestBroker::start().await;
    let url = broker.ws_url.replace("/ws", "/elsewhere");
    let error = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(error.to_string().contains("404"), "{error}");
}

#[tokio::test]
async fn one_frame_may_span_several_websocket_messages_and_one_message_may_hold_several_frames() {
    let broker = TestBroker::start().await;
    let (mut socket, _) = open(&broker.ws_url, Some("v12.stomp")).await;
    // CONNECT split in three messages, mixing text and binary.
    socket.send(Message::text("CONN")).await.unwrap();
    socket.send(Message::binary(Bytes::from_static(b"ECT\naccept-version:1.2\n"))).await.unwrap();
    socket.send(Message::text("host:/\n\n\0")).await.unwrap();
    assert!(String::from_utf8(payload(&next_frame(&mut socket).await)).unwrap().starts_with("CONNECTED"));
    // SUBSCRIBE and a SEND in one message.
    socket
        .send(Message::text("SUBSCRIBE\nid:0\ndestination:/topic/ws\n\n\0SEND\ndestination:/topic/ws\n\nboth in one\0"))
        .await
        .unwrap();
    let message = String::from_utf8(payload(&next_frame(&mut socket).await)).unwrap();
    assert!(message.starts_with("MESSAGE\n") && message.ends_with("both in one\0"), "{message:?}");
}

#[tokio::test]
async fn utf8_bodies_go_out_as_text_and_binary_bodies_as_binary() {
    let broker = TestBroker::start().await;
    let (mut socket, _) = open(&broker.ws_url, Some("v12.stomp")).await;
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    next_frame(&mut socket).await;
    socket.send(Message::text("SUBSCRIBE\nid:0\ndestination:/topic/kinds\nreceipt:r\n\n\0")).await.unwrap();
    next_frame(&mut socket).await;
    let publisher = broker.client().await;
    publisher.send("/topic/kinds", "héllo", Headers::new()).await.unwrap();
    publisher.send("/topic/kinds", vec![0xffu8, 0xfe, 0x00, 0x01], Headers::new()).await.unwrap();
    let text = next_frame(&mut socket).await;
    assert!(matches!(text, Message::Text(_)), "{text:?}");
    let binary = next_frame(&mut socket).await;
    let Message::Binary(bytes) = binary else { panic!("binary expected") };
    assert!(bytes.ends_with(&[0xff, 0xfe, 0x00, 0x01, 0x00]), "body intact, then NUL");
    assert!(String::from_utf8_lossy(&bytes).contains("content-length:4\n"));
}

#[tokio::test]
async fn pings_are_answered() {
    let broker = TestBroker::start().await;
    let (mut socket, _) = open(&broker.ws_url, Some("v12.stomp")).await;
    socket.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap() {
            Message::Pong(data) => {
                assert_eq!(data.as_ref(), b"are you there");
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn server_sends_websocket_pings_when_idle() {
    let config = stampede_broker::Config { ws_ping_interval_ms: 100, ..stampede_broker::Config::ephemeral() };
    let broker = TestBroker::start_with(config).await;
    let (mut socket, _) = open(&broker.ws_url, Some("v12.stomp")).await;
    let got_ping = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Ping(_)) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got_ping, Ok(true));
}

#[tokio::test]
async fn websocket_and_tcp_clients_share_destinations() {
    let broker = TestBroker::start().await;
    let (browser, backend) = (broker.ws_client().await, broker.client().await);
    let mut from_backend = browser.subscribe("/queue/to-browser", SubscribeOptions::new()).await.unwrap();
    let mut from_browser = backend.subscribe("/topic/to-backend", SubscribeOptions::new()).await.unwrap();
    backend.send("/queue/to-browser", "hi browser", Headers::new()).await.unwrap();
    browser.send("/topic/to-backend", "hi backend", Headers::new()).await.unwrap();
    assert_eq!(from_backend.recv_timeout(WAIT).await.unwrap().body.as_ref(), b"hi browser");
    assert_eq!(from_browser.recv_timeout(WAIT).await.unwrap().body.as_ref(), b"hi backend");
}

#[tokio::test]
async fn closing_cleanly_from_the_client_side_ends_the_session() {
    let broker = TestBroker::start().await;
    let (mut socket, _) = open(&broker.ws_url, Some("v12.stomp")).await;
    socket.send(Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    next_frame(&mut socket).await;
    socket.send(Message::text("SUBSCRIBE\nid:0\ndestination:/queue/wsclose\nreceipt:r\n\n\0")).await.unwrap();
    next_frame(&mut socket).await;
    socket.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.broker.router().queue("wsclose").map(|q| q.consumer_count()) != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "consumer removed after close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
