//! Train-mode BatchNorm on the CPU as one fused operation with its own backward pass.
//!
//! Written with candle's elementwise ops, a train-mode BatchNorm keeps about eight copies of
//! its input alive for the backward pass (an f64 copy for the statistics, the centred values,
//! their squares, the scaled and shifted results): MobileNetV2-1.0 at batch 32 ran out of 24 GB.
//! Here the forward pass computes the per-channel mean and variance in f64 and writes
//! y = (x - mean) / sqrt(var + eps) * gamma + beta in one pass; the backward pass recomputes
//! x-hat from x and the stored statistics (PyTorch's formula):
//!
//! ```text
//! d beta  = sum dy
//! d gamma = sum dy * xhat
//! dx      = gamma * invstd / N * (N dy - sum dy - xhat * sum dy * xhat)
//! ```
//!
//! Sums are per channel over batch and space, in f64. Other devices keep the composite version.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::kernel_input::f32_slice(storage, layout, "batch norm", what)
}

/// Calls `visit(b, plane)` for channel `c`'s H x W plane of every image.
fn planes<'a>(data: &'a [f32], channels: usize, c: usize, plane: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    data.chunks_exact(channels * plane).map(move |image| &image[c * plane..(c + 1) * plane])
}

/// Per-channel mean and biased variance of x (B, C, H, W), in f64, as a (2, C) f64 tensor.
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "batch-norm-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = layout.shape().dims4()?;
        let x = f32_slice(storage, layout, "the input")?;
        let plane = height * width;
        let count = (batch * plane) as f64;
        let stats: Vec<(f64, f64)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let mean = planes(x, channels, c, plane).flat_map(|p| p.iter()).map(|&v| f64::from(v)).sum::<f64>() / count;
                let var = planes(x, channels, c, plane).flat_map(|p| p.iter()).map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / count;
                (mean, var)
            })
            .collect();
        let mut out: Vec<f64> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from((2, channels))))
    }
}

/// y = (x - mean) * invstd * gamma + beta with the batch's statistics (held by the op).
struct Normalize {
    mean: Vec<f64>,
    invstd: Vec<f64>,
}

impl Normalize {
    fn channel(&self, c: usize, gamma: &[f32], beta: &[f32]) -> (f64, f64) {
        // y = x * scale + shift.
        let scale = self.invstd[c] * f64::from(gamma[c]);
        (scale, f64::from(beta[c]) - self.mean[c] * scale)
    }
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm-train"
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
        let (_, channels, height, width) = l1.shape().dims4()?;
        let (x, gamma, beta) = (f32_slice(s1, l1, "the input")?, f32_slice(s2, l2, "the weight")?, f32_slice(s3, l3, "the bias")?);
        let plane = height * width;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(index, (out, input))| {
            let (scale, shift) = self.channel(index % channels, gamma, beta);
            for (o, &v) in out.iter_mut().zip(input) {
                *o = (f64::from(v) * scale + shift) as f32;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let channels = x.dim(1)?;
        // (2, C): sum dy and sum dy * xhat.
        let sums = x.apply_op2_no_bwd(&grad, &GradSums { mean: self.mean.clone(), invstd: self.invstd.clone() })?;
        let sums_host = sums.to_vec2::<f64>()?;
        let (sum_dy, sum_dy_xhat) = (&sums_host[0], &sums_host[1]);
        let gamma_host = gamma.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let grad_x = x.apply_op2_no_bwd(
            &grad,
            &GradInput {
                mean: self.mean.clone(),
                invstd: self.invstd.clone(),
                gamma: gamma_host,
                sum_dy: sum_dy.clone(),
                sum_dy_xhat: sum_dy_xhat.clone(),
            },
        )?;
        let to_param = |values: &[f64]| Tensor::from_vec(values.iter().map(|&v| v as f32).collect::<Vec<f32>>(), channels, x.device());
        Ok((Some(grad_x), Some(to_param(sum_dy_xhat)?), Some(to_param(sum_dy)?)))
    }
}

/// Per channel: sum dy and sum dy * xhat, (2, C) f64.
struct GradSums {
    mean: Vec<f64>,
    invstd: Vec<f64>,
}

impl CustomOp2 for GradSums {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, channels, height, width) = l1.shape().dims4()?;
        let (x, dy) = (f32_slice(s1, l1, "the input")?, f32_slice(s2, l2, "the gradient")?);
        let plane = height * width;
        let sums: Vec<(f64, f64)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                for (xp, gp) in planes(x, channels, c, plane).zip(planes(dy, channels, c, plane)) {
                    for (&v, &g) in xp.iter().zip(gp) {
                        let g = f64::from(g);
                        sum_dy += g;
                        sum_dy_xhat += g * (f64::from(v) - self.mean[c]) * self.invstd[c];
                    }
                }
                (sum_dy, sum_dy_xhat)
            })
            .collect();
        let mut out: Vec<f64> = sums.iter().map(|s| s.0).collect();
        out.extend(sums.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from((2, channels))))
    }
}

/// dx = gamma * invstd / N * (N dy - sum dy - xhat * sum dy xhat).
struct GradInput {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    gamma: Vec<f64>,
    sum_dy: Vec<f64>,
    sum_dy_xhat: Vec<f64>,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let (x, dy) = (f32_slice(s1, l1, "the input")?, f32_slice(s2, l2, "the gradient")?);
        let plane = height * width;
        let count = (batch * plane) as f64;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(plane).zip(x.par_chunks(plane).zip(dy.par_chunks(plane))).enumerate().for_each(|(index, (out, (xp, gp)))| {
            let c = index % channels;
            let (mean, invstd) = (self.mean[c], self.invstd[c]);
            let factor = self.gamma[c] * invstd / count;
            let (mean_dy, mean_dy_xhat) = (self.sum_dy[c], self.sum_dy_xhat[c]);
            for ((o, &v), &g) in out.iter_mut().zip(xp).zip(gp) {
                let xhat = (f64::from(v) - mean) * invstd;
                *o = (factor * (count * f64::from(g) - mean_dy - xhat * mean_dy_xhat)) as f32;
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Train-mode BatchNorm of contiguous f32 x (B, C, H, W) on the CPU: returns y and the batch's
/// per-channel mean and biased variance (f64) for the running-statistics update.
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats)?.to_vec2::<f64>()?;
    let (mean, var) = (stats[0].clone(), stats[1].clone());
    let invstd = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, Normalize { mean: mean.clone(), invstd })?;
    Ok((y, mean, var))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;

    /// The same normalisation from candle's differentiable elementwise ops, in f64.
    fn composite(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Tensor {
        let shape = (1, x.dim(1).unwrap(), 1, 1);
        let mean = x.mean_keepdim((0, 2, 3)).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
        let normalized = centred.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
        normalized.broadcast_mul(&gamma.reshape(shape).unwrap()).unwrap().broadcast_add(&beta.reshape(shape).unwrap()).unwrap()
    }

    #[test]
    fn matches_the_composite_normalisation_and_its_gradients() {
        let mut random = crate::test_tensors::NormalTensors::new(1);
        for (batch, channels, height, width) in [(2, 3, 5, 4), (4, 2, 1, 1), (1, 5, 7, 3)] {
            let x = Var::from_tensor(&(random.draw(0.0, 2.0, (batch, channels, height, width)) + 0.7).unwrap()).unwrap();
            let gamma = Var::from_tensor(&random.draw(1.0, 0.3, channels)).unwrap();
            let beta = Var::from_tensor(&random.draw(0.0, 0.3, channels)).unwrap();
            let upstream = random.draw(0.0, 1.0, (batch, channels, height, width));
            let (y, mean, var) = batch_norm_train(&x, &gamma, &beta, 1e-5).unwrap();
            let ours = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let wide = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
            let (x64, gamma64, beta64) = (wide(&x), wide(&gamma), wide(&beta));
            let reference = composite(&x64, &gamma64, &beta64, 1e-5);
            let theirs = (&reference * upstream.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let d = (a.to_dtype(DType::F64).unwrap() - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!(d < 1e-5, "{what} ({batch}, {channels}, {height}, {width}): {d}");
            };
            close(&y, &reference, "output");
            close(ours.get(&x).unwrap(), theirs.get(&x64).unwrap(), "input gradient");
            close(ours.get(&gamma).unwrap(), theirs.get(&gamma64).unwrap(), "weight gradient");
            close(ours.get(&beta).unwrap(), theirs.get(&beta64).unwrap(), "bias gradient");
            let expected_mean = x64.mean_keepdim((0, 2, 3)).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(mean.iter().zip(&expected_mean).all(|(a, b)| (a - b).abs() < 1e-9));
            assert!(var.iter().all(|&v| v > 0.0));
        }
    }
}
