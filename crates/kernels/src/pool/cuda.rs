//! Max pooling's CUDA halves (the ops are `cpu.rs`'s): one kernel each way, where the shifted
//! views candle differentiates took about ten passes forward and as many backward over the stem's
//! (B, 64, 112, 112) activation (11.6 ms of a ResNet-50 step at batch 128 on an H200, against
//! 1.1 ms for PyTorch's backward kernel).
//!
//! The semantics are the CPU kernel's, PyTorch's: each output the maximum of its window (a NaN
//! wins), its gradient sent to the window's first maximum in row-major order (or its last NaN).
//! The backward pass gathers instead of scattering: each input sums the gradients of the outputs
//! that chose it, in row-major output order, the order the CPU kernel adds them in, so both give
//! the same bits and no atomics are needed.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::MaxPool;
use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device; `MEDXFER_CUDA_POOL=candle` keeps candle's shifted views, to measure.
pub(super) fn applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_POOL") && x.device().is_cuda() && x.dtype() == DType::F32
}

const SOURCE: &str = r#"
struct Pool { int planes, height, width, out_h, out_w, kernel, stride, padding; };

// The window's first row (column) and one past its last, clipped to the plane.
__device__ __forceinline__ int window_start(int o, const Pool& p) { return max(o * p.stride - p.padding, 0); }
__device__ __forceinline__ int window_end(int o, int len, const Pool& p) { return min(o * p.stride - p.padding + p.kernel, len); }

extern "C" __global__ void max_pool_forward(const float* __restrict__ x, float* __restrict__ y, Pool p) {
    size_t count = (size_t)p.planes * p.out_h * p.out_w;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        int ox = (int)(i % p.out_w);
        size_t t = i / p.out_w;
        int oy = (int)(t % p.out_h);
        const float* plane = x + (t / p.out_h) * p.height * p.width;
        float best = __int_as_float(0xff800000);
        for (int iy = window_start(oy, p); iy < window_end(oy, p.height, p); iy++)
            for (int ix = window_start(ox, p); ix < window_end(ox, p.width, p); ix++) {
                float v = plane[iy * p.width + ix];
                best = (v > best || isnan(v)) ? v : best;
            }
        y[i] = best;
    }
}

// dx at each input: the sum, in row-major output order, of the gradients of the outputs whose
// window chose it (its first maximum, or its last NaN).
extern "C" __global__ void max_pool_backward(const float* __restrict__ x, const float* __restrict__ y,
                                             const float* __restrict__ dy, float* __restrict__ dx, Pool p) {
    size_t count = (size_t)p.planes * p.height * p.width;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        int ix = (int)(i % p.width);
        size_t t = i / p.width;
        int iy = (int)(t % p.height);
        size_t plane_index = t / p.height;
        const float* plane = x + plane_index * p.height * p.width;
        const float* pooled = y + plane_index * p.out_h * p.out_w;
        const float* upstream = dy + plane_index * p.out_h * p.out_w;
        float value = x[i];
        // Outputs whose window covers row iy: o * stride - padding <= iy < o * stride - padding + kernel.
        int low_y = iy + p.padding - p.kernel + 1, low_x = ix + p.padding - p.kernel + 1;
        int oy0 = low_y <= 0 ? 0 : (low_y + p.stride - 1) / p.stride, oy1 = min((iy + p.padding) / p.stride, p.out_h - 1);
        int ox0 = low_x <= 0 ? 0 : (low_x + p.stride - 1) / p.stride, ox1 = min((ix + p.padding) / p.stride, p.out_w - 1);
        float sum = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++) {
                int o = oy * p.out_w + ox;
                float best = pooled[o];
                bool nan = isnan(best);
                if (nan ? !isnan(value) : value != best) continue;
                int chosen = -1;
                for (int wy = window_start(oy, p); wy < window_end(oy, p.height, p); wy++)
                    for (int wx = window_start(ox, p); wx < window_end(ox, p.width, p); wx++) {
                        float v = plane[wy * p.width + wx];
                        bool take = nan ? isnan(v) : (v == best && chosen < 0);
                        chosen = take ? wy * p.width + wx : chosen;
                    }
                if (chosen == iy * p.width + ix) sum += upstream[o];
            }
        dx[i] = sum;
    }
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_max_pool", SOURCE);

/// The kernels' sizes, laid out as their `Pool` struct.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pool {
    planes: i32,
    height: i32,
    width: i32,
    out_h: i32,
    out_w: i32,
    kernel: i32,
    stride: i32,
    padding: i32,
}

// SAFETY: `Pool` is eight i32 fields, `repr(C)`, as the kernels' struct of eight ints.
unsafe impl cudarc::driver::DeviceRepr for Pool {}

fn sizes(x: &Shape, window: &MaxPool) -> candle_core::Result<Pool> {
    let (batch, channels, height, width) = x.dims4()?;
    if height.min(width) + 2 * window.padding < window.kernel {
        candle_core::bail!("max pool: a {}x{} window does not fit an input of shape {x:?}", window.kernel, window.kernel)
    }
    let (out_h, out_w) = (window.out_len(height), window.out_len(width));
    let as_i32 = |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("max pool: input {x:?} too large")));
    Ok(Pool {
        planes: as_i32(batch * channels)?,
        height: as_i32(height)?,
        width: as_i32(width)?,
        out_h: as_i32(out_h)?,
        out_w: as_i32(out_w)?,
        kernel: as_i32(window.kernel)?,
        stride: as_i32(window.stride)?,
        padding: as_i32(window.padding)?,
    })
}

fn grid(count: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((count as u64).div_ceil(256).clamp(1, 65_535 * 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn forward(window: &MaxPool, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
    let pool = sizes(layout.shape(), window)?;
    let x = input_view::<f32>(storage, layout, "max pool", "the input")?;
    let device = storage.device();
    let (batch, channels, _, _) = layout.shape().dims4()?;
    let shape = Shape::from((batch, channels, pool.out_h as usize, pool.out_w as usize));
    // SAFETY: the kernel writes every output before anything reads it.
    let mut y = unsafe { device.alloc::<f32>(shape.elem_count()) }?;
    let kernel = KERNELS.function(device, "max_pool_forward")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(&x).arg(&mut y).arg(&pool);
    // SAFETY: x holds planes·height·width f32 values, y planes·out_h·out_w, as `pool` says; each
    // thread writes its own outputs.
    unsafe { launch.launch(grid(shape.elem_count())) }.map_err(driver_error("max pool kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(y, device.clone()), shape))
}

/// dx from the input, the pooled output and its gradient.
pub(super) fn backward(
    window: &MaxPool,
    (x, x_layout): (&CudaStorage, &Layout),
    (pooled, pooled_layout): (&CudaStorage, &Layout),
    (dy, dy_layout): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let pool = sizes(x_layout.shape(), window)?;
    let out_count = pool.planes as usize * pool.out_h as usize * pool.out_w as usize;
    let x_view = input_view::<f32>(x, x_layout, "max pool backward", "the input")?;
    let y_view = input_view::<f32>(pooled, pooled_layout, "max pool backward", "the output")?;
    let dy_view = input_view::<f32>(dy, dy_layout, "max pool backward", "the gradient")?;
    if y_view.len() != out_count || dy_view.len() != out_count {
        candle_core::bail!("max pool backward: {} gradients for an input of shape {:?}", dy_view.len(), x_layout.shape());
    }
    let device = x.device();
    let count = x_layout.shape().elem_count();
    // SAFETY: the kernel writes every input's gradient before anything reads it.
    let mut dx = unsafe { device.alloc::<f32>(count) }?;
    let kernel = KERNELS.function(device, "max_pool_backward")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(&x_view).arg(&y_view).arg(&dy_view).arg(&mut dx).arg(&pool);
    // SAFETY: x and dx hold planes·height·width f32 values, y and dy planes·out_h·out_w, as
    // `pool` says; each thread writes its own inputs' gradients.
    unsafe { launch.launch(grid(count)) }.map_err(driver_error("max pool kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(dx, device.clone()), x_layout.shape().clone()))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Tensor, Var};

    use crate::test_tensors::{NormalTensors, bits};

    /// Output and input gradient against the CPU kernel, bit for bit: a ResNet stem's shape at a
    /// small batch, odd sizes, and a ReLU'd input full of tied zeros (the first maximum wins)
    /// with a NaN planted (the last NaN wins).
    #[test]
    fn the_cuda_kernels_are_the_cpu_kernel_bit_for_bit() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(61);
        for (shape, relu) in
            [((2usize, 64usize, 112usize, 112usize), false), ((3, 5, 9, 8), true), ((1, 2, 7, 13), true), ((2, 3, 2, 3), false)]
        {
            let mut x = random.draw(0.0, 1.0, shape);
            if relu {
                x = x.relu().unwrap();
                let mut values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let middle = values.len() / 2;
                values[middle] = f32::NAN;
                x = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
            }
            let (_, _, height, width) = shape;
            let upstream = random.draw(0.0, 1.0, (shape.0, shape.1, (height - 1) / 2 + 1, (width - 1) / 2 + 1));
            let run = |device: &Device| {
                let input = Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
                let y = crate::max_pool_3x3_s2_p1(input.as_tensor()).unwrap();
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                (bits(&y), bits(grads.get(input.as_tensor()).unwrap()))
            };
            let (truth, ours) = (run(&Device::Cpu), run(&gpu));
            assert!(truth.0 == ours.0, "{shape:?}: the outputs differ");
            assert!(truth.1 == ours.1, "{shape:?}: the gradients differ");
        }
    }
}
