//! Types shared by every ferry crate: entries, POSIX metadata, the rules a
//! relative path must follow before ferry reads or writes anything with it,
//! and the wire types of the SFS Turbo-compatible API ([`hpc`]).
//!
//! Nothing here does IO.

pub mod hpc;
mod path;

pub use path::{validate_rel_path, NameError, MAX_COMPONENT_BYTES, MAX_PATH_BYTES};

use serde::{Deserialize, Serialize};

/// What an entry is. Objects are files unless their metadata says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// POSIX attributes of an entry. `None` means "not known" (an object written
/// by a tool that stores no attributes), never "zero".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixMeta {
    /// Permission bits only (`0o7777` at most); the file type lives in [`EntryKind`].
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: Option<i64>,
    /// Access time in nanoseconds since the Unix epoch, as it was when the
    /// entry was listed. Kept, never compared: reading a file changes it.
    #[serde(default)]
    pub atime_ns: Option<i64>,
}

/// One entry of a listing, relative to the root of a location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the location root, `/`-separated, no leading or trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    /// Content length for files, target length for symlinks, 0 for directories.
    pub size: u64,
    /// Modification time as far as the listing knows it.
    pub mtime_ns: Option<i64>,
    /// Whether `mtime_ns` is exact (a POSIX stat or stored metadata), or only
    /// the store's second-precision upload time.
    pub mtime_exact: bool,
    /// Attributes; for objects only filled once the object was looked at
    /// (`meta_loaded`), listings do not carry them.
    pub meta: PosixMeta,
    pub meta_loaded: bool,
    /// Object ETag (as the store returned it) when there is one.
    pub etag: Option<String>,
    /// Local identity: (device, inode, link count, ctime ns) for POSIX entries.
    pub local: Option<LocalStat>,
    /// CRC32C of the content when the store recorded one.
    pub crc32c: Option<u32>,
    /// MD5 of the content when another tool recorded one in the object's
    /// metadata (rclone's `md5chksum`, kept for its multipart uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<[u8; 16]>,
}

/// The parts of a local `stat` that identify a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStat {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub ctime_ns: i64,
}

impl Entry {
    /// A directory known only by its path (implied by the keys below it).
    pub fn dir(path: &str) -> Self {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Dir,
            size: 0,
            mtime_ns: None,
            mtime_exact: false,
            meta: PosixMeta::default(),
            meta_loaded: false,
            etag: None,
            local: None,
            crc32c: None,
            md5: None,
        }
    }

    /// The last path component.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// Join a directory path and a name with `/`, where the empty string is the root.
pub fn join_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_name() {
        assert_eq!(join_path("", "a"), "a");
        assert_eq!(join_path("a/b", "c"), "a/b/c");
        let e = Entry { kind: EntryKind::File, ..Entry::dir("a/b/c.txt") };
        assert_eq!(e.name(), "c.txt");
        assert_eq!(Entry::dir("top").name(), "top");
    }
}
