//! GELU with the exact (erf) form, as timm's and transformers' ViTs use it, on the CPU in f32:
//! one parallel pass each way. candle's `gelu_erf` runs on one thread (its unary ops do not
//! split work) with a branchy scalar erf, and differentiates through five separate tensor ops;
//! in a ViT-S forward pass it was the largest cost after the matrix products. The erf here is
//! Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), the polynomial PyTorch's
//! vectorised CPU kernel uses.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::exp::exp;
use crate::kernel_input::f32_slice;

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// erf(x), branch-free but for the sign.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let (p, a1, a2, a3, a4, a5) = (0.327_591_1f32, 0.254_829_6f32, -0.284_496_74f32, 1.421_413_7f32, -1.453_152f32, 1.061_405_4f32);
    let a = x.abs();
    let t = 1.0 / (1.0 + p * a);
    let y = 1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * exp(-a * a);
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
    values.iter_mut().for_each(|v| *v = gelu(*v));
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "gelu", "the input")?;
        let mut y = x.to_vec();
        y.par_chunks_mut(CHUNK).for_each(gelu_in_place);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        super::cuda::forward(storage, layout)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(&arg.contiguous()?, &GeluGrad)?))
    }
}

/// dy * gelu'(x).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, "gelu backward", "the gradient")?;
        let x = f32_slice(s2, l2, "gelu backward", "the input")?;
        if dy.len() != x.len() {
            candle_core::bail!("gelu backward: {} gradients for {} inputs", dy.len(), x.len());
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK).zip(dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK))).for_each(|(out, (g, input))| {
            for ((o, &g), &v) in out.iter_mut().zip(g).zip(input) {
                *o = g * gelu_slope(v);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        super::cuda::backward(s1, l1, s2, l2)
    }
}

/// GELU (erf form) of an f32 CPU tensor (or CUDA tensor, `cuda.rs`).
pub(super) fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Var};

    use super::*;
    use crate::test_tensors::max_abs;

    /// Forward and backward against candle's own `gelu_erf` (its erf is exact to f32) over
    /// [-8, 8], where the tails and the kink of erf's polynomial are.
    #[test]
    fn one_pass_gelu_matches_candles_exact_gelu_and_its_gradient() {
        let values: Vec<f32> = (-1600..=1600).map(|i| i as f32 * 0.005).collect();
        let n = values.len();
        let x = Var::from_vec(values, (1, n), &Device::Cpu).unwrap();
        let upstream = Tensor::from_vec((0..n).map(|i| 1.0 + (i % 7) as f32).collect::<Vec<f32>>(), (1, n), &Device::Cpu).unwrap();
        let ours = gelu_erf(x.as_tensor()).unwrap();
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
