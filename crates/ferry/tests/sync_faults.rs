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
    s3.faults().clear();

    let r = ferry(&state, &env, &["sync", s, "s3://bkt-list/p", "--delete", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["deleted"], 1);
    assert!(!object.exists());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_rerun_to_local() {
    kill_and_resume(|t| t.join("dst").to_str().unwrap().to_string(), Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_rerun_to_s3() {
    let s3 = S3Server::start(&["bkt-kill"]).await;
    kill_and_resume(|_| "s3://bkt-kill/run".to_string(), s3.env()).await;
}
