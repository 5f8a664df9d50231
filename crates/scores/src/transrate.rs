//! TransRate (Huang et al., ICML 2022), the two computations that go by the name
//! (../shared/docs/SCORES-BEYOND.md, section 1):
//!
//! - [`transrate`], the paper's appendix as thuml/Transfer-Learning-Library ships it
//!   (`tllib/ranking/transrate.py`): Z = F - mean, R(A) = 1/2 logdet(I + A'A / (n_A eps)),
//!   TrR = R(Z) - (1/C) sum_c R(Z_c), eps 1e-4. The default.
//! - [`transrate_official`], the authors' repository (Long-Kai/TransRate) on its centralized
//!   features: rows L2-normalised (eps 1e-12), centred, L2-normalised again; the eigenvalues of
//!   Z'Z/N and of each Z_c'Z_c/n_c divided by the sum of the former; TrR = (sum log(1 + e/eps)
//!   minus sum_c n_c/N sum log(1 + e_c/eps)) / (2 rank(Z'Z/N)), eps a parameter (1e-4, the
//!   function's default; the repository's experiments tune it per experiment).
//!
//! Both log-determinants are taken on the smaller side of each matrix (Sylvester:
//! det(I + A'A s) = det(I + AA' s)) by Cholesky, and Z'Z is the sum of the classes' Z_c'Z_c (one
//! pass of products, lower triangles only, for both terms; for [`transrate`] it is the pass of
//! the analysis the other scores share). Higher is better for both.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Side};

use crate::analysis::FeatureAnalysis;
use crate::error::{Error, Result};
use crate::h_score::finite;
use crate::input::ScoreInput;
use crate::linalg::{class_rows, gram_of_rows, parallelism, symmetric_eigenvalues};

/// tllib's and the repository's default epsilon (the repository calls it eps^2).
pub const TRANSRATE_EPS: f64 = 1e-4;

/// TransRate as the paper's appendix and tllib compute it, with epsilon `eps` (1e-4 there).
pub fn transrate(input: &ScoreInput, eps: f64) -> Result<f64> {
    transrate_of(&FeatureAnalysis::new(input), eps)
}

pub(crate) fn transrate_of(analysis: &FeatureAnalysis<'_>, eps: f64) -> Result<f64> {
    check_eps(eps)?;
    let input = analysis.input;
    let features = input.features();
    let (n, d) = (analysis.num_samples(), analysis.feature_dim());
    let means = analysis.means();
    let rows_of = class_rows(input.labels(), input.num_classes());
    let class_matrix = |rows: &[usize]| Mat::from_fn(rows.len(), d, |i, j| features[(rows[i], j)] - means[j]);
    // Z'Z is the sum of the classes' Z_c'Z_c: the analysis's one pass over the classes serves
    // both terms (and the other scores' Gram).
    let shares = if uses_class_grams(analysis) { analysis.class_grams() } else { None };
    let mut classes = 0.0;
    for (c, rows) in rows_of.iter().enumerate() {
        let scale = 1.0 / (rows.len() as f64 * eps);
        classes += if rows.len() < d {
            half_logdet_identity_plus(class_matrix(rows).as_ref(), scale)?
        } else if let Some(shares) = shares {
            half_logdet_identity_plus_gram(shares[c].clone(), scale)?
        } else {
            half_logdet_identity_plus_gram(gram_of_rows(features, rows, |_, j, x| x - means[j]).gram, scale)?
        };
    }
    let scale = 1.0 / (n as f64 * eps);
    let total = if d <= n {
        half_logdet_identity_plus_gram(analysis.gram().gram.clone(), scale)?
    } else {
        half_logdet_identity_plus(Mat::from_fn(n, d, |i, j| features[(i, j)] - means[j]).as_ref(), scale)?
    };
    finite("transrate", total - classes / input.num_classes() as f64)
}

/// Whether TransRate takes some class's log-determinant on the D x D side, from the class's
/// share of the Gram (a class with fewer samples than features takes the smaller side).
pub(crate) fn uses_class_grams(analysis: &FeatureAnalysis<'_>) -> bool {
    let d = analysis.feature_dim();
    d <= analysis.num_samples() && analysis.class_counts.iter().any(|&count| count >= d)
}

/// TransRate as the authors' repository computes it for its centralized features, with
/// epsilon `eps` (its function default 1e-4).
pub fn transrate_official(input: &ScoreInput, eps: f64) -> Result<f64> {
    check_eps(eps)?;
    let (n, d) = (input.num_samples(), input.feature_dim());
    let features = input.features();
    // torch.nn.functional.normalize (eps 1e-12), centring, then pre_transrate's own row
    // normalisation (no eps: a row at the mean gives NaN there, and an error here).
    let mut z = Mat::from_fn(n, d, |i, j| features[(i, j)]);
    normalize_rows(&mut z, 1e-12);
    let means: Vec<f64> = (0..d).map(|j| (0..n).map(|i| z[(i, j)]).sum::<f64>() / n as f64).collect();
    for j in 0..d {
        for i in 0..n {
            z[(i, j)] -= means[j];
        }
    }
    normalize_rows(&mut z, 0.0);
    if z.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
        return Err(Error::NonFiniteScore {
            metric: "transrate_official",
            value: f64::NAN,
            why: "a sample equals the mean of the normalised features, and the repository's second normalisation divides by its zero norm",
        });
    }
    // Z'Z as the sum of the classes' Z_c'Z_c (lower triangles only) where D <= N, else ZZ'. A
    // class's share is kept where its log-determinant is taken on the D x D side (n_c >= D: at
    // most N / D classes, together the size of the features).
    let rows_of = class_rows(input.labels(), input.num_classes());
    let mut shares: Vec<Option<Mat<f64>>> = vec![None; rows_of.len()];
    let gram = if d <= n {
        let mut total = Mat::<f64>::zeros(d, d);
        for (rows, kept) in rows_of.iter().zip(shares.iter_mut()) {
            let share = gram_of_rows(z.as_ref(), rows, |_, _, x| x).gram;
            total += &share;
            *kept = (rows.len() >= d).then_some(share);
        }
        total
    } else {
        smaller_gram(z.as_ref())
    };
    // The eigenvalues of Z'Z/N (no eigenvectors): their sum (the trace, the normalisation of
    // every eigenvalue) and numpy's matrix_rank (singular values above sigma_max * D * machine
    // epsilon).
    let values = symmetric_eigenvalues(gram.as_ref(), 1.0 / n as f64, "transrate's Z'Z/N")?;
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tolerance = largest * d as f64 * f64::EPSILON;
    let rank = values.iter().filter(|v| v.abs() > tolerance).count();
    let sum: f64 = values.iter().map(|v| v.abs()).sum();
    if rank == 0 || sum <= 0.0 {
        return Err(Error::NonFiniteScore { metric: "transrate_official", value: f64::NAN, why: "the normalised features have rank 0" });
    }
    let rate_z: f64 = values.iter().map(|v| (v.abs() / (sum * eps)).ln_1p()).sum();
    let mut rate_classes = 0.0;
    for (c, rows) in rows_of.iter().enumerate() {
        let weight = rows.len() as f64 / n as f64;
        // sum log(1 + e_c / (sum eps)) over the eigenvalues e_c of Z_c'Z_c / n_c.
        let scale = 1.0 / (rows.len() as f64 * sum * eps);
        let half = match shares[c].take() {
            Some(share) => half_logdet_identity_plus_gram(share, scale)?,
            None => half_logdet_identity_plus(Mat::from_fn(rows.len(), d, |i, j| z[(rows[i], j)]).as_ref(), scale)?,
        };
        rate_classes += weight * 2.0 * half;
    }
    finite("transrate_official", (rate_z - rate_classes) / (2.0 * rank as f64))
}

fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter { metric: "transrate", name: "epsilon", value: eps, why: "it must be a positive number" })
    }
}

/// Each row divided by max(its L2 norm, `floor`).
fn normalize_rows(z: &mut Mat<f64>, floor: f64) {
    let (n, d) = z.shape();
    let norms: Vec<f64> = (0..n).map(|i| (0..d).map(|j| z[(i, j)] * z[(i, j)]).sum::<f64>().sqrt().max(floor)).collect();
    for j in 0..d {
        for i in 0..n {
            z[(i, j)] /= norms[i];
        }
    }
}

/// AA' (n x n) when A (n x D) has fewer rows than columns, else A'A (D x D): the same nonzero
/// eigenvalues.
fn smaller_gram(a: MatRef<'_, f64>) -> Mat<f64> {
    let (n, d) = a.shape();
    let (left, right) = if n < d { (a, a.transpose()) } else { (a.transpose(), a) };
    let size = n.min(d);
    let mut gram = Mat::<f64>::zeros(size, size);
    matmul(gram.as_mut(), Accum::Replace, left, right, 1.0, parallelism());
    gram
}

/// 1/2 logdet(I + scale A'A), on the smaller side, by Cholesky (the matrix is I plus a positive
/// semi-definite one).
fn half_logdet_identity_plus(a: MatRef<'_, f64>, scale: f64) -> Result<f64> {
    half_logdet_identity_plus_gram(smaller_gram(a), scale)
}

/// 1/2 logdet(I + scale G) for a Gram matrix G, by Cholesky.
fn half_logdet_identity_plus_gram(mut m: Mat<f64>, scale: f64) -> Result<f64> {
    let size = m.nrows();
    for j in 0..size {
        for i in 0..size {
            m[(i, j)] *= scale;
        }
        m[(j, j)] += 1.0;
    }
    let llt = m.llt(Side::Lower).map_err(|_| Error::EigenFailed { what: "TransRate's Cholesky factor of I + A'A / (n eps)" })?;
    let l = llt.L();
    Ok((0..size).map(|i| l[(i, i)].ln()).sum())
}
