//! GELU with the exact (erf) form, as timm's and transformers' ViTs use it, on the CPU in f32
//! (`pointwise.rs` runs it: one parallel pass each way). candle's `gelu_erf` runs on one thread
//! with a branchy scalar erf, and differentiates through five separate tensor ops; in a ViT-S
//! forward pass it was the largest cost after the matrix products. The erf here is
//! Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), the polynomial PyTorch's
//! vectorised CPU kernel uses.

use super::pointwise::Pointwise;
use crate::elementwise::mul_add;
use crate::exp::exp;

/// erf(x), branch-free but for the sign.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let (p, a1, a2, a3, a4, a5) = (0.327_591_1f32, 0.254_829_6f32, -0.284_496_74f32, 1.421_413_7f32, -1.453_152f32, 1.061_405_4f32);
    let a = x.abs();
    let t = 1.0 / mul_add(p, a, 1.0);
    let polynomial = [a4, a3, a2, a1].iter().fold(a5, |q, &c| mul_add(q, t, c)) * t;
    let y = mul_add(-polynomial, exp(-a * a), 1.0);
    y.copysign(x)
}

/// x Phi(x) = x (1 + erf(x / sqrt 2)) / 2.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// d gelu / dx = Phi(x) + x phi(x).
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = exp(-0.5 * x * x) * 0.398_942_3;
    cdf + x * pdf
}

/// GELU of each value, in place (a fused product's epilogue).
pub(crate) fn gelu_in_place(values: &mut [f32]) {
    crate::elementwise::map_in_place(values, gelu);
}

/// GELU as a [`Pointwise`] activation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gelu;

impl Pointwise for Gelu {
    const NAMES: (&'static str, &'static str) = ("gelu-erf", "gelu-erf-grad");
    #[cfg(feature = "cuda")]
    const CUDA_KERNELS: (&'static str, &'static str) = ("gelu_forward", "gelu_backward");

    #[inline(always)]
    fn value(x: f32) -> f32 {
        gelu(x)
    }

    #[inline(always)]
    fn slope(x: f32) -> f32 {
        gelu_slope(x)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::activation::pointwise::apply;
    use crate::test_tensors::max_abs;

    /// Forward and backward against candle's own `gelu_erf` (its erf is exact to f32) over
    /// [-8, 8], where the tails and the kink of erf's polynomial are.
    #[test]
    fn one_pass_gelu_matches_candles_exact_gelu_and_its_gradient() {
        let values: Vec<f32> = (-1600..=1600).map(|i| i as f32 * 0.005).collect();
        let n = values.len();
        let x = Var::from_vec(values, (1, n), &Device::Cpu).unwrap();
        let upstream = Tensor::from_vec((0..n).map(|i| 1.0 + (i % 7) as f32).collect::<Vec<f32>>(), (1, n), &Device::Cpu).unwrap();
        let ours = apply(x.as_tensor(), Gelu).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        // erf's 1.5e-7 times |x| / 2 at |x| up to 8, and f32 rounding.
        let forward = max_abs((&ours - &theirs).unwrap());
        assert!(forward < 1e-6, "forward: {forward}");
        let ours_grad = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(&x).unwrap();
        let theirs_grad = (&theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(&x).unwrap();
        let backward = max_abs((&ours_grad - &theirs_grad).unwrap());
        assert!(backward < 1e-5, "backward (upstream up to 7): {backward}");
    }
}
