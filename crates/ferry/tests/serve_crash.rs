//! `kill -9` of `ferry serve` during a preload and an export, then a
//! restart: the task finishes with the same result as an uninterrupted
//! run, redoing little, and no partial file is ever visible. Deleting a
//! running task cancels it and leaves no temporary file.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{Client, Db, Server};
use common::S3Server;
use ferry_testkit::OpClass;
use serde_json::{json, Value};

const FILES: usize = 800;

fn config(dir: &Path, s3: &S3Server) -> std::path::PathBuf {
    let path = dir.join("ferry.toml");
    let text = format!(
        "[workers]\nthreads = 4\nlease_secs = 2\n\n[[object_stores]]\nendpoint = \"{}\"\nprovider = \"s3\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3.endpoint(),
        s3.access_key(),
        s3.secret_key()
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
        fs::write(p, content(i)).unwrap();
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

async fn setup(c: &Client, s3: &S3Server) -> (String, String) {
    let body =
        json!({"share": {"name": "crashy", "share_proto": "NFS", "share_type": "STANDARD", "size": 10}});
    let a = c.call("POST", "/shares", Some(&body)).await;
    let share = a.body["id"].as_str().unwrap().to_string();
    c.poll(&format!("/shares/{share}"), |b| b["status"] == "200").await;
    let body = json!({"file_system_path": "data", "obs": {"bucket": "bkt", "endpoint": s3.endpoint()}});
    let a = c.call("POST", &format!("/shares/{share}/targets"), Some(&body)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let target = a.body["target_id"].as_str().unwrap().to_string();
    c.poll(&format!("/shares/{share}/targets/{target}"), |b| b["lifecycle"] == "AVAILABLE").await;
    (share, target)
}

async fn start_task(c: &Client, share: &str, kind: &str) -> String {
    let body = json!({"type": kind, "src_target": "data", "dest_target": "data"});
    let a = c.call("POST", &format!("/{share}/hpc-cache/task"), Some(&body)).await;
    assert_eq!(a.status, 200, "{}", a.text);
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

async fn finish(c: &Client, share: &str, task: &str) -> Value {
    c.poll(&format!("/{share}/hpc-cache/task/{task}"), |b| b["status"] != "DOING").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_preload_and_export_then_restart() {
    for db in Db::all("crash").await {
        let s3 = S3Server::start(&["bkt"]).await;
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed");
        make_files(&seed);
        let r = common::ferry(
            &tmp.path().join("state"),
            &s3.env(),
            &["sync", seed.to_str().unwrap(), "s3://bkt"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);

        let cfg = config(tmp.path(), &s3);
        let mut server = Server::start(&tmp.path().join("data"), Some(&cfg), &db);
        let c = server.token("p1");
        let (share, _) = setup(&c, &s3).await;
        let dir = server.share_dir(&share).join("data");

        // Preload, killed a third of the way (a slow store, so that the
        // kill surely comes before the end).
        s3.faults().set_delay(OpClass::Get, Duration::from_millis(20));
        let task = start_task(&c, &share, "preload").await;
        wait_done(&c, &share, &task, FILES as u64 / 3).await;
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

        // Export of a changed tree, killed a third of the way.
        for i in 0..FILES {
            let p = dir.join(format!("d{}/f{i:05}.txt", i % 10));
            fs::write(&p, [content(i), b"changed\n".to_vec()].concat()).unwrap();
        }
        s3.faults().set_delay(OpClass::Put, Duration::from_millis(20));
        let task = start_task(&c, &share, "export").await;
        wait_done(&c, &share, &task, FILES as u64 / 3).await;
        server.kill9();
        s3.faults().clear();
        server.restart();
        let c = c.at(&server.url);
        let t = finish(&c, &share, &task).await;
        assert_eq!(t["status"], "SUCCESS", "{t}");
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
    let s3 = S3Server::start(&["bkt"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let seed = tmp.path().join("seed");
    make_files(&seed);
    let r =
        common::ferry(&tmp.path().join("state"), &s3.env(), &["sync", seed.to_str().unwrap(), "s3://bkt"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let cfg = config(tmp.path(), &s3);
    let server = Server::start(&tmp.path().join("data"), Some(&cfg), &Db::Sqlite);
    let c = server.token("p1");
    let (share, _) = setup(&c, &s3).await;
    // A slow store: the task is surely still running when it is deleted.
    s3.faults().set_delay(OpClass::Get, Duration::from_millis(20));
    let task = start_task(&c, &share, "preload").await;
    wait_done(&c, &share, &task, 50).await;
    let a = c.call("DELETE", &format!("/{share}/hpc-cache/task/{task}"), None).await;
    assert_eq!(a.status, 204, "{}", a.text);
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
