//! `cargo xtask bench`: every speed claim of the project measured beside the Python stack in one
//! run, on the same machine and threads — the scores (numpy/scipy/scikit-learn), the zoo's eval
//! and training throughput (PyTorch/timm), the data path (PIL + torchvision) — written as one
//! markdown table of medians with their spread, with the machine's facts.

pub mod data;
pub mod gpu;
pub mod machine;
pub mod measurement;
pub mod python_env;
pub mod scores;
pub mod zoo;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use measurement::table;

/// The ConvNets beyond the paper's ten with rows of their own (issue 17's families), by timm
/// name.
const BEYOND_EVAL: [&str; 6] =
    ["convnext_tiny", "resnet50d", "resnext50_32x4d", "regnety_016", "tf_efficientnetv2_s", "swin_tiny_patch4_window7_224"];
const BEYOND_TRAIN: [&str; 2] = ["convnext_tiny", "resnet50d"];

/// `cargo xtask bench`'s options.
#[derive(Debug)]
pub struct Settings {
    pub quick: bool,
    pub out: PathBuf,
    pub python: Option<PathBuf>,
    pub repeats: usize,
    /// `cpu` (every CPU benchmark) or `cuda:N` (the GPU's rows, `gpu.rs`).
    pub device: String,
}

/// Runs every benchmark and writes OUT/bench.md and OUT/bench.json; on a GPU, its rows
/// (OUT/bench-gpu.md).
pub fn run(settings: &Settings) -> Result<String> {
    if settings.device != "cpu" {
        return gpu::run(settings);
    }
    let python = output_and_python(settings)?;
    let started = Instant::now();
    let load_before = machine::load_average();
    let repeats = settings.repeats;
    let quick = settings.quick;
    let mut measurements = Vec::new();
    eprintln!("== scores");
    measurements.extend(scores::run(&scores::Settings {
        n: if quick { 2000 } else { 10_000 },
        d: if quick { 512 } else { 2048 },
        classes: vec![2, 4],
        repeats,
        python: Some(python.clone()),
        no_python: false,
        keep_data: false,
        out: settings.out.clone(),
    })?);
    let zoo = |models: &[&str], batch: usize, train: bool| zoo::Settings {
        batch,
        size: 224,
        repeats,
        rounds: 1,
        models: Some(models.iter().map(|m| m.to_string()).collect()),
        python: Some(python.clone()),
        out: settings.out.clone(),
        train,
        device: "cpu".into(),
        host_batches: false,
        gpu: crate::gpu_arithmetic::GpuArithmetic::default(),
    };
    eprintln!("== zoo eval");
    let all: Vec<String> = medxfer_zoo::Registry::load_default()?.entries().iter().map(|e| e.name.clone()).collect();
    let eval_models: Vec<&str> =
        if quick { vec!["resnet18", "mobilenetv2_100"] } else { all.iter().map(String::as_str).chain(BEYOND_EVAL).collect() };
    measurements.extend(zoo::run(&zoo(&eval_models, 32, false))?);
    eprintln!("== training step");
    let train_models: Vec<&str> =
        if quick { vec!["resnet18"] } else { ["resnet18", "mobilenetv2_100"].into_iter().chain(BEYOND_TRAIN).collect() };
    measurements.extend(zoo::run(&zoo(&train_models, if quick { 16 } else { 32 }, true))?);
    eprintln!("== data");
    measurements.extend(data::run(&data::Settings {
        n: if quick { 128 } else { 512 },
        width: 600,
        height: 450,
        batch: if quick { 32 } else { 128 },
        repeats,
        python: Some(python.clone()),
        out: settings.out.clone(),
    })?);
    let report = format!(
        "# medxfer benchmarks{}\n\n{} on {}, {} cores (both sides use all of them; medxfer's CPU products: {}); load average {} before, {} after; {:.0} s in all; \
         {repeats} measured runs per figure: median (min–max). Python: {} (python/requirements*.txt).\n\n{}\n\
         Details per area: scores.md, zoo.md, zoo-train.md, data.md beside this file.\n",
        if quick { " (--quick)" } else { "" },
        machine::utc_date(),
        machine::cpu_model(),
        machine::cores(),
        medxfer_train::cpu_product_library(),
        load_before,
        machine::load_average(),
        started.elapsed().as_secs_f64(),
        python.display(),
        table(&measurements)
    );
    medxfer_durable::write_atomic(&settings.out.join("bench.md"), report.as_bytes())?;
    medxfer_durable::write_atomic(&settings.out.join("bench.json"), serde_json::to_string_pretty(&measurements)?.as_bytes())?;
    println!("{report}");
    Ok(report)
}

/// Makes OUT, and gives the Python side's interpreter: `--python`, or target/pybench made from
/// python/requirements*.txt the first time.
fn output_and_python(settings: &Settings) -> Result<PathBuf> {
    std::fs::create_dir_all(&settings.out)?;
    python_env::interpreter(
        settings.python.as_deref(),
        Path::new("target/pybench"),
        &["python/requirements.txt", "python/requirements-torch.txt"],
    )
}
