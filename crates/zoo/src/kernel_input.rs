//! What the CPU kernels (the zoo's, medxfer-train's SGD step) read: a candle CPU
//! storage as a contiguous f32 slice, or an error naming the kernel and the operand.

use candle_core::{CpuStorage, Layout};

/// The f32 values of `storage` under `layout`, which must be contiguous.
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, kernel: &str, operand: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{kernel}: {operand} must be f32") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{kernel}: {operand} must be contiguous") };
    Ok(&data[start..end])
}
