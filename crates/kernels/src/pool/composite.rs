//! The stems' 3x3/2 max pooling from shifted views, which candle differentiates.

use candle_core::{Result, Tensor};

/// Pools rows, then columns.
pub(super) fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    pool_axis(&pool_axis(x, 2)?, 3)
}

/// out[o] = max(x[2o-1], x[2o], x[2o+1]) along one axis, padded with zeros. Zero padding equals
/// -inf padding here: the stems pool a ReLU's output.
fn pool_axis(x: &Tensor, axis: usize) -> Result<Tensor> {
    let size = x.dim(axis)?;
    let out = (size - 1) / 2 + 1;
    // Padded length 2 * (out + 1): one zero in front, the rest behind.
    let padded = x.pad_with_zeros(axis, 1, 2 * (out + 1) - size - 1)?;
    let mut dims = padded.dims().to_vec();
    dims[axis] = out + 1;
    dims.insert(axis + 1, 2);
    let pairs = padded.reshape(dims)?;
    let even = pairs.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)?;
    let odd = pairs.narrow(axis + 1, 1, 1)?.squeeze(axis + 1)?;
    let first = even.narrow(axis, 0, out)?;
    let middle = odd.narrow(axis, 0, out)?;
    let last = even.narrow(axis, 1, out)?;
    first.maximum(&middle)?.maximum(&last)
}
