//! Train-mode BatchNorm of f32 CUDA tensors, with the residual add and ReLU/ReLU6/SiLU after it, as
//! one forward and one backward graph node, each a few kernels of our own (`crate::nvrtc`).
//!
//! candle's composition is about seven kernels forward (statistics through `FastReduce`, one
//! block per channel) and several times that backward, each node's gradient zero-filled and
//! added into; PyTorch runs one cuDNN kernel pair. Here, as in the CPU kernel (`cpu.rs`, whose
//! formulas these are):
//!
//! - statistics: per (channel, slice of the batch) block, sums of x - x[c, first] and of its
//!   square in f64 (the shift keeps a large mean from eating the variance), combined per channel
//!   in a fixed order: deterministic, and enough blocks to fill the GPU at any channel count;
//! - forward: one elementwise pass, y = act((x - mean) * invstd * gamma + beta [+ residual]);
//! - backward: per-channel sums of dz and dz * xhat (dz: the upstream gradient where the
//!   activation passed it, `0 < y < high` as PyTorch's `threshold_backward`/`hardtanh_backward`,
//!   or times SiLU's slope at its input, recomputed from x), then one elementwise pass for
//!   dx = gamma invstd / N (N dz - sum dz - xhat sum dz xhat), which also writes dz as the
//!   residual's gradient.
//!
//! Eval mode is one kernel, y = act((x - mean) * scale + beta [+ residual]) with the running
//! estimates, in the CPU kernel's f32 operations and order (`__fmul_rn`/`__fadd_rn`, no FMA
//! contraction): the same bits, but for SiLU's (CUDA's `expf` against the CPU's `crate::exp`,
//! an ulp or two apart).
//!
//! The batch statistics stay on the GPU: nothing here waits for the device.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaView, LaunchArgs, LaunchConfig, PushKernelArg};

use super::{BatchNormOutput, BatchNormParams, RunningStatistics, unbiased_correction};
use crate::activation::FusedActivation;
use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// Whether the kernels here are in use: `MEDXFER_CUDA_BATCHNORM=candle` sends everything to
/// candle's composition instead (and eval mode to the fold into the convolution), to measure
/// the difference.
pub(super) fn kernels_enabled() -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_BATCHNORM")
}

fn f32_cuda(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::F32
}

/// Whether the train-mode kernels take these tensors: f32 on a CUDA device, not empty (an empty
/// plane has no first value to shift the sums by, and its walks would divide by zero).
pub(super) fn applies(x: &Tensor, params: &BatchNormParams<'_>, residual: Option<&Tensor>) -> bool {
    kernels_enabled()
        && f32_cuda(x)
        && f32_cuda(params.gamma)
        && f32_cuda(params.beta)
        && residual.is_none_or(f32_cuda)
        && x.rank() == 4
        && x.elem_count() > 0
}

/// Whether the eval kernel takes these tensors (x, the four per-channel ones, the residual): f32
/// on a CUDA device.
pub(super) fn applies_eval(x: &Tensor, per_channel: &[&Tensor], residual: Option<&Tensor>) -> bool {
    kernels_enabled() && f32_cuda(x) && per_channel.iter().all(|t| f32_cuda(t)) && residual.is_none_or(f32_cuda)
}

/// Eval mode: one kernel over x with the running estimates (shapes checked by the caller).
pub(super) fn batch_norm_eval(
    x: &Tensor,
    params: BatchNormParams<'_>,
    running: RunningStatistics<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> candle_core::Result<Tensor> {
    let dense = |t: &Tensor| t.contiguous();
    let op = EvalNormalize {
        per_channel: [dense(params.gamma)?, dense(params.beta)?, dense(running.mean)?, dense(running.var)?],
        residual: residual.map(dense).transpose()?,
        eps: params.eps,
        activation: activation_code(activation),
    };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

pub(super) fn batch_norm_train(
    x: &Tensor,
    params: BatchNormParams<'_>,
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> candle_core::Result<BatchNormOutput> {
    let x = x.contiguous()?;
    let (_, channels, _, _) = x.dims4()?;
    if params.gamma.dims() != [channels] || params.beta.dims() != [channels] || residual.is_some_and(|r| r.dims() != x.dims()) {
        candle_core::bail!("batch norm: parameters or residual do not fit an input of shape {:?}", x.dims());
    }
    // (3, C) f64: mean, 1 / sqrt(var + eps), biased variance.
    let stats = x.apply_op1_no_bwd(&ChannelStats { eps: params.eps })?;
    let affine = Tensor::stack(&[params.gamma, params.beta], 0)?.contiguous()?;
    let op = Normalize { stats: stats.clone(), activation: activation_code(activation) };
    let y = match residual {
        Some(residual) => x.apply_op3(&affine, &residual.contiguous()?, op)?,
        None => x.apply_op2(&affine, op)?,
    };
    let estimates = stats.apply_op1_no_bwd(&BatchEstimates { correction: unbiased_correction(&x)? })?;
    Ok(BatchNormOutput { y, mean: estimates.get(0)?, unbiased_var: estimates.get(1)? })
}

fn activation_code(activation: FusedActivation) -> i32 {
    match activation {
        FusedActivation::Identity => 0,
        FusedActivation::Relu => 1,
        FusedActivation::Relu6 => 2,
        FusedActivation::Silu => 3,
    }
}

const SOURCE: &str = r#"
// 0: identity, 1: ReLU, 2: ReLU6, 3: SiLU (PyTorch's x / (1 + e^-x), as activation/cuda.rs).
__device__ __forceinline__ float activate(float v, int act) {
    if (act == 1) return v > 0.f ? v : 0.f;
    if (act == 2) return fminf(fmaxf(v, 0.f), 6.f);
    if (act == 3) return v / (1.0f + expf(-v));
    return v;
}

// The activation's derivative. A clamp's is judged by its output or, equally, its input (PyTorch's
// kinks give 0): y = act(t) is in (0, 6) exactly where t is, and a NaN fails both. SiLU's,
// s (1 + t (1 - s)) with s = sigmoid(t), needs its input t.
__device__ __forceinline__ float derivative(float v, int act) {
    if (act == 1) return v > 0.f ? 1.f : 0.f;
    if (act == 2) return (v > 0.f && v < 6.f) ? 1.f : 0.f;
    if (act == 3) {
        float s = 1.0f / (1.0f + expf(-v));
        return s * (1.0f + v * (1.0f - s));
    }
    return 1.f;
}

// (x - mean) scale + shift, each operation rounded on its own (no FMA contraction): the CPU
// kernel's f32 operations, and the same bits wherever the backward kernels recompute it.
__device__ __forceinline__ float normalized(float x, float mean, float scale, float shift) {
    return __fadd_rn(__fmul_rn(__fsub_rn(x, mean), scale), shift);
}

// Channel c's f32 constants of the elementwise pass: mean, scale and shift.
struct Constants { float mean, scale, shift; };
__device__ __forceinline__ Constants constants(const double* stats, const float* affine, int channels, int c) {
    return Constants{(float)stats[c], (float)(stats[channels + c] * (double)affine[c]), affine[channels + c]};
}

// The activation's derivative at value i: a clamp's from y where y is given (the block has a
// residual, added before the activation), else from t recomputed from x (the forward pass's
// bits), which spares a read of y; SiLU's always from t (the host never fuses it after a residual).
__device__ __forceinline__ float slope(const float* y, const float* x, size_t i, Constants k, int act) {
    if (act == 0) return 1.f;
    return derivative(y ? y[i] : normalized(x[i], k.mean, k.scale, k.shift), act);
}

// A thread's walk over images [b0, b1) of channel c, value j = threadIdx.x, j + blockDim.x, ... of
// the slice's (image, position) order, as (image, position) pairs: one division at the start, then
// additions (a division per value was most of the reductions' arithmetic).
struct SliceWalk {
    unsigned image, p, step_images, step_p, end, plane;
    __device__ SliceWalk(unsigned b0, unsigned b1, unsigned plane_)
        : image(b0 + threadIdx.x / plane_), p(threadIdx.x % plane_), step_images(blockDim.x / plane_),
          step_p(blockDim.x % plane_), end(b1), plane(plane_) {}
    __device__ bool more() const { return image < end; }
    __device__ void next() {
        p += step_p;
        image += step_images;
        if (p >= plane) { p -= plane; image++; }
    }
};

// Sums a and b over the block (a multiple of 32 threads, at most 1024) into thread 0's, in a
// fixed order.
__device__ void block_sum2(double &a, double &b) {
    __shared__ double sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sa[warp] = a; sb[warp] = b; }
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        a = lane < warps ? sa[lane] : 0.0;
        b = lane < warps ? sb[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) {
            a += __shfl_down_sync(0xffffffffu, a, o);
            b += __shfl_down_sync(0xffffffffu, b, o);
        }
    }
}

// Block (s, c): over images [s B / S, (s + 1) B / S) of channel c, the sums of d = x - x[c, 0]
// and d^2, into partial[(c S + s) 2 + {0, 1}].
extern "C" __global__ void bn_stats_partial(const float* __restrict__ x, double* __restrict__ partial,
                                            int batch, int channels, int plane, int slices) {
    int s = blockIdx.x, c = blockIdx.y;
    unsigned b0 = (unsigned)((long long)s * batch / slices), b1 = (unsigned)((long long)(s + 1) * batch / slices);
    double shift = (double)x[(size_t)c * plane];
    double sum = 0.0, squares = 0.0;
    for (SliceWalk at(b0, b1, (unsigned)plane); at.more(); at.next()) {
        double d = (double)x[((size_t)at.image * channels + c) * plane + at.p] - shift;
        sum += d;
        squares += d * d;
    }
    block_sum2(sum, squares);
    if (threadIdx.x == 0) {
        partial[((size_t)c * slices + s) * 2] = sum;
        partial[((size_t)c * slices + s) * 2 + 1] = squares;
    }
}

// One thread per channel: stats = (mean, 1 / sqrt(var + eps), var), each C long.
extern "C" __global__ void bn_stats_finish(const float* __restrict__ x, const double* __restrict__ partial,
                                           double* __restrict__ stats, int batch, int channels, int plane,
                                           int slices, double eps) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double sum = 0.0, squares = 0.0;
    for (int s = 0; s < slices; s++) {
        sum += partial[((size_t)c * slices + s) * 2];
        squares += partial[((size_t)c * slices + s) * 2 + 1];
    }
    double n = (double)batch * plane;
    double centred_mean = sum / n;
    double var = squares / n - centred_mean * centred_mean;
    if (var < 0.0) var = 0.0;
    stats[c] = (double)x[(size_t)c * plane] + centred_mean;
    stats[channels + c] = 1.0 / sqrt(var + eps);
    stats[2 * channels + c] = var;
}

// The elementwise kernels' grid (`plane_grid`): block (s, c, b) covers stretch s of image b's
// channel c, and goes on to channel c + gridDim.y and image b + gridDim.z where the channels or the
// batch outnumber the grid (65,535 each way). A thread computes its channel's constants once, not
// per value, and divides no index.
#define FOR_EACH_PLANE(c, image)                                              \
    for (int c = blockIdx.y; c < channels; c += gridDim.y)                   \
        for (int image = blockIdx.z; image < batch; image += gridDim.z)
#define FOR_EACH_POSITION(p) \
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < plane; p += gridDim.x * blockDim.x)

// y = act((x - mean) * scale + beta [+ residual]), scale = invstd * gamma, in f32 like the CPU
// kernel (constants from f64); residual may be null.
extern "C" __global__ void bn_forward(const float* __restrict__ x, const float* __restrict__ affine,
                                      const double* __restrict__ stats, const float* __restrict__ residual,
                                      float* __restrict__ y, int batch, int channels, int plane, int act) {
    FOR_EACH_PLANE(c, image) {
        Constants k = constants(stats, affine, channels, c);
        size_t base = ((size_t)image * channels + c) * plane;
        FOR_EACH_POSITION(p) {
            size_t i = base + p;
            float v = normalized(x[i], k.mean, k.scale, k.shift);
            if (residual) v = __fadd_rn(v, residual[i]);
            y[i] = activate(v, act);
        }
    }
}

// Eval mode, over the elementwise grid:
// y = act((x - mean[c]) * scale + beta[c] [+ residual]), scale = (float)(gamma[c] / sqrt(var[c] + eps))
// from f64, each f32 operation rounded on its own as the CPU kernel's (no FMA contraction).
extern "C" __global__ void bn_eval_forward(const float* __restrict__ x, const float* __restrict__ gamma,
                                           const float* __restrict__ beta, const float* __restrict__ mean,
                                           const float* __restrict__ var, const float* __restrict__ residual,
                                           float* __restrict__ y, int batch, int channels, int plane, double eps, int act) {
    FOR_EACH_PLANE(c, image) {
        double invstd = 1.0 / sqrt((double)var[c] + eps);
        float m = mean[c], scale = (float)(invstd * (double)gamma[c]), shift = beta[c];
        size_t base = ((size_t)image * channels + c) * plane;
        FOR_EACH_POSITION(p) {
            float v = __fadd_rn(__fmul_rn(__fsub_rn(x[base + p], m), scale), shift);
            if (residual) v = __fadd_rn(v, residual[base + p]);
            y[base + p] = activate(v, act);
        }
    }
}

// The batch's estimates for the running update, (2, C) f32: the mean, and the biased variance
// times n / (n - 1) (in f64, then rounded once, as candle's ops on the statistics did).
extern "C" __global__ void bn_batch_estimates(const double* __restrict__ stats, float* __restrict__ out,
                                              int channels, double correction) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    out[c] = (float)stats[c];
    out[channels + c] = (float)(stats[2 * channels + c] * correction);
}

// running = running keep + batch take in place, each product rounded on its own (the CPU's and
// candle's scale-then-add operations, so the same bits).
extern "C" __global__ void bn_running_update(float* __restrict__ running, const float* __restrict__ batch,
                                             int n, float keep, float take) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) running[i] = __fadd_rn(__fmul_rn(running[i], keep), __fmul_rn(batch[i], take));
}

// Block (s, c) as in bn_stats_partial: the sums of dz and dz * xhat, dz = dy times the activation's
// derivative (`slope`: y is null where it comes from x).
extern "C" __global__ void bn_grad_partial(const float* __restrict__ x, const float* __restrict__ y,
                                           const float* __restrict__ dy, const float* __restrict__ affine,
                                           const double* __restrict__ stats, double* __restrict__ partial,
                                           int batch, int channels, int plane, int slices, int act) {
    int s = blockIdx.x, c = blockIdx.y;
    unsigned b0 = (unsigned)((long long)s * batch / slices), b1 = (unsigned)((long long)(s + 1) * batch / slices);
    double mean = stats[c], invstd = stats[channels + c];
    Constants k = constants(stats, affine, channels, c);
    double sum_dz = 0.0, sum_dz_xhat = 0.0;
    for (SliceWalk at(b0, b1, (unsigned)plane); at.more(); at.next()) {
        size_t i = ((size_t)at.image * channels + c) * plane + at.p;
        double dz = (double)(dy[i] * slope(y, x, i, k, act));
        sum_dz += dz;
        sum_dz_xhat += dz * ((double)x[i] - mean) * invstd;
    }
    block_sum2(sum_dz, sum_dz_xhat);
    if (threadIdx.x == 0) {
        partial[((size_t)c * slices + s) * 2] = sum_dz;
        partial[((size_t)c * slices + s) * 2 + 1] = sum_dz_xhat;
    }
}

// One thread per channel: sums = (sum dz xhat, sum dz), each C long: the gradients of gamma and
// beta, stacked as the (2, C) affine tensor is.
extern "C" __global__ void bn_grad_finish(const double* __restrict__ partial, double* __restrict__ sums,
                                          int channels, int slices) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double sum_dz = 0.0, sum_dz_xhat = 0.0;
    for (int s = 0; s < slices; s++) {
        sum_dz += partial[((size_t)c * slices + s) * 2];
        sum_dz_xhat += partial[((size_t)c * slices + s) * 2 + 1];
    }
    sums[c] = sum_dz_xhat;
    sums[channels + c] = sum_dz;
}

// dx = a dz - b - (x - mean) k with a = gamma invstd, b = a sum_dz / N, k = a invstd sum_dz_xhat / N
// (constants in f64, the elementwise part in f32 as the CPU kernel), over the elementwise grid;
// dz also into out[total + i] when the block has a residual. y as in bn_grad_partial.
extern "C" __global__ void bn_grad_input(const float* __restrict__ x, const float* __restrict__ y,
                                         const float* __restrict__ dy, const float* __restrict__ affine,
                                         const double* __restrict__ stats, const double* __restrict__ sums,
                                         float* __restrict__ out, int batch, int channels, int plane,
                                         int act, int with_residual) {
    double n = (double)batch * plane;
    size_t total = (size_t)batch * channels * plane;
    FOR_EACH_PLANE(c, image) {
        double invstd = stats[channels + c];
        double factor = (double)affine[c] * invstd / n;
        float a = (float)(factor * n);
        float b = (float)(factor * sums[channels + c]);
        float k = (float)(factor * invstd * sums[c]);
        Constants constant = constants(stats, affine, channels, c);
        size_t base = ((size_t)image * channels + c) * plane;
        FOR_EACH_POSITION(p) {
            size_t i = base + p;
            float dz = dy[i] * slope(y, x, i, constant, act);
            out[i] = a * dz - b - (x[i] - constant.mean) * k;
            if (with_residual) out[total + i] = dz;
        }
    }
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_batchnorm", SOURCE);

const THREADS: u32 = 256;

/// Blocks per channel for the reductions: about 1,024 blocks in all, never more than images.
fn slices(batch: usize, channels: usize) -> usize {
    1024usize.div_ceil(channels).clamp(1, batch.max(1))
}

fn per_channel(channels: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((channels as u32).div_ceil(THREADS), 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn f32_view<'a>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> candle_core::Result<CudaView<'a, f32>> {
    input_view(storage, layout, "batch norm", what)
}

fn f64_view<'a>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> candle_core::Result<CudaView<'a, f64>> {
    input_view(storage, layout, "batch norm", what)
}

/// A tensor's CUDA storage, read-locked for the caller's use.
fn with_cuda<R>(t: &Tensor, what: &str, f: impl FnOnce(&CudaStorage, &Layout) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(storage) = &*storage else { candle_core::bail!("batch norm: {what} is not on a CUDA device") };
    f(storage, layout)
}

/// Pushes `view` onto `launch`, or without one a null pointer (`null`, 0), which the kernels test.
fn arg_or_null<'a>(launch: &mut LaunchArgs<'a>, view: Option<&'a CudaView<'_, f32>>, null: &'a u64) {
    match view {
        Some(view) => launch.arg(view),
        None => launch.arg(null),
    };
}

/// [`with_cuda`] for a tensor that may be absent: `f` gets None then.
fn with_optional_cuda<R>(
    t: Option<&Tensor>,
    what: &str,
    f: impl FnOnce(Option<(&CudaStorage, &Layout)>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    match t {
        Some(t) => with_cuda(t, what, |storage, layout| f(Some((storage, layout)))),
        None => f(None),
    }
}

fn dims(layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (batch, channels, height, width) = layout.shape().dims4()?;
    if batch * channels * height * width > u32::MAX as usize / 2 {
        candle_core::bail!("batch norm: {:?} is larger than the CUDA kernels index (2^31 values)", layout.shape());
    }
    Ok((batch, channels, height * width))
}

fn int(v: usize) -> i32 {
    // `dims` bounds every size by 2^31.
    v as i32
}

fn stream_alloc<T: cudarc::driver::DeviceRepr>(device: &CudaDevice, len: usize) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes all `len` elements before anything
    // reads them.
    unsafe { device.alloc::<T>(len) }
}

/// The batch's per-channel statistics, (3, C) f64.
struct ChannelStats {
    eps: f64,
}

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "batch-norm-stats-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch-norm-stats-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = storage.device();
        let stream = device.cuda_stream();
        let (batch, channels, plane) = dims(layout)?;
        let x = f32_view(storage, layout, "the input")?;
        let slices = slices(batch, channels);
        let mut partial = stream_alloc::<f64>(device, channels * slices * 2)?;
        let mut stats = stream_alloc::<f64>(device, channels * 3)?;
        let partial_kernel = KERNELS.function(device, "bn_stats_partial")?;
        let finish_kernel = KERNELS.function(device, "bn_stats_finish")?;
        let (b, c, p, s) = (int(batch), int(channels), int(plane), int(slices));
        let mut launch = stream.launch_builder(&partial_kernel);
        launch.arg(&x).arg(&mut partial).arg(&b).arg(&c).arg(&p).arg(&s);
        let grid = LaunchConfig { grid_dim: (slices as u32, channels as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the kernel's parameters are these, in this order: x holds B·C·P f32 values,
        // partial C·S·2 f64; each block writes its own two entries.
        unsafe { launch.launch(grid) }.map_err(driver_error("batch norm kernel"))?;
        let mut launch = stream.launch_builder(&finish_kernel);
        launch.arg(&x).arg(&partial).arg(&mut stats).arg(&b).arg(&c).arg(&p).arg(&s).arg(&self.eps);
        // SAFETY: as above; stats holds 3·C f64 values, one thread writes each channel's three.
        unsafe { launch.launch(per_channel(channels)) }.map_err(driver_error("batch norm kernel"))?;
        Ok((CudaStorage::wrap_cuda_slice(stats, device.clone()), Shape::from((3, channels))))
    }
}

/// The batch's mean and unbiased variance, (2, C) f32, from its (3, C) f64 statistics: one kernel
/// where candle's ops took four.
struct BatchEstimates {
    correction: f64,
}

impl CustomOp1 for BatchEstimates {
    fn name(&self) -> &'static str {
        "batch-norm-estimates-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch-norm-estimates-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = storage.device();
        let channels = layout.shape().dims2()?.1;
        let stats = f64_view(storage, layout, "the statistics")?;
        if stats.len() != 3 * channels {
            candle_core::bail!("batch norm: statistics of shape {:?}, (3, C) expected", layout.shape());
        }
        let mut out = stream_alloc::<f32>(device, 2 * channels)?;
        let kernel = KERNELS.function(device, "bn_batch_estimates")?;
        let c = int(channels);
        let stream = device.cuda_stream();
        let mut launch = stream.launch_builder(&kernel);
        launch.arg(&stats).arg(&mut out).arg(&c).arg(&self.correction);
        // SAFETY: stats holds 3·C f64 values (checked), out 2·C f32; one thread per channel.
        unsafe { launch.launch(per_channel(channels)) }.map_err(driver_error("batch norm kernel"))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Shape::from((2, channels))))
    }
}

/// running = running keep + batch take, in place (`running.rs`'s op on a CUDA device).
pub(super) fn running_update(
    running: &mut CudaStorage,
    running_layout: &Layout,
    batch: &CudaStorage,
    batch_layout: &Layout,
    keep: f32,
    take: f32,
) -> candle_core::Result<()> {
    let device = running.device().clone();
    let batch = f32_view(batch, batch_layout, "the batch's estimate")?;
    let Some((start, end)) = running_layout.contiguous_offsets() else {
        candle_core::bail!("batch norm running update: the running estimate must be contiguous")
    };
    if end - start != batch.len() || batch.len() > i32::MAX as usize {
        candle_core::bail!("batch norm running update: {} running values for {} batch values", end - start, batch.len());
    }
    let n = batch.len() as i32;
    let kernel = KERNELS.function(&device, "bn_running_update")?;
    let mut values = running.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(&mut values).arg(&batch).arg(&n).arg(&keep).arg(&take);
    // SAFETY: both operands hold n f32 values (checked); each thread updates its own.
    unsafe { launch.launch(per_channel(n as usize)) }.map_err(driver_error("batch norm kernel"))?;
    Ok(())
}

/// y = act((x - mean) invstd gamma + beta [+ residual]) from the statistics it holds.
struct Normalize {
    stats: Tensor,
    activation: i32,
}

impl Normalize {
    fn forward(
        &self,
        x: (&CudaStorage, &Layout),
        affine: (&CudaStorage, &Layout),
        residual: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = x.0.device();
        let stream = device.cuda_stream();
        let (batch, channels, plane) = dims(x.1)?;
        let total = x.1.shape().elem_count();
        let xv = f32_view(x.0, x.1, "the input")?;
        let av = f32_view(affine.0, affine.1, "the weight and bias")?;
        let rv = residual.map(|(s, l)| f32_view(s, l, "the residual")).transpose()?;
        if av.len() != 2 * channels || rv.as_ref().is_some_and(|r| r.len() != total) {
            candle_core::bail!("batch norm: parameters or residual do not fit an input of shape {:?}", x.1.shape());
        }
        let mut y = stream_alloc::<f32>(device, total)?;
        let kernel = KERNELS.function(device, "bn_forward")?;
        let (b, c, p, act) = (int(batch), int(channels), int(plane), self.activation);
        with_cuda(&self.stats, "the statistics", |stats, layout| {
            let sv = f64_view(stats, layout, "the statistics")?;
            let null: u64 = 0;
            let mut launch = stream.launch_builder(&kernel);
            launch.arg(&xv).arg(&av).arg(&sv);
            arg_or_null(&mut launch, rv.as_ref(), &null);
            launch.arg(&mut y).arg(&b).arg(&c).arg(&p).arg(&act);
            // SAFETY: the parameters match the kernel's: x, residual (or a null pointer, which
            // the kernel tests) and y hold B·C·P f32 values, affine 2·C, stats 3·C f64.
            unsafe { launch.launch(plane_grid(batch, channels, plane)) }.map_err(driver_error("batch norm kernel"))
        })?;
        Ok((CudaStorage::wrap_cuda_slice(y, device.clone()), x.1.shape().clone()))
    }

    /// (dx, d affine, dz): dz is the residual's gradient.
    fn gradients(
        &self,
        x: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        grad: &Tensor,
        with_residual: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let op = Gradients {
            stats: self.stats.clone(),
            // The kernels read y only for the activation's mask after a residual add; otherwise
            // they take its derivative from x (or need none), and y may have been freed by then
            // (`backward_reads`).
            y: (self.activation != 0 && with_residual).then(|| y.contiguous()).transpose()?,
            affine: affine.contiguous()?,
            activation: self.activation,
            with_residual,
        };
        let x = x.contiguous()?;
        let sums = x.apply_op2_no_bwd(&grad, &GradientSums { inner: &op })?;
        let out = x.apply_op2_no_bwd(&grad, &GradientInput { inner: &op, sums: sums.clone() })?;
        // (sum dz xhat, sum dz) are the gradients of (gamma, beta), stacked as the affine tensor.
        let grad_affine = sums.to_dtype(DType::F32)?;
        if with_residual { Ok((out.get(0)?, grad_affine, Some(out.get(1)?))) } else { Ok((out, grad_affine, None)) }
    }
}

impl CustomOp2 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm-train-cuda"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        // Not the output: without a residual the activation's derivative comes from x (`gradients`).
        candle_core::BackwardReads { inputs: [true, true, false], output: false }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch-norm-train-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, affine: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_affine, _) = self.gradients(x, affine, res, grad, false)?;
        Ok((Some(grad_x), Some(grad_affine)))
    }
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "batch-norm-train-residual-cuda"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        // The output only for the activation's mask after the residual add (`gradients`).
        candle_core::BackwardReads { inputs: [true, true, false], output: self.activation != 0 }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch-norm-train-residual-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        _residual: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_affine, dz) = self.gradients(x, affine, res, grad, true)?;
        Ok((Some(grad_x), Some(grad_affine), dz))
    }
}

/// Eval mode's kernel over x, with the tensors it reads besides (contiguous).
struct EvalNormalize {
    /// gamma, beta, running mean, running variance: C each.
    per_channel: [Tensor; 4],
    residual: Option<Tensor>,
    eps: f64,
    activation: i32,
}

impl CustomOp1 for EvalNormalize {
    fn name(&self) -> &'static str {
        "batch-norm-eval-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch-norm-eval-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = storage.device();
        let stream = device.cuda_stream();
        let (batch, channels, plane) = dims(layout)?;
        let total = layout.shape().elem_count();
        let xv = f32_view(storage, layout, "the input")?;
        // Read locks on the other tensors' storages, held for the launch.
        let held: Vec<_> = self.per_channel.iter().chain(&self.residual).map(Tensor::storage_and_layout).collect();
        let operands = [
            ("gamma", channels),
            ("beta", channels),
            ("the running mean", channels),
            ("the running variance", channels),
            ("the residual", total),
        ];
        let mut views = Vec::with_capacity(held.len());
        for ((guard, operand_layout), (what, len)) in held.iter().zip(operands) {
            let Storage::Cuda(cuda) = &**guard else { candle_core::bail!("eval batch norm: {what} is not on a CUDA device") };
            let view = f32_view(cuda, operand_layout, what)?;
            if view.len() != len {
                candle_core::bail!(
                    "eval batch norm: {what} has {} values where an input of shape {:?} needs {len}",
                    view.len(),
                    layout.shape()
                );
            }
            views.push(view);
        }
        let mut y = stream_alloc::<f32>(device, total)?;
        let kernel = KERNELS.function(device, "bn_eval_forward")?;
        let (b, c, p, act) = (int(batch), int(channels), int(plane), self.activation);
        let null: u64 = 0;
        let mut launch = stream.launch_builder(&kernel);
        launch.arg(&xv).arg(&views[0]).arg(&views[1]).arg(&views[2]).arg(&views[3]);
        arg_or_null(&mut launch, views.get(4), &null);
        launch.arg(&mut y).arg(&b).arg(&c).arg(&p).arg(&self.eps).arg(&act);
        // SAFETY: the parameters match the kernel's: x, the residual (or a null pointer, which the
        // kernel tests) and y hold B·C·P f32 values, the four per-channel tensors C each (checked
        // above); each block touches only the planes (b, c) its loops name, all within B·C.
        unsafe { launch.launch(plane_grid(batch, channels, plane)) }.map_err(driver_error("batch norm kernel"))?;
        Ok((CudaStorage::wrap_cuda_slice(y, device.clone()), layout.shape().clone()))
    }
}

/// The elementwise kernels' grid, (stretches of a plane, C, B) blocks, C and B each at most the
/// grid's 65,535 (the kernels' loops take the rest): a block's threads cover its plane's stretch,
/// the plane rounded up to a multiple of 32 threads and at most 256 (a 7x7 map's 49 values get
/// 64 threads, not 256).
fn plane_grid(batch: usize, channels: usize, plane: usize) -> LaunchConfig {
    let threads = (plane.div_ceil(32) * 32).clamp(32, THREADS as usize) as u32;
    // Up to 8 values per thread on large planes, so the per-channel constants amortise.
    let stretches = plane.div_ceil(threads as usize * 8).max(1) as u32;
    let limit = |n: usize| n.clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (stretches, limit(channels), limit(batch)), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// What both backward kernels read besides x and the upstream gradient.
struct Gradients {
    stats: Tensor,
    /// The output, for the activation's mask after a residual add; None where the kernels take
    /// the mask from x or need none (a null pointer to them).
    y: Option<Tensor>,
    affine: Tensor,
    activation: i32,
    with_residual: bool,
}

/// (sum dz xhat, sum dz) per channel, (2, C) f64.
struct GradientSums<'a> {
    inner: &'a Gradients,
}

impl CustomOp2 for GradientSums<'_> {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch-norm-grad-sums-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let stream = device.cuda_stream();
        let (batch, channels, plane) = dims(xl)?;
        let (xv, gv) = (f32_view(xs, xl, "the input")?, f32_view(gs, gl, "the gradient")?);
        let slices = slices(batch, channels);
        let mut partial = stream_alloc::<f64>(device, channels * slices * 2)?;
        let mut sums = stream_alloc::<f64>(device, channels * 2)?;
        let partial_kernel = KERNELS.function(device, "bn_grad_partial")?;
        let finish_kernel = KERNELS.function(device, "bn_grad_finish")?;
        let (b, c, p, s, act) = (int(batch), int(channels), int(plane), int(slices), self.inner.activation);
        with_optional_cuda(self.inner.y.as_ref(), "the output", |y| {
            with_cuda(&self.inner.affine, "the weight and bias", |as_, al| {
                with_cuda(&self.inner.stats, "the statistics", |ss, sl| {
                    let yv = y.map(|(ys, yl)| f32_view(ys, yl, "the output")).transpose()?;
                    let (av, sv) = (f32_view(as_, al, "the weight and bias")?, f64_view(ss, sl, "the statistics")?);
                    let null: u64 = 0;
                    let mut launch = stream.launch_builder(&partial_kernel);
                    launch.arg(&xv);
                    arg_or_null(&mut launch, yv.as_ref(), &null);
                    launch.arg(&gv).arg(&av).arg(&sv).arg(&mut partial).arg(&b).arg(&c).arg(&p).arg(&s).arg(&act);
                    let grid =
                        LaunchConfig { grid_dim: (slices as u32, channels as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
                    // SAFETY: the parameters match the kernel's; x, y (or a null pointer, which the
                    // kernel tests) and dy hold B·C·P f32 values, affine 2·C, stats 3·C f64,
                    // partial C·S·2; each block writes its own two entries.
                    unsafe { launch.launch(grid) }.map_err(driver_error("batch norm kernel"))
                })
            })
        })?;
        let mut launch = stream.launch_builder(&finish_kernel);
        launch.arg(&partial).arg(&mut sums).arg(&c).arg(&s);
        // SAFETY: partial holds C·S·2 f64 values, sums 2·C; one thread per channel.
        unsafe { launch.launch(per_channel(channels)) }.map_err(driver_error("batch norm kernel"))?;
        Ok((CudaStorage::wrap_cuda_slice(sums, device.clone()), Shape::from((2, channels))))
    }
}

/// dx, and dz after it when the block has a residual ((2, B, C, H, W) then).
struct GradientInput<'a> {
    inner: &'a Gradients,
    sums: Tensor,
}

impl GradientInput<'_> {
    fn run(&self, xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let stream = device.cuda_stream();
        let (batch, channels, plane) = dims(xl)?;
        let total = xl.shape().elem_count();
        let (xv, gv) = (f32_view(xs, xl, "the input")?, f32_view(gs, gl, "the gradient")?);
        let with_residual = self.inner.with_residual;
        let mut out = stream_alloc::<f32>(device, if with_residual { 2 * total } else { total })?;
        let kernel = KERNELS.function(device, "bn_grad_input")?;
        let (b, c, p, act, residual) = (int(batch), int(channels), int(plane), self.inner.activation, i32::from(with_residual));
        with_optional_cuda(self.inner.y.as_ref(), "the output", |y| {
            with_cuda(&self.inner.affine, "the weight and bias", |as_, al| {
                with_cuda(&self.inner.stats, "the statistics", |ss, sl| {
                    with_cuda(&self.sums, "the gradient sums", |us, ul| {
                        let yv = y.map(|(ys, yl)| f32_view(ys, yl, "the output")).transpose()?;
                        let av = f32_view(as_, al, "the weight and bias")?;
                        let (sv, uv) = (f64_view(ss, sl, "the statistics")?, f64_view(us, ul, "the gradient sums")?);
                        let null: u64 = 0;
                        let mut launch = stream.launch_builder(&kernel);
                        launch.arg(&xv);
                        arg_or_null(&mut launch, yv.as_ref(), &null);
                        launch.arg(&gv).arg(&av).arg(&sv).arg(&uv).arg(&mut out);
                        launch.arg(&b).arg(&c).arg(&p).arg(&act).arg(&residual);
                        // SAFETY: the parameters match the kernel's; x, y (or null, which the kernel
                        // tests) and dy hold `total` f32 values, out `total` (twice that with a residual,
                        // as the flag says), affine 2·C f32, stats 3·C and sums 2·C f64.
                        unsafe { launch.launch(plane_grid(batch, channels, plane)) }.map_err(driver_error("batch norm kernel"))
                    })
                })
            })
        })?;
        let mut dims = xl.shape().dims().to_vec();
        if with_residual {
            dims.insert(0, 2);
        }
        Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Shape::from(dims)))
    }
}

impl CustomOp2 for GradientInput<'_> {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch-norm-grad-input-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.run(xs, xl, gs, gl)
    }
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use candle_core::{Device, Var};

    use super::*;
    use crate::test_tensors::{NormalTensors, max_abs};

    /// Every activation, with and without a residual, at shapes whose batch is split into several
    /// slices and not (and 1x1 planes, one of them in more images than the grid's 65,535), against
    /// the CPU kernel: output, mean, unbiased variance and the gradients of x, gamma, beta and the
    /// residual; a channel with a large mean and a small spread keeps its variance.
    #[test]
    fn the_cuda_kernels_match_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(11);
        let activations = [FusedActivation::Identity, FusedActivation::Relu, FusedActivation::Relu6, FusedActivation::Silu];
        // The last: more images than the elementwise grid has blocks that way (65,535).
        for shape in [(2, 3, 5, 4), (4, 2, 1, 1), (8, 2, 7, 9), (3, 600, 3, 3), (70_000, 2, 1, 1)] {
            for (activation, with_residual) in activations.into_iter().flat_map(|a| [(a, false), (a, true)]) {
                let case = format!("{shape:?} {activation:?} residual {with_residual}");
                let mut x = (random.draw(0.0, 2.0, shape) + 0.7).unwrap();
                if shape.1 >= 2 {
                    let far = (random.draw(0.0, 0.01, (shape.0, 1, shape.2, shape.3)) + 1000.0).unwrap();
                    x = Tensor::cat(&[far, x.narrow(1, 1, shape.1 - 1).unwrap()], 1).unwrap();
                }
                let gamma = random.draw(3.0, 0.3, shape.1);
                let beta = random.draw(1.5, 0.3, shape.1);
                let residual = random.draw(0.0, 1.0, shape);
                let upstream = random.draw(0.0, 1.0, shape);
                let run = |device: &Device| {
                    let on = |t: &Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
                    let (x, gamma, beta, residual) = (on(&x), on(&gamma), on(&beta), on(&residual));
                    let params = BatchNormParams { gamma: gamma.as_tensor(), beta: beta.as_tensor(), eps: 1e-5 };
                    let out =
                        crate::batch_norm_train(x.as_tensor(), params, with_residual.then_some(residual.as_tensor()), activation).unwrap();
                    let grads = (&out.y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                    let mut results = vec![cpu(&out.y), cpu(&out.mean), cpu(&out.unbiased_var)];
                    for var in [&x, &gamma, &beta] {
                        results.push(cpu(grads.get(var.as_tensor()).expect("every input gets a gradient")));
                    }
                    if with_residual {
                        results.push(cpu(grads.get(residual.as_tensor()).expect("the residual gets a gradient")));
                    }
                    results
                };
                let (truth, ours) = (run(&Device::Cpu), run(&gpu));
                let names =
                    ["output", "mean", "unbiased variance", "input gradient", "gamma gradient", "beta gradient", "residual gradient"];
                for ((what, expected), actual) in names.iter().zip(&truth).zip(&ours) {
                    assert_eq!(expected.dims(), actual.dims(), "{what} {case}");
                    let error = max_abs((expected - actual).unwrap()) / max_abs(expected.clone()).max(1.0);
                    assert!(error < 1e-5, "{what} {case}: relative error {error}");
                }
            }
        }
    }
    /// Eval mode against the CPU kernel, to the bit (SiLU: within 1e-6 relative, the exponentials
    /// differing): every activation with and without a residual, at planes smaller than a warp, of
    /// 7x7 (64 threads), of 56x56 (several stretches per plane) and 1x1 (once in more images than
    /// the grid's 65,535), and a channel with a large mean.
    #[test]
    fn the_eval_kernel_matches_the_cpu_kernel_to_the_bit() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(12);
        let activations = [FusedActivation::Identity, FusedActivation::Relu, FusedActivation::Relu6, FusedActivation::Silu];
        // The last: more images than the grid has blocks that way (65,535).
        for shape in [(2, 3, 5, 4), (3, 70, 7, 7), (2, 4, 56, 56), (5, 600, 1, 1), (70_000, 2, 1, 1)] {
            for (activation, with_residual) in activations.into_iter().flat_map(|a| [(a, false), (a, true)]) {
                let case = format!("{shape:?} {activation:?} residual {with_residual}");
                let x = (random.draw(0.0, 3.0, shape) + 1.0).unwrap();
                let x = Tensor::cat(&[(x.narrow(1, 0, 1).unwrap() + 1000.0).unwrap(), x.narrow(1, 1, shape.1 - 1).unwrap()], 1).unwrap();
                let (gamma, beta) = (random.draw(1.0, 0.5, shape.1), random.draw(0.5, 0.5, shape.1));
                let mean = random.draw(1.0, 1.0, shape.1);
                let var = (random.draw(0.0, 2.0, shape.1).sqr().unwrap() + 0.01).unwrap();
                let residual = random.draw(0.0, 2.0, shape);
                let run = |device: &Device| {
                    let on = |t: &Tensor| t.to_device(device).unwrap();
                    let (gamma, beta, mean, var, residual) = (on(&gamma), on(&beta), on(&mean), on(&var), on(&residual));
                    let params = BatchNormParams { gamma: &gamma, beta: &beta, eps: 1e-5 };
                    let running = RunningStatistics { mean: &mean, var: &var };
                    let y = crate::batch_norm_eval(&on(&x), params, running, with_residual.then_some(&residual), activation).unwrap();
                    y.to_device(&Device::Cpu).unwrap()
                };
                let (truth, ours) = (run(&Device::Cpu), run(&gpu));
                if activation == FusedActivation::Silu {
                    let error = max_abs((&truth - &ours).unwrap()) / max_abs(truth.clone()).max(1.0);
                    assert!(error < 1e-6, "{case}: relative error {error}");
                } else {
                    assert_eq!(crate::test_tensors::bits(&truth), crate::test_tensors::bits(&ours), "{case}");
                }
            }
        }
    }

    /// The running estimates' in-place update (`running.rs`) has the CPU's bits.
    #[test]
    fn the_cuda_update_is_the_cpu_update_bit_for_bit() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(32);
        let (running, batch) = (random.draw(0.3, 1.7, 1000), random.draw(-0.2, 2.3, 1000));
        let run = |device: &Device| {
            let on = |t: &Tensor| t.to_device(device).unwrap();
            let (mean, var) = (Var::from_tensor(&on(&running)).unwrap(), Var::from_tensor(&on(&running)).unwrap());
            let out = BatchNormOutput { y: on(&batch), mean: on(&batch), unbiased_var: on(&batch) };
            crate::update_running_statistics(&mean, &var, &out, 0.1).unwrap();
            crate::test_tensors::bits(var.as_tensor())
        };
        assert!(run(&Device::Cpu) == run(&gpu), "the running estimates differ");
    }
}
