//! The f32 CPU kernel: one task per (image, head), reading q, k and v as strided views of the
//! projection and writing its output columns in place.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::composite::{softmax_last_dim, split_heads};
use crate::elementwise::{lane_max, lane_sum, map_in_place};
use crate::exp::exp;
use crate::kernel_input::f32_slice;

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

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, tokens, width) = layout.shape().dims3()?;
        let qkv = f32_slice(storage, layout, "attention", "the qkv projection")?;
        let (dim, heads) = (width / 3, self.num_heads);
        let head_dim = dim / heads;
        let mut out = vec![0f32; batch * tokens * dim];
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
        let scale = self.scale as f32;
        tasks.into_par_iter().for_each_init(
            || vec![0f32; tokens * tokens],
            |scores, (image, head, out)| {
                let projection = MatRef::from_row_major_slice(&qkv[image * tokens * width..][..tokens * width], tokens, width);
                let q = projection.subcols(head * head_dim, head_dim);
                let k = projection.subcols(dim + head * head_dim, head_dim);
                let v = projection.subcols(2 * dim + head * head_dim, head_dim);
                let s = MatMut::from_row_major_slice_mut(scores, tokens, tokens);
                crate::product::matmul(s, Accum::Replace, q, k.transpose(), scale, Par::Seq);
                softmax_rows(scores, tokens);
                let p = MatRef::from_row_major_slice(scores, tokens, tokens);
                crate::product::matmul(out, Accum::Replace, p, v, 1.0, Par::Seq);
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((batch, tokens, dim))))
    }

    /// With P the attention weights and dO the output's gradient per head: dV = P' dO,
    /// dS = P (dO V' - rowsum(P dO V')), dQ = dS K scale, dK = dS' Q scale.
    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (batch, tokens, width) = qkv.dims3()?;
        let head_dim = width / (3 * self.num_heads);
        let [q, k, v] = split_heads(&qkv.detach(), self.num_heads)?;
        let kt = k.transpose(D::Minus2, D::Minus1)?.contiguous()?;
        let p = softmax_last_dim(&(q.matmul(&kt)? * self.scale)?)?;
        let d_out = grad.reshape((batch, tokens, self.num_heads, head_dim))?.transpose(1, 2)?.contiguous()?;
        let dv = p.t()?.contiguous()?.matmul(&d_out)?;
        let dp = d_out.matmul(&v.t()?.contiguous()?)?;
        let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)?;
        let dq = (ds.matmul(&k)? * self.scale)?;
        let dk = (ds.t()?.contiguous()?.matmul(&q)? * self.scale)?;
        let dqkv = Tensor::stack(&[dq, dk, dv], 0)?.permute((1, 3, 0, 2, 4))?.contiguous()?;
        Ok(Some(dqkv.reshape((batch, tokens, width))?))
    }
}

/// Attention of an f32 CPU projection.
pub(super) fn attention(qkv: &Tensor, num_heads: usize, scale: f64) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op1(Attention { num_heads, scale })
}
