//! The client against a scripted fake server: a `TcpListener` on port 0 whose side of the
//! conversation is written by each test with [`RawConnection`] (the library's own raw socket),
//! so every byte the client sends is checked and every odd server behaviour can be staged.

use std::time::Duration;

use futures_util::StreamExt;
use stampede_client::raw::RawConnection;
use stampede_client::{
    AckMode, Client, ClientError, CloseReason, Command, ConnectOptions, Frame, Headers, SubscribeOptions, Version,
};
use stampede_protocol::Item;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(5);

/// Binds a listener on an ephemeral port and returns it with the client's URL.
async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// Accepts one connection, reads CONNECT and answers CONNECTED with `headers`.
async fn accept(listener: &TcpListener, headers: &[(&str, &str)]) -> (RawConnection, Frame) {
    let (stream, _) = listener.accept().await.unwrap();
    let mut server = RawConnection::from_stream(stream);
    let connect = next(&mut server).await;
    assert_eq!(connect.command, Command::Connect);
    let mut connected = Frame::new(Command::Connected);
    for (name, value) in headers {
        connected.headers.push(*name, *value);
    }
    server.send_frame(&connected).await.unwrap();
    let version = connected.header("version").and_then(Version::parse).unwrap_or(Version::V1_0);
    server.set_version(version);
    (server, connect)
}

async fn next(server: &mut RawConnection) -> Frame {
    server.read_frame(WAIT).await.unwrap().expect("the client sent nothing in time")
}

fn options(url: &str) -> ConnectOptions {
    ConnectOptions::new(url).unwrap().heart_beat(0, 0).receipt_timeout(WAIT)
}

fn receipt_for(frame: &Frame) -> Frame {
    let id = frame.header("receipt").expect("the frame asked for no receipt");
    Frame::new(Command::Receipt).with_header("receipt-id", id)
}

fn message(subscription: &str, id: &str, ack: Option<&str>, body: &str) -> Frame {
    let mut frame = Frame::new(Command::Message)
        .with_header("destination", "/queue/a")
        .with_header("message-id", id)
        .with_header("subscription", subscription)
        .with_body(body.to_owned());
    if let Some(ack) = ack {
        frame.headers.push("ack", ack);
    }
    frame
}

#[tokio::test]
async fn connect_negotiates_and_send_with_receipt_waits_for_the_receipt() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, connect) =
            accept(&listener, &[("version", "1.2"), ("session", "s-1"), ("server", "fake/1")]).await;
        assert_eq!(connect.header("accept-version"), Some("1.0,1.1,1.2"));
        assert_eq!(connect.header("host"), Some("/"));
        assert_eq!(connect.header("login"), Some("guest"));
        assert_eq!(connect.header("passcode"), Some("a:b\\c"), "CONNECT is not escaped");
        let send = next(&mut server).await;
        assert_eq!(send.command, Command::Send);
        assert_eq!(send.header("destination"), Some("/queue/a"));
        assert_eq!(send.header("persistent"), Some("true"));
        assert_eq!(send.header("receipt"), Some("rcpt-0"));
        assert_eq!(&send.body[..], b"hello\0world");
        server.send_frame(&receipt_for(&send)).await.unwrap();
        server
    });
    let client = Client::connect_with(options(&url).credentials("guest", "a:b\\c")).await.unwrap();
    assert_eq!(client.version(), Version::V1_2);
    assert_eq!(client.session(), Some("s-1"));
    assert_eq!(client.server(), Some("fake/1"));
    let headers: Headers = [("persistent", "true")].into_iter().collect();
    let receipt = client.send_with_receipt("/queue/a", &b"hello\0world"[..], headers).await.unwrap();
    assert_eq!(receipt.header("receipt-id"), Some("rcpt-0"));
    server.await.unwrap();
}

#[tokio::test]
async fn subscribe_routes_messages_and_acks_with_the_1_2_form() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        let subscribe = next(&mut server).await;
        assert_eq!(subscribe.command, Command::Subscribe);
        assert_eq!(subscribe.header("id"), Some("sub-0"));
        assert_eq!(subscribe.header("ack"), Some("client-individual"));
        assert_eq!(subscribe.header("prefetch-count"), Some("10"));
        server.send_frame(&receipt_for(&subscribe)).await.unwrap();
        for i in 0..3 {
            let frame = message("sub-0", &format!("m-{i}"), Some(&format!("a-{i}")), &format!("body {i}"));
            server.send_frame(&frame).await.unwrap();
        }
        let ack = next(&mut server).await;
        assert_eq!(ack.command, Command::Ack);
        assert_eq!(ack.headers.iter().collect::<Vec<_>>(), vec![("id", "a-1")]);
        let nack = next(&mut server).await;
        assert_eq!(nack.command, Command::Nack);
        assert_eq!(nack.header("id"), Some("a-2"));
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    let options = SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(10);
    let mut subscription = client.subscribe("/queue/a", options).await.unwrap();
    assert_eq!(subscription.id(), "sub-0");
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(subscription.next().await.unwrap());
    }
    let bodies: Vec<_> = received.iter().map(|m| m.body_str().unwrap()).collect();
    assert_eq!(bodies, ["body 0", "body 1", "body 2"]);
    client.ack(&received[1]).await.unwrap();
    client.nack(&received[2]).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn stomp_1_1_acks_by_subscription_and_message_id() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.1")]).await;
        let subscribe = next(&mut server).await;
        server.send_frame(&receipt_for(&subscribe)).await.unwrap();
        server.send_frame(&message("sub-0", "m-7", None, "x")).await.unwrap();
        let begin = next(&mut server).await;
        assert_eq!(begin.command, Command::Begin);
        assert_eq!(begin.header("transaction"), Some("tx-0"));
        let ack = next(&mut server).await;
        assert_eq!(
            ack.headers.iter().collect::<Vec<_>>(),
            vec![("subscription", "sub-0"), ("message-id", "m-7"), ("transaction", "tx-0")]
        );
        let commit = next(&mut server).await;
        assert_eq!(commit.command, Command::Commit);
        server.send_frame(&receipt_for(&commit)).await.unwrap();
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    assert_eq!(client.version(), Version::V1_1);
    let options = SubscribeOptions::new().ack(AckMode::Client);
    let mut subscription = client.subscribe("/queue/a", options).await.unwrap();
    let message = subscription.recv_timeout(WAIT).await.unwrap();
    let tx = client.begin().await.unwrap();
    tx.ack(&message).await.unwrap();
    tx.commit().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn server_error_fails_waiters_ends_streams_and_is_reported() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        let subscribe = next(&mut server).await;
        server.send_frame(&receipt_for(&subscribe)).await.unwrap();
        let send = next(&mut server).await;
        let error = Frame::new(Command::Error)
            .with_header("message", "destination is full")
            .with_header("receipt-id", send.header("receipt").unwrap())
            .with_body("queue /queue/a reached max_length");
        server.send_frame(&error).await.unwrap();
        // The client closes its side once it has seen the ERROR.
        server.expect_closed(WAIT).await.unwrap();
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    let mut subscription = client.subscribe("/queue/a", SubscribeOptions::new()).await.unwrap();
    let err = client.send_with_receipt("/queue/a", "x", Headers::new()).await.unwrap_err();
    let ClientError::ServerError(error) = err else { panic!("expected a server error, got {err}") };
    assert_eq!(error.message, "destination is full");
    assert_eq!(error.receipt_id.as_deref(), Some("rcpt-1"));
    assert_eq!(error.body_text(), "queue /queue/a reached max_length");

    assert!(subscription.next().await.is_none(), "the stream ends");
    let reason = client.closed().await;
    assert_eq!(reason.server_error().map(|e| e.message.as_str()), Some("destination is full"));
    assert_eq!(client.last_error(), Some(error));
    let after = client.send("/queue/a", "late", Headers::new()).await.unwrap_err();
    assert!(after.server_error().is_some(), "later calls report the same error: {after}");
    server.await.unwrap();
}

#[tokio::test]
async fn refused_connect_returns_the_error_message() {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut server = RawConnection::from_stream(stream);
        next(&mut server).await;
        let error = Frame::new(Command::Error)
            .with_header("message", "Bad CONNECT")
            .with_body("access refused for user 'guest'");
        server.send_frame(&error).await.unwrap();
    });
    let err = Client::connect_with(options(&url).credentials("guest", "wrong")).await.unwrap_err();
    let error = err.server_error().expect("a server error");
    assert_eq!(error.message, "Bad CONNECT");
    assert!(err.to_string().contains("access refused"), "{err}");
}

#[tokio::test]
async fn connect_times_out_when_the_server_never_answers() {
    let (listener, url) = listen().await;
    let _hold = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(WAIT).await;
        drop(stream);
    });
    let options = options(&url).connect_timeout(Duration::from_millis(100));
    let err = Client::connect_with(options).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn client_sends_heart_beats_at_the_negotiated_interval() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, connect) = accept(&listener, &[("version", "1.2"), ("heart-beat", "0,50")]).await;
        assert_eq!(connect.header("heart-beat"), Some("40,0"));
        let mut beats = 0;
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_millis(400) {
            match server.read_item(Duration::from_millis(200)).await.unwrap() {
                Some(Item::HeartBeat) => beats += 1,
                Some(Item::Frame(frame)) => panic!("unexpected {frame:?}"),
                None => panic!("no heart-beat for 200 ms"),
            }
        }
        // max(40, 50) = every 50 ms: about 8 in 400 ms; allow for a loaded machine.
        assert!((4..=12).contains(&beats), "{beats} heart-beats in 400 ms");
    });
    let client = Client::connect_with(options(&url).heart_beat(40, 0)).await.unwrap();
    assert_eq!(client.heart_beat().send_every, Some(Duration::from_millis(50)));
    server.await.unwrap();
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_silent_server_is_declared_dead_after_the_grace_period() {
    let (listener, url) = listen().await;
    let _server = tokio::spawn(async move {
        let (server, _) = accept(&listener, &[("version", "1.2"), ("heart-beat", "50,0")]).await;
        tokio::time::sleep(WAIT).await;
        drop(server);
    });
    let start = tokio::time::Instant::now();
    let client = Client::connect_with(options(&url).heart_beat(0, 50)).await.unwrap();
    let reason = tokio::time::timeout(WAIT, client.closed()).await.unwrap();
    let CloseReason::HeartBeatTimeout { silent_for } = reason else { panic!("got {reason}") };
    assert!(silent_for >= Duration::from_millis(125), "grace 2.5 x 50 ms, silent for {silent_for:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_slow_subscriber_gets_every_message_in_order() {
    const COUNT: usize = 200;
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        let subscribe = next(&mut server).await;
        server.send_frame(&receipt_for(&subscribe)).await.unwrap();
        // All in one write: the client must park reading, not drop or reorder.
        let mut bytes = bytes::BytesMut::new();
        for i in 0..COUNT {
            let frame = message("sub-0", &format!("m-{i}"), None, &i.to_string());
            stampede_protocol::encode(&frame, Version::V1_2, &mut bytes);
        }
        server.send_bytes(&bytes).await.unwrap();
        // Meanwhile the client can still talk.
        let send = next(&mut server).await;
        assert_eq!(send.header("destination"), Some("/queue/b"));
        server
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    let mut subscription = client.subscribe("/queue/a", SubscribeOptions::new().capacity(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send("/queue/b", "while parked", Headers::new()).await.unwrap();
    for i in 0..COUNT {
        let message = subscription.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.body_str(), Some(i.to_string().as_str()));
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _server = server.await.unwrap();
}

#[tokio::test]
async fn disconnect_waits_for_the_receipt_then_closes() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        let send = next(&mut server).await;
        assert_eq!(send.command, Command::Send);
        let disconnect = next(&mut server).await;
        assert_eq!(disconnect.command, Command::Disconnect);
        server.send_frame(&receipt_for(&disconnect)).await.unwrap();
        server.expect_closed(WAIT).await.unwrap();
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    client.send("/queue/a", "last words", Headers::new()).await.unwrap();
    client.disconnect().await.unwrap();
    assert!(client.is_closed());
    assert!(matches!(client.close_reason(), Some(CloseReason::Disconnected)));
    client.disconnect().await.expect("disconnecting twice is harmless");
    server.await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_sends_disconnect_and_unsubscribe_on_drop() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        let subscribe = next(&mut server).await;
        assert_eq!(subscribe.command, Command::Subscribe);
        let unsubscribe = next(&mut server).await;
        assert_eq!(unsubscribe.command, Command::Unsubscribe);
        assert_eq!(unsubscribe.header("id"), Some("mine"));
        let disconnect = next(&mut server).await;
        assert_eq!(disconnect.command, Command::Disconnect);
        server.expect_closed(WAIT).await.unwrap();
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    let subscription = client.subscribe_no_wait("/topic/t", SubscribeOptions::new().id("mine")).await.unwrap();
    drop(subscription);
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn raw_frames_and_their_answers_come_back_unrouted() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        let subscribe = next(&mut server).await;
        assert_eq!(subscribe.header("id"), Some("raw-1"));
        server.send_frame(&receipt_for(&subscribe)).await.unwrap();
        server.send_frame(&message("raw-1", "m-1", None, "for the raw sub")).await.unwrap();
        let frame = next(&mut server).await;
        server.send_frame(&receipt_for(&frame)).await.unwrap();
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    let mut unrouted = client.take_unrouted().unwrap();
    assert!(client.take_unrouted().is_none(), "only one taker");
    let raw = Frame::new(Command::Subscribe)
        .with_header("destination", "/queue/a")
        .with_header("id", "raw-1")
        .with_header("receipt", "r-x");
    client.send_frame(raw).await.unwrap();
    let receipt = unrouted.recv_timeout(WAIT).await.unwrap().unwrap();
    assert_eq!(receipt.header("receipt-id"), Some("r-x"));
    let message = unrouted.recv_timeout(WAIT).await.unwrap().unwrap();
    assert_eq!(message.command, Command::Message);
    let odd = Frame::new(Command::Begin).with_header("transaction", "t");
    let receipt = client.send_frame_with_receipt(odd).await.unwrap();
    assert_eq!(receipt.command, Command::Receipt);
    server.await.unwrap();
}

#[tokio::test]
async fn many_sends_arrive_complete_and_in_order() {
    const COUNT: usize = 5_000;
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        for i in 0..COUNT {
            let send = next(&mut server).await;
            assert_eq!(send.body, i.to_string().into_bytes());
        }
        let last = next(&mut server).await;
        server.send_frame(&receipt_for(&last)).await.unwrap();
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    let sender = client.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..COUNT {
            sender.send("/queue/a", i.to_string(), Headers::new()).await.unwrap();
        }
    });
    publisher.await.unwrap();
    client.send_with_receipt("/queue/a", "end", Headers::new()).await.unwrap();
    server.await.unwrap();
}

mod websocket {
    use super::*;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    /// A WebSocket server that checks the offered subprotocols, picks `v12.stomp`, and splits
    /// CONNECTED across two WebSocket messages while packing two frames into one.
    #[tokio::test]
    async fn frames_cross_websocket_message_boundaries() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // The callback's signature (and its large error type) is tungstenite's.
            #[allow(clippy::result_large_err)]
            let callback = |request: &Request, mut response: Response| {
                assert_eq!(request.uri().path(), "/ws");
                let offered = request.headers()["Sec-WebSocket-Protocol"].to_str().unwrap();
                assert_eq!(offered, "v12.stomp, v11.stomp, v10.stomp");
                response.headers_mut().insert("Sec-WebSocket-Protocol", "v12.stomp".parse().unwrap());
                Ok(response)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback).await.unwrap();
            let mut decoder = stampede_protocol::Decoder::new(Default::default());
            let mut buf = bytes::BytesMut::new();
            let mut frames = Vec::new();
            // Read CONNECT.
            while frames.is_empty() {
                let WsMessage::Binary(data) = ws.next().await.unwrap().unwrap() else { continue };
                buf.extend_from_slice(&data);
                while let Some(Item::Frame(frame)) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames[0].command, Command::Connect);
            let connected = b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0";
            ws.send(WsMessage::binary(connected[..10].to_vec())).await.unwrap();
            ws.send(WsMessage::binary(connected[10..].to_vec())).await.unwrap();
            // Read SUBSCRIBE, answer RECEIPT and a MESSAGE in one text message.
            let mut subscribe = None;
            while subscribe.is_none() {
                let WsMessage::Binary(data) = ws.next().await.unwrap().unwrap() else { continue };
                buf.extend_from_slice(&data);
                if let Some(Item::Frame(frame)) = decoder.decode(&mut buf).unwrap() {
                    subscribe = Some(frame);
                }
            }
            let subscribe = subscribe.unwrap();
            let receipt = receipt_for(&subscribe);
            let mut out = bytes::BytesMut::new();
            stampede_protocol::encode(&receipt, Version::V1_2, &mut out);
            out.extend_from_slice(b"\n");
            stampede_protocol::encode(&message("sub-0", "m-1", None, "over ws"), Version::V1_2, &mut out);
            ws.send(WsMessage::text(String::from_utf8(out.to_vec()).unwrap())).await.unwrap();
            // Keep the socket open until the client is done.
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
            }
        });
        let client = Client::connect_with(options(&url)).await.unwrap();
        assert_eq!(client.version(), Version::V1_2);
        let mut subscription = client.subscribe("/queue/a", SubscribeOptions::new()).await.unwrap();
        let message = subscription.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.body_str(), Some("over ws"));
        drop(subscription);
        drop(client);
        server.await.unwrap();
    }
}

#[tokio::test]
async fn unrouted_frames_nobody_takes_never_stall_the_connection() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2")]).await;
        let subscribe = next(&mut server).await;
        // Far more stray frames than the unrouted channel holds, then a real delivery.
        for i in 0..1_000 {
            let stray = Frame::new(Command::Receipt).with_header("receipt-id", format!("stray-{i}"));
            server.send_frame(&stray).await.unwrap();
        }
        server.send_frame(&receipt_for(&subscribe)).await.unwrap();
        server.send_frame(&message("sub-0", "m-1", None, "after the strays")).await.unwrap();
        server
    });
    let client = Client::connect_with(options(&url)).await.unwrap();
    let mut subscription = client.subscribe("/queue/a", SubscribeOptions::new()).await.unwrap();
    let message = subscription.recv_timeout(WAIT).await.unwrap();
    assert_eq!(message.body_str(), Some("after the strays"));
    let _server = server.await.unwrap();
}

#[tokio::test]
async fn time_spent_parked_on_a_full_subscription_is_not_server_silence() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (mut server, _) = accept(&listener, &[("version", "1.2"), ("heart-beat", "50,0")]).await;
        let subscribe = next(&mut server).await;
        server.send_frame(&receipt_for(&subscribe)).await.unwrap();
        for i in 0..5 {
            server.send_frame(&message("sub-0", &format!("m-{i}"), None, "x")).await.unwrap();
        }
        // Keep beating while the client is not reading, as a live server would.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            if server.send_bytes(b"\n").await.is_err() {
                break;
            }
        }
        server
    });
    let client = Client::connect_with(options(&url).heart_beat(0, 50)).await.unwrap();
    let mut subscription = client.subscribe("/queue/a", SubscribeOptions::new().capacity(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!client.is_closed(), "closed while parked: {:?}", client.close_reason());
    for _ in 0..5 {
        subscription.recv_timeout(WAIT).await.unwrap();
    }
    assert!(!client.is_closed(), "closed after resuming: {:?}", client.close_reason());
    let _server = server.await.unwrap();
}
