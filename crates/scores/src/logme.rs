//! LogME (You et al. 2021): the maximum log evidence of a Bayesian linear model from the
//! features to each class indicator, found by the reference's fixed-point iteration and averaged
//! over classes (both indicators for a binary task, as the reference).

use faer::{Accum, Mat};

use crate::analysis::FeatureAnalysis;
use crate::error::Result;
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::linalg::{SymmetricEigen, parallelism};

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

pub(crate) fn logme_of(analysis: &FeatureAnalysis<'_>) -> Result<f64> {
    let eigen = analysis.uncentred_eigen()?;
    let classes = analysis.class_counts.len();
    let d = analysis.feature_dim();
    // tmp = V' F' y for every class at once: F' y_c is the sum of class c's features.
    let eigen = &eigen;
    let mut projected = Mat::<f64>::zeros(d, classes);
    faer::linalg::matmul::matmul(projected.as_mut(), Accum::Replace, eigen.vectors.transpose(), analysis.class_sums().as_ref(), 1.0, parallelism());
    // Singular values of the symmetric PSD F'F, as the reference's SVD gives them.
    let s: Vec<f64> = eigen.values.iter().map(|v| v.abs()).collect();
    let mut total = 0.0;
    for class in 0..classes {
        let tmp: Vec<f64> = projected.col(class).iter().copied().collect();
        total += class_evidence(analysis, eigen, &s, &tmp, class);
    }
    finite("logme", total / classes as f64)
}

/// The maximum evidence per sample for one class indicator y.
fn class_evidence(analysis: &FeatureAnalysis<'_>, eigen: &SymmetricEigen, s: &[f64], tmp: &[f64], class: usize) -> f64 {
    let n = analysis.num_samples() as f64;
    let d = s.len() as f64;
    let y_norm2 = analysis.class_counts[class] as f64;
    let mut alpha = 1.0f64;
    let mut beta = 1.0f64;
    let mut lambda = alpha / beta;
    let mut alpha_de = 0.0;
    let mut beta_de = 0.0;
    for _ in 0..MAX_ITERATIONS {
        let gamma: f64 = s.iter().map(|si| si / (si + lambda)).sum();
        // m = V c with c = tmp * beta / (alpha + beta s); V is orthonormal, so m'm = c'c.
        let c: Vec<f64> = tmp.iter().zip(s).map(|(t, si)| t * beta / (alpha + beta * si)).collect();
        alpha_de = c.iter().map(|v| v * v).sum();
        alpha = gamma / (alpha_de + EPSILON);
        beta_de = residual(analysis, eigen, s, tmp, &c, y_norm2, class);
        beta = (n - gamma) / (beta_de + EPSILON);
        let new_lambda = alpha / beta;
        if (new_lambda - lambda).abs() / (lambda + EPSILON) < LAMBDA_TOLERANCE {
            break;
        }
        lambda = new_lambda;
    }
    let log_det: f64 = s.iter().map(|si| (alpha + beta * si).ln()).sum();
    let evidence = d / 2.0 * alpha.ln() + n / 2.0 * beta.ln() - 0.5 * log_det - beta / 2.0 * beta_de - alpha / 2.0 * alpha_de
        - n / 2.0 * (2.0 * std::f64::consts::PI).ln();
    evidence / n
}

/// ||y - F m||^2 = y'y - 2 c'tmp + sum s c^2 in the eigenbasis (no pass over the data), or
/// directly from F m when that expansion would cancel.
fn residual(analysis: &FeatureAnalysis<'_>, eigen: &SymmetricEigen, s: &[f64], tmp: &[f64], c: &[f64], y_norm2: f64, class: usize) -> f64 {
    let cross: f64 = c.iter().zip(tmp).map(|(ci, ti)| ci * ti).sum();
    let fitted: f64 = c.iter().zip(s).map(|(ci, si)| si * ci * ci).sum();
    let expanded = y_norm2 - 2.0 * cross + fitted;
    if expanded > CANCELLATION_GUARD * (y_norm2 + 2.0 * cross.abs() + fitted) {
        return expanded;
    }
    let features = analysis.input.features();
    let d = c.len();
    let m: Vec<f64> = (0..d).map(|j| (0..d).map(|k| eigen.vectors[(j, k)] * c[k]).sum()).collect();
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
