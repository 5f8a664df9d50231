//! The CUDA kernels the workspace writes itself, compiled from their C source by NVRTC (which
//! candle's CUDA backend links anyway) the first time a process needs them, and loaded through
//! candle's per-device module cache: no nvcc at build time, and PTX for the driver at hand.

use std::sync::OnceLock;

use candle_core::cuda_backend::CudaDevice;
use cudarc::driver::CudaFunction;

/// One source file's kernels.
pub(crate) struct NvrtcModule {
    name: &'static str,
    source: &'static str,
    ptx: OnceLock<Result<String, String>>,
}

impl NvrtcModule {
    pub(crate) const fn new(name: &'static str, source: &'static str) -> Self {
        NvrtcModule { name, source, ptx: OnceLock::new() }
    }

    /// The kernel `function` on `device` (launched on `device.cuda_stream()`), compiling and
    /// loading the module the first time.
    pub(crate) fn function(&self, device: &CudaDevice, function: &str) -> candle_core::Result<CudaFunction> {
        let ptx = self
            .ptx
            .get_or_init(|| cudarc::nvrtc::compile_ptx(self.source).map(|p| p.to_src()).map_err(|e| format!("{e:?}")))
            .as_deref()
            .map_err(|e| candle_core::Error::Msg(format!("{}: NVRTC could not compile the kernels: {e}", self.name)))?;
        Ok(device.get_or_load_custom_func(function, self.name, ptx)?.into_cuda_function())
    }
}
