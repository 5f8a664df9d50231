//! The residual add and the activation that a kernel applies to each part of its output as it
//! finishes it (`conv2d_eval`, `depthwise_conv2d_eval`), where separate ops would each be a pass
//! over the whole output into an output of their own.

use candle_core::{Result, Tensor};

use super::FusedActivation;
use crate::kernel_input::held_f32_slice;

/// `activation(output + residual)`, the residual (the output's shape) held by the op besides its
/// operands.
pub(crate) struct Epilogue {
    residual: Option<Tensor>,
    activation: FusedActivation,
}

impl Epilogue {
    pub(crate) fn new(residual: Option<&Tensor>, activation: FusedActivation) -> Result<Self> {
        Ok(Self { residual: residual.map(Tensor::contiguous).transpose()?, activation })
    }

    /// Runs `kernel` with the residual's values (read-locked for the call), an error naming
    /// `kernel_name` where the residual is not `len` f32 values on the CPU.
    pub(crate) fn with_residual<R>(&self, kernel_name: &str, len: usize, kernel: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
        let held = self.residual.as_ref().map(Tensor::storage_and_layout);
        let residual = held_f32_slice(&held, kernel_name, "the residual")?;
        if let Some(residual) = residual
            && residual.len() != len
        {
            candle_core::bail!("{kernel_name}: a residual of {} values for an output of {len}", residual.len());
        }
        kernel(residual)
    }

    /// `part = activation(part + residual[offset..])`, `part` the output's values from `offset` on
    /// and `residual` what [`Self::with_residual`] passed.
    pub(crate) fn apply(&self, residual: Option<&[f32]>, offset: usize, part: &mut [f32]) {
        self.activation.apply_in_place(part, residual.map(|residual| &residual[offset..][..part.len()]));
    }
}
