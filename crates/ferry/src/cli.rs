use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ferry moves data between POSIX file systems and object storage.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// Log more (also: FERRY_LOG=debug).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy what is missing or different from SRC to DST (one-shot, resumable).
    #[command(long_about = SYNC_HELP)]
    Sync(Box<SyncArgs>),
    /// List a location: one line per entry, `SIZE PATH` (directories end with '/').
    Ls(LsArgs),
    /// Abort incomplete multipart uploads under an s3:// location.
    #[command(long_about = CLEANUP_HELP)]
    Cleanup(CleanupArgs),
    /// Run the SFS Turbo-compatible HPC cache service (API and workers).
    #[command(long_about = SERVE_HELP)]
    Serve(ServeArgs),
    /// Run workers only (other nodes of a PostgreSQL deployment serve the API).
    Worker(WorkerArgs),
    /// Manage API tokens (`X-Auth-Token`).
    #[command(subcommand)]
    Token(AdminCommand),
    /// Manage access keys for SDK-HMAC-SHA256 clients (the Huawei Cloud SDKs).
    #[command(subcommand)]
    Credential(AdminCommand),
}

/// Where the server keeps its state; shared by `serve`, `worker` and the admin commands.
#[derive(Debug, Clone, Args)]
pub struct ServerOpts {
    /// Data directory: SQLite database, shares/, buckets/ (the embedded object store).
    #[arg(long, value_name = "DIR", env = "FERRY_DATA_DIR", default_value = "ferry-data")]
    pub data_dir: PathBuf,
    /// TOML configuration file (see ferry.sample.toml).
    #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL: postgres://… for several nodes (default: SQLite in the data directory).
    #[arg(long, value_name = "URL", env = "FERRY_DATABASE")]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", env = "FERRY_LISTEN")]
    pub listen: Option<String>,
    /// Do not run workers in this process.
    #[arg(long)]
    pub no_workers: bool,
    #[command(flatten)]
    pub server: ServerOpts,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Serve `/health` and `/metrics` (Prometheus) on this address.
    #[arg(long, value_name = "ADDR", env = "FERRY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub server: ServerOpts,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create one for a project and print it (shown once).
    Create {
        /// The project the new credential may act on.
        #[arg(long, value_name = "PROJECT")]
        project: String,
        #[command(flatten)]
        server: ServerOpts,
    },
}

const SERVE_HELP: &str = "\
Run the SFS Turbo-compatible HPC cache service: the REST API of API.md and,
unless --no-workers, the workers that run import, import_metadata, preload and
export tasks.

With no configuration it runs the embedded default: SQLite in ./ferry-data,
shares under ./ferry-data/shares/, and an object store emulated by
./ferry-data/buckets/ (endpoint \"local\": each subdirectory is a bucket).

Get a token with `ferry token create --project P`, or an access key for the
Huawei Cloud SDKs with `ferry credential create --project P` (same --data-dir,
--config and --database options as serve).";

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Location to list (same forms as `ferry sync`); a file, or an object's key, lists as itself.
    pub location: String,
    /// Descend into directories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Directories listed at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub list_threads: u16,
    /// Print only the totals.
    #[arg(long)]
    pub summary: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// s3://bucket/prefix whose incomplete uploads to abort (same URL options as `ferry sync`).
    pub location: String,
    /// Only uploads begun at least this long ago: 90s, 30m, 24h, 7d, or 0 for all.
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = crate::size::parse_age)]
    pub older_than: std::time::Duration,
    /// List the uploads that would be aborted; abort nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
}

const CLEANUP_HELP: &str = "\
Abort incomplete multipart uploads under an s3:// location.

A process killed while writing a large object leaves its multipart upload
open: the object never appears, but the parts already sent stay stored (and
billed) until the upload is aborted. `ferry sync` aborts what an interrupted
run of the same SRC and DST left when it resumes; this command clears uploads
left by runs that are never resumed, or by other tools. Uploads younger than
--older-than (default 24h) are kept, since they may still be in progress.
A bucket lifecycle rule (AbortIncompleteMultipartUpload) does the same on
stores that support one.

Prints one line per upload (`aborted` or `would abort`, its start time and
key). Exit status: 0 when every upload asked for was aborted, 1 when some
could not be, 2 on usage or fatal errors.";

const SYNC_HELP: &str = "\
Copy what is missing or different from SRC to DST, keeping POSIX metadata.

Locations:
  /dir, ./dir, dir          a local directory
  s3://bucket/prefix        any S3-compatible store; endpoint, region and credentials
                            from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
                            AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, overridable with
                            ?endpoint=URL&region=R&path_style=true; uploads carry
                            a CRC32C the store verifies, and downloads are
                            checked against the CRC32C or CRC64NVME the
                            store kept, or a single-part object's MD5 ETag
                            (?checksum=none, or
                            AWS_REQUEST_CHECKSUM_CALCULATION=when_required, turns
                            both off for stores that refuse it)
  obs:// oss:// cos://      Huawei OBS, Alibaba OSS, Tencent COS (OBS_*, OSS_*, COS_* variables)
  azblob://container/prefix Azure Blob / WASB (AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY)
  gcs://bucket/prefix       Google Cloud Storage (GOOGLE_APPLICATION_CREDENTIALS)
  file:///dir               a bucket emulated by a local directory
  memory://                 an in-memory bucket (tests)

SRC may name one file (a local file, or an object's key when nothing is stored
under it as a prefix): it is copied into DST. A bucket prefix with nothing
under it, and no object by that name, stops the run (exit 2).

Resumable: finished items are recorded in a checkpoint (--state-db); a rerun
after an interruption skips them and, on s3://, first aborts the multipart
uploads the interrupted run left open (`ferry cleanup` clears those of runs
never resumed). One run of a SRC, DST and options at a time.

Exit status: 0 when every item succeeded, 1 when some failed (the summary names
them and why), 2 on usage or fatal errors.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    /// Check sizes; compute a CRC32C while streaming.
    None,
    /// Read back every transferred item and compare its CRC32C; a copy that
    /// reads back wrong is removed and written again.
    Transferred,
    /// At the end, compare every file on both sides by CRC32C.
    All,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source location (a directory, a prefix, or one file).
    pub src: String,
    /// Destination location (created if it is a missing local directory).
    pub dst: String,

    /// Compare content checksums (CRC32C) instead of size and modification time;
    /// large s3:// objects are compared through the checksum their store kept
    /// (CRC32C or CRC64NVME), and single-part objects of other tools through
    /// their MD5 ETag against a local file, without being read.
    #[arg(short = 'c', long, conflicts_with_all = ["force", "ignore_existing"])]
    pub checksum: bool,
    /// Skip items that are newer at the destination.
    #[arg(short = 'u', long)]
    pub update: bool,
    /// Skip items that exist at the destination, whatever their content.
    #[arg(long, conflicts_with = "force")]
    pub ignore_existing: bool,
    /// Copy every item, even unchanged ones.
    #[arg(long)]
    pub force: bool,

    /// Delete destination items absent from the source. Never runs after any error.
    #[arg(long)]
    pub delete: bool,
    /// With --delete: refuse to delete more than N items (nothing is deleted then).
    #[arg(long, value_name = "N", requires = "delete")]
    pub max_delete: Option<u64>,

    /// Only copy files matching GLOB (repeatable). A GLOB without '/' matches file
    /// names anywhere; with '/' it matches the path from the root; one ending
    /// in '/' is the directory and all it holds ('logs/' is 'logs/**').
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files and directories matching GLOB (repeatable); wins over --include.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Leave out files smaller than SIZE (bytes, or with K, M, G, T suffixes: 1024-based).
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse_size)]
    pub min_size: Option<u64>,
    /// Leave out files larger than SIZE.
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse_size)]
    pub max_size: Option<u64>,
    /// Only files modified at least AGE ago (90s, 30m, 24h, 7d, 2w), or at or
    /// before a date (2026-01-31, 2026-01-31 12:00:00, RFC 3339; local time
    /// unless a zone is given). An object's time is the one stored in its
    /// metadata: listings do not carry it, so objects cost a HEAD each.
    #[arg(long, value_name = "AGE|DATE", value_parser = crate::size::parse_time_bound)]
    pub min_age: Option<ferry_engine::TimeBound>,
    /// Only files modified at most AGE ago, or at or after a date (as --min-age).
    #[arg(long, value_name = "AGE|DATE", value_parser = crate::size::parse_time_bound)]
    pub max_age: Option<ferry_engine::TimeBound>,
    /// Only copy the files listed in FILE (one relative path per line; '-'
    /// for stdin; blank lines and lines starting with '#' are skipped).
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,

    /// Print the plan; change nothing (an earlier run's checkpoint is read,
    /// as the run would, and nothing is recorded).
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print a machine-readable JSON summary on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write every failed item to FILE as CSV (path,status,error_code,message),
    /// as failures happen; the summary lists only the first 10,000.
    #[arg(long, value_name = "FILE")]
    pub failures_csv: Option<PathBuf>,
    /// Print nothing but errors (and the JSON summary with --json).
    #[arg(short, long)]
    pub quiet: bool,

    /// Items checked and transferred at once. Each small file waits a round
    /// trip or more on the store, so many in flight keep it busy; memory is
    /// bounded by --buffer-memory, not by this.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub threads: u16,
    /// File contents held in memory at most by the items in flight (a small
    /// file whole, a large one its parts or ranges); items wait for room.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = crate::size::parse_size)]
    pub buffer_memory: u64,
    /// Directories listed at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub list_threads: u16,
    /// Entries of one directory level (local or in a bucket) held in memory while it is
    /// compared (about 250 bytes each); a larger level, such as a flat prefix
    /// of millions of objects, is sorted through temporary files instead.
    #[arg(long, value_name = "N", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub level_in_memory: u64,
    /// Limit total bandwidth, e.g. 10M (bytes per second; K, M, G suffixes).
    #[arg(long, value_name = "RATE", value_parser = crate::size::parse_rate)]
    pub bwlimit: Option<u64>,
    /// Post-copy verification.
    #[arg(long, value_enum, default_value_t = VerifyArg::None)]
    pub verify: VerifyArg,
    /// Follow symlinks in the source and copy what they point to.
    #[arg(short = 'L', long)]
    pub copy_links: bool,

    /// Part size for large objects (multipart upload, ranged reads): 5M to
    /// 5G. A file that would need more than 10,000 parts gets larger ones.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = crate::size::parse_size)]
    pub part_size: u64,
    /// Parts of one large object in flight at once (fewer when they would
    /// not fit in --buffer-memory).
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub part_concurrency: u16,
    /// Copy through ferry even between two buckets of one store. By default
    /// an s3:// store with the same endpoint and credentials on both sides
    /// copies the files itself (CopyObject): no data moves through ferry,
    /// and --bwlimit does not apply.
    #[arg(long)]
    pub no_store_copy: bool,
    /// Files larger than SIZE (at most 5G, the most one copy request
    /// takes) are copied within a store in parts of --part-size
    /// (UploadPartCopy, --part-concurrency at a time), which stores copy
    /// faster than one CopyObject.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = crate::size::parse_size)]
    pub copy_cutoff: u64,
    /// Retries of a request that failed with a temporary error (503, 429, resets).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: usize,
    /// Stop the run (exit 2) when a store cannot be connected to and no item
    /// has succeeded for this many seconds, instead of failing every item
    /// left in turn; a rerun resumes.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub unreachable_limit: u64,

    /// Checkpoint database: sqlite://PATH or postgres://… (default: a SQLite file
    /// in $FERRY_STATE_DIR, else ~/.local/state/ferry/).
    #[arg(long, value_name = "URL", env = "FERRY_STATE_DB")]
    pub state_db: Option<String>,
    /// Do not keep a checkpoint (a rerun then re-checks everything).
    #[arg(long)]
    pub no_checkpoint: bool,
}
