//! One story of the checkpoint store, run against SQLite always and against
//! PostgreSQL when `FERRY_TEST_POSTGRES_URL` is set (CI sets it). Each
//! PostgreSQL run gets a fresh database that is dropped afterwards.

use std::collections::HashMap;

use ferry_store::{DoneCopy, DoneItem, Known, Store};
use sqlx::Connection;

async fn story(store: &Store) {
    // One run of a pair at a time: a second claim fails until the first ends.
    let lock = store.lock_run("key-1").await.unwrap().expect("a free pair can be claimed");
    assert!(store.lock_run("key-1").await.unwrap().is_none(), "a pair in progress cannot be claimed");
    let other = store.lock_run("key-2").await.unwrap().expect("another pair is free");
    lock.release().await;
    let again = store.lock_run("key-1").await.unwrap().expect("free again once released");
    drop(again);
    other.release().await;
    // Dropping a claim ends it too (a killed process drops everything).
    let mut freed = false;
    for _ in 0..50 {
        if let Some(l) = store.lock_run("key-1").await.unwrap() {
            l.release().await;
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(freed, "a dropped claim is released");

    let cp = store.begin_run("key-1", "/src", "s3://b/p").await.unwrap();
    assert!(!cp.resumed);
    // A sign of life moves the end of the unfinished run's active window.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store.touch_run(cp.run_id).await.unwrap();
    let again = store.begin_run("key-1", "/src", "s3://b/p").await.unwrap();
    assert_eq!((again.run_id, again.resumed, again.generation), (cp.run_id, true, cp.generation));
    let (started, seen) = again.interrupted.expect("an unfinished run knows when it was active");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(started + 20 <= seen && seen <= now && now - started < 60_000, "{started} {seen} {now}");
    let other = store.begin_run("key-2", "/src", "/dst").await.unwrap();
    assert_ne!(other.run_id, cp.run_id);
    // Finding a run (what a dry run does) changes nothing about it.
    assert_eq!(store.find_run("key-1").await.unwrap(), Some(cp.run_id));
    assert_eq!(store.find_run("never-ran").await.unwrap(), None);

    // More than one statement's worth of rows.
    let items: Vec<DoneItem> = (0..600)
        .map(|i| DoneItem {
            dir: if i % 2 == 0 { String::new() } else { "sub/dir".into() },
            name: format!("file-{i}"),
            size: i,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            ctime_ns: None,
            dst_version: (i % 3 == 0).then(|| format!("\"etag-{i}\"")),
            transferred_gen: (i % 4 == 0).then_some(cp.generation),
        })
        .collect();
    store.record_done(cp.run_id, &items).await.unwrap();
    // Recording an item again updates it instead of failing.
    store
        .record_done(
            cp.run_id,
            &[DoneItem {
                dir: String::new(),
                name: "file-0".into(),
                size: 7,
                mtime_ns: 9,
                ctime_ns: Some(11),
                dst_version: None,
                transferred_gen: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(store.done_count(cp.run_id).await.unwrap(), 600);
    let root = all_done(store, cp.run_id, "").await.unwrap();
    assert_eq!(root.len(), 300);
    assert_eq!(root["file-0"], k(7, 9, Some(11), None));
    assert_eq!(root["file-2"], k(2, 1_700_000_000_000_000_002, None, None));
    assert_eq!(root["file-6"], k(6, 1_700_000_000_000_000_006, None, Some("\"etag-6\"")));
    // Which run copied an item (none: found up to date) is kept, and recorded again.
    assert_eq!(root["file-4"].transferred_gen, Some(cp.generation));
    assert_eq!(root["file-0"].transferred_gen, None, "{:?}", root["file-0"]);
    let sub = all_done(store, cp.run_id, "sub/dir").await.unwrap();
    assert_eq!(sub.len(), 300);
    assert!(all_done(store, other.run_id, "").await.unwrap().is_empty(), "runs are separate");
    // Sizes of several directories' items at once (a preload's record of
    // what it copied), more directories than one query takes.
    let mut dirs: Vec<String> = (0..1200).map(|i| format!("none-{i}")).collect();
    dirs.insert(700, "sub/dir".into());
    dirs.push(String::new());
    let mut copies = store.done_in_dirs(cp.run_id, &dirs).await.unwrap();
    copies.sort();
    assert_eq!(copies.len(), 600);
    let copy = |dir: &str, name: &str, size, v: Option<&str>| DoneCopy {
        dir: dir.into(),
        name: name.into(),
        size,
        dst_version: v.map(str::to_string),
    };
    assert_eq!(copies[0], copy("", "file-0", 7, None));
    assert!(copies.contains(&copy("sub/dir", "file-599", 599, None)), "{:?}", &copies[300..302]);
    assert!(
        copies.contains(&copy("sub/dir", "file-597", 597, Some("\"etag-597\""))),
        "{:?}",
        &copies[300..302]
    );
    assert!(store.done_in_dirs(other.run_id, &dirs).await.unwrap().is_empty(), "runs are separate");
    // The same name twice in one batch (a file listed twice): the last counts.
    let twice = |size| DoneItem {
        dir: "sub/dir".into(),
        name: "file-1".into(),
        size,
        mtime_ns: 3,
        ctime_ns: None,
        dst_version: None,
        transferred_gen: None,
    };
    store.record_done(cp.run_id, &[twice(40), items[5].clone(), twice(41)]).await.unwrap();
    assert_eq!(all_done(store, cp.run_id, "sub/dir").await.unwrap()["file-1"], k(41, 3, None, None));
    assert_eq!(store.done_count(cp.run_id).await.unwrap(), 600);

    // Pages follow byte order, as listings do, whatever the database locale.
    let names = ["\u{e9}t\u{e9}", "Zeta", "alpha", "Beta", "a b", "a-b", "a.b", "\u{65e5}"];
    let items: Vec<DoneItem> = names
        .iter()
        .map(|n| DoneItem {
            dir: "mixed".into(),
            name: n.to_string(),
            size: 1,
            mtime_ns: 1,
            ctime_ns: None,
            dst_version: None,
            transferred_gen: None,
        })
        .collect();
    store.record_done(other.run_id, &items).await.unwrap();
    let page: Vec<String> =
        store.done_page(other.run_id, "mixed", "", 100).await.unwrap().into_iter().map(|(n, _)| n).collect();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(page, want);

    // Names with quotes and SQL metacharacters are data, not SQL.
    let odd = DoneItem {
        dir: "a'; DROP TABLE sync_done; --".into(),
        name: "b\"c".into(),
        size: 1,
        mtime_ns: 1,
        ctime_ns: Some(-5),
        dst_version: Some("v'1".into()),
        transferred_gen: None,
    };
    store.record_done(other.run_id, std::slice::from_ref(&odd)).await.unwrap();
    assert_eq!(
        all_done(store, other.run_id, &odd.dir).await.unwrap()["b\"c"],
        k(1, 1, Some(-5), Some("v'1"))
    );

    // A finished run is not resumed, but its known state stays; the next
    // run is a generation of its own, started now.
    store.finish_run(cp.run_id).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let next = store.begin_run("key-1", "/src", "s3://b/p").await.unwrap();
    let want = ferry_store::Checkpoint {
        run_id: cp.run_id,
        resumed: false,
        interrupted: None,
        generation: cp.generation + 1,
    };
    assert_eq!(next, want);
    assert_eq!(store.done_count(cp.run_id).await.unwrap(), 600);
    // ... and a run that starts again without finishing is resumed next
    // time, in its generation, active since its own start.
    let resumed = store.begin_run("key-1", "/src", "s3://b/p").await.unwrap();
    assert_eq!((resumed.resumed, resumed.generation), (true, next.generation));
    let (second_start, _) = resumed.interrupted.unwrap();
    assert!(second_start >= started + 20, "the window starts at the second run: {second_start} {started}");
    store.forget_run(cp.run_id).await.unwrap();
    assert_eq!(store.done_count(cp.run_id).await.unwrap(), 0);
    assert!(!store.begin_run("key-1", "/src", "s3://b/p").await.unwrap().resumed);
}

#[tokio::test]
async fn story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    // Opening only what exists creates nothing.
    let url = format!("sqlite://{}", path.display());
    assert!(Store::connect_existing(&url).await.unwrap().is_none());
    assert!(!path.exists());
    let store = Store::open_sqlite_file(&path).await.unwrap();
    story(&store).await;
    assert!(Store::connect_existing(&url).await.unwrap().is_some());
    // Reopening runs migrations again without harm and keeps the data.
    let cp = store.begin_run("persist", "a", "b").await.unwrap();
    drop(store);
    let store = Store::open_sqlite_file(&path).await.unwrap();
    assert!(store.begin_run("persist", "a", "b").await.unwrap().resumed);
    assert!(cp.run_id > 0);
}

#[tokio::test]
async fn story_on_postgres() {
    let Ok(base) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("FERRY_TEST_POSTGRES_URL not set: PostgreSQL story not run");
        return;
    };
    let name = format!("ferry_test_{:016x}", rand::random::<u64>());
    let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect to FERRY_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let url = match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{name}"),
        None => panic!("FERRY_TEST_POSTGRES_URL needs a database name"),
    };
    {
        let store = Store::connect(&url).await.unwrap();
        story(&store).await;
        // A second connect finds the schema migrated already.
        let again = Store::connect(&url).await.unwrap();
        assert!(again.begin_run("key-2", "/src", "/dst").await.unwrap().resumed);
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
}

fn k(size: u64, mtime_ns: i64, ctime_ns: Option<i64>, dst_version: Option<&str>) -> Known {
    Known { size, mtime_ns, ctime_ns, dst_version: dst_version.map(str::to_string), transferred_gen: None }
}

/// A directory's done set read page by page (7 at a time), checking that
/// pages come in byte order of the name.
async fn all_done(
    store: &Store,
    run_id: i64,
    dir: &str,
) -> Result<HashMap<String, Known>, ferry_store::Error> {
    let (mut out, mut after) = (HashMap::new(), String::new());
    loop {
        let page = store.done_page(run_id, dir, &after, 7).await?;
        for (name, known) in &page {
            assert!(name.as_bytes() > after.as_bytes(), "{name:?} after {after:?}");
            after = name.clone();
            out.insert(name.clone(), known.clone());
        }
        if page.len() < 7 {
            return Ok(out);
        }
    }
}

/// A PostgreSQL store that cannot be opened says why: the server's own
/// error at once, a refused connection after the wait for a server still
/// starting (not the pool's "timed out").
#[tokio::test]
async fn postgres_connect_errors_name_their_cause() {
    let started = std::time::Instant::now();
    let Err(err) = Store::connect("postgres://postgres@127.0.0.1:1/x").await else {
        panic!("nothing listens on port 1")
    };
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains("pool timed out"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());

    let Ok(base) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("FERRY_TEST_POSTGRES_URL not set: the server's own error not checked");
        return;
    };
    let missing = match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/ferry_no_such_database"),
        None => panic!("FERRY_TEST_POSTGRES_URL needs a database name"),
    };
    let started = std::time::Instant::now();
    let Err(err) = Store::connect(&missing).await else { panic!("the database does not exist") };
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(text.contains("does not exist"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "answered at once: {:?}",
        started.elapsed()
    );
}
