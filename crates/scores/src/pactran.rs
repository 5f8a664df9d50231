//! PACTran (Ding et al., ECCV 2022): the Dirichlet and Gamma PAC-Bayesian bounds on the source
//! model's probabilities, as google-research/pactran_metrics' `compute_metrics.py` computes them
//! (`calculate_pac_dir`, `calculate_pac_gamma`, alpha = 1, beta = 1; ../shared/docs/
//! SCORES-BEYOND.md, section 5). Bounds: lower is better.
//!
//! Both run ten mean-field sweeps over q (N x Cs, starting at the source softmax S): A = a0 +
//! Y'q with a0_y = alpha n_y / N + 1e-10, then q = softmax(log(S + 1e-10) + Y psi(A) - ...).
//! The final A is the one the last sweep's q update read. Upstream forms Y'q through an N x C x
//! Cs tensor; here it is the same sum by class, and the softmax a product (see `MeanField`).

use faer::Mat;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;

/// The prior concentration upstream passes (`alpha = 1.`) and the Gamma's rates.
const ALPHA: f64 = 1.0;
const SWEEPS: usize = 10;
/// Upstream's guards inside the logarithms and on the prior.
const TINY: f64 = 1e-10;
/// Rows of q one thread sums at a time into A.
const SUM_ROWS: usize = 256;

/// PACTran-Dirichlet of the source probabilities for the labels (lower is better).
pub fn pactran_dir(input: &ScoreInput) -> Result<f64> {
    let state = MeanField::run(input, "pactran_dir", digamma_columns_minus_total)?;
    let classes = state.a.nrows();
    let n = state.log_norm.len();
    let log_c0 = libm::lgamma(state.a0.iter().sum()) - state.a0.iter().map(|&a| libm::lgamma(a)).sum::<f64>();
    let divergence = state.divergence_by_source(input.labels());
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
    let n = state.log_norm.len();
    let s = input.source_probs().ok_or(Error::MissingSourceProbs { metric: "pactran_gam" })?;
    let labels = input.labels();
    // l_i = S_i . (sum_y A_y. / b), from the final A.
    let column_sums: Vec<f64> = (0..cs).map(|z| (0..classes).map(|y| state.a[(y, z)]).sum()).collect();
    let mut total = 0.0;
    for y in 0..classes {
        for z in 0..cs {
            total += libm::lgamma(state.a0[y]) - libm::lgamma(state.a[(y, z)]);
        }
    }
    // Per sample in parallel, summed in sample order (deterministic).
    let per_sample: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let q = &state.q[i * cs..(i + 1) * cs];
            let divergence = state.divergence_of_row(q, labels[i], state.log_norm[i]);
            let l: f64 = (0..cs).map(|z| s.get(i, z) * column_sums[z]).sum();
            divergence + l.ln() - 1.0
        })
        .collect();
    let per_sample: f64 = per_sample.iter().sum();
    finite("pactran_gam", (total + per_sample) / (n * classes) as f64 + 1.0)
}

/// The mean-field sweeps both bounds share. q is N x Cs, row-major, so that the samples update in
/// parallel.
///
/// Upstream's update q_i = softmax(log(S_i + 1e-10) + g[y_i]) needs no exponential per sample:
/// the shift g = shift(A) depends on the sample only through its class, so with
/// E[y] = exp(g[y] - max g[y]) (C x Cs exponentials per sweep, not N x Cs) q_iz is
/// (S_iz + 1e-10) E[y_i, z] / norm_i, and log q_iz - log(S_iz + 1e-10) = g[y_i, z] - log Z_i
/// with log Z_i = ln norm_i + max g[y_i], upstream's logsumexp.
struct MeanField {
    a0: Vec<f64>,
    /// A = a0 + Y'q of the last sweep (C x Cs).
    a: Mat<f64>,
    /// The last sweep's shift g = shift(A) that made q (C x Cs).
    shift: Mat<f64>,
    q: Vec<f64>,
    /// log Z_i of the last sweep.
    log_norm: Vec<f64>,
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
        // q starts at S; row-major copies, filled row by row in parallel.
        let mut q = vec![0.0; n * cs];
        q.par_chunks_mut(cs).enumerate().for_each(|(i, row)| row.iter_mut().enumerate().for_each(|(z, v)| *v = s.get(i, z)));
        let guarded: Vec<f64> = q.par_iter().map(|v| v + TINY).collect();
        let mut log_norm = vec![0.0; n];
        let mut a = Mat::<f64>::zeros(classes, cs);
        let mut shifted = Mat::<f64>::zeros(classes, cs);
        for _ in 0..SWEEPS {
            // A = a0 + Y'q: each block of rows summed into its own C x Cs (row-major) partial in
            // parallel, the partials then added in block order, so the sum is the same whatever
            // the threads did.
            let partials: Vec<Vec<f64>> = q
                .par_chunks(cs * SUM_ROWS)
                .enumerate()
                .map(|(block, rows)| {
                    let mut partial = vec![0.0; classes * cs];
                    for (r, row) in rows.chunks(cs).enumerate() {
                        let target = &mut partial[labels[block * SUM_ROWS + r] * cs..][..cs];
                        target.iter_mut().zip(row).for_each(|(t, v)| *t += v);
                    }
                    partial
                })
                .collect();
            let mut sums = vec![0.0; classes * cs];
            for partial in &partials {
                sums.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
            }
            a = Mat::from_fn(classes, cs, |y, z| a0[y] + sums[y * cs + z]);
            shifted = shift(&a);
            let top: Vec<f64> = (0..classes).map(|y| (0..cs).map(|z| shifted[(y, z)]).fold(f64::NEG_INFINITY, f64::max)).collect();
            let factors: Vec<Vec<f64>> = (0..classes).map(|y| (0..cs).map(|z| (shifted[(y, z)] - top[y]).exp()).collect()).collect();
            q.par_chunks_mut(cs).zip(guarded.par_chunks(cs)).zip(log_norm.par_iter_mut()).enumerate().for_each(
                |(i, ((q_row, guarded_row), log_norm))| {
                    let factor = &factors[labels[i]];
                    let mut norm = 0.0;
                    for z in 0..cs {
                        q_row[z] = guarded_row[z] * factor[z];
                        norm += q_row[z];
                    }
                    let inverse = 1.0 / norm;
                    q_row.iter_mut().for_each(|v| *v *= inverse);
                    *log_norm = norm.ln() + top[labels[i]];
                },
            );
        }
        Ok(Self { a0, a, shift: shifted, q, log_norm })
    }

    /// sum_z q_iz (log q_iz - log s_iz) of one sample = sum_z q_iz (g[y_i, z] - log Z_i).
    fn divergence_of_row(&self, q: &[f64], label: usize, log_norm: f64) -> f64 {
        q.iter().enumerate().map(|(z, &value)| if value == 0.0 { 0.0 } else { value * (self.shift[(label, z)] - log_norm) }).sum()
    }

    /// sum_i q_iz (log q_iz - log s_iz) for each source class z.
    fn divergence_by_source(&self, labels: &[usize]) -> Vec<f64> {
        let cs = self.a.ncols();
        let mut out = vec![0.0; cs];
        for (i, q) in self.q.chunks(cs).enumerate() {
            for z in 0..cs {
                if q[z] != 0.0 {
                    out[z] += q[z] * (self.shift[(labels[i], z)] - self.log_norm[i]);
                }
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
