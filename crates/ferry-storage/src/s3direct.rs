//! The S3 calls ferry makes itself, where OpenDAL has no API for them,
//! signed with the same reqsign signer and sent through the same HTTP
//! transport OpenDAL uses.
//!
//! - Incomplete multipart uploads. A run killed while writing a large object
//!   leaves its multipart upload open: invisible in listings, but its parts
//!   are stored (and billed) until someone aborts it. OpenDAL aborts the
//!   uploads it sees fail, but it neither lists uploads nor shows their ids:
//!   ListMultipartUploads and AbortMultipartUpload are made here.
//! - The checksum a store recorded for an object (HeadObject with
//!   `x-amz-checksum-mode: ENABLED`, and with `partNumber=1` to learn the part
//!   size of a composite one), so that downloads of objects ferry did not
//!   write whole can still be checked end to end.
//! - Whether an object is encrypted by a key the store manages (SSE-KMS),
//!   asked only when a small object's content does not match its ETag.
//! - Copies within one store (CopyObject, and UploadPartCopy for larger
//!   objects): OpenDAL copies only within one bucket, and sends no
//!   metadata or version condition with a copy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use opendal::{Buffer, HttpTransporter};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqsign_aws_v4::{Credential, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, Signer};
use serde::Deserialize;

use crate::crc::StoredCrc;
use crate::error::{Error, Result};

/// An upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The object key, relative to the location's prefix.
    pub key: String,
    pub upload_id: String,
    /// When the store says the upload began.
    pub initiated: Option<SystemTime>,
}

/// Static credentials for signing.
pub(crate) struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// Speaks the calls above to one bucket.
pub(crate) struct S3Direct {
    /// `scheme://host[:port]/bucket` (path style) or `scheme://bucket.host[:port]`.
    base: String,
    signer: Option<Signer<Credential>>,
    transport: HttpTransporter,
    retries: usize,
    /// Whether the S3 additional checksums are in use on this location
    /// (`checksum=crc32c`): only then are stored checksums asked for.
    checksums: bool,
    /// Whether single-part ETags are still taken for MD5s of the content:
    /// until an object here turns out to be encrypted with SSE-KMS.
    md5_etags: AtomicBool,
    bucket: String,
    /// The endpoint and the credentials requests go with (empty when
    /// unsigned): two buckets alike here are in one store that can copy
    /// objects between them itself.
    store: String,
}

/// How long a request ferry makes itself may go unanswered, and a copy
/// within the store (a part, or an object up to `--copy-cutoff`).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const COPY_TIMEOUT: Duration = Duration::from_secs(900);

/// Answers to a HEAD that mean the store does not understand the question.
const NOT_UNDERSTOOD: [u16; 4] = [400, 405, 416, 501];

/// Characters S3 leaves alone in a canonical query value (RFC 3986 unreserved).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// The same in a path, where `/` separates segments.
const PATH: &AsciiSet = &QUERY.remove(b'/');

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ListResult {
    is_truncated: bool,
    next_key_marker: String,
    next_upload_id_marker: String,
    upload: Vec<UploadXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    #[serde(default)]
    initiated: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct InitiateXml {
    upload_id: String,
}

/// The answer of CopyObject, UploadPartCopy and CompleteMultipartUpload.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ResultXml {
    #[serde(rename = "ETag")]
    etag: String,
    /// A copied part's CRC32C, when the upload asked for one: it goes back
    /// in the completion, which S3 refuses without it.
    #[serde(rename = "ChecksumCRC32C")]
    crc32c: String,
}

/// The result of a copy or completion; one that names no ETag did not
/// come whole (a store answers 200 before it is done), and is a temporary
/// failure rather than a success.
fn copy_result(body: &[u8], context: &str) -> Result<ResultXml> {
    match quick_xml::de::from_reader::<_, ResultXml>(body) {
        Ok(r) if !r.etag.is_empty() => Ok(r),
        _ => Err(Error::Http {
            context: context.to_string(),
            status: 500,
            detail: "the answer names no ETag (cut short?)".into(),
        }),
    }
}

/// The error code of an S3 error document, when the body is one: copies
/// and completions can fail after their 200 was sent, and the store keeps
/// the connection alive meanwhile with whitespace before the document.
/// Looked at in every answer's body, so bytes are only read, not copied,
/// unless the body is an error.
fn late_error(body: &[u8]) -> Option<String> {
    let mut rest = body.trim_ascii_start();
    if rest.starts_with(b"<?xml") {
        let end = rest.windows(2).position(|w| w == b"?>")?;
        rest = rest[end + 2..].trim_ascii_start();
    }
    if !(rest.starts_with(b"<Error>") || rest.starts_with(b"<Error ")) {
        return None;
    }
    Some(quick_xml::de::from_reader::<_, ErrorXml>(rest).map(|e| e.code).unwrap_or_default())
}

/// The status a late error stands for, by its code: throttling and
/// internal errors are temporary, anything else is not.
fn late_status(code: &str) -> StatusCode {
    match code {
        "SlowDown" | "ServiceUnavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "InternalError" | "" => StatusCode::INTERNAL_SERVER_ERROR,
        "AccessDenied" => StatusCode::FORBIDDEN,
        "NotImplemented" => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A copy request's error, as [`Error::CopyRefused`] when it says the
/// store does not make such copies (501 or 405, or the code
/// `NotImplemented`), or not for these credentials (`AccessDenied`),
/// rather than that this object cannot be copied (an archived object's
/// `InvalidObjectState`, a key too long): those stay the item's.
fn refused(e: Error) -> Error {
    let code = |detail: &str| detail.split(':').next().unwrap_or_default().trim().to_string();
    let refusal = match &e {
        Error::Http { status: 405 | 501, .. } => true,
        Error::Http { detail, .. } => code(detail) == "NotImplemented",
        Error::PermissionDenied { what } => what.contains("(AccessDenied"),
        _ => false,
    };
    if refusal {
        Error::CopyRefused(e.to_string())
    } else {
        e
    }
}

/// User metadata (keys without the prefix) as request headers.
fn meta_headers(metadata: &HashMap<String, String>) -> Vec<(String, String)> {
    metadata.iter().map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone())).collect()
}

/// The headers naming a copy's source, pinned to the version listed.
fn copy_headers<'a>(source: &str, etag: Option<&str>) -> Vec<(&'a str, String)> {
    let mut headers = vec![("x-amz-copy-source", source.to_string())];
    if let Some(etag) = etag {
        headers.push(("x-amz-copy-source-if-match", etag.to_string()));
    }
    headers
}

/// The CompleteMultipartUpload document for the copied parts, each with
/// its CRC32C when the store gave one.
fn completion(parts: &[(u64, ResultXml)]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (n, part) in parts {
        xml.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag>", xml_text(&part.etag)));
        if !part.crc32c.is_empty() {
            xml.push_str(&format!("<ChecksumCRC32C>{}</ChecksumCRC32C>", xml_text(&part.crc32c)));
        }
        xml.push_str("</Part>");
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ErrorXml {
    code: String,
    message: String,
}

impl S3Direct {
    /// `endpoint` without a trailing slash; `None` means AWS in `region`.
    pub(crate) fn new(
        endpoint: Option<&str>,
        bucket: &str,
        region: &str,
        path_style: bool,
        keys: Option<Keys>,
        retries: usize,
        checksums: bool,
    ) -> Self {
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let base = if path_style {
            format!("{endpoint}/{bucket}")
        } else {
            match endpoint.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
                None => format!("https://{bucket}.{endpoint}"),
            }
        };
        let store = match &keys {
            Some(k) => format!(
                "{endpoint}\n{}\n{}\n{}",
                k.access_key_id,
                k.secret_access_key,
                k.session_token.as_deref().unwrap_or_default()
            ),
            None => String::new(),
        };
        let signer = keys.map(|k| {
            let mut provider = StaticCredentialProvider::new(&k.access_key_id, &k.secret_access_key);
            if let Some(t) = &k.session_token {
                provider = provider.with_session_token(t);
            }
            Signer::new(
                Context::new().with_http_send(crate::location::http_transport()),
                provider,
                RequestSigner::new("s3", region),
            )
        });
        let md5_etags = AtomicBool::new(checksums);
        Self {
            base,
            signer,
            transport: crate::location::http_transport(),
            retries,
            checksums,
            md5_etags,
            bucket: bucket.to_string(),
            store,
        }
    }

    /// Whether this location checks content (`checksum=crc32c`).
    pub(crate) fn checks_content(&self) -> bool {
        self.checksums
    }

    /// The MD5 of the content an object's ETag stands for (see
    /// [`crate::crc::md5_of_etag`]), while this location checks content.
    pub(crate) fn etag_md5(&self, etag: Option<&str>) -> Option<[u8; 16]> {
        self.md5_etags.load(Relaxed).then(|| crate::crc::md5_of_etag(etag?)).flatten()
    }

    /// The MD5 of the parts' MD5s a multipart object's ETag stands for, and
    /// the number of parts (see [`crate::crc::md5_of_multipart_etag`]),
    /// while this location checks content.
    pub(crate) fn multipart_etag_md5(&self, etag: Option<&str>) -> Option<([u8; 16], u64)> {
        self.md5_etags.load(Relaxed).then(|| crate::crc::md5_of_multipart_etag(etag?)).flatten()
    }

    /// The size of the first of an object's `parts` parts (HEAD with
    /// `partNumber=1`), if the store says and every part of that size but
    /// the last can hold the object's `size`. Not pinned to a version
    /// (`If-Match`): some stores (moto) compare it with the part's ETag.
    /// The reads that follow are pinned, and a part size of another
    /// version only makes the check fail.
    pub(crate) async fn first_part_size(
        &self,
        key: &str,
        (parts, size): (u64, u64),
        what: &str,
    ) -> Result<Option<u64>> {
        let url = format!("{}/{}?partNumber=1", self.base, utf8_percent_encode(key, PATH));
        let context = format!("read the part size of {what}");
        let Some(h) = self.head_if_understood(&url, &[], &context).await? else { return Ok(None) };
        let header =
            |name: &str| h.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        match (header("content-length"), header("x-amz-mp-parts-count")) {
            (Some(part_size), Some(n)) if n == parts && part_size > 0 => {
                Ok(crate::crc::layout_holds(parts, part_size, size).then_some(part_size))
            }
            _ => Ok(None),
        }
    }

    /// The size of the object stored under `key` (one HEAD), `None` when
    /// there is none: OpenDAL takes a key ending in `/` for a directory and
    /// keeps no size for it.
    pub(crate) async fn stored_size(&self, key: &str, what: &str) -> Result<Option<u64>> {
        let url = format!("{}/{}", self.base, utf8_percent_encode(key, PATH));
        match self.call(Method::HEAD, &url, &[], &format!("read the size of {what}")).await {
            Ok((h, _)) => {
                Ok(h.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
            }
            Err(Error::Http { status: 404, .. } | Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether an object's ETag may not be the MD5 of its content although
    /// it looks like one: the object is encrypted with a key the store
    /// manages (SSE-KMS, whose ETags are not MD5s), or the store cannot
    /// say. One HEAD, asked only after a mismatch; once an object is found
    /// encrypted, no ETag of this location is taken for an MD5 again
    /// (buckets encrypt all their objects alike).
    pub(crate) async fn etag_may_not_be_md5(
        &self,
        key: &str,
        etag: Option<&str>,
        what: &str,
    ) -> Result<bool> {
        let url = format!("{}/{}", self.base, utf8_percent_encode(key, PATH));
        let headers: Vec<(&str, String)> = etag.map(|e| ("if-match", e.to_string())).into_iter().collect();
        let context = format!("read the encryption of {what}");
        let Some(h) = self.head_if_understood(&url, &headers, &context).await? else { return Ok(true) };
        let sse = h.get("x-amz-server-side-encryption").and_then(|v| v.to_str().ok()).unwrap_or("");
        let kms =
            sse.starts_with("aws:kms") || h.contains_key("x-amz-server-side-encryption-customer-algorithm");
        if kms {
            self.md5_etags.store(false, Relaxed);
        }
        Ok(kms)
    }

    /// Whether the store can copy objects of `src` into this bucket itself:
    /// both are reached at one endpoint with the same credentials.
    pub(crate) fn same_store(&self, src: &S3Direct) -> bool {
        !self.store.is_empty() && self.store == src.store
    }

    /// How a copy names `key` of this bucket as its source
    /// (`x-amz-copy-source`).
    pub(crate) fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", utf8_percent_encode(&self.bucket, PATH), utf8_percent_encode(key, PATH))
    }

    /// Copy `source` (see [`Self::copy_source`]) to `key` within the store
    /// (CopyObject, for up to 5 GiB), if the source is still `etag`; the
    /// copy gets `metadata` (user metadata, keys without `x-amz-meta-`)
    /// instead of the source's. Returns the new object's ETag.
    ///
    /// The store keeps the source's checksum with the copy, but the
    /// composite checksum of a multipart source does not hold for a copy
    /// made in one piece (some stores keep it anyway): for such a source
    /// (`multipart`), while this location checks content, the store is
    /// asked for a CRC32C of the whole copy.
    pub(crate) async fn copy_object(
        &self,
        source: &str,
        (etag, multipart): (Option<&str>, bool),
        key: &str,
        metadata: &HashMap<String, String>,
        what: &str,
    ) -> Result<Option<String>> {
        let url = format!("{}/{}", self.base, utf8_percent_encode(key, PATH));
        let mut headers = copy_headers(source, etag);
        headers.push(("x-amz-metadata-directive", "REPLACE".into()));
        if multipart && self.checksums {
            headers.push(("x-amz-checksum-algorithm", "CRC32C".into()));
        }
        let meta = meta_headers(metadata);
        headers.extend(meta.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let context = format!("copy {what} within the store");
        let (_, body) = self.call(Method::PUT, &url, &headers, &context).await.map_err(refused)?;
        Ok(Some(copy_result(&body, &context)?.etag))
    }

    /// Copy `source` to `key` within the store as a multipart upload whose
    /// parts (UploadPartCopy, `concurrent` at a time) are `part_size` bytes
    /// but the last, each only if the source is still `etag`; the upload
    /// is aborted unless every part is copied. Returns the new ETag.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn copy_in_parts(
        &self,
        source: &str,
        etag: Option<&str>,
        key: &str,
        metadata: &HashMap<String, String>,
        (size, part_size, concurrent): (u64, u64, usize),
        what: &str,
    ) -> Result<Option<String>> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let object = format!("{}/{}", self.base, utf8_percent_encode(key, PATH));
        let user_meta = meta_headers(metadata);
        let mut meta: Vec<(&str, String)> = user_meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        // The store computes each part's CRC32C as it copies it, and keeps
        // their composite, as for ferry's own multipart uploads.
        if self.checksums {
            meta.push(("x-amz-checksum-algorithm", "CRC32C".into()));
        }
        let context = format!("copy {what} within the store");
        let (_, body) = self.call(Method::POST, &format!("{object}?uploads"), &meta, &context).await?;
        let upload_id = quick_xml::de::from_reader::<_, InitiateXml>(body.as_ref())
            .map(|x| x.upload_id)
            .ok()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::Http {
                context: context.clone(),
                status: 200,
                detail: "the answer to starting the upload names no upload id".into(),
            })?;
        let id = utf8_percent_encode(&upload_id, QUERY).to_string();
        let parts = size.div_ceil(part_size.max(1)).max(1);
        // The first part that fails stops the rest (those in flight are
        // dropped with the upload).
        let copied: Result<Vec<(u64, ResultXml)>> = futures::stream::iter(1..=parts)
            .map(|n| {
                let (object, id, context) = (&object, &id, &context);
                async move {
                    let start = (n - 1) * part_size;
                    let end = (start + part_size).min(size);
                    let mut headers = copy_headers(source, etag);
                    headers.push((
                        "x-amz-copy-source-range",
                        format!("bytes={start}-{}", end.saturating_sub(1)),
                    ));
                    let url = format!("{object}?partNumber={n}&uploadId={id}");
                    let (_, body) = self.call(Method::PUT, &url, &headers, context).await.map_err(refused)?;
                    Ok((n, copy_result(&body, context)?))
                }
            })
            .buffered(concurrent.max(1))
            .try_collect()
            .await;
        let res = match copied {
            Ok(done) => {
                let url = format!("{object}?uploadId={id}");
                self.call_with(Method::POST, &url, &[], Bytes::from(completion(&done)), &context)
                    .await
                    .and_then(|(_, body)| copy_result(&body, &context))
                    .map(|r| Some(r.etag))
            }
            Err(e) => Err(e),
        };
        if res.is_err() {
            if let Err(e) = self.abort(key, &upload_id, what).await {
                tracing::warn!(error = %e, "{what}: the copy's upload could not be aborted");
            }
        }
        res
    }

    /// Every incomplete upload whose key starts with `prefix` (full keys).
    /// `what` names the location in messages.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<(String, String, Option<SystemTime>)>> {
        let context = format!("list incomplete multipart uploads of {what}");
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut url = format!("{}/?uploads&prefix={}", self.base, utf8_percent_encode(prefix, QUERY));
            if !key_marker.is_empty() {
                url.push_str(&format!("&key-marker={}", utf8_percent_encode(&key_marker, QUERY)));
            }
            if !id_marker.is_empty() {
                url.push_str(&format!("&upload-id-marker={}", utf8_percent_encode(&id_marker, QUERY)));
            }
            let (_, body) = self.call(Method::GET, &url, &[], &context).await?;
            let page: ListResult = quick_xml::de::from_reader(body.as_ref()).map_err(|e| Error::Http {
                context: context.clone(),
                status: 200,
                detail: format!("unreadable answer: {e}"),
            })?;
            for u in page.upload {
                let initiated = u
                    .initiated
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(SystemTime::from);
                out.push((u.key, u.upload_id, initiated));
            }
            // A truncated page that does not move on would loop forever.
            if !page.is_truncated
                || page.next_key_marker.is_empty()
                || (page.next_key_marker == key_marker && page.next_upload_id_marker == id_marker)
            {
                return Ok(out);
            }
            key_marker = page.next_key_marker;
            id_marker = page.next_upload_id_marker;
        }
    }

    /// Abort one upload; an upload already gone counts as aborted.
    /// `what` names the object in messages.
    pub(crate) async fn abort(&self, key: &str, upload_id: &str, what: &str) -> Result<()> {
        let url = format!(
            "{}/{}?uploadId={}",
            self.base,
            utf8_percent_encode(key, PATH),
            utf8_percent_encode(upload_id, QUERY)
        );
        match self.call(Method::DELETE, &url, &[], &format!("abort the upload of {what}")).await {
            Err(Error::Http { status: 404, .. }) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The CRC32C the store recorded for `key` when it was written, if any:
    /// of the whole content, or composite (the CRC32C of the parts'
    /// CRC32Cs) for a multipart upload, with the size of its parts. `etag`
    /// pins the version: a changed object fails as `SourceChanged`. `what`
    /// names the object in messages.
    pub(crate) async fn stored_crc(
        &self,
        key: &str,
        etag: Option<&str>,
        size: u64,
        what: &str,
    ) -> Result<Option<StoredCrc>> {
        if !self.checksums {
            return Ok(None);
        }
        let url = format!("{}/{}", self.base, utf8_percent_encode(key, PATH));
        let mut headers = vec![("x-amz-checksum-mode", "ENABLED".to_string())];
        if let Some(etag) = etag {
            headers.push(("if-match", etag.to_string()));
        }
        let context = format!("read the stored checksum of {what}");
        let Some(h) = self.head_if_understood(&url, &headers, &context).await? else { return Ok(None) };
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let Some(value) = text("x-amz-checksum-crc32c") else {
            return Ok(text("x-amz-checksum-crc64nvme").and_then(StoredCrc::from_crc64nvme_header));
        };
        let Some((crc, parts)) = StoredCrc::from_head(value, text("x-amz-checksum-type"), text("etag"))
        else {
            return Ok(None);
        };
        let Some(parts) = parts else {
            return Ok(Some(StoredCrc::Whole(crc)));
        };
        // Parts are cut at one size but the last (as every common uploader
        // does): the first part's size is that size.
        let part_size = self.first_part_size(key, (parts, size), what).await?;
        Ok(part_size.and_then(|p| StoredCrc::composite(crc, parts, p, size)))
    }

    /// Whether every part of a multipart object is `part_size` bytes but
    /// the last (the layout a composite check assumes): one HEAD per part
    /// from the second on, a few at a time. Asked only after a mismatch.
    pub(crate) async fn parts_are_equal(
        &self,
        key: &str,
        etag: Option<&str>,
        (parts, part_size, size): (u64, u64, u64),
        what: &str,
    ) -> Result<bool> {
        use futures::StreamExt as _;
        let url = format!("{}/{}", self.base, utf8_percent_encode(key, PATH));
        let headers: Vec<(&str, String)> = etag.map(|e| ("if-match", e.to_string())).into_iter().collect();
        let context = format!("read the part sizes of {what}");
        let sizes: Vec<Result<Option<u64>>> = futures::stream::iter(2..=parts)
            .map(|n| {
                let (url, headers, context) = (&url, &headers, &context);
                async move {
                    let h =
                        self.head_if_understood(&format!("{url}?partNumber={n}"), headers, context).await?;
                    Ok(h.and_then(|h| h.get("content-length")?.to_str().ok()?.parse::<u64>().ok()))
                }
            })
            .buffered(8)
            .collect()
            .await;
        for (n, got) in (2..=parts).zip(sizes) {
            let want = if n == parts { size - (parts - 1) * part_size } else { part_size };
            if got? != Some(want) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A HEAD whose answer's headers are wanted; `None` when the store
    /// does not understand what was asked (a store that knows neither
    /// `x-amz-checksum-mode` nor `partNumber` says 400, 405, 416 or 501, or
    /// 403 behind a gateway), so that what it cannot tell is not checked
    /// rather than failed. Throttling and other errors stay errors.
    async fn head_if_understood(
        &self,
        url: &str,
        headers: &[(&str, String)],
        context: &str,
    ) -> Result<Option<http::HeaderMap>> {
        match self.call(Method::HEAD, url, headers, context).await {
            Ok((h, _)) => Ok(Some(h)),
            Err(Error::Http { status: 404, context, .. }) => Err(Error::NotFound { what: context }),
            Err(Error::Http { status, detail, .. }) if NOT_UNDERSTOOD.contains(&status) => {
                tracing::debug!(status, detail, "{context}: not understood, not checked");
                Ok(None)
            }
            // A gateway that refuses the extra header; a real lack of
            // permission fails the GET that follows, with its own message.
            Err(Error::PermissionDenied { what }) => {
                tracing::debug!("{what}: refused, not checked");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Send one signed request, retrying temporary failures with backoff;
    /// the answer's headers and body.
    async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        context: &str,
    ) -> Result<(http::HeaderMap, Bytes)> {
        self.call_with(method, url, headers, Bytes::new(), context).await
    }

    /// [`Self::call`] with a request body (sent unsigned, as OpenDAL's
    /// requests are: `UNSIGNED-PAYLOAD`).
    async fn call_with(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        context: &str,
    ) -> Result<(http::HeaderMap, Bytes)> {
        let mut attempt = 0;
        loop {
            match self.call_once(method.clone(), url, headers, body.clone(), context).await {
                // A changed object (412) is for the caller to retry whole;
                // 501 (not implemented) will not change.
                Err(e)
                    if e.is_temporary()
                        && !matches!(e, Error::SourceChanged(_) | Error::Http { status: 501, .. })
                        && attempt < self.retries =>
                {
                    attempt += 1;
                    let base = 100u64 << attempt.min(6);
                    let jitter = rand::random::<u64>() % base;
                    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        context: &str,
    ) -> Result<(http::HeaderMap, Bytes)> {
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let req = req
            .body(Buffer::from(body))
            .map_err(|e| Error::Config(format!("{context}: bad request address {url:?}: {e}")))?;
        let (mut parts, body) = req.into_parts();
        if let Some(signer) = &self.signer {
            signer
                .sign(&mut parts, None)
                .await
                .map_err(|e| Error::Config(format!("{context}: cannot sign the request: {e}")))?;
        }
        parts.headers.remove(http::header::HOST);
        // A copy takes as long as the store needs to read and write it;
        // anything else answers at once. Past that, the connection is
        // taken for stalled, and the request for one to try again.
        let limit = if parts.headers.contains_key("x-amz-copy-source") { COPY_TIMEOUT } else { CALL_TIMEOUT };
        let resp = tokio::time::timeout(limit, self.transport.send(Request::from_parts(parts, body)))
            .await
            .map_err(|_| Error::Http {
                context: context.to_string(),
                status: 504,
                detail: format!("no answer within {}s", limit.as_secs()),
            })?
            .map_err(|e| Error::store(context.to_string(), e))?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = body.to_bytes();
        let late = if status.is_success() { late_error(&body) } else { None };
        if status.is_success() && late.is_none() {
            return Ok((parts.headers, body));
        }
        let status = late.as_deref().map_or(status, late_status);
        let err: ErrorXml = quick_xml::de::from_reader(body.as_ref()).unwrap_or_default();
        let detail = match (err.code.as_str(), err.message.as_str()) {
            ("", _) => status.canonical_reason().unwrap_or("error").to_string(),
            (code, "") => code.to_string(),
            (code, msg) => format!("{code}: {msg}"),
        };
        Err(match status {
            StatusCode::FORBIDDEN => Error::PermissionDenied { what: format!("{context} ({detail})") },
            StatusCode::PRECONDITION_FAILED => Error::SourceChanged(context.to_string()),
            _ => Error::Http { context: context.to_string(), status: status.as_u16(), detail },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pages_parse_with_markers() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/b.bin</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/a &amp; b.bin</Key><UploadId>id1</UploadId><Initiated>2026-12-01T10:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/b.bin</Key><UploadId>id2</UploadId><Initiated>2026-12-01T11:00:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListResult = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_key_marker, "p/b.bin");
        assert_eq!(page.next_upload_id_marker, "id2");
        assert_eq!(page.upload.len(), 2);
        assert_eq!(page.upload[0].key, "p/a & b.bin");
        let empty: ListResult = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.upload.is_empty() && !empty.is_truncated);
    }

    #[test]
    fn copy_answers_and_late_errors_are_read() {
        let copied = r#"<?xml version="1.0" encoding="UTF-8"?>
<CopyObjectResult><LastModified>2026-12-06T10:00:00.000Z</LastModified><ETag>"9b2cf535f27731c974343645a3985328"</ETag></CopyObjectResult>"#;
        let etag = |body: &str| copy_result(body.as_bytes(), "copy").map(|r| r.etag).ok();
        assert_eq!(etag(copied).as_deref(), Some("\"9b2cf535f27731c974343645a3985328\""));
        let part =
            "<CopyPartResult><ETag>\"abc\"</ETag><ChecksumCRC32C>AAAAAA==</ChecksumCRC32C></CopyPartResult>";
        let part = copy_result(part.as_bytes(), "copy part 1").unwrap();
        assert_eq!((part.etag.as_str(), part.crc32c.as_str()), ("\"abc\"", "AAAAAA=="));
        // A result cut short, or none at all: to be tried again.
        for body in ["<CopyObjectResult></CopyObjectResult>", "", "<CopyObjectResult><ETag>"] {
            let e = copy_result(body.as_bytes(), "copy").err().unwrap();
            assert!(e.is_temporary(), "{body}: {e}");
        }
        let plain = ResultXml { etag: "\"e2\"".into(), crc32c: String::new() };
        let done = completion(&[(1, part), (2, plain)]);
        assert_eq!(
            done,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"abc\"</ETag>\
             <ChecksumCRC32C>AAAAAA==</ChecksumCRC32C></Part><Part><PartNumber>2</PartNumber>\
             <ETag>\"e2\"</ETag></Part></CompleteMultipartUpload>"
        );
        // A 200 whose body is an error: the copy failed after it began.
        let late = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<Error><Code>InternalError</Code>\
                    <Message>We encountered an internal error.</Message></Error>";
        assert_eq!(late_error(late.as_bytes()).as_deref(), Some("InternalError"));
        // Kept alive with whitespace well past the first bytes.
        let padded = format!("{}<Error><Code>SlowDown</Code></Error>", " \n".repeat(2000));
        assert_eq!(late_error(padded.as_bytes()).as_deref(), Some("SlowDown"));
        assert_eq!(late_error(copied.as_bytes()), None);
        assert_eq!(late_error(b""), None);
        assert_eq!(late_status("SlowDown"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(late_status("InternalError"), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(late_status("AccessDenied"), StatusCode::FORBIDDEN);
        assert_eq!(late_status("InvalidObjectState"), StatusCode::BAD_REQUEST);
        let started = "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>\
                       <UploadId>id-1</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(quick_xml::de::from_str::<InitiateXml>(started).unwrap().upload_id, "id-1");
        assert_eq!(xml_text("\"a&b<c>\""), "\"a&amp;b&lt;c&gt;\"");
    }

    #[test]
    fn only_refusals_of_copying_itself_are_refusals() {
        let http =
            |status, detail: &str| Error::Http { context: "copy".into(), status, detail: detail.into() };
        let refusal = |e: Error| matches!(refused(e), Error::CopyRefused(_));
        assert!(refusal(http(501, "NotImplemented: no")));
        assert!(refusal(http(405, "MethodNotAllowed")));
        assert!(refusal(http(400, "NotImplemented: A header you provided implies functionality")));
        assert!(refusal(Error::PermissionDenied {
            what: "copy x within the store (AccessDenied: no)".into()
        }));
        // About this object, not about copying.
        assert!(!refusal(http(400, "KeyTooLongError: Your key is too long")));
        assert!(!refusal(http(403, "InvalidObjectState: archived")));
        assert!(!refusal(Error::PermissionDenied { what: "copy x (InvalidObjectState: archived)".into() }));
        assert!(!refusal(http(503, "SlowDown")));
        assert!(!refusal(Error::SourceChanged("copy".into())));
    }

    #[test]
    fn copies_stay_within_one_store_and_name_their_source() {
        let keys =
            || Keys { access_key_id: "ak".into(), secret_access_key: "sk".into(), session_token: None };
        let ep = Some("http://127.0.0.1:9000");
        let a = S3Direct::new(ep, "b 1", "r", true, Some(keys()), 0, true);
        let b = S3Direct::new(Some("http://127.0.0.1:9000/"), "b2", "r", false, Some(keys()), 0, true);
        assert!(b.same_store(&a) && a.same_store(&b));
        let other_host = S3Direct::new(Some("http://127.0.0.2:9000"), "b2", "r", true, Some(keys()), 0, true);
        assert!(!other_host.same_store(&a));
        let other_key = Keys { access_key_id: "ak2".into(), ..keys() };
        assert!(!S3Direct::new(ep, "b2", "r", true, Some(other_key), 0, true).same_store(&a));
        let token = Keys { session_token: Some("t".into()), ..keys() };
        assert!(!S3Direct::new(ep, "b2", "r", true, Some(token), 0, true).same_store(&a));
        let anonymous = S3Direct::new(ep, "b2", "r", true, None, 0, true);
        assert!(!anonymous.same_store(&S3Direct::new(ep, "b3", "r", true, None, 0, true)));
        assert_eq!(a.copy_source("dir/a b+ü.txt"), "b%201/dir/a%20b%2B%C3%BC.txt");
    }

    #[test]
    fn addresses_follow_the_bucket_style() {
        let path = S3Direct::new(Some("http://127.0.0.1:9000/"), "bkt", "garage", true, None, 0, true);
        assert_eq!(path.base, "http://127.0.0.1:9000/bkt");
        let vhost = S3Direct::new(Some("https://s3.example.com"), "bkt", "r", false, None, 0, true);
        assert_eq!(vhost.base, "https://bkt.s3.example.com");
        let aws = S3Direct::new(None, "bkt", "eu-west-1", false, None, 0, true);
        assert_eq!(aws.base, "https://bkt.s3.eu-west-1.amazonaws.com");
        assert_eq!(utf8_percent_encode("a b/ü~", PATH).to_string(), "a%20b/%C3%BC~");
        assert_eq!(utf8_percent_encode("a/b+c", QUERY).to_string(), "a%2Fb%2Bc");
    }
}
