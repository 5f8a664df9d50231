//! The scores by name, `score_all`, which computes any of them for one model sharing the
//! expensive decompositions, and `score_set`, which adds those defined over a set of models.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::analysis::{FeatureAnalysis, Needs};
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
    /// PACTran-Gauss on the features at lambda = 1, its optimiser run to convergence: a bound,
    /// lower is better. Beyond the paper.
    PactranGauss,
    /// ETran (mgholamikn/ETran): its energy and LDA terms min-max scaled over a set of candidate
    /// models ([`score_set`]). Beyond the paper.
    Etran,
    /// NCTI (BUserName/NCTI): its seli, ncc and vc terms min-max scaled over a set of candidate
    /// models ([`score_set`]). Beyond the paper.
    Ncti,
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
    pub const BEYOND: [Metric; 6] =
        [Metric::Transrate, Metric::TransrateOfficial, Metric::Sfda, Metric::PactranDir, Metric::PactranGam, Metric::PactranGauss];

    /// The newer scores defined over a set of candidate models: one model's value depends on
    /// the others' ([`score_set`]).
    pub const SET_LEVEL: [Metric; 2] = [Metric::Etran, Metric::Ncti];

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

    /// The per-model terms a set-level score combines across the models (ETran: energy, lda;
    /// NCTI: seli, ncc, vc), in [`set_terms`]' order; empty for a per-model score. Result files
    /// store each as `<metric>_<term>` ([`Metric::term_key`]), so that the combination can be
    /// redone over any subset of models.
    pub fn terms(self) -> &'static [&'static str] {
        match self {
            Metric::Etran => &["energy", "lda"],
            Metric::Ncti => &["seli", "ncc", "vc"],
            _ => &[],
        }
    }

    /// `<metric>_<term>`, the stable name of a set-level score's per-model term.
    pub fn term_key(self, term: &str) -> String {
        format!("{}_{term}", self.as_str())
    }

    /// Whether a higher or a lower value predicts better fine-tuning (PACTran's bounds: lower).
    pub fn direction(self) -> Direction {
        match self {
            Metric::PactranDir | Metric::PactranGam | Metric::PactranGauss => Direction::Lower,
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
            Metric::PactranGauss => "pactran_gauss",
            Metric::Etran => "etran",
            Metric::Ncti => "ncti",
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
        Metric::every().find(|m| m.as_str() == name).ok_or_else(|| Error::unknown_metric(name))
    }
}

/// The one of `known` that `name` spells with other case or separators (`H-score`, `LogME` ->
/// `h_score`, `logme`), for the names people type.
pub fn spelled_like<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let loose = |name: &str| name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect::<String>();
    let name = loose(name);
    known.into_iter().find(|known| loose(known) == name)
}

impl Error {
    /// [`Error::UnknownMetric`] for `name`, with the score it is a spelling of, if any.
    pub fn unknown_metric(name: &str) -> Self {
        let hint = spelled_like(name, Metric::every().map(Metric::as_str)).map(|m| format!(": did you mean '{m}'?")).unwrap_or_default();
        let known = Metric::every().map(Metric::as_str).collect::<Vec<_>>().join(", ");
        Error::UnknownMetric { name: name.to_string(), hint, known }
    }
}

/// Computes each requested metric once, sharing the covariance and Gram decompositions between
/// them, and returns them in the order asked (duplicates once). Fails on the first failure.
pub fn score_all(input: &ScoreInput, metrics: &[Metric]) -> Result<Vec<(Metric, f64)>> {
    score_analysed(&FeatureAnalysis::new(input), metrics)
}

fn score_analysed(analysis: &FeatureAnalysis<'_>, metrics: &[Metric]) -> Result<Vec<(Metric, f64)>> {
    prepare(analysis, metrics);
    let mut computed: Vec<(Metric, f64)> = Vec::new();
    for &metric in metrics {
        if computed.iter().any(|(m, _)| *m == metric) {
            continue;
        }
        computed.push((metric, score_one(analysis, metric)?));
    }
    Ok(computed)
}

/// Computes up front what the given scores share (NCTI's terms count as [`Metric::Ncti`]).
fn prepare(analysis: &FeatureAnalysis<'_>, metrics: &[Metric]) {
    use Metric::*;
    let wants = |these: &[Metric]| metrics.iter().any(|m| these.contains(m));
    analysis.prepare(Needs {
        class_grams: metrics.contains(&Transrate) && crate::transrate::uses_class_grams(analysis),
        gram: wants(&[HScore, RegHScore, NLeep, LogMe, Gbc, Sfda, Transrate, Ncti]),
        class_sums: wants(&[LogMe, Sfda]),
        covariance_eigen: wants(&[HScore, RegHScore, NLeep, LogMe, Gbc, Ncti]),
        between_class: wants(&[HScore, RegHScore]),
    });
}

fn score_one(analysis: &FeatureAnalysis<'_>, metric: Metric) -> Result<f64> {
    let input = analysis.input;
    match metric {
        Metric::HScore => crate::h_score::h_score_of(analysis),
        Metric::Nce => crate::nce::nce(input),
        Metric::Leep => crate::leep::leep(input),
        Metric::NLeep => crate::n_leep::n_leep_of(analysis, &NLeepConfig::default()),
        Metric::LogMe => crate::logme::logme_of(analysis),
        Metric::RegHScore => crate::reg_h_score::reg_h_score_of(analysis),
        Metric::Gbc => crate::gbc::gbc_of(analysis),
        Metric::Transrate => crate::transrate::transrate_of(analysis, crate::transrate::TRANSRATE_EPS),
        Metric::TransrateOfficial => crate::transrate::transrate_official(input, crate::transrate::TRANSRATE_EPS),
        Metric::Sfda => crate::sfda::sfda_of(analysis),
        Metric::PactranDir => crate::pactran::pactran_dir(input),
        Metric::PactranGam => crate::pactran::pactran_gam(input),
        Metric::PactranGauss => crate::pactran_gauss::pactran_gauss_of(analysis, crate::pactran_gauss::PACTRAN_GAUSS_LAMBDA),
        set_level @ (Metric::Etran | Metric::Ncti) => Err(Error::SetLevelMetric { metric: set_level.as_str() }),
    }
}

/// One model's features analysed once for several scores, which are then computed one at a
/// time, each costing only its own arithmetic: what [`score_all`] does, for a caller that wants
/// the scores (or their timings) separately.
///
/// ```
/// use faer::Mat;
/// use medxfer_scores::{Metric, ScoreInput, SharedAnalysis, score_all};
///
/// let features = Mat::from_fn(8, 3, |i, j| (i * 3 + j) as f64 * 0.1 + if i < 4 { 0.0 } else { 1.0 });
/// let input = ScoreInput::new(features, &[0, 0, 0, 0, 1, 1, 1, 1])?;
/// let shared = SharedAnalysis::new(&input);
/// shared.prepare(&[Metric::HScore, Metric::Transrate]);
/// let h = shared.score(Metric::HScore)?;
/// assert_eq!(h, score_all(&input, &[Metric::HScore])?[0].1);
/// # Ok::<(), medxfer_scores::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedAnalysis<'a> {
    analysis: FeatureAnalysis<'a>,
}

impl<'a> SharedAnalysis<'a> {
    /// Costs nothing: what the scores share is computed by [`SharedAnalysis::prepare`] or when
    /// a score first needs it.
    pub fn new(input: &'a ScoreInput) -> Self {
        Self { analysis: FeatureAnalysis::new(input) }
    }

    /// Computes what the given scores share (the centred Gram, its classes' shares, its
    /// eigendecomposition, the class statistics).
    pub fn prepare(&self, metrics: &[Metric]) {
        prepare(&self.analysis, metrics);
    }

    /// One per-model score (a set-level one is an error: see [`score_set`]).
    pub fn score(&self, metric: Metric) -> Result<f64> {
        score_one(&self.analysis, metric)
    }

    /// A set-level score's per-model terms in [`Metric::terms`]' order, as [`set_terms`] gives
    /// them (NCTI's from the shared covariance eigendecomposition); empty for a per-model score.
    pub fn set_terms(&self, metric: Metric) -> Result<Vec<f64>> {
        terms_of(&self.analysis, metric)
    }
}

/// Each requested metric for every model of a candidate set (`inputs`, one per model, in
/// order): the per-model scores model by model (sharing decompositions as [`score_all`]), the
/// set-level ones from the models' terms together. Returns, per metric, one value per model.
pub fn score_set(inputs: &[ScoreInput], metrics: &[Metric]) -> Result<Vec<(Metric, Vec<f64>)>> {
    check_same_samples(inputs)?;
    let per_model: Vec<Metric> = metrics.iter().copied().filter(|m| !m.is_set_level()).collect();
    let set_level: Vec<Metric> = Metric::SET_LEVEL.into_iter().filter(|m| metrics.contains(m)).collect();
    let mut by_model = Vec::with_capacity(inputs.len());
    // terms[k][model]: the set-level metric set_level[k]'s terms of each model.
    let mut terms: Vec<Vec<Vec<f64>>> = vec![Vec::with_capacity(inputs.len()); set_level.len()];
    for input in inputs {
        // One analysis per model: NCTI's PCA reuses the covariance eigendecomposition.
        let analysis = FeatureAnalysis::new(input);
        by_model.push(score_analysed(&analysis, &per_model)?);
        for (metric, terms) in set_level.iter().zip(terms.iter_mut()) {
            terms.push(terms_of(&analysis, *metric)?);
        }
    }
    let mut out: Vec<(Metric, Vec<f64>)> = Vec::new();
    for &metric in metrics {
        if out.iter().any(|(m, _)| *m == metric) {
            continue;
        }
        let values = match set_level.iter().position(|m| *m == metric) {
            Some(k) => combine_terms(metric, &terms[k])?,
            None => by_model.iter().map(|scores| scores.iter().find(|(m, _)| *m == metric).map(|(_, v)| *v).unwrap_or(f64::NAN)).collect(),
        };
        out.push((metric, values));
    }
    Ok(out)
}

/// Refuses a set whose models were not scored on the same samples: each one's labels must be
/// the first's, sample by sample. (A set-level score min-max scales the models' terms against
/// each other, and the per-model scores are compared with each other: on other images neither
/// means anything.)
pub fn check_same_samples<'a>(inputs: impl IntoIterator<Item = &'a ScoreInput>) -> Result<()> {
    let mut inputs = inputs.into_iter().enumerate();
    let Some((_, first)) = inputs.next() else { return Ok(()) };
    for (index, input) in inputs {
        let problem = if input.num_samples() != first.num_samples() {
            format!("it has {} samples, model 1 has {}", input.num_samples(), first.num_samples())
        } else if let Some(sample) = input.labels().iter().zip(first.labels()).position(|(a, b)| a != b) {
            format!("sample {sample} has label {}, model 1's has {}", input.labels()[sample], first.labels()[sample])
        } else {
            continue;
        };
        return Err(Error::NotTheSameSamples { model: index + 1, problem });
    }
    Ok(())
}

/// The per-model terms of a set-level metric for one model, in [`Metric::terms`]' order (empty
/// for a per-model metric).
pub fn set_terms(input: &ScoreInput, metric: Metric) -> Result<Vec<f64>> {
    terms_of(&FeatureAnalysis::new(input), metric)
}

fn terms_of(analysis: &FeatureAnalysis<'_>, metric: Metric) -> Result<Vec<f64>> {
    Ok(match metric {
        Metric::Etran => {
            let t = crate::etran::etran_terms(analysis.input)?;
            vec![t.energy, t.lda]
        }
        Metric::Ncti => {
            let t = crate::ncti::ncti_terms_of(analysis, crate::ncti::LdaWithinFactor::default())?;
            vec![t.seli, t.ncc, t.vc]
        }
        _ => Vec::new(),
    })
}

/// A set-level metric of each model of a set from the models' terms (each in [`Metric::terms`]'
/// order): what [`score_set`] computes, from stored terms.
pub fn combine_terms(metric: Metric, terms: &[Vec<f64>]) -> Result<Vec<f64>> {
    let width = metric.terms().len();
    let malformed = || Error::MalformedTerms { metric: metric.as_str(), expected: width };
    if terms.iter().any(|t| t.len() != width) {
        return Err(malformed());
    }
    match metric {
        Metric::Etran => {
            crate::etran::etran_combine(&terms.iter().map(|t| crate::etran::EtranTerms { energy: t[0], lda: t[1] }).collect::<Vec<_>>())
        }
        Metric::Ncti => {
            crate::ncti::ncti_combine(&terms.iter().map(|t| crate::ncti::NctiTerms { seli: t[0], ncc: t[1], vc: t[2] }).collect::<Vec<_>>())
        }
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_name_lists_every_score_and_names_the_one_it_spells() {
        for (typed, meant) in [
            ("LogME", Some("logme")),
            ("H-score", Some("h_score")),
            ("N-LEEP", Some("n_leep")),
            ("PACTran_Gauss", Some("pactran_gauss")),
            ("hscore2", None),
        ] {
            let message = typed.parse::<Metric>().unwrap_err().to_string();
            match meant {
                Some(meant) => assert!(message.starts_with(&format!("unknown metric '{typed}': did you mean '{meant}'?;")), "{message}"),
                None => assert!(message.starts_with(&format!("unknown metric '{typed}'; the metrics are")), "{message}"),
            }
            // The list is the scores', not a copy of it that drifts: these two were missing.
            assert!(message.ends_with("etran, ncti") && message.contains("pactran_gauss"), "{message}");
        }
    }

    #[test]
    fn names_round_trip_through_display_from_str_and_serde() {
        for metric in Metric::every() {
            assert_eq!(metric.as_str().parse::<Metric>().unwrap(), metric);
            assert_eq!(serde_json::to_string(&metric).unwrap(), format!("\"{}\"", metric.as_str()));
        }
        assert!("hscore".parse::<Metric>().is_err());
    }

    /// A set's models must share their samples' labels, sample by sample; another order of the
    /// same labels, or fewer samples, is another set of images.
    #[test]
    fn a_set_of_models_scored_on_other_samples_is_refused() {
        let model = |labels: &[i64]| {
            let features = faer::Mat::from_fn(labels.len(), 2, |i, j| (i * 3 + j * 7) as f64 % 5.0 + labels[i] as f64);
            ScoreInput::new(features, labels).unwrap()
        };
        let labels = [0, 1, 0, 1, 0, 1, 0, 1];
        let same = [model(&labels), model(&labels), model(&labels)];
        assert_eq!(score_set(&same, &[Metric::HScore]).unwrap()[0].1.len(), 3);
        for (other, problem) in
            [(&[1, 0, 0, 1, 0, 1, 0, 1][..], "sample 0 has label 1, model 1's has 0"), (&labels[..6], "it has 6 samples, model 1 has 8")]
        {
            let set = [model(&labels), model(&labels), model(other)];
            match score_set(&set, &[Metric::HScore]) {
                Err(error @ Error::NotTheSameSamples { model: 3, .. }) => assert!(error.to_string().contains(problem), "{error}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
