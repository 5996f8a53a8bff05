//! Live-adjustable fault injection and request accounting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Fixed seed so that fault patterns are reproducible from run to run.
const DEFAULT_SEED: u64 = 0x00fe_5252_7e57;

/// Class of an S3 request, used to target fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// GetObject (GET on an object key).
    Get,
    /// HeadObject / HeadBucket.
    Head,
    /// PutObject, CopyObject, UploadPart, CreateMultipartUpload,
    /// CompleteMultipartUpload, CreateBucket (any PUT/POST except `?delete`).
    Put,
    /// ListObjects / ListObjectsV2 (GET on the bucket root, or `list-type=2`).
    List,
    /// DeleteObject, DeleteObjects (`POST ?delete`), DeleteBucket.
    Delete,
    /// Matches every request, including ones counted as `other`.
    Any,
}

/// Internal classification of a request (what is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Get,
    Head,
    Put,
    List,
    Delete,
    Other,
}

impl Class {
    fn rule_index(self) -> Option<usize> {
        match self {
            Class::Get => Some(0),
            Class::Head => Some(1),
            Class::Put => Some(2),
            Class::List => Some(3),
            Class::Delete => Some(4),
            Class::Other => None,
        }
    }
}

const ANY_INDEX: usize = 5;

fn op_index(op: OpClass) -> usize {
    match op {
        OpClass::Get => 0,
        OpClass::Head => 1,
        OpClass::Put => 2,
        OpClass::List => 3,
        OpClass::Delete => 4,
        OpClass::Any => ANY_INDEX,
    }
}

/// Classifies a path-style S3 request.
pub(crate) fn classify(method: &hyper::Method, uri: &hyper::Uri) -> Class {
    use hyper::Method;

    let path = uri.path().trim_start_matches('/');
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) => (b, k),
        None => (path, ""),
    };
    let query = uri.query().unwrap_or("");
    let has_param = |name: &str| query.split('&').any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == name);
    let is_param =
        |name: &str, value: &str| query.split('&').any(|kv| kv.split_once('=') == Some((name, value)));

    match *method {
        Method::GET => {
            if bucket.is_empty() {
                Class::Other // ListBuckets
            } else if is_param("list-type", "2") || key.is_empty() {
                Class::List
            } else {
                Class::Get
            }
        }
        Method::HEAD => Class::Head,
        Method::PUT => Class::Put,
        Method::POST => {
            if has_param("delete") {
                Class::Delete
            } else {
                Class::Put
            }
        }
        Method::DELETE => Class::Delete,
        _ => Class::Other,
    }
}

/// Snapshot of the requests that reached the server, by class.
///
/// Requests answered with an injected failure are counted too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub get: u64,
    pub head: u64,
    pub put: u64,
    pub list: u64,
    pub delete: u64,
    pub other: u64,
}

impl RequestCounts {
    /// Sum over all classes.
    pub fn total(&self) -> u64 {
        self.get + self.head + self.put + self.list + self.delete + self.other
    }
}

/// Requests being handled at once, and the most seen since the last reset.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    now: AtomicU64,
    peak: AtomicU64,
}

/// One request being handled; it ends when dropped.
pub(crate) struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    pub(crate) fn enter(&self) -> InFlightGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(self)
    }

    /// The peak since the last call (which starts the next count).
    pub(crate) fn take_peak(&self) -> u64 {
        self.peak.swap(self.now.load(Ordering::SeqCst), Ordering::SeqCst)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    pub(crate) fn record(&self, class: Class) {
        let c = match class {
            Class::Get => &self.get,
            Class::Head => &self.head,
            Class::Put => &self.put,
            Class::List => &self.list,
            Class::Delete => &self.delete,
            Class::Other => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ErrorRule {
    per_mille: u32,
    status: u16,
}

#[derive(Debug)]
struct State {
    /// Indexed by `op_index`.
    error_rules: [Option<ErrorRule>; 6],
    short_body_per_mille: u32,
    /// Listings allowed before all further ones fail (500), and how many were seen
    /// since this was set.
    list_fail_after: Option<u32>,
    list_seen: u32,
    /// Every listing fails with this status.
    list_failure: Option<u16>,
    /// Listing pages claim to be truncated and carry no continuation token.
    list_truncated_without_token: bool,
    /// How many more small GET bodies to deliver with one byte changed.
    corrupt_left: u32,
    corrupt_uploads_left: u32,
    uploads_corrupted: u32,
    refuse_checksums: bool,
    refuse_copies: bool,
    copy_delay: std::time::Duration,
    part_copy_failure: Option<u16>,
    /// How many more CompleteMultipartUpload answers to lose (the upload
    /// is completed, then the connection drops).
    lose_complete_left: u32,
    /// Requests of a class (index as `error_rules`) wait this long before they are answered.
    delays: [std::time::Duration; 6],
    rng: StdRng,
}

impl State {
    fn roll(&mut self, per_mille: u32) -> bool {
        if per_mille == 0 {
            false
        } else if per_mille >= 1000 {
            true
        } else {
            self.rng.random_range(0..1000) < per_mille
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            error_rules: [None; 6],
            short_body_per_mille: 0,
            list_fail_after: None,
            list_seen: 0,
            list_failure: None,
            list_truncated_without_token: false,
            corrupt_left: 0,
            corrupt_uploads_left: 0,
            uploads_corrupted: 0,
            refuse_checksums: false,
            refuse_copies: false,
            copy_delay: std::time::Duration::ZERO,
            part_copy_failure: None,
            lose_complete_left: 0,
            delays: [std::time::Duration::ZERO; 6],
            rng: StdRng::seed_from_u64(DEFAULT_SEED),
        }
    }
}

/// Fault injection settings, adjustable while the server runs.
///
/// All setters take `&self`; changes apply to requests arriving afterwards.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers `per_mille`/1000 of the requests of class `op` with `status` and an S3
    /// XML error body (503 → `SlowDown`, 429 → `TooManyRequests`, 500 → `InternalError`,
    /// 403 → `AccessDenied`, ...). `per_mille == 0` removes the rule. A rule for a
    /// specific class takes precedence over an [`OpClass::Any`] rule.
    pub fn set_error_rate(&self, op: OpClass, per_mille: u32, status: u16) {
        let rule = (per_mille > 0).then_some(ErrorRule { per_mille, status });
        self.state().error_rules[op_index(op)] = rule;
    }

    /// For `per_mille`/1000 of successful GET object responses with a non-empty body:
    /// send the real headers (original Content-Length) but only the first half of the
    /// body, then abort the connection.
    pub fn set_short_body(&self, per_mille: u32) {
        self.state().short_body_per_mille = per_mille;
    }

    /// `Some(n)`: the first `n` listing requests (counted from this call) succeed, every
    /// later one is answered 500 `InternalError`. `None` disables.
    pub fn fail_list_after_pages(&self, n: Option<u32>) {
        let mut st = self.state();
        st.list_fail_after = n;
        st.list_seen = 0;
    }

    /// `Some(status)`: every listing request fails with `status` (e.g. 403 for a
    /// non-retryable `AccessDenied`, 500 for `InternalError`). `None` disables.
    pub fn set_list_failure(&self, status: Option<u16>) {
        self.state().list_failure = status;
    }

    /// Every listing page says `<IsTruncated>true</IsTruncated>` and carries
    /// no continuation token: a client that asks again without one gets the
    /// first page again, forever.
    pub fn set_list_truncated_without_token(&self, on: bool) {
        self.state().list_truncated_without_token = on;
    }

    /// For the next `n` successful GET object responses: deliver the body
    /// with one byte changed (headers intact): its middle byte, or for a
    /// body over 1 MiB the middle byte of the first piece streamed.
    /// `u32::MAX` for every one; 0 stops.
    pub fn corrupt_bodies(&self, n: u32) {
        self.state().corrupt_left = n;
    }

    /// Complete the next `n` multipart uploads, but drop the connection
    /// instead of answering (the client cannot know it succeeded).
    pub fn lose_complete_answers(&self, n: u32) {
        self.state().lose_complete_left = n;
    }

    pub(crate) fn lose_complete_answer(&self) -> bool {
        take_one(&mut self.state().lose_complete_left)
    }

    pub(crate) fn list_truncated_without_token(&self) -> bool {
        self.state().list_truncated_without_token
    }

    /// Change one byte of the request body of the next `n` uploads
    /// (PutObject and UploadPart) on their way to the store, after the
    /// client computed whatever checksum it sends.
    pub fn corrupt_uploads(&self, n: u32) {
        self.state().corrupt_uploads_left = n;
    }

    pub(crate) fn corrupt_upload(&self) -> bool {
        let mut st = self.state();
        let hit = take_one(&mut st.corrupt_uploads_left);
        st.uploads_corrupted += u32::from(hit);
        hit
    }

    /// Answer requests that carry `x-amz-checksum-*` headers with 400
    /// `InvalidArgument`, as stores that do not know them do.
    pub fn refuse_checksum_headers(&self, on: bool) {
        self.state().refuse_checksums = on;
    }

    pub(crate) fn refuses_checksums(&self) -> bool {
        self.state().refuse_checksums
    }

    /// Answer copies within the store (requests with `x-amz-copy-source`)
    /// with 501 `NotImplemented`, as stores without them do.
    pub fn refuse_copies(&self, on: bool) {
        self.state().refuse_copies = on;
    }

    pub(crate) fn refuses_copies(&self) -> bool {
        self.state().refuse_copies
    }

    /// Answer every part copied within the store (UploadPartCopy) with
    /// `status` (`None` stops), as a store that cannot copy that source.
    pub fn fail_part_copies(&self, status: Option<u16>) {
        self.state().part_copy_failure = status;
    }

    pub(crate) fn part_copy_failure(&self) -> Option<u16> {
        self.state().part_copy_failure
    }

    /// Hold every copy within the store (a request with
    /// `x-amz-copy-source`) this long after it arrives, before it runs;
    /// other requests go on at once. Zero disables.
    pub fn set_copy_delay(&self, delay: std::time::Duration) {
        self.state().copy_delay = delay;
    }

    pub(crate) fn copy_delay(&self) -> std::time::Duration {
        self.state().copy_delay
    }

    /// How many upload bodies [`Faults::corrupt_uploads`] changed so far.
    pub fn uploads_corrupted(&self) -> u32 {
        self.state().uploads_corrupted
    }

    pub(crate) fn corrupt_body(&self) -> bool {
        let mut st = self.state();
        match st.corrupt_left {
            0 => false,
            u32::MAX => true,
            _ => {
                st.corrupt_left -= 1;
                true
            }
        }
    }

    /// Shorthand for `set_list_failure(fail.then_some(500))`.
    pub fn fail_list(&self, fail: bool) {
        self.set_list_failure(fail.then_some(500));
    }

    /// Answers every request of class `op` only after `delay` (a slow store,
    /// so that tests can act while a transfer runs). Zero disables. A delay
    /// for a specific class takes precedence over an [`OpClass::Any`] one.
    pub fn set_delay(&self, op: OpClass, delay: std::time::Duration) {
        self.state().delays[op_index(op)] = delay;
    }

    pub(crate) fn delay(&self, class: Class) -> std::time::Duration {
        let st = self.state();
        match class.rule_index().map(|i| st.delays[i]) {
            Some(d) if !d.is_zero() => d,
            _ => st.delays[ANY_INDEX],
        }
    }

    /// Re-seeds the RNG used for rate-based faults.
    pub fn set_seed(&self, seed: u64) {
        self.state().rng = StdRng::seed_from_u64(seed);
    }

    /// Removes all faults (and resets the RNG to its default seed).
    pub fn clear(&self) {
        *self.state() = State::default();
    }

    /// Decides whether to fail this request, returning the status to answer with.
    pub(crate) fn injected_status(&self, class: Class) -> Option<u16> {
        let mut st = self.state();
        if class == Class::List {
            if let Some(status) = st.list_failure {
                return Some(status);
            }
            if let Some(n) = st.list_fail_after {
                st.list_seen = st.list_seen.saturating_add(1);
                if st.list_seen > n {
                    return Some(500);
                }
            }
        }
        let rule = class.rule_index().and_then(|i| st.error_rules[i]).or(st.error_rules[ANY_INDEX])?;
        st.roll(rule.per_mille).then_some(rule.status)
    }

    /// Decides whether to cut this GET response body short.
    pub(crate) fn short_body(&self) -> bool {
        let mut st = self.state();
        let pm = st.short_body_per_mille;
        st.roll(pm)
    }
}

/// S3 error code used in the XML body of an injected error.
/// Use up one of `left` armed faults: whether one was left.
fn take_one(left: &mut u32) -> bool {
    let hit = *left > 0;
    *left = left.saturating_sub(1);
    hit
}

pub(crate) fn error_code(status: u16) -> &'static str {
    match status {
        503 => "SlowDown",
        429 => "TooManyRequests",
        500 => "InternalError",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        409 => "OperationAborted",
        400 => "InvalidRequest",
        408 => "RequestTimeout",
        _ => "InjectedError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, uri: &str) -> Class {
        classify(&method.parse().unwrap(), &uri.parse().unwrap())
    }

    #[test]
    fn classification() {
        assert_eq!(c("GET", "/"), Class::Other);
        assert_eq!(c("GET", "/b"), Class::List);
        assert_eq!(c("GET", "/b/"), Class::List);
        assert_eq!(c("GET", "/b/?list-type=2&prefix=x"), Class::List);
        assert_eq!(c("GET", "/b?list-type=2"), Class::List);
        assert_eq!(c("GET", "/b/k/x"), Class::Get);
        assert_eq!(c("HEAD", "/b/k"), Class::Head);
        assert_eq!(c("PUT", "/b/k"), Class::Put);
        assert_eq!(c("POST", "/b/k?uploads"), Class::Put);
        assert_eq!(c("POST", "/b/k?uploadId=1"), Class::Put);
        assert_eq!(c("POST", "/b?delete"), Class::Delete);
        assert_eq!(c("POST", "/b/?delete="), Class::Delete);
        assert_eq!(c("DELETE", "/b/k"), Class::Delete);
    }

    #[test]
    fn list_after_pages() {
        let f = Faults::default();
        f.fail_list_after_pages(Some(2));
        assert_eq!(f.injected_status(Class::List), None);
        assert_eq!(f.injected_status(Class::List), None);
        assert_eq!(f.injected_status(Class::List), Some(500));
        assert_eq!(f.injected_status(Class::List), Some(500));
        assert_eq!(f.injected_status(Class::Get), None);
        f.clear();
        assert_eq!(f.injected_status(Class::List), None);
    }

    #[test]
    fn error_rates() {
        let f = Faults::default();
        f.set_error_rate(OpClass::Any, 1000, 503);
        f.set_error_rate(OpClass::Get, 1000, 429);
        assert_eq!(f.injected_status(Class::Get), Some(429));
        assert_eq!(f.injected_status(Class::Other), Some(503));
        f.set_error_rate(OpClass::Any, 0, 503);
        assert_eq!(f.injected_status(Class::Put), None);
        f.set_error_rate(OpClass::Put, 500, 500);
        let hits = (0..2000).filter(|_| f.injected_status(Class::Put).is_some()).count();
        assert!((800..1200).contains(&hits), "{hits}");
    }
}
