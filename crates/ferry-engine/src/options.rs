use crate::filter::Filter;

/// How an item present on both sides is judged unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compare {
    /// Same size and modification time (the default, like rclone).
    #[default]
    SizeMtime,
    /// Same size and CRC32C of the content.
    Checksum,
    /// Never: copy everything.
    Force,
    /// Skip anything that exists at the destination.
    IgnoreExisting,
}

/// Post-copy verification, as in AWS DataSync's VerifyMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Sizes are checked and a CRC32C is computed while streaming; nothing is re-read.
    #[default]
    None,
    /// Every transferred item is read back and its CRC32C compared.
    Transferred,
    /// At the end, every file on both sides is compared by CRC32C.
    All,
}

/// Everything that shapes one sync run.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub compare: Compare,
    /// Skip items whose destination is newer than the source.
    pub update: bool,
    /// Delete destination items absent from the source (after a clean run only).
    pub delete: bool,
    /// Refuse to delete more than this many items.
    pub max_delete: Option<u64>,
    pub filter: Filter,
    /// Only these relative paths (files), instead of a full listing.
    pub files_from: Option<Vec<String>>,
    pub dry_run: bool,
    /// Items in flight at once. Small files each wait a round trip or
    /// more on the store, so many are needed to keep it busy; memory is
    /// bounded by `buffer_bytes`, not by this.
    pub threads: usize,
    /// File contents held in memory by the items in flight, at most: a
    /// small file whole, a large one its parts or ranges. Items wait for
    /// room.
    pub buffer_bytes: u64,
    /// Directory listings in flight at once.
    pub list_threads: usize,
    /// Entries of one directory level kept in memory while it
    /// is compared; larger levels are sorted through temporary files.
    pub level_in_memory: usize,
    /// Bytes per second for all transfers together.
    pub bwlimit: Option<u64>,
    pub verify: Verify,
    /// Attempts per item for temporary errors (on top of per-request retries).
    pub item_attempts: u32,
    /// A store that cannot be connected to for this long (no item has
    /// succeeded meanwhile) stops the run, rather than every item left
    /// failing in turn after its retries.
    pub unreachable_limit: std::time::Duration,
    /// Read chunk size for local files.
    pub chunk: usize,
    /// Follow symlinks in the source instead of copying them as links.
    pub copy_links: bool,
    /// Give every written entry these attributes instead of the source's
    /// (a preload applies the target's defaults, not what objects carry).
    pub attributes: Option<ForcedAttributes>,
    /// Bring mode, owner and group of copies whose content is up to date
    /// in line with their source (in place locally, by writing objects
    /// again). Off where another record decides what changed (exports).
    pub update_attributes: bool,
    /// A resumed run counts the items its interrupted attempts copied as
    /// transferred, not skipped: a task's counters span its attempts (the
    /// service), where a rerun of the CLI reports what it did itself.
    pub count_earlier_attempts: bool,
    /// Destination files the run leaves as they are, whatever the source
    /// holds: a share's files created or changed since its last export,
    /// which a preload must not replace. Counted as skipped.
    pub keep: Option<std::sync::Arc<std::collections::HashSet<String>>>,
    /// Let the store copy files between two of its buckets itself, when
    /// both locations are on one S3 endpoint with the same credentials.
    pub store_copy: bool,
    /// Files larger than this are copied within the store in parts
    /// (UploadPartCopy, faster than one CopyObject on the stores
    /// measured); CopyObject takes at most 5 GiB.
    pub copy_cutoff: u64,
}

/// Attributes that replace the source's on everything a run writes; the
/// modification time still comes from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForcedAttributes {
    pub file_mode: u32,
    pub dir_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            compare: Compare::default(),
            update: false,
            delete: false,
            max_delete: None,
            filter: Filter::default(),
            files_from: None,
            dry_run: false,
            threads: 256,
            buffer_bytes: 256 << 20,
            list_threads: 8,
            level_in_memory: 200_000,
            bwlimit: None,
            verify: Verify::default(),
            item_attempts: 3,
            unreachable_limit: std::time::Duration::from_secs(30),
            chunk: 8 << 20,
            copy_links: false,
            attributes: None,
            update_attributes: true,
            count_earlier_attempts: false,
            keep: None,
            store_copy: true,
            copy_cutoff: 64 << 20,
        }
    }
}

impl SyncOptions {
    /// The part of the options that changes what a run does: a checkpoint is
    /// only reused by a run with the same key.
    pub fn plan_key(&self) -> String {
        format!(
            "compare={:?};update={};filter={};files_from={};attributes={:?}",
            self.compare,
            self.update,
            self.filter.describe(),
            self.files_from.as_ref().map(|f| f.len()).unwrap_or(0),
            self.attributes
        )
    }
}
