//! N-LEEP (Li et al. 2021): LEEP with the posteriors of a Gaussian mixture fitted on the PCA of
//! the features in place of the source model's predictions. As the reference: PCA keeping 80% of
//! the variance, 5 components per target class, full covariances, k-means start with seed 42.

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::gmm::{GaussianMixture, GmmConfig, GmmStart};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::leep::leep_of;
use crate::pca::components_for_variance;

/// N-LEEP settings; the defaults are the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct NLeepConfig {
    /// PCA keeps the fewest components whose explained variance exceeds this fraction.
    pub variance_kept: f64,
    /// Mixture components per target class.
    pub components_per_class: usize,
    /// Seed of the k-means++ start.
    pub seed: u64,
    /// EM settings.
    pub gmm: GmmConfig,
}

impl Default for NLeepConfig {
    fn default() -> Self {
        Self { variance_kept: 0.8, components_per_class: 5, seed: 42, gmm: GmmConfig::default() }
    }
}

/// N-LEEP of the features for the labels, with the reference's settings.
pub fn n_leep(input: &ScoreInput) -> Result<f64> {
    n_leep_with(input, &NLeepConfig::default())
}

/// N-LEEP with explicit settings.
pub fn n_leep_with(input: &ScoreInput, config: &NLeepConfig) -> Result<f64> {
    n_leep_of(&FeatureAnalysis::new(input), config)
}

pub(crate) fn n_leep_of(analysis: &FeatureAnalysis<'_>, config: &NLeepConfig) -> Result<f64> {
    let components = config.components_per_class * analysis.class_counts.len();
    let n = analysis.num_samples();
    if n < components {
        return Err(Error::TooFewSamples { what: "N-LEEP's mixture (5 components per class)", needed: components, got: n });
    }
    let k = components_for_variance(analysis, config.variance_kept)?;
    let coordinates = analysis.pca_coordinates(k)?;
    let mixture = GaussianMixture::fit(coordinates.as_ref(), components, &config.gmm, &GmmStart::KMeans { seed: config.seed })?;
    let posteriors = mixture.predict_proba(coordinates.as_ref());
    finite("n_leep", leep_of(posteriors.as_ref(), analysis.input.labels(), analysis.class_counts.len()))
}
