//! Asynchronous control-plane jobs (seed 001): each is a parent job whose
//! steps are sub-jobs, run in order in the background. Every step is
//! idempotent, so a job interrupted by a restart is simply run again.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_engine::hpc::{share_dir, target_dir};
use ferry_model::hpc::{format_job_time, JobStatus, JobType, ShareStatus, ShareSubStatus, TargetLifecycle};
use ferry_storage::OpenOptions;
use ferry_store::JobRow;
use serde_json::{json, Value};

use super::{missing, plausible_id};
use crate::http_error::{ApiError, ApiResult, INVALID_JOB};
use crate::state::{new_id, now, AppState};

/// Starts jobs and runs them in the background.
pub struct JobRunner;

impl JobRunner {
    /// Record a job with one sub-job per step and start it; returns the job id.
    pub async fn start(
        state: &AppState,
        project: &str,
        job_type: JobType,
        entities: Value,
        steps: &[&str],
    ) -> ApiResult<String> {
        let t = now();
        let parent = JobRow {
            id: new_id(),
            project_id: project.to_string(),
            job_type,
            status: JobStatus::Waiting,
            begin_time: t,
            end_time: None,
            error_code: None,
            fail_reason: None,
            parent_id: None,
            entities: entities.clone(),
        };
        state.store.insert_job(&parent).await?;
        for (seq, step) in steps.iter().enumerate() {
            let mut e = entities.clone();
            e["step"] = json!(step);
            e["seq"] = json!(seq);
            let sub =
                JobRow { id: new_id(), parent_id: Some(parent.id.clone()), entities: e, ..parent.clone() };
            state.store.insert_job(&sub).await?;
        }
        let (state, job) = (state.clone(), parent.clone());
        tokio::spawn(async move { run(&state, job).await });
        Ok(parent.id)
    }
}

/// Run again the jobs a previous process left unfinished.
pub async fn resume_jobs(state: &AppState) -> Result<usize, ferry_store::Error> {
    let jobs = state.store.unfinished_jobs().await?;
    let n = jobs.len();
    for job in jobs {
        let state = state.clone();
        tokio::spawn(async move { run(&state, job).await });
    }
    Ok(n)
}

async fn run(state: &AppState, job: JobRow) {
    let store = &state.store;
    let subs = match store.job(&job.project_id, &job.id).await {
        Ok(Some((_, subs))) => in_order(subs),
        Ok(None) => return,
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "cannot load job");
            return;
        }
    };
    let _ = store.set_job_status(&job.id, JobStatus::Running, None, None, None).await;
    let mut failure: Option<String> = None;
    for sub in subs {
        if sub.status == JobStatus::Success {
            continue;
        }
        if let Some(why) = &failure {
            fail_step(store, &sub.id, &format!("not run: an earlier step failed ({why})")).await;
            continue;
        }
        let _ = store.set_job_status(&sub.id, JobStatus::Running, None, None, None).await;
        let step = sub.entities.get("step").and_then(Value::as_str).unwrap_or("");
        match run_step(state, &job, step).await {
            Ok(()) => {
                let _ = store.set_job_status(&sub.id, JobStatus::Success, Some(now()), None, None).await;
            }
            Err(why) => {
                fail_step(store, &sub.id, &why).await;
                failure = Some(why);
            }
        }
    }
    let (status, code) = match &failure {
        None => (JobStatus::Success, None),
        Some(_) => (JobStatus::Failed, Some(crate::http_error::INTERNAL)),
    };
    if let Err(e) = store.set_job_status(&job.id, status, Some(now()), code, failure.as_deref()).await {
        tracing::error!(job = %job.id, error = %e, "cannot record the end of a job");
    }
}

/// Sub-jobs in the order of their steps: the store returns them by begin
/// time, which all steps of a job share, then by (random) id.
fn in_order(mut subs: Vec<JobRow>) -> Vec<JobRow> {
    subs.sort_by_key(|s| s.entities.get("seq").and_then(Value::as_u64).unwrap_or(0));
    subs
}

/// Mark a sub-job failed (best effort: the parent's status carries the outcome too).
async fn fail_step(store: &ferry_store::Store, id: &str, reason: &str) {
    let _ = store
        .set_job_status(id, JobStatus::Failed, Some(now()), Some(crate::http_error::INTERNAL), Some(reason))
        .await;
}

fn entity<'a>(job: &'a JobRow, key: &str) -> &'a str {
    job.entities.get(key).and_then(Value::as_str).unwrap_or("")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

/// Remove a directory tree; one that is already gone is fine.
async fn remove_tree(dir: std::path::PathBuf) -> Result<(), String> {
    blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
}

/// One step of a job.
async fn run_step(state: &AppState, job: &JobRow, step: &str) -> Result<(), String> {
    let store = &state.store;
    let share_id = entity(job, "share_id").to_string();
    let db = |e: ferry_store::Error| e.to_string();
    match (job.job_type, step) {
        (JobType::CreateShare, "create_directory") => {
            let dir = share_dir(&state.shares_root, &share_id);
            match blocking(move || std::fs::create_dir_all(&dir)).await {
                Ok(()) => store.set_share_status(&share_id, ShareStatus::Active, None).await.map_err(db),
                Err(e) => {
                    store.set_share_status(&share_id, ShareStatus::CreateFailed, None).await.map_err(db)?;
                    Err(format!("cannot create the share directory: {e}"))
                }
            }
        }
        (JobType::ExtendShare, "set_quota") => {
            let new_size = job.entities.get("new_size").and_then(Value::as_i64).unwrap_or(0);
            store.set_share_size(&share_id, new_size).await.map_err(db)?;
            store
                .set_share_status(&share_id, ShareStatus::Active, Some(ShareSubStatus::Expanded))
                .await
                .map_err(db)
        }
        (JobType::DeleteShare, "delete_directory") => {
            remove_tree(share_dir(&state.shares_root, &share_id))
                .await
                .map_err(|e| format!("cannot delete the share directory: {e}"))?;
            store.delete_share(&share_id).await.map_err(db)
        }
        (JobType::CreateObsTarget, "create_directory") => {
            let target = target_of(state, job).await?;
            let dir = target_dir(&state.shares_root, &share_id, &target.file_system_path);
            if let Err(e) = blocking(move || create_target_dir(&dir)).await {
                let msg = format!("cannot create the directory: {e}");
                store
                    .set_target_lifecycle(&target.id, TargetLifecycle::Failed, Some(&msg))
                    .await
                    .map_err(db)?;
                return Err(msg);
            }
            Ok(())
        }
        (JobType::CreateObsTarget, "check_bucket") => {
            let target = target_of(state, job).await?;
            let opened = state
                .object_stores
                .open_bucket(
                    &target.endpoint,
                    &target.bucket,
                    "",
                    OpenOptions { retries: 2, ..Default::default() },
                )
                .await;
            match opened {
                Ok(_) => {
                    store.set_target_lifecycle(&target.id, TargetLifecycle::Available, None).await.map_err(db)
                }
                Err(e) => {
                    let msg = format!("bucket {} at {} is not usable: {e}", target.bucket, target.endpoint);
                    store
                        .set_target_lifecycle(&target.id, TargetLifecycle::Misconfigured, Some(&msg))
                        .await
                        .map_err(db)?;
                    Err(msg)
                }
            }
        }
        (JobType::DeleteObsTarget, "delete_data") => {
            let path = entity(job, "file_system_path").to_string();
            if path.is_empty() || path.contains('/') || path == "." || path == ".." {
                return Err("invalid target directory".into());
            }
            remove_tree(target_dir(&state.shares_root, &share_id, &path))
                .await
                .map_err(|e| format!("cannot delete the directory's data: {e}"))
        }
        (JobType::DeleteObsTarget, "unlink") => {
            store.delete_target(entity(job, "target_id")).await.map_err(db)
        }
        (t, s) => Err(format!("unknown step {s:?} of a {t} job")),
    }
}

/// Create a target's directory. One already there is fine only if it is a
/// real directory (this step run again): never adopt a file or a symlink
/// that appeared in the share since the API checked the name.
fn create_target_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if let Some(share) = dir.parent() {
        std::fs::create_dir_all(share)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(dir)?.is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::new(e.kind(), "a file or symlink of that name is in the share"))
            }
        }
        other => other,
    }
}

async fn target_of(state: &AppState, job: &JobRow) -> Result<ferry_store::TargetRow, String> {
    state
        .store
        .target(entity(job, "share_id"), entity(job, "target_id"))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the target no longer exists".to_string())
}

fn job_json(job: &JobRow) -> Value {
    json!({
        "job_id": job.id,
        "job_type": job.job_type,
        "status": job.status,
        "begin_time": format_job_time(job.begin_time).unwrap_or_default(),
        "end_time": job.end_time.and_then(format_job_time).unwrap_or_default(),
        "error_code": job.error_code.clone().unwrap_or_default(),
        "fail_reason": job.fail_reason.clone().unwrap_or_default(),
        "entities": job.entities,
    })
}

/// `GET /jobs/{job_id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path((project, job_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let invalid = || ApiError::new(StatusCode::NOT_FOUND, INVALID_JOB, missing("job", &job_id));
    if !plausible_id(&job_id) {
        return Err(invalid());
    }
    let (job, subs) = state.store.job(&project, &job_id).await?.ok_or_else(invalid)?;
    let mut body = job_json(&job);
    body["sub_jobs"] = Value::Array(in_order(subs).iter().map(job_json).collect());
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_the_order_they_were_given() {
        let sub = |id: &str, step: &str, seq: u64| JobRow {
            id: id.into(),
            project_id: "p".into(),
            job_type: JobType::CreateObsTarget,
            status: JobStatus::Waiting,
            begin_time: 0,
            end_time: None,
            error_code: None,
            fail_reason: None,
            parent_id: Some("parent".into()),
            entities: json!({ "step": step, "seq": seq }),
        };
        // The store's order: same begin time, then by id.
        let subs = vec![sub("a", "check_bucket", 1), sub("b", "create_directory", 0)];
        let steps: Vec<_> = in_order(subs).iter().map(|s| entity(s, "step").to_string()).collect();
        assert_eq!(steps, ["create_directory", "check_bucket"]);
    }
}
