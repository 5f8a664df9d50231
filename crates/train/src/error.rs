//! The training crate's one error type.

/// Everything that can go wrong training, searching or extracting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Zoo(#[from] medxfer_zoo::Error),
    #[error(transparent)]
    Data(#[from] medxfer_data::Error),
    /// A checkpoint is missing, corrupt or does not fit.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The training loss became NaN or infinite: the learning rate is too high for this model.
    #[error("the training loss became {loss} in epoch {epoch} (learning rate {learning_rate:e}); the run diverged")]
    Diverged { epoch: usize, learning_rate: f64, loss: f64 },
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    #[error("{path}: {problem}")]
    Io { path: std::path::PathBuf, problem: String },
}

impl From<medxfer_durable::Error> for Error {
    fn from(error: medxfer_durable::Error) -> Self {
        Self::Io { path: error.path().to_path_buf(), problem: error.problem() }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
