//! Clock, latency histograms, the process's own CPU time, a broker's RSS, the file limit.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's epoch (monotonic; publishers and subscribers share it).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub fn init_clock() {
    let _ = now_ns();
}

/// Sleeps until `now_ns() >= t`.
pub async fn sleep_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

/// Latency histogram in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1000.0 * 10.0).round() / 10.0
}

pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_us": us(h.value_at_quantile(0.5)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
        "mean_us": (h.mean() / 100.0).round() / 10.0,
    })
}

pub fn latency_human(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "latency n/a".into();
    }
    format!(
        "latency p50 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max())
    )
}

/// User + system CPU time of this process so far, in nanoseconds.
pub fn cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU time of another process (all its threads) so far, in nanoseconds, from
/// /proc/<pid>/stat.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000_000 / per_second)
}

/// VmRSS of a process in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns (soft, hard) after.
pub fn raise_nofile() -> (u64, u64) {
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        (lim.rlim_cur as u64, lim.rlim_max as u64)
    }
}

/// CPU used by this process over a window, per message handled.
pub struct CpuWindow {
    start: u64,
    pub used_ns: u64,
}

impl CpuWindow {
    pub fn start() -> CpuWindow {
        CpuWindow { start: cpu_ns(), used_ns: 0 }
    }
    pub fn stop(&mut self) {
        self.used_ns = cpu_ns().saturating_sub(self.start);
    }
    pub fn json(&self, messages: u64, window_s: f64) -> Value {
        json!({
            "cpu_s": (self.used_ns as f64 / 1e6).round() / 1e3,
            "cpu_cores": if window_s > 0.0 { ((self.used_ns as f64 / 1e9 / window_s) * 100.0).round() / 100.0 } else { 0.0 },
            "cpu_ns_per_msg": if messages > 0 { (self.used_ns as f64 / messages as f64).round() } else { 0.0 },
        })
    }
}
