//! Test support for ferry: an in-process S3 server (s3s-fs over a temp dir) with
//! real SigV4 authentication and live-adjustable fault injection, and a TCP
//! proxy that partitions a client from its server.

mod faults;
mod proxy;
mod uploads;

pub use faults::{Faults, OpClass, RequestCounts};
pub use proxy::TcpProxy;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use faults::{classify, error_code, Class, Counters, InFlight};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

const ACCESS_KEY: &str = "ferrytestak";
const SECRET_KEY: &str = "ferrytestsecretkey0123456789";
const REGION: &str = "us-east-1";

/// State shared between the [`S3Server`] handle and the serving task.
#[derive(Debug, Default)]
struct Shared {
    faults: Faults,
    counters: Counters,
    in_flight: InFlight,
    uploads: uploads::Uploads,
    /// CRC64NVMEs the store answers for objects, by (bucket, key).
    crc64: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
    /// Objects the store answers for as encrypted with SSE-KMS.
    kms: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// The `x-amz-security-token` of each request, `None` where it had none.
    session_tokens: std::sync::Mutex<Vec<Option<String>>>,
    /// Copies within the store asked for (CopyObject and UploadPartCopy).
    copies: std::sync::atomic::AtomicU64,
}

/// An s3s-fs S3 server over a temporary directory, serving on `127.0.0.1:<random port>`.
///
/// Dropping it stops the server (accept loop and open connections) and deletes the
/// directory.
pub struct S3Server {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    root: PathBuf,
    // Dropped last (fields drop in declaration order).
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server").field("addr", &self.addr).field("root", &self.root).finish_non_exhaustive()
    }
}

impl S3Server {
    /// Starts s3s-fs over a fresh temp dir on 127.0.0.1:0 with SigV4 auth checked,
    /// and creates the given buckets. Must be called within a tokio runtime.
    ///
    /// # Panics
    /// If the temp dir, the buckets or the listener cannot be created.
    pub async fn start(buckets: &[&str]) -> S3Server {
        let dir =
            tempfile::Builder::new().prefix("ferry-s3-").tempdir().expect("create temp dir for S3 server");
        let root = dir.path().canonicalize().expect("canonicalize temp dir");
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).expect("create bucket dir");
        }
        let service = build_service(&root, ACCESS_KEY, SECRET_KEY).expect("build s3s-fs service");
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, service, shared.clone()));
        S3Server { task, shared, addr, root, _dir: dir }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// Always `us-east-1` (the server accepts any region in signatures).
    pub fn region(&self) -> &str {
        REGION
    }

    /// From now on, answer for this object as AWS does for one uploaded
    /// with the CRC64NVME current AWS SDKs send by default: a HEAD or a GET
    /// of the whole with `x-amz-checksum-mode: ENABLED` gets its
    /// `x-amz-checksum-crc64nvme` (of the content it has now).
    pub fn keep_crc64nvme(&self, bucket: &str, key: &str) {
        let data = std::fs::read(self.root.join(bucket).join(key)).expect("the object is stored");
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &data);
        self.shared.crc64.lock().expect("lock").insert((bucket.to_string(), key.to_string()), crc);
    }

    /// From now on, answer for this object as AWS does for one encrypted
    /// with SSE-KMS: its HEADs and GETs carry
    /// `x-amz-server-side-encryption: aws:kms`, and its ETag (in listings
    /// too) is 32 hex digits that are not the MD5 of its content.
    pub fn encrypt_with_kms(&self, bucket: &str, key: &str) {
        use base64::Engine as _;
        let data = std::fs::read(self.root.join(bucket).join(key)).expect("the object is stored");
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &data);
        // s3s-fs keeps an object's ETag in this file, and answers it
        // everywhere (its own naming).
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let info = self.root.join(format!(".bucket-{}.object-{}.internal.json", enc(bucket), enc(key)));
        let etag = format!("{crc:016x}{:016x}", !crc);
        std::fs::write(info, format!(r#"{{"e_tag":"{etag}"}}"#)).expect("write the object's ETag");
        self.shared.kms.lock().expect("lock").insert((bucket.to_string(), key.to_string()));
    }

    /// The s3s-fs root directory (canonicalized); buckets are its subdirectories.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Environment for a child process: `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".to_owned(), self.endpoint()),
            ("AWS_REGION".to_owned(), REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID".to_owned(), ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), SECRET_KEY.to_owned()),
        ]
    }

    /// Live-adjustable fault injection.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// `bucket/key` of every multipart upload begun and neither completed
    /// nor aborted.
    pub fn open_uploads(&self) -> Vec<String> {
        self.shared.uploads.open()
    }

    /// Snapshot of the requests seen so far, by class.
    pub fn counts(&self) -> RequestCounts {
        self.shared.counters.snapshot()
    }

    /// The session token (`x-amz-security-token`) each request so far came
    /// with, in order; `None` for a request without one.
    pub fn session_tokens(&self) -> Vec<Option<String>> {
        self.shared.session_tokens.lock().expect("tokens lock").clone()
    }

    /// Copies within the store asked for so far (requests with
    /// `x-amz-copy-source`: CopyObject and UploadPartCopy), counted as
    /// they arrive.
    pub fn copies(&self) -> u64 {
        self.shared.copies.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most requests handled at once since the previous call (or the
    /// start); the next count starts from those in flight now.
    pub fn take_peak_in_flight(&self) -> u64 {
        self.shared.in_flight.take_peak()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts all connections.
        self.task.abort();
    }
}

/// Serves s3s-fs over `root` (which must exist) with SigV4 auth for the given key
/// pair, without faults, until the future is dropped or accepting fails fatally.
/// Used by the `ferry-s3-test-server` binary.
pub async fn serve(
    listener: TcpListener,
    root: &Path,
    access_key: &str,
    secret_key: &str,
) -> std::io::Result<()> {
    let service = build_service(root, access_key, secret_key)?;
    accept_loop(listener, service, Arc::new(Shared::default())).await;
    Ok(())
}

fn build_service(root: &Path, access_key: &str, secret_key: &str) -> std::io::Result<S3Service> {
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| std::io::Error::other(format!("s3s-fs over {}: {e:?}", root.display())))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    Ok(builder.build())
}

async fn accept_loop(listener: TcpListener, service: S3Service, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let service = service.clone();
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            handle(service.clone(), shared.clone(), req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                // E.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(
    service: S3Service,
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, BoxError> {
    let class = classify(req.method(), req.uri());
    shared.counters.record(class);
    let token = req.headers().get("x-amz-security-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
    shared.session_tokens.lock().expect("tokens lock").push(token);
    let _in_flight = shared.in_flight.enter();
    let copy = req.headers().contains_key("x-amz-copy-source");
    if copy {
        shared.copies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    let delay = if copy { shared.faults.copy_delay() } else { Duration::ZERO } + shared.faults.delay(class);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = shared.faults.injected_status(class) {
        // Drain the request body so the client gets a clean error response rather
        // than a reset while it is still uploading.
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        return Ok(error_response(status));
    }

    if shared.faults.refuses_checksums()
        && req.headers().keys().any(|k| k.as_str().starts_with("x-amz-checksum"))
    {
        return Ok(s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "x-amz-checksum headers are not supported",
        ));
    }
    let call = uploads::recognise(req.method(), req.uri());
    let part = matches!(call, uploads::Call::Part { .. });
    if let (true, true, Some(status)) = (copy, part, shared.faults.part_copy_failure()) {
        return Ok(error_response(status));
    }
    if copy && shared.faults.refuses_copies() {
        return Ok(s3_error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "A header you provided implies functionality that is not implemented",
        ));
    }
    let method = req.method().clone();
    if let uploads::Call::List { bucket, prefix } = &call {
        return Ok(xml_response(StatusCode::OK, shared.uploads.list_xml(bucket, prefix)));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let part_crc = header("x-amz-checksum-crc32c").and_then(|v| {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    });
    // A part copied within the store has no body: its size is the range copied.
    let copied_range = header("x-amz-copy-source-range").and_then(|v| {
        let (start, end) = v.strip_prefix("bytes=")?.split_once('-')?;
        Some(end.parse::<u64>().ok()? + 1 - start.parse::<u64>().ok()?)
    });
    let part_size = copied_range.or_else(|| header("content-length").and_then(|v| v.parse::<u64>().ok()));
    let whole_checksum = header("x-amz-checksum-mode").is_some_and(|v| v.eq_ignore_ascii_case("enabled"))
        && header("range").is_none();
    let req = match upload_body(&shared, req).await? {
        Ok(req) => req,
        Err(resp) => return Ok(resp),
    };
    let resp = service.call(req).await.map_err(BoxError::from)?;
    let mut resp = resp.map(|b| b.boxed_unsync());
    if resp.status().is_success() {
        match call {
            uploads::Call::Create { bucket, key } => {
                let (parts, body) = resp.into_parts();
                let body = body.collect().await?.to_bytes();
                shared.uploads.created(&bucket, &key, &body);
                resp = Response::from_parts(
                    parts,
                    Full::new(body).map_err(|never| match never {}).boxed_unsync(),
                );
            }
            uploads::Call::Finish { bucket, key, upload_id } => {
                let complete = method == hyper::Method::POST;
                shared.uploads.finished(&bucket, &key, &upload_id, complete);
                if complete && shared.faults.lose_complete_answer() {
                    return Err("injected: CompleteMultipartUpload answer lost".into());
                }
            }
            uploads::Call::Part { bucket, key, upload_id, part } => {
                shared.uploads.part(&bucket, &key, &upload_id, part, part_size.unwrap_or(0), part_crc);
            }
            uploads::Call::Replace { bucket, key } => shared.uploads.replaced(&bucket, &key),
            uploads::Call::Read { bucket, key, part } => {
                if let Some(m) = shared.uploads.multipart(&bucket, &key) {
                    resp = with_parts(resp, &m, part, whole_checksum && method == hyper::Method::HEAD);
                }
                let object = (bucket, key);
                if shared.kms.lock().expect("lock").contains(&object) {
                    let kms = hyper::header::HeaderValue::from_static("aws:kms");
                    resp.headers_mut().insert("x-amz-server-side-encryption", kms);
                }
                let crc64 = shared.crc64.lock().expect("lock").get(&object).copied();
                if let (Some(crc), true, None) = (crc64, whole_checksum, part) {
                    use base64::Engine as _;
                    let value = base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());
                    let h = resp.headers_mut();
                    h.insert("x-amz-checksum-crc64nvme", value.parse().expect("header value"));
                    h.insert("x-amz-checksum-type", hyper::header::HeaderValue::from_static("FULL_OBJECT"));
                }
            }
            _ => {}
        }
    }

    if class == Class::List && resp.status().is_success() && shared.faults.list_truncated_without_token() {
        let (parts, body) = resp.into_parts();
        let xml = String::from_utf8_lossy(&body.collect().await?.to_bytes()).into_owned();
        let xml = xml.replace("<IsTruncated>false</IsTruncated>", "<IsTruncated>true</IsTruncated>");
        let xml = match (xml.find("<NextContinuationToken>"), xml.find("</NextContinuationToken>")) {
            (Some(a), Some(b)) => format!("{}{}", &xml[..a], &xml[b + "</NextContinuationToken>".len()..]),
            _ => xml,
        };
        let mut parts = parts;
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
        return Ok(Response::from_parts(
            parts,
            Full::new(Bytes::from(xml)).map_err(|never| match never {}).boxed_unsync(),
        ));
    }
    if class == Class::Get && resp.status().is_success() {
        let len = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| resp.body().size_hint().exact());
        if let Some(len) = len.filter(|&l| l > 0) {
            if len > 1 << 20 && shared.faults.corrupt_body() {
                // Too big to hold: change a byte of the first piece that streams by.
                let mut done = false;
                return Ok(resp.map(move |body| {
                    body.map_frame(move |frame| match frame.into_data() {
                        Ok(data) if !done && !data.is_empty() => {
                            done = true;
                            let mut bytes = data.to_vec();
                            let mid = bytes.len() / 2;
                            bytes[mid] = bytes[mid].wrapping_add(1);
                            Frame::data(Bytes::from(bytes))
                        }
                        Ok(data) => Frame::data(data),
                        Err(frame) => frame,
                    })
                    .boxed_unsync()
                }));
            }
            if shared.faults.corrupt_body() {
                let (parts, body) = resp.into_parts();
                let mut bytes = body.collect().await?.to_bytes().to_vec();
                let mid = bytes.len() / 2;
                bytes[mid] = bytes[mid].wrapping_add(1);
                return Ok(Response::from_parts(
                    parts,
                    Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed_unsync(),
                ));
            }
            if shared.faults.short_body() {
                return Ok(resp.map(|inner| ShortBody::new(inner, len / 2).boxed_unsync()));
            }
        }
    }
    Ok(resp)
}

/// The answer to a HEAD of a multipart object, as S3 gives it: with
/// `partNumber`, the size and place of that part and the number of parts;
/// with `x-amz-checksum-mode: ENABLED` (`checksum`), its composite CRC32C
/// if it has one. s3s-fs knows neither.
fn with_parts(
    mut resp: Response<RespBody>,
    c: &uploads::Multipart,
    part: Option<u32>,
    checksum: bool,
) -> Response<RespBody> {
    use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE};
    let value = |s: String| HeaderValue::from_str(&s).expect("header value");
    if let Some(n) = part.filter(|&n| n >= 1 && n as usize <= c.part_sizes.len()) {
        let start: u64 = c.part_sizes[..n as usize - 1].iter().sum();
        let len = c.part_sizes[n as usize - 1];
        let total: u64 = c.part_sizes.iter().sum();
        let h = resp.headers_mut();
        h.insert(CONTENT_LENGTH, value(len.to_string()));
        h.insert(CONTENT_RANGE, value(format!("bytes {start}-{}/{total}", start + len - 1)));
        h.insert("x-amz-mp-parts-count", value(c.part_sizes.len().to_string()));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    if let (true, Some(header)) = (checksum, c.checksum_header()) {
        let h = resp.headers_mut();
        h.insert("x-amz-checksum-crc32c", value(header));
        h.insert("x-amz-checksum-type", HeaderValue::from_static("COMPOSITE"));
    }
    resp
}

/// The body of an upload (PutObject, UploadPart), passed on as it came, or
/// with one byte changed when that fault is armed. An UploadPart whose
/// `x-amz-checksum-crc32c` does not match its body is refused with
/// `BadDigest`, as S3 does; s3s-fs checks it for PutObject only.
async fn upload_body(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Result<Request<s3s::Body>, Response<RespBody>>, BoxError> {
    let is_upload = req.method() == hyper::Method::PUT
        && !req.uri().path().trim_start_matches('/').split_once('/').is_none_or(|(_, key)| key.is_empty())
        && !req.headers().contains_key("x-amz-copy-source");
    if !is_upload {
        return Ok(Ok(req.map(s3s::Body::from)));
    }
    let is_part = req.uri().query().unwrap_or("").split('&').any(|kv| kv.starts_with("partNumber="));
    let want_crc =
        req.headers().get("x-amz-checksum-crc32c").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let corrupt = req.body().size_hint().lower() > 0 && shared.faults.corrupt_upload();
    let check = is_part && want_crc.is_some();
    if !(corrupt || check) {
        return Ok(Ok(req.map(s3s::Body::from)));
    }
    let (parts, body) = req.into_parts();
    let mut bytes = body.collect().await?.to_bytes().to_vec();
    if corrupt && !bytes.is_empty() {
        let mid = bytes.len() / 2;
        bytes[mid] = bytes[mid].wrapping_add(1);
    }
    if let (true, Some(want)) = (is_part, want_crc) {
        use base64::Engine as _;
        let got = base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&bytes).to_be_bytes());
        if got != want {
            let why = "The CRC32C you specified did not match the calculated checksum.";
            return Ok(Err(s3_error(StatusCode::BAD_REQUEST, "BadDigest", why)));
        }
    }
    Ok(Ok(Request::from_parts(parts, s3s::Body::from(Bytes::from(bytes)))))
}

fn error_response(status: u16) -> Response<RespBody> {
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    s3_error(status_code, error_code(status), "injected")
}

/// An S3 error document.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<RespBody> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>ferry-testkit</RequestId></Error>"
    );
    xml_response(status, xml)
}

fn xml_response(status: StatusCode, xml: String) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(Bytes::from(xml)).map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/xml"));
    resp
}

/// Passes through at most `remaining` bytes of `inner`, then (after a short pause so
/// the data is flushed to the socket) fails, which makes hyper abort the connection.
struct ShortBody {
    inner: RespBody,
    remaining: u64,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl ShortBody {
    fn new(inner: RespBody, remaining: u64) -> Self {
        ShortBody { inner, remaining, pause: None, done: false }
    }
}

impl Body for ShortBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.remaining == 0 {
            let pause =
                this.pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.done = true;
            return Poll::Ready(Some(Err("ferry-testkit: injected short body".into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let max = usize::try_from(this.remaining).unwrap_or(usize::MAX);
                    if data.len() > max {
                        data.truncate(max);
                    }
                    this.remaining -= data.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(None) => {
                // Inner ended early: fail right away.
                this.remaining = 0;
                self.poll_frame(cx)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
