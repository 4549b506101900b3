//! A disk that can lose power: an in-memory FUSE filesystem that keeps two contents for every
//! file, what reads see and what would survive a power cut. Writes and truncations change
//! only the first; `fsync` and `fdatasync` copy it into the second; [`Disk::power_cut`] throws
//! away whatever was not synced. A cluster test runs a member's data directory on a [`Disk`],
//! kills the member, cuts the power and starts it again: everything the member acknowledged
//! must still be there, which holds only if the member synced before it acknowledged.
//!
//! Simplifications: directory operations (create, mkdir, unlink, rmdir, rename) are durable
//! the moment they return. A real filesystem can lose an entry whose directory nobody synced;
//! lost directory entries are not modelled, only file contents and lengths. Modes, owners and
//! times are not rolled back either.
//!
//! The kernel keeps nothing that could outlive a cut: files are opened for direct I/O, so no
//! page cache holds their data and every read and write reaches this filesystem, and entries
//! and attributes expire at once. Locks (`flock`, `fcntl`) are left to the kernel, which
//! keeps them locally because this filesystem does not implement them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    Session, SessionUnmounter, TimeOrNow, WriteFlags,
};
use nix::mount::MntFlags;

/// Entries and attributes expire at once, so a lookup or stat after a power cut sees the
/// lengths the cut left.
const TTL: Duration = Duration::ZERO;

/// The disk is memory: a runaway file fails with `EFBIG` instead of exhausting it.
const MAX_FILE_SIZE: u64 = 1 << 30;

/// How long an fsync takes to reach the disk: about a small SSD's flush. The data it covers
/// is durable only at the end, so a power cut can fall between a write and its sync.
const SYNC_LATENCY: Duration = Duration::from_millis(1);

/// Block size reported by `stat` and `statfs`.
const BLOCK_SIZE: u32 = 4096;

/// Blocks and inodes `statfs` reports, all free: enough that nothing refuses to write.
const STATFS_BLOCKS: u64 = 1 << 28;
const STATFS_FILES: u64 = 1 << 24;

/// A mounted in-memory disk whose files lose every write not yet fsynced when
/// [`Disk::power_cut`] is called. It stays mounted until dropped, so a test can cut the power
/// and then start the killed processes again on the same directory.
pub struct Disk {
    state: Arc<Mutex<State>>,
    unmounter: SessionUnmounter,
    /// Canonical mount point, for the lazy unmount when the disk is still busy at drop.
    mountpoint: PathBuf,
}

impl Disk {
    /// Mounts a new, empty disk at `mountpoint` (an existing empty directory). The root
    /// directory takes the mount point's mode and owner. Needs root and `/dev/fuse`.
    pub fn mount(mountpoint: &Path) -> io::Result<Disk> {
        let mountpoint = mountpoint.canonicalize()?;
        let metadata = std::fs::metadata(&mountpoint)?;
        let state = Arc::new(Mutex::new(State::new(&metadata)));
        let mut config = Config::default();
        // Names the mount in `mount` and `/proc/mounts`, so a leftover one is recognisable.
        config.mount_options = vec![MountOption::FSName("cairn-power-cut".to_owned())];
        let (flush_queue, flushes) = mpsc::channel();
        let flushed_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("power-cut-flush".to_owned())
            .spawn(move || run_flusher(flushed_state, flushes))?;
        let fs = PowerCutFs {
            state: Arc::clone(&state),
            flush_queue,
        };
        let mut session = Session::new(fs, &mountpoint, &config)?;
        let unmounter = session.unmount_callable();
        // Nobody joins the session thread: it ends when the kernel closes the connection,
        // which a process in another mount namespace (`ip netns exec`) can delay until it
        // exits, because its namespace holds a copy of the mount; `drop` must not wait for that.
        std::thread::Builder::new()
            .name("power-cut-disk".to_owned())
            .spawn(move || session.run())?;
        Ok(Disk {
            state,
            unmounter,
            mountpoint,
        })
    }

    /// The moment the power goes: from now on until [`Disk::power_cut`] no fsync completes;
    /// those on their way and any new one fail with `EIO`. A test calls this before it kills
    /// the processes on the disk: the kernel lets a killed process finish the requests it
    /// has already sent, so without it every fsync under way at the kill would complete.
    pub fn power_off(&self) {
        let mut state = lock(&self.state);
        if state.powered {
            state.powered = false;
            state.power_cuts += 1;
        }
    }

    /// Power cut: powers off (if [`Disk::power_off`] did not), puts every file's content
    /// back to what it held at its last completed fsync/fdatasync (a file never synced is
    /// empty) and powers on again. The caller first kills (and reaps) every process that
    /// uses the disk, as a real power cut would have. The disk stays mounted.
    ///
    /// Returns how many bytes the cut changed (unsynced writes undone, unsynced length
    /// changes reverted), so a test can tell that its cuts did hit unsynced data.
    pub fn power_cut(&self) -> u64 {
        self.power_off();
        let mut state = lock(&self.state);
        state.powered = true;
        let lost: usize = state
            .inodes
            .values_mut()
            .map(|inode| match &mut inode.kind {
                Kind::File(contents) => contents.power_cut(),
                Kind::Dir(_) => 0,
            })
            .sum();
        lost as u64
    }
}

impl Drop for Disk {
    /// Unmounts the disk, lazily when something still uses it.
    fn drop(&mut self) {
        if self.unmounter.unmount().is_err() {
            // Busy: a process the test did not kill, a file left open. Detaching leaves no
            // mount behind; the session serves the remaining users until they let go.
            let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().expect("power-cut disk state poisoned")
}

/// The whole disk: inodes by number. Inode numbers are never reused.
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Power cuts so far.
    power_cuts: u64,
    /// False between [`Disk::power_off`] and the end of [`Disk::power_cut`].
    powered: bool,
}

struct Inode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

enum Kind {
    Dir(Dir),
    File(Contents),
}

struct Dir {
    /// For `..`; the root is its own parent.
    parent: u64,
    entries: BTreeMap<OsString, u64>,
}

/// A regular file's two contents.
#[derive(Default)]
struct Contents {
    /// What reads see.
    current: Vec<u8>,
    /// What a power cut leaves: `current` as of the last fsync.
    durable: Vec<u8>,
    /// Disjoint, non-adjacent byte ranges (start to end) outside which `current` equals
    /// `durable`, growth included, so that an fsync copies only what changed since the last
    /// one: the database syncs a multi-MiB file hundreds of times a second.
    dirty: BTreeMap<usize, usize>,
    /// Whether a directory entry names the file. An unlinked or replaced file may still be
    /// open, so it stays, and keeps taking writes and fsyncs.
    linked: bool,
}

impl Contents {
    fn linked() -> Contents {
        Contents {
            linked: true,
            ..Contents::default()
        }
    }

    fn read(&self, offset: u64, size: u32) -> &[u8] {
        let len = self.current.len();
        let start = usize::try_from(offset).map_or(len, |offset| offset.min(len));
        let end = start.saturating_add(size as usize).min(len);
        &self.current[start..end]
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = file_size(offset.checked_add(data.len() as u64))?;
        let start = end - data.len();
        if end > self.current.len() {
            self.resize(end);
        }
        self.current[start..end].copy_from_slice(data);
        self.mark_dirty(start, end);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> Result<(), Errno> {
        self.resize(file_size(Some(len))?);
        Ok(())
    }

    fn resize(&mut self, len: usize) {
        let old = self.current.len();
        self.current.resize(len, 0);
        // A shrink needs no mark: the next fsync cuts `durable` to the new length anyway.
        if len > old {
            self.mark_dirty(old, len);
        }
    }

    fn mark_dirty(&mut self, mut start: usize, mut end: usize) {
        if start >= end {
            return;
        }
        // The ranges are disjoint, so sorted by start they are sorted by end too: walking back
        // from the last one that starts at or before `end`, the touching ones come first.
        let touching: Vec<(usize, usize)> = self
            .dirty
            .range(..=end)
            .rev()
            .take_while(|&(_, &range_end)| range_end >= start)
            .map(|(&range_start, &range_end)| (range_start, range_end))
            .collect();
        for (range_start, range_end) in touching {
            self.dirty.remove(&range_start);
            start = start.min(range_start);
            end = end.max(range_end);
        }
        self.dirty.insert(start, end);
    }

    /// What an fsync called now must make durable: the length and the bytes changed since
    /// the last one. Writes from here on are left to the next fsync.
    fn unsynced(&mut self) -> Unsynced {
        let len = self.current.len();
        let pieces = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|(start, end)| {
                let end = end.min(len);
                (start < end).then(|| (start, self.current[start..end].to_vec()))
            })
            .collect();
        Unsynced { len, pieces }
    }

    /// The fsync that took `unsynced` has reached the disk.
    fn make_durable(&mut self, unsynced: Unsynced) {
        self.durable.resize(unsynced.len, 0);
        for (start, bytes) in unsynced.pieces {
            let end = (start + bytes.len()).min(unsynced.len);
            if start < end {
                self.durable[start..end].copy_from_slice(&bytes[..end - start]);
            }
        }
    }

    /// Puts `current` back to `durable`; returns how many bytes that changed, those cut off
    /// or restored by an unsynced length change included. The whole file is compared and
    /// copied: an fsync still on its way has taken its ranges out of `dirty`, and cuts are
    /// rare.
    fn power_cut(&mut self) -> usize {
        let differing = self
            .current
            .iter()
            .zip(&self.durable)
            .filter(|(now, synced)| now != synced)
            .count();
        let lost = differing + self.current.len().abs_diff(self.durable.len());
        self.current.clone_from(&self.durable);
        self.dirty.clear();
        lost
    }
}

/// The bytes one fsync makes durable, taken when it was called.
struct Unsynced {
    len: usize,
    pieces: Vec<(usize, Vec<u8>)>,
}

/// An fsync on its way to the disk.
struct PendingSync {
    ino: u64,
    /// [`State::power_cuts`] when it was called: a cut since then means it never finished.
    power_cuts: u64,
    unsynced: Unsynced,
    reply: ReplyEmpty,
}

/// The disk's flush queue: each fsync takes [`SYNC_LATENCY`] and they finish in the order
/// they were called. Meanwhile reads and writes go on, and a power cut in between loses
/// what the fsync had not yet made durable, as a real disk's would: a program that answers
/// before its fsync returns is caught. Ends when the filesystem is dropped.
fn run_flusher(state: Arc<Mutex<State>>, queue: mpsc::Receiver<PendingSync>) {
    for pending in queue {
        std::thread::sleep(SYNC_LATENCY);
        let mut state = lock(&state);
        // `power_off` counts the cut, so this also catches a cut still under way.
        if state.power_cuts != pending.power_cuts {
            // The caller died in the cut; the answer goes nowhere.
            pending.reply.error(Errno::EIO);
            continue;
        }
        let synced = state
            .contents_mut(pending.ino)
            .map(|contents| contents.make_durable(pending.unsynced));
        reply_empty(pending.reply, synced);
    }
}

/// A file length as an index, or `EFBIG` past [`MAX_FILE_SIZE`] (`None`: it overflowed).
fn file_size(size: Option<u64>) -> Result<usize, Errno> {
    size.filter(|&size| size <= MAX_FILE_SIZE)
        .and_then(|size| usize::try_from(size).ok())
        .ok_or(Errno::EFBIG)
}

fn time(time: TimeOrNow, now: SystemTime) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => now,
    }
}

impl State {
    fn new(root: &std::fs::Metadata) -> State {
        let root_ino = INodeNo::ROOT.0;
        let now = SystemTime::now();
        let root = Inode {
            kind: Kind::Dir(Dir {
                parent: root_ino,
                entries: BTreeMap::new(),
            }),
            perm: (root.mode() & 0o7777) as u16,
            uid: root.uid(),
            gid: root.gid(),
            atime: now,
            mtime: now,
            ctime: now,
        };
        State {
            inodes: HashMap::from([(root_ino, root)]),
            next_ino: root_ino + 1,
            power_cuts: 0,
            powered: true,
        }
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        match &self.inode(ino)?.kind {
            Kind::Dir(dir) => Ok(dir),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match &mut self.inode_mut(ino)?.kind {
            Kind::Dir(dir) => Ok(dir),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn contents(&self, ino: u64) -> Result<&Contents, Errno> {
        match &self.inode(ino)?.kind {
            Kind::File(contents) => Ok(contents),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn contents_mut(&mut self, ino: u64) -> Result<&mut Contents, Errno> {
        match &mut self.inode_mut(ino)?.kind {
            Kind::File(contents) => Ok(contents),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(
            self.inodes.get(&ino),
            Some(Inode {
                kind: Kind::Dir(_),
                ..
            })
        )
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inode(ino)?;
        let (kind, size, nlink) = match &inode.kind {
            Kind::Dir(dir) => {
                let subdirs = dir.entries.values().filter(|&&c| self.is_dir(c)).count();
                let nlink = u32::try_from(subdirs + 2).unwrap_or(u32::MAX);
                (FileType::Directory, u64::from(BLOCK_SIZE), nlink)
            }
            Kind::File(contents) => (
                FileType::RegularFile,
                contents.current.len() as u64,
                u32::from(contents.linked),
            ),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.ctime,
            kind,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        })
    }

    /// Sets an inode's modification and change times to now.
    fn touch(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            let now = SystemTime::now();
            inode.mtime = now;
            inode.ctime = now;
        }
    }

    /// Links a new inode into `parent` as `name`.
    fn add(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        mode: u32,
    ) -> Result<u64, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        self.inodes.insert(
            ino,
            Inode {
                kind,
                perm: (mode & 0o7777) as u16,
                uid: req.uid(),
                gid: req.gid(),
                atime: now,
                mtime: now,
                ctime: now,
            },
        );
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    /// Drops what a removed directory entry named: a directory goes, a file stays because it
    /// may still be open.
    fn unlinked(&mut self, ino: u64) {
        match self.inodes.get_mut(&ino).map(|inode| &mut inode.kind) {
            Some(Kind::File(contents)) => contents.linked = false,
            Some(Kind::Dir(_)) => {
                self.inodes.remove(&ino);
            }
            None => {}
        }
    }

    fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        self.contents(ino)?;
        self.dir_mut(parent)?.entries.remove(name);
        self.unlinked(ino);
        self.touch(parent);
        Ok(())
    }

    fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.unlinked(ino);
        self.touch(parent);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        // Exchange and whiteout are not needed by anything that runs on this disk.
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(Errno::EINVAL);
        }
        let ino = self.child(parent, name)?;
        let moving_dir = self.is_dir(ino);
        if let Some(&target) = self.dir(new_parent)?.entries.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.inode(target)?.kind, moving_dir) {
                (Kind::File(_), true) => return Err(Errno::ENOTDIR),
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (Kind::Dir(dir), true) if !dir.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.unlinked(target);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        if let Kind::Dir(dir) = &mut self.inode_mut(ino)?.kind {
            dir.parent = new_parent;
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        if let Some(size) = size {
            self.contents_mut(ino)?.set_len(size)?;
        }
        let inode = self.inode_mut(ino)?;
        let now = SystemTime::now();
        if let Some(mode) = mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            inode.uid = uid;
        }
        if let Some(gid) = gid {
            inode.gid = gid;
        }
        if let Some(atime) = atime {
            inode.atime = time(atime, now);
        }
        match mtime {
            Some(mtime) => inode.mtime = time(mtime, now),
            None if size.is_some() => inode.mtime = now,
            None => {}
        }
        inode.ctime = now;
        self.attr(ino)
    }

    /// The inode `create` opens: a new file, or (when another process created it between the
    /// kernel's lookup and this call, and the caller did not ask for `O_EXCL`) the existing one.
    fn create(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<u64, Errno> {
        let Some(&ino) = self.dir(parent)?.entries.get(name) else {
            return self.add(req, parent, name, Kind::File(Contents::linked()), mode);
        };
        if flags & nix::libc::O_EXCL != 0 {
            return Err(Errno::EEXIST);
        }
        let contents = self.contents_mut(ino)?;
        // The kernel believes it created the file, so it does not truncate it itself.
        if flags & nix::libc::O_TRUNC != 0 {
            contents.set_len(0)?;
            self.touch(ino);
        }
        Ok(ino)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.contents_mut(ino)?.write(offset, data)?;
        self.touch(ino);
        Ok(())
    }

    /// `.`, `..` and the entries of directory `ino`, in a stable order so that readdir
    /// offsets are indexes into it.
    fn listing(&self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>, Errno> {
        let dir = self.dir(ino)?;
        let mut listing = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (dir.parent, FileType::Directory, OsString::from("..")),
        ];
        listing.extend(dir.entries.iter().map(|(name, &child)| {
            let kind = if self.is_dir(child) {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            (child, kind, name.clone())
        }));
        Ok(listing)
    }
}

/// The FUSE side of a [`Disk`]: runs on fuser's session thread.
struct PowerCutFs {
    state: Arc<Mutex<State>>,
    flush_queue: mpsc::Sender<PendingSync>,
}

impl PowerCutFs {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn reply_entry(reply: ReplyEntry, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(errno) => reply.error(errno),
    }
}

fn reply_attr(reply: ReplyAttr, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(errno) => reply.error(errno),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(errno) => reply.error(errno),
    }
}

impl Filesystem for PowerCutFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> io::Result<()> {
        // fuser's defaults request no write-back cache: with one, the kernel would hold
        // written data and hand it over later, where a power cut could not reach it.
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        reply_entry(
            reply,
            state.child(parent.0, name).and_then(|ino| state.attr(ino)),
        );
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inodes are never reused and unlinked ones are kept anyway.
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.state().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attr = self
            .state()
            .setattr(ino.0, mode, uid, gid, size, atime, mtime);
        reply_attr(reply, attr);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let dir = Kind::Dir(Dir {
            parent: parent.0,
            entries: BTreeMap::new(),
        });
        let attr = state
            .add(req, parent.0, name, dir, mode & !umask)
            .and_then(|ino| state.attr(ino));
        reply_entry(reply, attr);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().rmdir(parent.0, name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self
            .state()
            .rename(parent.0, name, newparent.0, newname, flags);
        reply_empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().contents(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(errno) => reply.error(errno),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let attr = state
            .create(req, parent.0, name, mode & !umask, flags)
            .and_then(|ino| state.attr(ino));
        match attr {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().contents(ino.0) {
            Ok(contents) => reply.data(contents.read(offset, size)),
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino.0, offset, data) {
            // A write request never exceeds max_write (16 MiB), so its length fits.
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closing a file makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Only contents and lengths are rolled back, so fdatasync and fsync are the same.
        let mut state = self.state();
        if !state.powered {
            return reply.error(Errno::EIO);
        }
        let power_cuts = state.power_cuts;
        match state.contents_mut(ino.0).map(Contents::unsynced) {
            Ok(unsynced) => {
                let pending = PendingSync {
                    ino: ino.0,
                    power_cuts,
                    unsynced,
                    reply,
                };
                if let Err(mpsc::SendError(pending)) = self.flush_queue.send(pending) {
                    pending.reply.error(Errno::EIO);
                }
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().dir(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.state().listing(ino.0) {
            Ok(listing) => listing,
            Err(errno) => return reply.error(errno),
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (child, kind, name)) in listing.into_iter().enumerate().skip(skip) {
            // Each entry's offset is where the next readdir resumes.
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory entries are durable as soon as they are made.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            STATFS_FILES,
            STATFS_FILES,
            BLOCK_SIZE,
            255,
            BLOCK_SIZE,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are not checked: fuser already refuses every user but the one who
        // mounted the disk, and the tests run as root.
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File, OpenOptions};
    use std::io::{BufRead, BufReader, ErrorKind, Write};
    use std::os::unix::fs::FileExt;
    use std::process::{Command, Stdio};

    use tempfile::TempDir;

    use super::*;

    /// A disk and the directory it is mounted on. The disk is declared first so it is dropped
    /// (unmounted) before the directory is removed.
    struct Mounted {
        disk: Disk,
        dir: TempDir,
    }

    impl Mounted {
        fn new() -> Mounted {
            let dir = TempDir::new().expect("temporary directory");
            let disk = Disk::mount(dir.path()).expect("mount the power-cut disk");
            Mounted { disk, dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn is_mounted(path: &Path) -> bool {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let path = path.to_str().expect("UTF-8 path");
        mountinfo
            .lines()
            .any(|line| line.split(' ').nth(4) == Some(path))
    }

    #[test]
    fn synced_data_survives_a_power_cut_and_later_writes_are_lost() {
        let mounted = Mounted::new();
        let path = mounted.path("log");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"synced").unwrap();
        file.sync_data().unwrap();
        file.write_all(b", then more").unwrap();
        file.write_all_at(b"S", 0).unwrap();
        drop(file);
        assert_eq!(fs::read(&path).unwrap(), b"Synced, then more");

        assert_eq!(mounted.disk.power_cut(), 12);

        assert_eq!(fs::read(&path).unwrap(), b"synced");
        assert_eq!(fs::metadata(&path).unwrap().len(), 6);
    }

    #[test]
    fn a_file_never_synced_is_empty_after_a_power_cut() {
        let mounted = Mounted::new();
        let path = mounted.path("never-synced");
        fs::write(&path, b"closed but not synced").unwrap();

        assert_eq!(mounted.disk.power_cut(), 21);

        assert!(path.exists(), "directory entries are durable at once");
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn set_len_is_undone_by_a_power_cut_unless_synced() {
        let mounted = Mounted::new();
        let path = mounted.path("sized");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let content: Vec<u8> = (0..100u8).collect();
        file.write_all_at(&content, 0).unwrap();
        file.sync_data().unwrap();

        file.set_len(10).unwrap();
        assert_eq!(mounted.disk.power_cut(), 90);
        assert_eq!(fs::read(&path).unwrap(), content, "shrink undone");

        file.set_len(300).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 300);
        assert_eq!(mounted.disk.power_cut(), 200);
        assert_eq!(fs::read(&path).unwrap(), content, "growth undone");

        file.set_len(10).unwrap();
        file.set_len(20).unwrap();
        file.sync_all().unwrap();
        assert_eq!(mounted.disk.power_cut(), 0);
        let mut expected = content[..10].to_vec();
        expected.resize(20, 0);
        assert_eq!(
            fs::read(&path).unwrap(),
            expected,
            "synced shrink and growth kept"
        );
    }

    #[test]
    fn only_the_synced_records_of_a_preallocated_log_survive() {
        let mounted = Mounted::new();
        let path = mounted.path("raft.log");
        let mut file = File::create(&path).unwrap();
        let preallocated = 4 << 20;
        file.write_all(&vec![0; preallocated]).unwrap();
        let record = |i: usize| vec![i as u8 + 1; 1000 + i];
        let mut offset = 0;
        let mut expected = vec![0; preallocated];
        for i in 0..200 {
            file.write_all_at(&record(i), offset as u64).unwrap();
            file.sync_data().unwrap();
            expected[offset..offset + record(i).len()].copy_from_slice(&record(i));
            offset += record(i).len();
        }
        file.write_all_at(&record(200), offset as u64).unwrap();
        file.write_all_at(&[0xff; 10], preallocated as u64).unwrap();
        drop(file);

        assert_eq!(mounted.disk.power_cut(), 1200 + 10);

        assert!(
            fs::read(&path).unwrap() == expected,
            "the unsynced record and growth are gone, every synced record is intact"
        );
    }

    #[test]
    fn a_file_renamed_over_another_keeps_its_synced_content() {
        let mounted = Mounted::new();
        let path = mounted.path("members.json");
        let fresh = mounted.path("members.json.tmp");
        let mut old = File::create(&path).unwrap();
        old.write_all(b"old").unwrap();
        old.sync_all().unwrap();
        let mut file = File::create(&fresh).unwrap();
        file.write_all(b"new").unwrap();
        file.sync_all().unwrap();
        fs::rename(&fresh, &path).unwrap();
        File::open(mounted.dir.path()).unwrap().sync_all().unwrap();

        // The replaced file is still open: it keeps taking writes and syncs.
        old.write_all(b" and more").unwrap();
        old.sync_data().unwrap();
        drop(old);
        assert_eq!(mounted.disk.power_cut(), 0, "everything was synced");

        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!fresh.exists());
        let names: Vec<_> = fs::read_dir(mounted.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["members.json"]);
    }

    #[test]
    fn directories_nest_list_and_refuse_bad_removals() {
        let mounted = Mounted::new();
        let nested = mounted.path("data/member/snap");
        fs::create_dir_all(&nested).unwrap();
        fs::create_dir_all(&nested).unwrap();
        for i in 0..300 {
            fs::write(nested.join(format!("{i:03}.snap")), b"x").unwrap();
        }
        let mut names: Vec<_> = fs::read_dir(&nested)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let expected: Vec<_> = (0..300).map(|i| format!("{i:03}.snap")).collect();
        assert_eq!(names, expected);
        assert!(fs::metadata(&nested).unwrap().is_dir());
        assert_eq!(fs::metadata(nested.join("007.snap")).unwrap().len(), 1);

        let member = mounted.path("data/member");
        let errno = |error: io::Error| error.raw_os_error();
        assert_eq!(
            errno(fs::remove_dir(&member).unwrap_err()),
            Some(nix::libc::ENOTEMPTY)
        );
        assert_eq!(
            errno(fs::remove_file(&member).unwrap_err()),
            Some(nix::libc::EISDIR)
        );
        assert_eq!(
            errno(fs::create_dir(&member).unwrap_err()),
            Some(nix::libc::EEXIST)
        );
        assert_eq!(
            errno(fs::remove_dir(nested.join("000.snap")).unwrap_err()),
            Some(nix::libc::ENOTDIR)
        );
        assert_eq!(
            fs::remove_file(mounted.path("missing")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let file = mounted.path("file");
        fs::write(&file, b"").unwrap();
        assert_eq!(
            errno(fs::rename(&member, &file).unwrap_err()),
            Some(nix::libc::ENOTDIR)
        );
        assert_eq!(
            errno(fs::rename(&file, &member).unwrap_err()),
            Some(nix::libc::EISDIR)
        );

        fs::remove_file(&file).unwrap();
        fs::remove_dir_all(mounted.path("data")).unwrap();
        assert_eq!(fs::read_dir(mounted.dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_redb_commit_survives_a_power_cut() {
        use redb::ReadableTableMetadata;

        const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("kv");
        let mounted = Mounted::new();
        let path = mounted.path("member.redb");
        let value = |key: u64| vec![key as u8; 3000];
        {
            let db = redb::Database::create(&path).unwrap();
            for batch in 0..20u64 {
                let txn = db.begin_write().unwrap();
                {
                    let mut table = txn.open_table(TABLE).unwrap();
                    for key in batch * 10..batch * 10 + 10 {
                        table.insert(key, value(key).as_slice()).unwrap();
                    }
                }
                txn.commit().unwrap();
            }
        }

        mounted.disk.power_cut();

        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        assert_eq!(table.len().unwrap(), 200);
        for key in 0..200 {
            assert_eq!(table.get(key).unwrap().unwrap().value(), value(key));
        }
    }

    #[test]
    fn dropping_the_disk_unmounts_it_even_while_a_file_is_open() {
        let dir = TempDir::new().unwrap();
        let mountpoint = dir.path().canonicalize().unwrap();
        let disk = Disk::mount(&mountpoint).unwrap();
        assert!(is_mounted(&mountpoint));
        drop(disk);
        assert!(!is_mounted(&mountpoint));

        let disk = Disk::mount(&mountpoint).unwrap();
        let mut file = File::create(mountpoint.join("busy")).unwrap();
        drop(disk);
        assert!(!is_mounted(&mountpoint), "detached although busy");
        file.write_all(b"still served").unwrap();
        file.sync_data().unwrap();
    }

    /// An fsync that takes its bytes when called and reaches the disk at once.
    fn sync(contents: &mut Contents) {
        let unsynced = contents.unsynced();
        contents.make_durable(unsynced);
    }

    #[test]
    fn an_fsync_covers_the_writes_before_it_was_called_and_not_those_after() {
        let mut contents = Contents::linked();
        contents.write(0, b"acknowledged").unwrap();
        let on_its_way = contents.unsynced();
        contents.write(0, b"written later, never synced").unwrap();
        contents.make_durable(on_its_way);
        assert_eq!(contents.durable, b"acknowledged");
        assert!(contents.power_cut() > 0);
        assert_eq!(contents.current, b"acknowledged");
    }

    #[test]
    fn an_fsync_still_on_its_way_at_the_cut_leaves_nothing() {
        let mut contents = Contents::linked();
        contents.write(0, b"synced").unwrap();
        sync(&mut contents);
        contents.write(6, b" and more").unwrap();
        let on_its_way = contents.unsynced();
        assert_eq!(contents.power_cut(), b" and more".len());
        assert_eq!(contents.current, b"synced");
        drop(on_its_way);
    }

    #[test]
    fn dirty_ranges_merge_and_fsync_copies_only_them() {
        let mut contents = Contents::linked();
        contents.write(0, &[1; 100]).unwrap();
        sync(&mut contents);
        assert!(contents.dirty.is_empty());

        contents.write(10, &[2; 10]).unwrap();
        contents.write(30, &[3; 10]).unwrap();
        contents.write(20, &[4; 10]).unwrap();
        contents.write(60, &[5; 5]).unwrap();
        assert_eq!(
            contents
                .dirty
                .iter()
                .map(|(&s, &e)| (s, e))
                .collect::<Vec<_>>(),
            [(10, 40), (60, 65)]
        );
        contents.set_len(50).unwrap();
        contents.write(120, &[6; 5]).unwrap();
        assert_eq!(
            contents
                .dirty
                .iter()
                .map(|(&s, &e)| (s, e))
                .collect::<Vec<_>>(),
            [(10, 40), (50, 125)]
        );
        sync(&mut contents);
        assert_eq!(contents.durable, contents.current);

        contents.write(0, &[7; 200]).unwrap();
        let changed = (0..200)
            .filter(|&i| contents.durable.get(i) != Some(&7))
            .count();
        assert_eq!(contents.power_cut(), changed);
        assert_eq!(contents.current.len(), 125);
        assert_eq!(
            &contents.current[60..65],
            &[0; 5],
            "cut off by the synced shrink"
        );
        assert_eq!(&contents.current[120..125], &[6; 5]);
    }

    #[test]
    fn dropping_the_disk_does_not_wait_for_a_process_in_another_mount_namespace() {
        let dir = TempDir::new().unwrap();
        let mountpoint = dir.path().canonicalize().unwrap();
        let disk = Disk::mount(&mountpoint).unwrap();
        let file = mountpoint.join("open");
        fs::write(&file, b"").unwrap();
        // As `ip netns exec` does: a mount namespace of its own holds a copy of the mount.
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg(r#"exec 3< "$0" && echo ready && exec sleep 60"#)
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready, "ready\n");

        drop(disk);

        assert!(!is_mounted(&mountpoint));
        assert!(child.try_wait().unwrap().is_none(), "still running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
