//! `connections`: K connections (TCP or WebSocket), each with CONNECT (heart-beats) and one
//! SUBSCRIBE with a receipt, held open; then one publish that must reach all K.
//!
//! Figures: set-ups/s (CONNECT..RECEIPT of the SUBSCRIBE, `--concurrency` in flight), failures,
//! broker RSS per connection (`--broker-pid`: VmRSS before the first connection and after the
//! last, after 2 s of settling), the time for one publish to reach all of them, and connections
//! lost while held (`--duration`). Connections are spread over loopback source addresses
//! 127.0.0.2, .3, ... (`--per-source` each) to get past one address's ephemeral ports; the
//! process raises its own RLIMIT_NOFILE soft limit to the hard limit at start (a process cannot
//! go beyond the hard limit without CAP_SYS_RESOURCE; the count is capped to what fits).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;

use crate::Common;
use crate::net::Session;
use crate::stats::{self, now_ns};
use crate::stomp::{self, BODY_MIN, BODY_TS, SendTemplate};

pub struct Params {
    pub count: usize,
    pub heart_beat: String,
    pub concurrency: usize,
    pub per_source: usize,
    pub nofile: (u64, u64),
}

struct Reach {
    count: AtomicU64,
    last_ns: AtomicU64,
    dead: AtomicU64,
    hist: Mutex<hdrhistogram::Histogram<u64>>,
}

/// Holds one connection: reads (heart-beats, the MESSAGE), sends a heart-beat EOL every
/// `beat`, until stop.
async fn hold(mut s: Session, beat: Option<Duration>, reach: Arc<Reach>, mut stop: watch::Receiver<bool>) {
    let mut buf = std::mem::take(&mut s.buf);
    let mut tick = tokio::time::interval(beat.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    let alive = loop {
        tokio::select! {
            n = s.reader.read_into(&mut buf) => match n {
                Ok(0) | Err(_) => break false,
                Ok(_) => {}
            },
            _ = tick.tick(), if beat.is_some() => {
                if s.writer.write_static(b"\n").await.is_err() { break false; }
            }
            _ = stop.changed() => break true,
        }
        let t = now_ns();
        let mut used = 0;
        while let Ok(Some((f, n))) = stomp::scan(&buf[used..]) {
            used += n;
            if f.is(b"MESSAGE") && f.body.len() >= BODY_MIN {
                let ts = stomp::read_u64(f.body, BODY_TS);
                reach.count.fetch_add(1, Ordering::Relaxed);
                reach.last_ns.fetch_max(t, Ordering::Relaxed);
                if let Ok(mut h) = reach.hist.lock() {
                    stats::record(&mut h, t.saturating_sub(ts));
                }
            }
        }
        buf.advance(used);
        if buf.capacity() > 16 * 1024 && buf.is_empty() {
            buf = BytesMut::new();
        }
    };
    if !alive {
        reach.dead.fetch_add(1, Ordering::Relaxed);
    }
    s.writer.close().await;
}

fn parse_hb(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once(',').ok_or_else(|| format!("--heart-beat {s}: use cx,cy"))?;
    Ok((
        a.trim().parse().map_err(|_| format!("--heart-beat {s}"))?,
        b.trim().parse().map_err(|_| format!("--heart-beat {s}"))?,
    ))
}

pub async fn run(c: &Common, p: Params) -> Result<(), String> {
    let hb = parse_hb(&p.heart_beat)?;
    // Our own fds: one per connection plus a margin.
    let fits = p.nofile.0.saturating_sub(64) as usize;
    let count = if p.count > fits {
        eprintln!(
            "connections: RLIMIT_NOFILE is {}/{}: capping {} connections to {fits}",
            p.nofile.0, p.nofile.1, p.count
        );
        fits
    } else {
        p.count
    };
    let settings = c.settings(hb, 2048)?;
    let addr = settings.target.resolve().await?;
    let destination = format!("{}{}", c.topic_prefix, c.unique("connections"));
    let beat = (hb.0 > 0).then(|| Duration::from_millis(hb.0 as u64 * 8 / 10));
    let reach = Arc::new(Reach {
        count: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        dead: AtomicU64::new(0),
        hist: Mutex::new(stats::histogram()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let rss0 = c.broker_pid.and_then(stats::rss_kib);
    let per_source = p.per_source.max(1);

    let t_start = now_ns();
    let holders = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let failures: Vec<String> = futures_util::stream::iter(0..count)
        .map(|i| {
            let mut settings = settings.clone();
            let destination = destination.clone();
            let reach = reach.clone();
            let stop_rx = stop_rx.clone();
            let holders = holders.clone();
            async move {
                let host = 2 + (i / per_source) as u32;
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + host);
                settings.bind = Some(IpAddr::V4(ip));
                let r = async {
                    let mut s = Session::open(&settings, addr).await?;
                    s.subscribe("0", &destination, "auto", &[]).await?;
                    Ok::<_, String>(s)
                }
                .await;
                match r {
                    Ok(s) => {
                        let h = tokio::spawn(hold(s, beat, reach, stop_rx));
                        holders.lock().unwrap().push(h);
                        None
                    }
                    Err(e) => Some(e),
                }
            }
        })
        .buffer_unordered(p.concurrency.max(1))
        .filter_map(|x| async move { x })
        .collect()
        .await;
    let setup_s = (now_ns() - t_start) as f64 / 1e9;
    let ok = count - failures.len();
    let rate = ok as f64 / setup_s;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = c.broker_pid.and_then(stats::rss_kib);
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if ok > 0 => Some(((b as f64 - a as f64) * 1024.0 / ok as f64).round()),
        _ => None,
    };

    // One publish to all.
    let mut pub_settings = settings.clone();
    pub_settings.heart_beat = (0, 0);
    pub_settings.chunk = 64 * 1024;
    let mut publisher = Session::open(&pub_settings, addr).await.map_err(|e| format!("publisher: {e}"))?;
    let template = SendTemplate::new(&destination, 128, 0, false, false);
    let mut out = BytesMut::new();
    // Whose CPU the reach took: the broker's and this generator's, over the same interval.
    let broker_cpu0 = c.broker_pid.and_then(stats::process_cpu_ns);
    let own_cpu0 = stats::cpu_ns();
    let t_pub = now_ns();
    template.push(&mut out, t_pub, 0);
    publisher.writer.write_buf(&mut out).await.map_err(|e| format!("publish: {e}"))?;
    let deadline = now_ns() + 10_000_000_000;
    while now_ns() < deadline && reach.count.load(Ordering::Relaxed) < ok as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reached = reach.count.load(Ordering::Relaxed);
    let reach_cpu_ms = |start: Option<u64>, end: Option<u64>| match (start, end) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a) as f64 / 1e4).round() / 100.0),
        _ => None,
    };
    let broker_reach_cpu_ms = reach_cpu_ms(broker_cpu0, c.broker_pid.and_then(stats::process_cpu_ns));
    let own_reach_cpu_ms = reach_cpu_ms(Some(own_cpu0), Some(stats::cpu_ns()));
    let reach_all_ms = if reached >= ok as u64 && ok > 0 {
        Some(((reach.last_ns.load(Ordering::Relaxed) - t_pub) as f64 / 1e4).round() / 100.0)
    } else {
        None
    };
    // Hold for --duration with heart-beats flowing, then count survivors.
    tokio::time::sleep(Duration::from_secs_f64(c.duration)).await;
    let dead_during_hold = reach.dead.load(Ordering::Relaxed);
    let rss2 = c.broker_pid.and_then(stats::rss_kib);
    let _ = stop_tx.send(true);
    publisher.writer.close().await;
    let handles: Vec<_> = std::mem::take(&mut *holders.lock().unwrap());
    let close_start = now_ns();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        if now_ns() - close_start > 20_000_000_000 {
            break;
        }
    }
    let hist = reach.hist.lock().unwrap().clone();
    let first_failure = failures.first().cloned();
    let human = format!(
        "connections {} k={ok}/{count} hb={}: {:.0} set-ups/s, {} failed, broker RSS {} B/conn, one publish reached {reached} in {} ms (cpu: broker {} ms, bench {} ms), {} dropped while held {:.0}s{}",
        crate::fanout::net_name(c),
        p.heart_beat,
        rate,
        failures.len(),
        per_conn.map(|x| format!("{x:.0}")).unwrap_or("?".into()),
        reach_all_ms.map(|x| format!("{x}")).unwrap_or("(not all)".into()),
        broker_reach_cpu_ms.map(|x| format!("{x}")).unwrap_or("?".into()),
        own_reach_cpu_ms.map(|x| format!("{x}")).unwrap_or("?".into()),
        dead_during_hold,
        c.duration,
        first_failure.as_ref().map(|e| format!(" first failure: {e}")).unwrap_or_default(),
    );
    c.emit(
        human,
        json!({
            "scenario": "connections",
            "requested": p.count,
            "attempted": count,
            "connected": ok,
            "failed": failures.len(),
            "first_failure": first_failure,
            "heart_beat": p.heart_beat,
            "concurrency": p.concurrency,
            "setup_s": setup_s,
            "setups_per_s": rate.round(),
            "broker_rss_kib": [rss0, rss1, rss2],
            "broker_rss_bytes_per_conn": per_conn,
            "reached": reached,
            "reach_all_ms": reach_all_ms,
            "reach_latency": stats::latency_json(&hist),
            "reach_cpu_ms": {"broker": broker_reach_cpu_ms, "bench": own_reach_cpu_ms},
            "held_s": c.duration,
            "dropped_while_held": dead_during_hold,
            "nofile": [p.nofile.0, p.nofile.1],
        }),
    );
    Ok(())
}
