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

use rayon::prelude::*;

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::lbfgs::{LbfgsOptions, minimize};
use crate::linalg::log_sum_exp;

/// The ridge factor lambda `main()` reports first, and the one the ETran repository uses.
pub const PACTRAN_GAUSS_LAMBDA: f64 = 1.0;
/// Upstream's s2 factor per lambda: 100 lambda.
const S2_PER_LAMBDA: f64 = 100.0;
/// Upstream's guards inside the logarithms.
const TINY: f64 = 1e-10;
/// Samples per parallel block of the fused loss-and-gradient pass (each block's partial
/// gradient is added in block order: the same bits whatever the thread count).
const GRADIENT_ROWS: usize = 256;
/// Samples multiplied together: each weight and gradient entry is loaded once per tile, not once
/// per sample (eight rows keep eight independent sums in flight on two FMA units).
const TILE_ROWS: usize = 8;
/// Classes per vector of the tiled kernels (four f64 lanes of AVX2); the class count is padded
/// to a multiple of it with zero weights.
const LANES: usize = 4;

/// PACTran-Gauss of the features for the labels at lambda = 1 (lower is better).
pub fn pactran_gauss(input: &ScoreInput) -> Result<f64> {
    pactran_gauss_with(input, PACTRAN_GAUSS_LAMBDA)
}

/// PACTran-Gauss at a given lambda (> 0): the prior variance of the weights scales with it.
pub fn pactran_gauss_with(input: &ScoreInput, lambda: f64) -> Result<f64> {
    pactran_gauss_of(&FeatureAnalysis::new(input), lambda)
}

pub(crate) fn pactran_gauss_of(analysis: &FeatureAnalysis<'_>, lambda: f64) -> Result<f64> {
    if !(lambda > 0.0 && lambda.is_finite()) {
        return Err(Error::InvalidParameter {
            metric: "pactran_gauss",
            name: "lambda",
            value: lambda,
            why: "it must be a positive number",
        });
    }
    // Features extracted in f32 (every feature file) are kept in f32, exactly: an evaluation is
    // bound by reading them from memory (some 10 ms for 10,000 x 2048 here, 250 evaluations to
    // converge), and half the bytes take half the time. Any other values stay f64.
    let features = analysis.input.features();
    let exact_in_f32 = features.col_iter().all(|c| c.iter().all(|&v| (v as f32) as f64 == v));
    if exact_in_f32 { optimise::<f32>(analysis, lambda) } else { optimise::<f64>(analysis, lambda) }
}

/// L-BFGS correction pairs kept: 60, where the 10 of scipy's default took a fifth more
/// evaluations at N = 10,000, D = 2048 (246, against 216 with 50 pairs and 193 with 80; each a
/// pass over the features, and 20% more time end to end), while the two-loop recursion's extra
/// work is a few percent of a pass; fewer where the pairs would take more than [`HISTORY_BYTES`].
fn history_pairs(parameters: usize) -> usize {
    (HISTORY_BYTES / (2 * parameters * size_of::<f64>())).clamp(10, 60)
}

/// The most memory the optimiser's correction pairs may take.
const HISTORY_BYTES: usize = 256 << 20;

/// A stored feature value: f32 or f64, multiplied in f64.
trait Stored: Copy + Send + Sync + Into<f64> {
    fn from_f64(value: f64) -> Self;
}

impl Stored for f32 {
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

impl Stored for f64 {
    fn from_f64(value: f64) -> Self {
        value
    }
}

fn optimise<T: Stored>(analysis: &FeatureAnalysis<'_>, lambda: f64) -> Result<f64> {
    let input = analysis.input;
    let features = input.features();
    let (n, d) = features.shape();
    let classes = input.num_classes();
    // Row-major and uncentred: the fused pass reads one sample's features contiguously, and
    // centring is folded into the bias (x_i - mu) W + b = x_i W + (b - mu W), so the stored
    // values stay the file's.
    let mut rows = vec![T::from_f64(0.0); n * d];
    rows.par_chunks_mut(d)
        .enumerate()
        .for_each(|(i, row)| row.iter_mut().enumerate().for_each(|(j, v)| *v = T::from_f64(features[(i, j)])));
    let means = analysis.means();
    let ldas2 = lambda * n as f64;
    let problem = SoftmaxRegression { x: &rows, means, n, d, labels: input.labels(), classes, ldas2 };
    let found = minimize(
        "pactran_gauss",
        |theta, gradient| problem.loss_and_gradient(theta, gradient),
        vec![0.0; (d + 1) * classes],
        LbfgsOptions { memory: history_pairs((d + 1) * classes), ..LbfgsOptions::default() },
    )?;
    let probabilities = problem.probabilities(&found.x);
    let mut curvature = (d * classes) as f64 / ldas2;
    for (i, row) in rows.chunks(d).enumerate() {
        let norm2 = row.iter().zip(means).map(|(&x, m)| (x.into() - m).powi(2)).sum::<f64>() + 1.0;
        curvature += norm2 * probabilities[i].iter().map(|p| p * (1.0 - p)).sum::<f64>();
    }
    let kd = (d * classes) as f64;
    let sigma2_inv = curvature * ldas2 / kd + TINY;
    let s2 = S2_PER_LAMBDA * lambda / d as f64;
    finite("pactran_gauss", found.value + 0.5 * kd / ldas2 * s2 * sigma2_inv.ln())
}

/// The regularised softmax regression on the centred features, which are stored uncentred and
/// row-major; theta holds W (D x C, column-major: one contiguous weight vector per class) then
/// b (C).
struct SoftmaxRegression<'a, T> {
    x: &'a [T],
    means: &'a [f64],
    n: usize,
    d: usize,
    labels: &'a [usize],
    classes: usize,
    ldas2: f64,
}

/// a . b, in eight independent lanes the compiler vectorises.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// The weights interleaved by class in groups of [`LANES`]: group k holds, for each feature j,
/// the weights of classes 4k..4k+4 side by side (zero past the last class).
fn interleave(weights: &[f64], d: usize, classes: usize) -> Vec<f64> {
    let groups = classes.div_ceil(LANES);
    let mut out = vec![0.0; groups * d * LANES];
    for c in 0..classes {
        let (group, lane) = (c / LANES, c % LANES);
        for (j, w) in weights[c * d..(c + 1) * d].iter().enumerate() {
            out[(group * d + j) * LANES + lane] = *w;
        }
    }
    out
}

/// The logits x_r . w_c of `R` rows (row-major, R x D) for every padded class, into `logits`
/// (R x padded classes).
fn tile_logits<T: Stored, const R: usize>(x: &[T], d: usize, interleaved: &[f64], logits: &mut [f64]) {
    let padded = interleaved.len() / d;
    let rows: [&[T]; R] = std::array::from_fn(|r| &x[r * d..(r + 1) * d]);
    for (group, weights) in interleaved.chunks_exact(d * LANES).enumerate() {
        let mut sums = [[0.0f64; LANES]; R];
        for (j, w) in weights.chunks_exact(LANES).enumerate() {
            for r in 0..R {
                let value: f64 = rows[r][j].into();
                for l in 0..LANES {
                    sums[r][l] = value.mul_add(w[l], sums[r][l]);
                }
            }
        }
        for r in 0..R {
            logits[r * padded + group * LANES..][..LANES].copy_from_slice(&sums[r]);
        }
    }
}

/// gradient_j,c += sum_r x_rj residual_rc for `R` rows, the gradient interleaved as the weights.
fn tile_gradient<T: Stored, const R: usize>(x: &[T], d: usize, residuals: &[f64], gradient: &mut [f64]) {
    let padded = gradient.len() / d;
    let rows: [&[T]; R] = std::array::from_fn(|r| &x[r * d..(r + 1) * d]);
    for (group, sums) in gradient.chunks_exact_mut(d * LANES).enumerate() {
        let weights: [[f64; LANES]; R] = std::array::from_fn(|r| std::array::from_fn(|l| residuals[r * padded + group * LANES + l]));
        for (j, sum) in sums.chunks_exact_mut(LANES).enumerate() {
            let mut acc: [f64; LANES] = std::array::from_fn(|l| sum[l]);
            for r in 0..R {
                let value: f64 = rows[r][j].into();
                for l in 0..LANES {
                    acc[l] = value.mul_add(weights[r][l], acc[l]);
                }
            }
            sum.copy_from_slice(&acc);
        }
    }
}

impl<T: Stored> SoftmaxRegression<'_, T> {
    /// The bias of the uncentred features: b_c - mu . w_c.
    fn shifted_bias(&self, theta: &[f64]) -> Vec<f64> {
        let d = self.d;
        (0..self.classes).map(|c| theta[d * self.classes + c] - dot(self.means, &theta[c * d..(c + 1) * d])).collect()
    }

    fn probabilities(&self, theta: &[f64]) -> Vec<Vec<f64>> {
        let (d, classes) = (self.d, self.classes);
        let interleaved = interleave(&theta[..d * classes], d, classes);
        let bias = self.shifted_bias(theta);
        let padded = interleaved.len() / d;
        self.x
            .par_chunks(d)
            .map(|row| {
                let mut logits = vec![0.0; padded];
                tile_logits::<T, 1>(row, d, &interleaved, &mut logits);
                let logits: Vec<f64> = (0..classes).map(|c| logits[c] + bias[c]).collect();
                let log_sum = log_sum_exp(&logits);
                logits.iter().map(|l| (l - log_sum).exp()).collect()
            })
            .collect()
    }

    /// The loss and its gradient in one pass over X, [`TILE_ROWS`] samples at a time: their
    /// logits, then at once their share of X'(softmax - Y) while their features are in cache;
    /// blocks of samples run in parallel, each into its own partial gradient, added in block
    /// order. An evaluation is bound by memory traffic, so the features are read once and each
    /// weight once per tile.
    fn loss_and_gradient(&self, theta: &[f64], gradient: &mut [f64]) -> f64 {
        let (n, d, classes) = (self.n, self.d, self.classes);
        let interleaved = interleave(&theta[..d * classes], d, classes);
        let bias = self.shifted_bias(theta);
        let padded = interleaved.len() / d;
        let partials: Vec<(f64, Vec<f64>, Vec<f64>)> = self
            .x
            .par_chunks(d * GRADIENT_ROWS)
            .enumerate()
            .map(|(block, rows)| {
                let (mut cross_entropy, mut sums, mut bias_sums) = (0.0, vec![0.0; interleaved.len()], vec![0.0; classes]);
                let mut logits = vec![0.0; TILE_ROWS * padded];
                for (t, tile) in rows.chunks(d * TILE_ROWS).enumerate() {
                    let count = tile.len() / d;
                    if count == TILE_ROWS {
                        tile_logits::<T, TILE_ROWS>(tile, d, &interleaved, &mut logits);
                    } else {
                        for (r, row) in tile.chunks(d).enumerate() {
                            tile_logits::<T, 1>(row, d, &interleaved, &mut logits[r * padded..(r + 1) * padded]);
                        }
                    }
                    // Each sample's logits become (softmax - Y) / N, the gradient of the mean
                    // cross-entropy in its logits (zero in the padded classes).
                    for r in 0..count {
                        let label = self.labels[block * GRADIENT_ROWS + t * TILE_ROWS + r];
                        let row = &mut logits[r * padded..(r + 1) * padded];
                        for c in 0..classes {
                            row[c] += bias[c];
                        }
                        let log_sum = log_sum_exp(&row[..classes]);
                        cross_entropy -= row[label] - log_sum;
                        for c in 0..classes {
                            let target = if c == label { 1.0 } else { 0.0 };
                            row[c] = ((row[c] - log_sum).exp() - target) / n as f64;
                            bias_sums[c] += row[c];
                        }
                    }
                    if count == TILE_ROWS {
                        tile_gradient::<T, TILE_ROWS>(tile, d, &logits, &mut sums);
                    } else {
                        for (r, row) in tile.chunks(d).enumerate() {
                            tile_gradient::<T, 1>(row, d, &logits[r * padded..(r + 1) * padded], &mut sums);
                        }
                    }
                }
                (cross_entropy, sums, bias_sums)
            })
            .collect();
        // The blocks' partials added in block order: the same sum whatever the threads did.
        let mut cross_entropy = 0.0;
        let mut sums = vec![0.0; interleaved.len()];
        let mut bias_sums = vec![0.0; classes];
        for (partial_entropy, partial, partial_bias) in &partials {
            cross_entropy += partial_entropy;
            sums.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
            bias_sums.iter_mut().zip(partial_bias).for_each(|(a, b)| *a += b);
        }
        // sum_i Y_i . ln(Y_i + 1e-10) / N: each one-hot row contributes ln(1 + 1e-10).
        let loss_constant = (1.0 + TINY).ln();
        let weights = &theta[..d * classes];
        let ridge = 0.5 * dot(weights, weights) / self.ldas2;
        // d/dW_c = sum_i r_ic (x_i - mu) + W_c / ldas2 = (X' r)_c - mu sum_i r_ic + W_c / ldas2.
        for c in 0..classes {
            let (group, lane) = (c / LANES, c % LANES);
            for j in 0..d {
                gradient[c * d + j] = sums[(group * d + j) * LANES + lane] - self.means[j] * bias_sums[c] + weights[c * d + j] / self.ldas2;
            }
            gradient[d * classes + c] = bias_sums[c];
        }
        cross_entropy / n as f64 + loss_constant + ridge
    }
}

#[cfg(test)]
mod tests {
    use faer::Mat;

    use super::*;

    /// The parallel sums are added in a fixed order: one thread or three give the same bits
    /// (shards of a study must agree with one process). PACTran-Dirichlet and -Gamma too.
    #[test]
    fn the_bounds_do_not_depend_on_the_thread_count() {
        let (n, d, sources) = (700, 24, 30);
        let features = Mat::from_fn(n, d, |i, j| ((i * 31 + j * 17) % 23) as f64 / 7.0 + if i % 3 == j % 3 { 0.8 } else { 0.0 });
        let labels: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
        let probs = Mat::from_fn(n, sources, |i, z| 1.0 + ((i * 7 + z * 13) % 11) as f64 + if z % 3 == i % 3 { 5.0 } else { 0.0 });
        let probs = Mat::from_fn(n, sources, |i, z| probs[(i, z)] / (0..sources).map(|k| probs[(i, k)]).sum::<f64>());
        let input = ScoreInput::new(features, &labels).unwrap().with_source_probs(probs).unwrap();
        let scores = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                [pactran_gauss(&input).unwrap(), crate::pactran::pactran_dir(&input).unwrap(), crate::pactran::pactran_gam(&input).unwrap()]
            })
        };
        let one = scores(1);
        assert_eq!(one.map(f64::to_bits), scores(3).map(f64::to_bits), "{one:?}");
    }

    /// Features exact in f32 are stored in f32 and multiplied in f64: the same bits as storing
    /// them in f64 (the f64 path is the one the reference fixtures test).
    #[test]
    fn f32_storage_gives_the_f64_result() {
        let (n, d) = (300, 20);
        let features = Mat::from_fn(n, d, |i, j| ((i * 13 + j * 7) % 29) as f64 / 8.0 + if i % 4 == j % 4 { 1.5 } else { 0.0 });
        let labels: Vec<i64> = (0..n).map(|i| (i % 4) as i64).collect();
        let input = ScoreInput::new(features, &labels).unwrap();
        let analysis = FeatureAnalysis::new(&input);
        let narrow = optimise::<f32>(&analysis, 1.0).unwrap();
        let wide = optimise::<f64>(&analysis, 1.0).unwrap();
        assert_eq!(narrow.to_bits(), wide.to_bits(), "{narrow} vs {wide}");
        assert_eq!(pactran_gauss(&input).unwrap().to_bits(), narrow.to_bits());
    }
}
