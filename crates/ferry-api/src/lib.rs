//! ferry's REST API (axum): the SFS Turbo-compatible routes of API.md,
//! authentication (`X-Auth-Token` and SDK-HMAC-SHA256, both scoped to the
//! path's project), the error body, `X-Request-Id`, and the control-plane
//! jobs behind the asynchronous routes.

pub mod auth;
mod error;
pub mod http_error;
pub mod metrics;
mod middleware;
mod openapi;
mod routes;
mod state;

use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::{Json, Router};

pub use error::{Error, Result};
pub use http_error::ApiError;
pub use middleware::RequestId;
pub use routes::resume_jobs;
pub use state::AppState;

/// `/health` and `/metrics` alone: what a workers-only node serves.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::render))
        .layer(from_fn(middleware::request_id))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .nest("/v1/{project_id}/sfs-turbo", routes::sfs_turbo())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(from_fn_with_state(state.clone(), middleware::authenticate))
        .layer(from_fn_with_state(state.clone(), middleware::deadline));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::render))
        .merge(openapi::routes())
        .merge(api)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                http_error::PARAMETER,
                "method not allowed on this route",
            )
        })
        .layer(from_fn(middleware::request_id))
        .with_state(state)
}
