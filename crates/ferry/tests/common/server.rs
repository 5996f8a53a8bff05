//! A `ferry serve` child process and an HTTP client that speaks both auth methods.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::auth::sdk_hmac::{self, SignedRequest};
use serde_json::Value;

/// Which database a test runs on.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite,
    /// A fresh schema of the test PostgreSQL server.
    Postgres(String),
}

impl Db {
    /// SQLite always; PostgreSQL too when `FERRY_TEST_POSTGRES_URL` is set.
    pub async fn all(tag: &str) -> Vec<Db> {
        let mut out = vec![Db::Sqlite];
        if let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") {
            out.push(Db::Postgres(fresh_pg_schema(&url, tag).await));
        }
        out
    }

    pub fn url(&self) -> Option<&str> {
        match self {
            Db::Sqlite => None,
            Db::Postgres(u) => Some(u),
        }
    }
}

/// A schema of its own for one test, so that test processes never share rows.
async fn fresh_pg_schema(url: &str, tag: &str) -> String {
    let schema = format!("t_{}_{}_{:08x}", tag, std::process::id(), rand::random::<u32>());
    exec_pg(url, &format!("CREATE SCHEMA {schema}")).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// Run one statement.
async fn exec_pg(url: &str, sql: &str) {
    use sqlx::Executor;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to PostgreSQL");
    pool.execute(sql).await.expect("create schema");
    pool.close().await;
}

/// A running `ferry serve`.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
    pub db: Db,
    pub banner: String,
    envs: Vec<(String, String)>,
    serve_args: Vec<String>,
}

impl Server {
    pub fn start(data: &Path, config: Option<&Path>, db: &Db) -> Server {
        Self::start_with_env(data, config, db, &[])
    }

    pub fn start_with_env(data: &Path, config: Option<&Path>, db: &Db, envs: &[(&str, &str)]) -> Server {
        let envs = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::launch(data, config, db, envs, Vec::new())
    }

    /// `ferry serve --no-workers`: the API alone; tasks wait for a
    /// [`Server::worker`].
    pub fn start_api_only(data: &Path, config: Option<&Path>, db: &Db) -> Server {
        Self::launch(data, config, db, Vec::new(), vec!["--no-workers".into()])
    }

    fn launch(
        data: &Path,
        config: Option<&Path>,
        db: &Db,
        envs: Vec<(String, String)>,
        serve_args: Vec<String>,
    ) -> Server {
        let mut s = Server {
            child: None,
            url: String::new(),
            data: data.to_path_buf(),
            config: config.map(Path::to_path_buf),
            db: db.clone(),
            banner: String::new(),
            envs,
            serve_args,
        };
        s.spawn();
        s
    }

    /// `ferry worker --metrics-listen 127.0.0.1:0` with the server's options;
    /// returns it with the URL of its metrics.
    pub fn worker(&self) -> (ChildGuard, String) {
        self.worker_on(&self.db)
    }

    /// [`Server::worker`] on the database `db` (the same one, reached
    /// another way).
    pub fn worker_on(&self, db: &Db) -> (ChildGuard, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(["worker", "--metrics-listen", "127.0.0.1:0"]);
        self.base_args_on(&mut cmd, db);
        cmd.env("FERRY_LOG", "ferry=info,warn");
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn ferry worker");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut url = None;
        while out.read_line(&mut line).expect("read worker banner") > 0 {
            if let Some(u) = line.split("metrics:").nth(1) {
                url = Some(u.trim().to_string());
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || for _ in out.lines() {});
        (ChildGuard(child), url.expect("the worker prints its metrics URL"))
    }

    fn base_args(&self, cmd: &mut Command) {
        self.base_args_on(cmd, &self.db)
    }

    fn base_args_on(&self, cmd: &mut Command, db: &Db) {
        cmd.arg("--data-dir").arg(&self.data);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(u) = db.url() {
            cmd.arg("--database").arg(u);
        }
        for k in ["FERRY_LISTEN", "FERRY_DATA_DIR", "FERRY_CONFIG", "FERRY_DATABASE", "AWS_ENDPOINT_URL"] {
            cmd.env_remove(k);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        cmd.args(&self.serve_args);
        self.base_args(&mut cmd);
        cmd.env("FERRY_LOG", "ferry=info,warn");
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn ferry serve");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        let mut line = String::new();
        while out.read_line(&mut line).expect("read banner") > 0 {
            banner.push_str(&line);
            if line.contains("try:") {
                break;
            }
            line.clear();
        }
        let url = banner
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            .unwrap_or_else(|| panic!("no address in the banner: {banner:?}"))
            .trim()
            .to_string();
        // Keep draining stdout so that the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        self.child = Some(child);
        self.url = url;
        self.banner = banner;
    }

    /// `kill -9`, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Start again after [`Self::kill9`] (a new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `ferry token create` / `ferry credential create` with the server's options.
    pub fn admin(&self, what: &str, project: &str) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args([what, "create", "--project", project]);
        self.base_args(&mut cmd);
        let out = cmd.output().expect("run ferry admin command");
        assert!(out.status.success(), "{what} create: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn token(&self, project: &str) -> Client {
        Client::new(&self.url, project, Auth::Token(self.admin("token", project)))
    }

    pub fn hmac(&self, project: &str) -> Client {
        let pair = self.admin("credential", project);
        let (ak, sk) = pair.split_once(' ').expect("AK SK");
        Client::new(&self.url, project, Auth::Hmac { ak: ak.into(), sk: sk.into() })
    }

    pub fn share_dir(&self, share_id: &str) -> PathBuf {
        self.data.join("shares").join(share_id)
    }
}

/// A child process killed when dropped.
pub struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Token(String),
    Hmac { ak: String, sk: String },
}

/// An answer: status, JSON body (Null when empty or not JSON), request id, raw text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub request_id: Option<String>,
    pub text: String,
}

impl Answer {
    /// The error code, checking both spellings agree.
    pub fn code(&self) -> &str {
        let a = self.body["errCode"].as_str().unwrap_or("");
        assert_eq!(Some(a), self.body["error_code"].as_str(), "both spellings: {}", self.text);
        assert_eq!(self.body["errMsg"], self.body["error_msg"], "both spellings: {}", self.text);
        a
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub project: String,
    pub auth: Auth,
}

impl Client {
    pub fn new(base: &str, project: &str, auth: Auth) -> Client {
        Client { http: reqwest::Client::new(), base: base.to_string(), project: project.to_string(), auth }
    }

    /// The same credentials on another project's paths.
    pub fn on_project(&self, project: &str) -> Client {
        Client { project: project.to_string(), ..self.clone() }
    }

    /// The same client against a server at another address (after a restart).
    pub fn at(&self, base: &str) -> Client {
        Client { base: base.to_string(), ..self.clone() }
    }

    pub fn with_auth(&self, auth: Auth) -> Client {
        Client { auth, ..self.clone() }
    }

    /// `path` relative to `/v1/{project}/sfs-turbo`.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let full = format!("/v1/{}/sfs-turbo{path}", self.project);
        self.raw(method, &full, body.map(|b| b.to_string().into_bytes()), "application/json;charset=UTF-8")
            .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    pub async fn raw(
        &self,
        method: &str,
        full_path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Answer {
        let url = format!("{}{full_path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = body.unwrap_or_default();
        let mut req = self.http.request(m, &url).header("Content-Type", content_type);
        match &self.auth {
            Auth::None => {}
            Auth::Token(t) => req = req.header("X-Auth-Token", t),
            Auth::Hmac { ak, sk } => {
                let date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
                let host = self.base.trim_start_matches("http://").to_string();
                let (path, query) = full_path.split_once('?').unwrap_or((full_path, ""));
                let headers = [
                    ("content-type", content_type),
                    ("host", host.as_str()),
                    ("x-project-id", self.project.as_str()),
                    ("x-sdk-date", date.as_str()),
                ];
                let signed = SignedRequest { method, path, query, headers: &headers, body: &body };
                let names = ["content-type", "host", "x-project-id", "x-sdk-date"];
                let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
                let canonical = sdk_hmac::canonical_request(&signed, &names, &hash).unwrap();
                let sig = sdk_hmac::signature(sk, &sdk_hmac::string_to_sign(&date, &canonical));
                req = req.header("X-Project-Id", &self.project).header("X-Sdk-Date", &date).header(
                    "Authorization",
                    format!(
                        "SDK-HMAC-SHA256 Access={ak}, SignedHeaders={}, Signature={sig}",
                        names.join(";")
                    ),
                );
            }
        }
        let resp = req.body(body).send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let request_id = resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, request_id, text }
    }

    /// Create a task on `target` (with `prefix` as both src and dest prefix)
    /// and wait for its end; returns the task.
    pub async fn run_task(&self, share: &str, kind: &str, target: &str, prefix: Option<&str>) -> Value {
        let mut body = serde_json::json!({"type": kind, "src_target": target, "dest_target": target});
        if let Some(p) = prefix {
            body["src_prefix"] = serde_json::json!(p);
            body["dest_prefix"] = serde_json::json!(p);
        }
        let a = self.call("POST", &format!("/{share}/hpc-cache/task"), Some(&body)).await;
        assert_eq!(a.status, 202, "{}", a.text);
        let id = a.body["task_id"].as_str().unwrap().to_string();
        self.poll(&format!("/{share}/hpc-cache/task/{id}"), |b| b["status"] != "DOING").await
    }

    /// Poll `path` until `done(body)` (at most 60 s).
    pub async fn poll(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let a = self.get(path).await;
            assert_eq!(a.status, 200, "{path}: {}", a.text);
            if done(&a.body) {
                return a.body;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{path} never got there: {}", a.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `path` column of a failure report (CSV with quoted fields).
#[allow(dead_code)]
pub fn report_paths(csv: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let (mut field, mut row, mut quoted, mut chars) =
        (String::new(), Vec::new(), false, csv.chars().peekable());
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => field.push(c),
        }
    }
    rows.into_iter().skip(1).filter_map(|r| r.into_iter().next()).collect()
}
