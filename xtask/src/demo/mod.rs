//! `cargo xtask reproduce --demo`: everything the study needs, made here — a synthetic source
//! set, ten small backbones pretrained on it (cached), and the six datasets as medxfer-data's
//! replicas of their real layouts painted with learnable class signals — so the real pipeline
//! (loaders, splits, extraction, scores, searches, report) runs on any laptop. Settings live in
//! xtask/demo/demo.toml, the backbones in xtask/demo/models/.

pub mod paint;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use medxfer_data::{Catalog, Entry, Normalization, Part, synth};
use medxfer_train::{BEST_FILE, EpochRecord, RunData, RunSettings, SplitData, TrainingOptions, fine_tune};
use medxfer_zoo::{Backbone, ModelEntry, Registry};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Deserialize;

use paint::{Shift, SourcePainter, TaskKind, TaskPainter};

/// xtask/demo/demo.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub source: SourceConfig,
    pub targets: TargetConfig,
    pub search: SearchConfig,
    /// Source epochs per backbone.
    pub budgets: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub train_per_class: usize,
    pub val_per_class: usize,
    pub image_size: u32,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub per_class: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    pub trials: usize,
    pub epochs: usize,
    pub batch: usize,
    pub resize: u32,
    pub crop: u32,
}

/// xtask/demo/.
pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo")
}

impl DemoConfig {
    pub fn load() -> Result<Self> {
        let path = demo_dir().join("demo.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid demo configuration", path.display()))
    }
}

/// The demo's registry (xtask/demo/models/).
pub fn registry() -> Result<Registry> {
    Ok(Registry::load(&demo_dir().join("models"))?)
}

/// Where the demo keeps what it makes once: `MEDXFER_CACHE`, else the XDG cache folder
/// (`XDG_CACHE_HOME`, which clusters point at scratch space, else ~/.cache) under medxfer/;
/// then demo/.
pub fn default_cache() -> PathBuf {
    cache_under(|name| std::env::var_os(name)).join("demo")
}

/// The medxfer cache folder, from the environment `var` reads.
fn cache_under(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let set = |name: &str| var(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    set("MEDXFER_CACHE")
        .or_else(|| set("XDG_CACHE_HOME").map(|cache| cache.join("medxfer")))
        .or_else(|| set("HOME").map(|home| home.join(".cache/medxfer")))
        .unwrap_or_else(|| PathBuf::from(".cache/medxfer"))
}

/// The six datasets' replicas under `data` (DATA/<dataset>), written once.
pub fn write_datasets(config: &DemoConfig, data: &Path) -> Result<()> {
    let catalog = Catalog::load_default()?;
    let painters = [
        ("isic2019", TaskKind::Skin, Shift::None),
        ("pad-ufes-20", TaskKind::Skin, Shift::Colour),
        ("breakhis", TaskKind::Breast, Shift::None),
        ("bach", TaskKind::Breast, Shift::ContrastBlur),
        ("brain-tumor-kaggle", TaskKind::Brain, Shift::None),
        ("nins", TaskKind::Brain, Shift::Noise),
    ];
    for (i, (name, task, shift)) in painters.into_iter().enumerate() {
        let spec = catalog.dataset(name)?;
        let painter = TaskPainter { task, shift };
        write_once(&data.join(name), |dir| {
            Ok(synth::synthesize_painted(spec, dir, config.targets.per_class, config.targets.seed + i as u64, &painter).map(|_| ())?)
        })?;
    }
    Ok(())
}

/// Makes `dir` with `fill` unless it exists: filled in a folder of this process's own, then
/// renamed into place, so concurrent runs (shards) never see a half-written folder.
fn write_once(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    medxfer_durable::create_dir_atomic(dir, fill)?;
    Ok(())
}

/// A pretraining lock not refreshed for this long is taken over (its holder on another host
/// died); on this host a dead holder's lock is taken over at once.
const PRETRAINING_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// The pretrained weights of `entries` in `cache`/weights/, pretraining those not there yet.
/// Returns the weights folder.
pub fn pretrained_weights(config: &DemoConfig, entries: &[ModelEntry], cache: &Path) -> Result<PathBuf> {
    let weights = cache.join("weights");
    let missing: Vec<&ModelEntry> = entries.iter().filter(|e| !weights.join(format!("{}.safetensors", e.name)).exists()).collect();
    if missing.is_empty() {
        return Ok(weights);
    }
    let source = source_data(config, &cache.join("source"))?;
    std::fs::create_dir_all(&weights)?;
    for entry in missing {
        let Some(&epochs) = config.budgets.get(&entry.name) else {
            bail!("xtask/demo/demo.toml gives no pretraining budget for {}", entry.name);
        };
        // One process pretrains each backbone, as one takes each trial: shards that start
        // together on an empty cache wait for it instead of all pretraining it.
        let target = weights.join(format!("{}.safetensors", entry.name));
        let lock_path = cache.join("pretraining").join(format!("{}.lock", entry.name));
        let mut waited = false;
        let _lock = loop {
            if target.exists() {
                break None;
            }
            match medxfer_durable::Claim::take(&lock_path, PRETRAINING_STALE_AFTER)? {
                Some(lock) if !target.exists() => break Some(lock),
                Some(_) => break None,
                None => {
                    if !waited {
                        eprintln!("demo: another process is pretraining {}; waiting for it ({})", entry.name, lock_path.display());
                        waited = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
        };
        if target.exists() {
            continue;
        }
        let start = std::time::Instant::now();
        // Always on the CPU: the cached backbones are then the same bytes whichever device runs
        // the study (a GPU's sums round differently), and CPU runs stay bit-reproducible.
        let model = Backbone::new(&entry.name, &entry.architecture, SourcePainter::CLASSES as usize, &Device::Cpu)?;
        initialise(&model, config.source.seed)?;
        let options = TrainingOptions {
            epochs,
            batch_size: config.source.batch,
            seed: config.source.seed,
            crop: config.search.crop,
            ..TrainingOptions::reference()
        };
        let settings = RunSettings {
            learning_rate: config.source.learning_rate,
            weight_decay: config.source.weight_decay,
            ..RunSettings::from_options(&options, Normalization::study(entry.preprocessing.mean, entry.preprocessing.std, false))
        };
        let run = cache.join("pretraining").join(&entry.name);
        let outcome = fine_tune(&model, &source, &settings, &run, &mut |_: &EpochRecord| {})?;
        let best = run.join(BEST_FILE);
        let bytes = std::fs::read(&best).with_context(|| format!("cannot read {}", best.display()))?;
        medxfer_durable::write_atomic(&target, &bytes)?;
        eprintln!(
            "demo: pretrained {} for {epochs} source epoch(s): source val accuracy {:.3} ({:.1} s)",
            entry.name,
            outcome.best.val_accuracy,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(weights)
}

/// Random initial weights: He-normal convolutions, 1/sqrt(fan-in) linear layers, N(0, 0.02)
/// position embeddings and class token, unit norm scales, zero biases. Seeded.
pub fn initialise(model: &Backbone, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in model.params().trainable_vars() {
        let dims = var.dims().to_vec();
        let count: usize = dims.iter().product();
        let values: Vec<f32> = if name.contains("pos_embed") || name.contains("cls_token") {
            sample(&mut rng, count, 0.02)?
        } else if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let gain = if dims.len() == 4 { 2.0 } else { 1.0 };
            sample(&mut rng, count, (gain / fan_in.max(1) as f64).sqrt())?
        } else if name.ends_with(".weight") {
            vec![1.0; count]
        } else {
            vec![0.0; count]
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

fn sample(rng: &mut ChaCha8Rng, count: usize, std: f64) -> Result<Vec<f32>> {
    let normal = Normal::new(0.0, std)?;
    Ok((0..count).map(|_| normal.sample(rng) as f32).collect())
}

/// The source set as PNG files under `dir` and its train/val splits, cached.
fn source_data(config: &DemoConfig, dir: &Path) -> Result<RunData> {
    let source = &config.source;
    let mut parts: [(Vec<Entry>, Part, usize); 2] =
        [(Vec::new(), Part::Train, source.train_per_class), (Vec::new(), Part::Val, source.val_per_class)];
    for (entries, part, per_class) in parts.iter_mut() {
        for class in 0..SourcePainter::CLASSES {
            for k in 0..*per_class {
                let path = format!("{}/{class:02}/{k:03}.png", part.name());
                entries.push(Entry { path, label: class, group: format!("{class}-{k}"), split: *part, frame: None });
            }
        }
    }
    let images = dir.join("images");
    write_once(&images, |partial| {
        let mut rng = ChaCha8Rng::seed_from_u64(source.seed);
        for entry in parts.iter().flat_map(|p| &p.0) {
            let image = SourcePainter::draw(entry.label, source.image_size, &mut rng);
            medxfer_durable::write_atomic_with(&partial.join(&entry.path), |writer| {
                image.write_to(writer, image::ImageFormat::Png).map_err(std::io::Error::other)
            })?;
        }
        Ok(())
    })?;
    let build = |entries: &[Entry], name: &str| -> Result<SplitData> {
        Ok(SplitData::cached(&dir.join("cache"), name, &images, entries, config.search.resize, false)?)
    };
    Ok(RunData {
        train: build(&parts[0].0, "source-train")?,
        val: build(&parts[1].0, "source-val")?,
        test: None,
        ood: None,
        classes: SourcePainter::CLASSES as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MEDXFER_CACHE first, then XDG_CACHE_HOME/medxfer, then ~/.cache/medxfer; an empty
    /// variable counts as unset (as the XDG spec says).
    #[test]
    fn the_cache_folder_follows_the_environment_in_order() {
        let with =
            |pairs: &[(&str, &str)]| cache_under(|name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).into()));
        let all = [("MEDXFER_CACHE", "/m"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(with(&all), Path::new("/m"));
        assert_eq!(with(&all[1..]), Path::new("/x/medxfer"));
        assert_eq!(with(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")]), Path::new("/h/.cache/medxfer"));
        assert_eq!(with(&[]), Path::new(".cache/medxfer"));
    }
}
