//! What the CUDA halves of the ops share (the CUDA counterpart of `kernel_input`): an operand's
//! CUDA storage as a typed, contiguous view or an error naming the op and the operand; driver
//! errors as candle errors naming the op; and the `MEDXFER_CUDA_<OP>=candle` switches that put
//! candle's path back for a measurement.

use std::sync::OnceLock;

use candle_core::Layout;
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use cudarc::driver::{CudaView, DriverError};

/// The `T` values of `storage` under `layout`, which must be contiguous.
pub(crate) fn input_view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let Ok(slice) = storage.as_cuda_slice::<T>() else {
        candle_core::bail!(
            "{op}: {what} must be {}, not {:?}",
            std::any::type_name::<T>(),
            candle_core::backend::BackendStorage::dtype(storage)
        )
    };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{op}: {what} must be contiguous") };
    Ok(slice.slice(start..end))
}

/// A CUDA driver error (a launch, an allocation) as candle's, naming the op.
pub(crate) fn driver_error(op: &'static str) -> impl Fn(DriverError) -> candle_core::Error {
    move |error| candle_core::Error::Msg(format!("{op}: CUDA driver: {error:?}"))
}

/// Whether the environment variable `variable` is `candle`, read once per process (`switch`
/// caches it): the op then takes candle's path, to measure what its own kernel gains.
pub(crate) fn candle_requested(switch: &'static OnceLock<bool>, variable: &str) -> bool {
    *switch.get_or_init(|| std::env::var(variable).is_ok_and(|v| v == "candle"))
}
