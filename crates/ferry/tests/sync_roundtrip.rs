//! `ferry sync` end to end: real binary, real S3 server over HTTP.

mod common;

use common::*;
use ferry_testkit::OpClass;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_to_s3_to_fs_keeps_bytes_and_metadata() {
    let s3 = S3Server::start(&["bkt-one", "bkt-two"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    // s3s-fs cannot store metadata for keys with a 255-byte component (its
    // metadata file name embeds the key), so this tree keeps names shorter.
    make_tree(&src, false);
    let env = s3.env();
    // Access times as listed travel too (file-atime), set apart from mtimes.
    let mut atimes = Vec::new();
    for (i, p) in all_names(&src).into_iter().filter(|p| p.is_file() && !p.is_symlink()).enumerate() {
        let ns = 1_650_000_000_000_000_000 + i as i64 * 1_000_000_007;
        let f = std::fs::File::open(&p).unwrap();
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64)),
        )
        .unwrap();
        atimes.push((p.strip_prefix(&src).unwrap().to_path_buf(), ns));
    }

    let up = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-one/data/", "--json"]);
    assert_eq!(up.code, 0, "{}\n{}", up.stdout, up.stderr);
    // Reading the sources left their access times alone (O_NOATIME; this
    // file system is mounted relatime, which would move atimes this old).
    let atime = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt as _;
        let md = std::fs::metadata(p).unwrap();
        md.atime() * 1_000_000_000 + md.atime_nsec()
    };
    for (rel, ns) in &atimes {
        assert_eq!(atime(&src.join(rel)), *ns, "{}: source atime", rel.display());
    }
    let r = up.json();
    assert_eq!(r["failed"], 0);
    let listed = r["listed"].as_u64().unwrap();
    assert_eq!(
        listed,
        r["transferred"].as_u64().unwrap() + r["skipped"].as_u64().unwrap() + r["excluded"].as_u64().unwrap(),
        "counters reconcile"
    );
    let groups = r["hard_links"].as_array().unwrap();
    assert!(groups.is_empty());

    // The objects carry the FSx-style metadata, as other tools read it.
    {
        use std::os::unix::fs::MetadataExt;
        let op = s3_operator(&s3, "bkt-one", false);
        for (key, local) in [("data/plain.txt", "plain.txt"), ("data/link-to-plain", "link-to-plain")] {
            let md = op.stat(key).await.unwrap();
            let got: std::collections::HashMap<String, String> = md
                .user_metadata()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let l = std::fs::symlink_metadata(src.join(local)).unwrap();
            let want = [
                ("file-permissions", format!("{:07o}", l.mode())),
                ("file-owner", l.uid().to_string()),
                ("file-group", l.gid().to_string()),
                ("file-mtime", format!("{}ns", l.mtime() * 1_000_000_000 + l.mtime_nsec())),
            ];
            for (k, v) in want {
                assert_eq!(got.get(k), Some(&v), "{key}: x-amz-meta-{k} in {got:?}");
            }
        }
        let link = op.read("data/link-to-plain").await.unwrap().to_vec();
        assert_eq!(link, b"plain.txt", "a symlink's object holds its target");
    }

    // Verification reads every copy back, without moving its atime either.
    let down_args =
        ["sync", "s3://bkt-one/data", back.to_str().unwrap(), "--json", "--verify", "transferred"];
    let down = ferry(&state, &env, &down_args);
    assert_eq!(down.code, 0, "{}\n{}", down.stdout, down.stderr);
    // Before anything reads the copies (which may move their atimes).
    for (rel, ns) in &atimes {
        assert_eq!(atime(&back.join(rel)), *ns, "{}: atime", rel.display());
    }
    assert!(atimes.len() >= 3);
    let (a, b) = (snapshot(&src, false), snapshot(&back, false));
    assert_same(&a, &b);

    // A second run changes nothing and moves no bytes.
    // (s3s-fs does not list directory markers, so the empty directory's
    // marker is written again; on S3 proper it is listed and skipped.)
    let again = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-one/data/", "--json"]).json();
    assert_eq!(again["transferred_bytes"], 0, "{again}");
    assert!(again["transferred"].as_u64().unwrap() <= 1, "{again}");
    assert_eq!(again["failed"], 0, "{again}");

    // s3 → s3 keeps the metadata too. Both buckets are in one store: it
    // copies the files itself, and no content is read.
    let gets = s3.counts().get;
    let s2s = ferry(&state, &env, &["sync", "s3://bkt-one/data", "s3://bkt-two/copy", "--json"]);
    assert_eq!(s2s.code, 0, "{}\n{}", s2s.stdout, s2s.stderr);
    assert_eq!(s2s.json()["copied_in_store"], 10, "{}", s2s.stdout);
    assert_eq!(s3.counts().get, gets, "no content is read");
    let back2 = tmp.path().join("back2");
    assert_eq!(ferry(&state, &env, &["sync", "s3://bkt-two/copy", back2.to_str().unwrap()]).code, 0);
    assert_same(&a, &snapshot(&back2, false));
}

/// Between two buckets of one store, files are copied by the store
/// (CopyObject; UploadPartCopy above `--copy-cutoff`), with their
/// attributes, pinned to the version listed; a store that refuses such
/// copies gets them through ferry instead, and `--no-store-copy` asks for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_between_buckets_of_one_store_are_made_by_the_store() {
    let s3 = S3Server::start(&["one", "two"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    make_tree(&src, false);
    let env = s3.env();
    let up = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://one/data", "--json"]);
    assert_eq!(up.code, 0, "{}\n{}", up.stdout, up.stderr);
    let want = snapshot(&src, false);
    let download = |from: &str, name: &str| {
        let to = tmp.path().join(name);
        let r = ferry(&state, &env, &["sync", from, to.to_str().unwrap(), "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        snapshot(&to, false)
    };

    // dir/big.bin (9 MiB) goes in two parts of 5 MiB.
    let (gets, copies) = (s3.counts().get, s3.copies());
    let args =
        ["sync", "s3://one/data", "s3://two/copy", "--json", "--copy-cutoff", "5M", "--part-size", "5M"];
    let r = ferry(&state, &env, &args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_reconciles(&j);
    let items = want.len() as u64;
    assert_eq!(
        (j["transferred"].as_u64(), j["copied_in_store"].as_u64()),
        (Some(items + 3), Some(items)),
        "{j}"
    );
    assert_eq!(
        j["transferred_bytes"],
        want.values().filter(|v| v.0 == 'f').map(|v| v.1.len()).sum::<usize>()
    );
    assert_eq!(s3.counts().get, gets, "no content is read");
    assert_eq!(s3.copies() - copies, items - 1 + 2, "a CopyObject each, but two UploadPartCopy for big.bin");
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    assert_same(&want, &download("s3://two/copy", "back"));
    // A part that cannot be copied fails its item: no part after it is
    // sent, and the upload is aborted (big.bin: two parts, one at a time).
    s3.faults().fail_part_copies(Some(400));
    let copies = s3.copies();
    let args = ["sync", "s3://one/data/dir", "s3://two/partless", "--json", "--copy-cutoff", "5M"];
    let r = ferry(&state, &env, &[&args[..], &["--part-size", "5M", "--part-concurrency", "1"]].concat());
    s3.faults().clear();
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["failed"].as_u64(), j["failures"][0]["path"].as_str()), (Some(1), Some("big.bin")), "{j}");
    assert_eq!(s3.copies() - copies, 3 + 1, "three small objects, and big.bin's first part only");
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());

    // --verify transferred reads both sides of each copy back.
    let gets = s3.counts().get;
    let r = ferry(
        &state,
        &env,
        &["sync", "s3://one/data", "s3://two/verified", "--verify", "transferred", "--json"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["copied_in_store"], items, "{}", r.stdout);
    assert_eq!(s3.counts().get - gets, 2 * items, "source and copy of each item read");

    // A completion whose answer is lost (its retry finds the upload gone)
    // is found to have landed: the parts are not copied again. Copies in
    // parts ride out 503s.
    for (case, dst) in [("lost answer", "s3://two/lost"), ("503s", "s3://two/throttled")] {
        if case == "lost answer" {
            s3.faults().lose_complete_answers(1);
        } else {
            s3.faults().set_error_rate(OpClass::Put, 300, 503);
        }
        let copies = s3.copies();
        let args = ["sync", "s3://one/data/dir", dst, "--json", "--copy-cutoff", "5M", "--part-size", "5M"];
        let r = ferry(&state, &env, &args);
        s3.faults().clear();
        assert_eq!(r.code, 0, "{case}: {}\n{}", r.stdout, r.stderr);
        let j = r.json();
        assert_eq!(
            (j["copied_in_store"].as_u64(), j["warnings"].to_string()),
            (Some(4), "[]".into()),
            "{case}"
        );
        assert!(s3.open_uploads().is_empty(), "{case}: {:?}", s3.open_uploads());
        if case == "lost answer" {
            assert_eq!(s3.copies() - copies, 2 + 3, "{case}: two parts, and three small objects, once each");
        }
        let key = format!("{}/big.bin", dst.trim_start_matches("s3://two/"));
        let big = s3_operator(&s3, "two", false).read(&key).await.unwrap().to_vec();
        assert!(big == want["dir/big.bin"].1, "{case}: big.bin copied whole");
    }

    // The copies kept their times: nothing is copied again.
    let again = ferry(&state, &env, &["sync", "s3://one/data", "s3://two/copy", "--json"]).json();
    assert_eq!((again["transferred"].as_u64(), again["failed"].as_u64()), (Some(0), Some(0)), "{again}");

    // A copy is of one version, with that version's attributes: f5 is
    // rewritten (new content, new mtime) once its attributes were read and
    // its copy arrived, held 500 ms by the store. The copy is pinned to the
    // ETag read (s3s-fs lists none), so it fails, and the item's next
    // attempt copies the new version whole. (Stores that list ETags pin
    // copies to the listed version: tests/sync_faults.rs.)
    let (one, two) = (s3_operator(&s3, "one", false), s3_operator(&s3, "two", false));
    let put = |key: String, body: &'static str, mtime_ns: i64| {
        let meta = [("file-mtime".to_string(), format!("{mtime_ns}ns"))];
        let one = one.clone();
        async move { one.write_with(&key, body).user_metadata(meta).await }
    };
    for i in 0..6 {
        put(format!("changing/f{i}"), "version one", 1_600_000_000_000_000_000).await.unwrap();
    }
    s3.faults().set_copy_delay(std::time::Duration::from_millis(500));
    let copies = s3.copies();
    let args = ["sync", "s3://one/changing", "s3://two/changing", "--json", "--threads", "1"];
    let child = ferry_cmd(&state, &env).args(args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while s3.copies() < copies + 6 && started.elapsed() < std::time::Duration::from_secs(30) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    put("changing/f5".into(), "version two!", 1_700_000_000_000_000_000).await.unwrap();
    let r = Run::of(child.wait_with_output().unwrap());
    s3.faults().clear();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.copies() - copies, 7, "f5's first copy failed and was made again");
    let f5 = two.stat("changing/f5").await.unwrap();
    let mtime = f5.user_metadata().and_then(|m| m.get("file-mtime").map(str::to_string));
    assert_eq!(two.read("changing/f5").await.unwrap().to_vec(), b"version two!");
    assert_eq!(mtime.as_deref(), Some("1700000000000000000ns"), "the new version's attributes");

    // A store that does not copy objects itself: through ferry, with a warning.
    s3.faults().refuse_copies(true);
    let gets = s3.counts().get;
    let r = ferry(&state, &env, &["sync", "s3://one/data", "s3://two/streamed", "--json"]);
    s3.faults().clear();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["copied_in_store"], 0, "{j}");
    assert!(j["warnings"].to_string().contains("does not copy objects itself"), "{j}");
    assert!(s3.counts().get - gets >= 8, "the contents were read");
    assert_same(&want, &download("s3://two/streamed", "back-streamed"));

    // --no-store-copy: through ferry without asking.
    let copies = s3.copies();
    let r = ferry(&state, &env, &["sync", "s3://one/data", "s3://two/own", "--json", "--no-store-copy"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!((r.json()["copied_in_store"].as_u64(), s3.copies()), (Some(0), copies), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_to_fs_and_file_bucket_keep_empty_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    make_tree(&src, true);
    let r = ferry(&state, &[], &["sync", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(&snapshot(&src, true), &snapshot(&dst, true));

    // Through a file:// bucket: directories, empty ones included, survive.
    // (It holds names of up to 246 bytes, tried below; this tree has
    // shorter ones.)
    let src = tmp.path().join("src-short");
    make_tree(&src, false);
    let bucket = tmp.path().join("bucket");
    std::fs::create_dir(&bucket).unwrap();
    let url = format!("file://{}", bucket.display());
    let r = ferry(&state, &[], &["sync", src.to_str().unwrap(), &url]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let back = tmp.path().join("back");
    let r = ferry(&state, &[], &["sync", &url, back.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(&snapshot(&src, true), &snapshot(&back, true));
    assert!(back.join("empty dir").is_dir());
    // Directory attributes too (kept in the bucket directories' xattrs).
    assert_eq!(dir_attrs(&back), dir_attrs(&src), "directory mode/uid/gid/mtime through file://");

    // Names a file:// store cannot stage: that file fails with the reason,
    // the rest is copied, nothing is left in the staging directory.
    let long = tmp.path().join("long");
    std::fs::create_dir(&long).unwrap();
    let (fits, too_long) = ("f".repeat(246), "t".repeat(247));
    std::fs::write(long.join(&fits), "fits").unwrap();
    std::fs::write(long.join(&too_long), "too long").unwrap();
    // A dry run says so too.
    let r =
        ferry(&state, &[], &["sync", long.to_str().unwrap(), &format!("{url}/long"), "--json", "--dry-run"]);
    assert_eq!((r.code, r.json()["failed"].as_u64()), (1, Some(1)), "{}\n{}", r.stdout, r.stderr);
    let r = ferry(&state, &[], &["sync", long.to_str().unwrap(), &format!("{url}/long"), "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["transferred"].as_u64(), j["failed"].as_u64()), (Some(1), Some(1)), "{j}");
    let why = j["failures"][0]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("holds names of up to 246 bytes") && why.contains("this one has 247"), "{j}");
    assert_eq!(std::fs::read(bucket.join("long").join(&fits)).unwrap(), b"fits");
    assert!(!bucket.join("long").join(&too_long).exists());
    let staged = bucket.join(".ferry-staging");
    assert!(!staged.exists() || std::fs::read_dir(&staged).unwrap().next().is_none(), "staging left");
}

/// Temporary credentials: `AWS_SESSION_TOKEN` goes with every request,
/// under the signature (the server checks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_goes_with_every_request() {
    let s3 = S3Server::start(&["bkt-sts"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), "temporary").unwrap();
    let mut env = s3.env();
    env.push(("AWS_SESSION_TOKEN".into(), "session-token-1".into()));
    // With every log line on, no secret is among them.
    env.push(("FERRY_LOG".into(), "trace".into()));
    for (from, to) in [(src.to_str().unwrap(), "s3://bkt-sts/p"), ("s3://bkt-sts/p", back.to_str().unwrap())]
    {
        let r = ferry(&state, &env, &["sync", from, to]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("TRACE"), "logs on");
        for secret in [s3.secret_key(), "session-token-1"] {
            assert!(!r.stderr.contains(secret), "{secret} logged:\n{}", r.stderr);
        }
    }
    assert_eq!(std::fs::read(back.join("d/f")).unwrap(), b"temporary");
    let tokens = s3.session_tokens();
    assert!(tokens.len() >= 4, "{tokens:?}");
    assert!(tokens.iter().all(|t| t.as_deref() == Some("session-token-1")), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_copies_keep_directory_and_symlink_mtimes() {
    let s3 = S3Server::start(&["bkt"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    make_tree(&src, false);
    // Directory times last: creating their content moved them.
    let dirs = ["dir", "dir/sub", "empty dir", "\u{65e5}\u{672c}"];
    for (i, d) in dirs.iter().enumerate() {
        set_mtime(&src.join(d), 1_500_000_000_123_456_789 + i as i64 * 86_400_000_000_000);
    }
    set_link_mtime(&src.join("link-to-plain"), 1_400_000_000_987_654_321);
    let want = dir_mtimes(&src);
    assert_eq!(want.len(), dirs.len());

    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let r = ferry(&state, &[], &["sync", s, d, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(dir_mtimes(&dst), want, "directory mtimes after the copy");
    assert_same(&snapshot(&src, false), &snapshot(&dst, false)); // symlink mtimes included

    // Writing and deleting inside a directory moves its mtime: the next run
    // (nothing else to copy) puts it back, after its deletions.
    std::fs::write(dst.join("dir/sub/extra.txt"), "x").unwrap();
    std::fs::remove_file(dst.join("dir/empty.dat")).unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--delete", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["deleted"], 1, "{}", r.stdout);
    assert_eq!(dir_mtimes(&dst), want, "directory mtimes after changes inside");
    assert_same(&snapshot(&src, false), &snapshot(&dst, false));

    // A chmod or chown of a source directory reaches its copy.
    let sub = src.join("dir/sub");
    let sub_mtime = dir_mtimes(&src)["dir/sub"];
    std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&sub, Some(1234), Some(5678)).unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--json", "--dry-run"]);
    assert_eq!(plan_lines(&r.json()), ["update dir/sub (attributes differ)"], "{}", r.stdout);
    assert_ne!(dir_attrs(&dst), dir_attrs(&src), "a dry run changes nothing");
    let r = ferry(&state, &[], &["sync", s, d, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(dir_attrs(&dst), dir_attrs(&src), "directory attributes after a chmod/chown");
    assert_eq!(dir_mtimes(&dst)["dir/sub"], sub_mtime);

    // Through an object store the symlink keeps its time as well.
    let env = s3.env();
    assert_eq!(ferry(&state, &env, &["sync", s, "s3://bkt/t"]).code, 0);
    let back = tmp.path().join("back");
    let r = ferry(&state, &env, &["sync", "s3://bkt/t", back.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let link_mtime = |root: &std::path::Path| snapshot(root, false)["link-to-plain"].5;
    assert_eq!(link_mtime(&back), 1_400_000_000_987_654_321);
}

/// An empty tree copied to a bucket prefix leaves the prefix's marker, with
/// the root's attributes, so that copying it back finds an empty directory
/// rather than nothing (which is refused: see
/// `an_object_key_as_the_source_is_one_file_and_a_missing_prefix_is_refused`).
/// On moto: s3s-fs does not list markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_tree_round_trips_through_a_bucket_prefix() {
    let Some(moto) = common::emulators::Moto::start(&["bkt"]).await else { return };
    let env = moto.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt/empty"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ferry(&state, &env, &["sync", "s3://bkt/empty", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["listed"], 0, "{}", r.stdout);
    assert_eq!(std::fs::read_dir(&back).unwrap().count(), 0);
    // The marker is written once.
    let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt/empty", "--json", "-v"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ferry(&state, &env, &["ls", "-R", "s3://bkt"]);
    assert_eq!(r.stdout.lines().filter(|l| l.contains("empty")).count(), 1, "{}", r.stdout);
    // `ls` shows it as an empty directory.
    let r = ferry(&state, &env, &["ls", "s3://bkt/empty"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);
    // Nothing under a prefix is still refused.
    let r = ferry(&state, &env, &["sync", "s3://bkt/nope", back.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = ferry(&state, &env, &["ls", "s3://bkt/nope"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// Directory attributes ride on `dir/` marker objects (as FSx for Lustre and
/// s3fs keep them). s3s-fs drops metadata on markers and does not list them,
/// so this runs on moto, which behaves as S3 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_keep_their_attributes_through_a_bucket() {
    let Some(moto) = common::emulators::Moto::start(&["bkt"]).await else { return };
    let env = moto.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    make_tree(&src, false);
    let dirs = ["dir", "dir/sub", "empty dir", "\u{65e5}\u{672c}"];
    for (i, (d, mode)) in dirs.iter().zip([0o750, 0o700, 0o1777, 0o711]).enumerate() {
        let p = src.join(d);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(3000 + i as u32), Some(4000 + i as u32)).unwrap();
    }
    // Times last: the changes above moved them.
    for (i, d) in dirs.iter().enumerate() {
        set_mtime(&src.join(d), 1_500_000_000_123_456_789 + i as i64 * 86_400_000_000_000);
    }
    let want = dir_attrs(&src);
    assert_eq!(want.len(), dirs.len());

    let s = src.to_str().unwrap();
    let r = ferry(&state, &env, &["sync", s, "s3://bkt/t", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let back = tmp.path().join("back");
    let r = ferry(&state, &env, &["sync", "s3://bkt/t", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(dir_attrs(&back), want, "directory mode/uid/gid/mtime after fs -> s3 -> fs");
    assert_same(&snapshot(&src, true), &snapshot(&back, true));
    // `ls -R` shows each directory once, marker or not.
    let ls = |loc: &str| {
        let r = ferry(&state, &env, &["ls", "-R", loc]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut v: Vec<String> =
            r.stdout.lines().map(|l| l.trim_start().split_once(' ').unwrap().1.into()).collect();
        v.sort();
        v
    };
    assert_eq!(ls("s3://bkt/t"), ls(s));

    // Bucket to bucket, the markers keep the attributes.
    let r = ferry(&state, &env, &["sync", "s3://bkt/t", "s3://bkt/u", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let back2 = tmp.path().join("back2");
    let r = ferry(&state, &env, &["sync", "s3://bkt/u", back2.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(dir_attrs(&back2), want, "directory attributes after s3 -> s3 -> fs");

    // A directory changed locally gets the stored attributes back on the next run.
    std::fs::write(back.join("dir/sub/extra.txt"), "x").unwrap();
    std::fs::set_permissions(back.join("dir/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    std::os::unix::fs::chown(back.join("empty dir"), Some(0), Some(0)).unwrap();
    let r = ferry(&state, &env, &["sync", "s3://bkt/t", back.to_str().unwrap(), "--delete", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["deleted"], 1, "{}", r.stdout);
    assert_eq!(dir_attrs(&back), want, "directory attributes after changes inside");

    // A chmod or chown of an uploaded directory reaches its marker; an
    // unchanged tree rewrites none.
    let r = ferry(&state, &env, &["sync", s, "s3://bkt/t", "--json"]);
    assert_eq!(r.json()["transferred"], 0, "{}", r.stdout);
    let mtime =
        |p: &std::path::Path| dir_attrs(p.parent().unwrap())[p.file_name().unwrap().to_str().unwrap()].3;
    let keep = mtime(&src.join("dir/sub"));
    std::fs::set_permissions(src.join("dir/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o705))
        .unwrap();
    std::os::unix::fs::chown(src.join("empty dir"), Some(77), Some(88)).unwrap();
    assert_eq!(mtime(&src.join("dir/sub")), keep, "a chmod leaves the mtime");
    let r = ferry(&state, &env, &["sync", s, "s3://bkt/t", "--json", "--dry-run"]);
    assert_eq!(
        plan_lines(&r.json()),
        ["update dir/sub (attributes differ)", "update empty dir (attributes differ)"],
        "{}",
        r.stdout
    );
    assert_eq!(r.json()["transferred"], 2, "{}", r.stdout);
    let r = ferry(&state, &env, &["sync", s, "s3://bkt/t", "--json"]);
    assert_eq!(
        r.code, 0,
        "{}
{}",
        r.stdout, r.stderr
    );
    assert_eq!(r.json()["transferred"], 2, "{}", r.stdout);
    let back3 = tmp.path().join("back3");
    let r = ferry(&state, &env, &["sync", "s3://bkt/t", back3.to_str().unwrap()]);
    assert_eq!(
        r.code, 0,
        "{}
{}",
        r.stdout, r.stderr
    );
    assert_eq!(dir_attrs(&back3), dir_attrs(&src), "directory attributes after a chmod and a chown");
    let r = ferry(&state, &env, &["sync", s, "s3://bkt/t", "--json"]);
    assert_eq!(r.json()["transferred"], 0, "{}", r.stdout);

    // --files-from gives the directories above the listed files their
    // markers, with the source's attributes.
    let list = tmp.path().join("list");
    std::fs::write(&list, "dir/empty.dat\n").unwrap();
    let r =
        ferry(&state, &env, &["sync", s, "s3://bkt/ff", "--files-from", list.to_str().unwrap(), "--json"]);
    assert_eq!((r.code, r.json()["transferred"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    let back4 = tmp.path().join("back4");
    let r = ferry(&state, &env, &["sync", "s3://bkt/ff", back4.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(dir_attrs(&back4)["dir"], dir_attrs(&src)["dir"], "the marker carries the attributes");
}

/// `azblob://` for real, on Azurite: Azure metadata names must be C#
/// identifiers, so the keys go as `file_mtime`; Azure GET responses carry no
/// metadata that OpenDAL reads, so attributes come from a HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blob_round_trip_keeps_bytes_and_metadata() {
    let Some(az) = common::emulators::Azurite::start(&["ctr"]).await else { return };
    let env = az.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    make_tree(&src, false);
    std::fs::set_permissions(src.join("dir/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o750))
        .unwrap();
    set_mtime(&src.join("dir/sub"), 1_500_000_000_123_456_789);
    let s = src.to_str().unwrap();

    let up = ferry(&state, &env, &["sync", s, "azblob://ctr/data", "--json"]);
    assert_eq!(up.code, 0, "{}\n{}", up.stdout, up.stderr);
    assert_eq!(up.json()["failed"], 0);
    let down = ferry(&state, &env, &["sync", "azblob://ctr/data", back.to_str().unwrap(), "--json"]);
    assert_eq!(down.code, 0, "{}\n{}", down.stdout, down.stderr);
    assert_same(&snapshot(&src, true), &snapshot(&back, true));
    assert_eq!(dir_attrs(&back), dir_attrs(&src), "directory attributes");

    // A wrong account key: the fix names Azure's variables, not AWS's.
    let mut wrong = env.clone();
    wrong.retain(|(k, _)| k != "AZURE_STORAGE_KEY");
    wrong.push(("AZURE_STORAGE_KEY".into(), format!("{}==", "A".repeat(86))));
    let r = ferry(&state, &wrong, &["sync", "azblob://ctr/data", tmp.path().join("no").to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("check AZURE_STORAGE_ACCOUNT / AZURE_STORAGE_KEY"), "{}", r.stderr);
    assert!(!tmp.path().join("no").exists(), "nothing made at the destination");

    // Nothing to do the second time, either way, by size+mtime or checksum.
    for (from, to, extra) in
        [(s, "azblob://ctr/data", None), ("azblob://ctr/data", back.to_str().unwrap(), Some("--checksum"))]
    {
        let mut args = vec!["sync", from, to, "--json"];
        args.extend(extra);
        let r = ferry(&state, &env, &args);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.json()["transferred_bytes"], 0, "{}", r.stdout);
    }
}

/// `gcs://` for real, on gcp-storage-emulator (anonymous, as for a public
/// bucket). Attributes come from a HEAD: OpenDAL reads no metadata on GCS GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_round_trip_keeps_bytes_and_metadata() {
    let Some(gcs) = common::emulators::Gcs::start("gbkt").await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    make_tree(&src, false);
    // The emulator has no XML multipart upload, which OpenDAL uses for
    // objects of more than one part.
    std::fs::remove_file(src.join("dir/big.bin")).unwrap();
    std::fs::set_permissions(src.join("dir/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o750))
        .unwrap();
    set_mtime(&src.join("dir/sub"), 1_500_000_000_123_456_789);
    let (s, b, url) = (src.to_str().unwrap(), back.to_str().unwrap(), gcs.url("gbkt/data"));

    for (from, to) in [(s, url.as_str()), (url.as_str(), b)] {
        let r = ferry(&state, &[], &["sync", from, to, "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.json()["failed"], 0, "{}", r.stdout);
    }
    assert_same(&snapshot(&src, true), &snapshot(&back, true));
    assert_eq!(dir_attrs(&back), dir_attrs(&src), "directory attributes");
    let r = ferry(&state, &[], &["sync", s, &url, "--json"]);
    assert_eq!(r.json()["transferred_bytes"], 0, "{}", r.stdout);
}

/// A level larger than `--level-in-memory` (a flat prefix of millions of
/// keys, here shrunk to 3) is sorted through temporary files; copies,
/// no-op reruns and deletions come out exactly as with an in-memory sort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_levels_sorted_through_temporary_files_give_the_same_result() {
    let s3 = S3Server::start(&["bkt"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    // (s3s-fs does not list directory markers: empty directories do not
    // come back from it, so files are compared.)
    make_tree(&src, false);
    let flat = src.join("flat");
    std::fs::create_dir(&flat).unwrap();
    for i in 0..60u32 {
        let name = format!("{}-{}", ["x", "a", "\u{e9}", "A b", "a.b"][i as usize % 5], (i * 37) % 60);
        std::fs::write(flat.join(name), i.to_string()).unwrap();
    }
    let (s, b) = (src.to_str().unwrap(), back.to_str().unwrap());
    let sync = |args: &[&str]| {
        let mut all = vec!["sync"];
        all.extend(args);
        all.extend(["--json", "--level-in-memory", "3"]);
        let r = ferry(&state, &env, &all);
        assert_eq!(r.code, 0, "{args:?}\n{}\n{}", r.stdout, r.stderr);
        r.json()
    };
    sync(&[s, "s3://bkt/t"]);
    let down = ferry_cmd(&state, &env)
        .env("FERRY_LOG", "ferry_storage=debug")
        .args(["sync", "s3://bkt/t", b, "--level-in-memory", "3"])
        .output()
        .unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(String::from_utf8_lossy(&down.stderr).contains("sorted through temporary files"));
    assert_same(&snapshot(&src, false), &snapshot(&back, false));

    // (The empty directory's marker, unlisted by s3s-fs, is written again.)
    let again = sync(&[s, "s3://bkt/t", "--delete"]);
    assert_eq!(
        (again["transferred_bytes"].as_u64(), again["deleted"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    assert!(again["transferred"].as_u64().unwrap() <= 1, "{again}");

    // Five new files, five gone: exactly those move, at both ends.
    for i in 0..5 {
        std::fs::write(flat.join(format!("new-{i}")), "n").unwrap();
        std::fs::remove_file(flat.join(format!("x-{}", (i * 5 * 37) % 60))).unwrap();
    }
    for (from, to) in [(s, "s3://bkt/t"), ("s3://bkt/t", b)] {
        let r = sync(&[from, to, "--delete"]);
        assert_eq!(
            (r["transferred_bytes"].as_u64(), r["deleted"].as_u64()),
            (Some(5), Some(5)),
            "{from} -> {to}: {r}"
        );
    }
    assert_same(&snapshot(&src, false), &snapshot(&back, false));
}

/// `ferry ls`: one level or all of it, locally and in a bucket, the same
/// entries either way; the totals; and a level larger than what is sorted
/// in memory still comes out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_lists_a_level_or_the_tree_with_totals() {
    let s3 = S3Server::start(&["bkt"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    std::fs::write(src.join("d/sub/b"), "bb").unwrap();
    std::fs::write(src.join("top.txt"), "hello").unwrap();
    for i in 0..300 {
        std::fs::write(src.join(format!("d/f{i:03}")), "x").unwrap();
    }
    let s = src.to_str().unwrap();
    assert_eq!(ferry(&state, &env, &["sync", s, "s3://bkt/t"]).code, 0);
    let lines = |args: &[&str]| {
        let r = ferry(&state, &env, args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let mut v: Vec<String> = r.stdout.lines().map(|l| l.trim().to_string()).collect();
        v.sort();
        v
    };
    for loc in [s, "s3://bkt/t"] {
        assert_eq!(lines(&["ls", loc]), ["0 d/", "5 top.txt"], "{loc}");
        let all = lines(&["ls", "-R", loc]);
        assert_eq!(all.len(), 2 + 1 + 1 + 300, "{loc}: {all:?}");
        assert!(all.contains(&"2 d/sub/b".to_string()) && all.contains(&"1 d/f299".to_string()), "{loc}");
        assert_eq!(lines(&["ls", "-R", "--summary", loc]), ["302 file(s), 2 dir(s), 307 byte(s)"], "{loc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_detection_filters_delete_and_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("logs")).unwrap();
    for (name, body) in
        [("a.txt", "aaaa"), ("b.tmp", "bbbb"), ("logs/x.log", "xx"), ("big.bin", "0123456789")]
    {
        std::fs::write(src.join(name), body).unwrap();
    }
    let s = src.to_str().unwrap();
    let d = dst.to_str().unwrap();
    // A dry run into a destination that does not exist yet plans everything, creates nothing.
    let r = common::ferry(&state, &[], &["sync", s, d, "--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["transferred"], 5, "{}", r.stdout);
    assert!(!dst.exists());
    // The same into a bucket emulated by a directory not made yet.
    let bucket = format!("file://{d}");
    let r = common::ferry(&state, &[], &["sync", s, &bucket, "--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["transferred"], 5, "{}", r.stdout);
    assert!(!dst.exists());
    let ferry = |state: &std::path::Path, env: &[(String, String)], args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--exclude", "*.tmp", "--exclude", "logs/**"]);
        if !args.contains(&"--files-from") {
            all.extend(["--max-size", "5"]);
        }
        common::ferry(state, env, &all)
    };
    let r = ferry(&state, &[], &["sync", s, d, "--json"]).json();
    assert_eq!(r["transferred"], 1, "{r}");
    assert_eq!(r["excluded"], 3, "{r}");
    assert!(dst.join("a.txt").exists() && !dst.join("b.tmp").exists());

    // Same size, different mtime: copied by default; same size and mtime, different
    // content: only --checksum sees it.
    std::fs::write(src.join("a.txt"), "AAAA").unwrap();
    let mt = std::fs::metadata(dst.join("a.txt")).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(src.join("a.txt")).unwrap().set_modified(mt).unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--include", "a.txt", "--json"]).json();
    assert_eq!(r["transferred"], 0, "size+mtime equal: {r}");
    let r = ferry(&state, &[], &["sync", s, d, "--include", "a.txt", "--checksum", "--json"]).json();
    assert_eq!(r["transferred"], 1, "{r}");
    assert_eq!(std::fs::read_to_string(dst.join("a.txt")).unwrap(), "AAAA");

    // Extraneous items: dry run lists them, --max-delete guards, --delete removes.
    std::fs::write(dst.join("old1"), "x").unwrap();
    std::fs::write(dst.join("old2"), "x").unwrap();
    std::fs::create_dir_all(dst.join("olddir/inner")).unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--delete", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("would delete old1 (1 B, not in source)"), "{}", r.stdout);
    assert!(r.stdout.contains("would delete olddir/ (directory, not in source)"), "{}", r.stdout);
    assert!(r.stdout.contains(", 3 deleted, 0 failed"), "the summary counts them: {}", r.stdout);
    assert!(dst.join("olddir/inner").is_dir());
    std::fs::remove_dir_all(dst.join("olddir")).unwrap();
    assert!(dst.join("old1").exists());
    let r = ferry(&state, &[], &["sync", s, d, "--delete", "--max-delete", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--max-delete"), "{}", r.stderr);
    assert!(r.stdout.contains("0 failed (and 1 other failure(s)"), "{}", r.stdout);
    let r = ferry(&state, &[], &["sync", s, d, "--delete", "--max-delete", "1", "--json"]);
    let j = r.json();
    assert_eq!((r.code, j["failed"].as_u64(), j["other_failures"].as_u64()), (1, Some(0), Some(1)), "{j}");
    assert_reconciles(&j);
    assert!(dst.join("old1").exists() && dst.join("old2").exists());
    let r = ferry(&state, &[], &["sync", s, d, "--delete", "--json"]).json();
    assert_eq!(r["deleted"], 2, "{r}");
    assert!(!dst.join("old1").exists());
    assert!(dst.join("a.txt").exists());
    // Destination files that the filters leave out are not deleted.
    std::fs::write(dst.join("keep.tmp"), "x").unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--delete", "--json"]).json();
    assert_eq!(r["deleted"], 0, "{r}");
    assert!(dst.join("keep.tmp").exists());

    // --files-from copies just the listed files; a missing one is a failed item.
    let list = tmp.path().join("list");
    std::fs::write(&list, "logs/x.log\nnot-there\n").unwrap();
    let r = common::ferry(&state, &[], &["sync", s, d, "--files-from", list.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 1);
    let j = r.json();
    assert_eq!(j["transferred"], 1, "{j}");
    assert_eq!(j["failures"][0]["path"], "not-there");
    assert!(dst.join("logs/x.log").exists());

    // Directories above listed files that are missing get their source's
    // mode and mtime, as a full run gives them.
    std::fs::create_dir_all(src.join("deep/er")).unwrap();
    std::fs::write(src.join("deep/er/f.txt"), "deep").unwrap();
    for (d, mode, ns) in
        [("deep", 0o751, 1_400_000_000_111_111_111), ("deep/er", 0o700, 1_400_000_000_222_222_222)]
    {
        std::fs::set_permissions(src.join(d), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        set_mtime(&src.join(d), ns);
    }
    std::fs::write(&list, "deep/er/f.txt\n").unwrap();
    let r = common::ferry(&state, &[], &["sync", s, d, "--files-from", list.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let attrs = |root: &std::path::Path| {
        let a = dir_attrs(root);
        (a["deep"], a["deep/er"])
    };
    assert_eq!(attrs(&dst), attrs(&src), "mode, owner, group and mtime of the created parents");

    // `--files-from -` reads the list from standard input.
    std::fs::write(src.join("from-stdin.txt"), "piped").unwrap();
    let mut child = common::ferry_cmd(&state, &[])
        .args(["sync", s, d, "--files-from", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from-stdin.txt\n").unwrap();
    let r = common::Run::of(child.wait_with_output().unwrap());
    assert_eq!((r.code, r.json()["transferred"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read_to_string(dst.join("from-stdin.txt")).unwrap(), "piped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_modes_and_update() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    make_tree(&src, true);
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let r = ferry(&state, &[], &["sync", s, d, "--verify", "transferred", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ferry(&state, &[], &["sync", s, d, "--verify", "all", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Corrupt the destination behind ferry's back, same size and mtime: --verify all finds it.
    let victim = dst.join("plain.txt");
    let mt = std::fs::metadata(&victim).unwrap().modified().unwrap();
    std::fs::write(&victim, b"HELLO FERRY\n").unwrap();
    std::fs::File::options().write(true).open(&victim).unwrap().set_modified(mt).unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--verify", "all", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("plain.txt"), "{}", r.stdout);
    let j = r.json();
    assert_eq!((j["failed"].as_u64(), j["other_failures"].as_u64()), (Some(0), Some(1)), "{j}");
    assert_reconciles(&j);
    // --update leaves a newer destination alone.
    std::fs::write(dst.join("with space.txt"), b"newer at destination").unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--update", "--json"]).json();
    assert_eq!(std::fs::read(dst.join("with space.txt")).unwrap(), b"newer at destination");
    assert_eq!(r["failed"], 0, "{r}");

    // --ignore-existing copies only what the destination lacks: a file
    // changed there, size and all, stays as it is.
    std::fs::write(dst.join("plain.txt"), b"changed at destination, longer").unwrap();
    std::fs::write(src.join("new.txt"), b"new").unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--ignore-existing", "--json"]).json();
    assert_eq!((r["transferred"].as_u64(), r["failed"].as_u64()), (Some(1), Some(0)), "{r}");
    assert_eq!(std::fs::read(dst.join("plain.txt")).unwrap(), b"changed at destination, longer");
    assert_eq!(std::fs::read(dst.join("new.txt")).unwrap(), b"new");

    // --min-size leaves smaller files out; a minimum above the maximum is refused.
    std::fs::write(src.join("tiny.txt"), b"t").unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--min-size", "2", "--json"]).json();
    assert!(r["excluded"].as_u64() >= Some(1) && !dst.join("tiny.txt").exists(), "{r}");
    assert_eq!(std::fs::read(dst.join("plain.txt")).unwrap(), b"hello ferry\n", "{r}");
    let r = ferry(&state, &[], &["sync", s, d, "--min-size", "10", "--max-size", "5"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is larger than --max-size"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one"), "shared").unwrap();
    std::fs::hard_link(src.join("one"), src.join("two")).unwrap();
    let r = ferry(&state, &[], &["sync", src.to_str().unwrap(), dst.to_str().unwrap(), "--json"]).json();
    assert_eq!(r["hard_links"], serde_json::json!([["one", "two"]]), "{r}");
    assert_eq!(std::fs::read(dst.join("two")).unwrap(), b"shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_items_cost_no_request_and_outside_changes_are_seen() {
    let s3 = S3Server::start(&["bkt-state"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("d/f{i}")), format!("content {i:04}")).unwrap();
    }
    let env = s3.env();
    let s = src.to_str().unwrap();
    assert_eq!(ferry(&state, &env, &["sync", s, "s3://bkt-state/p"]).code, 0);
    // The first re-sync may look at objects (HEAD) to learn their versions...
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-state/p", "--json"]).json();
    assert_eq!(r["transferred_bytes"], 0, "{r}");
    // ... the next one only lists.
    let before = s3.counts();
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-state/p", "--json"]).json();
    let after = s3.counts();
    assert_eq!(r["skipped"].as_u64().unwrap(), 21, "{r}");
    assert_eq!((after.head - before.head, after.get - before.get, after.put - before.put), (0, 0, 0));

    // A dry run reads the checkpoint as the run would: no request there
    // either. Without one it looks at the objects, and leaves no state.
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-state/p", "--json", "--dry-run"]).json();
    let dry = s3.counts();
    assert_eq!((r["skipped"].as_u64(), dry.head - after.head), (Some(21), 0), "{r}");
    assert_eq!(plan_lines(&r), Vec::<String>::new());
    let fresh = tmp.path().join("fresh-state");
    let r = ferry(&fresh, &env, &["sync", s, "s3://bkt-state/p", "--json", "--dry-run"]).json();
    assert_eq!((r["skipped"].as_u64(), plan_lines(&r).len()), (Some(21), 0), "{r}");
    assert!(s3.counts().head >= dry.head + 20, "each object looked at");
    assert!(!fresh.exists(), "a dry run creates no state directory");
    let before = s3.counts();
    assert_eq!(ferry(&state, &env, &["sync", s, "s3://bkt-state/p"]).code, 0);
    assert_eq!(s3.counts().head, before.head, "the dry runs left the checkpoint as it was");

    // An object overwritten behind ferry's back (same size) is noticed and re-copied.
    // Listed modification times may have one-second precision.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let op = s3_operator(&s3, "bkt-state", false);
    op.write("p/d/f3", "CONTENT 0003").await.unwrap();
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-state/p", "--json"]).json();
    assert_eq!(r["transferred"], 1, "{r}");
    assert_eq!(op.read("p/d/f3").await.unwrap().to_vec(), b"content 0003");

    // A changed source file is copied even though the destination is unchanged.
    std::fs::write(src.join("d/f4"), "CHANGED 0004").unwrap();
    common::set_mtime(&src.join("d/f4"), 1_500_000_000_000_000_000);
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-state/p", "--json"]).json();
    assert_eq!(r["transferred"], 1, "{r}");
    // --force ignores what is known.
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-state/p", "--force", "--json"]).json();
    assert_eq!(r["transferred"], 20, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_costs_one_get_per_small_object() {
    let s3 = S3Server::start(&["bkt-count"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..30 {
        std::fs::write(src.join(format!("f{i}")), format!("body {i}")).unwrap();
    }
    let env = s3.env();
    assert_eq!(ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-count/p"]).code, 0);
    let before = s3.counts();
    let r = ferry(&state, &env, &["sync", "s3://bkt-count/p", back.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let after = s3.counts();
    assert_eq!(after.get - before.get, 30, "one GET per object");
    assert_eq!(after.head - before.head, 0, "no HEAD: attributes come with the GET");
    assert_same(&snapshot(&src, false), &snapshot(&back, false));
}

/// `--checksum` against large objects: their content is compared through
/// the CRC32C the store kept (composite, part by part, or whole), so the
/// objects are not read; a changed byte of the same size and time is still
/// found, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_compares_large_objects_without_reading_them() {
    let s3 = S3Server::start(&["bkt-sum"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    let body: Vec<u8> = (0..(11u32 << 20) + 77).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    std::fs::write(src.join("multi.bin"), &body).unwrap();
    std::fs::write(src.join("single.bin"), &body[..(9 << 20)]).unwrap();
    let s = src.to_str().unwrap();
    // multi.bin in parts of 5 MiB; single.bin in one PUT (under 16 MiB).
    for (from, to, part) in [(s, "s3://bkt-sum/p", "5M"), (s, "s3://bkt-sum/q", "16M")] {
        let r = ferry(&state, &env, &["sync", from, to, "--part-size", part, "--no-checkpoint"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let r = ferry(&state, &env, &["sync", "s3://bkt-sum/p", back.to_str().unwrap(), "--no-checkpoint"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let sync = |from: &str, to: &str| {
        let before = s3.counts();
        let r = ferry(&state, &env, &["sync", from, to, "--checksum", "--no-checkpoint", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        (r.json(), s3.counts().get - before.get)
    };
    for (from, to) in
        [(s, "s3://bkt-sum/p"), (s, "s3://bkt-sum/q"), ("s3://bkt-sum/p", back.to_str().unwrap())]
    {
        let (j, gets) = sync(from, to);
        assert_eq!(
            (j["skipped"].as_u64(), gets),
            (Some(2), 0),
            "{from} -> {to}: same, and nothing read: {j}"
        );
    }
    let (j, gets) = sync("s3://bkt-sum/p", "s3://bkt-sum/q");
    assert_eq!(j["skipped"], 2, "composite against whole: one side read, {j}");
    assert!(gets > 0);

    // One byte changed, size and time kept: found through the stored checksums.
    let mtime = std::fs::metadata(src.join("multi.bin")).unwrap().modified().unwrap();
    let mut changed = body.clone();
    changed[7 << 20] ^= 0x40;
    std::fs::write(src.join("multi.bin"), &changed).unwrap();
    std::fs::File::options().write(true).open(src.join("multi.bin")).unwrap().set_modified(mtime).unwrap();
    let (j, gets) = sync(s, "s3://bkt-sum/p");
    assert_eq!((j["transferred"].as_u64(), gets), (Some(1), 0), "{j}");
    assert!(std::fs::read(s3.root().join("bkt-sum/p/multi.bin")).unwrap() == changed);
    let (j, _) = sync("s3://bkt-sum/p", back.to_str().unwrap());
    assert_eq!(j["transferred"], 1, "{j}");
    assert!(std::fs::read(back.join("multi.bin")).unwrap() == changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_does_not_match_its_stored_checksum_is_never_stored() {
    let s3 = S3Server::start(&["bkt-crc"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (back, state) = (tmp.path().join("back"), tmp.path().join("state"));
    let op = s3_operator(&s3, "bkt-crc", false);
    // An object whose stored checksum is that of other content (a corrupted body).
    let meta = std::collections::HashMap::from([
        ("file-checksum".to_string(), format!("crc32c:{:08x}", crc32c_of(b"the original"))),
        ("file-permissions".to_string(), "0100644".to_string()),
    ]);
    let opts = opendal::options::WriteOptions { user_metadata: Some(meta), ..Default::default() };
    op.write_options("p/bad", b"the corrupt!".to_vec(), opts).await.unwrap();
    op.write("p/good", b"fine".to_vec()).await.unwrap();
    let r = ferry(&state, &s3.env(), &["sync", "s3://bkt-crc/p", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let j = r.json();
    assert_eq!(j["failures"][0]["path"], "bad", "{j}");
    assert!(j["failures"][0]["reason"].as_str().unwrap().contains("checksum mismatch"), "{j}");
    assert!(!back.join("bad").exists(), "never stored");
    assert_eq!(std::fs::read(back.join("good")).unwrap(), b"fine");
    assert!(all_names(&back).iter().all(|p| !p.to_string_lossy().contains(".ferry-tmp.")));
}

/// CRC32C (Castagnoli), bitwise, to check ferry's stored checksums independently.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// Several runs at once sharing one state directory (the default one, say)
/// on a first use: they take turns creating the checkpoint database, and
/// each records its own run.
#[test]
fn concurrent_runs_share_a_new_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let n = 6;
    for k in 0..n {
        let src = tmp.path().join(format!("src{k}"));
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..200 {
            std::fs::write(src.join(format!("f{i}")), format!("{k} {i}")).unwrap();
        }
    }
    let children: Vec<_> = (0..n)
        .map(|k| {
            let (src, dst) = (tmp.path().join(format!("src{k}")), tmp.path().join(format!("dst{k}")));
            ferry_cmd(&state, &[])
                .args(["sync", src.to_str().unwrap(), dst.to_str().unwrap(), "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (k, child) in children.into_iter().enumerate() {
        let r = Run::of(child.wait_with_output().unwrap());
        assert_eq!(r.code, 0, "run {k}: {}\n{}", r.stdout, r.stderr);
        assert_eq!(r.json()["transferred"], 200, "run {k}");
        assert!(r.stderr.is_empty(), "run {k} printed: {}", r.stderr);
    }
}

/// A second run of the same pair while the first is in progress is refused
/// (each would count the other's work as its own, and a resumed run sweeps
/// the uploads of the one before); the claim dies with its process.
#[test]
fn a_pair_runs_once_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), vec![1u8; 8 << 20]).unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let mut first =
        ferry_cmd(&state, &[]).args(["sync", s, d, "--bwlimit", "2M", "--quiet"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(first.try_wait().unwrap().is_none(), "the first run is still going");

    let r = ferry(&state, &[], &["sync", s, d]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("another ferry sync from") && r.stderr.contains("is running"), "{}", r.stderr);
    // A dry run records nothing and claims nothing.
    let r = ferry(&state, &[], &["sync", s, d, "--dry-run"]);
    assert_eq!(r.code, 0, "a dry run records nothing: {}", r.stderr);

    first.kill().unwrap(); // SIGKILL: the claim goes with the process
    first.wait().unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["resumed"], true);
}

/// A chmod or chown of a file whose content did not change reaches its
/// copies: a local copy gets it in place (same inode, no bytes written), an
/// object is written again. The checkpoint keeps the source's ctime, which
/// such a change moves, so a rerun looks at that file; nothing churns after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_changes_reach_copies() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s3 = S3Server::start(&["bkt-attrs"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, back, state) =
        (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("back"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("mode.txt"), b"chmod me").unwrap();
    std::fs::write(src.join("owner.txt"), b"chown me").unwrap();
    std::fs::write(src.join("same.txt"), b"leave me").unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let sync = |from: &str, to: &str, extra: &[&str]| {
        let r = ferry(&state, &env, &[&["sync", from, to, "--json"], extra].concat());
        assert_eq!(r.code, 0, "{from} -> {to}: {}\n{}", r.stdout, r.stderr);
        r.json()
    };
    sync(s, d, &[]);
    sync(s, "s3://bkt-attrs/p", &[]);
    // A no-op rerun: from now on the checkpoint knows each object's version,
    // and the next run skips unchanged files without a request.
    assert_eq!(sync(s, "s3://bkt-attrs/p", &[])["transferred"], 0);
    let inode = std::fs::metadata(dst.join("mode.txt")).unwrap().ino();

    std::fs::set_permissions(src.join("mode.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(src.join("owner.txt"), Some(1234), Some(5678)).unwrap();

    let plan = sync(s, d, &["--dry-run"]);
    let lines: Vec<String> =
        plan["plan"].as_array().unwrap().iter().map(|l| format!("{} {}", l["action"], l["path"])).collect();
    assert_eq!(lines, ["\"update\" \"mode.txt\"", "\"update\" \"owner.txt\""], "{plan}");

    // Local: in place.
    let j = sync(s, d, &[]);
    assert_eq!((j["transferred"].as_u64(), j["transferred_bytes"].as_u64()), (Some(2), Some(0)), "{j}");
    let md = std::fs::metadata(dst.join("mode.txt")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.ino()), (0o600, inode), "new mode, same file");
    let md = std::fs::metadata(dst.join("owner.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    // Object store: written again, and they come back with the new attributes.
    let j = sync(s, "s3://bkt-attrs/p", &[]);
    assert_eq!((j["transferred"].as_u64(), j["skipped"].as_u64()), (Some(2), Some(1)), "{j}");
    sync("s3://bkt-attrs/p", back.to_str().unwrap(), &[]);
    assert_eq!(std::fs::metadata(back.join("mode.txt")).unwrap().mode() & 0o7777, 0o600);
    let md = std::fs::metadata(back.join("owner.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    // Nothing churns afterwards.
    for to in [d, "s3://bkt-attrs/p"] {
        let j = sync(s, to, &[]);
        assert_eq!(j["transferred"], 0, "{to}: {j}");
    }
}

/// `--delete` with filters: what the filters leave out inside an extraneous
/// destination directory stays, and so does that directory; a directory
/// with nothing left out goes whole. Planned the same way by a dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_keeps_what_the_filters_leave_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    for (path, body) in [
        ("old/x.keep", "kept: excluded by name"),
        ("old/y.txt", "deleted"),
        ("old/big.txt", "kept: over --max-size, 20 bytes"),
        ("old/sub/z.txt", "deleted with sub"),
        ("old/cache/q.txt", "kept: directory excluded"),
        ("old/deep/er/w.keep", "kept"),
        ("old/deep/er/v.txt", "deleted"),
        ("gone/w.txt", "deleted with gone"),
        ("top.keep", "kept"),
        ("top.txt", "deleted"),
    ] {
        let p = dst.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let args = |extra: &[&'static str]| {
        let mut a = vec!["sync", s, d, "--delete", "--json", "--exclude", "*.keep"];
        a.extend(["--exclude", "old/cache/**", "--max-size", "20"]);
        a.extend(extra);
        a
    };
    let want = ["gone", "old/deep/er/v.txt", "old/sub", "old/y.txt", "top.txt"];
    let dry = ferry(&state, &[], &args(&["--dry-run"]));
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let planned: Vec<String> =
        plan_lines(&dry.json()).into_iter().filter(|l| l.starts_with("delete")).collect();
    let expected: Vec<String> = want.iter().map(|p| format!("delete {p} (not in source)")).collect();
    assert_eq!(planned, expected);
    // Counted as the real run counts them, files with their size,
    // directories (removed with what they hold) without one.
    let dry = dry.json();
    assert_eq!(dry["deleted"], 5, "{dry}");
    let sizes: Vec<(String, serde_json::Value)> = dry["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["action"] == "delete")
        .map(|l| (l["path"].as_str().unwrap().to_owned(), l["size"].clone()))
        .collect();
    assert!(sizes.contains(&("top.txt".into(), 7.into())), "{sizes:?}");
    assert!(sizes.contains(&("old/sub".into(), serde_json::Value::Null)), "{sizes:?}");
    let r = ferry(&state, &[], &args(&[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["deleted"], 5, "{}", r.stdout);
    for gone in want {
        assert!(!dst.join(gone).exists(), "{gone} deleted");
    }
    for kept in ["old/x.keep", "old/big.txt", "old/cache/q.txt", "old/deep/er/w.keep", "top.keep", "a.txt"] {
        assert!(dst.join(kept).is_file(), "{kept} kept");
    }
    // --max-delete counts what would really go.
    std::fs::create_dir_all(dst.join("again")).unwrap();
    std::fs::write(dst.join("again/k.keep"), "k").unwrap();
    std::fs::write(dst.join("again/d.txt"), "d").unwrap();
    let r = ferry(&state, &[], &args(&["--max-delete", "1"]));
    assert_eq!((r.code, r.json()["deleted"].as_u64()), (0, Some(1)), "{}", r.stdout);
    assert!(dst.join("again/k.keep").exists() && !dst.join("again/d.txt").exists());
}

/// `--min-age`/`--max-age` choose files by modification time; for objects
/// that is the time stored in their metadata, not when they were uploaded.
/// Deletion follows the same bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_filters_use_the_files_modification_time() {
    let s3 = S3Server::start(&["bkt-age"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    let hour = 3_600_000_000_000i64;
    let times = [
        ("old.txt", 1_577_836_800_000_000_000i64), // 2020-01-01
        ("d/mid.txt", 1_717_200_000_000_000_000),  // 2024-06-01
        ("d/new.txt", now_ns() - hour),
    ];
    for (name, ns) in times {
        std::fs::write(src.join(name), name).unwrap();
        set_mtime(&src.join(name), ns);
    }
    let env = s3.env();
    let s = src.to_str().unwrap();
    let names = |root: &std::path::Path| -> Vec<String> {
        snapshot(root, false).keys().map(|k| k.to_string()).collect()
    };
    // Each case: the bounds, then what is copied, fs → fs and bucket → fs.
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--max-age", "2d"], &["d/new.txt"]),
        (&["--min-age", "2025-01-01"], &["d/mid.txt", "old.txt"]),
        (&["--min-age", "2024-12-31", "--max-age", "2023-01-01T00:00:00Z"], &["d/mid.txt"]),
        (&["--min-age", "30m"], &["d/mid.txt", "d/new.txt", "old.txt"]),
    ];
    assert_eq!(ferry(&state, &env, &["sync", s, "s3://bkt-age/p"]).code, 0);
    for (i, (bounds, want)) in cases.iter().enumerate() {
        for from in [s, "s3://bkt-age/p"] {
            let out = tmp.path().join(format!("out{i}-{}", from.len()));
            let mut args = vec!["sync", from, out.to_str().unwrap(), "--json"];
            args.extend(*bounds);
            let r = ferry(&state, &env, &args);
            assert_eq!(r.code, 0, "{from} {bounds:?}: {}", r.stderr);
            let j = r.json();
            assert_eq!(names(&out), *want, "{from} {bounds:?}: {j}");
            assert_eq!(j["excluded"].as_u64(), Some(3 - want.len() as u64), "{from} {bounds:?}: {j}");
            let sum = ["transferred", "skipped", "excluded", "failed"].map(|k| j[k].as_u64().unwrap());
            assert_eq!(j["listed"].as_u64(), Some(sum.iter().sum()), "{j}");
        }
    }
    // --files-from looks each named file up and applies the same bounds.
    let list = tmp.path().join("list");
    std::fs::write(&list, "old.txt\nd/mid.txt\nd/new.txt\n").unwrap();
    for from in [s, "s3://bkt-age/p"] {
        let out = tmp.path().join(format!("listed-{}", from.len()));
        let (o, l) = (out.to_str().unwrap(), list.to_str().unwrap());
        let r = ferry(&state, &env, &["sync", from, o, "--files-from", l, "--max-age", "2d", "--json"]);
        assert_eq!(r.code, 0, "{from}: {}", r.stderr);
        assert_eq!(names(&out), ["d/new.txt"], "{from}");
        assert_eq!(r.json()["excluded"], 2, "{from}");
    }
    // Bounds that leave nothing, and words that are not times: exit 2.
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-age/q", "--min-age", "3d", "--max-age", "2d"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("leave no file"), "{}", r.stderr);
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-age/q", "--max-age", "yesterday"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("neither an age"), "{}", r.stderr);

    // Deleting from a bucket: an extraneous object is judged by its stored
    // time (the listing says every object is new).
    let extra = tmp.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    for (name, ns) in [("x-old.txt", 1_577_836_800_000_000_000i64), ("x-new.txt", now_ns() - hour)] {
        std::fs::write(extra.join(name), name).unwrap();
        set_mtime(&extra.join(name), ns);
    }
    // Beside source files, and in a directory the source does not have.
    for at in ["s3://bkt-age/p/d", "s3://bkt-age/p/e"] {
        assert_eq!(ferry(&state, &env, &["sync", extra.to_str().unwrap(), at]).code, 0);
    }
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-age/p", "--delete", "--max-age", "2d", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["deleted"], 2, "{}", r.stdout);
    let op = s3_operator(&s3, "bkt-age", false);
    for dir in ["p/d", "p/e"] {
        assert!(op.exists(&format!("{dir}/x-old.txt")).await.unwrap(), "{dir}: older than --max-age: kept");
        assert!(!op.exists(&format!("{dir}/x-new.txt")).await.unwrap(), "{dir}");
    }
}

/// The summary keeps the first 10,000 failures and plan lines; a dry run
/// prints every planned action as it is made, and `--failures-csv` lists
/// every failed item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_list_and_dry_run_plan_go_past_the_report_limit() {
    const FILES: usize = 10_050;
    const BLOCKED: usize = 10_020;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:05}")), "x").unwrap();
        if i < BLOCKED {
            // A directory in the way fails the item.
            std::fs::create_dir_all(dst.join(format!("f{i:05}"))).unwrap();
        }
    }
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let fresh = tmp.path().join("fresh");
    let f = fresh.to_str().unwrap();

    let dry = ferry(&state, &[], &["sync", s, f, "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let planned: Vec<&str> = dry.stdout.lines().filter(|l| l.starts_with("would copy f")).collect();
    assert_eq!(planned.len(), FILES, "every planned copy printed");
    assert!(planned.contains(&"would copy f10049 (1 B, missing)"), "{:?}", &planned[..3]);
    let j = ferry(&state, &[], &["sync", s, f, "--dry-run", "--json"]).json();
    assert_eq!((j["plan"].as_array().unwrap().len(), j["plan_omitted"].as_u64()), (10_000, Some(50)));
    assert_eq!(j["plan"][9_999]["path"], "f09999", "the first lines in path order are kept");

    let csv = tmp.path().join("failures.csv");
    let c = csv.to_str().unwrap();
    let r = ferry(&state, &[], &["sync", s, d, "--failures-csv", c, "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["failed"].as_u64(), Some(BLOCKED as u64), "{}", j["failed"]);
    assert_eq!((j["failures"].as_array().unwrap().len(), j["failures_omitted"].as_u64()), (10_000, Some(20)));
    assert_eq!(j["failures"][9_999]["path"], "f09999", "the first failures in path order are kept");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,status,error_code,message"));
    let mut paths: Vec<&str> = lines
        .map(|l| {
            let mut cols = l.splitn(4, ',');
            let path = cols.next().unwrap();
            assert_eq!((cols.next(), cols.next()), (Some("FAIL"), Some("ITEM_FAILED")), "{l}");
            assert!(cols.next().unwrap().contains("in the way"), "{l}");
            path
        })
        .collect();
    paths.sort();
    let want: Vec<String> = (0..BLOCKED).map(|i| format!("f{i:05}")).collect();
    assert_eq!(paths, want);

    // In text, the summary says how many it leaves out and where they are.
    let r = ferry(&state, &[], &["sync", s, d, "--failures-csv", c]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&format!("… and 20 more, all listed in {c}")), "{}", r.stderr);
    let r = ferry(&state, &[], &["sync", s, d]);
    assert!(r.stderr.contains("… and 20 more (--failures-csv FILE lists them all)"), "{}", r.stderr);
    // A run that cannot start writes no list.
    let none = tmp.path().join("none.csv");
    let r =
        ferry(&state, &[], &["sync", "/nonexistent-ferry-src", d, "--failures-csv", none.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!none.exists());
}

/// Many items are in flight at once, but their contents together stay
/// within --buffer-memory: with room for one 600 KiB file, uploads go one
/// at a time; with room for three, never more than three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contents_in_flight_stay_within_the_buffer_memory() {
    let s3 = S3Server::start(&["bkt-room"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i:02}")), vec![i as u8; 600 << 10]).unwrap();
    }
    s3.faults().set_delay(ferry_testkit::OpClass::Put, std::time::Duration::from_millis(40));
    let env = s3.env();
    let s = src.to_str().unwrap();
    let mut peaks = Vec::new();
    for (at, room) in [("one", "1M"), ("three", "2M"), ("default", "256M")] {
        s3.take_peak_in_flight();
        let r = ferry(&state, &env, &["sync", s, &format!("s3://bkt-room/{at}"), "--buffer-memory", room]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        peaks.push(s3.take_peak_in_flight());
    }
    // And --threads bounds the items in flight, whatever the room.
    s3.take_peak_in_flight();
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-room/two", "--threads", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    peaks.push(s3.take_peak_in_flight());
    assert_eq!(peaks[0], 1, "{peaks:?}");
    assert!((2..=3).contains(&peaks[1]), "{peaks:?}");
    assert!(peaks[2] > 3, "{peaks:?}");
    assert_eq!(peaks[3], 2, "{peaks:?}");
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-room/x", "--buffer-memory", "0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--buffer-memory"), "{}", r.stderr);
}

/// Overlapping local source and destination are refused before anything is
/// written or deleted: a destination inside the source would be copied into
/// itself, and `--delete` into a parent of the source would delete the
/// source. Allowed when the filters leave the inner one out.
#[test]
fn overlapping_source_and_destination_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, state) = (tmp.path().join("photos"), tmp.path().join("state"));
    std::fs::create_dir_all(base.join("sub")).unwrap();
    std::fs::write(base.join("a.txt"), "a").unwrap();
    std::fs::write(base.join("sub/b.txt"), "b").unwrap();
    let p = |rel: &str| base.join(rel).to_str().unwrap().to_owned();
    let file_url = format!("file://{}", p("sub"));
    let refused: [(Vec<String>, &str); 5] = [
        (vec![p(""), p("sub/new")], "the destination is inside the source (sub/new under "),
        (vec![p("sub"), p(""), "--delete".into()], "the source is inside the destination (sub under "),
        (vec![p("sub/../sub"), p("sub")], "source and destination are the same ("),
        (vec![p(""), file_url.clone()], "the destination is inside the source (sub under "),
        (vec![p(""), p("sub"), "--exclude".into(), "other/**".into()], "--exclude 'sub/**'"),
    ];
    for (args, message) in refused {
        let mut a = vec!["sync"];
        a.extend(args.iter().map(String::as_str));
        let r = ferry(&state, &[], &a);
        assert_eq!(r.code, 2, "{a:?}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{a:?}: {}", r.stderr);
    }
    // Nothing was written or deleted.
    let found: Vec<String> = snapshot(&base, true).into_keys().collect();
    assert_eq!(found, ["a.txt", "sub", "sub/b.txt"]);

    // Left out by the filters: allowed, and the inner tree is neither
    // copied into itself nor deleted.
    let r = ferry(&state, &[], &["sync", &p(""), &p("sub/backup"), "--exclude", "sub/**", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["transferred"], 1, "{}", r.stdout);
    let r = ferry(&state, &[], &["sync", &p("sub"), &p(""), "--delete", "--exclude", "sub/**", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(base.join("sub/b.txt").is_file() && base.join("b.txt").is_file());
}

/// A local file as the source is copied into DST, as `rclone copy FILE DST`
/// does: it lands as DST/NAME with its attributes, and a rerun skips it.
#[test]
fn a_single_file_source_is_copied_into_the_destination() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one.txt"), "just this").unwrap();
    std::fs::write(src.join("other.txt"), "not this").unwrap();
    std::fs::set_permissions(src.join("one.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let file = src.join("one.txt");
    let (f, d) = (file.to_str().unwrap(), dst.to_str().unwrap());
    let r = ferry(&state, &[], &["sync", f, d, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        (r.json()["transferred"].as_u64(), r.json()["listed"].as_u64()),
        (Some(1), Some(1)),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read_to_string(dst.join("one.txt")).unwrap(), "just this");
    assert!(!dst.join("other.txt").exists());
    let (a, b) = (std::fs::metadata(&file).unwrap(), std::fs::metadata(dst.join("one.txt")).unwrap());
    assert_eq!((b.mode() & 0o7777, b.mtime(), b.mtime_nsec()), (0o640, a.mtime(), a.mtime_nsec()));
    let r = ferry(&state, &[], &["sync", f, d, "--json"]);
    assert_eq!(r.json()["skipped"], 1, "{}", r.stdout);
    let r = ferry(&state, &[], &["sync", f, d, "--delete"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("is a file: --files-from and --delete need a directory"), "{}", r.stderr);

    // A file named in a `file://` store URL: the same. A store opened on a
    // subdirectory keeps its staging directory there, which listings of
    // the whole store do not show.
    let store = tmp.path().join("store");
    let url = |rel: &str| format!("file://{}{rel}", store.display());
    assert_eq!(ferry(&state, &[], &["sync", src.to_str().unwrap(), &url("/p")]).code, 0);
    let (back, whole) = (tmp.path().join("back"), tmp.path().join("whole"));
    let r = ferry(&state, &[], &["sync", &url("/p/one.txt"), back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["transferred"], 1, "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(back.join("one.txt")).unwrap(), "just this");
    assert!(!back.join("other.txt").exists());
    let b = std::fs::metadata(back.join("one.txt")).unwrap();
    assert_eq!((b.mode() & 0o7777, b.mtime(), b.mtime_nsec()), (0o640, a.mtime(), a.mtime_nsec()));
    assert!(store.join("p/.ferry-staging").is_dir(), "the store opened on p keeps its staging there");
    let r = ferry(&state, &[], &["sync", &url(""), whole.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(whole.join("p/one.txt").is_file() && !whole.join("p/.ferry-staging").exists());
    // Only writes leave a staging directory: the store read from whole has none.
    assert!(!store.join(".ferry-staging").exists(), "a store only read from got a staging directory");
}

/// An object's key as the source: its prefix lists nothing, so the key is
/// looked up (only then: a prefix that lists something costs no HEAD) and
/// the object is copied into DST. A prefix with nothing under it is refused
/// with exit 2, and `--delete` never runs from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_key_as_the_source_is_one_file_and_a_missing_prefix_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s3 = S3Server::start(&["bkt-key"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("one.txt"), "just this").unwrap();
    std::fs::write(src.join("other.txt"), "not this").unwrap();
    std::fs::write(src.join("sub/deep.txt"), "deep").unwrap();
    std::fs::set_permissions(src.join("one.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-key/p"]).code, 0);

    let back = tmp.path().join("back");
    let b = back.to_str().unwrap();
    let r = ferry(&state, &env, &["sync", "s3://bkt-key/p/one.txt", b, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["transferred"], 1, "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(back.join("one.txt")).unwrap(), "just this");
    assert_eq!(std::fs::read_dir(&back).unwrap().count(), 1, "only the named object");
    let (a, c) =
        (std::fs::metadata(src.join("one.txt")).unwrap(), std::fs::metadata(back.join("one.txt")).unwrap());
    assert_eq!((c.mode() & 0o7777, c.mtime(), c.mtime_nsec()), (0o640, a.mtime(), a.mtime_nsec()));
    // Deeper keys, and into another bucket prefix, work the same.
    let r = ferry(&state, &env, &["sync", "s3://bkt-key/p/sub/deep.txt", "s3://bkt-key/q", "--json"]);
    assert_eq!((r.code, r.json()["transferred"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    let r = ferry(&state, &env, &["sync", "s3://bkt-key/q", tmp.path().join("q").to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(tmp.path().join("q/deep.txt")).unwrap(), "deep");

    // `ls` shows the one object (and a local file) the same way.
    let r = ferry(&state, &env, &["ls", "s3://bkt-key/p/one.txt"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "           9 one.txt\n"), "{}", r.stderr);
    let r = ferry(&state, &env, &["ls", back.join("one.txt").to_str().unwrap()]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "           9 one.txt\n"), "{}", r.stderr);
    let r = ferry(&state, &env, &["ls", "s3://bkt-key/p/nope"]);
    assert!(r.code == 2 && r.stderr.contains("nothing is stored there"), "{}", r.stderr);

    // A prefix that lists something is not looked up as a key.
    let before = s3.counts();
    let r = ferry(&state, &env, &["sync", "s3://bkt-key/p/sub", tmp.path().join("sub").to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s3.counts().head - before.head, 0, "no HEAD for a prefix with objects");

    // The key with --delete: refused, and nothing in DST is deleted.
    let keep = tmp.path().join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::write(keep.join("mine.txt"), "mine").unwrap();
    let k = keep.to_str().unwrap();
    let r = ferry(&state, &env, &["sync", "s3://bkt-key/p/one.txt", k, "--delete"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is a file: --files-from and --delete need a directory"), "{}", r.stderr);
    assert!(keep.join("mine.txt").is_file());

    // Nothing there: exit 2 with one line, DST left as it was (not even
    // created), and no deletion from the empty listing.
    for (from, extra) in [
        ("s3://bkt-key/p/nope", None),
        ("s3://bkt-key/p/one.txt/", None),
        ("s3://bkt-key/nope", Some("--delete")),
    ] {
        // Its missing parents too.
        let (fresh_top, fresh) = (tmp.path().join("fresh"), tmp.path().join("fresh/a/b"));
        let mut args = vec!["sync", from, fresh.to_str().unwrap()];
        args.extend(extra);
        let r = ferry(&state, &env, &args);
        assert_eq!(r.code, 2, "{from}: {}", r.stderr);
        assert!(
            r.stderr.contains("nothing is stored there") && r.stderr.contains("check the name"),
            "{}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(!fresh_top.exists(), "{from}: DST or its parents were created");
        let r = ferry(&state, &env, &["sync", from, k, "--delete", "--json"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(keep.join("mine.txt").is_file(), "{from}: --delete ran from an empty listing");
    }
}

/// DESIGN invariant 3, durable before done, as the system calls show it
/// (`strace -f -y`): each file's attributes are set and its content and
/// attributes fsynced under the temporary name before the rename to its
/// final name, and the directory is fsynced after the rename.
#[test]
fn local_copies_are_fsynced_before_their_rename_and_the_directory_after() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state, log) =
        (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"), tmp.path().join("trace"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a"), "small").unwrap();
    std::fs::write(src.join("d/b"), vec![3u8; 20 << 20]).unwrap();
    let out = std::process::Command::new("strace")
        .args(["-f", "-y", "-qq", "-o", log.to_str().unwrap()])
        .args(["-e", "trace=fsync,fdatasync,fchmod,rename,renameat,renameat2"])
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .args(["sync", src.to_str().unwrap(), dst.to_str().unwrap(), "--quiet", "--no-checkpoint"])
        .env("FERRY_STATE_DIR", &state)
        .output()
        .expect("strace (apt-get install strace) runs ferry");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let find = |from: usize, pred: &dyn Fn(&str) -> bool| (from..lines.len()).find(|&i| pred(lines[i]));
    for rel in ["a", "d/b"] {
        let fin = dst.join(rel).to_string_lossy().into_owned();
        let dir = dst.join(rel).parent().unwrap().to_string_lossy().into_owned();
        // rename(2) by paths, or renameat(2) in the directory's descriptor.
        let name = rel.rsplit('/').next().unwrap();
        let to_it = |l: &str| {
            l.contains("rename")
                && (l.contains(&format!("\"{fin}\"")) || l.contains(&format!("<{dir}>, \"{name}\")")))
        };
        let renamed = find(0, &to_it).unwrap_or_else(|| panic!("no rename to {fin}:\n{trace}"));
        let first = lines[renamed].split('"').nth(1).unwrap();
        let tmp_name = if first.starts_with('/') { first.to_string() } else { format!("{dir}/{first}") };
        assert!(tmp_name.contains(".ferry-tmp."), "{}", lines[renamed]);
        let on_tmp = |call: &'static str| {
            let tag = format!("<{tmp_name}>");
            find(0, &move |l| l.contains(&format!("{call}(")) && l.contains(&tag))
        };
        let chmod = on_tmp("fchmod").unwrap_or_else(|| panic!("no fchmod of {tmp_name}:\n{trace}"));
        let synced = on_tmp("fsync").unwrap_or_else(|| panic!("no fsync of {tmp_name}:\n{trace}"));
        assert!(chmod < synced && synced < renamed, "{rel}: fchmod, fsync, then rename:\n{trace}");
        let dir_tag = format!("<{dir}>");
        let dir_synced = find(renamed, &|l| l.contains("fsync(") && l.contains(&dir_tag));
        assert!(dir_synced.is_some(), "{rel}: its directory fsynced after the rename:\n{trace}");
    }
}

/// Attributes in an object's metadata are untrusted input: a setuid bit
/// or an impossible owner never reaches the copy, and the report says what
/// was dropped (RELIABILITY: hostile object metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_object_metadata_is_dropped_and_reported() {
    let s3 = S3Server::start(&["bkt-hostile"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (back, state) = (tmp.path().join("back"), tmp.path().join("state"));
    let op = s3_operator(&s3, "bkt-hostile", false);
    let meta = std::collections::HashMap::from([
        ("file-permissions".to_string(), "0104755".to_string()),
        ("file-owner".to_string(), "4294967295".to_string()),
        ("file-mtime".to_string(), "1600000000000000000ns".to_string()),
    ]);
    let opts = opendal::options::WriteOptions { user_metadata: Some(meta), ..Default::default() };
    op.write_options("p/tool", b"#!/bin/sh\n".to_vec(), opts).await.unwrap();
    let r = ferry(&state, &s3.env(), &["sync", "s3://bkt-hostile/p", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let warnings = j["warnings"].to_string();
    assert!(warnings.contains("tool") && warnings.contains("4294967295"), "{j}");
    assert!(warnings.contains("0104755"), "the setuid bit is reported: {j}");
    let md = std::fs::metadata(back.join("tool")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.mode() & 0o7777, 0o755, "setuid dropped, the rest kept");
    assert_ne!(md.uid(), 4294967295);
    assert_eq!(md.mtime(), 1_600_000_000, "sane values are kept");
}
