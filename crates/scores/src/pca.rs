//! Exact PCA from the covariance eigendecomposition, with scikit-learn's rules for how many
//! components a variance fraction keeps.

use crate::analysis::FeatureAnalysis;
use crate::error::Result;

/// The smallest k whose cumulative explained variance ratio exceeds `fraction`, as
/// scikit-learn's `PCA(n_components=fraction)` (`searchsorted(cumsum, fraction, "right") + 1`),
/// capped at min(N, D).
pub(crate) fn components_for_variance(analysis: &FeatureAnalysis<'_>, fraction: f64) -> Result<usize> {
    let eigen = analysis.covariance_eigen()?;
    let limit = analysis.num_samples().min(eigen.values.len());
    // scikit-learn clips the (rounding-)negative eigenvalues of the covariance to zero.
    let values: Vec<f64> = eigen.descending_values().map(|v| v.max(0.0)).collect();
    let total: f64 = values.iter().sum();
    if total <= 0.0 {
        return Ok(1);
    }
    let mut cumulative = 0.0;
    for (index, value) in values.iter().enumerate().take(limit) {
        cumulative += value / total;
        if cumulative > fraction {
            return Ok(index + 1);
        }
    }
    Ok(limit)
}

/// Number of components for a fixed request, capped at min(N, D) (scikit-learn would refuse
/// more; the cap keeps tiny inputs scoreable).
pub(crate) fn capped_components(analysis: &FeatureAnalysis<'_>, requested: usize) -> usize {
    requested.min(analysis.num_samples()).min(analysis.feature_dim())
}
