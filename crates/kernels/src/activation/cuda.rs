//! GELU's CUDA halves (the ops are `gelu.rs`'s): one elementwise kernel each way, with CUDA's
//! exact `erff`, where candle differentiates its `gelu_erf` through five tensor ops.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device; `MEDXFER_CUDA_GELU=candle` keeps candle's op, to measure.
pub(super) fn applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_GELU") && x.device().is_cuda() && x.dtype() == DType::F32
}

const SOURCE: &str = r#"
extern "C" __global__ void gelu_forward(const float* __restrict__ x, float* __restrict__ y, unsigned n) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// dx = dy (Phi(x) + x phi(x)).
extern "C" __global__ void gelu_backward(const float* __restrict__ dy, const float* __restrict__ x,
                                         float* __restrict__ dx, unsigned n) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = expf(-0.5f * v * v) * 0.3989422804014327f;
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_gelu", SOURCE);

/// Runs `function` over `inputs` (each `n` f32 values) into a new output of `n` values.
fn elementwise(function: &str, inputs: &[(&CudaStorage, &Layout, &str)], shape: &Shape) -> candle_core::Result<(CudaStorage, Shape)> {
    let device = inputs[0].0.device();
    let stream = device.cuda_stream();
    let n = shape.elem_count();
    let views = inputs.iter().map(|(s, l, what)| input_view::<f32>(s, l, "gelu", what)).collect::<candle_core::Result<Vec<_>>>()?;
    if views.iter().any(|v| v.len() != n) || n > u32::MAX as usize {
        candle_core::bail!("gelu: operands of {:?} values for a shape {shape:?}", views.iter().map(|v| v.len()).collect::<Vec<_>>());
    }
    // SAFETY: the kernel writes all n values before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(n) }?;
    let kernel = KERNELS.function(device, function)?;
    let count = n as u32;
    let mut launch = stream.launch_builder(&kernel);
    for v in &views {
        launch.arg(v);
    }
    launch.arg(&mut out).arg(&count);
    let blocks = count.div_ceil(256).clamp(1, 65_535 * 8);
    let grid = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the parameters match the kernel's (its inputs, the output, n), each n f32 values.
    unsafe { launch.launch(grid) }.map_err(driver_error("gelu kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), shape.clone()))
}

pub(super) fn forward(x: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
    elementwise("gelu_forward", &[(x, layout, "the input")], layout.shape())
}

pub(super) fn backward(
    dy: &CudaStorage,
    dy_layout: &Layout,
    x: &CudaStorage,
    x_layout: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    elementwise("gelu_backward", &[(dy, dy_layout, "the gradient"), (x, x_layout, "the input")], dy_layout.shape())
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use candle_core::{Device, Var};

    use crate::test_tensors::max_abs;

    /// Forward and backward against the CPU kernel over [-8, 8] (the CPU's erf polynomial is
    /// within 1.5e-7 of the exact erf the GPU uses).
    #[test]
    fn the_cuda_kernels_match_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let values: Vec<f32> = (-1600..=1600).map(|i| i as f32 * 0.005).collect();
        let n = values.len();
        let upstream: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        let run = |device: &Device| {
            let x = Var::from_vec(values.clone(), (1, n), device).unwrap();
            let y = crate::gelu_erf(x.as_tensor()).unwrap();
            let up = candle_core::Tensor::from_vec(upstream.clone(), (1, n), device).unwrap();
            let grad = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap().remove(&x).unwrap();
            (y.to_device(&Device::Cpu).unwrap(), grad.to_device(&Device::Cpu).unwrap())
        };
        let ((y_cpu, g_cpu), (y_gpu, g_gpu)) = (run(&Device::Cpu), run(&gpu));
        let (forward, backward) = (max_abs((&y_cpu - &y_gpu).unwrap()), max_abs((&g_cpu - &g_gpu).unwrap()));
        eprintln!("gelu: forward {forward:.2e}, backward {backward:.2e}");
        assert!(forward < 1e-6 && backward < 1e-5, "forward {forward}, backward {backward}");
    }
}
