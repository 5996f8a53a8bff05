//! Objects another tool stored, read back by ferry: what the tools users
//! have today really write (attributes, checksums) is what ferry must read.
//! `.ci/run` installs rclone from Debian; with `FERRY_TEST_EMULATORS` set,
//! a missing rclone fails the test instead of skipping it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use ferry_testkit::S3Server;

/// Run rclone against the test server as remote `t:`; `None` (skip) when
/// rclone is not installed.
fn rclone(s3: &S3Server, args: &[&str]) -> Option<std::process::Output> {
    let out = std::process::Command::new("rclone")
        .args(args)
        // rclone fails on loopback with the machine's CA bundle set.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_T_TYPE", "s3")
        .env("RCLONE_CONFIG_T_PROVIDER", "Other")
        .env("RCLONE_CONFIG_T_ENDPOINT", s3.endpoint())
        .env("RCLONE_CONFIG_T_ACCESS_KEY_ID", s3.access_key())
        .env("RCLONE_CONFIG_T_SECRET_ACCESS_KEY", s3.secret_key())
        .env("RCLONE_CONFIG_T_REGION", s3.region())
        .env("RCLONE_CONFIG_T_FORCE_PATH_STYLE", "true")
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) => {
            assert!(
                std::env::var("FERRY_TEST_EMULATORS").is_err(),
                "FERRY_TEST_EMULATORS is set but rclone cannot start ({e}); see .ci/run"
            );
            eprintln!("skipped: rclone is not installed (see .ci/run)");
            None
        }
    }
}

fn attrs(p: &Path) -> (u32, u32, u32, i64) {
    let md = std::fs::metadata(p).unwrap();
    (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime() * 1_000_000_000 + md.mtime_nsec())
}

/// `rclone copy -M` writes `mtime` in decimal seconds, `mode` in octal,
/// `uid`, `gid`, and on multipart uploads the content's MD5 as
/// `md5chksum`: a download brings back every attribute without a warning,
/// checks the single-part object against its ETag and the multipart one
/// against `md5chksum` (a changed byte is fetched again), and `--checksum`
/// compares the local copies with them without reading the objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_uploads_come_back_with_their_attributes_and_are_checked() {
    let s3 = S3Server::start(&["bkt-rclone"]).await;
    let env = s3.env();
    let tmp = tempfile::tempdir().unwrap();
    let (src, back, state) = (tmp.path().join("src"), tmp.path().join("back"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("dir")).unwrap();
    let files = [
        ("a.txt", 3_000usize, 0o640, 1_600_000_000_123_456_789i64),
        ("dir/b.bin", 12 << 20, 0o600, 1_500_000_000_987_654_321),
    ];
    for (i, (name, size, mode, mtime)) in files.into_iter().enumerate() {
        let p = src.join(name);
        let body: Vec<u8> =
            (0..size as u32).map(|j| (j.wrapping_mul(2_654_435_761) >> (3 + i)) as u8).collect();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(1234 + i as u32), Some(2345 + i as u32)).unwrap();
        set_mtime(&p, mtime);
    }
    let up = [
        "copy",
        src.to_str().unwrap(),
        "t:bkt-rclone/p",
        "-M",
        "--s3-upload-cutoff",
        "5M",
        "--s3-chunk-size",
        "5M",
    ];
    let Some(out) = rclone(&s3, &up) else { return };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // One GET body of each object changed on the way: both are caught.
    s3.faults().corrupt_bodies(2);
    let gets = s3.counts().get;
    let r = ferry(&state, &env, &["sync", "s3://bkt-rclone/p", back.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["warnings"].as_array().map(Vec::len).unwrap_or(0), 0, "{j}");
    assert_eq!(s3.counts().get - gets, 4, "each object in one GET, each read again once");
    for (name, ..) in files {
        assert!(std::fs::read(src.join(name)).unwrap() == std::fs::read(back.join(name)).unwrap(), "{name}");
        assert_eq!(attrs(&src.join(name)), attrs(&back.join(name)), "{name}: mode, uid, gid, mtime");
    }

    let args =
        ["sync", "s3://bkt-rclone/p", back.to_str().unwrap(), "--checksum", "--no-checkpoint", "--json"];
    let gets = s3.counts().get;
    let r = ferry(&state, &env, &args);
    assert_eq!((r.code, r.json()["skipped"].as_u64()), (0, Some(3)), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(s3.counts().get, gets, "compared through the ETag and md5chksum");
}
