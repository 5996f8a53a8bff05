//! Shares: directories under the shares root with a quota (`size`, GB).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_engine::hpc::share_dir;
use ferry_model::hpc::{
    format_task_time, JobType, Paging, ShareStatus, ShareSubStatus, ValidationError, SHARE_READ_ONLY_FIELDS,
};
use ferry_store::ShareRow;
use serde_json::{json, Map, Value};

use super::{json_body, missing, plausible_id, query_map, JobRunner};
use crate::http_error::{ApiError, ApiResult};
use crate::state::{new_id, now, AppState, ShareUsage};

/// Share types accepted at creation (those of SFS Turbo).
const SHARE_TYPES: &[&str] = &[
    "STANDARD",
    "PERFORMANCE",
    "HPC_20",
    "HPC_40",
    "HPC_125",
    "HPC_250",
    "HPC_500",
    "HPC_1000",
    "HPC_2000",
    "HPC_CACHE",
];
/// Request fields kept with a share and shown back as they were given.
const ECHOED_FIELDS: [&str; 6] =
    ["availability_zone", "vpc_id", "subnet_id", "security_group_id", "description", "enterprise_project_id"];
/// Largest quota, in GB (1 PB).
const MAX_SIZE_GB: i64 = 1_048_576;
/// How long a measured share usage is reused.
const USAGE_TTL: Duration = Duration::from_secs(30);

fn field<'a>(obj: &'a Map<String, Value>, prefix: &str, key: &str) -> Result<&'a Value, ValidationError> {
    obj.get(key).ok_or_else(|| ValidationError::new(format!("{prefix}{key}"), "is required"))
}

/// A share name: 4 to 64 characters, a letter first, then letters, digits, `-` and `_`.
fn check_name(field: &str, v: &Value) -> Result<String, ValidationError> {
    let name = v.as_str().ok_or_else(|| ValidationError::new(field, "must be a string"))?;
    let ok = (4..=64).contains(&name.chars().count())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(ValidationError::new(
            field,
            "must be 4 to 64 characters: a letter, then letters, digits, '-' or '_'",
        ));
    }
    Ok(name.to_string())
}

fn check_size(field: &str, v: &Value) -> Result<i64, ValidationError> {
    v.as_i64().filter(|n| (1..=MAX_SIZE_GB).contains(n)).ok_or_else(|| {
        ValidationError::new(field, format!("must be an integer from 1 to {MAX_SIZE_GB} (GB)"))
    })
}

fn optional_str(
    obj: &Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<Option<String>, ValidationError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 255 => Ok(Some(s.clone())),
        Some(_) => {
            Err(ValidationError::new(format!("{prefix}{key}"), "must be a string of at most 255 bytes"))
        }
    }
}

/// `POST /shares`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body = json_body(&headers, &body)?;
    let share = body
        .get("share")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("share: is required and must be an object"))?;
    ferry_model::hpc::refuse_read_only(share, "share", SHARE_READ_ONLY_FIELDS)?;
    let p = "share.";
    let name = check_name("share.name", field(share, p, "name")?)?;
    let proto = field(share, p, "share_proto")?.as_str().unwrap_or("");
    if proto != "NFS" {
        return Err(ApiError::bad_request("share.share_proto: must be NFS"));
    }
    let share_type = field(share, p, "share_type")?.as_str().unwrap_or("");
    if !SHARE_TYPES.contains(&share_type) {
        return Err(ApiError::bad_request(format!(
            "share.share_type: must be one of {}",
            SHARE_TYPES.join(", ")
        )));
    }
    let size = check_size("share.size", field(share, p, "size")?)?;
    let metadata = match share.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(ApiError::bad_request("share.metadata: must be an object")),
    };
    let mut extra = json!({ "metadata": metadata });
    for key in ECHOED_FIELDS {
        if let Some(v) = optional_str(share, p, key)? {
            extra[key] = json!(v);
        }
    }
    let row = ShareRow {
        id: new_id(),
        project_id: project.clone(),
        name,
        status: ShareStatus::Creating,
        sub_status: None,
        size_gib: size,
        share_proto: proto.to_string(),
        share_type: share_type.to_string(),
        metadata: extra,
        gc_time_hours: None,
        created_at: now(),
    };
    state.store.insert_share(&row).await?;
    let job_id = JobRunner::start(
        &state,
        &project,
        JobType::CreateShare,
        json!({ "share_id": row.id }),
        &["create_directory"],
    )
    .await?;
    let body = json!({ "id": row.id, "name": row.name, "status": row.status, "job_id": job_id });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Bytes used under a share: a walk of its tree, reused for [`USAGE_TTL`].
/// Past that, the last count is answered at once and a new one runs behind
/// it: a share of millions of files takes long to walk, and the SDK polls
/// `show_share`. Only a share's first count is waited for, by every caller
/// that comes meanwhile: one walk for them all.
async fn used_bytes(state: &AppState, share_id: &str) -> u64 {
    let first = {
        let mut usage = state.usage.lock().expect("usage lock");
        let entry =
            usage.entry(share_id.to_string()).or_insert_with(|| ShareUsage::First(Default::default()));
        match entry {
            ShareUsage::First(first) => first.clone(),
            ShareUsage::Counted { at, used, .. } if at.elapsed() < USAGE_TTL => return *used,
            ShareUsage::Counted { used, counting, .. } => {
                if !std::mem::replace(counting, true) {
                    tokio::spawn(count_usage(state.clone(), share_id.to_string()));
                }
                return *used;
            }
        }
    };
    // A caller gone before the count ended (a timed-out request) leaves it
    // to the next one waiting.
    *first.get_or_init(|| count_usage(state.clone(), share_id.to_string())).await
}

async fn count_usage(state: AppState, share_id: String) -> u64 {
    #[cfg(test)]
    tests::WALKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = share_dir(&state.shares_root, &share_id);
    let used = tokio::task::spawn_blocking(move || du(&dir)).await.unwrap_or(0);
    let counted = ShareUsage::Counted { at: Instant::now(), used, counting: false };
    state.usage.lock().expect("usage lock").insert(share_id, counted);
    used
}

fn du(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for ent in rd.flatten() {
            let Ok(md) = ent.metadata() else { continue };
            if md.is_dir() {
                stack.push(ent.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

fn gb(n: f64) -> String {
    format!("{n:.2}")
}

async fn share_json(state: &AppState, s: &ShareRow) -> Value {
    let used = used_bytes(state, &s.id).await;
    let avail = (s.size_gib as f64 - used as f64 / (1u64 << 30) as f64).max(0.0);
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "size": gb(s.size_gib as f64),
        "avail_capacity": gb(avail),
        "share_proto": s.share_proto,
        "share_type": s.share_type,
        "created_at": format_task_time(s.created_at).unwrap_or_default(),
        "export_location": share_dir(&state.shares_root, &s.id).display().to_string(),
        "version": "ferry",
        "pay_model": "0",
        "action_progress": {},
        "metadata": s.metadata.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "used_bytes": used,
    });
    if let Some(hours) = s.gc_time_hours {
        v["gc_time"] = json!(hours);
    }
    if let Some(sub) = s.sub_status {
        v["sub_status"] = json!(sub);
    }
    if s.status == ShareStatus::Creating {
        v["action_progress"] = json!({ "CREATING": "50%" });
    }
    for key in ECHOED_FIELDS {
        if let Some(x) = s.metadata.get(key) {
            v[key] = x.clone();
        }
    }
    v
}

async fn load(state: &AppState, project: &str, share_id: &str) -> ApiResult<ShareRow> {
    let not_found = || ApiError::not_found(missing("share", share_id));
    if !plausible_id(share_id) {
        return Err(not_found());
    }
    state.store.share(project, share_id).await?.ok_or_else(not_found)
}

/// The share a target or task route names (it must exist in the project).
pub(crate) async fn exists(state: &AppState, project: &str, share_id: &str) -> ApiResult<ShareRow> {
    load(state, project, share_id).await
}

/// The share a target or task route names, which must be usable.
pub(crate) async fn active(state: &AppState, project: &str, share_id: &str) -> ApiResult<ShareRow> {
    let share = load(state, project, share_id).await?;
    if share.status != ShareStatus::Active {
        return Err(ApiError::busy(format!("share {share_id} is not available (status {})", share.status)));
    }
    Ok(share)
}

/// `GET /shares/detail`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(query.as_deref())?;
    let paging = Paging::from_query(q.get("offset").map(String::as_str), q.get("limit").map(String::as_str))?;
    let (rows, count) = state.store.list_shares(&project, paging.offset, paging.limit).await?;
    let mut shares = Vec::with_capacity(rows.len());
    for s in &rows {
        shares.push(share_json(&state, s).await);
    }
    Ok(Json(json!({ "shares": shares, "count": count })))
}

/// `GET /shares/{share_id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let share = load(&state, &project, &share_id).await?;
    Ok(Json(share_json(&state, &share).await))
}

/// `DELETE /shares/{share_id}`: refused while a task runs.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let share = load(&state, &project, &share_id).await?;
    if share.status == ShareStatus::Creating {
        return Err(ApiError::busy(format!("share {share_id} is still being created")));
    }
    let running = state
        .store
        .list_tasks(
            &share_id,
            &ferry_store::TaskFilter {
                status: Some(ferry_model::hpc::HpcTaskStatus::Doing),
                limit: 1,
                ..Default::default()
            },
        )
        .await?
        .1;
    if running > 0 {
        return Err(ApiError::busy(format!(
            "share {share_id} has {running} running task(s); delete them first"
        )));
    }
    let job_id = JobRunner::start(
        &state,
        &project,
        JobType::DeleteShare,
        json!({ "share_id": share_id }),
        &["delete_directory"],
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": share_id, "job_id": job_id }))).into_response())
}

/// `POST /shares/{share_id}/action`: `extend` or `change_name`.
pub(crate) async fn action(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body = json_body(&headers, &body)?;
    let share = load(&state, &project, &share_id).await?;
    if let Some(extend) = body.get("extend") {
        let extend = extend.as_object().ok_or_else(|| ApiError::bad_request("extend: must be an object"))?;
        let new_size = check_size("extend.new_size", field(extend, "extend.", "new_size")?)?;
        if new_size <= share.size_gib {
            return Err(ApiError::bad_request(format!(
                "extend.new_size: must be larger than the current size ({} GB)",
                share.size_gib
            )));
        }
        if share.status != ShareStatus::Active || share.sub_status == Some(ShareSubStatus::Expanding) {
            return Err(ApiError::busy(format!("share {share_id} is busy with another operation")));
        }
        state.store.set_share_status(&share_id, ShareStatus::Active, Some(ShareSubStatus::Expanding)).await?;
        let entities = json!({ "share_id": share_id, "new_size": new_size });
        let job_id =
            JobRunner::start(&state, &project, JobType::ExtendShare, entities, &["set_quota"]).await?;
        let body = json!({ "id": share_id, "name": share.name, "job_id": job_id });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    if let Some(change) = body.get("change_name") {
        let change =
            change.as_object().ok_or_else(|| ApiError::bad_request("change_name: must be an object"))?;
        let name = check_name("change_name.name", field(change, "change_name.", "name")?)?;
        state.store.rename_share(&share_id, &name).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Err(ApiError::bad_request("body: give extend or change_name"))
}

/// The largest eviction age, in hours, as the SDK's `UpdateHpcShareRequestBody` allows.
const GC_TIME_MAX_HOURS: i64 = 100_000_000;

/// `PUT /shares/{share_id}`: `{"action":"config_gc_time","gc_time":<hours>}`.
pub(crate) async fn update(
    State(state): State<AppState>,
    Path((project, share_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&headers, &body)?;
    load(&state, &project, &share_id).await?;
    if body.get("action").and_then(Value::as_str) != Some("config_gc_time") {
        return Err(ApiError::bad_request("action: must be config_gc_time"));
    }
    let hours = body
        .get("gc_time")
        .and_then(Value::as_i64)
        .filter(|h| (1..=GC_TIME_MAX_HOURS).contains(h))
        .ok_or_else(|| {
        ApiError::bad_request(format!("gc_time: must be an integer from 1 to {GC_TIME_MAX_HOURS} (hours)"))
    })?;
    state.store.set_share_gc_time(&share_id, hours).await?;
    Ok(Json(json!({ "gc_time": hours })))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;

    use super::*;

    /// Walks of share trees, by every test of this module.
    pub(super) static WALKS: AtomicU64 = AtomicU64::new(0);

    #[tokio::test]
    async fn the_first_usage_count_is_shared_and_a_stale_one_answered_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ferry_store::Store::open_sqlite_file(&dir.path().join("ferry.db")).await.unwrap();
        let stores = Arc::new(ferry_storage::ObjectStores::new(vec![]).unwrap());
        let state = AppState::new(store, dir.path().join("shares"), stores, Default::default());
        let share = share_dir(&state.shares_root, "s1");
        std::fs::create_dir_all(share.join("d")).unwrap();
        std::fs::write(share.join("d/f"), b"12345").unwrap();
        let walks = WALKS.load(Relaxed);
        let (a, b) = tokio::join!(used_bytes(&state, "s1"), used_bytes(&state, "s1"));
        assert_eq!((a, b), (5, 5), "the first count is waited for");
        assert_eq!(WALKS.load(Relaxed) - walks, 1, "callers during the first count share it");

        std::fs::write(share.join("g"), b"678").unwrap();
        assert_eq!(used_bytes(&state, "s1").await, 5, "fresh: reused");
        let long_ago = Instant::now() - USAGE_TTL - Duration::from_secs(1);
        match state.usage.lock().unwrap().get_mut("s1").unwrap() {
            ShareUsage::Counted { at, .. } => *at = long_ago,
            first => panic!("not counted: {first:?}"),
        }
        assert_eq!(used_bytes(&state, "s1").await, 5, "stale: answered at once");
        for _ in 0..100 {
            if matches!(state.usage.lock().unwrap()["s1"], ShareUsage::Counted { used: 8, .. }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not counted again: {:?}", state.usage.lock().unwrap()["s1"]);
    }
}
