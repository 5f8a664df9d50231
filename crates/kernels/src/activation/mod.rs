//! ReLU, ReLU6, GELU and SiLU, and the activation a fused BatchNorm applies after its residual
//! add.
//!
//! candle's `relu` differentiates as `grad * x.ge(zeros_like(x)).to_dtype(f32)`: a zero tensor, a
//! mask, its conversion and a product, four passes and three allocations of the activation's
//! size; `clamp(0, 6)` is a maximum and a minimum, each with its own masks. ResNets and
//! MobileNetV2 apply them to every large activation. On the CPU in f32 they are one pass each
//! way (`cpu.rs`), with PyTorch's backward pass: `dx = dy` where `low < x < high`, else 0
//! (`threshold_backward` and `hardtanh_backward`, 0 at the kinks; candle's relu gives 1 at
//! x = 0). Other devices and dtypes keep candle's ops.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod epilogue;
mod gelu;
mod pointwise;
mod silu;

use candle_core::{Result, Tensor};

pub(crate) use cpu::clamp_backward;
pub(crate) use epilogue::Epilogue;
pub(crate) use gelu::gelu_in_place;
pub(crate) use silu::{silu_slope, silu_value};

use crate::kernel_input::is_f32_cpu;

/// The activation a fused BatchNorm applies (after its residual add, where it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedActivation {
    /// No activation.
    Identity,
    /// max(x, 0).
    Relu,
    /// min(max(x, 0), 6).
    Relu6,
    /// x sigmoid(x) (EfficientNet's). Its derivative needs the activation's input, which the
    /// backward pass recomputes from the BatchNorm's; with a residual, whose value the backward
    /// pass does not keep, the BatchNorm and the SiLU run as two operations
    /// ([`crate::batch_norm_train`]).
    Silu,
}

impl FusedActivation {
    /// The clamp's upper bound; None for the identity and SiLU, which are no clamps.
    pub(crate) fn high(self) -> Option<f32> {
        match self {
            FusedActivation::Identity | FusedActivation::Silu => None,
            FusedActivation::Relu => Some(f32::INFINITY),
            FusedActivation::Relu6 => Some(6.0),
        }
    }

    /// The activation as an operation of its own.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            FusedActivation::Identity => Ok(x.clone()),
            FusedActivation::Relu => relu(x),
            FusedActivation::Relu6 => relu6(x),
            FusedActivation::Silu => silu(x),
        }
    }

    /// `values = self(values + residual)` in place, in the separate operations' f32 arithmetic
    /// (the sum rounded, then the activation's own formula), so the same bits: the last step of
    /// the fused CPU kernels, on a part of their output still in the cache.
    pub(crate) fn apply_in_place(self, values: &mut [f32], residual: Option<&[f32]>) {
        if let Some(residual) = residual {
            values.iter_mut().zip(residual).for_each(|(v, &r)| *v += r);
        }
        match self {
            FusedActivation::Identity => {}
            FusedActivation::Relu | FusedActivation::Relu6 => {
                let high = self.high().unwrap_or(f32::INFINITY);
                values.iter_mut().for_each(|v| *v = v.max(0.0).min(high));
            }
            FusedActivation::Silu => crate::elementwise::map_in_place(values, silu_value),
        }
    }

    /// `self(y + residual)` as separate operations: what the fused kernel does in one pass,
    /// for eval mode and other devices.
    pub fn after_residual(self, y: Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.apply(&match residual {
            Some(residual) => (y + residual)?,
            None => y,
        })
    }
}

/// GELU in its exact (erf) form: one parallel pass each way on the CPU in f32 (`gelu.rs`), one
/// kernel each way on a CUDA device in f32 (`cuda.rs`), candle's `gelu_erf` elsewhere.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cuda::gelu_applies(x) {
        return pointwise::apply(x, gelu::Gelu);
    }
    if is_f32_cpu(x) { pointwise::apply(x, gelu::Gelu) } else { x.gelu_erf() }
}

/// SiLU, x sigmoid(x): one parallel pass each way on the CPU in f32 (`silu.rs`), one kernel each
/// way on a CUDA device in f32 (`cuda.rs`), candle's `silu` elsewhere.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cuda::silu_applies(x) {
        return pointwise::apply(x, silu::Silu);
    }
    if is_f32_cpu(x) { pointwise::apply(x, silu::Silu) } else { x.silu() }
}

/// max(x, 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if is_f32_cpu(x) {
        return cpu::clamp(x, f32::INFINITY);
    }
    x.relu()
}

/// min(max(x, 0), 6).
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if is_f32_cpu(x) {
        return cpu::clamp(x, 6.0);
    }
    x.clamp(0f32, 6f32)
}
