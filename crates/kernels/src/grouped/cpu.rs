//! The grouped convolution of f32 on the CPU: the dense kernel on each group's channels, which
//! are one contiguous block of every image.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::conv::cpu::Forward;

struct Grouped {
    groups: usize,
    dense: Forward,
}

/// Copies block `g` of `per_image / groups` values out of each image of `data`.
fn gather(data: &[f32], images: usize, per_image: usize, groups: usize, g: usize) -> Vec<f32> {
    let block = per_image / groups;
    let mut out = Vec::with_capacity(images * block);
    for image in data.chunks_exact(per_image).take(images) {
        out.extend_from_slice(&image[g * block..(g + 1) * block]);
    }
    out
}

impl CustomOp2 for Grouped {
    fn name(&self) -> &'static str {
        "grouped-conv2d"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let (out_channels, group_channels, kernel, _) = l2.shape().dims4()?;
        let x = crate::kernel_input::f32_slice(s1, l1, "grouped conv", "the input")?;
        let w = crate::kernel_input::f32_slice(s2, l2, "grouped conv", "the weight")?;
        let groups = self.groups;
        let out_group = out_channels / groups;
        let in_layout = Layout::contiguous((batch, group_channels, height, width));
        let w_layout = Layout::contiguous((out_group, group_channels, kernel, kernel));
        let w_block = out_group * group_channels * kernel * kernel;
        let mut out = Vec::new();
        let mut out_shape = Shape::from(());
        for g in 0..groups {
            let x_g = CpuStorage::F32(gather(x, batch, channels * height * width, groups, g));
            let w_g = CpuStorage::F32(w[g * w_block..(g + 1) * w_block].to_vec());
            let (CpuStorage::F32(y_g), shape) = self.dense.run(&x_g, &in_layout, &w_g, &w_layout, None)? else {
                candle_core::bail!("grouped conv: the dense kernel gave no f32 output");
            };
            let (_, _, oh, ow) = shape.dims4()?;
            let block = out_group * oh * ow;
            if out.is_empty() {
                out = crate::parallel_output::zeros(batch * out_channels * oh * ow, 0);
                out_shape = Shape::from((batch, out_channels, oh, ow));
            }
            for (image, y) in out.chunks_exact_mut(out_channels * oh * ow).zip(y_g.chunks_exact(block)) {
                image[g * block..(g + 1) * block].copy_from_slice(y);
            }
        }
        Ok((CpuStorage::F32(out), out_shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let groups = self.groups;
        let (in_group, out_group) = (x.dim(1)? / groups, w.dim(0)? / groups);
        let mut grad_inputs = Vec::with_capacity(groups);
        let mut grad_weights = Vec::with_capacity(groups);
        for g in 0..groups {
            // x's group keeps x's tracking: the dense kernel skips the input gradient of an input
            // that needs none.
            let x_g = x.narrow(1, g * in_group, in_group)?.contiguous()?;
            let w_g = w.detach().narrow(0, g * out_group, out_group)?.contiguous()?;
            let grad_g = grad.narrow(1, g * out_group, out_group)?.contiguous()?;
            let (grad_input, grad_weight, _) = self.dense.gradients(&x_g, &w_g, &grad_g)?;
            grad_inputs.extend(grad_input);
            grad_weights.push(grad_weight);
        }
        let grad_input = if grad_inputs.len() == groups { Some(Tensor::cat(&grad_inputs, 1)?) } else { None };
        Ok((grad_input, Some(Tensor::cat(&grad_weights, 0)?)))
    }
}

/// The grouped convolution of f32 CPU tensors.
pub(super) fn grouped_conv2d(x: &Tensor, weight: &Tensor, groups: usize, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, Grouped { groups, dense: Forward { stride, padding } })
}
