//! The f32 CPU kernel: one task per (image, head), reading q, k and v as strided views of the
//! projection and writing its output columns in place.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::elementwise::{lane_max, lane_sum, map_in_place};
use crate::exp::exp;
use crate::kernel_input::f32_slice;
use crate::parallel_output::zeros;

struct Attention {
    num_heads: usize,
    scale: f64,
}

/// Each row of `scores` (row-major, `width` wide) replaced by its softmax.
fn softmax_rows(scores: &mut [f32], width: usize) {
    for row in scores.chunks_mut(width) {
        let max = lane_max(row);
        // The exponentials in a pass of their own, which the compiler vectorises.
        map_in_place(row, |value| exp(value - max));
        let inverse = 1.0 / lane_sum(row, |value| value);
        map_in_place(row, |value| value * inverse);
    }
}

/// One head's q, k and v of one image: column views of the (tokens, 3 dim) projection.
fn head_views(qkv: &[f32], (tokens, width): (usize, usize), image: usize, head: usize, head_dim: usize) -> [MatRef<'_, f32>; 3] {
    let projection = MatRef::from_row_major_slice(&qkv[image * tokens * width..][..tokens * width], tokens, width);
    let dim = width / 3;
    [0, 1, 2].map(|part| projection.subcols(part * dim + head * head_dim, head_dim))
}

/// The head's attention weights P = softmax(q k' scale [+ bias]), written into `scores` (tokens
/// x tokens; the bias as many values, row-major).
fn weights_of<'a>(q: MatRef<'_, f32>, k: MatRef<'_, f32>, scale: f32, bias: Option<&[f32]>, scores: &'a mut [f32]) -> MatRef<'a, f32> {
    let tokens = q.nrows();
    crate::product::matmul(MatMut::from_row_major_slice_mut(scores, tokens, tokens), Accum::Replace, q, k.transpose(), scale, Par::Seq);
    if let Some(bias) = bias {
        scores.iter_mut().zip(bias).for_each(|(score, &b)| *score += b);
    }
    softmax_rows(scores, tokens);
    MatRef::from_row_major_slice(scores, tokens, tokens)
}

/// An additive bias on the scaled scores: (groups, heads, tokens, tokens) values, group g
/// applying to batch entry i x groups + g (Swin's windows).
#[derive(Clone, Copy)]
struct ScoreBias<'a> {
    values: &'a [f32],
    groups: usize,
}

impl<'a> ScoreBias<'a> {
    /// The (tokens x tokens) bias of batch entry `entry`'s head `head`.
    fn of(self, entry: usize, head: usize, heads: usize, tokens: usize) -> &'a [f32] {
        let group = entry % self.groups;
        &self.values[(group * heads + head) * tokens * tokens..][..tokens * tokens]
    }
}

/// The attention's output (batch, tokens, dim) from the projection (batch, tokens, 3 dim).
fn forward(qkv: &[f32], (batch, tokens, width): (usize, usize, usize), heads: usize, scale: f64, bias: Option<ScoreBias<'_>>) -> Vec<f32> {
    let dim = width / 3;
    let head_dim = dim / heads;
    let mut out = zeros(batch * tokens * dim, 0);
    // Every (image, head) pair's output columns, as disjoint views of `out`.
    let mut tasks = Vec::with_capacity(batch * heads);
    for (image, chunk) in out.chunks_mut((tokens * dim).max(1)).enumerate() {
        let mut rest = MatMut::from_row_major_slice_mut(chunk, tokens, dim);
        for head in 0..heads {
            let (columns, others) = rest.split_at_col_mut(head_dim);
            tasks.push((image, head, columns));
            rest = others;
        }
    }
    let scale = scale as f32;
    tasks.into_par_iter().for_each_init(
        || vec![0f32; tokens * tokens],
        |scores, (image, head, out)| {
            let [q, k, v] = head_views(qkv, (tokens, width), image, head, head_dim);
            let p = weights_of(q, k, scale, bias.map(|b| b.of(image, head, heads, tokens)), scores);
            crate::product::matmul(out, Accum::Replace, p, v, 1.0, Par::Seq);
        },
    );
    out
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::FIRST_OPERAND
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, tokens, width) = layout.shape().dims3()?;
        let qkv = f32_slice(storage, layout, "attention", "the qkv projection")?;
        let out = forward(qkv, (batch, tokens, width), self.num_heads, self.scale, None);
        Ok((CpuStorage::F32(out), Shape::from((batch, tokens, width / 3))))
    }

    /// With P the attention weights and dO the output's gradient per head: dV = P' dO,
    /// dS = P (dO V' - rowsum(P dO V')), dQ = dS K scale, dK = dS' Q scale ([`Gradient`]).
    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let gradient = Gradient { num_heads: self.num_heads, scale: self.scale };
        Ok(Some(qkv.detach().contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &gradient)?))
    }
}

/// Attention with an additive bias on the scores (`attention_with_bias`): a `CustomOp2` of the
/// projection and the bias.
struct BiasedAttention {
    num_heads: usize,
    scale: f64,
}

impl CustomOp2 for BiasedAttention {
    fn name(&self) -> &'static str {
        "attention-with-bias"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, tokens, width) = l1.shape().dims3()?;
        let qkv = f32_slice(s1, l1, "attention", "the qkv projection")?;
        let bias = ScoreBias { values: f32_slice(s2, l2, "attention", "the bias")?, groups: l2.shape().dims4()?.0 };
        let out = forward(qkv, (batch, tokens, width), self.num_heads, self.scale, Some(bias));
        Ok((CpuStorage::F32(out), Shape::from((batch, tokens, width / 3))))
    }

    /// As [`Attention`]'s, and the bias's gradient: each group's and head's sum of dS over the
    /// batch entries it applies to. One op computes both, one flat tensor split here.
    fn bwd(&self, qkv: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gradient = Gradient { num_heads: self.num_heads, scale: self.scale };
        let both = qkv.detach().contiguous()?.apply_op3_no_bwd(&grad.contiguous()?, &bias.detach().contiguous()?, &gradient)?;
        let (d_qkv, d_bias) = (qkv.elem_count(), bias.elem_count());
        Ok((Some(both.narrow(0, 0, d_qkv)?.reshape(qkv.shape())?), Some(both.narrow(0, d_qkv, d_bias)?.reshape(bias.shape())?)))
    }
}

/// The attention's gradient with respect to the projection, from the projection and the
/// output's gradient: one task per (image, head), as in the forward pass, which recomputes the
/// head's weights P and writes its columns of dQ, dK and dV in place. Built from candle's ops
/// (the composite), the same arithmetic copied every head's q, k, v and the gradient into
/// tensors of their own, transposed three of them, and stacked and permuted the three
/// gradients back: 10% of a ViT-S training step on the CPU went to those copies and candle's
/// element-wise passes.
struct Gradient {
    num_heads: usize,
    scale: f64,
}

impl Gradient {
    /// The projection's gradient (batch, tokens, 3 dim), and with a bias the bias's gradient
    /// after it: one flat buffer.
    fn run(
        &self,
        (qkv, l1): (&[f32], &Layout),
        (grad, l2): (&[f32], &Layout),
        bias: Option<ScoreBias<'_>>,
    ) -> candle_core::Result<Vec<f32>> {
        let (batch, tokens, width) = l1.shape().dims3()?;
        let (dim, heads) = (width / 3, self.num_heads);
        let head_dim = dim / heads;
        if l2.shape().dims() != [batch, tokens, dim] {
            candle_core::bail!("attention gradient: the output's gradient is {:?}, the output ({batch}, {tokens}, {dim})", l2.shape());
        }
        let square = tokens * tokens;
        // Room for the bias's gradient after the projection's (appended below).
        let mut out = zeros(batch * tokens * width, bias.map_or(0, |bias| bias.values.len()));
        // With a bias, each (image, head) pair's dS, summed into the bias's gradient below.
        let mut score_grads = zeros(if bias.is_some() { batch * heads * square } else { 0 }, 0);
        let mut score_slots = score_grads.chunks_mut(square.max(1)).map(Some).collect::<Vec<_>>().into_iter();
        // Every (image, head) pair's columns of dQ, dK and dV, as disjoint views of `out`.
        let mut tasks = Vec::with_capacity(batch * heads);
        for (image, chunk) in out.chunks_mut((tokens * width).max(1)).enumerate() {
            let (mut dq, rest) = MatMut::from_row_major_slice_mut(chunk, tokens, width).split_at_col_mut(dim);
            let (mut dk, mut dv) = rest.split_at_col_mut(dim);
            for head in 0..heads {
                let (q_columns, q_rest) = dq.split_at_col_mut(head_dim);
                let (k_columns, k_rest) = dk.split_at_col_mut(head_dim);
                let (v_columns, v_rest) = dv.split_at_col_mut(head_dim);
                tasks.push((image, head, q_columns, k_columns, v_columns, score_slots.next().flatten()));
                (dq, dk, dv) = (q_rest, k_rest, v_rest);
            }
        }
        let scale = self.scale as f32;
        tasks.into_par_iter().for_each_init(
            || (vec![0f32; square], vec![0f32; square]),
            |(weights, weight_grads), (image, head, dq, dk, dv, score_slot)| {
                let [q, k, v] = head_views(qkv, (tokens, width), image, head, head_dim);
                let d_out = MatRef::from_row_major_slice(&grad[image * tokens * dim..][..tokens * dim], tokens, dim)
                    .subcols(head * head_dim, head_dim);
                // P as the forward pass computed it.
                let p = weights_of(q, k, scale, bias.map(|b| b.of(image, head, heads, tokens)), weights);
                crate::product::matmul(dv, Accum::Replace, p.transpose(), d_out, 1.0, Par::Seq);
                crate::product::matmul(
                    MatMut::from_row_major_slice_mut(weight_grads, tokens, tokens),
                    Accum::Replace,
                    d_out,
                    v.transpose(),
                    1.0,
                    Par::Seq,
                );
                // dS = P (dP - rowsum(P dP)), over dP in place.
                for (p_row, d_row) in weights.chunks(tokens).zip(weight_grads.chunks_mut(tokens)) {
                    let dot: f32 = p_row.iter().zip(d_row.iter()).map(|(p, d)| p * d).sum();
                    d_row.iter_mut().zip(p_row).for_each(|(d, &p)| *d = p * (*d - dot));
                }
                if let Some(slot) = score_slot {
                    slot.copy_from_slice(weight_grads);
                }
                let ds = MatRef::from_row_major_slice(weight_grads, tokens, tokens);
                crate::product::matmul(dq, Accum::Replace, ds, k, scale, Par::Seq);
                crate::product::matmul(dk, Accum::Replace, ds.transpose(), q, scale, Par::Seq);
            },
        );
        if let Some(bias) = bias {
            // Each (group, head)'s sum over the entries the group applies to, in entry order.
            let mut bias_grad = vec![0f32; bias.values.len()];
            let images = batch / bias.groups;
            bias_grad.par_chunks_mut(square.max(1)).enumerate().for_each(|(group_head, sums)| {
                let (group, head) = (group_head / heads, group_head % heads);
                for image in 0..images {
                    let entry = image * bias.groups + group;
                    let slot = &score_grads[(entry * heads + head) * square..][..square];
                    sums.iter_mut().zip(slot).for_each(|(sum, &g)| *sum += g);
                }
            });
            out.extend_from_slice(&bias_grad);
        }
        Ok(out)
    }
}

impl CustomOp2 for Gradient {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, "attention gradient", "the qkv projection")?;
        let grad = f32_slice(s2, l2, "attention gradient", "the output's gradient")?;
        let out = self.run((qkv, l1), (grad, l2), None)?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

impl CustomOp3 for Gradient {
    fn name(&self) -> &'static str {
        "attention-with-bias-grad"
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
        let qkv = f32_slice(s1, l1, "attention gradient", "the qkv projection")?;
        let grad = f32_slice(s2, l2, "attention gradient", "the output's gradient")?;
        let bias = ScoreBias { values: f32_slice(s3, l3, "attention gradient", "the bias")?, groups: l3.shape().dims4()?.0 };
        let out = self.run((qkv, l1), (grad, l2), Some(bias))?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Attention of an f32 CPU projection.
pub(super) fn attention(qkv: &Tensor, num_heads: usize, scale: f64) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op1(Attention { num_heads, scale })
}

/// Attention of an f32 CPU projection with an f32 CPU bias on its scores (shapes checked by the
/// caller).
pub(super) fn attention_with_bias(qkv: &Tensor, num_heads: usize, scale: f64, bias: &Tensor) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op2(&bias.contiguous()?, BiasedAttention { num_heads, scale })
}
