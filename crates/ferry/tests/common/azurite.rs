//! Azurite, Microsoft's Azure Blob Storage emulator, for `azblob://` tests.
//!
//! `.ci/run` installs it with npm and sets `FERRY_TEST_AZURITE` to its
//! `azurite-blob` script, which makes a missing Azurite a failure instead of
//! a skip. Without the variable, `azurite-blob` on PATH is used when present.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// Start the blob service on a free loopback port with these containers;
    /// `None` (the test is skipped) when Azurite is not installed here.
    pub async fn start(containers: &[&str]) -> Option<Azurite> {
        let required = std::env::var("FERRY_TEST_AZURITE").ok();
        let program = required.clone().unwrap_or_else(|| "azurite-blob".into());
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent"])
            .args(["--skipApiVersionCheck", "--location"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                assert!(required.is_none(), "FERRY_TEST_AZURITE={program} cannot start: {e}");
                eprintln!("skipped: Azurite is not installed (npm install azurite; see .ci/run)");
                return None;
            }
        };
        let az = Azurite { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not come up on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for c in containers {
            az.create_container(c).await;
        }
        Some(az)
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (Azurite's path-style URLs).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ACCOUNT", ACCOUNT.to_string()),
            ("AZURE_STORAGE_KEY", KEY.into()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Create a container: a Put Container request signed with the account
    /// key (Shared Key scheme; ferry itself never creates containers).
    async fn create_container(&self, name: &str) {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        // Twelve standard header lines (all empty here), the x-ms- headers,
        // then the resource: account twice for path-style URLs.
        let to_sign = format!(
            "PUT\n{}x-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container",
            "\n".repeat(11)
        );
        let key = base64::engine::general_purpose::STANDARD.decode(KEY).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let r = reqwest::Client::new()
            .put(format!("{}/{name}?restype=container", self.endpoint()))
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header("content-length", "0")
            .header("authorization", format!("SharedKey {ACCOUNT}:{sig}"))
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

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
