//! `ferry serve` end to end, through real HTTP, on SQLite and PostgreSQL:
//! shares, targets, the four task types against an S3 server, jobs,
//! authentication and project isolation.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::server::{report_paths, Auth, Client, Db, Server};
use common::S3Server;
use ferry_testkit::OpClass;
use serde_json::{json, Value};

const PROJECT: &str = "proj1";
const OTHER: &str = "proj2";

/// A config whose only object store is the test S3 server.
fn write_config(dir: &Path, s3: &S3Server) -> std::path::PathBuf {
    let path = dir.join("ferry.toml");
    fs::write(
        &path,
        format!(
            "[[object_stores]]\nendpoint = \"{}\"\nprovider = \"s3\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\npath_style = true\n",
            s3.endpoint(),
            s3.access_key(),
            s3.secret_key()
        ),
    )
    .unwrap();
    path
}

async fn create_share(c: &Client, name: &str) -> String {
    let body = json!({"share": {"name": name, "share_proto": "NFS", "share_type": "STANDARD", "size": 100,
        "availability_zone": "az1", "vpc_id": "v", "subnet_id": "s", "security_group_id": "g"}});
    let a = c.call("POST", "/shares", Some(&body)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["status"], "100");
    let id = a.body["id"].as_str().unwrap().to_string();
    let job = a.body["job_id"].as_str().unwrap().to_string();
    let j = c.poll(&format!("/jobs/{job}"), |b| b["status"] == "success" || b["status"] == "failed").await;
    assert_eq!(j["status"], "success", "{j}");
    assert_eq!(j["job_type"], "create_share");
    assert_eq!(j["sub_jobs"].as_array().unwrap().len(), 1);
    let s = c.get(&format!("/shares/{id}")).await;
    assert_eq!(s.body["status"], "200", "{}", s.text);
    id
}

async fn link_target(
    c: &Client,
    share: &str,
    path: &str,
    endpoint: &str,
    bucket: &str,
    attrs: Value,
) -> String {
    let body = json!({"file_system_path": path, "obs": {"bucket": bucket, "endpoint": endpoint, "attributes": attrs}});
    let a = c.call("POST", &format!("/shares/{share}/targets"), Some(&body)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["lifecycle"], "CREATING");
    let id = a.body["target_id"].as_str().unwrap().to_string();
    let t = c.poll(&format!("/shares/{share}/targets/{id}"), |b| b["lifecycle"] != "CREATING").await;
    assert_eq!(t["lifecycle"], "AVAILABLE", "{t}");
    id
}

/// Objects with POSIX metadata, written by `ferry sync` from a local tree.
fn seed_bucket(s3: &S3Server, tmp: &Path, dst: &str) -> std::path::PathBuf {
    let src = tmp.join("seed");
    fs::create_dir_all(src.join("ds/sub")).unwrap();
    fs::write(src.join("ds/a.txt"), b"alpha").unwrap();
    fs::write(src.join("ds/sub/b.bin"), vec![9u8; 3 << 20]).unwrap();
    fs::write(src.join("top.txt"), b"outside the prefix").unwrap();
    for (p, mode, uid, gid) in [("ds/a.txt", 0o640, 1001, 2001), ("ds/sub/b.bin", 0o600, 1002, 2002)] {
        let f = src.join(p);
        fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&f, Some(uid), Some(gid)).unwrap();
        common::set_mtime(&f, 1_650_000_000_123_456_789);
    }
    let r = common::ferry(&tmp.join("state"), &s3.env(), &["sync", src.to_str().unwrap(), dst]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    src
}

async fn entries(c: &Client, share: &str, target: &str) -> Vec<Value> {
    let a = c.get(&format!("/shares/{share}/targets/{target}/entries")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["entries"].as_array().unwrap().clone()
}

fn entry<'a>(list: &'a [Value], path: &str) -> &'a Value {
    list.iter().find(|e| e["path"] == path).unwrap_or_else(|| panic!("no entry {path} in {list:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hpc_cache_story() {
    for db in Db::all("story").await {
        story(db).await;
    }
}

async fn story(db: Db) {
    let s3 = S3Server::start(&["bucket1", "bucket2"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &s3);
    let server = Server::start(&tmp.path().join("data"), Some(&config), &db);
    assert!(server.banner.contains("ferry token create --project"), "{}", server.banner);
    let c = server.token(PROJECT);
    let ep = s3.endpoint();

    seed_bucket(&s3, tmp.path(), "s3://bucket1");

    let share = create_share(&c, "share-one").await;
    let target = link_target(&c, &share, "data", &ep, "bucket1", json!({"file_mode": 644, "uid": 7})).await;
    let target_dir = server.share_dir(&share).join("data");
    assert!(target_dir.is_dir());

    // import_metadata: names, sizes and mtimes in the index, no object GET.
    let before = s3.counts();
    let t = c.run_task(&share, "import_metadata", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let after = s3.counts();
    assert_eq!(after.get, before.get, "import_metadata must not read object data");
    assert_eq!(after.head, before.head, "import_metadata needs no HEAD: {before:?} -> {after:?}");
    assert!(after.list - before.list <= 2, "one paged listing: {before:?} -> {after:?}");
    let list = entries(&c, &share, &target).await;
    let a = entry(&list, "ds/a.txt");
    assert_eq!((a["size"].as_u64(), a["state"].as_str()), (Some(5), Some("stub")));
    assert_eq!((a["mode"].as_str(), a["uid"].as_u64(), a["gid"].as_u64()), (Some("644"), Some(7), Some(0)));
    assert!(list.iter().all(|e| e["path"] != "top.txt"), "prefix respected: {list:?}");
    assert!(target_dir.join("ds/sub").is_dir(), "directory tree created");
    assert!(!target_dir.join("ds/a.txt").exists(), "no data downloaded");
    assert_eq!(t["progress"]["failed_files"], 0);

    // import: the attributes stored by the export that wrote the objects.
    let t = c.run_task(&share, "import", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let list = entries(&c, &share, &target).await;
    let b = entry(&list, "ds/sub/b.bin");
    assert_eq!(
        (b["mode"].as_str(), b["uid"].as_u64(), b["gid"].as_u64()),
        (Some("600"), Some(1002), Some(2002))
    );
    assert_eq!(b["mtime_ns"].as_i64(), Some(1_650_000_000_123_456_789));

    // preload: bytes on disk, attributes from the defaults.
    let t = c.run_task(&share, "preload", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(fs::read(target_dir.join("ds/a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(target_dir.join("ds/sub/b.bin")).unwrap(), vec![9u8; 3 << 20]);
    let md = fs::metadata(target_dir.join("ds/a.txt")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o644, 7, 0));
    assert_eq!(entry(&entries(&c, &share, &target).await, "ds/a.txt")["state"], "cached");
    assert!(t["progress"]["done_bytes"].as_u64().unwrap() >= 5 + (3 << 20));

    // export: new and changed files only, with their attributes.
    fs::write(target_dir.join("ds/new.txt"), b"created in the share").unwrap();
    std::os::unix::fs::chown(target_dir.join("ds/new.txt"), Some(4242), Some(4343)).unwrap();
    fs::write(target_dir.join("ds/a.txt"), b"alpha, changed").unwrap();
    let before = s3.counts();
    let t = c.run_task(&share, "export", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(s3.counts().put - before.put, 2, "only the new and the changed file are uploaded");
    assert_eq!(fs::read(s3.root().join("bucket1/ds/a.txt")).unwrap(), b"alpha, changed");

    // A second export of an unchanged tree uploads nothing.
    let before = s3.counts();
    let t = c.run_task(&share, "export", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(s3.counts().put, before.put, "nothing changed, nothing uploaded");
    assert_eq!(s3.counts().total(), before.total(), "no request at all: {before:?} -> {:?}", s3.counts());

    // Files that cannot be exported fail the task, which names them in its
    // message and in its failure report: a name that is not UTF-8 (seen by
    // the walk for changes) and a file the store refuses (by the upload).
    let bad = target_dir.join(std::ffi::OsStr::from_bytes(b"ds/not-utf8-\xff"));
    fs::write(&bad, b"x").unwrap();
    fs::write(target_dir.join("ds/refused.txt"), b"y").unwrap();
    s3.faults().set_error_rate(OpClass::Put, 1000, 403);
    let t = c.run_task(&share, "export", "data", Some("ds/")).await;
    s3.faults().clear();
    assert_eq!(
        (t["status"].as_str(), t["progress"]["failed_files"].as_u64()),
        (Some("FAIL"), Some(2)),
        "{t}"
    );
    assert!(t["message"].as_str().unwrap().starts_with("2 of 5 items failed, first: not-utf8-"), "{t}");
    let id = t["task_id"].as_str().unwrap();
    let report = c.get(&format!("/{share}/hpc-cache/task/{id}/failures")).await;
    assert_eq!(report.status, 200, "{}", report.text);
    let rows: Vec<&str> = report.text.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", report.text);
    assert!(rows[0].ends_with(",FAIL,ITEM_FAILED,name is not valid UTF-8"), "{}", report.text);
    assert!(rows[1].starts_with("refused.txt,FAIL,ITEM_FAILED,"), "{}", report.text);
    fs::remove_file(&bad).unwrap();
    fs::remove_file(target_dir.join("ds/refused.txt")).unwrap();

    // Another share imports what was exported: attributes restored, then bytes.
    let share2 = create_share(&c, "share-two").await;
    let target2 = link_target(&c, &share2, "copy", &ep, "bucket1", json!({})).await;
    let t = c.run_task(&share2, "import", "copy", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let list = entries(&c, &share2, &target2).await;
    let n = entry(&list, "ds/new.txt");
    assert_eq!((n["uid"].as_u64(), n["gid"].as_u64()), (Some(4242), Some(4343)), "{n}");
    let src_md = fs::metadata(target_dir.join("ds/new.txt")).unwrap();
    assert_eq!(n["mtime_ns"].as_i64(), Some(src_md.mtime() * 1_000_000_000 + src_md.mtime_nsec()));
    assert_eq!(n["mode"].as_str(), Some(format!("{:o}", src_md.mode() & 0o7777).as_str()));

    // Prometheus metrics: no authentication; what the tasks and requests did.
    let m = c.with_auth(Auth::None).raw("GET", "/metrics", None, "text/plain").await;
    assert_eq!(m.status, 200, "{}", m.text);
    let sample = |line_start: &str| -> f64 {
        let line = m.text.lines().find(|l| l.starts_with(line_start));
        let line = line.unwrap_or_else(|| panic!("no {line_start} in\n{}", m.text));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample(r#"ferry_tasks_finished_total{type="export",status="SUCCESS"}"#), 2.0);
    assert_eq!(sample(r#"ferry_tasks_finished_total{type="import_metadata",status="SUCCESS"}"#), 1.0);
    assert_eq!(sample(r#"ferry_tasks_finished_total{type="export",status="FAIL"}"#), 1.0);
    assert!(sample(r#"ferry_task_bytes_total{type="preload"}"#) >= (5 + (3 << 20)) as f64);
    assert_eq!(sample(r#"ferry_task_files_total{type="export",result="done"}"#), 2.0);
    assert_eq!(sample(r#"ferry_tasks{status="SUCCESS"}"#), 6.0, "two shares' tasks");
    assert_eq!(sample(r#"ferry_tasks{status="DOING"}"#), 0.0);
    assert_eq!(sample(r#"ferry_tasks_running{type="preload"}"#), 0.0);
    let route = r#"route="/v1/{project_id}/sfs-turbo/{share_id}/hpc-cache/task/{task_id}""#;
    assert!(
        m.text.lines().any(|l| l.starts_with("ferry_http_requests_total{") && l.contains(route)),
        "requests counted by route pattern:\n{}",
        m.text
    );
    assert!(m.text.contains("ferry_http_request_duration_seconds_bucket{"), "{}", m.text);

    // Listing with filters and count.
    let all = c.get(&format!("/{share}/hpc-cache/tasks")).await;
    assert_eq!(all.body["count"], 6, "{}", all.text);
    let exports =
        c.get(&format!("/{share}/hpc-cache/tasks?type=export&status=SUCCESS&limit=1&offset=1")).await;
    assert_eq!(
        (exports.body["count"].as_u64(), exports.body["tasks"].as_array().unwrap().len()),
        (Some(2), 1)
    );
    let future = c.get(&format!("/{share}/hpc-cache/tasks?start_time=2999-01-01T00:00:00")).await;
    assert_eq!(future.body["count"], 0, "{}", future.text);
    for t in all.body["tasks"].as_array().unwrap() {
        for key in [
            "task_id",
            "type",
            "status",
            "src_target",
            "src_prefix",
            "dest_target",
            "dest_prefix",
            "start_time",
            "end_time",
            "message",
        ] {
            assert!(t[key].is_string(), "{key} missing in {t}");
        }
    }

    // Delete a finished task: then it is an invalid task id.
    let id = all.body["tasks"][0]["task_id"].as_str().unwrap();
    let d = c.call("DELETE", &format!("/{share}/hpc-cache/task/{id}"), None).await;
    assert_eq!(d.status, 202, "{}", d.text);
    let gone = c.get(&format!("/{share}/hpc-cache/task/{id}")).await;
    assert_eq!((gone.status, gone.code()), (400, "SFS.TURBO.0106"));

    // Attributes and policy updates.
    let a = c
        .call(
            "PUT",
            &format!("/shares/{share}/targets/{target}/attributes"),
            Some(&json!({"attributes": {"dir_mode": 750}})),
        )
        .await;
    assert_eq!((a.status, &a.body["attributes"]["dir_mode"]), (200, &json!(750)), "{}", a.text);
    let p = json!({"policy": {"auto_export_policy": {"events": ["NEW", "CHANGED"], "prefix": "ds/"}}});
    let a = c.call("PUT", &format!("/shares/{share}/targets/{target}/policy"), Some(&p)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let t = c.get(&format!("/shares/{share}/targets/{target}")).await;
    assert_eq!(t.body["obs"]["policy"]["auto_export_policy"]["events"], json!(["NEW", "CHANGED"]));
    assert_eq!(t.body["obs"]["attributes"]["dir_mode"], 750);

    // Expand, rename, gc_time.
    let a =
        c.call("POST", &format!("/shares/{share}/action"), Some(&json!({"extend": {"new_size": 200}}))).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let job = a.body["job_id"].as_str().unwrap().to_string();
    c.poll(&format!("/jobs/{job}"), |b| b["status"] == "success").await;
    let s = c.get(&format!("/shares/{share}")).await;
    assert_eq!(
        (s.body["size"].as_str(), s.body["sub_status"].as_str()),
        (Some("200.00"), Some("221")),
        "{}",
        s.text
    );
    let a = c
        .call("PUT", &format!("/shares/{share}"), Some(&json!({"action": "config_gc_time", "gc_time": 24})))
        .await;
    assert_eq!((a.status, &a.body["gc_time"]), (200, &json!(24)));
    let most = json!({"action": "config_gc_time", "gc_time": 100_000_000});
    let a = c.call("PUT", &format!("/shares/{share}"), Some(&most)).await;
    assert_eq!((a.status, &a.body["gc_time"]), (200, &json!(100_000_000)), "the SDK's largest value");
    let a = c
        .call(
            "POST",
            &format!("/shares/{share}/action"),
            Some(&json!({"change_name": {"name": "share-two"}})),
        )
        .await;
    assert_eq!((a.status, a.code()), (409, "SFS.TURBO.0009"), "name taken");

    // Unlink keeping the data, then with it.
    let a = c.call("DELETE", &format!("/shares/{share}/targets/{target}"), None).await;
    assert_eq!((a.status, a.body["lifecycle"].as_str()), (202, Some("DELETING")), "{}", a.text);
    let job = a.body["job_id"].as_str().unwrap().to_string();
    let j = c.poll(&format!("/jobs/{job}"), |b| b["status"] == "success" || b["status"] == "failed").await;
    assert_eq!(j["job_type"], "delete_obs_target", "{j}");
    assert_eq!(c.get(&format!("/shares/{share}/targets/{target}")).await.status, 404);
    assert!(target_dir.join("ds/new.txt").exists(), "data kept by default");
    let a = c
        .call("DELETE", &format!("/shares/{share2}/targets/{target2}?delete_data_in_file_system=true"), None)
        .await;
    let job = a.body["job_id"].as_str().unwrap().to_string();
    c.poll(&format!("/jobs/{job}"), |b| b["status"] == "success").await;
    assert!(!server.share_dir(&share2).join("copy").exists(), "data deleted on request");

    // Shares list, delete.
    let l = c.get("/shares/detail?limit=1").await;
    assert_eq!(
        (l.body["count"].as_u64(), l.body["shares"].as_array().unwrap().len()),
        (Some(2), 1),
        "{}",
        l.text
    );
    let a = c.call("DELETE", &format!("/shares/{share2}"), None).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let job = a.body["job_id"].as_str().unwrap().to_string();
    c.poll(&format!("/jobs/{job}"), |b| b["status"] == "success").await;
    assert_eq!(c.get(&format!("/shares/{share2}")).await.status, 404);
    assert!(!server.share_dir(&share2).exists());
}

/// A deployment of several nodes: `ferry serve --no-workers` answers the
/// API, a separate `ferry worker` on the same database runs the tasks and
/// shows what it did at its own `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_node_and_worker_node() {
    for db in Db::all("nodes").await {
        let s3 = S3Server::start(&["bucket1"]).await;
        let tmp = tempfile::tempdir().unwrap();
        let config = write_config(tmp.path(), &s3);
        let server = Server::start_api_only(&tmp.path().join("data"), Some(&config), &db);
        let c = server.token(PROJECT);
        seed_bucket(&s3, tmp.path(), "s3://bucket1");
        let share = create_share(&c, "nodes").await;
        link_target(&c, &share, "data", &s3.endpoint(), "bucket1", json!({})).await;

        // No worker yet: the task waits.
        let body = json!({"type": "preload", "src_target": "data", "dest_target": "data"});
        let a = c.call("POST", &format!("/{share}/hpc-cache/task"), Some(&body)).await;
        assert_eq!(a.status, 202, "{}", a.text);
        let task = a.body["task_id"].as_str().unwrap().to_string();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let t = c.get(&format!("/{share}/hpc-cache/task/{task}")).await.body;
        assert_eq!(
            (t["status"].as_str(), t["progress"]["done_files"].as_u64()),
            (Some("DOING"), Some(0)),
            "{t}"
        );

        let (_worker, metrics_url) = server.worker();
        let t = c.poll(&format!("/{share}/hpc-cache/task/{task}"), |b| b["status"] != "DOING").await;
        assert_eq!(t["status"], "SUCCESS", "{t}");
        let dir = server.share_dir(&share).join("data");
        assert_eq!(fs::read(dir.join("ds/a.txt")).unwrap(), b"alpha");
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        assert!(
            text.lines().any(|l| l == r#"ferry_tasks_finished_total{type="preload",status="SUCCESS"} 1"#),
            "{text}"
        );
    }
}

/// The secret keys of access keys are sealed in the database with the
/// server's key file (made 0600 on first start); secrets stored in clear by
/// an earlier version are sealed at the next start and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_key_secrets_are_sealed_at_rest() {
    use sqlx::{Connection, Row};
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, None, &Db::Sqlite);
    let c = server.hmac(PROJECT);
    assert_eq!(c.get("/shares/detail").await.status, 200);
    let Auth::Hmac { ak, sk } = c.auth.clone() else { unreachable!() };
    let mode = fs::metadata(data.join("secret.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is the owner's alone");

    let db_url = format!("sqlite://{}", data.join("ferry.db").display());
    let mut db = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
    let stored: String = sqlx::query("SELECT secret_key FROM hpc_access_keys WHERE access_key = ?")
        .bind(&ak)
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("sealed:v1:") && !stored.contains(&sk), "{stored}");

    // A row as an earlier version wrote it: the secret in clear.
    let (old_ak, old_sk) = ("OLDACCESSKEY0000000A", "oldsecretkey0000000000000000000000000000");
    sqlx::query(
        "INSERT INTO hpc_access_keys (access_key, secret_key, project_id, created_at) VALUES (?, ?, ?, 0)",
    )
    .bind(old_ak)
    .bind(old_sk)
    .bind(PROJECT)
    .execute(&mut db)
    .await
    .unwrap();
    server.restart();
    let stored: String = sqlx::query("SELECT secret_key FROM hpc_access_keys WHERE access_key = ?")
        .bind(old_ak)
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("sealed:v1:"), "sealed at start: {stored}");
    for (ak, sk) in [(ak.as_str(), sk.as_str()), (old_ak, old_sk)] {
        let client = c.at(&server.url).with_auth(Auth::Hmac { ak: ak.into(), sk: sk.into() });
        assert_eq!(client.get("/shares/detail").await.status, 200, "{ak}");
    }
}

/// The index holds every directory a mount must list, including those no
/// object stands for (the prefix's ancestors); importing again keeps the
/// local copies of unchanged objects and drops those of changed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reimport_keeps_unchanged_copies_and_indexes_directories() {
    let s3 = S3Server::start(&["bucket1"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &s3);
    let (server, c) = serve_on_sqlite(tmp.path(), &config);
    let src = seed_bucket(&s3, tmp.path(), "s3://bucket1");
    let share = create_share(&c, "reimport").await;
    let target = link_target(&c, &share, "data", &s3.endpoint(), "bucket1", json!({})).await;
    let dir = server.share_dir(&share).join("data");

    let t = c.run_task(&share, "import_metadata", "data", Some("ds/sub/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let list = entries(&c, &share, &target).await;
    for d in ["ds", "ds/sub"] {
        assert_eq!(entry(&list, d)["kind"], "dir", "{list:?}");
    }
    assert_eq!(entry(&list, "ds/sub/b.bin")["state"], "stub");
    assert!(list.iter().all(|e| e["path"] != "ds/a.txt"), "prefix respected: {list:?}");

    let t = c.run_task(&share, "preload", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let b_ino = fs::metadata(dir.join("ds/sub/b.bin")).unwrap().ino();

    // Nothing changed in the bucket: the copies stay, nothing is read again.
    let gets = s3.counts().get;
    let t = c.run_task(&share, "import", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let list = entries(&c, &share, &target).await;
    for f in ["ds/a.txt", "ds/sub/b.bin"] {
        assert_eq!(entry(&list, f)["state"], "cached", "{f}: {list:?}");
    }
    assert_eq!(fs::read(dir.join("ds/a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::metadata(dir.join("ds/sub/b.bin")).unwrap().ino(), b_ino);
    assert_eq!(s3.counts().get, gets);

    // Two objects replaced: the stale copy of one goes; the other was changed
    // here since it was cached, and local changes win over the bucket.
    fs::write(src.join("ds/a.txt"), b"alpha, replaced in the bucket").unwrap();
    fs::write(src.join("ds/sub/b.bin"), b"beta, replaced in the bucket").unwrap();
    fs::write(dir.join("ds/sub/b.bin"), b"beta, edited in the share").unwrap();
    let r =
        common::ferry(&tmp.path().join("state"), &s3.env(), &["sync", src.to_str().unwrap(), "s3://bucket1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = c.run_task(&share, "import", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let list = entries(&c, &share, &target).await;
    assert_eq!(entry(&list, "ds/a.txt")["state"], "stub");
    assert_eq!(entry(&list, "ds/a.txt")["size"], 29);
    assert!(!dir.join("ds/a.txt").exists(), "no stale bytes left to read");
    assert_eq!(fs::read(dir.join("ds/sub/b.bin")).unwrap(), b"beta, edited in the share");
    assert_eq!(fs::metadata(dir.join("ds/sub/b.bin")).unwrap().ino(), b_ino);

    // The next export uploads the local edit.
    let t = c.run_task(&share, "export", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(fs::read(s3.root().join("bucket1/ds/sub/b.bin")).unwrap(), b"beta, edited in the share");
}

/// Files created or changed in the share since the last export are the
/// user's: a preload neither overwrites them nor records them as clean
/// copies, and the next export uploads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preload_leaves_files_changed_in_the_share_alone() {
    let s3 = S3Server::start(&["bucket1"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &s3);
    let (server, c) = serve_on_sqlite(tmp.path(), &config);
    seed_bucket(&s3, tmp.path(), "s3://bucket1");
    let share = create_share(&c, "preload-local").await;
    let target = link_target(&c, &share, "data", &s3.endpoint(), "bucket1", json!({})).await;
    let dir = server.share_dir(&share).join("data");
    let t = c.run_task(&share, "preload", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(fs::read(dir.join("ds/a.txt")).unwrap(), b"alpha");

    fs::write(dir.join("ds/a.txt"), b"alpha, edited in the share").unwrap();
    fs::write(dir.join("ds/new.txt"), b"created in the share").unwrap();
    let gets = s3.counts().get;
    let t = c.run_task(&share, "preload", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(fs::read(dir.join("ds/a.txt")).unwrap(), b"alpha, edited in the share");
    assert_eq!(s3.counts().get, gets, "nothing read again: {t}");
    let list = entries(&c, &share, &target).await;
    assert_eq!(entry(&list, "ds/sub/b.bin")["state"], "cached");
    assert!(list.iter().all(|e| e["path"] != "ds/new.txt"), "a local file is not a clean copy: {list:?}");

    let puts = s3.counts().put;
    let t = c.run_task(&share, "export", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(s3.counts().put - puts, 2, "the edit and the new file are exported: {t}");
    assert_eq!(fs::read(s3.root().join("bucket1/ds/a.txt")).unwrap(), b"alpha, edited in the share");
    assert_eq!(fs::read(s3.root().join("bucket1/ds/new.txt")).unwrap(), b"created in the share");
}

/// `ferry serve` on SQLite in `dir` with `config`, and a client of
/// project [`PROJECT`].
fn serve_on_sqlite(dir: &Path, config: &Path) -> (Server, Client) {
    let server = Server::start(&dir.join("data"), Some(config), &Db::Sqlite);
    let c = server.token(PROJECT);
    (server, c)
}

/// A configuration file for a service whose store is `moto`.
fn moto_config(dir: &Path, moto: &common::emulators::Moto) -> std::path::PathBuf {
    let config = dir.join("ferry.toml");
    let endpoint = moto.endpoint();
    let text = format!(
        "[[object_stores]]\nendpoint = \"{endpoint}\"\nprovider = \"s3\"\nregion = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\npath_style = true\n"
    );
    fs::write(&config, text).unwrap();
    config
}

/// Keys that make a name a file and a directory at once (`a` and `a/b`,
/// `m` and the marker `m/`), which S3 allows and a file system does not:
/// the directory is imported, the file fails by name, and every other key
/// between them (`a-1.txt` sorts between `a` and `a/b`) is imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_keeps_the_directory_of_a_name_that_is_also_a_file() {
    let Some(moto) = common::emulators::Moto::start(&["bucket1"]).await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = moto_config(tmp.path(), &moto);
    let (_server, c) = serve_on_sqlite(tmp.path(), &config);
    let http = reqwest::Client::new();
    for key in ["ds/a", "ds/a-1.txt", "ds/a/b", "ds/m", "ds/m-x", "ds/m/", "ds/z"] {
        let body = if key.ends_with('/') { String::new() } else { key.to_string() };
        let r = http.put(format!("{}/bucket1/{key}", moto.endpoint())).body(body).send().await.unwrap();
        assert!(r.status().is_success(), "{key}: {}", r.status());
    }
    let share = create_share(&c, "clashes").await;
    let target = link_target(&c, &share, "data", &moto.endpoint(), "bucket1", json!({})).await;
    let t = c.run_task(&share, "import_metadata", "data", Some("ds/")).await;
    assert_eq!(
        (t["status"].as_str(), t["progress"]["failed_files"].as_u64()),
        (Some("FAIL"), Some(2)),
        "{t}"
    );
    let n = |k: &str| t["progress"][k].as_u64().unwrap();
    assert_eq!(n("done_files") + n("skipped_files") + n("failed_files"), n("total_files"), "{t}");
    let id = t["task_id"].as_str().unwrap();
    let report = c.get(&format!("/{share}/hpc-cache/task/{id}/failures")).await;
    let failed = report_paths(&report.text);
    assert_eq!(failed, ["ds/a", "ds/m"], "{}", report.text);
    let list = entries(&c, &share, &target).await;
    for (path, kind) in [
        ("ds/a", "dir"),
        ("ds/m", "dir"),
        ("ds/a/b", "file"),
        ("ds/a-1.txt", "file"),
        ("ds/m-x", "file"),
        ("ds/z", "file"),
    ] {
        assert_eq!(entry(&list, path)["kind"], kind, "{path}: {list:?}");
    }
}

/// `import` gives directories the attributes kept on their `dir/` marker
/// objects. s3s-fs keeps no metadata on markers, so this runs on moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_gives_directories_their_stored_attributes() {
    let Some(moto) = common::emulators::Moto::start(&["bucket1"]).await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = moto_config(tmp.path(), &moto);
    let (server, c) = serve_on_sqlite(tmp.path(), &config);

    let src = tmp.path().join("seed");
    fs::create_dir_all(src.join("ds/sub")).unwrap();
    fs::create_dir_all(src.join("ds/empty")).unwrap();
    fs::write(src.join("ds/sub/b.txt"), b"beta").unwrap();
    let dirs = [("ds/sub", 0o750, 1001, 2001), ("ds/empty", 0o700, 1002, 2002)];
    for (i, (d, mode, uid, gid)) in dirs.into_iter().enumerate() {
        let p = src.join(d);
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        common::set_mtime(&p, 1_650_000_000_123_456_789 + i as i64);
    }
    let r = common::ferry(
        &tmp.path().join("state"),
        &moto.env(),
        &["sync", src.to_str().unwrap(), "s3://bucket1"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    let share = create_share(&c, "markers").await;
    link_target(&c, &share, "data", &moto.endpoint(), "bucket1", json!({})).await;
    let t = c.run_task(&share, "import", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    let attrs = |p: &Path| {
        let md = fs::metadata(p).unwrap();
        (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime() * 1_000_000_000 + md.mtime_nsec())
    };
    let dir = server.share_dir(&share).join("data");
    for (d, ..) in dirs {
        assert_eq!(attrs(&dir.join(d)), attrs(&src.join(d)), "{d}");
    }
    // A preload (default attributes for what it creates) leaves them alone.
    let t = c.run_task(&share, "preload", "data", Some("ds/")).await;
    assert_eq!(t["status"], "SUCCESS", "{t}");
    assert_eq!(fs::read(dir.join("ds/sub/b.txt")).unwrap(), b"beta");
    for (d, ..) in dirs {
        assert_eq!(attrs(&dir.join(d)), attrs(&src.join(d)), "{d} after preload");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_and_isolation() {
    for db in Db::all("auth").await {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(&tmp.path().join("data"), None, &db);
        let token = server.token(PROJECT);
        let hmac = server.hmac(PROJECT);
        let other = server.token(OTHER);

        // Both methods work on every kind of route.
        let share = create_share(&hmac, "by-hmac").await;
        let a = token.get(&format!("/shares/{share}")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(a.request_id.is_some(), "X-Request-Id on every answer");
        let a = hmac.get(&format!("/{share}/hpc-cache/tasks?limit=10&type=import")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let a = hmac
            .call(
                "PUT",
                &format!("/shares/{share}"),
                Some(&json!({"action": "config_gc_time", "gc_time": 5})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);

        // No credentials, a wrong token, a tampered signature.
        let anon = token.with_auth(Auth::None);
        let a = anon.get("/shares/detail").await;
        assert_eq!((a.status, a.code()), (401, "APIGW.0301"));
        assert!(a.request_id.is_some());
        let a = token.with_auth(Auth::Token("nope".into())).get("/shares/detail").await;
        assert_eq!(a.status, 401);
        let Auth::Hmac { ak, .. } = &hmac.auth else { unreachable!() };
        let a = hmac.with_auth(Auth::Hmac { ak: ak.clone(), sk: "wrong".into() }).get("/shares/detail").await;
        assert_eq!(a.status, 401, "{}", a.text);

        // Another project's credentials on this project's paths: refused.
        let a = other.on_project(PROJECT).get(&format!("/shares/{share}")).await;
        assert_eq!(a.status, 403, "{}", a.text);
        let a = hmac.on_project(OTHER).get("/shares/detail").await;
        assert!(a.status == 401 || a.status == 403, "{}", a.text);
        // On its own paths, the other project sees nothing of this one.
        let a = other.get("/shares/detail").await;
        assert_eq!(a.body["count"], 0, "{}", a.text);
        let a = other.get(&format!("/shares/{share}")).await;
        assert_eq!((a.status, a.code()), (404, "SFS.TURBO.0002"));
        let a = other.get(&format!("/{share}/hpc-cache/tasks")).await;
        assert_eq!(a.status, 404);
        let a = other.call("DELETE", &format!("/shares/{share}"), None).await;
        assert_eq!(a.status, 404);
        assert_eq!(token.get(&format!("/shares/{share}")).await.status, 200, "still there");

        // Health needs no credentials.
        let a = anon.raw("GET", "/health", None, "application/json").await;
        assert_eq!(a.status, 200);
    }
}
