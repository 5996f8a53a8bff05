//! Parsing `SRC`/`DST` strings into locations and building OpenDAL operators.
//!
//! | form | store |
//! |---|---|
//! | `/dir`, `./dir`, `dir` | local POSIX directory |
//! | `s3://bucket/prefix?endpoint=..&region=..&path_style=true&checksum=crc32c` | any S3-compatible store |
//! | `obs://`, `oss://`, `cos://`, `gcs://bucket/prefix`, `azblob://container/prefix` | native clouds |
//! | `file:///dir` | a bucket emulated by a local directory (metadata in xattrs) |
//! | `memory://` | in-memory store, for tests |

use std::path::PathBuf;
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{services, Operator};
use url::Url;

use crate::error::{Error, Result};
use crate::object::ObjectRoot;
use crate::s3direct::{Keys, S3Direct};
use crate::OpenOptions;

/// Which object store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Obs,
    Oss,
    Cos,
    Azblob,
    Gcs,
    File,
    Memory,
}

impl Scheme {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "s3" => Scheme::S3,
            "obs" => Scheme::Obs,
            "oss" => Scheme::Oss,
            "cos" => Scheme::Cos,
            "azblob" | "wasb" | "wasbs" => Scheme::Azblob,
            "gcs" | "gs" => Scheme::Gcs,
            "file" => Scheme::File,
            "memory" => Scheme::Memory,
            _ => return None,
        })
    }
}

/// A parsed location, before anything is contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationSpec {
    Posix(PathBuf),
    Object(ObjectSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    pub scheme: Scheme,
    /// Bucket or container; for `file://` the directory; empty for `memory://`.
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub anonymous: bool,
    /// `checksum=crc32c|none` from the URL; `None` leaves it to the
    /// environment (`AWS_REQUEST_CHECKSUM_CALCULATION`), then CRC32C.
    pub checksum: Option<UploadChecksum>,
    /// The string the user gave, without query, for messages.
    pub display: String,
}

const SCHEMES_HELP: &str =
    "use a local path, or s3://, obs://, oss://, cos://, azblob://, gcs://, file:///dir, memory://";

/// An endpoint given in a location: an http(s) URL with a host.
fn checked_endpoint(v: &str) -> Result<String> {
    let fine = Url::parse(v).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if fine {
        Ok(v.to_string())
    } else {
        Err(Error::InvalidLocation(format!("option endpoint={v:?}: give http://host:port or https://host")))
    }
}

impl LocationSpec {
    /// The local directory holding this location's items: a local path, or
    /// the directory behind a `file://` store and its prefix.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match self {
            LocationSpec::Posix(p) => Some(p.clone()),
            LocationSpec::Object(o) if o.scheme == Scheme::File => {
                Some(PathBuf::from(&o.bucket).join(o.prefix.trim_matches('/')))
            }
            LocationSpec::Object(_) => None,
        }
    }

    pub fn parse(input: &str) -> Result<Self> {
        if input.is_empty() {
            return Err(Error::InvalidLocation("empty location: give a path or a URL".into()));
        }
        let Some((scheme, _)) = input.split_once("://") else {
            if input.contains(':') && !input.starts_with('/') && !input.starts_with('.') {
                if let Some((maybe_scheme, _)) = input.split_once(':') {
                    let lower = maybe_scheme.to_ascii_lowercase();
                    if let Some(scheme) = Scheme::parse(&lower) {
                        let form = match scheme {
                            Scheme::File => "file:///absolute/dir".to_string(),
                            Scheme::Memory => "memory://prefix".to_string(),
                            _ => format!("{lower}://bucket/prefix"),
                        };
                        return Err(Error::InvalidLocation(format!(
                            "malformed location {input:?}: write {form}"
                        )));
                    }
                }
            }
            return Ok(LocationSpec::Posix(PathBuf::from(input)));
        };
        let Some(scheme) = Scheme::parse(&scheme.to_ascii_lowercase()) else {
            return Err(Error::InvalidLocation(format!(
                "unknown scheme {scheme:?} in {input:?}: {SCHEMES_HELP}"
            )));
        };
        let url = Url::parse(input)
            .map_err(|e| Error::InvalidLocation(format!("malformed location {input:?}: {e}")))?;
        let display = input.split('?').next().unwrap_or(input).to_string();
        let mut spec = ObjectSpec {
            scheme,
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: true,
            anonymous: false,
            checksum: None,
            display,
        };
        for (k, v) in url.query_pairs() {
            let takers: &[Scheme] = match k.as_ref() {
                "endpoint" => {
                    &[Scheme::S3, Scheme::Obs, Scheme::Oss, Scheme::Cos, Scheme::Azblob, Scheme::Gcs]
                }
                "region" | "path_style" | "checksum" => &[Scheme::S3],
                "anonymous" => &[Scheme::S3, Scheme::Gcs],
                _ => &[scheme],
            };
            if !takers.contains(&scheme) {
                return Err(Error::InvalidLocation(format!(
                    "option {k} in {input:?}: {} locations do not take it",
                    input.split("://").next().unwrap_or_default()
                )));
            }
            match k.as_ref() {
                "endpoint" => spec.endpoint = Some(checked_endpoint(&v)?),
                "region" => spec.region = Some(v.into_owned()),
                "path_style" => spec.path_style = parse_bool(&k, &v)?,
                "anonymous" => spec.anonymous = parse_bool(&k, &v)?,
                "checksum" => {
                    spec.checksum = Some(UploadChecksum::parse(&v).ok_or_else(|| {
                        Error::InvalidLocation(format!("option checksum={v:?}: use crc32c or none"))
                    })?)
                }
                other => {
                    return Err(Error::InvalidLocation(format!(
                        "unknown option {other:?} in {input:?}: known options are endpoint, region, path_style, anonymous, checksum"
                    )))
                }
            }
        }
        let path = decoded(input, url.path())?;
        match scheme {
            Scheme::File => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(Error::InvalidLocation(format!(
                        "{input:?}: file:// takes an absolute directory, as in file:///srv/bucket"
                    )));
                }
                if path.is_empty() || path == "/" {
                    return Err(Error::InvalidLocation(format!(
                        "{input:?}: give the directory that holds the bucket, as in file:///srv/bucket"
                    )));
                }
                spec.bucket = path;
            }
            // `memory://prefix`: all of it, host included, is the prefix.
            Scheme::Memory => {
                let raw = raw_location(input);
                check_raw_prefix(input, raw)?;
                spec.prefix = decoded(input, raw.trim_matches('/'))?;
            }
            _ => {
                let bucket = url.host_str().unwrap_or_default();
                if bucket.is_empty() {
                    return Err(Error::InvalidLocation(format!(
                        "{input:?} names no bucket: write {}://bucket/prefix",
                        input.split("://").next().unwrap_or_default()
                    )));
                }
                spec.bucket = bucket.to_string();
                spec.prefix = path.trim_start_matches('/').to_string();
                let raw_prefix = raw_location(input).split_once('/').map(|(_, p)| p).unwrap_or_default();
                check_raw_prefix(input, raw_prefix)?;
            }
        }
        Ok(LocationSpec::Object(spec))
    }
}

/// `path` (of `input`) percent-decoded.
fn decoded(input: &str, path: &str) -> Result<String> {
    let path = percent_encoding::percent_decode_str(path).decode_utf8();
    path.map(|p| p.into_owned())
        .map_err(|_| Error::InvalidLocation(format!("{input:?}: path is not valid UTF-8")))
}

/// What follows `scheme://` in `input`, before any `?`: as the user wrote
/// it (the URL parser resolves `..`).
fn raw_location(input: &str) -> &str {
    let raw = input.split_once("://").map(|(_, r)| r).unwrap_or_default();
    raw.split('?').next().unwrap_or_default()
}

/// A prefix with `//`, `.` or `..` components names no place in a bucket
/// that maps onto paths: refused.
fn check_raw_prefix(input: &str, raw_prefix: &str) -> Result<()> {
    let raw_prefix = raw_prefix.strip_suffix('/').unwrap_or(raw_prefix);
    let dots =
        |c: &str| matches!(c.to_ascii_lowercase().as_str(), "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e.");
    if raw_prefix.contains("//") || raw_prefix.split('/').any(dots) {
        return Err(Error::InvalidLocation(format!(
            "{input:?}: the prefix may not contain '//', '.' or '..' components"
        )));
    }
    Ok(())
}

/// What an S3 upload sends for the server to check each request body
/// against: with CRC32C, every PutObject and UploadPart carries
/// `x-amz-checksum-crc32c` of the bytes as ferry read them, and the store
/// refuses a body changed on the way (`BadDigest`, retried) instead of
/// storing it; large objects read back are checked against the CRC32C the
/// store kept (see [`crate::StoredCrc`]). Stores that refuse the header take
/// `checksum=none`, which turns both off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadChecksum {
    #[default]
    Crc32c,
    None,
}

impl UploadChecksum {
    pub fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "crc32c" => Some(UploadChecksum::Crc32c),
            "none" | "off" | "false" => Some(UploadChecksum::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UploadChecksum::Crc32c => "crc32c",
            UploadChecksum::None => "none",
        }
    }

    /// The URL's choice, else the AWS SDKs' switch
    /// (`AWS_REQUEST_CHECKSUM_CALCULATION=when_required` sends none), else CRC32C.
    fn resolve(spec: Option<Self>, env: &dyn Env) -> Self {
        spec.unwrap_or_else(|| {
            match env.var("AWS_REQUEST_CHECKSUM_CALCULATION").map(|v| v.to_ascii_lowercase()).as_deref() {
                Some("when_required") => UploadChecksum::None,
                _ => UploadChecksum::Crc32c,
            }
        })
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::InvalidLocation(format!("option {key}={v:?}: use true or false"))),
    }
}

/// Where settings not given in the URL come from (the process environment in
/// the CLI; a map in tests).
pub trait Env: Send + Sync {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

fn need(env: &dyn Env, keys: &[&str], what: &str, display: &str) -> Result<String> {
    keys.iter()
        .find_map(|k| env.var(k))
        .ok_or_else(|| Error::Config(format!("missing {what} for {display}: set {}", keys.join(" or "))))
}

/// Build an operator for an object location, with retry and timeout layers.
/// `opts.create` makes a missing `file://` directory (a destination);
/// `opts.may_be_missing` reads one as an empty store and makes nothing (a
/// dry run's destination).
pub fn build_object_root(spec: &ObjectSpec, env: &dyn Env, opts: &OpenOptions) -> Result<ObjectRoot> {
    let OpenOptions { create, may_be_missing, parts, retries, .. } = *opts;
    let d = spec.display.as_str();
    let cfg_err = |e: opendal::Error| Error::Config(format!("cannot configure {d}: {e}"));
    let mut direct = None;
    let endpoint_vars: &'static [&'static str] = match spec.scheme {
        Scheme::S3 => &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        Scheme::Obs => &["OBS_ENDPOINT"],
        Scheme::Oss => &["OSS_ENDPOINT"],
        Scheme::Cos => &["COS_ENDPOINT"],
        Scheme::Azblob => &["AZURE_STORAGE_ENDPOINT"],
        Scheme::Gcs => &["GCS_ENDPOINT"],
        Scheme::File | Scheme::Memory => &[],
    };
    // The location's `?endpoint=`, else the first of the scheme's variables set.
    let mut endpoint_url = spec.endpoint.clone().or_else(|| endpoint_vars.iter().find_map(|k| env.var(k)));
    let op = match spec.scheme {
        Scheme::S3 => {
            let region = spec
                .region
                .clone()
                .or_else(|| env.var("AWS_REGION"))
                .or_else(|| env.var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            let mut b = services::S3::default().bucket(&spec.bucket).region(&region).disable_config_load();
            if let Some(ep) = &endpoint_url {
                b = b.endpoint(ep);
            }
            if !spec.path_style {
                b = b.enable_virtual_host_style();
            }
            let checksums = UploadChecksum::resolve(spec.checksum, env) == UploadChecksum::Crc32c;
            if checksums {
                b = b.checksum_algorithm("crc32c");
            }
            let keys = if spec.anonymous {
                b = b.skip_signature();
                None
            } else {
                let keys = Keys {
                    access_key_id: need(env, &["AWS_ACCESS_KEY_ID"], "credentials", d)?,
                    secret_access_key: need(env, &["AWS_SECRET_ACCESS_KEY"], "credentials", d)?,
                    session_token: env.var("AWS_SESSION_TOKEN"),
                };
                b = b.access_key_id(&keys.access_key_id).secret_access_key(&keys.secret_access_key);
                if let Some(t) = &keys.session_token {
                    b = b.session_token(t);
                }
                Some(keys)
            };
            direct = Some(S3Direct::new(
                endpoint_url.as_deref(),
                &spec.bucket,
                &region,
                spec.path_style,
                keys,
                retries,
                checksums,
            ));
            Operator::new(b).map_err(cfg_err)?
        }
        Scheme::Obs => {
            let ep = endpoint_url.clone().ok_or_else(|| {
                Error::Config(format!("missing endpoint for {d}: add ?endpoint=… or set OBS_ENDPOINT"))
            })?;
            // The OBS client keeps only the endpoint's host: a port would be
            // dropped in silence, and requests sent to the scheme's default.
            if Url::parse(&ep).is_ok_and(|u| u.port().is_some()) {
                return Err(Error::Config(format!(
                    "endpoint {ep} of {d} has a port, which obs:// cannot use: give one on the default \
                     port, or reach the store's S3 API with s3://{}/…?endpoint={ep}",
                    spec.bucket
                )));
            }
            let b = services::Obs::default()
                .bucket(&spec.bucket)
                .endpoint(&ep)
                .access_key_id(&need(env, &["OBS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"], "credentials", d)?)
                .secret_access_key(&need(
                    env,
                    &["OBS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"],
                    "credentials",
                    d,
                )?);
            Operator::new(b).map_err(cfg_err)?
        }
        Scheme::Oss => {
            let ep = endpoint_url.clone().ok_or_else(|| {
                Error::Config(format!("missing endpoint for {d}: add ?endpoint=… or set OSS_ENDPOINT"))
            })?;
            let b = services::Oss::default()
                .bucket(&spec.bucket)
                .endpoint(&ep)
                .access_key_id(&need(env, &["OSS_ACCESS_KEY_ID"], "credentials", d)?)
                .access_key_secret(&need(env, &["OSS_ACCESS_KEY_SECRET"], "credentials", d)?);
            Operator::new(b).map_err(cfg_err)?
        }
        Scheme::Cos => {
            let ep = endpoint_url.clone().ok_or_else(|| {
                Error::Config(format!("missing endpoint for {d}: add ?endpoint=… or set COS_ENDPOINT"))
            })?;
            let b = services::Cos::default()
                .bucket(&spec.bucket)
                .endpoint(&ep)
                .secret_id(&need(env, &["COS_SECRET_ID"], "credentials", d)?)
                .secret_key(&need(env, &["COS_SECRET_KEY"], "credentials", d)?);
            Operator::new(b).map_err(cfg_err)?
        }
        Scheme::Azblob => {
            let account = need(env, &["AZURE_STORAGE_ACCOUNT"], "account name", d)?;
            let ep = endpoint_url
                .get_or_insert_with(|| format!("https://{account}.blob.core.windows.net"))
                .clone();
            let b = services::Azblob::default()
                .container(&spec.bucket)
                .endpoint(&ep)
                .account_name(&account)
                .account_key(&need(env, &["AZURE_STORAGE_KEY"], "credentials", d)?);
            Operator::new(b).map_err(cfg_err)?
        }
        Scheme::Gcs => {
            let mut b = services::Gcs::default().bucket(&spec.bucket);
            if let Some(ep) = &endpoint_url {
                b = b.endpoint(ep);
            }
            if spec.anonymous {
                // Public buckets (and emulators): no token, no metadata server.
                b = b.skip_signature().disable_vm_metadata().disable_config_load();
            } else {
                b = b.credential_path(&need(env, &["GOOGLE_APPLICATION_CREDENTIALS"], "credentials", d)?);
            }
            Operator::new(b).map_err(cfg_err)?
        }
        Scheme::File => {
            let root = PathBuf::from(&spec.bucket);
            if create && !root.exists() {
                std::fs::create_dir_all(&root)
                    .map_err(|e| Error::io(format!("create directory {} of {d}", root.display()), e))?;
            }
            let missing = !root.exists();
            if missing && may_be_missing {
                // OpenDAL's Fs service would make the directory to open it.
                Operator::new(services::Memory::default()).map_err(cfg_err)?
            } else if !root.is_dir() {
                return Err(Error::Missing {
                    what: format!("directory {} of {d}", root.display()),
                    fix: "create it first, or check the path",
                });
            } else {
                // Writes go through the staging directory and are renamed into
                // place. OpenDAL creates it to open the store, and again before
                // each write: one that only reads (a source) leaves none behind.
                let staging = root.join(crate::FILE_STAGING_DIR);
                let existed = staging.exists();
                let b =
                    services::Fs::default().root(&spec.bucket).atomic_write_dir(&staging.to_string_lossy());
                let op = Operator::new(b).map_err(cfg_err)?;
                if !existed {
                    // Only when empty: another run may be writing through it.
                    let _ = std::fs::remove_dir(&staging);
                }
                op
            }
        }
        Scheme::Memory => Operator::new(services::Memory::default()).map_err(cfg_err)?,
    };
    let context = op.base_context().with_http_transport(http_transport());
    let op = op.with_context(context);
    let credentials: &'static str = match spec.scheme {
        Scheme::S3 => "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN",
        Scheme::Obs => {
            "OBS_ACCESS_KEY_ID / OBS_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        }
        Scheme::Oss => "OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET",
        Scheme::Cos => "COS_SECRET_ID / COS_SECRET_KEY",
        Scheme::Azblob => "AZURE_STORAGE_ACCOUNT / AZURE_STORAGE_KEY",
        Scheme::Gcs => "GOOGLE_APPLICATION_CREDENTIALS",
        Scheme::File | Scheme::Memory => "the credentials",
    };
    let endpoint = crate::object::Endpoint { url: endpoint_url, vars: endpoint_vars, credentials };
    let mut root = ObjectRoot::new(op, &spec.prefix, spec.display.clone(), parts).with_endpoint(endpoint);
    if spec.scheme == Scheme::File {
        root = root.with_local_root(PathBuf::from(&spec.bucket));
    }
    if let Some(direct) = direct {
        root = root.with_direct(direct);
    }
    let root = root.map_operators(|op| {
        op.layer(
            TimeoutLayer::new()
                .with_timeout(Duration::from_secs(300))
                .with_io_timeout(Duration::from_secs(120)),
        )
        .layer(
            RetryLayer::new()
                .with_jitter()
                .with_max_times(retries)
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(5))
                .with_notify(note_retry),
        )
    });
    Ok(root)
}

/// How long a connection to a store may take to open. The HTTP client's
/// default is none: an endpoint that drops connection attempts (a firewall,
/// a mistyped address) held each request for as long as the kernel retries
/// (about two minutes), and every retry again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP transport of every store, with [`CONNECT_TIMEOUT`]; one client,
/// so that connections are pooled across locations as before.
pub(crate) fn http_transport() -> opendal::HttpTransporter {
    static TRANSPORT: std::sync::LazyLock<opendal::HttpTransporter> = std::sync::LazyLock::new(|| {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("an HTTP client with the default TLS setup");
        opendal::HttpTransporter::new(opendal_http_transport_reqwest::ReqwestTransport::new(client))
    });
    TRANSPORT.clone()
}

/// A request about to be sent again: one line with `-v`, nothing
/// otherwise (a retry that succeeds is no news, one that does not fails its
/// item with the reason). OpenDAL's own notice is a warning that prints the
/// error's `Debug` form: several lines, and a backtrace when
/// `RUST_BACKTRACE` is set, which costs the process ~125 MiB to symbolize.
fn note_retry(event: opendal::layers::RetryEvent<'_>) {
    tracing::debug!(
        "retrying {} (attempt {}) in {:.2}s: {}",
        event.op.into_static(),
        event.attempt,
        event.retry_after.as_secs_f64(),
        event.err
    );
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn retry_once() -> OpenOptions {
        OpenOptions { retries: 1, ..OpenOptions::default() }
    }

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, key: &str) -> Option<String> {
            self.0.get(key).map(|v| v.to_string())
        }
    }

    fn obj(s: &str) -> ObjectSpec {
        match LocationSpec::parse(s).unwrap() {
            LocationSpec::Object(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_local_paths() {
        for p in ["/data", "./data", "data", "rel/dir"] {
            assert_eq!(LocationSpec::parse(p).unwrap(), LocationSpec::Posix(p.into()));
        }
    }

    #[test]
    fn parses_object_urls() {
        let s = obj("s3://bkt/some/prefix/?endpoint=http://127.0.0.1:9000&region=garage&path_style=true");
        assert_eq!(s.scheme, Scheme::S3);
        assert_eq!(s.bucket, "bkt");
        assert_eq!(s.prefix, "some/prefix/");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region.as_deref(), Some("garage"));
        assert_eq!(obj("file:///srv/b").bucket, "/srv/b");
        assert_eq!(obj("azblob://container/p").scheme, Scheme::Azblob);
        assert_eq!(obj("s3://b/with%20space").prefix, "with space");
        assert_eq!(obj("memory://").scheme, Scheme::Memory);
        assert_eq!(obj("memory://x/y/").prefix, "x/y", "the host is part of the prefix");
        assert_eq!(obj("memory://x").prefix, "x");
        assert_eq!(obj("memory://a%20b/c%20d").prefix, "a b/c d");
        assert!(obj("s3://b/p").path_style, "path-style by default (most self-hosted stores)");
        assert!(!obj("s3://b/p?path_style=false").path_style);
    }

    #[test]
    fn rejects_bad_locations_with_a_fix() {
        let err = |s: &str| LocationSpec::parse(s).unwrap_err().to_string();
        assert!(err("ftp://x/y").contains("unknown scheme \"ftp\""));
        assert!(err("s3:bucket").contains("s3://bucket/prefix"));
        assert!(err("s3:///prefix").contains("names no bucket"));
        assert!(err("s3://b/p?colour=red").contains("unknown option"));
        assert!(err("s3://b/p?path_style=maybe").contains("true or false"));
        assert!(err("s3://b/p?checksum=sha1").contains("use crc32c or none"));
        assert!(err("gcs://b/p?checksum=none")
            .contains("option checksum in \"gcs://b/p?checksum=none\": gcs locations do not take it"));
        assert!(err("oss://b/p?anonymous=true").contains("oss locations do not take it"));
        assert!(err("file:///x?region=y").contains("file locations do not take it"));
        assert!(err("S3:bucket/p").contains("write s3://bucket/prefix"));
        assert!(err("file:data").contains("write file:///absolute/dir"));
        for ep in ["", "127.0.0.1:9000", "localhost:9000", "ftp://h"] {
            let e = err(&format!("s3://b/p?endpoint={ep}"));
            assert!(e.contains("give http://host:port or https://host"), "{ep}: {e}");
        }
        LocationSpec::parse("s3://b/p?endpoint=https://s3.example.com").unwrap();
        assert!(err("s3://b/a/../c").contains("'..'"));
        assert!(err("s3://b/a/%2E./c").contains("'..'"));
        assert!(err("memory://x/../y").contains("'..'"));
        assert!(err("memory://x//y").contains("'..'"));
        assert!(err("file://host/dir").contains("absolute directory"));
        assert!(err("").contains("empty"));
    }

    #[test]
    fn upload_checksums_default_to_crc32c() {
        let env = |v: &'static str| MapEnv(HashMap::from([("AWS_REQUEST_CHECKSUM_CALCULATION", v)]));
        let resolve = |url: &str, v| UploadChecksum::resolve(obj(url).checksum, &env(v));
        assert_eq!(resolve("s3://b/p", ""), UploadChecksum::Crc32c);
        assert_eq!(resolve("s3://b/p", "when_supported"), UploadChecksum::Crc32c);
        assert_eq!(resolve("s3://b/p", "WHEN_REQUIRED"), UploadChecksum::None);
        assert_eq!(resolve("s3://b/p?checksum=crc32c", "when_required"), UploadChecksum::Crc32c);
        assert_eq!(resolve("s3://b/p?checksum=none", ""), UploadChecksum::None);
    }

    #[tokio::test]
    async fn a_store_not_listening_is_named_with_its_endpoint() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spec = obj(&format!("s3://bkt/p?endpoint=http://127.0.0.1:{port}"));
        let env = MapEnv(HashMap::from([("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]));
        let root = build_object_root(&spec, &env, &OpenOptions::default()).unwrap();
        let e = root.check_reachable().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot connect to http://127.0.0.1:{port} (connection refused): check that the store is up \
                 and the endpoint is right (?endpoint=… or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)"
            )
        );
        // One request of a run: short, and worth trying again.
        let e = root.read_small("f").await.unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(e.to_string().ends_with(": cannot connect to the store (connection refused)"), "{e}");
    }

    #[tokio::test]
    async fn a_store_that_never_answers_a_connection_times_out_with_its_endpoint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Fill its accept queue: connection attempts beyond it get no answer.
        let mut held = Vec::new();
        while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            held.push(s);
            assert!(held.len() < 5000, "the accept queue never filled");
        }
        let spec = obj(&format!("s3://bkt/p?endpoint=http://{addr}"));
        let env = MapEnv(HashMap::from([("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]));
        let root = build_object_root(&spec, &env, &OpenOptions::default()).unwrap();
        let started = std::time::Instant::now();
        let e = root.check_reachable().await.unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot connect to http://{addr} (the connection timed out)")), "{e}");
        assert!(started.elapsed() < CONNECT_TIMEOUT * 2, "gave up after {:?}", started.elapsed());
    }

    #[test]
    fn missing_credentials_name_the_variable() {
        let spec = obj("s3://bkt/p?endpoint=http://127.0.0.1:1");
        let env = MapEnv(HashMap::new());
        let e = build_object_root(&spec, &env, &retry_once()).unwrap_err().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        let env = MapEnv(HashMap::from([("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]));
        build_object_root(&spec, &env, &retry_once()).unwrap();
        for url in ["obs://b/p", "oss://b/p", "cos://b/p"] {
            let e = build_object_root(&obj(url), &env, &retry_once()).unwrap_err().to_string();
            assert!(e.contains("endpoint"), "{url}: {e}");
        }
        let with_port = obj("obs://b/p?endpoint=http://127.0.0.1:9000");
        let env_obs = MapEnv(HashMap::from([("OBS_ACCESS_KEY_ID", "a"), ("OBS_SECRET_ACCESS_KEY", "b")]));
        let e = build_object_root(&with_port, &env_obs, &retry_once()).unwrap_err().to_string();
        assert!(e.contains("has a port, which obs:// cannot use") && e.contains("s3://b/"), "{e}");
        build_object_root(&obj("obs://b/p?endpoint=https://obs.example.com"), &env_obs, &retry_once())
            .unwrap();
        let e = build_object_root(&obj("gcs://b/p"), &env, &retry_once()).unwrap_err();
        assert!(e.to_string().contains("GOOGLE_APPLICATION_CREDENTIALS"), "{e}");
        // A public bucket needs no credentials.
        build_object_root(&obj("gcs://b/p?anonymous=true"), &env, &retry_once()).unwrap();
    }
}
