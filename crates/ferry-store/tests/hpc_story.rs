//! The HPC-cache store, each test on SQLite always and on PostgreSQL when
//! `FERRY_TEST_POSTGRES_URL` is set. Each PostgreSQL test gets a fresh
//! database, dropped afterwards even when the test fails.

use std::collections::HashSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_model::hpc::{
    AutoExportEvent, AutoExportPolicy, HpcTaskStatus, HpcTaskType, JobStatus, JobType, OctalMode,
    ShareStatus, ShareSubStatus, TargetAttributes, TargetLifecycle, TargetPolicy,
};
use ferry_store::{
    CachedStat, EntryState, Error, Finished, JobRow, NsEntry, ShareRow, Store, TargetRow, TaskEnd,
    TaskFilter, TaskProgress, TaskRow,
};
use serde_json::json;
use sqlx::Connection;

/// Each story as two tests, `<story>::sqlite` and `<story>::postgres`; a
/// story gets the store and the name of its back-end.
macro_rules! on_both_backends {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let store = ferry_store::Store::open_sqlite_file(&dir.path().join("ferry.db")).await.unwrap();
                super::$story(store, "SQLite").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = super::PgDatabase::create().await else { return };
                let store = ferry_store::Store::connect(&db.url).await.unwrap();
                let outcome = tokio::spawn(super::$story(store, "PostgreSQL")).await;
                db.drop().await;
                if let Err(e) = outcome {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    )*};
}

on_both_backends!(
    credentials,
    shares,
    targets,
    task_filters,
    task_queue,
    task_delete_requests,
    jobs,
    namespace_index,
    delete_share_cascades,
    ten_thousand_tasks_list_fast,
);

/// A database of its own on the server of `FERRY_TEST_POSTGRES_URL`.
struct PgDatabase {
    admin: sqlx::PgConnection,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> Option<PgDatabase> {
        let Ok(base) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
            eprintln!("FERRY_TEST_POSTGRES_URL not set: PostgreSQL story not run");
            return None;
        };
        let name = format!("ferry_test_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect to FERRY_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let url = match base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => panic!("FERRY_TEST_POSTGRES_URL needs a database name"),
        };
        Some(PgDatabase { admin, name, url })
    }

    async fn drop(mut self) {
        let q = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        sqlx::query(&q).execute(&mut self.admin).await.unwrap();
    }
}

// ---- fixtures ----

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn share(project: &str, id: &str, name: &str, created_at: i64) -> ShareRow {
    ShareRow {
        id: id.into(),
        project_id: project.into(),
        name: name.into(),
        status: ShareStatus::Active,
        sub_status: None,
        size_gib: 1228,
        share_proto: "NFS".into(),
        share_type: "HPC_CACHE".into(),
        metadata: json!({ "crypt_key_id": "k", "expand_type": "bandwidth" }),
        gc_time_hours: None,
        created_at,
    }
}

fn target(share_id: &str, id: &str, path: &str, created_at: i64) -> TargetRow {
    TargetRow {
        id: id.into(),
        share_id: share_id.into(),
        project_id: "proj-a".into(),
        file_system_path: path.into(),
        bucket: "bucket-1".into(),
        endpoint: "obs.example.com".into(),
        lifecycle: TargetLifecycle::Creating,
        failure_message: None,
        attributes: TargetAttributes::default(),
        policy: TargetPolicy::default(),
        created_at,
    }
}

fn task(share_id: &str, id: &str, task_type: HpcTaskType, status: HpcTaskStatus, start_time: i64) -> TaskRow {
    TaskRow {
        id: id.into(),
        share_id: share_id.into(),
        project_id: "proj-a".into(),
        task_type,
        status,
        src_target: "data".into(),
        src_prefix: Some("input/".into()),
        dest_target: "data".into(),
        dest_prefix: Some("input/".into()),
        attributes: None,
        start_time,
        end_time: None,
        message: None,
        progress: TaskProgress::default(),
    }
}

fn job(id: &str, parent: Option<&str>, status: JobStatus, begin_time: i64) -> JobRow {
    JobRow {
        id: id.into(),
        project_id: "proj-a".into(),
        job_type: JobType::CreateShare,
        status,
        begin_time,
        end_time: None,
        error_code: None,
        fail_reason: None,
        parent_id: parent.map(str::to_string),
        entities: json!({ "share_id": "s1" }),
    }
}

fn entry(dir: &str, name: &str, size: u64) -> NsEntry {
    NsEntry {
        dir: dir.into(),
        name: name.into(),
        kind: "file".into(),
        size,
        mtime_ns: 1_700_000_000_123_456_789,
        mode: 0o100644,
        uid: 1000,
        gid: 1000,
        etag: Some(format!("\"etag-{size}\"")),
        state: EntryState::Stub,
        local_size: None,
        local_mtime_ns: None,
        local_ctime_ns: None,
        local_ino: None,
    }
}

/// A store with share `s1` of `proj-a`.
async fn with_share(store: &Store) {
    store.insert_share(&share("proj-a", "s1", "cache-1", 100)).await.unwrap();
}

fn ids<T>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    rows.iter().map(|r| id(r).to_string()).collect()
}

// ---- stories ----

async fn credentials(store: Store, _backend: &str) {
    let token = store.create_token("proj-a").await.unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(store.token_project(&token).await.unwrap().as_deref(), Some("proj-a"));
    let other = store.create_token("proj-b").await.unwrap();
    assert_ne!(token, other);
    assert_eq!(store.token_project(&other).await.unwrap().as_deref(), Some("proj-b"));
    assert_eq!(store.token_project("0".repeat(64).as_str()).await.unwrap(), None);
    assert_eq!(store.token_project("").await.unwrap(), None);
    assert_eq!(store.token_project(&token.to_uppercase()).await.unwrap(), None);
    // Only the hash is stored: the token itself is not a key.
    let mut wrong = token.clone();
    wrong.pop();
    assert_eq!(store.token_project(&wrong).await.unwrap(), None);

    let (ak, sk) = store.create_access_key("proj-a").await.unwrap();
    assert_eq!(ak.len(), 20);
    assert!(ak.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()), "{ak}");
    assert_eq!(sk.len(), 40);
    assert!(sk.bytes().all(|b| b.is_ascii_alphanumeric()), "{sk}");
    assert_eq!(store.access_key(&ak).await.unwrap(), Some((sk.clone(), "proj-a".to_string())));
    assert_eq!(store.access_key(&ak.to_lowercase()).await.unwrap(), None);
    assert_eq!(store.access_key("AKIAUNKNOWN000000000").await.unwrap(), None);
    let (ak2, sk2) = store.create_access_key("proj-a").await.unwrap();
    assert_ne!((ak2.as_str(), sk2.as_str()), (ak.as_str(), sk.as_str()));
}

async fn shares(store: Store, _backend: &str) {
    let a = share("proj-a", "s1", "cache", 100);
    store.insert_share(&a).await.unwrap();
    assert_eq!(store.share("proj-a", "s1").await.unwrap(), Some(a.clone()));

    // The name is taken in proj-a, not in proj-b.
    let err = store.insert_share(&share("proj-a", "s2", "cache", 101)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let err = store.insert_share(&share("proj-a", "s1", "other", 101)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let b = share("proj-b", "s3", "cache", 102);
    store.insert_share(&b).await.unwrap();

    // Project isolation.
    assert_eq!(store.share("proj-b", "s1").await.unwrap(), None);
    assert_eq!(store.share("proj-a", "s3").await.unwrap(), None);
    let (rows, count) = store.list_shares("proj-b", 0, 100).await.unwrap();
    assert_eq!((ids(&rows, |s| &s.id), count), (vec!["s3".to_string()], 1));

    // Paging by creation time, with the total count.
    for i in 0..5 {
        store.insert_share(&share("proj-a", &format!("p{i}"), &format!("n{i}"), 200 - i)).await.unwrap();
    }
    let (rows, count) = store.list_shares("proj-a", 0, 3).await.unwrap();
    assert_eq!((ids(&rows, |s| &s.id), count), (vec!["s1".into(), "p4".into(), "p3".into()], 6));
    let (rows, count) = store.list_shares("proj-a", 3, 3).await.unwrap();
    assert_eq!((ids(&rows, |s| &s.id), count), (vec!["p2".into(), "p1".into(), "p0".into()], 6));
    let (rows, count) = store.list_shares("proj-a", u64::MAX, 3).await.unwrap();
    assert_eq!((rows.len(), count), (0, 6));
    assert_eq!(store.list_shares("nobody", 0, 10).await.unwrap(), (vec![], 0));

    // Setters.
    store.set_share_status("s1", ShareStatus::Active, Some(ShareSubStatus::Expanding)).await.unwrap();
    store.set_share_size("s1", 2456).await.unwrap();
    store.set_share_gc_time("s1", 24).await.unwrap();
    store.rename_share("s1", "renamed").await.unwrap();
    let s1 = store.share("proj-a", "s1").await.unwrap().unwrap();
    assert_eq!(
        (s1.sub_status, s1.size_gib, s1.gc_time_hours, s1.name.as_str()),
        (Some(ShareSubStatus::Expanding), 2456, Some(24), "renamed")
    );
    let err = store.rename_share("p0", "renamed").await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    for err in [
        store.rename_share("missing", "x").await.unwrap_err(),
        store.set_share_size("missing", 1).await.unwrap_err(),
        store.set_share_status("missing", ShareStatus::Failed, None).await.unwrap_err(),
        store.set_share_gc_time("missing", 1).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    }

    // A DELETED share frees its name; it cannot come back while the name is used again.
    store.set_share_status("s1", ShareStatus::Deleted, None).await.unwrap();
    store.insert_share(&share("proj-a", "s4", "renamed", 300)).await.unwrap();
    let err = store.set_share_status("s1", ShareStatus::Active, None).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(store.share("proj-a", "s1").await.unwrap().unwrap().status, ShareStatus::Deleted);
    // ... and deleted shares may share a name.
    store.set_share_status("s4", ShareStatus::Deleted, None).await.unwrap();
    store.insert_share(&share("proj-a", "s5", "renamed", 301)).await.unwrap();
}

async fn targets(store: Store, _backend: &str) {
    with_share(&store).await;
    let err = store.insert_target(&target("nope", "t0", "d", 1)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    let mut first = target("s1", "t00", "dir00", 10);
    first.attributes = TargetAttributes {
        file_mode: OctalMode::from_wire(640),
        dir_mode: OctalMode::from_wire(750),
        uid: Some(0),
        gid: Some(4_294_967_294),
    };
    first.policy = TargetPolicy {
        auto_export_policy: Some(AutoExportPolicy {
            events: vec![AutoExportEvent::New, AutoExportEvent::Deleted],
            prefix: Some("out/".into()),
            suffix: None,
        }),
    };
    store.insert_target(&first).await.unwrap();
    assert_eq!(store.target("s1", "t00").await.unwrap(), Some(first.clone()));
    assert_eq!(store.target_by_path("s1", "dir00").await.unwrap(), Some(first.clone()));
    assert_eq!(store.target("other", "t00").await.unwrap(), None);
    assert_eq!(store.target_by_path("s1", "dir01").await.unwrap(), None);

    // The path is unique in the share.
    let err = store.insert_target(&target("s1", "t99", "dir00", 11)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let err = store.insert_target(&target("s1", "t00", "dir99", 11)).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");

    // 16 targets at most. Two share a creation time: the id orders them.
    for i in 1..16 {
        let created = if i == 15 { 24 } else { 10 + i };
        store
            .insert_target(&target("s1", &format!("t{i:02}"), &format!("dir{i:02}"), created))
            .await
            .unwrap();
    }
    let err = store.insert_target(&target("s1", "t16", "dir16", 40)).await.unwrap_err();
    assert!(matches!(err, Error::LimitReached(_)), "{err}");
    // Another share has its own limit.
    store.insert_share(&share("proj-a", "s2", "cache-2", 101)).await.unwrap();
    store.insert_target(&target("s2", "t16", "dir00", 40)).await.unwrap();

    // Paging with a marker.
    let (page, count) = store.list_targets("s1", None, 5).await.unwrap();
    assert_eq!(count, 16);
    assert_eq!(ids(&page, |t| &t.id), ["t00", "t01", "t02", "t03", "t04"]);
    let (page, _) = store.list_targets("s1", Some("t04"), 100).await.unwrap();
    assert_eq!(page.len(), 11);
    assert_eq!(ids(&page[8..], |t| &t.id), ["t13", "t14", "t15"], "t14 and t15 both at 24, by id");
    let (page, _) = store.list_targets("s1", Some("t14"), 100).await.unwrap();
    assert_eq!(ids(&page, |t| &t.id), ["t15"]);
    let (page, count) = store.list_targets("s1", Some("t15"), 100).await.unwrap();
    assert_eq!((page.len(), count), (0, 16));
    let err = store.list_targets("s1", Some("t16"), 10).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "a marker of another share: {err}");
    let err = store.list_targets("s1", Some("nope"), 10).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    // Setters.
    store
        .set_target_lifecycle("t01", TargetLifecycle::Misconfigured, Some("bucket not found"))
        .await
        .unwrap();
    let t = store.target("s1", "t01").await.unwrap().unwrap();
    assert_eq!(
        (t.lifecycle, t.failure_message.as_deref()),
        (TargetLifecycle::Misconfigured, Some("bucket not found"))
    );
    store.set_target_lifecycle("t01", TargetLifecycle::Available, None).await.unwrap();
    store.set_target_attributes("t01", &first.attributes).await.unwrap();
    store.set_target_policy("t01", &first.policy).await.unwrap();
    let t = store.target("s1", "t01").await.unwrap().unwrap();
    assert_eq!((t.lifecycle, t.failure_message), (TargetLifecycle::Available, None));
    assert_eq!((t.attributes, t.policy), (first.attributes, first.policy.clone()));
    let err = store.set_target_policy("nope", &first.policy).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    // Deleting a target (and its index) makes room.
    store.upsert_entries("t01", &[entry("", "a", 1), entry("x", "b", 2)]).await.unwrap();
    store.delete_target("t01").await.unwrap();
    store.delete_target("t01").await.unwrap();
    assert_eq!(store.target("s1", "t01").await.unwrap(), None);
    assert_eq!(store.count_entries("t01").await.unwrap(), 0);
    store.insert_target(&target("s1", "t17", "dir01", 50)).await.unwrap();
    assert_eq!(store.list_targets("s1", None, 1).await.unwrap().1, 16);
}

async fn task_filters(store: Store, _backend: &str) {
    with_share(&store).await;
    store.insert_share(&share("proj-a", "s2", "cache-2", 101)).await.unwrap();
    // 40 tasks: types cycle over the four, statuses over three; start times 1000, 1010, …
    let types = HpcTaskType::ALL;
    let statuses = [HpcTaskStatus::Doing, HpcTaskStatus::Success, HpcTaskStatus::Fail];
    let mut tasks: Vec<TaskRow> = (0..40)
        .map(|i| task("s1", &format!("task-{i:02}"), types[i % 4], statuses[i % 3], 1000 + 10 * i as i64))
        .collect();
    // Two tasks start at the same second: the id breaks the tie.
    tasks[39].start_time = tasks[38].start_time;
    tasks[5].attributes = Some(TargetAttributes { uid: Some(7), ..Default::default() });
    tasks[5].end_time = Some(5000);
    tasks[5].message = Some("done".into());
    tasks[5].progress = TaskProgress {
        total_files: 10,
        done_files: 7,
        skipped_files: 1,
        failed_files: 2,
        total_bytes: u64::MAX,
        done_bytes: 1 << 40,
        bytes_per_second: 3,
    };
    store.insert_task(&tasks[0]).await.unwrap();
    store.insert_tasks_bulk(&tasks[1..]).await.unwrap();
    store.insert_task(&task("s2", "other", HpcTaskType::Import, HpcTaskStatus::Doing, 1200)).await.unwrap();
    let err = store.insert_task(&tasks[0]).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");

    assert_eq!(store.task("s1", "task-05").await.unwrap(), Some(tasks[5].clone()));
    assert_eq!(store.task("s2", "task-05").await.unwrap(), None);

    let expect = |keep: &dyn Fn(&TaskRow) -> bool| -> Vec<String> {
        let mut rows: Vec<&TaskRow> = tasks.iter().filter(|t| keep(t)).collect();
        rows.sort_by(|a, b| (b.start_time, &b.id).cmp(&(a.start_time, &a.id)));
        rows.iter().map(|t| t.id.clone()).collect()
    };
    let list = |filter: TaskFilter| {
        let store = store.clone();
        async move {
            let (rows, count) = store.list_tasks("s1", &filter).await.unwrap();
            (ids(&rows, |t| &t.id), count)
        }
    };

    let all = expect(&|_| true);
    assert_eq!(list(TaskFilter::default()).await, (all.clone(), 40));
    assert_eq!(&all[..2], ["task-39", "task-38"]);
    for t in types {
        let want = expect(&|r| r.task_type == *t);
        assert_eq!(list(TaskFilter { task_type: Some(*t), ..Default::default() }).await, (want.clone(), 10));
    }
    for s in statuses {
        let want = expect(&|r| r.status == s);
        let n = want.len() as u64;
        assert_eq!(list(TaskFilter { status: Some(s), ..Default::default() }).await, (want, n));
    }
    assert_eq!(
        list(TaskFilter { status: Some(HpcTaskStatus::Deleting), ..Default::default() }).await,
        (vec![], 0)
    );
    // Time range: start_time within [start_time, end_time], both ends included.
    let want = expect(&|r| (1100..=1200).contains(&r.start_time));
    assert_eq!(want.len(), 11);
    let range = TaskFilter { start_time: Some(1100), end_time: Some(1200), ..Default::default() };
    assert_eq!(list(range.clone()).await, (want.clone(), 11));
    assert_eq!(list(TaskFilter { start_time: Some(1380), ..Default::default() }).await.1, 2);
    assert_eq!(list(TaskFilter { end_time: Some(1000), ..Default::default() }).await.1, 1);
    // All filters at once.
    let want = expect(&|r| {
        r.task_type == HpcTaskType::Preload && r.status == HpcTaskStatus::Doing && r.start_time >= 1050
    });
    let every = TaskFilter {
        task_type: Some(HpcTaskType::Preload),
        status: Some(HpcTaskStatus::Doing),
        start_time: Some(1050),
        ..Default::default()
    };
    let n = want.len() as u64;
    assert!(n > 0);
    assert_eq!(list(every).await, (want, n));
    // Offset and limit page through; the count stays that of the filter.
    assert_eq!(
        list(TaskFilter { offset: 0, limit: 4, ..range.clone() }).await,
        (want_page(&range, &tasks, 0, 4), 11)
    );
    let mut paged = Vec::new();
    for offset in (0..11).step_by(4) {
        let (page, count) = list(TaskFilter { offset, limit: 4, ..range.clone() }).await;
        assert_eq!(count, 11);
        paged.extend(page);
    }
    assert_eq!(paged, expect(&|r| (1100..=1200).contains(&r.start_time)));
    assert_eq!(list(TaskFilter { offset: 11, limit: 4, ..range.clone() }).await, (vec![], 11));
    assert_eq!(list(TaskFilter { offset: u64::MAX, ..range }).await, (vec![], 11));

    // Status, progress and failure report.
    let progress = TaskProgress { total_files: 3, done_files: 2, failed_files: 1, ..Default::default() };
    store.set_task_progress("task-00", &progress).await.unwrap();
    store.set_task_status("task-00", HpcTaskStatus::Fail, Some("1 file failed"), Some(9999)).await.unwrap();
    let t = store.task("s1", "task-00").await.unwrap().unwrap();
    assert_eq!(
        (t.status, t.message.as_deref(), t.end_time, t.progress),
        (HpcTaskStatus::Fail, Some("1 file failed"), Some(9999), progress)
    );
    assert_eq!(store.task_failure_report("task-00").await.unwrap(), None);
    store.set_task_failure_report("task-00", "path,error\na,\"x, y\"\n").await.unwrap();
    store.set_task_failure_report("task-00", "path,error\nb,z\n").await.unwrap();
    assert_eq!(store.task_failure_report("task-00").await.unwrap().as_deref(), Some("path,error\nb,z\n"));
    for err in [
        store.set_task_failure_report("nope", "x").await.unwrap_err(),
        store.set_task_status("nope", HpcTaskStatus::Fail, None, None).await.unwrap_err(),
        store.set_task_progress("nope", &progress).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    }
}

/// The ids of page (offset, limit) of the tasks in `filter`'s time range.
fn want_page(filter: &TaskFilter, tasks: &[TaskRow], offset: usize, limit: usize) -> Vec<String> {
    let mut rows: Vec<&TaskRow> = tasks
        .iter()
        .filter(|t| filter.start_time.is_none_or(|s| t.start_time >= s))
        .filter(|t| filter.end_time.is_none_or(|e| t.start_time <= e))
        .collect();
    rows.sort_by(|a, b| (b.start_time, &b.id).cmp(&(a.start_time, &a.id)));
    rows.iter().skip(offset).take(limit).map(|t| t.id.clone()).collect()
}

async fn task_queue(store: Store, _backend: &str) {
    with_share(&store).await;
    let t0 = 1_000_000;
    store
        .insert_tasks_bulk(&[
            task("s1", "done", HpcTaskType::Import, HpcTaskStatus::Success, 1),
            task("s1", "newer", HpcTaskType::Export, HpcTaskStatus::Doing, 20),
            task("s1", "older", HpcTaskType::Import, HpcTaskStatus::Doing, 10),
        ])
        .await
        .unwrap();

    // Oldest DOING task first; finished tasks are never claimed.
    let a = store.claim_task("worker-a", t0, 30).await.unwrap().unwrap();
    assert_eq!(a.id, "older");
    let b = store.claim_task("worker-b", t0, 30).await.unwrap().unwrap();
    assert_eq!(b.id, "newer");
    assert_eq!(store.claim_task("worker-c", t0, 30).await.unwrap(), None);

    // Renewing: only the holder, only while DOING.
    assert!(store.heartbeat("older", "worker-a", t0 + 60, &TaskProgress::default()).await.unwrap());
    assert!(!store.heartbeat("older", "worker-b", t0 + 60, &TaskProgress::default()).await.unwrap());
    assert!(!store.heartbeat("missing", "worker-a", t0 + 60, &TaskProgress::default()).await.unwrap());
    // worker-b's lease runs out at t0 + 30: worker-c takes the task over.
    assert_eq!(store.claim_task("worker-c", t0 + 29, 30).await.unwrap(), None);
    let c = store.claim_task("worker-c", t0 + 30, 30).await.unwrap().unwrap();
    assert_eq!(c.id, "newer");
    assert!(
        !store.heartbeat("newer", "worker-b", t0 + 90, &TaskProgress::default()).await.unwrap(),
        "worker-b lost the task"
    );
    assert!(store.heartbeat("newer", "worker-c", t0 + 90, &TaskProgress::default()).await.unwrap());
    // worker-a renewed until t0 + 60, so its task is not taken at t0 + 59.
    assert_eq!(store.claim_task("worker-d", t0 + 59, 30).await.unwrap(), None);

    // Release: the task can be claimed at once by anyone; a stranger's release does nothing.
    store.release_task("older", "worker-z").await.unwrap();
    assert_eq!(store.claim_task("worker-d", t0 + 1, 30).await.unwrap(), None);
    store.release_task("older", "worker-a").await.unwrap();
    assert!(!store.heartbeat("older", "worker-a", t0 + 60, &TaskProgress::default()).await.unwrap());
    assert_eq!(store.claim_task("worker-d", t0 + 1, 30).await.unwrap().unwrap().id, "older");

    // A task no longer DOING cannot be renewed: its worker stops.
    store.set_task_status("older", HpcTaskStatus::Success, None, Some(t0 + 2)).await.unwrap();
    assert!(!store.heartbeat("older", "worker-d", t0 + 60, &TaskProgress::default()).await.unwrap());

    store.set_task_status("newer", HpcTaskStatus::Success, None, Some(t0 + 3)).await.unwrap();

    // A worker whose lease ran out and was taken over writes nothing: not
    // its counters, not its end. The new holder's end is recorded whole.
    store
        .insert_tasks_bulk(&[task("s1", "taken", HpcTaskType::Export, HpcTaskStatus::Doing, 30)])
        .await
        .unwrap();
    assert_eq!(store.claim_task("slow", t0, 30).await.unwrap().unwrap().id, "taken");
    let before = TaskProgress { total_files: 9, done_files: 4, ..Default::default() };
    assert!(store.heartbeat("taken", "slow", t0 + 30, &before).await.unwrap());
    assert_eq!(store.task("s1", "taken").await.unwrap().unwrap().progress, before);
    assert_eq!(store.claim_task("fresh", t0 + 30, 30).await.unwrap().unwrap().id, "taken");
    let late = TaskProgress { total_files: 9, done_files: 9, ..Default::default() };
    assert!(!store.heartbeat("taken", "slow", t0 + 60, &late).await.unwrap());
    let stale_end = TaskEnd {
        status: HpcTaskStatus::Fail,
        message: Some("1 file failed".into()),
        end_time: t0 + 40,
        progress: late,
        failure_report: Some("path,error\nx,y\n".into()),
    };
    assert_eq!(store.finish_task("taken", "slow", &stale_end).await.unwrap(), Finished::NotHeld);
    let t = store.task("s1", "taken").await.unwrap().unwrap();
    assert_eq!((t.status, t.end_time, t.progress), (HpcTaskStatus::Doing, None, before));
    assert_eq!(store.task_failure_report("taken").await.unwrap(), None);
    assert!(store.heartbeat("taken", "fresh", t0 + 60, &before).await.unwrap(), "still leased to fresh");
    let done = TaskProgress { total_files: 9, done_files: 8, failed_files: 1, ..Default::default() };
    let end = TaskEnd { progress: done, end_time: t0 + 50, ..stale_end };
    assert_eq!(store.finish_task("taken", "fresh", &end).await.unwrap(), Finished::Recorded);
    let t = store.task("s1", "taken").await.unwrap().unwrap();
    assert_eq!(
        (t.status, t.message.as_deref(), t.end_time, t.progress),
        (HpcTaskStatus::Fail, Some("1 file failed"), Some(t0 + 50), done)
    );
    assert_eq!(store.task_failure_report("taken").await.unwrap().as_deref(), Some("path,error\nx,y\n"));
    assert_eq!(store.finish_task("taken", "fresh", &end).await.unwrap(), Finished::NotHeld, "lease dropped");
    assert_eq!(store.finish_task("nope", "fresh", &end).await.unwrap(), Finished::NotHeld);

    // Two workers race for one task: exactly one gets it.
    for round in 0..10 {
        let id = format!("race-{round}");
        store
            .insert_task(&task("s1", &id, HpcTaskType::Preload, HpcTaskStatus::Doing, 100 + round))
            .await
            .unwrap();
        let (s1, s2) = (store.clone(), store.clone());
        let one = tokio::spawn(async move { s1.claim_task("racer-1", t0 + 1000, 30).await.unwrap() });
        let two = tokio::spawn(async move { s2.claim_task("racer-2", t0 + 1000, 30).await.unwrap() });
        let (one, two) = (one.await.unwrap(), two.await.unwrap());
        let won: Vec<&TaskRow> = one.iter().chain(two.iter()).collect();
        assert_eq!(won.len(), 1, "round {round}: {one:?} / {two:?}");
        assert_eq!(won[0].id, id);
        store.set_task_status(&id, HpcTaskStatus::Success, None, None).await.unwrap();
    }

    // Eight workers drain 40 tasks: each task is claimed exactly once.
    let tasks: Vec<TaskRow> = (0..40)
        .map(|i| task("s1", &format!("q{i:02}"), HpcTaskType::Import, HpcTaskStatus::Doing, 500 + i))
        .collect();
    store.insert_tasks_bulk(&tasks).await.unwrap();
    let mut workers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(t) = store.claim_task(&format!("w{w}"), t0 + 1000, 600).await.unwrap() {
                got.push(t.id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.unwrap());
    }
    let unique: HashSet<&String> = claimed.iter().collect();
    assert_eq!((claimed.len(), unique.len()), (40, 40));
}

async fn task_delete_requests(store: Store, _backend: &str) {
    with_share(&store).await;
    let now = now();
    store
        .insert_tasks_bulk(&[
            task("s1", "running", HpcTaskType::Import, HpcTaskStatus::Doing, 1),
            task("s1", "stale", HpcTaskType::Import, HpcTaskStatus::Doing, 2),
            task("s1", "queued", HpcTaskType::Import, HpcTaskStatus::Doing, 3),
            task("s1", "finished", HpcTaskType::Export, HpcTaskStatus::Success, 4),
        ])
        .await
        .unwrap();
    assert_eq!(store.claim_task("w1", now, 600).await.unwrap().unwrap().id, "running");
    // "stale" holds a lease that has run out, "queued" none.
    assert_eq!(store.claim_task("w3", now - 100, 10).await.unwrap().unwrap().id, "stale");

    assert!(store.request_task_delete("running").await.unwrap(), "a worker runs it: it must stop");
    assert!(!store.request_task_delete("queued").await.unwrap());
    assert!(!store.request_task_delete("stale").await.unwrap());
    assert!(!store.request_task_delete("finished").await.unwrap());
    assert!(!store.request_task_delete("running").await.unwrap(), "already DELETING");
    let err = store.request_task_delete("nope").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    // The worker learns at its next renewal; nobody can claim a DELETING task.
    assert!(!store.heartbeat("running", "w1", now + 600, &TaskProgress::default()).await.unwrap());
    assert_eq!(store.claim_task("w4", now + 10_000, 10).await.unwrap(), None);

    let deleting = store.tasks_by_status(HpcTaskStatus::Deleting).await.unwrap();
    assert_eq!(ids(&deleting, |t| &t.id), ["running", "stale", "queued", "finished"]);
    assert!(store.tasks_by_status(HpcTaskStatus::Doing).await.unwrap().is_empty());

    store.set_task_failure_report("running", "path,error\n").await.unwrap();
    // The end its worker records deletes it, report and all; a stranger's does nothing.
    let end = TaskEnd {
        status: HpcTaskStatus::Success,
        message: None,
        end_time: now,
        progress: TaskProgress::default(),
        failure_report: None,
    };
    assert_eq!(store.finish_task("running", "w3", &end).await.unwrap(), Finished::NotHeld);
    assert_eq!(store.finish_task("running", "w1", &end).await.unwrap(), Finished::Deleted);
    assert_eq!(store.task("s1", "running").await.unwrap(), None);
    assert_eq!(store.task_failure_report("running").await.unwrap(), None);
    for t in &deleting {
        store.delete_task(&t.id).await.unwrap();
    }
    assert!(store.tasks_by_status(HpcTaskStatus::Deleting).await.unwrap().is_empty());
    assert_eq!(store.task("s1", "running").await.unwrap(), None);
    assert_eq!(store.task_failure_report("running").await.unwrap(), None);
}

async fn jobs(store: Store, _backend: &str) {
    let parent = job("job-1", None, JobStatus::Running, 100);
    store.insert_job(&parent).await.unwrap();
    let mut subs = vec![
        job("sub-b", Some("job-1"), JobStatus::Success, 101),
        job("sub-a", Some("job-1"), JobStatus::Running, 101),
        job("sub-c", Some("job-1"), JobStatus::Waiting, 100),
    ];
    subs[0].job_type = JobType::CreateObsTarget;
    subs[0].entities = json!({ "target_id": "t1", "nested": [1, 2, { "x": null }] });
    for s in &subs {
        store.insert_job(s).await.unwrap();
    }
    store.insert_job(&job("job-2", None, JobStatus::Waiting, 50)).await.unwrap();
    store.insert_job(&job("job-3", None, JobStatus::Success, 10)).await.unwrap();
    let err = store.insert_job(&parent).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");

    let (got, got_subs) = store.job("proj-a", "job-1").await.unwrap().unwrap();
    assert_eq!(got, parent);
    assert_eq!(got_subs, vec![subs[2].clone(), subs[1].clone(), subs[0].clone()], "by begin time, then id");
    assert_eq!(store.job("proj-b", "job-1").await.unwrap(), None, "another project's job");
    assert_eq!(store.job("proj-a", "nope").await.unwrap(), None);
    let (_, none) = store.job("proj-a", "job-2").await.unwrap().unwrap();
    assert!(none.is_empty());

    let unfinished = store.unfinished_jobs().await.unwrap();
    assert_eq!(ids(&unfinished, |j| &j.id), ["job-2", "job-1"], "parents only, oldest first");

    store
        .set_job_status("job-1", JobStatus::Failed, Some(200), Some("SFS.TURBO.9000"), Some("no capacity"))
        .await
        .unwrap();
    let (got, _) = store.job("proj-a", "job-1").await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.end_time, got.error_code.as_deref(), got.fail_reason.as_deref()),
        (JobStatus::Failed, Some(200), Some("SFS.TURBO.9000"), Some("no capacity"))
    );
    assert_eq!(ids(&store.unfinished_jobs().await.unwrap(), |j| &j.id), ["job-2"]);
    let err = store.set_job_status("nope", JobStatus::Success, None, None, None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

async fn namespace_index(store: Store, _backend: &str) {
    with_share(&store).await;
    store.insert_target(&target("s1", "t1", "data", 1)).await.unwrap();
    store.insert_target(&target("s1", "t2", "other", 2)).await.unwrap();

    // 1,234 entries (more than one multi-row statement) in byte-order-sensitive names.
    let dirs = ["", "A", "a", "a/b", "a b", "é", "日本"];
    let mut entries = Vec::new();
    for (d, dir) in dirs.iter().enumerate() {
        for i in 0..176 {
            let name = match i % 4 {
                0 => format!("file-{i:03}"),
                1 => format!("File-{i:03}"),
                2 => format!("ü-{i:03}"),
                _ => format!("x'\"; {i:03}"),
            };
            entries.push(entry(dir, &name, (d * 1000 + i) as u64));
        }
    }
    entries.push(entry("", "zzz", 1));
    entries.push(entry("", "zzz", 2));
    entries.push(entry("", "zzz", 3)); // the last row of a key wins
    entries.push(entry("", "zzz", 4));
    let mut odd = entry("a", "big", u64::MAX);
    odd.kind = "symlink".into();
    odd.mode = 0o120777;
    odd.uid = 4_294_967_294;
    odd.gid = 0;
    odd.etag = None;
    odd.state = EntryState::Local;
    odd.local_size = Some(u64::MAX - 1);
    odd.local_mtime_ns = Some(-1);
    odd.local_ctime_ns = Some(i64::MAX);
    odd.local_ino = Some(u64::MAX);
    entries.push(odd.clone());
    for batch in entries.chunks(1000) {
        store.upsert_entries("t1", batch).await.unwrap();
    }
    store.upsert_entries("t2", &entries[..10]).await.unwrap();
    store.upsert_entries("t1", &[]).await.unwrap();
    let total = 7 * 176 + 2;
    assert_eq!(store.count_entries("t1").await.unwrap(), total);
    assert_eq!(store.count_entries("t2").await.unwrap(), 10);

    assert_eq!(store.entry("t1", "a", "big").await.unwrap(), Some(odd));
    assert_eq!(store.entry("t1", "", "zzz").await.unwrap().unwrap().size, 4);
    assert_eq!(store.entry("t1", "a", "nope").await.unwrap(), None);
    assert_eq!(store.entry("t3", "a", "big").await.unwrap(), None);

    // An upsert replaces the row.
    let mut changed = entry("a/b", "file-000", 5);
    changed.state = EntryState::Cached;
    changed.local_size = Some(5);
    changed.local_ino = Some(42);
    store.upsert_entries("t1", std::slice::from_ref(&changed)).await.unwrap();
    assert_eq!(store.entry("t1", "a/b", "file-000").await.unwrap(), Some(changed));
    assert_eq!(store.count_entries("t1").await.unwrap(), total);

    // A directory, by name in byte order.
    let dir = store.entries_in_dir("t1", "a").await.unwrap();
    assert_eq!(dir.len(), 177);
    let names: Vec<&str> = dir.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names[0], "File-001");
    assert!(store.entries_in_dir("t1", "nope").await.unwrap().is_empty());

    // Keyset paging visits every row once, in (dir, name) byte order.
    let mut seen: Vec<(String, String)> = Vec::new();
    loop {
        let after = seen.last().map(|(d, n)| (d.as_str(), n.as_str()));
        let page = store.list_entries("t1", after, 100).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 100);
        seen.extend(page.into_iter().map(|e| (e.dir, e.name)));
    }
    assert_eq!(seen.len() as u64, total);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert_eq!(seen[0], (String::new(), "File-001".to_string()));
    let first = store.list_entries("t1", None, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    let after_dir = store.list_entries("t1", Some(("a", "\u{10ffff}")), 1).await.unwrap();
    assert_eq!(after_dir[0].dir, "a b", "'a b' < 'a/b' in bytes");

    // The cached stats an export compares, packed per directory: names
    // with the packing's own separators, digits, newlines and wide
    // characters come back exact, NULLs stay NULL, other kinds and states
    // are left out.
    let hostile = ["1:x", "a;b,c", "12345", ";;;", ",", "line\nbreak", "日本語:;", "é9,9;"];
    let mut rows = Vec::new();
    for (i, name) in hostile.iter().enumerate() {
        let mut e = entry("c:d;e", name, i as u64);
        e.state = EntryState::Cached;
        e.local_size = Some(i as u64);
        e.local_mtime_ns = Some(-(i as i64) * 1_000_000_007);
        e.local_ctime_ns = (i % 2 == 0).then_some(i as i64);
        e.local_ino = Some(u64::MAX - i as u64);
        rows.push(e);
    }
    let mut stub = entry("c:d;e", "stub", 9);
    stub.state = EntryState::Stub;
    let mut sub = entry("c:d;e", "sub", 0);
    sub.kind = "dir".into();
    sub.state = EntryState::Cached;
    store.upsert_entries("t1", &[rows.clone(), vec![stub, sub]].concat()).await.unwrap();
    let dirs = vec!["c:d;e".to_string(), "a/b".to_string(), "none".to_string()];
    let mut got = store.cached_stats_in_dirs("t1", &dirs).await.unwrap();
    got.sort_by(|a, b| (&a.dir, &a.name).cmp(&(&b.dir, &b.name)));
    let mut want: Vec<CachedStat> = rows
        .iter()
        .map(|e| CachedStat {
            dir: e.dir.clone(),
            name: e.name.clone(),
            size: e.local_size,
            mtime_ns: e.local_mtime_ns,
            ctime_ns: e.local_ctime_ns,
            ino: e.local_ino,
        })
        .collect();
    want.push(CachedStat {
        dir: "a/b".into(),
        name: "file-000".into(),
        size: Some(5),
        mtime_ns: None,
        ctime_ns: None,
        ino: Some(42),
    });
    want.sort_by(|a, b| (&a.dir, &a.name).cmp(&(&b.dir, &b.name)));
    assert_eq!(got, want);

    store.delete_entries("t1").await.unwrap();
    assert_eq!(store.count_entries("t1").await.unwrap(), 0);
    assert_eq!(store.count_entries("t2").await.unwrap(), 10);
}

async fn delete_share_cascades(store: Store, _backend: &str) {
    with_share(&store).await;
    store.insert_share(&share("proj-a", "s2", "keep", 101)).await.unwrap();
    for (share_id, t) in [("s1", "t1"), ("s1", "t2"), ("s2", "t3")] {
        store.insert_target(&target(share_id, t, t, 1)).await.unwrap();
        store.upsert_entries(t, &[entry("", "a", 1), entry("d", "b", 2)]).await.unwrap();
    }
    for (share_id, t) in [("s1", "k1"), ("s1", "k2"), ("s2", "k3")] {
        store.insert_task(&task(share_id, t, HpcTaskType::Import, HpcTaskStatus::Fail, 1)).await.unwrap();
        store.set_task_failure_report(t, "path,error\n").await.unwrap();
    }

    store.delete_share("s1").await.unwrap();
    store.delete_share("s1").await.unwrap();
    assert_eq!(store.share("proj-a", "s1").await.unwrap(), None);
    assert_eq!(store.list_targets("s1", None, 100).await.unwrap(), (vec![], 0));
    assert_eq!(store.list_tasks("s1", &TaskFilter::default()).await.unwrap(), (vec![], 0));
    for gone in ["t1", "t2"] {
        assert_eq!(store.count_entries(gone).await.unwrap(), 0);
    }
    for gone in ["k1", "k2"] {
        assert_eq!(store.task_failure_report(gone).await.unwrap(), None);
    }
    // The other share is untouched, and the name is free again.
    assert_eq!(store.list_targets("s2", None, 100).await.unwrap().1, 1);
    assert_eq!(store.count_entries("t3").await.unwrap(), 2);
    assert_eq!(store.list_tasks("s2", &TaskFilter::default()).await.unwrap().1, 1);
    assert!(store.task_failure_report("k3").await.unwrap().is_some());
    store.insert_share(&share("proj-a", "s1b", "cache-1", 102)).await.unwrap();
    store.insert_target(&target("s1b", "t1", "t1", 1)).await.unwrap();
}

async fn ten_thousand_tasks_list_fast(store: Store, backend: &str) {
    with_share(&store).await;
    store.insert_share(&share("proj-a", "s2", "cache-2", 101)).await.unwrap();
    let tasks: Vec<TaskRow> = (0..10_000)
        .map(|i| {
            let mut t = task(
                "s1",
                &format!("{i:08x}-task"),
                HpcTaskType::ALL[i % 4],
                HpcTaskStatus::Success,
                1_700_000_000 + i as i64,
            );
            t.attributes = (i % 2 == 0).then(|| TargetAttributes { uid: Some(1000), ..Default::default() });
            t.end_time = Some(t.start_time + 60);
            t.message = Some("ok".into());
            t
        })
        .collect();
    let started = Instant::now();
    store.insert_tasks_bulk(&tasks).await.unwrap();
    let insert = started.elapsed();
    // Tasks of another share do not count.
    let others: Vec<TaskRow> = (0..2_000)
        .map(|i| task("s2", &format!("o{i}"), HpcTaskType::Preload, HpcTaskStatus::Doing, 1_700_000_000 + i))
        .collect();
    store.insert_tasks_bulk(&others).await.unwrap();

    let filter = TaskFilter { task_type: Some(HpcTaskType::Preload), limit: 1000, ..Default::default() };
    // The first call, then the best of five: the best is what the query
    // costs, without the scheduling noise of the tests running alongside.
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (rows, count) = store.list_tasks("s1", &filter).await.unwrap();
        times.push(started.elapsed());
        assert_eq!((rows.len(), count), (1000, 2500));
        assert!(rows.iter().all(|t| t.task_type == HpcTaskType::Preload && t.share_id == "s1"));
        assert!(rows.windows(2).all(|w| w[0].start_time > w[1].start_time));
        assert_eq!(rows[0].id, format!("{:08x}-task", 9_998));
    }
    let list = *times.iter().min().unwrap();
    println!(
        "{backend}: 10,000 tasks: bulk insert {insert:?}; list_tasks(type=preload, limit 1000): first {:?}, best of 5 {list:?}",
        times[0]
    );
    // The 50 ms target is measured through HTTP on a release build
    // (BENCHMARKS.md); here, in a debug build beside other tests, only a
    // pathological plan (a scan per row, a missing index) fails.
    assert!(list.as_millis() < 250, "listing took {list:?}");
}
