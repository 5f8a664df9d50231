//! PACTran-Gauss (Ding et al., ECCV 2022) as google-research/pactran_metrics'
//! `calculate_pac_gauss` computes it (../shared/docs/SCORES-BEYOND.md, section 5), with its
//! optimiser run to convergence. A PAC-Bayesian bound: lower is better.
//!
//! On the centred features X (N x D) and one-hot labels Y (C classes), with ldas2 = lambda N:
//! 1. theta* = argmin loss(W, b) = (1/N) sum_i sum_c Y_ic (ln(Y_ic + 1e-10) - ln softmax(XW + b)_ic)
//!    + |W|^2 / (2 ldas2), a strictly convex softmax regression;
//! 2. the Hessian's diagonal at theta*, summed: sum_ic p_ic (1 - p_ic)(|x_i|^2 + 1) + DC/ldas2
//!    (upstream's `pac_grad2`, which leaves out the loss's 1/N);
//! 3. PAC_Gauss = loss(theta*) + (DC / (2 ldas2)) (s2 / D) ln(sum h ldas2 / (DC) + 1e-10), where
//!    upstream's s2 factor is 1000, 100 and 10 for lambda = 10, 1 and 0.1 (the first of each
//!    pair it reports): 100 lambda, the rule here for any lambda.
//!
//! Upstream starts from a random W (N(0, 1) x 0.03 from numpy's global stream) and stops
//! L-BFGS-B at 100 iterations or a relative decrease of 1e-6, some 1e-5 short of the optimum
//! and seed-dependent. The optimum is unique (the bias's shift along all classes leaves the loss
//! unchanged), so this runs from zero to a gradient of 1e-11: the value upstream approximates.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};

use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::lbfgs::{LbfgsOptions, minimize};
use crate::linalg::{column_means, log_sum_exp, parallelism};

/// The ridge factor lambda `main()` reports first, and the one the ETran repository uses.
pub const PACTRAN_GAUSS_LAMBDA: f64 = 1.0;
/// Upstream's s2 factor per lambda: 100 lambda.
const S2_PER_LAMBDA: f64 = 100.0;
/// Upstream's guards inside the logarithms.
const TINY: f64 = 1e-10;

/// PACTran-Gauss of the features for the labels at lambda = 1 (lower is better).
pub fn pactran_gauss(input: &ScoreInput) -> Result<f64> {
    pactran_gauss_with(input, PACTRAN_GAUSS_LAMBDA)
}

/// PACTran-Gauss at a given lambda (> 0): the prior variance of the weights scales with it.
pub fn pactran_gauss_with(input: &ScoreInput, lambda: f64) -> Result<f64> {
    if !(lambda > 0.0 && lambda.is_finite()) {
        return Err(Error::NonFiniteScore { metric: "pactran_gauss", value: lambda, why: "lambda must be a positive number" });
    }
    let features = input.features();
    let (n, d) = features.shape();
    let classes = input.num_classes();
    let labels = input.labels();
    let means = column_means(features);
    let centred = Mat::from_fn(n, d, |i, j| features[(i, j)] - means[j]);
    let ldas2 = lambda * n as f64;
    let problem = SoftmaxRegression { x: centred.as_ref(), labels, classes, ldas2 };
    let found = minimize(
        "pactran_gauss",
        |theta, gradient| problem.loss_and_gradient(theta, gradient),
        vec![0.0; (d + 1) * classes],
        LbfgsOptions::default(),
    )?;
    let probabilities = problem.probabilities(&found.x);
    let mut curvature = (d * classes) as f64 / ldas2;
    for i in 0..n {
        let norm2: f64 = (0..d).map(|j| centred[(i, j)].powi(2)).sum::<f64>() + 1.0;
        curvature += norm2 * (0..classes).map(|c| probabilities[(i, c)] * (1.0 - probabilities[(i, c)])).sum::<f64>();
    }
    let kd = (d * classes) as f64;
    let sigma2_inv = curvature * ldas2 / kd + TINY;
    let s2 = S2_PER_LAMBDA * lambda / d as f64;
    finite("pactran_gauss", found.value + 0.5 * kd / ldas2 * s2 * sigma2_inv.ln())
}

/// The regularised softmax regression; theta holds W (D x C, column-major) then b (C).
struct SoftmaxRegression<'a> {
    x: MatRef<'a, f64>,
    labels: &'a [usize],
    classes: usize,
    ldas2: f64,
}

impl SoftmaxRegression<'_> {
    fn logits(&self, theta: &[f64]) -> Mat<f64> {
        let (n, d) = self.x.shape();
        let w = MatRef::from_column_major_slice(&theta[..d * self.classes], d, self.classes);
        let bias = &theta[d * self.classes..];
        let mut logits = Mat::<f64>::zeros(n, self.classes);
        matmul(logits.as_mut(), Accum::Replace, self.x, w, 1.0, parallelism());
        for c in 0..self.classes {
            logits.col_mut(c).iter_mut().for_each(|v| *v += bias[c]);
        }
        logits
    }

    fn probabilities(&self, theta: &[f64]) -> Mat<f64> {
        let mut logits = self.logits(theta);
        crate::linalg::softmax_rows(&mut logits);
        logits
    }

    fn loss_and_gradient(&self, theta: &[f64], gradient: &mut [f64]) -> f64 {
        let (n, d) = self.x.shape();
        let mut residual = self.logits(theta);
        let mut cross_entropy = 0.0;
        let mut row = vec![0.0; self.classes];
        for i in 0..n {
            for (c, value) in row.iter_mut().enumerate() {
                *value = residual[(i, c)];
            }
            let log_sum = log_sum_exp(&row);
            cross_entropy -= row[self.labels[i]] - log_sum;
            // (softmax - Y) / N, the gradient of the mean cross-entropy in the logits.
            for (c, value) in row.iter().enumerate() {
                let target = if c == self.labels[i] { 1.0 } else { 0.0 };
                residual[(i, c)] = ((value - log_sum).exp() - target) / n as f64;
            }
        }
        // sum_i Y_i . ln(Y_i + 1e-10) / N: each one-hot row contributes ln(1 + 1e-10).
        let loss_constant = (1.0 + TINY).ln();
        let weights = &theta[..d * self.classes];
        let ridge = 0.5 * weights.iter().map(|w| w * w).sum::<f64>() / self.ldas2;
        let (gradient_w, gradient_b) = gradient.split_at_mut(d * self.classes);
        let mut gw = faer::MatMut::from_column_major_slice_mut(gradient_w, d, self.classes);
        matmul(gw.as_mut(), Accum::Replace, self.x.transpose(), residual.as_ref(), 1.0, parallelism());
        for (g, w) in gradient_w.iter_mut().zip(weights) {
            *g += w / self.ldas2;
        }
        for (c, g) in gradient_b.iter_mut().enumerate() {
            *g = residual.col(c).iter().sum();
        }
        cross_entropy / n as f64 + loss_constant + ridge
    }
}
