//! A bucket (or a prefix of one) reached through OpenDAL.
//!
//! Directories are zero-byte keys ending in `/`; a symlink is an object whose
//! body is the link target and whose mode says `0120777`. Keys that cannot be
//! POSIX names are reported in listings and never turned into other names.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_model::{validate_rel_path, Entry, EntryKind, PosixMeta};
use futures::{StreamExt, TryStreamExt};
use opendal::options::{ListOptions, ReaderOptions, WriteOptions};
use opendal::{Metadata, Operator};

use crate::codec;
use crate::error::{Error, Result};
use crate::level::Marker;
use crate::ReadStream;

/// Largest ranged read of one object.
const READ_CHUNK: usize = 8 << 20;

/// How large parts are, and how many move at once, for one large object.
#[derive(Debug, Clone, Copy)]
pub struct PartPolicy {
    pub chunk: usize,
    pub concurrent: usize,
    /// Bytes the parts of one upload may hold at once (`--buffer-memory`):
    /// fewer parts are in flight when `concurrent` of them would not fit,
    /// one at least.
    pub room: u64,
}

impl Default for PartPolicy {
    fn default() -> Self {
        Self { chunk: 8 << 20, concurrent: 6, room: 256 << 20 }
    }
}

/// Parts of one multipart upload at most (S3 and the stores modelled on it).
pub const MAX_PARTS: u64 = 10_000;

impl PartPolicy {
    /// The part size of an object of `size` bytes: the configured one, or
    /// for an object that would need more than [`MAX_PARTS`] of them, the
    /// smallest whole number of MiB that fits it in that many (as rclone
    /// grows its chunks), so that a 100 GiB file does not fail at its
    /// 10,001st part after 78 GiB were sent.
    pub fn chunk_for(&self, size: u64) -> usize {
        let fitting = size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
        (self.chunk as u64).max(fitting) as usize
    }

    /// Parts of an upload of `size` bytes in flight at once: with the one
    /// being filled, they fit in `room` (when one part does).
    pub fn concurrent_for(&self, size: u64) -> usize {
        let fit = (self.room / self.chunk_for(size) as u64).saturating_sub(1).max(1);
        self.concurrent.min(fit as usize)
    }
}

#[derive(Clone)]
pub struct ObjectRoot {
    op: Operator,
    /// The same service without OpenDAL's simulations: object stores keep
    /// directories as `dir/` marker objects, and only a plain HEAD or PUT of
    /// the marker reads or writes the attributes stored on it (the simulated
    /// directory stat lists the prefix instead, and `create_dir` takes no
    /// metadata).
    markers: std::sync::Arc<Operator>,
    /// Key prefix inside the bucket: empty, or ending with `/`.
    prefix: String,
    /// For `file://` buckets, the directory behind the bucket: a directory's
    /// attributes go in its `user.*` xattrs, where OpenDAL's fs service keeps
    /// object metadata (and reads it back on stat).
    local_root: Option<std::path::PathBuf>,
    /// `scheme://bucket/prefix`, for messages.
    display: String,
    parts: PartPolicy,
    /// Multipart-upload housekeeping, for S3-compatible stores.
    direct: Option<std::sync::Arc<crate::s3direct::S3Direct>>,
    /// Where requests go, for messages when nothing answers there.
    endpoint: std::sync::Arc<Endpoint>,
}

/// A store's endpoint as configured, and how it is set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Endpoint {
    /// `None`: the service's default.
    pub url: Option<String>,
    /// The variables that set it, besides the location's `?endpoint=`.
    pub vars: &'static [&'static str],
    /// Where the store's credentials come from, for messages.
    pub credentials: &'static str,
}

impl Endpoint {
    fn unreachable(&self, reason: &'static str) -> Error {
        let vars =
            if self.vars.is_empty() { String::new() } else { format!(" or {}", self.vars.join(" / ")) };
        Error::Unreachable {
            endpoint: self.url.clone().unwrap_or_else(|| "the store's default endpoint".into()),
            reason,
            fix: format!("check that the store is up and the endpoint is right (?endpoint=…{vars})"),
        }
    }
}

/// The longest object name a `file://` store takes: OpenDAL stages each
/// write under the name, a dot and 8 random characters, within the file
/// system's 255 bytes.
const FILE_STORE_NAME_MAX: usize = 255 - 9;

/// The largest object S3's CopyObject copies in one request.
const COPY_OBJECT_MAX: u64 = 5 << 30;

/// How long the first request to a store may go unanswered before the
/// user is told (see [`ObjectRoot::check_reachable`]).
pub const SLOW_START_NOTICE: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for ObjectRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRoot").field("display", &self.display).finish()
    }
}

/// S3 lists keys in byte order, page after page, and OpenDAL hands over
/// each page's common prefixes before its objects: within each kind, every
/// key must sort after the one before it. One that does not means the
/// listing started over (OpenDAL follows a page marked truncated that gives
/// no continuation token by asking for the first page again, forever) or
/// that the store's listing is broken; either way it cannot be trusted.
#[derive(Debug, Default)]
struct ListOrder {
    on: bool,
    last_prefix: String,
    last_object: String,
}

impl ListOrder {
    fn check(&mut self, key: &str) -> std::result::Result<(), String> {
        if !self.on {
            return Ok(());
        }
        // Keys ending in `/` are common prefixes (or, in a flat listing,
        // marker objects: a subsequence of a sorted run is sorted too).
        let last = if key.ends_with('/') { &mut self.last_prefix } else { &mut self.last_object };
        if !last.is_empty() && key <= last.as_str() {
            return Err(format!(
                "the listing went back ({key:?} came after {last:?}): a page marked truncated without a \
                 continuation token, or a broken listing; not trusted"
            ));
        }
        last.clear();
        last.push_str(key);
        Ok(())
    }
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl ObjectRoot {
    pub fn new(op: Operator, prefix: &str, display: String, parts: PartPolicy) -> Self {
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        let display = display.trim_end_matches('/').to_string();
        let markers = Operator::from_parts(op.base_context().clone(), op.base_service().clone()).into();
        Self {
            op,
            markers,
            prefix,
            local_root: None,
            display,
            parts,
            direct: None,
            endpoint: Default::default(),
        }
    }

    /// Put the same layers (retries, timeouts) on both operators.
    pub fn map_operators(mut self, f: impl Fn(Operator) -> Operator) -> Self {
        self.op = f(self.op);
        self.markers = f(Operator::clone(&self.markers)).into();
        self
    }

    /// The metadata written for an entry. Azure metadata names must be C#
    /// identifiers, so there `file-mtime` goes as `file_mtime` (reading
    /// accepts both spellings everywhere).
    fn user_metadata(
        &self,
        kind: EntryKind,
        meta: &PosixMeta,
        crc32c: Option<u32>,
    ) -> HashMap<String, String> {
        let map = codec::encode(kind, meta, crc32c);
        if self.op.info().scheme() == "azblob" {
            map.into_iter().map(|(k, v)| (k.replace('-', "_"), v)).collect()
        } else {
            map
        }
    }

    /// The bucket is this local directory (`file://`).
    pub fn with_local_root(mut self, root: std::path::PathBuf) -> Self {
        self.local_root = Some(root);
        self
    }

    pub(crate) fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    pub(crate) fn with_direct(mut self, direct: crate::s3direct::S3Direct) -> Self {
        self.direct = Some(direct.into());
        self
    }

    /// Whether the store can copy objects of `src` here itself (S3
    /// CopyObject): both are s3:// locations at one endpoint, reached with
    /// the same credentials. Such copies move no data through ferry.
    pub fn copies_from(&self, src: &ObjectRoot) -> bool {
        matches!((&self.direct, &src.direct), (Some(d), Some(s)) if d.same_store(s))
    }

    /// Copy the object `entry` of `src` (see [`Self::copies_from`]), a
    /// file or a symlink (whose body is its target), to the same path here
    /// within the store, with `meta` (and `crc32c`, the content's when
    /// known) as its attributes. Fails as [`Error::SourceChanged`] when the
    /// source is no longer `entry.etag`, and as [`Error::CopyRefused`] when
    /// the store does not make such copies. Objects above `cutoff` bytes
    /// (at most 5 GiB, CopyObject's limit) are copied in parts of this
    /// location's part size. Returns the new object's ETag.
    pub async fn copy_from(
        &self,
        src: &ObjectRoot,
        entry: &Entry,
        meta: &PosixMeta,
        crc32c: Option<u32>,
        cutoff: u64,
    ) -> Result<Option<String>> {
        let (Some(d), Some(s)) = (&self.direct, &src.direct) else {
            return Err(Error::Config(format!(
                "{} cannot copy from {} within the store",
                self.display, src.display
            )));
        };
        let (key, source) = (self.path(&entry.path)?, s.copy_source(&src.path(&entry.path)?));
        self.check_name(&entry.path, entry.kind)?;
        let metadata = self.user_metadata(entry.kind, meta, crc32c);
        let what = format!("{}/{} to {}/{}", src.display, entry.path, self.display, entry.path);
        let etag = entry.etag.as_deref();
        if entry.size <= cutoff.min(COPY_OBJECT_MAX) {
            let multipart = etag.is_some_and(|e| e.trim_matches('"').contains('-'));
            return d.copy_object(&source, (etag, multipart), &key, &metadata, &what).await;
        }
        // Parts copied one by one must all come from one version.
        if etag.is_none() {
            return Err(Error::CopyRefused(format!(
                "copy {what} within the store: the store names no ETag to pin its parts to"
            )));
        }
        let layout =
            (entry.size, self.parts.chunk_for(entry.size) as u64, self.parts.concurrent_for(entry.size));
        let since = SystemTime::now();
        match d.copy_in_parts(&source, etag, &key, &metadata, layout, &what).await {
            Ok(etag) => Ok(etag),
            Err(e) => {
                // A completion the store carried out but whose answer was
                // lost fails on retry (the upload is gone): look.
                if let Some(etag) = self.landed(&entry.path, entry.size, meta, since).await {
                    tracing::debug!(object = %what, error = %e, "copied despite the error");
                    return Ok(etag);
                }
                Err(e)
            }
        }
    }

    /// Whether incomplete multipart uploads can be listed and aborted here.
    pub fn tracks_uploads(&self) -> bool {
        self.direct.is_some()
    }

    /// Incomplete multipart uploads under this location's prefix, oldest
    /// first. Only S3-compatible stores (`s3://`) can be asked.
    pub async fn incomplete_uploads(&self) -> Result<Vec<crate::Upload>> {
        let Some(uploads) = &self.direct else {
            return Err(Error::Config(format!(
                "{}: incomplete multipart uploads can only be listed on s3:// locations",
                self.display
            )));
        };
        let mut out: Vec<crate::Upload> = uploads
            .list(&self.prefix, &self.display)
            .await?
            .into_iter()
            .filter_map(|(key, upload_id, initiated)| {
                let key = key.strip_prefix(&self.prefix)?.to_string();
                Some(crate::Upload { key, upload_id, initiated })
            })
            .collect();
        out.sort_by(|a, b| (a.initiated, &a.key).cmp(&(b.initiated, &b.key)));
        Ok(out)
    }

    /// Abort one incomplete upload, freeing its stored parts.
    pub async fn abort_upload(&self, upload: &crate::Upload) -> Result<()> {
        match &self.direct {
            Some(u) => {
                let what = format!("{}/{}", self.display, upload.key);
                u.abort(&self.key(&upload.key), &upload.upload_id, &what).await
            }
            None => Err(Error::Config(format!("{}: not an s3:// location", self.display))),
        }
    }

    /// The CRC32C the store recorded for this version of an object, when
    /// the store keeps one and this location uses S3 checksums (`s3://`
    /// without `checksum=none`). One HEAD, two for a multipart object.
    pub async fn stored_crc(&self, entry: &Entry) -> Result<Option<crate::StoredCrc>> {
        match &self.direct {
            Some(d) => {
                let what = format!("{}/{}", self.display, entry.path);
                d.stored_crc(&self.key(&entry.path), entry.etag.as_deref(), entry.size, &what).await
            }
            None => Ok(None),
        }
    }

    /// The MD5 recorded for an object that carries no CRC32C of ferry's, on
    /// an `s3://` location that uses checksums: rclone's `md5chksum`
    /// metadata (loaded with the attributes), else the MD5 its ETag stands
    /// for (an object stored by one PUT); with whether it is the ETag.
    fn recorded(&self, entry: &Entry) -> Option<([u8; 16], bool)> {
        let d = self.direct.as_ref().filter(|d| d.checks_content() && entry.crc32c.is_none())?;
        match entry.md5 {
            Some(md5) => Some((md5, false)),
            None => d.etag_md5(entry.etag.as_deref()).map(|md5| (md5, true)),
        }
    }

    /// What checking an object's content against the MD5 recorded for it
    /// needs (see [`Self::recorded_md5`]); for a multipart object without
    /// one, its ETag's MD5 of parts and their size (one HEAD). Objects
    /// ferry wrote carry a CRC32C of their own and get `None`, and so do
    /// those whose part size the store does not tell.
    pub async fn md5_check(&self, entry: &Entry) -> Result<Option<crate::Md5Check>> {
        if let Some((md5, from_etag)) = self.recorded(entry) {
            return Ok(Some(crate::Md5Check::new(md5, from_etag)));
        }
        let Some(d) = &self.direct else { return Ok(None) };
        let Some((want, parts)) = self.multipart_etag(entry) else { return Ok(None) };
        let what = format!("{}/{}", self.display, entry.path);
        let part_size = d.first_part_size(&self.key(&entry.path), (parts, entry.size), &what).await?;
        Ok(part_size.map(|p| crate::Md5Check::of_parts(want, parts, p)))
    }

    /// What a multipart object's ETag says, for one without a CRC32C of
    /// ferry's on a location that checks content: the MD5 of its parts'
    /// MD5s and their number.
    pub fn multipart_etag(&self, entry: &Entry) -> Option<([u8; 16], u64)> {
        let d = self.direct.as_ref().filter(|d| d.checks_content() && entry.crc32c.is_none())?;
        d.multipart_etag_md5(entry.etag.as_deref())
    }

    /// The MD5 recorded for an object without a CRC32C of ferry's.
    pub fn recorded_md5(&self, entry: &Entry) -> Option<[u8; 16]> {
        self.recorded(entry).map(|(md5, _)| md5)
    }

    /// Whether content fed to `check` is the object's: `None` when it
    /// differs from an ETag but that cannot tell (see [`Self::check_md5`]).
    pub async fn md5_matches(&self, entry: &Entry, check: crate::Md5Check) -> Result<Option<bool>> {
        Ok(match self.md5_verdict(entry, check).await? {
            Md5Verdict::Same => Some(true),
            Md5Verdict::Differs { .. } => Some(false),
            Md5Verdict::Unknown(_) => None,
        })
    }

    async fn md5_verdict(&self, entry: &Entry, check: crate::Md5Check) -> Result<Md5Verdict> {
        let (want, from_etag, layout) = (check.want, check.from_etag, check.layout());
        let got = check.finish();
        let matched = got.0 == want && got.1 == layout.map(|(n, _)| n);
        if matched {
            return Ok(Md5Verdict::Same);
        }
        let what = if from_etag {
            "its ETag; for a store whose ETags are not MD5s, add ?checksum=none to the source"
        } else {
            "its md5chksum metadata"
        };
        let (expected, read) = match (layout, got.1) {
            (Some((n, size)), Some(m)) => (
                format!("md5 {}-{n} of parts of {size} bytes ({what})", hex::encode(want)),
                format!("md5 {}-{m}", hex::encode(got.0)),
            ),
            _ => (format!("md5 {} ({what})", hex::encode(want)), format!("md5 {}", hex::encode(got.0))),
        };
        let d = match &self.direct {
            Some(d) if from_etag => d,
            _ => return Ok(Md5Verdict::Differs { expected, read }),
        };
        let (name, key, etag) =
            (format!("{}/{}", self.display, entry.path), self.key(&entry.path), entry.etag.as_deref());
        if d.etag_may_not_be_md5(&key, etag, &name).await? {
            return Ok(Md5Verdict::Unknown(None));
        }
        if let Some(layout) = layout {
            if !self.parts_laid_out(entry, layout).await? {
                let why = "its parts are of unequal sizes, so its ETag cannot be checked";
                return Ok(Md5Verdict::Unknown(Some(why)));
            }
        }
        Ok(Md5Verdict::Differs { expected, read })
    }

    /// The verdict on content fed to `check`: a `ChecksumMismatch` unless
    /// it matched, or the ETag turns out not to tell: the object is
    /// encrypted with SSE-KMS (one HEAD), or a multipart object's parts
    /// are not all of its first part's size (one HEAD per part), which
    /// comes back as a warning to show.
    pub async fn check_md5(&self, entry: &Entry, check: crate::Md5Check) -> Result<Option<&'static str>> {
        match self.md5_verdict(entry, check).await? {
            Md5Verdict::Same => Ok(None),
            Md5Verdict::Unknown(why) => Ok(why),
            Md5Verdict::Differs { expected, read } => {
                Err(Error::ChecksumMismatch { path: entry.path.clone(), expected, got: read })
            }
        }
    }

    /// Check a small object's content, read whole (see [`Self::md5_check`]).
    pub async fn check_md5_of(&self, entry: &Entry, content: &[u8]) -> Result<Option<&'static str>> {
        let Some(mut check) = self.md5_check(entry).await? else { return Ok(None) };
        check.update(content);
        self.check_md5(entry, check).await
    }

    /// Whether a multipart object's parts are laid out as `stored` (a
    /// composite CRC) assumes: all of its part size but the last. Asked
    /// after a mismatch, to tell corruption from parts of unequal sizes.
    pub async fn parts_are_equal(&self, entry: &Entry, stored: &crate::StoredCrc) -> Result<bool> {
        match *stored {
            crate::StoredCrc::Composite { parts, part_size, .. } => {
                self.parts_laid_out(entry, (parts, part_size)).await
            }
            _ => Ok(true),
        }
    }

    /// Whether every part of a multipart object is `part_size` bytes but the
    /// last (one HEAD per part); true where that cannot be asked.
    async fn parts_laid_out(&self, entry: &Entry, (parts, part_size): (u64, u64)) -> Result<bool> {
        let Some(d) = &self.direct else { return Ok(true) };
        let what = format!("{}/{}", self.display, entry.path);
        let layout = (parts, part_size, entry.size);
        d.parts_are_equal(&self.key(&entry.path), entry.etag.as_deref(), layout, &what).await
    }

    /// Whether directories are marker objects that can carry metadata (object
    /// stores), rather than real directories (the `fs` and memory services).
    fn markers_carry_metadata(&self) -> bool {
        let native = self.markers.info().capability();
        !native.create_dir && native.write_can_empty && native.write_with_user_metadata && native.stat
    }

    /// Whether a listed path is (in) a staging directory of a `file://`
    /// store: at the root on any store; on a `file://` store at any depth
    /// too, as one opened on a subdirectory keeps its own there.
    fn is_staging(&self, rel_path: &str) -> bool {
        let staging = crate::FILE_STAGING_DIR;
        let at_root = rel_path.split('/').next() == Some(staging);
        at_root || (self.local_root.is_some() && rel_path.split('/').any(|c| c == staging))
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    /// Whether the root is a prefix inside a bucket whose listing can come
    /// back empty because nothing was ever stored under it (a mistyped
    /// name, or an object's key taken for a prefix). `file://` directories
    /// exist or not, as local ones do.
    pub fn prefix_may_be_missing(&self) -> bool {
        !self.prefix.is_empty() && self.local_root.is_none()
    }

    pub fn operator(&self) -> &Operator {
        &self.op
    }

    /// The object key of `rel`, as the store names it (ferry's own S3
    /// calls). Every OpenDAL call goes through [`Self::path`] instead.
    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// The key of `rel` for an OpenDAL call; refused when OpenDAL would
    /// turn it into another key.
    fn path(&self, rel: &str) -> Result<String> {
        addressable(self.key(rel))
    }

    /// The key of the directory `rel` (its marker, or what its listing
    /// starts with) for an OpenDAL call; refused like [`Self::path`].
    fn dir_path(&self, rel: &str) -> Result<String> {
        if rel.is_empty() {
            if self.prefix.is_empty() {
                Ok("/".into())
            } else {
                addressable(self.prefix.clone())
            }
        } else {
            addressable(format!("{}{rel}/", self.prefix))
        }
    }

    /// Fail with a clear message when the bucket cannot be listed.
    ///
    /// A store that drops connection attempts or never answers would hold
    /// the run silent for its timeouts times its retries (minutes): after
    /// [`SLOW_START_NOTICE`] without an answer, a warning says what is
    /// being waited for, and the check goes on.
    pub async fn check_reachable(&self) -> Result<()> {
        let check = self.list_one();
        tokio::pin!(check);
        tokio::select! {
            res = &mut check => return res,
            () = tokio::time::sleep(SLOW_START_NOTICE) => {}
        }
        let at = self.endpoint.url.as_deref().map(|u| format!(" at {u}")).unwrap_or_default();
        tracing::warn!(
            "no answer from {}{at} for {} s; still trying (-v shows each retry; --retries sets how many)",
            self.display,
            SLOW_START_NOTICE.as_secs()
        );
        check.await
    }

    async fn list_one(&self) -> Result<()> {
        let opts = ListOptions { limit: Some(1), ..Default::default() };
        let mut lister =
            self.op.lister_options(&self.dir_path("")?, opts).await.map_err(|e| self.reach_error(e))?;
        if let Some(Err(e)) = lister.next().await {
            return Err(self.reach_error(e));
        }
        Ok(())
    }

    fn reach_error(&self, e: opendal::Error) -> Error {
        let msg = e.to_string();
        if let Some(reason) = crate::error::connect_failure(&e) {
            self.endpoint.unreachable(reason)
        } else if msg.contains("NoSuchBucket") || e.kind() == opendal::ErrorKind::NotFound {
            Error::Missing {
                what: format!("bucket of {}", self.display),
                fix: "create it first, or check the name",
            }
        } else if e.kind() == opendal::ErrorKind::PermissionDenied
            || msg.contains("SignatureDoesNotMatch")
            || msg.contains("InvalidAccessKeyId")
        {
            let vars = self.endpoint.credentials;
            Error::PermissionDenied { what: format!("{} (check {vars} and the endpoint)", self.display) }
        } else {
            Error::store(format!("cannot reach {}", self.display), e)
        }
    }

    /// A check of the key order of one listing, on stores known to list in
    /// byte order.
    fn list_order(&self) -> ListOrder {
        ListOrder { on: self.op.info().scheme() == "s3", ..Default::default() }
    }

    /// Stream one "directory" level to `f`, in the store's order; keys that
    /// cannot be POSIX names go to `rejected`. Returns the directory's own
    /// marker object, if it has one.
    pub async fn list_level(
        &self,
        rel: &str,
        mut f: impl FnMut(Entry) -> Result<()>,
        rejected: &mut Vec<(String, String)>,
    ) -> Result<Marker> {
        let dir_key = self.dir_path(rel)?;
        let ctx = || format!("list {}/{rel}", self.display);
        let mut lister = self
            .op
            .lister_options(&dir_key, ListOptions::default())
            .await
            .map_err(|e| Error::store(ctx(), e))?;
        let mut marker = Marker::Absent;
        let mut order = self.list_order();
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() };
        while let Some(item) = lister.next().await {
            let item = item.map_err(|e| Error::store(ctx(), e))?;
            let (path, md) = item.into_parts();
            let path = path.trim_start_matches('/');
            if path == dir_key.trim_start_matches('/') {
                // The bucket's root is listed as `/` whether or not anything
                // is stored; any other directory only through its marker.
                marker = match path.is_empty() {
                    true => Marker::Absent,
                    false if etag_of_empty_content(&md) => Marker::Empty,
                    false => Marker::MayHoldData,
                };
                continue;
            }
            order.check(path).map_err(|e| Error::Listing(format!("{}: {e}", ctx())))?;
            if path.len() < strip {
                continue;
            }
            let rel_key = &path[strip..];
            let is_dir = rel_key.ends_with('/');
            let rel_path = rel_key.strip_suffix('/').unwrap_or(rel_key);
            if let Err(e) = validate_rel_path(rel_path) {
                rejected.push((rel_key.to_string(), format!("key cannot be a POSIX path: {e}")));
                continue;
            }
            if path.trim() != path {
                rejected.push((rel_key.to_string(), UNADDRESSABLE.into()));
                continue;
            }
            if is_dir && md.content_length() > 0 && md.is_file() {
                rejected.push((rel_key.to_string(), "key ends with '/' but has data".into()));
                continue;
            }
            if self.is_staging(rel_path) {
                continue;
            }
            f(entry_from_listing(rel_path, is_dir || md.is_dir(), &md))?;
        }
        Ok(marker)
    }

    /// List everything under the prefix in one flat, paged listing (far
    /// fewer requests than a level-by-level walk when directories are small).
    /// Entries come in key order; unusable keys go to `bad`.
    pub async fn list_recursive(
        &self,
        mut f: impl FnMut(Entry),
        mut bad: impl FnMut(String, String),
    ) -> Result<()> {
        self.list_recursive_batched(1000, |entries, rejected| {
            entries.into_iter().for_each(&mut f);
            rejected.into_iter().for_each(|(k, why)| bad(k, why));
            std::future::ready(Ok(()))
        })
        .await
    }

    /// Like [`Self::list_recursive`], handing entries over `batch` at a time
    /// (with the keys rejected meanwhile) and waiting for each hand-over to
    /// finish: memory stays bounded however slow the consumer is.
    pub async fn list_recursive_batched<E, Fut>(
        &self,
        batch: usize,
        mut f: impl FnMut(Vec<Entry>, Vec<(String, String)>) -> Fut,
    ) -> std::result::Result<(), E>
    where
        E: From<Error>,
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
    {
        let root = self.dir_path("")?;
        let ctx = || format!("list {}", self.display);
        let opts = ListOptions { recursive: true, ..Default::default() };
        let mut lister = self.op.lister_options(&root, opts).await.map_err(|e| Error::store(ctx(), e))?;
        let strip = self.prefix.len();
        let (mut entries, mut rejected) = (Vec::with_capacity(batch), Vec::new());
        let mut order = self.list_order();
        while let Some(item) = lister.next().await {
            let (path, md) = item.map_err(|e| Error::store(ctx(), e))?.into_parts();
            let path = path.trim_start_matches('/');
            order.check(path).map_err(|e| E::from(Error::Listing(format!("{}: {e}", ctx()))))?;
            if path.len() <= strip || path == root.trim_start_matches('/') {
                continue;
            }
            let rel_key = &path[strip..];
            let is_dir = rel_key.ends_with('/');
            let rel_path = rel_key.strip_suffix('/').unwrap_or(rel_key);
            if self.is_staging(rel_path) {
                continue;
            }
            match validate_rel_path(rel_path) {
                Ok(()) if path.trim() != path => rejected.push((rel_key.to_string(), UNADDRESSABLE.into())),
                Ok(()) => entries.push(entry_from_listing(rel_path, is_dir || md.is_dir(), &md)),
                Err(e) => rejected.push((rel_key.to_string(), format!("key cannot be a POSIX path: {e}"))),
            }
            if entries.len() >= batch {
                f(std::mem::replace(&mut entries, Vec::with_capacity(batch)), std::mem::take(&mut rejected))
                    .await?;
            }
        }
        if !entries.is_empty() || !rejected.is_empty() {
            f(entries, rejected).await?;
        }
        Ok(())
    }

    /// HEAD the object and fill in its attributes.
    pub async fn stat(&self, rel: &str) -> Result<Option<(Entry, Vec<String>)>> {
        self.stat_key(&self.op, &self.path(rel)?, rel, false).await
    }

    /// The attributes stored on a directory's marker object; `None` when the
    /// directory has no marker (it exists only through the keys below it).
    pub async fn stat_dir(&self, rel: &str) -> Result<Option<(Entry, Vec<String>)>> {
        let op = if self.markers_carry_metadata() { &self.markers } else { &self.op };
        self.stat_key(op, &self.dir_path(rel)?, rel, true).await
    }

    /// Fail when the directory marker `key` holds data: S3 allows a key
    /// ending in `/` to, and such a key names a directory here, as it does
    /// to every tool that maps keys onto paths, so its data cannot be
    /// copied. OpenDAL keeps no size for such keys; a marker whose ETag is
    /// not that of empty content is asked its size with one HEAD (`s3://`
    /// locations; the markers ferry and others write are empty and cost no
    /// request).
    async fn check_marker_is_empty(&self, key: &str, rel: &str, md: &Metadata) -> Result<()> {
        let Some(direct) = &self.direct else { return Ok(()) };
        if etag_of_empty_content(md) {
            return Ok(());
        }
        match direct.stored_size(key, &format!("{}/{rel}/", self.display)).await? {
            Some(size) if size > 0 => {
                // The listed prefix's own marker is named in full.
                let key = if rel.is_empty() { format!("{}/", self.display) } else { format!("{rel}/") };
                Err(Error::MarkerHoldsData { key, size })
            }
            _ => Ok(()),
        }
    }

    async fn stat_key(
        &self,
        op: &Operator,
        key: &str,
        rel: &str,
        is_dir: bool,
    ) -> Result<Option<(Entry, Vec<String>)>> {
        match op.stat(key).await {
            Ok(md) => {
                if is_dir {
                    self.check_marker_is_empty(key, rel, &md).await?;
                }
                let mut e = entry_from_listing(rel, is_dir, &md);
                let warnings = apply_user_metadata(&mut e, &md);
                Ok(Some((e, warnings)))
            }
            Err(err) if err.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(err) => {
                let slash = if is_dir { "/" } else { "" };
                Err(Error::store(format!("stat {}/{rel}{slash}", self.display), err))
            }
        }
    }

    /// Bytes a read of an object of `size` holds in memory at most.
    pub fn read_buffer(&self, size: u64) -> u64 {
        let chunk = self.parts.chunk.min(READ_CHUNK) as u64;
        if size > READ_CHUNK as u64 {
            self.parts.concurrent.min(4) as u64 * chunk
        } else {
            size
        }
    }

    /// Bytes a write of an object of `size` holds in memory at most: the
    /// parts in flight and the one being filled.
    pub fn write_buffer(&self, size: u64) -> u64 {
        let chunk = self.parts.chunk_for(size) as u64;
        if size > chunk {
            (self.parts.concurrent_for(size) as u64 + 1) * chunk
        } else {
            size
        }
    }

    /// Stream an object's bytes, failing if it changes (ETag) meanwhile.
    pub async fn open_read(&self, entry: &Entry) -> Result<ReadStream> {
        let ctx = format!("read {}/{}", self.display, entry.path);
        let opts = ReaderOptions {
            if_match: entry.etag.clone(),
            // The size is known from the listing: no HEAD to learn it.
            content_length_hint: Some(entry.size),
            // Reads need less in flight than writes to keep a store busy: at
            // most 4 ranges of at most 8 MiB per object bounds memory.
            concurrent: if entry.size > READ_CHUNK as u64 { self.parts.concurrent.min(4) } else { 1 },
            chunk: Some(self.parts.chunk.min(READ_CHUNK)),
            ..Default::default()
        };
        let reader = self
            .op
            .reader_options(&self.path(&entry.path)?, opts)
            .await
            .map_err(|e| Error::store(ctx.clone(), e))?;
        let stream =
            reader.into_bytes_stream(0..entry.size).await.map_err(|e| Error::store(ctx.clone(), e))?;
        Ok(stream.map_err(move |e| Error::Io { context: ctx.clone(), source: e }).boxed())
    }

    /// Stream one byte range of an object (one GET), failing if the object
    /// changed since it was listed (ETag).
    pub async fn open_range(&self, entry: &Entry, range: std::ops::Range<u64>) -> Result<ReadStream> {
        let ctx = format!("read {}/{}", self.display, entry.path);
        let opts = ReaderOptions {
            if_match: entry.etag.clone(),
            content_length_hint: Some(entry.size),
            ..Default::default()
        };
        let reader = self
            .op
            .reader_options(&self.path(&entry.path)?, opts)
            .await
            .map_err(|e| Error::store(ctx.clone(), e))?;
        let stream = reader.into_bytes_stream(range).await.map_err(|e| Error::store(ctx.clone(), e))?;
        Ok(stream.map_err(move |e| Error::Io { context: ctx.clone(), source: e }).boxed())
    }

    /// Read a whole (small) object with one GET and take its attributes from
    /// the response, saving the HEAD. Falls back to a HEAD when the service
    /// reports no metadata on reads.
    pub async fn read_whole(&self, entry: &Entry) -> Result<(Bytes, Entry, Vec<String>)> {
        let ctx = || format!("read {}/{}", self.display, entry.path);
        let opts = ReaderOptions {
            if_match: entry.etag.clone(),
            content_length_hint: Some(entry.size),
            ..Default::default()
        };
        let reader = self
            .op
            .reader_options(&self.path(&entry.path)?, opts)
            .await
            .map_err(|e| Error::store(ctx(), e))?;
        let body = reader.read(0..entry.size).await.map_err(|e| Error::store(ctx(), e))?.to_bytes();
        if body.len() as u64 != entry.size {
            return Err(Error::SizeMismatch { expected: entry.size, got: body.len() as u64 });
        }
        // Only OpenDAL's S3 service parses user metadata out of a GET
        // response; elsewhere (Azure, GCS, OSS, COS, OBS, fs) a HEAD reads it.
        let from_read = reader.metadata().filter(|_| self.op.info().scheme() == "s3");
        let (full, warnings) = match from_read {
            Some(md) => {
                let mut e = entry_from_listing(&entry.path, false, md);
                e.size = entry.size;
                if e.mtime_ns.is_none() {
                    e.mtime_ns = entry.mtime_ns;
                }
                let w = apply_user_metadata(&mut e, md);
                (e, w)
            }
            None => self.stat(&entry.path).await?.ok_or_else(|| Error::NotFound { what: ctx() })?,
        };
        Ok((body, full, warnings))
    }

    pub async fn read_small(&self, rel: &str) -> Result<Bytes> {
        let buf = self
            .op
            .read(&self.path(rel)?)
            .await
            .map_err(|e| Error::store(format!("read {}/{rel}", self.display), e))?;
        Ok(buf.to_bytes())
    }

    /// Whether an item of `kind` can be written at `rel`: a `file://`
    /// store holds names of up to [`FILE_STORE_NAME_MAX`] bytes. Checked
    /// before every write, and by a dry run so that its plan says so.
    pub fn check_name(&self, rel: &str, kind: EntryKind) -> Result<()> {
        let name = rel.rsplit('/').next().unwrap_or_default();
        if self.local_root.is_some() && kind != EntryKind::Dir && name.len() > FILE_STORE_NAME_MAX {
            return Err(Error::InvalidName {
                name: format!("{}/{rel}", self.display),
                reason: format!(
                    "a file:// store holds names of up to {FILE_STORE_NAME_MAX} bytes (it stages each \
                     object under its name and 9 more bytes); this one has {}",
                    name.len()
                ),
            });
        }
        Ok(())
    }

    pub async fn create_writer(
        &self,
        rel: &str,
        kind: EntryKind,
        meta: &PosixMeta,
        crc32c: Option<u32>,
        size_hint: u64,
    ) -> Result<opendal::Writer> {
        let key = if kind == EntryKind::Dir { self.dir_path(rel)? } else { self.path(rel)? };
        self.check_name(rel, kind)?;
        let chunk = self.parts.chunk_for(size_hint);
        let big = size_hint > chunk as u64;
        let opts = WriteOptions {
            user_metadata: Some(self.user_metadata(kind, meta, crc32c)),
            concurrent: if big { self.parts.concurrent_for(size_hint) } else { 1 },
            // Always exact: every part but the last is `chunk` bytes, as
            // readers checking a composite checksum expect, whatever sizes
            // the source streams in (OpenDAL otherwise sends whatever is
            // buffered once it passes 5 MiB). An object smaller than
            // `chunk` goes up as one PUT.
            chunk: Some(chunk),
            ..Default::default()
        };
        self.op
            .writer_options(&key, opts)
            .await
            .map_err(|e| Error::store(format!("write {}/{rel}", self.display), e))
    }

    /// Whether the object at `rel` is the one just written although
    /// completing it failed (the store completed it, the answer was lost, and
    /// the retry found the upload gone): it has the size written and the
    /// mtime stored with it, and was stored after `since` (less the
    /// one-second precision of Last-Modified and a second of clock skew).
    /// Its ETag when so.
    pub(crate) async fn landed(
        &self,
        rel: &str,
        size: u64,
        meta: &PosixMeta,
        since: SystemTime,
    ) -> Option<Option<String>> {
        let md = self.op.stat(&self.path(rel).ok()?).await.ok()?;
        let stored: SystemTime = md.last_modified()?.into();
        let mut e = entry_from_listing(rel, false, &md);
        apply_user_metadata(&mut e, &md);
        let recent = stored + Duration::from_secs(2) >= since;
        (md.content_length() == size && e.mtime_exact && e.mtime_ns == meta.mtime_ns && recent)
            .then(|| md.etag().map(str::to_string))
    }

    /// Create a directory: on object stores, a `dir/` marker object carrying
    /// the directory's attributes (as FSx for Lustre and s3fs write them).
    pub async fn create_dir(&self, rel: &str, meta: &PosixMeta) -> Result<()> {
        let key = self.dir_path(rel)?;
        let ctx = || format!("create {}/{rel}/", self.display);
        if !self.markers_carry_metadata() {
            self.op.create_dir(&key).await.map_err(|e| Error::store(ctx(), e))?;
            let Some(root) = &self.local_root else { return Ok(()) };
            let (dir, map) = (root.join(key.trim_matches('/')), codec::encode(EntryKind::Dir, meta, None));
            return tokio::task::spawn_blocking(move || {
                map.iter().try_for_each(|(k, v)| {
                    rustix::fs::setxattr(
                        &dir,
                        format!("user.{k}").as_str(),
                        v.as_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    )
                })
            })
            .await
            .expect("xattr task panicked")
            .map_err(|e| Error::io(format!("set attributes of {}/{rel}/", self.display), e.into()));
        }
        // What OpenDAL's own `create_dir` simulation does (an empty write of
        // the `dir/` key), with the metadata added. `Operator::writer` refuses
        // directory paths, so this goes to the service stack directly, through
        // the retry and timeout layers.
        let opts = WriteOptions {
            user_metadata: Some(self.user_metadata(EntryKind::Dir, meta, None)),
            ..Default::default()
        };
        use opendal::raw::Service as _;
        let (srv, op_ctx) = (self.op.service(), self.op.context());
        let (args, _) = opendal::raw::OpWrite::from_options(&srv.capability(), opts)
            .map_err(|e| Error::store(ctx(), e))?;
        let path = opendal::raw::normalize_path(&key);
        let mut w = srv.write(op_ctx, &path, args).map_err(|e| Error::store(ctx(), e))?;
        opendal::raw::oio::Write::close(&mut w).await.map_err(|e| Error::store(ctx(), e))?;
        Ok(())
    }

    /// Write a whole small object (directory marker or symlink).
    pub async fn put(&self, rel: &str, kind: EntryKind, meta: &PosixMeta, body: Bytes) -> Result<()> {
        let mut w = self.create_writer(rel, kind, meta, None, body.len() as u64).await?;
        let ctx = || format!("write {}/{rel}", self.display);
        if let Err(e) = w.write(body).await {
            let _ = w.abort().await;
            return Err(Error::store(ctx(), e));
        }
        w.close().await.map_err(|e| Error::store(ctx(), e))?;
        Ok(())
    }

    pub async fn remove(&self, rel: &str, kind: EntryKind) -> Result<()> {
        let res = if kind == EntryKind::Dir {
            self.op
                .delete_options(
                    &self.dir_path(rel)?,
                    opendal::options::DeleteOptions { recursive: true, ..Default::default() },
                )
                .await
        } else {
            self.op.delete(&self.path(rel)?).await
        };
        res.map_err(|e| Error::store(format!("delete {}/{rel}", self.display), e))
    }
}

/// Why a key cannot be used: OpenDAL trims white space from both ends of
/// every path it is given, so it would read, write or delete another object
/// (`x ` as `x`). Such keys are refused and reported, never mapped.
const UNADDRESSABLE: &str = "an object key that begins or ends with white space cannot be used: \
     the storage library (OpenDAL) trims it and would address another key; rename it";

/// `key`, when OpenDAL addresses it as it is.
fn addressable(key: String) -> Result<String> {
    if key.trim() == key {
        Ok(key)
    } else {
        Err(Error::InvalidName { name: key, reason: UNADDRESSABLE.into() })
    }
}

/// What content read says of the MD5 recorded for its object.
enum Md5Verdict {
    Same,
    /// As users are shown them.
    Differs {
        expected: String,
        read: String,
    },
    /// The ETag is no MD5 of this content (SSE-KMS), or its parts are not
    /// laid out as the check assumed: with why, when it is worth a warning.
    Unknown(Option<&'static str>),
}

/// Whether an object's ETag is that of empty content stored in one piece
/// (or it has none): what a directory marker that holds nothing has.
fn etag_of_empty_content(md: &Metadata) -> bool {
    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    md.etag().is_none_or(|e| e.trim_matches('"') == EMPTY_MD5)
}

fn entry_from_listing(rel: &str, is_dir: bool, md: &Metadata) -> Entry {
    let mtime_ns = md.last_modified().map(timestamp_ns);
    Entry {
        path: rel.to_string(),
        kind: if is_dir { EntryKind::Dir } else { EntryKind::File },
        size: if is_dir { 0 } else { md.content_length() },
        mtime_ns,
        mtime_exact: false,
        meta: PosixMeta::default(),
        meta_loaded: false,
        etag: md.etag().map(str::to_string),
        local: None,
        crc32c: None,
        md5: None,
    }
}

/// Nanoseconds since the epoch of an OpenDAL timestamp.
fn timestamp_ns(t: opendal::raw::Timestamp) -> i64 {
    let st: SystemTime = t.into();
    match st.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// Fill kind and attributes from object metadata; returns the warnings.
fn apply_user_metadata(e: &mut Entry, md: &Metadata) -> Vec<String> {
    // Names as written on Azure (`file_mtime`), or upper-cased by a gateway,
    // read as the codec spells them.
    let map: HashMap<String, &str> = md
        .user_metadata()
        .map(|m| m.into_iter().map(|(k, v)| (k.to_ascii_lowercase().replace('_', "-"), v)).collect())
        .unwrap_or_default();
    let decoded = codec::decode(|k| map.get(k).copied(), now_ns());
    if let Some(kind) = decoded.kind {
        if kind == EntryKind::Symlink {
            e.kind = EntryKind::Symlink;
        }
    }
    e.meta = decoded.meta;
    e.crc32c = decoded.crc32c;
    e.md5 = decoded.md5;
    if let Some(ns) = decoded.meta.mtime_ns {
        e.mtime_ns = Some(ns);
        e.mtime_exact = true;
    }
    e.meta_loaded = true;
    decoded.warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn root_with(keys: &[&str]) -> ObjectRoot {
        let op = Operator::new(opendal::services::Memory::default()).unwrap();
        for k in keys {
            op.write(k, b"data".to_vec()).await.unwrap();
        }
        ObjectRoot::new(op, "", "memory://".into(), PartPolicy::default())
    }

    #[test]
    fn parts_grow_to_fit_the_largest_objects_in_ten_thousand() {
        let p = PartPolicy::default();
        assert_eq!(p.chunk_for(0), 8 << 20);
        assert_eq!(p.chunk_for(MAX_PARTS * (8 << 20)), 8 << 20, "exactly 10,000 parts of 8 MiB");
        assert_eq!(p.chunk_for(MAX_PARTS * (8 << 20) + 1), 9 << 20);
        let tib = 1u64 << 40;
        let chunk = p.chunk_for(tib) as u64;
        assert!(tib.div_ceil(chunk) <= MAX_PARTS && chunk.is_multiple_of(1 << 20), "{chunk}");
        assert_eq!(chunk, 105 << 20);
        // With the one being filled, the parts in flight fit in the room.
        assert_eq!(p.concurrent_for(1 << 30), 6);
        assert_eq!(p.concurrent_for(tib), 1, "105 MiB parts: 2 of them in 256 MiB");
        let small_room = PartPolicy { room: 32 << 20, ..p };
        assert_eq!(small_room.concurrent_for(1 << 30), 3);
        assert_eq!(PartPolicy { room: 1 << 20, ..p }.concurrent_for(1 << 30), 1, "one at least");
    }

    #[test]
    fn a_listing_that_goes_back_is_refused() {
        let mut o = ListOrder { on: true, ..Default::default() };
        // One page: prefixes first, then objects; the next page sorts after both.
        for k in ["p/b/", "p/d/", "p/a", "p/c", "p/e/", "p/f"] {
            o.check(k).unwrap();
        }
        // The first page again (a truncated page without a token).
        assert!(o.check("p/b/").unwrap_err().contains("went back"));
        let mut o = ListOrder { on: true, ..Default::default() };
        o.check("x").unwrap();
        assert!(o.check("x").is_err(), "the same key twice");
        // Stores not known to list in order are not checked.
        let mut off = ListOrder::default();
        off.check("b").unwrap();
        off.check("a").unwrap();
    }

    #[tokio::test]
    async fn keys_that_cannot_be_posix_names_are_reported() {
        let long = format!("{}/x", "c".repeat(300));
        let root = root_with(&["ok.txt", &long, "clash", "clash/inner"]).await;
        let mut l = crate::Location::Object(root).list_level("", 1).await.unwrap();
        let entries: Vec<Entry> = l.by_ref().map(Result::unwrap).collect();
        let names: Vec<_> = entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(names, [("clash", EntryKind::Dir), ("ok.txt", EntryKind::File)]);
        let rejected: Vec<_> = l.rejected.iter().map(|(k, r)| format!("{k}: {r}")).collect();
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(rejected.iter().any(|r| r.contains("longer than 255")), "{rejected:?}");
        assert!(rejected.iter().any(|r| r.starts_with("clash") && r.contains("same name")), "{rejected:?}");
    }

    #[tokio::test]
    async fn metadata_round_trips_and_symlinks_are_recognized() {
        // The memory service keeps no user metadata; the fs service keeps it in xattrs.
        let dir = tempfile::tempdir().unwrap();
        let op = Operator::new(opendal::services::Fs::default().root(&dir.path().to_string_lossy())).unwrap();
        let root = ObjectRoot::new(op, "p", "file://test".into(), PartPolicy::default());
        let meta = PosixMeta {
            mode: Some(0o600),
            uid: Some(7),
            gid: Some(8),
            mtime_ns: Some(1_600_000_000_000_000_001),
            atime_ns: Some(1_600_000_000_500_000_002),
        };
        root.put("l", EntryKind::Symlink, &meta, Bytes::from_static(b"target")).await.unwrap();
        let (e, warnings) = root.stat("l").await.unwrap().unwrap();
        assert!(warnings.is_empty());
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.meta, meta);
        assert!(e.mtime_exact);
        assert_eq!(root.read_small("l").await.unwrap(), Bytes::from_static(b"target"));
    }
}
