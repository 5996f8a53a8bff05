//! Persistence for ferry: SQLite (the embedded default) and PostgreSQL
//! (multi-node deployments) behind one [`Store`], each with its own
//! migrations, run on connect through sqlx's migrator.
//!
//! Queries are written once in the common SQL subset; the only difference
//! between the back-ends is the placeholder syntax, handled by [`sql`].

use std::borrow::Cow;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use thiserror::Error;

pub mod hpc;
mod sealed;
pub use hpc::*;
pub use sealed::SecretKey;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A unique name is already taken (share name in a project, target path in a share).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A per-parent limit is reached (16 targets per share).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The row to change, or the row a request refers to, does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A sealed secret that does not open (no key, or another key).
    #[error("{0}")]
    Sealed(String),
    /// A call given up by [`bounded`]: the database did not answer in time.
    #[error("the database did not answer in {} ms", .0.as_millis())]
    NoAnswer(Duration),
}

/// `call`, given up after `limit` ([`Error::NoAnswer`]): a database cut off
/// by a partition holds a call for as long as TCP does (hours), and only
/// the caller knows how long it can wait.
pub async fn bounded<T>(limit: Duration, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, call).await.unwrap_or(Err(Error::NoAnswer(limit)))
}

impl Error {
    /// Whether the database was away rather than the request wrong: the
    /// connection failed or timed out (or the call, see [`bounded`]), the
    /// server is restarting or failing
    /// over, or a lock or serialization conflict. Such a call may succeed
    /// if made again.
    pub fn is_transient(&self) -> bool {
        let sqlx = match self {
            Error::Query(e) | Error::Connect { source: e, .. } => e,
            Error::NoAnswer(_) => return true,
            _ => return false,
        };
        match sqlx {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                // PostgreSQL's five-character SQLSTATEs: connection
                // exceptions (08…), shutdown and startup (57P01-57P03),
                // serialization failures and deadlocks (40001, 40P01).
                // SQLite's numeric codes: busy and locked (5 and 6, and
                // their extended codes).
                code.starts_with("08")
                    || matches!(&*code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
                    || (code.len() < 5 && code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)))
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection pool to ferry's database.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// Seals access-key secrets at rest; without it they are stored as given.
    secret_key: Option<SecretKey>,
    /// How long a process cut off from PostgreSQL keeps a pair's claim.
    claim_timeout: Duration,
}

/// The default of [`Store::with_claim_timeout`].
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// The record of a `ferry sync` pair (source, destination, options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub run_id: i64,
    /// True when the last run of this pair did not finish.
    pub resumed: bool,
    /// For a resumed run, when the unfinished attempts were active:
    /// milliseconds since the epoch from the first start to the last sign
    /// of life (see [`Store::touch_run`]).
    pub interrupted: Option<(i64, i64)>,
    /// Which run of the pair this is: one more than the last finished
    /// run's; a resumed run keeps the generation of its interrupted attempts.
    pub generation: i64,
}

/// A claim on a sync pair, held while its run is in progress; see
/// [`Store::lock_run`].
#[derive(Debug)]
pub enum RunLock {
    /// An in-memory database: no other process can see it.
    None,
    File(std::fs::File),
    /// The PostgreSQL session holding the advisory lock.
    Postgres(PgClaim),
}

/// The PostgreSQL session that holds a pair's advisory lock, kept by a task
/// of its own: it speaks every third of the claim timeout, and the server
/// ends the session (and the claim) once it has been silent for that long
/// (`idle_session_timeout`). A process cut off from the server therefore
/// does not hold a pair for the hours TCP takes to notice.
#[derive(Debug)]
pub struct PgClaim {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl PgClaim {
    async fn hold(mut conn: sqlx::PgConnection, timeout: Duration) -> PgClaim {
        use sqlx::Executor;
        let secs = timeout.as_secs().max(3);
        // PostgreSQL 14 and later end a silent session; the keepalives also
        // end one whose peer vanished, on any version. Best effort: a server
        // that refuses a setting leaves the claim to TCP.
        for set in [
            format!("SET idle_session_timeout = {}", secs * 1000),
            format!("SET tcp_keepalives_idle = {}", secs / 3),
            format!("SET tcp_keepalives_interval = {}", (secs / 6).max(1)),
            "SET tcp_keepalives_count = 3".to_string(),
        ] {
            if let Err(e) = conn.execute(set.as_str()).await {
                log::debug!("{set}: {e}");
            }
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let every = Duration::from_secs(secs / 3);
        let keeper = tokio::spawn(async move {
            let mut answered = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    // Released, or dropped.
                    _ = &mut stopped => {
                        // A server cut off does not answer the goodbye.
                        let bye = sqlx::Connection::close(conn);
                        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
                        return;
                    }
                    _ = tokio::time::sleep(every) => {
                        let ping = tokio::time::timeout(every, conn.execute("SELECT 1")).await;
                        if matches!(ping, Ok(Ok(_))) {
                            answered = tokio::time::Instant::now();
                        } else if answered.elapsed() >= Duration::from_secs(secs) {
                            // By now the server has ended the session.
                            log::warn!(
                                "lost the database session that holds this run's claim on its pair: \
                                 another run of the pair may start"
                            );
                            return;
                        }
                    }
                }
            }
        });
        PgClaim { stop: Some(stop), keeper: Some(keeper) }
    }
}

impl Drop for PgClaim {
    fn drop(&mut self) {
        // The keeper closes the session (a dropped sender wakes it too).
        drop(self.stop.take());
    }
}

impl RunLock {
    /// Release the claim now (dropping it does too, a moment later).
    pub async fn release(self) {
        if let RunLock::Postgres(mut claim) = self {
            drop(claim.stop.take());
            if let Some(keeper) = claim.keeper.take() {
                let _ = keeper.await;
            }
        }
    }
}

/// An item known to be up to date at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneItem {
    pub dir: String,
    pub name: String,
    /// Source size and mtime when it was copied: a changed source is copied again.
    pub size: u64,
    pub mtime_ns: i64,
    /// A local source's ctime then: a chmod or chown changes only that.
    pub ctime_ns: Option<i64>,
    /// The destination's version (ETag or listed mtime) once known.
    pub dst_version: Option<String>,
    /// The generation of the run that transferred it; `None` when it was
    /// found up to date rather than copied.
    pub transferred_gen: Option<i64>,
}

/// A done item as [`Store::done_in_dirs`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DoneCopy {
    pub dir: String,
    pub name: String,
    /// Source size when it was copied.
    pub size: u64,
    /// The destination's version once known.
    pub dst_version: Option<String>,
}

/// What the store knows of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Source size, mtime and (local sources) ctime when it was copied.
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: Option<i64>,
    /// The destination's version (ETag or listed mtime) once known.
    pub dst_version: Option<String>,
    /// The generation of the run that transferred it, if one did.
    pub transferred_gen: Option<i64>,
}

/// The migrations of one back-end, in order: (version, description, SQL).
fn migrations(kind: &str) -> [(i64, &'static str, &'static str); 6] {
    match kind {
        "sqlite" => [
            (1, "sync checkpoints", include_str!("../migrations/sqlite/0001_sync_checkpoints.sql")),
            (2, "sync state", include_str!("../migrations/sqlite/0002_sync_state.sql")),
            (3, "hpc cache", include_str!("../migrations/sqlite/0003_hpc_cache.sql")),
            (4, "done names bytewise", include_str!("../migrations/sqlite/0004_done_names_bytewise.sql")),
            (5, "done source ctime", include_str!("../migrations/sqlite/0005_done_source_ctime.sql")),
            (6, "done by generation", include_str!("../migrations/sqlite/0006_done_by_generation.sql")),
        ],
        _ => [
            (1, "sync checkpoints", include_str!("../migrations/postgres/0001_sync_checkpoints.sql")),
            (2, "sync state", include_str!("../migrations/postgres/0002_sync_state.sql")),
            (3, "hpc cache", include_str!("../migrations/postgres/0003_hpc_cache.sql")),
            (4, "done names bytewise", include_str!("../migrations/postgres/0004_done_names_bytewise.sql")),
            (5, "done source ctime", include_str!("../migrations/postgres/0005_done_source_ctime.sql")),
            (6, "done by generation", include_str!("../migrations/postgres/0006_done_by_generation.sql")),
        ],
    }
}

/// How long opening a PostgreSQL store waits for the server to answer.
const PG_CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One connection made by hand before the pool is built: the pool reports
/// every failure as "pool timed out", this says why (connection refused,
/// password authentication failed, database does not exist). A server
/// that answers with an error fails at once; one not reachable yet is
/// tried again until [`PG_CONNECT_WAIT`] has passed.
async fn probe_postgres(opts: &PgConnectOptions) -> std::result::Result<(), sqlx::Error> {
    let deadline = tokio::time::Instant::now() + PG_CONNECT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let err = match tokio::time::timeout(left, opts.connect()).await {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                return Ok(());
            }
            Ok(Err(e @ sqlx::Error::Database(_))) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", PG_CONNECT_WAIT.as_secs()),
            )),
        };
        if tokio::time::Instant::now() + std::time::Duration::from_millis(500) >= deadline {
            return Err(err);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn migrator(kind: &str) -> Migrator {
    let migrations = migrations(kind)
        .into_iter()
        .map(|(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

/// Processes that open the same SQLite file at once (two `ferry sync` runs
/// sharing a state directory) take turns creating and migrating it: sqlx
/// takes no lock for SQLite, and racing migrations fail ("table already
/// exists"). The lock is a file beside the database, held until migrated.
async fn sqlite_migration_lock(db: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    match sqlite_file(db) {
        Some(name) => lock_file(format!("{name}.migrate-lock").into(), true).await,
        None => Ok(None),
    }
}

/// The database file's name; `None` for an in-memory database.
fn sqlite_file(db: &std::path::Path) -> Option<String> {
    let name = db.to_string_lossy();
    (!name.is_empty() && name != ":memory:").then(|| name.into_owned())
}

/// An exclusive lock on the file at `path` (created, with its directory, if
/// missing): waited for, or `None` when `wait` is false and another holds
/// it. Held until the file is dropped, or the process ends.
async fn lock_file(path: std::path::PathBuf, wait: bool) -> std::io::Result<Option<std::fs::File>> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        if wait {
            f.lock()?;
            return Ok(Some(f));
        }
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    /// Like [`Store::connect`], but a SQLite database file that does not
    /// exist is not created: `None` (a dry run reads a checkpoint if there
    /// is one and leaves no state behind).
    pub async fn connect_existing(url: &str) -> Result<Option<Store>> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|source| Error::Connect { url: redact(url), source })?;
            if sqlite_file(opts.get_filename()).is_some_and(|f| !std::path::Path::new(&f).exists()) {
                return Ok(None);
            }
        }
        Self::connect(url).await.map(Some)
    }

    /// Open `sqlite://PATH` (created if missing) or `postgres://…`, and migrate.
    pub async fn connect(url: &str) -> Result<Store> {
        let connect_err = |source| Error::Connect { url: redact(url), source };
        let backend = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(connect_err)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(std::time::Duration::from_secs(10))
                // Waiting on another process's write is expected, not news.
                .log_slow_statements(log::LevelFilter::Debug, std::time::Duration::from_secs(1));
            let lock = sqlite_migration_lock(opts.get_filename())
                .await
                .map_err(|source| Error::Connect { url: redact(url), source: sqlx::Error::Io(source) })?;
            let pool =
                SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.map_err(connect_err)?;
            migrator("sqlite").run(&pool).await?;
            drop(lock);
            Backend::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(connect_err)?
                .log_slow_statements(log::LevelFilter::Debug, std::time::Duration::from_secs(1));
            probe_postgres(&opts).await.map_err(connect_err)?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(PG_CONNECT_WAIT)
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            migrator("postgres").run(&pool).await?;
            Backend::Postgres(pool)
        } else {
            return Err(Error::UnsupportedUrl(redact(url)));
        };
        Ok(Store { backend, secret_key: None, claim_timeout: CLAIM_TIMEOUT })
    }

    /// How long the claim on a sync pair outlives a process that was cut
    /// off from PostgreSQL ([`CLAIM_TIMEOUT`] by default; 3 s at least):
    /// the time before another run of the pair, or a worker that took a
    /// task over, can go on.
    pub fn with_claim_timeout(mut self, timeout: Duration) -> Self {
        self.claim_timeout = timeout;
        self
    }

    /// Seal access-key secrets with `key` from now on (and open sealed ones).
    pub fn with_secret_key(mut self, key: SecretKey) -> Self {
        self.secret_key = Some(key);
        self
    }

    /// Open (creating it if needed) a SQLite database file.
    pub async fn open_sqlite_file(path: &std::path::Path) -> Result<Store> {
        Store::connect(&format!("sqlite://{}", path.display())).await
    }

    /// Start a run of the pair with this key, keeping what earlier runs recorded.
    /// The run of `run_key`, if one was ever begun, without touching it
    /// (what a dry run reads: it neither resumes nor records).
    pub async fn find_run(&self, run_key: &str) -> Result<Option<i64>> {
        let q = sql(self, "SELECT id FROM sync_runs WHERE run_key = ?");
        Ok(match &self.backend {
            Backend::Sqlite(p) => sqlx::query_scalar(&q).bind(run_key).fetch_optional(p).await?,
            Backend::Postgres(p) => sqlx::query_scalar(&q).bind(run_key).fetch_optional(p).await?,
        })
    }

    pub async fn begin_run(&self, run_key: &str, src: &str, dst: &str) -> Result<Checkpoint> {
        let now = now_ms();
        let q = sql(
            self,
            "SELECT id, finished, started_at, updated_at, generation FROM sync_runs WHERE run_key = ?",
        );
        let existing: Option<(i64, bool, i64, i64, i64)> = match &self.backend {
            Backend::Sqlite(p) => sqlx::query_as(&q).bind(run_key).fetch_optional(p).await?,
            Backend::Postgres(p) => sqlx::query_as(&q).bind(run_key).fetch_optional(p).await?,
        };
        if let Some((run_id, finished, started, seen, generation)) = existing {
            if !finished {
                let q = sql(self, "UPDATE sync_runs SET updated_at = ? WHERE id = ?");
                self.exec(q, |q| q.bind(now).bind(run_id)).await?;
                let interrupted = Some((started, seen));
                return Ok(Checkpoint { run_id, resumed: true, interrupted, generation });
            }
            // A new run of a finished pair: its own start, its own generation.
            let q = sql(
                self,
                "UPDATE sync_runs SET started_at = ?, updated_at = ?, finished = FALSE, generation = ? \
                 WHERE id = ?",
            );
            self.exec(q, |q| q.bind(now).bind(now).bind(generation + 1).bind(run_id)).await?;
            return Ok(Checkpoint { run_id, resumed: false, interrupted: None, generation: generation + 1 });
        }
        let insert = sql(
            self,
            "INSERT INTO sync_runs (run_key, src, dst, started_at, updated_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
        );
        let run_id: i64 = match &self.backend {
            Backend::Sqlite(p) => sqlx::query(&insert)
                .bind(run_key)
                .bind(src)
                .bind(dst)
                .bind(now)
                .bind(now)
                .fetch_one(p)
                .await?
                .get(0),
            Backend::Postgres(p) => sqlx::query(&insert)
                .bind(run_key)
                .bind(src)
                .bind(dst)
                .bind(now)
                .bind(now)
                .fetch_one(p)
                .await?
                .get(0),
        };
        Ok(Checkpoint { run_id, resumed: false, interrupted: None, generation: 0 })
    }

    /// Up to `limit` done items of one directory whose names sort after
    /// `after`, in byte order of the name (to merge with a sorted listing
    /// without holding a huge directory's done set in memory).
    pub async fn done_page(
        &self,
        run_id: i64,
        dir: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, Known)>> {
        let q = sql(
            self,
            "SELECT name, size, mtime_ns, src_ctime_ns, dst_version, transferred_gen FROM sync_done \
             WHERE run_id = ? AND dir = ? AND name > ? ORDER BY name LIMIT ?",
        );
        type Row = (String, i64, i64, Option<i64>, Option<String>, Option<i64>);
        let rows: Vec<Row> = match &self.backend {
            Backend::Sqlite(p) => {
                sqlx::query_as(&q).bind(run_id).bind(dir).bind(after).bind(limit).fetch_all(p).await?
            }
            Backend::Postgres(p) => {
                sqlx::query_as(&q).bind(run_id).bind(dir).bind(after).bind(limit).fetch_all(p).await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(n, size, mtime_ns, ctime_ns, dst_version, transferred_gen)| {
                (n, Known { size: size as u64, mtime_ns, ctime_ns, dst_version, transferred_gen })
            })
            .collect())
    }

    /// Every done item in these directories (one query per 500
    /// directories): its directory, name, size and destination version.
    pub async fn done_in_dirs(&self, run_id: i64, dirs: &[String]) -> Result<Vec<DoneCopy>> {
        let mut out = Vec::new();
        for chunk in dirs.chunks(500) {
            let q = sql(
                self,
                &format!(
                    "SELECT dir, name, size, dst_version FROM sync_done WHERE run_id = ? AND dir IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                ),
            );
            let rows: Vec<(String, String, i64, Option<String>)> = match &self.backend {
                Backend::Sqlite(p) => {
                    let q = chunk.iter().fold(sqlx::query_as(&q).bind(run_id), |q, d| q.bind(d));
                    q.fetch_all(p).await?
                }
                Backend::Postgres(p) => {
                    let q = chunk.iter().fold(sqlx::query_as(&q).bind(run_id), |q, d| q.bind(d));
                    q.fetch_all(p).await?
                }
            };
            out.extend(rows.into_iter().map(|(dir, name, size, dst_version)| DoneCopy {
                dir,
                name,
                size: size as u64,
                dst_version,
            }));
        }
        Ok(out)
    }

    /// Record finished items, all in one transaction.
    pub async fn record_done(&self, run_id: i64, items: &[DoneItem]) -> Result<()> {
        // One statement per group of rows, not one per row: a row per
        // statement cost a round trip each (to the SQLite worker thread or
        // to the PostgreSQL server), several times what writing it costs.
        // A name twice in one statement is refused by PostgreSQL's upsert
        // (`--files-from` may list a file twice): the last one counts.
        let mut seen = std::collections::HashSet::new();
        let mut rows: Vec<&DoneItem> =
            items.iter().rev().filter(|it| seen.insert((&it.dir, &it.name))).collect();
        rows.reverse();
        if rows.is_empty() {
            return Ok(());
        }
        const ROWS_PER_STATEMENT: usize = 256;
        macro_rules! run_batch {
            ($pool:expr, $db:ty) => {{
                let mut tx = $pool.begin().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO sync_done \
                         (run_id, dir, name, size, mtime_ns, src_ctime_ns, dst_version, transferred_gen) ",
                    );
                    q.push_values(chunk, |mut row, it| {
                        row.push_bind(run_id)
                            .push_bind(&it.dir)
                            .push_bind(&it.name)
                            .push_bind(it.size as i64)
                            .push_bind(it.mtime_ns)
                            .push_bind(it.ctime_ns)
                            .push_bind(&it.dst_version)
                            .push_bind(it.transferred_gen);
                    });
                    q.push(
                        " ON CONFLICT (run_id, dir, name) DO UPDATE SET size = excluded.size, \
                         mtime_ns = excluded.mtime_ns, src_ctime_ns = excluded.src_ctime_ns, \
                         dst_version = excluded.dst_version, transferred_gen = excluded.transferred_gen",
                    );
                    q.build().persistent(chunk.len() == ROWS_PER_STATEMENT).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }};
        }
        match &self.backend {
            Backend::Sqlite(p) => run_batch!(p, sqlx::Sqlite),
            Backend::Postgres(p) => run_batch!(p, sqlx::Postgres),
        }
        Ok(())
    }

    /// Mark a run complete: the next run of the pair is not a resume, but
    /// still uses the known state.
    /// Claim the pair `run_key` for this process while it runs: `None` when
    /// another run of it is in progress. The claim ends when the lock is
    /// dropped or the process dies (a file lock beside a SQLite database, a
    /// session advisory lock on PostgreSQL), so a killed run never blocks
    /// the next one.
    pub async fn lock_run(&self, run_key: &str) -> Result<Option<RunLock>> {
        let digest = Sha256::digest(run_key.as_bytes());
        match &self.backend {
            Backend::Sqlite(p) => {
                let Some(name) = sqlite_file(p.connect_options().get_filename()) else {
                    return Ok(Some(RunLock::None));
                };
                let path = format!("{name}.runs/{}.lock", hex::encode(&digest[..16]));
                let lock = lock_file(path.into(), false).await.map_err(|source| Error::Connect {
                    url: redact(&name),
                    source: sqlx::Error::Io(source),
                })?;
                Ok(lock.map(RunLock::File))
            }
            Backend::Postgres(p) => {
                let key = i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
                let mut conn = p.acquire().await?.detach();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await?;
                Ok(match got {
                    true => Some(RunLock::Postgres(PgClaim::hold(conn, self.claim_timeout).await)),
                    false => None,
                })
            }
        }
    }

    /// Note that a run is still alive, so that after a crash its active
    /// window is known (to tell its leftovers from other writers').
    pub async fn touch_run(&self, run_id: i64) -> Result<()> {
        let q = sql(self, "UPDATE sync_runs SET updated_at = ? WHERE id = ?");
        self.exec(q, |q| q.bind(now_ms()).bind(run_id)).await
    }

    pub async fn finish_run(&self, run_id: i64) -> Result<()> {
        self.exec(sql(self, "UPDATE sync_runs SET finished = TRUE WHERE id = ?"), |q| q.bind(run_id)).await
    }

    /// Forget everything recorded for a pair.
    pub async fn forget_run(&self, run_id: i64) -> Result<()> {
        self.exec(sql(self, "DELETE FROM sync_done WHERE run_id = ?"), |q| q.bind(run_id)).await?;
        self.exec(sql(self, "DELETE FROM sync_runs WHERE id = ?"), |q| q.bind(run_id)).await
    }

    /// Number of items recorded as done for a run (for tests and reports).
    pub async fn done_count(&self, run_id: i64) -> Result<u64> {
        let q = sql(self, "SELECT COUNT(*) FROM sync_done WHERE run_id = ?");
        let n: i64 = match &self.backend {
            Backend::Sqlite(p) => sqlx::query(&q).bind(run_id).fetch_one(p).await?.get(0),
            Backend::Postgres(p) => sqlx::query(&q).bind(run_id).fetch_one(p).await?.get(0),
        };
        Ok(n as u64)
    }

    async fn exec(&self, q: String, bind: impl Fn(AnyQuery<'_>) -> AnyQuery<'_>) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(p) => {
                let AnyQuery::Sqlite(q) = bind(AnyQuery::Sqlite(sqlx::query(&q))) else { unreachable!() };
                q.execute(p).await?;
            }
            Backend::Postgres(p) => {
                let AnyQuery::Postgres(q) = bind(AnyQuery::Postgres(sqlx::query(&q))) else { unreachable!() };
                q.execute(p).await?;
            }
        }
        Ok(())
    }
}

/// A query for either back-end, so that binding code is written once.
enum AnyQuery<'q> {
    Sqlite(sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>),
    Postgres(sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>),
}

impl<'q> AnyQuery<'q> {
    fn bind(self, v: i64) -> Self {
        match self {
            AnyQuery::Sqlite(q) => AnyQuery::Sqlite(q.bind(v)),
            AnyQuery::Postgres(q) => AnyQuery::Postgres(q.bind(v)),
        }
    }
}

/// Rewrite `?` placeholders as `$1, $2, …` for PostgreSQL.
fn sql(store: &Store, q: &str) -> String {
    match store.backend {
        Backend::Sqlite(_) => q.to_string(),
        Backend::Postgres(_) => numbered_placeholders(q),
    }
}

/// `?` placeholders numbered as `$1, $2, …`.
fn numbered_placeholders(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 8);
    let mut n = 0;
    for ch in q.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
