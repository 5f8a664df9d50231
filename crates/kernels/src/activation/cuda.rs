//! The CUDA halves of the pointwise activations (the ops are `pointwise.rs`'s): one elementwise
//! kernel each way, GELU with CUDA's exact `erff`, SiLU with `expf`.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// GELU's kernels take x: f32 on a CUDA device, not empty; `MEDXFER_CUDA_GELU=candle` keeps
/// candle's op, to measure.
pub(super) fn gelu_applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_GELU") && is_nonempty_f32_cuda(x)
}

/// SiLU's, likewise (`MEDXFER_CUDA_SILU=candle`).
pub(super) fn silu_applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_SILU") && is_nonempty_f32_cuda(x)
}

/// f32 on a CUDA device, and not empty (a launch has no grid of zero blocks; candle's ops take
/// an empty tensor).
fn is_nonempty_f32_cuda(x: &Tensor) -> bool {
    x.device().is_cuda() && x.dtype() == DType::F32 && x.elem_count() > 0
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

// PyTorch's: x / (1 + e^-x).
extern "C" __global__ void silu_forward(const float* __restrict__ x, float* __restrict__ y, unsigned n) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = v / (1.0f + expf(-v));
    }
}

// dx = dy s (1 + x (1 - s)), s = sigmoid(x).
extern "C" __global__ void silu_backward(const float* __restrict__ dy, const float* __restrict__ x,
                                         float* __restrict__ dx, unsigned n) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = x[i];
        float s = 1.0f / (1.0f + expf(-v));
        dx[i] = dy[i] * (s * (1.0f + v * (1.0f - s)));
    }
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_activation", SOURCE);

/// Runs `function` over `inputs` (each `n` f32 values) into a new output of `n` values.
pub(super) fn elementwise(
    function: &str,
    inputs: &[(&CudaStorage, &Layout, &str)],
    shape: &Shape,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let device = inputs[0].0.device();
    let stream = device.cuda_stream();
    let n = shape.elem_count();
    let views = inputs.iter().map(|(s, l, what)| input_view::<f32>(s, l, function, what)).collect::<candle_core::Result<Vec<_>>>()?;
    if views.iter().any(|v| v.len() != n) || n > u32::MAX as usize {
        candle_core::bail!("{function}: operands of {:?} values for a shape {shape:?}", views.iter().map(|v| v.len()).collect::<Vec<_>>());
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
    unsafe { launch.launch(grid) }.map_err(driver_error("activation kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), shape.clone()))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use candle_core::{Device, Tensor, Var};

    use crate::test_tensors::max_abs;

    /// One of the public activation functions.
    type Activation = fn(&Tensor) -> candle_core::Result<Tensor>;

    /// `activation`'s output and gradient on `device` at `values`, upstream 1-7.
    fn run(activation: Activation, values: &[f32], device: &Device) -> (Tensor, Tensor) {
        let n = values.len();
        let x = Var::from_slice(values, (1, n), device).unwrap();
        let y = activation(x.as_tensor()).unwrap();
        let up = Tensor::from_vec((0..n).map(|i| 1.0 + (i % 7) as f32).collect::<Vec<f32>>(), (1, n), device).unwrap();
        let grad = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap().remove(&x).unwrap();
        (y.to_device(&Device::Cpu).unwrap(), grad.to_device(&Device::Cpu).unwrap())
    }

    /// Forward and backward of GELU over [-8, 8] and SiLU over [-30, 30] against the CPU kernels,
    /// relative to the largest value (the CPU's erf polynomial is within 1.5e-7 of the exact erf
    /// the GPU uses; its e^x and CUDA's `expf` are each within 2 ulp). SiLU's gradient may differ
    /// more: where sigmoid(x) rounds to within a few ulp of 1, one ulp of it moves x (1 - s) by
    /// x ulp(1), up to 17 · 6e-8 · 7 (the largest upstream) = 7e-6 of a largest gradient of 7.7.
    #[test]
    fn the_cuda_kernels_match_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let cases: [(&str, Activation, f32, f32); 2] = [("gelu", crate::gelu_erf, 0.005, 1e-6), ("silu", crate::silu, 0.015, 2e-6)];
        for (name, activation, step, backward_bound) in cases {
            let values: Vec<f32> = (-2000..=2000).map(|i| i as f32 * step).collect();
            let ((y_cpu, g_cpu), (y_gpu, g_gpu)) = (run(activation, &values, &Device::Cpu), run(activation, &values, &gpu));
            let relative = |a: &Tensor, b: &Tensor| max_abs((a - b).unwrap()) / max_abs(a.clone()).max(1.0);
            let (forward, backward) = (relative(&y_cpu, &y_gpu), relative(&g_cpu, &g_gpu));
            eprintln!("{name}: forward {forward:.2e}, backward {backward:.2e} (relative to the largest value)");
            assert!(forward < 1e-6 && backward < backward_bound, "{name}: forward {forward}, backward {backward}");
        }
    }
}
