//! NCTI (Wang et al., ICCV 2023) as BUserName/NCTI's released code computes it (`metrics.py`:
//! `NCTI_Score`; `evaluate_metric_group1_cpu.py`: the combination; ../shared/docs/SCORES-BEYOND.md,
//! section 4).
//!
//! Per model, three terms ([`ncti_terms`]):
//! 1. PCA to 64 components (exact, as scikit-learn's 'full' solver; the terms do not depend on
//!    the components' signs or rotation).
//! 2. scikit-learn's `LinearDiscriminantAnalysis` on them: the 'svd' solver when the 32 largest
//!    explained variances sum to ln 1e10 or more, else the 'eigen' solver with shrinkage
//!    exp(-sum). Both solvers are written out here as scikit-learn computes them.
//! 3. seli = the nuclear norm of the centred LDA projection (higher = better); ncc = the mean
//!    LDA probability of the true class (higher = better); vc = ln sum_c ||P[y = c]||_* (lower =
//!    better).
//!
//! Over a set of candidate models, [`ncti_combine`]: minmax(ncc) + minmax(seli) - minmax(vc).
//!
//! The 'svd' solver scales the within-class data by sqrt(fac): scikit-learn up to 1.8, which the
//! authors ran, takes fac = 1/(N - C) ([`LdaWithinFactor::NMinusC`], the default); 1.9 takes 1/N
//! ([`LdaWithinFactor::N`]). The choice rescales seli by sqrt(N / (N - C)) for every model of a
//! task alike and moves ncc and vc slightly.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Accum, Mat, MatRef, Side};

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::etran::min_max;
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::linalg::{SymmetricEigen, centred_gram, class_means, parallelism, softmax_rows, within_class_gram};

/// `PCA(n_components=64)`.
pub const NCTI_PCA_DIMS: usize = 64;
/// `explained_variance_[:32].sum()` picks the solver and the shrinkage.
const VARIANCE_DIMS: usize = 32;
/// `max(exp(-sum), 1e-10)`; at the floor the 'svd' solver runs.
const SHRINKAGE_FLOOR: f64 = 1e-10;
/// scikit-learn's `tol` of the 'svd' solver (the rank of the scaled within- and between-class data).
const SVD_TOL: f64 = 1e-4;

/// NCTI's three per-model terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NctiTerms {
    /// Nuclear norm of the centred LDA projection (higher = better).
    pub seli: f64,
    /// Mean LDA probability of the true class (higher = better).
    pub ncc: f64,
    /// ln of the summed nuclear norms of each class's LDA probabilities (lower = better).
    pub vc: f64,
}

/// The factor of the 'svd' LDA solver's within-class scaling, which scikit-learn changed in 1.9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LdaWithinFactor {
    /// 1/(N - C): scikit-learn up to 1.8, the version NCTI's authors ran.
    #[default]
    NMinusC,
    /// 1/N: scikit-learn 1.9 and later.
    N,
}

/// NCTI's per-model terms of the features for the labels (the authors' scikit-learn).
pub fn ncti_terms(input: &ScoreInput) -> Result<NctiTerms> {
    ncti_terms_with(input, LdaWithinFactor::default())
}

/// NCTI's per-model terms with the given 'svd' solver within factor.
pub fn ncti_terms_with(input: &ScoreInput, factor: LdaWithinFactor) -> Result<NctiTerms> {
    ncti_terms_of(&FeatureAnalysis::new(input), factor)
}

pub(crate) fn ncti_terms_of(analysis: &FeatureAnalysis<'_>, factor: LdaWithinFactor) -> Result<NctiTerms> {
    let what = "NCTI (PCA to 64 components)";
    let (n, d) = (analysis.num_samples(), analysis.feature_dim());
    if n < NCTI_PCA_DIMS {
        return Err(Error::TooFewSamples { what, needed: NCTI_PCA_DIMS, got: n });
    }
    if d < NCTI_PCA_DIMS {
        return Err(Error::TooFewFeatures { what, needed: NCTI_PCA_DIMS, got: d });
    }
    let explained: f64 = analysis.covariance_eigen()?.descending_values().take(VARIANCE_DIMS).sum();
    let shrinkage = (-explained).exp().max(SHRINKAGE_FLOOR);
    let x = analysis.pca_coordinates(NCTI_PCA_DIMS)?;
    let labels = analysis.input.labels();
    let counts = &analysis.class_counts;
    let fit = if shrinkage == SHRINKAGE_FLOOR {
        LdaFit::svd(x.as_ref(), labels, counts, factor)?
    } else {
        LdaFit::eigen(x.as_ref(), labels, counts, shrinkage)?
    };
    let mut projected = fit.transform(x.as_ref());
    let means = crate::linalg::column_means(projected.as_ref());
    for j in 0..projected.ncols() {
        for i in 0..n {
            projected[(i, j)] -= means[j];
        }
    }
    let seli = nuclear_norm(projected.as_ref())?;
    let probabilities = fit.probabilities(x.as_ref());
    let ncc = (0..n).map(|i| probabilities[(i, labels[i])]).sum::<f64>() / n as f64;
    let mut class_norms = 0.0;
    for c in 0..counts.len() {
        let rows: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
        let class = Mat::from_fn(rows.len(), counts.len(), |r, k| probabilities[(rows[r], k)]);
        class_norms += nuclear_norm(class.as_ref())?;
    }
    Ok(NctiTerms { seli: finite("ncti", seli)?, ncc: finite("ncti", ncc)?, vc: finite("ncti", class_norms.ln())? })
}

/// NCTI of each model of a candidate set from their terms: minmax(ncc) + minmax(seli) -
/// minmax(vc) over the set (evaluate_metric_group1_cpu.py). Upstream's NaN for fewer than two
/// models or a term equal across the set is an error here.
pub fn ncti_combine(terms: &[NctiTerms]) -> Result<Vec<f64>> {
    let seli = min_max("NCTI's seli term", &terms.iter().map(|t| t.seli).collect::<Vec<_>>())?;
    let ncc = min_max("NCTI's ncc term", &terms.iter().map(|t| t.ncc).collect::<Vec<_>>())?;
    let vc = min_max("NCTI's vc term", &terms.iter().map(|t| t.vc).collect::<Vec<_>>())?;
    Ok((0..terms.len()).map(|m| ncc[m] + seli[m] - vc[m]).collect())
}

/// The sum of the singular values.
fn nuclear_norm(m: MatRef<'_, f64>) -> Result<f64> {
    if m.nrows() == 0 || m.ncols() == 0 {
        return Ok(0.0);
    }
    let values = m.singular_values().map_err(|_| Error::EigenFailed { what: "NCTI's nuclear norm (SVD)" })?;
    Ok(values.iter().sum())
}

/// A fitted `LinearDiscriminantAnalysis`: transform(X) = (X - offset) scalings, and the
/// decision function (X - offset) coef' + intercept.
struct LdaFit {
    offset: Vec<f64>,
    /// k x m, m = the columns `transform` keeps.
    scalings: Mat<f64>,
    /// k x C.
    coef_t: Mat<f64>,
    intercept: Vec<f64>,
}

impl LdaFit {
    /// The 'eigen' solver with a fixed shrinkage t: class covariances (population) shrunk to
    /// (1 - t) C_c + t tr(C_c)/k I and weighted by the priors (Sw), the total covariance shrunk
    /// alike (St); V = the generalised eigenvectors of (St - Sw, Sw), largest first; transform =
    /// X V[:, :C-1] (not centred); coef = M V V' = M Sw^-1, b_c = -mu_c . coef_c / 2 + ln pi_c.
    fn eigen(x: MatRef<'_, f64>, labels: &[usize], counts: &[usize], shrinkage: f64) -> Result<Self> {
        let (n, k) = x.shape();
        let classes = counts.len();
        let means = class_means(x, labels, counts);
        // Population scatters: within-class and total, each a blocked lower-triangular Gram.
        let shrunk = |mut s: Mat<f64>| {
            let mu = (0..k).map(|j| s[(j, j)]).sum::<f64>() / (k as f64 * n as f64);
            for j in 0..k {
                for i in 0..k {
                    s[(i, j)] *= (1.0 - shrinkage) / n as f64;
                }
                s[(j, j)] += shrinkage * mu;
            }
            s
        };
        // sum_c pi_c shrunk(C_c) = shrunk(sum_c pi_c C_c): the shrinkage is linear in C_c.
        let sw = shrunk(within_class_gram(x, labels, means.as_ref()));
        let sb = shrunk(centred_gram(x, &crate::linalg::column_means(x)).gram) - &sw;
        let llt = sw.llt(Side::Lower).map_err(|_| Error::NonFiniteScore {
            metric: "ncti",
            value: f64::NAN,
            why: "the shrunk within-class covariance of the PCA components is not positive definite",
        })?;
        // L^-1 Sb L^-T, symmetric; its eigenvectors U give V = L^-T U.
        let l = llt.L();
        let mut reduced = sb;
        solve_lower_triangular_in_place(l, reduced.as_mut(), parallelism());
        let mut reduced = reduced.transpose().to_owned();
        solve_lower_triangular_in_place(l, reduced.as_mut(), parallelism());
        let eigen = SymmetricEigen::new(reduced.as_ref(), 1.0, "NCTI's LDA between-class scatter")?;
        let keep = (classes - 1).min(k);
        let mut scalings = eigen.top_vectors(keep);
        solve_upper_triangular_in_place(l.transpose(), scalings.as_mut(), parallelism());
        let coef_t = llt.solve(means.transpose());
        let intercept = (0..classes)
            .map(|c| -0.5 * (0..k).map(|j| means[(c, j)] * coef_t[(j, c)]).sum::<f64>() + (counts[c] as f64 / n as f64).ln())
            .collect();
        Ok(Self { offset: vec![0.0; k], scalings, coef_t, intercept })
    }

    /// The 'svd' solver: the class-centred data scaled by sqrt(fac)/std per column, its SVD
    /// (rank: S > 1e-4) giving W = V/std/S; the class means' offsets from the mean, weighted by
    /// sqrt(N pi_c / (C - 1)) and mapped by W, their SVD (rank: S > 1e-4 S_0) giving scalings =
    /// W V2; transform = (X - xbar) scalings; coef_c = (mu_c - xbar) scalings scalings',
    /// b_c = -|(mu_c - xbar) scalings|^2 / 2 + ln pi_c.
    fn svd(x: MatRef<'_, f64>, labels: &[usize], counts: &[usize], factor: LdaWithinFactor) -> Result<Self> {
        let (n, k) = x.shape();
        let classes = counts.len();
        let priors: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
        let means = class_means(x, labels, counts);
        let xbar: Vec<f64> = (0..k).map(|j| (0..classes).map(|c| priors[c] * means[(c, j)]).sum()).collect();
        let within = Mat::from_fn(n, k, |i, j| x[(i, j)] - means[(labels[i], j)]);
        let within_means = crate::linalg::column_means(within.as_ref());
        let std: Vec<f64> = (0..k)
            .map(|j| {
                let s = ((0..n).map(|i| (within[(i, j)] - within_means[j]).powi(2)).sum::<f64>() / n as f64).sqrt();
                if s == 0.0 { 1.0 } else { s }
            })
            .collect();
        let fac = match factor {
            LdaWithinFactor::NMinusC => 1.0 / (n - classes) as f64,
            LdaWithinFactor::N => 1.0 / n as f64,
        };
        let scaled = Mat::from_fn(n, k, |i, j| within[(i, j)] / std[j]);
        let mut gram = Mat::<f64>::zeros(k, k);
        matmul(gram.as_mut(), Accum::Replace, scaled.transpose(), scaled.as_ref(), fac, parallelism());
        // The right singular vectors and squared singular values of sqrt(fac) X_c / std.
        let eigen = SymmetricEigen::new(gram.as_ref(), 1.0, "NCTI's LDA within-class scatter")?;
        let singular: Vec<f64> = eigen.descending_values().map(|v| v.max(0.0).sqrt()).collect();
        let rank = singular.iter().filter(|&&s| s > SVD_TOL).count();
        let vectors = eigen.top_vectors(rank);
        let w = Mat::from_fn(k, rank, |j, r| vectors[(j, r)] / std[j] / singular[r]);
        let between_weight = |c: usize| (n as f64 * priors[c] / (classes as f64 - 1.0)).sqrt();
        let offsets = Mat::from_fn(classes, k, |c, j| between_weight(c) * (means[(c, j)] - xbar[j]));
        let mut between = Mat::<f64>::zeros(classes, rank);
        matmul(between.as_mut(), Accum::Replace, offsets.as_ref(), w.as_ref(), 1.0, parallelism());
        let mut between_gram = Mat::<f64>::zeros(rank, rank);
        matmul(between_gram.as_mut(), Accum::Replace, between.transpose(), between.as_ref(), 1.0, parallelism());
        let between_eigen = SymmetricEigen::new(between_gram.as_ref(), 1.0, "NCTI's LDA between-class scatter")?;
        let between_singular: Vec<f64> = between_eigen.descending_values().map(|v| v.max(0.0).sqrt()).collect();
        let largest = between_singular.first().copied().unwrap_or(0.0);
        let rank2 = between_singular.iter().filter(|&&s| s > SVD_TOL * largest).count();
        let v2 = between_eigen.top_vectors(rank2);
        let mut scalings = Mat::<f64>::zeros(k, rank2);
        matmul(scalings.as_mut(), Accum::Replace, w.as_ref(), v2.as_ref(), 1.0, parallelism());
        let centred_means = Mat::from_fn(classes, k, |c, j| means[(c, j)] - xbar[j]);
        let mut coef = Mat::<f64>::zeros(classes, rank2);
        matmul(coef.as_mut(), Accum::Replace, centred_means.as_ref(), scalings.as_ref(), 1.0, parallelism());
        let intercept = (0..classes).map(|c| -0.5 * (0..rank2).map(|r| coef[(c, r)].powi(2)).sum::<f64>() + priors[c].ln()).collect();
        let mut coef_t = Mat::<f64>::zeros(k, classes);
        matmul(coef_t.as_mut(), Accum::Replace, scalings.as_ref(), coef.transpose(), 1.0, parallelism());
        let keep = rank2.min(classes - 1).min(k);
        let scalings = scalings.as_ref().subcols(0, keep).to_owned();
        Ok(Self { offset: xbar, scalings, coef_t, intercept })
    }

    fn centred(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] - self.offset[j])
    }

    fn transform(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(x.nrows(), self.scalings.ncols());
        matmul(out.as_mut(), Accum::Replace, self.centred(x).as_ref(), self.scalings.as_ref(), 1.0, parallelism());
        out
    }

    fn probabilities(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        let mut logits = Mat::<f64>::zeros(x.nrows(), self.intercept.len());
        matmul(logits.as_mut(), Accum::Replace, self.centred(x).as_ref(), self.coef_t.as_ref(), 1.0, parallelism());
        for i in 0..logits.nrows() {
            for (c, b) in self.intercept.iter().enumerate() {
                logits[(i, c)] += b;
            }
        }
        softmax_rows(&mut logits);
        logits
    }
}
