//! The f32 CPU kernel: the bias copied into each output row, then faer's product accumulated
//! onto it, parallel over the machine's threads.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::activation::gelu_in_place;
use crate::kernel_input::f32_slice;
use crate::parallel_output::{Start, build_in_chunks, zeros};

/// Rows of x, and the output's shape, for x (..., in) and W (out, in).
fn geometry(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize, Shape)> {
    let (out_features, in_features) = w.shape().dims2()?;
    if in_features == 0 {
        candle_core::bail!("linear: a weight of shape ({out_features}, 0) has no input features");
    }
    let dims = x.shape().dims();
    match dims.last() {
        Some(&last) if last == in_features => {}
        _ => candle_core::bail!("linear: input of shape {dims:?} for a weight of shape ({out_features}, {in_features})"),
    }
    let rows = x.shape().elem_count() / in_features;
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_features;
    }
    Ok((rows, in_features, out_features, Shape::from(out_dims)))
}

/// What runs on each block of output rows once its product is done, while the block is still
/// in cache.
#[derive(Debug, Clone, Copy)]
enum Epilogue {
    None,
    Gelu,
}

/// What a block of output rows starts from, and what is added to it after the product.
#[derive(Debug, Clone, Copy, Default)]
struct Addends<'a> {
    bias: Option<&'a [f32]>,
    /// Written into the output with the bias before the product accumulates onto them: residual
    /// + bias + product, in one pass (the inference path).
    residual_first: Option<&'a [f32]>,
    /// Added to each block after its product: (bias + product) + residual, the rounding of the
    /// linear layer followed by an add (the training path, which keeps those bits).
    residual_after: Option<&'a [f32]>,
}

fn forward(
    sx: &CpuStorage,
    lx: &Layout,
    sw: &CpuStorage,
    lw: &Layout,
    addends: Addends<'_>,
    epilogue: Epilogue,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let Addends { bias, residual_first: residual, residual_after } = addends;
    let (rows, in_features, out_features, shape) = geometry(lx, lw)?;
    let x = f32_slice(sx, lx, "linear", "the input")?;
    let w = f32_slice(sw, lw, "linear", "the weight")?;
    if let Some(bias) = bias
        && bias.len() != out_features
    {
        candle_core::bail!("linear: {} biases for {out_features} outputs", bias.len());
    }
    if let Some(residual) = residual.or(residual_after)
        && residual.len() != rows * out_features
    {
        candle_core::bail!("linear: a residual of {} values for {rows} x {out_features} outputs", residual.len());
    }
    let (start, accumulate) = match (residual, bias) {
        (Some(values), rows) => (Start::Values { values, rows }, Accum::Add),
        (None, Some(bias)) => (Start::Rows(bias), Accum::Add),
        (None, None) => (Start::Zeros, Accum::Replace),
    };
    // W (out, in) row-major is W' (in, out) column-major: faer reads it in place.
    let w_t = MatRef::from_column_major_slice(w, in_features, out_features);
    // One block of rows per rayon thread, each a sequential product, so that the epilogue runs
    // in the task that made its block, and so that one pool (rayon's) does all the kernels'
    // work: faer's own parallel product runs on a second pool (spindle) whose workers spin for
    // a while after each product, beside the rayon passes that follow. At ViT-L's shapes the
    // two splits measured alike (200-225 GFLOP/s with weights out of cache, 2 cores), and with
    // MKL the split by rows beat the split by columns (2.83-2.90 vs 2.77-2.81 images/s). Each
    // task also writes its block's starting values first (`parallel_output`): the bias rows, or
    // the residual branch plus them.
    let block = rows.div_ceil(rayon::current_num_threads()).max(1);
    let y = build_in_chunks(rows * out_features, block * out_features, start, |index, y| {
        let rows = y.len() / out_features.max(1);
        let x = MatRef::from_row_major_slice(&x[index * block * in_features..][..rows * in_features], rows, in_features);
        crate::product::matmul(MatMut::from_row_major_slice_mut(y, rows, out_features), accumulate, x, w_t, 1.0, Par::Seq);
        if let Some(residual) = residual_after {
            y.iter_mut().zip(&residual[index * block * out_features..]).for_each(|(y, r)| *y += r);
        }
        match epilogue {
            Epilogue::None => {}
            Epilogue::Gelu => gelu_in_place(y),
        }
    })?;
    Ok((CpuStorage::F32(y), shape))
}

/// dx = dy W, dW = dy' x, and with a bias db = the column sums of dy, with x and dy as (rows,
/// features).
fn gradients(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    epilogue: Epilogue,
    with_bias: bool,
) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
    if let Epilogue::Gelu = epilogue {
        candle_core::bail!("linear: the fused GELU records no gradient (use linear, then gelu_erf)");
    }
    let (out_features, in_features) = w.dims2()?;
    let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
    let dx = x.apply_op3_no_bwd(&w, &grad, &Backward(Part::Input))?.reshape(x.shape())?;
    let parameters = x.apply_op3_no_bwd(&w, &grad, &Backward(Part::Parameters { with_bias }))?;
    let dw = parameters.narrow(0, 0, out_features * in_features)?.reshape((out_features, in_features))?;
    let db = with_bias.then(|| parameters.narrow(0, out_features * in_features, out_features)).transpose()?;
    Ok((dx, dw, db))
}

/// Which gradients of x W' + b a `Backward` op computes. The input's and the parameters' are
/// two storages: the parameters' are kept until the optimiser's step, and a storage shared with
/// dx (rows/out times the size of dW: 4x for ViT-S's fc2 at batch 8, 66x at 128) would keep dx
/// alive as long.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// dx (rows x in).
    Input,
    /// [dW (out x in), db (out) if the layer has a bias].
    Parameters { with_bias: bool },
}

/// The gradients of x W' + b: faer's products split over rayon's threads as the forward pass
/// splits them (dx by rows of x, dW by rows of W), and db as per-task partial column sums of
/// dy (candle's sum over the first axis was a tenth of ConvNeXt-T's training step).
struct Backward(Part);

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "linear-backward"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, in_features, out_features, _) = geometry(lx, lw)?;
        let x = f32_slice(sx, lx, "linear backward", "the input")?;
        let w = f32_slice(sw, lw, "linear backward", "the weight")?;
        let dy = f32_slice(sg, lg, "linear backward", "the gradient")?;
        if dy.len() != rows * out_features {
            candle_core::bail!("linear backward: a gradient of {} values for {rows} x {out_features} outputs", dy.len());
        }
        let values = match self.0 {
            Part::Input => input_gradient(w, dy, rows, in_features, out_features)?,
            Part::Parameters { with_bias } => parameter_gradients(x, dy, rows, in_features, out_features, with_bias),
        };
        let len = values.len();
        Ok((CpuStorage::F32(values), Shape::from(len)))
    }
}

/// dx = dy W, by blocks of rows, each block zeroed by the task that then multiplies into it
/// (`vec![0f32; n]` zeroed the whole of dx on one thread first: with the attention's and
/// LayerNorm's outputs, 3% of a ViT-S training step).
fn input_gradient(w: &[f32], dy: &[f32], rows: usize, in_features: usize, out_features: usize) -> candle_core::Result<Vec<f32>> {
    let w_rows = MatRef::from_row_major_slice(w, out_features, in_features);
    let block = rows.div_ceil(rayon::current_num_threads()).max(1);
    build_in_chunks(rows * in_features, block * in_features, Start::Zeros, |index, dx| {
        let n = dx.len() / in_features.max(1);
        let dy = MatRef::from_row_major_slice(&dy[index * block * out_features..][..n * out_features], n, out_features);
        crate::product::matmul(MatMut::from_row_major_slice_mut(dx, n, in_features), Accum::Replace, dy, w_rows, 1.0, Par::Seq);
    })
}

/// [dW, db]: dW = dy' x by blocks of W's rows (dy' is dy read column-major), db the column sums
/// of dy (when the layer has a bias).
fn parameter_gradients(x: &[f32], dy: &[f32], rows: usize, in_features: usize, out_features: usize, with_bias: bool) -> Vec<f32> {
    let threads = rayon::current_num_threads();
    let mut packed = zeros(out_features * in_features + if with_bias { out_features } else { 0 }, 0);
    let (dw, db) = packed.split_at_mut(out_features * in_features);
    let dy_t = MatRef::from_column_major_slice(dy, out_features, rows);
    let x_rows = MatRef::from_row_major_slice(x, rows, in_features);
    let block = out_features.div_ceil(threads).max(1);
    dw.par_chunks_mut(block * in_features).enumerate().for_each(|(index, dw)| {
        let n = dw.len() / in_features;
        let lhs = dy_t.subrows(index * block, n);
        crate::product::matmul(MatMut::from_row_major_slice_mut(dw, n, in_features), Accum::Replace, lhs, x_rows, 1.0, Par::Seq);
    });
    if with_bias {
        let block = rows.div_ceil(threads * 4).max(1);
        let partials: Vec<Vec<f32>> = dy
            .par_chunks(block * out_features.max(1))
            .map(|dy| {
                let mut sums = vec![0f32; out_features];
                for row in dy.chunks_exact(out_features.max(1)) {
                    sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                }
                sums
            })
            .collect();
        for sums in partials {
            db.iter_mut().zip(&sums).for_each(|(d, s)| *d += s);
        }
    }
    packed
}

/// x W' (with an epilogue); its backward pass exists for `Epilogue::None` only (the fused
/// GELU is applied without recording a gradient).
struct Linear(Epilogue);

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        forward(sx, lx, sw, lw, Addends::default(), self.0)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = gradients(x, w, grad, self.0, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// x W' + b (with an epilogue).
struct LinearBias(Epilogue);

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "linear-bias"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = Some(f32_slice(sb, lb, "linear", "the bias")?);
        forward(sx, lx, sw, lw, Addends { bias, ..Addends::default() }, self.0)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = gradients(x, w, grad, self.0, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// x W' (+ b) for f32 CPU tensors.
pub(super) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(bias) => x.apply_op3(&weight, &bias.contiguous()?, LinearBias(Epilogue::None)),
        None => x.apply_op2(&weight, Linear(Epilogue::None)),
    }
}

/// gelu(x W' (+ b)) for f32 CPU tensors that record no gradient.
pub(super) fn linear_gelu_no_grad(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(bias) => x.apply_op3_no_bwd(&weight, &bias.contiguous()?, &LinearBias(Epilogue::Gelu)),
        None => x.apply_op2_no_bwd(&weight, &Linear(Epilogue::Gelu)),
    }
}

/// residual + x W' (+ b), the residual and the bias written into the output before the product
/// accumulates onto them, with no gradient recorded (the bias is held by the op, as candle's
/// custom ops take three tensors at most).
struct LinearResidual {
    bias: Option<Tensor>,
}

impl CustomOp3 for LinearResidual {
    fn name(&self) -> &'static str {
        "linear-residual"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, _, _, shape) = geometry(lx, lw)?;
        if shape != *lr.shape() {
            candle_core::bail!("linear: a residual of shape {:?} for an output of shape {shape:?}", lr.shape());
        }
        let residual = f32_slice(sr, lr, "linear", "the residual")?;
        let held = self.bias.as_ref().map(Tensor::storage_and_layout);
        let bias = crate::kernel_input::held_f32_slice(&held, "linear", "the bias")?;
        forward(sx, lx, sw, lw, Addends { bias, residual_first: Some(residual), ..Addends::default() }, Epilogue::None)
    }
}

/// residual + x W' (+ b) for f32 CPU tensors that record no gradient.
pub(super) fn linear_residual_no_grad(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    let (x, weight, residual) = (x.contiguous()?, weight.contiguous()?, residual.contiguous()?);
    let bias = bias.map(Tensor::contiguous).transpose()?;
    x.apply_op3_no_bwd(&weight, &residual, &LinearResidual { bias })
}

/// residual + x W' + b as one graph node for f32 CPU tensors that record a gradient. The
/// weight and the bias come packed into one tensor, `[W flattened, b]` (as their gradients come
/// out of the backward pass), since candle's custom ops take three inputs. The add after the
/// linear layer then keeps no tensor of its own: the product's output was a second tensor of
/// the residual's size in the graph, kept to the end of the backward pass.
pub(super) struct LinearResidualGrad {
    pub(super) out_features: usize,
}

impl CustomOp3 for LinearResidualGrad {
    fn name(&self) -> &'static str {
        "linear-residual-grad"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let in_features = lx.shape().dims().last().copied().unwrap_or(0);
        let (lw, lb) = super::packed_parts(lp, self.out_features, in_features)?;
        let (_, _, _, shape) = geometry(lx, &lw)?;
        if shape != *lr.shape() {
            candle_core::bail!("linear: a residual of shape {:?} for an output of shape {shape:?}", lr.shape());
        }
        let addends = Addends {
            bias: Some(f32_slice(sp, &lb, "linear", "the bias")?),
            residual_after: Some(f32_slice(sr, lr, "linear", "the residual")?),
            ..Addends::default()
        };
        forward(sx, lx, sp, &lw, addends, Epilogue::None)
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
        let in_features = x.dims().last().copied().unwrap_or(0);
        let w = super::packed_weight(packed, self.out_features, in_features)?;
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let dx = x.apply_op3_no_bwd(&w, &grad, &Backward(Part::Input))?.reshape(x.shape())?;
        let parameters = x.apply_op3_no_bwd(&w, &grad, &Backward(Part::Parameters { with_bias: true }))?;
        Ok((Some(dx), Some(parameters), Some(grad)))
    }
}

/// residual + x W' + b for f32 CPU tensors, recording the gradient as one node.
pub(super) fn linear_residual(x: &Tensor, weight: &Tensor, bias: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
    let out_features = weight.dim(0)?;
    x.contiguous()?.apply_op3(&super::packed_parameters(weight, bias)?, &residual.contiguous()?, LinearResidualGrad { out_features })
}
