//! The crate's one error: which file, what could not be done, and the system's reason.

use std::path::{Path, PathBuf};

/// A file operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {action}: {source}", path.display())]
pub struct Error {
    path: PathBuf,
    action: &'static str,
    source: std::io::Error,
}

impl Error {
    pub(crate) fn new(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        Self { path: path.to_path_buf(), action, source }
    }

    /// The file or folder the operation was on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was being done ("write", "rename into place", ...).
    pub fn action(&self) -> &'static str {
        self.action
    }

    /// What went wrong without the path ("cannot write: No space left on device"), for error
    /// types that name the file themselves.
    pub fn problem(&self) -> String {
        format!("cannot {}: {}", self.action, self.source)
    }

    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
