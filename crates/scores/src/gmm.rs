//! A full-covariance Gaussian mixture fitted by EM, step for step as scikit-learn's
//! `GaussianMixture(covariance_type="full")`: the same M-step (responsibility sums plus
//! 10 machine epsilons, `reg_covar` on the diagonal), the same precision Cholesky factors, the
//! same lower bound (mean log-likelihood) and stopping rule (|change| < tol), and a final E-step
//! for the posteriors. From the same start it agrees with scikit-learn to rounding.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par, Side};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kmeans::kmeans_labels;
use crate::linalg::{fill_upper_from_lower, parallelism};

/// EM settings; the defaults are scikit-learn's, which the reference code used.
#[derive(Debug, Clone, PartialEq)]
pub struct GmmConfig {
    /// Added to every covariance diagonal.
    pub reg_covar: f64,
    /// EM stops when the lower bound changes by less than this.
    pub tol: f64,
    /// At most this many EM iterations.
    pub max_iter: usize,
}

impl Default for GmmConfig {
    fn default() -> Self {
        Self { reg_covar: 1e-6, tol: 1e-3, max_iter: 100 }
    }
}

/// Where EM starts.
#[derive(Debug, Clone)]
pub enum GmmStart {
    /// k-means (k-means++ seeding, seeded) labels turned into one-hot responsibilities, as
    /// scikit-learn's `init_params="kmeans"`.
    KMeans {
        /// Seed of the k-means++ seeding.
        seed: u64,
    },
    /// Explicit parameters: weights (K), means (K x d) and covariances (K of d x d).
    Explicit {
        /// Mixture weights (K), summing to 1.
        weights: Vec<f64>,
        /// Component means (K x d).
        means: Mat<f64>,
        /// Component covariances (K of d x d).
        covariances: Vec<Mat<f64>>,
    },
}

/// A fitted mixture.
#[derive(Debug, Clone)]
pub struct GaussianMixture {
    /// Mixing weights, summing to one.
    pub weights: Vec<f64>,
    /// Component means, K x d.
    pub means: Mat<f64>,
    /// Component covariances (d x d each), `reg_covar` included.
    pub covariances: Vec<Mat<f64>>,
    /// Upper-triangular factors U with U U' = precision, as scikit-learn's `precisions_cholesky_`.
    precisions_cholesky: Vec<Mat<f64>>,
    /// EM iterations run.
    pub n_iter: usize,
    /// Whether the lower bound changed by less than `tol` before `max_iter`.
    pub converged: bool,
    /// The final mean log-likelihood per sample.
    pub lower_bound: f64,
}

impl GaussianMixture {
    /// Fits a mixture of `components` Gaussians to the rows of `x`.
    pub fn fit(x: MatRef<'_, f64>, components: usize, config: &GmmConfig, start: &GmmStart) -> Result<Self> {
        let (n, d) = x.shape();
        if components == 0 || n < components {
            return Err(Error::TooFewSamples {
                what: "a Gaussian mixture (one per component at least)",
                needed: components.max(1),
                got: n,
            });
        }
        let mut model = match start {
            GmmStart::KMeans { seed } => {
                let labels = kmeans_labels(x, components, *seed);
                let responsibilities = Mat::from_fn(n, components, |i, k| if labels[i] == k { 1.0 } else { 0.0 });
                let mut model = m_step(x, responsibilities.as_ref(), config.reg_covar, 0)?;
                // scikit-learn's _initialize divides by n rather than renormalising.
                let total: f64 = (0..components).map(|k| responsibilities.col(k).iter().sum::<f64>() + 10.0 * f64::EPSILON).sum();
                for w in &mut model.weights {
                    *w = *w * total / n as f64;
                }
                model
            }
            GmmStart::Explicit { weights, means, covariances } => {
                if weights.len() != components
                    || means.shape() != (components, d)
                    || covariances.len() != components
                    || covariances.iter().any(|c| c.shape() != (d, d))
                {
                    return Err(Error::BadMixtureStart {
                        problem: format!(
                            "expected {components} weights, a {components} x {d} mean matrix and {components} covariances of {d} x {d}"
                        ),
                    });
                }
                let precisions_cholesky =
                    covariances.iter().enumerate().map(|(k, c)| precision_cholesky(c.as_ref(), k, 0)).collect::<Result<Vec<_>>>()?;
                Self {
                    weights: weights.clone(),
                    means: means.clone(),
                    covariances: covariances.clone(),
                    precisions_cholesky,
                    n_iter: 0,
                    converged: false,
                    lower_bound: f64::NEG_INFINITY,
                }
            }
        };
        let mut lower_bound = f64::NEG_INFINITY;
        for iteration in 1..=config.max_iter {
            let previous = lower_bound;
            let (log_prob_norm, log_resp) = model.e_step(x);
            let responsibilities = Mat::from_fn(n, components, |i, k| log_resp[(i, k)].exp());
            let next = m_step(x, responsibilities.as_ref(), config.reg_covar, iteration)?;
            model.weights = next.weights;
            model.means = next.means;
            model.covariances = next.covariances;
            model.precisions_cholesky = next.precisions_cholesky;
            model.n_iter = iteration;
            lower_bound = log_prob_norm;
            if (lower_bound - previous).abs() < config.tol {
                model.converged = true;
                break;
            }
        }
        model.lower_bound = lower_bound;
        Ok(model)
    }

    /// Posterior probability of each component for each row of `x` (N x K).
    pub fn predict_proba(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        let (_, log_resp) = self.e_step(x);
        Mat::from_fn(log_resp.nrows(), log_resp.ncols(), |i, k| log_resp[(i, k)].exp())
    }

    /// Mean log-likelihood and log-responsibilities, as scikit-learn's `_e_step`.
    fn e_step(&self, x: MatRef<'_, f64>) -> (f64, Mat<f64>) {
        let (n, d) = x.shape();
        let components = self.weights.len();
        // Components run in parallel, each on one thread: their matrices are too small for the
        // matrix kernels to split well.
        let columns: Vec<Vec<f64>> = (0..components).into_par_iter().map(|k| self.weighted_log_prob(x, k)).collect();
        let mut weighted = Mat::from_fn(n, components, |i, k| columns[k][i]);
        let mut total = 0.0;
        for i in 0..n {
            let max = (0..components).map(|k| weighted[(i, k)]).fold(f64::NEG_INFINITY, f64::max);
            let norm = if max.is_finite() { (0..components).map(|k| (weighted[(i, k)] - max).exp()).sum::<f64>().ln() + max } else { max };
            total += norm;
            for k in 0..components {
                weighted[(i, k)] -= norm;
            }
        }
        debug_assert_eq!(d, self.means.ncols());
        (total / n as f64, weighted)
    }

    /// log(weight_k) + log N(x_i | mean_k, covariance_k) for every row.
    fn weighted_log_prob(&self, x: MatRef<'_, f64>, k: usize) -> Vec<f64> {
        let (n, d) = x.shape();
        let log_two_pi = (2.0 * std::f64::consts::PI).ln();
        let u = self.precisions_cholesky[k].as_ref();
        let mut y = Mat::<f64>::zeros(n, d);
        // y = X U - mu U, as scikit-learn writes it.
        triangular::matmul(
            y.as_mut(),
            BlockStructure::Rectangular,
            Accum::Replace,
            x,
            BlockStructure::Rectangular,
            u,
            BlockStructure::TriangularUpper,
            1.0,
            Par::Seq,
        );
        let mean_u: Vec<f64> = (0..d).map(|j| (0..=j).map(|i| self.means[(k, i)] * u[(i, j)]).sum()).collect();
        let log_det: f64 = (0..d).map(|j| u[(j, j)].ln()).sum();
        let mut squared = vec![0.0f64; n];
        for j in 0..d {
            for (i, value) in y.col(j).iter().enumerate() {
                let centred = value - mean_u[j];
                squared[i] += centred * centred;
            }
        }
        let log_weight = self.weights[k].ln();
        squared.into_iter().map(|s| -0.5 * (d as f64 * log_two_pi + s) + log_det + log_weight).collect()
    }
}

/// scikit-learn's `_estimate_gaussian_parameters` followed by the weight normalisation of
/// `_m_step` and `_compute_precision_cholesky`.
fn m_step(x: MatRef<'_, f64>, responsibilities: MatRef<'_, f64>, reg_covar: f64, iteration: usize) -> Result<GaussianMixture> {
    let (n, d) = x.shape();
    let components = responsibilities.ncols();
    let nk: Vec<f64> = (0..components).map(|k| responsibilities.col(k).iter().sum::<f64>() + 10.0 * f64::EPSILON).collect();
    let mut means = Mat::<f64>::zeros(components, d);
    faer::linalg::matmul::matmul(means.as_mut(), Accum::Replace, responsibilities.transpose(), x, 1.0, parallelism());
    for k in 0..components {
        for j in 0..d {
            means[(k, j)] /= nk[k];
        }
    }
    let fitted: Vec<Result<(Mat<f64>, Mat<f64>)>> = (0..components)
        .into_par_iter()
        .map(|k| {
            let mut diff = Mat::<f64>::zeros(n, d);
            let mut weighted_diff = Mat::<f64>::zeros(n, d);
            for j in 0..d {
                let mean = means[(k, j)];
                let column = x.col(j);
                let resp = responsibilities.col(k);
                for i in 0..n {
                    let value = column[i] - mean;
                    diff[(i, j)] = value;
                    weighted_diff[(i, j)] = resp[i] * value;
                }
            }
            let mut covariance = Mat::<f64>::zeros(d, d);
            triangular::matmul(
                covariance.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                weighted_diff.transpose(),
                BlockStructure::Rectangular,
                diff.as_ref(),
                BlockStructure::Rectangular,
                1.0,
                Par::Seq,
            );
            fill_upper_from_lower(covariance.as_mut());
            for j in 0..d {
                for i in 0..d {
                    covariance[(i, j)] /= nk[k];
                }
                covariance[(j, j)] += reg_covar;
            }
            let factor = precision_cholesky(covariance.as_ref(), k, iteration)?;
            Ok((covariance, factor))
        })
        .collect();
    let mut covariances = Vec::with_capacity(components);
    let mut precisions_cholesky = Vec::with_capacity(components);
    for result in fitted {
        let (covariance, factor) = result?;
        covariances.push(covariance);
        precisions_cholesky.push(factor);
    }
    let total: f64 = nk.iter().sum();
    let weights = nk.iter().map(|w| w / total).collect();
    Ok(GaussianMixture { weights, means, covariances, precisions_cholesky, n_iter: 0, converged: false, lower_bound: f64::NEG_INFINITY })
}

/// inv(chol(covariance))': upper triangular U with U U' = inverse(covariance).
fn precision_cholesky(covariance: MatRef<'_, f64>, component: usize, iteration: usize) -> Result<Mat<f64>> {
    let d = covariance.nrows();
    let llt = covariance.llt(Side::Lower).map_err(|_| Error::IllDefinedCovariance { component, iteration })?;
    let mut inverse = Mat::<f64>::zeros(d, d);
    faer::linalg::triangular_inverse::invert_lower_triangular(inverse.as_mut(), llt.L(), Par::Seq);
    Ok(Mat::from_fn(d, d, |i, j| if i <= j { inverse[(j, i)] } else { 0.0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_factor_inverts_the_covariance() {
        let c = Mat::from_fn(3, 3, |i, j| [[2.0, 0.3, 0.1], [0.3, 1.5, 0.2], [0.1, 0.2, 1.0]][i][j]);
        let u = precision_cholesky(c.as_ref(), 0, 0).unwrap();
        let precision = &u * u.transpose();
        let identity = &precision * &c;
        for i in 0..3 {
            for j in 0..3 {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((identity[(i, j)] - expected).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn a_singular_covariance_is_an_error_not_a_panic() {
        let c = Mat::from_fn(2, 2, |_, _| 1.0);
        assert!(matches!(precision_cholesky(c.as_ref(), 3, 7), Err(Error::IllDefinedCovariance { component: 3, iteration: 7 })));
    }
}
