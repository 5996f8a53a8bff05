//! Multipart uploads, tracked at the HTTP layer, for what s3s-fs does not do:
//!
//! - it keeps uploads but cannot list them (ListMultipartUploads), which
//!   ferry uses to find and abort what a killed run left behind; this answers
//!   that call from what the server saw created, completed and aborted;
//! - it keeps no checksum of a multipart object, where S3 keeps the
//!   composite CRC32C of the parts (`<base64>-<parts>`), and it does not
//!   answer HEADs of one part (`partNumber`); this records the parts' sizes
//!   and CRC32Cs and adds those answers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use hyper::{Method, Uri};

/// What a request does to the set of open uploads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `POST /bucket/key?uploads`: the answer carries the new upload id.
    Create {
        bucket: String,
        key: String,
    },
    /// Complete (`POST ?uploadId=`) or abort (`DELETE ?uploadId=`).
    Finish {
        bucket: String,
        key: String,
        upload_id: String,
    },
    /// `GET /bucket?uploads`: answered here.
    List {
        bucket: String,
        prefix: String,
    },
    /// UploadPart (`PUT ?partNumber=&uploadId=`).
    Part {
        bucket: String,
        key: String,
        upload_id: String,
        part: u32,
    },
    /// PutObject, CopyObject or DeleteObject: whatever was stored under the
    /// key is replaced.
    Replace {
        bucket: String,
        key: String,
    },
    /// HeadObject or GetObject, with the part asked for (`partNumber`).
    Read {
        bucket: String,
        key: String,
        part: Option<u32>,
    },
    Other,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

pub(crate) fn recognise(method: &Method, uri: &Uri) -> Call {
    let path = uri.path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let (bucket, key) = (decode(bucket), decode(key));
    let params: Vec<(String, String)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let part = param("partNumber").and_then(|n| n.parse::<u32>().ok());
    match (method, key.is_empty(), param("uploads"), param("uploadId")) {
        (&Method::POST, false, Some(_), _) => Call::Create { bucket, key },
        (&Method::POST | &Method::DELETE, false, _, Some(upload_id)) => {
            Call::Finish { bucket, key, upload_id }
        }
        (&Method::PUT, false, _, Some(upload_id)) => match part {
            Some(part) => Call::Part { bucket, key, upload_id, part },
            None => Call::Other,
        },
        (&Method::PUT | &Method::DELETE, false, None, None) if params.is_empty() => {
            Call::Replace { bucket, key }
        }
        (&Method::GET | &Method::HEAD, false, None, None) => Call::Read { bucket, key, part },
        (&Method::GET, true, Some(_), _) => {
            Call::List { bucket, prefix: param("prefix").unwrap_or_default() }
        }
        _ => Call::Other,
    }
}

/// An upload begun: when, and the parts stored so far by number, with
/// their size and CRC32C when the client sent one.
#[derive(Debug)]
struct Open {
    began: SystemTime,
    parts: BTreeMap<u32, (u64, Option<u32>)>,
}

/// A completed multipart object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Multipart {
    /// The CRC32C of the parts' big-endian CRC32Cs, when every part
    /// carried one.
    pub crc: Option<u32>,
    pub part_sizes: Vec<u64>,
}

impl Multipart {
    /// `x-amz-checksum-crc32c` as S3 writes a composite one, if it has one.
    pub(crate) fn checksum_header(&self) -> Option<String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.crc?.to_be_bytes());
        Some(format!("{b64}-{}", self.part_sizes.len()))
    }
}

type UploadKey = (String, String, String);

#[derive(Debug, Default)]
struct State {
    /// Open uploads by (bucket, key, upload id).
    open: BTreeMap<UploadKey, Open>,
    /// Completed multipart objects, by (bucket, key).
    multipart: BTreeMap<(String, String), Multipart>,
}

#[derive(Debug, Default)]
pub(crate) struct Uploads(Mutex<State>);

impl Uploads {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("uploads lock")
    }

    pub(crate) fn created(&self, bucket: &str, key: &str, create_answer: &[u8]) {
        let text = String::from_utf8_lossy(create_answer);
        let id = text.split("<UploadId>").nth(1).and_then(|rest| rest.split("</UploadId>").next());
        if let Some(id) = id {
            let open = Open { began: SystemTime::now(), parts: BTreeMap::new() };
            self.state().open.insert((bucket.into(), key.into(), id.into()), open);
        }
    }

    /// A part stored: its size and the CRC32C the client sent (checked).
    pub(crate) fn part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: u32,
        size: u64,
        crc: Option<u32>,
    ) {
        if let Some(open) = self.state().open.get_mut(&(bucket.into(), key.into(), upload_id.into())) {
            open.parts.insert(part, (size, crc));
        }
    }

    /// Completed (`complete`) or aborted.
    pub(crate) fn finished(&self, bucket: &str, key: &str, upload_id: &str, complete: bool) {
        let mut st = self.state();
        let Some(open) = st.open.remove(&(bucket.into(), key.into(), upload_id.into())) else { return };
        if !complete {
            // What is stored at the key stays as it was.
            return;
        }
        st.multipart.remove(&(bucket.into(), key.into()));
        if open.parts.is_empty() {
            return;
        }
        let crcs: Option<Vec<u32>> = open.parts.values().map(|(_, crc)| *crc).collect();
        let crc =
            crcs.map(|crcs| crc32c::crc32c(&crcs.iter().flat_map(|c| c.to_be_bytes()).collect::<Vec<u8>>()));
        let part_sizes = open.parts.values().map(|(size, _)| *size).collect();
        st.multipart.insert((bucket.into(), key.into()), Multipart { crc, part_sizes });
    }

    /// Whatever was under the key was replaced or deleted.
    pub(crate) fn replaced(&self, bucket: &str, key: &str) {
        self.state().multipart.remove(&(bucket.into(), key.into()));
    }

    /// The parts of a multipart object, if it is one.
    pub(crate) fn multipart(&self, bucket: &str, key: &str) -> Option<Multipart> {
        self.state().multipart.get(&(bucket.into(), key.into())).cloned()
    }

    /// `bucket/key` of every open upload.
    pub(crate) fn open(&self) -> Vec<String> {
        self.state().open.keys().map(|(b, k, _)| format!("{b}/{k}")).collect()
    }

    /// A ListMultipartUploads answer (one page holding everything).
    pub(crate) fn list_xml(&self, bucket: &str, prefix: &str) -> String {
        let st = self.state();
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult><Bucket>{}</Bucket>\
             <Prefix>{}</Prefix><IsTruncated>false</IsTruncated>",
            escape(bucket),
            escape(prefix)
        );
        for ((b, key, id), open) in st.open.iter() {
            if b == bucket && key.starts_with(prefix) {
                let at = humantime_utc(open.began);
                xml.push_str(&format!(
                    "<Upload><Key>{}</Key><UploadId>{}</UploadId><Initiated>{at}</Initiated></Upload>",
                    escape(key),
                    escape(id)
                ));
            }
        }
        xml.push_str("</ListMultipartUploadsResult>");
        xml
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as S3 writes times.
fn humantime_utc(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_multipart_calls() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(
            recognise(&Method::POST, &uri("/b/dir/a%20b.bin?uploads")),
            Call::Create { bucket: "b".into(), key: "dir/a b.bin".into() }
        );
        assert_eq!(
            recognise(&Method::DELETE, &uri("/b/k?uploadId=u%2B1")),
            Call::Finish { bucket: "b".into(), key: "k".into(), upload_id: "u+1".into() }
        );
        assert_eq!(
            recognise(&Method::GET, &uri("/b/?uploads&prefix=p%2F")),
            Call::List { bucket: "b".into(), prefix: "p/".into() }
        );
        assert_eq!(
            recognise(&Method::PUT, &uri("/b/k?partNumber=3&uploadId=u")),
            Call::Part { bucket: "b".into(), key: "k".into(), upload_id: "u".into(), part: 3 }
        );
        assert_eq!(
            recognise(&Method::GET, &uri("/b/k")),
            Call::Read { bucket: "b".into(), key: "k".into(), part: None }
        );
        assert_eq!(
            recognise(&Method::HEAD, &uri("/b/k?partNumber=1")),
            Call::Read { bucket: "b".into(), key: "k".into(), part: Some(1) }
        );
        assert_eq!(
            recognise(&Method::PUT, &uri("/b/k")),
            Call::Replace { bucket: "b".into(), key: "k".into() }
        );
        assert_eq!(
            recognise(&Method::DELETE, &uri("/b/k")),
            Call::Replace { bucket: "b".into(), key: "k".into() }
        );
        assert_eq!(recognise(&Method::PUT, &uri("/b/k?tagging")), Call::Other);
    }

    #[test]
    fn completed_parts_give_the_composite_crc() {
        let u = Uploads::default();
        u.created("b", "k", b"<UploadId>id1</UploadId>");
        let (a, b) = (vec![1u8; 10], vec![2u8; 4]);
        u.part("b", "k", "id1", 2, 4, Some(crc32c::crc32c(&b)));
        u.part("b", "k", "id1", 1, 10, Some(crc32c::crc32c(&a)));
        u.finished("b", "k", "id1", true);
        let c = u.multipart("b", "k").unwrap();
        let mut crcs = crc32c::crc32c(&a).to_be_bytes().to_vec();
        crcs.extend(crc32c::crc32c(&b).to_be_bytes());
        assert_eq!(c, Multipart { crc: Some(crc32c::crc32c(&crcs)), part_sizes: vec![10, 4] });
        assert!(c.checksum_header().unwrap().ends_with("-2"), "{c:?}");
        u.replaced("b", "k");
        assert_eq!(u.multipart("b", "k"), None);
        // An aborted upload leaves the stored object's composite alone.
        u.created("b", "k2", b"<UploadId>id0</UploadId>");
        u.part("b", "k2", "id0", 1, 3, Some(1));
        u.finished("b", "k2", "id0", true);
        u.created("b", "k2", b"<UploadId>id9</UploadId>");
        u.finished("b", "k2", "id9", false);
        assert!(u.multipart("b", "k2").is_some());
        // A part without a CRC32C leaves no composite, only the part sizes.
        u.created("b", "k", b"<UploadId>id2</UploadId>");
        u.part("b", "k", "id2", 1, 10, None);
        u.finished("b", "k", "id2", true);
        assert_eq!(u.multipart("b", "k"), Some(Multipart { crc: None, part_sizes: vec![10] }));
        assert_eq!(u.multipart("b", "k").unwrap().checksum_header(), None);
    }

    #[test]
    fn lists_what_is_open_under_a_prefix() {
        let u = Uploads::default();
        u.created(
            "b",
            "p/x&y",
            b"<InitiateMultipartUploadResult><UploadId>id1</UploadId></InitiateMultipartUploadResult>",
        );
        u.created("b", "q/z", b"<UploadId>id2</UploadId>");
        let xml = u.list_xml("b", "p/");
        assert!(xml.contains("<Key>p/x&amp;y</Key><UploadId>id1</UploadId>"), "{xml}");
        assert!(!xml.contains("id2"));
        u.finished("b", "p/x&y", "id1", false);
        assert_eq!(u.open(), vec!["b/q/z".to_string()]);
        assert_eq!(humantime_utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_300_000_123);
        assert_eq!(humantime_utc(t), "2026-12-03T12:13:20.123Z");
    }
}
