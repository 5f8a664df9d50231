//! medxfer-train: fine-tuning as the reference ran it, the hyperparameter search and feature
//! extraction.
//!
//! - [`sgd`]: SGD with Nesterov momentum and coupled weight decay, as PyTorch's.
//! - [`schedule`]: cosine annealing per epoch to 1e-6.
//! - [`search_space`]: the 75 Halton (learning rate, weight decay) points.
//! - [`metrics`]: confusion matrix, per-class recall, balanced accuracy.
//! - [`finetune`]: one run, resumable, with its history, kept model and test/OOD evaluation;
//!   [`checkpoint`] its atomic per-epoch files.
//!
//! - [`search`]: the trials of one (backbone, task), shardable and resumable; A_opt.
//!   [`halving`]: successive halving over them (a named option).
//!
//! - [`extract`]: the feature files medxfer-scores reads.
//!
//! - [`device`]: `cpu` or `cuda:N` (the `cuda` feature builds candle's CUDA backend).

pub mod checkpoint;
pub mod device;
mod error;
pub mod extract;
pub mod finetune;
pub mod halving;
pub mod metrics;
pub mod models;
pub mod progress_bar;
pub mod schedule;
pub mod search;
pub mod search_space;
pub mod sgd;

pub use error::{Error, Result};
