//! The SGD step of an f32 CPU parameter in one parallel pass (and of a CUDA one in one kernel,
//! `cuda.rs`, the same op's CUDA half).

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{FusedStep, SgdSettings, SgdUpdate};

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// The new parameter and momentum buffer (momentum must not be 0).
pub(super) fn sgd_update(param: &Tensor, grad: &Tensor, buffer: Option<&Tensor>, settings: SgdSettings) -> Result<SgdUpdate> {
    let op = FusedStep::new(settings);
    let (flat_param, grad) = (param.contiguous()?, grad.contiguous()?);
    // (2, n): the new parameter, then the new momentum buffer.
    let updated = match buffer {
        Some(buffer) => flat_param.apply_op3_no_bwd(&grad, &buffer.contiguous()?, &op)?,
        None => flat_param.apply_op2_no_bwd(&grad, &op)?,
    };
    Ok(SgdUpdate { param: updated.get(0)?.reshape(param.shape())?, buffer: Some(updated.get(1)?.reshape(param.shape())?) })
}

impl FusedStep {
    fn run(&self, param: &[f32], grad: &[f32], buffer: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let n = param.len();
        if grad.len() != n || buffer.is_some_and(|b| b.len() != n) {
            candle_core::bail!("sgd: a parameter of {n} values got {} gradients", grad.len());
        }
        // Zeroed in parallel: `vec![0f32; 2 * n]` was a single-threaded pass over both halves.
        let mut out = crate::parallel_output::zeros(2 * n, 0);
        let (new_param, new_buffer) = out.split_at_mut(n);
        new_param.par_chunks_mut(CHUNK).zip(new_buffer.par_chunks_mut(CHUNK)).enumerate().for_each(|(chunk, (p_out, b_out))| {
            let range = chunk * CHUNK..chunk * CHUNK + p_out.len();
            let (p, g, b) = (&param[range.clone()], &grad[range.clone()], buffer.map(|b| &b[range]));
            for (i, (p_out, b_out)) in p_out.iter_mut().zip(b_out.iter_mut()).enumerate() {
                let mut g = if self.weight_decay != 0.0 { g[i] + p[i] * self.weight_decay } else { g[i] };
                let b = match b {
                    Some(b) => b[i] * self.momentum + g,
                    None => g,
                };
                g = if self.nesterov { g + b * self.momentum } else { b };
                *p_out = p[i] - g * self.learning_rate;
                *b_out = b;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::kernel_input::f32_slice(storage, layout, "sgd", what)
}

impl CustomOp2 for FusedStep {
    fn name(&self) -> &'static str {
        "sgd-first-step"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(f32_slice(s1, l1, "the parameter")?, f32_slice(s2, l2, "the gradient")?, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        super::cuda::step(self, (s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for FusedStep {
    fn name(&self) -> &'static str {
        "sgd-step"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let buffer = f32_slice(s3, l3, "the momentum buffer")?;
        self.run(f32_slice(s1, l1, "the parameter")?, f32_slice(s2, l2, "the gradient")?, Some(buffer))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        super::cuda::step(self, (s1, l1), (s2, l2), Some((s3, l3)))
    }
}
