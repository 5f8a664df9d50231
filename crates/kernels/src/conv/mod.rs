//! Dense (one-group) 2-d convolution with PyTorch's square kernel and symmetric padding.
//!
//! f32 on the CPU: im2col + GEMM per tile of output rows, forward and backward (`cpu.rs`).
//! CUDA tensors in f32, f16 or bf16: cuDNN in all three directions (`cuda.rs`, also for the
//! grouped and depthwise convolutions). Elsewhere (f64, other devices): candle's conv2d forward
//! with a backward pass of our own built from candle ops (`composite.rs`), since candle's own
//! fails on unequal height/width remainders.

pub(crate) mod composite;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use candle_core::{Result, Tensor};

use crate::activation::FusedActivation;
use crate::kernel_input::is_f32_cpu;

/// A one-group convolution of x (B, C, H, W) with weight (O, C, k, k) and an optional bias (O),
/// at `stride`, with `padding` zeros on every side.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    crate::window::check_kernel_fits("conv2d", x, weight, 1, stride, padding)?;
    if is_f32_cpu(x) && is_f32_cpu(weight) && bias.is_none_or(is_f32_cpu) {
        return cpu::conv2d(x, weight, bias, stride, padding);
    }
    #[cfg(feature = "cuda")]
    let y = if cuda::applies(x, weight) {
        cuda::conv2d(x, weight, 1, stride, padding)?
    } else {
        composite::conv2d(x, weight, stride, padding)?
    };
    #[cfg(not(feature = "cuda"))]
    let y = composite::conv2d(x, weight, stride, padding)?;
    // A GPU's f32 bias as one node (`channel_bias`); elsewhere candle's broadcast add.
    match bias {
        Some(bias) => crate::channel_bias::add_channel_bias(&y, bias),
        None => Ok(y),
    }
}

/// `activation(conv2d(x, weight, bias) + residual)` for inputs outside any graph (eval mode:
/// extraction, validation). f32 on the CPU: the residual add and the activation run on each
/// group of images' output right after its products, in the same task, instead of as two
/// passes of their own over the whole output (the same operations, so the same bits).
/// Elsewhere, and where any input tracks a gradient, the separate ops.
pub fn conv2d_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> Result<Tensor> {
    crate::window::check_kernel_fits("conv2d", x, weight, 1, stride, padding)?;
    let inputs = [Some(x), Some(weight), bias, residual];
    if inputs.iter().flatten().all(|t| is_f32_cpu(t) && !t.track_op()) {
        return cpu::conv2d_then(x, weight, bias, (stride, padding), residual, activation);
    }
    activation.after_residual(conv2d(x, weight, bias, stride, padding)?, residual)
}
