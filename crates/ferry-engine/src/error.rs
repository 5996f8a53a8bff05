use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors that stop a whole run (item errors go into the report instead).
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] ferry_storage::Error),
    #[error("checkpoint store: {0}")]
    Store(#[from] ferry_store::Error),
    #[error("invalid filter {pattern:?}: {reason}")]
    Filter { pattern: String, reason: String },
    #[error("{0}")]
    Usage(String),
    /// Another run holds what this one needs.
    #[error("{0}")]
    Busy(String),
}
