//! LogME (You et al. 2021): the maximum log evidence of a Bayesian linear model from the
//! features to each class indicator, found by the reference's fixed-point iteration and averaged
//! over classes (both indicators for a binary task, as the reference).
//!
//! The reference decomposes the uncentred Gram matrix B = F'F. Here B = A + w w' with A the
//! centred Gram (whose eigendecomposition the other scores share) and w = sqrt(N) mean, so every
//! quantity of the iteration follows from A's eigenbasis by the Sherman-Morrison identity and the
//! matrix determinant lemma, in O(D) per step, with no second D x D eigendecomposition:
//! - m = beta (alpha + beta B)^-1 F'y = (lambda + B)^-1 F'y, lambda = alpha / beta;
//! - gamma = sum_j s_j / (s_j + lambda) = sum_i l_i / (l_i + lambda) + lambda S2 / (1 + S1),
//!   with S1 = sum_i w_i^2 / (l_i + lambda), S2 = sum_i w_i^2 / (l_i + lambda)^2 (all terms
//!   positive: no cancellation);
//! - sum_j log(alpha + beta s_j) = sum_i log(alpha + beta l_i) + log(1 + beta sum_i w_i^2 / (alpha + beta l_i)).

use faer::{Accum, Mat};

use crate::analysis::FeatureAnalysis;
use crate::error::Result;
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::linalg::parallelism;

/// The reference's guard against division by zero in the updates of alpha and beta.
const EPSILON: f64 = 1e-7;
/// At most this many fixed-point updates, as the reference.
const MAX_ITERATIONS: usize = 11;
/// The fixed point stops when lambda = alpha / beta changes by less than this fraction.
const LAMBDA_TOLERANCE: f64 = 0.01;
/// Below this fraction of its scale the residual is computed from F m directly, not from the
/// eigenbasis expansion, which then loses digits to cancellation (N < D and similar).
const CANCELLATION_GUARD: f64 = 1e-6;

/// LogME of the features for the labels.
pub fn logme(input: &ScoreInput) -> Result<f64> {
    logme_of(&FeatureAnalysis::new(input))
}

/// The pieces of B = F'F in the centred Gram's eigenbasis.
struct Spectrum<'e> {
    /// Eigenvalues of the centred Gram A (the SVD the reference runs cannot give negatives:
    /// rounding ones are clamped to zero).
    values: Vec<f64>,
    /// V' w with w = sqrt(N) mean: B = A + w w'.
    mean_direction: Vec<f64>,
    /// The eigenvectors V, for the rare direct residual.
    vectors: &'e Mat<f64>,
}

pub(crate) fn logme_of(analysis: &FeatureAnalysis<'_>) -> Result<f64> {
    let eigen = analysis.covariance_eigen()?;
    let n = analysis.num_samples() as f64;
    let classes = analysis.class_counts.len();
    let d = analysis.feature_dim();
    // [sqrt(N) mean | class sums] projected on the eigenvectors in one product.
    let means = analysis.means();
    let sums = analysis.class_sums();
    let right = Mat::from_fn(d, classes + 1, |j, c| if c == 0 { n.sqrt() * means[j] } else { sums[(j, c - 1)] });
    let mut projected = Mat::<f64>::zeros(d, classes + 1);
    faer::linalg::matmul::matmul(projected.as_mut(), Accum::Replace, eigen.vectors.transpose(), right.as_ref(), 1.0, parallelism());
    let spectrum = Spectrum {
        // The covariance eigenvalues times N - 1 are those of the centred Gram.
        values: eigen.values.iter().map(|v| (v * (n - 1.0)).max(0.0)).collect(),
        mean_direction: projected.col(0).iter().copied().collect(),
        vectors: &eigen.vectors,
    };
    let mut total = 0.0;
    for class in 0..classes {
        let projected_sum: Vec<f64> = projected.col(class + 1).iter().copied().collect();
        total += class_evidence(analysis, &spectrum, &projected_sum, class);
    }
    finite("logme", total / classes as f64)
}

/// The maximum evidence per sample for one class indicator y; `g` = V' F'y.
fn class_evidence(analysis: &FeatureAnalysis<'_>, spectrum: &Spectrum<'_>, g: &[f64], class: usize) -> f64 {
    let n = analysis.num_samples() as f64;
    let l = &spectrum.values;
    let w = &spectrum.mean_direction;
    let d = l.len() as f64;
    let y_norm2 = analysis.class_counts[class] as f64;
    let mut alpha = 1.0f64;
    let mut beta = 1.0f64;
    let mut lambda = alpha / beta;
    let mut alpha_de = 0.0;
    let mut beta_de = 0.0;
    for _ in 0..MAX_ITERATIONS {
        // R0 = (A + lambda)^-1 is diagonal in the eigenbasis.
        let r0: Vec<f64> = l.iter().map(|li| 1.0 / (li + lambda)).collect();
        let s1: f64 = w.iter().zip(&r0).map(|(wi, r)| wi * wi * r).sum();
        let s2: f64 = w.iter().zip(&r0).map(|(wi, r)| wi * wi * r * r).sum();
        let gamma: f64 = l.iter().zip(&r0).map(|(li, r)| li * r).sum::<f64>() + lambda * s2 / (1.0 + s1);
        // c = V'm = (A + lambda + w w')^-1 g by Sherman-Morrison.
        let wr0g: f64 = w.iter().zip(&r0).zip(g).map(|((wi, r), gi)| wi * r * gi).sum();
        let factor = wr0g / (1.0 + s1);
        let c: Vec<f64> = r0.iter().zip(g).zip(w.iter()).map(|((r, gi), wi)| r * (gi - factor * wi)).collect();
        alpha_de = c.iter().map(|v| v * v).sum();
        alpha = gamma / (alpha_de + EPSILON);
        beta_de = residual(analysis, spectrum, g, &c, y_norm2, class);
        beta = (n - gamma) / (beta_de + EPSILON);
        let new_lambda = alpha / beta;
        if (new_lambda - lambda).abs() / (lambda + EPSILON) < LAMBDA_TOLERANCE {
            break;
        }
        lambda = new_lambda;
    }
    let log_det_a: f64 = l.iter().map(|li| (alpha + beta * li).ln()).sum();
    let lemma: f64 = w.iter().zip(l).map(|(wi, li)| wi * wi / (alpha + beta * li)).sum();
    let log_det = log_det_a + (1.0 + beta * lemma).ln();
    let evidence = d / 2.0 * alpha.ln() + n / 2.0 * beta.ln()
        - 0.5 * log_det
        - beta / 2.0 * beta_de
        - alpha / 2.0 * alpha_de
        - n / 2.0 * (2.0 * std::f64::consts::PI).ln();
    evidence / n
}

/// ||y - F m||^2 = y'y - 2 m'F'y + m'B m = y'y - 2 c'g + c'diag(l)c + (w'c)^2 in the eigenbasis
/// (no pass over the data), or directly from F m when that expansion would cancel.
fn residual(analysis: &FeatureAnalysis<'_>, spectrum: &Spectrum<'_>, g: &[f64], c: &[f64], y_norm2: f64, class: usize) -> f64 {
    let cross: f64 = c.iter().zip(g).map(|(ci, gi)| ci * gi).sum();
    let wc: f64 = c.iter().zip(&spectrum.mean_direction).map(|(ci, wi)| ci * wi).sum();
    let fitted: f64 = c.iter().zip(&spectrum.values).map(|(ci, li)| li * ci * ci).sum::<f64>() + wc * wc;
    let expanded = y_norm2 - 2.0 * cross + fitted;
    if expanded > CANCELLATION_GUARD * (y_norm2 + 2.0 * cross.abs() + fitted) {
        return expanded;
    }
    let features = analysis.input.features();
    let vectors = spectrum.vectors;
    let d = c.len();
    let m: Vec<f64> = (0..d).map(|j| (0..d).map(|k| vectors[(j, k)] * c[k]).sum()).collect();
    let mut fm = vec![0.0f64; features.nrows()];
    for (j, mj) in m.iter().enumerate() {
        for (i, value) in features.col(j).iter().enumerate() {
            fm[i] += value * mj;
        }
    }
    analysis
        .input
        .labels()
        .iter()
        .zip(&fm)
        .map(|(&label, f)| {
            let y = if label == class { 1.0 } else { 0.0 };
            (y - f).powi(2)
        })
        .sum()
}
