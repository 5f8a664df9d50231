//! Depthwise convolution's CUDA halves (the ops are `cpu.rs`'s): direct kernels, as PyTorch runs
//! an f32 depthwise convolution (its `conv_depthwise2d`, which it prefers to cuDNN's grouped
//! convolution for f32 NCHW data), taken when `MEDXFER_CUDA_DEPTHWISE=direct`; without it a CUDA
//! depthwise convolution stays one cuDNN call (`conv/cuda.rs`) until `.ci/gpu` has measured
//! which is faster.
//!
//! The forward pass and the input gradient are gathers, one thread per output (per input): each
//! sums its taps in row-major tap order, every product rounded before it is added (`__fmul_rn`,
//! `__fadd_rn`: no fused multiply-add), which are the CPU kernel's operations in its order, so
//! both compute the same bits. The weight gradient is one block per (channel, tap), its threads
//! summing strided parts of the (batch, row, column) sum in f64 and the block combining them in a
//! fixed tree: deterministic, within the CPU's f32 rounding of the exact sum, not its bits.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::Geometry;
use crate::cuda_input::{driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// Whether f32 CUDA tensors take these kernels: `MEDXFER_CUDA_DEPTHWISE=direct`, read once.
pub(super) fn applies(x: &Tensor, weight: &Tensor) -> bool {
    static DIRECT: OnceLock<bool> = OnceLock::new();
    *DIRECT.get_or_init(|| std::env::var("MEDXFER_CUDA_DEPTHWISE").is_ok_and(|v| v == "direct"))
        && x.device().is_cuda()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.elem_count() > 0
}

const SOURCE: &str = r#"
struct Depthwise { int batch, channels, height, width, out_h, out_w, kernel, stride, padding; };

// The kernels' grid: blockIdx.x a (batch, channel) plane, blockIdx.y and the thread a position
// in it, so that no thread divides a 64-bit index.

// One output: the taps inside the input, in row-major tap order, as the CPU kernel adds them.
template <int K>
__device__ void forward(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, const Depthwise& p) {
    const int k = K > 0 ? K : p.kernel;
    int o = blockIdx.y * blockDim.x + threadIdx.x;
    if (o >= p.out_h * p.out_w) return;
    int oy = o / p.out_w, ox = o - oy * p.out_w;
    size_t plane = blockIdx.x;
    const float* input = x + plane * p.height * p.width;
    const float* taps = w + (size_t)(blockIdx.x % p.channels) * k * k;
    float sum = 0.0f;
#pragma unroll
    for (int ky = 0; ky < k; ky++) {
        int iy = oy * p.stride + ky - p.padding;
        if (iy < 0 || iy >= p.height) continue;
#pragma unroll
        for (int kx = 0; kx < k; kx++) {
            int ix = ox * p.stride + kx - p.padding;
            if (ix < 0 || ix >= p.width) continue;
            sum = __fadd_rn(sum, __fmul_rn(__ldg(taps + ky * k + kx), __ldg(input + iy * p.width + ix)));
        }
    }
    y[plane * p.out_h * p.out_w + o] = sum;
}

extern "C" __global__ void depthwise_forward(const float* __restrict__ x, const float* __restrict__ w,
                                             float* __restrict__ y, Depthwise p) {
    switch (p.kernel) {
        case 3: forward<3>(x, w, y, p); break;
        case 5: forward<5>(x, w, y, p); break;
        case 7: forward<7>(x, w, y, p); break;
        default: forward<0>(x, w, y, p);
    }
}

// One input's gradient: for each tap in row-major order, the one output (if any) that read this
// input through it, as the CPU kernel scatters them.
template <int K>
__device__ void grad_input(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, const Depthwise& p) {
    const int k = K > 0 ? K : p.kernel;
    int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= p.height * p.width) return;
    int iy = i / p.width, ix = i - iy * p.width;
    size_t plane = blockIdx.x;
    const float* upstream = dy + plane * p.out_h * p.out_w;
    const float* taps = w + (size_t)(blockIdx.x % p.channels) * k * k;
    float sum = 0.0f;
#pragma unroll
    for (int ky = 0; ky < k; ky++) {
        int ty = iy + p.padding - ky;
        if (ty < 0 || ty % p.stride != 0 || ty / p.stride >= p.out_h) continue;
        int oy = ty / p.stride;
#pragma unroll
        for (int kx = 0; kx < k; kx++) {
            int tx = ix + p.padding - kx;
            if (tx < 0 || tx % p.stride != 0 || tx / p.stride >= p.out_w) continue;
            sum = __fadd_rn(sum, __fmul_rn(__ldg(taps + ky * k + kx), __ldg(upstream + oy * p.out_w + tx / p.stride)));
        }
    }
    dx[plane * p.height * p.width + i] = sum;
}

extern "C" __global__ void depthwise_grad_input(const float* __restrict__ dy, const float* __restrict__ w,
                                                float* __restrict__ dx, Depthwise p) {
    switch (p.kernel) {
        case 3: grad_input<3>(dy, w, dx, p); break;
        case 5: grad_input<5>(dy, w, dx, p); break;
        case 7: grad_input<7>(dy, w, dx, p); break;
        default: grad_input<0>(dy, w, dx, p);
    }
}

// dw[c, ky, kx] = sum over (b, oy, ox) of dy[b, c, oy, ox] x[b, c, oy s + ky - p, ox s + kx - p]:
// one block per (c, tap); each thread sums, in f64, the positions it owns (every blockDim-th) of
// every image, then a fixed tree combines the block's sums (blockDim a power of two, at most
// 1024): the same order, so the same bits, in every run.
extern "C" __global__ void depthwise_grad_weight(const float* __restrict__ x, const float* __restrict__ dy,
                                                 float* __restrict__ dw, Depthwise p) {
    __shared__ double partial[1024];
    int taps = p.kernel * p.kernel;
    int c = blockIdx.x / taps, tap = blockIdx.x - c * taps;
    int ky = tap / p.kernel, kx = tap - ky * p.kernel;
    int outputs = p.out_h * p.out_w;
    double sum = 0.0;
    for (int b = 0; b < p.batch; b++) {
        size_t plane = (size_t)b * p.channels + c;
        const float* input = x + plane * p.height * p.width;
        const float* upstream = dy + plane * outputs;
        for (int o = threadIdx.x; o < outputs; o += blockDim.x) {
            int oy = o / p.out_w, ox = o - oy * p.out_w;
            int iy = oy * p.stride + ky - p.padding, ix = ox * p.stride + kx - p.padding;
            if (iy < 0 || iy >= p.height || ix < 0 || ix >= p.width) continue;
            sum += (double)__ldg(upstream + o) * (double)__ldg(input + iy * p.width + ix);
        }
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) dw[blockIdx.x] = (float)partial[0];
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_depthwise", SOURCE);

/// The kernels' sizes, laid out as their `Depthwise` struct.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Depthwise {
    batch: i32,
    channels: i32,
    height: i32,
    width: i32,
    out_h: i32,
    out_w: i32,
    kernel: i32,
    stride: i32,
    padding: i32,
}

// SAFETY: `Depthwise` is nine i32 fields, `repr(C)`, as the kernels' struct of nine ints.
unsafe impl cudarc::driver::DeviceRepr for Depthwise {}

impl Depthwise {
    fn new(input: (usize, usize, usize, usize), geometry: &Geometry) -> candle_core::Result<Self> {
        let (batch, channels, height, width) = input;
        let as_i32 = |v: usize| {
            i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("depthwise conv: input {input:?} too large for the CUDA kernels")))
        };
        Ok(Depthwise {
            batch: as_i32(batch)?,
            channels: as_i32(channels)?,
            height: as_i32(height)?,
            width: as_i32(width)?,
            out_h: as_i32(geometry.out_height())?,
            out_w: as_i32(geometry.out_width())?,
            kernel: as_i32(geometry.kernel)?,
            stride: as_i32(geometry.stride)?,
            padding: as_i32(geometry.padding)?,
        })
    }

    fn planes(&self) -> usize {
        self.batch as usize * self.channels as usize
    }

    fn input_count(&self) -> usize {
        self.batch as usize * self.channels as usize * self.height as usize * self.width as usize
    }

    fn output_count(&self) -> usize {
        self.batch as usize * self.channels as usize * self.out_h as usize * self.out_w as usize
    }

    fn weight_count(&self) -> usize {
        self.channels as usize * self.kernel as usize * self.kernel as usize
    }

    fn output_shape(&self) -> Shape {
        Shape::from((self.batch as usize, self.channels as usize, self.out_h as usize, self.out_w as usize))
    }
}

/// One thread per position of a (batch, channel) plane of `positions`: the planes along the
/// grid's x (up to 2^31 - 1), the positions along its y and the block, which is a multiple of 32
/// up to 256.
fn per_position(planes: usize, positions: usize) -> candle_core::Result<LaunchConfig> {
    let threads = positions.next_multiple_of(32).clamp(32, 256);
    let position_blocks = positions.div_ceil(threads);
    if planes == 0 || planes > i32::MAX as usize || position_blocks > 65_535 {
        candle_core::bail!("depthwise conv: {planes} planes of {positions} positions do not fit the CUDA kernels' grid");
    }
    Ok(LaunchConfig { grid_dim: (planes as u32, position_blocks as u32, 1), block_dim: (threads as u32, 1, 1), shared_mem_bytes: 0 })
}

/// Checks that a view holds `count` values.
fn check_len(len: usize, count: usize, op: &str, what: &str, sizes: &Depthwise) -> candle_core::Result<()> {
    if len != count {
        candle_core::bail!("{op}: {what} holds {len} values, {count} expected for {sizes:?}");
    }
    Ok(())
}

/// y from x (B, C, H, W) and w (C, 1, K, K).
pub(super) fn forward(
    geometry: &Geometry,
    (x, x_layout): (&CudaStorage, &Layout),
    (w, w_layout): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    const OP: &str = "depthwise conv";
    let sizes = Depthwise::new(x_layout.shape().dims4()?, geometry)?;
    let x_view = input_view::<f32>(x, x_layout, OP, "the input")?;
    let w_view = input_view::<f32>(w, w_layout, OP, "the weight")?;
    check_len(x_view.len(), sizes.input_count(), OP, "the input", &sizes)?;
    check_len(w_view.len(), sizes.weight_count(), OP, "the weight", &sizes)?;
    let device = x.device();
    // SAFETY: the kernel writes every output before anything reads it.
    let mut y = unsafe { device.alloc::<f32>(sizes.output_count()) }?;
    let kernel = KERNELS.function(device, "depthwise_forward")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(&x_view).arg(&w_view).arg(&mut y).arg(&sizes);
    let config = per_position(sizes.planes(), sizes.out_h as usize * sizes.out_w as usize)?;
    // SAFETY: x holds B·C·H·W f32 values and w C·K·K (both checked), y B·C·OH·OW, as
    // `sizes` says; the grid has one block row per plane and each thread writes its own output.
    unsafe { launch.launch(config) }.map_err(driver_error("depthwise conv kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(y, device.clone()), sizes.output_shape()))
}

/// dx (B, C, H, W) from dy (B, C, OH, OW) and w.
pub(super) fn grad_input(
    geometry: &Geometry,
    (dy, dy_layout): (&CudaStorage, &Layout),
    (w, w_layout): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    const OP: &str = "depthwise conv input gradient";
    let (batch, channels, _, _) = dy_layout.shape().dims4()?;
    let sizes = Depthwise::new((batch, channels, geometry.height, geometry.width), geometry)?;
    let dy_view = input_view::<f32>(dy, dy_layout, OP, "the gradient")?;
    let w_view = input_view::<f32>(w, w_layout, OP, "the weight")?;
    check_len(dy_view.len(), sizes.output_count(), OP, "the gradient", &sizes)?;
    check_len(w_view.len(), sizes.weight_count(), OP, "the weight", &sizes)?;
    let device = dy.device();
    // SAFETY: the kernel writes every input's gradient before anything reads it.
    let mut dx = unsafe { device.alloc::<f32>(sizes.input_count()) }?;
    let kernel = KERNELS.function(device, "depthwise_grad_input")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(&dy_view).arg(&w_view).arg(&mut dx).arg(&sizes);
    let config = per_position(sizes.planes(), geometry.height * geometry.width)?;
    // SAFETY: dy holds B·C·OH·OW f32 values and w C·K·K (both checked), dx B·C·H·W, as `sizes`
    // says; the grid has one block row per plane and each thread writes its own input's gradient.
    unsafe { launch.launch(config) }.map_err(driver_error("depthwise conv kernel"))?;
    let shape = Shape::from((batch, channels, geometry.height, geometry.width));
    Ok((CudaStorage::wrap_cuda_slice(dx, device.clone()), shape))
}

/// dw (C, 1, K, K) from x (B, C, H, W) and dy (B, C, OH, OW).
pub(super) fn grad_weight(
    geometry: &Geometry,
    (x, x_layout): (&CudaStorage, &Layout),
    (dy, dy_layout): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    const OP: &str = "depthwise conv weight gradient";
    let sizes = Depthwise::new(x_layout.shape().dims4()?, geometry)?;
    let x_view = input_view::<f32>(x, x_layout, OP, "the input")?;
    let dy_view = input_view::<f32>(dy, dy_layout, OP, "the gradient")?;
    check_len(x_view.len(), sizes.input_count(), OP, "the input", &sizes)?;
    check_len(dy_view.len(), sizes.output_count(), OP, "the gradient", &sizes)?;
    let blocks = u32::try_from(sizes.weight_count())
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: {} weights, too many blocks", sizes.weight_count())))?;
    let device = x.device();
    // SAFETY: the kernel writes every weight's gradient (one block each) before anything reads it.
    let mut dw = unsafe { device.alloc::<f32>(sizes.weight_count()) }?;
    let kernel = KERNELS.function(device, "depthwise_grad_weight")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(&x_view).arg(&dy_view).arg(&mut dw).arg(&sizes);
    // Enough threads to cover a plane's positions; a power of two, as the kernel's tree needs.
    let threads = (sizes.out_h as usize * sizes.out_w as usize).next_power_of_two().clamp(32, 512) as u32;
    let config = LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: x holds B·C·H·W f32 values and dy B·C·OH·OW (both checked), dw C·K·K,
    // one per block, as `sizes` says; the block size is a power of two within the kernel's
    // 1024-entry shared array.
    unsafe { launch.launch(config) }.map_err(driver_error("depthwise conv kernel"))?;
    let shape = Shape::from((sizes.channels as usize, 1, geometry.kernel, geometry.kernel));
    Ok((CudaStorage::wrap_cuda_slice(dw, device.clone()), shape))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Var};

    use crate::test_tensors::{NormalTensors, bits, max_abs};

    /// The forward pass and the input gradient against the CPU kernel bit for bit, the weight
    /// gradient within f32 rounding of the CPU's sums and the same bits twice: MobileNet's and
    /// EfficientNet's 3x3 and 5x5 at stride 1 and 2, ConvNeXt's 7x7, a kernel the kernels do not
    /// unroll (9), odd and even sizes, a map smaller than the kernel.
    #[test]
    fn the_direct_cuda_kernels_match_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(77);
        for (batch, channels, kernel, stride, height, width) in [
            (2usize, 3usize, 3usize, 1usize, 9usize, 7usize),
            (3, 5, 3, 2, 9, 8),
            (2, 4, 5, 2, 11, 10),
            (2, 3, 5, 1, 6, 6),
            (2, 8, 7, 1, 13, 21),
            (1, 2, 7, 1, 5, 4),
            (2, 3, 9, 2, 12, 11),
            (16, 32, 3, 1, 28, 28),
        ] {
            let case = format!("b{batch} c{channels} k{kernel} s{stride} {height}x{width}");
            let padding = kernel / 2;
            let x = random.draw(0.0, 1.0, (batch, channels, height, width));
            let w = random.draw(0.0, 0.5, (channels, 1, kernel, kernel));
            let run = |device: &Device| {
                let input = Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
                let weight = Var::from_tensor(&w.to_device(device).unwrap()).unwrap();
                let y = super::super::cpu::depthwise_conv2d(input.as_tensor(), weight.as_tensor(), stride, padding).unwrap();
                let upstream = NormalTensors::new(5).draw(0.0, 1.0, y.dims()).to_device(device).unwrap();
                let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                let back = |t: &candle_core::Tensor| t.to_device(&Device::Cpu).unwrap();
                [back(&y), back(grads.get(input.as_tensor()).unwrap()), back(grads.get(weight.as_tensor()).unwrap())]
            };
            let truth = run(&Device::Cpu);
            let ours = run(&gpu);
            assert_eq!(ours[0].dims(), truth[0].dims(), "{case}");
            assert!(bits(&ours[0]) == bits(&truth[0]), "{case}: the outputs differ");
            assert!(bits(&ours[1]) == bits(&truth[1]), "{case}: the input gradients differ");
            let error = max_abs((&ours[2] - &truth[2]).unwrap()) / max_abs(truth[2].clone()).max(1.0);
            eprintln!("{case}: weight gradient relative error {error:.2e}");
            assert!(error < 1e-5, "{case}: weight gradient relative error {error}");
            assert!(bits(&run(&gpu)[2]) == bits(&ours[2]), "{case}: two runs' weight gradients differ");
        }
    }
}
