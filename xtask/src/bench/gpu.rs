//! `cargo xtask bench --device cuda:N`: the GPU's rows beside PyTorch, in one run and one table.
//!
//! A training step at batch 128, 224 px, for the six backbones the GPU work is judged on, in
//! both precision settings (`f32`, the reference's arithmetic, and TF32 convolutions, PyTorch's
//! default on Ampere and Hopper); the eval forward pass (feature extraction) at batch 128 for the
//! paper's ten. Each row: images/s on both sides, the ratio, and each side's peak GPU memory.
//! Below the table, what the full protocol's fine-tuning would take on this GPU at the measured
//! training rates, on both sides. Each part runs `bench-zoo` (its own tables and JSON stay in
//! OUT/gpu-*); the combined table is OUT/bench-gpu.md.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use medxfer_train::gpu_arithmetic::{GpuArithmetic, Precision};
use serde_json::Value;

use super::{Settings, machine, zoo};

/// The backbones whose training step the GPU work is measured on.
const TRAINED: [&str; 6] = ["resnet18", "resnet50", "densenet121", "mobilenetv2_100", "efficientnet_b0", "vit_small_patch16_224"];
/// `--quick`'s.
const TRAINED_QUICK: [&str; 2] = ["resnet18", "vit_small_patch16_224"];
const BATCH: usize = 128;
const SIZE: usize = 224;

/// One part of the run: a mode and an arithmetic, over some backbones.
struct Part {
    title: &'static str,
    directory: &'static str,
    train: bool,
    precision: Precision,
}

const PARTS: [Part; 3] = [
    Part { title: "training step, f32", directory: "gpu-train-f32", train: true, precision: Precision::F32 },
    Part { title: "training step, TF32 convolutions", directory: "gpu-train-tf32", train: true, precision: Precision::Tf32 },
    Part { title: "extraction (eval forward), f32", directory: "gpu-extraction", train: false, precision: Precision::F32 },
];

/// One backbone's row of one part: `bench-zoo`'s JSON for it.
struct Row {
    part: &'static str,
    train: bool,
    precision: Precision,
    model: String,
    ours: Value,
    theirs: Option<Value>,
}

/// The study's fine-tuning: trials x epochs over each task's training images.
pub struct Protocol {
    pub trials: usize,
    pub epochs: usize,
    /// Training images summed over the tasks (the authors' split sizes).
    pub training_images: usize,
    /// Which tasks those are.
    pub tasks: Vec<String>,
}

impl Protocol {
    /// The reference's: 75 trials of 100 epochs, on the tasks of datasets/tasks.toml that give
    /// their authors' split sizes.
    pub fn reference() -> Result<Self> {
        let catalog = medxfer_data::Catalog::load_default()?;
        let sized: Vec<_> = catalog.tasks.iter().filter_map(|task| Some((task.name.clone(), task.reference_split?.train))).collect();
        Ok(Protocol {
            trials: 75,
            epochs: 100,
            training_images: sized.iter().map(|(_, train)| train).sum(),
            tasks: sized.into_iter().map(|(name, _)| name).collect(),
        })
    }

    /// Hours of training steps for one backbone at `images_per_second`.
    pub fn hours(&self, images_per_second: f64) -> f64 {
        (self.trials * self.epochs * self.training_images) as f64 / images_per_second / 3600.0
    }
}

/// Runs the GPU's parts and writes OUT/bench-gpu.md.
pub fn run(settings: &Settings) -> Result<String> {
    // Fails early, with the reason, in a build without the `cuda` feature or without the GPU;
    // the device goes at once, as each backbone runs in a process of its own.
    medxfer_train::parse_device(&settings.device)?;
    let python = super::output_and_python(settings)?;
    let ten: Vec<String> = medxfer_zoo::Registry::load_default()?.entries().iter().map(|e| e.name.clone()).collect();
    let (mut rows, mut failures) = (Vec::new(), Vec::new());
    for part in &PARTS {
        let models: Vec<String> = match (part.train, settings.quick) {
            (true, false) => TRAINED.iter().map(|m| m.to_string()).collect(),
            (true, true) => TRAINED_QUICK.iter().map(|m| m.to_string()).collect(),
            (false, false) => ten.clone(),
            (false, true) => vec!["resnet18".into(), "mobilenetv2_100".into()],
        };
        eprintln!("== {} ({} backbones)", part.title, models.len());
        let zoo_settings = zoo::Settings {
            batch: BATCH,
            size: SIZE,
            repeats: settings.repeats,
            rounds: 1,
            models: Some(models),
            python: Some(python.clone()),
            out: settings.out.join(part.directory),
            train: part.train,
            device: settings.device.clone(),
            host_batches: false,
            gpu: GpuArithmetic { precision: part.precision, ..GpuArithmetic::default() },
        };
        // A part whose backbones partly failed still gives the others' rows (its report names
        // the failures); the command fails at the end.
        if let Err(error) = zoo::run(&zoo_settings) {
            failures.push(format!("{}: {error:#}", part.title));
        }
        let written = zoo_settings.out.join(if part.train { "zoo-train-gpu.json" } else { "zoo-gpu.json" });
        let text = std::fs::read(&written).with_context(|| format!("cannot read {}", written.display()))?;
        let models: Vec<Value> = serde_json::from_slice(&text).with_context(|| format!("{}: not bench-zoo's JSON", written.display()))?;
        for model in models {
            rows.push(Row {
                part: part.title,
                train: part.train,
                precision: part.precision,
                model: model["model"].as_str().unwrap_or("?").to_string(),
                theirs: (!model["timm"].is_null()).then(|| model["timm"].clone()),
                ours: model["medxfer"].clone(),
            });
        }
    }
    let header = format!(
        "# medxfer on a GPU beside PyTorch{}\n\n{}, {} ({}), PyTorch {} with timm; batch {BATCH}, {SIZE} px; median of {} steps after {} warm-up \
         steps, each backbone in its own process, the sides one after the other. Both sides: deterministic cuDNN algorithms chosen \
         by heuristics, f32 matrix products; peak memory is the memory pool's high-water mark on our side and \
         `torch.cuda.max_memory_allocated` on PyTorch's. Per part: OUT/gpu-*/ (`bench-zoo`'s tables, with the graph and step memory).\n\n",
        if settings.quick { " (--quick)" } else { "" },
        machine::utc_date(),
        settings.device,
        machine::gpu_name(),
        rows.iter().find_map(|row| row.theirs.as_ref()?["torch"].as_str().map(str::to_string)).unwrap_or_else(|| "?".into()),
        settings.repeats,
        zoo::WARMUP_STEPS,
    );
    let report = header + &tables(&rows, &Protocol::reference()?);
    medxfer_durable::write_atomic(&settings.out.join("bench-gpu.md"), report.as_bytes())?;
    println!("{report}");
    if !failures.is_empty() {
        bail!("parts of the GPU benchmark failed (bench-gpu.md has the rest): {}", failures.join("; "));
    }
    Ok(report)
}

/// The combined table, and the protocol's GPU-hours at the training rates.
fn tables(rows: &[Row], protocol: &Protocol) -> String {
    let rate = |side: &Value| side["images_per_second"].as_f64().unwrap_or(f64::NAN);
    let gib = |side: &Value| side["peak_device_bytes"].as_f64().unwrap_or(f64::NAN) / (1u64 << 30) as f64;
    let mut out = String::from(
        "| part | backbone | medxfer images/s | PyTorch images/s | ratio | peak GiB, medxfer / PyTorch |\n|---|---|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let (ours, theirs) = (rate(&row.ours), row.theirs.as_ref().map_or(f64::NAN, rate));
        let _ = writeln!(
            out,
            "| {} | {} | {ours:.1} | {theirs:.1} | {:.2}x | {:.1} / {:.1} |",
            row.part,
            row.model,
            ours / theirs,
            gib(&row.ours),
            row.theirs.as_ref().map_or(f64::NAN, gib)
        );
    }
    let _ = writeln!(
        out,
        "\nThe full protocol's fine-tuning on this GPU at these training rates ({} trials x {} epochs over the {} training images of the \
         authors' splits of {}; training steps only, validation and evaluation add a little):\n",
        protocol.trials,
        protocol.epochs,
        protocol.training_images,
        protocol.tasks.join(", ")
    );
    for precision in [Precision::F32, Precision::Tf32] {
        let trained: Vec<&Row> = rows.iter().filter(|row| row.train && row.precision == precision).collect();
        if trained.is_empty() {
            continue;
        }
        let hours = |side: fn(&Row) -> Option<&Value>| {
            trained.iter().map(|row| side(row).map_or(f64::NAN, |v| protocol.hours(rate(v)))).sum::<f64>()
        };
        let _ = writeln!(
            out,
            "- {}: {:.0} GPU-hours for the {} backbones measured (PyTorch: {:.0}).",
            trained[0].part,
            hours(|row| Some(&row.ours)),
            trained.len(),
            hours(|row| row.theirs.as_ref())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn row(part: &'static str, train: bool, precision: Precision, model: &str, ours: f64, theirs: Option<f64>) -> Row {
        let side = |rate: f64| json!({"images_per_second": rate, "peak_device_bytes": 3.0 * (1u64 << 30) as f64, "torch": "2.11.0"});
        Row { part, train, precision, model: model.into(), ours: side(ours), theirs: theirs.map(side) }
    }

    /// Without the `cuda` feature the run stops before it makes anything (no Python
    /// environment, no output), saying how to build one with CUDA.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_how_to_get_one() {
        let out = std::env::temp_dir().join(format!("medxfer-bench-gpu-{}", std::process::id()));
        let settings = Settings { quick: true, out: out.clone(), python: None, repeats: 1, device: "cuda:0".into() };
        let error = run(&settings).unwrap_err().to_string();
        assert!(error.contains("--device cuda:0") && error.contains("--features cuda"), "{error}");
        assert!(!out.exists(), "nothing written");
    }

    /// The authors' split sizes from datasets/tasks.toml, as PROTOCOL.md lists them: 14,805 +
    /// 5,378 + 2,440 training images.
    #[test]
    fn the_reference_protocol_trains_on_the_authors_splits() {
        let protocol = Protocol::reference().unwrap();
        assert_eq!((protocol.trials, protocol.epochs, protocol.training_images), (75, 100, 22_623));
        assert_eq!(protocol.tasks, ["brain", "breast", "skin"]);
    }

    /// Ratios, memory and the GPU-hours against figures worked by hand: 75 x 100 x 22,623
    /// images at 680.9 images/s are 69.21 hours, at 879.1 53.61; two backbones add up; a
    /// part without PyTorch's side has no ratio.
    #[test]
    fn the_table_and_the_gpu_hours_are_the_measured_rates() {
        let protocol = Protocol { trials: 75, epochs: 100, training_images: 22_623, tasks: vec!["skin".into()] };
        assert!((protocol.hours(680.9) - 69.21).abs() < 0.01);
        let rows = [
            row("training step, f32", true, Precision::F32, "resnet50", 680.9, Some(879.1)),
            row("training step, f32", true, Precision::F32, "resnet18", 2236.5, Some(2717.9)),
            row("extraction (eval forward), f32", false, Precision::F32, "resnet18", 6329.4, None),
        ];
        let text = tables(&rows, &protocol);
        assert!(text.contains("| training step, f32 | resnet50 | 680.9 | 879.1 | 0.77x | 3.0 / 3.0 |"), "{text}");
        assert!(text.contains("| extraction (eval forward), f32 | resnet18 | 6329.4 | NaN | NaNx | 3.0 / NaN |"), "{text}");
        // 69.21 + 21.07 hours ours, 53.61 + 17.34 PyTorch's.
        assert!(text.contains("- training step, f32: 90 GPU-hours for the 2 backbones measured (PyTorch: 71)."), "{text}");
        assert!(!text.contains("TF32"), "no TF32 rows, no TF32 estimate: {text}");
    }
}
