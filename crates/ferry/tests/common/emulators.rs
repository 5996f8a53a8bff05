//! Storage emulators run as child processes, for what the in-process s3s-fs
//! cannot show: moto (S3 that lists `dir/` markers and keeps their
//! metadata), Azurite (Azure Blob) and gcp-storage-emulator (GCS).
//!
//! `.ci/run` installs them (tests/emulators/requirements.txt with pip,
//! Azurite with npm) and sets `FERRY_TEST_EMULATORS=1`, which makes a missing
//! emulator a failure instead of a skip.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// A running emulator on a free loopback port, killed when dropped.
pub struct Emulator {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// Start `program` with the arguments `args(port, data dir)` and wait
    /// until it accepts connections; `None` (skip) when it is not installed.
    async fn start(program: &str, args: impl FnOnce(u16, &Path) -> Vec<String>) -> Option<Emulator> {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = Command::new(program)
            .args(args(port, dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("FERRY_TEST_EMULATORS").is_err(),
                    "FERRY_TEST_EMULATORS is set but {program} cannot start ({e}); see .ci/run"
                );
                eprintln!("skipped: {program} is not installed (see .ci/run)");
                return None;
            }
        };
        let emu = Emulator { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not come up on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(emu)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_of(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// moto's S3 server: it lists `dir/` marker objects and keeps their
/// metadata, as S3 proper does.
pub struct Moto(Emulator);

impl Moto {
    pub async fn start(buckets: &[&str]) -> Option<Moto> {
        let emu = Emulator::start("moto_server", |port, _| {
            ["-H", "127.0.0.1", "-p", &port.to_string()].map(String::from).to_vec()
        })
        .await?;
        // moto does not check signatures: a plain PUT creates a bucket.
        let client = reqwest::Client::new();
        for b in buckets {
            let r = client.put(format!("{}/{b}", emu.url())).send().await.unwrap();
            assert!(r.status().is_success(), "create bucket {b}: {}", r.status());
        }
        Some(Moto(emu))
    }

    pub fn endpoint(&self) -> String {
        self.0.url()
    }

    pub fn env(&self) -> Vec<(String, String)> {
        env_of(&[
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ])
    }
}

/// Azurite, Microsoft's Azure Blob Storage emulator. `.ci/run` points
/// `FERRY_TEST_AZURITE` at its `azurite-blob` script; else PATH is searched.
pub struct Azurite(Emulator);

/// Azurite's well-known development account.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    pub async fn start(containers: &[&str]) -> Option<Azurite> {
        let program = std::env::var("FERRY_TEST_AZURITE").unwrap_or_else(|_| "azurite-blob".into());
        let emu = Emulator::start(&program, |port, dir| {
            let port = port.to_string();
            let dir = dir.to_string_lossy();
            [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port,
                "--silent",
                "--skipApiVersionCheck",
                "--location",
                &dir,
            ]
            .map(String::from)
            .to_vec()
        })
        .await?;
        let az = Azurite(emu);
        for c in containers {
            az.create_container(c).await;
        }
        Some(az)
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (Azurite's path-style URLs).
    pub fn endpoint(&self) -> String {
        format!("{}/{AZURE_ACCOUNT}", self.0.url())
    }

    pub fn env(&self) -> Vec<(String, String)> {
        env_of(&[
            ("AZURE_STORAGE_ACCOUNT", AZURE_ACCOUNT.into()),
            ("AZURE_STORAGE_KEY", AZURE_KEY.into()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint()),
        ])
    }

    /// Create a container: a Put Container request signed with the account
    /// key (Shared Key scheme; ferry itself never creates containers).
    async fn create_container(&self, name: &str) {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        // Eleven empty standard header lines after the verb, the x-ms-
        // headers, then the resource (the account twice in path-style URLs).
        let to_sign = format!(
            "PUT\n{}x-ms-date:{date}\nx-ms-version:{version}\n/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{name}\nrestype:container",
            "\n".repeat(11)
        );
        let key = base64::engine::general_purpose::STANDARD.decode(AZURE_KEY).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let r = reqwest::Client::new()
            .put(format!("{}/{name}?restype=container", self.endpoint()))
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header("content-length", "0")
            .header("authorization", format!("SharedKey {AZURE_ACCOUNT}:{sig}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "create container {name}: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

/// gcp-storage-emulator: the GCS JSON API, without authentication (reached
/// with `?anonymous=true`). It has no XML multipart uploads, which OpenDAL
/// uses for objects larger than one part.
pub struct Gcs(Emulator);

impl Gcs {
    pub async fn start(bucket: &str) -> Option<Gcs> {
        let emu = Emulator::start("gcp-storage-emulator", |port, _| {
            ["start", "-H", "127.0.0.1", "--port", &port.to_string(), "--default-bucket", bucket, "-q", "-M"]
                .map(String::from)
                .to_vec()
        })
        .await?;
        Some(Gcs(emu))
    }

    /// A `gcs://` location in the bucket.
    pub fn url(&self, bucket_and_prefix: &str) -> String {
        format!("gcs://{bucket_and_prefix}?anonymous=true&endpoint={}", self.0.url())
    }
}
