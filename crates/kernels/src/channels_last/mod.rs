//! Moving a (B, C, H, W) map to channels-last (B, H, W, C) and back, and ConvNeXt's block end:
//! the layer scale, the move back and the residual add as one op.
//!
//! ConvNeXt (and any model that runs its LayerNorm and MLP on tokens) moves every block's map to
//! channels-last and back. With candle's ops each move is `permute` then `contiguous`, a strided
//! copy that computes an index per value, forward, and again on its gradient backward; the block
//! end (`x * gamma`, the move back, `+ shortcut`) adds a full-size product, a copy and a sum, and
//! the layer scale's gradient is candle's reduction over the batch and the positions, whose
//! strided index arithmetic cost more than either copy: on the Intel VM, 8% and 6% of a
//! ConvNeXt-T training step. Here f32 takes one op per move (`cpu.rs`: a tiled transpose, a chunk
//! of rows per task; `cuda.rs`: through shared-memory tiles) whose backward pass is the opposite
//! move, and one op for the block end, whose backward pass is one move for the branch (scaled as
//! it goes), the upstream gradient itself for the shortcut, and the scale's gradient summed in
//! f64. Forward values and the branch's gradient are candle's bits on both devices; the scale's
//! gradient is an f64 sum where candle's was f32. Other dtypes take candle's ops, as a GPU does
//! with `MEDXFER_CUDA_CHANNELS_LAST=candle`.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{DType, Result, Tensor};

use crate::kernel_input::is_f32_cpu;

/// Whether the ops here take `x`: f32 on the CPU or on a CUDA device (`cuda.rs`), not empty.
fn kernels_take(x: &Tensor) -> bool {
    x.elem_count() > 0 && (is_f32_cpu(x) || cuda_takes(x))
}

fn cuda_takes(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    return cuda::applies(x);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        false
    }
}

/// x (B, C, H, W) as (B, H, W, C), contiguous: `x.permute((0, 2, 3, 1)).contiguous()`.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    if kernels_take(x) {
        return x.contiguous()?.apply_op1(cpu::Transpose::ToChannelsLast);
    }
    x.permute((0, 2, 3, 1))?.contiguous()
}

/// x (B, H, W, C) as (B, C, H, W), contiguous: `x.permute((0, 3, 1, 2)).contiguous()`.
pub fn to_channels_first(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    if kernels_take(x) {
        return x.contiguous()?.apply_op1(cpu::Transpose::ToChannelsFirst);
    }
    x.permute((0, 3, 1, 2))?.contiguous()
}

/// shortcut + the channels-last `branch` (B, H, W, C), times the per-channel `scale` (C) if
/// given, moved to the shortcut's (B, C, H, W): ConvNeXt's block end (timm's `x.mul_(gamma)`,
/// `x.permute(0, 3, 1, 2)`, `shortcut + x`). Differentiable in all three.
pub fn channels_last_residual(branch: &Tensor, scale: Option<&Tensor>, shortcut: &Tensor) -> Result<Tensor> {
    let (batch, height, width, channels) = branch.dims4()?;
    if shortcut.dims() != [batch, channels, height, width] {
        candle_core::bail!(
            "channels-last residual: a shortcut of shape {:?} for a branch of shape {:?}, ({batch}, {channels}, {height}, {width}) expected",
            shortcut.dims(),
            branch.dims()
        );
    }
    if let Some(scale) = scale
        && scale.dims() != [channels]
    {
        candle_core::bail!("channels-last residual: a scale of shape {:?} for {channels} channels", scale.dims());
    }
    // The others f32 on the branch's device (candle's ops refuse a mixture either way).
    let beside = |t: &Tensor| t.dtype() == DType::F32 && t.device().same_device(branch.device());
    if kernels_take(branch) && beside(shortcut) && scale.is_none_or(beside) {
        let (branch, shortcut) = (branch.contiguous()?, shortcut.contiguous()?);
        return match scale {
            Some(scale) => branch.apply_op3(&scale.contiguous()?, &shortcut, cpu::ChannelsLastResidual),
            None => branch.apply_op2(&shortcut, cpu::ChannelsLastResidual),
        };
    }
    let scaled = match scale {
        Some(scale) => branch.broadcast_mul(scale)?,
        None => branch.clone(),
    };
    scaled.permute((0, 3, 1, 2))?.contiguous()? + shortcut
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::test_tensors::{NormalTensors, bits};

    /// candle's ops for the same maths, which `composite` also takes.
    fn candle_residual(branch: &Tensor, scale: Option<&Tensor>, shortcut: &Tensor) -> Tensor {
        let scaled = scale.map_or_else(|| branch.clone(), |s| branch.broadcast_mul(s).unwrap());
        (scaled.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap() + shortcut).unwrap()
    }

    /// Both moves and their gradients are candle's permuted copies to the bit, at shapes whose
    /// rows per task differ: a 7x7 map (49 rows, all in one task), 56x56 with 96 channels (tasks of
    /// 16 planes, 224 positions), odd sizes, one channel and a 1x1 map.
    #[test]
    fn the_moves_are_candles_permuted_copies() {
        let mut random = NormalTensors::new(51);
        for shape in [(2, 5, 7, 7), (2, 96, 56, 56), (3, 3, 5, 11), (1, 1, 4, 4), (2, 40, 1, 1)] {
            let x = random.draw(0.0, 1.0, shape);
            let upstream = random.draw(0.0, 1.0, (shape.0, shape.2, shape.3, shape.1));
            let run = |moved: &dyn Fn(&Tensor) -> Tensor| {
                let xv = Var::from_tensor(&x).unwrap();
                let y = moved(xv.as_tensor());
                let gradient = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap().remove(xv.as_tensor()).unwrap();
                (bits(&y), bits(&gradient))
            };
            let ours = run(&|x| to_channels_last(x).unwrap());
            let candle = run(&|x| x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap());
            assert!(ours == candle, "{shape:?}: to channels-last differs from candle's");
            let last = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let first = to_channels_first(&last).unwrap();
            assert_eq!(bits(&first), bits(&x), "{shape:?}: there and back is not the identity");
        }
    }

    /// The block end against candle's ops: the output and the branch's and the shortcut's
    /// gradients to the bit, the scale's gradient within f32 rounding of an f64 truth; with and
    /// without a scale.
    #[test]
    fn the_block_end_matches_candles_ops() {
        let mut random = NormalTensors::new(52);
        for (batch, channels, height, width) in [(2usize, 96usize, 56usize, 56usize), (3, 5, 7, 7), (2, 3, 5, 11), (2, 8, 1, 1)] {
            let case = format!("{:?}", (batch, channels, height, width));
            let branch = random.draw(0.0, 1.0, (batch, height, width, channels));
            let scale = random.draw(0.5, 0.2, channels);
            let shortcut = random.draw(0.0, 1.0, (batch, channels, height, width));
            let upstream = random.draw(0.0, 1.0, (batch, channels, height, width));
            for scaled in [true, false] {
                let run = |end: &dyn Fn(&Tensor, Option<&Tensor>, &Tensor) -> Tensor, dtype: DType| {
                    let var = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
                    let (b, s, x) = (var(&branch), var(&scale), var(&shortcut));
                    let y = end(b.as_tensor(), scaled.then_some(s.as_tensor()), x.as_tensor());
                    let grads = (&y * upstream.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                    let gradient = |v: &Var| grads.get(v.as_tensor()).map(|g| g.to_dtype(DType::F64).unwrap());
                    (y.to_dtype(DType::F64).unwrap(), [gradient(&b), gradient(&x), gradient(&s)])
                };
                let (ours, [ours_branch, ours_shortcut, ours_scale]) = run(&|b, s, x| channels_last_residual(b, s, x).unwrap(), DType::F32);
                let (candle, [candle_branch, candle_shortcut, _]) = run(&candle_residual, DType::F32);
                let (_, [_, _, truth_scale]) = run(&candle_residual, DType::F64);
                // The f32 values, widened to f64 exactly, narrowed back.
                let f32_bits = |t: Option<Tensor>| bits(&t.unwrap().to_dtype(DType::F32).unwrap());
                assert_eq!(f32_bits(Some(ours)), f32_bits(Some(candle)), "{case} scaled {scaled}: output");
                assert_eq!(f32_bits(ours_branch), f32_bits(candle_branch), "{case} scaled {scaled}: branch gradient");
                assert_eq!(f32_bits(ours_shortcut), f32_bits(candle_shortcut), "{case} scaled {scaled}: shortcut gradient");
                if scaled {
                    let (ours, truth) = (ours_scale.unwrap(), truth_scale.unwrap());
                    let error = (&ours - &truth).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
                    let largest = truth.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
                    // One f32 rounding of each sum.
                    assert!(error <= largest * 6e-8, "{case}: scale gradient off by {error} (largest {largest})");
                } else {
                    assert!(ours_scale.is_none(), "{case}: an unused scale got a gradient");
                }
            }
        }
    }

    /// By hand: one image, two channels, a 1x2 map.
    #[test]
    fn a_hand_computed_block_end() {
        let cpu = Device::Cpu;
        // branch (1, 1, 2, 2): position 0 holds channels (1, 2), position 1 holds (3, 4).
        let branch = Var::from_tensor(&Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &cpu).unwrap()).unwrap();
        let scale = Var::from_tensor(&Tensor::new(&[10f32, 100.0], &cpu).unwrap()).unwrap();
        let shortcut = Var::from_tensor(&Tensor::new(&[[[[0.5f32, 0.25]], [[-1.0, -2.0]]]], &cpu).unwrap()).unwrap();
        let y = channels_last_residual(branch.as_tensor(), Some(scale.as_tensor()), shortcut.as_tensor()).unwrap();
        // channel 0: 0.5 + 1·10, 0.25 + 3·10; channel 1: -1 + 2·100, -2 + 4·100.
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [10.5, 30.25, 199.0, 398.0]);
        let upstream = Tensor::new(&[[[[1f32, 2.0]], [[3.0, 4.0]]]], &cpu).unwrap();
        let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let values = |v: &Var| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // d branch[p][c] = dy[c][p] · scale[c]; d scale[c] = sum_p dy[c][p] · branch[p][c].
        assert_eq!(values(&branch), [10.0, 300.0, 20.0, 400.0]);
        assert_eq!(values(&scale), [1.0 + 2.0 * 3.0, 3.0 * 2.0 + 4.0 * 4.0]);
        assert_eq!(values(&shortcut), [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn mismatched_shapes_are_errors_that_name_them() {
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let error = channels_last_residual(&zeros(&[2, 4, 4, 3]), None, &zeros(&[2, 4, 4, 3])).unwrap_err().to_string();
        assert!(error.contains("[2, 4, 4, 3]") && error.contains("(2, 3, 4, 4) expected"), "{error}");
        let error = channels_last_residual(&zeros(&[2, 4, 4, 3]), Some(&zeros(&[4])), &zeros(&[2, 3, 4, 4])).unwrap_err().to_string();
        assert!(error.contains("scale of shape [4] for 3 channels"), "{error}");
        assert!(to_channels_last(&zeros(&[2, 3, 4])).is_err());
    }

    /// Empty maps take candle's ops and stay empty.
    #[test]
    fn empty_maps_move() {
        let x = Tensor::zeros((0, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(to_channels_last(&x).unwrap().dims(), [0, 4, 4, 3]);
        assert_eq!(to_channels_first(&to_channels_last(&x).unwrap()).unwrap().dims(), [0, 3, 4, 4]);
    }
}
