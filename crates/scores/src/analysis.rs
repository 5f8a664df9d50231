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
    pub means: Vec<f64>,
    pub class_counts: Vec<usize>,
    /// Sum of the (uncentred) features of each class, D x C: F'y_c for LogME.
    pub class_sums: Mat<f64>,
    centred: OnceCell<CentredStats>,
    uncentred_eigen: OnceCell<SymmetricEigen>,
    between_class: OnceCell<Vec<f64>>,
}

/// The centred Gram matrix and the eigendecomposition of the covariance (ddof 1).
#[derive(Debug)]
pub(crate) struct CentredStats {
    pub gram: CentredGram,
    pub covariance_eigen: SymmetricEigen,
}

impl<'a> FeatureAnalysis<'a> {
    pub(crate) fn new(input: &'a ScoreInput) -> Self {
        let features = input.features();
        let (_, d) = features.shape();
        let classes = input.num_classes();
        let mut class_sums = Mat::<f64>::zeros(d, classes);
        for j in 0..d {
            for (i, &label) in input.labels().iter().enumerate() {
                class_sums[(j, label)] += features[(i, j)];
            }
        }
        Self {
            input,
            means: linalg::column_means(features),
            class_counts: input.class_counts(),
            class_sums,
            centred: OnceCell::new(),
            uncentred_eigen: OnceCell::new(),
            between_class: OnceCell::new(),
        }
    }

    pub(crate) fn num_samples(&self) -> usize {
        self.input.num_samples()
    }

    pub(crate) fn centred(&self) -> Result<&CentredStats> {
        if let Some(stats) = self.centred.get() {
            return Ok(stats);
        }
        let gram = linalg::centred_gram(self.input.features(), &self.means);
        let scale = 1.0 / (self.num_samples() as f64 - 1.0);
        let covariance = Mat::from_fn(gram.gram.nrows(), gram.gram.ncols(), |i, j| gram.gram[(i, j)] * scale);
        let covariance_eigen = SymmetricEigen::new(covariance.as_ref(), "feature covariance")?;
        Ok(self.centred.get_or_init(|| CentredStats { gram, covariance_eigen }))
    }

    /// Eigendecomposition of F'F, from the centred Gram plus N mean mean'.
    pub(crate) fn uncentred_eigen(&self) -> Result<&SymmetricEigen> {
        if let Some(eigen) = self.uncentred_eigen.get() {
            return Ok(eigen);
        }
        let centred = &self.centred()?.gram.gram;
        let n = self.num_samples() as f64;
        let gram = Mat::from_fn(centred.nrows(), centred.ncols(), |i, j| centred[(i, j)] + n * self.means[i] * self.means[j]);
        let eigen = SymmetricEigen::new(gram.as_ref(), "uncentred Gram matrix F'F")?;
        Ok(self.uncentred_eigen.get_or_init(|| eigen))
    }

    /// v_i' cov(G) v_i for each eigenvector v_i of the covariance, where G replaces each row of
    /// F by its class mean and cov has ddof 1: sum_c n_c (v_i'(mu_c - mu))^2 / (N - 1).
    pub(crate) fn between_class_quadratic(&self) -> Result<&[f64]> {
        if let Some(q) = self.between_class.get() {
            return Ok(q);
        }
        let eigen = &self.centred()?.covariance_eigen;
        let d = self.means.len();
        let classes = self.class_counts.len();
        let centred_means = Mat::from_fn(d, classes, |j, c| self.class_sums[(j, c)] / self.class_counts[c] as f64 - self.means[j]);
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
        let q = (0..d)
            .map(|i| (0..classes).map(|c| self.class_counts[c] as f64 * projected[(i, c)].powi(2)).sum::<f64>() * scale)
            .collect();
        Ok(self.between_class.get_or_init(|| q))
    }

    /// PCA coordinates on the first `k` principal axes.
    pub(crate) fn pca_coordinates(&self, k: usize) -> Result<Mat<f64>> {
        let eigen = &self.centred()?.covariance_eigen;
        let basis = eigen.vectors.as_ref().subcols(0, k);
        Ok(linalg::project_centred(self.input.features(), &self.means, basis))
    }
}
