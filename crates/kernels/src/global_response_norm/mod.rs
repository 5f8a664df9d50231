//! ConvNeXt v2's Global Response Normalization over tokens (B, N, C) (timm's
//! `GlobalResponseNorm`, channels last): y = x + bias + weight · x · n, with n[b, c] = s[b, c] /
//! (mean over c of s[b, c] + eps) and s[b, c] the L2 norm of x[b, :, c] over the tokens.
//!
//! Written with candle's ops it is nine of them, three of which reduce over the tokens or
//! broadcast back, and the norms' sum over dimension 1 takes candle's strided reduction (an
//! index computed with divisions per value). f32 on the CPU takes one op each way here: a task
//! per image computes its norms in f64 and writes its output; the backward pass recomputes them
//! and gives dx, the weight's and the bias's gradients from one pass over dy·x per image (the
//! per-image sums added in image order). Where a channel's norm is zero its gradient through the
//! norm is zero, as PyTorch's `torch.norm` takes it (candle's `sqrt` would give NaN). On a GPU
//! the same formulas run as a few kernels each way (`cuda.rs`). Other dtypes take candle's ops.

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp3, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernel_input::{f32_slice, is_f32_cpu};
use crate::parallel_output::{Start, build_in_chunks};

/// timm's epsilon in the mean's denominator.
const EPS: f64 = 1e-6;

/// Global Response Normalization of tokens x (B, N, C) with per-channel `weight` and `bias` (C).
pub fn global_response_norm(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let channels = x.dims3()?.2;
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [channels] {
            candle_core::bail!("global response norm: a {name} of shape {:?} for tokens of shape {:?}", t.dims(), x.dims());
        }
    }
    let on_cpu = is_f32_cpu(x) && is_f32_cpu(weight) && is_f32_cpu(bias);
    let on_gpu = [x, weight, bias].iter().all(|t| cuda_takes(t) && t.device().same_device(x.device()));
    if (on_cpu || on_gpu) && x.elem_count() > 0 {
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, GlobalResponseNorm);
    }
    let spatial = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    let normalised = spatial.broadcast_div(&(spatial.mean_keepdim(D::Minus1)? + EPS)?)?;
    let scaled = x.broadcast_mul(&normalised)?.broadcast_mul(weight)?;
    x + scaled.broadcast_add(bias)?
}

/// f32 on a CUDA device, unless `MEDXFER_CUDA_GRN=candle` (`cuda.rs`).
fn cuda_takes(t: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    return cuda::applies(t);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = t;
        false
    }
}

/// One image's norms s[c] (f64) and their scale n[c] = s[c] / (mean s + eps), from its (N, C)
/// tokens; and the denominator mean s + eps.
fn norms(tokens: &[f32], channels: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let mut squares = vec![0f64; channels];
    for row in tokens.chunks_exact(channels) {
        squares.iter_mut().zip(row).for_each(|(sum, &v)| *sum += f64::from(v) * f64::from(v));
    }
    let norms: Vec<f64> = squares.into_iter().map(f64::sqrt).collect();
    let denominator = norms.iter().sum::<f64>() / channels as f64 + EPS;
    let scales = norms.iter().map(|s| s / denominator).collect();
    (norms, scales, denominator)
}

/// y = x + ((x · n) · weight + bias), each f32 operation rounded on its own as candle's ops
/// round them.
struct GlobalResponseNorm;

impl CustomOp3 for GlobalResponseNorm {
    fn name(&self) -> &'static str {
        "global-response-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, tokens, channels) = l1.shape().dims3()?;
        let x = f32_slice(s1, l1, self.name(), "the tokens")?;
        let weight = f32_slice(s2, l2, self.name(), "the weight")?;
        let bias = f32_slice(s3, l3, self.name(), "the bias")?;
        if weight.len() != channels || bias.len() != channels {
            candle_core::bail!("{}: {} weights and {} biases for {channels} channels", self.name(), weight.len(), bias.len());
        }
        let out = build_in_chunks(x.len(), tokens * channels, Start::Zeros, |image, out| {
            let x = &x[image * tokens * channels..][..tokens * channels];
            let (_, scales, _) = norms(x, channels);
            let scales: Vec<f32> = scales.into_iter().map(|n| n as f32).collect();
            for (out_row, row) in out.chunks_exact_mut(channels).zip(x.chunks_exact(channels)) {
                for (c, (y, &v)) in out_row.iter_mut().zip(row).enumerate() {
                    *y = v + (v * scales[c] * weight[c] + bias[c]);
                }
            }
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
    ) -> Result<(CudaStorage, Shape)> {
        cuda::forward((s1, l1), (s2, l2), (s3, l3), self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &grad.contiguous()?, &Gradients)?;
        let (n, channels) = (x.elem_count(), weight.elem_count());
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, channels)?.reshape(weight.shape())?;
        let db = all.narrow(0, n + channels, channels)?.reshape(bias.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// dx (B·N·C values), then the weight's and the bias's gradients (C each), in one buffer, from
/// x, the weight and dy.
struct Gradients;

impl CustomOp3 for Gradients {
    fn name(&self) -> &'static str {
        "global-response-norm-gradients"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, tokens, channels) = l1.shape().dims3()?;
        let x = f32_slice(s1, l1, self.name(), "the tokens")?;
        let weight = f32_slice(s2, l2, self.name(), "the weight")?;
        let dy = f32_slice(s3, l3, self.name(), "the gradient")?;
        if weight.len() != channels || dy.len() != x.len() {
            candle_core::bail!("{}: {} weights and {} gradients for tokens of shape {:?}", self.name(), weight.len(), dy.len(), l1.shape());
        }
        let image_len = tokens * channels;
        // Per image: dx, and its parts of the weight's and the bias's gradients.
        let per_image: Vec<(Vec<f32>, Vec<f64>, Vec<f64>)> = (0..batch)
            .into_par_iter()
            .map(|image| {
                let (x, dy) = (&x[image * image_len..][..image_len], &dy[image * image_len..][..image_len]);
                let (norms, scales, denominator) = norms(x, channels);
                // A[c] = sum over tokens of dy x; the bias's part: sum of dy.
                let (mut products, mut sums) = (vec![0f64; channels], vec![0f64; channels]);
                for (row, d_row) in x.chunks_exact(channels).zip(dy.chunks_exact(channels)) {
                    for c in 0..channels {
                        products[c] += f64::from(d_row[c]) * f64::from(row[c]);
                        sums[c] += f64::from(d_row[c]);
                    }
                }
                // dL/dn[c] = weight[c] A[c]; dL/ds[c] = dn[c] / d - sum over c' of dn[c'] s[c'] / (C d²).
                let d_scales: Vec<f64> = products.iter().zip(weight).map(|(a, &w)| a * f64::from(w)).collect();
                let coupling =
                    d_scales.iter().zip(&norms).map(|(dn, s)| dn * s).sum::<f64>() / (channels as f64 * denominator * denominator);
                // The gradient through the norm, per unit of x: dL/ds[c] / s[c], zero for a zero norm.
                let through_norm: Vec<f64> =
                    d_scales.iter().zip(&norms).map(|(dn, &s)| if s > 0.0 { (dn / denominator - coupling) / s } else { 0.0 }).collect();
                let direct: Vec<f64> = scales.iter().zip(weight).map(|(n, &w)| 1.0 + n * f64::from(w)).collect();
                let mut dx = vec![0f32; image_len];
                for ((dx_row, row), d_row) in dx.chunks_exact_mut(channels).zip(x.chunks_exact(channels)).zip(dy.chunks_exact(channels)) {
                    for c in 0..channels {
                        dx_row[c] = (f64::from(d_row[c]) * direct[c] + through_norm[c] * f64::from(row[c])) as f32;
                    }
                }
                let weight_part = products.iter().zip(&scales).map(|(a, n)| a * n).collect();
                (dx, weight_part, sums)
            })
            .collect();
        let mut out = Vec::with_capacity(x.len() + 2 * channels);
        let (mut d_weight, mut d_bias) = (vec![0f64; channels], vec![0f64; channels]);
        for (dx, weight_part, bias_part) in &per_image {
            out.extend_from_slice(dx);
            d_weight.iter_mut().zip(weight_part).for_each(|(sum, v)| *sum += v);
            d_bias.iter_mut().zip(bias_part).for_each(|(sum, v)| *sum += v);
        }
        out.extend(d_weight.iter().chain(&d_bias).map(|&v| v as f32));
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
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
    ) -> Result<(CudaStorage, Shape)> {
        cuda::gradients((s1, l1), (s2, l2), (s3, l3), self.name())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::test_tensors::NormalTensors;

    fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
        f64::from(crate::test_tensors::max_difference(&a.to_dtype(DType::F64).unwrap(), &b.to_dtype(DType::F64).unwrap()))
    }

    /// The op and its three gradients against candle's ops in f64 (the composite), relative to
    /// each one's largest value: several images, one token, one channel.
    #[test]
    fn the_op_and_its_gradients_match_candles_ops_in_f64() {
        let mut random = NormalTensors::new(71);
        for (batch, tokens, channels) in [(2usize, 49usize, 12usize), (3, 1, 5), (1, 16, 1), (2, 9, 40)] {
            let case = format!("{:?}", (batch, tokens, channels));
            let x = random.draw(0.0, 1.0, (batch, tokens, channels));
            let (weight, bias) = (random.draw(0.3, 0.5, channels), random.draw(0.0, 0.5, channels));
            let upstream = random.draw(0.0, 1.0, (batch, tokens, channels));
            let run = |dtype: DType| {
                let var = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
                let (xv, wv, bv) = (var(&x), var(&weight), var(&bias));
                let y = global_response_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor()).unwrap();
                let grads = (&y * upstream.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let gradient = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                [y.clone(), gradient(&xv), gradient(&wv), gradient(&bv)]
            };
            let (ours, truth) = (run(DType::F32), run(DType::F64));
            for (what, (a, b)) in ["output", "input gradient", "weight gradient", "bias gradient"].iter().zip(ours.iter().zip(&truth)) {
                let largest = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1.0);
                let difference = max_difference(a, b);
                assert!(difference < 2e-6 * largest, "{case}: {what} off by {difference} (largest {largest})");
            }
        }
    }

    /// A channel that is zero everywhere has a zero norm: its output is the bias and every
    /// gradient stays finite (through the norm it is zero, as PyTorch's norm takes it).
    #[test]
    fn a_zero_channel_keeps_its_gradients_finite() {
        let mut random = NormalTensors::new(72);
        let x = random.draw(0.0, 1.0, (2, 6, 3));
        let zero_channel = Tensor::from_vec(vec![1f32, 1.0, 0.0], 3, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&x.broadcast_mul(&zero_channel).unwrap()).unwrap();
        let (weight, bias) = (Var::from_tensor(&random.draw(0.3, 0.5, 3)).unwrap(), Var::from_tensor(&random.draw(0.0, 0.5, 3)).unwrap());
        let y = global_response_norm(x.as_tensor(), weight.as_tensor(), bias.as_tensor()).unwrap();
        let third = y.narrow(2, 2, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = bias.as_tensor().to_vec1::<f32>().unwrap()[2];
        assert!(third.iter().all(|&v| v == b), "{third:?} for a bias of {b}");
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&x, &weight, &bias] {
            let values = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
        }
    }

    #[test]
    fn parameters_of_the_wrong_size_are_errors() {
        let x = Tensor::zeros((2, 4, 3), DType::F32, &Device::Cpu).unwrap();
        let (three, four) = (Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(), Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap());
        let error = global_response_norm(&x, &four, &three).unwrap_err().to_string();
        assert!(error.contains("weight of shape [4]"), "{error}");
        assert!(global_response_norm(&x, &three, &four).is_err());
    }
}
