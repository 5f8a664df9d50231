//! The dense linear algebra the scores share, on faer: column means, the centred Gram matrix
//! (one pass over the data, in row blocks so the centred copy never exists whole), symmetric
//! eigendecompositions sorted the way the scores read them, and projections onto a basis.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Rows centred and multiplied at a time: large enough for the matrix kernels to run at full
/// speed, small enough that the buffer stays a fraction of the feature matrix.
const ROW_BLOCK: usize = 1024;
/// Rows per task when a Gram block is filled in parallel.
const FILL_ROWS: usize = 128;

pub(crate) fn parallelism() -> Par {
    faer::get_global_parallelism()
}

/// The mean of each column.
pub(crate) fn column_means(features: MatRef<'_, f64>) -> Vec<f64> {
    let n = features.nrows() as f64;
    (0..features.ncols()).map(|j| features.col(j).iter().sum::<f64>() / n).collect()
}

/// The mean of each class's rows, C x D (`counts[c]` rows carry label c).
pub(crate) fn class_means(x: MatRef<'_, f64>, labels: &[usize], counts: &[usize]) -> Mat<f64> {
    let (n, d) = x.shape();
    let mut means = Mat::<f64>::zeros(counts.len(), d);
    for j in 0..d {
        for i in 0..n {
            means[(labels[i], j)] += x[(i, j)];
        }
        for (c, &count) in counts.iter().enumerate() {
            means[(c, j)] /= count as f64;
        }
    }
    means
}

/// log sum exp(values), with the maximum taken out first.
pub(crate) fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Replaces each row of logits by its softmax.
pub(crate) fn softmax_rows(logits: &mut Mat<f64>) {
    let mut row = vec![0.0; logits.ncols()];
    for i in 0..logits.nrows() {
        for (c, value) in row.iter_mut().enumerate() {
            *value = logits[(i, c)];
        }
        let log_sum = log_sum_exp(&row);
        for (c, value) in row.iter().enumerate() {
            logits[(i, c)] = (value - log_sum).exp();
        }
    }
}

/// What one pass over the centred data gives.
#[derive(Debug)]
pub(crate) struct CentredGram {
    /// (F - mean)'(F - mean), D x D, both triangles filled.
    pub gram: Mat<f64>,
    /// sum over samples of ||x_i - mean||^4 (Ledoit-Wolf's beta).
    pub sum_row_norm4: f64,
}

/// Computes the centred Gram matrix block by block; only its lower triangle is multiplied.
pub(crate) fn centred_gram(features: MatRef<'_, f64>, means: &[f64]) -> CentredGram {
    blocked_gram(features, |_, j, x| x - means[j])
}

/// (F - M)'(F - M) for M_ij = the mean of row i's class in column j: the within-class scatter.
pub(crate) fn within_class_gram(features: MatRef<'_, f64>, labels: &[usize], class_means: MatRef<'_, f64>) -> Mat<f64> {
    blocked_gram(features, |i, j, x| x - class_means[(labels[i], j)]).gram
}

/// G'G for G_ij = entry(i, j, F_ij), block by block (G never exists whole); only the lower
/// triangle is multiplied.
fn blocked_gram(features: MatRef<'_, f64>, entry: impl Fn(usize, usize, f64) -> f64 + Sync) -> CentredGram {
    let all: Vec<usize> = (0..features.nrows()).collect();
    gram_of_rows(features, &all, entry)
}

/// G_S'G_S over the rows S = `rows` of G_ij = entry(i, j, F_ij) (i an index into F: the row
/// centred, shifted or mixed as the caller needs), in blocks of [`ROW_BLOCK`] rows.
pub(crate) fn gram_of_rows(features: MatRef<'_, f64>, rows: &[usize], entry: impl Fn(usize, usize, f64) -> f64 + Sync) -> CentredGram {
    let d = features.ncols();
    let mut gram = Mat::<f64>::zeros(d, d);
    let mut block = Mat::<f64>::zeros(ROW_BLOCK.min(rows.len()), d);
    let mut sum_row_norm4 = 0.0;
    for chunk in rows.chunks(ROW_BLOCK) {
        // The block is filled by all cores, a run of rows each (one core filling it left the
        // other idle for ~7% of a Gram); each row's norm is summed over columns in order.
        let mut norms = vec![0.0f64; chunk.len()];
        block
            .as_mut()
            .subrows_mut(0, chunk.len())
            .par_row_chunks_mut(FILL_ROWS)
            .zip(norms.par_chunks_mut(FILL_ROWS))
            .zip(chunk.par_chunks(FILL_ROWS))
            .for_each(|((mut dst, norms), rows)| {
                for j in 0..d {
                    let src = features.col(j);
                    let mut dst = dst.as_mut().col_mut(j);
                    for (i, &row) in rows.iter().enumerate() {
                        let value = entry(row, j, src[row]);
                        dst[i] = value;
                        norms[i] += value * value;
                    }
                }
            });
        sum_row_norm4 += norms.iter().map(|s| s * s).sum::<f64>();
        let view = block.as_ref().subrows(0, chunk.len());
        triangular::matmul(
            gram.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            view.transpose(),
            BlockStructure::Rectangular,
            view,
            BlockStructure::Rectangular,
            1.0,
            parallelism(),
        );
    }
    fill_upper_from_lower(gram.as_mut());
    CentredGram { gram, sum_row_norm4 }
}

/// The sample indices of each class, in class order.
pub(crate) fn class_rows(labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut rows = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        rows[label].push(i);
    }
    rows
}

pub(crate) fn fill_upper_from_lower(mut matrix: faer::MatMut<'_, f64>) {
    for j in 0..matrix.ncols() {
        for i in 0..j {
            matrix[(i, j)] = matrix[(j, i)];
        }
    }
}

/// The eigendecomposition of a symmetric matrix: eigenvalues in increasing order, as faer
/// gives them, and the matching eigenvectors as columns, written straight into one matrix (no
/// reordered copy: at D = 2048 each D x D copy is 32 MiB).
#[derive(Debug, Clone)]
pub(crate) struct SymmetricEigen {
    pub values: Vec<f64>,
    pub vectors: Mat<f64>,
}

impl SymmetricEigen {
    /// Decomposes `scale` times a symmetric matrix (its lower triangle is read). Scaling the
    /// eigenvalues afterwards spares a scaled copy of the matrix.
    pub(crate) fn new(matrix: MatRef<'_, f64>, scale: f64, what: &'static str) -> Result<Self> {
        let d = matrix.nrows();
        let par = parallelism();
        let mut vectors = Mat::<f64>::zeros(d, d);
        let mut values = Diag::<f64>::zeros(d);
        let scratch = evd::self_adjoint_evd_scratch::<f64>(d, evd::ComputeEigenvectors::Yes, par, Default::default());
        evd::self_adjoint_evd(
            matrix,
            values.as_mut(),
            Some(vectors.as_mut()),
            par,
            MemStack::new(&mut MemBuffer::new(scratch)),
            Default::default(),
        )
        .map_err(|_| Error::EigenFailed { what })?;
        let values = values.column_vector().iter().map(|v| v * scale).collect();
        Ok(Self { values, vectors })
    }

    /// The eigenvalues from the largest down.
    pub(crate) fn descending_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.iter().rev().copied()
    }

    /// The eigenvectors of the `k` largest eigenvalues, largest first (D x k).
    pub(crate) fn top_vectors(&self, k: usize) -> Mat<f64> {
        let d = self.vectors.ncols();
        Mat::from_fn(d, k, |i, j| self.vectors[(i, d - 1 - j)])
    }

    /// trace(pinv(A) B) for A = this matrix with eigenvalues remapped by `value_of`, B given by
    /// `b_quadratic[i] = v_i' B v_i`. Pseudo-inverse as numpy's `pinv(rcond)`: singular values
    /// (|eigenvalues|) at or below rcond times the largest are treated as zero.
    pub(crate) fn pinv_trace(&self, value_of: impl Fn(f64) -> f64, b_quadratic: &[f64], rcond: f64) -> f64 {
        let values: Vec<f64> = self.values.iter().map(|&v| value_of(v)).collect();
        let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let cutoff = rcond * largest;
        values.iter().zip(b_quadratic).filter(|(v, _)| v.abs() > cutoff).map(|(v, q)| q / v).sum()
    }
}

/// The eigenvalues of `scale` times a symmetric matrix (its lower triangle is read), in
/// increasing order, without the eigenvectors.
pub(crate) fn symmetric_eigenvalues(matrix: MatRef<'_, f64>, scale: f64, what: &'static str) -> Result<Vec<f64>> {
    let d = matrix.nrows();
    let par = parallelism();
    let mut values = Diag::<f64>::zeros(d);
    let scratch = evd::self_adjoint_evd_scratch::<f64>(d, evd::ComputeEigenvectors::No, par, Default::default());
    evd::self_adjoint_evd(matrix, values.as_mut(), None, par, MemStack::new(&mut MemBuffer::new(scratch)), Default::default())
        .map_err(|_| Error::EigenFailed { what })?;
    Ok(values.column_vector().iter().map(|v| v * scale).collect())
}

/// (F - mean) times `basis` (D x k), in row blocks: the N x k coordinates of PCA.
pub(crate) fn project_centred(features: MatRef<'_, f64>, means: &[f64], basis: MatRef<'_, f64>) -> Mat<f64> {
    let (n, d) = features.shape();
    let k = basis.ncols();
    let mut out = Mat::<f64>::zeros(n, k);
    let mut block = Mat::<f64>::zeros(ROW_BLOCK.min(n), d);
    let mut start = 0;
    while start < n {
        let rows = ROW_BLOCK.min(n - start);
        for j in 0..d {
            let src = features.col(j).subrows(start, rows);
            let mut dst = block.as_mut().col_mut(j);
            for i in 0..rows {
                dst[i] = src[i] - means[j];
            }
        }
        faer::linalg::matmul::matmul(
            out.as_mut().subrows_mut(start, rows),
            Accum::Replace,
            block.as_ref().subrows(0, rows),
            basis,
            1.0,
            parallelism(),
        );
        start += rows;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Mat<f64> {
        Mat::from_fn(2500, 5, |i, j| ((i * 7 + j * 13) % 17) as f64 + (j as f64) * (i as f64).sqrt())
    }

    #[test]
    fn blocked_centred_gram_equals_the_direct_product() {
        let f = sample();
        let means = column_means(f.as_ref());
        let centred = Mat::from_fn(f.nrows(), f.ncols(), |i, j| f[(i, j)] - means[j]);
        let direct = centred.transpose() * &centred;
        let blocked = centred_gram(f.as_ref(), &means);
        for i in 0..5 {
            for j in 0..5 {
                assert!((direct[(i, j)] - blocked.gram[(i, j)]).abs() <= 1e-9 * direct[(i, i)].abs().max(1.0));
            }
        }
        let norm4: f64 = (0..f.nrows()).map(|i| (0..5).map(|j| centred[(i, j)].powi(2)).sum::<f64>().powi(2)).sum();
        assert!((norm4 - blocked.sum_row_norm4).abs() <= 1e-12 * norm4);
    }

    #[test]
    fn eigenvalues_are_decreasing_and_reconstruct_the_matrix() {
        let a = Mat::from_fn(3, 3, |i, j| [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 1.0]][i][j]);
        let eig = SymmetricEigen::new(a.as_ref(), 1.0, "test matrix").unwrap();
        assert!(eig.values.windows(2).all(|w| w[0] <= w[1]));
        let top = eig.top_vectors(1);
        assert!((0..3).all(|i| top[(i, 0)] == eig.vectors[(i, 2)]));
        let v = &eig.vectors;
        let rebuilt = Mat::from_fn(3, 3, |i, j| (0..3).map(|k| v[(i, k)] * eig.values[k] * v[(j, k)]).sum::<f64>());
        for i in 0..3 {
            for j in 0..3 {
                assert!((rebuilt[(i, j)] - a[(i, j)]).abs() < 1e-12);
            }
        }
    }
}
