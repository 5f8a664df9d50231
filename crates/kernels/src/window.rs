//! Whether a sliding window (a convolution's kernel, a pooling window) fits its input: checked
//! at each public op before any kernel computes an output size, where an input smaller than the
//! window would subtract below zero (a panic in a debug build, a wrapped size in a release one).

use candle_core::{Result, Tensor};

/// Err, naming `op` and the sizes, unless x (B, C, H, W), padded by `padding` on every side, holds
/// at least one (kh x kw) window, and the stride is positive.
pub(crate) fn check_fits(op: &str, x: &Tensor, (kh, kw): (usize, usize), stride: usize, padding: usize) -> Result<()> {
    let (_, _, height, width) = x.dims4()?;
    if stride == 0 {
        candle_core::bail!("{op}: a stride of 0");
    }
    if height + 2 * padding < kh || width + 2 * padding < kw {
        candle_core::bail!(
            "{op}: a {kh}x{kw} window with padding {padding} does not fit a {height}x{width} input (shape {:?}): the images are too small for this network; give larger ones (a larger resize and crop)",
            x.dims()
        );
    }
    Ok(())
}

/// [`check_fits`] for a convolution weight (O, C / groups, kh, kw) in `groups` groups, and its
/// input channels against x's (a mismatch reached the kernels' own length assertions).
pub(crate) fn check_kernel_fits(op: &str, x: &Tensor, weight: &Tensor, groups: usize, stride: usize, padding: usize) -> Result<()> {
    let (_, channels, _, _) = x.dims4()?;
    let (out_channels, group_channels, kh, kw) = weight.dims4()?;
    if groups == 0 || group_channels * groups != channels || out_channels % groups != 0 {
        candle_core::bail!(
            "{op}: a weight of shape {:?} in {groups} group(s) takes {} input channels, not the {channels} of an input of shape {:?}",
            weight.dims(),
            group_channels * groups,
            x.dims()
        );
    }
    check_fits(op, x, (kh, kw), stride, padding)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::{BatchNormParams, FusedActivation};

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
    }

    /// Every public windowed op refuses an input smaller than its window with an error that
    /// names the sizes (they computed a negative output size before: a debug build panicked),
    /// and still computes one that the padding makes fit, or that is the window's size exactly.
    #[test]
    fn windows_larger_than_the_input_are_errors() {
        let (gamma, beta) = (zeros(&[4]), zeros(&[4]));
        let params = BatchNormParams { gamma: &gamma, beta: &beta, eps: 1e-5 };
        let identity = FusedActivation::Identity;
        // Each convolution's window is 5x5 unpadded; the pool's 3x3 with padding 1, which only an
        // empty side does not fit.
        type Op<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
        let (dense, depthwise, grouped) = (zeros(&[4, 4, 5, 5]), zeros(&[4, 1, 5, 5]), zeros(&[4, 2, 5, 5]));
        let ops: Vec<(&str, Op<'_>, usize)> = vec![
            ("conv2d", Box::new(|x| crate::conv2d(x, &dense, None, 1, 0)), 5),
            ("conv2d", Box::new(|x| crate::conv2d_eval(x, &dense, None, 1, 0, None, identity)), 5),
            ("conv + batch norm", Box::new(|x| crate::conv_batch_norm_train(x, &dense, 1, 0, params, identity).map(|o| o.y)), 5),
            ("depthwise conv", Box::new(|x| crate::depthwise_conv2d(x, &depthwise, 1, 0)), 5),
            ("depthwise conv", Box::new(|x| crate::depthwise_conv2d_eval(x, &depthwise, &gamma, 1, 0, None, identity)), 5),
            ("grouped conv", Box::new(|x| crate::grouped_conv2d(x, &grouped, 2, 1, 0)), 5),
            ("max pool", Box::new(crate::max_pool_3x3_s2_p1), 1),
        ];
        for (name, op, fits) in &ops {
            let too_small: &[(usize, usize)] = if *name == "max pool" { &[(0, 0), (0, 5), (5, 0)] } else { &[(3, 3), (0, 0), (7, 2)] };
            for &small in too_small {
                let x = zeros(&[2, 4, small.0, small.1]);
                let error = op(&x).map(|y| format!("an output of {:?}", y.dims())).unwrap_err().to_string();
                assert!(
                    error.starts_with(name) && error.contains("does not fit") && error.contains("too small"),
                    "{name} {small:?}: {error}"
                );
            }
            let x = zeros(&[2, 4, *fits, *fits]);
            let y = op(&x).unwrap_or_else(|e| panic!("{name} at the window's size: {e}"));
            assert_eq!(y.dims()[2..], [1, 1], "{name}: one output where the window just fits");
        }
        let error = crate::conv2d(&zeros(&[1, 4, 8, 8]), &dense, None, 0, 0).unwrap_err().to_string();
        assert!(error.contains("stride of 0"), "{error}");
    }

    /// An input whose channels are not the weight's (a grey image to an RGB stem) is an error that
    /// names both, where the CPU kernel's length assertion panicked (the grouped convolution
    /// checks its groups itself).
    #[test]
    fn an_input_with_other_channels_than_the_weight_is_an_error() {
        let (gamma, beta) = (zeros(&[4]), zeros(&[4]));
        let params = BatchNormParams { gamma: &gamma, beta: &beta, eps: 1e-5 };
        let identity = FusedActivation::Identity;
        let (x, dense) = (zeros(&[2, 1, 8, 8]), zeros(&[4, 3, 3, 3]));
        let errors = [
            crate::conv2d(&x, &dense, None, 1, 1).map(|_| ()),
            crate::conv2d_eval(&x, &dense, None, 1, 1, None, identity).map(|_| ()),
            crate::conv_batch_norm_train(&x, &dense, 1, 1, params, identity).map(|_| ()),
            crate::depthwise_conv2d(&zeros(&[2, 4, 8, 8]), &zeros(&[4, 2, 3, 3]), 1, 1).map(|_| ()),
        ];
        for error in errors {
            let error = error.unwrap_err().to_string();
            assert!(error.contains("input channels, not the"), "{error}");
        }
    }
}
