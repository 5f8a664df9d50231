//! What several scores compute from the same features, computed once: the column means, the
//! centred Gram matrix and its eigendecomposition (H-score, regularized H-score and both PCAs),
//! the uncentred Gram's eigendecomposition (LogME), and the class sums. `score_all` shares one
//! `FeatureAnalysis` between the scores; each score function alone builds its own.

use std::cell::OnceCell;

use faer::{Accum, Mat};

use crate::error::Result;
use crate::input::ScoreInput;
use crate::linalg::{self, CentredGram, SymmetricEigen};

#[derive(Debug)]
pub(crate) struct FeatureAnalysis<'a> {
    pub input: &'a ScoreInput,
    pub class_counts: Vec<usize>,
    means: OnceCell<Vec<f64>>,
    class_sums: OnceCell<Mat<f64>>,
    gram: OnceCell<CentredGram>,
    covariance_eigen: OnceCell<SymmetricEigen>,
    between_class: OnceCell<Vec<f64>>,
}

/// `cell`'s value, computed by `init` the first time; an error is returned and not cached.
fn get_or_try<T>(cell: &OnceCell<T>, init: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let value = init()?;
    Ok(cell.get_or_init(|| value))
}

impl<'a> FeatureAnalysis<'a> {
    /// Costs nothing: every statistic is computed when a score first asks for it.
    pub(crate) fn new(input: &'a ScoreInput) -> Self {
        Self {
            input,
            class_counts: input.class_counts(),
            means: OnceCell::new(),
            class_sums: OnceCell::new(),
            gram: OnceCell::new(),
            covariance_eigen: OnceCell::new(),
            between_class: OnceCell::new(),
        }
    }

    pub(crate) fn num_samples(&self) -> usize {
        self.input.num_samples()
    }

    pub(crate) fn feature_dim(&self) -> usize {
        self.input.feature_dim()
    }

    pub(crate) fn means(&self) -> &[f64] {
        self.means.get_or_init(|| linalg::column_means(self.input.features()))
    }

    /// Sum of the (uncentred) features of each class, D x C: F'y_c for LogME.
    pub(crate) fn class_sums(&self) -> &Mat<f64> {
        self.class_sums.get_or_init(|| {
            let features = self.input.features();
            let mut sums = Mat::<f64>::zeros(features.ncols(), self.class_counts.len());
            for j in 0..features.ncols() {
                for (value, &label) in features.col(j).iter().zip(self.input.labels()) {
                    sums[(j, label)] += value;
                }
            }
            sums
        })
    }

    /// (F - mean)'(F - mean) and the sum of ||x_i - mean||^4.
    pub(crate) fn gram(&self) -> &CentredGram {
        self.gram.get_or_init(|| linalg::centred_gram(self.input.features(), self.means()))
    }

    /// Eigendecomposition of the covariance cov(F) (ddof 1).
    pub(crate) fn covariance_eigen(&self) -> Result<&SymmetricEigen> {
        get_or_try(&self.covariance_eigen, || {
            SymmetricEigen::new(self.gram().gram.as_ref(), 1.0 / (self.num_samples() as f64 - 1.0), "feature covariance")
        })
    }

    /// v_i' cov(G) v_i for each eigenvector v_i of the covariance, where G replaces each row of
    /// F by its class mean and cov has ddof 1: sum_c n_c (v_i'(mu_c - mu))^2 / (N - 1).
    pub(crate) fn between_class_quadratic(&self) -> Result<&[f64]> {
        get_or_try(&self.between_class, || {
            let eigen = self.covariance_eigen()?;
            let means = self.means();
            let sums = self.class_sums();
            let d = means.len();
            let classes = self.class_counts.len();
            let centred_means = Mat::from_fn(d, classes, |j, c| sums[(j, c)] / self.class_counts[c] as f64 - means[j]);
            let mut projected = Mat::<f64>::zeros(d, classes);
            faer::linalg::matmul::matmul(
                projected.as_mut(),
                Accum::Replace,
                eigen.vectors.transpose(),
                centred_means.as_ref(),
                1.0,
                linalg::parallelism(),
            );
            let scale = 1.0 / (self.num_samples() as f64 - 1.0);
            Ok((0..d).map(|i| (0..classes).map(|c| self.class_counts[c] as f64 * projected[(i, c)].powi(2)).sum::<f64>() * scale).collect())
        })
        .map(Vec::as_slice)
    }

    /// PCA coordinates on the first `k` principal axes.
    pub(crate) fn pca_coordinates(&self, k: usize) -> Result<Mat<f64>> {
        let basis = self.covariance_eigen()?.top_vectors(k);
        Ok(linalg::project_centred(self.input.features(), self.means(), basis.as_ref()))
    }
}
