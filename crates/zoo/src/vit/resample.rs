//! timm's `resample_abs_pos_embed`: position embeddings laid out for one patch grid resampled
//! to another (`F.interpolate(mode="bicubic", antialias=True, align_corners=False)`, per axis),
//! the prefix tokens' positions kept; or transformers' ViTModel/Dinov2Model interpolation (plain
//! bicubic, no antialiasing). Written as two matrix products so that it is differentiable: with
//! `dynamic_img_size` it runs in every forward pass, training included.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How position embeddings are resampled to another grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosResample {
    /// timm's (and transformers' Dinov2WithRegisters'): bicubic, antialiased (a = -0.5).
    #[default]
    Antialiased,
    /// transformers' ViTModel and Dinov2Model: PyTorch's plain bicubic (a = -0.75, edges
    /// clamped), `align_corners=False`.
    Bicubic,
}

/// The cubic convolution kernel with coefficient `a`: PyTorch's plain bicubic uses -0.75,
/// its antialiased one (as PIL) -0.5.
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// The (output, input) matrix of `upsample_bicubic2d` along one axis (align_corners False).
fn plain_bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let mut matrix = vec![0.0f32; output * input];
    for i in 0..output {
        let real = scale * (i as f64 + 0.5) - 0.5;
        let floor = real.floor();
        let t = real - floor;
        for k in 0..4i64 {
            let weight = cubic(t + 1.0 - k as f64, -0.75);
            let index = (floor as i64 - 1 + k).clamp(0, input as i64 - 1) as usize;
            matrix[i * input + index] += weight as f32;
        }
    }
    matrix
}

/// The (output, input) matrix of the antialiased bicubic resampling along one axis.
fn antialiased_matrix(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let stretch = scale.max(1.0);
    let support = 2.0 * stretch;
    let mut matrix = vec![0.0f32; output * input];
    for i in 0..output {
        let centre = scale * (i as f64 + 0.5);
        let first = ((centre - support + 0.5).floor().max(0.0)) as usize;
        let end = ((centre + support + 0.5).floor() as usize).min(input);
        let weights: Vec<f64> = (first..end).map(|j| cubic((j as f64 - centre + 0.5) / stretch, -0.5)).collect();
        let total: f64 = weights.iter().sum();
        for (k, weight) in weights.iter().enumerate() {
            matrix[i * input + first + k] = (weight / total) as f32;
        }
    }
    matrix
}

fn resample_matrix(kind: PosResample, input: usize, output: usize) -> Vec<f32> {
    match kind {
        PosResample::Antialiased => antialiased_matrix(input, output),
        PosResample::Bicubic => plain_bicubic_matrix(input, output),
    }
}

/// `pos_embed` (1, prefix + old_h * old_w, dim) resampled to (1, prefix + new_h * new_w, dim).
pub fn resample_pos_embed(
    pos_embed: &Tensor,
    kind: PosResample,
    prefix: usize,
    old: (usize, usize),
    new: (usize, usize),
) -> Result<Tensor> {
    let (_, tokens, dim) = pos_embed.dims3()?;
    if tokens != prefix + old.0 * old.1 {
        return Err(Error::Config {
            source_name: "pos_embed".into(),
            problem: format!("{tokens} positions are not {prefix} prefix position(s) and a {} x {} grid", old.0, old.1),
        });
    }
    if old == new {
        return Ok(pos_embed.clone());
    }
    let device = pos_embed.device();
    let dtype = pos_embed.dtype();
    let rows = Tensor::from_vec(resample_matrix(kind, old.0, new.0), (new.0, old.0), device)?.to_dtype(dtype)?;
    let cols = Tensor::from_vec(resample_matrix(kind, old.1, new.1), (new.1, old.1), device)?.to_dtype(dtype)?;
    let grid = pos_embed.narrow(1, prefix, old.0 * old.1)?.reshape((old.0, old.1 * dim))?;
    // Rows: (new_h, old_h) x (old_h, old_w * dim); then columns, with the width axis first.
    let by_rows = rows.matmul(&grid)?.reshape((new.0, old.1, dim))?.transpose(0, 1)?.reshape((old.1, new.0 * dim))?;
    let resampled = cols.matmul(&by_rows)?.reshape((new.1, new.0, dim))?.transpose(0, 1)?.reshape((1, new.0 * new.1, dim))?;
    if prefix == 0 {
        return Ok(resampled);
    }
    Ok(Tensor::cat(&[&pos_embed.narrow(1, 0, prefix)?, &resampled], 1)?)
}

/// The side of a square grid of `positions` patches, if it is one.
pub fn square_side(positions: usize) -> Option<usize> {
    let side = (positions as f64).sqrt().round() as usize;
    (side * side == positions).then_some(side)
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;

    #[test]
    fn each_output_position_is_a_normalised_mix_and_the_same_grid_is_kept() {
        for (kind, (input, output)) in
            [PosResample::Antialiased, PosResample::Bicubic].into_iter().flat_map(|k| [(4, 6), (6, 4), (37, 16), (16, 16)].map(|s| (k, s)))
        {
            let matrix = resample_matrix(kind, input, output);
            for row in matrix.chunks(input) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{kind:?} {input} -> {output}");
            }
        }
        let pos = Tensor::arange(0f32, 2.0 * 10.0 * 3.0, &candle_core::Device::Cpu).unwrap().reshape((1, 20, 3)).unwrap();
        // 2 prefix + 3 x 6: a constant field stays constant, the prefix rows are untouched.
        let constant = Tensor::ones((1, 18, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        let with_prefix = Tensor::cat(&[&pos.narrow(1, 0, 2).unwrap(), &constant], 1).unwrap();
        let out = resample_pos_embed(&with_prefix, PosResample::Antialiased, 2, (3, 6), (5, 4)).unwrap();
        assert_eq!(out.dims(), &[1, 22, 3]);
        let values: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&values[..6], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(values[6..].iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert!(resample_pos_embed(&pos, PosResample::Bicubic, 1, (4, 4), (2, 2)).is_err(), "20 rows are not 1 + 16");
    }
}
