//! Multi-head self-attention from a fused qkv projection, softmax(q k' scale) v per head, as
//! timm's ViT `Attention` computes it between its `qkv` and `proj` layers.
//!
//! Written with candle's ops (`composite.rs`) this is a permute of the projection, three
//! contiguous copies of q, k and v, a transposed copy of k, a scale pass, a softmax of three
//! passes and a transposed copy of the result: in a ViT-L/16 forward pass at batch 8 those
//! copies were the largest cost after the matrix products, each into freshly mapped memory. On
//! the CPU in f32 (`cpu.rs`) each (image, head) pair reads q, k and v in place from the
//! projection, keeps its scores in a buffer of its own, and writes its output straight into the
//! (batch, tokens, dim) layout `proj` takes; the pairs run in parallel. Its backward pass is the
//! textbook one with candle's ops. On a CUDA device in f32 (`cuda.rs`) it is one graph node
//! too, with the scale and softmax as one kernel each way. Other devices and dtypes run the
//! composite.

mod composite;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};

use crate::kernel_input::is_f32_cpu;

/// Attention over `qkv` of shape (batch, tokens, 3 dim), laid out as timm's `qkv` linear
/// layer gives it (q, k, v, each `num_heads` heads of dim / num_heads), with the scores scaled
/// by `scale`; returns (batch, tokens, dim).
pub fn attention(qkv: &Tensor, num_heads: usize, scale: f64) -> Result<Tensor> {
    let (_, _, width) = qkv.dims3()?;
    if num_heads == 0 || !width.is_multiple_of(3 * num_heads) {
        candle_core::bail!("attention: a qkv width of {width} does not split into q, k and v of {num_heads} heads");
    }
    if is_f32_cpu(qkv) {
        return cpu::attention(qkv, num_heads, scale);
    }
    #[cfg(feature = "cuda")]
    if cuda::applies(qkv) {
        return cuda::attention(qkv, num_heads, scale);
    }
    composite::attention(qkv, num_heads, scale)
}

/// Attention with an additive bias on the scaled scores, as Swin's windowed attention adds its
/// relative position bias and shift mask: `qkv` (images x groups, tokens, 3 dim), laid out as
/// [`attention`] takes it, and `bias` (groups, heads, tokens, tokens), whose group g applies to
/// entry i x groups + g of the batch (a Swin window's position in its image); one group applies
/// to every entry. Returns (images x groups, tokens, dim). f32 on the CPU takes [`attention`]'s
/// kernel with the bias added to each head's scores, and the bias's gradient from the same
/// backward op (each group's and head's dS summed over its entries); f32 on a CUDA device takes
/// the CUDA node with the bias added in its softmax kernel and the bias's gradient summed by a
/// kernel of its own; other devices and dtypes take candle's ops.
pub fn attention_with_bias(qkv: &Tensor, num_heads: usize, scale: f64, bias: &Tensor) -> Result<Tensor> {
    let (batch, tokens, width) = qkv.dims3()?;
    let (groups, heads, rows, columns) = bias.dims4()?;
    if num_heads == 0 || !width.is_multiple_of(3 * num_heads) {
        candle_core::bail!("attention: a qkv width of {width} does not split into q, k and v of {num_heads} heads");
    }
    if heads != num_heads || rows != tokens || columns != tokens || groups == 0 || !batch.is_multiple_of(groups) {
        candle_core::bail!(
            "attention: a bias of shape ({groups}, {heads}, {rows}, {columns}) does not fit {batch} entries of {tokens} tokens and {num_heads} heads"
        );
    }
    if is_f32_cpu(qkv) && is_f32_cpu(bias) {
        return cpu::attention_with_bias(qkv, num_heads, scale, bias);
    }
    #[cfg(feature = "cuda")]
    if cuda::applies(qkv) && bias.device().same_device(qkv.device()) && bias.dtype() == candle_core::DType::F32 {
        return cuda::attention_with_bias(qkv, num_heads, scale, bias);
    }
    composite::attention_with_bias(qkv, num_heads, scale, bias)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::Var;

    use super::*;
    use crate::test_tensors::{NormalTensors, max_abs};

    /// The kernel against the composite, forward and backward, for one head and several, a
    /// single token and a batch of one.
    #[test]
    fn the_cpu_kernel_matches_the_composite_forward_and_backward() {
        let mut normal = NormalTensors::new(5);
        for (batch, tokens, heads, head_dim) in [(2usize, 7usize, 3usize, 4usize), (1, 1, 2, 8), (3, 13, 1, 6), (1, 50, 4, 16)] {
            let dim = heads * head_dim;
            let qkv = Var::from_tensor(&normal.draw(0.0, 1.5, (batch, tokens, 3 * dim))).unwrap();
            let scale = (head_dim as f64).powf(-0.5);
            let ours = attention(qkv.as_tensor(), heads, scale).unwrap();
            let theirs = composite::attention(qkv.as_tensor(), heads, scale).unwrap();
            assert_eq!(ours.dims(), [batch, tokens, dim]);
            let case = format!("batch {batch}, tokens {tokens}, heads {heads}");
            assert!(max_abs((&ours - &theirs).unwrap()) < 1e-5, "{case}: forward");
            let upstream = normal.draw(0.0, 1.0, (batch, tokens, dim));
            let ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(&qkv).unwrap();
            let theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(&qkv).unwrap();
            assert!(max_abs((ours - theirs).unwrap()) < 1e-4, "{case}: backward");
        }
    }

    /// The biased kernel against the composite, forward and backward (the projection's and the
    /// bias's gradients): one group for every entry, several groups (Swin's windows), one token.
    #[test]
    fn the_biased_cpu_kernel_matches_the_composite_forward_and_backward() {
        let mut normal = NormalTensors::new(6);
        for (images, groups, tokens, heads, head_dim) in
            [(2usize, 1usize, 7usize, 3usize, 4usize), (2, 4, 9, 2, 8), (3, 2, 1, 2, 4), (1, 3, 49, 3, 8)]
        {
            let (batch, dim) = (images * groups, heads * head_dim);
            let qkv = Var::from_tensor(&normal.draw(0.0, 1.5, (batch, tokens, 3 * dim))).unwrap();
            let bias = Var::from_tensor(&normal.draw(0.0, 2.0, (groups, heads, tokens, tokens))).unwrap();
            let scale = (head_dim as f64).powf(-0.5);
            let ours = attention_with_bias(qkv.as_tensor(), heads, scale, bias.as_tensor()).unwrap();
            let theirs = composite::attention_with_bias(qkv.as_tensor(), heads, scale, bias.as_tensor()).unwrap();
            assert_eq!(ours.dims(), [batch, tokens, dim]);
            let case = format!("images {images}, groups {groups}, tokens {tokens}, heads {heads}");
            assert!(max_abs((&ours - &theirs).unwrap()) < 1e-5, "{case}: forward");
            let upstream = normal.draw(0.0, 1.0, (batch, tokens, dim));
            let mut ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let mut theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, var) in [("projection", &qkv), ("bias", &bias)] {
                let (ours, theirs) = (ours.remove(var).unwrap(), theirs.remove(var).unwrap());
                assert_eq!(ours.dims(), theirs.dims(), "{case}: {what} gradient");
                assert!(max_abs((ours - theirs).unwrap()) < 1e-4, "{case}: {what} gradient");
            }
        }
    }

    /// Two tokens, one head of width 1, by hand: scores q_i k_j = [[1, 2], [2, 4]] for q = k =
    /// [1, 2], so the weights are softmax([1, 2]) and softmax([2, 4]) over v = [10, 20].
    #[test]
    fn a_two_token_case_is_computed_by_hand() {
        let qkv = Tensor::new(&[[[1f32, 1.0, 10.0], [2.0, 2.0, 20.0]]], &candle_core::Device::Cpu).unwrap();
        let y = attention(&qkv, 1, 1.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = |a: f32, b: f32| (10.0 * a.exp() + 20.0 * b.exp()) / (a.exp() + b.exp());
        assert!((y[0] - expected(1.0, 2.0)).abs() < 1e-5 && (y[1] - expected(2.0, 4.0)).abs() < 1e-5, "{y:?}");
    }

    /// A zero bias is plain attention; a bias of -100 off the diagonal leaves each token
    /// attending to itself (its own v), in the groups that carry it only.
    #[test]
    fn a_bias_adds_to_the_scores_of_its_group() {
        let mut normal = NormalTensors::new(9);
        let (images, groups, tokens, heads, head_dim) = (2, 3, 5, 2, 4);
        let dim = heads * head_dim;
        let qkv = normal.draw(0.0, 1.0, (images * groups, tokens, 3 * dim));
        let zero = Tensor::zeros((groups, heads, tokens, tokens), candle_core::DType::F32, qkv.device()).unwrap();
        let plain = attention(&qkv, heads, 0.5).unwrap();
        assert!(max_abs((attention_with_bias(&qkv, heads, 0.5, &zero).unwrap() - &plain).unwrap()) < 1e-5);
        // Group 1 masked to the diagonal.
        let eye = Tensor::eye(tokens, candle_core::DType::F32, qkv.device()).unwrap();
        let mask = ((eye - 1.0).unwrap() * 100.0).unwrap().unsqueeze(0).unwrap().repeat((heads, 1, 1)).unwrap();
        let bias = Tensor::stack(&[zero.get(0).unwrap(), mask, zero.get(2).unwrap()], 0).unwrap();
        let biased = attention_with_bias(&qkv, heads, 0.5, &bias).unwrap();
        let v = qkv.narrow(2, 2 * dim, dim).unwrap();
        for entry in 0..images * groups {
            let expected = if entry % groups == 1 { v.get(entry).unwrap() } else { plain.get(entry).unwrap() };
            assert!(max_abs((biased.get(entry).unwrap() - expected).unwrap()) < 1e-4, "entry {entry}");
        }
        let wrong = Tensor::zeros((4, heads, tokens, tokens), candle_core::DType::F32, qkv.device()).unwrap();
        assert!(attention_with_bias(&qkv, heads, 0.5, &wrong).unwrap_err().to_string().contains("does not fit 6 entries"));
    }

    #[test]
    fn a_width_that_does_not_split_into_heads_is_refused() {
        let qkv = Tensor::zeros((1, 2, 12), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let error = attention(&qkv, 5, 1.0).unwrap_err().to_string();
        assert!(error.contains("does not split into q, k and v of 5 heads"), "{error}");
    }
}
