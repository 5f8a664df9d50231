//! The scores benchmark: synthetic features shaped like a CNN's (ReLU of a 64-dimensional
//! class-structured latent, D = 2048) with 1000-class source probabilities; our seven scores
//! (each alone and all together), the newer ones each alone and each given the analysis that
//! `score_all` shares (its cost in a call for every score), every score together, the arithmetic
//! floor (one D x D Gram, two symmetric eigendecompositions, N-LEEP's mixture fit), and the
//! Python reference, in one run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, Side};
use medxfer_scores::{GaussianMixture, GmmConfig, GmmStart, Metric, ScoreInput, SharedAnalysis, read_feature_file, score_all};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

use super::machine;
use super::measurement::{Measurement, Unit, runs_of};

const LATENT: usize = 64;
const SOURCE_CLASSES: usize = 1000;
/// The rows of the set-level scores' per-model terms, their cost per model.
const NCTI_TERMS: &str = "ncti_terms";
const ETRAN_TERMS: &str = "etran_terms";

#[derive(Debug)]
pub struct Settings {
    pub n: usize,
    pub d: usize,
    pub classes: Vec<usize>,
    pub repeats: usize,
    pub python: Option<PathBuf>,
    pub no_python: bool,
    pub keep_data: bool,
    pub out: PathBuf,
}

pub fn run(settings: &Settings) -> Result<Vec<Measurement>> {
    check_sizes(settings)?;
    fs::create_dir_all(&settings.out).with_context(|| format!("cannot create {}", settings.out.display()))?;
    let python = if settings.no_python {
        None
    } else {
        Some(super::python_env::interpreter(settings.python.as_deref(), Path::new("target/pyref"), &["python/requirements.txt"])?)
    };
    let load_before = machine::load_average();
    let started = Instant::now();
    let mut sections = Vec::new();
    let mut raw = Vec::new();
    let mut measurements = Vec::new();
    for &classes in &settings.classes {
        let file = settings.out.join(format!("features_n{}_d{}_c{classes}.safetensors", settings.n, settings.d));
        eprintln!("generating {} ...", file.display());
        write_synthetic(&file, settings.n, settings.d, classes, 2023 + classes as u64)?;
        eprintln!("medxfer: memory run ...");
        let memory = worker_process(&file, 1, true)?;
        eprintln!("medxfer: timing runs ...");
        let ours = worker_process(&file, settings.repeats, false)?;
        let theirs = match &python {
            Some(python) => {
                eprintln!("python reference: timing runs ...");
                Some(python_process(python, &file, settings.repeats)?)
            }
            None => None,
        };
        sections.push(table(settings, classes, &ours, &memory, theirs.as_ref()));
        // The reference's suite is its seven scores one after the other, repeat by repeat.
        let their_runs = theirs.as_ref().map(|t| {
            (0..settings.repeats.max(1))
                .map(|r| Metric::ALL.iter().map(|m| t["metrics"][m.as_str()]["runs"][r].as_f64().unwrap_or(f64::NAN)).sum())
                .collect()
        });
        measurements.push(Measurement {
            area: "scores",
            case: format!("all seven, N={}, D={}, C={classes}", settings.n, settings.d),
            unit: Unit::Seconds,
            ours: runs_of(&ours["suite_runs"]),
            theirs: their_runs,
        });
        // The newer scores, one row each given the shared analysis (their cost in a call for
        // every score) and one alone; then every score together (`bench` shows them beside the
        // suite).
        for name in newer_rows() {
            for (suffix, key) in [("with the shared analysis", "shared_runs"), ("alone", "runs")] {
                measurements.push(Measurement {
                    area: "scores",
                    case: format!("{name} (beyond the paper; {suffix}), N={}, D={}, C={classes}", settings.n, settings.d),
                    unit: Unit::Seconds,
                    ours: runs_of(&ours["metrics"][name][key]),
                    theirs: theirs.as_ref().map(|t| runs_of(&t["metrics"][name]["runs"])),
                });
            }
        }
        let every_python = theirs.as_ref().map(|t| {
            (0..settings.repeats.max(1))
                .map(|r| every_row().map(|name| t["metrics"][name]["runs"][r].as_f64().unwrap_or(f64::NAN)).sum())
                .collect()
        });
        measurements.push(Measurement {
            area: "scores",
            case: format!(
                "every score ({} and both set-level scores' terms), N={}, D={}, C={classes}",
                Metric::per_model().count(),
                settings.n,
                settings.d
            ),
            unit: Unit::Seconds,
            ours: runs_of(&ours["every_runs"]),
            theirs: every_python,
        });
        raw.push(json!({"classes": classes, "ours": ours, "memory": memory, "python": theirs}));
        if !settings.keep_data {
            fs::remove_file(&file).ok();
        }
    }
    let header = format!(
        "# Scores benchmark\n\nN = {}, D = {}, {} source classes, median of {} runs. Machine: {}, {} cores (both sides use all of them). \
         Load average {} before, {} after; {:.0} s in all.\n",
        settings.n,
        settings.d,
        SOURCE_CLASSES,
        settings.repeats,
        machine::cpu_model(),
        machine::cores(),
        load_before,
        machine::load_average(),
        started.elapsed().as_secs_f64()
    );
    let report = format!("{header}\n{}", sections.join("\n"));
    medxfer_durable::write_atomic(&settings.out.join("scores.md"), report.as_bytes())?;
    medxfer_durable::write_atomic(&settings.out.join("scores.json"), serde_json::to_string_pretty(&raw)?.as_bytes())?;
    println!("{report}");
    Ok(measurements)
}

fn seconds(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

fn table(settings: &Settings, classes: usize, ours: &Value, memory: &Value, theirs: Option<&Value>) -> String {
    let mut text = format!(
        "## C = {classes}\n\n| score | medxfer (s) | Python reference (s) | speed-up | medxfer value | reference value |\n|---|---:|---:|---:|---:|---:|\n"
    );
    // A metric's row (its label, our seconds and value beside the reference's) and the
    // reference's seconds.
    let row = |name: &str, label: &str| {
        let mine = seconds(&ours["metrics"][name]["seconds"]);
        let value = seconds(&ours["metrics"][name]["value"]);
        let (reference, reference_value) = theirs
            .map(|t| (seconds(&t["metrics"][name]["seconds"]), seconds(&t["metrics"][name]["value"])))
            .unwrap_or((f64::NAN, f64::NAN));
        (format!("| {label} | {mine:.3} | {reference:.3} | {:.1}x | {value:.6e} | {reference_value:.6e} |\n", reference / mine), reference)
    };
    let mut python_total = 0.0;
    for metric in Metric::ALL {
        let (line, reference) = row(metric.as_str(), metric.as_str());
        python_total += reference;
        text += &line;
    }
    let suite = seconds(&ours["suite_seconds"]);
    let alone: f64 = Metric::ALL.iter().map(|m| seconds(&ours["metrics"][m.as_str()]["seconds"])).sum();
    text += &format!(
        "| **all seven** | **{suite:.3}** (score_all; {alone:.3} one by one) | **{python_total:.3}** | **{:.1}x** | | |\n",
        python_total / suite
    );
    // The newer scores beside their reference restatements: given the analysis `score_all`
    // shares (their cost in a call for every score), and alone.
    text += "\n| newer score (beyond the paper) | medxfer, shared analysis (s) | medxfer alone (s) | Python reference (s) | speed-up shared | speed-up alone | medxfer value | reference value |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for name in newer_rows() {
        let metric = &ours["metrics"][name];
        let (shared, alone, value) = (seconds(&metric["shared_seconds"]), seconds(&metric["seconds"]), seconds(&metric["value"]));
        let (reference, reference_value) = theirs
            .map(|t| (seconds(&t["metrics"][name]["seconds"]), seconds(&t["metrics"][name]["value"])))
            .unwrap_or((f64::NAN, f64::NAN));
        text += &format!(
            "| {name} | {shared:.3} | {alone:.3} | {reference:.3} | {:.1}x | {:.1}x | {value:.6e} | {reference_value:.6e} |\n",
            reference / shared,
            reference / alone
        );
    }
    let every = seconds(&ours["every_seconds"]);
    let every_python: f64 = theirs.map(|t| every_row().map(|name| seconds(&t["metrics"][name]["seconds"])).sum()).unwrap_or(f64::NAN);
    text += &format!(
        "| **every score** ({} per model, ETran's and NCTI's terms) | **{every:.3}** (one analysis, {:.3} of it shared) | | **{every_python:.3}** | **{:.1}x** | | | |\n\n\
         (ncti_terms' value is seli, etran_terms' the LDA term. The shared analysis is the centred Gram as the sum of its classes' shares, its \
         eigendecomposition and the class statistics.)\n\n",
        Metric::per_model().count(),
        seconds(&ours["shared_analysis_seconds"]),
        every_python / every
    );
    let floor = &ours["floor"];
    let floor_total = seconds(&floor["total"]);
    let feature_bytes = (settings.n * settings.d * 8) as f64;
    let peak = seconds(&memory["peak_rss_bytes"]);
    text += &format!(
        "Arithmetic floor: {floor_total:.3} s = centred Gram {:.3} s + eigendecomposition of the covariance {:.3} s + of F'F {:.3} s + \
         N-LEEP's mixture fit {:.3} s ({} PCA dims, {} components). medxfer's suite is {:.2}x the floor.\n\n\
         Peak memory of `score_all` (loading the f32 file included): {:.0} MiB = {:.2}x the f64 feature matrix ({:.0} MiB).",
        seconds(&floor["gram"]),
        seconds(&floor["eigen_covariance"]),
        seconds(&floor["eigen_gram"]),
        seconds(&floor["mixture"]),
        floor["pca_dims"],
        floor["components"],
        suite / floor_total,
        peak / 1048576.0,
        peak / feature_bytes,
        feature_bytes / 1048576.0
    );
    if let Some(t) = theirs {
        text += &format!(" Python reference peak: {:.0} MiB.", seconds(&t["peak_rss_bytes"]) / 1048576.0);
        text += &format!("\n\nPython BLAS: {}", t["blas"]);
    }
    text + "\n"
}

/// Writes N x D f32 features, labels and 1000-class f32 probabilities, deterministically.
fn write_synthetic(path: &Path, n: usize, d: usize, classes: usize, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = || -> f64 { rng.sample(StandardNormal) };
    let class_means = Mat::from_fn(classes, LATENT, |_, _| normal() * 0.6);
    let mixing = Mat::from_fn(LATENT, d, |_, _| normal() / (LATENT as f64).sqrt());
    let bias: Vec<f64> = (0..d).map(|_| normal() * 0.5).collect();
    let labels: Vec<i64> = (0..n).map(|i| ((i * 7919) % n % classes) as i64).collect();
    let latent = Mat::from_fn(n, LATENT, |i, j| class_means[(labels[i] as usize, j)] + normal());
    let pre = &latent * &mixing;
    let mut feature_bytes = Vec::with_capacity(n * d * 4);
    for i in 0..n {
        for j in 0..d {
            let value = (pre[(i, j)] + bias[j] + 0.1 * normal()).max(0.0) as f32;
            feature_bytes.extend_from_slice(&value.to_le_bytes());
        }
    }
    let mut prob_bytes = Vec::with_capacity(n * SOURCE_CLASSES * 4);
    for &label in &labels {
        let favoured = (label as usize * 37) % SOURCE_CLASSES;
        let logits: Vec<f64> = (0..SOURCE_CLASSES).map(|z| normal() * 1.5 + if z % 50 == favoured % 50 { 1.0 } else { 0.0 }).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        for l in logits {
            prob_bytes.extend_from_slice(&(((l - max).exp() / total) as f32).to_le_bytes());
        }
    }
    let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let views = vec![
        ("features", TensorView::new(Dtype::F32, vec![n, d], &feature_bytes)?),
        ("labels", TensorView::new(Dtype::I64, vec![n], &label_bytes)?),
        ("probs", TensorView::new(Dtype::F32, vec![n, SOURCE_CLASSES], &prob_bytes)?),
    ];
    medxfer_durable::write_atomic(path, &safetensors::serialize(views, None)?)?;
    Ok(())
}

/// Every score is timed, so the synthetic features must be large enough for each: NCTI's PCA to
/// 64 components, ETran's energy term (200 samples), N-LEEP's mixture (5 components per class).
/// Too small, the worker failed on the first such score after the others' timings.
fn check_sizes(settings: &Settings) -> Result<()> {
    if let Some(&classes) = settings.classes.iter().find(|&&c| c < 2) {
        bail!("--classes {classes}: a score needs at least 2 classes");
    }
    let most_classes = settings.classes.iter().copied().max().unwrap_or(2);
    let needed_n = (5 * most_classes).max(200);
    if settings.n < needed_n || settings.d < 64 {
        bail!(
            "--n {} --d {}: every score is timed, and NCTI needs 64 features, ETran 200 samples and N-LEEP 5 per class ({most_classes} \
             classes); give --n {needed_n} --d 64 or more",
            settings.n,
            settings.d
        );
    }
    Ok(())
}

fn worker_process(file: &Path, repeats: usize, memory_only: bool) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.args(["bench-scores-worker", &file.to_string_lossy(), "--repeats", &repeats.to_string()]);
    if memory_only {
        command.arg("--memory-only");
    }
    let output = command.output()?;
    if !output.status.success() {
        bail!("the benchmark worker failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Runs in its own process so that peak memory and timings are its own.
pub fn worker(file: &Path, repeats: usize, memory_only: bool) -> Result<()> {
    let input = read_feature_file(file)?;
    if memory_only {
        score_all(&input, &Metric::ALL)?;
        println!("{}", json!({"peak_rss_bytes": machine::peak_rss_bytes()}));
        return Ok(());
    }
    let mut metrics = serde_json::Map::new();
    for metric in Metric::per_model() {
        let (seconds, value, runs) = timed_runs(repeats, || Ok(score_all(&input, &[metric])?[0].1))?;
        metrics.insert(metric.to_string(), json!({"seconds": seconds, "value": value, "runs": runs}));
    }
    let (seconds, value, runs) = timed_runs(repeats, || Ok(medxfer_scores::ncti_terms(&input)?.seli))?;
    metrics.insert(NCTI_TERMS.to_string(), json!({"seconds": seconds, "value": value, "runs": runs}));
    let (seconds, value, runs) = timed_runs(repeats, || Ok(medxfer_scores::etran_terms(&input)?.lda))?;
    metrics.insert(ETRAN_TERMS.to_string(), json!({"seconds": seconds, "value": value, "runs": runs}));
    // Each newer score given the analysis every score shares: its cost in a call for all.
    let every: Vec<Metric> = Metric::every().collect();
    let shared = SharedAnalysis::new(&input);
    let start = Instant::now();
    shared.prepare(&every);
    let shared_analysis_seconds = start.elapsed().as_secs_f64();
    for name in newer_rows() {
        let (seconds, _, runs) = timed_runs(repeats, || match name {
            NCTI_TERMS => reported_term(&shared, Metric::Ncti),
            ETRAN_TERMS => reported_term(&shared, Metric::Etran),
            metric => Ok(shared.score(metric.parse()?)?),
        })?;
        if let Some(entry) = metrics.get_mut(name).and_then(Value::as_object_mut) {
            entry.insert("shared_seconds".into(), json!(seconds));
            entry.insert("shared_runs".into(), json!(runs));
        }
    }
    let per_model: Vec<Metric> = Metric::per_model().collect();
    let (every_seconds, _, every_runs) = timed_runs(repeats, || {
        let shared = SharedAnalysis::new(&input);
        shared.prepare(&every);
        let mut total = 0.0;
        for &metric in &per_model {
            total += shared.score(metric)?;
        }
        Ok(total + reported_term(&shared, Metric::Ncti)? + reported_term(&shared, Metric::Etran)?)
    })?;
    let (suite_seconds, _, suite_runs) = timed_runs(repeats, || Ok(score_all(&input, &Metric::ALL)?.len() as f64))?;
    let floor = floor(&input)?;
    println!(
        "{}",
        json!({"metrics": metrics, "suite_seconds": suite_seconds, "suite_runs": suite_runs, "shared_analysis_seconds": shared_analysis_seconds,
               "every_seconds": every_seconds, "every_runs": every_runs, "floor": floor})
    );
    Ok(())
}

/// The term a set-level score's row reports (as the reference side does): NCTI's seli, ETran's
/// LDA term.
fn reported_term(shared: &SharedAnalysis<'_>, metric: Metric) -> Result<f64> {
    let reported = if metric == Metric::Ncti { "seli" } else { "lda" };
    let position = metric.terms().iter().position(|t| *t == reported).context("a set-level score's reported term")?;
    Ok(shared.set_terms(metric)?[position])
}

/// The rows of the newer scores: per model, then the set-level scores' terms.
fn newer_rows() -> impl Iterator<Item = &'static str> {
    Metric::BEYOND.iter().map(|m| m.as_str()).chain([NCTI_TERMS, ETRAN_TERMS])
}

/// Every row the "every score" total sums on the reference's side.
fn every_row() -> impl Iterator<Item = &'static str> {
    Metric::ALL.iter().map(|m| m.as_str()).chain(newer_rows())
}

/// The median seconds, the last value, and every run's seconds.
fn timed_runs(repeats: usize, mut f: impl FnMut() -> Result<f64>) -> Result<(f64, f64, Vec<f64>)> {
    let mut times = Vec::new();
    let mut value = f64::NAN;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        value = f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let runs = times.clone();
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], value, runs))
}

/// The least arithmetic the suite must do, timed with faer's kernels directly: the centred
/// D x D Gram, the two symmetric eigendecompositions, and N-LEEP's mixture fit on the same PCA.
fn floor(input: &ScoreInput) -> Result<Value> {
    let f = input.features();
    let (n, d) = f.shape();
    let means: Vec<f64> = (0..d).map(|j| f.col(j).iter().sum::<f64>() / n as f64).collect();
    let centred = Mat::from_fn(n, d, |i, j| f[(i, j)] - means[j]);
    let mut gram = Mat::<f64>::zeros(d, d);
    let start = Instant::now();
    triangular::matmul(
        gram.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        centred.transpose(),
        BlockStructure::Rectangular,
        centred.as_ref(),
        BlockStructure::Rectangular,
        1.0,
        faer::get_global_parallelism(),
    );
    let gram_seconds = start.elapsed().as_secs_f64();
    let covariance = Mat::from_fn(d, d, |i, j| if i >= j { gram[(i, j)] / (n as f64 - 1.0) } else { 0.0 });
    let start = Instant::now();
    let eigen = covariance.self_adjoint_eigen(Side::Lower).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let eigen_covariance = start.elapsed().as_secs_f64();
    let uncentred = Mat::from_fn(d, d, |i, j| if i >= j { gram[(i, j)] + n as f64 * means[i] * means[j] } else { 0.0 });
    let start = Instant::now();
    let _ = uncentred.self_adjoint_eigen(Side::Lower).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let eigen_gram = start.elapsed().as_secs_f64();
    // PCA keeping 80% of the variance, as N-LEEP.
    let values = eigen.S().column_vector();
    let total: f64 = (0..d).map(|i| values[i].max(0.0)).sum();
    let mut cumulative = 0.0;
    let mut k = d;
    for (rank, i) in (0..d).rev().enumerate() {
        cumulative += values[i].max(0.0) / total;
        if cumulative > 0.8 {
            k = rank + 1;
            break;
        }
    }
    let u = eigen.U();
    let basis = Mat::from_fn(d, k, |i, j| u[(i, d - 1 - j)]);
    let coordinates = &centred * &basis;
    let components = 5 * input.num_classes();
    let start = Instant::now();
    GaussianMixture::fit(coordinates.as_ref(), components, &GmmConfig::default(), &GmmStart::KMeans { seed: 42 })?;
    let mixture = start.elapsed().as_secs_f64();
    Ok(json!({
        "gram": gram_seconds, "eigen_covariance": eigen_covariance, "eigen_gram": eigen_gram, "mixture": mixture,
        "total": gram_seconds + eigen_covariance + eigen_gram + mixture, "pca_dims": k, "components": components,
    }))
}

fn python_process(python: &Path, file: &Path, repeats: usize) -> Result<Value> {
    let cores = machine::cores().to_string();
    let output = Command::new(python)
        .arg(super::python_env::workspace("python/bench_scores.py"))
        .arg(file)
        .args(["--repeats", &repeats.to_string()])
        // Give numpy its best kernels: these two, set on some machines for old OpenBLAS builds,
        // hold a current one back.
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .env("OPENBLAS_NUM_THREADS", &cores)
        .env("OMP_NUM_THREADS", &cores)
        .env("PYTHONPATH", super::python_env::workspace("python"))
        .output()
        .with_context(|| format!("cannot run the Python reference ({})", python.display()))?;
    if !output.status.success() {
        bail!("the Python reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes some score cannot run at are refused before any file is written (the worker failed
    /// on NCTI after timing the others); the smallest every score runs at pass the check.
    #[test]
    fn sizes_too_small_for_a_score_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |n: usize, d: usize, classes: Vec<usize>| Settings {
            n,
            d,
            classes,
            repeats: 1,
            python: None,
            no_python: true,
            keep_data: false,
            out: dir.path().join("out"),
        };
        for (n, d, classes, expected) in [
            (199, 64, vec![2], "give --n 200 --d 64"),
            (200, 63, vec![2], "give --n 200 --d 64"),
            (499, 64, vec![100], "give --n 500 --d 64"),
            (200, 64, vec![1], "--classes 1"),
        ] {
            let error = run(&settings(n, d, classes)).unwrap_err().to_string();
            assert!(error.contains(expected), "{n} {d}: {error}");
            assert!(!dir.path().join("out").exists());
        }
        check_sizes(&settings(200, 64, vec![2, 40])).unwrap();
    }
}
