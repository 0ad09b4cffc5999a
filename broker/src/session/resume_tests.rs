//! Session resumption, frames in and frames out: a session parked as a broken connection parks
//! it, resumed by a CONNECT carrying its token on a new "connection" (a new [`Client`]).

use super::*;
use crate::session::ResumeRegistry;

/// `config` with resumption settings.
fn resumable(grace_ms: u64, buffer_bytes: usize, max_detached: usize) -> (Arc<VirtualHosts>, Arc<SessionConfig>) {
    with_config(|config| {
        config.resume = ResumeRegistry::new(crate::session::ResumeSettings {
            grace: Duration::from_millis(grace_ms),
            buffer_bytes,
            max_detached,
        })
    })
}

/// Connects and returns the client with the `session-resume-token` of its CONNECTED.
async fn connected_with_token(vhosts: &Arc<VirtualHosts>, config: &Arc<SessionConfig>) -> (Client, String) {
    let mut client = Client::new(vhosts, config);
    client.ok(Command::Connect, &[("accept-version", "1.2"), ("host", "/"), ("resume-token", "")]).await;
    let connected = client.replies().await.remove(0);
    let token = connected.header("session-resume-token").expect("CONNECTED carries a token").to_owned();
    (client, token)
}

/// What a connection does when its socket breaks: park the session.
async fn break_connection(client: &mut Client) {
    assert!(client.session.park().await, "the session was parked");
}

/// A new connection that CONNECTs with `resume-token: token`; returns it and its CONNECTED.
async fn reconnect(vhosts: &Arc<VirtualHosts>, config: &Arc<SessionConfig>, token: &str) -> (Client, Frame) {
    let mut client = Client::new(vhosts, config);
    client.ok(Command::Connect, &[("accept-version", "1.2"), ("host", "/"), ("resume-token", token)]).await;
    let connected = client.replies().await.remove(0);
    // As the connection does: it adopts the outbox of the session it now holds.
    client.outbox = Arc::clone(client.session.outbox());
    (client, connected)
}

#[tokio::test(start_paused = true)]
async fn connected_carries_an_unguessable_resume_token_and_a_resumed_connected_says_so() {
    let (vhosts, config) = broker();
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    assert_eq!(token.len(), 32, "128 bits in hex: {token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let (_other, other_token) = connected_with_token(&vhosts, &config).await;
    assert_ne!(token, other_token);
    let id = first.session.id().to_owned();
    break_connection(&mut first).await;
    let (second, connected) = reconnect(&vhosts, &config, &token).await;
    assert_eq!(connected.header("session-resumed"), Some("true"));
    assert_eq!(connected.header("session"), Some(id.as_str()), "the session keeps its id");
    let new_token = connected.header("session-resume-token").expect("a new token");
    assert_ne!(new_token, token, "tokens are single-use");
    assert_eq!(second.session.id(), id);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_session_gets_its_unacked_queue_messages_again_in_order_then_new_ones() {
    let (vhosts, config) = broker();
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s"), ("ack", "client-individual")]).await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    publish(&mut producer, "/queue/jobs", &["1", "2", "3", "4"]).await;
    let delivered = first.deliveries().await;
    assert_eq!(delivered.iter().map(body).collect::<Vec<_>>(), ["1", "2", "3", "4"]);
    let ack = delivered[1].header("ack").unwrap().to_owned();
    first.ok(Command::Ack, &[("id", &ack)]).await;
    break_connection(&mut first).await;
    publish(&mut producer, "/queue/jobs", &["5"]).await;
    let (mut second, _) = reconnect(&vhosts, &config, &token).await;
    let again = second.deliveries().await;
    assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["1", "3", "4", "5"]);
    for message in &again[..3] {
        assert_eq!(message.header("redelivered"), Some("true"), "{message:?}");
        assert_eq!(message.header("subscription"), Some("s"));
    }
    assert_eq!(again[3].header("redelivered"), None, "5 was never delivered before");
    for message in &again {
        let ack = message.header("ack").unwrap().to_owned();
        second.ok(Command::Ack, &[("id", &ack)]).await;
    }
    publish(&mut producer, "/queue/jobs", &["6"]).await;
    assert_eq!(second.bodies().await, ["6"]);
    assert_eq!(second.session.pending_ack_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn while_detached_a_sessions_unacked_and_new_queue_messages_go_to_no_other_consumer() {
    let (vhosts, config) = broker();
    let (mut first, _token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s"), ("ack", "client")]).await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    publish(&mut producer, "/queue/jobs", &["held"]).await;
    assert_eq!(first.bodies().await, ["held"]);
    break_connection(&mut first).await;
    let mut other = Client::connected(&vhosts, &config, &[]).await;
    other.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "o")]).await;
    publish(&mut producer, "/queue/jobs", &["new"]).await;
    // The detached consumer is paused: the new message goes to the other one, the held one
    // stays with the detached session.
    assert_eq!(other.bodies().await, ["new"]);
}

#[tokio::test(start_paused = true)]
async fn after_the_grace_the_token_resumes_nothing_and_unacked_messages_return_to_the_queue() {
    let (vhosts, config) = resumable(1000, 256 * 1024, 10);
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "s"), ("ack", "client")]).await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    publish(&mut producer, "/queue/jobs", &["job"]).await;
    assert_eq!(first.bodies().await, ["job"]);
    break_connection(&mut first).await;
    assert_eq!(config.resume.detached(), 1);
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(config.resume.expire().await, 1);
    assert_eq!(config.resume.detached(), 0);
    let mut other = Client::connected(&vhosts, &config, &[]).await;
    other.ok(Command::Subscribe, &[("destination", "/queue/jobs"), ("id", "o")]).await;
    let delivered = other.deliveries().await;
    assert_eq!(delivered.iter().map(body).collect::<Vec<_>>(), ["job"]);
    assert_eq!(delivered[0].header("redelivered"), Some("true"));
    let (fresh, connected) = reconnect(&vhosts, &config, &token).await;
    assert_eq!(connected.header("session-resumed"), Some("false"));
    assert_eq!(fresh.session.subscription_count(), 0, "a fresh session, not a mix");
}

#[tokio::test(start_paused = true)]
async fn past_the_grace_a_token_is_refused_even_before_the_reaper_runs() {
    let (vhosts, config) = resumable(1000, 256 * 1024, 10);
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")]).await;
    break_connection(&mut first).await;
    tokio::time::advance(Duration::from_millis(1001)).await;
    let (fresh, connected) = reconnect(&vhosts, &config, &token).await;
    assert_eq!(connected.header("session-resumed"), Some("false"));
    assert_eq!(fresh.session.subscription_count(), 0);
    assert_eq!(config.resume.detached(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_token_used_twice_resumes_once_then_gives_a_fresh_session() {
    let (vhosts, config) = broker();
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")]).await;
    break_connection(&mut first).await;
    let (mut second, connected) = reconnect(&vhosts, &config, &token).await;
    assert_eq!(connected.header("session-resumed"), Some("true"));
    assert_eq!(second.session.subscription_count(), 1);
    break_connection(&mut second).await;
    let (third, connected) = reconnect(&vhosts, &config, &token).await;
    assert_eq!(connected.header("session-resumed"), Some("false"));
    assert_eq!(third.session.subscription_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_resume_token_is_an_error_naming_the_header_and_an_empty_one_asks_for_a_fresh_resumable_session() {
    let (vhosts, config) = broker();
    let mut client = Client::new(&vhosts, &config);
    let error = client.refused(Command::Connect, &[("accept-version", "1.2"), ("resume-token", "not-a-token")]).await;
    assert!(error.message.contains("resume-token"), "{error}");
    let mut client = Client::new(&vhosts, &config);
    client.ok(Command::Connect, &[("accept-version", "1.2"), ("resume-token", "")]).await;
    let connected = client.replies().await.remove(0);
    assert_eq!(connected.header("session-resumed"), Some("false"));
    assert!(connected.header("session-resume-token").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_ask_gets_no_token_and_is_not_kept_when_its_connection_breaks() {
    let (vhosts, config) = broker();
    let mut client = Client::new(&vhosts, &config);
    client.ok(Command::Connect, &[("accept-version", "1.2"), ("host", "/")]).await;
    let connected = client.replies().await.remove(0);
    assert_eq!(connected.header("session-resume-token"), None, "{connected:?}");
    assert_eq!(connected.header("session-resumed"), None);
    assert!(!client.session.park().await, "today's behaviour: the session closes at once");
}

#[tokio::test(start_paused = true)]
async fn topic_messages_while_detached_are_kept_and_the_gap_beyond_the_budget_is_reported_exactly() {
    // The cost of one message as the outbox counts it, from a session that is not detached.
    let (vhosts, config) = broker();
    let mut probe = Client::connected(&vhosts, &config, &[]).await;
    probe.ok(Command::Subscribe, &[("destination", "/topic/prices"), ("id", "p")]).await;
    publish(&mut probe, "/topic/prices", &["m-00"]).await;
    let cost = probe.outbox.queued_bytes();
    assert!(cost > 0);

    let (vhosts, config) = resumable(30_000, 3 * cost + cost / 2, 10);
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/topic/prices"), ("id", "p")]).await;
    first.ok(Command::Subscribe, &[("destination", "/topic/quiet"), ("id", "q")]).await;
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    publish(&mut producer, "/topic/prices", &["m-01"]).await;
    assert_eq!(first.bodies().await, ["m-01"]);
    break_connection(&mut first).await;
    let bodies: Vec<String> = (2..12).map(|n| format!("m-{n:02}")).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    publish(&mut producer, "/topic/prices", &bodies).await;
    let (mut second, _) = reconnect(&vhosts, &config, &token).await;
    publish(&mut producer, "/topic/prices", &["m-12"]).await;
    publish(&mut producer, "/topic/quiet", &["hush"]).await;
    let delivered = second.deliveries().await;
    let texts: Vec<String> = delivered.iter().map(body).collect();
    // Three fit the budget; the seven newest were dropped; then the live ones.
    assert_eq!(texts, ["m-02", "m-03", "m-04", "m-12", "hush"]);
    assert_eq!(delivered[0].header("x-resume-gap"), Some("7"), "on the first MESSAGE after resumption");
    for later in &delivered[1..] {
        assert_eq!(later.header("x-resume-gap"), None, "{later:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_publisher_cannot_forge_the_resume_gap_header() {
    let (vhosts, config) = broker();
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")]).await;
    let send = frame(Command::Send, &[("destination", "/topic/t"), ("x-resume-gap", "99")]).with_body("x");
    client.request(send).await.unwrap();
    client.replies().await;
    assert_eq!(client.deliveries().await[0].header("x-resume-gap"), None);
}

#[tokio::test(start_paused = true)]
async fn subscribing_again_with_a_resumed_id_is_taken_as_already_active_once() {
    let (vhosts, config) = broker();
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")]).await;
    break_connection(&mut first).await;
    let (mut second, _) = reconnect(&vhosts, &config, &token).await;
    // A client that re-subscribes on reconnect (stompjs in onConnect) keeps working...
    second.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s"), ("receipt", "r")]).await;
    assert_eq!(second.replies().await[0].header("receipt-id"), Some("r"));
    assert_eq!(second.session.subscription_count(), 1, "not subscribed twice");
    let mut producer = Client::connected(&vhosts, &config, &[]).await;
    publish(&mut producer, "/topic/t", &["once"]).await;
    assert_eq!(second.bodies().await, ["once"]);
    // ...and a second SUBSCRIBE with the id is the usual error.
    let error = second.refused(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")]).await;
    assert!(error.message.contains("already in use"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_token_for_a_session_still_connected_takes_it_over() {
    let (vhosts, config) = broker();
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    first.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")]).await;
    let outbox = Arc::clone(&first.outbox);
    let old_connection = async {
        // The old connection sees the takeover on its outbox, sends its ERROR and parks.
        while !outbox.is_taken_over() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        break_connection(&mut first).await;
    };
    let ((second, connected), ()) = tokio::join!(reconnect(&vhosts, &config, &token), old_connection);
    assert_eq!(connected.header("session-resumed"), Some("true"));
    assert_eq!(second.session.subscription_count(), 1);
    assert!(!second.outbox.is_taken_over(), "the new connection is not told to close");
}

#[tokio::test(start_paused = true)]
async fn a_session_that_does_not_hand_over_in_time_is_an_error_for_the_taker() {
    let (vhosts, config) = broker();
    let (_first, token) = connected_with_token(&vhosts, &config).await;
    let mut client = Client::new(&vhosts, &config);
    let error = client.refused(Command::Connect, &[("accept-version", "1.2"), ("resume-token", &token)]).await;
    assert!(error.message.contains("still connected"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_session_cannot_be_resumed() {
    let (vhosts, config) = broker();
    let (mut first, token) = connected_with_token(&vhosts, &config).await;
    assert_eq!(first.request(frame(Command::Disconnect, &[])).await, Ok(Flow::Disconnect));
    assert!(!first.session.park().await, "nothing to park after DISCONNECT");
    first.session.close().await;
    let (_fresh, connected) = reconnect(&vhosts, &config, &token).await;
    assert_eq!(connected.header("session-resumed"), Some("false"));
}

#[tokio::test(start_paused = true)]
async fn detached_sessions_are_bounded_and_beyond_the_bound_a_session_closes_as_before() {
    let (vhosts, config) = resumable(30_000, 1024, 1);
    let (mut first, _) = connected_with_token(&vhosts, &config).await;
    let (mut second, _) = connected_with_token(&vhosts, &config).await;
    assert!(first.session.park().await);
    assert!(!second.session.park().await, "session_resume_max_detached = 1");
    second.session.close().await;
    assert_eq!(config.resume.detached(), 1);
}

#[tokio::test(start_paused = true)]
async fn with_a_zero_grace_no_token_is_issued_and_nothing_is_parked() {
    let (vhosts, config) = resumable(0, 1024, 10);
    let mut client = Client::connected(&vhosts, &config, &[]).await;
    client.ok(Command::Subscribe, &[("destination", "/topic/t"), ("id", "s")]).await;
    assert!(!client.session.park().await);
    let mut again = Client::new(&vhosts, &config);
    again.ok(Command::Connect, &[("accept-version", "1.2")]).await;
    assert_eq!(again.replies().await[0].header("session-resume-token"), None);
}
