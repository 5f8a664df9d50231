//! Table 2: per (task, setting, metric), Kendall's tau-b (with its p-value) and the weighted tau
//! between the backbones' scores and their fine-tuned balanced accuracies.

use std::collections::{BTreeMap, BTreeSet};

use medxfer_scores::Metric;
use serde::{Deserialize, Serialize};

use crate::results::{PerformanceRow, ScoreRow, Setting};

/// The three tasks in the order the study lists them; others follow alphabetically.
const TASK_ORDER: [&str; 3] = ["skin", "breast", "brain"];

/// One row of table2.csv. Correlations are empty when undefined (fewer than two backbones, or a
/// constant column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table2Row {
    pub task: String,
    pub setting: Setting,
    pub metric: String,
    pub n: usize,
    pub tau_b: Option<f64>,
    pub p_value: Option<f64>,
    pub weighted_tau: Option<f64>,
}

impl Table2Row {
    /// The cell a row fills: one per task, setting and metric.
    pub fn key(&self) -> (String, Setting, String) {
        (self.task.clone(), self.setting, self.metric.clone())
    }
}

pub const TABLE2_COLUMNS: [&str; 7] = ["task", "setting", "metric", "n", "tau_b", "p_value", "weighted_tau"];

/// One (task, setting, metric): the backbones with both a score and an accuracy.
#[derive(Debug, Clone)]
pub struct Panel {
    pub task: String,
    pub setting: Setting,
    pub metric: String,
    /// (backbone, score, balanced accuracy), sorted by backbone.
    pub points: Vec<(String, f64, f64)>,
}

impl Panel {
    pub fn scores(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.1).collect()
    }

    pub fn accuracies(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.2).collect()
    }

    pub fn correlation(&self) -> Table2Row {
        let (x, y) = (self.scores(), self.accuracies());
        let tau = medxfer_scores::kendall_tau_b(&x, &y).ok().filter(|k| k.tau.is_finite());
        Table2Row {
            task: self.task.clone(),
            setting: self.setting,
            metric: self.metric.clone(),
            n: self.points.len(),
            tau_b: tau.map(|k| k.tau),
            p_value: tau.map(|k| k.p_value),
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

/// Metrics present in the results, in the paper's order.
pub fn metrics(scores: &[ScoreRow]) -> Vec<String> {
    Metric::ALL.iter().map(|m| m.as_str().to_string()).filter(|m| scores.iter().any(|r| &r.metric == m)).collect()
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
                    panels.push(Panel { task: task.clone(), setting, metric: metric.clone(), points });
                }
            }
        }
    }
    panels
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
        let leep = panels.iter().find(|p| p.metric == "leep").unwrap().correlation();
        assert_eq!(leep.n, 4);
        assert!((leep.tau_b.unwrap() - 4.0 / 6.0).abs() < 1e-15);
        assert!((leep.p_value.unwrap() - 8.0 / 24.0).abs() < 1e-12, "{leep:?}");
        let gbc = panels.iter().find(|p| p.metric == "gbc").unwrap().correlation();
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
