//! The running estimates' update after a train-mode batch, in place: one pass per estimate on the
//! CPU and one kernel on a CUDA device (`cuda.rs`'s `bn_running_update`).
//!
//! As candle's ops it was, per estimate, two scalings, an add and the copy `Var::set` makes: four
//! small kernels and three allocations on a GPU, for each of a network's BatchNorm layers (53 in
//! a ResNet-50, 120 in a DenseNet-121) at every step. The operations are the same, in the same
//! order (each product rounded, then the sum: no fused multiply-add), so the estimates keep their
//! bits.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};

use super::BatchNormOutput;

/// running = (1 - momentum) running + momentum batch, in place, for the mean and the unbiased
/// variance: PyTorch's update of `running_mean` and `running_var`.
pub fn update_running_statistics(running_mean: &Var, running_var: &Var, batch: &BatchNormOutput, momentum: f64) -> Result<()> {
    let update = RunningUpdate { keep: (1.0 - momentum) as f32, take: momentum as f32 };
    for (running, value) in [(running_mean, &batch.mean), (running_var, &batch.unbiased_var)] {
        if running.dims() != value.dims() {
            candle_core::bail!(
                "batch norm running update: a running estimate of shape {:?} for a batch estimate of shape {:?}",
                running.dims(),
                value.dims()
            );
        }
        if in_place(running.as_tensor(), value) {
            running.as_tensor().inplace_op2(value, &update)?;
        } else {
            running.set(&((running.as_tensor() * (1.0 - momentum))? + (value * momentum)?)?)?;
        }
    }
    Ok(())
}

/// f32 estimates and batch values of one size on the CPU, or on one CUDA device whose kernels are
/// in use; others take candle's ops.
fn in_place(running: &Tensor, value: &Tensor) -> bool {
    let f32_pair = running.dtype() == DType::F32 && value.dtype() == DType::F32;
    let device = running.device().same_device(value.device())
        && (running.device().is_cpu() || (running.device().is_cuda() && cuda_kernels_enabled()));
    f32_pair && device && running.is_contiguous() && running.elem_count() > 0
}

fn cuda_kernels_enabled() -> bool {
    #[cfg(feature = "cuda")]
    return super::cuda::kernels_enabled();
    #[cfg(not(feature = "cuda"))]
    false
}

/// running = running keep + batch take.
struct RunningUpdate {
    keep: f32,
    take: f32,
}

impl InplaceOp2 for RunningUpdate {
    fn name(&self) -> &'static str {
        "batch-norm-running-update"
    }

    fn cpu_fwd(&self, running: &mut CpuStorage, running_layout: &Layout, batch: &CpuStorage, batch_layout: &Layout) -> Result<()> {
        let batch = crate::kernel_input::f32_slice(batch, batch_layout, self.name(), "the batch's estimate")?;
        let CpuStorage::F32(values) = running else { candle_core::bail!("{}: the running estimate must be f32", self.name()) };
        let Some((start, end)) = running_layout.contiguous_offsets() else {
            candle_core::bail!("{}: the running estimate must be contiguous", self.name())
        };
        let running = &mut values[start..end];
        if running.len() != batch.len() {
            candle_core::bail!("{}: {} running values for {} batch values", self.name(), running.len(), batch.len());
        }
        for (r, &b) in running.iter_mut().zip(batch) {
            *r = *r * self.keep + b * self.take;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, running: &mut CudaStorage, running_layout: &Layout, batch: &CudaStorage, batch_layout: &Layout) -> Result<()> {
        super::cuda::running_update(running, running_layout, batch, batch_layout, self.keep, self.take)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn output(mean: &[f32], var: &[f32]) -> BatchNormOutput {
        let tensor = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        BatchNormOutput { y: tensor(&[0.0]), mean: tensor(mean), unbiased_var: tensor(var) }
    }

    /// By hand: momentum 0.25 moves each estimate a quarter of the way to the batch's.
    #[test]
    fn the_update_moves_each_estimate_toward_the_batch() {
        let (mean, var) = (Var::new(&[0.0f32, 4.0], &Device::Cpu).unwrap(), Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap());
        update_running_statistics(&mean, &var, &output(&[4.0, 0.0], &[5.0, 10.0]), 0.25).unwrap();
        assert_eq!(mean.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 3.0]);
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [2.0, 4.0]);
    }

    /// The same bits as candle's ops (the update as it was written before), over values whose
    /// products round, and for the f64 estimates candle's ops still take.
    #[test]
    fn the_update_keeps_the_bits_of_candles_ops() {
        let mut random = crate::test_tensors::NormalTensors::new(31);
        let (running, batch) = (random.draw(0.3, 1.7, 257), random.draw(-0.2, 2.3, 257));
        let momentum = 0.1;
        let candle = ((&running * (1.0 - momentum)).unwrap() + (&batch * momentum).unwrap()).unwrap();
        let (mean, var) = (Var::from_tensor(&running).unwrap(), Var::from_tensor(&running).unwrap());
        let out = BatchNormOutput { y: batch.clone(), mean: batch.clone(), unbiased_var: batch.clone() };
        update_running_statistics(&mean, &var, &out, momentum).unwrap();
        for updated in [&mean, &var] {
            assert_eq!(crate::test_tensors::bits(updated.as_tensor()), crate::test_tensors::bits(&candle));
        }
        let wide = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
        let (mean, var) = (wide(&running), wide(&running));
        let out = BatchNormOutput {
            y: batch.clone(),
            mean: batch.to_dtype(DType::F64).unwrap(),
            unbiased_var: batch.to_dtype(DType::F64).unwrap(),
        };
        update_running_statistics(&mean, &var, &out, momentum).unwrap();
        let expected = ((running.to_dtype(DType::F64).unwrap() * (1.0 - momentum)).unwrap()
            + (batch.to_dtype(DType::F64).unwrap() * momentum).unwrap())
        .unwrap();
        assert_eq!(mean.as_tensor().to_vec1::<f64>().unwrap(), expected.to_vec1::<f64>().unwrap());
    }

    #[test]
    fn estimates_of_another_size_are_an_error() {
        let (mean, var) = (Var::new(&[0.0f32, 4.0], &Device::Cpu).unwrap(), Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap());
        let error = update_running_statistics(&mean, &var, &output(&[4.0, 0.0, 1.0], &[5.0, 10.0, 1.0]), 0.25).unwrap_err();
        assert!(error.to_string().contains("running estimate of shape [2] for a batch estimate of shape [3]"), "{error}");
    }
}
