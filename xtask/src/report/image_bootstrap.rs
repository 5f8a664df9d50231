//! `cargo xtask image-bootstrap`: how much of a tau-b's spread comes from the sample of target
//! images? For each task and setting the images are resampled with replacement within each class
//! (the same draw for every backbone; by default a group at a time, each patient, lesion or
//! slide of the split with all its images, `--resample-by images` drawing images one by one),
//! each backbone's scores are recomputed on its stored features of the resample, and tau-b is taken against the fine-tuned accuracies, which stay
//! fixed (retraining per resample is what the study cannot afford). A score defined over the set
//! of backbones (ETran, NCTI) is recombined on each resample from every backbone's terms on it.
//! Writes each score's 95% interval per backbone (Fig. 3's error bars) and each tau-b's interval
//! over the resamples (report.md sets it beside the interval over backbones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use medxfer_scores::{Metric, ScoreInput, SharedAnalysis, combine_terms, kendall_tau_b, read_feature_file};
use serde::{Deserialize, Serialize};

use super::uncertainty::{BootstrapSettings, bias_corrected_interval, cell_rng, quantile};
use crate::features::{GroupedDraw, resampled};
use crate::results::{self, Setting};
use crate::weights::folder_name;

pub const SCORE_INTERVALS_CSV: &str = "image_bootstrap_scores.csv";
pub const TAU_INTERVALS_CSV: &str = "image_bootstrap_tau.csv";

/// The scores cheap enough to recompute hundreds of times by default: all but N-LEEP (a mixture
/// fit per resample), the authors' TransRate (a second Gram and eigendecomposition) and
/// PACTran-Gauss (an optimiser). NCTI's terms cost little beside the others: they reuse the
/// covariance eigendecomposition the H-scores compute.
pub const CHEAP: [Metric; 12] = [
    Metric::HScore,
    Metric::Nce,
    Metric::Leep,
    Metric::LogMe,
    Metric::RegHScore,
    Metric::Gbc,
    Metric::Transrate,
    Metric::Sfda,
    Metric::PactranDir,
    Metric::PactranGam,
    Metric::Etran,
    Metric::Ncti,
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub results: PathBuf,
    pub resamples: usize,
    pub metrics: Vec<Metric>,
    /// The bootstrap seed; study.json's when absent.
    pub seed: Option<u64>,
    pub resample_by: ResampleBy,
    pub interval: Interval,
}

/// What one draw of the bootstrap takes (`image-bootstrap --resample-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResampleBy {
    /// A group of the split (a patient, a lesion, a slide) with all its images: a patient's
    /// images are alike, and drawn one by one they count as that many patients, which narrows
    /// the intervals. A dataset without groups has one image per group.
    Groups,
    /// Each image on its own.
    Images,
}

impl ResampleBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Groups => "groups",
            Self::Images => "images",
        }
    }
}

/// How the 95% interval is read off the resamples (`image-bootstrap --interval`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interval {
    /// The 2.5% and 97.5% quantiles of the resamples.
    #[default]
    Percentile,
    /// Efron's bias-corrected percentile interval: the quantiles shifted by how far the
    /// resamples' median lies off the value on the full images. A resample repeats about a third
    /// of its images, and scores that fit few distinct points better (H-score, TransRate, LogME)
    /// rise on it; the percentile interval then holds that rise as well as the spread.
    BiasCorrected,
}

impl Interval {
    /// The interval of sorted resampled values of a statistic whose value on the full images is
    /// `observed`.
    fn bounds(self, sorted: &[f64], observed: f64) -> (f64, f64) {
        match self {
            Self::Percentile => (quantile(sorted, 0.025), quantile(sorted, 0.975)),
            Self::BiasCorrected => bias_corrected_interval(sorted, observed),
        }
    }
}

/// One backbone's score on the full images and its 95% interval over the image resamples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreInterval {
    pub task: String,
    pub setting: Setting,
    pub metric: String,
    pub backbone: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl ScoreInterval {
    pub fn key(&self) -> (String, Setting, String, String) {
        (self.task.clone(), self.setting, self.metric.clone(), self.backbone.clone())
    }
}

pub const SCORE_INTERVAL_COLUMNS: [&str; 7] = ["task", "setting", "metric", "backbone", "value", "low", "high"];

/// tau-b against the fixed accuracies over the image resamples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauInterval {
    pub task: String,
    pub setting: Setting,
    pub metric: String,
    pub n: usize,
    /// Resamples on which tau-b was defined.
    pub resamples: usize,
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// What one resample cost: every backbone rescored.
    pub seconds_per_resample: f64,
    /// The images of the set, and the groups drawn (as many as the images where each is drawn
    /// on its own); 0 in a file written before they were recorded.
    #[serde(default)]
    pub images: usize,
    #[serde(default)]
    pub groups: usize,
    /// How the intervals of this score (its tau-b's and its values') were read off the
    /// resamples; percentile in a file written before the choice existed.
    #[serde(default)]
    pub interval: Interval,
}

impl TauInterval {
    pub fn key(&self) -> (String, Setting, String) {
        (self.task.clone(), self.setting, self.metric.clone())
    }
}

/// Where each (task, setting)'s intervals are kept with what made them (`<task>-<setting>.json`).
pub const CELLS_DIR: &str = "image_bootstrap";

/// What made one (task, setting)'s intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CellKey {
    resamples: usize,
    seed: u64,
    metrics: Vec<String>,
    /// Each backbone, its fixed accuracy and its feature file's checksum, in order.
    backbones: Vec<(String, f64, String)>,
    /// `groups` or `images`; cells kept before the option existed drew images.
    #[serde(default = "images_by_default")]
    resample_by: String,
    /// Cells kept before the choice existed hold percentile intervals.
    #[serde(default)]
    interval: Interval,
}

fn images_by_default() -> String {
    ResampleBy::Images.as_str().to_string()
}

/// One (task, setting)'s intervals, as `image-bootstrap` keeps them between runs.
#[derive(Debug, Serialize, Deserialize)]
struct Cell {
    key: CellKey,
    scores: Vec<ScoreInterval>,
    taus: Vec<TauInterval>,
}

/// The cell kept at `path`; None where there is none, or (with a warning) where it cannot be
/// read: it is then resampled again.
fn read_cell(path: &Path) -> Option<Cell> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text)
        .inspect_err(|error| eprintln!("warning: {} cannot be read ({error}); resampling that cell again", path.display()))
        .ok()
}

pub const TAU_INTERVAL_COLUMNS: [&str; 11] =
    ["task", "setting", "metric", "n", "resamples", "low", "high", "seconds_per_resample", "images", "groups", "interval"];
/// The tau-b intervals' columns in files written before: before the interval was a choice, and
/// before the images and groups drawn were recorded. Both are still read.
const TAU_INTERVAL_COLUMNS_BEFORE: [&[&str]; 2] = [
    &["task", "setting", "metric", "n", "resamples", "low", "high", "seconds_per_resample", "images", "groups"],
    &["task", "setting", "metric", "n", "resamples", "low", "high", "seconds_per_resample"],
];

/// The whole bootstrap; writes the two CSV files into the results folder, and each (task,
/// setting)'s intervals into its [`CELLS_DIR`] as soon as they are done, which a rerun with the
/// same settings reuses.
pub fn run(settings: &Settings) -> Result<(Vec<ScoreInterval>, Vec<TauInterval>)> {
    let out = &settings.results;
    if settings.resamples == 0 {
        bail!(
            "--resamples 0: an interval needs resamples (200 by default; a 95% interval rests on its 2.5% tails, so 1,000 or more for a publication)"
        );
    }
    if settings.metrics.is_empty() {
        bail!("--metrics names no score");
    }
    if let Some(warning) = few_resamples_warning(settings.resamples) {
        eprintln!("warning: {warning}");
    }
    // Read before the hours of resampling, so that a damaged file stops the run at once.
    let earlier = read(out).context("reading the intervals an earlier image-bootstrap wrote (remove both files to start afresh)")?;
    let performance = results::read_performance(out)?;
    let seed = match settings.seed {
        Some(seed) => seed,
        None => super::read_provenance(out)?.map(|p| p.bootstrap.seed).unwrap_or_default(),
    };
    let bootstrap = BootstrapSettings { resamples: settings.resamples, seed };
    let mut groups: BTreeMap<(String, Setting), Vec<(String, f64)>> = BTreeMap::new();
    for row in &performance {
        groups.entry((row.task.clone(), row.setting)).or_default().push((row.backbone.clone(), row.test_balanced_accuracy));
    }
    let (mut score_rows, mut tau_rows) = (Vec::new(), Vec::new());
    // Feature files performance.csv's rows call for but the folder lacks.
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut resampled_cells = 0;
    for ((task, setting), backbones) in &groups {
        // (backbone, accuracy, feature file) of each backbone whose file is there.
        let mut present: Vec<(&String, f64, PathBuf)> = Vec::new();
        for (backbone, accuracy) in backbones {
            let path = feature_file(out, task, backbone, *setting);
            if path.exists() {
                present.push((backbone, *accuracy, path));
            } else {
                missing.push(path);
            }
        }
        if present.len() < backbones.len() {
            eprintln!(
                "warning: {task} {}: {} of {} backbones have no feature file in {}; {}",
                setting.as_str(),
                backbones.len() - present.len(),
                backbones.len(),
                out.join("features").join(task).display(),
                if present.len() < 2 { "left out (a tau-b needs two)" } else { "resampling the others" }
            );
        }
        if present.len() < 2 {
            continue;
        }
        resampled_cells += 1;
        // A cell done before with the same resamples, seed, scores, backbones, accuracies and
        // feature files is taken as it is, its feature files not read: a killed run loses at
        // most the cell it was in.
        let key = CellKey {
            resamples: settings.resamples,
            seed,
            metrics: settings.metrics.iter().map(|m| m.as_str().to_string()).collect(),
            resample_by: settings.resample_by.as_str().to_string(),
            interval: settings.interval,
            backbones: present
                .iter()
                .map(|(backbone, accuracy, path)| Ok(((*backbone).clone(), *accuracy, crate::weights::checksum(path)?)))
                .collect::<Result<_>>()?,
        };
        let cell_path = out.join(CELLS_DIR).join(format!("{task}-{}.json", setting.as_str()));
        let cell = match read_cell(&cell_path) {
            Some(cell) if cell.key == key => {
                eprintln!("{task} {}: resampled before with these settings, taken from {}", setting.as_str(), cell_path.display());
                cell
            }
            _ => {
                let cell = resample_cell((task, *setting), &present, settings, bootstrap, key)?;
                let text = serde_json::to_string_pretty(&cell)?;
                medxfer_durable::write_atomic(&cell_path, text.as_bytes())
                    .with_context(|| format!("cannot write {}", cell_path.display()))?;
                cell
            }
        };
        score_rows.extend(cell.scores);
        tau_rows.extend(cell.taus);
    }
    if resampled_cells == 0 {
        bail!(
            "{}: no task has the feature files of two backbones to resample (the first missing: {}); image-bootstrap rescores \
             the features reproduce kept: copy the study's features/ folder along with its CSV files",
            out.display(),
            missing.first().map_or_else(|| "none; performance.csv has no rows".to_string(), |p| p.display().to_string())
        );
    }
    // The intervals of scores this run did not recompute stay: adding a score later (`--metrics
    // n_leep` after the default cheap ones) must not discard hours of resampling. Rows stay in
    // (task, setting, score) order, each group's backbones in their order.
    if let Some((earlier_scores, earlier_taus)) = earlier {
        let recomputed = |metric: &str| settings.metrics.iter().any(|m| m.as_str() == metric);
        score_rows.extend(earlier_scores.into_iter().filter(|r| !recomputed(&r.metric)));
        tau_rows.extend(earlier_taus.into_iter().filter(|r| !recomputed(&r.metric)));
        let order = |metric: &str| (metric.parse::<Metric>().ok(), metric.to_string());
        score_rows.sort_by_cached_key(|r| (r.task.clone(), r.setting, order(&r.metric)));
        tau_rows.sort_by_cached_key(|r| (r.task.clone(), r.setting, order(&r.metric)));
    }
    results::write_rows(&out.join(SCORE_INTERVALS_CSV), &SCORE_INTERVAL_COLUMNS, &score_rows)?;
    results::write_rows(&out.join(TAU_INTERVALS_CSV), &TAU_INTERVAL_COLUMNS, &tau_rows)?;
    Ok((score_rows, tau_rows))
}

/// The intervals of one (task, setting) cell: the `present` backbones' feature files read (each
/// (backbone, test accuracy, file)), checked to cover the same images, and resampled by
/// `settings`' unit; `key` the cell's.
fn resample_cell(
    (task, setting): (&str, Setting),
    present: &[(&String, f64, PathBuf)],
    settings: &Settings,
    bootstrap: BootstrapSettings,
    key: CellKey,
) -> Result<Cell> {
    let members: Vec<(String, f64, ScoreInput)> = present
        .iter()
        .map(|(backbone, accuracy, path)| {
            let input = read_feature_file(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(((*backbone).clone(), *accuracy, input))
        })
        .collect::<Result<_>>()?;
    if let Err(medxfer_scores::Error::NotTheSameSamples { model, problem }) =
        medxfer_scores::check_same_samples(members.iter().map(|member| &member.2))
    {
        bail!(
            "{task} {}: {}'s and {}'s feature files do not cover the same images ({problem}); rerun reproduce",
            setting.as_str(),
            members[0].0,
            members[model - 1].0
        );
    }
    let groups = match settings.resample_by {
        ResampleBy::Groups => split_groups(&settings.results, task, setting, members[0].2.labels())?,
        ResampleBy::Images => (0..members[0].2.labels().len()).map(|i| i.to_string()).collect(),
    };
    let (scores, taus) = cell_intervals(task, setting, &members, &groups, settings, bootstrap)?;
    Ok(Cell { key, scores, taus })
}

/// Each feature row's group: the split's group column of the part the setting's features were
/// extracted from (the train part for `id`, the OOD set for `ood`), row for row: its labels
/// must be the features' `labels`.
fn split_groups(out: &Path, task: &str, setting: Setting, labels: &[usize]) -> Result<Vec<String>> {
    let part = match setting {
        Setting::Id => "train",
        Setting::Ood => "ood",
    };
    // Layout::splits's folder: the report reads a results folder without depending on the study.
    let path = out.join("splits").join(task).join(format!("{part}.csv"));
    if !path.exists() {
        bail!(
            "{}: not there, and it says which images are one patient's (a group, drawn whole by --resample-by groups): \
             copy the study's splits/ folder too, or pass --resample-by images",
            path.display()
        );
    }
    let entries = medxfer_data::read_manifest(&path)?;
    let other_split = |what: String| {
        anyhow::anyhow!(
            "{}: {what}: the {task} {} features were extracted from another split; rerun reproduce",
            path.display(),
            setting.as_str()
        )
    };
    if entries.len() != labels.len() {
        return Err(other_split(format!("{} images, the feature files {}", entries.len(), labels.len())));
    }
    if let Some(row) = (0..labels.len()).find(|&row| entries[row].label as usize != labels[row]) {
        return Err(other_split(format!("line {} has label {}, the features' row {row} {}", row + 2, entries[row].label, labels[row])));
    }
    Ok(entries.into_iter().map(|e| e.group).collect())
}

/// One (task, setting)'s intervals: `settings.resamples` stratified draws of the images by their
/// `groups` (one per feature row), every backbone rescored on each.
fn cell_intervals(
    task: &str,
    setting: Setting,
    members: &[(String, f64, ScoreInput)],
    groups: &[String],
    settings: &Settings,
    bootstrap: BootstrapSettings,
) -> Result<(Vec<ScoreInterval>, Vec<TauInterval>)> {
    let (mut score_rows, mut tau_rows) = (Vec::new(), Vec::new());
    eprintln!("{task} {}: {} backbones, {} resamples ...", setting.as_str(), members.len(), settings.resamples);
    let start = Instant::now();
    let inputs: Vec<&ScoreInput> = members.iter().map(|m| &m.2).collect();
    let (observed, failures) = set_scores(&inputs, &settings.metrics);
    // A score that cannot be computed on the full images gets no interval; say why once
    // (too few images for ETran's energy term, fewer than 64 features for NCTI's PCA, ...).
    for (metric, why) in &failures {
        eprintln!("{task} {}: {} left out: {why}", setting.as_str(), metric.as_str());
    }
    // values[backbone][metric] -> one value per resample (NaN where the score failed).
    let mut values: Vec<BTreeMap<Metric, Vec<f64>>> = vec![BTreeMap::new(); members.len()];
    let mut rng = cell_rng(bootstrap, &format!("images/{task}/{}", setting.as_str()));
    let draw = GroupedDraw::new(members[0].2.labels(), groups);
    for _ in 0..settings.resamples {
        let picks = draw.draw(&mut rng);
        let drawn = members.iter().map(|m| resampled(&m.2, &picks)).collect::<Result<Vec<_>>>()?;
        let (scores, _) = set_scores(&drawn.iter().collect::<Vec<_>>(), &settings.metrics);
        for (scores, store) in scores.iter().zip(values.iter_mut()) {
            for &metric in &settings.metrics {
                store.entry(metric).or_default().push(scores.get(&metric).copied().unwrap_or(f64::NAN));
            }
        }
    }
    let seconds_per_resample = start.elapsed().as_secs_f64() / settings.resamples.max(1) as f64;
    let accuracies: Vec<f64> = members.iter().map(|m| m.1).collect();
    for &metric in &settings.metrics {
        for ((member, observed), store) in members.iter().zip(&observed).zip(&values) {
            let (Some(&value), Some(drawn)) = (observed.get(&metric), store.get(&metric)) else { continue };
            let mut finite: Vec<f64> = drawn.iter().copied().filter(|v| v.is_finite()).collect();
            if finite.len() * 2 < settings.resamples {
                continue;
            }
            finite.sort_by(f64::total_cmp);
            let (low, high) = settings.interval.bounds(&finite, value);
            score_rows.push(ScoreInterval {
                task: task.to_string(),
                setting,
                metric: metric.as_str().to_string(),
                backbone: member.0.clone(),
                value,
                low,
                high,
            });
        }
        let sign = if metric.direction() == medxfer_scores::Direction::Lower { -1.0 } else { 1.0 };
        // tau-b on the full images, which the bias-corrected interval is centred on.
        let observed_tau = observed
            .iter()
            .map(|scores| scores.get(&metric).map(|v| sign * v))
            .collect::<Option<Vec<f64>>>()
            .and_then(|x| kendall_tau_b(&x, &accuracies).ok())
            .map(|k| k.tau)
            .filter(|t| t.is_finite());
        let mut taus: Vec<f64> = (0..settings.resamples)
            .filter_map(|r| {
                let x: Option<Vec<f64>> = values.iter().map(|v| v.get(&metric).map(|d| sign * d[r]).filter(|x| x.is_finite())).collect();
                kendall_tau_b(&x?, &accuracies).ok().map(|k| k.tau).filter(|t| t.is_finite())
            })
            .collect();
        taus.sort_by(f64::total_cmp);
        let enough = !taus.is_empty() && taus.len() * 2 >= settings.resamples;
        let bounds = match (enough, settings.interval, observed_tau) {
            (false, ..) => None,
            (true, Interval::Percentile, _) => Some(Interval::Percentile.bounds(&taus, f64::NAN)),
            (true, Interval::BiasCorrected, observed) => observed.map(|tau| Interval::BiasCorrected.bounds(&taus, tau)),
        };
        tau_rows.push(TauInterval {
            task: task.to_string(),
            setting,
            metric: metric.as_str().to_string(),
            n: members.len(),
            resamples: taus.len(),
            low: bounds.map(|b| b.0),
            high: bounds.map(|b| b.1),
            seconds_per_resample,
            images: groups.len(),
            groups: draw.groups(),
            interval: settings.interval,
        });
    }
    Ok((score_rows, tau_rows))
}

/// Below 40 resamples a 2.5% tail holds less than one of them: the "95% interval" is then the
/// range of a few draws (with 1, a point), which reads as a precision the run did not measure.
/// Said, not refused: a few resamples are a fair smoke test.
fn few_resamples_warning(resamples: usize) -> Option<String> {
    (resamples * 25 < 1000).then(|| {
        format!(
            "--resamples {resamples}: each 2.5% tail of a 95% interval holds less than one resample, so the intervals are the range of {resamples} draw(s), narrower than the truth; use 200 or more (1,000 for a publication)"
        )
    })
}

/// Each backbone's scores on the same images: the per-model ones from one shared analysis per
/// backbone (a failure leaves that score out), the set-level ones combined over the backbones
/// from their terms (left out everywhere where a backbone's terms fail); and, per score left out
/// anywhere, the first failure's reason.
fn set_scores(inputs: &[&ScoreInput], metrics: &[Metric]) -> (Vec<BTreeMap<Metric, f64>>, BTreeMap<Metric, String>) {
    let set_level: Vec<Metric> = metrics.iter().copied().filter(|m| m.is_set_level()).collect();
    let mut scores = Vec::with_capacity(inputs.len());
    let mut failures: BTreeMap<Metric, String> = BTreeMap::new();
    let mut terms: Vec<Vec<Option<Vec<f64>>>> = vec![Vec::new(); set_level.len()];
    for input in inputs {
        let shared = SharedAnalysis::new(input);
        shared.prepare(metrics);
        let mut row = BTreeMap::new();
        for &metric in metrics.iter().filter(|m| !m.is_set_level()) {
            match shared.score(metric) {
                Ok(value) => _ = row.insert(metric, value),
                Err(error) => _ = failures.entry(metric).or_insert_with(|| error.to_string()),
            }
        }
        scores.push(row);
        for (metric, terms) in set_level.iter().zip(terms.iter_mut()) {
            match shared.set_terms(*metric) {
                Ok(found) => terms.push(Some(found)),
                Err(error) => {
                    failures.entry(*metric).or_insert_with(|| error.to_string());
                    terms.push(None);
                }
            }
        }
    }
    for (metric, terms) in set_level.iter().zip(terms) {
        let Some(terms) = terms.into_iter().collect::<Option<Vec<_>>>() else { continue };
        match combine_terms(*metric, &terms) {
            Ok(values) => {
                for (scores, value) in scores.iter_mut().zip(values) {
                    scores.insert(*metric, value);
                }
            }
            Err(error) => _ = failures.entry(*metric).or_insert_with(|| error.to_string()),
        }
    }
    (scores, failures)
}

fn feature_file(out: &Path, task: &str, backbone: &str, setting: Setting) -> PathBuf {
    out.join("features").join(task).join(folder_name(backbone)).join(format!("{}.safetensors", setting.as_str()))
}

/// Both files when `image-bootstrap` wrote them into `out`.
pub fn read(out: &Path) -> Result<Option<(Vec<ScoreInterval>, Vec<TauInterval>)>> {
    let (scores, taus) = (out.join(SCORE_INTERVALS_CSV), out.join(TAU_INTERVALS_CSV));
    if !scores.exists() || !taus.exists() {
        return Ok(None);
    }
    Ok(Some((
        results::read_rows(&scores, &SCORE_INTERVAL_COLUMNS, ScoreInterval::key)?,
        results::read_rows(&taus, tau_columns(&taus), TauInterval::key)?,
    )))
}

/// The columns the tau-b intervals at `path` were written with: the current ones, or those of
/// an older file (read with percentile intervals, and 0 images and groups where they were not
/// recorded).
fn tau_columns(path: &Path) -> &'static [&'static str] {
    let header = std::fs::read_to_string(path).ok().and_then(|text| text.lines().next().map(|line| line.trim().to_string()));
    TAU_INTERVAL_COLUMNS_BEFORE.into_iter().find(|columns| header.as_deref() == Some(&columns.join(","))).unwrap_or(&TAU_INTERVAL_COLUMNS)
}

#[cfg(test)]
mod tests {
    use medxfer_scores::faer::Mat;
    use medxfer_scores::score_set;

    use super::*;

    /// The bound where 2.5% of the resamples is one resample: 40.
    #[test]
    fn fewer_than_forty_resamples_are_said_to_give_no_real_tail() {
        for resamples in [1, 5, 39] {
            let warning = few_resamples_warning(resamples).expect("warned");
            assert!(warning.contains(&format!("--resamples {resamples}")) && warning.contains("200 or more"), "{warning}");
        }
        assert_eq!(few_resamples_warning(40), None);
        assert_eq!(few_resamples_warning(200), None);
    }

    /// Three backbones' features of the same 240 images: the per-model scores are score_all's,
    /// and ETran, defined over the set, is score_set's combination over the three.
    #[test]
    fn set_level_scores_are_combined_over_the_backbones() {
        let labels: Vec<i64> = (0..240).map(|i| (i % 3) as i64).collect();
        let inputs: Vec<ScoreInput> = (0..3)
            .map(|b| {
                let features = Mat::from_fn(240, 6, |i, j| {
                    (((i * 17 + j * 5 + b * 11) % 13) as f64) / 4.0 + if i % 3 == j % 3 { 1.0 + b as f64 * 0.4 } else { 0.0 }
                });
                ScoreInput::new(features, &labels).unwrap()
            })
            .collect();
        let refs: Vec<&ScoreInput> = inputs.iter().collect();
        let (scores, failures) = set_scores(&refs, &[Metric::HScore, Metric::Etran]);
        assert!(failures.is_empty(), "{failures:?}");
        let etran = score_set(&inputs, &[Metric::Etran]).unwrap().remove(0).1;
        for ((scores, input), etran) in scores.iter().zip(&inputs).zip(etran) {
            assert_eq!(scores[&Metric::Etran], etran);
            assert_eq!(scores[&Metric::HScore], medxfer_scores::score_all(input, &[Metric::HScore]).unwrap()[0].1);
        }
        // One backbone whose terms fail (too few images for ETran's energy) leaves ETran out
        // for all, and keeps the per-model scores.
        let few: Vec<ScoreInput> = inputs.iter().map(|input| resampled(input, &(0..60).collect::<Vec<_>>()).unwrap()).collect();
        let (scores, failures) = set_scores(&few.iter().collect::<Vec<_>>(), &[Metric::HScore, Metric::Etran]);
        assert!(scores.iter().all(|s| !s.contains_key(&Metric::Etran) && s.contains_key(&Metric::HScore)), "{scores:?}");
        // ... and says why, once.
        assert_eq!(failures.keys().collect::<Vec<_>>(), [&Metric::Etran]);
        assert!(failures[&Metric::Etran].contains("needs at least 200 samples, got 60"), "{failures:?}");
    }
}
