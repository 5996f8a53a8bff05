//! Include/exclude globs and size bounds.
//!
//! A pattern without `/` matches the last path component anywhere in the
//! tree (`*.tmp`); a pattern with `/` matches the whole relative path
//! (`logs/**`, a leading `/` is ignored). Excludes win over includes;
//! includes only restrict files, directories are always walked unless
//! excluded.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<Patterns>,
    exclude: Option<Patterns>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    text: String,
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
        for p in patterns {
            let glob = |s: &str| {
                Glob::new(s).map_err(|e| Error::Filter { pattern: p.clone(), reason: e.kind().to_string() })
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
            text: format!("+{include:?}-{exclude:?}>{min_size:?}<{max_size:?}"),
        })
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
    fn bad_glob_is_reported() {
        let e = Filter::new(&s(&["a[b"]), &[], None, None).unwrap_err();
        assert!(e.to_string().contains("a[b"), "{e}");
    }
}
