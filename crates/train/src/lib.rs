//! medxfer-train: fine-tuning, the hyperparameter search and feature extraction.
//!
//! Nothing lives here yet. Issue 5 fills this crate with the reference fine-tuning loop
//! (SGD with Nesterov momentum, cosine schedule, best-validation-loss checkpoint), the 75-point
//! Halton search over learning rate and weight decay with resumable, shardable trials, and
//! feature extraction for the scores. The `cuda` feature will switch candle to CUDA kernels.
