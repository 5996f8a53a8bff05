//! Live counters (read by progress displays) and the final report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

/// How many failures and plan lines the report keeps in full.
pub const REPORT_LIMIT: usize = 10_000;

/// Receives every failure and plan line as it happens, beyond what the
/// report keeps (a failure list of a million-file run, a dry run's plan
/// printed as it is made).
pub trait Journal: Send + Sync + std::fmt::Debug {
    fn failure(&self, failure: &Failure);
    fn plan(&self, line: &PlanLine);
}

/// The bytes one attempt at an item moved, in `bytes_moving` as they
/// move; taken back out unless the attempt succeeds ([`Moving::keep`]): a
/// failed item is settled as unmoved, a retried one moves them again.
pub(crate) struct Moving<'a> {
    progress: &'a Progress,
    n: AtomicU64,
    kept: bool,
}

impl Moving<'_> {
    pub(crate) fn add(&self, len: u64) {
        self.n.fetch_add(len, Relaxed);
        self.progress.bytes_moving.fetch_add(len, Relaxed);
    }

    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.progress.bytes_moving.fetch_sub(self.n.load(Relaxed), Relaxed);
        }
    }
}

/// Counters updated while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    /// Source entries seen by the scan (files, symlinks, directories).
    pub listed: AtomicU64,
    /// Bytes of the source files seen by the scan.
    pub listed_bytes: AtomicU64,
    /// Items whose transfer (or creation) completed.
    pub transferred: AtomicU64,
    pub transferred_bytes: AtomicU64,
    /// Transferred files the store copied itself (no data through ferry).
    pub copied_in_store: AtomicU64,
    /// Bytes moved so far, including items still in flight.
    pub bytes_moving: AtomicU64,
    /// Items found identical at the destination.
    pub skipped: AtomicU64,
    pub skipped_bytes: AtomicU64,
    /// Bytes of listed source files settled without moving them, besides
    /// the skipped ones: failed, not tried, or updated in place.
    pub unmoved_bytes: AtomicU64,
    /// Listed source items (or directories whose listing failed) that failed.
    pub failed: AtomicU64,
    /// Failures that are not of a listed source item: deletions of
    /// extraneous items, the `--max-delete` refusal.
    pub other_failed: AtomicU64,
    /// Items not tried because the run stopped.
    pub not_tried: AtomicU64,
    /// Items left out by filters.
    pub excluded: AtomicU64,
    pub deleted: AtomicU64,
    /// The scan has finished.
    pub scan_done: AtomicBool,
    pub(crate) failures: Mutex<Kept<Failure>>,
    pub(crate) warnings: Mutex<Vec<String>>,
    pub(crate) plan: Mutex<Kept<PlanLine>>,
    /// Plan lines made, kept or not.
    pub(crate) planned: AtomicU64,
    pub(crate) journal: OnceLock<Arc<dyn Journal>>,
}

impl Progress {
    /// Send every failure and plan line to `journal` too (once, before the run).
    pub fn set_journal(&self, journal: Arc<dyn Journal>) {
        let _ = self.journal.set(journal);
    }

    /// A listed source item failed.
    pub(crate) fn fail(&self, path: &str, reason: impl Into<String>) {
        self.failed.fetch_add(1, Relaxed);
        self.report_failure(path, reason.into());
    }

    /// A listed source file of `size` bytes failed: settled, unmoved.
    pub(crate) fn fail_file(&self, path: &str, size: u64, reason: impl Into<String>) {
        self.fail(path, reason);
        self.unmoved_bytes.fetch_add(size, Relaxed);
    }

    /// Bytes moved so far, those of items still in flight included.
    pub fn bytes_moved(&self) -> u64 {
        self.transferred_bytes.load(Relaxed).max(self.bytes_moving.load(Relaxed))
    }

    /// Bytes of listed files not settled yet: what is still to move, as
    /// far as the scan has seen (for an ETA).
    pub fn bytes_left(&self) -> u64 {
        let settled =
            self.skipped_bytes.load(Relaxed) + self.unmoved_bytes.load(Relaxed) + self.bytes_moved();
        self.listed_bytes.load(Relaxed).saturating_sub(settled)
    }

    /// Count the bytes of one attempt at an item as they move.
    pub(crate) fn attempt(&self) -> Moving<'_> {
        Moving { progress: self, n: AtomicU64::new(0), kept: false }
    }

    /// A failure that is not of a listed source item (see `other_failed`).
    pub(crate) fn fail_other(&self, path: &str, reason: impl Into<String>) {
        self.other_failed.fetch_add(1, Relaxed);
        self.report_failure(path, reason.into());
    }

    fn report_failure(&self, path: &str, reason: String) {
        let failure = Failure { path: path.to_string(), reason };
        if let Some(j) = self.journal.get() {
            j.failure(&failure);
        }
        self.failures.lock().expect("failures lock").push(failure);
    }

    pub(crate) fn warn(&self, msg: impl Into<String>) {
        let mut w = self.warnings.lock().expect("warnings lock");
        if w.len() < REPORT_LIMIT {
            w.push(msg.into());
        }
    }

    /// `size` is `None` for a directory (removed with what it holds).
    pub(crate) fn plan(&self, action: &'static str, path: &str, size: Option<u64>, reason: &'static str) {
        self.planned.fetch_add(1, Relaxed);
        let line = PlanLine { action, path: path.to_string(), size, reason };
        if let Some(j) = self.journal.get() {
            j.plan(&line);
        }
        self.plan.lock().expect("plan lock").push(line);
    }
}

/// The [`REPORT_LIMIT`] first lines in their order, whatever order they
/// come in: items end in any order, and the report of a run with more
/// lines than it keeps names the same ones every time.
#[derive(Debug)]
pub(crate) struct Kept<T: Ord> {
    lines: Vec<T>,
}

impl<T: Ord> Default for Kept<T> {
    fn default() -> Self {
        Self { lines: Vec::new() }
    }
}

impl<T: Ord> Kept<T> {
    pub(crate) fn push(&mut self, line: T) {
        self.lines.push(line);
        if self.lines.len() >= 2 * REPORT_LIMIT {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.lines.sort_unstable();
        self.lines.truncate(REPORT_LIMIT);
    }

    /// The lines kept, in order; they stay kept.
    pub(crate) fn lines(&mut self) -> Vec<T>
    where
        T: Clone,
    {
        self.trim();
        self.lines.clone()
    }
}

/// In path order, a failure of the whole run first.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Failure {
    /// Empty for a failure of the whole run.
    pub path: String,
    pub reason: String,
}

/// The failure report's first line (a task's report, `--failures-csv`).
pub const FAILURE_CSV_HEADER: &str = "path,status,error_code,message\n";

impl Failure {
    /// One line of the failure report.
    pub fn csv_row(&self) -> String {
        let code = if self.path.is_empty() { "TASK_FAILED" } else { "ITEM_FAILED" };
        format!("{},FAIL,{code},{}\n", csv_field(&self.path), csv_field(&self.reason))
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One planned action (shown by `--dry-run`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlanLine {
    pub action: &'static str,
    pub path: String,
    /// Bytes of the file; `None` for a directory.
    pub size: Option<u64>,
    pub reason: &'static str,
}

/// In path order, deletions (which come after the copies) last.
impl Ord for PlanLine {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let deletion = |l: &Self| l.action == "delete";
        (deletion(self).cmp(&deletion(other))).then_with(|| self.path.cmp(&other.path)).then_with(|| {
            (self.action, self.size, self.reason).cmp(&(other.action, other.size, other.reason))
        })
    }
}

impl PartialOrd for PlanLine {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The outcome of a run. Counters reconcile:
/// `listed = transferred + skipped + failed + excluded + not_tried`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub source: String,
    pub destination: String,
    pub dry_run: bool,
    pub listed: u64,
    pub transferred: u64,
    pub transferred_bytes: u64,
    /// Transferred files the store copied itself, between two of its
    /// buckets: their bytes did not go through ferry.
    pub copied_in_store: u64,
    pub skipped: u64,
    /// Listed source items that failed (each is in `failures`).
    pub failed: u64,
    /// Failures that are not of a listed source item (each is in
    /// `failures` too): deletions of extraneous items, the `--max-delete`
    /// refusal, files found different by `--verify all`.
    pub other_failures: u64,
    pub excluded: u64,
    /// Extraneous destination items removed (by a dry run: planned for removal).
    pub deleted: u64,
    pub elapsed_seconds: f64,
    /// Whether a checkpoint of an interrupted run was used.
    pub resumed: bool,
    /// Multipart uploads left open by the interrupted run, aborted at the start.
    pub aborted_uploads: u64,
    /// Why deletions did not run, when `--delete` was asked for and skipped.
    pub delete_skipped: Option<String>,
    /// The source is a prefix inside a bucket and nothing at all is stored
    /// under it: a mistyped name, or the key of one object. Shown only when
    /// set (the CLI stops or looks the key up before printing a report).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub source_missing: bool,
    /// Why the run stopped before trying every item (a store that could
    /// not be connected to), if it did.
    pub stopped: Option<String>,
    /// Items not tried because the run stopped.
    pub not_tried: u64,
    /// The first failures in path order (up to 10,000).
    pub failures: Vec<Failure>,
    /// Failures beyond those listed in `failures`.
    pub failures_omitted: u64,
    pub warnings: Vec<String>,
    /// Groups of source paths that are hard links to the same file (copied as separate files).
    pub hard_links: Vec<Vec<String>>,
    /// The first planned actions of a dry run in path order, deletions
    /// last (up to 10,000).
    pub plan: Vec<PlanLine>,
    /// Planned actions beyond those listed in `plan`.
    pub plan_omitted: u64,
    /// The checkpoint this run recorded its done items in, when it had one
    /// (not for a dry run): what it copied can be read back from the store.
    #[serde(skip)]
    pub checkpoint_run: Option<i64>,
}

impl Report {
    pub fn success(&self) -> bool {
        self.failed == 0 && self.other_failures == 0 && self.stopped.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a failed attempt moved is not counted as moved: the item is
    /// settled as unmoved, or moves it again; what is left stays right.
    #[test]
    fn a_failed_attempt_takes_its_bytes_back() {
        let p = Progress::default();
        p.listed_bytes.store(100, Relaxed);
        {
            let failed = p.attempt();
            failed.add(60);
            assert_eq!(p.bytes_left(), 40);
        }
        assert_eq!((p.bytes_moving.load(Relaxed), p.bytes_left()), (0, 100));
        let retried = p.attempt();
        retried.add(100);
        retried.keep();
        p.transferred_bytes.store(100, Relaxed);
        assert_eq!((p.bytes_moving.load(Relaxed), p.bytes_left()), (100, 0));
    }

    #[test]
    fn the_report_keeps_the_first_lines_in_path_order_whatever_order_they_end_in() {
        let p = Progress::default();
        let n = 3 * REPORT_LIMIT;
        p.plan("delete", "a-extraneous", Some(1), "not in source");
        for i in (0..n).rev() {
            p.plan("copy", &format!("f{i:06}"), Some(1), "missing");
            p.fail(&format!("f{i:06}"), "refused");
        }
        let plan = p.plan.lock().unwrap().lines();
        let failures = p.failures.lock().unwrap().lines();
        let want: Vec<String> = (0..REPORT_LIMIT).map(|i| format!("f{i:06}")).collect();
        assert_eq!(plan.iter().map(|l| l.path.clone()).collect::<Vec<_>>(), want, "deletions come last");
        assert_eq!(failures.iter().map(|f| f.path.clone()).collect::<Vec<_>>(), want);
        assert_eq!(p.planned.load(Relaxed), n as u64 + 1);
    }
}
