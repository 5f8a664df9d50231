//! PACTran (Ding et al., ECCV 2022): the Dirichlet and Gamma PAC-Bayesian bounds on the source
//! model's probabilities, as google-research/pactran_metrics' `compute_metrics.py` computes them
//! (`calculate_pac_dir`, `calculate_pac_gamma`, alpha = 1, beta = 1; ../shared/docs/
//! SCORES-BEYOND.md, section 5). Bounds: lower is better.
//!
//! Both run ten mean-field sweeps over q (N x Cs, starting at the source softmax S): A = a0 +
//! Y'q with a0_y = alpha n_y / N + 1e-10, then q = softmax(log(S + 1e-10) + Y psi(A) - ...).
//! The final A is the one the last sweep's q update read. Upstream forms Y'q through an N x C x
//! Cs tensor; here it is the same sum by class.

use faer::Mat;

use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;

/// The prior concentration upstream passes (`alpha = 1.`) and the Gamma's rates.
const ALPHA: f64 = 1.0;
const SWEEPS: usize = 10;
/// Upstream's guards inside the logarithms and on the prior.
const TINY: f64 = 1e-10;

/// PACTran-Dirichlet of the source probabilities for the labels (lower is better).
pub fn pactran_dir(input: &ScoreInput) -> Result<f64> {
    let state = MeanField::run(input, "pactran_dir", digamma_columns_minus_total)?;
    let classes = state.a.nrows();
    let (n, cs) = (state.q.nrows(), state.q.ncols());
    let log_c0 = libm::lgamma(state.a0.iter().sum()) - state.a0.iter().map(|&a| libm::lgamma(a)).sum::<f64>();
    let mut total = 0.0;
    for z in 0..cs {
        let column_sum: f64 = (0..classes).map(|y| state.a[(y, z)]).sum();
        let log_c = libm::lgamma(column_sum) - (0..classes).map(|y| libm::lgamma(state.a[(y, z)])).sum::<f64>();
        let divergence: f64 = (0..n).map(|i| state.q[(i, z)] * (state.log_q[(i, z)] - state.log_s[(i, z)])).sum();
        total += log_c0 - log_c - divergence;
    }
    finite("pactran_dir", -total / (n * classes) as f64)
}

/// PACTran-Gamma of the source probabilities for the labels (lower is better).
pub fn pactran_gam(input: &ScoreInput) -> Result<f64> {
    // beta = b = 1: log b terms vanish.
    let state = MeanField::run(input, "pactran_gam", |a| Mat::from_fn(a.nrows(), a.ncols(), |y, z| digamma(a[(y, z)])))?;
    let classes = state.a.nrows();
    let (n, cs) = (state.q.nrows(), state.q.ncols());
    let s = input.source_probs().ok_or(Error::MissingSourceProbs { metric: "pactran_gam" })?;
    // l_i = S_i . (sum_y A_y. / b), from the final A.
    let column_sums: Vec<f64> = (0..cs).map(|z| (0..classes).map(|y| state.a[(y, z)]).sum()).collect();
    let mut total = 0.0;
    for y in 0..classes {
        for z in 0..cs {
            total += libm::lgamma(state.a0[y]) - libm::lgamma(state.a[(y, z)]);
        }
    }
    for i in 0..n {
        let divergence: f64 = (0..cs).map(|z| state.q[(i, z)] * (state.log_q[(i, z)] - state.log_s[(i, z)])).sum();
        let l: f64 = (0..cs).map(|z| s.get(i, z) * column_sums[z]).sum();
        total += divergence + l.ln() - 1.0;
    }
    finite("pactran_gam", total / (n * classes) as f64 + 1.0)
}

/// The mean-field sweeps both bounds share.
struct MeanField {
    a0: Vec<f64>,
    /// A = a0 + Y'q of the last sweep (C x Cs).
    a: Mat<f64>,
    q: Mat<f64>,
    log_q: Mat<f64>,
    log_s: Mat<f64>,
}

impl MeanField {
    /// `shift(A)` (C x Cs) is what row y_i adds to log s_i: psi(A) - psi(column sums) for the
    /// Dirichlet, psi(A) - log b for the Gamma.
    fn run(input: &ScoreInput, metric: &'static str, shift: impl Fn(&Mat<f64>) -> Mat<f64>) -> Result<Self> {
        let s = input.source_probs().ok_or(Error::MissingSourceProbs { metric })?;
        let (n, cs) = s.shape();
        let labels = input.labels();
        let classes = input.num_classes();
        let counts = input.class_counts();
        let a0: Vec<f64> = counts.iter().map(|&c| ALPHA * c as f64 / n as f64 + TINY).collect();
        let log_s = Mat::from_fn(n, cs, |i, z| (s.get(i, z) + TINY).ln());
        let mut q = Mat::from_fn(n, cs, |i, z| s.get(i, z));
        let mut log_q = Mat::<f64>::zeros(n, cs);
        let mut a = Mat::<f64>::zeros(classes, cs);
        for _ in 0..SWEEPS {
            a = Mat::from_fn(classes, cs, |y, _| a0[y]);
            for i in 0..n {
                for z in 0..cs {
                    a[(labels[i], z)] += q[(i, z)];
                }
            }
            let shifted = shift(&a);
            for i in 0..n {
                let logits: Vec<f64> = (0..cs).map(|z| log_s[(i, z)] + shifted[(labels[i], z)]).collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let log_sum = max + logits.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                for z in 0..cs {
                    log_q[(i, z)] = logits[z] - log_sum;
                    q[(i, z)] = log_q[(i, z)].exp();
                }
            }
        }
        Ok(Self { a0, a, q, log_q, log_s })
    }
}

/// psi(A_yz) - psi(sum_y A_yz).
fn digamma_columns_minus_total(a: &Mat<f64>) -> Mat<f64> {
    let totals: Vec<f64> = (0..a.ncols()).map(|z| digamma((0..a.nrows()).map(|y| a[(y, z)]).sum())).collect();
    Mat::from_fn(a.nrows(), a.ncols(), |y, z| digamma(a[(y, z)]) - totals[z])
}

/// The digamma function for x > 0: the recurrence psi(x) = psi(x + 1) - 1/x up to x >= 10, then
/// the asymptotic series ln x - 1/(2x) - sum B_2k / (2k x^2k) (to x^-14; the next term is below
/// 1e-16 at x = 10).
pub(crate) fn digamma(mut x: f64) -> f64 {
    let mut result = 0.0;
    while x < 10.0 {
        result -= 1.0 / x;
        x += 1.0;
    }
    let inv2 = 1.0 / (x * x);
    // B_2k / (2k): 1/12, -1/120, 1/252, -1/240, 1/132, -691/32760, 1/12.
    let series = inv2
        * (1.0 / 12.0
            - inv2
                * (1.0 / 120.0
                    - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 * (1.0 / 132.0 - inv2 * (691.0 / 32760.0 - inv2 / 12.0))))));
    result + x.ln() - 0.5 / x - series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digamma_matches_known_values() {
        // psi(1) = -Euler's gamma; psi(1/2) = -gamma - 2 ln 2; psi(10) from scipy.special.digamma.
        let euler = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + euler).abs() < 1e-15);
        assert!((digamma(0.5) + euler + 2.0 * std::f64::consts::LN_2).abs() < 1e-14);
        assert!((digamma(10.0) - 2.251_752_589_066_721).abs() < 1e-14);
        assert!((digamma(1e-10) + 1e10 + euler).abs() < 1e-4);
    }
}
