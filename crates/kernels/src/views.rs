//! Strided views composed from candle's differentiable ops (reshape, narrow, pad), which the
//! composite paths use where candle has no strided slice.

use candle_core::Tensor;

/// Every s-th entry along `axis`, the first `count` of them.
pub(crate) fn every_nth(t: &Tensor, axis: usize, s: usize, count: usize) -> candle_core::Result<Tensor> {
    let size = t.dim(axis)?;
    let fitted = if size >= count * s { t.narrow(axis, 0, count * s)? } else { t.pad_with_zeros(axis, 0, count * s - size)? };
    let mut dims = fitted.dims().to_vec();
    dims[axis] = count;
    dims.insert(axis + 1, s);
    fitted.reshape(dims)?.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)
}
