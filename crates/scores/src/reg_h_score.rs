//! Regularized H-score (Ibrahim et al. 2022): the feature covariance shrunk with Ledoit-Wolf,
//! trace(pinv(Sigma) (1 - alpha) cov(G)). The shrinkage is scikit-learn's `ledoit_wolf` on the
//! centred features (S = X'X/n, ddof 0); cov(G) keeps ddof 1 as in the reference.

use crate::analysis::FeatureAnalysis;
use crate::error::Result;
use crate::h_score::{PINV_RCOND, finite};
use crate::input::ScoreInput;

/// The regularized H-score of the features for the labels.
pub fn reg_h_score(input: &ScoreInput) -> Result<f64> {
    reg_h_score_of(&FeatureAnalysis::new(input))
}

/// The Ledoit-Wolf shrinkage intensity of the centred features, as scikit-learn computes it.
pub(crate) fn ledoit_wolf_shrinkage(analysis: &FeatureAnalysis<'_>) -> (f64, f64) {
    let centred = analysis.gram();
    let gram = &centred.gram;
    let n = analysis.num_samples() as f64;
    let p = gram.nrows() as f64;
    let trace_s: f64 = (0..gram.nrows()).map(|i| gram[(i, i)]).sum::<f64>() / n;
    let mu = trace_s / p;
    let mut frobenius_s = 0.0;
    for j in 0..gram.ncols() {
        frobenius_s += gram.col(j).iter().map(|v| v * v).sum::<f64>();
    }
    frobenius_s /= n * n;
    let beta_sum = centred.sum_row_norm4;
    let beta = (beta_sum / n - frobenius_s) / (p * n);
    let delta = (frobenius_s - 2.0 * mu * trace_s + p * mu * mu) / p;
    let beta = beta.min(delta);
    let shrinkage = if beta == 0.0 { 0.0 } else { beta / delta };
    (shrinkage, mu)
}

pub(crate) fn reg_h_score_of(analysis: &FeatureAnalysis<'_>) -> Result<f64> {
    let (alpha, mu) = ledoit_wolf_shrinkage(analysis);
    let eigen = analysis.covariance_eigen()?;
    let between = analysis.between_class_quadratic()?;
    let n = analysis.num_samples() as f64;
    // Eigenvalues of S = X'X/n are those of the ddof-1 covariance times (n-1)/n.
    let ddof0 = (n - 1.0) / n;
    let score = (1.0 - alpha) * eigen.pinv_trace(|v| (1.0 - alpha) * v * ddof0 + alpha * mu, between, PINV_RCOND);
    finite("reg_h_score", score)
}
