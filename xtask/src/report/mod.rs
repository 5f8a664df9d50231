//! `cargo xtask report`: Table 2, Fig. 3 and report.md from scores.csv and performance.csv
//! alone, so results from another machine, or published numbers, tabulate the same way. The
//! study's provenance (splits, deviations), when `reproduce` left a study.json, joins the report.

pub mod figure;
pub mod forest;
pub mod image_bootstrap;
pub mod table;
pub mod uncertainty;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::results::{self, PerformanceRow, ScoreRow, Setting};
use table::{Panel, TABLE2_COLUMNS, Table2Row};
use uncertainty::BootstrapSettings;

/// What `reproduce` records about how the results were made (OUT/study.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command that made the results.
    pub command: String,
    /// Synthetic demo data and backbones, not the study's.
    pub demo: bool,
    pub device: String,
    pub trials: usize,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub splits: Vec<SplitNote>,
    /// Every way the run differs from the reference protocol (empty: faithful).
    pub deviations: Vec<String>,
    /// The bootstrap behind Table 2's intervals (absent in older records: the default).
    #[serde(default)]
    pub bootstrap: BootstrapSettings,
}

/// Where one task's split came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitNote {
    pub task: String,
    pub dataset: String,
    pub ood_dataset: String,
    /// authors, faithful or grouped.
    pub source: String,
    /// The seed a faithful or grouped split was drawn with (none for the authors' CSVs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Images per part (train, val, test, ood).
    pub images: BTreeMap<String, usize>,
    /// What the split's group key says about leakage.
    pub leakage: String,
}

pub const PROVENANCE_FILE: &str = "study.json";

/// What `run` wrote.
#[derive(Debug)]
pub struct Written {
    pub table: Vec<Table2Row>,
    pub files: Vec<String>,
}

/// What `run` does where no backbone has both a score and an accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NothingToCorrelate {
    /// Writes the empty tables: a study none of whose units finished says so in its report.
    Write,
    /// Refuses, keeping the files there: `cargo xtask report` on an emptied or mistyped CSV
    /// replaced a study's Table 2, figures and report with empty ones (seen).
    Refuse,
}

/// Reads OUT/scores.csv and OUT/performance.csv and writes table2.csv, table2.md, fig3.{svg,png},
/// fig3_ood.{svg,png} and report.md beside them.
pub fn run(out: &Path, nothing: NothingToCorrelate) -> Result<Written> {
    let scores = results::read_scores(out)?;
    let performance = results::read_performance(out)?;
    let provenance = read_provenance(out)?;
    let unmatched = table::unmatched(&scores, &performance);
    if !unmatched.is_empty() {
        eprintln!(
            "warning: {} row(s) of one file have no counterpart in the other, so they are in no correlation (a backbone named otherwise in the two?):",
            unmatched.len()
        );
        for line in &unmatched {
            eprintln!("  {line}");
        }
    }
    let mut panels = table::panels(&scores, &performance);
    if panels.is_empty() && nothing == NothingToCorrelate::Refuse {
        bail!(
            "{}: no (task, setting, backbone) has both a score in scores.csv ({} row(s)) and an accuracy in performance.csv ({} row(s)), so there is nothing to correlate; the tables, figures and report there are left as they were",
            out.display(),
            scores.len(),
            performance.len()
        );
    }
    let images = image_bootstrap::read(out)?;
    if let Some((intervals, _)) = &images {
        let stale = table::attach_score_intervals(&mut panels, intervals);
        if stale > 0 {
            eprintln!(
                "warning: {stale} score interval(s) of image_bootstrap_scores.csv are around other values than scores.csv's (the study changed since): left out of the figures; rerun `cargo xtask image-bootstrap`"
            );
        }
    }
    let bootstrap = provenance.as_ref().map(|p| p.bootstrap).unwrap_or_default();
    let rows: Vec<Table2Row> = panels.iter().map(|p| p.correlation(bootstrap)).collect();
    let mut files = Vec::new();
    results::write_rows(&out.join("table2.csv"), &TABLE2_COLUMNS, &rows)?;
    files.push("table2.csv".to_string());
    let metrics = table::metrics(&scores);
    let tasks = table::tasks(&performance);
    write_text(&out.join("table2.md"), &table2_markdown(&rows, &tasks, &metrics))?;
    files.push("table2.md".to_string());
    for setting in Setting::BOTH {
        let chosen: Vec<&Panel> = panels.iter().filter(|p| p.setting == setting).collect();
        if chosen.is_empty() {
            continue;
        }
        let (stem, title, y_label) = match setting {
            Setting::Id => {
                ("fig3", "Pretrained scores vs test balanced accuracy of each backbone's A_opt (in-distribution)", "test balanced accuracy")
            }
            Setting::Ood => ("fig3_ood", "A_opt's scores vs its balanced accuracy on the OOD set", "OOD balanced accuracy"),
        };
        figure::write(&out.join(stem), title, y_label, &chosen)?;
        files.push(format!("{stem}.svg"));
        files.push(format!("{stem}.png"));
    }
    if !rows.is_empty() {
        forest::write(&out.join("fig_tau_forest"), &rows)?;
        files.push("fig_tau_forest.svg".to_string());
        files.push("fig_tau_forest.png".to_string());
    }
    let mut report = report_markdown(&rows, &panels, &performance, &scores, provenance.as_ref(), bootstrap);
    report.push_str(&images_markdown(&rows, images.as_ref().map(|(scores, taus)| (scores.as_slice(), taus.as_slice()))));
    if !unmatched.is_empty() {
        report.push_str("\n## Rows in no correlation\n\nA score without the backbone's accuracy, or an accuracy without its scores:\n\n");
        report.extend(unmatched.iter().map(|line| format!("- {line}\n")));
    }
    let records = crate::recorded::records_in(out)?;
    if !records.is_empty() {
        report.push_str("\n## Settings recorded with the results\n\nRead from each step's settings.json (what made the files, whatever command ran last):\n\n");
        report.push_str(&crate::recorded::describe(&records));
    }
    write_text(&out.join("report.md"), &report)?;
    files.push("report.md".to_string());
    Ok(Written { table: rows, files })
}

/// Writes OUT/study.json.
pub fn write_provenance(out: &Path, provenance: &Provenance) -> Result<()> {
    write_text(&out.join(PROVENANCE_FILE), &serde_json::to_string_pretty(provenance)?)
}

pub fn read_provenance(out: &Path) -> Result<Option<Provenance>> {
    let path = out.join(PROVENANCE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a study record; delete it or rerun reproduce", path.display()))?,
    ))
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    medxfer_durable::write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn number(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.3}"))
}

/// Rows task x setting, columns metrics, cells "tau-b (p)"; then the weighted tau; then the
/// published tau-b for comparison.
pub fn table2_markdown(rows: &[Table2Row], tasks: &[String], metrics: &[String]) -> String {
    let cell =
        |task: &str, setting: Setting, metric: &str| rows.iter().find(|r| r.task == task && r.setting == setting && r.metric == metric);
    let header = |first: &str| {
        let mut text = format!("| {first} | n |");
        for metric in metrics {
            let mark = table::marks(metric);
            let _ = write!(text, " {metric}{mark} |");
        }
        text.push('\n');
        text.push_str(&format!("|---|---:|{}\n", "---:|".repeat(metrics.len())));
        text
    };
    let mut text = String::from(
        "Kendall's tau-b between each score and the balanced accuracy across backbones (two-sided p-value in brackets). \
         † beyond the paper's seven; ↓ lower is better, negated first, so that a positive tau always means the score agrees with accuracy.\n\n",
    );
    // One row per (setting, task) with a cell per metric, `show` writing the cell.
    let body = |show: &dyn Fn(Option<&Table2Row>) -> String| {
        let mut text = header("task · setting");
        for setting in Setting::BOTH {
            for task in tasks {
                let Some(n) = metrics.iter().filter_map(|m| cell(task, setting, m)).map(|r| r.n).max() else { continue };
                let _ = write!(text, "| {task} · {} | {n} |", setting.as_str());
                for metric in metrics {
                    let _ = write!(text, " {} |", show(cell(task, setting, metric)));
                }
                text.push('\n');
            }
        }
        text
    };
    text.push_str(&body(&|row| match row {
        Some(Table2Row { tau_b: Some(tau), p_value: Some(p), .. }) => format!("{tau:.3} ({p:.2})"),
        _ => "–".to_string(),
    }));
    text.push_str("\nWeighted tau (hyperbolic weigher, as scipy.stats.weightedtau)\n\n");
    text.push_str(&body(&|row| number(row.and_then(|r| r.weighted_tau))));
    text.push_str("\n95% bootstrap interval of tau-b over the backbones (percentile; * the sign is settled: the interval excludes 0 and the permutation p-value is below 0.05)\n\n");
    text.push_str(&body(&|row| match row {
        Some(row @ Table2Row { ci_low: Some(low), ci_high: Some(high), .. }) => {
            format!("[{low:.2}, {high:.2}]{}", if row.sign_settled() == Some(true) { "*" } else { "" })
        }
        _ => "–".to_string(),
    }));
    let paper = table::paper_tau_b();
    let published: Vec<(&String, Setting)> = Setting::BOTH
        .iter()
        .flat_map(|&s| tasks.iter().map(move |t| (t, s)))
        .filter(|(t, s)| paper.keys().any(|k| &k.0 == *t && k.1 == *s))
        .collect();
    if !published.is_empty() {
        text.push_str("\nPublished tau-b (Chaves et al. 2023, Table 2), for comparison\n\n");
        text.push_str(&header("task · setting").replacen("| n |", "| |", 1));
        for (task, setting) in published {
            let _ = write!(text, "| {task} · {} | |", setting.as_str());
            for metric in metrics {
                let _ = write!(text, " {} |", number(paper.get(&(task.clone(), setting, metric.clone())).copied()));
            }
            text.push('\n');
        }
    }
    text
}

/// The whole report: Table 2, the best backbone per task by accuracy and by each score with
/// its top-1 regret, each backbone's selected run, and the provenance.
fn report_markdown(
    rows: &[Table2Row],
    panels: &[Panel],
    performance: &[PerformanceRow],
    scores: &[ScoreRow],
    provenance: Option<&Provenance>,
    bootstrap: BootstrapSettings,
) -> String {
    let tasks = table::tasks(performance);
    let metrics = table::metrics(scores);
    let mut text = String::from("# medxfer study report\n\n");
    match provenance {
        Some(p) if p.demo => text.push_str(
            "**Demo data.** Synthetic tasks and small backbones pretrained on a synthetic source set: these numbers show the pipeline working, they say nothing about medical images.\n\n",
        ),
        _ => {}
    }
    let backbones: std::collections::BTreeSet<&str> = performance.iter().map(|r| r.backbone.as_str()).collect();
    let _ = writeln!(text, "{} task(s), {} backbone(s), {} score(s).\n", tasks.len(), backbones.len(), metrics.len());
    text.push_str("## Table 2\n\n");
    text.push_str(&table2_markdown(rows, &tasks, &metrics));
    text.push_str("\nFigures: fig3.svg / fig3.png (in-distribution), fig3_ood.svg / fig3_ood.png (OOD), fig_tau_forest.svg / fig_tau_forest.png (tau-b with its interval per score and task).\n\n");
    text.push_str(&uncertainty_markdown(rows, panels, &tasks, &metrics, bootstrap, provenance.is_some()));

    text.push_str("## Best backbone per task\n\nBy balanced accuracy, and the backbone each score ranks first with its top-1 regret (best accuracy minus the accuracy of the score's pick; the best over every backbone, also one the score could not be computed for).\n\n");
    let _ = writeln!(text, "| task · setting | best by accuracy | {} |", metrics.join(" | "));
    let _ = writeln!(text, "|---|---|{}", "---|".repeat(metrics.len()));
    for setting in Setting::BOTH {
        for task in &tasks {
            let task_panels: Vec<&Panel> = panels.iter().filter(|p| &p.task == task && p.setting == setting).collect();
            if task_panels.is_empty() {
                continue;
            }
            // Over every backbone with an accuracy: a panel holds only those its score was
            // computed for, and the one a score failed on may be the best.
            let best = performance
                .iter()
                .filter(|r| &r.task == task && r.setting == setting)
                .max_by(|a, b| a.test_balanced_accuracy.total_cmp(&b.test_balanced_accuracy).then_with(|| b.backbone.cmp(&a.backbone)));
            let Some(best) = best else { continue };
            let _ = write!(text, "| {task} · {} | {} ({:.3}) |", setting.as_str(), best.backbone, best.test_balanced_accuracy);
            for metric in &metrics {
                match task_panels.iter().find(|p| &p.metric == metric).and_then(|panel| panel.pick()) {
                    Some((pick, _, accuracy)) => {
                        let _ = write!(text, " {pick} (regret {}) |", number(Some(best.test_balanced_accuracy - accuracy)));
                    }
                    None => text.push_str(" – |"),
                }
            }
            text.push('\n');
        }
    }

    text.push_str("\n## Selected run per backbone (A_opt)\n\n| task | backbone | trial | lr | wd | epoch | val bal. acc. | test bal. acc. | OOD bal. acc. |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for task in &tasks {
        for row in performance.iter().filter(|r| &r.task == task && r.setting == Setting::Id) {
            let ood = performance.iter().find(|r| &r.task == task && r.setting == Setting::Ood && r.backbone == row.backbone);
            let _ = writeln!(
                text,
                "| {task} | {} | {} | {} | {} | {} | {} | {:.3} | {} |",
                row.backbone,
                row.trial.map_or("–".into(), |t| t.to_string()),
                row.lr.map_or("–".into(), |v| format!("{v:.3e}")),
                row.wd.map_or("–".into(), |v| format!("{v:.3e}")),
                row.epoch.map_or("–".into(), |e| e.to_string()),
                number(row.val_balanced_accuracy),
                row.test_balanced_accuracy,
                number(ood.map(|r| r.test_balanced_accuracy)),
            );
        }
    }

    text.push_str("\n## Provenance\n\n");
    match provenance {
        None => text.push_str("No study.json beside the tables: they were tabulated from scores.csv and performance.csv alone, and how they were made is not recorded here.\n"),
        Some(p) => {
            let _ = writeln!(text, "Made by `{}` on {}: {} trial(s) of {} epoch(s) per search, batch {}, seed {}.\n", p.command, p.device, p.trials, p.epochs, p.batch, p.seed);
            text.push_str("| task | dataset | OOD set | split | train | val | test | OOD | leakage |\n|---|---|---|---|---:|---:|---:|---:|---|\n");
            for s in &p.splits {
                let count = |part: &str| s.images.get(part).map_or("–".into(), |n| n.to_string());
                let _ = writeln!(
                    text,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    s.task,
                    s.dataset,
                    s.ood_dataset,
                    s.source,
                    count("train"),
                    count("val"),
                    count("test"),
                    count("ood"),
                    s.leakage
                );
            }
            text.push_str("\nDeviations from the reference protocol in force:\n\n");
            if p.deviations.is_empty() {
                text.push_str("- none: the faithful protocol (PROTOCOL.md)\n");
            }
            for deviation in &p.deviations {
                let _ = writeln!(text, "- {deviation}");
            }
        }
    }
    text
}

/// The intervals over image resamples beside those over backbones, or how to get them.
fn images_markdown(rows: &[Table2Row], intervals: Option<(&[image_bootstrap::ScoreInterval], &[image_bootstrap::TauInterval])>) -> String {
    let mut text = String::from("\n## How much comes from the sample of images\n\n");
    let Some((scores, taus)) = intervals else {
        text.push_str("Not measured: `cargo xtask image-bootstrap --results DIR` resamples each task's images, recomputes the scores on the stored features (accuracies fixed) and adds the intervals here and error bars to Fig. 3.\n");
        return text;
    };
    let cost: f64 = taus.iter().map(|t| t.seconds_per_resample).fold(0.0, f64::max);
    let bias_corrected = |t: &image_bootstrap::TauInterval| t.interval == image_bootstrap::Interval::BiasCorrected;
    let read_off = if taus.iter().all(bias_corrected) {
        "each 95% interval bias-corrected (`--interval bias-corrected`, Efron's BC: the 2.5% and 97.5% quantiles of the resamples shifted by how far their median lies off the value on the full images)"
    } else if taus.iter().any(bias_corrected) {
        "each 95% interval the resamples' 2.5% and 97.5% quantiles or, where image_bootstrap_tau.csv's interval column says so, those quantiles bias-corrected"
    } else {
        "each 95% interval the resamples' 2.5% and 97.5% quantiles"
    };
    let _ = writeln!(
        text,
        "The images of each task resampled within each class (a group of the split at a time, a patient or lesion with all its images, or image by image with `--resample-by images`: the drawn column says which), every backbone's scores recomputed on its stored features, the fine-tuned accuracies fixed, {read_off} (image_bootstrap_tau.csv; the slowest task cost {cost:.2} s per resample). \
         Where the interval over images is much narrower than the one over backbones, the spread comes from which backbones were compared, not from the images.\n"
    );
    text.push_str(&one_sided_note(scores, taus.iter().all(bias_corrected)));
    text.push_str(
        "| task · setting | score | tau-b | over backbones | over images | drawn | resamples |\n|---|---|---:|---|---|---|---:|\n",
    );
    for tau in taus {
        let Some(row) = rows.iter().find(|r| r.task == tau.task && r.setting == tau.setting && r.metric == tau.metric) else { continue };
        let interval = |low: Option<f64>, high: Option<f64>| match (low, high) {
            (Some(l), Some(h)) => format!("[{l:.2}, {h:.2}]"),
            _ => "–".to_string(),
        };
        // Resampled over another set of backbones than the table's: not this tau-b's interval.
        let over_images = if tau.n == row.n {
            interval(tau.low, tau.high)
        } else {
            format!("stale: over {} backbones, the table has {}; rerun image-bootstrap", tau.n, row.n)
        };
        // What one draw took: groups, or images one by one (0: a file written before they were recorded).
        let drawn = match (tau.images, tau.groups) {
            (0, _) => "–".to_string(),
            (images, groups) if groups == images => format!("{images} images"),
            (images, groups) => format!("{groups} groups of {images} images"),
        };
        let _ = writeln!(
            text,
            "| {} · {} | {} | {} | {} | {} | {drawn} | {} |",
            tau.task,
            tau.setting.as_str(),
            tau.metric,
            number(row.tau_b),
            interval(row.ci_low, row.ci_high),
            over_images,
            tau.resamples
        );
    }
    text
}

/// The score intervals that lie wholly on one side of the score on the full images, per score:
/// a resample repeats about a third of its images, and scores that reward fitting few distinct
/// points rise on repeats (measured on the demo study: README), so such an interval holds that
/// bias as well as the spread. Bias-corrected, one still lies there where (nearly) every
/// resample does. Empty where there is none.
fn one_sided_note(scores: &[image_bootstrap::ScoreInterval], bias_corrected: bool) -> String {
    let mut per_metric: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for interval in scores {
        let counts = per_metric.entry(interval.metric.as_str()).or_default();
        counts.1 += 1;
        if interval.value < interval.low || interval.value > interval.high {
            counts.0 += 1;
        }
    }
    let one_sided: usize = per_metric.values().map(|c| c.0).sum();
    if one_sided == 0 {
        return String::new();
    }
    let listed: Vec<String> =
        per_metric.iter().filter(|(_, c)| c.0 > 0).map(|(metric, (off, all))| format!("{metric} {off} of {all}")).collect();
    let remedy = if bias_corrected {
        "bias-corrected as these are, such an interval still lies off the score where (nearly) every resample does, which no reading of the resamples undoes"
    } else {
        "`--interval bias-corrected` moves the intervals back by the resamples' median shift where some resamples fall on each side"
    };
    format!(
        "{one_sided} of {} score intervals lie wholly on one side of the score on the full images ({}): a resample repeats about a third of its images, \
         and these scores move on repeats, so their intervals hold that bias as well as the spread, and so may the tau-b intervals built on them; {remedy}.\n\n",
        scores.len(),
        listed.join(", ")
    )
}

/// How sure each conclusion is: per task and score whether the sign of tau-b is settled at 95%,
/// and per score the mean tau-b across tasks with its bootstrap interval.
fn uncertainty_markdown(
    rows: &[Table2Row],
    panels: &[Panel],
    tasks: &[String],
    metrics: &[String],
    bootstrap: BootstrapSettings,
    recorded: bool,
) -> String {
    let mut text = String::from("## How sure\n\n");
    let _ = writeln!(
        text,
        "Ten backbones give few pairs, so every tau-b carries its 95% percentile bootstrap interval over the backbones ({} resamples, seed {}{}), \
         and a permutation p-value beside scipy's (table2.csv: `ci_low`, `ci_high`, `p_permutation`). A sign is settled where the interval \
         excludes 0 and the permutation p-value is below 0.05 (the interval alone collapses onto a perfectly ordered sample).\n",
        bootstrap.resamples,
        bootstrap.seed,
        if recorded { ", from study.json" } else { "; no study.json, the default" }
    );
    for setting in Setting::BOTH {
        let chosen: Vec<&Table2Row> = rows.iter().filter(|r| r.setting == setting).collect();
        if chosen.is_empty() {
            continue;
        }
        let settled = chosen.iter().filter(|r| r.sign_settled() == Some(true)).count();
        let _ = writeln!(
            text,
            "**{}**: the sign of tau-b is settled at 95% in {settled} of {} (task, score) cells.\n",
            match setting {
                Setting::Id => "In-distribution",
                Setting::Ood => "Out-of-distribution",
            },
            chosen.len()
        );
        let _ = writeln!(text, "| task | {} |", metrics.join(" | "));
        let _ = writeln!(text, "|---|{}", "---|".repeat(metrics.len()));
        for task in tasks {
            if !chosen.iter().any(|r| &r.task == task) {
                continue;
            }
            let _ = write!(text, "| {task} |");
            for metric in metrics {
                let verdict = match chosen.iter().find(|r| &r.task == task && &r.metric == metric).and_then(|r| r.settled_sign()) {
                    Some(1) => "agrees (settled)",
                    Some(-1) => "disagrees (settled)",
                    Some(_) => "not settled",
                    None => "–",
                };
                let _ = write!(text, " {verdict} |");
            }
            text.push('\n');
        }
        let _ = writeln!(text, "\nMean tau-b across tasks, with its 95% bootstrap interval (backbones resampled within each task):\n");
        let _ = writeln!(text, "| score | tasks | mean tau-b | 95% interval | sign |\n|---|---:|---:|---|---|");
        for metric in metrics {
            let per_task: Vec<(Vec<f64>, Vec<f64>)> = panels
                .iter()
                .filter(|p| p.setting == setting && &p.metric == metric)
                .map(|p| (p.oriented_scores(), p.accuracies()))
                .collect();
            let mut rng = uncertainty::cell_rng(bootstrap, &format!("mean/{}/{metric}", setting.as_str()));
            match uncertainty::mean_tau_interval(&per_task, bootstrap.resamples, &mut rng) {
                Some((mean, Some((low, high)))) => {
                    let sign = if low > 0.0 {
                        "agrees (settled)"
                    } else if high < 0.0 {
                        "disagrees (settled)"
                    } else {
                        "not settled"
                    };
                    let _ = writeln!(text, "| {metric} | {} | {mean:.3} | [{low:.3}, {high:.3}] | {sign} |", per_task.len());
                }
                Some((mean, None)) => {
                    let _ = writeln!(text, "| {metric} | {} | {mean:.3} | – | too few backbones for an interval |", per_task.len());
                }
                None => {
                    let _ = writeln!(text, "| {metric} | {} | – | – | tau-b undefined in a task |", per_task.len());
                }
            }
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::results::{PERFORMANCE_COLUMNS, SCORE_COLUMNS};

    /// Ten backbones whose LEEP ranks them exactly as their accuracy and whose GBC ranks them in
    /// reverse, on one task; OOD accuracies are the ID ones shuffled.
    fn write_results(dir: &Path) -> (Vec<ScoreRow>, Vec<PerformanceRow>) {
        let mut scores = Vec::new();
        let mut performance = Vec::new();
        for i in 0..10 {
            let backbone = format!("net{i}");
            let accuracy = 0.5 + 0.04 * i as f64;
            for setting in Setting::BOTH {
                scores.push(ScoreRow {
                    task: "brain".into(),
                    setting,
                    backbone: backbone.clone(),
                    metric: "leep".into(),
                    value: -2.0 + 0.1 * i as f64,
                });
                scores.push(ScoreRow {
                    task: "brain".into(),
                    setting,
                    backbone: backbone.clone(),
                    metric: "gbc".into(),
                    value: -(i as f64),
                });
                // A bound (lower is better) falling as accuracy rises: it agrees.
                scores.push(ScoreRow {
                    task: "brain".into(),
                    setting,
                    backbone: backbone.clone(),
                    metric: "pactran_dir".into(),
                    value: 3.0 - 0.2 * i as f64,
                });
                performance.push(PerformanceRow {
                    task: "brain".into(),
                    setting,
                    backbone: backbone.clone(),
                    val_balanced_accuracy: Some(accuracy),
                    test_balanced_accuracy: if setting == Setting::Id { accuracy } else { 0.5 + 0.04 * ((i * 3) % 10) as f64 },
                    trial: Some(i),
                    lr: Some(1e-3),
                    wd: Some(1e-5),
                    epoch: Some(7),
                });
            }
        }
        results::write_rows(&dir.join(results::SCORES_CSV), &SCORE_COLUMNS, &scores).unwrap();
        results::write_rows(&dir.join(results::PERFORMANCE_CSV), &PERFORMANCE_COLUMNS, &performance).unwrap();
        (scores, performance)
    }

    #[test]
    fn report_writes_every_file_from_the_two_tables() {
        let dir = tempfile::tempdir().unwrap();
        write_results(dir.path());
        let written = run(dir.path(), NothingToCorrelate::Refuse).unwrap();
        for file in [
            "table2.csv",
            "table2.md",
            "fig3.svg",
            "fig3.png",
            "fig3_ood.svg",
            "fig3_ood.png",
            "fig_tau_forest.svg",
            "fig_tau_forest.png",
            "report.md",
        ] {
            assert!(written.files.iter().any(|f| f == file), "{file} not written: {:?}", written.files);
            assert!(std::fs::metadata(dir.path().join(file)).unwrap().len() > 100, "{file} is empty");
        }
        let table: Vec<Table2Row> = results::read_rows(&dir.path().join("table2.csv"), &TABLE2_COLUMNS, Table2Row::key).unwrap();
        assert_eq!(table, written.table);
        let cell = |setting: Setting, metric: &str| table.iter().find(|r| r.setting == setting && r.metric == metric).unwrap().clone();
        // Same order: tau-b 1 with the exact p-value 2/10!; reversed: -1.
        let leep = cell(Setting::Id, "leep");
        assert_eq!(leep.n, 10);
        assert!((leep.tau_b.unwrap() - 1.0).abs() < 1e-12);
        assert!((leep.p_value.unwrap() - 2.0 / 3_628_800.0).abs() < 1e-15);
        assert!((cell(Setting::Id, "gbc").tau_b.unwrap() + 1.0).abs() < 1e-12);
        // Lower is better: negated, so the falling bound agrees perfectly; marked beyond the paper.
        let bound = cell(Setting::Id, "pactran_dir");
        assert!((bound.tau_b.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!((leep.scope.as_str(), bound.scope.as_str()), ("paper", "beyond"));
        // Perfect agreement: every resample too (tau-b 1 or undefined), so the interval is [1, 1];
        // the permutation p-value over 10,000 random orderings is 1/10,001 (no ordering reaches 1).
        let near = |value: Option<f64>, expected: f64| value.is_some_and(|v| (v - expected).abs() < 1e-12);
        for row in [&leep, &bound] {
            assert!(near(row.ci_low, 1.0) && near(row.ci_high, 1.0), "{row:?}");
        }
        assert!((leep.p_permutation.unwrap() - 1.0 / 10_001.0).abs() < 1e-15, "{leep:?}");
        let gbc = cell(Setting::Id, "gbc");
        assert!(near(gbc.ci_low, -1.0) && near(gbc.ci_high, -1.0) && gbc.sign_settled() == Some(true), "{gbc:?}");
        // OOD accuracies are 0.5 + 0.04 * (3i mod 10): tau-b against i counted by hand is 1/45
        // ... computed here independently by counting pairs.
        let ood: Vec<f64> = (0..10).map(|i| ((i * 3) % 10) as f64).collect();
        let mut net = 0i32;
        for i in 0..10 {
            for j in i + 1..10 {
                net += if ood[j] > ood[i] { 1 } else { -1 };
            }
        }
        assert!((cell(Setting::Ood, "leep").tau_b.unwrap() - f64::from(net) / 45.0).abs() < 1e-12);

        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        // LEEP picks net9, the best; GBC picks net0, 0.36 worse.
        // The bound picks its lowest value, net9.
        assert!(
            report.contains("| brain · id | net9 (0.860) | net9 (regret 0.000) | net0 (regret 0.360) | net9 (regret 0.000) |"),
            "{report}"
        );
        assert!(report.contains("pactran_dir † ↓"), "{report}");
        assert!(report.contains("| brain | agrees (settled) | disagrees (settled) | agrees (settled) |"), "{report}");
        assert!(report.contains("**In-distribution**: the sign of tau-b is settled at 95% in 3 of 3"), "{report}");
        assert!(report.contains("| leep | 1 | 1.000 | [1.000, 1.000] | agrees (settled) |"), "{report}");
        // OOD accuracies shuffled: LEEP's tau-b there is net/45 = 1/45, not settled.
        assert!(report.contains("**Out-of-distribution**: the sign of tau-b is settled at 95% in 0 of 3"), "{report}");
        assert!(report.contains("No study.json"), "{report}");
        let svg = std::fs::read_to_string(dir.path().join("fig3.svg")).unwrap();
        assert!(svg.contains("brain · leep") && svg.contains("net7") && svg.contains("τb = 1.000"), "labels missing from the SVG");
        let png = image::open(dir.path().join("fig3.png")).unwrap();
        assert_eq!((png.width(), png.height()), (3 * 330, 290 + 50));
    }

    /// A score that failed on the best backbone does not hide it: the best by accuracy and
    /// each score's regret are over every backbone.
    #[test]
    fn the_best_backbone_counts_one_a_score_failed_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut scores, _) = write_results(dir.path());
        for row in scores.iter_mut().filter(|r| r.backbone == "net9" && r.metric == "leep") {
            row.value = f64::NAN;
        }
        results::write_rows(&dir.path().join(results::SCORES_CSV), &SCORE_COLUMNS, &scores).unwrap();
        run(dir.path(), NothingToCorrelate::Refuse).unwrap();
        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        // LEEP, without net9, picks net8 (0.82): 0.04 below net9 (0.86); GBC's net0 is 0.36 below.
        assert!(
            report.contains("| brain · id | net9 (0.860) | net8 (regret 0.040) | net0 (regret 0.360) | net9 (regret 0.000) |"),
            "{report}"
        );
    }

    /// An accuracy outside [0, 1] (a percentage typed into the table) is refused, naming the row.
    #[test]
    fn an_accuracy_outside_zero_to_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut performance) = write_results(dir.path());
        performance[3].test_balanced_accuracy = 86.0;
        results::write_rows(&dir.path().join(results::PERFORMANCE_CSV), &PERFORMANCE_COLUMNS, &performance).unwrap();
        let message = run(dir.path(), NothingToCorrelate::Refuse).unwrap_err().to_string();
        assert!(
            message.contains("performance.csv: row 5: test_balanced_accuracy is 86") && message.contains("divide it by 100"),
            "{message}"
        );
        performance[3].test_balanced_accuracy = 0.86;
        performance[4].val_balanced_accuracy = Some(f64::NAN);
        results::write_rows(&dir.path().join(results::PERFORMANCE_CSV), &PERFORMANCE_COLUMNS, &performance).unwrap();
        let message = run(dir.path(), NothingToCorrelate::Refuse).unwrap_err().to_string();
        assert!(message.contains("row 6: val_balanced_accuracy is NaN"), "{message}");
    }

    /// A scores.csv or performance.csv with no row matching the other's (emptied, or every
    /// backbone named otherwise) is refused before anything is written; the files there stay.
    #[test]
    fn nothing_to_correlate_is_refused_and_the_tables_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (scores, performance) = write_results(dir.path());
        run(dir.path(), NothingToCorrelate::Refuse).unwrap();
        let written: Vec<Vec<u8>> =
            ["table2.csv", "report.md", "fig3.svg"].iter().map(|f| std::fs::read(dir.path().join(f)).unwrap()).collect();
        let renamed: Vec<PerformanceRow> =
            performance.iter().map(|r| PerformanceRow { backbone: format!("{}x", r.backbone), ..r.clone() }).collect();
        for (scores, performance) in [(&scores[..0], &performance[..]), (&scores[..], &renamed[..])] {
            results::write_rows(&dir.path().join(results::SCORES_CSV), &SCORE_COLUMNS, scores).unwrap();
            results::write_rows(&dir.path().join(results::PERFORMANCE_CSV), &PERFORMANCE_COLUMNS, performance).unwrap();
            let message = run(dir.path(), NothingToCorrelate::Refuse).unwrap_err().to_string();
            assert!(message.contains("nothing to correlate") && message.contains("left as they were"), "{message}");
            let kept: Vec<Vec<u8>> =
                ["table2.csv", "report.md", "fig3.svg"].iter().map(|f| std::fs::read(dir.path().join(f)).unwrap()).collect();
            assert_eq!(kept, written);
            // The study's own step writes the empty report instead.
            let empty = tempfile::tempdir().unwrap();
            for name in [results::SCORES_CSV, results::PERFORMANCE_CSV] {
                std::fs::copy(dir.path().join(name), empty.path().join(name)).unwrap();
            }
            assert!(run(empty.path(), NothingToCorrelate::Write).unwrap().table.is_empty());
        }
    }

    /// A table saved by a spreadsheet with ';' or tabs between its columns is named as such.
    #[test]
    fn a_table_separated_otherwise_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        write_results(dir.path());
        let path = dir.path().join(results::PERFORMANCE_CSV);
        let text = std::fs::read_to_string(&path).unwrap();
        for (separator, named) in [(";", "';'"), ("\t", "'\\t'")] {
            std::fs::write(&path, text.replace(',', separator)).unwrap();
            let message = run(dir.path(), NothingToCorrelate::Refuse).unwrap_err().to_string();
            assert!(message.contains(&format!("its columns are separated by {named}: save it comma-separated")), "{message}");
        }
        // A header that is merely wrong says only that.
        std::fs::write(&path, text.replacen("task,", "tsk,", 1)).unwrap();
        let message = run(dir.path(), NothingToCorrelate::Refuse).unwrap_err().to_string();
        assert!(message.contains("the header is `tsk,") && !message.contains("separated by"), "{message}");
    }

    /// An infinite score (typed in; no step writes one) is refused, naming the row: it was left
    /// out of its correlations unsaid (seen: n = 9 of 10 in table2.csv). NaN, a failed score,
    /// is left out as before.
    #[test]
    fn an_infinite_score_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut scores, _) = write_results(dir.path());
        scores[2].value = f64::NEG_INFINITY;
        results::write_rows(&dir.path().join(results::SCORES_CSV), &SCORE_COLUMNS, &scores).unwrap();
        let message = run(dir.path(), NothingToCorrelate::Refuse).unwrap_err().to_string();
        let expected = format!("scores.csv: row 4: {} of {} is -inf; a score is a finite number", scores[2].metric, scores[2].backbone);
        assert!(message.contains(&expected), "{message}");
    }

    #[test]
    fn provenance_and_the_published_values_appear_in_the_report() {
        let dir = tempfile::tempdir().unwrap();
        write_results(dir.path());
        let provenance = Provenance {
            command: "cargo xtask reproduce --splits grouped".into(),
            device: "cpu".into(),
            trials: 75,
            epochs: 100,
            batch: 128,
            splits: vec![SplitNote {
                task: "brain".into(),
                dataset: "brain-tumor-kaggle".into(),
                ood_dataset: "nins".into(),
                source: "grouped".into(),
                seed: Some(0),
                images: [("train".to_string(), 5)].into_iter().collect(),
                leakage: "0 of 3 groups span splits".into(),
            }],
            deviations: vec!["patient-grouped splits (--splits grouped)".into()],
            ..Provenance::default()
        };
        std::fs::write(dir.path().join(PROVENANCE_FILE), serde_json::to_vec(&provenance).unwrap()).unwrap();
        run(dir.path(), NothingToCorrelate::Refuse).unwrap();
        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(report.contains("- patient-grouped splits (--splits grouped)"), "{report}");
        assert!(report.contains("| brain | brain-tumor-kaggle | nins | grouped | 5 |"), "{report}");
        // Published brain ID: LEEP 0.090, GBC 0.135.
        assert!(report.contains("| brain · id | | 0.090 | 0.135 |"), "{report}");

        std::fs::write(dir.path().join(PROVENANCE_FILE), "{").unwrap();
        assert!(format!("{:#}", run(dir.path(), NothingToCorrelate::Refuse).unwrap_err()).contains("study.json"));
    }
}
