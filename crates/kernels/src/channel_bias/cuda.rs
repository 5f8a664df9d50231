//! The channel bias's CUDA halves (the ops are `mod.rs`'s): the sum as one elementwise kernel (one
//! rounding per value, as candle's broadcast add: the same bits), and each channel's gradient as
//! f64 sums, one block per plane, then per channel over the images in a fixed order:
//! deterministic, and within f32's rounding of the CPU's sum, which adds in f32 in candle's order.
//!
//! candle's reduction over (0, 2, 3), which a GPU took before, runs one block per channel through
//! a strided index per value: 96 blocks for each of ConvNeXt-T's first-stage depthwise biases, on
//! a GPU of 132 multiprocessors.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device; `MEDXFER_CUDA_CHANNEL_BIAS=candle` keeps candle's broadcast add, to
/// measure.
pub(super) fn applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_CHANNEL_BIAS") && x.device().is_cuda() && x.dtype() == DType::F32
}

const SOURCE: &str = r#"
// out[i] = x[i] + bias[c], c the channel of value i.
extern "C" __global__ void channel_bias_forward(const float* __restrict__ x, const float* __restrict__ bias,
                                                float* __restrict__ out, unsigned n, unsigned plane, unsigned channels) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __fadd_rn(x[i], bias[i / plane % channels]);
}

// Block p sums plane p (image p / channels, channel p % channels) in f64, each thread every
// blockDim-th value, then a fixed tree (blockDim a power of two, at most 256), into
// partials[channel * images + image].
extern "C" __global__ void plane_sums(const float* __restrict__ dy, double* __restrict__ partials, unsigned plane,
                                      unsigned channels, unsigned images) {
    __shared__ double partial[256];
    size_t base = (size_t)blockIdx.x * plane;
    double sum = 0.0;
    for (unsigned j = threadIdx.x; j < plane; j += blockDim.x) sum += (double)dy[base + j];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[(size_t)(blockIdx.x % channels) * images + blockIdx.x / channels] = partial[0];
}

// Block c: out[c] = the sum of channel c's parts (partials[c * parts ..]), in the same pattern,
// rounded once.
extern "C" __global__ void channel_totals(const double* __restrict__ partials, float* __restrict__ out, unsigned parts) {
    __shared__ double partial[256];
    size_t base = (size_t)blockIdx.x * parts;
    double sum = 0.0;
    for (unsigned j = threadIdx.x; j < parts; j += blockDim.x) sum += partials[base + j];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = (float)partial[0];
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_channel_bias", SOURCE);

/// (images, channels, values per plane) of a (B, C, H, W) layout, checked against the kernels'
/// 32-bit indices.
fn sizes(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize, usize)> {
    let (batch, channels, height, width) = layout.shape().dims4()?;
    if layout.shape().elem_count() > u32::MAX as usize / 2 || batch * channels > i32::MAX as usize {
        candle_core::bail!("{op}: {:?} is larger than the CUDA kernels index", layout.shape());
    }
    Ok((batch, channels, height * width))
}

/// A power of two of 32 to 256 threads for a block that sums `values` values.
fn summing_threads(values: usize) -> u32 {
    values.next_power_of_two().clamp(32, 256) as u32
}

pub(super) fn forward(
    (x, x_layout): (&CudaStorage, &Layout),
    (bias, bias_layout): (&CudaStorage, &Layout),
    op: &'static str,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (images, channels, plane) = sizes(x_layout, op)?;
    let xv = input_view::<f32>(x, x_layout, op, "the input")?;
    let bv = input_view::<f32>(bias, bias_layout, op, "the bias")?;
    if bv.len() != channels {
        candle_core::bail!("{op}: {} biases for an input of shape {:?}", bv.len(), x_layout.shape());
    }
    let device = x.device();
    let n = (images * channels * plane) as u32;
    // SAFETY: the kernel writes all n values before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(n as usize) }?;
    let kernel = KERNELS.function(device, "channel_bias_forward")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    let (plane32, channels32) = (plane.max(1) as u32, channels as u32);
    launch.arg(&xv).arg(&bv).arg(&mut out).arg(&n).arg(&plane32).arg(&channels32);
    let grid = LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, 65_535 * 8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: x and out hold n f32 values, the bias one per channel (checked), and every index
    // i / plane % channels is a channel; each thread writes its own values.
    unsafe { launch.launch(grid) }.map_err(driver_error(op))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), x_layout.shape().clone()))
}

/// Each channel's sum of a (B, C, H, W) gradient over the images and positions, (C).
pub(super) struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "channel-sums"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // `channel_sums` sends CPU tensors to their own kernel.
        candle_core::bail!("channel-sums: this op runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, dy: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (images, channels, plane) = sizes(layout, self.name())?;
        let dyv = input_view::<f32>(dy, layout, self.name(), "the gradient")?;
        let device = dy.device();
        let stream = device.cuda_stream();
        // SAFETY: the first kernel writes each plane's partial (one block per plane) before the
        // second, queued after it on the same stream, reads them.
        let mut partials: CudaSlice<f64> = unsafe { device.alloc::<f64>(images * channels) }?;
        let first = KERNELS.function(device, "plane_sums")?;
        let mut launch = stream.launch_builder(&first);
        let (plane32, channels32, images32) = (plane as u32, channels as u32, images as u32);
        launch.arg(&dyv).arg(&mut partials).arg(&plane32).arg(&channels32).arg(&images32);
        let grid =
            LaunchConfig { grid_dim: ((images * channels) as u32, 1, 1), block_dim: (summing_threads(plane), 1, 1), shared_mem_bytes: 0 };
        // SAFETY: dy holds images·channels·plane f32 values (its layout's, checked by `sizes`
        // against 32 bits), partials images·channels; one block per plane, whose power-of-two
        // size fits the kernel's 256-entry shared array.
        unsafe { launch.launch(grid) }.map_err(driver_error("channel sums"))?;
        let sums = channel_totals(device, &partials, channels, images, self.name())?;
        Ok((CudaStorage::wrap_cuda_slice(sums, device.clone()), Shape::from(channels)))
    }
}

/// Each channel's total of its `parts` f64 partial sums (`partials`, channel-major), rounded to f32
/// once: the second pass of the bias's gradient here and of the layer scale's (`channels_last`).
pub(crate) fn channel_totals(
    device: &CudaDevice,
    partials: &CudaSlice<f64>,
    channels: usize,
    parts: usize,
    op: &'static str,
) -> candle_core::Result<CudaSlice<f32>> {
    if partials.len() != channels * parts || parts > u32::MAX as usize || channels > i32::MAX as usize {
        candle_core::bail!("{op}: {} partial sums for {channels} channels of {parts}", partials.len());
    }
    // SAFETY: the kernel writes every channel's sum (one block each) before anything reads them.
    let mut sums = unsafe { device.alloc::<f32>(channels) }?;
    let kernel = KERNELS.function(device, "channel_totals")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    let parts32 = parts as u32;
    launch.arg(partials).arg(&mut sums).arg(&parts32);
    let grid = LaunchConfig { grid_dim: (channels as u32, 1, 1), block_dim: (summing_threads(parts), 1, 1), shared_mem_bytes: 0 };
    // SAFETY: partials holds channels·parts f64 values (checked) and sums channels; one block per
    // channel, whose power-of-two size fits the kernel's 256-entry shared array.
    unsafe { launch.launch(grid) }.map_err(driver_error(op))?;
    Ok(sums)
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{DType, Device, Tensor, Var};

    use crate::test_tensors::{NormalTensors, bits, max_abs};

    /// The sum and the input's gradient to the CPU op's bits, the bias's gradient within 1e-6 of
    /// f64 sums and the same bits twice: ConvNeXt-T's first and last stage at a small batch, odd
    /// sizes, and through the dense convolution (ViT's patch embedding).
    #[test]
    fn the_cuda_bias_matches_the_cpu_bias() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(62);
        for shape in [(4usize, 96usize, 56usize, 56usize), (3, 768, 7, 7), (2, 5, 3, 9)] {
            let (x, bias, upstream) = (random.draw(0.0, 1.0, shape), random.draw(0.0, 1.0, shape.1), random.draw(0.0, 1.0, shape));
            let run = |device: &Device| {
                let on = |t: &Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
                let (xv, bv) = (on(&x), on(&bias));
                let y = crate::add_channel_bias(xv.as_tensor(), bv.as_tensor()).unwrap();
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                [back(&y), back(grads.get(xv.as_tensor()).unwrap()), back(grads.get(bv.as_tensor()).unwrap())]
            };
            let (truth, ours) = (run(&Device::Cpu), run(&gpu));
            assert!(bits(&truth[0]) == bits(&ours[0]), "{shape:?}: the sums differ");
            assert!(bits(&truth[1]) == bits(&ours[1]), "{shape:?}: the input gradients differ");
            let exact = upstream.to_dtype(DType::F64).unwrap().sum((0, 2, 3)).unwrap();
            let error = max_abs((&exact - &ours[2].to_dtype(DType::F64).unwrap()).unwrap().to_dtype(DType::F32).unwrap())
                / max_abs(exact.to_dtype(DType::F32).unwrap()).max(1.0);
            assert!(error < 1e-6, "{shape:?}: bias gradient relative error {error}");
            assert!(bits(&run(&gpu)[2]) == bits(&ours[2]), "{shape:?}: two runs' bias gradients differ");
        }
        let (x, w, b) = (random.draw(0.0, 1.0, (2, 3, 32, 32)), random.draw(0.0, 0.1, (8, 3, 16, 16)), random.draw(0.0, 1.0, 8));
        let run = |device: &Device| {
            let on = |t: &Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
            let (xv, wv, bv) = (on(&x), on(&w), on(&b));
            let y = crate::conv2d(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor()), 16, 0).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (y.to_device(&Device::Cpu).unwrap(), grads.get(bv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap())
        };
        let ((y_cpu, b_cpu), (y_gpu, b_gpu)) = (run(&Device::Cpu), run(&gpu));
        let relative = |a: &Tensor, b: &Tensor| max_abs((a - b).unwrap()) / max_abs(a.clone()).max(1.0);
        assert!(relative(&y_cpu, &y_gpu) < 1e-5, "patch embedding: outputs differ");
        assert!(relative(&b_cpu, &b_gpu) < 1e-5, "patch embedding: bias gradients differ");
    }
}
