//! `cargo xtask reproduce`: the paper's seven steps over tasks x backbones (PROTOCOL.md).
//!
//! Steps: (1) splits (`splits.rs`); (2) pretrained features and source probabilities of each
//! task's train split; (3) the seven scores, S_id; (4) the Halton search, A_opt and P_id; (5)
//! A_opt's features and own-head probabilities on the OOD set, S_ood; (6) P_ood; (7) scores.csv,
//! performance.csv and the report (`crate::report`).
//!
//! Every step leaves a file and skips its work when the file is there, so a rerun continues
//! where a crash or a kill stopped it. `--shard i/n` splits the work: the per-backbone steps by
//! unit (task x backbone) index, the searches by trial; the tables are written by an unsharded
//! run (the Slurm script's final job), which also does whatever a shard could not (an OOD step
//! whose search another shard finished later).

pub mod args;
pub mod layout;
pub mod plan;
pub mod settings;
pub mod splits;
pub mod unit;

use std::path::PathBuf;

use anyhow::{Context, Result};
use medxfer_data::{Catalog, Entry, TaskSpec};
use medxfer_train::{ClassWeights, RunData, Sampler, Selection, Shard, SplitData, TrainingOptions};
use medxfer_zoo::ModelEntry;

use crate::features::ExtractDtype;
use crate::gpu_arithmetic::{ConvAlgorithms, GpuArithmetic};
use crate::report::Provenance;
pub use crate::weights::Weights;
use layout::Layout;
pub use splits::SplitChoice;
use splits::TaskSplit;

/// Everything a study run needs.
#[derive(Debug, Clone)]
pub struct Study {
    pub data: PathBuf,
    pub layout: Layout,
    pub catalog: Catalog,
    pub tasks: Vec<TaskSpec>,
    pub backbones: Vec<ModelEntry>,
    pub weights: Weights,
    pub splits: SplitChoice,
    pub trials: usize,
    /// Epochs, batch, seed, kept epoch, early stopping and crop of every run.
    pub options: TrainingOptions,
    pub device: String,
    pub shard: Shard,
    pub resize: u32,
    pub fix_std: bool,
    /// Successive halving instead of the full search.
    pub halving: Option<medxfer_train::Halving>,
    /// A results folder's searches may grow by trials (`--extend`).
    pub extend: bool,
    /// A failing unit is recorded and the others run on (`--keep-going`).
    pub keep_going: bool,
    /// Batch of feature extraction (the reference's 32).
    pub extract_batch: usize,
    /// Precision of the pretrained-feature extraction (f32 unless `--dtype`).
    pub extract_dtype: ExtractDtype,
    /// The GPU's arithmetic (`--precision`, `--matmul-tf32`, `--conv-algorithms`,
    /// `--conv-nondeterministic`).
    pub gpu: GpuArithmetic,
    /// Training images per second by backbone, from a `bench-zoo --train` file (`--rates`).
    pub benchmarked_rates: std::collections::BTreeMap<String, f64>,
    pub demo: bool,
    /// The command line, for the report.
    pub command: String,
}

impl Study {
    /// The state of a unit's search: its trials' outcomes and A_opt once every trial (of the
    /// last rung, under halving) is finished.
    pub fn search_summary(&self, dir: &std::path::Path) -> medxfer_train::SearchSummary {
        if self.halving.is_some() {
            let stored = std::fs::read(dir.join(medxfer_train::SUMMARY_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<medxfer_train::HalvingSummary>(&b).ok());
            if let Some(stored) = stored {
                return stored.search;
            }
            let mut summary = medxfer_train::summarize_search(dir, self.trials);
            summary.best = None;
            return summary;
        }
        medxfer_train::summarize_search(dir, self.trials)
    }

    /// Every way this run differs from the reference protocol.
    pub fn deviations(&self) -> Vec<String> {
        let mut list = Vec::new();
        if self.demo {
            list.push(
                "demo: synthetic tasks and small backbones pretrained on a synthetic source set, not ImageNet and the medical datasets"
                    .into(),
            );
        }
        match &self.splits {
            SplitChoice::Authors(_) => {}
            SplitChoice::Faithful => list.push(
                "splits regenerated as the reference made them (--splits faithful), not the authors' fixed CSVs (skin: a stratified 70/10/20 split stands in for theirs)"
                    .into(),
            ),
            SplitChoice::Grouped => list.push("patient/lesion-grouped splits (--splits grouped): no group spans two parts; the reference's image-level splits leak".into()),
        }
        let options = &self.options;
        let reference = [(self.trials, 75, "trials"), (options.epochs, 100, "epochs"), (options.batch_size, 128, "batch size")];
        for (value, expected, what) in reference {
            if value != expected {
                list.push(format!("{what} {value} instead of the reference's {expected}"));
            }
        }
        if (self.resize, options.crop) != (256, 224) {
            list.push(format!("images resized to {} and cropped to {} instead of 256 and 224", self.resize, options.crop));
        }
        if self.fix_std {
            list.push("ImageNet std 0.229 (--fix-std) instead of the reference's 0.228 typo".into());
        }
        if options.selection != Selection::ValLoss {
            list.push("each run keeps its best validation balanced accuracy epoch, not its lowest validation loss".into());
        }
        if let Some(h) = self.halving {
            list.push(format!(
                "successive halving (eta {}, first rung {} epochs): only the best trials of each rung train on, A_opt is chosen among those that trained every epoch",
                h.eta, h.min_epochs
            ));
        }
        if self.extract_dtype != ExtractDtype::F32 {
            let dtype = self.extract_dtype.as_str();
            list.push(format!(
                "pretrained features extracted in {dtype} (--dtype {dtype}), not f32: the scores' inputs are rounded; fine-tuning and the OOD step ran in f32"
            ));
        }
        if let Some(patience) = options.patience {
            list.push(format!("early stopping after {patience} epochs without a lower validation loss"));
        }
        if options.class_weights != ClassWeights::None {
            list.push(format!(
                "class-weighted cross-entropy (--class-weights {}): each train image weighs n / (k * n_c) of its class in the training and validation loss, not alike",
                options.class_weights.as_str()
            ));
        }
        if options.sampler != Sampler::Shuffle {
            list.push(format!(
                "class-balanced sampling (--sampler {}): each epoch as many train images drawn with replacement, each class equally likely, not each image once",
                options.sampler.as_str()
            ));
        }
        if self.gpu.recorded() != "f32" {
            list.push(format!(
                "GPU arithmetic {} ({}), not f32 throughout: TF32 rounds the products' inputs to 10-bit mantissas",
                self.gpu.recorded(),
                self.gpu.options().join(" ")
            ));
        }
        if self.gpu.conv_algorithms == ConvAlgorithms::Benchmark {
            list.push(
                "cuDNN's convolution algorithms timed per shape (--conv-algorithms benchmark): a resumed run may differ from an uninterrupted one in the last bits"
                    .into(),
            );
        }
        if self.gpu.conv_nondeterministic {
            list.push(
                "non-deterministic cuDNN convolution algorithms admitted (--conv-nondeterministic, PyTorch's default): two runs differ in the last bits and a resumed run is not bit-identical to an uninterrupted one"
                    .into(),
            );
        }
        list
    }

    fn provenance(&self) -> Provenance {
        Provenance {
            command: self.command.clone(),
            demo: self.demo,
            device: self.device.clone(),
            trials: self.trials,
            epochs: self.options.epochs,
            batch: self.options.batch_size,
            seed: self.options.seed,
            splits: Vec::new(),
            deviations: self.deviations(),
            // The study's seed seeds the bootstrap too: one number reproduces the whole report.
            bootstrap: crate::report::uncertainty::BootstrapSettings { seed: self.options.seed, ..Default::default() },
        }
    }
}

/// One task's images as the runs read them: decoded once into OUT/cache.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub split: TaskSplit,
    pub run: RunData,
    pub ood: SplitData,
}

impl TaskData {
    fn load(study: &Study, task: &TaskSpec) -> Result<Self> {
        let split =
            splits::prepare(&study.catalog, task, &study.data, &study.splits, study.options.seed, &study.layout.splits(&task.name))?;
        let cache_dir = study.layout.cache();
        let build = |root: &std::path::Path, entries: &[Entry], name: String| -> Result<SplitData> {
            SplitData::cached(&cache_dir, &name, root, entries, study.resize, true).with_context(|| format!("caching {name}"))
        };
        let id = &split.note.dataset;
        let run = RunData {
            train: build(&split.id_root, &split.train, format!("{id}-train"))?,
            val: build(&split.id_root, &split.val, format!("{id}-val"))?,
            test: Some(build(&split.id_root, &split.test, format!("{id}-test"))?),
            ood: None,
            classes: task.classes.len(),
        };
        let ood = build(&split.ood_root, &split.ood, split.note.ood_dataset.clone())?;
        Ok(Self { split, run, ood })
    }
}

/// What one run of the study did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Units (task x backbone) whose every step is done.
    pub complete: usize,
    pub units: usize,
    /// Whether the tables and the report were written (unsharded runs).
    pub reported: bool,
    /// Under `--keep-going`, each unit (or task) that failed, with its error.
    pub failed: Vec<String>,
}

/// Runs every step still to do for this shard; unsharded, writes the tables and the report.
pub fn run(study: &Study) -> Result<Outcome> {
    let device = medxfer_train::parse_device(&study.device)?;
    std::fs::create_dir_all(&study.layout.out).with_context(|| format!("cannot create {}", study.layout.out.display()))?;
    study.check_recorded()?;
    let log = layout::Log::new(study.layout.log());
    let mut provenance = study.provenance();
    let mut outcome = Outcome::default();
    // Under --keep-going a failure is logged and kept, and the run goes on; otherwise it stops
    // the run.
    let mut failure = |what: String, error: anyhow::Error| -> Result<()> {
        if !study.keep_going {
            return Err(error.context(format!("{what} failed")));
        }
        log.line(&format!("failed: {what}: {error:#}"));
        eprintln!("{what} failed (going on, --keep-going): {error:#}");
        outcome.failed.push(format!("{what}: {error:#}"));
        Ok(())
    };
    let mut units = 0;
    let mut complete = 0;
    for (t, task) in study.tasks.iter().enumerate() {
        units += study.backbones.len();
        let data = match TaskData::load(study, task) {
            Ok(data) => data,
            Err(error) => {
                failure(format!("task {}", task.name), error)?;
                continue;
            }
        };
        provenance.splits.push(data.split.note.clone());
        for (b, entry) in study.backbones.iter().enumerate() {
            let unit_index = t * study.backbones.len() + b;
            let unit = unit::Unit { study, task, entry, data: &data, device: &device, log: &log, mine: study.shard.takes(unit_index) };
            match unit.run() {
                Ok(true) => complete += 1,
                Ok(false) => {}
                Err(error) => failure(format!("{} · {}", task.name, entry.name), error)?,
            }
        }
    }
    outcome.units = units;
    outcome.complete = complete;
    if study.shard.count == 1 {
        crate::report::write_provenance(&study.layout.out, &provenance)?;
        unit::write_tables(study)?;
        crate::report::run(&study.layout.out, crate::report::NothingToCorrelate::Write)?;
        outcome.reported = true;
        log.line(&format!("report: {} of {} units complete", outcome.complete, outcome.units));
    }
    Ok(outcome)
}
