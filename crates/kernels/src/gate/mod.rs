//! Squeeze-excitation's gate: x (B, C, H, W) times a per-(image, channel) gate (B, C, 1, 1), as
//! one graph node each way.
//!
//! candle's `broadcast_mul` is a strided pass forward (index arithmetic per value, over a strides
//! array copied to the device on a GPU), and backward a
//! second strided product for dx, a full-size product dy·x and a reduction of it for the gate:
//! three passes and two activation-size temporaries, at every SE block of an EfficientNet (the
//! early ones on its widest maps). Here the forward pass is one parallel pass on the CPU (one
//! kernel on a GPU); backward, dx is the same op on dy, and each gate's gradient is its plane's
//! sum of dy·x. On the CPU that sum is candle's own reduction of the products, so the CPU keeps
//! the bits of the broadcast product it replaces (a run resumed across this change continues as
//! it would have); on a GPU it is one block per plane in f64 (`cuda.rs`).

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::kernel_input::f32_slice;
use crate::parallel_output::{Start, build_in_chunks};

/// x * gate for x (B, C, H, W) and gate (B, C, 1, 1), differentiable in both.
pub fn channel_gate(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (batch, channels, _, _) = x.dims4()?;
    if gate.dims() != [batch, channels, 1, 1] {
        candle_core::bail!(
            "channel gate: a gate of shape {:?} for an input of shape {:?}, ({batch}, {channels}, 1, 1) expected",
            gate.dims(),
            x.dims()
        );
    }
    if applies(x, gate) {
        return x.contiguous()?.apply_op2(&gate.contiguous()?, Gate);
    }
    x.broadcast_mul(gate)
}

/// f32, both on the CPU or both on one CUDA device (`MEDXFER_CUDA_GATE=candle` keeps candle's
/// ops there, to measure), and not empty.
fn applies(x: &Tensor, gate: &Tensor) -> bool {
    let f32_pair = x.dtype() == DType::F32 && gate.dtype() == DType::F32 && x.elem_count() > 0;
    let device = x.device().same_device(gate.device()) && (x.device().is_cpu() || cuda_applies(x));
    f32_pair && device
}

fn cuda_applies(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    return cuda::applies(x);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        false
    }
}

/// Planes (B·C) and values per plane of a (B, C, H, W) layout.
fn planes(layout: &Layout) -> Result<(usize, usize)> {
    let (batch, channels, height, width) = layout.shape().dims4()?;
    Ok((batch * channels, height * width))
}

/// out = x * gate, plane by plane.
struct Gate;

impl CustomOp2 for Gate {
    fn name(&self) -> &'static str {
        "channel-gate"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, plane) = planes(l1)?;
        let x = f32_slice(s1, l1, self.name(), "the input")?;
        let gate = f32_slice(s2, l2, self.name(), "the gate")?;
        if gate.len() != planes {
            candle_core::bail!("{}: {} gates for {planes} planes", self.name(), gate.len());
        }
        let out = build_in_chunks(x.len(), plane, Start::Zeros, |p, out| {
            let g = gate[p];
            crate::elementwise::map(out, &x[p * plane..][..out.len()], |v| v * g);
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda::forward((s1, l1), (s2, l2))
    }

    fn bwd(&self, x: &Tensor, gate: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_x = grad.apply_op2_no_bwd(gate, &Gate)?;
        let grad_gate = grad.apply_op2_no_bwd(&x.contiguous()?, &GateGradient)?;
        Ok((Some(grad_x), Some(grad_gate)))
    }
}

/// Each gate's gradient: the sum over its plane of dy * x, (B, C, 1, 1).
struct GateGradient;

impl CustomOp2 for GateGradient {
    fn name(&self) -> &'static str {
        "channel-gate-gradient"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, plane) = planes(l1)?;
        let dy = f32_slice(s1, l1, self.name(), "the gradient")?;
        let x = f32_slice(s2, l2, self.name(), "the input")?;
        if x.len() != dy.len() {
            candle_core::bail!("{}: {} inputs for {} gradients", self.name(), x.len(), dy.len());
        }
        if planes * plane != dy.len() {
            candle_core::bail!("{}: {} gradients for {planes} planes of {plane}", self.name(), dy.len());
        }
        // The products in parallel (each one rounding, as candle's product), then candle's own
        // sum over each plane: the order, and so the bits, of the broadcast product's backward.
        let products = build_in_chunks(dy.len(), plane, Start::Zeros, |p, out| {
            crate::elementwise::map2(out, &dy[p * plane..][..out.len()], &x[p * plane..][..out.len()], |g, v| g * v);
        })?;
        let sums = Tensor::from_vec(products, l1.shape(), &candle_core::Device::Cpu)?.sum_keepdim((2, 3))?;
        let shape = sums.shape().clone();
        Ok((CpuStorage::F32(sums.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda::gradient((s1, l1), (s2, l2))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
        f64::from(crate::test_tensors::max_difference(&a.to_dtype(DType::F64).unwrap(), &b.to_dtype(DType::F64).unwrap()))
    }

    /// The op and both gradients against candle's broadcast product in f64, at planes shorter
    /// than the dot product's 8 lanes and longer, and a 1x1 plane.
    #[test]
    fn the_gate_and_its_gradients_match_candles_broadcast_product() {
        let mut random = crate::test_tensors::NormalTensors::new(41);
        for shape in [(2usize, 3usize, 5usize, 7usize), (3, 4, 1, 1), (2, 2, 16, 16)] {
            let x = random.draw(0.0, 1.0, shape);
            let gate = random.draw(0.5, 0.3, (shape.0, shape.1, 1, 1));
            let upstream = random.draw(0.0, 1.0, shape);
            let (x32, g32) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&gate).unwrap());
            let wide = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
            let (x64, g64) = (wide(&x), wide(&gate));
            let ours = channel_gate(x32.as_tensor(), g32.as_tensor()).unwrap();
            let reference = x64.as_tensor().broadcast_mul(g64.as_tensor()).unwrap();
            assert!(max_difference(&ours.to_dtype(DType::F64).unwrap(), &reference) < 1e-6, "{shape:?} forward");
            let our_grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let reference_grads = (&reference * upstream.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, ours, theirs) in [("input", &x32, &x64), ("gate", &g32, &g64)] {
                let ours = our_grads.get(ours.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                let difference = max_difference(&ours, reference_grads.get(theirs.as_tensor()).unwrap());
                assert!(difference < 1e-5, "{shape:?} {name} gradient: {difference}");
            }
        }
    }

    /// In f32 the op computes the bits of candle's broadcast product and of both its gradients:
    /// a CPU run keeps its results across this op's introduction.
    #[test]
    fn the_gate_keeps_the_bits_of_candles_broadcast_product() {
        let mut random = crate::test_tensors::NormalTensors::new(42);
        for shape in [(2usize, 3usize, 5usize, 7usize), (2, 4, 28, 28), (3, 2, 1, 1)] {
            let (x, gate, upstream) =
                (random.draw(0.0, 1.0, shape), random.draw(0.5, 0.3, (shape.0, shape.1, 1, 1)), random.draw(0.0, 1.0, shape));
            let run = |product: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
                let (xv, gv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&gate).unwrap());
                let y = product(xv.as_tensor(), gv.as_tensor());
                let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                [y, grads.get(xv.as_tensor()).unwrap().clone(), grads.get(gv.as_tensor()).unwrap().clone()]
                    .map(|t| crate::test_tensors::bits(&t))
            };
            let ours = run(&|x, g| channel_gate(x, g).unwrap());
            let candle = run(&|x, g| x.broadcast_mul(g).unwrap());
            for (what, (a, b)) in ["product", "input gradient", "gate gradient"].iter().zip(ours.iter().zip(&candle)) {
                assert!(a == b, "{shape:?}: the {what} differs from candle's");
            }
        }
    }

    /// By hand: a gate of 2 doubles its plane; the gate's gradient is the plane's sum of dy·x.
    #[test]
    fn a_hand_computed_gate() {
        let x = Var::from_tensor(&Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap()).unwrap();
        let gate = Var::from_tensor(&Tensor::new(&[[[[2f32]]]], &Device::Cpu).unwrap()).unwrap();
        let y = channel_gate(x.as_tensor(), gate.as_tensor()).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [2.0, 4.0, 6.0, 8.0]);
        let upstream = Tensor::new(&[[[[1f32, 0.0], [0.5, -1.0]]]], &Device::Cpu).unwrap();
        let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), [2.0, 0.0, 1.0, -2.0]);
        // 1·1 + 2·0 + 3·0.5 + 4·(-1) = -1.5
        assert_eq!(grads.get(gate.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), [-1.5]);
    }

    #[test]
    fn a_gate_of_the_wrong_shape_is_an_error() {
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let error = channel_gate(&x, &Tensor::zeros((2, 4, 1, 1), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
        assert!(error.contains("[2, 4, 1, 1]") && error.contains("(2, 3, 1, 1) expected"), "{error}");
    }
}
