//! GBC (Pándy et al. 2022): PCA to 64 dimensions, one spherical Gaussian per class, and minus
//! the sum of Bhattacharyya coefficients exp(-D_B) over ordered pairs of distinct classes.
//!
//! As the reference: per-dimension variances with ddof 0 clamped at 1e-4, the spherical
//! variance is their mean, and the log term of D_B is not multiplied by the dimension.

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::pca::capped_components;

/// PCA dimensions before the Gaussians, as the reference.
pub const GBC_PCA_DIMS: usize = 64;
const VARIANCE_FLOOR: f64 = 1e-4;

/// GBC of the features for the labels.
pub fn gbc(input: &ScoreInput) -> Result<f64> {
    gbc_of(&FeatureAnalysis::new(input))
}

pub(crate) fn gbc_of(analysis: &FeatureAnalysis<'_>) -> Result<f64> {
    if let Some((class, &count)) = analysis.class_counts.iter().enumerate().find(|(_, c)| **c < 2) {
        return Err(Error::SmallClass { metric: "gbc", class, count, needed: 2 });
    }
    let k = capped_components(analysis, GBC_PCA_DIMS);
    let coordinates = analysis.pca_coordinates(k)?;
    let labels = analysis.input.labels();
    let classes = analysis.class_counts.len();
    let mut means = vec![vec![0.0f64; k]; classes];
    let mut variances = vec![0.0f64; classes];
    for (class, mean) in means.iter_mut().enumerate() {
        let count = analysis.class_counts[class] as f64;
        let mut spherical = 0.0;
        for (dim, mean_d) in mean.iter_mut().enumerate() {
            let column = coordinates.col(dim);
            let members = || labels.iter().zip(column.iter()).filter(|(l, _)| **l == class).map(|(_, v)| *v);
            *mean_d = members().sum::<f64>() / count;
            let variance = members().map(|v| (v - *mean_d).powi(2)).sum::<f64>() / count;
            spherical += variance.max(VARIANCE_FLOOR);
        }
        variances[class] = spherical / k as f64;
    }
    let mut total = 0.0;
    for c1 in 0..classes {
        for c2 in 0..classes {
            if c1 == c2 {
                continue;
            }
            let average = (variances[c1] + variances[c2]) / 2.0;
            let mahalanobis: f64 = means[c1].iter().zip(&means[c2]).map(|(a, b)| (a - b).powi(2) / average).sum::<f64>() / 8.0;
            let log_term = average.ln() - 0.5 * variances[c1].ln() - 0.5 * variances[c2].ln();
            total += (-(mahalanobis + 0.5 * log_term)).exp();
        }
    }
    finite("gbc", -total)
}
