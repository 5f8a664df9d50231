//! `medxfer-zoo`: list, fetch, inspect and run the backbones.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use clap::{Parser, Subcommand};
use medxfer_zoo::{Backbone, CONFIG_FILE, HubOptions, ModelEntry, Registry, hub_file, read_checkpoint, weights_file};

/// mimalloc reuses freed pages: the system allocator maps and unmaps every large tensor, and
/// the page faults and TLB shootdowns cost 20-40% of a CPU forward pass.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The study's ImageNet backbones in candle, identical to timm.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The model registry directory (default: the workspace's models/, or MEDXFER_MODELS).
    #[arg(long, global = true)]
    models: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The registry: name, family, parameters, feature dimension, hub id.
    List,
    /// Download a backbone's weights (and timm config) into the hub cache.
    Fetch {
        /// A registry name or a hub repo id.
        model: String,
    },
    /// Configuration, parameter count and, given weights, the check of every tensor.
    Inspect {
        /// A registry name or hub repo id.
        model: String,
        /// A local safetensors checkpoint to check against the model (default: the hub's, if cached).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Top-5 classes of each image, with the backbone's own preprocessing.
    Classify {
        /// A registry name or hub repo id.
        model: String,
        /// JPEG, PNG, TIFF or BMP files, or folders: every such file in a folder, by name.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// The checkpoint (default: the hub's).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// One class name per line (default: the ImageNet names shipped in models/ for a 1000-class head, the class indices for any other).
        #[arg(long)]
        classes: Option<PathBuf>,
    },
    /// Run a model on prepared inputs: IN holds `input` (B x 3 x H x W, f32, normalised); OUT
    /// gets `features` and `logits`.
    Run {
        /// A registry name or hub repo id.
        #[arg(long)]
        model: String,
        /// The checkpoint (default: the hub's, from the cache or downloaded).
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Classes of the checkpoint's head, when it is not the registry's.
        #[arg(long)]
        num_classes: Option<usize>,
    },
}

fn main() -> ExitCode {
    medxfer_cli::keep_freed_memory();
    medxfer_cli::stop_quietly_when_output_closes();
    medxfer_cli::exit_code(run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    let registry = match &cli.models {
        Some(dir) => Registry::load(dir)?,
        None => Registry::load_default()?,
    };
    match cli.command {
        Command::List => list(&registry),
        Command::Fetch { model } => {
            let options = HubOptions::from_env();
            let entry = registry.resolve(&model, &options)?;
            println!("{}", weights_file(&entry, &options)?.display());
            println!("{}", hub_file(&entry.hub, CONFIG_FILE, &options)?.display());
            Ok(())
        }
        Command::Inspect { model, weights } => inspect(&registry.resolve(&model, &HubOptions::from_env())?, weights.as_deref()),
        Command::Classify { model, images, weights, classes } => {
            // Before the model is looked up (on the hub, for a repo id) and loaded.
            let images = image_files(&images)?;
            let entry = registry.resolve(&model, &HubOptions::from_env())?;
            classify(&entry, &images, weights.as_deref(), classes.as_deref(), cli.models.as_deref())
        }
        Command::Run { model, weights, input, output, num_classes } => {
            run_model(&registry.resolve(&model, &HubOptions::from_env())?, weights.as_deref(), &input, &output, num_classes)
        }
    }
}

/// The images `paths` name: each file as given, and every JPEG, PNG, TIFF or BMP file under each
/// folder, at any depth, in path order (a folder was read as one undecodable image). A path that
/// does not exist, or a folder without images, is an error.
fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            if !path.exists() {
                bail!("{}: no such file", path.display());
            }
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        images_under(path, &mut found)?;
        if found.is_empty() {
            bail!("{}: a folder without JPEG, PNG, TIFF or BMP files in it or below it", path.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Every image file under `dir`, at any depth. Hidden files and folders are passed over: a Mac's
/// AppleDouble `._IMAGE.png` beside each image copied to a foreign disk stopped the folder,
/// "cannot decode" (seen). Linked folders are not followed (a link to a parent would never end).
fn images_under(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for item in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let item = item.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = item.path();
        if item.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if item.file_type().with_context(|| format!("cannot read {}", path.display()))?.is_dir() {
            images_under(&path, found)?;
        } else if path.is_file() && medxfer_zoo::is_image_file(&path) {
            found.push(path);
        }
    }
    Ok(())
}

fn family(entry: &ModelEntry) -> String {
    serde_json::to_value(&entry.architecture).ok().and_then(|v| v["family"].as_str().map(str::to_string)).unwrap_or_default()
}

fn list(registry: &Registry) -> Result<()> {
    println!("{:<30} {:<14} {:>12} {:>8}  hub", "name", "family", "parameters", "features");
    let groups = registry.groups().iter().map(|(name, entries)| (format!("group {name}"), entries.as_slice()));
    for (group, entries) in std::iter::once(("the study's backbones (all)".to_string(), registry.entries())).chain(groups) {
        println!("# {group}");
        list_entries(entries)?;
    }
    Ok(())
}

fn list_entries(entries: &[ModelEntry]) -> Result<()> {
    for entry in entries {
        // A ViT's count without building it: the giants' zero-filled tensors are gigabytes.
        let parameters = match &entry.architecture {
            medxfer_zoo::Architecture::Vit(config) => config.parameter_count(entry.num_classes),
            _ => Backbone::from_entry(entry, &Device::Cpu)?.params().parameter_count(),
        };
        println!("{:<30} {:<14} {:>12} {:>8}  {}", entry.name, family(entry), parameters, entry.feature_dim, entry.hub);
    }
    Ok(())
}

fn weights_path(entry: &ModelEntry, weights: Option<&Path>) -> Result<PathBuf> {
    match weights {
        Some(path) => Ok(path.to_path_buf()),
        None => Ok(weights_file(entry, &HubOptions::from_env())?),
    }
}

fn inspect(entry: &ModelEntry, weights: Option<&Path>) -> Result<()> {
    let model = Backbone::from_entry(entry, &Device::Cpu)?;
    println!("{}", toml::to_string(entry).context("cannot print the entry")?);
    println!("parameters: {}", model.params().parameter_count());
    println!(
        "tensors: {} ({} running statistics)",
        model.params().names().len(),
        model.params().names().iter().filter(|n| model.params().is_buffer(n)).count()
    );
    let path = match weights {
        Some(path) => path.to_path_buf(),
        None => match weights_file(entry, &HubOptions { offline: true, ..HubOptions::from_env() }) {
            Ok(path) => path,
            Err(_) => {
                println!("weights: not in the hub cache (medxfer-zoo fetch {} downloads them)", entry.name);
                return Ok(());
            }
        },
    };
    let report = model.load_weights(&path, false)?;
    println!("weights {}: {} tensors loaded, every model tensor present", path.display(), report.loaded);
    if !report.unexpected.is_empty() {
        println!("not used: {}", report.unexpected.join(", "));
    }
    Ok(())
}

/// The ImageNet class names shipped with the registry.
const IMAGENET_CLASSES: &str = "imagenet_classes.txt";

/// The top-5 classes of each image. Without `--classes`, a 1000-class head gets the ImageNet
/// names (from the `--models` folder, else the workspace's), any other head its class indices.
fn classify(entry: &ModelEntry, images: &[PathBuf], weights: Option<&Path>, classes: Option<&Path>, models: Option<&Path>) -> Result<()> {
    if entry.num_classes == 0 {
        bail!(
            "{} was published without a classifier, so it has no classes to rank: its features are what it gives (`medxfer-zoo run`, `medxfer-train extract`)",
            entry.name
        );
    }
    let imagenet = models
        .map(|dir| dir.join(IMAGENET_CLASSES))
        .filter(|file| file.is_file())
        .unwrap_or_else(|| Registry::default_dir().join(IMAGENET_CLASSES));
    let names: Vec<String> = match classes {
        None if entry.num_classes != 1000 => {
            eprintln!("note: {} has {} classes and no --classes file names them: classes shown by index", entry.name, entry.num_classes);
            (0..entry.num_classes).map(|class| format!("class {class}")).collect()
        }
        given => {
            let file = given.unwrap_or(&imagenet);
            let names: Vec<String> = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the class names {}", file.display()))?
                .lines()
                .map(str::to_string)
                .collect();
            if names.len() != entry.num_classes {
                bail!(
                    "{} holds {} class names but {} has {} classes; pass --classes with one name per line",
                    file.display(),
                    names.len(),
                    entry.name,
                    entry.num_classes
                );
            }
            names
        }
    };
    let device = Device::Cpu;
    let model = Backbone::load_entry(entry, &weights_path(entry, weights)?, &device)?;
    for path in images {
        let input = medxfer_zoo::eval_tensor(path, &entry.preprocessing, &device)?.unsqueeze(0)?;
        let (_, logits) = model.features_and_logits(&input, false)?;
        let probabilities: Vec<f32> = candle_nn::ops::softmax_last_dim(&logits)?.squeeze(0)?.to_vec1()?;
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        println!("{}", path.display());
        for &class in order.iter().take(5) {
            println!("  {:>6.2}%  {:>4}  {}", 100.0 * probabilities[class], class, names[class]);
        }
    }
    Ok(())
}

/// What `run` checks of its input before the model sees it: a NaN or infinity (written through
/// to every feature and logit, unsaid: seen), and values no normalisation gives, pixels in
/// 0..255 (normalised with ImageNet's mean and std they lie within about -2.2..2.7).
fn check_normalised(input: &Path, images: &Tensor) -> Result<()> {
    let values = images.flatten_all()?.to_vec1::<f32>()?;
    let per_image = values.len() / images.dim(0)?.max(1);
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: 'input' holds {} (image {}, value {} of {per_image}); every value must be a number",
            input.display(),
            values[at],
            at / per_image,
            at % per_image
        );
    }
    let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if largest > 20.0 {
        eprintln!(
            "warning: {}: 'input' reaches {largest}, which no normalisation gives: pixels in 0..255? The backbones take (pixel / 255 - mean) / std, with the model's mean and std (`medxfer-zoo inspect`)",
            input.display()
        );
    }
    Ok(())
}

fn run_model(entry: &ModelEntry, weights: Option<&Path>, input: &Path, output: &Path, num_classes: Option<usize>) -> Result<()> {
    // The outputs would replace the weights or the inputs they were computed from.
    for (option, given) in [("--weights", weights), ("--input", Some(input))] {
        if let Some(given) = given.filter(|given| medxfer_durable::is_same_file(given, output)) {
            bail!("--output {} is the {option} file: writing there would replace it; give another --output", given.display());
        }
    }
    let device = Device::Cpu;
    let path = weights_path(entry, weights)?;
    let model = Backbone::load(&entry.name, &entry.architecture, num_classes.unwrap_or(entry.num_classes), &path, &device)?;
    let tensors: HashMap<String, Tensor> = read_checkpoint(input, model.params())?.into_iter().collect();
    let Some(images) = tensors.get("input") else {
        bail!("{}: no tensor named 'input' (B x 3 x H x W, f32, normalised)", input.display());
    };
    if images.rank() != 4 || images.dim(1)? != 3 {
        bail!("{}: 'input' has shape {:?}; the backbones take B x 3 x H x W (RGB images, normalised)", input.display(), images.dims());
    }
    let images = images.to_dtype(candle_core::DType::F32)?;
    check_normalised(input, &images)?;
    let (features, logits) = model.features_and_logits(&images, false)?;
    let outputs = HashMap::from([("features".to_string(), features), ("logits".to_string(), logits)]);
    let pending = medxfer_durable::PendingFile::new(output)?;
    candle_core::safetensors::save(&outputs, pending.path()).with_context(|| format!("cannot write {}", output.display()))?;
    pending.commit()?;
    println!("{}: features {:?}, logits {:?}", output.display(), outputs["features"].dims(), outputs["logits"].dims());
    Ok(())
}
