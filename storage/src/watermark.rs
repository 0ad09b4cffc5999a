//! The free-space watermark and the start-up reserve.
//!
//! A message store that runs its file system full fails in the worst way: sled needs new space
//! to replay its log and to record ACKs, so once the disk is full the broker can neither take
//! messages nor hand back the ones it holds, and after a restart it cannot even open. So, as
//! RabbitMQ does, Stampede stops taking *persistent* messages well before the disk is full:
//! [`DiskWatermark`] compares the space free on the data directory's file system with a limit
//! ([`FreeSpaceLimit`]) and raises an alarm below it. The broker reads the alarm with one
//! atomic load per persistent publish ([`DiskWatermark::is_raised`]); the space itself is
//! measured (`statvfs`) only after each group commit and on the broker's timer. The alarm ends
//! when free space is back above the limit plus a margin ([`margin`]), so it does not flap
//! around the limit.
//!
//! The limit leaves room for consumption and ACKs, but the disk can still fill from outside
//! (another process, logs). For that case the data directory holds a **reserve file**
//! (`stampede.reserve`, [`reserve_size`] bytes, preallocated): [`release_reserve`] deletes it
//! before sled opens, so a broker restarted on a full disk has room to replay its log, recover,
//! serve consumers and record their ACKs. [`DiskWatermark::check_and_restore_reserve`] writes
//! it again once there is ample space (never while the alarm is on, when that room is what
//! keeps ACKs working).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use fs2::FileExt;
use tracing::{info, warn};

/// The reserve file's name in the data directory.
pub const RESERVE_FILE: &str = "stampede.reserve";

/// The default limit, when no fraction of the file system is larger: 256 MiB.
pub const DEFAULT_FREE_BYTES: u64 = 256 * 1024 * 1024;
/// The default limit as a fraction of the file system: 2% (in hundredths of a percent).
pub const DEFAULT_FREE_HUNDREDTHS_OF_PERCENT: u32 = 200;

/// How much free space the data directory's file system must keep for persistent messages to
/// be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FreeSpaceLimit {
    /// The larger of [`DEFAULT_FREE_BYTES`] and [`DEFAULT_FREE_HUNDREDTHS_OF_PERCENT`] of the
    /// file system.
    #[default]
    Auto,
    /// A number of bytes; 0 turns the alarm off.
    Bytes(u64),
    /// A share of the file system's size, in hundredths of a percent (500 = 5%).
    Percent(u32),
}

impl FreeSpaceLimit {
    /// The limit in bytes on a file system of `total` bytes.
    pub fn resolve(self, total: u64) -> u64 {
        let share =
            |hundredths: u32| u64::try_from(u128::from(total) * u128::from(hundredths) / 10_000).unwrap_or(u64::MAX);
        match self {
            FreeSpaceLimit::Auto => DEFAULT_FREE_BYTES.max(share(DEFAULT_FREE_HUNDREDTHS_OF_PERCENT)),
            FreeSpaceLimit::Bytes(bytes) => bytes,
            FreeSpaceLimit::Percent(hundredths) => share(hundredths),
        }
    }

    /// Parses the percentage form, `5%` or `2.5%` (at most two decimals, at most 100%).
    /// Returns `None` when `text` does not end in `%`.
    ///
    /// # Errors
    /// A sentence when it ends in `%` but is not a percentage.
    pub fn parse_percent(text: &str) -> Option<Result<FreeSpaceLimit, String>> {
        let number = text.trim().strip_suffix('%')?.trim();
        let invalid = || format!("{text:?} is not a percentage between 0% and 100% (e.g. 5% or 2.5%)");
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if fraction.len() > 2 || !fraction.chars().all(|c| c.is_ascii_digit()) {
            return Some(Err(invalid()));
        }
        let Ok(whole) = whole.parse::<u32>() else { return Some(Err(invalid())) };
        let fraction: u32 = format!("{fraction:0<2}").parse().unwrap_or(0);
        match whole.checked_mul(100).and_then(|w| w.checked_add(fraction)) {
            Some(hundredths) if hundredths <= 10_000 => Some(Ok(FreeSpaceLimit::Percent(hundredths))),
            _ => Some(Err(invalid())),
        }
    }
}

impl fmt::Display for FreeSpaceLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeSpaceLimit::Auto => f.write_str("auto"),
            FreeSpaceLimit::Bytes(bytes) => write!(f, "{bytes}"),
            FreeSpaceLimit::Percent(hundredths) if hundredths % 100 == 0 => write!(f, "{}%", hundredths / 100),
            FreeSpaceLimit::Percent(hundredths) => write!(f, "{}.{:02}%", hundredths / 100, hundredths % 100),
        }
    }
}

/// How far above the limit free space must climb before the alarm ends: a tenth of the limit,
/// at least 1 MiB (never more than the limit itself, so a tiny limit keeps a tiny margin).
pub fn margin(limit: u64) -> u64 {
    (limit / 10).max(1024 * 1024).min(limit)
}

/// The reserve file's size on a file system of `total` bytes: 1% of it, between 1 MiB and
/// 16 MiB. Enough for sled to replay its log and for many thousands of ACKs.
pub fn reserve_size(total: u64) -> u64 {
    (total / 100).clamp(1024 * 1024, 16 * 1024 * 1024)
}

/// Deletes the reserve file in `dir`, if there is one, so that the store can open on a full
/// disk. Returns how many bytes it freed.
pub fn release_reserve(dir: &Path) -> io::Result<u64> {
    let path = dir.join(RESERVE_FILE);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            std::fs::remove_file(&path)?;
            Ok(meta.len())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// What the watermark found at its last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStatus {
    /// True while persistent publishes are refused.
    pub alarm: bool,
    /// Bytes free for the broker on the data directory's file system.
    pub free: u64,
    /// The file system's size.
    pub total: u64,
    /// The limit in bytes.
    pub limit: u64,
    /// Free space needed to end the alarm (limit plus margin).
    pub resume_at: u64,
}

/// The disk alarm of one data directory. Shared (`Arc`) by the store's writer, which checks
/// after each group commit, the broker's timer, the queues that read [`is_raised`]
/// (Self::is_raised) and the metrics and readiness endpoints.
#[derive(Debug)]
pub struct DiskWatermark {
    dir: PathBuf,
    limit: FreeSpaceLimit,
    raised: AtomicBool,
    free: AtomicU64,
    total: AtomicU64,
    limit_bytes: AtomicU64,
    checks: AtomicU64,
    refusals: AtomicU64,
}

impl DiskWatermark {
    /// A watermark on the file system holding `dir`, measured once now (and, when below the
    /// limit, raised now, so the broker starts under the alarm).
    ///
    /// # Errors
    /// When `statvfs` on `dir` fails.
    pub fn new(dir: &Path, limit: FreeSpaceLimit) -> io::Result<DiskWatermark> {
        let watermark = DiskWatermark {
            dir: dir.to_path_buf(),
            limit,
            raised: AtomicBool::new(false),
            free: AtomicU64::new(0),
            total: AtomicU64::new(0),
            limit_bytes: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        };
        watermark.check()?;
        Ok(watermark)
    }

    /// True while persistent publishes must be refused. One relaxed atomic load: this is what
    /// the publish path reads.
    #[inline]
    pub fn is_raised(&self) -> bool {
        self.raised.load(Relaxed)
    }

    /// The configured limit.
    pub fn limit(&self) -> FreeSpaceLimit {
        self.limit
    }

    /// The data directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times free space was measured.
    pub fn checks(&self) -> u64 {
        self.checks.load(Relaxed)
    }

    /// Counts a write refused because of the alarm (for the broker's metrics).
    pub fn note_refusal(&self) {
        self.refusals.fetch_add(1, Relaxed);
    }

    /// How many writes were refused because of the alarm.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Relaxed)
    }

    /// The figures of the last check.
    pub fn status(&self) -> DiskStatus {
        let limit = self.limit_bytes.load(Relaxed);
        DiskStatus {
            alarm: self.is_raised(),
            free: self.free.load(Relaxed),
            total: self.total.load(Relaxed),
            limit,
            resume_at: limit.saturating_add(margin(limit)),
        }
    }

    /// Measures free space and raises or ends the alarm; logs once when it starts and once when
    /// it ends.
    ///
    /// # Errors
    /// When `statvfs` fails (the figures and the alarm then stay as they were).
    pub fn check(&self) -> io::Result<DiskStatus> {
        let stats = fs2::statvfs(&self.dir)?;
        self.checks.fetch_add(1, Relaxed);
        let (free, total) = (stats.available_space(), stats.total_space());
        let limit = self.limit.resolve(total);
        self.free.store(free, Relaxed);
        self.total.store(total, Relaxed);
        self.limit_bytes.store(limit, Relaxed);
        let resume_at = limit.saturating_add(margin(limit));
        if free < limit {
            if self.raised.compare_exchange(false, true, Relaxed, Relaxed).is_ok() {
                warn!(dir = %self.dir.display(), free, limit, resume_at,
                    "disk alarm: free space on the data directory's file system is below disk_free_limit; \
                     persistent messages are refused until it is back above the limit plus a margin \
                     (transient messages, consumption and ACKs keep working)");
            }
        } else if free >= resume_at && self.raised.compare_exchange(true, false, Relaxed, Relaxed).is_ok() {
            info!(dir = %self.dir.display(), free, limit, "disk alarm ended: persistent messages are accepted again");
        }
        Ok(self.status())
    }

    /// [`check`](Self::check), then writes the reserve file back if it is missing and there is
    /// room for it with the margin to spare. For the broker's timer, not the write path.
    ///
    /// # Errors
    /// When `statvfs` fails; a reserve that cannot be written is logged and retried later.
    pub fn check_and_restore_reserve(&self) -> io::Result<DiskStatus> {
        let status = self.check()?;
        let path = self.dir.join(RESERVE_FILE);
        let size = reserve_size(status.total);
        if !status.alarm && status.free >= status.resume_at.saturating_add(size) && !path.exists() {
            match write_reserve(&path, size) {
                Ok(()) => info!(file = %path.display(), bytes = size,
                    "reserve file written: it is deleted at start-up so that the store can open on a full disk"),
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    warn!(file = %path.display(), error = %e, "could not write the reserve file; will try again");
                }
            }
            return self.check();
        }
        Ok(status)
    }
}

fn write_reserve(path: &Path, size: u64) -> io::Result<()> {
    let file: File = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.allocate(size)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_resolve_to_bytes() {
        let gib = 1u64 << 30;
        assert_eq!(FreeSpaceLimit::Auto.resolve(gib), DEFAULT_FREE_BYTES);
        assert_eq!(FreeSpaceLimit::Auto.resolve(100 * gib), 2 * gib);
        assert_eq!(FreeSpaceLimit::Percent(500).resolve(100 * gib), 5 * gib);
        assert_eq!(FreeSpaceLimit::Bytes(7).resolve(gib), 7);
    }

    #[test]
    fn percentages_parse_and_print_back() {
        assert_eq!(FreeSpaceLimit::parse_percent("5%"), Some(Ok(FreeSpaceLimit::Percent(500))));
        assert_eq!(FreeSpaceLimit::parse_percent(" 2.5 %"), Some(Ok(FreeSpaceLimit::Percent(250))));
        assert_eq!(FreeSpaceLimit::Percent(250).to_string(), "2.50%");
        assert_eq!(FreeSpaceLimit::Percent(500).to_string(), "5%");
        assert!(FreeSpaceLimit::parse_percent("101%").unwrap().is_err());
        assert!(FreeSpaceLimit::parse_percent("x%").unwrap().is_err());
        assert_eq!(FreeSpaceLimit::parse_percent("1 GiB"), None);
    }

    #[test]
    fn the_alarm_follows_the_limit_and_ends_above_the_margin() {
        let dir = tempfile::tempdir().unwrap();
        let huge = DiskWatermark::new(dir.path(), FreeSpaceLimit::Percent(10_000)).unwrap();
        assert!(huge.is_raised(), "no file system has 100% free");
        let off = DiskWatermark::new(dir.path(), FreeSpaceLimit::Bytes(0)).unwrap();
        assert!(!off.is_raised());
        assert!(off.status().free > 0);
    }

    #[test]
    fn the_reserve_is_released_and_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let watermark = DiskWatermark::new(dir.path(), FreeSpaceLimit::Bytes(0)).unwrap();
        watermark.check_and_restore_reserve().unwrap();
        let size = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap().len();
        assert_eq!(size, reserve_size(watermark.status().total));
        assert_eq!(release_reserve(dir.path()).unwrap(), size);
        assert_eq!(release_reserve(dir.path()).unwrap(), 0);
    }
}
