//! `openapi.json` describes exactly the routes the router serves, and the
//! document and its docs page are served without credentials.
//!
//! The routes served are read from the router's source (`router()` in
//! lib.rs and what it nests and merges), so a route added without being
//! documented fails here; the live checks below then make sure the source
//! reading matches what the router really answers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use ferry_api::AppState;
use serde_json::Value;
use tower::ServiceExt;

type Route = (String, String);

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn document() -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json")).unwrap();
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

/// Every (method, path) of the document, methods upper-case.
fn documented(doc: &Value) -> BTreeSet<Route> {
    let mut set = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (key, _) in item.as_object().expect("a path item") {
            if METHODS.contains(&key.as_str()) {
                set.insert((key.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    set
}

// ---- reading the routes from the source ----

/// The source without comments; string literals are kept as they are,
/// except that raw strings become `""` and character literals `'_'` (so
/// that the scanners below only meet plain strings).
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        let raw = b[i] == b'r' && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        let hashes = if raw { b[i + 1..].iter().take_while(|&&c| c == b'#').count() } else { 0 };
        if raw && b.get(i + 1 + hashes) == Some(&b'"') {
            let end = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            i = body + src[body..].find(&end).expect("unterminated raw string") + end.len();
            out.extend_from_slice(b"\"\"");
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || (b[i + 1] == b'\\' && b[i + 3] == b'\''))
        {
            i += if b[i + 1] == b'\\' { 4 } else { 3 };
            out.extend_from_slice(b"'_'");
        } else if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.extend_from_slice(&b[start..i.min(b.len())]);
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Index just past the string literal starting at `i`.
fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while b[i] != b'"' {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// Index of the bracket closing the one opened at `open` (strings skipped).
fn closing(src: &str, open: usize) -> usize {
    let b = src.as_bytes();
    let (o, c) = (b[open], if b[open] == b'(' { b')' } else { b'}' });
    let (mut depth, mut i) = (0, open);
    loop {
        match b[i] {
            b'"' => {
                i = skip_string(b, i);
                continue;
            }
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// The body of `fn name` in the crate file of `module` ("" for lib.rs).
fn fn_body(module: &str, name: &str) -> String {
    let dir = src_dir();
    let file = if module.is_empty() {
        dir.join("lib.rs")
    } else if dir.join(module).join("mod.rs").exists() {
        dir.join(module).join("mod.rs")
    } else {
        dir.join(format!("{module}.rs"))
    };
    let src = strip_comments(&std::fs::read_to_string(&file).unwrap());
    let start = [format!("fn {name}("), format!("fn {name}<")]
        .iter()
        .find_map(|pat| src.find(pat.as_str()))
        .unwrap_or_else(|| panic!("no fn {name} in {}", file.display()));
    let open = start + src[start..].find('{').unwrap();
    src[open + 1..closing(&src, open)].to_string()
}

/// The string literal at the start of `s` (after blanks), unescaped enough for paths.
fn leading_str(s: &str) -> &str {
    let s = s.trim_start();
    assert!(s.starts_with('"'), "expected a string literal at {:?}", &s[..s.len().min(40)]);
    &s[1..1 + s[1..].find('"').unwrap()]
}

/// The argument list of the call whose `(` is at `open`, split at top-level commas.
fn call_args(src: &str, open: usize) -> (Vec<String>, usize) {
    let close = closing(src, open);
    let b = src.as_bytes();
    let (mut args, mut depth, mut start, mut i) = (Vec::new(), 0, open + 1, open + 1);
    while i < close {
        match b[i] {
            b'"' => {
                i = skip_string(b, i);
                continue;
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b',' if depth == 0 => {
                args.push(src[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let last = src[start..close].trim();
    if !last.is_empty() {
        args.push(last.to_string());
    }
    (args, close)
}

/// The HTTP methods of a method router expression such as `get(a).delete(b)`:
/// the calls at its top level.
fn methods_of(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let (mut found, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'(' {
            let ident_start = expr[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map(|p| p + 1)
                .unwrap_or(0);
            let ident = &expr[ident_start..i];
            assert!(
                METHODS.contains(&ident),
                "unsupported method router call {ident}( in {expr:?}: teach tests/openapi.rs about it"
            );
            found.push(ident.to_ascii_uppercase());
            i = closing(expr, i) + 1;
            continue;
        }
        i += 1;
    }
    assert!(!found.is_empty(), "no method in {expr:?}");
    found
}

/// The routes that `fn name` of `module` builds, under `prefix`, following
/// `.nest(P, module::f())` and `.merge(module::f())`.
fn routes_of(module: &str, name: &str, prefix: &str, out: &mut BTreeSet<Route>) {
    let body = fn_body(module, name);
    let b = body.as_bytes();
    let mut i = 0;
    while let Some(dot) = body[i..].find('.').map(|d| d + i) {
        let ident_end =
            body[dot + 1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map(|e| e + dot + 1);
        let Some(ident_end) = ident_end.filter(|&e| b[e] == b'(') else {
            i = dot + 1;
            continue;
        };
        let call = &body[dot + 1..ident_end];
        let (args, close) = call_args(&body, ident_end);
        match call {
            "route" => {
                let path = leading_str(&args[0]);
                for m in methods_of(&args[1]) {
                    assert!(out.insert((m.clone(), format!("{prefix}{path}"))), "{m} {prefix}{path} twice");
                }
            }
            "nest" => {
                let path = leading_str(&args[0]);
                let (m, f) = target_fn(&args[1]);
                routes_of(m, f, &format!("{prefix}{path}"), out);
            }
            "merge" if args[0].contains("::") => {
                let (m, f) = target_fn(&args[0]);
                routes_of(m, f, prefix, out);
            }
            "merge" => {
                // A plain local (`api`) is built in this same function body.
                let local = args[0].chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                assert!(local, ".merge({}) in fn {name}: teach tests/openapi.rs about it", args[0]);
            }
            "route_service" | "nest_service" | "route_layer" | "fallback_service" => {
                panic!(".{call}(…) in fn {name}: teach tests/openapi.rs about it")
            }
            _ => {}
        }
        // Calls inside the arguments (closures) are not routes.
        i = if call == "route" || call == "nest" || call == "merge" { close + 1 } else { ident_end + 1 };
    }
}

/// `routes::sfs_turbo()` → ("routes", "sfs_turbo").
fn target_fn(expr: &str) -> (&str, &str) {
    let expr = expr.trim().strip_suffix("()").unwrap_or_else(|| panic!("unsupported router {expr:?}"));
    let (m, f) = expr.rsplit_once("::").unwrap_or_else(|| panic!("unsupported router {expr:?}"));
    (m.rsplit("::").next().unwrap(), f)
}

fn served_by_source() -> BTreeSet<Route> {
    let mut out = BTreeSet::new();
    routes_of("", "router", "", &mut out);
    out
}

#[test]
fn the_document_is_openapi_3() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    for scheme in ["XAuthToken", "SdkHmacSha256"] {
        assert_eq!(doc["components"]["securitySchemes"][scheme]["type"], "apiKey", "{scheme}");
    }
    let error = &doc["components"]["schemas"]["Error"]["required"];
    assert_eq!(error, &serde_json::json!(["errCode", "errMsg", "error_code", "error_msg"]));
}

#[test]
fn the_source_reading_finds_the_known_routes() {
    let served = served_by_source();
    for (m, p) in [
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/{project_id}/sfs-turbo/shares"),
        ("DELETE", "/v1/{project_id}/sfs-turbo/shares/{share_id}"),
        ("PUT", "/v1/{project_id}/sfs-turbo/shares/{share_id}"),
        ("GET", "/v1/{project_id}/sfs-turbo/jobs/{job_id}"),
    ] {
        assert!(served.contains(&(m.to_string(), p.to_string())), "{m} {p} not found in {served:#?}");
    }
}

#[test]
fn the_document_covers_exactly_the_served_routes() {
    let served = served_by_source();
    let documented = documented(&document());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "served but not in openapi.json: {undocumented:?}\nin openapi.json but not served: {not_served:?}"
    );
}

#[test]
fn every_operation_documents_its_responses() {
    let doc = document();
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: responses"));
        assert!(responses.keys().any(|k| k.starts_with('2')), "{method} {path}: no success response");
        assert!(op["operationId"].is_string(), "{method} {path}: operationId");
        let public = op["security"].as_array().is_some_and(|s| s.is_empty());
        assert_eq!(public, !path.starts_with("/v1/"), "{method} {path}: security");
        if !public {
            for code in ["401", "403"] {
                assert!(responses.contains_key(code), "{method} {path}: no {code}");
            }
        }
        // Every path parameter of the path is declared, on the path or the operation.
        let declared: BTreeSet<String> = [&doc["paths"][&path]["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| resolve(&doc, p))
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        assert_eq!(declared, in_path, "{method} {path}: path parameters");
    }
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => doc.pointer(r.strip_prefix('#').unwrap()).unwrap_or_else(|| panic!("no {r}")),
        None => v,
    }
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    fn walk(doc: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let ptr = r.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {r}"));
                    assert!(doc.pointer(ptr).is_some(), "dangling $ref {r}");
                }
                m.values().for_each(|x| walk(doc, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
            _ => {}
        }
    }
    walk(&doc, &doc);
}

// ---- against the router itself ----

async fn app() -> (Router, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = ferry_store::Store::open_sqlite_file(&dir.path().join("ferry.db")).await.unwrap();
    let token = store.create_token("p1").await.unwrap();
    let stores = Arc::new(ferry_storage::ObjectStores::new(vec![]).unwrap());
    let state = AppState::new(store, dir.path().join("shares"), stores, Default::default());
    (ferry_api::router(state), token, dir)
}

struct Answer {
    status: StatusCode,
    content_type: String,
    request_id: bool,
    body: Vec<u8>,
}

async fn call(app: &Router, method: &str, uri: &str, token: Option<&str>, body: Option<&str>) -> Answer {
    let mut req = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(uri);
    if let Some(t) = token {
        req = req.header("X-Auth-Token", t);
    }
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let content_type = header("content-type").unwrap_or_default();
    let request_id = header("x-request-id").is_some();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec();
    Answer { status, content_type, request_id, body }
}

#[tokio::test]
async fn the_document_and_the_docs_page_need_no_credentials() {
    let (app, _token, _dir) = app().await;

    let a = call(&app, "GET", "/openapi.json", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type.starts_with("application/json"), "{}", a.content_type);
    assert!(a.request_id);
    let served: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(served, document());

    let a = call(&app, "GET", "/docs", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type.starts_with("text/html"), "{}", a.content_type);
    let page = String::from_utf8(a.body).unwrap();
    assert!(page.contains("openapi.json") && page.contains("docs/redoc.standalone.js"), "{page}");

    let a = call(&app, "GET", "/docs/redoc.standalone.js", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type.starts_with("text/javascript"), "{}", a.content_type);
    assert!(a.body.len() > 100_000);
    let a = call(&app, "GET", "/docs/redoc.LICENSE.txt", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(String::from_utf8(a.body).unwrap().contains("MIT"));

    let a = call(&app, "GET", "/docs/nothing.js", None, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let e: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(e["error_code"], "SFS.TURBO.0002");

    // The API itself still needs them.
    let a = call(&app, "GET", "/v1/p1/sfs-turbo/shares/detail", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

/// A concrete URI for a documented path: ids that exist nowhere.
fn concrete(doc: &Value, path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{project_id}" => "p1".to_string(),
            "{asset}" => {
                doc["paths"][path]["get"]["parameters"][0]["schema"]["enum"][0].as_str().unwrap().to_string()
            }
            s if s.starts_with('{') => "no-such-id".to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers_a_documented_status() {
    let (app, token, _dir) = app().await;
    let doc = document();
    for (method, path) in documented(&doc) {
        let uri = concrete(&doc, &path);
        let body = matches!(method.as_str(), "POST" | "PUT").then_some("{}");
        let a = call(&app, &method, &uri, Some(&token), body).await;
        let text = String::from_utf8_lossy(&a.body);
        assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}: {text}");
        assert!(!text.contains("no such route"), "{method} {uri} is not routed: {text}");
        assert!(a.request_id, "{method} {uri}: no X-Request-Id");
        let responses = &doc["paths"][&path][method.to_ascii_lowercase()]["responses"];
        assert!(
            responses.get(a.status.as_str()).is_some(),
            "{method} {uri} answered {}, which openapi.json does not list: {text}",
            a.status
        );
    }
}

#[tokio::test]
async fn documented_paths_serve_no_undocumented_method() {
    let (app, token, _dir) = app().await;
    let doc = document();
    let documented = documented(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let uri = concrete(&doc, path);
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if documented.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let a = call(&app, method, &uri, Some(&token), None).await;
            assert_eq!(
                a.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri} is served but not documented: {}",
                String::from_utf8_lossy(&a.body)
            );
        }
    }
}
