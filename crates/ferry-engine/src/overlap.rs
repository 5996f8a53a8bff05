//! Refusing runs whose source and destination overlap on the local file
//! system. A destination inside the source is copied into itself again on
//! every run (and walked while it is written); with `--delete`, a source
//! inside the destination is "not in the source" and would be deleted.
//! Allowed when the filters exclude the inner one, as in
//! `ferry sync . ./backup --exclude 'backup/**'`.

use std::path::{Component, Path, PathBuf};

use ferry_storage::LocationSpec;

use crate::error::{Error, Result};
use crate::filter::Filter;

/// Check before either location is opened (opening a destination creates
/// it): nothing is written when the run is refused.
pub fn check_overlap(src: &LocationSpec, dst: &LocationSpec, filter: &Filter) -> Result<()> {
    let (Some(s), Some(d)) = (src.local_dir(), dst.local_dir()) else { return Ok(()) };
    let (s, d) = (resolved(&s), resolved(&d));
    if s == d {
        return Err(Error::Usage(format!("source and destination are the same directory ({})", s.display())));
    }
    let (inner, outer, what) = if let Ok(rel) = d.strip_prefix(&s) {
        (rel, &s, "the destination is inside the source")
    } else if let Ok(rel) = s.strip_prefix(&d) {
        (rel, &d, "the source is inside the destination")
    } else {
        return Ok(());
    };
    let rel = inner.to_string_lossy();
    if !filter.dir_included(&rel) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "source and destination overlap: {what} ({rel} under {}); exclude it (--exclude '{rel}/**') or choose \
         another destination",
        outer.display()
    )))
}

/// `path` made absolute with symlinks resolved, as far as it exists (a
/// destination may not exist yet), `.` and `..` applied to the rest.
fn resolved(path: &Path) -> PathBuf {
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
