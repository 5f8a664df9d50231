//! `cargo xtask reproduce`'s command line, turned into a [`Study`].

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use medxfer_data::Catalog;
use medxfer_train::{ClassWeights, Sampler, Selection, Shard, TrainingOptions};
use medxfer_zoo::{HubOptions, Registry};

use super::layout::Layout;
use super::{SplitChoice, Study, Weights};
use crate::features::ExtractDtype;
use crate::gpu_arithmetic::GpuArithmetic;

#[derive(Debug, Clone, Args)]
pub struct ReproduceArgs {
    /// The datasets, one folder per dataset named as in datasets/*.toml (DATA/isic2019,
    /// DATA/pad-ufes-20, DATA/breakhis, DATA/bach, DATA/brain-tumor-kaggle, DATA/nins).
    /// [default: data; demo: OUT/demo-data]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The results directory (README, "Results"); rerun with the same one to continue.
    /// [default: results; demo: results-demo]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tasks, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["skin".to_string(), "breast".to_string(), "brain".to_string()])]
    pub tasks: Vec<String>,
    /// `all`, or comma-separated registry names or timm hub ids.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub backbones: Vec<String>,
    /// authors:DIR (the authors' CSVs, DIR/<task>/), faithful (regenerated as the reference
    /// made them) or grouped (no patient/lesion in two parts).
    #[arg(long, default_value = "faithful")]
    pub splits: String,
    /// Halton points per search [default: the reference's 75; demo: 8].
    #[arg(long)]
    pub trials: Option<usize>,
    /// Epochs per run [default: the reference's 100; demo: 8].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training batch [default: the reference's 128; demo: 32].
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, or cuda:N (`cuda` is cuda:0; a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// This worker's share i/n: units (task x backbone) i, i+n, ... for extraction and scores,
    /// trials i, i+n, ... of every search. Finish with one unsharded run (tables, report).
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Print the work left and the estimated device-hours; start nothing.
    #[arg(long)]
    pub plan: bool,
    /// For --plan: training throughput from `bench-zoo --train` (its zoo-train*.json), used
    /// for the backbones that have no measured epoch in the results folder yet.
    #[arg(long, value_name = "FILE")]
    pub rates: Option<PathBuf>,
    /// Pretrained weights from DIR/<backbone>.safetensors instead of the hub.
    #[arg(long, value_name = "DIR")]
    pub weights: Option<PathBuf>,
    /// Precision of the pretrained-feature extraction (steps 2-3, the scores' inputs): f32 (the
    /// reference's, the default), or f16 / bf16 (bf16 on a GPU) so the giant foundation models
    /// extract in half the memory; listed as a deviation. Fine-tuning and the OOD step stay f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ExtractDtype,
    /// The GPU's arithmetic: f32 everywhere by default (the reference's); anything else is
    /// recorded and listed as a deviation.
    #[command(flatten)]
    pub gpu: GpuArithmetic,
    /// The model registry (models/ by default).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Shorter side of the resize [default: the protocol's 256; demo: 36] ...
    #[arg(long)]
    pub resize: Option<u32>,
    /// ... and the crop [default: 224; demo: 32].
    #[arg(long)]
    pub crop: Option<u32>,
    /// ImageNet's std 0.229 instead of the reference's 0.228 typo.
    #[arg(long)]
    pub fix_std: bool,
    /// Which epoch a run keeps.
    #[arg(long, value_enum, default_value = "val-loss")]
    pub select: SelectArg,
    /// Early stopping (not in the reference): stop a run after this many epochs without a
    /// lower validation loss.
    #[arg(long)]
    pub patience: Option<usize>,
    /// How much each class's images weigh in the fine-tuning loss (training and validation):
    /// alike (none, the reference), or balanced (n / (k * n_c) over the train split,
    /// scikit-learn's "balanced"; a deviation the report lists).
    #[arg(long, value_enum, default_value = "none")]
    pub class_weights: ClassWeights,
    /// How the fine-tuning's train images are drawn each epoch: each once, shuffled (shuffle, the
    /// reference), or balanced (as many draws as images, with replacement, each class equally
    /// likely: PyTorch's WeightedRandomSampler; a deviation the report lists).
    #[arg(long, value_enum, default_value = "shuffle")]
    pub sampler: Sampler,
    /// Successive halving (not in the reference): every trial trains --halving-min-epochs, the
    /// best 1/ETA continue ETA times longer, ... the last rung to --epochs. 3 is usual.
    #[arg(long, value_name = "ETA")]
    pub halving: Option<usize>,
    /// Let an existing results folder's searches grow to more --trials (the first Halton points
    /// stay the same, so the finished trials count); A_opt and its OOD step are redone where
    /// the new trials change A_opt. Any other change of settings is refused for an existing
    /// folder.
    #[arg(long)]
    pub extend: bool,
    /// Go on with the other units (task x backbone) when one fails (weights that cannot be had,
    /// a task's data missing, a failed extraction), as `make -k`: the report covers the units
    /// that finished, and the command then fails naming each unit that did not. A rerun after
    /// mending does only what is left. Without it the study stops at the first failure.
    #[arg(long)]
    pub keep_going: bool,
    /// The first rung's epochs under --halving.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "halving")]
    pub halving_min_epochs: usize,
    /// The embedded demo: synthetic source set, ten small backbones pretrained on it (cached),
    /// synthetic replicas of the six datasets; no data or network needed (a few minutes on a
    /// laptop).
    #[arg(long)]
    pub demo: bool,
    /// Where the demo caches its source set and pretrained backbones [default:
    /// $MEDXFER_CACHE/demo, else $XDG_CACHE_HOME/medxfer/demo, else ~/.cache/medxfer/demo].
    #[arg(long, value_name = "DIR", requires = "demo")]
    pub demo_cache: Option<PathBuf>,
}

/// What [`ReproduceArgs::budget`] resolves and checks.
struct Budget {
    resize: u32,
    trials: usize,
    options: TrainingOptions,
    halving: Option<medxfer_train::Halving>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SelectArg {
    ValLoss,
    ValBalancedAccuracy,
}

impl ReproduceArgs {
    /// Whether the study runs on a GPU.
    pub fn device_is_gpu(&self) -> bool {
        self.device.starts_with("cuda")
    }

    /// Refuses, before any work, arguments no study can run with: sizes, budgets, a precision
    /// the device cannot run, tasks, splits, shard, missing dataset folders and weights files.
    /// `slurm` calls it on the arguments it passes through, so that a mistake is found at
    /// submission, not in every array task.
    pub fn check(&self) -> Result<()> {
        let demo = if self.demo { Some(crate::demo::DemoConfig::load()?) } else { None };
        self.budget(demo.as_ref())?;
        let (_, tasks) = self.tasks()?;
        let layout = Layout::new(&self.out_dir(demo.is_some()));
        super::splits::check_authors_csvs(&SplitChoice::parse(&self.splits)?, &tasks, |task| layout.splits(task))?;
        Shard::parse(&self.shard)?;
        if demo.is_none() {
            check_data_folders(&tasks, self.data.as_deref().unwrap_or(Path::new("data")), &self.out_dir(false))?;
        }
        // By name alone: a hub id is not looked up on a login node, which may have no network.
        if let Some(dir) = &self.weights {
            check_weights_files(dir, &self.registry(demo.is_some())?.names(&self.backbones)?, self.keep_going)?;
        }
        Ok(())
    }

    /// The model registry: --models, else the demo's or the workspace's.
    fn registry(&self, demo: bool) -> Result<Registry> {
        Ok(match (&self.models, demo) {
            (Some(dir), _) => Registry::load(dir)?,
            (None, true) => crate::demo::registry()?,
            (None, false) => Registry::load_default()?,
        })
    }

    /// The results folder: --out, or the default for a study or the demo.
    fn out_dir(&self, demo: bool) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from(if demo { "results-demo" } else { "results" }))
    }

    fn tasks(&self) -> Result<(Catalog, Vec<medxfer_data::TaskSpec>)> {
        let catalog = Catalog::load_default()?;
        let mut tasks: Vec<medxfer_data::TaskSpec> = Vec::new();
        for name in &self.tasks {
            let task = catalog.task(name)?;
            // Once each, as --backbones: a task named twice would put each of its rows twice in
            // the tables, which the report refuses after the whole study.
            if !tasks.iter().any(|t| t.name == task.name) {
                tasks.push(task.clone());
            }
        }
        if tasks.is_empty() {
            bail!("--tasks names no task");
        }
        Ok((catalog, tasks))
    }

    /// The sizes, the search's budget and the GPU arithmetic, the demo's where not given, each
    /// checked.
    fn budget(&self, demo: Option<&crate::demo::DemoConfig>) -> Result<Budget> {
        let search = demo.map(|c| c.search.clone());
        let resize = self.resize.or(search.as_ref().map(|s| s.resize)).unwrap_or(256);
        let crop = self.crop.or(search.as_ref().map(|s| s.crop)).unwrap_or(224);
        medxfer_data::transform::check_sizes(resize, crop)?;
        let pick = |given: Option<usize>, demo: Option<usize>, reference: usize| given.or(demo).unwrap_or(reference);
        let trials = pick(self.trials, search.as_ref().map(|s| s.trials), 75);
        let selection = match self.select {
            SelectArg::ValLoss => Selection::ValLoss,
            SelectArg::ValBalancedAccuracy => Selection::ValBalancedAccuracy,
        };
        let options = TrainingOptions {
            epochs: pick(self.epochs, search.as_ref().map(|s| s.epochs), 100),
            batch_size: pick(self.batch, search.as_ref().map(|s| s.batch), 128),
            seed: self.seed,
            selection,
            patience: self.patience,
            crop,
            class_weights: self.class_weights,
            sampler: self.sampler,
        };
        // A budget no run can train with would otherwise stop the study at its first search,
        // hours in.
        options.check()?;
        medxfer_train::check_trials(trials)?;
        let halving = self.halving.map(|eta| medxfer_train::Halving::new(eta, self.halving_min_epochs)).transpose()?;
        halving.map(|h| h.check_epochs(options.epochs)).transpose()?;
        // A GPU in a build without CUDA was found after the demo's pretraining.
        medxfer_train::check_device_name(&self.device)?;
        self.dtype.check_device(&self.device)?;
        self.gpu.apply(&self.device)?;
        Ok(Budget { resize, trials, options, halving })
    }

    /// The study these arguments ask for; `command` is recorded in the report.
    pub fn study(&self, command: String) -> Result<Study> {
        let demo = if self.demo { Some(crate::demo::DemoConfig::load()?) } else { None };
        // Before any work (the demo's pretraining, a real dataset's extraction).
        let Budget { resize, trials, options, halving } = self.budget(demo.as_ref())?;
        let out = self.out_dir(demo.is_some());
        let (catalog, tasks) = self.tasks()?;
        let splits = SplitChoice::parse(&self.splits)?;
        let layout = Layout::new(&out);
        super::splits::check_authors_csvs(&splits, &tasks, |task| layout.splits(task))?;
        let registry = self.registry(demo.is_some())?;
        let hub = HubOptions::from_env();
        let backbones = registry.select(&self.backbones, &hub)?;
        if backbones.len() < 2 {
            eprintln!("warning: with {} backbone(s) there is nothing to rank; the correlations need at least two", backbones.len());
        }
        let (data, weights) = match &demo {
            Some(config) => {
                let data = self.data.clone().unwrap_or_else(|| out.join("demo-data"));
                let cache = self.demo_cache.clone().unwrap_or_else(crate::demo::default_cache);
                // --plan starts nothing: the demo's data and backbones are made by the run.
                if !self.plan {
                    crate::demo::write_datasets(config, &data)?;
                }
                let weights = match &self.weights {
                    Some(dir) => dir.clone(),
                    None if self.plan => cache.join("weights"),
                    None => crate::demo::pretrained_weights(config, &backbones, &cache)?,
                };
                (data, Weights::Dir(weights))
            }
            None => {
                let data = self.data.clone().unwrap_or_else(|| PathBuf::from("data"));
                if !self.plan {
                    check_data_folders(&tasks, &data, &out)?;
                }
                let weights = match &self.weights {
                    Some(dir) => Weights::Dir(dir.clone()),
                    None => Weights::Hub(hub),
                };
                (data, weights)
            }
        };
        if let (Some(dir), false) = (&self.weights, self.plan) {
            check_weights_files(dir, &backbones.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), self.keep_going)?;
        }
        Ok(Study {
            data,
            layout,
            catalog,
            tasks,
            backbones,
            weights,
            splits,
            trials,
            options,
            device: self.device.clone(),
            shard: Shard::parse(&self.shard)?,
            resize,
            fix_std: self.fix_std,
            halving,
            extend: self.extend,
            keep_going: self.keep_going,
            extract_batch: 32,
            extract_dtype: self.dtype,
            gpu: self.gpu,
            benchmarked_rates: self
                .rates
                .as_deref()
                .map(|path| -> Result<_> {
                    let (rates, warnings) = super::plan::read_rates(path, options.batch_size, options.crop, &self.device)?;
                    for warning in warnings {
                        eprintln!("warning: {warning}");
                    }
                    Ok(rates)
                })
                .transpose()?
                .unwrap_or_default(),
            demo: demo.is_some(),
            command,
        })
    }
}

/// Refuses, before any work, a `--data` folder without a task's ID or OOD dataset: each task
/// found its data only when the study reached it, after the tasks before it (days on the real
/// study). Every missing folder is named at once. So is an `--out` inside a dataset's folder: the
/// study's figures there were read as the dataset's images next time (seen: BreakHis refused
/// `results/fig3.png` as "not a BreakHis image name", for this study's rerun and every other).
fn check_data_folders(tasks: &[medxfer_data::TaskSpec], data: &Path, out: &Path) -> Result<()> {
    if let Some(dataset) = tasks
        .iter()
        .flat_map(|task| [&task.id, &task.ood])
        .map(|dataset| data.join(dataset.as_str()))
        .find(|folder| folder.is_dir() && medxfer_durable::is_within(out, folder))
    {
        bail!(
            "--out {} is inside the dataset folder {}: the study's figures and files there would be read as the dataset's next time; give --out a folder outside --data's datasets",
            out.display(),
            dataset.display()
        );
    }
    let missing: Vec<String> = tasks
        .iter()
        .flat_map(|task| [(&task.id, "ID", &task.name), (&task.ood, "OOD", &task.name)])
        .filter(|(dataset, _, _)| !data.join(dataset.as_str()).is_dir())
        .map(|(dataset, role, task)| {
            let near = near_named_folder(data, dataset).map_or(String::new(), |near| format!("; {near} is there: rename it {dataset}"));
            format!("{} (task {task}'s {role} set{near})", data.join(dataset.as_str()).display())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "--data {}: no folder {}; each dataset goes in DATA/<name>/ as datasets/README.md says (`medxfer-data check` reads one), or choose fewer --tasks",
            data.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// A folder of `data` named as `dataset` but for case and separators (`BreakHis`, `ISIC_2019`,
/// `brain_tumor_kaggle`): the names a download or a colleague's layout gives, which the study's
/// `DATA/<name>` does not find.
fn near_named_folder(data: &Path, dataset: &str) -> Option<String> {
    let key = |name: &str| name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect::<String>();
    let wanted = key(dataset);
    let mut near: Vec<String> = std::fs::read_dir(data)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| key(name) == wanted)
        .collect();
    near.sort();
    near.into_iter().next()
}

/// Refuses, before any work, a `--weights` folder without some backbone's file (each unit found
/// its own on reaching it, after the others' work); with `--keep-going` the others run, said.
fn check_weights_files(dir: &Path, backbones: &[String], keep_going: bool) -> Result<()> {
    let missing: Vec<String> = backbones
        .iter()
        .map(|name| crate::weights::file_in(dir, name))
        .filter(|path| !path.is_file())
        .map(|path| path.display().to_string())
        .collect();
    match (missing.is_empty(), keep_going) {
        (true, _) => Ok(()),
        (false, true) => {
            eprintln!(
                "warning: --weights {}: no {} (--keep-going: those backbones' units will fail, the others run)",
                dir.display(),
                missing.join(", ")
            );
            Ok(())
        }
        (false, false) => bail!(
            "--weights {}: no {}; put each backbone's weights there as <name>.safetensors, drop --weights to use the hub, or leave those out of --backbones",
            dir.display(),
            missing.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Reproduce {
        #[command(flatten)]
        args: ReproduceArgs,
    }

    /// A task named twice is one task, in the order first named (as a backbone named twice).
    #[test]
    fn a_task_named_twice_is_studied_once() {
        let parsed = Reproduce::try_parse_from(["reproduce", "--tasks", "breast,skin,breast"]).unwrap();
        let (_, tasks) = parsed.args.tasks().unwrap();
        assert_eq!(tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["breast", "skin"]);
        let parsed = Reproduce::try_parse_from(["reproduce", "--tasks", "lung"]).unwrap();
        assert!(format!("{:#}", parsed.args.tasks().unwrap_err()).contains("unknown task"));
    }
}
