//! Open multipart uploads, tracked at the HTTP layer. s3s-fs keeps uploads
//! but cannot list them (ListMultipartUploads), which ferry uses to find and
//! abort what a killed run left behind; this answers that call from what
//! the server saw created, completed and aborted.

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
    match (method, key.is_empty(), param("uploads"), param("uploadId")) {
        (&Method::POST, false, Some(_), _) => Call::Create { bucket, key },
        (&Method::POST | &Method::DELETE, false, _, Some(upload_id)) => {
            Call::Finish { bucket, key, upload_id }
        }
        (&Method::GET, true, Some(_), _) => {
            Call::List { bucket, prefix: param("prefix").unwrap_or_default() }
        }
        _ => Call::Other,
    }
}

/// Open uploads by (bucket, key, upload id), with when each began.
#[derive(Debug, Default)]
pub(crate) struct Uploads(Mutex<BTreeMap<(String, String, String), SystemTime>>);

impl Uploads {
    pub(crate) fn created(&self, bucket: &str, key: &str, create_answer: &[u8]) {
        let text = String::from_utf8_lossy(create_answer);
        let id = text.split("<UploadId>").nth(1).and_then(|rest| rest.split("</UploadId>").next());
        if let Some(id) = id {
            let mut open = self.0.lock().expect("uploads lock");
            open.insert((bucket.into(), key.into(), id.into()), SystemTime::now());
        }
    }

    pub(crate) fn finished(&self, bucket: &str, key: &str, upload_id: &str) {
        self.0.lock().expect("uploads lock").remove(&(bucket.into(), key.into(), upload_id.into()));
    }

    /// `bucket/key` of every open upload.
    pub(crate) fn open(&self) -> Vec<String> {
        self.0.lock().expect("uploads lock").keys().map(|(b, k, _)| format!("{b}/{k}")).collect()
    }

    /// A ListMultipartUploads answer (one page holding everything).
    pub(crate) fn list_xml(&self, bucket: &str, prefix: &str) -> String {
        let open = self.0.lock().expect("uploads lock");
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult><Bucket>{}</Bucket>\
             <Prefix>{}</Prefix><IsTruncated>false</IsTruncated>",
            escape(bucket),
            escape(prefix)
        );
        for ((b, key, id), at) in open.iter() {
            if b == bucket && key.starts_with(prefix) {
                let at = humantime_utc(*at);
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
        assert_eq!(recognise(&Method::PUT, &uri("/b/k?partNumber=1&uploadId=u")), Call::Other);
        assert_eq!(recognise(&Method::GET, &uri("/b/k")), Call::Other);
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
        u.finished("b", "p/x&y", "id1");
        assert_eq!(u.open(), vec!["b/q/z".to_string()]);
        assert_eq!(humantime_utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_300_000_123);
        assert_eq!(humantime_utc(t), "2026-12-03T12:13:20.123Z");
    }
}
