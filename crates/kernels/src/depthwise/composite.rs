//! Depthwise convolution from candle's differentiable ops: one multiply-add over the whole batch
//! per kernel tap, for CUDA and dtypes other than f32.

use candle_core::Tensor;

use super::Geometry;
use crate::views::every_nth;

/// y = Σ_{i,j} w[:, i, j] · x_padded[:, :, s·y + i, s·x + j].
pub(super) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let (_, channels, height, width) = x.dims4()?;
    let kernel = weight.dim(2)?;
    let geometry = Geometry { height, width, kernel, stride, padding };
    let (out_h, out_w) = (geometry.out_height(), geometry.out_width());
    let padded = x.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?;
    let mut sum: Option<Tensor> = None;
    for ky in 0..kernel {
        for kx in 0..kernel {
            let view = padded.narrow(2, ky, (out_h - 1) * stride + 1)?.narrow(3, kx, (out_w - 1) * stride + 1)?;
            let view = if stride > 1 { every_nth(&every_nth(&view, 2, stride, out_h)?, 3, stride, out_w)? } else { view };
            let tap = weight.narrow(2, ky, 1)?.narrow(3, kx, 1)?.reshape((1, channels, 1, 1))?;
            let term = view.broadcast_mul(&tap)?;
            sum = Some(match sum {
                Some(total) => (total + term)?,
                None => term,
            });
        }
    }
    sum.ok_or_else(|| candle_core::Error::Msg("a depthwise kernel needs at least one tap".into()))
}
