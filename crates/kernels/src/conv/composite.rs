//! Dense convolution where the CPU kernel (`cpu.rs`) does not apply (CUDA, or a dtype other than
//! f32): candle's conv2d forward with a backward pass of our own, built from candle ops.
//!
//! candle's own conv2d backward has two problems for training. It passes one output padding for
//! both axes, so it fails whenever height and width leave different remainders at stride 2 (a
//! 13x10 input to a 7x7/2 stem). And it takes the input gradient from `conv_transpose2d`, a
//! naive loop per output element on CUDA. Here the input gradient is a plain convolution of the
//! stride-dilated gradient with the flipped kernel, and the weight gradient one matrix product
//! for 1x1 kernels and candle's dilated-convolution form otherwise: every piece runs as candle's
//! im2col + cuBLAS (or cuDNN) convolution or matmul.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Storage, Tensor};

use crate::views::every_nth;

/// x (B, C, H, W) convolved with weight (O, C, k, k), one group, no dilation.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let kernel = weight.dim(2)?;
    if padding >= kernel {
        // The input gradient below pads by k - 1 - p; no backbone pads that much.
        candle_core::bail!("convolution padding {padding} must be smaller than the kernel ({kernel})");
    }
    dense(x)?.apply_op2(&dense(weight)?, DeviceConv { stride, padding })
}

/// Contiguous with its data at the start of its buffer, as `forward` wraps whole buffers.
fn dense(t: &Tensor) -> candle_core::Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset() == 0 { Ok(t) } else { t.force_contiguous() }
}

#[derive(Debug, Clone, Copy)]
struct DeviceConv {
    stride: usize,
    padding: usize,
}

impl DeviceConv {
    /// candle's conv2d on the two storages, wrapped as tensors outside any graph. Wrapping takes
    /// a copy of each input and of the output (device-to-device, small beside the convolution).
    fn forward(&self, x: Storage, x_layout: &Layout, w: Storage, w_layout: &Layout) -> candle_core::Result<(Storage, Shape)> {
        let x = Tensor::from_storage(x, x_layout.shape().clone(), BackpropOp::none(), false);
        let w = Tensor::from_storage(w, w_layout.shape().clone(), BackpropOp::none(), false);
        let y = dense(&x.conv2d(&w, self.padding, self.stride, 1, 1)?)?;
        let (storage, layout) = y.storage_and_layout();
        let out = match &*storage {
            Storage::Cpu(s) => Storage::Cpu(s.try_clone(layout)?),
            Storage::Cuda(s) => Storage::Cuda(s.try_clone(layout)?),
            Storage::Metal(s) => Storage::Metal(s.try_clone(layout)?),
        };
        Ok((out, layout.shape().clone()))
    }
}

impl CustomOp2 for DeviceConv {
    fn name(&self) -> &'static str {
        "conv2d-device"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.forward(Storage::Cpu(s1.try_clone(l1)?), l1, Storage::Cpu(s2.try_clone(l2)?), l2)? {
            (Storage::Cpu(out), shape) => Ok((out, shape)),
            _ => Err(candle_core::Error::Msg("conv2d-device: the CPU convolution left the CPU".into())),
        }
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match self.forward(Storage::Cuda(s1.try_clone(l1)?), l1, Storage::Cuda(s2.try_clone(l2)?), l2)? {
            (Storage::Cuda(out), shape) => Ok((out, shape)),
            _ => Err(candle_core::Error::Msg("conv2d-device: the CUDA convolution left the GPU".into())),
        }
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // An input that needs no gradient (the images into a stem) costs nothing.
        let grad_x = if x.track_op() { Some(self.input_gradient(grad, w, x.dim(2)?, x.dim(3)?)?) } else { None };
        Ok((grad_x, Some(self.weight_gradient(x, grad, w.dim(2)?)?)))
    }
}

impl DeviceConv {
    /// d/dx[h] = Σ_i g_dilated[h + p - i] w[i]: a convolution of the gradient, with s - 1 zeros
    /// between its entries and the rows no window reached appended as zeros, by the flipped,
    /// transposed kernel with padding k - 1 - p.
    fn input_gradient(&self, grad: &Tensor, w: &Tensor, height: usize, width: usize) -> candle_core::Result<Tensor> {
        let (s, p, k) = (self.stride, self.padding, w.dim(2)?);
        let (_, _, out_h, out_w) = grad.dims4()?;
        let (rest_h, rest_w) = (height + 2 * p - k - s * (out_h - 1), width + 2 * p - k - s * (out_w - 1));
        let dilated = if s > 1 { dilate(grad, s)? } else { grad.clone() };
        let padded = dilated.pad_with_zeros(2, 0, rest_h)?.pad_with_zeros(3, 0, rest_w)?;
        let reversed = Tensor::from_vec((0..k as u32).rev().collect::<Vec<u32>>(), k, w.device())?;
        let flipped = w.transpose(0, 1)?.contiguous()?.index_select(&reversed, 2)?.index_select(&reversed, 3)?;
        padded.conv2d(&flipped, k - 1 - p, 1, 1, 1)
    }

    /// d/dw[o, c, i, j] = Σ_{b, y, x} g[b, o, y, x] · x_padded[b, c, s·y + i, s·x + j].
    fn weight_gradient(&self, x: &Tensor, grad: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        let (batch, channels, _, _) = x.dims4()?;
        let (_, out_channels, out_h, out_w) = grad.dims4()?;
        if k == 1 && p == 0 {
            // One GEMM over every pixel of the batch: (O, B·OH·OW) · (B·OH·OW, C).
            let taken = if s > 1 { every_nth(&every_nth(x, 2, s, out_h)?, 3, s, out_w)? } else { x.clone() };
            let pixels = batch * out_h * out_w;
            let g = grad.transpose(0, 1)?.reshape((out_channels, pixels))?;
            let x = taken.transpose(0, 1)?.reshape((channels, pixels))?;
            return g.matmul(&x.t()?)?.reshape((out_channels, channels, 1, 1));
        }
        // The batch as the contracted "channels": xᵀ (C, B, H, W) convolved by gᵀ (O, B, OH, OW)
        // dilated by the stride gives (C, O, k + rest, k + rest); the first k x k taps are w's.
        let grad_t = x.transpose(0, 1)?.contiguous()?.conv2d(&grad.transpose(0, 1)?.contiguous()?, p, 1, s, 1)?;
        grad_t.narrow(2, 0, k)?.narrow(3, 0, k)?.transpose(0, 1)?.contiguous()
    }
}

/// (B, C, H, W) -> (B, C, (H-1)s+1, (W-1)s+1) with s - 1 zeros between neighbours.
fn dilate(t: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = t.dims4()?;
    let spread = t.reshape((b, c, h, 1, w, 1))?.pad_with_zeros(3, 0, s - 1)?.pad_with_zeros(5, 0, s - 1)?;
    spread.reshape((b, c, h * s, w * s))?.narrow(2, 0, (h - 1) * s + 1)?.narrow(3, 0, (w - 1) * s + 1)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;

    /// The same shapes as conv.rs's test, in f64 on the CPU, against the f32 CPU kernel (im2col,
    /// GEMM, col2im: a different construction of the same gradients).
    #[test]
    fn matches_the_cpu_kernel_forward_and_backward() {
        let mut random = crate::test_tensors::NormalTensors::new(4);
        for (batch, channels, out, kernel, stride, padding, height, width) in crate::conv::cpu::tests::SHAPES {
            let case = format!("b{batch} c{channels} o{out} k{kernel} s{stride} p{padding} {height}x{width}");
            let x = random.draw(0.0, 1.0, (batch, channels, height, width));
            let w = random.draw(0.0, 1.0, (out, channels, kernel, kernel));
            let (x32, w32) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let (x64, w64) =
                (Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap(), Var::from_tensor(&w.to_dtype(DType::F64).unwrap()).unwrap());
            let reference = crate::conv::conv2d(x32.as_tensor(), w32.as_tensor(), None, stride, padding).unwrap();
            let ours = conv2d(x64.as_tensor(), w64.as_tensor(), stride, padding).unwrap();
            let upstream = random.draw(0.0, 1.0, reference.dims());
            let reference_grads = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let our_grads = (&ours * upstream.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, expected, actual) in [
                ("forward", reference.clone(), ours.clone()),
                ("input gradient", reference_grads.get(x32.as_tensor()).unwrap().clone(), our_grads.get(x64.as_tensor()).unwrap().clone()),
                ("weight gradient", reference_grads.get(w32.as_tensor()).unwrap().clone(), our_grads.get(w64.as_tensor()).unwrap().clone()),
            ] {
                assert_eq!(expected.dims(), actual.dims(), "{name} {case}");
                let actual = actual.to_dtype(DType::F32).unwrap();
                let scale = expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
                let difference =
                    (&expected - &actual).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(difference < 1e-5 * scale, "{name} {case}: {difference}");
            }
        }
    }

    #[test]
    fn an_input_without_gradient_gets_none() {
        let mut random = crate::test_tensors::NormalTensors::new(5);
        let x = random.draw(0.0, 1.0, (2, 3, 9, 9)).to_dtype(DType::F64).unwrap();
        let w = Var::from_tensor(&random.draw(0.0, 1.0, (4, 3, 3, 3)).to_dtype(DType::F64).unwrap()).unwrap();
        let grads = conv2d(&x, w.as_tensor(), 2, 1).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
    }
}
