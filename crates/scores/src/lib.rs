//! medxfer-scores: the seven transferability scores of Chaves et al. 2023 and the correlations
//! that judge them, computed exactly as the reference code does, in f64 on faer.
//!
//! A score reads features (N x D), target labels (0..C-1) and, for LEEP and NCE, the source
//! model's probabilities (N x Cs). [`score_all`] computes several at once, sharing the
//! covariance and Gram decompositions.
//!
//! ```
//! use faer::Mat;
//! use medxfer_scores::{Metric, ScoreInput, h_score, kendall_tau_b, score_all};
//!
//! // Six samples, two features, two classes.
//! let features = Mat::from_fn(6, 2, |i, j| (i as f64) * 0.5 + (j as f64) + if i < 3 { 0.0 } else { 2.0 });
//! let input = ScoreInput::new(features, &[0, 0, 0, 1, 1, 1])?;
//! let h = h_score(&input)?;
//! let all = score_all(&input, &[Metric::HScore, Metric::LogMe])?;
//! assert_eq!(all[0], (Metric::HScore, h));
//!
//! // Does the score rank three backbones as their accuracies do?
//! let tau = kendall_tau_b(&[1.0, 2.0, 3.0], &[0.7, 0.8, 0.9])?;
//! assert!((tau.tau - 1.0).abs() < 1e-12);
//! # Ok::<(), medxfer_scores::Error>(())
//! ```

#![warn(missing_docs)]

mod analysis;
mod correlation;
mod error;
mod etran;
mod feature_file;
mod gbc;
mod gmm;
mod h_score;
mod input;
mod kmeans;
mod lbfgs;
mod leep;
mod linalg;
mod logme;
mod metric;
mod n_leep;
mod nce;
mod ncti;
mod pactran;
mod pactran_gauss;
mod pca;
mod reg_h_score;
mod sfda;
mod transrate;

pub use correlation::{Correlation, KendallTau, average_ranks, correlate, kendall_tau_b, pearson, spearman, top1_regret, weighted_tau};
pub use error::{Error, Result};
pub use etran::{EtranTerms, etran_combine, etran_energy, etran_lda, etran_terms};
pub use feature_file::{read_feature_file, write_feature_file};
pub use gbc::{GBC_PCA_DIMS, gbc};
pub use gmm::{GaussianMixture, GmmConfig, GmmStart};
pub use h_score::h_score;
pub use input::{ScoreInput, SourceProbs};
pub use leep::leep;
pub use logme::logme;
pub use metric::{Direction, Metric, SharedAnalysis, check_same_samples, combine_terms, score_all, score_set, set_terms, spelled_like};
pub use n_leep::{NLeepConfig, n_leep, n_leep_with};
pub use nce::nce;
pub use ncti::{LdaWithinFactor, NCTI_PCA_DIMS, NctiTerms, ncti_combine, ncti_terms, ncti_terms_with};
pub use pactran::{pactran_dir, pactran_gam};
pub use pactran_gauss::{PACTRAN_GAUSS_LAMBDA, pactran_gauss, pactran_gauss_with};
pub use reg_h_score::reg_h_score;
pub use sfda::sfda;
pub use transrate::{TRANSRATE_EPS, transrate, transrate_official};

/// Re-exported so callers build inputs with the same matrix type.
pub use faer;
