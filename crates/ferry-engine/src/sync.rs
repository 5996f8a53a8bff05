//! One sync run. Like rclone's `sync.go`, the algorithm reads top to bottom:
//! walk source and destination together directory by directory, feed each
//! item through a bounded pool that checks and transfers it, then delete
//! extraneous destination items (only when nothing failed), then report.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_model::{validate_rel_path, Entry, EntryKind, PosixMeta};
use ferry_storage::{
    Error as StorageError, Location, Marker, Md5Check, ObjectRoot, PartCrcs, Sink, SortedLevel, StoredCrc,
};
use ferry_store::DoneItem;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::checkpoint::{self, CheckpointSpec, Recorder};
use crate::options::{Compare, SyncOptions, Verify};
use crate::progress::{Moving, Progress, Report};
use crate::ratelimit::RateLimit;
use crate::Result;

/// Files up to this size are read whole before the destination is opened,
/// so that their checksum can be stored with them.
const SMALL_FILE: u64 = 8 << 20;
/// Ranged GETs in flight, at most, for one large object downloaded to a
/// local file.
const DOWNLOAD_STREAMS: u64 = 4;
/// Bytes of an object per ranged GET, up to [`DOWNLOAD_STREAMS`] of them
/// (150 objects of 12 MiB from garage: 2 GETs each instead of 4, 10-20%
/// faster and 10 MiB less peak RSS).
const RANGE_MIN: u64 = 8 << 20;
/// Items queued between the scan and the transfer pool.
const QUEUE: usize = 4096;

/// A configured sync between two opened locations.
pub struct Sync {
    src: Location,
    dst: Location,
    opts: SyncOptions,
    progress: Arc<Progress>,
    checkpoint: Option<CheckpointSpec>,
}

/// State shared by the scan, the transfer pool and the deletion phase.
struct Run {
    /// Where items come from.
    src: Location,
    /// Where items go.
    dst: Location,
    /// What the user asked for.
    opts: SyncOptions,
    /// Live counters, failures, warnings and plan lines.
    progress: Arc<Progress>,
    /// Shared `--bwlimit` bucket.
    limiter: Option<RateLimit>,
    /// Room for file contents in flight, in KiB (`SyncOptions::buffer_bytes`).
    buffers: tokio::sync::Semaphore,
    /// Done set of this run, when checkpoints are on.
    recorder: Option<Recorder>,
    /// Some listing failed: no deletion may run.
    listing_failed: AtomicBool,
    /// When an item last succeeded, in ms since `started`.
    last_ok_ms: AtomicU64,
    started: Instant,
    /// Why the run stopped early: no more items are tried.
    stopped: std::sync::OnceLock<String>,
    /// The source's root lists nothing and may not be there at all
    /// ([`Location::empty_means_missing`]): no deletion may run.
    source_missing: AtomicBool,
    /// Destination entries absent from the source (top-most only), as listed.
    extraneous: Mutex<Vec<Entry>>,
    /// Source files with more than one link, by (device, inode).
    hard_links: Mutex<HashMap<(u64, u64), Vec<String>>>,
    /// Verification pass: report differences instead of copying.
    check_only: bool,
    /// Directories already walked, by (device, inode), when following symlinks.
    visited: Mutex<std::collections::HashSet<(u64, u64)>>,
    /// Source directories with an exact mtime, to give their copies on a
    /// local destination once everything inside is written (one entry per
    /// directory, not per file).
    dir_times: Mutex<Vec<(String, i64)>>,
    /// Files are copied by the store itself (two buckets of one store,
    /// [`ferry_storage::ObjectRoot::copies_from`]); off once it refuses.
    store_copy: AtomicBool,
}

/// A directory level for the walk to compare.
struct Walk {
    path: String,
    /// The source directory (`None` for the root of the run).
    src: Option<Entry>,
    dst: WalkDst,
    /// Mode, owner and group of the destination directory, when it exists
    /// and is local.
    dst_meta: Option<PosixMeta>,
    /// The checkpoint holds this (local) directory as it is now: its copy's
    /// attributes need no look.
    known: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WalkDst {
    /// Present at the destination: list it there too.
    Exists,
    /// Missing: created when the walk reaches it, with its attributes.
    Create,
    /// Missing and not to be created (a dry run): everything in it is new.
    Missing,
}

/// One file or symlink to check and maybe transfer.
struct Item {
    src: Entry,
    dst: Option<Entry>,
    /// Parent directory (for the checkpoint).
    dir: String,
}

enum Outcome {
    /// Up to date; with the destination version to remember when it was checked in full.
    Skipped(Option<String>),
    /// Copied: bytes, and the new destination version when the store gave one.
    Transferred(u64, Option<String>),
    /// Left out by `--min-age`/`--max-age` once its time was looked up.
    Excluded,
}

impl Sync {
    pub fn new(src: Location, dst: Location, opts: SyncOptions) -> Self {
        Self { src, dst, opts, progress: Arc::new(Progress::default()), checkpoint: None }
    }

    /// Like [`Sync::new`], counting into `progress` (a task's live counters).
    pub fn with_progress(src: Location, dst: Location, opts: SyncOptions, progress: Arc<Progress>) -> Self {
        Self { src, dst, opts, progress, checkpoint: None }
    }

    /// Record finished items so that a rerun after a crash skips them.
    pub fn with_checkpoint(mut self, spec: CheckpointSpec) -> Self {
        self.checkpoint = Some(spec);
        self
    }

    /// Live counters, for progress displays.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub async fn run(self) -> Result<Report> {
        let start = Instant::now();
        let (src_name, dst_name) = (self.src.display(), self.dst.display());
        let key = format!("{src_name}\n{dst_name}\n{}", self.opts.plan_key());
        let recorder = match (&self.checkpoint, self.opts.dry_run) {
            (Some(spec), false) => Some(Recorder::start(spec, &key, &src_name, &dst_name).await?),
            // A dry run plans what the run would do, which trusts the
            // checkpoint: it reads the done set (so an unchanged tree costs
            // no request there either) and writes nothing.
            (Some(spec), true) => Recorder::read_only(spec, &key).await?,
            (None, _) => None,
        };
        let resumed = recorder.as_ref().is_some_and(|r| r.checkpoint.resumed);
        let mut aborted_uploads = 0;
        if let (Some(window), Location::Object(dst)) =
            (recorder.as_ref().and_then(|r| r.checkpoint.interrupted), &self.dst)
        {
            if dst.tracks_uploads() {
                aborted_uploads =
                    checkpoint::abort_left_uploads(&self.src, dst, window, &self.progress).await;
            }
        }
        let store_copy = self.opts.store_copy
            && matches!((&self.src, &self.dst), (Location::Object(s), Location::Object(d)) if d.copies_from(s));
        let run = Arc::new(Run {
            limiter: self.opts.bwlimit.map(RateLimit::new),
            buffers: buffer_room(&self.opts),
            src: self.src,
            dst: self.dst,
            opts: self.opts,
            progress: self.progress.clone(),
            recorder,
            listing_failed: AtomicBool::new(false),
            last_ok_ms: AtomicU64::new(0),
            started: Instant::now(),
            stopped: Default::default(),
            source_missing: AtomicBool::new(false),
            extraneous: Mutex::new(Vec::new()),
            hard_links: Mutex::new(HashMap::new()),
            check_only: false,
            visited: Mutex::new(Default::default()),
            dir_times: Mutex::new(Vec::new()),
            store_copy: AtomicBool::new(store_copy),
        });

        run.clone().scan_and_transfer().await;

        let p = &run.progress;
        let mut delete_skipped = None;
        if run.opts.delete {
            delete_skipped = run.delete_extraneous().await;
        }
        // Last: writing and deleting inside a directory changes its mtime.
        run.set_dir_times().await;

        let mut verify_failed = 0;
        if run.opts.verify == Verify::All && !run.opts.dry_run && p.failed.load(Relaxed) == 0 {
            verify_failed = run.verify_all().await;
        }

        let stopped = run.stopped.get().cloned();
        let success = p.failed.load(Relaxed) == 0
            && p.other_failed.load(Relaxed) == 0
            && verify_failed == 0
            && stopped.is_none();
        let mut run = Arc::try_unwrap(run).ok().expect("run still shared after completion");
        if let Some(trouble) = run.recorder.as_mut().map(|rec| rec.finish(success)) {
            if let Some(warning) = trouble.await {
                run.progress.warn(warning);
            }
        }
        let progress = run.progress.clone();
        let dry_run = run.opts.dry_run;
        let checkpoint_run = run.recorder.as_ref().filter(|_| !dry_run).map(|r| r.checkpoint.run_id);
        let p = &progress;
        let mut hard_links: Vec<Vec<String>> = run
            .hard_links
            .into_inner()
            .expect("hard link lock")
            .into_values()
            .filter(|g| g.len() > 1)
            .collect();
        hard_links.sort();
        for group in &hard_links {
            p.warn(format!("hard links copied as separate files: {}", group.join(", ")));
        }
        // Left in the progress too: a task reports them from there.
        let failures = p.failures.lock().expect("lock").lines();
        let warnings = std::mem::take(&mut *p.warnings.lock().expect("lock"));
        let plan = p.plan.lock().expect("lock").lines();
        let failed = p.failed.load(Relaxed);
        let other_failures = p.other_failed.load(Relaxed) + verify_failed;
        let report = Report {
            source: src_name,
            destination: dst_name,
            dry_run,
            listed: p.listed.load(Relaxed),
            transferred: p.transferred.load(Relaxed),
            transferred_bytes: p.transferred_bytes.load(Relaxed),
            copied_in_store: p.copied_in_store.load(Relaxed),
            skipped: p.skipped.load(Relaxed),
            failed,
            other_failures,
            excluded: p.excluded.load(Relaxed),
            deleted: p.deleted.load(Relaxed),
            elapsed_seconds: start.elapsed().as_secs_f64(),
            resumed,
            aborted_uploads,
            delete_skipped,
            source_missing: run.source_missing.load(Relaxed),
            not_tried: p.not_tried.load(Relaxed),
            stopped,
            failures_omitted: (failed + other_failures).saturating_sub(failures.len() as u64),
            failures,
            warnings,
            hard_links,
            plan_omitted: p.planned.load(Relaxed).saturating_sub(plan.len() as u64),
            plan,
            checkpoint_run,
        };
        // A service between tasks should not keep a run's read buffers.
        ferry_storage::buffers::release();
        Ok(report)
    }
}

impl Run {
    /// Attributes to give the copy of `s`: the source's, or the forced ones.
    fn write_meta(&self, s: &Entry) -> PosixMeta {
        let meta = write_meta(s);
        match self.opts.attributes {
            None => meta,
            Some(f) => PosixMeta {
                mode: Some(if s.kind == EntryKind::Dir { f.dir_mode } else { f.file_mode }),
                uid: Some(f.uid),
                gid: Some(f.gid),
                mtime_ns: meta.mtime_ns,
                atime_ns: meta.atime_ns,
            },
        }
    }

    /// Scan and transfer concurrently; the queue between them bounds memory.
    async fn scan_and_transfer(self: Arc<Self>) {
        let (tx, rx) = mpsc::channel::<Item>(QUEUE);
        let scan = {
            let run = self.clone();
            async move {
                if let Some(paths) = run.opts.files_from.clone() {
                    run.scan_list(&paths, tx).await;
                } else {
                    run.scan_tree(tx).await;
                }
                run.progress.scan_done.store(true, Relaxed);
            }
        };
        tokio::join!(scan, self.clone().transfer(rx));
    }

    /// `threads` items at a time. Small items (written in one piece) are
    /// tasks of their own: polled together inside the run's one future they
    /// ran on one thread, apart from the connection tasks that carry their
    /// requests, and every response woke that thread from another (a
    /// download of small files spent a third of its CPU time in wake-ups
    /// and thread switches). Larger items stay in the run's future: their
    /// chunk writes (`block_in_place`) on the runtime's workers would hand
    /// each worker over to another thread, and every thread that allocates
    /// keeps malloc arenas of its own (a 4 × 1 GiB download peaked at
    /// 50 MiB instead of 31). Dropping the run (a cancelled task) aborts
    /// the spawned items too.
    async fn transfer(self: Arc<Self>, mut rx: mpsc::Receiver<Item>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.opts.threads.max(1)));
        let mut small = tokio::task::JoinSet::new();
        let mut large = FuturesUnordered::new();
        let reap = |r: Result<(), tokio::task::JoinError>| match r {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => {}
        };
        loop {
            let next = async {
                let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
                rx.recv().await.map(|item| (item, slot))
            };
            tokio::select! {
                Some(()) = large.next(), if !large.is_empty() => {}
                Some(r) = small.join_next(), if !small.is_empty() => reap(r),
                got = next => {
                    let Some((item, slot)) = got else { break };
                    let in_one_piece = item.src.size <= SMALL_FILE;
                    let run = self.clone();
                    let work = async move {
                        run.handle(item).await;
                        drop(slot);
                    };
                    if in_one_piece {
                        small.spawn(work);
                    } else {
                        large.push(work);
                    }
                }
            }
        }
        tokio::join!(async { while large.next().await.is_some() {} }, async {
            while let Some(r) = small.join_next().await {
                reap(r);
            }
        });
    }

    /// Walk both trees level by level, several directories at a time.
    async fn scan_tree(self: &Arc<Self>, tx: mpsc::Sender<Item>) {
        if self.opts.copy_links {
            if let Ok(Some((root, _))) = self.src.stat("").await {
                if let Some(l) = root.local {
                    self.visited.lock().expect("lock").insert((l.dev, l.ino));
                }
            }
        }
        let root = Walk { path: String::new(), src: None, dst: WalkDst::Exists, dst_meta: None, known: true };
        let mut queue: VecDeque<Walk> = VecDeque::from([root]);
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < self.opts.list_threads.max(1) && self.stopped.get().is_none() {
                let Some(walk) = queue.pop_back() else { break };
                let run = self.clone();
                let tx = tx.clone();
                running.push(async move { run.scan_dir(walk, tx).await });
            }
            match running.next().await {
                Some(subdirs) => queue.extend(subdirs),
                None => break,
            }
        }
    }

    /// `--files-from`: look at each named path instead of listing.
    async fn scan_list(self: &Arc<Self>, paths: &[String], tx: mpsc::Sender<Item>) {
        let mut settled = std::collections::HashSet::new();
        for path in paths {
            if self.stopped.get().is_some() {
                return;
            }
            let p = &self.progress;
            p.listed.fetch_add(1, Relaxed);
            if let Err(e) = validate_rel_path(path) {
                p.fail(path, format!("unusable path in --files-from: {e}"));
                continue;
            }
            let src = match self.src.stat(path).await {
                Ok(Some((e, _))) if e.kind != EntryKind::Dir => e,
                Ok(Some(_)) => {
                    p.fail(path, "is a directory; --files-from lists files");
                    continue;
                }
                Ok(None) => {
                    p.fail(path, "not found in the source");
                    continue;
                }
                Err(e) => {
                    p.fail(path, e.to_string());
                    continue;
                }
            };
            if !self.opts.filter.file_included(path, src.size) {
                p.excluded.fetch_add(1, Relaxed);
                continue;
            }
            p.listed_bytes.fetch_add(src.size, Relaxed);
            let dst = match self.dst.stat(path).await {
                Ok(found) => found.map(|(e, _)| e),
                Err(e) => {
                    p.fail_file(path, src.size, format!("cannot check destination: {e}"));
                    continue;
                }
            };
            let dir = path.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
            self.settle_parents(&dir, &mut settled).await;
            if tx.send(Item { src, dst, dir }).await.is_err() {
                return;
            }
        }
    }

    /// `--files-from`: the directories above a listed file that are missing
    /// at the destination get their source's attributes (and, on a local
    /// tree, its mtime at the end), as a full run would give them: a local
    /// directory, or a marker object. Existing ones are left alone. Service
    /// exports (which do not update attributes) skip this.
    async fn settle_parents(&self, dir: &str, settled: &mut std::collections::HashSet<String>) {
        let wanted = self.note_dir_times()
            || (!self.dst.is_posix()
                && self.opts.update_attributes
                && !self.opts.dry_run
                && !self.check_only);
        if !wanted || dir.is_empty() {
            return;
        }
        let mut at = String::new();
        for part in dir.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            // Only a directory surely missing is made: a marker that could
            // not be read (one holding data, say) is left as it is.
            if !settled.insert(at.clone()) || !matches!(self.dst.stat_dir(&at).await, Ok(None)) {
                continue;
            }
            // Unreadable source attributes: the file's copy creates the
            // directory with default ones, as before.
            let Ok(Some((s, _))) = self.src.stat_dir(&at).await else { continue };
            if self.dst.create_dir(&at, &self.write_meta(&s)).await.is_ok() {
                self.note_dir_time(&s);
            }
        }
    }

    /// Compare one directory level; returns the subdirectories to walk.
    async fn scan_dir(&self, walk: Walk, tx: mpsc::Sender<Item>) -> Vec<Walk> {
        let p = &self.progress;
        let dir = walk.path;
        let shown = if dir.is_empty() { "/" } else { dir.as_str() };
        let in_memory = self.opts.level_in_memory;
        let mut src_list = match self.src.list_level(&dir, in_memory).await {
            Ok(l) => l,
            Err(e) => {
                self.listing_failed.store(true, Relaxed);
                // A directory still to be made was listed at its parent and
                // is not counted yet: its failure is that item's outcome.
                if !(walk.src.is_some() && walk.dst == WalkDst::Create) {
                    p.listed.fetch_add(1, Relaxed);
                }
                p.fail(shown, format!("listing the source failed: {e}"));
                return Vec::new();
            }
        };
        if dir.is_empty()
            && self.src.empty_means_missing()
            && !src_list.marker.exists()
            && src_list.rejected.is_empty()
            && src_list.peek().is_none()
        {
            self.source_missing.store(true, Relaxed);
        }
        if dir.is_empty() && src_list.marker == Marker::MayHoldData {
            // The marker of the listed prefix itself: no parent level settles it.
            if let Err(e @ StorageError::MarkerHoldsData { .. }) = self.src.stat_dir("").await {
                p.fail_other("/", e.to_string());
            }
        }
        if let Some(s) = walk.src {
            if !self.settle_dir(s, walk.dst, walk.dst_meta, src_list.marker, walk.known).await {
                return Vec::new();
            }
        }
        let mut dst_list = if walk.dst == WalkDst::Exists {
            match self.dst.list_level(&dir, in_memory).await {
                Ok(l) => l,
                Err(e) if e.is_not_found() => SortedLevel::empty(),
                Err(e) => {
                    self.listing_failed.store(true, Relaxed);
                    p.listed.fetch_add(1, Relaxed);
                    p.fail(shown, format!("listing the destination failed: {e}"));
                    return Vec::new();
                }
            }
        } else {
            SortedLevel::empty()
        };
        if dir.is_empty() {
            self.mark_empty_root(&mut src_list, &mut dst_list).await;
        }
        let mut done = self.recorder.as_ref().map(|r| r.done_in_dir(&dir));
        let resumed = self.recorder.as_ref().is_some_and(|r| r.checkpoint.resumed);
        let generation = self.recorder.as_ref().map_or(0, |r| r.checkpoint.generation);
        // A listing read back from temporary files can still fail midway:
        // then nothing more of this level is compared, and --delete is off.
        let broken = |side: &str, e: StorageError| {
            self.listing_failed.store(true, Relaxed);
            p.listed.fetch_add(1, Relaxed);
            p.fail(shown, format!("listing the {side} failed: {e}"));
        };

        let mut subdirs = Vec::new();
        let mut complete = true;
        'level: for s in src_list.by_ref() {
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    broken("source", e);
                    complete = false;
                    break;
                }
            };
            // Destination entries that sort before this one are extraneous.
            let mut d = None;
            while let Some(next) = dst_list.next_if(|d| d.path <= s.path) {
                match next {
                    Ok(x) if x.path < s.path => self.note_extraneous(x),
                    Ok(x) => d = Some(x),
                    Err(e) => {
                        broken("destination", e);
                        complete = false;
                        break 'level;
                    }
                }
            }
            p.listed.fetch_add(1, Relaxed);
            if s.kind == EntryKind::Dir {
                if !self.opts.filter.dir_included(&s.path) {
                    p.excluded.fetch_add(1, Relaxed);
                    continue;
                }
                // Asked in name order, with the files of this level.
                let known = match &mut done {
                    Some(c) => c.get(s.name()).await,
                    None => None,
                };
                let known = known.is_some_and(|k| {
                    k.ctime_ns.is_some()
                        && k.ctime_ns == s.local.map(|l| l.ctime_ns)
                        && Some(k.mtime_ns) == s.mtime_ns
                });
                if let Some(dst) = self.scan_subdir(&s, d.as_ref()) {
                    let dst_meta = d.filter(|d| d.local.is_some()).map(|d| d.meta);
                    subdirs.push(Walk { path: s.path.clone(), src: Some(s), dst, dst_meta, known });
                }
                continue;
            }
            // Times not known exactly yet (objects) are looked up by the worker.
            if !self.opts.filter.file_included(&s.path, s.size)
                || s.mtime_exact && !self.opts.filter.time_included(s.mtime_ns)
            {
                p.excluded.fetch_add(1, Relaxed);
                continue;
            }
            p.listed_bytes.fetch_add(s.size, Relaxed);
            if let Some(l) = s.local.filter(|l| l.nlink > 1 && s.kind == EntryKind::File) {
                self.hard_links.lock().expect("lock").entry((l.dev, l.ino)).or_default().push(s.path.clone());
            }
            // Known up to date: the source is as it was when copied, and the
            // destination is still the version ferry wrote or checked (or, when
            // resuming an interrupted run, still there with the right size).
            let known = match (&mut done, &d) {
                (Some(c), Some(_)) => c.get(s.name()).await,
                _ => None,
            };
            if let (Some(k), Some(dd)) = (known, &d) {
                let (size, version) = (k.size, k.dst_version);
                // A chmod or chown moves only the ctime of a local source.
                let ctime = s.local.map(|l| l.ctime_ns);
                let src_same = size == s.size
                    && Some(k.mtime_ns) == s.mtime_ns
                    && (k.ctime_ns.is_none() || k.ctime_ns == ctime);
                let dst_same = dd.size == s.size
                    && dd.kind == s.kind
                    && (resumed || version.is_some() && version == dst_version(dd));
                // --force re-copies everything; --checksum trusts (size, mtime)
                // only to resume an interrupted run.
                let mode_allows = match self.opts.compare {
                    Compare::Force => false,
                    Compare::Checksum => resumed,
                    Compare::SizeMtime | Compare::IgnoreExisting => true,
                };
                if src_same && dst_same && mode_allows {
                    if resumed && self.opts.count_earlier_attempts && k.transferred_gen == Some(generation) {
                        p.transferred.fetch_add(1, Relaxed);
                        p.transferred_bytes.fetch_add(size, Relaxed);
                    } else {
                        p.skipped.fetch_add(1, Relaxed);
                        p.skipped_bytes.fetch_add(size, Relaxed);
                    }
                    continue;
                }
            }
            if tx.send(Item { src: s, dst: d, dir: dir.clone() }).await.is_err() {
                return subdirs;
            }
        }
        while let (true, Some(d)) = (complete, dst_list.next()) {
            match d {
                Ok(d) => self.note_extraneous(d),
                Err(e) => {
                    broken("destination", e);
                    complete = false;
                }
            }
        }
        for (path, reason) in &src_list.rejected {
            p.listed.fetch_add(1, Relaxed);
            p.fail(path, reason.clone());
        }
        for (path, reason) in &dst_list.rejected {
            p.warn(format!("destination entry {path:?} left alone: {reason}"));
        }
        subdirs
    }

    /// An empty source tree copied to a prefix inside a bucket: the prefix
    /// gets its `prefix/` marker (with the root's attributes), or nothing
    /// would show that it exists and a copy back would find nothing there.
    async fn mark_empty_root(&self, src_list: &mut SortedLevel, dst_list: &mut SortedLevel) {
        if self.opts.dry_run
            || self.check_only
            || !self.dst.empty_means_missing()
            || self.source_missing.load(Relaxed)
            || src_list.peek().is_some()
            || !src_list.rejected.is_empty()
            || dst_list.marker.exists()
            || dst_list.peek().is_some()
        {
            return;
        }
        let meta = match self.src.stat_dir("").await {
            Ok(Some((root, _))) => self.write_meta(&root),
            _ => PosixMeta::default(),
        };
        if let Err(e) = self.dst.create_dir("", &meta).await {
            self.progress.warn(format!("the destination prefix's marker was not written: {e}"));
        }
    }

    /// What to do with a source directory at the destination; `None` when
    /// it cannot be walked.
    fn scan_subdir(&self, s: &Entry, d: Option<&Entry>) -> Option<WalkDst> {
        let p = &self.progress;
        if let (true, Some(l)) = (self.opts.copy_links, s.local) {
            if !self.visited.lock().expect("lock").insert((l.dev, l.ino)) {
                p.fail(
                    &s.path,
                    "directory already copied through another path (symlink loop?); not followed again",
                );
                return None;
            }
        }
        match d {
            Some(d) if d.kind == EntryKind::Dir => {
                p.skipped.fetch_add(1, Relaxed);
                Some(WalkDst::Exists)
            }
            Some(_) => {
                p.fail(&s.path, "a file of the same name is in the way at the destination");
                None
            }
            None if self.check_only => {
                p.fail(&s.path, "directory missing at the destination");
                None
            }
            None if self.opts.dry_run => {
                p.plan("mkdir", &s.path, None, "missing");
                p.transferred.fetch_add(1, Relaxed);
                Some(WalkDst::Missing)
            }
            None => Some(WalkDst::Create),
        }
    }

    /// Bring a directory the walk has reached to the destination: read the
    /// attributes kept on its source marker object when they are needed,
    /// create it when missing (or give an existing local one the source's
    /// mode, owner and group), and remember its mtime. `false` when it could
    /// not be created (nothing below it is walked).
    async fn settle_dir(
        &self,
        mut s: Entry,
        dst: WalkDst,
        dst_meta: Option<PosixMeta>,
        marker: Marker,
        known: bool,
    ) -> bool {
        let p = &self.progress;
        let wanted = dst == WalkDst::Create || (dst == WalkDst::Exists && self.note_dir_times());
        // A marker that may hold data is looked at on every run: its data
        // is reported each time, as it is never copied.
        let look = wanted || marker == Marker::MayHoldData;
        if marker.exists() && look && !s.meta_loaded {
            match self.src.stat_dir(&s.path).await {
                Ok(Some((full, warnings))) => {
                    for w in warnings {
                        p.warn(format!("{}: {w}", s.path));
                    }
                    s = full;
                }
                Ok(None) => {}
                // The directory is still made, for what is below it; the
                // marker's data could not go anywhere.
                Err(e @ StorageError::MarkerHoldsData { .. }) => {
                    p.fail_other(&format!("{}/", s.path), e.to_string())
                }
                // The content can still be copied: the directory gets
                // default attributes.
                Err(e) => p.warn(format!("{}: directory attributes not read: {e}", s.path)),
            }
        }
        let want = self.write_meta(&s);
        if dst == WalkDst::Create {
            if let Err(e) = self.dst.create_dir(&s.path, &want).await {
                p.fail(&s.path, format!("cannot create directory: {e}"));
                return false;
            }
            p.transferred.fetch_add(1, Relaxed);
        } else if let Some(have) =
            // Forced attributes (a preload) are for what the run creates: an
            // existing directory keeps what import or its users gave it.
            dst_meta.filter(|_| {
                self.dst.is_posix() && !self.check_only && s.meta_loaded && self.opts.attributes.is_none()
            })
        {
            if attrs_change(&want, &have, true) {
                if self.opts.dry_run {
                    p.plan("update", &s.path, None, ATTRS_DIFFER);
                } else if let Err(e) = self.dst.create_dir(&s.path, &want).await {
                    // Applied to the existing directory (only what can
                    // change: owner and group need root).
                    p.warn(format!("{}: directory attributes not updated: {e}", s.path));
                }
            }
        } else if dst == WalkDst::Exists && !known && self.dir_marker_checked(&s) {
            // A local directory whose copy is a marker object: look at the
            // marker unless the checkpoint says the directory is as it was.
            let rewrite = match self.dst.stat_dir(&s.path).await {
                Ok(Some((have, _))) if !self.attrs_differ(&s, &have) => false,
                Ok(_) if self.opts.dry_run => {
                    p.plan("update", &s.path, None, ATTRS_DIFFER);
                    true
                }
                Ok(_) => match self.dst.create_dir(&s.path, &want).await {
                    Ok(()) => true,
                    Err(e) => {
                        p.warn(format!("{}: directory attributes not updated: {e}", s.path));
                        false
                    }
                },
                Err(e) => {
                    p.warn(format!("{}: directory attributes not checked: {e}", s.path));
                    false
                }
            };
            if rewrite {
                p.skipped.fetch_sub(1, Relaxed);
                p.transferred.fetch_add(1, Relaxed);
            }
        }
        if dst != WalkDst::Missing && !known && !self.opts.dry_run && self.dir_marker_checked(&s) {
            self.remember_dir(&s).await;
        }
        if dst != WalkDst::Missing {
            self.note_dir_time(&s);
        }
        true
    }

    /// Whether a local directory's copy is an object store's marker whose
    /// attributes a run keeps in line (see [`Self::attrs_differ`]).
    fn dir_marker_checked(&self, s: &Entry) -> bool {
        s.local.is_some() && !self.dst.is_posix() && !self.check_only
    }

    /// Record a directory as settled, with its ctime, so that the next run
    /// looks at its marker only when a chmod, chown or new entry moved it.
    async fn remember_dir(&self, s: &Entry) {
        if let Some(rec) = &self.recorder {
            let (parent, name) = s.path.rsplit_once('/').unwrap_or(("", s.path.as_str()));
            rec.record(DoneItem {
                dir: parent.to_string(),
                name: name.to_string(),
                size: 0,
                mtime_ns: s.mtime_ns.unwrap_or(0),
                ctime_ns: s.local.map(|l| l.ctime_ns),
                dst_version: None,
                transferred_gen: None,
            })
            .await;
        }
    }

    /// Whether directory mtimes are set at the end of the run.
    fn note_dir_times(&self) -> bool {
        self.dst.is_posix() && !self.opts.dry_run && !self.check_only
    }

    /// Remember a source directory's mtime for its local copy, when exact.
    fn note_dir_time(&self, s: &Entry) {
        if !self.note_dir_times() || !s.mtime_exact {
            return;
        }
        if let Some(ns) = s.meta.mtime_ns.or(s.mtime_ns) {
            self.dir_times.lock().expect("lock").push((s.path.clone(), ns));
        }
    }

    /// Give local copies of directories their source's mtime. A directory
    /// that cannot take it is a warning: its content is all there.
    async fn set_dir_times(&self) {
        let Location::Posix(root) = &self.dst else { return };
        let times = std::mem::take(&mut *self.dir_times.lock().expect("lock"));
        if times.is_empty() {
            return;
        }
        let root = root.clone();
        let errors =
            tokio::task::spawn_blocking(move || root.set_dir_mtimes(times)).await.unwrap_or_default();
        for (path, e) in errors {
            self.progress.warn(format!("{path}: directory mtime not set: {e}"));
        }
    }

    /// Remember a destination entry absent from the source for the deletion
    /// phase, unless the filters leave it out (time bounds are applied then).
    fn note_extraneous(&self, d: Entry) {
        if !self.opts.delete || self.check_only {
            return;
        }
        let kept = match d.kind {
            EntryKind::Dir => self.opts.filter.dir_included(&d.path),
            _ => self.opts.filter.file_included(&d.path, d.size),
        };
        if kept {
            self.extraneous.lock().expect("lock").push(d);
        }
    }

    /// Whether a file passes `--min-age`/`--max-age`; an object's time is
    /// the one stored in its metadata, looked up (one HEAD) when the
    /// listing did not carry it.
    async fn time_included(&self, at: &Location, e: &mut Entry) -> Result<bool, StorageError> {
        if !self.opts.filter.has_times() {
            return Ok(true);
        }
        if !e.mtime_exact {
            self.load_meta(at, e).await?;
        }
        Ok(self.opts.filter.time_included(e.mtime_ns))
    }

    /// What to delete of the extraneous entries: with filters, the files
    /// they leave out inside an extraneous directory stay, and so do the
    /// directories above them. `None` when a listing or lookup failed (it
    /// is reported): then nothing is deleted.
    async fn deletion_victims(&self, noted: Vec<Entry>) -> Option<Vec<Entry>> {
        if !self.opts.filter.is_active() {
            return Some(noted);
        }
        let mut victims = Vec::new();
        for mut e in noted {
            let whole = match e.kind {
                EntryKind::Dir => self.prune_dir(&e.path, &mut victims).await?,
                _ => self.extraneous_file_included(&mut e).await?,
            };
            if whole {
                victims.push(e);
            }
        }
        Some(victims)
    }

    async fn extraneous_file_included(&self, e: &mut Entry) -> Option<bool> {
        match self.time_included(&self.dst, e).await {
            Ok(included) => Some(included),
            Err(err) => {
                self.progress.fail(&e.path, format!("cannot look up for deletion: {err}"));
                None
            }
        }
    }

    /// Look into an extraneous destination directory: `Some(true)` when
    /// everything in it is to be deleted (then the directory goes whole),
    /// else the victims inside are added to `out` and it stays.
    fn prune_dir<'a>(
        &'a self,
        dir: &'a str,
        out: &'a mut Vec<Entry>,
    ) -> futures::future::BoxFuture<'a, Option<bool>> {
        Box::pin(async move {
            let p = &self.progress;
            let mut level = match self.dst.list_level(dir, self.opts.level_in_memory).await {
                Ok(l) => l,
                Err(e) => {
                    p.fail(dir, format!("listing the destination for deletion failed: {e}"));
                    return None;
                }
            };
            let mut inside = Vec::new();
            let mut all = level.rejected.is_empty();
            for entry in level.by_ref() {
                let mut e = match entry {
                    Ok(e) => e,
                    Err(err) => {
                        p.fail(dir, format!("listing the destination for deletion failed: {err}"));
                        return None;
                    }
                };
                let whole = match e.kind {
                    EntryKind::Dir if !self.opts.filter.dir_included(&e.path) => false,
                    EntryKind::Dir => self.prune_dir(&e.path, &mut inside).await?,
                    _ => {
                        self.opts.filter.file_included(&e.path, e.size)
                            && self.extraneous_file_included(&mut e).await?
                    }
                };
                if whole {
                    inside.push(e);
                } else {
                    all = false;
                }
            }
            if !all {
                out.append(&mut inside);
            }
            Some(all)
        })
    }

    /// Check and transfer one item, retrying temporary failures.
    async fn handle(&self, item: Item) {
        let p = &self.progress;
        if self.stopped.get().is_some() {
            p.not_tried.fetch_add(1, Relaxed);
            p.unmoved_bytes.fetch_add(item.src.size, Relaxed);
            return;
        }
        let mut attempt = 1;
        loop {
            let outcome = match self.process(&item).await {
                // The destination's since the run began: someone else's
                // (`PosixRoot::keeping_changed_since`), left as it is.
                Err(StorageError::ChangedMeanwhile(_)) => Ok(Outcome::Skipped(None)),
                outcome => outcome,
            };
            if outcome.is_ok() {
                self.last_ok_ms.fetch_max(self.started.elapsed().as_millis() as u64, Relaxed);
            }
            match outcome {
                Ok(Outcome::Skipped(version)) => {
                    p.skipped.fetch_add(1, Relaxed);
                    p.skipped_bytes.fetch_add(item.src.size, Relaxed);
                    if version.is_some() {
                        self.remember(&item, version, false).await;
                    }
                }
                Ok(Outcome::Excluded) => {
                    p.excluded.fetch_add(1, Relaxed);
                    p.listed_bytes.fetch_sub(item.src.size, Relaxed);
                }
                Ok(Outcome::Transferred(bytes, version)) => {
                    p.transferred.fetch_add(1, Relaxed);
                    p.transferred_bytes.fetch_add(bytes, Relaxed);
                    p.unmoved_bytes.fetch_add(item.src.size.saturating_sub(bytes), Relaxed);
                    if !self.opts.dry_run {
                        self.remember(&item, version, true).await;
                    }
                }
                // A stopped run tries no item again: its stop reason says
                // what the items left would meet.
                Err(e)
                    if e.is_temporary()
                        && attempt < self.opts.item_attempts
                        && self.stopped.get().is_none() =>
                {
                    tracing::debug!(path = %item.src.path, attempt, error = %e, "retrying item");
                    let backoff =
                        Duration::from_millis(100 * (1 << attempt.min(6)) + rand::random_range(0..100));
                    tokio::time::sleep(backoff).await;
                    if self.stopped.get().is_none() {
                        attempt += 1;
                        continue;
                    }
                    p.fail_file(&item.src.path, item.src.size, e.to_string());
                }
                Err(e) => {
                    self.stop_if_unreachable(&e);
                    p.fail_file(&item.src.path, item.src.size, e.to_string());
                }
            }
            return;
        }
    }

    /// Stop the run when `e` (an item's last attempt) found no store to
    /// connect to and no item has succeeded for the unreachable limit: the
    /// items left would each fail the same way, after their retries.
    fn stop_if_unreachable(&self, e: &StorageError) {
        if !matches!(e, StorageError::Connect { .. }) {
            return;
        }
        let now = self.started.elapsed();
        let last_ok = Duration::from_millis(self.last_ok_ms.load(Relaxed));
        if now.saturating_sub(last_ok) >= self.opts.unreachable_limit {
            let why = format!("{e}, and nothing succeeded for {} s", now.saturating_sub(last_ok).as_secs());
            if self.stopped.set(why.clone()).is_ok() {
                tracing::warn!("stopping the run: {why}; the items in flight end with their current attempt");
            }
        }
    }

    /// Record an item as up to date in the checkpoint, and whether this
    /// run copied it.
    async fn remember(&self, item: &Item, dst_version: Option<String>, transferred: bool) {
        if let Some(rec) = &self.recorder {
            rec.record(DoneItem {
                dir: item.dir.clone(),
                name: item.src.name().to_string(),
                size: item.src.size,
                mtime_ns: item.src.mtime_ns.unwrap_or(0),
                ctime_ns: item.src.local.map(|l| l.ctime_ns),
                dst_version,
                transferred_gen: transferred.then_some(rec.checkpoint.generation),
            })
            .await;
        }
    }

    async fn process(&self, item: &Item) -> Result<Outcome, StorageError> {
        let mut s = item.src.clone();
        let mut d = item.dst.clone();
        if !self.time_included(&self.src, &mut s).await? {
            return Ok(Outcome::Excluded);
        }
        let reason = match self.decide(&mut s, d.as_mut()).await? {
            None => {
                // Checked in full against an object: remember the version seen
                // in the listing so that the next run needs no request.
                let full_check = self.opts.compare == Compare::SizeMtime
                    && !self.opts.update
                    && !self.check_only
                    && !self.dst.is_posix();
                let version = if full_check { item.dst.as_ref().and_then(dst_version) } else { None };
                return Ok(Outcome::Skipped(version));
            }
            Some(reason) => reason,
        };
        if self.check_only {
            return Err(StorageError::InvalidName {
                name: s.path.clone(),
                reason: format!("verification: {reason}"),
            });
        }
        // Only the attributes changed: a local copy gets them in place.
        let in_place = reason == ATTRS_DIFFER && self.dst.is_posix();
        if self.opts.dry_run {
            self.dst.check_name(&s.path, s.kind)?;
            let (action, size) = if in_place { ("update", 0) } else { ("copy", s.size) };
            self.progress.plan(action, &s.path, Some(size), reason);
            return Ok(Outcome::Transferred(size, None));
        }
        if in_place {
            self.dst.set_file_attrs(&s.path, &self.write_meta(&s)).await?;
            return Ok(Outcome::Transferred(0, None));
        }
        if s.kind != EntryKind::Dir && self.store_copy.load(Relaxed) {
            if let Some(version) = self.copy_in_store(&mut s).await? {
                // A symlink's body is its target, not content: no bytes, as below.
                let n = if s.kind == EntryKind::Symlink { 0 } else { s.size };
                return Ok(Outcome::Transferred(n, version));
            }
        }
        let _room = self.hold_buffers(&s).await;
        // A small object not looked at yet: one GET brings body and metadata.
        let mut prefetched = None;
        if !s.meta_loaded && s.size <= SMALL_FILE {
            if let Location::Object(o) = &self.src {
                let (data, full, warnings) = o.read_whole(&s).await?;
                for w in warnings {
                    self.progress.warn(format!("{}: {w}", s.path));
                }
                s = full;
                prefetched = Some(data);
            }
        }
        match s.kind {
            EntryKind::Symlink => {
                let target = match prefetched {
                    Some(body) => {
                        String::from_utf8(body.to_vec()).map_err(|_| StorageError::InvalidName {
                            name: s.path.clone(),
                            reason: "symlink target is not valid UTF-8".into(),
                        })?
                    }
                    None => self.src.read_link(&s).await?,
                };
                self.dst.create_symlink(&s.path, &target, &self.write_meta(&s)).await?;
                Ok(Outcome::Transferred(0, None))
            }
            _ => self.copy_file(&s, prefetched).await.map(|(n, version)| Outcome::Transferred(n, version)),
        }
    }

    /// `None` when the destination is up to date, else why it is not.
    async fn decide(
        &self,
        s: &mut Entry,
        d: Option<&mut Entry>,
    ) -> Result<Option<&'static str>, StorageError> {
        let Some(d) = d else {
            // Small objects get their attributes with the GET that copies them.
            let prefetch = !self.src.is_posix() && s.size <= SMALL_FILE;
            if !self.opts.dry_run && !prefetch {
                self.load_meta(&self.src, s).await?;
            }
            return Ok(Some("missing"));
        };
        if d.kind == EntryKind::Dir {
            return Err(StorageError::InvalidName {
                name: s.path.clone(),
                reason: "a directory of the same name is in the way at the destination".into(),
            });
        }
        if self.opts.keep.as_ref().is_some_and(|keep| keep.contains(&s.path)) {
            return Ok(None);
        }
        // Changed by someone else since the run began, as listed: not even
        // fetched (the write would refuse to replace it).
        if let (Location::Posix(root), Some(l)) = (&self.dst, d.local) {
            if root.keeps_changed_since().is_some_and(|since| l.ctime_ns >= since) {
                return Ok(None);
            }
        }
        let compare = if self.check_only { Compare::Checksum } else { self.opts.compare };
        if compare == Compare::IgnoreExisting {
            return Ok(None);
        }
        self.load_meta(&self.src, s).await?;
        if compare == Compare::Force {
            return Ok(Some("forced"));
        }
        if s.kind == EntryKind::Symlink || d.kind == EntryKind::Symlink || !d.meta_loaded && s.size == d.size
        {
            self.load_meta(&self.dst, d).await?;
        }
        if s.kind == EntryKind::Symlink || d.kind == EntryKind::Symlink {
            if s.kind != d.kind {
                return Ok(Some("type differs"));
            }
            let same = self.src.read_link(s).await? == self.dst.read_link(d).await?;
            return Ok(if same { None } else { Some("link target differs") });
        }
        if self.opts.update && newer(d, s) {
            return Ok(None);
        }
        if s.size != d.size {
            return Ok(Some("size differs"));
        }
        let differs = match compare {
            Compare::Checksum => (!self.same_content(s, d).await?).then_some("checksum differs"),
            _ => (!same_mtime(s, d)).then_some("modification time differs"),
        };
        if differs.is_some() {
            return Ok(differs);
        }
        Ok(self.attrs_differ(s, d).then_some(ATTRS_DIFFER))
    }

    /// The content is the same, but mode, owner or group are not what the
    /// copy should have (a chmod or chown since it was made). Not for
    /// forced attributes (they are for what a run creates), nor against a
    /// copy that records no attributes at all.
    fn attrs_differ(&self, s: &Entry, d: &Entry) -> bool {
        if !self.opts.update_attributes
            || self.opts.attributes.is_some()
            || self.check_only
            || !s.meta_loaded
            || !d.meta_loaded
        {
            return false;
        }
        d.meta.mode.is_some() && attrs_change(&self.write_meta(s), &d.meta, self.dst.keeps_owner())
    }

    /// Wait until the contents in flight leave room for this item's: a
    /// small file is held whole, a large one by its parts or ranges. An
    /// item larger than the whole room waits until it has it all.
    async fn hold_buffers(&self, s: &Entry) -> tokio::sync::SemaphorePermit<'_> {
        let bytes = if s.size <= SMALL_FILE {
            s.size
        } else {
            self.src.buffer_for(s.size, false, self.opts.chunk as u64) + self.dst.buffer_for(s.size, true, 0)
        };
        let kib = bytes.div_ceil(1024).min(room_kib(&self.opts) as u64) as u32;
        self.buffers.acquire_many(kib).await.expect("the semaphore is never closed")
    }

    /// Fill an entry's attributes and exact time from `at` (a HEAD for an
    /// object the listing did not describe); what cannot be read is warned of.
    async fn load_meta(&self, at: &Location, e: &mut Entry) -> Result<(), StorageError> {
        for w in at.load_meta(e).await? {
            self.progress.warn(format!("{}: {w}", e.path));
        }
        Ok(())
    }

    /// Copy a file or symlink between two buckets of one store by the
    /// store itself: no data moves through ferry. The new version when
    /// done; `None` when the store refuses such copies, which the run then
    /// makes through ferry, this one first.
    async fn copy_in_store(&self, s: &mut Entry) -> Result<Option<Option<String>>, StorageError> {
        let (Location::Object(src), Location::Object(dst)) = (&self.src, &self.dst) else {
            return Ok(None);
        };
        // The attributes go with the copy: a small object not looked at
        // yet costs a HEAD here, where a GET would have brought them. The
        // copy is of the version listed, as a GET's would be.
        if !s.meta_loaded {
            let listed = s.etag.clone();
            self.load_meta(&self.src, s).await?;
            if listed.is_some() && s.etag != listed {
                return Err(StorageError::SourceChanged(format!(
                    "{}/{} was rewritten after it was listed",
                    src.display(),
                    s.path
                )));
            }
        }
        let moving = self.progress.attempt();
        let version = match dst.copy_from(src, s, &self.write_meta(s), s.crc32c, self.opts.copy_cutoff).await
        {
            Ok(version) => version,
            Err(e @ StorageError::CopyRefused(_)) => {
                if self.store_copy.swap(false, Relaxed) {
                    self.progress.warn(format!(
                        "{}: the store does not copy objects itself ({e}); copying through ferry instead",
                        s.path
                    ));
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if self.opts.verify == Verify::Transferred {
            let (want, _) = self.checksum(&self.src, s, false, None).await?;
            self.verify_copy(s, want).await?;
        }
        if s.kind == EntryKind::File {
            moving.add(s.size);
        }
        moving.keep();
        self.progress.copied_in_store.fetch_add(1, Relaxed);
        Ok(Some(version))
    }

    /// Stream one file into the destination; visible only once complete and verified.
    /// `prefetched` is the whole content when it was already read.
    async fn copy_file(
        &self,
        s: &Entry,
        prefetched: Option<Bytes>,
    ) -> Result<(u64, Option<String>), StorageError> {
        let meta = self.write_meta(s);
        let moving = self.progress.attempt();
        let mut crc = 0u32;
        let mut n: u64 = 0;
        let version;
        if s.size <= SMALL_FILE {
            let data = match prefetched {
                Some(data) => data,
                None => {
                    let mut stream = self.src.open_read(s, self.opts.chunk).await?;
                    let mut buf = BytesMut::with_capacity(s.size as usize);
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk?;
                        if (buf.len() + chunk.len()) as u64 > s.size {
                            return Err(StorageError::SizeMismatch {
                                expected: s.size,
                                got: (buf.len() + chunk.len()) as u64,
                            });
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    buf.freeze()
                }
            };
            n = data.len() as u64;
            if n != s.size {
                return Err(StorageError::SizeMismatch { expected: s.size, got: n });
            }
            crc = crc32c::crc32c(&data);
            check_stored_crc(s, crc)?;
            if let Location::Object(o) = &self.src {
                self.note_unchecked(s, o.check_md5_of(s, &data).await?);
            }
            self.throttle(data.len()).await;
            version = self.dst.write_file(&s.path, &meta, Some(crc), data).await?;
        } else if let (Location::Object(o), true) = (&self.src, self.dst.is_posix()) {
            let stored = self.stored_crc(s).await?;
            let sink = self.dst.create_file(&s.path, &meta, None, s.size).await?;
            let res = match self.ranged_download(o, s, &sink, stored.as_ref(), &moving).await {
                Ok(c) => check_stored_crc(s, c).map(|()| c),
                Err(e) => Err(e),
            };
            match res {
                Ok(c) => (crc, n) = (c, s.size),
                Err(e) => {
                    sink.abort().await;
                    return Err(e);
                }
            }
            version = sink.commit(&meta).await?;
        } else {
            let stored = self.stored_crc(s).await?;
            let mut parts = PartCrcs::for_stored(stored.as_ref());
            // Without a stored checksum, an object stored by one PUT is
            // checked against its ETag's MD5.
            let mut etag = match (&self.src, &stored) {
                (Location::Object(o), None) => o.md5_check(s).await?.map(|c| (o, c)),
                _ => None,
            };
            let mut stream = self.src.open_read(s, self.opts.chunk).await?;
            let mut sink = self.dst.create_file(&s.path, &meta, None, s.size).await?;
            let res: Result<(), StorageError> = async {
                while let Some(chunk) = stream.next().await {
                    let chunk: Bytes = chunk?;
                    parts.update(n, &chunk);
                    if let Some((_, check)) = &mut etag {
                        check.update(&chunk);
                    }
                    n += chunk.len() as u64;
                    if n > s.size {
                        return Err(StorageError::SizeMismatch { expected: s.size, got: n });
                    }
                    self.throttle(chunk.len()).await;
                    moving.add(chunk.len() as u64);
                    sink.write(chunk).await?;
                }
                if n != s.size {
                    return Err(StorageError::SizeMismatch { expected: s.size, got: n });
                }
                crc = parts.whole();
                check_stored_crc(s, crc)?;
                self.store_crc_verdict(s, stored.as_ref(), crc, &parts).await?;
                if let Some((o, check)) = etag.take() {
                    self.note_unchecked(s, o.check_md5(s, check).await?);
                }
                Ok(())
            }
            .await;
            if let Err(e) = res {
                sink.abort().await;
                return Err(e);
            }
            version = sink.commit(&meta).await?;
        }
        if self.opts.verify == Verify::Transferred {
            self.verify_copy(s, crc).await?;
        }
        moving.keep();
        Ok((n, version))
    }

    /// Read the copy of `s` back (`--verify transferred`) and compare its
    /// CRC32C with `wrote`, the source's.
    async fn verify_copy(&self, s: &Entry, wrote: u32) -> Result<(), StorageError> {
        let written =
            Entry { etag: None, crc32c: None, md5: None, meta_loaded: true, local: None, ..s.clone() };
        let (got, _) = self.checksum(&self.dst, &written, false, None).await?;
        if got != wrote {
            // Never leave a copy known to be wrong: its size and mtime
            // are right, so a later run would take it as up to date.
            if let Err(e) = self.dst.remove(&s.path, s.kind).await {
                self.progress.warn(format!("{}: a copy that failed verification stays: {e}", s.path));
            }
            return Err(StorageError::VerifyFailed { wrote, read: got });
        }
        Ok(())
    }

    /// Download a large object into a local file as up to `DOWNLOAD_STREAMS` ranged
    /// GETs written at their offsets as they stream: throughput of parallel
    /// reads without holding whole chunks in memory. Returns the CRC32C of the
    /// whole content (per-range CRCs combined).
    /// With `stored`, the content is checked against the CRC32C the store
    /// keeps for it (composite ones part by part).
    async fn ranged_download(
        &self,
        o: &ObjectRoot,
        s: &Entry,
        sink: &Sink,
        stored: Option<&StoredCrc>,
        moving: &Moving<'_>,
    ) -> Result<u32, StorageError> {
        let file = Arc::new(sink.positional().expect("a local destination")?);
        let first = PartCrcs::for_stored(stored);
        // Without a stored checksum, an object of another tool is checked
        // against the MD5 its ETag (or metadata) records. An MD5 of the
        // whole content needs it in order: one stream, hashed as it arrives
        // (reading ranges back afterwards costs more time than the ranges
        // save). A multipart ETag is the MD5 of its parts' MD5s: ranges of
        // whole parts are hashed apart.
        let etag = match stored {
            None => o.md5_check(s).await?,
            Some(_) => None,
        };
        // One range per RANGE_MIN begun: a medium object is not worth four
        // requests when other items are in flight beside it.
        let streams = s.size.div_ceil(RANGE_MIN).clamp(1, DOWNLOAD_STREAMS);
        let span = match etag.as_ref().map(Md5Check::part_size) {
            None => s.size.div_ceil(streams),
            Some(None) => s.size,
            Some(Some(part)) => s.size.div_ceil(part).div_ceil(streams) * part,
        };
        let ranges = (0..streams).map(|i| i * span..((i + 1) * span).min(s.size)).filter(|r| !r.is_empty());
        let parts = futures::future::try_join_all(ranges.map(|r| {
            let file = file.clone();
            let mut parts = first.next_range();
            let mut check = etag.as_ref().map(Md5Check::for_range);
            async move {
                let mut stream = o.open_range(s, r.clone()).await?;
                let mut off = r.start;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    let len = chunk.len() as u64;
                    if off + len > r.end {
                        return Err(StorageError::SizeMismatch {
                            expected: r.end - r.start,
                            got: off + len - r.start,
                        });
                    }
                    parts.update(off, &chunk);
                    if let Some(check) = &mut check {
                        check.update(&chunk);
                    }
                    self.throttle(chunk.len()).await;
                    moving.add(len);
                    tokio::task::block_in_place(|| file.write_at(&chunk, off))?;
                    off += len;
                }
                if off != r.end {
                    return Err(StorageError::SizeMismatch { expected: r.end - r.start, got: off - r.start });
                }
                Ok((parts, check))
            }
        }))
        .await?;
        let mut all = first;
        let mut etag = etag;
        for (p, check) in parts {
            all.append(p);
            if let (Some(whole), Some(range)) = (&mut etag, check) {
                whole.append(range);
            }
        }
        let crc = all.whole();
        self.store_crc_verdict(s, stored, crc, &all).await?;
        if let Some(check) = etag {
            self.note_unchecked(s, o.check_md5(s, check).await?);
        }
        Ok(crc)
    }

    /// Warn that an object's recorded MD5 could not check its content.
    fn note_unchecked(&self, s: &Entry, why: Option<&str>) {
        if let Some(why) = why {
            self.progress.warn(format!("{}: {why}", s.path));
        }
    }

    /// Content read from the source must match the CRC32C its store kept.
    /// A composite mismatch counts only if the object's parts really are of
    /// equal sizes, as the check assumed (every part's size is asked for);
    /// otherwise the object cannot be checked and is taken with a warning.
    async fn store_crc_verdict(
        &self,
        s: &Entry,
        stored: Option<&StoredCrc>,
        whole: u32,
        parts: &PartCrcs,
    ) -> Result<(), StorageError> {
        let Some(Err((expected, got))) = stored.map(|c| c.check(whole, Some(parts))) else { return Ok(()) };
        if let (Some(c), Location::Object(o)) = (stored, &self.src) {
            if !o.parts_are_equal(s, c).await? {
                self.progress.warn(format!(
                    "{}: its parts are of unequal sizes, so the checksum its store kept cannot be checked",
                    s.path
                ));
                return Ok(());
            }
        }
        Err(StorageError::ChecksumMismatch { path: s.path.clone(), expected, got })
    }

    /// The CRC32C the source store keeps for a large object ferry did not
    /// write whole (ferry's own carry theirs in metadata); `None` when
    /// there is none to check against.
    async fn stored_crc(&self, s: &Entry) -> Result<Option<StoredCrc>, StorageError> {
        stored_crc_of(&self.src, s).await
    }

    /// Whether both sides hold the same content, by CRC32C (`--checksum`,
    /// and `--verify all`). A large object without a CRC32C of ferry's own
    /// is compared through the one its store kept, so it is not read at
    /// all: against the same kind of value on the other side, or against
    /// the other side's content cut into the same parts. Verification
    /// reads the destination whatever it carries.
    async fn same_content(&self, s: &Entry, d: &Entry) -> Result<bool, StorageError> {
        let from_src = stored_crc_of(&self.src, s).await?;
        let from_dst = if self.check_only { None } else { stored_crc_of(&self.dst, d).await? };
        let verdict = match (from_src, from_dst) {
            (Some(a), Some(b)) if a.part_size() == b.part_size() && a == b => Some(true),
            (Some(stored), _) => {
                self.matches_stored((&self.src, s), (&self.dst, d), !self.check_only, &stored).await?
            }
            (None, Some(stored)) => {
                self.matches_stored((&self.dst, d), (&self.src, s), true, &stored).await?
            }
            (None, None) => None,
        };
        let verdict = match verdict {
            Some(same) => Some(same),
            None => self.same_by_etag(s, d).await?,
        };
        if let Some(same) = verdict {
            return Ok(same);
        }
        let a = self.checksum(&self.src, s, true, None).await?.0;
        let b = self.checksum(&self.dst, d, !self.check_only, None).await?.0;
        Ok(a == b)
    }

    /// Whether a local file holds the content of an object that carries no
    /// CRC32C of ferry's, through the MD5 recorded for it (its ETag, or
    /// rclone's `md5chksum`): the file is read, the object is not; two
    /// such objects are compared by their MD5s alone. `None` when
    /// this cannot tell. Verification reads the destination whatever it
    /// carries, so there only a source object is taken at its ETag.
    async fn same_by_etag(&self, s: &Entry, d: &Entry) -> Result<Option<bool>, StorageError> {
        let (holder, h, other, e) = match (&self.src, &self.dst) {
            // Two objects of other tools with recorded MD5s: equal ones are the
            // same content, nothing is read; unequal ones may be ETags that are
            // no MD5s (SSE-KMS), so the content decides. So with multipart
            // ETags (MD5s of the parts' MD5s): equal ones name the same parts,
            // unequal ones may only be cut differently.
            (Location::Object(a), Location::Object(b)) if !self.check_only => {
                let (x, y) = (a.recorded_md5(s), b.recorded_md5(d));
                let same = x.zip(y).is_some_and(|(x, y)| x == y);
                let (x, y) = (a.multipart_etag(s), b.multipart_etag(d));
                let same_parts = x.zip(y).is_some_and(|(x, y)| x == y);
                return Ok((same || same_parts).then_some(true));
            }
            (Location::Object(o), local) if local.is_posix() => (o, s, local, d),
            (local, Location::Object(o)) if local.is_posix() && !self.check_only => (o, d, local, s),
            _ => return Ok(None),
        };
        let Some(mut check) = holder.md5_check(h).await? else { return Ok(None) };
        let mut stream = other.open_read(e, self.opts.chunk).await?;
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            check.update(&chunk);
        }
        if n != e.size {
            return Err(StorageError::SizeMismatch { expected: e.size, got: n });
        }
        holder.md5_matches(h, check).await
    }

    /// Whether `other`'s content matches the checksum `holder`'s store kept;
    /// `None` when that cannot tell (a composite over parts of unequal sizes).
    async fn matches_stored(
        &self,
        (holder, h): (&Location, &Entry),
        (other, e): (&Location, &Entry),
        trust_stored: bool,
        stored: &StoredCrc,
    ) -> Result<Option<bool>, StorageError> {
        let (whole, parts) = self.checksum(other, e, trust_stored, Some(stored)).await?;
        if stored.check(whole, Some(&parts)).is_ok() {
            return Ok(Some(true));
        }
        match holder {
            Location::Object(o) if !o.parts_are_equal(h, stored).await? => Ok(None),
            _ => Ok(Some(false)),
        }
    }

    async fn throttle(&self, n: usize) {
        if let Some(l) = &self.limiter {
            l.acquire(n).await;
        }
    }

    /// CRC32C of an entry's content; a stored one is used when `trust_stored`.
    /// With `against`, also what checking it needs (the CRC32Cs of parts of
    /// its size, or the CRC64NVME), which is read.
    async fn checksum(
        &self,
        loc: &Location,
        e: &Entry,
        trust_stored: bool,
        against: Option<&StoredCrc>,
    ) -> Result<(u32, PartCrcs), StorageError> {
        let mut parts = PartCrcs::for_stored(against);
        let read = against.is_some_and(|c| !matches!(c, StoredCrc::Whole(_)));
        if let (true, Some(c), false) = (trust_stored, e.crc32c, read) {
            return Ok((c, parts));
        }
        let mut stream = loc.open_read(e, self.opts.chunk).await?;
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            parts.update(n, &chunk);
            n += chunk.len() as u64;
        }
        if n != e.size {
            return Err(StorageError::SizeMismatch { expected: e.size, got: n });
        }
        Ok((parts.whole(), parts))
    }

    /// Delete extraneous destination items, unless anything went wrong.
    /// Returns why deletion was skipped, if it was.
    async fn delete_extraneous(&self) -> Option<String> {
        let p = &self.progress;
        let noted = std::mem::take(&mut *self.extraneous.lock().expect("lock"));
        if noted.is_empty() {
            return None;
        }
        // Any failure so far, of an item or not (a directory marker that
        // holds data, say), keeps everything in place.
        let failures = || p.failed.load(Relaxed) + p.other_failed.load(Relaxed);
        let skipped = |count: usize| {
            format!(
                "{} item(s) failed, so none of the {count} extraneous destination item(s) were deleted",
                failures()
            )
        };
        if self.listing_failed.load(Relaxed) || failures() > 0 {
            return Some(skipped(noted.len()));
        }
        if self.source_missing.load(Relaxed) {
            return Some(format!(
                "nothing is stored under the source prefix, so none of the {} extraneous destination \
                 item(s) were deleted (an empty prefix cannot be told from a mistyped one)",
                noted.len()
            ));
        }
        let count = noted.len();
        let Some(mut victims) = self.deletion_victims(noted).await else {
            return Some(skipped(count));
        };
        if victims.is_empty() {
            return None;
        }
        if let Some(max) = self.opts.max_delete {
            if victims.len() as u64 > max {
                let msg = format!(
                    "{} extraneous destination item(s) exceed --max-delete {max}; nothing was deleted",
                    victims.len()
                );
                p.fail_other("", msg.clone());
                return Some(msg);
            }
        }
        victims.sort_by(|a, b| a.path.cmp(&b.path));
        if self.opts.dry_run {
            // Counted as deleted, as the plan's copies are counted as transferred.
            for v in &victims {
                let size = (v.kind != EntryKind::Dir).then_some(v.size);
                p.plan("delete", &v.path, size, "not in source");
                p.deleted.fetch_add(1, Relaxed);
            }
            return None;
        }
        futures::stream::iter(victims)
            .for_each_concurrent(self.opts.threads.max(1), |v| async move {
                match self.dst.remove(&v.path, v.kind).await {
                    Ok(()) => {
                        p.deleted.fetch_add(1, Relaxed);
                    }
                    Err(e) => p.fail_other(&v.path, format!("delete failed: {e}")),
                }
            })
            .await;
        None
    }

    /// Compare every file on both sides by content; returns the mismatches.
    async fn verify_all(self: &Arc<Self>) -> u64 {
        let check = Arc::new(Run {
            src: self.src.clone(),
            dst: self.dst.clone(),
            opts: SyncOptions { delete: false, dry_run: false, ..self.opts.clone() },
            progress: Arc::new(Progress::default()),
            limiter: None,
            buffers: buffer_room(&self.opts),
            recorder: None,
            listing_failed: AtomicBool::new(false),
            last_ok_ms: AtomicU64::new(0),
            started: Instant::now(),
            stopped: Default::default(),
            source_missing: AtomicBool::new(false),
            extraneous: Mutex::new(Vec::new()),
            hard_links: Mutex::new(HashMap::new()),
            check_only: true,
            visited: Mutex::new(Default::default()),
            dir_times: Mutex::new(Vec::new()),
            store_copy: AtomicBool::new(false),
        });
        if let Some(j) = self.progress.journal.get() {
            check.progress.set_journal(j.clone());
        }
        check.clone().scan_and_transfer().await;
        // Already in the journal: only the report gets them from here.
        let failures = check.progress.failures.lock().expect("lock").lines();
        let mut kept = self.progress.failures.lock().expect("lock");
        failures.into_iter().for_each(|f| kept.push(f));
        check.progress.failed.load(Relaxed)
    }
}

/// The room of `Run::buffers`, in KiB.
fn room_kib(opts: &SyncOptions) -> u32 {
    opts.buffer_bytes.div_ceil(1024).clamp(1, u32::MAX as u64) as u32
}

fn buffer_room(opts: &SyncOptions) -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(room_kib(opts) as usize)
}

/// A source that carries a checksum (written by ferry) must match what was read.
fn check_stored_crc(s: &Entry, got: u32) -> Result<(), StorageError> {
    match s.crc32c {
        Some(want) if want != got => Err(StorageError::ChecksumMismatch {
            path: s.path.clone(),
            expected: format!("crc32c {want:08x}"),
            got: format!("crc32c {got:08x}"),
        }),
        _ => Ok(()),
    }
}

/// The CRC32C an object store keeps for a large object that carries none
/// of ferry's own.
async fn stored_crc_of(loc: &Location, e: &Entry) -> Result<Option<StoredCrc>, StorageError> {
    match loc {
        Location::Object(o) if e.crc32c.is_none() && e.size > SMALL_FILE => o.stored_crc(e).await,
        _ => Ok(None),
    }
}

/// Whether a copy with attributes `have` needs `want`'s permission bits,
/// or (with `owner`) its owner and group; what `want` leaves unset is kept.
fn attrs_change(want: &PosixMeta, have: &PosixMeta, owner: bool) -> bool {
    let differs = |a: Option<u32>, b: Option<u32>| a.is_some() && a != b;
    differs(want.mode.map(|m| m & 0o7777), have.mode.map(|m| m & 0o7777))
        || owner && (differs(want.uid, have.uid) || differs(want.gid, have.gid))
}

/// Why an item whose content is the same is written anyway.
const ATTRS_DIFFER: &str = "attributes differ";

/// What identifies the current content of a listed object: its ETag, else
/// its listed modification time.
fn dst_version(d: &Entry) -> Option<String> {
    d.etag.clone().or_else(|| d.mtime_ns.map(|ns| format!("mtime:{ns}")))
}

/// Attributes to give the copy: the source's, with its listed mtime when
/// the store recorded none.
fn write_meta(s: &Entry) -> PosixMeta {
    PosixMeta { mtime_ns: s.meta.mtime_ns.or(s.mtime_ns), ..s.meta }
}

/// Equal modification times; to the second when either side only has the
/// store's second-precision upload time.
fn same_mtime(a: &Entry, b: &Entry) -> bool {
    match (a.mtime_ns, b.mtime_ns) {
        (Some(x), Some(y)) if a.mtime_exact && b.mtime_exact => x == y,
        (Some(x), Some(y)) => x.div_euclid(1_000_000_000) == y.div_euclid(1_000_000_000),
        _ => false,
    }
}

/// The destination was modified after the source (`--update`).
fn newer(d: &Entry, s: &Entry) -> bool {
    matches!((d.mtime_ns, s.mtime_ns), (Some(x), Some(y)) if x > y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mtime: i64, exact: bool) -> Entry {
        Entry {
            path: "f".into(),
            kind: EntryKind::File,
            size: 1,
            mtime_ns: Some(mtime),
            mtime_exact: exact,
            meta: PosixMeta::default(),
            meta_loaded: true,
            etag: None,
            local: None,
            crc32c: None,
            md5: None,
        }
    }

    #[test]
    fn mtime_comparison_respects_precision() {
        let a = entry(1_700_000_000_123_456_789, true);
        assert!(same_mtime(&a, &entry(1_700_000_000_123_456_789, true)));
        assert!(!same_mtime(&a, &entry(1_700_000_000_123_456_788, true)));
        assert!(same_mtime(&a, &entry(1_700_000_000_000_000_000, false)));
        assert!(!same_mtime(&a, &entry(1_700_000_001_000_000_000, false)));
    }

    #[test]
    fn write_meta_falls_back_to_listed_mtime() {
        let mut e = entry(5, false);
        assert_eq!(write_meta(&e).mtime_ns, Some(5));
        e.meta.mtime_ns = Some(7);
        assert_eq!(write_meta(&e).mtime_ns, Some(7));
    }
}
