//! Elementwise loops over f32 slices, compiled twice: for the build's target CPU
//! (`.cargo/config.toml`: x86-64-v3, AVX2) and for AVX-512, which is picked at run time where
//! the CPU has it. The activations' and the softmax's passes are vector arithmetic (a
//! polynomial and an exponent per value); with eight lanes instead of sixteen, GELU over a
//! ViT-L MLP activation took 2.5 ms where PyTorch's AVX-512 kernel takes 1.0.
//!
//! The closures must be small enough to inline (`#[inline(always)]` on what they call): the loop
//! is vectorised only once the closure's body is in it.

/// out[i] = f(input[i]).
#[inline]
#[allow(unsafe_code)]
pub(crate) fn map(out: &mut [f32], input: &[f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has every feature `avx512::map` is compiled for (checked just above),
        // which is all its `target_feature` attribute requires of a caller.
        return unsafe { avx512::map(out, input, f) };
    }
    portable::map(out, input, f);
}

/// out[i] = f(a[i], b[i]).
#[inline]
#[allow(unsafe_code)]
pub(crate) fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: as in `map`.
        return unsafe { avx512::map2(out, a, b, f) };
    }
    portable::map2(out, a, b, f);
}

/// values[i] = f(values[i]).
#[inline]
#[allow(unsafe_code)]
pub(crate) fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: as in `map`.
        return unsafe { avx512::map_in_place(values, f) };
    }
    portable::map_in_place(values, f);
}

/// Independent partial results in a reduction: one running sum or max is a chain of dependent
/// instructions the compiler may not reorder (a sum's order is its rounding), and such chains
/// were most of the time of LayerNorm's statistics (1024 long per row) and of the softmax
/// (197 long per row of a ViT's scores).
const LANES: usize = 16;

/// The sum of `term(v)` over `values`, in `LANES` partial sums the compiler vectorises (so in a
/// different order, and with a different rounding, than a sum from left to right).
#[inline(always)]
pub(crate) fn lane_sum<T>(values: &[f32], term: impl Fn(f32) -> T) -> T
where
    T: Copy + Default + std::ops::Add<Output = T>,
{
    let mut lanes = [T::default(); LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(T::default(), |sum, &v| sum + term(v));
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(sum, &v)| *sum = *sum + term(v));
    }
    lanes.into_iter().fold(tail, |sum, lane| sum + lane)
}

/// The largest of `values`, in `LANES` partial maxima (NaNs are skipped, as `f32::max` skips
/// them; -inf for none).
#[inline(always)]
pub(crate) fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(max, &v)| *max = if v > *max { v } else { *max });
    }
    lanes.into_iter().fold(tail, f32::max)
}

/// a * b + c, fused where the build's target has FMA (one instruction, one rounding: the
/// polynomials of `exp` and GELU's erf take half the instructions), written out otherwise, where
/// `f32::mul_add` would be a library call.
#[inline(always)]
pub(crate) fn mul_add(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// AVX-512 F, DQ, BW and VL: what Skylake-SP and every later Xeon, and AMD's Zen 4, have.
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// The loops themselves, inlined into each compilation. Indexed loops over slices cut to one
/// length: nested `zip` adapters left an out-of-line `fold` (compiled for AVX2 only) inside the
/// AVX-512 function.
#[allow(clippy::needless_range_loop)]
mod portable {
    #[inline(always)]
    pub(super) fn map(out: &mut [f32], input: &[f32], f: impl Fn(f32) -> f32) {
        let n = out.len().min(input.len());
        let (out, input) = (&mut out[..n], &input[..n]);
        for i in 0..n {
            out[i] = f(input[i]);
        }
    }

    #[inline(always)]
    pub(super) fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
        let n = out.len().min(a.len()).min(b.len());
        let (out, a, b) = (&mut out[..n], &a[..n], &b[..n]);
        for i in 0..n {
            out[i] = f(a[i], b[i]);
        }
    }

    #[inline(always)]
    pub(super) fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32) {
        for i in 0..values.len() {
            values[i] = f(values[i]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::portable;

    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub(super) fn map(out: &mut [f32], input: &[f32], f: impl Fn(f32) -> f32) {
        portable::map(out, input, f);
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub(super) fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
        portable::map2(out, a, b, f);
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    pub(super) fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32) {
        portable::map_in_place(values, f);
    }
}

#[cfg(test)]
mod tests {
    use super::{lane_max, lane_sum, map, map_in_place, map2};

    /// The reductions against f64 sums and a plain max, at lengths around the lane count, with
    /// a NaN skipped and an empty slice.
    #[test]
    fn lane_reductions_equal_the_plain_ones() {
        for len in [0usize, 1, 15, 16, 17, 197, 1024] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25).collect();
            let exact: f64 = values.iter().map(|&v| f64::from(v)).sum();
            assert_eq!(lane_sum(&values, f64::from), exact, "f64 sum, length {len}");
            let squares: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            assert_eq!(lane_sum(&values, |v| f64::from(v) * f64::from(v)), squares, "f64 sum of squares, length {len}");
            // Quarter-integers below 2^20 in magnitude: every f32 partial sum is exact.
            assert_eq!(f64::from(lane_sum(&values, |v| v)), exact, "f32 sum, length {len}");
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(lane_max(&values), max, "max, length {len}");
        }
        let with_nan = [1.0f32, f32::NAN, 3.0, -2.0];
        assert_eq!(lane_max(&with_nan), 3.0);
    }

    /// Each loop against the same arithmetic written out, over lengths around the vector widths
    /// (the remainders of 8 and 16 lanes) on whichever path this CPU takes.
    #[test]
    fn every_loop_computes_its_function_at_every_length() {
        let f = |v: f32| v.mul_add(1.5, -0.25).max(-1.0);
        for len in [0usize, 1, 7, 8, 15, 16, 17, 33, 1000] {
            let input: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let other: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut out = vec![f32::NAN; len];
            map(&mut out, &input, f);
            assert!(out.iter().zip(&input).all(|(&o, &v)| o == f(v)), "map, length {len}");
            map2(&mut out, &input, &other, |a, b| a * b + 1.0);
            assert!(out.iter().zip(input.iter().zip(&other)).all(|(&o, (&a, &b))| o == a * b + 1.0), "map2, length {len}");
            let mut values = input.clone();
            map_in_place(&mut values, f);
            assert!(values.iter().zip(&input).all(|(&o, &v)| o == f(v)), "map_in_place, length {len}");
        }
    }
}
