//! SFDA, Self-challenging Fisher Discriminant Analysis (Shao et al., ECCV 2022), as
//! TencentARC/SFDA's `metrics.py` (`SFDA`, `SFDA_Score`) and `utils.py` (`iterative_A`) compute
//! it (../shared/docs/SCORES-BEYOND.md, section 2):
//!
//! 1. A Fisher fit: priors n_c/N, class means M, Sw = sum_c pi_c Cov_c (population
//!    covariances), its largest eigenvalue by three power-iteration rounds, the shrinkage
//!    lambda = max(exp(-5 lambda_w), 1e-10), Sw~ = (1 - lambda) Sw + lambda tr(Sw)/D I; the
//!    probabilities softmax(X coef' + b) with coef = M V V' for the generalised eigenvectors V
//!    of (Sb, Sw~), all D of them kept, and b_c = -1/2 mu_c . coef_c + log pi_c.
//! 2. The probabilities softened by a second softmax; ConfMix: each sample moved towards the
//!    unweighted mean of the other classes' means by 1 - its softened probability of its own
//!    class.
//! 3. The Fisher fit again on the mixed features with the same lambda; the score is the mean
//!    probability of the true class (no log). Higher is better.
//!
//! All D eigenvectors are kept and V is Sw~-orthonormal, so V V' = Sw~^-1: coef = M Sw~^-1 by a
//! Cholesky solve (Sb and the total covariance, which the released code computes, do not enter
//! the probabilities). The first fit's within-class scatter is the centred Gram that the other
//! scores share less the between-class scatter, N Sw = (X - mu)'(X - mu) - sum_c n_c (mu_c - mu)
//! (mu_c - mu)': one pass over the features fewer. (The subtraction loses digits only where the
//! classes lie far apart relative to their spread, by the ratio of the two scatters' norms.)

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use rayon::prelude::*;

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::linalg::{gram_of_rows, log_sum_exp, parallelism, softmax_rows};

/// The exponent's factor and the floor of SFDA's adaptive shrinkage, hard-coded upstream.
const SHRINKAGE_RATE: f64 = 5.0;
const SHRINKAGE_FLOOR: f64 = 1e-10;
/// `iterative_A(Sw, max_iterations=3)`.
const POWER_ITERATIONS: usize = 3;

/// SFDA of the features for the labels.
pub fn sfda(input: &ScoreInput) -> Result<f64> {
    sfda_of(&FeatureAnalysis::new(input))
}

pub(crate) fn sfda_of(analysis: &FeatureAnalysis<'_>) -> Result<f64> {
    let input = analysis.input;
    let labels = input.labels();
    let classes = input.num_classes();
    let n = input.num_samples();
    let counts = &analysis.class_counts;
    let features = input.features();
    let d = analysis.feature_dim();
    // The first fit from the shared analysis: class means from the class sums, and the
    // within-class scatter from the centred Gram less the between-class scatter.
    let sums = analysis.class_sums();
    let means = Mat::from_fn(classes, d, |c, j| sums[(j, c)] / counts[c] as f64);
    let global = analysis.means();
    let between = Mat::from_fn(d, classes, |j, c| (counts[c] as f64).sqrt() * (means[(c, j)] - global[j]));
    let mut scatter = analysis.gram().gram.clone();
    matmul(scatter.as_mut(), Accum::Add, between.as_ref(), between.transpose(), -1.0, parallelism());
    let first = FisherFit::from_scatter(scatter, means, counts, None)?;
    let soft = first.probabilities(features)?;
    // The second softmax ("soften"), then ConfMix towards the other classes' mean means.
    let means = &first.means;
    let total: Vec<f64> = (0..d).map(|j| (0..classes).map(|c| means[(c, j)]).sum()).collect();
    let others = Mat::from_fn(classes, d, |c, j| (total[j] - means[(c, j)]) / (classes as f64 - 1.0));
    // Each sample's softened probability of its own class, once.
    let own: Vec<f64> = (0..n)
        .map(|i| {
            let row: Vec<f64> = (0..classes).map(|k| soft[(i, k)]).collect();
            (row[labels[i]] - log_sum_exp(&row)).exp()
        })
        .collect();
    // The mixed features own_i x_i + (1 - own_i) o_y(i) are never stored: their class means
    // from one weighted pass, their within-class scatter from blocks built on the fly, their
    // logits as own_i (x_i coef') + (1 - own_i)(o_y(i) coef').
    let mut other_weight = vec![0.0; classes];
    for (i, &label) in labels.iter().enumerate() {
        other_weight[label] += 1.0 - own[i];
    }
    // Column by column, in parallel (each column's sums in sample order, whatever the split).
    let mut mixed_sums = vec![0.0; d * classes];
    mixed_sums.par_chunks_mut(classes).enumerate().for_each(|(j, sums)| {
        for ((&label, &weight), &x) in labels.iter().zip(&own).zip(features.col(j).iter()) {
            sums[label] += weight * x;
        }
    });
    let mixed_means = Mat::from_fn(classes, d, |c, j| (mixed_sums[j * classes + c] + other_weight[c] * others[(c, j)]) / counts[c] as f64);
    let all: Vec<usize> = (0..n).collect();
    let scatter =
        gram_of_rows(features, &all, |i, j, x| own[i] * x + (1.0 - own[i]) * others[(labels[i], j)] - mixed_means[(labels[i], j)]).gram;
    let second = FisherFit::from_scatter(scatter, mixed_means, counts, Some(first.shrinkage))?;
    let (feature_logits, other_logits) = (second.logits(features), second.logits(others.as_ref()));
    let logits = Mat::from_fn(n, classes, |i, k| own[i] * feature_logits[(i, k)] + (1.0 - own[i]) * other_logits[(labels[i], k)]);
    let probabilities = second.probabilities_of(logits)?;
    let score = (0..n).map(|i| probabilities[(i, labels[i])]).sum::<f64>() / n as f64;
    finite("sfda", score)
}

/// One `SFDA.fit`: the class means, the shrinkage used, and the linear classifier.
struct FisherFit {
    means: Mat<f64>,
    shrinkage: f64,
    /// coef' = Sw~^-1 M' (D x C).
    coef_t: Mat<f64>,
    intercept: Vec<f64>,
}

impl FisherFit {
    /// The fit from the class means (C x D) and the within-class scatter N Sw (D x D), whose
    /// lower triangle becomes the Cholesky factor of Sw~ in place (no second D x D matrix).
    fn from_scatter(mut scatter: Mat<f64>, means: Mat<f64>, counts: &[usize], shrinkage: Option<f64>) -> Result<Self> {
        let d = scatter.nrows();
        let classes = counts.len();
        let n = counts.iter().sum::<usize>() as f64;
        let shrinkage = match shrinkage {
            Some(given) => given,
            None => (-SHRINKAGE_RATE * largest_eigenvalue(scatter.as_ref()) / n).exp().max(SHRINKAGE_FLOOR),
        };
        let mu = (0..d).map(|j| scatter[(j, j)] / n).sum::<f64>() / d as f64;
        // Sw~ = (1 - lambda) Sw + lambda mu I, on the lower triangle that the factorisation reads.
        for j in 0..d {
            let column = scatter.as_mut().col_mut(j).subrows_mut(j, d - j);
            column.iter_mut().for_each(|v| *v = *v / n * (1.0 - shrinkage));
            scatter[(j, j)] += shrinkage * mu;
        }
        let not_positive_definite = |_| Error::NonFiniteScore {
            metric: "sfda",
            value: f64::NAN,
            why: "the shrunk within-class covariance is not positive definite (features with no within-class variance)",
        };
        let par = parallelism();
        let scratch = llt::factor::cholesky_in_place_scratch::<f64>(d, par, Default::default())
            .or(llt::solve::solve_in_place_scratch::<f64>(d, classes, par));
        let mut buffer = MemBuffer::new(scratch);
        llt::factor::cholesky_in_place(scatter.as_mut(), Default::default(), par, MemStack::new(&mut buffer), Default::default())
            .map_err(not_positive_definite)?;
        let mut coef_t = means.transpose().to_owned();
        llt::solve::solve_in_place(scatter.as_ref(), coef_t.as_mut(), par, MemStack::new(&mut buffer));
        let intercept = (0..classes)
            .map(|c| {
                let quadratic: f64 = (0..d).map(|j| means[(c, j)] * coef_t[(j, c)]).sum();
                -0.5 * quadratic + (counts[c] as f64 / n).ln()
            })
            .collect();
        Ok(Self { means, shrinkage, coef_t, intercept })
    }

    /// softmax(X coef' + b), N x C.
    fn probabilities(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.probabilities_of(self.logits(x))
    }

    /// X coef', without the intercept.
    fn logits(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        let mut scores = Mat::<f64>::zeros(x.nrows(), self.intercept.len());
        matmul(scores.as_mut(), Accum::Replace, x, self.coef_t.as_ref(), 1.0, parallelism());
        scores
    }

    /// softmax(logits + b).
    fn probabilities_of(&self, mut scores: Mat<f64>) -> Result<Mat<f64>> {
        for (c, intercept) in self.intercept.iter().enumerate() {
            scores.col_mut(c).iter_mut().for_each(|v| *v += intercept);
        }
        softmax_rows(&mut scores);
        if scores.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
            return Err(Error::NonFiniteScore { metric: "sfda", value: f64::NAN, why: "the Fisher classifier's scores overflowed" });
        }
        Ok(scores)
    }
}

/// `iterative_A`: x = the row sums; three rounds of y = A x / |A x|, x = A y / |A y|; x' A y.
fn largest_eigenvalue(a: MatRef<'_, f64>) -> f64 {
    let d = a.nrows();
    let apply = |v: &Mat<f64>| -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(d, 1);
        matmul(out.as_mut(), Accum::Replace, a, v.as_ref(), 1.0, parallelism());
        out
    };
    let normalised = |v: Mat<f64>| {
        let norm = v.col(0).iter().map(|x| x * x).sum::<f64>().sqrt();
        Mat::from_fn(d, 1, |i, _| v[(i, 0)] / norm)
    };
    // The row sums, as the column sums of the symmetric matrix (contiguous in memory).
    let mut x = Mat::from_fn(d, 1, |i, _| a.col(i).iter().sum::<f64>());
    let mut y = x.clone();
    for _ in 0..POWER_ITERATIONS {
        y = normalised(apply(&x));
        x = normalised(apply(&y));
    }
    let ay = apply(&y);
    (0..d).map(|i| x[(i, 0)] * ay[(i, 0)]).sum()
}
