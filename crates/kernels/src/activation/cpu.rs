//! ReLU and ReLU6 on the CPU as one pass forward and one pass backward (`mod.rs` says why).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::kernel_input::f32_slice;
use crate::parallel_output::{Start, build_in_chunks};

/// Elements per parallel chunk: large enough to amortise a task, small enough to spread.
const CHUNK: usize = 1 << 16;

/// min(max(x, 0), high).
struct Clamp {
    high: f32,
}

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "clamp-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "relu", "the input")?;
        let high = self.high;
        // Each chunk zeroed by the task that writes it (`parallel_output`).
        let y = build_in_chunks(x.len(), CHUNK, Start::Zeros, |index, out| {
            let input = &x[index * CHUNK..][..out.len()];
            for (o, &v) in out.iter_mut().zip(input) {
                *o = v.max(0.0).min(high);
            }
        })?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(clamp_backward(grad, arg, self.high)?))
    }
}

/// dy where 0 < x < high, else 0.
struct ClampGrad {
    high: f32,
}

impl CustomOp2 for ClampGrad {
    fn name(&self) -> &'static str {
        "clamp-activation-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, "relu backward", "the gradient")?;
        let x = f32_slice(s2, l2, "relu backward", "the input")?;
        if dy.len() != x.len() {
            candle_core::bail!("relu backward: {} gradients for {} inputs", dy.len(), x.len());
        }
        let high = self.high;
        let dx = build_in_chunks(x.len(), CHUNK, Start::Zeros, |index, out| {
            let (g, input) = (&dy[index * CHUNK..][..out.len()], &x[index * CHUNK..][..out.len()]);
            for ((o, &g), &v) in out.iter_mut().zip(g).zip(input) {
                // A bit mask instead of a branch: the compiler vectorises it, and a ReLU's
                // sign pattern is too random for branch prediction (this loop was 10% of a
                // resnet18 training step written as `if`).
                let keep = u32::from(v > 0.0) & u32::from(v < high);
                *o = f32::from_bits(g.to_bits() & keep.wrapping_neg());
            }
        })?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// min(max(x, 0), high) of an f32 CPU tensor.
pub(super) fn clamp(x: &Tensor, high: f32) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Clamp { high })
}

/// dy where 0 < x < high, else 0: the backward pass of a clamp to [0, high], taken from its
/// input or, equally, its output.
pub(crate) fn clamp_backward(grad: &Tensor, x: &Tensor, high: f32) -> candle_core::Result<Tensor> {
    grad.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &ClampGrad { high })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Var};

    use super::*;
    use crate::activation::{relu, relu6};

    /// Forward and backward against the definitions, kinks included (PyTorch's gradient there
    /// is 0), on values that hit 0 and 6 exactly.
    #[test]
    fn one_pass_relu_and_relu6_match_their_definitions() {
        let values: Vec<f32> = (-20..=20).map(|i| i as f32 * 0.5).collect();
        let x = Var::from_vec(values.clone(), (1, 41), &Device::Cpu).unwrap();
        let upstream: Vec<f32> = (0..41).map(|i| 1.0 + i as f32).collect();
        let upstream_t = Tensor::from_vec(upstream.clone(), (1, 41), &Device::Cpu).unwrap();
        for (high, activation) in [(f32::INFINITY, relu as fn(&Tensor) -> candle_core::Result<Tensor>), (6.0, relu6)] {
            let y = activation(&x).unwrap();
            let expected: Vec<f32> = values.iter().map(|v| v.max(0.0).min(high)).collect();
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
            let grads = (&y * &upstream_t).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let expected: Vec<f32> = values.iter().zip(&upstream).map(|(&v, &g)| if v > 0.0 && v < high { g } else { 0.0 }).collect();
            assert_eq!(dx, expected, "high {high}");
        }
        // A strided input is made contiguous first.
        let wide = Tensor::from_vec(values, (41, 1), &Device::Cpu).unwrap().t().unwrap();
        assert_eq!(relu(&wide).unwrap().dims(), [1, 41]);
    }
}
