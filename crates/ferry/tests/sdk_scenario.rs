//! The official Huawei Cloud Python SDK (`huaweicloudsdksfsturbo`) drives a
//! whole scenario against `ferry serve`: shares, a target, every task type,
//! filters, deletion, jobs (tests/sdk/scenario.py).
//!
//! `.ci/run` installs the SDK (tests/sdk/requirements.txt) and sets
//! `FERRY_TEST_SDK=1`, which makes a missing SDK a failure instead of a skip.

mod common;

use std::process::Command;

use common::server::{Db, Server};
use common::S3Server;

fn sdk_available() -> bool {
    Command::new("python3")
        .args(["-c", "import huaweicloudsdksfsturbo.v1, huaweicloudsdkcore"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_sdk_scenario() {
    if !sdk_available() {
        assert!(
            std::env::var("FERRY_TEST_SDK").is_err(),
            "FERRY_TEST_SDK is set but the SDK is missing: pip install -r crates/ferry/tests/sdk/requirements.txt"
        );
        eprintln!("skipped: the Huawei Cloud SDK is not installed (pip install -r crates/ferry/tests/sdk/requirements.txt)");
        return;
    }
    for db in Db::all("sdk").await {
        let s3 = S3Server::start(&["sdk-bucket"]).await;
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("ferry.toml");
        std::fs::write(
            &config,
            format!(
                "[[object_stores]]\nendpoint = \"{}\"\nprovider = \"s3\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                s3.endpoint(),
                s3.access_key(),
                s3.secret_key()
            ),
        )
        .unwrap();
        // A few objects under the scenario's prefix.
        let seed = tmp.path().join("seed");
        std::fs::create_dir_all(seed.join("ds/sub")).unwrap();
        std::fs::write(seed.join("ds/one.txt"), b"one").unwrap();
        std::fs::write(seed.join("ds/sub/two.bin"), vec![2u8; 70_000]).unwrap();
        let r = common::ferry(
            &tmp.path().join("state"),
            &s3.env(),
            &["sync", seed.to_str().unwrap(), "s3://sdk-bucket"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);

        let server = Server::start(&tmp.path().join("data"), Some(&config), &db);
        let pair = server.admin("credential", "sdkproject");
        let (ak, sk) = pair.split_once(' ').unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/scenario.py");
        let out = Command::new("python3")
            .arg(script)
            .env("FERRY_ENDPOINT", &server.url)
            .env("FERRY_AK", ak)
            .env("FERRY_SK", sk)
            .env("FERRY_PROJECT", "sdkproject")
            .env("FERRY_BUCKET", "sdk-bucket")
            .env("FERRY_OBS_ENDPOINT", s3.endpoint())
            .env("FERRY_PREFIX", "ds/")
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "SDK scenario failed on {db:?}:\n{stdout}\n{stderr}");
        assert!(stdout.contains("scenario passed"), "{stdout}");
        // The preload of the scenario materialized the objects.
        let shares = std::fs::read_dir(server.data.join("shares")).unwrap().count();
        assert!(shares <= 1, "the scenario deletes its shares (left {shares})");
    }
}
