//! A per-channel bias on a (B, C, H, W) map, and the bias's gradient: each channel's sum of the
//! upstream gradient over the images and positions.
//!
//! candle's `broadcast_add` differentiates the bias with its reduction over dimensions (0, 2, 3),
//! which computes a destination index per value with two divisions per reduced dimension: on the
//! Intel VM that reduction was 6% of a ConvNeXt-T training step (a bias on every depthwise
//! convolution). Here each channel's sum runs in one task over its planes, adding in the same
//! order in f32 as candle's reduction (image by image, position by position, from zero), so the
//! gradient keeps candle's bits; the convolution's own bias gradient (`conv/cpu.rs`) uses it too.
//! On a GPU (`cuda.rs`) the sum is one kernel and each channel's gradient an f64 sum, one block
//! per plane; every convolution's bias takes this op there.

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(feature = "cuda")]
pub(crate) use cuda::channel_totals;

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{BackwardReads, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernel_input::{f32_slice, is_f32_cpu};
use crate::parallel_output::{Start, build_in_chunks};

/// Values per task, at least: small planes (7x7) go several to a task.
const TASK_VALUES: usize = 4096;

/// x (B, C, H, W) + bias (C), differentiable in both.
pub fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let channels = x.dims4()?.1;
    if bias.dims() != [channels] {
        candle_core::bail!("channel bias: a bias of shape {:?} for an input of shape {:?}, ({channels}) expected", bias.dims(), x.dims());
    }
    let on_cpu = is_f32_cpu(x) && is_f32_cpu(bias);
    let on_gpu = cuda_takes(x) && cuda_takes(bias) && x.device().same_device(bias.device());
    if (on_cpu || on_gpu) && x.elem_count() > 0 {
        return x.contiguous()?.apply_op2(&bias.contiguous()?, ChannelBias);
    }
    x.broadcast_add(&bias.reshape((1, channels, 1, 1))?)
}

/// f32 on a CUDA device, unless `MEDXFER_CUDA_CHANNEL_BIAS=candle` (`cuda.rs`).
fn cuda_takes(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    return cuda::applies(x);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        false
    }
}

/// Each channel's sum of `grad` (B, C, H, W) over images and positions, (C): candle's
/// `grad.sum((0, 2, 3))`, to the bit, in one task per channel for f32 on the CPU; f64 sums on a
/// GPU (`cuda.rs`).
pub(crate) fn channel_sums(grad: &Tensor) -> Result<Tensor> {
    let (batch, channels, height, width) = grad.dims4()?;
    #[cfg(feature = "cuda")]
    if cuda::applies(grad) && grad.elem_count() > 0 {
        return grad.contiguous()?.apply_op1_no_bwd(&cuda::ChannelSums);
    }
    if !is_f32_cpu(grad) || grad.elem_count() == 0 {
        return grad.sum((0, 2, 3));
    }
    let grad = grad.contiguous()?;
    let (storage, layout) = grad.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else { candle_core::bail!("channel sums: the gradient is not on the CPU") };
    let values = f32_slice(storage, layout, "channel sums", "the gradient")?;
    let plane = height * width;
    let sums: Vec<f32> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let mut sum = 0f32;
            for image in 0..batch {
                for &v in &values[(image * channels + c) * plane..][..plane] {
                    sum += v;
                }
            }
            sum
        })
        .collect();
    Tensor::from_vec(sums, channels, grad.device())
}

/// out = x + bias[c], plane by plane.
struct ChannelBias;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "channel-bias"
    }

    fn backward_reads(&self) -> BackwardReads {
        // The gradients are the upstream gradient and its sums: no value of the op's.
        BackwardReads { inputs: [false, false, false], output: false }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, channels, height, width) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, self.name(), "the input")?;
        let bias = f32_slice(s2, l2, self.name(), "the bias")?;
        if bias.len() != channels {
            candle_core::bail!("{}: {} biases for {channels} channels", self.name(), bias.len());
        }
        let plane = (height * width).max(1);
        let planes_per_task = TASK_VALUES.div_ceil(plane);
        let out = build_in_chunks(x.len(), planes_per_task * plane, Start::Values { values: x, rows: None }, |index, chunk| {
            for (i, values) in chunk.chunks_mut(plane).enumerate() {
                let b = bias[(index * planes_per_task + i) % channels];
                values.iter_mut().for_each(|v| *v += b);
            }
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda::forward((s1, l1), (s2, l2), self.name())
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One image: candle's broadcast reduces over the trailing (H, W) alone, with its
        // vectorised sum of each contiguous plane (another order); keep its bits there too.
        let bias_grad = if grad.dim(0)? == 1 { grad.sum_keepdim((2, 3))?.flatten_all()? } else { channel_sums(grad)? };
        Ok((Some(grad.clone()), Some(bias_grad)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::test_tensors::{NormalTensors, bits};

    /// The sum, the bias and both gradients are candle's `broadcast_add` to the bit, at 7x7
    /// planes (several to a task), 56x56, 1x1 and one image.
    #[test]
    fn the_bias_and_its_gradient_are_candles_bits() {
        let mut random = NormalTensors::new(61);
        for shape in [(2usize, 96usize, 7usize, 7usize), (3, 5, 56, 56), (4, 17, 1, 1), (1, 3, 9, 5)] {
            let (x, bias, upstream) = (random.draw(0.0, 1.0, shape), random.draw(0.0, 1.0, shape.1), random.draw(0.0, 1.0, shape));
            let run = |add: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
                let (xv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&bias).unwrap());
                let y = add(xv.as_tensor(), bv.as_tensor());
                let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                [y, grads.get(xv.as_tensor()).unwrap().clone(), grads.get(bv.as_tensor()).unwrap().clone()].map(|t| bits(&t))
            };
            let ours = run(&|x, b| add_channel_bias(x, b).unwrap());
            let candle = run(&|x, b| x.broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap()).unwrap());
            for (what, (a, b)) in ["sum", "input gradient", "bias gradient"].iter().zip(ours.iter().zip(&candle)) {
                assert!(a == b, "{shape:?}: the {what} differs from candle's");
            }
            assert_eq!(bits(&channel_sums(&upstream).unwrap()), bits(&upstream.sum((0, 2, 3)).unwrap()), "{shape:?}: channel sums");
        }
    }

    /// By hand: two images of two 1x2 channels.
    #[test]
    fn a_hand_computed_bias() {
        let x =
            Var::from_tensor(&Tensor::new(&[[[[1f32, 2.0]], [[3.0, 4.0]]], [[[5.0, 6.0]], [[7.0, 8.0]]]], &Device::Cpu).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::new(&[10f32, 100.0], &Device::Cpu).unwrap()).unwrap();
        let y = add_channel_bias(x.as_tensor(), bias.as_tensor()).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [11.0, 12.0, 103.0, 104.0, 15.0, 16.0, 107.0, 108.0]);
        let grads = (&y * &x.as_tensor().detach()).unwrap().sum_all().unwrap().backward().unwrap();
        // Channel 0: 1 + 2 + 5 + 6; channel 1: 3 + 4 + 7 + 8.
        assert_eq!(grads.get(bias.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [14.0, 22.0]);
    }

    #[test]
    fn a_bias_of_the_wrong_shape_is_an_error() {
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let error = add_channel_bias(&x, &Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
        assert!(error.contains("[4]") && error.contains("(3) expected"), "{error}");
    }
}
