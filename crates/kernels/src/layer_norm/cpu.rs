//! LayerNorm of f32 rows on the CPU: a candle custom op whose backward pass is one more op
//! giving the three gradients packed in one buffer.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::elementwise::lane_sum;
use crate::parallel_output::{Start, build_in_chunks, build_in_chunks_collecting};

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::kernel_input::f32_slice(storage, layout, "layer norm", what)
}

/// Rows per rayon task: enough work per task to amortise it, enough tasks to balance.
const ROWS_PER_TASK: usize = 64;

/// A row's mean and 1 / sqrt(var + eps), summed in f64 (a row of large mean and small spread
/// keeps its variance) over independent partial sums (`lane_sum`): one f64 sum per row made this
/// the slowest pass of a ViT-L forward pass (1.3 ms per norm at 1576 x 1024, PyTorch's 0.25).
fn statistics(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = lane_sum(row, f64::from) / n;
    let var = lane_sum(row, |v| (f64::from(v) - mean).powi(2)) / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

struct Forward {
    eps: f64,
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, weight, bias) = (f32_slice(s1, l1, "the input")?, f32_slice(s2, l2, "the weight")?, f32_slice(s3, l3, "the bias")?);
        let width = weight.len();
        let block = width * ROWS_PER_TASK;
        let out = build_in_chunks(x.len(), block, Start::Zeros, |index, out| {
            let x = &x[index * block..][..out.len()];
            for (out, row) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                let (mean, rstd) = statistics(row, self.eps);
                for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
                    *o = (v - mean) * rstd * w + b;
                }
            }
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
        unpack_gradients(&packed, x, weight)
    }
}

/// The gradients of x, weight and bias from the backward op's [dx, dweight, dbias] buffer (the
/// CUDA op packs them alike). The parameters' gradients are copied out into storages of their
/// own (`force_contiguous`; candle's `copy` clones the whole storage under a view): they are kept
/// until the optimiser's step, and as views they would keep the whole buffer, dx included, alive
/// as long.
pub(super) fn unpack_gradients(
    packed: &Tensor,
    x: &Tensor,
    weight: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let width = weight.dim(0)?;
    let count = x.elem_count();
    let grad_x = packed.narrow(0, 0, count)?.reshape(x.shape())?;
    let grad_weight = packed.narrow(0, count, width)?.force_contiguous()?;
    let grad_bias = packed.narrow(0, count + width, width)?.force_contiguous()?;
    Ok((Some(grad_x), Some(grad_weight), Some(grad_bias)))
}

/// dx, dweight, dbias of one LayerNorm, packed as [dx (all of x), dweight (D), dbias (D)]:
/// with g = dy * weight and xhat the normalised input,
/// dx = rstd (g - mean(g) - xhat mean(g xhat)), dweight = sum over rows of dy xhat, dbias = sum dy.
struct Backward {
    eps: f64,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, weight, grad) = (f32_slice(s1, l1, "the input")?, f32_slice(s2, l2, "the weight")?, f32_slice(s3, l3, "the gradient")?);
        let width = weight.len();
        let chunk = width * ROWS_PER_TASK;
        // Each task's rows give their dx and partial sums of dweight and dbias (in f64: ConvNeXt's
        // first stage sums 200,000 rows), which are then added up; dx is zeroed by the task that
        // writes it, with room after it for the sums.
        let (mut packed, partials) = build_in_chunks_collecting(x.len(), 2 * width, chunk, Start::Zeros, |index, grad_x| {
            let (x, grad) = (&x[index * chunk..][..grad_x.len()], &grad[index * chunk..][..grad_x.len()]);
            let mut sums = vec![0f64; 2 * width];
            let mut xhat = vec![0f32; width];
            for ((dx, row), dy) in grad_x.chunks_exact_mut(width).zip(x.chunks_exact(width)).zip(grad.chunks_exact(width)) {
                let (mean, rstd) = statistics(row, self.eps);
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for j in 0..width {
                    xhat[j] = (row[j] - mean) * rstd;
                    let g = dy[j] * weight[j];
                    sum_g += f64::from(g);
                    sum_gx += f64::from(g * xhat[j]);
                    sums[j] += f64::from(dy[j] * xhat[j]);
                    sums[width + j] += f64::from(dy[j]);
                }
                let (mean_g, mean_gx) = ((sum_g / width as f64) as f32, (sum_gx / width as f64) as f32);
                for j in 0..width {
                    dx[j] = rstd * (dy[j] * weight[j] - mean_g - xhat[j] * mean_gx);
                }
            }
            sums
        })?;
        packed.extend((0..2 * width).map(|j| partials.iter().map(|sums| sums[j]).sum::<f64>() as f32));
        Ok((CpuStorage::F32(packed), Shape::from(x.len() + 2 * width)))
    }
}

/// LayerNorm of f32 CPU tensors over the last dimension.
pub(super) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    checked(x, weight, bias)?.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Forward { eps })
}

/// `x`, once its rows and the weight and bias are checked to fit (for the CUDA op too).
pub(super) fn checked<'a>(x: &'a Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<&'a Tensor> {
    let width = x.dim(candle_core::D::Minus1)?;
    if width == 0 {
        candle_core::bail!("layer norm: the input {:?} has rows of no elements", x.dims());
    }
    if weight.dims() != [width] || bias.dims() != [width] {
        candle_core::bail!(
            "layer norm: weight {:?} and bias {:?} must both be ({width}) for input {:?}",
            weight.dims(),
            bias.dims(),
            x.dims()
        );
    }
    Ok(x)
}
