//! The host side of a CUDA device for training: how candle's allocations behave, and the memory
//! high-water mark the benchmark reports.
//!
//! candle allocates every op's output from the device's default stream-ordered memory pool
//! (`cuMemAllocAsync`), and cudarc makes two CUDA events per allocation to order its uses across
//! streams. With candle's single stream per device those events order nothing, yet cost a create
//! and a destroy per tensor; and the pool's default release threshold of 0 hands freed memory back
//! to the driver at every synchronisation (each step's loss read), so the next step maps it again.
//! PyTorch's caching allocator does neither. [`prepare_cuda_device`] turns the events off and
//! raises the threshold; `MEDXFER_CUDA_HOST=candle` leaves candle's defaults, to measure the
//! difference.

#![allow(unsafe_code)]

use candle_core::Device;
use cudarc::driver::result::{device, mem_pool};
use cudarc::driver::sys::CUmemPool_attribute;

use crate::cuda_input::driver_error;

/// Sets up `device` for training as described above; nothing on the CPU. Call it right after
/// opening the device, before any tensor is made on it.
pub fn prepare_cuda_device(device: &Device) -> candle_core::Result<()> {
    let Device::Cuda(cuda) = device else { return Ok(()) };
    if std::env::var("MEDXFER_CUDA_HOST").is_ok_and(|v| v == "candle") {
        return Ok(());
    }
    // Event tracking orders a buffer's uses across streams. candle's device runs every op on its
    // one stream (`CudaDevice::cuda_stream`), and the kernels' cuDNN handle is bound to it.
    // SAFETY: on one stream, stream order alone keeps a buffer's writes before its reads and its
    // free after both.
    unsafe { cuda.disable_event_tracking() };
    let pool = default_pool(device)?;
    let mut threshold = u64::MAX;
    // SAFETY: the pool is the device's own; the release threshold is a cuuint64_t, which
    // `threshold` is.
    unsafe { mem_pool::set_attribute(pool, CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&mut threshold as *mut u64).cast()) }
        .map_err(driver_error("CUDA device set-up"))?;
    Ok(())
}

/// The most device memory candle's tensors (and the convolutions' workspace) have held at once
/// since the process started or [`reset_cuda_memory_high_water`]: the default pool's used-memory
/// high-water mark, PyTorch's `max_memory_allocated` counterpart. `None` on the CPU.
pub fn cuda_memory_high_water(device: &Device) -> candle_core::Result<Option<u64>> {
    pool_bytes(device, CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

/// The device memory candle's tensors (and any convolution's workspace) hold now: the default
/// pool's used memory, PyTorch's `memory_allocated` counterpart. Read it after the device has
/// finished the queued work, or frees still queued count as held. `None` on the CPU.
pub fn cuda_memory_in_use(device: &Device) -> candle_core::Result<Option<u64>> {
    pool_bytes(device, CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
}

/// One of the default pool's byte counts (`None` on the CPU).
fn pool_bytes(device: &Device, attribute: CUmemPool_attribute) -> candle_core::Result<Option<u64>> {
    if !device.is_cuda() {
        return Ok(None);
    }
    let pool = default_pool(device)?;
    let mut bytes = 0u64;
    // SAFETY: the pool is the device's own; both attributes asked for are cuuint64_t, which
    // `bytes` is.
    unsafe { mem_pool::get_attribute(pool, attribute, (&mut bytes as *mut u64).cast()) }.map_err(driver_error("CUDA device set-up"))?;
    Ok(Some(bytes))
}

/// Starts the high-water mark again from the memory in use now.
pub fn reset_cuda_memory_high_water(device: &Device) -> candle_core::Result<()> {
    if !device.is_cuda() {
        return Ok(());
    }
    let pool = default_pool(device)?;
    let mut zero = 0u64;
    // SAFETY: the pool is the device's own; resetting the high-water mark takes a cuuint64_t 0.
    unsafe { mem_pool::set_attribute(pool, CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, (&mut zero as *mut u64).cast()) }
        .map_err(driver_error("CUDA device set-up"))?;
    Ok(())
}

fn default_pool(device: &Device) -> candle_core::Result<cudarc::driver::sys::CUmemoryPool> {
    let Device::Cuda(cuda) = device else { candle_core::bail!("not a CUDA device") };
    let stream = cuda.cuda_stream();
    stream.context().bind_to_thread().map_err(driver_error("CUDA device set-up"))?;
    // SAFETY: the device handle comes from candle's own, open context.
    unsafe { device::get_default_mem_pool(stream.context().cu_device()) }.map_err(driver_error("CUDA device set-up"))
}
