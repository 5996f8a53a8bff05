//! The API's description, served without authentication: the OpenAPI 3.0
//! document at `/openapi.json` (the hand-maintained `openapi.json` beside
//! `Cargo.toml`) and a page rendering it at `/docs`, with every asset
//! compiled in (`assets/`, see its README): nothing is fetched from
//! elsewhere at build or run time.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http_error::ApiError;

/// The OpenAPI document.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// The page at `/docs`. Its URLs are relative so that it also works behind
/// a proxy that serves ferry under a path prefix.
const DOCS_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ferry API</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="openapi.json" expand-responses="200,202,204" required-props-first="true"></redoc>
<script src="docs/redoc.standalone.js"></script>
</body>
</html>
"#;

/// Blocks every request of the page to another origin (Redoc's sidebar
/// shows a logo from a CDN and hides it when it cannot load).
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; worker-src 'self' blob:; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What `/docs/{asset}` serves: name, Content-Type, bytes.
pub(crate) const ASSETS: &[(&str, &str, &[u8])] = &[
    ("redoc.standalone.js", JS, include_bytes!("../assets/redoc.standalone.js")),
    ("redoc.LICENSE.txt", TEXT, include_bytes!("../assets/redoc.LICENSE.txt")),
    ("redoc.standalone.js.LICENSE.txt", TEXT, include_bytes!("../assets/redoc.standalone.js.LICENSE.txt")),
];

/// `/openapi.json`, `/docs` and `/docs/{asset}`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs_page))
        .route("/docs/{asset}", get(docs_asset))
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn docs_page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_CSP)),
    ];
    (headers, DOCS_HTML).into_response()
}

async fn docs_asset(Path(name): Path<String>) -> Response {
    let Some(&(_, content_type, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found("no such asset").into_response();
    };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400")),
        (HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")),
    ];
    (headers, bytes).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_json() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        let version = doc["openapi"].as_str().expect("an openapi field");
        assert!(version.starts_with("3."), "OpenAPI 3.x, not {version}");
        assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    }

    #[test]
    fn the_asset_enum_of_the_document_is_what_is_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let param = &doc["paths"]["/docs/{asset}"]["get"]["parameters"][0];
        assert_eq!(param["name"], "asset");
        let documented: Vec<&str> =
            param["schema"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let served: Vec<&str> = ASSETS.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn the_page_loads_only_served_assets() {
        for src in DOCS_HTML.split("src=\"").skip(1) {
            let url = &src[..src.find('"').unwrap()];
            let name = url.strip_prefix("docs/").unwrap_or_else(|| panic!("{url} is not under docs/"));
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "{name} is not served");
        }
        assert!(!DOCS_HTML.contains("http:") && !DOCS_HTML.contains("https:") && !DOCS_HTML.contains("//"));
    }
}
