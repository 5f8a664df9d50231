//! Train-mode BatchNorm over channels, optionally followed by a residual add and a ReLU/ReLU6:
//! the batch's statistics normalise the input, and come back for the layer's running estimates.
//!
//! f32 on the CPU runs one fused op with its own backward pass (`cpu.rs`), f32 on a CUDA device
//! the same as kernels of our own (`cuda.rs`); elsewhere the same normalisation is composed from
//! candle's differentiable ops (`composite.rs`).

mod composite;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Device, Result, Tensor};

use crate::activation::FusedActivation;
use crate::kernel_input::is_f32_cpu;

/// A BatchNorm's affine parameters (C each) and epsilon.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormParams<'a> {
    /// The scale, `weight` in PyTorch.
    pub gamma: &'a Tensor,
    /// The shift, `bias` in PyTorch.
    pub beta: &'a Tensor,
    /// Added to the variance before the square root (PyTorch's 1e-5 default).
    pub eps: f64,
}

/// A train-mode BatchNorm's output and the batch statistics its running estimates take in.
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    /// `activation(normalised x + residual)`, in the graph.
    pub y: Tensor,
    /// The batch's per-channel mean (C), outside the graph, in x's dtype and on its device.
    pub mean: Tensor,
    /// The batch's per-channel variance (C) with Bessel's correction, N / (N - 1) times the
    /// variance that normalised it (PyTorch's running estimate takes this one), outside the graph.
    pub unbiased_var: Tensor,
}

/// Train-mode BatchNorm of x (B, C, H, W) with the batch's statistics, then `residual` (x's
/// shape) added and `activation` applied.
pub fn batch_norm_train(
    x: &Tensor,
    params: BatchNormParams<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> Result<BatchNormOutput> {
    if [x, params.gamma, params.beta].into_iter().all(is_f32_cpu) && residual.is_none_or(is_f32_cpu) {
        let (y, mean, var) = cpu::batch_norm_train(x, params.gamma, params.beta, params.eps, residual, activation)?;
        return from_f64_statistics(y, &mean, &var);
    }
    #[cfg(feature = "cuda")]
    if cuda::applies(x, &params, residual) {
        return cuda::batch_norm_train(x, params, residual, activation);
    }
    composite::batch_norm_train(x, params, residual, activation)
}

/// The output of a CPU kernel whose statistics came out in f64: rounded to f32 once, after the
/// unbiased correction (as PyTorch's CPU kernel computes its running update in double).
pub(crate) fn from_f64_statistics(y: Tensor, mean: &[f64], var: &[f64]) -> Result<BatchNormOutput> {
    let correction = unbiased_correction(&y)?;
    let to_tensor = |values: Vec<f32>| Tensor::from_vec(values, mean.len(), &Device::Cpu);
    let mean = to_tensor(mean.iter().map(|&v| v as f32).collect())?;
    let unbiased_var = to_tensor(var.iter().map(|&v| (v * correction) as f32).collect())?;
    Ok(BatchNormOutput { y, mean, unbiased_var })
}

/// N / (N - 1) for the N = B·H·W values per channel of x (B, C, H, W): biased to unbiased
/// variance (1 for a single value rather than a division by zero).
fn unbiased_correction(x: &Tensor) -> Result<f64> {
    let (batch, _, height, width) = x.dims4()?;
    let count = (batch * height * width) as f64;
    Ok(count / (count - 1.0).max(1.0))
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;

    /// The two implementations are two constructions of one normalisation: the composite in
    /// f64 and the CPU kernel in f32 give the same output, statistics and gradients, for every
    /// activation, with and without a residual.
    #[test]
    fn the_composite_and_the_cpu_kernel_agree() {
        let mut random = crate::test_tensors::NormalTensors::new(7);
        for (activation, with_residual) in [
            (FusedActivation::Identity, false),
            (FusedActivation::Relu, true),
            (FusedActivation::Relu6, false),
            (FusedActivation::Relu6, true),
        ] {
            let case = format!("{activation:?} residual {with_residual}");
            let shape = (3, 4, 5, 6);
            let x = candle_core::Var::from_tensor(&(random.draw(0.0, 2.0, shape) + 0.7).unwrap()).unwrap();
            let gamma = random.draw(3.0, 0.3, 4);
            let beta = random.draw(1.5, 0.3, 4);
            let residual = random.draw(0.0, 1.0, shape);
            let upstream = random.draw(0.0, 1.0, shape);
            let run = |dtype: DType| {
                let x = candle_core::Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
                let (gamma, beta) = (gamma.to_dtype(dtype).unwrap(), beta.to_dtype(dtype).unwrap());
                let residual = residual.to_dtype(dtype).unwrap();
                let params = BatchNormParams { gamma: &gamma, beta: &beta, eps: 1e-5 };
                let out = batch_norm_train(&x, params, with_residual.then_some(&residual), activation).unwrap();
                let grads = (&out.y * upstream.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let grad_x = grads.get(&x).unwrap().to_dtype(DType::F64).unwrap();
                let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                (wide(&out.y), wide(&out.mean), wide(&out.unbiased_var), wide(&grad_x), out.mean.dtype() == DType::F32)
            };
            let (cpu, composite) = (run(DType::F32), run(DType::F64));
            assert!(cpu.4 && !composite.4, "{case}: the f32 path runs the CPU kernel, the f64 one the composite");
            for (what, ours, theirs) in [
                ("output", &cpu.0, &composite.0),
                ("mean", &cpu.1, &composite.1),
                ("variance", &cpu.2, &composite.2),
                ("input gradient", &cpu.3, &composite.3),
            ] {
                let scale = theirs.iter().fold(1f64, |m, v| m.max(v.abs()));
                let difference = ours.iter().zip(theirs).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(difference < 1e-5 * scale, "{what} {case}: {difference}");
            }
        }
    }
}
