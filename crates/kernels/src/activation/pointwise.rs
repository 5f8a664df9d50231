//! Elementwise activations whose backward pass needs only their input (GELU, SiLU), each as one
//! graph node: one parallel pass each way on the CPU in f32, one kernel each way on a CUDA
//! device in f32 (`cuda.rs`). candle's unary ops run on one thread on the CPU, and its autograd
//! differentiates GELU through five tensor ops and SiLU through eight, each a pass over the
//! activation with an output of its size.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::kernel_input::f32_slice;
use crate::parallel_output::{Start, build_in_chunks};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// An activation y = f(x) applied to each value, with dx = dy f'(x).
pub(super) trait Pointwise: Copy + Send + Sync + 'static {
    /// The forward op's name in candle's graph (and in errors); the backward op's.
    const NAMES: (&'static str, &'static str);
    /// The CUDA kernels each way (`cuda.rs`'s source).
    #[cfg(feature = "cuda")]
    const CUDA_KERNELS: (&'static str, &'static str);
    /// f(x).
    fn value(x: f32) -> f32;
    /// f'(x).
    fn slope(x: f32) -> f32;
}

/// The activation of a contiguous f32 tensor on the CPU or a CUDA device, as one graph node.
pub(super) fn apply<A: Pointwise>(x: &Tensor, activation: A) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Forward(activation))
}

struct Forward<A>(A);

impl<A: Pointwise> CustomOp1 for Forward<A> {
    fn name(&self) -> &'static str {
        A::NAMES.0
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, A::NAMES.0, "the input")?;
        // Each chunk is zeroed and then written by one task, in its cache (`parallel_output`):
        // copying x to overwrite it in place was a pass on one thread over a fresh buffer that
        // cost more than the activation itself.
        let y = build_in_chunks(x.len(), CHUNK, Start::Zeros, |index, out| {
            crate::elementwise::map(out, &x[index * CHUNK..][..out.len()], A::value);
        })?;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        super::cuda::elementwise(A::CUDA_KERNELS.0, &[(storage, layout, "the input")], layout.shape())
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(&arg.contiguous()?, &Backward(self.0))?))
    }
}

/// dy * f'(x).
struct Backward<A>(A);

impl<A: Pointwise> CustomOp2 for Backward<A> {
    fn name(&self) -> &'static str {
        A::NAMES.1
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, A::NAMES.1, "the gradient")?;
        let x = f32_slice(s2, l2, A::NAMES.1, "the input")?;
        if dy.len() != x.len() {
            candle_core::bail!("{}: {} gradients for {} inputs", A::NAMES.1, dy.len(), x.len());
        }
        let dx = build_in_chunks(x.len(), CHUNK, Start::Zeros, |index, out| {
            let (g, input) = (&dy[index * CHUNK..][..out.len()], &x[index * CHUNK..][..out.len()]);
            crate::elementwise::map2(out, g, input, |g, v| g * A::slope(v));
        })?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        super::cuda::elementwise(A::CUDA_KERNELS.1, &[(s1, l1, "the gradient"), (s2, l2, "the input")], l1.shape())
    }
}
