//! BatchNorm from candle's differentiable ops: train mode for dtypes other than f32, eval mode
//! for them and for anything that tracks a gradient.

use candle_core::{DType, Result, Tensor};

use super::{BatchNormOutput, BatchNormParams, RunningStatistics, unbiased_correction};
use crate::activation::FusedActivation;

pub(super) fn batch_norm_train(
    x: &Tensor,
    params: BatchNormParams<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> Result<BatchNormOutput> {
    let shape = (1, params.gamma.dim(0)?, 1, 1);
    // Batch statistics reduced in f64 on the CPU: train-mode BN divides by the batch standard
    // deviation, which amplifies the rounding of f32 sums (1.5e-4 of the logits of a small
    // MobileNetV2 against PyTorch; 1e-5 in f64). On a GPU in the input's dtype, as PyTorch's
    // CUDA kernels (f64 there would double the activations kept for backward).
    let wide = if x.device().is_cpu() { x.to_dtype(DType::F64)? } else { x.clone() };
    let mean = wide.mean_keepdim((0, 2, 3))?;
    let var = wide.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    let (mean, var) = (mean.to_dtype(x.dtype())?, var.to_dtype(x.dtype())?);
    let scale = (&var + params.eps)?.sqrt()?.recip()?.broadcast_mul(&params.gamma.reshape(shape)?)?;
    let y = x.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&params.beta.reshape(shape)?)?;
    // The running estimate takes the unbiased variance, as PyTorch's; no gradient flows into it.
    let unbiased_var = (var.detach().flatten_all()? * unbiased_correction(x)?)?;
    Ok(BatchNormOutput { y: activation.after_residual(y, residual)?, mean: mean.detach().flatten_all()?, unbiased_var })
}

/// act(x * scale + shift [+ residual]) with scale = gamma / sqrt(var + eps) and shift = beta -
/// mean * scale from the running estimates.
pub(super) fn batch_norm_eval(
    x: &Tensor,
    params: BatchNormParams<'_>,
    running: RunningStatistics<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> Result<Tensor> {
    let shape = (1, params.gamma.dim(0)?, 1, 1);
    let scale = (running.var + params.eps)?.sqrt()?.recip()?.mul(params.gamma)?;
    let shift = (params.beta - running.mean.mul(&scale)?)?;
    let y = x.broadcast_mul(&scale.reshape(shape)?)?.broadcast_add(&shift.reshape(shape)?)?;
    activation.after_residual(y, residual)
}
