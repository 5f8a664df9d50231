//! The CUDA half of [`super::Upload`]: two page-locked buffers used in turn, each with an event
//! recorded after its last copy, so the host writes into a buffer only once the device has read
//! it out.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::cuda_backend::CudaStorage;
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};
use cudarc::driver::{CudaEvent, PinnedHostSlice};
use rayon::prelude::*;

use crate::cuda_input::{candle_requested, driver_error};

/// An f32 CPU tensor bound for a CUDA device; `MEDXFER_CUDA_UPLOAD=candle` keeps candle's
/// `to_device`, to measure.
pub(super) fn applies(tensor: &Tensor, device: &Device) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_UPLOAD")
        && device.is_cuda()
        && tensor.device().is_cpu()
        && tensor.dtype() == DType::F32
        && tensor.elem_count() > 0
}

/// One page-locked buffer and the event recorded after the copy that last read it.
#[derive(Default)]
struct Buffer {
    host: Option<PinnedHostSlice<f32>>,
    copied: Option<CudaEvent>,
}

impl Buffer {
    /// Waits until the device has read the buffer's last batch out (none queued: at once).
    fn wait_until_read(&mut self) -> candle_core::Result<()> {
        match self.copied.take() {
            Some(event) => event.synchronize().map_err(driver_error("upload")),
            None => Ok(()),
        }
    }
}

/// Two buffers, used in turn: the host fills one while the other's copy may still be queued.
#[derive(Default)]
pub(super) struct PinnedBuffers {
    buffers: [Buffer; 2],
    turn: usize,
    /// The driver refused page-locked memory once: batches go by `to_device` from then on.
    refused: bool,
}

/// Values copied by one task when filling a buffer: large enough that a task's start costs
/// nothing beside it.
const FILL_CHUNK: usize = 1 << 20;

impl PinnedBuffers {
    pub(super) fn upload(&mut self, tensor: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
        let Device::Cuda(cuda) = device else { candle_core::bail!("upload: not a CUDA device") };
        if self.refused {
            return tensor.to_device(device);
        }
        let tensor = tensor.contiguous()?;
        let (storage, layout) = tensor.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("upload: the batch is not on the CPU") };
        let values = crate::kernel_input::f32_slice(cpu, layout, "upload", "the batch")?;
        let n = values.len();
        let stream = cuda.cuda_stream();
        let buffer = &mut self.buffers[self.turn];
        self.turn ^= 1;
        buffer.wait_until_read()?;
        if buffer.host.as_ref().is_none_or(|host| host.len() < n) {
            buffer.host = None;
            // SAFETY: the buffer's values are written (below) before any copy reads them.
            match unsafe { stream.context().alloc_pinned::<f32>(n) } {
                Ok(host) => buffer.host = Some(host),
                Err(error) => {
                    // The same values the slower way, rather than a failed run.
                    eprintln!("medxfer: no page-locked host memory for batches ({error:?}); copying them from pageable memory");
                    self.refused = true;
                    return tensor.to_device(device);
                }
            }
        }
        let Some(host) = buffer.host.as_mut() else { candle_core::bail!("upload: no buffer") };
        // No copy of this buffer is queued (waited for above), so its own event has nothing to
        // wait for.
        let pinned = &mut host.as_mut_slice().map_err(driver_error("upload"))?[..n];
        pinned.par_chunks_mut(FILL_CHUNK).zip(values.par_chunks(FILL_CHUNK)).for_each(|(to, from)| to.copy_from_slice(from));
        // SAFETY: the copy below writes every element before anything reads it.
        let mut on_device = unsafe { stream.alloc::<f32>(n) }.map_err(driver_error("upload"))?;
        // From page-locked memory the copy is queued and the host goes on; the buffer is not
        // written again until the event recorded after it has passed (`wait_until_read`).
        stream.memcpy_htod(&*pinned, &mut on_device).map_err(driver_error("upload"))?;
        buffer.copied = Some(stream.record_event(None).map_err(driver_error("upload"))?);
        let storage = CudaStorage::wrap_cuda_slice(on_device, cuda.clone());
        Ok(Tensor::from_storage(Storage::Cuda(storage), tensor.shape().clone(), BackpropOp::none(), false))
    }
}

impl Drop for PinnedBuffers {
    /// A buffer's memory is freed only after the copy reading it has run.
    fn drop(&mut self) {
        for buffer in &mut self.buffers {
            let _ = buffer.wait_until_read();
        }
    }
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Upload;
    use crate::test_tensors::NormalTensors;

    /// Batches of several sizes, one after the other with nothing read in between (so both
    /// buffers are reused while copies may be queued, and grown), each read back equal to the
    /// bit; labels (u32) and an empty batch take candle's path.
    #[test]
    fn batches_arrive_on_the_gpu_to_the_bit() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(41);
        let mut upload = Upload::new();
        let batches: Vec<_> = [(4usize, 3usize, 32usize), (4, 3, 32), (2, 3, 32), (8, 3, 64), (1, 3, 8), (8, 3, 64)]
            .into_iter()
            .map(|shape| random.draw(0.0, 1.0, shape))
            .collect();
        let moved: Vec<_> = batches.iter().map(|batch| upload.to_device(batch, &gpu).unwrap()).collect();
        for (batch, on_gpu) in batches.iter().zip(&moved) {
            assert!(on_gpu.device().is_cuda());
            assert_eq!(on_gpu.dims(), batch.dims());
            let back = on_gpu.to_device(&candle_core::Device::Cpu).unwrap();
            let (expected, actual) =
                (batch.flatten_all().unwrap().to_vec1::<f32>().unwrap(), back.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert!(
                expected.iter().zip(&actual).all(|(a, b)| a.to_bits() == b.to_bits()),
                "a batch of {:?} changed on its way",
                batch.dims()
            );
        }
        let labels = candle_core::Tensor::new(&[3u32, 1, 2], &candle_core::Device::Cpu).unwrap();
        assert_eq!(upload.to_device(&labels, &gpu).unwrap().to_vec1::<u32>().unwrap(), [3, 1, 2]);
        let empty = candle_core::Tensor::zeros((0, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        assert_eq!(upload.to_device(&empty, &gpu).unwrap().dims(), [0, 3]);
    }
}
