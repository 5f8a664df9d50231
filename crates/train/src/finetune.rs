//! One fine-tuning run as the reference ran it (PROTOCOL.md, "Fine-tuning"): the whole network
//! trainable, BatchNorm in train mode, cross-entropy without class weights (or, as a named
//! option, with them: `crate::criterion`), Nesterov SGD with coupled weight decay, cosine
//! annealing per epoch, batches shuffled by seed with the last partial batch kept; after every
//! epoch the validation loss and balanced accuracy; the kept model is the epoch with the lowest
//! validation loss (or, as a named option, the best validation balanced accuracy), evaluated on
//! the test split and the OOD set.
//!
//! A run lives in its own directory: `epoch-NNNN.safetensors` (model, optimizer, state; the
//! two newest), `best.safetensors`, `history.jsonl`, `run-settings.json` (checked whenever the
//! run is continued or read back: `run_record`), and `outcome.json` when complete. A
//! complete run is never redone; an interrupted one resumes from its newest loadable
//! checkpoint and, on the CPU, ends exactly as an uninterrupted run would.

pub(crate) mod run_record;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use medxfer_data::{
    Augment, DicomFrame, Entry, ImageCache, LoaderConfig, Rendering, batches,
    transform::{Normalization, TrainTransform},
};
use medxfer_zoo::Backbone;
use serde::{Deserialize, Serialize};

pub use self::run_record::{RUN_SETTINGS_FILE, recorded as recorded_run_settings};
use crate::checkpoint;
use crate::criterion::{ClassWeights, Criterion};
use crate::device_batches::DeviceBatches;
use crate::error::{Error, Result};
use crate::metrics::{Evaluation, evaluate};
use crate::sampler::Sampler;
use crate::schedule::cosine;
use crate::sgd::{NesterovSgd, SgdSettings};
use crate::views::Views;

/// Which epoch a run keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The lowest validation cross-entropy (the reference).
    ValLoss,
    /// The highest validation balanced accuracy (ties: lower loss).
    ValBalancedAccuracy,
}

impl Selection {
    /// Whether a run keeps `record` over the epoch it has kept so far.
    fn prefers(self, record: &EpochRecord, kept: &EpochRecord) -> bool {
        match self {
            Selection::ValLoss => record.val_loss < kept.val_loss,
            Selection::ValBalancedAccuracy => {
                record.val_balanced_accuracy > kept.val_balanced_accuracy
                    || (record.val_balanced_accuracy == kept.val_balanced_accuracy && record.val_loss < kept.val_loss)
            }
        }
    }
}

/// Everything that defines a run besides the model and the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSettings {
    /// Epochs of the run (the reference 100).
    pub epochs: usize,
    /// Images per training batch (the reference 128).
    pub batch_size: usize,
    /// Seed of the data order, the augmentations and the head.
    pub seed: u64,
    /// Starting learning rate of the cosine schedule.
    pub learning_rate: f64,
    /// Coupled weight decay.
    pub weight_decay: f64,
    /// Nesterov momentum (0.9).
    pub momentum: f64,
    /// Which epoch the run keeps.
    pub selection: Selection,
    /// Early stopping: stop after this many epochs without a lower validation loss (not in the
    /// reference; None runs every epoch).
    pub patience: Option<usize>,
    /// The backbone's mean and std.
    pub normalization: Normalization,
    /// The train augmentation.
    pub train_transform: TrainTransform,
    /// Centre crop of the eval transform.
    pub crop: u32,
    /// How much each class weighs in the loss (the reference: alike).
    pub class_weights: ClassWeights,
    /// How the train images are drawn each epoch (the reference: each once, shuffled).
    pub sampler: Sampler,
}

/// What a user sets of the runs of a search beyond the reference (`--epochs`, `--batch`, `--seed`,
/// `--select`, `--patience`, `--crop`, `--class-weights`, `--sampler`; the reference's values are a
/// deviation when changed). The train transform crops to the same size as the eval transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingOptions {
    /// Epochs of each run.
    pub epochs: usize,
    /// Images per training batch.
    pub batch_size: usize,
    /// Seed of the data order, the augmentations and the heads.
    pub seed: u64,
    /// Which epoch a run keeps.
    pub selection: Selection,
    /// Early stopping after this many epochs without a lower validation loss.
    pub patience: Option<usize>,
    /// Side of the crops (eval and train).
    pub crop: u32,
    /// How much each class weighs in the loss.
    pub class_weights: ClassWeights,
    /// How the train images are drawn each epoch.
    pub sampler: Sampler,
}

impl TrainingOptions {
    /// The reference's: 100 epochs, batch 128, seed 0, lowest validation loss, no early
    /// stopping, 224 px crops, every image alike in the loss.
    pub fn reference() -> Self {
        Self {
            epochs: 100,
            batch_size: 128,
            seed: 0,
            selection: Selection::ValLoss,
            patience: None,
            crop: 224,
            class_weights: ClassWeights::None,
            sampler: Sampler::Shuffle,
        }
    }

    /// Refuses options no run can train with, naming the option, before any work starts.
    pub fn check(&self) -> Result<()> {
        check_budget(self.epochs, self.batch_size, self.patience)
    }
}

/// `--epochs`, `--batch` and `--patience` of at least 1.
fn check_budget(epochs: usize, batch_size: usize, patience: Option<usize>) -> Result<()> {
    if epochs == 0 {
        return Err(Error::Config("--epochs 0: a run needs at least 1 epoch".into()));
    }
    if batch_size == 0 {
        return Err(Error::Config("--batch 0: a run needs a batch of at least 1 image".into()));
    }
    if patience == Some(0) {
        return Err(Error::Config(
            "--patience 0: early stopping would end every run after its first epoch; give at least 1, or leave it out to train every epoch as the reference"
                .into(),
        ));
    }
    Ok(())
}

impl RunSettings {
    /// Refuses settings no run can train with: [`TrainingOptions::check`]'s, and a negative or
    /// non-finite learning rate or weight decay (torch.optim.SGD refuses negative ones; a NaN one
    /// would train nothing and be reported as a diverged run, as if the model were at fault).
    pub fn check(&self) -> Result<()> {
        check_budget(self.epochs, self.batch_size, self.patience)?;
        for (name, value) in [("learning rate", self.learning_rate), ("weight decay", self.weight_decay)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::Config(format!(
                    "the {name} is {value}: it must be a finite number of at least 0 (--lr 0.01, --wd 1e-4)"
                )));
            }
        }
        Ok(())
    }

    /// The settings every trial of a search shares (its learning rate and weight decay 0 until
    /// a trial sets its point's).
    pub fn from_options(options: &TrainingOptions, normalization: Normalization) -> Self {
        Self {
            epochs: options.epochs,
            batch_size: options.batch_size,
            seed: options.seed,
            selection: options.selection,
            patience: options.patience,
            crop: options.crop,
            class_weights: options.class_weights,
            sampler: options.sampler,
            train_transform: TrainTransform { size: options.crop, ..TrainTransform::default() },
            ..Self::reference(0.0, 0.0, normalization)
        }
    }

    /// The reference's settings for one (lr, wd) point.
    pub fn reference(learning_rate: f64, weight_decay: f64, normalization: Normalization) -> Self {
        Self {
            epochs: 100,
            batch_size: 128,
            seed: 0,
            learning_rate,
            weight_decay,
            momentum: 0.9,
            selection: Selection::ValLoss,
            patience: None,
            normalization,
            train_transform: TrainTransform::default(),
            crop: 224,
            class_weights: ClassWeights::None,
            sampler: Sampler::Shuffle,
        }
    }
}

/// One split's images (a cache, in manifest order) and labels.
#[derive(Debug, Clone)]
pub struct SplitData {
    /// The decoded images.
    pub cache: Arc<ImageCache>,
    /// Their task labels, in the cache's order.
    pub labels: Arc<Vec<u32>>,
}

impl SplitData {
    /// The images `entries` name under `root`, decoded once (shorter side `resize`) into the
    /// cache folder `cache_dir` under `name`, with a progress bar while building when `progress`.
    pub fn cached(cache_dir: &Path, name: &str, root: &Path, entries: &[Entry], resize: u32, progress: bool) -> Result<Self> {
        Self::cached_frame(cache_dir, name, root, entries, (resize, DicomFrame::Only, Rendering::default()), progress)
    }

    /// [`Self::cached`], reading the frame `frame` chooses of each DICOM file of several (or
    /// slice of a NIfTI volume), the images rendered as `rendering` says (a window, a volume's
    /// orientation, 2.5-D).
    pub fn cached_frame(
        cache_dir: &Path,
        name: &str,
        root: &Path,
        entries: &[Entry],
        (resize, frame, rendering): (u32, DicomFrame, Rendering),
        progress: bool,
    ) -> Result<Self> {
        let cache = ImageCache::open_or_build_frame(cache_dir, name, root, entries, (resize, frame, rendering), progress)?;
        Ok(Self { cache: Arc::new(cache), labels: Arc::new(entries.iter().map(|e| e.label).collect()) })
    }
}

/// The splits a run uses.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Trains the model.
    pub train: SplitData,
    /// Chooses the kept epoch.
    pub val: SplitData,
    /// Measures the kept model, when given.
    pub test: Option<SplitData>,
    /// The OOD set the kept model is measured on too, when given.
    pub ood: Option<SplitData>,
    /// The task's classes.
    pub classes: usize,
}

/// One epoch's record (a line of history.jsonl).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// The learning rate it trained at.
    pub learning_rate: f64,
    /// Mean cross-entropy over the epoch's training batches (weighted by class where the run
    /// weighs them).
    pub train_loss: f64,
    /// Mean cross-entropy on the validation split (weighted alike).
    pub val_loss: f64,
    /// Balanced accuracy on the validation split.
    pub val_balanced_accuracy: f64,
    /// Accuracy on the validation split.
    pub val_accuracy: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

/// What a run left in its checkpoint: everything needed to continue it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    history: Vec<EpochRecord>,
    best_epoch: Option<usize>,
    /// Epochs since the validation loss last improved (early stopping).
    since_lowest_loss: usize,
    lowest_loss: f64,
    stopped_early: bool,
}

/// A finished run (outcome.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The run's learning rate.
    pub learning_rate: f64,
    /// Its weight decay.
    pub weight_decay: f64,
    /// How it chose its kept epoch.
    pub selection: Selection,
    /// The kept epoch (1-based).
    pub best_epoch: usize,
    /// The kept epoch's record.
    pub best: EpochRecord,
    /// Epochs trained.
    pub epochs_run: usize,
    /// Whether early stopping ended it.
    pub stopped_early: bool,
    /// The kept model on the test split.
    pub test: Option<Evaluation>,
    /// The kept model on the OOD set.
    pub ood: Option<Evaluation>,
}

/// What a run tells its caller while it trains (a progress bar, a log). A closure over
/// `&EpochRecord` is one that ignores batches.
pub trait Progress {
    /// After each training batch: the 1-based epoch, batches done and per epoch, the batch's loss.
    fn batch(&mut self, _epoch: usize, _done: usize, _total: usize, _loss: f64) {}
    /// After each epoch, once its checkpoint is written.
    fn epoch(&mut self, record: &EpochRecord);
}

impl<F: FnMut(&EpochRecord)> Progress for F {
    fn epoch(&mut self, record: &EpochRecord) {
        self(record)
    }
}

/// A finished run's outcome: [`RunOutcome`] as JSON.
pub const OUTCOME_FILE: &str = "outcome.json";
/// The kept epoch's model.
pub const BEST_FILE: &str = "best.safetensors";
/// One [`EpochRecord`] per line, per finished epoch.
pub const HISTORY_FILE: &str = "history.jsonl";

fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.to_path_buf(), problem: e.to_string() }
}

/// The outcome of a complete run in `dir`, if there is one.
pub fn finished(dir: &Path) -> Option<RunOutcome> {
    std::fs::read(dir.join(OUTCOME_FILE)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// The epochs a run in `dir` has finished so far, as its newest checkpoint records them (what a
/// resume continues from); history.jsonl, written after each checkpoint, when there is no
/// checkpoint. A kill between the two leaves the file one epoch behind until the run resumes
/// and rewrites it; readers never see the difference. Empty when the run has not started.
pub fn history(dir: &Path) -> Vec<EpochRecord> {
    if let Some(state) = checkpoint::newest_state(dir).and_then(|s| serde_json::from_str::<RunState>(&s).ok()) {
        return state.history;
    }
    history_file(dir)
}

/// The records of history.jsonl.
fn history_file(dir: &Path) -> Vec<EpochRecord> {
    let text = std::fs::read_to_string(dir.join(HISTORY_FILE)).unwrap_or_default();
    text.lines().map_while(|line| serde_json::from_str(line).ok()).collect()
}

/// Writes history.jsonl from the run state's records.
fn write_history(dir: &Path, records: &[EpochRecord]) -> Result<()> {
    let history: String = records.iter().filter_map(|r| serde_json::to_string(r).ok()).map(|line| line + "\n").collect();
    Ok(medxfer_durable::write_atomic(&dir.join(HISTORY_FILE), history.as_bytes())?)
}

/// The epoch a run keeps among `history` by `selection` (1-based), as the run itself chooses it.
pub fn kept_epoch(history: &[EpochRecord], selection: Selection) -> Option<&EpochRecord> {
    let mut kept: Option<&EpochRecord> = None;
    for record in history {
        if kept.is_none_or(|best| selection.prefers(record, best)) {
            kept = Some(record);
        }
    }
    kept
}

/// Every tensor of the model (parameters and running statistics) by name.
pub fn model_tensors(model: &Backbone) -> Result<HashMap<String, Tensor>> {
    let store = model.params();
    store
        .names()
        .into_iter()
        .map(|name| Ok((name.clone(), store.var(&name).ok_or_else(|| Error::Checkpoint(format!("no tensor {name}")))?.as_tensor().clone())))
        .collect()
}

/// Sets every tensor of the model from `tensors`, which must hold exactly the model's names and
/// shapes.
pub fn restore_model(model: &Backbone, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
    let store = model.params();
    let names = store.names();
    if names.len() != tensors.len() {
        let mut lacking: Vec<&String> = names.iter().filter(|name| !tensors.contains_key(*name)).collect();
        let mut foreign: Vec<&String> = tensors.keys().filter(|name| store.var(name).is_none()).collect();
        lacking.sort();
        foreign.sort();
        let first = |names: &[&String]| names.first().map(|name| format!(" (first: {name})")).unwrap_or_default();
        return Err(Error::Checkpoint(format!(
            "{} holds {} model tensors, the model has {}: {} of the model's are not in it{}, {} in it are not the model's{}",
            source.display(),
            tensors.len(),
            names.len(),
            lacking.len(),
            first(&lacking),
            foreign.len(),
            first(&foreign)
        )));
    }
    for name in names {
        let (Some(var), Some(value)) = (store.var(&name), tensors.get(&name)) else {
            return Err(Error::Checkpoint(format!("{} has no tensor {name}", source.display())));
        };
        if var.dims() != value.dims() {
            return Err(Error::Checkpoint(format!(
                "{}: {name} has shape {:?}, the model {:?}",
                source.display(),
                value.dims(),
                var.dims()
            )));
        }
        var.set(&value.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Mean cross-entropy (`criterion`'s: weighted by class where it weighs them), predictions and
/// metrics of `model` on a split (eval transform).
pub fn evaluate_split(
    model: &Backbone,
    split: &SplitData,
    settings: &RunSettings,
    criterion: &Criterion,
    classes: usize,
) -> Result<(f64, Vec<u32>, Evaluation)> {
    let device = model.params().device().clone();
    let (mut loss_sum, mut weight_sum, mut predictions) = (0.0, 0.0, Vec::with_capacity(split.labels.len()));
    let mut feed = DeviceBatches::new(batches(split.cache.clone(), split.labels.clone(), eval_loader(settings))?, &device);
    while let Some(batch) = feed.take()? {
        let (_, logits) = model.features_and_logits(&batch.images, false)?;
        let loss = criterion.loss(&logits, &batch.labels)?;
        let predicted = logits.argmax(D::Minus1)?;
        feed.prefetch()?;
        let weight = criterion.batch_weight(batch.indices.iter().map(|&i| split.labels[i]));
        loss_sum += f64::from(loss.to_scalar::<f32>()?) * weight;
        weight_sum += weight;
        predictions.extend(predicted.to_device(&Device::Cpu)?.to_vec1::<u32>()?);
    }
    let evaluation = evaluate(&split.labels, &predictions, classes);
    // A split without images has no loss; 0 as before.
    Ok((if weight_sum > 0.0 { loss_sum / weight_sum } else { 0.0 }, predictions, evaluation))
}

/// Each image's logits (the head's outputs, in f32), in the split's order, the images prepared as
/// [`evaluate_split`] prepares them (centre crop, no augmentation); the split's labels are not
/// read. Their softmax is the class probabilities ([`crate::calibration::probabilities`], at
/// temperature 1). `progress(images done, images)` after each batch.
pub fn logits_split(
    model: &Backbone,
    split: &SplitData,
    settings: &RunSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>> {
    logits_split_views(model, split, settings, Views::Crop, progress)
}

/// [`logits_split`] with test-time augmentation: each image's logits averaged over the `views`
/// of its crop (the crop alone gives `logits_split`'s, bit for bit).
pub fn logits_split_views(
    model: &Backbone,
    split: &SplitData,
    settings: &RunSettings,
    views: Views,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let device = model.params().device().clone();
    let mut logits_of = Vec::with_capacity(split.labels.len());
    let mut feed = DeviceBatches::new(batches(split.cache.clone(), split.labels.clone(), eval_loader(settings))?, &device);
    while let Some(batch) = feed.take()? {
        let mut sum: Option<Tensor> = None;
        for view in views.of(&batch.images)? {
            let logits = model.features_and_logits(&view, false)?.1.to_dtype(DType::F32)?;
            sum = Some(match sum {
                Some(sum) => (sum + logits)?,
                None => logits,
            });
        }
        let sum = sum.ok_or_else(|| Error::Config("no view of the crops".into()))?;
        let logits = if views.count() == 1 { sum } else { (sum / views.count() as f64)? };
        feed.prefetch()?;
        logits_of.extend(logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?);
        progress(logits_of.len(), split.labels.len());
    }
    Ok(logits_of)
}

/// How [`evaluate_split`] and [`logits_split`] read a split: in order, centre-cropped.
pub(crate) fn eval_loader(settings: &RunSettings) -> LoaderConfig {
    LoaderConfig {
        batch_size: settings.batch_size,
        order: medxfer_data::Order::Stored,
        seed: settings.seed,
        epoch: 0,
        augment: Augment::Eval { crop: settings.crop },
        normalization: settings.normalization,
    }
}

/// Runs (or resumes, or returns the finished result of) one fine-tuning run in `dir`. `model`
/// must already carry the fresh head for `data.classes`; `progress` sees every batch and epoch.
pub fn fine_tune(model: &Backbone, data: &RunData, settings: &RunSettings, dir: &Path, progress: &mut dyn Progress) -> Result<RunOutcome> {
    fine_tune_until(model, data, settings, dir, settings.epochs, progress)?
        .ok_or_else(|| Error::Checkpoint(format!("{}: the run stopped before its last epoch", dir.display())))
}

/// [`run`], but pauses after epoch `until` (its schedule still that of `settings.epochs`): None
/// when paused there, the outcome when the run is complete (its last epoch, or stopped early).
/// A paused run continues exactly where it stopped when called again with a later `until`.
pub fn fine_tune_until(
    model: &Backbone,
    data: &RunData,
    settings: &RunSettings,
    dir: &Path,
    until: usize,
    progress: &mut dyn Progress,
) -> Result<Option<RunOutcome>> {
    settings.check()?;
    let inputs = run_record::RunInputs::of(model.name(), data);
    run_record::check(dir, settings, &inputs)?;
    if let Some(outcome) = finished(dir) {
        return Ok(Some(outcome));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    run_record::record(dir, settings, &inputs)?;
    let device = model.params().device().clone();
    let sgd = SgdSettings {
        learning_rate: settings.learning_rate,
        momentum: settings.momentum,
        weight_decay: settings.weight_decay,
        nesterov: true,
    };
    let mut optimizer = NesterovSgd::new(model.params().trainable_vars(), sgd);
    let mut state = resume(model, &mut optimizer, dir, &device)?;
    let criterion = Criterion::new(settings.class_weights, &data.train.labels, data.classes, &device)?;

    while state.history.len() < settings.epochs.min(until) && !state.stopped_early {
        let epoch = state.history.len();
        let start = Instant::now();
        let learning_rate = cosine(settings.learning_rate, epoch, settings.epochs);
        optimizer.set_learning_rate(learning_rate);
        let train_loss = train_epoch(model, data, (settings, &criterion), (&mut optimizer, learning_rate), epoch, progress)?;
        let (val_loss, _, val) = evaluate_split(model, &data.val, settings, &criterion, data.classes)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            learning_rate,
            train_loss,
            val_loss,
            val_balanced_accuracy: val.balanced_accuracy,
            val_accuracy: val.accuracy,
            seconds: start.elapsed().as_secs_f64(),
        };
        let improved = state.add(record.clone(), settings);
        // The epoch checkpoint first (it also holds the model of a new best), then best.
        let state_json = serde_json::to_string(&state).map_err(|e| Error::Checkpoint(e.to_string()))?;
        checkpoint::save(dir, epoch + 1, &model_tensors(model)?, optimizer.state(), &state_json)?;
        if improved {
            save_best(model, dir, epoch + 1)?;
        }
        write_history(dir, &state.history)?;
        progress.epoch(&record);
    }

    if state.history.len() < settings.epochs && !state.stopped_early {
        return Ok(None);
    }
    let best_epoch = state.best_epoch.ok_or_else(|| Error::Checkpoint("the run has no epoch".into()))?;
    let (best, _) = checkpoint::read_tensors(&dir.join(BEST_FILE), &device)?;
    restore_model(model, &best, &dir.join(BEST_FILE))?;
    // Their losses are not kept: the plain criterion (an OOD set may lack a class).
    let measure = |split: &SplitData| evaluate_split(model, split, settings, &Criterion::plain(), data.classes).map(|(_, _, e)| e);
    let test = data.test.as_ref().map(measure).transpose()?;
    let ood = data.ood.as_ref().map(measure).transpose()?;
    let outcome = RunOutcome {
        learning_rate: settings.learning_rate,
        weight_decay: settings.weight_decay,
        selection: settings.selection,
        best_epoch,
        best: state.history[best_epoch - 1].clone(),
        epochs_run: state.history.len(),
        stopped_early: state.stopped_early,
        test,
        ood,
    };
    let json = serde_json::to_vec_pretty(&outcome).map_err(|e| Error::Checkpoint(e.to_string()))?;
    medxfer_durable::write_atomic(&dir.join(OUTCOME_FILE), &json)?;
    Ok(Some(outcome))
}

/// The run state of the newest intact checkpoint in `dir`, `model` and `optimizer` restored to
/// it (the best model and the history file mended where a kill left them behind); a fresh state
/// where there is none.
fn resume(model: &Backbone, optimizer: &mut NesterovSgd, dir: &Path, device: &Device) -> Result<RunState> {
    let (resumed, warnings) = checkpoint::latest(dir, device)?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    let Some(saved) = resumed else {
        return Ok(RunState {
            history: Vec::new(),
            best_epoch: None,
            since_lowest_loss: 0,
            lowest_loss: f64::INFINITY,
            stopped_early: false,
        });
    };
    restore_model(model, &saved.model, &saved.path)?;
    optimizer.restore(saved.optimizer)?;
    let state: RunState =
        serde_json::from_str(&saved.state).map_err(|e| Error::Checkpoint(format!("{}: run state: {e}", saved.path.display())))?;
    // The best model may not have been written if the run stopped right after this checkpoint;
    // the checkpoint holds it then.
    if state.best_epoch == Some(state.history.len()) && best_epoch_on_disk(dir, device) != state.best_epoch {
        save_best(model, dir, state.history.len())?;
    }
    // A kill between the checkpoint and the history file left the file behind (or, with a
    // damaged newest checkpoint, ahead): the checkpoint resumed from is the truth.
    if history_file(dir) != state.history {
        write_history(dir, &state.history)?;
    }
    Ok(state)
}

/// One epoch of training (0-based `epoch`) at `learning_rate`, already the optimizer's: the mean
/// training loss over its images (`criterion`'s: weighted by class where it weighs them); a loss
/// that is not finite is divergence.
fn train_epoch(
    model: &Backbone,
    data: &RunData,
    (settings, criterion): (&RunSettings, &Criterion),
    (optimizer, learning_rate): (&mut NesterovSgd, f64),
    epoch: usize,
    progress: &mut dyn Progress,
) -> Result<f64> {
    let config = LoaderConfig {
        batch_size: settings.batch_size,
        order: settings.sampler.order(),
        seed: settings.seed,
        epoch: epoch as u64,
        augment: Augment::Train(settings.train_transform),
        normalization: settings.normalization,
    };
    let (mut loss_sum, mut seen) = (0.0, 0.0);
    let total = data.train.labels.len().div_ceil(settings.batch_size);
    let device = model.params().device().clone();
    let mut feed = DeviceBatches::new(batches(data.train.cache.clone(), data.train.labels.clone(), config)?, &device);
    let mut done = 0;
    while let Some(batch) = feed.take()? {
        done += 1;
        let loss = crate::training_forward(|| {
            let (_, logits) = model.features_and_logits(&batch.images, true)?;
            criterion.loss(&logits, &batch.labels)
        })?;
        optimizer.step(&crate::backward(&loss)?)?;
        // The next batch's copy goes behind this step's work before the loss read waits for it.
        feed.prefetch()?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(Error::Diverged { epoch: epoch + 1, learning_rate, loss: value });
        }
        let weight = criterion.batch_weight(batch.indices.iter().map(|&i| data.train.labels[i]));
        loss_sum += value * weight;
        seen += weight;
        progress.batch(epoch + 1, done, total, value);
    }
    Ok(if seen > 0.0 { loss_sum / seen } else { 0.0 })
}

impl RunState {
    /// `record`, the next epoch's, added: whether it is the best so far (by `settings`'
    /// selection), and the early stopping count by the validation loss.
    fn add(&mut self, record: EpochRecord, settings: &RunSettings) -> bool {
        let improved = self.best_epoch.is_none_or(|best| settings.selection.prefers(&record, &self.history[best - 1]));
        if record.val_loss < self.lowest_loss {
            self.lowest_loss = record.val_loss;
            self.since_lowest_loss = 0;
        } else {
            self.since_lowest_loss += 1;
        }
        if improved {
            self.best_epoch = Some(record.epoch);
        }
        self.stopped_early = settings.patience.is_some_and(|p| self.since_lowest_loss >= p);
        self.history.push(record);
        improved
    }
}

const BEST_EPOCH_KEY: &str = "medxfer.epoch";

fn save_best(model: &Backbone, dir: &Path, epoch: usize) -> Result<()> {
    checkpoint::write_tensors(
        &dir.join(BEST_FILE),
        &model_tensors(model)?,
        HashMap::from([(BEST_EPOCH_KEY.to_string(), epoch.to_string())]),
    )
}

fn best_epoch_on_disk(dir: &Path, device: &Device) -> Option<usize> {
    checkpoint::read_tensors(&dir.join(BEST_FILE), device).ok().and_then(|(_, info)| info.get(BEST_EPOCH_KEY)?.parse().ok())
}
