//! Run checkpoints: finished items are recorded in batches through the
//! store, so that a rerun after a crash skips them without re-checking.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_store::{bounded, Checkpoint, DoneItem, Known, RunLock, Store};
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
    tx: Option<DoneSender>,
    /// Records done items; ends with why it stopped recording, if it did.
    task: Option<JoinHandle<Option<String>>>,
    /// This process's claim on the pair, for as long as the run lasts.
    lock: Option<RunLock>,
    /// A dry run's view: the done set is read, nothing is written.
    read_only: bool,
}

const BATCH: usize = 512;
/// Done items gathered on the run's side before they are handed to the
/// writer; fewer wait at most 200 ms, until the writer's next round.
const HANDOVER: usize = 64;
/// Done items held while the database cannot be written, before the run
/// waits for it (back-pressure).
const PENDING_MAX: usize = 100_000;
/// How long the database may stay unwritable before the run goes on
/// without recording (a restart or a lock usually lasts seconds).
const OUTAGE_LIMIT: Duration = Duration::from_secs(60);
/// How long one checkpoint query may take before it counts as failed (the
/// outage limit, when shorter): a database cut off by a partition holds a
/// query for as long as TCP does.
const QUERY_LIMIT: Duration = Duration::from_secs(10);
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
        let (tx, rx) = done_channel();
        let task = tokio::spawn(write_done(store.clone(), checkpoint.run_id, rx, OUTAGE_LIMIT));
        Ok(Self { store, checkpoint, tx: Some(tx), task: Some(task), lock: Some(lock), read_only: false })
    }

    /// What a dry run knows from the pair's checkpoint: its done set, read
    /// only (no claim on the pair, nothing recorded, the run is neither
    /// resumed nor finished). `None` when the pair never ran.
    pub(crate) async fn read_only(spec: &CheckpointSpec, key: &str) -> crate::Result<Option<Self>> {
        let Some(run_id) = spec.store.find_run(key).await? else { return Ok(None) };
        Ok(Some(Self {
            store: spec.store.clone(),
            checkpoint: Checkpoint { run_id, resumed: false, interrupted: None, generation: 0 },
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
            tx.send(item).await;
        }
    }

    /// Flush what is queued; when the run succeeded, mark the checkpoint
    /// finished. The items were copied whatever the database did, so its
    /// trouble is a warning (returned), not a failure of the run.
    pub(crate) async fn finish(&mut self, success: bool) -> Option<String> {
        self.tx.take();
        let mut trouble = match self.task.take() {
            Some(task) => task.await.expect("checkpoint writer panicked"),
            None => None,
        };
        if success && !self.read_only && trouble.is_none() {
            if let Err(e) = bounded(QUERY_LIMIT, self.store.finish_run(self.checkpoint.run_id)).await {
                trouble = Some(format!(
                    "the checkpoint could not be marked finished ({e}): the next run resumes this one"
                ));
            }
        }
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        trouble
    }
}

/// The run's side of the way to the writer. Items are gathered and handed
/// over [`HANDOVER`] at a time: a run of small files that woke the writer
/// (and with it an idle runtime thread) once per item spent a fifth of its
/// CPU time on those wake-ups. The writer takes what is gathered on each of
/// its rounds too, so that a slow run's items are not held back.
struct DoneSender {
    tx: mpsc::Sender<Vec<DoneItem>>,
    gathered: Arc<Mutex<Vec<DoneItem>>>,
}

/// The writer's side: whole hand-overs, and what is gathered meanwhile.
struct DoneReceiver {
    rx: mpsc::Receiver<Vec<DoneItem>>,
    gathered: Arc<Mutex<Vec<DoneItem>>>,
}

/// Room for [`BATCH`] × 4 items in hand-overs: beyond that (a database that
/// cannot keep up, or [`PENDING_MAX`] held while it is away) the run waits.
fn done_channel() -> (DoneSender, DoneReceiver) {
    let (tx, rx) = mpsc::channel(BATCH * 4 / HANDOVER);
    let gathered = Arc::new(Mutex::new(Vec::with_capacity(HANDOVER)));
    (DoneSender { tx, gathered: gathered.clone() }, DoneReceiver { rx, gathered })
}

impl DoneSender {
    async fn send(&self, item: DoneItem) {
        let full = {
            let mut gathered = self.gathered.lock().expect("done items lock");
            gathered.push(item);
            (gathered.len() >= HANDOVER)
                .then(|| std::mem::replace(&mut *gathered, Vec::with_capacity(HANDOVER)))
        };
        if let Some(items) = full {
            // Only fails once the writer has ended, and then nothing is recorded anyway.
            let _ = self.tx.send(items).await;
        }
    }
}

impl DoneReceiver {
    fn take_gathered(&self) -> Vec<DoneItem> {
        std::mem::take(&mut *self.gathered.lock().expect("done items lock"))
    }
}

/// The checkpoint writer: done items, recorded in batches of up to
/// [`BATCH`] at least every 200 ms, and a sign of life every [`HEARTBEAT`].
/// A database that cannot be written (restarted, locked by another
/// process) is retried with backoff while items are held in memory, up to
/// [`PENDING_MAX`] (then the run waits); after `outage_limit` of failures the
/// run goes on without recording, and the reason is returned.
async fn write_done(
    store: Store,
    run_id: i64,
    mut rx: DoneReceiver,
    outage_limit: Duration,
) -> Option<String> {
    let mut pending: Vec<DoneItem> = Vec::with_capacity(BATCH);
    let mut alive = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(250);
    let mut next_try = Instant::now();
    let mut gave_up: Option<String> = None;
    let mut closed = false;
    let limit = QUERY_LIMIT.min(outage_limit);
    loop {
        // Signs of life go on after giving up on recording items: the next
        // run's sweep of left uploads relies on them.
        if alive.elapsed() >= HEARTBEAT && failing_since.is_none() {
            alive = Instant::now();
            if let Err(e) = bounded(limit, store.touch_run(run_id)).await {
                tracing::warn!(error = %e, "cannot note in the checkpoint that the run is alive");
            }
        }
        // Gather a batch, or what comes within 200 ms, or wait out a backoff.
        let wait =
            if failing_since.is_some() { next_try } else { Instant::now() + Duration::from_millis(200) };
        let deadline = tokio::time::sleep_until(wait.into());
        tokio::pin!(deadline);
        while !closed {
            tokio::select! {
                items = rx.rx.recv(), if pending.len() < PENDING_MAX => match items {
                    Some(items) if gave_up.is_some() => drop(items),
                    Some(mut items) => {
                        pending.append(&mut items);
                        if pending.len() >= BATCH && failing_since.is_none() {
                            break;
                        }
                    }
                    None => closed = true,
                },
                _ = &mut deadline => break,
            }
        }
        // Once closed, nothing more is gathered: this takes the last of it.
        if gave_up.is_some() {
            rx.take_gathered();
        } else if pending.len() < PENDING_MAX {
            pending.append(&mut rx.take_gathered());
        }
        if closed && failing_since.is_some() {
            deadline.await;
        }
        while !pending.is_empty() && gave_up.is_none() {
            let n = pending.len().min(BATCH);
            match bounded(limit, store.record_done(run_id, &pending[..n])).await {
                Ok(()) => {
                    pending.drain(..n);
                    if failing_since.take().is_some() {
                        tracing::info!("the checkpoint database can be written again");
                    }
                    backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= outage_limit {
                        gave_up = Some(format!(
                            "the checkpoint could not be written for {} s ({e}); the run went on without \
                             recording what it did, so a rerun checks those items in full",
                            since.elapsed().as_secs()
                        ));
                        pending.clear();
                        // Back to the plain 200 ms gathering, now dropping items.
                        failing_since = None;
                    } else {
                        tracing::warn!(error = %e, "cannot write the checkpoint; trying again");
                        next_try = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(8));
                    }
                    break;
                }
            }
        }
        if closed && (pending.is_empty() || gave_up.is_some()) {
            return gave_up;
        }
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
        match bounded(QUERY_LIMIT, store.done_page(run, &self.dir, &self.after, DONE_PAGE)).await {
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
                transferred_gen: None,
            })
            .collect();
        store.record_done(rec.checkpoint.run_id, &items).await.unwrap();

        // Every third name, then names that were never done.
        let mut c = rec.done_in_dir("d");
        assert_eq!(c.get("a").await, None);
        for i in (0..n).step_by(3) {
            assert_eq!(
                c.get(&format!("n{i:06}")).await,
                Some(Known {
                    size: i,
                    mtime_ns: 1,
                    ctime_ns: None,
                    dst_version: None,
                    transferred_gen: None
                }),
                "n{i:06}"
            );
        }
        assert_eq!(c.get("n999999").await, None);
        assert_eq!(c.get("z").await, None);
        // Another directory knows nothing.
        assert_eq!(rec.done_in_dir("e").get("n000001").await, None);
    }

    /// A SQLite checkpoint with one run, and a second connection to the
    /// same file with which a test makes the done table disappear and
    /// come back (as a database being restarted looks to a writer).
    async fn store_with_backdoor() -> (tempfile::TempDir, Store, i64, sqlx::SqliteConnection) {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        let run_id = store.begin_run("k", "a", "b").await.unwrap().run_id;
        let conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        (dir, store, run_id, conn)
    }

    /// A database cut off by a partition neither answers nor closes its
    /// connections: the writer does not wait on it forever, but gives up
    /// after the outage limit as for any failure, and the run goes on.
    #[tokio::test]
    async fn a_database_cut_off_by_a_partition_does_not_hold_the_run() {
        use sqlx::Connection;
        let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
            eprintln!("FERRY_TEST_POSTGRES_URL not set: the partition test is not run");
            return;
        };
        let schema = format!("t_partition_{}_{:08x}", std::process::id(), rand_suffix());
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let (proxy, proxied) = ferry_testkit::TcpProxy::in_front_of(&url).await;
        let proxied = format!("{proxied}{sep}options=-csearch_path%3D{schema}");
        let store = Store::connect(&proxied).await.unwrap();
        let run_id = store.begin_run("k", "a", "b").await.unwrap().run_id;
        let (tx, rx) = done_channel();
        let writer = tokio::spawn(write_done(store.clone(), run_id, rx, Duration::from_secs(2)));
        let all = items(3 * BATCH);
        for item in all[..BATCH].iter().cloned() {
            tx.send(item).await;
        }
        for _ in 0..100 {
            if store.done_count(run_id).await.unwrap() == BATCH as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy.partition();
        for item in all[BATCH..].iter().cloned() {
            tx.send(item).await;
        }
        drop(tx);
        let reason = tokio::time::timeout(Duration::from_secs(15), writer)
            .await
            .expect("the writer does not wait on a silent database")
            .unwrap()
            .expect("the outage is reported");
        assert!(reason.contains("did not answer"), "{reason}");
        proxy.heal();
        let direct = Store::connect(&format!("{url}{sep}options=-csearch_path%3D{schema}")).await.unwrap();
        assert_eq!(direct.done_count(run_id).await.unwrap(), BATCH as u64, "what was written before stays");
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut admin).await.unwrap();
    }

    fn rand_suffix() -> u32 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
    }

    fn items(n: usize) -> Vec<DoneItem> {
        (0..n)
            .map(|i| DoneItem {
                dir: String::new(),
                name: format!("f{i:05}"),
                size: i as u64,
                mtime_ns: 1,
                ctime_ns: None,
                dst_version: None,
                transferred_gen: None,
            })
            .collect()
    }

    /// CPU time this process used so far, in clock ticks (user + system).
    fn cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    async fn rename(conn: &mut sqlx::SqliteConnection, from: &str, to: &str) {
        sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}")).execute(conn).await.unwrap();
    }

    /// Items are handed over in groups, but a few are not held back until
    /// a group fills: the writer takes them on its next round.
    #[tokio::test]
    async fn a_few_done_items_are_recorded_without_waiting_for_more() {
        let (_dir, store, run_id, _conn) = store_with_backdoor().await;
        let (tx, rx) = done_channel();
        let writer = tokio::spawn(write_done(store.clone(), run_id, rx, Duration::from_secs(30)));
        let all = items(HANDOVER * 2 + 3);
        for item in all.iter().cloned() {
            tx.send(item).await;
        }
        let mut recorded = 0;
        for _ in 0..40 {
            recorded = store.done_count(run_id).await.unwrap();
            if recorded == all.len() as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(recorded, all.len() as u64, "recorded within a round or so, the run still going");
        drop(tx);
        assert_eq!(writer.await.unwrap(), None);
    }

    #[tokio::test]
    async fn done_items_wait_out_a_database_that_cannot_be_written() {
        let (_dir, store, run_id, mut conn) = store_with_backdoor().await;
        rename(&mut conn, "sync_done", "sync_done_away").await;
        let (tx, rx) = done_channel();
        let writer = tokio::spawn(write_done(store.clone(), run_id, rx, Duration::from_secs(30)));
        // More than the channel holds: the run does not wait for the database.
        let sent = tokio::time::timeout(Duration::from_secs(5), async {
            for item in items(3 * BATCH * 4) {
                tx.send(item).await;
            }
        })
        .await;
        assert!(sent.is_ok(), "items are taken while the database is away");
        tokio::time::sleep(Duration::from_millis(800)).await;
        rename(&mut conn, "sync_done_away", "sync_done").await;
        drop(tx);
        assert_eq!(writer.await.unwrap(), None, "nothing to report once the database is back");
        assert_eq!(store.done_count(run_id).await.unwrap(), 3 * BATCH as u64 * 4, "every item recorded");
    }

    #[tokio::test]
    async fn a_database_away_too_long_is_reported_and_the_run_goes_on() {
        let (_dir, store, run_id, mut conn) = store_with_backdoor().await;
        rename(&mut conn, "sync_done", "sync_done_away").await;
        let (tx, rx) = done_channel();
        let writer = tokio::spawn(write_done(store.clone(), run_id, rx, Duration::from_millis(600)));
        let started = Instant::now();
        for item in items(BATCH * 10) {
            tx.send(item).await;
        }
        // Once it has given up, the writer takes what comes without
        // trying, and without spinning while the run goes on.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let cpu = cpu_ticks();
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(items(1).remove(0)).await;
        assert!(cpu_ticks() - cpu < 20, "the writer idles: {} ticks in 1 s", cpu_ticks() - cpu);
        drop(tx);
        let reason = tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap();
        let reason = reason.expect("the outage is reported");
        assert!(reason.contains("could not be written") && reason.contains("no such table"), "{reason}");
        assert!(started.elapsed() >= Duration::from_millis(600), "retried for the allowed time first");
    }
}
