//! `medxfer-train`: fine-tune one backbone, run the hyperparameter search, extract features,
//! evaluate a kept model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use medxfer_data::{Catalog, Entry, Normalization, Part, ood_entries, read_manifest, scan_clean, scan_dataset};
use medxfer_train::gpu_arithmetic::GpuArithmetic;
use medxfer_train::{
    ClassWeights, Comparison, Criterion, EpochBar, ExtractSettings, Halving, HalvingSummary, RunData, RunSettings, SUMMARY_FILE, Sampler,
    SearchSettings, Selection, Shard, SplitData, TrainingOptions, Trial, evaluate_split, fine_tune, load_fine_tuned, load_pretrained,
    search, start_fine_tuning,
};
use medxfer_zoo::{Backbone, HubOptions, ModelEntry, Registry, weights_file};

/// mimalloc reuses freed pages: the system allocator maps and unmaps every large tensor.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "medxfer-train", about = "Fine-tune the study's backbones as the reference did, search (lr, wd), extract features.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArgs {
    /// A registry name (resnet50) or a timm hub id (timm/resnet50.a1_in1k).
    #[arg(long)]
    model: String,
    /// Pretrained weights from this safetensors file instead of the hub.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// cpu, or cuda:N (`cuda` is cuda:0; needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    gpu: GpuArithmetic,
}

#[derive(Args)]
struct DataArgs {
    /// The task (skin, breast, brain): its ID dataset is split by --split.
    #[arg(long)]
    task: String,
    /// The ID dataset's root folder.
    #[arg(long)]
    root: PathBuf,
    /// The folder of the split's manifest.csv (from `medxfer-data split`), or that file.
    #[arg(long)]
    split: PathBuf,
    /// The task's OOD dataset root: the kept model is evaluated on it too.
    #[arg(long)]
    ood_root: Option<PathBuf>,
    /// Where decoded images are cached (reused across runs).
    #[arg(long)]
    cache: PathBuf,
    #[command(flatten)]
    transform: TransformArgs,
}

/// How images become tensors.
#[derive(Args)]
struct TransformArgs {
    /// Use ImageNet's std 0.229 instead of the reference's 0.228 typo.
    #[arg(long)]
    fix_std: bool,
    /// Shorter side of the resize (the protocol's 256) ... [default: 256; with --checkpoint,
    /// its run's]
    #[arg(long)]
    resize: Option<u32>,
    /// ... and the crop (224). Other values are not the protocol. [default: 224; with
    /// --checkpoint, its run's]
    #[arg(long)]
    crop: Option<u32>,
}

/// The protocol's resize and crop.
const RESIZE: u32 = 256;
const CROP: u32 = 224;

/// The transforms one command uses: given, else (extract and evaluate of a fine-tuned
/// checkpoint) its run's, else the protocol's.
#[derive(Debug, Clone, Copy)]
struct Transform {
    resize: u32,
    crop: u32,
    fix_std: bool,
}

impl TransformArgs {
    /// Given, else the protocol's.
    fn protocol(&self) -> Transform {
        Transform { resize: self.resize.unwrap_or(RESIZE), crop: self.crop.unwrap_or(CROP), fix_std: self.fix_std }
    }
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which epoch a run keeps: the reference's lowest validation loss, or the best validation
    /// balanced accuracy.
    #[arg(long, value_enum, default_value = "val-loss")]
    select: SelectArg,
    /// Early stopping (not in the reference): stop after this many epochs without a lower
    /// validation loss.
    #[arg(long)]
    patience: Option<usize>,
    /// How much each class's images weigh in the training and validation loss: alike (none, the
    /// reference), or balanced (n / (k * n_c) over the train part, scikit-learn's "balanced").
    #[arg(long, value_enum, default_value = "none")]
    class_weights: ClassWeights,
    /// How the train images are drawn each epoch: each once, shuffled (shuffle, the reference),
    /// or balanced (as many draws as images, with replacement, each class equally likely:
    /// PyTorch's WeightedRandomSampler with weights 1 / the class's count).
    #[arg(long, value_enum, default_value = "shuffle")]
    sampler: Sampler,
}

#[derive(Clone, Copy, ValueEnum)]
enum SelectArg {
    ValLoss,
    ValBalancedAccuracy,
}

#[derive(Subcommand)]
enum Command {
    /// One fine-tuning run at a given learning rate and weight decay (resumes if interrupted).
    Finetune {
        #[command(flatten)]
        tuning: TuningArgs,
        #[arg(long)]
        lr: f64,
        #[arg(long)]
        wd: f64,
        /// The run's directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// The Halton search over (lr, wd) for one backbone and task; rerun to resume; several
    /// workers share it with --shard i/n.
    Search(SearchArgs),
    /// Features and the head's softmax of one dataset split, as a feature file for
    /// `medxfer-scores score`.
    Extract {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        images: ImageArgs,
        /// Batch size.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// The feature file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// A kept model's balanced accuracy, accuracy, recall and confusion matrix on a split.
    Evaluate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        images: ImageArgs,
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
}

/// What a fine-tuning run and a search are both given: the backbone, the images, the training.
#[derive(clap::Args)]
struct TuningArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    train: TrainArgs,
}

impl TuningArgs {
    /// The backbone resolved (its entry, weights file and device) and the reference's settings
    /// for it with these options (its learning rate and weight decay still to choose).
    fn resolve(&self) -> Result<(ModelEntry, PathBuf, Device, RunSettings)> {
        let (entry, weights, device) = resolve(&self.model)?;
        let training = options(&self.train, &self.data.transform);
        let base = RunSettings::from_options(&training, normalization(&entry, self.data.transform.fix_std));
        Ok((entry, weights, device, base))
    }
}

/// `search`'s options.
#[derive(clap::Args)]
struct SearchArgs {
    #[command(flatten)]
    tuning: TuningArgs,
    /// Trials (the reference's 75).
    #[arg(long, default_value_t = 75)]
    trials: usize,
    /// This worker's share: trials with index % n == i.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// The search directory (trial-NNN/ per trial, search.json).
    #[arg(long)]
    out: PathBuf,
    /// Successive halving (not the reference): train every trial for --halving-min-epochs,
    /// keep the best 1/ETA, train those ETA times longer, ... to --epochs. 3 is usual.
    #[arg(long, value_name = "ETA")]
    halving: Option<usize>,
    /// The first rung's epochs under --halving.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "halving")]
    halving_min_epochs: usize,
    /// A finished full search of the same trials: say whether halving chose its A_opt.
    #[arg(long, value_name = "DIR", requires = "halving")]
    compare_with: Option<PathBuf>,
}

#[derive(Args)]
struct ImageArgs {
    /// The dataset (isic2019, pad-ufes-20, breakhis, bach, brain-tumor-kaggle, cheng, nins).
    #[arg(long)]
    dataset: String,
    #[arg(long)]
    root: PathBuf,
    /// A manifest.csv and the part of it to use; without it, every image the task uses.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The part of --manifest (train by default). Without --manifest there are no parts: it was
    /// ignored, and every image of the dataset was read as if it were the part asked for.
    #[arg(long, value_enum, requires = "manifest")]
    part: Option<PartArg>,
    /// A fine-tuned model (a run's best.safetensors, or one of its epoch-NNNN.safetensors);
    /// without it, the pretrained model with its ImageNet head.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The classes the checkpoint's head must have (checked; read off the checkpoint when left
    /// out).
    #[arg(long)]
    classes: Option<usize>,
    #[arg(long)]
    cache: PathBuf,
    #[command(flatten)]
    transform: TransformArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum PartArg {
    Train,
    Val,
    Test,
}

fn part_of(part: PartArg) -> Part {
    match part {
        PartArg::Train => Part::Train,
        PartArg::Val => Part::Val,
        PartArg::Test => Part::Test,
    }
}

fn main() -> ExitCode {
    medxfer_cli::keep_freed_memory();
    medxfer_cli::stop_quietly_when_output_closes();
    medxfer_cli::exit_code(run(Cli::parse()))
}

/// The rungs, the budget against the full search and, given a finished full search, whether
/// both chose the same A_opt.
fn print_halving(summary: &HalvingSummary, full: Option<&Path>) -> Result<()> {
    for (number, rung) in summary.rungs.iter().enumerate() {
        println!("rung {}: {} trials to epoch {}", number + 1, rung.trials.len(), rung.epochs);
    }
    println!(
        "successive halving trained {} of the full search's {} epochs ({:.1}%)",
        summary.epochs_trained,
        summary.epochs_full_search,
        100.0 * summary.epochs_trained as f64 / summary.epochs_full_search.max(1) as f64
    );
    let Some(dir) = full else { return Ok(()) };
    let test = |trial: &Trial| trial.outcome.test.as_ref().map_or("-".into(), |t| format!("{:.4}", t.balanced_accuracy));
    match medxfer_train::compare_with_full(summary, dir)? {
        Comparison::Same(index) => println!("A_opt unchanged: trial {index} in both"),
        Comparison::Changed { ours, theirs } => println!(
            "A_opt changed: trial {} (test balanced accuracy {}) instead of the full search's trial {} ({})",
            ours.index,
            test(&ours),
            theirs.index,
            test(&theirs),
        ),
        Comparison::Unfinished => println!("A_opt not comparable yet: a search is unfinished"),
    }
    Ok(())
}

/// The registry entry, its pretrained weights file and the device (opened first: a device this
/// build cannot open was found after the weights' download).
fn resolve(args: &ModelArgs) -> Result<(ModelEntry, PathBuf, Device)> {
    let device = device(args)?;
    let entry = Registry::load_default()?.resolve(&args.model, &HubOptions::from_env())?;
    let weights = match &args.weights {
        Some(path) => path.clone(),
        None => weights_file(&entry, &HubOptions::from_env())?,
    };
    Ok((entry, weights, device))
}

/// The device, with the GPU arithmetic options in force (refused on the CPU).
fn device(args: &ModelArgs) -> Result<Device> {
    args.gpu.apply(&args.device)?;
    Ok(medxfer_train::parse_device(&args.device)?)
}

fn normalization(entry: &ModelEntry, fix_std: bool) -> Normalization {
    Normalization::study(entry.preprocessing.mean, entry.preprocessing.std, fix_std)
}

/// One split's images, decoded once into the cache under `name`.
fn split_data(root: &Path, entries: &[Entry], cache: &Path, name: &str, resize: u32) -> Result<SplitData> {
    let split = SplitData::cached(cache, name, root, entries, resize, true).with_context(|| format!("caching {name}"))?;
    eprintln!("{name}: {} images", entries.len());
    Ok(split)
}

/// Refuses a `--root` that lacks some of a manifest's images, before any is cached: another
/// dataset's folder failed on the first image it lacked, while caching.
fn check_root_holds(root: &Path, entries: &[Entry], dataset: &str) -> Result<()> {
    let missing: Vec<&str> = entries.iter().filter(|e| !root.join(&e.path).is_file()).map(|e| e.path.as_str()).collect();
    if let Some(first) = missing.first() {
        bail!(
            "--root {}: {} of the split's {} images are not there (the first: {first}); give the folder of {dataset} the split was made from",
            root.display(),
            missing.len(),
            entries.len()
        );
    }
    Ok(())
}

fn run_data(args: &DataArgs) -> Result<RunData> {
    let transform = args.transform.protocol();
    medxfer_data::transform::check_sizes(transform.resize, transform.crop)?;
    let catalog = Catalog::load_default()?;
    let task = catalog.task(&args.task)?;
    // The split's folder, or its manifest.csv given as the file itself (as `--manifest` takes it).
    let split = match &args.split {
        file if file.is_file() => file.parent().unwrap_or(Path::new(".")),
        folder => folder.as_path(),
    };
    if !split.join(medxfer_data::MANIFEST_CSV).is_file() {
        bail!(
            "--split {}: no {} there; give the folder `medxfer-data split --out` wrote",
            args.split.display(),
            medxfer_data::MANIFEST_CSV
        );
    }
    let manifest = split.join(medxfer_data::MANIFEST_CSV);
    let entries = read_manifest(&manifest)?;
    // A split of another task (a brain split for --task breast) trains a head of the wrong size,
    // or indexes past it.
    if let Some(info) = medxfer_data::read_manifest_info(split).filter(|info| info.task != task.name) {
        bail!("{}: this is a split of task {}, not of --task {}", split.join(medxfer_data::MANIFEST_JSON).display(), info.task, task.name);
    }
    if let Some(entry) = entries.iter().find(|e| e.label as usize >= task.classes.len()) {
        bail!(
            "{}: {} has label {}, but task {} has {} classes ({}): is this a split of task {}?",
            manifest.display(),
            entry.path,
            entry.label,
            task.name,
            task.classes.len(),
            task.classes.join(", "),
            task.name
        );
    }
    // The split's own dataset where its manifest.json says it (an alternative ID set, Cheng's).
    let dataset = medxfer_data::read_manifest_info(split).map_or_else(|| task.id.clone(), |info| info.dataset);
    check_root_holds(&args.root, &entries, &dataset)?;
    if let Some(changed) = medxfer_data::changed_manifest_files(split, &args.root)? {
        eprintln!("warning: --root {changed}");
    }
    let part = |p: Part| entries.iter().filter(|e| e.split == p).cloned().collect::<Vec<_>>();
    let build = |p: Part| split_data(&args.root, &part(p), &args.cache, &format!("{dataset}-{}", p.name()), transform.resize);
    let (train, val, test) = (build(Part::Train)?, build(Part::Val)?, build(Part::Test)?);
    if train.labels.is_empty() || val.labels.is_empty() {
        bail!("{}: the split needs train and val images", manifest.display());
    }
    let ood_data = match &args.ood_root {
        Some(root) => {
            let spec = catalog.dataset(&task.ood)?;
            let records = scan_clean(spec, root)?;
            Some(split_data(root, &ood_entries(&records), &args.cache, &spec.name, transform.resize)?)
        }
        None => None,
    };
    Ok(RunData { train, val, test: Some(test), ood: ood_data, classes: task.classes.len() })
}

fn options(train: &TrainArgs, transform: &TransformArgs) -> TrainingOptions {
    TrainingOptions {
        epochs: train.epochs,
        batch_size: train.batch,
        seed: train.seed,
        selection: match train.select {
            SelectArg::ValLoss => Selection::ValLoss,
            SelectArg::ValBalancedAccuracy => Selection::ValBalancedAccuracy,
        },
        patience: train.patience,
        crop: transform.protocol().crop,
        class_weights: train.class_weights,
        sampler: train.sampler,
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Finetune { tuning, lr, wd, out } => {
            let (entry, weights, device, base) = tuning.resolve()?;
            let settings = RunSettings { learning_rate: lr, weight_decay: wd, ..base };
            // Before the images are cached (minutes for a real dataset).
            settings.check()?;
            check_out_folder(&out)?;
            let run_data = run_data(&tuning.data)?;
            let backbone = start_fine_tuning(&entry, &weights, run_data.classes, tuning.train.seed, &device)?;
            let mut bar = EpochBar::new(settings.epochs);
            let outcome = fine_tune(&backbone, &run_data, &settings, &out, &mut bar);
            bar.finish();
            let outcome = outcome?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        }
        Command::Search(args) => search_command(args)?,
        Command::Extract { model, images, batch, out } => {
            // `--checkpoint best.safetensors --out best.safetensors` replaced the model with its
            // features.
            for (option, input) in [("--checkpoint", images.checkpoint.as_deref()), ("--weights", model.weights.as_deref())] {
                if let Some(input) = input.filter(|input| medxfer_durable::is_same_file(input, &out)) {
                    bail!(
                        "--out {} is the {option} file: writing the features there would replace the model; give another --out",
                        input.display()
                    );
                }
            }
            let (entry, backbone, split, ids, transform) = image_split(&model, &images)?;
            let settings =
                ExtractSettings { normalization: normalization(&entry, transform.fix_std), crop: transform.crop, batch_size: batch };
            medxfer_train::extract(&backbone, &split, &ids, &settings, &out, &mut |_, _| {})?;
            println!("{}: {} images", out.display(), ids.len());
        }
        Command::Evaluate { model, images, batch } => {
            let (entry, backbone, split, _, transform) = image_split(&model, &images)?;
            let classes = backbone.num_classes()?;
            if classes == 0 {
                bail!(
                    "{} was published without a classifier, so there are no predictions to evaluate: evaluate a fine-tuned checkpoint of it (--checkpoint), or extract its features (`extract`)",
                    entry.name
                );
            }
            if let Some(&label) = split.labels.iter().max().filter(|&&l| l as usize >= classes) {
                bail!(
                    "the images have label {label}, but the model has {classes} classes: give the checkpoint of a model fine-tuned on this task (--checkpoint)"
                );
            }
            let settings = RunSettings {
                batch_size: batch,
                crop: transform.crop,
                ..RunSettings::reference(0.0, 0.0, normalization(&entry, transform.fix_std))
            };
            let (loss, _, evaluation) = evaluate_split(&backbone, &split, &settings, &Criterion::plain(), classes)?;
            let mut value = serde_json::to_value(&evaluation)?;
            value["loss"] = loss.into();
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
    }
    Ok(())
}

/// `search`: the Halton search (or its successive halving) for one backbone and task, and its
/// summary.
fn search_command(args: SearchArgs) -> Result<()> {
    let SearchArgs { tuning, trials, shard, out, halving, halving_min_epochs, compare_with } = args;
    let (entry, weights, device, base) = tuning.resolve()?;
    base.check()?;
    medxfer_train::check_trials(trials)?;
    check_out_folder(&out)?;
    let halving = halving.map(|eta| Halving::new(eta, halving_min_epochs)).transpose()?;
    halving.map(|h| h.check_epochs(tuning.train.epochs)).transpose()?;
    // Read after the search, which takes hours: a mistyped folder is caught now.
    if let Some(dir) = compare_with.as_deref().filter(|dir| !dir.is_dir()) {
        bail!("--compare-with {}: no such folder; give the --out of a finished full search", dir.display());
    }
    // A folder that is no search (its split, say) failed on its search.json after the
    // halving search, hours in.
    if let Some(dir) = compare_with.as_deref().filter(|dir| !dir.join(SUMMARY_FILE).is_file()) {
        bail!("--compare-with {}: no {SUMMARY_FILE}, so not a search; give the --out of a finished full search", dir.display());
    }
    let run_data = run_data(&tuning.data)?;
    let settings = SearchSettings { model: &entry.name, base, trials, shard: Shard::parse(&shard)? };
    let make = || start_fine_tuning(&entry, &weights, run_data.classes, tuning.train.seed, &device);
    let mut bar = EpochBar::new(base.epochs);
    let summary = match halving {
        None => search(&make, &run_data, &settings, &out, &mut bar).map_err(anyhow::Error::from),
        Some(halving) => medxfer_train::search_with_halving(&make, &run_data, &settings, halving, &out, &mut bar)
            .map_err(anyhow::Error::from)
            .and_then(|summary| {
                print_halving(&summary, compare_with.as_deref())?;
                Ok(summary.search)
            }),
    };
    bar.finish();
    let summary = summary?;
    println!(
        "{}: {} of {} trials finished, {} diverged, {} pending",
        out.join(SUMMARY_FILE).display(),
        summary.finished.len(),
        summary.trials,
        summary.diverged.len(),
        summary.pending.len()
    );
    // A longer search ran here before (Halton points nest, so its first trials are this
    // one's): said, as A_opt is now chosen among fewer trials than the folder holds.
    if let Some(last) = medxfer_train::last_trial_dir(&out).filter(|&last| last >= trials) {
        println!(
            "note: {} also holds trials up to {last} of a longer search; this one reads the first {trials} (give --trials {} to read them all)",
            out.display(),
            last + 1
        );
    }
    if let Some(best) = &summary.best {
        println!(
            "A_opt: trial {} (lr {:.3e}, wd {:.3e}), val balanced accuracy {:.4}, test balanced accuracy {}",
            best.index,
            best.outcome.learning_rate,
            best.outcome.weight_decay,
            best.outcome.best.val_balanced_accuracy,
            best.outcome.test.as_ref().map_or("-".into(), |t| format!("{:.4}", t.balanced_accuracy))
        );
    }

    Ok(())
}

/// The model (pretrained, or a fine-tuned checkpoint) and one dataset split for extract and
/// evaluate.
fn image_split(model: &ModelArgs, images: &ImageArgs) -> Result<(ModelEntry, Backbone, SplitData, Vec<String>, Transform)> {
    let backbone_and_entry = match (&images.checkpoint, images.classes) {
        (Some(checkpoint), classes) => {
            let device = device(model)?;
            let entry = Registry::load_default()?.resolve(&model.model, &HubOptions::from_env())?;
            // Before loading: a checkpoint of another backbone fails there on its tensors, or
            // loads into a twin architecture unsaid.
            let transform = image_transform(&entry, images)?;
            (load_fine_tuned(&entry, checkpoint, classes, &device)?, entry, transform)
        }
        // Left out, the pretrained model would be used without a word.
        (None, Some(classes)) => bail!(
            "--classes {classes} is the head size of a fine-tuned --checkpoint; give the checkpoint (a run's best.safetensors), or leave --classes out for the pretrained model"
        ),
        (None, None) => {
            let (entry, weights, device) = resolve(model)?;
            (load_pretrained(&entry, &weights, &device)?, entry, images.transform.protocol())
        }
    };
    let (backbone, entry, transform) = backbone_and_entry;
    let catalog = Catalog::load_default()?;
    let spec = catalog.dataset(&images.dataset)?;
    let entries = match &images.manifest {
        Some(path) => {
            let part = part_of(images.part.unwrap_or(PartArg::Train));
            medxfer_data::read_manifest_of(path, &spec.name)?.into_iter().filter(|e| e.split == part).collect()
        }
        None => ood_entries(&scan_dataset(spec, &images.root)?.records),
    };
    if entries.is_empty() {
        match &images.manifest {
            Some(path) => bail!(
                "{}: no {} images in this manifest; choose another --part",
                path.display(),
                part_of(images.part.unwrap_or(PartArg::Train)).name()
            ),
            None => bail!("{}: no images of {} found", images.root.display(), spec.name),
        }
    }
    let labels: BTreeMap<u32, usize> = entries.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.label).or_default() += 1;
        m
    });
    eprintln!("{}: {} images, per label {labels:?}", spec.name, entries.len());
    let ids = entries.iter().map(|e| e.path.clone()).collect();
    medxfer_data::transform::check_sizes(transform.resize, transform.crop)?;
    check_root_holds(&images.root, &entries, &spec.name)?;
    if let Some(changed) = images
        .manifest
        .as_deref()
        .and_then(Path::parent)
        .map(|dir| medxfer_data::changed_manifest_files(dir, &images.root))
        .transpose()?
        .flatten()
    {
        eprintln!("warning: --root {changed}");
    }
    let split = split_data(&images.root, &entries, &images.cache, &spec.name, transform.resize)?;
    Ok((entry, backbone, split, ids, transform))
}

/// A run's or search's `--out` is a folder: an existing file there failed after the images were
/// cached, "run-settings.json: Not a directory" (seen).
fn check_out_folder(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file; a run writes a folder of files (its checkpoints, history, outcome): give a folder", out.display());
    }
    Ok(())
}

/// The transforms to evaluate or extract a fine-tuned checkpoint with. It was trained on images
/// resized, cropped and normalised as its run's `run-settings.json` records: evaluated at the
/// protocol's 256/224 instead, a run trained at 36/32 scored 0.50 where its own test split gave
/// 0.95 (seen), unsaid. So what is not given is taken from the run, and what is given otherwise
/// is warned of; a checkpoint of another backbone than --model is refused.
fn image_transform(entry: &ModelEntry, images: &ImageArgs) -> Result<Transform> {
    let given = images.transform.protocol();
    let Some(checkpoint) = &images.checkpoint else { return Ok(given) };
    let run = checkpoint.parent().unwrap_or(Path::new("."));
    let Some(recorded) = medxfer_train::recorded_run_settings(run)? else { return Ok(given) };
    let record = run.join(medxfer_train::RUN_SETTINGS_FILE);
    if let Some(trained) = recorded.get("model").filter(|trained| **trained != entry.name) {
        bail!(
            "{} was fine-tuned from {trained} ({}), not from --model {}: give --model {trained}",
            checkpoint.display(),
            record.display(),
            entry.name
        );
    }
    let number = |key: &str| recorded.get(key).and_then(|value| value.parse::<u32>().ok());
    let mut transform = given;
    for (option, asked, trained, value) in [
        ("--resize", images.transform.resize, number("resize"), &mut transform.resize),
        ("--crop", images.transform.crop, number("crop"), &mut transform.crop),
    ] {
        match (asked, trained) {
            (None, Some(trained)) => *value = trained,
            (Some(asked), Some(trained)) if asked != trained => eprintln!(
                "warning: {option} {asked}: the checkpoint's run trained with {option} {trained} ({}); its accuracy at another size is not the run's",
                record.display()
            ),
            _ => {}
        }
    }
    let std_of = |fix_std: bool| format!("{:?}", normalization(entry, fix_std).std);
    match recorded.get("normalization_std") {
        Some(std) if !given.fix_std && *std == std_of(true) && *std != std_of(false) => transform.fix_std = true,
        Some(std) if *std != std_of(given.fix_std) => eprintln!(
            "warning: the checkpoint's run normalised with std {std} ({}), this evaluation with {}",
            record.display(),
            std_of(given.fix_std)
        ),
        _ => {}
    }
    if (transform.resize, transform.crop, transform.fix_std) != (given.resize, given.crop, given.fix_std) {
        eprintln!(
            "{}: as its run trained: resize {}, crop {}{} ({})",
            checkpoint.display(),
            transform.resize,
            transform.crop,
            if transform.fix_std { ", ImageNet's std (--fix-std)" } else { "" },
            record.display()
        );
    }
    Ok(transform)
}
