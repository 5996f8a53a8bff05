//! Include/exclude globs, size bounds and modification-time bounds.
//!
//! A pattern without `/` matches the last path component anywhere in the
//! tree (`*.tmp`); a pattern with `/` matches the whole relative path
//! (`logs/**`, a leading `/` is ignored). Excludes win over includes;
//! includes only restrict files, directories are always walked unless
//! excluded. Size and time bounds apply to files and symlinks only.
//! Whatever the filters leave out is neither copied nor deleted.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<Patterns>,
    exclude: Option<Patterns>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    /// `--min-age`: only files modified at or before this instant.
    older_than: Option<TimeBound>,
    /// `--max-age`: only files modified at or after this instant.
    newer_than: Option<TimeBound>,
    text: String,
}

/// `--min-age`/`--max-age` resolved to an instant when the run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeBound {
    /// Nanoseconds since the epoch.
    pub ns: i64,
    /// As the user gave it: the checkpoint of a rerun with the same words
    /// is reused, whatever the clock says by then.
    pub text: String,
}

#[derive(Debug, Clone)]
struct Patterns {
    by_name: GlobSet,
    by_path: GlobSet,
    /// `dir/**` patterns as `dir`: they exclude the directory itself.
    dirs: GlobSet,
}

impl Patterns {
    fn new(patterns: &[String]) -> Result<Option<Self>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let (mut by_name, mut by_path, mut dirs) =
            (GlobSetBuilder::new(), GlobSetBuilder::new(), GlobSetBuilder::new());
        for given in patterns {
            let glob = |s: &str| {
                Glob::new(s)
                    .map_err(|e| Error::Filter { pattern: given.clone(), reason: e.kind().to_string() })
            };
            // Paths never end in '/': `dir/` names the directory and all
            // it holds, as `dir/**` does (it would match nothing as it is).
            let p = &match given.strip_suffix('/') {
                Some(dir) if !dir.is_empty() => format!("{dir}/**"),
                _ => given.clone(),
            };
            if let Some(dir) = p.strip_suffix("/**") {
                dirs.add(glob(dir.trim_start_matches('/'))?);
            }
            if p.contains('/') {
                by_path.add(glob(p.trim_start_matches('/'))?);
            } else {
                by_name.add(glob(p)?);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| Error::Filter { pattern: patterns.join(","), reason: e.to_string() })
        };
        Ok(Some(Patterns { by_name: build(by_name)?, by_path: build(by_path)?, dirs: build(dirs)? }))
    }

    fn matches(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        self.by_name.is_match(name) || self.by_path.is_match(path)
    }
}

impl Filter {
    pub fn new(
        include: &[String],
        exclude: &[String],
        min_size: Option<u64>,
        max_size: Option<u64>,
    ) -> Result<Self> {
        Ok(Filter {
            include: Patterns::new(include)?,
            exclude: Patterns::new(exclude)?,
            min_size,
            max_size,
            older_than: None,
            newer_than: None,
            text: format!("+{include:?}-{exclude:?}>{min_size:?}<{max_size:?}"),
        })
    }

    /// Add modification-time bounds (`--min-age`, `--max-age`).
    pub fn with_times(
        mut self,
        older_than: Option<TimeBound>,
        newer_than: Option<TimeBound>,
    ) -> Result<Self> {
        if let (Some(o), Some(n)) = (&older_than, &newer_than) {
            if n.ns > o.ns {
                return Err(Error::Usage(format!(
                    "--min-age {} and --max-age {} leave no file: no modification time is both old enough and new enough",
                    o.text, n.text
                )));
            }
        }
        for (tag, b) in [("min-age", &older_than), ("max-age", &newer_than)] {
            if let Some(b) = b {
                self.text.push_str(&format!(";{tag}={}", b.text));
            }
        }
        (self.older_than, self.newer_than) = (older_than, newer_than);
        Ok(self)
    }

    pub fn describe(&self) -> &str {
        &self.text
    }

    /// Whether a directory is walked.
    pub fn dir_included(&self, path: &str) -> bool {
        !self.exclude.as_ref().is_some_and(|x| x.matches(path) || x.dirs.is_match(path))
    }

    /// Whether a file (or symlink) of this size is part of the run.
    pub fn file_included(&self, path: &str, size: u64) -> bool {
        if self.exclude.as_ref().is_some_and(|x| x.matches(path)) {
            return false;
        }
        if self.include.as_ref().is_some_and(|i| !i.matches(path)) {
            return false;
        }
        !(self.min_size.is_some_and(|m| size < m) || self.max_size.is_some_and(|m| size > m))
    }

    /// Whether files are chosen by modification time: the time must then be
    /// known (for an object, the one stored in its metadata).
    pub fn has_times(&self) -> bool {
        self.older_than.is_some() || self.newer_than.is_some()
    }

    /// Whether a file modified at `mtime_ns` passes the time bounds; a file
    /// whose time is unknown does not pass any bound.
    pub fn time_included(&self, mtime_ns: Option<i64>) -> bool {
        if !self.has_times() {
            return true;
        }
        let Some(t) = mtime_ns else { return false };
        !(self.older_than.as_ref().is_some_and(|b| t > b.ns)
            || self.newer_than.as_ref().is_some_and(|b| t < b.ns))
    }

    /// Whether anything can be left out: then an extraneous destination
    /// directory is looked into before it is deleted.
    pub fn is_active(&self) -> bool {
        self.include.is_some()
            || self.exclude.is_some()
            || self.min_size.is_some()
            || self.max_size.is_some()
            || self.has_times()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn names_and_paths() {
        let f = Filter::new(&[], &s(&["*.tmp", "cache/**", "/top.log"]), None, None).unwrap();
        assert!(!f.file_included("a/b/x.tmp", 1));
        assert!(!f.file_included("cache/deep/file", 1));
        assert!(!f.file_included("top.log", 1));
        assert!(f.file_included("sub/top.log", 1));
        assert!(f.file_included("keep.txt", 1));
        assert!(f.dir_included("cachex"));
        assert!(!f.dir_included("cache"), "cache/** excludes the directory itself");
        let f = Filter::new(&[], &s(&["cache/"]), None, None).unwrap();
        assert!(!f.file_included("cache/deep/file", 1) && !f.dir_included("cache"), "cache/ is cache/**");
        assert!(f.file_included("cachex/file", 1));
        let f = Filter::new(&s(&["*.txt"]), &s(&["secret.txt"]), None, None).unwrap();
        assert!(f.file_included("d/a.txt", 1));
        assert!(!f.file_included("d/a.bin", 1));
        assert!(!f.file_included("secret.txt", 1), "exclude wins");
        assert!(f.dir_included("d"));
    }

    #[test]
    fn sizes() {
        let f = Filter::new(&[], &[], Some(10), Some(20)).unwrap();
        assert!(!f.file_included("a", 9));
        assert!(f.file_included("a", 10));
        assert!(f.file_included("a", 20));
        assert!(!f.file_included("a", 21));
    }

    #[test]
    fn times() {
        let b = |ns: i64| TimeBound { ns, text: ns.to_string() };
        let f = Filter::new(&[], &[], None, None).unwrap();
        assert!(!f.is_active() && f.time_included(None));
        let f = f.with_times(Some(b(200)), Some(b(100))).unwrap();
        assert!(f.is_active() && f.has_times());
        assert!(f.time_included(Some(100)) && f.time_included(Some(200)));
        assert!(!f.time_included(Some(99)), "newer than --max-age allows");
        assert!(!f.time_included(Some(201)), "not as old as --min-age asks");
        assert!(!f.time_included(None), "an unknown time passes no bound");
        assert!(f.describe().contains("min-age=200") && f.describe().contains("max-age=100"));
        let only_new = Filter::new(&[], &[], None, None).unwrap().with_times(None, Some(b(100))).unwrap();
        assert!(only_new.time_included(Some(i64::MAX)) && !only_new.time_included(Some(0)));
        let e =
            Filter::new(&[], &[], None, None).unwrap().with_times(Some(b(100)), Some(b(200))).unwrap_err();
        assert!(e.to_string().contains("both old enough and new enough"), "{e}");
        assert!(Filter::new(&["*.x".into()], &[], None, None).unwrap().is_active());
        assert!(Filter::new(&[], &[], Some(1), None).unwrap().is_active());
    }

    #[test]
    fn bad_glob_is_reported() {
        let e = Filter::new(&s(&["a[b"]), &[], None, None).unwrap_err();
        assert!(e.to_string().contains("a[b"), "{e}");
    }
}
