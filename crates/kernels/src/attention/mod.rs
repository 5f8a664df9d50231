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
//! textbook one with candle's ops. Other devices and dtypes run the composite.

mod composite;
mod cpu;

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
    composite::attention(qkv, num_heads, scale)
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

    /// Two tokens, one head of width 1, by hand: scores q_i k_j = [[1, 2], [2, 4]] for q = k =
    /// [1, 2], so the weights are softmax([1, 2]) and softmax([2, 4]) over v = [10, 20].
    #[test]
    fn a_two_token_case_is_computed_by_hand() {
        let qkv = Tensor::new(&[[[1f32, 1.0, 10.0], [2.0, 2.0, 20.0]]], &candle_core::Device::Cpu).unwrap();
        let y = attention(&qkv, 1, 1.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = |a: f32, b: f32| (10.0 * a.exp() + 20.0 * b.exp()) / (a.exp() + b.exp());
        assert!((y[0] - expected(1.0, 2.0)).abs() < 1e-5 && (y[1] - expected(2.0, 4.0)).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn a_width_that_does_not_split_into_heads_is_refused() {
        let qkv = Tensor::zeros((1, 2, 12), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let error = attention(&qkv, 5, 1.0).unwrap_err().to_string();
        assert!(error.contains("does not split into q, k and v of 5 heads"), "{error}");
    }
}
