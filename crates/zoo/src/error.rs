//! The zoo's one error type: every message says what was wrong, where, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong building or loading a backbone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A checkpoint could not be read.
    #[error("{path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },

    /// A checkpoint's tensors do not fit the model.
    #[error("{path} does not fit {model}:\n{report}")]
    KeyMismatch { path: PathBuf, model: String, report: String },

    /// A configuration file or value is wrong.
    #[error("{source_name}: {problem}")]
    Config { source_name: String, problem: String },

    /// A file of a hub repo is neither in the cache nor downloadable.
    #[error("{repo}/{file}: {problem}")]
    Hub { repo: String, file: String, problem: String },

    /// An image could not be decoded or prepared for a model.
    #[error("{path}: {problem}")]
    Image { path: PathBuf, problem: String },

    /// The parameter store is unusable (a thread panicked holding it, a tensor went missing).
    #[error("parameter store: {0}")]
    ParamStore(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
