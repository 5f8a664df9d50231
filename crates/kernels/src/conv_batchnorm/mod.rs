//! A dense convolution without bias and the train-mode BatchNorm (+ ReLU, ReLU6 or SiLU) after it.
//!
//! On the CPU in f32 the two are one graph node (`cpu.rs`): the same arithmetic as the separate
//! kernels, without candle's zero-filled gradient for the convolution's output. Elsewhere they
//! are the two ops one after the other.

mod cpu;

use candle_core::{Result, Tensor};

use crate::activation::FusedActivation;
use crate::batchnorm::{BatchNormOutput, BatchNormParams, batch_norm_train, from_f64_statistics};
use crate::conv::conv2d;
use crate::kernel_input::is_f32_cpu;

/// `activation(BatchNorm(conv2d(x, weight)))` with the batch's statistics, for a one-group
/// convolution without bias at `stride` with `padding`.
pub fn conv_batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    params: BatchNormParams<'_>,
    activation: FusedActivation,
) -> Result<BatchNormOutput> {
    crate::window::check_kernel_fits("conv + batch norm", x, weight, 1, stride, padding)?;
    if [x, weight, params.gamma, params.beta].into_iter().all(is_f32_cpu) {
        let norm = (params.gamma, params.beta, params.eps);
        let (y, mean, var) = cpu::conv_batch_norm_train(x, weight, (stride, padding), norm, activation)?;
        return from_f64_statistics(y, &mean, &var);
    }
    batch_norm_train(&conv2d(x, weight, None, stride, padding)?, params, None, activation)
}
