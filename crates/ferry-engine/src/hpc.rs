//! The four HPC-cache task types (DESIGN.md) over the sync engine and the
//! namespace index of each target:
//!
//! - `import_metadata`: one paged listing of the bucket; directories are
//!   created on disk, files become `stub` rows of the index (name, size,
//!   mtime, attributes task > target > default). No object data is read.
//! - `import`: the same, with a HEAD per object to restore the uid, gid,
//!   mode and mtime an earlier export stored.
//! - `preload`: a sync bucket → directory with the default attributes, then
//!   the index rows of the materialized files become `cached`.
//! - `export`: a sync directory → bucket (changed files only, with their
//!   POSIX metadata); exported files become `cached` in the index.
//!
//! A share lives at `<shares root>/<share id>`; a target is the top-level
//! directory `<share>/<file_system_path>` linked to the bucket's root.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_model::hpc::{HpcTaskType, TargetAttributes, TargetLifecycle};
use ferry_model::{Entry, EntryKind, PosixMeta};
use ferry_storage::{local_version, Listing, Location, ObjectRoot, ObjectStores, OpenOptions, PosixRoot};
use ferry_store::{CachedStat, DoneCopy, EntryState, NsEntry, Store, TargetRow, TaskProgress, TaskRow};
use tokio::sync::mpsc;

use crate::options::{ForcedAttributes, SyncOptions};
use crate::progress::{Failure, Progress, FAILURE_CSV_HEADER};
use crate::{CheckpointSpec, Sync};

/// Mode of imported files when neither the task nor the target gives one.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of imported directories when neither the task nor the target gives one.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// Index rows written per transaction.
const INDEX_BATCH: usize = 1000;

/// What a worker needs to run tasks.
#[derive(Debug, Clone)]
pub struct TaskEnv {
    pub store: Store,
    /// Directory holding one directory per share.
    pub shares_root: PathBuf,
    pub object_stores: Arc<ObjectStores>,
    /// Transfers in flight per task.
    pub threads: usize,
    /// How long a store may stay unreachable, nothing succeeding, before
    /// a task stops ([`SyncOptions::unreachable_limit`]).
    pub unreachable_limit: std::time::Duration,
}

/// How a task ended.
#[derive(Debug, Clone, Default)]
pub struct TaskOutcome {
    pub progress: TaskProgress,
    /// Items that failed, with the reason (the failure report).
    pub failures: Vec<Failure>,
    /// Why the whole task failed (a listing error, a missing target…).
    pub fatal: Option<String>,
}

impl TaskOutcome {
    pub fn success(&self) -> bool {
        self.fatal.is_none() && self.failures.is_empty() && self.progress.failed_files == 0
    }

    /// One line for the task's `message`.
    pub fn message(&self) -> Option<String> {
        if let Some(f) = &self.fatal {
            return Some(f.clone());
        }
        let first = self.failures.first().map(|f| format!(", first: {}: {}", f.path, f.reason));
        if self.progress.failed_files > 0 {
            return Some(format!(
                "{} of {} items failed{}",
                self.progress.failed_files,
                self.progress.total_files,
                first.unwrap_or_default()
            ));
        }
        // Failures that are not of an item (a directory marker holding
        // data, a file found different by verification).
        first.map(|first| format!("{} problem(s) besides the items{first}", self.failures.len()))
    }

    /// The failure report: CSV `path,status,error_code,message`.
    pub fn failure_report(&self) -> Option<String> {
        if self.failures.is_empty() && self.fatal.is_none() {
            return None;
        }
        let mut csv = String::from(FAILURE_CSV_HEADER);
        if let Some(f) = &self.fatal {
            csv.push_str(&Failure { path: String::new(), reason: f.clone() }.csv_row());
        }
        for f in &self.failures {
            csv.push_str(&f.csv_row());
        }
        let unlisted = self.progress.failed_files.saturating_sub(self.failures.len() as u64);
        if unlisted > 0 {
            csv.push_str(&format!(
                ",FAIL,REPORT_TRUNCATED,{unlisted} more failed items are not listed (the report keeps the first {})\n",
                self.failures.len()
            ));
        }
        Some(csv)
    }
}

/// The task counters as the API shows them.
pub fn task_progress(p: &Progress) -> TaskProgress {
    TaskProgress {
        total_files: p.listed.load(Relaxed),
        done_files: p.transferred.load(Relaxed),
        skipped_files: p.skipped.load(Relaxed) + p.excluded.load(Relaxed),
        failed_files: p.failed.load(Relaxed),
        total_bytes: p.listed_bytes.load(Relaxed),
        done_bytes: p.transferred_bytes.load(Relaxed),
        bytes_per_second: 0,
    }
}

/// `<shares root>/<share id>`.
pub fn share_dir(shares_root: &Path, share_id: &str) -> PathBuf {
    shares_root.join(share_id)
}

/// `<shares root>/<share id>/<file_system_path>`.
pub fn target_dir(shares_root: &Path, share_id: &str, file_system_path: &str) -> PathBuf {
    share_dir(shares_root, share_id).join(file_system_path)
}

/// Attributes for imported entries: the task's, else the target's, else the defaults.
pub fn effective_attributes(task: Option<&TargetAttributes>, target: &TargetAttributes) -> ForcedAttributes {
    let pick = |f: fn(&TargetAttributes) -> Option<u32>| task.and_then(f).or_else(|| f(target));
    ForcedAttributes {
        file_mode: pick(|a| a.file_mode.map(|m| m.bits())).unwrap_or(DEFAULT_FILE_MODE),
        dir_mode: pick(|a| a.dir_mode.map(|m| m.bits())).unwrap_or(DEFAULT_DIR_MODE),
        uid: pick(|a| a.uid).unwrap_or(0),
        gid: pick(|a| a.gid).unwrap_or(0),
    }
}

/// Run one task to its end. `progress` is updated live for the worker to report.
pub async fn run_task(env: &TaskEnv, task: &TaskRow, progress: Arc<Progress>) -> TaskOutcome {
    let result = match task.task_type {
        HpcTaskType::Import | HpcTaskType::ImportMetadata => import(env, task, &progress).await,
        HpcTaskType::Preload => transfer(env, task, &progress, Direction::Preload).await,
        HpcTaskType::Export => transfer(env, task, &progress, Direction::Export).await,
    };
    let failures = progress.failures.lock().expect("failures lock").lines();
    TaskOutcome { progress: task_progress(&progress), failures, fatal: result.err() }
}

/// How long a task waits out a database that is away (a restart or a
/// failover takes seconds) before it fails. The worker gives the task up
/// sooner when the outage outlasts its lease.
const STORE_OUTAGE: Duration = Duration::from_secs(30);
/// How long one call may go unanswered: a database cut off by a partition
/// holds a call for as long as TCP does.
const STORE_CALL: Duration = Duration::from_secs(10);

/// A store call of a running task, made again with backoff while the
/// database is away, for up to [`STORE_OUTAGE`]. Other errors fail at once.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ferry_store::Result<T>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let why = match ferry_store::bounded(STORE_CALL, call()).await {
            Ok(answer) => return Ok(answer),
            Err(e) if !e.is_transient() => return Err(e.to_string()),
            Err(e) => e.to_string(),
        };
        if started.elapsed() + backoff > STORE_OUTAGE {
            return Err(why);
        }
        tracing::warn!(error = %why, "the database is away; trying again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn linked_target(env: &TaskEnv, task: &TaskRow) -> Result<TargetRow, String> {
    let target = patiently(|| env.store.target_by_path(&task.share_id, &task.src_target))
        .await?
        .ok_or_else(|| format!("backend target {:?} no longer exists", task.src_target))?;
    if target.lifecycle != TargetLifecycle::Available {
        return Err(format!(
            "backend target {:?} is {}, not AVAILABLE",
            target.file_system_path, target.lifecycle
        ));
    }
    Ok(target)
}

fn retries_opts(create: bool) -> OpenOptions {
    OpenOptions { create, retries: 5, ..Default::default() }
}

/// Open the target directory (creating it when missing) as a POSIX root.
async fn open_target_dir(env: &TaskEnv, target: &TargetRow, sub: &str) -> Result<Location, String> {
    let mut dir = target_dir(&env.shares_root, &target.share_id, &target.file_system_path);
    if !sub.is_empty() {
        dir = dir.join(sub);
    }
    let dir = dir.to_str().ok_or("share path is not UTF-8")?.to_string();
    Location::open(&dir, &ferry_storage::ProcessEnv, retries_opts(true)).await.map_err(|e| e.to_string())
}

async fn open_bucket(env: &TaskEnv, target: &TargetRow, prefix: &str) -> Result<ObjectRoot, String> {
    match env.object_stores.reuse_bucket(&target.endpoint, &target.bucket, prefix, retries_opts(false)).await
    {
        Ok(Location::Object(o)) => Ok(o),
        Ok(Location::Posix(_)) => Err("the target's store is not an object store".into()),
        Err(e) => Err(format!("bucket {} at {}: {e}", target.bucket, target.endpoint)),
    }
}

/// A task prefix as a directory path (`a/b/` → `a/b`), checked like any relative path.
fn prefix_dir(prefix: Option<&str>) -> Result<String, String> {
    let p = prefix.unwrap_or("").trim_matches('/');
    if !p.is_empty() {
        ferry_model::validate_rel_path(p).map_err(|e| format!("src_prefix: {e}"))?;
    }
    Ok(p.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Preload,
    Export,
}

async fn transfer(
    env: &TaskEnv,
    task: &TaskRow,
    progress: &Arc<Progress>,
    dir: Direction,
) -> Result<(), String> {
    let target = linked_target(env, task).await?;
    let sub = prefix_dir(task.src_prefix.as_deref())?;
    let local = open_target_dir(env, &target, &sub).await?;
    let Location::Posix(root) = local.clone() else { unreachable!("target directories are POSIX") };
    // What an export sends is what the share's index saw change.
    let mut opts = SyncOptions {
        threads: env.threads,
        unreachable_limit: env.unreachable_limit,
        update_attributes: false,
        count_earlier_attempts: true,
        ..Default::default()
    };
    let mut exported = None;
    // Before the walk for changes; a second early, as file times come from
    // a coarser clock.
    let now_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let started_ns = now_ns - 1_000_000_000;
    // A ctime lags the clock by a kernel tick at most.
    let changes_from_ns = now_ns - 100_000_000;
    if dir == Direction::Preload {
        // Files created or changed in the share since its last export are
        // the user's: a preload neither replaces them nor calls them clean.
        // So are those changed while it runs, before it gets to them.
        let found = changed_files(env, &target, &sub, &root).await?;
        if !found.changed.is_empty() {
            opts.keep = Some(Arc::new(found.changed.into_iter().map(|e| e.path).collect()));
        }
    }
    // ...up to the moment a preloaded file would replace them.
    let local = match (dir, local) {
        (Direction::Preload, Location::Posix(root)) => {
            Location::Posix(root.keeping_changed_since(changes_from_ns))
        }
        (_, local) => local,
    };
    if dir == Direction::Export {
        let t0 = Instant::now();
        let Found { changed, unchanged, rejected } = changed_files(env, &target, &sub, &root).await?;
        let elapsed_ms = t0.elapsed().as_millis() as u64;
        tracing::debug!(changed = changed.len(), unchanged, elapsed_ms, "export change detection");
        // Unchanged files cost no request; when most files changed, one
        // listing of the bucket is cheaper than a HEAD per file.
        if changed.len() <= 10_000 && changed.len() as u64 <= unchanged {
            progress.listed.fetch_add(unchanged, Relaxed);
            progress.skipped.fetch_add(unchanged, Relaxed);
            // Names the run below will not see (it copies the changed files
            // only); a full run lists them again and fails them itself.
            progress.listed.fetch_add(rejected.len() as u64, Relaxed);
            for (path, reason) in rejected {
                progress.fail(&path, reason);
            }
            if changed.is_empty() {
                return Ok(());
            }
            opts.files_from = Some(changed.iter().map(|e| e.path.clone()).collect());
        }
        exported = Some(changed);
    }
    // Opened only now: an export with nothing to do makes no request at all.
    let bucket = Location::Object(open_bucket(env, &target, &sub).await?);
    let (src, dst) = match dir {
        Direction::Preload => {
            opts.attributes = Some(effective_attributes(task.attributes.as_ref(), &target.attributes));
            (bucket, local.clone())
        }
        Direction::Export => (local.clone(), bucket),
    };
    let opts_keep = opts.keep.clone();
    let sync = Sync::with_progress(src, dst, opts, progress.clone())
        // Two tasks of one target and prefix take turns.
        .with_checkpoint(CheckpointSpec { store: env.store.clone(), wait_for_pair: true });
    let t0 = Instant::now();
    let report = sync.run().await.map_err(|e| e.to_string())?;
    let sync_ms = t0.elapsed().as_millis() as u64;
    tracing::debug!(sync_ms, transferred = report.transferred, "transfer done");
    if report.failed > 0 && report.listed == report.failed && report.transferred == 0 {
        // Nothing could be read at all: say so rather than list every item.
        if let Some(f) = report.failures.first() {
            return Err(format!("{}: {}", f.path, f.reason));
        }
    }
    let stopped = report.stopped.as_ref().map(|why| {
        format!(
            "the run stopped early: {why}; {} item(s) not tried: a new task of this kind on the same target resumes from here",
            report.not_tried
        )
    });
    match exported {
        // An export records what it knows went up, with the stat seen
        // before the upload (a file changed since goes again next time):
        // not failed files, nor files below a directory that failed (its
        // listing, its marker). When it stopped early, or the report does
        // not name every failure, it records nothing: each file is looked
        // at again by the next task, at the cost of a request.
        Some(mut entries) if stopped.is_none() && report.failures_omitted == 0 => {
            let failed: HashSet<&str> = report.failures.iter().map(|f| f.path.as_str()).collect();
            entries.retain(|e| !failed_or_below(&failed, &e.path));
            record_entries(env, &target, &sub, &entries).await?;
        }
        Some(_) => {}
        // A preload leaves no file where an item failed or was not tried
        // (its writes are atomic). The bucket's copies are the files its
        // checkpoint holds as copied (by this run or an earlier one of the
        // pair): still the very file written then (same inode and ctime),
        // or, for a copy recorded without them, of the object's size. Not
        // the user's: those changed before the run (`keep`), and files
        // modified since it started (what the preload writes carries its
        // object's mtime). A file put in the share meanwhile with an old
        // mtime (`cp -p`, `rsync -a`) is in no checkpoint, or not as
        // written. Recorded after an early stop too, so that the next
        // preload does not take what this one wrote for the user's. (A
        // file left out costs the next export one comparison.)
        None => {
            let t0 = Instant::now();
            let keep = opts_keep.unwrap_or_default();
            let bucket_copy = |e: &Entry, copy: Option<&DoneCopy>| {
                let modified_since = e.kind != EntryKind::Dir && e.mtime_ns.is_none_or(|m| m >= started_ns);
                let copied = e.kind == EntryKind::Dir
                    || copy.is_some_and(|c| match &c.dst_version {
                        Some(v) => e
                            .local
                            .is_some_and(|l| *v == local_version(l.ino, l.ctime_ns, e.mtime_ns, e.size)),
                        None => c.size == e.size,
                    });
                copied && !keep.contains(&e.path) && !modified_since
            };
            record_cached(env, &target, &sub, root, report.checkpoint_run, bucket_copy).await?;
            tracing::debug!(elapsed_ms = t0.elapsed().as_millis() as u64, "preloaded files indexed");
        }
    }
    stopped.map_or(Ok(()), Err)
}

/// Whether `path` or a directory above it is among `failed` (paths of a
/// report's failures; the empty path is a failure of the whole run, and
/// "/" one of the top level, as its listing).
fn failed_or_below(failed: &HashSet<&str>, path: &str) -> bool {
    failed.contains(path)
        || failed.contains("")
        || failed.contains("/")
        || path.match_indices('/').any(|(i, _)| failed.contains(&path[..i]))
}

/// Directories whose index rows an export's change detection reads in one query.
const DIRS_PER_QUERY: usize = 128;

/// Index queries of an export's change detection in flight at once (the
/// SQLite pool has four connections; WAL lets them read in parallel).
const QUERIES_IN_FLIGHT: usize = 3;

/// Directories listed at once (on blocking threads) by that walk.
const LIST_PARALLELISM: usize = 8;

/// What the walk for changes found in a target.
struct Found {
    /// Files new or changed since the index saw them.
    changed: Vec<Entry>,
    /// Files as the index saw them.
    unchanged: u64,
    /// Names that cannot be exported (not UTF-8), with the reason.
    rejected: Vec<(String, String)>,
}

/// Export's change detection through the index: a file whose size, mtime,
/// ctime and inode equal those recorded when it was last imported or
/// exported is unchanged (ctime cannot be set by users). Returns the other
/// files (paths relative to `sub`) and the number of unchanged ones.
///
/// A walker lists directories in parallel and hands them on; meanwhile the
/// index rows of up to [`DIRS_PER_QUERY`] listed directories are read in one
/// query and compared. A tree of many small directories thus costs a few
/// queries, not one each, and the walk never waits for the database.
async fn changed_files(
    env: &TaskEnv,
    target: &TargetRow,
    sub: &str,
    root: &PosixRoot,
) -> Result<Found, String> {
    use futures::StreamExt;

    // Bounded: memory holds at most a few batches of listed directories.
    let (tx, rx) = mpsc::channel::<Vec<(String, Listing)>>(4);
    let walker = tokio::spawn(walk_dirs(root.clone(), tx));
    // Listed directories in groups of DIRS_PER_QUERY, each group's index rows
    // read by one query, QUERIES_IN_FLIGHT queries at once (the walk, the
    // index reads and the comparison overlap).
    let batches = futures::stream::unfold((rx, Vec::new()), |(mut rx, mut batch)| async move {
        while batch.len() < DIRS_PER_QUERY {
            match rx.recv().await {
                Some(listed) => batch.extend(listed),
                None => break,
            }
        }
        if batch.is_empty() {
            return None;
        }
        let rest = batch.split_off(batch.len().min(DIRS_PER_QUERY));
        Some((batch, (rx, rest)))
    });
    let mut queried = std::pin::pin!(batches
        .map(|dirs: Vec<(String, Listing)>| async move {
            let t0 = Instant::now();
            let full_dirs: Vec<String> = dirs.iter().map(|(rel, _)| join_sub(sub, rel)).collect();
            let rows = patiently(|| env.store.cached_stats_in_dirs(&target.id, &full_dirs)).await?;
            Ok::<_, String>((dirs, full_dirs, rows, t0.elapsed()))
        })
        .buffered(QUERIES_IN_FLIGHT));
    let (mut changed, mut unchanged, mut rejected) = (Vec::new(), 0u64, Vec::new());
    let (mut query_time, mut compare_time) = (Duration::ZERO, Duration::ZERO);
    while let Some(res) = queried.next().await {
        let (dirs, full_dirs, rows, took) = res?;
        query_time += took;
        let t0 = Instant::now();
        let known: HashMap<(&str, &str), &CachedStat> =
            rows.iter().map(|row| ((row.dir.as_str(), row.name.as_str()), row)).collect();
        for ((_, listing), full_dir) in dirs.into_iter().zip(&full_dirs) {
            rejected.extend(listing.rejected);
            for e in listing.entries {
                if e.kind == EntryKind::Dir {
                    continue;
                }
                let same = known
                    .get(&(full_dir.as_str(), e.name()))
                    .is_some_and(|row| same_local_stat((row.size, row.mtime_ns, row.ctime_ns, row.ino), &e));
                if same {
                    unchanged += 1;
                } else {
                    changed.push(e);
                }
            }
        }
        compare_time += t0.elapsed();
    }
    walker.await.map_err(|e| e.to_string())??;
    tracing::debug!(
        query_ms = query_time.as_millis() as u64, // summed over the queries in flight
        compare_ms = compare_time.as_millis() as u64,
        "export change detection: index reads and comparison"
    );
    Ok(Found { changed, unchanged, rejected })
}

/// List every directory under `root` (paths relative to it), a few at a
/// time in parallel, sending each group of listings on `tx`.
async fn walk_dirs(root: PosixRoot, tx: mpsc::Sender<Vec<(String, Listing)>>) -> Result<(), String> {
    use futures::{StreamExt, TryStreamExt};

    let mut pending = vec![String::new()];
    while !pending.is_empty() {
        let group = pending.split_off(pending.len().saturating_sub(LIST_PARALLELISM * 4));
        let listed: Vec<(String, Listing)> = futures::stream::iter(group)
            .map(|rel| {
                let r = root.clone();
                async move {
                    let listing = tokio::task::spawn_blocking({
                        let rel = rel.clone();
                        move || r.list_dir(&rel)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                    Ok::<_, String>((rel, listing))
                }
            })
            .buffered(LIST_PARALLELISM)
            .try_collect()
            .await?;
        for (_, listing) in &listed {
            pending
                .extend(listing.entries.iter().filter(|e| e.kind == EntryKind::Dir).map(|e| e.path.clone()));
        }
        if tx.send(listed).await.is_err() {
            // The comparer stopped (an error of its own): nothing more to do.
            return Ok(());
        }
    }
    Ok(())
}

/// Whether a local file still has the (size, mtime, ctime, inode) recorded
/// when it was last cached or exported. ctime cannot be set by users, so a
/// changed file never passes for unchanged.
fn same_local_stat(recorded: (Option<u64>, Option<i64>, Option<i64>, Option<u64>), e: &Entry) -> bool {
    let (size, mtime_ns, ctime_ns, ino) = recorded;
    size == Some(e.size)
        && mtime_ns == e.meta.mtime_ns.or(e.mtime_ns)
        && ctime_ns == e.local.map(|l| l.ctime_ns)
        && ino == e.local.map(|l| l.ino)
}

fn join_sub(sub: &str, rel: &str) -> String {
    match (sub.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (false, true) => sub.to_string(),
        (false, false) => format!("{sub}/{rel}"),
    }
}

/// Record exported files as `cached` with the stat seen before their upload.
async fn record_entries(
    env: &TaskEnv,
    target: &TargetRow,
    sub: &str,
    entries: &[Entry],
) -> Result<(), String> {
    for chunk in entries.chunks(INDEX_BATCH) {
        let rows: Vec<NsEntry> =
            chunk.iter().map(|e| index_row(&join_sub(sub, &e.path), e, EntryState::Cached, true)).collect();
        patiently(|| env.store.upsert_entries(&target.id, &rows)).await?;
    }
    Ok(())
}

/// After a preload, every entry under `sub` that `clean` accepts is local
/// and as in the bucket: record it as `cached` with the stat seen now.
/// `clean` is given the entry's copy in the checkpoint `run`, if it has one.
async fn record_cached(
    env: &TaskEnv,
    target: &TargetRow,
    sub: &str,
    root: PosixRoot,
    run: Option<i64>,
    clean: impl Fn(&Entry, Option<&DoneCopy>) -> bool,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<Vec<(String, Listing)>>(4);
    let walker = tokio::spawn(walk_dirs(root, tx));
    let mut batch = Vec::with_capacity(INDEX_BATCH);
    while let Some(listed) = rx.recv().await {
        let dirs: Vec<String> = listed.iter().map(|(dir, _)| dir.clone()).collect();
        let mut copies: HashMap<String, HashMap<String, DoneCopy>> = HashMap::new();
        if let Some(run) = run {
            for c in patiently(|| env.store.done_in_dirs(run, &dirs)).await? {
                copies.entry(c.dir.clone()).or_default().insert(c.name.clone(), c);
            }
        }
        for (dir, listing) in listed {
            let copies = copies.get(&dir);
            for e in listing.entries {
                if !clean(&e, copies.and_then(|names| names.get(e.name()))) {
                    continue;
                }
                batch.push(index_row(&join_sub(sub, &e.path), &e, EntryState::Cached, true));
                if batch.len() >= INDEX_BATCH {
                    patiently(|| env.store.upsert_entries(&target.id, &batch)).await?;
                    batch.clear();
                }
            }
        }
    }
    walker.await.map_err(|e| e.to_string())??;
    if !batch.is_empty() {
        patiently(|| env.store.upsert_entries(&target.id, &batch)).await?;
    }
    Ok(())
}

fn kind_str(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
    }
}

fn split_path(path: &str) -> (String, String) {
    match path.rsplit_once('/') {
        Some((d, n)) => (d.to_string(), n.to_string()),
        None => (String::new(), path.to_string()),
    }
}

/// An index row for `e` found at `path` (relative to the target directory).
fn index_row(path: &str, e: &Entry, state: EntryState, local: bool) -> NsEntry {
    let (dir, name) = split_path(path);
    let mtime_ns = e.meta.mtime_ns.or(e.mtime_ns).unwrap_or(0);
    NsEntry {
        dir,
        name,
        kind: kind_str(e.kind).to_string(),
        size: e.size,
        mtime_ns,
        mode: e.meta.mode.unwrap_or(0),
        uid: e.meta.uid.unwrap_or(0),
        gid: e.meta.gid.unwrap_or(0),
        etag: e.etag.clone(),
        state,
        local_size: local.then_some(e.size),
        local_mtime_ns: local.then_some(mtime_ns),
        local_ctime_ns: if local { e.local.map(|l| l.ctime_ns) } else { None },
        local_ino: if local { e.local.map(|l| l.ino) } else { None },
    }
}

/// `import` / `import_metadata`: fill the index and the directory tree from one listing.
async fn import(env: &TaskEnv, task: &TaskRow, progress: &Arc<Progress>) -> Result<(), String> {
    let target = linked_target(env, task).await?;
    let key_prefix = task.src_prefix.clone().unwrap_or_default();
    if key_prefix.starts_with('/') || key_prefix.split('/').any(|c| c == "..") {
        return Err("src_prefix: must be relative and must not contain '..'".into());
    }
    // List the deepest directory that holds every key of the prefix.
    let list_dir = match key_prefix.rfind('/') {
        Some(i) => key_prefix[..i].to_string(),
        None => String::new(),
    };
    let bucket = open_bucket(env, &target, &list_dir).await?;
    let Location::Posix(local) = open_target_dir(env, &target, "").await? else {
        unreachable!("target directories are POSIX")
    };
    let defaults = effective_attributes(task.attributes.as_ref(), &target.attributes);
    let mut importer = Importer {
        env,
        progress,
        with_meta: task.task_type == HpcTaskType::Import,
        defaults,
        dir_meta: PosixMeta {
            mode: Some(defaults.dir_mode),
            uid: Some(defaults.uid),
            gid: Some(defaults.gid),
            mtime_ns: None,
            atime_ns: None,
        },
        bucket: &bucket,
        local,
        target_id: target.id.clone(),
        key_prefix,
        list_dir,
        made_dirs: HashSet::new(),
        dir_rows: Vec::new(),
        open_files: Vec::new(),
        dir_times: Vec::new(),
    };

    // The listing hands batches over a short queue: it waits while the
    // importer is behind, so memory stays bounded.
    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let listing = &bucket;
    let lister = async move {
        let listed = bucket_list(listing, &tx).await;
        drop(tx);
        listed
    };
    let consumer = async {
        while let Some((entries, rejected)) = rx.recv().await {
            importer.batch(entries, rejected).await?;
        }
        Ok::<(), String>(())
    };
    let (listed, consumed) = tokio::join!(lister, consumer);
    consumed?;
    importer.finish().await?;
    listed.map_err(|e| e.0)?;
    importer.set_dir_times().await;
    Ok(())
}

type Batch = (Vec<Entry>, Vec<(String, String)>);

async fn bucket_list(bucket: &ObjectRoot, tx: &mpsc::Sender<Batch>) -> Result<(), ListError> {
    bucket
        .list_recursive_batched(INDEX_BATCH, |entries, rejected| {
            let tx = tx.clone();
            async move { tx.send((entries, rejected)).await.map_err(|_| ListError("import stopped".into())) }
        })
        .await
}

/// State of one import run.
struct Importer<'a> {
    env: &'a TaskEnv,
    progress: &'a Progress,
    /// `import`: restore the attributes stored in object metadata (a HEAD each).
    with_meta: bool,
    defaults: ForcedAttributes,
    dir_meta: PosixMeta,
    bucket: &'a ObjectRoot,
    local: PosixRoot,
    target_id: String,
    key_prefix: String,
    /// The bucket directory listed, relative to the bucket root.
    list_dir: String,
    made_dirs: HashSet<String>,
    /// Index rows of directories made for the current batch.
    dir_rows: Vec<NsEntry>,
    /// Files listed whose path later keys may still extend: each is a
    /// prefix of the next. A file's row (`None`: unchanged) is recorded
    /// once no later key can make it a directory too.
    open_files: Vec<(String, Option<NsEntry>)>,
    /// Directories with an mtime stored on their marker object, set once
    /// everything inside them is created.
    dir_times: Vec<(String, i64)>,
}

impl Importer<'_> {
    async fn batch(&mut self, entries: Vec<Entry>, rejected: Vec<(String, String)>) -> Result<(), String> {
        let p = self.progress;
        for (key, why) in rejected {
            p.listed.fetch_add(1, Relaxed);
            p.fail(&key, why);
        }
        let mut known = self.existing_rows(&entries).await?;
        let mut rows = Vec::with_capacity(entries.len());
        for e in entries {
            let path = if self.list_dir.is_empty() {
                e.path.clone()
            } else {
                format!("{}/{}", self.list_dir, e.path)
            };
            if !path.starts_with(&self.key_prefix) && !format!("{path}/").starts_with(&self.key_prefix) {
                continue;
            }
            p.listed.fetch_add(1, Relaxed);
            p.listed_bytes.fetch_add(e.size, Relaxed);
            let is_dir = e.kind == EntryKind::Dir;
            self.settle_open(&path, is_dir, &mut rows);
            match self.entry(e, &path, known.remove(&path)).await {
                Ok(row) if !is_dir => self.open_files.push((path, row)),
                Ok(Some(row)) => {
                    rows.push(row);
                    p.transferred.fetch_add(1, Relaxed);
                }
                Ok(None) => {
                    p.skipped.fetch_add(1, Relaxed);
                }
                Err(why) => p.fail(&path, why),
            }
        }
        rows.append(&mut self.dir_rows);
        if !rows.is_empty() {
            patiently(|| self.env.store.upsert_entries(&self.target_id, &rows)).await?;
        }
        Ok(())
    }

    /// The index row of one listed entry, `None` when it is left as it is.
    async fn entry(
        &mut self,
        mut e: Entry,
        path: &str,
        known: Option<NsEntry>,
    ) -> Result<Option<NsEntry>, String> {
        if self.with_meta {
            // Directories in a recursive listing are marker objects, which
            // may carry the directory's attributes.
            let found = if e.kind == EntryKind::Dir {
                self.bucket.stat_dir(&e.path).await
            } else {
                self.bucket.stat(&e.path).await
            };
            match found.map_err(|e| e.to_string())? {
                Some((full, warnings)) => {
                    for w in warnings {
                        self.progress.warn(format!("{path}: {w}"));
                    }
                    e = Entry { path: e.path.clone(), ..full };
                }
                // Deleted since it was listed.
                None => return Ok(None),
            }
        }
        let (parent, _) = split_path(path);
        for d in make_dirs(&self.local, &parent, &self.dir_meta, &mut self.made_dirs).await? {
            self.dir_rows.push(index_row(&d.path, &d, EntryState::Cached, true));
        }
        if !(self.with_meta && e.meta_loaded) {
            let mode =
                if e.kind == EntryKind::Dir { self.defaults.dir_mode } else { self.defaults.file_mode };
            e.meta.mode = Some(mode);
            e.meta.uid = Some(self.defaults.uid);
            e.meta.gid = Some(self.defaults.gid);
        }
        e.meta.mtime_ns = e.meta.mtime_ns.or(e.mtime_ns);
        if e.kind == EntryKind::Dir {
            let (l, p, meta) = (self.local.clone(), path.to_string(), e.meta);
            tokio::task::spawn_blocking(move || l.create_dir(&p, &meta))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            self.made_dirs.insert(path.to_string());
            if let (true, Some(ns)) = (e.mtime_exact, e.meta.mtime_ns) {
                self.dir_times.push((path.to_string(), ns));
            }
            return Ok(Some(index_row(path, &e, EntryState::Cached, true)));
        }
        let state = match known.as_ref().map(|row| row.state) {
            // Local changes not exported yet win over the bucket.
            Some(EntryState::Dirty) | Some(EntryState::Local) => return Ok(None),
            // The same object as the local copy: keep it.
            Some(EntryState::Cached) if known.as_ref().is_some_and(|row| same_object(row, &e)) => {
                return Ok(None)
            }
            Some(EntryState::Cached) => {
                // The bucket holds another object: drop the local copy so
                // that no reader sees stale bytes; the next read loads it
                // again. Unless the copy was changed here since it was
                // cached: local changes win, and the next export uploads them.
                let row = known.clone().expect("the state came from the row");
                let (l, p) = (self.local.clone(), path.to_string());
                let kept = tokio::task::spawn_blocking(move || -> Result<bool, ferry_storage::Error> {
                    match l.stat(&p)? {
                        Some(now)
                            if !same_local_stat(
                                (row.local_size, row.local_mtime_ns, row.local_ctime_ns, row.local_ino),
                                &now,
                            ) =>
                        {
                            Ok(true)
                        }
                        Some(_) => l.remove(&p, EntryKind::File).map(|()| false),
                        None => Ok(false),
                    }
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot drop the stale local copy: {e}"))?;
                if kept {
                    self.progress
                        .warn(format!("{path}: changed here since it was cached; kept, not replaced"));
                    return Ok(None);
                }
                EntryState::Stub
            }
            _ => EntryState::Stub,
        };
        Ok(Some(index_row(path, &e, state, false)))
    }

    /// Settle the files of [`Self::open_files`] that the key at `path` (a
    /// directory when `is_dir`) shows the outcome of: a file that `path`
    /// does not extend can be named by no later key (keys come sorted) and
    /// its row goes to `rows`; a file that is also a directory, by a
    /// marker or by keys below it, fails, and the directory is imported
    /// (as a sync keeps the directory).
    fn settle_open(&mut self, path: &str, is_dir: bool, rows: &mut Vec<NsEntry>) {
        let p = self.progress;
        while let Some((file, _)) = self.open_files.last() {
            let below = path.len() > file.len() && path.starts_with(file.as_str());
            let clash = (below && path.as_bytes()[file.len()] == b'/') || (is_dir && path == file);
            if below && !clash {
                break;
            }
            let (file, row) = self.open_files.pop().expect("just looked at");
            if clash {
                p.fail(&file, "an object and a directory have the same name: the directory is imported");
                continue;
            }
            match row {
                Some(row) => {
                    rows.push(row);
                    p.transferred.fetch_add(1, Relaxed);
                }
                None => {
                    p.skipped.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Record the files still open once the listing has ended.
    async fn finish(&mut self) -> Result<(), String> {
        let mut rows = Vec::new();
        // No key extends the empty path: every open file is settled.
        self.settle_open("", false, &mut rows);
        if !rows.is_empty() {
            patiently(|| self.env.store.upsert_entries(&self.target_id, &rows)).await?;
        }
        Ok(())
    }

    /// Give directories the mtimes stored on their markers; one that cannot
    /// take it is a warning.
    async fn set_dir_times(&mut self) {
        let (local, times) = (self.local.clone(), std::mem::take(&mut self.dir_times));
        let errors =
            tokio::task::spawn_blocking(move || local.set_dir_mtimes(times)).await.unwrap_or_default();
        for (path, e) in errors {
            self.progress.warn(format!("{path}: directory mtime not set: {e}"));
        }
    }

    /// Rows already in the index for the entries of one batch, by path.
    async fn existing_rows(&self, entries: &[Entry]) -> Result<HashMap<String, NsEntry>, String> {
        let mut dirs: HashSet<String> = HashSet::new();
        for e in entries {
            let path = if self.list_dir.is_empty() {
                e.path.clone()
            } else {
                format!("{}/{}", self.list_dir, e.path)
            };
            dirs.insert(split_path(&path).0);
        }
        let dirs: Vec<String> = dirs.into_iter().collect();
        let rows = patiently(|| self.env.store.entries_in_dirs(&self.target_id, &dirs)).await?;
        let mut known = HashMap::with_capacity(rows.len());
        for row in rows {
            let path =
                if row.dir.is_empty() { row.name.clone() } else { format!("{}/{}", row.dir, row.name) };
            known.insert(path, row);
        }
        Ok(known)
    }
}

/// The error of a listing hand-over: a message.
struct ListError(String);

impl From<ferry_storage::Error> for ListError {
    fn from(e: ferry_storage::Error) -> Self {
        ListError(format!("listing failed: {e}"))
    }
}

/// Whether a listed object is the one an index row was made from: the same
/// ETag when both have one, else the same size and mtime.
fn same_object(row: &NsEntry, e: &Entry) -> bool {
    let mtime = e.meta.mtime_ns.or(e.mtime_ns);
    match (row.etag.as_deref(), e.etag.as_deref()) {
        (Some(a), Some(b)) => a == b && row.size == e.size,
        _ => row.size == e.size && mtime == Some(row.mtime_ns),
    }
}

/// Create `dir` and its missing parents with `meta`, remembering them in
/// `made`. Returns the directories newly seen (as stat after creation), so
/// that they are indexed: most buckets have no object for a directory, yet a
/// mount lists them like any other entry.
async fn make_dirs(
    local: &PosixRoot,
    dir: &str,
    meta: &PosixMeta,
    made: &mut HashSet<String>,
) -> Result<Vec<Entry>, String> {
    if dir.is_empty() || made.contains(dir) {
        return Ok(Vec::new());
    }
    if made.len() > 100_000 {
        made.clear();
    }
    let mut todo = Vec::new();
    let mut cur = dir.to_string();
    loop {
        if made.contains(&cur) {
            break;
        }
        todo.push(cur.clone());
        match cur.rsplit_once('/') {
            Some((parent, _)) => cur = parent.to_string(),
            None => break,
        }
    }
    let (l, m, dirs) = (local.clone(), *meta, todo.clone());
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::with_capacity(dirs.len());
        for d in dirs.iter().rev() {
            let entry = match l.stat(d)? {
                Some(e) if e.kind == EntryKind::Dir => e,
                _ => {
                    l.create_dir(d, &m)?;
                    l.stat(d)?.ok_or_else(|| ferry_storage::Error::NotFound { what: d.clone() })?
                }
            };
            seen.push(entry);
        }
        Ok::<_, ferry_storage::Error>(seen)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot create directory: {e}"))?;
    made.extend(todo);
    Ok(seen)
}

/// Remove temporary files (`.ferry-tmp.*`) left by interrupted writes under
/// `under` (`""` for all) in the shares directory `shares_root`, never
/// through a symlink a user of a share put in place of a directory;
/// returns how many were removed.
pub fn sweep_temp_files(shares_root: &Path, under: &str) -> usize {
    PosixRoot::open(shares_root, false, false).map_or(0, |root| root.sweep_temp_files(under))
}

#[cfg(test)]
mod tests {
    use ferry_model::hpc::OctalMode;
    use ferry_storage::TEMP_PREFIX;

    use super::*;

    #[test]
    fn files_below_a_failed_directory_are_not_clean() {
        let failed: HashSet<&str> = ["run7", "a/b.txt"].into();
        for path in ["run7", "run7/x", "run7/deep/y", "a/b.txt"] {
            assert!(failed_or_below(&failed, path), "{path}");
        }
        for path in ["run70/x", "run", "a/b.txt2", "a/c", "b.txt"] {
            assert!(!failed_or_below(&failed, path), "{path}");
        }
        for whole in ["", "/"] {
            let whole_run: HashSet<&str> = [whole].into();
            assert!(
                failed_or_below(&whole_run, "any/file") && failed_or_below(&whole_run, "top"),
                "{whole:?}"
            );
        }
    }

    #[test]
    fn attributes_task_over_target_over_default() {
        let target =
            TargetAttributes { file_mode: OctalMode::from_wire(600), uid: Some(7), ..Default::default() };
        let task = TargetAttributes { uid: Some(9), ..Default::default() };
        let a = effective_attributes(Some(&task), &target);
        assert_eq!((a.file_mode, a.dir_mode, a.uid, a.gid), (0o600, DEFAULT_DIR_MODE, 9, 0));
        let a = effective_attributes(None, &TargetAttributes::default());
        assert_eq!((a.file_mode, a.dir_mode, a.uid, a.gid), (DEFAULT_FILE_MODE, DEFAULT_DIR_MODE, 0, 0));
    }

    #[test]
    fn failure_report_is_csv_with_quoting() {
        let o = TaskOutcome {
            failures: vec![Failure { path: "a,b".into(), reason: "said \"no\"".into() }],
            ..Default::default()
        };
        assert_eq!(
            o.failure_report().unwrap(),
            "path,status,error_code,message\n\"a,b\",FAIL,ITEM_FAILED,\"said \"\"no\"\"\"\n"
        );
        assert!(TaskOutcome::default().failure_report().is_none());
        // A failure that is not of an item still makes the message.
        assert_eq!(o.message().as_deref(), Some("1 problem(s) besides the items, first: a,b: said \"no\""));
        assert_eq!(TaskOutcome::default().message(), None);
        // Past what the report keeps, a last row says how many are missing.
        let mut o = o;
        o.progress.failed_files = 3;
        assert!(
            o.failure_report().unwrap().ends_with(
                "\n,FAIL,REPORT_TRUNCATED,2 more failed items are not listed (the report keeps the first 1)\n"
            ),
            "{:?}",
            o.failure_report()
        );
    }

    #[test]
    fn sweep_removes_only_temporary_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("x/y")).unwrap();
        std::fs::write(d.path().join(format!("x/y/{TEMP_PREFIX}abc")), b"partial").unwrap();
        std::fs::write(d.path().join("x/keep"), b"whole").unwrap();
        assert_eq!(sweep_temp_files(d.path(), ""), 1);
        assert!(d.path().join("x/keep").exists());
        assert!(!d.path().join(format!("x/y/{TEMP_PREFIX}abc")).exists());
    }
}
