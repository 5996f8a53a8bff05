//! Exercises `S3Server` with a real S3 client (OpenDAL, no retry layer) over HTTP.

use ferry_testkit::{OpClass, S3Server};
use futures::StreamExt;
use opendal::{services, ErrorKind, Operator};

fn operator(server: &S3Server, bucket: &str, secret: &str) -> Operator {
    let builder = services::S3::default()
        .bucket(bucket)
        .endpoint(&server.endpoint())
        .region(server.region())
        .access_key_id(server.access_key())
        .secret_access_key(secret)
        .disable_config_load()
        .disable_ec2_metadata();
    Operator::new(builder).expect("build operator")
}

fn op(server: &S3Server, bucket: &str) -> Operator {
    operator(server, bucket, server.secret_key())
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

async fn list_keys(op: &Operator) -> opendal::Result<Vec<String>> {
    let mut keys: Vec<String> = op
        .list_with("")
        .recursive(true)
        .await?
        .into_iter()
        .filter(|e| e.metadata().is_file())
        .map(|e| e.path().to_owned())
        .collect();
    keys.sort();
    Ok(keys)
}

#[tokio::test]
async fn put_get_list_round_trip() {
    let server = S3Server::start(&["alpha", "beta"]).await;
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    assert!(server.root().join("alpha").is_dir());
    let env = server.env();
    for k in ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(env.iter().any(|(name, _)| name == k), "{k} missing");
    }

    let op = op(&server, "alpha");
    let big = payload(300_000);
    op.write("a.txt", b"hello".to_vec()).await.unwrap();
    op.write("dir/sub/b.bin", big.clone()).await.unwrap();
    op.write("empty", Vec::<u8>::new()).await.unwrap();

    assert_eq!(op.read("a.txt").await.unwrap().to_vec(), b"hello");
    assert_eq!(op.read("dir/sub/b.bin").await.unwrap().to_vec(), big);
    assert!(op.read("empty").await.unwrap().is_empty());
    let range = op.read_with("dir/sub/b.bin").range(10..20).await.unwrap().to_vec();
    assert_eq!(range, big[10..20]);

    let meta = op.stat("dir/sub/b.bin").await.unwrap();
    assert_eq!(meta.content_length(), big.len() as u64);
    assert!(meta.etag().is_some());

    assert_eq!(list_keys(&op).await.unwrap(), ["a.txt", "dir/sub/b.bin", "empty"]);
    // Files really land under root/bucket/key.
    assert_eq!(std::fs::read(server.root().join("alpha/a.txt")).unwrap(), b"hello");

    let missing = op.read("nope").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    op.delete("a.txt").await.unwrap();
    assert_eq!(list_keys(&op).await.unwrap(), ["dir/sub/b.bin", "empty"]);

    // Other bucket is independent.
    assert!(list_keys(&self::op(&server, "beta")).await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_secret_is_rejected() {
    let server = S3Server::start(&["bkt"]).await;
    let bad = operator(&server, "bkt", "not-the-secret");
    let err = bad.write("x", b"data".to_vec()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(bad.read("x").await.is_err());
    assert!(!server.root().join("bkt/x").exists());
    // The right secret works.
    op(&server, "bkt").write("x", b"data".to_vec()).await.unwrap();
}

#[tokio::test]
async fn injected_put_errors() {
    let server = S3Server::start(&["bkt"]).await;
    let op = op(&server, "bkt");

    server.faults().set_error_rate(OpClass::Put, 1000, 503);
    let err = op.write("k", payload(10_000)).await.unwrap_err();
    assert!(err.is_temporary(), "503 should be temporary: {err}");
    assert!(err.to_string().contains("SlowDown"), "{err}");
    assert!(!server.root().join("bkt/k").exists());
    // Other classes are unaffected.
    assert!(list_keys(&op).await.unwrap().is_empty());

    server.faults().set_error_rate(OpClass::Any, 1000, 500);
    server.faults().set_error_rate(OpClass::Put, 0, 0);
    let err = op.write("k", b"x".to_vec()).await.unwrap_err();
    assert!(err.to_string().contains("InternalError"), "{err}");

    server.faults().clear();
    op.write("k", b"x".to_vec()).await.unwrap();
    assert_eq!(op.read("k").await.unwrap().to_vec(), b"x");
}

#[tokio::test]
async fn short_body_is_detected() {
    let server = S3Server::start(&["bkt"]).await;
    let op = op(&server, "bkt");
    let data = payload(200_000);
    op.write("obj", data.clone()).await.unwrap();

    server.faults().set_short_body(1000);
    match op.read("obj").await {
        Err(_) => {}
        Ok(buf) => assert_ne!(buf.to_vec(), data, "short body went unnoticed"),
    }

    // Streaming shows exactly the first half arrives, then an error.
    let mut stream = op.reader("obj").await.unwrap().into_bytes_stream(..).await.unwrap();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "stream must end with an error");
    assert_eq!(got, data[..data.len() / 2]);

    server.faults().set_short_body(0);
    assert_eq!(op.read("obj").await.unwrap().to_vec(), data);
}

#[tokio::test]
async fn list_failures() {
    let server = S3Server::start(&["bkt"]).await;
    let op = op(&server, "bkt");
    op.write("k", b"v".to_vec()).await.unwrap();

    server.faults().set_list_failure(Some(403));
    let err = list_keys(&op).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_temporary());
    // Reads still work.
    assert_eq!(op.read("k").await.unwrap().to_vec(), b"v");

    server.faults().set_list_failure(None);
    server.faults().fail_list_after_pages(Some(1));
    assert_eq!(list_keys(&op).await.unwrap(), ["k"]);
    let err = list_keys(&op).await.unwrap_err();
    assert!(err.to_string().contains("InternalError"), "{err}");
    assert!(list_keys(&op).await.is_err(), "failure must be permanent");

    server.faults().clear();
    assert_eq!(list_keys(&op).await.unwrap(), ["k"]);
}

#[tokio::test]
async fn counts_increment() {
    let server = S3Server::start(&["bkt"]).await;
    let op = op(&server, "bkt");
    assert_eq!(server.counts().total(), 0);

    op.write("k", b"v".to_vec()).await.unwrap();
    let c = server.counts();
    assert_eq!(c.put, 1, "{c:?}");

    op.read("k").await.unwrap();
    op.stat("k").await.unwrap();
    list_keys(&op).await.unwrap();
    op.delete("k").await.unwrap();
    let c = server.counts();
    assert_eq!((c.put, c.get, c.head, c.list, c.delete), (1, 1, 1, 1, 1), "{c:?}");

    // Injected failures are counted as well.
    server.faults().set_error_rate(OpClass::Get, 1000, 429);
    assert!(op.read("k").await.is_err());
    assert_eq!(server.counts().get, 2);
}

#[tokio::test]
async fn drop_stops_server() {
    let server = S3Server::start(&["bkt"]).await;
    let endpoint = server.endpoint();
    let addr = endpoint.trim_start_matches("http://").to_owned();
    let root = server.root().to_owned();
    drop(server);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    assert!(!root.exists());
}

#[tokio::test]
async fn standalone_binary_serves() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bkt")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-s3-test-server"))
        .arg("--root")
        .arg(dir.path())
        .args(["--port", "0", "--access-key", "ak1", "--secret-key", "sk1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let endpoint =
        line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected line {line:?}")).to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");

    let op = Operator::new(
        services::S3::default()
            .bucket("bkt")
            .endpoint(&endpoint)
            .region("us-east-1")
            .access_key_id("ak1")
            .secret_access_key("sk1")
            .disable_config_load()
            .disable_ec2_metadata(),
    )
    .unwrap();
    op.write("x/y", b"z".to_vec()).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("bkt/x/y")).unwrap(), b"z");
    child.kill().await.unwrap();
}

/// Pins down s3s-fs 0.14 behaviour that differs from AWS S3, so that changes are noticed.
#[tokio::test]
async fn s3s_fs_quirks() {
    let server = S3Server::start(&["bkt"]).await;
    let op = op(&server, "bkt");
    op.write("d/a.txt", b"hello".to_vec()).await.unwrap();

    // Listings carry size and last-modified (ms precision) but no ETag.
    let entries = op.list_with("").recursive(true).await.unwrap();
    let file = entries.iter().find(|e| e.path() == "d/a.txt").unwrap();
    assert_eq!(file.metadata().content_length(), 5);
    assert!(file.metadata().etag().is_none());
    assert!(file.metadata().last_modified().is_some());

    // HEAD on a key that is a directory on disk is a 500, not a 404.
    let err = op.stat("d").await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(err.to_string().contains("status: 500"), "{err}");

    // Directory markers become empty directories and are invisible to listings.
    op.create_dir("e/").await.unwrap();
    assert!(server.root().join("bkt/e").is_dir());
    assert_eq!(list_keys(&op).await.unwrap(), ["d/a.txt"]);

    // A key that collides with an existing "directory" fails with 500.
    assert!(op.write("d", b"x".to_vec()).await.is_err());

    // Bucket names are validated the AWS way (min. 3 chars).
    let short = S3Server::start(&["b"]).await;
    let err = self::op(&short, "b").write("k", b"v".to_vec()).await.unwrap_err();
    assert!(err.to_string().contains("InvalidBucketName"), "{err}");
}
