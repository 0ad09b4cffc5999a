//! Drives whole STOMP sessions with arbitrary frame sequences: two sessions share one router
//! (memory only, no store), so SENDs of one reach the subscriptions of the other, inside a
//! current-thread tokio runtime. Checks: no panic, no hang (libFuzzer's -timeout), and every
//! delivery the outbox yields renders.
//!
//! Input layout: byte 0 picks the mode (bit 0: raw bytes through the decoder, else structured
//! frames; bit 1: a configured user with restricted permissions instead of an open broker).
//! Structured frames are built from dictionaries of header names and values, so the fuzzer
//! reaches deep states (subscribed, in a transaction, with unacknowledged messages) quickly.
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stampede_broker::security::auth::{Authenticator, hash_password_with};
use stampede_broker::config::{Config, UserConfig};
use stampede_broker::destination::outbox::{Delivery, Outbox};
use stampede_broker::destination::vhost::VirtualHosts;
use stampede_broker::session::{Flow, Reply, Session, SessionConfig};
use stampede_protocol::{Command, Decoder, Frame, Item, Limits};

const COMMANDS: [Command; 15] = Command::ALL;

const NAMES: &[&str] = &[
    "destination",
    "id",
    "ack",
    "receipt",
    "transaction",
    "accept-version",
    "host",
    "login",
    "passcode",
    "heart-beat",
    "subscription",
    "message-id",
    "persistent",
    "durable",
    "auto-delete",
    "x-queue-name",
    "prefetch-count",
    "activemq.prefetchSize",
    "consumer-window-size",
    "reply-to",
    "expires",
    "expiration",
    "requeue",
    "client-id",
    "activemq.subscriptionName",
    "durable-subscription-name",
    "x-message-ttl",
    "content-type",
    "selector",
];

const VALUES: &[&str] = &[
    "/queue/a",
    "/queue/b",
    "/topic/t",
    "/topic/t.x",
    "/topic/*",
    "/topic/#",
    "/topic/t.>",
    "/amq/queue/a",
    "/temp-queue/r",
    "/reply-queue/x",
    "/exchange/x",
    "/queue/",
    "1",
    "2",
    "0",
    "-1",
    "1.0",
    "1.1",
    "1.2",
    "1.0,1.1,1.2",
    "auto",
    "client",
    "client-individual",
    "true",
    "false",
    "tx1",
    "tx2",
    "u",
    "p",
    "/",
    "vh",
    "0,0",
    "10,10",
    "999999999999999999999",
    "",
    "eyJhbGciOiJIUzI1NiJ9.e30.x",
];

struct World {
    runtime: tokio::runtime::Runtime,
    open: Arc<SessionConfig>,
    restricted: Arc<SessionConfig>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // Queue actors are supervised: a panic inside one is caught, logged and answered, so
        // the fuzzer would never see it. Abort on any panic instead, before anything unwinds.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut config = Config::ephemeral();
        config.max_subscriptions_per_connection = 4;
        config.max_transaction_frames = 8;
        config.max_unacked_per_consumer = 4;
        let open = Arc::new(config.session_config());
        config.auth_failure_delay_ms = 0;
        config.auth_failure_max_delay_ms = 0;
        config.users.insert(
            "u".to_owned(),
            UserConfig {
                password_hash: hash_password_with("p", 8, 1).expect("hash"),
                read: vec!["/queue/a".to_owned(), "/topic/t.*".to_owned(), "/temp-queue/**".to_owned()],
                write: vec!["/queue/*".to_owned(), "/topic/**".to_owned()],
                vhosts: Default::default(),
                admin: false,
            },
        );
        let mut restricted = config.session_config();
        restricted.auth = Arc::new(Authenticator::from_config(&config).expect("authenticator"));
        World { runtime, open, restricted: Arc::new(restricted) }
    })
}

struct Client {
    session: Session,
    outbox: Arc<Outbox>,
    decoder: Decoder,
    ended: bool,
}

fn client(n: u64, config: &Arc<SessionConfig>, vhosts: &Arc<VirtualHosts>) -> Client {
    let outbox = Outbox::new(4096);
    let session =
        Session::new(Arc::from(format!("fuzz-{n}")), Arc::clone(config), Arc::clone(vhosts), Arc::clone(&outbox));
    let limits = Limits { max_header_line: 256, max_headers: 16, max_header_bytes: 1024, max_body: 1024 };
    Client { session, outbox, decoder: Decoder::new(limits), ended: false }
}

async fn feed(client: &mut Client, frame: Frame) {
    if client.ended {
        return;
    }
    let mut replies = Vec::new();
    let was_connected = client.session.is_connected();
    match client.session.handle(frame, &mut replies).await {
        Ok(Flow::Continue) => {
            if !was_connected && client.session.is_connected() {
                client.decoder.set_version(client.session.version());
            }
        }
        Ok(Flow::Disconnect) | Err(_) => client.ended = true,
    }
    for reply in replies {
        if let Reply::After { verdict, .. } = reply {
            // Let the queue decide; a refusal would end the session in the broker.
            if let Ok(Err(_)) = verdict.await {
                client.ended = true;
            }
        }
    }
    drain(client).await;
}

async fn drain(client: &mut Client) {
    tokio::task::yield_now().await;
    let mut deliveries: VecDeque<Delivery> = VecDeque::new();
    client.outbox.take_all(&mut deliveries);
    let mut out = BytesMut::new();
    for delivery in deliveries {
        let _ = client.session.render(delivery, &mut out);
    }
}

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    fn value(&mut self) -> Option<String> {
        let v = usize::from(self.byte()?);
        if v < VALUES.len() {
            return Some(VALUES[v].to_owned());
        }
        let len = (v - VALUES.len()) % 12;
        let take = len.min(self.data.len());
        let (raw, rest) = self.data.split_at(take);
        self.data = rest;
        Some(String::from_utf8_lossy(raw).into_owned())
    }

    fn frame(&mut self) -> Option<Frame> {
        let command = COMMANDS[usize::from(self.byte()?) % COMMANDS.len()];
        let mut frame = Frame::new(command);
        let count = self.byte()? % 7;
        for _ in 0..count {
            let name = NAMES[usize::from(self.byte()?) % NAMES.len()];
            let value = self.value()?;
            frame.headers.push(name, value);
        }
        if matches!(command, Command::Send) {
            let len = usize::from(self.byte().unwrap_or(0) % 32);
            frame = frame.with_body(vec![b'x'; len]);
        }
        Some(frame)
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let world = world();
    let config = if mode & 2 == 0 { &world.open } else { &world.restricted };
    world.runtime.block_on(async {
        let vhosts = VirtualHosts::in_memory(Config::ephemeral().queue_settings());
        let mut clients = [client(0, config, &vhosts), client(1, config, &vhosts)];
        let mut next_id = 2;
        if mode & 1 == 1 {
            // Raw bytes through the decoder into session 0.
            let mut buffer = BytesMut::from(rest);
            loop {
                match clients[0].decoder.decode(&mut buffer) {
                    Ok(Some(Item::Frame(frame))) => feed(&mut clients[0], frame).await,
                    Ok(Some(Item::HeartBeat)) => {}
                    Ok(None) | Err(_) => break,
                }
                if clients[0].ended {
                    break;
                }
            }
        } else {
            let mut input = Input { data: rest };
            while let Some(selector) = input.byte() {
                let which = usize::from(selector & 1);
                if selector & 0x80 != 0 {
                    // Drop the session and start a fresh one in its place.
                    clients[which].session.close().await;
                    clients[which] = client(next_id, config, &vhosts);
                    next_id += 1;
                    continue;
                }
                let Some(frame) = input.frame() else { break };
                feed(&mut clients[which], frame).await;
                if clients[which].ended {
                    clients[which].session.close().await;
                    clients[which] = client(next_id, config, &vhosts);
                    next_id += 1;
                }
            }
        }
        for client in &mut clients {
            client.session.close().await;
        }
        for queue in vhosts.default_router().queues() {
            queue.shutdown(false).await;
        }
    });
});
