//! A parallel walk of one location (for `ferry ls`), streaming entries.

use std::collections::VecDeque;

use ferry_model::{Entry, EntryKind};
use ferry_storage::Location;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::Result;

/// Entries of one level held in memory; larger levels are sorted through
/// temporary files.
const LEVEL_IN_MEMORY: usize = 200_000;

/// Walk `loc` level by level with `list_threads` listings in flight, calling
/// `f` for every entry. Rejected names are passed to `bad`. Directories are
/// only descended when `recursive`.
pub async fn walk(
    loc: &Location,
    list_threads: usize,
    recursive: bool,
    mut f: impl FnMut(Entry),
    mut bad: impl FnMut(String, String),
) -> Result<()> {
    if let (true, Location::Object(o)) = (recursive, loc) {
        // One flat listing in key order, where a directory's keys are
        // contiguous: directories that only exist through the keys below
        // them (no marker object) are shown once, before their content.
        // `open` is the chain of directories shown above the current key,
        // from the top: open[i] is its ancestor at depth i + 1.
        let mut open: Vec<String> = Vec::new();
        o.list_recursive(
            |e| {
                let parent = e.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                let within =
                    |d: &str| parent.strip_prefix(d).is_some_and(|r| r.is_empty() || r.starts_with('/'));
                while open.last().is_some_and(|d| !within(d)) {
                    open.pop();
                }
                let ancestors = parent.match_indices('/').map(|(i, _)| &parent[..i]).chain([parent]);
                for a in ancestors.filter(|a| !a.is_empty()).skip(open.len()) {
                    f(Entry::dir(a));
                    open.push(a.to_string());
                }
                if e.kind == EntryKind::Dir {
                    open.push(e.path.clone());
                }
                f(e);
            },
            bad,
        )
        .await?;
        return Ok(());
    }
    let mut queue = VecDeque::from([String::new()]);
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < list_threads.max(1) {
            let Some(dir) = queue.pop_back() else { break };
            running.push(async move { loc.list_level(&dir, LEVEL_IN_MEMORY).await });
        }
        let Some(level) = running.next().await else { return Ok(()) };
        let mut level = level?;
        for e in level.by_ref() {
            let e = e?;
            if recursive && e.kind == EntryKind::Dir {
                queue.push_back(e.path.clone());
            }
            f(e);
        }
        for (name, reason) in level.rejected {
            bad(name, reason);
        }
    }
}
