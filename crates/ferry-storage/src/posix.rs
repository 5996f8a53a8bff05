//! A directory tree on a POSIX file system.
//!
//! Writes are atomic: data goes to a temporary name in the target directory
//! (`O_CREAT|O_EXCL`), is fsynced, gets its attributes, is renamed over the
//! final name, and the directory is fsynced. Temporary names start with
//! [`TEMP_PREFIX`] and are swept by the next run. Parent directories are
//! checked component by component so that a symlink inside the tree never
//! redirects a write outside it.

use std::fs::{self, File, FileTimes, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_model::{join_path, validate_rel_path, Entry, EntryKind, LocalStat, PosixMeta};

use crate::error::{Error, Result};
use crate::Listing;

/// Every temporary file ferry creates starts with this; nothing else may.
pub const TEMP_PREFIX: &str = ".ferry-tmp.";

/// Files at least this large get their space reserved when created.
pub const PREALLOCATE_FROM: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct PosixRoot {
    root: PathBuf,
    /// Follow symlinks while listing (`--copy-links`) instead of copying them as links.
    follow_links: bool,
    /// Whether to apply uid/gid (only root may give files away).
    chown: bool,
    /// Files found changed (by ctime) at or after this instant, in ns since
    /// the epoch, are not replaced: see [`Self::keeping_changed_since`].
    keep_changed_since: Option<i64>,
}

impl PosixRoot {
    /// Open an existing directory, or create it (and its parents) when `create` is set.
    pub fn open(root: impl Into<PathBuf>, create: bool, follow_links: bool) -> Result<Self> {
        Self::open_with(root, create, false, follow_links)
    }

    /// Like [`PosixRoot::open`]; with `may_be_missing` a missing directory is
    /// accepted and lists as empty (a dry run's destination).
    pub fn open_with(
        root: impl Into<PathBuf>,
        create: bool,
        may_be_missing: bool,
        follow_links: bool,
    ) -> Result<Self> {
        let root: PathBuf = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::InvalidLocation(format!("{} is not a directory", root.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                fs::create_dir_all(&root)
                    .map_err(|e| Error::io(format!("create directory {}", root.display()), e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_missing => {
                let root = std::path::absolute(&root)
                    .map_err(|e| Error::io(format!("resolve {}", root.display()), e))?;
                return Ok(Self { root, follow_links, chown: is_root(), keep_changed_since: None });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing {
                    what: format!("directory {}", root.display()),
                    fix: "check the path",
                })
            }
            Err(e) => return Err(Error::io(format!("open {}", root.display()), e)),
        }
        let root =
            fs::canonicalize(&root).map_err(|e| Error::io(format!("resolve {}", root.display()), e))?;
        let chown = is_root();
        Ok(Self { root, follow_links, chown, keep_changed_since: None })
    }

    /// Never replace a file changed (by its ctime, which no one can set) at
    /// or after `since_ns`, ns since the epoch: someone else wrote it while
    /// the run went on. Checked by [`PosixWriter::commit`] just before its
    /// rename, by [`Self::create_symlink`] and by [`Self::set_file_attrs`],
    /// which then fail with
    /// [`Error::ChangedMeanwhile`].
    pub fn keeping_changed_since(self, since_ns: i64) -> Self {
        Self { keep_changed_since: Some(since_ns), ..self }
    }

    /// The instant given to [`Self::keeping_changed_since`], if any.
    pub fn keeps_changed_since(&self) -> Option<i64> {
        self.keep_changed_since
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn abs(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// List one directory, sorted by name. Names that are not UTF-8 are
    /// reported in `Listing::rejected`; leftover temporary files are removed.
    pub fn list_dir(&self, rel: &str) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut entries = Vec::new();
        self.list_level(
            rel,
            |e| {
                entries.push(e);
                Ok(())
            },
            &mut listing.rejected,
        )?;
        listing.entries = entries;
        listing.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(listing)
    }

    /// Stream one directory's entries to `f` in directory order; names that
    /// cannot be used go to `rejected`. The directory is reached through
    /// [`Self::open_dir`] and its entries are read and stat'ed through its
    /// descriptor, so a directory swapped for a symlink meanwhile is
    /// refused, never listed.
    pub fn list_level(
        &self,
        rel: &str,
        mut f: impl FnMut(Entry) -> Result<()>,
        rejected: &mut Vec<(String, String)>,
    ) -> Result<()> {
        use rustix::fs::{unlinkat, AtFlags, Dir};
        let (dir, fd) = self.open_dir(rel, false, self.follow_links)?;
        let list_err = |e: rustix::io::Errno| Error::io(format!("list {}", dir.display()), e.into());
        let read = Dir::read_from(&fd).map_err(list_err)?;
        for item in read {
            let item = item.map_err(list_err)?;
            let raw = item.file_name();
            let bytes = raw.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(bytes) else {
                rejected.push((
                    join_path(rel, &String::from_utf8_lossy(bytes)),
                    "name is not valid UTF-8".into(),
                ));
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                let _ = unlinkat(&fd, raw, AtFlags::empty());
                continue;
            }
            let path = join_path(rel, name);
            match self.entry_at(&fd, raw, &dir.join(name), path.clone()) {
                Ok(Some(e)) => f(e)?,
                Ok(None) => {}
                Err(e) => rejected.push((path, e.to_string())),
            }
        }
        Ok(())
    }

    /// The entry at `rel`, or `None` when nothing is there.
    pub fn stat(&self, rel: &str) -> Result<Option<Entry>> {
        use rustix::fs::{fstat, FileType};
        if rel.is_empty() {
            let (dir, fd) = self.open_dir("", false, self.follow_links)?;
            let st = fstat(&fd).map_err(|e| Error::io(format!("stat {}", dir.display()), e.into()))?;
            debug_assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::Directory);
            return entry_of(String::new(), &st).map(Some);
        }
        let (fd, name) = match self.parent_of(rel, self.follow_links) {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        self.entry_at(&fd, name, &self.abs(rel), rel.to_string())
    }

    /// The entry `name` in the directory `fd`, or `None` when nothing is there.
    fn entry_at(
        &self,
        fd: &rustix::fd::OwnedFd,
        name: impl rustix::path::Arg + Copy,
        abs: &Path,
        path: String,
    ) -> Result<Option<Entry>> {
        use rustix::fs::{statat, AtFlags, FileType};
        use rustix::io::Errno;
        let st = match statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(Error::io(format!("stat {}", abs.display()), e.into())),
        };
        let st = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink && self.follow_links {
            statat(fd, name, AtFlags::empty())
                .map_err(|e| Error::io(format!("follow symlink {}", abs.display()), e.into()))?
        } else {
            st
        };
        entry_of(path, &st).map(Some)
    }

    pub fn read_link(&self, rel: &str) -> Result<String> {
        let (fd, name) = self.parent_of(rel, self.follow_links)?;
        let target = rustix::fs::readlinkat(&fd, name, Vec::new())
            .map_err(|e| Error::io(format!("read link {}", self.abs(rel).display()), e.into()))?;
        target.into_string().map_err(|_| Error::InvalidName {
            name: rel.to_string(),
            reason: "symlink target is not valid UTF-8".into(),
        })
    }

    /// Open a file for reading without moving its access time (`O_NOATIME`,
    /// which only the file's owner or root may ask for; others' files are
    /// opened plainly): a copy that touched every atime would defeat purge
    /// and tiering policies that go by it, and the atime stored with the
    /// object is the one listed. The file is opened through its directory's
    /// descriptor and never through a symlink (unless `--copy-links` asked
    /// for them to be followed), so nothing outside the root is read.
    pub fn open_read(&self, entry: &Entry) -> Result<PosixReader> {
        use rustix::fs::{openat, Mode, OFlags};
        use rustix::io::Errno;
        let abs = self.abs(&entry.path);
        let (fd, name) = self.parent_of(&entry.path, self.follow_links)?;
        // Non-blocking, which changes nothing for a regular file: one
        // swapped for a FIFO since the listing would otherwise hold the
        // open until a writer came; now it reads short and fails its item.
        let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
        if !self.follow_links {
            flags |= OFlags::NOFOLLOW;
        }
        let opened = match openat(&fd, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => openat(&fd, name, flags, Mode::empty()),
            other => other,
        };
        let file = File::from(opened.map_err(|e| Error::io(format!("open {}", abs.display()), e.into()))?);
        Ok(PosixReader { file, expect: entry.clone(), abs, pos: 0, eof: false })
    }

    /// Open the directory `rel_dir` (`""` for the root) and return its
    /// absolute path with a descriptor of it. The walk goes one component at
    /// a time from the root and never follows a symlink unless `follow`
    /// (reads with `--copy-links`, which asks for them to be followed), so what is
    /// done through the descriptor happens in the directory checked even if
    /// a path to it is swapped for a symlink meanwhile. With `create`,
    /// missing directories are made. The root itself may be reached through
    /// a symlink (it is configured).
    fn open_dir(&self, rel_dir: &str, create: bool, follow: bool) -> Result<(PathBuf, rustix::fd::OwnedFd)> {
        use rustix::fs::{mkdirat, open, openat, statat, AtFlags, FileType, Mode, OFlags};
        use rustix::io::Errno;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = open(&self.root, flags, Mode::empty())
            .map_err(|e| Error::io(format!("open {}", self.root.display()), e.into()))?;
        let flags = if follow { flags } else { flags | OFlags::NOFOLLOW };
        let mut dir = self.root.clone();
        if rel_dir.is_empty() {
            return Ok((dir, fd));
        }
        for part in rel_dir.split('/') {
            dir.push(part);
            let mut opened = openat(&fd, part, flags, Mode::empty());
            if create && matches!(opened, Err(Errno::NOENT)) {
                match mkdirat(&fd, part, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(Error::io(format!("create {}", dir.display()), e.into())),
                }
                opened = openat(&fd, part, flags, Mode::empty());
            }
            fd = match opened {
                Ok(next) => next,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let st = statat(&fd, part, AtFlags::SYMLINK_NOFOLLOW);
                    if st.is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink) {
                        return Err(Error::SymlinkInPath(dir.display().to_string()));
                    }
                    return Err(Error::InvalidName {
                        name: rel_dir.to_string(),
                        reason: format!("{} is not a directory", dir.display()),
                    });
                }
                Err(e) => return Err(Error::io(format!("open {}", dir.display()), e.into())),
            };
        }
        Ok((dir, fd))
    }

    /// The directory `rel` is in, opened as [`Self::open_dir`] does
    /// (without creating anything), and `rel`'s name in it.
    fn parent_of<'a>(&self, rel: &'a str, follow: bool) -> Result<(rustix::fd::OwnedFd, &'a str)> {
        let (parent, name) = split_rel(rel)?;
        Ok((self.open_dir(parent, false, follow)?.1, name))
    }

    /// Check that every directory above `rel` is a real directory inside the
    /// root (creating missing ones), and return the parent's absolute path
    /// with a descriptor of it, as [`Self::open_dir`] does, and `rel`'s
    /// name in it.
    fn checked_parent<'a>(&self, rel: &'a str) -> Result<(PathBuf, rustix::fd::OwnedFd, &'a str)> {
        let (parent, name) = split_rel(rel)?;
        let (dir, fd) = self.open_dir(parent, true, false)?;
        Ok((dir, fd, name))
    }

    /// Start writing a file of `size` bytes; nothing appears under `rel`
    /// before `commit`.
    ///
    /// The space of a file of [`PREALLOCATE_FROM`] bytes or more is reserved
    /// first (as rclone does): a destination without room fails the item
    /// before its first byte is written (for a download in ranges, before
    /// any range is fetched), and the file is laid out in few extents though
    /// its ranges arrive out of order. File systems that cannot reserve
    /// space take it as it is written.
    pub fn create_file(&self, rel: &str, size: u64) -> Result<PosixWriter> {
        use rustix::fs::{openat, Mode, OFlags};
        let (dir, dir_fd, name) = self.checked_parent(rel)?;
        let final_path = self.abs(rel);
        let name = name.to_string();
        let tmp_name = temp_name();
        let tmp = dir.join(&tmp_name);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
        let file = openat(&dir_fd, tmp_name.as_str(), flags, Mode::from_raw_mode(0o600))
            .map(File::from)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e.into()))?;
        let writer = PosixWriter {
            file: Some(file),
            tmp,
            tmp_name,
            name,
            final_path,
            dir_fd,
            chown: self.chown,
            keep_changed_since: self.keep_changed_since,
        };
        if size >= PREALLOCATE_FROM {
            writer.reserve(size)?;
        }
        Ok(writer)
    }

    /// Create a directory (or keep an existing one) and apply its
    /// attributes, through its parent's descriptor.
    pub fn create_dir(&self, rel: &str, meta: &PosixMeta) -> Result<()> {
        use rustix::fs::{mkdirat, statat, AtFlags, FileType, Mode};
        use rustix::io::Errno;
        let (_, fd, name) = self.checked_parent(rel)?;
        let abs = self.abs(rel);
        match statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => {
                return Err(Error::InvalidName {
                    name: rel.to_string(),
                    reason: "a file or symlink of that name is in the way".into(),
                })
            }
            Err(_) => match mkdirat(&fd, name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::io(format!("create {}", abs.display()), e.into())),
            },
        }
        let f = open_in(&fd, name, true, &abs)?;
        apply_meta(&f, meta, self.chown, false)
            .map_err(|e| Error::io(format!("set attributes of {}", abs.display()), e))
    }

    /// Give an existing file new mode, owner and group (owner and group
    /// only as root), keeping its content and times. Never follows a
    /// symlink put in its place.
    pub fn set_file_attrs(&self, rel: &str, meta: &PosixMeta) -> Result<()> {
        let (_, fd, name) = self.checked_parent(rel)?;
        let abs = self.abs(rel);
        let ctx = |what: &str| format!("{what} {}", abs.display());
        let f = open_in(&fd, name, false, &abs)?;
        let st = f.metadata().map_err(|e| Error::io(ctx("stat"), e))?;
        if !st.is_file() {
            return Err(Error::InvalidName { name: rel.to_string(), reason: "not a regular file".into() });
        }
        let ctime_ns = st.ctime() * 1_000_000_000 + st.ctime_nsec();
        if self.keep_changed_since.is_some_and(|since| ctime_ns >= since) {
            return Err(Error::ChangedMeanwhile(abs.display().to_string()));
        }
        apply_meta(&f, meta, self.chown, false).map_err(|e| Error::io(ctx("set attributes of"), e))
    }

    /// Whether files written here get the owner and group asked for.
    pub fn sets_owner(&self) -> bool {
        self.chown
    }

    /// Set a directory's modification time (after its content was written),
    /// unless it already has it. Never follows a symlink put in its place.
    pub fn set_dir_mtime(&self, rel: &str, mtime_ns: i64) -> Result<()> {
        let (_, fd, name) = self.checked_parent(rel)?;
        let abs = self.abs(rel);
        let ctx = |what: &str| format!("{what} {}", abs.display());
        let f = open_in(&fd, name, true, &abs)?;
        let md = f.metadata().map_err(|e| Error::io(ctx("stat"), e))?;
        if md.mtime() * 1_000_000_000 + md.mtime_nsec() == mtime_ns {
            return Ok(());
        }
        f.set_times(FileTimes::new().set_modified(system_time(mtime_ns)))
            .map_err(|e| Error::io(ctx("set mtime of"), e))
    }

    /// [`Self::set_dir_mtime`] for many directories; returns those that
    /// could not take their time, with the reason.
    pub fn set_dir_mtimes(&self, times: Vec<(String, i64)>) -> Vec<(String, Error)> {
        times
            .into_iter()
            .filter_map(|(path, ns)| self.set_dir_mtime(&path, ns).err().map(|e| (path, e)))
            .collect()
    }

    /// Create (or replace) a symlink atomically.
    pub fn create_symlink(&self, rel: &str, target: &str, meta: &PosixMeta) -> Result<()> {
        use rustix::fs::{
            chownat, fsync, symlinkat, unlinkat, utimensat, AtFlags, Gid, Timespec, Timestamps, Uid,
            UTIME_OMIT,
        };
        // Everything through the directory's descriptor, as for files.
        let (dir, dir_fd, name) = self.checked_parent(rel)?;
        let tmp_name = temp_name();
        let tmp = dir.join(&tmp_name);
        let tmp_name = tmp_name.as_str();
        let discard = |e: std::io::Error, what: String| {
            let _ = unlinkat(&dir_fd, tmp_name, AtFlags::empty());
            Error::io(what, e)
        };
        symlinkat(target, &dir_fd, tmp_name)
            .map_err(|e| Error::io(format!("create symlink {}", tmp.display()), e.into()))?;
        if self.chown && (meta.uid.is_some() || meta.gid.is_some()) {
            let (uid, gid) = (meta.uid.map(Uid::from_raw), meta.gid.map(Gid::from_raw));
            if let Err(e) = chownat(&dir_fd, tmp_name, uid, gid, AtFlags::SYMLINK_NOFOLLOW) {
                return Err(discard(e.into(), format!("chown {}", tmp.display())));
            }
        }
        // The link's own times (std can only set a link target's).
        if let Some(ns) = meta.mtime_ns {
            let spec = |ns: i64| Timespec {
                tv_sec: ns.div_euclid(1_000_000_000),
                tv_nsec: ns.rem_euclid(1_000_000_000) as _,
            };
            let times = Timestamps {
                last_access: meta.atime_ns.map_or(Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT }, spec),
                last_modification: spec(ns),
            };
            if let Err(e) = utimensat(&dir_fd, tmp_name, &times, AtFlags::SYMLINK_NOFOLLOW) {
                return Err(discard(e.into(), format!("set mtime of {}", tmp.display())));
            }
        }
        let abs = self.abs(rel);
        let placed = unchanged_since(self.keep_changed_since, &dir_fd, name, &abs)
            .and_then(|how| place(&dir_fd, tmp_name, name, how, &abs));
        if let Err(e) = placed {
            let _ = unlinkat(&dir_fd, tmp_name, AtFlags::empty());
            return Err(e);
        }
        fsync(&dir_fd).map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e.into()))
    }

    /// Remove the temporary files ([`TEMP_PREFIX`]) that interrupted writes
    /// left anywhere under `under` (`""` for the whole root), through
    /// directory descriptors and never through a symlink, as every other
    /// change here; returns how many were removed.
    pub fn sweep_temp_files(&self, under: &str) -> usize {
        use rustix::fs::{statat, unlinkat, AtFlags, Dir, FileType};
        let mut removed = 0;
        let mut stack = vec![under.to_string()];
        while let Some(rel) = stack.pop() {
            let Ok((_, fd)) = self.open_dir(&rel, false, false) else { continue };
            let Ok(entries) = Dir::read_from(&fd) else { continue };
            for item in entries.flatten() {
                let raw = item.file_name();
                let bytes = raw.to_bytes();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                let kind = match item.file_type() {
                    FileType::Unknown => statat(&fd, raw, AtFlags::SYMLINK_NOFOLLOW)
                        .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode)),
                    kind => kind,
                };
                if kind == FileType::Directory {
                    // Names that are not UTF-8 cannot be walked by path here.
                    if let Ok(name) = std::str::from_utf8(bytes) {
                        stack.push(join_path(&rel, name));
                    }
                } else if bytes.starts_with(TEMP_PREFIX.as_bytes())
                    && unlinkat(&fd, raw, AtFlags::empty()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Remove a file, symlink or whole directory tree, through its parent's
    /// descriptor and never following a symlink (one put in place of a
    /// directory is removed as a link).
    pub fn remove(&self, rel: &str, kind: EntryKind) -> Result<()> {
        use rustix::fs::{unlinkat, AtFlags};
        let (fd, name) = match self.parent_of(rel, false) {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let res = match kind {
            EntryKind::Dir => remove_tree_at(&fd, name),
            _ => unlinkat(&fd, name, AtFlags::empty()),
        };
        match res {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", self.abs(rel).display()), e.into())),
        }
    }
}

/// [`Error::ChangedMeanwhile`] when `name` in `dir_fd` was changed (by its
/// ctime) at or after `since` ([`PosixRoot::keeping_changed_since`]).
fn unchanged_since(
    since: Option<i64>,
    dir_fd: &rustix::fd::OwnedFd,
    name: &str,
    path: &Path,
) -> Result<Placing> {
    use rustix::fs::{statat, AtFlags, FileType};
    let Some(since) = since else { return Ok(Placing::Replace) };
    match statat(dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if StatFields::of(&st).ctime_ns >= since => {
            Err(Error::ChangedMeanwhile(path.display().to_string()))
        }
        // A directory in the way: the rename refuses it (EISDIR).
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(Placing::Replace),
        Ok(st) => {
            let f = StatFields::of(&st);
            Ok(Placing::ReplaceUnchanged(Seen { ino: f.ino, mtime_ns: f.mtime_ns, size: f.size }))
        }
        Err(_) => Ok(Placing::IntoFreeName),
    }
}

/// What a file that is to be replaced looked like when checked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Seen {
    ino: u64,
    mtime_ns: i64,
    size: u64,
}

/// How a finished temporary file or link takes its final name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placing {
    Replace,
    /// Replace the file there only if it is still as [`Seen`] when the
    /// check was made: it is swapped out (RENAME_EXCHANGE) and looked at
    /// once out of the way, and swapped back if the user wrote to it
    /// meanwhile (a write, or the truncation that opens one, moves its
    /// mtime or size; the swap itself moves its ctime).
    ReplaceUnchanged(Seen),
    /// The name was free when checked, and whatever the user puts there
    /// meanwhile stays: the rename refuses to replace it.
    IntoFreeName,
}

/// Rename `tmp` to `name` in `dir_fd` as `how` says; a name taken since
/// the check is [`Error::ChangedMeanwhile`] (`path` in its message). Where
/// the file system cannot refuse (EINVAL), a plain rename.
fn place(dir_fd: &rustix::fd::OwnedFd, tmp: &str, name: &str, how: Placing, path: &Path) -> Result<()> {
    use rustix::fs::{renameat, renameat_with, RenameFlags};
    use rustix::io::Errno;
    let changed = || Error::ChangedMeanwhile(path.display().to_string());
    let renamed = match how {
        Placing::Replace => renameat(dir_fd, tmp, dir_fd, name),
        Placing::ReplaceUnchanged(seen) => {
            match renameat_with(dir_fd, tmp, dir_fd, name, RenameFlags::EXCHANGE) {
                Ok(()) => {
                    // `tmp` now names the file that was there.
                    use rustix::fs::{statat, unlinkat, AtFlags};
                    let now =
                        statat(dir_fd, tmp, AtFlags::SYMLINK_NOFOLLOW).ok().map(|st| StatFields::of(&st));
                    let same =
                        now.is_some_and(|f| Seen { ino: f.ino, mtime_ns: f.mtime_ns, size: f.size } == seen);
                    if !same {
                        // Back where it was; the copy leaves with the temporary name.
                        renameat_with(dir_fd, tmp, dir_fd, name, RenameFlags::EXCHANGE)
                            .map_err(|e| Error::io(format!("put back {}", path.display()), e.into()))?;
                        return Err(changed());
                    }
                    // The copy is in place; an old file that cannot be
                    // removed keeps a temporary name, which runs sweep.
                    let _ = unlinkat(dir_fd, tmp, AtFlags::empty());
                    Ok(())
                }
                // A file system that cannot swap names.
                Err(Errno::INVAL) => renameat(dir_fd, tmp, dir_fd, name),
                // Gone since the check: nothing of the user's to keep.
                Err(Errno::NOENT) => renameat(dir_fd, tmp, dir_fd, name),
                Err(e) => Err(e),
            }
        }
        Placing::IntoFreeName => match renameat_with(dir_fd, tmp, dir_fd, name, RenameFlags::NOREPLACE) {
            Err(Errno::EXIST) => return Err(changed()),
            Err(Errno::INVAL) => renameat(dir_fd, tmp, dir_fd, name),
            other => other,
        },
    };
    renamed.map_err(|e| {
        // A file never replaces a directory: rename(2) refuses with EISDIR.
        if e == Errno::ISDIR {
            Error::InvalidName {
                name: path.display().to_string(),
                reason: "a directory of that name is in the way".into(),
            }
        } else {
            Error::io(format!("rename to {}", path.display()), e.into())
        }
    })
}

/// A relative path checked ([`validate_rel_path`]) and split into its
/// directory (`""` at the top) and its last component.
fn split_rel(rel: &str) -> Result<(&str, &str)> {
    validate_rel_path(rel)
        .map_err(|e| Error::InvalidName { name: rel.to_string(), reason: e.to_string() })?;
    Ok(rel.rsplit_once('/').unwrap_or(("", rel)))
}

/// Open `name` in the directory `fd` for reading its attributes (a
/// directory when `dir`), never through a symlink.
fn open_in(fd: &rustix::fd::OwnedFd, name: &str, dir: bool, abs: &Path) -> Result<File> {
    use rustix::fs::{openat, Mode, OFlags};
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    let what = if dir { "open directory" } else { "open" };
    openat(fd, name, flags, Mode::empty())
        .map(File::from)
        .map_err(|e| Error::io(format!("{what} {}", abs.display()), e.into()))
}

/// Remove the directory `name` in `parent` with everything under it,
/// through descriptors only: whatever is found in place of a directory
/// (a symlink put there meanwhile, say) is removed itself, never followed.
/// (`std::fs::remove_dir_all` takes a path, whose directories could be
/// swapped between the walk that checked them and the removal.)
fn remove_tree_at(
    parent: &rustix::fd::OwnedFd,
    name: impl rustix::path::Arg + Copy,
) -> rustix::io::Result<()> {
    use rustix::fs::{openat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags};
    use rustix::io::Errno;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR | Errno::LOOP) => return unlinkat(parent, name, AtFlags::empty()),
        Err(e) => return Err(e),
    };
    let entries = Dir::read_from(&fd)?;
    for entry in entries {
        let entry = entry?;
        let child = entry.file_name();
        if child == c"." || child == c".." {
            continue;
        }
        let res = match entry.file_type() {
            FileType::Directory | FileType::Unknown => remove_tree_at(&fd, child),
            _ => unlinkat(&fd, child, AtFlags::empty()),
        };
        match res {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// The entry for `path` given its `lstat` result.
fn entry_of(path: String, st: &rustix::fs::Stat) -> Result<Entry> {
    use rustix::fs::FileType;
    let st = StatFields::of(st);
    let kind = match FileType::from_raw_mode(st.mode) {
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        FileType::RegularFile => EntryKind::File,
        _ => {
            return Err(Error::InvalidName {
                name: path,
                reason: "not a regular file, directory or symlink (device, socket or fifo)".into(),
            })
        }
    };
    Ok(Entry {
        path,
        kind,
        size: if kind == EntryKind::Dir { 0 } else { st.size },
        mtime_ns: Some(st.mtime_ns),
        mtime_exact: true,
        meta: PosixMeta {
            mode: Some(st.mode & 0o7777),
            uid: Some(st.uid),
            gid: Some(st.gid),
            mtime_ns: Some(st.mtime_ns),
            atime_ns: Some(st.atime_ns),
        },
        meta_loaded: true,
        etag: None,
        local: Some(LocalStat { dev: st.dev, ino: st.ino, nlink: st.nlink, ctime_ns: st.ctime_ns }),
        crc32c: None,
        md5: None,
    })
}

/// What identifies a local file as written: its inode and ctime, which
/// users cannot set (rewriting the file, changing its attributes or putting
/// another file at its name moves one of them), with its size and mtime.
/// Those two tell a rewrite apart within the kernel's clock tick too, when
/// the ctime reads the same: `cp -p` of another file over it, say.
pub fn local_version(ino: u64, ctime_ns: i64, mtime_ns: Option<i64>, size: u64) -> String {
    let mtime = mtime_ns.unwrap_or_default();
    format!("local:{ino}:{ctime_ns}:{mtime}:{size}")
}

/// The fields of a `stat` result that entries use, in the types entries
/// use (the kernel's types differ between architectures).
struct StatFields {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i64,
    atime_ns: i64,
    ctime_ns: i64,
    dev: u64,
    ino: u64,
    nlink: u64,
}

impl StatFields {
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn of(st: &rustix::fs::Stat) -> Self {
        let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
        Self {
            mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            atime_ns: ns(st.st_atime as i64, st.st_atime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
        }
    }
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective uid of this process.
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn temp_name() -> String {
    format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>())
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn apply_meta(f: &File, meta: &PosixMeta, chown: bool, set_mtime: bool) -> std::io::Result<()> {
    if chown && (meta.uid.is_some() || meta.gid.is_some()) {
        std::os::unix::fs::fchown(f, meta.uid, meta.gid)?;
    }
    if let Some(mode) = meta.mode {
        f.set_permissions(Permissions::from_mode(mode & 0o7777))?;
    }
    if set_mtime {
        if let Some(ns) = meta.mtime_ns {
            let times = FileTimes::new().set_modified(system_time(ns));
            f.set_times(match meta.atime_ns {
                Some(a) => times.set_accessed(system_time(a)),
                None => times,
            })?;
        }
    }
    Ok(())
}

/// Reads a file and, at the end, checks that it did not change meanwhile.
/// Read chunks from this size on come from [`crate::buffers`].
const POOLED_FROM: usize = 1 << 20;

pub struct PosixReader {
    file: File,
    expect: Entry,
    abs: PathBuf,
    /// Bytes read so far.
    pos: u64,
    /// The end of the file was seen.
    eof: bool,
}

impl PosixReader {
    /// Up to `max` bytes, or `None` at the end of the file. Buffers are sized
    /// by what is left of the expected size (plus one byte, to notice growth),
    /// so that small files cost small allocations; whole `max` chunks of
    /// large files are read into buffers used again ([`crate::buffers`]).
    pub fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        let left = self.expect.size.saturating_sub(self.pos);
        let want = (left.saturating_add(1)).min(max as u64).max(1) as usize;
        let whole = want == max && max >= POOLED_FROM;
        let mut buf = if whole { crate::buffers::take(want) } else { vec![0; want] };
        let max = want;
        let mut filled = 0;
        while filled < max {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("read {}", self.abs.display()), e)),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        self.pos += filled as u64;
        if whole {
            return Ok(Some(crate::buffers::freeze(buf, filled)));
        }
        buf.truncate(filled);
        Ok(Some(Bytes::from(buf)))
    }

    /// Whether the end of the file was reached.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Fail when size, mtime, ctime or inode differ from what the listing saw.
    pub fn check_unchanged(&self) -> Result<()> {
        let md = self.file.metadata().map_err(|e| Error::io(format!("stat {}", self.abs.display()), e))?;
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        let ctime = md.ctime() * 1_000_000_000 + md.ctime_nsec();
        let same_identity = self.expect.local.is_none_or(|l| l.ino == md.ino() && l.ctime_ns == ctime);
        if md.size() != self.expect.size || Some(mtime) != self.expect.mtime_ns || !same_identity {
            return Err(Error::SourceChanged(self.abs.display().to_string()));
        }
        Ok(())
    }
}

/// Writes at given offsets into a file being written under a temporary name.
pub struct PositionalFile {
    file: File,
    name: String,
}

impl PositionalFile {
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset).map_err(|e| Error::io(format!("write {}", self.name), e))
    }
}

/// A file being written under a temporary name.
pub struct PosixWriter {
    file: Option<File>,
    /// The temporary file's path, for messages; empty once committed.
    tmp: PathBuf,
    /// Its name and the final name, in `dir_fd`.
    tmp_name: String,
    name: String,
    final_path: PathBuf,
    /// The directory both names are in: renames and the directory's fsync
    /// go through it, never through a path that could be swapped.
    dir_fd: rustix::fd::OwnedFd,
    chown: bool,
    keep_changed_since: Option<i64>,
}

impl PosixWriter {
    /// Reserve `size` bytes without changing the file's size. Only a lack
    /// of room is an error (the writer's drop removes the file).
    fn reserve(&self, size: u64) -> Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        use rustix::io::Errno;
        let f = self.file.as_ref().expect("reserve before commit");
        match fallocate(f, FallocateFlags::KEEP_SIZE, 0, size) {
            Err(e) if [Errno::NOSPC, Errno::DQUOT, Errno::FBIG].contains(&e) => {
                Err(Error::io(format!("reserve {size} bytes for {}", self.tmp.display()), e.into()))
            }
            _ => Ok(()),
        }
    }

    /// A handle to the temporary file for positional writes from several
    /// tasks at once (ranged downloads); the writer still owns commit.
    pub fn positional(&self) -> Result<PositionalFile> {
        let f = self.file.as_ref().expect("positional after commit");
        let file = f.try_clone().map_err(|e| Error::io(format!("reopen {}", self.tmp.display()), e))?;
        Ok(PositionalFile { file, name: self.tmp.display().to_string() })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("write after commit");
        f.write_all(data).map_err(|e| Error::io(format!("write {}", self.tmp.display()), e))
    }

    /// Make the data durable, apply attributes, and move it to its final
    /// name. Returns the file's [`local_version`] once there: a later write
    /// or swap at that name changes it.
    pub fn commit(mut self, meta: &PosixMeta) -> Result<String> {
        let f = self.file.take().expect("commit twice");
        let ctx = |what: &str| format!("{what} {}", self.tmp.display());
        let mode_meta = PosixMeta { mode: Some(meta.mode.unwrap_or(0o644)), ..*meta };
        apply_meta(&f, &mode_meta, self.chown, true).map_err(|e| Error::io(ctx("set attributes of"), e))?;
        // Content and attributes durable before the name is: a file found
        // under its final name after a power loss has its mode and mtime too.
        f.sync_all().map_err(|e| Error::io(ctx("fsync"), e))?;
        use rustix::fs::{fstat, fsync};
        let how = unchanged_since(self.keep_changed_since, &self.dir_fd, &self.name, &self.final_path)?;
        place(&self.dir_fd, &self.tmp_name, &self.name, how, &self.final_path)?;
        self.tmp.clear();
        fsync(&self.dir_fd)
            .map_err(|e| Error::io(format!("fsync directory of {}", self.final_path.display()), e.into()))?;
        // After the rename, which moves the ctime.
        let st = fstat(&f).map_err(|e| Error::io(format!("stat {}", self.final_path.display()), e.into()))?;
        let st = StatFields::of(&st);
        Ok(local_version(st.ino, st.ctime_ns, Some(st.mtime_ns), st.size))
    }
}

impl Drop for PosixWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = rustix::fs::unlinkat(&self.dir_fd, self.tmp_name.as_str(), rustix::fs::AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory holding `root` and `outside` (both made): a root
    /// to work in and a directory a symlink may lead out to.
    fn root_and_outside() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let (root_dir, outside) = (top.path().join("root"), top.path().join("outside"));
        fs::create_dir_all(&root_dir).unwrap();
        fs::create_dir_all(&outside).unwrap();
        (top, root_dir, outside)
    }

    fn meta(mode: u32, mtime_ns: i64) -> PosixMeta {
        PosixMeta { mode: Some(mode), mtime_ns: Some(mtime_ns), ..Default::default() }
    }

    #[test]
    fn write_is_atomic_and_applies_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let mut w = root.create_file("a/b/file.txt", 0).unwrap();
        w.write(b"hello").unwrap();
        assert!(!dir.path().join("a/b/file.txt").exists(), "invisible before commit");
        let version = w.commit(&meta(0o640, 1_600_000_000_123_456_789)).unwrap();
        let e = root.stat("a/b/file.txt").unwrap().unwrap();
        assert_eq!(e.size, 5);
        assert_eq!(e.meta.mode, Some(0o640));
        assert_eq!(e.mtime_ns, Some(1_600_000_000_123_456_789));
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        // The version names the file as it is at its final name, until it
        // is written again (its mtime put back or not).
        let version_of = |e: &Entry| {
            let l = e.local.unwrap();
            local_version(l.ino, l.ctime_ns, e.mtime_ns, e.size)
        };
        assert_eq!(version, version_of(&e));
        // At once (the ctime may read the same): another file's content of
        // the same size, with its own mtime, as `cp -p` leaves it.
        let f = fs::File::options().write(true).open(dir.path().join("a/b/file.txt")).unwrap();
        std::io::Write::write_all(&mut &f, b"jello").unwrap();
        f.set_modified(system_time(1_500_000_000_000_000_000)).unwrap();
        let e = root.stat("a/b/file.txt").unwrap().unwrap();
        assert_ne!(version, version_of(&e), "a same-size copy changes it within the tick");
        let version = version_of(&e);
        // Later: the same size, the same mtime put back, even the same
        // byte written: only the ctime tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::os::unix::fs::FileExt::write_all_at(&f, b"j", 0).unwrap();
        f.set_modified(system_time(1_500_000_000_000_000_000)).unwrap();
        let e = root.stat("a/b/file.txt").unwrap().unwrap();
        assert_eq!(e.size, 5);
        assert_ne!(version, version_of(&e), "a rewrite changes it, its mtime put back");
    }

    #[test]
    fn a_file_changed_since_the_given_instant_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old"), b"before").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        // File times come from the kernel's coarse clock, a tick behind.
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64 - 30_000_000;
        let root = PosixRoot::open(dir.path(), false, false).unwrap().keeping_changed_since(since);
        fs::write(dir.path().join("mine"), b"someone else's").unwrap();
        for (name, replaced) in [("old", true), ("mine", false), ("new", true)] {
            let mut w = root.create_file(name, 0).unwrap();
            w.write(b"copy").unwrap();
            match w.commit(&meta(0o644, 0)) {
                Ok(_) => assert!(replaced, "{name} was replaced"),
                Err(Error::ChangedMeanwhile(p)) => {
                    assert!(!replaced, "{name} was kept");
                    assert!(p.ends_with(name), "{p}");
                }
                Err(e) => panic!("{name}: {e}"),
            }
            let want: &[u8] = if replaced { b"copy" } else { b"someone else's" };
            assert_eq!(fs::read(dir.path().join(name)).unwrap(), want, "{name}");
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 3, "no temporary file left");
        // Nor is it replaced by a symlink.
        assert!(matches!(
            root.create_symlink("mine", "elsewhere", &meta(0o777, 0)),
            Err(Error::ChangedMeanwhile(_))
        ));
        assert_eq!(fs::read(dir.path().join("mine")).unwrap(), b"someone else's");
        root.create_symlink("link", "elsewhere", &meta(0o777, 0)).unwrap();
        assert_eq!(fs::read_link(dir.path().join("link")).unwrap(), Path::new("elsewhere"));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 4, "no temporary link left: {names:?}");
        // Nor are its attributes changed in place.
        let mode = |name: &str| fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o7777;
        let before = mode("mine");
        assert!(matches!(root.set_file_attrs("mine", &meta(0o600, 0)), Err(Error::ChangedMeanwhile(_))));
        assert_eq!(mode("mine"), before);
    }

    /// A name free at the check but taken before the rename (by the user,
    /// in the moment between): the user's file stays.
    #[test]
    fn a_name_taken_after_the_check_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let (_, fd, _) = root.checked_parent("x").unwrap();
        let at = |name: &str| dir.path().join(name);
        fs::write(at("tmp"), b"copy").unwrap();
        fs::write(at("x"), b"the user's").unwrap();
        let e = place(&fd, "tmp", "x", Placing::IntoFreeName, &at("x")).unwrap_err();
        assert!(matches!(e, Error::ChangedMeanwhile(_)), "{e}");
        assert_eq!(fs::read(at("x")).unwrap(), b"the user's");
        place(&fd, "tmp", "y", Placing::IntoFreeName, &at("y")).unwrap();
        assert_eq!(fs::read(at("y")).unwrap(), b"copy");
        place(&fd, "y", "x", Placing::Replace, &at("x")).unwrap();
        assert_eq!(fs::read(at("x")).unwrap(), b"copy", "a plain copy replaces");
    }

    /// A file written by the user after the check, in the moment before
    /// the copy takes its name: the swap finds it changed and puts it back.
    #[test]
    fn a_file_written_after_the_check_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let (_, fd, _) = root.checked_parent("x").unwrap();
        let at = |name: &str| dir.path().join(name);
        fs::write(at("x"), b"the bucket's").unwrap();
        fs::write(at("tmp"), b"copy").unwrap();
        let how = unchanged_since(Some(0), &fd, "x", &at("x"));
        // ctime 0 is long past: any file there counts as changed.
        assert!(matches!(how, Err(Error::ChangedMeanwhile(_))));
        let how = unchanged_since(Some(i64::MAX), &fd, "x", &at("x")).unwrap();
        assert!(matches!(how, Placing::ReplaceUnchanged(_)), "{how:?}");
        // The user truncates and writes the file now.
        fs::write(at("x"), b"the user's, longer").unwrap();
        let e = place(&fd, "tmp", "x", how, &at("x")).unwrap_err();
        assert!(matches!(e, Error::ChangedMeanwhile(_)), "{e}");
        assert_eq!(fs::read(at("x")).unwrap(), b"the user's, longer");
        assert_eq!(fs::read(at("tmp")).unwrap(), b"copy", "the copy is left to its writer to remove");
        // Unchanged since the check: replaced, and nothing else left.
        let how = unchanged_since(Some(i64::MAX), &fd, "x", &at("x")).unwrap();
        place(&fd, "tmp", "x", how, &at("x")).unwrap();
        assert_eq!(fs::read(at("x")).unwrap(), b"copy");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["x"]);
        // A directory in the way is refused, never swapped.
        fs::create_dir(at("d")).unwrap();
        fs::write(at("tmp"), b"copy").unwrap();
        let how = unchanged_since(Some(i64::MAX), &fd, "d", &at("d")).unwrap();
        assert!(place(&fd, "tmp", "d", how, &at("d")).is_err());
        assert!(at("d").is_dir());
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let mut w = root.create_file("x", 0).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_made_in_place_meanwhile_fails_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let mut w = root.create_file("x", 0).unwrap();
        w.write(b"data").unwrap();
        fs::create_dir(dir.path().join("x")).unwrap();
        match w.commit(&meta(0o644, 0)) {
            Err(Error::InvalidName { reason, .. }) => assert!(reason.contains("directory"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["x"], "the directory stays, no temporary file left");
        assert!(dir.path().join("x").is_dir());
    }

    #[test]
    fn refuses_to_write_through_symlinks_or_outside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        assert!(matches!(root.create_file("link/evil", 0), Err(Error::SymlinkInPath(_))));
        assert!(matches!(root.create_file("../evil", 0), Err(Error::InvalidName { .. })));
        assert!(matches!(root.create_file("/etc/evil", 0), Err(Error::InvalidName { .. })));
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn listing_sweeps_temporary_files_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b"), b"1").unwrap();
        fs::write(dir.path().join("a"), b"1").unwrap();
        fs::write(dir.path().join(format!("{TEMP_PREFIX}0123")), b"partial").unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let l = root.list_dir("").unwrap();
        let names: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(!dir.path().join(format!("{TEMP_PREFIX}0123")).exists());
    }

    #[test]
    fn reader_detects_change() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"12345").unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let e = root.stat("f").unwrap().unwrap();
        let mut r = root.open_read(&e).unwrap();
        assert_eq!(&r.read_chunk(1024).unwrap().unwrap()[..], b"12345");
        r.check_unchanged().unwrap();
        fs::OpenOptions::new().append(true).open(dir.path().join("f")).unwrap().write_all(b"6").unwrap();
        assert!(matches!(r.check_unchanged(), Err(Error::SourceChanged(_))));
    }

    /// A directory of the destination swapped for a symlink to elsewhere
    /// while a file is being written into it (a user of the share racing
    /// ferry, which runs as root), with a file planted under the temporary
    /// name on the other side: the commit still lands in the directory that
    /// was checked, and nothing outside the root is renamed or written.
    #[test]
    fn a_parent_swapped_for_a_symlink_mid_write_cannot_redirect_the_commit() {
        let (_top, root_dir, outside) = root_and_outside();
        fs::create_dir_all(root_dir.join("d")).unwrap();
        let root = PosixRoot::open(&root_dir, false, false).unwrap();
        let mut w = root.create_file("d/f", 4).unwrap();
        w.write(b"mine").unwrap();
        let tmp_name = fs::read_dir(root_dir.join("d")).unwrap().next().unwrap().unwrap().file_name();
        fs::rename(root_dir.join("d"), root_dir.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("d")).unwrap();
        fs::write(outside.join(&tmp_name), b"planted").unwrap();
        let _ = w.commit(&PosixMeta::default());
        assert!(!outside.join("f").exists(), "the commit followed the symlink out of the root");
        assert_eq!(fs::read(outside.join(&tmp_name)).unwrap(), b"planted", "left as it was");
        assert_eq!(fs::read(root_dir.join("moved/f")).unwrap(), b"mine", "committed where it was written");
    }

    /// A directory of the source swapped for a symlink to elsewhere after
    /// the listing saw it, and a file swapped for a symlink to a file
    /// elsewhere (a user of the share racing ferry, which runs as root):
    /// nothing outside the root is listed, stat'ed or read.
    #[test]
    fn reads_never_follow_a_directory_or_file_swapped_for_a_symlink() {
        let (_top, root_dir, outside) = root_and_outside();
        fs::create_dir_all(root_dir.join("d")).unwrap();
        fs::write(root_dir.join("d/s"), b"mine").unwrap();
        fs::write(root_dir.join("f"), b"mine").unwrap();
        std::os::unix::fs::symlink("x", root_dir.join("d/l")).unwrap();
        fs::write(outside.join("s"), b"secret").unwrap();
        std::os::unix::fs::symlink("outside", outside.join("l")).unwrap();
        let root = PosixRoot::open(&root_dir, false, false).unwrap();
        let (in_d, f) = (root.stat("d/s").unwrap().unwrap(), root.stat("f").unwrap().unwrap());

        fs::rename(root_dir.join("d"), root_dir.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("d")).unwrap();
        fs::remove_file(root_dir.join("f")).unwrap();
        std::os::unix::fs::symlink(outside.join("s"), root_dir.join("f")).unwrap();

        assert!(matches!(root.list_dir("d"), Err(Error::SymlinkInPath(_))));
        assert!(matches!(root.stat("d/s"), Err(Error::SymlinkInPath(_))));
        assert!(matches!(root.read_link("d/l"), Err(Error::SymlinkInPath(_))));
        assert!(matches!(root.open_read(&in_d), Err(Error::SymlinkInPath(_))));
        let opened = root.open_read(&f);
        assert!(opened.is_err(), "read {:?} through a symlink", opened.unwrap().read_chunk(64));
        assert_eq!(
            root.stat("f").unwrap().unwrap().kind,
            EntryKind::Symlink,
            "the link itself, not its target"
        );
    }

    /// A removal acts through the descriptor of the directory the walk
    /// checked: that directory swapped for a symlink right after the walk
    /// (simulated here between the two steps `remove` takes), a directory
    /// to remove swapped for one after the listing saw it, or one inside the
    /// tree, leaves what the symlink points to alone.
    #[test]
    fn removals_never_follow_a_directory_swapped_for_a_symlink() {
        let (_top, root_dir, outside) = root_and_outside();
        fs::create_dir_all(root_dir.join("d/sub/deeper")).unwrap();
        fs::write(root_dir.join("d/sub/deeper/f"), b"mine").unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("sub/precious"), b"keep").unwrap();
        let root = PosixRoot::open(&root_dir, false, false).unwrap();

        let (fd, name) = root.parent_of("d/sub", false).unwrap();
        fs::rename(root_dir.join("d"), root_dir.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("d")).unwrap();
        assert!(matches!(root.remove("d/sub", EntryKind::Dir), Err(Error::SymlinkInPath(_))));
        remove_tree_at(&fd, name).unwrap();
        assert_eq!(fs::read(outside.join("sub/precious")).unwrap(), b"keep");
        assert!(!root_dir.join("moved/sub").exists(), "removed where the walk was");

        fs::create_dir_all(root_dir.join("e")).unwrap();
        std::os::unix::fs::symlink(outside.join("sub"), root_dir.join("e/inner")).unwrap();
        root.remove("e/inner", EntryKind::Dir).unwrap();
        assert!(fs::symlink_metadata(root_dir.join("e/inner")).is_err(), "the link itself is removed");
        assert_eq!(fs::read(outside.join("sub/precious")).unwrap(), b"keep");
        std::os::unix::fs::symlink(outside.join("sub"), root_dir.join("e/inner")).unwrap();
        root.remove("e", EntryKind::Dir).unwrap();
        assert!(!root_dir.join("e").exists());
        assert_eq!(fs::read(outside.join("sub/precious")).unwrap(), b"keep");
        root.remove("gone/already", EntryKind::File).unwrap();
        assert!(!root_dir.join("gone").exists(), "a removal creates nothing");
    }

    /// The sweep of temporary files removes them at every depth and never
    /// goes through a symlink to a directory elsewhere.
    #[test]
    fn the_sweep_removes_temporary_files_below_and_nothing_through_links() {
        let (_top, root_dir, outside) = root_and_outside();
        fs::create_dir_all(root_dir.join("x/y")).unwrap();
        fs::write(root_dir.join(format!("x/y/{TEMP_PREFIX}abc")), b"partial").unwrap();
        fs::write(root_dir.join(format!("{TEMP_PREFIX}top")), b"partial").unwrap();
        fs::write(root_dir.join("x/keep"), b"whole").unwrap();
        fs::write(outside.join(format!("{TEMP_PREFIX}theirs")), b"not ours").unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("x/link")).unwrap();
        let root = PosixRoot::open(&root_dir, false, false).unwrap();
        // A directory to sweep that a user swapped for a symlink (a task's
        // target, say): nothing is swept through it.
        assert_eq!(root.sweep_temp_files("x/link"), 0);
        assert_eq!(root.sweep_temp_files("x"), 1, "below x only");
        assert_eq!(root.sweep_temp_files(""), 1);
        assert!(root_dir.join("x/keep").exists());
        assert!(!root_dir.join(format!("x/y/{TEMP_PREFIX}abc")).exists());
        assert!(outside.join(format!("{TEMP_PREFIX}theirs")).exists(), "not through the link");
    }

    /// A root holding one file `f` of 5 bytes: the scratch directory, the
    /// file's path, the root, and the file as stat saw it.
    fn root_with_file_f() -> (tempfile::TempDir, std::path::PathBuf, PosixRoot, Entry) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"12345").unwrap();
        let root = PosixRoot::open(dir.path(), false, false).unwrap();
        let e = root.stat("f").unwrap().unwrap();
        (dir, path, root, e)
    }

    /// A file swapped for a FIFO after the listing saw it: reading it ends
    /// at once (short, so the item fails) instead of waiting for a writer.
    #[test]
    fn a_file_swapped_for_a_fifo_does_not_hang_its_reader() {
        let (_dir, path, root, e) = root_with_file_f();
        fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let read = root.open_read(&e).and_then(|mut r| r.read_chunk(1024)).map(|c| c.map(|b| b.len()));
            let _ = tx.send(read.map_err(|e| e.to_string()));
        });
        let read = rx.recv_timeout(Duration::from_secs(5)).expect("the reader returns");
        assert!(!matches!(read, Ok(Some(5))), "read the listed size from a FIFO: {read:?}");
    }

    /// A rewrite in place that keeps the size and puts the mtime back (as
    /// `cp -p` or a careless tool does) still moves the ctime.
    #[test]
    fn reader_detects_a_same_size_rewrite_with_its_mtime_put_back() {
        let (_dir, path, root, e) = root_with_file_f();
        let r = root.open_read(&e).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(b"54321").unwrap();
        fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        let now = root.stat("f").unwrap().unwrap();
        assert_eq!((now.size, now.mtime_ns), (e.size, e.mtime_ns), "size and mtime look unchanged");
        assert!(matches!(r.check_unchanged(), Err(Error::SourceChanged(_))));
    }
}
