//! Steps 2-6 for one unit (task x backbone), each skipped when its file exists, and step 7's
//! tables from those files.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use medxfer_data::TaskSpec;
use medxfer_data::split::Entry;
use medxfer_data::transform::{Normalization, TrainTransform};
use medxfer_scores::{Metric, read_feature_file, score_all};
use medxfer_train::finetune::{self, RunSettings};
use medxfer_train::progress_bar::EpochBar;
use medxfer_train::search::{self, SearchSummary};
use medxfer_zoo::{Backbone, ModelEntry};
use serde::{Deserialize, Serialize};

use super::layout::Log;
use super::{Study, TaskData};
use crate::results::{self, PERFORMANCE_COLUMNS, PerformanceRow, SCORE_COLUMNS, ScoreRow, Setting};

/// The scores of one feature file (`<setting>.scores.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitScores {
    /// Metric name -> value.
    pub values: BTreeMap<String, f64>,
    /// Metric name -> why it could not be computed.
    pub errors: BTreeMap<String, String>,
    /// OOD: A_opt's balanced accuracy on the OOD set (its head's argmax), P_ood.
    pub balanced_accuracy: Option<f64>,
    /// Which trial's model made the features (OOD).
    pub trial: Option<usize>,
    pub seconds: f64,
}

pub struct Unit<'a> {
    pub study: &'a Study,
    pub task: &'a TaskSpec,
    pub entry: &'a ModelEntry,
    pub data: &'a TaskData,
    pub device: &'a Device,
    pub log: &'a Log,
    /// This shard does the unit's extraction and scoring steps.
    pub mine: bool,
}

impl std::fmt::Debug for Unit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unit({} x {})", self.task.name, self.entry.name)
    }
}

impl Unit<'_> {
    fn name(&self) -> String {
        format!("{} {}", self.task.name, self.entry.name)
    }

    fn normalization(&self) -> Normalization {
        Normalization::study(self.entry.preprocessing.mean, self.entry.preprocessing.std, self.study.fix_std)
    }

    /// Runs what is left of the unit for this shard; true when every step is done.
    pub fn run(&self) -> Result<bool> {
        let layout = &self.study.layout;
        let (task, backbone) = (&self.task.name, &self.entry.name);
        if self.mine && !layout.scores(task, backbone, Setting::Id).exists() {
            self.pretrained_scores()?;
        }
        let summary = self.search()?;
        let Some(best) = &summary.best else {
            if summary.pending.is_empty() {
                self.log.line(&format!("{}: every trial diverged; no A_opt", self.name()));
            }
            return Ok(false);
        };
        if self.mine && !layout.scores(task, backbone, Setting::Ood).exists() {
            self.ood_scores(best.index)?;
        }
        Ok(layout.scores(task, backbone, Setting::Id).exists() && layout.scores(task, backbone, Setting::Ood).exists())
    }

    /// Steps 2 and 3: the pretrained model's features and source probabilities on the train
    /// split, and the seven scores.
    fn pretrained_scores(&self) -> Result<()> {
        let layout = &self.study.layout;
        let start = Instant::now();
        let features = layout.features(&self.task.name, &self.entry.name, Setting::Id);
        if !features.exists() {
            let model = Backbone::new(&self.entry.name, &self.entry.architecture, self.entry.num_classes, self.device)?;
            let weights = self.study.weights.file(self.entry)?;
            model.load_weights(&weights, true).with_context(|| format!("loading {}", weights.display()))?;
            self.extract(&model, &self.data.run.train, &self.data.split.train, &features)?;
            self.log.line(&format!(
                "{}: pretrained features of {} train images ({:.1} s)",
                self.name(),
                self.data.split.train.len(),
                start.elapsed().as_secs_f64()
            ));
        }
        let mut scores = score_file(&features)?;
        scores.seconds = start.elapsed().as_secs_f64();
        self.write_scores(Setting::Id, &scores)
    }

    fn extract(&self, model: &Backbone, split: &finetune::SplitData, entries: &[Entry], out: &Path) -> Result<()> {
        let label = format!("{} {}", self.task.name, self.entry.name);
        extract_features(model, split, entries, self.normalization(), self.study.crop, self.study.extract_batch, out, &label)
    }

    fn write_scores(&self, setting: Setting, scores: &UnitScores) -> Result<()> {
        let path = self.study.layout.scores(&self.task.name, &self.entry.name, setting);
        medxfer_data::manifest::write_atomic(&path, &serde_json::to_vec_pretty(scores)?)?;
        let failed = if scores.errors.is_empty() { String::new() } else { format!("; failed: {:?}", scores.errors) };
        self.log.line(&format!("{}: {} scores {:?}{failed}", self.name(), setting.as_str(), scores.values));
        Ok(())
    }

    /// Step 4: this shard's trials of the unit's search, and the search's summary.
    fn search(&self) -> Result<SearchSummary> {
        let study = self.study;
        let dir = study.layout.runs(&self.task.name, &self.entry.name);
        let summary = study.search_summary(&dir);
        if study.halving.is_none() && summary.pending.iter().all(|&t| !study.shard.takes(t)) {
            return Ok(summary);
        }
        if study.halving.is_some() && summary.best.is_some() {
            return Ok(summary);
        }
        let weights = study.weights.file(self.entry)?;
        let classes = self.task.classes.len();
        let make = || -> medxfer_train::Result<Backbone> {
            let mut model = Backbone::new(&self.entry.name, &self.entry.architecture, self.entry.num_classes, self.device)?;
            model.load_weights(&weights, true)?;
            model.replace_head(classes, study.seed)?;
            Ok(model)
        };
        let base = RunSettings {
            epochs: study.epochs,
            batch_size: study.batch,
            seed: study.seed,
            selection: study.selection,
            patience: study.patience,
            crop: study.crop,
            train_transform: TrainTransform { size: study.crop, ..TrainTransform::default() },
            ..RunSettings::reference(0.0, 0.0, self.normalization())
        };
        let start = Instant::now();
        let run = |progress: &mut dyn search::SearchProgress| match study.halving {
            None => search::run(&make, &self.data.run, &base, study.trials, study.shard, &dir, progress),
            Some(halving) => medxfer_train::halving::run(&make, &self.data.run, &base, study.trials, halving, study.shard, &dir, progress)
                .map(|h| h.search),
        };
        // The bar draws only on a terminal; elsewhere (a log, a Slurm job) each epoch is a line.
        let mut bar = EpochBar::new(study.epochs);
        let summary = run(&mut bar);
        bar.finish();
        let summary = summary?;
        let best = summary.best.as_ref().map_or("pending".to_string(), |b| {
            format!("A_opt trial {} (lr {:.3e}, wd {:.3e})", b.index, b.outcome.learning_rate, b.outcome.weight_decay)
        });
        self.log.line(&format!(
            "{}: search {} of {} trials finished, {} diverged; {best} ({:.1} s)",
            self.name(),
            summary.finished.len(),
            summary.trials,
            summary.diverged.len(),
            start.elapsed().as_secs_f64()
        ));
        Ok(summary)
    }

    /// Steps 5 and 6: A_opt's features and own-head probabilities on the OOD set, their scores,
    /// and its OOD balanced accuracy.
    fn ood_scores(&self, trial: usize) -> Result<()> {
        let layout = &self.study.layout;
        let start = Instant::now();
        let checkpoint = search::trial_dir(&layout.runs(&self.task.name, &self.entry.name), trial).join(finetune::BEST_FILE);
        let features = layout.features(&self.task.name, &self.entry.name, Setting::Ood);
        if !features.exists() {
            let mut model = Backbone::new(&self.entry.name, &self.entry.architecture, self.entry.num_classes, self.device)?;
            model.replace_head(self.task.classes.len(), 0)?;
            let (tensors, _) = medxfer_train::checkpoint::read_tensors(&checkpoint, self.device)?;
            finetune::restore_model(&model, &tensors, &checkpoint)?;
            self.extract(&model, &self.data.ood, &self.data.split.ood, &features)?;
        }
        let mut scores = score_file(&features)?;
        scores.balanced_accuracy = Some(head_balanced_accuracy(&features, self.task.classes.len())?);
        scores.trial = Some(trial);
        scores.seconds = start.elapsed().as_secs_f64();
        self.write_scores(Setting::Ood, &scores)
    }
}

/// Features of `entries` (the cache order of `split`) into `out`, with a progress bar named by
/// `label` (drawn only on a terminal).
#[allow(clippy::too_many_arguments)]
pub fn extract_features(
    model: &Backbone,
    split: &finetune::SplitData,
    entries: &[Entry],
    normalization: Normalization,
    crop: u32,
    batch: usize,
    out: &Path,
    label: &str,
) -> Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let ids: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
    let bar = indicatif::ProgressBar::new(ids.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} images  {elapsed} (ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{label}: features of {}", out.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default()));
    medxfer_train::extract::extract(model, split, &ids, normalization, crop, batch, out, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok(())
}

/// The seven scores of a feature file; a score that fails is recorded, not fatal.
pub fn score_file(path: &Path) -> Result<UnitScores> {
    let input = read_feature_file(path)?;
    let mut scores = UnitScores::default();
    match score_all(&input, &Metric::ALL) {
        Ok(values) => scores.values = values.into_iter().map(|(m, v)| (m.as_str().to_string(), v)).collect(),
        // One failed: compute each alone to keep the others.
        Err(_) => {
            for metric in Metric::ALL {
                match score_all(&input, &[metric]) {
                    Ok(values) => scores.values.extend(values.into_iter().map(|(m, v)| (m.as_str().to_string(), v))),
                    Err(error) => {
                        scores.errors.insert(metric.as_str().to_string(), error.to_string());
                    }
                }
            }
        }
    }
    Ok(scores)
}

/// Balanced accuracy of the argmax of a feature file's `probs` against its `labels`.
fn head_balanced_accuracy(path: &Path, classes: usize) -> Result<f64> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("reading {}", path.display()))?;
    let get = |name: &str| tensors.get(name).with_context(|| format!("{}: no `{name}` tensor", path.display()));
    let predicted: Vec<u32> = get("probs")?.argmax(1)?.to_vec1()?;
    let truth: Vec<u32> = get("labels")?.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|l| l as u32).collect();
    Ok(medxfer_train::metrics::evaluate(&truth, &predicted, classes).balanced_accuracy)
}

/// Step 7: scores.csv and performance.csv from every unit's files (what exists so far).
pub fn write_tables(study: &Study) -> Result<()> {
    let layout = &study.layout;
    let (mut scores, mut performance) = (Vec::new(), Vec::new());
    for task in &study.tasks {
        for entry in &study.backbones {
            let read = |setting: Setting| -> Result<Option<UnitScores>> {
                let path = layout.scores(&task.name, &entry.name, setting);
                if !path.exists() {
                    return Ok(None);
                }
                Ok(Some(
                    serde_json::from_slice(&std::fs::read(&path)?)
                        .with_context(|| format!("{} is damaged; delete it to recompute", path.display()))?,
                ))
            };
            for setting in Setting::BOTH {
                if let Some(unit) = read(setting)? {
                    for metric in Metric::ALL {
                        if let Some(&value) = unit.values.get(metric.as_str()) {
                            scores.push(ScoreRow {
                                task: task.name.clone(),
                                setting,
                                backbone: entry.name.clone(),
                                metric: metric.as_str().into(),
                                value,
                            });
                        }
                    }
                }
            }
            let summary = study.search_summary(&layout.runs(&task.name, &entry.name));
            let Some(best) = summary.best else { continue };
            let Some(test) = &best.outcome.test else { continue };
            let row = PerformanceRow {
                task: task.name.clone(),
                setting: Setting::Id,
                backbone: entry.name.clone(),
                val_balanced_accuracy: Some(best.outcome.best.val_balanced_accuracy),
                test_balanced_accuracy: test.balanced_accuracy,
                trial: Some(best.index),
                lr: Some(best.outcome.learning_rate),
                wd: Some(best.outcome.weight_decay),
                epoch: Some(best.outcome.best_epoch),
            };
            if let Some(ood) = read(Setting::Ood)?.and_then(|u| u.balanced_accuracy) {
                performance.push(PerformanceRow { setting: Setting::Ood, test_balanced_accuracy: ood, ..row.clone() });
            }
            performance.push(row);
        }
    }
    performance.sort_by(|a, b| (a.setting, &a.task, &a.backbone).cmp(&(b.setting, &b.task, &b.backbone)));
    results::write_rows(&layout.out.join(results::SCORES_CSV), &SCORE_COLUMNS, &scores)?;
    results::write_rows(&layout.out.join(results::PERFORMANCE_CSV), &PERFORMANCE_COLUMNS, &performance)
}
