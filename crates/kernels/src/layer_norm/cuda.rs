//! LayerNorm of f32 CUDA rows as one graph node each way, kernels of our own (`crate::nvrtc`),
//! where candle's composition is nine kernels forward, each output kept for a backward pass of
//! many more (a ViT-S training step has 25 of them).
//!
//! The formulas are the CPU kernel's (`cpu.rs`): one warp per row, the row's mean and variance
//! summed in f64 (two passes over the row, which stays in L1); the backward pass recomputes them,
//! writes dx per row and each row's mean and 1/std, then sums dweight and dbias over fixed
//! blocks of rows and those partial sums in a fixed order (deterministic, no atomics). The three
//! gradients come packed as the CPU op's, [dx, dweight, dbias], so the op's backward is shared.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device; `MEDXFER_CUDA_LAYERNORM=candle` keeps candle's composition, to measure.
pub(super) fn applies(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_LAYERNORM")
        && [x, weight, bias].into_iter().all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
}

const SOURCE: &str = r#"
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// A row's mean and 1 / sqrt(var + eps), by one warp, in f64.
__device__ __forceinline__ void row_stats(const float* row, int width, double eps, float &mean, float &rstd) {
    int lane = threadIdx.x & 31;
    double sum = 0.0;
    for (int j = lane; j < width; j += 32) sum += (double)row[j];
    double m = warp_sum(sum) / width;
    double squares = 0.0;
    for (int j = lane; j < width; j += 32) { double d = (double)row[j] - m; squares += d * d; }
    double var = warp_sum(squares) / width;
    mean = (float)m;
    rstd = (float)(1.0 / sqrt(var + eps));
}

// y = (x - mean) * rstd * w + b, one warp per row.
extern "C" __global__ void ln_forward(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, float* __restrict__ y,
                                      int rows, int width, double eps) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const float* xr = x + (size_t)row * width;
    float* yr = y + (size_t)row * width;
    float mean, rstd;
    row_stats(xr, width, eps, mean, rstd);
    for (int j = threadIdx.x & 31; j < width; j += 32) yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w; each row's mean and rstd into stats.
extern "C" __global__ void ln_grad_input(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ dy, float* __restrict__ dx,
                                         float* __restrict__ stats, int rows, int width, double eps) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    const float* xr = x + (size_t)row * width;
    const float* gr = dy + (size_t)row * width;
    float* dr = dx + (size_t)row * width;
    float mean, rstd;
    row_stats(xr, width, eps, mean, rstd);
    double sum_g = 0.0, sum_gx = 0.0;
    // The products rounded as the CPU kernel rounds them (__fmul_rn is never fused into an
    // FMA): a row of one value must give dx = 0 exactly, and 1 / sqrt(eps) amplifies any
    // difference between g and its mean (5.7e-5 for a width-1 row with fused products).
    for (int j = lane; j < width; j += 32) {
        float xhat = __fmul_rn(xr[j] - mean, rstd);
        float g = __fmul_rn(gr[j], w[j]);
        sum_g += (double)g;
        sum_gx += (double)__fmul_rn(g, xhat);
    }
    float mean_g = (float)(warp_sum(sum_g) / width), mean_gx = (float)(warp_sum(sum_gx) / width);
    for (int j = lane; j < width; j += 32) {
        float xhat = __fmul_rn(xr[j] - mean, rstd);
        float g = __fmul_rn(gr[j], w[j]);
        dr[j] = rstd * (g - mean_g - __fmul_rn(xhat, mean_gx));
    }
    if (lane == 0) { stats[2 * (size_t)row] = mean; stats[2 * (size_t)row + 1] = rstd; }
}

// Block c: over rows [c R / C, (c + 1) R / C), per column j the sums of dy xhat and dy, into
// partial[c * 2 width + j] and partial[c * 2 width + width + j].
extern "C" __global__ void ln_grad_partial(const float* __restrict__ x, const float* __restrict__ dy,
                                           const float* __restrict__ stats, double* __restrict__ partial,
                                           int rows, int width, int chunks) {
    int c = blockIdx.x;
    int r0 = (int)((long long)c * rows / chunks), r1 = (int)((long long)(c + 1) * rows / chunks);
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        double sum_dyx = 0.0, sum_dy = 0.0;
        for (int r = r0; r < r1; r++) {
            size_t i = (size_t)r * width + j;
            float xhat = (x[i] - stats[2 * (size_t)r]) * stats[2 * (size_t)r + 1];
            sum_dyx += (double)(dy[i] * xhat);
            sum_dy += (double)dy[i];
        }
        partial[(size_t)c * 2 * width + j] = sum_dyx;
        partial[(size_t)c * 2 * width + width + j] = sum_dy;
    }
}

// One thread per column: out[j] (dweight) and out[width + j] (dbias), the chunks in order.
extern "C" __global__ void ln_grad_finish(const double* __restrict__ partial, float* __restrict__ out,
                                          int width, int chunks) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= 2 * width) return;
    double sum = 0.0;
    for (int c = 0; c < chunks; c++) sum += partial[(size_t)c * 2 * width + j];
    out[j] = (float)sum;
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_layer_norm", SOURCE);

/// Rows per block of the row kernels: one warp each.
const WARPS: u32 = 8;

fn view<'a>(storage: &'a CudaStorage, layout: &Layout, what: &str) -> candle_core::Result<CudaView<'a, f32>> {
    input_view(storage, layout, "layer norm", what)
}

/// Rows and width of x, checked against the kernels' 32-bit row and column indices.
fn rows_and_width(x: &Layout, weight: &Layout) -> candle_core::Result<(usize, usize)> {
    let width = weight.shape().elem_count();
    let count = x.shape().elem_count();
    if width == 0 || !count.is_multiple_of(width) || count / width > i32::MAX as usize || width > i32::MAX as usize / 2 {
        candle_core::bail!("layer norm: input {:?} with rows of {width}", x.shape());
    }
    Ok((count / width, width))
}

fn row_grid(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((rows as u32).div_ceil(WARPS), 1, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 }
}

pub(super) struct Forward {
    pub(super) eps: f64,
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "layer-norm-cuda"
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
        candle_core::bail!("layer-norm-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let stream = device.cuda_stream();
        let (rows, width) = rows_and_width(xl, wl)?;
        let (x, w, b) = (view(xs, xl, "the input")?, view(ws, wl, "the weight")?, view(bs, bl, "the bias")?);
        if b.len() != width {
            candle_core::bail!("layer norm: a bias of {} for rows of {width}", b.len());
        }
        // SAFETY: the kernel writes every element before anything reads it.
        let mut y = unsafe { device.alloc::<f32>(rows * width) }?;
        let kernel = KERNELS.function(device, "ln_forward")?;
        let (r, c) = (rows as i32, width as i32);
        let mut launch = stream.launch_builder(&kernel);
        launch.arg(&x).arg(&w).arg(&b).arg(&mut y).arg(&r).arg(&c).arg(&self.eps);
        // SAFETY: the parameters match the kernel's: x and y hold rows·width f32 values, w and b
        // width; each warp reads and writes its own row.
        unsafe { launch.launch(row_grid(rows)) }.map_err(driver_error("layer norm kernel"))?;
        Ok((CudaStorage::wrap_cuda_slice(y, device.clone()), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &grad.contiguous()?, &Backward { eps: self.eps })?;
        super::cpu::unpack_gradients(&packed, x, weight)
    }
}

/// [dx, dweight, dbias] packed in one buffer.
struct Backward {
    eps: f64,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "layer-norm-backward-cuda"
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
        candle_core::bail!("layer-norm-backward-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let stream = device.cuda_stream();
        let (rows, width) = rows_and_width(xl, wl)?;
        let (x, w, dy) = (view(xs, xl, "the input")?, view(ws, wl, "the weight")?, view(gs, gl, "the gradient")?);
        if dy.len() != rows * width {
            candle_core::bail!("layer norm: a gradient of {} values for an input of {}", dy.len(), rows * width);
        }
        let count = rows * width;
        // About 1,024 blocks of rows for the column sums, never more than rows.
        let chunks = 1024.min(rows).max(1);
        // SAFETY: the kernels below write every element before any is read: dx and the per-row
        // statistics (ln_grad_input), the partial sums (ln_grad_partial), the packed tail (ln_grad_finish).
        let mut packed = unsafe { device.alloc::<f32>(count + 2 * width) }?;
        // SAFETY: as above.
        let mut stats = unsafe { device.alloc::<f32>(2 * rows) }?;
        // SAFETY: as above.
        let mut partial = unsafe { device.alloc::<f64>(chunks * 2 * width) }?;
        let (r, c, k) = (rows as i32, width as i32, chunks as i32);
        {
            let kernel = KERNELS.function(device, "ln_grad_input")?;
            let mut dx = packed.slice_mut(0..count);
            let mut launch = stream.launch_builder(&kernel);
            launch.arg(&x).arg(&w).arg(&dy).arg(&mut dx).arg(&mut stats).arg(&r).arg(&c).arg(&self.eps);
            // SAFETY: x, dy and dx hold rows·width f32 values, w width, stats 2·rows; each warp
            // reads and writes its own row.
            unsafe { launch.launch(row_grid(rows)) }.map_err(driver_error("layer norm kernel"))?;
        }
        {
            let kernel = KERNELS.function(device, "ln_grad_partial")?;
            let mut launch = stream.launch_builder(&kernel);
            launch.arg(&x).arg(&dy).arg(&stats).arg(&mut partial).arg(&r).arg(&c).arg(&k);
            let grid = LaunchConfig { grid_dim: (chunks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: partial holds chunks·2·width f64 values; block c writes its own 2·width.
            unsafe { launch.launch(grid) }.map_err(driver_error("layer norm kernel"))?;
        }
        {
            let kernel = KERNELS.function(device, "ln_grad_finish")?;
            let mut sums = packed.slice_mut(count..count + 2 * width);
            let mut launch = stream.launch_builder(&kernel);
            launch.arg(&partial).arg(&mut sums).arg(&c).arg(&k);
            let grid = LaunchConfig { grid_dim: ((2 * width as u32).div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: sums is the packed buffer's last 2·width values, one thread each.
            unsafe { launch.launch(grid) }.map_err(driver_error("layer norm kernel"))?;
        }
        Ok((CudaStorage::wrap_cuda_slice(packed, device.clone()), Shape::from(count + 2 * width)))
    }
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use candle_core::{Device, Var};

    use crate::test_tensors::{NormalTensors, max_abs};

    /// Output and the gradients of x, weight and bias against the CPU kernel, at ViT widths and odd
    /// ones, with a shifted input; twice, to the bit.
    #[test]
    fn the_cuda_kernels_match_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(21);
        for (shape, shift) in
            [(vec![2usize, 197, 384], 0.0), (vec![5, 13], 30.0), (vec![3, 1], 0.0), (vec![4, 3, 2, 96], -4.0), (vec![1500, 33], 1.0)]
        {
            let width = *shape.last().unwrap();
            let x = random.draw(shift, 2.0, shape.clone());
            let w = random.draw(1.0, 0.5, width);
            let b = random.draw(0.0, 1.0, width);
            let upstream = random.draw(0.0, 1.0, shape.clone());
            let run = |device: &Device| {
                let on = |t: &candle_core::Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
                let (x, w, b) = (on(&x), on(&w), on(&b));
                let y = crate::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6).unwrap();
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let cpu = |t: &candle_core::Tensor| t.to_device(&Device::Cpu).unwrap();
                [
                    cpu(&y),
                    cpu(grads.get(x.as_tensor()).unwrap()),
                    cpu(grads.get(w.as_tensor()).unwrap()),
                    cpu(grads.get(b.as_tensor()).unwrap()),
                ]
            };
            let (truth, ours, again) = (run(&Device::Cpu), run(&gpu), run(&gpu));
            for (what, (expected, actual)) in
                ["output", "x gradient", "weight gradient", "bias gradient"].iter().zip(truth.iter().zip(&ours))
            {
                let error = max_abs((expected - actual).unwrap()) / max_abs(expected.clone()).max(1.0);
                eprintln!("{shape:?} {what}: relative error {error:.2e}");
                assert!(error < 1e-5, "{shape:?} {what}: {error}");
            }
            for (a, b) in ours.iter().zip(&again) {
                assert_eq!(max_abs((a - b).unwrap()), 0.0, "{shape:?}: two runs differ");
            }
        }
    }
}
