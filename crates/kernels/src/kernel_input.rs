//! Which tensors the CPU kernels take (f32 on the CPU), and what they read: a candle CPU storage
//! as a contiguous f32 slice, or an error naming the kernel and the operand.

use std::ops::Deref;

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

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

/// The f32 values of a tensor an op holds besides its operands, from its storage read-locked in
/// `held` (`Tensor::storage_and_layout`, kept alive by the caller for as long as it reads them):
/// None without one, an error naming the kernel and the operand where it is not on the CPU.
pub(crate) fn held_f32_slice<'a, G: Deref<Target = Storage>>(
    held: &'a Option<(G, &Layout)>,
    kernel: &str,
    operand: &str,
) -> candle_core::Result<Option<&'a [f32]>> {
    match held {
        Some((guard, layout)) => match &**guard {
            Storage::Cpu(storage) => Ok(Some(f32_slice(storage, layout, kernel, operand)?)),
            _ => candle_core::bail!("{kernel}: {operand} is not on the CPU"),
        },
        None => Ok(None),
    }
}
