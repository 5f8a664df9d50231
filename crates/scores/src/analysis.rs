//! What several scores compute from the same features, computed once: the column means, the
//! centred Gram matrix and its eigendecomposition (H-score, regularized H-score, LogME, both
//! PCAs, NCTI), each class's share of the centred Gram (TransRate), and the class sums (LogME,
//! SFDA). `score_all` shares one `FeatureAnalysis` between the scores; each score function alone
//! builds its own.
//!
//! The centred Gram is always the sum of the classes' shares, added in class order, whether or
//! not the shares are kept: a score's value does not depend on which other scores were asked
//! for.

use std::cell::OnceCell;

use faer::{Accum, Mat};

use crate::error::Result;
use crate::input::ScoreInput;
use crate::linalg::{self, CentredGram, SymmetricEigen};

/// The most memory the classes' Gram shares may take together (C D^2 f64: 128 MiB for four
/// classes at D = 2048, 1 GiB for 32).
pub(crate) const CLASS_GRAMS_BUDGET: usize = 1 << 30;

/// The shared statistics a set of scores uses ([`FeatureAnalysis::prepare`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Needs {
    pub class_grams: bool,
    pub gram: bool,
    pub class_sums: bool,
    pub covariance_eigen: bool,
    pub between_class: bool,
}

#[derive(Debug)]
pub(crate) struct FeatureAnalysis<'a> {
    pub input: &'a ScoreInput,
    pub class_counts: Vec<usize>,
    means: OnceCell<Vec<f64>>,
    class_sums: OnceCell<Mat<f64>>,
    gram: OnceCell<CentredGram>,
    class_grams: OnceCell<Option<Vec<Mat<f64>>>>,
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
            class_grams: OnceCell::new(),
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
        self.gram.get_or_init(|| self.class_pass(false).0)
    }

    /// Each class's share of the centred Gram, Z_c'Z_c for the rows of class c centred at the
    /// mean of all rows, D x D each; `None` where keeping them all would take more than
    /// [`CLASS_GRAMS_BUDGET`] bytes (the scores that use them then compute one at a time).
    pub(crate) fn class_grams(&self) -> Option<&[Mat<f64>]> {
        self.class_grams
            .get_or_init(|| {
                let d = self.feature_dim();
                if self.class_counts.len() * d * d * size_of::<f64>() > CLASS_GRAMS_BUDGET {
                    return None;
                }
                let (gram, shares) = self.class_pass(true);
                // The same pass the Gram alone takes: the same bits.
                let _ = self.gram.set(gram);
                shares
            })
            .as_deref()
    }

    /// One pass over the classes: the centred Gram as the sum of the classes' shares, added in
    /// class order, and the shares themselves if `keep`.
    fn class_pass(&self, keep: bool) -> (CentredGram, Option<Vec<Mat<f64>>>) {
        let features = self.input.features();
        let means = self.means();
        let d = self.feature_dim();
        let mut total = CentredGram { gram: Mat::zeros(d, d), sum_row_norm4: 0.0 };
        let mut shares = keep.then(Vec::new);
        for rows in linalg::class_rows(self.input.labels(), self.class_counts.len()) {
            let share = linalg::gram_of_rows(features, &rows, |_, j, x| x - means[j]);
            total.gram += &share.gram;
            total.sum_row_norm4 += share.sum_row_norm4;
            if let Some(shares) = shares.as_mut() {
                shares.push(share.gram);
            }
        }
        (total, shares)
    }

    /// Computes up front the statistics `needs` names, so that each score then costs only its
    /// own arithmetic. The classes' Gram shares come before the Gram, which is their sum. A
    /// statistic that fails is left to fail again, with its error, in the score that needs it.
    pub(crate) fn prepare(&self, needs: Needs) {
        let _ = self.means();
        if needs.class_grams {
            self.class_grams();
        }
        if needs.gram {
            self.gram();
        }
        if needs.class_sums {
            self.class_sums();
        }
        if needs.covariance_eigen {
            let _ = self.covariance_eigen();
        }
        if needs.between_class {
            let _ = self.between_class_quadratic();
        }
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
