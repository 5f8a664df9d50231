//! Train-mode BatchNorm on the CPU as one fused operation with its own backward pass,
//! optionally followed by a residual add and a ReLU, ReLU6 or SiLU in the same pass; and eval
//! mode's, the same elementwise pass with the running estimates (no backward pass: its inputs are
//! outside any graph).
//!
//! Written with candle's elementwise ops, a train-mode BatchNorm keeps about eight copies of
//! its input alive for the backward pass (an f64 copy for the statistics, the centred values,
//! their squares, the scaled and shifted results): MobileNetV2-1.0 at batch 32 ran out of 24 GB.
//! Here the forward pass computes the per-channel mean and variance in f64 and writes
//! y = act((x - mean) / sqrt(var + eps) * gamma + beta [+ residual]) in one pass (per-channel
//! constants in f64, the elementwise arithmetic in f32 as PyTorch's kernels); the backward
//! pass takes the upstream gradient through the activation (dz), then recomputes x-hat from x
//! and the stored statistics (PyTorch's formula):
//!
//! ```text
//! d beta     = sum dz
//! d gamma    = sum dz * xhat
//! dx         = gamma * invstd / N * (N dz - sum dz - xhat * sum dz * xhat)
//! d residual = dz
//! ```
//!
//! Fusing matters beyond the passes it saves: candle's backward pass gives every tensor in the
//! graph a zero-filled gradient and adds into it, two single-threaded passes per node, so a
//! ResNet block as one BN+ReLU and one BN+add+ReLU node instead of five nodes does less than
//! half that work. Sums are per channel over batch and space, in f64, over a fixed number of
//! partial sums (vectorised, and the same for any thread count).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::activation::{FusedActivation, clamp_backward, silu_slope};
use crate::elementwise;
use crate::parallel_output::{Start, build_in_chunks};

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::kernel_input::f32_slice(storage, layout, "batch norm", what)
}

/// Channel `c`'s H x W plane of every image.
fn planes<'a>(data: &'a [f32], channels: usize, c: usize, plane: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    data.chunks_exact(channels * plane).map(move |image| &image[c * plane..(c + 1) * plane])
}

/// Independent partial sums per reduction: enough to fill two AVX-512 f64 registers.
const LANES: usize = 16;

/// Adds `term(values[i], other[i])` for every i onto `lanes`, lane i % LANES.
fn accumulate(lanes: &mut [f64; LANES], values: &[f32], other: &[f32], term: impl Fn(f64, f64) -> f64) {
    let (head, tail) = values.split_at(values.len() / LANES * LANES);
    let (other_head, other_tail) = other.split_at(head.len());
    for (chunk, other_chunk) in head.chunks_exact(LANES).zip(other_head.chunks_exact(LANES)) {
        for lane in 0..LANES {
            lanes[lane] += term(f64::from(chunk[lane]), f64::from(other_chunk[lane]));
        }
    }
    for (lane, (&v, &o)) in tail.iter().zip(other_tail).enumerate() {
        lanes[lane] += term(f64::from(v), f64::from(o));
    }
}

fn total(lanes: &[f64; LANES]) -> f64 {
    lanes.iter().fold(0.0, |sum, &v| sum + v)
}

/// Per-channel mean and biased variance of x (B, C, H, W), in f64, as a (2, C) f64 tensor.
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "batch-norm-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, channels, height, width) = layout.shape().dims4()?;
        let (mut out, var) = channel_stats(f32_slice(storage, layout, "the input")?, channels, height * width);
        out.extend(var);
        Ok((CpuStorage::F64(out), Shape::from((2, channels))))
    }
}

/// Per-channel mean and biased variance, in f64, of x (B, C, H·W) laid out contiguously.
pub(crate) fn channel_stats(x: &[f32], channels: usize, plane: usize) -> (Vec<f64>, Vec<f64>) {
    let count = x.len() as f64 / channels as f64;
    let stats: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            // One pass over x (it comes from memory, not the cache: a second pass cost as much
            // as the first), on values shifted by one of them. The variance from the sums of
            // x − shift and its square loses about (shift − mean)² / var ulps of f64 to
            // cancellation, nothing for a sample of the channel itself.
            let shift = planes(x, channels, c, plane).next().and_then(|p| p.first()).map_or(0.0, |&v| f64::from(v));
            let (mut sums, mut squares) = ([0f64; LANES], [0f64; LANES]);
            planes(x, channels, c, plane).for_each(|p| {
                accumulate(&mut sums, p, p, |v, _| v - shift);
                accumulate(&mut squares, p, p, |v, _| (v - shift) * (v - shift));
            });
            let (sum, square) = (total(&sums), total(&squares));
            (shift + sum / count, ((square - sum * sum / count) / count).max(0.0))
        })
        .collect();
    stats.into_iter().unzip()
}

/// 1 / sqrt(var + eps) per channel.
pub(crate) fn inverse_std(var: &[f64], eps: f64) -> Vec<f64> {
    var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect()
}

/// y = act((x - mean) * invstd * gamma + beta [+ residual]) with the batch's statistics (held
/// by the op); gamma and beta come stacked as one (2, C) tensor.
pub(crate) struct Normalize {
    pub(crate) mean: Vec<f64>,
    pub(crate) invstd: Vec<f64>,
    pub(crate) activation: FusedActivation,
}

impl Normalize {
    pub(crate) fn run(
        &self,
        x: &[f32],
        layout: &Layout,
        affine: &[f32],
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, channels, height, width) = layout.shape().dims4()?;
        if affine.len() != 2 * channels || residual.is_some_and(|r| r.len() != x.len()) {
            candle_core::bail!("batch norm: parameters or residual do not fit an input of shape {:?}", layout.shape());
        }
        let (gamma, beta) = affine.split_at(channels);
        let plane = height * width;
        // Each plane zeroed by the task that writes it, in its cache: `vec![0f32; n]` was a
        // single-threaded memset over the whole output first (`parallel_output`).
        let y = build_in_chunks(x.len(), plane, Start::Zeros, |index, out| {
            let input = &x[index * plane..][..out.len()];
            let c = index % channels;
            // y = (x - mean) * scale + beta in f32 like PyTorch's kernel (constants from f64),
            // centred first so a large mean costs no precision; 16 lanes per instruction.
            let (mean, scale, shift) = self.constants(c, gamma, beta);
            for (o, &v) in out.iter_mut().zip(input) {
                *o = (v - mean) * scale + shift;
            }
            // Rounded to f32 before the residual add, as the separate operations would; then the
            // activation over the plane, still in the cache.
            self.activation.apply_in_place(out, residual.map(|residual| &residual[index * plane..][..out.len()]));
        })?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    /// Channel `c`'s f32 constants of the elementwise pass, (mean, scale, shift): one place, so
    /// that the backward pass's [`InputSlope`] recomputes the forward pass's values to the bit.
    fn constants(&self, c: usize, gamma: &[f32], beta: &[f32]) -> (f32, f32, f32) {
        (self.mean[c] as f32, (self.invstd[c] * f64::from(gamma[c])) as f32, beta[c])
    }

    /// Gradients of x, the stacked (gamma, beta) and, with `residual`, the residual's (dz: the
    /// upstream gradient through the activation).
    ///
    /// Without a residual the activation's mask or slope is recomputed from x (`InputSlope`)
    /// inside the two passes that read x anyway, instead of a pass of its own that reads the
    /// gradient and y (or, for SiLU, its input) and writes dz for the other two to read: five
    /// passes over the layer's size instead of eight (120 such layers in a DenseNet-121), and for
    /// SiLU no tensor kept between the BatchNorm and the activation. With a residual, dz is the
    /// residual's gradient, so it is written out.
    pub(crate) fn gradients(
        &self,
        x: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        grad: &Tensor,
        residual: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let x = x.contiguous()?;
        let affine_host = affine.to_vec2::<f32>()?;
        let (gamma, beta) = (&affine_host[0], &affine_host[1]);
        let (upstream, slope) = match (self.activation, residual) {
            (FusedActivation::Identity, _) => (grad.contiguous()?, None),
            (activation, false) => (grad.contiguous()?, InputSlope::new(self, gamma, beta, activation)),
            (FusedActivation::Silu, true) => {
                candle_core::bail!("batch norm: SiLU after a residual add is not fused (its backward pass would need the sum)")
            }
            (activation, true) => (clamp_backward(grad, y, activation.high().unwrap_or(f32::INFINITY))?, None),
        };
        // (2, C): sum dz and sum dz * xhat.
        let sums =
            x.apply_op2_no_bwd(&upstream, &GradSums { mean: self.mean.clone(), invstd: self.invstd.clone(), slope: slope.clone() })?;
        let sums_host = sums.to_vec2::<f64>()?;
        let (sum_dz, sum_dz_xhat) = (&sums_host[0], &sums_host[1]);
        let grad_x = x.apply_op2_no_bwd(
            &upstream,
            &GradInput {
                mean: self.mean.clone(),
                invstd: self.invstd.clone(),
                gamma: gamma.iter().map(|&g| f64::from(g)).collect(),
                sum_dy: sum_dz.clone(),
                sum_dy_xhat: sum_dz_xhat.clone(),
                slope,
            },
        )?;
        let grad_affine: Vec<f32> = sum_dz_xhat.iter().chain(sum_dz).map(|&v| v as f32).collect();
        let grad_affine = Tensor::from_vec(grad_affine, affine.shape(), x.device())?;
        Ok((grad_x, grad_affine, residual.then_some(upstream)))
    }
}

/// The activation's derivative at t = (x - mean) * scale + shift, the forward pass's f32 value
/// before the activation, recomputed from x: the same dz, to the bit, as the activation's own
/// backward pass gives from what it kept.
/// - A clamp keeps the upstream gradient where 0 < t < high: the mask its backward pass takes from
///   y, since y = min(max(t, 0), high) is in (0, high) exactly where t is, and a NaN t fails both.
/// - SiLU multiplies it by `silu_slope(t)`, what its backward pass computes from its input t.
#[derive(Debug, Clone)]
struct InputSlope {
    /// Per channel: (mean, scale, shift), [`Normalize::constants`].
    constants: Vec<(f32, f32, f32)>,
    kind: SlopeKind,
}

#[derive(Debug, Clone, Copy)]
enum SlopeKind {
    Clamp { high: f32 },
    Silu,
}

impl InputSlope {
    /// None for the identity, which passes the gradient as it is.
    fn new(normalize: &Normalize, gamma: &[f32], beta: &[f32], activation: FusedActivation) -> Option<Self> {
        let kind = match activation {
            FusedActivation::Identity => return None,
            FusedActivation::Silu => SlopeKind::Silu,
            FusedActivation::Relu | FusedActivation::Relu6 => SlopeKind::Clamp { high: activation.high()? },
        };
        Some(Self { constants: (0..normalize.mean.len()).map(|c| normalize.constants(c, gamma, beta)).collect(), kind })
    }

    /// dz for one plane of channel `c`: its input values `xp`, the upstream gradient `gp`.
    fn write_plane(&self, c: usize, xp: &[f32], gp: &[f32], out: &mut [f32]) {
        let constants = self.constants[c];
        match self.kind {
            SlopeKind::Clamp { high } => {
                out.iter_mut().zip(xp).zip(gp).for_each(|((o, &v), &g)| *o = masked(constants, high, v, g));
            }
            SlopeKind::Silu => elementwise::map2(out, xp, gp, |v, g| g * silu_slope(normalized(constants, v))),
        }
    }
}

/// t = (v - mean) * scale + shift, [`Normalize::run`]'s arithmetic.
#[inline(always)]
fn normalized((mean, scale, shift): (f32, f32, f32), v: f32) -> f32 {
    (v - mean) * scale + shift
}

/// The gradient `g` of an input value `v` where the clamp to (0, high) passes t, else 0.
#[inline(always)]
fn masked(constants: (f32, f32, f32), high: f32, v: f32, g: f32) -> f32 {
    let t = normalized(constants, v);
    // A bit mask instead of a branch, as the clamp's own backward pass (`ClampGrad`).
    let keep = u32::from(t > 0.0) & u32::from(t < high);
    f32::from_bits(g.to_bits() & keep.wrapping_neg())
}

impl CustomOp2 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::batch_norm(self.activation, false)
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(f32_slice(s1, l1, "the input")?, l1, f32_slice(s2, l2, "the weight and bias")?, None)
    }

    fn bwd(&self, x: &Tensor, affine: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_affine, _) = self.gradients(x, affine, res, grad, false)?;
        Ok((Some(grad_x), Some(grad_affine)))
    }
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm-train-residual"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::batch_norm(self.activation, true)
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
        let residual = f32_slice(s3, l3, "the residual")?;
        self.run(f32_slice(s1, l1, "the input")?, l1, f32_slice(s2, l2, "the weight and bias")?, Some(residual))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        _residual: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_affine, dz) = self.gradients(x, affine, res, grad, true)?;
        Ok((Some(grad_x), Some(grad_affine), dz))
    }
}

/// Eval mode: [`Normalize`]'s pass with the running mean and 1 / sqrt(running var + eps).
pub(super) fn batch_norm_eval(
    x: &Tensor,
    params: super::BatchNormParams<'_>,
    running: super::RunningStatistics<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> candle_core::Result<Tensor> {
    let wide = |t: &Tensor| t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>();
    let op = Normalize { mean: wide(running.mean)?, invstd: inverse_std(&wide(running.var)?, params.eps), activation };
    let affine = Tensor::cat(&[params.gamma, params.beta], 0)?;
    let x = x.contiguous()?;
    match residual {
        Some(residual) => x.apply_op3_no_bwd(&affine, &residual.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&affine, &op),
    }
}

/// Per channel: sum dz and sum dz * xhat, (2, C) f64, where dz is the upstream gradient, or that
/// gradient through the activation's `slope`.
struct GradSums {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    slope: Option<InputSlope>,
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
                let (mean, invstd) = (self.mean[c], self.invstd[c]);
                let (mut sum_dy, mut sum_dy_xhat) = ([0f64; LANES], [0f64; LANES]);
                // dz of one plane at a time, in the cache: the same values, in the same order, as
                // dz from a pass of its own.
                let mut dz = vec![0f32; if self.slope.is_some() { plane } else { 0 }];
                for (xp, gp) in planes(x, channels, c, plane).zip(planes(dy, channels, c, plane)) {
                    let gp = match &self.slope {
                        Some(slope) => {
                            slope.write_plane(c, xp, gp, &mut dz);
                            &dz[..]
                        }
                        None => gp,
                    };
                    accumulate(&mut sum_dy, gp, gp, |g, _| g);
                    accumulate(&mut sum_dy_xhat, xp, gp, |v, g| g * (v - mean) * invstd);
                }
                (total(&sum_dy), total(&sum_dy_xhat))
            })
            .collect();
        let mut out: Vec<f64> = sums.iter().map(|s| s.0).collect();
        out.extend(sums.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from((2, channels))))
    }
}

/// dx = gamma * invstd / N * (N dz - sum dz - xhat * sum dz xhat), dz as in [`GradSums`].
struct GradInput {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    gamma: Vec<f64>,
    sum_dy: Vec<f64>,
    sum_dy_xhat: Vec<f64>,
    slope: Option<InputSlope>,
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
        let dx = build_in_chunks(x.len(), plane, Start::Zeros, |index, out| {
            let (xp, gp) = (&x[index * plane..][..out.len()], &dy[index * plane..][..out.len()]);
            let c = index % channels;
            // dx = a dy - b - (x - mean) k, the per-channel constants in f64, the elementwise
            // part in f32 (as PyTorch's kernel) and centred first.
            let factor = self.gamma[c] * self.invstd[c] / count;
            let a = (factor * count) as f32;
            let b = (factor * self.sum_dy[c]) as f32;
            let k = (factor * self.invstd[c] * self.sum_dy_xhat[c]) as f32;
            let mean = self.mean[c] as f32;
            match self.slope.as_ref().map(|slope| (slope.constants[c], slope.kind)) {
                Some((constants, SlopeKind::Clamp { high })) => {
                    for ((o, &v), &g) in out.iter_mut().zip(xp).zip(gp) {
                        *o = a * masked(constants, high, v, g) - b - (v - mean) * k;
                    }
                }
                Some((constants, SlopeKind::Silu)) => {
                    elementwise::map2(out, xp, gp, |v, g| a * (g * silu_slope(normalized(constants, v))) - b - (v - mean) * k);
                }
                None => {
                    for ((o, &v), &g) in out.iter_mut().zip(xp).zip(gp) {
                        *o = a * g - b - (v - mean) * k;
                    }
                }
            }
        })?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Train-mode BatchNorm of f32 x (B, C, H, W) on the CPU, then `residual` added and
/// `activation` applied: returns the output and the batch's per-channel mean and biased
/// variance (f64) for the running-statistics update.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> candle_core::Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats)?.to_vec2::<f64>()?;
    let (mean, var) = (stats[0].clone(), stats[1].clone());
    let invstd = inverse_std(&var, eps);
    let affine = Tensor::stack(&[gamma, beta], 0)?;
    let op = Normalize { mean: mean.clone(), invstd, activation };
    let y = match residual {
        Some(residual) => x.apply_op3(&affine, &residual.contiguous()?, op)?,
        None => x.apply_op2(&affine, op)?,
    };
    Ok((y, mean, var))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

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

    /// The one-pass statistics against a two-pass f64 reference, on a channel whose mean is
    /// 10^5 spreads (a naive sum of squares would lose the variance entirely in f32, and half
    /// its digits in f64) and on an ordinary one.
    #[test]
    fn statistics_in_one_pass_keep_a_small_spread_around_a_large_mean() {
        let mut random = crate::test_tensors::NormalTensors::new(3);
        let x = Tensor::cat(&[(random.draw(0.0, 0.01, (4, 1, 9, 7)) + 1000.0).unwrap(), random.draw(-2.0, 3.0, (4, 1, 9, 7))], 1).unwrap();
        let stats = x.apply_op1_no_bwd(&ChannelStats).unwrap().to_vec2::<f64>().unwrap();
        for c in 0..2 {
            let values: Vec<f64> =
                x.narrow(1, c, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            assert!((stats[0][c] - mean).abs() <= 1e-12 * mean.abs(), "channel {c} mean {} vs {mean}", stats[0][c]);
            assert!((stats[1][c] - var).abs() <= 1e-9 * var, "channel {c} variance {} vs {var}", stats[1][c]);
        }
    }

    /// Without a residual the backward pass takes the activation's mask from x; it must give the
    /// bits of the mask taken from y by the clamp's own backward pass (`ClampGrad`), followed by
    /// the unmasked BatchNorm gradients. Channels built so that some values land exactly on
    /// the kinks: x equal to the channel's mean (0, the values being symmetric) with beta 0
    /// gives t = 0, with beta 6 gives t = 6.
    #[test]
    fn the_mask_from_the_input_equals_the_mask_from_the_output_to_the_bit() {
        let mut random = crate::test_tensors::NormalTensors::new(5);
        let (batch, channels, height, width) = (2, 4, 5, 6);
        let half: Vec<f32> = random.draw(0.0, 2.0, batch * channels * height * width / 2).to_vec1().unwrap();
        // Each plane is pairs (s, -s), every third pair (the first included) zeros: each
        // channel's mean is exactly 0.
        let values: Vec<f32> = (0..batch * channels * height * width)
            .map(|i| {
                let pair = i / 2;
                let s = if pair % 3 == 0 { 0.0 } else { half[pair] };
                if i % 2 == 0 { s } else { -s }
            })
            .collect();
        let x = Tensor::from_vec(values, (batch, channels, height, width), &Device::Cpu).unwrap();
        let gamma = Tensor::new(&[1.5f32, 2.0, 0.7, 3.0], &Device::Cpu).unwrap();
        let beta = Tensor::new(&[0f32, 6.0, 0.0, 6.0], &Device::Cpu).unwrap();
        let upstream = random.draw(0.0, 1.0, (batch, channels, height, width));
        for activation in [FusedActivation::Relu, FusedActivation::Relu6] {
            let (y, mean, var) = batch_norm_train(&x, &gamma, &beta, 1e-5, None, activation).unwrap();
            assert!(mean.iter().all(|&m| m == 0.0), "{mean:?}");
            let y_values: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let high = activation.high().unwrap();
            assert!(y_values.contains(&0.0) && (high.is_infinite() || y_values.contains(&high)));
            let affine = Tensor::stack(&[&gamma, &beta], 0).unwrap();
            let normalize = |activation| Normalize { mean: mean.clone(), invstd: inverse_std(&var, 1e-5), activation };
            let (grad_x, grad_affine, dz) = normalize(activation).gradients(&x, &affine, &y, &upstream, false).unwrap();
            assert!(dz.is_none());
            let masked = clamp_backward(&upstream, &y, high).unwrap();
            let (expected_x, expected_affine, _) = normalize(FusedActivation::Identity).gradients(&x, &affine, &y, &masked, false).unwrap();
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(&grad_x), bits(&expected_x), "{activation:?}: the input's gradient");
            assert_eq!(bits(&grad_affine), bits(&expected_affine), "{activation:?}: gamma's and beta's gradients");
        }
    }

    /// SiLU fused into the BatchNorm gives the bits of the BatchNorm followed by the SiLU op
    /// (`silu.rs`) and their two backward passes: the output, and the gradients of x, gamma and
    /// beta, where the fused backward pass recomputes SiLU's input from x. Values reach both
    /// tails of the sigmoid (t from about -15 to 15) and t = 0.
    #[test]
    fn silu_fused_equals_the_batch_norm_then_the_silu_op_to_the_bit() {
        let mut random = crate::test_tensors::NormalTensors::new(6);
        for (batch, channels, height, width) in [(2, 3, 5, 4), (4, 2, 1, 1), (3, 5, 9, 7)] {
            let shape = (batch, channels, height, width);
            let x = Var::from_tensor(&(random.draw(0.0, 2.0, shape) + 0.7).unwrap()).unwrap();
            let gamma = Var::from_tensor(&random.draw(0.0, 5.0, channels)).unwrap();
            let beta = Var::from_tensor(&random.draw(0.0, 1.0, channels)).unwrap();
            let upstream = random.draw(0.0, 1.0, shape);
            let run = |fused: bool| {
                let y = if fused {
                    batch_norm_train(&x, &gamma, &beta, 1e-5, None, FusedActivation::Silu).unwrap().0
                } else {
                    let (t, _, _) = batch_norm_train(&x, &gamma, &beta, 1e-5, None, FusedActivation::Identity).unwrap();
                    crate::activation::silu(&t).unwrap()
                };
                let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                let mut results = vec![crate::test_tensors::bits(&y)];
                results.extend([&x, &gamma, &beta].map(|v| crate::test_tensors::bits(grads.get(v.as_tensor()).unwrap())));
                results
            };
            let (fused, separate) = (run(true), run(false));
            for (what, (ours, theirs)) in
                ["output", "input gradient", "gamma gradient", "beta gradient"].iter().zip(fused.iter().zip(&separate))
            {
                assert!(ours == theirs, "{what} at {shape:?}: the fused SiLU differs from the separate ops");
            }
        }
    }

    /// Every fused variant (activation x residual) against the composite in f64: output and
    /// the gradients of x, gamma, beta and the residual. (SiLU with a residual is never this op:
    /// `batch_norm_train` in `mod.rs` splits it, and its tests cover that.)
    #[test]
    fn matches_the_composite_normalisation_and_its_gradients() {
        let mut random = crate::test_tensors::NormalTensors::new(1);
        let activations = [FusedActivation::Identity, FusedActivation::Relu, FusedActivation::Relu6, FusedActivation::Silu];
        for (batch, channels, height, width) in [(2, 3, 5, 4), (4, 2, 1, 1), (1, 5, 7, 3), (3, 4, 6, 6)] {
            for (activation, with_residual) in activations.into_iter().flat_map(|a| [(a, false), (a, true)]) {
                if activation == FusedActivation::Silu && with_residual {
                    continue;
                }
                let case = format!("({batch}, {channels}, {height}, {width}) {activation:?} residual {with_residual}");
                let shape = (batch, channels, height, width);
                let x = Var::from_tensor(&(random.draw(0.0, 2.0, shape) + 0.7).unwrap()).unwrap();
                // y = 3 xhat + 1.5 or so: outputs below 0 and above 6 for both of ReLU6's kinks.
                let gamma = Var::from_tensor(&random.draw(3.0, 0.3, channels)).unwrap();
                let beta = Var::from_tensor(&random.draw(1.5, 0.3, channels)).unwrap();
                let residual = Var::from_tensor(&random.draw(0.0, 1.0, shape)).unwrap();
                let upstream = random.draw(0.0, 1.0, shape);
                let (y, mean, var) =
                    batch_norm_train(&x, &gamma, &beta, 1e-5, with_residual.then_some(residual.as_tensor()), activation).unwrap();
                let ours = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                let wide = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
                let (x64, gamma64, beta64, residual64) = (wide(&x), wide(&gamma), wide(&beta), wide(&residual));
                let mut reference = composite(&x64, &gamma64, &beta64, 1e-5);
                if with_residual {
                    reference = (reference + residual64.as_tensor()).unwrap();
                }
                reference = match activation {
                    FusedActivation::Identity => reference,
                    FusedActivation::Relu => reference.relu().unwrap(),
                    FusedActivation::Relu6 => reference.clamp(0f64, 6f64).unwrap(),
                    FusedActivation::Silu => reference.silu().unwrap(),
                };
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
                    assert!(d < 1e-5 * (1.0 + b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()), "{what} {case}: {d}");
                };
                close(&y, &reference, "output");
                close(ours.get(&x).unwrap(), theirs.get(&x64).unwrap(), "input gradient");
                close(ours.get(&gamma).unwrap(), theirs.get(&gamma64).unwrap(), "weight gradient");
                close(ours.get(&beta).unwrap(), theirs.get(&beta64).unwrap(), "bias gradient");
                if with_residual {
                    close(ours.get(&residual).unwrap(), theirs.get(&residual64).unwrap(), "residual gradient");
                } else {
                    assert!(ours.get(&residual).is_none(), "{case}");
                }
                if activation == FusedActivation::Relu6 {
                    let clipped = y.ge(6f32).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(clipped > 0.0 || y.elem_count() < 40, "no output reached 6: {case}");
                }
                let expected_mean = x64.mean_keepdim((0, 2, 3)).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                assert!(mean.iter().zip(&expected_mean).all(|(a, b)| (a - b).abs() < 1e-9), "{case}");
                assert!(var.iter().all(|&v| v > 0.0));
            }
        }
    }
}
