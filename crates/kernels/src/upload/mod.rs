//! Batches from the host to the device as PyTorch's `DataLoader(pin_memory=True)` and
//! `.to(device, non_blocking=True)` move them: through page-locked host memory, queued behind the
//! device's work instead of waited for.
//!
//! candle's `Tensor::to_device` copies from the batch's own (pageable) memory: the driver stages
//! it through a buffer of its own, the host waits until the whole batch has gone (77 MB at batch
//! 128, 224 px), and the GPU has nothing to do meanwhile when the copy comes between a step's
//! loss read and the next step. With [`Upload`] the host writes the batch into one of two
//! page-locked buffers and queues the copy; the training loop does that while the GPU is still
//! busy with the step before (medxfer-train's loops), so the GPU goes from one step's kernels to
//! the next batch's copy and on. The values are the same bits either way. On the CPU, for other
//! dtypes, and with `MEDXFER_CUDA_UPLOAD=candle` (to measure), it is candle's `to_device`; so it
//! is, after a one-line warning, where the driver refuses page-locked memory.

#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Device, Result, Tensor};

/// Moves host tensors to a device, through page-locked buffers on a CUDA device (see the module).
/// One per loop: it keeps two buffers of the largest batch it has moved.
#[derive(Default)]
pub struct Upload {
    #[cfg(feature = "cuda")]
    pinned: cuda::PinnedBuffers,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").finish_non_exhaustive()
    }
}

impl Upload {
    /// An uploader without buffers yet (they come with the first batch).
    pub fn new() -> Self {
        Self::default()
    }

    /// `tensor` on `device`, its copy queued on the device's stream (the host does not wait
    /// for it): an f32 CPU tensor to a CUDA device through a page-locked buffer; anything else
    /// with `Tensor::to_device`.
    pub fn to_device(&mut self, tensor: &Tensor, device: &Device) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if cuda::applies(tensor, device) {
            return self.pinned.upload(tensor, device);
        }
        tensor.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::DType;

    use super::*;

    /// On the CPU it is `to_device`: the same values, every dtype.
    #[test]
    fn on_the_cpu_it_is_to_device() {
        let mut upload = Upload::new();
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().reshape((2, 3, 4)).unwrap();
        let moved = upload.to_device(&x, &Device::Cpu).unwrap();
        assert_eq!(moved.dims(), [2, 3, 4]);
        assert_eq!(moved.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let labels = Tensor::new(&[3u32, 1, 2], &Device::Cpu).unwrap();
        let moved = upload.to_device(&labels, &Device::Cpu).unwrap();
        assert_eq!((moved.dtype(), moved.to_vec1::<u32>().unwrap()), (DType::U32, vec![3, 1, 2]));
    }
}
