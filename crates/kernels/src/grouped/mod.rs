//! Grouped 2-d convolution (ResNeXt, RegNet): the channels in `groups` blocks, each convolved
//! with its own block of filters.
//!
//! f32 on the CPU (`cpu.rs`): one op whose forward and backward passes run the dense kernel
//! (`conv/cpu.rs`) on each group's channels in turn. Composed from per-group tensor ops instead,
//! each group's input is a narrowed view, and candle's backward pass of a narrow writes a zero
//! tensor the size of the whole input per group: for RegNet-Y-1.6GF's 37 groups that is 37
//! full-size tensors where one suffices. CUDA tensors: one cuDNN call with a group count
//! (`conv/cuda.rs`). Elsewhere the same composition with the devices' convolution.

mod cpu;

use candle_core::{Result, Tensor};

use crate::kernel_input::is_f32_cpu;

/// A convolution of x (B, C, H, W) with weight (O, C / groups, k, k) in `groups` groups, at
/// `stride`, with `padding` zeros on every side, without a bias.
pub fn grouped_conv2d(x: &Tensor, weight: &Tensor, groups: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, channels, _, _) = x.dims4()?;
    let (out_channels, group_channels, _, _) = weight.dims4()?;
    if groups == 0 || channels % groups != 0 || out_channels % groups != 0 || group_channels * groups != channels {
        candle_core::bail!(
            "grouped conv: {channels} input and {out_channels} output channels in {groups} groups with a weight of {:?}",
            weight.dims()
        );
    }
    crate::window::check_kernel_fits("grouped conv", x, weight, groups, stride, padding)?;
    if is_f32_cpu(x) && is_f32_cpu(weight) {
        return cpu::grouped_conv2d(x, weight, groups, stride, padding);
    }
    #[cfg(feature = "cuda")]
    if crate::conv::cuda::applies(x, weight) {
        return crate::conv::cuda::conv2d(x, weight, groups, stride, padding);
    }
    composite(x, weight, groups, stride, padding)
}

/// Each group through [`crate::conv2d`], concatenated.
fn composite(x: &Tensor, weight: &Tensor, groups: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (in_group, out_group) = (x.dim(1)? / groups, weight.dim(0)? / groups);
    let outputs = (0..groups)
        .map(|g| crate::conv2d(&x.narrow(1, g * in_group, in_group)?, &weight.narrow(0, g * out_group, out_group)?, None, stride, padding))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outputs, 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::Var;

    use super::*;
    use crate::test_tensors::{NormalTensors, max_abs};

    /// The forward pass against candle's own grouped convolution, and the gradients of input and
    /// weight against the per-group composition (each group's dense convolution is held to
    /// candle's in conv's tests), at odd sizes, strides 1 and 2, 1x1 and 3x3 kernels.
    #[test]
    fn the_cpu_op_matches_candles_convolution_and_the_per_group_gradients() {
        let mut normal = NormalTensors::new(17);
        for (groups, channels, out_channels, kernel, stride, side) in
            [(4, 8, 12, 3, 1, 9), (3, 6, 6, 3, 2, 7), (2, 4, 6, 1, 1, 5), (5, 10, 5, 3, 2, 8)]
        {
            let x = Var::from_tensor(&normal.draw(0.0, 1.0, (2, channels, side, side + 1))).unwrap();
            let w = Var::from_tensor(&normal.draw(0.0, 0.5, (out_channels, channels / groups, kernel, kernel))).unwrap();
            let padding = kernel / 2;
            let ours = grouped_conv2d(x.as_tensor(), w.as_tensor(), groups, stride, padding).unwrap();
            let candle = x.as_tensor().detach().conv2d(&w.as_tensor().detach(), padding, stride, 1, groups).unwrap();
            assert!(max_abs((&ours - &candle).unwrap()) < 1e-4, "forward, {groups} groups");
            let reference = composite(x.as_tensor(), w.as_tensor(), groups, stride, padding).unwrap();
            let upstream = normal.draw(0.0, 1.0, ours.dims());
            let our_grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let true_grads = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, var) in [("input", &x), ("weight", &w)] {
                let difference = max_abs((our_grads.get(var.as_tensor()).unwrap() - true_grads.get(var.as_tensor()).unwrap()).unwrap());
                assert!(difference < 1e-4, "{what} gradient, {groups} groups: {difference}");
            }
        }
    }

    #[test]
    fn channels_that_do_not_divide_into_the_groups_are_refused() {
        let x = Tensor::zeros((1, 6, 4, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let w = Tensor::zeros((4, 2, 3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let error = grouped_conv2d(&x, &w, 4, 1, 1).unwrap_err().to_string();
        assert!(error.contains("4 groups"), "{error}");
    }
}
