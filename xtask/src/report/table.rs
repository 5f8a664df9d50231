//! Table 2: per (task, setting, metric), Kendall's tau-b (with scipy's and a permutation
//! p-value, and a bootstrap interval) and the weighted tau between the backbones' scores and their
//! fine-tuned balanced accuracies.

use std::collections::{BTreeMap, BTreeSet};

use medxfer_scores::{Direction, Metric};
use serde::{Deserialize, Serialize};

use super::uncertainty::{self, BootstrapSettings};
use crate::results::{PERFORMANCE_CSV, PerformanceRow, SCORES_CSV, ScoreRow, Setting};

/// The three tasks in the order the study lists them; others follow alphabetically.
const TASK_ORDER: [&str; 3] = ["skin", "breast", "brain"];

/// One row of table2.csv. Correlations are empty when undefined (fewer than two backbones, or a
/// constant column); the interval with fewer than three backbones. A score where lower is better
/// (PACTran) is negated first, so a positive tau always means "the score agrees with accuracy".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table2Row {
    pub task: String,
    pub setting: Setting,
    pub metric: String,
    /// `paper` for the paper's seven scores, `beyond` for the newer ones.
    pub scope: String,
    pub n: usize,
    pub tau_b: Option<f64>,
    /// scipy.stats.kendalltau's two-sided p-value.
    pub p_value: Option<f64>,
    /// The permutation test's two-sided p-value (exact up to eight backbones).
    pub p_permutation: Option<f64>,
    /// The 95% percentile bootstrap interval of tau-b over the backbones.
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub weighted_tau: Option<f64>,
}

impl Table2Row {
    /// The cell a row fills: one per task, setting and metric.
    pub fn key(&self) -> (String, Setting, String) {
        (self.task.clone(), self.setting, self.metric.clone())
    }

    /// Whether the sign of tau is settled at 95%: the bootstrap interval excludes zero and the
    /// permutation p-value is below 0.05. Both are asked for because the percentile interval of a
    /// perfectly ordered sample collapses onto its tau (every resample is ordered too), however
    /// few the backbones; the permutation test keeps three backbones from settling anything.
    pub fn sign_settled(&self) -> Option<bool> {
        Some((self.ci_low? > 0.0 || self.ci_high? < 0.0) && self.p_permutation? < SETTLED_P)
    }

    /// +1 or -1 where the sign is settled, 0 where it is not, None where undefined.
    pub fn settled_sign(&self) -> Option<i8> {
        let settled = self.sign_settled()?;
        Some(match (settled, self.tau_b? > 0.0) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => -1,
        })
    }
}

/// The permutation p-value below which a sign counts as settled.
pub const SETTLED_P: f64 = 0.05;

pub const TABLE2_COLUMNS: [&str; 11] =
    ["task", "setting", "metric", "scope", "n", "tau_b", "p_value", "p_permutation", "ci_low", "ci_high", "weighted_tau"];

/// `paper` or `beyond`.
pub fn scope(metric: &str) -> &'static str {
    if Metric::ALL.iter().any(|m| m.as_str() == metric) { "paper" } else { "beyond" }
}

/// The mark a metric's name carries in tables and figures: † beyond the paper, ↓ lower is better.
pub fn marks(metric: &str) -> String {
    let beyond = if scope(metric) == "beyond" { " †" } else { "" };
    let lower = if direction(metric) == Direction::Lower { " ↓" } else { "" };
    format!("{beyond}{lower}")
}

/// Which way a metric points (higher is better unless medxfer-scores says lower).
pub fn direction(metric: &str) -> Direction {
    metric.parse::<Metric>().map_or(Direction::Higher, Metric::direction)
}

/// One (task, setting, metric): the backbones with both a score and an accuracy.
#[derive(Debug, Clone)]
pub struct Panel {
    pub task: String,
    pub setting: Setting,
    pub metric: String,
    /// (backbone, score, balanced accuracy), sorted by backbone.
    pub points: Vec<(String, f64, f64)>,
    /// Each point's 95% score interval over image resamples, where `image-bootstrap` ran.
    pub score_intervals: Vec<Option<(f64, f64)>>,
}

impl Panel {
    pub fn scores(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.1).collect()
    }

    /// The scores turned so that higher means better (negated where lower is better).
    pub fn oriented_scores(&self) -> Vec<f64> {
        let sign = match direction(&self.metric) {
            Direction::Higher => 1.0,
            Direction::Lower => -1.0,
        };
        self.points.iter().map(|p| sign * p.1).collect()
    }

    pub fn accuracies(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.2).collect()
    }

    /// The backbone the score ranks first (its direction respected).
    pub fn pick(&self) -> Option<&(String, f64, f64)> {
        let oriented = self.oriented_scores();
        (0..self.points.len()).max_by(|&a, &b| oriented[a].total_cmp(&oriented[b]).then(b.cmp(&a))).map(|i| &self.points[i])
    }

    /// tau-b of the oriented scores against the accuracies.
    pub fn tau_b(&self) -> Option<f64> {
        medxfer_scores::kendall_tau_b(&self.oriented_scores(), &self.accuracies()).ok().map(|k| k.tau).filter(|t| t.is_finite())
    }

    /// The row of Table 2: tau-b, its p-values and its bootstrap interval.
    pub fn correlation(&self, bootstrap: BootstrapSettings) -> Table2Row {
        let (x, y) = (self.oriented_scores(), self.accuracies());
        let tau = medxfer_scores::kendall_tau_b(&x, &y).ok().filter(|k| k.tau.is_finite());
        let mut rng = uncertainty::cell_rng(bootstrap, &format!("{}/{}/{}", self.task, self.setting.as_str(), self.metric));
        let interval = uncertainty::tau_interval(&x, &y, bootstrap.resamples, &mut rng);
        Table2Row {
            task: self.task.clone(),
            setting: self.setting,
            metric: self.metric.clone(),
            scope: scope(&self.metric).to_string(),
            n: self.points.len(),
            tau_b: tau.map(|k| k.tau),
            p_value: tau.map(|k| k.p_value),
            p_permutation: uncertainty::permutation_p(&x, &y, bootstrap.resamples, &mut rng),
            ci_low: interval.map(|i| i.0),
            ci_high: interval.map(|i| i.1),
            weighted_tau: medxfer_scores::weighted_tau(&x, &y).ok().filter(|w| w.is_finite()),
        }
    }
}

/// Tasks present in the results, in the study's order.
pub fn tasks(performance: &[PerformanceRow]) -> Vec<String> {
    let present: BTreeSet<&str> = performance.iter().map(|r| r.task.as_str()).collect();
    let mut tasks: Vec<String> = TASK_ORDER.iter().filter(|t| present.contains(*t)).map(|t| t.to_string()).collect();
    tasks.extend(present.iter().filter(|t| !TASK_ORDER.contains(t)).map(|t| t.to_string()));
    tasks
}

/// Metrics present in the results: the paper's seven in its order, then the newer ones (the
/// set-level terms stored beside them are not metrics of their own).
pub fn metrics(scores: &[ScoreRow]) -> Vec<String> {
    Metric::every().map(|m| m.as_str().to_string()).filter(|m| scores.iter().any(|r| &r.metric == m)).collect()
}

/// The (task, setting, backbone)s one file has and the other lacks: a backbone named otherwise in
/// the two (`ResNet50` and `resnet50`, typed-in results) would drop out of every correlation
/// unsaid. One line each, naming the file that lacks it and a spelling it may have there.
pub fn unmatched(scores: &[ScoreRow], performance: &[PerformanceRow]) -> Vec<String> {
    let scored: BTreeSet<(&str, Setting, &str)> = scores.iter().map(|r| (r.task.as_str(), r.setting, r.backbone.as_str())).collect();
    let measured: BTreeSet<(&str, Setting, &str)> = performance.iter().map(|r| (r.task.as_str(), r.setting, r.backbone.as_str())).collect();
    let lacking = |have: &BTreeSet<(&str, Setting, &str)>, other: &BTreeSet<(&str, Setting, &str)>, lacks: &str| {
        have.difference(other)
            .map(|&(task, setting, backbone)| {
                let there = other.iter().filter(|(t, s, _)| *t == task && *s == setting).map(|(_, _, b)| *b);
                let spelled = medxfer_scores::spelled_like(backbone, there).map(|b| format!(" (it has {b:?})")).unwrap_or_default();
                format!("{task} {} {backbone}: not in {lacks}{spelled}", setting.as_str())
            })
            .collect::<Vec<_>>()
    };
    let mut lines = lacking(&scored, &measured, PERFORMANCE_CSV);
    lines.extend(lacking(&measured, &scored, SCORES_CSV));
    lines
}

/// Every (task, setting, metric) panel that has at least one point, tasks in the study's order,
/// ID before OOD, metrics in the paper's order.
pub fn panels(scores: &[ScoreRow], performance: &[PerformanceRow]) -> Vec<Panel> {
    let accuracy: BTreeMap<(&str, Setting, &str), f64> =
        performance.iter().map(|r| ((r.task.as_str(), r.setting, r.backbone.as_str()), r.test_balanced_accuracy)).collect();
    let mut panels = Vec::new();
    for task in tasks(performance) {
        for setting in Setting::BOTH {
            for metric in metrics(scores) {
                let mut points: Vec<(String, f64, f64)> = scores
                    .iter()
                    .filter(|r| r.task == task && r.setting == setting && r.metric == metric && r.value.is_finite())
                    .filter_map(|r| {
                        accuracy
                            .get(&(r.task.as_str(), setting, r.backbone.as_str()))
                            .filter(|a| a.is_finite())
                            .map(|&a| (r.backbone.clone(), r.value, a))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.cmp(&b.0));
                points.dedup_by(|a, b| a.0 == b.0);
                if !points.is_empty() {
                    let score_intervals = vec![None; points.len()];
                    panels.push(Panel { task: task.clone(), setting, metric: metric.clone(), points, score_intervals });
                }
            }
        }
    }
    panels
}

/// Gives each panel's points their score intervals over image resamples. An interval around
/// another value than the point's score is stale (the features were extracted again, or a score
/// defined over the set of backbones changed with the set since `image-bootstrap` ran) and is
/// left out; the number left out is returned.
pub fn attach_score_intervals(panels: &mut [Panel], intervals: &[super::image_bootstrap::ScoreInterval]) -> usize {
    let mut stale = 0;
    for panel in panels {
        for (point, slot) in panel.points.iter().zip(panel.score_intervals.iter_mut()) {
            let found = intervals
                .iter()
                .find(|i| i.task == panel.task && i.setting == panel.setting && i.metric == panel.metric && i.backbone == point.0);
            *slot = match found {
                Some(i) if (i.value - point.1).abs() <= 1e-9 * point.1.abs().max(1.0) => Some((i.low, i.high)),
                Some(_) => {
                    stale += 1;
                    None
                }
                None => None,
            };
        }
    }
    stale
}

/// The published Table 2 tau-b values (PROTOCOL.md), keyed by (task, setting, metric).
pub fn paper_tau_b() -> BTreeMap<(String, Setting, String), f64> {
    #[derive(Deserialize)]
    struct Row {
        task: String,
        setting: Setting,
        metric: String,
        tau_b: f64,
    }
    let mut reader = csv::Reader::from_reader(include_str!("../../assets/paper_table2.csv").as_bytes());
    reader.deserialize::<Row>().filter_map(Result::ok).map(|r| ((r.task, r.setting, r.metric), r.tau_b)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn score(task: &str, setting: Setting, backbone: &str, metric: &str, value: f64) -> ScoreRow {
        ScoreRow { task: task.into(), setting, backbone: backbone.into(), metric: metric.into(), value }
    }

    #[test]
    fn rows_without_their_counterpart_are_named_with_the_spelling_the_other_file_has() {
        let scores = [
            score("skin", Setting::Id, "ResNet-50", "leep", -1.0),
            score("skin", Setting::Id, "resnet18", "leep", -1.1),
            score("skin", Setting::Id, "resnet18", "logme", 0.5),
            score("skin", Setting::Ood, "resnet18", "leep", -1.2),
            score("brain", Setting::Id, "vit_small", "leep", -0.9),
        ];
        let performance = [
            accuracy("skin", Setting::Id, "resnet50", 0.7),
            accuracy("skin", Setting::Id, "resnet18", 0.6),
            accuracy("skin", Setting::Ood, "resnet18", 0.5),
            accuracy("skin", Setting::Ood, "densenet121", 0.55),
        ];
        assert_eq!(
            unmatched(&scores, &performance),
            [
                "brain id vit_small: not in performance.csv",
                "skin id ResNet-50: not in performance.csv (it has \"resnet50\")",
                "skin id resnet50: not in scores.csv (it has \"ResNet-50\")",
                "skin ood densenet121: not in scores.csv",
            ]
        );
        assert!(unmatched(&scores[1..4], &performance[1..3]).is_empty());
    }

    fn accuracy(task: &str, setting: Setting, backbone: &str, value: f64) -> PerformanceRow {
        PerformanceRow {
            task: task.into(),
            setting,
            backbone: backbone.into(),
            val_balanced_accuracy: None,
            test_balanced_accuracy: value,
            trial: None,
            lr: None,
            wd: None,
            epoch: None,
        }
    }

    #[test]
    fn tau_b_of_hand_counted_pairs_and_undefined_cells_stay_empty() {
        // Scores 1,2,3,4 against accuracies .1,.3,.2,.4: 5 concordant, 1 discordant pair, no ties:
        // tau-b = (5 - 1) / 6; exact p-value = 2 P(C >= 5) = 2 * (1 + 3) / 24.
        let names = ["a", "b", "c", "d"];
        let mut scores: Vec<ScoreRow> =
            names.iter().enumerate().map(|(i, n)| score("brain", Setting::Id, n, "leep", i as f64 + 1.0)).collect();
        let mut performance: Vec<PerformanceRow> =
            names.iter().zip([0.1, 0.3, 0.2, 0.4]).map(|(n, a)| accuracy("brain", Setting::Id, n, a)).collect();
        // A constant score has no tau; an unknown backbone's score and a NaN are left out.
        scores.extend(names.iter().map(|n| score("brain", Setting::Id, n, "gbc", -1.0)));
        scores.push(score("brain", Setting::Id, "e", "leep", 9.0));
        scores.push(score("skin", Setting::Id, "a", "leep", f64::NAN));
        performance.push(accuracy("skin", Setting::Id, "a", 0.5));
        let panels = panels(&scores, &performance);
        assert_eq!(panels.len(), 2, "{panels:?}");
        let settings = BootstrapSettings { resamples: 200, seed: 1 };
        let leep = panels.iter().find(|p| p.metric == "leep").unwrap().correlation(settings);
        assert_eq!(leep.n, 4);
        assert!((leep.tau_b.unwrap() - 4.0 / 6.0).abs() < 1e-15);
        assert!((leep.p_value.unwrap() - 8.0 / 24.0).abs() < 1e-12, "{leep:?}");
        // Four backbones: every permutation, and |tau| >= 4/6 in 8 of the 24 orderings as well.
        assert!((leep.p_permutation.unwrap() - 8.0 / 24.0).abs() < 1e-12, "{leep:?}");
        let gbc = panels.iter().find(|p| p.metric == "gbc").unwrap().correlation(settings);
        assert_eq!((gbc.n, gbc.tau_b, gbc.p_value), (4, None, None));
        // The study's task order, metrics in the paper's order.
        assert_eq!(tasks(&performance), ["skin", "brain"]);
        assert_eq!(metrics(&scores), ["leep", "gbc"]);
    }

    #[test]
    fn the_published_table_has_every_cell() {
        let paper = paper_tau_b();
        assert_eq!(paper.len(), 3 * 2 * 7);
        assert_eq!(paper[&("brain".to_string(), Setting::Id, "logme".to_string())], 0.584);
        assert_eq!(paper[&("skin".to_string(), Setting::Ood, "nce".to_string())], 0.911);
    }
}
