//! The server configuration: a TOML file, every key overridable by an
//! environment variable, and defaults that make `ferry serve` work alone.
//!
//! | key | variable | default |
//! |---|---|---|
//! | `listen` | `FERRY_LISTEN` | `127.0.0.1:8790` |
//! | `database` | `FERRY_DATABASE` | `sqlite://<data dir>/ferry.db` |
//! | `workers.tasks` | `FERRY_WORKERS_TASKS` | 4 |
//! | `workers.threads` | `FERRY_WORKERS_THREADS` | 256 |
//! | `workers.lease_secs` | `FERRY_WORKERS_LEASE_SECS` | 30 |
//! | `workers.unreachable_secs` | `FERRY_WORKERS_UNREACHABLE_SECS` | 30: a task stops when a store cannot be connected to and nothing succeeded for this long |
//! | `api.request_timeout_secs` | `FERRY_API_REQUEST_TIMEOUT_SECS` | 30: an API request not answered in this time gets 503 (a database cut off by a partition would hold it for as long as TCP does) |
//! | `secret_key_file` | `FERRY_SECRET_KEY_FILE` | `<data dir>/secret.key` (created when missing) |
//! | `object_stores[i].<key>` | `FERRY_OBJECT_STORES_<i>_<KEY>` | one `file` store, endpoint `local`, root `<data dir>/buckets` |

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferry_storage::{ObjectStoreConfig, ObjectStores, Provider, UploadChecksum};
use ferry_store::SecretKey;
use serde::Deserialize;

use crate::cli::ServerOpts;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8790";
/// Endpoint name of the embedded object store.
pub const LOCAL_ENDPOINT: &str = "local";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database: Option<String>,
    secret_key_file: Option<PathBuf>,
    #[serde(default)]
    workers: WorkersFile,
    #[serde(default)]
    api: ApiFile,
    #[serde(default)]
    object_stores: Vec<ObjectStoreConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiFile {
    request_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkersFile {
    tasks: Option<usize>,
    threads: Option<usize>,
    lease_secs: Option<i64>,
    unreachable_secs: Option<u64>,
}

/// Everything `serve`, `worker` and the admin commands need.
#[derive(Debug)]
pub struct Config {
    pub listen: String,
    pub database: String,
    pub data_dir: PathBuf,
    pub shares_root: PathBuf,
    pub object_stores: ObjectStores,
    pub worker_tasks: usize,
    pub worker_threads: usize,
    pub lease_secs: i64,
    /// A task stops when a store cannot be connected to and nothing
    /// succeeded for this long.
    pub unreachable_limit: std::time::Duration,
    /// An API request not answered in this time gets 503.
    pub request_timeout: std::time::Duration,
    /// Whether the database is the embedded SQLite file.
    pub embedded_db: bool,
    /// The key that seals access-key secrets in the database; every node of
    /// a deployment must use the same one.
    pub secret_key_file: PathBuf,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn env_parse<T: std::str::FromStr>(key: &str) -> Result<Option<T>> {
    match env(key) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| anyhow::anyhow!("{key}={v:?} is not a valid value")),
    }
}

/// Apply `FERRY_OBJECT_STORES_<i>_<KEY>` overrides.
fn override_store(i: usize, s: &mut ObjectStoreConfig) -> Result<()> {
    let k = |key: &str| format!("FERRY_OBJECT_STORES_{i}_{key}");
    if let Some(v) = env(&k("ENDPOINT")) {
        s.endpoint = v;
    }
    if let Some(v) = env(&k("REGION")) {
        s.region = Some(v);
    }
    if let Some(v) = env(&k("ACCESS_KEY_ID")) {
        s.access_key_id = Some(v);
    }
    if let Some(v) = env(&k("SECRET_ACCESS_KEY")) {
        s.secret_access_key = Some(v);
    }
    if let Some(v) = env(&k("SESSION_TOKEN")) {
        s.session_token = Some(v);
    }
    if let Some(v) = env_parse::<bool>(&k("PATH_STYLE"))? {
        s.path_style = v;
    }
    if let Some(v) = env(&k("ROOT")) {
        s.root = Some(PathBuf::from(v));
    }
    if let Some(v) = env(&k("CHECKSUM")) {
        s.checksum = UploadChecksum::parse(&v)
            .ok_or_else(|| anyhow::anyhow!("{}={v:?}: use crc32c or none", k("CHECKSUM")))?;
    }
    Ok(())
}

/// A `file` store's buckets must lie outside the shares directory, and
/// not hold it: tasks copy between a share and a bucket, and a bucket
/// inside the share (or the share inside a bucket) would be copied into
/// itself again on every run, or deleted as "not in the source".
fn check_file_stores_apart(stores: &ObjectStores, shares_root: &std::path::Path) -> Result<()> {
    for s in stores.all() {
        let (Provider::File, Some(root)) = (s.provider, &s.root) else { continue };
        let (root_n, shares_n) = (ferry_engine::resolved(root), ferry_engine::resolved(shares_root));
        if root_n.starts_with(&shares_n) || shares_n.starts_with(&root_n) {
            bail!(
                "object store {:?}: its root {} overlaps the shares directory {}: tasks would copy \
                 shares into themselves; choose a root outside both",
                s.endpoint,
                root_n.display(),
                shares_root.display()
            );
        }
    }
    Ok(())
}

fn parse_file(text: &str) -> Result<FileConfig> {
    Ok(toml::from_str(text)?)
}

impl Config {
    pub fn load(opts: &ServerOpts, listen: Option<&str>) -> Result<Config> {
        let file: FileConfig = match &opts.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                parse_file(&text).with_context(|| format!("config file {} is not valid", path.display()))?
            }
        };
        // Absolute, so that share paths shown by the API do not depend on the working directory.
        let data_dir = std::path::absolute(&opts.data_dir)
            .with_context(|| format!("cannot resolve the data directory {}", opts.data_dir.display()))?;
        let mut stores = file.object_stores;
        for (i, s) in stores.iter_mut().enumerate() {
            override_store(i, s)?;
        }
        if stores.is_empty() {
            stores.push(ObjectStoreConfig::local(LOCAL_ENDPOINT, data_dir.join("buckets")));
        }
        let object_stores =
            ObjectStores::new(stores).context("invalid [[object_stores]] in the configuration")?;
        let shares_root = data_dir.join("shares");
        check_file_stores_apart(&object_stores, &shares_root)?;
        let database = opts.database.clone().or(file.database);
        let embedded_db = database.is_none();
        let database =
            database.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("ferry.db").display()));
        let worker_tasks = env_parse("FERRY_WORKERS_TASKS")?.or(file.workers.tasks).unwrap_or(4);
        let worker_threads = env_parse("FERRY_WORKERS_THREADS")?.or(file.workers.threads).unwrap_or(256);
        let lease_secs = env_parse("FERRY_WORKERS_LEASE_SECS")?.or(file.workers.lease_secs).unwrap_or(30);
        let unreachable_secs =
            env_parse("FERRY_WORKERS_UNREACHABLE_SECS")?.or(file.workers.unreachable_secs).unwrap_or(30);
        if worker_tasks == 0 || worker_threads == 0 || lease_secs < 2 || unreachable_secs == 0 {
            bail!(
                "workers: tasks and threads must be at least 1, lease_secs at least 2 and unreachable_secs \
                 at least 1"
            );
        }
        let request_timeout_secs =
            env_parse("FERRY_API_REQUEST_TIMEOUT_SECS")?.or(file.api.request_timeout_secs).unwrap_or(30);
        if request_timeout_secs == 0 {
            bail!("api: request_timeout_secs must be at least 1");
        }
        let secret_key_file = env("FERRY_SECRET_KEY_FILE")
            .map(PathBuf::from)
            .or(file.secret_key_file)
            .unwrap_or_else(|| data_dir.join("secret.key"));
        Ok(Config {
            secret_key_file,
            listen: listen.map(str::to_owned).or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into()),
            database,
            shares_root,
            data_dir,
            object_stores,
            worker_tasks,
            worker_threads,
            lease_secs,
            unreachable_limit: std::time::Duration::from_secs(unreachable_secs),
            request_timeout: std::time::Duration::from_secs(request_timeout_secs),
            embedded_db,
        })
    }

    /// Create the data directories and open (migrating) the database.
    pub async fn open_store(&self) -> Result<ferry_store::Store> {
        create_dir(&self.data_dir)?;
        create_dir(&self.shares_root)?;
        for s in self.object_stores.all() {
            if let (Provider::File, Some(root)) = (s.provider, &s.root) {
                create_dir(root)?;
            }
        }
        let store = ferry_store::Store::connect(&self.database).await.context("cannot open the database")?;
        // A worker cut off from PostgreSQL gives its tasks up before its
        // lease runs out; its claims on their sync pairs end with the lease,
        // so that the worker that takes a task over does not wait on them.
        let lease = std::time::Duration::from_secs(self.lease_secs.unsigned_abs());
        let store = store.with_secret_key(self.secret_key()?).with_claim_timeout(lease);
        let sealed = store.seal_stored_secrets().await.context("cannot seal stored secrets")?;
        if sealed > 0 {
            tracing::info!(sealed, "sealed access-key secrets stored in clear by an earlier version");
        }
        Ok(store)
    }

    /// The key in `secret_key_file`, made (readable by the owner only) when
    /// the file does not exist.
    fn secret_key(&self) -> Result<SecretKey> {
        let path = &self.secret_key_file;
        match std::fs::read_to_string(path) {
            Ok(text) => SecretKey::from_hex(&text)
                .with_context(|| format!("{} must hold 64 hex digits (a 32-byte key)", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key = SecretKey::generate();
                if let Some(dir) = path.parent() {
                    create_dir(dir)?;
                }
                let mut f =
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .with_context(|| format!("cannot create the secret key file {}", path.display()))?;
                writeln!(f, "{}", key.to_hex())
                    .with_context(|| format!("cannot write the secret key file {}", path.display()))?;
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read the secret key file {}", path.display())),
        }
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_is_valid() {
        let file = parse_file(include_str!("../../../ferry.sample.toml")).unwrap();
        assert_eq!(file.listen.as_deref(), Some(DEFAULT_LISTEN));
        assert_eq!(file.workers.lease_secs, Some(30));
        assert_eq!(file.workers.unreachable_secs, Some(30));
        assert_eq!(file.api.request_timeout_secs, Some(30));
        let stores = ObjectStores::new(file.object_stores).unwrap();
        assert!(stores.find("http://127.0.0.1:3900").is_some());
        assert!(stores.find(LOCAL_ENDPOINT).is_some());
    }

    #[test]
    fn a_file_store_overlapping_the_shares_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let load = |root: &str| {
            let cfg = tmp.path().join("ferry.toml");
            let text =
                format!("[[object_stores]]\nendpoint = \"local\"\nprovider = \"file\"\nroot = \"{root}\"\n");
            std::fs::write(&cfg, text).unwrap();
            let opts = ServerOpts { data_dir: data.clone(), config: Some(cfg), database: None };
            Config::load(&opts, None).map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        let d = data.display();
        for bad in [format!("{d}/shares/b"), format!("{d}"), format!("{d}/x/../shares"), "/".to_string()] {
            let err = load(&bad).unwrap_err();
            assert!(err.contains("overlaps the shares directory"), "{bad}: {err}");
        }
        load(&format!("{d}/buckets")).unwrap();
        load(&format!("{d}/shares-buckets")).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = format!("{:#}", parse_file("listen = \"x\"\nlisten_addr = 1\n").unwrap_err());
        assert!(err.contains("listen_addr"), "{err}");
        let err = format!(
            "{:#}",
            parse_file("[[object_stores]]\nendpoint = \"a\"\nprovider = \"ftp\"\n").unwrap_err()
        );
        assert!(err.contains("ftp"), "{err}");
        let err = format!(
            "{:#}",
            parse_file("[[object_stores]]\nendpoint = \"a\"\nprovider = \"s3\"\nchecksum = \"md5\"\n")
                .unwrap_err()
        );
        assert!(err.contains("checksum \"md5\": use \"crc32c\" or \"none\""), "{err}");
    }
}
