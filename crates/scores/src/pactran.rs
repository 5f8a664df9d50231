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
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::linalg::log_sum_exp;

/// The prior concentration upstream passes (`alpha = 1.`) and the Gamma's rates.
const ALPHA: f64 = 1.0;
const SWEEPS: usize = 10;
/// Upstream's guards inside the logarithms and on the prior.
const TINY: f64 = 1e-10;

/// PACTran-Dirichlet of the source probabilities for the labels (lower is better).
pub fn pactran_dir(input: &ScoreInput) -> Result<f64> {
    let state = MeanField::run(input, "pactran_dir", digamma_columns_minus_total)?;
    let (classes, cs) = (state.a.nrows(), state.a.ncols());
    let n = state.q.len() / cs;
    let log_c0 = libm::lgamma(state.a0.iter().sum()) - state.a0.iter().map(|&a| libm::lgamma(a)).sum::<f64>();
    let divergence = state.divergence_by_source();
    let mut total = 0.0;
    for (z, divergence) in divergence.iter().enumerate() {
        let column_sum: f64 = (0..classes).map(|y| state.a[(y, z)]).sum();
        let log_c = libm::lgamma(column_sum) - (0..classes).map(|y| libm::lgamma(state.a[(y, z)])).sum::<f64>();
        total += log_c0 - log_c - divergence;
    }
    finite("pactran_dir", -total / (n * classes) as f64)
}

/// PACTran-Gamma of the source probabilities for the labels (lower is better).
pub fn pactran_gam(input: &ScoreInput) -> Result<f64> {
    // beta = b = 1: log b terms vanish.
    let state = MeanField::run(input, "pactran_gam", |a| Mat::from_fn(a.nrows(), a.ncols(), |y, z| digamma(a[(y, z)])))?;
    let (classes, cs) = (state.a.nrows(), state.a.ncols());
    let n = state.q.len() / cs;
    let s = input.source_probs().ok_or(Error::MissingSourceProbs { metric: "pactran_gam" })?;
    // l_i = S_i . (sum_y A_y. / b), from the final A.
    let column_sums: Vec<f64> = (0..cs).map(|z| (0..classes).map(|y| state.a[(y, z)]).sum()).collect();
    let mut total = 0.0;
    for y in 0..classes {
        for z in 0..cs {
            total += libm::lgamma(state.a0[y]) - libm::lgamma(state.a[(y, z)]);
        }
    }
    let per_sample: f64 = (0..n)
        .into_par_iter()
        .map(|i| {
            let (q, log_q, log_s) = (state.row(&state.q, i), state.row(&state.log_q, i), state.row(&state.log_s, i));
            let divergence: f64 = (0..cs).map(|z| q[z] * (log_q[z] - log_s[z])).sum();
            let l: f64 = (0..cs).map(|z| s.get(i, z) * column_sums[z]).sum();
            divergence + l.ln() - 1.0
        })
        .sum();
    finite("pactran_gam", (total + per_sample) / (n * classes) as f64 + 1.0)
}

/// The mean-field sweeps both bounds share. q, log q and log s are N x Cs, row-major, so that
/// the samples update in parallel.
struct MeanField {
    a0: Vec<f64>,
    /// A = a0 + Y'q of the last sweep (C x Cs).
    a: Mat<f64>,
    q: Vec<f64>,
    log_q: Vec<f64>,
    log_s: Vec<f64>,
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
        let log_s: Vec<f64> = (0..n * cs).map(|k| (s.get(k / cs, k % cs) + TINY).ln()).collect();
        let mut q: Vec<f64> = (0..n * cs).map(|k| s.get(k / cs, k % cs)).collect();
        let mut log_q = vec![0.0; n * cs];
        let mut a = Mat::<f64>::zeros(classes, cs);
        for _ in 0..SWEEPS {
            a = Mat::from_fn(classes, cs, |y, _| a0[y]);
            for (i, row) in q.chunks(cs).enumerate() {
                for (z, value) in row.iter().enumerate() {
                    a[(labels[i], z)] += value;
                }
            }
            let shifted = shift(&a);
            q.par_chunks_mut(cs).zip(log_q.par_chunks_mut(cs)).zip(log_s.par_chunks(cs)).enumerate().for_each(
                |(i, ((q_row, log_q_row), log_s_row))| {
                    let y = labels[i];
                    for z in 0..cs {
                        log_q_row[z] = log_s_row[z] + shifted[(y, z)];
                    }
                    let log_sum = log_sum_exp(log_q_row);
                    for z in 0..cs {
                        log_q_row[z] -= log_sum;
                        q_row[z] = log_q_row[z].exp();
                    }
                },
            );
        }
        Ok(Self { a0, a, q, log_q, log_s })
    }

    /// Row i of one of the N x Cs row-major matrices.
    fn row<'m>(&self, matrix: &'m [f64], i: usize) -> &'m [f64] {
        let cs = self.a.ncols();
        &matrix[i * cs..(i + 1) * cs]
    }

    /// sum_i q_iz (log q_iz - log s_iz) for each source class z.
    fn divergence_by_source(&self) -> Vec<f64> {
        let cs = self.a.ncols();
        let mut out = vec![0.0; cs];
        for ((q, log_q), log_s) in self.q.chunks(cs).zip(self.log_q.chunks(cs)).zip(self.log_s.chunks(cs)) {
            for z in 0..cs {
                out[z] += q[z] * (log_q[z] - log_s[z]);
            }
        }
        out
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
