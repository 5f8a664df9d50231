//! SiLU (swish), x sigmoid(x): EfficientNet's activation and the gate of SwiGLU MLPs, in
//! PyTorch's formulas, x / (1 + e^-x) forward and dy s (1 + x (1 - s)) with s = sigmoid(x)
//! backward (`pointwise.rs` runs them: one parallel pass each way on the CPU, one kernel each
//! way on CUDA, where candle differentiates its `silu` through eight tensor ops). The CPU's
//! e^x is `crate::exp`'s (2 ulp), which the compiler vectorises.

use super::pointwise::Pointwise;
use crate::exp::exp;

/// SiLU as a [`Pointwise`] activation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Silu;

impl Pointwise for Silu {
    const NAMES: (&'static str, &'static str) = ("silu", "silu-grad");
    #[cfg(feature = "cuda")]
    const CUDA_KERNELS: (&'static str, &'static str) = ("silu_forward", "silu_backward");

    #[inline(always)]
    fn value(x: f32) -> f32 {
        silu_value(x)
    }

    #[inline(always)]
    fn slope(x: f32) -> f32 {
        silu_slope(x)
    }
}

/// x / (1 + e^-x): also the fused BatchNorm's (`batchnorm/cpu.rs`), so that both give the same
/// bits.
#[inline(always)]
pub(crate) fn silu_value(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// s (1 + x (1 - s)), s = sigmoid(x): SiLU's derivative, likewise shared.
#[inline(always)]
pub(crate) fn silu_slope(x: f32) -> f32 {
    let sigmoid = 1.0 / (1.0 + exp(-x));
    sigmoid * (1.0 + x * (1.0 - sigmoid))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::activation::pointwise::apply;

    /// Forward and backward against candle's `silu` (std's e^x) and its autograd, value by value
    /// relative to each, over [-30, 30] (both tails: e^-x overflowing towards 0 and to the clamp
    /// of `crate::exp`); NaN stays NaN.
    #[test]
    fn one_pass_silu_matches_candles_silu_and_its_gradient() {
        let mut values: Vec<f32> = (-3000..=3000).map(|i| i as f32 * 0.01).collect();
        values.extend([-100.0, 100.0, f32::NAN]);
        let n = values.len();
        let x = Var::from_vec(values, n, &Device::Cpu).unwrap();
        let upstream = Tensor::from_vec((0..n).map(|i| 1.0 + (i % 7) as f32).collect::<Vec<f32>>(), n, &Device::Cpu).unwrap();
        let ours = apply(x.as_tensor(), Silu).unwrap();
        let theirs = x.as_tensor().silu().unwrap();
        let ours_grad = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(&x).unwrap();
        let theirs_grad = (&theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(&x).unwrap();
        for (what, ours, theirs) in [("forward", &ours, &theirs), ("backward", &ours_grad, &theirs_grad)] {
            let (ours, theirs) = (ours.to_vec1::<f32>().unwrap(), theirs.to_vec1::<f32>().unwrap());
            assert!(ours[n - 1].is_nan(), "{what}: NaN in, NaN out");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate().take(n - 1) {
                // A few ulp of e^x, and the cancellation in 1 - sigmoid near sigmoid = 1 (x > 15),
                // which makes candle's own gradient there only as good as the difference.
                let bound = 1e-6 * b.abs().max(1.0);
                assert!((a - b).abs() <= bound, "{what} at {}: {a} against {b}", -30.0 + i as f32 * 0.01);
            }
        }
    }
}
