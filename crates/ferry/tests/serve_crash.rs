//! `kill -9` of `ferry serve` during a preload and an export, then a
//! restart: the task finishes with the same result as an uninterrupted
//! run, redoing little, and no partial file is ever visible. Deleting a
//! running task cancels it and leaves no temporary file. A worker cut off
//! from PostgreSQL gives its task up to one that is not.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{Client, Db, Server};
use common::S3Server;
use ferry_testkit::{OpClass, TcpProxy};
use serde_json::{json, Value};

const FILES: usize = 800;

fn config(dir: &Path, s3: &S3Server) -> std::path::PathBuf {
    config_with_lease(dir, s3, 3)
}

fn config_with_lease(dir: &Path, s3: &S3Server, lease_secs: u32) -> std::path::PathBuf {
    let path = dir.join("ferry.toml");
    let text = format!(
        "[workers]\nthreads = 4\nlease_secs = {lease_secs}\n\n[[object_stores]]\nendpoint = \"{}\"\nprovider = \"s3\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3.endpoint(),
        s3.access_key(),
        s3.secret_key(),
    );
    fs::write(&path, text).unwrap();
    path
}

fn content(i: usize) -> Vec<u8> {
    format!("file {i}\n").repeat(200 + i % 7).into_bytes()
}

fn make_files(root: &Path) {
    for i in 0..FILES {
        let p = root.join(format!("d{}/f{i:05}.txt", i % 10));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content(i)).unwrap();
        // Older than any task: a preload leaves out of its index what was
        // modified since it started (an object stored meanwhile too).
        common::set_mtime(&p, 1_650_000_000_000_000_000 + i as i64);
    }
}

fn assert_all_files(root: &Path) {
    for i in 0..FILES {
        let p = root.join(format!("d{}/f{i:05}.txt", i % 10));
        assert_eq!(fs::read(&p).unwrap_or_default(), content(i), "{}", p.display());
    }
    let leftovers: Vec<_> = common::all_names(root)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".ferry-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// A store holding the test files in bucket `bkt`, and a directory for the
/// test's state.
async fn seeded_store() -> (S3Server, tempfile::TempDir) {
    let s3 = S3Server::start(&["bkt"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let seed = tmp.path().join("seed");
    make_files(&seed);
    let r =
        common::ferry(&tmp.path().join("state"), &s3.env(), &["sync", seed.to_str().unwrap(), "s3://bkt"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    (s3, tmp)
}

async fn setup(c: &Client, s3: &S3Server) -> (String, String) {
    setup_at(c, &s3.endpoint()).await
}

async fn setup_at(c: &Client, endpoint: &str) -> (String, String) {
    let body =
        json!({"share": {"name": "crashy", "share_proto": "NFS", "share_type": "STANDARD", "size": 10}});
    let a = c.call("POST", "/shares", Some(&body)).await;
    let share = a.body["id"].as_str().unwrap().to_string();
    c.poll(&format!("/shares/{share}"), |b| b["status"] == "200").await;
    let body = json!({"file_system_path": "data", "obs": {"bucket": "bkt", "endpoint": endpoint}});
    let a = c.call("POST", &format!("/shares/{share}/targets"), Some(&body)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let target = a.body["target_id"].as_str().unwrap().to_string();
    c.poll(&format!("/shares/{share}/targets/{target}"), |b| b["lifecycle"] == "AVAILABLE").await;
    (share, target)
}

async fn start_task(c: &Client, share: &str, kind: &str) -> String {
    let body = json!({"type": kind, "src_target": "data", "dest_target": "data"});
    let a = c.call("POST", &format!("/{share}/hpc-cache/task"), Some(&body)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    a.body["task_id"].as_str().unwrap().to_string()
}

/// Wait until the task has done at least `n` files (and is still running).
async fn wait_done(c: &Client, share: &str, task: &str, n: u64) -> Value {
    let start = Instant::now();
    loop {
        let t = c.get(&format!("/{share}/hpc-cache/task/{task}")).await.body;
        assert_eq!(t["status"], "DOING", "finished before the crash could happen: {t}");
        if t["progress"]["done_files"].as_u64().unwrap_or(0) >= n {
            return t;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A task taken over after a crash counts what its first attempt copied,
/// as an uninterrupted run would: its files done are those the second
/// attempt copied (`redone` requests) and those the first one recorded in
/// its checkpoint (all it had done when seen `before` the crash, but for
/// those copied and not yet recorded: they count as found up to date).
fn assert_counts_span_attempts(t: &Value, before: &Value, redone: u64) {
    let (p, n) = (&t["progress"], |v: &Value, k: &str| v[k].as_u64().unwrap());
    let done_before = n(&before["progress"], "done_files");
    assert!(
        n(p, "done_files") >= redone + done_before / 2,
        "{done_before} done before, {redone} redone: {p}"
    );
    assert_eq!(n(p, "done_files") + n(p, "skipped_files") + n(p, "failed_files"), n(p, "total_files"), "{p}");
}

/// The seeded store served on SQLite, with a share whose target `data`
/// links to it: the store, the test's directory, the server, a client, and
/// the share's and target's ids.
async fn served_store() -> (S3Server, tempfile::TempDir, Server, Client, String, String) {
    let (s3, tmp) = seeded_store().await;
    let cfg = config(tmp.path(), &s3);
    let server = Server::start(&tmp.path().join("data"), Some(&cfg), &Db::Sqlite);
    let c = server.token("p1");
    let (share, target) = setup(&c, &s3).await;
    (s3, tmp, server, c, share, target)
}

/// A preload of the seeded store on SQLite, slowed (20 ms a GET) so that
/// it is still running, past its first 50 files.
struct Slow {
    s3: S3Server,
    tmp: tempfile::TempDir,
    server: Server,
    c: Client,
    share: String,
    target: String,
    task: String,
}

async fn slow_preload() -> Slow {
    let (s3, tmp, server, c, share, target) = served_store().await;
    s3.faults().set_delay(OpClass::Get, Duration::from_millis(20));
    let task = start_task(&c, &share, "preload").await;
    wait_done(&c, &share, &task, 50).await;
    Slow { s3, tmp, server, c, share, target, task }
}

async fn finish(c: &Client, share: &str, task: &str) -> Value {
    c.poll(&format!("/{share}/hpc-cache/task/{task}"), |b| b["status"] != "DOING").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_preload_and_export_then_restart() {
    for db in Db::all("crash").await {
        let (s3, tmp) = seeded_store().await;

        let cfg = config(tmp.path(), &s3);
        let mut server = Server::start(&tmp.path().join("data"), Some(&cfg), &db);
        let c = server.token("p1");
        let (share, _) = setup(&c, &s3).await;
        let dir = server.share_dir(&share).join("data");

        // Preload, killed a third of the way (a slow store, so that the
        // kill surely comes before the end).
        s3.faults().set_delay(OpClass::Get, Duration::from_millis(20));
        let task = start_task(&c, &share, "preload").await;
        let before = wait_done(&c, &share, &task, FILES as u64 / 3).await;
        server.kill9();
        s3.faults().clear();
        let gets_before = s3.counts().get;
        server.restart();
        let c = c.at(&server.url);
        let t = finish(&c, &share, &task).await;
        assert_eq!(t["status"], "SUCCESS", "{t}");
        assert_all_files(&dir);
        let refetched = s3.counts().get - gets_before;
        assert!(refetched < FILES as u64 * 9 / 10, "the rerun redid too much: {refetched} GETs");
        assert_counts_span_attempts(&t, &before, refetched);

        // Export of a changed tree, killed a third of the way.
        for i in 0..FILES {
            let p = dir.join(format!("d{}/f{i:05}.txt", i % 10));
            fs::write(&p, [content(i), b"changed\n".to_vec()].concat()).unwrap();
        }
        s3.faults().set_delay(OpClass::Put, Duration::from_millis(20));
        let task = start_task(&c, &share, "export").await;
        let before = wait_done(&c, &share, &task, FILES as u64 / 3).await;
        server.kill9();
        s3.faults().clear();
        let puts_before = s3.counts().put;
        server.restart();
        let c = c.at(&server.url);
        let t = finish(&c, &share, &task).await;
        assert_eq!(t["status"], "SUCCESS", "{t}");
        assert_counts_span_attempts(&t, &before, s3.counts().put - puts_before);
        for i in (0..FILES).step_by(97) {
            let obj = s3.root().join(format!("bkt/d{}/f{i:05}.txt", i % 10));
            assert_eq!(fs::read(obj).unwrap(), [content(i), b"changed\n".to_vec()].concat());
        }
        // Nothing left to do: a new export uploads nothing.
        let puts = s3.counts().put;
        let t = finish(&c, &share, &start_task(&c, &share, "export").await).await;
        assert_eq!(t["status"], "SUCCESS", "{t}");
        assert_eq!(s3.counts().put, puts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_running_task_cancels_it() {
    // A slow store: the task is surely still running when it is deleted.
    let Slow { s3, tmp: _tmp, server, c, share, task, .. } = slow_preload().await;
    let a = c.call("DELETE", &format!("/{share}/hpc-cache/task/{task}"), None).await;
    assert_eq!(a.status, 202, "{}", a.text);
    // DELETING until the worker has stopped, then gone.
    let start = Instant::now();
    loop {
        let a = c.get(&format!("/{share}/hpc-cache/task/{task}")).await;
        if a.status == 400 {
            assert_eq!(a.code(), "SFS.TURBO.0106");
            break;
        }
        assert_eq!(a.body["status"], "DELETING", "{}", a.text);
        assert!(start.elapsed() < Duration::from_secs(30), "never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gets = s3.counts().get;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s3.counts().get, gets, "the cancelled task stopped reading");
    let dir = server.share_dir(&share).join("data");
    let names = common::all_names(&dir);
    assert!(
        names.iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".ferry-tmp")),
        "no temporary file left"
    );
    let files = names.iter().filter(|p| p.is_file()).count();
    assert!(files < FILES, "cancelled before the end ({files} files)");
    // Every file that is there is complete.
    for p in names.iter().filter(|p| p.is_file()) {
        let i: usize = p.file_stem().unwrap().to_string_lossy()[1..].parse().unwrap();
        assert_eq!(fs::read(p).unwrap(), content(i));
    }
}

/// Files written in the share while a preload runs (after its walk for
/// changes) are the user's, even one copied in with an old mtime (`cp -p`),
/// new or over a file the preload wrote, of the same size: they are not
/// recorded as the bucket's copies, and the next export uploads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_during_a_preload_is_exported_next() {
    let Slow { s3, tmp: _tmp, server, c, share, target, task } = slow_preload().await;
    let dir = server.share_dir(&share).join("data");
    fs::write(dir.join("d0/written-meanwhile.txt"), b"mine").unwrap();
    let old = dir.join("d1/copied-with-its-mtime.txt");
    fs::create_dir_all(old.parent().unwrap()).unwrap();
    fs::write(&old, b"kept mtime").unwrap();
    let year_2020 = std::time::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
    fs::File::options().write(true).open(&old).unwrap().set_modified(year_2020).unwrap();
    // A preloaded file copied over in place by another of the same size,
    // with that one's old mtime.
    let preloaded = common::all_names(&dir)
        .into_iter()
        .find(|p| p.is_file() && p.file_name().unwrap().to_string_lossy().starts_with('f'))
        .expect("some file preloaded by now");
    let rel = preloaded.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
    let mut rewritten = fs::read(&preloaded).unwrap();
    rewritten[0] ^= 1;
    tokio::time::sleep(Duration::from_millis(20)).await; // a ctime of its own
    fs::write(&preloaded, &rewritten).unwrap();
    fs::File::options().write(true).open(&preloaded).unwrap().set_modified(year_2020).unwrap();
    let t = finish(&c, &share, &task).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    s3.faults().clear();
    let a = c.get(&format!("/shares/{share}/targets/{target}/entries")).await;
    let entries = a.body["entries"].as_array().unwrap();
    for mine in ["d0/written-meanwhile.txt", "d1/copied-with-its-mtime.txt", &rel] {
        assert!(entries.iter().all(|e| e["path"] != mine), "{mine} recorded as the bucket's copy");
    }
    assert!(
        entries.iter().filter(|e| e["kind"] == "file").count() >= FILES - 1,
        "the preload's copies are recorded"
    );

    let task = start_task(&c, &share, "export").await;
    let t = finish(&c, &share, &task).await;
    assert_eq!(
        (t["status"].as_str(), t["progress"]["done_files"].as_u64()),
        (Some("SUCCESS"), Some(3)),
        "{t}"
    );
    assert_eq!(fs::read(s3.root().join("bkt/d0/written-meanwhile.txt")).unwrap(), b"mine");
    assert_eq!(fs::read(s3.root().join("bkt/d1/copied-with-its-mtime.txt")).unwrap(), b"kept mtime");
    assert_eq!(fs::read(s3.root().join("bkt").join(&rel)).unwrap(), rewritten);
}

/// A file the user changes while a preload runs, before the preload gets
/// to it, stays as the user left it: the preload does not put the bucket's
/// copy over it, and the next export uploads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_changed_during_a_preload_is_not_replaced() {
    let (s3, tmp, server, c, share, _) = served_store().await;
    let dir = server.share_dir(&share).join("data");
    let t = finish(&c, &share, &start_task(&c, &share, "preload").await).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    // New versions of every object, for a second preload to fetch, slowly.
    let v2 = |i: usize| [content(i), b"v2\n".to_vec()].concat();
    let seed = tmp.path().join("seed");
    for i in 0..FILES {
        fs::write(seed.join(format!("d{}/f{i:05}.txt", i % 10)), v2(i)).unwrap();
    }
    let r =
        common::ferry(&tmp.path().join("state"), &s3.env(), &["sync", seed.to_str().unwrap(), "s3://bkt"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Past the tick a preload allows for the kernel's coarse file times.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s3.faults().set_delay(OpClass::Get, Duration::from_millis(20));
    let task = start_task(&c, &share, "preload").await;
    wait_done(&c, &share, &task, 50).await;
    let mine = |i: usize| format!("mine {i}\n").into_bytes();
    let d9: Vec<usize> = (0..FILES).filter(|i| i % 10 == 9).collect();
    for &i in &d9 {
        fs::write(dir.join(format!("d9/f{i:05}.txt")), mine(i)).unwrap();
    }
    let t = finish(&c, &share, &task).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    s3.faults().clear();
    let replaced: Vec<usize> = d9
        .iter()
        .copied()
        .filter(|i| fs::read(dir.join(format!("d9/f{i:05}.txt"))).unwrap() != mine(*i))
        .collect();
    assert!(replaced.is_empty(), "the preload replaced the user's files {replaced:?}");
    for i in (0..FILES).filter(|i| i % 10 != 9) {
        assert_eq!(fs::read(dir.join(format!("d{}/f{i:05}.txt", i % 10))).unwrap(), v2(i), "file {i}");
    }

    let t = finish(&c, &share, &start_task(&c, &share, "export").await).await;
    assert_eq!(
        (t["status"].as_str(), t["progress"]["done_files"].as_u64()),
        (Some("SUCCESS"), Some(d9.len() as u64)),
        "{t}"
    );
    assert_eq!(fs::read(s3.root().join("bkt/d9/f00009.txt")).unwrap(), mine(9));
}

/// A store that goes away during a preload: the task stops once nothing
/// has succeeded for `workers.unreachable_secs`, and fails saying so,
/// rather than failing every file left after its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_gone_away_stops_the_task() {
    let (s3, tmp) = seeded_store().await;
    let (proxy, proxied) = TcpProxy::in_front_of(&s3.endpoint()).await;
    let cfg = tmp.path().join("ferry.toml");
    let text = format!(
        "[workers]\nthreads = 4\nunreachable_secs = 1\n\n[[object_stores]]\nendpoint = \"{proxied}\"\nprovider = \"s3\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3.access_key(),
        s3.secret_key(),
    );
    fs::write(&cfg, text).unwrap();
    let server = Server::start(&tmp.path().join("data"), Some(&cfg), &Db::Sqlite);
    let c = server.token("p1");
    let (share, target) = setup_at(&c, &proxied).await;
    s3.faults().set_delay(OpClass::Get, Duration::from_millis(20));
    let task = start_task(&c, &share, "preload").await;
    wait_done(&c, &share, &task, 50).await;
    drop(proxy); // connections closed, new ones refused
    let started = Instant::now();
    let t = finish(&c, &share, &task).await;
    assert_eq!(t["status"], "FAIL", "{t}");
    let message = t["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the run stopped early")
            && message.contains("cannot connect to the store (connection refused)")
            && message.contains("and nothing succeeded for"),
        "{t}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "stopped after {:?}", started.elapsed());
    let done = t["progress"]["done_files"].as_u64().unwrap_or(0);
    assert!(done < FILES as u64, "stopped before the end: {t}");
    // The counters and the items left untried add up to what was listed.
    let not_tried: u64 = message
        .split("; ")
        .find_map(|part| {
            part.strip_suffix(
                " item(s) not tried: a new task of this kind on the same target resumes from here",
            )
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the message names the items not tried: {t}"));
    let n = |k: &str| t["progress"][k].as_u64().unwrap();
    assert_eq!(n("done_files") + n("skipped_files") + n("failed_files") + not_tried, n("total_files"), "{t}");
    // What it wrote (files, and the directories counted in done_files) is
    // recorded as the bucket's copies: the next preload must not take
    // those files for changes made in the share.
    let a = c.get(&format!("/shares/{share}/targets/{target}/entries")).await;
    let entries = a.body["entries"].as_array().unwrap();
    let cached = entries.iter().filter(|e| e["state"] == "cached").count() as u64;
    assert!(done > 0 && cached >= done, "{done} done: {}", a.text);
}

/// The test PostgreSQL (a schema of its own), or `None` when
/// `FERRY_TEST_POSTGRES_URL` is not set.
async fn postgres(tag: &str) -> Option<Db> {
    let db = Db::all(tag).await.into_iter().find(|d| d.url().is_some());
    if db.is_none() {
        eprintln!("FERRY_TEST_POSTGRES_URL not set: {tag} test not run");
    }
    db
}

/// A `ferry worker` on `api`'s PostgreSQL database, reached through a
/// proxy; with the URL of its metrics.
async fn worker_behind_proxy(api: &Server) -> (TcpProxy, common::server::ChildGuard, String) {
    let (proxy, proxied) = TcpProxy::in_front_of(api.db.url().expect("a PostgreSQL database")).await;
    let (worker, metrics) = api.worker_on(&Db::Postgres(proxied));
    (proxy, worker, metrics)
}

/// A worker cut off from PostgreSQL by a partition (its connections neither
/// answer nor close) gives its task up before its lease runs out, and its
/// claim on the task's sync pair ends with it: a worker that reaches the
/// database takes the task over and finishes it. Once the network heals,
/// the cut-off worker writes nothing over that end. (PostgreSQL 14 or
/// later: the proxy's kernel answers TCP keepalives, so only
/// `idle_session_timeout` ends the cut-off session and its claim.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_cut_off_from_postgresql_gives_its_task_up() {
    let Some(db) = postgres("cutoff").await else { return };
    let (s3, tmp) = seeded_store().await;
    let cfg = config(tmp.path(), &s3);
    let api = Server::start_api_only(&tmp.path().join("data"), Some(&cfg), &db);
    let c = api.token("p1");
    let (share, _) = setup(&c, &s3).await;
    let dir = api.share_dir(&share).join("data");

    // The first worker reaches the database through a proxy.
    let (proxy, _cut_off, metrics) = worker_behind_proxy(&api).await;
    s3.faults().set_delay(OpClass::Get, Duration::from_millis(20));
    let task = start_task(&c, &share, "preload").await;
    wait_done(&c, &share, &task, FILES as u64 / 4).await;

    proxy.partition();
    let cut = Instant::now();
    let lost = r#"ferry_tasks_finished_total{type="preload",status="LEASE_LOST"} 1"#;
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == lost) {
            break;
        }
        // The lease (3 s) runs out 2 to 3 s after the cut.
        assert!(cut.elapsed() < Duration::from_secs(3), "the cut-off worker kept its task: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gets = s3.counts().get;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s3.counts().get, gets, "the cut-off worker stopped reading");

    s3.faults().clear();
    let (_other, _) = api.worker();
    let t = finish(&c, &share, &task).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_all_files(&dir);
    assert!(cut.elapsed() < Duration::from_secs(20), "taken over late: {:?}", cut.elapsed());

    proxy.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c.get(&format!("/{share}/hpc-cache/task/{task}")).await.body;
    assert_eq!(after, t, "the cut-off worker wrote over the end");
    assert_all_files(&dir);
}

/// An API node cut off from PostgreSQL by a partition (its connections
/// neither answer nor close) answers 503 with the API's error body once
/// `api.request_timeout_secs` has passed, instead of holding the request
/// for as long as TCP does, and answers again once the network heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_node_cut_off_from_postgresql_answers_503_in_time() {
    let Some(db) = postgres("apicut").await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (proxy, proxied) = TcpProxy::in_front_of(db.url().unwrap()).await;
    let timeout = [("FERRY_API_REQUEST_TIMEOUT_SECS", "2")];
    let api = Server::start_with_env(&tmp.path().join("data"), None, &Db::Postgres(proxied), &timeout);
    let c = api.token("p1");
    assert_eq!(c.get("/shares/detail").await.status, 200);

    proxy.partition();
    let cut = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(30), c.get("/shares/detail")).await.expect("an answer");
    assert!(cut.elapsed() < Duration::from_secs(5), "answered after {:?}", cut.elapsed());
    assert_eq!((a.status, a.code()), (503, "SFS.TURBO.0005"), "{}", a.text);
    assert!(a.body["errMsg"].as_str().unwrap().contains("not done within 2 s"), "{}", a.text);

    proxy.heal();
    let healed = Instant::now();
    while c.get("/shares/detail").await.status != 200 {
        assert!(healed.elapsed() < Duration::from_secs(20), "no answer after the network healed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A PostgreSQL restart in the middle of an import (every connection
/// closed, new ones refused for 12 s: longer than the connection pool
/// waits for one) ends as an uninterrupted import does: the task waits the
/// database out instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_waits_out_a_database_restart() {
    let Some(db) = postgres("restart").await else { return };
    let (s3, tmp) = seeded_store().await;
    let cfg = config_with_lease(tmp.path(), &s3, 30);
    let api = Server::start_api_only(&tmp.path().join("data"), Some(&cfg), &db);
    let c = api.token("p1");
    let (share, target) = setup(&c, &s3).await;
    let (proxy, _worker, _) = worker_behind_proxy(&api).await;
    // Objects' attributes are read one HEAD at a time: a slow store makes
    // the import last several seconds, writing the index level by level.
    s3.faults().set_delay(OpClass::Head, Duration::from_millis(8));
    let task = start_task(&c, &share, "import").await;
    wait_done(&c, &share, &task, FILES as u64 / 4).await;
    proxy.restart(Duration::from_secs(12)).await;
    // The restart came in the middle: the import could not end without it.
    let t = c.get(&format!("/{share}/hpc-cache/task/{task}")).await.body;
    assert_eq!(t["status"], "DOING", "{t}");
    let t = finish(&c, &share, &task).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(t["progress"]["failed_files"], 0, "{t}");
    let a = c.get(&format!("/shares/{share}/targets/{target}/entries?limit=1000")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let files = a.body["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "file").count();
    assert_eq!(files, FILES, "every object is in the index");
}
