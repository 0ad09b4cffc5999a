//! Getting receipted messages back when sled's own files are damaged.
//!
//! Every record has a checksum, so a damaged *record* is reported and skipped by recovery. But a
//! flipped bit or a torn write in sled's log hurts more than the record it hits: tried on a
//! store of 1,500 live messages with one random bit flipped in `db`, 150 times, sled 0.34
//! panicked while opening in 37% of the rounds (the broker could not start) and in another 27%
//! opened "successfully" with everything written after the damage gone (up to 376 receipted
//! messages missing, and acked ones back). So recovery does not trust sled alone:
//!
//! - **Detecting a silent loss.** Each group commit writes a commit number into sled, and once
//!   it is durable, into a small file of our own, [`STAMP_FILE`]. At start-up a sled whose
//!   commit number is *below* the stamp's has lost writes it had confirmed. (The stamp is
//!   synced at most every [`STAMP_SYNC_INTERVAL`] and at every flush, so on power loss it may
//!   lag: it never claims more than sled made durable, it may only miss the newest commits.)
//! - **Finding what is intact.** Version 2 records identify themselves (see the `codec`
//!   module), and sled keeps values as contiguous bytes in its log (`db`) and in `blobs/`, so
//!   [`scan`] finds every intact record by its magic and checksum, whatever state sled's own
//!   structures are in.
//! - **Before sled opens.** sled "repairs" a damaged log while opening: it zeroes the torn
//!   segment and truncates what follows, which destroys the very records that it lost. So the
//!   raw files are scanned *before* sled opens, and what is found is kept in memory (up to
//!   [`SCAN_BUDGET_BYTES`]) until recovery knows whether it is needed. This costs one
//!   sequential read of the log per start (figures in BENCHMARKS.md).
//! - **Merging.** When sled opened but lost writes, every intact message it lacks is added
//!   back: it cannot say which of them were acked in what it lost, and a duplicate flagged
//!   `redelivered` is allowed where a lost receipted message is not. When sled cannot open at all, its
//!   files are moved aside to `damaged-<unix ms>/` (kept for inspection; that is the
//!   quarantine), a fresh store is created and everything the scan found is written into it.
//!   Either way, the store cannot know which deliveries and ACKs were lost with the damage, so
//!   every recovered message counts as delivered once (`redelivered:true`): at-least-once, as
//!   storage always is, never a receipted message silently gone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{self, DEFINITION_MAGIC, Found, HEADER_LEN, MESSAGE_MAGIC};
use crate::{QueueRecord, StoredMessage};

/// The file holding the number of the last group commit known durable.
pub(crate) const STAMP_FILE: &str = "commit-stamp";
/// The longest the stamp's own `fdatasync` is put off (it is written after every commit).
pub(crate) const STAMP_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// The key, in the `meta` tree, of sled's copy of the commit number. Queue names never start
/// with a zero byte, so it cannot clash with a definition.
pub(crate) const COMMIT_KEY: &[u8] = b"\0commit";

/// How much of a file is examined at once.
const WINDOW: usize = 8 << 20;
/// How far each window reaches into the next, so a record that starts near a window's end is
/// read whole. sled writes values bigger than a fraction of its 512 KiB log segments to
/// `blobs/` files, which are read whole, so inline records are far smaller than this.
const OVERLAP: usize = 2 << 20;

/// Most message bytes a scan keeps in memory. Beyond it the scan goes on counting but keeps no
/// more messages, and [`Salvaged::complete`] is false.
pub(crate) const SCAN_BUDGET_BYTES: usize = 512 << 20;

/// What a scan of raw files found.
#[derive(Debug, Default)]
pub(crate) struct Salvaged {
    /// Every intact message found is in `messages` (the budget was not reached).
    pub(crate) complete: bool,
    /// Message bytes kept.
    kept_bytes: usize,
    /// Intact messages by queue and seq. sled rewrites nodes, so a message may be found in
    /// several copies; they are identical but for the delivery count, and the highest is kept.
    pub(crate) messages: BTreeMap<(String, u64), StoredMessage>,
    /// Intact definitions by name (one of the copies found).
    pub(crate) definitions: BTreeMap<String, QueueRecord>,
    /// Places that began like a record but failed to decode or failed their checksum.
    pub(crate) damaged: u64,
    /// Bytes read.
    pub(crate) bytes: u64,
}

/// The files sled keeps values in, under `dir`: the log and every blob.
pub(crate) fn value_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![dir.join("db")];
    if let Ok(blobs) = std::fs::read_dir(dir.join("blobs")) {
        files.extend(blobs.filter_map(Result::ok).map(|entry| entry.path()).filter(|path| path.is_file()));
    }
    files.retain(|path| path.is_file());
    files
}

/// Scans `files` for intact version 2 records.
pub(crate) fn scan(files: &[PathBuf]) -> io::Result<Salvaged> {
    let mut found = Salvaged { complete: true, ..Salvaged::default() };
    for path in files {
        scan_file(path, &mut found)?;
    }
    Ok(found)
}

fn scan_file(path: &Path, found: &mut Salvaged) -> io::Result<()> {
    let mut file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut start = 0;
    while start < len {
        let owned_end = start.saturating_add(WINDOW).min(len);
        let window_end = owned_end.saturating_add(OVERLAP).min(len);
        let mut buf = vec![0; window_end - start];
        file.seek(SeekFrom::Start(start as u64))?;
        file.read_exact(&mut buf)?;
        found.bytes += (owned_end - start) as u64;
        let buf = Bytes::from(buf);
        for magic in [MESSAGE_MAGIC, DEFINITION_MAGIC] {
            // Only candidates in this window's own part: the overlap is the next one's.
            for at in memchr::memmem::find_iter(&buf[..owned_end - start], magic.as_slice()) {
                if at < HEADER_LEN && start == 0 {
                    continue; // no room for a header before it
                }
                take(found, &buf, at, start, &mut file)?;
            }
        }
        start = owned_end;
    }
    Ok(())
}

/// Decodes the candidate at `at` of the window that starts at `start` of `file`.
fn take(found: &mut Salvaged, buf: &Bytes, at: usize, start: usize, file: &mut File) -> io::Result<()> {
    let record = if at >= HEADER_LEN {
        codec::read_record_at(buf, at)
    } else {
        // The header straddles the window's start: read it with the record from the file.
        let from = start - (HEADER_LEN - at);
        let mut head = vec![0; HEADER_LEN - at];
        file.seek(SeekFrom::Start(from as u64))?;
        file.read_exact(&mut head)?;
        head.extend_from_slice(buf);
        codec::read_record_at(&Bytes::from(head), HEADER_LEN)
    };
    match record {
        Ok((Found::Message { queue, message }, _)) => {
            let key = (queue, message.seq);
            match found.messages.get_mut(&key) {
                Some(kept) => kept.delivery_count = kept.delivery_count.max(message.delivery_count),
                None if found.kept_bytes + message.body.len() > SCAN_BUDGET_BYTES => found.complete = false,
                None => {
                    found.kept_bytes += message.body.len() + key.0.len() + 64;
                    found.messages.insert(key, message);
                }
            }
        }
        Ok((Found::Definition(record), _)) => {
            found.definitions.insert(record.name.clone(), record);
        }
        // The magic bytes can also occur inside a message body: only a candidate with the
        // version byte in front counts as a damaged record.
        Err(_) if buf.get(at.wrapping_sub(HEADER_LEN)).is_some_and(|&v| v == 2) => found.damaged += 1,
        Err(_) => {}
    }
    Ok(())
}

/// The commit number in the stamp file, or `None` if it is absent or unreadable (a store
/// from before stamps existed, or a damaged stamp: detection is then off until the next
/// commit).
pub(crate) fn read_stamp(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join(STAMP_FILE)).ok()?;
    decode_stamp(&bytes)
}

pub(crate) fn encode_stamp(commit: u64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..8].copy_from_slice(&commit.to_le_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode_stamp(bytes: &[u8]) -> Option<u64> {
    let commit: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let crc: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    (crc32fast::hash(&commit) == u32::from_le_bytes(crc)).then(|| u64::from_le_bytes(commit))
}

/// Moves sled's files out of `dir` into a new `damaged-<unix ms>` directory inside it, and
/// returns that directory. The reserve file, the stamp and older quarantines stay.
pub(crate) fn move_aside(dir: &Path) -> io::Result<PathBuf> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let aside = dir.join(format!("damaged-{now}"));
    std::fs::create_dir(&aside)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let sled_file = matches!(name_str.as_ref(), "db" | "conf" | "blobs") || name_str.starts_with("snap.");
        if sled_file {
            std::fs::rename(entry.path(), aside.join(&name))?;
        }
    }
    crate::durable::sync_path(&aside).map_err(|failure| failure.source)?;
    crate::durable::sync_path(dir).map_err(|failure| failure.source)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_and_a_damaged_one_reads_as_absent() {
        let stamp = encode_stamp(42);
        assert_eq!(decode_stamp(&stamp), Some(42));
        let mut damaged = stamp;
        damaged[3] ^= 1;
        assert_eq!(decode_stamp(&damaged), None);
        assert_eq!(decode_stamp(&stamp[..11]), None);
    }

    #[test]
    fn records_across_a_window_boundary_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let message = |seq| StoredMessage {
            seq,
            headers: Default::default(),
            body: Bytes::from(vec![b'x'; 1000]),
            delivery_count: 0,
            expires_at_ms: None,
            enqueued_at_ms: 1,
        };
        let mut raw = Vec::new();
        let mut seq = 0;
        while raw.len() < WINDOW + OVERLAP + 10_000 {
            raw.extend_from_slice(&codec::encode_message("/queue/a", &message(seq), 0));
            raw.push(0xee);
            seq += 1;
        }
        std::fs::write(dir.path().join("db"), &raw).unwrap();
        let found = scan(&value_files(dir.path())).unwrap();
        assert_eq!(found.messages.len() as u64, seq, "damaged: {}", found.damaged);
        assert_eq!(found.damaged, 0);
    }
}
