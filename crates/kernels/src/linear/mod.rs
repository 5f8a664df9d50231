//! The fully connected layer, y = x W' + b, over the last dimension of x.
//!
//! candle multiplies through its `gemm` crate and adds the bias as a second, single-threaded
//! broadcast pass over the output. On the CPU in f32 (`cpu.rs`) the bias is written into the
//! output first and faer's matrix product accumulates onto it (faer's AVX-512 kernels ran the
//! ViT-L/16 MLP products 10-40% faster than candle's on the 2-core reference machine: 180 vs
//! 204 ms for one block's four products at batch 8). The backward pass is three matrix
//! products with candle's ops. On a CUDA device in f32 with a bias (`cuda.rs`) the layer is one
//! graph node, its bias's gradient summed by a kernel of our own. Other devices and dtypes keep
//! candle's ops.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};

use crate::kernel_input::is_f32_cpu;

/// x W' + b for x of shape (..., in_features), W (out_features, in_features), b (out_features).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if is_f32_cpu(x) && is_f32_cpu(weight) && bias.is_none_or(is_f32_cpu) {
        return cpu::linear(x, weight, bias);
    }
    #[cfg(feature = "cuda")]
    if let Some(b) = bias
        && cuda::applies(x, weight, b)
    {
        return cuda::linear(x, weight, b);
    }
    composite(x, weight, bias)
}

/// GELU (erf form) of x W' + b. Without a gradient to record, on the CPU in f32, the
/// activation runs on each block of rows right after its product, in cache, with no second
/// output; otherwise it is [`linear`] and then [`crate::gelu_erf`].
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let records = x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op);
    if !records && is_f32_cpu(x) && is_f32_cpu(weight) && bias.is_none_or(is_f32_cpu) {
        return cpu::linear_gelu_no_grad(x, weight, bias);
    }
    crate::gelu_erf(&linear(x, weight, bias)?)
}

/// residual + x W' + b, the residual branch's add of a transformer block. Without a gradient to
/// record, on the CPU in f32, the output starts as the residual plus the bias and the product
/// accumulates onto it: no separate pass over the output and no second buffer. Recording a
/// gradient with a bias, in f32 on the CPU or a CUDA device, it is one graph node with
/// [`linear`]'s arithmetic and then the add's, so the same bits: the graph then keeps no
/// product output beside the sum (PyTorch's add saves nothing). Otherwise it is [`linear`] and
/// then an add.
pub fn linear_residual(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    let records = x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op) || residual.track_op();
    if !records && is_f32_cpu(x) && is_f32_cpu(weight) && bias.is_none_or(is_f32_cpu) && is_f32_cpu(residual) {
        return cpu::linear_residual_no_grad(x, weight, bias, residual);
    }
    if let Some(bias) = bias
        && records
        && [x, weight, bias, residual].into_iter().all(is_f32_cpu)
    {
        return cpu::linear_residual(x, weight, bias, residual);
    }
    #[cfg(feature = "cuda")]
    if let Some(bias) = bias
        && records
        && cuda::applies(x, weight, bias)
        && residual.device().is_cuda()
        && residual.dtype() == candle_core::DType::F32
    {
        return cuda::linear_residual(x, weight, bias, residual);
    }
    linear(x, weight, bias)? + residual
}

/// W (outputs, inputs) and b (outputs) as one tensor, `[W flattened, b]`: the residual layer's
/// node takes them as one input (candle's custom ops take three), and its gradient is the
/// packed `[dW, db]` the backward pass computes anyway. The copy is the parameters' size.
fn packed_parameters(weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[&weight.flatten_all()?, bias], 0)
}

/// W (outputs, inputs) out of a packed `[W flattened, b]`, a view.
fn packed_weight(packed: &Tensor, outputs: usize, inputs: usize) -> Result<Tensor> {
    packed.narrow(0, 0, outputs * inputs)?.reshape((outputs, inputs))
}

/// The weight's (outputs, inputs) and the bias's layouts inside a packed tensor's storage.
fn packed_parts(packed: &candle_core::Layout, outputs: usize, inputs: usize) -> Result<(candle_core::Layout, candle_core::Layout)> {
    if packed.shape().elem_count() != outputs * inputs + outputs || !packed.is_contiguous() {
        candle_core::bail!("linear: packed parameters of shape {:?} for ({outputs}, {inputs}) plus {outputs}", packed.shape());
    }
    let start = packed.start_offset();
    Ok((
        candle_core::Layout::contiguous_with_offset((outputs, inputs), start),
        candle_core::Layout::contiguous_with_offset(outputs, start + outputs * inputs),
    ))
}

/// The same with candle's ops.
fn composite(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    // The rows of x as one matrix: one product each way, where a broadcast product of (B, N, D)
    // by the weight materialises a (B, D, O) weight gradient and sums it over B.
    let width = x.dim(candle_core::D::Minus1)?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / width.max(1);
    let y = x.reshape((rows, width))?.matmul(&weight.t()?)?;
    if let Some(last) = dims.last_mut() {
        *last = weight.dim(0)?;
    }
    let y = y.reshape(dims)?;
    match bias {
        Some(bias) => y.broadcast_add(bias),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::Var;

    use super::*;
    use crate::test_tensors::{NormalTensors, max_abs};

    /// Outputs and the gradients of x, W and b against candle's ops, with and without a bias,
    /// on a 3-d input (the ViT's tokens) and a 2-d one.
    #[test]
    fn the_cpu_kernel_matches_candles_ops_forward_and_backward() {
        let mut normal = NormalTensors::new(11);
        for (shape, with_bias) in [(vec![2usize, 5, 24], true), (vec![7, 24], false), (vec![3, 1, 24], true)] {
            let x = Var::from_tensor(&normal.draw(0.0, 1.0, shape.clone())).unwrap();
            let w = Var::from_tensor(&normal.draw(0.0, 0.5, (19, 24))).unwrap();
            let b = Var::from_tensor(&normal.draw(0.0, 1.0, 19)).unwrap();
            let bias = with_bias.then_some(b.as_tensor());
            let ours = linear(x.as_tensor(), w.as_tensor(), bias).unwrap();
            let theirs = composite(x.as_tensor(), w.as_tensor(), bias).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_abs((&ours - &theirs).unwrap()) < 1e-5, "{shape:?}: forward");
            let upstream = normal.draw(0.0, 1.0, theirs.shape().clone());
            let ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("x", &x), ("weight", &w), ("bias", &b)] {
                match (ours.get(var), theirs.get(var)) {
                    (Some(a), Some(b)) => assert!(max_abs((a - b).unwrap()) < 1e-4, "{shape:?}: d{name}"),
                    (None, None) => assert!(!with_bias && name == "bias", "{shape:?}: no d{name}"),
                    _ => panic!("{shape:?}: d{name} on one side only"),
                }
            }
        }
    }

    /// The fused activation against the separate ops (candle's exact GELU), with and without a
    /// bias; with a gradient to record, the separate ops' gradients.
    #[test]
    fn the_fused_gelu_matches_the_separate_ops() {
        let mut normal = NormalTensors::new(3);
        let x = normal.draw(0.0, 2.0, (4, 9, 16));
        let w = normal.draw(0.0, 0.5, (33, 16));
        let b = normal.draw(0.0, 1.0, 33);
        for bias in [Some(&b), None] {
            let fused = linear_gelu(&x, &w, bias).unwrap();
            let separate = composite(&x, &w, bias).unwrap().gelu_erf().unwrap();
            assert!(max_abs((&fused - &separate).unwrap()) < 1e-5, "bias {}", bias.is_some());
        }
        let wv = Var::from_tensor(&w).unwrap();
        let fused = linear_gelu(&x, wv.as_tensor(), Some(&b)).unwrap().sum_all().unwrap().backward().unwrap();
        let separate = composite(&x, wv.as_tensor(), Some(&b)).unwrap().gelu_erf().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs((fused.get(&wv).unwrap() - separate.get(&wv).unwrap()).unwrap()) < 1e-4);
    }

    /// The fused residual against the separate ops, with and without a bias; a residual of
    /// the wrong shape is an error; with a gradient to record, the separate ops' gradients,
    /// the residual's among them.
    #[test]
    fn the_fused_residual_matches_the_separate_ops() {
        let mut normal = NormalTensors::new(8);
        let x = normal.draw(0.0, 2.0, (3, 7, 16));
        let w = normal.draw(0.0, 0.5, (24, 16));
        let b = normal.draw(0.0, 1.0, 24);
        let residual = normal.draw(0.0, 3.0, (3, 7, 24));
        for bias in [Some(&b), None] {
            let fused = linear_residual(&x, &w, bias, &residual).unwrap();
            let separate = (composite(&x, &w, bias).unwrap() + &residual).unwrap();
            assert_eq!(fused.dims(), [3, 7, 24]);
            assert!(max_abs((&fused - &separate).unwrap()) < 1e-5, "bias {}", bias.is_some());
        }
        let wrong = normal.draw(0.0, 1.0, (3, 6, 24));
        let error = linear_residual(&x, &w, Some(&b), &wrong).unwrap_err().to_string();
        assert!(error.contains("residual of shape [3, 6, 24] for an output of shape [3, 7, 24]"), "{error}");
        let rv = Var::from_tensor(&residual).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let fused =
            linear_residual(&x, wv.as_tensor(), Some(&b), rv.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let separate = (composite(&x, wv.as_tensor(), Some(&b)).unwrap() + rv.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&wv, &rv] {
            assert!(max_abs((fused.get(var).unwrap() - separate.get(var).unwrap()).unwrap()) < 1e-4);
        }
    }

    /// Recording a gradient, the residual branch's layer is one node with the separate linear
    /// layer's and add's arithmetic: the output and the gradients of x, W, b and the residual are
    /// their bits; the graph keeps one tensor of the output's size where the separate ops kept
    /// two; packed parameters of the wrong size are an error.
    #[test]
    fn the_residual_node_keeps_the_separate_ops_bits() {
        let mut normal = NormalTensors::new(12);
        for (shape, outputs) in [(vec![3usize, 7, 16], 24usize), (vec![5, 16], 16), (vec![1, 1, 16], 3)] {
            let mut out_shape = shape.clone();
            *out_shape.last_mut().unwrap() = outputs;
            let x = Var::from_tensor(&normal.draw(0.0, 2.0, shape.clone())).unwrap();
            let w = Var::from_tensor(&normal.draw(0.0, 0.5, (outputs, 16))).unwrap();
            let b = Var::from_tensor(&normal.draw(0.0, 1.0, outputs)).unwrap();
            let r = Var::from_tensor(&normal.draw(0.0, 3.0, out_shape.clone())).unwrap();
            let upstream = normal.draw(0.0, 1.0, out_shape);
            let fused = linear_residual(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), r.as_tensor()).unwrap();
            let separate = (linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap() + r.as_tensor()).unwrap();
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fused), bits(&separate), "{shape:?}: output");
            let fused_grads = (&fused * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let separate_grads = (&separate * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("x", &x), ("weight", &w), ("bias", &b), ("residual", &r)] {
                let (a, b) = (fused_grads.get(var.as_tensor()).unwrap(), separate_grads.get(var.as_tensor()).unwrap());
                assert_eq!(a.dims(), var.dims(), "{shape:?}: d{name}'s shape");
                assert_eq!(bits(a), bits(b), "{shape:?}: d{name}");
            }
        }
        let x = normal.draw(0.0, 1.0, (2, 4));
        let r = normal.draw(0.0, 1.0, (2, 3));
        let error = x.apply_op3(&normal.draw(0.0, 1.0, 14), &r, cpu::LinearResidualGrad { out_features: 3 }).unwrap_err().to_string();
        assert!(error.contains("packed parameters of shape [14] for (3, 4) plus 3"), "{error}");
    }

    /// A hand-computed case: [1, 2] times W' = [[1, 0], [1, 1], [0, 2]] plus [0.5, 0, -1].
    #[test]
    fn a_small_product_is_computed_by_hand() {
        let x = Tensor::new(&[[1f32, 2.0]], &candle_core::Device::Cpu).unwrap();
        let w = Tensor::new(&[[1f32, 0.0], [1.0, 1.0], [0.0, 2.0]], &candle_core::Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, 0.0, -1.0], &candle_core::Device::Cpu).unwrap();
        let y = linear(&x, &w, Some(&b)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![1.5, 3.0, 3.0]]);
        let residual = Tensor::new(&[[10f32, -3.0, 0.25]], &candle_core::Device::Cpu).unwrap();
        let y = linear_residual(&x, &w, Some(&b), &residual).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![11.5, 0.0, 3.25]]);
    }
}
