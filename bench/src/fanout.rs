//! `fanout` (1 publisher -> N subscribers of one topic) and `latency` (the same with N = 1 and a
//! paced publisher).
//!
//! Timeline: all subscribers subscribe (with receipts) first; then the publisher starts at
//! `t0`; the window measured is [t0 + warmup, t0 + warmup + duration). A message belongs to the
//! window by its send timestamp (for latency and the delivery ratio); delivered/s counts
//! messages received during the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::Common;
use crate::net::{ConnSettings, Reader, Session, Writer};
use crate::stats::{self, CpuWindow, now_ns, sleep_until_ns};
use crate::stomp::{self, BODY_MIN, BODY_TS, SendTemplate};

/// Subscribers whose latencies are recorded (each histogram is ~200 KiB).
const LATENCY_SAMPLED: usize = 100;

pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    pub fn has(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }
    pub fn secs(&self) -> f64 {
        (self.end - self.start) as f64 / 1e9
    }
}

pub struct SubResult {
    pub hist: Option<Histogram<u64>>,
    /// Messages received while the window was open.
    pub delivered_in_window: u64,
    pub received: u64,
    pub error: Option<String>,
}

/// Reads MESSAGEs until `stop`; `in_window` counts received messages sent during the window.
async fn subscriber(
    mut s: Session,
    window: Arc<Window>,
    mut stop: watch::Receiver<bool>,
    in_window: Arc<AtomicU64>,
    flow: Arc<Flow>,
    sample: bool,
) -> SubResult {
    let mut r = SubResult { hist: sample.then(stats::histogram), delivered_in_window: 0, received: 0, error: None };
    let mut buf = std::mem::take(&mut s.buf);
    loop {
        let t = now_ns();
        let mut used = 0;
        let mut msgs = 0u64;
        let mut sent_in_window = 0u64;
        loop {
            match stomp::scan(&buf[used..]) {
                Ok(Some((f, n))) => {
                    used += n;
                    if f.is(b"MESSAGE") && f.body.len() >= BODY_MIN {
                        msgs += 1;
                        let ts = stomp::read_u64(f.body, BODY_TS);
                        if window.has(ts) {
                            sent_in_window += 1;
                            if let Some(h) = &mut r.hist {
                                stats::record(h, t.saturating_sub(ts));
                            }
                        }
                    } else if f.is(b"ERROR") {
                        r.error = Some(f.error_text());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    r.error = Some(e);
                    break;
                }
            }
        }
        buf.advance(used);
        r.received += msgs;
        if window.has(t) {
            r.delivered_in_window += msgs;
        }
        if sent_in_window > 0 {
            in_window.fetch_add(sent_in_window, Ordering::Relaxed);
        }
        if msgs > 0 {
            flow.received.fetch_add(msgs, Ordering::Relaxed);
            flow.progress.notify_one();
        }
        if r.error.is_some() {
            break;
        }
        match s.reader.read_or_stop(&mut buf, &mut stop).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                r.error = Some(e);
                break;
            }
        }
    }
    s.writer.close().await;
    r
}

/// Reads and discards what the broker sends a publisher, returning the first ERROR.
pub async fn drain_reader(mut reader: Reader, mut stop: watch::Receiver<bool>) -> Option<String> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match reader.read_or_stop(&mut buf, &mut stop).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(e),
        }
        let mut used = 0;
        while let Ok(Some((f, n))) = stomp::scan(&buf[used..]) {
            used += n;
            if f.is(b"ERROR") {
                return Some(f.error_text());
            }
        }
        buf.advance(used);
    }
}

/// Closed-loop flow control for a publisher: it keeps at most `limit` deliveries
/// (messages x subscribers) in flight, so it runs at the rate the broker sustains instead of
/// overrunning the subscribers' outboxes (which brokers answer by dropping slow consumers).
pub struct Flow {
    pub received: AtomicU64,
    pub progress: Notify,
    pub subscribers: u64,
    pub limit: u64,
}

pub struct PubResult {
    pub sent: u64,
    pub sent_in_window: u64,
    pub error: Option<String>,
}

/// Publishes from `t0` until the window's end (or `max` messages): paced at `rate` msgs/s by
/// [`paced_publisher`], else unpaced in batches of `batch` within the flow window.
#[allow(clippy::too_many_arguments)]
pub async fn publisher(
    mut w: Writer,
    template: SendTemplate,
    t0: u64,
    window: Arc<Window>,
    batch: usize,
    rate: Option<f64>,
    max: u64,
    flow: Arc<Flow>,
    mut stop: watch::Receiver<bool>,
) -> (Writer, PubResult) {
    if let Some(rate) = rate {
        let runtime = tokio::runtime::Handle::current();
        return tokio::task::spawn_blocking(move || {
            paced_publisher(&runtime, w, template, t0, &window, rate, max, &flow, stop)
        })
        .await
        .expect("paced publisher thread");
    }
    let mut res = PubResult { sent: 0, sent_in_window: 0, error: None };
    let batch = batch.max(1) as u64;
    let mut out = BytesMut::with_capacity(template.frame_len() * batch as usize);
    sleep_until_ns(t0).await;
    loop {
        let now = now_ns();
        if now >= window.end || res.sent >= max || *stop.borrow() {
            break;
        }
        let n = batch.min(max - res.sent);
        let Some(n) = wait_for_flow(&flow, n, res.sent, &window, &mut stop).await else { break };
        if let Err(e) = send(&mut w, &template, &mut out, n, &mut res, &window).await {
            res.error = Some(e);
            break;
        }
    }
    (w, res)
}

/// Waits until `n` more messages fit in the closed-loop window (trimming `n` to the window);
/// `None` once the measurement window is over.
async fn wait_for_flow(
    flow: &Flow,
    n: u64,
    sent: u64,
    window: &Window,
    stop: &mut watch::Receiver<bool>,
) -> Option<u64> {
    if flow.limit == 0 {
        return Some(n);
    }
    // A batch never needs more than the whole window (else it would wait forever).
    let n = n.min((flow.limit / flow.subscribers.max(1)).max(1));
    loop {
        let in_flight = (sent + n) * flow.subscribers;
        if in_flight <= flow.limit + flow.received.load(Ordering::Relaxed) {
            return Some(n);
        }
        tokio::select! {
            _ = flow.progress.notified() => {}
            _ = stop.changed() => return None,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if now_ns() >= window.end { return None; }
            }
        }
    }
}

/// Stamps `n` messages with the current time and writes them in one call.
async fn send(
    w: &mut Writer,
    template: &SendTemplate,
    out: &mut BytesMut,
    n: u64,
    res: &mut PubResult,
    window: &Window,
) -> Result<(), String> {
    let now = now_ns();
    for i in 0..n {
        template.push(out, now, res.sent + i);
    }
    w.write_buf(out).await.map_err(|e| format!("write: {e}"))?;
    out.clear();
    res.sent += n;
    if window.has(now) {
        res.sent_in_window += n;
    }
    Ok(())
}

/// The publisher of the `latency` scenario and of paced fan-outs, on its own thread.
///
/// tokio's timers tick in whole milliseconds, so pacing on them sends 10 messages back to back
/// every millisecond at 10k msgs/s (50 at 50k): the last of each burst then waits behind the
/// others, and "latency at a fixed rate" becomes the latency of a burst. This thread instead
/// sleeps to each message's due time with a 1 us timer slack (hrtimer precision), then stamps
/// and writes what is due itself (through the runtime's I/O driver), so sending costs no extra
/// thread wake-up. Wakes are at least 50 us apart: above 20k msgs/s each wake sends the few
/// messages that fell due meanwhile.
#[allow(clippy::too_many_arguments)]
fn paced_publisher(
    runtime: &tokio::runtime::Handle,
    mut w: Writer,
    template: SendTemplate,
    t0: u64,
    window: &Window,
    rate: f64,
    max: u64,
    flow: &Flow,
    mut stop: watch::Receiver<bool>,
) -> (Writer, PubResult) {
    const MIN_WAKE_PERIOD_NS: u64 = 50_000;
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    let interval = 1e9 / rate.max(1e-3);
    let mut res = PubResult { sent: 0, sent_in_window: 0, error: None };
    let mut out = BytesMut::with_capacity(template.frame_len() * 4);
    loop {
        let now = now_ns();
        if now >= window.end || res.sent >= max || *stop.borrow() {
            break;
        }
        // Message k is due at t0 + k * interval.
        let due = if now < t0 { 0 } else { (((now - t0) as f64 / interval) as u64 + 1).min(max) };
        if due <= res.sent {
            let next = t0 + (res.sent as f64 * interval) as u64;
            let wake = next.max(now + MIN_WAKE_PERIOD_NS).min(window.end);
            std::thread::sleep(Duration::from_nanos(wake.saturating_sub(now)));
            continue;
        }
        let sent = runtime.block_on(async {
            let n = wait_for_flow(flow, (due - res.sent).min(10_000), res.sent, window, &mut stop).await?;
            Some(send(&mut w, &template, &mut out, n, &mut res, window).await)
        });
        match sent {
            None => break,
            Some(Err(e)) => {
                res.error = Some(e);
                break;
            }
            Some(Ok(())) => {}
        }
    }
    (w, res)
}

pub async fn run(
    c: &Common,
    scenario: &str,
    subscribers: usize,
    size: usize,
    rate: Option<f64>,
    in_flight_bytes: u64,
    subscriber_urls: &[String],
) -> Result<(), String> {
    let size = size.max(BODY_MIN);
    let settings: ConnSettings = c.settings((0, 0), 64 * 1024)?;
    let addr = settings.target.resolve().await?;
    let destination = format!("{}{}", c.topic_prefix, c.unique(scenario));
    // Where each subscriber connects: round-robin over --subscriber-urls, or the publisher's.
    let mut targets = Vec::new();
    for url in subscriber_urls {
        let target = crate::net::Target::parse(url)?;
        let target_addr = target.resolve().await?;
        targets.push((ConnSettings { target, ..settings.clone() }, target_addr));
    }
    if targets.is_empty() {
        targets.push((settings.clone(), addr));
    }

    let t_setup = now_ns();
    let subs: Vec<Result<Session, String>> = futures_util::stream::iter(0..subscribers)
        .map(|i| {
            let (settings, addr) = targets[i % targets.len()].clone();
            let destination = destination.clone();
            async move {
                let mut s = Session::open(&settings, addr).await?;
                s.subscribe("0", &destination, "auto", &[]).await?;
                Ok(s)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut sessions = Vec::with_capacity(subscribers);
    for s in subs {
        sessions.push(s.map_err(|e| format!("subscriber: {e}"))?);
    }
    let setup_s = (now_ns() - t_setup) as f64 / 1e9;
    let publisher_session = Session::open(&settings, addr).await.map_err(|e| format!("publisher: {e}"))?;

    let t0 = now_ns() + 20_000_000;
    let start = t0 + (c.warmup * 1e9) as u64;
    let window = Arc::new(Window { start, end: start + (c.duration * 1e9) as u64 });
    let (stop_tx, stop_rx) = watch::channel(false);
    let in_window = Arc::new(AtomicU64::new(0));
    let template = SendTemplate::new(&destination, size, 0, false, false);
    let per_sub =
        if in_flight_bytes == 0 { 0 } else { (in_flight_bytes / template.frame_len() as u64).max(c.batch as u64) };
    let flow = Arc::new(Flow {
        received: AtomicU64::new(0),
        progress: Notify::new(),
        subscribers: subscribers as u64,
        limit: per_sub * subscribers as u64,
    });
    let handles: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(subscriber(
                s,
                window.clone(),
                stop_rx.clone(),
                in_window.clone(),
                flow.clone(),
                i < LATENCY_SAMPLED,
            ))
        })
        .collect();
    let Session { reader, writer, .. } = publisher_session;
    let pub_reader = tokio::spawn(drain_reader(reader, stop_rx.clone()));
    let pub_task = tokio::spawn(publisher(
        writer,
        template,
        t0,
        window.clone(),
        c.batch,
        rate,
        c.messages,
        flow.clone(),
        stop_rx.clone(),
    ));

    sleep_until_ns(window.start).await;
    let mut cpu = CpuWindow::start();
    let rss0 = c.broker_pid.and_then(stats::rss_kib);
    sleep_until_ns(window.end).await;
    cpu.stop();
    let rss1 = c.broker_pid.and_then(stats::rss_kib);
    let (mut pub_writer, pres) = pub_task.await.map_err(|e| e.to_string())?;

    // Drain: until every subscriber has every in-window message, no progress for 1 s, or
    // --drain seconds.
    let expected = pres.sent_in_window * subscribers as u64;
    let drain_end = now_ns() + (c.drain * 1e9) as u64;
    let mut last = (in_window.load(Ordering::Relaxed), now_ns());
    while now_ns() < drain_end {
        let got = in_window.load(Ordering::Relaxed);
        if got >= expected {
            break;
        }
        if got != last.0 {
            last = (got, now_ns());
        } else if now_ns() - last.1 > 1_000_000_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let pub_error = pub_reader.await.ok().flatten();
    pub_writer.close().await;

    let mut hist = stats::histogram();
    let mut delivered = 0u64;
    let mut received_in_window_ts = 0u64;
    let mut errors = Vec::new();
    for h in handles {
        let r = h.await.map_err(|e| e.to_string())?;
        if let Some(x) = &r.hist {
            hist.add(x).ok();
        }
        delivered += r.delivered_in_window;
        if let Some(e) = r.error {
            errors.push(e);
        }
    }
    received_in_window_ts += in_window.load(Ordering::Relaxed);
    let secs = window.secs();
    let published_rate = pres.sent_in_window as f64 / secs;
    let delivered_rate = delivered as f64 / secs;
    let ratio = if expected > 0 { received_in_window_ts as f64 / expected as f64 } else { 0.0 };
    let mut error = pres.error.clone().or(pub_error);
    if error.is_none() {
        error = errors.first().cloned();
    }
    let human = format!(
        "{scenario} {} subs={subscribers} size={size}{}: published {:.0}/s delivered {:.0}/s ratio {:.4} {} | bench cpu {:.2} cores, {:.0} ns/msg{}",
        net_name(c),
        rate.map(|r| format!(" rate={r}")).unwrap_or_default(),
        published_rate,
        delivered_rate,
        ratio,
        stats::latency_human(&hist),
        cpu.used_ns as f64 / 1e9 / secs,
        cpu.used_ns as f64 / (pres.sent_in_window + delivered).max(1) as f64,
        error.as_ref().map(|e| format!(" ERROR: {e}")).unwrap_or_default(),
    );
    c.emit(
        human,
        json!({
            "scenario": scenario,
            "subscribers": subscribers,
            "size": size,
            "rate_target": rate,
            "in_flight_per_subscriber": per_sub,
            "duration_s": secs,
            "warmup_s": c.warmup,
            "setup_s": setup_s,
            "published": pres.sent_in_window,
            "published_per_s": published_rate.round(),
            "delivered_per_s": delivered_rate.round(),
            "delivery_ratio": (ratio * 1e6).round() / 1e6,
            "latency": stats::latency_json(&hist),
            "latency_sampled_subscribers": subscribers.min(LATENCY_SAMPLED),
            "bench": cpu.json(pres.sent_in_window + delivered, secs),
            "broker_rss_kib": [rss0, rss1],
            "subscriber_errors": errors.len(),
            "error": error,
        }),
    );
    Ok(())
}

pub fn net_name(c: &Common) -> String {
    crate::net::Target::parse(&c.url).map(|t| t.transport().to_string()).unwrap_or_default()
}
