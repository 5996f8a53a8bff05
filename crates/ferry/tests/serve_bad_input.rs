//! Bad input to `ferry serve` (RELIABILITY.md, "Bad inputs to try"), through
//! real HTTP on SQLite and PostgreSQL. Every case is one line of a table: it
//! must get its 4xx with the error code API.md names and an `X-Request-Id`,
//! never a 5xx, never a message that echoes a huge value, and it must change
//! nothing: the share, target and task lists of both projects, the share
//! directory trees and the bucket are compared before and after each case.
//!
//! Hostile object keys cannot go through a table (an import is the point):
//! `hostile_keys_stay_inside_the_target` imports them and checks that each
//! is either at its own name under the target or in the failure report, and
//! that nothing outside the target directory changed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::server::{report_paths, Answer, Client, Db, Server};
use common::{snapshot, S3Server};
use ferry_api::auth::sdk_hmac::{self, SignedRequest};
use serde_json::{json, Value};

const PROJECT: &str = "proj1";
const OTHER: &str = "proj2";

const OK: &str = "";
const PARAM: &str = "SFS.TURBO.0001";
const NOT_FOUND: &str = "SFS.TURBO.0002";
const NAME_EXISTS: &str = "SFS.TURBO.0009";
const INVALID_JOB: &str = "SFS.TURBO.0019";
const INVALID_TASK: &str = "SFS.TURBO.0106";
const UNAUTH: &str = "APIGW.0301";
const FORBIDDEN: &str = "APIGW.0302";

/// The longest error answer accepted: messages name fields, never echo values.
const MAX_ERROR_TEXT: usize = 600;

const JSON: &str = "application/json;charset=UTF-8";

fn write_config(dir: &Path, s3: &S3Server) -> PathBuf {
    let path = dir.join("ferry.toml");
    let text = format!(
        "[[object_stores]]\nendpoint = \"{}\"\nprovider = \"s3\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\npath_style = true\n",
        s3.endpoint(),
        s3.access_key(),
        s3.secret_key()
    );
    fs::write(&path, text).unwrap();
    path
}

/// Create a share and wait for it; returns (share id, job id).
async fn create_share(c: &Client, name: &str) -> (String, String) {
    let body = json!({"share": {"name": name, "share_proto": "NFS", "share_type": "STANDARD", "size": 10}});
    let a = c.call("POST", "/shares", Some(&body)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.body["id"].as_str().unwrap().to_string();
    let job = a.body["job_id"].as_str().unwrap().to_string();
    let j = c.poll(&format!("/jobs/{job}"), |b| b["status"] == "success" || b["status"] == "failed").await;
    assert_eq!(j["status"], "success", "{j}");
    (id, job)
}

async fn link_target(c: &Client, share: &str, path: &str, endpoint: &str, bucket: &str) -> String {
    let body = json!({"file_system_path": path, "obs": {"bucket": bucket, "endpoint": endpoint}});
    let a = c.call("POST", &format!("/shares/{share}/targets"), Some(&body)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let id = a.body["target_id"].as_str().unwrap().to_string();
    let t = c.poll(&format!("/shares/{share}/targets/{id}"), |b| b["lifecycle"] != "CREATING").await;
    assert_eq!(t["lifecycle"], "AVAILABLE", "{t}");
    id
}

fn token_of(c: &Client) -> String {
    match &c.auth {
        common::server::Auth::Token(t) => t.clone(),
        other => panic!("not a token client: {other:?}"),
    }
}

/// One project's resources.
struct Project {
    client: Client,
    share: String,
    job: String,
    target: String,
    task: String,
}

/// A server with one share, target and finished task in each of two
/// projects, plus a directory, a file and a symlink to `/` in the share.
struct Fixture {
    server: Server,
    s3: S3Server,
    mine: Project,
    other: Project,
    token: String,
    other_token: String,
    ak: String,
    sk: String,
    _tmp: tempfile::TempDir,
}

async fn project(server: &Server, s3: &S3Server, project: &str, share_name: &str) -> Project {
    let client = server.token(project);
    let (share, job) = create_share(&client, share_name).await;
    let target = link_target(&client, &share, "data", &s3.endpoint(), "bkt").await;
    let task = client.run_task(&share, "import_metadata", "data", Some("ds/")).await;
    assert_eq!(task["status"], "SUCCESS", "{task}");
    let task = task["task_id"].as_str().unwrap().to_string();
    let a = client
        .call("PUT", &format!("/shares/{share}"), Some(&json!({"action": "config_gc_time", "gc_time": 24})))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    Project { client, share, job, target, task }
}

async fn fixture(db: &Db) -> Fixture {
    let s3 = S3Server::start(&["bkt"]).await;
    fs::create_dir_all(s3.root().join("bkt/ds")).unwrap();
    fs::write(s3.root().join("bkt/ds/a.txt"), b"alpha").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &s3);
    let server = Server::start(&tmp.path().join("data"), Some(&config), db);
    let mine = project(&server, &s3, PROJECT, "bad-input").await;
    let other = project(&server, &s3, OTHER, "other-project").await;
    let dir = server.share_dir(&mine.share);
    fs::create_dir(dir.join("existing-dir")).unwrap();
    fs::write(dir.join("existing-file"), b"not a directory").unwrap();
    std::os::unix::fs::symlink("/", dir.join("link-to-root")).unwrap();
    let pair = server.admin("credential", PROJECT);
    let (ak, sk) = pair.split_once(' ').expect("AK SK");
    let (ak, sk) = (ak.to_string(), sk.to_string());
    let token = token_of(&mine.client);
    let other_token = token_of(&other.client);
    Fixture { server, s3, mine, other, token, other_token, ak, sk, _tmp: tmp }
}

impl Fixture {
    /// Everything a bad request must leave alone.
    async fn state(&self) -> String {
        let mut out = String::new();
        for p in [&self.mine, &self.other] {
            for path in [
                "/shares/detail".to_string(),
                format!("/shares/{}/targets", p.share),
                format!("/{}/hpc-cache/tasks", p.share),
                format!("/shares/{}/targets/{}/entries", p.share, p.target),
            ] {
                let a = p.client.get(&path).await;
                assert_eq!(a.status, 200, "{path}: {}", a.text);
                out.push_str(&format!("{path}: {}\n", a.text));
            }
        }
        out.push_str(&format!("shares: {:?}\n", snapshot(&self.server.data.join("shares"), true)));
        out.push_str(&format!("buckets: {:?}\n", snapshot(self.s3.root(), true)));
        out
    }

    fn host(&self) -> String {
        self.server.url.trim_start_matches("http://").to_string()
    }

    /// `rest` under `/v1/proj1/sfs-turbo`.
    fn p(&self, rest: &str) -> String {
        format!("/v1/{PROJECT}/sfs-turbo{rest}")
    }

    /// SDK-HMAC-SHA256 headers for a request signed at `date` with
    /// `X-Project-Id: project_header`.
    fn signed(
        &self,
        method: &str,
        full_path: &str,
        body: &[u8],
        date: &str,
        project_header: &str,
    ) -> Headers {
        let host = self.host();
        let (path, query) = full_path.split_once('?').unwrap_or((full_path, ""));
        let names = ["content-type", "host", "x-project-id", "x-sdk-date"];
        let headers = [
            ("content-type", JSON),
            ("host", host.as_str()),
            ("x-project-id", project_header),
            ("x-sdk-date", date),
        ];
        let signed = SignedRequest { method, path, query, headers: &headers, body };
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        let canonical = sdk_hmac::canonical_request(&signed, &names, &hash).unwrap();
        let signature = sdk_hmac::signature(&self.sk, &sdk_hmac::string_to_sign(date, &canonical));
        let authorization = format!(
            "SDK-HMAC-SHA256 Access={}, SignedHeaders={}, Signature={signature}",
            self.ak,
            names.join(";")
        );
        vec![
            ("Content-Type".into(), JSON.into()),
            ("X-Project-Id".into(), project_header.into()),
            ("X-Sdk-Date".into(), date.into()),
            ("Authorization".into(), authorization),
        ]
    }
}

type Headers = Vec<(String, String)>;

fn sdk_date(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_secs)).format("%Y%m%dT%H%M%SZ").to_string()
}

/// One bad request and the answer it must get.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Headers,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

/// The table: each method adds one case.
struct Cases<'a> {
    fx: &'a Fixture,
    list: Vec<Case>,
}

impl Cases<'_> {
    fn token(&self) -> Headers {
        vec![("X-Auth-Token".into(), self.fx.token.clone())]
    }

    /// With this project's token and a JSON body (`Value::Null`: no body).
    fn json(
        &mut self,
        name: &str,
        method: &'static str,
        rest: &str,
        body: Value,
        status: u16,
        code: &'static str,
    ) {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        self.raw(name, method, rest, Some(JSON), body, status, code);
    }

    /// With this project's token, any Content-Type and body bytes.
    #[allow(clippy::too_many_arguments)]
    fn raw(
        &mut self,
        name: &str,
        method: &'static str,
        rest: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        status: u16,
        code: &'static str,
    ) {
        let mut headers = self.token();
        if let Some(ct) = content_type {
            headers.push(("Content-Type".into(), ct.into()));
        }
        let path = self.fx.p(rest);
        self.list.push(Case { name: name.into(), method, path, headers, body, status, code });
    }

    /// Exactly these headers, on a full path.
    #[allow(clippy::too_many_arguments)]
    fn headers(
        &mut self,
        name: &str,
        method: &'static str,
        path: &str,
        headers: Headers,
        body: &[u8],
        status: u16,
        code: &'static str,
    ) {
        let (path, body) = (path.to_string(), body.to_vec());
        self.list.push(Case { name: name.into(), method, path, headers, body, status, code });
    }
}

fn hv(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn task_body(prefix: Value) -> Value {
    json!({"type": "import_metadata", "src_target": "data", "src_prefix": prefix, "dest_target": "data", "dest_prefix": prefix})
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

fn target_body(path: Value, endpoint: &str) -> Value {
    json!({"file_system_path": path, "obs": {"bucket": "bkt", "endpoint": endpoint}})
}

fn share_body(share: Value) -> Value {
    let mut base = json!({"name": "fresh-share", "share_proto": "NFS", "share_type": "STANDARD", "size": 10});
    for (k, v) in share.as_object().unwrap() {
        base[k] = v.clone();
    }
    json!({ "share": base })
}

/// `open` `depth` times over, never closed.
fn nested(open: &str, depth: usize) -> Vec<u8> {
    open.repeat(depth).into_bytes()
}

fn table(fx: &Fixture) -> Vec<Case> {
    let mut t = Cases { fx, list: Vec::new() };
    let (share, target, task, job) = (&fx.mine.share, &fx.mine.target, &fx.mine.task, &fx.mine.job);
    let ep = fx.s3.endpoint();
    let task_path = format!("/{share}/hpc-cache/task");
    let targets = format!("/shares/{share}/targets");
    let huge = "a".repeat(1 << 20);
    let long_prefix = "a".repeat(1025);

    // src_prefix
    for (name, prefix) in [
        ("../", json!("../")),
        ("a/../../etc", json!("a/../../etc")),
        ("/etc/passwd", json!("/etc/passwd")),
        ("..\\", json!("..\\")),
        ("./", json!("./")),
        (".hidden", json!(".hidden")),
        ("trailing.", json!("trailing.")),
        ("a//b", json!("a//b")),
        ("a/./b", json!("a/./b")),
        ("NUL", json!("a\u{0}b")),
        ("control \\x01", json!("a\u{1}b")),
        ("newline", json!("a\nb")),
        ("DEL", json!("a\u{7f}b")),
        ("1025 characters", json!(long_prefix)),
        ("empty", json!("")),
        ("null", json!(null)),
        ("number", json!(42)),
        ("array", json!(["a/"])),
    ] {
        t.json(&format!("src_prefix {name}"), "POST", &task_path, task_body(prefix), 400, PARAM);
    }
    let only_src =
        json!({"type": "import_metadata", "src_target": "data", "src_prefix": huge, "dest_target": "data"});
    t.json("src_prefix 1 MiB", "POST", &task_path, only_src, 400, PARAM);
    let good = || task_body(json!("a/"));
    let dir = "existing-dir";
    for (name, body) in [
        ("dest_prefix differs", with(good(), "dest_prefix", json!("b/"))),
        ("dest_target differs", with(good(), "dest_target", json!("x"))),
        ("src_target a plain directory", json!({"type": "import", "src_target": dir, "dest_target": dir})),
        ("src_target ..", json!({"type": "import", "src_target": "..", "dest_target": ".."})),
    ] {
        t.json(name, "POST", &task_path, body, 400, PARAM);
    }

    // Enum and number fields of a task.
    for ty in [json!("IMPORT"), json!("unknown"), json!(""), json!("import "), json!(null), json!(1)] {
        t.json(&format!("task type {ty}"), "POST", &task_path, with(good(), "type", ty), 400, PARAM);
    }
    for (key, value) in [
        ("file_mode", json!(778)),
        ("file_mode", json!(-1)),
        ("file_mode", json!("755")),
        ("file_mode", json!(7.5)),
        ("dir_mode", json!(800)),
        ("uid", json!(4294967295u64)),
        ("uid", json!(-1)),
        ("uid", json!(u64::MAX)),
        ("gid", json!("0")),
    ] {
        let body = with(good(), "attributes", json!({ key: value }));
        t.json(&format!("task attributes.{key} {value}"), "POST", &task_path, body, 400, PARAM);
    }

    // file_system_path
    for (name, path) in [
        (".", json!(".")),
        ("..", json!("..")),
        ("a/b", json!("a/b")),
        ("/abs", json!("/abs")),
        ("64 characters", json!("n".repeat(64))),
        ("empty", json!("")),
        ("NUL", json!("a\u{0}")),
        ("null", json!(null)),
        ("number", json!(7)),
    ] {
        t.json(&format!("file_system_path {name}"), "POST", &targets, target_body(path, &ep), 400, PARAM);
    }
    for name in ["existing-dir", "existing-file", "link-to-root", "data"] {
        let body = target_body(json!(name), &ep);
        t.json(&format!("file_system_path {name}"), "POST", &targets, body, 409, NAME_EXISTS);
    }

    // Endpoints not configured.
    let port = ep.rsplit(':').next().unwrap().to_string();
    for endpoint in [
        "127.0.0.1:5432".to_string(),
        "http://127.0.0.1:5432".to_string(),
        "http://169.254.169.254".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]:9000".to_string(),
        format!("http://[::1]:{port}"),
        "[::1]".to_string(),
        "file:///etc/passwd".to_string(),
        format!("http://user:pass@127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}@169.254.169.254"),
        "local".to_string(),
        "e".repeat(300),
        "a b".to_string(),
    ] {
        let name = format!("endpoint {}", &endpoint[..endpoint.len().min(40)]);
        t.json(&name, "POST", &targets, target_body(json!("newdir"), &endpoint), 400, PARAM);
    }
    for bucket in ["AB", "../x", "a", "bkt/../x", "192.168.0.1", "bkt\u{0}"] {
        let body = json!({"file_system_path": "newdir", "obs": {"bucket": bucket, "endpoint": ep}});
        t.json(&format!("bucket {bucket:?}"), "POST", &targets, body, 400, PARAM);
    }

    // Target attributes and policy, at creation and as updates.
    let attributes = format!("/shares/{share}/targets/{target}/attributes");
    let policy = format!("/shares/{share}/targets/{target}/policy");
    for (key, value) in [
        ("file_mode", json!(778)),
        ("file_mode", json!(-1)),
        ("file_mode", json!("755")),
        ("dir_mode", json!(1000)),
        ("uid", json!(4294967295u64)),
        ("gid", json!(-5)),
    ] {
        let body = json!({"file_system_path": "newdir", "obs": {"bucket": "bkt", "endpoint": ep, "attributes": { key: value.clone() }}});
        t.json(&format!("target attributes.{key} {value}"), "POST", &targets, body, 400, PARAM);
        let update = json!({"attributes": { key: value.clone() }});
        t.json(&format!("update attributes.{key} {value}"), "PUT", &attributes, update, 400, PARAM);
    }
    t.json("update attributes missing", "PUT", &attributes, json!({"uid": 5}), 400, PARAM);
    for (name, p) in [
        ("events not an array", json!({"auto_export_policy": {"events": "NEW"}})),
        ("event lower case", json!({"auto_export_policy": {"events": ["new"]}})),
        ("event unknown", json!({"auto_export_policy": {"events": ["NEW", "RENAMED"]}})),
        ("prefix NUL", json!({"auto_export_policy": {"prefix": "a\u{0}"}})),
        ("suffix number", json!({"auto_export_policy": {"suffix": 3}})),
        ("null", json!(null)),
    ] {
        t.json(&format!("policy {name}"), "PUT", &policy, json!({ "policy": p }), 400, PARAM);
    }

    // Shares: enum and number fields.
    for (name, share_fields) in [
        ("name too short", json!({"name": "ab"})),
        ("name starts with a digit", json!({"name": "1abc"})),
        ("name 65 characters", json!({"name": "a".repeat(65)})),
        ("name with SQL", json!({"name": "x'; DROP TABLE hpc_shares;--"})),
        ("name null", json!({"name": null})),
        ("share_proto CIFS", json!({"share_proto": "CIFS"})),
        ("share_type unknown", json!({"share_type": "standard"})),
        ("size 0", json!({"size": 0})),
        ("size -1", json!({"size": -1})),
        ("size string", json!({"size": "100"})),
        ("size 1.5", json!({"size": 1.5})),
        ("size 2^63-1", json!({"size": i64::MAX})),
        ("size 2^64-1", json!({"size": u64::MAX})),
        ("metadata not an object", json!({"metadata": "x"})),
        ("description 300 bytes", json!({"description": "d".repeat(300)})),
    ] {
        t.json(&format!("share {name}"), "POST", "/shares", share_body(share_fields), 400, PARAM);
    }
    t.json("share missing", "POST", "/shares", json!({"name": "fresh-share"}), 400, PARAM);
    let action = format!("/shares/{share}/action");
    for (name, body) in [
        ("extend smaller", json!({"extend": {"new_size": 5}})),
        ("extend string", json!({"extend": {"new_size": "200"}})),
        ("extend -1", json!({"extend": {"new_size": -1}})),
        ("extend 2^63", json!({"extend": {"new_size": 9223372036854775808u64}})),
        ("extend not an object", json!({"extend": 20})),
        ("rename too short", json!({"change_name": {"name": "a"}})),
        ("rename NUL", json!({"change_name": {"name": "abcd\u{0}"}})),
        ("no action", json!({"resize": {"new_size": 20}})),
    ] {
        t.json(&format!("action {name}"), "POST", &action, body, 400, PARAM);
    }
    let share_path = format!("/shares/{share}");
    for (name, body) in [
        ("action unknown", json!({"action": "config_gc", "gc_time": 24})),
        ("action missing", json!({"gc_time": 24})),
        ("gc_time 0", json!({"action": "config_gc_time", "gc_time": 0})),
        ("gc_time 100000001", json!({"action": "config_gc_time", "gc_time": 100_000_001})),
        ("gc_time -1", json!({"action": "config_gc_time", "gc_time": -1})),
        ("gc_time string", json!({"action": "config_gc_time", "gc_time": "24"})),
    ] {
        t.json(&format!("update {name}"), "PUT", &share_path, body, 400, PARAM);
    }

    // limit / offset and filters, SQL metacharacters included.
    let tasks = format!("/{share}/hpc-cache/tasks");
    let entries = format!("/shares/{share}/targets/{target}/entries");
    for list in ["/shares/detail", tasks.as_str()] {
        for q in [
            "limit=0",
            "limit=-1",
            "limit=1001",
            "limit=9223372036854775808",
            "limit=ten",
            "limit=",
            "limit=1&limit=2",
            "offset=-1",
            "offset=9223372036854775808",
            "offset=18446744073709551616",
            "offset=1;DROP%20TABLE%20hpc_shares",
            "offset=0%20OR%201=1",
        ] {
            t.json(&format!("{list}?{q}"), "GET", &format!("{list}?{q}"), Value::Null, 400, PARAM);
        }
        let q = "offset=9223372036854775807";
        t.json(&format!("{list}?{q} (empty page)"), "GET", &format!("{list}?{q}"), Value::Null, 200, OK);
    }
    for q in [
        "type=IMPORT",
        "type=bogus",
        "type=import'%20OR%20'1'='1",
        "status=doing",
        "status=DOING'--",
        "status=DOING%00",
        "start_time=2024-01-01",
        "start_time=2024-01-01T00:00:00'%20OR%201=1--",
        "end_time=x",
        "start_time=2024-01-02T00:00:00&end_time=2024-01-01T00:00:00",
    ] {
        t.json(&format!("tasks?{q}"), "GET", &format!("{tasks}?{q}"), Value::Null, 400, PARAM);
    }
    let long_marker = "m".repeat(10 * 1024);
    for q in [
        "limit=0".to_string(),
        "limit=1001".to_string(),
        "marker='%20OR%20'1'='1".to_string(),
        "marker=not-a-target-of-this-share".to_string(),
        format!("marker={}", fx.other.target),
        format!("marker={long_marker}"),
    ] {
        let name = format!("targets?{}", &q[..q.len().min(40)]);
        t.json(&name, "GET", &format!("{targets}?{q}"), Value::Null, 400, PARAM);
    }
    for q in [
        "dir=../x",
        "dir=/etc/..",
        "dir=a//b",
        "dir=a%00b",
        "after=a%00b",
        "after=../x",
        "limit=0",
        "limit=-1",
    ] {
        t.json(&format!("entries?{q}"), "GET", &format!("{entries}?{q}"), Value::Null, 400, PARAM);
    }
    // A free-text filter holding SQL is just a name that matches nothing.
    let q = "dir=x'%20OR%20'1'='1";
    t.json(&format!("entries?{q} (no match)"), "GET", &format!("{entries}?{q}"), Value::Null, 200, OK);
    let target_path = format!("/shares/{share}/targets/{target}");
    for v in ["yes", "TRUE", "1", ""] {
        let path = format!("{target_path}?delete_data_in_file_system={v}");
        t.json(&format!("delete target, delete_data…={v}"), "DELETE", &path, Value::Null, 400, PARAM);
    }

    // Ids: another project's, not UUIDs, 10 KB, with ..%2f, not UTF-8, NUL.
    let big = "i".repeat(10 * 1024);
    let ids: Vec<(&str, String, u16, &'static str)> = vec![
        ("non-UUID", "not-a-uuid".into(), 0, ""),
        ("10 KB", big.clone(), 0, ""),
        ("..%2f", "..%2f..%2f..%2fetc".into(), 0, ""),
        ("%2e%2e", "%2e%2e".into(), 0, ""),
        ("NUL", "a%00b".into(), 0, ""),
        ("not UTF-8", "%ff%fe".into(), 400, PARAM),
    ];
    let valid_gc = json!({"action": "config_gc_time", "gc_time": 24});
    let valid_task = task_body(json!("ds/"));
    let valid_target = target_body(json!("newdir"), &ep);
    let share_routes = |id: &str| -> Vec<(&'static str, String, Value)> {
        vec![
            ("GET", format!("/shares/{id}"), Value::Null),
            ("DELETE", format!("/shares/{id}"), Value::Null),
            ("PUT", format!("/shares/{id}"), valid_gc.clone()),
            ("POST", format!("/shares/{id}/action"), json!({"change_name": {"name": "renamed"}})),
            ("GET", format!("/shares/{id}/targets"), Value::Null),
            ("POST", format!("/shares/{id}/targets"), valid_target.clone()),
            ("GET", format!("/{id}/hpc-cache/tasks"), Value::Null),
            ("POST", format!("/{id}/hpc-cache/task"), valid_task.clone()),
            ("GET", format!("/{id}/hpc-cache/task/{task}"), Value::Null),
            ("GET", format!("/shares/{id}/targets/{target}"), Value::Null),
        ]
    };
    let target_routes = |id: &str| -> Vec<(&'static str, String, Value)> {
        vec![
            ("GET", format!("/shares/{share}/targets/{id}"), Value::Null),
            ("DELETE", format!("/shares/{share}/targets/{id}"), Value::Null),
            ("PUT", format!("/shares/{share}/targets/{id}/attributes"), json!({"attributes": {"uid": 1}})),
            ("PUT", format!("/shares/{share}/targets/{id}/policy"), json!({"policy": {}})),
            ("GET", format!("/shares/{share}/targets/{id}/entries"), Value::Null),
        ]
    };
    let task_routes = |id: &str| -> Vec<(&'static str, String, Value)> {
        vec![
            ("GET", format!("/{share}/hpc-cache/task/{id}"), Value::Null),
            ("DELETE", format!("/{share}/hpc-cache/task/{id}"), Value::Null),
            ("GET", format!("/{share}/hpc-cache/task/{id}/failures"), Value::Null),
        ]
    };
    let mut id_cases = ids.clone();
    id_cases.push(("another project's", String::new(), 0, ""));
    for (kind, id, status, code) in &id_cases {
        let other = id.is_empty();
        let pick = |mine: &str| if other { mine.to_string() } else { id.clone() };
        let bad = |default: (u16, &'static str)| if *status != 0 { (*status, *code) } else { default };
        for (method, path, body) in share_routes(&pick(&fx.other.share)) {
            let (s, c) = bad((404, NOT_FOUND));
            t.json(&format!("{kind} share id: {method} {}", trim(&path)), method, &path, body, s, c);
        }
        for (method, path, body) in target_routes(&pick(&fx.other.target)) {
            let (s, c) = bad((404, NOT_FOUND));
            t.json(&format!("{kind} target id: {method} {}", trim(&path)), method, &path, body, s, c);
        }
        for (method, path, body) in task_routes(&pick(&fx.other.task)) {
            let (s, c) = bad((400, INVALID_TASK));
            t.json(&format!("{kind} task id: {method} {}", trim(&path)), method, &path, body, s, c);
        }
        let path = format!("/jobs/{}", pick(&fx.other.job));
        let (s, c) = bad((404, INVALID_JOB));
        t.json(&format!("{kind} job id: GET {}", trim(&path)), "GET", &path, Value::Null, s, c);
    }
    // The other project's token on its own paths, naming this project's ids.
    let o = fx.other_token.clone();
    let op = |rest: &str| format!("/v1/{OTHER}/sfs-turbo{rest}");
    for (method, rest, s, c) in [
        ("GET", format!("/shares/{share}"), 404, NOT_FOUND),
        ("DELETE", format!("/shares/{share}"), 404, NOT_FOUND),
        ("GET", format!("/shares/{share}/targets/{target}"), 404, NOT_FOUND),
        ("GET", format!("/{share}/hpc-cache/task/{task}"), 404, NOT_FOUND),
        ("GET", format!("/{}/hpc-cache/task/{task}", fx.other.share), 400, INVALID_TASK),
        ("DELETE", format!("/{}/hpc-cache/task/{task}", fx.other.share), 400, INVALID_TASK),
        ("GET", format!("/shares/{}/targets/{target}", fx.other.share), 404, NOT_FOUND),
        ("GET", format!("/jobs/{job}"), 404, INVALID_JOB),
    ] {
        let (name, headers) =
            (format!("other project reads ours: {method} {rest}"), hv(&[("X-Auth-Token", &o)]));
        t.headers(&name, method, &op(&rest), headers, b"", s, c);
    }

    // Headers.
    let list = fx.p("/shares/detail");
    let tok = fx.token.clone();
    let now = sdk_date(0);
    for (name, headers, s, c) in [
        ("no credentials", hv(&[]), 401, UNAUTH),
        ("blank X-Auth-Token", hv(&[("X-Auth-Token", "")]), 401, UNAUTH),
        ("spaces X-Auth-Token", hv(&[("X-Auth-Token", "   ")]), 401, UNAUTH),
        ("unknown X-Auth-Token", hv(&[("X-Auth-Token", "0123456789abcdef")]), 401, UNAUTH),
        ("10 KB X-Auth-Token", vec![("X-Auth-Token".into(), "t".repeat(10 * 1024))], 401, UNAUTH),
        ("duplicated X-Auth-Token", hv(&[("X-Auth-Token", &tok), ("X-Auth-Token", &tok)]), 401, UNAUTH),
        ("X-Auth-Token then junk", hv(&[("X-Auth-Token", &tok), ("X-Auth-Token", "junk")]), 401, UNAUTH),
        ("junk then X-Auth-Token", hv(&[("X-Auth-Token", "junk"), ("X-Auth-Token", &tok)]), 401, UNAUTH),
        ("X-Auth-Token of another project", hv(&[("X-Auth-Token", &o)]), 403, FORBIDDEN),
        (
            "X-Auth-Token, X-Project-Id of another",
            hv(&[("X-Auth-Token", &tok), ("X-Project-Id", OTHER)]),
            403,
            FORBIDDEN,
        ),
        (
            "X-Auth-Token, blank X-Project-Id",
            hv(&[("X-Auth-Token", &tok), ("X-Project-Id", "")]),
            403,
            FORBIDDEN,
        ),
        ("Authorization Bearer", hv(&[("Authorization", "Bearer abc")]), 401, UNAUTH),
        ("Authorization blank", hv(&[("Authorization", "")]), 401, UNAUTH),
        ("Authorization scheme only", hv(&[("Authorization", "SDK-HMAC-SHA256")]), 401, UNAUTH),
        (
            "Authorization Access only",
            hv(&[("Authorization", "SDK-HMAC-SHA256 Access=AK"), ("X-Sdk-Date", &now)]),
            401,
            UNAUTH,
        ),
        (
            "Authorization short signature",
            hv(&[
                ("Authorization", "SDK-HMAC-SHA256 Access=AK, SignedHeaders=host, Signature=abc"),
                ("X-Sdk-Date", &now),
            ]),
            401,
            UNAUTH,
        ),
        (
            "Authorization unknown field",
            hv(&[
                ("Authorization", "SDK-HMAC-SHA256 Access=AK, Credential=x, Signature=00"),
                ("X-Sdk-Date", &now),
            ]),
            401,
            UNAUTH,
        ),
        (
            "Authorization unknown access key",
            hv(&[
                (
                    "Authorization",
                    &format!(
                        "SDK-HMAC-SHA256 Access=NOPE, SignedHeaders=x-sdk-date, Signature={}",
                        "0".repeat(64)
                    ),
                ),
                ("X-Sdk-Date", &now),
            ]),
            401,
            UNAUTH,
        ),
    ] {
        t.headers(&format!("header: {name}"), "GET", &list, headers, b"", s, c);
    }
    let signed = |offset: i64, project: &str| fx.signed("GET", &list, b"", &sdk_date(offset), project);
    let mut twice = signed(0, PROJECT);
    let auth = twice.iter().find(|(k, _)| k == "Authorization").unwrap().clone();
    twice.push(auth);
    let mut bad_date = signed(0, PROJECT);
    bad_date
        .iter_mut()
        .filter(|(k, _)| k == "X-Sdk-Date")
        .for_each(|(_, v)| *v = "2026-01-01T00:00:00Z".into());
    let mut no_date = signed(0, PROJECT);
    no_date.retain(|(k, _)| k != "X-Sdk-Date");
    let mut wrong_hash = signed(0, PROJECT);
    wrong_hash.push(("X-Sdk-Content-Sha256".into(), "0".repeat(64)));
    for (name, headers, s, c) in [
        ("X-Sdk-Date 16 minutes behind", signed(-16 * 60, PROJECT), 401, UNAUTH),
        ("X-Sdk-Date 16 minutes ahead", signed(16 * 60, PROJECT), 401, UNAUTH),
        ("X-Sdk-Date malformed", bad_date, 401, UNAUTH),
        ("X-Sdk-Date missing", no_date, 401, UNAUTH),
        ("Authorization duplicated", twice, 401, UNAUTH),
        ("X-Sdk-Content-Sha256 not the body's", wrong_hash, 401, UNAUTH),
        ("X-Project-Id of another project", signed(0, OTHER), 403, FORBIDDEN),
    ] {
        t.headers(&format!("header: {name}"), "GET", &list, headers, b"", s, c);
    }
    let other_path = format!("/v1/{OTHER}/sfs-turbo/shares/detail");
    let headers = fx.signed("GET", &other_path, b"", &sdk_date(0), OTHER);
    t.headers("header: signed for another project's path", "GET", &other_path, headers, b"", 403, FORBIDDEN);
    let headers = fx.signed("GET", &other_path, b"", &sdk_date(0), PROJECT);
    t.headers("header: own X-Project-Id, another path", "GET", &other_path, headers, b"", 403, FORBIDDEN);
    let create = fx.p(&task_path);
    let signed_body = task_body(json!("ds/")).to_string().into_bytes();
    let changed = task_body(json!("ds/a")).to_string().into_bytes();
    let headers = fx.signed("POST", &create, &signed_body, &sdk_date(0), PROJECT);
    t.headers("header: body changed after signing", "POST", &create, headers, &changed, 401, UNAUTH);
    // The body limits and checks are the same whichever way a request is signed.
    let body = json!({"type": "import", "src_target": "data", "src_prefix": huge, "dest_target": "data"});
    let body = body.to_string().into_bytes();
    let headers = fx.signed("POST", &create, &body, &sdk_date(0), PROJECT);
    t.headers("signed: src_prefix 1 MiB", "POST", &create, headers, &body, 400, PARAM);
    let body = vec![b' '; 20 << 20];
    let headers = fx.signed("POST", &create, &body, &sdk_date(0), PROJECT);
    t.headers("signed: 20 MB body", "POST", &create, headers, &body, 413, PARAM);

    // Bodies.
    let valid = task_body(json!("ds/")).to_string().into_bytes();
    for (name, ct, body, s) in [
        ("invalid JSON", Some(JSON), b"{\"type\":".to_vec(), 400),
        ("trailing garbage", Some(JSON), b"{} x".to_vec(), 400),
        ("empty", Some(JSON), Vec::new(), 400),
        ("array", Some(JSON), b"[]".to_vec(), 400),
        ("string", Some(JSON), b"\"import\"".to_vec(), 400),
        ("null", Some(JSON), b"null".to_vec(), 400),
        ("not UTF-8", Some(JSON), b"{\"type\":\"\xff\xfe\"}".to_vec(), 400),
        ("deeply nested arrays", Some(JSON), nested("[", 100_000), 400),
        ("deeply nested objects", Some(JSON), nested("{\"a\":", 100_000), 400),
        (
            "nested 200 deep, closed",
            Some(JSON),
            format!("[{}1{}]", "[".repeat(200), "]".repeat(200)).into_bytes(),
            400,
        ),
        ("20 MB", Some(JSON), vec![b' '; 20 << 20], 413),
        ("20 MB of JSON", Some(JSON), format!("{{\"pad\":\"{}\"}}", "x".repeat(20 << 20)).into_bytes(), 413),
        ("Content-Type text/plain", Some("text/plain"), valid.clone(), 415),
        ("Content-Type form", Some("application/x-www-form-urlencoded"), valid.clone(), 415),
        ("Content-Type xml", Some("application/xml"), valid.clone(), 415),
        ("Content-Type json-patch", Some("application/json-patch+json"), valid.clone(), 415),
        ("Content-Type jsonx", Some("application/jsonx"), valid.clone(), 415),
        ("no Content-Type, invalid JSON", None, b"{".to_vec(), 400),
    ] {
        t.raw(&format!("body {name}"), "POST", &task_path, ct, body, s, PARAM);
    }
    let extra =
        json!({"type": "IMPORT", "src_target": "data", "dest_target": "data", "evil": {"$where": "1"}});
    t.json("body extra fields do not rescue a bad body", "POST", &task_path, extra, 400, PARAM);
    for (key, value) in [
        ("status", json!("SUCCESS")),
        ("task_id", json!("00000000-0000-0000-0000-000000000000")),
        ("start_time", json!("2020-01-01T00:00:00")),
        ("end_time", json!("2020-01-01T00:00:00")),
        ("message", json!("done")),
        ("progress", json!({"done_files": 1})),
    ] {
        let body = with(task_body(json!("ds/")), key, value);
        t.json(&format!("task read-only {key}"), "POST", &task_path, body, 400, PARAM);
    }
    for (key, value) in [
        ("lifecycle", json!("AVAILABLE")),
        ("target_id", json!("00000000-0000-0000-0000-000000000000")),
        ("creation_time", json!("2020-01-01T00:00:00")),
        ("failure_details", json!({"message": "x"})),
    ] {
        let body = with(target_body(json!("newdir"), &ep), key, value);
        t.json(&format!("target read-only {key}"), "POST", &targets, body, 400, PARAM);
    }
    for (key, value) in
        [("status", json!("200")), ("id", json!("x")), ("created_at", json!("2020-01-01T00:00:00"))]
    {
        let body = share_body(json!({ key: value }));
        t.json(&format!("share read-only {key}"), "POST", "/shares", body, 400, PARAM);
    }
    // Unknown fields are ignored (API.md): an update to the value it already has, plus junk.
    let same = json!({"action": "config_gc_time", "gc_time": 24, "evil": {"status": "400"}, "id": "x"});
    t.json("body extra fields ignored", "PUT", &share_path, same, 200, OK);

    // Raw paths: dot segments are not resolved, and name no route.
    let th = hv(&[("X-Auth-Token", &tok)]);
    for (name, path, s, c) in [
        (
            "up and over",
            format!("/v1/{PROJECT}/sfs-turbo/../../v1/{OTHER}/sfs-turbo/shares/detail"),
            404,
            NOT_FOUND,
        ),
        ("over and back", format!("/v1/{OTHER}/../{PROJECT}/sfs-turbo/shares/detail"), 403, FORBIDDEN),
        (
            "%2f in the project",
            format!("/v1/{PROJECT}%2f..%2f{OTHER}/sfs-turbo/shares/detail"),
            403,
            FORBIDDEN,
        ),
        ("project not UTF-8", "/v1/%ff/sfs-turbo/shares/detail".to_string(), 404, NOT_FOUND),
        ("dot segment id", format!("/v1/{PROJECT}/sfs-turbo/shares/./{share}"), 404, NOT_FOUND),
    ] {
        t.headers(&format!("path: {name}"), "GET", &path, th.clone(), b"", s, c);
    }

    // Routes and methods.
    t.json("unknown route", "GET", "/nope", Value::Null, 404, NOT_FOUND);
    t.json("method not allowed", "PATCH", &share_path, json!({}), 405, PARAM);
    t.list
}

fn trim(path: &str) -> String {
    if path.len() > 60 {
        format!("{}…", &path[..60])
    } else {
        path.to_string()
    }
}

/// One HTTP/1.1 exchange on a fresh connection, written by hand: nothing is
/// normalized on the way (repeated headers, `..` and `%2e%2e` in paths), and
/// the answer is read even when the server answers a large body before
/// reading it all (a client that insists on writing first sees a broken pipe).
async fn send(addr: &str, c: &Case) -> Result<Answer, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n", c.method, c.path);
    if !c.body.is_empty() || matches!(c.method, "POST" | "PUT") {
        head.push_str(&format!("Content-Length: {}\r\n", c.body.len()));
    }
    for (k, v) in &c.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let body = c.body.clone();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_ok() {
            let _ = wr.write_all(&body).await;
        }
        wr
    });
    let mut raw = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after the answer: the server closed with our body unread.
                Err(_) if !raw.is_empty() => return Ok(()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .map_err(|_| "no answer within 30 s".to_string())??;
    writer.abort();
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let eol = rest[at..].windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")? + at;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[at..eol]).trim(), 16)
                .map_err(|e| format!("bad chunk size: {e}"))?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            at = eol + 2 + size + 2;
        }
        rest = body;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.truncate(len);
    }
    let text = String::from_utf8_lossy(&rest).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer { status, body, request_id: header("x-request-id"), text })
}

/// What is wrong with the answer to `c`, if anything.
fn verdict(c: &Case, a: &Answer) -> Option<String> {
    let short: String = a.text.chars().take(300).collect();
    if a.status >= 500 {
        return Some(format!("server error {}: {short}", a.status));
    }
    if a.request_id.as_deref().is_none_or(str::is_empty) {
        return Some("no X-Request-Id".into());
    }
    if c.code.is_empty() {
        return (a.status != c.status).then(|| format!("want {}, got {}: {short}", c.status, a.status));
    }
    let code = a.body["errCode"].as_str().unwrap_or("");
    if (a.status, code) != (c.status, c.code) {
        return Some(format!("want {} {}, got {} {code:?}: {short}", c.status, c.code, a.status));
    }
    if a.body["error_code"] != a.body["errCode"] || a.body["error_msg"] != a.body["errMsg"] {
        return Some(format!("the two spellings differ: {short}"));
    }
    if a.body["errMsg"].as_str().is_none_or(str::is_empty) {
        return Some(format!("no message: {short}"));
    }
    if a.text.len() > MAX_ERROR_TEXT {
        return Some(format!("{}-byte answer (echoes the input?): {short}", a.text.len()));
    }
    None
}

/// Every case of the table, checked to change nothing: after each case on
/// SQLite (so that a failure names its case), once at the end on PostgreSQL
/// (which keeps the second run short), and once more after a pause for
/// changes a background job would make late.
async fn bad_inputs(db: Db) {
    let fx = fixture(&db).await;
    let cases = table(&fx);
    let addr = fx.host();
    let every_case = matches!(db, Db::Sqlite);
    let start = fx.state().await;
    let mut before = start.clone();
    let mut failures = Vec::new();
    for c in &cases {
        match send(&addr, c).await {
            Ok(a) => {
                if let Some(why) = verdict(c, &a) {
                    failures.push(format!("{}: {why}", c.name));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", c.name)),
        }
        if every_case {
            let after = fx.state().await;
            if after != before {
                failures.push(format!("{}: changed something:\n{}", c.name, diff(&before, &after)));
                before = after;
            }
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let end = fx.state().await;
    if end != before {
        failures.push(format!("the table changed something:\n{}", diff(&start, &end)));
    }
    assert!(
        failures.is_empty(),
        "{:?}: {} of {} cases failed:\n{}",
        db,
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn diff(before: &str, after: &str) -> String {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for (i, (x, y)) in b.iter().zip(&a).enumerate() {
        if x != y {
            let cut = |s: &str| s.chars().take(400).collect::<String>();
            out.push_str(&format!("  line {i}\n  - {}\n  + {}\n", cut(x), cut(y)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_get_4xx_and_change_nothing() {
    for db in Db::all("bad").await {
        bad_inputs(db).await;
    }
}

/// The snapshot without the entries under `prefix`.
fn without(snap: common::Snapshot, prefix: &str) -> common::Snapshot {
    snap.into_iter().filter(|(k, _)| k != prefix && !k.starts_with(&format!("{prefix}/"))).collect()
}

/// Object keys a bucket on a file system can hold that a careless importer
/// would mishandle: each ends up at its own name under the target or in the
/// failure report, and nothing outside the target directory changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_keys_stay_inside_the_target() {
    for db in Db::all("keys").await {
        hostile_keys(db).await;
    }
}

async fn hostile_keys(db: Db) {
    let s3 = S3Server::start(&["hostile"]).await;
    let deep: Vec<String> = (0..15).map(|i| format!("{i:02}{}", "d".repeat(240))).collect();
    let deep_key = format!("{}/leaf", deep.join("/"));
    // Not here: a key with '\r', which reaches ferry as '\n' because s3s-fs
    // writes it raw into the listing XML, and XML parsers turn a raw CR into LF.
    let keys: Vec<String> = [
        "ok/plain.txt",
        "ctl/a\u{1}b",
        "ctl/new\nline",
        "ctl/tab\there",
        "ctl/del\u{7f}",
        "ctl/esc\u{1b}[31m",
        "ctl/c1\u{85}next",
        "seed/back\\slash",
        "seed/..\\up",
        "seed/a:b*c?d\"e<f>g|h",
        "dots/.hidden",
        "dots/..x",
        "dots/trailing.",
        "dots/...",
        "dots/%2e%2e%2f",
        "dots/%2e%2e/x",
        " lead/trail ",
        "nfc/caf\u{e9}",
        "nfc/cafe\u{301}",
        ".ferry-tmp.planted",
        "esc/inner/file.txt",
        "esc/file.txt",
        "escfile/x",
    ]
    .iter()
    .map(|k| k.to_string())
    .chain([format!("long/{}", "c".repeat(255)), deep_key.clone()])
    .collect();
    let bucket = s3.root().join("hostile");
    for key in &keys {
        let path = bucket.join(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, key.as_bytes()).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("sentinel"), b"must stay").unwrap();
    let config = write_config(tmp.path(), &s3);
    let server = Server::start(&tmp.path().join("data"), Some(&config), &db);
    let c = server.token(PROJECT);
    let (share, _) = create_share(&c, "hostile-keys").await;
    let target = link_target(&c, &share, "t", &s3.endpoint(), "hostile").await;
    let share_dir = server.share_dir(&share);
    let tdir = share_dir.join("t");
    // Users write in the share: symlinks out of it, where keys want directories.
    std::os::unix::fs::symlink(&outside, tdir.join("esc")).unwrap();
    std::os::unix::fs::symlink(outside.join("sentinel"), tdir.join("escfile")).unwrap();
    let outside_before = snapshot(&outside, true);
    let bucket_before = snapshot(&bucket, true);
    let share_before = without(snapshot(&share_dir, true), "t");

    // Prefixes are never percent-decoded: `%2e%2e%2f` is a literal name.
    for (kind, prefix) in [
        ("import_metadata", Some("%2e%2e%2f")),
        ("import_metadata", Some("dots/%2e%2e/")),
        ("import_metadata", None),
        ("import", None),
        ("import_metadata", Some("esc/")),
    ] {
        let t = c.run_task(&share, kind, "t", prefix).await;
        let status = t["status"].as_str().unwrap_or("");
        assert!(status == "SUCCESS" || status == "FAIL", "{kind} {prefix:?}: {t}");
        let id = t["task_id"].as_str().unwrap();
        let report = c.get(&format!("/{share}/hpc-cache/task/{id}/failures")).await;
        assert_eq!(report.status, 200, "{}", report.text);
        let failed = report_paths(&report.text);
        let listed = c.get(&format!("/shares/{share}/targets/{target}/entries")).await;
        assert_eq!(listed.status, 200, "{}", listed.text);
        let indexed: Vec<&str> =
            listed.body["entries"].as_array().unwrap().iter().filter_map(|e| e["path"].as_str()).collect();
        let wanted = keys.iter().filter(|k| prefix.is_none_or(|p| k.starts_with(p)));
        for key in wanted {
            let escapes = key.starts_with("esc");
            if escapes {
                assert!(
                    failed.contains(key),
                    "{kind}: {key:?} goes through a symlink: must fail; report {failed:?}"
                );
                assert!(!indexed.contains(&key.as_str()), "{kind}: {key:?} indexed through a symlink");
            } else {
                assert!(
                    indexed.contains(&key.as_str()) || failed.contains(key),
                    "{kind}: {key:?} neither imported nor reported; report {failed:?}, index {indexed:?}"
                );
            }
        }
        assert_eq!(snapshot(&outside, true), outside_before, "{kind}: wrote outside the share");
        assert_eq!(snapshot(&bucket, true), bucket_before, "{kind}: an import wrote to the bucket");
        assert_eq!(
            without(snapshot(&share_dir, true), "t"),
            share_before,
            "{kind}: wrote outside the target"
        );
        for (path, (kind_char, ..)) in snapshot(&tdir, true) {
            let link = path == "esc" || path == "escfile";
            assert!(kind_char == 'd' || link, "imports create directories only, found {path:?}");
        }
    }
    // Every directory created is one a key asked for.
    for (path, _) in snapshot(&tdir, true) {
        let wanted = keys.iter().any(|k| k.starts_with(&format!("{path}/")));
        assert!(wanted || path == "esc" || path == "escfile", "unexpected {path:?} in the target");
    }

    // Preload and export under a prefix with '%' touch that literal prefix only.
    let t = c.run_task(&share, "preload", "t", Some("dots/%2e%2e/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let files: Vec<String> =
        snapshot(&tdir, false).into_iter().filter(|(_, v)| v.0 == 'f').map(|(k, _)| k).collect();
    assert_eq!(files, ["dots/%2e%2e/x"], "preload fetched only the literal prefix");
    fs::write(tdir.join("dots/%2e%2e/x"), b"changed in the share").unwrap();
    let t = c.run_task(&share, "export", "t", Some("dots/%2e%2e/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let mut expected = bucket_before.clone();
    let key = "dots/%2e%2e/x".to_string();
    let after = snapshot(&bucket, true);
    assert_eq!(after[&key].1, b"changed in the share");
    expected.insert(key.clone(), after[&key].clone());
    assert_eq!(after.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "export wrote one key");
    assert_eq!(after, expected, "export changed only the literal key");
    let bucket_before = after;
    assert_eq!(snapshot(&outside, true), outside_before);

    // The target directory swapped for a symlink out of the share: no task
    // may run through it, and deleting the target with its data removes the
    // link, not what it points to.
    let victim = link_target(&c, &share, "victim", &s3.endpoint(), "hostile").await;
    fs::remove_dir(share_dir.join("victim")).unwrap();
    std::os::unix::fs::symlink(&outside, share_dir.join("victim")).unwrap();
    for kind in ["import_metadata", "import", "preload", "export"] {
        let body = json!({"type": kind, "src_target": "victim", "dest_target": "victim"});
        let a = c.call("POST", &format!("/{share}/hpc-cache/task"), Some(&body)).await;
        assert_eq!((a.status, a.code()), (400, PARAM), "{kind}: {}", a.text);
        assert!(a.body["errMsg"].as_str().unwrap().contains("src_target"), "{}", a.text);
    }
    fs::remove_file(share_dir.join("victim")).unwrap();
    fs::write(share_dir.join("victim"), b"a file now").unwrap();
    let body = json!({"type": "export", "src_target": "victim", "dest_target": "victim"});
    let a = c.call("POST", &format!("/{share}/hpc-cache/task"), Some(&body)).await;
    assert_eq!((a.status, a.code()), (400, PARAM), "{}", a.text);
    fs::remove_file(share_dir.join("victim")).unwrap();
    std::os::unix::fs::symlink(&outside, share_dir.join("victim")).unwrap();
    let a = c
        .call("DELETE", &format!("/shares/{share}/targets/{victim}?delete_data_in_file_system=true"), None)
        .await;
    assert_eq!(a.status, 202, "{}", a.text);
    let job = a.body["job_id"].as_str().unwrap();
    let j = c.poll(&format!("/jobs/{job}"), |b| b["status"] == "success" || b["status"] == "failed").await;
    assert_eq!(j["status"], "success", "{j}");
    assert!(fs::symlink_metadata(share_dir.join("victim")).is_err(), "the link is gone");
    assert_eq!(snapshot(&outside, true), outside_before, "deleted through the link");
    assert_eq!(snapshot(&bucket, true), bucket_before);
}
