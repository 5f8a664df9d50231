//! Max pooling of f32 on the CPU as one pass forward and one pass backward, with PyTorch's
//! semantics.
//!
//! As in PyTorch, each output is the
//! maximum of its window (padding is -inf, so it is never chosen; a NaN wins), and the backward
//! pass sends each output's gradient to one input, the one PyTorch's index would name: the
//! window's first maximum in row-major order, or its last NaN —
//! `max_pool2d_with_indices_backward`. Planes run in parallel; the backward pass finds the
//! positions again from the input and the output instead of keeping an index tensor alive.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use super::MaxPool;
use crate::kernel_input::f32_slice;
use crate::parallel_output::{Start, build_in_chunks};

impl MaxPool {
    /// Input positions a window starting at output `o` covers along one axis, clipped.
    fn window(&self, o: usize, len: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride).saturating_sub(self.padding);
        let end = (o * self.stride + self.kernel).saturating_sub(self.padding).min(len);
        start..end
    }

    /// The maximum of every window of one (height, width) plane, NaN if the window holds one.
    /// Selects instead of branches: after a ReLU, windows full of tied zeros make every branch
    /// on the comparison a coin toss.
    fn pool_plane(&self, plane: &[f32], height: usize, width: usize, out: &mut [f32]) {
        let out_w = self.out_len(width);
        for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
            let rows = self.window(oy, height);
            for (ox, o) in out_row.iter_mut().enumerate() {
                let columns = self.window(ox, width);
                let mut best = f32::NEG_INFINITY;
                for iy in rows.clone() {
                    for &value in &plane[iy * width + columns.start..iy * width + columns.end] {
                        best = if value > best || value.is_nan() { value } else { best };
                    }
                }
                *o = best;
            }
        }
    }

    /// Adds each output's gradient at the input PyTorch's kernel picks: the first maximum of
    /// the window, or its last NaN (its loop takes `val > max || isnan(val)`), chosen with
    /// selects instead of branches.
    fn scatter_plane(&self, plane: &[f32], pooled: &[f32], upstream: &[f32], height: usize, width: usize, dx: &mut [f32]) {
        let out_w = self.out_len(width);
        for (oy, (pooled_row, upstream_row)) in pooled.chunks_exact(out_w).zip(upstream.chunks_exact(out_w)).enumerate() {
            let rows = self.window(oy, height);
            for (ox, (&best, &gradient)) in pooled_row.iter().zip(upstream_row).enumerate() {
                let columns = self.window(ox, width);
                let nan = best.is_nan();
                let mut chosen = usize::MAX;
                for iy in rows.clone() {
                    for ix in columns.clone() {
                        let index = iy * width + ix;
                        let value = plane[index];
                        let take = if nan { value.is_nan() } else { value == best && chosen == usize::MAX };
                        chosen = if take { index } else { chosen };
                    }
                }
                if let Some(target) = dx.get_mut(chosen) {
                    *target += gradient;
                }
            }
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = layout.shape().dims4()?;
        let x = f32_slice(storage, layout, "max pool", "the input")?;
        let (out_h, out_w) = (self.out_len(height), self.out_len(width));
        // Each plane zeroed by the task that pools into it (`parallel_output`).
        let y = build_in_chunks(batch * channels * out_h * out_w, out_h * out_w, Start::Zeros, |index, out| {
            self.pool_plane(&x[index * height * width..][..height * width], height, width, out);
        })?;
        Ok((CpuStorage::F32(y), Shape::from((batch, channels, out_h, out_w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        super::cuda::forward(self, storage, layout)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op3_no_bwd(&res.contiguous()?, &grad.contiguous()?, &MaxPoolGrad(*self))?))
    }
}

/// dx from (x, the pooled output, dy): each output's gradient added at its window's first
/// maximum.
struct MaxPoolGrad(MaxPool);

impl CustomOp3 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-grad"
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
        let (_, _, height, width) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, "max pool backward", "the input")?;
        let pooled = f32_slice(s2, l2, "max pool backward", "the output")?;
        let dy = f32_slice(s3, l3, "max pool backward", "the gradient")?;
        let out_plane = self.0.out_len(height) * self.0.out_len(width);
        if x.len() / (height * width) * out_plane != dy.len() || dy.len() != pooled.len() {
            candle_core::bail!("max pool backward: {} gradients for an input of shape {:?}", dy.len(), l1.shape());
        }
        // Each plane zeroed by the task that scatters into it (`parallel_output`).
        let plane = height * width;
        let dx = build_in_chunks(x.len(), plane, Start::Zeros, |index, out| {
            let (pooled, upstream) = (&pooled[index * out_plane..][..out_plane], &dy[index * out_plane..][..out_plane]);
            self.0.scatter_plane(&x[index * plane..][..plane], pooled, upstream, height, width, out);
        })?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        super::cuda::backward(&self.0, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// Max pooling of an f32 CPU (or CUDA, `cuda.rs`) tensor (B, C, H, W) with a square window.
pub(super) fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool { kernel, stride, padding })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Var};

    use super::*;
    use crate::pool::max_pool_3x3_s2_p1;

    /// PyTorch 2.15's `max_pool2d(x, 3, 2, 1)` and its backward on a plane full of ties, printed
    /// once by hand: the gradient goes to the first maximum of each window only.
    #[test]
    fn matches_pytorch_on_ties() {
        let x = Var::from_vec(vec![0f32, 0., 1., 1., 0., 2., 2., 0., 3., 0., 0., 3., 0., 0., 0., 0.], (1, 1, 4, 4), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2_p1(&x).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [2., 2., 3., 3.]);
        let upstream = Tensor::from_vec(vec![1f32, 10., 100., 1000.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, [0., 0., 0., 0., 0., 11., 0., 0., 100., 0., 0., 1000., 0., 0., 0., 0.]);
    }

    /// PyTorch 2.15 on NaN and -inf, printed once by hand: a NaN wins the window and takes the
    /// gradient, the last NaN where there are several; a window of -inf gives -inf and its
    /// gradient goes to its first input.
    #[test]
    fn matches_pytorch_on_nan_and_infinity() {
        let (nan, inf) = (f32::NAN, f32::NEG_INFINITY);
        let x =
            Var::from_vec(vec![inf, inf, 1., nan, inf, inf, nan, 0., 3., 0., 0., 3., 0., 0., 0., 0.], (1, 1, 4, 4), &Device::Cpu).unwrap();
        let y = max_pool_3x3_s2_p1(&x).unwrap();
        let values = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values[0] == inf && values[1].is_nan() && values[2] == 3. && values[3].is_nan(), "{values:?}");
        let upstream = Tensor::from_vec(vec![1f32, 10., 100., 1000.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        // Through the op's backward directly: a loss such as sum(y * upstream) would be NaN.
        let dx = MaxPool { kernel: 3, stride: 2, padding: 1 }.bwd(x.as_tensor(), &y, &upstream).unwrap().unwrap();
        assert_eq!(
            dx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1., 0., 0., 0., 0., 0., 1010., 0., 100., 0., 0., 0., 0., 0., 0., 0.]
        );
    }

    /// Against a direct reading of the definition (every window scanned from its padded corner)
    /// on inputs with many ties, odd and even sizes, several images and channels.
    #[test]
    fn matches_the_definition_forward_and_backward() {
        let mut random = crate::test_tensors::NormalTensors::new(11);
        for (batch, channels, height, width) in [(2, 3, 7, 6), (1, 2, 8, 9), (3, 1, 1, 2), (2, 2, 112, 112)] {
            // Rounded and clipped at 0 like a ReLU's output: many tied windows.
            let x = random.draw(0.0, 2.0, (batch, channels, height, width)).round().unwrap().relu().unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let y = max_pool_3x3_s2_p1(&x).unwrap();
            let (out_h, out_w) = ((height - 1) / 2 + 1, (width - 1) / 2 + 1);
            assert_eq!(y.dims(), [batch, channels, out_h, out_w]);
            let upstream = random.draw(0.0, 1.0, y.dims());
            let dx = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().flatten_all().unwrap();
            let (values, ys, gs, dx) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                upstream.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                dx.to_vec1::<f32>().unwrap(),
            );
            let mut expected_dx = vec![0f32; values.len()];
            for plane in 0..batch * channels {
                for oy in 0..out_h {
                    for ox in 0..out_w {
                        let mut best: Option<(f32, usize)> = None;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= height as isize || ix >= width as isize {
                                    continue;
                                }
                                let index = plane * height * width + iy as usize * width + ix as usize;
                                if best.is_none_or(|(value, _)| values[index] > value) {
                                    best = Some((values[index], index));
                                }
                            }
                        }
                        let (value, index) = best.unwrap();
                        let o = (plane * out_h + oy) * out_w + ox;
                        assert_eq!(ys[o], value);
                        expected_dx[index] += gs[o];
                    }
                }
            }
            assert_eq!(dx, expected_dx, "{batch}x{channels}x{height}x{width}");
        }
    }
}
