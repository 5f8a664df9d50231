//! The study's result tables, `scores.csv` and `performance.csv`: the contract between
//! `reproduce` (which writes them) and `report` (which needs nothing else). Columns are checked
//! by name so a file from elsewhere with a wrong header gets an error saying which.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use medxfer_scores::Metric;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Scores file name under the results directory.
pub const SCORES_CSV: &str = "scores.csv";
/// Performance file name under the results directory.
pub const PERFORMANCE_CSV: &str = "performance.csv";

/// In-distribution (pretrained features, test split) or out-of-distribution (A_opt, OOD set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    Id,
    Ood,
}

impl Setting {
    pub const BOTH: [Setting; 2] = [Setting::Id, Setting::Ood];

    pub fn as_str(self) -> &'static str {
        match self {
            Setting::Id => "id",
            Setting::Ood => "ood",
        }
    }
}

/// One score of one backbone on one task: S_id or S_ood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    pub task: String,
    pub setting: Setting,
    pub backbone: String,
    /// As medxfer-scores spells it (h_score, nce, leep, n_leep, logme, reg_h_score, gbc, the
    /// newer ones), or a set-level score's per-model term (`etran_energy`, `ncti_seli`, ...).
    pub metric: String,
    pub value: f64,
}

/// One backbone's A_opt on one task: P_id (setting id) or P_ood (setting ood, where
/// `test_balanced_accuracy` is the OOD balanced accuracy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceRow {
    pub task: String,
    pub setting: Setting,
    pub backbone: String,
    pub val_balanced_accuracy: Option<f64>,
    pub test_balanced_accuracy: f64,
    pub trial: Option<usize>,
    pub lr: Option<f64>,
    pub wd: Option<f64>,
    pub epoch: Option<usize>,
}

pub const SCORE_COLUMNS: [&str; 5] = ["task", "setting", "backbone", "metric", "value"];
pub const PERFORMANCE_COLUMNS: [&str; 9] =
    ["task", "setting", "backbone", "val_balanced_accuracy", "test_balanced_accuracy", "trial", "lr", "wd", "epoch"];

/// Rows of a results CSV whose header must be exactly `columns`, with the line each starts on.
fn read_lines<T: DeserializeOwned>(path: &Path, columns: &[&str]) -> Result<Vec<(u64, T)>> {
    if !path.exists() {
        let folder = path.parent().unwrap_or(Path::new("."));
        let what = if folder.is_dir() { "has no" } else { "is not a folder, so no" };
        bail!(
            "{} {what} {}: give --results a study's results folder (reproduce's --out), which holds scores.csv and performance.csv",
            folder.display(),
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
    }
    // Spaces around a field (typed-in or spreadsheet results: " 0.85 ", "resnet18 ") are not
    // part of it: a number failed to parse ("invalid float literal"), a name matched nothing.
    let mut reader =
        csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader.headers().with_context(|| format!("{}: no header", path.display()))?.clone();
    if header.iter().ne(columns.iter().copied()) {
        bail!(
            "{}: the header is `{}`; expected `{}`{}",
            path.display(),
            header.iter().collect::<Vec<_>>().join(","),
            columns.join(","),
            separator_hint(&header)
        );
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: a row is not valid CSV", path.display()))?;
        let line = record.position().map_or(0, csv::Position::line);
        let row = record.deserialize(Some(&header)).with_context(|| format!("{}: row {line} is not valid", path.display()))?;
        rows.push((line, row));
    }
    Ok(rows)
}

/// What to do about a header read as one column because its file is separated otherwise: a
/// spreadsheet saved in a locale whose decimal mark is the comma writes `;`, and "save as text"
/// writes tabs. Empty when the header is not one such column.
pub fn separator_hint(header: &csv::StringRecord) -> String {
    let only = if header.len() == 1 { header.get(0).unwrap_or_default() } else { "" };
    match [';', '\t'].into_iter().find(|&c| only.contains(c)) {
        Some(separator) => format!(" (its columns are separated by {separator:?}: save it comma-separated, with '.' as the decimal mark)"),
        None => String::new(),
    }
}

/// Rows of a results CSV whose header must be exactly `columns` and where no two rows share a
/// `key`: a table with two values for one cell cannot say which is true, so it is refused,
/// naming both lines.
pub fn read_rows<T: DeserializeOwned, K: Ord + std::fmt::Debug>(path: &Path, columns: &[&str], key: impl Fn(&T) -> K) -> Result<Vec<T>> {
    let rows = read_lines(path, columns)?;
    let mut first_line: BTreeMap<K, u64> = BTreeMap::new();
    for (line, row) in &rows {
        if let Some(first) = first_line.insert(key(row), *line) {
            bail!(
                "{}: rows {first} and {line} are both {:?}; a table holds one row per key: remove one (or rerun the step that writes it)",
                path.display(),
                key(row)
            );
        }
    }
    Ok(rows.into_iter().map(|(_, row)| row).collect())
}

/// Writes rows as CSV atomically (a temporary file renamed over the target).
pub fn write_rows<T: Serialize>(path: &Path, columns: &[&str], rows: &[T]) -> Result<()> {
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    writer.write_record(columns)?;
    for row in rows {
        writer.serialize(row)?;
    }
    let bytes = writer.into_inner().context("flushing CSV")?;
    medxfer_durable::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

pub fn read_scores(dir: &Path) -> Result<Vec<ScoreRow>> {
    let rows: Vec<ScoreRow> =
        read_rows(&dir.join(SCORES_CSV), &SCORE_COLUMNS, |r: &ScoreRow| (r.task.clone(), r.setting, r.backbone.clone(), r.metric.clone()))?;
    for (i, row) in rows.iter().enumerate() {
        // NaN stands for a score that failed on that backbone (left out of its correlations);
        // an infinite value no score gives and no step writes was left out the same way unsaid.
        if row.value.is_infinite() {
            bail!(
                "{}: row {}: {} of {} is {}; a score is a finite number (NaN where it could not be computed)",
                dir.join(SCORES_CSV).display(),
                i + 2,
                row.metric,
                row.backbone,
                row.value
            );
        }
        if !is_score_key(&row.metric) {
            let keys = score_keys();
            let hint = medxfer_scores::spelled_like(&row.metric, keys.iter().map(String::as_str))
                .map(|key| format!(": did you mean '{key}'?"))
                .unwrap_or_default();
            bail!(
                "{}: row {}: unknown metric '{}'{hint}; a metric is one of {} (or a set-level score's term, {})",
                dir.join(SCORES_CSV).display(),
                i + 2,
                row.metric,
                Metric::every().map(Metric::as_str).collect::<Vec<_>>().join(", "),
                set_level_terms().join(", ")
            );
        }
    }
    Ok(rows)
}

/// A metric name, or the `<metric>_<term>` name of a set-level metric's per-model term.
pub fn is_score_key(name: &str) -> bool {
    score_keys().iter().any(|key| key == name)
}

/// Every name scores.csv's metric column may hold: the metrics, then the set-level terms.
fn score_keys() -> Vec<String> {
    Metric::every().map(|m| m.as_str().to_string()).chain(set_level_terms()).collect()
}

/// The `<metric>_<term>` names of the set-level metrics' per-model terms.
fn set_level_terms() -> Vec<String> {
    Metric::SET_LEVEL.iter().flat_map(|m| m.terms().iter().map(move |t| m.term_key(t))).collect()
}

/// The set-level scores (ETran, NCTI) of each (task, setting) from the backbones' stored terms,
/// combined across the backbones that have every term: one row per backbone. A set of fewer than
/// two backbones, or one whose term is equal across them, has none.
pub fn combine_set_level(scores: &[ScoreRow]) -> Vec<ScoreRow> {
    // (task, setting) -> backbone -> metric or term -> value.
    type ByBackbone<'a> = BTreeMap<&'a str, BTreeMap<&'a str, f64>>;
    let mut groups: BTreeMap<(&str, Setting), ByBackbone<'_>> = BTreeMap::new();
    for row in scores {
        groups
            .entry((row.task.as_str(), row.setting))
            .or_default()
            .entry(row.backbone.as_str())
            .or_default()
            .insert(row.metric.as_str(), row.value);
    }
    let mut combined = Vec::new();
    for ((task, setting), backbones) in &groups {
        for metric in Metric::SET_LEVEL {
            let keys: Vec<String> = metric.terms().iter().map(|t| metric.term_key(t)).collect();
            let members: Vec<(&str, Vec<f64>)> = backbones
                .iter()
                .filter_map(|(backbone, values)| {
                    let terms: Option<Vec<f64>> = keys.iter().map(|k| values.get(k.as_str()).copied().filter(|v| v.is_finite())).collect();
                    terms.map(|t| (*backbone, t))
                })
                .collect();
            let terms: Vec<Vec<f64>> = members.iter().map(|m| m.1.clone()).collect();
            let Ok(values) = medxfer_scores::combine_terms(metric, &terms) else { continue };
            combined.extend(members.iter().zip(values).map(|((backbone, _), value)| ScoreRow {
                task: task.to_string(),
                setting: *setting,
                backbone: backbone.to_string(),
                metric: metric.as_str().to_string(),
                value,
            }));
        }
    }
    combined
}

pub fn read_performance(dir: &Path) -> Result<Vec<PerformanceRow>> {
    let path = dir.join(PERFORMANCE_CSV);
    let rows = read_rows(&path, &PERFORMANCE_COLUMNS, |r: &PerformanceRow| (r.task.clone(), r.setting, r.backbone.clone()))?;
    // Typed-in results (published numbers, another tool's) are where a percentage or a blank
    // read as NaN gets in; every correlation and pick would silently use it.
    for (i, row) in rows.iter().enumerate() {
        for (column, value) in
            [("val_balanced_accuracy", row.val_balanced_accuracy), ("test_balanced_accuracy", Some(row.test_balanced_accuracy))]
        {
            if let Some(value) = value.filter(|v| !(0.0..=1.0).contains(v)) {
                bail!(
                    "{}: row {}: {column} is {value}; a balanced accuracy lies between 0 and 1 (a percentage? divide it by 100)",
                    path.display(),
                    i + 2
                );
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rows_round_trip_and_a_wrong_header_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            PerformanceRow {
                task: "skin".into(),
                setting: Setting::Id,
                backbone: "resnet18".into(),
                val_balanced_accuracy: Some(0.8125),
                test_balanced_accuracy: 0.75,
                trial: Some(3),
                lr: Some(0.017782794100389226),
                wd: Some(1.6681005372000592e-6),
                epoch: Some(41),
            },
            PerformanceRow {
                task: "skin".into(),
                setting: Setting::Ood,
                backbone: "resnet18".into(),
                val_balanced_accuracy: None,
                test_balanced_accuracy: 0.5,
                trial: None,
                lr: None,
                wd: None,
                epoch: None,
            },
        ];
        write_rows(&dir.path().join(PERFORMANCE_CSV), &PERFORMANCE_COLUMNS, &rows).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PERFORMANCE_CSV)).unwrap();
        assert_eq!(text.lines().next().unwrap(), PERFORMANCE_COLUMNS.join(","));
        assert_eq!(text.lines().nth(2).unwrap(), "skin,ood,resnet18,,0.5,,,,");
        assert_eq!(read_performance(dir.path()).unwrap(), rows);
        // Typed in a spreadsheet, with spaces around the fields: the same rows.
        let spaced: String = text.lines().map(|line| format!(" {} \n", line.replace(',', " , "))).collect();
        std::fs::write(dir.path().join(PERFORMANCE_CSV), spaced).unwrap();
        assert_eq!(read_performance(dir.path()).unwrap(), rows);

        // A folder without the file, or no folder: said in those words ("No such file or directory").
        let error = format!("{:#}", read_scores(dir.path()).unwrap_err());
        assert!(error.contains("has no scores.csv: give --results a study's results folder"), "{error}");
        let error = format!("{:#}", read_scores(&dir.path().join("nowhere")).unwrap_err());
        assert!(error.contains("nowhere is not a folder, so no scores.csv"), "{error}");
        std::fs::write(dir.path().join(SCORES_CSV), "task,setting,model,metric,value\nskin,id,resnet18,leep,-0.5\n").unwrap();
        let error = format!("{:#}", read_scores(dir.path()).unwrap_err());
        assert!(error.contains("scores.csv") && error.contains("task,setting,model,metric,value") && error.contains("expected"), "{error}");
        std::fs::write(dir.path().join(SCORES_CSV), "task,setting,backbone,metric,value\nskin,id,resnet18,leap,-0.5\n").unwrap();
        let error = format!("{:#}", read_scores(dir.path()).unwrap_err());
        assert!(error.contains("row 2") && error.contains("leap") && !error.contains("did you mean"), "{error}");
        // Names typed as the paper prints them are a score's, spelled otherwise.
        for (typed, meant) in [("LogME", "logme"), ("H-score", "h_score"), ("NCTI_SeLi", "ncti_seli")] {
            std::fs::write(dir.path().join(SCORES_CSV), format!("task,setting,backbone,metric,value\nskin,id,resnet18,{typed},-0.5\n"))
                .unwrap();
            let error = format!("{:#}", read_scores(dir.path()).unwrap_err());
            assert!(error.contains(&format!("unknown metric '{typed}': did you mean '{meant}'?")), "{error}");
            assert!(error.contains("pactran_gauss") && error.contains("etran_energy"), "the known names: {error}");
        }
    }

    #[test]
    fn two_rows_for_one_cell_are_refused_naming_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SCORES_CSV),
            "task,setting,backbone,metric,value\nskin,id,resnet18,leep,-0.5\nskin,id,resnet34,leep,-0.4\nskin,ood,resnet18,leep,-0.6\nskin,id,resnet18,logme,1.0\nskin,id,resnet18,leep,-0.7\n",
        )
        .unwrap();
        let error = format!("{:#}", read_scores(dir.path()).unwrap_err());
        assert!(error.contains("scores.csv: rows 2 and 6") && error.contains("resnet18") && error.contains("leep"), "{error}");
        std::fs::write(
            dir.path().join(PERFORMANCE_CSV),
            "task,setting,backbone,val_balanced_accuracy,test_balanced_accuracy,trial,lr,wd,epoch\nskin,id,resnet18,0.8,0.75,3,0.01,1e-6,41\nskin,ood,resnet18,,0.5,,,,\nskin,ood,resnet18,,0.6,,,,\n",
        )
        .unwrap();
        let error = format!("{:#}", read_performance(dir.path()).unwrap_err());
        assert!(error.contains("performance.csv: rows 3 and 4"), "{error}");
        // Distinct keys read as before.
        std::fs::write(
            dir.path().join(SCORES_CSV),
            "task,setting,backbone,metric,value\nskin,id,resnet18,leep,-0.5\nskin,ood,resnet18,leep,-0.6\n",
        )
        .unwrap();
        assert_eq!(read_scores(dir.path()).unwrap().len(), 2);
    }

    /// NCTI over three backbones from their stored terms, against the combination computed by
    /// hand: minmax(ncc) + minmax(seli) - minmax(vc); a fourth backbone without terms is left out,
    /// and ETran, whose terms nobody has, gets no rows.
    #[test]
    fn set_level_scores_are_combined_per_task_and_setting_from_the_terms() {
        let row = |backbone: &str, metric: &str, value: f64| ScoreRow {
            task: "skin".into(),
            setting: Setting::Id,
            backbone: backbone.into(),
            metric: metric.into(),
            value,
        };
        let mut scores = Vec::new();
        for (backbone, seli, ncc, vc) in [("a", 10.0, 0.5, 3.0), ("b", 20.0, 0.7, 2.0), ("c", 15.0, 0.9, 2.5)] {
            scores.extend([row(backbone, "ncti_seli", seli), row(backbone, "ncti_ncc", ncc), row(backbone, "ncti_vc", vc)]);
        }
        scores.push(row("d", "ncti_seli", 12.0));
        scores.push(row("d", "leep", -1.0));
        let combined = combine_set_level(&scores);
        // a: 0 + 0 - 1; b: 0.5 + 1 - 0; c: 1 + 0.5 - 0.5.
        let expected = [("a", -1.0), ("b", 1.5), ("c", 1.0)];
        assert_eq!(combined.len(), 3, "{combined:?}");
        for (got, (backbone, value)) in combined.iter().zip(expected) {
            assert_eq!((got.backbone.as_str(), got.metric.as_str()), (backbone, "ncti"));
            assert!((got.value - value).abs() < 1e-12, "{got:?}");
        }
        assert!(is_score_key("ncti_vc") && is_score_key("etran") && !is_score_key("ncti_bogus"));
    }

    #[test]
    fn mutated_tables_read_or_fail_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let scores =
            "task,setting,backbone,metric,value\nskin,id,resnet18,leep,-0.5\nskin,id,resnet34,leep,-0.4\nskin,ood,resnet18,logme,1.25\n";
        let performance = "task,setting,backbone,val_balanced_accuracy,test_balanced_accuracy,trial,lr,wd,epoch\nskin,id,resnet18,0.8,0.75,3,0.01,1e-6,41\nskin,ood,resnet18,,0.5,,,,\n";
        for (name, original) in [(SCORES_CSV, scores), (PERFORMANCE_CSV, performance)] {
            let failures = medxfer_mutate::never_panics(
                1000,
                name.len() as u64,
                |m: &mut medxfer_mutate::Mutator| m.text(original),
                |text: &String| {
                    std::fs::write(dir.path().join(name), text).unwrap();
                    let read =
                        if name == SCORES_CSV { read_scores(dir.path()).map(|_| ()) } else { read_performance(dir.path()).map(|_| ()) };
                    if let Err(error) = read {
                        assert!(format!("{error:#}").contains(name), "{error:#}");
                    }
                },
            );
            assert!(failures.is_empty(), "{}", failures.join("\n"));
        }
    }
}
