//! The fully connected layer of f32 CUDA tensors as one graph node, where candle's composition
//! records five (the rows' reshape, the weight's transpose, the product, the reshape back, the
//! bias's broadcast add), each output given a zero-filled gradient that is then added into, and
//! sums the bias's gradient with one thread block per column, reading down the column.
//!
//! Forward: candle's cuBLAS product on the storage (the weight read transposed in place), then
//! the bias added in place by one kernel. Backward: two cuBLAS products for dx and dW, and the
//! bias's gradient as column sums over fixed blocks of rows (coalesced along the rows), those
//! partial sums then added in order in f64: deterministic, no atomics.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device, with a bias; `MEDXFER_CUDA_LINEAR=candle` keeps candle's composition,
/// to measure.
pub(super) fn applies(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_LINEAR")
        && [x, weight, bias].into_iter().all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
        && weight.rank() == 2
}

const SOURCE: &str = r#"
// y[r, j] += b[j] over rows x columns values.
extern "C" __global__ void add_bias(float* __restrict__ y, const float* __restrict__ b, unsigned n, unsigned columns) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] += b[i % columns];
}

// y[r, j] = (y[r, j] + b[j]) + residual[r, j]: the bias add and then the residual branch's add,
// in that order, as the separate ops round them.
extern "C" __global__ void add_bias_residual(float* __restrict__ y, const float* __restrict__ b,
                                             const float* __restrict__ residual, unsigned n, unsigned columns) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float biased = __fadd_rn(y[i], b[i % columns]);
        y[i] = __fadd_rn(biased, residual[i]);
    }
}

// Block (x, c): columns blockIdx.x * blockDim.x + threadIdx.x, summed over the rows of chunk c,
// [c R / C, (c + 1) R / C), into partial[c * columns + j].
extern "C" __global__ void column_partial(const float* __restrict__ x, double* __restrict__ partial,
                                          int rows, int columns, int chunks) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int c = blockIdx.y;
    if (j >= columns) return;
    int r0 = (int)((long long)c * rows / chunks), r1 = (int)((long long)(c + 1) * rows / chunks);
    double sum = 0.0;
    for (int r = r0; r < r1; r++) sum += (double)x[(size_t)r * columns + j];
    partial[(size_t)c * columns + j] = sum;
}

// One thread per column: the chunks' partial sums in order.
extern "C" __global__ void column_finish(const double* __restrict__ partial, float* __restrict__ out,
                                         int columns, int chunks) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= columns) return;
    double sum = 0.0;
    for (int c = 0; c < chunks; c++) sum += partial[(size_t)c * columns + j];
    out[j] = (float)sum;
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_linear", SOURCE);

/// x W' + b over the last dimension of an f32 CUDA x (checked by the caller).
pub(super) fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

/// residual + x W' + b over the last dimension of f32 CUDA tensors (checked by the caller), as
/// one graph node: W and b packed into one tensor `[W flattened, b]`, since candle's custom ops
/// take three inputs (the CPU's `LinearResidualGrad` does the same).
pub(super) fn linear_residual(x: &Tensor, weight: &Tensor, bias: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
    let (outputs, inputs) = weight.dims2()?;
    x.contiguous()?.apply_op3(&super::packed_parameters(weight, bias)?, &residual.contiguous()?, LinearResidual { outputs, inputs })
}

/// Rows, input and output features of x (..., inputs) against W (outputs, inputs) and b
/// (outputs), checked against the kernels' 32-bit indices.
fn dims(x: &Shape, weight: &Shape, bias: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    let (outputs, inputs) = weight.dims2()?;
    let width = x.dims().last().copied().unwrap_or(0);
    let rows = x.elem_count() / width.max(1);
    if width != inputs || bias.elem_count() != outputs || rows * outputs > u32::MAX as usize || rows > i32::MAX as usize {
        candle_core::bail!("linear: input {x:?}, weight {weight:?} and bias {bias:?} do not fit");
    }
    Ok((rows, inputs, outputs))
}

/// x W' + b (+ residual) over the last dimension of x: candle's cuBLAS product, then one kernel
/// adding the bias (and then the residual) in place, in the separate ops' order.
fn product_and_addends(
    xs: &CudaStorage,
    xl: &Layout,
    (ws, wl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    residual: Option<(&CudaStorage, &Layout)>,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (rows, inputs, outputs) = dims(xl.shape(), wl.shape(), bl.shape())?;
    if !xl.is_contiguous() || !wl.is_contiguous() {
        candle_core::bail!("linear: the input and the weight must be contiguous");
    }
    if let Some((_, rl)) = residual
        && (!rl.is_contiguous() || rl.shape().elem_count() != rows * outputs)
    {
        candle_core::bail!("linear: a residual of shape {:?} for {rows} x {outputs} outputs (it must be contiguous)", rl.shape());
    }
    let device = xs.device();
    let rows_layout = Layout::contiguous_with_offset((rows, inputs), xl.start_offset());
    let mut y = xs.matmul(ws, (1, rows, outputs, inputs), &rows_layout, &wl.transpose(0, 1)?)?;
    let b = input_view::<f32>(bs, bl, "linear", "the bias")?;
    let residual = residual.map(|(rs, rl)| input_view::<f32>(rs, rl, "linear", "the residual")).transpose()?;
    let kernel = KERNELS.function(device, if residual.is_some() { "add_bias_residual" } else { "add_bias" })?;
    let (n, columns) = ((rows * outputs) as u32, outputs as u32);
    let stream = device.cuda_stream();
    let out = y.as_cuda_slice_mut::<f32>()?;
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(out).arg(&b);
    if let Some(residual) = &residual {
        launch.arg(residual);
    }
    launch.arg(&n).arg(&columns);
    let grid = LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, 65_535 * 8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: y holds rows·outputs f32 values (the product just made), b outputs, a residual
    // rows·outputs (checked above); the arguments are the kernel's, in its order; each thread
    // writes its own elements.
    unsafe { launch.launch(grid) }.map_err(driver_error("linear kernel"))?;
    let mut shape = xl.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = outputs;
    }
    Ok((y, Shape::from(shape)))
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear-cuda"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
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
        candle_core::bail!("linear-cuda runs on CUDA tensors only")
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
        product_and_addends(xs, xl, (ws, wl), (bs, bl), None)
    }

    /// dx = dy W, dW = dy' x, db = the column sums of dy, dy taken as (rows, outputs).
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        dims(x.shape(), weight.shape(), bias.shape())?;
        let (dx, dw, db) = gradients(x, &weight.detach(), &grad.contiguous()?)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// dx = dy W, dW = dy' x and db = the column sums of dy, for W (outputs, inputs) and a
/// contiguous dy of the output's shape taken as (rows, outputs).
fn gradients(x: &Tensor, weight: &Tensor, grad: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (outputs, inputs) = weight.dims2()?;
    let rows = x.elem_count() / inputs.max(1);
    let dy = grad.reshape((rows, outputs))?;
    let dx = dy.matmul(weight)?.reshape(x.shape())?;
    let dw = dy.t()?.matmul(&x.detach().reshape((rows, inputs))?)?;
    let db = dy.apply_op1_no_bwd(&ColumnSums)?;
    Ok((dx, dw, db))
}

struct LinearResidual {
    outputs: usize,
    inputs: usize,
}

impl CustomOp3 for LinearResidual {
    fn name(&self) -> &'static str {
        "linear-residual-cuda"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
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
        candle_core::bail!("linear-residual-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ps: &CudaStorage,
        pl: &Layout,
        rs: &CudaStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (wl, bl) = super::packed_parts(pl, self.outputs, self.inputs)?;
        product_and_addends(xs, xl, (ps, &wl), (ps, &bl), Some((rs, rl)))
    }

    /// dx = dy W, the packed [dW, db] (dW = dy' x, db the column sums of dy), and the residual's
    /// gradient dy itself.
    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let weight = super::packed_weight(&packed.detach(), self.outputs, self.inputs)?;
        let grad = grad.contiguous()?;
        let (dx, dw, db) = gradients(x, &weight, &grad)?;
        let parameters = super::packed_parameters(&dw, &db)?;
        Ok((Some(dx), Some(parameters), Some(grad)))
    }
}

/// The sums of a contiguous (rows, columns) f32 matrix's columns.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("column-sums-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, columns) = layout.shape().dims2()?;
        let x = input_view::<f32>(storage, layout, "linear", "the output's gradient")?;
        let device = storage.device();
        let stream = device.cuda_stream();
        // Blocks of up to 64 rows, at most 1,024 of them.
        let chunks = rows.div_ceil(64).clamp(1, 1024);
        // SAFETY: column_partial writes all chunks·columns values before column_finish reads them.
        let mut partial = unsafe { device.alloc::<f64>(chunks * columns) }?;
        // SAFETY: column_finish writes all columns values.
        let mut sums = unsafe { device.alloc::<f32>(columns) }?;
        let (r, c, k) = (rows as i32, columns as i32, chunks as i32);
        let column_blocks = (columns as u32).div_ceil(256);
        {
            let kernel = KERNELS.function(device, "column_partial")?;
            let mut launch = stream.launch_builder(&kernel);
            launch.arg(&x).arg(&mut partial).arg(&r).arg(&c).arg(&k);
            let grid = LaunchConfig { grid_dim: (column_blocks, chunks as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: x holds rows·columns f32 values, partial chunks·columns f64; each thread
            // writes its own (chunk, column) entry.
            unsafe { launch.launch(grid) }.map_err(driver_error("linear kernel"))?;
        }
        {
            let kernel = KERNELS.function(device, "column_finish")?;
            let mut launch = stream.launch_builder(&kernel);
            launch.arg(&partial).arg(&mut sums).arg(&c).arg(&k);
            let grid = LaunchConfig { grid_dim: (column_blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: sums holds columns f32 values, one thread each.
            unsafe { launch.launch(grid) }.map_err(driver_error("linear kernel"))?;
        }
        Ok((CudaStorage::wrap_cuda_slice(sums, device.clone()), Shape::from(columns)))
    }
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use candle_core::{Device, Var};

    use crate::test_tensors::{NormalTensors, max_abs};

    /// Output and the gradients of x, W and b against the CPU kernel, at ViT-S's qkv and MLP
    /// shapes and small odd ones (one row; rows not a multiple of the row blocks); twice, to the bit.
    #[test]
    fn the_cuda_op_matches_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(41);
        for (shape, outputs) in
            [(vec![2usize, 197, 384], 1152usize), (vec![2, 197, 1536], 384), (vec![7, 24], 19), (vec![1, 1, 24], 300), (vec![130, 5], 3)]
        {
            let inputs = *shape.last().unwrap();
            let x = random.draw(0.0, 1.0, shape.clone());
            let w = random.draw(0.0, 0.5, (outputs, inputs));
            let b = random.draw(0.0, 1.0, outputs);
            let mut out_shape = shape.clone();
            *out_shape.last_mut().unwrap() = outputs;
            let upstream = random.draw(0.0, 1.0, out_shape);
            let run = |device: &Device| {
                let on = |t: &candle_core::Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
                let (x, w, b) = (on(&x), on(&w), on(&b));
                let y = crate::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
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
                eprintln!("{shape:?} -> {outputs} {what}: relative error {error:.2e}");
                assert!(error < 1e-5, "{shape:?} -> {outputs} {what}: {error}");
            }
            for (a, b) in ours.iter().zip(&again) {
                assert_eq!(max_abs((a - b).unwrap()), 0.0, "{shape:?}: two runs differ");
            }
        }
    }

    /// The residual branch's linear layer as one node (ViT-S's proj and fc2 shapes, and small
    /// odd ones): output and the gradients of x, W, b and the residual against the CPU's, twice
    /// to the bit; and against the separate linear layer and add on the GPU, to the bit (the
    /// same kernels' arithmetic in the same order).
    #[test]
    fn the_residual_node_matches_the_cpu_and_the_separate_ops() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(43);
        for (shape, outputs) in [(vec![2usize, 197, 384], 384usize), (vec![2, 197, 1536], 384), (vec![7, 24], 19), (vec![130, 5], 3)] {
            let inputs = *shape.last().unwrap();
            let x = random.draw(0.0, 1.0, shape.clone());
            let w = random.draw(0.0, 0.5, (outputs, inputs));
            let b = random.draw(0.0, 1.0, outputs);
            let mut out_shape = shape.clone();
            *out_shape.last_mut().unwrap() = outputs;
            let residual = random.draw(0.0, 2.0, out_shape.clone());
            let upstream = random.draw(0.0, 1.0, out_shape);
            let run = |device: &Device, fused: bool| {
                let on = |t: &candle_core::Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
                let (x, w, b, r) = (on(&x), on(&w), on(&b), on(&residual));
                let y = if fused {
                    crate::linear_residual(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), r.as_tensor()).unwrap()
                } else {
                    (crate::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap() + r.as_tensor()).unwrap()
                };
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let cpu = |t: &candle_core::Tensor| t.to_device(&Device::Cpu).unwrap();
                let grad = |v: &Var| cpu(grads.get(v.as_tensor()).unwrap());
                [cpu(&y), grad(&x), grad(&w), grad(&b), grad(&r)]
            };
            let (truth, ours, again, separate) = (run(&Device::Cpu, true), run(&gpu, true), run(&gpu, true), run(&gpu, false));
            let names = ["output", "x gradient", "weight gradient", "bias gradient", "residual gradient"];
            for (what, ((expected, actual), (repeat, apart))) in names.iter().zip(truth.iter().zip(&ours).zip(again.iter().zip(&separate)))
            {
                let error = max_abs((expected - actual).unwrap()) / max_abs(expected.clone()).max(1.0);
                eprintln!("{shape:?} -> {outputs} {what}: relative error {error:.2e}");
                assert!(error < 1e-5, "{shape:?} -> {outputs} {what}: {error}");
                assert_eq!(max_abs((actual - repeat).unwrap()), 0.0, "{shape:?} {what}: two runs differ");
                assert_eq!(max_abs((actual - apart).unwrap()), 0.0, "{shape:?} {what}: not the separate ops' bits");
            }
        }
    }
}
