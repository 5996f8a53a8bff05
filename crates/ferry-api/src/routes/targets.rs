//! Backend targets: a top-level directory of a share linked to a bucket.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_engine::hpc::target_dir;
use ferry_model::hpc::{
    format_task_time, CreateTargetRequest, HpcTaskStatus, JobType, Paging, TargetAttributes, TargetLifecycle,
    TargetPolicy, MAX_LIMIT,
};
use ferry_storage::check_bucket_name;
use ferry_store::{TargetRow, TaskFilter};
use serde_json::{json, Value};

use super::shares::active;
use super::{json_body, missing, plausible_id, query_map, JobRunner};
use crate::http_error::{ApiError, ApiResult};
use crate::state::{new_id, now, AppState};

fn target_json(t: &TargetRow) -> Value {
    let mut obs = json!({ "bucket": t.bucket, "endpoint": t.endpoint });
    obs["policy"] = serde_json::to_value(&t.policy).unwrap_or_else(|_| json!({}));
    obs["attributes"] = serde_json::to_value(t.attributes).unwrap_or_else(|_| json!({}));
    let mut v = json!({
        "target_id": t.id,
        "creation_time": format_task_time(t.created_at).unwrap_or_default(),
        "file_system_path": t.file_system_path,
        "lifecycle": t.lifecycle,
        "obs": obs,
    });
    if let Some(m) = &t.failure_message {
        v["failure_details"] = json!({ "message": m });
    }
    v
}

pub(crate) async fn load(state: &AppState, share_id: &str, target_id: &str) -> ApiResult<TargetRow> {
    let not_found = || ApiError::not_found(missing("backend target", target_id));
    if !plausible_id(target_id) {
        return Err(not_found());
    }
    state.store.target(share_id, target_id).await?.ok_or_else(not_found)
}

/// `POST /shares/{share_id}/targets`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body = json_body(&headers, &body)?;
    let req = CreateTargetRequest::from_json(&body)?;
    active(&state, &project, &share_id).await?;
    if state.object_stores.find(&req.obs.endpoint).is_none() {
        return Err(ApiError::bad_request(
            "obs.endpoint: not one of the object stores configured on this server (see [[object_stores]] in the config)",
        ));
    }
    check_bucket_name(&req.obs.bucket).map_err(|why| ApiError::bad_request(format!("obs.bucket: {why}")))?;
    if state.store.target_by_path(&share_id, &req.file_system_path).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "file_system_path: share {share_id} already has a target named {}",
            req.file_system_path
        )));
    }
    let dir = target_dir(&state.shares_root, &share_id, &req.file_system_path);
    if std::fs::symlink_metadata(&dir).is_ok() {
        return Err(ApiError::conflict(format!(
            "file_system_path: {} already exists in the share; a target links a new directory",
            req.file_system_path
        )));
    }
    let row = TargetRow {
        id: new_id(),
        share_id: share_id.clone(),
        project_id: project.clone(),
        file_system_path: req.file_system_path.clone(),
        bucket: req.obs.bucket.clone(),
        endpoint: req.obs.endpoint.clone(),
        lifecycle: TargetLifecycle::Creating,
        failure_message: None,
        attributes: req.obs.attributes.unwrap_or_default(),
        policy: req.obs.policy.clone().unwrap_or_default(),
        created_at: now(),
    };
    state.store.insert_target(&row).await?;
    let entities = json!({ "share_id": share_id, "target_id": row.id });
    let job_id = JobRunner::start(
        &state,
        &project,
        JobType::CreateObsTarget,
        entities,
        &["create_directory", "check_bucket"],
    )
    .await?;
    let mut body = target_json(&row);
    body["job_id"] = json!(job_id);
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /shares/{share_id}/targets` (`limit`, `marker`).
pub(crate) async fn list(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(query.as_deref())?;
    super::shares::exists(&state, &project, &share_id).await?;
    let limit = Paging::from_query(None, q.get("limit").map(String::as_str))?.limit;
    let marker = q.get("marker").filter(|m| !m.is_empty());
    if let Some(m) = marker {
        if !plausible_id(m) {
            return Err(ApiError::bad_request("marker: not a target id of this share"));
        }
    }
    let (rows, count) = state
        .store
        .list_targets(&share_id, marker.map(String::as_str), limit)
        .await
        .map_err(|e| match e {
            ferry_store::Error::NotFound(_) => ApiError::bad_request("marker: not a target id of this share"),
            other => other.into(),
        })?;
    Ok(Json(json!({ "targets": rows.iter().map(target_json).collect::<Vec<_>>(), "count": count })))
}

/// `GET /shares/{share_id}/targets/{target_id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path((project, share_id, target_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    super::shares::exists(&state, &project, &share_id).await?;
    Ok(Json(target_json(&load(&state, &share_id, &target_id).await?)))
}

/// `DELETE /shares/{share_id}/targets/{target_id}?delete_data_in_file_system=…`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((project, share_id, target_id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let q = query_map(query.as_deref())?;
    let delete_data = match q.get("delete_data_in_file_system").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("delete_data_in_file_system: must be true or false")),
    };
    super::shares::exists(&state, &project, &share_id).await?;
    let target = load(&state, &share_id, &target_id).await?;
    if matches!(target.lifecycle, TargetLifecycle::Creating | TargetLifecycle::Deleting) {
        return Err(ApiError::busy(format!("backend target {target_id} is {}", target.lifecycle)));
    }
    let filter = TaskFilter { status: Some(HpcTaskStatus::Doing), limit: MAX_LIMIT, ..Default::default() };
    let (running, _) = state.store.list_tasks(&share_id, &filter).await?;
    if running.iter().any(|t| t.src_target == target.file_system_path) {
        return Err(ApiError::busy(format!(
            "backend target {target_id} has a running task; delete the task first"
        )));
    }
    state.store.set_target_lifecycle(&target_id, TargetLifecycle::Deleting, None).await?;
    let steps: &[&str] = if delete_data { &["delete_data", "unlink"] } else { &["unlink"] };
    let entities = json!({
        "share_id": share_id,
        "target_id": target_id,
        "file_system_path": target.file_system_path,
        "delete_data_in_file_system": delete_data,
    });
    let job_id = JobRunner::start(&state, &project, JobType::DeleteObsTarget, entities, steps).await?;
    let body = json!({
        "target_id": target_id,
        "delete_data_in_file_system": delete_data,
        "lifecycle": TargetLifecycle::Deleting,
        "job_id": job_id,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `PUT …/targets/{target_id}/attributes`.
pub(crate) async fn update_attributes(
    State(state): State<AppState>,
    Path((project, share_id, target_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&headers, &body)?;
    let attributes = TargetAttributes::from_update_json(&body)?;
    super::shares::exists(&state, &project, &share_id).await?;
    load(&state, &share_id, &target_id).await?;
    state.store.set_target_attributes(&target_id, &attributes).await?;
    Ok(Json(json!({ "target_id": target_id, "attributes": attributes })))
}

/// `PUT …/targets/{target_id}/policy`.
pub(crate) async fn update_policy(
    State(state): State<AppState>,
    Path((project, share_id, target_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&headers, &body)?;
    let policy = TargetPolicy::from_update_json(&body)?;
    super::shares::exists(&state, &project, &share_id).await?;
    load(&state, &share_id, &target_id).await?;
    state.store.set_target_policy(&target_id, &policy).await?;
    Ok(Json(json!({ "target_id": target_id, "policy": policy })))
}

/// `GET …/targets/{target_id}/entries?dir=&after=&limit=` (ferry extension):
/// the namespace index of the target, one directory at a time or all of it.
pub(crate) async fn entries(
    State(state): State<AppState>,
    Path((project, share_id, target_id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(query.as_deref())?;
    super::shares::exists(&state, &project, &share_id).await?;
    load(&state, &share_id, &target_id).await?;
    let limit = Paging::from_query(None, q.get("limit").map(String::as_str))?.limit;
    let rows = match q.get("dir") {
        Some(dir) => {
            let dir = dir.trim_matches('/');
            if !dir.is_empty() {
                ferry_model::validate_rel_path(dir)
                    .map_err(|e| ApiError::bad_request(format!("dir: {e}")))?;
            }
            state.store.entries_in_dir(&target_id, dir).await?
        }
        None => {
            if let Some(after) = q.get("after") {
                // A path this route returned; anything else (NUL, `..`) names no entry.
                ferry_model::validate_rel_path(after)
                    .map_err(|e| ApiError::bad_request(format!("after: not an entry path: {e}")))?;
            }
            let after = q.get("after").map(|a| match a.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n.to_string()),
                None => (String::new(), a.clone()),
            });
            state
                .store
                .list_entries(&target_id, after.as_ref().map(|(d, n)| (d.as_str(), n.as_str())), limit)
                .await?
        }
    };
    let entries: Vec<Value> = rows
        .iter()
        .map(|e| {
            let path = if e.dir.is_empty() { e.name.clone() } else { format!("{}/{}", e.dir, e.name) };
            json!({
                "path": path,
                "kind": e.kind,
                "size": e.size,
                "mtime_ns": e.mtime_ns,
                "mode": format!("{:o}", e.mode),
                "uid": e.uid,
                "gid": e.gid,
                "state": e.state.as_str(),
                "etag": e.etag,
            })
        })
        .collect();
    let next = (rows.len() as u32 == limit && !q.contains_key("dir"))
        .then(|| entries.last().and_then(|e| e["path"].as_str().map(str::to_owned)))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next_after": next })))
}
