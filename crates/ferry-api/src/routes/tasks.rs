//! HPC-cache tasks (seeds 000, 002, 003): created here, run by workers.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_engine::hpc::target_dir;
use ferry_model::hpc::{
    format_task_time, parse_task_time, CreateHpcTaskRequest, HpcTaskStatus, HpcTaskType, Paging,
    TargetLifecycle, ValidationError,
};
use ferry_store::{TaskFilter, TaskProgress, TaskRow};
use serde_json::{json, Value};

use super::shares::{active, exists};
use super::{json_body, missing, plausible_id, query_map};
use crate::http_error::{ApiError, ApiResult, INVALID_TASK};
use crate::state::{new_id, now, AppState};

fn progress_json(p: &TaskProgress) -> Value {
    json!({
        "total_files": p.total_files,
        "done_files": p.done_files,
        "skipped_files": p.skipped_files,
        "failed_files": p.failed_files,
        "total_bytes": p.total_bytes,
        "done_bytes": p.done_bytes,
        "bytes_per_second": p.bytes_per_second,
    })
}

fn task_json(t: &TaskRow) -> Value {
    json!({
        "task_id": t.id,
        "type": t.task_type,
        "status": t.status,
        "src_target": t.src_target,
        "src_prefix": t.src_prefix.clone().unwrap_or_default(),
        "dest_target": t.dest_target,
        "dest_prefix": t.dest_prefix.clone().unwrap_or_default(),
        "start_time": format_task_time(t.start_time).unwrap_or_default(),
        "end_time": t.end_time.and_then(format_task_time).unwrap_or_default(),
        "message": t.message.clone().unwrap_or_default(),
        "progress": progress_json(&t.progress),
    })
}

fn invalid_task(task_id: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, INVALID_TASK, missing("task", task_id))
}

async fn load(state: &AppState, share_id: &str, task_id: &str) -> ApiResult<TaskRow> {
    if !plausible_id(task_id) {
        return Err(invalid_task(task_id));
    }
    state.store.task(share_id, task_id).await?.ok_or_else(|| invalid_task(task_id))
}

/// `POST /{share_id}/hpc-cache/task`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body = json_body(&headers, &body)?;
    let req = CreateHpcTaskRequest::from_json(&body)?;
    active(&state, &project, &share_id).await?;
    let target = state.store.target_by_path(&share_id, &req.src_target).await?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "src_target: share {share_id} has no backend target {}",
            req.src_target
        ))
    })?;
    if target.lifecycle != TargetLifecycle::Available {
        return Err(ApiError::busy(format!(
            "backend target {} is {}, not AVAILABLE",
            target.file_system_path, target.lifecycle
        )));
    }
    // Users write in the share: the directory may have been swapped for a
    // symlink (to `/`, say) or a file since the target was linked.
    let dir = target_dir(&state.shares_root, &share_id, &req.src_target);
    if std::fs::symlink_metadata(&dir).is_ok_and(|md| !md.is_dir()) {
        return Err(ApiError::bad_request(format!(
            "src_target: {} in the share is no longer a directory (a file or symlink took its place); \
             move it away first",
            req.src_target
        )));
    }
    let filter = TaskFilter {
        status: Some(HpcTaskStatus::Doing),
        limit: ferry_model::hpc::MAX_LIMIT,
        ..Default::default()
    };
    let (running, _) = state.store.list_tasks(&share_id, &filter).await?;
    if let Some(t) = running.iter().find(|t| t.src_target == req.src_target) {
        return Err(ApiError::busy(format!(
            "backend target {} is busy with task {} ({}); wait for it or delete it",
            req.src_target, t.id, t.task_type
        )));
    }
    let row = TaskRow {
        id: new_id(),
        share_id: share_id.clone(),
        project_id: project,
        task_type: req.task_type,
        status: HpcTaskStatus::Doing,
        src_target: req.src_target,
        src_prefix: req.src_prefix,
        dest_target: req.dest_target,
        dest_prefix: req.dest_prefix,
        attributes: req.attributes,
        start_time: now(),
        end_time: None,
        message: None,
        progress: TaskProgress::default(),
    };
    state.store.insert_task(&row).await?;
    state.wake.notify_one();
    // 202 "Task delivered", as the SFS Turbo API answers.
    Ok((StatusCode::ACCEPTED, Json(json!({ "task_id": row.id }))).into_response())
}

/// `GET /{share_id}/hpc-cache/tasks`: filters `type,status,offset,limit,start_time,end_time`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(query.as_deref())?;
    let get = |k: &str| q.get(k).map(String::as_str);
    let paging = Paging::from_query(get("offset"), get("limit"))?;
    let time = |k: &str| -> Result<Option<i64>, ValidationError> {
        get(k)
            .map(|raw| {
                parse_task_time(raw)
                    .ok_or_else(|| ValidationError::new(k, "must be YYYY-MM-DDTHH:MM:SS (UTC)"))
            })
            .transpose()
    };
    let filter = TaskFilter {
        task_type: get("type").map(|t| HpcTaskType::parse("type", t)).transpose()?,
        status: get("status").map(|s| HpcTaskStatus::parse("status", s)).transpose()?,
        start_time: time("start_time")?,
        end_time: time("end_time")?,
        offset: paging.offset,
        limit: paging.limit,
    };
    if let (Some(a), Some(b)) = (filter.start_time, filter.end_time) {
        if a > b {
            return Err(ApiError::bad_request("start_time: must not be after end_time"));
        }
    }
    exists(&state, &project, &share_id).await?;
    let (rows, count) = state.store.list_tasks(&share_id, &filter).await?;
    Ok(Json(json!({ "tasks": rows.iter().map(task_json).collect::<Vec<_>>(), "count": count })))
}

/// `GET /{share_id}/hpc-cache/task/{task_id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path((project, share_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    exists(&state, &project, &share_id).await?;
    Ok(Json(task_json(&load(&state, &share_id, &task_id).await?)))
}

/// `DELETE /{share_id}/hpc-cache/task/{task_id}`: a running task is
/// cancelled (`DELETING`) by its worker, which then removes it.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((project, share_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    exists(&state, &project, &share_id).await?;
    let task = load(&state, &share_id, &task_id).await?;
    if task.status == HpcTaskStatus::Doing || task.status == HpcTaskStatus::Deleting {
        let worker_will_stop = state.store.request_task_delete(&task_id).await?;
        if worker_will_stop {
            return Ok(StatusCode::ACCEPTED.into_response());
        }
    }
    state.store.delete_task(&task_id).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET /{share_id}/hpc-cache/task/{task_id}/failures` (ferry extension):
/// the failure report, CSV `path,status,error_code,message`.
pub(crate) async fn failures(
    State(state): State<AppState>,
    Path((project, share_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    exists(&state, &project, &share_id).await?;
    load(&state, &share_id, &task_id).await?;
    let csv = state
        .store
        .task_failure_report(&task_id)
        .await?
        .unwrap_or_else(|| "path,status,error_code,message\n".to_string());
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
}
