//! medxfer-train: fine-tuning as the reference ran it, the hyperparameter search and feature
//! extraction.
//!
//! - One run ([`fine_tune`]): a backbone with a fresh head ([`start_fine_tuning`]) trained by
//!   [`NesterovSgd`] with cosine annealing ([`cosine`]), validated every epoch, the kept epoch
//!   chosen by [`Selection`], evaluated on test and OOD ([`Evaluation`]); resumable from its
//!   atomic per-epoch checkpoints.
//! - The search ([`search`]): the 75 Halton (lr, wd) points ([`halton_points`]), each a run in
//!   its own folder, shared by workers ([`Shard`], one claim per trial); A_opt
//!   ([`select_best`]). [`search_with_halving`]: successive halving over them (a named option).
//! - [`extract`]: the feature files medxfer-scores reads.
//! - [`calibration`]: how far a fine-tuned model's probabilities can be read as such (NLL, ECE,
//!   Brier) and temperature scaling fitted on the validation images ([`logits_split`]).
//! - [`SaliencyBatches`]: Grad-CAM maps of a fine-tuned model over a split, on the crops it saw.
//! - [`parse_device`]: `cpu` or `cuda:N` (the `cuda` feature builds candle's CUDA backend);
//!   [`gpu_arithmetic`]: the `--precision`, `--matmul-tf32` and `--conv-algorithms` options.
//!
//! ```no_run
//! use std::path::Path;
//! use medxfer_train::{Normalization, RunSettings, SearchSettings, Shard, SplitData, TrainingOptions};
//!
//! # fn example(entry: &medxfer_zoo::ModelEntry, data: &medxfer_train::RunData) -> medxfer_train::Result<()> {
//! let device = medxfer_train::parse_device("cpu")?;
//! let weights = Path::new("resnet18.safetensors");
//! let normalization = Normalization::study(entry.preprocessing.mean, entry.preprocessing.std, false);
//! let base = RunSettings::from_options(&TrainingOptions::reference(), normalization);
//! let make = || medxfer_train::start_fine_tuning(entry, weights, data.classes, 0, &device);
//! let settings = SearchSettings { model: &entry.name, base, trials: 75, shard: Shard::ALL };
//! let quiet = &mut |_: &medxfer_train::TrialPoint, _: &medxfer_train::EpochRecord| {};
//! let summary = medxfer_train::search(&make, data, &settings, Path::new("runs/resnet18"), quiet)?;
//! println!("A_opt: {:?}", summary.best.map(|trial| trial.index));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backward;
pub mod calibration;
mod checkpoint;
mod criterion;
mod device;
mod device_batches;
mod error;
mod extract;
mod finetune;
pub mod gpu_arithmetic;
mod halving;
mod metrics;
mod models;
mod progress_bar;
mod saliency;
mod sampler;
mod schedule;
mod search;
mod search_space;
mod sgd;
mod views;

pub use backward::{backward, training_forward};
pub use checkpoint::{read_tensors, write_tensors};
pub use criterion::{ClassWeights, Criterion};
pub use device::{
    check_device_name, device_memory_high_water, device_memory_in_use, largest_cudnn_workspace, parse_device,
    reset_device_memory_high_water, synchronize,
};
pub use error::{Error, Result};
pub use extract::{ExtractSettings, IDS_KEY, extract};
pub use finetune::{
    BEST_FILE, EpochRecord, HISTORY_FILE, OUTCOME_FILE, Progress, RUN_SETTINGS_FILE, RunData, RunOutcome, RunSettings, Selection,
    SplitData, TrainingOptions, evaluate_split, fine_tune, fine_tune_until, finished, history, kept_epoch, logits_split,
    logits_split_views, model_tensors, recorded_run_settings, restore_model,
};
pub use halving::{Comparison, Halving, HalvingSummary, Rung, compare_with_full, search_with_halving};
/// Re-exported: the normalisation a run's images take is medxfer-data's.
pub use medxfer_data::Normalization;
/// Re-exported: the GPU's arithmetic (TF32 or not, cuDNN's algorithm choice) is medxfer-kernels'.
pub use medxfer_kernels::{ConvAlgorithmSearch, ConvPrecision, GpuSettings, Upload, cpu_product_library, set_gpu_settings};
pub use metrics::{Evaluation, evaluate, macro_auroc, one_vs_rest_auroc};
pub use models::{load_fine_tuned, load_pretrained, load_pretrained_in, start_fine_tuning};
pub use progress_bar::{EpochBar, epoch_line};
pub use saliency::{SaliencyBatch, SaliencyBatches};
pub use sampler::Sampler;
pub use schedule::{ETA_MIN, cosine};
pub use search::{
    DIVERGED_FILE, LOCK_FILE, STALE_AFTER, SUMMARY_FILE, SearchProgress, SearchSettings, SearchSummary, Shard, Trial, check_trials,
    last_trial_dir, search, select_best, summarize_search, trial_dir,
};
pub use search_space::{TRIALS, TrialPoint, halton_points, unit_point};
pub use sgd::{NesterovSgd, SgdSettings};
pub use views::Views;
