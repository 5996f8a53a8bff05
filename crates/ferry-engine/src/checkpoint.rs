//! Run checkpoints: finished items are recorded in batches through the
//! store, so that a rerun after a crash skips them without re-checking.

use std::collections::VecDeque;
use std::time::Duration;

use ferry_store::{Checkpoint, DoneItem, Known, RunLock, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where to keep the checkpoint of a run.
#[derive(Debug, Clone)]
pub struct CheckpointSpec {
    pub store: Store,
    /// When another run of the same pair is in progress: wait for it to end
    /// (tasks of the service) rather than fail (the CLI).
    pub wait_for_pair: bool,
}

pub(crate) struct Recorder {
    store: Store,
    pub(crate) checkpoint: Checkpoint,
    tx: Option<mpsc::Sender<DoneItem>>,
    task: Option<JoinHandle<Result<(), ferry_store::Error>>>,
    /// This process's claim on the pair, for as long as the run lasts.
    lock: Option<RunLock>,
    /// A dry run's view: the done set is read, nothing is written.
    read_only: bool,
}

const BATCH: usize = 512;
/// How often a run notes in its checkpoint that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// Clock difference allowed between ferry and the object store when
/// deciding which uploads an interrupted run began.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// Whether an upload that began at `initiated` (by the store's clock) may
/// belong to a run active during `window` (ms since the epoch, by ours).
/// An upload of unknown age is never taken for the run's.
fn begun_within(initiated: Option<std::time::SystemTime>, window: (i64, i64)) -> bool {
    let at = |ms: i64| std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let (from, to) = (at(window.0) - CLOCK_SLACK, at(window.1) + CLOCK_SLACK);
    initiated.is_some_and(|t| from <= t && t <= to)
}

/// Abort the multipart uploads an interrupted run left open at `dst`: those
/// begun while it was active (`window`, ms since the epoch, widened by
/// [`CLOCK_SLACK`]) for a key whose source is a file in `src` (another
/// writer under the same prefix at the same time is left alone unless it
/// writes the very keys this run writes). Runs before anything is written,
/// so none of this run's own uploads exist yet. Returns how many were
/// aborted; trouble is a warning, not a failure (the uploads only cost space).
pub(crate) async fn abort_left_uploads(
    src: &ferry_storage::Location,
    dst: &ferry_storage::ObjectRoot,
    window: (i64, i64),
    progress: &crate::progress::Progress,
) -> u64 {
    let uploads = match dst.incomplete_uploads().await {
        Ok(u) => u,
        Err(e) => {
            progress.warn(format!("could not look for uploads left by the interrupted run: {e}"));
            return 0;
        }
    };
    let mut aborted = 0;
    for u in uploads.iter().filter(|u| begun_within(u.initiated, window)) {
        match src.stat(&u.key).await {
            Ok(Some((e, _))) if e.kind == ferry_model::EntryKind::File => {}
            _ => continue,
        }
        match dst.abort_upload(u).await {
            Ok(()) => aborted += 1,
            Err(e) => progress.warn(format!("could not abort the interrupted upload of {}: {e}", u.key)),
        }
    }
    if aborted > 0 {
        tracing::info!(aborted, "aborted multipart uploads left by the interrupted run");
    }
    aborted
}

impl Recorder {
    pub(crate) async fn start(spec: &CheckpointSpec, key: &str, src: &str, dst: &str) -> crate::Result<Self> {
        let store = spec.store.clone();
        let lock = loop {
            match store.lock_run(key).await? {
                Some(lock) => break lock,
                None if spec.wait_for_pair => tokio::time::sleep(Duration::from_secs(1)).await,
                None => {
                    return Err(crate::Error::Busy(format!(
                        "another ferry sync from {src} to {dst} with the same options is running; \
                         wait for it to end (two runs of one pair would undo each other's work)"
                    )))
                }
            }
        };
        let checkpoint = store.begin_run(key, src, dst).await?;
        let (tx, mut rx) = mpsc::channel::<DoneItem>(BATCH * 4);
        let writer = store.clone();
        let run_id = checkpoint.run_id;
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut alive = std::time::Instant::now();
            loop {
                if alive.elapsed() >= HEARTBEAT {
                    alive = std::time::Instant::now();
                    if let Err(e) = writer.touch_run(run_id).await {
                        tracing::warn!(error = %e, "cannot note in the checkpoint that the run is alive");
                    }
                }
                let deadline = tokio::time::sleep(Duration::from_millis(200));
                tokio::pin!(deadline);
                let mut closed = false;
                loop {
                    tokio::select! {
                        item = rx.recv() => match item {
                            Some(item) => {
                                batch.push(item);
                                if batch.len() >= BATCH {
                                    break;
                                }
                            }
                            None => {
                                closed = true;
                                break;
                            }
                        },
                        _ = &mut deadline => break,
                    }
                }
                if !batch.is_empty() {
                    writer.record_done(run_id, &batch).await?;
                    batch.clear();
                }
                if closed {
                    return Ok(());
                }
            }
        });
        Ok(Self { store, checkpoint, tx: Some(tx), task: Some(task), lock: Some(lock), read_only: false })
    }

    /// What a dry run knows from the pair's checkpoint: its done set, read
    /// only (no claim on the pair, nothing recorded, the run is neither
    /// resumed nor finished). `None` when the pair never ran.
    pub(crate) async fn read_only(spec: &CheckpointSpec, key: &str) -> crate::Result<Option<Self>> {
        let Some(run_id) = spec.store.find_run(key).await? else { return Ok(None) };
        Ok(Some(Self {
            store: spec.store.clone(),
            checkpoint: Checkpoint { run_id, resumed: false, interrupted: None },
            tx: None,
            task: None,
            lock: None,
            read_only: true,
        }))
    }

    /// The done set of one directory, read in pages as the listing goes.
    pub(crate) fn done_in_dir(&self, dir: &str) -> DoneCursor<'_> {
        DoneCursor {
            recorder: self,
            dir: dir.to_string(),
            page: VecDeque::new(),
            after: String::new(),
            end: false,
        }
    }

    pub(crate) async fn record(&self, item: DoneItem) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(item).await;
        }
    }

    /// Flush what is queued; when the run succeeded, forget the checkpoint.
    pub(crate) async fn finish(&mut self, success: bool) -> crate::Result<()> {
        self.tx.take();
        if let Some(task) = self.task.take() {
            task.await.expect("checkpoint writer panicked")?;
        }
        if success && !self.read_only {
            self.store.finish_run(self.checkpoint.run_id).await?;
        }
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        Ok(())
    }
}

/// Done items of one directory, read page by page in byte order of the
/// name, for a listing that is in the same order: a directory of millions
/// of files never has its whole done set in memory.
pub(crate) struct DoneCursor<'a> {
    recorder: &'a Recorder,
    dir: String,
    page: VecDeque<(String, Known)>,
    /// The last name read from the store.
    after: String,
    end: bool,
}

/// Done items read per query.
const DONE_PAGE: i64 = 2000;

impl DoneCursor<'_> {
    /// What is known of `name`. Names must be asked for in increasing order.
    pub(crate) async fn get(&mut self, name: &str) -> Option<Known> {
        loop {
            while self.page.front().is_some_and(|(n, _)| n.as_str() < name) {
                self.page.pop_front();
            }
            match self.page.front() {
                Some((n, _)) if n == name => return self.page.pop_front().map(|(_, k)| k),
                Some(_) => return None,
                None if self.end => return None,
                None => self.refill().await,
            }
        }
    }

    async fn refill(&mut self) {
        let (store, run) = (&self.recorder.store, self.recorder.checkpoint.run_id);
        match store.done_page(run, &self.dir, &self.after, DONE_PAGE).await {
            Ok(page) => {
                self.end = (page.len() as i64) < DONE_PAGE;
                match page.last() {
                    // Names only ever grow: a page that does not move on
                    // ends the cursor (items are then checked in full).
                    Some((last, _)) if last.as_str() > self.after.as_str() => self.after = last.clone(),
                    _ => self.end = true,
                }
                self.page.extend(page);
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint lookup failed; checking items in full");
                self.end = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_store::DoneItem;

    #[test]
    fn only_uploads_begun_while_the_run_was_alive_are_its_own() {
        let t = |ms: u64| Some(std::time::UNIX_EPOCH + Duration::from_millis(ms));
        let window = (1_000_000_000, 1_000_600_000);
        let slack = CLOCK_SLACK.as_millis() as u64;
        assert!(begun_within(t(1_000_300_000), window));
        assert!(begun_within(t(1_000_000_000 - slack), window), "clock slack before");
        assert!(begun_within(t(1_000_600_000 + slack), window), "clock slack after");
        assert!(!begun_within(t(1_000_000_000 - slack - 1), window), "an older upload is another writer's");
        assert!(!begun_within(t(1_000_600_000 + slack + 1), window), "a later upload is another writer's");
        assert!(!begun_within(None, window));
    }

    #[tokio::test]
    async fn the_done_cursor_pages_through_a_large_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/s.db", dir.path().display())).await.unwrap();
        let spec = CheckpointSpec { store: store.clone(), wait_for_pair: false };
        let rec = Recorder::start(&spec, "k", "a", "b").await.unwrap();
        let n = 3 * DONE_PAGE as u64 + 7;
        let items: Vec<DoneItem> = (0..n)
            .map(|i| DoneItem {
                dir: "d".into(),
                name: format!("n{i:06}"),
                size: i,
                mtime_ns: 1,
                ctime_ns: None,
                dst_version: None,
            })
            .collect();
        store.record_done(rec.checkpoint.run_id, &items).await.unwrap();

        // Every third name, then names that were never done.
        let mut c = rec.done_in_dir("d");
        assert_eq!(c.get("a").await, None);
        for i in (0..n).step_by(3) {
            assert_eq!(
                c.get(&format!("n{i:06}")).await,
                Some(Known { size: i, mtime_ns: 1, ctime_ns: None, dst_version: None }),
                "n{i:06}"
            );
        }
        assert_eq!(c.get("n999999").await, None);
        assert_eq!(c.get("z").await, None);
        // Another directory knows nothing.
        assert_eq!(rec.done_in_dir("e").get("n000001").await, None);
    }
}
