//! Which tensors the CPU kernels take (f32 on the CPU), and what they read: a candle CPU storage
//! as a contiguous f32 slice, or an error naming the kernel and the operand.

use candle_core::{CpuStorage, DType, Layout, Tensor};

/// Whether `t` is an f32 tensor on the CPU, where the workspace's own kernels run (other
/// devices and dtypes take candle's ops).
pub(crate) fn is_f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The f32 values of `storage` under `layout`, which must be contiguous.
pub(crate) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, kernel: &str, operand: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{kernel}: {operand} must be f32") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{kernel}: {operand} must be contiguous") };
    Ok(&data[start..end])
}
