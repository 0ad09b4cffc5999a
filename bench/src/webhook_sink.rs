//! `queue --webhook-sink ADDR`: an HTTP server that stands in for a backend behind a Stampede
//! webhook. The broker POSTs each message of the benchmark queue to it; it answers `200` and
//! counts the message exactly as a STOMP consumer of the scenario does (sequence numbers for
//! loss and duplicates, the body's send timestamp for latency), so publish -> webhook delivery is
//! measured end to end in one process, on one clock.
//!
//! hyper's HTTP/1.1 server with keep-alive, one task per connection the broker opens (its
//! `concurrency` setting bounds them); the histogram sits behind a mutex, which costs nothing
//! next to an HTTP exchange.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::stats::{self, now_ns};
use crate::stomp::{self, BODY_MIN, BODY_PRODUCER, BODY_SEQ, BODY_TS};

/// What the sink saw, merged into the scenario's consumer results.
#[derive(Default)]
pub struct Tally {
    pub consumed_in_window: u64,
    pub duplicates: u64,
    pub unknown: u64,
}

/// The running sink: where to read what it saw.
pub struct Sink {
    pub tally: Arc<Mutex<(Tally, hdrhistogram::Histogram<u64>)>>,
}

/// Starts the sink on `addr`. `seen(producer, seq)` records a message and says whether it was
/// new (`None`: not a message of this run); `in_window(t)` whether a time is measured.
pub async fn start(
    addr: &str,
    seen: impl Fn(usize, u64) -> Option<bool> + Send + Sync + 'static,
    in_window: impl Fn(u64) -> bool + Send + Sync + 'static,
) -> Result<Sink, String> {
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("--webhook-sink {addr}: {e}"))?;
    let tally = Arc::new(Mutex::new((Tally::default(), stats::histogram())));
    let record = Arc::new({
        let tally = Arc::clone(&tally);
        move |body: &[u8]| {
            let t = now_ns();
            let mut guard = tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (tally, hist) = &mut *guard;
            if body.len() < BODY_MIN {
                tally.unknown += 1;
                return;
            }
            let ts = stomp::read_u64(body, BODY_TS);
            let producer = stomp::read_u32(body, BODY_PRODUCER) as usize;
            match seen(producer, stomp::read_u64(body, BODY_SEQ)) {
                Some(true) => {}
                Some(false) => tally.duplicates += 1,
                None => tally.unknown += 1,
            }
            if in_window(ts) {
                stats::record(hist, t.saturating_sub(ts));
            }
            if in_window(t) {
                tally.consumed_in_window += 1;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let record = Arc::clone(&record);
                    async move {
                        let status = match request.into_body().collect().await {
                            Ok(body) => {
                                record(&body.to_bytes());
                                StatusCode::OK
                            }
                            Err(_) => StatusCode::BAD_REQUEST,
                        };
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(Sink { tally })
}
