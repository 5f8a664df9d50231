//! `medxfer-scores`: score a feature file, or correlate two columns of a results table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use medxfer_scores::{Correlation, Metric, SharedAnalysis, check_same_samples, correlate, read_feature_file, score_set};
use serde_json::{Map, Value, json};

/// Transferability scores and rank correlations, as Chaves et al. 2023 computed them.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compute transferability scores of one feature file.
    ///
    /// FILE is a safetensors file with `features` (N x D, f32 or f64), `labels` (N integers
    /// 0..C-1) and optionally `probs` (N x Cs source softmax, needed by nce and leep).
    Score {
        /// The feature file.
        file: PathBuf,
        /// Comma-separated metrics (h_score, nce, leep, n_leep, logme, reg_h_score, gbc; beyond the
        /// paper transrate, transrate_official, sfda, pactran_dir, pactran_gam, pactran_gauss); all by
        /// default, the paper's seven first.
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<String>>,
        /// Print one JSON object {"metric": value, ...} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Score a set of candidate models' feature files together (same images and labels, one file
    /// per model): the scores defined over a set (etran, ncti: min-max scaled across the files) and
    /// the per-model ones, one value per file.
    ScoreSet {
        /// The feature files, one per candidate model.
        #[arg(required = true, num_args = 2..)]
        files: Vec<PathBuf>,
        /// Comma-separated metrics; by default every one the files allow (nce and leep need
        /// `probs` in every file).
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<String>>,
        /// Print {"files": [...], "scores": {"metric": [one value per file], ...}}.
        #[arg(long)]
        json: bool,
    },
    /// Correlate two columns of a CSV file (Kendall tau-b with p-value, weighted tau, Pearson, Spearman).
    Correlate {
        /// The CSV file, with a header row.
        file: PathBuf,
        /// Column of the scores (x).
        #[arg(long)]
        x: String,
        /// Column of the accuracies (y).
        #[arg(long)]
        y: String,
        /// Column whose values split the rows into groups, each correlated on its own.
        #[arg(long)]
        group: Option<String>,
        /// Print a JSON list of {group, n, tau_b, p_value, weighted_tau, pearson, spearman}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    medxfer_cli::stop_quietly_when_output_closes();
    medxfer_cli::exit_code(run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Score { file, metrics, json } => score(&file, metrics, json),
        Command::ScoreSet { files, metrics, json } => score_files(&files, metrics, json),
        Command::Correlate { file, x, y, group, json } => correlate_csv(&file, &x, &y, group.as_deref(), json),
    }
}

fn score(file: &Path, metrics: Option<Vec<String>>, json: bool) -> Result<()> {
    let input = read_feature_file(file)?;
    let explicit = metrics.is_some();
    let requested: Vec<Metric> = match metrics {
        Some(names) => names.iter().map(|name| name.trim().parse()).collect::<Result<_, _>>()?,
        None => Metric::per_model().collect(),
    };
    let has_probs = input.source_probs().is_some();
    let (runnable, skipped): (Vec<Metric>, Vec<Metric>) = requested.iter().partition(|m| has_probs || !m.needs_source_probs());
    if explicit && !skipped.is_empty() {
        bail!(
            "{}: {} need(s) the source probabilities, but the file has no `probs` tensor; extract with probabilities or leave them out",
            file.display(),
            names(&skipped)
        );
    }
    let start = Instant::now();
    // The scores share the covariance and Gram decompositions (as `score_all`), and each is
    // computed on its own, so that one that fails on these features leaves the others.
    let shared = SharedAnalysis::new(&input);
    shared.prepare(&runnable);
    let mut results: Vec<(Metric, Result<f64, medxfer_scores::Error>)> = Vec::new();
    for metric in runnable {
        if !results.iter().any(|(m, _)| *m == metric) {
            results.push((metric, shared.score(metric)));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let note = (!skipped.is_empty()).then(|| format!("{} skipped: the file has no `probs` tensor (source probabilities)", names(&skipped)));
    let failures: Vec<String> = results.iter().filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{m}: {e}"))).collect();
    if json {
        // A score that failed is null; its error goes to stderr.
        let object: Map<String, Value> =
            results.iter().map(|(m, r)| (m.to_string(), r.as_ref().map_or(Value::Null, |v| json!(v)))).collect();
        println!("{}", Value::Object(object));
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
    } else {
        println!("{}: N = {}, D = {}, C = {}", file.display(), input.num_samples(), input.feature_dim(), input.num_classes());
        println!("{:<18} {:>20}", "metric", "value");
        for (metric, result) in &results {
            match result {
                Ok(value) => println!("{:<18} {:>20.12}", metric.as_str(), value),
                Err(_) => println!("{:<18} {:>20}", metric.as_str(), "failed (below)"),
            }
        }
        println!("({} metric(s) in {seconds:.3} s)", results.len());
        if let Some(note) = note {
            println!("{note}");
        }
    }
    if !failures.is_empty() {
        bail!(
            "{}: {} of {} score(s) failed on these features (the others are above): {}",
            file.display(),
            failures.len(),
            results.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

fn score_files(files: &[PathBuf], metrics: Option<Vec<String>>, json: bool) -> Result<()> {
    // One candidate twice (a typo, or a link to it) weighs twice in the scaling across the
    // files that ETran and NCTI do; with two files it left ETran "undefined: the models' values
    // are all equal" (seen), naming no file.
    for (later, file) in files.iter().enumerate() {
        if let Some(earlier) = files[..later].iter().position(|other| medxfer_durable::is_same_file(other, file)) {
            bail!("{} is given twice (files {} and {}): give each candidate's feature file once", file.display(), earlier + 1, later + 1);
        }
    }
    let inputs = files.iter().map(|file| read_feature_file(file)).collect::<Result<Vec<_>, _>>()?;
    match check_same_samples(&inputs) {
        Err(error @ medxfer_scores::Error::NotTheSameSamples { model, .. }) => {
            bail!("{} (model {model}) and {} (model 1): {error}", files[model - 1].display(), files[0].display())
        }
        other => other?,
    }
    let has_probs = inputs.iter().all(|input| input.source_probs().is_some());
    let requested: Vec<Metric> = match metrics {
        Some(asked) => {
            let requested: Vec<Metric> = asked.iter().map(|name| name.trim().parse()).collect::<Result<_, _>>()?;
            let lacking: Vec<Metric> = requested.iter().copied().filter(|m| m.needs_source_probs() && !has_probs).collect();
            if !lacking.is_empty() {
                bail!("{} need(s) the source probabilities, but a file has no `probs` tensor", names(&lacking));
            }
            requested
        }
        None => Metric::every().filter(|m| has_probs || !m.needs_source_probs()).collect(),
    };
    // All at once (the scores share each file's decompositions); where one fails, each score on
    // its own, so that the failure does not cost the others.
    let results: Vec<(Metric, Result<Vec<f64>, medxfer_scores::Error>)> = match score_set(&inputs, &requested) {
        Ok(scores) => scores.into_iter().map(|(metric, values)| (metric, Ok(values))).collect(),
        Err(_) => {
            let mut results: Vec<(Metric, Result<Vec<f64>, medxfer_scores::Error>)> = Vec::new();
            for &metric in &requested {
                if !results.iter().any(|(m, _)| *m == metric) {
                    results.push((metric, score_set(&inputs, &[metric]).map(|mut scores| scores.remove(0).1)));
                }
            }
            results
        }
    };
    let failures: Vec<String> = results.iter().filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{m}: {e}"))).collect();
    let listed: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    if json {
        // A score that failed is null; its error goes to stderr.
        let object: Map<String, Value> =
            results.iter().map(|(m, r)| (m.to_string(), r.as_ref().map_or(Value::Null, |v| json!(v)))).collect();
        println!("{}", json!({"files": listed, "scores": object}));
    } else {
        print!("{:<18}", "metric");
        for index in 0..files.len() {
            print!(" {:>16}", format!("file {}", index + 1));
        }
        println!();
        for (metric, result) in &results {
            print!("{:<18}", metric.as_str());
            match result {
                Ok(values) => values.iter().for_each(|value| print!(" {value:>16.10}")),
                Err(_) => print!(" failed (below)"),
            }
            println!();
        }
        for (index, file) in listed.iter().enumerate() {
            println!("file {}: {file}", index + 1);
        }
    }
    if !failures.is_empty() {
        bail!("{} of {} score(s) failed on this set (the others are above): {}", failures.len(), results.len(), failures.join("; "));
    }
    Ok(())
}

fn names(metrics: &[Metric]) -> String {
    metrics.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
}

/// One group's rows of a CSV file being correlated.
struct Group {
    key: String,
    xs: Vec<f64>,
    ys: Vec<f64>,
    /// The first line holding a value that is not finite, and what it holds.
    not_finite: Option<(usize, String)>,
}

fn correlate_csv(file: &Path, x: &str, y: &str, group: Option<&str>, json: bool) -> Result<()> {
    let mut reader = csv::Reader::from_path(file).with_context(|| format!("cannot open {}", file.display()))?;
    let headers = reader.headers().with_context(|| format!("{}: cannot read the header row", file.display()))?.clone();
    if headers.is_empty() {
        bail!("{}: the file is empty; it needs a header row naming the columns, then one row per sample", file.display());
    }
    let column = |name: &str| -> Result<usize> {
        let found: Vec<usize> = headers.iter().enumerate().filter(|(_, h)| *h == name).map(|(i, _)| i).collect();
        match found[..] {
            [index] => Ok(index),
            [] => bail!("{}: no column named '{name}'; the columns are: {}", file.display(), headers.iter().collect::<Vec<_>>().join(", ")),
            _ => bail!(
                "{}: {} columns are named '{name}' (columns {}); rename all but one",
                file.display(),
                found.len(),
                found.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(" and ")
            ),
        }
    };
    let (x_col, y_col) = (column(x)?, column(y)?);
    let group_col = group.map(column).transpose()?;
    let mut groups: BTreeMap<usize, Group> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.with_context(|| format!("{}: line {line} is not valid CSV", file.display()))?;
        let number = |col: usize, name: &str| -> Result<f64> {
            let text = record.get(col).unwrap_or("");
            text.trim()
                .parse::<f64>()
                .with_context(|| format!("{}: line {line}, column '{name}': '{text}' is not a number", file.display()))
        };
        let (xv, yv) = (number(x_col, x)?, number(y_col, y)?);
        let key = group_col.map(|c| record.get(c).unwrap_or("").to_string()).unwrap_or_else(|| "all".to_string());
        let slot = match order.iter().position(|k| *k == key) {
            Some(slot) => slot,
            None => {
                order.push(key.clone());
                order.len() - 1
            }
        };
        let entry = groups.entry(slot).or_insert_with(|| Group { key, xs: Vec::new(), ys: Vec::new(), not_finite: None });
        entry.xs.push(xv);
        entry.ys.push(yv);
        if entry.not_finite.is_none() {
            entry.not_finite =
                [(x, xv), (y, yv)].into_iter().find(|(_, v)| !v.is_finite()).map(|(name, v)| (line, format!("{v} in column '{name}'")));
        }
    }
    if groups.is_empty() {
        bail!("{}: no data rows", file.display());
    }
    // A NaN (a score that failed) is named by its line, not by its place among the group's values.
    let results: Vec<(String, usize, Result<Correlation, String>)> = groups
        .into_values()
        .map(|group| {
            let result = match group.not_finite {
                Some((line, what)) => Err(format!("line {line} holds {what}: remove such rows, or fill in the value")),
                None => correlate(&group.xs, &group.ys).map_err(|e| e.to_string()),
            };
            (group.key, group.xs.len(), result)
        })
        .collect();
    if json {
        let list: Vec<Value> = results
            .iter()
            .map(|(key, n, result)| match result {
                Ok(c) => json!({"group": key, "n": c.n, "tau_b": c.tau_b, "p_value": c.p_value, "weighted_tau": c.weighted_tau, "pearson": c.pearson, "spearman": c.spearman}),
                Err(e) => json!({"group": key, "n": n, "tau_b": null, "p_value": null, "weighted_tau": null, "pearson": null, "spearman": null, "error": e}),
            })
            .collect();
        println!("{}", Value::Array(list));
    } else {
        println!("{:<24} {:>4} {:>9} {:>9} {:>12} {:>9} {:>9}", "group", "n", "tau_b", "p_value", "weighted_tau", "pearson", "spearman");
        for (key, n, result) in &results {
            match result {
                Ok(c) => println!(
                    "{:<24} {:>4} {:>9.4} {:>9.4} {:>12.4} {:>9.4} {:>9.4}",
                    key, c.n, c.tau_b, c.p_value, c.weighted_tau, c.pearson, c.spearman
                ),
                Err(e) => println!("{key:<24} {n:>4} {e}"),
            }
        }
    }
    Ok(())
}
