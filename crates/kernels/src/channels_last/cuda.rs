//! The moves' and the block end's CUDA halves (the ops are `cpu.rs`'s). Each image's matrix is
//! transposed through a 32x32 tile of shared memory, so that both the reads and the writes of a
//! warp are 32 consecutive values; the block end's scale and shortcut are applied as a tile is
//! written, in the CPU op's f32 operations (`__fmul_rn`, `__fadd_rn`: the same bits). The scale's
//! gradient is summed in f64 per tile, then per channel over the tiles in a fixed order:
//! deterministic, and within f32's rounding of the CPU's sum, which adds in another order.
//!
//! candle's composition, which a GPU took before: a permuted copy per move (an index computed per
//! value through a strides array), and at the block end a broadcast product, that copy and an add
//! forward; backward a second strided product and the scale's gradient as a full-size product
//! reduced over the batch and the positions, one block per channel.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Tensor};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device; `MEDXFER_CUDA_CHANNELS_LAST=candle` keeps candle's composition, to
/// measure.
pub(super) fn applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_CHANNELS_LAST") && x.device().is_cuda() && x.dtype() == DType::F32
}

const SOURCE: &str = r#"
// Block b moves one 32x32 tile of one image's (rows x cols) matrix `in` to `out` (cols x rows):
// out[j][r] = in[r][j], times scale[j] (SCALE 1, one per output row) or scale[r] (SCALE 2, one per
// output column), then added to addend[j][r] (ADD). 256 threads, 4 values each; the blocks are
// the images' tiles, tile columns fastest. The tile's extra column keeps the threads of a warp on
// 32 different banks when they read a column of it.
template <int SCALE, bool ADD>
__device__ void move_tile(const float* __restrict__ in, const float* __restrict__ scale,
                          const float* __restrict__ addend, float* __restrict__ out, unsigned rows, unsigned cols) {
    __shared__ float tile[32][33];
    unsigned tiles_c = (cols + 31) / 32, tiles_r = (rows + 31) / 32;
    unsigned tc = blockIdx.x % tiles_c, tr = blockIdx.x / tiles_c % tiles_r;
    size_t base = (size_t)(blockIdx.x / tiles_c / tiles_r) * rows * cols;
    unsigned lane = threadIdx.x % 32, first = threadIdx.x / 32;
    for (unsigned k = first; k < 32; k += 8) {
        unsigned r = tr * 32 + k, c = tc * 32 + lane;
        if (r < rows && c < cols) tile[k][lane] = in[base + (size_t)r * cols + c];
    }
    __syncthreads();
    for (unsigned k = first; k < 32; k += 8) {
        unsigned j = tc * 32 + k, r = tr * 32 + lane;
        if (j < cols && r < rows) {
            float v = tile[lane][k];
            if (SCALE == 1) v = __fmul_rn(v, scale[j]);
            if (SCALE == 2) v = __fmul_rn(v, scale[r]);
            size_t o = base + (size_t)j * rows + r;
            if (ADD) v = __fadd_rn(addend[o], v);
            out[o] = v;
        }
    }
}

// A move: to channels-last, rows the channels; to channels-first, rows the positions.
extern "C" __global__ void move_plain(const float* __restrict__ in, float* __restrict__ out, unsigned rows, unsigned cols) {
    move_tile<0, false>(in, nullptr, nullptr, out, rows, cols);
}

// The branch's gradient with a scale: dy (channels x positions) to channels-last, each value times
// its channel's scale.
extern "C" __global__ void move_scaled(const float* __restrict__ in, const float* __restrict__ scale,
                                       float* __restrict__ out, unsigned rows, unsigned cols) {
    move_tile<2, false>(in, scale, nullptr, out, rows, cols);
}

// The block end without a scale: the branch (positions x channels) moved onto the shortcut.
extern "C" __global__ void move_onto(const float* __restrict__ in, const float* __restrict__ addend,
                                     float* __restrict__ out, unsigned rows, unsigned cols) {
    move_tile<0, true>(in, nullptr, addend, out, rows, cols);
}

// The block end: the shortcut plus the branch times its channel's scale.
extern "C" __global__ void move_scaled_onto(const float* __restrict__ in, const float* __restrict__ scale,
                                            const float* __restrict__ addend, float* __restrict__ out,
                                            unsigned rows, unsigned cols) {
    move_tile<1, true>(in, scale, addend, out, rows, cols);
}

// The scale's gradient, first pass (the second is the channel bias's `channel_totals`). Blocks as move_tile's over dy, each image a (channels x
// positions) matrix; the branch is (positions x channels). Block b writes, for each of its tile's
// channels c, partials[c * parts + image * tiles_p + tile_p] (parts = images x tiles_p): the sum over
// the tile's positions of dy[c][p] branch[p][c] in f64, each thread its 4 positions in order,
// then the tile's 8 rows of threads in order. dy goes through shared memory so that both reads
// are coalesced.
extern "C" __global__ void scale_gradient_partials(const float* __restrict__ dy, const float* __restrict__ branch,
                                                   double* __restrict__ partials, unsigned channels, unsigned positions,
                                                   unsigned parts) {
    __shared__ float tile[32][33];
    __shared__ double sums[8][32];
    unsigned tiles_p = (positions + 31) / 32, tiles_c = (channels + 31) / 32;
    unsigned tp = blockIdx.x % tiles_p, tc = blockIdx.x / tiles_p % tiles_c, image = blockIdx.x / tiles_p / tiles_c;
    size_t base = (size_t)image * channels * positions;
    unsigned lane = threadIdx.x % 32, first = threadIdx.x / 32;
    for (unsigned k = first; k < 32; k += 8) {
        unsigned c = tc * 32 + k, p = tp * 32 + lane;
        if (c < channels && p < positions) tile[k][lane] = dy[base + (size_t)c * positions + p];
    }
    __syncthreads();
    unsigned c = tc * 32 + lane;
    double sum = 0.0;
    for (unsigned k = first; k < 32; k += 8) {
        unsigned p = tp * 32 + k;
        if (p < positions && c < channels) sum += (double)tile[lane][k] * (double)branch[base + (size_t)p * channels + c];
    }
    sums[first][lane] = sum;
    __syncthreads();
    if (first == 0 && c < channels) {
        double total = 0.0;
        for (unsigned row = 0; row < 8; row++) total += sums[row][lane];
        partials[(size_t)c * parts + (size_t)image * tiles_p + tp] = total;
    }
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_channels_last", SOURCE);

/// The tiles of `images` (rows x cols) matrices as one grid of 256-thread blocks, checked against
/// the kernels' 32-bit sizes and the grid's limit.
fn tile_grid(images: usize, (rows, cols): (usize, usize), op: &str) -> candle_core::Result<LaunchConfig> {
    let blocks = images * rows.div_ceil(32) * cols.div_ceil(32);
    if rows * cols > u32::MAX as usize || blocks > i32::MAX as usize || blocks == 0 {
        candle_core::bail!("{op}: {images} matrices of {rows} x {cols} do not fit the CUDA kernels' grid");
    }
    Ok(LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
}

/// `input`'s `images` (rows x cols) matrices, each transposed by `kernel` (one of the `move_*`
/// kernels, whose operands between the input and the output are `operands`, each checked by the
/// caller against the kernel's reads).
fn moved(
    device: &CudaDevice,
    kernel: &str,
    input: &CudaView<'_, f32>,
    operands: &[&CudaView<'_, f32>],
    images: usize,
    (rows, cols): (usize, usize),
    op: &'static str,
) -> candle_core::Result<CudaStorage> {
    if input.len() != images * rows * cols {
        candle_core::bail!("{op}: {} values for {images} matrices of {rows} x {cols}", input.len());
    }
    let grid = tile_grid(images, (rows, cols), op)?;
    // SAFETY: the kernel writes every value of every matrix before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(input.len()) }?;
    let function = KERNELS.function(device, kernel)?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch.arg(input);
    for operand in operands {
        launch.arg(*operand);
    }
    let (rows32, cols32) = (rows as u32, cols as u32);
    launch.arg(&mut out).arg(&rows32).arg(&cols32);
    // SAFETY: input and out hold images·rows·cols f32 values (checked), and the callers check each
    // operand's length against the kernel's reads; each thread writes its own values.
    unsafe { launch.launch(grid) }.map_err(driver_error(op))?;
    Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
}

/// A move: `images` (rows x cols) matrices transposed.
pub(super) fn transposed(
    (x, layout): (&CudaStorage, &Layout),
    images: usize,
    matrix: (usize, usize),
    op: &'static str,
) -> candle_core::Result<CudaStorage> {
    let input = input_view::<f32>(x, layout, op, "the input")?;
    moved(x.device(), "move_plain", &input, &[], images, matrix, op)
}

/// The block end: each image's (positions x channels) branch moved onto the shortcut, times
/// the scale if given (lengths checked by the caller, `cpu::residual_sizes`).
pub(super) fn residual(
    (branch, branch_layout): (&CudaStorage, &Layout),
    scale: Option<(&CudaStorage, &Layout)>,
    (shortcut, shortcut_layout): (&CudaStorage, &Layout),
    (images, positions, channels): (usize, usize, usize),
    op: &'static str,
) -> candle_core::Result<CudaStorage> {
    let input = input_view::<f32>(branch, branch_layout, op, "the branch")?;
    let addend = input_view::<f32>(shortcut, shortcut_layout, op, "the shortcut")?;
    if addend.len() != input.len() {
        candle_core::bail!("{op}: a shortcut of {} values for a branch of {}", addend.len(), input.len());
    }
    let matrix = (positions, channels);
    match scale {
        Some((scale, scale_layout)) => {
            let scale = channel_scales(scale, scale_layout, channels, op)?;
            moved(branch.device(), "move_scaled_onto", &input, &[&scale, &addend], images, matrix, op)
        }
        None => moved(branch.device(), "move_onto", &input, &[&addend], images, matrix, op),
    }
}

/// The branch's gradient with a scale: each image's (channels x positions) dy moved to
/// channels-last, each value times its channel's scale.
pub(super) fn branch_gradient(
    (dy, dy_layout): (&CudaStorage, &Layout),
    (scale, scale_layout): (&CudaStorage, &Layout),
    (images, channels, positions): (usize, usize, usize),
    op: &'static str,
) -> candle_core::Result<CudaStorage> {
    let input = input_view::<f32>(dy, dy_layout, op, "the gradient")?;
    let scale = channel_scales(scale, scale_layout, channels, op)?;
    moved(dy.device(), "move_scaled", &input, &[&scale], images, (channels, positions), op)
}

fn channel_scales<'a>(scale: &'a CudaStorage, layout: &Layout, channels: usize, op: &str) -> candle_core::Result<CudaView<'a, f32>> {
    let view = input_view::<f32>(scale, layout, op, "the scale")?;
    if view.len() != channels {
        candle_core::bail!("{op}: {} scales for {channels} channels", view.len());
    }
    Ok(view)
}

/// The scale's gradient, (C): per channel the sum over images and positions of dy (B, C, P)
/// times the branch (B, P, C).
pub(super) fn scale_gradient(
    (dy, dy_layout): (&CudaStorage, &Layout),
    (branch, branch_layout): (&CudaStorage, &Layout),
    (images, channels, positions): (usize, usize, usize),
    op: &'static str,
) -> candle_core::Result<CudaStorage> {
    let dy_view = input_view::<f32>(dy, dy_layout, op, "the gradient")?;
    let branch_view = input_view::<f32>(branch, branch_layout, op, "the branch")?;
    if dy_view.len() != images * channels * positions || branch_view.len() != dy_view.len() {
        candle_core::bail!(
            "{op}: a gradient of {} values and a branch of {} for {images} x {channels} x {positions}",
            dy_view.len(),
            branch_view.len()
        );
    }
    let grid = tile_grid(images, (channels, positions), op)?;
    let parts = images * positions.div_ceil(32);
    if parts > u32::MAX as usize {
        candle_core::bail!("{op}: {images} images of {positions} positions do not fit the CUDA kernels' sizes");
    }
    let device = dy.device();
    let stream = device.cuda_stream();
    // SAFETY: the kernel writes each channel's `parts` partial sums (every tile of every image has
    // a block) before `channel_totals`, queued after it on the same stream, reads them.
    let mut partials: CudaSlice<f64> = unsafe { device.alloc::<f64>(channels * parts) }?;
    let first = KERNELS.function(device, "scale_gradient_partials")?;
    let mut launch = stream.launch_builder(&first);
    let (channels32, positions32, parts32) = (channels as u32, positions as u32, parts as u32);
    launch.arg(&dy_view).arg(&branch_view).arg(&mut partials).arg(&channels32).arg(&positions32).arg(&parts32);
    // SAFETY: dy and the branch hold images·channels·positions f32 values (checked), partials
    // channels·parts; each block writes its own tile's partials.
    unsafe { launch.launch(grid) }.map_err(driver_error(op))?;
    let sums = crate::channel_bias::channel_totals(device, &partials, channels, parts, op)?;
    Ok(CudaStorage::wrap_cuda_slice(sums, device.clone()))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{DType, Device, Tensor, Var};

    use crate::test_tensors::{NormalTensors, bits, max_abs};

    /// The moves, the block end and its branch's and shortcut's gradients against the CPU ops to
    /// the bit, the scale's gradient within 1e-6 of f64 sums and the same bits twice: ConvNeXt-T's
    /// first and last stage at a small batch, sizes that are no multiple of a tile, one channel.
    #[test]
    fn the_cuda_ops_match_the_cpu_ops() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(53);
        for (batch, channels, height, width) in [(2usize, 96usize, 56usize, 56usize), (3, 768, 7, 7), (2, 37, 5, 11), (2, 1, 3, 3)] {
            let case = format!("{:?}", (batch, channels, height, width));
            let x = random.draw(0.0, 1.0, (batch, channels, height, width));
            let branch = random.draw(0.0, 1.0, (batch, height, width, channels));
            let scale = random.draw(0.5, 0.2, channels);
            let upstream = random.draw(0.0, 1.0, (batch, channels, height, width));
            let to = |t: &Tensor, device: &Device| t.to_device(device).unwrap();
            let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
            for device in [&Device::Cpu, &gpu] {
                let last = crate::to_channels_last(&to(&x, device)).unwrap();
                assert!(bits(&back(&last)) == bits(&x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()), "{case}: to channels-last");
                let first = crate::to_channels_first(&last).unwrap();
                assert!(bits(&back(&first)) == bits(&x), "{case}: there and back");
            }
            for scaled in [true, false] {
                let run = |device: &Device| {
                    let (b, s, x) = (
                        Var::from_tensor(&to(&branch, device)).unwrap(),
                        Var::from_tensor(&to(&scale, device)).unwrap(),
                        Var::from_tensor(&to(&x, device)).unwrap(),
                    );
                    let y = crate::channels_last_residual(b.as_tensor(), scaled.then_some(s.as_tensor()), x.as_tensor()).unwrap();
                    let grads = (&y * to(&upstream, device)).unwrap().sum_all().unwrap().backward().unwrap();
                    let gradient = |v: &Var| grads.get(v.as_tensor()).map(back);
                    (back(&y), [gradient(&b), gradient(&x), gradient(&s)])
                };
                let (truth, [truth_branch, truth_shortcut, _]) = run(&Device::Cpu);
                let (ours, [ours_branch, ours_shortcut, ours_scale]) = run(&gpu);
                assert!(bits(&ours) == bits(&truth), "{case} scaled {scaled}: output");
                assert!(bits(&ours_branch.unwrap()) == bits(&truth_branch.unwrap()), "{case} scaled {scaled}: branch gradient");
                assert!(bits(&ours_shortcut.unwrap()) == bits(&truth_shortcut.unwrap()), "{case} scaled {scaled}: shortcut gradient");
                if scaled {
                    let ours_scale = ours_scale.unwrap();
                    let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                    let exact = (wide(&upstream) * wide(&branch).permute((0, 3, 1, 2)).unwrap()).unwrap().sum((0, 2, 3)).unwrap();
                    let error = max_abs((&exact - wide(&ours_scale)).unwrap().to_dtype(DType::F32).unwrap())
                        / max_abs(exact.to_dtype(DType::F32).unwrap()).max(1.0);
                    assert!(error < 1e-6, "{case}: scale gradient relative error {error}");
                    assert!(bits(&run(&gpu).1[2].clone().unwrap()) == bits(&ours_scale), "{case}: two runs' scale gradients differ");
                } else {
                    assert!(ours_scale.is_none(), "{case}: an unused scale got a gradient");
                }
            }
        }
    }
}
