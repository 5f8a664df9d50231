//! The training crate's one error type.

/// Everything that can go wrong training, searching or extracting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A backbone could not be built or loaded.
    #[error(transparent)]
    Zoo(#[from] medxfer_zoo::Error),
    /// A split's images could not be read or batched.
    #[error(transparent)]
    Data(#[from] medxfer_data::Error),
    /// A checkpoint is missing, corrupt or does not fit.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The training loss became NaN or infinite: the learning rate is too high for this model.
    #[error("the training loss became {loss} in epoch {epoch} (learning rate {learning_rate:e}); the run diverged")]
    Diverged {
        /// The epoch (1-based) whose loss was not finite.
        epoch: usize,
        /// The run's learning rate.
        learning_rate: f64,
        /// The loss.
        loss: f64,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// A run folder holds a run made with other settings than the ones asked for.
    #[error(
        "{}: this run was made with other settings: {}. Give the recorded values to continue it, or another --out for a new run",
        dir.display(),
        differences.join("; ")
    )]
    OtherSettings {
        /// The run's folder.
        dir: std::path::PathBuf,
        /// Each differing setting: its recorded value, the one asked for, its option.
        differences: Vec<String>,
    },
    /// A file could not be read or written.
    #[error("{path}: {problem}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        problem: String,
    },
}

impl From<medxfer_durable::Error> for Error {
    fn from(error: medxfer_durable::Error) -> Self {
        Self::Io { path: error.path().to_path_buf(), problem: error.problem() }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
