//! moto's S3 server, for behaviours s3s-fs does not have: it lists `dir/`
//! marker objects and keeps their metadata, as S3 proper does.
//!
//! `.ci/run` installs it (tests/moto/requirements.txt) and sets
//! `FERRY_TEST_MOTO=1`, which makes a missing moto a failure instead of a skip.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Start `moto_server` on a free loopback port with these buckets;
    /// `None` (the test is skipped) when moto is not installed here.
    pub async fn start(buckets: &[&str]) -> Option<Moto> {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("FERRY_TEST_MOTO").is_err(),
                    "FERRY_TEST_MOTO is set but moto_server cannot start ({e}): \
                     pip install -r crates/ferry/tests/moto/requirements.txt"
                );
                eprintln!("skipped: moto is not installed (pip install -r crates/ferry/tests/moto/requirements.txt)");
                return None;
            }
        };
        let moto = Moto { child, port };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.get(moto.endpoint()).send().await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("moto_server did not come up on port {port}: {e}"),
            }
        }
        // moto does not check signatures: a plain PUT creates a bucket.
        for b in buckets {
            let r = client.put(format!("{}/{b}", moto.endpoint())).send().await.unwrap();
            assert!(r.status().is_success(), "create bucket {b}: {}", r.status());
        }
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
