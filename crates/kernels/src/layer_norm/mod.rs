//! LayerNorm over the last dimension with an affine transform, y = (x - mean) / sqrt(var + eps)
//! * weight + bias (the ViTs' norms, ConvNeXt's over channels).
//!
//! candle's differentiable ops compose it from nine passes, each keeping its output for the
//! backward pass (ConvNeXt-T's training step held twice PyTorch's memory); candle-nn's fused one
//! records no gradient. On the CPU in f32 (`cpu.rs`) one pass per row forward and one backward,
//! which recomputes each row's statistics instead of storing them; on a CUDA device in f32 the
//! same as kernels of our own (`cuda.rs`); elsewhere candle's ops.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{D, Result, Tensor};

use crate::kernel_input::is_f32_cpu;

/// LayerNorm of x (..., D) with weight and bias (D).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if [x, weight, bias].into_iter().all(is_f32_cpu) {
        return cpu::layer_norm(x, weight, bias, eps);
    }
    #[cfg(feature = "cuda")]
    if cuda::applies(x, weight, bias) {
        return cpu::checked(x, weight, bias)?.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, cuda::Forward { eps });
    }
    composite(x, weight, bias, eps)
}

/// The same with candle's ops.
fn composite(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{DType, Var};

    use super::*;
    use crate::test_tensors::{NormalTensors, max_abs};

    /// Outputs and the gradients of x, weight and bias against candle's ops in f64, for rows of
    /// several widths (one not a multiple of the vector width, one a single channel) and a
    /// shifted, scaled input (the statistics must not lose the small variance to the mean).
    #[test]
    fn the_cpu_kernel_matches_candles_ops_in_f64_forward_and_backward() {
        let mut normal = NormalTensors::new(5);
        for (shape, shift) in [(vec![2usize, 7, 24], 0.0), (vec![5, 13], 30.0), (vec![3, 1], 0.0), (vec![4, 3, 2, 96], -4.0)] {
            let width = *shape.last().unwrap();
            let x = Var::from_tensor(&normal.draw(shift, 2.0, shape.clone())).unwrap();
            let w = Var::from_tensor(&normal.draw(1.0, 0.5, width)).unwrap();
            let b = Var::from_tensor(&normal.draw(0.0, 1.0, width)).unwrap();
            let upstream = normal.draw(0.0, 1.0, shape.clone());
            let ours = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6).unwrap();
            let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let (x64, w64, b64) = (Var::from_tensor(&wide(x.as_tensor())).unwrap(), wide(w.as_tensor()), wide(b.as_tensor()));
            let (w64, b64) = (Var::from_tensor(&w64).unwrap(), Var::from_tensor(&b64).unwrap());
            let truth = composite(x64.as_tensor(), w64.as_tensor(), b64.as_tensor(), 1e-6).unwrap();
            let narrow = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            assert!(max_abs((&ours - narrow(&truth)).unwrap()) < 1e-4, "{shape:?} forward");
            let our_grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let true_grads = (&truth * wide(&upstream)).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, ours, theirs) in [("x", &x, &x64), ("weight", &w, &w64), ("bias", &b, &b64)] {
                let difference =
                    max_abs((our_grads.get(ours.as_tensor()).unwrap() - narrow(true_grads.get(theirs.as_tensor()).unwrap())).unwrap());
                assert!(difference < 2e-4, "{shape:?} gradient of {what}: {difference}");
            }
        }
    }

    /// Hand-computed: the row (1, 2, 3) has mean 2 and variance 2/3.
    #[test]
    fn a_row_by_hand() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0]], &candle_core::Device::Cpu).unwrap();
        let (w, b) = (Tensor::new(&[1f32, 2.0, 1.0], x.device()).unwrap(), Tensor::new(&[0f32, 0.0, 1.0], x.device()).unwrap());
        let y = layer_norm(&x, &w, &b, 0.0).unwrap().to_vec2::<f32>().unwrap();
        let s = (1.5f32).sqrt();
        for (ours, truth) in y[0].iter().zip([-s, 0.0, s + 1.0]) {
            assert!((ours - truth).abs() < 1e-6, "{ours} vs {truth}");
        }
    }
}
