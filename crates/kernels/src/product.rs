//! faer's matrix product, and the vector state it leaves behind.
//!
//! faer's x86 kernels (private-gemm-x86, hand-written AVX-512) return with the upper halves of
//! the vector registers dirty: they issue no `vzeroupper`. Until something clears them, every
//! SSE instruction the thread runs afterwards (the scalar and 128-bit code of the passes between
//! products, libm's `expf`) waits on those halves. On the 2-core reference machine a GELU pass
//! over ViT-L's MLP activations took 600 ms after a product on the same threads and 16 ms
//! otherwise, and attention's softmax slowed alike. Every product the kernels run goes through
//! [`matmul`], which clears the state on the calling thread afterwards.

use faer::{Accum, MatMut, MatRef, Par};

/// dst = alpha lhs rhs (`Accum::Replace`) or dst += alpha lhs rhs (`Accum::Add`), as faer's
/// `matmul`, leaving the calling thread's upper vector state clean.
pub(crate) fn matmul(dst: MatMut<'_, f32>, accumulate: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, alpha: f32, par: Par) {
    faer::linalg::matmul::matmul(dst, accumulate, lhs, rhs, alpha, par);
    clear_upper_vector_state();
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
