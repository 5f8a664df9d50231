//! Attention with candle's ops: what timm writes, for CUDA and half precision, and the truth
//! the CPU kernel is tested against. Half precision takes its softmax in f32, as PyTorch's
//! autocast does; without a gradient to record, f32 takes candle-nn's fused softmax.

use candle_core::{D, DType, Tensor};

/// q, k and v, each (batch, heads, tokens, head_dim), from the (batch, tokens, 3 dim) projection.
pub(super) fn split_heads(qkv: &Tensor, num_heads: usize) -> candle_core::Result<[Tensor; 3]> {
    let (batch, tokens, width) = qkv.dims3()?;
    let head_dim = width / (3 * num_heads);
    let qkv = qkv.reshape((batch, tokens, 3, num_heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
    Ok([qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?])
}

/// Softmax over the last dimension, recording gradients where the input does.
pub(super) fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 && x.dtype() != DType::F64 {
        return softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
    }
    if x.dtype() == DType::F32 && !x.track_op() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

pub(super) fn attention(qkv: &Tensor, num_heads: usize, scale: f64) -> candle_core::Result<Tensor> {
    let (batch, tokens, width) = qkv.dims3()?;
    let [q, k, v] = split_heads(qkv, num_heads)?;
    let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?.contiguous()?)? * scale)?;
    let attended = softmax_last_dim(&scores)?.matmul(&v)?;
    attended.transpose(1, 2)?.reshape((batch, tokens, width / 3))
}

pub(super) fn attention_with_bias(qkv: &Tensor, num_heads: usize, scale: f64, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, tokens, width) = qkv.dims3()?;
    let groups = bias.dim(0)?;
    let [q, k, v] = split_heads(qkv, num_heads)?;
    let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?.contiguous()?)? * scale)?
        .reshape((batch / groups, groups, num_heads, tokens, tokens))?
        .broadcast_add(&bias.to_dtype(qkv.dtype())?.unsqueeze(0)?)?
        .reshape((batch, num_heads, tokens, tokens))?;
    let attended = softmax_last_dim(&scores)?.matmul(&v)?;
    attended.transpose(1, 2)?.reshape((batch, tokens, width / 3))
}
