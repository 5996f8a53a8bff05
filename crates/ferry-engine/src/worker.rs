//! Workers: claim HPC-cache tasks from the store under a lease, run them
//! through [`crate::hpc`], report progress, and stop when the lease is lost
//! or cannot be renewed in time, or the task is being deleted. A task whose
//! worker died (`kill -9`) or was cut off from the database is claimed again
//! once its lease expires, and resumes from its checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_model::hpc::HpcTaskStatus;
use ferry_store::{Finished, TaskEnd, TaskProgress, TaskRow};
use tokio::sync::{watch, Notify, Semaphore};

use crate::hpc::{self, TaskEnv, TaskOutcome};
use crate::progress::Progress;

/// How workers claim and keep tasks.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique per process (host, pid, random).
    pub id: String,
    /// A task whose lease was not renewed for this long is claimed again.
    pub lease_secs: i64,
    /// Tasks run at once by this process.
    pub max_tasks: usize,
    /// How often idle workers look for new tasks (a local wake-up is immediate).
    pub poll: Duration,
}

impl WorkerConfig {
    pub fn new(id: String) -> Self {
        WorkerConfig { id, lease_secs: 30, max_tasks: 4, poll: Duration::from_secs(1) }
    }
}

/// How long a claim may go unanswered before this loop tries again.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Finish off what a previous process left behind: temporary files in the
/// shares, and tasks that were being deleted.
pub async fn recover(env: &TaskEnv) -> Result<(), ferry_store::Error> {
    let root = env.shares_root.clone();
    let swept = tokio::task::spawn_blocking(move || hpc::sweep_temp_files(&root, "")).await.unwrap_or(0);
    if swept > 0 {
        tracing::info!(swept, "removed temporary files of interrupted writes");
    }
    for task in env.store.tasks_by_status(HpcTaskStatus::Deleting).await? {
        env.store.delete_task(&task.id).await?;
    }
    Ok(())
}

/// Claim and run tasks until `shutdown` turns true. `wake` is notified when
/// a task is created in this process.
pub async fn run(
    env: Arc<TaskEnv>,
    cfg: WorkerConfig,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_tasks.max(1)));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore open"),
            _ = shutdown.changed() => return,
        };
        let asked = Instant::now();
        // The pool bounds the wait for a connection; a query already sent
        // to a database cut off by a partition would hold the call (and this
        // loop) for as long as TCP does.
        match ferry_store::bounded(CLAIM_WAIT, env.store.claim_task(&cfg.id, now(), cfg.lease_secs)).await {
            Ok(Some(task)) => {
                let (env, cfg) = (env.clone(), cfg.clone());
                tokio::spawn(async move {
                    run_one(&env, &cfg, task, asked).await;
                    drop(permit);
                });
                continue;
            }
            Ok(None) => drop(permit),
            Err(e) => {
                drop(permit);
                store_error("claim_task");
                tracing::warn!(error = %e, "cannot claim tasks");
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// What a running task adds to the process's Prometheus metrics: the
/// running gauge while it lives, and its counters as they grow.
struct TaskMetrics {
    kind: &'static str,
    reported: TaskProgress,
}

impl TaskMetrics {
    fn start(kind: &'static str) -> Self {
        metrics::gauge!("ferry_tasks_running", "type" => kind).increment(1.0);
        TaskMetrics { kind, reported: TaskProgress::default() }
    }

    /// Count what was done since the last call.
    fn report(&mut self, now: &TaskProgress) {
        let kind = self.kind;
        let delta = |new: u64, old: u64| new.saturating_sub(old);
        metrics::counter!("ferry_task_bytes_total", "type" => kind)
            .increment(delta(now.done_bytes, self.reported.done_bytes));
        for (result, new, old) in [
            ("done", now.done_files, self.reported.done_files),
            ("skipped", now.skipped_files, self.reported.skipped_files),
            ("failed", now.failed_files, self.reported.failed_files),
        ] {
            metrics::counter!("ferry_task_files_total", "type" => kind, "result" => result)
                .increment(delta(new, old));
        }
        self.reported = *now;
    }

    /// `status`: SUCCESS, FAIL, or CANCELLED for a task stopped by its deletion.
    fn finished(&self, status: &'static str) {
        metrics::counter!("ferry_tasks_finished_total", "type" => self.kind, "status" => status).increment(1);
    }
}

impl Drop for TaskMetrics {
    fn drop(&mut self) {
        metrics::gauge!("ferry_tasks_running", "type" => self.kind).decrement(1.0);
    }
}

fn store_error(op: &'static str) {
    metrics::counter!("ferry_worker_store_errors_total", "op" => op).increment(1);
}

/// A worker's view of its lease on one task, by its own monotonic clock.
///
/// The store keeps `lease_until` in whole seconds of wall time, so a lease
/// renewed at `t` is only sure to last until `t + lease_secs - 1 s`. When it
/// cannot be renewed, the task is given up a third of that span before it
/// runs out, so that a slow tick, or clocks a little apart, never let two
/// workers run one task.
struct Lease {
    /// What a renewal is sure to last.
    span: Duration,
    /// When the last renewal (or the claim) was asked for.
    renewed: Instant,
}

impl Lease {
    fn new(lease_secs: i64, claimed: Instant) -> Self {
        let span = Duration::from_secs(lease_secs.saturating_sub(1).max(1) as u64);
        Lease { span, renewed: claimed }
    }

    /// How often to renew: four times a span, and at least every second.
    fn period(&self) -> Duration {
        (self.span / 4).min(Duration::from_secs(1))
    }

    /// When to give the task up if the lease has not been renewed by then.
    fn give_up_at(&self) -> Instant {
        self.renewed + self.span * 2 / 3
    }

    fn expiring(&self) -> bool {
        Instant::now() >= self.give_up_at()
    }

    /// `f`, unless it has not finished when the task must be given up (a
    /// database that does not answer at all holds calls until timeouts far
    /// longer than a lease).
    async fn within<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        tokio::time::timeout_at(self.give_up_at().into(), f).await.ok()
    }
}

/// Why a task stopped before its end.
enum Stop {
    /// The task is no longer leased to this worker, or is being deleted.
    Lost,
    /// The lease could not be renewed in time.
    Unreachable(String),
}

/// Run one claimed task, renewing its lease and saving progress as it goes.
///
/// The task runs in a task of its own. Were it polled by the loop below, it
/// would stand still while the loop waits on the store; when it holds the
/// store's write lock at that moment (SQLite), the loop's own update would
/// wait on a lock that can never be released, until the busy timeout.
///
/// The lease keeps other workers off the task. When it cannot be renewed
/// (the database is down, or this node is cut off from it) the task is
/// stopped before the lease runs out, as when the lease is lost: another
/// worker may claim it once it has, and resumes it from its checkpoint.
/// Its end is recorded only while this worker still holds it.
async fn run_one(env: &Arc<TaskEnv>, cfg: &WorkerConfig, task: TaskRow, claimed: Instant) {
    let progress = Arc::new(Progress::default());
    let mut metered = TaskMetrics::start(task.task_type.as_str());
    let mut work = {
        let (env, task, progress) = (env.clone(), task.clone(), progress.clone());
        tokio::spawn(async move { hpc::run_task(&env, &task, progress).await })
    };
    let mut lease = Lease::new(cfg.lease_secs, claimed);
    let mut tick = tokio::time::interval(lease.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break Ok(outcome),
            _ = tick.tick() => {
                let p = live(&progress, started);
                metered.report(&p);
                let asked = Instant::now();
                let until = now() + cfg.lease_secs;
                match lease.within(env.store.heartbeat(&task.id, &cfg.id, until, &p)).await {
                    Some(Ok(true)) => lease.renewed = asked,
                    Some(Ok(false)) => break Err(Stop::Lost),
                    Some(Err(e)) => {
                        store_error("heartbeat");
                        tracing::warn!(task = %task.id, error = %e, "cannot renew lease");
                        if lease.expiring() {
                            break Err(Stop::Unreachable(e.to_string()));
                        }
                    }
                    None => {
                        store_error("heartbeat");
                        break Err(Stop::Unreachable("the database did not answer".into()));
                    }
                }
            }
        }
    };
    let end = match outcome {
        Ok(Ok(outcome)) => {
            let p = with_rate(outcome.progress, started);
            metered.report(&p);
            TaskEnd {
                status: if outcome.success() { HpcTaskStatus::Success } else { HpcTaskStatus::Fail },
                message: outcome.message(),
                end_time: now(),
                progress: p,
                failure_report: outcome.failure_report(),
            }
        }
        Ok(Err(e)) => {
            // A bug, not a condition to retry forever: the task fails.
            tracing::error!(task = %task.id, error = %e, "task run panicked");
            // The items that failed before it are still named.
            let failures = progress.failures.lock().expect("failures lock").lines();
            let message = Some(format!("internal error: {e}"));
            let failure_report =
                TaskOutcome { failures, fatal: message.clone(), ..Default::default() }.failure_report();
            TaskEnd {
                status: HpcTaskStatus::Fail,
                message,
                end_time: now(),
                progress: live(&progress, started),
                failure_report,
            }
        }
        Err(stop) => {
            // Stop: the aborted run drops its writers, which remove their
            // temporary files. The target is not swept here: another
            // worker may hold the task already, and be writing into it.
            work.abort();
            let _ = work.await;
            metered.report(&live(&progress, started));
            if let Stop::Unreachable(why) = stop {
                tracing::error!(
                    task = %task.id,
                    unrenewed_s = lease.renewed.elapsed().as_secs(),
                    error = %why,
                    "cannot renew the lease of a task: stopped it, so that a worker that reaches \
                     the database can take it over and resume it"
                );
                metered.finished("LEASE_LOST");
                return;
            }
            let wait = Duration::from_secs(5);
            match tokio::time::timeout(wait, env.store.task(&task.share_id, &task.id)).await {
                Ok(Ok(Some(t))) if t.status == HpcTaskStatus::Deleting => {
                    // Nobody can claim a task being deleted: leave no
                    // partial file of it.
                    let (root, under) =
                        (env.shares_root.clone(), ferry_model::join_path(&task.share_id, &task.src_target));
                    tokio::task::spawn_blocking(move || hpc::sweep_temp_files(&root, &under)).await.ok();
                    metered.finished("CANCELLED");
                    let _ = tokio::time::timeout(wait, env.store.delete_task(&task.id)).await;
                    tracing::info!(task = %task.id, "task cancelled and deleted");
                }
                // Another worker holds it now (this one stalled past its lease).
                _ => metered.finished("LEASE_LOST"),
            }
            return;
        }
    };
    // A fresh renewal first: the end gets a whole span to be recorded in.
    // (A task no longer held, or being deleted, is for `finish_task` to tell.)
    let asked = Instant::now();
    let until = now() + cfg.lease_secs;
    if let Some(Ok(true)) = lease.within(env.store.heartbeat(&task.id, &cfg.id, until, &end.progress)).await {
        lease.renewed = asked;
    }
    record_end(env, cfg, &task, &end, &lease, &metered, started).await;
}

/// Record a task's end, trying again while the lease is sure to hold.
async fn record_end(
    env: &TaskEnv,
    cfg: &WorkerConfig,
    task: &TaskRow,
    end: &TaskEnd,
    lease: &Lease,
    metered: &TaskMetrics,
    started: Instant,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let why = match lease.within(env.store.finish_task(&task.id, &cfg.id, end)).await {
            Some(Ok(Finished::Recorded)) => {
                metered.finished(end.status.as_str());
                tracing::info!(
                    task = %task.id,
                    kind = %task.task_type,
                    ok = end.status == HpcTaskStatus::Success,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "task finished"
                );
                return;
            }
            Some(Ok(Finished::Deleted)) => {
                // A task deleted meanwhile is not brought back.
                metered.finished("CANCELLED");
                tracing::info!(task = %task.id, "task finished while being deleted: deleted");
                return;
            }
            Some(Ok(Finished::NotHeld)) => {
                metered.finished("LEASE_LOST");
                tracing::warn!(
                    task = %task.id,
                    "the task is gone, or another worker took it over while this one could not \
                     renew its lease: its end is not this worker's to record"
                );
                return;
            }
            Some(Err(e)) => e.to_string(),
            None => "the database did not answer".to_string(),
        };
        store_error("finish_task");
        if lease.expiring() {
            metered.finished("LEASE_LOST");
            tracing::error!(
                task = %task.id,
                error = %why,
                "cannot record the end of a task: once its lease runs out, another worker takes it \
                 over and redoes what its checkpoint does not hold"
            );
            return;
        }
        tracing::warn!(task = %task.id, error = %why, "cannot record the end of a task; trying again");
        tokio::time::sleep_until((Instant::now() + backoff).min(lease.give_up_at()).into()).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn live(progress: &Progress, started: Instant) -> TaskProgress {
    with_rate(hpc::task_progress(progress), started)
}

/// The counters with `bytes_per_second` averaged since `started`.
fn with_rate(mut p: TaskProgress, started: Instant) -> TaskProgress {
    let secs = started.elapsed().as_secs_f64();
    p.bytes_per_second = if secs > 0.0 { (p.done_bytes as f64 / secs) as u64 } else { 0 };
    p
}
