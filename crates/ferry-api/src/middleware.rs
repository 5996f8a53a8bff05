//! Layers around every route: a request id on every answer, the API's error
//! body on every error answer, and authentication scoped to the path's project.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use crate::auth::sdk_hmac::{self, AccessKey, SignedRequest};
use crate::http_error::{self, ApiError};
use crate::state::{now, AppState};
use crate::Error;

/// Largest request body accepted, the same for both authentication methods
/// (axum's own default, which the handlers' body extractors apply).
pub const MAX_BODY: usize = 2 << 20;

/// The request id of the current request, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Give every request an id, log it, and return it as `X-Request-Id`.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let started = std::time::Instant::now();
    let mut resp = with_error_body(next.run(req).await).await;
    crate::metrics::record_request(method.as_str(), &route, resp.status().as_u16(), started.elapsed());
    tracing::debug!(%method, %path, status = resp.status().as_u16(), request_id = %id, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("X-Request-Id", v);
    }
    resp
}

/// Answer 503 to a request not done in the configured time
/// ([`AppState::with_request_timeout`]): a database cut off by a partition
/// holds every call for as long as TCP does (many minutes), and a client,
/// or a load balancer in front of several API nodes, is better served by
/// an answer it can act on. The request itself runs on to its end in a
/// task of its own, so no handler is cut between two writes, and what it
/// fills (the usage cache of a large share, say) is there for the next.
pub async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.request_timeout;
    let mut running = tokio::spawn(next.run(req));
    match tokio::time::timeout(limit, &mut running).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a request handler failed");
            ApiError::internal("internal error; see the server log").into_response()
        }
        Err(_) => {
            tracing::error!(
                limit_secs = limit.as_secs(),
                "a request was not done in time; is the database (or the shares' file system) slow or unreachable?"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                http_error::INTERNAL,
                format!(
                    "the request was not done within {} s: the database or the file system is slow or \
                     unreachable; it may still complete, so check its effect before sending it again",
                    limit.as_secs()
                ),
            )
            .into_response()
        }
    }
}

/// Error answers that axum makes itself (a path parameter that is not UTF-8
/// once decoded, a body over [`MAX_BODY`]) are plain text: give them the
/// API's error body, whose code clients read.
async fn with_error_body(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    // axum's rejections name the parameter, not its value; cut them short anyway.
    let detail: String =
        String::from_utf8_lossy(&text).chars().filter(|c| !c.is_control()).take(200).collect();
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(status, http_error::PARAMETER, format!("body: larger than {} MiB", MAX_BODY >> 20))
        }
        StatusCode::UNAUTHORIZED => ApiError::unauthenticated("authentication required"),
        StatusCode::FORBIDDEN => ApiError::forbidden("not allowed"),
        StatusCode::NOT_FOUND => ApiError::not_found("no such resource"),
        s if s.is_server_error() => {
            ApiError::new(s, http_error::INTERNAL, "internal error; see the server log")
        }
        s if detail.is_empty() => ApiError::new(s, http_error::PARAMETER, "invalid request"),
        s => ApiError::new(s, http_error::PARAMETER, format!("invalid request: {detail}")),
    };
    let mut out = error.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The project of a `/v1/{project}/…` path, percent-decoded as the handlers
/// see it (`None` when the path has none, or it does not decode to UTF-8).
fn path_project(path: &str) -> Option<Cow<'_, str>> {
    let mut segs = path.trim_start_matches('/').split('/');
    let raw = (segs.next() == Some("v1")).then(|| segs.next()).flatten().filter(|p| !p.is_empty())?;
    percent_decode_str(raw).decode_utf8().ok()
}

/// The only value of header `name`; sent twice is refused (which one would count?).
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::unauthenticated(Error::RepeatedHeader(name.to_string()).to_string()));
    }
    Ok(first)
}

/// `X-Project-Id`, which the SDKs send, must name the path's project.
fn check_project_header(headers: &HeaderMap, project: &str) -> Result<(), ApiError> {
    match single_header(headers, "X-Project-Id")? {
        Some(v) if v.to_str().ok().map(str::trim) != Some(project) => {
            Err(ApiError::forbidden("X-Project-Id is not the project of the path"))
        }
        _ => Ok(()),
    }
}

/// Admit a request carrying `X-Auth-Token` or an `SDK-HMAC-SHA256`
/// signature of the path's project; refuse anything else with 401/403.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn check(state: &AppState, req: Request) -> Result<Request, ApiError> {
    let Some(project) = path_project(req.uri().path()).map(Cow::into_owned) else {
        return Err(ApiError::not_found("no such route"));
    };
    if let Some(token) = single_header(req.headers(), "X-Auth-Token")? {
        let invalid = || ApiError::unauthenticated("X-Auth-Token is not a valid token");
        let token = token.to_str().map_err(|_| invalid())?.trim();
        if token.is_empty() {
            return Err(ApiError::unauthenticated("X-Auth-Token is empty"));
        }
        return match state.store.token_project(token).await? {
            None => Err(invalid()),
            Some(p) if p != project => Err(ApiError::forbidden("the token is not valid for this project")),
            Some(_) => {
                check_project_header(req.headers(), &project)?;
                Ok(req)
            }
        };
    }
    if req.headers().get("Authorization").is_none() {
        return Err(ApiError::unauthenticated(
            "authentication required: send X-Auth-Token or an SDK-HMAC-SHA256 Authorization header",
        ));
    }
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            http_error::PARAMETER,
            format!("body: larger than {} MiB", MAX_BODY >> 20),
        )
    })?;
    let auth = parts.headers.get("Authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let access_key = sdk_hmac::Authorization::parse(auth)
        .map_err(|e| ApiError::unauthenticated(e.to_string()))?
        .access_key
        .to_string();
    let key = state
        .store
        .access_key(&access_key)
        .await?
        .map(|(secret_key, project_id)| AccessKey { secret_key, project_id });
    let headers: Vec<(&str, &str)> =
        parts.headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v))).collect();
    let signed = SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body: &body,
    };
    let who = sdk_hmac::verify(&signed, |_| key, now()).map_err(|e| match e {
        // Signed by a key of this project or not, it asks for another one.
        Error::ProjectMismatch => ApiError::forbidden(e.to_string()),
        e => ApiError::unauthenticated(e.to_string()),
    })?;
    if who.project_id != project {
        return Err(ApiError::forbidden("the access key is not valid for this project"));
    }
    drop(headers);
    Ok(Request::from_parts(parts, Body::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_comes_from_the_v1_path() {
        assert_eq!(path_project("/v1/p1/sfs-turbo/shares").as_deref(), Some("p1"));
        assert_eq!(path_project("/v1/p%41/sfs-turbo").as_deref(), Some("pA"), "decoded as handlers see it");
        assert_eq!(path_project("/v1/%ff/sfs-turbo"), None);
        assert_eq!(path_project("/v1//sfs-turbo"), None);
        assert_eq!(path_project("/v2/p1/x"), None);
        assert_eq!(path_project("/health"), None);
    }
}
