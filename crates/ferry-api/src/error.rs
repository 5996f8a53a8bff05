use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request was refused. Every variant so far means "not authenticated"
/// (401); messages name headers, never secrets.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("header {0} sent more than once")]
    RepeatedHeader(String),
    #[error("unsupported Authorization scheme (expected SDK-HMAC-SHA256)")]
    UnsupportedScheme,
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(String),
    #[error("signed header {0} is not in the request")]
    MissingSignedHeader(String),
    #[error("malformed X-Sdk-Date (expected YYYYMMDDTHHMMSSZ)")]
    MalformedDate,
    #[error("X-Sdk-Date is {skew_secs} s away from the server clock (at most {max_secs} s allowed)")]
    DateSkew { skew_secs: i64, max_secs: i64 },
    #[error("X-Sdk-Content-Sha256 does not match the body")]
    BodyHashMismatch,
    #[error("unknown access key")]
    UnknownAccessKey,
    #[error("signature does not match")]
    BadSignature,
    #[error("X-Project-Id is not the credential's project")]
    ProjectMismatch,
}
