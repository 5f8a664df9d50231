//! H-score (Bao et al. 2019): trace(pinv(cov(F)) cov(G)), G = F with each row replaced by its
//! class mean; covariances with ddof 1, pinv with rcond 1e-15 as the reference's numpy call.

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::input::ScoreInput;

/// numpy's `pinv(rcond=1e-15)`, which the reference passes explicitly.
pub(crate) const PINV_RCOND: f64 = 1e-15;

/// The H-score of the features for the labels.
pub fn h_score(input: &ScoreInput) -> Result<f64> {
    h_score_of(&FeatureAnalysis::new(input))
}

pub(crate) fn h_score_of(analysis: &FeatureAnalysis<'_>) -> Result<f64> {
    let eigen = analysis.covariance_eigen()?;
    let between = analysis.between_class_quadratic()?;
    let score = eigen.pinv_trace(|v| v, between, PINV_RCOND);
    finite("h_score", score)
}

pub(crate) fn finite(metric: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NonFiniteScore { metric, value, why: "the features are too degenerate for this score" })
    }
}
