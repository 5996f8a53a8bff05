//! Faults and interruptions: injected S3 errors, bodies cut short, listing
//! failures, and `kill -9` in the middle of a run.

mod common;

use std::time::Duration;

use common::*;
use ferry_testkit::OpClass;

fn many_files(root: &std::path::Path, n: usize, size: usize) {
    std::fs::create_dir_all(root.join("d1")).unwrap();
    std::fs::create_dir_all(root.join("d2/d3")).unwrap();
    for i in 0..n {
        let dir = ["", "d1/", "d2/d3/"][i % 3];
        let body: Vec<u8> = (0..size).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        std::fs::write(root.join(format!("{dir}f{i:04}.bin")), body).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowdown_errors_and_short_bodies_end_in_a_correct_copy() {
    let s3 = S3Server::start(&["bkt-faults"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    many_files(&src, 60, 3000);
    std::fs::write(src.join("large.bin"), vec![42u8; 12 << 20]).unwrap();
    let env = s3.env();

    for op in [OpClass::Put, OpClass::Head, OpClass::List] {
        s3.faults().set_error_rate(op, 200, 503);
    }
    let up = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-faults/p", "--json"]);
    assert_eq!(up.code, 0, "{}\n{}", up.stdout, up.stderr);
    s3.faults().clear();

    s3.faults().set_error_rate(OpClass::Get, 150, 429);
    s3.faults().set_short_body(250);
    let down = ferry(&state, &env, &["sync", "s3://bkt-faults/p", back.to_str().unwrap(), "--json"]);
    assert_eq!(down.code, 0, "{}\n{}", down.stdout, down.stderr);
    s3.faults().clear();
    assert_same(&snapshot(&src, false), &snapshot(&back, false));
    assert!(all_names(&back).iter().all(|p| !p.to_string_lossy().contains(".ferry-tmp.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_of_a_large_download_resume_where_they_stopped() {
    let s3 = S3Server::start(&["bkt-resume"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    let body: Vec<u8> = (0..(24u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(src.join("large.bin"), &body).unwrap();
    let env = s3.env();
    assert_eq!(ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-resume/p"]).code, 0);

    // 70% of GETs break after half their body: the four ranges of one
    // attempt at the whole file all get through 0.8% of the time, so
    // restarting the file on each break fails its three attempts (as it does
    // with `--retries 0`). The store layer's retries resume a broken range
    // from the byte where it stopped, with the same If-Match.
    s3.faults().set_short_body(700);
    let gets_before = s3.counts().get;
    let r = ferry(&state, &env, &["sync", "s3://bkt-resume/p", back.to_str().unwrap(), "--json"]);
    s3.faults().clear();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["transferred"], 1, "{}", r.stdout);
    assert!(std::fs::read(back.join("large.bin")).unwrap() == body, "byte-exact after resumed ranges");
    let gets = s3.counts().get - gets_before;
    assert!(gets > 4, "the fault hit some ranges ({gets} GETs)");
    assert!(all_names(&back).iter().all(|p| !p.to_string_lossy().contains(".ferry-tmp.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_error_fails_the_run_and_deletes_nothing() {
    let s3 = S3Server::start(&["bkt-list"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    many_files(&src, 9, 100);
    let env = s3.env();
    let s = src.to_str().unwrap();
    assert_eq!(ferry(&state, &env, &["sync", s, "s3://bkt-list/p"]).code, 0);
    // Remove a source file: its object is now extraneous.
    std::fs::remove_file(src.join("f0000.bin")).unwrap();
    let object = s3.root().join("bkt-list/p/f0000.bin");
    assert!(object.exists());

    // The second and later listings fail for good: the run must fail, delete nothing.
    s3.faults().fail_list_after_pages(Some(1));
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-list/p", "--delete", "--retries", "1", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert!(j["failures"].to_string().contains("listing"), "{j}");
    assert!(object.exists(), "nothing deleted after a listing error");
    assert!(j["deleted"] == 0);
    assert_reconciles(&j);
    // Downloading: the top level is listed, its directories are not (they
    // are to be made at the destination); each fails once, counted once.
    s3.faults().fail_list_after_pages(Some(2));
    let down = tmp.path().join("down");
    let r =
        ferry(&state, &env, &["sync", "s3://bkt-list/p", down.to_str().unwrap(), "--retries", "1", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["failed"], 2, "d1 and d2: {j}");
    assert_reconciles(&j);
    s3.faults().clear();

    let r = ferry(&state, &env, &["sync", s, "s3://bkt-list/p", "--delete", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["deleted"], 1);
    assert!(!object.exists());

    // One level of 2,500 keys (three listing pages), its second page failing
    // for good: the items of the first page were compared, the rest of the
    // level is unknown, so the run fails and deletes nothing.
    let flat = tmp.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for i in 0..2500 {
        std::fs::write(flat.join(format!("k{i:05}")), "x").unwrap();
    }
    let f = flat.to_str().unwrap();
    assert_eq!(ferry(&state, &env, &["sync", f, "s3://bkt-list/flat", "--quiet"]).code, 0);
    std::fs::remove_file(flat.join("k00007")).unwrap();
    let extra = s3.root().join("bkt-list/flat/k00007");
    let lists_before = s3.counts().list;
    // The first two listings (the start-of-run check, page 1) are answered.
    s3.faults().fail_list_after_pages(Some(2));
    let r = ferry(&state, &env, &["sync", f, "s3://bkt-list/flat", "--delete", "--retries", "1", "--json"]);
    s3.faults().clear();
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert!(j["failures"].to_string().contains("listing"), "{j}");
    assert_eq!(j["deleted"], 0, "{j}");
    assert!(extra.exists(), "nothing deleted after a listing error on page 2");
    assert!(s3.counts().list - lists_before >= 3, "page 2 was asked for after page 1");
    assert_reconciles(&j);
}

/// Kill the process mid-run, then rerun: the result equals an uninterrupted
/// run, no temporary file is left, and no file at its final name is partial.
async fn kill_and_resume(dst_of: impl Fn(&std::path::Path) -> String, env: Vec<(String, String)>) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    many_files(&src, 240, 40_000);
    let dst = dst_of(tmp.path());
    let mut child = ferry_cmd(&state, &env)
        .args(["sync", src.to_str().unwrap(), &dst, "--bwlimit", "2M", "--threads", "8", "--quiet"])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(child.try_wait().unwrap().is_none(), "still running when killed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    if !dst.starts_with("s3://") {
        let left = complete_under_final_names(&src, std::path::Path::new(&dst));
        assert!(left > 0, "the kill came after some files were written");
    }

    let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), &dst, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["resumed"], true, "{j}");
    assert!(j["skipped"].as_u64().unwrap() > 0, "work done before the kill is not redone: {j}");
    assert!(j["transferred"].as_u64().unwrap() > 0, "{j}");

    let back = tmp.path().join("back");
    let check = if dst.starts_with("s3://") {
        assert_eq!(ferry(&state, &env, &["sync", &dst, back.to_str().unwrap()]).code, 0);
        back
    } else {
        std::path::PathBuf::from(&dst)
    };
    assert_same(&snapshot(&src, false), &snapshot(&check, false));
    assert!(all_names(&check).iter().all(|p| !p.to_string_lossy().contains(".ferry-tmp.")), "no temp files");
}

/// Right after a kill, before any rerun: every file under its final name in
/// `dst` is whole and equal to its source (anything partial is under a
/// temporary name). Returns how many there are.
fn complete_under_final_names(src: &std::path::Path, dst: &std::path::Path) -> usize {
    let mut whole = 0;
    for p in all_names(dst) {
        let name = p.to_string_lossy();
        if name.contains(".ferry-tmp.") || !std::fs::symlink_metadata(&p).unwrap().is_file() {
            continue;
        }
        let rel = p.strip_prefix(dst).unwrap();
        let want = std::fs::read(src.join(rel)).unwrap();
        assert!(
            std::fs::read(&p).unwrap() == want,
            "{} is under its final name but not whole",
            rel.display()
        );
        whole += 1;
    }
    whole
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_rerun_to_local() {
    kill_and_resume(|t| t.join("dst").to_str().unwrap().to_string(), Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_rerun_to_s3() {
    let s3 = S3Server::start(&["bkt-kill"]).await;
    kill_and_resume(|_| "s3://bkt-kill/run".to_string(), s3.env()).await;
}

/// A large object downloaded in ranges (written at offsets into a
/// temporary file) when the run is killed: nothing is at its final name
/// until it is whole; the rerun completes it and leaves no temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_ranged_download_then_rerun() {
    let s3 = S3Server::start(&["bkt-kdl"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    let body: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(src.join("big.bin"), &body).unwrap();
    let env = s3.env();
    assert_eq!(ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-kdl/p", "--quiet"]).code, 0);

    let mut child = ferry_cmd(&state, &env)
        .args(["sync", "s3://bkt-kdl/p", dst.to_str().unwrap(), "--bwlimit", "4M", "--quiet"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let partial = || {
        std::fs::read_dir(&dst)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
    };
    while !partial() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the download began");
        assert!(std::time::Instant::now() < deadline, "no download began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dst.join("big.bin").exists(), "a partial download is never under its final name");

    let r = ferry(&state, &env, &["sync", "s3://bkt-kdl/p", dst.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::read(dst.join("big.bin")).unwrap() == body, "the rerun's copy is whole");
    assert!(all_names(&dst).iter().all(|p| !p.to_string_lossy().contains(".ferry-tmp.")), "no temp files");
}

/// Start a sync of `src` to `dst` slowly enough to be caught writing a
/// multipart upload, and kill it (SIGKILL) once `begun` says the upload began.
async fn kill_once_uploading(
    state: &std::path::Path,
    env: &[(String, String)],
    src: &std::path::Path,
    dst: &str,
    begun: impl Fn() -> bool,
) {
    let mut child = ferry_cmd(state, env)
        .args(["sync", src.to_str().unwrap(), dst, "--bwlimit", "4M", "--part-size", "5M", "--quiet"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !begun() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before an upload began");
        assert!(std::time::Instant::now() < deadline, "no multipart upload began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// [`kill_once_uploading`] against the test server, which sees uploads begin.
async fn kill_during_upload(s3: &S3Server, state: &std::path::Path, src: &std::path::Path, dst: &str) {
    let before = s3.open_uploads().len();
    kill_once_uploading(state, &s3.env(), src, dst, || s3.open_uploads().len() > before).await;
}

/// A run killed in the middle of a multipart upload leaves the upload open
/// (its parts stored, the object absent). The resumed run aborts it before
/// it starts; `ferry cleanup` clears those of runs never resumed, only under
/// its prefix and only when old enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_left_open_by_a_killed_run_are_aborted() {
    let s3 = S3Server::start(&["bkt-mp"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    let body: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(src.join("big.bin"), &body).unwrap();
    let env = s3.env();

    // One run to q is killed and never resumed; so is a run of another
    // source to p; one to p is killed, then resumed.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("other.bin"), &body).unwrap();
    kill_during_upload(&s3, &state, &src, "s3://bkt-mp/q").await;
    kill_during_upload(&s3, &state, &other, "s3://bkt-mp/p").await;
    kill_during_upload(&s3, &state, &src, "s3://bkt-mp/p").await;
    assert_eq!(s3.open_uploads(), ["bkt-mp/p/big.bin", "bkt-mp/p/other.bin", "bkt-mp/q/big.bin"]);

    // By default only uploads older than a day go; a dry run aborts nothing.
    let r = ferry(&state, &env, &["cleanup", "s3://bkt-mp/p", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["found"].as_u64(), j["kept"].as_u64(), j["aborted"].as_u64()), (Some(2), Some(2), Some(0)));
    let r = ferry(&state, &env, &["cleanup", "s3://bkt-mp/p", "--older-than", "0", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("would abort ") && r.stdout.contains("big.bin"), "{}", r.stdout);
    assert_eq!(s3.open_uploads().len(), 3);

    // The resumed run aborts what its interrupted run left, nothing else:
    // not the upload of another source under the same prefix.
    let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-mp/p", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["resumed"].as_bool(), j["aborted_uploads"].as_u64()), (Some(true), Some(1)), "{j}");
    assert_eq!(s3.open_uploads(), ["bkt-mp/p/other.bin", "bkt-mp/q/big.bin"]);
    assert!(std::fs::read(s3.root().join("bkt-mp/p/big.bin")).unwrap() == body);

    // Cleanup of the whole bucket takes the others.
    let r = ferry(&state, &env, &["cleanup", "s3://bkt-mp", "--older-than", "0"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("aborted ") && r.stdout.contains("q/big.bin"), "{}", r.stdout);
    assert!(r.stdout.contains("p/other.bin"), "{}", r.stdout);
    assert!(s3.open_uploads().is_empty());
    let r = ferry(&state, &env, &["cleanup", "s3://bkt-mp", "--older-than", "0", "--json"]);
    assert_eq!(r.json()["found"], 0);

    // Bad input: a local path, a missing bucket, an age without a unit.
    let r = ferry(&state, &env, &["cleanup", src.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("give an s3:// location"), "{}", r.stderr);
    let r = ferry(&state, &env, &["cleanup", "s3://no-such-bucket/p"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no-such-bucket"), "{}", r.stderr);
    let r = ferry(&state, &env, &["cleanup", "s3://bkt-mp", "--older-than", "24"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unit"), "{}", r.stderr);
}

/// `ferry cleanup` against moto, another implementation of the calls (it
/// reports every upload as begun in 2010, so a day's age is long past).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_aborts_open_uploads_on_moto() {
    let Some(moto) = common::emulators::Moto::start(&["bkt-mp"]).await else { return };
    let env = moto.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("sub dir")).unwrap();
    std::fs::write(src.join("sub dir/big é.bin"), vec![7u8; 24 << 20]).unwrap();
    let found = |args: &[&str]| {
        let r = ferry(&state, &env, &[&["cleanup", "--json"], args].concat());
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        r.json()
    };

    let begun = || found(&["s3://bkt-mp/p", "-n"])["found"] != 0;
    kill_once_uploading(&state, &env, &src, "s3://bkt-mp/p", begun).await;

    assert_eq!(found(&["s3://bkt-mp/other"])["found"], 0, "another prefix has none");
    let j = found(&["s3://bkt-mp/p"]);
    assert_eq!((j["found"].as_u64(), j["aborted"].as_u64()), (Some(1), Some(1)), "{j}");
    assert_eq!(j["uploads"][0]["key"], "sub dir/big é.bin", "{j}");
    assert_eq!(found(&["s3://bkt-mp", "--older-than", "0"])["found"], 0, "{j}");
}

/// Run ferry, failing the test if it does not end within `secs`.
fn ferry_within(secs: u64, state: &std::path::Path, env: &[(String, String)], args: &[&str]) -> Run {
    let mut child = ferry_cmd(state, env)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ferry {args:?} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run::of(child.wait_with_output().unwrap())
}

/// A listing page that says "truncated" but gives no continuation token
/// would have the next request start over from the first page, forever.
/// ferry notices the listing going back, fails the run and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_page_without_a_token_fails_the_listing() {
    let s3 = S3Server::start(&["bkt-trunc"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    many_files(&src, 12, 100);
    let env = s3.env();
    assert_eq!(ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-trunc/p"]).code, 0);
    assert_eq!(ferry(&state, &env, &["sync", "s3://bkt-trunc/p", back.to_str().unwrap()]).code, 0);
    std::fs::write(back.join("local-only.txt"), b"keep me").unwrap();

    s3.faults().set_list_truncated_without_token(true);
    for (from, to) in
        [("s3://bkt-trunc/p", back.to_str().unwrap()), (src.to_str().unwrap(), "s3://bkt-trunc/p")]
    {
        let r = ferry_within(60, &state, &env, &["sync", from, to, "--delete", "--json"]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        let j = r.json();
        assert!(j["failures"].to_string().contains("listing went back"), "{j}");
        assert_eq!(j["deleted"], 0, "{j}");
    }
    assert!(back.join("local-only.txt").exists(), "nothing deleted after a broken listing");
    let r = ferry_within(60, &state, &env, &["ls", "-R", "s3://bkt-trunc/p"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("listing went back"), "{}", r.stderr);
}

/// A byte changed in transit fails the CRC32C stored with the object: the
/// item is fetched again, and a corrupt body is never kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_body_is_fetched_again_and_never_stored() {
    let s3 = S3Server::start(&["bkt-corrupt"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    many_files(&src, 30, 5000);
    let env = s3.env();
    assert_eq!(ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-corrupt/p"]).code, 0);

    // A third of the bodies corrupted: every file arrives intact.
    s3.faults().corrupt_bodies(10);
    let back = tmp.path().join("back");
    let gets = s3.counts().get;
    let r = ferry(&state, &env, &["sync", "s3://bkt-corrupt/p", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(s3.counts().get - gets >= 40, "the corrupted bodies were fetched again");
    assert_same(&snapshot(&src, false), &snapshot(&back, false));

    // Every body corrupted: every item fails, and no file is written.
    s3.faults().corrupt_bodies(u32::MAX);
    let back2 = tmp.path().join("back2");
    let r = ferry(
        &state,
        &env,
        &["sync", "s3://bkt-corrupt/p", back2.to_str().unwrap(), "--json", "--retries", "1"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["failed"], 30, "{j}");
    assert!(j["failures"][0]["reason"].as_str().unwrap().contains("checksum mismatch"), "{j}");
    let files: Vec<_> = all_names(&back2).into_iter().filter(|p| p.is_file()).collect();
    assert!(files.is_empty(), "nothing written: {files:?}");
}

/// Small objects another tool stored carry no CRC32C of ferry's, but the
/// store names an object stored by one PUT with the MD5 of its content: a
/// byte changed in transit fails that check, the object is fetched again,
/// and a corrupt body is never kept, whether it goes to a local file or to
/// another bucket. Objects encrypted with SSE-KMS, whose ETags are not
/// MD5s, are not failed for it.
/// Bucket to bucket through ferry (`--no-store-copy`): a copy made by
/// the store itself reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_small_object_is_checked_against_its_etag() {
    let s3 = S3Server::start(&["bkt-md5"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // Stored by another tool: no metadata of ferry's.
    let stored = s3.root().join("bkt-md5/p");
    std::fs::create_dir_all(&stored).unwrap();
    for i in 0..20u32 {
        let body: Vec<u8> =
            (0..3000 + i * 7).map(|j| (j.wrapping_mul(2_654_435_761) >> (i % 9)) as u8).collect();
        std::fs::write(stored.join(format!("f{i}")), body).unwrap();
    }
    let files = |dir: &std::path::Path| all_names(dir).into_iter().filter(|p| p.is_file()).count();
    // Their attributes are the store's (no mtime of their own): contents only.
    let contents = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        snapshot(dir, false).into_iter().map(|(name, v)| (name, v.1)).collect()
    };

    // A quarter of the bodies corrupted: every object arrives intact.
    s3.faults().corrupt_bodies(5);
    let back = tmp.path().join("back");
    let (gets, heads) = (s3.counts().get, s3.counts().head);
    let r =
        ferry(&state, &env, &["sync", "--no-store-copy", "s3://bkt-md5/p", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(s3.counts().get - gets >= 25, "the corrupted bodies were fetched again");
    assert!(s3.counts().head - heads >= 5, "a mismatch asks whether the object is encrypted");
    assert!(contents(&stored) == contents(&back), "every object arrived intact");

    // --checksum compares local files with the objects' ETags: the files
    // are read, the objects are not, either way.
    let b = back.to_str().unwrap();
    let args = ["sync", "--no-store-copy", "s3://bkt-md5/p", b, "--checksum", "--no-checkpoint", "--json"];
    let gets = s3.counts().get;
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(20)), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get, gets, "compared through the ETags");
    let mut changed = std::fs::read(back.join("f3")).unwrap();
    changed[100] ^= 1;
    std::fs::write(back.join("f3"), &changed).unwrap();
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["transferred"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get, gets + 1, "the changed copy was fetched again");
    assert!(contents(&stored) == contents(&back));
    let up = s3.root().join("bkt-md5/up");
    std::fs::create_dir_all(&up).unwrap();
    for (name, body) in contents(&stored) {
        std::fs::write(up.join(name), body).unwrap();
    }
    let r = ferry(&state, &env, &["sync", b, "s3://bkt-md5/up", "--checksum", "--no-checkpoint", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get, gets + 1, "uploads compared through the ETags");
    // Bucket to bucket, between two prefixes another tool stored: the
    // ETags alone, nothing read.
    let twin = s3.root().join("bkt-md5/twin");
    std::fs::create_dir_all(&twin).unwrap();
    for (name, body) in contents(&stored) {
        std::fs::write(twin.join(name), body).unwrap();
    }
    let args = [
        "sync",
        "--no-store-copy",
        "s3://bkt-md5/p",
        "s3://bkt-md5/twin",
        "--checksum",
        "--no-checkpoint",
        "--json",
    ];
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(20)), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get, gets + 1, "bucket to bucket compared through the ETags");

    // Every body corrupted: every item fails naming the ETag, and nothing
    // is written, to a local directory or to another bucket.
    for dst in [tmp.path().join("bad").to_str().unwrap(), "s3://bkt-md5/copy"] {
        s3.faults().corrupt_bodies(u32::MAX);
        let r = ferry(
            &state,
            &env,
            &["sync", "--no-store-copy", "s3://bkt-md5/p", dst, "--json", "--retries", "1"],
        );
        s3.faults().corrupt_bodies(0);
        assert_eq!(r.code, 1, "{dst}: {}\n{}", r.stdout, r.stderr);
        let j = r.json();
        assert_eq!(j["failed"], 20, "{j}");
        let reason = j["failures"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("checksum mismatch")
                && reason.contains("(its ETag;")
                && reason.contains("?checksum=none"),
            "{reason}"
        );
    }
    assert_eq!(files(&tmp.path().join("bad")), 0, "nothing written locally");
    assert!(!s3.root().join("bkt-md5/copy").exists(), "nothing written to the bucket");

    // With checksums off on the source, nothing checks the content.
    s3.faults().corrupt_bodies(1);
    let unchecked = tmp.path().join("unchecked");
    let r = ferry(
        &state,
        &env,
        &["sync", "--no-store-copy", "s3://bkt-md5/p?checksum=none", unchecked.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(contents(&stored) != contents(&unchecked), "the corrupt copy landed");

    // An object encrypted with SSE-KMS has an ETag of 32 hex digits that
    // is not its MD5: it is taken after one HEAD says so, and so are the
    // others of the location without asking again.
    for i in 0..4 {
        s3.encrypt_with_kms("bkt-md5", &format!("p/f{i}"));
    }
    let kms = tmp.path().join("kms");
    let heads = s3.counts().head;
    let r = ferry(
        &state,
        &env,
        &["sync", "--no-store-copy", "s3://bkt-md5/p", kms.to_str().unwrap(), "--json", "--threads", "1"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().head - heads, 1, "one HEAD for the location");
    assert!(contents(&stored) == contents(&kms));
}

/// A large object another tool stored by one PUT, with no checksum the
/// store kept, is checked against its ETag's MD5 too, as it streams (in one
/// GET, not in ranges: an MD5 needs the content in order), to a local file
/// or to another bucket.
/// Bucket to bucket through ferry (`--no-store-copy`): a copy made by
/// the store itself reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_large_object_is_checked_against_its_etag() {
    let s3 = S3Server::start(&["bkt-md5l"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let body: Vec<u8> =
        (0..(13u32 << 20) + 77).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::create_dir_all(s3.root().join("bkt-md5l/p")).unwrap();
    std::fs::write(s3.root().join("bkt-md5l/p/big.bin"), &body).unwrap();
    let stored_copy = |prefix: &str| std::fs::read(s3.root().join("bkt-md5l").join(prefix).join("big.bin"));

    for (i, dst) in ["local", "s3://bkt-md5l/copy"].into_iter().enumerate() {
        let (dst, bad) = match dst {
            "local" => {
                let d = tmp.path().join("back");
                (d.to_str().unwrap().to_string(), tmp.path().join("bad").to_str().unwrap().to_string())
            }
            other => (other.to_string(), "s3://bkt-md5l/bad".to_string()),
        };
        // One body changed: caught, fetched again, stored whole.
        s3.faults().corrupt_bodies(1);
        let gets = s3.counts().get;
        let r = ferry(&state, &env, &["sync", "--no-store-copy", "s3://bkt-md5l/p", &dst, "--json"]);
        assert_eq!(r.code, 0, "{dst}: {}\n{}", r.stdout, r.stderr);
        assert!(s3.counts().get - gets >= 2, "{dst}: the object was read again");
        let copy = match i {
            0 => std::fs::read(std::path::Path::new(&dst).join("big.bin")),
            _ => stored_copy("copy"),
        };
        assert!(copy.unwrap() == body, "{dst}: the copy is the original");

        // Every body changed: the item fails naming the ETag; nothing kept.
        s3.faults().corrupt_bodies(u32::MAX);
        let r = ferry(
            &state,
            &env,
            &["sync", "--no-store-copy", "s3://bkt-md5l/p", &bad, "--json", "--retries", "1"],
        );
        s3.faults().corrupt_bodies(0);
        assert_eq!(r.code, 1, "{bad}: {}\n{}", r.stdout, r.stderr);
        let reason = r.json()["failures"][0]["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("md5") && reason.contains("(its ETag;"), "{reason}");
        let left = match i {
            0 => all_names(std::path::Path::new(&bad)),
            _ => all_names(&s3.root().join("bkt-md5l")).into_iter().filter(|p| p.ends_with("bad")).collect(),
        };
        assert!(left.is_empty(), "{bad}: nothing kept: {left:?}");
    }
    assert!(s3.open_uploads().is_empty());
}

/// rclone's multipart uploads carry no checksum the store keeps and an
/// ETag that is no MD5, but the MD5 of their content in metadata
/// (`md5chksum`): downloads are checked against it, a wrong one fails the
/// item (no SSE-KMS excuse: it is the content's own), and `--checksum`
/// compares a local copy with it without reading the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclones_md5chksum_checks_multipart_downloads() {
    use base64::Engine as _;
    use md5::Digest as _;
    let s3 = S3Server::start(&["bkt-rc"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let op = s3_operator(&s3, "bkt-rc", false);
    let body: Vec<u8> = (0..(11u32 << 20) + 5).map(|i| (i.wrapping_mul(2_654_435_761) >> 5) as u8).collect();
    let put = |key: &'static str, md5: Vec<u8>| {
        let (op, body) = (op.clone(), body.clone());
        async move {
            let meta = [("md5chksum".to_string(), base64::engine::general_purpose::STANDARD.encode(md5))];
            let opts = opendal::options::WriteOptions {
                user_metadata: Some(meta.into_iter().collect()),
                chunk: Some(5 << 20),
                ..Default::default()
            };
            let mut w = op.writer_options(key, opts).await.unwrap();
            w.write(body).await.unwrap();
            w.close().await.unwrap();
        }
    };
    put("p/big.bin", md5::Md5::digest(&body).to_vec()).await;
    put("wrong/big.bin", md5::Md5::digest(b"something else").to_vec()).await;

    let back = tmp.path().join("back");
    let b = back.to_str().unwrap();
    s3.faults().corrupt_bodies(1);
    let gets = s3.counts().get;
    let r = ferry(&state, &env, &["sync", "s3://bkt-rc/p", b, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get - gets, 2, "one stream, read again once");
    assert!(std::fs::read(back.join("big.bin")).unwrap() == body);

    let bad = tmp.path().join("bad");
    // Even for an object encrypted with SSE-KMS: the metadata's MD5 is of
    // the content, whatever the ETag.
    s3.encrypt_with_kms("bkt-rc", "wrong/big.bin");
    let r = ferry(
        &state,
        &env,
        &["sync", "s3://bkt-rc/wrong", bad.to_str().unwrap(), "--json", "--retries", "1"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let reason = r.json()["failures"][0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("(its md5chksum metadata)"), "{reason}");
    assert!(!bad.join("big.bin").exists());

    let args = ["sync", "s3://bkt-rc/p", b, "--checksum", "--no-checkpoint", "--json"];
    let gets = s3.counts().get;
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get, gets, "compared through md5chksum");
}

/// Large objects carry no CRC32C in their metadata (it is known only once
/// the last part is sent), but the store keeps the composite CRC32C of
/// their parts: a byte changed in a ranged GET fails that check, the item
/// is fetched again, and a corrupt file is never kept, whether it goes to a
/// local file (ranged reads) or to another bucket (one stream).
/// Bucket to bucket through ferry (`--no-store-copy`): a copy made by
/// the store itself reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_large_body_fails_the_stored_part_checksums() {
    let s3 = S3Server::start(&["bkt-big"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    // Three parts of 5 MiB and a short fourth; the downloader's two ranges
    // do not line up with them.
    let body: Vec<u8> =
        (0..(15u32 << 20) + 12_345).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(src.join("big.bin"), &body).unwrap();
    let up = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-big/p", "--part-size", "5M"]);
    assert_eq!(up.code, 0, "{}\n{}", up.stdout, up.stderr);

    for (i, dst) in ["local", "s3://bkt-big/copy"].into_iter().enumerate() {
        let dst = match dst {
            "local" => tmp.path().join("back").to_str().unwrap().to_string(),
            other => other.to_string(),
        };
        let read_back = |dst: &str| match dst.strip_prefix("s3://bkt-big/") {
            Some(prefix) => std::fs::read(s3.root().join("bkt-big").join(prefix).join("big.bin")),
            None => std::fs::read(std::path::Path::new(dst).join("big.bin")),
        };
        // The GETs of one clean copy.
        let gets = s3.counts().get;
        let r =
            ferry(&state, &env, &["sync", "--no-store-copy", "s3://bkt-big/p", &format!("{dst}-{i}-clean")]);
        assert_eq!(r.code, 0, "{dst}: {}\n{}", r.stdout, r.stderr);
        let clean_gets = s3.counts().get - gets;

        // Two bodies changed: caught, fetched again, stored whole.
        s3.faults().corrupt_bodies(2);
        let (gets, heads) = (s3.counts().get, s3.counts().head);
        let r = ferry(&state, &env, &["sync", "--no-store-copy", "s3://bkt-big/p", &dst, "--json"]);
        assert_eq!(r.code, 0, "{dst}: {}\n{}", r.stdout, r.stderr);
        assert!(read_back(&dst).unwrap() == body, "{dst}: the copy is the original");
        assert!(s3.counts().get - gets > clean_gets, "{dst}: the corrupted item was read again");
        assert!(s3.counts().head - heads >= 2, "{dst}: the stored checksum was asked for");

        // Every body changed: the item fails, naming the stored checksum,
        // and nothing is left at the destination.
        let dst2 = format!("{dst}-{i}-bad");
        s3.faults().corrupt_bodies(u32::MAX);
        let r = ferry(
            &state,
            &env,
            &["sync", "--no-store-copy", "s3://bkt-big/p", &dst2, "--json", "--retries", "1"],
        );
        s3.faults().corrupt_bodies(0);
        assert_eq!(r.code, 1, "{dst2}: {}\n{}", r.stdout, r.stderr);
        let reason = r.json()["failures"][0]["reason"].as_str().unwrap().to_string();
        assert!(
            reason.contains("checksum mismatch") && reason.contains("-4 (parts of 5242880 bytes)"),
            "{reason}"
        );
        assert!(read_back(&dst2).is_err(), "{dst2}: nothing stored");
    }
    assert!(s3.open_uploads().is_empty());

    // Under a part size larger than the object, a copy from a stream (bucket
    // to bucket) goes up in one PUT, whose CRC32C the store keeps for the
    // whole content: that is checked too.
    let args = ["sync", "--no-store-copy", "s3://bkt-big/p", "s3://bkt-big/wide", "--part-size", "32M"];
    let puts = s3.counts().put;
    assert_eq!(ferry(&state, &env, &args).code, 0);
    assert_eq!(s3.counts().put - puts, 1, "one PUT");
    let (wide, clean) = (tmp.path().join("wide"), tmp.path().join("wide-clean"));
    let gets = s3.counts().get;
    assert_eq!(
        ferry(&state, &env, &["sync", "--no-store-copy", "s3://bkt-big/wide", clean.to_str().unwrap()]).code,
        0
    );
    let clean_gets = s3.counts().get - gets;
    assert_eq!(clean_gets, 2, "one ranged GET per 8 MiB begun");
    s3.faults().corrupt_bodies(1);
    let gets = s3.counts().get;
    let r = ferry(
        &state,
        &env,
        &["sync", "--no-store-copy", "s3://bkt-big/wide", wide.to_str().unwrap(), "--json"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(s3.counts().get - gets > clean_gets, "the corrupted body was read again");
    assert!(std::fs::read(wide.join("big.bin")).unwrap() == body);

    // Without S3 checksums on the source nothing checks a large object's
    // content on the way down: the changed byte lands.
    s3.faults().corrupt_bodies(1);
    let unchecked = tmp.path().join("unchecked");
    let r = ferry(
        &state,
        &env,
        &["sync", "--no-store-copy", "s3://bkt-big/p?checksum=none", unchecked.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::read(unchecked.join("big.bin")).unwrap() != body, "the corrupt copy landed");
}

/// An object uploaded by another tool with the CRC64NVME current AWS SDKs
/// send by default, and no CRC32C: its store keeps that checksum, and large
/// downloads are checked against it (ranged reads combine their CRC64NVMEs),
/// to a local file and to another bucket; `--checksum` compares a local
/// copy with it without reading the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_crc64nvme_checks_large_downloads() {
    let s3 = S3Server::start(&["bkt-c64"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    let body: Vec<u8> =
        (0..(13u32 << 20) + 4_321).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    std::fs::write(src.join("big.bin"), &body).unwrap();
    // Without ferry's checksums: the store keeps only what is set below.
    let up = ["sync", src.to_str().unwrap(), "s3://bkt-c64/p?checksum=none", "--part-size", "5M"];
    assert_eq!(ferry(&state, &env, &up).code, 0);
    s3.keep_crc64nvme("bkt-c64", "p/big.bin");

    let back = tmp.path().join("back");
    let b = back.to_str().unwrap();
    s3.faults().corrupt_bodies(2);
    let r = ferry(&state, &env, &["sync", "s3://bkt-c64/p", b, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::read(back.join("big.bin")).unwrap() == body, "the corrupted read was caught and redone");

    let bad = tmp.path().join("bad");
    s3.faults().corrupt_bodies(u32::MAX);
    let r =
        ferry(&state, &env, &["sync", "s3://bkt-c64/p", bad.to_str().unwrap(), "--json", "--retries", "1"]);
    s3.faults().corrupt_bodies(0);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let reason = r.json()["failures"][0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("checksum mismatch") && reason.contains("crc64nvme"), "{reason}");
    assert!(!bad.join("big.bin").exists());

    // Bucket to bucket: one stream, checked the same way.
    s3.faults().corrupt_bodies(1);
    let r = ferry(&state, &env, &["sync", "s3://bkt-c64/p", "s3://bkt-c64/copy", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::read(s3.root().join("bkt-c64/copy/big.bin")).unwrap() == body);

    // --checksum: the local copy is read, the object is not.
    let gets = s3.counts().get;
    let args = ["sync", "s3://bkt-c64/p", b, "--checksum", "--no-checkpoint", "--json"];
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get, gets, "compared through the stored CRC64NVME");
    let mut changed = body.clone();
    changed[7 << 20] ^= 1;
    std::fs::write(back.join("big.bin"), &changed).unwrap();
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["transferred"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::read(back.join("big.bin")).unwrap() == body);
}

/// A composite checksum over parts of unequal sizes (a writer that sends
/// whatever it has buffered) cannot be checked part by part: the first
/// part's size does not cut the content as the writer did. The download
/// is taken with a warning instead of failing forever, and `--checksum`
/// falls back to reading the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_of_unequal_sizes_are_not_taken_for_corruption() {
    let s3 = S3Server::start(&["bkt-uneven"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (back, state) = (tmp.path().join("back"), tmp.path().join("state"));
    let op = s3_operator(&s3, "bkt-uneven", true);
    // Parts of 5.5, 6 and 1.5 MiB: OpenDAL sends each write once it passes 5 MiB.
    let body: Vec<u8> = (0..13u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    let mut w = op.writer("p/uneven.bin").await.unwrap();
    for piece in [&body[..11 << 19], &body[11 << 19..23 << 19], &body[23 << 19..]] {
        w.write(piece.to_vec()).await.unwrap();
    }
    w.close().await.unwrap();

    let r = ferry(&state, &env, &["sync", "s3://bkt-uneven/p", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let warnings = r.json()["warnings"].to_string();
    assert!(warnings.contains("uneven.bin: its parts are of unequal sizes"), "{warnings}");
    assert!(std::fs::read(back.join("uneven.bin")).unwrap() == body);

    let gets = s3.counts().get;
    let args =
        ["sync", "s3://bkt-uneven/p", back.to_str().unwrap(), "--checksum", "--no-checkpoint", "--json"];
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(1)), "{}\n{}", r.stdout, r.stderr);
    assert!(s3.counts().get > gets, "compared by reading it");
}

/// A multipart object of another tool with neither a checksum its store
/// keeps nor rclone's `md5chksum` (what the AWS CLI uploads) is named by
/// the MD5 of its parts' MD5s: with its part size (one HEAD of part 1), a
/// download is checked part by part, in ranges of whole parts to a local
/// file and in one stream to a bucket. A changed byte is fetched again and
/// never kept; parts of unequal sizes are taken with a warning.
/// Bucket to bucket through ferry (`--no-store-copy`): a copy made by
/// the store itself reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_multipart_object_is_checked_against_its_etag() {
    let s3 = S3Server::start(&["bkt-mp"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let op = s3_operator(&s3, "bkt-mp", false);
    // Five parts of 5 MiB and a short sixth.
    let body: Vec<u8> = (0..(25u32 << 20) + 3).map(|i| (i.wrapping_mul(2_654_435_761) >> 3) as u8).collect();
    let opts = opendal::options::WriteOptions { chunk: Some(5 << 20), ..Default::default() };
    let mut w = op.writer_options("p/big.bin", opts).await.unwrap();
    w.write(body.clone()).await.unwrap();
    w.close().await.unwrap();
    let etag = op.stat("p/big.bin").await.unwrap().etag().unwrap().to_string();
    assert!(etag.trim_matches('"').ends_with("-6"), "{etag}");

    for (i, dst) in ["local", "s3://bkt-mp/copy"].into_iter().enumerate() {
        let (dst, bad) = match dst {
            "local" => {
                let d = tmp.path().join("back");
                (d.to_str().unwrap().to_string(), tmp.path().join("bad").to_str().unwrap().to_string())
            }
            other => (other.to_string(), "s3://bkt-mp/bad".to_string()),
        };
        let gets = s3.counts().get;
        let r = ferry(
            &state,
            &env,
            &["sync", "--no-store-copy", "s3://bkt-mp/p", &dst, "--json", "--no-checkpoint"],
        );
        assert_eq!(r.code, 0, "{dst}: {}\n{}", r.stdout, r.stderr);
        // To a local file: three ranges of two whole parts each (the last
        // one of one part and a bit); to a bucket: in order, 8 MiB a GET.
        assert_eq!(s3.counts().get - gets, [3, 4][i], "{dst}: GETs");

        // One body changed: caught, fetched again, stored whole.
        s3.faults().corrupt_bodies(1);
        let dst = format!("{dst}-again");
        let r = ferry(
            &state,
            &env,
            &["sync", "--no-store-copy", "s3://bkt-mp/p", &dst, "--json", "--no-checkpoint"],
        );
        s3.faults().corrupt_bodies(0);
        assert_eq!(r.code, 0, "{dst}: {}\n{}", r.stdout, r.stderr);
        let copy = match i {
            0 => std::fs::read(std::path::Path::new(&dst).join("big.bin")).unwrap(),
            _ => std::fs::read(s3.root().join("bkt-mp/copy-again/big.bin")).unwrap(),
        };
        assert!(copy == body, "{dst}: the copy is the original");

        // Every body changed: the item fails naming the ETag; nothing kept.
        s3.faults().corrupt_bodies(u32::MAX);
        let r = ferry(
            &state,
            &env,
            &["sync", "--no-store-copy", "s3://bkt-mp/p", &bad, "--json", "--retries", "1"],
        );
        s3.faults().corrupt_bodies(0);
        assert_eq!(r.code, 1, "{bad}: {}\n{}", r.stdout, r.stderr);
        let reason = r.json()["failures"][0]["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("-6 of parts of 5242880 bytes (its ETag;"), "{reason}");
        let left = match i {
            0 => all_names(std::path::Path::new(&bad)),
            _ => all_names(&s3.root().join("bkt-mp"))
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("bad"))
                .collect(),
        };
        assert!(left.is_empty(), "{bad}: nothing kept: {left:?}");
    }

    // Between buckets, --checksum takes equal multipart ETags for the same
    // content without reading either object; ferry's copy above, cut into
    // parts of 8 MiB, has another ETag and is read.
    let opts = opendal::options::WriteOptions { chunk: Some(5 << 20), ..Default::default() };
    let mut w = op.writer_options("twin/big.bin", opts).await.unwrap();
    w.write(body.clone()).await.unwrap();
    w.close().await.unwrap();
    for (dst, read) in [("s3://bkt-mp/twin", false), ("s3://bkt-mp/copy", true)] {
        let gets = s3.counts().get;
        let args =
            ["sync", "--no-store-copy", "s3://bkt-mp/p", dst, "--checksum", "--no-checkpoint", "--json"];
        let r = ferry(&state, &env, &args);
        assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(1)), "{dst}: {}\n{}", r.stdout, r.stderr);
        assert_eq!(s3.counts().get > gets, read, "{dst}: read");
    }

    // Parts of 5.5, 6 and 1.5 MiB (OpenDAL sends each write once it passes
    // 5 MiB): the first part's size does not cut the content as the writer
    // did, every part's size is asked for, and the copy is taken with a
    // warning rather than failed forever.
    let mut w = op.writer("uneven/u.bin").await.unwrap();
    let body = &body[..13 << 20];
    for piece in [&body[..11 << 19], &body[11 << 19..23 << 19], &body[23 << 19..]] {
        w.write(piece.to_vec()).await.unwrap();
    }
    w.close().await.unwrap();
    let back = tmp.path().join("uneven");
    let r = ferry(
        &state,
        &env,
        &["sync", "--no-store-copy", "s3://bkt-mp/uneven", back.to_str().unwrap(), "--json"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let warnings = r.json()["warnings"].to_string();
    assert!(
        warnings.contains("u.bin: its parts are of unequal sizes, so its ETag cannot be checked"),
        "{warnings}"
    );
    assert!(std::fs::read(back.join("u.bin")).unwrap() == body);
    assert!(s3.open_uploads().is_empty());
}

/// The checkpoint database locked by another process for longer than
/// SQLite waits (10 s): the run holds its done items, writes them once the
/// lock is gone, and ends as it would have (exit 0, every item recorded,
/// so the rerun has nothing to do). It used to end with exit 2 after
/// copying everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_checkpoint_database_does_not_fail_the_run() {
    use sqlx::Connection;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    many_files(&src, 300, 20_000);
    std::fs::create_dir_all(&state).unwrap();
    let db = format!("sqlite://{}", state.join("cp.db").display());
    let args = [
        "sync",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--state-db",
        &db,
        "--bwlimit",
        "400K",
        "--json",
    ];
    let child = ferry_cmd(&state, &[]).args(args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
    drop(conn);
    let r = Run::of(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(
        (j["transferred"].as_u64(), j["failed"].as_u64()),
        (Some(303), Some(0)),
        "300 files, 3 directories: {j}"
    );
    assert_eq!(j["warnings"], serde_json::json!([]), "the lock was outlasted: {j}");
    assert_same(&snapshot(&src, false), &snapshot(&dst, false));
    let mut conn = sqlx::SqliteConnection::connect(&db).await.unwrap();
    let (done, finished): (i64, bool) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM sync_done), (SELECT finished FROM sync_runs)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((done, finished), (300, true), "every item recorded, the run marked finished");
}

/// A byte changed on the way up: every upload carries the CRC32C of what
/// ferry read, the store refuses a body that does not match it (BadDigest),
/// and the item is sent again; no changed object is stored, single PUT or
/// multipart. With `checksum=none` the same fault stores a corrupt object,
/// which only the reader's CRC32C check then catches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_changed_on_the_way_up_is_refused_and_sent_again() {
    let s3 = S3Server::start(&["bkt-up"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (small, large, state) =
        (tmp.path().join("small"), tmp.path().join("large"), tmp.path().join("state"));
    many_files(&small, 12, 3000);
    std::fs::create_dir_all(&large).unwrap();
    let body: Vec<u8> = (0..12u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(large.join("big.bin"), &body).unwrap();

    let mut corrupted = 0;
    for (src, prefix, n) in [(&small, "small", 4), (&large, "large", 2)] {
        s3.faults().corrupt_uploads(n);
        let dst = format!("s3://bkt-up/{prefix}");
        let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), &dst, "--part-size", "5M", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        corrupted += n;
        assert_eq!(s3.faults().uploads_corrupted(), corrupted, "the fault hit {n} uploads of {prefix}");
        for f in all_names(src).into_iter().filter(|p| p.is_file()) {
            let rel = f.strip_prefix(src).unwrap();
            let stored = std::fs::read(s3.root().join("bkt-up").join(prefix).join(rel)).unwrap();
            assert!(stored == std::fs::read(&f).unwrap(), "{prefix}/{} stored as read", rel.display());
        }
    }
    assert!(s3.open_uploads().is_empty());

    // Without the checksum the same fault lands. A small object's CRC32C,
    // kept in its metadata, lets a reader refuse it; a multipart object
    // uploaded without part checksums has no such record.
    let stored_changed = |prefix: &str, src: &std::path::Path| {
        let files = all_names(src).into_iter().filter(|p| p.is_file());
        files
            .filter(|f| {
                let stored = s3.root().join("bkt-up").join(prefix).join(f.strip_prefix(src).unwrap());
                std::fs::read(stored).unwrap() != std::fs::read(f).unwrap()
            })
            .count()
    };
    for (src, prefix) in [(&small, "unchecked-small"), (&large, "unchecked-large")] {
        s3.faults().corrupt_uploads(1);
        let dst = format!("s3://bkt-up/{prefix}?checksum=none");
        let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), &dst, "--part-size", "5M", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        corrupted += 1;
        assert_eq!(s3.faults().uploads_corrupted(), corrupted);
        assert_eq!(stored_changed(prefix, src), 1, "{prefix}: the changed body was stored");
    }
    // --verify transferred reads every copy back: the changed one is removed
    // and written again, so none stays (a later run would take it, with its
    // right size and mtime, as up to date).
    for (src, prefix) in [(&small, "verified-small"), (&large, "verified-large")] {
        s3.faults().corrupt_uploads(1);
        let dst = format!("s3://bkt-up/{prefix}?checksum=none");
        let args =
            ["sync", src.to_str().unwrap(), &dst, "--part-size", "5M", "--verify", "transferred", "--json"];
        let r = ferry(&state, &env, &args);
        assert_eq!((r.code, r.json()["failed"].as_u64()), (0, Some(0)), "{}\n{}", r.stdout, r.stderr);
        corrupted += 1;
        assert_eq!(s3.faults().uploads_corrupted(), corrupted);
        assert_eq!(stored_changed(prefix, src), 0, "{prefix}: the changed copy was written again");
    }
    // Every copy changed: the items fail, with the reason, and no copy stays.
    let one = tmp.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::write(one.join("f.bin"), vec![7u8; 3000]).unwrap();
    s3.faults().corrupt_uploads(1000);
    let dst = "s3://bkt-up/never?checksum=none";
    let r = ferry(&state, &env, &["sync", one.to_str().unwrap(), dst, "--verify", "transferred", "--json"]);
    s3.faults().corrupt_uploads(0);
    assert_eq!((r.code, r.json()["failed"].as_u64()), (1, Some(1)), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.json()["failures"][0]["reason"].as_str().unwrap().contains("verification failed"),
        "{}",
        r.stdout
    );
    assert!(!s3.root().join("bkt-up/never/f.bin").exists(), "no copy known to be wrong stays");
    let back = tmp.path().join("back");
    let r = ferry(&state, &env, &["sync", "s3://bkt-up/unchecked-small", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.json()["failures"][0]["reason"].as_str().unwrap().contains("checksum mismatch"),
        "{}",
        r.stdout
    );

    // A store that does not know the headers: the failure says how to go on.
    s3.faults().refuse_checksum_headers(true);
    let r = ferry(
        &state,
        &env,
        &["sync", small.to_str().unwrap(), "s3://bkt-up/old", "--json", "--retries", "0"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.json()["failures"][0]["reason"].as_str().unwrap().contains("add ?checksum=none"),
        "{}",
        r.stdout
    );
    let r =
        ferry(&state, &env, &["sync", small.to_str().unwrap(), "s3://bkt-up/old?checksum=none", "--json"]);
    assert_eq!((r.code, r.json()["failed"].as_u64()), (0, Some(0)), "{}\n{}", r.stdout, r.stderr);
    // Downloads from such a store: the stored checksum cannot be asked for
    // (400), so large objects go unchecked instead of failing.
    let down = tmp.path().join("down");
    let r = ferry(&state, &env, &["sync", "s3://bkt-up/large", down.to_str().unwrap(), "--json"]);
    assert_eq!((r.code, r.json()["failed"].as_u64()), (0, Some(0)), "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::read(down.join("big.bin")).unwrap() == body);
    s3.faults().refuse_checksum_headers(false);

    let r = ferry(&state, &env, &["sync", large.to_str().unwrap(), "s3://bkt-up/x?checksum=md4"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("checksum=\"md4\": use crc32c or none"), "{}", r.stderr);
}

/// Source files that grow, shrink or disappear while they are copied fail
/// their items: nothing at the final name (no object, no open upload), no
/// temporary file; the next run copies what is there then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_changed_during_the_copy_fail_their_items() {
    let s3 = S3Server::start(&["bkt-change"]).await;
    let env = s3.env();
    for dst_kind in ["local", "s3"] {
        let tmp = tempfile::tempdir().unwrap();
        let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
        std::fs::create_dir_all(&src).unwrap();
        for name in ["grow.bin", "shrink.bin", "gone.bin"] {
            std::fs::write(src.join(name), vec![b'x'; 12 << 20]).unwrap();
        }
        std::fs::write(src.join("small.txt"), b"steady").unwrap();
        let dst = match dst_kind {
            "local" => tmp.path().join("dst").to_str().unwrap().to_string(),
            _ => "s3://bkt-change/p".to_string(),
        };
        let args = ["sync", src.to_str().unwrap(), &dst, "--bwlimit", "6M", "--part-size", "5M", "--json"];
        let child = ferry_cmd(&state, &env).args(args).stdout(std::process::Stdio::piped()).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let f = std::fs::OpenOptions::new().append(true).open(src.join("grow.bin")).unwrap();
        std::io::Write::write_all(&mut &f, b"more").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("shrink.bin"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        std::fs::remove_file(src.join("gone.bin")).unwrap();
        let r = Run::of(child.wait_with_output().unwrap());
        assert_eq!(r.code, 1, "{dst_kind}: {}\n{}", r.stdout, r.stderr);
        let j = r.json();
        let failed: Vec<&str> =
            j["failures"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert_eq!(failed.len(), 3, "{dst_kind}: {j}");
        for name in ["grow.bin", "shrink.bin", "gone.bin"] {
            assert!(failed.contains(&name), "{dst_kind}: {name} {j}");
        }
        assert_eq!(j["transferred"], 1, "{dst_kind}: {j}");
        let written: Vec<std::path::PathBuf> = match dst_kind {
            "local" => all_names(std::path::Path::new(&dst)),
            _ => all_names(&s3.root().join("bkt-change/p")),
        };
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["small.txt"], "{dst_kind}: only the steady file is written");
        assert!(s3.open_uploads().is_empty(), "failed uploads are aborted: {:?}", s3.open_uploads());

        // The next run copies the files as they are now.
        let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), &dst, "--json"]);
        assert_eq!(r.code, 0, "{dst_kind}: {}\n{}", r.stdout, r.stderr);
        assert_eq!(r.json()["transferred"], 2, "{dst_kind}: {}", r.stdout);
    }
}

/// An object rewritten after it was listed fails its item: each GET asks
/// for the listed ETag (`If-Match`), so no copy mixes or swaps versions.
/// No file and no temporary file for it at DST; the next run copies the
/// new content. (One GET, or the ranges of one object, all start together
/// and each reads one version: a rewrite while they stream is not seen,
/// and what lands is the listed version, whole.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_rewritten_after_the_listing_fails_its_item() {
    let Some(moto) = common::emulators::Moto::start(&["bkt-rewrite"]).await else { return };
    let http = reqwest::Client::new();
    // moto checks no signature, but answers a request without any as an
    // anonymous one, which may not overwrite an object.
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=00";
    let put = |key: &'static str, body: Vec<u8>| {
        let url = format!("{}/bkt-rewrite/{key}", moto.endpoint());
        let req = http.put(url).header("authorization", auth).body(body);
        async move { assert!(req.send().await.unwrap().status().is_success(), "put {key}") }
    };
    for key in ["f0", "f1", "f2", "f3"] {
        put(key, vec![b'a'; 2 << 20]).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dst, state) = (tmp.path().join("dst"), tmp.path().join("state"));
    // One item at a time, half a second each: f3 is read last.
    let args =
        ["sync", "s3://bkt-rewrite/", dst.to_str().unwrap(), "--bwlimit", "4M", "--threads", "1", "--json"];
    let child =
        ferry_cmd(&state, &moto.env()).args(args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Listed once the first copy begins.
    let begun = || std::fs::read_dir(&dst).is_ok_and(|mut d| d.next().is_some());
    for _ in 0..200 {
        if begun() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(begun(), "the copy never began");
    put("f3", vec![b'b'; 2 << 20]).await;
    let r = Run::of(child.wait_with_output().unwrap());
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let f = &j["failures"][0];
    assert_eq!((j["failed"].as_u64(), f["path"].as_str()), (Some(1), Some("f3")), "{j}");
    assert!(f["reason"].as_str().unwrap_or_default().contains("source changed during copy"), "{j}");
    let mut names: Vec<_> = all_names(&dst).iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["f0", "f1", "f2"], "no file, and no temporary file, for f3");

    let r = ferry(&state, &moto.env(), &["sync", "s3://bkt-rewrite/", dst.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read(dst.join("f3")).unwrap(), vec![b'b'; 2 << 20], "the new content");
}

/// Between two buckets of one store, the store copies each object
/// itself, and the copy is of the version listed: an object rewritten
/// after the listing fails its item (its attributes, read before the
/// copy, are of another ETag), and nothing is copied for it. moto lists
/// ETags, which s3s-fs does not (tests/sync_roundtrip.rs covers a rewrite
/// while the copy waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_within_the_store_is_of_the_version_listed() {
    let Some(moto) = common::emulators::Moto::start(&["bkt-from", "bkt-to"]).await else { return };
    let http = reqwest::Client::new();
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=00";
    let url = |key: &str| format!("{}/{key}", moto.endpoint());
    let put = |key: String, body: &'static str| {
        let req = http.put(url(&key)).header("authorization", auth).body(body);
        async move { assert!(req.send().await.unwrap().status().is_success(), "put {key}") }
    };
    for i in 0..300 {
        put(format!("bkt-from/k{i:03}"), "version one").await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // One item at a time, in key order: k299 is looked at last. (moto
    // takes an unsigned request for an anonymous one, refused here.)
    let args = ["sync", "s3://bkt-from/", "s3://bkt-to/", "--threads", "1", "--json"];
    let child =
        ferry_cmd(&state, &moto.env()).args(args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let exists = |key: &str| {
        let req = http.head(url(key)).header("authorization", auth);
        async move { req.send().await.unwrap().status().is_success() }
    };
    let started = std::time::Instant::now();
    while !exists("bkt-to/k000").await && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    put("bkt-from/k299".into(), "version two").await;
    let r = Run::of(child.wait_with_output().unwrap());
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["failed"].as_u64(), j["copied_in_store"].as_u64()), (Some(1), Some(299)), "{j}");
    let f = &j["failures"][0];
    assert_eq!(f["path"], "k299", "{j}");
    assert!(f["reason"].as_str().unwrap().contains("rewritten after it was listed"), "{j}");
    assert!(!exists("bkt-to/k299").await, "nothing copied for k299");

    let r = ferry(&state, &moto.env(), &["sync", "s3://bkt-from/", "s3://bkt-to/", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["copied_in_store"], 1, "{}", r.stdout);
    let get = http.get(url("bkt-to/k299")).header("authorization", auth);
    let body = get.send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "version two");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    /// `None` (with a note) where mounting is not allowed; CI runs as root.
    fn mount(at: &std::path::Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs here (not root?): destination-full test not run");
        }
        ok.then(|| SmallFs(at.to_path_buf()))
    }

    fn remount(&self, opts: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opts}"), self.0.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A destination that fills up (ENOSPC) or is read-only (EROFS): the items
/// that cannot be written fail with the reason, nothing partial is left at a
/// final name, and no temporary file stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_destination_fails_items_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    let Some(fs) = SmallFs::mount(&tmp.path().join("dst"), "6m") else { return };
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..4 {
        std::fs::write(src.join(format!("d/big{i}.bin")), vec![i as u8; 2 << 20]).unwrap();
    }
    std::fs::write(src.join("small.txt"), b"fits").unwrap();
    let (s, d) = (src.to_str().unwrap(), fs.0.to_str().unwrap());

    let r = ferry(&state, &[], &["sync", s, d, "--json", "--threads", "1"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let failures = j["failures"].as_array().unwrap();
    assert!(!failures.is_empty() && failures.len() < 4, "{j}");
    assert!(failures.iter().all(|f| f["reason"].as_str().unwrap().contains("No space left")), "{j}");
    let complete = |p: &std::path::Path| {
        std::fs::read(p).unwrap() == std::fs::read(src.join(p.strip_prefix(d).unwrap())).unwrap()
    };
    let names = all_names(&fs.0);
    assert!(
        names.iter().all(|p| !p.to_string_lossy().contains(".ferry-tmp")),
        "no temporary files: {names:?}"
    );
    assert!(names.iter().filter(|p| p.is_file()).all(|p| complete(p)), "no partial file at a final name");
    assert_eq!(j["transferred"].as_u64().unwrap() + failures.len() as u64, 6, "{j}");

    // Read-only: every new item fails with the reason; nothing changes.
    std::fs::write(src.join("late.txt"), b"late").unwrap();
    fs.remount("ro");
    let before = all_names(&fs.0);
    let r = ferry(&state, &[], &["sync", s, d, "--json", "--threads", "1"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.json()["failures"].to_string().contains("Read-only file system"), "{}", r.stdout);
    assert_eq!(all_names(&fs.0), before);

    // With room again, a rerun completes the copy.
    fs.remount("rw,size=16m");
    let r = ferry(&state, &[], &["sync", s, d, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_same(&snapshot(&src, false), &snapshot(&fs.0, false));
}

/// A download that cannot fit fails before a byte of it is fetched: its
/// space is reserved when its temporary file is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_cannot_fit_fails_before_fetching() {
    let s3 = S3Server::start(&["bkt-full"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), vec![7u8; 12 << 20]).unwrap();
    std::fs::write(src.join("small.txt"), b"fits").unwrap();
    let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-full"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let Some(fs) = SmallFs::mount(&tmp.path().join("dst"), "4m") else { return };

    let gets = s3.counts().get;
    let r = ferry(&state, &env, &["sync", "s3://bkt-full", fs.0.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let failures = j["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{j}");
    assert_eq!(failures[0]["path"], "big.bin", "{j}");
    assert!(failures[0]["reason"].as_str().unwrap().contains("No space left"), "{j}");
    assert_eq!(s3.counts().get - gets, 1, "only the small object was fetched");
    assert_eq!(all_names(&fs.0), vec![fs.0.join("small.txt")], "nothing else written");
}

/// CompleteMultipartUpload succeeds on the server but its answer is lost:
/// the retry finds the upload gone. The object is there and whole, so the
/// item counts as copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_complete_answer_still_counts_as_copied() {
    let s3 = S3Server::start(&["bkt-complete"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(&src).unwrap();
    let body: Vec<u8> = (0..12u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(src.join("big.bin"), &body).unwrap();

    s3.faults().lose_complete_answers(1);
    let r = ferry(
        &state,
        &env,
        &["sync", src.to_str().unwrap(), "s3://bkt-complete/p", "--part-size", "5M", "--json"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["transferred"], 1, "{}", r.stdout);
    assert!(std::fs::read(s3.root().join("bkt-complete/p/big.bin")).unwrap() == body);
    assert!(s3.open_uploads().is_empty());
    // It is known to be up to date.
    let r = ferry(&state, &env, &["sync", src.to_str().unwrap(), "s3://bkt-complete/p", "--json"]);
    assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(1)), "{}", r.stdout);
}

/// A retried request is no news: nothing on stderr by default, one line
/// each with `-v`, and never a backtrace (with RUST_BACKTRACE set, a
/// logged backtrace once cost the process ~125 MiB to symbolize).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_quiet_and_carry_no_backtrace() {
    let s3 = S3Server::start(&["bkt-quiet"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    many_files(&src, 30, 100);
    let mut env = s3.env();
    env.push(("RUST_BACKTRACE".into(), "1".into()));
    s3.faults().set_error_rate(OpClass::Put, 300, 503);
    let s = src.to_str().unwrap();
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-quiet/a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "", "retries that succeed say nothing");
    let r = ferry(&state, &env, &["sync", s, "s3://bkt-quiet/b", "-v"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let retries: Vec<&str> = r.stderr.lines().filter(|l| l.contains("retrying")).collect();
    assert!(!retries.is_empty(), "{}", r.stderr);
    assert!(retries.iter().all(|l| l.contains("503")), "{retries:?}");
    assert!(!r.stderr.contains("Backtrace") && !r.stderr.contains("backtrace"), "{}", r.stderr);
}

/// Connections reset in the middle of uploads (a store restarting: every
/// connection closed, new ones refused for a moment): the requests caught
/// are sent again and the run ends in a whole, correct copy, with no
/// multipart upload left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_mid_upload_end_in_a_correct_copy() {
    let s3 = S3Server::start(&["bkt-reset"]).await;
    let (proxy, proxied) = ferry_testkit::TcpProxy::in_front_of(&s3.endpoint()).await;
    let env = env_via(&s3, &proxied);
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    many_files(&src, 60, 20_000);
    let body: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    std::fs::write(src.join("big.bin"), &body).unwrap();
    s3.faults().set_delay(ferry_testkit::OpClass::Put, Duration::from_millis(400));
    let child = ferry_cmd(&state, &env)
        .args(["sync", src.to_str().unwrap(), "s3://bkt-reset/p", "--part-size", "5M", "--json", "-v"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Every upload request waits 400 ms at the store: the resets find
    // them on the wire (each is 300 ms of refused connections).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.restart(Duration::from_millis(300)).await;
    }
    s3.faults().set_delay(ferry_testkit::OpClass::Put, Duration::ZERO);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let r = Run::of(out);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["failed"].as_u64(), j["resumed"].as_bool()), (Some(0), Some(false)), "{j}");
    assert!(r.stderr.contains("retrying write"), "the resets caught uploads in flight: {}", r.stderr);
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    assert!(std::fs::read(s3.root().join("bkt-reset/p/big.bin")).unwrap() == body);
    assert_eq!(ferry(&state, &s3.env(), &["sync", "s3://bkt-reset/p", back.to_str().unwrap()]).code, 0);
    assert_same(&snapshot(&src, false), &snapshot(&back, false));
}

/// A store that accepts connections and never answers (a partition, a
/// hung gateway): within seconds the run says what it is waiting for,
/// instead of staying silent for its timeouts times its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_answers_is_named_within_seconds() {
    use std::io::BufRead;
    let s3 = S3Server::start(&["bkt-silent"]).await;
    let (proxy, proxied) = ferry_testkit::TcpProxy::in_front_of(&s3.endpoint()).await;
    proxy.partition();
    let env = env_via(&s3, &proxied);
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    many_files(&src, 3, 100);
    let started = std::time::Instant::now();
    let mut child = ferry_cmd(&state, &env)
        .args(["sync", src.to_str().unwrap(), "s3://bkt-silent/p"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let notice = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr).lines().map_while(Result::ok).find(|l| l.contains("no answer from"))
    });
    let notice = tokio::time::timeout(Duration::from_secs(30), notice).await;
    let _ = child.kill();
    let _ = child.wait();
    let notice = notice.expect("a notice within 30 s").unwrap().expect("a notice before the run ended");
    assert!(started.elapsed() < Duration::from_secs(15), "notice after {:?}", started.elapsed());
    assert!(notice.contains("s3://bkt-silent/p") && notice.contains(&proxied), "{notice}");
    assert!(notice.contains("still trying"), "{notice}");
    assert_eq!(std::fs::read_dir(s3.root().join("bkt-silent")).unwrap().count(), 0, "nothing written");
}

/// A store that goes away mid-run: once nothing has succeeded for
/// `--unreachable-limit`, the run stops (exit 2) instead of failing every
/// item left after its retries, and the rerun, with the store back,
/// completes the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_gone_away_stops_the_run_and_a_rerun_completes_it() {
    let s3 = S3Server::start(&["bkt"]).await;
    let (proxy, proxied) = ferry_testkit::TcpProxy::in_front_of(&s3.endpoint()).await;
    let through_proxy = env_via(&s3, &proxied);
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    many_files(&src, 300, 1000);
    let s = src.to_str().unwrap();
    let child = ferry_cmd(&state, &through_proxy)
        .args([
            "sync",
            s,
            "s3://bkt/p",
            "--bwlimit",
            "20K",
            "--threads",
            "2",
            "--unreachable-limit",
            "1",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(proxy); // connections closed, new ones refused
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the run stops instead of trying every item")
    .unwrap()
    .unwrap();
    let r = Run::of(out);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("ferry: error: the run stopped early (--unreachable-limit): ")
            && r.stderr.contains("cannot connect to the store (connection refused)")
            && r.stderr.contains("rerun to resume"),
        "{}",
        r.stderr
    );
    let j = r.json();
    let (done, failed, not_tried) =
        (j["transferred"].as_u64().unwrap(), j["failed"].as_u64().unwrap(), j["not_tried"].as_u64().unwrap());
    assert!(done > 0 && failed > 0 && not_tried > 0, "{j}");
    assert!(failed <= 4, "only the items in flight failed, not all {}: {j}", 300 - done);
    assert!(j["stopped"].as_str().unwrap().contains("and nothing succeeded for"), "{j}");
    assert!(r.stderr.contains("stopping the run: "), "the stop is logged when it happens: {}", r.stderr);
    assert_reconciles(&j);
    assert!(started.elapsed() < Duration::from_secs(30), "stopped after {:?}", started.elapsed());

    // The store back (here: reached directly), the rerun resumes and completes.
    let r = ferry(&state, &s3.env(), &["sync", s, "s3://bkt/p", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["resumed"], true, "{j}");
    assert_eq!(j["stopped"], serde_json::Value::Null, "{j}");
    let back = tmp.path().join("back");
    assert_eq!(ferry(&state, &s3.env(), &["sync", "s3://bkt/p", back.to_str().unwrap()]).code, 0);
    assert_same(&snapshot(&src, false), &snapshot(&back, false));
}
