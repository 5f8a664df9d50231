//! Products through Intel MKL's `cblas_sgemm` (the `mkl` feature), the library PyTorch's CPU
//! products call. MKL is linked sequential (the kernels' threads are rayon's, as with faer), so a
//! product asked to run on several threads is split here into blocks of the destination, one
//! sequential call each.

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_sgemm};
use faer::{Accum, MatMut, MatRef, Par};
use std::ffi::c_int;

/// Below this many rows (or columns) per block, a split costs more than it gains.
const MIN_BLOCK: usize = 64;

/// `Ok` once the product is in `dst`, or `dst` back for faer when BLAS cannot address an operand
/// (a stride that is neither 1 in one direction nor at least the other dimension, or an empty
/// product, which faer already defines).
pub(super) fn matmul<'a>(
    dst: MatMut<'a, f32>,
    accumulate: Accum,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
) -> Result<(), MatMut<'a, f32>> {
    if lhs.ncols() == 0 || dst.nrows() == 0 || dst.ncols() == 0 || Gemm::new(dst.as_ref(), lhs, rhs).is_none() {
        return Err(dst);
    }
    in_blocks(dst, accumulate, lhs, rhs, alpha, par.degree());
    Ok(())
}

/// Splits the destination along its longer side until there is one block per task. A block's
/// views keep their strides, so BLAS addresses every block its whole matrix could be.
fn in_blocks(dst: MatMut<'_, f32>, accumulate: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, alpha: f32, tasks: usize) {
    let (rows, cols) = (dst.nrows(), dst.ncols());
    if tasks <= 1 || rows.max(cols) < 2 * MIN_BLOCK {
        return sequential(dst, accumulate, lhs, rhs, alpha);
    }
    let first_tasks = tasks / 2;
    if rows >= cols {
        let mid = rows * first_tasks / tasks;
        let (top, bottom) = dst.split_at_row_mut(mid);
        let (lhs_top, lhs_bottom) = lhs.split_at_row(mid);
        rayon::join(
            || in_blocks(top, accumulate, lhs_top, rhs, alpha, first_tasks),
            || in_blocks(bottom, accumulate, lhs_bottom, rhs, alpha, tasks - first_tasks),
        );
    } else {
        let mid = cols * first_tasks / tasks;
        let (left, right) = dst.split_at_col_mut(mid);
        let (rhs_left, rhs_right) = rhs.split_at_col(mid);
        rayon::join(
            || in_blocks(left, accumulate, lhs, rhs_left, alpha, first_tasks),
            || in_blocks(right, accumulate, lhs, rhs_right, alpha, tasks - first_tasks),
        );
    }
}

#[allow(unsafe_code)]
fn sequential(dst: MatMut<'_, f32>, accumulate: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, alpha: f32) {
    let Some(gemm) = Gemm::new(dst.as_ref(), lhs, rhs) else {
        // Not reached: a block keeps its matrix's strides. faer stays the answer if it were.
        return faer::linalg::matmul::matmul(dst, accumulate, lhs, rhs, alpha, Par::Seq);
    };
    let beta = match accumulate {
        Accum::Replace => 0.0,
        Accum::Add => 1.0,
    };
    let c = dst.as_ptr_mut();
    // `dst` is borrowed exclusively, so it aliases neither operand; with beta = 0 BLAS does not
    // read C. MKL's sequential layer keeps no state between calls: rayon threads may call at once.
    // SAFETY: `Gemm::new` derived every dimension and leading dimension from the views' shapes
    // and strides, so every element BLAS reads lies in `lhs` or `rhs` and every one it writes in
    // `dst`, which nothing else can reach while it is borrowed here.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasColMajor,
            gemm.transpose_a,
            gemm.transpose_b,
            gemm.m,
            gemm.n,
            gemm.k,
            alpha,
            gemm.a,
            gemm.lda,
            gemm.b,
            gemm.ldb,
            beta,
            c,
            gemm.ldc,
        )
    }
}

/// One column-major `sgemm` call: C (m x n) = op(A) (m x k) op(B) (k x n).
struct Gemm {
    transpose_a: CBLAS_TRANSPOSE,
    transpose_b: CBLAS_TRANSPOSE,
    m: c_int,
    n: c_int,
    k: c_int,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    ldc: c_int,
}

impl Gemm {
    /// The call for dst = lhs rhs: as is when dst is column-major, as dst' = rhs' lhs' when it
    /// is row-major (a transposed view has the same first element).
    fn new(dst: MatRef<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) -> Option<Gemm> {
        Self::column_major(dst, lhs, rhs).or_else(|| Self::column_major(dst.transpose(), rhs.transpose(), lhs.transpose()))
    }

    fn column_major(dst: MatRef<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) -> Option<Gemm> {
        let c = Addressing::of(dst)?;
        if c.transposed {
            return None;
        }
        let (a, b) = (Addressing::of(lhs)?, Addressing::of(rhs)?);
        Some(Gemm {
            transpose_a: a.op(),
            transpose_b: b.op(),
            m: c_int::try_from(dst.nrows()).ok()?,
            n: c_int::try_from(dst.ncols()).ok()?,
            k: c_int::try_from(lhs.ncols()).ok()?,
            a: lhs.as_ptr(),
            lda: a.ld,
            b: rhs.as_ptr(),
            ldb: b.ld,
            ldc: c.ld,
        })
    }
}

/// How BLAS's column-major addressing reaches a matrix: as stored (unit row stride, columns `ld`
/// apart) or as the transpose of a stored one (unit column stride, rows `ld` apart).
struct Addressing {
    transposed: bool,
    ld: c_int,
}

impl Addressing {
    fn of(matrix: MatRef<'_, f32>) -> Option<Addressing> {
        let (rows, cols) = (matrix.nrows(), matrix.ncols());
        let (row_stride, col_stride) = (matrix.row_stride(), matrix.col_stride());
        // BLAS wants ld >= max(1, the stored matrix's rows); a single row or column has no
        // stride to speak of, so the smallest legal ld stands in for it.
        let (min_rows, min_cols) = (rows.max(1) as isize, cols.max(1) as isize);
        if rows <= 1 || row_stride == 1 {
            let ld = if cols <= 1 { min_rows } else { col_stride };
            if ld >= min_rows {
                return Some(Addressing { transposed: false, ld: c_int::try_from(ld).ok()? });
            }
        }
        if cols <= 1 || col_stride == 1 {
            let ld = if rows <= 1 { min_cols } else { row_stride };
            if ld >= min_cols {
                return Some(Addressing { transposed: true, ld: c_int::try_from(ld).ok()? });
            }
        }
        None
    }

    fn op(&self) -> CBLAS_TRANSPOSE {
        if self.transposed { CBLAS_TRANSPOSE::CblasTrans } else { CBLAS_TRANSPOSE::CblasNoTrans }
    }
}

#[cfg(test)]
mod tests {
    use super::{Addressing, Gemm};
    use faer::{Mat, MatRef};

    /// The layouts the kernels multiply (linear's row-major blocks by the weight read
    /// transposed, attention's strided q/k/v views, convolution's row-major products) all reach
    /// MKL rather than falling back to faer.
    #[test]
    fn the_kernels_layouts_reach_mkl() {
        let (x, w, y) = (vec![0f32; 6 * 4], vec![0f32; 5 * 4], vec![0f32; 6 * 5]);
        let (x, w_t, y) =
            (MatRef::from_row_major_slice(&x, 6, 4), MatRef::from_column_major_slice(&w, 4, 5), MatRef::from_row_major_slice(&y, 6, 5));
        assert!(Gemm::new(y, x, w_t).is_some());
        // q (tokens x head width) inside a (tokens, 3 x heads x width) qkv row: row stride 3 x 2 x 4.
        let qkv = vec![0f32; 7 * 24];
        let q = MatRef::from_row_major_slice_with_stride(&qkv, 7, 4, 24);
        let k = MatRef::from_row_major_slice_with_stride(&qkv[8..], 7, 4, 24);
        let scores = Mat::<f32>::zeros(7, 7);
        let gemm = Gemm::new(scores.as_ref(), q, k.transpose()).unwrap();
        assert_eq!((gemm.m, gemm.n, gemm.k, gemm.lda, gemm.ldb), (7, 7, 4, 24, 24));
    }

    #[test]
    fn strides_blas_cannot_address_are_left_to_faer() {
        let data = [0f32; 64];
        // Column-major 4x3 with spare rows: ld 6.
        let padded = MatRef::from_column_major_slice_with_stride(&data, 4, 3, 6);
        let a = Addressing::of(padded).unwrap();
        assert!(!a.transposed && a.ld == 6);
        // Its transpose: the same storage addressed transposed.
        let t = Addressing::of(padded.transpose()).unwrap();
        assert!(t.transposed && t.ld == 6);
        // Columns closer together than a column is long: overlapping, not BLAS-addressable.
        assert!(Addressing::of(MatRef::from_column_major_slice_with_stride(&data, 4, 3, 2)).is_none());
        // Rows read backwards (stride -1) and columns 6 apart: neither stride is 1.
        assert!(Addressing::of(padded.reverse_rows()).is_none());
        // A single row taken out of a row-major matrix: ld is its length's minimum, 1 row.
        let row = MatRef::from_row_major_slice(&data[..12], 3, 4).subrows(1, 1);
        let r = Addressing::of(row).unwrap();
        assert!(!r.transposed && r.ld >= 1);
    }
}
