//! The seven scores by name, and `score_all`, which computes any set of them sharing the
//! expensive decompositions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::input::ScoreInput;
use crate::n_leep::NLeepConfig;

/// A transferability score. The snake_case spelling (`Display`, `FromStr`, serde) is stable:
/// result files and command lines use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// H-score.
    HScore,
    /// Negative conditional entropy (needs source probabilities).
    Nce,
    /// Log expected empirical prediction (needs source probabilities).
    Leep,
    /// LEEP on Gaussian-mixture posteriors.
    NLeep,
    /// Log maximum evidence.
    #[serde(rename = "logme")]
    LogMe,
    /// H-score with a Ledoit-Wolf shrunk covariance.
    RegHScore,
    /// Gaussian Bhattacharyya coefficient.
    Gbc,
    /// TransRate as the paper's appendix and tllib compute it (eps 1e-4). Beyond the paper.
    Transrate,
    /// TransRate as the authors' repository computes it (centralized features, eps 1e-4).
    /// Beyond the paper.
    TransrateOfficial,
    /// Self-challenging Fisher discriminant analysis (TencentARC/SFDA). Beyond the paper.
    Sfda,
    /// PACTran-Dirichlet on the source probabilities (google-research/pactran_metrics): a
    /// bound, lower is better. Beyond the paper.
    PactranDir,
    /// PACTran-Gamma on the source probabilities: a bound, lower is better. Beyond the paper.
    PactranGam,
    /// ETran (mgholamikn/ETran): its energy and LDA terms min-max scaled over a set of candidate
    /// models ([`score_set`]). Beyond the paper.
    Etran,
}

/// Whether a higher or a lower value of a score predicts better fine-tuning accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A higher score predicts a higher accuracy.
    Higher,
    /// A lower score predicts a higher accuracy (PACTran).
    Lower,
}

impl Metric {
    /// All seven, in the paper's order: the study's scores.
    pub const ALL: [Metric; 7] = [Metric::HScore, Metric::Nce, Metric::Leep, Metric::NLeep, Metric::LogMe, Metric::RegHScore, Metric::Gbc];

    /// The newer scores computed per model, beyond the paper's seven.
    pub const BEYOND: [Metric; 5] = [Metric::Transrate, Metric::TransrateOfficial, Metric::Sfda, Metric::PactranDir, Metric::PactranGam];

    /// The newer scores defined over a set of candidate models: one model's value depends on
    /// the others' ([`score_set`]).
    pub const SET_LEVEL: [Metric; 1] = [Metric::Etran];

    /// The scores of one model: the paper's seven, then the newer ones.
    pub fn per_model() -> impl Iterator<Item = Metric> {
        Metric::ALL.into_iter().chain(Metric::BEYOND)
    }

    /// Every score: the per-model ones, then those defined over a set of models.
    pub fn every() -> impl Iterator<Item = Metric> {
        Metric::per_model().chain(Metric::SET_LEVEL)
    }

    /// Whether the score is defined over a set of candidate models ([`score_set`]).
    pub fn is_set_level(self) -> bool {
        Metric::SET_LEVEL.contains(&self)
    }

    /// Whether a higher or a lower value predicts better fine-tuning (PACTran's bounds: lower).
    pub fn direction(self) -> Direction {
        match self {
            Metric::PactranDir | Metric::PactranGam => Direction::Lower,
            _ => Direction::Higher,
        }
    }

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::HScore => "h_score",
            Metric::Nce => "nce",
            Metric::Leep => "leep",
            Metric::NLeep => "n_leep",
            Metric::LogMe => "logme",
            Metric::RegHScore => "reg_h_score",
            Metric::Gbc => "gbc",
            Metric::Transrate => "transrate",
            Metric::TransrateOfficial => "transrate_official",
            Metric::Sfda => "sfda",
            Metric::PactranDir => "pactran_dir",
            Metric::PactranGam => "pactran_gam",
            Metric::Etran => "etran",
        }
    }

    /// Whether the score reads the source model's probabilities rather than the features.
    pub fn needs_source_probs(self) -> bool {
        matches!(self, Metric::Nce | Metric::Leep | Metric::PactranDir | Metric::PactranGam)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Metric::every().find(|m| m.as_str() == name).ok_or_else(|| Error::UnknownMetric { name: name.to_string() })
    }
}

/// Computes each requested metric once, sharing the covariance and Gram decompositions between
/// them, and returns them in the order asked (duplicates once). Fails on the first failure.
pub fn score_all(input: &ScoreInput, metrics: &[Metric]) -> Result<Vec<(Metric, f64)>> {
    let analysis = FeatureAnalysis::new(input);
    let mut computed: Vec<(Metric, f64)> = Vec::new();
    for &metric in metrics {
        if computed.iter().any(|(m, _)| *m == metric) {
            continue;
        }
        let value = match metric {
            Metric::HScore => crate::h_score::h_score_of(&analysis)?,
            Metric::Nce => crate::nce::nce(input)?,
            Metric::Leep => crate::leep::leep(input)?,
            Metric::NLeep => crate::n_leep::n_leep_of(&analysis, &NLeepConfig::default())?,
            Metric::LogMe => crate::logme::logme_of(&analysis)?,
            Metric::RegHScore => crate::reg_h_score::reg_h_score_of(&analysis)?,
            Metric::Gbc => crate::gbc::gbc_of(&analysis)?,
            Metric::Transrate => crate::transrate::transrate_of(&analysis, crate::transrate::TRANSRATE_EPS)?,
            Metric::TransrateOfficial => crate::transrate::transrate_official(input, crate::transrate::TRANSRATE_EPS)?,
            Metric::Sfda => crate::sfda::sfda(input)?,
            Metric::PactranDir => crate::pactran::pactran_dir(input)?,
            Metric::PactranGam => crate::pactran::pactran_gam(input)?,
            set_level @ Metric::Etran => return Err(Error::SetLevelMetric { metric: set_level.as_str() }),
        };
        computed.push((metric, value));
    }
    Ok(computed)
}

/// Each requested metric for every model of a candidate set (`inputs`, one per model, in
/// order): the per-model scores model by model (sharing decompositions as [`score_all`]), the
/// set-level ones from the models' terms together. Returns, per metric, one value per model.
pub fn score_set(inputs: &[ScoreInput], metrics: &[Metric]) -> Result<Vec<(Metric, Vec<f64>)>> {
    let per_model: Vec<Metric> = metrics.iter().copied().filter(|m| !m.is_set_level()).collect();
    let mut by_model = Vec::with_capacity(inputs.len());
    for input in inputs {
        by_model.push(score_all(input, &per_model)?);
    }
    let mut out: Vec<(Metric, Vec<f64>)> = Vec::new();
    for &metric in metrics {
        if out.iter().any(|(m, _)| *m == metric) {
            continue;
        }
        let values = match metric {
            Metric::Etran => {
                let terms = inputs.iter().map(crate::etran::etran_terms).collect::<Result<Vec<_>>>()?;
                crate::etran::etran_combine(&terms)?
            }
            _ => by_model.iter().map(|scores| scores.iter().find(|(m, _)| *m == metric).map(|(_, v)| *v).unwrap_or(f64::NAN)).collect(),
        };
        out.push((metric, values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_display_from_str_and_serde() {
        for metric in Metric::every() {
            assert_eq!(metric.as_str().parse::<Metric>().unwrap(), metric);
            assert_eq!(serde_json::to_string(&metric).unwrap(), format!("\"{}\"", metric.as_str()));
        }
        assert!("hscore".parse::<Metric>().is_err());
    }
}
