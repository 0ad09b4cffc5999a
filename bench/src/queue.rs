//! `queue`: P producers -> C consumers on one queue. Sequence numbers (per producer) in the body
//! count lost and duplicated messages; with `--persistent` every SEND carries `persistent:true`
//! and a receipt, at most `--window` receipts outstanding per producer, so the broker's durable
//! receipt path is what is measured. A message counts as sent when written (or, with receipts,
//! when its RECEIPT arrived); lost = sent (confirmed) sequence numbers never consumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::Common;
use crate::fanout::{Window, drain_reader};
use crate::net::{Reader, Session, Writer};
use crate::stats::{self, CpuWindow, now_ns, sleep_until_ns};
use crate::stomp::{self, BODY_MIN, BODY_PRODUCER, BODY_SEQ, BODY_TS, SendTemplate};

pub struct Params {
    pub producers: usize,
    pub consumers: usize,
    pub persistent: bool,
    pub receipts: bool,
    pub window: usize,
    pub ack: String,
    pub prefetch: u32,
    pub size: usize,
    pub rate: Option<f64>,
    /// Where the consumers connect, round-robin (empty: where the producers do).
    pub consumer_urls: Vec<String>,
    /// Also consume through a broker webhook POSTing to an HTTP sink on this address.
    pub webhook_sink: Option<String>,
}

/// One bit per sequence number of one producer.
struct Seen {
    bits: Vec<AtomicU64>,
}

impl Seen {
    fn new(n: u64) -> Seen {
        Seen { bits: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect() }
    }
    /// True if it was new.
    fn set(&self, seq: u64) -> Option<bool> {
        let word = self.bits.get((seq / 64) as usize)?;
        let bit = 1u64 << (seq % 64);
        Some(word.fetch_or(bit, Ordering::Relaxed) & bit == 0)
    }
    fn count_missing(&self, upto: u64) -> u64 {
        let mut missing = 0;
        for seq_word in 0..upto.div_ceil(64) {
            let w = self.bits[seq_word as usize].load(Ordering::Relaxed);
            let valid = if (seq_word + 1) * 64 <= upto { u64::MAX } else { (1u64 << (upto % 64)) - 1 };
            missing += (valid & !w).count_ones() as u64;
        }
        missing
    }
}

struct Shared {
    window: Window,
    seen: Vec<Seen>,
    unique: AtomicU64,
}

struct ConsumerResult {
    hist: Histogram<u64>,
    consumed_in_window: u64,
    duplicates: u64,
    unknown: u64,
    error: Option<String>,
}

async fn consumer(mut s: Session, shared: Arc<Shared>, ack: bool, mut stop: watch::Receiver<bool>) -> ConsumerResult {
    let mut r =
        ConsumerResult { hist: stats::histogram(), consumed_in_window: 0, duplicates: 0, unknown: 0, error: None };
    let mut buf = std::mem::take(&mut s.buf);
    let mut acks = BytesMut::with_capacity(64 * 1024);
    loop {
        let t = now_ns();
        let mut used = 0;
        let mut msgs = 0u64;
        let mut new = 0u64;
        loop {
            match stomp::scan(&buf[used..]) {
                Ok(Some((f, n))) => {
                    used += n;
                    if f.is(b"MESSAGE") && f.body.len() >= BODY_MIN {
                        msgs += 1;
                        let ts = stomp::read_u64(f.body, BODY_TS);
                        let seq = stomp::read_u64(f.body, BODY_SEQ);
                        let producer = stomp::read_u32(f.body, BODY_PRODUCER) as usize;
                        match shared.seen.get(producer).and_then(|s| s.set(seq)) {
                            Some(true) => new += 1,
                            Some(false) => r.duplicates += 1,
                            None => r.unknown += 1,
                        }
                        if shared.window.has(ts) {
                            stats::record(&mut r.hist, t.saturating_sub(ts));
                        }
                        let acked = if ack { stomp::push_ack(&mut acks, s.version12, &f) } else { Ok(()) };
                        if let Err(e) = acked {
                            r.error = Some(e);
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
        if shared.window.has(t) {
            r.consumed_in_window += msgs;
        }
        if new > 0 {
            shared.unique.fetch_add(new, Ordering::Relaxed);
        }
        // (write_buf does nothing for an empty buffer)
        if let Err(e) = s.writer.write_buf(&mut acks).await {
            r.error = Some(format!("write ACK: {e}"));
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

struct ProducerResult {
    sent: u64,
    sent_in_window: u64,
    error: Option<String>,
}

/// Reads RECEIPTs, returning a window permit and counting confirmations for each.
async fn receipt_reader(
    mut reader: Reader,
    permits: Arc<Semaphore>,
    confirmed: Arc<AtomicU64>,
    confirmed_in_window: Arc<AtomicU64>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Option<String> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        match reader.read_or_stop(&mut buf, &mut stop).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                permits.close();
                return Some(e);
            }
        }
        let t = now_ns();
        let mut used = 0;
        let mut n_receipts = 0;
        loop {
            match stomp::scan(&buf[used..]) {
                Ok(Some((f, n))) => {
                    used += n;
                    if f.is(b"RECEIPT") {
                        n_receipts += 1;
                    } else if f.is(b"ERROR") {
                        permits.close();
                        return Some(f.error_text());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    permits.close();
                    return Some(e);
                }
            }
        }
        buf.advance(used);
        if n_receipts > 0 {
            confirmed.fetch_add(n_receipts as u64, Ordering::Relaxed);
            if shared.window.has(t) {
                confirmed_in_window.fetch_add(n_receipts as u64, Ordering::Relaxed);
            }
            permits.add_permits(n_receipts);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn producer(
    mut w: Writer,
    template: SendTemplate,
    t0: u64,
    shared: Arc<Shared>,
    batch: usize,
    rate: Option<f64>,
    max: u64,
    permits: Option<Arc<Semaphore>>,
) -> (Writer, ProducerResult) {
    let mut res = ProducerResult { sent: 0, sent_in_window: 0, error: None };
    let mut out = BytesMut::with_capacity(template.frame_len() * batch.max(1));
    sleep_until_ns(t0).await;
    loop {
        let now = now_ns();
        if now >= shared.window.end || res.sent >= max {
            break;
        }
        let mut n = match rate {
            None => batch.max(1) as u64,
            Some(r) => {
                let due = ((now - t0) as f64 * r / 1e9) as u64;
                let n = due.saturating_sub(res.sent);
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                n.min(10_000)
            }
        }
        .min(max - res.sent);
        if let Some(p) = &permits {
            // Take what is free (at least one), so a window smaller than a batch still flows.
            let free = p.available_permits() as u64;
            n = n.min(free.max(1));
            let end_in = shared.window.end.saturating_sub(now_ns());
            match tokio::time::timeout(Duration::from_nanos(end_in), p.acquire_many(n as u32)).await {
                Ok(Ok(g)) => g.forget(),
                Ok(Err(_)) => break, // closed: the reader saw an error
                Err(_) => break,     // window over
            }
        }
        let now = now_ns();
        for i in 0..n {
            template.push(&mut out, now, res.sent + i);
        }
        if let Err(e) = w.write_buf(&mut out).await {
            res.error = Some(format!("write: {e}"));
            break;
        }
        out.clear();
        res.sent += n;
        if shared.window.has(now) {
            res.sent_in_window += n;
        }
    }
    (w, res)
}

pub async fn run(c: &Common, p: Params) -> Result<(), String> {
    let size = p.size.max(BODY_MIN);
    let settings = c.settings((0, 0), 64 * 1024)?;
    let addr = settings.target.resolve().await?;
    let destination = format!("{}{}", c.queue_prefix, c.unique("queue"));
    let ack_mode = match p.ack.as_str() {
        "auto" | "client-individual" | "client" => p.ack.clone(),
        other => return Err(format!("--ack {other}: use auto, client-individual or client")),
    };
    let acking = ack_mode != "auto";
    let mut extra = Vec::new();
    if p.prefetch > 0 {
        extra.push(("prefetch-count".to_string(), p.prefetch.to_string()));
        extra.push(("activemq.prefetchSize".to_string(), p.prefetch.to_string()));
    }
    let cap = c.messages.min(200_000_000);

    let mut targets = Vec::new();
    for url in &p.consumer_urls {
        let target = crate::net::Target::parse(url)?;
        let target_addr = target.resolve().await?;
        targets.push((crate::net::ConnSettings { target, ..settings.clone() }, target_addr));
    }
    if targets.is_empty() {
        targets.push((settings.clone(), addr));
    }
    let mut consumers = Vec::new();
    for i in 0..p.consumers {
        let (consumer_settings, consumer_addr) = &targets[i % targets.len()];
        let mut s = Session::open(consumer_settings, *consumer_addr).await.map_err(|e| format!("consumer: {e}"))?;
        s.subscribe(&i.to_string(), &destination, &ack_mode, &extra)
            .await
            .map_err(|e| format!("consumer subscribe: {e}"))?;
        consumers.push(s);
    }
    let producers: Vec<Result<Session, String>> =
        futures_util::stream::iter(0..p.producers).map(|_| Session::open(&settings, addr)).buffered(16).collect().await;

    let t0 = now_ns() + 20_000_000;
    let start = t0 + (c.warmup * 1e9) as u64;
    let shared = Arc::new(Shared {
        window: Window { start, end: start + (c.duration * 1e9) as u64 },
        seen: (0..p.producers).map(|_| Seen::new(cap)).collect(),
        unique: AtomicU64::new(0),
    });
    let sink = match &p.webhook_sink {
        None => None,
        Some(addr) => {
            let (seen, window) = (shared.clone(), shared.clone());
            let seen = move |producer: usize, seq: u64| {
                let new = seen.seen.get(producer).and_then(|s| s.set(seq));
                if new == Some(true) {
                    seen.unique.fetch_add(1, Ordering::Relaxed);
                }
                new
            };
            Some(crate::webhook_sink::start(addr, seen, move |t| window.window.has(t)).await?)
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let cons: Vec<_> =
        consumers.into_iter().map(|s| tokio::spawn(consumer(s, shared.clone(), acking, stop_rx.clone()))).collect();
    let confirmed: Vec<Arc<AtomicU64>> = (0..p.producers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let confirmed_in_window = Arc::new(AtomicU64::new(0));
    let mut prods = Vec::new();
    let mut readers = Vec::new();
    for (i, s) in producers.into_iter().enumerate() {
        let s = s.map_err(|e| format!("producer: {e}"))?;
        let Session { reader, writer, .. } = s;
        let permits = p.receipts.then(|| Arc::new(Semaphore::new(p.window.max(1))));
        readers.push(match &permits {
            Some(sem) => tokio::spawn(receipt_reader(
                reader,
                sem.clone(),
                confirmed[i].clone(),
                confirmed_in_window.clone(),
                shared.clone(),
                stop_rx.clone(),
            )),
            None => tokio::spawn(drain_reader(reader, stop_rx.clone())),
        });
        let template = SendTemplate::new(&destination, size, i as u32, p.persistent, p.receipts);
        let batch = if p.receipts { c.batch.min(p.window.max(1)) } else { c.batch };
        prods.push(tokio::spawn(producer(writer, template, t0, shared.clone(), batch, p.rate, cap, permits)));
    }

    sleep_until_ns(start).await;
    let mut cpu = CpuWindow::start();
    sleep_until_ns(shared.window.end).await;
    cpu.stop();
    let mut sent_total = 0;
    let mut sent_in_window = 0;
    let mut sent_per = Vec::new();
    let mut writers = Vec::new();
    let mut error: Option<String> = None;
    for h in prods {
        let (w, r) = h.await.map_err(|e| e.to_string())?;
        writers.push(w);
        sent_total += r.sent;
        sent_in_window += r.sent_in_window;
        sent_per.push(r.sent);
        if error.is_none() {
            error = r.error;
        }
    }
    // With receipts, wait for the outstanding ones (up to --drain).
    let drain_end = now_ns() + (c.drain * 1e9) as u64;
    if p.receipts {
        while now_ns() < drain_end && confirmed.iter().zip(&sent_per).any(|(c, s)| c.load(Ordering::Relaxed) < *s) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let acknowledged: Vec<u64> =
        if p.receipts { confirmed.iter().map(|c| c.load(Ordering::Relaxed)).collect() } else { sent_per.clone() };
    let expected: u64 = acknowledged.iter().sum();
    // Drain consumers: until all were consumed, no progress for 2 s, or --drain (at least 5 s).
    let drain_end = now_ns() + (c.drain.max(5.0) * 1e9) as u64;
    let mut last = (shared.unique.load(Ordering::Relaxed), now_ns());
    while now_ns() < drain_end {
        let got = shared.unique.load(Ordering::Relaxed);
        if got >= expected {
            break;
        }
        if got != last.0 {
            last = (got, now_ns());
        } else if now_ns() - last.1 > 2_000_000_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // late duplicates
    let _ = stop_tx.send(true);
    for h in readers {
        if let Ok(Some(e)) = h.await {
            error.get_or_insert(e);
        }
    }
    for mut w in writers {
        w.close().await;
    }
    let mut hist = stats::histogram();
    let mut consumed_in_window = 0;
    let mut duplicates = 0;
    let mut unknown = 0;
    for h in cons {
        let r = h.await.map_err(|e| e.to_string())?;
        hist.add(&r.hist).ok();
        consumed_in_window += r.consumed_in_window;
        duplicates += r.duplicates;
        unknown += r.unknown;
        if error.is_none() {
            error = r.error;
        }
    }
    if let Some(sink) = sink {
        let guard = sink.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tally, sink_hist) = &*guard;
        hist.add(sink_hist).ok();
        consumed_in_window += tally.consumed_in_window;
        duplicates += tally.duplicates;
        unknown += tally.unknown;
    }
    let lost: u64 = shared.seen.iter().zip(&acknowledged).map(|(s, &n)| s.count_missing(n.min(cap))).sum();
    let secs = shared.window.secs();
    let sent_rate = if p.receipts {
        confirmed_in_window.load(Ordering::Relaxed) as f64 / secs
    } else {
        sent_in_window as f64 / secs
    };
    let consumed_rate = consumed_in_window as f64 / secs;
    let human = format!(
        "queue {} p={} c={} size={size} {} ack={ack_mode}: sent {:.0}/s consumed {:.0}/s lost {lost} dup {duplicates} {} | bench {:.0} ns/msg{}",
        crate::fanout::net_name(c),
        p.producers,
        p.consumers,
        if p.persistent { "persistent" } else { "transient" },
        sent_rate,
        consumed_rate,
        stats::latency_human(&hist),
        cpu.used_ns as f64 / (sent_in_window + consumed_in_window).max(1) as f64,
        error.as_ref().map(|e| format!(" ERROR: {e}")).unwrap_or_default(),
    );
    c.emit(
        human,
        json!({
            "scenario": "queue",
            "producers": p.producers,
            "consumers": p.consumers,
            "webhook_sink": p.webhook_sink,
            "persistent": p.persistent,
            "receipts": p.receipts,
            "window": p.window,
            "ack": ack_mode,
            "prefetch": p.prefetch,
            "size": size,
            "rate_target": p.rate,
            "duration_s": secs,
            "warmup_s": c.warmup,
            "sent_total": sent_total,
            "acknowledged_total": expected,
            "sent_per_s": sent_rate.round(),
            "consumed_per_s": consumed_rate.round(),
            "consumed_unique_total": shared.unique.load(Ordering::Relaxed),
            "lost": lost,
            "duplicates": duplicates,
            "unknown_messages": unknown,
            "latency": stats::latency_json(&hist),
            "bench": cpu.json(sent_in_window + consumed_in_window, secs),
            "error": error,
        }),
    );
    Ok(())
}
