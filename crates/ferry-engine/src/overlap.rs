//! Refusing runs whose source and destination overlap: on the local file
//! system, or in one bucket. A destination inside the source is copied into itself again on
//! every run (and walked while it is written); with `--delete`, a source
//! inside the destination is "not in the source" and would be deleted.
//! Allowed when the filters exclude the inner one, as in
//! `ferry sync . ./backup --exclude 'backup/**'`.

use std::path::{Component, Path, PathBuf};

use ferry_storage::{LocationSpec, ObjectSpec, Scheme};

use crate::error::{Error, Result};
use crate::filter::Filter;

/// Check before either location is opened (opening a destination creates
/// it): nothing is written when the run is refused. `filter` is `None`
/// when only named files are read (`--files-from`, a file as the source):
/// no tree is walked, and only the same place on both sides is refused.
pub fn check_overlap(src: &LocationSpec, dst: &LocationSpec, filter: Option<&Filter>) -> Result<()> {
    let Some(((s, s_name), (d, d_name))) = places(src, dst) else { return Ok(()) };
    if s == d {
        return Err(Error::Usage(format!("source and destination are the same ({s_name})")));
    }
    let Some(filter) = filter else { return Ok(()) };
    let (inner, outer, what) = if let Ok(rel) = d.strip_prefix(&s) {
        (rel, s_name, "the destination is inside the source")
    } else if let Ok(rel) = s.strip_prefix(&d) {
        (rel, d_name, "the source is inside the destination")
    } else {
        return Ok(());
    };
    let rel = inner.to_string_lossy();
    if !filter.dir_included(&rel) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "source and destination overlap: {what} ({rel} under {outer}); exclude it (--exclude '{rel}/**') or \
         choose another destination"
    )))
}

/// Both locations as comparable paths, with names for messages, when they
/// can overlap: both on the local file system (paths, `file://`), or both
/// in the same bucket of the same store (same scheme and endpoint; no
/// endpoint in either URL means the same one from the environment).
fn places(src: &LocationSpec, dst: &LocationSpec) -> Option<((PathBuf, String), (PathBuf, String))> {
    if let (Some(s), Some(d)) = (src.local_dir(), dst.local_dir()) {
        let (s, d) = (resolved(&s), resolved(&d));
        let (sn, dn) = (s.display().to_string(), d.display().to_string());
        return Some(((s, sn), (d, dn)));
    }
    let (LocationSpec::Object(s), LocationSpec::Object(d)) = (src, dst) else { return None };
    let same_store = s.scheme == d.scheme && s.bucket == d.bucket && s.endpoint == d.endpoint;
    if !same_store || matches!(s.scheme, Scheme::Memory | Scheme::File) {
        return None;
    }
    let key_path = |prefix: &str| Path::new("/").join(prefix.trim_matches('/'));
    let name = |o: &ObjectSpec| o.display.trim_end_matches('/').to_string();
    Some(((key_path(&s.prefix), name(s)), (key_path(&d.prefix), name(d))))
}

/// `path` made absolute with symlinks resolved, as far as it exists (a
/// destination may not exist yet), `.` and `..` applied to the rest.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for c in rest.into_iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return abs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(src: &str, dst: &str, exclude: &[&str]) -> std::result::Result<(), String> {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let filter = Filter::new(&[], &exclude, None, None).unwrap();
        let spec = |s: &str| LocationSpec::parse(s).unwrap();
        check_overlap(&spec(src), &spec(dst), Some(&filter)).map_err(|e| e.to_string())
    }

    #[test]
    fn named_files_refuse_only_the_same_place() {
        let spec = |s: &str| LocationSpec::parse(s).unwrap();
        let err = check_overlap(&spec("s3://b/d"), &spec("s3://b/d/"), None).unwrap_err().to_string();
        assert!(err.contains("are the same (s3://b/d)"), "{err}");
        assert!(check_overlap(&spec("s3://b/d"), &spec("s3://b/d/sub"), None).is_ok());
    }

    #[test]
    fn prefixes_of_one_bucket_overlap_on_the_same_store() {
        let err = verdict("s3://b/data", "s3://b/data/copy", &[]).unwrap_err();
        assert!(err.contains("the destination is inside the source (copy under s3://b/data)"), "{err}");
        let err = verdict("s3://b/data/x/", "s3://b/data", &[]).unwrap_err();
        assert!(err.contains("the source is inside the destination (x under s3://b/data)"), "{err}");
        let err = verdict("s3://b/", "s3://b", &[]).unwrap_err();
        assert!(err.contains("are the same (s3://b)"), "{err}");
        let same_endpoint = "s3://b/data/copy?endpoint=http://a:9000";
        assert!(verdict("s3://b/data?endpoint=http://a:9000", same_endpoint, &[]).is_err());
        // Not the same objects: another prefix, bucket, endpoint or scheme;
        // separate in-memory stores; the inner prefix left out.
        for (s, d) in [
            ("s3://b/data", "s3://b/data2"),
            ("s3://b/data", "s3://c/data/copy"),
            ("s3://b/data?endpoint=http://a:9000", "s3://b/data/copy?endpoint=http://z:9000"),
            ("s3://b/data", "s3://b/data/copy?endpoint=http://z:9000"),
            ("s3://b/data", "gcs://b/data/copy"),
            ("memory://", "memory://x"),
        ] {
            assert_eq!(verdict(s, d, &[]), Ok(()), "{s} -> {d}");
        }
        assert_eq!(verdict("s3://b/data", "s3://b/data/copy", &["copy/**"]), Ok(()));
    }

    #[test]
    fn paths_resolve_through_what_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("a")).unwrap();
        std::os::unix::fs::symlink(base.join("a"), base.join("link")).unwrap();
        assert_eq!(resolved(&base.join("link/new/../x")), base.join("a/x"));
        assert_eq!(resolved(&base.join("a/./b")), base.join("a/b"));
    }
}
