//! BatchNorm over channels, optionally followed by a residual add and a ReLU, ReLU6 or SiLU.
//!
//! Train mode: the batch's statistics normalise the input, and come back for the layer's running
//! estimates. f32 on the CPU runs one fused op with its own backward pass (`cpu.rs`), f32 on a
//! CUDA device the same as kernels of our own (`cuda.rs`); elsewhere the same normalisation is
//! composed from candle's differentiable ops (`composite.rs`). The running estimates take the
//! batch's in place (`running.rs`).
//!
//! Eval mode: the running estimates normalise it, in one pass on the CPU and one kernel on a CUDA
//! device (inputs outside any graph: extraction, validation), where candle's ops take a scale and
//! shift from six small ones and two broadcast passes after them. After a convolution on the CPU
//! the zoo folds it into the convolution's weight and bias instead
//! ([`eval_batch_norm_folds_into_conv`]).

mod composite;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod running;

pub use running::update_running_statistics;

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
///
/// SiLU after a residual add runs as an operation of its own: its derivative needs the sum,
/// which the fused op's backward pass would have to keep (the clamps' need only their output).
pub fn batch_norm_train(
    x: &Tensor,
    params: BatchNormParams<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> Result<BatchNormOutput> {
    if activation == FusedActivation::Silu && residual.is_some() {
        let out = batch_norm_train(x, params, residual, FusedActivation::Identity)?;
        return Ok(BatchNormOutput { y: activation.apply(&out.y)?, ..out });
    }
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

/// A BatchNorm's running estimates (C each), with which eval mode normalises.
#[derive(Debug, Clone, Copy)]
pub struct RunningStatistics<'a> {
    /// `running_mean` in PyTorch.
    pub mean: &'a Tensor,
    /// `running_var` in PyTorch (the unbiased estimate).
    pub var: &'a Tensor,
}

/// Eval-mode BatchNorm of x (B, C, H, W) with the running estimates, then `residual` (x's shape)
/// added and `activation` applied: act((x - mean) / sqrt(var + eps) * gamma + beta [+ residual]).
///
/// With nothing in a graph and everything f32, one pass on the CPU and one kernel on a CUDA
/// device, each with PyTorch's CUDA formula (x - mean) * scale + beta, scale = gamma / sqrt(var +
/// eps) from f64; otherwise (a tensor that tracks a gradient, other dtypes) candle's
/// differentiable ops, x * scale + (beta - mean * scale).
pub fn batch_norm_eval(
    x: &Tensor,
    params: BatchNormParams<'_>,
    running: RunningStatistics<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> Result<Tensor> {
    let (_, channels, _, _) = x.dims4()?;
    let per_channel = [params.gamma, params.beta, running.mean, running.var];
    if per_channel.iter().any(|t| t.dims() != [channels]) || residual.is_some_and(|r| r.dims() != x.dims()) {
        candle_core::bail!(
            "eval batch norm: parameters {:?} or residual {:?} do not fit an input of shape {:?}",
            per_channel.map(|t| t.dims().to_vec()),
            residual.map(|r| r.dims().to_vec()),
            x.dims()
        );
    }
    let untracked = !x.track_op() && per_channel.iter().all(|t| !t.track_op()) && residual.is_none_or(|r| !r.track_op());
    // An empty batch goes to candle's ops too: a kernel launch has no grid of zero blocks.
    let fused = untracked && x.elem_count() > 0;
    if fused && is_f32_cpu(x) && per_channel.iter().all(|t| is_f32_cpu(t)) && residual.is_none_or(is_f32_cpu) {
        return cpu::batch_norm_eval(x, params, running, residual, activation);
    }
    #[cfg(feature = "cuda")]
    if fused && cuda::applies_eval(x, &per_channel, residual) {
        return cuda::batch_norm_eval(x, params, running, residual, activation);
    }
    composite::batch_norm_eval(x, params, running, residual, activation)
}

/// Whether an eval-mode BatchNorm after a convolution of x is best folded into the
/// convolution's weight and bias (true: f32 on the CPU, where the GEMM starts from the bias and
/// the weight is small beside the activations) or run after it by [`batch_norm_eval`] (false:
/// f32 CUDA tensors, where that is one kernel and the fold about eight small ones, two of them
/// broadcasts whose strides candle copies to the device; other devices and dtypes, where both
/// are candle's ops and the fold is fewer passes over the activations).
pub fn eval_batch_norm_folds_into_conv(x: &Tensor) -> bool {
    !(x.device().is_cuda() && x.dtype() == candle_core::DType::F32 && cuda_eval_kernel_enabled())
}

/// Whether f32 CUDA tensors take the eval kernel (`MEDXFER_CUDA_BATCHNORM=candle` says no).
fn cuda_eval_kernel_enabled() -> bool {
    #[cfg(feature = "cuda")]
    return cuda::kernels_enabled();
    #[cfg(not(feature = "cuda"))]
    false
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

    /// Each activation once, three of them with a residual (SiLU's then runs as its own op).
    const CASES: [(FusedActivation, bool); 6] = [
        (FusedActivation::Identity, false),
        (FusedActivation::Relu, true),
        (FusedActivation::Relu6, false),
        (FusedActivation::Relu6, true),
        (FusedActivation::Silu, false),
        (FusedActivation::Silu, true),
    ];

    /// The two implementations are two constructions of one normalisation: the composite in
    /// f64 and the CPU kernel in f32 give the same output, statistics and gradients, for every
    /// activation, with and without a residual.
    #[test]
    fn the_composite_and_the_cpu_kernel_agree() {
        let mut random = crate::test_tensors::NormalTensors::new(7);
        for (activation, with_residual) in CASES {
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
    /// The eval pass by hand: one channel with mean 1, variance 3 and eps 1 (scale 2 / 2 = 1),
    /// beta 0.5, then a residual and ReLU6: the kink at 6 and the clamp at 0 both met.
    #[test]
    fn the_eval_pass_matches_a_hand_computed_case() {
        let cpu = &Device::Cpu;
        let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, cpu).unwrap();
        let x = t(&[1.0, 3.0, -5.0, 2.0], &[2, 1, 1, 2]);
        let (gamma, beta, mean, var) = (t(&[2.0], &[1]), t(&[0.5], &[1]), t(&[1.0], &[1]), t(&[3.0], &[1]));
        let params = BatchNormParams { gamma: &gamma, beta: &beta, eps: 1.0 };
        let running = RunningStatistics { mean: &mean, var: &var };
        let plain = batch_norm_eval(&x, params, running, None, FusedActivation::Identity).unwrap();
        assert_eq!(plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0.5, 2.5, -5.5, 1.5]);
        let residual = t(&[1.0, 4.0, 0.0, -2.0], &[2, 1, 1, 2]);
        let clamped = batch_norm_eval(&x, params, running, Some(&residual), FusedActivation::Relu6).unwrap();
        assert_eq!(clamped.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.5, 6.0, 0.0, 0.0]);
    }

    /// The CPU kernel (f32, untracked) against the composite (f64) for every activation, with
    /// and without a residual, at running statistics far from 0 and 1.
    #[test]
    fn the_eval_kernel_and_the_composite_agree() {
        let mut random = crate::test_tensors::NormalTensors::new(8);
        for (activation, with_residual) in CASES {
            let case = format!("{activation:?} residual {with_residual}");
            let shape = (3, 5, 4, 7);
            let x = (random.draw(0.0, 3.0, shape) + 1.0).unwrap();
            let (gamma, beta) = (random.draw(1.0, 0.5, 5), random.draw(0.5, 0.5, 5));
            let mean = random.draw(1.0, 1.0, 5);
            let var = (random.draw(0.0, 2.0, 5).sqr().unwrap() + 0.1).unwrap();
            let residual = random.draw(0.0, 2.0, shape);
            let run = |dtype: DType| {
                let on = |t: &Tensor| t.to_dtype(dtype).unwrap();
                let (gamma, beta, mean, var, residual) = (on(&gamma), on(&beta), on(&mean), on(&var), on(&residual));
                let params = BatchNormParams { gamma: &gamma, beta: &beta, eps: 1e-3 };
                let running = RunningStatistics { mean: &mean, var: &var };
                let y = batch_norm_eval(&on(&x), params, running, with_residual.then_some(&residual), activation).unwrap();
                y.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
            };
            let (kernel, composite) = (run(DType::F32), run(DType::F64));
            let scale = composite.iter().fold(1f64, |m, v| m.max(v.abs()));
            let difference = kernel.iter().zip(&composite).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(difference < 1e-6 * scale, "{case}: {difference}");
        }
    }

    /// An input in a graph takes the differentiable composite: its gradient is the upstream one
    /// times gamma / sqrt(var + eps) where the activation passed it, and the residual's is the
    /// upstream one there.
    #[test]
    fn an_eval_input_in_a_graph_gets_its_gradient() {
        let cpu = &Device::Cpu;
        let x = candle_core::Var::from_slice(&[1.0f32, 3.0, -5.0, 2.0, 0.0, 4.0], (1, 2, 1, 3), cpu).unwrap();
        let residual = candle_core::Var::from_slice(&[0.0f32; 6], (1, 2, 1, 3), cpu).unwrap();
        let t = |v: &[f32]| Tensor::from_slice(v, 2, cpu).unwrap();
        let (gamma, beta, mean, var) = (t(&[2.0, -1.0]), t(&[0.0, 0.0]), t(&[1.0, 0.0]), t(&[3.0, 0.0]));
        let params = BatchNormParams { gamma: &gamma, beta: &beta, eps: 1.0 };
        let running = RunningStatistics { mean: &mean, var: &var };
        let y = batch_norm_eval(&x, params, running, Some(&residual), FusedActivation::Relu).unwrap();
        // Channel 0: scale 1, y = x - 1 = (0, 2, -6); channel 1: scale -1, y = -x = (-2, 0, -4).
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let grad = |v: &candle_core::Var| grads.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(grad(&x), [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(grad(&residual), [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    /// An empty batch gives an empty output, not an error or a panic.
    #[test]
    fn an_empty_eval_batch_is_empty() {
        let cpu = &Device::Cpu;
        let x = Tensor::zeros((0, 3, 4, 4), DType::F32, cpu).unwrap();
        let three = Tensor::ones(3, DType::F32, cpu).unwrap();
        let params = BatchNormParams { gamma: &three, beta: &three, eps: 1e-5 };
        let y = batch_norm_eval(&x, params, RunningStatistics { mean: &three, var: &three }, None, FusedActivation::Relu6).unwrap();
        assert_eq!(y.dims(), [0, 3, 4, 4]);
    }

    /// Parameters or a residual of the wrong size are an error that names the shapes.
    #[test]
    fn eval_parameters_of_the_wrong_size_are_an_error() {
        let cpu = &Device::Cpu;
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, cpu).unwrap();
        let (three, two) = (Tensor::ones(3, DType::F32, cpu).unwrap(), Tensor::ones(2, DType::F32, cpu).unwrap());
        let params = BatchNormParams { gamma: &three, beta: &three, eps: 1e-5 };
        let error = batch_norm_eval(&x, params, RunningStatistics { mean: &three, var: &two }, None, FusedActivation::Relu).unwrap_err();
        assert!(error.to_string().contains("[2, 3, 4, 4]"), "{error}");
        let residual = Tensor::zeros((2, 3, 4, 5), DType::F32, cpu).unwrap();
        let running = RunningStatistics { mean: &three, var: &three };
        assert!(batch_norm_eval(&x, params, running, Some(&residual), FusedActivation::Relu).is_err());
    }
}
