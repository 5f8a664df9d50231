//! The data crate's one error type: every message names the file and says what was expected.

use std::path::PathBuf;

/// Everything that can go wrong between a dataset folder and a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be read.
    #[error("{path}: {problem}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system's reason.
        problem: String,
    },

    /// A file was read but its content is not what the layout promises.
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was found and what was expected.
        problem: String,
    },

    /// A configuration value (datasets/*.toml, a CLI argument) is wrong.
    #[error("{source_name}: {problem}")]
    Config {
        /// The file or argument.
        source_name: String,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// A split cannot be made as asked.
    #[error("{0}")]
    Split(String),

    /// An image could not be transformed (resized, cropped) as asked.
    #[error("{0}")]
    Transform(String),

    /// The batch loader cannot run as asked, or its thread failed.
    #[error("batch loader: {0}")]
    Loader(String),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<medxfer_durable::Error> for Error {
    fn from(error: medxfer_durable::Error) -> Self {
        Self::Io { path: error.path().to_path_buf(), problem: error.problem() }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: impl std::fmt::Display) -> Self {
        Self::Io { path: path.into(), problem: error.to_string() }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Format { path: path.into(), problem: problem.into() }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
