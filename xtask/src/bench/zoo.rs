//! The zoo benchmark: eval throughput (images/s at batch B, S x S, f32) and peak memory of each
//! registry backbone (or any timm model name the zoo builds) in candle on the CPU, beside timm/PyTorch on the same machine and thread
//! count, each model in its own process. With `--train`, one training step instead (forward in
//! train mode, cross-entropy, backward, Nesterov SGD step). With `--device cuda:N` both sides run
//! on that GPU (a build with `--features cuda`), timed to the end of the queued GPU work.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use medxfer_train::{NesterovSgd, SgdSettings};
use medxfer_zoo::{Backbone, Registry};
use serde_json::{Value, json};

use super::machine;
use super::measurement::{Measurement, Unit, median, runs_of};
use crate::gpu_arithmetic::GpuArithmetic;

/// Untimed steps before the timed ones, on both sides. A training step's second run still
/// faults in memory the first did not use (1.3 s of the kernel zeroing pages in a resnet18
/// step on this workspace's side); from the third on, both sides run as they would for the
/// thousands of steps of a fine-tuning run.
pub const WARMUP_STEPS: usize = 2;

/// What the training table's graph columns are, in its report.
const GRAPH_COLUMNS_NOTE: &str = " Graph MiB: what one training forward pass keeps for the backward pass (activations, \
     saved statistics, logits), measured in one more, untimed step: our heap after its forward pass less before it, and \
     PyTorch's tensors saved for the backward pass (autograd's saved-tensor hooks, each storage once, parameters and \
     input not counted) with the logits.";

/// The same for the GPU's table, which also has each step's peak.
const STEP_COLUMNS_NOTE: &str = " Graph MiB: what one training forward pass keeps for the backward pass (activations, \
     saved statistics, logits); step MiB: the most the whole step held at once (the graph, gradients on their way, \
     convolution workspaces); both measured in one more, untimed step from the GPU memory in use before it (ours: the \
     memory pool's used memory and its high-water mark; PyTorch: `torch.cuda.memory_allocated` and \
     `max_memory_allocated`).";

#[derive(Debug)]
pub struct Settings {
    pub batch: usize,
    pub size: usize,
    pub repeats: usize,
    /// How many times each side runs, alternately (ours, theirs, ours, ...): on a shared
    /// machine whose speed drifts by tens of percent over minutes, the sides' runs then
    /// interleave, and each side's median is over all its runs.
    pub rounds: usize,
    pub models: Option<Vec<String>>,
    pub python: Option<PathBuf>,
    pub out: PathBuf,
    pub train: bool,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Each step's images start on the host (moved as a training loop moves them).
    pub host_batches: bool,
    /// The GPU's arithmetic (both sides).
    pub gpu: GpuArithmetic,
}

pub fn run(settings: &Settings) -> Result<Vec<Measurement>> {
    // Before any worker: each would fail on its own, backbone after backbone.
    medxfer_train::check_device_name(&settings.device)?;
    fs::create_dir_all(&settings.out)?;
    let registry = Registry::load_default()?;
    let names: Vec<String> = match &settings.models {
        Some(names) => names.clone(),
        None => registry.entries().iter().map(|e| e.name.clone()).collect(),
    };
    let load_before = machine::load_average();
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut measurements = Vec::new();
    let mut workspaces = Vec::new();
    let mut issue_times = Vec::new();
    // A backbone whose worker fails (on either side) gets a row that says so and the others
    // still run: on a lent GPU's few minutes one failure must not cost the rest of the table.
    let mut failures = Vec::new();
    for name in &names {
        let (our_rounds, their_rounds) = match rounds_of(name, settings) {
            Ok(rounds) => rounds,
            Err(error) => {
                eprintln!("{name}: {error:#}");
                rows.push(format!("| {name} | failed (below) | | | | |"));
                failures.push(format!("{name}: {error:#}"));
                continue;
            }
        };
        let ours = pooled(&our_rounds, settings.batch);
        let theirs = (!their_rounds.is_empty()).then(|| pooled(&their_rounds, settings.batch));
        rows.push(table_row(name, settings, &ours, theirs.as_ref()));
        let rates = |side: &Value| runs_of(&side["runs"]).into_iter().map(|s| settings.batch as f64 / s).collect::<Vec<f64>>();
        measurements.push(Measurement {
            area: if settings.train { "training step" } else { "zoo eval" },
            case: format!("{name}, batch {}, {}x{}", settings.batch, settings.size, settings.size),
            unit: Unit::ImagesPerSecond,
            ours: rates(&ours),
            theirs: theirs.as_ref().map(rates),
        });
        if settings.device != "cpu" {
            issue_times.push(issue_time(name, &ours, theirs.as_ref()));
        }
        let workspace = our_rounds.iter().filter_map(|round| round["largest_cudnn_workspace_bytes"].as_f64()).fold(f64::NAN, f64::max);
        if workspace.is_finite() {
            workspaces.push(format!("{name} {:.0}", workspace / 1048576.0));
        }
        // What `reproduce --rates` needs to know of the rates: training or eval, at what size, on
        // what device.
        raw.push(json!({"model": name, "train": settings.train, "batch": settings.batch, "size": settings.size, "device": settings.device, "medxfer": ours, "timm": theirs}));
    }
    let report = report_table(settings, &load_before, &rows);
    // On a GPU, part of our peak: the largest workspace a chosen cuDNN algorithm needs.
    let report = if workspaces.is_empty() {
        report
    } else {
        format!("{report}\nLargest cuDNN workspace, MiB (medxfer): {}.\n", workspaces.join(", "))
    };
    // On a GPU, whether the host keeps up: where queueing a step takes most of the step, the
    // launches (not the kernels) set the pace.
    let report = if issue_times.is_empty() {
        report
    } else {
        format!("{report}\nHost time to queue one step, of the whole step (median ms, medxfer / PyTorch): {}.\n", issue_times.join(", "))
    };
    let stem = match (settings.train, settings.device.as_str()) {
        (true, "cpu") => "zoo-train",
        (false, "cpu") => "zoo",
        (true, _) => "zoo-train-gpu",
        (false, _) => "zoo-gpu",
    };
    let report = if failures.is_empty() { report } else { format!("{report}\nFailed:\n\n- {}\n", failures.join("\n- ")) };
    medxfer_durable::write_atomic(&settings.out.join(format!("{stem}.md")), report.as_bytes())?;
    medxfer_durable::write_atomic(&settings.out.join(format!("{stem}.json")), serde_json::to_string_pretty(&raw)?.as_bytes())?;
    println!("{report}");
    if !failures.is_empty() {
        bail!("{} of {} backbones failed (the report has the others): {}", failures.len(), names.len(), failures.join("; "));
    }
    Ok(measurements)
}

/// One backbone's row of the table: each side's images per second, their ratio and peak memory,
/// and with --train the memory columns the report's header names (`report_table`).
fn table_row(name: &str, settings: &Settings, ours: &Value, theirs: Option<&Value>) -> String {
    let ours_rate = ours["images_per_second"].as_f64().unwrap_or(f64::NAN);
    let their_rate = theirs.and_then(|t| t["images_per_second"].as_f64()).unwrap_or(f64::NAN);
    // Host memory on the CPU; device memory on a GPU where the side reports it.
    let key = if settings.device == "cpu" { "peak_rss_bytes" } else { "peak_device_bytes" };
    let mib = |v: &Value| v[key].as_f64().unwrap_or(f64::NAN) / 1048576.0;
    let mut row = format!(
        "| {name} | {ours_rate:.1} | {their_rate:.1} | {:.2}x | {:.0} | {:.0} |",
        ours_rate / their_rate,
        mib(ours),
        theirs.map(mib).unwrap_or(f64::NAN)
    );
    let memory_columns: &[&str] = match (settings.train, settings.device.as_str()) {
        (false, _) => &[],
        (true, "cpu") => &["graph_bytes"],
        (true, _) => &["graph_bytes", "step_peak_bytes"],
    };
    for key in memory_columns {
        let mib = |v: &Value| v[key].as_f64().unwrap_or(f64::NAN) / 1048576.0;
        row += &format!(" {:.0} | {:.0} |", mib(ours), theirs.map(mib).unwrap_or(f64::NAN));
    }
    row
}

/// The report's heading (what was measured, how, on what machine, under what load: `load_before`
/// and now) and the table of `rows`.
fn report_table(settings: &Settings, load_before: &str, rows: &[String]) -> String {
    // A training table's memory columns: the graph on either device, and each step's peak on a GPU.
    let (memory_note, memory_header, memory_alignment) = match (settings.train, settings.device.as_str()) {
        (false, _) => ("", "", ""),
        (true, "cpu") => (GRAPH_COLUMNS_NOTE, " medxfer graph MiB | timm graph MiB |", "---:|---:|"),
        (true, _) => {
            (STEP_COLUMNS_NOTE, " medxfer graph MiB | timm graph MiB | medxfer step MiB | timm step MiB |", "---:|---:|---:|---:|")
        }
    };
    let what = format!(
        "{}{}",
        if settings.train { "Training step (train-mode forward, cross-entropy, backward, Nesterov SGD)" } else { "Eval forward" },
        match (settings.host_batches, settings.device.as_str()) {
            (false, _) => "",
            (true, "cpu") => ", each step's images taken from the host (nothing to move on the CPU)",
            (true, _) => ", each step's images moved from the host (ours: `Upload`; PyTorch: pinned, non_blocking)",
        }
    );
    format!(
        "# Zoo benchmark\n\n{}, batch {}, {}x{}, {}, {}, median of {} runs ({} rounds of {}, the sides alternating) after {} warm-up steps each. Machine: {}, {} cores (both sides use all of them). \
         Load average {} before, {} after.{}\n\n| backbone | medxfer images/s | timm images/s | ratio | medxfer peak MiB | timm peak MiB |{}\n|---|---:|---:|---:|---:|---:|{}\n{}\n",
        what,
        settings.batch,
        settings.size,
        settings.size,
        if settings.device == "cpu" {
            format!("f32 (products: {})", medxfer_train::cpu_product_library())
        } else {
            settings.gpu.describe()
        },
        if settings.device == "cpu" { "CPU".to_string() } else { format!("{} ({})", settings.device, machine::gpu_name()) },
        settings.rounds.max(1) * settings.repeats.max(1),
        settings.rounds.max(1),
        settings.repeats.max(1),
        WARMUP_STEPS,
        machine::cpu_model(),
        machine::cores(),
        load_before,
        machine::load_average(),
        memory_note,
        memory_header,
        memory_alignment,
        rows.join("\n")
    )
}

/// Each side's rounds for one backbone, alternating (ours, theirs, ours, ...).
fn rounds_of(name: &str, settings: &Settings) -> Result<(Vec<Value>, Vec<Value>)> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=settings.rounds.max(1) {
        eprintln!("{name}: medxfer (round {round}) ...");
        ours.push(worker_process(name, settings)?);
        if let Some(python) = &settings.python {
            eprintln!("{name}: timm (round {round}) ...");
            theirs.push(python_process(python, name, settings)?);
        }
    }
    Ok((ours, theirs))
}

/// One side's rounds as one result: every timed run, the median rate over them, the largest
/// peak memory, and the rounds as they came.
fn pooled(rounds: &[Value], batch: usize) -> Value {
    let runs: Vec<f64> = rounds.iter().flat_map(|round| runs_of(&round["runs"])).collect();
    let seconds = median(&runs);
    let issue_runs: Vec<f64> = rounds.iter().flat_map(|round| runs_of(&round["issue_runs"])).collect();
    let peak = |key: &str| rounds.iter().filter_map(|round| round[key].as_f64()).fold(f64::NAN, f64::max);
    json!({
        "seconds": seconds,
        "images_per_second": batch as f64 / seconds,
        "runs": runs,
        "issue_seconds": (!issue_runs.is_empty()).then(|| median(&issue_runs)),
        "peak_rss_bytes": peak("peak_rss_bytes"),
        "peak_device_bytes": peak("peak_device_bytes"),
        "graph_bytes": peak("graph_bytes"),
        "step_peak_bytes": peak("step_peak_bytes"),
        "rounds": rounds,
    })
}

/// One backbone's entry of the host-time line: the time to queue a step, of the whole step,
/// in ms, on each side ("-" where a side did not say).
fn issue_time(name: &str, ours: &Value, theirs: Option<&Value>) -> String {
    let ms = |side: Option<&Value>, key: &str| side.and_then(|v| v[key].as_f64()).map_or("-".to_string(), |s| format!("{:.1}", s * 1e3));
    format!(
        "{name} {} of {} / {} of {}",
        ms(Some(ours), "issue_seconds"),
        ms(Some(ours), "seconds"),
        ms(theirs, "issue_seconds"),
        ms(theirs, "seconds")
    )
}

fn worker_process(name: &str, settings: &Settings) -> Result<Value> {
    let output = Command::new(std::env::current_exe()?)
        .args([
            "bench-zoo-worker",
            name,
            "--batch",
            &settings.batch.to_string(),
            "--size",
            &settings.size.to_string(),
            "--repeats",
            &settings.repeats.to_string(),
        ])
        .args(["--device", &settings.device])
        .args(settings.train.then_some("--train"))
        .args(settings.host_batches.then_some("--host-batches"))
        .args(settings.gpu.options())
        .output()?;
    if !output.status.success() {
        bail!("the benchmark worker failed on {name}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// A worker's batches: their size, the image size, untimed steps, timed steps, and whether each
/// step's images start on the host.
pub struct Steps {
    pub batch: usize,
    pub size: usize,
    pub warmup: usize,
    pub repeats: usize,
    pub host_batches: bool,
}

/// One backbone's eval (or training-step) throughput, in this process.
pub fn worker(name: &str, steps: Steps, train: bool, device: &str, gpu: GpuArithmetic) -> Result<()> {
    let Steps { batch, size, warmup, repeats, host_batches } = steps;
    let registry = Registry::load_default()?;
    // A registry backbone, or any timm model name the zoo builds (`vit_large_patch16_224`),
    // which timm's side creates by the same name.
    let entry = match registry.get(name) {
        Ok(entry) => entry.clone(),
        Err(error) => medxfer_zoo::entry_from_timm_config(name, &json!({ "architecture": name }).to_string())
            .map_err(|_| error)
            .with_context(|| format!("{name} is neither in the registry nor a timm name the zoo builds"))?,
    };
    let entry = &entry;
    gpu.apply(device)?;
    let device = medxfer_train::parse_device(device)?;
    let mut model = Backbone::from_entry(entry, &device)?;
    // A model published without a classifier (the foundation models) trains with a fresh one, as
    // fine-tuning gives it: ImageNet's 1000 classes, as a timm model on PyTorch's side has.
    if train && model.num_classes()? == 0 {
        model.replace_head(1000, 0)?;
    }
    let classes = model.num_classes()?.max(1) as u32;
    // Random weights (zeros could meet fast paths); running variances stay positive.
    for (index, (name, var)) in model.params().trainable_vars().into_iter().enumerate() {
        let value =
            (Tensor::randn(0f32, 0.05, var.shape(), &device)? + if name.ends_with("weight") && var.rank() == 1 { 1.0 } else { 0.0 })?;
        var.set(&value).with_context(|| format!("tensor {index}"))?;
    }
    let images = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &device)?.to_dtype(DType::F32)?;
    // With host batches, each step's images come from the host as a training loop's do: the
    // next step's moved once this step's work is queued, before its result is read.
    let on_host = host_batches.then(|| images.to_device(&Device::Cpu)).transpose()?;
    let mut upload = medxfer_train::Upload::new();
    let mut next_images = match &on_host {
        Some(host) => Some(upload.to_device(host, &device)?),
        None => None,
    };
    let labels = Tensor::from_vec((0..batch as u32).map(|i| i * 37 % classes).collect::<Vec<u32>>(), batch, &device)?;
    let settings = SgdSettings { learning_rate: 1e-3, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
    let mut optimizer = NesterovSgd::new(model.params().trainable_vars(), settings);
    // One step; returns when the host had queued all of its work, before the read that waits
    // for it (on a GPU: if that is most of the step, the host's launches are the bottleneck).
    let mut step = |start: Instant| -> Result<f64> {
        let images = next_images.take().unwrap_or_else(|| images.clone());
        let mut prefetch = || -> Result<()> {
            if let Some(host) = &on_host {
                next_images = Some(upload.to_device(host, &device)?);
            }
            Ok(())
        };
        let issued = if train {
            let loss = medxfer_train::training_forward(|| {
                let (_, logits) = model.features_and_logits(&images, true)?;
                Ok(candle_nn::loss::cross_entropy(&logits, &labels)?)
            })?;
            optimizer.step(&medxfer_train::backward(&loss)?)?;
            prefetch()?;
            let issued = start.elapsed().as_secs_f64();
            loss.to_scalar::<f32>()?;
            issued
        } else {
            let (features, _) = model.features_and_logits(&images, false)?;
            let sum = features.sum_all()?;
            prefetch()?;
            let issued = start.elapsed().as_secs_f64();
            sum.to_scalar::<f32>()?;
            issued
        };
        medxfer_train::synchronize(&device)?;
        Ok(issued)
    };
    for _ in 0..warmup {
        step(Instant::now())?;
    }
    let (mut runs, mut issue_runs) = (Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        issue_runs.push(step(start)?);
        runs.push(start.elapsed().as_secs_f64());
    }
    let seconds = median(&runs);
    // The timed steps' high-water mark, read before the measuring step resets it.
    let peak_device_bytes = medxfer_train::device_memory_high_water(&device)?;
    let memory = if train { Some(step_memory(&model, &images, &labels, &mut optimizer, &device)?) } else { None };
    println!(
        "{}",
        json!({
            "seconds": seconds,
            "images_per_second": batch as f64 / seconds,
            "runs": runs,
            "issue_runs": issue_runs,
            "graph_bytes": memory.map(|m| m.graph),
            "step_peak_bytes": memory.and_then(|m| m.step_peak),
            "peak_rss_bytes": machine::peak_rss_bytes(),
            "peak_device_bytes": peak_device_bytes,
            // Part of the peak on a GPU: what the largest chosen cuDNN algorithm needs.
            "largest_cudnn_workspace_bytes": if device.is_cuda() { medxfer_train::largest_cudnn_workspace() } else { None },
        })
    );
    Ok(())
}

/// What one more, untimed training step holds, above what was held before it.
#[derive(Debug, Clone, Copy)]
struct StepMemory {
    /// What the forward pass keeps for the backward pass (the graph: activations, saved
    /// statistics, the logits): the GPU's memory in use on a GPU, the heap on the CPU, after the
    /// forward pass.
    graph: u64,
    /// The most the whole step held at once, on a GPU (the graph, the gradients on their way,
    /// convolution workspaces); none on the CPU, where faer's untouched per-thread buffers
    /// would count.
    step_peak: Option<u64>,
}

fn step_memory(model: &Backbone, images: &Tensor, labels: &Tensor, optimizer: &mut NesterovSgd, device: &Device) -> Result<StepMemory> {
    let in_use = || -> Result<u64> { Ok(medxfer_train::device_memory_in_use(device)?.unwrap_or_else(machine::live_heap_bytes)) };
    medxfer_train::reset_device_memory_high_water(device)?;
    let before = in_use()?;
    let loss = medxfer_train::training_forward(|| {
        let (_, logits) = model.features_and_logits(images, true)?;
        Ok(candle_nn::loss::cross_entropy(&logits, labels)?)
    })?;
    let graph = in_use()?.saturating_sub(before);
    optimizer.step(&medxfer_train::backward(&loss)?)?;
    medxfer_train::synchronize(device)?;
    let step_peak = medxfer_train::device_memory_high_water(device)?.map(|peak| peak.saturating_sub(before));
    Ok(StepMemory { graph, step_peak })
}

/// A registry ViT that is no timm model (the foundation models: their hub repos are their
/// authors'), as the JSON of its configuration, which the PyTorch side builds timm's
/// `VisionTransformer` from; None for the others, which timm builds by name.
fn vit_config_for_timm(name: &str) -> Result<Option<String>> {
    let registry = Registry::load_default()?;
    let Ok(entry) = registry.get(name) else { return Ok(None) };
    match &entry.architecture {
        medxfer_zoo::Architecture::Vit(config) if !entry.hub.starts_with("timm/") => Ok(Some(serde_json::to_string(config)?)),
        _ => Ok(None),
    }
}

fn python_process(python: &Path, name: &str, settings: &Settings) -> Result<Value> {
    let cores = machine::cores().to_string();
    let vit_config = vit_config_for_timm(name)?;
    let output = Command::new(python)
        .arg(super::python_env::workspace("python/bench_zoo.py"))
        .arg(name)
        .args(vit_config.iter().flat_map(|config| ["--vit-config", config.as_str()]))
        .args(["--batch", &settings.batch.to_string(), "--size", &settings.size.to_string(), "--repeats", &settings.repeats.to_string()])
        .args(["--warmup", &WARMUP_STEPS.to_string()])
        .args(["--device", &settings.device])
        .args(settings.train.then_some("--train"))
        .args(settings.host_batches.then_some("--host-batches"))
        .args(settings.gpu.options())
        .env("OMP_NUM_THREADS", &cores)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .with_context(|| format!("cannot run the PyTorch side ({})", python.display()))?;
    if !output.status.success() {
        bail!("the PyTorch side failed on {name}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The foundation ViTs go to PyTorch as their configuration (UNI's ViT-L with LayerScale,
    /// Virchow2's SwiGLU and registers); registry ViTs from timm's hub and the ConvNets by
    /// name; a name outside the registry as it is.
    #[test]
    fn foundation_vits_go_to_pytorch_as_their_configuration() {
        let config = |name: &str| vit_config_for_timm(name).unwrap().map(|json| serde_json::from_str::<Value>(&json).unwrap());
        let uni = config("uni").unwrap();
        assert_eq!((uni["embed_dim"].as_u64(), uni["depth"].as_u64(), uni["init_values"].as_f64()), (Some(1024), Some(24), Some(1e-5)));
        let virchow2 = config("virchow2").unwrap();
        assert_eq!(
            (virchow2["mlp"].as_str(), virchow2["reg_tokens"].as_u64(), virchow2["global_pool"].as_str()),
            (Some("swiglu_packed"), Some(4), Some("none"))
        );
        for by_name in ["vit_small_patch16_224", "resnet18", "convnext_tiny", "vit_large_patch16_224"] {
            assert!(config(by_name).is_none(), "{by_name} went as a configuration");
        }
    }

    /// Rounds pool into one median over all their runs, and their queueing times likewise; a
    /// side that reports no queueing time (an older PyTorch script) shows "-".
    #[test]
    fn rounds_pool_their_runs_and_queueing_times() {
        let rounds = [json!({"runs": [0.10, 0.30], "issue_runs": [0.01, 0.03]}), json!({"runs": [0.20], "issue_runs": [0.02]})];
        let ours = pooled(&rounds, 8);
        assert_eq!(ours["seconds"].as_f64(), Some(0.20));
        assert_eq!(ours["images_per_second"].as_f64(), Some(40.0));
        assert_eq!(ours["issue_seconds"].as_f64(), Some(0.02));
        let theirs = pooled(&[json!({"runs": [0.05]})], 8);
        assert!(theirs["issue_seconds"].is_null());
        assert_eq!(issue_time("resnet18", &ours, Some(&theirs)), "resnet18 20.0 of 200.0 / - of 50.0");
        assert_eq!(issue_time("resnet18", &ours, None), "resnet18 20.0 of 200.0 / - of -");
    }
}
