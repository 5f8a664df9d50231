//! `cargo xtask bench`: every speed claim of the project measured beside the Python stack in one
//! run, on the same machine and threads — the scores (numpy/scipy/scikit-learn), the zoo's eval
//! and training throughput (PyTorch/timm), the data path (PIL + torchvision) — written as one
//! markdown table of medians with their spread, with the machine's facts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::{bench_data, bench_scores, bench_zoo, machine};

/// What a figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Unit {
    /// Lower is better.
    Seconds,
    /// Higher is better.
    ImagesPerSecond,
}

/// One benchmark case: every run of each side.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub area: &'static str,
    pub case: String,
    pub unit: Unit,
    pub ours: Vec<f64>,
    pub theirs: Option<Vec<f64>>,
}

impl Measurement {
    /// How many times faster ours is (medians); above 1 means ours is faster.
    pub fn speedup(&self) -> Option<f64> {
        let (ours, theirs) = (median(&self.ours), median(self.theirs.as_deref()?));
        Some(match self.unit {
            Unit::Seconds => theirs / ours,
            Unit::ImagesPerSecond => ours / theirs,
        })
    }
}

/// The median (the upper one of an even count, as the workers report).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// A worker's "runs" array as numbers.
pub fn runs_of(value: &Value) -> Vec<f64> {
    value.as_array().map(|runs| runs.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

/// "median (min–max)" with the unit's precision.
fn figure(values: &[f64], unit: Unit) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let show = |v: f64| match unit {
        Unit::Seconds => format!("{v:.3}"),
        Unit::ImagesPerSecond => format!("{v:.1}"),
    };
    if values.len() == 1 { show(values[0]) } else { format!("{} ({}–{})", show(median(values)), show(low), show(high)) }
}

/// The summary table.
pub fn table(measurements: &[Measurement]) -> String {
    let mut text = String::from("| area | case | unit | medxfer | Python stack | medxfer speed-up |\n|---|---|---|---:|---:|---:|\n");
    for m in measurements {
        let unit = match m.unit {
            Unit::Seconds => "s (lower is better)",
            Unit::ImagesPerSecond => "images/s",
        };
        let _ = writeln!(
            text,
            "| {} | {} | {unit} | {} | {} | {} |",
            m.area,
            m.case,
            figure(&m.ours, m.unit),
            m.theirs.as_deref().map_or("–".into(), |t| figure(t, m.unit)),
            m.speedup().map_or("–".into(), |s| format!("{s:.2}x"))
        );
    }
    text
}

#[derive(Debug)]
pub struct Settings {
    pub quick: bool,
    pub out: PathBuf,
    pub python: Option<PathBuf>,
    pub repeats: usize,
}

/// Runs every benchmark and writes OUT/bench.md and OUT/bench.json.
pub fn run(settings: &Settings) -> Result<String> {
    std::fs::create_dir_all(&settings.out)?;
    let python = crate::python_env::interpreter(
        settings.python.as_deref(),
        Path::new("target/pybench"),
        &["python/requirements.txt", "python/requirements-torch.txt"],
    )?;
    let started = Instant::now();
    let load_before = machine::load_average();
    let repeats = settings.repeats;
    let quick = settings.quick;
    let mut measurements = Vec::new();
    eprintln!("== scores");
    measurements.extend(bench_scores::run(&bench_scores::Settings {
        n: if quick { 2000 } else { 10_000 },
        d: if quick { 512 } else { 2048 },
        classes: vec![2, 4],
        repeats,
        python: Some(python.clone()),
        no_python: false,
        keep_data: false,
        out: settings.out.clone(),
    })?);
    let zoo = |models: &[&str], batch: usize, train: bool| bench_zoo::Settings {
        batch,
        size: 224,
        repeats,
        models: Some(models.iter().map(|m| m.to_string()).collect()),
        python: Some(python.clone()),
        out: settings.out.clone(),
        train,
        device: "cpu".into(),
        tf32: false,
    };
    eprintln!("== zoo eval");
    let all: Vec<String> = medxfer_zoo::Registry::load_default()?.entries().iter().map(|e| e.name.clone()).collect();
    let eval_models: Vec<&str> = if quick { vec!["resnet18", "mobilenetv2_100"] } else { all.iter().map(String::as_str).collect() };
    measurements.extend(bench_zoo::run(&zoo(&eval_models, 32, false))?);
    eprintln!("== training step");
    measurements.extend(bench_zoo::run(&zoo(
        if quick { &["resnet18"] } else { &["resnet18", "mobilenetv2_100"] },
        if quick { 16 } else { 32 },
        true,
    ))?);
    eprintln!("== data");
    measurements.extend(bench_data::run(&bench_data::Settings {
        n: if quick { 128 } else { 512 },
        width: 600,
        height: 450,
        batch: if quick { 32 } else { 128 },
        repeats,
        python: Some(python.clone()),
        out: settings.out.clone(),
    })?);
    let report = format!(
        "# medxfer benchmarks{}\n\n{} on {}, {} cores (both sides use all of them); load average {} before, {} after; {:.0} s in all; \
         {repeats} measured runs per figure: median (min–max). Python: {} (python/requirements*.txt).\n\n{}\n\
         Details per area: scores.md, zoo.md, zoo-train.md, data.md beside this file.\n",
        if quick { " (--quick)" } else { "" },
        machine::utc_date(),
        machine::cpu_model(),
        machine::cores(),
        load_before,
        machine::load_average(),
        started.elapsed().as_secs_f64(),
        python.display(),
        table(&measurements)
    );
    std::fs::write(settings.out.join("bench.md"), &report)?;
    std::fs::write(settings.out.join("bench.json"), serde_json::to_string_pretty(&measurements)?)?;
    println!("{report}");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speedups_point_the_right_way_and_spreads_show_min_and_max() {
        let seconds =
            Measurement { area: "a", case: "c".into(), unit: Unit::Seconds, ours: vec![1.0, 3.0, 2.0], theirs: Some(vec![4.0, 4.0, 5.0]) };
        assert_eq!(seconds.speedup(), Some(2.0));
        let rate = Measurement { unit: Unit::ImagesPerSecond, ours: vec![10.0], theirs: Some(vec![20.0]), ..seconds.clone() };
        assert_eq!(rate.speedup(), Some(0.5));
        let text = table(&[seconds, rate]);
        assert!(text.contains("| a | c | s (lower is better) | 2.000 (1.000–3.000) | 4.000 (4.000–5.000) | 2.00x |"), "{text}");
        assert!(text.contains("| 10.0 | 20.0 | 0.50x |"), "{text}");
        assert_eq!(median(&[4.0, 1.0, f64::NAN, 3.0, 2.0]), 3.0);
    }
}
