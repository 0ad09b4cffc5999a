//! The management API of `/api/v1/`: connections, queues, topics and durable subscriptions,
//! with good and bad input (no credentials, a user who is not an administrator, unknown names,
//! bad page sizes, refused conditions).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stampede_broker::Config;
use stampede_broker::security::auth::hash_password_with;
use stampede_client::raw::RawConnection;
use stampede_client::{Command, Frame};
use stampede_tests::{ADMIN, TestBroker, USER, WAIT, admin_and_user_config, ctl, http_client};

async fn broker() -> TestBroker {
    TestBroker::start_with(admin_and_user_config()).await
}

async fn call(broker: &TestBroker, method: Method, path: &str, login: Option<(&str, &str)>) -> reqwest::Response {
    let url = format!("{}{path}", broker.http_url.as_deref().expect("management listener open"));
    let mut request = http_client().request(method, url);
    if let Some((user, password)) = login {
        request = request.basic_auth(user, Some(password));
    }
    request.send().await.expect("request answered")
}

async fn admin_get(broker: &TestBroker, path: &str) -> (StatusCode, Value) {
    let response = call(broker, Method::GET, path, Some(ADMIN)).await;
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

async fn admin_send(broker: &TestBroker, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let url = format!("{}{path}", broker.http_url.as_deref().expect("management listener open"));
    let mut request = http_client().request(method, url).basic_auth(ADMIN.0, Some(ADMIN.1));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request answered");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON") })
}

async fn connected_as(broker: &TestBroker, (login, passcode): (&str, &str)) -> (RawConnection, String) {
    let mut raw = broker.raw().await;
    let frame = raw
        .handshake(&[("accept-version", "1.2"), ("host", "/"), ("login", login), ("passcode", passcode)], WAIT)
        .await
        .expect("CONNECTED");
    assert_eq!(frame.command, Command::Connected);
    let session = frame.header("session").expect("session header").to_owned();
    (raw, session)
}

async fn next_frame(raw: &mut RawConnection) -> Frame {
    raw.read_frame(WAIT).await.expect("read").expect("a frame")
}

async fn send_receipted(raw: &mut RawConnection, destination: &str, body: &str, extra: &[(&str, &str)]) {
    let mut send = Frame::new(Command::Send)
        .with_header("destination", destination)
        .with_header("receipt", "r")
        .with_body(body.to_owned());
    for (name, value) in extra {
        send = send.with_header(*name, *value);
    }
    raw.send_frame(&send).await.unwrap();
    let reply = next_frame(raw).await;
    assert_eq!(reply.command, Command::Receipt, "{reply:?}");
}

async fn subscribe(raw: &mut RawConnection, destination: &str, id: &str, ack: &str) {
    let subscribe = Frame::new(Command::Subscribe)
        .with_header("destination", destination)
        .with_header("id", id)
        .with_header("ack", ack)
        .with_header("receipt", "sub");
    raw.send_frame(&subscribe).await.unwrap();
    assert_eq!(next_frame(raw).await.command, Command::Receipt);
}

/// Polls `path` until `done` holds for its JSON (bounded by [`WAIT`]).
async fn eventually(broker: &TestBroker, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = admin_get(broker, path).await;
        if status == StatusCode::OK && done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_error(body: &Value, error: &str) {
    assert_eq!(body["error"], error, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
}

#[tokio::test]
async fn every_management_endpoint_needs_credentials_and_an_administrator() {
    let broker = broker().await;
    let endpoints = [
        (Method::GET, "/api/v1/connections"),
        (Method::GET, "/api/v1/connections/session-x"),
        (Method::DELETE, "/api/v1/connections/session-x"),
        (Method::GET, "/api/v1/queues"),
        (Method::GET, "/api/v1/queues/%2F/q"),
        (Method::DELETE, "/api/v1/queues/%2F/q"),
        (Method::DELETE, "/api/v1/queues/%2F/q/contents"),
        (Method::POST, "/api/v1/queues/%2F/q/peek"),
        (Method::POST, "/api/v1/queues/%2F/DLQ.q/move"),
        (Method::GET, "/api/v1/topics"),
        (Method::GET, "/api/v1/subscriptions/durable"),
        (Method::DELETE, "/api/v1/subscriptions/durable/%2F/d"),
    ];
    for (method, path) in endpoints {
        let anonymous = call(&broker, method.clone(), path, None).await;
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_error(&anonymous.json().await.unwrap(), "unauthorized");
        let wrong = call(&broker, method.clone(), path, Some(("alice", "not-her-password"))).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let not_admin = call(&broker, method.clone(), path, Some(USER)).await;
        assert_eq!(not_admin.status(), StatusCode::FORBIDDEN, "{method} {path}");
        assert_error(&not_admin.json().await.unwrap(), "forbidden");
    }
}

#[tokio::test]
async fn connections_are_listed_with_their_user_transport_and_counters() {
    let broker = broker().await;
    let (mut bob, bob_session) = connected_as(&broker, USER).await;
    let (_alice, alice_session) = connected_as(&broker, ADMIN).await;
    subscribe(&mut bob, "/queue/listed", "s1", "client").await;
    let page = eventually(&broker, "/api/v1/connections", |page| {
        page["items"].as_array().is_some_and(|items| items.iter().any(|c| c["subscriptions"] == 1))
    })
    .await;
    assert_eq!(page["total_count"], 2, "{page}");
    assert_eq!(page["page"], 1);
    let items = page["items"].as_array().unwrap();
    let bob_view = items.iter().find(|c| c["id"] == bob_session.as_str()).expect("bob listed");
    assert_eq!(bob_view["user"], "bob");
    assert_eq!(bob_view["vhost"], "/");
    assert_eq!(bob_view["transport"], "tcp");
    assert_eq!(bob_view["stomp_version"], "1.2");
    assert_eq!(bob_view["subscriptions"], 1);
    assert!(bob_view["frames_in"].as_u64().unwrap() >= 2, "{bob_view}");
    assert!(bob_view["bytes_in"].as_u64().unwrap() > 0);
    assert!(bob_view["bytes_out"].as_u64().unwrap() > 0);
    assert!(bob_view["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    let (status, filtered) = admin_get(&broker, "/api/v1/connections?name=BOB").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(filtered["filtered_count"], 1, "{filtered}");
    assert_eq!(filtered["items"][0]["id"], bob_session.as_str());

    let (_, sorted) = admin_get(&broker, "/api/v1/connections?sort=user&sort_reverse=true").await;
    assert_eq!(sorted["items"][0]["user"], "bob", "{sorted}");
    assert_eq!(sorted["items"][1]["id"], alice_session.as_str());

    let (status, one) = admin_get(&broker, &format!("/api/v1/connections/{bob_session}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], bob_session.as_str());
    assert_eq!(one["user"], "bob");
}

#[tokio::test]
async fn a_connections_frames_out_counts_stomp_frames_and_not_heart_beats() {
    let broker = broker().await;
    let mut raw = broker.raw().await;
    let login = [("accept-version", "1.2"), ("host", "/"), ("login", USER.0), ("passcode", USER.1)];
    let connected = raw.handshake(&[&login[..], &[("heart-beat", "0,100")]].concat(), WAIT).await.unwrap();
    assert_eq!(connected.command, Command::Connected);
    let path = format!("/api/v1/connections/{}", connected.header("session").unwrap());
    let (_, before) = admin_get(&broker, &path).await;
    assert_eq!(before["frames_out"], 1, "CONNECTED only: {before}");
    let bytes_before = before["bytes_out"].as_u64().unwrap();
    // Heart-beats every 100 ms: after a second several have been written.
    let after = eventually(&broker, &path, |view| view["bytes_out"].as_u64().unwrap() >= bytes_before + 3).await;
    assert!(after["bytes_out"].as_u64().unwrap() >= bytes_before + 3, "no heart-beats were sent: {after}");
    assert_eq!(after["frames_out"], 1, "heart-beats are not frames: {after}");
}

#[tokio::test]
async fn an_unknown_connection_is_404() {
    let broker = broker().await;
    let (status, body) = admin_get(&broker, "/api/v1/connections/session-nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
    let (status, body) = admin_send(&broker, Method::DELETE, "/api/v1/connections/session-nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
}

#[tokio::test]
async fn closing_a_connection_sends_its_client_an_error_with_the_x_reason() {
    let broker = broker().await;
    let (mut bob, session) = connected_as(&broker, USER).await;
    let url = format!("{}/api/v1/connections/{session}", broker.http_url.as_deref().unwrap());
    let response = http_client()
        .delete(url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .header("X-Reason", "maintenance of rack 4")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let frames = bob.expect_closed(WAIT).await.expect("closed");
    let error = frames.iter().find(|f| f.command == Command::Error).expect("an ERROR before the close");
    let message = error.header("message").unwrap();
    assert!(message.contains("maintenance of rack 4"), "{message}");
    assert!(message.contains("administrator"), "{message}");
    let listed = eventually(&broker, "/api/v1/connections", |page| page["total_count"] == 0).await;
    assert_eq!(listed["total_count"], 0, "a closed connection leaves the registry: {listed}");
}

#[tokio::test]
async fn page_sizes_outside_1_to_500_and_bad_paging_are_400_naming_the_field() {
    let broker = broker().await;
    for path in ["/api/v1/connections", "/api/v1/queues", "/api/v1/topics", "/api/v1/subscriptions/durable"] {
        for query in ["page_size=0", "page_size=501", "page_size=lots", "page=0", "page=-2"] {
            let (status, body) = admin_get(&broker, &format!("{path}?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}");
            assert_error(&body, "bad_request");
            let field = query.split('=').next().unwrap();
            assert!(body["reason"].as_str().unwrap().contains(field), "{body}");
        }
        let (status, body) = admin_get(&broker, &format!("{path}?sort=colour")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(body["reason"].as_str().unwrap().contains("colour"), "{body}");
        let (status, _) = admin_get(&broker, &format!("{path}?page_size=500&page=7")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn queues_are_listed_in_pages_sorted_and_filtered() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    for (name, count) in [("alpha", 1), ("bravo", 3), ("charlie", 2), ("delta", 0), ("echo", 5)] {
        if count == 0 {
            subscribe(&mut producer, &format!("/queue/{name}"), name, "auto").await;
        }
        for i in 0..count {
            send_receipted(&mut producer, &format!("/queue/{name}"), &format!("m{i}"), &[]).await;
        }
    }
    let (status, page) = admin_get(&broker, "/api/v1/queues?page_size=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total_count"], 5, "{page}");
    assert_eq!(page["page_count"], 3);
    assert_eq!(page["item_count"], 2);
    let names = |page: &Value| page["items"].as_array().unwrap().iter().map(|q| q["name"].clone()).collect::<Vec<_>>();
    assert_eq!(names(&page), ["alpha", "bravo"]);
    let (_, third) = admin_get(&broker, "/api/v1/queues?page_size=2&page=3").await;
    assert_eq!(names(&third), ["echo"]);
    let (_, deepest) = admin_get(&broker, "/api/v1/queues?sort=messages_ready&sort_reverse=true&page_size=3").await;
    assert_eq!(names(&deepest), ["echo", "bravo", "charlie"]);
    let echo = &deepest["items"][0];
    assert_eq!(echo["vhost"], "/");
    assert_eq!(echo["messages_ready"], 5);
    assert_eq!(echo["messages_unacked"], 0);
    assert_eq!(echo["consumers"], 0);
    assert_eq!(echo["durable"], true);
    assert_eq!(echo["dlq"], "DLQ.echo");
    assert_eq!(echo["idle"], false);
    let (_, filtered) = admin_get(&broker, "/api/v1/queues?name=LT").await;
    assert_eq!(names(&filtered), ["delta"]);
    assert_eq!(filtered["items"][0]["consumers"], 1);
    let (_, other_vhost) = admin_get(&broker, "/api/v1/queues?vhost=elsewhere").await;
    assert_eq!(other_vhost["total_count"], 0);
}

#[tokio::test]
async fn a_queue_is_shown_by_percent_encoded_vhost_and_name_and_unknown_ones_are_404() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    send_receipted(&mut producer, "/queue/orders/eu", "one", &[]).await;
    let (status, queue) = admin_get(&broker, "/api/v1/queues/%2F/orders%2Feu").await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(queue["name"], "orders/eu");
    assert_eq!(queue["messages_ready"], 1);
    for path in ["/api/v1/queues/%2F/nothing-here", "/api/v1/queues/no-such-vhost/orders%2Feu"] {
        let (status, body) = admin_get(&broker, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_error(&body, "not_found");
    }
    for (method, path) in [
        (Method::DELETE, "/api/v1/queues/%2F/nothing-here"),
        (Method::DELETE, "/api/v1/queues/%2F/nothing-here/contents"),
        (Method::POST, "/api/v1/queues/%2F/nothing-here/peek"),
        (Method::POST, "/api/v1/queues/%2F/DLQ.nothing-here/move"),
        (Method::DELETE, "/api/v1/subscriptions/durable/%2F/nothing-here"),
    ] {
        let (status, body) = admin_send(&broker, method.clone(), path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_error(&body, "not_found");
    }
}

#[tokio::test]
async fn deleting_a_queue_with_if_empty_or_if_unused_is_409_while_it_has_messages_or_consumers() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    send_receipted(&mut producer, "/queue/doomed", "still here", &[]).await;
    let (status, body) = admin_send(&broker, Method::DELETE, "/api/v1/queues/%2F/doomed?if-empty=true", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error(&body, "conflict");
    let (status, body) = admin_send(&broker, Method::DELETE, "/api/v1/queues/%2F/doomed?if-empty=maybe", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("if-empty"));

    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/queue/used", "s", "auto").await;
    let (status, body) = admin_send(&broker, Method::DELETE, "/api/v1/queues/%2F/used?if-unused=true", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, _) = admin_send(&broker, Method::DELETE, "/api/v1/queues/%2F/doomed", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = admin_get(&broker, "/api/v1/queues/%2F/doomed").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn purging_removes_waiting_messages_only_and_unacknowledged_ones_stay() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    for i in 0..4 {
        send_receipted(&mut producer, "/queue/purged", &format!("m{i}"), &[]).await;
    }
    let (mut consumer, _) = connected_as(&broker, USER).await;
    let subscribe = Frame::new(Command::Subscribe)
        .with_header("destination", "/queue/purged")
        .with_header("id", "s")
        .with_header("ack", "client-individual")
        .with_header("prefetch-count", "1");
    consumer.send_frame(&subscribe).await.unwrap();
    let held = next_frame(&mut consumer).await;
    assert_eq!(held.command, Command::Message);
    eventually(&broker, "/api/v1/queues/%2F/purged", |q| q["messages_unacked"] == 1).await;
    let (status, purged) = admin_send(&broker, Method::DELETE, "/api/v1/queues/%2F/purged/contents", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(purged["purged"], 3, "{purged}");
    let (_, queue) = admin_get(&broker, "/api/v1/queues/%2F/purged").await;
    assert_eq!(queue["messages_ready"], 0);
    assert_eq!(queue["messages_unacked"], 1, "the delivered message is not purged: {queue}");
    let ack = Frame::new(Command::Ack).with_header("id", held.header("ack").unwrap()).with_header("receipt", "a");
    consumer.send_frame(&ack).await.unwrap();
    assert_eq!(next_frame(&mut consumer).await.command, Command::Receipt);
}

#[tokio::test]
async fn peeking_shows_headers_and_body_excerpts_and_consumes_nothing() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    send_receipted(&mut producer, "/queue/peeked", "first body, rather long", &[("colour", "red")]).await;
    send_receipted(&mut producer, "/queue/peeked", "second", &[("persistent", "true")]).await;
    send_receipted(&mut producer, "/queue/peeked", "third", &[]).await;
    let (status, peeked) = admin_send(
        &broker,
        Method::POST,
        "/api/v1/queues/%2F/peeked/peek",
        Some(json!({"count": 2, "excerpt_bytes": 5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{peeked}");
    assert_eq!(peeked["count"], 2);
    assert_eq!(peeked["messages_ready"], 3);
    let first = &peeked["messages"][0];
    assert_eq!(first["body_excerpt"], "first");
    assert_eq!(first["body_encoding"], "utf8");
    assert_eq!(first["truncated"], true);
    assert_eq!(first["body_bytes"], 23);
    assert_eq!(first["headers"]["colour"], "red");
    assert_eq!(first["headers"]["destination"], "/queue/peeked");
    assert_eq!(peeked["messages"][1]["persistent"], true);
    // An empty body is the default request; a bad count is refused.
    let (status, all) = admin_send(&broker, Method::POST, "/api/v1/queues/%2F/peeked/peek", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["count"], 3);
    for bad in [json!({"count": 0}), json!({"count": 501}), json!({"excerpt_bytes": 1_000_000}), json!({"cuont": 1})] {
        let (status, body) = admin_send(&broker, Method::POST, "/api/v1/queues/%2F/peeked/peek", Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    // Nothing was consumed or counted as a delivery: a consumer gets all three, first time.
    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/queue/peeked", "s", "auto").await;
    for expected in ["first body, rather long", "second", "third"] {
        let message = next_frame(&mut consumer).await;
        assert_eq!(message.command, Command::Message);
        assert_eq!(String::from_utf8_lossy(&message.body), expected);
        assert_eq!(message.header("redelivered"), None, "peeking is not a delivery");
    }
}

#[tokio::test]
async fn moving_dead_letters_puts_them_back_on_their_original_queue() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    for i in 0..3 {
        send_receipted(&mut producer, "/queue/jobs", &format!("job {i}"), &[("job", &i.to_string())]).await;
    }
    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/queue/jobs", "s", "client-individual").await;
    for _ in 0..3 {
        let message = next_frame(&mut consumer).await;
        let nack =
            Frame::new(Command::Nack).with_header("id", message.header("ack").unwrap()).with_header("requeue", "false");
        consumer.send_frame(&nack).await.unwrap();
    }
    let unsubscribe = Frame::new(Command::Unsubscribe).with_header("id", "s").with_header("receipt", "u");
    consumer.send_frame(&unsubscribe).await.unwrap();
    assert_eq!(next_frame(&mut consumer).await.command, Command::Receipt);
    let dlq = eventually(&broker, "/api/v1/queues/%2F/DLQ.jobs", |q| q["messages_ready"] == 3).await;
    assert_eq!(dlq["messages_ready"], 3, "{dlq}");
    assert_eq!(dlq["is_dlq"], true);
    assert_eq!(dlq["dlq"], Value::Null);

    let (status, body) = admin_send(&broker, Method::POST, "/api/v1/queues/%2F/jobs/move", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "only a dead-letter queue can be moved back: {body}");

    let (status, moved) = admin_send(&broker, Method::POST, "/api/v1/queues/%2F/DLQ.jobs/move", None).await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["moved"], 3, "{moved}");
    assert_eq!(moved["skipped"], 0);
    let (_, dlq) = admin_get(&broker, "/api/v1/queues/%2F/DLQ.jobs").await;
    assert_eq!(dlq["messages_ready"], 0, "{dlq}");
    let (_, jobs) = admin_get(&broker, "/api/v1/queues/%2F/jobs").await;
    assert_eq!(jobs["messages_ready"], 3, "{jobs}");
    subscribe(&mut consumer, "/queue/jobs", "again", "auto").await;
    for i in 0..3 {
        let message = next_frame(&mut consumer).await;
        assert_eq!(message.header("destination"), Some("/queue/jobs"));
        assert_eq!(message.header("job"), Some(i.to_string().as_str()), "in their original order");
        assert_eq!(message.header("x-dead-letter-reason"), None);
    }
}

#[tokio::test]
async fn topics_with_subscribers_are_listed_with_their_counts() {
    let broker = broker().await;
    let (mut one, _) = connected_as(&broker, USER).await;
    let (mut two, _) = connected_as(&broker, USER).await;
    subscribe(&mut one, "/topic/news", "a", "auto").await;
    subscribe(&mut two, "/topic/news", "b", "auto").await;
    subscribe(&mut two, "/topic/weather", "c", "auto").await;
    let (status, page) = admin_get(&broker, "/api/v1/topics?sort=subscribers&sort_reverse=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"][0]["name"], "news", "{page}");
    assert_eq!(page["items"][0]["subscribers"], 2);
    assert_eq!(page["items"][0]["vhost"], "/");
    let (_, filtered) = admin_get(&broker, "/api/v1/topics?name=weath").await;
    assert_eq!(filtered["filtered_count"], 1);
    assert_eq!(filtered["items"][0]["subscribers"], 1);
}

#[tokio::test]
async fn durable_subscriptions_are_listed_and_an_administrator_can_delete_one() {
    let broker = broker().await;
    let mut raw = broker.raw().await;
    raw.handshake(
        &[("accept-version", "1.2"), ("host", "/"), ("login", USER.0), ("passcode", USER.1), ("client-id", "c1")],
        WAIT,
    )
    .await
    .expect("CONNECTED");
    let subscribe = Frame::new(Command::Subscribe)
        .with_header("destination", "/topic/prices")
        .with_header("id", "d")
        .with_header("ack", "client")
        .with_header("activemq.subscriptionName", "price-watch")
        .with_header("receipt", "s");
    raw.send_frame(&subscribe).await.unwrap();
    assert_eq!(next_frame(&mut raw).await.command, Command::Receipt);
    let (status, page) = admin_get(&broker, "/api/v1/subscriptions/durable").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total_count"], 1, "{page}");
    let durable = &page["items"][0];
    assert_eq!(durable["topic"], "prices");
    assert_eq!(durable["owner"], "bob");
    assert_eq!(durable["active"], true);
    let name = durable["name"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/subscriptions/durable/%2F/{}", name.replace('/', "%2F"));
    let (status, _) = admin_send(&broker, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, after) = admin_get(&broker, "/api/v1/subscriptions/durable").await;
    assert_eq!(after["total_count"], 0, "{after}");
    let (status, _) = admin_send(&broker, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn page_one_of_ten_thousand_queues_answers_quickly() {
    let broker = TestBroker::start_with(Config { max_queues: 20_000, ..admin_and_user_config() }).await;
    let router = broker.broker.router();
    for i in 0..10_000 {
        router.queue_or_create(&format!("bulk-{i:05}"));
    }
    // Warm the connection, then time page 1 (the bound is loose: debug build, shared machine).
    let (status, _) = admin_get(&broker, "/api/v1/queues?page_size=1").await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let (status, page) = admin_get(&broker, "/api/v1/queues?page=1&page_size=100").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total_count"], 10_000);
    assert_eq!(page["items"][0]["name"], "bulk-00000");
    eprintln!("page 1 of 10,000 queues: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn page_one_of_ten_thousand_connections_answers_quickly() {
    use stampede_broker::destination::outbox::Outbox;
    use stampede_broker::http::metrics::TransportKind;
    let broker = broker().await;
    let registry = broker.broker.connections();
    // Registered as the connection tasks register them, without 10,000 sockets (20,000 file
    // descriptors in one test process).
    let registrations: Vec<_> = (0..10_000)
        .map(|i| {
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + (i % 50_000) as u16));
            registry.register(
                std::sync::Arc::from(format!("session-{i:05}")),
                peer,
                TransportKind::Ws,
                Outbox::new(1024),
            )
        })
        .collect();
    let (status, _) = admin_get(&broker, "/api/v1/connections?page_size=1").await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let (status, page) = admin_get(&broker, "/api/v1/connections?page=1&page_size=100").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total_count"], 10_000);
    assert_eq!(page["items"][0]["id"], "session-00000");
    let started = Instant::now();
    let (_, filtered) = admin_get(&broker, "/api/v1/connections?name=session-0999&sort=bytes_in").await;
    let filtered_took = started.elapsed();
    assert_eq!(filtered["filtered_count"], 10, "{filtered}");
    eprintln!("page 1 of 10,000 connections: {took:?}; filtered and sorted: {filtered_took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop(registrations);
    assert!(registry.is_empty());
}

// ------------------------------------------------------------------------------ HTTP publish

async fn publish(
    broker: &TestBroker,
    path: &str,
    login: Option<(&str, &str)>,
    build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let url = format!("{}{path}", broker.http_url.as_deref().expect("management listener open"));
    let mut request = http_client().post(url);
    if let Some((user, password)) = login {
        request = request.basic_auth(user, Some(password));
    }
    let response = build(request).send().await.expect("request answered");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("a JSON body"))
}

#[tokio::test]
async fn any_user_publishes_a_raw_body_and_gets_202_with_its_message_id() {
    let broker = broker().await;
    let (mut consumer, _) = connected_as(&broker, ADMIN).await;
    subscribe(&mut consumer, "/queue/http-in", "s", "auto").await;
    let (status, _, answer) = publish(&broker, "/api/v1/publish/queue/http-in", Some(USER), |r| {
        r.header("content-type", "text/plain").body("hello over HTTP")
    })
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["messages"][0]["message_id"].as_str().expect("an id").to_owned();
    assert_eq!(answer["messages"][0]["destination"], "/queue/http-in");
    let message = next_frame(&mut consumer).await;
    assert_eq!(message.command, Command::Message);
    assert_eq!(&message.body[..], b"hello over HTTP");
    assert_eq!(message.header("content-type"), Some("text/plain"));
    assert_eq!(message.header("message-id"), Some(id.as_str()));
    // Percent-encoded in one segment works too.
    let (status, _, _) = publish(&broker, "/api/v1/publish/%2Fqueue%2Fhttp-in", Some(USER), |r| r.body("second")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(&next_frame(&mut consumer).await.body[..], b"second");
}

#[tokio::test]
async fn a_json_batch_is_published_in_order_to_topics_and_queues() {
    let broker = broker().await;
    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/topic/batch", "t", "auto").await;
    let batch = json!([
        {"destination": "/topic/batch", "body": "one", "headers": {"n": "1"}},
        {"destination": "/topic/batch", "body_base64": "AAEC/w==", "headers": {"n": "2"}},
        {"destination": "/topic/batch", "body": "three", "headers": {"n": "3"}},
    ]);
    let (status, _, answer) = publish(&broker, "/api/v1/publish", Some(USER), |r| r.json(&batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["messages"].as_array().unwrap().len(), 3);
    for (n, body) in [("1", &b"one"[..]), ("2", &[0, 1, 2, 255][..]), ("3", &b"three"[..])] {
        let message = next_frame(&mut consumer).await;
        assert_eq!(message.header("n"), Some(n));
        assert_eq!(&message.body[..], body);
    }
}

#[tokio::test]
async fn a_persistent_http_publish_is_201_once_stored_and_survives_a_restart() {
    let broker = TestBroker::start_durable(admin_and_user_config()).await;
    let one = json!({"destination": "/queue/kept", "body": "stored", "persistent": true});
    let (status, _, answer) = publish(&broker, "/api/v1/publish", Some(USER), |r| r.json(&one)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["messages"][0]["persistent"], true);
    let broker = broker.restart(admin_and_user_config()).await;
    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/queue/kept", "s", "auto").await;
    let message = next_frame(&mut consumer).await;
    assert_eq!(&message.body[..], b"stored");
    assert_eq!(message.header("persistent"), Some("true"));
}

#[tokio::test]
async fn http_publish_is_checked_against_the_users_write_permission() {
    let mut config = admin_and_user_config();
    let mut carol = stampede_tests::user_with_every_permission("carol-pw", false);
    carol.write = vec!["/queue/allowed".to_owned()];
    config.users.insert("carol".into(), carol);
    let broker = TestBroker::start_with(config).await;
    let (status, _, body) = publish(&broker, "/api/v1/publish/queue/allowed", None, |r| r.body("x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "unauthorized");
    let (status, _, body) =
        publish(&broker, "/api/v1/publish/queue/allowed", Some(("carol", "wrong")), |r| r.body("x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) =
        publish(&broker, "/api/v1/publish/queue/other", Some(("carol", "carol-pw")), |r| r.body("x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(&body, "forbidden");
    let (status, _, body) =
        publish(&broker, "/api/v1/publish/queue/allowed", Some(("carol", "carol-pw")), |r| r.body("x")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn bad_publish_requests_are_400_naming_the_field() {
    let broker = broker().await;
    let cases = [
        (json!({"destination": "/queue/q", "bdy": "typo"}), "bdy"),
        (json!({"body": "nowhere"}), "destination"),
        (json!({"destination": "/queue/q", "body": "a", "body_base64": "YQ=="}), "body_base64"),
        (json!({"destination": "/queue/q", "body_base64": "not base64!"}), "body_base64"),
        (json!({"destination": "/queue/q", "headers": {"receipt": "r"}}), "receipt"),
        (json!({"destination": "/queue/q", "headers": {"n": 1}}), "headers"),
        (json!({"destination": "/queue/q", "persistent": "yes"}), "persistent"),
        (json!([{"destination": "/queue/q"}, {"destination": "/queue/q", "oops": 1}]), "message 1"),
        (json!({"destination": "/nowhere/q", "body": "x"}), "/nowhere/q"),
        (json!({"destination": "/topic/a.*", "body": "x"}), "wildcard"),
    ];
    for (request, named) in cases {
        let (status, _, body) = publish(&broker, "/api/v1/publish", Some(USER), |r| r.json(&request)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request} -> {body}");
        assert_error(&body, "bad_request");
        assert!(body["reason"].as_str().unwrap().contains(named), "{request}: {body}");
    }
    let (status, _, body) = publish(&broker, "/api/v1/publish", Some(USER), |r| r.body("raw, but where to?")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["reason"].as_str().unwrap().contains("destination"), "{body}");
}

#[tokio::test]
async fn a_body_over_max_body_is_413_and_a_full_queue_is_429_with_retry_after() {
    let mut config = admin_and_user_config();
    config.max_body = 1024;
    config.queue_max_length = 1;
    let broker = TestBroker::start_with(config).await;
    let big = "x".repeat(1025);
    let (status, _, body) = publish(&broker, "/api/v1/publish/queue/small", Some(USER), |r| r.body(big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("max_body"), "{body}");
    let as_json = json!({"destination": "/queue/small", "body": big});
    let (status, _, _) = publish(&broker, "/api/v1/publish", Some(USER), |r| r.json(&as_json)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, _, _) = publish(&broker, "/api/v1/publish/queue/small", Some(USER), |r| r.body("fits")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, headers, body) =
        publish(&broker, "/api/v1/publish/queue/small", Some(USER), |r| r.body("no room")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_error(&body, "too_many_requests");
    assert!(body["reason"].as_str().unwrap().contains("full"), "{body}");
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
}

#[tokio::test]
async fn delete_if_empty_racing_a_producer_never_deletes_a_receipted_message() {
    let broker = broker().await;
    let url = format!("{}/api/v1/queues/%2F/contested?if-empty=true", broker.http_url.as_deref().unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleter = tokio::spawn({
        let done = std::sync::Arc::clone(&done);
        async move {
            let (mut deleted, mut refused) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let response = http_client().delete(&url).basic_auth(ADMIN.0, Some(ADMIN.1)).send().await.unwrap();
                match response.status() {
                    StatusCode::NO_CONTENT => deleted += 1,
                    StatusCode::CONFLICT => refused += 1,
                    _ => {}
                }
            }
            (deleted, refused)
        }
    });
    // No consumer: once a message is accepted the queue is never empty again, so every
    // receipted message must still be there at the end, whatever the deleter did.
    let mut receipted = Vec::new();
    let (mut producer, _) = connected_as(&broker, USER).await;
    for i in 0..300 {
        let body = format!("m{i}");
        let send = Frame::new(Command::Send)
            .with_header("destination", "/queue/contested")
            .with_header("receipt", "r")
            .with_body(body.clone());
        producer.send_frame(&send).await.unwrap();
        match next_frame(&mut producer).await.command {
            Command::Receipt => receipted.push(body),
            // The SEND met the queue as it was being deleted: refused, never receipted.
            _ => producer = connected_as(&broker, USER).await.0,
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (deleted, refused) = deleter.await.unwrap();
    assert!(refused > 0, "the deleter ran alongside (deleted {deleted}, refused {refused})");
    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/queue/contested", "s", "auto").await;
    let mut got = Vec::new();
    while got.len() < receipted.len() {
        let frame = next_frame(&mut consumer).await;
        got.push(String::from_utf8(frame.body.to_vec()).unwrap());
    }
    assert_eq!(got, receipted);
}

#[tokio::test]
async fn a_queue_gives_its_own_exact_counts_and_rates() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/queue/rated", "s", "client-individual").await;
    for i in 0..10 {
        send_receipted(&mut producer, "/queue/rated", &format!("m{i}"), &[]).await;
    }
    for _ in 0..10 {
        let message = next_frame(&mut consumer).await;
        let ack = Frame::new(Command::Ack).with_header("id", message.header("ack").unwrap());
        consumer.send_frame(&ack).await.unwrap();
    }
    send_receipted(&mut producer, "/queue/other-rated", "not counted above", &[]).await;
    let queue = eventually(&broker, "/api/v1/queues/%2F/rated", |q| q["counts"]["acked"] == 10).await;
    assert_eq!(queue["counts"], json!({"published": 10, "delivered": 10, "acked": 10}), "{queue}");
    // Rates need two readings of the sampler (one a second) around the traffic.
    let deadline = Instant::now() + Duration::from_secs(5);
    let rated = loop {
        let (_, queue) = admin_get(&broker, "/api/v1/queues/%2F/rated").await;
        if queue["rates"]["ack"].as_f64().unwrap_or(0.0) > 0.0 || Instant::now() > deadline {
            break queue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for rate in ["publish", "deliver", "ack"] {
        let value = rated["rates"][rate].as_f64().expect("a number");
        assert!(value > 0.0, "{rate}: {rated}");
    }
    let (_, listed) = admin_get(&broker, "/api/v1/queues?name=rated").await;
    let row = listed["items"].as_array().unwrap().iter().find(|q| q["name"] == "rated").expect("listed");
    assert_eq!(row["counts"]["published"], 10, "the list has them too: {row}");
}

// ------------------------------------------------------------------------------ stampede ctl

#[tokio::test]
async fn ctl_lists_queues_as_a_table_and_as_json_and_shows_one() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    send_receipted(&mut producer, "/queue/ctl-orders", "a", &[]).await;
    send_receipted(&mut producer, "/queue/ctl-orders", "b", &[]).await;
    send_receipted(&mut producer, "/queue/ctl-other", "c", &[]).await;
    let (code, out, err) = ctl(&broker, Some(ADMIN), &["queues"]).await;
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("NAME") && header.contains("READY") && header.contains("CONSUMERS"), "{out}");
    let row = out.lines().find(|l| l.starts_with("ctl-orders")).expect("a row for the queue");
    assert_eq!(row.split_whitespace().nth(2), Some("2"), "{out}");
    assert!(out.contains("2 of 2 queues"), "{out}");
    let (code, out, _) = ctl(&broker, Some(ADMIN), &["--json", "queues", "--name", "orders"]).await;
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(page["filtered_count"], 1);
    assert_eq!(page["items"][0]["messages_ready"], 2);
    let (code, out, _) = ctl(&broker, Some(ADMIN), &["queue", "ctl-orders"]).await;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("messages_ready") && l.ends_with('2')), "{out}");
    let (code, out, _) = ctl(&broker, Some(ADMIN), &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("readiness: ok") && out.contains("queues 2"), "{out}");
}

#[tokio::test]
async fn ctl_peeks_purges_moves_dead_letters_and_deletes() {
    let broker = broker().await;
    let (mut producer, _) = connected_as(&broker, USER).await;
    send_receipted(&mut producer, "/queue/work", "job one", &[("kind", "pdf")]).await;
    send_receipted(&mut producer, "/queue/work", "job two", &[]).await;
    let (code, out, err) = ctl(&broker, Some(ADMIN), &["peek", "work", "-n", "1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 of 2 waiting messages") && out.contains("kind: pdf") && out.contains("job one"), "{out}");
    let (code, out, _) = ctl(&broker, Some(ADMIN), &["purge", "work"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("purged 2 waiting messages from work"), "{out}");

    send_receipted(&mut producer, "/queue/work", "bad job", &[]).await;
    let (mut consumer, _) = connected_as(&broker, USER).await;
    subscribe(&mut consumer, "/queue/work", "s", "client-individual").await;
    let message = next_frame(&mut consumer).await;
    let nack =
        Frame::new(Command::Nack).with_header("id", message.header("ack").unwrap()).with_header("requeue", "false");
    consumer.send_frame(&nack).await.unwrap();
    let unsubscribe = Frame::new(Command::Unsubscribe).with_header("id", "s").with_header("receipt", "u");
    consumer.send_frame(&unsubscribe).await.unwrap();
    assert_eq!(next_frame(&mut consumer).await.command, Command::Receipt);
    eventually(&broker, "/api/v1/queues/%2F/DLQ.work", |q| q["messages_ready"] == 1).await;
    let (code, out, err) = ctl(&broker, Some(ADMIN), &["move-dlq", "DLQ.work"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("moved 1 messages from DLQ.work"), "{out}");

    let (code, _, err) = ctl(&broker, Some(ADMIN), &["delete-queue", "work", "--if-empty"]).await;
    assert_eq!(code, 5, "a conflict is exit 5: {err}");
    assert!(err.contains("not empty"), "{err}");
    let (code, out, _) = ctl(&broker, Some(ADMIN), &["delete-queue", "work"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("deleted queue work"), "{out}");
    let (code, _, err) = ctl(&broker, Some(ADMIN), &["queue", "work"]).await;
    assert_eq!(code, 3, "not found is exit 3: {err}");
}

#[tokio::test]
async fn ctl_closes_a_connection_with_a_reason_and_lists_connections_and_durables() {
    let broker = broker().await;
    let (mut bob, session) = connected_as(&broker, USER).await;
    let (code, out, _) = ctl(&broker, Some(ADMIN), &["connections"]).await;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with(&session) && l.contains("bob")), "{out}");
    let (code, out, _) = ctl(&broker, Some(ADMIN), &["durable-subscriptions"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME") && out.contains("0 of 0 durable subscriptions"), "{out}");
    let (code, out, err) =
        ctl(&broker, Some(ADMIN), &["close-connection", &session, "--reason", "moving to rack 5"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("closed connection"), "{out}");
    let frames = bob.expect_closed(WAIT).await.expect("closed");
    let error = frames.iter().find(|f| f.command == Command::Error).expect("ERROR");
    assert!(error.header("message").unwrap().contains("moving to rack 5"));
}

#[tokio::test]
async fn ctl_exit_codes_say_usage_not_allowed_and_unreachable() {
    let broker = broker().await;
    let (code, _, err) = ctl(&broker, None, &["queues"]).await;
    assert_eq!(code, 4, "no credentials: {err}");
    let (code, _, err) = ctl(&broker, Some(USER), &["queues"]).await;
    assert_eq!(code, 4, "not an administrator: {err}");
    assert!(err.contains("not an administrator"), "{err}");
    let (code, _, err) = ctl(&broker, Some(ADMIN), &["peek", "x", "-n", "lots"]).await;
    assert_eq!(code, 2, "usage: {err}");
    let (code, _, err) = ctl(&broker, Some(ADMIN), &["queues", "--page-size", "9999"]).await;
    assert_eq!(code, 1, "the broker refused: {err}");
    assert!(err.contains("page_size"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let output = tokio::process::Command::new(stampede_tests::broker_binary())
        .args(["ctl", "--url", &format!("http://{closed}"), "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(6), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach"));
}

#[tokio::test]
async fn ctl_speaks_https_trusting_the_cacert_it_is_given_and_authenticates_with_a_bearer_token() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let secret = "a-secret-for-administrator-tokens-0123456789";
    let mut config = admin_and_user_config();
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(key);
    config.jwt = Some(stampede_broker::config::JwtConfig {
        hs256_secret: Some(secret.to_owned()),
        ..stampede_broker::config::JwtConfig::default()
    });
    let broker = TestBroker::start_with(config).await;
    let url = format!("https://localhost:{}", broker.broker.https_addr.expect("an HTTPS listener").port());
    let run = |extra: Vec<String>| {
        let mut command = tokio::process::Command::new(stampede_tests::broker_binary());
        command.arg("ctl").arg("--url").arg(&url).args(extra).args(["status"]).kill_on_drop(true);
        for name in ["STAMPEDE_CTL_PASSWORD", "STAMPEDE_CTL_USER", "STAMPEDE_CTL_TOKEN", "STAMPEDE_CTL_CACERT"] {
            command.env_remove(name);
        }
        async move {
            let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await.unwrap().unwrap();
            (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
        }
    };
    let cacert = cert.display().to_string();
    let (code, err) = run(vec!["--user".into(), ADMIN.0.into(), "--password".into(), ADMIN.1.into()]).await;
    assert_eq!(code, 6, "a certificate nobody vouched for is not trusted: {err}");
    assert!(err.contains("certificate"), "{err}");
    let (code, err) = run(vec![
        "--cacert".into(),
        cacert.clone(),
        "--user".into(),
        ADMIN.0.into(),
        "--password".into(),
        ADMIN.1.into(),
    ])
    .await;
    assert_eq!(code, 0, "trusted with --cacert: {err}");

    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let sign = |scope: &str| {
        let claims = json!({"sub": "ops-robot", "exp": exp, "scope": scope});
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
    };
    let (code, err) = run(vec!["--cacert".into(), cacert.clone(), "--token".into(), sign("stampede.admin")]).await;
    assert_eq!(code, 0, "an administrator's token: {err}");
    let (code, err) = run(vec!["--cacert".into(), cacert, "--token".into(), sign("stampede.read:/queue/*")]).await;
    assert_eq!(code, 4, "a token without the admin scope: {err}");
}

// ------------------------------------------------------------------ drain on SIGTERM (binary)

/// The broker binary as a child process with its listeners on port 0; killed when dropped.
struct BrokerProcess {
    child: tokio::process::Child,
    stomp: std::net::SocketAddr,
    ws: String,
    http: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl BrokerProcess {
    async fn start(data_dir: &std::path::Path, drain_ms: u64, timeout_ms: u64) -> BrokerProcess {
        BrokerProcess::start_with(data_dir, drain_ms, timeout_ms, None).await
    }

    async fn start_with(
        data_dir: &std::path::Path,
        drain_ms: u64,
        timeout_ms: u64,
        config: Option<&std::path::Path>,
    ) -> BrokerProcess {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(stampede_tests::broker_binary());
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .args(["--stomp-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("NO_COLOR", "1")
            .env("STAMPEDE_SHUTDOWN_DRAIN_MS", drain_ms.to_string())
            .env("STAMPEDE_SHUTDOWN_TIMEOUT_MS", timeout_ms.to_string())
            .env_remove("STAMPEDE_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the broker binary runs");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (found, mut addresses) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for reader in [Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(stderr)] {
            let (log, found) = (std::sync::Arc::clone(&log), found.clone());
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    for (marker, what) in [
                        ("STOMP over TCP listening on ", "stomp"),
                        ("STOMP over WebSocket listening on ", "ws"),
                        ("management HTTP listening on ", "http"),
                    ] {
                        if let Some(rest) = line.split(marker).nth(1) {
                            let _ = found.send((what, rest.trim().to_owned()));
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        drop(found);
        let (mut stomp, mut ws, mut http) = (None, None, None);
        while stomp.is_none() || ws.is_none() || http.is_none() {
            let (what, value) = tokio::time::timeout(Duration::from_secs(30), addresses.recv())
                .await
                .expect("the broker reports its listeners")
                .unwrap_or_else(|| panic!("the broker exited:\n{}", log.lock().unwrap().join("\n")));
            match what {
                "stomp" => stomp = Some(value.parse().expect("an address")),
                "ws" => ws = Some(value),
                _ => http = Some(value),
            }
        }
        BrokerProcess { child, stomp: stomp.unwrap(), ws: ws.unwrap(), http: http.unwrap(), log }
    }

    /// Waits (bounded) for a log line containing `text` after the first `skip` lines.
    async fn log_line(&self, text: &str, skip: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().skip(skip).find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no log line {text:?}:\n{}", self.log.lock().unwrap().join("\n"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("kill runs");
        assert!(status.success());
    }

    async fn exits_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let log = std::sync::Arc::clone(&self.log);
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the broker did not exit within {limit:?}:\n{}", log.lock().unwrap().join("\n")))
            .expect("wait")
    }
}

async fn raw_to(addr: std::net::SocketAddr) -> RawConnection {
    let mut raw = RawConnection::connect(addr).await.expect("connects");
    raw.handshake(&[("accept-version", "1.2"), ("host", "/")], WAIT).await.expect("CONNECTED");
    raw
}

/// A WebSocket STOMP client: returns the text of every message and the close code.
async fn websocket_until_closed(
    mut socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    limit: Duration,
) -> (Vec<String>, Option<u16>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, socket.next()).await {
        match message {
            Ok(Message::Text(text)) => texts.push(text.to_string()),
            Ok(Message::Binary(data)) => texts.push(String::from_utf8_lossy(&data).into_owned()),
            Ok(Message::Close(frame)) => return (texts, frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (texts, None)
}

#[tokio::test]
async fn sigterm_drains_clients_get_the_shutdown_error_and_1012_and_no_receipted_message_is_lost() {
    use futures_util::SinkExt;
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), 1_000, 8_000).await;
    let mut producer = raw_to(broker.stomp).await;
    for i in 0..50 {
        send_receipted(&mut producer, "/queue/kept", &format!("m{i}"), &[("persistent", "true")]).await;
    }
    let mut idle = raw_to(broker.stomp).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(broker.ws.as_str()).await.expect("WebSocket connects");
    ws.send(tokio_tungstenite::tungstenite::Message::text("CONNECT\naccept-version:1.2\nhost:/\n\n\0")).await.unwrap();
    let ws_task = tokio::spawn(websocket_until_closed(ws, Duration::from_secs(10)));
    let readyz = format!("{}/readyz", broker.http);
    assert_eq!(http_client().get(&readyz).send().await.unwrap().status(), StatusCode::OK);

    let signalled = Instant::now();
    broker.signal("TERM");
    // Readiness turns 503 at once, while connections are still being drained.
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let response =
            http_client().get(&readyz).send().await.expect("the management listener answers during the drain");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "readiness never turned 503");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(signalled.elapsed() < Duration::from_millis(900), "readiness 503 before the drain ends");
    assert_eq!(report["checks"]["draining"]["ok"], false, "{report}");
    // The STOMP listener no longer accepts.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(broker.stomp).await.is_ok() {
        assert!(Instant::now() < deadline, "the STOMP listener still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for raw in [&mut idle, &mut producer] {
        let frames = raw.expect_closed(Duration::from_secs(5)).await.expect("closed");
        let error = frames.iter().find(|f| f.command == Command::Error).expect("an ERROR before the close");
        assert_eq!(error.header("message"), Some("server shutting down"));
    }
    let (texts, code) = ws_task.await.unwrap();
    assert!(texts.iter().any(|t| t.starts_with("ERROR") && t.contains("message:server shutting down")), "{texts:?}");
    assert_eq!(code, Some(1012), "WebSocket clients get 1012 (service restart)");
    let status = broker.exits_within(Duration::from_secs(8)).await;
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    eprintln!("drain of 3 connections over 1 s, then exit: {took:?}");
    assert!(took < Duration::from_secs(8), "exits within shutdown_timeout_ms: {took:?}");

    // Every receipted persistent message is there after the restart.
    let broker = BrokerProcess::start(data.path(), 1_000, 8_000).await;
    let mut consumer = raw_to(broker.stomp).await;
    subscribe(&mut consumer, "/queue/kept", "s", "auto").await;
    for i in 0..50 {
        let message = next_frame(&mut consumer).await;
        assert_eq!(String::from_utf8_lossy(&message.body), format!("m{i}"));
    }
}

#[tokio::test]
async fn a_second_sigterm_during_the_drain_exits_at_once_after_the_store_flush() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), 30_000, 60_000).await;
    let mut producer = raw_to(broker.stomp).await;
    send_receipted(&mut producer, "/queue/kept", "before the signals", &[("persistent", "true")]).await;
    let _others: Vec<RawConnection> = futures_util::future::join_all((0..4).map(|_| raw_to(broker.stomp))).await;
    broker.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Instant::now();
    broker.signal("TERM");
    let status = broker.exits_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
    eprintln!("exit after the second SIGTERM: {:?}", second.elapsed());
    assert!(second.elapsed() < Duration::from_secs(3), "{:?}", second.elapsed());
    let broker = BrokerProcess::start(data.path(), 1_000, 8_000).await;
    let mut consumer = raw_to(broker.stomp).await;
    subscribe(&mut consumer, "/queue/kept", "s", "auto").await;
    assert_eq!(&next_frame(&mut consumer).await.body[..], b"before the signals");
}

// ------------------------------------------------------------------------ SIGHUP reload (binary)

fn users_file(bob_writes: &str) -> String {
    let hash = hash_password_with(USER.1, 64, 1).expect("hash");
    format!(
        "auth_failure_delay_ms = 1\nauth_failure_max_delay_ms = 2\n\n[users.bob]\npassword_hash = \"{hash}\"\nread = [\"**\"]\nwrite = [\"{bob_writes}\"]\n"
    )
}

async fn bob_at(addr: std::net::SocketAddr) -> RawConnection {
    let mut raw = RawConnection::connect(addr).await.expect("connects");
    let frame = raw
        .handshake(&[("accept-version", "1.2"), ("host", "/"), ("login", USER.0), ("passcode", USER.1)], WAIT)
        .await
        .expect("CONNECTED");
    assert_eq!(frame.command, Command::Connected, "{frame:?}");
    raw
}

#[tokio::test]
async fn sighup_reloads_permissions_live_and_a_bad_file_is_refused_keeping_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stampede.toml");
    std::fs::write(&config, users_file("/queue/a")).unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start_with(&data, 100, 5_000, Some(&config)).await;
    let mut session = bob_at(broker.stomp).await;
    send_receipted(&mut session, "/queue/a", "allowed before", &[]).await;

    std::fs::write(&config, users_file("/queue/b")).unwrap();
    let before = broker.log_len();
    broker.signal("HUP");
    let line = broker.log_line("configuration reloaded", before).await;
    assert!(line.contains("users=1"), "{line}");
    // A new session has the new rules; the old session loses /queue/a at its next SEND.
    let mut fresh = bob_at(broker.stomp).await;
    send_receipted(&mut fresh, "/queue/b", "allowed after", &[]).await;
    let send =
        Frame::new(Command::Send).with_header("destination", "/queue/a").with_header("receipt", "r").with_body("x");
    session.send_frame(&send).await.unwrap();
    let refused = next_frame(&mut session).await;
    assert_eq!(refused.command, Command::Error, "{refused:?}");
    assert!(refused.header("message").unwrap().contains("access denied"), "{refused:?}");

    // A file that does not parse, and one with a bad hash: refused, the old settings stay.
    for bad in ["[users.bob\nthis is not toml", "[users.bob]\npassword_hash = \"not-argon2\"\n"] {
        std::fs::write(&config, bad).unwrap();
        let before = broker.log_len();
        broker.signal("HUP");
        let line = broker.log_line("reload refused", before).await;
        assert!(line.contains("old settings stay"), "{line}");
        let mut still = bob_at(broker.stomp).await;
        send_receipted(&mut still, "/queue/b", "still allowed", &[]).await;
    }
    // Connections were never dropped by a reload.
    send_receipted(&mut fresh, "/queue/b", "same connection", &[]).await;
}

#[tokio::test]
async fn the_overview_counts_messages_and_gives_rates_memory_disk_and_readiness() {
    let broker = broker().await;
    let (mut raw, _) = connected_as(&broker, USER).await;
    for i in 0..5 {
        send_receipted(&mut raw, "/queue/overview-rates", &format!("m{i}"), &[]).await;
    }
    let body = eventually(&broker, "/api/v1/overview", |o| o["messages"]["published"] == 5).await;
    assert_eq!(body["messages"]["published"], 5, "{body}");
    assert_eq!(body["messages"]["delivered"], 0, "{body}");
    let publish = &body["rates"]["publish"];
    assert!(publish["last_5s"].as_f64().is_some_and(|r| r > 0.0), "{body}");
    assert!(publish["last_60s"].as_f64().is_some_and(|r| r > 0.0), "{body}");
    assert_eq!(body["rates"]["ack"]["last_5s"], 0.0, "{body}");
    assert!(body["memory"]["resident_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{body}");
    assert!(body["disk"].is_null(), "an ephemeral broker has no disk alarm: {body}");
    assert_eq!(body["ready"], true, "{body}");
}

#[tokio::test]
async fn the_dashboard_is_served_to_administrators_only_and_refuses_cross_site_writes() {
    let broker = broker().await;
    assert_eq!(call(&broker, Method::GET, "/", None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(call(&broker, Method::GET, "/", Some(USER)).await.status(), StatusCode::FORBIDDEN);
    let page = call(&broker, Method::GET, "/", Some(ADMIN)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    assert!(page.text().await.unwrap().contains("/dashboard.js"));
    for asset in ["/dashboard.js", "/dashboard.css"] {
        assert_eq!(call(&broker, Method::GET, asset, Some(ADMIN)).await.status(), StatusCode::OK, "{asset}");
    }
    let url = format!("{}/api/v1/publish/queue/forged", broker.http_url.as_deref().unwrap());
    let forged = http_client()
        .post(&url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_error(&forged.json().await.unwrap(), "forbidden");
    let (_, queues) = admin_get(&broker, "/api/v1/queues?name=forged").await;
    assert_eq!(queues["filtered_count"], 0, "nothing was published: {queues}");
    let own = http_client().post(&url).basic_auth(ADMIN.0, Some(ADMIN.1)).body("fine").send().await.unwrap();
    assert_eq!(own.status(), StatusCode::ACCEPTED, "a program sends no Origin and is not affected");
}
