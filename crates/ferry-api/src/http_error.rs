//! The error answer of every route: an HTTP status and a body in both
//! spellings of the SFS Turbo API (`error_code`/`error_msg`, which the
//! Huawei Cloud SDKs read, and `errCode`/`errMsg`, which other clients read).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_model::hpc::ValidationError;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Parameter error.
pub const PARAMETER: &str = "SFS.TURBO.0001";
/// Object not found, or not this project's.
pub const NOT_FOUND: &str = "SFS.TURBO.0002";
/// Internal error.
pub const INTERNAL: &str = "SFS.TURBO.0005";
/// Name exists.
pub const NAME_EXISTS: &str = "SFS.TURBO.0009";
/// Resource busy with another operation.
pub const BUSY: &str = "SFS.TURBO.0011";
/// Invalid job id.
pub const INVALID_JOB: &str = "SFS.TURBO.0019";
/// Invalid task id (what clients polling a deleted task wait for).
pub const INVALID_TASK: &str = "SFS.TURBO.0106";
/// Missing or wrong credentials (the code Huawei Cloud's gateway uses).
pub const UNAUTHENTICATED: &str = "APIGW.0301";
/// Credentials of another project.
pub const FORBIDDEN: &str = "APIGW.0302";

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, PARAMETER, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, NAME_EXISTS, message)
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, BUSY, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, UNAUTHENTICATED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, FORBIDDEN, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, message)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<ferry_store::Error> for ApiError {
    fn from(e: ferry_store::Error) -> Self {
        match e {
            ferry_store::Error::Conflict(m) => ApiError::conflict(m),
            ferry_store::Error::LimitReached(m) => ApiError::bad_request(m),
            ferry_store::Error::NotFound(m) => ApiError::not_found(m),
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::internal("internal error: the database failed; see the server log")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errCode": self.code,
            "errMsg": self.message,
            "error_code": self.code,
            "error_msg": self.message,
        });
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
