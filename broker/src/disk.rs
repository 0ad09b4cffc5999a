//! The broker's side of the disk alarm: configuration, the timer, and what publishers are told.
//!
//! The alarm itself ([`DiskWatermark`]) lives with the store, which measures free space after
//! every group commit. Here: the `disk_free_limit` and `disk_full_policy` values, the timer task
//! that measures between commits (an idle broker must notice a disk filled by someone else, and
//! notice it freed again) and writes the start-up reserve file back, the ERROR a refused
//! publisher gets, and the bounded hold of the `block` policy.
//!
//! What is refused: a persistent message that a queue would store (queues, durable topic
//! subscriptions, the SENDs of a committed transaction). Transient messages, deliveries, ACKs
//! and NACKs never look at the alarm: consumers are what frees the space.

use std::sync::Arc;
use std::time::Duration;

use stampede_storage::{DiskStatus, DiskWatermark, FreeSpaceLimit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::values::{human_size, parse_size};
use crate::error::{ErrorKind, StompError};

/// How often the timer measures free space (group commits measure too).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often a held publisher (policy `block`) looks at the alarm again.
const BLOCK_POLL: Duration = Duration::from_millis(20);

/// What a persistent publish meets under the disk alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFullPolicy {
    /// An ERROR at once.
    #[default]
    Refuse,
    /// Held up to `disk_full_block_ms` for the alarm to end (as RabbitMQ blocks publishers),
    /// then an ERROR if it has not.
    Block,
}

/// Parses `disk_free_limit`: `auto`, a size (`1 GiB`, `268435456`) or a percentage of the file
/// system (`5%`).
///
/// # Errors
/// A sentence naming the accepted forms.
pub fn parse_free_limit(text: &str) -> Result<FreeSpaceLimit, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(FreeSpaceLimit::Auto);
    }
    if let Some(percent) = FreeSpaceLimit::parse_percent(text) {
        return percent;
    }
    parse_size(text).map(|bytes| FreeSpaceLimit::Bytes(bytes as u64)).map_err(|_| {
        format!("{text:?} is not a free-space limit (write auto, a size such as 1 GiB, or a percentage such as 5%)")
    })
}

/// Serde for `disk_free_limit`: a number of bytes, or a string `parse_free_limit` accepts.
pub mod free_limit_serde {
    use serde::Serializer;
    use serde::de::{self, Deserializer, Visitor};
    use stampede_storage::FreeSpaceLimit;

    /// `auto` and percentages as strings, bytes as a number (so `print-config` reads back).
    pub fn serialize<S: Serializer>(limit: &FreeSpaceLimit, serializer: S) -> Result<S::Ok, S::Error> {
        match limit {
            FreeSpaceLimit::Bytes(bytes) => serializer.serialize_u64(*bytes),
            other => serializer.serialize_str(&other.to_string()),
        }
    }

    /// Reads a number of bytes or a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<FreeSpaceLimit, D::Error> {
        struct LimitVisitor;

        impl Visitor<'_> for LimitVisitor {
            type Value = FreeSpaceLimit;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("auto, a size such as \"1 GiB\", or a percentage such as \"5%\"")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<FreeSpaceLimit, E> {
                Ok(FreeSpaceLimit::Bytes(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<FreeSpaceLimit, E> {
                u64::try_from(value)
                    .map(FreeSpaceLimit::Bytes)
                    .map_err(|_| E::custom(format!("a size cannot be {value}")))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<FreeSpaceLimit, E> {
                super::parse_free_limit(value).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(LimitVisitor)
    }
}

fn size(bytes: u64) -> String {
    human_size(usize::try_from(bytes).unwrap_or(usize::MAX))
}

/// Free space, with two decimals, so that a figure just below the limit does not read as the
/// limit itself (`3.98 MiB`, not `4.0 MiB`).
fn free(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    UNITS
        .iter()
        .find(|(_, unit)| bytes >= *unit)
        .map_or_else(|| size(bytes), |(name, unit)| format!("{:.2} {name}", bytes as f64 / *unit as f64))
}

/// The ERROR for a persistent message refused under the alarm: names the limit, the free space
/// and what ends it.
pub fn refusal(destination: &str, status: DiskStatus) -> StompError {
    StompError::of_kind(
        ErrorKind::Limit,
        format!(
            "persistent message refused: {} free on the data directory's disk, below disk_free_limit {}",
            free(status.free),
            size(status.limit)
        ),
        format!(
            "The message to {destination} was not stored and not accepted. The file system of the data directory has \
             {} free of {}, below disk_free_limit ({}); persistent messages are refused until {} is free again, and \
             then accepted without a restart. Transient messages, consumption and ACKs keep working: let consumers \
             drain, free space on that file system, or lower disk_free_limit.",
            free(status.free),
            size(status.total),
            size(status.limit),
            size(status.resume_at),
        ),
    )
}

/// A one-line description of the alarm for `/readyz`.
pub fn describe(status: DiskStatus) -> String {
    if status.alarm {
        format!(
            "disk alarm: {} free, below disk_free_limit {}; persistent messages are refused until {} is free \
             (consumers and ACKs are served)",
            free(status.free),
            size(status.limit),
            size(status.resume_at)
        )
    } else {
        format!("{} free, above disk_free_limit {}", free(status.free), size(status.limit))
    }
}

/// Under policy `block`, waits up to `hold` for the alarm to end. Returns at once when it is
/// not raised; the caller publishes either way and the queue refuses if it is still raised.
pub async fn hold_while_raised(disk: &DiskWatermark, hold: Duration) {
    let deadline = tokio::time::Instant::now() + hold;
    while disk.is_raised() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(BLOCK_POLL.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
    }
}

/// Starts the timer that measures free space every [`CHECK_INTERVAL`] and writes the reserve
/// file back when there is room, until `shutdown`.
pub fn spawn_monitor(disk: Arc<DiskWatermark>, tasks: &TaskTracker, shutdown: CancellationToken) {
    let blocking = tasks.clone();
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval(CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let disk = Arc::clone(&disk);
            // statvfs is quick, but writing the reserve file is real I/O.
            let checked = blocking.spawn_blocking(move || disk.check_and_restore_reserve()).await;
            if let Ok(Err(e)) = checked {
                debug!(error = %e, "could not measure free space on the data directory");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_limits_are_read_as_auto_sizes_or_percentages() {
        assert_eq!(parse_free_limit("auto"), Ok(FreeSpaceLimit::Auto));
        assert_eq!(parse_free_limit("1GiB"), Ok(FreeSpaceLimit::Bytes(1 << 30)));
        assert_eq!(parse_free_limit("5%"), Ok(FreeSpaceLimit::Percent(500)));
        assert!(parse_free_limit("lots").unwrap_err().contains("percentage"));
        let config: crate::config::Config = toml::from_str("disk_free_limit = \"512 MiB\"").unwrap();
        assert_eq!(config.disk_free_limit, FreeSpaceLimit::Bytes(512 << 20));
        let config: crate::config::Config = toml::from_str("disk_free_limit = 1000").unwrap();
        assert_eq!(config.disk_free_limit, FreeSpaceLimit::Bytes(1000));
    }

    #[test]
    fn the_refusal_names_the_limit_and_the_free_space() {
        let status = DiskStatus { alarm: true, free: 3 << 20, total: 100 << 20, limit: 4 << 20, resume_at: 5 << 20 };
        let error = refusal("/queue/a", status);
        assert!(
            error.message.contains("3.00 MiB free") && error.message.contains("disk_free_limit 4 MiB"),
            "{}",
            error.message
        );
        assert!(error.detail.contains("until 5 MiB is free"), "{}", error.detail);
    }
}
