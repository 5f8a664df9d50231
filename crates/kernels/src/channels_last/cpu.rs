//! The moves and the block end, and their CPU halves (the CUDA halves are `cuda.rs`'s): each
//! image's (rows x columns) matrix transposed a chunk of output rows per task, in tiles of 64
//! columns, so that a tile's reads come from 64 source rows that stay in L1 while the chunk's rows
//! are written.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{BackwardReads, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernel_input::f32_slice;
use crate::parallel_output::{Start, build_in_chunks};

/// Output columns per tile.
const TILE: usize = 64;

/// Nothing: a move's gradient is the opposite move of the upstream gradient, and the block end's
/// branch gradient reads only the scale (`ChannelsLastResidual::backward_reads`).
const READS_NOTHING: BackwardReads = BackwardReads { inputs: [false, false, false], output: false };

/// Output rows per task: the largest divisor of an image's rows (so that no chunk straddles two
/// images) that is at most 16 or 32,768 values' worth of rows, whichever is more.
fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let most = (32_768 / row_len.max(1)).max(16).min(rows).max(1);
    (1..=most).rev().find(|d| rows.is_multiple_of(*d)).unwrap_or(1)
}

/// Each of `images` (src_rows x src_cols) matrices in `src` transposed, `dst[r][j] = op(start,
/// src[j][r], r, j)` where `start` is what `start` put there.
fn transposed(
    src: &[f32],
    images: usize,
    (src_rows, src_cols): (usize, usize),
    start: Start<'_>,
    op: impl Fn(f32, f32, usize, usize) -> f32 + Sync + Send,
) -> Result<Vec<f32>> {
    let (rows, row_len) = (src_cols, src_rows);
    let image_len = rows * row_len;
    if src.len() != images * image_len {
        candle_core::bail!("transpose: {} values for {images} images of {src_rows} x {src_cols}", src.len());
    }
    let per_task = rows_per_task(rows, row_len);
    build_in_chunks(images * image_len, per_task * row_len, start, |index, chunk| {
        let first = index * per_task;
        let (image, first_row) = (first / rows, first % rows);
        let src = &src[image * image_len..][..image_len];
        for tile in (0..row_len).step_by(TILE) {
            let columns = tile..(tile + TILE).min(row_len);
            for (i, dst_row) in chunk.chunks_exact_mut(row_len).enumerate() {
                let r = first_row + i;
                for j in columns.clone() {
                    dst_row[j] = op(dst_row[j], src[j * src_cols + r], r, j);
                }
            }
        }
    })
}

/// (B, C, H, W) to (B, H, W, C), or back.
#[derive(Debug, Clone, Copy)]
pub(super) enum Transpose {
    ToChannelsLast,
    ToChannelsFirst,
}

impl Transpose {
    /// The images, each image's (rows, columns) matrix and the output's shape.
    fn matrices(self, input: &Shape) -> Result<(usize, (usize, usize), Shape)> {
        let (batch, d1, d2, d3) = input.dims4()?;
        Ok(match self {
            // Each image a C x (H W) matrix.
            Transpose::ToChannelsLast => (batch, (d1, d2 * d3), Shape::from((batch, d2, d3, d1))),
            // Each image an (H W) x C matrix.
            Transpose::ToChannelsFirst => (batch, (d1 * d2, d3), Shape::from((batch, d3, d1, d2))),
        })
    }
}

impl CustomOp1 for Transpose {
    fn name(&self) -> &'static str {
        match self {
            Transpose::ToChannelsLast => "to-channels-last",
            Transpose::ToChannelsFirst => "to-channels-first",
        }
    }

    fn backward_reads(&self) -> BackwardReads {
        READS_NOTHING
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name(), "the input")?;
        let (images, matrix, shape) = self.matrices(layout.shape())?;
        let out = transposed(x, images, matrix, Start::Zeros, |_, v, _, _| v)?;
        Ok((CpuStorage::F32(out), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (images, matrix, shape) = self.matrices(layout.shape())?;
        Ok((super::cuda::transposed((storage, layout), images, matrix, self.name())?, shape))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let opposite = match self {
            Transpose::ToChannelsLast => Transpose::ToChannelsFirst,
            Transpose::ToChannelsFirst => Transpose::ToChannelsLast,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&opposite)?))
    }
}

/// shortcut + branch (times the scale) moved to channels-first: a `CustomOp2` of (branch,
/// shortcut) without a scale, a `CustomOp3` of (branch, scale, shortcut) with one.
pub(super) struct ChannelsLastResidual;

const RESIDUAL: &str = "channels-last-residual";

/// The block end's (images, positions, channels), checked against the shortcut's shape and the
/// scale's length.
fn residual_sizes(branch: &Shape, scales: Option<usize>, shortcut: &Shape) -> Result<(usize, usize, usize)> {
    let (batch, height, width, channels) = branch.dims4()?;
    if shortcut.dims() != [batch, channels, height, width] {
        candle_core::bail!("{RESIDUAL}: a shortcut of shape {shortcut:?} for a branch of shape {branch:?}");
    }
    if let Some(scales) = scales
        && scales != channels
    {
        candle_core::bail!("{RESIDUAL}: {scales} scales for {channels} channels");
    }
    Ok((batch, height * width, channels))
}

/// The block end's output: each image's (H W) x C branch transposed onto a copy of the shortcut.
fn residual_forward(
    branch: (&CpuStorage, &Layout),
    scale: Option<&[f32]>,
    shortcut: (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (batch, positions, channels) = residual_sizes(branch.1.shape(), scale.map(<[f32]>::len), shortcut.1.shape())?;
    let values = f32_slice(branch.0, branch.1, RESIDUAL, "the branch")?;
    let shortcut_values = f32_slice(shortcut.0, shortcut.1, RESIDUAL, "the shortcut")?;
    let start = Start::Values { values: shortcut_values, rows: None };
    // The shortcut plus the (rounded) product: candle's `shortcut + x * gamma`, to the bit.
    let out = match scale {
        Some(scale) => transposed(values, batch, (positions, channels), start, |s, v, c, _| s + v * scale[c])?,
        None => transposed(values, batch, (positions, channels), start, |s, v, _, _| s + v)?,
    };
    Ok((CpuStorage::F32(out), shortcut.1.shape().clone()))
}

/// The branch's gradient: the upstream gradient moved to channels-last (and scaled).
fn branch_gradient(grad: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
    match scale {
        Some(scale) => grad.apply_op2_no_bwd(scale, &BranchGradient),
        None => grad.apply_op1_no_bwd(&Transpose::ToChannelsLast),
    }
}

impl CustomOp2 for ChannelsLastResidual {
    fn name(&self) -> &'static str {
        RESIDUAL
    }

    fn backward_reads(&self) -> BackwardReads {
        READS_NOTHING
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        residual_forward((s1, l1), None, (s2, l2))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let sizes = residual_sizes(l1.shape(), None, l2.shape())?;
        Ok((super::cuda::residual((s1, l1), None, (s2, l2), sizes, RESIDUAL)?, l2.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((Some(branch_gradient(&grad, None)?), Some(grad)))
    }
}

impl CustomOp3 for ChannelsLastResidual {
    fn name(&self) -> &'static str {
        RESIDUAL
    }

    fn backward_reads(&self) -> BackwardReads {
        // The branch and the scale for the scale's gradient and the branch's; not the shortcut.
        BackwardReads { inputs: [true, true, false], output: false }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scale = f32_slice(s2, l2, RESIDUAL, "the scale")?;
        residual_forward((s1, l1), Some(scale), (s3, l3))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let sizes = residual_sizes(l1.shape(), Some(l2.shape().elem_count()), l3.shape())?;
        Ok((super::cuda::residual((s1, l1), Some((s2, l2)), (s3, l3), sizes, RESIDUAL)?, l3.shape().clone()))
    }

    fn bwd(
        &self,
        branch: &Tensor,
        scale: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let scale_grad = grad.apply_op2_no_bwd(&branch.contiguous()?, &ScaleGradient)?;
        Ok((Some(branch_gradient(&grad, Some(&scale.contiguous()?))?), Some(scale_grad), Some(grad)))
    }
}

/// dy (B, C, H, W) moved to (B, H, W, C), each channel times its scale (C): candle's product of
/// the permuted gradient and the broadcast scale, to the bit.
struct BranchGradient;

impl CustomOp2 for BranchGradient {
    fn name(&self) -> &'static str {
        "channels-last-residual-branch-gradient"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let dy = f32_slice(s1, l1, self.name(), "the gradient")?;
        let scale = f32_slice(s2, l2, self.name(), "the scale")?;
        if scale.len() != channels {
            candle_core::bail!("{}: {} scales for {channels} channels", self.name(), scale.len());
        }
        let out = transposed(dy, batch, (channels, height * width), Start::Zeros, |_, v, _, c| v * scale[c])?;
        Ok((CpuStorage::F32(out), Shape::from((batch, height, width, channels))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let out = super::cuda::branch_gradient((s1, l1), (s2, l2), (batch, channels, height * width), self.name())?;
        Ok((out, Shape::from((batch, height, width, channels))))
    }
}

/// The scale's gradient, (C): for each channel the sum over images and positions of dy times the
/// branch, in f64 (each image's sums in position order, then the images' in order), rounded once.
struct ScaleGradient;

impl CustomOp2 for ScaleGradient {
    fn name(&self) -> &'static str {
        "channels-last-residual-scale-gradient"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = self.sizes(l1.shape(), l2.shape())?;
        let dy = f32_slice(s1, l1, self.name(), "the gradient")?;
        let branch = f32_slice(s2, l2, self.name(), "the branch")?;
        let positions = height * width;
        let image_len = channels * positions;
        let per_image: Vec<Vec<f64>> = (0..batch)
            .into_par_iter()
            .map(|image| {
                let (dy, branch) = (&dy[image * image_len..][..image_len], &branch[image * image_len..][..image_len]);
                let mut sums = vec![0f64; channels];
                for tile in (0..positions).step_by(TILE) {
                    let tile = tile..(tile + TILE).min(positions);
                    for (c, sum) in sums.iter_mut().enumerate() {
                        for p in tile.clone() {
                            *sum += f64::from(dy[c * positions + p]) * f64::from(branch[p * channels + c]);
                        }
                    }
                }
                sums
            })
            .collect();
        let sums = (0..channels).map(|c| per_image.iter().map(|sums| sums[c]).sum::<f64>() as f32).collect();
        Ok((CpuStorage::F32(sums), Shape::from(channels)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let (batch, channels, height, width) = self.sizes(l1.shape(), l2.shape())?;
        let sums = super::cuda::scale_gradient((s1, l1), (s2, l2), (batch, channels, height * width), self.name())?;
        Ok((sums, Shape::from(channels)))
    }
}

impl ScaleGradient {
    /// dy's (B, C, H, W), checked against the branch's (B, H, W, C).
    fn sizes(&self, dy: &Shape, branch: &Shape) -> Result<(usize, usize, usize, usize)> {
        let (batch, channels, height, width) = dy.dims4()?;
        if branch.dims() != [batch, height, width, channels] {
            candle_core::bail!("{}: a branch of shape {branch:?} for a gradient of shape {dy:?}", self.name());
        }
        Ok((batch, channels, height, width))
    }
}

#[cfg(test)]
mod tests {
    use super::rows_per_task;

    /// Rows per task divide the image's rows, and stay within the chunk size where a divisor
    /// allows: ConvNeXt-T's maps both ways, a prime count of rows, one row.
    #[test]
    fn tasks_take_whole_rows_of_one_image() {
        for (rows, row_len, want) in
            [(3136, 96, 224), (96, 3136, 16), (768, 49, 384), (49, 768, 7), (13, 10_000, 13), (1, 5, 1), (97, 7, 97)]
        {
            let got = rows_per_task(rows, row_len);
            assert_eq!(got, want, "{rows} rows of {row_len}");
            assert!(rows.is_multiple_of(got));
        }
    }
}
