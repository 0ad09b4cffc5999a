//! A FUSE file system that forgets, on command, every write not covered by an `fsync` or
//! `fdatasync`: what a power cut does to a disk with a volatile write cache, and what a
//! `kill -9` test cannot show (the page cache survives a killed process). In the spirit of
//! Jepsen's LazyFS, small enough to read in one sitting.
//!
//! It passes everything through to a backing directory, and keeps per file an *undo log* of the
//! writes and truncations since that file's last `fsync`/`fdatasync`. [`LossyFs::lose_unsynced`]
//! replays each log backwards onto the backing files, leaving exactly what was synced.
//! `sync_file_range` is not a FUSE operation, so it syncs nothing here, as on a real disk whose
//! cache it does not flush. Files are opened with `direct_io`, so no page cache of the mount can
//! hide the loss afterwards.
//!
//! Limits, on purpose: metadata (create, rename, unlink, mkdir) is durable at once, as on a
//! journalled file system after its next commit; only file contents are lost. Mounting needs
//! root and `/dev/fuse` ([`LossyFs::mount`] returns why not).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Attributes and entries are never cached by the kernel: the backing files change under it
/// when unsynced writes are dropped.
const TTL: Duration = Duration::ZERO;

/// A mounted lossy file system; unmounted when dropped.
pub struct LossyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    _session: fuser::BackgroundSession,
}

/// What [`LossyFs::lose_unsynced`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// Writes and truncations undone.
    pub writes: usize,
    /// Files they belonged to.
    pub files: usize,
}

impl LossyFs {
    /// Mounts a lossy view of `backing` on `mountpoint`, or says why it cannot.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LossyFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("no /dev/fuse".into());
        }
        let state = Arc::new(Mutex::new(State::new(backing)));
        let fs = Fs { state: Arc::clone(&state) };
        let mut config = fuser::Config::default();
        config.mount_options.push(fuser::MountOption::FSName("stampede-lossyfs".into()));
        let session = fuser::spawn_mount(fs, mountpoint, &config)
            .map_err(|e| format!("cannot mount a FUSE file system on {}: {e}", mountpoint.display()))?;
        Ok(LossyFs { state, mountpoint: mountpoint.to_path_buf(), _session: session })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// "Power loss": forgets every write not synced since. Call it while nothing writes (after
    /// killing the process that did).
    pub fn lose_unsynced(&self) -> io::Result<Loss> {
        let mut state = lock(&self.state);
        let undo = std::mem::take(&mut state.undo);
        let mut loss = Loss::default();
        for (ino, log) in undo {
            let Some(path) = state.paths.get(&ino).cloned() else { continue };
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // unlinked meanwhile
                Err(e) => return Err(e),
            };
            loss.files += 1;
            for step in log.iter().rev() {
                file.set_len(step.old_len)?;
                file.write_all_at(&step.old, step.offset)?;
                loss.writes += 1;
            }
        }
        Ok(loss)
    }

    /// `fsync`/`fdatasync` calls received so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One write or truncation, as what it replaced.
struct Undo {
    offset: u64,
    /// The bytes at `offset` before (only those that existed).
    old: Vec<u8>,
    /// The file's length before.
    old_len: u64,
}

struct State {
    /// Backing path by inode (the backing file's own inode number; the root is 1).
    paths: HashMap<u64, PathBuf>,
    open: HashMap<u64, (u64, File)>,
    next_handle: u64,
    /// Unsynced changes by inode.
    undo: HashMap<u64, Vec<Undo>>,
    syncs: u64,
}

impl State {
    fn new(backing: &Path) -> State {
        let mut paths = HashMap::new();
        paths.insert(1, backing.to_path_buf());
        State { paths, open: HashMap::new(), next_handle: 1, undo: HashMap::new(), syncs: 0 }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&u64::from(ino)).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    /// Attributes of `path`, registering its inode.
    fn attr_of(&mut self, path: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(path).map_err(Errno::from)?;
        let ino = if Some(path) == self.paths.get(&1).map(PathBuf::as_path) { 1 } else { meta.ino() };
        self.paths.insert(ino, path.to_path_buf());
        Ok(attr(ino, &meta))
    }

    fn file(&self, fh: FileHandle) -> Result<&(u64, File), Errno> {
        self.open.get(&u64::from(fh)).ok_or(Errno::EBADF)
    }

    fn remember(&mut self, ino: u64, file: File) -> FileHandle {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.open.insert(handle, (ino, file));
        FileHandle(handle)
    }

    /// Records what `[offset, offset + len)` and the length are now, before they change.
    fn record(&mut self, ino: u64, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let old_len = file.metadata()?.len();
        let end = offset.saturating_add(len).min(old_len);
        let mut old = vec![0; end.saturating_sub(offset) as usize];
        file.read_exact_at(&mut old, offset.min(old_len))?;
        self.undo.entry(ino).or_default().push(Undo { offset: offset.min(old_len), old, old_len });
        Ok(())
    }
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos).unwrap_or(0)),
        Err(_) => UNIX_EPOCH,
    }
}

fn attr(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    let kind = if meta.is_dir() {
        FileType::Directory
    } else if meta.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.ctime(), meta.ctime_nsec()),
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut options = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        // Read as well: recording a write reads the bytes it replaces.
        libc::O_WRONLY => options.read(true).write(true),
        libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    options.append(flags & libc::O_APPEND != 0);
    options
}

struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        match state.child(parent, name).and_then(|path| state.attr_of(&path)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut state = self.state();
        match state.path(ino).and_then(|path| state.attr_of(&path)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            let path = state.path(ino)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(Errno::from)?;
            }
            if let Some(size) = size {
                let file = OpenOptions::new().read(true).write(true).open(&path).map_err(Errno::from)?;
                let len = file.metadata().map_err(Errno::from)?.len();
                state.record(u64::from(ino), &file, size.min(len), len.saturating_sub(size)).map_err(Errno::from)?;
                file.set_len(size).map_err(Errno::from)?;
            }
            state.attr_of(&path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            std::fs::create_dir(&path).map_err(Errno::from)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(Errno::from)?;
            state.attr_of(&path)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let state = self.state();
        match state.child(parent, name).and_then(|path| std::fs::remove_file(path).map_err(Errno::from)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let state = self.state();
        match state.child(parent, name).and_then(|path| std::fs::remove_dir(path).map_err(Errno::from)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            let from = state.child(parent, name)?;
            let to = state.child(newparent, newname)?;
            std::fs::rename(&from, &to).map_err(Errno::from)?;
            state.attr_of(&to).map(|_| ())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        let result = state.path(ino).and_then(|path| open_options(flags.0).open(path).map_err(Errno::from));
        match result {
            Ok(file) => {
                let handle = state.remember(u64::from(ino), file);
                reply.opened(handle, FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        let result = state.file(fh).and_then(|(_, file)| {
            let mut buf = vec![0; size as usize];
            let mut filled = 0;
            while filled < buf.len() {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Errno::from(e)),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result = (|| {
            let (ino, file) = state.file(fh)?;
            let (ino, file) = (*ino, file.try_clone().map_err(Errno::from)?);
            state.record(ino, &file, offset, data.len() as u64).map_err(Errno::from)?;
            file.write_all_at(data, offset).map_err(Errno::from)
        })();
        match result {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().open.remove(&u64::from(fh));
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        state.syncs += 1;
        state.undo.remove(&u64::from(ino));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut state = self.state();
        let result = (|| {
            let path = state.path(ino)?;
            let mut entries =
                vec![(u64::from(ino), FileType::Directory, ".".into()), (1, FileType::Directory, "..".into())];
            for entry in std::fs::read_dir(&path).map_err(Errno::from)? {
                let entry = entry.map_err(Errno::from)?;
                let attr = state.attr_of(&entry.path())?;
                entries.push((u64::from(attr.ino), attr.kind, entry.file_name()));
            }
            Ok::<_, Errno>(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.state().syncs += 1;
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.state().paths.get(&1).cloned().unwrap_or_default();
        match backing_statvfs(&root) {
            Ok(s) => reply.statfs(s.0, s.1, s.2, s.3, s.4, s.5, 255, s.5),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = (|| {
            let path = state.child(parent, name)?;
            let mut options = open_options(flags);
            options.create(true).write(true).mode(mode);
            if flags & libc::O_EXCL != 0 {
                options.create_new(true);
            }
            let file = options.open(&path).map_err(Errno::from)?;
            let attr = state.attr_of(&path)?;
            let handle = state.remember(u64::from(attr.ino), file);
            Ok::<_, Errno>((attr, handle))
        })();
        match result {
            Ok((attr, handle)) => reply.created(&TTL, &attr, Generation(0), handle, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }
}

/// blocks, free, available, files, free files and block size of the file system holding `path`.
fn backing_statvfs(path: &Path) -> io::Result<(u64, u64, u64, u64, u64, u32)> {
    const BLOCK: u64 = 4096;
    let stats = fs2::statvfs(path)?;
    Ok((
        stats.total_space() / BLOCK,
        stats.free_space() / BLOCK,
        stats.available_space() / BLOCK,
        1 << 20,
        1 << 20,
        BLOCK as u32,
    ))
}

/// Test of the layer itself: what was synced stays, what was not goes.
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn unsynced_writes_are_forgotten_and_synced_ones_kept() {
        let backing = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        let fs = match LossyFs::mount(backing.path(), mount.path()) {
            Ok(fs) => fs,
            Err(why) => {
                println!("SKIPPED: {why}");
                return;
            }
        };
        let path = fs.path().join("f");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"synced").unwrap();
        file.sync_data().unwrap();
        file.write_all(b" and not").unwrap();
        drop(file);
        let mut other = File::create(fs.path().join("g")).unwrap();
        other.write_all(b"never synced").unwrap();
        drop(other);
        assert_eq!(std::fs::read(&path).unwrap(), b"synced and not");
        let loss = fs.lose_unsynced().unwrap();
        assert_eq!(loss, Loss { writes: 2, files: 2 });
        assert_eq!(std::fs::read(&path).unwrap(), b"synced");
        assert_eq!(std::fs::read(fs.path().join("g")).unwrap(), b"");
        assert!(fs.syncs() >= 1);
    }
}
