use std::io;

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the storage layer. Each says whether retrying may help.
#[derive(Debug, Error)]
pub enum Error {
    /// The location string cannot be understood; the message says how to fix it.
    #[error("{0}")]
    InvalidLocation(String),
    /// Something needed to reach the store is missing (credentials, endpoint).
    #[error("{0}")]
    Config(String),
    #[error("{what} not found")]
    NotFound { what: String },
    /// A location that is not there, with what to do about it.
    #[error("{what} not found: {fix}")]
    Missing { what: String, fix: &'static str },
    /// No connection could be made to the store's endpoint.
    #[error("cannot connect to {endpoint} ({reason}): {fix}")]
    Unreachable { endpoint: String, reason: &'static str, fix: String },
    /// One request that found no store to connect to (it may be restarting).
    #[error("{context}: cannot connect to the store ({})", connect_failure(source).unwrap_or("the connection failed"))]
    Connect {
        context: String,
        #[source]
        source: opendal::Error,
    },
    #[error("permission denied: {what}")]
    PermissionDenied { what: String },
    /// A name that cannot be used on the destination, with the reason.
    #[error("unusable name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// The source changed while it was being copied.
    #[error("source changed during copy: {0}")]
    SourceChanged(String),
    /// A destination file changed by someone else while the run went on,
    /// left as it is ([`crate::PosixRoot::keeping_changed_since`]).
    #[error("{0} was changed meanwhile by someone else: left as it is")]
    ChangedMeanwhile(String),
    /// Fewer or more bytes arrived than the size declared when the copy started.
    #[error("size mismatch: expected {expected} bytes, got {got}")]
    SizeMismatch { expected: u64, got: u64 },
    /// The content read does not match the checksum stored with it;
    /// `expected` and `got` name the kind of checksum with the value.
    #[error("checksum mismatch reading {path}: stored {expected}, read {got}")]
    ChecksumMismatch { path: String, expected: String, got: String },
    /// A copy read back after it was written (`--verify transferred`) is
    /// not what was written. The copy is removed and written again.
    #[error("verification failed: written with crc32c {wrote:08x}, read back {read:08x}")]
    VerifyFailed { wrote: u32, read: u32 },
    /// A directory marker object (a key ending in `/`) that holds data,
    /// which a directory cannot keep.
    #[error(
        "the object {key} holds {size} bytes, but its key ends with '/', which names a directory: \
         its data cannot be copied (rename it to a key without the '/')"
    )]
    MarkerHoldsData { key: String, size: u64 },
    /// A path inside a local root is, or goes through, a symlink.
    #[error("refusing to go through symlink {0}")]
    SymlinkInPath(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A listing that cannot be trusted (it went back to an earlier page).
    #[error("{0}")]
    Listing(String),
    /// A copy within the store that the store does not make (or not for
    /// these credentials): copying through ferry may still work.
    #[error("{0}")]
    CopyRefused(String),
    /// An HTTP answer other than success, from calls ferry makes itself.
    #[error("{context}: HTTP {status}: {detail}")]
    Http { context: String, status: u16, detail: String },
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: opendal::Error,
    },
}

impl Error {
    /// Whether the same operation may succeed when tried again.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Store { source, .. } => store_temporary(source),
            Error::Io { source, .. } => {
                // Read streams carry OpenDAL errors inside io::Error.
                if let Some(inner) = source.get_ref().and_then(|e| e.downcast_ref::<opendal::Error>()) {
                    return store_temporary(inner);
                }
                matches!(
                    source.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::BrokenPipe
                )
            }
            Error::Http { status, .. } => *status == 429 || *status >= 500,
            Error::Connect { .. } => true,
            Error::SizeMismatch { .. }
            | Error::SourceChanged(_)
            | Error::ChecksumMismatch { .. }
            | Error::VerifyFailed { .. } => true,
            _ => false,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { what: context },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                what: format!("{context} (check its permissions and owner against the user ferry runs as)"),
            },
            _ => Error::Io { context, source },
        }
    }

    pub fn store(context: impl Into<String>, source: opendal::Error) -> Self {
        let context = context.into();
        // Connect failures come as unexpected errors; others skip the walk
        // through their causes (a missing object is common, and no news).
        if source.kind() == opendal::ErrorKind::Unexpected && connect_failure(&source).is_some() {
            return Error::Connect { context, source };
        }
        match source.kind() {
            opendal::ErrorKind::NotFound => Error::NotFound { what: context },
            opendal::ErrorKind::PermissionDenied => Error::PermissionDenied { what: context },
            opendal::ErrorKind::ConditionNotMatch => Error::SourceChanged(context),
            _ if refused_checksum(&source) => Error::Store {
                context: format!(
                    "{context} (the store does not take the x-amz-checksum-* headers of uploads: \
                     add ?checksum=none to the location)"
                ),
                source,
            },
            _ => Error::Store { context, source },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. } | Error::Missing { .. })
    }
}

/// Why no connection could be made to a store's endpoint, when that is
/// why `e` failed: its cause chain ends in the HTTP client's connect error.
pub(crate) fn connect_failure(e: &opendal::Error) -> Option<&'static str> {
    let mut connecting = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        let text = err.to_string();
        if text.starts_with("dns error") {
            return Some("its host name does not resolve");
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return Some("connection refused"),
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    return Some("no route to it")
                }
                io::ErrorKind::TimedOut if connecting => return Some("the connection timed out"),
                _ => {}
            }
        }
        // The HTTP client's own connect timeout and the connector's race:
        // the first is not an io::Error, only its text says what it is.
        if connecting && text.contains("timed out") {
            return Some("the connection timed out");
        }
        connecting |= text.contains("(Connect)");
        cause = err.source();
    }
    connecting.then_some("the connection failed")
}

/// An upload request refused for its checksum headers, as stores that do
/// not know them answer (a changed body, `BadDigest`/`InvalidDigest`, is a
/// checksum doing its job, not this).
fn refused_checksum(e: &opendal::Error) -> bool {
    let text = e.to_string();
    let upload = ["PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload"]
        .iter()
        .any(|op| text.contains(&format!("service_operation: {op}")));
    let lower = text.to_ascii_lowercase();
    upload && lower.contains("checksum") && !lower.contains("baddigest") && !lower.contains("invaliddigest")
}

/// Temporary by OpenDAL's judgement, or a throttling answer, or an unexpected
/// failure not known to be permanent (retries already ran out does not make
/// the next attempt of the whole item futile).
fn store_temporary(e: &opendal::Error) -> bool {
    e.is_temporary()
        || matches!(e.kind(), opendal::ErrorKind::RateLimited)
        || matches!(e.kind(), opendal::ErrorKind::Unexpected) && !e.is_permanent()
}
