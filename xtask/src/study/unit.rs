//! Steps 2-6 for one unit (task x backbone), each skipped when its file exists, and step 7's
//! tables from those files.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use medxfer_data::{Entry, Normalization, TaskSpec};
use medxfer_scores::Metric;
use medxfer_train::{
    BEST_FILE, EpochBar, ExtractSettings, RunSettings, SearchProgress, SearchSettings, SearchSummary, SplitData, load_fine_tuned,
    load_pretrained_in, search, start_fine_tuning, trial_dir,
};
use medxfer_zoo::{Backbone, ModelEntry};

use super::layout::Log;
use super::{Study, TaskData};
use crate::features::{FeatureScores, extract_features, score_file};
use crate::recorded::Step;
use crate::results::{self, PERFORMANCE_COLUMNS, PerformanceRow, SCORE_COLUMNS, ScoreRow, Setting};

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
        // The weights are the unit's identity: its records say which ones made its results, and
        // other weights under the same name are refused.
        let weights = self.study.weights.identity(self.entry)?;
        for step in [Step::Features, Step::Search] {
            self.study.record(step, task, self.entry, &weights)?;
        }
        if self.mine {
            self.redo_if_features_lost(Setting::Id)?;
        }
        if self.mine && !layout.scores(task, backbone, Setting::Id).exists() {
            self.pretrained_scores()?;
        }
        if self.mine {
            self.add_newer_scores(Setting::Id)?;
        }
        let summary = self.search()?;
        let Some(best) = &summary.best else {
            if summary.pending.is_empty() {
                self.log.line(&format!("{}: every trial diverged; no A_opt", self.name()));
            }
            return Ok(false);
        };
        if self.mine && self.ood_made_from(Setting::Ood).is_some_and(|trial| trial != best.index) {
            // A_opt changed since (the search grew by --extend): its OOD step is redone.
            self.log.line(&format!("{}: A_opt is now trial {}; its OOD step is redone", self.name(), best.index));
            for path in [layout.scores(task, backbone, Setting::Ood), layout.features(task, backbone, Setting::Ood)] {
                std::fs::remove_file(&path)
                    .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        if self.mine {
            self.redo_if_features_lost(Setting::Ood)?;
        }
        if self.mine && !layout.scores(task, backbone, Setting::Ood).exists() {
            self.ood_scores(best.index)?;
        }
        if self.mine {
            self.add_newer_scores(Setting::Ood)?;
        }
        Ok(layout.scores(task, backbone, Setting::Id).exists() && layout.scores(task, backbone, Setting::Ood).exists())
    }

    /// A setting's scores whose feature file is gone or damaged since (a disk, a hand) are
    /// redone with it: `image-bootstrap` and later scores read the kept features, and a rerun
    /// used to call the unit complete without them. Extraction is deterministic, so the
    /// features come back as they were on the same machine and settings.
    fn redo_if_features_lost(&self, setting: Setting) -> Result<()> {
        let layout = &self.study.layout;
        let scores = layout.scores(&self.task.name, &self.entry.name, setting);
        let features = layout.features(&self.task.name, &self.entry.name, setting);
        if !scores.exists() || crate::features::is_whole_safetensors(&features) {
            return Ok(());
        }
        let what = format!(
            "{}: {} features {} ({}); extracted and scored again",
            self.name(),
            setting.as_str(),
            if features.exists() { "damaged" } else { "missing" },
            features.display()
        );
        eprintln!("{what}");
        self.log.line(&what);
        for path in [&features, &scores] {
            std::fs::remove_file(path)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    /// The trial whose model made the unit's OOD scores, when they exist.
    fn ood_made_from(&self, setting: Setting) -> Option<usize> {
        let path = self.study.layout.scores(&self.task.name, &self.entry.name, setting);
        let scores: FeatureScores = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        scores.trial
    }

    /// Steps 2 and 3: the pretrained model's features and source probabilities on the train
    /// split, and the seven scores.
    fn pretrained_scores(&self) -> Result<()> {
        let layout = &self.study.layout;
        let start = Instant::now();
        let features = layout.features(&self.task.name, &self.entry.name, Setting::Id);
        if !features.exists() {
            let weights = self.study.weights.file(self.entry)?;
            let model = load_pretrained_in(self.entry, &weights, self.device, self.study.extract_dtype.dtype())
                .with_context(|| format!("loading {}", weights.display()))?;
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

    /// A scores file written before this version's newer scores is completed from the unit's
    /// feature file, kept since (its accuracy and trial stay).
    fn add_newer_scores(&self, setting: Setting) -> Result<()> {
        let layout = &self.study.layout;
        let path = layout.scores(&self.task.name, &self.entry.name, setting);
        let features = layout.features(&self.task.name, &self.entry.name, setting);
        let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
        let Ok(old) = serde_json::from_slice::<FeatureScores>(&bytes) else { return Ok(()) };
        if !crate::features::lacks_a_score(&old) || !features.exists() {
            return Ok(());
        }
        let start = Instant::now();
        let mut scores = score_file(&features)?;
        scores.balanced_accuracy = old.balanced_accuracy;
        scores.trial = old.trial;
        scores.seconds = old.seconds + start.elapsed().as_secs_f64();
        self.log.line(&format!("{}: {} scores completed with the newer scores", self.name(), setting.as_str()));
        self.write_scores(setting, &scores)
    }

    fn extract(&self, model: &Backbone, split: &SplitData, entries: &[Entry], out: &Path) -> Result<()> {
        let label = format!("{} {}", self.task.name, self.entry.name);
        let settings =
            ExtractSettings { normalization: self.normalization(), crop: self.study.options.crop, batch_size: self.study.extract_batch };
        extract_features(model, split, entries, &settings, out, &label)
    }

    fn write_scores(&self, setting: Setting, scores: &FeatureScores) -> Result<()> {
        let path = self.study.layout.scores(&self.task.name, &self.entry.name, setting);
        medxfer_durable::write_atomic(&path, &serde_json::to_vec_pretty(scores)?)?;
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
        let make = || start_fine_tuning(self.entry, &weights, classes, study.options.seed, self.device);
        let base = RunSettings::from_options(&study.options, self.normalization());
        let settings = SearchSettings { model: &self.entry.name, base, trials: study.trials, shard: study.shard };
        let start = Instant::now();
        let run = |progress: &mut dyn SearchProgress| match study.halving {
            None => search(&make, &self.data.run, &settings, &dir, progress),
            Some(halving) => {
                medxfer_train::search_with_halving(&make, &self.data.run, &settings, halving, &dir, progress).map(|h| h.search)
            }
        };
        // The bar draws only on a terminal; elsewhere (a log, a Slurm job) each epoch is a line.
        let mut bar = EpochBar::new(study.options.epochs);
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
        let checkpoint = trial_dir(&layout.runs(&self.task.name, &self.entry.name), trial).join(BEST_FILE);
        let features = layout.features(&self.task.name, &self.entry.name, Setting::Ood);
        if !features.exists() {
            let model = load_fine_tuned(self.entry, &checkpoint, Some(self.task.classes.len()), self.device)?;
            self.extract(&model, &self.data.ood, &self.data.split.ood, &features)?;
        }
        let mut scores = score_file(&features)?;
        scores.balanced_accuracy = Some(head_balanced_accuracy(&features, self.task.classes.len())?);
        scores.trial = Some(trial);
        scores.seconds = start.elapsed().as_secs_f64();
        self.write_scores(Setting::Ood, &scores)
    }
}

/// The values a unit's scores file contributes to scores.csv: every per-model score, then the
/// set-level scores' per-model terms.
fn stored_keys() -> Vec<String> {
    Metric::per_model()
        .map(|m| m.as_str().to_string())
        .chain(Metric::SET_LEVEL.iter().flat_map(|m| m.terms().iter().map(|t| m.term_key(t))))
        .collect()
}

/// Balanced accuracy of the argmax of a feature file's `probs` against its `labels`.
fn head_balanced_accuracy(path: &Path, classes: usize) -> Result<f64> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("reading {}", path.display()))?;
    let get = |name: &str| tensors.get(name).with_context(|| format!("{}: no `{name}` tensor", path.display()));
    let predicted: Vec<u32> = get("probs")?.argmax(1)?.to_vec1()?;
    let truth: Vec<u32> = get("labels")?.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|l| l as u32).collect();
    Ok(medxfer_train::evaluate(&truth, &predicted, classes).balanced_accuracy)
}

/// The tasks and backbones whose features or runs the results folder holds beyond this run's
/// --tasks and --backbones (folder names: a hub id's `/` is `--`). The tables cover this run's
/// units only, so a rerun of a finished ten-backbone study with `--backbones a,b` rewrote
/// scores.csv, performance.csv, Table 2 and the report over those two (seen); said, with the fix.
fn beyond_selection(study: &Study) -> (BTreeSet<String>, BTreeSet<String>) {
    let tasks: BTreeSet<String> = study.tasks.iter().map(|task| task.name.clone()).collect();
    let backbones: BTreeSet<String> = study.backbones.iter().map(|entry| crate::weights::folder_name(&entry.name)).collect();
    let (mut other_tasks, mut other_backbones) = (BTreeSet::new(), BTreeSet::new());
    for root in [study.layout.out.join("features"), study.layout.out.join("runs")] {
        let Ok(task_dirs) = std::fs::read_dir(&root) else { continue };
        for task in task_dirs.flatten().filter(|t| t.path().is_dir()) {
            let task_name = task.file_name().to_string_lossy().into_owned();
            let Ok(units) = std::fs::read_dir(task.path()) else { continue };
            for unit in units.flatten().filter(|u| u.path().is_dir()) {
                let backbone = unit.file_name().to_string_lossy().into_owned();
                if !tasks.contains(&task_name) {
                    other_tasks.insert(task_name.clone());
                } else if !backbones.contains(&backbone) {
                    // As --backbones takes it: a hub id's one `/`.
                    other_backbones.insert(backbone.replacen("--", "/", 1));
                }
            }
        }
    }
    (other_tasks, other_backbones)
}

/// Step 7: scores.csv and performance.csv from every unit's files (what exists so far).
pub fn write_tables(study: &Study) -> Result<()> {
    let (other_tasks, other_backbones) = beyond_selection(study);
    if !other_tasks.is_empty() || !other_backbones.is_empty() {
        let list = |option: &str, names: &BTreeSet<String>| {
            (!names.is_empty()).then(|| format!("{option} {}", names.iter().cloned().collect::<Vec<_>>().join(",")))
        };
        let beyond: Vec<String> = [list("--tasks", &other_tasks), list("--backbones", &other_backbones)].into_iter().flatten().collect();
        eprintln!(
            "warning: {} also holds results of {}, which this run does not name: the tables and the report cover this run's tasks and backbones only; name those too (nothing finished is trained again) for tables over all of them",
            study.layout.out.display(),
            beyond.join(" and ")
        );
    }
    let layout = &study.layout;
    let (mut scores, mut performance) = (Vec::new(), Vec::new());
    for task in &study.tasks {
        for entry in &study.backbones {
            let read = |setting: Setting| -> Result<Option<FeatureScores>> {
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
                    for key in stored_keys() {
                        if let Some(&value) = unit.values.get(&key) {
                            scores.push(ScoreRow { task: task.name.clone(), setting, backbone: entry.name.clone(), metric: key, value });
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
    let combined = results::combine_set_level(&scores);
    scores.extend(combined);
    results::write_rows(&layout.out.join(results::SCORES_CSV), &SCORE_COLUMNS, &scores)?;
    results::write_rows(&layout.out.join(results::PERFORMANCE_CSV), &PERFORMANCE_COLUMNS, &performance)
}
