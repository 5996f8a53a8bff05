//! Which relative paths ferry accepts. A key or path that breaks a rule is
//! reported and never mapped onto another name.

use thiserror::Error;

/// Longest path component a POSIX file system accepts (bytes).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest relative path ferry accepts (bytes), PATH_MAX on Linux.
pub const MAX_PATH_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("empty path")]
    Empty,
    #[error("absolute path (leading '/')")]
    Absolute,
    #[error("empty path component ('//' or trailing '/')")]
    EmptyComponent,
    #[error("'.' or '..' component")]
    DotComponent,
    #[error("NUL byte in name")]
    Nul,
    #[error("path component longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
    #[error("path longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
}

/// Check that `path` is a relative, `/`-separated path that names the same
/// place on every store: no `.`/`..`/empty components, no NUL, no component
/// longer than a POSIX file system allows.
pub fn validate_rel_path(path: &str) -> Result<(), NameError> {
    if path.is_empty() {
        return Err(NameError::Empty);
    }
    if path.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(NameError::TooLong);
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => return Err(NameError::DotComponent),
            _ => {}
        }
        if comp.contains('\0') {
            return Err(NameError::Nul);
        }
        if comp.len() > MAX_COMPONENT_BYTES {
            return Err(NameError::ComponentTooLong);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["a", "a/b", ".hidden", "trailing.", "with space", "é", "e\u{301}", "a..b", "..\\x"] {
            assert_eq!(validate_rel_path(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_rel_path(&"x".repeat(255)), Ok(()));
    }

    #[test]
    fn rejects_unsafe_names() {
        let cases = [
            ("", NameError::Empty),
            ("/abs", NameError::Absolute),
            ("../x", NameError::DotComponent),
            ("a/./b", NameError::DotComponent),
            ("a/../../etc", NameError::DotComponent),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            ("a\0b", NameError::Nul),
        ];
        for (input, want) in cases {
            assert_eq!(validate_rel_path(input), Err(want), "{input:?}");
        }
        assert_eq!(validate_rel_path(&"x".repeat(256)), Err(NameError::ComponentTooLong));
        assert_eq!(validate_rel_path(&"a/".repeat(2100)), Err(NameError::TooLong));
    }
}
