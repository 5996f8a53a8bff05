//! What a location given to `sync` (as SRC) or `ls` names when it is not a
//! directory: one file, or nothing at all.
//!
//! A bucket has keys, not directories: `s3://b/p` is listed as the prefix
//! `p/`. Only when that lists nothing is `p` looked up as an object's key,
//! so that no run over a real prefix pays a request for it.

use std::path::PathBuf;

use ferry_model::{Entry, EntryKind};
use ferry_storage::{Location, LocationSpec, OpenOptions, ProcessEnv, Scheme};

/// A local file (or a symlink to one), or a file in a `file://` store: its
/// directory (as a location) and its name. Decided on the local file
/// system, without a request.
pub fn local_file(src: &str) -> Option<(String, String)> {
    let (file, url) = match LocationSpec::parse(src).ok()? {
        LocationSpec::Posix(path) => (path, false),
        LocationSpec::Object(spec) if spec.scheme == Scheme::File => (PathBuf::from(spec.bucket), true),
        LocationSpec::Object(_) => return None,
    };
    if !std::fs::metadata(&file).ok()?.is_file() {
        return None;
    }
    split_last(src, url)
}

/// For an object location whose prefix lists nothing: when its last
/// component is the key of one object, the location above it, that name,
/// and the object. One HEAD.
pub async fn object_file(src: &str, open: OpenOptions) -> anyhow::Result<Option<(String, String, Entry)>> {
    if src.split('?').next().is_some_and(|p| p.ends_with('/')) {
        return Ok(None);
    }
    let Some((dir, name)) = split_last(src, true) else { return Ok(None) };
    let parent = Location::open(&dir, &ProcessEnv, open).await?;
    let found = parent.stat(&name).await?;
    Ok(found.filter(|(e, _)| e.kind != EntryKind::Dir).map(|(e, _)| (dir, name, e)))
}

/// The error for an object location with nothing under it and no object
/// by its name.
pub fn nothing_stored(src: &str) -> anyhow::Error {
    let name = src.split('?').next().unwrap_or_default().trim_end_matches('/');
    let last = name.rsplit('/').next().unwrap_or_default();
    anyhow::anyhow!(
        "{src}: nothing is stored there, neither an object {last} nor objects under {last}/ \
         (check the name; in a bucket an empty directory exists only as a {last}/ marker object)"
    )
}

/// A location without its last path component, and that component; a URL
/// keeps its query. `None` when nothing is left above it (a bucket).
fn split_last(src: &str, url: bool) -> Option<(String, String)> {
    let (path, query) = if url { src.split_once('?').unwrap_or((src, "")) } else { (src, "") };
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, _)) if url && (dir.ends_with("://") || !dir.contains("://")) => return None,
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (".", path),
    };
    let query = if query.is_empty() { String::new() } else { format!("?{query}") };
    Some((format!("{dir}{query}"), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_component_is_split_off_keeping_the_query() {
        let split = |s: &str, url| split_last(s, url).map(|(d, n)| format!("{d} | {n}"));
        assert_eq!(split("s3://b/p/a.csv?region=x", true).as_deref(), Some("s3://b/p?region=x | a.csv"));
        assert_eq!(split("s3://b/a.csv", true).as_deref(), Some("s3://b | a.csv"));
        assert_eq!(split("s3://b", true), None, "a bucket has nothing above it");
        assert_eq!(split("file:///a.csv", true), None);
        assert_eq!(split("/a.csv", false).as_deref(), Some("/ | a.csv"));
        assert_eq!(split("a.csv", false).as_deref(), Some(". | a.csv"));
        assert_eq!(split("d/a.csv", false).as_deref(), Some("d | a.csv"));
    }
}
