//! Depthwise convolution (groups = channels) of f32 on the CPU as one direct kernel with its
//! backward pass; the same ops' CUDA halves are `cuda.rs`'s.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::Geometry;
use crate::activation::{Epilogue, FusedActivation};
use crate::parallel_output::{Start, build_in_chunks};

/// The CPU kernels' walk over the taps.
impl Geometry {
    /// Output columns ox whose input column ox * stride + kx - padding lies in 0..width.
    fn valid_columns(&self, kx: usize) -> std::ops::Range<usize> {
        let first = (self.padding.saturating_sub(kx)).div_ceil(self.stride);
        let end = ((self.width + self.padding).saturating_sub(kx)).div_ceil(self.stride).min(self.out_width());
        first..end.max(first)
    }

    fn valid_rows(&self, ky: usize) -> std::ops::Range<usize> {
        let first = (self.padding.saturating_sub(ky)).div_ceil(self.stride);
        let end = ((self.height + self.padding).saturating_sub(ky)).div_ceil(self.stride).min(self.out_height());
        first..end.max(first)
    }

    /// Calls `visit(tap, oy, iy, columns)` for every kernel tap (ky * k + kx) and every output
    /// row it reaches inside the input, `columns` the output columns ox whose input column
    /// ix = columns.first_ix + (ox - columns.outputs.start) * stride lies inside. The three
    /// kernels share this walk.
    fn for_each_row(&self, mut visit: impl FnMut(usize, usize, usize, &Columns)) {
        for ky in 0..self.kernel {
            for kx in 0..self.kernel {
                let outputs = self.valid_columns(kx);
                if outputs.is_empty() {
                    // A map narrower than the kernel: this column of taps sees only padding.
                    continue;
                }
                // ix = ox * stride + kx - padding, non-negative from the first valid column on.
                let columns = Columns { first_ix: outputs.start * self.stride + kx - self.padding, outputs, stride: self.stride };
                for oy in self.valid_rows(ky) {
                    let iy = oy * self.stride + ky - self.padding;
                    visit(ky * self.kernel + kx, oy, iy, &columns);
                }
            }
        }
    }
}

/// Where one kernel tap meets one row: output columns `outputs`, input columns from `first_ix`
/// every `stride`. Stride 1 (ConvNeXt's 7x7, every MobileNet block but the downsampling ones)
/// gives two contiguous runs, which the loops below turn into vector code.
struct Columns {
    outputs: std::ops::Range<usize>,
    first_ix: usize,
    stride: usize,
}

impl Columns {
    fn input_run(&self) -> std::ops::Range<usize> {
        self.first_ix..self.first_ix + self.outputs.len()
    }

    /// out[ox] += w * input[ix] over the run. Always inlined: a call per tap and row (a 7x7 map's
    /// rows are 7 values) cost the forward pass a third more once its caller grew an epilogue
    /// (`ForwardThen`), where the compiler stopped inlining it.
    #[inline(always)]
    fn add_scaled_input(&self, out_row: &mut [f32], w: f32, in_row: &[f32]) {
        if self.stride == 1 {
            for (o, i) in out_row[self.outputs.clone()].iter_mut().zip(&in_row[self.input_run()]) {
                *o += w * i;
            }
        } else {
            for (o, ix) in out_row[self.outputs.clone()].iter_mut().zip((self.first_ix..).step_by(self.stride)) {
                *o += w * in_row[ix];
            }
        }
    }

    /// input[ix] += w * out[ox] over the run (the input gradient's scatter).
    fn add_scaled_output(&self, in_row: &mut [f32], w: f32, out_row: &[f32]) {
        if self.stride == 1 {
            let run = self.input_run();
            for (i, o) in in_row[run].iter_mut().zip(&out_row[self.outputs.clone()]) {
                *i += w * o;
            }
        } else {
            for (o, ix) in out_row[self.outputs.clone()].iter().zip((self.first_ix..).step_by(self.stride)) {
                in_row[ix] += w * o;
            }
        }
    }

    /// sum of out[ox] * input[ix] over the run, in eight partial sums so that it vectorises.
    fn dot(&self, out_row: &[f32], in_row: &[f32]) -> f32 {
        if self.stride != 1 {
            return out_row[self.outputs.clone()].iter().zip((self.first_ix..).step_by(self.stride)).map(|(o, ix)| o * in_row[ix]).sum();
        }
        let (outs, ins) = (&out_row[self.outputs.clone()], &in_row[self.input_run()]);
        let mut lanes = [0f32; 8];
        let (out_chunks, in_chunks) = (outs.chunks_exact(8), ins.chunks_exact(8));
        let tail: f32 = out_chunks.remainder().iter().zip(in_chunks.remainder()).map(|(o, i)| o * i).sum();
        for (o, i) in out_chunks.zip(in_chunks) {
            for lane in 0..8 {
                lanes[lane] += o[lane] * i[lane];
            }
        }
        lanes.iter().sum::<f32>() + tail
    }
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::kernel_input::f32_slice(storage, layout, "depthwise conv", what)
}

/// Forward: out[b, c] = sum over (ky, kx) of w[c, ky, kx] * shifted in[b, c].
struct Forward {
    stride: usize,
    padding: usize,
}

impl Forward {
    /// The batch, the channels and the geometry of input `l1` and weight `l2`.
    fn geometry(&self, l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, Geometry)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let kernel = l2.shape().dims4()?.2;
        Ok((batch, channels, Geometry { height, width, kernel, stride: self.stride, padding: self.padding }))
    }

    /// The output, with `then(plane index, plane)` run on each (image, channel) plane in the task
    /// that has just summed it, still in its cache.
    fn run_then(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        then: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, g) = self.geometry(l1, l2)?;
        let (height, width, kernel) = (g.height, g.width, g.kernel);
        let input = f32_slice(s1, l1, "the input")?;
        let weight = f32_slice(s2, l2, "the weight")?;
        let (oh, ow) = (g.out_height(), g.out_width());
        // Each plane zeroed and summed by one task, in its cache (`parallel_output`).
        let out = build_in_chunks(batch * channels * oh * ow, oh * ow, Start::Zeros, |plane, out| {
            let c = plane % channels;
            let input = &input[plane * height * width..(plane + 1) * height * width];
            let taps = &weight[c * kernel * kernel..(c + 1) * kernel * kernel];
            g.for_each_row(|tap, oy, iy, columns| {
                columns.add_scaled_input(&mut out[oy * ow..(oy + 1) * ow], taps[tap], &input[iy * width..(iy + 1) * width]);
            });
            then(plane, out);
        })?;
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, oh, ow))))
    }
}

/// `activation(depthwise(x, w) + bias per channel + residual)` with no backward pass (its inputs
/// are outside any graph): the bias, the residual and the activation on each plane in the task
/// that has just summed it, where the channel-bias op and the activations were passes of their
/// own over the whole output, each into an output of its own. Their operations in their order,
/// so their bits.
struct ForwardThen {
    forward: Forward,
    epilogue: Epilogue,
}

impl CustomOp3 for ForwardThen {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-bias-then"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, g) = self.forward.geometry(l1, l2)?;
        let bias = f32_slice(s3, l3, "the bias")?;
        if bias.len() != channels {
            candle_core::bail!("depthwise conv: {} biases for {channels} channels", bias.len());
        }
        let plane_len = g.out_height() * g.out_width();
        self.epilogue.with_residual("depthwise conv", batch * channels * plane_len, |residual| {
            self.forward.run_then(s1, l1, s2, l2, |plane, out| {
                let b = bias[plane % channels];
                out.iter_mut().for_each(|v| *v += b);
                self.epilogue.apply(residual, plane * plane_len, out);
            })
        })
    }
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run_then(s1, l1, s2, l2, |_, _| {})
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (_, _, g) = self.geometry(l1, l2)?;
        super::cuda::forward(&g, (s1, l1), (s2, l2))
    }

    fn bwd(&self, input: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, height, width) = input.dims4()?;
        let grad_input =
            grad.apply_op2_no_bwd(&weight.contiguous()?, &GradInput { stride: self.stride, padding: self.padding, height, width })?;
        let grad_weight = input
            .contiguous()?
            .apply_op2_no_bwd(&grad, &GradWeight { stride: self.stride, padding: self.padding, kernel: weight.dim(2)? })?;
        Ok((Some(grad_input), Some(grad_weight)))
    }
}

/// d loss / d input: each output gradient scattered back through the weights.
struct GradInput {
    stride: usize,
    padding: usize,
    height: usize,
    width: usize,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, oh, ow) = l1.shape().dims4()?;
        let kernel = l2.shape().dims4()?.2;
        let g = Geometry { height: self.height, width: self.width, kernel, stride: self.stride, padding: self.padding };
        let grad = f32_slice(s1, l1, "the gradient")?;
        let weight = f32_slice(s2, l2, "the weight")?;
        let (height, width) = (self.height, self.width);
        let out = build_in_chunks(batch * channels * height * width, height * width, Start::Zeros, |plane, out| {
            let c = plane % channels;
            let grad = &grad[plane * oh * ow..(plane + 1) * oh * ow];
            let taps = &weight[c * kernel * kernel..(c + 1) * kernel * kernel];
            g.for_each_row(|tap, oy, iy, columns| {
                columns.add_scaled_output(&mut out[iy * width..(iy + 1) * width], taps[tap], &grad[oy * ow..(oy + 1) * ow]);
            });
        })?;
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, height, width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let kernel = l2.shape().dims4()?.2;
        let g = Geometry { height: self.height, width: self.width, kernel, stride: self.stride, padding: self.padding };
        super::cuda::grad_input(&g, (s1, l1), (s2, l2))
    }
}

/// d loss / d weight: per channel, the correlation of the input with the output gradient.
struct GradWeight {
    stride: usize,
    padding: usize,
    kernel: usize,
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let (_, _, oh, ow) = l2.shape().dims4()?;
        let kernel = self.kernel;
        let g = Geometry { height, width, kernel, stride: self.stride, padding: self.padding };
        let input = f32_slice(s1, l1, "the input")?;
        let grad = f32_slice(s2, l2, "the gradient")?;
        let mut out = vec![0f32; channels * kernel * kernel];
        out.par_chunks_mut(kernel * kernel).enumerate().for_each(|(c, out)| {
            for b in 0..batch {
                let plane = b * channels + c;
                let input = &input[plane * height * width..(plane + 1) * height * width];
                let grad = &grad[plane * oh * ow..(plane + 1) * oh * ow];
                g.for_each_row(|tap, oy, iy, columns| {
                    out[tap] += columns.dot(&grad[oy * ow..(oy + 1) * ow], &input[iy * width..(iy + 1) * width]);
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((channels, 1, kernel, kernel))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (_, _, height, width) = l1.shape().dims4()?;
        let g = Geometry { height, width, kernel: self.kernel, stride: self.stride, padding: self.padding };
        super::cuda::grad_weight(&g, (s1, l1), (s2, l2))
    }
}

/// A depthwise convolution of f32 tensors x (B, C, H, W) and weight (C, 1, K, K), both on the
/// CPU or both on one CUDA device.
pub(super) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, Forward { stride, padding })
}

/// [`ForwardThen`]'s convolution, for f32 CPU tensors outside any graph.
pub(super) fn depthwise_conv2d_then(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (stride, padding): (usize, usize),
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> candle_core::Result<Tensor> {
    let op = ForwardThen { forward: Forward { stride, padding }, epilogue: Epilogue::new(residual, activation)? };
    x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::test_tensors::max_difference;

    /// The same convolution from shifted views (pad, narrow, multiply, add), every op of which
    /// candle differentiates; stride 2 keeps every other row and column of the stride-1 result.
    fn shifted_sum(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Tensor {
        let (_, channels, height, width) = x.dims4().unwrap();
        let kernel = w.dim(2).unwrap();
        let padded = x.pad_with_zeros(2, padding, padding).unwrap().pad_with_zeros(3, padding, padding).unwrap();
        let (full_h, full_w) = (height + 2 * padding - kernel + 1, width + 2 * padding - kernel + 1);
        let mut out = Tensor::zeros((x.dim(0).unwrap(), channels, full_h, full_w), x.dtype(), x.device()).unwrap();
        for ky in 0..kernel {
            for kx in 0..kernel {
                let tap = w.narrow(2, ky, 1).unwrap().narrow(3, kx, 1).unwrap().reshape((1, channels, 1, 1)).unwrap();
                let view = padded.narrow(2, ky, full_h).unwrap().narrow(3, kx, full_w).unwrap();
                out = (out + view.broadcast_mul(&tap).unwrap()).unwrap();
            }
        }
        if stride == 1 {
            return out;
        }
        let mut y = out;
        for axis in [2, 3] {
            let size = y.dim(axis).unwrap();
            let even = size + size % 2;
            y = y.pad_with_zeros(axis, 0, even - size).unwrap();
            let mut dims = y.dims().to_vec();
            dims[axis] = even / 2;
            dims.insert(axis + 1, 2);
            y = y.reshape(dims).unwrap().narrow(axis + 1, 0, 1).unwrap().squeeze(axis + 1).unwrap();
        }
        y
    }

    /// The bias, residual and activation on each plane give the bits of the separate depthwise,
    /// channel-bias, add and activation ops, for each activation with and without a residual at
    /// strides 1 and 2 and kernels 3 and 5; an input that tracks a gradient takes the separate
    /// ops and gets its gradient; a bias or residual of the wrong size is an error.
    #[test]
    fn the_eval_epilogue_equals_the_separate_ops_to_the_bit() {
        let mut random = crate::test_tensors::NormalTensors::new(29);
        let activations = [FusedActivation::Identity, FusedActivation::Relu, FusedActivation::Relu6, FusedActivation::Silu];
        for (kernel, stride, height, width) in [(3, 1, 9, 7), (3, 2, 9, 8), (5, 2, 11, 10), (5, 1, 6, 6)] {
            let (x, w) = (random.draw(0.5, 2.0, (2, 3, height, width)), random.draw(0.0, 1.0, (3, 1, kernel, kernel)));
            let bias = random.draw(1.0, 2.0, 3);
            let padding = kernel / 2;
            let separate = crate::channel_bias::add_channel_bias(&depthwise_conv2d(&x, &w, stride, padding).unwrap(), &bias).unwrap();
            let residual = random.draw(0.0, 3.0, separate.dims());
            for activation in activations {
                for r in [None, Some(&residual)] {
                    let name = format!("k{kernel} s{stride} {height}x{width} {activation:?} residual {}", r.is_some());
                    // The op itself: `depthwise_conv2d_eval` sends SiLU to the separate ops.
                    let ours = depthwise_conv2d_then(&x, &w, &bias, (stride, padding), r, activation).unwrap();
                    let theirs = activation.after_residual(separate.clone(), r).unwrap();
                    assert!(crate::test_tensors::bits(&ours) == crate::test_tensors::bits(&theirs), "{name}");
                }
            }
        }
        let (x, w) = (Var::from_tensor(&random.draw(0.0, 1.0, (2, 3, 6, 6))).unwrap(), random.draw(0.0, 1.0, (3, 1, 3, 3)));
        let bias = random.draw(0.0, 1.0, 3);
        let y = crate::depthwise_conv2d_eval(&x, &w, &bias, 1, 1, None, FusedActivation::Silu).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_some_and(|g| g.dims() == [2, 3, 6, 6]), "a tracked input gets its gradient");
        let x = x.detach();
        let error = crate::depthwise_conv2d_eval(&x, &w, &bias.narrow(0, 0, 2).unwrap(), 1, 1, None, FusedActivation::Relu).unwrap_err();
        assert!(error.to_string().contains("2 biases for 3 channels"), "{error}");
        let wrong = random.draw(0.0, 1.0, (2, 3, 6, 5));
        let error = crate::depthwise_conv2d_eval(&x, &w, &bias, 1, 1, Some(&wrong), FusedActivation::Relu).unwrap_err();
        assert!(error.to_string().contains("a residual of 180 values for an output of 216"), "{error}");
    }

    /// At each size, "same" padding (kernel / 2); at stride 1 also none, kernel - 1 and kernel
    /// (an output row that every tap reaches only through padding).
    #[test]
    fn matches_a_shifted_sum_and_its_gradients_at_odd_and_even_sizes() {
        let mut random = crate::test_tensors::NormalTensors::new(3);
        let sizes = [(3, 2, 9, 8), (5, 2, 11, 10), (3, 2, 7, 7), (3, 1, 9, 7), (5, 1, 6, 6), (7, 1, 13, 21), (7, 1, 5, 4), (3, 1, 40, 35)];
        let paddings = |kernel: usize, stride: usize| if stride == 1 { vec![kernel / 2, 0, kernel - 1, kernel] } else { vec![kernel / 2] };
        for (kernel, stride, height, width, padding) in
            sizes.into_iter().flat_map(|(k, s, h, w)| paddings(k, s).into_iter().map(move |p| (k, s, h, w, p)))
        {
            if height + 2 * padding < kernel {
                continue;
            }
            let x = Var::from_tensor(&random.draw(0.0, 1.0, (2, 3, height, width))).unwrap();
            let w = Var::from_tensor(&random.draw(0.0, 1.0, (3, 1, kernel, kernel))).unwrap();
            let ours = depthwise_conv2d(x.as_tensor(), w.as_tensor(), stride, padding).unwrap();
            let reference = shifted_sum(x.as_tensor(), w.as_tensor(), stride, padding);
            assert_eq!(ours.dims(), reference.dims(), "k{kernel} s{stride} p{padding} {height}x{width}");
            assert!(max_difference(&ours, &reference) < 1e-5, "forward k{kernel} s{stride} p{padding}");
            let upstream = random.draw(0.0, 1.0, ours.dims());
            let our_grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let reference_grads = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("input", &x), ("weight", &w)] {
                let reference = reference_grads.get(var.as_tensor()).unwrap();
                let difference = max_difference(our_grads.get(var.as_tensor()).unwrap(), reference);
                // Relative to the largest value: a weight's gradient sums up to 2,500 products here.
                let largest = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
                assert!(difference < 1e-5 * largest, "{name} gradient k{kernel} s{stride} p{padding} {height}x{width}: {difference}");
            }
        }
    }
}
