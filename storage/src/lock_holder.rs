//! Which process holds a data directory's lock, so that the error a person sees when a second
//! broker is started on the same directory can name it ("pid 4242") instead of showing the
//! operating system's `WouldBlock`.
//!
//! sled takes an exclusive `flock` on the `db` file inside the directory; Linux lists every
//! such lock in `/proc/locks` with the holder's pid and the file's device and inode. Elsewhere
//! (or when the file is gone) the holder is unknown and the error says so without a pid.

use std::path::Path;

/// The pid of the process holding an `flock` on `file`, when it can be found.
pub(crate) fn lock_holder(file: &Path) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(file).ok()?;
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        holder_in(&locks, metadata.dev(), metadata.ino())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

/// Finds the pid in `/proc/locks` text for the file with device `dev` and inode `inode`.
/// A line reads `1: FLOCK  ADVISORY  WRITE 5205 fe:00:10027041 0 EOF` (major and minor device
/// numbers in hex, then the inode).
#[cfg(any(target_os = "linux", test))]
fn holder_in(locks: &str, dev: u64, inode: u64) -> Option<u32> {
    // Linux's encoding of a dev_t into major and minor numbers.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Blocked waiters are listed as `1: -> FLOCK ...`; only holders count.
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = fields.get(4)?.parse().ok()?;
        let mut id = fields.get(5)?.split(':');
        let line_major = u64::from_str_radix(id.next()?, 16).ok()?;
        let line_minor = u64::from_str_radix(id.next()?, 16).ok()?;
        let line_inode: u64 = id.next()?.parse().ok()?;
        (line_major == major && line_minor == minor && line_inode == inode).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_lock_is_read_from_proc_locks() {
        let locks =
            "1: POSIX  ADVISORY  WRITE 77 fe:00:99 0 EOF\n2: FLOCK  ADVISORY  WRITE 5205 fe:00:10027041 0 EOF\n";
        let dev = 0xfe << 8;
        assert_eq!(holder_in(locks, dev, 10_027_041), Some(5205));
        assert_eq!(holder_in(locks, dev, 99), None);
        assert_eq!(holder_in(locks, dev + 1, 10_027_041), None);
    }
}
