//! Workers: claim HPC-cache tasks from the store under a lease, run them
//! through [`crate::hpc`], report progress, and stop when the lease is lost
//! or the task is being deleted. A task whose worker died (`kill -9`) is
//! claimed again once its lease expires, and resumes from its checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_model::hpc::HpcTaskStatus;
use ferry_store::{TaskProgress, TaskRow};
use tokio::sync::{watch, Notify, Semaphore};

use crate::hpc::{self, TaskEnv};
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

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Finish off what a previous process left behind: temporary files in the
/// shares, and tasks that were being deleted.
pub async fn recover(env: &TaskEnv) -> Result<(), ferry_store::Error> {
    let root = env.shares_root.clone();
    let swept = tokio::task::spawn_blocking(move || hpc::sweep_temp_files(&root)).await.unwrap_or(0);
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
        match env.store.claim_task(&cfg.id, now(), cfg.lease_secs).await {
            Ok(Some(task)) => {
                let (env, cfg) = (env.clone(), cfg.clone());
                tokio::spawn(async move {
                    run_one(&env, &cfg, task).await;
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

/// Run one claimed task, renewing its lease and saving progress every second.
///
/// The task runs in a task of its own. Were it polled by the loop below, it
/// would stand still while the loop waits on the store; when it holds the
/// store's write lock at that moment (SQLite), the loop's own update would
/// wait on a lock that can never be released, until the busy timeout.
async fn run_one(env: &Arc<TaskEnv>, cfg: &WorkerConfig, task: TaskRow) {
    let progress = Arc::new(Progress::default());
    let mut metered = TaskMetrics::start(task.task_type.as_str());
    let mut work = {
        let (env, task, progress) = (env.clone(), task.clone(), progress.clone());
        tokio::spawn(async move { hpc::run_task(&env, &task, progress).await })
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break Some(outcome),
            _ = tick.tick() => {
                let until = now() + cfg.lease_secs;
                match env.store.renew_lease(&task.id, &cfg.id, until).await {
                    Ok(true) => {}
                    Ok(false) => break None,
                    Err(e) => {
                        store_error("renew_lease");
                        tracing::warn!(task = %task.id, error = %e, "cannot renew lease");
                    }
                }
                let p = live(&progress, started);
                metered.report(&p);
                if let Err(e) = env.store.set_task_progress(&task.id, &p).await {
                    store_error("save_progress");
                    tracing::warn!(task = %task.id, error = %e, "cannot save progress");
                }
            }
        }
    };
    let outcome = match outcome {
        Some(Ok(outcome)) => outcome,
        Some(Err(e)) => {
            // A bug, not a condition to retry forever: the task fails.
            tracing::error!(task = %task.id, error = %e, "task run panicked");
            metered.finished(HpcTaskStatus::Fail.as_str());
            let message = format!("internal error: {e}");
            let r =
                env.store.set_task_status(&task.id, HpcTaskStatus::Fail, Some(&message), Some(now())).await;
            if let Err(e) = r.and(env.store.release_task(&task.id, &cfg.id).await) {
                tracing::error!(task = %task.id, error = %e, "cannot record the end of a task");
            }
            return;
        }
        None => {
            // Lost the lease or the task is being deleted: stop (the aborted
            // run drops its writers), then leave no partial file.
            work.abort();
            let _ = work.await;
            metered.report(&live(&progress, started));
            let dir = hpc::target_dir(&env.shares_root, &task.share_id, &task.src_target);
            tokio::task::spawn_blocking(move || hpc::sweep_temp_files(&dir)).await.ok();
            match env.store.task(&task.share_id, &task.id).await {
                Ok(Some(t)) if t.status == HpcTaskStatus::Deleting => {
                    metered.finished("CANCELLED");
                    let _ = env.store.delete_task(&task.id).await;
                    tracing::info!(task = %task.id, "task cancelled and deleted");
                }
                // Another worker holds it now (this one stalled past its lease).
                _ => metered.finished("LEASE_LOST"),
            }
            return;
        }
    };
    let p = with_rate(outcome.progress, started);
    metered.report(&p);
    let result = async {
        env.store.set_task_progress(&task.id, &p).await?;
        if let Some(report) = outcome.failure_report() {
            env.store.set_task_failure_report(&task.id, &report).await?;
        }
        let status = if outcome.success() { HpcTaskStatus::Success } else { HpcTaskStatus::Fail };
        metered.finished(status.as_str());
        // A task deleted meanwhile is not brought back.
        if let Some(t) = env.store.task(&task.share_id, &task.id).await? {
            if t.status == HpcTaskStatus::Deleting {
                env.store.delete_task(&task.id).await?;
                return Ok(());
            }
        }
        env.store.set_task_status(&task.id, status, outcome.message().as_deref(), Some(now())).await?;
        env.store.release_task(&task.id, &cfg.id).await
    };
    if let Err(e) = result.await {
        tracing::error!(task = %task.id, error = %e, "cannot record the end of a task");
    } else {
        tracing::info!(
            task = %task.id,
            kind = %task.task_type,
            ok = outcome.success(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "task finished"
        );
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
