//! Depthwise convolution (groups = channels).
//!
//! candle runs such a convolution as one im2col convolution per channel and concatenates them,
//! which made MobileNetV2 and EfficientNet ten times slower than PyTorch. f32 on the CPU takes
//! one direct kernel with its backward pass (`cpu.rs`); CUDA tensors one cuDNN call with a group
//! per channel (`conv/cuda.rs`), or, in f32 with `MEDXFER_CUDA_DEPTHWISE=direct`, the same op
//! as the CPU's with direct CUDA kernels (`cuda.rs`, PyTorch's choice for f32; which is faster
//! on a GPU is `.ci/gpu`'s to measure); other devices and dtypes sum k²
//! shifted, strided views of the input (`composite.rs`): a few large elementwise kernels that
//! candle differentiates, where the grouped convolution launches one per channel.

mod composite;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};

use crate::activation::FusedActivation;
use crate::kernel_input::is_f32_cpu;

/// The geometry the CPU and CUDA kernels and the composite share: an input plane's size, the
/// square kernel, stride and symmetric padding.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// A depthwise convolution of x (B, C, H, W) with weight (C, 1, K, K) at `stride`, with
/// `padding` zeros on every side.
pub fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    crate::window::check_kernel_fits("depthwise conv", x, weight, x.dim(1)?, stride, padding)?;
    if is_f32_cpu(x) && is_f32_cpu(weight) {
        return cpu::depthwise_conv2d(x, weight, stride, padding);
    }
    #[cfg(feature = "cuda")]
    if cuda::applies(x, weight) {
        return cpu::depthwise_conv2d(x, weight, stride, padding);
    }
    #[cfg(feature = "cuda")]
    if crate::conv::cuda::applies(x, weight) {
        return crate::conv::cuda::conv2d(x, weight, x.dim(1)?, stride, padding);
    }
    composite::depthwise_conv2d(x, weight, stride, padding)
}

/// `activation(depthwise_conv2d(x, weight) + bias + residual)`, the bias (C) per channel, for
/// inputs outside any graph (eval mode: extraction, validation). f32 on the CPU: the bias, the
/// residual and the activation on each plane as the kernel finishes it, instead of passes of
/// their own over the whole output (the same operations, so the same bits). Elsewhere, for
/// SiLU, and where any input tracks a gradient, the separate ops.
pub fn depthwise_conv2d_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> Result<Tensor> {
    crate::window::check_kernel_fits("depthwise conv", x, weight, x.dim(1)?, stride, padding)?;
    let inputs = [Some(x), Some(weight), Some(bias), residual];
    // SiLU keeps the separate ops: EfficientNet-B0's extraction measured 2-5% slower with it (or
    // with the bias alone) in the kernel's epilogue, where MobileNetV2's gained 20% with ReLU6.
    if activation != FusedActivation::Silu && inputs.iter().flatten().all(|t| is_f32_cpu(t) && !t.track_op()) {
        return cpu::depthwise_conv2d_then(x, weight, bias, (stride, padding), residual, activation);
    }
    let y = crate::channel_bias::add_channel_bias(&depthwise_conv2d(x, weight, stride, padding)?, bias)?;
    activation.after_residual(y, residual)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::test_tensors::max_difference;

    /// The path CUDA takes, run in f64 on the CPU, against the direct CPU kernel in f32.
    #[test]
    fn the_device_path_matches_the_cpu_kernel() {
        let mut random = crate::test_tensors::NormalTensors::new(2);
        for (kernel, stride, height, width) in [(3, 1, 9, 7), (3, 2, 9, 8), (5, 2, 11, 10), (5, 1, 6, 6), (3, 2, 7, 7)] {
            let case = format!("k{kernel} s{stride} {height}x{width}");
            let padding = kernel / 2;
            let x = random.draw(0.0, 1.0, (2, 3, height, width));
            let w = random.draw(0.0, 1.0, (3, 1, kernel, kernel));
            let (x32, w32) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let wide = |t: &Tensor| Var::from_tensor(&t.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
            let (x64, w64) = (wide(&x), wide(&w));
            let reference = depthwise_conv2d(x32.as_tensor(), w32.as_tensor(), stride, padding).unwrap();
            let ours =
                depthwise_conv2d(x64.as_tensor(), w64.as_tensor(), stride, padding).unwrap().to_dtype(candle_core::DType::F32).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "{case}");
            assert!(max_difference(&ours, &reference) < 1e-5, "forward {case}");
            let upstream = random.draw(0.0, 1.0, ours.dims());
            let reference_grads = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let our_grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, ours, theirs) in [("input", &x64, &x32), ("weight", &w64, &w32)] {
                let ours = our_grads.get(ours.as_tensor()).unwrap().to_dtype(candle_core::DType::F32).unwrap();
                let difference = max_difference(&ours, reference_grads.get(theirs.as_tensor()).unwrap());
                assert!(difference < 1e-4, "{name} gradient {case}: {difference}");
            }
        }
    }
}
