//! Bad input: one clear line naming the problem and the fix, exit 2 (or 1
//! for a single failed item), nothing half-written.

mod common;

use common::*;

fn fatal(r: &Run, needle: &str) {
    assert_eq!(r.code, 2, "exit code; stderr: {}", r.stderr);
    let lines: Vec<_> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {}", r.stderr);
    assert!(lines[0].starts_with("ferry: error:"), "{}", r.stderr);
    assert!(r.stderr.contains(needle), "expected {needle:?} in: {}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_locations_and_flags() {
    let s3 = S3Server::start(&["bkt-real"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dst = tmp.path().join("never-created");
    let d = dst.to_str().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let s = src.to_str().unwrap();

    fatal(&ferry(&state, &[], &["sync", "ftp://host/x", d]), "unknown scheme \"ftp\"");
    fatal(&ferry(&state, &[], &["sync", "s3:bucket", d]), "s3://bucket/prefix");
    fatal(&ferry(&state, &[], &["sync", "s3://bkt/p?endpoint=http://127.0.0.1:1", d]), "AWS_ACCESS_KEY_ID");
    fatal(
        &ferry(&state, &s3.env(), &["sync", "s3://no-such-bucket/p", d]),
        "bucket of s3://no-such-bucket/p not found: create it first, or check the name",
    );
    fatal(
        &ferry(&state, &[], &["sync", "/definitely/not/here", d]),
        "directory /definitely/not/here not found: check the path",
    );
    fatal(
        &ferry(&state, &[], &["sync", "/definitely/not/here", d, "--dry-run"]),
        "directory /definitely/not/here not found: check the path",
    );
    let mut wrong = s3.env();
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong-secret".into()));
    fatal(&ferry(&state, &wrong, &["sync", s, "s3://bkt-real/p"]), "AWS_SECRET_ACCESS_KEY");
    // Nothing listening at the endpoint, or a host name that does not resolve.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut refused = s3.env();
    refused.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    refused.push(("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{closed}")));
    fatal(
        &ferry(&state, &refused, &["sync", s, "s3://bkt-real/p"]),
        &format!(
            "cannot connect to http://127.0.0.1:{closed} (connection refused): check that the store is up \
             and the endpoint is right (?endpoint=… or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)"
        ),
    );
    fatal(
        &ferry(&state, &s3.env(), &["sync", "s3://bkt-real/p?endpoint=http://no-such-host.invalid:9000", d]),
        "cannot connect to http://no-such-host.invalid:9000 (its host name does not resolve)",
    );
    fatal(&ferry(&state, &[], &["sync", s, d, "--include", "a[b"]), "a[b");
    fatal(&ferry(&state, &[], &["sync", s, "S3:bucket/p"]), "write s3://bucket/prefix");
    fatal(
        &ferry(&state, &[], &["sync", s, d, "--part-size", "1M"]),
        "--part-size 1.0 MiB: parts of a multipart upload are 5M to 5G",
    );
    // Failing after the destination was made (here: the failure list
    // cannot be created) leaves no empty destination behind.
    let csv = tmp.path().join("no-such-dir/failures.csv");
    fatal(&ferry(&state, &[], &["sync", s, d, "--failures-csv", csv.to_str().unwrap()]), "failures.csv");
    assert!(!dst.exists(), "nothing written on a fatal error");
    // Only named files are read, but the same place on both sides is refused.
    let list = tmp.path().join("list");
    std::fs::write(&list, "f\n").unwrap();
    fatal(
        &ferry(&state, &[], &["sync", s, s, "--files-from", list.to_str().unwrap()]),
        "source and destination are the same",
    );
    fatal(&ferry(&state, &[], &["sync", &format!("{s}/f"), s]), "source and destination are the same");

    // Usage errors are clap's: exit 2 with a usage line.
    let r = ferry(&state, &[], &["sync", s, d, "--no-such-flag"]);
    assert_eq!(r.code, 2);
    let r = ferry(&state, &[], &["sync", s, d, "--threads", "0"]);
    assert_eq!(r.code, 2);
    let r = ferry(&state, &[], &["sync", s, d, "--checksum", "--force"]);
    assert_eq!(r.code, 2);
    let r = ferry(&state, &[], &["sync", s, d, "--bwlimit", "fast"]);
    assert_eq!(r.code, 2);
    assert!(!dst.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_source_item_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("good"), "ok").unwrap();
    let fifo = src.join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let r = ferry(&state, &[], &["sync", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("pipe") && r.stderr.contains("fifo"), "{}", r.stderr);
    assert_eq!(std::fs::read(dst.join("good")).unwrap(), b"ok");
    assert!(!dst.join("pipe").exists());

    // With --delete, one failed item (the listings were fine) is enough for
    // no deletion at all: the extraneous file stays, and the report says why.
    std::fs::write(dst.join("extra"), "keep").unwrap();
    let r = ferry(&state, &[], &["sync", src.to_str().unwrap(), dst.to_str().unwrap(), "--delete", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!((j["failed"].as_u64(), j["deleted"].as_u64()), (Some(1), Some(0)), "{j}");
    let why = j["delete_skipped"].as_str().unwrap_or_default();
    assert!(why.contains("1 item(s) failed") && why.contains("none of the 1 extraneous"), "{j}");
    assert_eq!(std::fs::read(dst.join("extra")).unwrap(), b"keep");
    assert_reconciles(&j);
}

/// `--copy-links` follows the source's links only: a destination
/// directory that is a symlink to elsewhere is an item to replace, never a
/// way out, so `--delete` removes nothing it points to.
#[test]
fn copy_links_never_follows_the_destination_s_links() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    let outside = tmp.path().join("outside");
    // Nothing to write below `data`: only a deletion could reach the link.
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), "keep").unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("data")).unwrap();
    let r = ferry(
        &state,
        &[],
        &["sync", src.to_str().unwrap(), dst.to_str().unwrap(), "-L", "--delete", "--json"],
    );
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep", "{}\n{}", r.stdout, r.stderr);
    assert!(std::fs::symlink_metadata(dst.join("data")).is_ok(), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_links_follows_links_but_not_loops() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("state"));
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("data"), "followed").unwrap();
    std::fs::write(src.join("a/file"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, src.join("ext")).unwrap();
    std::os::unix::fs::symlink("..", src.join("a/up")).unwrap(); // a loop back to src
    let r = ferry(&state, &[], &["sync", src.to_str().unwrap(), dst.to_str().unwrap(), "-L", "--json"]);
    assert_eq!(r.code, 1, "the loop is reported: {}", r.stdout);
    assert!(r.stdout.contains("symlink loop"), "{}", r.stdout);
    assert_eq!(std::fs::read(dst.join("ext/data")).unwrap(), b"followed");
    assert!(std::fs::symlink_metadata(dst.join("ext")).unwrap().is_dir(), "followed, not copied as a link");
    // --delete with --files-from is refused up front.
    let list = tmp.path().join("list");
    std::fs::write(&list, "a/file\n").unwrap();
    let r = ferry(
        &state,
        &[],
        &[
            "sync",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--delete",
            "--files-from",
            list.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--files-from"), "{}", r.stderr);
}

/// OpenDAL trims white space from both ends of every object path, so a key
/// ending in a space would be read, written or deleted as another key. Such
/// names are refused and reported, never mapped onto their neighbours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_ending_in_white_space_are_refused_not_mapped_onto_others() {
    let s3 = S3Server::start(&["bkt"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    for (name, body) in [("x", "plain"), ("x ", "spaced"), ("tab\t", "tab"), ("d/ lead", "inner")] {
        std::fs::write(src.join(name), body).unwrap();
    }
    let bucket = s3.root().join("bkt");

    // Up: the two names ending in white space fail; `x` keeps its own content.
    let r = ferry(&state, &s3.env(), &["sync", src.to_str().unwrap(), "s3://bkt/p", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["failed"].as_u64(), j["transferred"].as_u64()), (Some(2), Some(3)), "{j}");
    let failures = j["failures"].to_string();
    assert!(failures.contains(r#""path":"x ""#) && failures.contains(r#""path":"tab\t""#), "{failures}");
    assert!(failures.contains("white space"), "{failures}");
    assert_eq!(std::fs::read(bucket.join("p/x")).unwrap(), b"plain");
    assert_eq!(std::fs::read(bucket.join("p/d/ lead")).unwrap(), b"inner");
    assert!(!bucket.join("p/x ").exists() && !bucket.join("p/tab").exists());

    // Down: a bucket holding both `x` and `x ` gives `x` its own content and
    // reports `x `, never writing one object's content under the other's name.
    std::fs::create_dir_all(bucket.join("q")).unwrap();
    std::fs::write(bucket.join("q/x"), "plain").unwrap();
    std::fs::write(bucket.join("q/x "), "spaced").unwrap();
    let out = tmp.path().join("out");
    let r = ferry(&state, &s3.env(), &["sync", "s3://bkt/q", out.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!((j["failed"].as_u64(), j["transferred"].as_u64()), (Some(1), Some(1)), "{j}");
    assert!(j["failures"].to_string().contains("white space"), "{j}");
    assert_eq!(std::fs::read(out.join("x")).unwrap(), b"plain");
    assert!(!out.join("x ").exists());

    // --delete: `x ` is extraneous but cannot be addressed; deleting it
    // would delete `x`. It is left alone with a warning, and `x` stays.
    let only_x = tmp.path().join("only-x");
    std::fs::create_dir(&only_x).unwrap();
    std::fs::write(only_x.join("x"), "plain").unwrap();
    let r = ferry(&state, &s3.env(), &["sync", only_x.to_str().unwrap(), "s3://bkt/q", "--delete", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["deleted"].as_u64(), Some(0), "{j}");
    assert!(j["warnings"].to_string().contains("white space"), "{j}");
    assert_eq!(std::fs::read(bucket.join("q/x")).unwrap(), b"plain");
    assert_eq!(std::fs::read(bucket.join("q/x ")).unwrap(), b"spaced");
}

/// A key ending in `/` that holds data (S3 allows it; it names a
/// directory to every tool that maps keys onto paths): the directory is
/// made, for what is below it, and the data that cannot go anywhere is
/// reported (exit 1), not dropped in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_marker_holding_data_is_reported() {
    let Some(moto) = common::emulators::Moto::start(&["bkt-slash"]).await else { return };
    let http = reqwest::Client::new();
    for (key, body) in [("d/", "hello"), ("d/f", "x"), ("e/", "")] {
        let r = http.put(format!("{}/bkt-slash/{key}", moto.endpoint())).body(body).send().await.unwrap();
        assert!(r.status().is_success(), "put {key}: {}", r.status());
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dst, state) = (tmp.path().join("dst"), tmp.path().join("state"));
    for to in [dst.to_str().unwrap(), "s3://bkt-slash/copy"] {
        let r =
            ferry(&state, &moto.env(), &["sync", "s3://bkt-slash/", to, "--json", "--exclude", "copy/**"]);
        assert_eq!(r.code, 1, "{to}: {}\n{}", r.stdout, r.stderr);
        let j = r.json();
        let f = &j["failures"][0];
        let why = f["reason"].as_str().unwrap_or_default();
        assert!(f["path"] == "d/" && why.contains("holds 5 bytes"), "{to}: {j}");
        assert_eq!((j["failed"].as_u64(), j["other_failures"].as_u64()), (Some(0), Some(1)), "{to}: {j}");
        assert_reconciles(&j);
    }
    assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"x");
    assert!(dst.join("e").is_dir(), "an empty marker is a directory");
    for to in [dst.to_str().unwrap(), "s3://bkt-slash/copy"] {
        let r =
            ferry(&state, &moto.env(), &["sync", "s3://bkt-slash/", to, "--json", "--exclude", "copy/**"]);
        let j = r.json();
        assert_eq!(
            (r.code, j["other_failures"].as_u64()),
            (1, Some(1)),
            "a rerun to {to} reports it again: {j}"
        );
    }
    // That failure keeps `--delete` from deleting anything.
    std::fs::write(dst.join("extra"), "mine").unwrap();
    let args =
        ["sync", "s3://bkt-slash/", dst.to_str().unwrap(), "--json", "--exclude", "copy/**", "--delete"];
    let r = ferry(&state, &moto.env(), &args);
    let j = r.json();
    assert_eq!((r.code, j["deleted"].as_u64()), (1, Some(0)), "{j}");
    assert!(j["delete_skipped"].as_str().is_some_and(|w| w.contains("1 item(s) failed")), "{j}");
    assert_eq!(std::fs::read(dst.join("extra")).unwrap(), b"mine");
    // The marker of the listed prefix itself.
    let r =
        ferry(&state, &moto.env(), &["sync", "s3://bkt-slash/d/", tmp.path().join("d").to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("s3://bkt-slash/d/ holds 5 bytes"), "{said}");

    // As a destination: a file sent below it leaves the marker as it is.
    let up = tmp.path().join("up");
    std::fs::create_dir_all(up.join("d")).unwrap();
    std::fs::write(up.join("d/g"), "g").unwrap();
    std::fs::write(tmp.path().join("list"), "d/g\n").unwrap();
    let list = tmp.path().join("list");
    let args = ["sync", up.to_str().unwrap(), "s3://bkt-slash/", "--files-from", list.to_str().unwrap()];
    let r = ferry(&state, &moto.env(), &args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let again = tmp.path().join("again");
    let r = ferry(
        &state,
        &moto.env(),
        &["sync", "s3://bkt-slash/", again.to_str().unwrap(), "--exclude", "copy/**"],
    );
    assert!(r.stderr.contains("holds 5 bytes"), "the marker's data is kept: {}", r.stderr);
}

/// Keys that cannot be POSIX names under DST (`..` components, empty or
/// `.` components, a component longer than 255 bytes): each is reported as
/// a failed item with its reason (at the first level that names no POSIX
/// path: `up/../` for `up/../../escape.txt`), the rest is copied, and
/// nothing is written outside DST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_no_posix_names_are_reported_and_stay_inside() {
    let Some(moto) = common::emulators::Moto::start(&["bkt-names"]).await else { return };
    let long = format!("long/{}", "c".repeat(256));
    let bad = ["up/../../escape.txt", "twice//slash.txt", "dot/./here.txt", long.as_str()];
    // Written raw: an HTTP client would resolve the dot segments itself.
    let addr = moto.endpoint().trim_start_matches("http://").to_string();
    for key in bad.iter().copied().chain(["ok.txt"]) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        let req = format!(
            "PUT /bkt-names/{key} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "{key}: {answer}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dst, state) = (tmp.path().join("a/b/dst"), tmp.path().join("state"));
    let r = ferry(&state, &moto.env(), &["sync", "s3://bkt-names/", dst.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let failures = j["failures"].as_array().unwrap();
    assert_eq!(failures.len(), bad.len(), "{j}");
    for key in bad {
        let f = failures.iter().find(|f| f["path"].as_str().is_some_and(|p| key.starts_with(p)));
        let why = f.and_then(|f| f["reason"].as_str()).unwrap_or_default();
        assert!(why.starts_with("key cannot be a POSIX path: "), "{key}: {j}");
    }
    assert_eq!(std::fs::read(dst.join("ok.txt")).unwrap(), b"body");
    let outside: Vec<_> = all_names(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with(&dst) && !p.starts_with(&state) && p.is_file())
        .collect();
    assert!(outside.is_empty(), "written outside DST: {outside:?}");
    assert!(!all_names(&dst).iter().any(|p| p.to_string_lossy().contains("escape")), "{j}");
}

/// A file its user may not read (permission denied; the suite runs as
/// root, who reads everything, so this run is made as nobody): that item
/// fails with the reason, the rest is copied, exit 1.
#[test]
fn an_unreadable_file_fails_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(tmp.path()).unwrap()) == 0;
    let setpriv =
        std::process::Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    if !root || !setpriv {
        eprintln!("skipped: needs root and setpriv to run ferry as another user");
        return;
    }
    let (src, work) = (tmp.path().join("src"), tmp.path().join("work"));
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
    std::fs::write(src.join("readable"), "ok").unwrap();
    std::fs::write(src.join("secret"), "no").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let dst = work.join("dst");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .args(["sync", src.to_str().unwrap(), dst.to_str().unwrap()])
        .env("FERRY_STATE_DIR", work.join("state"))
        .output()
        .unwrap();
    let r = Run::of(out);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read(dst.join("readable")).unwrap(), b"ok");
    assert!(!dst.join("secret").exists());
    let said: Vec<_> = r.stderr.lines().filter(|l| l.contains("secret")).collect();
    assert_eq!(said.len(), 1, "{}", r.stderr);
    assert!(
        said[0].contains("permission denied: open ") && said[0].contains("check its permissions"),
        "{}",
        r.stderr
    );
}
