//! The browser demo (`demo = true`, `stampede --demo`): pages served at `/demo/` on the
//! WebSocket port, same origin as `/ws`, and the small backend they talk to.
//!
//! The demo shows what a web app does with the broker, so it is built the way one would be:
//! the pages are plain HTML and JavaScript on the vendored `@stomp/stompjs` UMD bundle (its
//! Apache-2.0 license is served beside it), connecting with the broker's own fallback shim, so
//! they use a WebSocket where one opens and SSE + POST where none does (`?transport=sse` forces
//! it). Their backend is three ordinary STOMP clients (the project's Rust client) connected to
//! this broker's STOMP listener over loopback, not hooks inside it: a price ticker publishing
//! to `/topic/demo.ticker.<symbol>`, a worker answering jobs from `/queue/demo.jobs` through
//! each page's `/temp-queue/`, and a keeper of the chat's last messages that answers
//! `/queue/demo.chat.history` requests, so a page that joins sees what was said before it.
//! Presence needs no backend: each page announces itself on `/topic/demo.presence`.
//!
//! Nothing is served or started without `demo = true`. The backend connects anonymously, so
//! the demo runs on a broker without users (start a separate one for it); each client
//! reconnects with backoff if its connection ends, and every task stops with the broker.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stampede_client::{AckMode, Client, ClientError, Headers, SubscribeOptions};
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

/// Where the demo's pages live on the WebSocket port.
pub const PREFIX: &str = "/demo";

const INDEX_HTML: &str = include_str!("assets/index.html");
const DEMO_JS: &str = include_str!("assets/demo.js");
const DEMO_CSS: &str = include_str!("assets/demo.css");
const STOMPJS: &str = include_str!("assets/stomp.umd.min.js");
const STOMPJS_LICENSE: &str = include_str!("assets/stompjs-LICENSE.txt");

/// The ticker's symbols and their starting prices.
const SYMBOLS: [(&str, f64); 6] =
    [("STMP", 142.0), ("ACME", 88.5), ("GLBX", 231.2), ("INTC", 41.7), ("UMBR", 12.9), ("WAYN", 305.0)];
/// How often each price moves.
pub const TICK: Duration = Duration::from_millis(700);
/// Chat messages kept for pages that join.
const HISTORY: usize = 30;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF_MS: u64 = 5_000;

/// The demo cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemoError {
    /// The broker has users or token keys; the demo's backend connects anonymously.
    #[error(
        "demo = true needs a broker without users or [jwt]: the demo's ticker, worker and chat history connect anonymously. Run the demo on a broker of its own (stampede --demo --data-dir ./demo-data)"
    )]
    NeedsAnonymous,
    /// There is no plain STOMP listener for the backend to connect to.
    #[error("demo = true needs the plain STOMP listener (require_tls is on)")]
    NeedsPlainStomp,
}

/// The body and content type of the demo file at `path` (below [`PREFIX`]), if there is one.
/// `ws_path` is the WebSocket endpoint the pages connect to.
pub fn asset(path: &str, ws_path: &str) -> Option<(&'static str, std::borrow::Cow<'static, str>)> {
    let html = "text/html; charset=utf-8";
    let js = "text/javascript; charset=utf-8";
    Some(match path {
        "/" | "/index.html" => (html, INDEX_HTML.into()),
        "/demo.js" => (js, DEMO_JS.into()),
        "/demo.css" => ("text/css; charset=utf-8", DEMO_CSS.into()),
        "/stomp.umd.min.js" => (js, STOMPJS.into()),
        "/stompjs-LICENSE.txt" => ("text/plain; charset=utf-8", STOMPJS_LICENSE.into()),
        "/config.js" => (js, format!("window.STAMPEDE_DEMO = {{ wsPath: {} }};\n", json_string(ws_path)).into()),
        _ => return None,
    })
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"/ws\"".to_owned())
}

/// Answers a request for `path` (the whole path, starting with [`PREFIX`]) on the WebSocket
/// port: the file, a redirect from `/demo` to `/demo/`, or 404.
///
/// # Errors
/// When writing the socket fails.
pub(crate) async fn serve<S: AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
    ws_path: &str,
    head_only: bool,
) -> std::io::Result<()> {
    use crate::listener::public_http::write_response;
    let below = &path[PREFIX.len()..];
    if below.is_empty() {
        return write_response(
            stream,
            (301, "Moved Permanently"),
            "text/plain",
            "Location: /demo/\r\n",
            b"",
            head_only,
        )
        .await;
    }
    match asset(below, ws_path) {
        Some((content_type, body)) => {
            let headers = "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n";
            write_response(stream, (200, "OK"), content_type, headers, body.as_bytes(), head_only).await
        }
        None => {
            let body = b"Not found. The demo is at /demo/\n";
            write_response(stream, (404, "Not Found"), "text/plain; charset=utf-8", "", body, head_only).await
        }
    }
}

/// Checks that the demo can run on this broker, then starts its backend (ticker, worker, chat
/// history) on `tasks`, connecting to the STOMP listener at `stomp_addr`; they stop with
/// `shutdown`.
///
/// # Errors
/// [`DemoError`] when the broker has users or no plain STOMP listener.
pub fn start(
    stomp_addr: Option<SocketAddr>,
    anonymous: bool,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), DemoError> {
    if !anonymous {
        return Err(DemoError::NeedsAnonymous);
    }
    let mut addr = stomp_addr.ok_or(DemoError::NeedsPlainStomp)?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let url = format!("tcp://{addr}");
    for part in [Part::Ticker, Part::Worker, Part::History] {
        tasks.spawn(run(part, url.clone(), shutdown.clone()));
    }
    info!("demo: pages at /demo/ on the WebSocket listener; ticker, job worker and chat history running");
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Part {
    Ticker,
    Worker,
    History,
}

/// Runs one part, connecting again with backoff whenever its connection ends, until `shutdown`.
async fn run(part: Part, url: String, shutdown: CancellationToken) {
    let mut failures = 0u32;
    let mut history = VecDeque::new();
    let mut ticker = Ticker::new();
    loop {
        let attempt = async {
            let client = Client::connect(&url).await?;
            failures = 0;
            match part {
                Part::Ticker => ticker.run(&client).await,
                Part::Worker => work(&client).await,
                Part::History => keep_history(&client, &mut history).await,
            }
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            () = shutdown.cancelled() => return,
        };
        failures = failures.saturating_add(1);
        if let Err(error) = outcome {
            debug!(?part, "demo client stopped: {error}; reconnecting");
        }
        let wait = crate::bridge::backoff(100, MAX_BACKOFF_MS, failures);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Prices on a random walk.
struct Ticker {
    prices: Vec<f64>,
    random: u64,
}

impl Ticker {
    fn new() -> Ticker {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Ticker { prices: SYMBOLS.iter().map(|(_, price)| *price).collect(), random: seed | 1 }
    }

    /// A number in [-1, 1) (xorshift64*; prices need no better randomness).
    fn next(&mut self) -> f64 {
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        let bits = self.random.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (bits as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    async fn run(&mut self, client: &Client) -> Result<(), ClientError> {
        let mut ticks = tokio::time::interval(TICK);
        loop {
            ticks.tick().await;
            for (index, (symbol, start)) in SYMBOLS.iter().enumerate() {
                let old = self.prices[index];
                let new = (old * (1.0 + self.next() * 0.006)).max(1.0);
                self.prices[index] = new;
                let body = serde_json::json!({
                    "symbol": symbol,
                    "price": (new * 100.0).round() / 100.0,
                    "change": ((new / start - 1.0) * 10_000.0).round() / 100.0,
                    "at": crate::destination::queue::now_ms(),
                });
                let destination = format!("/topic/demo.ticker.{symbol}");
                client.send(&destination, body.to_string(), json_headers()).await?;
            }
        }
    }
}

fn json_headers() -> Headers {
    [("content-type", "application/json")].into_iter().collect()
}

/// The job worker: a number in, its prime factors out, through the request's `reply-to`.
async fn work(client: &Client) -> Result<(), ClientError> {
    let options = SubscribeOptions::new().ack(AckMode::ClientIndividual).prefetch(4);
    let mut jobs = client.subscribe("/queue/demo.jobs", options).await?;
    let worker = format!("worker-{}", std::process::id());
    while let Some(job) = jobs.recv().await {
        let started = Instant::now();
        let request: serde_json::Value = serde_json::from_slice(&job.body).unwrap_or_default();
        let reply = match request.get("number").and_then(serde_json::Value::as_u64) {
            Some(number) if number >= 2 => {
                // A little pretend work, so the page shows the job pending.
                tokio::time::sleep(Duration::from_millis(150 + number % 300)).await;
                serde_json::json!({
                    "id": request.get("id"),
                    "number": number,
                    "factors": factors(number),
                    "worker": worker,
                    "took_ms": started.elapsed().as_millis() as u64,
                })
            }
            _ => serde_json::json!({ "id": request.get("id"), "error": "send {\"number\": n} with n >= 2" }),
        };
        if job.header("reply-to").is_some() {
            client.reply(&job, reply.to_string(), json_headers()).await?;
        }
        client.ack(&job).await?;
    }
    Err(ClientError::Closed(client.closed().await))
}

/// Prime factors of `n`, smallest first.
fn factors(mut n: u64) -> Vec<u64> {
    let mut found = Vec::new();
    let mut divisor = 2u64;
    while divisor.saturating_mul(divisor) <= n {
        while n.is_multiple_of(divisor) {
            found.push(divisor);
            n /= divisor;
        }
        divisor += if divisor == 2 { 1 } else { 2 };
    }
    if n > 1 {
        found.push(n);
    }
    found
}

/// Keeps the chat's last messages and answers history requests with them.
async fn keep_history(client: &Client, history: &mut VecDeque<serde_json::Value>) -> Result<(), ClientError> {
    let mut chat = client.subscribe("/topic/demo.chat", SubscribeOptions::new()).await?;
    let mut requests = client.subscribe("/queue/demo.chat.history", SubscribeOptions::new()).await?;
    loop {
        tokio::select! {
            message = chat.recv() => {
                let Some(message) = message else { break };
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&message.body) {
                    history.push_back(value);
                    while history.len() > HISTORY {
                        history.pop_front();
                    }
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { break };
                if request.header("reply-to").is_some() {
                    let kept: Vec<&serde_json::Value> = history.iter().collect();
                    let body = serde_json::to_string(&kept).unwrap_or_else(|_| "[]".to_owned());
                    client.reply(&request, body, json_headers()).await?;
                }
            }
        }
    }
    Err(ClientError::Closed(client.closed().await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_factors_numbers() {
        assert_eq!(factors(2), [2]);
        assert_eq!(factors(360), [2, 2, 2, 3, 3, 5]);
        assert_eq!(factors(97), [97]);
        assert_eq!(factors(1_000_003 * 3), [3, 1_000_003]);
    }

    #[test]
    fn the_pages_are_served_with_the_configured_websocket_path() {
        let (kind, body) = asset("/config.js", "/stomp").unwrap();
        assert!(kind.starts_with("text/javascript"));
        assert_eq!(body, "window.STAMPEDE_DEMO = { wsPath: \"/stomp\" };\n");
        assert!(asset("/", "/ws").unwrap().1.contains("stomp.umd.min.js"));
        assert!(asset("/stompjs-LICENSE.txt", "/ws").unwrap().1.contains("Apache License"));
        assert!(asset("/../secret", "/ws").is_none());
    }

    #[test]
    fn ticker_moves_stay_small_and_random() {
        let mut ticker = Ticker::new();
        let draws: Vec<f64> = (0..1000).map(|_| ticker.next()).collect();
        assert!(draws.iter().all(|d| (-1.0..1.0).contains(d)));
        assert!(draws.iter().any(|d| *d > 0.5) && draws.iter().any(|d| *d < -0.5));
    }
}
