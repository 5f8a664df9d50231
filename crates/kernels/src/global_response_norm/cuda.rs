//! Global Response Normalization's CUDA halves (the ops are `mod.rs`'s), with the CPU op's
//! formulas: each image's per-channel sums over its tokens in f64 (one block per image and 32
//! channels, its warps reading 32 consecutive channels of a token), then per image one block for
//! the norms' mean and the constants each channel needs, then one elementwise pass. Forward, y is
//! computed in the CPU op's f32 operations from the same f32 scales; the sums add in another
//! order, so the scales (and everything after) agree with the CPU's to f64's rounding, which f32
//! hides but for a rare last bit. The parameters' gradients add the images' parts in image order.
//!
//! candle's composition, which a GPU took before: nine ops, the sums over the tokens through
//! candle's strided reduction, one block per (image, channel), and backward as many again.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Shape, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device; `MEDXFER_CUDA_GRN=candle` keeps candle's composition, to measure.
pub(super) fn applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_GRN") && x.device().is_cuda() && x.dtype() == DType::F32
}

const SOURCE: &str = r#"
// Block b: image b / tiles, channels (b % tiles) * 32 + lane; 256 threads, thread (row, lane) adds
// tokens row, row + 8, ... of its channel, then a channel's 8 rows are added in order. Per (image,
// channel): the squares of x, and with GRAD the products dy x and the sums of dy.
template <bool GRAD>
__device__ void column_sums(const float* __restrict__ x, const float* __restrict__ dy, double* __restrict__ squares,
                            double* __restrict__ products, double* __restrict__ sums, unsigned tokens, unsigned channels) {
    __shared__ double part[3][8][32];
    unsigned tiles = (channels + 31) / 32, lane = threadIdx.x % 32, row = threadIdx.x / 32;
    unsigned image = blockIdx.x / tiles, c = blockIdx.x % tiles * 32 + lane;
    double square = 0.0, product = 0.0, sum = 0.0;
    if (c < channels) {
        size_t base = (size_t)image * tokens * channels + c;
        for (unsigned n = row; n < tokens; n += 8) {
            double v = (double)x[base + (size_t)n * channels];
            square += v * v;
            if (GRAD) {
                double d = (double)dy[base + (size_t)n * channels];
                product += d * v;
                sum += d;
            }
        }
    }
    part[0][row][lane] = square;
    part[1][row][lane] = product;
    part[2][row][lane] = sum;
    __syncthreads();
    if (row == 0 && c < channels) {
        double totals[3] = {0.0, 0.0, 0.0};
        for (unsigned k = 0; k < 3; k++)
            for (unsigned r = 0; r < 8; r++) totals[k] += part[k][r][lane];
        size_t o = (size_t)image * channels + c;
        squares[o] = totals[0];
        if (GRAD) {
            products[o] = totals[1];
            sums[o] = totals[2];
        }
    }
}

extern "C" __global__ void grn_squares(const float* __restrict__ x, double* __restrict__ squares, unsigned tokens, unsigned channels) {
    column_sums<false>(x, nullptr, squares, nullptr, nullptr, tokens, channels);
}

extern "C" __global__ void grn_gradient_sums(const float* __restrict__ x, const float* __restrict__ dy, double* __restrict__ squares,
                                             double* __restrict__ products, double* __restrict__ sums, unsigned tokens,
                                             unsigned channels) {
    column_sums<true>(x, dy, squares, products, sums, tokens, channels);
}

// The sum of every thread's v over the block (256 threads): a fixed tree, the total to all.
__device__ double block_total(double v) {
    __shared__ double partial[256];
    __syncthreads();
    partial[threadIdx.x] = v;
    __syncthreads();
    for (unsigned half = 128; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

// The denominator of image `image`: the mean over its channels of the norms sqrt(squares), + eps.
__device__ double denominator(const double* __restrict__ squares, unsigned image, unsigned channels, double eps) {
    double sum = 0.0;
    for (unsigned c = threadIdx.x; c < channels; c += 256) sum += sqrt(squares[(size_t)image * channels + c]);
    return block_total(sum) / channels + eps;
}

// Block b (256 threads): image b's scales n[c] = s[c] / (mean s + eps), rounded to f32.
extern "C" __global__ void grn_scales(const double* __restrict__ squares, float* __restrict__ scales, unsigned channels, double eps) {
    double d = denominator(squares, blockIdx.x, channels, eps);
    for (unsigned c = threadIdx.x; c < channels; c += 256) {
        size_t o = (size_t)blockIdx.x * channels + c;
        scales[o] = (float)(sqrt(squares[o]) / d);
    }
}

// y = x + ((x n) weight + bias), each f32 operation rounded on its own, as the CPU op.
extern "C" __global__ void grn_forward(const float* __restrict__ x, const float* __restrict__ scales, const float* __restrict__ weight,
                                       const float* __restrict__ bias, float* __restrict__ out, unsigned n, unsigned tokens,
                                       unsigned channels) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned c = i % channels, image = i / channels / tokens;
        float v = x[i];
        out[i] = __fadd_rn(v, __fadd_rn(__fmul_rn(__fmul_rn(v, scales[(size_t)image * channels + c]), weight[c]), bias[c]));
    }
}

// Block b (256 threads), image b, in f64: dn[c] = weight[c] A[c] (A the products dy x); coupling =
// sum over c of dn[c] s[c] / (C d^2); through[c] = (dn[c] / d - coupling) / s[c] (0 for a zero
// norm); direct[c] = 1 + n[c] weight[c]; weight_part[c] = A[c] n[c].
extern "C" __global__ void grn_backward_constants(const double* __restrict__ squares, const double* __restrict__ products,
                                                  const float* __restrict__ weight, double* __restrict__ through,
                                                  double* __restrict__ direct, double* __restrict__ weight_part, unsigned channels,
                                                  double eps) {
    double d = denominator(squares, blockIdx.x, channels, eps);
    size_t base = (size_t)blockIdx.x * channels;
    double coupling = 0.0;
    for (unsigned c = threadIdx.x; c < channels; c += 256) coupling += products[base + c] * (double)weight[c] * sqrt(squares[base + c]);
    coupling = block_total(coupling) / ((double)channels * d * d);
    for (unsigned c = threadIdx.x; c < channels; c += 256) {
        double s = sqrt(squares[base + c]), dn = products[base + c] * (double)weight[c], scale = s / d;
        through[base + c] = s > 0.0 ? (dn / d - coupling) / s : 0.0;
        direct[base + c] = 1.0 + scale * (double)weight[c];
        weight_part[base + c] = products[base + c] * scale;
    }
}

// dx = dy direct + through x, rounded once, into out[0 .. n].
extern "C" __global__ void grn_input_gradient(const float* __restrict__ x, const float* __restrict__ dy, const double* __restrict__ through,
                                              const double* __restrict__ direct, float* __restrict__ out, unsigned n, unsigned tokens,
                                              unsigned channels) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        size_t o = (size_t)(i / channels / tokens) * channels + i % channels;
        out[i] = (float)((double)dy[i] * direct[o] + through[o] * (double)x[i]);
    }
}

// Thread c: out[offset + c] = the weight's gradient, out[offset + channels + c] the bias's: the
// images' parts added in image order.
extern "C" __global__ void grn_parameter_gradients(const double* __restrict__ weight_part, const double* __restrict__ sums,
                                                   float* __restrict__ out, unsigned offset, unsigned images, unsigned channels) {
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double w = 0.0, b = 0.0;
    for (unsigned image = 0; image < images; image++) {
        w += weight_part[(size_t)image * channels + c];
        b += sums[(size_t)image * channels + c];
    }
    out[offset + c] = (float)w;
    out[offset + channels + c] = (float)b;
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_global_response_norm", SOURCE);

/// timm's epsilon (`super::EPS`), as the kernels take it.
const EPS: f64 = super::EPS;

/// (images, tokens, channels) of x, checked against the kernels' 32-bit indices and grids.
fn sizes(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize, usize)> {
    let (images, tokens, channels) = layout.shape().dims3()?;
    let tiles = images * channels.div_ceil(32);
    if layout.shape().elem_count() + 2 * channels > u32::MAX as usize / 2 || tiles > i32::MAX as usize || images > 65_535 * 1024 {
        candle_core::bail!("{op}: {:?} is larger than the CUDA kernels index", layout.shape());
    }
    Ok((images, tokens, channels))
}

/// A one-dimensional launch of `blocks` blocks of `threads`.
fn grid(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// A grid-stride elementwise launch over `n` values.
fn elementwise(n: usize) -> LaunchConfig {
    grid(n.div_ceil(256).clamp(1, 65_535 * 8), 256)
}

fn f64_buffer(device: &CudaDevice, len: usize) -> candle_core::Result<CudaSlice<f64>> {
    // SAFETY: every caller launches a kernel that writes all `len` values before any kernel,
    // queued after it on the same stream, reads them.
    unsafe { device.alloc::<f64>(len) }
}

/// y = x + ((x n) weight + bias) (`GlobalResponseNorm`'s forward pass).
pub(super) fn forward(
    (x, x_layout): (&CudaStorage, &Layout),
    (weight, weight_layout): (&CudaStorage, &Layout),
    (bias, bias_layout): (&CudaStorage, &Layout),
    op: &'static str,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (images, tokens, channels) = sizes(x_layout, op)?;
    let xv = input_view::<f32>(x, x_layout, op, "the tokens")?;
    let wv = input_view::<f32>(weight, weight_layout, op, "the weight")?;
    let bv = input_view::<f32>(bias, bias_layout, op, "the bias")?;
    if wv.len() != channels || bv.len() != channels {
        candle_core::bail!("{op}: {} weights and {} biases for {channels} channels", wv.len(), bv.len());
    }
    let device = x.device();
    let stream = device.cuda_stream();
    let (n, tokens32, channels32) = ((images * tokens * channels) as u32, tokens as u32, channels as u32);
    let mut squares = f64_buffer(device, images * channels)?;
    let function = KERNELS.function(device, "grn_squares")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&xv).arg(&mut squares).arg(&tokens32).arg(&channels32);
    // SAFETY: x holds images·tokens·channels f32 values and squares images·channels (`sizes`
    // bounds both); each block writes its image's 32 channels.
    unsafe { launch.launch(grid(images * channels.div_ceil(32), 256)) }.map_err(driver_error(op))?;
    // SAFETY: grn_scales writes every image's scales before grn_forward, queued after it, reads them.
    let mut scales = unsafe { device.alloc::<f32>(images * channels) }?;
    let function = KERNELS.function(device, "grn_scales")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&squares).arg(&mut scales).arg(&channels32).arg(&EPS);
    // SAFETY: squares and scales hold images·channels values; one 256-thread block per image, as
    // the kernel's shared array.
    unsafe { launch.launch(grid(images, 256)) }.map_err(driver_error(op))?;
    // SAFETY: the kernel writes all n values before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(n as usize) }?;
    let function = KERNELS.function(device, "grn_forward")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&xv).arg(&scales).arg(&wv).arg(&bv).arg(&mut out).arg(&n).arg(&tokens32).arg(&channels32);
    // SAFETY: x and out hold n f32 values, scales images·channels, weight and bias channels
    // (checked); each thread writes its own values.
    unsafe { launch.launch(elementwise(n as usize)) }.map_err(driver_error(op))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), x_layout.shape().clone()))
}

/// dx, then the weight's and the bias's gradients, in one buffer (`Gradients`' layout).
pub(super) fn gradients(
    (x, x_layout): (&CudaStorage, &Layout),
    (weight, weight_layout): (&CudaStorage, &Layout),
    (dy, dy_layout): (&CudaStorage, &Layout),
    op: &'static str,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (images, tokens, channels) = sizes(x_layout, op)?;
    let xv = input_view::<f32>(x, x_layout, op, "the tokens")?;
    let wv = input_view::<f32>(weight, weight_layout, op, "the weight")?;
    let dyv = input_view::<f32>(dy, dy_layout, op, "the gradient")?;
    if wv.len() != channels || dyv.len() != xv.len() {
        candle_core::bail!("{op}: {} weights and {} gradients for tokens of shape {:?}", wv.len(), dyv.len(), x_layout.shape());
    }
    let device = x.device();
    let stream = device.cuda_stream();
    let (n, tokens32, channels32, images32) = ((images * tokens * channels) as u32, tokens as u32, channels as u32, images as u32);
    let per_channel = images * channels;
    let (mut squares, mut products, mut sums) =
        (f64_buffer(device, per_channel)?, f64_buffer(device, per_channel)?, f64_buffer(device, per_channel)?);
    let function = KERNELS.function(device, "grn_gradient_sums")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&xv).arg(&dyv).arg(&mut squares).arg(&mut products).arg(&mut sums).arg(&tokens32).arg(&channels32);
    // SAFETY: x and dy hold images·tokens·channels f32 values, the three sums images·channels;
    // each block writes its image's 32 channels.
    unsafe { launch.launch(grid(images * channels.div_ceil(32), 256)) }.map_err(driver_error(op))?;
    let (mut through, mut direct, mut weight_part) =
        (f64_buffer(device, per_channel)?, f64_buffer(device, per_channel)?, f64_buffer(device, per_channel)?);
    let function = KERNELS.function(device, "grn_backward_constants")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&squares).arg(&products).arg(&wv).arg(&mut through).arg(&mut direct).arg(&mut weight_part).arg(&channels32).arg(&EPS);
    // SAFETY: every per-channel buffer holds images·channels f64 values, the weight channels; one
    // 256-thread block per image, as the kernel's shared array.
    unsafe { launch.launch(grid(images, 256)) }.map_err(driver_error(op))?;
    let total = n as usize + 2 * channels;
    // SAFETY: grn_input_gradient writes out[..n] and grn_parameter_gradients out[n..], all of it,
    // before anything reads it.
    let mut out = unsafe { device.alloc::<f32>(total) }?;
    let function = KERNELS.function(device, "grn_input_gradient")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&xv).arg(&dyv).arg(&through).arg(&direct).arg(&mut out).arg(&n).arg(&tokens32).arg(&channels32);
    // SAFETY: x and dy hold n f32 values, out n + 2·channels, the constants images·channels;
    // each thread writes its own values of out[..n].
    unsafe { launch.launch(elementwise(n as usize)) }.map_err(driver_error(op))?;
    let function = KERNELS.function(device, "grn_parameter_gradients")?;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&weight_part).arg(&sums).arg(&mut out).arg(&n).arg(&images32).arg(&channels32);
    // SAFETY: the parts hold images·channels f64 values; thread c writes out[n + c] and
    // out[n + channels + c], within its n + 2·channels.
    unsafe { launch.launch(grid(channels.div_ceil(256), 256)) }.map_err(driver_error(op))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Shape::from(total)))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{DType, Device, Tensor, Var};

    use crate::test_tensors::{NormalTensors, bits, max_abs};

    /// The output and the three gradients against the CPU op within 1e-6 of each one's largest
    /// value (the sums add in another order), and the same bits twice: ConvNeXt V2-T's first
    /// stage's MLP width at a small batch, odd sizes, a channel that is zero everywhere.
    #[test]
    fn the_cuda_op_matches_the_cpu_op() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(73);
        for (images, tokens, channels, zero_channel) in [(4usize, 3136usize, 384usize, false), (3, 49, 37, true), (2, 1, 5, false)] {
            let case = format!("{:?}", (images, tokens, channels));
            let mut x = random.draw(0.0, 1.0, (images, tokens, channels));
            if zero_channel {
                let mask: Vec<f32> = (0..channels).map(|c| if c == 1 { 0.0 } else { 1.0 }).collect();
                x = x.broadcast_mul(&Tensor::new(mask.as_slice(), &Device::Cpu).unwrap()).unwrap();
            }
            let (weight, bias) = (random.draw(0.3, 0.5, channels), random.draw(0.0, 0.5, channels));
            let upstream = random.draw(0.0, 1.0, (images, tokens, channels));
            let run = |device: &Device| {
                let on = |t: &Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
                let (xv, wv, bv) = (on(&x), on(&weight), on(&bias));
                let y = crate::global_response_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor()).unwrap();
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                [
                    back(&y),
                    back(grads.get(xv.as_tensor()).unwrap()),
                    back(grads.get(wv.as_tensor()).unwrap()),
                    back(grads.get(bv.as_tensor()).unwrap()),
                ]
            };
            let (truth, ours) = (run(&Device::Cpu), run(&gpu));
            for (what, (t, o)) in ["output", "input gradient", "weight gradient", "bias gradient"].iter().zip(truth.iter().zip(&ours)) {
                let error =
                    max_abs((t.to_dtype(DType::F64).unwrap() - o.to_dtype(DType::F64).unwrap()).unwrap().to_dtype(DType::F32).unwrap())
                        / max_abs(t.clone()).max(1.0);
                assert!(error < 1e-6, "{case}: {what} relative error {error}");
            }
            let again = run(&gpu);
            assert!(ours.iter().zip(&again).all(|(a, b)| bits(a) == bits(b)), "{case}: two runs differ");
        }
    }
}
