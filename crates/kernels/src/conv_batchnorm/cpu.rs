//! A dense convolution and the train-mode BatchNorm (+ ReLU, ReLU6 or SiLU) after it as one graph
//! node, for f32 on the CPU.
//!
//! The arithmetic is exactly that of the two separate CPU kernels (`conv/cpu.rs`,
//! `batchnorm/cpu.rs`), so the
//! outputs and every gradient are bit-identical to them; what changes is the graph. candle's
//! backward pass gives every tensor of the graph a zero-filled gradient and adds into it, two
//! single-threaded passes over the convolution's output when that output is a node of its own
//! (25.7 M floats for ResNet-18's stem at batch 32). Here the convolution's output is kept by
//! the op for its backward pass instead: the BatchNorm's input gradient goes straight into the
//! convolution's backward.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor};

use crate::activation::FusedActivation;
use crate::batchnorm::cpu::{Normalize, channel_stats, inverse_std};
use crate::conv::cpu::Forward;

/// What the forward pass leaves for the backward pass and the running-statistics update.
struct Saved {
    /// The convolution's output: a tensor outside the graph.
    conv_out: Tensor,
    mean: Vec<f64>,
    var: Vec<f64>,
}

type SharedSaved = Arc<Mutex<Option<Saved>>>;

fn lock(saved: &SharedSaved) -> candle_core::Result<MutexGuard<'_, Option<Saved>>> {
    saved.lock().map_err(|_| candle_core::Error::Msg("conv + batch norm: a thread panicked holding the op's state".into()))
}

/// Clones of the saved state's parts, or an error when the forward pass has not run.
fn read<T>(saved: &SharedSaved, part: impl FnOnce(&Saved) -> T) -> candle_core::Result<T> {
    lock(saved)?.as_ref().map(part).ok_or_else(|| candle_core::Error::Msg("conv + batch norm: its forward pass has not run".into()))
}

struct ConvBatchNorm {
    conv: Forward,
    eps: f64,
    activation: FusedActivation,
    saved: SharedSaved,
}

impl ConvBatchNorm {
    fn normalize(&self, mean: Vec<f64>, var: &[f64]) -> Normalize {
        Normalize { mean, invstd: inverse_std(var, self.eps), activation: self.activation }
    }
}

impl CustomOp3 for ConvBatchNorm {
    fn name(&self) -> &'static str {
        "conv2d-batch-norm-train"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        // The input and the weight for the convolution's gradients, gamma for the BatchNorm's.
        // Not the output: without a residual the activation's derivative comes from the recomputed
        // convolution's output (`Normalize::gradients`).
        candle_core::BackwardReads { output: false, ..candle_core::BackwardReads::ALL }
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
        let (conv_out, shape) = self.conv.run(s1, l1, s2, l2, None)?;
        let CpuStorage::F32(conv_out) = conv_out else { candle_core::bail!("conv + batch norm: the convolution gave no f32 output") };
        let (_, channels, height, width) = shape.dims4()?;
        let (mean, var) = channel_stats(&conv_out, channels, height * width);
        let affine = crate::kernel_input::f32_slice(s3, l3, "conv + batch norm", "the weight and bias")?;
        let y = self.normalize(mean.clone(), &var).run(&conv_out, &Layout::contiguous(shape.clone()), affine, None)?;
        let conv_out = Tensor::from_vec(conv_out, shape, &Device::Cpu)?;
        *lock(&self.saved)? = Some(Saved { conv_out, mean, var });
        Ok(y)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        affine: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Taken, not cloned: the convolution's output is freed with this pass's last use of it,
        // as the backward pass frees the graph's own intermediates (`backward_releasing`).
        let Some(Saved { conv_out, mean, var }) = lock(&self.saved)?.take() else {
            candle_core::bail!("conv + batch norm: no saved state (its forward pass has not run, or a backward pass has used it)")
        };
        let normalize = self.normalize(mean, &var);
        let (grad_conv_out, grad_affine, _) = normalize.gradients(&conv_out, affine, res, grad, false)?;
        let (grad_x, grad_weight, _) = self.conv.gradients(x, weight, &grad_conv_out)?;
        Ok((grad_x, Some(grad_weight), Some(grad_affine)))
    }
}

/// act(BN(conv(x, weight))) with the batch's statistics, for f32 CPU tensors and a one-group
/// convolution without bias; also returns the batch mean and biased variance per channel for
/// the running estimates.
pub(crate) fn conv_batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    (stride, padding): (usize, usize),
    (gamma, beta, eps): (&Tensor, &Tensor, f64),
    activation: FusedActivation,
) -> candle_core::Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let saved = SharedSaved::default();
    let op = ConvBatchNorm { conv: Forward { stride, padding }, eps, activation, saved: Arc::clone(&saved) };
    let affine = Tensor::stack(&[gamma, beta], 0)?;
    let y = x.contiguous()?.apply_op3(&weight.contiguous()?, &affine, op)?;
    let (mean, var) = read(&saved, |saved| (saved.mean.clone(), saved.var.clone()))?;
    Ok((y, mean, var))
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The same arithmetic as the separate convolution and BatchNorm ops, so the same numbers:
    /// output, batch statistics and the gradients of the input, the weight, gamma and beta
    /// (compared as f32 values, where -0 equals 0). Shapes with stride 1 and 2, padding, several
    /// row tiles and grouped small images; each activation.
    #[test]
    fn equals_the_separate_convolution_and_batch_norm() {
        let mut random = crate::test_tensors::NormalTensors::new(11);
        let activations = [FusedActivation::Identity, FusedActivation::Relu, FusedActivation::Relu6, FusedActivation::Silu];
        let cases = [(3, 4, 5, 3, 1, 1, 9, 7), (2, 3, 6, 7, 2, 3, 13, 10), (1, 24, 4, 3, 1, 1, 70, 41), (5, 6, 3, 1, 2, 0, 8, 8)];
        for ((batch, channels, out, kernel, stride, padding, height, width), activation) in
            cases.into_iter().zip(activations.into_iter().cycle())
        {
            let case = format!("b{batch} c{channels} o{out} k{kernel} s{stride} p{padding} {height}x{width} {activation:?}");
            let x = Var::from_tensor(&random.draw(0.5, 1.0, (batch, channels, height, width))).unwrap();
            let w = Var::from_tensor(&random.draw(0.0, 0.3, (out, channels, kernel, kernel))).unwrap();
            let gamma = Var::from_tensor(&random.draw(1.0, 0.3, out)).unwrap();
            let beta = Var::from_tensor(&random.draw(0.2, 0.3, out)).unwrap();
            let eps = 1e-5;
            let (fused, mean, var) = conv_batch_norm_train(&x, &w, (stride, padding), (&gamma, &beta, eps), activation).unwrap();
            let conv_out = crate::conv::conv2d(&x, &w, None, stride, padding).unwrap();
            let (separate, separate_mean, separate_var) =
                crate::batchnorm::cpu::batch_norm_train(&conv_out, &gamma, &beta, eps, None, activation).unwrap();
            assert_eq!(values(&fused), values(&separate), "output {case}");
            assert_eq!((mean, var), (separate_mean, separate_var), "statistics {case}");
            let upstream = random.draw(0.0, 1.0, fused.dims());
            let fused_grads = (&fused * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let separate_grads = (&separate * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("input", &x), ("weight", &w), ("gamma", &gamma), ("beta", &beta)] {
                let (ours, theirs) = (fused_grads.get(var.as_tensor()).unwrap(), separate_grads.get(var.as_tensor()).unwrap());
                assert_eq!(values(ours), values(theirs), "{name} gradient {case}");
            }
        }
    }
}
