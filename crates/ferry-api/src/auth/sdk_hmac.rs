//! The `SDK-HMAC-SHA256` request signature that the official Huawei Cloud
//! SDKs send when built with `BasicCredentials(ak, sk, project_id)`:
//!
//! ```text
//! Authorization: SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<h1;h2>, Signature=<hex>
//! canonical request = METHOD \n URI \n QUERY \n HEADERS \n SIGNED_HEADERS \n BODY_HASH
//! string to sign    = SDK-HMAC-SHA256 \n <X-Sdk-Date> \n hex(sha256(canonical request))
//! signature         = hex(hmac_sha256(SK, string to sign))
//! ```
//!
//! The canonical form follows the SDK's signer (`huaweicloudsdkcore/signer`):
//! the path is percent-decoded, split on `/` (so an encoded `%2F` separates
//! segments too), each segment re-encoded keeping only `A-Za-z0-9-_.~`, and a
//! `/` appended when missing; query pairs are decoded, sorted by key then
//! value, and re-encoded the same way (`+` is a literal plus, not a space);
//! HEADERS is `name:trimmed value\n` for each signed header, so the block ends
//! with an empty line. Decoding works on bytes, so no input needs to be UTF-8.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The scheme word of the `Authorization` header and the first line of the string to sign.
pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
/// Largest accepted distance between `X-Sdk-Date` and the server clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;
/// `X-Sdk-Content-Sha256` value by which a client leaves the body unsigned.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const HEADER_AUTHORIZATION: &str = "Authorization";
const HEADER_DATE: &str = "X-Sdk-Date";
const HEADER_CONTENT_SHA256: &str = "X-Sdk-Content-Sha256";
const HEADER_PROJECT_ID: &str = "X-Project-Id";

/// Everything except the unreserved characters `A-Za-z0-9-_.~`.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The parts of an HTTP request the signature covers, exactly as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path, still percent-encoded (`/v1/p1/sfs-turbo/s1/hpc-cache/tasks`).
    pub path: &'a str,
    /// The query string without `?`, still percent-encoded; empty when there is none.
    pub query: &'a str,
    /// Every header as `(name, value)`, names in any case, a repeated header
    /// once per occurrence. A value that is not UTF-8 should be left out: if
    /// it was signed, the request is refused as missing it.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl<'a> SignedRequest<'a> {
    /// The value of header `name` (any case); `None` when absent, an error
    /// when it was sent more than once.
    fn header(&self, name: &str) -> Result<Option<&'a str>> {
        let mut values = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = values.next().map(|&(_, v)| v);
        if values.next().is_some() {
            return Err(Error::RepeatedHeader(name.to_ascii_lowercase()));
        }
        Ok(first)
    }
}

/// What an access key stands for, as the key store returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub secret_key: String,
    pub project_id: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey").field("secret_key", &"***").field("project_id", &self.project_id).finish()
    }
}

/// A request whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub access_key: String,
    pub project_id: String,
    /// False when the client sent `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`:
    /// the body was not covered by the signature.
    pub body_signed: bool,
}

/// The fields of an `Authorization: SDK-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key: &'a str,
    /// Lower-case header names in the order they were signed.
    pub signed_headers: Vec<&'a str>,
    pub signature: [u8; 32],
}

impl<'a> Authorization<'a> {
    /// Parse `SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<h1;h2>, Signature=<hex>`.
    /// Each field must appear exactly once; other fields are refused.
    pub fn parse(value: &'a str) -> Result<Self> {
        let malformed = |why: &str| Error::MalformedAuthorization(why.to_owned());
        let value = value.trim();
        let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
        if scheme != ALGORITHM {
            return Err(Error::UnsupportedScheme);
        }
        let (mut access, mut signed, mut signature) = (None, None, None);
        for param in params.split(',') {
            let (name, field_value) =
                param.trim().split_once('=').ok_or_else(|| malformed("expected Name=value fields"))?;
            let slot = match name {
                "Access" => &mut access,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return Err(malformed("unknown field (expected Access, SignedHeaders, Signature)")),
            };
            if slot.replace(field_value).is_some() {
                return Err(malformed(&format!("{name} given more than once")));
            }
        }
        let access_key = access.ok_or_else(|| malformed("missing Access"))?;
        let signed = signed.ok_or_else(|| malformed("missing SignedHeaders"))?;
        let signature = signature.ok_or_else(|| malformed("missing Signature"))?;
        if access_key.is_empty() {
            return Err(malformed("empty Access"));
        }

        let signed_headers: Vec<&str> = signed.split(';').collect();
        for (i, name) in signed_headers.iter().enumerate() {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !valid {
                return Err(malformed("SignedHeaders must be lower-case header names separated by ';'"));
            }
            if signed_headers[..i].contains(name) {
                return Err(malformed("SignedHeaders names a header twice"));
            }
        }

        let mut bytes = [0u8; 32];
        hex::decode_to_slice(signature, &mut bytes)
            .map_err(|_| malformed("Signature must be 64 hexadecimal digits"))?;
        Ok(Authorization { access_key, signed_headers, signature: bytes })
    }
}

/// Check the signature of `request` and return who sent it.
///
/// `access_keys` resolves an access key; `now_unix` is the server clock in
/// Unix seconds. The comparison of signatures is constant-time. A request
/// whose `X-Project-Id` differs from the key's project is refused; the caller
/// still checks that the path's project is [`Authenticated::project_id`].
pub fn verify(
    request: &SignedRequest<'_>,
    access_keys: impl FnOnce(&str) -> Option<AccessKey>,
    now_unix: i64,
) -> Result<Authenticated> {
    let authorization =
        request.header(HEADER_AUTHORIZATION)?.ok_or(Error::MissingHeader(HEADER_AUTHORIZATION))?;
    let authorization = Authorization::parse(authorization)?;

    let date = request.header(HEADER_DATE)?.ok_or(Error::MissingHeader(HEADER_DATE))?.trim();
    let signed_at = parse_sdk_date(date)?;
    let skew_secs = (now_unix - signed_at).abs();
    if skew_secs > MAX_CLOCK_SKEW_SECS {
        return Err(Error::DateSkew { skew_secs, max_secs: MAX_CLOCK_SKEW_SECS });
    }

    let body_hash = body_hash(request)?;
    let canonical = canonical_request(request, &authorization.signed_headers, &body_hash)?;
    let to_sign = string_to_sign(date, &canonical);

    let key = access_keys(authorization.access_key).ok_or(Error::UnknownAccessKey)?;
    let mut mac = hmac_sha256(&key.secret_key);
    mac.update(to_sign.as_bytes());
    mac.verify_slice(&authorization.signature).map_err(|_| Error::BadSignature)?;

    if let Some(project) = request.header(HEADER_PROJECT_ID)? {
        if project.trim() != key.project_id {
            return Err(Error::ProjectMismatch);
        }
    }
    Ok(Authenticated {
        access_key: authorization.access_key.to_owned(),
        project_id: key.project_id,
        body_signed: body_hash != UNSIGNED_PAYLOAD,
    })
}

/// The last line of the canonical request: `X-Sdk-Content-Sha256` when the
/// client sent one, else hex(sha256(body)). A hash the client sent must be
/// the body's (or `UNSIGNED-PAYLOAD`), so a signed header cannot vouch for
/// another body.
fn body_hash(request: &SignedRequest<'_>) -> Result<String> {
    let actual = hex::encode(Sha256::digest(request.body));
    match request.header(HEADER_CONTENT_SHA256)? {
        None => Ok(actual),
        Some(given) if given == UNSIGNED_PAYLOAD => Ok(given.to_owned()),
        Some(given) if given.eq_ignore_ascii_case(&actual) => Ok(given.to_owned()),
        Some(_) => Err(Error::BodyHashMismatch),
    }
}

/// The canonical request for `signed_headers` (lower-case names, in signing
/// order) and the body hash to put on its last line.
pub fn canonical_request(
    request: &SignedRequest<'_>,
    signed_headers: &[&str],
    body_hash: &str,
) -> Result<String> {
    let mut out = String::with_capacity(256 + request.path.len() + request.query.len());
    out.push_str(&request.method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(&canonical_uri(request.path));
    out.push('\n');
    out.push_str(&canonical_query(request.query));
    out.push('\n');
    for name in signed_headers {
        let value = request.header(name)?.ok_or_else(|| Error::MissingSignedHeader((*name).to_owned()))?;
        out.push_str(name);
        out.push(':');
        out.push_str(value.trim());
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(body_hash);
    Ok(out)
}

/// `SDK-HMAC-SHA256\n<X-Sdk-Date>\nhex(sha256(canonical request))`.
pub fn string_to_sign(sdk_date: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{sdk_date}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())))
}

/// hex(hmac_sha256(secret_key, string_to_sign)), what a client puts in `Signature=`.
pub fn signature(secret_key: &str, string_to_sign: &str) -> String {
    let mut mac = hmac_sha256(secret_key);
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn hmac_sha256(key: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length")
}

/// The percent-decoded path split on `/`, each segment re-encoded, ending in `/`.
fn canonical_uri(path: &str) -> String {
    let decoded: Vec<u8> = percent_decode_str(path).collect();
    let mut out = decoded.split(|&b| b == b'/').map(encode).collect::<Vec<_>>().join("/");
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// Decoded `k=v` pairs sorted by key then value, re-encoded, joined by `&`.
/// A name without `=` has an empty value; empty pieces (`a=1&&b=2`) are skipped.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            (percent_decode_str(key).collect(), percent_decode_str(value).collect())
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(bytes: &[u8]) -> String {
    percent_encode(bytes, NOT_UNRESERVED).to_string()
}

/// Parse `YYYYMMDDTHHMMSSZ` (UTC) into Unix seconds.
fn parse_sdk_date(date: &str) -> Result<i64> {
    let b = date.as_bytes();
    let digits_at = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(Error::MalformedDate);
    }
    let parts = (
        digits_at(0..4),
        digits_at(4..6),
        digits_at(6..8),
        digits_at(9..11),
        digits_at(11..13),
        digits_at(13..15),
    );
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = parts else {
        return Err(Error::MalformedDate);
    };
    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or(Error::MalformedDate)?;
    let time = NaiveTime::from_hms_opt(hour, minute, second).ok_or(Error::MalformedDate)?;
    Ok(NaiveDateTime::new(date, time).and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AK: &str = "AKTEST";
    const SK: &str = "SKTEST";
    const PROJECT: &str = "proj1";
    const DATE: &str = "20261122T212146Z";
    const USER_AGENT: &str = "huaweicloud-usdk-python/3.0; os/Linux##1_SMP_PREEMPT_DYNAMIC_@0#x86_64 \
                              python/3.11.7 impl/CPython; app/592d007b-2257-4d8e-99dc-161678f3054d";
    const SIGNED: &str = "content-type;host;user-agent;x-project-id;x-sdk-date";
    const SIGNATURE_GET: &str = "bee9be6fa0b2da63dcc7a8ff86757b6d1773995c27943023c1c3129438ec6507";
    const SIGNATURE_POST: &str = "6d05296ce90e739ce4dcfe4adff05a90edf8767f2da447c71a394662c001e4cd";
    const POST_BODY: &str = r#"{"type": "import_metadata", "src_target": "dir", "src_prefix": "a/b/", "dest_target": "dir", "dest_prefix": "a/b/"}"#;

    /// 2026-11-22T21:21:46Z, the moment the vectors were signed.
    fn signed_at() -> i64 {
        parse_sdk_date(DATE).unwrap()
    }

    fn keys(ak: &str) -> Option<AccessKey> {
        (ak == AK).then(|| AccessKey { secret_key: SK.into(), project_id: PROJECT.into() })
    }

    fn authorization(signature: &str) -> String {
        format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature={signature}")
    }

    /// The headers the SDK sent for a vector, with the given Content-Type and Authorization.
    fn headers(content_type: &'static str, authorization: String) -> Vec<(String, String)> {
        vec![
            ("Content-Type".into(), content_type.into()),
            ("Host".into(), "127.0.0.1:8790".into()),
            ("User-Agent".into(), USER_AGENT.into()),
            ("X-Project-Id".into(), PROJECT.into()),
            ("X-Sdk-Date".into(), DATE.into()),
            ("Authorization".into(), authorization),
        ]
    }

    fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    fn get_headers() -> Vec<(String, String)> {
        headers("application/json", authorization(SIGNATURE_GET))
    }

    fn post_headers() -> Vec<(String, String)> {
        headers("application/json;charset=utf-8", authorization(SIGNATURE_POST))
    }

    fn get_request<'a>(headers: &'a [(&'a str, &'a str)]) -> SignedRequest<'a> {
        SignedRequest {
            method: "GET",
            path: "/v1/proj1/sfs-turbo/s1/hpc-cache/tasks",
            query: "limit=10&type=import",
            headers,
            body: b"",
        }
    }

    fn post_request<'a>(headers: &'a [(&'a str, &'a str)], body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            path: "/v1/proj1/sfs-turbo/s1/hpc-cache/task",
            query: "",
            headers,
            body,
        }
    }

    fn verify_at(request: &SignedRequest<'_>, now: i64) -> Result<Authenticated> {
        verify(request, keys, now)
    }

    fn set(headers: &mut [(String, String)], name: &str, value: &str) {
        headers.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)).unwrap().1 = value.into();
    }

    #[test]
    fn sdk_vector_get_verifies() {
        let owned = get_headers();
        let headers = borrowed(&owned);
        let got = verify_at(&get_request(&headers), signed_at()).unwrap();
        let want = Authenticated { access_key: AK.into(), project_id: PROJECT.into(), body_signed: true };
        assert_eq!(got, want);
        // The query order on the wire does not matter.
        let mut request = get_request(&headers);
        request.query = "type=import&limit=10";
        assert!(verify_at(&request, signed_at()).is_ok());
    }

    #[test]
    fn sdk_vector_post_verifies() {
        let owned = post_headers();
        let headers = borrowed(&owned);
        let request = post_request(&headers, POST_BODY.as_bytes());
        assert_eq!(verify_at(&request, signed_at()).unwrap().project_id, PROJECT);

        let signed: Vec<&str> = SIGNED.split(';').collect();
        let canonical =
            canonical_request(&request, &signed, &hex::encode(Sha256::digest(POST_BODY))).unwrap();
        let want = format!(
            "POST\n/v1/proj1/sfs-turbo/s1/hpc-cache/task/\n\ncontent-type:application/json;charset=utf-8\n\
             host:127.0.0.1:8790\nuser-agent:{USER_AGENT}\nx-project-id:proj1\nx-sdk-date:{DATE}\n\n\
             {SIGNED}\n402831324dfadfa920e1744ba6959ddb9db69f1522697418cfbfa5a520dfbf5e"
        );
        assert_eq!(canonical, want);
        assert_eq!(signature(SK, &string_to_sign(DATE, &canonical)), SIGNATURE_POST);
    }

    #[test]
    fn body_changed_after_signing_is_refused() {
        let owned = post_headers();
        let headers = borrowed(&owned);
        let tampered = POST_BODY.replace("import_metadata", "export");
        let request = post_request(&headers, tampered.as_bytes());
        assert_eq!(verify_at(&request, signed_at()), Err(Error::BadSignature));
    }

    #[test]
    fn any_signed_part_changed_is_refused() {
        let mut owned = get_headers();
        set(&mut owned, "X-Project-Id", "proj2");
        let headers = borrowed(&owned);
        assert_eq!(verify_at(&get_request(&headers), signed_at()), Err(Error::BadSignature));

        let mut owned = get_headers();
        set(&mut owned, "Host", "127.0.0.1:8791");
        let headers = borrowed(&owned);
        assert_eq!(verify_at(&get_request(&headers), signed_at()), Err(Error::BadSignature));

        let owned = get_headers();
        let headers = borrowed(&owned);
        for (method, path, query) in [
            ("DELETE", "/v1/proj1/sfs-turbo/s1/hpc-cache/tasks", "limit=10&type=import"),
            ("GET", "/v1/proj2/sfs-turbo/s1/hpc-cache/tasks", "limit=10&type=import"),
            ("GET", "/v1/proj1/sfs-turbo/s1/hpc-cache/tasks", "limit=11&type=import"),
            ("GET", "/v1/proj1/sfs-turbo/s1/hpc-cache/tasks", "limit=10&type=export"),
            ("GET", "/v1/proj1/sfs-turbo/s1/hpc-cache/tasks", "limit=10"),
        ] {
            let request = SignedRequest { method, path, query, ..get_request(&headers) };
            assert_eq!(verify_at(&request, signed_at()), Err(Error::BadSignature), "{method} {path}?{query}");
        }
    }

    #[test]
    fn canonical_form_ignores_what_the_signer_ignores() {
        // Header name case, surrounding spaces, a trailing '/', the method's case.
        let mut owned: Vec<(String, String)> =
            get_headers().into_iter().map(|(n, v)| (n.to_ascii_uppercase(), format!("  {v} "))).collect();
        set(&mut owned, "Authorization", &authorization(SIGNATURE_GET));
        let headers = borrowed(&owned);
        let request = SignedRequest {
            method: "get",
            path: "/v1/proj1/sfs-turbo/s1/hpc-cache/tasks/",
            ..get_request(&headers)
        };
        assert!(verify_at(&request, signed_at()).is_ok());
        // Percent-encoding of unreserved characters.
        let request =
            SignedRequest { path: "/v1/%70roj1/sfs-turbo/s1/hpc-cache/tasks", ..get_request(&headers) };
        assert!(verify_at(&request, signed_at()).is_ok());
    }

    #[test]
    fn uri_and_query_are_reencoded_like_the_sdk() {
        assert_eq!(canonical_uri("/v1/a b/c%2Fd/é~-_./"), "/v1/a%20b/c/d/%C3%A9~-_./");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a%ZZ"), "/a%25ZZ/");
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0&&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("q=a+b%20c&k%3D=%2F"), "k%3D=%2F&q=a%2Bb%20c");
        assert_eq!(canonical_query("x=%ff"), "x=%FF");
    }

    #[test]
    fn clock_skew_over_fifteen_minutes_is_refused() {
        let owned = get_headers();
        let headers = borrowed(&owned);
        let request = get_request(&headers);
        for now in [signed_at() + MAX_CLOCK_SKEW_SECS, signed_at() - MAX_CLOCK_SKEW_SECS] {
            assert!(verify_at(&request, now).is_ok());
        }
        for now in [signed_at() + 16 * 60, signed_at() - 16 * 60] {
            let err = verify_at(&request, now).unwrap_err();
            assert_eq!(err, Error::DateSkew { skew_secs: 16 * 60, max_secs: MAX_CLOCK_SKEW_SECS });
        }
    }

    #[test]
    fn sdk_dates_are_strict() {
        assert_eq!(parse_sdk_date(DATE), Ok(1_795_382_506));
        for bad in [
            "",
            "20261122T212146",
            "20261122 212146Z",
            "2026-11-22T21:21:46Z",
            "20261322T212146Z",
            "20261131T212146Z",
            "20261122T246146Z",
            "2026112xT212146Z",
            "+0261122T212146Z",
            "20261122T212146z",
            "२०२६1122T212146Z",
        ] {
            assert_eq!(parse_sdk_date(bad), Err(Error::MalformedDate), "{bad:?}");
        }
        let mut owned = get_headers();
        set(&mut owned, "X-Sdk-Date", "Sun, 22 Nov 2026 21:21:46 GMT");
        let headers = borrowed(&owned);
        assert_eq!(verify_at(&get_request(&headers), signed_at()), Err(Error::MalformedDate));
        let owned: Vec<_> = get_headers().into_iter().filter(|(n, _)| n != "X-Sdk-Date").collect();
        let headers = borrowed(&owned);
        assert_eq!(verify_at(&get_request(&headers), signed_at()), Err(Error::MissingHeader("X-Sdk-Date")));
    }

    #[test]
    fn wrong_secret_or_unknown_key_is_refused() {
        let owned = get_headers();
        let headers = borrowed(&owned);
        let request = get_request(&headers);
        let wrong_sk = |_: &str| Some(AccessKey { secret_key: "SKTEST2".into(), project_id: PROJECT.into() });
        assert_eq!(verify(&request, wrong_sk, signed_at()), Err(Error::BadSignature));
        assert_eq!(verify(&request, |_| None, signed_at()), Err(Error::UnknownAccessKey));

        let mut owned = get_headers();
        set(&mut owned, "Authorization", &authorization(SIGNATURE_GET).replace(AK, "AKOTHER"));
        let headers = borrowed(&owned);
        assert_eq!(verify_at(&get_request(&headers), signed_at()), Err(Error::UnknownAccessKey));
    }

    #[test]
    fn project_header_must_be_the_keys_project() {
        let owned = get_headers();
        let headers = borrowed(&owned);
        let other_project = |_: &str| Some(AccessKey { secret_key: SK.into(), project_id: "proj2".into() });
        assert_eq!(verify(&get_request(&headers), other_project, signed_at()), Err(Error::ProjectMismatch));
    }

    #[test]
    fn malformed_authorization_headers_are_refused() {
        let sig = SIGNATURE_GET;
        let malformed = [
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}"),
            format!("{ALGORITHM} Access={AK}, Signature={sig}"),
            format!("{ALGORITHM} SignedHeaders={SIGNED}, Signature={sig}"),
            format!("{ALGORITHM} Access=, SignedHeaders={SIGNED}, Signature={sig}"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature={}", &sig[..63]),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature={sig}00"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature={}", sig.replace('b', "g")),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature="),
            format!("{ALGORITHM} Access={AK}, Access={AK}, SignedHeaders={SIGNED}, Signature={sig}"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature={sig}, Signature={sig}"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature={sig}, Extra=1"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={SIGNED}, Signature={sig},"),
            format!("{ALGORITHM} Access={AK} SignedHeaders={SIGNED} Signature={sig}"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders=Host;x-sdk-date, Signature={sig}"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders=host;;x-sdk-date, Signature={sig}"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders=host;host, Signature={sig}"),
            format!("{ALGORITHM} Access={AK}, SignedHeaders=, Signature={sig}"),
            ALGORITHM.to_string(),
        ];
        for value in &malformed {
            let err = Authorization::parse(value).unwrap_err();
            assert!(matches!(err, Error::MalformedAuthorization(_)), "{value}: {err:?}");
        }
        for value in ["", "Bearer abc", "sdk-hmac-sha256 Access=a", "SDK-HMAC-SHA1 Access=a"] {
            assert_eq!(Authorization::parse(value), Err(Error::UnsupportedScheme), "{value}");
        }
        let upper_case = authorization(&sig.to_ascii_uppercase());
        let parsed = Authorization::parse(&upper_case).unwrap();
        assert_eq!((parsed.access_key, parsed.signed_headers.len()), (AK, 5));
        assert_eq!(hex::encode(parsed.signature), sig);

        // Through verify: missing, repeated and malformed headers.
        let owned: Vec<_> = get_headers().into_iter().filter(|(n, _)| n != "Authorization").collect();
        let headers = borrowed(&owned);
        assert_eq!(
            verify_at(&get_request(&headers), signed_at()),
            Err(Error::MissingHeader("Authorization"))
        );
        let mut owned = get_headers();
        owned.push(("authorization".into(), authorization(SIGNATURE_GET)));
        let headers = borrowed(&owned);
        assert_eq!(
            verify_at(&get_request(&headers), signed_at()),
            Err(Error::RepeatedHeader("authorization".into()))
        );
        let mut owned = get_headers();
        set(&mut owned, "Authorization", &malformed[0]);
        let headers = borrowed(&owned);
        assert!(matches!(
            verify_at(&get_request(&headers), signed_at()),
            Err(Error::MalformedAuthorization(_))
        ));
    }

    #[test]
    fn signed_headers_must_be_present_once() {
        let owned: Vec<_> = get_headers().into_iter().filter(|(n, _)| n != "User-Agent").collect();
        let headers = borrowed(&owned);
        assert_eq!(
            verify_at(&get_request(&headers), signed_at()),
            Err(Error::MissingSignedHeader("user-agent".into()))
        );
        let mut owned = get_headers();
        owned.push(("content-type".into(), "text/plain".into()));
        let headers = borrowed(&owned);
        assert_eq!(
            verify_at(&get_request(&headers), signed_at()),
            Err(Error::RepeatedHeader("content-type".into()))
        );
    }

    /// Headers of a POST signed as the SDK would, with `X-Sdk-Content-Sha256` signed too.
    fn sign_with_content_hash(content_hash: &str, body: &[u8]) -> Vec<(String, String)> {
        let signed = ["host", "x-sdk-content-sha256", "x-sdk-date"];
        let mut owned = vec![
            ("Host".to_string(), "127.0.0.1:8790".to_string()),
            ("X-Sdk-Content-Sha256".to_string(), content_hash.to_string()),
            ("X-Sdk-Date".to_string(), DATE.to_string()),
        ];
        let headers = borrowed(&owned);
        let request = post_request(&headers, body);
        let canonical = canonical_request(&request, &signed, content_hash).unwrap();
        let sig = signature(SK, &string_to_sign(DATE, &canonical));
        owned.push((
            "Authorization".into(),
            format!("{ALGORITHM} Access={AK}, SignedHeaders={}, Signature={sig}", signed.join(";")),
        ));
        owned
    }

    #[test]
    fn content_sha256_header_replaces_the_body_hash() {
        let owned = sign_with_content_hash(UNSIGNED_PAYLOAD, b"{}");
        let headers = borrowed(&owned);
        // The body is not covered: any body verifies, and the result says so.
        let got = verify_at(&post_request(&headers, b"{\"other\":1}"), signed_at()).unwrap();
        assert!(!got.body_signed);

        let body_hash = hex::encode(Sha256::digest(b"{}"));
        let owned = sign_with_content_hash(&body_hash, b"{}");
        let headers = borrowed(&owned);
        assert!(verify_at(&post_request(&headers, b"{}"), signed_at()).unwrap().body_signed);
        // A signed hash of another body does not let this body through.
        assert_eq!(verify_at(&post_request(&headers, b"[]"), signed_at()), Err(Error::BodyHashMismatch));
    }

    #[test]
    fn access_key_debug_hides_the_secret() {
        let key = keys(AK).unwrap();
        assert!(!format!("{key:?}").contains(SK));
    }
}
