//! The data benchmark: decode + resize throughput from JPEG files (building the image cache),
//! and batch throughput from the cache (eval and train transforms), images/s, beside the
//! reference's PIL + torchvision DataLoader doing the same work on the same cores.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use medxfer_data::{
    Augment, Entry, ImageCache, LoaderConfig, Part, batches,
    transform::{Normalization, TrainTransform},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::machine;
use super::measurement::{Measurement, Unit};

#[derive(Debug)]
pub struct Settings {
    pub n: usize,
    pub width: u32,
    pub height: u32,
    pub batch: usize,
    /// Measurements of each side; the table shows the median.
    pub repeats: usize,
    pub python: Option<PathBuf>,
    pub out: PathBuf,
}

/// Dermoscopy-like JPEGs: smooth shading, a dark blob, noise (compresses like a photograph).
fn write_images(dir: &Path, settings: &Settings) -> Result<Vec<Entry>> {
    std::fs::create_dir_all(dir)?;
    let mut entries = Vec::new();
    for i in 0..settings.n {
        let name = format!("img_{i:05}.jpg");
        let path = dir.join(&name);
        if !path.exists() {
            let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
            let (cx, cy, radius) = (rng.random_range(0.3..0.7), rng.random_range(0.3..0.7), rng.random_range(0.1..0.3));
            let (w, h) = (settings.width, settings.height);
            let image = image::RgbImage::from_fn(w, h, |x, y| {
                let (u, v) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
                let d = ((u - cx).powi(2) + (v - cy).powi(2)).sqrt();
                let shade = if d < radius { 0.35 } else { 1.0 };
                let noise: f64 = rng.random_range(-12.0..12.0);
                let channel = |base: f64| (base * shade + noise).clamp(0.0, 255.0) as u8;
                image::Rgb([channel(200.0 - 40.0 * v), channel(150.0 + 30.0 * u), channel(140.0)])
            });
            medxfer_durable::write_atomic_with(&path, |writer| {
                image.write_to(writer, image::ImageFormat::Jpeg).map_err(std::io::Error::other)
            })?;
        }
        entries.push(Entry { path: name, label: (i % 2) as u32, group: i.to_string(), split: Part::Train, frame: None });
    }
    Ok(entries)
}

pub fn run(settings: &Settings) -> Result<Vec<Measurement>> {
    let images_dir = settings.out.join("data-images");
    let entries = write_images(&images_dir, settings)?;
    let cores = machine::cores();
    let load_before = machine::load_average();

    let cache_dir = settings.out.join("data-cache");
    let labels = Arc::new(entries.iter().map(|e| e.label).collect::<Vec<u32>>());
    let normalization = Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, false);
    // One measurement of ours: decode + resize (a fresh cache build), then eval and train batches
    // from the cache.
    let ours_once = || -> Result<[f64; 3]> {
        let _ = std::fs::remove_dir_all(&cache_dir);
        let start = Instant::now();
        let cache = Arc::new(ImageCache::open_or_build(&cache_dir, "bench", &images_dir, &entries, 256, false)?);
        let decode = entries.len() as f64 / start.elapsed().as_secs_f64();
        let pass = |augment: Augment| -> Result<f64> {
            let config = LoaderConfig {
                batch_size: settings.batch,
                order: medxfer_data::Order::Shuffled,
                seed: 0,
                epoch: 0,
                augment,
                normalization,
            };
            // One warm pass (page cache), then the timed one.
            for batch in batches(cache.clone(), labels.clone(), config)? {
                batch?;
            }
            let start = Instant::now();
            let mut count = 0;
            for batch in batches(cache.clone(), labels.clone(), LoaderConfig { epoch: 1, ..config })? {
                count += batch?.indices.len();
            }
            Ok(count as f64 / start.elapsed().as_secs_f64())
        };
        Ok([decode, pass(Augment::Eval { crop: 224 })?, pass(Augment::Train(TrainTransform::default()))?])
    };
    let theirs_once = |python: &Path| -> Result<Value> {
        eprintln!("PIL + torchvision ...");
        let output = Command::new(python)
            .arg(super::python_env::workspace("python/bench_data.py"))
            .arg(&images_dir)
            .args(["--workers", &cores.to_string(), "--batch", &settings.batch.to_string()])
            .output()
            .with_context(|| format!("cannot run the Python side ({})", python.display()))?;
        if !output.status.success() {
            bail!("the Python side failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let mut ours_runs: [Vec<f64>; 3] = Default::default();
    let mut their_runs: [Vec<f64>; 3] = Default::default();
    for _ in 0..settings.repeats.max(1) {
        for (runs, value) in ours_runs.iter_mut().zip(ours_once()?) {
            runs.push(value);
        }
        if let Some(python) = &settings.python {
            let theirs = theirs_once(python)?;
            for (runs, key) in their_runs.iter_mut().zip(["decode_resize", "eval", "train"]) {
                runs.push(theirs[key].as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    let median = |runs: &[f64]| super::measurement::median(runs);
    let (decode, eval, train) = (median(&ours_runs[0]), median(&ours_runs[1]), median(&ours_runs[2]));
    let theirs: Option<Value> = settings
        .python
        .as_ref()
        .map(|_| json!({"decode_resize": median(&their_runs[0]), "eval": median(&their_runs[1]), "train": median(&their_runs[2])}));
    let theirs_of = |key: &str| theirs.as_ref().and_then(|t| t[key].as_f64());
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let ratio = |ours: f64, theirs: Option<f64>| theirs.map_or("-".to_string(), |t| format!("{:.1}x", ours / t));
    let mut table = format!(
        "# Data benchmark\n\n{} JPEGs of {}x{}, batch {}, {} ({} cores, both sides use all of them; load average {} before, {} after).\n\n",
        settings.n,
        settings.width,
        settings.height,
        settings.batch,
        machine::cpu_model(),
        cores,
        load_before,
        machine::load_average()
    );
    table.push_str("| work | medxfer images/s | per core | PIL+torchvision images/s | ratio |\n|---|---:|---:|---:|---:|\n");
    let rows = [
        ("decode + Resize(256) from JPEG (cache build vs DataLoader)", decode, theirs_of("decode_resize")),
        ("eval batches: ours from the cache, theirs from JPEG", eval, theirs_of("eval")),
        ("train batches: ours from the cache, theirs from JPEG", train, theirs_of("train")),
    ];
    for (work, ours, theirs) in rows {
        table.push_str(&format!("| {work} | {ours:.0} | {:.0} | {} | {} |\n", ours / cores as f64, cell(theirs), ratio(ours, theirs)));
    }
    std::fs::create_dir_all(&settings.out)?;
    medxfer_durable::write_atomic(&settings.out.join("data.md"), table.as_bytes())?;
    println!("{table}");
    let cases = ["decode + Resize(256) from JPEG", "eval batches (ours from the cache)", "train batches (ours from the cache)"];
    Ok(cases
        .iter()
        .enumerate()
        .map(|(i, case)| Measurement {
            area: "data",
            case: format!("{case}, {} images of {}x{}", settings.n, settings.width, settings.height),
            unit: Unit::ImagesPerSecond,
            ours: ours_runs[i].clone(),
            theirs: settings.python.as_ref().map(|_| their_runs[i].clone()),
        })
        .collect())
}
