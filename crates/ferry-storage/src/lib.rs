//! Locations ferry reads from and writes to: local POSIX trees and object
//! stores (through OpenDAL), with one API the engine uses for both, and the
//! codec that keeps POSIX attributes in object metadata.

pub mod buffers;
pub mod codec;
mod crc;
mod endpoints;
mod error;
mod level;
mod location;
mod object;
mod posix;
mod s3direct;

use std::pin::Pin;

use bytes::Bytes;
use ferry_model::{Entry, EntryKind, PosixMeta};
use futures::Stream;

pub use crc::{Md5Check, PartCrcs, StoredCrc};
pub use endpoints::{check_bucket_name, ObjectStoreConfig, ObjectStores, Provider};
pub use error::{Error, Result};
pub use level::{LevelSorter, Marker, SortedLevel};
pub use location::{build_object_root, Env, LocationSpec, ObjectSpec, ProcessEnv, Scheme, UploadChecksum};
pub use object::{ObjectRoot, PartPolicy};
pub use posix::{local_version, PositionalFile, PosixReader, PosixRoot, PosixWriter, TEMP_PREFIX};
pub use s3direct::Upload;

/// Where a `file://` bucket stages objects before renaming them into place;
/// hidden from listings.
pub const FILE_STAGING_DIR: &str = ".ferry-staging";

/// A stream of content chunks.
pub type ReadStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// One directory level: usable entries sorted by path, and names that were
/// skipped with the reason.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub rejected: Vec<(String, String)>,
}

/// Options that shape how a location is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Follow symlinks in local sources (`--copy-links`).
    pub follow_links: bool,
    /// Create a missing local directory (destinations).
    pub create: bool,
    /// Accept a missing local directory as empty (a dry run's destination).
    pub may_be_missing: bool,
    pub parts: PartPolicy,
    /// Attempts for temporary object-store errors.
    pub retries: usize,
}

/// A source or destination of a transfer.
#[derive(Debug, Clone)]
pub enum Location {
    Posix(PosixRoot),
    Object(ObjectRoot),
}

/// Where bytes go while an item is written.
pub enum Sink {
    Posix(Box<PosixWriter>),
    Object(Box<ObjectSink>),
}

/// An object being written, with what is needed to tell, when completing it
/// fails, whether it landed anyway.
pub struct ObjectSink {
    writer: opendal::Writer,
    root: ObjectRoot,
    rel: String,
    written: u64,
    /// Before the upload began.
    since: std::time::SystemTime,
}

impl Location {
    /// Parse and open a location; for object stores, check the bucket is reachable.
    pub async fn open(input: &str, env: &dyn Env, opts: OpenOptions) -> Result<Self> {
        match LocationSpec::parse(input)? {
            LocationSpec::Posix(path) => {
                let (follow, create, missing) = (opts.follow_links, opts.create, opts.may_be_missing);
                let root =
                    tokio::task::spawn_blocking(move || PosixRoot::open_with(path, create, missing, follow))
                        .await
                        .expect("open task panicked")?;
                Ok(Location::Posix(root))
            }
            LocationSpec::Object(spec) => {
                let root = build_object_root(&spec, env, &opts)?;
                root.check_reachable().await?;
                Ok(Location::Object(root))
            }
        }
    }

    pub fn display(&self) -> String {
        match self {
            Location::Posix(p) => p.root().display().to_string(),
            Location::Object(o) => o.display().to_string(),
        }
    }

    pub fn is_posix(&self) -> bool {
        matches!(self, Location::Posix(_))
    }

    /// Whether an item of `kind` can be written at `rel`, as far as can be
    /// told without writing (see [`ObjectRoot::check_name`]).
    pub fn check_name(&self, rel: &str, kind: EntryKind) -> Result<()> {
        match self {
            Location::Posix(_) => Ok(()),
            Location::Object(o) => o.check_name(rel, kind),
        }
    }

    /// Whether an empty listing of the root cannot tell "empty" from "not
    /// there": a prefix inside a bucket (see [`ObjectRoot::prefix_may_be_missing`]).
    pub fn empty_means_missing(&self) -> bool {
        matches!(self, Location::Object(o) if o.prefix_may_be_missing())
    }

    /// Bytes that reading (`writing` false) or writing an item of `size`
    /// holds in memory at most; local files are read in `local_chunk`
    /// pieces and written straight through.
    pub fn buffer_for(&self, size: u64, writing: bool, local_chunk: u64) -> u64 {
        match (self, writing) {
            (Location::Posix(_), false) => size.min(local_chunk),
            (Location::Posix(_), true) => 0,
            (Location::Object(o), false) => o.read_buffer(size),
            (Location::Object(o), true) => o.write_buffer(size),
        }
    }

    /// One directory level in path order, for comparing with another. At
    /// most `in_memory` entries are kept in memory; larger levels (a flat
    /// prefix of millions of keys) are sorted through temporary files.
    pub async fn list_level(&self, rel: &str, in_memory: usize) -> Result<SortedLevel> {
        match self {
            Location::Posix(p) => {
                let (p, rel) = (p.clone(), rel.to_string());
                blocking(move || {
                    let mut sorter = LevelSorter::new(in_memory);
                    let mut rejected = Vec::new();
                    p.list_level(&rel, |e| sorter.push(e), &mut rejected)?;
                    Ok(SortedLevel::new(sorter.finish()?, rejected, Marker::Absent))
                })
                .await
            }
            Location::Object(o) => {
                let mut sorter = LevelSorter::new(in_memory);
                let mut rejected = Vec::new();
                let marker = o.list_level(rel, |e| sorter.push(e), &mut rejected).await?;
                if sorter.spilled() {
                    tracing::debug!(dir = rel, "large level sorted through temporary files");
                }
                Ok(SortedLevel::new(sorter.finish()?, rejected, marker))
            }
        }
    }

    /// The entry at `rel` with its attributes, and any metadata warnings.
    pub async fn stat(&self, rel: &str) -> Result<Option<(Entry, Vec<String>)>> {
        match self {
            Location::Posix(p) => {
                let (p, rel) = (p.clone(), rel.to_string());
                Ok(blocking(move || p.stat(&rel)).await?.map(|e| (e, Vec::new())))
            }
            Location::Object(o) => o.stat(rel).await,
        }
    }

    /// A directory's stored attributes: a local directory's own, or those
    /// kept on an object store's directory marker (`None` without one).
    pub async fn stat_dir(&self, rel: &str) -> Result<Option<(Entry, Vec<String>)>> {
        match self {
            Location::Posix(_) => Ok(self.stat(rel).await?.filter(|(e, _)| e.kind == EntryKind::Dir)),
            Location::Object(o) => o.stat_dir(rel).await,
        }
    }

    /// Make sure an entry carries its attributes (objects need a HEAD).
    pub async fn load_meta(&self, entry: &mut Entry) -> Result<Vec<String>> {
        if entry.meta_loaded || entry.kind == EntryKind::Dir {
            return Ok(Vec::new());
        }
        match self.stat(&entry.path).await? {
            Some((full, warnings)) => {
                *entry = full;
                Ok(warnings)
            }
            None => Err(Error::NotFound { what: format!("{}/{}", self.display(), entry.path) }),
        }
    }

    /// The target of a symlink entry.
    pub async fn read_link(&self, entry: &Entry) -> Result<String> {
        match self {
            Location::Posix(p) => {
                let (p, rel) = (p.clone(), entry.path.clone());
                blocking(move || p.read_link(&rel)).await
            }
            Location::Object(o) => {
                let body = o.read_small(&entry.path).await?;
                String::from_utf8(body.to_vec()).map_err(|_| Error::InvalidName {
                    name: entry.path.clone(),
                    reason: "symlink target is not valid UTF-8".into(),
                })
            }
        }
    }

    /// Stream a file's content in chunks of about `chunk` bytes.
    pub async fn open_read(&self, entry: &Entry, chunk: usize) -> Result<ReadStream> {
        match self {
            Location::Posix(p) => {
                // One read step: a chunk, and at the end of the file the
                // check that it did not change meanwhile.
                let step = move |reader: &mut PosixReader| -> Result<Option<Bytes>> {
                    let c = reader.read_chunk(chunk)?;
                    if c.is_none() || reader.at_eof() {
                        reader.check_unchanged()?;
                    }
                    Ok(c)
                };
                // Opened and first read in one blocking call: a small file
                // costs one trip to the blocking pool, not two.
                let (p, e) = (p.clone(), entry.clone());
                let (reader, first) = blocking(move || {
                    let mut reader = p.open_read(&e)?;
                    let first = step(&mut reader)?;
                    Ok((reader, first))
                })
                .await?;
                let rest = futures::stream::try_unfold(
                    (!reader.at_eof()).then_some(reader),
                    move |state| async move {
                        let Some(mut reader) = state else { return Ok(None) };
                        let (reader, chunk) = blocking(move || {
                            let c = step(&mut reader)?;
                            Ok((reader, c))
                        })
                        .await?;
                        // At the end of the file the stream ends without another read.
                        let next = (!reader.at_eof()).then_some(reader);
                        Ok(chunk.map(|c| (c, next)))
                    },
                );
                let first = futures::stream::iter(first.map(Ok::<Bytes, Error>));
                Ok(Box::pin(futures::StreamExt::chain(first, rest)))
            }
            Location::Object(o) => o.open_read(entry).await,
        }
    }

    /// Write a whole file held in memory at `rel`, as [`Self::create_file`],
    /// [`Sink::write`] and [`Sink::commit`] would. A local file is written in
    /// one trip to a blocking thread: one trip per step cost a download of
    /// small files a third of its CPU time in thread hand-offs.
    pub async fn write_file(
        &self,
        rel: &str,
        meta: &PosixMeta,
        crc32c: Option<u32>,
        data: Bytes,
    ) -> Result<Option<String>> {
        if let Location::Posix(p) = self {
            let (p, rel, meta) = (p.clone(), rel.to_string(), *meta);
            return blocking(move || {
                let mut w = p.create_file(&rel, data.len() as u64)?;
                w.write(&data)?;
                w.commit(&meta)
            })
            .await
            .map(Some);
        }
        let mut sink = self.create_file(rel, meta, crc32c, data.len() as u64).await?;
        if let Err(e) = sink.write(data).await {
            sink.abort().await;
            return Err(e);
        }
        sink.commit(meta).await
    }

    /// Start writing a file at `rel`. Attributes go with the data and become
    /// visible only when [`Sink::commit`] succeeds.
    pub async fn create_file(
        &self,
        rel: &str,
        meta: &PosixMeta,
        crc32c: Option<u32>,
        size_hint: u64,
    ) -> Result<Sink> {
        match self {
            Location::Posix(p) => {
                let (p, rel) = (p.clone(), rel.to_string());
                Ok(Sink::Posix(Box::new(blocking(move || p.create_file(&rel, size_hint)).await?)))
            }
            Location::Object(o) => {
                let since = std::time::SystemTime::now();
                let writer = o.create_writer(rel, EntryKind::File, meta, crc32c, size_hint).await?;
                Ok(Sink::Object(Box::new(ObjectSink {
                    writer,
                    root: o.clone(),
                    rel: rel.to_string(),
                    written: 0,
                    since,
                })))
            }
        }
    }

    pub async fn create_dir(&self, rel: &str, meta: &PosixMeta) -> Result<()> {
        match self {
            Location::Posix(p) => {
                let (p, rel, meta) = (p.clone(), rel.to_string(), *meta);
                blocking(move || p.create_dir(&rel, &meta)).await
            }
            Location::Object(o) => o.create_dir(rel, meta).await,
        }
    }

    /// Whether copies here keep the owner and group of their source (object
    /// stores record them; a local tree only when ferry runs as root).
    pub fn keeps_owner(&self) -> bool {
        match self {
            Location::Posix(p) => p.sets_owner(),
            Location::Object(_) => true,
        }
    }

    /// Change an existing local file's mode, owner and group in place.
    pub async fn set_file_attrs(&self, rel: &str, meta: &PosixMeta) -> Result<()> {
        match self {
            Location::Posix(p) => {
                let (p, rel, meta) = (p.clone(), rel.to_string(), *meta);
                blocking(move || p.set_file_attrs(&rel, &meta)).await
            }
            Location::Object(o) => Err(Error::Config(format!(
                "{}/{rel}: attributes of an object change only by writing it again",
                o.display()
            ))),
        }
    }

    pub async fn set_dir_mtime(&self, rel: &str, mtime_ns: i64) -> Result<()> {
        match self {
            Location::Posix(p) => {
                let (p, rel) = (p.clone(), rel.to_string());
                blocking(move || p.set_dir_mtime(&rel, mtime_ns)).await
            }
            Location::Object(_) => Ok(()),
        }
    }

    pub async fn create_symlink(&self, rel: &str, target: &str, meta: &PosixMeta) -> Result<()> {
        match self {
            Location::Posix(p) => {
                let (p, rel, target, meta) = (p.clone(), rel.to_string(), target.to_string(), *meta);
                blocking(move || p.create_symlink(&rel, &target, &meta)).await
            }
            Location::Object(o) => {
                o.put(rel, EntryKind::Symlink, meta, Bytes::from(target.to_string())).await
            }
        }
    }

    pub async fn remove(&self, rel: &str, kind: EntryKind) -> Result<()> {
        match self {
            Location::Posix(p) => {
                let (p, rel) = (p.clone(), rel.to_string());
                blocking(move || p.remove(&rel, kind)).await
            }
            Location::Object(o) => o.remove(rel, kind).await,
        }
    }
}

impl Sink {
    /// For local files: a handle for positional writes (ranged downloads).
    pub fn positional(&self) -> Option<Result<PositionalFile>> {
        match self {
            Sink::Posix(w) => Some(w.positional()),
            Sink::Object(_) => None,
        }
    }

    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        match self {
            Sink::Posix(w) => tokio::task::block_in_place(|| w.write(&data)),
            Sink::Object(o) => {
                let n = data.len() as u64;
                o.writer.write(data).await.map_err(|e| Error::store(format!("write {}", o.name()), e))?;
                o.written += n;
                Ok(())
            }
        }
    }

    /// Make the item durable and visible under its final name. Returns the
    /// object's ETag when the store reported one, a local file's
    /// [`local_version`].
    pub async fn commit(self, meta: &PosixMeta) -> Result<Option<String>> {
        match self {
            Sink::Posix(w) => {
                let meta = *meta;
                blocking(move || w.commit(&meta)).await.map(Some)
            }
            Sink::Object(mut o) => match o.writer.close().await {
                Ok(md) => Ok(md.etag().map(str::to_string)),
                Err(e) => {
                    // A completion the store carried out but whose answer was
                    // lost fails on retry (the upload is gone): look.
                    if let Some(etag) = o.root.landed(&o.rel, o.written, meta, o.since).await {
                        tracing::debug!(object = %o.name(), error = %e, "completed despite the error");
                        return Ok(etag);
                    }
                    // A part refused while closing (say BadDigest) leaves
                    // the multipart upload open: abort it.
                    let _ = o.writer.abort().await;
                    Err(Error::store(format!("complete {}", o.name()), e))
                }
            },
        }
    }

    /// Drop everything written so far (multipart uploads are aborted).
    pub async fn abort(self) {
        match self {
            Sink::Posix(w) => drop(w),
            Sink::Object(mut o) => {
                let _ = o.writer.abort().await;
            }
        }
    }
}

impl ObjectSink {
    fn name(&self) -> String {
        format!("{}/{}", self.root.display(), self.rel)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.expect("blocking storage task panicked")
}
