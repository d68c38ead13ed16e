//! An I/O error that names the path it happened on, shared by every
//! module's error enum (`Io(#[from] PathIoError)`), and the `io(path, e)`
//! constructor they all get from [`FromPathIo`].

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathIoError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// `SomeError::io(path, e)` for any error that wraps a [`PathIoError`].
pub trait FromPathIo: From<PathIoError> {
    fn io(path: &Path, source: std::io::Error) -> Self {
        PathIoError {
            path: path.display().to_string(),
            source,
        }
        .into()
    }
}

impl<T: From<PathIoError>> FromPathIo for T {}
