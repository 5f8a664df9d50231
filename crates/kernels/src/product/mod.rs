//! The matrix product every CPU kernel runs: faer's, or Intel MKL's under the `mkl` feature.
//!
//! faer's x86 kernels (private-gemm-x86, hand-written AVX-512) return with the upper halves of
//! the vector registers dirty: they issue no `vzeroupper`. Until something clears them, every
//! SSE instruction the thread runs afterwards (the scalar and 128-bit code of the passes between
//! products, libm's `expf`) waits on those halves. On the 2-core reference machine a GELU pass
//! over ViT-L's MLP activations took 600 ms after a product on the same threads and 16 ms
//! otherwise, and attention's softmax slowed alike. Every product the kernels run goes through
//! [`matmul`], which clears the state on the calling thread afterwards.
//!
//! With the `mkl` feature, products whose operands BLAS can address (each one row- or
//! column-major, which is every product the kernels make) run through MKL's `cblas_sgemm`, the
//! library PyTorch's CPU products call: on Intel CPUs it is 10-15% faster than faer at ViT-L's
//! shapes. Anything else still runs through faer.

#[cfg(feature = "mkl")]
mod mkl;

use faer::{Accum, MatMut, MatRef, Par};

/// dst = alpha lhs rhs (`Accum::Replace`) or dst += alpha lhs rhs (`Accum::Add`), as faer's
/// `matmul`, leaving the calling thread's upper vector state clean.
pub(crate) fn matmul(dst: MatMut<'_, f32>, accumulate: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, alpha: f32, par: Par) {
    #[cfg(feature = "mkl")]
    let Err(dst) = mkl::matmul(dst, accumulate, lhs, rhs, alpha, par) else {
        clear_upper_vector_state();
        return;
    };
    faer::linalg::matmul::matmul(dst, accumulate, lhs, rhs, alpha, par);
    clear_upper_vector_state();
}

/// Which library runs the CPU kernels' f32 matrix products in this build, for benchmark reports:
/// "faer", or "Intel MKL" under the `mkl` feature.
pub fn cpu_product_library() -> &'static str {
    if cfg!(feature = "mkl") { "Intel MKL" } else { "faer" }
}

/// `vzeroupper` where the CPU has AVX (nothing to clear otherwise).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn clear_upper_vector_state() {
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above, which is all `vzeroupper` requires. It
        // zeroes bits 128 and up of the vector registers and touches no memory; the compiler
        // treats the intrinsic as clobbering those registers, so no live value is held in them.
        unsafe { std::arch::x86_64::_mm256_zeroupper() }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn clear_upper_vector_state() {}

#[cfg(test)]
mod tests {
    use super::matmul;
    use faer::{Accum, Mat, MatMut, MatRef, Par};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The product in f64 by the definition, the truth for every layout below.
    fn naive(lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) -> Vec<Vec<f64>> {
        (0..lhs.nrows())
            .map(|i| (0..rhs.ncols()).map(|j| (0..lhs.ncols()).map(|p| f64::from(lhs[(i, p)]) * f64::from(rhs[(p, j)])).sum()).collect())
            .collect()
    }

    fn random(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Mat<f32> {
        Mat::from_fn(rows, cols, |_, _| rng.random_range(-1.0f32..1.0))
    }

    /// A matrix stored row-major with `pad` spare columns, so its row stride is not its width.
    fn padded_row_major(rows: usize, cols: usize, pad: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..rows * (cols + pad)).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn assert_close(dst: MatRef<'_, f32>, truth: &[Vec<f64>], case: &str) {
        let scale = truth.iter().flatten().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, row) in truth.iter().enumerate() {
            for (j, want) in row.iter().enumerate() {
                let got = f64::from(dst[(i, j)]);
                assert!((got - want).abs() <= 1e-5 * scale, "{case}: ({i}, {j}) is {got}, the f64 product {want}");
            }
        }
    }

    /// Every layout the kernels hand over (row-major, column-major, transposed views, views into
    /// wider storage, single rows and columns), replace and accumulate, alpha, sequential and
    /// split across threads: one test for whichever library this build multiplies with.
    #[test]
    fn products_in_every_layout_equal_the_f64_product() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(m, k, n) in &[(37, 19, 53), (1, 64, 130), (130, 64, 1), (5, 1, 7), (64, 197, 197), (3, 0, 4)] {
            let lhs_col = random(m, k, &mut rng);
            let rhs_col = random(k, n, &mut rng);
            let lhs_t = random(k, m, &mut rng);
            let rhs_rows = padded_row_major(k, n, 3, &mut rng);
            let rhs_row = MatRef::from_row_major_slice_with_stride(&rhs_rows, k, n, n + 3);
            let operands: [(&str, MatRef<'_, f32>, MatRef<'_, f32>); 4] = [
                ("column-major", lhs_col.as_ref(), rhs_col.as_ref()),
                ("transposed lhs", lhs_t.as_ref().transpose(), rhs_col.as_ref()),
                ("padded row-major rhs", lhs_col.as_ref(), rhs_row),
                ("both transposed-like", lhs_t.as_ref().transpose(), rhs_row),
            ];
            for (name, lhs, rhs) in operands {
                let truth = naive(lhs, rhs);
                for par in [Par::Seq, Par::rayon(3)] {
                    // Row-major destination with spare columns, replaced.
                    let mut storage = vec![f32::NAN; m * (n + 2)];
                    // (faer 0.24.4's `from_row_major_slice_with_stride_mut` lays the view out
                    // column-major, past the slice's end, faer-rs PR #267: the transpose of a
                    // column-major view is the row-major one.)
                    let dst = MatMut::from_column_major_slice_with_stride_mut(&mut storage, n, m, n + 2).transpose_mut();
                    matmul(dst, Accum::Replace, lhs, rhs, 1.0, par);
                    let dst = MatRef::from_row_major_slice_with_stride(&storage, m, n, n + 2);
                    assert_close(dst, &truth, &format!("{m}x{k}x{n} {name}, row-major dst, {par:?}"));
                    for row in 0..m {
                        assert!(
                            storage[row * (n + 2) + n..(row + 1) * (n + 2)].iter().all(|v| v.is_nan()),
                            "{name}: the padding was written"
                        );
                    }
                    // Column-major destination, accumulated onto ones with alpha = -0.5.
                    let mut acc = Mat::<f32>::from_fn(m, n, |_, _| 1.0);
                    matmul(acc.as_mut(), Accum::Add, lhs, rhs, -0.5, par);
                    let want: Vec<Vec<f64>> = truth.iter().map(|row| row.iter().map(|v| 1.0 - 0.5 * v).collect()).collect();
                    assert_close(acc.as_ref(), &want, &format!("{m}x{k}x{n} {name}, accumulate, {par:?}"));
                }
            }
        }
    }
}
