//! HPC-cache persistence: API credentials, shares, backend targets,
//! import/export tasks (which are also the work queue, claimed under
//! leases), control-plane jobs, and the namespace index of each target.
//!
//! Every query is written once with `?` placeholders and run through the
//! small helpers at the end of this file (`Store::run`, `Store::rows`,
//! `Tx`), which bind the same arguments on either back-end and decode rows
//! through the `Fields` trait. Enums are stored as their wire strings, attributes,
//! policies and other JSON as TEXT. Unsigned counters and sizes are stored
//! as BIGINT by bit-cast, so every `u64` reads back as written.
//!
//! Statements that read and then write what they read run in a
//! `Store::begin_write` transaction: `BEGIN IMMEDIATE` on SQLite (writers
//! queue up front instead of failing on upgrade), and on PostgreSQL a
//! transaction whose reads lock their rows with `FOR UPDATE`.
//!
//! Setters return [`Error::NotFound`] when no row has the id; deletes are
//! idempotent.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_model::hpc::{
    HpcTaskStatus, HpcTaskType, JobStatus, JobType, ShareStatus, ShareSubStatus, TargetAttributes,
    TargetLifecycle, TargetPolicy,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{numbered_placeholders, Backend, Error, Result, Store};

/// Most targets a share can have.
pub const MAX_TARGETS_PER_SHARE: u64 = 16;

/// A share (`SFS Turbo` file system) of a project.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub status: ShareStatus,
    pub sub_status: Option<ShareSubStatus>,
    pub size_gib: i64,
    pub share_proto: String,
    pub share_type: String,
    pub metadata: serde_json::Value,
    pub gc_time_hours: Option<i64>,
    pub created_at: i64,
}

/// A backend target: a top-level directory of a share linked to a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRow {
    pub id: String,
    pub share_id: String,
    pub project_id: String,
    pub file_system_path: String,
    pub bucket: String,
    pub endpoint: String,
    pub lifecycle: TargetLifecycle,
    pub failure_message: Option<String>,
    pub attributes: TargetAttributes,
    pub policy: TargetPolicy,
    pub created_at: i64,
}

/// The counters of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskProgress {
    pub total_files: u64,
    pub done_files: u64,
    pub skipped_files: u64,
    pub failed_files: u64,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub bytes_per_second: u64,
}

/// How a worker ended a task: see [`Store::finish_task`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnd {
    pub status: HpcTaskStatus,
    pub message: Option<String>,
    pub end_time: i64,
    pub progress: TaskProgress,
    /// CSV of the failed items, when some failed.
    pub failure_report: Option<String>,
}

/// What [`Store::finish_task`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The task's end is recorded and its lease dropped.
    Recorded,
    /// The task was being deleted: it is gone now.
    Deleted,
    /// The task is gone or leased to another worker: nothing was written.
    NotHeld,
}

/// An import/export task of a share.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub share_id: String,
    pub project_id: String,
    pub task_type: HpcTaskType,
    pub status: HpcTaskStatus,
    pub src_target: String,
    pub src_prefix: Option<String>,
    pub dest_target: String,
    pub dest_prefix: Option<String>,
    pub attributes: Option<TargetAttributes>,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub message: Option<String>,
    pub progress: TaskProgress,
}

/// Which tasks of a share [`Store::list_tasks`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFilter {
    pub task_type: Option<HpcTaskType>,
    pub status: Option<HpcTaskStatus>,
    /// Tasks that started at or after this time.
    pub start_time: Option<i64>,
    /// Tasks that started at or before this time.
    pub end_time: Option<i64>,
    pub offset: u64,
    pub limit: u32,
}

impl Default for TaskFilter {
    /// No filter, the first 1000 tasks (the API's default page).
    fn default() -> Self {
        TaskFilter { task_type: None, status: None, start_time: None, end_time: None, offset: 0, limit: 1000 }
    }
}

/// An asynchronous control-plane job; sub-jobs name their parent.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub project_id: String,
    pub job_type: JobType,
    pub status: JobStatus,
    pub begin_time: i64,
    pub end_time: Option<i64>,
    pub error_code: Option<String>,
    pub fail_reason: Option<String>,
    pub parent_id: Option<String>,
    pub entities: serde_json::Value,
}

/// Where the data of an indexed entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// Metadata only: the data is in the bucket.
    Stub,
    /// Data on local disk, equal to the object.
    Cached,
    /// Data on local disk, changed since it was imported or exported.
    Dirty,
    /// Created locally, not in the bucket yet.
    Local,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Stub => "stub",
            EntryState::Cached => "cached",
            EntryState::Dirty => "dirty",
            EntryState::Local => "local",
        }
    }

    pub fn from_wire(s: &str) -> Option<Self> {
        match s {
            "stub" => Some(EntryState::Stub),
            "cached" => Some(EntryState::Cached),
            "dirty" => Some(EntryState::Dirty),
            "local" => Some(EntryState::Local),
            _ => None,
        }
    }
}

/// One entry of a target's namespace index, keyed by (`dir`, `name`):
/// `dir` is relative to the target directory, `""` for its root, with no
/// leading or trailing `/`.
#[derive(Debug, Clone, PartialEq)]
pub struct NsEntry {
    pub dir: String,
    pub name: String,
    /// `"file"`, `"dir"` or `"symlink"`.
    pub kind: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub etag: Option<String>,
    pub state: EntryState,
    /// What the local copy looked like when the row was written, to notice later changes.
    pub local_size: Option<u64>,
    pub local_mtime_ns: Option<i64>,
    pub local_ctime_ns: Option<i64>,
    pub local_ino: Option<u64>,
}

/// The stat a cached file's local copy had when its index row was written:
/// what an export compares with the file's stat now.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedStat {
    pub dir: String,
    pub name: String,
    pub size: Option<u64>,
    pub mtime_ns: Option<i64>,
    pub ctime_ns: Option<i64>,
    pub ino: Option<u64>,
}

// ---- one query, either back-end (helpers at the end of the file) ----

/// A value bound to a `?` placeholder.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v)
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

/// A slice of [`Arg`]s.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        &[$(Arg::from($a)),*] as &[Arg<'_>]
    };
}

// ---- columns ----

/// The counters of a task, set by [`progress_args`].
macro_rules! progress_set {
    () => {
        "total_files = ?, done_files = ?, skipped_files = ?, failed_files = ?, total_bytes = ?, \
         done_bytes = ?, bytes_per_second = ?"
    };
}

fn progress_args(p: &TaskProgress) -> [Arg<'static>; 7] {
    [
        p.total_files,
        p.done_files,
        p.skipped_files,
        p.failed_files,
        p.total_bytes,
        p.done_bytes,
        p.bytes_per_second,
    ]
    .map(|n| Arg::Int(as_i64(n)))
}

macro_rules! share_cols {
    () => {
        "id, project_id, name, status, sub_status, size_gib, share_proto, share_type, metadata, \
         gc_time_hours, created_at"
    };
}

macro_rules! target_cols {
    () => {
        "id, share_id, project_id, file_system_path, bucket, endpoint, lifecycle, failure_message, \
         attributes, policy, created_at"
    };
}

macro_rules! task_cols {
    () => {
        "id, share_id, project_id, task_type, status, src_target, src_prefix, dest_target, dest_prefix, \
         attributes, start_time, end_time, message, total_files, done_files, skipped_files, failed_files, \
         total_bytes, done_bytes, bytes_per_second"
    };
}
const TASK_COLS: usize = 20;

macro_rules! job_cols {
    () => {
        "id, project_id, job_type, status, begin_time, end_time, error_code, fail_reason, parent_id, entities"
    };
}

macro_rules! entry_cols {
    () => {
        "dir, name, kind, size, mtime_ns, mode, uid, gid, etag, state, local_size, local_mtime_ns, \
         local_ctime_ns, local_ino"
    };
}
/// Columns of an index row: `target_id` and the entry's.
const ENTRY_ROW_COLS: usize = 15;

/// Rows per multi-row INSERT: under SQLite's 32766 bound parameters.
const ROWS_PER_INSERT: usize = 500;

impl Store {
    // ---- credentials ----

    /// A new bearer token for `project`; only its SHA-256 is stored.
    pub async fn create_token(&self, project: &str) -> Result<String> {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let token = hex::encode(bytes);
        let q = "INSERT INTO hpc_tokens (token_sha256, project_id, created_at) VALUES (?, ?, ?)";
        self.run(q, args![sha256_hex(&token).as_str(), project, now_secs()]).await?;
        Ok(token)
    }

    /// The project of a token, if the token is known.
    pub async fn token_project(&self, token: &str) -> Result<Option<String>> {
        let q = "SELECT project_id FROM hpc_tokens WHERE token_sha256 = ?";
        self.row(q, args![sha256_hex(token).as_str()], |r| r.text("project_id")).await
    }

    /// A new access key (20 upper-case letters and digits) and secret key
    /// (40 letters and digits) for `project`.
    pub async fn create_access_key(&self, project: &str) -> Result<(String, String)> {
        let ak = random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 20);
        let sk = random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 40);
        let stored = match &self.secret_key {
            Some(key) => key.seal(&sk, &ak),
            None => sk.clone(),
        };
        let q = "INSERT INTO hpc_access_keys (access_key, secret_key, project_id, created_at) VALUES (?, ?, ?, ?)";
        self.run(q, args![ak.as_str(), stored.as_str(), project, now_secs()]).await?;
        Ok((ak, sk))
    }

    /// The secret key and project of an access key.
    pub async fn access_key(&self, ak: &str) -> Result<Option<(String, String)>> {
        let q = "SELECT secret_key, project_id FROM hpc_access_keys WHERE access_key = ?";
        let Some((stored, project)) =
            self.row(q, args![ak], |r| Ok((r.text("secret_key")?, r.text("project_id")?))).await?
        else {
            return Ok(None);
        };
        let sk = crate::sealed::open(self.secret_key.as_ref(), &stored, ak)?;
        Ok(Some((sk, project)))
    }

    /// Seal the secrets stored before a key was set; returns how many.
    pub async fn seal_stored_secrets(&self) -> Result<u64> {
        let Some(key) = &self.secret_key else { return Ok(0) };
        let q = "SELECT access_key, secret_key FROM hpc_access_keys";
        let rows = self.rows(q, &[], |r| Ok((r.text("access_key")?, r.text("secret_key")?))).await?;
        let mut sealed = 0;
        for (ak, stored) in rows.into_iter().filter(|(_, s)| !crate::sealed::is_sealed(s)) {
            let q = "UPDATE hpc_access_keys SET secret_key = ? WHERE access_key = ? AND secret_key = ?";
            sealed +=
                self.run(q, args![key.seal(&stored, &ak).as_str(), ak.as_str(), stored.as_str()]).await?;
        }
        Ok(sealed)
    }

    // ---- shares ----

    /// Add a share. [`Error::Conflict`] if its project has a share of that
    /// name that is not DELETED (or the id is taken).
    pub async fn insert_share(&self, share: &ShareRow) -> Result<()> {
        let metadata = to_json(&share.metadata)?;
        let q =
            concat!("INSERT INTO hpc_shares (", share_cols!(), ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        let args = args![
            share.id.as_str(),
            share.project_id.as_str(),
            share.name.as_str(),
            share.status.as_str(),
            share.sub_status.map(ShareSubStatus::as_str),
            share.size_gib,
            share.share_proto.as_str(),
            share.share_type.as_str(),
            metadata.as_str(),
            share.gc_time_hours,
            share.created_at,
        ];
        match self.run(q, args).await {
            Err(e) if is_unique_violation(&e) => Err(self.share_conflict(&share.id, &share.name).await),
            r => r.map(drop),
        }
    }

    /// The share `id` if it belongs to `project`.
    pub async fn share(&self, project: &str, id: &str) -> Result<Option<ShareRow>> {
        let q = concat!("SELECT ", share_cols!(), " FROM hpc_shares WHERE id = ? AND project_id = ?");
        self.row(q, args![id, project], share_from).await
    }

    /// A page of a project's shares (of every status) by creation time, and
    /// how many the project has.
    pub async fn list_shares(&self, project: &str, offset: u64, limit: u32) -> Result<(Vec<ShareRow>, u64)> {
        let q = concat!(
            "SELECT ",
            share_cols!(),
            " FROM hpc_shares WHERE project_id = ? ORDER BY created_at, id LIMIT ? OFFSET ?"
        );
        let rows = self.rows(q, args![project, i64::from(limit), offset_arg(offset)], share_from).await?;
        let count =
            self.count("SELECT COUNT(*) AS n FROM hpc_shares WHERE project_id = ?", args![project]).await?;
        Ok((rows, count))
    }

    /// Set a share's status and sub-status. [`Error::Conflict`] when a
    /// DELETED share would become live while another live share has its name.
    pub async fn set_share_status(
        &self,
        id: &str,
        status: ShareStatus,
        sub_status: Option<ShareSubStatus>,
    ) -> Result<()> {
        let q = "UPDATE hpc_shares SET status = ?, sub_status = ? WHERE id = ?";
        let args = args![status.as_str(), sub_status.map(ShareSubStatus::as_str), id];
        self.update_share(id, None, q, args).await
    }

    pub async fn set_share_size(&self, id: &str, size_gib: i64) -> Result<()> {
        self.update_share(id, None, "UPDATE hpc_shares SET size_gib = ? WHERE id = ?", args![size_gib, id])
            .await
    }

    /// Rename a share; [`Error::Conflict`] if a live share of its project has that name.
    pub async fn rename_share(&self, id: &str, name: &str) -> Result<()> {
        self.update_share(id, Some(name), "UPDATE hpc_shares SET name = ? WHERE id = ?", args![name, id])
            .await
    }

    pub async fn set_share_gc_time(&self, id: &str, hours: i64) -> Result<()> {
        let q = "UPDATE hpc_shares SET gc_time_hours = ? WHERE id = ?";
        self.update_share(id, None, q, args![hours, id]).await
    }

    /// Delete a share with its targets, their index rows, and its tasks.
    pub async fn delete_share(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let statements = [
            "DELETE FROM hpc_ns_entries WHERE target_id IN (SELECT id FROM hpc_targets WHERE share_id = ?)",
            "DELETE FROM hpc_task_reports WHERE task_id IN (SELECT id FROM hpc_tasks WHERE share_id = ?)",
            "DELETE FROM hpc_tasks WHERE share_id = ?",
            "DELETE FROM hpc_targets WHERE share_id = ?",
            "DELETE FROM hpc_shares WHERE id = ?",
        ];
        for q in statements {
            tx.run(q, args![id]).await?;
        }
        tx.commit().await
    }

    async fn update_share(&self, id: &str, name: Option<&str>, q: &str, args: &[Arg<'_>]) -> Result<()> {
        match self.run(q, args).await {
            Ok(0) => Err(Error::NotFound(format!("share {id}"))),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                let name = match name {
                    Some(name) => name.to_string(),
                    None => {
                        let q = "SELECT name FROM hpc_shares WHERE id = ?";
                        self.row(q, args![id], |r| r.text("name")).await?.unwrap_or_default()
                    }
                };
                Err(Error::Conflict(format!("a share named {name:?} already exists in the project")))
            }
            Err(e) => Err(e),
        }
    }

    async fn share_conflict(&self, id: &str, name: &str) -> Error {
        match self.row("SELECT id FROM hpc_shares WHERE id = ?", args![id], |r| r.text("id")).await {
            Ok(Some(_)) => Error::Conflict(format!("share id {id} already exists")),
            Ok(None) => Error::Conflict(format!("a share named {name:?} already exists in the project")),
            Err(e) => e,
        }
    }

    // ---- targets ----

    /// Add a target to its share: [`Error::NotFound`] without the share,
    /// [`Error::LimitReached`] when the share has 16 targets already,
    /// [`Error::Conflict`] when the share has a target at that path.
    pub async fn insert_target(&self, target: &TargetRow) -> Result<()> {
        let attributes = to_json(&target.attributes)?;
        let policy = to_json(&target.policy)?;
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT id FROM hpc_shares WHERE id = ?{}", tx.for_update());
        if tx.row(&q, args![target.share_id.as_str()], |r| r.text("id")).await?.is_none() {
            return Err(Error::NotFound(format!("share {}", target.share_id)));
        }
        let q = "SELECT COUNT(*) AS n FROM hpc_targets WHERE share_id = ?";
        let count = tx.row(q, args![target.share_id.as_str()], |r| r.int("n")).await?.unwrap_or(0);
        if count as u64 >= MAX_TARGETS_PER_SHARE {
            return Err(Error::LimitReached(format!(
                "share {} has {MAX_TARGETS_PER_SHARE} targets already",
                target.share_id
            )));
        }
        let q = "SELECT id FROM hpc_targets WHERE share_id = ? AND file_system_path = ?";
        let args = args![target.share_id.as_str(), target.file_system_path.as_str()];
        if tx.row(q, args, |r| r.text("id")).await?.is_some() {
            return Err(path_conflict(&target.file_system_path));
        }
        let q = concat!(
            "INSERT INTO hpc_targets (",
            target_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let args = args![
            target.id.as_str(),
            target.share_id.as_str(),
            target.project_id.as_str(),
            target.file_system_path.as_str(),
            target.bucket.as_str(),
            target.endpoint.as_str(),
            target.lifecycle.as_str(),
            target.failure_message.as_deref(),
            attributes.as_str(),
            policy.as_str(),
            target.created_at,
        ];
        match tx.run(q, args).await {
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("target id {} already exists", target.id)))
            }
            r => r.map(drop),
        }?;
        tx.commit().await
    }

    pub async fn target(&self, share_id: &str, id: &str) -> Result<Option<TargetRow>> {
        let q = concat!("SELECT ", target_cols!(), " FROM hpc_targets WHERE share_id = ? AND id = ?");
        self.row(q, args![share_id, id], target_from).await
    }

    pub async fn target_by_path(&self, share_id: &str, file_system_path: &str) -> Result<Option<TargetRow>> {
        let q = concat!(
            "SELECT ",
            target_cols!(),
            " FROM hpc_targets WHERE share_id = ? AND file_system_path = ?"
        );
        self.row(q, args![share_id, file_system_path], target_from).await
    }

    /// Up to `limit` targets of a share by creation time, after the target
    /// `marker` if given ([`Error::NotFound`] if the share has no such
    /// target), and how many targets the share has.
    pub async fn list_targets(
        &self,
        share_id: &str,
        marker: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<TargetRow>, u64)> {
        let rows = match marker {
            None => {
                let q = concat!(
                    "SELECT ",
                    target_cols!(),
                    " FROM hpc_targets WHERE share_id = ? ORDER BY created_at, id LIMIT ?"
                );
                self.rows(q, args![share_id, i64::from(limit)], target_from).await?
            }
            Some(marker) => {
                let q = "SELECT created_at FROM hpc_targets WHERE share_id = ? AND id = ?";
                let Some(after) = self.row(q, args![share_id, marker], |r| r.int("created_at")).await? else {
                    return Err(Error::NotFound(format!("target {marker} (marker)")));
                };
                let q = concat!(
                    "SELECT ",
                    target_cols!(),
                    " FROM hpc_targets WHERE share_id = ? AND (created_at > ? OR (created_at = ? AND id > ?)) \
                     ORDER BY created_at, id LIMIT ?"
                );
                self.rows(q, args![share_id, after, after, marker, i64::from(limit)], target_from).await?
            }
        };
        let count =
            self.count("SELECT COUNT(*) AS n FROM hpc_targets WHERE share_id = ?", args![share_id]).await?;
        Ok((rows, count))
    }

    pub async fn set_target_lifecycle(
        &self,
        id: &str,
        lifecycle: TargetLifecycle,
        failure_message: Option<&str>,
    ) -> Result<()> {
        let q = "UPDATE hpc_targets SET lifecycle = ?, failure_message = ? WHERE id = ?";
        self.update_target(id, q, args![lifecycle.as_str(), failure_message, id]).await
    }

    pub async fn set_target_attributes(&self, id: &str, attributes: &TargetAttributes) -> Result<()> {
        let json = to_json(attributes)?;
        self.update_target(id, "UPDATE hpc_targets SET attributes = ? WHERE id = ?", args![json.as_str(), id])
            .await
    }

    pub async fn set_target_policy(&self, id: &str, policy: &TargetPolicy) -> Result<()> {
        let json = to_json(policy)?;
        self.update_target(id, "UPDATE hpc_targets SET policy = ? WHERE id = ?", args![json.as_str(), id])
            .await
    }

    /// Delete a target and its index rows.
    pub async fn delete_target(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.run("DELETE FROM hpc_ns_entries WHERE target_id = ?", args![id]).await?;
        tx.run("DELETE FROM hpc_targets WHERE id = ?", args![id]).await?;
        tx.commit().await
    }

    async fn update_target(&self, id: &str, q: &str, args: &[Arg<'_>]) -> Result<()> {
        match self.run(q, args).await? {
            0 => Err(Error::NotFound(format!("target {id}"))),
            _ => Ok(()),
        }
    }

    // ---- tasks ----

    /// Add a task (with no lease). [`Error::Conflict`] if the id is taken.
    pub async fn insert_task(&self, task: &TaskRow) -> Result<()> {
        let attributes = task.attributes.as_ref().map(to_json).transpose()?;
        let mut args = Vec::with_capacity(TASK_COLS);
        push_task_args(&mut args, task, attributes.as_deref());
        let q = format!("INSERT INTO hpc_tasks ({}) VALUES {}", task_cols!(), placeholders(1, TASK_COLS));
        match self.run(&q, &args).await {
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("task id {} already exists", task.id)))
            }
            r => r.map(drop),
        }
    }

    /// Add many tasks in one transaction (tests and benchmarks).
    pub async fn insert_tasks_bulk(&self, tasks: &[TaskRow]) -> Result<()> {
        let attributes = tasks
            .iter()
            .map(|t| t.attributes.as_ref().map(to_json).transpose())
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.begin_write().await?;
        for (chunk, attributes) in tasks.chunks(ROWS_PER_INSERT).zip(attributes.chunks(ROWS_PER_INSERT)) {
            let mut args = Vec::with_capacity(chunk.len() * TASK_COLS);
            for (task, attributes) in chunk.iter().zip(attributes) {
                push_task_args(&mut args, task, attributes.as_deref());
            }
            let q = format!(
                "INSERT INTO hpc_tasks ({}) VALUES {}",
                task_cols!(),
                placeholders(chunk.len(), TASK_COLS)
            );
            tx.run(&q, &args).await?;
        }
        tx.commit().await
    }

    pub async fn task(&self, share_id: &str, id: &str) -> Result<Option<TaskRow>> {
        let q = concat!("SELECT ", task_cols!(), " FROM hpc_tasks WHERE share_id = ? AND id = ?");
        self.row(q, args![share_id, id], task_from).await
    }

    /// A page of a share's tasks, newest first, and how many match the filter.
    pub async fn list_tasks(&self, share_id: &str, filter: &TaskFilter) -> Result<(Vec<TaskRow>, u64)> {
        let mut cond = String::from("share_id = ?");
        let mut args = vec![Arg::from(share_id)];
        if let Some(t) = filter.task_type {
            cond.push_str(" AND task_type = ?");
            args.push(t.as_str().into());
        }
        if let Some(s) = filter.status {
            cond.push_str(" AND status = ?");
            args.push(s.as_str().into());
        }
        if let Some(t) = filter.start_time {
            cond.push_str(" AND start_time >= ?");
            args.push(t.into());
        }
        if let Some(t) = filter.end_time {
            cond.push_str(" AND start_time <= ?");
            args.push(t.into());
        }
        let count = self.count(&format!("SELECT COUNT(*) AS n FROM hpc_tasks WHERE {cond}"), &args).await?;
        let q = format!(
            "SELECT {} FROM hpc_tasks WHERE {cond} ORDER BY start_time DESC, id DESC LIMIT ? OFFSET ?",
            task_cols!()
        );
        args.push(i64::from(filter.limit).into());
        args.push(offset_arg(filter.offset));
        let rows = self.rows(&q, &args, task_from).await?;
        Ok((rows, count))
    }

    /// How many tasks are in each status, over all shares (metrics).
    pub async fn count_tasks_by_status(&self) -> Result<Vec<(HpcTaskStatus, u64)>> {
        let q = "SELECT status, COUNT(*) AS n FROM hpc_tasks GROUP BY status";
        self.rows(q, &[], |r| Ok((wire(r, "status", HpcTaskStatus::from_wire)?, r.int("n")? as u64))).await
    }

    /// Set a task's status, message and end time (`None` clears them).
    pub async fn set_task_status(
        &self,
        id: &str,
        status: HpcTaskStatus,
        message: Option<&str>,
        end_time: Option<i64>,
    ) -> Result<()> {
        let q = "UPDATE hpc_tasks SET status = ?, message = ?, end_time = ? WHERE id = ?";
        self.update_task(id, q, args![status.as_str(), message, end_time, id]).await
    }

    pub async fn set_task_progress(&self, id: &str, p: &TaskProgress) -> Result<()> {
        let q = concat!("UPDATE hpc_tasks SET ", progress_set!(), " WHERE id = ?");
        self.update_task(id, q, &[&progress_args(p)[..], args![id]].concat()).await
    }

    /// Store (or replace) the failure report of a task.
    pub async fn set_task_failure_report(&self, id: &str, csv: &str) -> Result<()> {
        let q = "INSERT INTO hpc_task_reports (task_id, csv) SELECT id, ? FROM hpc_tasks WHERE id = ? \
                 ON CONFLICT (task_id) DO UPDATE SET csv = excluded.csv";
        self.update_task(id, q, args![csv, id]).await
    }

    pub async fn task_failure_report(&self, id: &str) -> Result<Option<String>> {
        self.row("SELECT csv FROM hpc_task_reports WHERE task_id = ?", args![id], |r| r.text("csv")).await
    }

    /// Mark a task DELETING. True if it was DOING under a live lease: its
    /// worker must stop it (it learns so when [`Store::heartbeat`] fails).
    pub async fn request_task_delete(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let q =
            format!("SELECT status, lease_owner, lease_until FROM hpc_tasks WHERE id = ?{}", tx.for_update());
        let Some(running) = tx
            .row(&q, args![id], |r| {
                Ok(r.text("status")? == HpcTaskStatus::Doing.as_str()
                    && r.opt_text("lease_owner")?.is_some()
                    && r.opt_int("lease_until")?.is_some_and(|until| until > now_secs()))
            })
            .await?
        else {
            return Err(Error::NotFound(format!("task {id}")));
        };
        tx.run("UPDATE hpc_tasks SET status = ? WHERE id = ?", args![HpcTaskStatus::Deleting.as_str(), id])
            .await?;
        tx.commit().await?;
        Ok(running)
    }

    /// Delete a task and its failure report.
    pub async fn delete_task(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.run("DELETE FROM hpc_task_reports WHERE task_id = ?", args![id]).await?;
        tx.run("DELETE FROM hpc_tasks WHERE id = ?", args![id]).await?;
        tx.commit().await
    }

    /// Take the oldest DOING task whose lease is absent or expired (at or
    /// before `now`), leasing it to `worker` until `now + lease_secs`.
    pub async fn claim_task(&self, worker: &str, now: i64, lease_secs: i64) -> Result<Option<TaskRow>> {
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT id FROM hpc_tasks WHERE status = ? AND (lease_until IS NULL OR lease_until <= ?) \
             ORDER BY start_time, id LIMIT 1{}",
            tx.for_update_skip_locked()
        );
        let Some(id) = tx.row(&q, args![HpcTaskStatus::Doing.as_str(), now], |r| r.text("id")).await? else {
            return Ok(None);
        };
        let q = concat!(
            "UPDATE hpc_tasks SET lease_owner = ?, lease_until = ? WHERE id = ? RETURNING ",
            task_cols!()
        );
        let task = tx.row(q, args![worker, now.saturating_add(lease_secs), id.as_str()], task_from).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Extend `worker`'s lease on a task to `until` and save its counters,
    /// in one statement. False if the task is gone, no longer DOING (e.g.
    /// DELETING) or leased to another worker: the worker must then stop,
    /// and its counters are not written over the new holder's.
    pub async fn heartbeat(&self, id: &str, worker: &str, until: i64, p: &TaskProgress) -> Result<bool> {
        let q = concat!(
            "UPDATE hpc_tasks SET lease_until = ?, ",
            progress_set!(),
            " WHERE id = ? AND lease_owner = ? AND status = ?"
        );
        let args =
            [args![until], &progress_args(p), args![id, worker, HpcTaskStatus::Doing.as_str()]].concat();
        Ok(self.run(q, &args).await? > 0)
    }

    /// Record how `worker` ended a task it holds, in one transaction: its
    /// last counters, its failure report (if any), its status, message and
    /// end time, and the lease dropped. A task being deleted is deleted
    /// instead. Nothing is written when the task is no longer leased to
    /// `worker`: another worker took it over after this one's lease ran out,
    /// and the outcome is the new holder's to record.
    pub async fn finish_task(&self, id: &str, worker: &str, end: &TaskEnd) -> Result<Finished> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT status, lease_owner FROM hpc_tasks WHERE id = ?{}", tx.for_update());
        let held = tx.row(&q, args![id], |r| Ok((r.text("status")?, r.opt_text("lease_owner")?))).await?;
        let Some((status, owner)) = held else { return Ok(Finished::NotHeld) };
        if owner.as_deref() != Some(worker) {
            return Ok(Finished::NotHeld);
        }
        if status == HpcTaskStatus::Deleting.as_str() {
            tx.run("DELETE FROM hpc_task_reports WHERE task_id = ?", args![id]).await?;
            tx.run("DELETE FROM hpc_tasks WHERE id = ?", args![id]).await?;
            tx.commit().await?;
            return Ok(Finished::Deleted);
        }
        let q = concat!(
            "UPDATE hpc_tasks SET ",
            progress_set!(),
            ", status = ?, message = ?, end_time = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?"
        );
        let end_args = args![end.status.as_str(), end.message.as_deref(), end.end_time, id];
        let args = [&progress_args(&end.progress)[..], end_args].concat();
        tx.run(q, &args).await?;
        if let Some(csv) = &end.failure_report {
            let q = "INSERT INTO hpc_task_reports (task_id, csv) VALUES (?, ?) \
                     ON CONFLICT (task_id) DO UPDATE SET csv = excluded.csv";
            tx.run(q, args![id, csv.as_str()]).await?;
        }
        tx.commit().await?;
        Ok(Finished::Recorded)
    }

    /// Drop `worker`'s lease on a task (no-op if it holds none).
    pub async fn release_task(&self, id: &str, worker: &str) -> Result<()> {
        let q =
            "UPDATE hpc_tasks SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?";
        self.run(q, args![id, worker]).await.map(drop)
    }

    /// Every task with a status, oldest first.
    pub async fn tasks_by_status(&self, status: HpcTaskStatus) -> Result<Vec<TaskRow>> {
        let q = concat!("SELECT ", task_cols!(), " FROM hpc_tasks WHERE status = ? ORDER BY start_time, id");
        self.rows(q, args![status.as_str()], task_from).await
    }

    async fn update_task(&self, id: &str, q: &str, args: &[Arg<'_>]) -> Result<()> {
        match self.run(q, args).await? {
            0 => Err(Error::NotFound(format!("task {id}"))),
            _ => Ok(()),
        }
    }

    // ---- jobs ----

    pub async fn insert_job(&self, job: &JobRow) -> Result<()> {
        let entities = to_json(&job.entities)?;
        let q = concat!("INSERT INTO hpc_jobs (", job_cols!(), ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        let args = args![
            job.id.as_str(),
            job.project_id.as_str(),
            job.job_type.as_str(),
            job.status.as_str(),
            job.begin_time,
            job.end_time,
            job.error_code.as_deref(),
            job.fail_reason.as_deref(),
            job.parent_id.as_deref(),
            entities.as_str(),
        ];
        match self.run(q, args).await {
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("job id {} already exists", job.id)))
            }
            r => r.map(drop),
        }
    }

    /// A job of `project` with its sub-jobs (by begin time).
    pub async fn job(&self, project: &str, id: &str) -> Result<Option<(JobRow, Vec<JobRow>)>> {
        let q = concat!("SELECT ", job_cols!(), " FROM hpc_jobs WHERE id = ? AND project_id = ?");
        let Some(job) = self.row(q, args![id, project], job_from).await? else { return Ok(None) };
        let q = concat!(
            "SELECT ",
            job_cols!(),
            " FROM hpc_jobs WHERE parent_id = ? AND project_id = ? ORDER BY begin_time, id"
        );
        let subs = self.rows(q, args![id, project], job_from).await?;
        Ok(Some((job, subs)))
    }

    pub async fn set_job_status(
        &self,
        id: &str,
        status: JobStatus,
        end_time: Option<i64>,
        error_code: Option<&str>,
        fail_reason: Option<&str>,
    ) -> Result<()> {
        let q = "UPDATE hpc_jobs SET status = ?, end_time = ?, error_code = ?, fail_reason = ? WHERE id = ?";
        match self.run(q, args![status.as_str(), end_time, error_code, fail_reason, id]).await? {
            0 => Err(Error::NotFound(format!("job {id}"))),
            _ => Ok(()),
        }
    }

    /// Parent jobs still waiting or running, oldest first.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRow>> {
        let q = concat!(
            "SELECT ",
            job_cols!(),
            " FROM hpc_jobs WHERE status IN (?, ?) AND parent_id IS NULL ORDER BY begin_time, id"
        );
        self.rows(q, args![JobStatus::Waiting.as_str(), JobStatus::Running.as_str()], job_from).await
    }

    // ---- namespace index ----

    /// Insert or replace index rows of a target, in one transaction. When
    /// the same (dir, name) comes twice, the later row wins.
    pub async fn upsert_entries(&self, target_id: &str, entries: &[NsEntry]) -> Result<()> {
        // One multi-row statement may not touch a row twice (PostgreSQL).
        let mut seen = HashSet::new();
        let mut unique: Vec<&NsEntry> =
            entries.iter().rev().filter(|e| seen.insert((e.dir.as_str(), e.name.as_str()))).collect();
        unique.reverse();
        let mut tx = self.begin_write().await?;
        for chunk in unique.chunks(ROWS_PER_INSERT) {
            let mut args = Vec::with_capacity(chunk.len() * ENTRY_ROW_COLS);
            for e in chunk {
                args.extend_from_slice(args![
                    target_id,
                    e.dir.as_str(),
                    e.name.as_str(),
                    e.kind.as_str(),
                    as_i64(e.size),
                    e.mtime_ns,
                    i64::from(e.mode),
                    i64::from(e.uid),
                    i64::from(e.gid),
                    e.etag.as_deref(),
                    e.state.as_str(),
                    e.local_size.map(as_i64),
                    e.local_mtime_ns,
                    e.local_ctime_ns,
                    e.local_ino.map(as_i64),
                ]);
            }
            let q = format!(
                "INSERT INTO hpc_ns_entries (target_id, {}) VALUES {} ON CONFLICT (target_id, dir, name) DO UPDATE \
                 SET kind = excluded.kind, size = excluded.size, mtime_ns = excluded.mtime_ns, \
                 mode = excluded.mode, uid = excluded.uid, gid = excluded.gid, etag = excluded.etag, \
                 state = excluded.state, local_size = excluded.local_size, \
                 local_mtime_ns = excluded.local_mtime_ns, local_ctime_ns = excluded.local_ctime_ns, \
                 local_ino = excluded.local_ino",
                entry_cols!(),
                placeholders(chunk.len(), ENTRY_ROW_COLS)
            );
            tx.run(&q, &args).await?;
        }
        tx.commit().await
    }

    /// The entries of several directories in one query per 500 directories,
    /// ordered by dir then name (a batch of a listing, an export's walk).
    pub async fn entries_in_dirs(&self, target_id: &str, dirs: &[String]) -> Result<Vec<NsEntry>> {
        let mut out = Vec::new();
        for chunk in dirs.chunks(500) {
            let q = format!(
                "SELECT {} FROM hpc_ns_entries WHERE target_id = ? AND dir IN ({}) ORDER BY dir, name",
                entry_cols!(),
                vec!["?"; chunk.len()].join(", ")
            );
            let mut args = vec![Arg::from(target_id)];
            args.extend(chunk.iter().map(|d| Arg::from(d.as_str())));
            out.extend(self.rows(&q, &args, entry_from).await?);
        }
        Ok(out)
    }

    /// The [`CachedStat`] of every cached file in these directories (one
    /// query per 500 directories). Each directory comes back as one row that
    /// packs its files' stats (see [`unpack_stats`]): the database builds the
    /// string far faster than the driver decodes a row per file, which makes
    /// an unchanged export's check several times cheaper.
    pub async fn cached_stats_in_dirs(&self, target_id: &str, dirs: &[String]) -> Result<Vec<CachedStat>> {
        let agg = match self.backend {
            Backend::Sqlite(_) => "group_concat",
            Backend::Postgres(_) => "string_agg",
        };
        let mut out = Vec::new();
        for chunk in dirs.chunks(500) {
            let q = format!(
                "SELECT dir, {agg}(CAST(length(name) AS TEXT) || ':' || name || \
                 COALESCE(CAST(local_size AS TEXT), '') || ',' || COALESCE(CAST(local_mtime_ns AS TEXT), '') || ',' || \
                 COALESCE(CAST(local_ctime_ns AS TEXT), '') || ',' || COALESCE(CAST(local_ino AS TEXT), ''), ';') AS packed \
                 FROM hpc_ns_entries WHERE target_id = ? AND dir IN ({}) AND kind = ? AND state = ? GROUP BY dir",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut args = vec![Arg::from(target_id)];
            args.extend(chunk.iter().map(|d| Arg::from(d.as_str())));
            args.push(Arg::from("file"));
            args.push(Arg::from(EntryState::Cached.as_str()));
            for (dir, packed) in self.rows(&q, &args, |r| Ok((r.text("dir")?, r.text("packed")?))).await? {
                unpack_stats(&dir, &packed, &mut out)?;
            }
        }
        Ok(out)
    }

    /// The entries of one directory of a target, by name.
    pub async fn entries_in_dir(&self, target_id: &str, dir: &str) -> Result<Vec<NsEntry>> {
        let q = concat!(
            "SELECT ",
            entry_cols!(),
            " FROM hpc_ns_entries WHERE target_id = ? AND dir = ? ORDER BY name"
        );
        self.rows(q, args![target_id, dir], entry_from).await
    }

    /// Up to `limit` entries of a target ordered by (dir, name), after the
    /// (dir, name) key `after` if given.
    pub async fn list_entries(
        &self,
        target_id: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<NsEntry>> {
        let limit = i64::from(limit);
        match after {
            None => {
                let q = concat!(
                    "SELECT ",
                    entry_cols!(),
                    " FROM hpc_ns_entries WHERE target_id = ? ORDER BY dir, name LIMIT ?"
                );
                self.rows(q, args![target_id, limit], entry_from).await
            }
            Some((dir, name)) => {
                let q = concat!(
                    "SELECT ",
                    entry_cols!(),
                    " FROM hpc_ns_entries WHERE target_id = ? AND (dir, name) > (?, ?) ORDER BY dir, name LIMIT ?"
                );
                self.rows(q, args![target_id, dir, name, limit], entry_from).await
            }
        }
    }

    pub async fn entry(&self, target_id: &str, dir: &str, name: &str) -> Result<Option<NsEntry>> {
        let q = concat!(
            "SELECT ",
            entry_cols!(),
            " FROM hpc_ns_entries WHERE target_id = ? AND dir = ? AND name = ?"
        );
        self.row(q, args![target_id, dir, name], entry_from).await
    }

    pub async fn count_entries(&self, target_id: &str) -> Result<u64> {
        self.count("SELECT COUNT(*) AS n FROM hpc_ns_entries WHERE target_id = ?", args![target_id]).await
    }

    pub async fn delete_entries(&self, target_id: &str) -> Result<()> {
        self.run("DELETE FROM hpc_ns_entries WHERE target_id = ?", args![target_id]).await.map(drop)
    }
}

/// Parse the records of [`Store::cached_stats_in_dirs`]:
/// `{name length in characters}:{name}{size},{mtime},{ctime},{ino}`, joined
/// by `;`, an empty field for NULL. The length prefix makes any name safe.
fn unpack_stats(dir: &str, packed: &str, out: &mut Vec<CachedStat>) -> Result<()> {
    let bad = || bad_column("packed", format!("malformed stats of directory {dir:?}"));
    let mut rest = packed;
    while !rest.is_empty() {
        let (len, tail) = rest.split_once(':').ok_or_else(bad)?;
        let len: usize = len.parse().map_err(|_| bad())?;
        let name_end = tail.char_indices().nth(len).map_or(tail.len(), |(i, _)| i);
        let (name, tail) = tail.split_at(name_end);
        let (fields, next) = tail.split_once(';').unwrap_or((tail, ""));
        let mut f = fields.split(',');
        let mut num = || -> Result<Option<i64>> {
            match f.next().ok_or_else(bad)? {
                "" => Ok(None),
                v => v.parse().map(Some).map_err(|_| bad()),
            }
        };
        out.push(CachedStat {
            dir: dir.to_string(),
            name: name.to_string(),
            size: num()?.map(|v| v as u64),
            mtime_ns: num()?,
            ctime_ns: num()?,
            ino: num()?.map(|v| v as u64),
        });
        rest = next;
    }
    Ok(())
}

// ---- row decoding ----

fn share_from(r: &dyn Fields) -> Result<ShareRow> {
    Ok(ShareRow {
        id: r.text("id")?,
        project_id: r.text("project_id")?,
        name: r.text("name")?,
        status: wire(r, "status", ShareStatus::from_wire)?,
        sub_status: opt_wire(r, "sub_status", ShareSubStatus::from_wire)?,
        size_gib: r.int("size_gib")?,
        share_proto: r.text("share_proto")?,
        share_type: r.text("share_type")?,
        metadata: json(r, "metadata")?,
        gc_time_hours: r.opt_int("gc_time_hours")?,
        created_at: r.int("created_at")?,
    })
}

fn target_from(r: &dyn Fields) -> Result<TargetRow> {
    Ok(TargetRow {
        id: r.text("id")?,
        share_id: r.text("share_id")?,
        project_id: r.text("project_id")?,
        file_system_path: r.text("file_system_path")?,
        bucket: r.text("bucket")?,
        endpoint: r.text("endpoint")?,
        lifecycle: wire(r, "lifecycle", TargetLifecycle::from_wire)?,
        failure_message: r.opt_text("failure_message")?,
        attributes: json(r, "attributes")?,
        policy: json(r, "policy")?,
        created_at: r.int("created_at")?,
    })
}

fn task_from(r: &dyn Fields) -> Result<TaskRow> {
    let attributes = match r.opt_text("attributes")? {
        Some(s) => Some(serde_json::from_str(&s).map_err(|e| bad_column("attributes", e))?),
        None => None,
    };
    Ok(TaskRow {
        id: r.text("id")?,
        share_id: r.text("share_id")?,
        project_id: r.text("project_id")?,
        task_type: wire(r, "task_type", HpcTaskType::from_wire)?,
        status: wire(r, "status", HpcTaskStatus::from_wire)?,
        src_target: r.text("src_target")?,
        src_prefix: r.opt_text("src_prefix")?,
        dest_target: r.text("dest_target")?,
        dest_prefix: r.opt_text("dest_prefix")?,
        attributes,
        start_time: r.int("start_time")?,
        end_time: r.opt_int("end_time")?,
        message: r.opt_text("message")?,
        progress: TaskProgress {
            total_files: r.int("total_files")? as u64,
            done_files: r.int("done_files")? as u64,
            skipped_files: r.int("skipped_files")? as u64,
            failed_files: r.int("failed_files")? as u64,
            total_bytes: r.int("total_bytes")? as u64,
            done_bytes: r.int("done_bytes")? as u64,
            bytes_per_second: r.int("bytes_per_second")? as u64,
        },
    })
}

fn job_from(r: &dyn Fields) -> Result<JobRow> {
    Ok(JobRow {
        id: r.text("id")?,
        project_id: r.text("project_id")?,
        job_type: wire(r, "job_type", JobType::from_wire)?,
        status: wire(r, "status", JobStatus::from_wire)?,
        begin_time: r.int("begin_time")?,
        end_time: r.opt_int("end_time")?,
        error_code: r.opt_text("error_code")?,
        fail_reason: r.opt_text("fail_reason")?,
        parent_id: r.opt_text("parent_id")?,
        entities: json(r, "entities")?,
    })
}

fn entry_from(r: &dyn Fields) -> Result<NsEntry> {
    let id32 = |col: &str| -> Result<u32> {
        let v = r.int(col)?;
        u32::try_from(v).map_err(|_| bad_column(col, format!("{v} is not a 32-bit value")))
    };
    Ok(NsEntry {
        dir: r.text("dir")?,
        name: r.text("name")?,
        kind: r.text("kind")?,
        size: r.int("size")? as u64,
        mtime_ns: r.int("mtime_ns")?,
        mode: id32("mode")?,
        uid: id32("uid")?,
        gid: id32("gid")?,
        etag: r.opt_text("etag")?,
        state: wire(r, "state", EntryState::from_wire)?,
        local_size: r.opt_int("local_size")?.map(|v| v as u64),
        local_mtime_ns: r.opt_int("local_mtime_ns")?,
        local_ctime_ns: r.opt_int("local_ctime_ns")?,
        local_ino: r.opt_int("local_ino")?.map(|v| v as u64),
    })
}

fn push_task_args<'a>(args: &mut Vec<Arg<'a>>, t: &'a TaskRow, attributes: Option<&'a str>) {
    let p = &t.progress;
    args.extend_from_slice(args![
        t.id.as_str(),
        t.share_id.as_str(),
        t.project_id.as_str(),
        t.task_type.as_str(),
        t.status.as_str(),
        t.src_target.as_str(),
        t.src_prefix.as_deref(),
        t.dest_target.as_str(),
        t.dest_prefix.as_deref(),
        attributes,
        t.start_time,
        t.end_time,
        t.message.as_deref(),
        as_i64(p.total_files),
        as_i64(p.done_files),
        as_i64(p.skipped_files),
        as_i64(p.failed_files),
        as_i64(p.total_bytes),
        as_i64(p.done_bytes),
        as_i64(p.bytes_per_second),
    ]);
}

/// A column value of a wire enum.
fn wire<E>(r: &dyn Fields, col: &str, from_wire: fn(&str) -> Option<E>) -> Result<E> {
    let s = r.text(col)?;
    from_wire(&s).ok_or_else(|| bad_column(col, format!("unknown value {s:?}")))
}

fn opt_wire<E>(r: &dyn Fields, col: &str, from_wire: fn(&str) -> Option<E>) -> Result<Option<E>> {
    match r.opt_text(col)? {
        Some(s) => from_wire(&s).map(Some).ok_or_else(|| bad_column(col, format!("unknown value {s:?}"))),
        None => Ok(None),
    }
}

fn json<T: DeserializeOwned>(r: &dyn Fields, col: &str) -> Result<T> {
    serde_json::from_str(&r.text(col)?).map_err(|e| bad_column(col, e))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Query(sqlx::Error::Encode(Box::new(e))))
}

fn bad_column(col: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Query(sqlx::Error::ColumnDecode { index: col.to_string(), source: source.into() })
}

fn is_unique_violation(e: &Error) -> bool {
    matches!(e, Error::Query(sqlx::Error::Database(d)) if d.is_unique_violation())
}

fn path_conflict(path: &str) -> Error {
    Error::Conflict(format!("the share has a target at file_system_path {path:?} already"))
}

// ---- values ----

/// The bit pattern of a `u64` as the BIGINT that stores it.
fn as_i64(v: u64) -> i64 {
    v as i64
}

/// An OFFSET: beyond `i64::MAX` there is nothing anyway.
fn offset_arg(offset: u64) -> Arg<'static> {
    Arg::Int(i64::try_from(offset).unwrap_or(i64::MAX))
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_string(charset: &[u8], len: usize) -> String {
    (0..len).map(|_| charset[rand::random_range(0..charset.len())] as char).collect()
}

/// `(?, ?, …), (?, ?, …), …`: `rows` groups of `cols` placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(", "));
    vec![row; rows].join(", ")
}

// ---- one query, either back-end ----

/// `sqlx::query(sql)` with `args` bound, for whichever back-end `sql` goes to.
macro_rules! bound {
    ($sql:expr, $args:expr) => {{
        let mut q = sqlx::query($sql);
        for arg in $args {
            q = match *arg {
                Arg::Text(v) => q.bind(v),
                Arg::OptText(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::OptInt(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Column access common to both back-ends' rows, so that each row type is decoded once.
trait Fields {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
}

macro_rules! impl_fields {
    ($($row:ty),*) => {$(
        impl Fields for $row {
            fn text(&self, col: &str) -> Result<String> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> Result<i64> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                Ok(self.try_get(col)?)
            }
        }
    )*};
}
impl_fields!(SqliteRow, PgRow);

type Decode<T> = fn(&dyn Fields) -> Result<T>;

/// An open write transaction (see [`Store::begin_write`]).
enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Store {
    /// A transaction for read-then-write work: `BEGIN IMMEDIATE` on SQLite
    /// (taking the write lock now), a plain transaction on PostgreSQL where
    /// reads lock rows with [`Tx::for_update`].
    async fn begin_write(&self) -> Result<Tx> {
        Ok(match &self.backend {
            Backend::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Run a statement; the number of rows it changed.
    async fn run(&self, q: &str, args: &[Arg<'_>]) -> Result<u64> {
        Ok(match &self.backend {
            Backend::Sqlite(p) => bound!(q, args).execute(p).await?.rows_affected(),
            Backend::Postgres(p) => {
                let q = numbered_placeholders(q);
                bound!(&q, args).execute(p).await?.rows_affected()
            }
        })
    }

    async fn rows<T>(&self, q: &str, args: &[Arg<'_>], decode: Decode<T>) -> Result<Vec<T>> {
        match &self.backend {
            Backend::Sqlite(p) => bound!(q, args).fetch_all(p).await?.iter().map(|r| decode(r)).collect(),
            Backend::Postgres(p) => {
                let q = numbered_placeholders(q);
                bound!(&q, args).fetch_all(p).await?.iter().map(|r| decode(r)).collect()
            }
        }
    }

    async fn row<T>(&self, q: &str, args: &[Arg<'_>], decode: Decode<T>) -> Result<Option<T>> {
        match &self.backend {
            Backend::Sqlite(p) => bound!(q, args).fetch_optional(p).await?.map(|r| decode(&r)).transpose(),
            Backend::Postgres(p) => {
                let q = numbered_placeholders(q);
                bound!(&q, args).fetch_optional(p).await?.map(|r| decode(&r)).transpose()
            }
        }
    }

    /// The `n` column of a `SELECT COUNT(*) AS n …`.
    async fn count(&self, q: &str, args: &[Arg<'_>]) -> Result<u64> {
        Ok(self.row(q, args, |r| r.int("n")).await?.unwrap_or(0) as u64)
    }
}

impl Tx {
    /// Appended to a SELECT to lock the rows it reads (PostgreSQL; SQLite's
    /// `BEGIN IMMEDIATE` already excludes other writers).
    fn for_update(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR UPDATE",
        }
    }

    /// Like [`Tx::for_update`], passing over rows other transactions hold.
    fn for_update_skip_locked(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    async fn run(&mut self, q: &str, args: &[Arg<'_>]) -> Result<u64> {
        Ok(match self {
            Tx::Sqlite(tx) => bound!(q, args).execute(&mut **tx).await?.rows_affected(),
            Tx::Postgres(tx) => {
                let q = numbered_placeholders(q);
                bound!(&q, args).execute(&mut **tx).await?.rows_affected()
            }
        })
    }

    async fn row<T>(&mut self, q: &str, args: &[Arg<'_>], decode: Decode<T>) -> Result<Option<T>> {
        match self {
            Tx::Sqlite(tx) => {
                bound!(q, args).fetch_optional(&mut **tx).await?.map(|r| decode(&r)).transpose()
            }
            Tx::Postgres(tx) => {
                let q = numbered_placeholders(q);
                bound!(&q, args).fetch_optional(&mut **tx).await?.map(|r| decode(&r)).transpose()
            }
        }
    }

    async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}
