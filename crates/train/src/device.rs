//! Where a run computes: `cpu` or `cuda:N` (a build with the `cuda` feature).

use candle_core::Device;

use crate::{Error, Result};

/// Parses `cpu` or `cuda:N` and opens the device; a GPU is set up for training
/// (medxfer-kernels' `prepare_cuda_device`: no per-tensor CUDA events, freed memory kept for reuse).
pub fn parse_device(name: &str) -> Result<Device> {
    let Some(index) = gpu_index(name)? else { return Ok(Device::Cpu) };
    let device = Device::new_cuda(index)?;
    #[cfg(feature = "cuda")]
    medxfer_kernels::prepare_cuda_device(&device)?;
    Ok(device)
}

/// Checks a `--device` name without opening the device: `cpu`, or `cuda:N` in a build with
/// CUDA. For commands that do other work before they open it (the demo's pretraining, a
/// benchmark's Python side), so that a build without CUDA is named first.
pub fn check_device_name(name: &str) -> Result<()> {
    gpu_index(name).map(|_| ())
}

/// None for `cpu`, the index of `cuda:N` (plain `cuda` is the first GPU, as in PyTorch, which
/// researchers type; it was refused); an error for anything else, and for a GPU in a build
/// without CUDA.
fn gpu_index(name: &str) -> Result<Option<usize>> {
    if name == "cpu" {
        return Ok(None);
    }
    let index = if name == "cuda" { Some(0) } else { name.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) };
    let Some(index) = index else {
        return Err(Error::Config(format!("--device {name}: expected cpu, cuda or cuda:N (cuda:0, or cuda, for the first GPU)")));
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Config(format!(
            "--device {name}: this binary was built without CUDA; rebuild with `--features cuda` (README, \"CUDA\")"
        )));
    }
    Ok(Some(index))
}

/// The most device memory tensors have held at once in this process (`None` on the CPU, or in a
/// build without CUDA).
pub fn device_memory_high_water(device: &Device) -> Result<Option<u64>> {
    #[cfg(feature = "cuda")]
    return Ok(medxfer_kernels::cuda_memory_high_water(device)?);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(None)
    }
}

/// Starts the high-water mark of [`device_memory_high_water`] again from the memory in use now
/// (nothing to do on the CPU).
pub fn reset_device_memory_high_water(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    medxfer_kernels::reset_cuda_memory_high_water(device)?;
    let _ = device;
    Ok(())
}

/// The device memory tensors hold now, once the queued work is done (`None` on the CPU, or in a
/// build without CUDA).
pub fn device_memory_in_use(device: &Device) -> Result<Option<u64>> {
    device.synchronize()?;
    #[cfg(feature = "cuda")]
    return Ok(medxfer_kernels::cuda_memory_in_use(device)?);
    #[cfg(not(feature = "cuda"))]
    Ok(None)
}

/// The largest workspace a cuDNN convolution algorithm chosen in this process needs, in bytes
/// (`None` in a build without CUDA).
pub fn largest_cudnn_workspace() -> Option<u64> {
    #[cfg(feature = "cuda")]
    return Some(medxfer_kernels::largest_cudnn_workspace() as u64);
    #[cfg(not(feature = "cuda"))]
    None
}

/// Waits until the device has finished the work queued on it (for timing; a no-op on the CPU).
pub fn synchronize(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_cpu_and_rejects_the_rest_with_the_fix() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        for refused in ["gpu0", "cuda0", "cuda:", "CUDA"] {
            let error = parse_device(refused).unwrap_err().to_string();
            assert!(error.contains("expected cpu, cuda or cuda:N"), "{refused}: {error}");
        }
        // PyTorch's plain `cuda` is the first GPU, as `cuda:0` (in a build with CUDA; without,
        // it is refused below as cuda:0 is).
        if cfg!(feature = "cuda") {
            assert_eq!(gpu_index("cuda").unwrap(), Some(0));
        }
        if !cfg!(feature = "cuda") {
            for gpu in ["cuda:0", "cuda"] {
                let error = parse_device(gpu).unwrap_err().to_string();
                assert!(error.contains("--features cuda"), "{gpu}: {error}");
            }
        }
    }
}
