//! The object stores a server may reach. A backend target names a bucket and
//! an endpoint; the endpoint must be one of these, so that no request can
//! make the server connect to a host an operator did not list (SSRF).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::location::Env;
use crate::{Location, OpenOptions, UploadChecksum};

/// What a prefix segment keeps unencoded in a location URL.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Which kind of store an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Any S3-compatible store (also OBS, OSS and COS through their S3 APIs).
    S3,
    Obs,
    Oss,
    Cos,
    /// Buckets emulated by subdirectories of `root` (the embedded default).
    File,
}

/// One `[[object_stores]]` entry of the server configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// What targets give as `obs.endpoint` (`http://127.0.0.1:9000`, `local`).
    pub endpoint: String,
    pub provider: Provider,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
    /// Path-style requests (`http://host/bucket/key`), as most self-hosted stores need.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// For `provider = "file"`: the directory holding one subdirectory per bucket.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// For `provider = "s3"`: the checksum each upload request carries for
    /// the store to verify, `"crc32c"` (the default) or `"none"` for stores
    /// that refuse `x-amz-checksum-*` headers.
    #[serde(default, deserialize_with = "upload_checksum")]
    pub checksum: UploadChecksum,
}

fn upload_checksum<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<UploadChecksum, D::Error> {
    let v = String::deserialize(d)?;
    UploadChecksum::parse(&v)
        .ok_or_else(|| serde::de::Error::custom(format!("checksum {v:?}: use \"crc32c\" or \"none\"")))
}

fn default_true() -> bool {
    true
}

impl ObjectStoreConfig {
    /// A `file` store: one subdirectory of `root` per bucket, no credentials.
    pub fn local(endpoint: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        ObjectStoreConfig {
            endpoint: endpoint.into(),
            provider: Provider::File,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            path_style: true,
            root: Some(root.into()),
            checksum: UploadChecksum::default(),
        }
    }
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("endpoint", &self.endpoint)
            .field("provider", &self.provider)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("path_style", &self.path_style)
            .field("root", &self.root)
            .field("checksum", &self.checksum)
            .finish()
    }
}

/// Settings handed to the location builder instead of the process environment.
struct MapEnv(HashMap<&'static str, String>);

impl Env for MapEnv {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// The configured object stores, looked up by endpoint.
#[derive(Debug, Clone, Default)]
pub struct ObjectStores {
    stores: Vec<ObjectStoreConfig>,
    /// Buckets opened by [`ObjectStores::reuse_bucket`], by location and options.
    opened: Arc<Mutex<HashMap<String, Location>>>,
}

/// Opened buckets kept for reuse; beyond this many the cache starts over.
const MAX_OPENED: usize = 256;

/// Endpoints compare without scheme case, trailing `/` or default scheme:
/// `HTTP://Host:9000/` and `http://host:9000` are the same endpoint.
fn normalize(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/').to_ascii_lowercase();
    e.strip_prefix("https://").map(|rest| format!("https://{rest}")).unwrap_or(e)
}

/// S3's bucket naming rules (3–63 of `a-z0-9.-`, starting and ending with a
/// letter or digit), which also keep a `file` bucket inside its root.
pub fn check_bucket_name(bucket: &str) -> std::result::Result<(), String> {
    let ok_len = (3..=63).contains(&bucket.len());
    let ok_chars =
        bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends && !bucket.contains("..") {
        Ok(())
    } else {
        Err("must be 3 to 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
            .into())
    }
}

impl ObjectStores {
    pub fn new(stores: Vec<ObjectStoreConfig>) -> Result<Self> {
        for (i, s) in stores.iter().enumerate() {
            if s.endpoint.trim().is_empty() {
                return Err(Error::Config(format!("object_stores[{i}]: endpoint is empty")));
            }
            if s.provider == Provider::File && s.root.is_none() {
                return Err(Error::Config(format!(
                    "object_stores[{i}] ({}): provider \"file\" needs root = \"/dir\"",
                    s.endpoint
                )));
            }
            if s.provider != Provider::File && (s.access_key_id.is_none() || s.secret_access_key.is_none()) {
                return Err(Error::Config(format!(
                    "object_stores[{i}] ({}): set access_key_id and secret_access_key",
                    s.endpoint
                )));
            }
            if s.provider != Provider::S3 && s.checksum != UploadChecksum::default() {
                return Err(Error::Config(format!(
                    "object_stores[{i}] ({}): checksum applies to provider \"s3\" only; remove it",
                    s.endpoint
                )));
            }
            if stores[..i].iter().any(|o| normalize(&o.endpoint) == normalize(&s.endpoint)) {
                return Err(Error::Config(format!("object_stores: endpoint {} is listed twice", s.endpoint)));
            }
        }
        Ok(ObjectStores { stores, opened: Arc::default() })
    }

    pub fn all(&self) -> &[ObjectStoreConfig] {
        &self.stores
    }

    /// The configured store of this endpoint, if any.
    pub fn find(&self, endpoint: &str) -> Option<&ObjectStoreConfig> {
        let want = normalize(endpoint);
        self.stores.iter().find(|s| {
            let have = normalize(&s.endpoint);
            // A client may leave out the scheme of an `http(s)://` endpoint.
            have == want || have.split_once("://").is_some_and(|(_, rest)| rest == want)
        })
    }

    /// Open `bucket/prefix` on the store of `endpoint`, checking that it is reachable.
    /// The location URL of a bucket of a configured store, and the
    /// environment that carries its credentials.
    fn bucket_url(&self, endpoint: &str, bucket: &str, prefix: &str) -> Result<(String, MapEnv)> {
        let store = self.find(endpoint).ok_or_else(|| {
            Error::Config(format!("endpoint {endpoint:?} is not one of the configured object stores"))
        })?;
        check_bucket_name(bucket).map_err(|why| Error::Config(format!("bucket name {bucket:?} {why}")))?;
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            ferry_model::validate_rel_path(prefix)
                .map_err(|e| Error::InvalidLocation(format!("prefix of bucket {bucket}: {e}")))?;
        }
        // The prefix is a literal key prefix. The location URL decodes its
        // path, and resolves `%2e%2e` as `..`: encode every segment so that
        // `a%20b` and `%2e%2e` come back as the names they are.
        let encoded: Vec<String> =
            prefix.split('/').map(|seg| utf8_percent_encode(seg, SEGMENT).to_string()).collect();
        let path =
            if prefix.is_empty() { bucket.to_string() } else { format!("{bucket}/{}", encoded.join("/")) };
        let mut env = HashMap::new();
        let url = match store.provider {
            Provider::File => {
                let root = store.root.as_ref().expect("checked in new");
                let root = std::path::absolute(root)
                    .map_err(|e| Error::io(format!("resolve {}", root.display()), e))?;
                format!("file://{}/{path}", root.display())
            }
            provider => {
                let scheme = match provider {
                    Provider::Obs => "obs",
                    Provider::Oss => "oss",
                    Provider::Cos => "cos",
                    _ => "s3",
                };
                let (ak_var, sk_var) = match provider {
                    Provider::Obs => ("OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY"),
                    Provider::Oss => ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"),
                    Provider::Cos => ("COS_SECRET_ID", "COS_SECRET_KEY"),
                    _ => ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                };
                env.insert(ak_var, store.access_key_id.clone().unwrap_or_default());
                env.insert(sk_var, store.secret_access_key.clone().unwrap_or_default());
                if let Some(t) = &store.session_token {
                    env.insert("AWS_SESSION_TOKEN", t.clone());
                }
                let mut endpoint = store.endpoint.trim_end_matches('/').to_string();
                if !endpoint.contains("://") {
                    endpoint = format!("https://{endpoint}");
                }
                let mut url = url::Url::parse(&format!("{scheme}://{path}"))
                    .map_err(|e| Error::Config(format!("bucket {bucket:?}: {e}")))?;
                url.query_pairs_mut().append_pair("endpoint", &endpoint);
                // The options only s3:// locations take.
                if provider == Provider::S3 {
                    url.query_pairs_mut()
                        .append_pair("region", store.region.as_deref().unwrap_or("us-east-1"))
                        .append_pair("path_style", if store.path_style { "true" } else { "false" })
                        .append_pair("checksum", store.checksum.as_str());
                }
                url.to_string()
            }
        };
        Ok((url, MapEnv(env)))
    }

    /// Open a bucket of a configured store (see [`Location::open`]): checks
    /// that it is reachable, every time.
    pub async fn open_bucket(
        &self,
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        opts: OpenOptions,
    ) -> Result<Location> {
        let (url, env) = self.bucket_url(endpoint, bucket, prefix)?;
        Location::open(&url, &env, opts).await
    }

    /// Like [`ObjectStores::open_bucket`], but a bucket opened before with
    /// the same prefix and options is handed out again, with its HTTP client
    /// and open connections, and without another reachability check. Tasks
    /// use this: building a client and checking the bucket cost tens of
    /// milliseconds, more than a small task's work.
    pub async fn reuse_bucket(
        &self,
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        opts: OpenOptions,
    ) -> Result<Location> {
        let (url, env) = self.bucket_url(endpoint, bucket, prefix)?;
        let key = format!("{url}\n{opts:?}");
        if let Some(loc) = self.opened.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(loc.clone());
        }
        let loc = Location::open(&url, &env, opts).await?;
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if opened.len() >= MAX_OPENED {
            opened.clear();
        }
        opened.insert(key, loc.clone());
        Ok(loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            endpoint: endpoint.into(),
            provider: Provider::S3,
            region: None,
            access_key_id: Some("ak".into()),
            secret_access_key: Some("sk".into()),
            session_token: None,
            path_style: true,
            root: None,
            checksum: UploadChecksum::default(),
        }
    }

    #[test]
    fn endpoints_match_without_case_slash_or_scheme() {
        let stores = ObjectStores::new(vec![s3("http://127.0.0.1:9000/")]).unwrap();
        assert!(stores.find("http://127.0.0.1:9000").is_some());
        assert!(stores.find("HTTP://127.0.0.1:9000/").is_some());
        assert!(stores.find("127.0.0.1:9000").is_some());
        assert!(stores.find("http://127.0.0.1:9001").is_none());
        assert!(stores.find("http://169.254.169.254").is_none());
    }

    #[test]
    fn config_errors_name_the_store() {
        let mut no_keys = s3("http://a");
        no_keys.secret_access_key = None;
        let err = ObjectStores::new(vec![no_keys]).unwrap_err().to_string();
        assert!(err.contains("http://a") && err.contains("secret_access_key"), "{err}");
        let err = ObjectStores::new(vec![s3("http://a"), s3("HTTP://a/")]).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn s3_buckets_carry_the_configured_upload_checksum() {
        let mut plain = s3("http://a");
        plain.checksum = UploadChecksum::None;
        let stores = ObjectStores::new(vec![s3("http://b"), plain]).unwrap();
        let url = |e| stores.bucket_url(e, "bkt", "p").unwrap().0;
        assert!(url("http://b").ends_with("&checksum=crc32c"), "{}", url("http://b"));
        assert!(url("http://a").ends_with("&checksum=none"), "{}", url("http://a"));
        let mut obs = s3("http://c");
        (obs.provider, obs.checksum) = (Provider::Obs, UploadChecksum::None);
        let err = ObjectStores::new(vec![obs]).unwrap_err().to_string();
        assert!(err.contains("http://c") && err.contains("provider \"s3\" only"), "{err}");
        let bad = serde_json::from_str::<ObjectStoreConfig>(
            r#"{"endpoint": "x", "provider": "s3", "checksum": "md5"}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("use \"crc32c\" or \"none\""));
    }

    #[test]
    fn every_provider_gives_a_location_it_can_open() {
        use crate::LocationSpec;
        for provider in [Provider::S3, Provider::Obs, Provider::Oss, Provider::Cos] {
            let mut store = s3("http://a");
            (store.provider, store.region) = (provider, Some("r1".into()));
            let stores = ObjectStores::new(vec![store]).unwrap();
            let (url, _) = stores.bucket_url("http://a", "bkt", "p").unwrap();
            LocationSpec::parse(&url).unwrap_or_else(|e| panic!("{provider:?}: {url}: {e}"));
        }
    }

    #[test]
    fn bucket_names_cannot_escape() {
        for bad in ["..", "../etc", "a/b", "ab", "-abc", "abc-", "ABC", "a..b", ""] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
        for good in ["abc", "my-bucket.1", "demo"] {
            assert!(check_bucket_name(good).is_ok(), "{good}");
        }
    }

    #[tokio::test]
    async fn prefixes_are_literal_names_that_stay_in_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        for (path, data) in
            [("bkt/%2e%2e/in", "in"), ("bkt/a%20b/in", "in"), ("bkt/top", "top"), ("evil/x", "x")]
        {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        let store = ObjectStoreConfig::local("local", dir.path());
        let stores = ObjectStores::new(vec![store]).unwrap();
        for prefix in ["%2e%2e", "a%20b/"] {
            let Ok(Location::Object(root)) =
                stores.open_bucket("local", "bkt", prefix, OpenOptions::default()).await
            else {
                panic!("{prefix}: not opened as an object root");
            };
            let mut seen = Vec::new();
            root.list_recursive(|e| seen.push(e.path), |k, why| panic!("{k}: {why}")).await.unwrap();
            assert_eq!(seen, ["in"], "{prefix}: only the literal directory");
        }
        for bad in ["..", "a/../..", "%2e%2e/../../evil", "a//b"] {
            let err = stores.open_bucket("local", "bkt", bad, OpenOptions::default()).await.unwrap_err();
            assert!(err.to_string().contains("prefix"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn unknown_endpoint_is_refused_before_any_connection() {
        let stores = ObjectStores::new(vec![s3("http://127.0.0.1:9")]).unwrap();
        let err = stores.open_bucket("http://10.0.0.1", "abc", "", OpenOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains("not one of the configured"), "{err}");
    }
}
