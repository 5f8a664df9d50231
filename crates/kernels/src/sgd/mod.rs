//! One SGD step of one parameter with momentum, Nesterov and coupled weight decay, as
//! `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov=True)` (dampening 0):
//!
//! ```text
//! g = grad + wd * p
//! b = g                      on the first step
//! b = momentum * b + g       afterwards
//! g = g + momentum * b       (Nesterov)
//! p = p - lr * g
//! ```
//!
//! For f32 on the CPU with momentum the update is one parallel pass (`cpu.rs`): the same f32
//! operations in the same order as the tensor expressions other devices run (`composite.rs`),
//! so both give identical bits for any gradient candle's backward pass produces (it sums onto
//! zeros, so none is -0; with a -0 the sign of a zero could differ, since candle's `x * s` adds
//! +0). As tensor expressions on the CPU it was nine single-threaded
//! passes over the 11.7 M parameters of a ResNet-18, 5% of a training step. For f32 on a CUDA
//! device with momentum the same op is one kernel (`cuda.rs`), with the same bits.

mod composite;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};

use crate::kernel_input::is_f32_cpu;

/// The optimizer's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdSettings {
    /// The step's learning rate.
    pub learning_rate: f64,
    /// Momentum of the buffer (0: plain SGD, no buffer).
    pub momentum: f64,
    /// Coupled weight decay, added to the gradient.
    pub weight_decay: f64,
    /// Nesterov's look-ahead.
    pub nesterov: bool,
}

/// One parameter's update in f32 as candle's ops compute it (scalars converted to f32, no fused
/// multiply-adds): g = grad + p·wd; b = b·m + g (or g on the first step); g = g + b·m
/// (Nesterov) or b; p = p − g·lr. Returns (2, n): p, then b.
struct FusedStep {
    learning_rate: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
}

impl FusedStep {
    fn new(settings: SgdSettings) -> Self {
        Self {
            learning_rate: settings.learning_rate as f32,
            momentum: settings.momentum as f32,
            weight_decay: settings.weight_decay as f32,
            nesterov: settings.nesterov,
        }
    }
}

/// A parameter after one step, and its momentum buffer (None without momentum); both outside
/// any graph.
#[derive(Debug, Clone)]
pub struct SgdUpdate {
    /// The updated parameter.
    pub param: Tensor,
    /// The updated momentum buffer (None without momentum).
    pub buffer: Option<Tensor>,
}

/// One step of `param` from its gradient and its momentum buffer (None on the first step).
pub fn sgd_update(param: &Tensor, grad: &Tensor, buffer: Option<&Tensor>, settings: SgdSettings) -> Result<SgdUpdate> {
    if settings.momentum != 0.0 && is_f32_cpu(param) && is_f32_cpu(grad) && buffer.is_none_or(is_f32_cpu) {
        return cpu::sgd_update(param, grad, buffer, settings);
    }
    #[cfg(feature = "cuda")]
    if settings.momentum != 0.0 && cuda_applies([Some(param), Some(grad), buffer]) {
        return cpu::sgd_update(param, grad, buffer, settings);
    }
    composite::sgd_update(param, grad, buffer, settings)
}

/// Every tensor given is f32 on a CUDA device; `MEDXFER_CUDA_SGD=candle` keeps candle's tensor
/// expressions, to measure.
#[cfg(feature = "cuda")]
fn cuda_applies(tensors: [Option<&Tensor>; 3]) -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !crate::cuda_input::candle_requested(&CANDLE, "MEDXFER_CUDA_SGD")
        && tensors.into_iter().flatten().all(|t| t.device().is_cuda() && t.dtype() == candle_core::DType::F32)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::test_tensors::bits;

    /// The step against the update written out by hand in f32, bit for bit, on both paths (the
    /// fused CPU pass and the tensor expressions), both momentum variants, with and without
    /// weight decay, over three steps (the first without a buffer), on values that include -0,
    /// tiny and large magnitudes.
    #[test]
    fn both_paths_are_the_formula_bit_for_bit() {
        let start: Vec<f32> = vec![0.5, -0.0, 3.25e-8, -1.5e6, 7.0, -2.75, 0.1, 1e-3, -0.3];
        let gradients: [Vec<f32>; 3] = [
            vec![0.1, 0.0, 1e-7, 2.0, 0.0, 0.3, -1e-9, 5.0, 0.25],
            vec![-0.2, 0.0, 3e-6, -4.0, 1.0, 0.0, 2e-9, -5.0, 0.5],
            vec![0.7, -1.0, 0.0, 8.0, -2.0, 0.6, 0.0, 1.0, -0.75],
        ];
        type Step = fn(&Tensor, &Tensor, Option<&Tensor>, SgdSettings) -> Result<SgdUpdate>;
        for (path, step) in [("cpu", cpu::sgd_update as Step), ("composite", composite::sgd_update as Step)] {
            for nesterov in [true, false] {
                for weight_decay in [0.0, 1e-4] {
                    let case = format!("{path}, nesterov {nesterov}, wd {weight_decay}");
                    let settings = SgdSettings { learning_rate: 0.03, momentum: 0.9, weight_decay, nesterov };
                    let mut param = Tensor::from_vec(start.clone(), (3, 3), &Device::Cpu).unwrap();
                    let mut buffer: Option<Tensor> = None;
                    let (mut p, mut b): (Vec<f32>, Option<Vec<f32>>) = (start.clone(), None);
                    let (lr, m, wd) = (0.03f64 as f32, 0.9f64 as f32, weight_decay as f32);
                    for gradient in gradients.clone() {
                        let grad = Tensor::from_vec(gradient.clone(), (3, 3), &Device::Cpu).unwrap();
                        let update = step(&param, &grad, buffer.as_ref(), settings).unwrap();
                        let mut new_b = Vec::new();
                        for i in 0..p.len() {
                            let mut g = if wd != 0.0 { gradient[i] + p[i] * wd } else { gradient[i] };
                            let bi = match &b {
                                Some(b) => b[i] * m + g,
                                None => g,
                            };
                            g = if nesterov { g + bi * m } else { bi };
                            p[i] -= g * lr;
                            new_b.push(bi);
                        }
                        b = Some(new_b);
                        let expected = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                        assert_eq!(bits(&update.param), expected(&p), "parameter, {case}");
                        let new_buffer = update.buffer.unwrap();
                        assert_eq!(bits(&new_buffer), expected(b.as_ref().unwrap()), "buffer, {case}");
                        assert_eq!(update.param.dims(), [3, 3]);
                        (param, buffer) = (update.param, Some(new_buffer));
                    }
                }
            }
        }
    }

    /// Without momentum there is no buffer, and the step is p - lr (grad + wd p).
    #[test]
    fn plain_sgd_keeps_no_buffer() {
        let param = Tensor::from_vec(vec![1f32, -2.0], 2, &Device::Cpu).unwrap();
        let grad = Tensor::from_vec(vec![0.5f32, 0.25], 2, &Device::Cpu).unwrap();
        let settings = SgdSettings { learning_rate: 0.1, momentum: 0.0, weight_decay: 0.5, nesterov: false };
        let update = sgd_update(&param, &grad, None, settings).unwrap();
        assert!(update.buffer.is_none());
        let expected = [1f32 - 0.1 * (0.5 + 1.0 * 0.5), -2.0 - 0.1 * (0.25 + -2.0 * 0.5)];
        let values = update.param.to_vec1::<f32>().unwrap();
        assert!(values.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{values:?}");
    }
}
