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
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// A checkpoint's tensors do not fit the model.
    #[error("{path} does not fit {model}:\n{report}")]
    KeyMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The model's name.
        model: String,
        /// Every missing, unexpected and mis-shaped tensor (see [`crate::KeyReport`]).
        report: String,
    },

    /// A configuration file or value is wrong.
    #[error("{source_name}: {problem}")]
    Config {
        /// The file, repo or value.
        source_name: String,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// A file of a hub repo is neither in the cache nor downloadable.
    #[error("{repo}/{file}: {problem}")]
    Hub {
        /// The repo id (`timm/resnet50.a1_in1k`).
        repo: String,
        /// The file in it.
        file: String,
        /// Why, and what to do.
        problem: String,
        /// The hub answered that the repo or file does not exist (404), as opposed to being
        /// unreachable, refusing access or not being asked (offline).
        absent: bool,
    },

    /// An image could not be decoded or prepared for a model.
    #[error("{path}: {problem}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// The parameter store is unusable (a thread panicked holding it, a tensor went missing).
    #[error("parameter store: {0}")]
    ParamStore(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
