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

    /// Images that could not be read (decoded, or resized within the limits), every one of them:
    /// the image cache is built only from a folder whose images all read.
    #[error("{} of {total} image(s) could not be read; remove or replace them, then run again:{}", .problems.len(), listed(.problems))]
    Unreadable {
        /// The images asked for.
        total: usize,
        /// Each unreadable image's error (which names its file).
        problems: Vec<String>,
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

/// The first 20 problems, a line each, and how many more.
fn listed(problems: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut text: String = problems.iter().take(SHOWN).map(|problem| format!("\n  {problem}")).collect();
    if problems.len() > SHOWN {
        text.push_str(&format!("\n  ... and {} more", problems.len() - SHOWN));
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The list stops at 20 problems and counts the rest.
    #[test]
    fn a_long_list_of_unreadable_images_is_cut_and_counted() {
        let problems: Vec<String> = (0..25).map(|i| format!("image{i}.png: cannot decode")).collect();
        let message = Error::Unreadable { total: 40, problems }.to_string();
        assert!(message.starts_with("25 of 40 image(s) could not be read"), "{message}");
        assert_eq!(message.lines().filter(|line| line.starts_with("  image")).count(), 20, "{message}");
        assert!(message.contains("image19.png") && !message.contains("image20.png") && message.ends_with("... and 5 more"), "{message}");
    }
}
