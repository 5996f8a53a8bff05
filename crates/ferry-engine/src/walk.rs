//! A parallel walk of one location (for `ferry ls`), streaming entries.

use std::collections::VecDeque;

use ferry_model::{Entry, EntryKind};
use ferry_storage::Location;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::Result;

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
        o.list_recursive(f, bad).await?;
        return Ok(());
    }
    let mut queue = VecDeque::from([String::new()]);
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < list_threads.max(1) {
            let Some(dir) = queue.pop_back() else { break };
            running.push(async move { loc.list_dir(&dir).await });
        }
        let Some(listing) = running.next().await else { return Ok(()) };
        let listing = listing?;
        for (name, reason) in listing.rejected {
            bad(name, reason);
        }
        for e in listing.entries {
            if recursive && e.kind == EntryKind::Dir {
                queue.push_back(e.path.clone());
            }
            f(e);
        }
    }
}
