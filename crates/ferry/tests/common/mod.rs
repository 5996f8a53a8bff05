//! Helpers for end-to-end tests through the real `ferry` binary.
#![allow(dead_code)]

pub mod emulators;
pub mod server;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use ferry_testkit::S3Server;

/// An OpenDAL operator on a bucket of the test server, for writing objects
/// behind ferry's back; `crc32c` sends upload checksums as ferry does.
pub fn s3_operator(s3: &S3Server, bucket: &str, crc32c: bool) -> opendal::Operator {
    let mut b = opendal::services::S3::default()
        .bucket(bucket)
        .endpoint(&s3.endpoint())
        .region(s3.region())
        .access_key_id(s3.access_key())
        .secret_access_key(s3.secret_key())
        .disable_config_load();
    if crc32c {
        b = b.checksum_algorithm("crc32c");
    }
    opendal::Operator::new(b).expect("an operator on the test server")
}

/// A run of the binary: exit code, stdout, stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// `s3`'s environment with its endpoint replaced by `endpoint` (a proxy
/// in front of it).
pub fn env_via(s3: &S3Server, endpoint: &str) -> Vec<(String, String)> {
    let mut env = s3.env();
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL".into(), endpoint.to_string()));
    env
}

pub fn ferry_cmd(state: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for k in
        ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
    {
        cmd.env_remove(k);
    }
    cmd.env("FERRY_STATE_DIR", state);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub fn ferry(state: &Path, env: &[(String, String)], args: &[&str]) -> Run {
    Run::of(ferry_cmd(state, env).args(args).output().expect("run ferry"))
}

impl Run {
    /// What a finished ferry process printed and returned.
    pub fn of(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

pub fn set_mtime(path: &Path, ns: i64) {
    let t = UNIX_EPOCH + Duration::from_nanos(ns as u64);
    let f = fs::File::options().write(true).open(path).or_else(|_| fs::File::open(path)).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
}

/// A small tree with the cases that matter: attributes, unicode (NFC and
/// NFD), spaces, a 255-byte name, a symlink, an empty directory, a larger file.
pub fn make_tree(root: &Path, long_names: bool) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("plain.txt".into(), b"hello ferry\n".to_vec()),
        ("with space.txt".into(), b"spaces".to_vec()),
        ("caf\u{e9}.txt".into(), b"nfc".to_vec()),
        ("cafe\u{301}.txt".into(), b"nfd".to_vec()),
        ("\u{65e5}\u{672c}/\u{30c7}\u{30fc}\u{30bf}.bin".into(), vec![7u8; 1000]),
        ("dir/empty.dat".into(), Vec::new()),
        (
            "dir/sub/".to_string() + &"n".repeat(if long_names { 251 } else { 100 }) + ".txt",
            b"long name".to_vec(),
        ),
        (
            "dir/big.bin".into(),
            (0..(9 << 20)).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
        ),
    ];
    for (i, (name, data)) in files.iter().enumerate() {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(if i % 2 == 0 { 0o640 } else { 0o604 })).unwrap();
        std::os::unix::fs::chown(&p, Some(1000 + i as u32), Some(2000 + i as u32)).unwrap();
        set_mtime(&p, 1_600_000_000_000_000_000 + i as i64 * 1_000_000_123);
    }
    std::os::unix::fs::symlink("plain.txt", root.join("link-to-plain")).unwrap();
    std::os::unix::fs::symlink("../outside/target", root.join("dir/dangling")).unwrap();
}

/// What a tree looks like: path → (kind, content or link target, mode, uid, gid, mtime).
pub type Snapshot = BTreeMap<String, (char, Vec<u8>, u32, u32, u32, i64)>;

pub fn snapshot(root: &Path, with_dirs: bool) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(root, root, with_dirs, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, with_dirs: bool, out: &mut Snapshot) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = fs::symlink_metadata(&p).unwrap();
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        if md.file_type().is_symlink() {
            let t = fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes();
            out.insert(rel, ('l', t, 0, md.uid(), md.gid(), mtime));
        } else if md.is_dir() {
            if with_dirs {
                out.insert(rel, ('d', Vec::new(), 0, 0, 0, 0));
            }
            walk(root, &p, with_dirs, out);
        } else {
            out.insert(rel, ('f', fs::read(&p).unwrap(), md.mode() & 0o7777, md.uid(), md.gid(), mtime));
        }
    }
}

/// The mtime of every directory below `root` (`root` itself left out).
pub fn dir_mtimes(root: &Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for p in all_names(root) {
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, md.mtime() * 1_000_000_000 + md.mtime_nsec());
        }
    }
    out
}

/// Mode, uid, gid and mtime of every directory below `root` (`root` left out).
pub fn dir_attrs(root: &Path) -> BTreeMap<String, (u32, u32, u32, i64)> {
    let mut out = BTreeMap::new();
    for p in all_names(root) {
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(
                rel,
                (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime() * 1_000_000_000 + md.mtime_nsec()),
            );
        }
    }
    out
}

/// Set a symlink's own mtime (`touch -h`).
pub fn set_link_mtime(path: &Path, ns: i64) {
    let ok = Command::new("touch")
        .args(["-h", "-d", &format!("@{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "touch -h {}", path.display());
}

/// Every file name below `root` (to look for temporary leftovers). Names
/// gone by the time they are looked at (a run still writing renames its
/// temporary files) are left out; `root` itself must exist.
pub fn all_names(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fs::read_dir(root).unwrap();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(md) = fs::symlink_metadata(&p) else { continue };
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

pub fn assert_same(a: &Snapshot, b: &Snapshot) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "same entries");
    for (k, va) in a {
        let vb = &b[k];
        assert_eq!(va.0, vb.0, "{k}: kind");
        assert!(va.1 == vb.1, "{k}: content differs");
        assert_eq!((va.2, va.3, va.4, va.5), (vb.2, vb.3, vb.4, vb.5), "{k}: mode/uid/gid/mtime");
    }
}

/// The counters of a `--json` summary reconcile (DESIGN invariant 2):
/// every listed item is transferred, skipped, failed, excluded or not tried.
#[allow(dead_code)]
pub fn assert_reconciles(j: &serde_json::Value) {
    let n = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("no {k} in {j}"));
    assert_eq!(
        n("listed"),
        n("transferred") + n("skipped") + n("failed") + n("excluded") + n("not_tried"),
        "listed = transferred + skipped + failed + excluded + not_tried: {j}"
    );
    let listed_failures = j["failures"].as_array().unwrap().len() as u64 + n("failures_omitted");
    assert_eq!(listed_failures, n("failed") + n("other_failures"), "every failure is reported: {j}");
}

/// The plan of a `--dry-run --json` summary as sorted `action path (reason)` lines.
pub fn plan_lines(summary: &serde_json::Value) -> Vec<String> {
    let mut lines: Vec<String> = summary["plan"]
        .as_array()
        .expect("a plan in the summary")
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            format!("{} {} ({})", s("action"), s("path"), s("reason"))
        })
        .collect();
    lines.sort();
    lines
}
