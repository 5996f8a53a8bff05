//! The routes: SFS Turbo-compatible paths under `/v1/{project_id}/sfs-turbo`
//! (API.md), plus `/health`.

mod jobs;
mod shares;
mod targets;
mod tasks;

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::Value;

use crate::http_error::{ApiError, ApiResult};
use crate::state::AppState;

pub use jobs::{resume_jobs, JobRunner};

/// Every authenticated route, relative to `/v1/{project_id}/sfs-turbo`.
pub(crate) fn sfs_turbo() -> Router<AppState> {
    Router::new()
        .route("/shares", post(shares::create))
        .route("/shares/detail", get(shares::list))
        .route("/shares/{share_id}", get(shares::show).delete(shares::delete).put(shares::update))
        .route("/shares/{share_id}/action", post(shares::action))
        .route("/shares/{share_id}/targets", post(targets::create).get(targets::list))
        .route("/shares/{share_id}/targets/{target_id}", get(targets::show).delete(targets::delete))
        .route("/shares/{share_id}/targets/{target_id}/attributes", put(targets::update_attributes))
        .route("/shares/{share_id}/targets/{target_id}/policy", put(targets::update_policy))
        .route("/shares/{share_id}/targets/{target_id}/entries", get(targets::entries))
        .route("/{share_id}/hpc-cache/task", post(tasks::create))
        .route("/{share_id}/hpc-cache/tasks", get(tasks::list))
        .route("/{share_id}/hpc-cache/task/{task_id}", get(tasks::show).delete(tasks::delete))
        .route("/{share_id}/hpc-cache/task/{task_id}/failures", get(tasks::failures))
        .route("/jobs/{job_id}", get(jobs::show))
}

/// The JSON body of a request; a body that is not a JSON object is a parameter error.
pub(crate) fn json_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    if let Some(ct) = headers.get("content-type") {
        // `application/json`, with parameters such as `charset=UTF-8` or not.
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if ct.split(';').next().map(str::trim) != Some("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                crate::http_error::PARAMETER,
                "Content-Type must be application/json",
            ));
        }
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("body: a JSON object is required"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body: invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("body: must be a JSON object"));
    }
    Ok(value)
}

/// Query parameters; a parameter given twice is a parameter error.
pub(crate) fn query_map(raw: Option<&str>) -> ApiResult<HashMap<String, String>> {
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if map.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::bad_request(format!("{k}: given more than once")));
        }
    }
    Ok(map)
}

/// An id from the path: ids are short printable strings; anything else cannot exist.
pub(crate) fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// "`{kind} {id}` does not exist", without repeating an id that cannot be
/// one (it may be ten kilobytes long).
pub(crate) fn missing(kind: &str, id: &str) -> String {
    if plausible_id(id) {
        format!("{kind} {id} does not exist")
    } else {
        format!("{kind} does not exist: the id is not a valid {kind} id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_must_be_json() {
        let body = Bytes::from_static(b"{}");
        for ct in ["application/json", "application/json;charset=UTF-8", "Application/JSON ; charset=utf-8"] {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", ct.parse().unwrap());
            assert!(json_body(&headers, &body).is_ok(), "{ct}");
        }
        for ct in ["text/plain", "application/jsonx", "application/json-patch+json", ""] {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", ct.parse().unwrap());
            let err = json_body(&headers, &body).unwrap_err();
            assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        }
        assert!(json_body(&HeaderMap::new(), &body).is_ok(), "no Content-Type: read as JSON");
    }

    #[test]
    fn messages_never_repeat_implausible_ids() {
        assert_eq!(missing("share", "abc-1"), "share abc-1 does not exist");
        let long = "i".repeat(10_000);
        assert!(missing("task", &long).len() < 80);
        assert!(!missing("task", "../x").contains(".."));
    }
}
