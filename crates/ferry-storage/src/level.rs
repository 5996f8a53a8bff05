//! One directory level in path order, however large.
//!
//! A flat prefix can hold millions of objects, and comparing a level needs
//! both sides sorted. Entries are sorted in runs of a bounded length; runs
//! beyond the first go to unnamed temporary files as JSON lines, and a k-way
//! merge reads them back in path order. Memory stays at one run plus a read
//! buffer per run, instead of the whole level (about 250 bytes an entry).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};

use ferry_model::{Entry, EntryKind};

use crate::error::{Error, Result};

type Entries = Box<dyn Iterator<Item = Result<Entry>> + Send>;

/// Collects a level's entries in any order; [`Self::finish`] gives them back
/// sorted by path.
pub struct LevelSorter {
    run_len: usize,
    buf: Vec<Entry>,
    runs: Vec<File>,
}

impl LevelSorter {
    /// Keep at most `run_len` entries in memory.
    pub fn new(run_len: usize) -> Self {
        Self { run_len: run_len.max(1), buf: Vec::new(), runs: Vec::new() }
    }

    pub fn push(&mut self, e: Entry) -> Result<()> {
        self.buf.push(e);
        if self.buf.len() >= self.run_len {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        let ctx =
            |e: std::io::Error| Error::io("write a sorted run of a large listing to a temporary file", e);
        self.buf.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let mut file = tempfile::tempfile().map_err(ctx)?;
        let mut w = BufWriter::with_capacity(1 << 16, &mut file);
        for e in self.buf.drain(..) {
            serde_json::to_writer(&mut w, &e).map_err(|e| ctx(e.into()))?;
            w.write_all(b"\n").map_err(ctx)?;
        }
        w.flush().map_err(ctx)?;
        drop(w);
        file.rewind().map_err(ctx)?;
        self.runs.push(file);
        Ok(())
    }

    /// Whether entries went to disk.
    pub fn spilled(&self) -> bool {
        !self.runs.is_empty()
    }

    /// The entries in path order.
    pub fn finish(mut self) -> Result<Entries> {
        if self.runs.is_empty() {
            self.buf.sort_unstable_by(|a, b| a.path.cmp(&b.path));
            return Ok(Box::new(self.buf.into_iter().map(Ok)));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        let mut merge = Merge { runs: Vec::new(), heads: BinaryHeap::new() };
        for file in self.runs {
            merge.runs.push((BufReader::with_capacity(1 << 16, file), None));
            let i = merge.runs.len() - 1;
            merge.advance(i)?;
        }
        Ok(Box::new(merge))
    }
}

/// K-way merge of sorted runs.
struct Merge {
    /// Each run and its current entry.
    runs: Vec<(BufReader<File>, Option<Entry>)>,
    /// (path of the current entry, run) for every run not yet exhausted.
    heads: BinaryHeap<Reverse<(String, usize)>>,
}

impl Merge {
    fn advance(&mut self, i: usize) -> Result<()> {
        let mut line = String::new();
        let n = self.runs[i]
            .0
            .read_line(&mut line)
            .map_err(|e| Error::io("read back a sorted run of a large listing", e))?;
        self.runs[i].1 = if n == 0 {
            None
        } else {
            let e: Entry = serde_json::from_str(&line).map_err(|e| {
                Error::io("read back a sorted run of a large listing", std::io::Error::other(e))
            })?;
            self.heads.push(Reverse((e.path.clone(), i)));
            Some(e)
        };
        Ok(())
    }
}

impl Iterator for Merge {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        let Reverse((_, i)) = self.heads.pop()?;
        let e = self.runs[i].1.take().expect("a head has an entry");
        Some(self.advance(i).map(|()| e))
    }
}

/// A listed level, read in path order. Of an object and a directory with the
/// same name (`a` and `a/`), the directory is kept and the object reported.
pub struct SortedLevel {
    entries: Entries,
    /// The next raw entry, read to look for a same-named one.
    raw: Option<Result<Entry>>,
    /// The next entry to hand out.
    peeked: Option<Option<Result<Entry>>>,
    /// Names that were skipped, with the reason (listing and merge).
    pub rejected: Vec<(String, String)>,
    /// The directory's marker object, if it has one of its own.
    pub marker: Marker,
}

/// A directory's own marker object (a key ending in `/`), as its listing saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Marker {
    /// No marker: the directory exists through the keys below it (or is
    /// not an object store's).
    #[default]
    Absent,
    /// A marker whose ETag is that of empty content, or that has none.
    Empty,
    /// A marker whose ETag is not that of empty content: it may hold data,
    /// which a look at it tells (see `ObjectRoot::stat_dir`).
    MayHoldData,
}

impl Marker {
    pub fn exists(self) -> bool {
        self != Marker::Absent
    }
}

impl SortedLevel {
    pub fn new(entries: Entries, rejected: Vec<(String, String)>, marker: Marker) -> Self {
        Self { entries, raw: None, peeked: None, rejected, marker }
    }

    pub fn empty() -> Self {
        Self::new(Box::new(std::iter::empty()), Vec::new(), Marker::Absent)
    }

    fn pull(&mut self) -> Option<Result<Entry>> {
        let mut cur = match self.raw.take().or_else(|| self.entries.next())? {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        loop {
            match self.entries.next() {
                Some(Ok(n)) if n.path == cur.path => {
                    let (keep, drop) = if n.kind == EntryKind::Dir { (n, cur) } else { (cur, n) };
                    self.rejected.push((drop.path, "an object and a directory have the same name".into()));
                    cur = keep;
                }
                other => {
                    self.raw = other;
                    return Some(Ok(cur));
                }
            }
        }
    }

    pub fn peek(&mut self) -> Option<&Result<Entry>> {
        if self.peeked.is_none() {
            self.peeked = Some(self.pull());
        }
        self.peeked.as_ref().expect("just filled").as_ref()
    }

    /// The next entry when `pred` holds for it (errors are always handed out).
    pub fn next_if(&mut self, pred: impl FnOnce(&Entry) -> bool) -> Option<Result<Entry>> {
        match self.peek()? {
            Ok(e) if !pred(e) => None,
            _ => self.next(),
        }
    }
}

impl Iterator for SortedLevel {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        match self.peeked.take() {
            Some(v) => v,
            None => self.pull(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::PosixMeta;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            size: path.len() as u64,
            mtime_ns: Some(7),
            mtime_exact: false,
            meta: PosixMeta::default(),
            meta_loaded: false,
            etag: Some(format!("\"{path}\"")),
            local: None,
            crc32c: None,
            md5: None,
        }
    }

    #[test]
    fn spilled_runs_merge_in_path_order() {
        // Names in a scrambled order, with unicode and names that are
        // prefixes of others.
        let mut names: Vec<String> = (0..2_500u32).map(|i| format!("f{}", (i * 7919) % 2_500)).collect();
        names.extend(["a", "a-b", "a.b", "\u{65e5}", "Z", "f1 x"].map(String::from));
        for run_len in [1, 3, 1000, 10_000] {
            let mut s = LevelSorter::new(run_len);
            for n in &names {
                s.push(entry(n, EntryKind::File)).unwrap();
            }
            assert_eq!(s.spilled(), run_len < names.len(), "run_len {run_len}");
            let got: Vec<Entry> = s.finish().unwrap().map(Result::unwrap).collect();
            let mut want: Vec<Entry> = names.iter().map(|n| entry(n, EntryKind::File)).collect();
            want.sort_by(|a, b| a.path.cmp(&b.path));
            assert_eq!(got, want, "run_len {run_len}");
        }
    }

    #[test]
    fn a_directory_wins_over_an_object_of_the_same_name() {
        let mut s = LevelSorter::new(2);
        for e in [entry("b", EntryKind::File), entry("a", EntryKind::Dir), entry("a", EntryKind::File)] {
            s.push(e).unwrap();
        }
        let mut level = SortedLevel::new(s.finish().unwrap(), Vec::new(), Marker::Absent);
        assert_eq!(level.peek().unwrap().as_ref().unwrap().path, "a");
        assert!(level.next_if(|e| e.path == "zzz").is_none());
        let kinds: Vec<_> = level.by_ref().map(|e| e.unwrap()).map(|e| (e.path, e.kind)).collect();
        assert_eq!(kinds, [("a".to_string(), EntryKind::Dir), ("b".to_string(), EntryKind::File)]);
        assert_eq!(level.rejected.len(), 1);
        assert!(level.rejected[0].1.contains("same name"));
    }
}
