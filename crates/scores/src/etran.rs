//! ETran (Gholami et al., ICCV 2023) as mgholamikn/ETran's released classification code
//! computes it (`metrics.py`: `Energy_Score`, `LDA`, `LDA_Score`; `tw.py`: the combination;
//! ../shared/docs/SCORES-BEYOND.md, section 3). The paper's third term (an SVD regression score)
//! is not in the released code, and not here.
//!
//! Per model, two terms ([`etran_terms`]), both higher = better:
//! - energy: logsumexp over each sample's features (not logits), the mean of the 5N/1000 lowest
//!   (`Energy_Score(X, 0.5, 'bot')`; fewer than 200 samples leave none and upstream's NaN is an
//!   error here);
//! - LDA: the mean probability of the true class under the released "LDA", whose eigenvectors
//!   come from `np.linalg.eigh` of the non-symmetric inv(Sw~) Sb: eigh reads one triangle and
//!   returns an orthonormal V, so coef = M V V' = M and the classifier is softmax(X M' -
//!   |mu_c|^2 / 2 + log pi_c), a nearest-class-mean rule with no covariance.
//!
//! Over a set of candidate models, [`etran_combine`]: 0.15 minmax(energy) + 0.85 minmax(lda), so
//! one model's value depends on the others'.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};

use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::linalg::{class_means, log_sum_exp, parallelism};

/// `Energy_Score(X, percent=0.5, tail='bot')`: int(0.5 x 10) = 5 per thousand samples.
const ENERGY_PER_THOUSAND: usize = 5;
/// tw.py's weights of the min-max-scaled energy and LDA terms.
const ENERGY_WEIGHT: f64 = 0.15;
const LDA_WEIGHT: f64 = 0.85;

/// ETran's two per-model terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtranTerms {
    /// The mean of the lowest 0.5% of the samples' log-sum-exp over their features.
    pub energy: f64,
    /// The mean true-class probability of the released nearest-class-mean "LDA".
    pub lda: f64,
}

/// ETran's per-model terms of the features for the labels.
pub fn etran_terms(input: &ScoreInput) -> Result<EtranTerms> {
    Ok(EtranTerms { energy: etran_energy(input)?, lda: etran_lda(input)? })
}

/// The energy term: logsumexp_j F_ij per sample, the mean of the 5N/1000 smallest.
pub fn etran_energy(input: &ScoreInput) -> Result<f64> {
    let (n, d) = (input.num_samples(), input.feature_dim());
    let count = ENERGY_PER_THOUSAND * n / 1000;
    if count == 0 {
        return Err(Error::TooFewSamples { what: "ETran's energy term (the mean of the lowest 5 per thousand)", needed: 200, got: n });
    }
    let features = input.features();
    let mut energies: Vec<f64> = (0..n).map(|i| log_sum_exp(&(0..d).map(|j| features[(i, j)]).collect::<Vec<_>>())).collect();
    energies.sort_by(f64::total_cmp);
    finite("etran_energy", energies[..count].iter().sum::<f64>() / count as f64)
}

/// The LDA term: the mean of softmax(X M' - |mu_c|^2 / 2 + log pi_c)[i, y_i].
pub fn etran_lda(input: &ScoreInput) -> Result<f64> {
    let (n, d) = (input.num_samples(), input.feature_dim());
    let classes = input.num_classes();
    let labels = input.labels();
    let counts = input.class_counts();
    let features = input.features();
    let means = class_means(features, labels, &counts);
    let intercept: Vec<f64> = (0..classes)
        .map(|c| -0.5 * (0..d).map(|j| means[(c, j)] * means[(c, j)]).sum::<f64>() + (counts[c] as f64 / n as f64).ln())
        .collect();
    let mut logits = Mat::<f64>::zeros(n, classes);
    matmul(logits.as_mut(), Accum::Replace, features, means.transpose(), 1.0, parallelism());
    let mut total = 0.0;
    for i in 0..n {
        let row: Vec<f64> = (0..classes).map(|c| logits[(i, c)] + intercept[c]).collect();
        total += (row[labels[i]] - log_sum_exp(&row)).exp();
    }
    finite("etran_lda", total / n as f64)
}

/// ETran of each model of a candidate set from their terms: 0.15 minmax(energy) + 0.85
/// minmax(lda), min-max over the set (tw.py's `scale`). Upstream's NaN for fewer than two models
/// or a term equal across the set is an error here.
pub fn etran_combine(terms: &[EtranTerms]) -> Result<Vec<f64>> {
    let energy = min_max("ETran's energy term", &terms.iter().map(|t| t.energy).collect::<Vec<_>>())?;
    let lda = min_max("ETran's LDA term", &terms.iter().map(|t| t.lda).collect::<Vec<_>>())?;
    Ok(energy.iter().zip(&lda).map(|(e, l)| ENERGY_WEIGHT * e + LDA_WEIGHT * l).collect())
}

/// (x - min) / (max - min) over the set.
pub(crate) fn min_max(what: &'static str, values: &[f64]) -> Result<Vec<f64>> {
    if values.len() < 2 {
        return Err(Error::TooFewSamples { what: "a score defined over a set of models (min-max scaled)", needed: 2, got: values.len() });
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max - min <= 0.0 {
        return Err(Error::ConstantInput { what, side: "models'" });
    }
    Ok(values.iter().map(|v| (v - min) / (max - min)).collect())
}
